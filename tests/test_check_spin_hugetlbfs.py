"""The SPIN engine under the hugetlbfs baseline (policy backing ``hugetlbfs``: guest memory is
a hugetlbfs memfd the VMM maps, failures take the kernel's HugeTLB path; the Promela model is
src/memfail/check/spin/hugetlbfs.py).

* Both engines complete on src/memfail/check/spin/agree-hugetlbfs.yaml with the same verdict
  per property and the same counterexample length, and every SPIN counterexample replays with
  `memfail run`.
* Seeded Python walks are forced through the Promela model, and SPIN simulations replayed on
  the Python model, with the same observation after every step (agree-hugetlbfs.yaml and the
  standard configuration's hugetlbfs preset); a walk paired with the wrong model is caught.
* `memfail check --engine spin` checks the standard configuration's hugetlbfs preset to the
  end, and refuses what the hugetlbfs model does not carry out.
* With --races (release and convert in stages) both engines give the same verdicts and
  counterexample lengths on agree-hugetlbfs.yaml, and seeded Python --races walks replay step
  by step in Promela.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from check_cfgs import SIGBUS_DISPOSITIONS, one_g
from memfail.check.config import STANDARD, load_config
from memfail.check.model_system import ModelSystem
from memfail.check.spin import AGREE_HUGETLBFS_CONFIG, AGREE_HUGETLBFS_GUESTS_CONFIG
from memfail.check.spin.agree import (
    agree_simulation,
    agree_walk,
    compare,
    replay_promela,
    replay_python,
    walk_python,
)
from memfail.check.spin.observe import layout
from memfail.check.spin.promela import render
from memfail.check.spin.stages import RacesRendered, render_races
from memfail.cli import main

WALKS, STEPS = 20, 12


def _system(config: Path = AGREE_HUGETLBFS_CONFIG, policy: str = "hugetlbfs") -> ModelSystem:
    s = ModelSystem(load_config(config), policy)
    s.initial()
    return s


def _label(rendered: Any, kind: str, **kw: Any) -> int:
    return next(i for i, lab in enumerate(rendered.labels) if lab[0] == kind and
                all(dict(lab[1]).get(a) == b for a, b in kw.items()))


def _check(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict]:
    rc = main(["check", "--json", *args])
    return rc, json.loads(capsys.readouterr().out)


def _replays(capsys: pytest.CaptureFixture[str], doc: dict) -> list[tuple[str, int, str]]:
    """`memfail run` of every counterexample file of ``doc``: the ones that fail."""
    failed = []
    for r in doc["results"]:
        for v in r["verdicts"].values():
            if v["status"] == "FAIL":
                code = main(["run", v["file"]])
                out = capsys.readouterr().out
                if code != 0:
                    failed.append((Path(v["file"]).name, code, out[-400:]))
    return failed


@pytest.mark.parametrize("size", ["2M", "1G"])
def test_verdicts_and_counterexample_lengths_equal(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str],
                                                   size: str) -> None:
    """agree-hugetlbfs.yaml, and the same on 1G HugeTLB pages (check_cfgs.one_g: the
    Promela folio is the 1G page, observe.frame_order)."""
    cfg = str(AGREE_HUGETLBFS_CONFIG if size == "2M" else one_g(AGREE_HUGETLBFS_CONFIG,
                                                                 tmp_path))
    rc_py, py = _check(capsys, cfg)
    rc_spin, spin = _check(capsys, cfg, "--engine", "spin", "--out", str(tmp_path / "cex"))
    assert rc_py == rc_spin == 1
    (a,), (b,) = py["results"], spin["results"]
    assert a["policy"] == b["policy"] == "hugetlbfs"
    assert a["complete"] and b["complete"], "both engines explore everything"
    assert sorted(a["coverage"]["events_fired"]) == sorted(b["coverage"]["events_fired"])
    for name, va in a["verdicts"].items():
        vb = b["verdicts"][name]
        assert (va["status"], va["depth"]) == (vb["status"], vb["depth"]), name
        if va["status"] == "FAIL":
            assert vb["message"] == va["message"]
    # the kdump kernel's read of the second raw page of a poisoned in-use folio (its own
    # flag is clear: PG_hwpoison is on the head) panics the host, found at depth 2 by both
    assert b["verdicts"]["no-host-panic"]["status"] == "FAIL"
    assert b["verdicts"]["no-host-panic"]["depth"] == 2
    assert not _replays(capsys, spin)


@pytest.mark.parametrize("size", ["2M", "1G"])
def test_python_walks_are_accepted_by_promela(size: str, tmp_path: Path) -> None:
    config = AGREE_HUGETLBFS_CONFIG if size == "2M" else one_g(AGREE_HUGETLBFS_CONFIG, tmp_path)
    system = _system(config)
    rendered = render(system)
    for seed in range(WALKS):
        diff = agree_walk(system, seed, STEPS, rendered)
        assert diff is None, f"walk seed {seed}: {diff}"


def test_spin_simulations_replay_on_python() -> None:
    system = _system()
    rendered = render(system)
    for seed in range(1, 4):
        diff = agree_simulation(system, seed, STEPS, rendered)
        assert diff is None, f"spin -n{seed}: {diff}"


def test_walks_on_the_standard_configuration() -> None:
    """The standard configuration's hugetlbfs preset: careless, hostile and confidential
    (SNP) guests, vcpu_mce and task_work, conversions, punch hole, release, kernel users."""
    system = _system(STANDARD)
    rendered = render(system)
    for seed in range(WALKS):
        diff = agree_walk(system, seed, STEPS, rendered)
        assert diff is None, f"walk seed {seed}: {diff}"
    diff = agree_simulation(system, 1, STEPS, rendered)
    assert diff is None, f"spin -n1: {diff}"


def test_walks_with_three_guests_and_two_errors() -> None:
    """agree-hugetlbfs-guests.yaml (too large for the Python engine to complete): AO vMCEs to a
    cooperative guest, machine checks waiting for their task work on two pages, a one-page
    conversion (4K stage-2 mappings), a hostile guest, an SNP guest whose VMM maps the memfd
    itself, released."""
    system = _system(AGREE_HUGETLBFS_GUESTS_CONFIG)
    rendered = render(system)
    for seed in range(WALKS):
        diff = agree_walk(system, seed, 2 * STEPS, rendered)
        assert diff is None, f"walk seed {seed}: {diff}"
    for seed in range(1, 3):
        diff = agree_simulation(system, seed, 2 * STEPS, rendered)
        assert diff is None, f"spin -n{seed}: {diff}"


@pytest.mark.parametrize("first,second", [("default", "ignore"), ("ignore", "default")])
def test_walks_with_vmms_without_a_sigbus_handler(first: str, second: str,
                                                  tmp_path: Path) -> None:
    """agree-hugetlbfs.yaml and agree-hugetlbfs-guests.yaml with their first two VMMs not
    QEMU: the default action kills a VMM at its first memory-failure SIGBUS; SIG_IGN drops
    kill_procs' AO and kvm_send_hwpoison_signal's AR (send_sig_mceerr, not forced) and dies
    of a forced one. Walks and a simulation agree, atomic and with --races."""
    for config in (AGREE_HUGETLBFS_CONFIG, AGREE_HUGETLBFS_GUESTS_CONFIG):
        text = config.read_text()
        assert text.count("sigbus: handler") >= 2
        text = text.replace("sigbus: handler", f"sigbus: {first}", 1)
        text = text.replace("sigbus: handler", f"sigbus: {second}", 1)
        cfg = tmp_path / config.name
        cfg.write_text(text)
        system = _system(cfg)
        rendered = render(system)
        for seed in range(WALKS // 2):
            diff = agree_walk(system, seed, STEPS, rendered)
            assert diff is None, f"{config.name}, walk seed {seed}: {diff}"
        diff = agree_simulation(system, 1, STEPS, rendered)
        assert diff is None, f"{config.name}, spin -n1: {diff}"
        races = ModelSystem(load_config(cfg), "hugetlbfs", races=True)
        races.initial()
        rendered_races = render_races(races)
        for seed in range(3):
            diff = agree_walk(races, seed, 2 * STEPS, rendered_races)
            assert diff is None, f"{config.name} --races, walk seed {seed}: {diff}"


def test_walks_with_no_spare_huge_page(tmp_path: Path) -> None:
    """agree-hugetlbfs.yaml with no spare huge page: after a punch hole of a poisoned folio
    (dissolved) a fault finds none to allocate; the vCPU's KVM_RUN fails with -EFAULT (the
    VM runs on) and the VMM's own load dies of BUS_ADRERR, which no property counts."""
    cfg = tmp_path / "c.yaml"
    text = AGREE_HUGETLBFS_CONFIG.read_text()
    assert "hugepages: {2M: 3}" in text
    cfg.write_text(text.replace("hugepages: {2M: 3}", "hugepages: {2M: 2}"))
    system = _system(cfg)
    rendered = render(system)
    for seed in range(WALKS):
        diff = agree_walk(system, seed, STEPS, rendered)
        assert diff is None, f"walk seed {seed}: {diff}"
    seq = [_label(rendered, "punch_hole", vm="vm0"),
           _label(rendered, "hw_error", vm="vm0", page=0, detect="scrub"),
           _label(rendered, "vcpu_access", vm="vm0", page=1),
           _label(rendered, "vmm_access", vm="vm0", page=0)]
    a, b = replay_python(system, rendered, seq), replay_promela(system, rendered, seq)
    assert compare(system, rendered, a, b, ("python", "promela")) is None
    names = layout(system)
    state, alive = names.index("vm0.state"), names.index("vm0.alive")
    bad = [names.index("violated.sigbus-owner-only"), names.index("violated.unaffected-vms-run")]
    assert [(o[state], o[alive]) for o in b.observations[-2:]] == [(0, 1), (2, 0)]
    assert [b.observations[-1][i] for i in bad] == [0, 0]


