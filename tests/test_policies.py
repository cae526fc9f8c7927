"""Per-policy expectations from the 2025-07-24 call, checked on the built-in scenarios.

Each row states what the call (reference §1N, C1-C8) or the kernel rules predict for one
scenario under one policy; the outcomes come from ``Host.outcomes()``.
"""

from __future__ import annotations

import pytest

from memfail.model.policy.registry import PRESETS
from memfail.report.compare import compare_scenarios, run_compare, summarize

# (scenario, policy, outcome, expected) -- expected is a value or a predicate
EXPECTATIONS = [
    # S5: before Lisa Wang's fix QEMU dies of a plain SIGBUS (R65, Q2); after, it pauses (R66)
    ("vm-private-consumed-4k", "mainline", "vms_killed", 1),
    ("vm-private-consumed-4k", "mf-delayed-fix", "vms_paused", 1),
    ("vm-private-consumed-4k", "mf-delayed-fix", "vms_killed", 0),
    # R87/S14: HugeTLB-backed guest_memfd today: nothing zapped, the guest re-consumes
    ("vm-hugetlb-reconsume", "mainline", "repeated_consumptions", lambda n: n > 0),
    # Dan: unmap on error contains the failure
    ("vm-hugetlb-reconsume", "unmap", "repeated_consumptions", 0),
    ("vm-hugetlb-reconsume", "future", "repeated_consumptions", 0),
    # "Risk: folios with failed memory not marked HWpoison": a PG_hwpoison-checking kernel
    # user consumes the poison (C4 marks only at release)
    ("vm-kernel-user-dump", "minimum", "host_panic", True),
    ("vm-kernel-user-dump", "mainline", "host_panic", False),
    ("vm-kernel-user-dump", "future", "host_panic", False),
    # C4 marks HWpoison only at inode release: a punched folio goes back to HugeTLB unmarked
    ("vm-punch-reuse", "minimum", "poison_handed_out", lambda n: n >= 1),
    ("vm-punch-reuse", "mainline", "poison_handed_out", 0),
    ("vm-punch-reuse", "future", "poison_handed_out", 0),
    ("vm-release", "minimum", "poison_handed_out", 0),
    # C6: PR_MCE_KILL_EARLY is not honoured; C8 honours it
    ("vm-early-thread-untold", "minimum", "early_not_told", lambda n: n >= 1),
    ("vm-early-thread-untold", "future", "early_not_told", 0),
    ("vm-early-thread-untold", "future", "owner_told_unconsumed", lambda n: n >= 1),
    # Sean: kill the guest
    ("vm-hugetlb-consumed", "kill-vm", "vms_killed", 1),
    ("vm-private-scrub-4k", "kill-vm", "vms_killed", 1),
    # James: the whole guest_memfd becomes unusable
    ("vm-subfolio-other-page-2m", "unusable", "guest_bytes_lost", 2 << 20),
    ("vm-subfolio-other-page", "unusable", "guest_bytes_lost", 1 << 30),
    # a subpage policy loses the failed 4 KiB page, not the folio; the minimum the same
    ("vm-subfolio-other-page", "future", "guest_pages_lost", 1),
    ("vm-subfolio-other-page", "minimum", "guest_pages_lost", 1),
    # a folio check refuses the healthy rest of the folio: all of it is unavailable
    ("vm-subfolio-other-page", "unmap", "guest_pages_lost", 1 << 18),
    # C8: unmap only the failed subfolio: the rest of the huge page stays usable
    ("vm-subfolio-other-page", "future", "vms_paused", 0),
    ("vm-subfolio-other-page", "unmap", "vms_paused", 1),
    # C3 "SIGBUS current": the helper that consumed gets the AR, as the kernel would send it:
    # not a wrong-process signal; the VMM owning the memory is not told (C6)
    ("vm-unrelated-process-reads", "minimum", "wrong_process_signals", 0),
    ("vm-unrelated-process-reads", "minimum", "owner_told_unconsumed", 0),
    # no #MC virtualization for confidential guests: without unmapping, re-consumption
    ("vm-snp-hugetlb-consumed", "minimum", "repeated_consumptions", lambda n: n > 0),
    ("vm-snp-hugetlb-consumed", "unmap", "repeated_consumptions", 0),
    # S10: the hugetlbfs baseline loses the whole 1 GiB page, QEMU injects 4K vMCEs
    ("vm-hugetlbfs-1g-consumed", "hugetlbfs", "vmce_injected", 2),
    ("vm-hugetlbfs-1g-consumed", "hugetlbfs", "guest_bytes_lost", 1 << 30),
    # S12 under any policy: a failure in a free pool folio never reaches a VM
    ("vm-free-pool-folio", "minimum", "poison_handed_out", 0),
    ("vm-free-pool-folio", "mainline", "consumptions", 0),
]


@pytest.fixture(scope="module")
def outcomes() -> dict[tuple[str, str], dict[str, object]]:
    scen = sorted({s for s, *_ in EXPECTATIONS})
    pols = sorted({p for _, p, *_ in EXPECTATIONS})
    return {(c.scenario, c.policy): c.outcomes for c in run_compare(scen, pols, workers=1)}


@pytest.mark.parametrize(("scenario", "policy", "key", "expected"), EXPECTATIONS,
                         ids=[f"{s}:{p}:{k}" for s, p, k, _ in EXPECTATIONS])
