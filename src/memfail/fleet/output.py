"""Fleet results for people and programs: rich tables, ``memfail.fleet/1`` JSON, plots.

Plots use matplotlib's Agg backend and are written as both PNG and SVG.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from memfail.fleet.classes import OUTCOME_NAMES, OUTCOME_UNITS
from memfail.fleet.engine import FleetResult, Rate
from memfail.fleet.stats import Interval

SCHEMA = "memfail.fleet/1"
UNITS = ("per_million_vm_hours", "per_host_year", "per_fleet_year")


def _num(x: float) -> str:
    if x == 0:
        return "0"
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e4 else f"{x:.2e}"


def fmt_interval(iv: Interval, sep: str = " ") -> str:
    """``est [low, high]``, or ``0 (< high)`` when nothing was seen (rule of three)."""
    if iv.method == "rule-of-three":
        return f"0{sep}(< {_num(iv.high)})"
    return f"{_num(iv.estimate)}{sep}[{_num(iv.low)}, {_num(iv.high)}]"


def _pick(r: Rate, unit: str) -> Interval:
    iv: Interval = getattr(r, unit)
    return iv


def result_table(res: FleetResult, unit: str = "per_million_vm_hours",
                 outcomes: Sequence[str] = OUTCOME_NAMES) -> Table:
    """Policy x outcome, each cell ``estimate [95 % interval]``."""
    title = (f"memfail fleet: {unit.replace('_', ' ')} (95 % intervals), "
             f"{res.plan.host_years:,} host-years, seed {res.seed}")
    t = Table(title=title, title_justify="left")
    t.add_column("policy", style="bold")
    for o in outcomes:
        t.add_column(o.replace("_", " ") + (" (GiB)" if OUTCOME_UNITS[o] == "GiB" else ""),
                     justify="right")
    for pol in res.policies:
        t.add_row(pol, *(fmt_interval(_pick(res.rate(pol, o), unit), "\n") for o in outcomes))
    return t


def summary_lines(res: FleetResult) -> list[str]:
    """The policy-independent figures: fault rate, consumed-before-scrub share, first touch."""
    c = res.consumed_before_scrub
    if not math.isfinite(c.estimate):  # no fault sampled: no share to give
        return [f"fleet: {res.source}; {res.hosts:,} hosts, {res.vms_per_host:.1f} VMs per "
                f"host; {res.n_classes} failure classes seen",
                f"uncorrectable faults per host-year: {fmt_interval(res.faults_per_host_year)}"
                "; no fault was sampled, so no shares to report"]
    touch = ", ".join(f"{k} {min(v.estimate, 1.0):.1%}" for k, v in res.first_touch.items())
    return [
        f"fleet: {res.source}; {res.hosts:,} hosts, {res.vms_per_host:.1f} VMs per host; "
        f"{res.n_classes} failure classes seen",
        f"uncorrectable faults per host-year: {fmt_interval(res.faults_per_host_year)}"
        f"{_not_valid(res)}; hosts with >= 1 per year: {res.p_any_fault:.2%}",
        f"consumed before the patrol scrub: {c.estimate:.1%} [{c.low:.1%}, {c.high:.1%}] "
        f"(first touch: {touch})",
        *([calibration_line(res)] if res.calibration else []),
        *([guests_line(res)] if res.guests else []),
        *(f"note: {n}" for n in notes(res)),
        *frailty_lines(res),
    ]


def notes(res: FleetResult) -> list[str]:
    """What a reader must know to read a column: the hugetlbfs baseline has no confidential
    VMs (an SNP or TDX guest's private memory comes from guest_memfd only, R75), so the
    fleet's confidential share runs as ordinary VMs in that column."""
    out = []
    conf = (res.guests or {}).get("confidential", 0.0)
    if "hugetlbfs" in res.policies and conf > 0:
        out.append(f"hugetlbfs runs the {conf:.2%} confidential VMs as ordinary VMs (a vMCE "
                   "reaches them): SNP and TDX private memory can only come from guest_memfd "
                   "(R75), so the baseline is a fleet without confidential computing")
    return out


def calibration_line(res: FleetResult) -> str:
    """One line: the fleet's P(>= 1 UE per host-year) against the cited field study."""
    c = res.calibration
    return (f"calibration: P(>= 1 uncorrectable error per host-year) {c['p_host_ue_per_year']:.2%}"
            f" (exact {c['p_host_ue_per_year_exact']:.2%}) against {c['cited']:.1%} cited "
            f"(Schroeder 2009); mean rate {c['mean_rate_per_host_year']:g} per host-year, "
            f"{c['rate_matching_cited']:.4g} would match (docs/fleet.md \"Calibration\")")


def _not_valid(res: FleetResult) -> str:
    fr = res.frailty
    if not fr or fr.get("intervals_valid", True):
        return ""
    return (f" (interval NOT valid: infinite-variance frailty; the mean is "
            f"{_num(fr['mean_faults_per_host_year_exact'])})")


def frailty_lines(res: FleetResult) -> list[str]:
    """A warning when the frailty's tail makes the intervals invalid (docs/fleet.md)."""
    fr = res.frailty
    return [f"warning: {fr['warning']}"] if fr and fr.get("warning") else []


def guests_line(res: FleetResult) -> str:
    """One line: the guest behaviours of the VM mix."""
    return "guests: " + ", ".join(f"{k} {v:.2%}" for k, v in res.guests.items())


def print_result(res: FleetResult, console: Console, unit: str = "per_million_vm_hours") -> None:
    for line in summary_lines(res):
        console.print(line, highlight=False)
    console.print(result_table(res, unit))


def print_sweep(results: Sequence[FleetResult], console: Console, outcome: str,
                unit: str = "per_million_vm_hours") -> None:
    """One row per grid point, one column per policy, for one outcome."""
    t = Table(title=f"memfail fleet sweep: {outcome} {unit.replace('_', ' ')} (95 % intervals)",
              title_justify="left")
    axes = list(results[0].assign) if results else []
    for a in axes:
        t.add_column(a, style="bold")
    t.add_column("consumed first", justify="right")
    for pol in results[0].policies if results else []:
        t.add_column(pol, justify="right")
    for r in results:
        t.add_row(*(str(r.assign[a]) for a in axes), f"{r.consumed_before_scrub.estimate:.1%}",
                  *(fmt_interval(_pick(r.rate(p, outcome), unit), "\n") for p in r.policies))
    console.print(t)
    for line in dict.fromkeys(w for r in results for w in frailty_lines(r)):
        console.print(line, highlight=False)


def run_document(res: FleetResult) -> dict[str, Any]:
    """The ``memfail.fleet/1`` document of a single run."""
    return {"schema": SCHEMA, "kind": "run", "outcomes": list(OUTCOME_NAMES),
            "units": dict(OUTCOME_UNITS), **res.to_dict(), "notes": notes(res)}


def sweep_document(results: Sequence[FleetResult], axes: dict[str, list[Any]]) -> dict[str, Any]:
    """The ``memfail.fleet/1`` document of a sweep: one run object per grid point."""
    return {"schema": SCHEMA, "kind": "sweep", "axes": axes, "outcomes": list(OUTCOME_NAMES),
            "units": dict(OUTCOME_UNITS), "points": [r.to_dict() for r in results]}


# --------------------------------------------------------------------------- plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _err(ivs: Sequence[Interval]) -> tuple[list[float], list[list[float]]]:
    y = [iv.estimate for iv in ivs]
    lo = [max(0.0, iv.estimate - iv.low) for iv in ivs]
    hi = [max(0.0, iv.high - iv.estimate) for iv in ivs]
    return y, [lo, hi]


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<", ">")
LINESTYLES = ("-", "--", "-.", ":")


def plot_policies(res: FleetResult, out_dir: Path, unit: str = "per_million_vm_hours",
                  outcomes: Sequence[str] = OUTCOME_NAMES) -> list[Path]:
    """Rate per policy with 95 % error bars, one panel per outcome -> PNG and SVG.

    A rate never observed is drawn as a zero bar with its rule-of-three upper bound as an open
    marker (no whisker); a panel where every policy is zero is drawn on a 0..1 axis and says
    so, instead of a magnified axis of upper bounds."""
    plt = _pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    n = len(outcomes)
    cols = 3
    rows = (n + cols - 1) // cols
    fig, axs = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows + 0.6), squeeze=False)
    x = list(range(len(res.policies)))
    for i, o in enumerate(outcomes):
        ax = axs[i // cols][i % cols]
        ivs = [_pick(res.rate(p, o), unit) for p in res.policies]
        seen = [iv for iv in ivs if iv.estimate > 0]
        ax.set_title(o.replace("_", " "), fontsize=9)
        ax.set_xticks(x)
        ax.set_xticklabels(res.policies, rotation=45, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        if not seen:
            ax.bar(x, [0.0] * len(x), color="#4c72b0")
            ax.set_ylim(0, 1)
            bound = max((iv.high for iv in ivs), default=0.0)
            ax.text(0.5, 0.55, f"0 under every policy\n(never seen; 95 % upper bound "
                    f"{bound:.2g})", transform=ax.transAxes, ha="center", va="center",
                    fontsize=8, color="dimgrey")
            continue
        y = [iv.estimate for iv in ivs]
        ax.bar(x, y, color="#4c72b0")
        xs = [xi for xi, iv in zip(x, ivs, strict=True) if iv.estimate > 0]
        ys, err = _err([iv for iv in ivs if iv.estimate > 0])
        ax.errorbar(xs, ys, yerr=err, fmt="none", ecolor="black", capsize=3)
        for xi, iv in zip(x, ivs, strict=True):  # never seen: the upper bound, open marker
            if iv.estimate <= 0:
                ax.plot([xi], [iv.high], marker="v", color="grey", fillstyle="none",
                        linestyle="none")
        ax.set_ylim(bottom=0)
    for j in range(n, rows * cols):
        axs[j // cols][j % cols].axis("off")
    handles = [Patch(color="#4c72b0", label="estimate"),
               Line2D([], [], color="black", marker="_", markersize=10, linestyle="-",
                      label="95 % interval"),
               Line2D([], [], color="grey", marker="v", fillstyle="none", linestyle="none",
                      label="never seen: 95 % upper bound (rule of three)")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"rate {unit.replace('_', ' ')} (95 % intervals)", fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return _save(fig, plt, out_dir / "fleet-policies")


def plot_sweep(results: Sequence[FleetResult], out_dir: Path, axis: str, outcome: str,
               unit: str = "per_million_vm_hours") -> list[Path]:
    """Rate of ``outcome`` against the swept parameter ``axis``, one line per policy.

    Each policy has its own marker and line style and a small sideways offset, so lines that
    coincide (policies with the same rate) stay distinguishable; the legend names them."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8.0, 4.2))
    xs = [r.assign[axis] for r in results]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in xs)
    pos = [float(v) for v in xs] if numeric else [float(i) for i in range(len(xs))]
    pols = results[0].policies if results else []
    span = (max(pos) - min(pos)) if len(pos) > 1 else 1.0
    width = 0.012 * span
    all_zero = True
    for k, pol in enumerate(pols):
        ivs = [_pick(r.rate(pol, outcome), unit) for r in results]
        all_zero &= all(iv.estimate <= 0 for iv in ivs)
        y, err = _err(ivs)
        err = [[0.0 if iv.estimate <= 0 else e for iv, e in zip(ivs, side, strict=True)]
               for side in err]
        shift = (k - (len(pols) - 1) / 2) * width
        ax.errorbar([p + shift for p in pos], y, yerr=err, marker=MARKERS[k % len(MARKERS)],
                    linestyle=LINESTYLES[k % len(LINESTYLES)], capsize=3, label=pol,
                    markersize=5, alpha=0.85, fillstyle="none" if k % 2 else "full")
    if all_zero:
        ax.set_ylim(0, 1)
        ax.text(0.5, 0.55, "0 under every policy at every point", transform=ax.transAxes,
                ha="center", fontsize=8, color="dimgrey")
    else:
        ax.set_ylim(bottom=0)
    if not numeric:
        ax.set_xticks(pos)
        ax.set_xticklabels([str(v) for v in xs], rotation=30, ha="right", fontsize=7)
    ax.set_xlabel(axis)
    ax.set_ylabel(f"{outcome.replace('_', ' ')} {unit.replace('_', ' ')}")
    ax.set_title(f"{outcome.replace('_', ' ')} (95 % intervals)", fontsize=9)
    ax.legend(fontsize=7, title="policy", title_fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    return _save(fig, plt, out_dir / f"fleet-sweep-{axis.replace('.', '_')}-{outcome}")


def _save(fig: Any, plt: Any, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p)
    plt.close(fig)
    return paths
