"""The guest as an actor: what a guest does after it met poison.

Four behaviours (a ``vm_create`` setting, docs/mce.md):

* ``cooperative`` — today's Linux guest: on a vMCE its memory_failure() takes the page
  offline (vmm/qemu.py guest_on_mce), so it never touches that page again.
* ``careless`` — ignores the vMCE and touches the page again (one vCPU, once per round).
* ``hostile`` — ignores the vMCE and loads the poisoned line from every vCPU as fast as it
  can, re-faulting after every exit, ``effort`` rounds.
* ``confidential`` — an SNP or TDX guest: no vMCE can be injected (QEMU refuses, Q8; KVM has
  no #MC virtualization for guests with protected state), so the guest sees nothing and the
  vCPU re-executes the load that faulted, round after round, until something unmaps the page
  or stops the VM.

``guest_run`` plays the behaviour out. A round is one moment: every vCPU that loads the line
in that round takes its machine check before any task work runs, so in broadcast mode they
share one rendezvous (M3) and each vCPU thread has its own queued kill_me_maybe (M7); the
task work of each runs before that vCPU enters the guest again (R45, M8).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import ModelInputError
from ..handlers import ActionResult, handles
from ..trace import GuestEvent
from .guestactions import GuestRun

if TYPE_CHECKING:
    from ..kvm.kvm import VM
    from ..state import HostState as Host

BEHAVIOURS = ("cooperative", "careless", "hostile", "confidential")


def guest_pfn(host: Host, vm: VM, gfn: int) -> int | None:
    """The pfn stage 2 maps at ``gfn`` now (None when there is no SPTE)."""
    from ..kvm.kvm import spte_lookup

    geo = host.geometry
    hit = spte_lookup(vm, gfn, tuple(sorted({0, geo.pmd_order, geo.pud_order})))
    if hit is None:
        return None
    head, hpfn, _order = hit
    return hpfn + (gfn - head)


def ignores_vmce(vm: VM) -> bool:
    """A careless or hostile guest does not take the page offline after a vMCE."""
    return vm.behaviour in ("careless", "hostile")


def guest_on_vmce_ignored(host: Host, vm: VM, gfn: int) -> None:
    host.emit(GuestEvent(host.trace.step, vm.name, f"ignored the vMCE ({vm.behaviour})",
                         gfn << 12))


def guest_round(host: Host, vm: VM, gfn: int, vcpus: list[int]) -> tuple[dict[str, int], bool]:
    """One moment of guest execution: every vCPU in ``vcpus`` enters the guest (after its
    pending task work, R45) and loads ``gfn``; the machine checks of this moment share one
    broadcast (M3); then each vCPU thread's task work runs (M8). Counts what happened, and
    says whether the round left the host as it was (only reads of mapped, healthy memory:
    ``ActionResult.unchanged``)."""
    from ..kernel.mce import (
        has_mce_state,
        kvm_machine_check,
        mce_state,
        run_entry_work,
        task_work_run,
    )
    from ..kvm.kvm import faultin

    quiet = has_mce_state(host)
    st = mce_state(host)
    quiet = quiet and st.round_cpus is None
    out = {"mc": 0, "exits": 0, "read": 0}
    consumed: list[int] = []
    for i in vcpus:
        if vm.state != "running" or not vm.vmm.alive:
            break
        if run_entry_work(host, vm.vcpus[i]):
            quiet = False
            if vm.state != "running" or not vm.vmm.alive:
                break
    st.round_cpus = set()
    try:
        for i in vcpus:
            if vm.state != "running" or not vm.vmm.alive or gfn in vm.guest_offlined:
                break
            pfn = guest_pfn(host, vm, gfn)
            if pfn is None:
                quiet = False
                got = faultin(host, vm, i, gfn, False)
                if isinstance(got, int):
                    out["exits"] += 1  # an exit instead of a machine check
                    continue
                pfn = got[0]
            if pfn not in host.phys.hw_errors:
                out["read"] += 1
                continue
            quiet = False
            kvm_machine_check(host, vm.name, i, vm.vcpus[i], pfn, vm.vmm.pid)
            consumed.append(i)
            out["mc"] += 1
    finally:
        st.round_cpus = None
    for i in consumed:
        task_work_run(host, vm.vcpus[i])
        host.deliver_signals()
    quiet = quiet and not host.signals_queued()
    host.deliver_signals()
    return out, quiet




@handles(GuestRun)
def do_guest_run(host: Host, a: GuestRun) -> ActionResult:
    from ..kvm.kvm import get_vm
    from ..units import parse_size

    vm = get_vm(host, a.vm)
    if not 0 <= a.vcpu < len(vm.vcpus):
        raise ModelInputError(f"VM {a.vm!r} has {len(vm.vcpus)} vCPUs", "vcpu")
    gfn = parse_size(a.gpa, host.geometry.page_size) >> host.geometry.page_shift
    rounds = a.rounds or vm.effort
    total = {"mc": 0, "exits": 0, "read": 0, "rounds": 0}
    quiet = True  # every round left the host as it was
    if vm.behaviour == "hostile":
        vcpus = list(range(len(vm.vcpus)))
    elif vm.behaviour == "careless":
        vcpus = [0]
    elif vm.behaviour == "confidential":
        vcpus = [a.vcpu]
    else:
        vcpus = [a.vcpu] if gfn not in vm.guest_offlined else []
    for _ in range(rounds):
        if not vcpus or vm.state != "running" or not vm.vmm.alive or host.panicked:
            break
        if gfn in vm.guest_offlined or gfn in vm.guest_pending_kill:
            break  # the guest no longer uses the page
        got, same = guest_round(host, vm, gfn, vcpus)
        quiet = quiet and same
        total["rounds"] += 1
        for k, v in got.items():
            total[k] += v
        if vm.behaviour == "cooperative":
            break  # it touches once; after a vMCE it offlines the page
        if vm.behaviour == "confidential" and got["mc"] == 0:
            break  # the load completed or exited: nothing to re-execute
    return ActionResult(total, unchanged=quiet)
