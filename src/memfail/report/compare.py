"""``memfail compare`` and ``memfail policies``: every comparison scenario under every
guest_memfd policy, each cell the outcomes that matter, and a verdict line per policy.

Outcomes come from ``Host.outcomes()`` (trace and final state); see ``OUTCOME_DOCS``.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from memfail.model.outcomes import OUTCOME_DOCS
from memfail.model.policy.base import KNOB_DOCS
from memfail.model.policy.registry import PRESETS, make_policy
from memfail.model.units import fmt_size
from memfail.scenario.errors import ScenarioError

COMPARE_SCHEMA = "memfail.compare/1"
COMPARE_PREFIX = "vm-"  # built-in scenarios whose name starts with this are compared

COMPARE_EPILOG = """
Examples:

  memfail compare                                (every vm-* scenario x every policy)

  memfail compare --policy minimum --policy unmap --scenario vm-hugetlb-reconsume

  memfail compare --markdown > comparison.md

  memfail compare --json | jq '.cells[] | select(.outcomes.host_panic)'

Each cell lists what went wrong (HOST PANIC, VM killed, guest panic, VM paused,
re-consumed xN, poison reused, wrong-process SIGBUS, record lost, lost <bytes> of guest
memory) or "ok"; "vMCE" marks a machine check injected into the guest.
"""


@dataclass
class Cell:
    scenario: str
    policy: str
    outcomes: dict[str, Any]

    def summary(self) -> str:
        return summarize(self.outcomes)


# What went wrong, worst first: (outcome key, cell text, verdict-line text). The cell and the
# verdict line read the same table, so they cannot drift apart.
FINDINGS: tuple[tuple[str, str, str], ...] = (
    ("host_panic", "HOST PANIC", "host panic"),
    ("host_stalled", "HOST STALLED", "host stalled beyond the bound"),  # M10, docs/mce.md
    ("vms_killed", "VM killed", "VM killed"),
    ("guests_panicked", "guest panic", "guest panic"),
    ("vms_paused", "VM paused", "VM paused"),
    ("repeated_consumptions", "re-consumed x{n}", "re-consumption"),
    ("poison_handed_out", "poison reused", "poison reused"),
    ("wrong_process_signals", "wrong-process SIGBUS", "wrong-process SIGBUS"),
    ("records_lost", "record lost", "record lost"),
    ("early_not_told", "EARLY VMM not told", "EARLY VMM not told"),
)
VERDICT_KEYS = tuple(key for key, _, _ in FINDINGS)


def summarize(o: dict[str, Any]) -> str:
    """A short, human cell text from an outcome dictionary (worst first)."""
    parts = [cell.format(n=o[key]) for key, cell, _ in FINDINGS if o.get(key)]
    if o.get("vmce_injected"):
        parts.append("vMCE")
    if o.get("host_stalls", 0) > 1:  # broadcast machine checks after the first (M3, M9)
        parts.append(f"host stalled x{o['host_stalls']} "
                     f"({o.get('host_stall_us', 0) / 1000:.1f} ms)")
    if o.get("guest_bytes_lost"):
        parts.append(f"lost {fmt_size(o['guest_bytes_lost'])}")
    return ", ".join(parts) or "ok"


def _run_one(args: tuple[str, str, str | None]) -> tuple[str, str, dict[str, Any]]:
    from memfail.scenario.loader import load_scenario, resolve
    from memfail.scenario.runner import run_scenario

    scen, pol, profile = args
    path, display = resolve(scen)
    r = run_scenario(load_scenario(path, display), profile_override=profile,
                     policy_override=pol)
    assert r.host_outcomes is not None
    return scen, pol, r.host_outcomes


def compare_scenarios() -> list[str]:
    from memfail.scenario.loader import library

    return [name for name in sorted(library()) if name.startswith(COMPARE_PREFIX)]


def run_compare(scenarios: list[str], policies: list[str], profile: str | None = None,
                workers: int = 1) -> list[Cell]:
    jobs = [(s, p, profile) for s in scenarios for p in policies]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as ex:
            results = list(ex.map(_run_one, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        results = [_run_one(j) for j in jobs]
    return [Cell(s, p, o) for s, p, o in results]


def verdicts(cells: list[Cell], policies: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for p in policies:
        mine = [c for c in cells if c.policy == p]
        v: dict[str, Any] = {k: sum(1 for c in mine if c.outcomes.get(k)) for k in VERDICT_KEYS}
        v["guest_bytes_lost"] = sum(int(c.outcomes.get("guest_bytes_lost", 0)) for c in mine)
        v["scenarios"] = len(mine)
        v["ok"] = sum(1 for c in mine if c.summary() in ("ok", "vMCE"))
        out[p] = v
    return out


def verdict_line(p: str, v: dict[str, Any]) -> str:
    bits = [f"{v['ok']}/{v['scenarios']} clean"]
    for k, _, label in FINDINGS:
        if v[k]:
            bits.append(f"{label} in {v[k]}")
    bits.append(f"guest memory lost {v['guest_bytes_lost'] / 2**30:.2f} GiB")
    return f"{p}: " + "; ".join(bits)


def compare(
    policy: Annotated[list[str] | None, typer.Option(
        "--policy", help="Policy to include (repeatable; default: every preset).")] = None,
    scenario: Annotated[list[str] | None, typer.Option(
        "--scenario", help="Built-in scenario name or file (repeatable; default: every "
                           "built-in vm-* scenario).")] = None,
    profile: Annotated[str | None, typer.Option(
        "--profile", "-p", help="Kernel profile for every run (default: each scenario's).")
    ] = None,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print a Markdown table.")]
    = False,
    json_out: Annotated[bool, typer.Option(
        "--json", help=f"Print the {COMPARE_SCHEMA} JSON document.")] = False,
    workers: Annotated[int, typer.Option("--workers", "-j", min=1,
                                         help="Local worker processes.")] = 2,
) -> int:
    """Run every comparison scenario under every policy: memfail's answer to the call."""
    pols = policy or list(PRESETS)
    for p in pols:
        if p not in PRESETS:
            raise ScenarioError("memfail compare", None, "--policy",
                                f"unknown policy {p!r}; valid policies: {', '.join(PRESETS)}")
    from memfail.scenario.loader import library

    known = library()
    scens = scenario or compare_scenarios()
    for s in scens:
        if s not in known and not s.endswith((".yaml", ".yml")):
            raise ScenarioError("memfail compare", None, "--scenario",
                                f"unknown scenario {s!r}; valid scenarios: "
                                f"{', '.join(compare_scenarios())}")
    cells = run_compare(scens, pols, profile, workers)
    vs = verdicts(cells, pols)
    if json_out:
        doc = {"schema": COMPARE_SCHEMA, "profile": profile, "policies": pols,
               "scenarios": scens,
               "cells": [{"scenario": c.scenario, "policy": c.policy, "summary": c.summary(),
                          "outcomes": c.outcomes} for c in cells],
               "verdicts": vs, "outcome_docs": OUTCOME_DOCS}
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    by = {(c.scenario, c.policy): c for c in cells}
    if markdown:
        print("| scenario | " + " | ".join(pols) + " |")
        print("|---|" + "---|" * len(pols))
        for s in scens:
            print(f"| {s} | " + " | ".join(by[(s, p)].summary() for p in pols) + " |")
        print()
        for p in pols:
            print(f"- **{verdict_line(p, vs[p])}**")
        return 0
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(160, Console().width))
    t = Table(title="memfail compare: scenario x guest_memfd policy", show_lines=True)
    t.add_column("scenario", style="bold")
    for p in pols:
        t.add_column(p)
    for s in scens:
        row = []
        for p in pols:
            txt = by[(s, p)].summary()
            style = "red" if "PANIC" in txt or "killed" in txt else \
                "yellow" if txt not in ("ok", "vMCE") else "green"
            row.append(f"[{style}]{txt}[/{style}]")
        t.add_row(s, *row)
    con.print(t)
    for p in pols:
        con.print(verdict_line(p, vs[p]), highlight=False)
    return 0