def test_a_walk_paired_with_the_wrong_model_is_caught() -> None:
    """The comparison can fail. The Promela model of mainline (guest_memfd) differs from the
    hugetlbfs baseline before any step (vm2's memory is private there, the VMM maps none of
    it); the hugetlbfs model with QEMU taking the vCPU's action-required SIGBUS for memory of
    its own (exit(1), as when the VMM mapped guest memory twice) differs at the step whose
    SIGBUS it addresses: vm0's VMM would die."""
    py = _system(STANDARD)
    other = render(_system(STANDARD, "mainline"))
    a, b = replay_python(py, other, []), replay_promela(py, other, [])
    diff = compare(py, other, a, b, ("python", "promela"))
    assert diff is not None and diff.startswith("the initial state")
    assert "vm2[0].priv: python 0, promela 1" in diff
    good = render(py)
    vmce = "  :: else -> vmm_sig(v, p, 0, 1)\n  fi\n}"
    assert good.text.count(vmce) == 1
    wrong = replace(good, text=good.text.replace(vmce, "  :: else -> kill_vm(v)\n  fi\n}"))
    seq = [_label(good, "hw_error", vm="vm0", page=0, detect="latent"),
           _label(good, "vcpu_access", vm="vm0", page=0)]
    a = replay_python(py, good, seq)
    assert compare(py, good, a, replay_promela(py, good, seq), ("python", "promela")) is None
    diff = compare(py, wrong, a, replay_promela(py, wrong, seq), ("python", "promela"))
    assert diff is not None
    assert diff.startswith("step 2 (vcpu_access(vm=vm0, page=0, vcpu=0, write=False))")
    assert "vm0.alive: python 1, promela 0" in diff


