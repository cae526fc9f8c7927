"""Benchmark of `memfail check`: distinct states per second, on one core and on 2 workers.

    python bench/bench_check.py                      # engine (toy) and model, standard config
    python bench/bench_check.py --policy future --depth 6
    python bench/bench_check.py --no-engine --races --depth 4
    python bench/bench_check.py --no-engine --repeat 3   # best of 3 by CPU time
    python bench/bench_check.py --no-engine --encoding   # + full vs row-cached encodings

Prints figures for the engine alone (a toy system) and for the model on the standard
configuration (its first policy unless --policy). Each is measured twice: by the wall clock,
and by the CPU time the search used (this process, plus the worker processes with 2 workers),
which a machine busy with other work moves much less. States per second per core is the
1-worker figure; the 2-worker parallel efficiency is the 2-worker rate over twice the 1-worker
rate (by CPU time: the 1-worker CPU time over the CPU time of all processes with 2 workers,
i.e. the share of the work that is not overhead of running in parallel).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from memfail.check.backends import Backend, ProcessBackend, make_backend
from memfail.check.explorer import Bounds, Options, Result, explore
from memfail.check.system import System
from memfail.check.toys import CounterSystem

TARGET_ENGINE = 50_000
TARGET_MODEL = 1_500
TARGET_EFFICIENCY = 0.80


def _worker_cpu(backend: Backend) -> float:
    """CPU seconds the backend's worker processes used so far (0 for the serial backend)."""
    if not isinstance(backend, ProcessBackend):
        return 0.0
    total = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    pool = getattr(backend, "_pool", None)  # a single pool (before one per worker)
    pids = backend.pids() if hasattr(backend, "pids") else \
        list(getattr(pool, "_processes", None) or {})
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


@dataclass
class Run:
    result: Result
    wall: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.result.states / self.wall if self.wall else 0.0

    @property
    def cpu_rate(self) -> float:
        return self.result.states / self.cpu if self.cpu else 0.0


def measure(make: Callable[[], System], workers: int, bounds: Bounds,
            warm: Callable[[], System] | None) -> Run:
    opts = Options(stop_when_all_fail=False, chunk_size=2048)
    with make_backend(workers) as backend:
        if workers > 1:
            # start the worker processes and let each import what the system needs, before
            # timing (a `memfail check` run pays this once for all its policies); ``warm`` is
            # another system, so nothing remembered of the measured one carries over
            explore(warm() if warm else CounterSystem(1, 1), backend, Bounds(max_depth=3), opts)
        system = make()
        system.initial()
        c0, w0, t0 = time.process_time(), _worker_cpu(backend), time.perf_counter()
        result = explore(system, backend, bounds, opts)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0 + _worker_cpu(backend) - w0
    return Run(result, wall, cpu)


def best(runs: list[Run]) -> Run:
    """The run that used the least CPU time (other work on the machine only adds to it)."""
    return min(runs, key=lambda r: r.cpu)


def report(name: str, make: Callable[[], System], bounds: Bounds, target: int,
           warm: Callable[[], System] | None = None, repeat: int = 1) -> None:
    t0 = time.perf_counter()
    one = best([measure(make, 1, bounds, None) for _ in range(repeat)])
    two = best([measure(make, 2, bounds, warm) for _ in range(repeat)])
    r1, r2 = one.result, two.result
    same = (r1.states, r1.transitions, {n: v.short() for n, v in r1.verdicts.items()}) == \
        (r2.states, r2.transitions, {n: v.short() for n, v in r2.verdicts.items()})
    eff = two.rate / (2 * one.rate) if one.rate else 0.0
    cpu_eff = one.cpu / two.cpu if two.cpu else 0.0
    print(f"{name}: {r1.states:,} distinct states, {r1.transitions:,} transitions, "
          f"depth {r1.depth}{'' if r1.complete else ' (bounded)'}")
    print(f"  1 worker : {one.rate:10,.0f} states/s wall ({one.wall:.2f} s), "
          f"{one.cpu_rate:10,.0f} states/s per CPU second ({one.cpu:.2f} s)  "
          f"target >= {target:,}/core: {'met' if one.cpu_rate >= target else 'NOT met'}")
    print(f"  2 workers: {two.rate:10,.0f} states/s wall ({two.wall:.2f} s), "
          f"efficiency {eff:.0%} by the wall clock, {cpu_eff:.0%} by CPU time "
          f"({two.cpu:.2f} s in all processes; target >= {TARGET_EFFICIENCY:.0%})")
    if r1.transitions:
        print(f"  per transition on 1 worker: {one.cpu / r1.transitions * 1e6:,.0f} us of CPU "
              f"({r1.transitions / max(r1.states, 1):.1f} transitions per distinct state)")
    print(f"  identical results on 1 and 2 workers: {same}; "
          f"collision probability <= {r1.collision_probability:.1e}; "
          f"total {time.perf_counter() - t0:.1f} s")


