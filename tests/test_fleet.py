"""memfail fleet: parameters and errors, closed-form rates, determinism, interval coverage.

The CLI tests run the fleet and outcome table written in docs/fleet.md.
"""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from memfail.cli import app
from memfail.fleet import engine
from memfail.fleet.calibration import frailty_tail
from memfail.fleet.classes import FailureClass, Outcome
from memfail.fleet.oracle import ModelOracle, TableOracle, build_scenario
from memfail.fleet.params import (
    FleetInputError,
    LoadedFleet,
    defaults_table,
    load_fleet,
    parse_assignment,
    with_assignments,
)
from memfail.fleet.sampler import _frailty, _race, _weights, compile_spec

DOCS = Path(__file__).resolve().parents[1] / "docs" / "fleet.md"

SIMPLE = """
faults:
  ue_rate_per_host_year: {value: %(rate)s, citation: test}
frailty:
  distribution: {value: none, citation: test}
"""


def simple(rate: float = 0.5, extra: str = "") -> LoadedFleet:
    return load_fleet("simple.yaml", text=SIMPLE % {"rate": rate} + extra)


# --------------------------------------------------------------------------- parameters


def test_show_defaults_json_gives_values_as_the_file_has_them() -> None:
    r = CliRunner().invoke(app, ["fleet", "--show-defaults", "--json"])
    assert r.exit_code == 0, r.output
    values = {x["path"]: x["value"] for x in json.loads(r.output)["parameters"]}
    assert values["fleet.hosts"] == 10000 and isinstance(values["fleet.hosts"], int)
    assert values["faults.ue_rate_per_host_year"] == pytest.approx(0.0254)
    assert values["vms.page_size"] == {"4K": 0.0, "2M": 0.5, "1G": 0.5}


def test_every_default_has_a_citation() -> None:
    rows = defaults_table()
    assert len(rows) > 25
    for path, _value, citation in rows:
        assert citation.strip(), path
    cited = {p for p, _, c in rows if not c.startswith("choice")}
    assert "faults.ue_rate_per_host_year" in cited
    assert "Schroeder" in dict((p, c) for p, _, c in rows)["faults.ue_rate_per_host_year"]


@pytest.mark.parametrize(("text", "line", "field", "words"), [
    ("scrub:\n  period_hours: 12\n", 2, "scrub.period_hours", "without a citation"),
    ("scrub:\n  period_hours: {value: -1, citation: x}\n", 2, "scrub.period_hours",
     "greater than 0"),
    ("scrub:\n  perod_hours: 3\n", 2, "scrub.perod_hours", "did you mean 'period_hours'"),
    ("\n\nvms:\n  confidential_share: {value: 1.5, citation: x}\n", 4,
     "vms.confidential_share", "[0, 1]"),
    ("composition:\n  shares:\n    citation: c\n    value: {gmem_private: 0.9, vmm: 0.2}\n",
     4, "composition.shares", "sum to 1"),
    ("heat:\n  guest:\n    citation: a\n    value:\n      - {rate_per_hour: 1, share: 0.5}\n"
     "      - {rate_per_hour: -2, share: 0.5}\n", 6, "heat.guest.1.rate_per_hour",
     "greater than or equal to 0"),
    ("a: &x 1\nb: *x\n", 1, "a", "aliases"),
    ("scrub:\n  period_hours: !!python/object 1\n", 2, "scrub.period_hours",
     "is not allowed"),
    ("kernel_profile: linux-9\n", 1, "kernel_profile", "valid: linux-6.1"),
])
def test_input_errors_name_file_line_and_field(text: str, line: int, field: str,
                                               words: str) -> None:
    with pytest.raises(FleetInputError) as e:
        load_fleet("my-fleet.yaml", text=text)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"my-fleet.yaml:{line}: {field}: "), msg
    assert words in msg


def test_unchanged_default_needs_no_citation() -> None:
    f = load_fleet("f.yaml", text="scrub:\n  period_hours: 24\npolicies: [minimum]\n")
    assert f.params.policies == ["minimum"]


def test_sweep_assignments() -> None:
    path, values = parse_assignment("scrub.period_hours=[12, 24, 48]")
    assert (path, values) == ("scrub.period_hours", [12, 24, 48])
    f = with_assignments(load_fleet(), {"faults.modes.single_bit.permanent_fit": 1.0})
    assert f.params.faults.modes["single_bit"].permanent_fit == 1.0
    assert f.citations["faults.modes.single_bit"] == "sweep"
    with pytest.raises(FleetInputError, match=r"^--grid: scrub\.perid: unknown parameter"):
        with_assignments(load_fleet(), {"scrub.perid": 1})


