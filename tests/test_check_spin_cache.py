"""Compiled pans are kept on disk: a later search of the same model skips spin and the C
compiler, a change of the model or of the flags compiles again, ``off`` keeps nothing, and the
least recently used pans go first."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from memfail.check.spin import runner

MODEL = "byte x;\ninit { do :: x < 3 -> x++ :: else -> break od }\n"
FLAGS = ["-O0", "-DSAFETY", "-DNOFAIR", "-DNOREDUCE", "-DBFS"]


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []
    real = runner._run

    def counting(cmd: list[str], cwd: Path, *a: Any, **k: Any) -> str:
        calls.append(cmd)
        return real(cmd, cwd, *a, **k)

    monkeypatch.setattr(runner, "_run", counting)
    return calls


def test_a_second_process_reads_the_pan_the_first_compiled(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compiles: list[list[str]]) -> None:
    monkeypatch.setenv("MEMFAIL_CACHE_DIR", str(tmp_path))
    first = runner._PanCache(disk=True).get(MODEL, FLAGS)
    assert first.is_relative_to(tmp_path / "spin-pan") and os.access(first, os.X_OK)
    assert len(compiles) == 2  # spin -a, cc
    assert sorted(p.name for p in first.parent.iterdir()) == ["model.pml", "pan"]
    compiles.clear()
    again = runner._PanCache(disk=True).get(MODEL, FLAGS)  # another process's cache object
    assert again == first and compiles == []
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(runner, "PAN_CACHE", runner._PanCache(disk=True))
    runner.compile_pan(work, MODEL, bitstate=False, opt="-O0")
    st = runner.run_pan(work, False, 0)
    assert st.complete and st.states > 0
    # another model, or other flags: compiled again, beside the first
    compiles.clear()
    other = runner._PanCache(disk=True).get(MODEL.replace("3", "4"), FLAGS)
    flags = runner._PanCache(disk=True).get(MODEL, [*FLAGS, "-DNOCOMP"])
    assert len({first, other, flags}) == 3 and len(compiles) == 4


def test_off_or_no_disk_keeps_the_pans_in_the_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compiles: list[list[str]]) -> None:
    monkeypatch.setenv("MEMFAIL_CACHE_DIR", "off")
    a = runner._PanCache(disk=True).get(MODEL, FLAGS)
    assert not a.is_relative_to(tmp_path) and "memfail-pan-" in str(a)
    monkeypatch.setenv("MEMFAIL_CACHE_DIR", str(tmp_path))
    b = runner._PanCache().get(MODEL, FLAGS)  # the tests' own caches: nothing on disk
    assert not (tmp_path / "spin-pan").exists() and b != a
    assert len(compiles) == 4


def test_the_least_recently_used_pans_are_removed_first(tmp_path: Path) -> None:
    for i in range(5):
        d = tmp_path / f"k{i}"
        d.mkdir()
        (tmp_path / f".k{i}.lock").touch()
        os.utime(d, (1000 + i, 1000 + i))
    os.utime(tmp_path / "k0", (2000, 2000))  # used last
    runner._prune(tmp_path, 3)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == \
        ["k0", "k3", "k4"]
    assert sorted(p.name for p in tmp_path.glob(".*.lock")) == [".k0.lock", ".k3.lock",
                                                                 ".k4.lock"]
