"""``memfail profiles``: the kernel profile presets and their behaviour switches, as a table."""

from __future__ import annotations

import json
import shutil
from typing import Annotated, Any

import typer

from memfail.model.kernel.profiles import FEATURES, PROFILE_NOTES, PROFILES, SWITCHES, get_profile
from memfail.scenario.errors import ScenarioError

EPILOG = """
Examples:

  memfail profiles

  memfail profiles --diff linux-6.12 linux-6.18

  memfail profiles --json
"""


def profiles_document() -> dict[str, Any]:
    return {
        "profiles": [{"name": n, "note": PROFILE_NOTES.get(n, ""), "switches": p.switches()}
                     for n, p in PROFILES.items()],
        "switches": [{"name": s.name, "since": s.since, "rules": s.rules, "change": s.change,
                      "effect": s.effect} for s in SWITCHES],
        "features": [{"name": f.name, "what": f.what, "since": f.since, "commit": f.commit,
                      "title": f.title} for f in FEATURES],
    }


def diff_document(a: str, b: str) -> dict[str, Any]:
    pa, pb = _profile(a, "A"), _profile(b, "B")
    by_name = {s.name: s for s in SWITCHES}
    rows = []
    for name, (va, vb) in pa.diff(pb).items():
        s = by_name.get(name)
        f = next((x for x in FEATURES if x.name == name), None)
        if s is None and f is not None:
            rows.append({"name": name, a: va, b: vb, "since": f.since,
                         "rules": f"commit {f.commit}", "effect": f"{f.what}: '{f.title}'"})
            continue
        rows.append({"name": name, a: va, b: vb, "since": s.since if s else "",
                     "rules": s.rules if s else "", "effect": s.effect if s else ""})
    return {"a": a, "b": b, "differences": rows}


def _profile(name: str, which: str) -> Any:
    try:
        return get_profile(name)
    except ValueError as e:
        raise ScenarioError("--diff", None, which, str(e)) from None


def profiles(
    diff: Annotated[tuple[str, str] | None, typer.Option(
        "--diff", metavar="A B", help="Show only the switches where profiles A and B differ.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")
                        ] = False,
) -> None:
    """List kernel profiles (presets) and the behaviour switches that tell them apart."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    console = Console(soft_wrap=False, width=max(100, shutil.get_terminal_size((160, 24)).columns))
    if diff is not None:
        a, b = diff
        doc = diff_document(a, b)
        if json_out:
            typer.echo(json.dumps(doc, indent=2))
            return
        if not doc["differences"]:
            typer.echo(f"{a} and {b} have the same switches")
            return
        t = Table(title=f"{a} vs {b}", box=box.SIMPLE)
        t.add_column("switch", no_wrap=True)
        for col in (a, b, "since"):
            t.add_column(col, no_wrap=True)
        t.add_column("rules")
        t.add_column("effect")
        for r in doc["differences"]:
            t.add_row(r["name"], _on(r[a]), _on(r[b]), r["since"], r["rules"], r["effect"])
        console.print(t)
        return
    if json_out:
        typer.echo(json.dumps(profiles_document(), indent=2))
        return
    presets = Table("profile", "note", title="kernel profiles", box=box.SIMPLE)
    for name in PROFILES:
        presets.add_row(name, PROFILE_NOTES.get(name, ""))
    console.print(presets)
    t = Table(title="behaviour switches (on = the profile has the change)", box=box.SIMPLE)
    t.add_column("switch", no_wrap=True)
    for col in ("since", "rules", *(n.removeprefix("linux-") for n in PROFILES)):
        t.add_column(col, no_wrap=col != "rules")
    t.add_column("change")
    for s in SWITCHES:
        t.add_row(s.name, s.since, s.rules, *(_on(getattr(p, s.name)) for p in PROFILES.values()),
                  s.change)
    console.print(t)
    f = Table(title="features (a profile without one refuses a scenario that uses it)",
              box=box.SIMPLE)
    f.add_column("feature", no_wrap=True)
    for col in ("since", "commit", *(n.removeprefix("linux-") for n in PROFILES)):
        f.add_column(col, no_wrap=True)
    f.add_column("what")
    for x in FEATURES:
        f.add_row(x.name, x.since, x.commit, *(_on(getattr(p, x.name)) for p in PROFILES.values()),
                  f"{x.what}: '{x.title}'")
    console.print(f)


def _on(v: bool) -> str:
    return "on" if v else "-"


def register(app: typer.Typer) -> None:
    app.command("profiles", epilog=EPILOG)(profiles)