# --------------------------------------------------------------------------- closed forms


def test_poisson_arrivals_times_single_outcome_give_the_rate() -> None:
    lam = 0.5
    f = simple(lam)
    res = engine.run(f, TableOracle.constant({"vm_killed": 1}), 50_000, seed=3,
                     policies=["minimum"])
    iv = res.rate("minimum", "vm_killed").per_host_year
    assert iv.low <= lam <= iv.high
    assert abs(iv.estimate - lam) < 0.02 * lam
    assert res.p_any_fault == pytest.approx(1 - math.exp(-lam))
    vm_hours = res.vms_per_host * engine.HOURS_PER_YEAR
    assert res.rate("minimum", "vm_killed").per_million_vm_hours.estimate == pytest.approx(
        iv.estimate * 1e6 / vm_hours)


def test_outcome_of_one_mode_is_its_fit_share() -> None:
    lam = 0.02
    f = simple(lam)
    table = TableOracle.from_dict({"rules": [
        {"when": {"pages_hit": 2}, "outcome": {"host_panic": 1}},  # single_row only
        {"when": {"permanent": True}, "outcome": {"vm_paused": 1}},
    ]})
    res = engine.run(f, table, 200_000, seed=5, policies=["p"])
    modes = f.params.faults.modes
    total = sum(m.transient_fit + m.permanent_fit for m in modes.values())
    row = modes["single_row"]
    truth_row = lam * (row.transient_fit + row.permanent_fit) / total
    # first match wins: permanent row faults count as host_panic, not vm_paused
    truth_perm = lam * (sum(m.permanent_fit for m in modes.values()) - row.permanent_fit) / total
    for outcome, truth in (("host_panic", truth_row), ("vm_paused", truth_perm)):
        iv = res.rate("p", outcome).per_host_year
        assert iv.low <= truth <= iv.high, (outcome, iv, truth)


@pytest.mark.parametrize("rate_per_hour", [1.0, 1 / 24, 1 / 168])
def test_consumed_before_scrub_matches_the_race_formula(rate_per_hour: float) -> None:
    f = simple(0.1, f"""
composition:
  shares: {{value: {{vmm: 1.0}}, citation: test}}
heat:
  vmm: {{value: [{{rate_per_hour: {rate_per_hour}, share: 1.0}}], citation: test}}
access:
  kernel_users: {{value: [], citation: test}}
""")
    res = engine.run(f, TableOracle.constant({}), 20_000, seed=1, policies=["p"])
    x = rate_per_hour * 24.0
    truth = 1 - (1 - math.exp(-x)) / x
    c = res.consumed_before_scrub
    assert c.low <= truth <= c.high
    assert res.first_touch["vmm_read"].estimate == pytest.approx(c.estimate)


def test_second_fault_in_a_1g_folio_is_split_off_exactly() -> None:
    lam = 0.05
    f = simple(lam, """
composition:
  shares: {value: {gmem_private: 1.0}, citation: test}
vms:
  page_size: {value: {1G: 1.0}, citation: test}
""")
    table = TableOracle.from_dict({"rules": [
        {"when": {"second_fault": True}, "outcome": {"host_panic": 1}}]})
    res = engine.run(f, table, 20_000, seed=2, policies=["p"])
    p = f.params
    q = -math.expm1(-lam * (1 << 30) / (p.fleet.host_memory_gib * (1 << 30))
                    * p.vms.mean_lifetime_hours / engine.HOURS_PER_YEAR)
    iv = res.rate("p", "host_panic").per_host_year
    se = iv.estimate / math.sqrt(iv.n_eff)
    assert abs(iv.estimate - lam * q) < 4 * se  # 4 standard errors: this seed or any other
    assert iv.estimate == pytest.approx(lam * q, rel=0.01)


def test_nothing_seen_gives_the_rule_of_three() -> None:
    res = engine.run(simple(0.5), TableOracle.constant({}), 6400, seed=0, policies=["p"])
    iv = res.rate("p", "host_panic").per_host_year
    assert iv.method == "rule-of-three"
    assert (iv.estimate, iv.low) == (0.0, 0.0)
    assert iv.high == pytest.approx(3 / res.plan.host_years * (1 - math.exp(-0.5)))


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_numbers_whatever_the_worker_count() -> None:
    f = load_fleet()
    table = TableOracle.from_dict({"rules": [
        {"when": {"consumed": True}, "outcome": {"vm_paused": 1}},
        {"when": {"second_fault": True}, "outcome": {"host_panic": 1}}]})
    a = engine.run(f, table, 40_000, seed=11, workers=1).to_dict()
    b = engine.run(f, table, 40_000, seed=11, workers=2).to_dict()
    c = engine.run(f, table, 40_000, seed=12, workers=1).to_dict()
    assert a == b
    assert a != c


