"""Outcome metrics computed from the trace and the final state of a Host.

These are what the policy comparison, the checker and the fleet estimate count; every figure
is derived from trace events and final state, never from a parallel model. docs/policies.md
("What is counted") says exactly what each figure counts.
"""

from __future__ import annotations

from bisect import bisect_left
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
    from .state import HostState as Host

OUTCOME_DOCS: dict[str, str] = {
    "host_panic": "the host kernel panicked",
    "vms_killed": "VMs that were killed at any point of the run: their VMM died of a signal or "
                  "exited on an error, or the policy killed them (a later reset or destroy "
                  "does not undo it)",
    "vms_paused": "VMs stopped with an internal error (KVM_RUN failed) and never killed",
    "guests_panicked": "guests that panicked on a vMCE",
    "killed": "processes killed by a signal",
    "mce_signals": "SIGBUS with BUS_MCEERR_AR/AO generated",
    "wrong_process_signals": "MCE SIGBUS queued to a process that did not consume the poison "
                             "and neither owns (the VMM of the guest memory) nor maps the "
                             "failed page, plus user-space consumers of poison that were sent "
                             "no signal at all; an AR to the consumer, or to a process touching "
                             "its own poisoned mapping, is what the kernel does and is not "
                             "counted",
    "owner_told_unconsumed": "AO SIGBUS that reached the VMM owning the failed memory",
    "vmce_injected": "machine checks injected into guests",
    "early_not_told": "unconsumed failures in a VM's memory whose VMM has a PR_MCE_KILL_EARLY "
                      "thread that was never sent BUS_MCEERR_AO for it",
    "consumptions": "times poisoned memory was consumed by a CPU",
    "repeated_consumptions": "consumptions of a pfn after its first (containment failures)",
    "poison_handed_out": "pages with a known error handed to a new user without PG_hwpoison",
    "records_lost": "detected failed pfns with no record left (no PG_hwpoison, no table entry, "
                    "not isolated)",
    "guest_pages_lost": "4 KiB guest pages the guest can no longer use at the end: every page "
                        "of a killed VM or of an unusable guest_memfd; in the others, the failed "
                        "pages themselves, healthy pages a fault check refuses (the rest of a "
                        "folio refused whole), pages behind a hwpoison host entry, and pages the "
                        "guest offlined after a vMCE; each page once",
    "guest_bytes_lost": "guest_pages_lost in bytes",
    "hugetlb_free_poisoned": "free HugeTLB folios that hold a poisoned page (skipped by "
                             "allocation, lost to the pool)",
    "hugetlb_pool_delta": "change of nr_hugepages over the run, each pool counted in its own "
                          "huge pages (a lost 1 GiB page is -1), summed over sizes",
    "hugetlb_pool_delta_by_size": "the same per pool size ({'2M': -1})",
    "hardware_corrupted_kb": "HardwareCorrupted in /proc/meminfo at the end",
}

# What kind of finding an outcome is (see ``outcome_class``).
HAZARD = "hazard"          # the host or another tenant is put at risk, or poison spreads
COST = "cost"              # a price paid to contain the failure (a VM, its memory)
ACCEPTED = "accepted"      # a limitation the policy accepts by design (the call's "Limitation")
CLASSES = (HAZARD, COST, ACCEPTED)
CLASS_DOCS = {
    HAZARD: "a risk to the host or to other processes: panic, poison consumed again or handed "
            "out again, a signal to the wrong process, a record lost",
    COST: "what containment costs the tenant: a VM killed, paused or panicked, memory lost",
    ACCEPTED: "a limitation the policy accepts on purpose (the call's 'Limitation' slides): "
              "no PR_MCE_KILL_EARLY (C6) when early_not_told, SIGBUS to current (C3) when "
              "wrong_process_signals",
}
_BASE_CLASS = {
    "host_panic": HAZARD, "repeated_consumptions": HAZARD, "poison_handed_out": HAZARD,
    "wrong_process_signals": HAZARD, "records_lost": HAZARD, "early_not_told": HAZARD,
    "vms_killed": COST, "vms_paused": COST, "guests_panicked": COST, "guest_bytes_lost": COST,
    "guest_pages_lost": COST,
}


def outcome_class(key: str, policy: Any | None) -> str | None:
    """hazard, cost or accepted for a finding under ``policy`` (None: not a finding).

    A policy that does not honour PR_MCE_KILL_EARLY (``honor_early: false``, C6) accepts that
    an EARLY VMM is not told; one that signals current on consumption (``consumed:
    sigbus-current``, C3) accepts that current may not be the process that should be told.
    """
    cls = _BASE_CLASS.get(key)
    if cls is None or policy is None:
        return cls
    if key == "early_not_told" and not policy.honor_early:
        return ACCEPTED
    if key == "wrong_process_signals" and policy.consumed == "sigbus-current":
        return ACCEPTED
    return cls


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
_BASE_CLASS["host_stalled"] = HAZARD  # the host held in broadcast machine checks (M10)


