"""Hosts the search drops are freed at once, and the labels that change the Host run last
(docs/check.md, "Speed": "Copies the search drops" and "Order of work").

A Host is a graph of reference cycles, so every copy a search drops (a successor equal to a
state it has, a state compacted to its snapshot, the working copy after the last label) was
freed by the cyclic collector only, which traversed it, often more than once. ``thaw_owned``
lists the objects a copy was rebuilt with and ``release`` clears their attributes, which
leaves nothing for the collector. Held here: what is listed and cleared, that a search's
dropped copies leave the collector (almost) nothing, that neither change any figure of the
search, and that running the labels that changed the Host last saves copies. That released
hosts are never used again is also held by every search in tests/test_check_golden.py (a
released object has no attributes: a use raises).
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from memfail.check import freeze, model_system
from memfail.check.config import standard_config
from memfail.check.explorer import Bounds, Options, Result, explore
from memfail.check.model_system import ModelSystem
from memfail.model.garbage import rare_collections

LIMIT = 300  # states per search (the search stops at the end of the level that reaches it)


def _search(policy: str = "mainline") -> tuple[ModelSystem, Result]:
    cfg = standard_config()
    system = ModelSystem(cfg, policy)
    return system, explore(system, bounds=Bounds(max_depth=cfg.bounds.depth, max_states=LIMIT),
                           options=Options(stop_when_all_fail=False))


def _figures(r: Result) -> tuple[Any, ...]:
    return (r.states, r.transitions, r.depth, r.complete, r.coverage,
            {n: (v.status, v.depth, v.message, v.labels) for n, v in r.verdicts.items()})


@pytest.fixture
def collector_off() -> Iterator[None]:
    """The cyclic collector off for the test (what it finds is what the test counts)."""
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _reachable_model_objects(host: Any) -> list[Any]:
    """Every object of a memfail class reachable from ``host`` through instance attributes
    and containers (the primer's static objects left out)."""
    static = {id(getattr(host, name, None)) for name in freeze.STATIC}
    out: list[Any] = []
    seen: set[int] = set()
    stack = [host]
    while stack:
        o = stack.pop()
        if id(o) in seen or id(o) in static or isinstance(o, type):
            continue
        seen.add(id(o))
        if type(o).__module__.startswith("memfail.") and hasattr(o, "__dict__"):
            out.append(o)
            stack.extend(vars(o).values())
        elif isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
    return out


def test_thaw_owned_lists_the_model_objects_it_made() -> None:
    system = ModelSystem(standard_config(), "mainline")
    blob = system.initial().frozen()
    host, owned = freeze.thaw_owned(blob)
    assert owned is not None
    ids = {id(o) for o in owned}
    reachable = _reachable_model_objects(host)
    assert host in owned
    assert {type(o).__name__ for o in reachable} >= {"Host", "Folio", "Process", "MM", "VM"}
    missing = [type(o).__name__ for o in reachable if id(o) not in ids]
    assert not missing, f"made by the thaw but not listed: {missing}"
    for name in freeze.STATIC:  # the primer's, shared by every copy: never released
        assert id(getattr(host, name)) not in ids, name
    assert not any(isinstance(o, type) for o in owned)
    assert all(type(o).__module__.startswith("memfail.") for o in owned)


def test_a_released_host_is_freed_without_the_collector(collector_off: None) -> None:
    system = ModelSystem(standard_config(), "mainline")
    blob = system.initial().frozen()

    def dropped(release: bool) -> bool:
        host, owned = freeze.thaw_owned(blob)
        assert owned is not None
        ref = weakref.ref(host)
        if release:
            freeze.release(owned)
        del host, owned
        return ref() is None

    assert not dropped(release=False)  # a Host is a graph of cycles: refcounts do not free it
    assert dropped(release=True)
    # and a state releases its own host: the snapshot stays, a new copy is made from it
    state = system.initial()
    state = model_system.ModelState(None, state.counts, state.errors, state.monitor,
                                    blob=blob, primer=state.primer)
    ref = weakref.ref(state.host)
    state.release()
    assert ref() is None and state.frozen() == blob
    assert freeze.thaw(blob) is not None and state.host is not None


def test_a_search_leaves_the_collector_almost_nothing(collector_off: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _, released = _search()
    left_released = gc.collect()
    monkeypatch.setattr(freeze, "release", lambda objects: None)
    monkeypatch.setattr(model_system, "release", lambda objects: None)
    _, kept = _search()
    left_kept = gc.collect()
    assert _figures(released) == _figures(kept)
    # without release every dropped copy (hundreds of objects each) is the collector's
    assert left_kept > 50_000
    assert left_released < left_kept / 20, (left_released, left_kept)


def test_the_labels_that_changed_the_host_run_last(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each label that changes the Host leaves the next one a fresh copy to make: run last,
    the ones that changed it the previous time cost fewer copies, and the search's figures
    are the same as in the labels' own order."""
    copies = [0]
    real = model_system.thaw_owned

    def counting(blob: bytes) -> Any:
        copies[0] += 1
        return real(blob)

    monkeypatch.setattr(model_system, "thaw_owned", counting)
    _, ordered = _search()
    ordered_copies, copies[0] = copies[0], 0
    monkeypatch.setattr(model_system, "_rank", lambda item: item[1])  # the labels' order
    _, in_order = _search()
    assert _figures(ordered) == _figures(in_order)
    assert ordered_copies < copies[0] * 0.97, (ordered_copies, copies[0])


def test_successors_are_given_in_the_labels_order() -> None:
    system = ModelSystem(standard_config(), "mainline")
    s = system.initial()
    labels = list(system.enabled(s))
    got = list(system.successors(s, labels))
    again = list(system.successors(s, list(reversed(labels))))  # every step remembered now
    for label, a, b in zip(labels, got, reversed(again), strict=True):
        fresh = system.step(s, label)
        assert system.fingerprint(a) == system.fingerprint(fresh) == system.fingerprint(b)
        assert a.events == b.events and a.inflight == fresh.inflight, label


def test_rare_collections_sets_the_threshold_and_puts_it_back() -> None:
    before = gc.get_threshold()
    with rare_collections(before[0] + 5000):
        assert gc.get_threshold() == (before[0] + 5000, *before[1:])
        with rare_collections(10):  # never lowers it
            assert gc.get_threshold()[0] == before[0] + 5000
        assert gc.get_threshold()[0] == before[0] + 5000
    assert gc.get_threshold() == before
