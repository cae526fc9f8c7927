"""`memfail search`: the cheapest guest_memfd policies that keep the call's properties.

Exit status: 0 done, 2 bad input or usage (one `memfail: error:` line, before any work),
3 internal error.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from memfail.inputs import InputError, did_you_mean
from memfail.search.space import all_knobs, default_properties, parse_value, values_of

DEFAULT_DEPTH = 3
QUICK_DEPTH = 3
DEFAULT_FLEET_YEARS = 12_800
QUICK_FLEET_YEARS = 6_400
QUICK_VARY = ("unmap_stage2", "unmap_host", "fault_check", "unconsumed", "honor_early")
QUICK_SCENARIOS = ("vm-hugetlb-consumed-2m", "vm-hugetlb-ao-then-ar-2m", "vm-hostile-2m",
                   "vm-release-2m", "vm-early-thread-untold-2m", "vm-punch-reuse-2m")


class OptionError(InputError):
    def __init__(self, option: str, message: str) -> None:
        super().__init__(option, None, None, message)


def grouping_scenarios(base: str, quick: bool, names: list[str] | None, handles_varied: bool
                       ) -> tuple[tuple[str, ...], list[str]]:
    """The library scenarios whose traces group combinations, and those left out with why.

    Default: every vm-* scenario in which the base preset's policy acts (a policy event in its
    trace; all of them when ``handles`` is varied), but not one whose trace is longer than
    ``HEAVY_EVENTS``, and not the 1G twin of a scenario that has a ``-2m`` version (the same
    steps on 2M pages, run ten to twenty times faster by the model)."""
    from memfail.scenario.loader import library
    from memfail.search.engine import HEAVY_EVENTS, trace_text

    lib = library()
    if names:
        for n in names:
            if n not in lib:
                raise OptionError("--group-scenario", f"unknown scenario {n!r}"
                                  f"{did_you_mean(n, lib)}; `memfail scenarios` lists them")
        return tuple(names), []
    if quick:
        return QUICK_SCENARIOS, []
    keep, out = [], []
    for n in sorted(lib):
        if not n.startswith("vm-"):
            continue
        text = trace_text(n, base)
        events = [] if text.startswith("error:") else json.loads(text)
        if len(events) > HEAVY_EVENTS:
            out.append(f"{n} (trace of {len(events):,} events)")
        elif f"{n}-2m" in lib:
            out.append(f"{n} (its -2m twin is used)")
        elif not handles_varied and not any(e.get("event") == "policy" for e in events):
            out.append(f"{n} (the {base} policy does not act in it)")
        else:
            keep.append(n)
    return tuple(keep), out


def search(
    config: Annotated[Path | None, typer.Option(
        "--config", help="Check configuration (YAML); if omitted, the search's own src/memfail/search/config.yaml (two VMs, one error, the events the call discussed).")
    ] = None,
    depth: Annotated[int | None, typer.Option(
        help=f"Check depth (default {DEFAULT_DEPTH}; {QUICK_DEPTH} with --quick).", min=1)
    ] = None,
    max_states: Annotated[int | None, typer.Option(
        help="Stop each check after this many states.", min=1)] = None,
    prop: Annotated[list[str] | None, typer.Option(
        "--property", help="Property to keep (repeatable; default: the six of the call's "
                           "property sets).")] = None,
    base: Annotated[str, typer.Option(
        help="Preset whose values the knobs not varied keep.")] = "minimum",
    vary: Annotated[list[str] | None, typer.Option(
        "--vary", help="Also vary this knob (repeatable).")] = None,
    fix: Annotated[list[str] | None, typer.Option(
        "--fix", help="Keep KNOB at VALUE (KNOB=VALUE, repeatable).")] = None,
    every_knob: Annotated[bool, typer.Option(
        "--every-knob", help="Vary every knob (a very large space; see docs/search.md).")
    ] = False,
    costs: Annotated[Path | None, typer.Option(
        help="Cost table (YAML) whose entries replace the built-in ones.")] = None,
    group_scenario: Annotated[list[str] | None, typer.Option(
        "--group-scenario", help="Library scenario used to group combinations (repeatable; "
                                 "default: every vm-* scenario but the heavy ones).")] = None,
    compare_scenario: Annotated[list[str] | None, typer.Option(
        "--compare-scenario", help="Comparison scenario each answered policy is run through "
                                   "beside the presets (repeatable; default: every vm-* "
                                   "scenario, as memfail compare).")] = None,
    workers: Annotated[int, typer.Option(help="Local worker processes.", min=1)] = 1,
    scheduler: Annotated[str | None, typer.Option(
        help="Dask scheduler address (tcp://HOST:PORT) instead of local processes.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the verification sample and the fleet.",
                                      min=0)] = 0,
    verify: Annotated[int, typer.Option(
        help="Inferred or grouped combinations to check again (a seeded sample).", min=0)] = 8,
    fleet_host_years: Annotated[int | None, typer.Option(
        help=f"Host-years the fleet samples for the Pareto front (default "
             f"{DEFAULT_FLEET_YEARS:,}; {QUICK_FLEET_YEARS:,} with --quick; 0: no fleet; "
             "else at least 6,400: 64 batches of 100).",
        min=0)] = None,
    pareto_max: Annotated[int, typer.Option(
        help="Cheapest safe combinations run through the fleet.", min=1)] = 12,
    answer_checks: Annotated[bool, typer.Option(
        "--answer-checks", help="Walk each property set of the answer with new checks too "
                                "(slower); by default the answers use the verdicts the main "
                                "walk computed.")] = False,
    quick: Annotated[bool, typer.Option(
        help=f"A small search for tests: depth {QUICK_DEPTH}, only {', '.join(QUICK_VARY)} "
             f"varied, {len(QUICK_SCENARIOS)} grouping scenarios.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the memfail.search/1 JSON.")
    ] = False,
    plot: Annotated[Path | None, typer.Option(
        help="Write the Pareto front plot here (.png or .svg).")] = None,
) -> None:
    """Search the policy knobs for the cheapest policies that keep the call's properties.

    The default search varies 9 design knobs (the readings of the call's words and handles,
    vm_on_error, backing keep the minimum preset's values: 5,040 combinations), checks the
    search's configuration (src/memfail/search/config.yaml) to depth 3, samples 12,800 fleet
    host-years and runs every answered policy through compare's vm-* scenarios: about 450 s
    of CPU, so about 8 minutes with the default one worker, about 4 minutes with --workers 2
    on 2 idle cores; 200 MB. Deeper: --depth 4 or 5, --vary KNOB, --answer-checks,
    --every-knob (docs/search.md).

    A verdict is "no counterexample to the depth on the check configuration" (one error):
    each answer also says what compare's scenarios find of it beside the presets.

    Example: memfail search --workers 2 --plot pareto.svg
    """
    try:
        _search(config, depth, max_states, prop, base, vary, fix, every_knob, costs,
                group_scenario, workers, scheduler, seed, verify, fleet_host_years,
                pareto_max, quick, as_json, plot, answer_checks, compare_scenario)
    except InputError as e:
        typer.echo(f"memfail: error: {e}", err=True)
        raise typer.Exit(2) from None


def _search(config: Path | None, depth: int | None, max_states: int | None,
            prop: list[str] | None, base: str, vary: list[str] | None, fix: list[str] | None,
            every_knob: bool, costs_file: Path | None, group_scenario: list[str] | None,
            workers: int, scheduler: str | None, seed: int, verify: int,
            fleet_host_years: int | None, pareto_max: int, quick: bool, as_json: bool,
            plot_file: Path | None, answer_checks: bool = False,
            compare_scenario: list[str] | None = None) -> None:
    from memfail.check.backends import WorkerError
    from memfail.check.config import load_config
    from memfail.check.properties import PROPERTY_NAMES
    from memfail.model.policy.registry import PRESETS
    from memfail.search.engine import Executor, Settings
    from memfail.search.report import build, plot, render
    from memfail.search.space import load_costs, make_space

    # everything is validated before any work
    if config is not None:
        load_config(config)
    props = tuple(prop) if prop else default_properties()
    for p in props:
        if p not in PROPERTY_NAMES:
            raise OptionError("--property", f"unknown property {p!r}"
                              f"{did_you_mean(p, PROPERTY_NAMES)}; choose from "
                              f"{', '.join(PROPERTY_NAMES)}")
    if base not in PRESETS:
        raise OptionError("--base", f"unknown preset {base!r}{did_you_mean(base, PRESETS)}; "
                          f"presets: {', '.join(PRESETS)}")
    knobs = all_knobs()
    vary_list = list(vary or [])
    for k in vary_list:
        if k not in knobs:
            raise OptionError("--vary", f"unknown knob {k!r}{did_you_mean(k, knobs)}; knobs: "
                              f"{', '.join(knobs)}")
    fixed: dict[str, Any] = {}
    for item in fix or []:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or name not in knobs:
            raise OptionError("--fix", f"{item!r}: write KNOB=VALUE with a knob of "
                              f"{', '.join(knobs)}{did_you_mean(name, knobs)}")
        try:
            fixed[name] = parse_value(name, text)
        except ValueError as e:
            raise OptionError("--fix", str(e)) from None
    if plot_file is not None and plot_file.suffix.lower() not in (".png", ".svg"):
        raise OptionError("--plot", f"{plot_file}: give a .png or .svg file name")
    if plot_file is not None and not plot_file.resolve().parent.is_dir():
        raise OptionError("--plot", f"{plot_file.parent}: no such directory")
    table = load_costs(costs_file)
    only = QUICK_VARY if quick and not vary and not every_knob else None
    space = make_space(base, vary_list, fixed, every_knob, table, only,
                       f"--quick varies only {', '.join(QUICK_VARY)}")
    if space.raw_count() > 5_000_000:
        raise OptionError("--every-knob" if every_knob else "--vary",
                          f"{space.raw_count():,} combinations is more than this search "
                          "walks (5,000,000); --fix some knobs")
    for k in space.varied:
        values_of(k)
    d = depth if depth is not None else (QUICK_DEPTH if quick else DEFAULT_DEPTH)
    years = fleet_host_years if fleet_host_years is not None else (
        QUICK_FLEET_YEARS if quick else DEFAULT_FLEET_YEARS)
    if 0 < years < 6400:
        raise OptionError("--fleet-host-years", f"give 0 (no fleet) or at least 6400 (64 "
                          f"batches of 100 host-years), got {years}")
    if compare_scenario:
        from memfail.report.compare import compare_scenarios
        from memfail.scenario.loader import library

        lib = library()
        for n in compare_scenario:
            if n not in lib:
                raise OptionError("--compare-scenario", f"unknown scenario {n!r}"
                                  f"{did_you_mean(n, lib)}; memfail compare's are "
                                  f"{', '.join(compare_scenarios())}")
    scen, left_out = grouping_scenarios(base, quick, group_scenario,
                                        "handles" in space.varied)
    settings = Settings(str(config) if config is not None else None, d, max_states, props,
                        scen, seed, verify)
    err = Console(stderr=True)
    t0 = time.monotonic()
    from rich.progress import Progress

    try:
        ex = Executor(workers, scheduler)
    except WorkerError as e:
        raise OptionError("--scheduler" if scheduler else "--workers", str(e)) from None
    except (OSError, RuntimeError, ValueError) as e:
        raise OptionError("--scheduler" if scheduler else "--workers",
                          f"cannot start workers: {e}") from None
    with ex, Progress(console=err, transient=True, disable=not err.is_terminal) as bar:
        tasks: dict[str, Any] = {}

        last = [time.monotonic()]

        def progress(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bar.add_task(what, total=total)
            bar.update(tasks[what], completed=done)
            now = time.monotonic()
            if not err.is_terminal and now - last[0] >= 60:  # a log line a minute
                last[0] = now
                err.print(f"search: {what}: {done:,}/{total:,} combinations walked, "
                          f"{now - t0:.0f} s")

        try:
            doc = build(space, settings, ex, fleet_years=years, pareto_max=pareto_max,
                        progress=progress, left_out=left_out, answer_checks=answer_checks,
                        compare_scenarios=list(compare_scenario) if compare_scenario
                        else None)
        except WorkerError as e:
            raise OptionError("--scheduler" if scheduler else "--workers", str(e)) from None
    elapsed = time.monotonic() - t0
    if plot_file is not None:
        plot(doc, plot_file)
    if as_json:
        typer.echo(json.dumps(doc, indent=2, default=str))
        return
    from memfail.report.console import wide_console

    console = wide_console()
    render(doc, console)
    console.print(f"({elapsed:.0f} s on {ex.workers if not scheduler else 'the Dask cluster'}"
                  f"{' worker(s)' if not scheduler else ''})")
    if plot_file is not None:
        console.print(f"plot: {plot_file}")


def main() -> None:  # pragma: no cover
    typer.run(search)


if __name__ == "__main__":  # pragma: no cover
    main()
