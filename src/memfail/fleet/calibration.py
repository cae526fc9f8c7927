"""The fleet against the field study it cites: P(>= 1 uncorrectable error per host-year).

Schroeder, Pinheiro & Weber 2009 count machines with an uncorrectable error in a year (1.3 %):
an incidence, not a mean rate. Under a heavy-tailed frailty the two differ (docs/fleet.md).
"""

from __future__ import annotations

import math
from typing import Any

from scipy import integrate
from scipy.optimize import brentq

from memfail.fleet.params import FleetParams
from memfail.fleet.sampler import pareto_shape

CITED_P_HOST_UE = 0.013
CITED_SOURCE = ("Schroeder, Pinheiro & Weber 2009 (DRAM field data notes §2.1): uncorrectable "
                "errors in about 1.3 % of machines per year")


def p_any_ue(rate: float, distribution: str, mean_over_median: float) -> float:
    """P(N >= 1) for N ~ Poisson(rate x F), F the frailty (mean 1): E[1 - exp(-rate F)]."""
    if distribution == "none" or mean_over_median <= 1.0:
        return -math.expm1(-rate)
    if distribution == "lognormal":
        s = math.sqrt(2.0 * math.log(mean_over_median))

        def f(z: float) -> float:
            return -math.expm1(-rate * math.exp(s * z - s * s / 2)) \
                * math.exp(-z * z / 2) / math.sqrt(2 * math.pi)

        return float(integrate.quad(f, -12.0, 12.0, limit=400, points=[0.0, s, 2 * s])[0])
    a = pareto_shape(mean_over_median)  # F = (a-1)/a * U^(-1/a), U uniform on (0, 1)
    scale = (a - 1.0) / a

    def g(u: float) -> float:
        return -math.expm1(-rate * scale * u ** (-1.0 / a))

    return float(integrate.quad(g, 0.0, 1.0, limit=400, points=[1e-12, 1e-6, 1e-3])[0])


def rate_for_incidence(p: float, distribution: str, mean_over_median: float) -> float:
    """The mean rate per host-year whose P(>= 1 per host-year) is ``p`` under the frailty."""
    return float(brentq(lambda r: p_any_ue(r, distribution, mean_over_median) - p, 1e-9, 1e3))


def calibration(params: FleetParams, p_sampled: float) -> dict[str, Any]:
    """The ``calibration`` object of ``memfail.fleet/1``: the fleet's own P(>= 1 UE per
    host-year) (``p_sampled``, the sampler's estimate) against the cited incidence, and why
    they differ, in numbers."""
    fr = params.frailty
    rate = params.fault_rate
    exact = p_any_ue(rate, fr.distribution, fr.mean_over_median)
    homog = -math.expm1(-rate)
    fit = rate_for_incidence(CITED_P_HOST_UE, fr.distribution, fr.mean_over_median)
    tail = (f"{fr.distribution} frailty, mean/median {fr.mean_over_median:g}"
            if fr.distribution != "none" else "no frailty")
    f = params.faults
    scaled = "" if abs(rate - f.ue_rate_per_host_year) <= 1e-12 * rate else (
        f" (faults.ue_rate_per_host_year {f.ue_rate_per_host_year:g} of a host of "
        f"{f.reference_chips:g} DRAM chips, x {params.dram_chips:g} / {f.reference_chips:g} "
        f"chips of this host)")
    why = (f"{rate:g} per host-year is the fleet's mean rate{scaled}; with {tail}, "
           f"P(>= 1 per host-year) = E[1 - exp(-rate x F)] = {exact:.3%} (sampled "
           f"{p_sampled:.3%}), against 1 - exp(-rate) = {homog:.3%} for identical hosts. "
           f"The study counts machines with >= 1 uncorrectable error, an incidence; under "
           f"this frailty the mean rate that gives {CITED_P_HOST_UE:.1%} is {fit:.4g}")
    if abs(exact - CITED_P_HOST_UE) <= 0.0005:
        why += " (this fleet's rate: it matches)."
    else:
        why += (f" (this fleet's rate gives {exact / CITED_P_HOST_UE:.2f}x the cited "
                f"incidence).")
    return {"p_host_ue_per_year": p_sampled, "p_host_ue_per_year_exact": exact,
            "cited": CITED_P_HOST_UE, "cited_source": CITED_SOURCE,
            "mean_rate_per_host_year": rate, "rate_matching_cited": fit,
            "dram_chips": params.dram_chips, "reference_chips": params.faults.reference_chips,
            "explanation": why}


def frailty_tail(params: FleetParams, host_years: int,
                 faults_sampled: float | None = None) -> dict[str, Any]:
    """The ``frailty`` object of ``memfail.fleet/1``: whether the frailty's tail lets the
    Monte Carlo intervals hold.

    A Pareto frailty of shape ``a`` (F = (a-1)/a x U^(-1/a), mean 1) has infinite variance
    for a <= 2: the batch means then have no standard error, so the Garwood intervals built
    from their spread are not valid, and for a near 1 the sample mean is carried by hosts
    rarer than any sample holds. The share of the mean rate from frailties above the largest
    one a sample of N host-years typically holds (P(F > m) = 1/N) is N^(-(a-1)/a); the Monte
    Carlo rates are short by about that share. The lognormal frailty (all moments finite,
    sampled with a defensive tilt) and no frailty keep the intervals valid.
    """
    fr = params.frailty
    rate = params.fault_rate
    out: dict[str, Any] = {"distribution": fr.distribution,
                           "mean_over_median": fr.mean_over_median, "shape": None,
                           "variance_finite": True, "intervals_valid": True,
                           "mean_faults_per_host_year_exact": rate,
                           "faults_per_host_year_sampled": faults_sampled,
                           "mean_share_beyond_sample": 0.0, "warning": None}
    if fr.distribution == "lognormal" and fr.mean_over_median > 1.0:
        out["shape"] = math.sqrt(2.0 * math.log(fr.mean_over_median))
    if fr.distribution != "pareto" or fr.mean_over_median <= 1.0:
        return out
    a = pareto_shape(fr.mean_over_median)
    beyond = float(host_years) ** (-(a - 1.0) / a)
    out.update(shape=a, mean_share_beyond_sample=beyond)
    if a > 2.0:
        return out
    sampled = "" if faults_sampled is None else f" (Monte Carlo {faults_sampled:.3g})"
    out.update(variance_finite=False, intervals_valid=False, warning=(
        f"the Pareto frailty (mean/median {fr.mean_over_median:g}, shape {a:.4g}) has "
        f"infinite variance (shape <= 2), so the 95 % intervals of every rate and share are "
        f"not valid; {beyond:.0%} of its mean rate comes from hosts rarer than 1 in "
        f"{host_years:,} host-years (the sample), so the Monte Carlo rates fall short of the "
        f"mean by about that much. The mean fault rate is {rate:g} per host-year"
        f"{sampled}. Use a lognormal frailty, or a Pareto mean/median below 1.414 "
        f"(shape > 2), for valid intervals (docs/fleet.md \"Heavy tails\")."))
    return out