def _outcome(seq: list[tuple[str, dict[str, Any]]], *fields: str,
             config: Path = STANDARD) -> list[tuple[int, int]]:
    """Both engines' final value of each field after ``seq`` (equal at every step first)."""
    system = _system(config)
    rendered = render(system)
    ks = [_label(rendered, kind, **kw) for kind, kw in seq]
    a, b = replay_python(system, rendered, ks), replay_promela(system, rendered, ks)
    assert compare(system, rendered, a, b, ("python", "promela")) is None
    names = layout(system)
    return [(a.observations[-1][names.index(f)], b.observations[-1][names.index(f)])
            for f in fields]


def test_a_consumed_error_is_a_vmce_whether_or_not_the_vmm_maps_the_memfd_itself() -> None:
    """QEMU maps its RAM once (S10): vm0's VMM maps the memfd itself (guest_memfd entry with
    mmap; the memslot registers that mapping and gmem_create's stand-in goes), vm1's VMM has
    the stand-in only. kill_me_maybe() addresses the vCPU's BUS_MCEERR_AR at the one mapping,
    inside guest RAM: QEMU injects the vMCE, the cooperative guest offlines the page and the
    VM runs on, in both. An SNP guest (vm2 of the standard configuration) gets no vMCE: QEMU
    keeps running and the next load meets the hwpoison entry, not the poison."""
    for vm in ("vm0", "vm1"):
        seq = [("hw_error", {"vm": vm, "page": 0, "detect": "latent"}),
               ("vcpu_access", {"vm": vm, "page": 0})]
        assert _outcome(seq, f"{vm}.state", f"{vm}.alive", f"{vm}[0].cons", f"{vm}[0].goff",
                        config=AGREE_HUGETLBFS_CONFIG) == [(0, 0), (1, 1), (1, 1), (1, 1)], vm
    vm2 = [("hw_error", {"vm": "vm2", "page": 0, "detect": "latent"}),
           ("vcpu_access", {"vm": "vm2", "page": 0}), ("vcpu_access", {"vm": "vm2", "page": 0})]
    assert _outcome(vm2, "vm2.state", "vm2.alive", "vm2[0].cons", "vm2[0].spte") == \
        [(0, 0), (1, 1), (1, 1), (0, 0)]


