"""Outcome metrics computed from the trace and the final state of a Host."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from .trace import (
    PoisonConsumed,
    PoisonHandedOut,
    ProcessExit,
    SignalSent,
    VmState,
)

if TYPE_CHECKING:
    from .host import Host


def compute_outcomes(host: Host) -> dict[str, Any]:
    """Host panic, processes killed, signals, consumptions per PFN, poison handed out, VM
    states, HugeTLB and HardwareCorrupted figures: everything a comparison reports."""
    tr = host.trace
    consumed = Counter(e.pfn for e in tr.of(PoisonConsumed))
    sigs = [e for e in tr.of(SignalSent) if e.outcome == "queued"]
    vm_states: dict[str, str] = {}
    for e in tr.of(VmState):
        vm_states[e.vm] = e.state
    out: dict[str, Any] = {
        "host_panic": host.panicked is not None,
        "killed": sorted({e.comm for e in tr.of(ProcessExit) if e.signal is not None}),
        "signals": len(sigs),
        "consumptions": sum(consumed.values()),
        "max_consumptions_per_pfn": max(consumed.values(), default=0),
        "poison_handed_out": len(tr.of(PoisonHandedOut)),
        "hardware_corrupted_kb": host.meminfo()["HardwareCorrupted"],
        "vm_states": vm_states,
    }
    extra = host.ext.get("outcomes")
    if extra is not None:
        out.update(extra(host))
    return out
