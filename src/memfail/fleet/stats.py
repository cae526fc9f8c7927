"""Interval estimates for fleet rates and shares from independent batch means.

Garwood (exact Poisson) on the effective event count, Wilson for shares, rule of three at zero.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import chi2, norm

Z95 = float(norm.ppf(0.975))


@dataclass(frozen=True)
class Interval:
    """A point estimate with a 95 % interval and how it was obtained."""

    estimate: float
    low: float
    high: float
    method: str
    n_eff: float

    def scaled(self, factor: float) -> Interval:
        return Interval(self.estimate * factor, self.low * factor, self.high * factor,
                        self.method, self.n_eff)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON data; an infinite or undefined number becomes ``null``."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in asdict(self).items()}


def garwood(k: float, level: float = 0.95) -> tuple[float, float]:
    """Exact (Garwood) interval for a Poisson mean given count ``k`` (may be fractional)."""
    a = 1.0 - level
    lo = 0.0 if k <= 0 else float(chi2.ppf(a / 2, 2 * k)) / 2
    hi = float(chi2.ppf(1 - a / 2, 2 * k + 2)) / 2
    return lo, hi


def wilson(p: float, n: float, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion ``p`` observed over ``n`` (effective) trials."""
    z = float(norm.ppf(0.5 + level / 2))
    if n <= 0:
        return 0.0, 1.0
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def rate_interval(totals: np.ndarray, sizes: np.ndarray, exposure_p: float) -> Interval:
    """Rate per unit of exposure from per-batch totals over equal-size batches.

    The standard error comes from the spread of batch means; the effective event count
    ``n_eff = (estimate / se)**2`` (exactly the count for unweighted Poisson events) sets a
    Garwood interval scaled back to a rate. When nothing was seen the rule of three gives the
    upper bound: 3 over the number of sampled host-years, times the mean probability of a
    fault that each conditioned host-year stands for (``exposure_p``).
    """
    n_total = float(sizes.sum())
    est = float(totals.sum()) / n_total
    if est <= 0:
        return Interval(0.0, 0.0, 3.0 * exposure_p / n_total, "rule-of-three", 0.0)
    means = totals / sizes
    b = len(means)
    se = float(np.std(means, ddof=1)) / math.sqrt(b) if b > 1 else 0.0
    if se <= 0:
        return Interval(est, est, est, "exact", math.inf)
    n_eff = (est / se) ** 2
    lo, hi = garwood(n_eff)
    return Interval(est, lo * est / n_eff, hi * est / n_eff, "garwood", n_eff)


def share_interval(part: np.ndarray, whole: np.ndarray) -> Interval:
    """Share ``sum(part)/sum(whole)`` (a ratio estimator) with a Wilson interval.

    Batch means give the ratio's standard error (delta method); its effective number of
    trials is ``p(1-p)/se**2``.
    """
    tot = float(whole.sum())
    if tot <= 0:
        return Interval(math.nan, 0.0, 1.0, "none", 0.0)
    p = float(part.sum()) / tot
    b = len(part)
    resid = part - p * whole
    se = float(np.std(resid, ddof=1)) * math.sqrt(b) / tot if b > 1 else 0.0
    if se <= 0 or p in (0.0, 1.0):
        n_eff = math.inf if se <= 0 and 0 < p < 1 else float(b)
        lo, hi = (p, p) if math.isinf(n_eff) else wilson(p, n_eff)
        return Interval(p, lo, hi, "wilson", n_eff)
    n_eff = p * (1 - p) / se**2
    lo, hi = wilson(p, n_eff)
    return Interval(p, lo, hi, "wilson", n_eff)
