"""Expanding one chunk of a BFS level: the only code that runs on workers.

It is a pure function of (system, chunk), so local processes and Dask workers give identical
results. (What a process remembers between chunks, ``_expanded``, only leaves out successors
the explorer would drop.)
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass, field
from typing import Any

from memfail.check.system import Label, State, System, label_kind
from memfail.model.garbage import rare_collections

# A successor candidate: key = (parent rank, label index in enabled(parent)) orders paths
# lexicographically; the smallest key wins when several transitions reach one state.
Key = tuple[int, int]


@dataclass
class Successor:
    key: Key
    label: Label
    state: Any  # the state, or its pickle when the chunk travels between processes
    violated: tuple[tuple[str, str], ...]
    affinity: int | None = None  # the System's ``affinity(state)``, when it has one


@dataclass
class ChunkResult:
    succ: dict[int, Successor] = field(default_factory=dict)
    reduced: list[tuple[int, int]] = field(default_factory=list)  # (rank, ample successor fp)
    kinds: set[str] = field(default_factory=set)
    hooks: set[str] = field(default_factory=set)
    entries: set[int] = field(default_factory=set)  # alphabet entries a step of changed something
    transitions: int = 0


@dataclass(frozen=True)
class ExpandOptions:
    properties: tuple[str, ...]
    pickled: bool = False
    symmetry: bool = False
    por: bool = False
    search: bytes = b""  # names one search (``_expanded``); b"": remember nothing


# The fingerprints of the states this process expanded in the latest search (``search``):
# each was in the explorer's frontier, so it is a visited state, and the explorer drops a
# successor that has one (``fp in parents``). Such a successor is counted (a transition, its
# kind, hooks and entries) but not checked, compacted or sent back. One search at a time
# (a new search name empties it); at most ``EXPANDED_LIMIT`` fingerprints.
_expanded: dict[bytes, set[int]] = {}
EXPANDED_LIMIT = 1 << 22
# the collector's youngest-generation threshold while a system that frees the states it drops
# (``release``) expands a chunk (700 by default; a cycle left still costs at most this many
# objects' worth of memory before it is found)
COLLECT_EVERY = 20_000


def _expanded_set(search: bytes) -> set[int] | None:
    if not search:
        return None
    got = _expanded.get(search)
    if got is None:
        _expanded.clear()
        got = _expanded[search] = set()
    elif len(got) >= EXPANDED_LIMIT:
        got.clear()
    return got


def normalise(system: System, s: State, symmetry: bool) -> State:
    """Apply the System's symmetry canonicalisation when asked for."""
    if symmetry:
        canon = getattr(system, "canonical", None)
        if canon is None:
            raise ValueError("symmetry reduction asked for, but the system has no canonical()")
        return canon(s)
    return s


def violations(system: System, s: State, selected: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    out = []
    for p in system.properties():
        if p.name in selected:
            msg = p.check(s)
            if msg is not None:
                out.append((p.name, msg))
    return tuple(out)


def _ample(system: System, labels: list[Label]) -> int | None:
    """Index of a singleton ample set: an invisible label independent of every other enabled one."""
    indep = getattr(system, "independent", None)
    visible = getattr(system, "visible", None)
    if indep is None or visible is None or len(labels) < 2:
        return None
    for i, a in enumerate(labels):
        if not visible(a) and all(indep(a, b) for j, b in enumerate(labels) if j != i):
            return i
    return None


def expand_chunk(system: System, items: list[tuple[int, int, Any]], opt: ExpandOptions,
                 full: bool = False) -> ChunkResult:
    """Successors of ``items`` (rank, fingerprint, state) deduplicated within the chunk by
    smallest key. A successor equal to its parent (a step that changed nothing) is counted as a
    transition but not returned: its parent is already known."""
    res = ChunkResult()
    drop = getattr(system, "release", None)
    # a system that frees the states it drops (``release``) leaves the collector little
    with rare_collections(COLLECT_EVERY if drop is not None else 0):
        _expand(system, items, opt, full, res, drop)
    if opt.pickled:
        for succ in res.succ.values():
            succ.state = pickle.dumps(succ.state, protocol=pickle.HIGHEST_PROTOCOL)
    return res


def _expand(system: System, items: list[tuple[int, int, Any]], opt: ExpandOptions,
            full: bool, res: ChunkResult, drop: Any) -> None:
    """``expand_chunk``'s work: its successors into ``res``; ``drop``: the System's
    ``release``, if it has one."""
    expanded = _expanded_set(opt.search)
    known = expanded if expanded is not None else ()
    coverage = getattr(system, "coverage", None)
    effective = getattr(system, "effective", None)
    affinity = getattr(system, "affinity", None)
    compact = getattr(system, "compact", _keep)
    successors = getattr(system, "successors", None) or _successors(system)
    for rank, pfp, raw in items:
        s = pickle.loads(raw) if opt.pickled else raw
        if expanded is not None:
            expanded.add(pfp)
        labels = list(system.enabled(s))
        chosen = None if full or not opt.por else _ample(system, labels)
        indices = range(len(labels)) if chosen is None else (chosen,)
        picked = [labels[i] for i in indices]
        for idx, label, step in zip(indices, picked, successors(s, picked), strict=True):
            t = normalise(system, step, opt.symmetry)
            fp = system.fingerprint(t)
            res.transitions += 1
            res.kinds.add(label_kind(system, label))
            if coverage is not None:
                res.hooks.update(coverage(t))
            if effective is not None:
                res.entries.update(effective(t))
            if chosen is not None:
                res.reduced.append((rank, fp))
            if fp == pfp or fp in known:
                if drop is not None:
                    drop(t)
                continue
            key = (rank, idx)
            old = res.succ.get(fp)
            if old is None:
                # equal fingerprints are equal states: check and compact the first one seen
                found = violations(system, t, opt.properties)
                aff = affinity(t) if affinity is not None else None
                res.succ[fp] = Successor(key, label, compact(t), found, aff)
            else:
                if key < old.key:
                    old.key, old.label = key, label
                if drop is not None:
                    drop(t)


def _successors(system: System) -> Any:
    return lambda s, labels: (system.step(s, label) for label in labels)


def _keep(s: State) -> State:
    return s


_SYSTEMS: dict[bytes, System] = {}


def remote_expand(sys_key: bytes, sys_blob: bytes, items: list[tuple[int, int, Any]],
                  opt: ExpandOptions, full: bool) -> ChunkResult:
    """Worker entry point: unpickle the System once per process, then expand."""
    system = _SYSTEMS.get(sys_key)
    if system is None:
        _SYSTEMS.clear()
        system = _SYSTEMS[sys_key] = pickle.loads(sys_blob)
    return expand_chunk(system, items, opt, full)


def system_blob(system: System) -> tuple[bytes, bytes]:
    blob = pickle.dumps(system, protocol=pickle.HIGHEST_PROTOCOL)
    return hashlib.blake2b(blob, digest_size=16).digest(), blob
