"""``memfail compare`` and ``memfail policies``: every comparison scenario under every
guest_memfd policy, each cell the outcomes that matter, and a verdict line per policy.

Outcomes come from ``Host.outcomes()`` (trace and final state); see ``OUTCOME_DOCS``. A policy
is a preset name or an inline combination of knobs (``{base: minimum, sigbus_addr: none}``);
``--vary KNOB`` expands each policy over every value of a knob. The default output also names,
for each preset, the knobs among the call's readings (``READINGS``) whose other values change
its cells: computed by running those variations.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any

import typer

from memfail.inputs import did_you_mean
from memfail.model.outcomes import ACCEPTED, CLASS_DOCS, COST, HAZARD, OUTCOME_DOCS
from memfail.model.policy.base import KNOB_DOCS, READINGS, SERIES, GmemPolicy, knob_values
from memfail.model.policy.registry import PRESETS, knob_text, make_policy
from memfail.model.units import fmt_size
from memfail.scenario.errors import ScenarioError

COMPARE_SCHEMA = "memfail.compare/2"
COMPARE_PREFIX = "vm-"  # built-in scenarios whose name starts with this are compared

COMPARE_EPILOG = """
Examples:

  memfail compare                                (every vm-* scenario x every policy)

  memfail compare --policy minimum --policy unmap --scenario vm-hugetlb-reconsume

  memfail compare --policy '{base: minimum, sigbus_addr: none}' --policy minimum

  memfail compare --policy minimum --vary sigbus_addr --vary mark_on_truncate

  memfail compare --markdown > comparison.md

  memfail compare --json | jq '.cells[] | select(.outcomes.host_panic)'

