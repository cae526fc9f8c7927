"""Assemble a search into the ``memfail.search/1`` document, and render it for people."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from memfail.check.explorer import FAIL
from memfail.check.properties import PROPERTIES
from memfail.model.policy.registry import PRESETS
from memfail.search.crosscheck import annotate, family
from memfail.search.crosscheck import sentence as compare_sentence
from memfail.search.engine import (
    Executor,
    Record,
    Search,
    SetResult,
    Settings,
    config_shown,
    dominates,
    fleet_task,
    preset_verdicts,
)
from memfail.search.space import (
    CONSTRAINTS,
    DONTS,
    FAMILIES,
    PROPERTY_SETS,
    Space,
    breaks,
    closest_preset,
    policy_spec,
    short,
    value_text,
)

SCHEMA = "memfail.search/1"
REWALKS = 3
"""Walks again after a verification found a grouped or inferred verdict wrong (``build``)."""
FLEET_OUTCOMES = ("vm_killed", "vm_paused", "guest_gib_lost", "host_panic")


def plain(knobs: Mapping[str, Any]) -> dict[str, Any]:
    return dict(knobs)


def _counterexample(settings: Settings, name: str, prop: str) -> str:
    # the configuration the search checked: without it, `memfail check` would check its own
    # standard configuration, whose verdicts may differ
    return (f"memfail check {config_shown(settings.config_file)} --policy {name} --property {prop} "
            f"--max-depth {settings.depth} --out cex/")


class _KnownOracle:
    """Fleet outcomes computed by the workers, looked up by (policy name, class)."""

    def __init__(self, table: dict[tuple[str, Any], Any]) -> None:
        self.table = table

    def outcome(self, policy: str, cls: Any) -> Any:
        return self.table[(policy, cls)]


def fleet_outcomes(candidates: list[tuple[str, Any]], ex: Executor, host_years: int,
                   seed: int) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Per candidate, the fleet's rate per host-year (estimate and 95 % interval) of each
    outcome of ``FLEET_OUTCOMES``; and what the sample was."""
    from memfail.fleet import engine
    from memfail.fleet.params import load_fleet

    fleet = load_fleet()
    tallies = engine.sample(fleet, host_years, seed)
    classes = list(tallies.classes)
    profile = fleet.params.kernel_profile
    res = ex.map(fleet_task, [(profile, spec, classes) for _, spec in candidates])
    table = {(name, c): o for (name, _), outs in zip(candidates, res, strict=True)
             for c, o in zip(classes, outs, strict=True)}
    est = engine.estimate(fleet, tallies, _KnownOracle(table), seed,
                          [name for name, _ in candidates])
    out: dict[str, dict[str, Any]] = {}
    for name, _ in candidates:
        out[name] = {}
        for o in FLEET_OUTCOMES:
            iv = est.rate(name, o).per_host_year
            out[name][o] = {"per_host_year": iv.estimate, "low": iv.low, "high": iv.high}
    meta = {"host_years": tallies.plan.host_years, "seed": seed,
            "failure_classes": len(classes), "interval": "95 %, per host-year",
            "kernel_profile": profile}
    return out, meta


def pareto_front(points: list[tuple[float, ...]]) -> list[bool]:
    """Which points no other point is <= on every axis and < on one."""
    out = []
    for i, p in enumerate(points):
        dom = any(all(q[j] <= p[j] for j in range(len(p))) and q != p
                  for k, q in enumerate(points) if k != i)
        out.append(not dom)
    return out


