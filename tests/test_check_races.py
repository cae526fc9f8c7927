"""`--races`: composite events split at kernel lock boundaries and interleaved (races.py),
and their replay as scenarios of `stage` steps (stage_action.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from memfail.check import races
from memfail.check.config import load_config_text
from memfail.check.explorer import FAIL, Bounds, Options, explore
from memfail.check.model_system import ModelState, ModelSystem

CFG = """\
policies: [unmap]
geometry: {pmd_order: 2, pud_order: 3}
host: {memory: 8G, hugepages: {2M: 2}}
processes:
  - {name: qemu0, threads: [main, vcpu0], mce_kill: {main: early, vcpu0: late}, sigbus: handler}
guest_memfd:
  - {name: gmem0, size: 2M, backing: 2M, flags: [mmap, init_shared]}
vms:
  - {name: vm0, vmm: qemu0, gmem: gmem0, type: sw-protected}
events:
  - {event: convert, vm: vm0, page: 0, to: private, limit: 1}
  - {event: vcpu_access, vm: vm0, page: 0}
  - {event: hw_error, vm: vm0, page: 0, detect: scrub}
bounds: {depth: 8, errors: 1}
"""


def pick(sysm: ModelSystem, s: ModelState, kind: str, stage: str | None = None) -> Any:
    """The enabled label of this kind (a continuation at ``stage`` if given)."""
    for label in sysm.enabled(s):
        if stage is None and label[0] == kind:
            return label
        if stage is not None and races.is_continuation(label) and \
                races.origin(label)[0] == kind and label[1][1][1] == stage:
            return label
    raise AssertionError(f"{kind} {stage} not enabled in {sysm.enabled(s)}")


def vm0(s: ModelState) -> Any:
    return s.host.ext["vms"]["vm0"]


def test_fault_straddling_memory_failure_is_caught_by_mmu_invalidate_seq() -> None:
    """A stage-2 fault that looked the page up before memory_failure() recorded the error
    and tries to map it after the zap: reachable only with --races; KVM's
    mmu_invalidate_seq check makes it retry, and the retry's fault check refuses the page."""
    sysm = ModelSystem(load_config_text(CFG), "unmap", races=True)
    s = sysm.initial()
    pfn = sysm.pfn_of[("vm0", 0)]
    conv = pick(sysm, s, "convert")                       # page 0 becomes private: zapped
    s = sysm.step(s, conv)
    s = sysm.step(s, pick(sysm, s, "convert", "convert.folios"))
    assert not s.inflight and 0 not in vm0(s).spte
    s = sysm.step(s, pick(sysm, s, "vcpu_access"))        # fault.get_pfn: the page is fine
    (_, stage, ctx, _held), = s.inflight
    assert stage == "fault.map" and ctx[1] == pfn
    s = sysm.step(s, pick(sysm, s, "hw_error"))           # mf.record under mf_mutex
    assert pfn in s.host.ext["gmem_table"]
    # mf.unmap needs the invalidate lock (shared), the folio lock and mmu_lock: free now
    s = sysm.step(s, pick(sysm, s, "hw_error", "mf.unmap"))
    straddling = s
    fault = next(op for op in s.inflight if op[0][0] == "vcpu_access")
    assert fault[1] == "fault.map" and fault[2][0] != vm0(s).mmu_seq  # the snapshot is stale
    s = sysm.step(s, pick(sysm, s, "vcpu_access", "fault.map"))
    assert 0 not in vm0(s).spte, "a stale fault must not map the poisoned page"
    assert next(op for op in s.inflight if op[0][0] == "vcpu_access")[1] == "fault.get_pfn"
    s = sysm.step(s, pick(sysm, s, "vcpu_access", "fault.get_pfn"))
    assert 0 not in vm0(s).spte and not any(e.kind == "poison_consumed" for e in s.events)

    # The straddling state (a fault in flight across the zap) is only reachable with --races.
    plain = ModelSystem(load_config_text(CFG), "unmap")
    seen: set[int] = set()
    frontier = [plain.initial()]
    while frontier:
        t = frontier.pop()
        f = plain.fingerprint(t)
        if f in seen:
            continue
        seen.add(f)
        assert not t.inflight
        frontier += [plain.step(t, lab) for lab in plain.enabled(t)]
    assert sysm.fingerprint(straddling) not in seen