def test_a_refilled_hole_nobody_maps_tells_no_early_thread_in_both() -> None:
    """punch_hole frees vm0's folio, fallocate(ALLOCATE) refills the hole from the pool
    (hugetlbfs_fallocate: in the page cache, mapped by nobody); a scrubbed error there is
    marked but no EARLY thread is told, as nobody maps the page (early-told), in both."""
    seq: list[tuple[str, dict[str, Any]]] = [("punch_hole", {"vm": "vm0"}),
                                             ("realloc", {"vm": "vm0"})]
    assert _outcome(seq, "vm0[0].held", "vm0[0].pte", config=AGREE_HUGETLBFS_CONFIG) == \
        [(1, 1), (0, 0)]
    seq.append(("hw_error", {"vm": "vm0", "page": 0, "detect": "scrub"}))
    assert _outcome(seq, "vm0[0].rec", "violated.early-told",
                    config=AGREE_HUGETLBFS_CONFIG) == [(1, 1), (1, 1)]


def test_a_default_vm_converting_to_private_changes_nothing_in_both(tmp_path: Path) -> None:
    """agree-hugetlbfs.yaml with vm0 a default VM: KVM_SET_MEMORY_ATTRIBUTES(PRIVATE) fails
    with -EINVAL (kvm_supported_mem_attributes()), so the page stays shared and the huge SPTE
    stays; the sw-protected vm0 of the shipped file makes it private (4K SPTEs)."""
    text = AGREE_HUGETLBFS_CONFIG.read_text()
    assert ", type: sw-protected}" in text
    path = tmp_path / "default.yaml"
    path.write_text(text.replace(", type: sw-protected}", "}"))
    seq = [("vcpu_access", {"vm": "vm0", "page": 1}),
           ("convert", {"vm": "vm0", "page": 0, "pages": 1, "to": "private"})]
    assert _outcome(seq, "vm0[0].priv", "vm0[1].spte", config=path) == [(0, 0), (1, 1)]
    assert _outcome(seq, "vm0[0].priv", "vm0[1].spte", config=AGREE_HUGETLBFS_CONFIG) == \
        [(1, 1), (0, 0)]


def test_an_ao_error_leaves_a_hwpoison_entry_and_a_second_raw_page_joins_silently() -> None:
    """Patrol scrub on vm0 page 0: PG_hwpoison, a hwpoison entry in the VMM's huge PTE, stage
    2 zapped; on page 1 of the same folio: the raw list only (-EHWPOISON)."""
    seq = [("hw_error", {"vm": "vm0", "page": 0, "detect": "scrub"}),
           ("hw_error", {"vm": "vm0", "page": 1, "detect": "scrub"})]
    assert _outcome(seq, "vm0[0].pte", "vm0[0].spte", "vm0[1].rec", "vm0.alive") == \
        [(2, 2), (0, 0), (1, 1), (1, 1)]