def test_coverage_of_intervals_over_repeated_seeds() -> None:
    lam = 0.05
    f = simple(lam)
    table = TableOracle.from_dict({"rules": [
        {"when": {"pages_hit": 2}, "outcome": {"host_panic": 1}},
        {"when": {"permanent": True}, "outcome": {"vm_paused": 1}}]})
    modes = f.params.faults.modes
    total = sum(m.transient_fit + m.permanent_fit for m in modes.values())
    truth = {
        "host_panic": lam * (modes["single_row"].permanent_fit
                             + modes["single_row"].transient_fit) / total,
        "vm_paused": lam * (sum(m.permanent_fit for m in modes.values())
                            - modes["single_row"].permanent_fit) / total,
    }
    hits = dict.fromkeys(truth, 0)
    reps = 200
    for seed in range(reps):
        res = engine.run(f, table, 4096, seed=seed, policies=["p"])
        for o, t in truth.items():
            iv = res.rate("p", o).per_host_year
            hits[o] += iv.low <= t <= iv.high
    for o, h in hits.items():
        assert 0.9 <= h / reps <= 0.99, (o, h / reps)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=40).filter(
    lambda w: sum(w) > 1e-6))
def test_exponential_race_reproduces_the_probabilities(weights: list[float]) -> None:
    """The sampler draws every category by an exponential race: each category wins with its
    share of the weight (a zero weight never), in the one-table and the per-draw form."""
    w = _weights(weights, len(weights) + 2)  # padded like the per-memory-kind tables
    e = np.random.default_rng(1).standard_exponential((len(w), 100_000))
    idx = _race(e, w)
    freq = np.bincount(idx, minlength=len(w)) / e.shape[1]
    want = np.array(weights) / sum(weights)
    assert np.allclose(freq[: len(weights)], want, atol=0.006)
    assert not freq[len(weights):].any()
    assert not freq[: len(weights)][want == 0].any()
    assert (_race(e[:, :500], np.tile(w, (500, 1))) == idx[:500]).all()


# --------------------------------------------------------------------------- oracles


def test_table_oracle_first_match_and_errors() -> None:
    cls = FailureClass("gmem_private", "default", 8, "1G", 1, True, False, "guest_read", True)
    t = TableOracle.from_dict({"default": {"vm_paused": 1}, "rules": [
        {"policy": "minimum", "when": {"consumed": True}, "outcome": {"host_panic": 1}}]})
    assert t.outcome("minimum", cls) == Outcome(host_panic=1)
    assert t.outcome("unmap", cls) == Outcome(vm_paused=1)
    with pytest.raises(FleetInputError, match=r"^t: rules\[0\]\.when\.colour: unknown"):
        TableOracle.from_dict({"rules": [{"when": {"colour": 1}, "outcome": {}}]}, "t")
    with pytest.raises(FleetInputError, match=r"rules\[0\]\.outcome\.host_panic: outcome host_panic"):
        TableOracle.from_dict({"rules": [{"outcome": {"host_panic": -1}}]}, "t")


def test_model_oracle_builds_scenarios_and_caches() -> None:
    cls = FailureClass("vmm", "default", 8, "4K", 2, True, False, "vmm_read", True)
    steps = build_scenario(cls)
    assert [k for s in steps for k in s].count("hw_error") == 2
    calls: list[str] = []

    def runner(profile: str, policy: str, sc: object) -> dict:
        calls.append(policy)
        return {"host_panic": False, "poison_handed_out": 2, "max_consumptions_per_pfn": 3,
                "vm_states": {"vm0": "paused"}}

    o = ModelOracle(runner=runner)
    out = o.outcome("minimum", cls)
    assert out == Outcome(poison_reused=2, repeated_consumption=2, vm_paused=1)
    o.outcome("minimum", cls)
    assert calls == ["minimum"] and o.cache_size == 1
    # classes that differ only in how the run is read (VM size, permanence) share one run
    o.outcome("minimum", FailureClass("vmm", "default", 32, "4K", 2, True, False, "vmm_read",
                                      False))
    assert calls == ["minimum"] and o.cache_size == 2 and o.model_runs == 1
    gmem = FailureClass("gmem_shared", "confidential", 8, "1G", 1, True, True, "vmm_read", True)
    keys = [k for s in build_scenario(gmem) for k in s]
    assert keys.count("hw_error") == 2 and "vm_destroy" in keys and "checkpoint" in keys