POLICIES_EPILOG = """
Examples:

  memfail policies

  memfail policies --json

A scenario may use a preset (policy: minimum) or a combination of knobs:

  policy: {base: minimum, unmap_stage2: folio, fault_check: true}
"""


def policies(json_out: Annotated[bool, typer.Option("--json", help="JSON output.")] = False
             ) -> int:
    """List the guest_memfd memory-failure policies, their knobs and the call items."""
    if json_out:
        print(json.dumps({"policies": {n: {"summary": p.summary, "call_items":
                                           list(p.call_items), "knobs": p.knobs()}
                                       for n, p in PRESETS.items()},
                          "knob_docs": KNOB_DOCS}, indent=2, sort_keys=True))
        return 0
    from rich.console import Console
    from rich.table import Table

    con = Console(width=max(160, Console().width))
    t = Table(title="guest_memfd memory-failure policies", show_lines=True)
    t.add_column("knob")
    for n in PRESETS:
        t.add_column(n)
    for k in make_policy("mainline").knobs():
        t.add_row(k, *[str(p.knobs()[k]) for p in PRESETS.values()])
    t.add_row("call items", *[", ".join(p.call_items) or "-" for p in PRESETS.values()])
    con.print(t)
    for n, p in PRESETS.items():
        con.print(f"[bold]{n}[/bold]: {p.summary}", highlight=False)
    con.print()
    for k, d in KNOB_DOCS.items():
        con.print(f"[bold]{k}[/bold]: {d}", highlight=False)
    return 0


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
        lines.append(f"| `{k}` | " + " | ".join(str(p.knobs()[k]) for p in pols) + " |")
    lines.append("| call items | " + " | ".join(", ".join(p.call_items) or "-" for p in pols)
                 + " |")
    lines.append("")
    for p in pols:
        lines.append(f"- **{p.name}**: {p.summary}")
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
    return "\n".join(lines) + "\n"