"""


@dataclass
class Cell:
    scenario: str
    policy: str
    outcomes: dict[str, Any]
    applies: bool = True
    unavailable: str | None = None  # why the scenario cannot run on the chosen profile

    def summary(self) -> str:
        if self.unavailable:
            return "not on this kernel"
        return summarize(self.outcomes) if self.applies else "n/a"

    def code(self) -> str:
        if self.unavailable:
            return UNAVAILABLE
        return code(self.outcomes) if self.applies else "-"


UNAVAILABLE = "n/a"
"""The cell code of a scenario that uses what the chosen kernel profile lacks (a feature
merged later): not run, left out of every total, like a policy that does not apply."""


# What went wrong, worst first: (outcome key, code, cell words, verdict words). Cells, legend
# and verdict lines read the same table, so they cannot drift apart.
FINDINGS: tuple[tuple[str, str, str, str], ...] = (
    ("host_panic", "P", "HOST PANIC", "host panic"),
    ("host_stalled", "T", "HOST STALLED", "host stalled beyond the bound"),  # M10, docs/mce.md
    ("vms_killed", "K", "VM killed", "VM killed"),
    ("guests_panicked", "G", "guest panic", "guest panic"),
    ("vms_paused", "S", "VM paused", "VM stopped (paused)"),
    ("repeated_consumptions", "R", "re-consumed x{n}", "poison re-consumed"),
    ("poison_handed_out", "H", "poison reused", "poison handed out again"),
    ("wrong_process_signals", "W", "wrong-process SIGBUS", "wrong-process SIGBUS"),
    ("records_lost", "L", "record lost", "failure record lost"),
    ("early_not_told", "E", "EARLY VMM not told", "EARLY VMM not told"),
)
VERDICT_KEYS = tuple(key for key, *_ in FINDINGS)
CODES_TEXT = ("; ".join(f"{c} {w}" for _, c, _, w in FINDINGS) +
              "; V vMCE injected into the guest; 4K/2M/1G guest memory lost "
              "(a killed VM loses all of it); ok nothing went wrong; - the policy "
              "does not apply to the scenario; n/a the scenario uses what the "
              "kernel profile lacks (not run).")
COMPARE_EPILOG += ("\nCells are codes, explained by the legend printed under the table "
                   "(upper case: hazard or cost; lower case: a limitation the policy accepts "
                   "by design): " + CODES_TEXT + "\n")


def _accepted(o: dict[str, Any], key: str) -> bool:
    return o.get("classes", {}).get(key) == ACCEPTED


def summarize(o: dict[str, Any]) -> str:
    """A short, human cell text from an outcome dictionary (worst first); a limitation the
    policy accepts by design is marked '(accepted)'."""
    parts = []
    for key, _code, cell, _ in FINDINGS:
        if o.get(key):
            txt = cell.format(n=o[key])
            parts.append(f"{txt} (accepted)" if _accepted(o, key) else txt)
    if o.get("vmce_injected"):
        parts.append("vMCE")
    if o.get("host_stalls", 0) > 1:  # broadcast machine checks after the first (M3, M9)
        parts.append(f"host stalled x{o['host_stalls']} "
                     f"({o.get('host_stall_us', 0) / 1000:.1f} ms)")
    if o.get("guest_bytes_lost") and not o.get("vms_killed"):
        parts.append(f"lost {fmt_size(o['guest_bytes_lost'])}")
    return ", ".join(parts) or "ok"


def code(o: dict[str, Any]) -> str:
    """The cell as codes: one letter per finding (lower case: accepted), V for a vMCE, then
    the guest memory lost (a killed VM loses all of it, not repeated)."""
    s = "".join(c.lower() if _accepted(o, k) else c for k, c, _, _ in FINDINGS if o.get(k))
    if o.get("vmce_injected"):
        s += "V"
    if o.get("guest_bytes_lost") and not o.get("vms_killed"):
        s += ("" if not s else " ") + fmt_size(o["guest_bytes_lost"])
    return s or "ok"


# ----------------------------------------------------------------------------- running


@cache
def _load(scen: str) -> Any:
    from memfail.scenario.loader import load_scenario, resolve

    path, display = resolve(scen)
    return load_scenario(path, display)


def missing_feature(e: BaseException, profile: str | None) -> str | None:
    """Why a scenario run under ``--profile`` failed, when the reason is that the profile
    lacks a feature the scenario uses (ProfileMissing: merged in a later kernel); None for any
    other error, which stays an error."""
    from memfail.scenario.errors import FeatureMissing

    if profile is None or not isinstance(e, FeatureMissing):
        return None
    return str(e)


def _run_one(args: tuple[str, Any, str | None]) -> tuple[str, str, dict[str, Any]]:
    """One cell's outcomes; ``{"unavailable": why}`` when the scenario uses a feature the
    forced profile lacks."""
    from memfail.scenario.runner import run_scenario

    scen, pol, profile = args
    name = pol.name if isinstance(pol, GmemPolicy) else str(pol)
    try:
        r = run_scenario(_load(scen), profile_override=profile, policy_override=pol)
    except ScenarioError as e:
        why = missing_feature(e, profile)
        if why is None:
            raise
        return scen, name, {"unavailable": why}
    assert r.host_outcomes is not None
    return scen, name, r.host_outcomes


def make_cell(scen: str, pol: GmemPolicy, o: dict[str, Any]) -> Cell:
    if "unavailable" in o and len(o) == 1:
        return Cell(scen, pol.name, {}, False, str(o["unavailable"]))
    return Cell(scen, pol.name, o, applies(scen, pol))


def scenario_backings(scen: str) -> set[str]:
    """What guest memory a scenario uses: the backing of each guest_memfd it creates ('4K',
    '2M', '1G'); when it creates none, 'hugetlbfs' if it creates a VM and HugeTLB memory
    (memfd_create with hugetlb, an mmap with hugetlb, a file created on hugetlbfs) for a
    memslot to point at; else nothing (a host-only scenario has no guest memory)."""
    sc = _load(scen)
    kinds = [type(s.action).__name__ for s in sc.steps]
    out = {str(getattr(s.action, "backing", "")) for s, k in zip(sc.steps, kinds, strict=True)
           if k == "GmemCreate"}
    if out or "VmCreate" not in kinds:
        return out
    huge = any((k == "MemfdCreate" and getattr(s.action, "hugetlb", False)) or
               (k == "Mmap" and getattr(s.action, "hugetlb", None)) or
               (k == "Create" and getattr(s.action, "fs", "") == "hugetlbfs")
               for s, k in zip(sc.steps, kinds, strict=True))
    return {"hugetlbfs"} if huge else set()


def _confidential(scen: str) -> bool:
    """Whether the scenario creates an SNP or TDX VM."""
    return any(type(s.action).__name__ == "VmCreate" and getattr(s.action, "type", "")
               in ("snp", "tdx") for s in _load(scen).steps)


def applies(scen: str, pol: GmemPolicy) -> bool:
    """Does ``pol`` have anything to act on in ``scen``? A guest_memfd policy acts on a
    scenario with a guest_memfd whose folios it claims (the kernel-path policies, handles
    'none', on any guest_memfd); the hugetlbfs baseline acts on HugeTLB-backed guest memory
    of a VM that can have it (not an SNP or TDX guest). Cells where it does not are shown as
    '-' and left out of every total."""
    b = scenario_backings(scen)
    if pol.backing == "hugetlbfs":
        # an SNP or TDX guest's private memory can only come from guest_memfd (a private
        # fault goes to kvm_gmem_get_pfn(), kvm_mmu_faultin_pfn_private; R75): there is no
        # hugetlbfs-backed confidential VM to compare with
        return bool(b & {"2M", "1G", "hugetlbfs"}) and not _confidential(scen)
    gm = b - {"hugetlbfs"}
    if not gm:
        return False
    if pol.handles == "none":
        return True
    return any(pol.claims(x != "4K") for x in gm)


def compare_scenarios() -> list[str]:
    from memfail.scenario.loader import library

    return [name for name in sorted(library()) if name.startswith(COMPARE_PREFIX)]


def run_compare(scenarios: list[str], policies: list[Any], profile: str | None = None,
                workers: int = 1) -> list[Cell]:
    """Every (scenario, policy) pair; ``policies`` are preset names or GmemPolicy objects."""
    pols = [make_policy(p) for p in policies]
    jobs = [(s, p, profile) for s in scenarios for p in pols]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            results = list(ex.map(_run_one, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        results = [_run_one(j) for j in jobs]
    by_name = {p.name: p for p in pols}
    return [make_cell(s, by_name[p], o) for s, p, o in results]


def verdicts(cells: list[Cell], policies: list[str]) -> dict[str, dict[str, Any]]:
    """Per policy, over the scenarios it applies to: how many had each finding, split by
    class (hazard, cost, accepted), the guest memory lost, and how many were clean."""
    out: dict[str, dict[str, Any]] = {}
    for p in policies:
        mine = [c for c in cells if c.policy == p and c.applies]
        v: dict[str, Any] = {k: sum(1 for c in mine if c.outcomes.get(k)) for k in VERDICT_KEYS}
        by_class: dict[str, dict[str, int]] = {HAZARD: {}, COST: {}, ACCEPTED: {}}
        for c in mine:
            for k, cls in c.outcomes.get("classes", {}).items():
                if k in VERDICT_KEYS:
                    by_class[cls][k] = by_class[cls].get(k, 0) + 1
        v["by_class"] = by_class
        v["guest_bytes_lost"] = sum(int(c.outcomes.get("guest_bytes_lost", 0)) for c in mine)
        v["scenarios"] = len(mine)
        v["not_applicable"] = sum(1 for c in cells if c.policy == p and not c.applies)
        v["unavailable"] = sum(1 for c in cells if c.policy == p and c.unavailable)
        v["ok"] = sum(1 for c in mine if not any(
            c.outcomes.get(k) and c.outcomes.get("classes", {}).get(k) != ACCEPTED
            for k in VERDICT_KEYS))
        out[p] = v
    return out


def verdict_line(p: str, v: dict[str, Any]) -> str:
    """'minimum: 12 scenarios, 3 without hazard, kill or pause; hazards: ...; costs: ...'.

    Guest memory lost is a cost shown on its own: the failed page itself is lost under every
    policy, so a scenario that lost only memory still counts among those without hazard, kill
    or pause."""
    words = {k: w for k, _, _, w in FINDINGS}
    bits = [f"{v['scenarios']} scenarios, {v['ok']} without hazard, kill or pause"
            + (f" ({v['unavailable']} more not run: they use what the kernel profile lacks)"
               if v.get("unavailable") else "")]
    for cls, label in ((HAZARD, "hazards"), (COST, "costs"), (ACCEPTED, "accepted")):
        got = v["by_class"][cls]
        items = [f"{words[k]} in {got[k]}" for k in VERDICT_KEYS if k in got]
        if cls == COST and v["guest_bytes_lost"]:
            items.append(f"guest memory lost {_gib(v['guest_bytes_lost'])}")
        if items:
            bits.append(f"{label}: " + ", ".join(items))
    return f"{p}: " + "; ".join(bits)


def _gib(n: int) -> str:
    return fmt_size(n) if n < 1 << 30 else f"{n / 2**30:.2f} GiB"


# ----------------------------------------------------------------------------- policies


def _with(name: str, k: str, v: Any) -> str:
    """``minimum{a=b}`` plus ``k=v``: ``minimum{a=b,k=v}``."""
    item = f"{k}={knob_text(v)}"
    return f"{name[:-1]},{item}}}" if name.endswith("}") else f"{name}{{{item}}}"


def parse_policy_arg(text: str) -> GmemPolicy:
    """A preset name, or an inline mapping in the scenario syntax
    (``{base: minimum, sigbus_addr: none}``, named by ``policy_label`` unless it names
    itself), as ``make_policy`` reads them."""
    try:
        return make_policy(text.strip())
    except (ValueError, TypeError) as e:
        raise ScenarioError("--policy", None, None, str(e)) from None


def vary(pols: list[GmemPolicy], knobs: list[str]) -> list[GmemPolicy]:
    """Each policy once per value of each knob in turn (its own value keeps its name)."""
    for k in knobs:
        values = knob_values(k)
        if values is None or k not in GmemPolicy("x").knobs():
            raise ScenarioError("--vary", None, None,
                                f"unknown policy knob {k!r}; knobs: "
                                f"{', '.join(GmemPolicy('x').knobs())}")
        out: list[GmemPolicy] = []
        for p in pols:
            for v in values:
                if p.knobs()[k] == v:
                    out.append(p)
                else:
                    out.append(p.with_knobs(name=_with(p.name, k, v), **{k: v}))
        pols = out
    seen: set[str] = set()
    return [p for p in pols if not (p.name in seen or seen.add(p.name))]  # type: ignore[func-returns-value]


def sensitivity(cells: list[Cell], pols: list[GmemPolicy], scens: list[str],
                profile: str | None, workers: int) -> dict[str, dict[str, list[str]]]:
    """For each preset among ``pols``: each reading knob (``READINGS``) whose other values
    change at least one of its applicable cells, with the cells that change. Computed by
    running the variations."""
    presets = [p for p in pols if PRESETS.get(p.name) == p]
    variants: list[tuple[GmemPolicy, str, Any, GmemPolicy]] = []
    for p in presets:
        for k in READINGS:
            for v in knob_values(k) or ():
                if p.knobs()[k] != v:
                    variants.append((p, k, v, p.with_knobs(name=_with(p.name, k, v),
                                                           **{k: v})))
    if not variants:
        return {}
    base = {(c.scenario, c.policy): c for c in cells}
    todo = [(s, var) for _p, _k, _v2, var in variants for s in scens
            if applies(s, var) or applies(s, _p)]
    jobs = [(s, var, profile) for s, var in todo]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            results = list(ex.map(_run_one, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        results = [_run_one(j) for j in jobs]
    got = {(s, name): o for s, name, o in results}
    out: dict[str, dict[str, list[str]]] = {}
    for p, k, v, var in variants:
        changed = []
        for s in scens:
            b = base.get((s, p.name))
            o = got.get((s, var.name))
            if b is None or o is None or not b.applies or "unavailable" in o:
                continue
            if summarize(o) != b.summary():
                changed.append(f"{s}: {code(b.outcomes)} -> {code(o)}")
        if changed:
            out.setdefault(p.name, {})[f"{k}={knob_text(v)}"] = changed
    return out


# ----------------------------------------------------------------------------- rendering

SHORT = {"mainline": "ml", "mf-delayed-fix": "mfd", "minimum": "min", "unmap": "unmap",
         "kill-vm": "kill", "unusable": "unus", "future": "fut", "hugetlbfs": "htlbfs"}


def term_width() -> int:
    """The terminal's width (COLUMNS wins); 80 through a pipe."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    if os.isatty(1):
        return shutil.get_terminal_size((80, 24)).columns
    return 80


