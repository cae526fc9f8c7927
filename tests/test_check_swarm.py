"""`memfail check --swarm N`: seeded random walks past the exhaustive bound find what the
bounded search cannot, shrink it to a short path, give the same report whatever the worker
count, and every counterexample they write replays with `memfail run`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from memfail.check.config import load_config_text
from memfail.check.model_system import ModelSystem
from memfail.check.swarm import shrink, walk
from memfail.cli import main

# A page's error is latent: the guest's read consumes it (a vMCE; the minimum policy unmaps
# nothing), and the VMM's read through its mapping consumes it again: three steps. The exhaustive bound (depth 2) cannot reach it; the other
# events are noise the walks take and the shrinking must drop.
DEEP = """\
name: deep
policies: [minimum]
geometry: {pmd_order: 2, pud_order: 3}
host: {memory: 8G, hugepages: {2M: 4}}
processes:
  - {name: qemu0, threads: [main, vcpu0], mce_kill: {main: early, vcpu0: late}, sigbus: handler}
  - {name: qemu1, threads: [main, vcpu0], sigbus: handler}
guest_memfd:
  - {name: gmem0, size: 2M, backing: 2M, flags: [mmap, init_shared]}
  - {name: gmem1, size: 2M, backing: 2M, flags: [mmap, init_shared]}
vms:
  - {name: vm0, vmm: qemu0, gmem: gmem0}
  - {name: vm1, vmm: qemu1, gmem: gmem1}
events:
  - {event: hw_error, vm: vm0, page: 0, detect: latent}
  - {event: vcpu_access, vm: vm0, page: [0, 2, 3]}
  - {event: vmm_access, vm: vm0, page: [0, 1]}
  - {event: vcpu_access, vm: vm1, page: [0, 1]}
  - {event: scrub, vm: vm0, page: 1}
