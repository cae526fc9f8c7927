"""memfail fleet: the DRAM organisation sets the fault rate, the patrol scrub finds errors in
memory whose VMM died, a later PG_hwpoison-checking kernel reader separates the policies'
host panics, and fleet-file errors name the line and field at fault (docs/fleet.md)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from memfail.cli import app
from memfail.fleet import engine
from memfail.fleet.classes import FailureClass, Outcome
from memfail.fleet.oracle import TableOracle, _model_runner, model_scenario, outcome_for
from memfail.fleet.params import FleetInputError, load_fleet, with_assignments
from memfail.fleet.sampler import compile_spec

PANIC_ON_REREAD = TableOracle.from_dict({"rules": [
    {"policy": ["minimum"], "when": {"kernel_reread": True}, "outcome": {"host_panic": 1}},
    {"outcome": {"vm_paused": 1}}]})


def _run(assign: dict[str, object], host_years: int = 6400) -> engine.FleetResult:
    fleet = with_assignments(load_fleet(), assign) if assign else load_fleet()
    return engine.run(fleet, PANIC_ON_REREAD, host_years, seed=0, policies=["minimum", "unmap"])


@pytest.mark.parametrize(("path", "values", "factor"), [
    ("dram.chips_per_rank", (18, 36), 2.0),
    ("dram.chip_gbit", (8, 16), 0.5),
    ("fleet.host_memory_gib", (512, 1024), 2.0),
])
def test_the_hosts_dram_chips_set_its_fault_rate(path: str, values: tuple[float, float],
                                                 factor: float) -> None:
    """dram-field-data §2.2: the FIT is per chip, so a host's fault rate follows its chips
    (§2.1: scale by memory size, not per GB). Sweeping the chips per rank, the chip density
    or the memory used to leave every figure as it was."""
    a, b = (with_assignments(load_fleet(), {path: v}).params for v in values)
    assert b.fault_rate == pytest.approx(factor * a.fault_rate)
    assert compile_spec(b).ue_rate == pytest.approx(factor * compile_spec(a).ue_rate)
    ra, rb = _run({path: values[0]}), _run({path: values[1]})
    ratio = rb.faults_per_host_year.estimate / ra.faults_per_host_year.estimate
    assert ratio == pytest.approx(factor, rel=0.1)


def test_more_memory_keeps_the_rates_per_vm_hour() -> None:
    """Twice the memory of the same chips: twice the faults and twice the VMs per host, so a
    rate per million VM-hours stays (it used to halve)."""
    a, b = _run({"fleet.host_memory_gib": 512}), _run({"fleet.host_memory_gib": 1024})
    pa = a.rate("unmap", "vm_paused").per_million_vm_hours
    pb = b.rate("unmap", "vm_paused").per_million_vm_hours
    assert pb.low <= pa.estimate <= pb.high and pa.low <= pb.estimate <= pa.high
    assert b.vms_per_host == pytest.approx(2 * a.vms_per_host)


def test_ranks_per_host_is_no_longer_a_knob(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text("dram:\n  ranks_per_host: {value: 64, citation: x}\n")
    with pytest.raises(FleetInputError, match=r"r\.yaml:2: dram\.ranks_per_host: no longer a "
                       r"parameter.*fleet\.host_memory_gib"):
        load_fleet(f)


def _cls(memory: str, page: str, pages: int, touch: str, reread: bool = False) -> FailureClass:
    return FailureClass(memory=memory, vm_type="default", vm_gib=8,  # type: ignore[arg-type]
                        page_size=page, pages_hit=pages, same_folio=False,  # type: ignore[arg-type]
                        second_fault=False, first_touch=touch,  # type: ignore[arg-type]
                        permanent=True, kernel_reread=reread)


def _outcome(cls: FailureClass, policy: str) -> Outcome:
    sc = model_scenario(cls)
    return outcome_for(cls, sc, _model_runner("linux-6.18", policy, sc))


@pytest.mark.parametrize(("cls", "policy", "stall_us"), [
    # a VMM read kills QEMU; the bank fault's other 63 pages were addressed by guest address
    # after the VM was gone, stayed latent, and the next VM consumed each: 64 machine checks
    (_cls("gmem_shared", "2M", 64, "vmm_read"), "unmap", 133),
    (_cls("gmem_shared", "2M", 64, "vmm_read"), "hugetlbfs", 133),
    # kill-vm kills the VM at the scrub's report; the next VM consumed a page left latent
    (_cls("gmem_private", "2M", 64, "scrub"), "kill-vm", 0),
    (_cls("gmem_private", "2M", 64, "guest_read"), "kill-vm", 133),
])
def test_the_scrub_finds_errors_in_memory_whose_vm_is_gone(cls: FailureClass, policy: str,
                                                           stall_us: int) -> None:
    """docs/fleet.md: a policy that stops the guest at its first machine check stalls the
    host for that machine check only (133 us on 64 CPUs), or not at all when the scrub found
    the error first. The patrol scrub walks physical memory (§2.6), VM or no VM."""
    assert _outcome(cls, policy).host_stall_seconds == pytest.approx(stall_us / 1e6)


@pytest.mark.parametrize(("policy", "panic"), [
    ("mainline", 0), ("mf-delayed-fix", 0), ("minimum", 1), ("unmap", 1), ("kill-vm", 0),
    ("unusable", 1), ("future", 0), ("hugetlbfs", 0)])
def test_a_later_dump_panics_the_policies_that_do_not_mark_the_page(policy: str,
                                                                    panic: int) -> None:
    """`memfail compare --scenario vm-kernel-user-dump`: /proc/kcore skips a PG_hwpoison page
    and consumes one that is not marked (R47) when the guest's load reported it (the
    policy's memory_failure() returns -EHWPOISON: no set_mce_nospec()). When the scrub found
    it first, the table policies' memory_failure() returned 0 and x86 took the page out of
    the direct map (set_mce_nospec(), R46): kcore reads zeros under every policy."""
    assert _outcome(_cls("gmem_private", "1G", 1, "guest_read", reread=True),
                    policy).host_panic == panic
    assert _outcome(_cls("gmem_private", "1G", 1, "scrub", reread=True), policy).host_panic \
        == 0


def test_the_later_kernel_read_is_sampled_at_its_rate() -> None:
    """P(a checking kernel user reads the page in the VM's remaining life) = r L / (1 + r L)
    (exponential remaining life of mean L); kcore-dump does not read confidential VMs."""
    p = load_fleet().params
    spec = compile_spec(p)
    r = sum(u.rate_per_hour for u in p.access.kernel_users
            if u.checks_hwpoison and "gmem_private" in u.memory)
    life = p.vms.mean_lifetime_hours
    want = {"default": r * life / (1 + r * life), "confidential": 0.0}
    for c, rr in zip(spec.cell_loc, spec.cell_reread, strict=True):  # type: ignore[arg-type]
        loc = spec.locations[c]
        if loc.memory == "gmem_private":
            assert rr == pytest.approx(want[loc.vm_type])
        elif loc.memory not in ("gmem_shared",):
            assert rr == 0
    res = _run({}, 6400)
    share = res.rate("minimum", "host_panic").per_host_year.estimate / \
        res.faults_per_host_year.estimate
    assert 0.02 < share < 0.08  # the guest-memory, non-confidential, not-kcore-first share
    assert res.rate("unmap", "host_panic").per_host_year.estimate == 0
    swept = _run({"access.kernel_users.2.rate_per_hour": 0.0}, 6400)
    assert swept.rate("minimum", "host_panic").per_host_year.estimate == 0
    assert math.isclose(swept.faults_per_host_year.estimate, res.faults_per_host_year.estimate)


def test_errors_name_the_line_and_field_at_fault(tmp_path: Path) -> None:
    f = tmp_path / "mem-frac.yaml"
    f.write_text('fleet:\n  host_memory_gib: {value: 0.5, citation: "x"}\n')
    with pytest.raises(FleetInputError, match=r"mem-frac\.yaml:2: fleet\.host_memory_gib: a 8 "
                       r"GiB VM"):
        load_fleet(f)
    f = tmp_path / "old-kernel.yaml"
    f.write_text("# a fleet on an old kernel\nkernel_profile: linux-6.1\n")
    r = CliRunner().invoke(app, ["fleet", str(f), "--host-years", "64", "--workers", "1",
                                 "--cache-dir", "off"])
    assert r.exit_code == 2
    err = " ".join(r.output.split())
    assert "old-kernel.yaml:2: kernel_profile: the model oracle runs every failure class as a " \
        "guest_memfd VM" in err and "pass --oracle TABLE.yaml" in err and "step" not in err


def test_the_hugetlbfs_baseline_has_no_confidential_vms() -> None:
    """An SNP or TDX guest's private memory can only come from guest_memfd (R75): under the
    hugetlbfs baseline the fleet's confidential VMs run as ordinary VMs, so a guest read
    of a failed page gets a vMCE there, and the output says so."""
    from dataclasses import replace

    from memfail.fleet.output import notes

    cls = replace(_cls("gmem_private", "2M", 1, "guest_read"), vm_type="confidential")
    sc = model_scenario(cls)
    base = _model_runner("linux-6.18", "hugetlbfs", sc)
    coco = _model_runner("linux-6.18", "minimum", sc)
    assert base["vmce_injected"] >= 1 and coco["vmce_injected"] == 0
    res = _run({}, 64)
    assert notes(res) == []  # no hugetlbfs column, nothing to say
    res = engine.run(load_fleet(), PANIC_ON_REREAD, 64, seed=0, policies=["hugetlbfs"])
    assert notes(res) and "confidential VMs as ordinary VMs" in notes(res)[0]


@pytest.mark.parametrize("batch", [1, 2, 3, 7])
def test_the_frailty_tilt_is_unbiased_for_every_batch_size(batch: int) -> None:
    """The weights assume half the lognormal draws shifted; a batch of odd size shifts its
    half draw by a coin. Rounding it down had `--host-years 64` (batches of one) estimate
    about a quarter of the rate, with intervals that missed it for every seed."""
    import numpy as np

    from memfail.fleet.params import defaults_yaml, load_fleet
    from memfail.fleet.sampler import compile_spec, sample_batch

    spec = compile_spec(load_fleet("defaults.yaml", text=defaults_yaml()).params)
    draws = 3000 // batch
    total = sum(float(sample_batch(spec, np.random.default_rng(i), batch).tally.sum())
                for i in range(draws))
    assert total / (draws * batch) == pytest.approx(spec.ue_rate, rel=0.1)
