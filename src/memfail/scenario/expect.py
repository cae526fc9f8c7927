"""Checking a scenario's expectations against the trace and the host's final state.

Each given expectation field is one check; a failed check becomes a ``Failure`` that names the
file, the step's line, the step index and action, the field, and expected versus actual.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from memfail.model.trace import (
    SIGBUS,
    Event,
    KernelLog,
    MemoryFailureEvent,
    Panic,
    ProcessExit,
    SignalSent,
)

from .errors import did_you_mean
from .schema import ExitCode, ExitSignal, FinalExpect, SignalExpect, StepExpect


@dataclass(frozen=True)
class Failure:
    """One failed expectation."""

    file: str
    line: int | None
    step: int | None
    action: str | None
    field: str
    expected: Any
    actual: Any
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        step = f"step {self.step} ({self.action}): " if self.step is not None else ""
        return f"{where}: {step}expect.{self.field}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "step": self.step, "action": self.action,
                "field": self.field, "expected": self.expected, "actual": self.actual,
                "message": str(self)}


class Checker:
    """Counts passed checks and collects failures for one scenario run."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.passed = 0
        self.failures: list[Failure] = []

    def check(self, ok: bool, field: str, expected: Any, actual: Any, *, line: int | None,
              step: int | None = None, action: str | None = None, message: str | None = None
              ) -> bool:
        if ok:
            self.passed += 1
        else:
            msg = message or f"expected {_show(expected)}, got {_show(actual)}"
            self.failures.append(Failure(self.file, line, step, action, field,
                                         _plain(expected), _plain(actual), msg))
        return ok


# --------------------------------------------------------------------------- matching


def matches(expected: Any, actual: Any) -> bool:
    """Partial match: a dict matches when every given key matches; lists match item by item."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and matches(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list | tuple):
        return isinstance(actual, list | tuple) and len(expected) == len(actual) and all(
            matches(e, a) for e, a in zip(expected, actual, strict=True))
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
    return bool(expected == actual)


def log_matches(pattern: str, text: str) -> bool:
    if len(pattern) >= 2 and pattern.startswith("/") and pattern.endswith("/"):
        return re.search(pattern[1:-1], text) is not None
    return pattern in text


def _plain(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if v is None or isinstance(v, bool | int | float | str):
        return v
    return str(v)


def _show(v: Any) -> str:
    return repr(_plain(v))


def _signal_dict(s: SignalSent) -> dict[str, Any]:
    return {"proc": s.comm, "thread": s.thread, "code": s.si_code, "addr": s.addr_rel,
            "lsb": s.lsb, "forced": s.forced}


def _signal_matches(exp: SignalExpect, s: SignalSent,
                    addr_of: Callable[[str, Any], str | int | None]) -> bool:
    given = exp.model_dump(exclude_none=True)
    act = _signal_dict(s)
    for k, v in given.items():
        if k == "addr":
            if isinstance(v, int) and not isinstance(v, bool):
                if s.addr != v:
                    return False
            elif v != s.addr_rel and addr_of(exp.proc or s.comm, v) != s.addr_rel:
                return False
        elif act[k] != v:
            return False
    return True


# --------------------------------------------------------------------------- step checks


def check_step(chk: Checker, exp: StepExpect, *, step: int, action: str, line: int,
               ret: Any, errno: str | None, events: list[Event],
               addr_of: Callable[[str, Any], str | int | None]) -> None:
    """Check one step's expectations against its result and the events it produced."""
    given = exp.model_fields_set

    def ck(ok: bool, field: str, expected: Any, actual: Any, message: str | None = None) -> None:
        chk.check(ok, field, expected, actual, line=line, step=step, action=action,
                  message=message)

    if "ret" in given:
        ck(matches(exp.ret, ret), "ret", exp.ret, ret)
    if "errno" in given:
        ck(exp.errno == errno, "errno", exp.errno, errno)
    if "signals" in given:
        sent = [s for s in events if isinstance(s, SignalSent) and s.outcome == "queued"]
        if exp.signals_subset:
            it = iter(sent)
            ok = all(any(_signal_matches(e, s, addr_of) for s in it) for e in exp.signals)
        else:
            ok = len(sent) == len(exp.signals) and all(
                _signal_matches(e, s, addr_of)
                for e, s in zip(exp.signals, sent, strict=True))
        ck(ok, "signals", [e.model_dump(exclude_none=True) for e in exp.signals],
           [_signal_dict(s) for s in sent])
    if "killed" in given:
        dead = sorted(e.comm for e in events if isinstance(e, ProcessExit) and e.signal)
        ck(sorted(exp.killed) == dead, "killed", sorted(exp.killed), dead)
    logs = [e.text for e in events if isinstance(e, KernelLog)]
    _check_logs(exp.log, exp.no_log, logs, ck)
    if "mf" in given:
        mfe = [e for e in events if isinstance(e, MemoryFailureEvent)]
        actual = [{"type": e.page_type, "result": e.result} for e in mfe]
        ok = len(mfe) == len(exp.mf) and all(
            _ci(m.type, e.page_type) and _ci(m.result, e.result)
            for m, e in zip(exp.mf, mfe, strict=True))
        ck(ok, "mf", [m.model_dump(exclude_none=True) for m in exp.mf], actual)
    if "panic" in given:
        panicked = any(isinstance(e, Panic) for e in events)
        ck(panicked == exp.panic, "panic", exp.panic, panicked)
    for i, want in enumerate(exp.events):
        kind = want["event"]
        of_kind = [e.to_dict() for e in events if e.kind == kind]
        ok = any(matches({k: v for k, v in want.items() if k != "event"}, d) for d in of_kind)
        ck(ok, f"events[{i}]", want, of_kind,
           None if of_kind else f"no {kind} event in this step (expected {_show(want)})")


