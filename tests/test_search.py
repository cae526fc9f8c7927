"""`memfail search` end to end on a small configuration: its claims hold when each combination
is checked on its own, results do not depend on the worker count, bad input exits 2."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from memfail.check.explorer import FAIL
from memfail.model.policy.base import GmemPolicy, knob_values
from memfail.search.engine import check_task
from memfail.search.space import (
    CONSTRAINTS,
    PROPERTY_SETS,
    all_knobs,
    default_properties,
    load_costs,
    make_space,
    value_text,
)

# One VM on one scaled HugeTLB page: an error, its detection, the guest's touch, a release.
TINY = """\
name: tiny
policies: [minimum]
geometry: {pmd_order: 2, pud_order: 3}
host: {memory: 8G, hugepages: {2M: 3}}
processes:
  - name: qemu0
    threads: [main, vcpu0]
    mce_kill: {main: early, vcpu0: late}
    sigbus: handler
guest_memfd:
  - {name: gmem0, size: 2M, backing: 2M, flags: [mmap, init_shared]}
vms:
  - {name: vm0, vmm: qemu0, gmem: gmem0}
events:
  - {event: hw_error, vm: vm0, page: 0, detect: [latent, scrub]}
  - {event: scrub, vm: vm0, page: 0}
  - {event: vcpu_access, vm: vm0, page: 0}
  - {event: kernel_access, vm: vm0, page: 0, user: [kcore]}
  - {event: release, vm: vm0, limit: 1}