def _wrap(text: str, width: int, indent: str = "  ") -> list[str]:
    return textwrap.wrap(text, width=width, subsequent_indent=indent,
                         break_long_words=False, break_on_hyphens=False) or [""]


def cell_json(c: Cell) -> dict[str, Any]:
    """A cell of the memfail.compare/2 document (``unavailable``: why it was not run)."""
    d = {"scenario": c.scenario, "policy": c.policy, "applies": c.applies,
         "summary": c.summary(), "code": c.code(), "outcomes": c.outcomes}
    if c.unavailable:
        d["unavailable"] = c.unavailable
    return d


def render_text(cells: list[Cell], pols: list[str], scens: list[str],
                vs: dict[str, dict[str, Any]], sens: dict[str, dict[str, list[str]]],
                labels: dict[str, GmemPolicy], width: int) -> str:
    """The table fitted to ``width``: word cells when they fit on a wide terminal, else code
    cells under short policy names (legend below), else one block per scenario. Names are
    never cut."""
    by = {(c.scenario, c.policy): c for c in cells}
    out: list[str] = ["memfail compare: scenario x guest_memfd policy", ""]
    namew = max(len("scenario"), *(len(s) for s in scens))

    def grid(head: list[str], cell: Any) -> list[str] | None:
        cols = [max(len(h), *(len(cell(s, p)) for s in scens)) for h, p in zip(head, pols,
                                                                             strict=True)]
        if namew + sum(c + 2 for c in cols) > width:
            return None
        rows = ["  ".join([f"{'scenario':<{namew}}"] + [f"{h:<{w}}" for h, w in
                                                        zip(head, cols, strict=True)]).rstrip()]
        rows.append("  ".join(["-" * namew] + ["-" * w for w in cols]))
        for s in scens:
            rows.append("  ".join([f"{s:<{namew}}"] + [f"{cell(s, p):<{w}}" for p, w in
                                                       zip(pols, cols, strict=True)]).rstrip())
        return rows

    def word(s: str, p: str) -> str:
        c = by[(s, p)]
        return c.summary() if c.applies else c.code()

    def short(s: str, p: str) -> str:
        return by[(s, p)].code()

    shorts = {p: SHORT.get(p, f"p{i + 1}") for i, p in enumerate(pols)}
    words_mode = False
    rows = grid(pols, word) if width >= 160 else None
    if rows is not None:
        words_mode = True
    else:
        rows = grid(pols, short) or grid([shorts[p] for p in pols], short)
    if rows is None:  # one block per scenario
        rows = []
        for s in scens:
            rows.append(s)
            toks = [f"{shorts[p]}={short(s, p)}" for p in pols]
            rows.extend(_wrap("  " + "  ".join(toks), width, "  "))
    out.extend(rows)
    out.append("")
    if not words_mode:
        used = [p for p in pols if shorts[p] != p]
        if used and not any(r.startswith(f"{'scenario':<{namew}}  {pols[0]}") for r in rows):
            out.extend(_wrap("Policies: " + ", ".join(f"{shorts[p]} = {p}" for p in pols),
                             width))
        out.extend(_wrap("Codes (upper case: hazard or cost; lower case: a limitation the "
                         "policy accepts by design): " + CODES_TEXT, width))
    else:
        out.extend(_wrap("Words: HOST PANIC the host crashed; HOST STALLED broadcast "
                         "machine checks held every host CPU longer than the bound "
                         "(docs/mce.md); host stalled xN (T ms) broadcast machine checks "
                         "after the first; VM killed its VMM died or "
                         "was killed (all its memory lost); guest panic the guest panicked "
                         "on a vMCE; VM paused KVM_RUN failed and QEMU stopped the VM; "
                         "re-consumed xN poison consumed again N times; poison reused a "
                         "page with a known error handed to a new user; wrong-process "
                         "SIGBUS a non-consumer signalled or the consumer not; record lost "
                         "no record of a detected failure is left; EARLY VMM not told the "
                         "VMM's PR_MCE_KILL_EARLY thread never heard of an unconsumed "
                         "failure; vMCE a machine check was injected into the guest; lost "
                         "SIZE guest memory the guest can no longer use; (accepted) a "
                         "limitation the policy accepts by design; ok nothing went wrong; "
                         "- the policy does not apply to the scenario; n/a the scenario uses "
                         "what the kernel profile lacks (not run).", width))
    out.extend(_wrap("Classes: " + "; ".join(f"{k}: {d}" for k, d in CLASS_DOCS.items()),
                     width))
    out.extend(unavailable_lines(cells, width))
    custom = [p for p in pols if p not in PRESETS]
    if custom:
        out.append("")
        for p in custom:
            out.extend(_wrap(f"{p}: " + ", ".join(f"{k}={knob_text(v)}" for k, v in
                                                 labels[p].knobs().items()), width))
    if sens:
        out.append("")
        out.extend(_wrap("Readings that change cells (a preset run with another reading of "
                         "the call; docs/policies.md):", width))
        for p in pols:
            if p in sens:
                items = [f"{kv} ({len(ch)} cell{'s' if len(ch) > 1 else ''})"
                         for kv, ch in sens[p].items()]
                out.extend(_wrap(f"  {p}: " + ", ".join(items), width, "    "))
    hva = [p for p in pols if labels[p].sigbus_addr == "hva" and
           labels[p].consumed in ("sigbus-current", "sigbus-vmm") and labels[p].handles != "none"]
    if hva:
        out.extend(_wrap("SIGBUS address (sigbus_addr=hva, " + ", ".join(hva) + "): looked "
                         "up as failed page -> guest_memfd binding -> memslot -> "
                         "userspace_addr; where a memslot has none, si_addr is NULL and the "
                         "trace says so.", width))
    unm = sorted({s for p in pols for s in labels[p].unmerged()})
    if unm:
        out.extend(_wrap("Unmerged: " + "; ".join(
            f"{s} ({', '.join(p for p in pols if s in labels[p].unmerged())})"
            for s in unm) + " (memfail policies --json lists the series).", width))
    out.append("")
    out.append("Verdicts (over the scenarios each policy applies to):")
    for p in pols:
        out.extend(_wrap(verdict_line(p, vs[p]), width, "    "))
    return "\n".join(out)


