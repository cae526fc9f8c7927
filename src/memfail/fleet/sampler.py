"""Vectorised sampler: host-years -> weighted tallies of failure classes.

Conditional Monte Carlo on fault arrival, a sampled access-versus-scrub race, and splitting on
the rare second fault in the same huge folio; see docs/fleet.md "Method".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

import numpy as np
from scipy.optimize import brentq

from memfail.fleet.classes import BEHAVIOURS, PAGE_BYTES, TOUCHES, FailureClass
from memfail.fleet.params import MEMORY_KINDS, FleetParams

HOURS_PER_YEAR = 8766.0
N_TOUCH = len(TOUCHES)  # guest_read, vmm_read, kernel_checked, kernel_unchecked, scrub
N_BEH = len(BEHAVIOURS)  # cooperative, careless, hostile, confidential
CHUNK = 1 << 18  # host-years sampled at once (bounds memory)
ROULETTE = 8.0  # later faults of a host-year are sampled with probability min(1, 8 E[count])
TILT_SHARE = 0.5  # share of lognormal frailty draws taken from the shifted component


def _alias(probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker/Vose alias table: draw index i with probability probs[i] from one uniform."""
    p = np.asarray(probs, dtype=float)
    p = p / p.sum()
    n = len(p)
    scaled = p * n
    prob = np.ones(n)
    alias = np.arange(n)
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if scaled[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s] = scaled[s]
        alias[s] = g
        scaled[g] = scaled[g] + scaled[s] - 1.0
        (small if scaled[g] < 1.0 else large).append(g)
    return prob, alias


