"""What the outcome figures count (docs/policies.md, "What is counted"), seen through runs a
user can repeat: a kill stays a kill, a reset of a VM whose VMM is gone fails with ESRCH,
lost guest memory is counted per 4 KiB page, and findings carry a class."""

from __future__ import annotations

from typing import Any

from memfail.report.compare import run_compare
from memfail.scenario.loader import load_scenario_text
from memfail.scenario.runner import run_scenario

KILLED_THEN = """
name: killed-then
profile: linux-6.18
policy: mainline
processes:
  - {name: qemu, threads: [main], sigbus: handler, mce_kill: {main: early}}
steps:
  - vm_create: {vm: vm0, vmm: qemu, vcpus: 1}
  - gmem_create: {vm: vm0, fd: gmem, size: 2M}
  - mmap: {proc: qemu, name: shared, size: 2M}
  - memslot: {vm: vm0, gpa: 4G, size: 2M, gmem: gmem, hva: shared}
  - guest_access: {vm: vm0, gpa: 4G, op: write}
  - hw_error: {vm: vm0, gpa: 4G}
  - guest_access: {vm: vm0, gpa: 4G}
  - {AFTER}: {vm: vm0}
"""


def _run(text: str, policy: Any = None) -> Any:
    r = run_scenario(load_scenario_text(text), policy_override=policy)
    assert r.host_outcomes is not None
    return r


def test_reset_after_the_vmm_was_killed_fails_and_the_vm_stays_killed() -> None:
    # R65: on a released kernel the consumed error kills QEMU with a plain SIGBUS
    r = _run(KILLED_THEN.replace("{AFTER}", "vm_reset"))
    assert r.steps[-1].errno == "ESRCH"
    assert r.host_outcomes["vm_states"] == {"vm0": "killed"}
    assert r.host_outcomes["vms_killed"] == 1
    assert r.host_outcomes["guest_pages_lost"] == 512  # all of the VM


def test_destroy_after_a_kill_does_not_turn_killed_into_destroyed() -> None:
    r = _run(KILLED_THEN.replace("{AFTER}", "vm_destroy"))
    assert r.steps[-1].errno is None
    assert r.host_outcomes["vm_states"] == {"vm0": "killed"}
    assert r.host_outcomes["vms_killed"] == 1


def test_subpage_policy_is_charged_the_page_not_the_folio() -> None:
    cells = {c.policy: c.outcomes for c in
             run_compare(["vm-subfolio-other-page"], ["future", "minimum", "unmap"])}
    # C8 subfolio unmap: the rest of the 1 GiB folio is still readable by the guest
    assert cells["future"]["guest_pages_lost"] == 1
    assert cells["minimum"]["guest_pages_lost"] == 1
    # a folio-wide fault check refuses every healthy page of the folio
    assert cells["unmap"]["guest_pages_lost"] == 1 << 18
    assert cells["future"]["guest_bytes_lost"] == 4096


def test_kernel_correct_ar_to_the_consumer_is_not_wrong() -> None:
    cells = {c.policy: c.outcomes for c in
             run_compare(["vm-unrelated-process-reads"], ["minimum", "hugetlbfs"])}
    for o in cells.values():
        assert o["wrong_process_signals"] == 0


def test_c6_limitation_is_accepted_not_a_hazard() -> None:
    (c,) = run_compare(["vm-early-thread-untold"], ["minimum"])
    assert c.outcomes["early_not_told"] == 1
    assert c.outcomes["classes"]["early_not_told"] == "accepted"
    (f,) = run_compare(["vm-early-thread-untold"], ["mainline"])
    assert f.outcomes["classes"]["early_not_told"] == "hazard"


def test_pool_delta_in_the_pools_own_pages() -> None:
    # the 1 GiB free folio with an error is dissolved: one 1 GiB page fewer, not 512
    (c,) = run_compare(["vm-free-pool-folio"], ["mainline"])
    assert c.outcomes["hugetlb_pool_delta_by_size"] == {"1G": -1}
    assert c.outcomes["hugetlb_pool_delta"] == -1