def unavailable_lines(cells: list[Cell], width: int) -> list[str]:
    """One line per scenario not run because the profile lacks what it uses, with why."""
    why: dict[str, str] = {}
    for c in cells:
        if c.unavailable:
            why.setdefault(c.scenario, c.unavailable)
    if not why:
        return []
    out = ["", *_wrap(f"Not run on this kernel profile (n/a, {len(why)} scenario"
                      f"{'s' if len(why) > 1 else ''}; left out of every total):", width)]
    for s, w in why.items():
        out.extend(_wrap(f"  {s}: {w}", width, "    "))
    return out


def render_markdown(cells: list[Cell], pols: list[str], scens: list[str],
                    vs: dict[str, dict[str, Any]]) -> str:
    by = {(c.scenario, c.policy): c for c in cells}
    lines = ["| scenario | " + " | ".join(pols) + " |", "|---|" + "---|" * len(pols)]
    for s in scens:
        lines.append(f"| {s} | " + " | ".join(
            by[(s, p)].summary() if by[(s, p)].applies else by[(s, p)].code()
            for p in pols) + " |")
    lines.append("")
    for p in pols:
        lines.append(f"- **{verdict_line(p, vs[p])}**")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- commands


def compare(
    policy: Annotated[list[str] | None, typer.Option(
        "--policy", help="Policy to include (repeatable): a preset name or an inline "
                         "combination of knobs, '{base: minimum, sigbus_addr: none}' "
                         "(default: every preset).")] = None,
    vary_knob: Annotated[list[str] | None, typer.Option(
        "--vary", metavar="KNOB", help="Run each chosen policy once per value of KNOB "
                                       "(repeatable: every combination).")] = None,
    scenario: Annotated[list[str] | None, typer.Option(
        "--scenario", help="Built-in scenario name or file (repeatable; default: every "
                           "built-in vm-* scenario).")] = None,
    profile: Annotated[str | None, typer.Option(
        "--profile", "-p", help="Kernel profile for every run (default: each scenario's).")
    ] = None,
    readings: Annotated[bool, typer.Option(
        "--readings/--no-readings", help="Also run each preset under the other readings of "
                                         "the call (READINGS) and name those that change "
                                         "its cells.")] = True,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table.")]
    = False,
    json_out: Annotated[bool, typer.Option(
        "--json", help=f"Print the {COMPARE_SCHEMA} JSON document.")] = False,
    workers: Annotated[int, typer.Option("--workers", "-j", min=1,
                                         help="Local worker processes.")] = 2,
) -> int:
    """Run every comparison scenario under every policy: memfail's answer to the call."""
    pol_objs = [parse_policy_arg(p) for p in (policy or list(PRESETS))]
    if vary_knob:
        pol_objs = vary(pol_objs, vary_knob)
    labels = {p.name: p for p in pol_objs}
    pols = list(labels)
    if profile is not None:
        from memfail.model.kernel.profiles import PROFILES

        if profile not in PROFILES:
            raise ScenarioError("--profile", None, None,
                                f"unknown kernel profile {profile!r}; valid profiles: "
                                f"{', '.join(PROFILES)}")
    from memfail.scenario.loader import library

    known = library()
    scens = scenario or compare_scenarios()
    for s in scens:
        if s not in known and not s.endswith((".yaml", ".yml")):
            raise ScenarioError("--scenario", None, None,
                                f"unknown scenario {s!r}{did_you_mean(s, known)}: a name "
                                "`memfail scenarios` lists (the comparison's default is "
                                f"the vm-* ones: {', '.join(compare_scenarios())}) or a "
                                "scenario file (.yaml)")
    cells = run_compare(scens, list(labels.values()), profile, workers)
    vs = verdicts(cells, pols)
    sens = sensitivity(cells, list(labels.values()), scens, profile, workers) \
        if readings else {}
    if json_out:
        doc = {"schema": COMPARE_SCHEMA, "profile": profile, "policies": pols,
               "policy_knobs": {p: labels[p].knobs() for p in pols},
               "unmerged": {p: labels[p].unmerged() for p in pols},
               "scenarios": scens,
               "cells": [cell_json(c) for c in cells],
               "verdicts": vs, "readings_that_change_cells": sens,
               "outcome_docs": OUTCOME_DOCS, "class_docs": CLASS_DOCS, "series": SERIES}
        print(json.dumps(doc, indent=2, sort_keys=True, default=str))
        return 0
    if markdown:
        print(render_markdown(cells, pols, scens, vs))
        return 0
    print(render_text(cells, pols, scens, vs, sens, labels, term_width()))
    return 0


