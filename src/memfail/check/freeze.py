"""Host snapshots for the checker: one compact, portable pickle per state.

A state's snapshot (``freeze``) is, at once, the source of its successors' copies (``thaw``
instead of a deep copy per step), the cache key of its canonical fingerprint (equal snapshots
are equal hosts) and what travels between processes. The pickler reduces what a Host is full
of more cheaply than the default: Counters rebuilt without running Python code (Counter's own
reduction calls Counter.__init__), a Random restored into an int-seeded generator (``Random()``
reads os.urandom), and the trace (not state) left out, a fresh one in its place.

A ``Primer`` makes snapshots smaller and quicker to thaw: the pickler and the unpickler start
from a memo that already holds the strings and the classes and functions a configuration's
Host is made of (the strings interned), so a snapshot refers to them instead of spelling them
out, thawing creates no new string for them, and equal hosts whose strings were shared
differently (a model constant in one, a thawed copy in the other) give equal snapshots.
"""

from __future__ import annotations

import copy
import copyreg
import hashlib
import importlib
import io
import itertools
import pickle
import pickletools
import random
import struct
from collections import Counter
from collections.abc import Iterable
from types import FunctionType
from typing import Any

from memfail.model.trace import Trace


def _counter_reduce(c: Counter[Any]) -> tuple[Any, ...]:
    # copyreg.__newobj__ + dict items: NEWOBJ and SETITEMS, no Python code when loading
    return copyreg.__newobj__, (Counter,), None, None, iter(dict.items(c))  # type: ignore[attr-defined]


def _random(state: tuple[Any, ...]) -> random.Random:
    r = random.Random(0)
    r.setstate(state)
    return r


def _random_reduce(r: random.Random) -> tuple[Any, ...]:
    return _random, (r.getstate(),)


def _trace() -> Trace:
    return Trace()


def _trace_reduce(_t: Trace) -> tuple[Any, ...]:
    return _trace, ()


# Consulted in C per object type (a reducer_override would run Python for every object).
DISPATCH: dict[type, Any] = {**copyreg.dispatch_table, Counter: _counter_reduce,
                             random.Random: _random_reduce, Trace: _trace_reduce}


_PRIMERS: dict[bytes, Primer] = {}  # by tag, every primer made or unpickled in this process
_TAG_LEN = 8


def _tag(raw: bytes) -> bytes:
    return b"\x00" + hashlib.blake2b(raw, digest_size=_TAG_LEN - 1).digest()


def _global(module: str, qualname: str) -> Any:
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


# Host attributes the model never changes in place (frozen dataclasses, and the HostConfig
# it only reads): a primer holds them, so every snapshot refers to one copy of each.
STATIC = ("config", "profile", "geometry", "policy")


