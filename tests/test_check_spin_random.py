"""Both engines on random configurations inside what the SPIN engine renders
(src/memfail/check/spin/randcfg.py): seeded Python walks replayed in Promela and a SPIN
simulation replayed on the Python model agree step by step, atomic and with --races. The
shipped agreement files are written by hand; these combinations are not (three
disagreements the hand-written files never reached were found this way: a step listed by
two entries, a guest load between a release's close and its vm_destroy, and the hugetlbfs
baseline's conversion of a destroyed VM). More of them:
``python bench/bench_check_engines.py --random-configs 100``; and both engines' exhaustive
verdicts compared on them: ``--random-verdicts 30``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from memfail.check.spin.randcfg import (
    VerdictComparison,
    agree_config,
    compare_json,
    compare_verdicts,
    random_config,
)

WALKS, STEPS = 3, 10


def test_a_seed_names_one_configuration() -> None:
    a, b = random_config(7), random_config(7)
    assert a[0] == b[0] and a[0] != random_config(8)[0]
    assert a[1].policies == b[1].policies


def test_random_configurations_cover_what_the_hand_written_ones_do_not() -> None:
    """Over the first twelve seeds: VMMs of every SIGBUS disposition, one to three VMs,
    every event the SPIN engine takes, profiles other than next, and most policies rendered
    by the SPIN engine (refusals are the documented ones: the hugetlbfs baseline's)."""
    sigbus, vms, events, profiles = set(), set(), set(), set()
    for seed in range(12):
        _text, cfg = random_config(seed)
        sigbus |= {p.sigbus for p in cfg.processes}
        vms.add(len(cfg.vms))
        events |= {e.event for e in cfg.events}
        profiles.add(cfg.profile)
    assert sigbus == {"handler", "default", "ignore"}
    assert vms >= {1, 2}
    assert events >= {"hw_error", "scrub", "vcpu_access", "vmm_access", "kernel_access",
                      "convert", "realloc", "close", "release", "fault", "guest_run",
                      "vcpu_mce", "task_work"}
    assert len(profiles) >= 2


@pytest.mark.parametrize("seed", [0, 2, 6, 11])
def test_walks_agree_on_random_configurations(seed: int) -> None:
    _text, cfg = random_config(seed)
    got = agree_config(cfg, WALKS, STEPS, races=False, seed=seed)
    assert len(got.walked) >= 3, got.refused
    assert not got.disagreements, got.disagreements[0]
    for _policy, why in got.refused:
        assert "backing hugetlbfs" in why


@pytest.mark.parametrize("seed", [3, 7, 101])
def test_races_walks_agree_on_random_configurations(seed: int) -> None:
    """Seed 101: the hugetlbfs baseline's stages split a conversion of a VM its release had
    destroyed (split guard alive only), which the Python model takes as one step (as the
    guest_memfd stages do: vst != 3), so a second conversion waited in Promela."""
    _text, cfg = random_config(seed)
    got = agree_config(cfg, 2, 2 * STEPS, races=True, seed=seed)
    assert len(got.walked) >= 3, got.refused
    assert not got.disagreements, got.disagreements[0]


def test_exhaustive_verdicts_agree_on_a_random_configuration(tmp_path: Path) -> None:
    """Both engines' `memfail check --json` on one random configuration: every verdict of
    every policy the SPIN engine renders is decided by the Python search and is SPIN's,
    status, depth and message, and SPIN's counterexamples replay with `memfail run`."""
    got = compare_verdicts(4003, False, tmp_path)
    assert not got.undecided, got.undecided
    assert got.complete == got.policies >= 3 and got.decided == got.verdicts > 0
    assert not got.differ, got.differ[0]
    assert not got.unreplayed, got.unreplayed


def test_the_verdict_comparison_counts_only_what_the_python_search_decided() -> None:
    def doc(policy: str, complete: bool, stop: str, **verdicts: tuple[str, Any]) -> Any:
        return {"policy": policy, "complete": complete, "stop_reason": stop,
                "verdicts": {k: {"status": s, "depth": d, "message": None}
                             for k, (s, d) in verdicts.items()}}

    py = {"results": [doc("a", True, "exhausted", p=("PASS", None), q=("FAIL", 3)),
                      doc("b", False, "max-states", p=("PARTIAL", 9), q=("FAIL", 4))]}
    spin = {"results": [doc("a", True, "exhausted", p=("PASS", None), q=("FAIL", 5)),
                        doc("b", True, "exhausted", p=("PASS", None), q=("FAIL", 4))]}
    out = VerdictComparison(0, False)
    compare_json(py, spin, out)
    # a's two verdicts and b's FAIL are decided; b's PARTIAL is not; a's FAIL depth differs
    assert (out.policies, out.complete, out.verdicts, out.decided) == (2, 1, 4, 3)
    assert out.differ == [("a", "q", ("FAIL", 3, None), ("FAIL", 5, None))]