POLICIES_EPILOG = """
Examples:

  memfail policies

  memfail policies --json | jq '.policies.minimum.unmerged'

A scenario may use a preset (policy: minimum) or a combination of knobs:

  policy: {base: minimum, unmap_stage2: folio, fault_check: true}

and so may memfail compare: --policy '{base: minimum, sigbus_addr: none}'.
"""


def policies(json_out: Annotated[bool, typer.Option("--json", help="JSON output.")] = False
             ) -> int:
    """List the guest_memfd memory-failure policies, their knobs, the call items and the
    unmerged series each relies on."""
    if json_out:
        print(json.dumps({"policies": {n: {"summary": p.summary, "call_items":
                                           list(p.call_items), "knobs": p.knobs(),
                                           "unmerged": p.unmerged(),
                                           "merged": not p.unmerged(),
                                           "huge_cells_need": [] if p.backing == "hugetlbfs"
                                           else ["gmem-hugetlb"]}
                                       for n, p in PRESETS.items()},
                          "knob_docs": KNOB_DOCS, "readings": READINGS, "series": SERIES},
                         indent=2, sort_keys=True))
        return 0
    print(policies_text(term_width()))
    return 0


def policies_text(width: int) -> str:
    pols = list(PRESETS.values())
    knobs = list(pols[0].knobs())
    namew = max(len(k) for k in [*knobs, "unmerged"])
    lines = ["guest_memfd memory-failure policies", ""]

    def widths(heads: list[str]) -> list[int]:
        return [max(len(h), *(len(knob_text(p.knobs()[k])) for k in knobs)) for h, p in
                zip(heads, pols, strict=True)]

    heads = [p.name for p in pols]
    if namew + sum(c + 2 for c in widths(heads)) > width:
        heads = [SHORT.get(p.name, p.name) for p in pols]
    cols = widths(heads)
    if namew + sum(c + 2 for c in cols) <= width:
        lines.append("  ".join([f"{'knob':<{namew}}"] + [f"{h:<{w}}" for h, w in
                                                         zip(heads, cols, strict=True)]).rstrip())
        for k in knobs:
            lines.append("  ".join([f"{k:<{namew}}"] + [
                f"{knob_text(p.knobs()[k]):<{w}}" for p, w in zip(pols, cols, strict=True)
            ]).rstrip())
        if heads != [p.name for p in pols]:
            lines.extend(_wrap("Columns: " + ", ".join(f"{h} = {p.name}" for h, p in
                                                       zip(heads, pols, strict=True)), width))
    else:
        for p in pols:
            lines.extend(_wrap(f"{p.name}: " + ", ".join(f"{k}={knob_text(v)}" for k, v in
                                                         p.knobs().items()), width))
    lines.append("")
    for p in pols:
        un = p.unmerged()
        relies = f"{', '.join(un)} (unmerged)" if un else "released kernels only"
        if p.backing != "hugetlbfs" and "gmem-hugetlb" not in un:
            relies += ("; its 2M/1G cells run on HugeTLB-backed guest_memfd, which only "
                       "gmem-hugetlb (unmerged) has")
        lines.extend(_wrap(f"{p.name}: {p.summary} Call items: {', '.join(p.call_items) or '-'}"
                           f". Relies on: {relies}.", width))
    lines.append("")
    lines.append("Unmerged series:")
    for k, d in SERIES.items():
        lines.extend(_wrap(f"  {k}: {d}", width, "    "))
    lines.append("")
    lines.append("Knobs (* = a reading of the call's words, see READINGS):")
    for k, d in KNOB_DOCS.items():
        lines.extend(_wrap(f"  {k}{'*' if k in READINGS else ''}: {d}", width, "    "))
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    app.command("compare", epilog=COMPARE_EPILOG)(compare)
    app.command("policies", epilog=POLICIES_EPILOG)(policies)


