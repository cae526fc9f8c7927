"""The checker's guest-behaviour events and the host-survives property (docs/mce.md M10):
verdicts and counterexamples as `memfail check --json` reports them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner

from memfail.check import cli
from memfail.scenario import load_scenario, run_scenario

CONFIG = """
name: hostile-guest
profile: next
policies: [minimum, unmap]
geometry: {pmd_order: 2, pud_order: 3}
host: {memory: 8G, hugepages: {2M: 4}}
processes:
  - {name: qemu0, threads: [main, vcpu0, vcpu1], mce_kill: {main: early, vcpu0: late, vcpu1: late}, sigbus: handler}
guest_memfd:
  - {name: gmem0, size: 2M, backing: 2M, flags: [mmap, init_shared]}
vms:
  - {name: vm0, vmm: qemu0, gmem: gmem0, vcpus: 2, behaviour: %s}
setup:
  - mce_config: {cpus: 64, stall_bound_us: 300}
events:
%s
properties: [host-survives]
bounds: {depth: 3, errors: 1}
"""

HOSTILE = """  - {event: hw_error, vm: vm0, page: 0}
  - {event: vcpu_access, vm: vm0, page: 0}
  - {event: guest_run, vm: vm0, page: 0, rounds: 2}"""

WINDOW = """  - {event: hw_error, vm: vm0, page: [0, 1]}
  - {event: vcpu_mce, vm: vm0, page: [0, 1], vcpu: 0}
  - {event: task_work, vm: vm0, vcpu: 0}"""


def _check(tmp_path: Path, config: str) -> tuple[int, dict[str, Any]]:
    path = tmp_path / "c.yaml"
    path.write_text(config)
    app = typer.Typer()
    app.command()(cli.check)
    r = CliRunner().invoke(app, [str(path), "--json", "--out", str(tmp_path / "cex")])
    assert r.exit_code in (0, 1), r.output
    doc: dict[str, Any] = json.loads(r.stdout)
    return r.exit_code, doc


def _verdict(doc: dict[str, Any], policy: str) -> Any:
    res = next(x for x in doc["results"] if x["policy"] == policy)
    return res["verdicts"]["host-survives"]


def test_hostile_guest_stalls_the_host_only_where_poison_stays_mapped(tmp_path: Path) -> None:
    code, doc = _check(tmp_path, CONFIG % ("hostile", HOSTILE))
    assert code == 1
    assert _verdict(doc, "minimum")["status"] == "FAIL"
    assert _verdict(doc, "unmap")["status"] == "PASS"
    cex = tmp_path / "cex" / "minimum--host-survives.yaml"
    r = run_scenario(load_scenario(cex))  # the counterexample replays: same stalls
    assert r.host_outcomes is not None and r.host_outcomes["host_stalled"] is True


def test_one_vcpu_cannot_take_two_pages_in_one_task_work_window(tmp_path: Path) -> None:
    """"Consecutive machine checks to different user pages" needs a thread to consume a
    second page before its task work runs. A vCPU runs its queued work before every guest
    entry (M8), so the checker, given both pages and no task_work in between, finds no path
    to that panic from guest-mode machine checks."""
    cfg = (CONFIG % ("cooperative", WINDOW)).replace("depth: 3, errors: 1", "depth: 4, errors: 2")
    _code, doc = _check(tmp_path, cfg.replace("policies: [minimum, unmap]", "policies: [unmap]"))
    v = _verdict(doc, "unmap")
    assert "Consecutive machine checks" not in json.dumps(v)
    assert v["status"] in ("PASS", "PARTIAL"), v
