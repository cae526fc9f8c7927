"""`memfail check --engine spin --races`: the lock-granular stages (check/races.py) rendered in
Promela (check/spin/stages.py), checked against the Python engine's --races.

* The verdicts per policy and property are the same as the Python engine's on the races
  configuration of tests/test_check_races.py (both engines complete there), and every SPIN
  trail, written by --out, replays with `memfail run` (exit 0).
* Seeded Python --races walks (continuation labels included) are accepted step by step by the
  Promela model with the same observation; SPIN random simulations replay on the Python model.
* The straddling fault (a stage-2 fault whose snapshot predates memory_failure()'s zap) is
  retried in both engines; a Promela model that forgets the staleness is caught, naming the
  step.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from check_cfgs import SIGBUS_DISPOSITIONS, one_vm
from memfail.check import races
from memfail.check.config import load_config_text
from memfail.check.model_system import ModelSystem
from memfail.check.spin.agree import (
    agree_simulation,
    agree_walk,
    compare,
    replay_promela,
    replay_python,
    walk_python,
)
from memfail.check.spin.observe import layout
from memfail.check.spin.stages import CODE, RacesRendered, render_races
from memfail.cli import main

CFG = """\
policies: [mainline, minimum, unmap, kill-vm, unusable, future]
geometry: {pmd_order: 2, pud_order: 3}
host: {memory: 8G, hugepages: {2M: 2}}
processes:
  - {name: qemu0, threads: [main, vcpu0], mce_kill: {main: early, vcpu0: late}, sigbus: handler}
guest_memfd:
  - {name: gmem0, size: 2M, backing: 2M, flags: [mmap, init_shared]}
vms:
  - {name: vm0, vmm: qemu0, gmem: gmem0, type: sw-protected}   # a VM with private memory
events:
  - {event: convert, vm: vm0, page: 0, to: private, limit: 1}
  - {event: vcpu_access, vm: vm0, page: 0}
  - {event: hw_error, vm: vm0, page: 0, detect: scrub}
bounds: {depth: 40, errors: 1}
"""

# A second configuration: an error found by scrub or consumed, the VMM's own access (a host
# fault), punch hole and release in flight with the rest.
CFG_HOST = """\
policies: [mainline, unmap, future]
geometry: {pmd_order: 1, pud_order: 2}
host: {memory: 8G, hugepages: {2M: 2}}
processes:
  - {name: qemu0, threads: [main, vcpu0], mce_kill: {main: early, vcpu0: late}, sigbus: handler}
guest_memfd:
  - {name: gmem0, size: 2M, backing: 2M, flags: [mmap, init_shared]}
vms:
  - {name: vm0, vmm: qemu0, gmem: gmem0}
events:
  - {event: hw_error, vm: vm0, page: 0, detect: [latent, scrub]}
  - {event: vcpu_access, vm: vm0, page: 0}
  - {event: vmm_access, vm: vm0, page: 0}
  - {event: punch_hole, vm: vm0, page: 0, pages: 2, limit: 1}
  - {event: release, vm: vm0, limit: 1}
