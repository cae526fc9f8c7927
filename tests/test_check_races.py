"""`--races`: composite events split at kernel lock boundaries and interleaved (races.py)."""

from __future__ import annotations

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
  - {name: vm0, vmm: qemu0, gmem: gmem0}
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
    """`--races` on the command line: JSON says so; counterexamples are diff traces only
    (stages are not scenario steps)."""
    import json

    from memfail.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(CFG)
    rc = main(["check", str(path), "--races", "--json", "--out", str(tmp_path / "cex")])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 1 and doc["races"] is True
    v = doc["results"][0]["verdicts"]["early-told"]
    assert v["status"] == "FAIL" and v["depth"] == 3
    assert v["file"].endswith("unmap--early-told.trace.txt")
    assert not list((tmp_path / "cex").glob("*.yaml"))
