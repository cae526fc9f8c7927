"""``memfail report``: the call's questions answered in one self-contained HTML page, with the
evidence behind each answer (docs/report.md)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from memfail.inputs import InputError, did_you_mean

EPILOG = """
Examples:

  memfail report --quick --out draft.html        (a draft: small samples, shallow check)

  memfail report --out report.html               (full runs; boots QEMU for conform)

  memfail report --baseline minimum --search-json search.json

Counterexample scenarios are written beside the page (report-cex/ for report.html); each
replays with `memfail run FILE`. Exit status: 0 the page was written, 2 bad input or usage
(one `memfail: error:` line, before any work), 3 internal error.
"""


def _writable_file(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if path.exists() and path.is_dir():
        raise InputError("--out", None, None, f"{path} is a directory; give a file such as "
                         "report.html")
    if not parent.is_dir():
        raise InputError("--out", None, None, f"{parent}: no such directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError("--out", None, None, f"{parent} is not writable")


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[object]:
    """A rich progress line on stderr (a terminal only) naming the run in progress."""
    if not enabled:
        @contextlib.contextmanager
        def quiet(_what: str) -> Iterator[None]:
            yield

        yield quiet
        return
    if not sys.stderr.isatty():  # a log: one line as each stage starts and ends
        @contextlib.contextmanager
        def line(what: str) -> Iterator[None]:
            t0 = time.monotonic()
            print(f"memfail report: {what} ...", file=sys.stderr, flush=True)
            yield
            print(f"memfail report: {what}: done in {time.monotonic() - t0:.1f} s",
                  file=sys.stderr, flush=True)

        yield line
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                  console=console, transient=False) as bar:

        @contextlib.contextmanager
        def step(what: str) -> Iterator[None]:
            task = bar.add_task(what, total=1)
            try:
                yield
            finally:
                bar.update(task, completed=1)

        yield step


def report(
    out: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")]
    = Path("report.html"),
    quick: Annotated[bool, typer.Option(
        "--quick", help="A draft: 2,000 fleet host-years, check to depth 3, readings and "
                        "kernel versions for the baseline and minimum only, no conform, no "
                        "search run.")] = False,
    baseline: Annotated[str, typer.Option(
        "--baseline", help="The policy every other is compared with.")] = "mainline",
    search_json: Annotated[Path | None, typer.Option(
        "--search-json", help="A memfail.search/1 document (memfail search --json) for "
                              "'What does minimum support look like?'.",
        show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fleet's random streams.")]
    = 0,
    workers: Annotated[int, typer.Option("--workers", "-j", min=1,
                                         help="Local worker processes for compare, "
                                              "fleet and search; with 2 or more, the "
                                              "single-core stages (check, oracle cases, "
                                              "conform) run beside them in one more.")] = 2,
) -> None:
    """Answer the call's questions in one self-contained HTML page (no network, inline SVG).

    Example: memfail report --quick --out draft.html
    """
    from memfail.model.policy.registry import PRESETS
    from memfail.report.html.collect import Settings, collect, load_search
    from memfail.report.html.page import render

    if baseline not in PRESETS:
        raise InputError("--baseline", None, None, f"unknown policy {baseline!r}"
                         f"{did_you_mean(baseline, PRESETS)}; choose from "
                         f"{', '.join(PRESETS)}")
    if seed < 0:
        raise InputError("--seed", None, None, f"must be 0 or more, got {seed}")
    _writable_file(out)
    if search_json is not None:
        load_search(search_json)  # bad input is refused before any work
    command = " ".join(["memfail report", "--quick" * quick, f"--out {out}",
                        f"--baseline {baseline}" * (baseline != "mainline"),
                        f"--search-json {search_json}" * (search_json is not None),
                        f"--seed {seed}" * (seed != 0)]).replace("  ", " ").strip()
    s = Settings.make(out, quick, baseline=baseline, seed=seed, workers=workers,
                      search_json=search_json, command=" ".join(command.split()))
    with _progress(True) as step:
        data = collect(s, step)  # type: ignore[arg-type]
    html = render(data)
    out.write_text(html, encoding="utf-8")
    n = len(data["counterexamples"])
    typer.echo(f"wrote {out} ({len(html) // 1024} KiB); {n} counterexample scenarios in "
               f"{s.cex_dir}", err=True)


def register(app: typer.Typer) -> None:
    app.command("report", epilog=EPILOG)(report)


__all__ = ["register", "report"]