bounds: {depth: 40, errors: 1}
"""

WALKS, STEPS = 8, 20


def _system(policy: str, text: str = CFG) -> ModelSystem:
    s = ModelSystem(load_config_text(text), policy, races=True)
    s.initial()
    return s


def test_races_verdicts_equal_python_and_trails_replay(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "races.yaml"
    cfg.write_text(CFG)
    rc_py = main(["check", str(cfg), "--races", "--json"])
    py = json.loads(capsys.readouterr().out)
    rc_spin = main(["check", str(cfg), "--races", "--engine", "spin", "--json",
                    "--out", str(tmp_path / "cex")])
    spin = json.loads(capsys.readouterr().out)
    assert rc_py == rc_spin == 1
    for a, b in zip(py["results"], spin["results"], strict=True):
        assert a["policy"] == b["policy"] and a["complete"] and b["complete"]
        for name, va in a["verdicts"].items():
            vb = b["verdicts"][name]
            assert (va["status"], va["depth"]) == (vb["status"], vb["depth"]), \
                f"{a['policy']} {name}: python {va['status']}({va['depth']}), " \
                f"spin {vb['status']}({vb['depth']})"
            if va["status"] == "FAIL":
                assert vb["message"] == va["message"]
    files = [v["file"] for r in spin["results"] for v in r["verdicts"].values()
             if v["status"] == "FAIL"]
    assert files and None not in files
    for f in files:
        code = main(["run", f])
        assert code == 0, f"{Path(f).name}: {capsys.readouterr().out[-400:]}"
    # at least one trail goes through a stage (a `stage` step of the scenario)
    assert any("stage" in Path(f).read_text() for f in files)


@pytest.mark.parametrize("text,policy", [(CFG, "unmap"), (CFG, "mainline"),
                                         (CFG_HOST, "mainline"), (CFG_HOST, "unmap"),
                                         (CFG_HOST, "future")],
                         ids=["races-unmap", "races-mainline", "host-mainline", "host-unmap",
                              "host-future"])
def test_python_races_walks_and_spin_simulations_agree(text: str, policy: str) -> None:
    system = _system(policy, text)
    rendered = render_races(system)
    took_stage = False
    for seed in range(WALKS):
        walk = walk_python(system, rendered, seed, STEPS)
        took_stage |= any(k >= rendered.nbase for k in walk.labels)
        diff = agree_walk(system, seed, STEPS, rendered)
        assert diff is None, f"{policy}, walk seed {seed}: {diff}"
    assert took_stage, "the walks never took a continuation label"
    for seed in (1, 2):
        diff = agree_simulation(system, seed, STEPS, rendered)
        assert diff is None, f"{policy}, spin -n{seed}: {diff}"


def _agree_system(config: str, policy: str) -> ModelSystem:
    """The lock-granular system of agree-guest.yaml ("guest") or agree-two.yaml ("two")."""
    from memfail.check.config import load_config
    from memfail.check.spin import AGREE_GUEST_CONFIG, AGREE_TWO_CONFIG

    path = {"guest": AGREE_GUEST_CONFIG, "two": AGREE_TWO_CONFIG}[config]
    system = ModelSystem(load_config(path), policy, races=True)
    system.initial()
    return system


@pytest.mark.parametrize("policy", ["mainline", "mf-delayed-fix"])
@pytest.mark.parametrize("config,seed", [("guest", 2), ("two", 4)])
def test_races_walks_through_a_vmm_fault_on_a_poisoned_split_piece_agree(
        config: str, seed: int, policy: str) -> None:
    """Walks that once disagreed at ``hostfault.map``: the VMM faults on a 4K piece of a
    split guest_memfd HugeTLB folio whose raw page is PG_hwpoison (memory_failure() ignored
    it: no reference kept). __do_fault's check refuses the page in both engines
    (VM_FAULT_HWPOISON, R41): the Python model used to read the folio's flag (never set on
    a piece), map the page and consume it, then to evict the piece and allocate a new huge
    page; the Promela model did not check at all."""
    system = _agree_system(config, policy)
    rendered = render_races(system)
    walk = walk_python(system, rendered, seed, STEPS)
    assert any(rendered.labels[k][0] == "~step" and
               dict(rendered.labels[k][1])["stage"] == "hostfault.map" for k in walk.labels)
    assert agree_walk(system, seed, STEPS, rendered) is None


PRESETS = ["mainline", "mf-delayed-fix", "minimum", "unmap", "kill-vm", "unusable", "future"]


@pytest.mark.parametrize("policy", PRESETS)
@pytest.mark.parametrize("config", ["guest", "two"])
def test_races_walks_agree_on_the_guest_and_two_vm_configurations(config: str,
                                                                   policy: str) -> None:
    """Every preset, --races, on agree-guest.yaml (careless, hostile and confidential guests,
    machine checks waiting for their task work) and agree-two.yaml (two VMs): a seeded
    Python walk replayed step for step in Promela (a seed per preset; `python
    bench/bench_check_engines.py --races --agree N` runs more)."""
    system = _agree_system(config, policy)
    seed = 10 + PRESETS.index(policy)
    diff = agree_walk(system, seed, STEPS, render_races(system))
    assert diff is None, f"{policy}, walk seed {seed}: {diff}"


def _straddling(system: ModelSystem, rendered: RacesRendered) -> list[int]:
    """convert, its folios, a fault's get_pfn, memory_failure()'s record and unmap, then the
    fault's map (stale: retried) and its get_pfn again (refused by the fault check)."""
    index = {lab: k for k, lab in enumerate(rendered.labels)}

    def cont(kind: str, stage: str) -> int:
        return next(k for lab, k in index.items() if races.is_continuation(lab) and
                    races.origin(lab)[0] == kind and lab[1][1][1] == stage)

    def fresh(kind: str) -> int:
        return next(k for lab, k in index.items() if lab[0] == kind)

    return [fresh("convert"), cont("convert", "convert.folios"), fresh("vcpu_access"),
            fresh("hw_error"), cont("hw_error", "mf.unmap"), cont("vcpu_access", "fault.map"),
            cont("vcpu_access", "fault.get_pfn")]


