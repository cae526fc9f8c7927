"""Replay logged memory failures on the model, page by page.

Each incident (one failed page, or one QEMU-reported guest page) becomes a scenario: the page
is set up as the log says it was (its memory_failure() page type), the error is delivered as
the log says it was (consumed by a load: hw_error + mem_read, action required; found by the
patrol scrub or firmware: hw_error scrub/ghes, action optional; madvise(MADV_HWPOISON)), under
the kernel profile the log's ``Linux version`` line names. The model's memory_failure results
and log lines are compared with the logged ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from memfail.model.kernel.profiles import PROFILES, SWITCHES

from .events import RasEvent, ReadResult
from .pagetypes import version_key

Verdict = Literal["reproduces", "differs", "cannot-express"]
UC = ("uncorrected-ao", "uncorrected-ar", "fatal")
OLDEST = (6, 1)


@dataclass
class Incident:
    """The records of one failed page (or guest page, or address-less machine check)."""

    key: str
    host: str | None
    source: str
    pfn: int | None = None
    gpa: int | None = None
    events: list[RasEvent] = field(default_factory=list)

    @property
    def mf(self) -> list[RasEvent]:
        """The memory_failure() records of the page. Several sources (kernel log, tracepoint,
        rasdaemon) record the same calls: the source with the most records is used, the
        kernel log first on a tie."""
        by: dict[str, list[RasEvent]] = {}
        for e in self.events:
            if e.kind == "memory_failure":
                by.setdefault(e.format, []).append(e)
        if not by:
            return []
        best = max(by, key=lambda f: (len(by[f]), f == "kernel-log"))
        return by[best]

    def has(self, kind: str) -> bool:
        return any(e.kind == kind for e in self.events)


@dataclass
class ReplayOutcome:
    incident: Incident
    verdict: Verdict
    profile: str | None = None
    reason: str = ""
    caveats: list[str] = field(default_factory=list)
    logged: list[dict[str, str]] = field(default_factory=list)
    model: list[dict[str, str]] = field(default_factory=list)
    logged_lines: list[str] = field(default_factory=list)
    model_lines: list[str] = field(default_factory=list)
    missing_lines: list[str] = field(default_factory=list)
    scenario: str | None = None

    def to_json(self) -> dict[str, Any]:
        inc = self.incident
        return {
            "incident": inc.key, "host": inc.host, "source": inc.source, "pfn": inc.pfn,
            "gpa": inc.gpa, "events": [e.seq for e in inc.events],
            "where": [e.where() for e in inc.events][:8],
            "verdict": self.verdict, "profile": self.profile, "reason": self.reason,
            "caveats": self.caveats, "logged": self.logged, "model": self.model,
            "logged_lines": self.logged_lines, "model_lines": self.model_lines,
            "missing_lines": self.missing_lines, "scenario": self.scenario,
        }


# --------------------------------------------------------------------------- incidents


def incidents(read: ReadResult) -> list[Incident]:
    """Group the events into incidents: one per (host, pfn) with an uncorrected error or a
    memory_failure() record, one per QEMU guest page, one per address-less fatal record."""
    out: dict[tuple[Any, ...], Incident] = {}
    last_by_source: dict[str, Incident] = {}
    bugs: list[RasEvent] = []
    for e in read.events:
        host = e.host or e.source
        key: tuple[Any, ...] | None = None
        if e.kind in ("memory_failure", "mf_message", "injection", "consumed") and \
                e.pfn is not None:
            key = (host, "pfn", e.pfn)
        elif e.kind in ("machine_check", "memory_error") and e.error_class in UC:
            key = (host, "pfn", e.pfn) if e.pfn is not None else (host, "seq", e.seq)
        elif e.kind == "qemu":
            gpa = e.detail.get("gpa")
            key = (host, "gpa", gpa) if gpa is not None else (host, "seq", e.seq)
        elif e.kind in ("panic", "mf_message"):
            inc = last_by_source.get(e.source)
            if inc is not None:
                inc.events.append(e)
            elif e.kind == "panic":
                key = (host, "seq", e.seq)
            if key is None:
                continue
        elif e.kind == "kernel_bug":
            bugs.append(e)
            continue
        if key is None:
            continue
        inc = out.get(key)
        if inc is None:
            name = f"pfn {key[2]:#x}" if key[1] == "pfn" else \
                f"guest page {key[2]:#x}" if key[1] == "gpa" else \
                f"{e.kind.replace('_', ' ')} #{e.seq} (no address)"
            inc = out[key] = Incident(name, e.host, e.source,
                                      pfn=key[2] if key[1] == "pfn" else None,
                                      gpa=key[2] if key[1] == "gpa" else None)
        inc.events.append(e)
        last_by_source[e.source] = inc
    for bug in bugs:  # a warning or BUG in memory-failure code within 60 lines of the page
        if not bug.detail.get("memory_failure_code"):
            continue
        for inc in out.values():
            if inc.source == bug.source and any(
                    x.line is not None and bug.line is not None and abs(x.line - bug.line) <= 60
                    for x in inc.events):
                inc.events.append(bug)
    return list(out.values())


# --------------------------------------------------------------------------- profiles


def pick_profile(version: str | None) -> tuple[str | None, list[str], str | None]:
    """(profile, caveats, reason it cannot be replayed). The newest preset not newer than
    the log's kernel; switches that the exact version would set differently are caveats."""
    key = version_key(version)
    if key is None and version:
        return "linux-6.18", [f"kernel version {version!r} not understood: replayed under "
                              "linux-6.18 (give --profile)"], None
    if key is None:
        return "linux-6.18", ["no 'Linux version' line: replayed under linux-6.18 (give "
                              "--kernel or --profile)"], None
    if key < OLDEST:
        return None, [], (f"kernel too old: the log's kernel is {version}; the model's oldest "
                          "profile is linux-6.1")
    best = "linux-6.1"
    for name in PROFILES:
        if name.startswith("linux-") and version_key(name[6:]) is not None and \
                version_key(name[6:]) <= key:  # type: ignore[operator]
            best = name
    caveats = []
    prof = PROFILES[best]
    for s in SWITCHES:
        if s.since == "next":
            continue
        want = version_key(s.since) <= key  # type: ignore[operator]
        if getattr(prof, s.name) != want:
            caveats.append(f"{version} would have {s.name}={want} ({s.rules}); "
                           f"{best} has {not want}")
    if "-" in (version or "") and not re.match(r"^\d+\.\d+(\.\d+)?(-rc\d+)?$", version or ""):
        caveats.append(f"{version} is a distribution kernel: backports may differ from "
                       f"{best}")
    return best, caveats, None


