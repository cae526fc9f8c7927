"""A canonical encoding of a Host's state, for 64-bit fingerprints.

Objects with a natural key (folio by pfn, process by pid, ...) are encoded once in a table and
referenced by key elsewhere, so the encoding depends on the state, not on how it was reached.
"""

from __future__ import annotations

import copyreg
import io
import pickle
import random
from collections import Counter
from collections.abc import Callable
from enum import Enum
from types import FunctionType
from typing import Any

from memfail.check.freeze import _counter_reduce, _random_reduce
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


def _ref(*_key: Any) -> Any:  # pragma: no cover - content keys are never unpickled
    raise AssertionError("a content key is not a snapshot")


def _keyed_types() -> set[type]:
    """Every class loaded now whose name is in ``KEYS`` (the encoder refers to its objects
    by key), but a Random (the encoder encodes one by value)."""
    out: set[type] = set()
    stack: list[type] = [object]
    while stack:
        c = stack.pop()
        subs: list[type] = type.__subclasses__(c)
        for sub in subs:
            if sub not in out:
                stack.append(sub)
                if sub.__name__ in KEYS and not issubclass(sub, random.Random):
                    out.add(sub)
    return out


class RowCache:
    """``host_encoding``, re-encoding only what changed since an earlier host.

    The encoding is one row for the host (its attributes) and one per keyed object, and a
    row depends on that object's fields alone: a keyed object it refers to is written as its
    key. Each attribute of the host and each keyed object is pickled on its own with keyed
    objects reduced to their keys (the pickle is its *content key*: equal content keys are
    equal fields), and its text is taken from a cache by content key; only a value whose
    content key is new is encoded. The keyed objects the pickler meets are the ones the row
    refers to, which makes the table; on every miss that is checked against the encoder's
    own references, so a class the encoder would key that the pickler did not (or a field
    the encoder leaves out that refers to one) is learnt, the cache emptied and the host
    encoded again (or, if that cannot make them agree, every host encoded in full). The
    bytes are ``host_encoding``'s (tests compare them on every host a search meets).

    One step of the model changes a few of a host's ~50 rows, so most are found in the
    cache. Per process (a ``ModelSystem`` keeps one); emptied when it passes ``limit``
    entries or ``limit_bytes`` of content keys and texts."""

    def __init__(self, limit: int = 1 << 17, limit_bytes: int = 64 << 20) -> None:
        self.limit = limit
        self.limit_bytes = limit_bytes
        self._bytes = 0
        self._text: dict[tuple[Any, bytes], str] = {}
        self._keyed: set[type] | None = None
        self._full = False  # every host encoded in full (the cache cannot follow it)
        self.hits = self.misses = 0

    def encode(self, host: Any) -> bytes:
        if self._full or getattr(host, "canonical", None) is not None or \
                not hasattr(host, "__dict__"):
            return host_encoding(host)
        if self._keyed is None:
            self._keyed = _keyed_types()
        while True:
            try:
                return self._encode(host, self._keyed)
            except _Relearn:  # a class more is keyed (at most len(KEYS) times)
                self._text.clear()
                self._bytes = 0
            except _Full:
                self._full = True
                return host_encoding(host)
            except (pickle.PicklingError, TypeError, AttributeError):
                # a value the pickler refuses (a lambda...): the encoder alone decides;
                # it raises what it raises (a cycle without a key) for the host
                return host_encoding(host)

    def _encode(self, host: Any, keyed: set[type]) -> bytes:
        todo: list[Any] = []
        seen: set[int] = set()
        found: list[int] = []  # the keyed objects referred to in the value pickled last
        keys = KEYS

        def ref(o: Any) -> tuple[Any, ...]:
            i = id(o)
            found.append(i)
            if i not in seen:
                seen.add(i)
                todo.append(o)
            return _ref, (keys[type(o).__name__](o),)

        def root(o: Any) -> Any:
            return (_ref, ()) if o is host else o.__reduce_ex__(5)

        table = {**copyreg.dispatch_table, Counter: _counter_reduce,
                 random.Random: _random_reduce, type(host): root}
        for t in keyed:
            table[t] = ref
        buf = io.BytesIO()
        p = pickle.Pickler(buf, 5)
        p.dispatch_table = table  # type: ignore[assignment]
        cache = self._text

        def content(v: Any) -> bytes:
            found.clear()
            buf.seek(0)
            buf.truncate()
            p.clear_memo()
            p.dump(v)
            return buf.getvalue()

        def learn(e: _Encoder) -> None:
            """After a miss: the encoder's references must be the pickler's."""
            if e.seen != set(found):
                new = {type(o) for o in e.todo} - keyed
                if not new:  # the pickler met one the encoder leaves out
                    raise _Full
                keyed.update(new)
                raise _Relearn

        def cached(ckey: tuple[Any, bytes], make: Callable[..., str], *args: Any) -> str:
            """The text of a content key; on a miss ``make(encoder, *args)``'s."""
            got = cache.get(ckey)
            if got is None:
                self.misses += 1
                e = _Encoder(host)
                got = cache[ckey] = make(e, *args)
                self._bytes += len(ckey[1]) + len(got)
                learn(e)
            else:
                self.hits += 1
            return got

        parts = [f"{k}={cached((k, content(x)), _Encoder.enc, x)}"
                 for k, x in host.__dict__.items() if k not in SKIP]
        top = type(host).__name__ + "(" + ",".join(parts) + ")"
        rows: dict[str, list[str]] = {}
        while todo:
            o = todo.pop()
            t = type(o)
            cls = t.__name__
            state = getattr(o, "__dict__", None)
            if state is None:  # a slotted keyed object (none in the model): no content key
                raise _Full
            got = cached((t, content(state)), _Encoder.fields, o, cls)
            rows.setdefault(f"{cls}{keys[cls](o)!r}", []).append(got)
        if len(cache) > self.limit or self._bytes > self.limit_bytes:
            cache.clear()
            self._bytes = 0
        lines = sorted(f"{k}={';'.join(sorted(v))}" for k, v in rows.items())
        return ("\n".join([top, *lines])).encode()


class _Relearn(Exception):
    """A miss found a keyed class the pickler did not reduce: learn it, start again."""


class _Full(Exception):
    """The content keys cannot follow the encoder here: encode every host in full."""
