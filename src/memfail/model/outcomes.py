"""Outcome metrics computed from the trace and the final state of a Host.

These are what the policy comparison, the checker and the fleet estimate count; every figure
is derived from trace events and final state, never from a parallel model.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from .trace import (
    GuestEvent,
    MceInjected,
    PoisonConsumed,
    PoisonHandedOut,
    ProcessExit,
    SignalSent,
    VmState,
)

if TYPE_CHECKING:
    from .host import Host

OUTCOME_DOCS: dict[str, str] = {
    "host_panic": "the host kernel panicked",
    "vms_killed": "VMs whose VMM died or was killed",
    "vms_paused": "VMs stopped with an internal error (KVM_RUN failed)",
    "guests_panicked": "guests that panicked on a vMCE",
    "killed": "processes killed by a signal",
    "mce_signals": "SIGBUS with BUS_MCEERR_AR/AO generated",
    "wrong_process_signals": "MCE SIGBUS sent to a process that does not own the failed "
                             "guest memory",
    "owner_told_unconsumed": "AO SIGBUS that reached the VMM owning the failed memory",
    "vmce_injected": "machine checks injected into guests",
    "early_not_told": "unconsumed failures in a VM's memory whose VMM has a PR_MCE_KILL_EARLY "
                      "thread that was never sent BUS_MCEERR_AO for it",
    "consumptions": "times poisoned memory was consumed by a CPU",
    "repeated_consumptions": "consumptions of a pfn after its first (containment failures)",
    "poison_handed_out": "pages with a known error handed to a new user without PG_hwpoison",
    "records_lost": "detected failed pfns with no record left (no PG_hwpoison, no table entry, "
                    "not isolated)",
    "guest_bytes_lost": "guest memory made unusable (poisoned folios, unusable guest_memfd, "
                        "killed VMs, pages the guest offlined)",
    "hugetlb_free_poisoned": "free HugeTLB folios that hold a poisoned page (skipped by "
                             "allocation, lost to the pool)",
    "hugetlb_pool_delta": "change of nr_hugepages (all sizes) over the run",
    "hardware_corrupted_kb": "HardwareCorrupted in /proc/meminfo at the end",
}

# machine-check delivery and the host's cost (kernel/mce.py, docs/mce.md: M1-M10)
MCE_OUTCOME_DOCS: dict[str, str] = {
    "machine_checks": "machine checks taken by host CPUs (M1)",
    "host_stalls": "broadcast machine checks: every host CPU held in the rendezvous (M3)",
    "host_stall_us": "total wall-clock time of those whole-host stalls, microseconds (M9)",
    "host_cpu_us": "CPU time lost to machine-check handling and its memory_failure() task "
                   "work, summed over CPUs, microseconds (M9)",
    "host_stalled": "whole-host stalls exceeded the bound without a panic (M10, mce_config "
                    "stall_bound_us)",
    "host_down": "the host panicked or shut down, or its whole-host stalls exceeded the "
                 "bound (M10, mce_config stall_bound_us)",
}
OUTCOME_DOCS.update(MCE_OUTCOME_DOCS)


def mce_outcomes(host: Host) -> dict[str, Any]:
    """The MCE_OUTCOME_DOCS figures, from MachineCheck / HostStall trace events."""
    from .kernel.mce import mce_state
    from .trace import HostStall, MachineCheck

    st = mce_state(host)
    stalls = host.trace.of(HostStall)
    whole = [e for e in stalls if e.cpus >= st.cpus and e.cpus > 1]
    stall_us = sum(e.us for e in whole)
    return {
        "machine_checks": len(host.trace.of(MachineCheck)),
        "host_stalls": len(whole),
        "host_stall_us": stall_us,
        "host_cpu_us": sum(e.us * e.cpus for e in stalls),
        "host_stalled": host.panicked is None and stall_us > st.cost.stall_bound_us,
        "host_down": host.panicked is not None or stall_us > st.cost.stall_bound_us,
    }


def _owners(host: Host, pfn: int) -> set[int]:
    """pids of the VMMs whose guest memory contained ``pfn`` when a failure of it was handled
    or consumed, or contains it now."""
    return _owners_now(host, pfn) | host.ext.get("owners_seen", {}).get(pfn, set())


def _owners_now(host: Host, pfn: int) -> set[int]:
    """pids of the VMMs whose guest memory contains ``pfn`` now."""
    out: set[int] = set()
    folio = host.phys.folio_of(pfn)
    for vm in host.ext.get("vms", {}).values():
        for s in vm.slots:
            if s.gmem is not None and folio is not None and folio.mapping is s.gmem:
                out.add(vm.vmm.pid)
            if s.hva is not None and folio is not None and any(
                    mm_id == (vm.vmm.mm.id if vm.vmm.mm else -1) for mm_id, _ in folio.rmap):
                out.add(vm.vmm.pid)
        for spfn, order in vm.spte.values():
            if spfn <= pfn < spfn + (1 << order):
                out.add(vm.vmm.pid)
    return out


def compute_outcomes(host: Host) -> dict[str, Any]:
    """Every figure in ``OUTCOME_DOCS`` for this host's run."""
    tr = host.trace
    consumed = Counter(e.pfn for e in tr.of(PoisonConsumed))
    sigs = [e for e in tr.of(SignalSent)
            if e.outcome == "queued" and e.si_code in ("BUS_MCEERR_AR", "BUS_MCEERR_AO")]
    wrong = told = 0
    for e in sigs:
        if e.pfn is None:
            continue
        owners = _owners(host, e.pfn)
        if owners and e.pid not in owners:
            wrong += 1
        if owners and e.pid in owners and e.si_code == "BUS_MCEERR_AO":
            told += 1
    vm_states: dict[str, str] = {}
    for e in tr.of(VmState):
        vm_states[e.vm] = e.state
    vms = host.ext.get("vms", {})
    lost = 0
    for vm in vms.values():
        lost += _guest_bytes_lost(host, vm)
    start_pool = host.ext.get("pool_at_start")
    pool_now = sum(h.nr_huge_pages << h.order for h in host.hugetlb.hstates.values())
    return {
        "host_panic": host.panicked is not None,
        "vms_killed": sum(1 for s in vm_states.values() if s == "killed"),
        "vms_paused": sum(1 for s in vm_states.values() if s == "paused"),
        "guests_panicked": len([e for e in tr.of(GuestEvent) if e.what == "panic"]),
        "killed": sorted({e.comm for e in tr.of(ProcessExit) if e.signal is not None}),
        "mce_signals": len(sigs),
        "wrong_process_signals": wrong,
        "owner_told_unconsumed": told,
        "vmce_injected": len(tr.of(MceInjected)),
        "early_not_told": _early_not_told(host, sigs),
        "consumptions": sum(consumed.values()),
        "repeated_consumptions": sum(n - 1 for n in consumed.values()),
        "poison_handed_out": len(tr.of(PoisonHandedOut)),
        "records_lost": len(records_lost(host)),
        "guest_bytes_lost": lost,
        "hugetlb_free_poisoned": sum(1 for h in host.hugetlb.hstates.values()
                                     for f in h.free_list if "hwpoison" in f.flags),
        "hugetlb_pool_delta": 0 if start_pool is None else
        (pool_now - start_pool) >> host.geometry.pmd_order,
        "hardware_corrupted_kb": host.meminfo()["HardwareCorrupted"],
        "vm_states": vm_states,
        **mce_outcomes(host),
    }


