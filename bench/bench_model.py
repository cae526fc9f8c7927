"""Benchmark: the host model at scale (issue 2 targets).

Builds a 1 TiB host with 64 VMs' worth of QEMU processes and guest-RAM mappings, then applies
a mixed stream of user loads/stores, faults and memory_failure() calls. Prints set-up time,
peak memory (tracemalloc) and actions per second. Targets: >= 100k actions/s, set-up < 0.5 s
and < 200 MB.
"""

from __future__ import annotations

import time
import tracemalloc

from memfail.model.actions import Action, Madvise, MemRead, MemWrite, Mmap, Sigaction, Spawn
from memfail.model.host import Host, HostConfig

VMS = 64


def build() -> Host:
    host = Host(HostConfig(memory="1T", hugepages={"1G": 64}))
    for i in range(VMS):
        p = f"qemu{i}"
        host.apply(Spawn(proc=p, threads=["main", "vcpu0", "vcpu1"]))
        host.apply(Sigaction(proc=p, sigbus="handler"))
        host.apply(Mmap(proc=p, name="ram", size="16G"))        # sparse: nothing touched yet
        host.apply(Mmap(proc=p, name="huge", size="1G", hugetlb="1G"))
    return host


def main() -> None:
    tracemalloc.start()
    t0 = time.perf_counter()
    host = build()
    setup_s = time.perf_counter() - t0
    _cur, setup_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    actions: list[Action] = []
    for k in range(2000):
        p = f"qemu{k % VMS}"
        off = f"ram+{(k * 37) % 4096}p"
        actions.append(MemWrite(proc=p, thread="vcpu0", addr=off))
        actions.append(MemRead(proc=p, thread="vcpu1", addr=off))
    for i in range(0, VMS, 8):
        actions.append(Madvise(proc=f"qemu{i}", addr="ram+5p", advice="hwpoison"))
    t0 = time.perf_counter()
    n = 0
    for _ in range(5):
        for a in actions:
            host.apply(a)
            n += 1
    run_s = time.perf_counter() - t0
    print(f"set-up of a 1 TiB host with {VMS} VMM processes: {setup_s * 1000:.1f} ms, "
          f"peak {setup_peak / 2**20:.1f} MiB (targets < 500 ms, < 200 MB)")
    print(f"actions: {n} in {run_s:.2f} s = {n / run_s:,.0f} actions/s (target >= 100,000)")
    print(f"trace events: {len(host.trace.events):,}")


if __name__ == "__main__":
    main()