def test_policy_expectation(outcomes: dict[tuple[str, str], dict[str, object]],
                            scenario: str, policy: str, key: str, expected: object) -> None:
    got = outcomes[(scenario, policy)][key]
    if callable(expected):
        assert expected(got), f"{scenario} under {policy}: {key} = {got!r}"
    else:
        assert got == expected, f"{scenario} under {policy}: {key} = {got!r}"


def test_every_policy_runs_every_comparison_scenario() -> None:
    cells = run_compare(compare_scenarios(), list(PRESETS), workers=2)
    assert len(cells) == len(compare_scenarios()) * len(PRESETS)
    for c in cells:
        assert c.outcomes["hugetlb_pool_delta"] <= 0
        assert summarize(c.outcomes)


def test_library_covers_the_call() -> None:
    names = set(compare_scenarios())
    for needed in ("vm-private-consumed-4k", "vm-private-scrub-4k",
                   "vm-shared-host-dirty-early", "vm-shared-host-clean", "vm-punch-then-touch-4k",
                   "vm-hugetlbfs-1g-consumed", "vm-hugetlbfs-1g-second-error",
                   "vm-hugetlb-ao-then-ar", "vm-hugetlb-reconsume", "vm-snp-hugetlb-consumed",
                   "vm-kernel-user-dump", "vm-vhost-consumes", "vm-kworker-consumes",
                   "vm-unrelated-process-reads", "vm-early-thread-untold", "vm-split-merge",
                   "vm-punch-reuse", "vm-release", "vm-two-errors-1g", "vm-free-pool-folio",
                   "vm-shared-vmm-reads"):
        assert needed in names


def test_policies_doc_is_fresh() -> None:
    from pathlib import Path

    from memfail.report.compare import policies_markdown

    doc = (Path(__file__).parent.parent / "docs" / "policies.md").read_text()
    start = doc.index("<!-- BEGIN POLICIES -->\n") + len("<!-- BEGIN POLICIES -->\n")
    end = doc.index("<!-- END POLICIES -->")
    assert doc[start:end] == policies_markdown(), (
        "docs/policies.md is stale: regenerate the section between the POLICIES markers "
        "from memfail.report.compare.policies_markdown()")


def test_run_under_another_policy_fails_where_the_outcome_changes() -> None:
    """docs/policies.md: a built-in vm-* scenario run under another policy exits 1 (an
    expectation no longer holds) wherever the comparison shows a different outcome."""
    from memfail.report.compare import _load
    from memfail.scenario.runner import run_scenario

    scens = compare_scenarios()
    cells = run_compare(scens, list(PRESETS), workers=2)
    by = {(c.scenario, c.policy): c for c in cells}
    for s in scens:
        pinned = _load(s).policy
        assert isinstance(pinned, str) and pinned in PRESETS, s
        assert not run_scenario(_load(s)).failures, s
        for p in PRESETS:
            if summarize(by[(s, p)].outcomes).replace(" (accepted)", "") == \
                    summarize(by[(s, pinned)].outcomes).replace(" (accepted)", ""):
                continue
            r = run_scenario(_load(s), policy_override=p)
            assert r.failures, f"{s} under {p}: the outcome changes but no expectation fails"


def test_a_host_only_scenario_is_no_policys_business() -> None:
    """The hugetlbfs baseline acts on HugeTLB-backed guest memory: a scenario with no VM
    (host-recovery-off-panic panics by its sysctl, not by any policy) is '-' for it, as for
    every guest_memfd policy, and counts in no verdict; a VM on a HugeTLB memfd is its."""
    from memfail.report.compare import scenario_backings, verdicts

    assert scenario_backings("host-recovery-off-panic") == set()
    assert scenario_backings("vm-hugetlbfs-1g-consumed") == {"hugetlbfs"}
    cells = run_compare(["host-recovery-off-panic", "anon-madvise-hwpoison"],
                        ["hugetlbfs", "mainline"], workers=1)
    assert {c.code() for c in cells} == {"-"}
    v = verdicts(cells, ["hugetlbfs", "mainline"])
    assert v["hugetlbfs"]["not_applicable"] == 2 and v["hugetlbfs"]["scenarios"] == 0


def test_the_verdict_keys_are_the_documented_ones() -> None:
    """docs/policies.md lists what `verdicts` counts; the list is the findings table's."""
    from pathlib import Path

    from memfail.report.compare import VERDICT_KEYS, verdicts

    doc = (Path(__file__).parents[1] / "docs" / "policies.md").read_text()
    para = doc[doc.index("`verdicts` counts, per policy"):]
    para = para[:para.index("The schema name")]
    cells = run_compare(["vm-hugetlb-consumed"], ["minimum"], workers=1)
    keys = set(verdicts(cells, ["minimum"])["minimum"])
    assert keys == {*VERDICT_KEYS, "scenarios", "not_applicable", "unavailable", "ok",
                    "by_class", "guest_bytes_lost"}
    for k in keys:
        assert f"`{k}`" in para, k


def test_the_hugetlbfs_baseline_runs_on_kernels_without_guest_memfd() -> None:
    """Under the baseline gmem_create is a hugetlbfs memfd, which every kernel has: on 6.6
    (no guest_memfd before 6.8) its cells run, the guest_memfd presets' are n/a."""
    cells = run_compare(["vm-hugetlb-consumed"], ["hugetlbfs", "minimum"], profile="linux-6.6",
                        workers=1)
    by = {c.policy: c for c in cells}
    assert by["hugetlbfs"].unavailable is None and by["hugetlbfs"].code() != "n/a"
    assert by["minimum"].unavailable is not None and by["minimum"].code() == "n/a"