properties: [contained]
bounds: {depth: 2, errors: 1}
"""

SWARM = ["--swarm", "12", "--walk-depth", "16", "--seed", "7"]


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["check", *args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


@pytest.fixture
def deep(tmp_path: Path) -> Path:
    path = tmp_path / "deep.yaml"
    path.write_text(DEEP)
    return path


def test_swarm_finds_past_the_bound_and_shrinks(deep: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code, doc = _run(capsys, str(deep))
    assert code == 0
    (res,) = doc["results"]
    assert res["verdicts"]["contained"]["status"] == "PARTIAL"
    assert res["depth"] == 2

    out = tmp_path / "cex"
    code, doc = _run(capsys, str(deep), *SWARM, "--out", str(out))
    assert code == 1 and doc["schema"] == "memfail.swarm/1" and doc["failed"] is True
    (res,) = doc["results"]
    assert res["walks"] == 12 and res["longest_walk"] == 16
    v = res["verdicts"]["contained"]
    assert v["status"] == "FAIL" and v["walks_violating"] >= 1
    # shrunk to the shortest path there is: the error, then two reads of its page
    assert v["depth"] == 3 <= v["found_at"]
    assert v["counterexample"][0].startswith("('hw_error'")
    assert all("'page', 0" in lab for lab in v["counterexample"])
    assert "consumed again" in v["message"]
    assert Path(v["file"]) == out / "minimum--contained.yaml"

    # the exhaustive search one level deeper agrees on the length
    code, doc = _run(capsys, str(deep), "--max-depth", "3")
    assert doc["results"][0]["verdicts"]["contained"]["depth"] == 3

    assert main(["run", v["file"]]) == 0, capsys.readouterr().out[-600:]


def test_worker_count_does_not_change_the_report(deep: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    def strip(doc: dict[str, Any]) -> dict[str, Any]:
        doc.pop("workers")
        for r in doc["results"]:
            for k in ("elapsed_s", "walks_per_s", "steps_per_s"):
                r.pop(k)
        return doc

    _, one = _run(capsys, str(deep), *SWARM, "--property", "contained")
    _, two = _run(capsys, str(deep), *SWARM, "--property", "contained", "--workers", "2")
    assert strip(one) == strip(two)
    _, other = _run(capsys, str(deep), *SWARM[:-1], "8", "--property", "contained")
    assert other["results"][0]["steps"] != one["results"][0]["steps"] or \
        other["results"][0]["verdicts"] != one["results"][0]["verdicts"], \
        "another seed takes other walks"


def test_walks_are_seeded_and_shrinking_keeps_a_real_path() -> None:
    system = ModelSystem(load_config_text(DEEP), "minimum")
    a = walk(system, 7, 3, 16)
    b = walk(system, 7, 3, 16)
    assert a.labels == b.labels and a.found == b.found
    w = next(walk(system, 7, i, 16) for i in range(40)
             if "contained" in walk(system, 7, i, 16).found)
    labels, msg = shrink(system, w.labels, "contained")
    assert len(labels) == 3 and "consumed again" in msg
    with pytest.raises(ValueError, match="does not violate"):
        shrink(system, labels[:2], "contained")


def test_standard_configuration_swarm_counterexamples_replay(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cex"
    code, doc = _run(capsys, "--swarm", "6", "--walk-depth", "12", "--policy", "minimum",
                     "--policy", "future", "--workers", "2", "--out", str(out))
    assert code == (1 if doc["failed"] else 0)
    files = [v["file"] for r in doc["results"] for v in r["verdicts"].values()
             if v["status"] == "FAIL"]
    assert files and None not in files
    failed = [(f, main(["run", f]), capsys.readouterr().out[-300:]) for f in files]
    assert [x for x in failed if x[1] != 0] == []


@pytest.mark.parametrize(("args", "message"), [
    (["--walk-depth", "10"], "memfail: error: --walk-depth: only with --swarm N"),
    (["--swarm", "4", "--max-depth", "3"], "memfail: error: --max-depth: not with --swarm"),
    (["--swarm", "4", "--engine", "spin"], "memfail: error: --engine: not with --swarm"),
])
def test_swarm_option_errors(args: list[str], message: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_swarm_on_a_dask_cluster_matches_the_local_run(deep: Path) -> None:
    """Walks and shrinks run as Dask tasks give the local report."""
    distributed = pytest.importorskip("distributed")
    from memfail.check.backends import make_backend
    from memfail.check.swarm import SwarmOptions, swarm

    system = ModelSystem(load_config_text(DEEP), "minimum")
    opt = SwarmOptions(12, 16, 7, ("contained",))
    local = swarm(system, make_backend(), opt)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            make_backend(scheduler=cluster.scheduler_address) as b:
        remote = swarm(system, b, opt)
    assert remote.found == local.found and remote.steps == local.steps
    assert remote.found["contained"].labels and remote.hooks_fired == local.hooks_fired


def test_swarm_with_races_shrinks_to_stages_that_replay(
        deep: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cex"
    code, doc = _run(capsys, str(deep), *SWARM, "--races", "--out", str(out))
    v = doc["results"][0]["verdicts"]["contained"]
    assert code == 1 and doc["races"] is True and v["status"] == "FAIL"
    # the accesses go through their fault stages, so the path is longer than without races
    assert v["depth"] > 3 and any("stage" in lab for lab in v["counterexample"])
    assert "- stage:" in Path(v["file"]).read_text()
    assert main(["run", v["file"]]) == 0, capsys.readouterr().out[-600:]


def test_races_on_the_standard_configuration(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """--races takes the guest-behaviour events too; the swarm finds the release race of
    docs/check.md (an AO error between release.munmap and release.close tells nobody) and
    its scenario replays."""
    out = tmp_path / "cex"
    code, doc = _run(capsys, "--swarm", "30", "--walk-depth", "20", "--races", "--policy",
                     "hugetlbfs", "--property", "early-told", "--out", str(out))
    v = doc["results"][0]["verdicts"]["early-told"]
    assert code == 1 and v["status"] == "FAIL" and v["depth"] == 2
    assert v["counterexample"][0].startswith("('release'")
    assert '"name": "release.munmap"' in Path(v["file"]).read_text()
    assert main(["run", v["file"]]) == 0, capsys.readouterr().out[-600:]