# --------------------------------------------------------------------------- recipes

_APP = [{"name": "app", "sigbus": "handler"}]
_USER = {"proc": "app", "addr": "m"}
Recipe = dict[str, Any]
RECIPES: dict[str, Recipe] = {
    "dirty LRU page": {"processes": _APP, "target": _USER, "user": True, "ao_signal": True,
                       "steps": [
        {"mmap": {"proc": "app", "name": "m", "size": "4K"}},
        {"mem_write": {"proc": "app", "addr": "m"}}]},
    "clean LRU page": {"processes": _APP, "target": _USER, "user": True, "steps": [
        {"create": {"path": "/mnt/data", "fs": "ext2", "size": "4K"}},
        {"open": {"proc": "app", "path": "/mnt/data", "fd": "f"}},
        {"write": {"proc": "app", "fd": "f", "len": "4K", "value": 0x5A}},
        {"fsync": {"proc": "app", "fd": "f"}},
        {"mmap": {"proc": "app", "name": "m", "size": "4K", "fd": "f", "shared": True}},
        {"mem_read": {"proc": "app", "addr": "m"}}]},
    "dirty mlocked LRU page": {"processes": _APP, "target": _USER, "user": True,
                               "ao_signal": True, "steps": [
        {"mmap": {"proc": "app", "name": "m", "size": "4K", "locked": True}},
        {"mem_write": {"proc": "app", "addr": "m"}}]},
    "clean swapcache page": {"processes": _APP, "target": _USER, "user": True, "ao_only": True,
                             "steps": [
        {"mmap": {"proc": "app", "name": "m", "size": "4K"}},
        {"mem_write": {"proc": "app", "addr": "m", "value": 7}},
        {"swapout": {"proc": "app", "addr": "m", "stage": "written"}}]},
    "dirty swapcache page": {"processes": _APP, "target": _USER, "user": True, "ao_only": True,
                             "steps": [
        {"mmap": {"proc": "app", "name": "m", "size": "4K"}},
        {"mem_write": {"proc": "app", "addr": "m", "value": 7}},
        {"swapout": {"proc": "app", "addr": "m", "stage": "cache"}}]},
    "huge page": {"host": {"hugepages": {"2M": 2}}, "processes": _APP, "target": _USER,
                  "user": True, "ao_signal": True, "steps": [
        {"mmap": {"proc": "app", "name": "m", "size": "2M", "hugetlb": "2M"}},
        {"mem_write": {"proc": "app", "addr": "m"}}]},
    "free huge page": {"host": {"hugepages": {"2M": 1}}, "target": {"free": "2M"},
                       "ao_only": True, "steps": []},
    "free buddy page": {"target": {"free": "buddy"}, "ao_only": True, "steps": []},
    "reserved kernel page": {"target": {"kernel": "reserved"}, "ao_only": True, "steps": []},
    "kernel slab page": {"target": {"kernel": "slab"}, "ao_only": True, "steps": []},
    "unknown page": {"target": {"kernel": "slab"}, "ao_only": True, "steps": []},
}
MISSING: dict[str, str] = {
    "dax page": "page owner: a DAX (device) page; the model has no DAX mappings",
    "non struct page pfn": "page owner: a PFN map without struct page (VM_PFNMAP)",
    "different compound page after locking": "a race (the folio changed while locked) the "
                                             "log cannot time",
    "get hwpoison page": "page owner: get_hwpoison_page() failed; the page's state is unknown",
    "unmapping failed page": "page owner: which mapping refused to unmap is not in the log",
    "already truncated LRU page": "a truncation racing with memory_failure() the log cannot "
                                  "time",
    "unsplit thp": "a THP that could not be split (pinned); the pin is not in the log",
    "non-pmd-sized huge page": "kernel too old: non-PMD huge pages were handled this way "
                               "before 5.x",
    "free buddy page (2nd try)": "kernel too old: the second buddy try was removed in 5.19",
    "huge page already hardware poisoned": "kernel too old: message removed in 5.19",
    "high-order kernel page": "page owner: a high-order kernel allocation",
    "clean mlocked LRU page": "page owner: a clean mlocked page-cache page",
    "dirty unevictable LRU page": "page owner: an unevictable (ramfs/SHM_LOCK) page",
    "clean unevictable LRU page": "page owner: an unevictable (ramfs/SHM_LOCK) page",
}


