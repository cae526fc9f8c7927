"""Host snapshots for the checker: one compact, portable pickle per state.

A state's snapshot (``freeze``) is, at once, the source of its successors' copies (``thaw``
instead of a deep copy per step), the cache key of its canonical fingerprint (equal snapshots
are equal hosts) and what travels between processes. The pickler reduces what a Host is full
of more cheaply than the default: Counters rebuilt without running Python code (Counter's own
reduction calls Counter.__init__), a Random restored into an int-seeded generator (``Random()``
reads os.urandom), and the trace (not state) left out, a fresh one in its place.
"""

from __future__ import annotations

import copy
import copyreg
import hashlib
import io
import pickle
import random
from collections import Counter
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


def freeze(host: Any) -> bytes:
    buf = io.BytesIO()
    p = pickle.Pickler(buf, 5)
    p.dispatch_table = DISPATCH
    p.dump(host)
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