def _early_not_told(host: Host, sigs: list[Any]) -> int:
    """Failures reported without consumption (AO: scrub, GHES, corrupt-pfn, kernel copies)
    in guest memory of a VM whose VMM has an EARLY thread, that the VMM never heard of."""
    from .trace import MemoryFailureCall

    told = {(e.pid, e.pfn) for e in sigs if e.si_code == "BUS_MCEERR_AO"}
    consumed = {e.pfn for e in host.trace.of(PoisonConsumed)
                if e.mode in ("user", "guest")}
    n = 0
    for e in host.trace.of(MemoryFailureCall):
        if "MF_ACTION_REQUIRED" in e.flags or e.pfn in consumed:
            continue
        for pid in _owners(host, e.pfn):
            vmm = next((p for p in host.processes.values() if p.pid == pid), None)
            if vmm is None or not vmm.alive or \
                    not any(t.mce_process and t.mce_early for t in vmm.threads):
                continue  # a VMM that was killed is not waiting to be told
            if (pid, e.pfn) not in told:
                n += 1
    return n


def records_lost(host: Host) -> list[int]:
    """Detected, really failed pfns that no structure remembers any more."""
    table = host.ext.get("gmem_table", {})
    out = []
    for pfn in sorted(host.phys.detected & host.phys.hw_errors):
        if pfn in host.phys.hwpoison or pfn in host.phys.isolated or pfn in table:
            continue
        f = host.phys.folio_of(pfn)
        if f is not None and "hwpoison" in f.flags and (pfn in f.raw_hwp or
                                                         "raw_hwp_unreliable" in f.flags):
            continue
        out.append(pfn)
    return out