def test_races_explore_more_interleavings_with_the_same_kind_of_verdicts() -> None:
    """Over this alphabet, splitting at lock boundaries reaches more states; with KVM's
    retry and the folio lock, no property fails that did not fail without --races (a
    violation may take more steps: early-told is found after mf.notify, not at step 1)."""
    cfg = load_config_text(CFG)
    for policy in ("unmap", "kill-vm", "unusable", "future"):
        plain = explore(ModelSystem(cfg, policy), bounds=Bounds(max_depth=8),
                        options=Options(stop_when_all_fail=False))
        racy = explore(ModelSystem(cfg, policy, races=True), bounds=Bounds(max_depth=8),
                       options=Options(stop_when_all_fail=False))
        assert racy.states > plain.states
        for name, v in plain.verdicts.items():
            assert (v.status == FAIL) == (racy.verdicts[name].status == FAIL), (policy, name)
        if plain.verdicts["early-told"].status == FAIL:
            assert racy.verdicts["early-told"].depth == 3  # record, unmap, notify


def test_locks_block_conflicting_stages() -> None:
    held = frozenset({races.INV_X})
    assert races.conflicts(frozenset({races.INV_S}), held)
    assert not races.conflicts(frozenset({races.INV_S}), frozenset({races.INV_S}))
    assert not races.conflicts(frozenset({races.MF}), held)


def test_cli_races_option(tmp_path: Any, capsys: Any) -> None:
    """`--races` on the command line: JSON says so; the counterexample is a scenario of
    `stage` steps (with its diff trace beside it) that `memfail run` replays."""
    import json

    from memfail.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(CFG)
    rc = main(["check", str(path), "--races", "--json", "--out", str(tmp_path / "cex")])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1 and doc["races"] is True
    v = doc["results"][0]["verdicts"]["early-told"]
    assert v["status"] == "FAIL" and v["depth"] == 3
    assert v["file"].endswith("unmap--early-told.yaml")
    text = Path(v["file"]).read_text()
    assert [line.split('"name": ')[1].split(",")[0] for line in text.splitlines()
            if '"stage"' in line or "- stage:" in line] == \
        ['"mf.record"', '"mf.unmap"', '"mf.notify"']
    trace = Path(v["file"]).with_suffix(".trace.txt").read_text().splitlines()
    assert [line for line in trace if line.startswith("step ")] == [
        f"step {i}: hw_error(vm=vm0, page=0, detect=scrub) mf.{stage}"
        for i, stage in ((1, "record"), (2, "unmap"), (3, "notify"))]
    assert main(["run", v["file"], "-q"]) == 0


# --------------------------------------------------------------------------- replay: `stage`

SETUP = """\
policy: {policy}
host: {{memory: 8G, hugepages: {{2M: 2}}, geometry: {{pmd_order: 2, pud_order: 3}}}}
processes:
  - {{name: qemu0, threads: [main, vcpu0], sigbus: handler, mce_kill: {{main: early, vcpu0: late}}}}
steps:
  - vm_create: {{vm: vm0, vmm: qemu0, type: sw-protected}}
  - gmem_create: {{vm: vm0, fd: gmem0, size: 16K, flags: [mmap, init_shared], backing: 2M}}
  - mmap: {{proc: qemu0, name: vm0.ram, size: 16K, fd: gmem0, shared: true}}
  - memslot: {{vm: vm0, gpa: 0, size: 16K, gmem: gmem0, hva: vm0.ram}}
  - guest_access: {{vm: vm0, gpa: 0, op: write}}
  - guest_access: {{vm: vm0, gpa: 4K, op: write}}
  - guest_access: {{vm: vm0, gpa: 8K, op: write}}
  - guest_access: {{vm: vm0, gpa: 12K, op: write}}
"""

CONVERT = "[{set_attributes: {vm: vm0, gpa: 0, size: 4K, private: true}}]"
ACCESS = "[{guest_access: {vm: vm0, gpa: 0}}]"
MCE = "[{hw_error: {pfn: 0x100000, detect: scrub}}]"  # the frame behind gpa 0
VMM_READ = "[{mem_read: {proc: qemu0, thread: main, addr: vm0.ram}}]"

