"""memfail fleet: common random numbers across the grid points of a sweep (docs/fleet.md,
"Sweeps"). Every point uses the same seed; every random component draws from its own stream a
number of variates that no parameter changes, so what does not depend on the swept parameter
is identical at every point and what does moves smoothly."""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from memfail.fleet import engine
from memfail.fleet.classes import FailureClass
from memfail.fleet.oracle import TableOracle
from memfail.fleet.params import LoadedFleet, load_fleet, with_assignments

HOST_YEARS = 64 * 256
CONF = [0.0, 0.001, 0.25, 0.5, 0.999, 1.0]


@pytest.fixture(scope="module")
def base() -> LoadedFleet:
    return load_fleet(None)


def tallies(fleet: LoadedFleet, host_years: int = HOST_YEARS) -> dict[FailureClass, float]:
    t = engine.sample(fleet, host_years, seed=3)
    return dict(zip(t.classes, t.tallies.sum(axis=0).tolist(), strict=True))


def marginal(t: dict[FailureClass, float],
             key: Callable[[FailureClass], Any]) -> dict[Any, float]:
    out: dict[Any, float] = {}
    for c, v in t.items():
        out[key(c)] = out.get(key(c), 0.0) + v
    return out


def distance(a: dict[Any, float], b: dict[Any, float]) -> float:
    """Relative L1 distance between two tallies (0: the same sampled failures)."""
    keys = set(a) | set(b)
    return sum(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in keys) / sum(a.values())


def same(a: dict[Any, float], b: dict[Any, float]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-12, abs=1e-15), k


# ------------------------------------------------------------------ the reported sweep


ORACLE = TableOracle.from_dict({"default": {}, "rules": [
    {"when": {"memory": "kernel"}, "outcome": {"host_panic": 1}},
    {"when": {"vm_type": "confidential", "memory": ["gmem_private", "gmem_shared"]},
     "outcome": {"vm_paused": 1}},
    {"when": {"vm_type": "default", "memory": ["gmem_private", "gmem_shared"]},
     "outcome": {"vm_killed": 1}},
]})


@pytest.fixture(scope="module")
def conf_sweep(base: LoadedFleet) -> list[engine.FleetResult]:
    return engine.sweep(base, {"vms.confidential_share": CONF}, ORACLE, HOST_YEARS, seed=0,
                        policies=["minimum"])


def test_confidential_share_leaves_what_does_not_depend_on_it_identical(
        conf_sweep: list[engine.FleetResult]) -> None:
    """The user's report: intermediate shares drew other faults (by_memory, host_panic moved
    by 2.6 % for a share change of 0.001 while the ends agreed)."""
    first = conf_sweep[0]
    for r in conf_sweep[1:]:
        for f in ("estimate", "low", "high"):
            assert getattr(r.faults_per_host_year, f) == pytest.approx(
                getattr(first.faults_per_host_year, f), rel=1e-12)
        assert r.p_any_fault == first.p_any_fault
        for m, iv in first.by_memory.items():
            assert r.by_memory[m].estimate == pytest.approx(iv.estimate, rel=1e-12)
        # kernel memory is not VM memory: its panics do not depend on the share
        assert r.rate("minimum", "host_panic").per_host_year.estimate == pytest.approx(
            first.rate("minimum", "host_panic").per_host_year.estimate, rel=1e-12)


