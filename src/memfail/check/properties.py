"""The safety properties `memfail check` verifies, each tied to a concern of the 2025-07-24 call.

A property is a function of (host state, Monitor): the Monitor folds the trace into the little
history the properties need, so it can be built step by step (checker) or from a whole trace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from memfail.check.system import canonical_bytes
from memfail.model.trace import (
    BUS_MCEERR_AO,
    BUS_MCEERR_AR,
    SI_CODE_NAMES,
    SI_KERNEL,
    SIGBUS,
    Event,
    MemoryFailureCall,
    Panic,
    PoisonConsumed,
    PoisonHandedOut,
    ProcessExit,
    SignalSent,
    VmState,
)

AO = SI_CODE_NAMES[BUS_MCEERR_AO]
# SIGBUS codes of memory-failure signals: BUS_MCEERR_AR/AO (force_sig_mceerr, send_sig_mceerr:
# kill_proc, kill_accessing_process, the hwpoison-entry fault of x86 do_sigbus, R40) and the
# plain SIGBUS (SI_KERNEL) of kill_me_now()/kill_me_maybe() when memory_failure() fails (R46,
# R65). BUS_ADRERR is x86 do_sigbus() for VM_FAULT_SIGBUS: a load of guest_memfd memory that
# is private (kvm_gmem_fault_user_mapping), past EOF, or of an unusable guest_memfd; it is the
# VMM's own fault or the policy's declared effect on the owner, never a signal memory_failure()
# sends, so it neither counts as a misdirected memory-failure SIGBUS nor makes the step one
# that handled a failure.
MF_CODES = frozenset({SI_CODE_NAMES[BUS_MCEERR_AR], AO, SI_CODE_NAMES[SI_KERNEL]})


@dataclass(frozen=True)
class Context:
    """Static facts from the configuration the properties need."""

    vmm_of: Mapping[str, str] = field(default_factory=dict)          # vm -> VMM process
    early: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # process -> EARLY threads

    def vm_of_proc(self, proc: str) -> str | None:
        return next((vm for vm, p in self.vmm_of.items() if p[:15] == proc[:15]), None)


@dataclass(frozen=True)
class Monitor:
    """The history the properties need, folded from trace events (part of the checked state)."""

    panic: str | None = None
    affected: frozenset[str] = frozenset()           # VMs whose memory took an error
    detected: frozenset[int] = frozenset()           # pfns memory_failure() was called on
    consumed: tuple[tuple[int, int], ...] = ()       # (pfn, times consumed, capped at 2)
    handed_out: frozenset[tuple[int, str]] = frozenset()
    wrong_signal: frozenset[str] = frozenset()
    untold: frozenset[str] = frozenset()
    down: frozenset[str] = frozenset()               # VMs killed or paused, with why

    def key(self) -> tuple[Any, ...]:
        return (self.panic, self.affected, self.detected, self.consumed, self.handed_out,
                self.wrong_signal, self.untold, self.down)

    def key_bytes(self) -> bytes:
        """canonical_bytes(key()), computed once per Monitor (most steps keep their parent's)."""
        got: bytes | None = self.__dict__.get("_key_bytes")
        if got is None:
            got = canonical_bytes(self.key())
            object.__setattr__(self, "_key_bytes", got)
        return got

    def fold(self, ctx: Context, events: Iterable[Event], vm: str | None = None,
             error: bool = False, ao_probe: bool = False,
             also_affected: frozenset[str] = frozenset()) -> Monitor:
        """The monitor after one step that emitted ``events``.

        ``vm`` is the VM the step was about; ``error`` says the step put a hardware error in its
        memory; ``ao_probe`` says the step may detect an unconsumed error (scrub, GHES).
        """
        events = list(events)
        if not events and not (vm is not None and error) and also_affected <= self.affected:
            return self  # nothing to fold
        panic, affected = self.panic, set(self.affected)
        detected, consumed = set(self.detected), dict(self.consumed)
        handed, wrong, untold, down = (set(self.handed_out), set(self.wrong_signal),
                                       set(self.untold), set(self.down))
        if vm is not None and error:
            affected.add(vm)
        affected |= also_affected
        owners = {ctx.vmm_of[v][:15] for v in affected if v in ctx.vmm_of}
        ao_calls = []
        ao_told = set()
        # Only stops after a memory failure count against unaffected VMs.
        # ... and only when this very step handled or consumed a failure or sent an MCE
        # SIGBUS (a VMM killed by an unrelated fault is not the failure's blast radius)
        failures = any(isinstance(e, MemoryFailureCall | PoisonConsumed) or
                       (isinstance(e, SignalSent) and e.si_code in MF_CODES) for e in events)
        kernel_hit = {e.pfn for e in events
                      if isinstance(e, PoisonConsumed) and e.mode == "kernel"}
        for e in events:
            if isinstance(e, Panic):
                # a kernel read of an error nobody had reported yet panics under every
                # policy; the property is about failures the kernel already knew of
                if not kernel_hit or kernel_hit & self.detected:
                    panic = panic or (f"{e.reason} (on a failure reported earlier)"
                                      if kernel_hit else e.reason)
            elif isinstance(e, MemoryFailureCall):
                # Only a first detection must be told; later reports are "already
                # poisoned", and so is a new raw page of a huge folio memory_failure()
                # handled before (-EHWPOISON): the tell for that folio covered it (its
                # si_addr_lsb spans the folio).
                if "MF_ACTION_REQUIRED" not in e.flags and e.pfn not in self.detected \
                        and e.ret_name != "EHWPOISON":
                    ao_calls.append(e)
                detected.add(e.pfn)
            elif isinstance(e, PoisonConsumed):
                # machine-check-safe kernel copies are contained. A consumption while an
                # earlier one of the same poison waits for its memory_failure() (the task
                # work queued by queue_task_work(), M5-M8: another vCPU loading the line
                # before the first one's task work ran) is one no policy can prevent, as no
                # policy code has run yet: only a consumption after memory_failure() was
                # called on the page counts as consumed again
                window = e.pfn not in detected and consumed.get(e.pfn, 0) >= 1
                if e.mode in ("guest", "user") and not window:
                    consumed[e.pfn] = min(2, consumed.get(e.pfn, 0) + 1)
                # the consumer's VM is affected even when the frame was free when the error
                # appeared and was handed to this VM afterwards
                hit = e.vm or ctx.vm_of_proc(e.by.split(":", 1)[0])
                if hit is not None and hit not in affected:
                    affected.add(hit)
                    owners = {ctx.vmm_of[v][:15] for v in affected if v in ctx.vmm_of}
            elif isinstance(e, PoisonHandedOut):
                handed.add((e.pfn, e.to))
            elif isinstance(e, SignalSent) and e.signo == SIGBUS and e.si_code in MF_CODES:
                # a process that runs no VM, signalled for its own memory by a step that is
                # not about a VM (an `action` on it), is the kernel doing its job (R13)
                bystander_own = vm is None and ctx.vm_of_proc(e.comm) is None
                if e.comm[:15] not in owners and not bystander_own:
                    wrong.add(f"SIGBUS {e.si_code} to {e.comm}/{e.thread}, which runs no VM "
                              "whose memory failed")
                if e.si_code == AO:
                    ao_told.add((e.comm[:15], e.thread))
            elif isinstance(e, VmState) and e.state in ("killed", "paused") \
                    and e.vm not in affected and failures:
                down.add(f"{e.vm} {e.state} ({e.why})")
            elif isinstance(e, ProcessExit) and e.signal is not None and failures:
                victim = ctx.vm_of_proc(e.comm)
                if victim is not None and victim not in affected:
                    down.add(f"{victim}'s VMM {e.comm} killed by signal {e.signal}")
        if ao_probe and vm is not None and ao_calls and vm in ctx.vmm_of:
            vmm = ctx.vmm_of[vm]
            early = ctx.early.get(vmm, ())
            # kill_procs() signals one thread per process: task_early_kill() picks the first
            # thread with PF_MCE_EARLY (find_early_kill_thread), so one told EARLY thread is
            # the process told
            if early and not any((vmm[:15], t) in ao_told for t in early):
                untold.add(f"EARLY thread {vmm}/{early[0]} not told of the unconsumed failure "
                           f"at pfn {ao_calls[0].pfn:#x}")
        return Monitor(panic, frozenset(affected), frozenset(detected),
                       tuple(sorted(consumed.items())), frozenset(handed), frozenset(wrong),
                       frozenset(untold), frozenset(down))


def monitor_from_trace(ctx: Context, events: Iterable[Event]) -> Monitor:
    """Fold a whole trace (for checking a scenario's final state). The VMs of error steps are
    unknown here, so every VM is taken as possibly affected by the errors of the trace."""
    evs = list(events)
    mon = Monitor()
    if any(isinstance(e, MemoryFailureCall | PoisonConsumed) for e in evs):
        mon = replace(mon, affected=frozenset(ctx.vmm_of))
    return mon.fold(ctx, evs)


# --------------------------------------------------------------------------- host views


def poison_records(host: Any) -> set[int]:
    """PFNs the kernel still knows to be bad: PG_hwpoison raw pages, isolated pages, poisoned
    folios (their raw error list, or every page when it is unreliable), and the policy's own
    tracking (C1's global table, ``host.ext["gmem_table"]``, or ``recorded_pfns(host)``)."""
    phys = host.phys
    known = set(phys.hwpoison) | set(phys.isolated)
    for folio in phys.folios.values():
        if "hwpoison" in folio.flags:
            if folio.raw_hwp and "raw_hwp_unreliable" not in folio.flags:
                known.update(folio.raw_hwp)
            else:
                known.update(range(folio.pfn, folio.pfn + folio.nr_pages))
    for h in host.hugetlb.hstates.values():
        for folio in h.free_list:
            if "hwpoison" in folio.flags:
                known.update(range(folio.pfn, folio.pfn + folio.nr_pages))
    # C1's global table of guest_memfd failures, keyed by pfn (memfail.model.kvm.gmem).
    known.update(p for p in getattr(host, "ext", {}).get("gmem_table", {}) if isinstance(p, int))
    policy = getattr(host, "policy", None)
    recorded = getattr(policy, "recorded_pfns", None)
    if recorded is not None:
        known.update(recorded(host))
    return known


def hugetlb_problems(host: Any) -> list[str]:
    out = []
    for h in host.hugetlb.hstates.values():
        c = h.counters()
        name = h.name
        if not 0 <= c["free"] <= c["total"]:
            out.append(f"{name}: free {c['free']} outside 0..total {c['total']}")
        if not 0 <= c["resv"] <= c["free"]:
            out.append(f"{name}: reserved {c['resv']} outside 0..free {c['free']}")
        if not 0 <= c["surplus"] <= c["total"]:
            out.append(f"{name}: surplus {c['surplus']} outside 0..total {c['total']}")
        if len(h.free_list) != c["free"]:
            out.append(f"{name}: {len(h.free_list)} folios on the free list, counter says "
                       f"{c['free']}")
    return out


# --------------------------------------------------------------------------- the properties

Check = Callable[[Any, Monitor], "str | None"]


@dataclass(frozen=True)
class PropertyDef:
    name: str
    doc: str
    concern: str
    check: Check


def _no_panic(host: Any, m: Monitor) -> str | None:
    # the monitor holds only panics the property counts (see Monitor.fold)
    return f"host panic: {m.panic}" if m.panic else None


def _no_reuse(host: Any, m: Monitor) -> str | None:
    if m.handed_out:
        pfn, to = min(m.handed_out)
        return f"poisoned pfn {pfn:#x} handed out unmarked to {to}"
    return None


def _contained(host: Any, m: Monitor) -> str | None:
    again = [pfn for pfn, n in m.consumed if n >= 2]
    return f"poison at pfn {again[0]:#x} consumed again after a consumed failure" if again \
        else None


def _owner_only(host: Any, m: Monitor) -> str | None:
    return min(m.wrong_signal) if m.wrong_signal else None


def _early_told(host: Any, m: Monitor) -> str | None:
    return min(m.untold) if m.untold else None


def _no_record_lost(host: Any, m: Monitor) -> str | None:
    bad = (set(m.detected) & set(host.phys.hw_errors)) - poison_records(host)
    return f"failure record of pfn {min(bad):#x} lost" if bad else None


def _hugetlb_ok(host: Any, m: Monitor) -> str | None:
    probs = hugetlb_problems(host)
    return probs[0] if probs else None


def _unaffected_run(host: Any, m: Monitor) -> str | None:
    return f"unaffected VM stopped: {min(m.down)}" if m.down else None


def _host_survives(host: Any, m: Monitor) -> str | None:
    from memfail.model.kernel.mce import host_down_reason

    return host_down_reason(host)


PROPERTIES: tuple[PropertyDef, ...] = (
    PropertyDef("no-host-panic", "The host kernel never panics because of a failure it was "
                "already told about (a kernel read of a not-yet-reported error panics under "
                "every policy and is not counted).",
                "Risk of keeping failed memory mapped: 'subsequent accesses may take down host' "
                "(Dan); kernel users relying on PG_hwpoison (C7)", _no_panic),
    PropertyDef("no-poison-reuse",
                "A page the kernel was told is bad is never handed to a new user unmarked.",
                "C4: HWpoison only at inode release, so HugeTLB's free path can isolate raw "
                "pages", _no_reuse),
    PropertyDef("contained",
                "After a consumed failure, the same poison is never consumed again once "
                "memory_failure() has run on it (loads by other CPUs before the first "
                "consumption's task work runs are the hardware's window, not counted).",
                "C2 vs C7: 'unmap on error is non-negotiable' (Dan); C5 no fault check",
                _contained),
    PropertyDef("sigbus-owner-only",
                "SIGBUS goes only to a thread of a VMM whose guest memory failed.",
                "C3: SIGBUS to current, 'current may not always be the VM'", _owner_only),
    PropertyDef("early-told",
                "An EARLY thread of the owning VMM is told (BUS_MCEERR_AO) of an unconsumed "
                "failure when it is detected (EARLY: PR_MCE_KILL_EARLY, or no per-thread "
                "policy with vm.memory_failure_early_kill = 1).",
                "C6: no PR_MCE_KILL_EARLY; C8 future work", _early_told),
    PropertyDef("no-record-lost",
                "Every detected failure stays recorded (PG_hwpoison, raw list, isolation or the "
                "policy's table) across split, merge, punch hole and release.",
                "C1 global tracking; C4; 'marking HWpoison complicates folio restructuring'",
                _no_record_lost),
    PropertyDef("hugetlb-counters", "HugeTLB pool counters stay consistent.",
                "C4: poisoned folios returned to HugeTLB at release", _hugetlb_ok),
    PropertyDef("unaffected-vms-run",
                "VMs whose memory did not fail are never killed or paused.",
                "C7: 'kill the guest completely' (Sean), 'make guest_memfd unusable' (James): "
                "the blast radius", _unaffected_run),
    PropertyDef("host-survives",
                "No guest takes the host down: no machine-check delivery panic (rendezvous "
                "timeout, R44 panics), no processor shutdown, whole-host stalls within the "
                "bound (mce_config stall_bound_us; docs/mce.md M10).",
                "'Subsequent accesses may take down host' (Dan); no #MC virtualization for "
                "confidential guests", _host_survives),
)

PROPERTY_NAMES = tuple(p.name for p in PROPERTIES)


def property_def(name: str) -> PropertyDef:
    for p in PROPERTIES:
        if p.name == name:
            return p
    raise KeyError(name)
