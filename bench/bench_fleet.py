"""Benchmark of memfail fleet: sampling throughput, time to a rare rate at +-10 %, and the
model oracle on the default fleet (every sampled class under every policy).

Run: .venv/bin/python bench/bench_fleet.py [--workers N]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from memfail.fleet import engine
from memfail.fleet.oracle import ModelOracle, TableOracle
from memfail.fleet.params import load_fleet
from memfail.fleet.sampler import compile_spec, sample_batch

# A multi-step rare outcome: a second fault in the same 1 GiB folio of a confidential VM
# whose first fault a guest read met. About 1e-6 per host-year with the default fleet.
RARE = TableOracle.from_dict({"rules": [{
    "when": {"second_fault": True, "page_size": "1G", "vm_type": "confidential",
             "first_touch": "guest_read"},
    "outcome": {"host_panic": 1}}]})


def throughput(seconds: float = 3.0) -> tuple[float, float]:
    """Host-years sampled per second on one core (default fleet), and mean P(>=1 fault)."""
    spec = compile_spec(load_fleet().params)
    rng = np.random.default_rng(0)
    sample_batch(spec, rng, 100_000)  # warm-up
    n = done = 0
    sum_p = 0.0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        b = sample_batch(spec, rng, 1 << 20)
        n += b.host_years
        sum_p += b.sum_p
        done += 1
    return n / (time.perf_counter() - t0), sum_p / n


def time_to_rare_rate(workers: int, target: float = 0.10) -> None:
    """Double the host-years until the 95 % half-width is within ``target`` of the rate."""
    fleet = load_fleet()
    total = 0.0
    host_years = 250_000
    while True:
        t0 = time.perf_counter()
        res = engine.run(fleet, RARE, host_years, seed=1, workers=workers, policies=["p"])
        dt = time.perf_counter() - t0
        total += dt
        iv = res.rate("p", "host_panic").per_host_year
        rel = (iv.high - iv.low) / 2 / iv.estimate if iv.estimate > 0 else float("inf")
        print(f"  {res.plan.host_years:>12,} host-years  {dt:6.2f} s  rate {iv.estimate:.3e} "
              f"per host-year  [{iv.low:.3e}, {iv.high:.3e}]  +-{rel:.1%}")
        if rel <= target or host_years >= 1 << 30:
            break
        host_years *= 2
    print(f"rare rate to +-{target:.0%}: {dt:.2f} s for the final run, {total:.2f} s including "
          f"the doubling search, on {workers} worker(s)")


def model_oracle(workers: int, host_years: int = 2_000_000) -> None:
    """Wall time of the model oracle for the default fleet: every class the sampler sees in
    ``host_years`` under every default policy (what ``memfail fleet`` does without --oracle)."""
    fleet = load_fleet()
    t = engine.sample(fleet, host_years, seed=0, workers=workers)
    pols = fleet.params.policies
    oracle = ModelOracle(fleet.params.kernel_profile)
    t0 = time.perf_counter()
    oracle.prefetch(pols, t.classes, workers)
    for pol in pols:
        for c in t.classes:
            oracle.outcome(pol, c)
    dt = time.perf_counter() - t0
    print(f"model oracle: {len(t.classes)} classes x {len(pols)} policies = "
          f"{oracle.cache_size} outcomes from {oracle.model_runs} model runs in {dt:.1f} s "
          f"on {workers} worker(s) ({dt / max(1, oracle.model_runs) * 1e3:.1f} ms per run)")


def guest_rounds() -> None:
    """A hostile guest's class under minimum: the model plays MODEL_ROUNDS rounds and scales
    the rest; playing every round of a 2,000-round effort takes this much longer."""
    import memfail.fleet.oracle as om
    from memfail.fleet.classes import FailureClass

    cls = FailureClass("gmem_private", "default", 8, "2M", 1, True, False, "guest_read", True,
                       behaviour="hostile", effort=2000)
    t0 = time.perf_counter()
    scaled = ModelOracle().outcome("minimum", cls)
    dt_scaled = time.perf_counter() - t0
    rounds, om.MODEL_ROUNDS = om.MODEL_ROUNDS, 2000
    try:
        t0 = time.perf_counter()
        full = ModelOracle().outcome("minimum", cls)
        dt_full = time.perf_counter() - t0
    finally:
        om.MODEL_ROUNDS = rounds
    print(f"hostile guest, 2,000 rounds: scaled from {rounds} rounds {dt_scaled:.2f} s "
          f"(stall {scaled.host_stall_seconds:.4f} s), every round {dt_full:.2f} s "
          f"(stall {full.host_stall_seconds:.4f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = ap.parse_args()
    rate, p_bar = throughput()
    print(f"sampling: {rate / 1e6:.2f} M host-years/s on one core (each conditioned on >= 1 "
          f"fault; it stands for {1 / p_bar:.0f} unconditioned host-years, "
          f"{rate / p_bar / 1e6:.0f} M/s equivalent)")
    time_to_rare_rate(args.workers)
    guest_rounds()
    model_oracle(args.workers)


if __name__ == "__main__":
    main()
