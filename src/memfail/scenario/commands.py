"""``memfail run`` and ``memfail scenarios``: run scenario files, list the built-in ones."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from memfail.model.kernel.profiles import get_profile

from .errors import ScenarioError
from .loader import library, load_scenario, resolve
from .runner import run_scenario

RUN_EPILOG = """
Examples:

  memfail run anon-madvise-hwpoison          (a built-in scenario, by name)

  memfail run my.yaml --profile linux-6.1    (pin another kernel)

  memfail run a.yaml b.yaml --json > runs.json   (a JSON list, one document per file)

Exit status: 0 every expectation passed, 1 some failed, 2 bad input (one error line on stderr),
3 internal error (a bug: rerun with MEMFAIL_TRACEBACK=1).
"""

SCENARIOS_EPILOG = """
Examples:

  memfail scenarios

  memfail scenarios --json

  memfail run hugetlb-2m-private
"""


def run(
    files: Annotated[list[str], typer.Argument(
        help="Scenario files (YAML), or names of built-in scenarios (see `memfail scenarios`).",
        show_default=False)],
    profile: Annotated[str | None, typer.Option(
        "--profile", "-p", help="Kernel profile; overrides the files' `profile:`.")] = None,
    policy: Annotated[str | None, typer.Option(
        "--policy", help="guest_memfd memory-failure policy; overrides `policy:`.")] = None,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print the memfail.run/1 JSON document (a list for several files).")
    ] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Print only failed expectations and one verdict line per file.")
    ] = False,
) -> None:
    """Run scenarios and check their expectations; print a dmesg-like view of each run."""
    from memfail.report import render_text, run_document, to_json

    if profile is not None:
        try:
            get_profile(profile)
        except ValueError as e:
            raise ScenarioError("--profile", None, None, f"{e}; `memfail profiles` lists them"
                                ) from None
    if policy is not None:
        from memfail.model.policy.registry import make_policy

        try:
            make_policy(policy)
        except (ValueError, TypeError) as e:
            raise ScenarioError("--policy", None, None, f"{e}; `memfail policies` lists them"
                                ) from None
    # Validate every file before running any, so bad input never leaves half a report.
    scenarios = [load_scenario(path, display) for path, display in map(resolve, files)]
    results = [run_scenario(sc, profile, policy) for sc in scenarios]
    if json_out:
        docs = [run_document(r) for r in results]
        typer.echo(to_json(docs[0] if len(docs) == 1 else docs))
    else:
        for i, r in enumerate(results):
            if i and not quiet:
                typer.echo("")
            typer.echo(render_text(r, quiet=quiet), nl=False)
        if len(results) > 1:
            bad = sum(not r.ok for r in results)
            typer.echo(f"{len(results)} scenarios: {len(results) - bad} ok, {bad} failed")
    raise typer.Exit(0 if all(r.ok for r in results) else 1)


def scenarios(
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """List the built-in scenarios (run one with `memfail run NAME`)."""
    rows: list[dict[str, str | int]] = []
    for stem, path in library().items():
        sc = load_scenario(path, f"{stem}.yaml")
        rows.append({"name": stem, "title": sc.name, "steps": len(sc.steps),
                     "description": sc.description})
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no built-in scenarios")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "steps", "description", box=None, pad_edge=False)
    for row in rows:
        table.add_row(str(row["name"]), str(row["steps"]), str(row["description"]))
    Console(soft_wrap=False, width=_width()).print(table)


def _width() -> int:
    import shutil

    return max(100, shutil.get_terminal_size((120, 24)).columns)


def register(app: typer.Typer) -> None:
    app.command("run", epilog=RUN_EPILOG)(run)
    app.command("scenarios", epilog=SCENARIOS_EPILOG)(scenarios)
