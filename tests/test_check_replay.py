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
