"""memfail report --quick: seconds per stage (compare, check, fleet, sensitivity, kernels,
oracle, replay), the page's render time and size. Prints figures; asserts nothing."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from memfail.report.html.collect import Settings, collect
from memfail.report.html.page import render


def main() -> None:
    times: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def step(what: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        times.append((what, time.perf_counter() - t))

    with tempfile.TemporaryDirectory() as d:
        s = Settings.make(Path(d) / "r.html", True)
        t0 = time.perf_counter()
        data = collect(s, step)
        total = time.perf_counter() - t0
        t1 = time.perf_counter()
        html = render(data)
        rt = time.perf_counter() - t1
    for what, sec in times:
        print(f"report --quick: {sec:7.1f} s  {what}")
    print(f"report --quick: {total:7.1f} s  collect in all (fleet cache as found)")
    print(f"report --quick: {rt:7.2f} s  render, {len(html) / 1024:.0f} KiB, "
          f"{len(data['counterexamples'])} counterexamples")


if __name__ == "__main__":
    main()
