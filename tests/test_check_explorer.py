"""The explorer on small systems with known answers: counts, shortest counterexamples, bounds,
workers, Dask, checkpoints, symmetry and partial-order reduction."""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memfail.check.backends import Backend, make_backend
from memfail.check.explorer import FAIL, PARTIAL, PASS, Bounds, Options, Result, explore
from memfail.check.system import System, canonical_bytes, fingerprint_bytes
from memfail.check.toys import CounterSystem, PoisonToy

ALL = Options(stop_when_all_fail=False)


def summary(r: Result) -> dict[str, Any]:
    """What must not depend on workers, backends or interruptions."""
    return {
        "states": r.states, "transitions": r.transitions, "depth": r.depth,
        "complete": r.complete, "stop": r.stop_reason,
        "verdicts": {n: (v.short(), v.message, v.labels) for n, v in r.verdicts.items()},
        "kinds": r.coverage.kinds_fired,
    }


def reachable(system: System) -> set[Any]:
    """Reference: plain BFS over the states themselves (no fingerprints)."""
    s0 = system.initial()
    seen, todo = {s0}, deque([s0])
    while todo:
        s = todo.popleft()
        for label in system.enabled(s):
            t = system.step(s, label)
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


def test_counter_counts_and_shortest_lexicographic_counterexample() -> None:
    r = explore(CounterSystem(2, 3), options=ALL)
    assert (r.states, r.transitions, r.complete) == (16, 24, True)
    v = r.verdicts["not-all-top"]
    assert (v.status, v.depth) == (FAIL, 6)
    assert v.labels == [("inc", 0)] * 3 + [("inc", 1)] * 3
    assert r.verdicts["first-below-top"].labels == [("inc", 0)] * 3
    assert r.coverage.kinds_never == ["dec"]


def test_pass_when_property_holds_everywhere() -> None:
    r = explore(PoisonToy(vms=2, errors=2, unmap=True), options=ALL)
    assert r.complete
    assert r.verdicts["contained"].status == PASS
    assert r.verdicts["no-consumption"].status == FAIL
    assert r.states == len(reachable(PoisonToy(vms=2, errors=2, unmap=True)))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 3), top=st.integers(1, 3))
def test_counter_state_count_matches_reference(n: int, top: int) -> None:
    sys = CounterSystem(n, top)
    r = explore(sys, options=ALL)
    assert r.states == (top + 1) ** n == len(reachable(sys))
    assert r.verdicts["not-all-top"].depth == n * top
    assert r.verdicts["first-below-top"].labels == [("inc", 0)] * top


@settings(max_examples=15, deadline=None)
@given(vms=st.integers(1, 3), errors=st.integers(0, 2), unmap=st.booleans())
def test_poison_toy_matches_reference(vms: int, errors: int, unmap: bool) -> None:
    sys = PoisonToy(vms, errors, unmap)
    r = explore(sys, options=ALL)
    assert r.states == len(reachable(sys))
    expect = FAIL if errors and not unmap else PASS
    assert r.verdicts["contained"].status == expect
    if expect == FAIL:
        assert r.verdicts["contained"].labels == [("error", 0), ("touch", 0), ("touch", 0)]


def replay_violates(system: System, labels: list[Any], prop: str) -> bool:
    s = system.initial()
    for label in labels:
        assert label in system.enabled(s)
        s = system.step(s, label)
    check = next(p for p in system.properties() if p.name == prop).check
    return check(s) is not None


def test_stop_when_all_fail_keeps_verdicts() -> None:
    r = explore(PoisonToy(3, 2))
    assert r.stop_reason == "all-failed" and not r.complete
    assert {v.status for v in r.verdicts.values()} == {FAIL}


def test_depth_bound_is_partial() -> None:
    r = explore(CounterSystem(2, 3), bounds=Bounds(max_depth=4), options=ALL)
    assert r.stop_reason == "depth" and not r.complete
    assert r.verdicts["first-below-top"].status == FAIL
    assert r.verdicts["not-all-top"].short() == "PARTIAL(depth)"


def test_time_and_memory_bounds_are_partial() -> None:
    r = explore(CounterSystem(2, 3), bounds=Bounds(max_seconds=0), options=ALL)
    assert r.verdicts["not-all-top"].status == PARTIAL and r.stop_reason == "time"
    r = explore(CounterSystem(2, 3), bounds=Bounds(max_memory_mb=1), options=ALL)
    assert r.verdicts["not-all-top"].short() == "PARTIAL(memory)"


def test_unknown_property_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown property nope; choose from"):
        explore(CounterSystem(), options=Options(properties=("nope",)))


def test_selected_properties_only() -> None:
    r = explore(CounterSystem(), options=Options(properties=("first-below-top",)))
    assert list(r.verdicts) == ["first-below-top"]


def test_collision_estimate() -> None:
    r = explore(CounterSystem(2, 3), options=ALL)
    assert r.collision_probability == pytest.approx(16**2 / 2**65)


def test_workers_give_identical_results() -> None:
    sys = PoisonToy(vms=3, errors=2)
    serial = summary(explore(sys, Backend(), options=Options(stop_when_all_fail=False,
                                                             chunk_size=3)))
    with make_backend(workers=2) as b:
        par = summary(explore(sys, b, options=Options(stop_when_all_fail=False, chunk_size=3)))
        bounded = summary(explore(sys, b, Bounds(max_states=20), ALL))
    assert par == serial
    assert bounded == summary(explore(sys, Backend(), Bounds(max_states=20), ALL))


