"""Gather the report's evidence by calling the Python functions behind ``memfail compare``,
``check``, ``fleet``, ``kernel-users``, ``profiles``, ``conform`` and ``search``, so that every
number in the page equals the one the command prints for the same options.

The result is one JSON-able dictionary (``memfail.report-data/1``), embedded in the page and
rendered by ``memfail.report.html.page``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATA_SCHEMA = "memfail.report-data/1"
SEARCH_SCHEMA = "memfail.search/1"
SEARCH_KEYS = ("schema", "config", "properties", "space", "minimal", "pareto", "presets",
               "answers")
# The headline fleet outcomes the sensitivity view draws (memfail.fleet.classes OUTCOME_NAMES).
TORNADO_OUTCOMES = ("host_panic", "host_stalled", "repeated_consumption", "poison_reused",
                    "vm_killed", "guest_gib_lost")
CITED_UE = 0.013
CITED_SOURCE = ("Schroeder, Pinheiro & Weber 2009 (SIGMETRICS), via "
                "reference/dram-field-data-and-simulation.md §2.1: 'Uncorrectable errors: about "
                "1.3 % of machines per year'")


@dataclass
class Settings:
    """What one ``memfail report`` run does (``--quick`` picks the small sizes)."""

    out: Path
    quick: bool = False
    baseline: str = "mainline"
    seed: int = 0
    workers: int = 2
    search_json: Path | None = None
    fleet_host_years: int = 200_000
    sens_host_years: int = 10_000
    check_depth: int | None = None     # None: the standard configuration's depth
    conform: bool = True
    cex_dir: Path = field(default_factory=lambda: Path("report-cex"))
    command: str = "memfail report"  # the command line that builds the page

    @classmethod
    def make(cls, out: Path, quick: bool, **kw: Any) -> Settings:
        cex = out.with_name(out.stem + "-cex")
        if quick:
            return cls(out=out, quick=True, fleet_host_years=2_000, sens_host_years=500,
                       check_depth=3, conform=False, cex_dir=cex, **kw)
        return cls(out=out, cex_dir=cex, **kw)


Step = Callable[[str], contextlib.AbstractContextManager[None]]


@contextlib.contextmanager
def _no_progress(_what: str) -> Iterator[None]:
    yield


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _version() -> str:
    from memfail.cli import _version as v

    return v()


def _rel(path: Path) -> str:
    """``path`` as the reader would type it: relative to the working directory if inside."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------- compare


def compare_doc(policies: list[str], profile: str | None, workers: int,
                readings: list[str] | None) -> dict[str, Any]:
    """The ``memfail.compare/2`` document (``memfail compare --json``) for these presets, with
    ``readings_that_change_cells`` computed for the presets in ``readings`` (all: the same as
    the command's; None: not computed)."""
    from memfail.model.outcomes import CLASS_DOCS, OUTCOME_DOCS
    from memfail.model.policy.base import SERIES
    from memfail.model.policy.registry import make_policy
    from memfail.report.compare import (
        COMPARE_SCHEMA,
        cell_json,
        compare_scenarios,
        run_compare,
        sensitivity,
        verdicts,
    )

    pols = [make_policy(p) for p in policies]
    scens = compare_scenarios()
    cells = run_compare(scens, pols, profile, workers)
    vs = verdicts(cells, policies)
    sens = sensitivity(cells, [p for p in pols if p.name in readings], scens, profile,
                       workers) if readings is not None else None
    return {"schema": COMPARE_SCHEMA, "profile": profile, "policies": policies,
            "policy_knobs": {p.name: p.knobs() for p in pols},
            "unmerged": {p.name: p.unmerged() for p in pols},
            "scenarios": scens,
            "cells": [cell_json(c) for c in cells],
            "verdicts": vs, "readings_that_change_cells": sens,
            "readings_computed_for": readings,
            "outcome_docs": OUTCOME_DOCS, "class_docs": CLASS_DOCS, "series": SERIES}


def profile_command(profile: str, policies: list[str], every_preset: bool) -> str:
    """The ``memfail compare`` that prints one profile's column (verdicts and cells)."""
    return (f"memfail compare --profile {profile} --no-readings --json"
            + ("" if every_preset else "".join(f" --policy {p}" for p in policies)))


