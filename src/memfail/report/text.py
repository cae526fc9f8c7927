"""The dmesg-like text view of a scenario run: one block per step, then a summary.

Kernel log lines are printed exactly as the kernel prints them, behind a fake monotonic
timestamp (seconds = trace step index), so the view reads like ``dmesg`` next to the actions.
"""

from __future__ import annotations

import json
from typing import Any

from memfail.model.trace import (
    ActionDone,
    Event,
    HugetlbPool,
    KernelLog,
    MemoryFailureCall,
    MemoryFailureEvent,
    Observation,
    Panic,
    ProcessExit,
    PteChange,
    SignalDelivered,
    SignalSent,
)
from memfail.scenario.expect import signal_name
from memfail.scenario.runner import ActionRecord, RunResult


def fmt_value(v: Any) -> str:
    if isinstance(v, dict | list | tuple):
        return json.dumps(v, default=str, separators=(", ", ": "))
    if isinstance(v, int) and not isinstance(v, bool) and v >= 1 << 16:
        return hex(v)
    return str(v)


def header(rec: ActionRecord) -> str:
    label = f"step {rec.index}" if rec.index is not None else "setup"
    if not rec.ran:
        return f"[{label}] {rec.action.describe()}  -> not run (the host panicked)"
    errno = f" ({rec.errno})" if rec.errno else ""
    return f"[{label}] {rec.action.describe()}  -> {fmt_value(rec.ret)}{errno}"


def fmt_signal(e: SignalSent) -> str:
    who = f"{e.comm}:{e.pid}/{e.thread}"
    parts = [f"{signal_name(e.signo)} -> {who} {e.si_code}"]
    if e.addr_rel is not None or e.addr is not None:
        parts.append(f"addr={e.addr_rel if e.addr_rel is not None else hex(e.addr or 0)}")
    if e.lsb is not None:
        parts.append(f"lsb={e.lsb}")
    if e.forced:
        parts.append("forced")
    return " ".join(parts) + f" ({e.outcome})"


def fmt_event(e: Event) -> str | None:
    """One compact line for an event that is not a log line or a generated signal."""
    if isinstance(e, ActionDone | Observation):
        return None  # the header shows the result
    if isinstance(e, MemoryFailureEvent):
        return f"memory_failure_event: pfn {e.pfn:#x} {e.page_type}: {e.result}"
    if isinstance(e, MemoryFailureCall):
        flags = "|".join(e.flags) or "0"
        return f"memory_failure({e.pfn:#x}, {flags}) = {e.ret_name} via {e.via}"
    if isinstance(e, SignalDelivered):
        return (f"{e.comm}:{e.pid}/{e.thread} took SIGBUS {e.si_code}"
                + (f" addr={e.addr_rel}" if e.addr_rel else "") + f": {e.effect}")
    if isinstance(e, PteChange):
        return f"pte {e.addr_rel} (pid {e.pid}) -> {e.change} pfn {e.pfn:#x} level {e.level}"
    if isinstance(e, HugetlbPool):
        return (f"hugetlb {e.size}: total {e.total} free {e.free} resv {e.resv} "
                f"surplus {e.surplus} ({e.why})")
    if isinstance(e, ProcessExit):
        how = (f"killed by {signal_name(e.signal)}" + (" (core dumped)" if e.core else "")
               if e.signal else f"exited with code {e.code}")
        return f"process {e.comm}:{e.pid} {how}"
    if isinstance(e, Panic):
        return f"KERNEL PANIC: {e.reason}"
    d = e.to_dict()
    d.pop("step", None)
    kind = d.pop("event")
    return kind + " " + " ".join(f"{k}={fmt_value(v)}" for k, v in d.items())


def render_record(rec: ActionRecord, out: list[str]) -> None:
    out.append(header(rec))
    if rec.note:
        out.append(f"  # {rec.note}")
    logs = [e for e in rec.events if isinstance(e, KernelLog) and not _own_note(e)]
    for i, e in enumerate(logs):
        out.append(f"[{rec.trace_step:5d}.{i:06d}] {e.text}")
    for ev in rec.events:  # the model's own notes are not kernel lines: no dmesg timestamp
        if isinstance(ev, KernelLog) and _own_note(ev):
            out.append(f"  note: {ev.text.removeprefix('memfail: ')}")
    for ev in rec.events:
        if isinstance(ev, SignalSent):
            out.append("  " + fmt_signal(ev))
    for ev in rec.events:
        if not isinstance(ev, KernelLog | SignalSent):
            line = fmt_event(ev)
            if line:
                out.append("  " + line)
    for f in rec.failures:
        out.append(f"  FAILED {f}")


def _own_note(e: KernelLog) -> bool:
    """A line memfail writes about a step it could not carry out (Host.apply: a target that
    went away), not one the kernel prints (expect.py leaves it out of dmesg checks too)."""
    return e.level == "debug" and e.text.startswith("memfail: ")


def render_summary(r: RunResult, out: list[str]) -> None:
    sc = r.scenario
    verdict = "ok" if r.ok else "FAILED"
    out.append(f"== {sc.name}: {verdict} (profile {r.profile}, policy {r.policy or '-'})")
    out.append(f"expectations: {r.passed} passed, {len(r.failures)} failed")
    for f in r.failures:
        out.append(f"  {f}")
    # Only what changed, plus the poison counter, keeps the summary short.
    keys = [k for k in r.meminfo_after if k in r.meminfo_before and
            (k == "HardwareCorrupted" or r.meminfo_before[k] != r.meminfo_after[k])]
    if keys:
        width = max(len(k) for k in keys)
        out.append(f"meminfo:{'':{max(0, width - 6)}} {'before':>10} {'after':>10}")
        for k in keys:
            out.append(f"  {k:{width}} {r.meminfo_before[k]:>10} {r.meminfo_after[k]:>10}")
    if r.mf_stats:
        out.append("mf_stats: " + ", ".join(f"{k} {v}" for k, v in r.mf_stats.items()))
    for name, st in r.processes.items():
        out.append(f"process {name}: {_status(st)}")
    if r.panicked:
        out.append(f"host panicked: {r.panicked}")


def _status(st: dict[str, Any]) -> str:
    state = st.get("state", "?")
    if state == "killed" and st.get("signal") is not None:
        return f"killed by {signal_name(int(st['signal']))}"
    if state == "exited":
        return f"exited with code {st.get('code')}"
    return str(state)


def render_text(r: RunResult, quiet: bool = False) -> str:
    """The full view, or with ``quiet`` only the failures and a one-line verdict."""
    out: list[str] = []
    if quiet:
        out.extend(str(f) for f in r.failures)
        out.append(f"{r.scenario.name}: {'ok' if r.ok else 'FAILED'} "
                   f"({r.passed} passed, {len(r.failures)} failed)")
        return "\n".join(out) + "\n"
    desc = r.scenario.description.splitlines()[0] if r.scenario.description else ""
    desc = f" - {desc[:97]}..." if len(desc) > 100 else f" - {desc}" if desc else ""
    out.append(f"# {r.scenario.name} ({r.scenario.file}){desc}")
    for rec in r.setup:
        render_record(rec, out)
    for rec in r.steps:
        render_record(rec, out)
    render_summary(r, out)
    return "\n".join(out) + "\n"
