"""Level-synchronous breadth-first exploration with 64-bit fingerprints and bounded resources.

Results do not depend on the worker count: each level is merged in a canonical order (smallest
(parent rank, label index) wins), so counterexamples are the lexicographically smallest shortest.
"""

from __future__ import annotations

import gc
import os
import pickle
import resource
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from memfail.check import checkpoint
from memfail.check.backends import Backend, Chunk
from memfail.check.expand import ExpandOptions, Key, Successor, normalise, violations
from memfail.check.system import Label, State, System, optional_seq, system_name

PASS, FAIL, PARTIAL = "PASS", "FAIL", "PARTIAL"


@dataclass(frozen=True)
class Bounds:
    """Limits; reaching any of them with work left gives PARTIAL verdicts.

    ``max_states`` is checked at level boundaries, so where it stops does not depend on the
    worker count (it may overshoot by one level); time and memory stop mid-level.
    """

    max_depth: int | None = None
    max_states: int | None = None
    max_seconds: float | None = None
    max_memory_mb: float | None = None


@dataclass(frozen=True)
class Options:
    properties: tuple[str, ...] | None = None   # None: every property of the system
    symmetry: bool = False
    por: bool = False
    stop_when_all_fail: bool = True
    chunk_size: int = 512
    checkpoint_dir: Path | None = None
    checkpoint_every: float = 60.0
    resume: bool = False


@dataclass(frozen=True)
class Violation:
    prop: str
    depth: int
    message: str
    fp: int


@dataclass
class Verdict:
    prop: str
    status: str                      # PASS, FAIL or PARTIAL
    depth: int | None = None         # FAIL: length of the counterexample
    reason: str | None = None        # PARTIAL: which bound stopped the run
    message: str | None = None
    labels: list[Label] = field(default_factory=list)

    def short(self) -> str:
        if self.status == FAIL:
            return f"FAIL({self.depth})"
        if self.status == PARTIAL:
            return f"PARTIAL({self.reason})"
        return PASS


@dataclass
class Coverage:
    kinds_fired: list[str]
    kinds_never: list[str]
    hooks_fired: list[str]
    hooks_never: list[str]
    # alphabet entries (index in the configuration's events, event) no step of which changed
    # anything (System ``effective``); None where not recorded
    entries_idle: list[tuple[int, str]] | None = None


@dataclass
class Result:
    system: str
    verdicts: dict[str, Verdict]
    states: int
    transitions: int
    depth: int
    complete: bool
    stop_reason: str | None
    elapsed: float
    coverage: Coverage
    workers: int
    symmetry: bool
    por: bool

    @property
    def states_per_second(self) -> float:
        return self.states / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def collision_probability(self) -> float:
        """Birthday bound for 64-bit fingerprints: n^2 / 2^65."""
        return float(self.states) ** 2 / 2.0**65

    def failed(self) -> list[str]:
        return [n for n, v in self.verdicts.items() if v.status == FAIL]


@dataclass
class Progress:
    system: str
    depth: int
    states: int
    frontier: int
    transitions: int
    elapsed: float