# --------------------------------------------------------------------------- CLI



def _doc_files(tmp_path: Path) -> tuple[Path, Path]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text("utf-8"), re.S)
    fleet, table = tmp_path / "my-fleet.yaml", tmp_path / "what-if.yaml"
    fleet.write_text(blocks[0])
    table.write_text(blocks[1])
    return fleet, table


def _valid_png_svg(paths: list[Path]) -> None:
    for p in paths:
        assert p.exists() and p.stat().st_size > 1000, p
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        else:
            assert ET.parse(p).getroot().tag.endswith("svg")


def test_fleet_from_the_docs_runs_and_plots(tmp_path: Path) -> None:
    fleet, table = _doc_files(tmp_path)
    plots = tmp_path / "plots"
    r = CliRunner().invoke(app, ["fleet", str(fleet), "--oracle", str(table),
                                    "--host-years", "20000", "--workers", "1", "--json",
                                    "--plot", str(plots)])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["schema"] == "memfail.fleet/1" and doc["kind"] == "run"
    assert doc["policies"] == ["minimum", "unmap", "kill-vm", "hugetlbfs"]
    assert doc["hosts"] == 2000
    row = next(x for x in doc["rates"] if x["policy"] == "kill-vm"
               and x["outcome"] == "vm_killed")
    assert row["per_million_vm_hours"]["estimate"] > 0
    _valid_png_svg([plots / "fleet-policies.png", plots / "fleet-policies.svg"])

    r = CliRunner().invoke(app, ["fleet", "sweep", str(fleet), "--oracle", str(table),
                                    "--grid", "scrub.period_hours=[3,48]", "--host-years",
                                    "6400", "--workers", "1", "--outcome", "host_panic",
                                    "--plot", str(plots)])
    assert r.exit_code == 0, r.output
    assert "host_panic" in r.output
    _valid_png_svg([plots / "fleet-sweep-scrub_period_hours-host_panic.png",
                    plots / "fleet-sweep-scrub_period_hours-host_panic.svg"])


