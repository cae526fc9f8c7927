"""Vectorised sampler: host-years -> weighted tallies of failure classes.

Conditional Monte Carlo on fault arrival, a sampled access-versus-scrub race, and splitting on
the rare second fault in the same huge folio; see docs/fleet.md "Method".
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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
    cell_rate: np.ndarray  # total read rate per hour of a page in the cell
    cell_cum0: np.ndarray  # cumulative accessor shares: guest | vmm | kernel checked | rest
    cell_cum1: np.ndarray
    cell_cum2: np.ndarray
    cell_folio: np.ndarray  # folio bytes / host bytes (0: no second-fault branch)
    mode_w: np.ndarray  # weight of each of ``modes`` (its FIT)
    confidential_share: float  # a VM is confidential when its uniform is below this
    mem_w: np.ndarray  # (memory kinds,) weights: the composition
    size_w: np.ndarray  # (memory kinds, sizes): VM size given the memory kind
    page_w: np.ndarray  # (memory kinds, 3): page size (4K, 2M, 1G) given the memory kind
    heat_w: np.ndarray  # (memory kinds, heat bins): heat bin given the memory kind
    cell_lut: np.ndarray  # (memory, confidential, size, page, heat) -> cell (-1: none)
    cell_beh: np.ndarray | None = None  # (cells, N_BEH): share of each guest behaviour
    cell_reread: np.ndarray | None = None  # P(a checking kernel user reads the page later)
    effort: tuple[int, ...] = (0, 0, 0, 0)  # rounds per behaviour (cooperative: 0)
    host_cpus: int = 64

    @property
    def n_classes(self) -> int:
        return len(self.locations) * len(self.modes) * N_TOUCH * 2 * N_BEH * 2

    def decode(self, index: int) -> FailureClass:
        """The failure class of a tally column."""
        index, reread = divmod(index, 2)
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
            behaviour=BEHAVIOURS[beh], effort=self.effort[beh], host_cpus=self.host_cpus,
            kernel_reread=bool(reread))


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
            # a FIT of 0 stays a category (weight 0), so the mode draws keep their streams
            cells.append(ModeCell(name, permanent, pages, same))
            weights.append(fit)
    return cells, weights


def _weights(weights: list[float] | np.ndarray, width: int) -> np.ndarray:
    """Category weights padded with zeros to ``width`` (a table for ``_race``)."""
    out = np.zeros(width)
    out[: len(weights)] = weights
    return out


def _race(e: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Draw a category per column of ``e`` by an exponential race: argmin_k e[k] / w[k].

    ``e`` is (K, m) standard exponentials, one per category and draw; ``w`` the K weights, or
    one row of K weights per draw (m, K). Category k wins with probability w[k] / sum(w), and a
    zero weight never wins. Each category has its own clock, so a change of one weight moves
    only draws into or out of that category: every other category keeps exactly the draws it
    had (common random numbers across a sweep), unlike an alias table or an inverse CDF,
    which move draws between categories whose shares did not change.
    """
    ww = w.T if w.ndim == 2 else w[:, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        score = np.where(ww > 0, e / ww, np.inf)
    return np.argmin(score, axis=0)


PAGES = ("4K", "2M", "1G")
MEM_INDEX = {m: i for i, m in enumerate(MEMORY_KINDS)}


def compile_spec(p: FleetParams) -> SamplerSpec:
    """Turn validated parameters into the sampler's tables.

    A fault's location is drawn factor by factor, each from its own random stream: memory kind
    (weights ``mem_w``: the composition), confidential or not (``u < confidential_share``),
    VM size, page size and heat bin (weights given the memory kind). ``cell_lut`` maps the
    factors to a (location, heat) cell. A factor a memory kind does not have has one category.
    """
    shares = [p.composition.shares.get(k, 0.0) for k in MEMORY_KINDS]  # type: ignore[call-overload]
    conf = p.vms.confidential_share
    vm_types = ("default", "confidential")
    by_count = [(s.gib, s.share) for s in p.vms.sizes]
    mem_total = sum(g * s for g, s in by_count)
    by_memory = [(g, g * s / mem_total) for g, s in by_count]
    vm_pages = [p.vms.page_size.get(k, 0.0) for k in PAGES]  # type: ignore[call-overload]
    huge_total = vm_pages[1] + vm_pages[2]
    free_pages = [0.0, vm_pages[1], vm_pages[2]] if huge_total > 0 else [0.0, 1.0, 0.0]
    heat = {"gmem_private": p.heat.guest, "gmem_shared": p.heat.guest, "hugetlb_free": None,
            "vmm": p.heat.vmm, "kernel": p.heat.kernel}
    host_bytes = p.fleet.host_memory_gib * (1 << 30)
    n_size = len(by_count)
    n_heat = max(1, *(len(b) for b in heat.values() if b is not None))

    def kernel_rates(memory: str, vm_type: str) -> tuple[float, float]:
        checked = unchecked = 0.0
        for u in p.access.kernel_users:
            if memory in u.memory and (u.confidential or vm_type != "confidential"):
                if u.checks_hwpoison:
                    checked += u.rate_per_hour
                else:
                    unchecked += u.rate_per_hour
        return checked, unchecked

    mem_w = _weights(shares, len(shares))
    size_w = np.zeros((len(MEMORY_KINDS), n_size))
    page_w = np.zeros((len(MEMORY_KINDS), len(PAGES)))
    heat_w = np.zeros((len(MEMORY_KINDS), n_heat))
    lut = np.full((len(MEMORY_KINDS), 2, n_size, len(PAGES), n_heat), -1, dtype=np.intp)
    locations: list[Location] = []
    loc_index: dict[Location, int] = {}
    cells: list[tuple[int, tuple[float, float, float, float], float]] = []

    def add(key: tuple[int, ...], loc: Location, rates: tuple[float, float, float, float],
            own: int | None, heat_rate: float) -> int:
        """One (location, heat) cell. own: who reads at the heat rate (0 guest, 1 vmm, 3
        kernel)."""
        if loc not in loc_index:
            loc_index[loc] = len(locations)
            locations.append(loc)
        folio = 0.0
        if loc.memory in ("gmem_private", "gmem_shared") and loc.page_size != "4K":
            folio = PAGE_BYTES[loc.page_size] / host_bytes
        r = list(rates)
        if own is not None:
            r[own] += heat_rate
        cells.append((loc_index[loc], (r[0], r[1], r[2], r[3]), folio))
        lut[key] = len(cells) - 1
        return len(cells) - 1

    for memory in MEMORY_KINDS:
        mi = MEM_INDEX[memory]
        if shares[mi] <= 0:
            continue
        bins = heat[memory]
        heat_w[mi] = _weights([b.share for b in bins] if bins is not None else [1.0], n_heat)
        size_w[mi, 0] = 1.0  # one size unless the memory belongs to a VM (below)
        hot = [(hi, b.rate_per_hour) for hi, b in enumerate(bins or []) if b.share > 0] \
            or [(0, 0.0)]
        if memory in ("gmem_private", "gmem_shared"):
            size_w[mi] = _weights([w for _, w in by_memory], n_size)
            page_w[mi] = _weights(vm_pages, len(PAGES))
            vmm = p.access.vmm_shared_read_per_hour if memory == "gmem_shared" else 0.0
            for vi, vt in enumerate(vm_types):
                chk, unchk = kernel_rates(memory, vt)
                for si, (gib, w) in enumerate(by_memory):
                    for pi, ps in enumerate(PAGES):
                        if w <= 0 or vm_pages[pi] <= 0:
                            continue
                        for hi, rate in hot:
                            add((mi, vi, si, pi, hi), Location(memory, vt, gib, ps),
                                (0.0, vmm, chk, unchk), 0, rate)
        elif memory == "hugetlb_free":
            page_w[mi] = _weights(free_pages, len(PAGES))
            chk, unchk = kernel_rates(memory, "none")
            for pi, ps in enumerate(PAGES):
                if free_pages[pi] > 0:
                    ci = add((mi, 0, 0, pi, 0), Location(memory, "none", 0, ps),
                             (0.0, 0.0, chk, unchk), None, 0.0)
                    lut[mi, 1, 0, pi, 0] = ci
        elif memory == "vmm":
            size_w[mi] = _weights([w for _, w in by_count], n_size)
            page_w[mi] = _weights([1.0], len(PAGES))
            for vi, vt in enumerate(vm_types):
                chk, unchk = kernel_rates(memory, vt)
                for si, (gib, w) in enumerate(by_count):
                    if w <= 0:
                        continue
                    for hi, rate in hot:
                        add((mi, vi, si, 0, hi), Location(memory, vt, gib, "4K"),
                            (0.0, 0.0, chk, unchk), 1, rate)
        else:  # kernel
            page_w[mi] = _weights([1.0], len(PAGES))
            chk, unchk = kernel_rates(memory, "none")
            for hi, rate in hot:
                ci = add((mi, 0, 0, 0, hi), Location(memory, "none", 0, "4K"),
                         (0.0, 0.0, chk, unchk), 3, rate)
                lut[mi, 1, 0, 0, hi] = ci

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
    # A kernel user that checks PG_hwpoison reads the failed page later, while the memory is
    # still the VM's: at the checking users' rate r over the VM's remaining life, which is
    # exponential with the mean lifetime L (memoryless), so P(>= 1 read) = E[1 - exp(-r T)]
    # = r L / (1 + r L). Guest memory only (the policies differ on guest_memfd folios); a
    # deterministic split like the behaviours', so it draws no random number.
    life = v.mean_lifetime_hours
    reread = np.zeros(len(cells))
    for i, c in enumerate(cells):
        loc = locations[c[0]]
        if loc.memory in ("gmem_private", "gmem_shared"):
            chk = kernel_rates(loc.memory, loc.vm_type)[0]
            reread[i] = chk * life / (1.0 + chk * life)
    e = v.guest_effort
    rates = np.array([c[1] for c in cells], dtype=float).reshape(len(cells), 4)
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
        ue_rate=p.fault_rate,
        frailty=fr.distribution if shape > 0 else "none",
        frailty_shape=shape,
        scrub_hours=p.scrub.period_hours,
        window_years=p.vms.mean_lifetime_hours / HOURS_PER_YEAR,
        locations=tuple(locations),
        modes=tuple(modes),
        cell_loc=np.array([c[0] for c in cells], dtype=np.intp),
        cell_rate=total,
        cell_cum0=cum[:, 0],
        cell_cum1=cum[:, 1],
        cell_cum2=cum[:, 2],
        cell_folio=np.array([c[2] for c in cells], dtype=float),
        mode_w=np.array(mode_w, dtype=float),
        confidential_share=conf,
        mem_w=mem_w,
        size_w=size_w,
        page_w=page_w,
        heat_w=heat_w,
        cell_lut=lut,
        cell_beh=beh,
        cell_reread=reread,
        effort=(0, e.careless, e.hostile, e.confidential),
        host_cpus=p.fleet.host_cpus,
    )