STRADDLING = SETUP.format(policy="unmap") + f"""\
  # page 0 becomes private (its SPTE is zapped)
  - stage: {{op: conv, event: convert, name: convert.attributes, actions: {CONVERT}}}
    expect: {{ret: convert.folios, events: [{{event: stage2_zap, vm: vm0, gfn_start: 0}}]}}
  - stage: {{op: conv, event: convert, name: convert.folios, actions: {CONVERT}}}
    expect: {{ret: done}}
  # a vCPU faults on it: kvm_gmem_get_pfn finds the page healthy
  - stage: {{op: fault, event: vcpu_access, name: fault.get_pfn, actions: {ACCESS}}}
    expect: {{ret: fault.map}}
  # patrol scrub finds an error in it: memory_failure() records it, then zaps stage 2
  - stage: {{op: mce, event: hw_error, name: mf.record, actions: {MCE}}}
    expect: {{ret: mf.unmap, mf: [{{type: guest_memfd page, result: Delayed}}]}}
  - stage: {{op: mce, event: hw_error, name: mf.unmap, actions: {MCE}}}
    expect: {{ret: mf.notify}}
  # the fault's mmu_invalidate_seq snapshot is stale: KVM retries
  - stage: {{op: fault, event: vcpu_access, name: fault.map, actions: {ACCESS}}}
    expect: {{ret: fault.get_pfn}}
  # the retry's fault check refuses the page: KVM_RUN fails, nothing is consumed
  - stage: {{op: fault, event: vcpu_access, name: fault.get_pfn, actions: {ACCESS}}}
    expect:
      ret: done
      events: [{{event: kvm_exit, errno: EHWPOISON}}, {{event: vm_state, vm: vm0, state: paused}}]
  - stage: {{op: mce, event: hw_error, name: mf.notify, actions: {MCE}}}
    expect: {{ret: done, events: [{{event: memory_failure, pfn: 0x100000}}]}}
expect:
  outcomes: {{consumptions: 0, hardware_corrupted_kb: 4}}
"""


def test_stage_names_are_the_checkers() -> None:
    from typing import get_args

    from memfail.check.stage_action import StageName

    assert set(get_args(StageName)) == set(races.STAGES)


def test_straddling_fault_replays_as_a_scenario_of_stages(tmp_path: Path) -> None:
    """The straddling fault of the checker test above, hand-written with `stage` steps:
    `memfail run` passes its expectations, and it ends where the checker's path ends."""
    from memfail.cli import main
    from memfail.scenario import load_scenario_text, run_scenario

    path = tmp_path / "straddling.yaml"
    path.write_text(STRADDLING)
    assert main(["run", str(path), "-q"]) == 0
    res = run_scenario(load_scenario_text(STRADDLING))
    assert res.ok and res.passed == 15
    assert [r.ret for r in res.steps if r.key == "stage"] == [
        "convert.folios", "done", "fault.map", "mf.unmap", "mf.notify", "fault.get_pfn",
        "done", "done"]
    assert not any(e.kind == "poison_consumed" for e in res.trace.events)
    # one trace step per scenario step: no nested Host.apply inside a stage
    assert [e.step for e in res.trace.events if e.kind == "action"] == \
        list(range(len(res.setup) + len(res.steps)))

    sysm = ModelSystem(load_config_text(CFG), "unmap", races=True)
    s = sysm.initial()
    for kind, stage in (("convert", None), ("convert", "convert.folios"), ("vcpu_access", None),
                        ("hw_error", None), ("hw_error", "mf.unmap"),
                        ("vcpu_access", "fault.map"), ("vcpu_access", "fault.get_pfn"),
                        ("hw_error", "mf.notify")):
        s = sysm.step(s, pick(sysm, s, kind, stage))
    assert not s.inflight and vm0(s).state == "paused" and 0 not in vm0(s).spte
    assert res.meminfo_after == dict(s.host.meminfo())
    assert res.mf_stats == dict(s.host.mf_stats())
    assert res.processes == {"qemu0": dict(s.host.process_status("qemu0"))}