def rss_mb() -> float:
    """Current resident set size in MiB (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def identity(system: System, opt: Options) -> str:
    s0 = normalise(system, system.initial(), opt.symmetry)
    props = ",".join(opt.properties) if opt.properties is not None else "*"
    return (f"{system_name(system)}-{system.fingerprint(s0):016x}-{props}"
            f"-sym{int(opt.symmetry)}-por{int(opt.por)}")


@dataclass
class Level:
    """A BFS level part-way expanded: the frontier ranks done and what they produced."""

    done: set[int]
    cand: dict[int, Successor]
    reduced: list[tuple[int, int]]
    acc: dict[str, Any]


class Explorer:
    """One exploration of one System; ``run()`` returns a Result."""

    def __init__(self, system: System, backend: Backend | None = None,
                 bounds: Bounds = Bounds(), options: Options = Options(),
                 progress: Callable[[Progress], None] | None = None) -> None:
        self.system = system
        self.backend = backend or Backend()
        self.bounds = bounds
        self.opt = options
        self.progress = progress
        names = [p.name for p in system.properties()]
        if options.properties is not None:
            unknown = [n for n in options.properties if n not in names]
            if unknown:
                raise ValueError(f"unknown property {', '.join(unknown)}; "
                                 f"choose from {', '.join(names)}")
            names = [n for n in names if n in options.properties]
        self.selected = tuple(names)
        self.xopt = ExpandOptions(self.selected, self.backend.pickled, options.symmetry,
                                  options.por, os.urandom(16))
        self.identity = identity(system, options)
        self._last_ckpt = 0.0
        self._lvl: Level | None = None
        self._affinity: dict[int, int] = {}  # frontier fingerprint -> affinity (not saved)

    # ------------------------------------------------------------------ state of the search
    def _fresh(self) -> None:
        s0 = normalise(self.system, self.system.initial(), self.opt.symmetry)
        fp0 = self.system.fingerprint(s0)
        self.parents: dict[int, tuple[int | None, Label]] = {fp0: (None, None)}
        self.frontier: list[tuple[int, Any]] = [(fp0, self._pack(s0))]
        self.depth = 0
        self.found: dict[str, Violation] = {}
        for name, msg in violations(self.system, s0, self.selected):
            self.found[name] = Violation(name, 0, msg, fp0)
        self.kinds: set[str] = set()
        self.hooks: set[str] = set()
        self.entries: set[int] | None = set()
        self.transitions = 0
        self.elapsed_before = 0.0
        self._lvl = None

    def _pack(self, s: State) -> Any:
        return pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL) if self.backend.pickled else s

    def _snapshot(self) -> checkpoint.Snapshot:
        def as_bytes(x: Any) -> bytes:
            return x if self.backend.pickled else pickle.dumps(x, pickle.HIGHEST_PROTOCOL)
        snap = checkpoint.Snapshot(
            self.identity, self.depth, [(fp, as_bytes(s)) for fp, s in self.frontier],
            self.parents, dict(self.found), set(self.kinds), set(self.hooks), self.transitions,
            self.elapsed_before + time.monotonic() - self.t0,
            entries=None if self.entries is None else set(self.entries))
        if self._lvl is not None:
            snap.level_done = set(self._lvl.done)
            snap.level_cand = {fp: replace(succ, state=as_bytes(succ.state))
                               for fp, succ in self._lvl.cand.items()}
            snap.level_reduced = list(self._lvl.reduced)
            snap.level_acc = {"kinds": set(self._lvl.acc["kinds"]),
                              "hooks": set(self._lvl.acc["hooks"]),
                              "entries": set(self._lvl.acc["entries"]),
                              "transitions": self._lvl.acc["transitions"]}
        return snap

    def _checkpoint_due(self) -> None:
        """Write a checkpoint when ``checkpoint_every`` seconds have passed since the last."""
        if (self.opt.checkpoint_dir is not None
                and time.monotonic() - self._last_ckpt >= self.opt.checkpoint_every):
            checkpoint.save(self.opt.checkpoint_dir, self._snapshot())
            self._last_ckpt = time.monotonic()

    def _restore(self, snap: checkpoint.Snapshot) -> None:
        self.parents = snap.parents
        self.frontier = [(fp, s if self.backend.pickled else pickle.loads(s))
                         for fp, s in snap.frontier]
        self.depth = snap.depth
        self.found = dict(snap.violations)
        self.kinds, self.hooks = set(snap.kinds), set(snap.hooks)
        entries = getattr(snap, "entries", None)  # None: an older checkpoint
        self.entries = None if entries is None else set(entries)
        self.transitions = snap.transitions
        self.elapsed_before = snap.elapsed
        self._lvl = None
        if snap.level_done:
            cand = {fp: succ if self.backend.pickled else replace(succ,
                                                                   state=pickle.loads(succ.state))
                    for fp, succ in snap.level_cand.items()}
            self._lvl = Level(set(snap.level_done), cand, list(snap.level_reduced),
                              {"kinds": set(snap.level_acc.get("kinds", ())),
                               "hooks": set(snap.level_acc.get("hooks", ())),
                               "entries": set(snap.level_acc.get("entries", ())),
                               "transitions": snap.level_acc.get("transitions", 0)})

    # ------------------------------------------------------------------ the loop
    def run(self) -> Result:
        self.t0 = time.monotonic()
        snap = None
        if self.opt.resume and self.opt.checkpoint_dir is not None:
            snap = checkpoint.load(self.opt.checkpoint_dir, self.identity)
        if snap is not None:
            self._restore(snap)
        else:
            self._fresh()
        self._last_ckpt = time.monotonic()
        stop: str | None = None
        # What the search keeps (parents, frontier, what the System remembers) only grows and
        # holds no garbage cycles: set it aside from the cyclic garbage collector at each level,
        # so that a full collection walks what the level made, not the whole search (a full
        # collection cost ~5 % of a model search). Given back when the search ends.
        freeze = gc.get_freeze_count() == 0
        try:
            while self.frontier:
                if self.opt.stop_when_all_fail and len(self.found) == len(self.selected):
                    stop = "all-failed"
                    break
                if self.bounds.max_depth is not None and self.depth >= self.bounds.max_depth:
                    stop = "depth"
                    break
                if self.bounds.max_states is not None and \
                        len(self.parents) >= self.bounds.max_states:
                    stop = "states"
                    break
                self._checkpoint_due()
                if freeze:
                    gc.freeze()
                stop = self._level()
                if stop:
                    break
                self._report()
        finally:
            if freeze:
                gc.unfreeze()
        if stop in ("depth", "states", "time", "memory") and self.opt.checkpoint_dir is not None:
            checkpoint.save(self.opt.checkpoint_dir, self._snapshot())
        return self._result(stop if self.frontier else None)

    def _over_budget(self) -> str | None:
        if (self.bounds.max_seconds is not None
                and time.monotonic() - self.t0 >= self.bounds.max_seconds):
            return "time"
        if self.bounds.max_memory_mb is not None and rss_mb() >= self.bounds.max_memory_mb:
            return "memory"
        return None

    def _chunks(self, items: list[tuple[int, int, Any]]) -> tuple[list[Chunk], list[int]]:
        """Partition (rank, fp, state) deterministically by the states' affinity (the System's
        ``affinity``: states that share work, e.g. a host, go to one part) or fingerprint,
        then cap chunk size; also each chunk's part (its home: a backend may keep a part on
        one worker, which remembers what its states share). Results do not depend on the
        partition."""
        parts = max(1, self.backend.workers * 16)
        buckets: list[Chunk] = [[] for _ in range(parts)]
        aff = self._affinity
        for rank, fp, s in items:
            buckets[aff.get(fp, fp) % parts].append((rank, fp, s))
        size = self.opt.chunk_size
        chunks: list[Chunk] = []
        homes: list[int] = []
        for part, b in enumerate(buckets):
            for i in range(0, len(b), size):
                chunks.append(b[i:i + size])
                homes.append(part)
        return chunks, homes

    def _expand(self, items: list[tuple[int, int, Any]], full: bool,
                cand: dict[int, Successor], reduced: list[tuple[int, int]],
                acc: dict[str, Any], done: set[int] | None = None) -> str | None:
        chunks, homes = self._chunks(items)
        for i, res in self.backend.run_indexed(self.system, chunks, self.xopt, full, homes):
            for fp, succ in res.succ.items():
                if fp in self.parents:
                    continue
                old = cand.get(fp)
                if old is None or succ.key < old.key:
                    cand[fp] = succ
            reduced.extend(res.reduced)
            acc["kinds"] |= res.kinds
            acc["hooks"] |= res.hooks
            acc["entries"] |= res.entries
            acc["transitions"] += res.transitions
            if done is not None:  # inside a level: what is expanded is saved on the interval
                done.update(rank for rank, _, _ in chunks[i])
                self._checkpoint_due()
            over = self._over_budget()
            if over:
                return over
        return None

    def _level(self) -> str | None:
        items = [(rank, fp, s) for rank, (fp, s) in enumerate(self.frontier)]
        if self._lvl is None:  # else: resumed inside this level
            self._lvl = Level(set(), {}, [], {"kinds": set(), "hooks": set(), "entries": set(),
                                              "transitions": 0})
        lvl = self._lvl
        cand, reduced, acc = lvl.cand, lvl.reduced, lvl.acc
        todo = [it for it in items if it[0] not in lvl.done]
        over = self._expand(todo, False, cand, reduced, acc, lvl.done)
        if over:
            return over
        # A checkpoint from here to the end of the level holds the level as expanded so far.
        self._lvl = Level(lvl.done, dict(cand), list(reduced),
                          {"kinds": set(acc["kinds"]), "hooks": set(acc["hooks"]),
                           "entries": set(acc["entries"]),
                           "transitions": acc["transitions"]})
        if reduced:
            # BFS cycle proviso (C3): a reduced state whose ample successor was already
            # visited at a shallower level is expanded in full.
            redo = sorted({rank for rank, fp in reduced if fp in self.parents})
            if redo:
                again = [items[r] for r in redo]
                ignore: list[tuple[int, int]] = []
                over = self._expand(again, True, cand, ignore, acc)
                if over:
                    return over
        self.kinds |= acc["kinds"]
        self.hooks |= acc["hooks"]
        if self.entries is not None:  # None: not recorded (a checkpoint of an older version)
            self.entries |= acc["entries"]
        self.transitions += acc["transitions"]
        new = sorted(cand.items(), key=lambda kv: kv[1].key)
        frontier_fps = [fp for fp, _ in self.frontier]
        self.depth += 1
        next_frontier: list[tuple[int, Any]] = []
        self._affinity = {}
        for fp, succ in new:
            key: Key = succ.key
            self.parents[fp] = (frontier_fps[key[0]], succ.label)
            next_frontier.append((fp, succ.state))
            aff = getattr(succ, "affinity", None)  # None in a checkpoint of an older version
            if aff is not None:
                self._affinity[fp] = aff
            for name, msg in succ.violated:
                if name not in self.found:
                    self.found[name] = Violation(name, self.depth, msg, fp)
        self.frontier = next_frontier
        self._lvl = None
        return None

    def _report(self) -> None:
        if self.progress is not None:
            self.progress(Progress(system_name(self.system), self.depth, len(self.parents),
                                   len(self.frontier), self.transitions,
                                   self.elapsed_before + time.monotonic() - self.t0))

    # ------------------------------------------------------------------ results
    def path(self, fp: int) -> list[Label]:
        labels: list[Label] = []
        cur: int | None = fp
        while cur is not None:
            parent, label = self.parents[cur]
            if parent is not None:
                labels.append(label)
            cur = parent
        labels.reverse()
        if self.opt.symmetry:
            labels = concretise(self.system, labels, self.parents, fp)
        return labels

    def _result(self, stop: str | None) -> Result:
        verdicts: dict[str, Verdict] = {}
        for name in self.selected:
            v = self.found.get(name)
            if v is not None:
                verdicts[name] = Verdict(name, FAIL, v.depth, None, v.message, self.path(v.fp))
            elif stop is None or stop == "all-failed":
                verdicts[name] = Verdict(name, PASS)
            else:
                verdicts[name] = Verdict(name, PARTIAL, reason=stop)
        kinds = list(optional_seq(self.system, "alphabet"))
        hooks = list(optional_seq(self.system, "hooks"))
        fired, hooked, entries = set(self.kinds), set(self.hooks), self.entries
        transitions = self.transitions
        if self._lvl is not None:  # stopped inside a level (time, memory): what it did so far
            transitions += self._lvl.acc["transitions"]   # the steps the coverage counts
            fired |= self._lvl.acc["kinds"]
            hooked |= self._lvl.acc["hooks"]
            if entries is not None:
                entries = entries | self._lvl.acc["entries"]
        never = [k for k in kinds if k not in fired]
        # a search that stopped because every property failed says nothing of the entries
        idle = None if stop == "all-failed" else idle_entries(self.system, entries, never)
        cov = Coverage(sorted(fired), never, sorted(hooked),
                       [h for h in hooks if h not in hooked], idle)
        elapsed = self.elapsed_before + time.monotonic() - self.t0
        return Result(system_name(self.system), verdicts, len(self.parents), transitions,
                      self.depth, not self.frontier, stop, elapsed, cov, self.backend.workers,
                      self.opt.symmetry, self.opt.por)


def idle_entries(system: System, effective: set[int] | None,
                 never: Sequence[str] = ()) -> list[tuple[int, str]] | None:
    """The alphabet entries (index, event) of ``system`` no step of which changed anything,
    given the entries one did (``effective``); None when the system does not say
    (``alphabet_entries``) or they were not recorded. Entries the system cannot carry out
    (event "") and those of events that never fired (``never``) are left out: those are
    reported as never fired."""
    names = getattr(system, "alphabet_entries", None)
    if names is None or effective is None:
        return None
    return [(i, e) for i, e in enumerate(names()) if e and e not in never and i not in effective]


def concretise(system: System, labels: Sequence[Label], parents: dict[int, Any],
               fp: int) -> list[Label]:
    """Turn a path through symmetry representatives into a path of the concrete system.

    At each step pick the first enabled label whose canonicalised successor is the next
    representative on the path; it exists because the permutations are symmetries.
    """
    chain: list[int] = []
    cur: int | None = fp
    while cur is not None:
        chain.append(cur)
        cur = parents[cur][0]
    chain.reverse()
    s = system.initial()
    out: list[Label] = []
    for target in chain[1:]:
        for label in system.enabled(s):
            t = system.step(s, label)
            if system.fingerprint(normalise(system, t, True)) == target:
                out.append(label)
                s = t
                break
        else:
            raise RuntimeError("symmetry reduction: canonical() is not a symmetry of step()")
    return out


def explore(system: System, backend: Backend | None = None, bounds: Bounds = Bounds(),
            options: Options = Options(),
            progress: Callable[[Progress], None] | None = None) -> Result:
    """Explore ``system`` breadth-first; see ``Explorer``."""
    return Explorer(system, backend, bounds, options, progress).run()