def _guest_bytes_lost(host: Host, vm: Any) -> int:
    page = host.geometry.page_size
    if vm.state == "killed" or not vm.vmm.alive:
        return int(vm.memory_bytes())
    total = 0
    seen: set[int] = set()
    for s in vm.slots:
        inode = s.gmem
        if inode is not None and inode.extra.get("unusable"):
            total += s.npages * page
            continue
        if inode is not None:
            for f in list(inode.pages.values()):
                if f.pfn in seen:
                    continue
                if "hwpoison" in f.flags and f.order:
                    seen.add(f.pfn)
                    total += f.nr_pages * page
                elif f.pfn in host.phys.hwpoison:
                    seen.add(f.pfn)
                    total += page
    for gfn in vm.guest_offlined:
        pfn = _gfn_pfn(host, vm, gfn)
        f = host.phys.folio_of(pfn) if pfn is not None else None
        if f is not None and f.pfn in seen:
            continue  # already counted with its poisoned folio
        if f is None and pfn is not None and any(
                s <= pfn < s + (1 << 18) for s in seen):
            continue
        total += page
    hva_loss = 0
    for f in host.phys.folios.values():
        if f.kind == "hugetlb" and "hwpoison" in f.flags and f.mapping is not None \
                and f.mapping.kind == "hugetlbfs" and f.pfn not in seen \
                and any(r.mm is vm.vmm.mm for r in f.mapping.i_mmap):
            seen.add(f.pfn)
            hva_loss += f.nr_pages * page
    if hva_loss:
        # pages the guest offlined inside those folios are part of the same loss
        inside = sum(page for g in vm.guest_offlined
                     if (p := _gfn_pfn(host, vm, g)) is not None and
                     any(s <= p < s + (1 << 18) for s in seen))
        total += hva_loss - min(inside, hva_loss)
    return total


def _gfn_pfn(host: Host, vm: Any, gfn: int) -> int | None:
    """The pfn behind a gfn without allocating anything (None if there is none)."""
    s = vm.slot_of(gfn)
    if s is None:
        return None
    if s.gmem is not None and (gfn in vm.private or s.hva is None):
        f = s.gmem.lookup(gfn - s.base_gfn + s.gmem_pgoff)
        return None if f is None else f.pfn + (gfn - s.base_gfn + s.gmem_pgoff - f.index)
    if s.hva is None or vm.vmm.mm is None:
        return None
    hit = host.walk(vm.vmm.mm, s.hva + ((gfn - s.base_gfn) << 12))
    return None if hit is None else hit[1]
