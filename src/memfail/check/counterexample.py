"""Counterexamples as runnable scenario files, plus a diff-style trace of what each step changed.

Kept in one module so it follows the scenario format (docs/scenario-format.md) in one place.
With ``--races`` each stage of an event in flight is a ``stage`` step
(memfail.check.stage_action), so those counterexamples replay with ``memfail run`` too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memfail.check import races
from memfail.check.events import Label, StepSpec
from memfail.check.explorer import Verdict
from memfail.check.model_system import ModelState, ModelSystem, setup_steps
from memfail.model.trace import (
    Event,
    MemoryFailureCall,
    PoisonConsumed,
    PoisonHandedOut,
    ProcessExit,
    SignalSent,
    VmState,
)


def describe(label: Label) -> str:
    args = ", ".join(f"{k}={v}" for k, v in label[1] if v is not None)
    return f"{label[0]}({args})"


def stage_of(system: ModelSystem, label: Any, host: Any) -> str | None:
    """The ``--races`` stage a path step runs from a state whose Host is ``host``: a
    continuation's stage, or the first stage ``races.first_stage`` gives a new event in that
    state; None when the step is the label's model actions run as one step."""
    if races.is_continuation(label):
        return str(label[1][1][1])
    if system.races:
        first = races.first_stage(system.expand(label), label[0], host)
        return first[0] if first is not None else None
    return None


def describe_step(label: Any, stage: str | None = None) -> str:
    """A path step for comments and traces: the label, followed by the stage it runs
    (``vcpu_access(vm=vm0, ...) fault.map``) with ``--races``."""
    text = describe(races.origin(label))
    return f"{text} {stage}" if stage is not None else text


def steps_of(system: ModelSystem, label: Any, stage: str | None) -> list[StepSpec]:
    """The scenario steps of one path step: the label's model actions, or with a stage
    one ``stage`` step (memfail.check.stage_action) naming the event in flight
    (``describe`` of its label), its kind, the stage and the event's model actions."""
    origin = races.origin(label)
    specs = system.expand(origin)
    if stage is None:
        return specs
    return [("stage", {"op": describe(origin), "event": origin[0], "name": stage,
                       "actions": [{key: args} for key, args in specs]})]


