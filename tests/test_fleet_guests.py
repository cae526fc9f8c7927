"""memfail fleet: guest behaviours (careless, hostile, confidential) and the host-stall columns
from the model, and the calibration against the cited field study (docs/fleet.md)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import memfail.fleet.oracle as oracle_mod
from memfail.cli import app
from memfail.fleet import engine
from memfail.fleet.calibration import CITED_P_HOST_UE, p_any_ue
from memfail.fleet.classes import FailureClass
from memfail.fleet.oracle import ModelOracle, TableOracle, model_scenario
from memfail.fleet.params import load_fleet, with_assignments
from memfail.fleet.sampler import compile_spec, sample_batch

# A small fleet: guest memory only, on 2M HugeTLB pages, single-bit faults, read by the guest
# or found by the scrub (no VMM or kernel readers), so few model runs are needed.
SMALL = """
composition:
  shares: {value: {gmem_private: 1.0, gmem_shared: 0.0, hugetlb_free: 0.0, vmm: 0.0, kernel: 0.0}, citation: test}
faults:
  modes:
    single_bit: {value: {transient_fit: 0.0, permanent_fit: 1.0}, citation: test}
    single_word: {value: {transient_fit: 0.0, permanent_fit: 0.0}, citation: test}
    single_column: {value: {transient_fit: 0.0, permanent_fit: 0.0}, citation: test}
    single_row: {value: {transient_fit: 0.0, permanent_fit: 0.0}, citation: test}
    single_bank: {value: {transient_fit: 0.0, permanent_fit: 0.0}, citation: test}
    multi_bank: {value: {transient_fit: 0.0, permanent_fit: 0.0}, citation: test}
    multi_rank: {value: {transient_fit: 0.0, permanent_fit: 0.0}, citation: test}
vms:
  sizes: {value: [{gib: 8, share: 1.0}], citation: test}
  confidential_share: {value: 0.0, citation: test}
  careless_share: {value: 0.0, citation: test}
  hostile_share: {value: 0.0, citation: test}
  page_size: {value: {4K: 0.0, 2M: 1.0, 1G: 0.0}, citation: test}
access:
  vmm_shared_read_per_hour: {value: 0.0, citation: test}
  kernel_users: {value: [], citation: test}
policies: [minimum, unmap]
"""


def _rate(res: engine.FleetResult, policy: str, outcome: str) -> float:
    return res.rate(policy, outcome).per_host_year.estimate


@pytest.fixture(scope="module")
def small_runs() -> dict[float, engine.FleetResult]:
    fleet = load_fleet("small.yaml", text=SMALL)
    orc = ModelOracle("linux-6.18")
    return {h: engine.run(with_assignments(fleet, {"vms.hostile_share": h}), orc, 640, 0)
            for h in (0.0, 0.2)}


def test_hostile_share_moves_minimums_host_stall_and_not_unmaps(
        small_runs: dict[float, engine.FleetResult]) -> None:
    calm, hostile = small_runs[0.0], small_runs[0.2]
    assert _rate(calm, "minimum", "host_stalled") == 0
    assert _rate(hostile, "minimum", "host_stalled") > 0  # nothing unmaps the 2M page (C2)
    assert _rate(hostile, "minimum", "host_stall_seconds") > \
        _rate(calm, "minimum", "host_stall_seconds")
    for outcome in ("host_stalled", "host_stall_seconds", "host_panic"):
        assert _rate(hostile, "unmap", outcome) == _rate(calm, "unmap", outcome)
    assert _rate(hostile, "unmap", "host_stalled") == 0
    assert hostile.guests["hostile"] == pytest.approx(0.2)
    assert calm.guests["cooperative"] == 1.0


def test_a_share_of_zero_leaves_the_sampled_failures_as_they_were() -> None:
    """The behaviour split draws no random number: at share 0 every guest is cooperative,
    and any share only redistributes the same sampled weight over behaviours."""
    fleet = load_fleet("small.yaml", text=SMALL)
    spec0 = compile_spec(fleet.params)
    spec1 = compile_spec(with_assignments(fleet, {"vms.hostile_share": 0.3,
                                                  "vms.careless_share": 0.1}).params)
    t0 = sample_batch(spec0, np.random.default_rng(5), 4096)
    t1 = sample_batch(spec1, np.random.default_rng(5), 4096)
    seen0 = {spec0.decode(i): w for i, w in enumerate(t0.tally) if w}
    assert {c.behaviour for c in seen0} == {"cooperative"}
    merged: dict[FailureClass, float] = {}
    for i, w in enumerate(t1.tally):
        if w:
            c = dataclasses.replace(spec1.decode(i), behaviour="cooperative", effort=0)
            merged[c] = merged.get(c, 0.0) + w
    assert merged.keys() == seen0.keys()
    for c, w in seen0.items():
        assert merged[c] == pytest.approx(w, rel=1e-12)
    steps = model_scenario(next(iter(seen0))).steps
    assert not any("guest_run" in s or oracle_mod.GUEST_MARK in s for s in steps)


def test_scaled_rounds_match_a_full_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model plays MODEL_ROUNDS rounds and scales the rest to the effort: the same stall
    time and repeated consumptions as playing every round."""
    cls = FailureClass("gmem_private", "default", 8, "2M", 1, True, False, "guest_read", True,
                       behaviour="hostile", effort=40)
    scaled = ModelOracle().outcome("minimum", cls)
    monkeypatch.setattr(oracle_mod, "MODEL_ROUNDS", 40)
    full = ModelOracle().outcome("minimum", cls)
    assert scaled.host_stall_seconds == pytest.approx(full.host_stall_seconds, rel=1e-9)
    assert scaled.repeated_consumption == pytest.approx(full.repeated_consumption, rel=1e-9)
    assert full.host_stall_seconds > 0 and scaled.host_stalled == full.host_stalled == 0


