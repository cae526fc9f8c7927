"""The small protocol the explorer checks: a transition system with named safety properties.

The model adapter (``model_system.ModelSystem``) and the toy systems of ``toys`` implement it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

State = Any
Label = Hashable


@dataclass(frozen=True)
class Property:
    """A named safety property: ``check(state)`` returns ``None`` or a violation message.

    ``concern`` names the point of the 2025-07-24 call (C1…C8, or a risk bullet) it captures.
    """

    name: str
    doc: str
    concern: str
    check: Callable[[State], str | None]


@runtime_checkable
class System(Protocol):
    """What the explorer needs. ``step`` must not mutate its argument."""

    def initial(self) -> State: ...

    def enabled(self, s: State) -> Sequence[Label]: ...

    def step(self, s: State, label: Label) -> State: ...

    def fingerprint(self, s: State) -> int: ...

    def properties(self) -> Sequence[Property]: ...


# Optional methods a System may provide (looked up with getattr):
#   canonical(s) -> State            symmetry reduction: a representative of s's orbit
#   independent(a, b) -> bool        partial-order reduction: a and b commute everywhere
#   visible(label) -> bool           partial-order reduction: label may change a property
#   coverage(s) -> Iterable[str]     hooks fired while producing s (its last step)
#   hooks() -> Sequence[str]         every hook name, to report those never fired
#   alphabet() -> Sequence[str]      every label kind, to report those never fired
#   label_kind(label) -> str         the kind of a label (default: str of its first item)
#   effective(s) -> Iterable[int]    the alphabet entries of the step that made s, when that
#                                    step changed something (coverage: entries that never did)
#   alphabet_entries() -> Sequence[str]
#                                    the event of every alphabet entry, by index ("" for one
#                                    the system cannot carry out), for ``effective``
#   render(s) -> dict[str, str]      a flat view of s for diff-style counterexample traces
#   successors(s, labels) -> Iterable[State]
#                                    step(s, label) for each label in order, all at once (may
#                                    reuse s's working memory; s keeps its value)
#   affinity(s) -> int               which states share work (equal for states whose expansion
#                                    reuses what the System remembers, e.g. one host): the
#                                    explorer keeps them together, on one worker where it can
#   compact(s) -> State              s as the frontier keeps it (called once its properties
#                                    were checked; e.g. a snapshot instead of live objects)
#   release(s) -> None               a successor the search drops (equal to a state it has):
#                                    nothing uses s afterwards (e.g. free its objects now)
#   name -> str                      shown in reports


def fingerprint_bytes(data: bytes) -> int:
    """64-bit fingerprint of a canonical byte encoding (blake2b, 8-byte digest)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def canonical_bytes(value: Any) -> bytes:
    """A canonical byte encoding of nested tuples/lists/dicts/sets of scalars.

    Dicts and sets are sorted by the encoding of their items, so iteration order never matters.
    """
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(v: Any, out: list[bytes]) -> None:
    if v is None:
        out.append(b"N")
    elif v is True:
        out.append(b"T")
    elif v is False:
        out.append(b"F")
    elif isinstance(v, int):
        out.append(b"i%d;" % v)
    elif isinstance(v, str):
        b = v.encode()
        out.append(b"s%d:" % len(b) + b)
    elif isinstance(v, bytes):
        out.append(b"b%d:" % len(v) + v)
    elif isinstance(v, float):
        out.append(b"f" + repr(v).encode() + b";")
    elif isinstance(v, tuple | list):
        out.append(b"(")
        for x in v:
            _encode(x, out)
        out.append(b")")
    elif isinstance(v, dict):
        items = sorted(canonical_bytes(k) + b"=" + canonical_bytes(x) for k, x in v.items())
        out.append(b"{" + b",".join(items) + b"}")
    elif isinstance(v, set | frozenset):
        out.append(b"<" + b",".join(sorted(canonical_bytes(x) for x in v)) + b">")
    else:
        raise TypeError(f"cannot encode {type(v).__name__} canonically; convert it to plain data")


def label_kind(system: object, label: Label) -> str:
    """The kind of a label, for coverage: the System's ``label_kind`` or the label's first item."""
    fn = getattr(system, "label_kind", None)
    if fn is not None:
        return str(fn(label))
    if isinstance(label, tuple) and label:
        return str(label[0])
    return str(label)


def system_name(system: object) -> str:
    return str(getattr(system, "name", type(system).__name__))


def optional_seq(system: object, attr: str) -> Iterable[str]:
    fn = getattr(system, attr, None)
    return list(fn()) if fn is not None else []
