"""`memfail check`: explore every policy of a configuration and print a verdict table.

Exit status: 0 when no selected property fails, 1 when one does, 2 on bad input or usage,
3 internal error.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress as RichProgress
from rich.table import Table

from memfail.check.backends import Backend, WorkerError, make_backend
from memfail.check.config import STANDARD, CheckConfig, load_config, standard_config
from memfail.check.explorer import FAIL, PASS, Bounds, Options, Progress, Result, explore
from memfail.check.properties import PROPERTIES, PROPERTY_NAMES
from memfail.check.spin import EngineDisagreement
from memfail.check.system import System
from memfail.inputs import InputError, did_you_mean, fmt_loc
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


def hooks_absent(policy: Any) -> dict[str, str]:
    """The policy hooks (model_system.POLICY_HOOKS) a policy cannot fire, whatever the
    configuration, each with why, from its knobs (src/memfail/model/kvm/gmem.py: which
    paths emit a ``PolicyEvent`` under which hook). Coverage lists them apart from the hooks
    it has that never fired."""
    from memfail.model.policy.registry import make_policy

    pol = make_policy(policy)
    if pol.backing == "hugetlbfs":
        why = ("no guest_memfd: guest memory is a hugetlbfs memfd (backing: hugetlbfs), "
               "handled by the kernel's HugeTLB path")
        return dict.fromkeys(("memory_failure", "error_folio", "split", "merge", "punch",
                              "release"), why)
    out: dict[str, str] = {}
    if pol.handles == "none":
        out["memory_failure"] = ("handles: none: memory_failure() runs the kernel's own path "
                                 "(kvm_gmem_error_folio, or the HugeTLB path for a HugeTLB "
                                 "folio), never the policy's")
    if pol.vm_on_error != "unusable":
        out["error_folio"] = (f"vm_on_error: {pol.vm_on_error}: kvm_gmem_error_folio makes "
                              "the guest_memfd unusable only with vm_on_error: unusable "
                              "(consumed/unconsumed: unusable report under memory_failure)")
    table_only = pol.handles != "none" and pol.record == "table"
    if table_only:
        why = ("record: table: a failure is kept in the table, never as PG_hwpoison on a "
               "HugeTLB folio or its raw pages while the folio lives, so a conversion never "
               "{} a folio holding one")
        out["split"] = why.format("splits")
        out["merge"] = why.format("merges")
    kills = pol.vm_on_error == "kill" or (pol.consumed == "kill-vm" and
                                          pol.unconsumed == "kill-vm")
    if table_only and not pol.mark_on_truncate:
        out["punch"] = ("mark_on_truncate: false with record: table: punch hole frees "
                        "failed pages without PG_hwpoison (C4: HWpoison only at inode "
                        "release)")
    elif kills and pol.handles == "all":
        out["punch"] = ("every failure it is told of kills the VM, and the VMM's exit "
                        "releases the guest_memfd: no punch hole follows a recorded failure "
                        "(release marks it)")
    if table_only and not (pol.mark_on_truncate or pol.mark_on_release):
        out["release"] = ("mark_on_release and mark_on_truncate: false with record: table: "
                          "inode release frees failed pages without PG_hwpoison")
    return out


class OptionError(InputError):
    """A command-line option of ``memfail check`` that cannot work: ``--OPTION: message``."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(option, None, None, message)