def diff(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """Only what changed: ``key: old -> new``, ``+ key: new``, ``- key: old``."""
    out = []
    for k in sorted(before.keys() | after.keys()):
        a, b = before.get(k), after.get(k)
        if a == b:
            continue
        if a is None:
            out.append(f"+ {k}: {b}")
        elif b is None:
            out.append(f"- {k}: {a}")
        else:
            out.append(f"{k}: {a} -> {b}")
    return out


@dataclass
class Replay:
    """The states and per-step changes along a counterexample path."""

    states: list[ModelState]
    changes: list[list[str]] = field(default_factory=list)


def replay(system: ModelSystem, labels: list[Label]) -> Replay:
    s = system.initial()
    rep = Replay([s])
    view = system.render(s)
    for label in labels:
        s = system.step(s, label)
        new = system.render(s)
        lines = diff(view, new)
        lines += [f"event {e.kind}: {_brief(e)}" for e in s.events
                  if isinstance(e, SignalSent | PoisonConsumed | PoisonHandedOut | VmState |
                                MemoryFailureCall | ProcessExit)]
        rep.states.append(s)
        rep.changes.append(lines)
        view = new
    return rep


def _brief(e: Event) -> str:
    d = e.to_dict()
    d.pop("event", None)
    d.pop("step", None)
    return ", ".join(f"{k}={v}" for k, v in d.items() if v is not None)


def _step_expect(prop: str, events: tuple[Event, ...], sysm: ModelSystem) -> dict[str, Any]:
    """Expectations on the step where ``prop`` became violated."""
    if prop == "no-poison-reuse":
        return {"events": [{"event": "poison_handed_out", "pfn": e.pfn, "to": e.to}
                           for e in events if isinstance(e, PoisonHandedOut)][:1]}
    if prop == "contained":
        return {"events": [{"event": "poison_consumed", "pfn": e.pfn}
                           for e in events if isinstance(e, PoisonConsumed)][:1]}
    if prop == "sigbus-owner-only":
        owners = {sysm.ctx.vmm_of[v][:15] for v in sysm.ctx.vmm_of}
        return {"events": [{"event": "signal", "comm": e.comm, "thread": e.thread,
                            "si_code": e.si_code}
                           for e in events if isinstance(e, SignalSent) and
                           e.comm[:15] not in owners][:1] or
                [{"event": "signal", "comm": e.comm, "thread": e.thread}
                 for e in events if isinstance(e, SignalSent)][:1]}
    if prop == "early-told":
        # `signals:` lists the signals queued in the step (an ignored SIGBUS is not queued)
        return {"signals": [{"proc": e.comm, "thread": e.thread, "code": e.si_code}
                            for e in events if isinstance(e, SignalSent) and
                            e.outcome == "queued"],
                "events": [{"event": "memory_failure", "pfn": e.pfn}
                           for e in events if isinstance(e, MemoryFailureCall)][:1]}
    if prop == "unaffected-vms-run":
        return {"events": [{"event": "vm_state", "vm": e.vm, "state": e.state}
                           for e in events if isinstance(e, VmState)][:1]
                or [{"event": "exit", "comm": e.comm, "signal": e.signal}
                    for e in events if isinstance(e, ProcessExit)][:1]}
    return {}


def _final_expect(prop: str, first: ModelState, last: ModelState,
                  events: list[Event]) -> dict[str, Any]:
    """The scenario's final expectations: a panic, the HugeTLB counters, and the outcomes
    that differ from the state before the first step. The outcomes read the trace
    (model/outcomes.py) and a checked state's Host keeps none (each step's events go to the
    monitor): they are computed on a copy of the last Host given ``events``, every event of
    the path's steps, as `memfail run` has them in its trace."""
    out: dict[str, Any] = {}
    if prop == "no-host-panic":
        out["panic"] = True
    if prop == "hugetlb-counters":
        out["meminfo"] = {k: v for k, v in last.host.meminfo().items()
                          if k.startswith("HugePages_")}
    host = last.fresh_host()
    if getattr(host, "outcomes", None) is not None:
        host.trace.events = list(events)
        try:
            before, after = first.host.outcomes(), host.outcomes()
        except ImportError:  # the outcomes module is not there yet
            return out
        changed = {k: v for k, v in after.items() if before.get(k) != v}
        if changed:
            out["outcomes"] = changed
    return out


def _flow(v: Any) -> str:
    return json.dumps(v, separators=(", ", ": "))


def scenario_text(system: ModelSystem, verdict: Verdict) -> tuple[str, str]:
    """The scenario YAML reproducing ``verdict``'s counterexample, and its diff trace."""
    cfg = system.config
    labels: list[Label] = list(verdict.labels)  # type: ignore[arg-type]
    rep = replay(system, labels)
    title = f"{system.name}--{verdict.prop}"
    lines = [
        f"# Counterexample found by `memfail check`: policy {system.name!r} violates "
        f"{verdict.prop!r} in {verdict.depth} steps.",
        f"# {verdict.message}",
        f"name: {_flow(title)}",
        f"description: {_flow(f'{verdict.prop}: {verdict.message}')}",
        f"profile: {_flow(cfg.profile)}",
    ]
    if system.policy is not None:
        from memfail.model.policy.registry import policy_mapping

        lines.append(f"policy: {_flow(policy_mapping(system.policy))}")
    host: dict[str, Any] = {"memory": cfg.host.memory}
    if cfg.host.hugepages:
        host["hugepages"] = dict(cfg.host.hugepages)
    if cfg.host.sysctl:
        host["sysctl"] = dict(cfg.host.sysctl)
    if _scenario_has_geometry():
        host["geometry"] = cfg.geometry.model_dump()
    else:
        lines.append(f"# checked with geometry {cfg.geometry.model_dump()} (scaled huge pages)")
    lines.append(f"host: {_flow(host)}")
    lines.append("processes:")
    for p in cfg.processes:
        d: dict[str, Any] = {"name": p.name, "threads": p.threads}
        if p.sigbus != "default":
            d["sigbus"] = p.sigbus
        if p.mce_kill:
            d["mce_kill"] = dict(p.mce_kill)
        lines.append(f"  - {_flow(d)}")
    lines.append("steps:")
    setup: list[StepSpec] = setup_steps(cfg)
    lines.append("  # set-up")
    for key, args in setup:
        lines.append(f"  - {key}: {_flow(args)}")
    viol_step = len(labels) - 1
    stages = [stage_of(system, label, rep.states[i].host) for i, label in enumerate(labels)]
    for i, label in enumerate(labels):
        lines.append(f"  # step {i + 1}: {describe_step(label, stages[i])}")
        for change in rep.changes[i]:
            lines.append(f"  #   {change}")
        specs = steps_of(system, label, stages[i])
        for j, (key, args) in enumerate(specs):
            step: dict[str, Any] = {key: args}
            if j == len(specs) - 1:
                exp = _step_expect(verdict.prop, rep.states[i + 1].events, system)
                if verdict.prop == "contained" and i != viol_step:
                    exp = exp if exp.get("events") else {}
                elif i != viol_step:
                    exp = {}
                exp = {k: v for k, v in exp.items() if v or k == "signals"}
                if exp:
                    step["expect"] = exp
            lines.append(f"  - {key}: {_flow(args)}" if len(step) == 1 else f"  - {_flow(step)}")
    final = _final_expect(verdict.prop, rep.states[0], rep.states[-1],
                          [e for st in rep.states[1:] for e in st.events])
    if final:
        lines.append(f"expect: {_flow(final)}")
    trace = [f"{title}: {verdict.message}"]
    for i, label in enumerate(labels):
        trace.append(f"step {i + 1}: {describe_step(label, stages[i])}")
        trace += [f"    {c}" for c in rep.changes[i]] or ["    (no visible change)"]
    return "\n".join(lines) + "\n", "\n".join(trace) + "\n"


def _scenario_has_geometry() -> bool:
    try:
        from memfail.scenario.schema import HostSpec
    except ImportError:  # pragma: no cover
        return False
    return "geometry" in HostSpec.model_fields


def write_counterexample(out_dir: Path, system: ModelSystem, verdict: Verdict) -> Path:
    """Write ``<policy>--<property>.yaml`` and its ``.trace.txt``; return the scenario path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    text, trace = scenario_text(system, verdict)
    path = out_dir / f"{system.name}--{verdict.prop}.yaml"
    path.write_text(text)
    path.with_suffix(".trace.txt").write_text(trace)
    return path