def test_dask_cluster_gives_identical_results() -> None:
    distributed = pytest.importorskip("distributed")
    sys = PoisonToy(vms=3, errors=2)
    local = summary(explore(sys, options=ALL))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            make_backend(scheduler=cluster.scheduler_address) as b:
        assert b.workers == 2
        assert summary(explore(sys, b, options=ALL)) == local
        # A second system on the same client (a check of several policies).
        assert summary(explore(CounterSystem(2, 2), b, options=ALL)) == summary(
            explore(CounterSystem(2, 2), options=ALL))


def test_resume_after_interruption_reaches_same_result(tmp_path: Path) -> None:
    sys = PoisonToy(vms=3, errors=2)
    full = summary(explore(sys, options=ALL))
    opts = Options(stop_when_all_fail=False, checkpoint_dir=tmp_path, checkpoint_every=0)
    part = explore(sys, bounds=Bounds(max_states=15), options=opts)
    assert part.stop_reason == "states" and part.states < full["states"]
    assert list(tmp_path.glob("*.pickle"))
    assert not list(tmp_path.glob(".tmp-*"))
    resumed = explore(sys, options=Options(stop_when_all_fail=False, checkpoint_dir=tmp_path,
                                           resume=True))
    assert summary(resumed) == full
    # Resuming on two workers from a checkpoint written by one gives the same result too.
    with make_backend(workers=2) as b:
        again = explore(sys, b, options=Options(stop_when_all_fail=False,
                                                checkpoint_dir=tmp_path, resume=True))
    assert summary(again) == full


def test_symmetry_reduction_keeps_verdicts_and_replays_concretely() -> None:
    for vms, errors, unmap in ((3, 1, False), (3, 2, False), (3, 2, True)):
        sys = PoisonToy(vms, errors, unmap)
        plain = explore(sys, options=ALL)
        sym = explore(sys, options=Options(stop_when_all_fail=False, symmetry=True))
        assert sym.states < plain.states
        assert {n: v.short() for n, v in sym.verdicts.items()} == \
               {n: v.short() for n, v in plain.verdicts.items()}
        assert sym.states == len({sys.canonical(s) for s in reachable(sys)})
        for name, v in sym.verdicts.items():
            if v.status == FAIL:
                assert replay_violates(sys, v.labels, name)


def test_symmetry_needs_canonical() -> None:
    with pytest.raises(ValueError, match="canonical"):
        explore(CounterSystem(), options=Options(symmetry=True))


def test_partial_order_reduction_keeps_verdict_with_fewer_states() -> None:
    sys = CounterSystem(3, 3)
    only = ("first-below-top",)
    plain = explore(sys, options=Options(properties=only, stop_when_all_fail=False))
    por = explore(sys, options=Options(properties=only, stop_when_all_fail=False, por=True))
    assert por.states < plain.states
    assert por.verdicts["first-below-top"].status == plain.verdicts["first-below-top"].status
    # POR may lengthen the counterexample (documented), but it must still be a real one.
    assert replay_violates(sys, por.verdicts["first-below-top"].labels, "first-below-top")
    with make_backend(workers=2) as b:
        par = explore(sys, b, options=Options(properties=only, stop_when_all_fail=False,
                                              por=True))
    assert summary(par) == summary(por)


def test_canonical_bytes_ignore_dict_and_set_order() -> None:
    a = {"x": {3, 1, 2}, "y": (1, "a", None, True)}
    b = {"y": (1, "a", None, True), "x": {2, 3, 1}}
    assert canonical_bytes(a) == canonical_bytes(b)
    assert fingerprint_bytes(canonical_bytes(a)) != fingerprint_bytes(canonical_bytes([a]))
    with pytest.raises(TypeError, match="canonically"):
        canonical_bytes(object())


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("por", [False, True])
def test_successors_of_expanded_states_left_out_change_nothing(
        monkeypatch: pytest.MonkeyPatch, workers: int, por: bool) -> None:
    """A process leaves out the successors whose fingerprints are those of states it expanded
    in the same search (``expand._expanded``: the explorer drops them as visited); the
    results, counts and counterexamples are those of a search that sends every one back, and
    a second search on the same system object starts from nothing remembered."""
    from memfail.check import expand

    def run() -> list[dict[str, Any]]:
        system = PoisonToy(vms=2, errors=2, unmap=False)
        opts = Options(stop_when_all_fail=False, por=por)
        with make_backend(workers) as b:
            first = explore(system, b, Bounds(max_depth=4), opts)
            again = explore(system, b, Bounds(), opts)
        return [summary(first), summary(again)]

    left_out = run()
    kept = expand.ExpandOptions.__init__

    def no_search(self: expand.ExpandOptions, *args: Any, **kw: Any) -> None:
        kept(self, *args, **kw)
        object.__setattr__(self, "search", b"")

    monkeypatch.setattr(expand.ExpandOptions, "__init__", no_search)
    assert run() == left_out


def test_a_new_search_forgets_the_states_an_earlier_one_expanded() -> None:
    from memfail.check import expand

    one = expand._expanded_set(b"one")
    assert one is not None
    one.add(7)
    assert expand._expanded_set(b"one") is one
    two = expand._expanded_set(b"two")
    assert two == set() and b"one" not in expand._expanded
    assert expand._expanded_set(b"") is None