def _frailty(spec: SamplerSpec, rng: np.random.Generator,
             n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-host fault-proneness multipliers (mean 1) and their likelihood ratios.

    The lognormal frailty is drawn from a defensive mixture: a share ``TILT_SHARE`` of
    the draws (its whole part fixed, the rest by a coin) has its normal deviate
    shifted by sigma (one standard deviation of log-frailty), so the frail hosts that carry the
    multi-fault outcomes are sampled often; the likelihood ratio phi(z) / mixture(z) <= 2
    corrects the weights (importance sampling that cannot blow up the variance of
    ordinary outcomes). Pareto frailty is drawn directly.
    """
    if spec.frailty == "lognormal":
        s = spec.frailty_shape
        z = rng.standard_normal(n)
        # stratified: n * TILT_SHARE draws come from the shift. The weights below are those
        # of a mixture with exactly that share, so the count must be n * TILT_SHARE in
        # expectation: its whole part always, and one draw more with probability its
        # fraction (a batch of one host-year: the one draw is shifted half the time).
        # Rounding down instead biased every odd batch size low (one host-year per batch:
        # no draw shifted, each weighted below 1).
        k = int(n * TILT_SHARE)
        frac = n * TILT_SHARE - k
        if frac > 0 and rng.random() < frac:  # drawn only where n alone makes it needed
            k += 1
        z[:k] += s
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


FAULT_STREAMS = 7  # memory, confidential, size, page, heat, mode, first-touch race
N_STREAMS = 3 + 2 * FAULT_STREAMS  # frailty, first arrival, roulette; first and later fault


def streams(rng: np.random.Generator) -> list[np.random.Generator]:
    """One generator per random component, spawned from ``rng``'s seed sequence.

    Every component draws a number of variates fixed by the number of host-years (and the
    number of its categories), whatever the parameters, so a grid point that changes one
    parameter leaves the draws of every other component as they were (common random numbers).
    """
    return rng.spawn(N_STREAMS)


def _faults(spec: SamplerSpec, g: Sequence[np.random.Generator],
            n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cell, mode and first touch of one fault for each of ``n`` host-years.

    Each factor (memory kind, confidential or not, VM size, page size, heat bin, mode, and the
    race of readers against the scrub) draws from its own stream ``g[i]``; categories are
    drawn by an exponential race (``_race``) and the VM is confidential when its uniform is
    below ``confidential_share``. So a change of one share moves only the faults it has to.
    """
    mem = _race(g[0].standard_exponential((len(spec.mem_w), n)), spec.mem_w)
    conf = (g[1].random(n) < spec.confidential_share).astype(np.intp)
    size = _race(g[2].standard_exponential((spec.size_w.shape[1], n)), spec.size_w[mem])
    page = _race(g[3].standard_exponential((spec.page_w.shape[1], n)), spec.page_w[mem])
    heat = _race(g[4].standard_exponential((spec.heat_w.shape[1], n)), spec.heat_w[mem])
    cell = spec.cell_lut[mem, conf, size, page, heat]
    if (cell < 0).any():  # pragma: no cover - a zero weight never wins the race
        raise AssertionError("a fault landed in a location of zero probability")
    mode = _race(g[5].standard_exponential((len(spec.mode_w), n)), spec.mode_w)
    u = g[6].random((3, n))
    with np.errstate(divide="ignore"):
        # hours until the first read (inf: never read); 1 - u lies in (0, 1]
        access = -np.log(1.0 - u[0]) / spec.cell_rate[cell]
    consumed = access < u[1] * spec.scrub_hours
    x = u[2]
    who = (x > spec.cell_cum0[cell]).astype(np.intp) + (x > spec.cell_cum1[cell]) \
        + (x > spec.cell_cum2[cell])
    touch = np.where(consumed, who, N_TOUCH - 1)
    return cell, mode, touch


def sample_batch(spec: SamplerSpec, rng: np.random.Generator, host_years: int) -> BatchTally:
    """Sample ``host_years`` host-years, each conditioned on at least one fault.

    Host-year i has fault rate mu_i = rate * frailty_i; it is drawn conditioned on N_i >= 1
    and weighted by p_i = P(N_i >= 1), which removes the arrival variance of the many
    fault-free host-years (conditional Monte Carlo). Each fault's location, mode and first
    touch are sampled; the rare second fault in the same huge folio is split off
    deterministically with its exact probability q instead of being sampled.

    Each random component draws from its own stream (``streams``) a number of variates fixed
    by ``host_years`` alone; the later fault's class is drawn for every host-year and kept
    for those the roulette keeps. So every grid point of a sweep sees the same draws.
    """
    k = spec.n_classes
    tally = np.zeros(k)
    sum_p = 0.0
    n_modes = len(spec.modes)
    g = streams(rng)
    g_frail, g_arrive, g_roulette = g[:3]
    g_first, g_later = g[3:3 + FAULT_STREAMS], g[3 + FAULT_STREAMS:]
    for start in range(0, host_years, CHUNK):
        n = min(CHUNK, host_years - start)
        frail, lr = _frailty(spec, g_frail, n)
        mu = spec.ue_rate * frail
        p = -np.expm1(-mu)
        w = p if lr is None else p * lr
        sum_p += float(w.sum())
        # First arrival time given >= 1 arrival in the year; the faults after it number
        # Poisson(e) with e = mu (1 - t1), and their classes are i.i.d. given mu. One sampled
        # class weighted by e stands for all of them (same expectation), and it is kept
        # only with probability r = min(1, ROULETTE e), weighted 1/r (Russian roulette).
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = np.where(mu > 0, -np.log1p(-g_arrive.random(n) * p) / mu, 1.0)
        e = mu * (1.0 - t1)
        r = np.minimum(1.0, ROULETTE * e)
        kept = np.flatnonzero(g_roulette.random(n) < r)
        first = _faults(spec, g_first, n)
        later = _faults(spec, g_later, n)
        cell, mode, touch = (np.concatenate((a, b[kept])) for a, b in zip(first, later,
                                                                           strict=True))
        mu_f = np.concatenate((mu, mu[kept]))
        w = np.concatenate((w, w[kept] * e[kept] / r[kept]))
        base = ((spec.cell_loc[cell] * n_modes + mode) * N_TOUCH + touch) * 2 * N_BEH * 2
        folio = spec.cell_folio[cell]
        q = -np.expm1(-mu_f * folio * spec.window_years)
        split = folio > 0
        share = spec.cell_beh[cell] if spec.cell_beh is not None else None
        # a later read by a checking kernel user (not when one was the first toucher: the
        # aftermath repeats the first touch already)
        rr = spec.cell_reread[cell] if spec.cell_reread is not None else np.zeros(len(cell))
        rr = np.where(touch == TOUCHES.index("kernel_checked"), 0.0, rr)
        for b in range(N_BEH):
            wb = w if share is None else w * share[:, b]
            if share is not None and not wb.any():
                continue
            for again in (0, 1):
                if again and not rr.any():
                    continue
                wr = rr if again else 1.0 - rr
                col = base + 2 * b + again
                tally += np.bincount(col, weights=wb * wr * (1.0 - q), minlength=k)
                if split.any():
                    tally += np.bincount(col[split] + 2 * N_BEH, weights=(wb * wr * q)[split],
                                         minlength=k)
    return BatchTally(host_years, sum_p, tally)
