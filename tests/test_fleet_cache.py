"""The fleet's model runs are kept on disk: a second fleet run reuses them, with the same
answers, and concurrent writers never leave a torn file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memfail.fleet.cache import RunCache, default_dir, model_version
from memfail.fleet.classes import FailureClass
from memfail.fleet.oracle import ModelOracle

CLS = FailureClass("gmem_private", "default", 8, "2M", 1, True, False, "guest_read", True)
SCRUB = FailureClass("gmem_private", "default", 8, "2M", 1, True, False, "scrub", True)


def test_second_oracle_reads_the_runs_of_the_first(tmp_path: Path) -> None:
    first = ModelOracle("linux-6.18", cache_dir=tmp_path)
    a = [first.outcome(p, c) for p in ("minimum", "unmap") for c in (CLS, SCRUB)]
    assert first.disk_hits == 0
    first.save()
    files = sorted(p.name for p in (tmp_path / "fleet-model" / model_version()).rglob("*.json"))
    assert files == ["minimum.json", "unmap.json"]
    second = ModelOracle("linux-6.18", cache_dir=tmp_path)
    second.runner = None  # type: ignore[assignment]  # a model run now would fail
    b = [second.outcome(p, c) for p in ("minimum", "unmap") for c in (CLS, SCRUB)]
    assert b == a and second.disk_hits == 4
    uncached = ModelOracle("linux-6.18", cache_dir=None)
    assert [uncached.outcome(p, c) for p in ("minimum", "unmap") for c in (CLS, SCRUB)] == a


def test_concurrent_writers_merge_and_a_torn_file_is_empty(tmp_path: Path) -> None:
    x, y = RunCache(tmp_path), RunCache(tmp_path)
    x.put("p", "minimum", "k1", {"host_panic": 0})
    y.put("p", "minimum", "k2", {"host_panic": 1})
    x.save()
    y.save()
    z = RunCache(tmp_path)
    assert z.get("p", "minimum", "k1") == {"host_panic": 0}
    assert z.get("p", "minimum", "k2") == {"host_panic": 1}
    path = next((tmp_path / "fleet-model").rglob("minimum.json"))
    path.write_text('{"torn": ')
    assert RunCache(tmp_path).get("p", "minimum", "k1") is None
    assert not list(path.parent.glob(".tmp-*"))
    json.loads(json.dumps(z.get("p", "minimum", "k2")))


def test_cache_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEMFAIL_CACHE_DIR", str(tmp_path / "a"))
    assert default_dir() == tmp_path / "a"
    monkeypatch.delenv("MEMFAIL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_dir() == tmp_path / "xdg" / "memfail"