def build(space: Space, settings: Settings, ex: Executor, *, fleet_years: int,
          pareto_max: int, progress: Callable[[str, int, int], None] | None = None,
          left_out: list[str] | None = None, answer_checks: bool = False,
          compare_scenarios: list[str] | None = None) -> dict[str, Any]:
    """Run the search and return the ``memfail.search/1`` document."""
    search = Search(space, settings, ex, progress)

    def walk() -> tuple[SetResult, dict[str, SetResult]]:
        main = search.run_set(settings.properties, "search")
        sets: dict[str, SetResult] = {}
        for name, props in PROPERTY_SETS.items():
            chosen = tuple(p for p in props if p in settings.properties)
            if chosen:
                sets[name] = search.run_set(chosen, name, new_work=answer_checks)
        return main, sets

    main, sets = walk()
    pv = preset_verdicts(search)
    verified, agree = search.verify([main, *sets.values()])
    # A sampled verdict the heuristics got wrong: distrust what gave it and walk again (the
    # checks done so far are kept), then verify a new sample, at most REWALKS times.
    rewalks: list[dict[str, Any]] = []
    unresolved = len(verified) - agree  # disagreements in the last sample
    while unresolved and len(rewalks) < REWALKS:
        distrusted = search.distrust()
        if not distrusted:
            break
        checks = search.checks
        main, sets = walk()
        rewalks.append({"disagreed": unresolved, "distrusted": distrusted,
                        "checks": search.checks - checks})
        more, ok = search.verify([main, *sets.values()])
        verified, agree, unresolved = verified + more, agree + ok, len(more) - ok
    costs = space.costs
    default = settings.properties

    def keeps(v: Mapping[str, Any]) -> list[str]:
        return [p for p in default if v[p][0] != FAIL]

    minimal = sorted(main.minimal(costs), key=lambda r: (r.cost, main.order.index(
        space.key(r.knobs))))
    # --- presets
    safe_known: list[tuple[float, dict[str, Any], list[str]]] = []
    for key, v in search.verdicts.items():
        if key and key[0] == "preset":
            continue
        k = search.knobs_of.get(key)
        if k is not None:
            safe_known.append((costs.total(k), k, keeps(v)))
    for r in main.records.values():
        if r.how == "group" and r.by is not None:
            safe_known.append((r.cost, r.knobs, keeps(search.verdicts[r.by])))
    # the presets are known combinations too (each checked above), named when cheaper
    preset_of: dict[int, str] = {}
    for name, pol in PRESETS.items():
        k = pol.knobs()
        preset_of[id(k)] = name
        safe_known.append((costs.total(k), k, keeps(pv[name])))
    safe_known.sort(key=lambda x: (x[0], search.space.key(x[1])))
    presets: list[dict[str, Any]] = []
    for name, pol in PRESETS.items():
        knobs = pol.knobs()
        v = pv[name]
        kept = keeps(v)
        cost = costs.total(knobs)
        lost = [p for p in default if p not in kept]
        # minimal within its family: a guest_memfd preset is not made dearer than the
        # hugetlbfs baseline, which is another backing (no private memory), nor the reverse
        fam = family(knobs)
        cheaper = next((k for c, k, kk in safe_known if c < cost and set(kept) <= set(kk)
                        and family(k) == fam), None)
        is_min = not lost and cheaper is None
        presets.append({
            "name": name, "cost": cost, "keeps": kept, "minimal": is_min, "family": fam,
            "cheaper": plain(cheaper) if cheaper is not None else None,
            "cheaper_preset": preset_of.get(id(cheaper)) if cheaper is not None else None,
            "cheaper_cost": costs.total(cheaper) if cheaper is not None else None,
            "loses": lost[0] if lost else None,
            "loses_all": lost,
            "message": v[lost[0]][2] if lost else None,
            "counterexample": _counterexample(settings, name, lost[0]) if lost else None,
        })
    # --- answers (item 4)
    answers = []
    for name, props in PROPERTY_SETS.items():
        sr = sets.get(name)
        best = min(sr.minimal(costs), key=lambda r: (r.cost, sr.order.index(
            space.key(r.knobs))), default=None) if sr is not None else None
        unknown = [r for r in sr.records.values() if r.keeps is None and r.how == "unknown"
                   and (best is None or r.cost < best.cost)] if sr is not None else []
        answers.append({
            "property_set": name, "properties": list(props),
            "policy": plain(best.knobs) if best is not None else None,
            "cost": best.cost if best is not None else None,
            "unknown_cheaper": len(unknown),
            "breaks": breaks(best.knobs) if best is not None else [],
            "closest_preset": closest_preset(best.knobs)[0] if best is not None else None,
        })
    # --- Pareto front over cost and fleet outcomes
    cands: list[tuple[str, Any, float, dict[str, Any]]] = []
    for i, r in enumerate(sorted(main.safe(), key=lambda r: r.cost)[:pareto_max]):
        cands.append((f"policy-{i + 1}", policy_spec(r.knobs), r.cost, r.knobs))
    for p in presets:
        if not p["loses"]:
            pname = str(p["name"])
            cands.append((pname, pname, costs.total(PRESETS[pname].knobs()),
                          PRESETS[pname].knobs()))
    fleet_meta: dict[str, Any] = {"host_years": fleet_years, "seed": settings.seed}
    pareto: list[dict[str, Any]] = []
    if cands and fleet_years > 0:
        if progress:
            progress("fleet", 0, len(cands))
        rates, fleet_meta = fleet_outcomes([(n, s) for n, s, _, _ in cands], ex, fleet_years,
                                           settings.seed)
        if progress:
            progress("fleet", len(cands), len(cands))
        pts = [(c, *(rates[n][o]["per_host_year"] for o in FLEET_OUTCOMES))
               for n, _, c, _ in cands]
        front = pareto_front(pts)
        for (n, _, c, k), on in zip(cands, front, strict=True):
            if on:
                pareto.append({"name": n, "knobs": plain(k), "cost": c,
                               "preset": n if n in PRESETS else None,
                               "fleet": rates[n]})
    # --- counts
    hows = [r.how for r in main.records.values()]
    doc = {
        "schema": SCHEMA,
        "config": {
            "check_config": config_shown(settings.config_file),
            "depth": settings.depth,
            "max_states": settings.max_states,
            "verdict": "a property is kept when no counterexample exists up to the depth",
            "base": space.base,
            "varied": space.varied,
            "fixed": {k: {"value": space.fixed[k], "why": space.fixed_why[k]}
                      for k in space.fixed},
            "costs": space.costs.source,
            "costs_overridden": space.costs.overridden,
            "grouping_scenarios": list(settings.scenarios),
            "grouping_left_out": left_out or [],
            "seed": settings.seed,
            "fleet": fleet_meta,
        },
        "properties": [{"id": p.name, "doc": p.doc,
                        "sets": [n for n, ps in PROPERTY_SETS.items() if p.name in ps]}
                       for p in PROPERTIES if p.name in default],
        "space": {
            "raw": space.raw_count(),
            "combinations": len(search.combos),
            "excluded": {name: {"count": n, "reason": _reason(name)}
                         for name, n in sorted(search.excluded.items())},
            "groups": len(search.group_rep),
            "checked": hows.count("checked"),
            "grouped": hows.count("group"),
            "inferred": hows.count("inferred"),
            "dominated": hows.count("dominated"),
            "answer_checks": answer_checks,
            "checks_run": search.checks,
            "signatures_run": search.signatures,
            "verified_sample": len(verified),
            "verified_agree": agree,
            "verified": verified,
            "rewalks": rewalks,
            "unresolved": unresolved,
        },
        "minimal": [{
            "knobs": plain(r.knobs), "cost": r.cost,
            "keeps": list(main.props),
            "how": r.how,
            "closest_preset": closest_preset(r.knobs)[0],
            "diff": closest_preset(r.knobs)[1],
        } for r in minimal],
        "pareto": pareto,
        "presets": presets,
        "answers": answers,
        "combinations": [_combination(space, search, main.records[k]) for k in main.order],
    }
    # what the check configuration cannot see: every answered policy through compare's
    # scenarios beside the presets it is compared with (memfail.search.crosscheck)
    if progress:
        progress("compare", 0, 1)
    annotate(doc, ex, compare_scenarios)
    if progress:
        progress("compare", 1, 1)
    return doc