def stall_outcomes(host: Host) -> dict[str, Any]:
    """``host_stall_us`` and ``repeated_consumptions`` alone, as ``compute_outcomes`` gives
    them, without the rest (what a guest's rounds add to, asked for in the middle of a
    fleet model run)."""
    consumed = Counter(e.pfn for e in host.trace.of(PoisonConsumed))
    return {"host_stall_us": mce_outcomes(host)["host_stall_us"],
            "repeated_consumptions": _repeated(consumed)}


def _repeated(consumed: Counter[int]) -> int:
    """Consumptions of a pfn after its first."""
    return sum(n - 1 for n in consumed.values())


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


def _mappers(host: Host, pfn: int) -> set[int]:
    """pids of the processes whose page tables map ``pfn`` now (collect_procs' candidates)."""
    folio = host.phys.folio_of(pfn)
    if folio is None:
        return set()
    mm_ids = {mm_id for mm_id, _ in folio.rmap}
    return {p.pid for p in host.processes.values() if p.mm is not None and p.mm.id in mm_ids}


def vm_history(host: Host) -> dict[str, str]:
    """Each VM's outcome: the worst state it was ever in (killed > guest-panicked > paused >
    its last state). A reset or destroy after a kill does not turn it back."""
    seen: dict[str, list[str]] = {}
    for e in host.trace.of(VmState):
        seen.setdefault(e.vm, []).append(e.state)
    out: dict[str, str] = {}
    for vm, states in seen.items():
        for worst in ("killed", "guest-panicked", "paused"):
            if worst in states:
                out[vm] = worst
                break
        else:
            out[vm] = states[-1]
    return out


def wrong_process_signals(host: Host, sigs: list[SignalSent]) -> int:
    """MCE SIGBUS to a process that did not consume the poison (AR) or does not own or map
    the failed memory (AO), plus user-space consumers sent no signal (R35-R39, C3)."""
    consumers: dict[int, set[int]] = {}
    consumed = [e for e in host.trace.of(PoisonConsumed)]
    for e in consumed:
        if e.pid is not None:
            consumers.setdefault(e.pfn, set()).add(e.pid)
    wrong = 0
    for e in sigs:
        if e.pfn is None:
            continue
        # AR: the consumer, or a process touching its own mapping of a page already
        # poisoned (R40, kvm_send_hwpoison_signal); AO: the owners and mappers (R35)
        right = _owners(host, e.pfn) | _mappers(host, e.pfn)
        if e.si_code == "BUS_MCEERR_AR":
            right |= consumers.get(e.pfn, set())
        if right and e.pid not in right:
            wrong += 1
    signalled = [(e.pid, e.step) for e in host.trace.of(SignalSent) if e.outcome == "queued"]
    signalled += [(e.pid, e.step) for e in host.trace.of(ProcessExit) if e.signal is not None]
    for e in consumed:
        if e.mode != "user" or e.pid is None:
            continue
        if not any(pid == e.pid and step >= e.step for pid, step in signalled):
            wrong += 1
    return wrong


# Every key compute_outcomes() gives (a scenario's ``expect.outcomes`` may name only these).
OUTCOME_KEYS: tuple[str, ...] = tuple(dict.fromkeys(
    [*OUTCOME_DOCS, *MCE_OUTCOME_DOCS, "vm_states", "classes"]))


def compute_outcomes(host: Host) -> dict[str, Any]:
    """Every figure in ``OUTCOME_DOCS`` for this host's run, plus ``vm_states`` (each VM's
    history, see ``vm_history``) and ``classes`` (the class of each non-zero finding)."""
    tr = host.trace
    consumed = Counter(e.pfn for e in tr.of(PoisonConsumed))
    sigs = [e for e in tr.of(SignalSent)
            if e.outcome == "queued" and e.si_code in ("BUS_MCEERR_AR", "BUS_MCEERR_AO")]
    told = 0
    for e in sigs:
        if e.pfn is None:
            continue
        owners = _owners(host, e.pfn)
        if owners and e.pid in owners and e.si_code == "BUS_MCEERR_AO":
            told += 1
    vm_states = vm_history(host)
    vms = host.ext.get("vms", {})
    pages = sum(guest_pages_lost(host, vm, vm_states.get(vm.name)) for vm in vms.values())
    start = host.ext.get("pool_at_start_by_order", {})
    by_size = {host.geometry.huge_name(o): h.nr_huge_pages - start.get(o, h.nr_huge_pages)
               for o, h in sorted(host.hugetlb.hstates.items())}
    out: dict[str, Any] = {
        "host_panic": host.panicked is not None,
        "vms_killed": sum(1 for s in vm_states.values() if s == "killed"),
        "vms_paused": sum(1 for s in vm_states.values() if s == "paused"),
        "guests_panicked": len([e for e in tr.of(GuestEvent) if e.what == "panic"]),
        "killed": sorted({e.comm for e in tr.of(ProcessExit) if e.signal is not None}),
        "mce_signals": len(sigs),
        "wrong_process_signals": wrong_process_signals(host, sigs),
        "owner_told_unconsumed": told,
        "vmce_injected": len(tr.of(MceInjected)),
        "early_not_told": _early_not_told(host, sigs),
        "consumptions": sum(consumed.values()),
        "repeated_consumptions": _repeated(consumed),
        "poison_handed_out": len(tr.of(PoisonHandedOut)),
        "records_lost": len(records_lost(host)),
        "guest_pages_lost": pages,
        "guest_bytes_lost": pages * 4096,
        "hugetlb_free_poisoned": sum(1 for h in host.hugetlb.hstates.values()
                                     for f in h.free_list if "hwpoison" in f.flags),
        "hugetlb_pool_delta": sum(by_size.values()),
        "hugetlb_pool_delta_by_size": {k: v for k, v in by_size.items() if v},
        "hardware_corrupted_kb": host.meminfo()["HardwareCorrupted"],
        "vm_states": vm_states,
        **mce_outcomes(host),
    }
    out["classes"] = {k: c for k in _BASE_CLASS if out.get(k)
                      and (c := outcome_class(k, host.policy)) is not None}
    return out


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