def kernel_versions(policies: list[str], workers: int) -> dict[str, Any]:
    """Per kernel profile, each policy's verdict counts over the vm-* scenarios (what
    ``memfail compare --profile P --no-readings --json`` gives in ``verdicts``), the code of
    every cell that ran, and the scenarios that could not run on it, with why (a feature the
    profile lacks: compare's ``n/a`` cells)."""
    from memfail.model.kernel.profiles import PROFILES
    from memfail.model.policy.registry import PRESETS
    from memfail.report.compare import compare_scenarios, run_compare, verdicts

    every = list(policies) == list(PRESETS)
    out: dict[str, Any] = {}
    for prof in PROFILES:
        cmd = profile_command(prof, policies, every)
        try:
            cells = run_compare(compare_scenarios(), list(policies), prof, workers)
        except Exception as e:  # an error compare stops on: a result, not a crash
            out[prof] = {"error": f"{type(e).__name__}: {e}", "command": cmd}
            continue
        unavailable: dict[str, str] = {}
        for c in cells:
            if c.unavailable:
                unavailable.setdefault(c.scenario, c.unavailable)
        out[prof] = {"verdicts": verdicts(cells, policies), "command": cmd,
                     # only cells that ran and to which the policy applies
                     "codes": {f"{c.scenario}|{c.policy}": c.code() for c in cells
                               if c.applies},
                     "unavailable": unavailable}
    return out


