"""``memfail fleet``: estimate what each policy costs a fleet, and sweep its parameters.

Register with ``app.add_typer(fleet_app, name="fleet")``; bad input exits 2 with one line.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from typer._click.core import Context
from typer.core import TyperGroup

from memfail.fleet import engine, output
from memfail.fleet.classes import OUTCOME_NAMES
from memfail.fleet.oracle import ModelOracle, OutcomeOracle, TableOracle
from memfail.fleet.params import (
    FleetError,
    FleetInputError,
    LoadedFleet,
    defaults_table,
    load_fleet,
    model_profile_problem,
    parse_assignment,
    with_assignments,
)
from memfail.inputs import did_you_mean
from memfail.report.console import wide_console

UNITS = {"vm": "per_million_vm_hours", "host": "per_host_year", "fleet": "per_fleet_year"}
DEFAULT_HOST_YEARS = 2_000_000


class _RunByDefault(TyperGroup):
    """``memfail fleet [FILE] ...`` means ``memfail fleet run [FILE] ...``."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("--help", "-h")):
            args = ["run", *args]
        return super().parse_args(ctx, args)


fleet_app = typer.Typer(
    cls=_RunByDefault,
    help="What each memory-failure policy costs a fleet, from field DRAM data "
         "(rates per million VM-hours with 95 % intervals).",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
    epilog="Example: memfail fleet --host-years 200000 (the same as memfail fleet run ...).",
)


def _fail(msg: str) -> typer.Exit:
    print(f"memfail: error: {msg}", file=sys.stderr)
    return typer.Exit(2)


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except FleetError as e:
        raise _fail(str(e)) from None


def _oracle(table: Path | None, fleet: LoadedFleet, cache_dir: Path | None = None
            ) -> OutcomeOracle:
    if table is not None:
        return TableOracle.from_yaml(table)
    problem = model_profile_problem(fleet)
    if problem is not None:
        raise FleetInputError(problem)
    from memfail.fleet import cache

    where = cache.cache_dir(cache_dir)
    if cache_dir is not None and where is not None:
        # a directory asked for by name must take the cache (the default one is skipped
        # silently when it cannot: it only costs time)
        try:
            where.mkdir(parents=True, exist_ok=True)
            ok = os.access(where, os.W_OK | os.X_OK)
        except OSError:
            ok = False
        if not ok:
            raise FleetInputError(f"--cache-dir: cannot write {where}; give a writable "
                                  "directory, or off for no cache")
    return ModelOracle(fleet.params.kernel_profile, cache_dir=where)


def _save(orc: OutcomeOracle) -> None:
    save = getattr(orc, "save", None)
    if callable(save):
        save()


def _policies(fleet: LoadedFleet, chosen: list[str] | None) -> list[str]:
    """The policies of the run, each as ``policy_text`` names it (an inline policy by its
    preset and the knobs it changes), so that one policy written two ways is one column."""
    from memfail.model.policy.registry import policy_text

    out: list[str] = []
    for pol in chosen or fleet.params.policies:
        name = policy_text(pol)
        if name not in out:
            out.append(name)
    return out


def _check_policies(chosen: list[str] | None) -> None:
    """Each --policy is a preset or knobs on one (``minimum{unmap_stage2=folio}``,
    ``{base: minimum, unmap_stage2: folio}``: docs/policies.md), as everywhere a policy is
    taken; the model oracle runs it like a preset."""
    if not chosen:
        return
    from memfail.model.policy.registry import policy_names, policy_text

    known = policy_names()
    for pol in chosen:
        try:
            policy_text(pol)
        except (ValueError, TypeError) as e:
            hint = did_you_mean(pol, known)
            raise FleetInputError(f"--policy: {e}{hint}" if hint else f"--policy: {e}") \
                from None


def _workers(n: int | None) -> int:
    if n is not None and n < 1:
        raise FleetInputError(f"--workers: must be at least 1, got {n}")
    return n if n is not None else max(1, os.cpu_count() or 1)


