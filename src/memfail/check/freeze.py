"""Host snapshots for the checker: one compact, portable pickle per state.

A state's snapshot (``freeze``) is, at once, the source of its successors' copies (``thaw``
instead of a deep copy per step), the cache key of its canonical fingerprint (equal snapshots
are equal hosts) and what travels between processes. The pickler reduces what a Host is full
of more cheaply than the default: Counters rebuilt by ``dict.update`` (Counter.__init__ runs
Python code), a Random restored into an int-seeded generator (``Random()`` reads os.urandom),
and the trace (not state) left out, a fresh one in its place.
"""

from __future__ import annotations

import copy
import hashlib
import io
import pickle
import random
from collections import Counter
from typing import Any

from memfail.model.trace import Trace


def _counter(items: dict[Any, int]) -> Counter[Any]:
    c: Counter[Any] = Counter.__new__(Counter)
    dict.update(c, items)
    return c


def _random(state: tuple[Any, ...]) -> random.Random:
    r = random.Random(0)
    r.setstate(state)
    return r


def _trace() -> Trace:
    return Trace()


class Freezer(pickle.Pickler):
    """Pickle protocol 5 with the reductions above."""

    def reducer_override(self, obj: Any) -> Any:
        t = type(obj)
        if t is Counter:
            return _counter, (dict(obj),)
        if t is random.Random:
            return _random, (obj.getstate(),)
        if t is Trace:
            return _trace, ()
        return NotImplemented


def freeze(host: Any) -> bytes:
    buf = io.BytesIO()
    Freezer(buf, 5).dump(host)
    return buf.getvalue()


def thaw(blob: bytes) -> Any:
    return pickle.loads(blob)


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
