"""`memfail check`: explore every policy of a configuration and print a verdict table.

Exit status: 0 when no selected property fails, 1 when one does, 2 on bad input or usage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import Progress as RichProgress
from rich.table import Table

from memfail.check.backends import Backend, make_backend
from memfail.check.config import CheckConfig, ConfigError, load_config, standard_config
from memfail.check.explorer import FAIL, PASS, Bounds, Options, Progress, Result, explore
from memfail.check.properties import PROPERTIES, PROPERTY_NAMES
from memfail.check.system import System
from memfail.report.console import wide_console

JSON_SCHEMA = "memfail.check/1"


def make_system(config: CheckConfig, policy: str, races: bool = False) -> System:
    """The System checked for one policy (tests substitute small systems here)."""
    from memfail.check.model_system import ModelSystem

    return ModelSystem(config, policy, races)


def write_counterexample(out: Path, system: System, verdict: Any) -> Path:
    """Scenario file (and its diff trace) for model systems, with or without ``--races``
    (stages become ``stage`` steps); a label list and diff trace for any other System."""
    from memfail.check.model_system import ModelSystem

    if isinstance(system, ModelSystem):
        from memfail.check.counterexample import write_counterexample as write

        return write(out, system, verdict)
    from memfail.check.counterexample import diff

    out.mkdir(parents=True, exist_ok=True)
    name = str(getattr(system, "name", type(system).__name__))
    path = out / f"{name}--{verdict.prop}.trace.txt"
    render = getattr(system, "render", None)
    s = system.initial()
    lines = [f"{name}--{verdict.prop}: {verdict.message}"]
    for i, label in enumerate(verdict.labels):
        t = system.step(s, label)
        lines.append(f"step {i + 1}: {label}")
        if render is not None:
            lines += [f"    {c}" for c in diff(render(s), render(t))]
        s = t
    path.write_text("\n".join(lines) + "\n")
    return path


def _fail_usage(msg: str) -> typer.Exit:
    typer.echo(f"memfail check: {msg}", err=True)
    return typer.Exit(2)


def check(
    config: Annotated[Path | None, typer.Argument(
        help="Check configuration (YAML); the shipped standard configuration if omitted.")] = None,
    policy: Annotated[list[str] | None, typer.Option(
        "--policy", help="Check only this policy (repeatable).")] = None,
    prop: Annotated[list[str] | None, typer.Option(
        "--property", help="Check only this property (repeatable).")] = None,
    workers: Annotated[int, typer.Option(help="Local worker processes.", min=1)] = 1,
    scheduler: Annotated[str | None, typer.Option(
        help="Dask scheduler address (tcp://HOST:PORT) instead of local processes.")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Write a counterexample scenario per policy and violated property here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the memfail.check/1 JSON.")] = False,
    max_depth: Annotated[int | None, typer.Option(help="Depth bound (default: the config's).", min=0)] = None,
    max_states: Annotated[int | None, typer.Option(help="Stop after this many states.", min=1)] = None,
    max_seconds: Annotated[float | None, typer.Option(help="Stop after this many seconds.", min=0.001)] = None,
    max_memory: Annotated[float | None, typer.Option(help="Stop above this RSS (MiB).", min=1)] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="Checkpoint directory.")] = None,
    checkpoint_every: Annotated[float, typer.Option(help="Seconds between checkpoints.")] = 60.0,
    resume: Annotated[Path | None, typer.Option(
        help="Continue from the checkpoints in this directory.")] = None,
    symmetry: Annotated[bool, typer.Option(help="Symmetry reduction (see docs/check.md).")] = False,
    por: Annotated[bool, typer.Option(help="Partial-order reduction (see docs/check.md).")] = False,
    races: Annotated[bool, typer.Option(
        help="Split memory_failure, conversion, punch hole, release and faults into their "
             "atomic steps between kernel locks and interleave them (see docs/check.md).")
    ] = False,
    engine: Annotated[str, typer.Option(
        help="python (default), spin (SPIN, exhaustive) or spin-bitstate (SPIN, bitstate); "
             "see docs/check.md, The SPIN engine.")] = "python",
) -> None:
    """Explore every interleaving of the configured events under each policy.

    Example: memfail check --policy minimum --property contained --out cex/
    """
    try:
        cfg = load_config(config) if config is not None else standard_config()
    except ConfigError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(2) from None
    props = list(prop) if prop else (cfg.properties or list(PROPERTY_NAMES))
    unknown = [p for p in props if p not in PROPERTY_NAMES]
    if unknown:
        raise _fail_usage(f"unknown property {unknown[0]!r}; choose from "
                          f"{', '.join(PROPERTY_NAMES)}")
    if engine not in ("python", "spin", "spin-bitstate"):
        raise _fail_usage(f"unknown engine {engine!r}; choose from python, spin, spin-bitstate")
    policies = list(policy) if policy else list(cfg.policies)
    b = cfg.bounds
    bounds = Bounds(max_depth if max_depth is not None else b.depth,
                    max_states if max_states is not None else b.states,
                    max_seconds if max_seconds is not None else b.seconds,
                    max_memory if max_memory is not None else b.memory_mb)
    ckpt = resume or checkpoint
    options = Options(tuple(props), symmetry or cfg.symmetry, por, checkpoint_dir=ckpt,
                      checkpoint_every=checkpoint_every, resume=resume is not None)
    err = Console(stderr=True)
    results: list[tuple[str, Result, dict[str, str]]] = []
    try:
        backend: Backend = make_backend(workers, scheduler)
    except (OSError, RuntimeError, ValueError) as e:
        raise _fail_usage(f"cannot start workers: {e}") from None
    with backend:
        for pol in policies:
            try:
                system = make_system(cfg, pol, races=True) if races else make_system(cfg, pol)
            except (KeyError, ValueError, RuntimeError, NotImplementedError) as e:
                raise _fail_usage(f"policy {pol!r}: {e}") from None
            if options.symmetry and getattr(system, "canonical", None) is None:
                raise _fail_usage(
                    "symmetry reduction is not available for the memfail model (it would have "
                    "to rename VMs together with their frames, pids and mappings inside a "
                    "Host); drop --symmetry and `symmetry: true` (docs/check.md, Reductions)")
            try:
                result = _run(system, backend, bounds, options, err, pol, as_json) \
                    if engine == "python" else _spin(system, props, engine, races)
            except (KeyError, ValueError, RuntimeError, NotImplementedError) as e:
                raise _fail_usage(f"policy {pol!r}: {e}") from None
            files: dict[str, str] = {}
            if out is not None:
                for name, v in result.verdicts.items():
                    if v.status == FAIL:
                        files[name] = str(write_counterexample(out, system, v))
            results.append((pol, result, files))
    if as_json:
        typer.echo(json.dumps(to_json(cfg, config, results, workers, scheduler, races), indent=2))
    else:
        _print_table(wide_console(), results, props)
    if any(r.failed() for _, r, _ in results):
        raise typer.Exit(1)


def _spin(system: System, props: list[str], engine: str, races: bool) -> Result:
    """One policy by the SPIN engine (memfail.check.spin)."""
    from memfail.check.spin.engine import spin_result

    if races:
        raise ValueError("--races is not modelled by the SPIN engine; use --engine python")
    return spin_result(system, props, bitstate=engine == "spin-bitstate")


def _run(system: System, backend: Backend, bounds: Bounds, options: Options, err: Console,
         label: str, quiet: bool) -> Result:
    if not err.is_terminal or quiet:
        return explore(system, backend, bounds, options)
    with RichProgress(console=err, transient=True) as bar:
        task = bar.add_task(f"{label}: depth 0", total=None)

        def show(p: Progress) -> None:
            rate = p.states / p.elapsed if p.elapsed else 0.0
            bar.update(task, description=f"{label}: depth {p.depth}, {p.states} states, "
                       f"frontier {p.frontier}, {rate:,.0f} states/s")

        return explore(system, backend, bounds, options, show)


def _print_table(console: Console, results: list[tuple[str, Result, dict[str, str]]],
                 props: list[str]) -> None:
    table = Table(title="memfail check: policy x property")
    table.add_column("policy")
    for p in props:
        table.add_column(p)
    table.add_column("states")
    for pol, r, _ in results:
        cells = []
        for p in props:
            v = r.verdicts[p]
            colour = "green" if v.status == PASS else "red" if v.status == FAIL else "yellow"
            cells.append(f"[{colour}]{v.short()}[/{colour}]")
        table.add_row(pol, *cells, f"{r.states:,}")
    console.print(table)
    for pol, r, files in results:
        never = ", ".join(r.coverage.kinds_never) or "none"
        console.print(f"{pol}: {r.states:,} states, {r.transitions:,} transitions, depth "
                      f"{r.depth}, {r.states_per_second:,.0f} states/s, "
                      f"{'complete' if r.complete else 'stopped: ' + str(r.stop_reason)}; "
                      f"fingerprint collision probability <= {r.collision_probability:.1e}; "
                      f"events never fired: {never}")
        if r.coverage.hooks_never:
            console.print(f"  policy hooks never fired: {', '.join(r.coverage.hooks_never)}")
        for name, v in r.verdicts.items():
            if v.status == FAIL:
                where = f" -> {files[name]}" if name in files else ""
                console.print(f"  {name}: FAIL at depth {v.depth}: {v.message}{where}")


def to_json(cfg: CheckConfig, file: Path | None, results: list[tuple[str, Result, dict[str, str]]],
            workers: int, scheduler: str | None, races: bool = False) -> dict[str, Any]:
    """The ``memfail.check/1`` document (docs/check.md)."""
    docs = {p.name: p for p in PROPERTIES}
    return {
        "schema": JSON_SCHEMA,
        "config": cfg.name,
        "file": str(file) if file is not None else None,
        "workers": workers,
        "scheduler": scheduler,
        "races": races,
        "failed": any(r.failed() for _, r, _ in results),
        "results": [{
            "policy": pol,
            "complete": r.complete,
            "stop_reason": r.stop_reason,
            "states": r.states,
            "transitions": r.transitions,
            "depth": r.depth,
            "elapsed_s": round(r.elapsed, 3),
            "states_per_s": round(r.states_per_second, 1),
            "collision_probability": r.collision_probability,
            "reductions": {"symmetry": r.symmetry, "por": r.por},
            "coverage": {"events_fired": r.coverage.kinds_fired,
                         "events_never": r.coverage.kinds_never,
                         "hooks_fired": r.coverage.hooks_fired,
                         "hooks_never": r.coverage.hooks_never},
            "verdicts": {name: {
                "status": v.status,
                "depth": v.depth,
                "reason": v.reason,
                "message": v.message,
                "concern": docs[name].concern if name in docs else None,
                "counterexample": [str(x) for x in v.labels],
                "file": files.get(name),
            } for name, v in r.verdicts.items()},
        } for pol, r, files in results],
    }


check_app = typer.Typer(add_completion=False, help=__doc__)
check_app.command("check")(check)


def main() -> None:  # pragma: no cover - `python -m memfail.check.cli`
    typer.run(check)


if __name__ == "__main__":  # pragma: no cover
    main()