def _mode(inc: Incident) -> str:
    """How the error reached memory_failure(): madvise, AR (consumed), ghes or scrub."""
    if inc.has("injection"):
        return "madvise"
    for e in inc.events:
        if e.kind == "consumed" or e.error_class == "uncorrected-ar":
            return "ar"
    if any(e.kind == "memory_error" and e.detail.get("via") == "ghes" for e in inc.events):
        return "ghes"
    return "scrub"


def _norm(line: str) -> str | None:
    """A log line reduced to its template: the message from its kernel prefix on, pfns,
    addresses and comm:pid replaced."""
    m = re.search(r"(Memory failure: .*|MCE:? 0x.*|mce: Uncorrected hardware memory error.*|"
                  r"Memory error not recovered.*|Injecting memory failure.*|"
                  r"Soft offlining .*)$", line)
    if not m:
        return None
    s = m.group(1)
    s = re.sub(r"(Sending SIGBUS to|Killing) .+?:\d+", r"\1 COMM:PID", s)
    s = re.sub(r"0x[0-9a-fA-F]+", "0xN", s)
    s = re.sub(r"user-access at [0-9a-fA-F]+", "user-access at ADDR", s)
    return s.strip()


def _signalled(inc: Incident) -> str | None:
    """``COMM:PID`` of the first process the incident's log says memory_failure() signalled
    ("Sending SIGBUS to", "Killing"), None when it signalled none."""
    e = next((e for e in inc.events if e.kind == "mf_message" and
              e.detail.get("action") in ("sigbus", "kill")), None)
    return None if e is None else f"{e.detail.get('comm')}:{e.detail.get('pid')}"