def encodings(make: Callable[[], System], bounds: Bounds, repeat: int) -> None:
    """The canonical encoding of every Host the search encodes (its fingerprints), timed
    in full (``host_encoding``) and row by row from one ``RowCache`` across them, on one
    core: what the row cache saves per Host not seen before."""
    import memfail.check.encode as enc
    from memfail.check.freeze import freeze, thaw

    blobs: list[bytes] = []
    real = enc.RowCache.encode

    def keep(self: enc.RowCache, host: object) -> bytes:
        blobs.append(freeze(host))
        return real(self, host)

    enc.RowCache.encode = keep  # type: ignore[method-assign]
    try:
        with make_backend(1) as backend:
            explore(make(), backend, bounds, Options(stop_when_all_fail=False))
    finally:
        enc.RowCache.encode = real  # type: ignore[method-assign]
    hosts = [thaw(b) for b in blobs]
    full = rows = float("inf")
    for _ in range(max(repeat, 2)):
        t = time.process_time()
        want = [enc.host_encoding(h) for h in hosts]
        full = min(full, time.process_time() - t)
        cache = enc.RowCache()
        t = time.process_time()
        got = [cache.encode(h) for h in hosts]
        rows = min(rows, time.process_time() - t)
    n = max(len(hosts), 1)
    print(f"  encodings of the {len(hosts):,} Hosts the search encoded: "
          f"{full / n * 1e6:,.0f} us each in full, {rows / n * 1e6:,.0f} us row-cached "
          f"({cache.hits:,} rows from the cache, {cache.misses:,} encoded; "
          f"identical bytes: {got == want})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--policy", help="policy of the standard configuration (default: its first)")
    ap.add_argument("--depth", type=int, help="depth bound (default: the configuration's)")
    ap.add_argument("--races", action="store_true", help="the model with --races")
    ap.add_argument("--no-engine", action="store_true", help="skip the toy engine figure")
    ap.add_argument("--repeat", type=int, default=1,
                    help="measure each figure N times and keep the run with the least CPU "
                         "time (default 1)")
    ap.add_argument("--encoding", action="store_true",
                    help="also time the canonical encodings of the Hosts the model's search "
                         "encodes, in full and row-cached")
    args = ap.parse_args(argv)
    print(f"memfail check benchmark (cpu count {os.cpu_count()}, "
          f"load average {os.getloadavg()[0]:.1f}"
          f"{f', best of {args.repeat} by CPU time' if args.repeat > 1 else ''})")
    if not args.no_engine:
        report("engine (CounterSystem n=6 top=6)", lambda: CounterSystem(6, 6), Bounds(),
               TARGET_ENGINE, repeat=args.repeat)
    try:
        from memfail.check.config import standard_config
        from memfail.check.model_system import ModelSystem

        cfg = standard_config()
        policy = args.policy or cfg.policies[0]
        other = next((p for p in cfg.policies if p != policy), policy)
        ModelSystem(cfg, policy).initial()
    except Exception as e:  # the model may be incomplete; the engine figure still stands
        print(f"model (standard config): not measured: {type(e).__name__}: {e}")
        return 0
    depth = args.depth if args.depth is not None else cfg.bounds.depth
    races = args.races
    report(f"model (standard config, policy {policy}, depth {depth}"
           f"{', --races' if races else ''})",
           lambda: ModelSystem(cfg, policy, races), Bounds(max_depth=depth), TARGET_MODEL,
           lambda: ModelSystem(cfg, other, races), args.repeat)
    if args.encoding:
        encodings(lambda: ModelSystem(cfg, policy, races), Bounds(max_depth=depth), args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