def _python_walk(system: ModelSystem, rendered: RacesRendered, seq: list[int]) -> Any:
    return replay_python(system, rendered, seq)


def test_straddling_fault_is_retried_in_both_engines_and_a_wrong_model_is_caught() -> None:
    system = _system("unmap")
    rendered = render_races(system)
    seq = _straddling(system, rendered)
    py = _python_walk(system, rendered, seq)
    assert py.blocked is None
    pm = replay_promela(system, rendered, seq)
    assert compare(system, rendered, py, pm, ("python", "promela")) is None
    # the fault was not mapped: no SPTE on vm0's page 0 after the retried get_pfn
    spte = layout(system).index("vm0[0].spte")
    assert pm.observations[-1][spte] == 0
    # a Promela model that forgets mmu_invalidate_seq maps the poisoned page at fault.map
    wrong = RacesRendered(rendered.text.replace(f"&& st_{seq[2]} == {CODE['fault.map']} -> "
                                                f"sx_{seq[2]} = 1", "&& 0 -> skip"),
                          rendered.labels, rendered.props, nbase=rendered.nbase)
    assert wrong.text != rendered.text
    bad = replay_promela(system, wrong, seq)
    diff = compare(system, rendered, py, bad, ("python", "promela"))
    assert diff is not None and "fault.map" in diff and "vm0[0].spte" in diff, diff


def test_locks_and_mf_waits_are_guards_in_promela() -> None:
    """A stage whose lock another op in flight holds is not enabled in either engine: after
    mf.record (mf_mutex carried) a second memory_failure() cannot start."""
    system = _system("unmap")
    rendered = render_races(system)
    index = {lab: k for k, lab in enumerate(rendered.labels)}
    hw = next(k for lab, k in index.items() if lab[0] == "hw_error")
    s = system.step(system.initial(), rendered.labels[hw])
    assert s.inflight and s.inflight[0][1] == "mf.unmap"
    assert rendered.labels[hw] not in system.enabled(s)
    pm = replay_promela(system, rendered, [hw, hw])
    assert pm.blocked == 1


def test_a_kernel_user_faulting_through_the_vmm_mapping_waits_for_a_conversion() -> None:
    """A conversion in flight (between convert.attributes and convert.folios) holds the
    invalidate lock exclusive. vhost reaches guest memory through the VMM's page tables: with
    no PTE there its GUP faults the page in through kvm_gmem_fault_user_mapping, which takes
    the lock shared, so it waits (races.atomic_needs); vmcore reads the frame by pfn and does
    not. Both engines agree, step for step."""
    from memfail.check.config import load_config
    from memfail.check.spin import AGREE_CONVERT_CONFIG

    system = ModelSystem(load_config(AGREE_CONVERT_CONFIG), "mainline", races=True)
    s = system.initial()
    rendered = render_races(system)
    convert = next(lab for lab in rendered.labels if lab[0] == "convert" and
                   dict(lab[1]) == {"vm": "vm0", "page": 0, "pages": 1, "to": "private"})

    def kacc(user: str) -> Any:
        return next(lab for lab in rendered.labels if lab[0] == "kernel_access" and
                    dict(lab[1])["user"] == user and dict(lab[1])["page"] == 0)

    assert kacc("vhost") in system.enabled(s)
    s = system.step(s, convert)   # convert.attributes: page 0 private, its PTE gone
    enabled = system.enabled(s)
    assert kacc("vhost") not in enabled and kacc("vmcore") in enabled
    index = {lab: k for k, lab in enumerate(rendered.labels)}
    seq = [index[convert], index[kacc("vmcore")]]
    assert compare(system, rendered, replay_python(system, rendered, seq),
                   replay_promela(system, rendered, seq), ("python", "promela")) is None
    blocked = replay_promela(system, rendered, [index[convert], index[kacc("vhost")]])
    assert blocked.blocked == 1, "Promela lets vhost fault in during the conversion"