def _writable_dir(path: Path | None, option: str) -> None:
    if path is None:
        return
    try:
        is_file = path.exists() and not path.is_dir()
    except OSError as e:
        raise FleetInputError(f"{option}: {path}: {e.strerror or e}") from None
    if is_file:
        raise FleetInputError(f"{option}: {path} is a file; give a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FleetInputError(f"{option}: cannot create {path}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise FleetInputError(f"{option}: {path} is not writable")


def _up_front(seed: int, host_years: int, workers: int | None, policy: list[str] | None,
              plot: Path | None, oracle: Path | None, scheduler: str | None, unit: str) -> str:
    """Every option checked before any work; returns the table unit."""
    if seed < 0:
        raise FleetInputError(f"--seed: must be 0 or more, got {seed}")
    if host_years < engine.BATCHES_MIN:
        raise FleetInputError(f"--host-years: must be at least {engine.BATCHES_MIN} (one "
                              f"host-year in each of the estimate's {engine.BATCHES_MIN} "
                              f"batches), got {host_years}")
    u = _unit(unit)
    _workers(workers)
    _check_policies(policy)
    _writable_dir(plot, "--plot")
    if oracle is not None:
        try:
            problem = None if oracle.is_file() else \
                "is a directory" if oracle.is_dir() else "no such file"
        except OSError as e:
            problem = str(e.strerror or e)
        if problem:
            raise FleetInputError(f"--oracle: {oracle}: {problem}; give an outcome table "
                                  "(YAML, docs/fleet.md)")
    if scheduler:
        from memfail.check.backends import WorkerError, probe_scheduler

        try:
            probe_scheduler(scheduler)
        except WorkerError as e:
            raise FleetInputError(f"--scheduler: {e}") from None
    return u


def _vm_unit_possible(fleet: LoadedFleet, unit: str) -> None:
    if unit == UNITS["vm"] and fleet.params.vms_per_host <= 0:
        raise FleetInputError("--unit vm: the fleet has no guest memory (composition.shares "
                              "gmem_private + gmem_shared is 0), so no VM-hours to count "
                              "rates per; use --unit host or --unit fleet")


@contextmanager
def _progress(enabled: bool, total: int, what: str) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr when it is a terminal; a no-op otherwise."""
    if not enabled or not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/"
                  "{task.total} shards"), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


def _show_defaults(as_json: bool) -> None:
    if as_json:
        rows = [{"path": p, "value": v, "citation": c}
                for p, v, c in defaults_table(plain_values=True)]
        print(json.dumps({"schema": "memfail.fleet-defaults/1", "parameters": rows}, indent=2))
        return
    t = Table(title="memfail fleet: default parameters and their sources", title_justify="left")
    t.add_column("parameter", style="bold", no_wrap=True)
    t.add_column("value")
    t.add_column("citation")
    for p, v, c in defaults_table():
        t.add_row(p, v, c)
    Console().print(t)


FileArg = Annotated[Path | None, typer.Argument(
    help="Fleet file (YAML); omitted: the cited defaults.", show_default=False)]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of every random stream.")]
WorkersOpt = Annotated[int | None, typer.Option(
    "--workers", help="Local worker processes (default: one per CPU).", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the memfail.fleet/1 document.")]
PolicyOpt = Annotated[list[str] | None, typer.Option(
    "--policy", help="Policy to report (repeatable; default: the fleet's list).",
    show_default=False)]
HostYearsOpt = Annotated[int, typer.Option(
    "--host-years", help="Host-years to sample (each conditioned on >= 1 fault), at least "
    "64: split into 64 or more equal batches, so rounded up to a whole number per batch "
    "(2000 runs 2,048).")]
PlotOpt = Annotated[Path | None, typer.Option(
    "--plot", help="Write PNG and SVG plots to this directory.", show_default=False)]
OracleOpt = Annotated[Path | None, typer.Option(
    "--oracle", help="Outcome table (memfail.fleet-oracle/1) instead of the model.",
    show_default=False)]
SchedulerOpt = Annotated[str | None, typer.Option(
    "--scheduler", help="Dask scheduler address (tcp://HOST:PORT) to run shards on.",
    show_default=False)]
CacheOpt = Annotated[Path | None, typer.Option(
    "--cache-dir", help="Where model runs are cached (default: $MEMFAIL_CACHE_DIR, else "
                        "$XDG_CACHE_HOME/memfail, else ~/.cache/memfail; 'off': no cache).",
    show_default=False)]
UnitOpt = Annotated[str, typer.Option(
    "--unit", help="Table unit: vm (per million VM-hours), host (per host-year), "
                   "fleet (per fleet-year).")]


def _unit(u: str) -> str:
    if u not in UNITS:
        raise FleetInputError(f"--unit: {u!r} is not a unit; valid units: {', '.join(UNITS)}")
    return UNITS[u]


EXIT_EPILOG = ("Exit status: 0 ok, 2 bad input or usage (one `memfail: error:` line, before "
               "any work), 3 internal error.")


@fleet_app.command("run", epilog="Example: memfail fleet run --host-years 200000 --policy "
                   "minimum --policy unmap. " + EXIT_EPILOG)
def run_cmd(
    file: FileArg = None,
    seed: SeedOpt = 0,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
    show_defaults: Annotated[bool, typer.Option(
        "--show-defaults", help="Print every default with its citation and exit.")] = False,
    policy: PolicyOpt = None,
    host_years: HostYearsOpt = DEFAULT_HOST_YEARS,
    plot: PlotOpt = None,
    oracle: OracleOpt = None,
    scheduler: SchedulerOpt = None,
    unit: UnitOpt = "vm",
    cache_dir: CacheOpt = None,
) -> None:
    """Estimate policy x outcome rates for a fleet (the default command)."""
    if show_defaults:
        _show_defaults(as_json)
        return
    with _errors():
        u = _up_front(seed, host_years, workers, policy, plot, oracle, scheduler, unit)
        fleet = load_fleet(file)
        _vm_unit_possible(fleet, u)
        orc = _oracle(oracle, fleet, cache_dir)
        n = _workers(workers)
        shards = len(engine.Plan.for_host_years(host_years).shards())
        try:
            with _progress(not as_json, shards, "sampling") as tick:
                res = engine.run(fleet, orc, host_years, seed, n, scheduler,
                                 _policies(fleet, policy), tick)
        finally:
            _save(orc)
        if as_json:
            print(json.dumps(output.run_document(res), indent=2))
        else:
            output.print_result(res, wide_console(), u)
        if plot is not None:
            paths = output.plot_policies(res, plot, u)
            if not as_json:
                Console().print("plots: " + ", ".join(str(p) for p in paths), highlight=False)


@fleet_app.command("sweep", epilog="Example: memfail fleet sweep --grid "
                   "'scrub.period_hours=[12, 24, 48]' --outcome vm_killed. " + EXIT_EPILOG)
def sweep_cmd(
    file: FileArg = None,
    grid: Annotated[list[str] | None, typer.Option(
        "--grid", help="Axis PATH=[V1, V2, ...] (repeatable), e.g. scrub.period_hours=[12,24,48].",
        show_default=False)] = None,
    seed: SeedOpt = 0,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
    policy: PolicyOpt = None,
    host_years: HostYearsOpt = DEFAULT_HOST_YEARS // 4,
    plot: PlotOpt = None,
    oracle: OracleOpt = None,
    scheduler: SchedulerOpt = None,
    outcome: Annotated[list[str] | None, typer.Option(
        "--outcome", help="Outcome to tabulate and plot (repeatable; default: all).",
        show_default=False)] = None,
    unit: UnitOpt = "vm",
    cache_dir: CacheOpt = None,
) -> None:
    """Run the fleet over a grid of parameter values (same seed at every point)."""
    with _errors():
        if not grid:
            raise FleetInputError("--grid: sweep needs at least one --grid PATH=[V1, V2, ...]")
        u = _up_front(seed, host_years, workers, policy, plot, oracle, scheduler, unit)
        outs = list(outcome or OUTCOME_NAMES)
        bad = [o for o in outs if o not in OUTCOME_NAMES]
        if bad:
            raise FleetInputError(f"--outcome: {bad[0]!r} is not an outcome"
                                  f"{did_you_mean(bad[0], OUTCOME_NAMES)}; valid outcomes: "
                                  f"{', '.join(OUTCOME_NAMES)}")
        axes: dict[str, list[Any]] = {}
        for g in grid:
            path, values = parse_assignment(g)
            if path in axes:  # a second axis for one path would replace the first silently
                raise FleetInputError(f"--grid: {path} is given twice; put all its values in "
                                      f"one --grid {path}=[...]")
            axes[path] = values
        fleet = load_fleet(file)
        _vm_unit_possible(fleet, u)
        for point in engine.grid(axes):  # every grid point is a valid fleet, before any run
            with_assignments(fleet, point)
        orc = _oracle(oracle, fleet, cache_dir)
        n = _workers(workers)
        points = 1
        for v in axes.values():
            points *= len(v)
        shards = points * len(engine.Plan.for_host_years(host_years).shards())
        with _progress(not as_json, shards, "sweeping") as tick:
            try:
                results = engine.sweep(fleet, axes, orc, host_years, seed, n, scheduler,
                                       _policies(fleet, policy), tick)
            finally:
                _save(orc)
        if as_json:
            print(json.dumps(output.sweep_document(results, axes), indent=2))
        else:
            console = wide_console()
            for o in outs:
                output.print_sweep(results, console, o, u)
        if plot is not None:
            paths = []
            for axis in axes:
                for o in outs:
                    paths += output.plot_sweep(results, plot, axis, o, u)
            if not as_json:
                Console().print(f"plots: {len(paths)} files in {plot}", highlight=False)
