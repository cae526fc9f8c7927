"""Every knob does something: for each knob of ``GmemPolicy`` and each of its allowed values,
a scenario whose trace changes when that value alone replaces another.

The knobs and values are enumerated from the policy definition itself, so a knob (or a value)
added without a scenario here fails ``test_every_knob_value_has_a_case``, and one whose value
changes nothing fails ``test_knob_value_changes_the_run``.
"""

from __future__ import annotations

from typing import Any

import pytest

from memfail.model.policy.base import GmemPolicy, knob_values
from memfail.model.policy.registry import make_policy
from memfail.report.compare import _load
from memfail.scenario.runner import run_scenario

# (knob, value) -> (scenario, base policy, the other value it is compared with)
CASES: dict[tuple[str, Any], tuple[str, Any, Any]] = {
    ("handles", "none"): ("vm-early-thread-untold-2m", "minimum", "hugetlb"),
    ("handles", "hugetlb"): ("vm-early-thread-untold-2m", "mainline", "none"),
    ("handles", "all"): ("vm-private-scrub-4k", "minimum", "hugetlb"),
    ("record", "folio"): ("vm-early-thread-untold-2m", "minimum", "table"),
    ("record", "table"): ("vm-early-thread-untold-2m", "minimum", "folio"),
    ("mark_on_release", True): ("vm-release-2m", "minimum", False),
    ("mark_on_release", False): ("vm-release-2m", "minimum", True),
    ("mark_on_truncate", True): ("vm-punch-reuse-2m", "minimum", False),
    ("mark_on_truncate", False): ("vm-punch-reuse-2m", "minimum", True),
    ("isolate_on_free", True): ("vm-hugetlb-consumed-2m", "mainline", False),
    ("isolate_on_free", False): ("vm-hugetlb-consumed-2m", "mainline", True),
    ("propagate_on_split", True): ("vm-shared-vmm-reads", "mainline", False),
    ("propagate_on_split", False): ("vm-shared-vmm-reads", "mainline", True),
    ("unmap_stage2", "none"): ("vm-early-thread-untold-2m", "minimum", "subpage"),
    ("unmap_stage2", "subpage"): ("vm-early-thread-untold-2m", "minimum", "none"),
    ("unmap_stage2", "folio"): ("vm-early-thread-untold-2m", "minimum", "none"),
    ("unmap_stage2", "vm"): ("vm-early-thread-untold-2m", "minimum", "none"),
    ("unmap_host", "none"): ("vm-shared-vmm-reads", "minimum", "subpage"),
    ("unmap_host", "subpage"): ("vm-shared-vmm-reads", "minimum", "none"),
    ("unmap_host", "folio"): ("vm-shared-vmm-reads", "minimum", "none"),
    ("fault_check", True): ("vm-punch-reuse-2m", "minimum", False),
    ("fault_check", False): ("vm-punch-reuse-2m", "minimum", True),
    ("check_granularity", "folio"): ("vm-hugetlb-consumed-2m", "unmap", "subpage"),
    ("check_granularity", "subpage"): ("vm-hugetlb-consumed-2m", "unmap", "folio"),
    ("consumed", "kernel"): ("vm-hugetlb-ao-then-ar-2m", "minimum", "sigbus-current"),
    ("consumed", "sigbus-current"): ("vm-hugetlb-ao-then-ar-2m", "minimum", "kernel"),
    ("consumed", "sigbus-vmm"): ("vm-hugetlb-ao-then-ar-2m", "minimum", "kernel"),
    ("consumed", "kill-vm"): ("vm-hugetlb-ao-then-ar-2m", "minimum", "sigbus-current"),
    ("consumed", "unusable"): ("vm-hugetlb-ao-then-ar-2m", "minimum", "sigbus-current"),
    ("unconsumed", "kernel"): ("vm-early-thread-untold-2m", "minimum", "defer"),
    ("unconsumed", "defer"): ("vm-early-thread-untold-2m", "minimum", "kernel"),
    ("unconsumed", "notify-vmm"): ("vm-early-thread-untold-2m", "minimum", "defer"),
    ("unconsumed", "kill-vm"): ("vm-early-thread-untold-2m", "minimum", "defer"),
    ("unconsumed", "unusable"): ("vm-early-thread-untold-2m", "minimum", "defer"),
    ("honor_early", True): ("vm-early-thread-untold-2m",
                            {"base": "minimum", "unconsumed": "kernel"}, False),
    ("honor_early", False): ("vm-early-thread-untold-2m",
                             {"base": "minimum", "unconsumed": "kernel"}, True),
    ("sigbus_addr", "hva"): ("vm-hugetlb-ao-then-ar-2m", "minimum", "none"),
    ("sigbus_addr", "none"): ("vm-hugetlb-ao-then-ar-2m", "minimum", "hva"),
    ("sigbus_addr", "plain"): ("vm-hugetlb-ao-then-ar-2m", "minimum", "hva"),
    ("vm_on_error", "none"): ("vm-private-consumed-4k", "mainline", "kill"),
    ("vm_on_error", "kill"): ("vm-private-consumed-4k", "mainline", "none"),
    ("vm_on_error", "unusable"): ("vm-private-consumed-4k", "mainline", "none"),
    ("mf_delayed_fix", True): ("vm-private-consumed-4k", "mainline", False),
    ("mf_delayed_fix", False): ("vm-private-consumed-4k", "mainline", True),
    ("mf_delayed_fix", None): ("vm-private-consumed-4k", "mainline", True),
    ("backing", "gmem"): ("vm-early-thread-untold-2m", "mainline", "hugetlbfs"),
    ("backing", "hugetlbfs"): ("vm-early-thread-untold-2m", "mainline", "gmem"),
}

ALL = [(k, v) for k in GmemPolicy("x").knobs() for v in (knob_values(k) or ())]


def _trace(scenario: str, pol: Any) -> tuple[list[str], dict[str, Any]]:
    r = run_scenario(_load(scenario), policy_override=pol)
    assert r.host_outcomes is not None
    return [repr(e) for e in r.trace.events], r.host_outcomes


def test_every_knob_value_has_a_case() -> None:
    missing = [kv for kv in ALL if kv not in CASES]
    assert not missing, f"knob values with no scenario that shows their effect: {missing}"
    for k in GmemPolicy("x").knobs():
        assert knob_values(k), f"knob {k} has no enumerable values"


@pytest.mark.parametrize(("knob", "value"), ALL, ids=[f"{k}={v}" for k, v in ALL])
def test_knob_value_changes_the_run(knob: str, value: Any) -> None:
    scenario, base, other = CASES[(knob, value)]
    assert other != value
    b = make_policy(base)
    with_value = b.with_knobs(name="a", **{knob: value})
    with_other = b.with_knobs(name="a", **{knob: other})
    ta, _ = _trace(scenario, with_value)
    tb, _ = _trace(scenario, with_other)
    assert ta != tb, (f"{knob}={value} changes nothing against {knob}={other} on {scenario} "
                      f"(base {base})")
