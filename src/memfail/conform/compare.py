"""Compare what a real kernel did (the ``@mf`` JSON lines of a generated program) with what the
model predicts for the same scenario under the matching profile, step by step.

Compared per step: the return value and errno, the SIGBUS signals a handler saw (process,
thread, si_code, si_addr relative to its mapping, si_addr_lsb), the processes that ended, the
memory_failure result lines ("recovery action for TYPE: RESULT"), pagemap and kpageflags
observations; per case: the /proc/meminfo deltas and which processes are still running.
Addresses, fds, pids and page frame numbers differ between any two runs, so they are
compared by what they mean: an mmap that succeeded, the n-th distinct frame seen.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memfail.model.trace import MemoryFailureEvent, ProcessExit, SignalDelivered
from memfail.scenario.errors import ScenarioError
from memfail.scenario.loader import Scenario
from memfail.scenario.runner import RunResult, run_scenario

SI_CODES = {4: "BUS_MCEERR_AR", 5: "BUS_MCEERR_AO", 128: "SI_KERNEL", 1: "BUS_ADRALN",
            2: "BUS_ADRERR", 3: "BUS_OBJERR"}
MEMINFO_KEYS = ("HardwareCorrupted", "HugePages_Total", "HugePages_Free", "HugePages_Rsvd",
                "HugePages_Surp")
# /proc/kpageflags bits the model keeps; the others (REFERENCED, ACTIVE, IDLE, ...) track
# reclaim state the model does not have.
KPF_COMPARED = ("HWPOISON", "BUDDY", "ANON", "HUGE", "THP", "COMPOUND_HEAD", "COMPOUND_TAIL",
                "ZERO_PAGE", "MMAP", "SLAB", "KSM", "SWAPBACKED", "UNEVICTABLE")
RESULT_RE = re.compile(r"recovery action for (.+): (\w+)\s*$")
NORMALISE = {"mmap": "addr", "open": "fd", "memfd_create": "fd", "fork": "pid", "spawn": "pid",
             "clone": "ok", "corrupt_pfn": "written", "unpoison_pfn": "written",
             "hard_offline_page": "written", "soft_offline_page": "written"}


@dataclass
class Difference:
    """One disagreement: where, what, the two values, and whether it is a known one."""

    field: str
    model: Any
    kernel: Any
    step: int | None = None
    action: str = ""
    known: str | None = None  # the reason, when listed in the known-differences file

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "action": self.action, "field": self.field,
                "model": self.model, "kernel": self.kernel, "known": self.known}


@dataclass
class CaseResult:
    """One scenario's verdict: agree, differ, not expressible, or the guest run failed."""

    name: str
    status: str
    reasons: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)
    compared: int = 0
    kernel_lines: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def unlisted(self) -> list[Difference]:
        return [d for d in self.differences if d.known is None]

    def to_dict(self) -> dict[str, Any]:
        return {"case": self.name, "status": self.status, "compared": self.compared,
                "reasons": self.reasons,
                "differences": [d.to_dict() for d in self.differences], "steps": self.steps}


# --------------------------------------------------------------------------- known differences


@dataclass(frozen=True)
class Known:
    case: str
    field: str
    reason: str
    step: int | None = None

    def matches(self, case: str, d: Difference) -> bool:
        return fnmatch.fnmatchcase(case, self.case) and self.field in (d.field, "*") and \
            (self.step is None or self.step == d.step)


KNOWN_KEYS = ("case", "field", "reason", "step")


def load_known(path: Path) -> list[Known]:
    """The checked-in list of accepted differences (see docs/conform.md)."""
    from ruamel.yaml import YAML

    from memfail.scenario.errors import ScenarioError, did_you_mean

    if not path.exists():
        return []
    data = YAML(typ="safe", pure=True).load(path.read_text()) or {}
    out: list[Known] = []
    if not isinstance(data, dict) or set(data) - {"differences"}:
        extra = sorted(set(data) - {"differences"}) if isinstance(data, dict) else []
        raise ScenarioError(str(path), None, extra[0] if extra else None,
                            "a known-differences file is one mapping with the key "
                            "'differences' (a list of entries)")
    for i, e in enumerate(data.get("differences") or []):
        if not isinstance(e, dict) or not {"case", "field", "reason"} <= set(e):
            raise ScenarioError(str(path), None, f"differences[{i}]",
                                "each entry needs case, field and reason (step is optional)")
        unknown = sorted(set(e) - set(KNOWN_KEYS))
        if unknown:
            # a misspelt key would widen the entry (no step: every step) without a word
            raise ScenarioError(str(path), None, f"differences[{i}].{unknown[0]}",
                                f"unknown key{did_you_mean(unknown[0], KNOWN_KEYS)}; an entry "
                                "has case, field, reason and step")
        if e.get("step") is not None and (type(e["step"]) is not int or e["step"] < 0):
            raise ScenarioError(str(path), None, f"differences[{i}].step",
                                f"a step number (0, 1, ...), got {e['step']!r}")
        out.append(Known(str(e["case"]), str(e["field"]), str(e["reason"]).strip(),
                         e.get("step")))
    return out


