"""Host kernel model: memory, folios, page cache, address spaces, tasks and memory_failure()."""

from . import kactions as _kactions  # noqa: F401  (registers user_copy, mf_queue)
from . import ksmactions as _ksmactions  # noqa: F401  (registers ksm_merge)
from . import mceactions as _mceactions  # noqa: F401  (registers mce_config, machine_check, task_work)
