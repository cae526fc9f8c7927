"""Guests as actors (vmm/guest.py, docs/mce.md): cooperative, careless, hostile and confidential
guests, and the host's cost under each policy, seen through outcomes, trace and log."""

from __future__ import annotations

from typing import Any

import pytest

from memfail.model.trace import GuestEvent, KernelLog, MceInjected, PoisonConsumed
from memfail.scenario import load_scenario_text, run_scenario
from memfail.scenario.errors import ScenarioError

VM = """
name: g
profile: linux-6.18
policy: {policy}
host: {{hugepages: {{2M: 2}}}}
processes:
  - {{name: qemu, threads: [main], sigbus: handler, mce_kill: {{main: early}}}}
steps:
  - mce_config: {{cpus: 64{config}}}
  - vm_create: {{vm: vm0, vmm: qemu, vcpus: {vcpus}, type: {type}, behaviour: {behaviour}, effort: {effort}}}
  - gmem_create: {{vm: vm0, fd: gmem, size: 2M, backing: 2M}}
  - mmap: {{proc: qemu, name: shared, size: 2M}}
  - memslot: {{vm: vm0, gpa: 4G, size: 2M, gmem: gmem, hva: shared}}
  - guest_access: {{vm: vm0, gpa: 4G, op: write}}
  - hw_error: {{vm: vm0, gpa: 4G+12K, detect: latent}}
  - guest_access: {{vm: vm0, gpa: 4G+12K}}
  - guest_run: {{vm: vm0, gpa: 4G+12K}}
"""


def _run(policy: str = "minimum", behaviour: str = "hostile", effort: int = 4, vcpus: int = 4,
         type: str = "default", config: str = "") -> Any:
    return run_scenario(load_scenario_text(VM.format(
        policy=policy, behaviour=behaviour, effort=effort, vcpus=vcpus, type=type,
        config=config)))


def _o(r: Any) -> dict[str, Any]:
    o: dict[str, Any] = r.host_outcomes
    return o


def _guest(r: Any) -> list[str]:
    return [e.what for e in r.trace.of(GuestEvent)]


def test_cooperative_guest_offlines_and_stops_touching() -> None:
    r = _run(behaviour="cooperative", policy="minimum")
    assert any(w.startswith("offlined page") for w in _guest(r))
    assert _o(r)["consumptions"] == 1


def test_careless_guest_ignores_the_vmce_and_touches_again() -> None:
    r = _run(behaviour="careless", vcpus=2)
    assert "ignored the vMCE (careless)" in _guest(r)
    assert not any(w.startswith("offlined page") for w in _guest(r))
    assert _o(r)["repeated_consumptions"] >= 4  # one per round at least, poison kept mapped


def test_hostile_guest_consumes_from_every_vcpu_in_one_broadcast_per_round() -> None:
    r = _run(behaviour="hostile", vcpus=4, effort=3)
    o = _o(r)
    # first access: 3 re-entries into the poison; then 3 rounds x 4 vCPUs
    assert o["machine_checks"] == 3 + 12
    assert o["host_stalls"] == 3 + 3  # the vCPUs of one round share one rendezvous (M3)
    assert {e.by for e in r.trace.of(PoisonConsumed)} == {f"vm0:vcpu{i}" for i in range(4)}


def test_hostile_cost_grows_with_effort_only_where_poison_stays_mapped() -> None:
    small, big = _run(effort=4), _run(effort=8)
    assert _o(big)["host_stall_us"] > _o(small)["host_stall_us"]
    assert _o(big)["machine_checks"] > _o(small)["machine_checks"]
    small, big = _run(policy="unmap", effort=4), _run(policy="unmap", effort=8)
    assert _o(big)["host_stall_us"] == _o(small)["host_stall_us"]
    assert _o(big)["machine_checks"] == 1


def test_stall_bound_makes_a_hostile_guest_take_the_host_down() -> None:
    r = _run(effort=8, config=", stall_bound_us: 1000")
    assert _o(r)["host_down"] is True and _o(r)["host_panic"] is False
    r = _run(policy="unmap", effort=8, config=", stall_bound_us: 1000")
    assert _o(r)["host_down"] is False


def test_confidential_guest_gets_no_vmce_and_re_executes() -> None:
    r = _run(behaviour="confidential", type="snp", vcpus=1, effort=5)
    assert r.trace.of(MceInjected) == []
    log = "\n".join(e.text for e in r.trace.of(KernelLog))
    assert "cannot inject MCE into confidential guest vm0" in log
    assert _o(r)["repeated_consumptions"] >= 5


def test_confidential_behaviour_needs_a_confidential_vm() -> None:
    with pytest.raises(ScenarioError, match=r"vm_create\.behaviour: behaviour confidential "
                                            "needs type snp or tdx"):
        run_scenario(load_scenario_text(VM.format(
            policy="minimum", behaviour="confidential", effort=1, vcpus=1, type="default",
            config="")))


@pytest.mark.parametrize("bad", ["behaviour: nasty", "effort: 0"])
def test_bad_behaviour_is_bad_input(bad: str) -> None:
    with pytest.raises(ScenarioError):
        load_scenario_text(VM.format(policy="minimum", behaviour="hostile", effort=1, vcpus=1,
                                     type="default", config="").replace(
            "behaviour: hostile, effort: 1", bad))


KERNEL_PAGE = """
name: k
profile: linux-6.18
policy: minimum
processes:
  - {{name: qemu, threads: [main], sigbus: handler, mce_kill: {{main: early}}}}
steps:
  - vm_create: {{vm: vm0, vmm: qemu, vcpus: 1, guest_kernel_mce: {mode}}}
  - mmap: {{proc: qemu, name: ram, size: 2M}}
  - memslot: {{vm: vm0, gpa: 4G, size: 2M, hva: ram}}
  - guest_access: {{vm: vm0, gpa: 4G, op: write, page: kernel}}
  - hw_error: {{vm: vm0, gpa: 4G, detect: latent}}
  - guest_access: {{vm: vm0, gpa: 4G, page: kernel}}
"""


def test_guest_kernel_page_panics_or_recovers_per_setting() -> None:
    r = run_scenario(load_scenario_text(KERNEL_PAGE.format(mode="panic")))
    assert "panic" in _guest(r)
    r = run_scenario(load_scenario_text(KERNEL_PAGE.format(mode="recover")))
    assert "panic" not in _guest(r)
    assert any(w.startswith("offlined page") for w in _guest(r))
