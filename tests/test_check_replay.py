"""Every counterexample `memfail check` emits replays under `memfail run` with exit status 0.

The standard configuration, every policy, depth 3 (every violation the standard configuration
has within three steps: panics, re-consumed poison, untold EARLY threads, stray SIGBUS).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memfail.check.config import standard_config
from memfail.cli import main

DEPTH = 3


def test_every_emitted_counterexample_replays(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cex"
    rc = main(["check", "--max-depth", str(DEPTH), "--workers", "2", "--json",
               "--out", str(out)])
    doc = json.loads(capsys.readouterr().out)
    assert rc == (1 if doc["failed"] else 0)
    assert [r["policy"] for r in doc["results"]] == list(standard_config().policies)
    expected = {v["file"] for r in doc["results"] for v in r["verdicts"].values()
                if v["status"] == "FAIL"}
    assert None not in expected  # every violation got a file
    files = {str(p) for p in out.glob("*.yaml")}
    assert files == expected and files, "one scenario per policy and violated property"
    for r in doc["results"]:
        for name, v in r["verdicts"].items():
            if v["status"] == "FAIL":
                assert Path(v["file"]).name == f"{r['policy']}--{name}.yaml"
                assert Path(v["file"]).with_suffix(".trace.txt").exists()
    failed = []
    for f in sorted(files):
        code = main(["run", f])
        if code != 0:
            failed.append((Path(f).name, code, capsys.readouterr().out[-400:]))
        capsys.readouterr()
    assert not failed, f"counterexamples that do not replay: {failed}"


ONE_G = """\
policies: [mainline, minimum]
geometry: {pmd_order: 2, pud_order: 3}
host: {memory: 64M, hugepages: {1G: 1}}
processes:
  - {name: qemu0, threads: [main], sigbus: handler, mce_kill: {main: early}}
guest_memfd:
  - {name: g0, size: 1G, backing: 1G, flags: [mmap, init_shared]}
vms:
  - {name: vm0, type: sw-protected, vmm: qemu0, vcpus: 1, gmem: g0}
events:
  - {event: hw_error, vm: vm0, page: 1, detect: [latent, scrub]}
  - {event: vcpu_access, vm: vm0, page: 1}
  - {event: punch_hole, vm: vm0, page: 0, pages: 8, limit: 1}
  - {event: realloc, vm: vm0, page: 0, pages: 8, limit: 1}
bounds: {depth: 4, errors: 1}
"""


def test_counterexamples_of_a_scaled_1g_pool_replay(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A check of a scaled 1G guest_memfd (a "1G" page is 2^pud_order pages of 4 KiB) on a
    64M host writes scenarios whose pool is that scaled page, which `memfail run` loads (the
    scenario's pool is measured in its geometry, not as 1 GiB) and replays with exit 0."""
    cfg = tmp_path / "one-g.yaml"
    cfg.write_text(ONE_G)
    out = tmp_path / "cex"
    assert main(["check", str(cfg), "--out", str(out), "--json"]) == 1
    capsys.readouterr()
    files = sorted(out.glob("*.yaml"))
    assert files
    for f in files:
        assert main(["run", str(f)]) == 0, capsys.readouterr().out[-400:]
        capsys.readouterr()


def test_a_real_1g_pool_must_fit_the_host(tmp_path: Path) -> None:
    """Without a scaled geometry a "1G" huge page is 1 GiB: two of them do not fit 1G."""
    from memfail.scenario.errors import ScenarioError
    from memfail.scenario.loader import load_scenario_text

    with pytest.raises(ScenarioError, match="hugepages need 2G but host memory is 1G"):
        load_scenario_text("host: {memory: 1G, hugepages: {1G: 2}}\nsteps: [{meminfo: {}}]\n")
    load_scenario_text("host: {memory: 64M, hugepages: {1G: 2}, geometry: {pmd_order: 2, "
                       "pud_order: 3}}\nsteps: [{meminfo: {}}]\n")