def _union_len(spans: list[tuple[int, int]]) -> int:
    n, end = 0, None
    for lo, hi in sorted(spans):
        if end is None or lo >= end:
            n += hi - lo
            end = hi
        elif hi > end:
            n += hi - end
            end = hi
    return n


def _known_bad(host: Host) -> list[int]:
    """Every frame known to have failed, host-wide and sorted: PG_hwpoison, the policy's
    table, or a detected hardware error (the folio's raw list is added per folio)."""
    return sorted(host.phys.hwpoison | (host.phys.detected & host.phys.hw_errors)
                  | set(host.ext.get("gmem_table", {})))


def _failed_pfns(folio: Any, bad: list[int]) -> list[int]:
    """Pages of ``folio`` known to have failed: PG_hwpoison, the raw list, the policy's table,
    or a detected hardware error. ``bad`` is ``_known_bad(host)``, gathered once for all the
    folios asked about (a split 1 GiB folio is 262,144 of them); most have nothing in it,
    found with one bisection, before any list is built."""
    lo, hi = folio.pfn, folio.pfn + (1 << folio.order)
    i = bisect_left(bad, lo)
    out = bad[i:bisect_left(bad, hi, i)] if i < len(bad) and bad[i] < hi else []
    if folio.raw_hwp:
        out = sorted(set(out).union(p for p in folio.raw_hwp if lo <= p < hi))
    return out


def guest_pages_lost(host: Host, vm: Any, history: str | None = None) -> int:
    """4 KiB guest pages ``vm`` can no longer use (see ``OUTCOME_DOCS['guest_pages_lost']``).

    A page the guest can still read back is not lost: under a policy that refuses only the
    failed subpage, the rest of the huge folio stays usable; under one that refuses the whole
    folio (kvm_gmem_get_pfn's folio check, R67), every page of it is lost.
    """
    from .kvm.gmem import _claimed, _failed_in, policy

    per4k = host.geometry.page_size // 4096
    total = sum(s.npages for s in vm.slots) * per4k
    if history == "killed" or vm.state == "killed" or not vm.vmm.alive:
        return total
    spans: list[tuple[int, int]] = []  # gfn ranges [lo, hi)
    pol = policy(host)
    for s in vm.slots:
        inode = s.gmem
        if inode is not None and inode.extra.get("unusable"):
            spans.append((s.base_gfn, s.base_gfn + s.npages))
            continue
        if inode is None:
            continue
        seen: set[int] = set()
        bad = _known_bad(host)
        for f in list(inode.pages.values()):
            failed = _failed_pfns(f, bad)
            if not failed or f.pfn in seen:
                continue
            seen.add(f.pfn)
            lo_idx = f.index
            healthy = next((p for p in range(f.pfn, f.pfn + min(f.nr_pages, len(failed) + 1))
                            if p not in failed), None)
            checks = pol.fault_check or not _claimed(host, f)
            whole = checks and healthy is not None and _failed_in(host, f, healthy)
            idxs = [(lo_idx, lo_idx + f.nr_pages)] if whole else \
                [(lo_idx + p - f.pfn, lo_idx + p - f.pfn + 1) for p in failed]
            for a, b in idxs:
                a, b = max(a, s.gmem_pgoff), min(b, s.gmem_pgoff + s.npages)
                if a < b:
                    spans.append((s.base_gfn + a - s.gmem_pgoff, s.base_gfn + b - s.gmem_pgoff))
    for g in vm.guest_offlined:
        spans.append((g, g + 1))
    mm = vm.vmm.mm
    for f in host.phys.folios.values():
        if f.kind != "hugetlb" or "hwpoison" not in f.flags or f.mapping is None \
                or f.mapping.kind != "hugetlbfs":
            continue
        for r in f.mapping.i_mmap:
            if r.mm is not mm:
                continue
            addr = r.addr_of(f.index, host.geometry.page_shift)
            for s in vm.slots:
                if addr is not None and s.hva is not None and \
                        s.hva <= addr < s.hva + (s.npages << host.geometry.page_shift):
                    g = s.base_gfn + ((addr - s.hva) >> host.geometry.page_shift)
                    spans.append((g, min(g + f.nr_pages, s.base_gfn + s.npages)))
    return _union_len(spans) * per4k