__all__ = ["compare", "policies", "register", "run_compare", "summarize"]


def policies_markdown() -> str:
    """The presets x knobs table and the knob and outcome glossaries, as Markdown (the
    generated section of docs/policies.md)."""
    pols = list(PRESETS.values())
    lines = ["| knob | " + " | ".join(p.name for p in pols) + " |",
             "|---|" + "---|" * len(pols)]
    for k in pols[0].knobs():
        lines.append(f"| `{k}`{' *' if k in READINGS else ''} | " +
                     " | ".join(knob_text(p.knobs()[k]) for p in pols) + " |")
    lines.append("| call items | " + " | ".join(", ".join(p.call_items) or "-" for p in pols)
                 + " |")
    lines.append("| unmerged | " + " | ".join(", ".join(p.unmerged()) or "-" for p in pols)
                 + " |")
    lines.append("")
    lines.append("`*` marks a reading of the call's words (see \"Where the call's words allow "
                 "more than one reading\").")
    lines.append("")
    for p in pols:
        lines.append(f"- **{p.name}**: {p.summary}")
    lines.append("")
    lines.append("Unmerged series (the `unmerged` row):")
    lines.append("")
    for k, d in SERIES.items():
        lines.append(f"- `{k}`: {d}")
    lines.append("")
    lines.append("Knobs:")
    lines.append("")
    for k, d in KNOB_DOCS.items():
        lines.append(f"- `{k}`: {d}")
    lines.append("")
    lines.append("Outcomes (`memfail compare` cells, `Host.outcomes()`):")
    lines.append("")
    for k, d in OUTCOME_DOCS.items():
        lines.append(f"- `{k}`: {d}")
    lines.append("")
    lines.append("Classes of findings (`classes` in the outcomes, `by_class` in the verdicts):")
    lines.append("")
    for k, d in CLASS_DOCS.items():
        lines.append(f"- `{k}`: {d}")
    return "\n".join(lines) + "\n"