def _combination(space: Space, search: Search, r: Record) -> dict[str, Any]:
    """One combination as the search classified it (varied knobs only)."""
    def varied(k: Mapping[str, Any]) -> dict[str, Any]:
        return {n: k[n] for n in space.varied}

    by = search.knobs_of.get(r.by) if r.by is not None else None
    return {"knobs": varied(r.knobs), "cost": r.cost, "how": r.how, "keeps": r.keeps,
            "failed": r.failed, "by": varied(by) if by is not None and r.by != space.key(
                r.knobs) else None}


def _reason(name: str) -> str:
    for c in CONSTRAINTS:
        if c.name == name:
            return c.reason
    for f in FAMILIES:
        if f[0] == name:
            return f[3]
    return ""


# --------------------------------------------------------------------------- rendering


def words(doc: Mapping[str, Any]) -> list[str]:
    """The answer of item 4: per property set, the smallest policy and the don'ts it breaks."""
    base_name = str((doc.get("config") or {}).get("base") or "minimum")
    base = PRESETS[base_name if base_name in PRESETS else "minimum"].knobs()
    out = []
    for a in doc["answers"]:
        if a["policy"] is None:
            out.append(f"{a['property_set']}: no policy in the searched space keeps it "
                       f"({', '.join(a['properties'])}) up to depth {doc['config']['depth']}.")
            continue
        br = a["breaks"]
        what = "; ".join(f"{c} ({DONTS[c][0]})" for c in br) if br else "none of them"
        caveat = (f" ({a['unknown_cheaper']:,} cheaper combinations have no verdict for this "
                  "set yet: --answer-checks checks them)") if a.get("unknown_cheaper") else ""
        cmp_ = compare_sentence(a.get("compare"))
        out.append(f"{a['property_set']}: the smallest policy found on the check "
                   f"configuration costs {a['cost']:g}: "
                   f"{base_name} with {short(a['policy'], base)}. Of the call's don'ts it breaks "
                   f"{what}.{caveat}" + (f" {cmp_}" if cmp_ else ""))
    bad = doc.get("space", {}).get("unresolved")
    if bad:
        out.append(f"Caution: {bad} of the last verification sample's grouped or inferred "
                   "verdicts still disagree with their own checks after "
                   f"{len(doc['space'].get('rewalks') or [])} walks more; the answers above "
                   "may rest on a wrong verdict (docs/search.md, How the search works).")
    return out


