"""`memfail check` end to end on small systems: table, JSON, exit codes, counterexample files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from memfail.check import cli
from memfail.check.config import CheckConfig
from memfail.check.toys import PoisonToy

CONFIG = """\
policies: [mainline, unmap]
host: {hugepages: {2M: 1}}
processes:
  - {name: qemu0, threads: [main, vcpu0]}
vms:
  - {name: vm0, vmm: qemu0}
events:
  - {event: hw_error, vm: vm0}
"""


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Check the poison toy instead of the model: policy 'unmap' unmaps, others do not."""

    def make(config: CheckConfig, policy: str) -> Any:
        return PoisonToy(vms=2, errors=1, unmap=policy == "unmap", name=policy)

    monkeypatch.setattr(cli, "make_system", make)
    monkeypatch.setattr(cli, "PROPERTY_NAMES", ("contained", "no-consumption"))
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    return path


def run(*args: str) -> Any:
    app = typer.Typer()
    app.command()(cli.check)
    return CliRunner().invoke(app, list(args))


def test_table_and_exit_status(toy: Path) -> None:
    r = run(str(toy))
    assert r.exit_code == 1, r.output
    assert "FAIL(3)" in r.output and "PASS" in r.output
    r = run(str(toy), "--policy", "unmap", "--property", "contained")
    assert r.exit_code == 0, r.output


def test_json_document(toy: Path) -> None:
    r = run(str(toy), "--json", "--property", "contained")
    doc = json.loads(r.stdout)
    assert doc["schema"] == "memfail.check/1" and doc["failed"] is True
    leaky, unmap = doc["results"]
    assert leaky["policy"] == "mainline" and leaky["verdicts"]["contained"]["status"] == "FAIL"
    assert leaky["verdicts"]["contained"]["depth"] == 3
    assert leaky["verdicts"]["contained"]["counterexample"] == [
        "('error', 0)", "('touch', 0)", "('touch', 0)"]
    assert unmap["verdicts"]["contained"]["status"] == "PASS" and unmap["complete"]
    assert unmap["collision_probability"] < 1e-12
    assert set(unmap["coverage"]) == {"events_fired", "events_never", "hooks_fired",
                                      "hooks_never"}


def test_workers_do_not_change_the_answer(toy: Path) -> None:
    def strip(doc: dict[str, Any]) -> dict[str, Any]:
        for res in doc["results"]:
            res.pop("elapsed_s")
            res.pop("states_per_s")
        doc.pop("workers")
        return doc

    one = strip(json.loads(run(str(toy), "--json").stdout))
    two = strip(json.loads(run(str(toy), "--json", "--workers", "2").stdout))
    assert one == two


def test_partial_is_labelled(toy: Path) -> None:
    r = run(str(toy), "--policy", "unmap", "--max-depth", "1", "--json")
    v = json.loads(r.stdout)["results"][0]["verdicts"]["contained"]
    assert (v["status"], v["reason"]) == ("PARTIAL", "depth")
    assert r.exit_code == 0


def test_out_writes_one_file_per_violation(toy: Path, tmp_path: Path) -> None:
    out = tmp_path / "cex"
    r = run(str(toy), "--out", str(out))
    assert r.exit_code == 1
    names = sorted(p.name for p in out.iterdir())
    assert names == ["mainline--contained.trace.txt", "mainline--no-consumption.trace.txt",
                     "unmap--no-consumption.trace.txt"]
    text = (out / "mainline--contained.trace.txt").read_text()
    assert "step 3: ('touch', 0)" in text and "consumed=1 -> page=known mapped=True consumed=2" in text


def test_bad_input_exits_2_with_one_line(toy: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("policies: [a]\nevents: [{event: nope}]\n")
    r = run(str(bad))
    assert r.exit_code == 2
    assert r.stderr.strip().startswith(f"memfail: error: {bad}:2: events[0].event: unknown event 'nope'")
    assert len(r.stderr.strip().splitlines()) == 1
    r = run(str(toy), "--property", "nope")
    assert r.exit_code == 2 and "unknown property 'nope'" in r.stderr


def test_resume_from_checkpoint(toy: Path, tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    first = json.loads(run(str(toy), "--json", "--policy", "unmap", "--max-states", "3",
                           "--checkpoint", str(ck), "--checkpoint-every", "0").stdout)
    assert first["results"][0]["stop_reason"] == "states"
    resumed = json.loads(run(str(toy), "--json", "--policy", "unmap",
                             "--resume", str(ck)).stdout)
    full = json.loads(run(str(toy), "--json", "--policy", "unmap").stdout)
    for key in ("states", "transitions", "complete", "verdicts"):
        assert resumed["results"][0][key] == full["results"][0][key]


def test_symmetry_on_the_model_is_refused_with_a_reason(tmp_path: Path) -> None:
    """The model offers no symmetry reduction (docs/check.md, Reductions): asking for it is a
    usage error naming the way out, not a traceback or a silently unreduced run."""
    cfg = tmp_path / "sym.yaml"
    cfg.write_text("""\
policies: [unmap]
host: {memory: 8G, hugepages: {2M: 2}}
processes:
  - {name: qemu0, threads: [main, vcpu0]}
guest_memfd:
  - {name: g0, size: 2M, backing: 2M, flags: [mmap, init_shared]}
vms:
  - {name: vm0, vmm: qemu0, gmem: g0}
events:
  - {event: hw_error, vm: vm0, page: 0, detect: scrub}
symmetry: true
bounds: {depth: 1}
""")
    for args in ([str(cfg)], [str(cfg), "--symmetry"]):
        r = run(*args)
        assert r.exit_code == 2, r.output
        err = r.stderr.strip()
        assert len(err.splitlines()) == 1
        assert "symmetry reduction is not available for the memfail model" in err
    cfg.write_text(cfg.read_text().replace("symmetry: true\n", ""))
    r = run(str(cfg), "--symmetry")
    assert r.exit_code == 2 and "drop --symmetry" in r.stderr
    assert run(str(cfg)).exit_code in (0, 1)
