"""A canonical encoding of a Host's state, for 64-bit fingerprints.

Objects with a natural key (folio by pfn, process by pid, ...) are encoded once in a table and
referenced by key elsewhere, so the encoding depends on the state, not on how it was reached.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from enum import Enum
from typing import Any

from memfail.check.system import canonical_bytes

# Class name -> natural key. Shared or cyclic objects must have one.
KEYS: dict[str, Callable[[Any], Any]] = {
    "Folio": lambda o: (o.pfn, o.order),
    "Inode": lambda o: o.ino,
    "Process": lambda o: o.pid,
    "Thread": lambda o: o.tid,
    "MM": lambda o: o.id,
    "VMA": lambda o: (o.mm.id, o.start),
    "HState": lambda o: o.name,
}
# Host attributes that are not state: the trace (folded into the Monitor), static config.
SKIP = frozenset({"trace", "config", "geometry", "profile"})


class _Encoder:
    """Encodes to text: scalars by repr, dicts and sets sorted, keyed objects by reference."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self.table: dict[str, list[str]] = {}
        self.todo: list[Any] = []
        self.seen: set[int] = set()
        self.path: set[int] = set()

    def ref(self, o: Any, cls: str) -> str:
        if id(o) not in self.seen:
            self.seen.add(id(o))
            self.todo.append(o)
        return f"@{cls}{KEYS[cls](o)!r}"

    def enc(self, v: Any) -> str:
        if v is None or isinstance(v, bool | int | str | float | bytes):
            return repr(v)
        if isinstance(v, dict):
            enc = self.enc
            return "{" + ",".join(sorted([f"{enc(k)}:{enc(x)}" for k, x in v.items()])) + "}"
        if isinstance(v, list | tuple):
            return "[" + ",".join([self.enc(x) for x in v]) + "]"
        if isinstance(v, set | frozenset):
            return "<" + ",".join(sorted([self.enc(x) for x in v])) + ">"
        if isinstance(v, Enum):
            return repr(str(v))
        if v is self.root:
            return "@host"
        if isinstance(v, random.Random):
            return repr(v.getstate())
        cls = type(v).__name__
        if cls in KEYS:
            return self.ref(v, cls)
        if callable(v) and not hasattr(v, "__dict__"):
            return f"fn:{getattr(v, '__qualname__', cls)}"
        return self.fields(v, cls)

    def fields(self, v: Any, cls: str, skip: frozenset[str] = frozenset()) -> str:
        if id(v) in self.path:
            raise TypeError(f"cycle through {cls} objects: give {cls} a natural key in "
                            "memfail.check.encode.KEYS")
        self.path.add(id(v))
        attrs = getattr(v, "__dict__", None)
        if attrs is None:
            slots = getattr(type(v), "__slots__", ())
            attrs = {s: getattr(v, s) for s in slots if hasattr(v, s)}
        out = cls + "(" + ",".join([f"{k}={self.enc(x)}" for k, x in attrs.items()
                                    if k not in skip]) + ")"
        self.path.discard(id(v))
        return out

    def run(self) -> bytes:
        top = self.fields(self.root, type(self.root).__name__, SKIP)
        while self.todo:
            o = self.todo.pop()
            cls = type(o).__name__
            self.table.setdefault(f"{cls}{KEYS[cls](o)!r}", []).append(self.fields(o, cls))
        rows = sorted(f"{k}={';'.join(sorted(v))}" for k, v in self.table.items())
        return ("\n".join([top, *rows])).encode()


def host_encoding(host: Any) -> bytes:
    """Canonical bytes of the host's state (its own ``canonical()`` if it provides one)."""
    own = getattr(host, "canonical", None)
    if own is not None:
        value = own()
        return value if isinstance(value, bytes) else canonical_bytes(value)
    return _Encoder(host).run()
