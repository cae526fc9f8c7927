"""Benchmark of the command line's start-up: ``memfail --help`` and ``memfail --version`` in
a fresh interpreter (commands import their modules only when they run), and the second
``memfail fleet run`` with a warm model-run cache.

Run: .venv/bin/python bench/bench_cli.py [--fleet]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

MEMFAIL = [sys.executable, "-c", "import sys; from memfail.cli import main; sys.exit(main())"]


def wall(args: list[str], runs: int, env: dict[str, str] | None = None) -> list[float]:
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(MEMFAIL + args, capture_output=True, check=False, env=env)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--fleet", action="store_true",
                    help="also time `memfail fleet run` twice with an empty cache")
    a = ap.parse_args()
    for args in (["--help"], ["--version"], ["check", "--help"]):
        t = wall(args, a.runs)
        print(f"memfail {' '.join(args)}: median {statistics.median(t) * 1000:.0f} ms, "
              f"max {max(t) * 1000:.0f} ms over {a.runs} runs")
    if a.fleet:
        with tempfile.TemporaryDirectory() as cache:
            env = {**os.environ, "MEMFAIL_CACHE_DIR": cache}
            for label in ("cold cache", "warm cache"):
                t = wall(["fleet", "run", "--workers", "2", "--json"], 1, env)
                print(f"memfail fleet run --workers 2 ({label}): {t[0]:.1f} s")


if __name__ == "__main__":
    main()
