"""memfail report without the long runs: its bad-input contract, the search section from a
hand-made memfail.search/1 document, the calibration line, the risk verdicts and the figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from memfail.cli import main
from memfail.report.html import page, svg
from memfail.report.html.collect import CITED_UE, calibration, load_search
from memfail.report.html.ranges import all_ranges
from test_search import SMALL, TINY

# A memfail.search/1 document in the command's shape (memfail.search.report.build), cut down
# by hand so that every part the page renders has something in it, the Pareto front included.
_MIN = {"handles": "hugetlb", "record": "table", "mark_on_release": True,
        "mark_on_truncate": False, "isolate_on_free": True, "propagate_on_split": False,
        "unmap_host": "none", "check_granularity": "folio", "consumed": "sigbus-current",
        "sigbus_addr": "hva", "vm_on_error": "none", "mf_delayed_fix": True, "backing": "gmem",
        "unmap_stage2": "none", "fault_check": False, "unconsumed": "defer",
        "honor_early": False}
SEARCH: dict[str, Any] = {
    "schema": "memfail.search/1",
    "config": {"check_config": "standard", "depth": 3, "max_states": None,
               "verdict": "a property is kept when no counterexample exists up to the depth",
               "base": "minimum", "varied": ["unmap_stage2", "fault_check"],
               "fixed": {}, "fleet": {"host_years": 6400, "seed": 0}},
    "properties": [{"id": "no-host-panic", "doc": "...", "sets": ["no host panic"]},
                   {"id": "contained", "doc": "...", "sets": ["contained after consumption"]}],
    "space": {"raw": 1536, "combinations": 1024,
              "excluded": {"early-without-ao-signal": {"count": 512, "reason": "no AO"}},
              "groups": 40, "checked": 31, "inferred": 9, "verified_sample": 3,
              "verified_agree": 3, "verified": []},
    "minimal": [{"knobs": {**_MIN, "unmap_stage2": "subpage", "fault_check": True},
                 "cost": 15.0, "keeps": ["no-host-panic", "contained"], "how": "checked",
                 "closest_preset": "minimum",
                 "diff": {"unmap_stage2": "subpage", "fault_check": True}}],
    "pareto": [{"name": "policy-1", "preset": None, "cost": 15.0,
                "knobs": {**_MIN, "unmap_stage2": "subpage", "fault_check": True},
                "fleet": {"vm_killed": {"per_host_year": 0.12, "low": 0.1, "high": 0.14}}}],
    "presets": [{"name": "minimum", "cost": 12.0, "keeps": ["no-host-panic"],
                 "minimal": False, "cheaper": None, "cheaper_cost": None,
                 "loses": "contained", "loses_all": ["contained"],
                 "counterexample": "memfail check --policy minimum --property contained "
                                   "--max-depth 3 --out cex/"},
                {"name": "unmap", "cost": 16.0, "keeps": ["no-host-panic", "contained"],
                 "minimal": True, "cheaper": None, "cheaper_cost": None, "loses": None,
                 "loses_all": [], "counterexample": None}],
    "answers": [{"property_set": "no host panic", "properties": ["no-host-panic"],
                 "policy": {**_MIN, "fault_check": True}, "cost": 13.0, "unknown_cheaper": 0,
                 "breaks": [], "closest_preset": "minimum"}],
}

def real_search(where: Path) -> Path:
    """``memfail search --config tiny.yaml ... --json > search.json`` in ``where``: the
    one-VM configuration and small options of tests/test_search.py (about six seconds)."""
    import contextlib
    import io
    import os

    (where / "tiny.yaml").write_text(TINY)
    buf = io.StringIO()
    old = Path.cwd()
    os.chdir(where)
    try:
        with contextlib.redirect_stdout(buf):
            rc = main(["search", "--config", "tiny.yaml", *SMALL, "--json"])
    finally:
        os.chdir(old)
    assert rc == 0
    out = where / "search.json"
    out.write_text(buf.getvalue())
    return out


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, needle", [
    (["--baseline", "minimun"], "--baseline: unknown policy 'minimun' (did you mean 'minimum'?)"),
    (["--seed", "-1"], "--seed: must be 0 or more"),
    (["--out", "."], "--out: . is a directory"),
    (["--out", "no/such/dir/r.html"], "--out: no/such/dir: no such directory"),
])
def test_bad_option_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch, args: list[str],
                                           needle: str) -> None:
    monkeypatch.chdir(tmp_path)
    rc, _, err = run(capsys, "report", "--quick", *args)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("memfail: error: ")
    assert needle in err
    assert not (tmp_path / "report.html").exists()


def test_search_json_of_another_schema_is_refused_before_any_work(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    f = tmp_path / "s.json"
    f.write_text(json.dumps({**SEARCH, "schema": "memfail.check/1"}))
    rc, _, err = run(capsys, "report", "--quick", "--out", str(tmp_path / "r.html"),
                     "--search-json", str(f))
    assert rc == 2
    assert err == (f"memfail: error: {f}:1: schema: expected 'memfail.search/1', got "
                   "'memfail.check/1'\n")
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("key", ["presets", "answers", "space", "config"])
def test_search_json_missing_a_part_is_refused(capsys: pytest.CaptureFixture[str],
                                               tmp_path: Path, key: str) -> None:
    """A document without one of the parts the page shows is not a search's output: refused,
    naming the part, instead of a section that silently lacks it."""
    f = tmp_path / "s.json"
    f.write_text(json.dumps({k: v for k, v in SEARCH.items() if k != key}))
    rc, _, err = run(capsys, "report", "--quick", "--out", str(tmp_path / "r.html"),
                     "--search-json", str(f))
    assert rc == 2
    assert err.startswith(f"memfail: error: {f}:1: {key}: missing")
    assert not (tmp_path / "r.html").exists()


def test_search_json_that_is_not_json_names_the_line(capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    f = tmp_path / "s.json"
    f.write_text('{\n  "schema": "memfail.search/1",\n  oops\n}\n')
    rc, _, err = run(capsys, "report", "--quick", "--search-json", str(f))
    assert rc == 2
    assert err.startswith(f"memfail: error: {f}:3: --search-json: not JSON")


def test_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(capsys, "report", "--help")
    assert rc == 0
    assert "memfail report --quick --out draft.html" in out
    assert "--search-json" in out and "--baseline" in out


# ----------------------------------------------------------------------------- search


def test_search_section_renders_every_part_of_the_document(tmp_path: Path) -> None:
    f = tmp_path / "s.json"
    f.write_text(json.dumps(SEARCH))
    html = page.section_search(load_search(f), str(f))
    assert 'id="search"' in html
    for cls in ("search-minimal", "search-presets", "search-answers", "search-pareto"):
        assert f'{cls}"' in html  # the table's class
    # a policy is written as the knobs that differ from the search's base preset
    assert "<code>unmap_stage2=subpage</code> <code>fault_check=true</code>" in html
    assert "<code>handles=" not in html
    assert "memfail check --policy minimum --property contained --max-depth 3" in html
    assert "raw 1536; combinations 1024" in html and "excluded 512 (early-without-ao" in html
    assert "properties kept: no-host-panic, contained." in html
    assert "vm_killed 0.12 [0.1, 0.14]" in html and "6,400 host-years" in html
    assert "no host panic: the smallest policy found on the check configuration costs 13: " \
        "minimum with fault_check=true" in html  # the command's own answer sentence


def _rows(html: str, cls: str) -> list[str]:
    """The text of each body row of the table of class ``cls``."""
    import re

    m = re.search(rf'<table class="[^"]*\b{cls}\b[^"]*">.*?<tbody>(.*?)</tbody>', html, re.S)
    assert m is not None, cls
    return [re.sub(r"<[^>]+>", " ", r) for r in re.findall(r"<tr>(.*?)</tr>", m.group(1))]


def test_search_section_shows_the_minimal_policies_and_answers_of_a_real_search(
        tmp_path: Path) -> None:
    """``memfail search --json`` on a small configuration, given to the page: every minimal
    policy and every answer of the document appears with its cost and its knobs."""
    from memfail.model.policy.registry import PRESETS
    from memfail.search.space import value_text

    path = real_search(tmp_path)
    doc = json.loads(path.read_text())
    assert doc["minimal"] and doc["answers"]  # the small search still finds answers
    html = page.section_search(load_search(path), "search.json")
    base = PRESETS[doc["config"]["base"]].knobs()

    def differing(knobs: dict[str, Any]) -> list[str]:
        return [f"{k}={value_text(v)}" for k, v in knobs.items() if base[k] != v]

    rows = _rows(html, "search-minimal")
    assert len(rows) == len(doc["minimal"])
    for row, m in zip(rows, doc["minimal"], strict=True):
        cells = row.split()
        assert f"{m['cost']:g}" in cells and m["closest_preset"] in cells
        assert sorted(c for c in cells if "=" in c) == sorted(
            differing(m["knobs"]) + [f"{k}={value_text(v)}" for k, v in m["diff"].items()])
    rows = _rows(html, "search-answers")
    assert len(rows) == len(doc["answers"])
    for row, a in zip(rows, doc["answers"], strict=True):
        assert a["property_set"] in row and f" {a['cost']:g} " in row
        assert sorted(c for c in row.split() if "=" in c) == sorted(differing(a["policy"]))
    for p in doc["presets"]:
        assert f"<th scope=\"row\">{p['name']}</th><td>{p['cost']:g}</td>" in html


def test_search_section_names_both_configurations_and_where_verdicts_differ() -> None:
    """The search checks its own configuration, the page's check section the standard one:
    the section names both and every preset property whose verdict differs (here unmap keeps
    contained in the search and fails it in the check; minimum loses it in both)."""
    check = {"config": "standard", "file": None, "results": [
        {"policy": "minimum", "depth": 5,
         "verdicts": {"contained": {"status": "FAIL", "depth": 2},
                      "no-host-panic": {"status": "PASS", "depth": 5}}},
        {"policy": "unmap", "depth": 5,
         "verdicts": {"contained": {"status": "FAIL", "depth": 4},
                      "no-host-panic": {"status": "PARTIAL", "depth": 5}}}]}
    doc = {**SEARCH, "config": {**SEARCH["config"],
                                "check_config": "src/memfail/search/config.yaml"}}
    html = page.section_search(doc, "s.json", check)
    assert "The search checked <code>src/memfail/search/config.yaml</code> to depth 3" in html
    assert "the check section checked the standard configuration " \
        "(<code>src/memfail/check/standard.yaml</code>)" in html
    assert "<code>unmap</code> contained: kept by the search, FAIL in the check at depth 4" \
        in html
    assert "<code>minimum</code> contained" not in html   # lost in both: no difference
    assert "no-host-panic" not in html.split("search-vs-check")[1].split("</p>")[0]
    agree = {"config": "standard", "file": None, "results": [
        {"policy": "unmap", "depth": 5, "verdicts": {"contained": {"status": "PASS"}}}]}
    assert "Their verdicts on the presets agree." in page.section_search(doc, "s.json", agree)


def test_without_search_the_section_says_how_to_get_one() -> None:
    html = page.section_search(None, None)
    assert "--search-json FILE" in html and "memfail search" in html


# ----------------------------------------------------------------------------- calibration


def _run_doc(**extra: Any) -> dict[str, Any]:
    return {"p_any_fault": 0.0078, "faults_per_host_year": {"estimate": 0.0131}, **extra}


def test_calibration_is_computed_from_the_fleet_when_it_has_none() -> None:
    c = calibration(_run_doc())
    assert c["p_host_ue_per_year"] == 0.0078 and c["cited"] == CITED_UE == 0.013
    assert c["from"] == "report"
    assert "1.3 %" in c["cited_source"] and "0.78%" in c["explanation"]
    # the mean rate at which the default fleet's share of hosts with a fault is 1.3 %
    from memfail.fleet.calibration import p_any_ue
    from memfail.fleet.params import load_fleet

    fr = load_fleet(None).params.frailty
    assert abs(p_any_ue(c["rate_matching_cited"], fr.distribution, fr.mean_over_median)
               - 0.013) < 1e-6
    assert f"{c['rate_matching_cited']:.4f} per host-year" in c["explanation"]


def test_calibration_of_the_fleet_document_wins() -> None:
    own = {"p_host_ue_per_year": 0.0129, "cited": 0.013, "cited_source": "Schroeder 2009",
           "explanation": "rate solved for P(>=1)"}
    c = calibration(_run_doc(calibration=own))
    assert c["p_host_ue_per_year"] == 0.0129 and c["from"] == "fleet"
    assert c["explanation"] == "rate solved for P(>=1)"


def test_every_sensitivity_range_is_a_valid_fleet() -> None:
    from memfail.fleet.params import load_fleet, with_assignments

    base = load_fleet(None)
    for r in all_ranges():
        for end in (r.low, r.high):
            with_assignments(base, end)  # raises FleetInputError if not a valid fleet
        assert r.why and r.default


# ----------------------------------------------------------------------------- verdicts


def _cell(scen: str, pol: str, **outcomes: Any) -> dict[str, Any]:
    return {"scenario": scen, "policy": pol, "applies": True, "summary": "x", "code": "x",
            "outcomes": outcomes}


def _data(cells: list[dict[str, Any]], verdicts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    pols = sorted({c["policy"] for c in cells})
    return {"compare": {"policies": pols, "cells": cells,
                        "readings_that_change_cells": {
                            "minimum": {"sigbus_addr=none": ["vm-a: R -> K"]}}},
            "check": {"results": [{"policy": p, "verdicts": verdicts.get(p, {})}
                                  for p in pols]}}


def test_risk_verdicts_keep_hazards_costs_and_accepted_limitations_apart() -> None:
    cells = [
        _cell("vm-a", "minimum", repeated_consumptions=2,
              classes={"repeated_consumptions": "hazard"}),
        _cell("vm-a", "kill-vm", vms_killed=1, classes={"vms_killed": "cost"}),
        _cell("vm-a", "mainline"),
        _cell("vm-b", "minimum", early_not_told=1, classes={"early_not_told": "accepted"}),
        _cell("vm-b", "kill-vm"), _cell("vm-b", "mainline"),
    ]
    fail = {"status": "FAIL", "message": "poison consumed again"}
    rv = page.risk_verdicts(_data(cells, {"mainline": {"contained": fail}}))
    mapped = rv["risk-mapped"]
    assert mapped["minimum"]["verdict"] == "hazard"
    assert mapped["minimum"]["links"][0] == ("#cell-vm-a-minimum", "vm-a")
    assert mapped["minimum"]["depends"] == ["sigbus_addr=none"]  # R disappears under it
    assert mapped["mainline"]["verdict"] == "hazard"  # the checker's counterexample
    assert mapped["mainline"]["links"] == [("#cex-mainline-contained",
                                            "contained counterexample")]
    assert mapped["kill-vm"]["verdict"] == "not found"
    assert rv["risk-coco"]["kill-vm"]["verdict"] == "not found"  # vm-a is not confidential
    assert rv["risk-early"]["minimum"]["verdict"] == "accepted"  # honor_early: false (C6)
    assert rv["risk-early"]["mainline"]["verdict"] == "not found"


def test_a_check_failure_the_policy_accepts_is_an_accepted_limitation() -> None:
    cells = [_cell("vm-a", "minimum"), _cell("vm-a", "future")]
    fail = {"status": "FAIL", "message": "EARLY thread not told"}
    rv = page.risk_verdicts(_data(cells, {"minimum": {"early-told": fail},
                                          "future": {"early-told": fail}}))
    assert rv["risk-early"]["minimum"]["verdict"] == "accepted"   # C6 by design
    assert rv["risk-early"]["future"]["verdict"] == "hazard"      # future honours EARLY


# ----------------------------------------------------------------------------- figures


def _page(pfn: int, **kw: Any) -> dict[str, Any]:
    p = {"pfn": pfn, "failed": False, "detected": False, "hwpoison": False,
         "folio_hwpoison": False, "table": False, "where": "folio", "order": 2, "stage2": [],
         "host": [], "hwpoison_entry": []}
    p.update(kw)
    return p


def test_folio_map_draws_every_page_of_every_state() -> None:
    before = [_page(0x100000 + i, stage2=["vm0"]) for i in range(4)]
    after = [_page(0x100000, failed=True, detected=True, table=True, stage2=["vm0"]),
             *[_page(0x100001 + i, where="page", order=0) for i in range(3)]]
    cex = {"policy": "minimum", "property": "contained", "folio": [before, after],
           "steps": [{"label": "hw_error(vm=vm0, page=0)", "lanes": {}}]}
    out = svg.folio_map(cex)
    assert out.count('class="cell') == 8
    assert out.count("cell failed table") == 1
    assert out.count('class="dmark"') == 1  # reported to memory_failure()
    assert out.count(" split") == 3        # split (4 KiB) pages after the step
    assert out.count('class="huge"') == 1  # the first state is one huge folio
    assert "after step 1: hw_error(vm=vm0, page=0)" in out


def test_swimlane_has_every_lane_and_marks_the_failing_step() -> None:
    cex = {"policy": "unmap", "property": "no-host-panic",
           "steps": [{"label": "hw_error(vm=vm0)", "lanes": {}},
                     {"label": "kernel_access(user=kcore)",
                      "lanes": {"cpu": ["panic reason=Fatal machine check"]}}]}
    out = svg.swimlane(cex)
    for lane in ("CPU / machine check", "memory_failure", "KVM stage 2", "host page tables",
                 "VMM threads", "guest"):
        assert lane in out
    assert out.count('class="colfail"') == 1
    assert "step 2 — no-host-panic fails" in out
    assert 'class="ev bad"' in out


def test_tornado_puts_the_widest_swing_first() -> None:
    out = svg.tornado("minimum: vm killed", 1.0, [("small", 0.9, 1.1), ("big", 0.1, 5.0)],
                      "per M VM-h")
    assert out.index(">big<") < out.index(">small<")
    assert 'class="band"' not in out
    banded = svg.tornado("minimum: vm killed", 1.0, [("small", 0.9, 1.1)], "per M VM-h",
                         (0.8, 1.3))
    assert banded.count('class="band"') == 1
    assert "the default's 95 % interval: 0.8 to 1.3 per M VM-h" in banded


def test_fidelity_section_shows_conform_counts_and_cases() -> None:
    d = {"oracle": {"available": False, "why": "tests/oracle is not in this installation"},
         "replay": {"ran": False, "why": "tests/replay is not in this installation"},
         "conform": {"ran": True, "counts": {"agree": 41, "not expressible": 3},
                     "command": "memfail conform tests/oracle/linux-6.1/*.yaml --json",
                     "doc": {"kernel": "debian-6.1", "profile": "linux-6.1",
                             "seconds": {"total": 115.0},
                             "cases": [{"case": "doc-14-madvise-ar", "status": "agree",
                                        "compared": 9}]}}}
    html = page.section_fidelity(d)
    assert "41 agree, 3 not expressible" in html and "(115.0 s)" in html
    assert "<th scope=\"row\">doc-14-madvise-ar</th><td>agree</td><td>9</td>" in html
    assert "tests/oracle is not in this installation" in html


def test_spin_verdicts_are_the_commands_own_and_drawn_beside_the_bounds(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The full report's SPIN stage is `memfail check --engine spin --json`: the section shows
    each policy's verdict (a FAIL with its depth), its states and whether the search
    completed, the presets SPIN does not render with the reason, and the command. Run on a
    small configuration both engines agree on, so the test stays cheap."""
    from memfail.check import config as check_config
    from memfail.check.spin import AGREE_CONFIG, promela
    from memfail.report.html.collect import check_spin_doc

    small = check_config.load_config(AGREE_CONFIG)
    small = small.model_copy(update={"policies": [*small.policies[:2], "hugetlbfs"]})
    monkeypatch.setattr(check_config, "standard_config", lambda: small)
    # every preset is rendered now: hugetlbfs stands in for a policy SPIN refuses
    real = promela.policy_refusal
    monkeypatch.setattr(promela, "policy_refusal", lambda spec: (
        "policy 'hugetlbfs': backing: hugetlbfs is not modelled" if spec == "hugetlbfs"
        else real(spec)))
    sp = check_spin_doc()
    assert sp["ran"] and list(sp["skipped"]) == ["hugetlbfs"]
    assert [r["policy"] for r in sp["results"]] == small.policies[:2]
    html = page.section_bounds({"check": {**sp, "bounds": {"max_depth": 3, "max_states": None,
                                                           "max_seconds": None}},
                                "check_spin": sp})
    spin = html[html.index("The SPIN engine"):]
    assert "memfail check --engine spin --json" in spin
    assert "backing: hugetlbfs is not modelled" in spin
    for r in sp["results"]:
        assert f"{r['states']:,}" in spin
        for v in r["verdicts"].values():
            shown = v["status"] + (f"({v['depth']})" if v["status"] == "FAIL" else "")
            assert shown in spin
    assert all(r["complete"] for r in sp["results"]) and "complete" in spin
    # not run: the page says why instead of a table
    monkeypatch.setattr("shutil.which", lambda _name: None)
    gone = check_spin_doc()
    assert gone == {"ran": False, "why": gone["why"]} and "spin" in gone["why"]
    assert "not run: the SPIN engine needs `spin` and a C compiler" in page.section_bounds(
        {"check": {**sp, "bounds": {"max_depth": 3, "max_states": None, "max_seconds": None}},
         "check_spin": gone})