# A configuration written from the docs alone: a vCPU fault in flight when a punch hole zaps
# its new SPTE; both engines once disagreed on it (`contained` FAIL(9) in Python only).
CFG_PUNCH_FAULT = """\
name: user-one
policies: [unmap, future]
host: {memory: 8G, hugepages: {2M: 3}}
processes:
  - {name: qemu, threads: [main, vcpu0], mce_kill: {main: early, vcpu0: late}, sigbus: handler}
guest_memfd:
  - {name: g0, size: 2M, backing: 2M, flags: [mmap, init_shared]}
vms:
  - {name: vm0, type: sw-protected, vmm: qemu, gmem: g0}
events:
  - {event: hw_error, vm: vm0, page: 1, detect: [latent, scrub]}
  - {event: vcpu_access, vm: vm0, page: 1}
  - {event: vmm_access, vm: vm0, page: 1}
  - {event: kernel_access, vm: vm0, page: 1, user: [vhost, kcore]}
  - {event: convert, vm: vm0, page: 0, pages: 4, to: [private, shared], limit: 1}
  - {event: punch_hole, vm: vm0, page: 0, pages: 4, limit: 1}
  - {event: release, vm: vm0, limit: 1}
bounds: {depth: 40, errors: 1}
"""


def test_a_fault_whose_new_spte_was_zapped_starts_over_and_waits_for_the_punch_hole() -> None:
    """After release.munmap (the MMU notifier zaps the SPTE behind the VMM's PTE) a vCPU's
    load faults: fault.get_pfn and fault.map install the SPTE, punch.zap zaps it: the load
    takes a new EPT violation, so fault.access goes back to fault.get_pfn, which waits for
    the invalidate lock the punch hole holds until punch.free (kvm_gmem_punch_hole,
    kvm_gmem_get_pfn). It used to run the whole access there and fault the folio in under
    the punch hole's exclusive lock, so punch.free freed a page a live SPTE mapped."""
    system = _system("future", CFG_PUNCH_FAULT)
    rendered = render_races(system)
    index = {lab: k for k, lab in enumerate(rendered.labels)}
    access = next(lab for lab in rendered.labels if lab[0] == "vcpu_access")
    punch = next(lab for lab in rendered.labels if lab[0] == "punch_hole")

    def cont(op: Any, stage: str) -> Any:
        return (races.CONT, (("op", op), ("stage", stage)))

    release = next(lab for lab in rendered.labels if lab[0] == "release")
    vhost = next(lab for lab in rendered.labels if lab[0] == "kernel_access" and
                 dict(lab[1])["user"] == "vhost")
    # vhost faults page 1 into the VMM's mapping; release.munmap unmaps it and the MMU
    # notifier zaps its SPTE, so the vCPU's next load faults
    seq = [vhost, release, access, cont(access, "fault.map"), punch,
           cont(access, "fault.access")]
    s = system.initial()
    for lab in seq:
        assert lab in system.enabled(s), lab
        s = system.step(s, lab)
    assert cont(access, "fault.get_pfn") not in system.enabled(s), "faulted under punch.zap"
    s = system.step(s, cont(punch, "punch.free"))
    assert cont(access, "fault.get_pfn") in system.enabled(s)
    labels = [*seq, cont(punch, "punch.free"), cont(access, "fault.get_pfn")]
    ks = [index[lab] for lab in labels]
    assert compare(system, rendered, replay_python(system, rendered, ks),
                   replay_promela(system, rendered, ks), ("python", "promela")) is None
    early = replay_promela(system, rendered, [index[lab] for lab in seq] +
                           [index[cont(access, "fault.get_pfn")]])
    assert early.blocked == len(seq), "Promela lets the fault start over under punch.zap"


