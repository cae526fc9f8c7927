"""Settings shared by the whole test run.

The fleet's model runs are cached on disk (``memfail.fleet.cache``). The tests use one cache of
their own for the run, shared by the xdist workers (they inherit the environment the
controlling process sets before it starts them), instead of the user's ``~/.cache/memfail``:
a run does not depend on what an earlier run left there, nor writes into it, and the model
runs of the default fleet are computed once for all the tests that sample it (a cold cache
costs some 100 s of CPU per fleet run). A ``MEMFAIL_CACHE_DIR`` set by the caller is kept.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from memfail.fleet.cache import ENV

_MADE: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER") or os.environ.get(ENV):
        return  # a worker inherits the controller's directory; a caller's is kept
    path = tempfile.mkdtemp(prefix="memfail-test-cache-")
    os.environ[ENV] = path
    _MADE.append(path)


def pytest_unconfigure(config: pytest.Config) -> None:
    while _MADE:
        path = _MADE.pop()
        shutil.rmtree(path, ignore_errors=True)
        if os.environ.get(ENV) == path:
            del os.environ[ENV]
