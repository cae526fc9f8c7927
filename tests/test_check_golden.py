"""`memfail check` gives byte-identical results whatever its engine does inside: on fixed
configurations (copies in tests/golden/check, not the shipped standard configuration, which
moves on), with and without --races and --por, every policy preset's verdicts, state and
transition counts, depth, coverage and counterexample scenarios (the memfail.check/1 JSON
without its timings, and the files --out writes) equal those recorded in tests/golden/check.

Symmetry reduction is refused for the model (docs/check.md, Reductions), so the explorer's
symmetry and partial-order paths are pinned on the toy systems instead.

To record again after a change that is meant to alter results:
``MEMFAIL_RECORD_GOLDEN=1 .venv/bin/pytest -q tests/test_check_golden.py``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from memfail.check import cli
from memfail.check.explorer import Options, Result, explore
from memfail.check.toys import CounterSystem, PoisonToy

GOLDEN = Path(__file__).parent / "golden" / "check"
RECORD = os.environ.get("MEMFAIL_RECORD_GOLDEN") == "1"

# (golden file stem, configuration, extra options)
CASES: list[tuple[str, str, list[str]]] = [
    ("standard", "standard.yaml", []),
    ("standard-races", "standard.yaml", ["--races", "--max-depth", "3"]),
    ("standard-por", "standard.yaml", ["--por", "--max-depth", "4"]),
    ("small-gmem", "small-gmem.yaml", []),
    ("small-gmem-races", "small-gmem.yaml", ["--races", "--max-depth", "4"]),
    ("small-gmem-por", "small-gmem.yaml", ["--por"]),
    ("small-two", "small-two.yaml", []),
    ("small-two-races", "small-two.yaml", ["--races"]),
    ("small-two-por", "small-two.yaml", ["--por"]),
]
TIMINGS = ("elapsed_s", "states_per_s")


def check_document(config: Path, extra: list[str], out: Path) -> dict[str, Any]:
    """`memfail check CONFIG --json --out OUT EXTRA`, timings dropped, each counterexample
    file given by its name and text (scenario and trace) instead of its path."""
    app = typer.Typer()
    app.command()(cli.check)
    r = CliRunner().invoke(app, [str(config), "--json", "--out", str(out), *extra])
    assert r.exit_code in (0, 1), r.output
    doc = json.loads(r.stdout)
    doc["file"] = config.name
    for res in doc["results"]:
        for key in TIMINGS:
            del res[key]
        for v in res["verdicts"].values():
            if v["file"] is not None:
                path = Path(v["file"])
                v["file"] = {"name": path.name, "scenario": path.read_text(),
                             "trace": path.with_suffix(".trace.txt").read_text()}
    return doc


def compare(name: str, got: dict[str, Any]) -> None:
    path = GOLDEN / f"{name}.json"
    text = json.dumps(got, indent=1, sort_keys=True) + "\n"
    if RECORD:
        path.write_text(text)
        return
    want = path.read_text()
    if text != want:  # name the first policy and field that differ, then the whole diff
        exp = json.loads(want)
        for a, b in zip(got.get("results", []), exp.get("results", []), strict=False):
            for k in sorted(a.keys() | b.keys()):
                assert a.get(k) == b.get(k), f"{name}: policy {a.get('policy')}: {k} differs"
        assert text == want


@pytest.mark.parametrize(("name", "config", "extra"), CASES, ids=[c[0] for c in CASES])
def test_model_check_matches_golden(name: str, config: str, extra: list[str],
                                    tmp_path: Path) -> None:
    compare(name, check_document(GOLDEN / config, extra, tmp_path / "cex"))


def test_two_workers_match_the_one_worker_golden(tmp_path: Path) -> None:
    """Worker processes (states pickled between them) give the recorded single-worker result."""
    got = check_document(GOLDEN / "small-two.yaml", ["--races", "--workers", "2"],
                         tmp_path / "cex")
    assert got["workers"] == 2
    got["workers"] = 1
    if not RECORD:
        compare("small-two-races", got)


def toy_summary(r: Result) -> dict[str, Any]:
    return {"states": r.states, "transitions": r.transitions, "depth": r.depth,
            "complete": r.complete, "stop": r.stop_reason,
            "kinds": r.coverage.kinds_fired,
            "verdicts": {n: [v.short(), v.message, [repr(x) for x in v.labels]]
                         for n, v in sorted(r.verdicts.items())}}


def test_toys_with_symmetry_and_por_match_golden() -> None:
    got: dict[str, Any] = {}
    for sym in (False, True):
        for por in (False, True):
            opt = Options(symmetry=sym, por=por, stop_when_all_fail=False)
            got[f"poison-sym{int(sym)}-por{int(por)}"] = toy_summary(
                explore(PoisonToy(vms=3, errors=2, unmap=False), options=opt))
            if not sym:  # CounterSystem has no symmetry
                got[f"counter-por{int(por)}"] = toy_summary(
                    explore(CounterSystem(3, 3), options=opt))
    compare("toys", got)


def test_remembered_steps_equal_steps_taken_afresh() -> None:
    """A state whose host an earlier state had is expanded from what was remembered of that
    host (no copy, no step, no snapshot): each successor must equal what ``step`` gives when
    it runs the model on a fresh copy (fingerprint, monitor, counters, events, events in
    flight), with and without --races, including steps that change nothing."""
    from memfail.check.config import load_config
    from memfail.check.model_system import ModelState, ModelSystem

    def events(s: ModelState) -> list[Any]:
        # the trace's step counter is not state (a rebuilt Host starts a new trace)
        return [dataclasses.replace(e, step=0) if hasattr(e, "step") else e for e in s.events]

    def same(a: ModelState, b: ModelState) -> None:
        assert (a.counts, a.errors, a.monitor, events(a), a.inflight) == \
            (b.counts, b.errors, b.monitor, events(b), b.inflight)

    cfg = load_config(GOLDEN / "small-gmem.yaml")
    for races in (False, True):
        system = ModelSystem(cfg, "future", races)
        frontier = [system.initial()]
        remembered = 0
        for _ in range(3):
            nxt = []
            for s in frontier:
                labels = list(system.enabled(s))
                first = list(system.successors(s, labels))
                again = list(system.successors(s, labels))  # every step remembered now
                remembered += len(again)
                for label, a, b in zip(labels, first, again, strict=True):
                    fresh = system.step(s, label)
                    for t in (a, b):
                        same(t, fresh)
                        assert system.fingerprint(t) == system.fingerprint(fresh), label
                    assert system.properties()[0].check(b) == system.properties()[0].check(fresh)
                nxt += [system.compact(t) for t in first]
            frontier = nxt[:40]
        assert remembered > 100