def build_scenario(inc: Incident, profile: str) -> tuple[dict[str, Any] | None, int, str]:
    """(scenario, index of its first error step, reason): scenario None when the model
    cannot express the incident."""
    mf = inc.mf
    if not mf:
        return None, 0, ""
    first = mf[0].page_type or ""
    recipe = RECIPES.get(first)
    if recipe is None:
        if first == "already poisoned" or "already" in first:
            return None, 0, ("page owner unknown: the page's first failure is not in the "
                             f"log (first record: {first!r})")
        return None, 0, MISSING.get(first, f"page owner: page type {first!r} has no model "
                                        "counterpart")
    mode = _mode(inc)
    if any(e.kind == "injection" and e.detail.get("soft") for e in inc.events):
        return None, 0, "a soft-offline injection: soft_offline_page() is not replayed"
    if mode == "ar" and recipe.get("ao_only"):
        return None, 0, (f"a CPU consumed a {first}: the model has no user access to it (a "
                      "kernel consumption without fixup panics, R47)")
    if mode == "madvise" and not recipe.get("user"):
        return None, 0, f"madvise(MADV_HWPOISON) cannot reach a {first}"
    processes = [dict(p) for p in recipe.get("processes", [])]
    who = _signalled(inc)
    if who is not None and mode in ("scrub", "ghes"):
        # action optional: kill_procs() signals only the processes collect_procs() gathered,
        # and without MF_ACTION_REQUIRED task_early_kill() gathers only early-kill threads
        # (R12, R13): the logged SIGBUS says an early-kill process mapped the page
        if not processes:
            return None, 0, (f"page owner: the log signals {who} for a {first}, which no "
                             "process maps")
        if not recipe.get("ao_signal"):
            return None, 0, (
                f"page owner: the log signals {who} for an action-optional failure of a "
                f"{first}; the kernel signals an early-kill process only for a page it "
                "maps that is dirty or cannot be unmapped (hwpoison_user_mappings, R12), "
                f"and the model's {first} is not one: how the log's page was mapped is not "
                "in the log")
        processes[0]["mce_kill"] = {"main": "early"}
    steps = [dict(s) for s in recipe["steps"]]
    target = dict(recipe["target"])
    errs: list[dict[str, Any]] = []
    for i, _ in enumerate(mf):
        if mode == "madvise":
            errs.append({"madvise": {"proc": "app", "addr": "m", "len": "4K",
                                     "advice": "hwpoison"}})
        elif mode == "ar":
            if i == 0:
                errs.append({"hw_error": {**target, "detect": "latent"}})
            errs.append({"mem_read": {"proc": "app", "addr": "m"}})
        else:
            errs.append({"hw_error": {**target, "detect": "ghes" if mode == "ghes" else
                                      "scrub"}})
    sc = {"name": f"replay-{inc.key.replace(' ', '-')}",
          "description": f"replay of {inc.key} from {inc.source}", "profile": profile,
          "host": recipe.get("host", {}), "processes": processes,
          "steps": [*steps, *errs]}
    return {k: v for k, v in sc.items() if v != {} and v != []}, len(steps), ""