def profile_changes(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The cells that change from profile ``a`` to ``b``, counted only over the cells that
    ran on both; how many could not be compared, and why."""
    if "error" in a or "error" in b:
        bad = a if "error" in a else b
        return {"compared": 0, "changed": [], "not_compared": None, "why": bad["error"]}
    ca, cb = a.get("codes", {}), b.get("codes", {})
    both = [k for k in ca if k in cb]
    changed = [f"{k.replace('|', ' under ')}: {ca[k]} → {cb[k]}" for k in both
               if ca[k] != cb[k]]
    gone = sorted(set(a.get("unavailable", {})) | set(b.get("unavailable", {})))
    return {"compared": len(both), "changed": changed,
            "not_compared": len(set(ca) ^ set(cb)), "unavailable": gone}


# ----------------------------------------------------------------------------- check


def check_doc(depth: int | None, cex_dir: Path, workers: int
              ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``memfail.check/1`` document of the standard configuration (``memfail check
    --json --out DIR``), its counterexample files, and their swimlane and folio-map data."""
    from memfail.check.backends import make_backend
    from memfail.check.cli import make_system, to_json, write_counterexample
    from memfail.check.config import standard_config
    from memfail.check.explorer import FAIL, Bounds, Options, explore
    from memfail.check.properties import PROPERTIES, PROPERTY_NAMES
    from memfail.report.html.cex import counterexample_data

    cfg = standard_config()
    props = list(cfg.properties or PROPERTY_NAMES)
    b = cfg.bounds
    bounds = Bounds(depth if depth is not None else b.depth, b.states, b.seconds, b.memory_mb)
    options = Options(tuple(props), cfg.symmetry, False)
    concern = {p.name: p.concern for p in PROPERTIES}
    results = []
    cexs: list[dict[str, Any]] = []
    with make_backend(1, None) as backend:
        for pol in cfg.policies:
            system = make_system(cfg, pol)
            r = explore(system, backend, bounds, options)
            files: dict[str, str] = {}
            for name, v in r.verdicts.items():
                if v.status != FAIL:
                    continue
                path = write_counterexample(cex_dir, system, v)
                files[name] = _rel(path)
                d = counterexample_data(system, v)
                d.update({"policy": pol, "property": name, "message": v.message,
                          "depth": v.depth, "concern": concern.get(name, ""),
                          "file": _rel(path),
                          "replay": f"memfail run {_rel(path)}",
                          "find": f"memfail check --policy {pol} --property {name} "
                                  f"--max-depth {bounds.max_depth} --out {_rel(cex_dir)}"})
                cexs.append(d)
            results.append((pol, r, files))
    doc = to_json(cfg, None, results, workers, None)
    doc["bounds"] = {"max_depth": bounds.max_depth, "max_states": bounds.max_states,
                     "max_seconds": bounds.max_seconds, "max_memory_mb": bounds.max_memory_mb,
                     "errors": getattr(b, "errors", None)}
    doc["events"] = [e.model_dump() if hasattr(e, "model_dump") else str(e) for e in cfg.events]
    return doc, cexs


def check_spin_doc() -> dict[str, Any]:
    """``memfail check --engine spin --json`` on the standard configuration: SPIN's
    exhaustive search, with no depth bound, of every preset the Promela model renders (the
    others are named with the reason, as the command names them on stderr). Every FAIL's
    trail is confirmed on the Python model (memfail.check.spin.engine). A run-time failure
    (no spin or C compiler, the engines disagreeing, pan failing) is reported in the page,
    not raised."""
    from memfail.check import config as check_config
    from memfail.check.cli import make_system, to_json
    from memfail.check.properties import PROPERTY_NAMES
    from memfail.check.spin.engine import spin_result
    from memfail.check.spin.promela import split_rendered
    from memfail.check.spin.runner import SpinMissing, tools

    try:
        tools()
    except SpinMissing as exc:
        return {"ran": False, "why": str(exc)}
    cfg = check_config.standard_config()
    props = list(cfg.properties or PROPERTY_NAMES)
    keep, skipped = split_rendered(list(cfg.policies))
    results: list[tuple[str, Any, dict[str, str]]] = []
    try:
        for pol in keep:
            results.append((pol, spin_result(make_system(cfg, pol), props), {}))
    except Exception as exc:  # a result to report: the page says what went wrong
        return {"ran": False, "why": f"{type(exc).__name__}: {exc}"}
    doc = to_json(cfg, None, results, 1, None)
    doc.update({"ran": True, "skipped": skipped,
                "command": "memfail check --engine spin --json"})
    return doc


# ----------------------------------------------------------------------------- fleet


def _range_row(rg: Any, not_drawn: str | None = None) -> dict[str, Any]:
    """A range as the page's table shows it (``not_drawn``: why it has no chart row)."""
    row = {"name": rg.name, "default": rg.default, "why": rg.why,
           "low_set": rg.low, "high_set": rg.high,
           "low_assign": rg.low if len(rg.low) <= 2 else
           "every faults.modes.* split 0.5 permanent",
           "high_assign": rg.high if len(rg.high) <= 2 else
           "every faults.modes.* split 0.9 permanent"}
    if not_drawn is not None:
        row["not_drawn"] = not_drawn
    return row


def fleet_docs(s: Settings, step: Step) -> dict[str, Any]:
    """``memfail fleet --json`` (memfail.fleet/1) for the defaults, the calibration line and
    the sensitivity of each rate to each assumed parameter (``ranges.RANGES``).

    The fleet run and every sensitivity point (the centre and each range's two ends) are
    sampled in one batch of shards over ``s.workers`` processes, then every model run any of
    them needs that the cache lacks runs in one pool: no pool waits on the slowest task of a
    small batch. Each point is the same computation as ``engine.run`` on its own fleet (same
    seed, same plan: common random numbers), so its rates equal ``memfail fleet``'s."""
    from memfail.fleet import cache, engine
    from memfail.fleet import output as fleet_output
    from memfail.fleet.oracle import ModelOracle
    from memfail.fleet.params import load_fleet, with_assignments
    from memfail.report.html.ranges import all_ranges, inert_ranges

    fleet = load_fleet(None)
    orc = ModelOracle(fleet.params.kernel_profile, cache_dir=cache.cache_dir())
    pols = list(fleet.params.policies)
    sens_pols = pols if not s.quick else ["minimum"]
    ranges = all_ranges()
    # (label, fleet, host-years, policies): the fleet run first, then the sensitivity points
    points: list[tuple[str, Any, int, list[str]]] = [
        ("run", fleet, s.fleet_host_years, pols), ("centre", fleet, s.sens_host_years,
                                                   sens_pols)]
    for rg in ranges:
        for end, assign in (("low", rg.low), ("high", rg.high)):
            points.append((f"{rg.name}|{end}", with_assignments(fleet, assign),
                           s.sens_host_years, sens_pols))
    try:
        with step(f"fleet: sample {s.fleet_host_years:,} host-years and {len(points) - 1} "
                  f"sensitivity points x {s.sens_host_years:,} host-years"):
            plans = [engine.Plan.for_host_years(hy) for _, _, hy, _ in points]
            specs = [engine.compile_spec(f.params) for _, f, _, _ in points]
            tasks: list[Any] = []
            spans = []
            for spec, plan in zip(specs, plans, strict=True):
                new = engine.make_tasks(spec, plan, s.seed)
                spans.append((len(tasks), len(tasks) + len(new)))
                tasks.extend(new)
            shards = engine.execute(tasks, s.workers, None, None)
            tallies = [engine.Tallies.merge(spec, plan, shards[a:b])
                       for spec, plan, (a, b) in zip(specs, plans, spans, strict=True)]
        need: dict[tuple[str, ...], list[Any]] = {}
        for (_, _, _, ps), t in zip(points, tallies, strict=True):
            need.setdefault(tuple(ps), []).extend(t.classes)
        n_cls = len({c for cs in need.values() for c in cs})
        with step(f"fleet: model runs for {n_cls:,} failure classes (cached ones skipped)"):
            for pset, classes in need.items():
                orc.prefetch(list(pset), list(dict.fromkeys(classes)), s.workers)
        with step("fleet: rates, intervals and sensitivity"):
            res = {label: engine.estimate(f, t, orc, s.seed, ps, s.workers)
                   for (label, f, _, ps), t in zip(points, tallies, strict=True)}
    finally:
        _save(orc)
    run = fleet_output.run_document(res["run"])
    centre = res["centre"]

    def rates(r: Any) -> dict[str, dict[str, float]]:
        return {p: {o: r.rate(p, o).per_million_vm_hours.estimate for o in TORNADO_OUTCOMES}
                for p in sens_pols}

    pol_opts = "".join(f" --policy {p}" for p in sens_pols)
    rows = []
    not_drawn = [_range_row(rg, why) for rg, why in inert_ranges()]
    for rg in ranges:
        # one parameter: the `memfail fleet sweep` that computes both ends (same seed, plan)
        cmd = (f"memfail fleet sweep --grid '{next(iter(rg.low))}=["
               f"{json.dumps(next(iter(rg.low.values())))}, "
               f"{json.dumps(next(iter(rg.high.values())))}]' --host-years "
               f"{s.sens_host_years} --seed {s.seed}{pol_opts} --json"
               if len(rg.low) == 1 and list(rg.low) == list(rg.high) else None)
        if cmd is None:  # a number the page shows must have a command that gives it
            not_drawn.append(_range_row(rg, "no single `memfail fleet sweep` axis moves it"))
            continue
        rows.append({**_range_row(rg), "command": cmd,
                     "low": rates(res[f"{rg.name}|low"]),
                     "high": rates(res[f"{rg.name}|high"])})
    sens = {"host_years": centre.plan.host_years, "seed": s.seed, "policies": sens_pols,
            "outcomes": list(TORNADO_OUTCOMES), "unit": "per_million_vm_hours",
            "centre": rates(centre), "rows": rows, "not_drawn": not_drawn,
            "centre_interval": {p: {o: [centre.rate(p, o).per_million_vm_hours.low,
                                        centre.rate(p, o).per_million_vm_hours.high]
                                    for o in TORNADO_OUTCOMES} for p in sens_pols},
            "model_runs": orc.model_runs, "classes": n_cls}
    sens["command"] = (f"memfail fleet --host-years {s.sens_host_years} --seed {s.seed}"
                       f"{pol_opts} --json")
    return {"run": run, "calibration": calibration(run), "sensitivity": sens,
            "command": f"memfail fleet --host-years {s.fleet_host_years} --seed {s.seed} "
                       "--json"}


def _save(orc: Any) -> None:
    save = getattr(orc, "save", None)
    if callable(save):
        save()


def calibration(run: dict[str, Any]) -> dict[str, Any]:
    """The fleet's own P(>= 1 uncorrectable error per host-year) against the field figure it
    cites: the fleet document's ``calibration`` (memfail.fleet.calibration) when it has one,
    else computed here from its ``p_any_fault`` (the share of sampled host-years with at least
    one fault) and the default fleet's frailty."""
    got = run.get("calibration")
    if isinstance(got, dict) and "p_host_ue_per_year" in got:
        return {**got, "from": "fleet"}
    from memfail.fleet.calibration import rate_for_incidence
    from memfail.fleet.params import load_fleet

    p = float(run["p_any_fault"])
    lam = float(run["faults_per_host_year"]["estimate"])
    fr = load_fleet(None).params.frailty
    need = rate_for_incidence(CITED_UE, fr.distribution, fr.mean_over_median)
    return {
        "p_host_ue_per_year": p, "cited": CITED_UE, "cited_source": CITED_SOURCE,
        "mean_rate_per_host_year": lam, "rate_matching_cited": need, "from": "report",
        "explanation": (
            f"The fleet draws {lam:.4f} uncorrectable faults per host-year on average and "
            f"spreads them over hosts with a {fr.distribution} frailty (mean/median "
            f"{fr.mean_over_median:g}): faults crowd onto frail hosts, so fewer hosts see at "
            f"least one, P(>= 1 per host-year) = {p:.2%}. The study's 1.3 % is a share of "
            "machines with at least one UE; under this frailty the mean rate that gives it is "
            f"{need:.4f} per host-year."),
    }


# ----------------------------------------------------------------------------- fidelity


def repo_file(rel: str) -> Path | None:
    """A file of the source tree (tests/oracle, tests/replay): from the working directory or
    from the tree this package is installed from. The page names it by ``rel``, as typed
    from the top of the source tree."""
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *here.parents):
        p = base / rel
        if p.exists():
            return p
    return None


