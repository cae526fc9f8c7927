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


def _modes(scale: float) -> dict[str, Any]:
    """Every fault mode's FIT scaled by ``scale`` (the vendor spread of §2.7)."""
    from memfail.fleet.params import load_fleet

    modes = load_fleet(None).plain["faults"]["modes"]
    out: dict[str, Any] = {}
    for name, rates in modes.items():
        for k, v in rates.items():
            out[f"faults.modes.{name}.{k}"] = round(float(v) * scale, 6)
    return out


RANGES: tuple[Range, ...] = (
    Range("machine UE incidence (per host-year)",
          {"faults.ue_rate_per_host_year": 0.005}, {"faults.ue_rate_per_host_year": 0.04},
          "0.0131", "§2.7: 'Machine UE incidence 1.3 %/machine-yr, range to sweep 0.5-4 %'"),
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


def device_fit_range() -> Range:
    """Every mode's FIT x0.25 and x4 (§2.7: 'Device fault rate ... x0.25-x4 (vendor spread
    >4x)')."""
    return Range("device fault rate (FIT x0.25 .. x4)", _modes(0.25), _modes(4.0), "x1",
                 "§2.7: 'Device fault rate 66.1 FIT/chip ... range to sweep x0.25-x4'")


def all_ranges() -> list[Range]:
    return [*RANGES, device_fit_range()]
