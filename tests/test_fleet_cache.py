"""The fleet's model runs are kept on disk: a second fleet run reuses them, with the same
answers, and concurrent writers never leave a torn file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memfail.fleet.cache import RunCache, cache_dir, default_dir, model_version
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
    # every user of the cache (fleet, search, report, spin's pans) asks cache_dir(): "off",
    # from --cache-dir or the environment, is no cache, never a directory named "off"
    assert cache_dir() == tmp_path / "xdg" / "memfail"
    assert cache_dir(tmp_path / "b") == tmp_path / "b"
    assert cache_dir(Path("off")) is None
    monkeypatch.setenv("MEMFAIL_CACHE_DIR", "off")
    assert cache_dir() is None and cache_dir(tmp_path / "b") == tmp_path / "b"


def test_policies_whose_names_differ_late_or_in_odd_characters_keep_their_own_files(
        tmp_path: Path) -> None:
    """Inline policies are named by their knobs (``mainline{handles_hugetlb=false, ...}``):
    two that differ only past the hundredth character, or only in a character a file name
    cannot hold, must not share a file (each would read the other's runs)."""
    head = "mainline{" + ", ".join(f"knob{i}=value" for i in range(12))
    names = [head + ", last=a}", head + ", last=b}", "x{a=b}", "x_a_b_", "minimum"]
    c = RunCache(tmp_path)
    for i, n in enumerate(names):
        c.put("p", n, "k", {"host_panic": i})
    c.save()
    again = RunCache(tmp_path)
    assert [again.get("p", n, "k") for n in names] == [{"host_panic": i}
                                                      for i in range(len(names))]
    files = {p.name for p in (tmp_path / "fleet-model").rglob("*.json")}
    assert len(files) == len(names) and "minimum.json" in files
    assert all(len(f) <= 120 for f in files)


def test_a_search_reads_the_fleet_runs_a_first_search_left(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """``memfail search`` runs its candidates through the fleet's model oracle with the
    on-disk cache, under the name ``memfail fleet --policy`` gives the same knobs: a second
    search (or a fleet run of that policy) runs no model."""
    from memfail.fleet import oracle
    from memfail.model.policy.registry import PRESETS, policy_text
    from memfail.search.engine import fleet_task
    from memfail.search.space import policy_spec

    runs: list[str] = []
    real = oracle._model_runner

    def counting(profile: str, policy: str, sc: object) -> object:
        runs.append(policy)
        return real(profile, policy, sc)  # type: ignore[arg-type]

    monkeypatch.setattr(oracle, "_model_runner", counting)
    monkeypatch.setenv("MEMFAIL_CACHE_DIR", str(tmp_path))
    spec = policy_spec({**PRESETS["minimum"].knobs(), "unmap_host": "none"})
    text = policy_text({k: v for k, v in spec.items() if k != "name"})
    first = fleet_task(("linux-6.18", spec, [CLS, SCRUB]))
    assert runs and set(runs) == {text}
    runs.clear()
    assert fleet_task(("linux-6.18", spec, [CLS, SCRUB])) == first
    assert runs == []
    # the same knobs under `memfail fleet --policy TEXT` read the same runs
    fleet = ModelOracle("linux-6.18", cache_dir=tmp_path)
    assert [fleet.outcome(text, c) for c in (CLS, SCRUB)] == first and runs == []
    monkeypatch.setenv("MEMFAIL_CACHE_DIR", "off")
    assert fleet_task(("linux-6.18", spec, [CLS, SCRUB])) == first
    assert runs, "MEMFAIL_CACHE_DIR=off runs the model"
