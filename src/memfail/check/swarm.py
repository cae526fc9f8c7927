"""Swarm search: seeded random deep walks of a checkable System, past the exhaustive bound.

``memfail check --swarm N`` runs, per policy, N random walks of up to ``--walk-depth`` steps:
each step picks one enabled label uniformly with a generator seeded by (seed, policy, walk
number) alone, so a walk is the same on any worker and the report is the same whatever the
worker count. Every property violated along a walk is noted at its first step. For each
violated property the first ``SHRINK_WALKS`` walks that violated it (in walk order) are shrunk
by delta debugging over their labels (drop chunks of events, then single events, keeping the
path a real one: every label enabled where it is taken; the path is cut at the step where the
property first fails), and the shortest result (ties: the earlier walk) is the counterexample.

Walks and shrinks are tasks for ``Backend.map_calls`` (in process, local processes or Dask).
"""

from __future__ import annotations

import hashlib
import pickle
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from memfail.check.backends import Backend
from memfail.check.explorer import FAIL, PARTIAL, Verdict, idle_entries
from memfail.check.system import Label, Property, State, System, label_kind, optional_seq

SHRINK_WALKS = 3
"""Violating walks shrunk per property (the first ones, in walk order); the shortest wins."""
PREFIX_CACHE = 4096
"""States kept per shrink, by path prefix: a candidate replays from its longest cached prefix."""


@dataclass(frozen=True)
class SwarmOptions:
    walks: int
    walk_depth: int = 40
    seed: int = 0
    properties: tuple[str, ...] | None = None
    batch: int = 0  # walks per task; 0: chosen from the worker count (never changes results)


@dataclass
class Walk:
    """What one walk did: its labels, and for each property it violated the step (1-based)
    and message of the first violation."""

    index: int
    labels: list[Label]
    found: dict[str, tuple[int, str]]
    kinds: set[str]
    hooks: set[str]
    entries: set[int] = field(default_factory=set)  # alphabet entries a step changed something


@dataclass
class Found:
    """A violated property: how many walks violated it, the first, and the shrunk path."""

    prop: str
    walks: int
    first_walk: int
    found_at: int            # the step of the first walk at which it failed
    walk: int                # the walk whose shrunk path is reported
    labels: list[Label]      # the shrunk path
    message: str


@dataclass
class SwarmResult:
    policy: str
    walks: int
    steps: int
    longest: int
    ended_early: int          # walks that stopped before walk_depth (nothing enabled)
    elapsed: float
    kinds_fired: list[str]
    kinds_never: list[str]
    hooks_fired: list[str]
    hooks_never: list[str]
    selected: tuple[str, ...]
    found: dict[str, Found] = field(default_factory=dict)
    entries_idle: list[tuple[int, str]] | None = None  # explorer.idle_entries

    @property
    def walks_per_second(self) -> float:
        return self.walks / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def steps_per_second(self) -> float:
        return self.steps / self.elapsed if self.elapsed > 0 else 0.0

    def verdicts(self) -> dict[str, Verdict]:
        """FAIL with the shrunk counterexample, or PARTIAL(swarm): a swarm never proves PASS."""
        out: dict[str, Verdict] = {}
        for name in self.selected:
            f = self.found.get(name)
            out[name] = Verdict(name, FAIL, len(f.labels), None, f.message, list(f.labels)) \
                if f is not None else Verdict(name, PARTIAL, reason="swarm")
        return out

    def failed(self) -> list[str]:
        return [n for n in self.selected if n in self.found]


def walk_seed(seed: int, system: str, index: int) -> int:
    """The seed of walk ``index``: a function of the swarm's seed, the system's name (the
    policy) and the walk number only."""
    digest = hashlib.blake2b(f"{seed}:{system}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def _selected(system: System, names: Sequence[str] | None) -> list[Property]:
    props = list(system.properties())
    if names is None:
        return props
    known = {p.name for p in props}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown property {', '.join(unknown)}; choose from "
                         f"{', '.join(sorted(known))}")
    return [p for p in props if p.name in names]


def walk(system: System, seed: int, index: int, depth: int,
         names: Sequence[str] | None = None) -> Walk:
    """One seeded random walk of up to ``depth`` steps from the initial state."""
    rng = random.Random(walk_seed(seed, _name(system), index))
    props = _selected(system, names)
    coverage = getattr(system, "coverage", None)
    effective = getattr(system, "effective", None)
    s = system.initial()
    out = Walk(index, [], {}, set(), set())
    for step in range(1, depth + 1):
        labels = list(system.enabled(s))
        if not labels:
            break
        label = labels[rng.randrange(len(labels))]
        s = system.step(s, label)
        out.labels.append(label)
        out.kinds.add(label_kind(system, label))
        if coverage is not None:
            out.hooks.update(coverage(s))
        if effective is not None:
            out.entries.update(effective(s))
        for p in props:
            if p.name not in out.found:
                msg = p.check(s)
                if msg is not None:
                    out.found[p.name] = (step, msg)
    return out