def _ci(expected: str | None, actual: str) -> bool:
    return expected is None or expected.lower() == actual.lower()


def _check_logs(log: list[str], no_log: list[str], lines: list[str],
                ck: Callable[..., None]) -> None:
    for p in log:
        ck(any(log_matches(p, t) for t in lines), "log", p, lines,
           f"no kernel log line matches {p!r}" + (f"; lines: {lines!r}" if lines else
                                                 "; no kernel log lines"))
    for p in no_log:
        hits = [t for t in lines if log_matches(p, t)]
        ck(not hits, "no_log", p, hits, f"unwanted kernel log line {hits[0]!r}" if hits else None)


# --------------------------------------------------------------------------- final checks


def check_final(chk: Checker, exp: FinalExpect, *, line_of: Callable[..., int | None],
                meminfo_before: dict[str, int], meminfo_after: dict[str, int],
                mf_stats: dict[str, int], statuses: dict[str, dict[str, Any]],
                panicked: str | None, events: list[Event],
                outcomes: Callable[[], dict[str, Any] | None]) -> None:
    """Check the final ``expect:`` block against the end state of the run."""
    given = exp.model_fields_set

    def ck(ok: bool, field: str, expected: Any, actual: Any, message: str | None = None) -> None:
        loc = ("expect", *field.replace("[", ".").replace("]", "").split("."))
        chk.check(ok, field, expected, actual, line=line_of(*loc), message=message)

    for k, v in exp.meminfo.items():
        ck(meminfo_after.get(k) == v, f"meminfo.{k}", v, meminfo_after.get(k))
    for k, v in exp.meminfo_delta.items():
        if k in meminfo_after and k in meminfo_before:
            delta = meminfo_after[k] - meminfo_before[k]
            ck(delta == v, f"meminfo_delta.{k}", v, delta,
               f"expected {v:+d}, got {delta:+d} ({meminfo_before[k]} -> {meminfo_after[k]})")
        else:
            ck(False, f"meminfo_delta.{k}", v, None, f"the host's meminfo has no {k!r}")
    for k, v in exp.mf_stats.items():
        ck(mf_stats.get(k) == v, f"mf_stats.{k}", v, mf_stats.get(k))
    for proc, want in exp.exit.items():
        st = statuses.get(proc, {})
        ck(_exit_matches(want, st), f"exit.{proc}", _exit_show(want), _status_show(st))
    if "panic" in given:
        ck((panicked is not None) == exp.panic, "panic", exp.panic, panicked is not None,
           None if exp.panic or panicked is None else f"expected no panic, got {panicked!r}")
    logs = [e.text for e in events if isinstance(e, KernelLog)]
    _check_logs(exp.log, exp.no_log, logs, ck)
    if exp.outcomes:
        got = outcomes()
        if got is None:
            ck(False, "outcomes", exp.outcomes, None, "this host has no outcomes()")
        else:
            for k, v in exp.outcomes.items():
                ck(k in got and matches(v, got[k]), f"outcomes.{k}", v, got.get(k),
                   None if k in got else f"no outcome {k!r}{did_you_mean(k, got)}")


def _exit_matches(want: Any, st: dict[str, Any]) -> bool:
    if isinstance(want, ExitCode):
        return st.get("state") == "exited" and st.get("code") == want.code
    if isinstance(want, ExitSignal):
        return st.get("state") == "killed" and st.get("signal") == want.signal
    return bool(st.get("state") == want)


def _exit_show(want: Any) -> str:
    if isinstance(want, ExitCode):
        return f"exited with code {want.code}"
    if isinstance(want, ExitSignal):
        return f"killed by {signal_name(int(want.signal))}"
    return str(want)


def _status_show(st: dict[str, Any]) -> str:
    state = st.get("state", "unknown")
    if state == "exited":
        return f"exited with code {st.get('code')}"
    if state == "killed" and st.get("signal") is not None:
        return f"killed by {signal_name(int(st['signal']))}"
    return str(state)


def signal_name(signo: int) -> str:
    import signal as _signal

    try:
        return _signal.Signals(signo).name
    except ValueError:
        return "SIGBUS" if signo == SIGBUS else f"signal {signo}"