class Primer:
    """A memo the pickler and the unpickler of snapshots start from: strings (interned),
    globals (classes and functions, by module and qualified name) and a few objects that
    never change (``STATIC``), written as one pickle (``raw``).

    Its snapshots start with its 8-byte tag (never a pickle's first byte), so ``thaw`` finds
    it in any process that made or unpickled it (a ModelSystem carries its primer, as
    ``raw``, to the worker processes; ``Primer.of`` an equal host gives the same ``raw``).
    The body is a protocol 3 pickle (memo entries by explicit index: the C unpickler does
    not carry a primed memo's length into protocol 4's MEMOIZE) in one protocol 5 frame
    (read at once, not opcode by opcode)."""

    def __init__(self, raw: bytes) -> None:
        """Use ``Primer.get(raw)``: one primer per ``raw`` in a process."""
        self.raw = raw
        self.tag = _tag(raw)
        u = pickle.Unpickler(io.BytesIO(raw))
        self.objects = u.load()
        self._unpickler = u  # its memo is copied into each thaw's unpickler
        memo = {id(o): (i, o) for i, o in u.memo.copy().items()}
        self._size = 1 + max((i for i, _o in memo.values()), default=-1)
        if len(memo) != len(u.memo.copy()):
            raise ValueError("a primer's memo holds one object twice")
        p = pickle.Pickler(io.BytesIO(), 3)
        p.memo = memo
        self._pickler = p  # its memo is copied into each freeze's pickler
        _PRIMERS.setdefault(self.tag, self)

    @classmethod
    def get(cls, raw: bytes) -> Primer:
        """The process's primer of ``raw`` (made on first use), so every host thawed in the
        process shares its ``STATIC`` objects with the hosts it freezes."""
        got = _PRIMERS.get(_tag(raw))
        return got if got is not None and got.raw == raw else cls(raw)

    @classmethod
    def build(cls, strings: Iterable[str], globals_: Iterable[tuple[str, str]],
              objects: tuple[Any, ...] = ()) -> Primer:
        out = [b"\x80\x05"]
        for text in strings:
            raw = text.encode("utf-8", "surrogatepass")
            # sys.intern(text), memoized and popped: the entry is the interned string
            out.append(b"csys\nintern\nX" + struct.pack("<I", len(raw)) + raw + b"\x85R\x940")
        for module, qualname in globals_:
            out.append(b"c" + module.encode() + b"\n" + qualname.encode() + b"\n\x940")
        head = b"".join(out)
        if not objects:
            return cls.get(head + b"N.")
        # the objects, pickled after the strings and globals (referring to them)
        first = cls.get(head + b"N.")
        buf = io.BytesIO()
        p = pickle.Pickler(buf, 3)
        p.dispatch_table = DISPATCH
        p.memo = first._pickler.memo
        p.dump(objects)
        return cls.get(head + buf.getvalue()[2:])  # without its PROTO opcode

    @classmethod
    def of(cls, host: Any) -> Primer:
        """The primer of ``host``'s strings, classes and functions, sorted, and of its
        ``STATIC`` attributes (the same in every process that builds an equal host)."""
        u = pickle.Unpickler(io.BytesIO(plain_freeze(host)))
        u.load()
        strings: set[str] = set()
        globals_: set[tuple[str, str]] = set()
        for o in u.memo.copy().values():
            if type(o) is str:
                strings.add(o)
            elif isinstance(o, type) or type(o) is FunctionType:
                name = (getattr(o, "__module__", None), getattr(o, "__qualname__", None))
                if isinstance(name[0], str) and isinstance(name[1], str) and "<" not in name[1]:
                    try:
                        if _global(name[0], name[1]) is o:
                            globals_.add((name[0], name[1]))
                    except (ImportError, AttributeError):
                        pass
        objects = tuple(getattr(host, name, None) for name in STATIC)
        if any(op.name in ("EMPTY_SET", "FROZENSET", "ADDITEMS")
               for op, _, _ in pickletools.genops(plain_freeze(objects))):
            objects = ()  # a set's order may differ between processes: not the same raw
        return cls.build(sorted(strings), sorted(globals_), objects)

    def adopt(self, host: Any) -> None:
        """Give ``host`` the primer's copies of its ``STATIC`` attributes (equal values), so
        its snapshots, and those of every copy of it, refer to them."""
        for name, obj in zip(STATIC, self.objects, strict=False):
            if getattr(host, name, None) == obj:
                setattr(host, name, obj)

    def freeze(self, host: Any) -> bytes:
        buf = io.BytesIO()
        p = pickle.Pickler(buf, 3)
        p.dispatch_table = DISPATCH
        p.memo = self._pickler.memo
        p.dump(host)
        body = buf.getvalue()
        return self.tag + b"\x80\x05\x95" + struct.pack("<Q", len(body)) + body

    def _reader(self, blob: bytes) -> pickle.Unpickler:
        """An unpickler of ``blob``'s body, its memo started from the primer's."""
        f = io.BytesIO(blob)
        f.seek(_TAG_LEN)
        u = pickle.Unpickler(f)
        u.memo = self._unpickler.memo
        return u

    def thaw(self, blob: bytes) -> Any:
        return self._reader(blob).load()

    def thaw_owned(self, blob: bytes) -> tuple[Any, list[Any]]:
        """``thaw``, and the objects with a ``__dict__`` it made (the primer's own left out):
        what ``release`` needs to free the copy without the cyclic garbage collector."""
        u = self._reader(blob)
        host = u.load()
        ok = _CLEARABLE
        out = []
        for o in itertools.islice(u.memo.copy().values(), self._size, None):
            t = type(o)
            c = ok.get(t)
            if c is None:
                c = ok[t] = _clearable(t)
            if c:
                out.append(o)
        return host, out

    def __reduce__(self) -> tuple[Any, ...]:
        return Primer.get, (self.raw,)