# --------------------------------------------------------------------------- parsing


@dataclass
class KernelRun:
    """The facts of one case, as the program printed them."""

    steps: dict[int, dict[str, Any]] = field(default_factory=dict)
    signals: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    exits: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    logs: dict[int, list[str]] = field(default_factory=dict)
    meminfo: dict[str, dict[str, int]] = field(default_factory=dict)
    running: list[str] = field(default_factory=list)
    done: bool = False
    panic: str | None = None


def parse_lines(lines: list[str]) -> KernelRun:
    """Read a case's ``@mf`` JSON lines; a line that is not JSON is skipped (console noise)."""
    run = KernelRun()
    pending: dict[str, list[dict[str, Any]]] = {}  # signals an `exit` handler printed
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        t, i = rec.get("t"), rec.get("i", -1)
        if t == "step":
            run.steps[i] = rec
        elif t == "sig" and i == -1:
            # printed by a process's `exit` handler just before _exit(): it belongs to the
            # step in which the controller sees that process end
            pending.setdefault(rec.get("proc", ""), []).append(rec)
        elif t == "sig":
            run.signals.setdefault(i, []).append(rec)
        elif t == "exit":
            run.exits.setdefault(i, []).append(rec)
            for sig in pending.pop(rec.get("proc", ""), []):
                run.signals.setdefault(i, []).append({**sig, "i": i})
        elif t == "log":
            run.logs.setdefault(i, []).append(rec["msg"])
        elif t == "meminfo":
            run.meminfo[rec["when"]] = rec["v"]
        elif t == "final":
            run.running.append(rec["proc"])
        elif t == "done":
            run.done = True
        elif t == "panic":
            run.panic = rec["msg"]
    return run


class _Labels:
    """Page frame numbers as the order in which they were first seen (pfn#0, pfn#1, ...)."""

    def __init__(self) -> None:
        self.seen: dict[int, str] = {}

    def __call__(self, pfn: Any) -> Any:
        if not isinstance(pfn, int) or pfn < 0:
            return None
        return self.seen.setdefault(pfn, f"pfn#{len(self.seen)}")


def _norm_ret(key: str, ret: Any, errno: str | None, labels: _Labels,
              before: dict[str, int]) -> Any:
    if key in NORMALISE and isinstance(ret, int) and not isinstance(ret, bool) and ret >= 0 \
            and errno is None:
        return NORMALISE[key]
    if key in NORMALISE and ret == NORMALISE[key]:
        return ret
    if key == "sysctl" and isinstance(ret, int) and ret >= 0:
        return 0
    if key == "exit":
        return 0
    if key in ("mem_read", "mem_write") and ret == "killed":
        return "sigbus"
    if key == "pagemap" and isinstance(ret, dict):
        return {"present": bool(ret.get("present")), "swapped": bool(ret.get("swapped")),
                "pfn": labels(ret.get("pfn")) if ret.get("present") or ret.get("swapped")
                else None}
    if key == "kpageflags" and isinstance(ret, list):
        return sorted(f for f in ret if f in KPF_COMPARED)
    if key == "meminfo" and isinstance(ret, dict):
        return {k: ret[k] - before.get(k, 0) for k in MEMINFO_KEYS if k in ret}
    return ret


def _model_facts(res: RunResult) -> dict[int, dict[str, Any]]:
    labels = _Labels()
    out: dict[int, dict[str, Any]] = {}
    for rec in res.steps:
        if not rec.ran or rec.index is None:
            continue
        sigs = [{"proc": e.comm, "thread": e.thread, "code": _code_name(e.si_code),
                 "addr": e.addr_rel,
                 "lsb": e.lsb} for e in rec.events
                if isinstance(e, SignalDelivered) and e.effect == "handler"]
        exits = [{"proc": e.comm, "code": e.code, "signal": e.signal} for e in rec.events
                 if isinstance(e, ProcessExit)]
        mf = [f"{e.page_type}: {e.result}" for e in rec.events
              if isinstance(e, MemoryFailureEvent)]
        ret, errno = rec.ret, rec.errno
        if rec.key == "hw_error" and isinstance(ret, int) and not isinstance(ret, bool):
            # a machine check has no caller: memory_failure()'s return value (-EBUSY,
            # -EHWPOISON, ...) reaches nobody in the guest, whose injection step returns 0;
            # what it did is compared through the log (mf), the signals and the exits
            ret, errno = 0, None
        out[rec.index] = {
            "ret": _norm_ret(rec.key, ret, errno, labels, res.meminfo_before),
            "errno": errno, "signals": sigs, "exits": exits, "mf": mf}
    return out