class _Replayer:
    """Replays candidate paths for one property, reusing the states of shared prefixes."""

    def __init__(self, system: System, prop: Property) -> None:
        self.system = system
        self.prop = prop
        self.cache: dict[tuple[Label, ...], State] = {(): system.initial()}
        self.tried: dict[tuple[Label, ...], tuple[list[Label], str] | None] = {}

    def violates(self, labels: Sequence[Label]) -> tuple[list[Label], str] | None:
        """The path cut at the first step where the property fails, with its message; None
        when a label is not enabled where it comes or the property never fails."""
        key = tuple(labels)
        if key in self.tried:
            return self.tried[key]
        n = len(key)
        while n and key[:n] not in self.cache:
            n -= 1
        s = self.cache[key[:n]]
        if n:
            msg = self.prop.check(s)
            if msg is not None:  # every shorter prefix was checked when this one was made
                return list(key[:n]), msg
        res: tuple[list[Label], str] | None = None
        for i in range(n, len(key)):
            if key[i] not in self.system.enabled(s):
                break
            s = self.system.step(s, key[i])
            if len(self.cache) < PREFIX_CACHE:
                self.cache[key[:i + 1]] = s
            msg = self.prop.check(s)
            if msg is not None:
                res = (list(key[:i + 1]), msg)
                break
        self.tried[key] = res
        return res


