"""Benchmark: the whole policy comparison (every built-in vm-* scenario under every policy)
on 2 worker processes. Prints wall time and peak memory (RSS of this process plus its
workers). Target: under 30 s and under 1 GB."""

from __future__ import annotations

import resource
import time

from memfail.model.policy.registry import PRESETS
from memfail.report.compare import compare_scenarios, run_compare


def main() -> None:
    scen = compare_scenarios()
    t0 = time.perf_counter()
    cells = run_compare(scen, list(PRESETS), workers=2)
    wall = time.perf_counter() - t0
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"compare: {len(scen)} scenarios x {len(PRESETS)} policies = {len(cells)} runs "
          f"in {wall:.2f} s on 2 workers (target < 30 s)")
    print(f"peak RSS: parent {own:.0f} MiB, largest worker {kids:.0f} MiB "
          f"(sum bound {own + 2 * kids:.0f} MiB; target < 1024 MiB)")


if __name__ == "__main__":
    main()
