"""A canonical encoding of a Host's state, for 64-bit fingerprints.

Objects with a natural key (folio by pfn, process by pid, ...) are encoded once in a table and
referenced by key elsewhere, so the encoding depends on the state, not on how it was reached.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from enum import Enum
from types import FunctionType
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
    "VM": lambda o: o.name,
}
# Host attributes that are not state: the trace (folded into the Monitor), static config.
SKIP = frozenset({"trace", "config", "geometry", "profile"})
# Attributes of other classes that only an observation reads and no property or enabled
# event depends on: PhysMem.pcp (which free frames sit on a per-CPU list, so that
# /proc/kpageflags shows no BUDDY for them). Left out so that two states differing only
# there are one state, as before they were recorded.
TRANSIENT: dict[str, frozenset[str]] = {"PhysMem": frozenset({"pcp"})}


_FROZEN: dict[Any, str] = {}  # encodings of frozen dataclass values (policies), by value


def _all_ints(v: Any) -> bool:
    for x in v:  # noqa: SIM110 - a loop is faster than all() over a generator
        if type(x) is not int:
            return False
    return True


def _all_strs(v: Any) -> bool:
    for x in v:  # noqa: SIM110 - a loop is faster than all() over a generator
        if type(x) is not str:
            return False
    return True


class _PlainEncoder:
    """The definition of the encoding: scalars by repr, dicts and sets sorted, keyed objects
    by reference. ``_Encoder`` must give the same bytes for every host (tests compare them).

    Fast paths (same text whatever the history): sets and lists of ints, dicts whose keys are
    all ints or all strings (sorted by key), frozen dataclasses cached by value, a Random by
    the hash of its state words (ints only: the same in every process)."""

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
        t = type(v)
        if t is int:
            return str(v)
        if t is str or v is None or t is bool or t is float or t is bytes:
            return repr(v)
        if t is dict or t is Counter:
            if not v:
                return "{}"
            enc = self.enc
            keys = list(v)
            kt = type(keys[0])
            if (kt is int or kt is str) and all(type(k) is kt for k in keys):
                keys.sort()
                return "{" + ",".join([f"{k!r}:{enc(v[k])}" for k in keys]) + "}"
            return "{" + ",".join(sorted([f"{enc(k)}:{enc(x)}" for k, x in v.items()])) + "}"
        if t is list or t is tuple:
            if _all_ints(v):
                return "[" + ",".join(map(str, v)) + "]"
            return "[" + ",".join([self.enc(x) for x in v]) + "]"
        if t is set or t is frozenset:
            if _all_ints(v):
                return "<" + ",".join(map(str, sorted(v))) + ">"
            if _all_strs(v):
                return "<" + ",".join(map(repr, sorted(v))) + ">"
            return "<" + ",".join(sorted([self.enc(x) for x in v])) + ">"
        if isinstance(v, Enum):
            return repr(str(v))
        if isinstance(v, bool | int | str | float | bytes):
            return repr(v)
        if isinstance(v, dict):
            return self.enc(dict(v))
        if isinstance(v, list | tuple):
            return self.enc(list(v))
        if isinstance(v, set | frozenset):
            return self.enc(set(v))
        if v is self.root:
            return "@host"
        if isinstance(v, random.Random):
            version, words, gauss = v.getstate()
            # hash() of a tuple of ints is the same in every process (hash(None) is not)
            return f"rng({version},{hash(words)},{gauss!r})"
        cls = t.__name__
        if cls in KEYS:
            return self.ref(v, cls)
        if t is FunctionType or (callable(v) and not hasattr(v, "__dict__")):
            return f"fn:{getattr(v, '__qualname__', cls)}"
        canon = getattr(t, "__canonical__", None)
        if canon is not None:  # the object says which of its fields are state
            return cls + self.enc(canon(v))
        params = getattr(t, "__dataclass_params__", None)
        if params is not None and params.frozen:
            try:
                got = _FROZEN.get(v)
            except TypeError:  # an unhashable field: encode it every time
                return self.fields(v, cls)
            if got is None:
                got = _FROZEN[v] = self.fields(v, cls)
            return got
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
        skip = skip or TRANSIENT.get(cls, skip)
        enc = self.enc
        if skip:
            out = cls + "(" + ",".join([f"{k}={enc(x)}" for k, x in attrs.items()
                                        if k not in skip]) + ")"
        else:
            out = cls + "(" + ",".join([f"{k}={enc(x)}" for k, x in attrs.items()]) + ")"
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


_INT, _REPR, _DICT, _LIST, _SET, _OTHER = range(6)
# How ``_PlainEncoder.enc`` treats a value, by its type alone (builtins; other types are
# added on first sight by ``_route``). _OTHER: decided per value, as ``_PlainEncoder`` does.
_ROUTES: dict[type, int] = {int: _INT, str: _REPR, type(None): _REPR, bool: _REPR,
                            float: _REPR, bytes: _REPR, dict: _DICT, Counter: _DICT,
                            list: _LIST, tuple: _LIST, set: _SET, frozenset: _SET}


def _route(t: type) -> int:
    """The route of a non-builtin type: the branch ``_PlainEncoder.enc`` would take (an
    Enum, a subclass of a scalar or a container) when it depends on the type alone."""
    if issubclass(t, Enum) or issubclass(t, bool | int | str | float | bytes) or \
            issubclass(t, dict) or issubclass(t, list | tuple) or \
            issubclass(t, set | frozenset):
        route = -1  # a subclass: the plain encoder's own (rare) path
    else:
        route = _OTHER
    _ROUTES[t] = route
    return route


class _Encoder(_PlainEncoder):
    """The same text as ``_PlainEncoder``, made faster: scalars inside objects, dicts and
    lists are encoded inline (no call per value), each keyed object's reference text is made
    once per run, and a value's branch is looked up by its type."""

    def __init__(self, root: Any) -> None:
        super().__init__(root)
        self.refs: dict[int, str] = {}

    def enc(self, v: Any) -> str:
        t = type(v)
        route = _ROUTES.get(t)
        if route is None:
            route = _route(t)
        if route == _INT:
            return str(v)
        if route == _REPR:
            return repr(v)
        if route == _OTHER:
            if v is self.root:
                return "@host"
            cls = t.__name__
            if cls in KEYS and not isinstance(v, random.Random):
                got = self.refs.get(id(v))
                if got is None:
                    got = self.refs[id(v)] = self.ref(v, cls)
                return got
            return super().enc(v)
        if route == _DICT:
            if not v:
                return "{}"
            keys = list(v)
            kt = type(keys[0])
            if (kt is int or kt is str) and all(type(k) is kt for k in keys):
                keys.sort()
                enc = self.enc
                out = []
                for k in keys:
                    x = v[k]
                    xt = type(x)
                    if xt is int:
                        out.append(f"{k!r}:{x}")
                    elif xt is str or xt is bool or x is None:
                        out.append(f"{k!r}:{x!r}")
                    else:
                        out.append(f"{k!r}:{enc(x)}")
                return "{" + ",".join(out) + "}"
            return super().enc(v)
        if route == _LIST:
            if _all_ints(v):
                return "[" + ",".join(map(str, v)) + "]"
            return "[" + ",".join([self.enc(x) for x in v]) + "]"
        return super().enc(v)

    def fields(self, v: Any, cls: str, skip: frozenset[str] = frozenset()) -> str:
        if id(v) in self.path:
            raise TypeError(f"cycle through {cls} objects: give {cls} a natural key in "
                            "memfail.check.encode.KEYS")
        attrs = getattr(v, "__dict__", None)
        if attrs is None:
            return super().fields(v, cls, skip)
        skip = skip or TRANSIENT.get(cls, skip)
        self.path.add(id(v))
        enc = self.enc
        out = []
        for k, x in attrs.items():
            if skip and k in skip:
                continue
            t = type(x)
            if t is int:
                out.append(f"{k}={x}")
            elif t is str or t is bool or x is None:
                out.append(f"{k}={x!r}")
            else:
                out.append(f"{k}={enc(x)}")
        self.path.discard(id(v))
        return cls + "(" + ",".join(out) + ")"


def host_encoding(host: Any) -> bytes:
    """Canonical bytes of the host's state (its own ``canonical()`` if it provides one)."""
    own = getattr(host, "canonical", None)
    if own is not None:
        value = own()
        return value if isinstance(value, bytes) else canonical_bytes(value)
    return _Encoder(host).run()


def plain_encoding(host: Any) -> bytes:
    """``host_encoding`` by the plain definition (``_PlainEncoder``), for tests."""
    own = getattr(host, "canonical", None)
    if own is not None:
        value = own()
        return value if isinstance(value, bytes) else canonical_bytes(value)
    return _PlainEncoder(host).run()