def _draw(u: np.ndarray, table: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    prob, alias = table
    x = u * len(prob)
    i = np.minimum(x.astype(np.intp), len(prob) - 1)
    return np.where(x - i < prob[i], i, alias[i])


def pareto_shape(mean_over_median: float) -> float:
    """Pareto (type I) shape whose mean/median ratio is ``mean_over_median`` (> 1)."""
    def f(a: float) -> float:
        return a / ((a - 1.0) * 2.0 ** (1.0 / a)) - mean_over_median
    return float(brentq(f, 1.0 + 1e-9, 1e6))


@dataclass(frozen=True)
class Location:
    """Where a fault lands: the part of a failure class fixed by the composition."""

    memory: str
    vm_type: str
    vm_gib: int
    page_size: str


@dataclass(frozen=True)
class ModeCell:
    """A fault mode and persistence, with its page footprint."""

    mode: str
    permanent: bool
    pages_hit: int
    same_folio: bool


@dataclass(frozen=True)
class SamplerSpec:
    """Everything a shard needs, as plain arrays (picklable, built once per run)."""

    ue_rate: float
    frailty: str
    frailty_shape: float
    scrub_hours: float
    window_years: float
    locations: tuple[Location, ...]
    modes: tuple[ModeCell, ...]
    cell_loc: np.ndarray  # cell -> location index
    cell_table: tuple[np.ndarray, np.ndarray]  # alias table over (location, heat) cells
    cell_rate: np.ndarray  # total read rate per hour of a page in the cell
    cell_cum0: np.ndarray  # cumulative accessor shares: guest | vmm | kernel checked | rest
    cell_cum1: np.ndarray
    cell_cum2: np.ndarray
    cell_folio: np.ndarray  # folio bytes / host bytes (0: no second-fault branch)
    mode_table: tuple[np.ndarray, np.ndarray]
    cell_beh: np.ndarray | None = None  # (cells, N_BEH): share of each guest behaviour
    effort: tuple[int, ...] = (0, 0, 0, 0)  # rounds per behaviour (cooperative: 0)
    host_cpus: int = 64

    @property
    def n_classes(self) -> int:
        return len(self.locations) * len(self.modes) * N_TOUCH * 2 * N_BEH

    def decode(self, index: int) -> FailureClass:
        """The failure class of a tally column."""
        index, beh = divmod(index, N_BEH)
        index, second = divmod(index, 2)
        index, touch = divmod(index, N_TOUCH)
        loc_i, mode_i = divmod(index, len(self.modes))
        loc, mode = self.locations[loc_i], self.modes[mode_i]
        return FailureClass(
            memory=loc.memory, vm_type=loc.vm_type, vm_gib=loc.vm_gib,  # type: ignore[arg-type]
            page_size=loc.page_size, pages_hit=mode.pages_hit,  # type: ignore[arg-type]
            same_folio=mode.same_folio, second_fault=bool(second),
            first_touch=TOUCHES[touch], permanent=mode.permanent,
            behaviour=BEHAVIOURS[beh], effort=self.effort[beh], host_cpus=self.host_cpus)


def _mode_cells(p: FleetParams) -> tuple[list[ModeCell], list[float]]:
    d = p.dram
    row_pages = max(1, d.row_bytes_per_chip * d.data_chips_per_rank // 4096)
    cap = d.footprint_cap_pages
    footprint = {
        "single_bit": (1, True), "single_word": (1, True),
        "single_row": (min(row_pages, cap), True),
        "single_column": (cap, cap == 1), "single_bank": (cap, cap == 1),
        "multi_bank": (cap, cap == 1), "multi_rank": (cap, cap == 1),
    }
    cells, weights = [], []
    for name, rate in p.faults.modes.items():
        pages, same = footprint[name]
        for permanent, fit in ((True, rate.permanent_fit), (False, rate.transient_fit)):
            if fit > 0:
                cells.append(ModeCell(name, permanent, pages, same))
                weights.append(fit)
    return cells, weights


def compile_spec(p: FleetParams) -> SamplerSpec:
    """Turn validated parameters into the sampler's tables."""
    shares = {k: p.composition.shares.get(k, 0.0) for k in MEMORY_KINDS}  # type: ignore[call-overload]
    conf = p.vms.confidential_share
    vm_types = [("default", 1.0 - conf), ("confidential", conf)]
    by_count = [(s.gib, s.share) for s in p.vms.sizes]
    mem_total = sum(g * s for g, s in by_count)
    by_memory = [(g, g * s / mem_total) for g, s in by_count]
    pages: list[tuple[str, float]] = [(k, v) for k, v in p.vms.page_size.items() if v > 0]
    huge = [(k, v) for k, v in pages if k != "4K"]
    huge_total = sum(v for _, v in huge)
    free_pages: list[tuple[str, float]] = \
        [(k, v / huge_total) for k, v in huge] if huge_total > 0 else [("2M", 1.0)]
    heat = {"guest": p.heat.guest, "vmm": p.heat.vmm, "kernel": p.heat.kernel}
    host_bytes = p.fleet.host_memory_gib * (1 << 30)

    def kernel_rates(memory: str, vm_type: str) -> tuple[float, float]:
        checked = unchecked = 0.0
        for u in p.access.kernel_users:
            if memory in u.memory and (u.confidential or vm_type != "confidential"):
                if u.checks_hwpoison:
                    checked += u.rate_per_hour
                else:
                    unchecked += u.rate_per_hour
        return checked, unchecked

    locations: list[Location] = []
    cells: list[tuple[int, float, tuple[float, float, float, float], float]] = []

    def add(loc: Location, prob: float, heat_bins: list[tuple[float, float]],
            rates: tuple[float, float, float, float] | None, own: int | None) -> None:
        """own: which accessor reads at the heat rate (0 guest, 1 vmm, 3 kernel)."""
        if prob <= 0:
            return
        locations.append(loc)
        li = len(locations) - 1
        folio = 0.0
        if loc.memory in ("gmem_private", "gmem_shared") and loc.page_size != "4K":
            folio = PAGE_BYTES[loc.page_size] / host_bytes
        for rate, share in heat_bins:
            r = list(rates or (0.0, 0.0, 0.0, 0.0))
            if own is not None:
                r[own] += rate
            cells.append((li, prob * share, (r[0], r[1], r[2], r[3]), folio))

    guest_bins = [(b.rate_per_hour, b.share) for b in heat["guest"]]
    for memory in ("gmem_private", "gmem_shared"):
        for (vt, vs), (gib, gs), (ps, pp) in product(vm_types, by_memory, pages):
            chk, unchk = kernel_rates(memory, vt)
            vmm = p.access.vmm_shared_read_per_hour if memory == "gmem_shared" else 0.0
            add(Location(memory, vt, gib, ps), shares[memory] * vs * gs * pp, guest_bins,
                (0.0, vmm, chk, unchk), 0)
    chk, unchk = kernel_rates("hugetlb_free", "none")
    for ps, pp in free_pages:
        add(Location("hugetlb_free", "none", 0, ps), shares["hugetlb_free"] * pp,
            [(0.0, 1.0)], (0.0, 0.0, chk, unchk), None)
    vmm_bins = [(b.rate_per_hour, b.share) for b in heat["vmm"]]
    for (vt, vs), (gib, gs) in product(vm_types, by_count):
        chk, unchk = kernel_rates("vmm", vt)
        add(Location("vmm", vt, gib, "4K"), shares["vmm"] * vs * gs, vmm_bins,
            (0.0, 0.0, chk, unchk), 1)
    chk, unchk = kernel_rates("kernel", "none")
    add(Location("kernel", "none", 0, "4K"), shares["kernel"],
        [(b.rate_per_hour, b.share) for b in heat["kernel"]], (0.0, 0.0, chk, unchk), 3)

    # Guest behaviours (a deterministic split, no random draw: a share of 0 leaves every
    # sampled number as it was). Confidential VMs behave `confidential`; the other VMs
    # split into careless, hostile and cooperative (the rest) by their shares.
    # Memory no guest reads (VMM, free pool, kernel) stays `cooperative`.
    v = p.vms
    split = [v.cooperative_share, v.careless_share, v.hostile_share, 0.0]
    beh = np.zeros((len(cells), N_BEH))
    for i, c in enumerate(cells):
        loc = locations[c[0]]
        if loc.memory not in ("gmem_private", "gmem_shared"):
            beh[i, 0] = 1.0
        elif loc.vm_type == "confidential":
            beh[i, 3] = 1.0
        else:
            beh[i] = split
    e = v.guest_effort
    rates = np.array([c[2] for c in cells], dtype=float)
    total = rates.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(total[:, None] > 0, rates / total[:, None], 0.25)
    cum = np.cumsum(frac, axis=1)[:, :3]
    modes, mode_w = _mode_cells(p)
    fr = p.frailty
    shape = 0.0
    if fr.distribution == "lognormal":
        shape = math.sqrt(2.0 * math.log(fr.mean_over_median))
    elif fr.distribution == "pareto":
        if fr.mean_over_median <= 1.0:
            raise ValueError("a Pareto frailty needs mean_over_median > 1")
        shape = pareto_shape(fr.mean_over_median)
    return SamplerSpec(
        ue_rate=p.faults.ue_rate_per_host_year,
        frailty=fr.distribution if shape > 0 else "none",
        frailty_shape=shape,
        scrub_hours=p.scrub.period_hours,
        window_years=p.vms.mean_lifetime_hours / HOURS_PER_YEAR,
        locations=tuple(locations),
        modes=tuple(modes),
        cell_loc=np.array([c[0] for c in cells], dtype=np.intp),
        cell_table=_alias(np.array([c[1] for c in cells])),
        cell_rate=total,
        cell_cum0=cum[:, 0].astype(np.float32),
        cell_cum1=cum[:, 1].astype(np.float32),
        cell_cum2=cum[:, 2].astype(np.float32),
        cell_folio=np.array([c[3] for c in cells], dtype=float),
        mode_table=_alias(np.array(mode_w)),
        cell_beh=beh,
        effort=(0, e.careless, e.hostile, e.confidential),
        host_cpus=p.fleet.host_cpus,
    )


def _frailty(spec: SamplerSpec, rng: np.random.Generator,
             n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-host fault-proneness multipliers (mean 1) and their likelihood ratios.

    The lognormal frailty is drawn from a defensive mixture: a fixed share ``TILT_SHARE`` of
    the draws has its normal deviate shifted by sigma (one standard deviation of log-frailty), so the frail hosts that carry the
    multi-fault outcomes are sampled often; the likelihood ratio phi(z) / mixture(z) <= 2
    corrects the weights (importance sampling that cannot blow up the variance of
    ordinary outcomes). Pareto frailty is drawn directly.
    """
    if spec.frailty == "lognormal":
        s = spec.frailty_shape
        z = rng.standard_normal(n)
        z[: int(n * TILT_SHARE)] += s  # stratified: a fixed share comes from the shift
        lr = 1.0 / ((1.0 - TILT_SHARE) + TILT_SHARE * np.exp(s * z - 0.5 * s * s))
        return np.exp(s * z - 0.5 * s * s), lr
    if spec.frailty == "pareto":
        a = spec.frailty_shape
        return ((a - 1.0) / a) * rng.random(n) ** (-1.0 / a), None
    return np.ones(n), None


@dataclass
class BatchTally:
    """One batch: host-years sampled, sum of P(>=1 fault), weighted class tallies."""

    host_years: int
    sum_p: float
    tally: np.ndarray  # (n_classes,) expected failures per class, summed over the batch


def sample_batch(spec: SamplerSpec, rng: np.random.Generator, host_years: int) -> BatchTally:
    """Sample ``host_years`` host-years, each conditioned on at least one fault.

    Host-year i has fault rate mu_i = rate * frailty_i; it is drawn conditioned on N_i >= 1
    and weighted by p_i = P(N_i >= 1), which removes the arrival variance of the many
    fault-free host-years (conditional Monte Carlo). Each fault's location, mode and first
    touch are sampled; the rare second fault in the same huge folio is split off
    deterministically with its exact probability q instead of being sampled.
    """
    k = spec.n_classes
    tally = np.zeros(k)
    sum_p = 0.0
    n_modes = len(spec.modes)
    for start in range(0, host_years, CHUNK):
        n = min(CHUNK, host_years - start)
        frail, lr = _frailty(spec, rng, n)
        mu = spec.ue_rate * frail
        p = -np.expm1(-mu)
        w = p if lr is None else p * lr
        sum_p += float(w.sum())
        # First arrival time given >= 1 arrival in the year; the faults after it number
        # Poisson(e) with e = mu (1 - t1), and their classes are i.i.d. given mu. One sampled
        # class weighted by e stands for all of them (same expectation), and it is kept
        # only with probability r = min(1, ROULETTE e), weighted 1/r (Russian roulette).
        t1 = -np.log1p(-rng.random(n) * p) / mu
        e = mu * (1.0 - t1)
        r = np.minimum(1.0, ROULETTE * e)
        kept = np.flatnonzero(rng.random(n) < r)
        mu_f = np.concatenate((mu, mu[kept]))
        w = np.concatenate((w, w[kept] * e[kept] / r[kept]))
        m = len(w)
        u = rng.random((2, m))
        v = rng.random((3, m), dtype=np.float32)
        cell = _draw(u[0], spec.cell_table)
        mode = _draw(u[1], spec.mode_table)
        with np.errstate(divide="ignore"):
            # hours until the first read (inf: never read); 1 - v lies in (0, 1]
            access = -np.log(1.0 - v[0]) / spec.cell_rate[cell]
        consumed = access < v[1] * spec.scrub_hours
        x = v[2]
        who = (x > spec.cell_cum0[cell]).astype(np.intp) + (x > spec.cell_cum1[cell]) \
            + (x > spec.cell_cum2[cell])
        touch = np.where(consumed, who, N_TOUCH - 1)
        base = ((spec.cell_loc[cell] * n_modes + mode) * N_TOUCH + touch) * 2 * N_BEH
        folio = spec.cell_folio[cell]
        q = -np.expm1(-mu_f * folio * spec.window_years)
        split = folio > 0
        share = spec.cell_beh[cell] if spec.cell_beh is not None else None
        for b in range(N_BEH):
            wb = w if share is None else w * share[:, b]
            if share is not None and not wb.any():
                continue
            tally += np.bincount(base + b, weights=wb * (1.0 - q), minlength=k)
            if split.any():
                tally += np.bincount(base[split] + N_BEH + b, weights=(wb * q)[split],
                                     minlength=k)
    return BatchTally(host_years, sum_p, tally)
