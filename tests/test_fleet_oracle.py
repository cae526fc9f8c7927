"""memfail fleet: the model oracle, run end to end through the memfail model.

For a few classes the outcome per policy is what the guest_memfd call (and the kernel rules
behind the model) predicts; every kind of class the default sampler produces runs under
every policy; the default fleet runs from the command line.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from memfail.cli import app
from memfail.fleet import engine
from memfail.fleet.classes import FailureClass, Outcome
from memfail.fleet.oracle import (
    R47_PANIC,
    ImpossibleClass,
    ModelOracle,
    _model_runner,
    model_scenario,
    outcome_for,
)
from memfail.fleet.params import load_fleet
from memfail.model.policy.registry import PRESETS

POLICIES = list(PRESETS)


def fc(memory: str = "gmem_private", vm_type: str = "default", vm_gib: int = 8,
       page_size: str = "2M", pages_hit: int = 1, same_folio: bool = True,
       second_fault: bool = False, first_touch: str = "guest_read",
       permanent: bool = True) -> FailureClass:
    return FailureClass(memory, vm_type, vm_gib, page_size, pages_hit,  # type: ignore[arg-type]
                        same_folio, second_fault, first_touch, permanent)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def oracle() -> ModelOracle:
    return ModelOracle()


def metrics(policy: str, cls: FailureClass) -> dict[str, Any]:
    return dict(_model_runner("linux-6.18", policy, model_scenario(cls)))


# --------------------------------------------------------------------------- the call


GUEST_READ_2M = fc()


def test_private_2m_guest_read_today_kills_qemu(oracle: ModelOracle) -> None:
    # R46/R87: the HugeTLB guest_memfd path returns -EBUSY and kill_me_maybe's plain SIGBUS
    # kills QEMU, before and after the MF_DELAYED fix (which covers 4K folios only)
    for pol in ("mainline", "mf-delayed-fix"):
        out = oracle.outcome(pol, GUEST_READ_2M)
        assert out.vm_killed == 1 and out.vm_paused == 0, pol
        assert out.guest_gib_lost == 8  # the whole VM
    m = metrics("mainline", GUEST_READ_2M)
    assert m["killed"] == ["qemu"] and m["vmce_injected"] == 0


def test_private_2m_guest_read_minimum_injects_a_vmce(oracle: ModelOracle) -> None:
    # C3: SIGBUS (BUS_MCEERR_AR) to current, QEMU injects a vMCE; the guest offlines the page
    out = oracle.outcome("minimum", GUEST_READ_2M)
    assert out.vm_killed == 0 and out.vm_paused == 0
    m = metrics("minimum", GUEST_READ_2M)
    assert m["repeated_consumptions"] > 0 or m["vmce_injected"] > 0
    assert m["vmce_injected"] == 1


def test_confidential_guest_re_consumes_without_unmap(oracle: ModelOracle) -> None:
    # no #MC virtualization for SNP/TDX: without unmapping the guest runs into it again
    snp = fc(vm_type="confidential")
    assert oracle.outcome("minimum", snp).repeated_consumption > 0
    assert oracle.outcome("unmap", snp).repeated_consumption == 0


def test_unmap_pauses_and_kill_vm_kills(oracle: ModelOracle) -> None:
    # Dan: unmap on error (the folio is refused, KVM_RUN fails on the rest of the huge page);
    # Sean: kill the VM
    assert oracle.outcome("unmap", GUEST_READ_2M).vm_paused == 1
    assert oracle.outcome("unmap", GUEST_READ_2M).repeated_consumption == 0
    killed = oracle.outcome("kill-vm", GUEST_READ_2M)
    assert killed.vm_killed == 1 and killed.guest_gib_lost == 8


def test_unusable_loses_the_whole_vm_and_future_one_folio(oracle: ModelOracle) -> None:
    big = fc(vm_gib=128, page_size="1G")
    assert oracle.outcome("unusable", big).guest_gib_lost == 128
    # C8 / hugetlbfs baseline: one 1 GiB folio, not the VM
    assert oracle.outcome("hugetlbfs", big).guest_gib_lost == 1
    assert oracle.outcome("hugetlbfs", big).vm_killed == 0


def test_scrubbed_failure_and_pr_mce_kill_early(oracle: ModelOracle) -> None:
    # C6: the minimum does not honour PR_MCE_KILL_EARLY; C8 does; kill-vm kills the VM
    scrub = fc(first_touch="scrub")
    assert oracle.outcome("minimum", scrub).early_kill_missed == 1
    assert oracle.outcome("future", scrub).early_kill_missed == 0
    # the hugetlbfs baseline: memory_failure sends BUS_MCEERR_AO to the early thread (R9)
    assert oracle.outcome("hugetlbfs", scrub).early_kill_missed == 0
    assert oracle.outcome("kill-vm", scrub).vm_killed == 1
    # the kernel signals early-kill owners of anonymous memory under every policy (R9/R10)
    vmm = fc("vmm", page_size="4K", first_touch="scrub")
    for pol in POLICIES:
        assert oracle.outcome(pol, vmm).early_kill_missed == 0, pol


def test_vmm_memory_ar_kills_qemu(oracle: ModelOracle) -> None:
    # Q2: an AR in QEMU's own memory ("memory used by QEMU itself") ends QEMU, whatever the
    # guest_memfd policy
    cls = fc("vmm", page_size="4K", first_touch="vmm_read")
    for pol in POLICIES:
        out = oracle.outcome(pol, cls)
        assert out.vm_killed == 1 and out.host_panic == 0, pol


def test_free_pool_failure_never_reaches_the_next_vm(oracle: ModelOracle) -> None:
    # S12: a scrubbed failure in a free HugeTLB folio is dissolved or skipped (R50, R55, R59)
    for size in ("2M", "1G"):
        cls = fc("hugetlb_free", "none", 0, size, first_touch="scrub")
        for pol in POLICIES:
            out = oracle.outcome(pol, cls)
            assert out.poison_reused == 0 and out.vm_killed == 0 and out.vm_paused == 0, pol


def test_kernel_consumption_is_the_cited_r47_panic(oracle: ModelOracle) -> None:
    for cls in (fc("kernel", "none", 0, "4K", first_touch="kernel_unchecked"),
                fc("hugetlb_free", "none", 0, "2M", first_touch="kernel_checked")):
        sc = model_scenario(cls)
        assert dict(sc.cited) == {"host_panic": 1.0} and sc.citation == R47_PANIC
        assert "R47" in sc.citation
        for pol in ("minimum", "future"):
            assert oracle.outcome(pol, cls).host_panic == 1
    # a panic ends the host-year's story for that failure: the free folio the kernel read is
    # not handed to a VM afterwards, so no VM is killed or paused by it as well
    free = fc("hugetlb_free", "none", 0, "2M", first_touch="kernel_unchecked")
    for pol in POLICIES:
        out = oracle.outcome(pol, free)
        assert (out.host_panic, out.vm_killed, out.vm_paused) == (1, 0, 0), pol
    scrubbed = fc("kernel", "none", 0, "4K", first_touch="scrub")
    assert model_scenario(scrubbed).cited == ()
    assert oracle.outcome("minimum", scrubbed).host_panic == 0  # slab AO: ignored (-EBUSY)


def test_the_model_answers_checked_kernel_reads_of_guest_memory(oracle: ModelOracle) -> None:
    # "Risk: folios with failed memory not marked HWpoison": a PG_hwpoison-checking kernel
    # user reads a page the minimum was told about (scrub) but did not mark (C4) ...
    told = fc("gmem_shared", first_touch="kernel_checked")
    assert model_scenario(told).cited == ()
    # ... while the first checked read of a latent error is a plain kernel load (R47)
    assert oracle.outcome("mainline", told).host_panic == 1


# --------------------------------------------------------------------------- coverage


def _sampled_kinds() -> list[FailureClass]:
    """One class per (memory, page size, footprint, second fault, first touch) seen by the
    default sampler in a short run, and per VM type for one-page faults: every kind of class
    the defaults produce."""
    t = engine.sample(load_fleet(), 4096, seed=3)
    kinds: dict[tuple[Any, ...], FailureClass] = {}
    for c in t.classes:
        kinds.setdefault((c.memory, c.page_size, c.same_folio, c.second_fault,
                          c.first_touch, c.vm_type if c.pages_hit == 1 else ""), c)
    return sorted(kinds.values())


def test_every_sampled_kind_of_class_runs_under_every_policy(oracle: ModelOracle) -> None:
    classes = _sampled_kinds()
    assert {c.memory for c in classes} == {"gmem_private", "gmem_shared", "hugetlb_free",
                                           "vmm", "kernel"}
    for pol in POLICIES:
        for c in classes:
            out = oracle.outcome(pol, c)
            assert all(v >= 0 for v in out.as_tuple())
            assert out.guest_gib_lost <= max(c.vm_gib, 0) + 1e-9, (pol, c.key())
            if c.consumed or c.memory in ("hugetlb_free", "kernel"):
                assert out.early_kill_missed == 0, (pol, c.key())


@pytest.mark.parametrize(("cls", "why"), [
    (fc("kernel", "none", 0, "4K", first_touch="guest_read"), "do not read kernel memory"),
    (fc("vmm", page_size="4K", first_touch="guest_read"), "VMM's own memory"),
    (fc(first_touch="vmm_read"), "private guest memory"),
    (fc("hugetlb_free", "none", 0, first_touch="vmm_read"), "free HugeTLB folio"),
])
def test_classes_no_fleet_can_produce_are_refused(cls: FailureClass, why: str) -> None:
    with pytest.raises(ImpossibleClass, match=why):
        ModelOracle().outcome("minimum", cls)


def test_prefetch_in_processes_gives_the_same_outcomes() -> None:
    classes = [GUEST_READ_2M, fc("gmem_shared", first_touch="vmm_read"),
               fc("vmm", page_size="4K", first_touch="kernel_unchecked")]
    a, b = ModelOracle(), ModelOracle()
    a.prefetch(["minimum", "unmap"], classes, workers=2)
    assert a.model_runs == 6
    for pol in ("minimum", "unmap"):
        for c in classes:
            assert a.outcome(pol, c) == b.outcome(pol, c)


def test_guest_loss_is_scaled_from_the_small_model_vm() -> None:
    cls = fc(vm_gib=32, page_size="1G", pages_hit=4, same_folio=False)
    sc = model_scenario(cls)
    assert sc.real_folio_bytes == 1 << 30 and sc.folio_bytes < sc.real_folio_bytes
    # two lost folios and three offlined 4 KiB pages
    lost = 2 * sc.folio_bytes + 3 * 4096
    out = outcome_for(cls, sc, {"guest_bytes_lost": lost, "vm_states": {"vm0": "running"}})
    assert out.guest_gib_lost == pytest.approx(2 + 3 * 4096 / 2**30)
    out = outcome_for(cls, sc, {"guest_bytes_lost": 0, "vm_states": {"vm0": "killed"}})
    assert out == Outcome(vm_killed=1, guest_gib_lost=32)


# --------------------------------------------------------------------------- CLI



def test_fleet_runs_the_model_with_the_defaults() -> None:
    r = CliRunner().invoke(app, ["fleet", "--host-years", "64", "--workers", "1",
                                    "--json"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["policies"] == POLICIES and doc["failure_classes"] > 20
    rate = {(x["policy"], x["outcome"]): x["per_million_vm_hours"]["estimate"]
            for x in doc["rates"]}
    assert rate[("kill-vm", "vm_killed")] > rate[("minimum", "vm_killed")]
    assert rate[("unmap", "repeated_consumption")] <= rate[("minimum", "repeated_consumption")]
    r = CliRunner().invoke(app, ["fleet", "--host-years", "64", "--workers", "1",
                                    "--policy", "minimum", "--policy", "kill-vm"])
    assert r.exit_code == 0, r.output
    assert "kill-vm" in r.output and "vm killed" in r.output


def test_fleet_takes_an_inline_policy_as_every_command_does() -> None:
    """docs/policies.md: an inline policy's name is a policy everywhere a policy is taken.
    The two spellings of one policy are one column; a name that is no policy is refused."""
    r = CliRunner().invoke(app, ["fleet", "--host-years", "64", "--workers", "1", "--json",
                                 "--policy", "minimum{unmap_stage2=folio}",
                                 "--policy", "{base: minimum, unmap_stage2: folio}"])
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["policies"] == ["minimum{unmap_stage2=folio}"]
    r = CliRunner().invoke(app, ["fleet", "--host-years", "64", "--policy", "minimu"])
    assert r.exit_code == 2
    assert "--policy: unknown policy 'minimu'" in r.output and "did you mean 'minimum'" \
        in r.output


def test_the_oracle_builds_each_class_scenario_and_its_key_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Under every policy, cached or not, a class's scenario is built once and its run key
    (a JSON text) made once: a fleet whose model runs are cached costs lookups, not
    rebuilding (``memfail fleet --host-years 20000`` on a warm cache: 25 s before, 4 s)."""
    import json as json_mod

    import memfail.fleet.oracle as om

    built: list[FailureClass] = []
    keys = 0
    real_dumps = json_mod.dumps

    def counting_scenario(cls: FailureClass) -> Any:
        built.append(cls)
        return model_scenario(cls)

    def counting_dumps(*a: Any, **k: Any) -> str:
        nonlocal keys
        keys += 1
        return real_dumps(*a, **k)

    monkeypatch.setattr(om, "model_scenario", counting_scenario)
    calls: list[str] = []

    def runner(profile: str, policy: str, sc: Any) -> dict[str, Any]:
        calls.append(policy)
        return {}

    o = ModelOracle(runner=runner)
    classes = [fc(), fc(vm_gib=16), fc(page_size="1G")]
    monkeypatch.setattr(om.json, "dumps", counting_dumps)
    for _ in range(2):
        for pol in ("mainline", "minimum", "future"):
            for c in classes:
                o.outcome(pol, c)
    assert sorted(map(repr, built)) == sorted(map(repr, classes))
    # fc() and fc(vm_gib=16) share one run: one key per scenario object, not per lookup
    assert keys == len(classes)
    assert len(calls) == 3 * 2  # two distinct runs per policy
