"""Settings shared by the whole test run.

The fleet's model runs are cached on disk (``memfail.fleet.cache``). The tests use one cache of
their own for the run, shared by the xdist workers (they inherit the environment the
controlling process sets before it starts them), instead of the user's ``~/.cache/memfail``:
a run does not depend on what an earlier run left there, nor writes into it, and the model
runs of the default fleet are computed once for all the tests that sample it (a cold cache
costs some 100 s of CPU per fleet run). A ``MEMFAIL_CACHE_DIR`` set by the caller is kept.

SPIN's pans are compiled ``-O0`` (``MEMFAIL_SPIN_OPT``, unless the caller set it): the
searches of the tests are small, and gcc -O2 of a pan was the largest share of the run (67
compiles, 256 s of CPU, against 105 s for the same models at -O0). The optimisation changes
how fast pan runs, not what it finds: test_check_spin.py compiles the standard configuration
at the default -O2 and checks that its figures and trails are the -O0 pan's, and the
standard configuration's check through the command line runs that -O2 pan.

The longest tests are put first (``LONGEST``), so that the two xdist workers end together
instead of one running a 50-second test alone at the end (xdist hands out the groups first,
then the other tests in collection order, as workers become free).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

from memfail.check.spin.runner import OPT_ENV
from memfail.fleet.cache import ENV

_MADE: list[str] = []

# Tests of 12 s or more on this project's 2-core machine (pytest --durations), longest first.
# Only the order of the run depends on it: a test renamed here is run in its usual place.
# Those that sample the default fleet (README commands, the fleet docs' figures) are left out:
# run next to the report tests' fixture, both would make the same cold model runs at once.
LONGEST = (
    "test_search_dask.py::test_dask_cluster_gives_the_local_json",
    "test_check_spin_hugetlbfs.py::test_races_verdicts_and_counterexample_lengths_equal",
    "test_check_spin_races.py::test_an_eight_page_folio_with_races_stays_inside_spins_d_step_bound",
    "test_check_spin.py::test_a_pan_out_of_memory_leaves_its_properties_partial",
    "test_check_spin_races.py::test_engines_agree_on_the_punch_fault_configuration",
    "test_fleet.py::test_coverage_of_intervals_over_repeated_seeds",
    "test_fuzz.py::test_mutated_files_keep_the_error_contract",
    "test_check_spin_races.py::test_vmms_without_a_sigbus_handler_with_races_compile_and_agree",
    "test_check_spin.py::test_packed_bit_arrays_keep_every_figure_and_trail",
    "test_check_spin.py::test_skipping_steps_that_change_nothing_keeps_every_figure_of_the_search",
    "test_check_spin_hugetlbfs.py::test_a_close_and_punch_holes_on_both_vms_agree",
    "test_check_spin.py::test_a_hash_table_zeroed_lazily_keeps_every_figure_of_the_search",
    "test_check_spin.py::test_without_a_file_spin_checks_the_standard_configuration",
    "test_check_spin.py::test_a_punch_hole_of_part_of_a_folio_agrees",
    "test_check_spin_hugetlbfs.py::test_verdicts_and_counterexample_lengths_equal",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The ``LONGEST`` tests first, in that order (a stable sort: the rest keep theirs)."""
    rank = {name: i for i, name in enumerate(LONGEST)}
    last = len(LONGEST)

    def key(item: pytest.Item) -> int:
        name = f"{item.path.name}::{getattr(item, 'originalname', item.name)}"
        return rank.get(name, last)

    items.sort(key=key)


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault(OPT_ENV, "-O0")  # workers inherit it; a caller's is kept
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
