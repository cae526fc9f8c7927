"""`memfail search`: find the cheapest policies that keep a set of check properties.

The search walks the combinations of the space cheapest first, in fixed batches (the batch
composition never depends on the worker count, so results are identical on 1 or N workers or
on a Dask cluster). For each combination, in this order:

1. **dominated**: a combination already known to keep the properties is cheaper on every knob
   (and cheaper in total): this one costs more, nothing to check;
2. **inferred**: a combination known to fail a property is stronger-or-equal on the knobs the
   property is monotone in (``space.MONOTONE``) and equal elsewhere: this one fails it too;
3. otherwise its **trace signature** is computed (every grouping scenario of the library run
   under it); a combination whose signature matches a checked one is in that one's **group**
   and takes its verdicts; the first of each new signature is **checked** with the check's
   explorer (``memfail.check``) on the chosen configuration and depth.

A sample of the inferred and grouped combinations (seeded) is then checked too, and the
agreement reported.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memfail.check.explorer import FAIL, Bounds, Options, explore
from memfail.model.policy.registry import PRESETS
from memfail.search.space import (
    INDEPENDENT,
    MONOTONE,
    Knobs,
    Space,
    all_knobs,
    policy_spec,
    values_of,
    weaker_or_equal,
)

BATCH = 12
"""Combinations handed to the workers at a time (fixed: results do not depend on workers)."""

HEAVY_EVENTS = 5000
"""A library scenario whose trace under the base preset is longer than this is left out of the
grouping signature (it would dominate the search's time); its name is reported."""


# --------------------------------------------------------------------------- tasks


_SCENARIOS: dict[str, Any] = {}
_CONFIGS: dict[str, Any] = {}


def _scenario(name: str) -> Any:
    sc = _SCENARIOS.get(name)
    if sc is None:
        from memfail.scenario.loader import library, load_scenario

        sc = _SCENARIOS[name] = load_scenario(library()[name])
    return sc


DEFAULT_CONFIG = str(Path(__file__).with_name("config.yaml"))


def config_shown(file: str | None) -> str:
    """The check configuration a search checks, as a path to give ``memfail check``: ``file``
    as the user gave it, else the search's own (DEFAULT_CONFIG), relative to the working
    directory when it is below it. Never the check's standard configuration, which a
    search does not use unless given it."""
    if file:
        return file
    path = Path(DEFAULT_CONFIG)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _config(file: str | None) -> Any:
    key = file or ""
    cfg = _CONFIGS.get(key)
    if cfg is None:
        from memfail.check.config import load_config

        cfg = _CONFIGS[key] = load_config(file or DEFAULT_CONFIG)
    return cfg


def trace_text(name: str, spec: Any) -> str:
    """The trace of library scenario ``name`` under policy ``spec`` as one JSON text (or the
    error that stopped it)."""
    from memfail.scenario.runner import run_scenario

    try:
        r = run_scenario(_scenario(name), policy_override=spec)
    except Exception as e:  # a model error is a behaviour too
        return f"error: {type(e).__name__}: {e}"
    return json.dumps(r.trace.to_dicts(), sort_keys=True, default=str)


def signature_task(args: tuple[tuple[str, ...], dict[str, Any]]) -> str:
    names, spec = args
    h = hashlib.sha256()
    for n in names:
        h.update(n.encode())
        h.update(trace_text(n, spec).encode())
    return h.hexdigest()


Verdicts = dict[str, tuple[str, int | None, str | None]]


def check_task(args: tuple[str | None, Any, tuple[str, ...], int, int | None]) -> Verdicts:
    """Verdicts of one policy on the check configuration: prop -> (status, depth, message)."""
    from memfail.check.model_system import ModelSystem

    file, spec, props, depth, max_states = args
    system = ModelSystem(_config(file), spec)
    r = explore(system, bounds=Bounds(max_depth=depth, max_states=max_states),
                options=Options(properties=props))
    return {p: (v.status, v.depth, v.message) for p, v in r.verdicts.items()}


def fleet_task(args: tuple[str, Any, list[Any]]) -> list[Any]:
    """The fleet outcome of each failure class under one policy (the fleet's model oracle).

    The model runs are kept in the fleet's on-disk cache (``memfail.fleet.cache``:
    ``$MEMFAIL_CACHE_DIR``, else ``$XDG_CACHE_HOME/memfail``, else ``~/.cache/memfail``, as the
    worker running the task sees it; ``off``: none) under the policy's one-line text
    (``policy_text``, the name ``memfail fleet --policy`` gives it too), so a search run again,
    or a knob combination ``memfail fleet`` already ran, reads them instead of running the
    model again (a run is a pure function of the model's source, the profile, the policy and
    the scenario: the cache is keyed by all four)."""
    from memfail.fleet import cache
    from memfail.fleet.oracle import ModelOracle
    from memfail.model.policy.registry import policy_text

    profile, spec, classes = args
    # a search's combination names itself "search" for its events; the cache names it by
    # its base and knobs, as `memfail fleet` does
    text = policy_text(spec if isinstance(spec, str) else
                       {k: v for k, v in spec.items() if k != "name"})
    orc = ModelOracle(profile, cache_dir=cache.cache_dir())
    try:
        return [orc.outcome(text, c) for c in classes]
    finally:
        orc.save()


# --------------------------------------------------------------------------- executors


class Executor:
    """Runs a task function over items, results in item order: in process, in local worker
    processes, or on a Dask cluster."""

    def __init__(self, workers: int = 1, scheduler: str | None = None) -> None:
        self.workers = workers
        self.scheduler = scheduler
        self._pool: Any = None
        self._client: Any = None
        if scheduler:
            from distributed import Client

            from memfail.check.backends import connect_timeout, probe_scheduler

            probe_scheduler(scheduler)
            try:
                self._client = Client(scheduler, timeout=connect_timeout())
            except (OSError, TimeoutError, ValueError) as e:
                from memfail.check.backends import WorkerError

                raise WorkerError(f"cannot reach the Dask scheduler at {scheduler}: {e}"
                                  ) from None
        elif workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(workers,
                                             mp_context=multiprocessing.get_context("spawn"))

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        if not items:
            return []
        if self._client is not None:
            futures = self._client.map(fn, list(items), pure=False)
            return list(self._client.gather(futures))
        if self._pool is not None and len(items) > 1:
            from concurrent.futures.process import BrokenProcessPool

            from memfail.check.backends import WorkerError

            try:
                return list(self._pool.map(fn, items))
            except BrokenProcessPool:
                raise WorkerError("a worker process died (killed, or out of memory); rerun "
                                  "with fewer --workers") from None
        return [fn(x) for x in items]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- the search


@dataclass(frozen=True)
class Settings:
    config_file: str | None
    depth: int
    max_states: int | None
    properties: tuple[str, ...]
    scenarios: tuple[str, ...]
    seed: int = 0
    verify: int = 8
    batch: int = BATCH


@dataclass
class Record:
    """What the search knows of one combination for one property set."""

    knobs: Knobs
    cost: float
    how: str                    # checked, group, inferred, dominated, unknown
    keeps: bool | None          # None: not known (dominated, unknown)
    failed: list[str] = field(default_factory=list)
    by: tuple[Any, ...] | None = None   # the combination the verdict came from
    prop: str | None = None             # inferred: the property inferred to fail


@dataclass
class SetResult:
    props: tuple[str, ...]
    records: dict[tuple[Any, ...], Record]
    order: list[tuple[Any, ...]]

    def safe(self) -> list[Record]:
        return [self.records[k] for k in self.order if self.records[k].keeps]

    def minimal(self, costs: Any) -> list[Record]:
        """Safe combinations no other safe one is cheaper than on every knob."""
        safe = self.safe()
        out = []
        for r in safe:
            if not any(dominates(costs, s.knobs, r.knobs) for s in safe if s is not r):
                out.append(r)
        return out


def dominates(costs: Any, cheap: Mapping[str, Any], dear: Mapping[str, Any]) -> bool:
    """``cheap`` costs no more than ``dear`` on every knob and less in total."""
    a, b = _vec(costs, cheap), _vec(costs, dear)
    return sum(a) < sum(b) and all(x <= y for x, y in zip(a, b, strict=True))


def _vec(costs: Any, knobs: Mapping[str, Any]) -> tuple[float, ...]:
    names = all_knobs()
    key = (id(costs), tuple(knobs[k] for k in names))
    got = _VEC.get(key)
    if got is None:
        vec = costs.vector(knobs)
        got = _VEC[key] = tuple(vec[k] for k in names)
    return got


_VEC: dict[tuple[Any, ...], tuple[float, ...]] = {}


Progress = Callable[[str, int, int], None]


class Search:
    """One search: caches of signatures and verdicts shared by every property set."""

    def __init__(self, space: Space, settings: Settings, executor: Executor,
                 progress: Progress | None = None) -> None:
        self.space = space
        self.s = settings
        self.ex = executor
        self.progress = progress or (lambda what, done, total: None)
        combos, self.excluded = space.enumerate()
        self.combos = space.order(combos)
        self.sig: dict[tuple[Any, ...], str] = {}
        self.verdicts: dict[tuple[Any, ...], Verdicts] = {}
        self.group_rep: dict[str, tuple[Any, ...]] = {}
        self.checks = 0
        self.signatures = 0
        self.knobs_of = {space.key(k): k for k in self.combos}
        # what a verification proved wrong (``distrust``): trace groups whose members are
        # checked one by one from then on, and (property, failing combination) pairs no
        # combination is inferred from any more
        self.distrusted: set[str] = set()
        self.no_infer: set[tuple[str, tuple[Any, ...]]] = set()
        self.disagreed: list[Record] = []

    # -------------------------------------------------------------- cached work
    def _signatures(self, combos: list[Knobs]) -> None:
        todo = [k for k in combos if self.space.key(k) not in self.sig]
        res = self.ex.map(signature_task, [(self.s.scenarios, policy_spec(k)) for k in todo])
        self.signatures += len(todo)
        for k, h in zip(todo, res, strict=True):
            self.sig[self.space.key(k)] = h

    def verdicts_of(self, specs: list[tuple[tuple[Any, ...], Any]]) -> None:
        todo = [(key, spec) for key, spec in specs if key not in self.verdicts]
        seen: set[tuple[Any, ...]] = set()
        todo = [x for x in todo if not (x[0] in seen or seen.add(x[0]))]  # type: ignore[func-returns-value]
        res = self.ex.map(check_task, [(self.s.config_file, spec, self.s.properties,
                                        self.s.depth, self.s.max_states) for _, spec in todo])
        self.checks += len(todo)
        for (key, _), v in zip(todo, res, strict=True):
            self.verdicts[key] = v

    # -------------------------------------------------------------- one property set
    def run_set(self, props: tuple[str, ...], label: str, new_work: bool = True) -> SetResult:
        """Walk the space for ``props``. Without ``new_work`` nothing is run: a combination
        whose verdicts (its own or its group's) are not known yet is ``unknown``."""
        costs = self.space.costs
        records: dict[tuple[Any, ...], Record] = {}
        order = [self.space.key(k) for k in self.combos]
        safe: list[Knobs] = []
        # failing combinations per (prop, values of the knobs the prop is not monotone in)
        fails: dict[tuple[str, tuple[Any, ...]], list[Knobs]] = {}
        varied = self.space.varied

        def bucket(p: str, k: Knobs) -> tuple[str, tuple[Any, ...]]:
            loose = set(MONOTONE.get(p, {})) | set(INDEPENDENT.get(p, ()))
            return (p, tuple(k[n] for n in varied if n not in loose))

        def record_verdicts(k: Knobs, how: str, v: Verdicts, by: tuple[Any, ...]) -> None:
            failed = [p for p in props if v[p][0] == FAIL]
            records[self.space.key(k)] = Record(k, costs.total(k), how, not failed, failed,
                                                by)
            if not failed:
                safe.append(k)
            for p in failed:
                fails.setdefault(bucket(p, k), []).append(k)

        i, n = 0, len(self.combos)
        while i < n:
            batch: list[Knobs] = []
            while len(batch) < self.s.batch and i < n:
                k = self.combos[i]
                i += 1
                dom = next((s for s in safe if dominates(costs, s, k)), None)
                if dom is not None:
                    records[self.space.key(k)] = Record(k, costs.total(k), "dominated", None,
                                                        by=self.space.key(dom))
                    continue
                inf = None
                for p in props:
                    for f in fails.get(bucket(p, k), []):
                        if weaker_or_equal(p, k, f) and \
                                (p, self.space.key(f)) not in self.no_infer:
                            inf = (p, f)
                            break
                    if inf:
                        break
                if inf is not None:
                    records[self.space.key(k)] = Record(k, costs.total(k), "inferred", False,
                                                        [inf[0]], self.space.key(inf[1]),
                                                        inf[0])
                    fails.setdefault(bucket(inf[0], k), []).append(k)
                    continue
                batch.append(k)
            if not new_work:
                for k in batch:
                    key = self.space.key(k)
                    rep = self.group_rep.get(self.sig.get(key, ""))
                    if self.sig.get(key) in self.distrusted:
                        rep = None
                    if key in self.verdicts:
                        record_verdicts(k, "checked", self.verdicts[key], key)
                    elif rep is not None and rep in self.verdicts:
                        record_verdicts(k, "group", self.verdicts[rep], rep)
                    else:
                        records[key] = Record(k, costs.total(k), "unknown", None)
                self.progress(label, i, n)
                continue
            self._signatures(batch)
            reps: list[Knobs] = []
            for k in batch:
                h = self.sig[self.space.key(k)]
                if h not in self.group_rep:
                    self.group_rep[h] = self.space.key(k)
                    reps.append(k)
                elif h in self.distrusted:  # a verification found the group wrong
                    reps.append(k)
            self.verdicts_of([(self.space.key(k), policy_spec(k)) for k in reps])
            for k in batch:
                key = self.space.key(k)
                rep = self.group_rep[self.sig[key]]
                if rep in self.verdicts and key not in self.verdicts and rep != key:
                    record_verdicts(k, "group", self.verdicts[rep], rep)
                else:
                    if key not in self.verdicts:  # a representative checked for another set
                        self.verdicts_of([(key, policy_spec(k))])
                    record_verdicts(k, "checked", self.verdicts[key], key)
            self.progress(label, i, n)
        return SetResult(props, records, order)

    # -------------------------------------------------------------- verification
    def verify(self, sets: Iterable[SetResult]) -> tuple[list[dict[str, Any]], int]:
        """Check a seeded sample of inferred and grouped combinations; how many agree."""
        pool: list[tuple[SetResult, Record]] = []
        for sr in sets:
            pool += [(sr, r) for r in sr.records.values() if r.how in ("inferred", "group")]
        rng = random.Random(self.s.seed)
        pool.sort(key=lambda x: (x[0].props, self.space.key(x[1].knobs)))
        sample = rng.sample(pool, min(self.s.verify, len(pool)))
        self.verdicts_of([(self.space.key(r.knobs), policy_spec(r.knobs)) for _, r in sample])
        out = []
        agree = 0
        self.disagreed = []
        for sr, r in sample:
            v = self.verdicts[self.space.key(r.knobs)]
            failed = [p for p in sr.props if v[p][0] == FAIL]
            ok = r.prop in failed if r.how == "inferred" else failed == r.failed
            agree += ok
            if not ok:
                self.disagreed.append(r)
            out.append({"knobs": r.knobs, "how": r.how, "claimed_failed": r.failed,
                        "checked_failed": failed, "agree": ok})
        return out, agree

    def distrust(self) -> list[dict[str, Any]]:
        """Act on the last verification's disagreements: a grouped combination whose own
        check disagreed with its group's proves the trace signature does not decide the
        verdicts there, so every member of that group is checked on its own from now on; an
        inferred one proves the monotonicity assumption wrong from that failing combination
        for that property, so nothing is inferred from it for it any more. Returns what was
        distrusted (the JSON's ``space.rewalks``); the caller walks again."""
        out: list[dict[str, Any]] = []
        for r in self.disagreed:
            key = self.space.key(r.knobs)
            if r.how == "group":
                sig = self.sig.get(key)
                if sig is not None and sig not in self.distrusted:
                    self.distrusted.add(sig)
                    members = sum(1 for k, h in self.sig.items() if h == sig)
                    out.append({"knobs": r.knobs, "how": "group", "by": r.by,
                                "members": members})
            elif r.how == "inferred" and r.prop is not None and r.by is not None and \
                    (r.prop, r.by) not in self.no_infer:
                self.no_infer.add((r.prop, r.by))
                out.append({"knobs": r.knobs, "how": "inferred", "by": r.by,
                            "property": r.prop})
        return out


def preset_verdicts(search: Search) -> dict[str, Verdicts]:
    keys = {name: ("preset", name) for name in PRESETS}
    search.verdicts_of([(keys[n], n) for n in PRESETS])
    return {n: search.verdicts[keys[n]] for n in PRESETS}


def cost_vector(space: Space, knobs: Mapping[str, Any]) -> dict[str, float]:
    vec = space.costs.vector(knobs)
    return {k: vec[k] for k in all_knobs()}


def knob_index(knobs: Mapping[str, Any]) -> tuple[int, ...]:
    return tuple(values_of(k).index(knobs[k]) for k in all_knobs())