def _stage_error(tmp_path: Path, capsys: Any, body: str, policy: str = "unmap") -> str:
    """Run SETUP + ``body``: exit status 2 and a one-line message, which is returned."""
    from memfail.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text(SETUP.format(policy=policy) + body)
    capsys.readouterr()
    assert main(["run", str(path), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"memfail: error: {path}:"), err
    return err


def test_stage_out_of_order_is_refused(tmp_path: Path, capsys: Any) -> None:
    err = _stage_error(tmp_path, capsys, f"""\
  - stage: {{op: vmm, event: vmm_access, name: hostfault.map, actions: {VMM_READ}}}
""")
    assert err.endswith("steps[8].stage.name: vmm_access 'vmm' is not in flight: its first "
                        "stage is hostfault.lookup now, not hostfault.map"), err
    err = _stage_error(tmp_path, capsys, f"""\
  - stage: {{op: mce, event: hw_error, name: mf.record, actions: {MCE}}}
  - stage: {{op: mce, event: hw_error, name: mf.notify, actions: {MCE}}}
""")
    assert err.endswith("steps[9].stage.name: hw_error 'mce' is in flight: its next stage is "
                        "mf.unmap, not mf.notify"), err
    err = _stage_error(tmp_path, capsys, """\
  - stage: {op: mce, event: hw_error, name: mf.record,
            actions: [{hw_error: {pfn: 0x100000, detect: latent}}]}
""")
    assert "is not split into stages in this state: it runs as one step now" in err
    err = _stage_error(tmp_path, capsys, f"""\
  - stage: {{op: mce, event: hw_error, name: mf.record, actions: {MCE}}}
  - stage: {{op: mce, event: scrub, name: mf.unmap, actions: [{{scrub: {{pfn: 0x100000}}}}]}}
""")
    assert "'mce' is in flight as hw_error with other actions" in err


def test_stage_whose_lock_another_op_holds_is_refused(tmp_path: Path, capsys: Any) -> None:
    # convert.attributes keeps the invalidate lock (exclusive) for convert.folios
    err = _stage_error(tmp_path, capsys, f"""\
  - stage: {{op: conv, event: convert, name: convert.attributes, actions: {CONVERT}}}
  - stage: {{op: fault, event: vcpu_access, name: fault.get_pfn, actions: {ACCESS}}}
""")
    assert err.endswith("steps[9].stage.name: stage fault.get_pfn of 'fault' cannot take the "
                        "invalidate lock: 'conv' holds it exclusive until its stage "
                        "convert.folios runs"), err
    # memory_failure() keeps mf_mutex from mf.record to mf.notify
    err = _stage_error(tmp_path, capsys, f"""\
  - stage: {{op: mce, event: hw_error, name: mf.record, actions: {MCE}}}
  - stage: {{op: mce2, event: hw_error, name: mf.record,
            actions: [{{hw_error: {{pfn: 0x100001, detect: scrub}}}}]}}
""")
    assert err.endswith("stage mf.record of 'mce2' cannot take mf_mutex: 'mce' holds it "
                        "until its stage mf.unmap runs"), err
    # an access that consumes the error calls memory_failure(), which waits for mf_mutex
    err = _stage_error(tmp_path, capsys, f"""\
  - stage: {{op: mce, event: hw_error, name: mf.record, actions: {MCE}}}
  - stage: {{op: vmm, event: vmm_access, name: hostfault.lookup, actions: {VMM_READ}}}
  - stage: {{op: vmm, event: vmm_access, name: hostfault.map, actions: {VMM_READ}}}
  - stage: {{op: vmm, event: vmm_access, name: hostfault.access, actions: {VMM_READ}}}
""", policy="minimum")
    assert err.endswith("stage hostfault.access of 'vmm' calls memory_failure(), which waits "
                        "for mf_mutex, held by 'mce': it runs after that op"), err


def test_stage_actions_are_checked_when_the_scenario_loads() -> None:
    import pytest

    from memfail.scenario import ScenarioError, load_scenario_text

    bad = SETUP.format(policy="unmap") + """\
  - stage: {op: x, event: fault, name: fault.get_pfn, actions: [{guest_access: {vm: vm0}}]}
"""
    with pytest.raises(ScenarioError, match=r"actions\[0\]\.guest_access\.gpa: Field required"):
        load_scenario_text(bad)
    with pytest.raises(ScenarioError, match="'stage' is not a model action"):
        load_scenario_text(bad.replace("{guest_access: {vm: vm0}}", "{stage: {}}"))
    with pytest.raises(ScenarioError, match="name"):
        load_scenario_text(bad.replace("fault.get_pfn", "fault.later"))


RACY_CFG = CFG.replace("policies: [unmap]", "policies: [minimum]").replace(
    "bounds:", "  - {event: vmm_access, vm: vm0, page: 0}\nbounds:")


def test_every_races_counterexample_replays(tmp_path: Path, capsys: Any) -> None:
    """`memfail check --races`: every counterexample is a scenario that `memfail run` passes.
    Under `minimum` a host fault that maps the page between mf.record and mf.unmap (which
    this policy does not unmap from the host) consumes the poison after the guest did."""
    import json

    from memfail.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(RACY_CFG)
    out = tmp_path / "cex"
    rc = main(["check", str(path), "--races", "--json", "--out", str(out)])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1
    verdicts = doc["results"][0]["verdicts"]
    files = {v["file"] for v in verdicts.values() if v["status"] == FAIL}
    assert None not in files and files == {str(p) for p in out.glob("*.yaml")}
    contained = verdicts["contained"]
    assert contained["status"] == FAIL and contained["depth"] == 7
    text = Path(contained["file"]).read_text()
    stages = [line for line in text.splitlines() if '"stage"' in line or "- stage:" in line]
    assert len(stages) == 6 and '"name": "hostfault.map"' in stages[2]
    assert '"expect": {"events": [{"event": "poison_consumed"' in stages[-1]
    failed = []
    for f in sorted(files):
        assert Path(f).with_suffix(".trace.txt").exists()
        code = main(["run", f])
        if code != 0:
            failed.append((Path(f).name, code, capsys.readouterr().out[-400:]))
        capsys.readouterr()
    assert not failed, f"counterexamples that do not replay: {failed}"


WALK_CFG = CFG.replace("bounds:", """\
  - {event: scrub, vm: vm0, page: 0}
  - {event: vmm_access, vm: vm0, page: 0, write: [false, true]}
  - {event: fault, vm: vm0, page: 1}
  - {event: punch_hole, vm: vm0, page: 0, pages: 4, limit: 1}
  - {event: release, vm: vm0, limit: 1}
bounds:""").replace("errors: 1", "errors: 2")


def test_random_interleavings_replay_to_the_checkers_state() -> None:
    """Any path the checker takes with --races (not only a shortest counterexample), written
    as a scenario, runs under `memfail run` without a refused stage and ends in the state
    the checker reached: the same meminfo, mf stats, processes and panic."""
    import random

    from memfail.check.counterexample import scenario_text
    from memfail.check.explorer import Verdict
    from memfail.scenario import load_scenario_text, run_scenario

    rng = random.Random(7)
    cfg = load_config_text(WALK_CFG)
    seen: set[str] = set()
    for policy in ("minimum", "unmap", "kill-vm"):
        sysm = ModelSystem(cfg, policy, races=True)
        for _ in range(12):
            s = sysm.initial()
            labels: list[Any] = []
            for _ in range(rng.randint(4, 12)):
                enabled = list(sysm.enabled(s))
                if not enabled:
                    break
                label = rng.choice(enabled)
                t = sysm.step(s, label)
                if sysm.fingerprint(t) == sysm.fingerprint(s):
                    continue  # did not happen now (memory_failure() waits for a lock)
                s, labels = t, [*labels, label]
            text, _ = scenario_text(sysm, Verdict("no-record-lost", FAIL, len(labels),
                                                  message="walk", labels=labels))
            seen.update(line.split('"name": "')[1].split('"')[0]
                        for line in text.splitlines() if '{"stage": ' in line or "- stage:" in line)
            res = run_scenario(load_scenario_text(text))
            assert res.meminfo_after == dict(s.host.meminfo()), text
            assert res.mf_stats == dict(s.host.mf_stats()), text
            assert res.processes == {"qemu0": dict(s.host.process_status("qemu0"))}, text
            assert (res.panicked is None) == (s.host.panicked is None), text
    assert len(seen) >= 14, sorted(seen)  # nearly every stage was replayed


def test_a_punch_hole_that_fails_its_checks_does_not_wait_for_the_invalidate_lock() -> None:
    """kvm_gmem_fallocate() refuses a range not aligned to the folio (-EINVAL, R71) before
    kvm_gmem_punch_hole() takes filemap_invalidate_lock: with a conversion holding that lock
    exclusive between its stages, such a punch hole runs (and frees nothing) while one of the
    whole folio waits (races.fallocate_fails_early)."""
    cfg = CFG.replace("  - {event: vcpu_access, vm: vm0, page: 0}\n", """\
  - {event: punch_hole, vm: vm0, page: 1, pages: 2, limit: 1}
  - {event: punch_hole, vm: vm0, page: 0, pages: 4, limit: 1}
""")
    sysm = ModelSystem(load_config_text(cfg), "unmap", races=True)
    s = sysm.initial()
    punches = {dict(lab[1])["pages"]: lab for _i, lab in sysm.entries
               if lab[0] == "punch_hole"}
    assert set(punches) == {2, 4}
    assert {punches[2], punches[4]} <= set(sysm.enabled(s)), "both run with no lock held"
    s = sysm.step(s, pick(sysm, s, "convert"))
    assert any(op[1] == "convert.folios" for op in s.inflight), "the conversion is in flight"
    enabled = set(sysm.enabled(s))
    assert punches[2] in enabled and punches[4] not in enabled
    frames = sysm._frames(s.host)
    t = sysm.step(s, punches[2])
    assert sysm._frames(t.host) == frames and t.inflight == s.inflight
