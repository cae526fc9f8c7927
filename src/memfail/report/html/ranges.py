"""The plausible range of every assumed fleet parameter the report's sensitivity view moves.

This is the one place these ranges are defined. Where the DRAM field-data notes suggest a range
to sweep (reference/dram-field-data-and-simulation.md §2.7) it is used; elsewhere the range is
an assumption stated here with its reason. Each entry moves one parameter of
src/memfail/fleet/defaults.yaml (or two that must move together) to its low and its high end,
everything else at its default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """One parameter's plausible range: the assignments (fleet paths) at each end."""

    name: str           # what the chart's row says
    low: dict[str, Any]
    high: dict[str, Any]
    default: str        # the default value, as text
    why: str            # where the range comes from


def _permanent(frac: float) -> dict[str, Any]:
    """Every fault mode's FIT split so that ``frac`` of it is permanent (its total kept)."""
    from memfail.fleet.params import load_fleet

    modes = load_fleet(None).plain["faults"]["modes"]
    out: dict[str, Any] = {}
    for name, rates in modes.items():
        total = float(rates["transient_fit"]) + float(rates["permanent_fit"])
        out[f"faults.modes.{name}.permanent_fit"] = round(total * frac, 6)
        out[f"faults.modes.{name}.transient_fit"] = round(total * (1.0 - frac), 6)
    return out


def _default_permanent() -> float:
    from memfail.fleet.params import load_fleet

    modes = load_fleet(None).plain["faults"]["modes"].values()
    perm = sum(float(m["permanent_fit"]) for m in modes)
    return perm / (perm + sum(float(m["transient_fit"]) for m in modes))


def incidence_range() -> Range:
    """The mean UE rate scaled as the machine incidence moves from 1.3 % to 0.5 % and 4 %
    (§2.7: 'Machine UE incidence 1.3 %/machine-yr, range to sweep 0.5-4 %'), each end the
    rate whose P(>= 1 per host-year) under the default frailty is that incidence."""
    from memfail.fleet.calibration import rate_for_incidence
    from memfail.fleet.params import load_fleet

    p = load_fleet(None).params
    fr = p.frailty

    def rate(inc: float) -> float:
        return round(rate_for_incidence(inc, fr.distribution, fr.mean_over_median), 6)

    return Range("machine UE incidence 0.5-4 % (mean rate)",
                 {"faults.ue_rate_per_host_year": rate(0.005)},
                 {"faults.ue_rate_per_host_year": rate(0.04)},
                 f"{p.faults.ue_rate_per_host_year:g}",
                 "§2.7: 'Machine UE incidence 1.3 %/machine-yr, range to sweep 0.5-4 %'; "
                 "each end is the mean rate giving that incidence under the default frailty "
                 "(memfail.fleet.calibration)")


RANGES: tuple[Range, ...] = (
    Range("patrol scrub period (hours)",
          {"scrub.period_hours": 3.0}, {"scrub.period_hours": 72.0},
          "24", "§2.6: FaultSim's reference configuration scrubs every 3 h; the 24 h default is "
                "'commonly cited but unverified'; 72 h is an assumption for a lazy BIOS setting"),
    Range("per-host frailty (mean / median)",
          {"frailty.mean_over_median": 10.0}, {"frailty.mean_over_median": 100.0},
          "55", "assumption around Meza 2015's 'about 55x' (§2.4): 10x to 100x"),
    Range("confidential VM share",
          {"vms.confidential_share": 0.0}, {"vms.confidential_share": 0.75},
          "0.25", "assumption: no confidential guests to three in four"),
    Range("VM lifetime (hours)",
          {"vms.mean_lifetime_hours": 168.0}, {"vms.mean_lifetime_hours": 4320.0},
          "720", "assumption: a week to six months"),
    Range("1G share of HugeTLB guest memory",
          {"vms.page_size": {"4K": 0.0, "2M": 0.9, "1G": 0.1}},
          {"vms.page_size": {"4K": 0.0, "2M": 0.1, "1G": 0.9}},
          "0.5", "assumption: 10 % to 90 % of guest memory on 1 GiB pages (the rest 2 MiB)"),
    Range("VMM reads of a shared page (per hour)",
          {"access.vmm_shared_read_per_hour": 0.01}, {"access.vmm_shared_read_per_hour": 1.0},
          "0.1", "assumption: ten times rarer to ten times more often"),
    Range("fault footprint cap (pages)",
          {"dram.footprint_cap_pages": 16}, {"dram.footprint_cap_pages": 256},
          "64", "assumption: a quarter to four times the default cap"),
)


def permanent_range() -> Range:
    """The share of faults that are permanent, 0.5 to 0.9 in every mode (§2.7: 'Permanent
    fraction 0.71, range to sweep 0.5-0.9'). The modes' FIT totals only set the mix of fault
    modes (the rate is faults.ue_rate_per_host_year, the reference host's, scaled by each
    host's DRAM chips), so the mix moves, not their sum."""
    return Range("permanent share of faults", _permanent(0.5), _permanent(0.9),
                 f"{_default_permanent():.2f}",
                 "§2.7: 'Permanent fraction 0.71 (Jaguar table; Feng Shui), range to sweep "
                 "0.5-0.9'")


PERMANENT_INERT = ("the fleet model gives a transient fault the outcome of a permanent one "
                   "(docs/fleet.md, The model oracle and Limits: 'Permanent and transient "
                   "faults give the same model outcome'), and the range keeps each mode's "
                   "total rate, so no end of it can move any rate: it is not sampled or drawn")


def all_ranges() -> list[Range]:
    """The ranges the sensitivity view samples and draws: those that can move a rate."""
    return [incidence_range(), *RANGES]


def inert_ranges() -> list[tuple[Range, str]]:
    """Assumed parameters with a plausible range that the fleet model cannot move, each with
    why: listed in the page, never drawn as a measured swing of zero."""
    return [(permanent_range(), PERMANENT_INERT)]