def replay_incident(inc: Incident, version: str | None, arch: str | None,
                    profile_override: str | None = None) -> ReplayOutcome:
    logged = [{"type": e.page_type or "", "result": e.result or ""} for e in inc.mf]
    logged_lines = [e.text.splitlines()[0] for e in inc.events
                    if e.format == "kernel-log" and e.kind in
                    ("memory_failure", "mf_message", "consumed", "injection")]
    out = ReplayOutcome(inc, "cannot-express", logged=logged, logged_lines=logged_lines)
    if arch not in (None, "x86_64"):
        out.reason = (f"architecture {arch}: the model's machine-check and injection glue is "
                      "x86 (do_machine_check, kill_me_maybe)")
        return out
    bug = next((e for e in inc.events if e.kind == "kernel_bug"), None)
    if bug is not None:
        out.reason = f"a kernel bug in the log next to this failure: {bug.message}"
        return out
    old_fmt = next((e for e in inc.events if e.kind == "memory_failure" and
                    e.format == "kernel-log" and re.search(r"\bMCE:? 0x", e.text)), None)
    caveats: list[str]
    if profile_override:
        profile, caveats, too_old = profile_override, [], None
    elif version is None and old_fmt is not None:
        profile, caveats, too_old = None, [], (
            "kernel too old: no 'Linux version' line, but the 'MCE 0x...: recovery action' "
            "prefix is that of kernels before 4.7 ('memory failure: replace MCE with Memory "
            "failure', 2016); the model's oldest profile is linux-6.1")
    else:
        profile, caveats, too_old = pick_profile(version)
    out.profile, out.caveats = profile, caveats
    if too_old:
        out.reason = too_old
        return out
    assert profile is not None
    if inc.gpa is not None or (inc.has("qemu") and not inc.mf):
        return _replay_qemu(inc, profile, out)
    if not inc.mf:
        if any(e.kind == "panic" for e in inc.events):
            out.reason = ("page owner unknown: the host panicked before memory_failure() "
                          "ran; the log has no page type for this error")
        else:
            out.reason = ("page owner unknown: no memory_failure() record for this page "
                          "(the log has the hardware error only)")
        return out
    sc, mark, why = build_scenario(inc, profile)
    if sc is None:
        out.reason = why
        return out
    who = _signalled(inc)
    if who is not None and any(p.get("mce_kill") for p in sc.get("processes", [])):
        out.caveats.append(
            f"the log signals {who} for an action-optional failure, which only an early-kill process gets (R12, "
            "task_early_kill): the set-up gives the process PR_MCE_KILL_EARLY (the log cannot "
            "tell it from vm.memory_failure_early_kill=1)")
    return _run_and_compare(sc, mark, out)


def _run(sc_data: dict[str, Any], mark: int) -> tuple[list[Any], list[str], Any]:
    """Run the scenario; the memory_failure events and log lines from step ``mark`` on."""
    import json

    from memfail.model.trace import KernelLog, MemoryFailureEvent
    from memfail.scenario import load_scenario_text, run_scenario

    # YAML is a superset of JSON: the scenario loader reads this text as is
    sc = load_scenario_text(json.dumps(sc_data), "<replay>")
    res = run_scenario(sc)
    mfs: list[Any] = []
    lines: list[str] = []
    for rec in res.steps[mark:]:
        for ev in rec.events:
            if isinstance(ev, MemoryFailureEvent):
                mfs.append(ev)
            elif isinstance(ev, KernelLog):
                lines.append(ev.text)
    return mfs, lines, res


def _run_and_compare(sc: dict[str, Any], mark: int, out: ReplayOutcome) -> ReplayOutcome:
    try:
        mfs, lines, res = _run(sc, mark)
    except Exception as e:  # a model that refuses the scenario is a finding, not a crash
        out.reason = f"the model refused the replay scenario: {e}"
        return out
    out.scenario = _yaml(sc)
    out.model = [{"type": m.page_type, "result": m.result} for m in mfs]
    out.model_lines = lines
    want = [_norm(x) for x in out.logged_lines]
    have = {_norm(x) for x in lines}
    out.missing_lines = [x for x, n in zip(out.logged_lines, want, strict=True)
                         if n is not None and n not in have]
    same = [(a["type"].lower(), a["result"].lower()) for a in out.logged] == \
        [(m["type"].lower(), m["result"].lower()) for m in out.model]
    if res.panicked and not any(e.kind == "panic" for e in out.incident.events):
        same = False
    out.verdict = "reproduces" if same and not out.missing_lines else "differs"
    if out.verdict == "differs":
        parts = []
        if not same:
            parts.append(f"memory_failure results: logged {_fmt(out.logged)}, model "
                         f"{_fmt(out.model)}")
        if out.missing_lines:
            parts.append(f"{len(out.missing_lines)} logged line(s) the model does not print")
        out.reason = "; ".join(parts)
    return out


