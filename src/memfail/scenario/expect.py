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
from .schema import (
    ExitCode,
    ExitNot,
    ExitSignal,
    FinalExpect,
    SignalExpect,
    StepExpect,
    is_operator,
    saved_refs,
)


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


def matches(expected: Any, actual: Any, saved: dict[str, Any] | None = None) -> bool:
    """Partial match: a dict matches when every given key matches; lists match item by item.
    A dict of operators (``not``, ``contains``, ``lacks``, ``same_as``, ``differs_from``,
    ``at_least``, ``at_most``) is a test on the actual value; every operator must hold."""
    if is_operator(expected):
        return all(_operator(op, arg, actual, saved or {}) for op, arg in expected.items())
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(
            k in actual and matches(v, actual[k], saved) for k, v in expected.items())
    if isinstance(expected, list | tuple):
        return isinstance(actual, list | tuple) and len(expected) == len(actual) and all(
            matches(e, a, saved) for e, a in zip(expected, actual, strict=True))
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and expected == actual
    return bool(expected == actual)


_UNSET = object()


def saved_value(saved: dict[str, Any], ref: str) -> Any:
    """The value an earlier step saved as ``NAME`` (its ret), or ``NAME.key`` inside it."""
    name, *keys = ref.split(".")
    cur = saved.get(name, _UNSET)
    for k in keys:
        cur = cur.get(k, _UNSET) if isinstance(cur, dict) else _UNSET
    return cur


def _operator(op: str, arg: Any, actual: Any, saved: dict[str, Any]) -> bool:
    items = arg if isinstance(arg, list) else [arg]
    if op == "not":
        return not matches(arg, actual, saved)
    if op == "contains":
        return isinstance(actual, list | tuple | str) and all(x in actual for x in items)
    if op == "lacks":
        return isinstance(actual, list | tuple | str) and not any(x in actual for x in items)
    if op in ("same_as", "differs_from"):
        other = saved_value(saved, arg)
        if other is _UNSET:
            return False
        return (other == actual) == (op == "same_as")
    number = isinstance(actual, int) and not isinstance(actual, bool)
    if op == "at_least":
        return number and actual >= arg
    return number and actual <= arg  # at_most


def data_matches(expected: Any, data: list[int] | None, saved: dict[str, Any]) -> bool:
    """``data``: a list compares page by page; anything else must hold for every page (and
    at least one page must have been read)."""
    if data is None:
        return False
    if isinstance(expected, list):
        return matches(expected, data, saved)
    return bool(data) and all(matches(expected, x, saved) for x in data)


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
               addr_of: Callable[[str, Any], str | int | None],
               data: list[int] | None = None, saved: dict[str, Any] | None = None) -> None:
    """Check one step's expectations against its result and the events it produced."""
    given = exp.model_fields_set
    saved = saved or {}

    def ck(ok: bool, field: str, expected: Any, actual: Any, message: str | None = None) -> None:
        chk.check(ok, field, expected, actual, line=line, step=step, action=action,
                  message=message)

    if "ret" in given:
        ck(matches(exp.ret, ret, saved), "ret", exp.ret, ret, _saved_note(exp.ret, ret, saved))
    if "data" in given:
        ck(data_matches(exp.data, data, saved), "data", exp.data, data,
           None if data is not None else "this action returns no data (only mem_read, read "
           "and pread do)")
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
    _check_logs(exp, kernel_lines(events), ck)
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


def _saved_note(expected: Any, actual: Any, saved: dict[str, Any]) -> str | None:
    """A failure message that shows the saved value a same_as/differs_from compared with."""
    refs = saved_refs(expected)
    if not refs:
        return None
    shown = {r: saved.get(r, "(not saved: its step did not run or was not reached)")
             for r in refs}
    return f"expected {_show(expected)}, got {_show(actual)} (saved: {_show(shown)})"


def kernel_lines(events: list[Event]) -> list[str]:
    """The kernel log lines of ``events``, as dmesg prints them without the timestamp. The
    lines memfail adds to explain why a step failed (level debug, starting with ``memfail:``)
    are not kernel lines and no log expectation sees them."""
    return [e.text for e in events if isinstance(e, KernelLog)
            and not (e.level == "debug" and e.text.startswith("memfail: "))]


def _check_logs(exp: Any, lines: list[str], ck: Callable[..., None]) -> None:
    log: list[str] = exp.log
    no_log: list[str] = exp.no_log
    if exp.log_order:
        it = iter(lines)
        ok = all(any(log_matches(p, t) for t in it) for p in exp.log_order)
        ck(ok, "log_order", exp.log_order, lines,
           None if ok else f"the kernel log lines do not match {exp.log_order!r} in this "
           f"order; lines: {lines!r}")
    if exp.log_exact is not None:
        ok = len(lines) == len(exp.log_exact) and all(
            log_matches(p, t) for p, t in zip(exp.log_exact, lines, strict=True))
        ck(ok, "log_exact", exp.log_exact, lines,
           None if ok else f"expected exactly {len(exp.log_exact)} kernel log line(s) "
           f"matching {exp.log_exact!r} in order, got {len(lines)}: {lines!r}")
    for p, n in exp.log_count.items():
        got = sum(1 for t in lines if log_matches(p, t))
        ck(got == n, f"log_count.{p}", n, got,
           None if got == n else f"expected {n} kernel log line(s) matching {p!r}, got {got}")
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
    _check_logs(exp, kernel_lines(events), ck)
    if exp.outcomes:
        got = outcomes()
        if got is None:
            ck(False, "outcomes", exp.outcomes, None, "this host has no outcomes()")
        else:
            for k, v in exp.outcomes.items():
                ck(k in got and matches(v, got[k]), f"outcomes.{k}", v, got.get(k),
                   None if k in got else f"no outcome {k!r}{did_you_mean(k, got)}")


def _exit_matches(want: Any, st: dict[str, Any]) -> bool:
    if isinstance(want, ExitNot):
        return not _exit_matches(want.not_, st)
    if want == "ended":
        return st.get("state") in ("exited", "killed")
    if isinstance(want, ExitCode):
        return st.get("state") == "exited" and st.get("code") == want.code
    if isinstance(want, ExitSignal):
        return st.get("state") == "killed" and st.get("signal") == want.signal
    return bool(st.get("state") == want)


def _exit_show(want: Any) -> str:
    if isinstance(want, ExitNot):
        return f"not {_exit_show(want.not_)}"
    if want == "ended":
        return "ended (exited or killed)"
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