ORACLE_COMMAND = "memfail run --quiet tests/oracle/*/*.yaml"
"""Every oracle case under its pinned profile and policy; its last line is the count the page
shows ('N scenarios: R ok, F failed')."""


def oracle_doc() -> dict[str, Any]:
    """Every oracle scenario under tests/oracle run under its pinned profile (and policy), as
    tests/test_kernel_oracle.py and test_gmem_oracle.py run them."""
    from memfail.scenario.loader import load_scenario
    from memfail.scenario.runner import run_scenario

    root = repo_file("tests/oracle")
    if root is None:
        return {"available": False, "why": "tests/oracle is not in this installation"}
    cases: list[dict[str, Any]] = []
    for path in sorted(root.glob("*/*.yaml")):  # ORACLE_COMMAND's files
        rel = path.relative_to(root)
        try:
            r = run_scenario(load_scenario(path, str(rel)))
            ok, why = r.ok, "; ".join(f.message for f in r.failures[:2])
        except Exception as e:  # a case that cannot run is reported, not raised
            ok, why = False, f"{type(e).__name__}: {e}"
        cases.append({"case": str(rel), "group": rel.parts[0], "ok": ok, "why": why})
    groups: dict[str, dict[str, int]] = {}
    for c in cases:
        g = groups.setdefault(c["group"], {"cases": 0, "reproduced": 0})
        g["cases"] += 1
        g["reproduced"] += int(c["ok"])
    return {"available": True, "root": "tests/oracle", "cases": cases, "groups": groups,
            "reproduced": sum(int(c["ok"]) for c in cases), "total": len(cases),
            "command": ORACLE_COMMAND}