def plain_freeze(host: Any) -> bytes:
    """A snapshot without a primer (a plain protocol 5 pickle)."""
    buf = io.BytesIO()
    p = pickle.Pickler(buf, 5)
    p.dispatch_table = DISPATCH
    p.dump(host)
    return buf.getvalue()


def freeze(host: Any, primer: Primer | None = None) -> bytes:
    """The host's snapshot, with ``primer``'s memo if given."""
    return primer.freeze(host) if primer is not None else plain_freeze(host)


def _primer_of(blob: bytes) -> Primer | None:
    """The primer of a primed snapshot (None for a plain one)."""
    if blob[:1] != b"\x00":
        return None
    primer = _PRIMERS.get(blob[:_TAG_LEN])
    if primer is None:
        raise RuntimeError("a host snapshot names a primer this process does not have "
                           "(its ModelSystem was not loaded here)")
    return primer


def thaw(blob: bytes) -> Any:
    """A new Host from a snapshot (of either kind)."""
    primer = _primer_of(blob)
    return pickle.loads(blob) if primer is None else primer.thaw(blob)


def thaw_owned(blob: bytes) -> tuple[Any, list[Any] | None]:
    """``thaw``, and for a primed snapshot the objects ``release`` needs (else None)."""
    primer = _primer_of(blob)
    return (pickle.loads(blob), None) if primer is None else primer.thaw_owned(blob)


_CLEARABLE: dict[type, bool] = {}


def _clearable(t: type) -> bool:
    """Whether ``release`` clears objects of class ``t``: instances of the model's own
    classes, with a ``__dict__`` (not classes, functions or library objects)."""
    return not issubclass(t, type) and t.__dictoffset__ != 0 and \
        t.__module__.startswith("memfail.")


def release(objects: list[Any] | None) -> None:
    """Break the reference cycles of a thawed Host nothing uses any more, so that reference
    counting frees it at once (a Host is a graph of cycles: a folio and its inode, a process
    and its threads, an mm and its VMAs; left to the cyclic collector, every copy a search
    drops is traversed again, often more than once as it ages into older generations).

    ``objects`` are those ``thaw_owned`` made: each one's attributes are cleared, which
    leaves no cycle through them. Objects a step added later are not in it; a cycle among
    those only is left to the collector. The caller must own the Host and everything in it:
    an object used after its release has no attributes. None (a Host that was not thawed
    with its objects listed): nothing to do, the collector frees it."""
    for o in objects or ():
        o.__dict__.clear()


def blob_key(blob: bytes) -> bytes:
    """128-bit digest of a snapshot: a cache key (equal snapshots are equal hosts; equal
    hosts may still have different snapshots, which only costs a cache miss)."""
    return hashlib.blake2b(blob, digest_size=16).digest()


def clone_host(host: Any) -> Any:
    """An independent copy of a Host (its own ``clone()`` if it has one), with a fresh trace."""
    own = getattr(host, "clone", None)
    if own is not None:
        return own()
    try:
        return thaw(freeze(host))
    except (pickle.PicklingError, TypeError, AttributeError):
        return copy.deepcopy(host)
