"""The short cuts a model run takes for speed give what the long way gives.

* ``base_pages``: the 4K folios of a HugeTLB guest_memfd split, built without the dataclass
  __init__, are the folios ``Folio(...)`` builds, field for field, in the same order, with the
  same pickle.
* ``young_garbage_only``: a run's reference cycles are freed when the block ends, the collector
  is back on, and a block inside another (or under a collector already off) changes nothing.
* ``stall_outcomes``: the two figures a fleet run asks for in the middle of a run are those
  ``compute_outcomes`` gives.
* ``_failed_pfns``: the folio's failed pages, found with one bisection when there are none.
* ``kvm._one_attribute``: a huge SPTE's range has one memory attribute, found from the shorter
  of the range and the VM's private set (a 1G range is 262,144 gfns), as counting says.
* ``Trace.of``: the events of a kind, kept per kind and extended as events are appended,
  are those a scan of the whole trace finds, also after the checker assigns a new list.

The fleet's figures themselves stay byte-identical (``memfail fleet --json`` of every policy
before and after; tests/test_fleet*.py hold the figures).
"""

from __future__ import annotations

import dataclasses
import gc
import pickle
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memfail.check.encode import plain_encoding
from memfail.model import outcomes
from memfail.model.garbage import young_garbage_only
from memfail.model.kernel.mem import HUGETLB, Folio, base_pages
from memfail.model.kvm import gmem, kvm
from memfail.model.trace import Event, MemoryFailureCall, PoisonConsumed, PolicyEvent, Trace
from memfail.scenario.errors import ScenarioError
from memfail.scenario.loader import library, load_scenario
from memfail.scenario.runner import run_scenario


class _Mapping:
    """Stands in for an inode (shared by every folio, as the split's inode is)."""

    ino = 7


def _slow(n: int, mapping: Any) -> list[Folio]:
    out = []
    for i in range(n):
        f = Folio(pfn=0x200 + i, order=0, kind=HUGETLB, flags={"uptodate", "gmem_sub"},
                  mapping=mapping, index=16 + i, owner="vm0.gmem")
        f.get("pagecache")
        f.refs["mf"] += 0
        out.append(f)
    return out


@contextmanager
def _hosts_kept() -> Iterator[list[Any]]:
    """Every host whose outcomes are computed inside the block (a run's host at its end)."""
    hosts: list[Any] = []
    real = outcomes.compute_outcomes

    def keep(host: Any) -> dict[str, Any]:
        hosts.append(host)
        return real(host)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(outcomes, "compute_outcomes", keep)
        yield hosts


def test_base_pages_are_the_folios_the_dataclass_builds() -> None:
    m = _Mapping()
    slow = _slow(4, m)
    fast = base_pages(0x200, 16, 4, HUGETLB, gmem._SUB_FLAGS, m,  # type: ignore[arg-type]
                      "vm0.gmem", gmem._SUB_REFS)
    names = [f.name for f in dataclasses.fields(Folio)]
    for a, b in zip(slow, fast, strict=True):
        assert type(b) is Folio and type(b.refs) is type(a.refs)
        assert list(vars(b)) == list(vars(a)) == names  # a new field must be added to both
        assert vars(b) == vars(a)
        assert list(b.refs.items()) == list(a.refs.items()) == [("pagecache", 1), ("mf", 0)]
        assert b.flags is not fast[0].flags or b is fast[0]  # each its own set
    assert pickle.dumps(fast) == pickle.dumps(slow)


def test_a_split_gives_the_folios_the_dataclass_builds_in_a_run() -> None:
    """A conversion to shared splits the HugeTLB folio (R87): the host's 4K folios encode as
    those the dataclass path makes (the checker's canonical encoding of every field)."""
    text = """
name: split
profile: next
policy: future
host: {memory: 8G, hugepages: {2M: 4}}
processes:
  - {name: qemu, threads: [main, vcpu0], sigbus: handler}
steps:
  - vm_create: {vm: vm0, vmm: qemu, type: tdx, vcpus: 1}
  - gmem_create: {vm: vm0, fd: gmem, size: 2M, flags: [mmap], backing: 2M}
  - mmap: {proc: qemu, name: ram, size: 2M, fd: gmem, shared: true}
  - memslot: {vm: vm0, gpa: 0, size: 2M, gmem: gmem, hva: ram}
  - guest_access: {vm: vm0, gpa: 0, op: write}
  - set_attributes: {vm: vm0, gpa: 0, size: 4K, private: false}
"""
    from memfail.scenario.loader import load_scenario_text

    with _hosts_kept() as hosts:
        r = run_scenario(load_scenario_text(text))
    assert r.host_outcomes is not None and hosts
    host = hosts[-1]
    subs = sorted((f for f in host.phys.folios.values() if "gmem_sub" in f.flags),
                  key=lambda f: f.pfn)
    assert len(subs) == 512
    inode = subs[0].mapping
    again = _slow(512, inode)
    for f, g in zip(subs, again, strict=True):
        g.pfn, g.index, g.owner = f.pfn, f.index, f.owner
        g.refs = type(f.refs)(f.refs)  # the run may have taken references since
        g.rmap, g.raw_hwp, g.flags = dict(f.rmap), list(f.raw_hwp), set(f.flags)
        assert list(vars(f)) == list(vars(g))
    assert plain_encoding(subs) == plain_encoding(again)