def test_the_docs_pareto_fleet_says_its_intervals_are_not_valid(tmp_path: Path) -> None:
    """The user's report: the docs' fleet (Pareto frailty, mean/median 55) printed a fault
    rate interval 14x below the mean rate of its own calibration line. The frailty's mean is
    1, but its shape 1.009 has infinite variance: the output must say the intervals are not
    valid, why, and give the analytic mean beside the Monte Carlo one."""
    fleet, table = _doc_files(tmp_path)
    args = ["fleet", str(fleet), "--oracle", str(table), "--host-years", "5000",
            "--workers", "1"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "interval NOT valid: infinite-variance frailty; the mean is 0.0508" in text
    assert "warning: the Pareto frailty (mean/median 55, shape 1.009) has infinite " \
        "variance (shape <= 2)" in text
    r = CliRunner().invoke(app, [*args, "--json"])
    fr = json.loads(r.output)["frailty"]
    assert fr["distribution"] == "pareto" and fr["shape"] == pytest.approx(1.00923, abs=1e-5)
    assert fr["variance_finite"] is False and fr["intervals_valid"] is False
    assert fr["mean_faults_per_host_year_exact"] == pytest.approx(0.0508)
    assert 0.9 < fr["mean_share_beyond_sample"] < 0.95  # 5120 ** (-(a - 1) / a)
    assert "not valid" in fr["warning"]
    r = CliRunner().invoke(app, ["fleet", "sweep", str(fleet), "--oracle", str(table),
                                 "--grid", "scrub.period_hours=[3,48]", "--host-years",
                                 "640", "--outcome", "host_panic"])
    assert r.exit_code == 0, r.output
    assert " ".join(r.output.split()).count("warning: the Pareto frailty") == 1


@pytest.mark.parametrize(("distribution", "mean_over_median", "valid"), [
    ("lognormal", 55.0, True), ("none", 1.0, True), ("pareto", 55.0, False),
    ("pareto", 3.0, False), ("pareto", 1.4, True)])
def test_frailty_tail_validity(distribution: str, mean_over_median: float,
                               valid: bool) -> None:
    fleet = with_assignments(load_fleet(None), {"frailty.distribution": distribution,
                                                "frailty.mean_over_median": mean_over_median})
    fr = frailty_tail(fleet.params, 10_000)
    assert fr["intervals_valid"] is valid and fr["variance_finite"] is valid
    assert (fr["warning"] is None) is valid
    if distribution == "pareto":
        assert (fr["shape"] > 2) is valid


def test_pareto_frailty_has_mean_one() -> None:
    """The sampled Pareto frailty is F = (a-1)/a x U^(-1/a): Pareto type I with scale
    (a-1)/a, mean exactly 1 (not numpy's Lomax ``pareto(a)``, mean 1/(a-1)). With a shape > 2
    (finite variance) its sample mean converges to 1."""
    for mom in (55.0, 1.3):
        spec = compile_spec(with_assignments(load_fleet(None), {
            "frailty.distribution": "pareto", "frailty.mean_over_median": mom}).params)
        a = spec.frailty_shape
        f, lr = _frailty(spec, np.random.default_rng(0), 1)
        assert lr is None
        scale = (a - 1) / a
        assert scale * a / (a - 1) == pytest.approx(1.0)  # the Pareto I mean
        assert scale * 2 ** (1 / a) * mom == pytest.approx(1.0)  # median x ratio = mean
    f, _ = _frailty(spec, np.random.default_rng(0), 2_000_000)
    assert spec.frailty_shape > 2 and f.mean() == pytest.approx(1.0, abs=0.01)


def test_sweep_json_and_table_output(tmp_path: Path) -> None:
    _, table = _doc_files(tmp_path)
    r = CliRunner().invoke(app, ["fleet", "sweep", "--oracle", str(table), "--grid",
                                    "vms.confidential_share=[0, 1]", "--host-years", "6400",
                                    "--workers", "1", "--json", "--policy", "minimum"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["kind"] == "sweep" and len(doc["points"]) == 2
    assert [p["assign"] for p in doc["points"]] == [{"vms.confidential_share": 0},
                                                    {"vms.confidential_share": 1}]
    r = CliRunner().invoke(app, ["fleet", "--oracle", str(table), "--host-years", "6400",
                                    "--workers", "1", "--policy", "minimum"])
    assert r.exit_code == 0, r.output
    assert "consumed before the patrol scrub" in r.output and "minimum" in r.output


def test_cli_errors_are_one_line_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("fleet:\n  hosts: {value: -3, citation: x}\n")
    r = CliRunner().invoke(app, ["fleet", str(bad)])
    assert r.exit_code == 2
    assert r.stderr.strip() == (f"memfail: error: {bad}:2: fleet.hosts: "
                                "Input should be greater than 0, got -3")
    r = CliRunner().invoke(app, ["fleet", "sweep", "--grid", "nope=[1]"])
    assert r.exit_code == 2 and r.stderr.startswith("memfail: error: --grid: nope:")
    # one path twice: the second axis replaced the first without a word
    r = CliRunner().invoke(app, ["fleet", "sweep", "--grid", "scrub.period_hours=[12,24]",
                                 "--grid", "scrub.period_hours=[1,2]"])
    assert r.exit_code == 2 and "scrub.period_hours is given twice" in r.stderr
    r = CliRunner().invoke(app, ["fleet", "--cache-dir", "/proc/memfail-x", "--host-years",
                                 "64"])
    assert r.exit_code == 2 and r.stderr.startswith("memfail: error: --cache-dir: cannot "
                                                    "write /proc/memfail-x")
    r = CliRunner().invoke(app, ["fleet", "--host-years", "1"])
    assert r.exit_code == 2 and r.stderr.startswith("memfail: error: --host-years: must be at "
                                                    "least 64")


def test_show_defaults_lists_citations() -> None:
    r = CliRunner().invoke(app, ["fleet", "--show-defaults", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)["parameters"]
    assert {"path": "scrub.period_hours", "value": 24.0}.items() <= rows[
        [x["path"] for x in rows].index("scrub.period_hours")].items()


def test_the_order_key_sorts_failure_classes_as_their_order_does() -> None:
    """Tallies.merge sorts the classes a run met by ``FailureClass.order_key``: the order
    the dataclass defines (its generated comparisons), on classes of every kind the default
    fleet samples; and an Outcome's tuple follows OUTCOME_NAMES."""
    from memfail.fleet.classes import OUTCOME_NAMES

    spec = compile_spec(load_fleet(None).params)
    rng = np.random.default_rng(5)
    classes = [spec.decode(int(i)) for i in rng.integers(0, spec.n_classes, 3000)]
    assert len(set(classes)) > 1000
    assert sorted(classes, key=FailureClass.order_key) == sorted(classes)
    o = Outcome(vm_killed=2.0, guest_gib_lost=0.5)
    assert dict(zip(OUTCOME_NAMES, o.as_tuple(), strict=True)) == \
        {n: getattr(o, n) for n in OUTCOME_NAMES} and Outcome.names() == OUTCOME_NAMES
