"""``python -m memfail``: the ``memfail`` command, for an interpreter whose scripts are not on
PATH (a virtual environment not activated)."""

import sys

from memfail.cli import main

sys.exit(main())
