"""Runs fleet estimates: deterministic batches and shards, local or Dask execution, results.

Each batch owns one SeedSequence child, so the numbers do not depend on how shards are spread.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from memfail.fleet.calibration import calibration, frailty_tail
from memfail.fleet.classes import OUTCOME_NAMES, TOUCHES, FailureClass
from memfail.fleet.oracle import OutcomeOracle
from memfail.fleet.params import FleetError, LoadedFleet, with_assignments
from memfail.fleet.sampler import HOURS_PER_YEAR, SamplerSpec, compile_spec, sample_batch
from memfail.fleet.stats import Interval, rate_interval, share_interval

BATCHES_MIN = 64
BATCH_MAX = 1 << 17
BATCHES_PER_SHARD = 8


@dataclass(frozen=True)
class Plan:
    """How many host-years, split into equal batches grouped into shards."""

    host_years: int
    n_batches: int
    batch_size: int

    @classmethod
    def for_host_years(cls, requested: int) -> Plan:
        if requested < BATCHES_MIN:
            raise FleetError(f"--host-years must be at least {BATCHES_MIN}, got {requested}")
        n_batches = max(BATCHES_MIN, math.ceil(requested / BATCH_MAX))
        size = math.ceil(requested / n_batches)
        return cls(n_batches * size, n_batches, size)

    def shards(self) -> list[range]:
        """Batch index ranges, one per shard (fixed by the plan, not by the worker count)."""
        return [range(i, min(i + BATCHES_PER_SHARD, self.n_batches))
                for i in range(0, self.n_batches, BATCHES_PER_SHARD)]


@dataclass
class ShardResult:
    """Per-batch tallies of one shard, restricted to the class columns it saw."""

    batches: list[int]
    columns: np.ndarray
    tallies: np.ndarray  # (len(batches), len(columns))
    sum_p: np.ndarray  # (len(batches),)


def run_shard(spec: SamplerSpec, seeds: Sequence[np.random.SeedSequence],
              batches: Sequence[int], batch_size: int) -> ShardResult:
    """Sample the given batches, each from its own seed (a picklable task)."""
    rows, sum_p = [], []
    for seed in seeds:
        t = sample_batch(spec, np.random.default_rng(seed), batch_size)
        rows.append(t.tally)
        sum_p.append(t.sum_p)
    full = np.vstack(rows)
    cols = np.flatnonzero(full.any(axis=0))
    return ShardResult(list(batches), cols, full[:, cols], np.array(sum_p))


Task = tuple[SamplerSpec, list[np.random.SeedSequence], list[int], int]


def make_tasks(spec: SamplerSpec, plan: Plan, seed: int) -> list[Task]:
    """One task per shard; batch b always uses child b of SeedSequence(seed)."""
    children = np.random.SeedSequence(seed).spawn(plan.n_batches)
    return [(spec, [children[b] for b in r], list(r), plan.batch_size) for r in plan.shards()]


def _call(task: Task) -> ShardResult:
    return run_shard(*task)


Progress = Callable[[int], None]


def execute(tasks: list[Task], workers: int = 1, scheduler: str | None = None,
            progress: Progress | None = None) -> list[ShardResult]:
    """Run tasks in process (workers=1), in a local process pool, or on a Dask cluster.

    Results come back in task order whatever finished first.
    """
    tick = progress or (lambda n: None)
    if scheduler:
        try:
            from distributed import Client, as_completed
        except ImportError:  # pragma: no cover
            raise FleetError("--scheduler needs dask.distributed: pip install distributed") \
                from None
        from memfail.check.backends import WorkerError, connect_timeout, probe_scheduler

        try:
            probe_scheduler(scheduler)
        except WorkerError as e:
            raise FleetError(f"--scheduler: {e}") from None
        try:
            client = Client(scheduler, timeout=connect_timeout())
        except (OSError, TimeoutError, ValueError) as e:
            raise FleetError(f"cannot reach the Dask scheduler at {scheduler}: {e}") from None
        try:
            futures = client.map(_call, tasks, pure=False)
            for _ in as_completed(futures):
                tick(1)
            return list(client.gather(futures))
        finally:
            client.close()
    if workers <= 1 or len(tasks) <= 1:
        out = []
        for t in tasks:
            out.append(_call(t))
            tick(1)
        return out
    from concurrent.futures.process import BrokenProcessPool

    try:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            out = []
            for r in pool.map(_call, tasks):
                out.append(r)
                tick(1)
            return out
    except BrokenProcessPool:
        raise FleetError("--workers: a worker process died (killed, or out of memory); rerun "
                         "with fewer --workers or fewer --host-years") from None


@dataclass
class Tallies:
    """All batches of a run: class tallies (batches x classes) and exposure."""

    spec: SamplerSpec
    plan: Plan
    classes: list[FailureClass]
    tallies: np.ndarray
    sum_p: np.ndarray

    @classmethod
    def merge(cls, spec: SamplerSpec, plan: Plan, shards: list[ShardResult]) -> Tallies:
        """Combine shards in batch order; columns that decode to one class are summed."""
        cols = sorted({int(c) for s in shards for c in s.columns})
        decoded = [spec.decode(c) for c in cols]
        uniq = sorted(set(decoded), key=FailureClass.order_key)
        where = {c: i for i, c in enumerate(uniq)}
        col_to = np.array([where[d] for d in decoded], dtype=np.intp)
        pos = {c: i for i, c in enumerate(cols)}
        t = np.zeros((plan.n_batches, len(uniq)))
        sp = np.zeros(plan.n_batches)
        for s in sorted(shards, key=lambda s: s.batches[0]):
            idx = col_to[[pos[int(c)] for c in s.columns]]
            for j, b in enumerate(s.batches):
                np.add.at(t[b], idx, s.tallies[j])
                sp[b] = s.sum_p[j]
        return cls(spec, plan, uniq, t, sp)


@dataclass(frozen=True)
class Rate:
    """One policy x outcome rate, per host-year, per million VM-hours and per fleet-year."""

    policy: str
    outcome: str
    per_host_year: Interval
    per_million_vm_hours: Interval
    per_fleet_year: Interval


@dataclass
class FleetResult:
    """What a fleet run reports; ``to_dict`` is the ``memfail.fleet/1`` run object."""

    seed: int
    plan: Plan
    source: str
    policies: list[str]
    hosts: int
    vms_per_host: float
    faults_per_host_year: Interval
    p_any_fault: float
    consumed_before_scrub: Interval
    first_touch: dict[str, Interval]
    by_memory: dict[str, Interval]
    n_classes: int
    rates: list[Rate]
    assign: dict[str, Any] = field(default_factory=dict)
    calibration: dict[str, Any] = field(default_factory=dict)
    guests: dict[str, float] = field(default_factory=dict)
    frailty: dict[str, Any] = field(default_factory=dict)

    def rate(self, policy: str, outcome: str) -> Rate:
        for r in self.rates:
            if r.policy == policy and r.outcome == outcome:
                return r
        raise KeyError((policy, outcome))

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "source": self.source,
            "assign": self.assign,
            "host_years": self.plan.host_years,
            "batches": self.plan.n_batches,
            "batch_size": self.plan.batch_size,
            "hosts": self.hosts,
            "vms_per_host": self.vms_per_host,
            "vm_hours_per_host_year": self.vms_per_host * HOURS_PER_YEAR,
            "p_any_fault": self.p_any_fault,
            "calibration": self.calibration,
            "frailty": self.frailty,
            "guests": self.guests,
            "faults_per_host_year": self.faults_per_host_year.to_dict(),
            "consumed_before_scrub": self.consumed_before_scrub.to_dict(),
            "first_touch": {k: v.to_dict() for k, v in self.first_touch.items()},
            "by_memory": {k: v.to_dict() for k, v in self.by_memory.items()},
            "failure_classes": self.n_classes,
            "policies": self.policies,
            "rates": [{
                "policy": r.policy, "outcome": r.outcome,
                "per_host_year": r.per_host_year.to_dict(),
                "per_million_vm_hours": r.per_million_vm_hours.to_dict(),
                "per_fleet_year": r.per_fleet_year.to_dict(),
            } for r in self.rates],
        }


def estimate(fleet: LoadedFleet, t: Tallies, oracle: OutcomeOracle, seed: int,
             policies: Sequence[str] | None = None, workers: int = 1) -> FleetResult:
    """Compose per-class outcomes from ``oracle`` with the sampled class tallies.

    An oracle with a ``prefetch(policies, classes, workers)`` method (``ModelOracle``) first
    computes the outcomes it lacks in ``workers`` local processes."""
    p = fleet.params
    pols = list(policies or p.policies)
    prefetch = getattr(oracle, "prefetch", None)
    if callable(prefetch):
        prefetch(pols, t.classes, workers)
    sizes = np.full(t.plan.n_batches, float(t.plan.batch_size))
    p_bar = float(t.sum_p.sum()) / t.plan.host_years
    faults = t.tallies.sum(axis=1)
    vm_hours = p.vms_per_host * HOURS_PER_YEAR
    to_mvmh = 1e6 / vm_hours if vm_hours > 0 else math.nan
    rates = []
    for pol in pols:
        table = np.array([oracle.outcome(pol, c).as_tuple() for c in t.classes]).reshape(
            len(t.classes), len(OUTCOME_NAMES))
        per_batch = t.tallies @ table  # (batches, outcomes)
        for k, name in enumerate(OUTCOME_NAMES):
            iv = rate_interval(per_batch[:, k], sizes, p_bar)
            rates.append(Rate(pol, name, iv, iv.scaled(to_mvmh), iv.scaled(p.fleet.hosts)))

    def share(pred: Callable[[FailureClass], bool]) -> Interval:
        mask = np.array([pred(c) for c in t.classes], dtype=bool)
        part = t.tallies[:, mask].sum(axis=1) if mask.any() else np.zeros_like(faults)
        return share_interval(part, faults)

    memories = sorted({c.memory for c in t.classes})
    fault_rate = rate_interval(faults, sizes, p_bar)
    return FleetResult(
        seed=seed, plan=t.plan, source=fleet.source, policies=pols, hosts=p.fleet.hosts,
        vms_per_host=p.vms_per_host,
        faults_per_host_year=fault_rate,
        p_any_fault=p_bar,
        consumed_before_scrub=share(lambda c: c.consumed),
        first_touch={tch: share(lambda c, tch=tch: c.first_touch == tch)  # type: ignore[misc]
                     for tch in TOUCHES},
        by_memory={m: share(lambda c, m=m: c.memory == m)  # type: ignore[misc]
                   for m in memories},
        n_classes=len(t.classes),
        rates=rates,
        calibration=calibration(p, p_bar),
        guests=p.vms.behaviour_shares(),
        frailty=frailty_tail(p, t.plan.host_years, fault_rate.estimate),
    )


def sample(fleet: LoadedFleet, host_years: int, seed: int, workers: int = 1,
           scheduler: str | None = None, progress: Progress | None = None) -> Tallies:
    """Sample a fleet: policy-independent class tallies."""
    spec = compile_spec(fleet.params)
    plan = Plan.for_host_years(host_years)
    tasks = make_tasks(spec, plan, seed)
    return Tallies.merge(spec, plan, execute(tasks, workers, scheduler, progress))


def run(fleet: LoadedFleet, oracle: OutcomeOracle, host_years: int, seed: int,
        workers: int = 1, scheduler: str | None = None, policies: Sequence[str] | None = None,
        progress: Progress | None = None) -> FleetResult:
    """Estimate every policy x outcome rate for one fleet."""
    t = sample(fleet, host_years, seed, workers, scheduler, progress)
    return estimate(fleet, t, oracle, seed, policies, workers)


def grid(axes: dict[str, list[Any]]) -> Iterator[dict[str, Any]]:
    """Every combination of the axes' values, first axis slowest."""
    names = list(axes)
    for combo in itertools.product(*(axes[n] for n in names)):
        yield dict(zip(names, combo, strict=True))


def sweep(fleet: LoadedFleet, axes: dict[str, list[Any]], oracle: OutcomeOracle,
          host_years: int, seed: int, workers: int = 1, scheduler: str | None = None,
          policies: Sequence[str] | None = None,
          progress: Progress | None = None) -> list[FleetResult]:
    """Run the fleet at every grid point (same seed at each: common random numbers).

    All shards of all points go to the executor at once, then are regrouped in order.
    """
    points = [(a, with_assignments(fleet, a)) for a in grid(axes)]
    plan = Plan.for_host_years(host_years)
    specs = [compile_spec(f.params) for _, f in points]
    tasks: list[Task] = []
    for spec in specs:
        tasks.extend(make_tasks(spec, plan, seed))
    results = execute(tasks, workers, scheduler, progress)
    n = len(plan.shards())
    out = []
    for i, ((assign, f), spec) in enumerate(zip(points, specs, strict=True)):
        t = Tallies.merge(spec, plan, results[i * n:(i + 1) * n])
        r = estimate(f, t, oracle, seed, policies, workers)
        r.assign = assign
        out.append(r)
    return out