def test_spin_checks_the_standard_hugetlbfs_preset_to_the_end(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, doc = _check(capsys, "--engine", "spin", "--policy", "hugetlbfs",
                     "--out", str(tmp_path))
    assert doc["config"] == "standard"
    (res,) = doc["results"]
    assert res["policy"] == "hugetlbfs" and res["complete"]
    assert {v["status"] for v in res["verdicts"].values()} <= {"PASS", "FAIL"}
    assert not res["coverage"]["events_never"]
    assert rc == (1 if any(v["status"] == "FAIL" for v in res["verdicts"].values()) else 0)
    assert not _replays(capsys, doc)


@pytest.mark.parametrize("event, says", [
    ("{event: fault, vm: vm0, page: 0}", ["'fault'", "backing hugetlbfs"]),
    # the file would grow by a huge page (the Python model allocates it from the pool)
    ("{event: realloc, vm: vm0, page: 0, pages: 4}", ["realloc on vm0", "past the VM's huge "
                                                      "page", "page + pages <= 2"]),
], ids=["fault", "realloc-past-end"])
def test_an_event_outside_the_hugetlbfs_model_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], event: str, says: list[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(AGREE_HUGETLBFS_CONFIG.read_text().replace(
        "events:\n", f"events:\n  - {event}\n", 1))
    rc = main(["check", str(cfg), "--engine", "spin"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and all(s in err[0] for s in says), err


def test_a_hugetlbfs_refusal_leaves_the_baseline_out_of_a_file_with_other_policies(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A vCPU thread's own load (`vmm_access` with `thread: vcpu0`), which only the hugetlbfs
    baseline's model refuses, in a file that also lists minimum: the baseline is left out
    (stderr and the JSON's `skipped`, with the file, line and field) and minimum is
    checked; asked for with --policy it is refused."""
    cfg = tmp_path / "c.yaml"
    text = re.sub(r"(?m)^policies: .*$", "policies: [hugetlbfs, minimum]", SIGBUS_DISPOSITIONS)
    cfg.write_text(text)
    line = next(i for i, x in enumerate(text.splitlines(), 1) if "thread: vcpu0" in x)
    rc = main(["check", str(cfg), "--engine", "spin", "--json"])
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert rc in (0, 1) and [r["policy"] for r in doc["results"]] == ["minimum"]
    (skip,) = doc["skipped"]
    assert skip["policy"] == "hugetlbfs"
    assert skip["reason"].startswith(f"{cfg}:{line}: events[2].thread: vmm_access is "
                                     "modelled for backing hugetlbfs by the VMM's main thread")
    assert " ".join(err.split()) == f"--engine spin: not checking {skip['reason']}"
    rc = main(["check", str(cfg), "--engine", "spin", "--policy", "hugetlbfs"])
    assert rc == 2 and "events[2].thread: vmm_access" in capsys.readouterr().err


def test_the_pool_drift_of_a_realloc_past_the_end_is_what_the_refusal_avoids(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rendered anyway, a realloc past the VM's huge page gives a walk the step-by-step
    comparison rejects at that step: hugetlbfs_fallocate() added the file's second huge page
    from the pool in the Python model, and the Promela model has none to add (``pool.free``)."""
    from memfail.check.spin import hugetlbfs

    cfg = tmp_path / "c.yaml"
    cfg.write_text(AGREE_HUGETLBFS_CONFIG.read_text().replace(
        "events:\n", "events:\n  - {event: realloc, vm: vm1, page: 0, pages: 4}\n", 1))
    monkeypatch.setattr(hugetlbfs, "check_supported", lambda system: None)
    system = _system(cfg)
    rendered = render(system)
    seq = [_label(rendered, "release", vm="vm0"), _label(rendered, "realloc", vm="vm1")]
    walk = replay_python(system, rendered, seq)
    promela = replay_promela(system, rendered, seq)
    assert walk.blocked is None and promela.blocked is None
    got = compare(system, rendered, walk, promela, ("python", "promela"))
    assert got is not None and got.startswith("step 2 (realloc(vm=vm1") and \
        "pool.free: python 1, promela 2" in got, got


# Two VMs on hugetlbfs memfds: VM b's error, VM b's and VM a's punch holes and refaults (a VM
# refaults into the frame the other freed: promela.frame_slots), VM a's VMM closing its fd
# (the mapping keeps the memfd: nothing freed; punch hole and fallocate through the fd do
# nothing after it) and VM a's release after that close (its munmap frees the folio).
CLOSE_AND_TWO_HOLES = """\
name: close-and-two-holes
policies: [future, hugetlbfs]
host: {memory: 8G, hugepages: {2M: 3}}
processes:
  - {name: qa, threads: [main, vcpu0], mce_kill: {main: early, vcpu0: late}, sigbus: handler}
  - {name: qb, threads: [main, vcpu0], mce_kill: {main: early, vcpu0: late}, sigbus: handler}
guest_memfd:
  - {name: ga, size: 2M, backing: 2M, flags: [mmap, init_shared]}
  - {name: gb, size: 2M, backing: 2M, flags: [mmap, init_shared]}
vms:
  - {name: a, type: default, vmm: qa, gmem: ga}
  - {name: b, type: default, vmm: qb, gmem: gb}
events:
  - {event: hw_error, vm: b, page: 1, detect: [latent, scrub]}
  - {event: vcpu_access, vm: b, page: 1}
  - {event: punch_hole, vm: b, page: 0, pages: 4, limit: 1}
  - {event: vcpu_access, vm: a, page: 1}
  - {event: punch_hole, vm: a, page: 0, pages: 4, limit: 1}
  - {event: close, vm: a, limit: 1}
  - {event: release, vm: a, limit: 1}
bounds: {depth: 30, errors: 1}
"""


@pytest.mark.parametrize("races", [False, True], ids=["atomic", "races"])
def test_a_close_and_punch_holes_on_both_vms_agree(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], races: bool) -> None:
    """close, and punch hole on a VM other than the first, under both engines: both complete
    with the same verdicts and depths (future and hugetlbfs, atomic and --races), every event
    fires in both, and seeded walks agree step by step, close and refaults into the other
    VM's freed frame included."""
    cfg = tmp_path / "close.yaml"
    cfg.write_text(CLOSE_AND_TWO_HOLES)
    flags = ["--races"] if races else []
    rc_py, py = _check(capsys, str(cfg), "--workers", "2", *flags)
    rc_spin, spin = _check(capsys, str(cfg), "--engine", "spin", *flags)
    assert rc_py == rc_spin
    for a, b in zip(py["results"], spin["results"], strict=True):
        assert a["policy"] == b["policy"] and a["complete"] and b["complete"]
        assert {n: (v["status"], v["depth"]) for n, v in a["verdicts"].items()} == \
            {n: (v["status"], v["depth"]) for n, v in b["verdicts"].items()}, a["policy"]
        assert b["coverage"]["events_never"] == [] == a["coverage"]["events_never"]
    for policy in ("future", "hugetlbfs"):
        s = ModelSystem(load_config(cfg), policy, races=races)
        s.initial()
        rendered = render_races(s) if races else render(s)
        for seed in range(8):
            assert agree_walk(s, seed, 12, rendered) is None, (policy, seed)


# --------------------------------------------------------------------------- --races


def _races_system(config: Path = AGREE_HUGETLBFS_CONFIG) -> ModelSystem:
    s = ModelSystem(load_config(config), "hugetlbfs", races=True)
    s.initial()
    return s


def test_races_verdicts_and_counterexample_lengths_equal(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--races: release and convert in stages in both engines, the same verdicts and
    counterexample lengths, and every SPIN counterexample (its stage steps included) replays."""
    cfg = str(AGREE_HUGETLBFS_CONFIG)
    rc_py, py = _check(capsys, cfg, "--races")
    rc_spin, spin = _check(capsys, cfg, "--races", "--engine", "spin", "--out", str(tmp_path))
    assert rc_py == rc_spin
    (a,), (b,) = py["results"], spin["results"]
    assert a["policy"] == b["policy"] == "hugetlbfs"
    assert a["complete"] and b["complete"], "both engines explore everything"
    assert sorted(a["coverage"]["events_fired"]) == sorted(b["coverage"]["events_fired"])
    for name, va in a["verdicts"].items():
        vb = b["verdicts"][name]
        assert (va["status"], va["depth"]) == (vb["status"], vb["depth"]), name
    # an error found while the release is in flight, after its munmap: memory_failure()
    # finds the folio unmapped and tells the EARLY thread nothing (R22 step 1)
    assert b["verdicts"]["early-told"]["status"] == "FAIL"
    cex = Path(b["verdicts"]["early-told"]["file"]).read_text()
    assert "release.munmap" in cex
    assert not _replays(capsys, spin)


def test_races_python_walks_are_accepted_by_promela() -> None:
    """Seeded Python --races walks, continuation labels included, step by step in Promela
    (agree-hugetlbfs.yaml and the standard configuration's hugetlbfs preset)."""
    for config in (AGREE_HUGETLBFS_CONFIG, STANDARD):
        system = _races_system(config)
        rendered = render_races(system)
        assert isinstance(rendered, RacesRendered)
        stages = set()
        for seed in range(WALKS):
            walk = walk_python(system, rendered, seed, 2 * STEPS)
            stages |= {rendered.labels[k][1][1][1] for k in walk.labels if k >= rendered.nbase}
            diff = compare(system, rendered, walk, replay_promela(system, rendered, walk.labels),
                           ("python", "promela"))
            assert diff is None, f"{config.name} walk seed {seed}: {diff}"
        assert "convert.folios" in stages, config.name
        diff = agree_simulation(system, 1, 2 * STEPS, rendered)
        assert diff is None, f"{config.name} spin -n1: {diff}"


def test_races_a_vcpu_fault_after_the_release_munmap_fails_in_both() -> None:
    """Between release.munmap and release.close the memslot's HVA has no VMA: hva_to_pfn
    fails (-EFAULT), nothing is faulted in again, the huge page stays unmapped."""
    system = _races_system()
    rendered = render_races(system)
    munmap = _label(rendered, "release", vm="vm0")
    access = _label(rendered, "vcpu_access", vm="vm0", page=0)
    walk = replay_python(system, rendered, [munmap, access])
    assert walk.blocked is None
    assert compare(system, rendered, walk, replay_promela(system, rendered, walk.labels),
                   ("python", "promela")) is None
    fields = layout(system)
    last = dict(zip(fields, walk.observations[-1], strict=True))
    assert (last["vm0[0].pte"], last["vm0[0].spte"], last["vm0[0].held"]) == (0, 0, 1)


def test_races_a_release_in_stages_with_an_error_and_a_refill_in_between() -> None:
    """release.munmap, an error found by scrub (the folio is unmapped: nobody told),
    fallocate(ALLOCATE) while the fd is open (the folio is still in the page cache: nothing),
    release.close (the memfd's last reference frees the folio), a punch hole through the closed
    fd (nothing),
    release.destroy: the same observation after every step in both engines."""
    from memfail.check import races

    system = _races_system()
    rendered = render_races(system)
    release = rendered.labels[_label(rendered, "release", vm="vm0")]
    seq = [_label(rendered, "release", vm="vm0"),
           _label(rendered, "hw_error", vm="vm0", page=0, detect="scrub"),
           _label(rendered, "realloc", vm="vm0"),
           rendered.labels.index(races.continuation(release, "release.close")),
           _label(rendered, "punch_hole", vm="vm0"),
           rendered.labels.index(races.continuation(release, "release.destroy"))]
    walk = replay_python(system, rendered, seq)
    assert walk.blocked is None
    assert compare(system, rendered, walk, replay_promela(system, rendered, seq),
                   ("python", "promela")) is None
    obs = [dict(zip(layout(system), o, strict=True)) for o in walk.observations]
    assert obs[2]["violated.early-told"] == 1
    assert [o["vm0[0].held"] for o in obs] == [1, 1, 1, 1, 0, 0, 0]


def test_a_private_page_inside_a_huge_range_keeps_a_shared_access_at_4k(tmp_path: Path) -> None:
    """agree-hugetlbfs.yaml at four pages a folio, vm0's page 1 made private (sw-protected,
    no guest_memfd behind the memslot): a shared access to page 0 maps at 4K. KVM tracks a
    hugepage's mixed attributes for every memslot of a VM with private memory
    (kvm_arch_post_set_memory_attributes, "KVM mustn't create a SHARED hugepage over a range
    that has PRIVATE GFNs"); the Python model checked the range's first and last page only,
    so a private page in the middle left it mapping the whole folio (found by random
    configurations, seed 741)."""
    text = AGREE_HUGETLBFS_CONFIG.read_text()
    for old, new in (("geometry: {pmd_order: 1, pud_order: 2}", "geometry: {pmd_order: 2, pud_order: 3}"),
                     ("convert, vm: vm0, page: 0, pages: 1", "convert, vm: vm0, page: 1, pages: 1"),
                     ("pages: 2", "pages: 4")):
        assert old in text
        text = text.replace(old, new)
    path = tmp_path / "four.yaml"
    path.write_text(text)
    seq = [("convert", {"vm": "vm0", "page": 1, "pages": 1, "to": "private"}),
           ("vcpu_access", {"vm": "vm0", "page": 0})]
    assert _outcome(seq, "vm0[1].priv", "vm0[0].spte", "vm0[2].spte", "vm0[3].spte",
                    config=path) == [(1, 1), (1, 1), (0, 0), (0, 0)]