def _both_complete_and_equal(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             text: str) -> tuple[int, dict[str, Any]]:
    """`memfail check --races --json` of ``text`` by both engines: the same exit status,
    both complete, the same verdicts and depths per policy. The exit status and the Python
    engine's JSON."""
    cfg = tmp_path / "races.yaml"
    cfg.write_text(text)
    rc_py = main(["check", str(cfg), "--races", "--json"])
    py = json.loads(capsys.readouterr().out)
    rc_spin = main(["check", str(cfg), "--races", "--engine", "spin", "--json"])
    spin = json.loads(capsys.readouterr().out)
    assert rc_py == rc_spin
    for a, b in zip(py["results"], spin["results"], strict=True):
        assert a["complete"] and b["complete"]
        assert {n: (v["status"], v["depth"]) for n, v in a["verdicts"].items()} == \
            {n: (v["status"], v["depth"]) for n, v in b["verdicts"].items()}, a["policy"]
    return rc_py, py


def test_engines_agree_on_the_punch_fault_configuration(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, py = _both_complete_and_equal(tmp_path, capsys, CFG_PUNCH_FAULT)
    assert rc == 1
    future = next(r for r in py["results"] if r["policy"] == "future")
    assert {v["status"] for v in future["verdicts"].values()} == {"PASS"}


CFG_PUNCH_IN_MF = one_vm(
    "[{base: minimum, vm_on_error: kill}, kill-vm]",
    ["{event: hw_error, vm: vm0, page: 2, detect: scrub}",
     "{event: punch_hole, vm: vm0, page: 0, pages: 4, limit: 1}",
     "{event: vmm_access, vm: vm0, page: 2, limit: 1}"],
    "{depth: 20, errors: 1}", name="punch-inside-memory-failure")


def _cont(op: Any, stage: str) -> Any:
    """The continuation label of the event in flight ``op`` at ``stage``."""
    return (races.CONT, (("op", op), ("stage", stage)))


def test_a_folio_punched_during_memory_failure_is_freed_when_it_returns() -> None:
    """memory_failure() holds a reference on the folio from get_hwpoison_page() until it
    returns (R19; a claiming policy drops it then): a punch hole between mf.record and mf.notify takes the folio out of the
    page cache but cannot free it to the pool; mf.notify's put frees it. It used to go to
    the pool at punch.free, and the VMM's fault took it back while memory_failure() was
    still running (a no-poison-reuse FAIL kill-vm does not have)."""
    system = _system("minimum{vm_on_error=kill}", CFG_PUNCH_IN_MF)
    rendered = render_races(system)
    index = {lab: k for k, lab in enumerate(rendered.labels)}
    err = next(lab for lab in rendered.labels if lab[0] == "hw_error")
    punch = next(lab for lab in rendered.labels if lab[0] == "punch_hole")

    def free(s: Any) -> int:
        return s.host.hugetlb.hstate(s.host.geometry.pmd_order).free_huge_pages

    cont = _cont
    seq = [err, punch, cont(punch, "punch.free")]
    s = system.initial()
    for lab in seq:
        s = system.step(s, lab)
    assert free(s) == 0, "freed to the pool while memory_failure() holds it"
    for stage in ("mf.unmap", "mf.notify"):
        s = system.step(s, cont(err, stage))
    assert free(s) == 1, "memory_failure()'s put did not free the truncated folio"
    labels = [*seq, cont(err, "mf.unmap"), cont(err, "mf.notify")]
    ks = [index[lab] for lab in labels]
    assert compare(system, rendered, replay_python(system, rendered, ks),
                   replay_promela(system, rendered, ks), ("python", "promela")) is None
    # kill-vm marks on truncation and isolates on free: the deferred free isolates it then
    system = _system("kill-vm", CFG_PUNCH_IN_MF)
    rendered = render_races(system)
    index = {lab: k for k, lab in enumerate(rendered.labels)}
    s = system.initial()
    for lab in labels:
        s = system.step(s, lab)
    pfn = system.pfn_of[("vm0", 2)]
    assert free(s) == 0 and pfn in s.host.phys.isolated
    ks = [index[lab] for lab in labels]
    assert compare(system, rendered, replay_python(system, rendered, ks),
                   replay_promela(system, rendered, ks), ("python", "promela")) is None


def test_engines_agree_on_a_punch_inside_memory_failure(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Both engines, both policies: kill-vm keeps no-poison-reuse (its memory_failure()
    kills the VM before the folio is freed); minimum with vm_on_error: kill does not: a
    memory_failure() that finds its folio truncated skips the kill (folio->mapping gone),
    and the freed folio, unmarked (mark_on_truncate: false), is faulted in again."""
    cfg = tmp_path / "punch.yaml"
    cfg.write_text(CFG_PUNCH_IN_MF)
    main(["check", str(cfg), "--races", "--json"])
    py = json.loads(capsys.readouterr().out)
    main(["check", str(cfg), "--races", "--engine", "spin", "--json"])
    spin = json.loads(capsys.readouterr().out)
    for a, b in zip(py["results"], spin["results"], strict=True):
        assert a["complete"] and b["complete"]
        assert {n: (v["status"], v["depth"]) for n, v in a["verdicts"].items()} == \
            {n: (v["status"], v["depth"]) for n, v in b["verdicts"].items()}, a["policy"]
    status = {r["policy"]: r["verdicts"]["no-poison-reuse"]["status"] for r in py["results"]}
    assert status == {"minimum{vm_on_error=kill}": "FAIL", "kill-vm": "PASS"}


# A default VM (no private memory): KVM_SET_MEMORY_ATTRIBUTES(PRIVATE) fails with -EINVAL at
# once, before any lock (races.first_stage: one atomic step that changes nothing).
CFG_DEFAULT = """\
policies: [mainline, mf-delayed-fix, future]
geometry: {pmd_order: 1}
host: {memory: 8G, hugepages: {2M: 1}}
processes:
  - {name: q0, threads: [main], sigbus: handler}
guest_memfd:
  - {name: g0, size: 2M, backing: 2M, flags: [mmap, init_shared]}
vms:
  - {name: v0, vmm: q0, gmem: g0}
events:
  - {event: hw_error, vm: v0, page: 0, detect: scrub}
  - {event: convert, vm: v0, page: 0, pages: 2, to: [private, shared], limit: 1}
  - {event: vcpu_access, vm: v0, page: 0}
bounds: {depth: 20, errors: 1}
"""


def test_a_default_vm_converting_to_private_is_one_step_that_changes_nothing_in_both(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The Promela stages once ran a default VM's conversion to private as
    convert.attributes then convert.folios (made the pages private, merged the folio and
    dropped its PG_hwpoison under mainline), so SPIN's no-record-lost trail did not replay on
    the Python model (exit 3, EngineDisagreement). Now both engines take it as the one
    atomic step that fails, with the same verdicts and agreeing walks."""
    _both_complete_and_equal(tmp_path, capsys, CFG_DEFAULT)
    system = _system("mainline", CFG_DEFAULT)
    rendered = render_races(system)
    assert not any(lab[0] == "~step" and dict(lab[1])["stage"].startswith("convert.")
                   and dict(dict(lab[1])["op"][1]).get("to") == "private"
                   for lab in rendered.labels)
    for seed in range(WALKS):
        diff = agree_walk(system, seed, STEPS, rendered)
        assert diff is None, f"walk seed {seed}: {diff}"


@pytest.mark.parametrize("seed", [0, 1, 5])
def test_races_walks_with_a_physical_read_after_the_vmm_unmapped_agree(seed: int) -> None:
    """agree-convert.yaml under minimum, --races: walks where vm0's release has unmapped the
    VMM's mapping (release.munmap) and a physical reader (kcore, vmcore) then reads a shared
    page whose failure is only in the policy's table. Both engines reach the guest_memfd
    folio and panic (the Python model used to find no page there: kvm.py _hva_maps_gmem)."""
    from memfail.check.config import load_config
    from memfail.check.spin import AGREE_CONVERT_CONFIG

    system = ModelSystem(load_config(AGREE_CONVERT_CONFIG), "minimum", races=True)
    system.initial()
    diff = agree_walk(system, seed, STEPS, render_races(system))
    assert diff is None, f"walk seed {seed}: {diff}"


CFG_UNBOUND = """\
name: unbound
policies: [kill-vm, minimum]
host: {hugepages: {2M: 2}}
processes:
  - {name: q0, threads: [main], sigbus: handler}
guest_memfd:
  - {name: g0, size: 2M, backing: 2M, flags: [mmap]}
vms:
  - {name: vm0, vmm: q0, gmem: g0, type: sw-protected, behaviour: careless}
events:
  - {event: hw_error, vm: vm0, page: 0, detect: scrub}
  - {event: release, vm: vm0, limit: 1}
  - {event: guest_run, vm: vm0, page: 0}
"""


@pytest.mark.parametrize("policy", ["kill-vm", "minimum"])
def test_a_guest_load_between_the_release_close_and_vm_destroy_is_a_memory_fault_exit(
        policy: str) -> None:
    """After release.close unbinds the guest_memfd (kvm_gmem_release) and before
    release.destroy, a guest load finds no file in kvm_gmem_get_pfn(): -EFAULT, a
    KVM_EXIT_MEMORY_FAULT QEMU answers by converting and entering again, so the VM keeps
    running in the Python model. The Promela faultin() paused it ("kvm run failed", as for
    a punched folio with no frame to refill it): a walk of a random configuration
    differed there. Both now leave it running, and walks agree."""
    system = _system(policy, CFG_UNBOUND)
    rendered = render_races(system)
    release = ("release", (("vm", "vm0"),))
    labels = [release, _cont(release, "release.close"),
              ("guest_run", (("vm", "vm0"), ("page", 0), ("rounds", 2), ("vcpu", 0)))]
    seq = [rendered.labels.index(lab) for lab in labels]
    a, b = replay_python(system, rendered, seq), replay_promela(system, rendered, seq)
    assert a.blocked is None and b.blocked is None
    assert compare(system, rendered, a, b, ("python", "promela")) is None
    assert a.observations[-1][layout(system).index("vm0.state")] == 0  # running
    for seed in range(WALKS):
        diff = agree_walk(system, seed, STEPS, rendered)
        assert diff is None, f"walk seed {seed}: {diff}"
    assert agree_simulation(system, 1, STEPS, rendered) is None


def test_vmms_without_a_sigbus_handler_with_races_compile_and_agree(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The dispositions configuration with --races: its host-fault stage runs a vCPU
    thread's whole load (ev_vmm_vcpu) in one d_step, which SPIN bounds; expanding the
    disposition's kill at each of the load's action-required paths made it too long
    (`spin -a`: "d_step sequence too long", exit 2; walks, run by SPIN's simulator, never
    saw it). Both engines complete with the same verdicts."""
    text = re.sub(r"(?m)^policies: .*$", "policies: [mainline, minimum]", SIGBUS_DISPOSITIONS)
    assert "bounds: {errors: 1}" in text
    text = text.replace("bounds: {errors: 1}", "bounds: {depth: 40, errors: 1}")
    rc, py = _both_complete_and_equal(tmp_path, capsys, text)
    assert rc == 1 and [r["policy"] for r in py["results"]] == ["mainline", "minimum"]


def test_an_eight_page_folio_with_races_stays_inside_spins_d_step_bound(tmp_path: Path) -> None:
    """agree-two.yaml at pmd_order 3 (8-page folios) with --races: a vCPU thread's host-fault
    stage runs its whole load in one d_step, and SPIN (pangen's MAXDSTEP) bounds the
    statements of one. Each of the load's paths that killed the VMM expanded kill_vm, and its
    folio's free, once more (eleven times in ev_vmm_vcpu, seven in ev_vmm, five in kmm):
    `spin -a` refused the model ("d_step sequence too long"). The paths now end in sg_end and
    memory_failure()'s kills free the folio once at its end (kill_mark), so the model
    compiles."""
    import subprocess

    from memfail.check.spin import AGREE_TWO_CONFIG

    text = AGREE_TWO_CONFIG.read_text()
    assert "geometry: {pmd_order: 2, pud_order: 3}" in text and text.count("pages: 4") == 2
    text = text.replace("geometry: {pmd_order: 2, pud_order: 3}",
                        "geometry: {pmd_order: 3, pud_order: 4}").replace("pages: 4", "pages: 8")
    text = re.sub(r"(?m)^policies: .*$", "policies: [future]", text)
    system = ModelSystem(load_config_text(text), "future", True)
    system.initial()
    (tmp_path / "model.pml").write_text(render_races(system).text)
    p = subprocess.run(["spin", "-a", "model.pml"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0 and "rror" not in p.stdout, (p.stdout + p.stderr)[-400:]