# ----------------------------------------------------------------------------- kernel versions


def test_compare_shows_a_scenario_the_profile_lacks_as_not_run(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`memfail compare --profile linux-6.12` used to exit 2 on the first scenario that uses
    guest_memfd mmap (merged in v6.18): now that cell is n/a, with why, and left out of the
    totals, while the other scenarios run."""
    rc, out, err = run(capsys, "compare", "--profile", "linux-6.12", "--no-readings",
                       "--policy", "mainline", "--scenario", "vm-shared-host-clean",
                       "--scenario", "vm-hugetlb-reconsume-2m", "--json")
    assert rc == 0, err
    doc = json.loads(out)
    by = {c["scenario"]: c for c in doc["cells"]}
    gone = by["vm-shared-host-clean"]
    assert gone["code"] == "n/a" and not gone["applies"]
    assert "is not in linux-6.12" in gone["unavailable"] and "v6.18" in gone["unavailable"]
    assert by["vm-hugetlb-reconsume-2m"]["code"] == "K"   # R39/R82 before v6.18
    v = doc["verdicts"]["mainline"]
    assert v["scenarios"] == 1 and v["unavailable"] == 1
    rc, out, _ = run(capsys, "compare", "--profile", "linux-6.12", "--no-readings",
                     "--policy", "mainline", "--scenario", "vm-shared-host-clean")
    assert rc == 0 and "Not run on this kernel profile" in out and "v6.18" in out
    # without --profile each scenario runs on its own kernel: nothing is n/a
    rc, out, _ = run(capsys, "compare", "--no-readings", "--policy", "mainline",
                     "--scenario", "vm-shared-host-clean", "--json")
    assert rc == 0 and "unavailable" not in json.loads(out)["cells"][0]


def _profile(codes: dict[str, str], unavailable: dict[str, str] | None = None,
             ok: int = 1) -> dict[str, Any]:
    return {"command": "memfail compare --profile P --no-readings --json",
            "verdicts": {"mainline": {"ok": ok, "scenarios": len(codes),
                                      "unavailable": len(unavailable or {}),
                                      "by_class": {"hazard": {}}}},
            "codes": codes, "unavailable": unavailable or {}}


def test_cells_that_did_not_run_never_count_as_no_change() -> None:
    why = "guest_memfd is not in linux-6.1: it was merged in v6.8 (...)"
    by = {"linux-6.1": _profile({}, {"vm-a": why, "vm-b": why}, ok=0),
          "linux-6.6": _profile({}, {"vm-a": why, "vm-b": why}, ok=0),
          "linux-6.12": _profile({"vm-a|mainline": "K"}, {"vm-b": "mmap is not in 6.12"}),
          "linux-6.18": _profile({"vm-a|mainline": "R 2M", "vm-b|mainline": "ok"}),
          "next": {"error": "ScenarioError: broken", "command": "memfail compare ..."}}
    html = page.section_kernels({"kernels": {"policies": ["mainline"], "by_profile": by},
                                 "profiles": {"switches": []}})
    assert "0 cells change" not in html and "0 of 0" not in html
    assert "<b>linux-6.1 → linux-6.6</b>: not compared: no cell ran on both" in html
    assert ("<b>linux-6.12 → linux-6.18</b>: 1 of 1 cells that ran on both change: "
            "vm-a under mainline: K → R 2M; 1 cells ran on only one of them") in html
    assert "<b>linux-6.18 → next</b>: not compared: ScenarioError: broken" in html
    assert "not run: all 2 scenarios use what linux-6.1 lacks" in html
    assert "<code>vm-b</code> not on linux-6.1, linux-6.6, linux-6.12" in html


def test_every_profile_column_has_the_command_that_gives_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    from memfail.report.html.collect import kernel_versions, profile_changes

    kv = kernel_versions(["mainline"], 1)
    for prof, got in kv.items():
        assert got["command"] == (f"memfail compare --profile {prof} --no-readings --json "
                                  "--policy mainline")
        assert "error" not in got, got.get("error")
    rc, out, _ = run(capsys, *kv["linux-6.12"]["command"].split()[1:])
    assert rc == 0
    assert json.loads(out)["verdicts"]["mainline"] == kv["linux-6.12"]["verdicts"]["mainline"]
    ch = profile_changes(kv["linux-6.12"], kv["linux-6.18"])["changed"]
    assert "vm-hugetlb-ao-then-ar-2m under mainline: K → R 2M" in ch
    assert "vm-hugetlb-reconsume-2m under mainline: K → R 2M" in ch


# ----------------------------------------------------------------------------- readings


def test_the_banner_shows_the_reading_each_preset_takes() -> None:
    """A reading equal to the baseline's (sigbus_addr=hva) is still a reading: its value is
    shown for every preset, not dropped as 'no difference'."""
    from memfail.model.policy.base import READINGS
    from memfail.model.policy.registry import PRESETS

    d = {"policies": {n: {"knobs": p.knobs()} for n, p in PRESETS.items()},
         "readings": READINGS, "compare": {"readings_that_change_cells": None,
                                           "policies": list(PRESETS)}}
    html = page.section_readings(d)
    rows = _rows(html, "readings-taken")
    assert len(rows) == len(READINGS)
    for row, k in zip(rows, READINGS, strict=True):
        cells = row.split()
        assert cells[0] == k
        assert cells[1:] == [str(page._v(p.knobs()[k])) for p in PRESETS.values()]
    assert any(r.split()[:3] == ["sigbus_addr", "hva", "hva"] for r in rows)


# ----------------------------------------------------------------------------- manifest


def test_every_drawn_sensitivity_row_has_a_command_and_inert_inputs_are_not_drawn() -> None:
    """The permanent share cannot move a rate (the fleet model gives a transient fault the
    permanent one's outcome): it is listed with why, not drawn as a measured zero swing, and
    every drawn row is one `memfail fleet sweep` axis."""
    from memfail.report.html.ranges import inert_ranges

    for r in all_ranges():
        assert len(r.low) == 1 and list(r.low) == list(r.high), r.name
    names = [r.name for r in all_ranges()]
    inert = inert_ranges()
    assert [r.name for r, _ in inert] == ["permanent share of faults"]
    assert "permanent share of faults" not in names
    assert "same model outcome" in inert[0][1]
    fleet_md = (Path(__file__).parents[1] / "docs" / "fleet.md").read_text()
    assert "Permanent and transient faults give the same model outcome" in fleet_md
    s = {"host_years": 500, "seed": 0, "command": "memfail fleet --json", "policies": [],
         "outcomes": [], "rows": [], "centre": {},
         "not_drawn": [{"name": inert[0][0].name, "default": "0.71", "why": "§2.7",
                        "low_assign": "every faults.modes.* split 0.5 permanent",
                        "high_assign": "every faults.modes.* split 0.9 permanent",
                        "not_drawn": inert[0][1]}]}
    html = page.section_sensitivity(s)
    assert "Not drawn: the fleet model gives a transient fault" in html


def test_the_fidelity_count_is_a_memfail_commands_own(
        capsys: pytest.CaptureFixture[str]) -> None:
    import glob

    from memfail.report.html.collect import oracle_doc, repo_file

    o = oracle_doc()
    assert o["command"] == "memfail run --quiet tests/oracle/*/*.yaml"
    root = repo_file("tests/oracle")
    assert root is not None
    rc, out, _ = run(capsys, "run", "--quiet", *sorted(glob.glob(str(root / "*" / "*.yaml"))))
    failed = o["total"] - o["reproduced"]
    assert rc == (1 if failed else 0)
    assert out.rstrip().splitlines()[-1] == \
        f"{o['total']} scenarios: {o['reproduced']} ok, {failed} failed"
    html = page.section_fidelity({"oracle": o, "conform": {"ran": False, "why": "-"}})
    assert "memfail run --quiet tests/oracle/*/*.yaml" in html


def test_the_page_says_which_fleet_outcomes_a_cited_rule_fixes() -> None:
    f = {"command": "memfail fleet --json",
         "run": {"policies": ["minimum"], "outcomes": ["host_panic"], "host_years": 2000,
                 "seed": 0, "hosts": 10, "vms_per_host": 9.8, "failure_classes": 965,
                 "rates": [{"policy": "minimum", "outcome": "host_panic",
                            "per_million_vm_hours": {"estimate": 0.1, "low": 0.05,
                                                     "high": 0.2}}]},
         "calibration": {"p_host_ue_per_year": 0.013, "cited": 0.013, "explanation": "x"},
         "sensitivity": {"host_years": 500, "seed": 0, "policies": [], "outcomes": [],
                         "rows": [], "centre": {}}}
    html = page.section_fleet({"fleet": f, "baseline": "minimum"})
    assert "every outcome computed by the model" not in html
    assert "fixed by a cited rule (R47" in html
    doc = (Path(__file__).parents[1] / "docs" / "report.md").read_text()
    assert "Every number comes from the model" not in doc
    assert "R47" in doc


def test_the_search_section_shows_what_compare_finds_of_each_answer() -> None:
    ce = {"policy": "minimum{fault_check=true}", "properties": ["no-host-panic"],
          "outcomes": ["host_panic"], "scenarios": 34, "check_only": True,
          "findings": {}, "command": "memfail compare --no-readings --policy x",
          "vs": [{"preset": "unmap", "kept_broken": ["host_panic"],
                  "beyond": {"host_panic": {"code": "P", "class": "hazard",
                                            "scenarios": ["vm-kernel-user-dump"]}}}]}
    doc = {**SEARCH, "minimal": [],
           "answers": [{**SEARCH["answers"][0], "compare": ce}],
           "compare": {"ran": True, "scenarios": 34}}
    html = page.section_search(doc, "s.json")
    row = _rows(html, "search-answers")[0]
    assert "Minimal on the check configuration only" in row
    assert "P in 1 (vm-kernel-user-dump) where unmap does not" in row
    assert "Minimal policies: none found." in html
    bare = page.section_search(SEARCH, "s.json")
    assert "has no <code>compare</code> part" in bare


def test_the_current_limitation_says_its_not_found_is_by_construction() -> None:
    """C3 cannot be found by a measurement: MF_ACTION_REQUIRED comes only from the
    consumer's own task work, so the row says so instead of a bare 'not found'."""
    cells = [_cell("vm-a", "minimum"), _cell("vm-a", "mainline")]
    d = _data(cells, {})
    d["check"]["bounds"] = {"max_depth": 4}
    html = page.section_risk(d, page.risk_verdicts(d))
    row = html.split('id="risk-current"', 1)[1].split("</tr>", 1)[0]
    assert "Not found by construction, not by measurement" in row
    assert "kill_me_maybe" in row and "EARLY thread not told" in row