def test_each_behaviour_under_minimum_and_unmap() -> None:
    """minimum keeps a poisoned 2M page mapped (C2): a hostile guest and a confidential vCPU
    stall the host past the bound, a careless guest's ten touches do not; unmap pauses."""
    orc = ModelOracle()
    base = FailureClass("gmem_private", "default", 8, "2M", 1, True, False, "guest_read", True)
    got = {}
    for beh, vt, effort in (("cooperative", "default", 0), ("careless", "default", 10),
                            ("hostile", "default", 10_000),
                            ("confidential", "confidential", 10_000)):
        cls = dataclasses.replace(base, vm_type=vt, behaviour=beh,  # type: ignore[arg-type]
                                  effort=effort)
        got[beh] = (orc.outcome("minimum", cls), orc.outcome("unmap", cls))
    assert [got[b][0].host_stalled for b in ("cooperative", "careless", "hostile",
                                             "confidential")] == [0, 0, 1, 1]
    assert all(got[b][1].host_stalled == 0 and got[b][1].vm_paused == 1 for b in got)
    assert got["hostile"][0].host_stall_seconds > 1.0 > got["careless"][0].host_stall_seconds


@pytest.mark.parametrize(("body", "line", "field", "msg"), [
    ("vms:\n  hostile_share: {value: -0.1, citation: x}\n", 2, "vms.hostile_share",
     "a share must lie in [0, 1]"),
    ("vms:\n  careless_share: {value: 0.6, citation: x}\n"
     "  hostile_share: {value: 0.5, citation: x}\n", 3, "vms.hostile_share",
     "sum to 1.1; they must sum to at most 1"),
    ("vms:\n  guest_effort: {value: {careless: 0, hostile: 5, confidential: 5}, citation: x}\n",
     2, "vms.guest_effort.careless", "greater than or equal to 1"),
])
def test_bad_guest_shares_exit_2_with_their_location(tmp_path: Path, body: str, line: int,
                                                     field: str, msg: str) -> None:
    f = tmp_path / "guests.yaml"
    f.write_text(body)
    r = CliRunner().invoke(app, ["fleet", str(f), "--host-years", "64"])
    assert r.exit_code == 2
    err = r.stderr.strip()
    assert err.startswith(f"memfail: error: {f}:{line}: {field}: ") and msg in err
    assert len(err.splitlines()) == 1


# --------------------------------------------------------------------------- calibration


def test_calibration_of_the_defaults_matches_the_cited_incidence() -> None:
    r = CliRunner().invoke(app, ["fleet", "--host-years", "200000", "--workers", "1",
                                 "--oracle", str(_zero_table()), "--json"])
    assert r.exit_code == 0, r.output
    cal = json.loads(r.output)["calibration"]
    assert cal["cited"] == CITED_P_HOST_UE and "Schroeder" in cal["cited_source"]
    assert cal["p_host_ue_per_year_exact"] == pytest.approx(CITED_P_HOST_UE, abs=2e-4)
    assert cal["p_host_ue_per_year"] == pytest.approx(cal["p_host_ue_per_year_exact"], rel=0.05)
    assert "matches" in cal["explanation"]
    r = CliRunner().invoke(app, ["fleet", "--host-years", "6400", "--workers", "1",
                                 "--oracle", str(_zero_table())])
    assert r.exit_code == 0, r.output
    assert sum(ln.startswith("calibration: ") for ln in r.output.splitlines()) == 1


def test_the_homogeneous_rate_under_the_frailty_gives_the_old_078_percent() -> None:
    """0.0131 = -ln(1 - 0.013) is the incidence of identical hosts; spread by the lognormal
    frailty (mean/median 55) the same mean rate reaches fewer hosts."""
    assert p_any_ue(0.0131, "none", 55.0) == pytest.approx(0.013, abs=1e-4)
    assert p_any_ue(0.0131, "lognormal", 55.0) == pytest.approx(0.0078, abs=1e-4)
    text = "faults:\n  ue_rate_per_host_year: {value: 0.0131, citation: old}\n"
    fleet = load_fleet("old.yaml", text=text)
    res = engine.run(fleet, TableOracle.constant({}), 6400, 0)
    assert "0.6" in res.calibration["explanation"]  # gives 0.60x the cited incidence
    assert not math.isclose(res.calibration["p_host_ue_per_year_exact"], CITED_P_HOST_UE,
                            rel_tol=0.1)


def _zero_table() -> Path:
    import tempfile

    d = Path(tempfile.mkdtemp())
    p = d / "zero.yaml"
    p.write_text("rules: []\n")
    return p