def test_confidential_share_moves_what_depends_on_it_monotonically(
        conf_sweep: list[engine.FleetResult]) -> None:
    paused = [r.rate("minimum", "vm_paused").per_host_year.estimate for r in conf_sweep]
    killed = [r.rate("minimum", "vm_killed").per_host_year.estimate for r in conf_sweep]
    assert paused[0] == 0 and killed[-1] == 0
    assert all(b >= a for a, b in itertools.pairwise(paused))
    assert all(b <= a for a, b in itertools.pairwise(killed))
    # guest memory is split exactly: what one loses the other gains, at every point
    total = [p + k for p, k in zip(paused, killed, strict=True)]
    assert total == pytest.approx([total[0]] * len(total), rel=1e-12)
    # a confidential VM loses the kernel users that do not read confidential memory, so a
    # fault is consumed later or not at all: the share consumed can only fall
    consumed = [r.consumed_before_scrub.estimate for r in conf_sweep]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(consumed))
    # and it moves by little: 0.001 of the VMs changes the consumed share by far less than
    # its statistical error
    assert abs(consumed[1] - consumed[0]) < 1e-3


def test_confidential_share_keeps_the_location_of_every_fault(base: LoadedFleet) -> None:
    """Only the VM type of guest and VMM memory changes; memory, VM size, page size, mode,
    permanence and persistence of every sampled failure stay."""
    key = lambda c: (c.memory, c.vm_gib, c.page_size, c.pages_hit, c.permanent,  # noqa: E731
                     c.second_fault)
    ref = marginal(tallies(with_assignments(base, {"vms.confidential_share": 0.0})), key)
    for v in CONF[1:]:
        same(ref, marginal(tallies(with_assignments(base, {"vms.confidential_share": v})), key))


# ------------------------------------------------------------------ every sweepable parameter


def _scaled(tree: Any, path: tuple[Any, ...], factor: float) -> Any:
    out = copy.deepcopy(tree)
    node = out
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] *= factor
    return out


def _moved(shares: dict[str, float], src: str, dst: str, eps: float) -> dict[str, float]:
    out = dict(shares)
    out[src] -= eps
    out[dst] += eps
    return out


def _perturbations(base: LoadedFleet) -> list[tuple[str, Any, Any]]:
    """(path, value, value changed by about 0.1 %) for every continuous sweepable parameter."""
    p = base.plain
    eps = 1e-3
    out: list[tuple[str, Any, Any]] = []
    for path in ("fleet.host_memory_gib", "faults.ue_rate_per_host_year",
                 "frailty.mean_over_median", "scrub.period_hours", "vms.mean_lifetime_hours",
                 "access.vmm_shared_read_per_hour", "faults.modes.single_bit.permanent_fit",
                 "faults.modes.multi_rank.transient_fit"):
        v: Any = p
        for part in path.split("."):
            v = v[part]
        out.append((path, v, float(v) * (1 + eps)))
    for path in ("vms.confidential_share", "vms.careless_share", "vms.hostile_share"):
        out.append((path, 0.0, eps))
        out.append((path, 0.25, 0.25 + eps))
    out.append(("vms.confidential_share", 1.0 - eps, 1.0))
    sh = p["composition"]["shares"]
    out.append(("composition.shares", sh, _moved(sh, "gmem_private", "vmm", eps)))
    ps = p["vms"]["page_size"]
    out.append(("vms.page_size", ps, _moved(ps, "2M", "4K", eps)))
    out.append(("vms.page_size", ps, _moved(ps, "2M", "1G", eps)))
    sizes = p["vms"]["sizes"]
    moved = copy.deepcopy(sizes)
    moved[0]["share"] -= eps
    moved[-1]["share"] += eps
    out.append(("vms.sizes", sizes, moved))
    for kind in ("guest", "vmm", "kernel"):
        bins = p["heat"][kind]
        out.append((f"heat.{kind}", bins, _scaled(bins, (0, "rate_per_hour"), 1 + eps)))
        if len(bins) > 1:
            b2 = copy.deepcopy(bins)
            b2[0]["share"] -= eps
            b2[1]["share"] += eps
            out.append((f"heat.{kind}", bins, b2))
    users = p["access"]["kernel_users"]
    for i in range(len(users)):
        out.append(("access.kernel_users", users, _scaled(users, (i, "rate_per_hour"), 1 + eps)))
    return out