def shrink(system: System, labels: Sequence[Label], prop: str) -> tuple[list[Label], str]:
    """Delta debugging (ddmin) over a violating path: drop chunks of events (halves, then
    quarters, ... then single events) while the path stays a path of ``system`` that violates
    ``prop``, cutting it at the first violation after each success. The result is 1-minimal:
    no single event can be dropped."""
    (p,) = _selected(system, [prop])
    rep = _Replayer(system, p)
    first = rep.violates(labels)
    if first is None:
        raise ValueError(f"the path does not violate {prop}")
    cur, msg = first
    n = 2
    while len(cur) >= 2:
        size = -(-len(cur) // n)
        for start in range(0, len(cur), size):
            res = rep.violates(cur[:start] + cur[start + size:])
            if res is not None:
                cur, msg = res
                n = max(n - 1, 2)
                break
        else:
            if size == 1:
                break
            n = min(n * 2, len(cur))
    return cur, msg


# --------------------------------------------------------------------------- tasks

_SYSTEMS: dict[bytes, System] = {}


def _system(key: bytes, blob: bytes) -> System:
    system = _SYSTEMS.get(key)
    if system is None:
        _SYSTEMS.clear()
        system = _SYSTEMS[key] = pickle.loads(blob)
    return system


def walk_task(key: bytes, blob: bytes, seed: int, start: int, count: int, depth: int,
              names: tuple[str, ...] | None) -> list[Walk]:
    """Worker entry point: walks ``start .. start + count - 1``."""
    system = _system(key, blob)
    return [walk(system, seed, i, depth, names) for i in range(start, start + count)]


def shrink_task(key: bytes, blob: bytes, labels: list[Label],
                prop: str) -> tuple[list[Label], str]:
    """Worker entry point: ``shrink`` of one violating walk."""
    return shrink(_system(key, blob), labels, prop)


def _name(system: System) -> str:
    return str(getattr(system, "name", type(system).__name__))


def _blob(system: System) -> tuple[bytes, bytes]:
    blob = pickle.dumps(system, protocol=pickle.HIGHEST_PROTOCOL)
    return hashlib.blake2b(blob, digest_size=16).digest(), blob


@dataclass
class SwarmProgress:
    system: str
    walks_done: int
    walks: int
    steps: int
    violations: int          # properties violated so far
    phase: str               # "walks" or "shrinking"
    elapsed: float


def swarm(system: System, backend: Backend, opt: SwarmOptions,
          progress: Callable[[SwarmProgress], None] | None = None) -> SwarmResult:
    """Run ``opt.walks`` seeded walks of ``system`` on ``backend``, then shrink what they
    found. The result depends on (system, walks, walk_depth, seed, properties) only."""
    t0 = time.monotonic()
    names = opt.properties
    selected = tuple(p.name for p in _selected(system, names))
    key, blob = _blob(system)
    batch = opt.batch or max(1, min(32, opt.walks // (backend.workers * 8) or 1))
    starts = list(range(0, opt.walks, batch))
    calls = [(key, blob, opt.seed, a, min(batch, opt.walks - a), opt.walk_depth, names)
             for a in starts]
    walks: list[Walk] = []
    seen: set[str] = set()
    steps = 0
    for _i, part in backend.map_calls(walk_task, calls):
        walks.extend(part)
        for w in part:
            steps += len(w.labels)
            seen.update(w.found)
        if progress is not None:
            progress(SwarmProgress(_name(system), len(walks), opt.walks, steps, len(seen),
                                   "walks", time.monotonic() - t0))
    walks.sort(key=lambda w: w.index)
    by_prop: dict[str, list[Walk]] = {}
    for w in walks:
        for name in w.found:
            by_prop.setdefault(name, []).append(w)
    jobs: list[tuple[str, Walk]] = [(name, w) for name in selected
                                    for w in by_prop.get(name, [])[:SHRINK_WALKS]]
    if progress is not None and jobs:
        progress(SwarmProgress(_name(system), len(walks), opt.walks, steps, len(seen),
                               "shrinking", time.monotonic() - t0))
    shrunk: dict[int, tuple[list[Label], str]] = dict(backend.map_calls(
        shrink_task, [(key, blob, w.labels[:w.found[name][0]], name) for name, w in jobs]))
    found: dict[str, Found] = {}
    for j, (name, w) in enumerate(jobs):
        labels, msg = shrunk[j]
        best = found.get(name)
        if best is None or len(labels) < len(best.labels):
            ws = by_prop[name]
            found[name] = Found(name, len(ws), ws[0].index, ws[0].found[name][0], w.index,
                                labels, msg)
    kinds = set().union(*(w.kinds for w in walks)) if walks else set()
    hooks = set().union(*(w.hooks for w in walks)) if walks else set()
    alphabet = list(optional_seq(system, "alphabet"))
    every_hook = list(optional_seq(system, "hooks"))
    return SwarmResult(
        _name(system), len(walks), steps, max((len(w.labels) for w in walks), default=0),
        sum(1 for w in walks if len(w.labels) < opt.walk_depth), time.monotonic() - t0,
        sorted(kinds), [k for k in alphabet if k not in kinds], sorted(hooks),
        [h for h in every_hook if h not in hooks], selected, found,
        idle_entries(system, set().union(*(w.entries for w in walks)),
                     [k for k in alphabet if k not in kinds]))


SWARM_SCHEMA = "memfail.swarm/1"


def swarm_json(config: str, file: object, opt: SwarmOptions,
               results: list[tuple[str, SwarmResult, dict[str, str]]], workers: int,
               scheduler: str | None, races: bool,
               absent: dict[str, dict[str, str]] | None = None) -> dict[str, object]:
    """The ``memfail.swarm/1`` document (docs/check.md, Swarm)."""
    from memfail.check.cli import coverage_json
    from memfail.check.properties import PROPERTIES

    docs = {p.name: p for p in PROPERTIES}
    absent = absent or {}

    def verdict(r: SwarmResult, name: str, files: dict[str, str]) -> dict[str, object]:
        f = r.found.get(name)
        return {
            "status": FAIL if f is not None else PARTIAL,
            "reason": None if f is not None else "swarm",
            "walks_violating": f.walks if f is not None else 0,
            "first_walk": f.first_walk if f is not None else None,
            "found_at": f.found_at if f is not None else None,
            "shrunk_from_walk": f.walk if f is not None else None,
            "depth": len(f.labels) if f is not None else None,
            "message": f.message if f is not None else None,
            "concern": docs[name].concern if name in docs else None,
            "counterexample": [str(x) for x in f.labels] if f is not None else [],
            "file": files.get(name),
        }

    return {
        "schema": SWARM_SCHEMA,
        "config": config,
        "file": str(file) if file is not None else None,
        "walks": opt.walks, "walk_depth": opt.walk_depth, "seed": opt.seed,
        "workers": workers, "scheduler": scheduler, "races": races,
        "failed": any(r.failed() for _, r, _ in results),
        "results": [{
            "policy": pol,
            "walks": r.walks,
            "steps": r.steps,
            "longest_walk": r.longest,
            "walks_ended_early": r.ended_early,
            "elapsed_s": round(r.elapsed, 3),
            "walks_per_s": round(r.walks_per_second, 2),
            "steps_per_s": round(r.steps_per_second, 1),
            "coverage": coverage_json(r.kinds_fired, r.kinds_never, r.hooks_fired,
                                      r.hooks_never, absent.get(pol), r.entries_idle),
            "verdicts": {name: verdict(r, name, files) for name in r.selected},
        } for pol, r, files in results],
    }
