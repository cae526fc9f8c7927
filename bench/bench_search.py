"""Benchmark of `memfail search`: time, peak memory and scaling with 1 and 2 workers.

Runs the search as the command line does, in a child process per run, and prints for each:
wall time, CPU time of the process and its workers (user + system), peak RSS of the largest
process, whether the JSON is identical, and the work done (checks, trace signatures).

    python bench/bench_search.py            # the default search on 1 and 2 workers
    python bench/bench_search.py --quick    # the --quick search (seconds to minutes)
    python bench/bench_search.py --workers 2 -- --depth 5   # one run, extra search options

The target is the default search under 15 minutes and 4 GB on 2 cores. On a machine whose
cores are shared with other work, wall time grows and CPU time is the figure to compare: on
2 idle cores the wall time of a 2-worker run is about its CPU time / 2 plus the serial part.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any

TARGET_S = 15 * 60
TARGET_MB = 4096


def one(workers: int, extra: list[str]) -> tuple[float, float, float, dict[str, Any]]:
    """(wall s, CPU s of the run and its workers, peak RSS MiB, JSON document)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.TemporaryFile() as out:
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "memfail.cli", "search", "--json", "--workers",
                        str(workers), *extra], stdout=out, check=True)
        wall = time.monotonic() - t0
        out.seek(0)
        doc = json.loads(out.read())
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    # ru_maxrss of children: the largest descendant that has been waited for (KiB on Linux)
    return wall, cpu, after.ru_maxrss / 1024, doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="bench the --quick search")
    ap.add_argument("--workers", type=int, action="append",
                    help="worker counts to run (default 1 and 2)")
    ap.add_argument("extra", nargs="*", help="more `memfail search` options, after --")
    a = ap.parse_args()
    extra = (["--quick"] if a.quick else []) + a.extra
    counts = a.workers or [1, 2]
    print(f"memfail search {' '.join(extra) or '(default)'}; {os.cpu_count()} CPUs, load "
          f"{os.getloadavg()[0]:.1f}")
    docs = []
    base_wall = None
    for w in counts:
        wall, cpu, rss, doc = one(w, extra)
        docs.append(doc)
        base_wall = base_wall or wall
        sp = doc["space"]
        assert isinstance(sp, dict)
        print(f"  {w} worker(s): {wall:8.1f} s wall, {cpu:8.1f} s CPU, peak RSS {rss:7.0f} MiB; "
              f"{sp['checks_run']} checks, {sp['signatures_run']} trace signatures, "
              f"{len(doc['minimal'])} minimal policies (speed-up vs first: "
              f"{base_wall / wall:.2f}x)")
        print(f"      target < {TARGET_S // 60} min: {'met' if wall < TARGET_S else 'NOT met'}"
              f" (wall), {'met' if cpu / max(w, 1) < TARGET_S else 'NOT met'} (CPU / "
              f"workers); < {TARGET_MB} MiB: {'met' if rss < TARGET_MB else 'NOT met'}")
    if len(docs) > 1:
        print(f"  identical JSON on {', '.join(map(str, counts))} workers: "
              f"{all(d == docs[0] for d in docs)}")


if __name__ == "__main__":
    main()
