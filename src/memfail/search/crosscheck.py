"""What ``memfail compare``'s scenario library finds of the policies a search answers with.

The search's verdicts come from a bounded check of one configuration (the search's own: two
VMs, one error, to depth 3 by default): a property is "kept" when no counterexample exists in
that state space. It cannot see what its events do not have: several rounds of guest
behaviour after a failure (a hostile or careless guest touching the poison again and again),
error storms, confidential guests, a second error. The comparison scenarios
(``memfail compare``: every built-in ``vm-*`` scenario, each under its own kernel profile)
have them.

So every policy the search answers with (each answer, each minimal policy, each preset's
cheaper policy) is run through the comparison scenarios beside the presets it is compared
with, and the search document says, next to each: the findings compare makes of the
properties the policy is said to keep, and the hazards it has in a scenario where a preset it
is compared with has not. Where compare finds one of the kept properties broken in a scenario
where that preset keeps it, the answer is marked ``check_only``: "minimal on the check
configuration only".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from memfail.model.outcomes import ACCEPTED, HAZARD
from memfail.model.policy.registry import PRESETS, knob_text

# A check property as the comparison outcomes that show it broken (compare's cell codes).
PROPERTY_OUTCOMES: dict[str, tuple[str, ...]] = {
    "no-host-panic": ("host_panic",),
    "host-survives": ("host_panic", "host_stalled"),
    "contained": ("repeated_consumptions",),
    "no-poison-reuse": ("poison_handed_out",),
    "early-told": ("early_not_told",),
    "no-record-lost": ("records_lost",),
    "sigbus-owner-only": ("wrong_process_signals",),
    # unaffected-vms-run, hugetlb-counters: no comparison outcome tells them apart
}
SHOWN = 3
"""Scenario names written out per finding in the text (the JSON has them all)."""


def family(knobs: Mapping[str, Any]) -> str:
    """The backing a policy applies to: 'gmem' (guest_memfd) or 'hugetlbfs' (the baseline
    without guest_memfd). A preset is minimal, or cheaper, only among policies of its own."""
    return "hugetlbfs" if knobs.get("backing") == "hugetlbfs" else "gmem"


def policy_arg(knobs: Mapping[str, Any], base: str) -> str:
    """The policy as ``memfail compare --policy`` takes it: ``BASE{k=v,...}`` (the knobs that
    differ from preset ``base``), or the preset's name when none does."""
    ref = PRESETS[base].knobs()
    diff = [f"{k}={knob_text(v)}" for k, v in knobs.items() if ref.get(k) != v]
    return f"{base}{{{','.join(diff)}}}" if diff else base


def outcome_keys(props: Sequence[str]) -> list[str]:
    out: list[str] = []
    for p in props:
        out += [k for k in PROPERTY_OUTCOMES.get(p, ()) if k not in out]
    return out


def _codes() -> dict[str, str]:
    from memfail.report.compare import FINDINGS

    return {k: c for k, c, _, _ in FINDINGS}


def _findings(cell: Any, keys: Sequence[str]) -> dict[str, str]:
    """outcome key -> class of what a cell found: every hazard, and every finding (of any
    class) of ``keys``, the outcomes of the properties the policy is said to keep."""
    from memfail.report.compare import VERDICT_KEYS

    if not cell.applies:
        return {}
    o = cell.outcomes
    classes = o.get("classes", {})
    return {k: classes.get(k, HAZARD) for k in VERDICT_KEYS
            if o.get(k) and (classes.get(k) == HAZARD or k in keys)}


def run_cells(policies: Mapping[str, Any], ex: Any, scenarios: Sequence[str] | None = None
              ) -> tuple[list[str], dict[tuple[str, str], Any]]:
    """Every comparison scenario under every policy (name -> GmemPolicy), each under its own
    kernel profile, in ``ex`` (a search Executor, or anything with ``map``)."""
    from memfail.report.compare import _run_one, compare_scenarios, make_cell

    scens = list(scenarios) if scenarios is not None else compare_scenarios()
    jobs = [(s, p, None) for s in scens for p in policies.values()]
    res = ex.map(_run_one, jobs)
    return scens, {(s, name): make_cell(s, policies[name], o) for s, name, o in res}