def conform_doc() -> dict[str, Any]:
    """``memfail conform tests/oracle/linux-6.1/*.yaml --json`` in this process (boots
    Debian's 6.1 kernel under QEMU); a kernel or QEMU that is missing is reported."""
    from memfail.conform.cli import conform

    root = repo_file("tests/oracle/linux-6.1")
    if root is None:
        return {"ran": False, "why": "tests/oracle/linux-6.1 is not in this installation"}
    files = [str(p) for p in sorted(root.glob("*.yaml"))]
    buf, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
            conform(files, "debian-6.1", True, None, 20, None)
    except BaseException as e:  # typer.Exit carries the verdict; an error is a result here
        code = getattr(e, "exit_code", None)
        if code not in (0, 1):
            if isinstance(e, KeyboardInterrupt):
                raise
            return {"ran": False, "why": f"{type(e).__name__}: {e} {err.getvalue()[-300:]}"}
    try:
        doc: dict[str, Any] = json.loads(buf.getvalue())
    except ValueError:
        return {"ran": False, "why": "no memfail.conform/1 document: " + err.getvalue()[-300:]}
    counts: dict[str, int] = {}
    for c in doc.get("cases", []):
        counts[c.get("status", "?")] = counts.get(c.get("status", "?"), 0) + 1
    return {"ran": True, "doc": doc, "counts": counts,
            "command": "memfail conform tests/oracle/linux-6.1/*.yaml --json"}