def _kernel_facts(sc: Scenario, run: KernelRun) -> dict[int, dict[str, Any]]:
    labels = _Labels()
    before = run.meminfo.get("before", {})
    out: dict[int, dict[str, Any]] = {}
    for step in sc.steps:
        rec = run.steps.get(step.index)
        if rec is None:
            continue
        sigs = [{"proc": s["proc"], "thread": s["thread"],
                 "code": _code_name(s["code"]), "addr": s["addr"],
                 "lsb": s["lsb"]} for s in run.signals.get(step.index, [])]
        exits = [{"proc": e["proc"], "code": e.get("code"), "signal": e.get("signal")}
                 for e in run.exits.get(step.index, [])]
        mf = []
        for line in run.logs.get(step.index, []):
            m = RESULT_RE.search(line)
            if m:
                mf.append(f"{m.group(1)}: {m.group(2)}")
        out[step.index] = {
            "ret": _norm_ret(step.key, rec.get("ret"), rec.get("errno"), labels, before),
            "errno": rec.get("errno"), "signals": sigs, "exits": exits, "mf": mf}
    return out


def _code_name(code: Any) -> str:
    s = str(code)
    return SI_CODES.get(int(s), s) if s.isdigit() else s


def _sig_key(s: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(s.get(k)) for k in ("proc", "thread", "code", "addr", "lsb"))


def compare_case(sc: Scenario, lines: list[str], status: str, profile: str,
                 known: list[Known]) -> CaseResult:
    """Run ``sc`` on the model under ``profile`` and compare it with the kernel's lines."""
    run = parse_lines(lines)
    case = CaseResult(sc.name, "agree", kernel_lines=lines)
    diffs = case.differences
    try:
        res = run_scenario(sc, profile_override=profile)
    except ScenarioError as e:
        # the model refused a step the kernel ran: a difference, not bad input
        diffs.append(Difference("model", f"refused: {e}", "ran" if run.done else "stopped"))
        return _judge(case, known)
    model = _model_facts(res)
    kern = _kernel_facts(sc, run)
    res_panic_step = max((r.index for r in res.steps if r.ran and r.index is not None),
                         default=-1)
    for step in sc.steps:
        m = model.get(step.index)
        if m is None:
            continue  # the model did not run it (the host panicked earlier)
        k = kern.get(step.index)
        if k is None and run.panic is not None and res.panicked is not None and \
                step.index == res_panic_step:
            # both panicked in this step: the panic itself is compared below
            case.steps.append({"step": step.index, "action": step.key, "model": m,
                               "kernel": {"panic": run.panic}})
            continue
        case.steps.append({"step": step.index, "action": step.key, "model": m, "kernel": k})
        if k is None:
            diffs.append(Difference("ran", True, False, step.index, step.key))
            continue
        actor = getattr(step.action, "proc", None)
        if k["ret"] == "killed" and any(e["proc"] == actor for e in m["exits"]):
            m = {**m, "ret": "killed"}  # the caller died in the call: no return value
        for fld in ("ret", "errno", "mf"):
            case.compared += 1
            if m[fld] != k[fld]:
                diffs.append(Difference(fld, m[fld], k[fld], step.index, step.key))
        case.compared += 1
        if sorted(map(_sig_key, m["signals"])) != sorted(map(_sig_key, k["signals"])):
            diffs.append(Difference("signals", m["signals"], k["signals"], step.index,
                                    step.key))
        case.compared += 1
        mx = sorted((e["proc"], e["signal"], e["code"]) for e in m["exits"])
        kx = sorted((e["proc"], e["signal"], e["code"]) for e in k["exits"])
        if mx != kx:
            diffs.append(Difference("exits", m["exits"], k["exits"], step.index, step.key))
    # per case: meminfo deltas and who is still running
    before, after = run.meminfo.get("before"), run.meminfo.get("after")
    if before is not None and after is not None:
        for key in MEMINFO_KEYS:
            if key in res.meminfo_after and key in after:
                case.compared += 1
                md = res.meminfo_after[key] - res.meminfo_before.get(key, 0)
                kd = after[key] - before.get(key, 0)
                if md != kd:
                    diffs.append(Difference(f"meminfo_delta.{key}", md, kd))
    if run.done:
        case.compared += 1
        m_running = sorted(n for n, st in res.processes.items() if st.get("state") == "running")
        if m_running != sorted(run.running):
            diffs.append(Difference("running", m_running, sorted(run.running)))
    case.compared += 1
    if (res.panicked is not None) != (run.panic is not None):
        diffs.append(Difference("panic", res.panicked, run.panic))
    if run.panic is not None and res.panicked is not None:
        pass  # a panic ends the run on both sides: nothing after it to compare
    elif status != "ok" or not run.done:
        diffs.append(Difference("program", "completes", status if status != "ok" else
                                "stopped before its end"))
    return _judge(case, known)


def _judge(case: CaseResult, known: list[Known]) -> CaseResult:
    for d in case.differences:
        for kn in known:
            if kn.matches(case.name, d):
                d.known = kn.reason
                break
    if case.differences:
        case.status = "differ" if case.unlisted else "known"
    return case