def annotate(doc: dict[str, Any], ex: Any, scenarios: Sequence[str] | None = None) -> None:
    """Add compare's findings to a ``memfail.search/1`` document: ``compare`` (what was run)
    at the top, and a ``compare`` object in each answer, minimal policy and preset with a
    cheaper policy (``cheaper_compare``). See the module's doc."""
    from memfail.model.policy.registry import make_policy

    cfg = doc.get("config") or {}
    base = str(cfg["base"]) if cfg.get("base") in PRESETS else "minimum"
    presets = {p["name"]: p for p in doc.get("presets", []) if p.get("name") in PRESETS}
    every = [str(p.get("id")) for p in doc.get("properties", []) if isinstance(p, dict)]
    pols: dict[str, Any] = {}

    def add(knobs: Mapping[str, Any]) -> str:
        arg = policy_arg(knobs, base)
        if arg not in pols:
            pols[arg] = make_policy(arg)
        return arg

    # (entry to annotate, the key written, policy, its kept properties, the presets it is
    # compared with)
    todo: list[tuple[dict[str, Any], str, str, list[str], list[str]]] = []

    def keepers(props: Sequence[str], knobs: Mapping[str, Any]) -> list[str]:
        """The presets of the policy's family that keep ``props`` on the check configuration:
        the known, dearer ways to keep them; else the closest preset."""
        got = [n for n, p in presets.items() if set(props) <= set(p.get("keeps") or [])
               and family(PRESETS[n].knobs()) == family(knobs)
               and PRESETS[n].knobs() != dict(knobs)]
        if not got:
            from memfail.search.space import closest_preset

            got = [closest_preset(knobs)[0]]
        return got

    # every answer has `compare` and every preset `cheaper_compare` (docs/search.md), null
    # where there is no policy to run
    for a in doc.get("answers", []):
        a.setdefault("compare", None)
    for p in presets.values():
        p.setdefault("cheaper_compare", None)
    for a in doc.get("answers", []):
        if a.get("policy"):
            props = list(a.get("properties") or [])
            todo.append((a, "compare", add(a["policy"]), props, keepers(props, a["policy"])))
    for m in doc.get("minimal", []):
        props = list(m.get("keeps") or every)
        todo.append((m, "compare", add(m["knobs"]), props, keepers(props, m["knobs"])))
    for name, p in presets.items():
        if p.get("cheaper"):
            todo.append((p, "cheaper_compare", add(p["cheaper"]), list(p.get("keeps") or []),
                         [name]))
    for *_, refs in todo:
        for r in refs:
            pols.setdefault(r, PRESETS[r])
    if not todo:
        doc["compare"] = {"ran": False, "why": "no answered policy"}
        return
    scens, cells = run_cells(pols, ex, scenarios)
    codes = _codes()

    def fmt(found: dict[str, list[str]], cls: dict[str, str]) -> dict[str, Any]:
        return {k: {"code": codes[k].lower() if cls.get(k) == ACCEPTED else codes[k],
                    "class": cls.get(k), "scenarios": v} for k, v in found.items()}

    for entry, where, arg, props, refs in todo:
        keys = outcome_keys(props)
        mine: dict[str, list[str]] = {}
        cls: dict[str, str] = {}
        for s in scens:
            for k, c in _findings(cells[(s, arg)], keys).items():
                if k in keys:
                    mine.setdefault(k, []).append(s)
                    cls[k] = c
        vs = []
        check_only = False
        for r in refs:
            beyond: dict[str, list[str]] = {}
            bcls: dict[str, str] = {}
            for s in scens:
                ref = cells[(s, r)]
                if not ref.applies:
                    continue
                theirs = _findings(ref, keys)
                for k, c in _findings(cells[(s, arg)], keys).items():
                    if k not in theirs:
                        beyond.setdefault(k, []).append(s)
                        bcls[k] = c
            broken = [k for k in beyond if k in keys]
            check_only = check_only or bool(broken)
            vs.append({"preset": r, "beyond": fmt(beyond, bcls), "kept_broken": broken})
        ce = {"policy": arg, "properties": props, "outcomes": keys,
              "scenarios": sum(1 for s in scens if cells[(s, arg)].applies),
              "findings": fmt(mine, cls), "vs": vs, "check_only": check_only,
              "command": "memfail compare --no-readings " + " ".join(
                  f"--policy '{x}'" if "{" in x else f"--policy {x}" for x in [arg, *refs])}
        entry[where] = ce
    doc["compare"] = {"ran": True, "scenarios": len(scens),
                      "profile": "each scenario's own",
                      "what": "every built-in vm-* scenario (memfail compare) under each "
                              "answered policy and the presets it is compared with",
                      "property_outcomes": {p: list(PROPERTY_OUTCOMES.get(p, ()))
                                            for p in every}}


def _list(scens: Sequence[str]) -> str:
    head = ", ".join(scens[:SHOWN])
    return head + (f" +{len(scens) - SHOWN}" if len(scens) > SHOWN else "")


def _group(vs: Sequence[Mapping[str, Any]], keep: Any) -> list[tuple[list[str], str]]:
    """(presets, 'R in 12 (a, b, c +9)'): per finding and scenario list, the presets that do
    not have it there, among the outcome keys ``keep`` selects."""
    groups: dict[str, list[str]] = {}
    for v in vs:
        for k, x in (v.get("beyond") or {}).items():
            if keep(k):
                text = f"{x['code']} in {len(x['scenarios'])} ({_list(x['scenarios'])})"
                groups.setdefault(text, []).append(str(v["preset"]))
    return [(ps, t) for t, ps in groups.items()]


def sentence(ce: Mapping[str, Any] | None, what: str = "answer") -> str:
    """compare's findings of one answered policy, in words (empty when not computed)."""
    if not ce:
        return ""
    vs = ce.get("vs") or []
    keys = set(ce.get("outcomes") or [])
    n = f"compare's {ce['scenarios']} scenarios"
    broken = _group(vs, lambda k: k in keys)
    other = _group(vs, lambda k: k not in keys)
    refs = ", ".join(str(v["preset"]) for v in vs)
    out = []
    if broken:
        out.append(f"{'Minimal' if what == 'answer' else 'Cheaper'} on the check configuration "
                   f"only: in {n} it breaks what it keeps there: " + "; ".join(
                       f"{t} where {', '.join(ps)} {'do' if len(ps) > 1 else 'does'} not"
                       for ps, t in broken) + ".")
    else:
        out.append(f"In {n} it breaks none of the properties it keeps where {refs} "
                   f"{'keep' if len(vs) > 1 else 'keeps'} them.")
    if other:
        out.append("Other hazards: " + "; ".join(
            f"{t} where {', '.join(ps)} {'have' if len(ps) > 1 else 'has'} none"
            for ps, t in other) + ".")
    return " ".join(out)
