"""The report page: one self-contained HTML file (inline CSS and SVG, no script, no external
resource) rendered from the ``memfail.report-data/1`` dictionary ``collect`` builds."""

from __future__ import annotations

import itertools
import json
import re
from html import escape
from typing import Any

from memfail.report.html import svg

# The call's risks and limitations (the seed's own words), each with the comparison outcomes
# (Host.outcomes keys) and check properties that are its evidence. ``scenarios``: a regular
# expression over vm-* scenario names the risk is about (None: every scenario).
RISKS: tuple[dict[str, Any], ...] = (
    {"id": "risk-mapped", "title": "Risk: keeping failed memory mapped",
     "words": "Subsequent accesses (in certain cases) may take down host; repeated consumption",
     "keys": ("repeated_consumptions", "host_panic", "host_stalled"),
     "props": ("contained", "host-survives"), "scenarios": None, "codes": "RPT"},
    {"id": "risk-kernel-users", "title": "Risk: folios with failed memory not marked HWpoison",
     "words": "There may be kernel users relying on HWpoison flag ... that may access failed "
              "memory and take down host",
     "keys": ("host_panic",), "props": ("no-host-panic",),
     "scenarios": r"kernel|kworker|vhost|dump", "codes": "P"},
    {"id": "risk-coco", "title": "Unmapping will break CoCo VMs",
     "words": "we can't pair unmapping with #MCE virtualization (confidential guests)",
     "keys": ("host_panic", "host_stalled", "repeated_consumptions", "vms_killed",
              "vms_paused", "guests_panicked"),
     "props": (), "scenarios": r"confidential|snp|tdx", "codes": "PTRKSG"},
    {"id": "risk-current", "title": "Limitation: SIGBUS-ing current for consumed failure",
     "words": "current may not always be the VM",
     "keys": ("wrong_process_signals",), "props": ("sigbus-owner-only",), "scenarios": None,
     "codes": "W",
     "note": "Not found by construction, not by measurement: memory_failure() gets "
             "MF_ACTION_REQUIRED only from the consuming thread's own task work "
             "(kill_me_maybe, M7), so current is the consumer (a vCPU, a VMM thread, a "
             "process sharing the mapping); a kernel thread's machine-check-safe read "
             "(kworker, vhost) reaches memory_failure() through memory_failure_queue() "
             "without it and is an unconsumed failure. What SIGBUS-ing current leaves out, "
             "the other processes mapping the page, shows as E (EARLY thread not told)."},
    {"id": "risk-early", "title": "Limitation: No handling for PR_MCE_KILL_EARLY",
     "words": "Even if PR_MCE_KILL_EARLY is set, the requesting thread will not be notified",
     "keys": ("early_not_told",), "props": ("early-told",), "scenarios": None, "codes": "E"},
    {"id": "risk-reuse", "title": "Indicate any memory failures to HugeTLB",
     "words": "poison handed out again after the folio is freed",
     "keys": ("poison_handed_out",), "props": ("no-poison-reuse",), "scenarios": None,
     "codes": "H"},
    {"id": "risk-records", "title": "Marking HWpoison complicates folio restructuring",
     "words": "records lost on split / merge",
     "keys": ("records_lost",), "props": ("no-record-lost",), "scenarios": None, "codes": "L"},
)
# A check property's finding as a comparison outcome, so its class (hazard, cost or accepted
# by the policy's design: model/outcomes.py outcome_class) is the comparison's.
PROP_KEY = {"contained": "repeated_consumptions", "no-host-panic": "host_panic",
            "host-survives": "host_panic", "no-poison-reuse": "poison_handed_out",
            "sigbus-owner-only": "wrong_process_signals", "early-told": "early_not_told",
            "no-record-lost": "records_lost", "unaffected-vms-run": "vms_killed",
            "hugetlb-counters": "records_lost"}

SECTIONS = (("minimum", "What does minimum support look like?"),
            ("risk", "Can we accept this risk?"),
            ("compare", "Differences from the baseline"),
            ("timelines", "Counterexample timelines and folio maps"),
            ("fleet", "Fleet: rates, sensitivity, calibration"),
            ("kernels", "Kernel versions × verdicts"),
            ("fidelity", "Model fidelity"),
            ("bounds", "The checker's bounds and coverage"),
            ("manifest", "Reproduction manifest"))


def e(s: object) -> str:
    return escape(str(s), quote=True)