def test_young_garbage_only_frees_the_cycles_made_inside() -> None:
    class Node:
        other: Any = None

    assert gc.isenabled()
    with young_garbage_only():
        assert not gc.isenabled()
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle refcounting never frees
        gone = weakref.ref(a)
        del a, b
        assert gone() is not None
    assert gc.isenabled()
    assert gone() is None


def test_young_garbage_only_nested_or_under_a_collector_already_off() -> None:
    with young_garbage_only():
        with young_garbage_only():
            pass
        assert not gc.isenabled()  # the inner block did not turn it back on
    assert gc.isenabled()
    gc.disable()
    try:
        with young_garbage_only():
            pass
        assert not gc.isenabled()  # left as the caller had it
    finally:
        gc.enable()


def _library_hosts(policies: tuple[str, ...]) -> list[Any]:
    """The host at the end of every library scenario under each of ``policies``."""
    with _hosts_kept() as hosts:
        for path in library().values():
            sc = load_scenario(path)
            for pol in policies:
                try:
                    run_scenario(sc, policy_override=pol)
                except ScenarioError:  # a feature the scenario's profile lacks: no host
                    continue
    return hosts


@pytest.fixture(scope="module")
def hosts() -> list[Any]:
    return _library_hosts(("mainline", "minimum", "future"))


def test_stall_outcomes_are_those_compute_outcomes_gives(hosts: list[Any]) -> None:
    seen = {"host_stall_us": False, "repeated_consumptions": False}
    for host in hosts:
        full = outcomes.compute_outcomes(host)
        short = outcomes.stall_outcomes(host)
        assert short == {k: full[k] for k in short}
        for k in seen:
            seen[k] |= bool(short[k])
    assert all(seen.values()), seen  # the library has runs where both are not zero


def test_failed_pfns_is_its_definition_on_every_folio(hosts: list[Any]) -> None:
    """``_failed_pfns`` (one bisection for a folio with nothing failed) gives, for every folio
    of every host, the pages of the folio in ``_known_bad`` or its raw list, sorted."""
    empty = found = 0
    for host in hosts:
        bad = outcomes._known_bad(host)
        for inode in host.inodes:
            for f in inode.pages.values():
                lo, hi = f.pfn, f.pfn + f.nr_pages
                want = sorted({p for p in bad if lo <= p < hi}
                              | {p for p in f.raw_hwp if lo <= p < hi})
                got = outcomes._failed_pfns(f, bad)
                assert got == want, (hex(f.pfn), f.order)
                found += bool(got)
                empty += not got
    assert empty and found


@settings(max_examples=300, deadline=None)
@given(st.sets(st.integers(0, 40)), st.integers(0, 5), st.integers(0, 40), st.booleans())
def test_one_attribute_is_counting_the_private_gfns(private: set[int], order: int, at: int,
                                                    want_private: bool) -> None:
    """``install_spte``'s test, as it was written: count the private gfns of the range and
    compare with all (a private access) or none (a shared one)."""
    n = 1 << order
    head = at & ~(n - 1)
    last = head + n - 1
    inside = sum(1 for g in private if head <= g <= last)
    assert kvm._one_attribute(private, head, last, want_private) == \
        (inside == (n if want_private else 0))


def _plain_of(trace: Trace, kind: type[Event]) -> list[Any]:
    return [e for e in trace.events if isinstance(e, kind)]


def test_trace_of_follows_appends_and_a_new_list() -> None:
    t = Trace()
    kinds: tuple[type[Event], ...] = (Event, MemoryFailureCall, PoisonConsumed, PolicyEvent)
    made = [MemoryFailureCall(step=0, pfn=1, flags=(), ret=0, ret_name="0", via="madvise"),
            PolicyEvent(step=0, policy="p", hook="split", what="w"),
            PoisonConsumed(step=1, pfn=2, by="vm0", mode="guest"),
            MemoryFailureCall(step=2, pfn=3, flags=(), ret=0, ret_name="0", via="madvise")]
    for e in made:
        for k in kinds:
            assert t.of(k) == _plain_of(t, k)
        t.emit(e)
    for k in kinds:
        got = t.of(k)
        assert got == _plain_of(t, k)
        got.clear()  # the caller's list: the kept one is not touched
        assert t.of(k) == _plain_of(t, k)
    t.events = [made[1]]  # as the checker does after each step
    for k in kinds:
        assert t.of(k) == _plain_of(t, k)
    t.events = []
    t.emit(made[3])
    assert t.of(MemoryFailureCall) == [made[3]]
    assert t.of(MemoryFailureCall, step=2) == [made[3]]
    assert t.of(MemoryFailureCall, step=0) == []
