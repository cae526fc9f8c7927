"""RowCache: the canonical encoding with only changed rows re-encoded, on hand-made hosts.

The search-wide comparison (every host a search meets) is in test_check_model.py; here each
way the cache could go stale or miss a row is made to happen."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from memfail.check.encode import RowCache, host_encoding, plain_encoding


class VM:  # a keyed class by name (encode.KEYS: "VM" by its name)
    def __init__(self, name: str, pages: list[int]) -> None:
        self.name = name
        self.pages = pages
        self.peer: Any = None


class Slot:  # not keyed: encoded inline where it is met
    def __init__(self, vm: VM, gpa: int) -> None:
        self.vm = vm
        self.gpa = gpa


class Host:
    def __init__(self) -> None:
        a, b = VM("a", [1, 2]), VM("b", [3])
        a.peer = b
        self.vms = {"a": a}          # b is reached only through a.peer
        self.slots = [Slot(a, 0)]
        self.flags = {"x", "y"}
        self.count = 3
        self.trace = ["left out"]    # encode.SKIP


def same(rows: RowCache, h: Any) -> bytes:
    got = rows.encode(h)
    assert got == host_encoding(h) == plain_encoding(h)
    return got


def test_a_changed_row_is_encoded_again_and_the_rest_come_from_the_cache() -> None:
    rows = RowCache()
    h = Host()
    first = same(rows, h)
    assert b"VM'b'=VM(" in first  # a keyed object reached only through another one's field
    hits, misses = rows.hits, rows.misses
    assert same(rows, Host()) == first  # an equal host: every row from the cache
    assert rows.misses == misses and rows.hits > hits
    h.vms["a"].peer.pages.append(4)  # one field of one keyed object
    changed = same(rows, h)
    assert changed != first and rows.misses == misses + 1
    h.slots[0].vm = h.vms["a"].peer  # a reference that moves to another object
    assert same(rows, h) != changed
    h.flags = {"y", "x"}  # a set built in another order: the same row
    del h.vms["a"].peer.pages[-1], h.slots[0]
    h.slots.append(Slot(h.vms["a"], 0))
    assert same(rows, h) == first


def test_a_keyed_class_the_cache_did_not_know_is_learnt() -> None:
    rows = RowCache()
    rows._keyed = set()  # as if VM had not been loaded when the cache looked
    same(rows, Host())
    assert VM in rows._keyed and not rows._full


@dataclass
class Hidden:
    """A __canonical__ that leaves out a field naming a keyed object: the pickler meets the
    object, the encoder does not; the cache cannot follow and encodes in full."""

    vm: VM
    seen: list[int] = field(default_factory=list)

    def __canonical__(self) -> dict[str, object]:
        return {"seen": self.seen}


def test_a_field_the_encoder_leaves_out_turns_the_cache_off() -> None:
    rows = RowCache()
    h = Host()
    h.hidden = Hidden(VM("c", []))  # type: ignore[attr-defined]
    got = same(rows, h)
    assert b"VM'c'" not in got and rows._full
    same(rows, h)


def test_a_value_pickle_refuses_is_encoded_in_full() -> None:
    rows = RowCache()
    h = Host()
    h.hook = lambda: None  # type: ignore[attr-defined]
    same(rows, h)
    assert not rows._full  # only that host: the next one uses the cache again
    same(rows, Host())


@pytest.mark.parametrize("bound", [{"limit": 3}, {"limit_bytes": 1000}])
def test_the_cache_is_bounded(bound: dict[str, int]) -> None:
    rows = RowCache(**bound)
    h = Host()
    sizes = []
    for n in range(10):
        h.count = n
        h.vms["a"].pages = [n] * 50
        same(rows, h)
        sizes.append(len(rows._text))
        assert len(rows._text) <= 3 + 6  # emptied after a host that passed the bound
    assert 0 in sizes