def anchor(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", "-".join(parts)).strip("-")


def _num(x: float) -> str:
    return svg._num(x)


def _iv(iv: dict[str, Any]) -> str:
    if iv.get("method") == "rule-of-three":
        return f"0 (&lt; {_num(float(iv['high']))})"
    return (f"{_num(float(iv['estimate']))} <span class=\"ci\">[{_num(float(iv['low']))}, "
            f"{_num(float(iv['high']))}]</span>")


def _table(head: list[str], rows: list[list[str]], cls: str = "", caption: str = "") -> str:
    cap = f"<caption>{caption}</caption>" if caption else ""
    th = "".join(f"<th scope=\"col\">{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" if i else f"<th scope=\"row\">{c}</th>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return (f'<div class="scroll"><table class="{cls}">{cap}<thead><tr>{th}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


def _cmd(text: str) -> str:
    return f'<code class="cmd">{e(text)}</code>'


# ----------------------------------------------------------------------------- sections


def section_minimum(d: dict[str, Any]) -> str:
    pols = d["policies"]
    base = d["baseline"]
    knobs = list(next(iter(pols.values()))["knobs"])
    rows = []
    for name, p in pols.items():
        diff = [f"<code>{e(k)}={e(_v(p['knobs'][k]))}</code>" for k in knobs
                if p["knobs"][k] != pols[base]["knobs"][k]] if name != base else ["(baseline)"]
        rows.append([f'<span id="{anchor("policy", name)}">{e(name)}</span>',
                     e(p["summary"]), e(", ".join(p["call_items"]) or "-"),
                     " ".join(diff) or "same knobs", e(", ".join(p["unmerged"]) or "-")])
    out = ["<p>The call's proposal (<code>minimum</code>), the alternatives argued on the call "
           "and its future work, each a preset over the model's knobs "
           "(<code>memfail policies</code>). Knobs are shown where they differ from the "
           f"baseline <code>{e(base)}</code>.</p>",
           _table(["policy", "what it does", "call items", f"knobs that differ from {e(base)}",
                   "relies on unmerged"], rows, "wide")]
    kn = [[f"<code>{e(k)}</code>" + (" *" if k in d["readings"] else ""), e(doc)]
          for k, doc in d["knob_docs"].items()]
    out.append("<details><summary>Every knob (* a reading of the call's words)</summary>"
               + _table(["knob", "meaning"], kn) + "</details>")
    out.append(section_search(d.get("search"), d.get("search_source"), d.get("check")))
    return "".join(out)


def _v(v: Any) -> str:
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


def section_search(doc: dict[str, Any] | None, source: str | None,
                   check: dict[str, Any] | None = None) -> str:
    """The minimal policies ``memfail search`` found (memfail.search/1), when given: the same
    tables and answer as the command's own text output (memfail.search.report.render), each
    policy written as its knobs that differ from a preset. With ``check`` (the page's
    memfail.check/1 document), the presets whose verdicts differ between the two, each with
    the configuration and depth it comes from (``search_vs_check``)."""
    from memfail.model.policy.registry import PRESETS

    h = '<h3 id="search">Minimal policies found by search</h3>'
    if not doc:
        return h + ("<p class=\"note\">No search results in this report: give "
                    "<code>--search-json FILE</code> (the output of <code>memfail search "
                    "--json</code>), or run the full report where <code>memfail search</code> "
                    "exists.</p>")
    if "error" in doc:
        return h + f'<p class="note">{e(doc["error"])}</p>'
    raw = doc.get("config")
    cfg: dict[str, Any] = raw if isinstance(raw, dict) else {"check_config": raw}
    base_name = str(cfg.get("base")) if cfg.get("base") in PRESETS else "minimum"
    base = PRESETS[base_name].knobs()
    props = [p.get("id") if isinstance(p, dict) else p for p in _props(doc.get("properties"))]
    varied = cfg.get("varied") or []
    out = [h, f"<p>From {_cmd(source or 'memfail search --json')}: check configuration "
              f"<code>{e(cfg.get('check_config'))}</code>"
              + (f" to depth {e(cfg['depth'])}" if cfg.get("depth") is not None else "")
              + (f", knobs varied from the <code>{e(base_name)}</code> preset: "
                 f"{e(', '.join(map(str, varied)))}" if varied else "")
              + f"; properties kept: {e(', '.join(map(str, props)))}. "
              + e(cfg.get("verdict", "")).capitalize() + ".</p>"]
    out.append(search_vs_check(doc, check))
    sp = doc.get("space") or {}
    if sp:
        parts = [f"{e(k)} {e(v)}" for k, v in sp.items() if isinstance(v, int | float)
                 and not isinstance(v, bool)]
        exc = sp.get("excluded")
        if isinstance(exc, dict):
            parts += [f"excluded {e(x.get('count'))} ({e(n)}: {e(x.get('reason'))})"
                      for n, x in exc.items() if isinstance(x, dict)]
        out.append("<p class=\"search-space\">Search space: " + "; ".join(parts) + ".</p>")

    def knobs(k: Any, ref: dict[str, Any] | None = None) -> str:
        if isinstance(k, dict):
            items = [(a, b) for a, b in k.items() if ref is None or ref.get(a, b) != b]
            return " ".join(f"<code>{e(a)}={e(_v(b))}</code>" for a, b in items) or "(same)"
        return e(k if k is not None else "-")

    def ref_of(name: Any) -> dict[str, Any] | None:
        return PRESETS[name].knobs() if name in PRESETS else None

    words = _search_words(doc)
    if words:
        out.append("<p>The answer, per property set of the call:</p><ul class=\"search-words\">"
                   + "".join(f"<li>{e(w)}</li>" for w in words) + "</ul>")
    cmp_ = _compare_words
    rows = [[str(i), knobs(m.get("knobs"), base), e(_cost(m.get("cost"))),
             e(", ".join(map(str, m.get("keeps") or []))), e(m.get("closest_preset")),
             knobs(m.get("diff")), e(cmp_(m.get("compare")))]
            for i, m in enumerate(doc.get("minimal", []), 1)]
    if rows:
        out.append(_table(["#", f"knobs (vs {e(base_name)})", "cost", "keeps",
                           "closest preset", "differs from it in", "compare's scenarios"],
                          rows, "wide search-minimal",
                          "Minimal policies (keep every property on the check configuration; "
                          "no other is cheaper on every knob)"))
    else:
        out.append(f'<p class="search-minimal">{e(_none_minimal(doc))}</p>')
    if not doc.get("compare"):
        out.append('<p class="note">This search document has no <code>compare</code> part: '
                   "its answers are verdicts on the check configuration only, not run through "
                   "the comparison scenarios.</p>")
    elif doc["compare"].get("ran"):
        c = doc["compare"]
        out.append(f'<p class="note">Every answered policy was also run through the '
                   f"{e(c.get('scenarios'))} comparison scenarios (every built-in "
                   "<code>vm-*</code> scenario, each under its own kernel profile) beside the "
                   "presets it is compared with: the presets of its family that keep the same "
                   "properties on the check configuration. Where compare finds one of those "
                   "properties broken in a scenario where such a preset keeps it, the answer "
                   "is minimal on the check configuration only"
                   + (f" (computed by {e(c['computed_by'])})" if c.get("computed_by") else "")
                   + ".</p>")
    rows = [[e(p.get("name")), e(_cost(p.get("cost"))), "yes" if p.get("minimal") else "no",
             ((e(p["cheaper_preset"]) if p.get("cheaper_preset")
               else knobs(p["cheaper"], ref_of(p.get("name"))))
              + (f" (cost {e(_cost(p['cheaper_cost']))})" if p.get("cheaper_cost") is not None
                 else "")
              + (f"<br>{e(cmp_(p.get('cheaper_compare'), 'cheaper'))}"
                 if p.get("cheaper_compare") else "")) if p.get("cheaper") else "-",
             e(", ".join(p.get("loses_all") or ([p["loses"]] if p.get("loses") else []))
               or "-"),
             _cmd(p["counterexample"]) if p.get("counterexample") else "-"]
            for p in doc.get("presets", [])]
    out.append(_table(["preset", "cost", "minimal", "a cheaper policy that keeps as much",
                       "properties it loses", "counterexample"], rows, "search-presets",
                      "The presets (minimal within their family: a guest_memfd preset among "
                      "guest_memfd policies, the hugetlbfs baseline among hugetlbfs ones)"))
    rows = [[e(a.get("property_set") if isinstance(a.get("property_set"), str)
               else ", ".join(map(str, _props(a.get("property_set"))))),
             e(", ".join(map(str, a.get("properties") or []))),
             knobs(a.get("policy"), base) if a.get("policy") is not None else "none found",
             e(_cost(a.get("cost"))), e(", ".join(map(str, a.get("breaks") or [])) or "-"),
             e(cmp_(a.get("compare")) or "-")]
            for a in doc.get("answers", [])]
    out.append(_table(["to keep", "properties", f"the cheapest policy (vs {e(base_name)})",
                       "cost", "the call's don'ts it breaks", "compare's scenarios"], rows,
                      "wide search-answers",
                      "Answers (cheapest on the check configuration)"))
    par = doc.get("pareto") or []
    if par:
        def fleet(f: Any) -> str:
            if not isinstance(f, dict):
                return "-"
            return e(", ".join(
                f"{k} {v['per_host_year']:.3g} [{v['low']:.3g}, {v['high']:.3g}]"
                if isinstance(v, dict) else f"{k} {v}" for k, v in f.items()))

        rows = [[e(p.get("name", "")) + ("" if p.get("preset") else
                                         " " + knobs(p.get("knobs"), base)),
                 e(_cost(p.get("cost"))), fleet(p.get("fleet"))] for p in par]
        hy = (cfg.get("fleet") or {}).get("host_years")
        out.append(_table(["policy", "cost", "fleet outcomes per host-year [95 % interval]"],
                          rows, "search-pareto",
                          "Pareto front (cost against fleet outcomes"
                          + (f", {hy:,} host-years" if isinstance(hy, int) else "") + ")"))
    return "".join(out)


def search_vs_check(doc: dict[str, Any], check: dict[str, Any] | None) -> str:
    """A note naming the configurations of the search and of the check section and, preset
    by preset, every property whose verdict differs between them (kept by the search and
    FAIL in the check, or the reverse): a search keeps a property when its check finds no
    counterexample to its depth on its own configuration, which is not the check section's
    unless ``memfail search --config`` gave it, so the two tables may disagree, and the page
    says where rather than showing both without a word."""
    if not check or not isinstance(check.get("results"), list):
        return ""
    raw = doc.get("config")
    cfg: dict[str, Any] = raw if isinstance(raw, dict) else {}
    scfg, sdepth = cfg.get("check_config"), cfg.get("depth")
    cfile = check.get("file")
    where = f"<code>{e(cfile)}</code>" if cfile else (
        f"the {e(check.get('config', 'standard'))} configuration "
        "(<code>src/memfail/check/standard.yaml</code>)")
    cdepth = ((check.get("results") or [{}])[0]).get("depth")
    props = [p.get("id") if isinstance(p, dict) else p for p in _props(doc.get("properties"))]
    verdicts = {r.get("policy"): r.get("verdicts") or {} for r in check["results"]
                if isinstance(r, dict)}
    diffs = []
    for p in doc.get("presets") or []:
        name, keeps = p.get("name"), set(p.get("keeps") or [])
        for prop in props:
            v = (verdicts.get(name) or {}).get(prop)
            if not isinstance(v, dict):
                continue
            failed = v.get("status") == "FAIL"
            if (prop in keeps) == failed:
                diffs.append(f"<code>{e(name)}</code> {e(prop)}: "
                             + ("kept by the search, FAIL in the check"
                                + (f" at depth {e(v.get('depth'))}" if v.get("depth") else "")
                                if failed else "lost in the search, not FAIL in the check"))
    head = (f"The search checked <code>{e(scfg)}</code>"
            + (f" to depth {e(sdepth)}" if sdepth is not None else "")
            + f"; the check section checked {where}"
            + (f" (explored to depth {e(cdepth)})" if cdepth is not None else "") + ". ")
    if not diffs:
        return f'<p class="note search-vs-check">{head}Their verdicts on the presets agree.</p>'
    return (f'<p class="note search-vs-check">{head}A verdict is &ldquo;no counterexample to '
            "that depth on that configuration&rdquo;, so they can differ; they differ on: "
            + "; ".join(diffs) + ". The check's counterexamples are in its section; the "
            "search's verdicts say nothing about events its configuration does not have.</p>")


def _cost(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v) if v is not None else "-"


def _search_words(doc: dict[str, Any]) -> list[str]:
    """The command's own answer sentences (memfail.search.report.words) when it applies."""
    try:
        from memfail.search.report import words
    except ImportError:
        return []
    try:
        return words(doc)
    except (KeyError, TypeError, AttributeError):
        return []


def _compare_words(ce: Any, what: str = "answer") -> str:
    """What compare's scenarios find of an answered policy (memfail.search.crosscheck)."""
    if not isinstance(ce, dict):
        return ""
    try:
        from memfail.search.crosscheck import sentence
    except ImportError:
        return ""
    try:
        return sentence(ce, what)
    except (KeyError, TypeError, AttributeError):
        return ""


def _none_minimal(doc: dict[str, Any]) -> str:
    try:
        from memfail.search.report import none_minimal

        return none_minimal(doc)
    except (ImportError, KeyError, TypeError):
        return ("Minimal policies: none found (no combination keeps every property on the "
                "check configuration).")


def _props(p: Any) -> list[Any]:
    if isinstance(p, dict):
        return list(p)
    return list(p or [])


def risk_verdicts(d: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """risk id -> policy -> {verdict, mechanism, links, depends}: from the comparison cells
    and the check's verdicts (the evidence the page links to)."""
    from memfail.model.outcomes import ACCEPTED, COST, outcome_class
    from memfail.model.policy.registry import make_policy

    cmp_ = d["compare"]
    chk = {r["policy"]: r for r in d["check"]["results"]}
    sens = cmp_.get("readings_that_change_cells") or {}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for risk in RISKS:
        pat = re.compile(risk["scenarios"]) if risk["scenarios"] else None
        per: dict[str, dict[str, Any]] = {}
        for pol in cmp_["policies"]:
            polo = make_policy(pol)
            hits, costs, accepted, links = [], [], [], []
            n = 0
            for c in cmp_["cells"]:
                if c["policy"] != pol or not c["applies"]:
                    continue
                if pat is not None and not pat.search(c["scenario"]):
                    continue
                n += 1
                o = c["outcomes"]
                found = [k for k in risk["keys"] if o.get(k)]
                if not found:
                    continue
                cls = o.get("classes", {})
                if all(cls.get(k) == ACCEPTED for k in found):
                    accepted.append(c)
                elif all(cls.get(k) == COST for k in found):
                    costs.append(c)
                else:
                    hits.append(c)
            fails = []
            r = chk.get(pol)
            if r is not None:
                for prop in risk["props"]:
                    v = r["verdicts"].get(prop)
                    if v and v["status"] == "FAIL":
                        fails.append((prop, v, outcome_class(PROP_KEY.get(prop, ""), polo)))
            haz_fail = [f for f in fails if f[2] not in (ACCEPTED, COST)]
            cost_fail = [f for f in fails if f[2] == COST]
            acc_fail = [f for f in fails if f[2] == ACCEPTED]
            if hits or haz_fail:
                verdict = "hazard"
            elif costs or cost_fail:
                verdict = "cost"
            elif accepted or acc_fail:
                verdict = "accepted"
            else:
                verdict = "not found"
            mech = []
            for c in (hits or costs or accepted)[:1]:
                mech.append(f"{c['scenario']}: {c['summary']}")
                links.append(("#" + anchor("cell", c["scenario"], pol), c["scenario"]))
            for prop, v, _cls in (haz_fail or cost_fail or acc_fail)[:1]:
                mech.append(f"check {prop}: {v['message']}")
                links.append(("#" + anchor("cex", pol, prop), f"{prop} counterexample"))
            depends = []
            for reading, changed in (sens.get(pol) or {}).items():
                for ch in changed:
                    scen, _, codes = ch.partition(": ")
                    if pat is not None and not pat.search(scen):
                        continue
                    old, _, new = codes.partition(" -> ")
                    if any((c in old.upper()) != (c in new.upper()) for c in risk["codes"]):
                        depends.append(reading)
                        break
            per[pol] = {"verdict": verdict, "hits": len(hits) + len(costs),
                        "accepted": len(accepted),
                        "scenarios": n, "fails": [f[0] for f in fails], "mechanism": mech,
                        "links": links, "depends": depends}
        out[risk["id"]] = per
    return out


def section_risk(d: dict[str, Any], rv: dict[str, dict[str, dict[str, Any]]]) -> str:
    pols = d["compare"]["policies"]
    depth = d["check"]["bounds"]["max_depth"]
    out = ["<p>Per policy, each risk and limitation the call named: <b class=\"v-hazard\">"
           "hazard</b> (the model shows it happening, and the policy does not accept it), "
           "<b class=\"v-cost\">cost</b> (contained at the tenant's expense: a VM killed, "
           "paused or its guest panicked), "
           "<b class=\"v-accepted\">accepted</b> (it happens, as a limitation the policy "
           "accepts by design), <b class=\"v-none\">not found</b> (in none of the comparison "
           f"scenarios, nor by the checker to depth {e(depth)}). Each verdict names its "
           "mechanism and links to its evidence: the comparison cell, the counterexample. "
           "<i>Depends on</i> lists the readings of the call's words that flip it.</p>"]
    rows = []
    for risk in RISKS:
        note = f'<div class="mech">{e(risk["note"])}</div>' if risk.get("note") else ""
        cells = [f'<span id="{risk["id"]}">{e(risk["title"])}</span>'
                 f'<div class="words">“{e(risk["words"])}”</div>{note}']
        for pol in pols:
            v = rv[risk["id"]][pol]
            links = " ".join(f'<a href="{e(h)}">{e(t)}</a>' for h, t in v["links"])
            mech = "".join(f"<div class=\"mech\">{e(m)}</div>" for m in v["mechanism"])
            dep = (f'<div class="dep">depends on: {e(", ".join(v["depends"]))}</div>'
                   if v["depends"] else "")
            count = (f"{v['hits'] + v['accepted']}/{v['scenarios']} scenarios"
                     + (f"; check: {', '.join(v['fails'])}" if v["fails"] else ""))
            cells.append(f'<b class="v-{v["verdict"].replace(" ", "")}">{e(v["verdict"])}</b>'
                         f'<div class="count">{e(count)}</div>{mech}'
                         f'<div class="links">{links}</div>{dep}')
        rows.append(cells)
    out.append(_table(["risk (the call's words)", *[e(p) for p in pols]], rows,
                      "risk wide", "Verdict per risk and policy"))
    return "".join(out)


def section_compare(d: dict[str, Any]) -> str:
    cmp_ = d["compare"]
    base = d["baseline"]
    pols = [base] + [p for p in cmp_["policies"] if p != base]
    by = {(c["scenario"], c["policy"]): c for c in cmp_["cells"]}
    rows = []
    for s in cmp_["scenarios"]:
        b = by[(s, base)]
        row = [e(s)]
        for p in pols:
            c = by[(s, p)]
            same = p != base and c["code"] == b["code"]
            txt = "=" if same else _codes(c)
            cls = "same" if same else ("na" if not c["applies"] else "")
            row.append(f'<span id="{anchor("cell", s, p)}" class="{cls}" '
                       f'title="{e(c["summary"])}">{txt}</span>')
        rows.append(row)
    vs = cmp_["verdicts"]
    out = [f"<p>Every built-in <code>vm-*</code> scenario under every policy "
           f"({_cmd('memfail compare --json')}). The baseline column "
           f"<code>{e(base)}</code> shows its codes; every other column shows only what "
           "differs from it (<code>=</code> the same). <span class=\"c-hazard\">Upper case"
           "</span>: a hazard or cost; <span class=\"c-accepted\">lower case</span>: a "
           "limitation the policy accepts by design; <code>-</code>: the policy does not "
           "apply. Codes: " + "; ".join(
               f"<b>{c}</b> {e(w)}" for c, w in (("P", "host panic"), ("T", "host stalled"),
                                                 ("K", "VM killed"), ("G", "guest panic"),
                                                 ("S", "VM paused"), ("R", "re-consumed"),
                                                 ("H", "poison handed out again"),
                                                 ("W", "wrong-process SIGBUS"),
                                                 ("L", "record lost"),
                                                 ("E", "EARLY VMM not told"),
                                                 ("V", "vMCE injected"))) +
           "; a size: guest memory lost.</p>"]
    banner = section_readings(d)
    out.append(banner)
    head = ["scenario", *(f"{e(p)}{' (baseline)' if p == base else ''}" for p in pols)]
    out.append(_table(head, rows, "cmp wide", f"Comparison with {e(base)}"))
    # hazards, costs and accepted limitations apart, with the change from the baseline
    out.append("<h3 id=\"compare-classes\">Hazards apart from accepted limitations</h3>")
    for cls, label in (("hazard", "Hazards (scenarios with each finding)"),
                       ("cost", "Costs"), ("accepted", "Accepted limitations")):
        keys = sorted({k for p in pols for k in vs[p]["by_class"][cls]})
        if not keys:
            continue
        rows = []
        for k in keys:
            cells = [e(k)]
            for p in pols:
                n = vs[p]["by_class"][cls].get(k, 0)
                bn = vs[base]["by_class"][cls].get(k, 0)
                delta = "" if p == base or n == bn else f" ({n - bn:+d})"
                cells.append(f'<span class="c-{cls}">{n}{delta}</span>')
            rows.append(cells)
        out.append(_table(["finding", *[e(p) for p in pols]], rows, f"classes {cls}",
                          e(label) + f"; in brackets the change from {e(base)}"))
    rows = [[e(p), str(vs[p]["scenarios"]), str(vs[p]["ok"]),
             f"{vs[p]['ok'] - vs[base]['ok']:+d}" if p != base else "",
             e(_gib(vs[p]["guest_bytes_lost"]))] for p in pols]
    out.append(_table(["policy", "scenarios it applies to", "without hazard, kill or pause",
                       f"vs {e(base)}", "guest memory lost"], rows, "verdicts",
                      "Verdict lines (as memfail compare prints them)"))
    return "".join(out)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 1 << 30 else f"{n / 2**20:.1f} MiB" if n >= 1 << 20 \
        else f"{n // 1024} KiB"


def _codes(c: dict[str, Any]) -> str:
    code = c["code"]
    if code in ("-", "ok"):
        return e(code)
    letters, _, size = code.partition(" ")
    if re.fullmatch(r"\d+[KMG]", letters):  # only guest memory lost
        letters, size = "", letters

    def cls(ch: str) -> str:
        return "c-info" if ch == "V" else "c-accepted" if ch.islower() else "c-hazard"

    parts = "".join(f'<span class="{cls(ch)}">{e(ch)}</span>' for ch in letters)
    return parts + (f' <span class="size">{e(size)}</span>' if size else "")


def section_readings(d: dict[str, Any]) -> str:
    sens = d["compare"].get("readings_that_change_cells")
    readings = d["readings"]
    items = "".join(f"<li><code>{e(k)}</code>: {e(v)}</li>" for k, v in readings.items())
    done = d["compare"].get("readings_computed_for") or []
    if sens is None:
        body = "<p>Which readings change which verdict was not computed.</p>"
    else:
        rows = []
        for p, changes in sens.items():
            rows.append([e(p), "; ".join(f"<code>{e(k)}</code> ({len(v)} cells)"
                                         for k, v in changes.items())])
        body = ("<p>Readings that change a preset's cells (the preset run with the other "
                "reading; <code>readings_that_change_cells</code> of "
                f"{_cmd('memfail compare --json')}):</p>"
                + (_table(["policy", "readings that change its cells"], rows)
                   if rows else "<p>None: no reading changes any cell.</p>"))
        rest = [p for p in d["compare"]["policies"] if p not in done]
        if rest:
            body += (f"<p class=\"note\">Computed for {e(', '.join(done))} only in this "
                     f"<code>--quick</code> draft; not for {e(', '.join(rest))} (the full "
                     "report runs every preset under every other reading).</p>")
    return (f'<aside class="banner" id="readings"><h3>Readings every verdict depends on</h3>'
            f"<p>Where the call's words allow more than one reading, each preset takes one "
            f"(docs/policies.md):</p><ul>{items}</ul>{readings_taken(d)}{body}</aside>")


def readings_taken(d: dict[str, Any]) -> str:
    """The value of every reading knob each preset takes (``memfail policies --json``),
    the baseline's included: a reading equal to the baseline's is still a reading."""
    pols = d["policies"]
    names = list(pols)
    rows = [[f"<code>{e(k)}</code>",
             *(f'<code class="reading">{e(_v(pols[n]["knobs"].get(k)))}</code>'
               for n in names)] for k in d["readings"]]
    return _table(["reading", *map(e, names)], rows, "readings-taken wide",
                  "The reading each preset takes (memfail policies --json)")


def section_timelines(d: dict[str, Any]) -> str:
    cexs = d["counterexamples"]
    if not cexs:
        return "<p>The checker found no counterexample within its bounds.</p>"
    out = [f"<p>{len(cexs)} counterexamples from {_cmd(d['manifest']['commands'][1])}: each "
           "drawn as swimlanes (one column per step, the failing step outlined), with the "
           "command that replays it (it exits 0 when the violation reproduces) and the huge "
           "folio it concerns as a grid of its base pages, before step 1 and after every "
           "step.</p>", svg.folio_legend()]
    toc = " · ".join(f'<a href="#{anchor("cex", c["policy"], c["property"])}">'
                     f'{e(c["policy"])}: {e(c["property"])}</a>' for c in cexs)
    out.append(f'<nav class="toc">{toc}</nav>')
    for c in cexs:
        aid = anchor("cex", c["policy"], c["property"])
        out.append(f'<article class="cex" id="{aid}"><h3>{e(c["policy"])} violates '
                   f'<code>{e(c["property"])}</code> in {e(c["depth"])} steps</h3>'
                   f'<p class="fail">{e(c["message"])}</p>'
                   f'<p class="words">Concern: {e(c["concern"])}</p>'
                   f'<p>Replay: {_cmd(c["replay"])}<br>Find again: {_cmd(c["find"])}</p>'
                   f'<div class="scroll">{svg.swimlane(c)}</div>')
        if c["folio"]:
            reg = c["region"]
            out.append(f'<p class="note">Folio map: pfn {reg["head"]:#x}, {reg["pages"]} base '
                       "pages (the checker's scaled huge page)</p>"
                       f'<div class="scroll">{svg.folio_map(c)}</div>')
        out.append("</article>")
    return "".join(out)


def section_fleet(d: dict[str, Any]) -> str:
    f = d["fleet"]
    run = f["run"]
    unit = "per_million_vm_hours"
    pols = run["policies"]
    rates = {(r["policy"], r["outcome"]): r for r in run["rates"]}
    rows = [[e(p), *(_iv(rates[(p, o)][unit]) for o in run["outcomes"])] for p in pols]
    cal = f["calibration"]
    out = [f"<p>{_cmd(f['command'])}: {run['host_years']:,} host-years sampled (each "
           f"conditioned on at least one fault), seed {run['seed']}, {run['hosts']:,} hosts of "
           f"{run['vms_per_host']:.1f} VMs; the outcome of each of the "
           f"{run['failure_classes']} failure classes is computed by the model, except where "
           "the model has no action for the access: kernel memory read by the kernel itself "
           "and a free HugeTLB folio read by a kernel user (/proc/kcore, a dump) take a host "
           "panic fixed by a cited rule (R47; docs/fleet.md, The model oracle). "
           "Rates per million VM-hours with 95 % "
           "intervals; 0 (&lt; x): never seen, x the rule-of-three upper bound.</p>",
           _table(["policy", *(e(o.replace("_", " ")) for o in run["outcomes"])], rows,
                  "fleet wide", "Rates per million VM-hours (95 % intervals)")]
    figs = []
    for o in run["outcomes"]:
        figs.append(svg.interval_bars(o.replace("_", " "),
                                      [(p, rates[(p, o)][unit]) for p in pols],
                                      "per M VM-h", d["baseline"]))
    out.append('<div class="figs">' + "".join(f"<figure>{x}</figure>" for x in figs)
               + "</div>")
    p, cited = float(cal["p_host_ue_per_year"]), float(cal["cited"])
    out.append(f'<h3 id="calibration">Calibration</h3><p class="calib">The fleet\'s own '
               f"P(≥ 1 uncorrectable error per host-year) = <b>{p:.2%}</b> against the cited "
               f"<b>{cited:.1%}</b> ({e(cal.get('cited_source', ''))}): ratio "
               f"{(p / cited if cited else float('nan')):.2f}"
               + (f"; mean fault rate {float(cal['mean_rate_per_host_year']):.4g} per "
                  f"host-year, the rate matching the cited figure "
                  f"{float(cal['rate_matching_cited']):.4g}"
                  if cal.get("rate_matching_cited") is not None and
                  cal.get("mean_rate_per_host_year") is not None else "")
               + f".</p><p>{e(cal.get('explanation'))}"
               f"</p><p class=\"note\">Source of this line: "
               f"{'the fleet document' if cal.get('from') == 'fleet' else 'computed by the report from the fleet document (p_any_fault)'}"
               ".</p>")
    out.append(section_sensitivity(f["sensitivity"]))
    return "".join(out)


def section_sensitivity(s: dict[str, Any]) -> str:
    out = [f'<h3 id="sensitivity">Sensitivity to the assumed parameters</h3><p>Each assumed '
           "parameter moved over its plausible range, the others at their defaults "
           f"({s['host_years']:,} host-years per point, seed {s['seed']}, the same random "
           "numbers at every point: the default is "
           + (_cmd(s["command"]) if s.get("command") else "the fleet at its defaults")
           + ", each row's two ends one <code>memfail fleet sweep</code> listed in the "
           "<a href=\"#manifest\">manifest</a>). A bar runs from the default's rate to the rate at the "
           "low end (light) and at the high end (dark) of the range; widest first. The grey "
           "band is the default's own 95 % interval at this sample size: a swing inside it "
           "is not told apart from sampling noise (the points share their random numbers, so "
           "their differences are less noisy than the band suggests, but no interval is "
           "computed for a difference).</p>"]
    rows = [[e(r["name"]), e(r["default"]), e(_assign(r["low_assign"])),
             e(_assign(r["high_assign"])), e(r["why"])] for r in s["rows"]]
    rows += [[e(r["name"]), e(r["default"]), e(_assign(r["low_assign"])),
              e(_assign(r["high_assign"])),
              e(r["why"]) + f'<br><span class="note">Not drawn: {e(r["not_drawn"])}.</span>']
             for r in s.get("not_drawn") or []]
    out.append(_table(["parameter", "default", "low end", "high end", "why this range"], rows,
                      "ranges wide", "Plausible ranges (src/memfail/report/html/ranges.py)"))
    figs = []
    for pol in s["policies"]:
        for o in s["outcomes"]:
            centre = float(s["centre"][pol][o])
            bars = [(r["name"], float(r["low"][pol][o]), float(r["high"][pol][o]))
                    for r in s["rows"]]
            if centre == 0 and all(a == 0 and b == 0 for _, a, b in bars):
                continue
            iv = (s.get("centre_interval") or {}).get(pol, {}).get(o)
            figs.append(svg.tornado(f"{pol}: {o.replace('_', ' ')}", centre, bars,
                                    "per M VM-h", (float(iv[0]), float(iv[1])) if iv else None))
    if not figs:
        out.append("<p>No rate of these outcomes moved from zero anywhere in the ranges.</p>")
    out.append('<div class="figs wide">' + "".join(f"<figure>{x}</figure>" for x in figs)
               + "</div>")
    return "".join(out)


def _assign(a: Any) -> str:
    if isinstance(a, dict):
        return ", ".join(f"{k}={v}" for k, v in a.items())
    return str(a)


def section_kernels(d: dict[str, Any]) -> str:
    from memfail.report.html.collect import profile_changes

    k = d["kernels"]
    pols = k["policies"]
    profs = list(k["by_profile"])
    rows = []
    for p in pols:
        row = [e(p)]
        prev = None
        for prof in profs:
            got = k["by_profile"][prof]
            if "error" in got:
                row.append(f'<span class="note">could not run: {e(got["error"])}</span>')
                prev = None
                continue
            v = got["verdicts"][p]
            un = v.get("unavailable") or 0
            if un and not v["scenarios"]:
                row.append(f'<span class="note">not run: all {un} scenarios use what '
                           f"{e(prof)} lacks</span>")
                prev = None
                continue
            haz = sum(v["by_class"]["hazard"].values())
            txt = f"{v['ok']}/{v['scenarios']} ok; {haz} hazard findings"
            changed = prev is not None and prev != txt
            row.append(f'<span class="{"changed" if changed else ""}">{e(txt)}</span>'
                       + (f' <span class="note">({un} not run)</span>' if un else ""))
            prev = txt
        rows.append(row)
    out = ["<p>Each policy's comparison verdict under every kernel profile "
           "(the command of each column is in the <a href=\"#manifest\">manifest</a>: "
           "<code>memfail compare --profile P --no-readings --json</code>); a changed cell is "
           "marked. A scenario that uses what a profile lacks (a feature merged in a later "
           "kernel) is not run on it (compare's <code>n/a</code>) and is left out of that "
           "column's totals and of every count of changes. What changes between two kernels: "
           "<code>memfail profiles --diff A B</code>.</p>",
           _table(["policy", *map(e, profs)], rows, "kernels wide",
                  "Scenarios without hazard, kill or pause; hazard findings")]
    why: dict[str, list[str]] = {}
    for prof in profs:
        for scen in k["by_profile"][prof].get("unavailable") or {}:
            why.setdefault(scen, []).append(prof)
    if why:
        first = {scen: k["by_profile"][ps[0]]["unavailable"][scen]
                 for scen, ps in why.items()}
        out.append("<details><summary>Scenarios not run on some profiles "
                   f"({len(why)})</summary><ul>"
                   + "".join(f"<li><code>{e(scen)}</code> not on {e(', '.join(ps))}: "
                             f"{e(first[scen])}</li>" for scen, ps in why.items())
                   + "</ul></details>")
    # which cells change from one profile to the next, over the cells that ran on both
    diffs = []
    for a, b in itertools.pairwise(profs):
        pc = profile_changes(k["by_profile"][a], k["by_profile"][b])
        if pc.get("why"):
            diffs.append(f"<li><b>{e(a)} → {e(b)}</b>: not compared: {e(pc['why'])}</li>")
            continue
        ch = pc["changed"]
        if not pc["compared"]:
            diffs.append(f"<li><b>{e(a)} → {e(b)}</b>: not compared: no cell ran on both "
                         f"({pc['not_compared']} ran on one of them only)</li>")
            continue
        tail = ""
        if pc["not_compared"]:
            tail = (f"; {pc['not_compared']} cells ran on only one of them and are not "
                    f"counted ({e(', '.join(pc['unavailable']))} "
                    f"{'uses' if len(pc['unavailable']) == 1 else 'use'} what the older "
                    "kernel lacks)")
        diffs.append(f"<li><b>{e(a)} → {e(b)}</b>: {len(ch)} of {pc['compared']} cells "
                     "that ran on both change"
                     + (": " + e("; ".join(ch[:8])) + (" …" if len(ch) > 8 else "") if ch
                        else "") + tail + "</li>")
    out.append(f"<ul>{''.join(diffs)}</ul>")
    sw = d["profiles"]["switches"]
    rows = [[f"<code>{e(s['name'])}</code>", e(s["since"]), e(s["rules"]), e(s["effect"])]
            for s in sw]
    out.append("<details><summary>The behaviour switches (memfail profiles)</summary>"
               + _table(["switch", "since", "rules", "effect"], rows) + "</details>")
    return "".join(out)


def section_fidelity(d: dict[str, Any]) -> str:
    o = d["oracle"]
    out = []
    if o.get("available"):
        rows = [[e(g), str(v["cases"]), str(v["reproduced"])] for g, v in o["groups"].items()]
        out.append(f"<p>The model reproduces <b>{o['reproduced']} of {o['total']}</b> oracle "
                   f"cases under <code>{e(o['root'])}</code> "
                   f"({_cmd(o.get('command') or 'memfail run --quiet tests/oracle/*/*.yaml')}"
                   "; its last line gives the count): public cases from mce-test, LTP, "
                   "kselftests, guest_memfd selftests and documented behaviour, each pinned to "
                   "its kernel profile, every expectation checked.</p>"
                   + _table(["profile", "cases", "reproduced"], rows, "oracle"))
        bad = [c for c in o["cases"] if not c["ok"]]
        if bad:
            out.append("<ul>" + "".join(f"<li>{e(c['case'])}: {e(c['why'])}</li>" for c in bad)
                       + "</ul>")
    else:
        out.append(f'<p class="note">Oracle cases: {e(o.get("why"))}</p>')
    rp = d.get("replay") or {}
    if rp.get("ran"):
        counts = ", ".join(f"{n} {v}" for v, n in rp["counts"].items())
        rows = [[e(x["incident"]), e(x["source"]), e(x["verdict"]), e(x.get("reason") or "")]
                for x in rp["incidents"]]
        out.append(f"<p>Real RAS logs: {_cmd(rp['command'])} replays each failed page of the "
                   f"shipped logs under the log's kernel: {e(counts)}.</p>"
                   "<details><summary>Every incident</summary>"
                   + _table(["incident", "log", "verdict", "why"], rows) + "</details>")
    elif rp:
        out.append(f'<p class="note">Real RAS logs (memfail replay): {e(rp.get("why"))}.</p>')
    c = d["conform"]
    if c.get("ran"):
        doc = c["doc"]
        counts = ", ".join(f"{n} {s}" for s, n in c["counts"].items())
        out.append(f"<p>Against a real kernel: {_cmd(c['command'])} booted "
                   f"<code>{e(doc.get('kernel'))}</code> under QEMU and compared it with the "
                   f"model's <code>{e(doc.get('profile'))}</code> predictions: {e(counts)}"
                   f" ({doc.get('seconds', {}).get('total', '?')} s).</p>")
        rows = [[e(x.get("case")), e(x.get("status")), e(x.get("compared", "-"))]
                for x in doc.get("cases", [])]
        out.append("<details><summary>Every case</summary>"
                   + _table(["case", "verdict", "checks"], rows) + "</details>")
    else:
        out.append(f'<p class="note">Real-kernel conformance (memfail conform): not run: '
                   f"{e(c.get('why'))}.</p>")
    return "".join(out)


def _idle(idle: list[dict[str, Any]] | None) -> str:
    """A check result's ``coverage.entries_idle`` (None: not recorded)."""
    if idle is None:
        return "not recorded"
    return e(", ".join(f"events[{x['entry']}] ({x['event']})" for x in idle)) or "none"


def section_bounds(d: dict[str, Any]) -> str:
    chk = d["check"]
    b = chk["bounds"]
    rows = []
    for r in chk["results"]:
        st = {s: sum(1 for v in r["verdicts"].values() if v["status"] == s)
              for s in ("PASS", "FAIL", "PARTIAL")}
        rows.append([e(r["policy"]), f"{r['states']:,}", f"{r['transitions']:,}",
                     str(r["depth"]), "complete" if r["complete"] else
                     f"stopped: {e(r['stop_reason'])}",
                     f"{st['PASS']} pass, {st['FAIL']} fail, {st['PARTIAL']} partial",
                     f"{r['collision_probability']:.1e}",
                     e(", ".join(r["coverage"]["events_never"]) or "none"),
                     "not recorded" if r["coverage"]["hooks_never"] is None else
                     e(", ".join(r["coverage"]["hooks_never"]) or "none"),
                     _idle(r["coverage"].get("entries_idle"))])
    props = sorted({p for r in chk["results"] for p in r["verdicts"]})
    vrows = [[e(p), *(_status(r["verdicts"][p], r["policy"], p) for r in chk["results"])]
             for p in props]
    return (f"<p>Configuration <code>{e(chk['config'])}</code> (check/standard.yaml): depth "
            f"bound {e(b['max_depth'])}, states {e(b['max_states'] or 'unbounded')}, seconds "
            f"{e(b['max_seconds'] or 'unbounded')}; hardware errors per path "
            f"{e(b.get('errors'))}. A PARTIAL verdict holds up to the bound only.</p>"
            + _table(["property", *(e(r["policy"]) for r in chk["results"])], vrows,
                     "checkv wide", "Verdict per property and policy")
            + _table(["policy", "states", "transitions", "depth", "search", "verdicts",
                      "fingerprint collision ≤", "events never fired",
                      "policy hooks never fired", "events that never changed anything"],
                     rows, "bounds wide", "Coverage")
            + _spin_bounds(d.get("check_spin") or {"ran": False, "why": "not collected"}))


def _spin_bounds(sp: dict[str, Any]) -> str:
    """SPIN's exhaustive verdicts on the same configuration (``check_spin_doc``)."""
    if not sp.get("ran"):
        return (f'<p class="note">The SPIN engine (<code>memfail check --engine spin</code>): '
                f"not run: {e(sp.get('why'))}.</p>")
    res = sp["results"]

    def cell(v: dict[str, Any]) -> str:
        s = v["status"]
        depth = f"({v['depth']})" if s == "FAIL" else ""
        cls = "ok" if s == "PASS" else "c-hazard" if s == "FAIL" else "partial"
        return f'<span class="{cls}">{e(s)}{e(depth)}</span>'

    props = sorted({p for r in res for p in r["verdicts"]})
    vrows = [[e(p), *(cell(r["verdicts"][p]) for r in res)] for p in props]
    srows = [[e(r["policy"]), f"{r['states']:,}", f"{r['transitions']:,}", str(r["depth"]),
              "complete" if r["complete"] else f"stopped: {e(r['stop_reason'])}"] for r in res]
    skipped = "".join(f"<li>{e(w)}</li>" for w in sp.get("skipped", {}).values())
    return ("<h3>The SPIN engine: the same configuration searched to the end</h3>"
            f"<p>{_cmd(sp['command'])} searches every state of the standard configuration with "
            "no depth bound (exhaustive, breadth-first: a FAIL's depth in parentheses is its "
            "shortest path). A search that completes proves a PASS; every FAIL's trail was "
            "replayed on the Python model, which must violate the same property. "
            "docs/check.md says what the Promela model abstracts and how the two engines' "
            "agreement is tested.</p>"
            + _table(["property", *(e(r["policy"]) for r in res)], vrows, "checkv wide",
                     "SPIN verdict per property and policy")
            + _table(["policy", "states", "transitions", "depth", "search"], srows, "bounds",
                     "SPIN searches")
            + (f"<p>Not checked by SPIN:</p><ul>{skipped}</ul>" if skipped else ""))


def _status(v: dict[str, Any], pol: str, prop: str) -> str:
    s = v["status"]
    if s == "FAIL":
        return f'<a class="c-hazard" href="#{anchor("cex", pol, prop)}">FAIL</a>'
    return f'<span class="{"ok" if s == "PASS" else "partial"}">{e(s)}</span>'


def section_manifest(d: dict[str, Any]) -> str:
    m = d["manifest"]
    cmds = "".join(f"<li>{_cmd(c)}</li>" for c in m["commands"])
    rows = [[e(k), f"<code>{e(v)}</code>"] for k, v in m["inputs"].items()]
    return (f"<p>memfail {e(m['memfail_version'])}, Python {e(m['python'])} on "
            f"{e(m['platform'])}; seed {e(m['seed'])}; "
            f"{'--quick draft' if m['quick'] else 'full runs'}; baseline "
            f"<code>{e(m['baseline'])}</code>; built in {e(m['seconds'])} s by "
            f"{_cmd(m['command'])}.</p><h3>Every command behind a number</h3>"
            f"<ol class=\"cmds\">{cmds}</ol>"
            + _table(["input", "sha256"], rows, "inputs", "Input files")
            + (_table(["stage", "wall seconds", "process"],
                      [[e(st["stage"]), e(st["seconds"]),
                        e("second (single-core stages)" if st.get("process") == "second"
                          else "first")] for st in m["stages"]], "stages",
                      f"Stages (workers {e(m.get('workers', '?'))}; the two processes run "
                      "at the same time)") if m.get("stages") else ""))


# ----------------------------------------------------------------------------- page

CSS = """
:root{--bg:#fff;--fg:#1b1f24;--muted:#57606a;--line:#d0d7de;--panel:#f6f8fa;--hazard:#b42318;
--accepted:#9a6700;--ok:#1a7f37;--bar:#4c72b0;--base:#8250df;--link:#0b5cad;--cell:#eef1f4;
--failed:#d1242f;--cost:#0550ae;--detected:#fb8f44;--hwp:#8250df;--table:#0969da;--low:#9ec5fe;--high:#1f4e99}
@media (prefers-color-scheme:dark){:root{--bg:#0d1117;--fg:#e6edf3;--muted:#9198a1;
--line:#30363d;--panel:#161b22;--hazard:#ff7b72;--accepted:#e3b341;--ok:#3fb950;--bar:#6e9fff;
--base:#bc8cff;--link:#6cb6ff;--cell:#21262d;--failed:#f85149;--cost:#79c0ff;--detected:#db6d28;--hwp:#a371f7;
--table:#58a6ff;--low:#388bfd;--high:#a5d6ff}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.5 system-ui,-apple-system,
"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif}
main{max-width:1240px;margin:0 auto;padding:16px 20px 60px}
h1{font-size:1.6em;margin:.4em 0}h2{font-size:1.3em;border-bottom:1px solid var(--line);
padding-bottom:.2em;margin-top:2em}h3{font-size:1.08em;margin-top:1.4em}
a{color:var(--link)}code{font:13px/1.4 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;
background:var(--panel);padding:0 .25em;border-radius:3px;overflow-wrap:anywhere}
nav.toc{font-size:.92em;line-height:1.9}nav.toc a{white-space:nowrap}
.scroll{overflow-x:auto;max-width:100%;margin:.6em 0}
table{border-collapse:collapse;font-size:13px}caption{text-align:left;font-weight:600;
padding:.3em 0;color:var(--muted)}th,td{border:1px solid var(--line);padding:3px 6px;
vertical-align:top;text-align:left}thead th{background:var(--panel);position:sticky;top:0}
table.wide{min-width:100%}
.banner{border:1px solid var(--accepted);border-left:6px solid var(--accepted);
background:var(--panel);padding:6px 14px;margin:1em 0}
.v-hazard,.c-hazard{color:var(--hazard);font-weight:600}.v-accepted,.c-accepted{
color:var(--accepted);font-weight:600}.v-notfound,.ok{color:var(--ok)}.partial{color:var(--muted)}
.c-cost,.c-info{color:var(--fg)}.v-cost{color:var(--cost);font-weight:600}
.words,.count,.dep,.note,.ci{color:var(--muted);font-size:.9em}.dep{font-style:italic}
.mech{font-size:.88em}.links a{font-size:.88em;margin-right:.4em}
.same{color:var(--muted)}.na{color:var(--muted)}.changed{font-weight:700;color:var(--accepted)}
.fail{color:var(--hazard);font-weight:600}.cmd{display:inline-block}
.figs{display:grid;grid-template-columns:repeat(auto-fill,minmax(440px,1fr));gap:10px}
.figs.wide{grid-template-columns:repeat(auto-fill,minmax(620px,1fr))}
figure{margin:0;overflow-x:auto}svg.fig{max-width:100%;height:auto;font-family:inherit}
svg.lanes,svg.folio{max-width:none}
svg text{fill:var(--fg);font-size:11px}svg .t{font-weight:600;font-size:12px}
svg .ax,svg .val{fill:var(--muted);font-size:10px}svg .bar{fill:var(--bar)}
svg .bar.base{fill:var(--base)}svg .whisk,svg .axis{stroke:var(--fg);stroke-width:1.2}
svg .never{fill:none;stroke:var(--muted);stroke-width:1.5}svg .tlow{fill:var(--low)}
svg .thigh{fill:var(--high)}svg .band{fill:var(--muted);fill-opacity:.22}svg .col{fill:none;stroke:var(--line)}
svg .colfail{fill:none;stroke:var(--hazard);stroke-width:2.5}svg .lane{stroke:var(--line)}
svg .lanename{font-weight:600;fill:var(--muted)}svg .step{font-weight:700}
svg .ev{font-size:10.5px}svg .ev.bad{fill:var(--hazard);font-weight:600}
svg .cell{fill:var(--cell);stroke:var(--muted);stroke-width:1}
svg .cell.split{stroke-dasharray:3 2}svg .cell.detected{fill:var(--detected)}
svg .cell.failed{fill:var(--failed)}svg .cell.hwp{stroke:var(--hwp);stroke-width:4}
svg .cell.table{fill-opacity:1}svg .tmark{fill:var(--table)}
svg .dmark{fill:var(--detected);stroke:var(--bg)}svg .huge{fill:none;stroke:var(--fg);stroke-width:1.5}svg .mark{font-weight:700;font-size:11px}
article.cex{border-top:1px dashed var(--line);padding-top:.4em}
header .meta{color:var(--muted);font-size:.92em}
@media (max-width:700px){main{padding:10px}body{font-size:14px}
.figs,.figs.wide{grid-template-columns:1fr}table{font-size:12px}}
@media print{body{background:#fff;color:#000;font-size:10pt}main{max-width:none;padding:0}
.scroll{overflow:visible}a{color:#000}h2{break-before:page}article.cex,figure{
break-inside:avoid}details{display:block}details>*{display:block}
details::details-content{content-visibility:visible;display:contents}
thead th{position:static}table,table.wide{width:100%;min-width:0;font-size:7pt}
th,td{padding:1px 3px;overflow-wrap:anywhere}code{font-size:7pt}
svg.fig,svg.lanes,svg.folio{max-width:100%;height:auto}
.figs,.figs.wide{grid-template-columns:1fr}}
"""


def render(d: dict[str, Any]) -> str:
    """The whole page."""
    rv = risk_verdicts(d)
    body = {"minimum": section_minimum(d), "risk": section_risk(d, rv),
            "compare": section_compare(d), "timelines": section_timelines(d),
            "fleet": section_fleet(d), "kernels": section_kernels(d),
            "fidelity": section_fidelity(d), "bounds": section_bounds(d),
            "manifest": section_manifest(d)}
    titles = dict(SECTIONS)
    titles["compare"] = f"Differences from the baseline ({d['baseline']})"
    toc = "".join(f'<li><a href="#{k}">{e(titles[k])}</a></li>' for k, _ in SECTIONS)
    m = d["manifest"]
    summary = _summary(d, rv)
    secs = "".join(f'<section id="{k}"><h2>{e(titles[k])}</h2>{body[k]}</section>'
                   for k, _ in SECTIONS)
    data = json.dumps({k: v for k, v in d.items() if k != "counterexamples"},
                      separators=(",", ":"), default=str).replace("</", "<\\/")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<meta name=\"color-scheme\" content=\"light dark\">"
            f"<title>memfail report: minimum memory-failure support for guest_memfd/HugeTLB"
            f"</title><style>{CSS}</style></head><body><main>"
            "<header><h1>Minimum Support for Memory Failure Handling to land "
            "guest_memfd/HugeTLB</h1>"
            f"<p class=\"meta\">memfail {e(m['memfail_version'])} report for the 2025-07-24 "
            f"guest_memfd call; {'a --quick draft' if d['quick'] else 'full runs'}; seed "
            f"{e(m['seed'])}; baseline <code>{e(d['baseline'])}</code>. Every number comes "
            "from a memfail command listed in the <a href=\"#manifest\">reproduction "
            "manifest</a>; the outcomes are the model's, except the fleet's failure classes "
            "the model has no action for, whose host panic is fixed by a cited rule (R47, "
            f"<a href=\"#fleet\">fleet</a>).</p>{summary}<nav class=\"toc\" aria-label=\"sections\"><ol>{toc}"
            f"</ol></nav></header>{secs}"
            f"<script type=\"application/json\" id=\"memfail-data\">{data}</script>"
            "</main></body></html>\n")


def _summary(d: dict[str, Any], rv: dict[str, dict[str, dict[str, Any]]]) -> str:
    """One line per policy: how many of the call's risks are hazards / accepted."""
    items = []
    for pol in d["compare"]["policies"]:
        vs = [rv[r["id"]][pol]["verdict"] for r in RISKS]
        def n(word: str, k: int) -> str:
            return f"{k} {word}{'' if k == 1 else 's'}"

        items.append(f"<li><a href=\"#{anchor('policy', pol)}\"><code>{e(pol)}</code></a>: "
                     f"<span class=\"v-hazard\">{n('hazard', vs.count('hazard'))}</span>, "
                     f"<span class=\"v-cost\">{n('cost', vs.count('cost'))}</span>, "
                     f"<span class=\"v-accepted\">{vs.count('accepted')} accepted</span>, "
                     f"<span class=\"v-notfound\">{vs.count('not found')} not found</span> of "
                     f"the call's {len(RISKS)} risks and limitations "
                     "(<a href=\"#risk\">evidence</a>)</li>")
    return f"<ul class=\"summary\">{''.join(items)}</ul>"