def render(doc: Mapping[str, Any], console: Any) -> None:
    from rich.table import Table

    cfg, sp = doc["config"], doc["space"]
    console.print(f"memfail search: check configuration {cfg['check_config']}, depth {cfg['depth']}, "
                  f"base {cfg['base']}, properties {', '.join(p['id'] for p in doc['properties'])}")
    console.print(f"space: {sp['raw']:,} combinations of {len(cfg['varied'])} knobs "
                  f"({', '.join(cfg['varied'])}); {sp['combinations']:,} admissible")
    for name, e in sp["excluded"].items():
        console.print(f"  excluded {e['count']:,} ({name}): {e['reason']}")
    console.print(f"  checked {sp['checked']:,} ({sp['groups']:,} trace groups), grouped "
                  f"{sp['grouped']:,}, inferred to fail {sp['inferred']:,}, dominated by a "
                  f"cheaper safe policy {sp['dominated']:,}; {sp['checks_run']:,} checks and "
                  f"{sp['signatures_run']:,} trace signatures in all")
    console.print(f"  verified a seeded sample of {sp['verified_sample']} inferred or grouped "
                  f"combinations: {sp['verified_agree']} agree")
    for i, rw in enumerate(sp.get("rewalks") or [], 1):
        what = "; ".join(
            f"trace group of {d['members']} combinations now checked one by one"
            if d["how"] == "group" else
            f"no more inferring {d['property']} from one failing combination"
            for d in rw["distrusted"])
        console.print(f"  walk {i + 1}: {rw['disagreed']} sampled verdicts disagreed with "
                      f"their own checks: {what}; {rw['checks']:,} checks more")
    if sp.get("unresolved"):
        console.print(f"  [bold red]caution[/]: {sp['unresolved']} verdicts of the last "
                      "sample still disagree: the answer may rest on a wrong verdict")
    base = PRESETS[cfg["base"]].knobs()
    if doc["minimal"]:
        t = Table(title="Minimal policies (keep every property on the check configuration; "
                        "no other is cheaper on every knob)")
        for col in ("#", f"knobs (vs {cfg['base']})", "cost", "closest preset", "differs by",
                    "compare finds"):
            t.add_column(col)
        for i, m in enumerate(doc["minimal"], 1):
            t.add_row(str(i), short(m["knobs"], base), f"{m['cost']:g}", m["closest_preset"],
                      short(m["diff"]), compare_sentence(m.get("compare")) or "-")
        console.print(t)
    else:
        console.print(none_minimal(doc))
    t = Table(title="Presets (minimal within their family: guest_memfd or hugetlbfs backing)")
    for col in ("preset", "cost", "minimal", "cheaper policy keeping the same", "loses",
                "counterexample"):
        t.add_column(col)
    for p in doc["presets"]:
        t.add_row(p["name"], f"{p['cost']:g}", "yes" if p["minimal"] else "no",
                  cheaper_text(p), p["loses"] or "-", p["counterexample"] or "-")
    console.print(t)
    if doc["pareto"]:
        fl = cfg["fleet"]
        t = Table(title=f"Pareto front: cost vs fleet outcomes per host-year "
                        f"({fl['host_years']:,} sampled host-years, {fl['failure_classes']} "
                        f"failure classes, 95 % intervals)")
        for col in ("policy", "cost", *FLEET_OUTCOMES):
            t.add_column(col)
        for p in doc["pareto"]:
            t.add_row(p["name"] + ("" if p["preset"] else f" ({short(p['knobs'], base)})"),
                      f"{p['cost']:g}",
                      *(f"{p['fleet'][o]['per_host_year']:.3g} [{p['fleet'][o]['low']:.3g}, "
                        f"{p['fleet'][o]['high']:.3g}]" for o in FLEET_OUTCOMES))
        console.print(t)
    console.print("The answer:")
    for line in words(doc):
        console.print("  " + line)