def test_every_sweepable_parameter_moves_the_sample_smoothly(base: LoadedFleet) -> None:
    """A change of about 0.1 % in any continuous parameter changes the sampled failure
    tallies by about as much, not by the Monte Carlo noise of a fresh sample (a few %)."""
    pareto = with_assignments(base, {"frailty.distribution": "pareto"})
    bad = []
    for fleet, label in ((base, ""), (pareto, " (pareto)")):
        cases = _perturbations(base) if not label else [
            ("frailty.mean_over_median", 55.0, 55.055),
            ("faults.ue_rate_per_host_year", 0.0254, 0.0254 * 1.001)]
        for path, v0, v1 in cases:
            d = distance(tallies(with_assignments(fleet, {path: v0})),
                         tallies(with_assignments(fleet, {path: v1})))
            if d > 0.01:
                bad.append(f"{path}{label}: {v0!r} -> {v1!r} moved {d:.3f} of the tally")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(("path", "v0", "v1", "fields"), [
    ("fleet.hosts", 2000, 5000, ()),
    ("fleet.host_cpus", 64, 8, ("host_cpus",)),
    ("vms.guest_effort", {"careless": 10, "hostile": 10_000, "confidential": 10_000},
     {"careless": 3, "hostile": 100, "confidential": 7}, ("effort",)),
    ("dram.footprint_cap_pages", None, 3, ("pages_hit", "same_folio")),
    ("dram.row_bytes_per_chip", None, 512, ("pages_hit", "same_folio")),
])
def test_parameters_that_only_relabel_leave_the_sample_as_it_was(
        base: LoadedFleet, path: str, v0: Any, v1: Any, fields: tuple[str, ...]) -> None:
    """Host count, CPUs, efforts and fault footprints draw nothing: the same failures are
    sampled at every point, only the fields they set change."""
    if v0 is None:
        v0 = base.plain
        for part in path.split("."):
            v0 = v0[part]
    blank: dict[str, Any] = {f: (False if f == "same_folio" else 0) for f in fields}

    def key(c: FailureClass) -> FailureClass:
        return dataclasses.replace(c, **blank)

    same(marginal(tallies(with_assignments(base, {path: v0})), key),
         marginal(tallies(with_assignments(base, {path: v1})), key))


def test_a_mode_rate_moves_faults_only_into_or_out_of_that_mode(base: LoadedFleet) -> None:
    """Categories are drawn by an exponential race, one clock per category: raising the
    single-bit FIT takes faults from every other mode into single-bit, and no other mode gains
    (an alias table or an inverse CDF would also move faults between the other modes)."""
    fit = base.plain["faults"]["modes"]["single_bit"]["permanent_fit"]
    t0 = tallies(with_assignments(base, {"faults.modes.single_bit.permanent_fit": fit}))
    t1 = tallies(with_assignments(base, {"faults.modes.single_bit.permanent_fit": fit * 1.2}))
    for c in set(t0) | set(t1):
        a, b = t0.get(c, 0.0), t1.get(c, 0.0)
        if c.pages_hit == 1 and c.permanent:
            continue  # single bit (or single word, the same class): may gain
        assert b <= a * (1 + 1e-12) + 1e-15, c
    gained = sum(v for c, v in t1.items()) - sum(v for c, v in t0.items())
    assert gained == pytest.approx(0.0, abs=1e-12 * sum(t0.values()))


def test_sample_streams_do_not_depend_on_how_many_categories_a_factor_has(
        base: LoadedFleet) -> None:
    """A heat distribution with one more bin (of share 0) samples the same failures."""
    bins = base.plain["heat"]["guest"]
    more = [*copy.deepcopy(bins), {"rate_per_hour": 5.0, "share": 0.0}]
    same(tallies(with_assignments(base, {"heat.guest": bins})),
         tallies(with_assignments(base, {"heat.guest": more})))
    assert np.isfinite(sum(tallies(base).values()))