def replay_doc() -> dict[str, Any]:
    """``memfail replay tests/replay --json --no-project``: the shipped real RAS logs, each
    failed page replayed under the log's kernel (reproduces / differs / cannot express)."""
    from memfail.cli import main

    root = repo_file("tests/replay")
    if root is None:
        return {"ran": False, "why": "tests/replay is not in this installation"}
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        rc = main(["replay", _rel(root), "--json", "--no-project"])
    if rc != 0:
        return {"ran": False, "why": f"memfail replay exited {rc}"}
    doc = json.loads(buf.getvalue())
    counts: dict[str, int] = {}
    for r in doc.get("replay", []):
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    tree = str(root.parent.parent) + "/"
    incidents = [{"incident": r.get("incident"),
                  "source": str(r.get("source", "")).removeprefix(tree),
                  "verdict": r.get("verdict"), "reason": r.get("reason")}
                 for r in doc.get("replay", [])]
    return {"ran": True, "counts": counts, "command": "memfail replay tests/replay --json "
            "--no-project", "incidents": incidents}


# ----------------------------------------------------------------------------- search


class SearchInputError(ValueError):
    """A --search-json file that is not a memfail.search/1 document."""


def load_search(path: Path) -> dict[str, Any]:
    """Read a ``memfail.search/1`` document; a wrong file is bad input (one line)."""
    from memfail.inputs import InputError

    try:
        doc = json.loads(path.read_text("utf-8"))
    except OSError as e:
        raise InputError(str(path), None, "--search-json", str(e.strerror or e)) from None
    except ValueError as e:
        line = getattr(e, "lineno", None)
        raise InputError(str(path), line, "--search-json", f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InputError(str(path), 1, "schema", "expected a memfail.search/1 JSON object")
    if doc.get("schema") != SEARCH_SCHEMA:
        raise InputError(str(path), 1, "schema",
                         f"expected {SEARCH_SCHEMA!r}, got {doc.get('schema')!r}")
    # every part the page shows: a document missing one would give a section without it
    for key, kind in (("config", dict), ("properties", list), ("space", dict),
                      ("minimal", list), ("pareto", list), ("presets", list),
                      ("answers", list)):
        if key not in doc:
            raise InputError(str(path), 1, key, "missing: not a whole `memfail search --json` "
                             "document")
        if not isinstance(doc[key], kind):
            raise InputError(str(path), 1, key,
                             f"expected {'a list' if kind is list else 'an object'}")
    return doc


def search_compare_commands(doc: dict[str, Any] | None) -> list[str]:
    """The ``memfail compare`` behind each answered policy's findings in the search part."""
    if not isinstance(doc, dict):
        return []
    out: list[str] = []
    for part, key in (("answers", "compare"), ("minimal", "compare"),
                      ("presets", "cheaper_compare")):
        for x in doc.get(part) or []:
            cmd = (x.get(key) or {}).get("command") if isinstance(x, dict) else None
            if isinstance(cmd, str) and cmd not in out:
                out.append(cmd)
    return out


def cross_check(doc: dict[str, Any], workers: int) -> None:
    """Run a search document's answered policies through compare's scenarios, as ``memfail
    search`` does (memfail.search.crosscheck), for a document that lacks it."""
    from memfail.search.crosscheck import annotate
    from memfail.search.engine import Executor

    with Executor(workers) as ex:
        annotate(doc, ex)
    if doc.get("compare", {}).get("ran"):
        doc["compare"]["computed_by"] = "memfail report, the document lacking it"


def run_search(workers: int = 1) -> dict[str, Any] | None:
    """``memfail search --workers N --json`` in this process, when the command exists."""
    import importlib.util

    if importlib.util.find_spec("memfail.search") is None:
        return None
    from memfail.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        rc = main(["search", "--workers", str(workers), "--json"])
    if rc not in (0, 1):
        return {"error": f"memfail search --workers {workers} --json exited {rc}"}
    try:
        doc: dict[str, Any] = json.loads(buf.getvalue())
    except ValueError:
        return {"error": "memfail search --json printed no JSON document"}
    return doc


# ----------------------------------------------------------------------------- manifest


def manifest(s: Settings, commands: list[str], started: float) -> dict[str, Any]:
    """Every command the report ran (as the reader would type it), the seed, the version and
    the hash of every input file."""
    import memfail

    pkg = Path(memfail.__file__).parent
    inputs = {"check/standard.yaml": sha256_file(pkg / "check" / "standard.yaml"),
              "fleet/defaults.yaml": sha256_file(pkg / "fleet" / "defaults.yaml")}
    lib = sorted((pkg / "scenario" / "library").glob("*.yaml"))
    h = hashlib.sha256()
    for p in lib:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    inputs[f"scenario/library/*.yaml ({len(lib)} files)"] = h.hexdigest()
    oracle = repo_file("tests/oracle")
    if oracle is not None:
        h = hashlib.sha256()
        files = sorted(oracle.rglob("*.yaml"))
        for p in files:
            h.update(str(p.relative_to(oracle)).encode() + b"\0" + p.read_bytes())
        inputs[f"tests/oracle/**/*.yaml ({len(files)} files)"] = h.hexdigest()
    if s.search_json is not None:
        inputs[str(s.search_json)] = sha256_file(s.search_json)
    return {"memfail_version": _version(), "python": platform.python_version(),
            "platform": platform.platform(), "seed": s.seed, "quick": s.quick,
            "baseline": s.baseline, "commands": commands, "inputs": inputs,
            "command": s.command,
            "seconds": round(time.monotonic() - started, 1)}


# ----------------------------------------------------------------------------- all


def single_process_stages(s: Settings, step: Step = _no_progress
                          ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The stages that use one core: the check (its own worker), the oracle cases, the RAS
    log replay and conform (QEMU). ``collect`` runs them in a second process while the
    comparison, the fleet, the kernel profiles and the search use the pool."""
    stages: list[dict[str, Any]] = []
    step = _timed(step, stages)
    out: dict[str, Any] = {}
    with step(f"check: standard configuration, depth {s.check_depth or 'of the config'}"):
        out["check"], out["counterexamples"] = check_doc(s.check_depth, s.cex_dir, 1)
    if s.quick:
        out["check_spin"] = {"ran": False, "why": "not run with --quick"}
    else:
        with step("check: the SPIN engine on the standard configuration (exhaustive)"):
            out["check_spin"] = check_spin_doc()
    with step("model fidelity: oracle cases"):
        out["oracle"] = oracle_doc()
    with step("replay: the shipped RAS logs"):
        out["replay"] = replay_doc()
    if s.conform:
        with step("conform: Debian 6.1 under QEMU (about 35 s)"):
            out["conform"] = conform_doc()
    else:
        out["conform"] = {"ran": False, "why": "not run with --quick"}
    return out, stages


def collect(s: Settings, step: Step = _no_progress) -> dict[str, Any]:
    """Every section's evidence, in one dictionary.

    With ``s.workers`` > 1 the single-core stages (``single_process_stages``) run in a second
    process, started first, while this one runs the stages that fill the worker pool; the
    evidence is the same either way."""
    import multiprocessing
    from concurrent.futures import Future, ProcessPoolExecutor

    from memfail.model.policy.base import KNOB_DOCS, READINGS, SERIES
    from memfail.model.policy.registry import PRESETS
    from memfail.report.kernel_users import kernel_users_document
    from memfail.report.profiles import profiles_document

    started = time.monotonic()
    stages: list[dict[str, Any]] = []
    timed = _timed(step, stages)
    presets = list(PRESETS)
    quick_pols = list(dict.fromkeys([s.baseline, "minimum"]))
    data: dict[str, Any] = {"schema": DATA_SCHEMA, "quick": s.quick, "baseline": s.baseline}
    data["policies"] = {n: {"summary": p.summary, "call_items": list(p.call_items),
                            "knobs": p.knobs(), "unmerged": p.unmerged()}
                        for n, p in PRESETS.items()}
    data["knob_docs"], data["readings"], data["series"] = KNOB_DOCS, READINGS, SERIES
    side: Future[tuple[dict[str, Any], list[dict[str, Any]]]] | None = None
    pool = None
    if s.workers > 1:  # spawn: the progress display's thread must not be forked
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        side = pool.submit(single_process_stages, s)
    try:
        with timed("compare: every vm-* scenario x every policy"):
            data["compare"] = compare_doc(presets, None, s.workers, readings=quick_pols
                                          if s.quick else presets)
        data["fleet"] = fleet_docs(s, timed)
        kv_pols = presets if not s.quick else quick_pols
        with timed("kernel versions: compare under every profile"):
            data["kernels"] = {"policies": kv_pols,
                               "by_profile": kernel_versions(kv_pols, s.workers)}
        data["kernel_users"] = kernel_users_document()
        data["profiles"] = profiles_document()
        if s.search_json is not None:
            data["search"] = load_search(s.search_json)
            data["search_source"] = str(s.search_json)
            if "compare" not in data["search"]:  # a document of a search without it
                with timed("search: the answered policies through compare's scenarios"):
                    cross_check(data["search"], s.workers)
        elif not s.quick:
            with timed("search: minimal policies"):
                found = run_search(s.workers)
            if found is not None:
                data["search"] = found
                data["search_source"] = f"memfail search --workers {s.workers} --json"
        if side is not None:
            with step("check, oracle cases, RAS logs" + ", conform" * s.conform
                      + ": waiting for the second process"):
                got, side_stages = side.result()
            stages += [{**st, "process": "second"} for st in side_stages]
        else:
            got, side_stages = single_process_stages(s, step)
            stages += side_stages
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    data.update(got)
    # every command behind a number, in the page's order
    depth = data["check"]["bounds"]["max_depth"]
    sens = data["fleet"]["sensitivity"]
    commands = ["memfail compare --json",
                f"memfail check --max-depth {depth} --json --out {_rel(s.cex_dir)}",
                *(c["replay"] for c in data["counterexamples"]),
                data["fleet"]["command"], sens["command"],
                *(r["command"] for r in sens["rows"] if r["command"]),
                *(got["command"] for got in data["kernels"]["by_profile"].values()),
                "memfail kernel-users --json", "memfail profiles --json",
                data["oracle"].get("command", ORACLE_COMMAND)]
    if data.get("check_spin", {}).get("ran"):
        commands.append(data["check_spin"]["command"])
    if data["replay"].get("ran"):
        commands.append(data["replay"]["command"])
    if data["conform"].get("ran"):
        commands.append(data["conform"]["command"])
    if data.get("search_source", "").startswith("memfail search"):
        commands.append(data["search_source"])
    commands += search_compare_commands(data.get("search"))
    data["manifest"] = manifest(s, commands, started)
    data["manifest"]["stages"] = stages
    data["manifest"]["workers"] = s.workers
    return data


def _timed(step: Step, stages: list[dict[str, Any]]) -> Step:
    """``step`` that also records each stage's wall time (the manifest's ``stages``)."""

    @contextlib.contextmanager
    def timed(what: str) -> Iterator[None]:
        t0 = time.monotonic()
        with step(what):
            yield
        stages.append({"stage": what, "seconds": round(time.monotonic() - t0, 1)})

    return timed