def none_minimal(doc: Mapping[str, Any]) -> str:
    """The sentence that stands for an empty table of minimal policies."""
    cfg = doc["config"]
    props = ", ".join(p["id"] if isinstance(p, dict) else str(p) for p in doc["properties"])
    return (f"Minimal policies: none found. No combination of the varied knobs "
            f"({', '.join(cfg['varied'])}; the others at {cfg['base']}'s values) keeps every "
            f"property ({props}) to depth {cfg['depth']} on the check configuration; the "
            "presets below say which keep them.")


def cheaper_text(p: Mapping[str, Any]) -> str:
    """A preset's cheaper policy (as its knobs that differ, or the preset it is), its cost
    and what compare finds of it beside the preset."""
    if not p.get("cheaper"):
        return "-"
    what = p.get("cheaper_preset") or short(p["cheaper"], PRESETS[p["name"]].knobs())
    text = f"{what} (cost {p['cheaper_cost']:g})"
    cmp_ = compare_sentence(p.get("cheaper_compare"), "cheaper")
    return text + (f". {cmp_}" if cmp_ else "")


def plot(doc: Mapping[str, Any], path: Path) -> None:
    """Cost against VMs stopped and guest memory lost per host-year, front points named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    pts = doc["pareto"]
    for ax, (label, fn) in zip(axes, (
            ("VMs killed or paused per host-year",
             lambda f: f["vm_killed"]["per_host_year"] + f["vm_paused"]["per_host_year"]),
            ("guest GiB lost per host-year", lambda f: f["guest_gib_lost"]["per_host_year"])),
            strict=True):
        xs = [p["cost"] for p in pts]
        ys = [fn(p["fleet"]) for p in pts]
        ax.scatter(xs, ys, c=["tab:orange" if p["preset"] else "tab:blue" for p in pts])
        for p, x, y in zip(pts, xs, ys, strict=True):
            ax.annotate(p["name"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel("mechanism cost")
        ax.set_ylabel(label)
    fig.suptitle("memfail search: Pareto front (blue: found, orange: presets)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def value_texts(knobs: Mapping[str, Any]) -> dict[str, str]:
    return {k: value_text(v) for k, v in knobs.items()}


__all__ = ["SCHEMA", "Record", "build", "dominates", "plot", "render", "words"]


def costs_markdown(table: Any = None) -> str:
    """The cost table as a Markdown table (docs/search.md shows it)."""
    from memfail.search.space import load_costs

    t = table or load_costs()
    lines = ["| knob | value | cost | reason |", "| --- | --- | --- | --- |"]
    for knob, value, cost, reason in t.rows():
        lines.append(f"| `{knob}` | `{value}` | {cost:g} | {reason} |")
    return "\n".join(lines)