def _writable_dir(path: Path, option: str) -> None:
    """``path`` is (or can be made) a writable directory; checked before any work."""
    try:
        is_file = path.exists() and not path.is_dir()
    except OSError as e:
        raise OptionError(option, f"{path}: {e.strerror or e}") from None
    if is_file:
        raise OptionError(option, f"{path} is a file; give a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OptionError(option, f"cannot create {path}: {e.strerror or e}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OptionError(option, f"{path} is not writable")


OPTIONS_FILE = "options.json"
"""In a checkpoint directory: the options of the check, so ``--resume DIR`` continues it."""
IDENTITY_OPTIONS = ("config", "config_sha256", "policy", "property", "symmetry", "por", "races")


def _config_digest(config: Path | None) -> str:
    try:
        data = config.read_bytes() if config is not None else STANDARD.read_bytes()
    except OSError:
        return ""
    return hashlib.sha256(data).hexdigest()


def _options_record(config: Path | None, policies: list[str], props: list[str],
                    symmetry: bool, por: bool, races: bool, bounds: Bounds) -> dict[str, Any]:
    # the absolute path: --resume may be given from another directory
    return {"config": str(config.resolve()) if config is not None else None,
            "config_sha256": _config_digest(config),
            "policy": policies, "property": props, "symmetry": symmetry, "por": por,
            "races": races, "max_depth": bounds.max_depth, "max_states": bounds.max_states,
            "max_seconds": bounds.max_seconds, "max_memory": bounds.max_memory_mb}


def _stored_options(resume: Path) -> dict[str, Any]:
    try:
        exists, is_dir = resume.exists(), resume.is_dir()
    except OSError as e:
        raise OptionError("--resume", f"{resume}: {e.strerror or e}") from None
    if not exists:
        raise OptionError("--resume", f"{resume}: no such directory; give the --checkpoint "
                          "directory of an earlier check")
    if not is_dir:
        raise OptionError("--resume", f"{resume} is a file; give the --checkpoint directory "
                          "of an earlier check")
    path = resume / OPTIONS_FILE
    try:
        stored = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise OptionError("--resume", f"{resume}: no {OPTIONS_FILE} here, so not the "
                          "--checkpoint directory of a memfail check") from None
    except (OSError, ValueError) as e:
        raise OptionError("--resume", f"{path}: unreadable ({e}); delete the directory to "
                          "start afresh") from None
    if not isinstance(stored, dict) or not set(IDENTITY_OPTIONS) <= set(stored):
        raise OptionError("--resume", f"{path}: not written by this memfail check")
    return stored


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-") if name != "config" else "CONFIG"


def check(
    config: Annotated[Path | None, typer.Argument(
        help="Check configuration (YAML); the shipped standard configuration if omitted.")] = None,
    policy: Annotated[list[str] | None, typer.Option(
        "--policy", help="Check this policy instead of the configuration's (repeatable): a "
        "preset, or knobs on one: '{base: minimum, unmap_stage2: folio}' or "
        "'minimum{unmap_stage2=folio}' (docs/policies.md). It need not be one of the "
        "configuration's.")] = None,
    prop: Annotated[list[str] | None, typer.Option(
        "--property", help="Check only this property (repeatable).")] = None,
    workers: Annotated[int, typer.Option(
        help="Local worker processes; with --engine spin, the number of policies checked at "
             "once (one pan each).", min=1)] = 1,
    scheduler: Annotated[str | None, typer.Option(
        help="Dask scheduler address (tcp://HOST:PORT) instead of local processes.")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Write a counterexample scenario per policy and violated property here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the memfail.check/1 JSON.")] = False,
    max_depth: Annotated[int | None, typer.Option(
        help="Depth bound (default: the config's; the Python engine's only: SPIN explores "
             "every state).", min=0)] = None,
    max_states: Annotated[int | None, typer.Option(
        help="Stop after this many states (the Python engine only).", min=1)] = None,
    max_seconds: Annotated[float | None, typer.Option(
        help="Stop after this many seconds (per policy; with SPIN, its searches after the "
             "compile).", min=0.001)] = None,
    max_memory: Annotated[float | None, typer.Option(
        help="Stop above this RSS (MiB; with SPIN, each pan's address space).", min=1)] = None,
    checkpoint: Annotated[Path | None, typer.Option(
        help="Checkpoint directory: the check's options and, every --checkpoint-every "
             "seconds (also inside a search level), its progress.")] = None,
    checkpoint_every: Annotated[float | None, typer.Option(
        help="Seconds between checkpoints (default 60; with --checkpoint or --resume); a kill "
             "loses at most this much work.", min=0, show_default=False)] = None,
    resume: Annotated[Path | None, typer.Option(
        help="Continue the check whose --checkpoint directory this is, with the options "
             "stored there (an option given that differs is refused).")] = None,
    symmetry: Annotated[bool | None, typer.Option(
        help="Symmetry reduction (see docs/check.md).", show_default=False)] = None,
    por: Annotated[bool | None, typer.Option(
        help="Partial-order reduction (see docs/check.md).", show_default=False)] = None,
    races: Annotated[bool | None, typer.Option(
        help="Split memory_failure, conversion, punch hole, release and faults into their "
             "atomic steps between kernel locks and interleave them (see docs/check.md). "
             "Off unless given.", show_default=False)] = None,
    engine: Annotated[str, typer.Option(
        help="python (default), spin (SPIN, exhaustive) or spin-bitstate (SPIN, bitstate); "
             "pan is compiled -O2, or as $MEMFAIL_SPIN_OPT says (-O0 compiles a small "
             "configuration's pan in a third of the time); see docs/check.md, The SPIN "
             "engine.")] = "python",
    swarm: Annotated[int | None, typer.Option(
        "--swarm", metavar="N", min=1,
        help="Swarm search instead of exhaustive exploration: N seeded random walks per "
             "policy, up to --walk-depth steps, each violation shrunk to a short scenario "
             "(see docs/check.md, Swarm).")] = None,
    walk_depth: Annotated[int | None, typer.Option(
        help="With --swarm: steps per walk (default 40).", min=1)] = None,
    seed: Annotated[int | None, typer.Option(
        help="With --swarm: the seed of the walks (default 0); the same seed gives the same "
             "walks and report whatever --workers.", min=0)] = None,
) -> None:
    """Explore every interleaving of the configured events under each policy.

    Example: memfail check --policy minimum --property contained --out cex/

    Swarm: memfail check --swarm 200 --walk-depth 40 --seed 1 --workers 2 --out cex/

    SPIN, every state, lock-granular, two policies at a time:
    memfail check --engine spin --races --workers 2 --out cex/

    Exit status: 0 no selected property fails, 1 one does, 2 bad input or usage (one
    `memfail: error:` line, before any work), 3 internal error.
    """
    try:
        _check(config, policy, prop, workers, scheduler, out, as_json, max_depth, max_states,
               max_seconds, max_memory, checkpoint, checkpoint_every, resume, symmetry, por,
               races, engine, swarm, walk_depth, seed)
    except InputError as e:
        typer.echo(f"memfail: error: {e}", err=True)
        raise typer.Exit(2) from None


_NO_CHECKPOINT = ("keeps no checkpoint (pan searches to its end in one run); drop it, or use "
                  "--engine python")
_NO_BOUND = ("explores every reachable state, with no depth or state bound (docs/check.md, "
             "The SPIN engine); drop it, or use --engine python (SPIN takes --max-seconds "
             "and --max-memory)")


def _check(config: Path | None, policy: list[str] | None, prop: list[str] | None,
           workers: int, scheduler: str | None, out: Path | None, as_json: bool,
           max_depth: int | None, max_states: int | None, max_seconds: float | None,
           max_memory: float | None, checkpoint: Path | None, checkpoint_every: float | None,
           resume: Path | None, symmetry: bool | None, por: bool | None, races: bool | None,
           engine: str = "python", swarm: int | None = None, walk_depth: int | None = None,
           seed: int | None = None) -> None:
    """``symmetry``, ``por`` and ``races``: None when not given (--resume then takes the
    checkpoint's; a --no-races given against a --races checkpoint is refused)."""
    stored: dict[str, Any] | None = None
    if engine != "python":  # what the SPIN engine does not take
        not_spin: dict[str, tuple[object, str]] = {
            "--checkpoint": (checkpoint, _NO_CHECKPOINT), "--resume": (resume, _NO_CHECKPOINT),
            "--checkpoint-every": (checkpoint_every, _NO_CHECKPOINT),
            "--max-depth": (max_depth, _NO_BOUND), "--max-states": (max_states, _NO_BOUND),
            "--scheduler": (scheduler, "runs its pans on this machine (one per policy, "
                            "--workers at once); drop it, or use --engine python"),
            "--por": (por or None, "has no partial-order reduction to ask for (pan searches "
                      "one process: docs/check.md, Speed of the two engines); drop it")}
        for flag, (used, why) in not_spin.items():
            if used is not None:
                raise OptionError(flag, f"the SPIN engine {why}")
    if swarm is None:
        for swarm_only, flag, why in (
                (walk_depth, "--walk-depth", "the exhaustive check's depth is --max-depth"),
                (seed, "--seed", "the exhaustive check takes every path, with no seed")):
            if swarm_only is not None:
                raise OptionError(flag, f"only with --swarm N (a swarm search); {why}")
    else:
        not_with: dict[str, object] = {
            "--checkpoint": checkpoint, "--resume": resume, "--max-depth": max_depth,
            "--max-states": max_states, "--max-seconds": max_seconds,
            "--max-memory": max_memory, "--symmetry": symmetry or None, "--por": por or None,
            "--checkpoint-every": checkpoint_every,
            "--engine": None if engine == "python" else engine}
        for flag, used in not_with.items():
            if used is not None:
                raise OptionError(flag, "not with --swarm (walks are bounded by --walk-depth "
                                  "and --swarm N; the Python engine runs them)")
    if checkpoint_every is not None and checkpoint is None and resume is None:
        raise OptionError("--checkpoint-every", "only with --checkpoint DIR or --resume DIR "
                          "(it says how often the check's progress is written there)")
    if checkpoint is not None and resume is not None:
        raise OptionError("--checkpoint", "give either --checkpoint DIR (a new check) or "
                          "--resume DIR (continue one), not both")
    if resume is not None:
        stored = _stored_options(resume)
        if stored["config"] is not None:  # a checkpoint of an older memfail: a relative path
            stored["config"] = str(Path(stored["config"]).resolve())
        given = {"config": str(config.resolve()) if config is not None else None,
                 "policy": policy,
                 "property": prop, "symmetry": symmetry, "por": por, "races": races}
        for name, value in given.items():
            if value is not None and value != stored[name]:
                raise OptionError("--resume", f"{_flag(name)} is {value!r} here but "
                                  f"{stored[name]!r} in the checkpoint in {resume}; drop "
                                  f"{_flag(name)} to continue that check, or use another "
                                  "--checkpoint directory for a new one")
        config = Path(stored["config"]) if stored["config"] is not None else None
        policy, prop = list(stored["policy"]), list(stored["property"])
        symmetry, por = bool(stored["symmetry"]), bool(stored["por"])
        races = bool(stored["races"])
        # Bounds (--max-*) are budgets of this run, not of the check: give them again.
    symmetry, por, races = bool(symmetry), bool(por), bool(races)
    cfg = load_config(config) if config is not None else standard_config()
    if stored is not None and _config_digest(config) != stored["config_sha256"]:
        raise OptionError("--resume", f"the configuration {config or 'standard'} changed "
                          f"since the checkpoint in {resume} was written; restore it, or "
                          "use another --checkpoint directory")
    props = list(dict.fromkeys(prop)) if prop else (cfg.properties or list(PROPERTY_NAMES))
    unknown = [p for p in props if p not in PROPERTY_NAMES]
    if unknown:
        raise OptionError("--property", f"unknown property {unknown[0]!r}"
                          f"{did_you_mean(unknown[0], PROPERTY_NAMES)}; choose from "
                          f"{', '.join(PROPERTY_NAMES)}")
    outside = [p for p in props if cfg.properties is not None and p not in cfg.properties]
    if outside:
        raise OptionError("--property", f"{outside[0]!r} is not one of the configuration's "
                          f"properties ({', '.join(cfg.properties or [])}); add it to "
                          "`properties:` or drop --property")
    if engine not in ("python", "spin", "spin-bitstate"):
        raise OptionError("--engine", f"unknown engine {engine!r}; choose from python, spin, "
                          "spin-bitstate")
    if engine != "python":
        from memfail.check.spin.runner import default_opt

        default_opt()  # a $MEMFAIL_SPIN_OPT the compiler would not take: refused now
    policies = list(policy) if policy else list(cfg.policies)
    skipped: dict[str, str] = {}  # the file's policies the SPIN engine does not render
    if not policy and engine != "python":
        policies, skipped = _spin_policies(policies, races)
    if policy:
        from memfail.model.policy.registry import policy_names, policy_text

        named: list[str] = []
        for pol in policies:
            try:
                text = policy_text(pol)
            except (ValueError, TypeError) as e:
                hint = "" if "{" in pol else did_you_mean(pol, policy_names())
                raise OptionError("--policy", f"{e}{hint}") from None
            if text in named:  # as a configuration's policies: each once
                raise OptionError("--policy", f"{text} is given twice "
                                  f"({policies[named.index(text)]!r} and {pol!r}); give each "
                                  "policy once")
            named.append(text)
        policies = named
    for path, option in ((out, "--out"), (checkpoint, "--checkpoint")):
        if path is not None:
            _writable_dir(path, option)
    b = cfg.bounds
    bounds = Bounds(max_depth if max_depth is not None else b.depth,
                    max_states if max_states is not None else b.states,
                    max_seconds if max_seconds is not None else b.seconds,
                    max_memory if max_memory is not None else b.memory_mb)
    ckpt = resume or checkpoint
    if checkpoint is not None:
        record = _options_record(config, policies, props, symmetry, por, races, bounds)
        (checkpoint / OPTIONS_FILE).write_text(json.dumps(record, indent=2) + "\n")
    options = Options(tuple(props), symmetry or cfg.symmetry, por, checkpoint_dir=ckpt,
                      checkpoint_every=60.0 if checkpoint_every is None else checkpoint_every,
                      resume=resume is not None)
    err = Console(stderr=True)
    if swarm is not None:
        from memfail.check.swarm import SwarmOptions

        sopt = SwarmOptions(swarm, walk_depth or 40, seed or 0, tuple(props))
        _swarm(cfg, config, policies, sopt, workers, scheduler, out, as_json, races, err)
        return
    results: list[tuple[str, Result, dict[str, str]]] = []
    absent: dict[str, dict[str, str]] = {}
    where = str(config) if config is not None else "standard configuration"
    # the SPIN engine: pan is one process per policy, so --workers N runs N policies at once
    backend = _backend(workers, scheduler) if engine == "python" else Backend()
    pool = ThreadPoolExecutor(max_workers=workers) \
        if engine != "python" and workers > 1 and len(policies) > 1 else None
    pending: dict[str, Future[Result]] = {}
    with backend:
        systems: dict[str, System] = {}
        refusals: dict[str, InputError] = {}
        for pol in policies:
            system = _system_for(cfg, pol, races, where)
            if options.symmetry and getattr(system, "canonical", None) is None:
                why = ("symmetry reduction is not available for the memfail model (it would "
                       "have to rename VMs together with their frames, pids and mappings "
                       "inside a Host); drop --symmetry and `symmetry: true` (docs/check.md, "
                       "Reductions)")
                if not symmetry and config is not None:  # the file's `symmetry: true`
                    file, line = cfg.where(("symmetry",))
                    raise InputError(file or str(config), line, "symmetry", why)
                raise OptionError("--symmetry", why)
            if engine != "python":
                refused = _spin_refusal(cfg, pol, system, where)
                if refused is not None:
                    if policy:  # asked for by name: a usage error
                        raise refused
                    refusals[pol] = refused
                    continue
            systems[pol] = system
        if refusals:  # the file's policies the Promela model does not carry out here
            if not systems:
                raise next(iter(refusals.values()))
            for pol, refused in refusals.items():
                skipped[pol] = str(refused)
                _not_checking(str(refused))
            policies = [pol for pol in policies if pol in systems]
        if pool is not None:  # every policy renders: only now start the searches
            share = min(workers, len(policies))  # pans at once (runner.check_policy)
            pending = {pol: pool.submit(_spin, systems[pol], props, engine, races, bounds,
                                        share)
                       for pol in policies}
        try:
            for pol in policies:
                system = systems[pol]
                try:
                    if pol in pending:
                        result = pending[pol].result()
                    else:
                        result = _run(system, backend, bounds, options, err, pol, as_json) \
                            if engine == "python" else _spin(system, props, engine, races,
                                                             bounds)
                except InputError:
                    raise
                except (KeyError, ValueError, NotImplementedError) as e:
                    raise OptionError(where, _about(pol, e)) from None
                except WorkerError as e:
                    raise OptionError("--scheduler" if scheduler else "--workers", str(e)) from None
                except EngineDisagreement:
                    raise   # a bug in memfail (exit 3), with the trail
                except RuntimeError as e:  # the SPIN engine: no spin or gcc
                    raise OptionError("--engine", _about(pol, e)) from None
                files: dict[str, str] = {}
                if _is_model(system) and engine == "python":  # SPIN reports no hooks
                    absent[pol] = hooks_absent(pol)
                if out is not None:
                    for name, v in result.verdicts.items():
                        if v.status == FAIL:
                            files[name] = str(write_counterexample(out, system, v))
                results.append((pol, result, files))
        finally:  # an error stops the searches not started yet
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
    if as_json:
        typer.echo(json.dumps(to_json(cfg, config, results, workers, scheduler, races, absent,
                                      skipped),
                              indent=2))
    else:
        _print_table(wide_console(), results, props, absent)
    if any(r.failed() for _, r, _ in results):
        raise typer.Exit(1)


def _backend(workers: int, scheduler: str | None) -> Backend:
    """Local worker processes or the Dask scheduler; one that cannot start is a usage error."""
    try:
        return make_backend(workers, scheduler)
    except (OSError, RuntimeError, ValueError) as e:
        raise OptionError("--scheduler" if scheduler else "--workers",
                          f"cannot start workers: {e}") from None


def _about(pol: str, e: BaseException) -> str:
    """An error about policy ``pol``, named once."""
    msg = str(e)
    return msg if msg.startswith(f"policy {pol!r}") else f"policy {pol!r}: {msg}"


def _system_for(cfg: CheckConfig, pol: str, races: bool, where: str) -> System:
    """The checked system of policy ``pol`` (lock-granular with ``races``); a policy the
    configuration cannot build is a usage error naming ``where``."""
    from memfail.model.errors import ProfileMissing

    try:
        system = make_system(cfg, pol, races=True) if races else make_system(cfg, pol)
        initial = getattr(system, "initial", None)
        if initial is not None:  # the set-up, before any search: its errors are input errors
            initial()
        return system
    except ProfileMissing as e:  # the configuration's kernel profile lacks what it uses
        file, line = cfg.where(("profile",))
        if file is None:
            raise OptionError(where, _about(pol, e)) from None
        raise InputError(file, line, "profile", _about(pol, e)) from None
    except (KeyError, ValueError, RuntimeError, NotImplementedError) as e:
        raise OptionError(where, _about(pol, e)) from None


def _swarm(cfg: CheckConfig, config: Path | None, policies: list[str], opt: Any, workers: int,
           scheduler: str | None, out: Path | None, as_json: bool, races: bool,
           err: Console) -> None:
    """``--swarm N``: seeded random walks per policy (memfail.check.swarm), their violations
    shrunk and written with ``--out``; the ``memfail.swarm/1`` JSON or a table."""
    from memfail.check.swarm import SwarmProgress, SwarmResult, swarm, swarm_json

    where = str(config) if config is not None else "standard configuration"
    backend = _backend(workers, scheduler)
    results: list[tuple[str, SwarmResult, dict[str, str]]] = []
    absent: dict[str, dict[str, str]] = {}
    with backend:
        for pol in policies:
            system = _system_for(cfg, pol, races, where)
            bar = None if as_json or not err.is_terminal else RichProgress(console=err,
                                                                             transient=True)
            try:
                if bar is None:
                    result = swarm(system, backend, opt)
                else:
                    with bar:
                        task = bar.add_task(f"{pol}: walks", total=opt.walks)

                        def show(p: SwarmProgress, bar: RichProgress = bar,
                                 task: Any = task, pol: str = pol) -> None:
                            rate = p.walks_done / p.elapsed if p.elapsed else 0.0
                            bar.update(task, completed=p.walks_done, description=(
                                f"{pol}: {p.phase}, {p.walks_done}/{p.walks} walks, "
                                f"{p.violations} properties violated, {rate:,.1f} walks/s"))

                        result = swarm(system, backend, opt, show)
            except WorkerError as e:
                raise OptionError("--scheduler" if scheduler else "--workers", str(e)) from None
            except (KeyError, ValueError, NotImplementedError) as e:
                raise OptionError(where, _about(pol, e)) from None
            files: dict[str, str] = {}
            if _is_model(system):
                absent[pol] = hooks_absent(pol)
            if out is not None:
                for name, v in result.verdicts().items():
                    if v.status == FAIL:
                        files[name] = str(write_counterexample(out, system, v))
            results.append((pol, result, files))
    if as_json:
        typer.echo(json.dumps(swarm_json(cfg.name, config, opt, results, workers, scheduler,
                                         races, absent), indent=2))
    else:
        _print_swarm(wide_console(), results, list(opt.properties), opt, absent)
    if any(r.failed() for _, r, _ in results):
        raise typer.Exit(1)


def _say(console: Console, text: str) -> None:
    """A line of the report: names and messages are text (a name like "q[/]" is no markup)."""
    console.print(text, markup=False)


def _print_swarm(console: Console, results: list[tuple[str, Any, dict[str, str]]],
                 props: list[str], opt: Any, absent: dict[str, dict[str, str]]) -> None:
    table = Table(title=f"memfail check --swarm {opt.walks} (walk depth {opt.walk_depth}, "
                  f"seed {opt.seed}): policy x property")
    table.add_column("policy")
    for p in props:
        table.add_column(p)
    table.add_column("walks")
    for pol, r, _ in results:
        cells = []
        for v in r.verdicts().values():
            colour = "red" if v.status == FAIL else "yellow"
            cells.append(f"[{colour}]{v.short()}[/{colour}]")
        table.add_row(escape(pol), *cells, f"{r.walks:,}")
    console.print(table)
    for pol, r, files in results:
        never = ", ".join(r.kinds_never) or "none"
        _say(console, f"{pol}: {r.walks:,} walks, {r.steps:,} steps (longest {r.longest}, "
                      f"{r.ended_early} ended early), {r.walks_per_second:,.1f} walks/s, "
                      f"{r.steps_per_second:,.0f} steps/s; events never fired: {never}")
        _print_hooks(console, r.hooks_never, absent.get(pol, {}))
        _print_idle(console, r.entries_idle)
        for name, f in r.found.items():
            where = f" -> {files[name]}" if name in files else ""
            _say(console, f"  {name}: FAIL in {f.walks} of {r.walks} walks (first: walk "
                          f"{f.first_walk}, step {f.found_at}); shrunk to {len(f.labels)} "
                          f"step{'' if len(f.labels) == 1 else 's'}: {f.message}{where}")


def _spin_policies(policies: list[str], races: bool = False
                   ) -> tuple[list[str], dict[str, str]]:
    """The configuration's policies the SPIN engine renders (with ``races``, lock-granular),
    and the others by name with the reason, which are named on stderr and in the JSON's
    ``skipped`` (a policy asked for with --policy that it does not render is a usage error,
    and so is a configuration none of whose policies it renders: one line with the
    reasons)."""
    from memfail.check.spin.promela import split_rendered

    keep, refused = split_rendered(policies, races)
    if not keep:
        raise OptionError("--engine", "the SPIN engine renders none of the configuration's "
                          f"policies ({'; '.join(refused.values())}); use --engine python")
    for why in refused.values():
        _not_checking(why)
    return keep, refused


def _not_checking(why: str) -> None:
    """The stderr note for a policy of the file the SPIN engine leaves out (``skipped``)."""
    Console(stderr=True).print(f"--engine spin: not checking {why}", highlight=False,
                               soft_wrap=True)


def _spin_refusal(cfg: CheckConfig, pol: str, system: System, where: str
                  ) -> InputError | None:
    """Why the Promela model does not carry out the configuration for policy ``pol``
    (None when it does), found before any search starts: the file, line and field at fault
    when the configuration was read from a file (``Unsupported.loc``), else the
    configuration and the reason. The caller refuses it (a policy asked for with
    --policy, or every policy of the file refused) or leaves the policy out (``skipped``:
    the hugetlbfs baseline's model takes fewer events than the guest_memfd one)."""
    from memfail.check.spin.promela import Unsupported, check_supported

    try:
        check_supported(system)  # after _system_for's set-up, which gives each VM's pages
    except Unsupported as e:
        file, line = cfg.where(e.loc)
        msg = f"{e} (policy {pol!r}; `--engine python` checks it)"
        if file is not None and e.loc:
            return InputError(file, line, fmt_loc(e.loc), msg)
        return OptionError(where, _about(pol, e) + " (`--engine python` checks it)")
    return None


def _spin(system: System, props: list[str], engine: str, races: bool, bounds: Bounds,
          share: int = 1) -> Result:
    """One policy by the SPIN engine (memfail.check.spin); with ``races`` the system is
    lock-granular and the Promela model renders its stages (spin/stages.py); ``share`` pans
    run at once. Of the bounds, SPIN takes the memory and the time (its search has no depth
    or state bound: _check refuses --max-depth and --max-states)."""
    from memfail.check.spin.engine import spin_result

    return spin_result(system, props, bitstate=engine == "spin-bitstate", share=share,
                       memory_mb=bounds.max_memory_mb, seconds=bounds.max_seconds)


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


def _is_model(system: System) -> bool:
    from memfail.check.model_system import ModelSystem

    return isinstance(system, ModelSystem)


def _print_idle(console: Console, idle: list[tuple[int, str]] | None) -> None:
    """The alphabet entries no step of which changed anything (Coverage.entries_idle)."""
    if idle:
        _say(console, "  events that never changed anything: "
                      + ", ".join(f"events[{i}] ({event})" for i, event in idle))


def _print_hooks(console: Console, never: list[str], absent: dict[str, str]) -> None:
    """The hooks a policy has that never fired, then those it does not have, with why."""
    missing = [h for h in never if h not in absent]
    if missing:
        _say(console, f"  policy hooks never fired: {', '.join(missing)}")
    for hook, why in absent.items():
        _say(console, f"  policy hook {hook} cannot fire under this policy: {why}")


def _print_table(console: Console, results: list[tuple[str, Result, dict[str, str]]],
                 props: list[str], absent: dict[str, dict[str, str]] | None = None) -> None:
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
        table.add_row(escape(pol), *cells, f"{r.states:,}")
    console.print(table)
    for pol, r, files in results:
        never = ", ".join(r.coverage.kinds_never) or "none"
        _say(console, f"{pol}: {r.states:,} states, {r.transitions:,} transitions, depth "
                      f"{r.depth}, {r.states_per_second:,.0f} states/s, "
                      f"{'complete' if r.complete else 'stopped: ' + str(r.stop_reason)}; "
                      f"fingerprint collision probability <= {r.collision_probability:.1e}; "
                      + (f"events never fired: {never}" if r.complete else
                         f"events not fired before the search stopped: {never}"))
        _print_hooks(console, r.coverage.hooks_never, (absent or {}).get(pol, {}))
        _print_idle(console, r.coverage.entries_idle)
        hint = stop_hint(r)
        if hint is not None:
            _say(console, f"  {hint}")
        for name, v in r.verdicts.items():
            if v.status == FAIL:
                where = f" -> {files[name]}" if name in files else ""
                _say(console, f"  {name}: FAIL at depth {v.depth}: {v.message}{where}")


# What to do about a SPIN search that pan did not finish (runner.run_pan, pan_memory_limit)
STOP_HINTS = {
    "memory": "pan ran out of memory (the memory available, or bounds.memory_mb) "
              "running alone: use --engine spin-bitstate, or a smaller configuration",
    "killed": "pan was ended by a signal before it finished (the kernel's OOM killer, or "
              "another process), running alone: its search decides nothing more",
}
PAN_START_MB = {"spin": 135, "spin-bitstate": 90}
"""About what a pan takes before its first state, under the address-space limit
runner.run_pan sets (measured: exhaustive, its 2^24-slot hash table and stacks, 134 MiB;
bitstate, its 2^28-bit array and stacks, between 80 and 90 MiB)."""


def stop_hint(r: Result) -> str | None:
    """What to do about a search that stopped at its memory bound or was killed: the
    engine's own advice (the Python engine's memory bound is not pan's)."""
    if r.stop_reason not in STOP_HINTS:
        return None
    if _engine(r) == "python":
        if r.stop_reason != "memory":
            return None
        return ("the search reached its memory bound (--max-memory, bounds.memory_mb) and "
                "stopped: raise it, lower the depth, or use --engine spin")
    if r.states == 0:
        kind = "an exhaustive" if _engine(r) == "spin" else "a bitstate"
        return (f"pan stored no state: it could not start within the memory limit "
                f"(--max-memory, bounds.memory_mb; {kind} pan needs about "
                f"{PAN_START_MB[_engine(r)]} MiB before its first state): raise it")
    return STOP_HINTS[r.stop_reason]


def coverage_json(events_fired: list[str], events_never: list[str],
                  hooks_fired: list[str] | None, hooks_never: list[str] | None,
                  absent: dict[str, str] | None,
                  entries_idle: list[tuple[int, str]] | None = None) -> dict[str, Any]:
    """The ``coverage`` object: with a model policy, ``hooks_missing`` (hooks the policy has
    that never fired) and ``hooks_absent`` (hooks it cannot fire: hook -> why);
    ``entries_idle``, the alphabet entries no step of which changed anything. What is not
    recorded (the SPIN engine's hooks and idle entries) is null, not an empty list."""
    out: dict[str, Any] = {"events_fired": events_fired, "events_never": events_never,
                           "hooks_fired": hooks_fired, "hooks_never": hooks_never,
                           "entries_idle": None if entries_idle is None else
                           [{"entry": i, "event": event} for i, event in entries_idle]}
    # a system that is not the memfail model has no policy hooks to set apart: both null
    out["hooks_missing"] = None if hooks_never is None or absent is None else \
        [h for h in hooks_never if h not in absent]
    out["hooks_absent"] = absent
    return out


def _engine(r: Result) -> str:
    """Which engine gave a result."""
    bitstate = getattr(r, "bitstate", None)
    return "python" if bitstate is None else "spin-bitstate" if bitstate else "spin"


def to_json(cfg: CheckConfig, file: Path | None, results: list[tuple[str, Result, dict[str, str]]],
            workers: int, scheduler: str | None, races: bool = False,
            absent: dict[str, dict[str, str]] | None = None,
            skipped: dict[str, str] | None = None) -> dict[str, Any]:
    """The ``memfail.check/1`` document (docs/check.md). ``skipped``: the configuration's
    policies the engine did not check, by name, with the reason."""
    docs = {p.name: p for p in PROPERTIES}
    absent = absent or {}
    return {
        "schema": JSON_SCHEMA,
        "config": cfg.name,
        "file": str(file) if file is not None else None,
        "workers": workers,
        "scheduler": scheduler,
        "races": races,
        "failed": any(r.failed() for _, r, _ in results),
        "skipped": [{"policy": name, "reason": why} for name, why in (skipped or {}).items()],
        "results": [{
            "policy": pol,
            "engine": _engine(r),
            "complete": r.complete,
            "stop_reason": r.stop_reason,
            "states": r.states,
            "transitions": r.transitions,
            "depth": r.depth,
            "elapsed_s": round(r.elapsed, 3),
            "states_per_s": round(r.states_per_second, 1),
            "collision_probability": r.collision_probability,
            "reductions": {"symmetry": r.symmetry, "por": r.por},
            "coverage": coverage_json(
                r.coverage.kinds_fired, r.coverage.kinds_never,
                r.coverage.hooks_fired if _engine(r) == "python" else None,
                r.coverage.hooks_never if _engine(r) == "python" else None, absent.get(pol),
                r.coverage.entries_idle),
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
