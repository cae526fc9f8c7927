"""The comparison as a user reads it: fitted to 80 columns without cutting a name, every code
explained, a verdict per policy; inline and varied policies; readings that change cells."""

from __future__ import annotations

import json

import pytest

from memfail.cli import main
from memfail.model.policy.registry import PRESETS

SCENS = ["--scenario", "vm-punch-reuse-2m", "--scenario", "vm-hugetlbfs-1g-second-error",
         "--scenario", "vm-private-consumed-4k"]


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    rc = main(["compare", *args])
    return rc, capsys.readouterr().out


@pytest.mark.parametrize("width", ["80", "200"])
def test_fits_the_width_and_explains_itself(width: str, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", width)
    rc, out = _run(capsys, *SCENS, "--no-readings", "-j", "1")
    assert rc == 0
    assert max(len(line) for line in out.splitlines()) <= int(width)
    for s in ("vm-punch-reuse-2m", "vm-hugetlbfs-1g-second-error", "vm-private-consumed-4k"):
        assert s in out  # never cut
    for word in ("host panic", "VM killed", "re-consumed", "handed out again",
                 "wrong-process SIGBUS", "record lost", "EARLY VMM not told", "vMCE",
                 "does not apply"):
        assert word in out
    verdicts = out[out.index("Verdicts"):]
    for p in PRESETS:
        assert f"\n{p}: " in verdicts
    if width == "200":
        assert all(p in out.splitlines()[2] for p in PRESETS)  # full names in the header


def test_inline_policy_and_vary(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _run(capsys, "--scenario", "vm-punch-reuse-2m", "--no-readings", "--json",
                   "--policy", "{base: minimum, sigbus_addr: none}",
                   "--vary", "mark_on_truncate", "-j", "1")
    assert rc == 0
    doc = json.loads(out)
    assert doc["policies"] == ["minimum{sigbus_addr=none,mark_on_truncate=true}",
                               "minimum{sigbus_addr=none}"]
    cells = {c["policy"]: c for c in doc["cells"]}
    # C4 read as "mark at release only": the punched folio returns to HugeTLB unmarked
    assert cells["minimum{sigbus_addr=none}"]["outcomes"]["poison_handed_out"] >= 1
    assert cells["minimum{sigbus_addr=none,mark_on_truncate=true}"]["outcomes"][
        "poison_handed_out"] == 0


def test_readings_that_change_cells_are_computed(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = _run(capsys, "--scenario", "vm-punch-reuse-2m", "--policy", "minimum", "--json",
                   "-j", "1")
    assert rc == 0
    sens = json.loads(out)["readings_that_change_cells"]["minimum"]
    assert "mark_on_truncate=true" in sens
    assert "sigbus_addr=none" in sens  # QEMU exits on a NULL si_addr (Q4)
    assert "propagate_on_split=true" not in sens  # nothing splits in this scenario


def test_bad_inline_policy_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["compare", "--policy", "{base: minimum, bogus: 1}"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "bogus" in err
