"""Benchmark of `memfail check`: distinct states per second, on one core and on 2 workers.

Prints figures for the engine alone (a toy system) and for the model on the standard config.
"""

from __future__ import annotations

import os
import sys
import time

from memfail.check.backends import make_backend
from memfail.check.explorer import Bounds, Options, Result, explore
from memfail.check.system import System
from memfail.check.toys import CounterSystem

TARGET_PER_CORE = 50_000
TARGET_EFFICIENCY = 0.80


def measure(system: System, workers: int, bounds: Bounds, warm: System | None) -> Result:
    opts = Options(stop_when_all_fail=False, chunk_size=2048)
    with make_backend(workers) as backend:
        if workers > 1:
            # start the worker processes and let each import what the system needs, before
            # timing (a `memfail check` run pays this once for all its policies); ``warm`` is
            # another instance, so no cached fingerprint of the measured system carries over
            explore(warm or CounterSystem(1, 1), backend, Bounds(max_depth=3), opts)
        return explore(system, backend, bounds, opts)


def report(name: str, system: System, bounds: Bounds, warm: System | None = None) -> None:
    t0 = time.perf_counter()
    one = measure(system, 1, bounds, None)
    two = measure(system, 2, bounds, warm)
    same = (one.states, one.transitions) == (two.states, two.transitions)
    eff = two.states_per_second / (2 * one.states_per_second) if one.states_per_second else 0.0
    print(f"{name}: {one.states:,} distinct states, {one.transitions:,} transitions, "
          f"depth {one.depth}{'' if one.complete else ' (bounded)'}")
    print(f"  1 worker : {one.states_per_second:12,.0f} states/s   ({one.elapsed:.2f} s)  "
          f"target >= {TARGET_PER_CORE:,}/core: {'met' if one.states_per_second >= TARGET_PER_CORE else 'NOT met'}")
    print(f"  2 workers: {two.states_per_second:12,.0f} states/s   ({two.elapsed:.2f} s)  "
          f"parallel efficiency {eff:.0%} (target >= {TARGET_EFFICIENCY:.0%}: "
          f"{'met' if eff >= TARGET_EFFICIENCY else 'NOT met'})")
    if one.transitions:
        print(f"  per transition on 1 worker: {one.elapsed / one.transitions * 1e6:,.0f} us "
              f"({one.transitions / max(one.states, 1):.1f} transitions per distinct state)")
    print(f"  identical results on 1 and 2 workers: {same}; "
          f"collision probability <= {one.collision_probability:.1e}; "
          f"total {time.perf_counter() - t0:.1f} s")


def main() -> int:
    print(f"memfail check benchmark (cpu count {os.cpu_count()})")
    report("engine (CounterSystem n=6 top=6)", CounterSystem(6, 6), Bounds())
    try:
        from memfail.check.config import standard_config
        from memfail.check.model_system import ModelSystem

        cfg = standard_config()
        system = ModelSystem(cfg, cfg.policies[0])
        system.initial()
    except Exception as e:  # the model may be incomplete; the engine figure still stands
        print(f"model (standard config): not measured: {type(e).__name__}: {e}")
        return 0
    report(f"model (standard config, policy {cfg.policies[0]})", system,
           Bounds(max_depth=cfg.bounds.depth), ModelSystem(cfg, cfg.policies[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