bounds: {depth: 3, errors: 1}
"""
DEPTH = 3
# `record` is varied too: with the table alone (minimum's), the kcore read of the failed page
# panics the host under every combination, and the small search would find no safe one.
SMALL = ["--quick", "--depth", str(DEPTH), "--fleet-host-years", "0",
         "--group-scenario", "vm-hugetlb-consumed-2m", "--group-scenario", "vm-release-2m",
         "--fix", "unmap_host=none", "--vary", "record",
         "--compare-scenario", "vm-hostile-2m", "--compare-scenario", "vm-punch-reuse-2m",
         "--verify", "4"]


def run(*args: str) -> Any:
    from memfail.cli import app, register_all

    register_all(app)
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("search") / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def doc(tiny: Path) -> dict[str, Any]:
    r = run("search", "--config", str(tiny), *SMALL, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def full(doc: dict[str, Any], varied: dict[str, Any]) -> dict[str, Any]:
    fixed = {k: v["value"] for k, v in doc["config"]["fixed"].items()}
    return {**fixed, **varied}


def verdicts(tiny: Path, knobs: dict[str, Any]) -> dict[str, str]:
    spec = {"base": "mainline", **knobs}
    v = check_task((str(tiny), spec, default_properties(), DEPTH, None))
    return {p: s for p, (s, _, _) in v.items()}


# --------------------------------------------------------------------------- the design space


def test_every_knob_value_of_the_model_has_a_cost_and_a_reason() -> None:
    table = load_costs()
    for knob in all_knobs():
        vals = knob_values(knob)
        assert vals is not None
        for v in vals:
            assert table.cost(knob, v) >= 0
            assert table.reason(knob, v).strip()


def test_the_space_is_the_model_knobs_varied_or_fixed_with_a_reason() -> None:
    space = make_space()
    assert sorted(space.varied + list(space.fixed)) == sorted(GmemPolicy("x").knobs())
    assert all(space.fixed_why[k] for k in space.fixed)
    combos, excluded = space.enumerate()
    assert len(combos) + sum(excluded.values()) == space.raw_count()
    assert set(excluded) <= {c.name for c in CONSTRAINTS}


def test_constraints_keep_one_combination_per_irrelevant_knob() -> None:
    space = make_space()
    combos, _ = space.enumerate()
    for k in combos:
        if not k["fault_check"]:
            assert k["check_granularity"] == space.cheapest("check_granularity")
        if k["unconsumed"] not in ("kernel", "notify-vmm"):
            assert k["honor_early"] == space.cheapest("honor_early")


def test_docs_show_the_cost_table() -> None:
    text = (Path(__file__).parents[1] / "docs" / "search.md").read_text()
    for knob, value, cost, _ in load_costs().rows():
        assert f"| `{knob}` | `{value}` | {cost:g} |" in text


# --------------------------------------------------------------------------- the search's claims


def test_document_has_the_schema_and_every_property_set(doc: dict[str, Any]) -> None:
    assert doc["schema"] == "memfail.search/1"
    for key in ("config", "properties", "space", "minimal", "pareto", "presets", "answers"):
        assert key in doc
    assert [a["property_set"] for a in doc["answers"]] == list(PROPERTY_SETS)
    sp = doc["space"]
    hows = [c["how"] for c in doc["combinations"]]
    assert len(hows) == sp["combinations"]
    assert sp["checked"] == hows.count("checked")
    assert sp["inferred"] == hows.count("inferred")
    assert sp["verified_sample"] == len(sp["verified"])
    assert sp["verified_agree"] == sum(v["agree"] for v in sp["verified"])


def test_combinations_called_safe_pass_check_on_their_own(doc: dict[str, Any], tiny: Path
                                                          ) -> None:
    safe = [c for c in doc["combinations"] if c["keeps"]]
    assert safe, "the small search finds no safe combination"
    for c in random.Random(1).sample(safe, min(3, len(safe))):
        got = verdicts(tiny, full(doc, c["knobs"]))
        assert FAIL not in got.values(), (c, got)


def test_minimal_policies_are_safe_and_no_safe_one_is_cheaper_on_every_knob(
        doc: dict[str, Any], tiny: Path) -> None:
    costs = load_costs()
    for m in doc["minimal"]:
        assert FAIL not in verdicts(tiny, m["knobs"]).values()
    for m in doc["minimal"]:
        for c in doc["combinations"]:
            if c["keeps"]:
                k = full(doc, c["knobs"])
                cheaper_everywhere = all(costs.cost(n, k[n]) <= costs.cost(n, m["knobs"][n])
                                         for n in k)
                assert not (cheaper_everywhere and costs.total(k) < m["cost"])


def test_dominated_combinations_fail_or_cost_more(doc: dict[str, Any], tiny: Path) -> None:
    dominated = [c for c in doc["combinations"] if c["how"] == "dominated"]
    inferred = [c for c in doc["combinations"] if c["how"] == "inferred"]
    assert dominated or inferred
    costs = load_costs()
    rng = random.Random(2)
    for c in rng.sample(dominated, min(3, len(dominated))):
        by = full(doc, c["by"])
        assert costs.total(by) < c["cost"]
        assert FAIL not in verdicts(tiny, by).values()  # the cheaper one is safe
    for c in rng.sample(inferred, min(3, len(inferred))):
        got = verdicts(tiny, full(doc, c["knobs"]))
        assert got[c["failed"][0]] == FAIL, (c, got)


def test_presets_not_minimal_name_a_cheaper_policy_or_a_lost_property(
        doc: dict[str, Any], tiny: Path) -> None:
    names = [p["name"] for p in doc["presets"]]
    assert "minimum" in names and "future" in names
    for p in doc["presets"]:
        if p["minimal"]:
            assert p["loses"] is None and p["cheaper"] is None
            continue
        assert p["loses"] or p["cheaper"]
        if p["loses"]:
            assert f"--policy {p['name']} --property {p['loses']}" in p["counterexample"]
            # on the configuration searched, not `memfail check`'s own standard one
            assert p["counterexample"].startswith(f"memfail check {tiny} --policy")
            got = verdicts(tiny, {"base": p["name"]})
            assert got[p["loses"]] == FAIL


def test_answers_name_the_call_items_they_break(doc: dict[str, Any]) -> None:
    for a in doc["answers"]:
        if a["policy"] is None:
            continue
        assert set(a["breaks"]) <= {"C1", "C2", "C3", "C4", "C5", "C6"}
        if a["policy"]["fault_check"]:
            assert "C5" in a["breaks"]
        if a["policy"]["honor_early"]:
            assert "C6" in a["breaks"]


def test_text_output_ends_with_the_answer(tiny: Path) -> None:
    r = run("search", "--config", str(tiny), *SMALL)
    assert r.exit_code == 0, r.output
    tail = r.output[r.output.index("The answer:"):]
    for name in PROPERTY_SETS:
        assert name in tail


# --------------------------------------------------------------------------- workers and bad input


def test_two_workers_give_the_same_json(doc: dict[str, Any], tiny: Path) -> None:
    r = run("search", "--config", str(tiny), *SMALL, "--json", "--workers", "2")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == doc


@pytest.mark.parametrize("args, where", [
    (["--vary", "unmapp"], "--vary: unknown knob 'unmapp'"),
    (["--fix", "fault_check=maybe"], "--fix: fault_check: 'maybe' is not one of"),
    (["--fix", "nonsense"], "--fix:"),
    (["--property", "contianed"], "--property: unknown property 'contianed'"),
    (["--base", "minimun"], "--base: unknown preset 'minimun'"),
    (["--plot", "front.txt"], "--plot:"),
    (["--group-scenario", "nope"], "--group-scenario: unknown scenario"),
])
def test_bad_options_exit_2_with_one_line(args: list[str], where: str) -> None:
    r = run("search", "--quick", *args)
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memfail: error: ")
    assert where in lines[0]


@pytest.mark.parametrize("text, line, field", [
    ("costs:\n  unmap_stage2:\n    folio: {cost: -1, reason: x}\n", 3,
     "costs.unmap_stage2.folio.cost"),
    ("costs:\n  unmap_stag2:\n    folio: {cost: 1, reason: x}\n", 2, "costs.unmap_stag2"),
    ("costs:\n  unmap_stage2:\n    sometimes: {cost: 1, reason: x}\n", 3,
     "costs.unmap_stage2.sometimes"),
    ("costs:\n  fault_check:\n    true: {cost: 1}\n", 3, "costs.fault_check.true.reason"),
    ("cost: {}\n", 1, "cost"),
])
def test_bad_cost_file_exits_2_naming_file_line_field(tmp_path: Path, text: str, line: int,
                                                      field: str) -> None:
    f = tmp_path / "costs.yaml"
    f.write_text(text)
    r = run("search", "--quick", "--costs", str(f))
    assert r.exit_code == 2, r.output
    assert r.output.strip().startswith(f"memfail: error: {f}:{line}: {field}: ")


def test_bad_check_configuration_exits_2(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("policies: [minimum]\nevents:\n  - {event: hw_eror, vm: vm0}\n")
    r = run("search", "--quick", "--config", str(f))
    assert r.exit_code == 2, r.output
    assert r.output.strip().startswith(f"memfail: error: {f}:3: ")
    assert len(r.output.strip().splitlines()) == 1


def test_a_cost_file_changes_the_ranking(tmp_path: Path, tiny: Path) -> None:
    f = tmp_path / "costs.yaml"
    f.write_text("costs:\n  fault_check:\n    true: {cost: 40, reason: a lookup is costly}\n")
    r = run("search", "--config", str(tiny), *SMALL, "--costs", str(f), "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["config"]["costs_overridden"] == ["fault_check=true"]
    costly = [c for c in d["combinations"] if c["knobs"].get("fault_check")]
    assert all(c["cost"] >= 40 for c in costly)


def test_value_text_round_trips() -> None:
    for knob in all_knobs():
        for v in knob_values(knob) or ():
            from memfail.search.space import parse_value

            assert parse_value(knob, value_text(v)) == v


def test_default_configuration_is_named_as_searched() -> None:
    """Without --config the search checks src/memfail/search/config.yaml: the JSON and the
    counterexample commands name that file, never "standard" (the check's own default)."""
    from memfail.search.engine import DEFAULT_CONFIG, config_shown

    shown = config_shown(None)
    assert Path(shown).resolve() == Path(DEFAULT_CONFIG).resolve()
    assert config_shown("my.yaml") == "my.yaml"


def test_a_wrong_grouped_verdict_is_rechecked_and_walked_again(
        tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A verification that finds a grouped verdict wrong makes every member of that trace
    group be checked on its own, and the walk run again: the wrong verdict does not reach
    the answer. Forced here by giving every combination one trace signature (one group)."""
    from memfail.search import engine

    monkeypatch.setattr(engine, "signature_task", lambda args: "one")
    r = run("search", "--config", str(tiny), *SMALL[:-1], "16", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    sp = d["space"]
    assert sp["rewalks"], "one group for every combination: the sample must disagree"
    assert all(rw["checks"] > 0 for rw in sp["rewalks"])
    # a wrong group verdict also feeds wrong inferences: either may be sampled first
    assert any(x["how"] == "group" for rw in sp["rewalks"] for x in rw["distrusted"])
    assert sp["unresolved"] == 0
    assert sp["grouped"] == 0     # the one group is distrusted: each member checked
    for c in d["combinations"]:
        if c["how"] == "checked":
            got = verdicts(tiny, full(d, c["knobs"]))
            assert sorted(p for p, s in got.items() if s == FAIL) == sorted(c["failed"])


def test_released_kernels_cost_nothing() -> None:
    """A cost is machinery beyond released kernels: mainline and the hugetlbfs baseline cost
    0 (their other knobs describe what those kernels do), mf-delayed-fix its one fix, and a
    knob that applies is still counted in full."""
    from memfail.model.policy.registry import PRESETS
    from memfail.search.space import load_costs

    c = load_costs()
    assert c.total(PRESETS["mainline"].knobs()) == 0
    assert c.total(PRESETS["hugetlbfs"].knobs()) == 0
    assert c.total(PRESETS["mf-delayed-fix"].knobs()) == c.cost("mf_delayed_fix", True) > 0
    minimum = PRESETS["minimum"].knobs()
    assert c.total(minimum) == sum(c.cost(k, v) for k, v in minimum.items())


# --------------------------------------------------------------------------- what compare finds


def test_answers_are_run_through_compare_beside_the_presets_keeping_the_same_set() -> None:
    """The check configuration (one error, depth-bounded) cannot see a hostile guest touching
    the poison round after round: an answer that keeps `contained` there is run through the
    comparison scenarios beside the presets that keep it too, and the re-consumption compare
    finds (R) makes it minimal on the check configuration only, in the JSON and in words."""
    from memfail.model.policy.registry import PRESETS
    from memfail.search.crosscheck import annotate
    from memfail.search.engine import Executor
    from memfail.search.report import words

    pol = {**PRESETS["minimum"].knobs(), "fault_check": True}
    doc: dict[str, Any] = {
        "config": {"base": "minimum", "depth": 3},
        "properties": [{"id": "contained"}],
        "minimal": [],
        "presets": [{"name": "minimum", "keeps": [], "cheaper": None},
                    {"name": "unmap", "keeps": ["contained"], "cheaper": None},
                    {"name": "hugetlbfs", "keeps": ["contained"], "cheaper": None}],
        "answers": [{"property_set": "contained after consumption",
                     "properties": ["contained"], "policy": pol, "cost": 14.0,
                     "unknown_cheaper": 0, "breaks": ["C5"], "closest_preset": "minimum"}],
    }
    with Executor(1) as ex:
        annotate(doc, ex, ["vm-hostile-2m"])
    ce = doc["answers"][0]["compare"]
    assert doc["compare"]["ran"] and ce["policy"] == "minimum{fault_check=true}"
    # hugetlbfs is another backing: not what a guest_memfd answer is compared with
    assert [v["preset"] for v in ce["vs"]] == ["unmap"]
    assert ce["check_only"] and ce["vs"][0]["kept_broken"] == ["repeated_consumptions"]
    assert ce["findings"]["repeated_consumptions"]["scenarios"] == ["vm-hostile-2m"]
    assert ce["command"] == ("memfail compare --no-readings --policy 'minimum{fault_check=true}'"
                             " --policy unmap")
    text = words(doc)[0]
    assert "Minimal on the check configuration only" in text
    assert "R in 1 (vm-hostile-2m) where unmap does not" in text


def test_the_compare_command_of_an_answer_gives_its_findings() -> None:
    """Each answer's `compare.command` prints the cells its findings come from."""
    from memfail.model.policy.registry import make_policy
    from memfail.report.compare import run_compare

    cells = run_compare(["vm-hostile-2m"], [make_policy("minimum{fault_check=true}"),
                                             make_policy("unmap")])
    by = {c.policy: c for c in cells}
    assert by["minimum{fault_check=true}"].outcomes["repeated_consumptions"]
    assert not by["unmap"].outcomes.get("repeated_consumptions")


def test_the_search_document_and_text_say_what_compare_finds(doc: dict[str, Any],
                                                              tiny: Path) -> None:
    assert doc["compare"]["ran"] and doc["compare"]["scenarios"] == 2
    for a in doc["answers"]:
        if a["policy"] is not None:
            assert a["compare"]["command"].startswith("memfail compare --no-readings --policy")
        else:  # the key is always there (docs/search.md), null without a policy
            assert a["compare"] is None
    for p in doc["presets"]:
        if p["cheaper"] is not None and p.get("cheaper_preset") is None:
            assert p["cheaper_compare"]["vs"][0]["preset"] == p["name"]
        elif p["cheaper"] is None:
            assert p["cheaper_compare"] is None
    r = run("search", "--config", str(tiny), *SMALL)
    assert r.exit_code == 0, r.output
    tail = r.output[r.output.index("The answer:"):]
    assert "compare's 2 scenarios" in " ".join(tail.split())


def test_a_preset_is_minimal_only_within_its_family(doc: dict[str, Any]) -> None:
    """hugetlbfs (cost 0) is another backing: it does not make a guest_memfd preset dearer,
    but a cheaper preset of the same family that keeps as much does."""
    from memfail.model.policy.registry import PRESETS
    from memfail.search.crosscheck import family

    by = {p["name"]: p for p in doc["presets"]}
    for p in doc["presets"]:
        fam = family(PRESETS[p["name"]].knobs())
        assert p["family"] == fam
        if p["cheaper"] is not None:
            assert family(p["cheaper"]) == fam and p["cheaper_cost"] < p["cost"]
        rivals = [q for q in doc["presets"] if q["name"] != p["name"]
                  and by[q["name"]]["family"] == fam and q["cost"] < p["cost"]
                  and set(p["keeps"]) <= set(q["keeps"])]
        if rivals:
            assert not p["minimal"] and p["cheaper"] is not None, (p, rivals)
    text = (Path(__file__).parents[1] / "docs" / "search.md").read_text()
    assert "within its family" in text


def test_an_empty_minimal_table_is_said_in_words(doc: dict[str, Any]) -> None:
    from rich.console import Console

    from memfail.search.report import render

    console = Console(record=True, width=200)
    render({**doc, "minimal": []}, console)
    out = console.export_text()
    assert "Minimal policies: none found." in out
    assert "Minimal policies (keep every property" not in out


def test_help_time_is_for_the_default_worker_count() -> None:
    import inspect

    from memfail.search.cli import search

    default = inspect.signature(search).parameters["workers"].default
    assert default == 1
    r = run("search", "--help")
    text = " ".join(r.output.replace("│", " ").split())
    assert "with the default one worker" in text
    assert "about 4 minutes with --workers 2" in text