def _replay_qemu(inc: Incident, profile: str, out: ReplayOutcome) -> ReplayOutcome:
    q = next((e for e in inc.events if e.kind == "qemu" and e.detail.get("code")), None)
    if q is None:
        self_mem = any(e.detail.get("vmm_memory") for e in inc.events)
        out.reason = ("page owner: QEMU's own memory (not guest RAM); the log has no "
                      "address to replay" if self_mem else
                      "QEMU's message has no guest address and no signal code")
        return out
    code = q.detail["code"]
    large = next((e.detail.get("size") for e in inc.events if e.detail.get("size")), None) or \
        (0x200000 if q.detail.get("large_page") else None)
    huge = {0x200000: "2M", 0x40000000: "1G"}.get(large or 0)
    size = huge or "2M"
    sc: dict[str, Any] = {
        "name": f"replay-{inc.key.replace(' ', '-')}", "profile": profile,
        "processes": [{"name": "qemu", "threads": ["main"], "sigbus": "handler",
                       "mce_kill": {"main": "early"}}],
        "steps": [
            {"vm_create": {"vm": "vm0", "vmm": "qemu", "vcpus": 1}},
            *([{"memfd_create": {"proc": "qemu", "name": "ram", "hugetlb": True, "huge": huge,
                                 "size": size}},
               {"mmap": {"proc": "qemu", "name": "ram", "size": size, "fd": "ram"}}] if huge
              else [{"mmap": {"proc": "qemu", "name": "ram", "size": size}}]),
            {"memslot": {"vm": "vm0", "gpa": 0, "size": size, "hva": "ram"}},
            {"guest_access": {"vm": "vm0", "gpa": 0, "op": "write"}},
            {"hw_error": {"vm": "vm0", "gpa": "8K",
                          "detect": "latent" if code.endswith("AR") else "scrub"}},
            *([{"guest_access": {"vm": "vm0", "gpa": "8K"}}] if code.endswith("AR") else []),
        ]}
    if huge:
        sc["host"] = {"hugepages": {huge: 1}}
    try:
        from memfail.model.trace import MceInjected

        _, _, res = _run(sc, len(sc["steps"]) - 2)
    except Exception as e:
        out.reason = f"the model refused the replay scenario: {e}"
        return out
    out.scenario = _yaml(sc)
    inj = [e for e in res.trace.of(MceInjected)]
    logged_injected = bool(q.detail.get("injected", True))
    out.logged = [{"type": "guest vMCE", "result": f"{code} "
                   f"{'injected' if logged_injected else 'ignored on AMD guest'}"}]
    out.model = [{"type": "guest vMCE", "result": f"{getattr(e, 'code', code)} injected"}
                 for e in inj] or [{"type": "guest vMCE", "result": "not injected"}]
    out.logged_lines = [q.text.splitlines()[0]]
    ok = (len(inj) >= 1) == logged_injected and \
        (not inj or getattr(inj[0], "code", code) == code)
    out.verdict = "reproduces" if ok else "differs"
    if not ok:
        out.reason = f"vMCE: logged {_fmt(out.logged)}, model {_fmt(out.model)}"
    return out


def _fmt(items: list[dict[str, str]]) -> str:
    return ", ".join(f"{i['type']}: {i['result']}" for i in items) or "none"


def _yaml(data: dict[str, Any]) -> str:
    import io

    from ruamel.yaml import YAML

    y = YAML()
    y.default_flow_style = None
    buf = io.StringIO()
    y.dump(data, buf)
    return buf.getvalue()


def replay_all(read: ReadResult, profile_override: str | None = None,
               kernel: str | None = None) -> list[ReplayOutcome]:
    by_source = {s.source: s for s in read.sources}
    outs = []
    for inc in incidents(read):
        s = by_source.get(inc.source)
        version = (s.kernel_version if s else None) or kernel
        arch = s.arch if s else None
        if arch is None and version is not None:
            from .text import arch_of

            arch = arch_of(version)
        outs.append(replay_incident(inc, version, arch, profile_override))
    return outs
