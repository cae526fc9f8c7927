"""The model adapter: `memfail check` over the real Host, end to end on small configurations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from memfail.check.backends import make_backend
from memfail.check.config import load_config_text, standard_config
from memfail.check.explorer import FAIL, PARTIAL, PASS, Bounds, Options, Result, explore
from memfail.check.model_system import ModelSystem


def built(sys: ModelSystem) -> ModelSystem:
    """The system with its initial Host built (set-up steps run)."""
    sys.initial()
    return sys

UNTOLD = """\
policies: [minimum]
host: {memory: 8G, hugepages: {2M: 2}}
processes:
  - {name: qemu0, threads: [main, vcpu0], mce_kill: {main: early}, sigbus: handler}
vms:
  - {name: vm0, vmm: qemu0, memory: 2M}
events:
  - {event: action, action: munmap, args: {proc: qemu0, addr: vm0.ram}, limit: 1}
  - {event: hw_error, vm: vm0, page: [0, 1], detect: scrub}
  - {event: vmm_access, vm: vm0, page: 0}
bounds: {depth: 4, errors: 1}
"""


def summary(r: Result) -> dict[str, Any]:
    return {"states": r.states, "transitions": r.transitions, "complete": r.complete,
            "verdicts": {n: (v.short(), v.labels) for n, v in r.verdicts.items()}}


def test_standard_config_explores_and_is_worker_independent() -> None:
    cfg = standard_config()
    sys = built(ModelSystem(cfg, cfg.policies[0]))
    one = explore(sys, bounds=Bounds(max_depth=3), options=Options(stop_when_all_fail=False))
    assert one.states > 1 and one.transitions >= one.states - 1
    with make_backend(workers=2) as b:
        two = explore(sys, b, Bounds(max_depth=3), Options(stop_when_all_fail=False))
    assert summary(one) == summary(two)


def test_standard_config_on_a_dask_cluster_matches_the_local_run() -> None:
    """A real scheduler and two worker processes on 127.0.0.1 reach the local verdicts,
    counterexamples and state counts on the model (states travel as snapshots)."""
    distributed = pytest.importorskip("distributed")
    cfg = standard_config()
    sys = built(ModelSystem(cfg, "minimum"))
    local = summary(explore(sys, bounds=Bounds(max_depth=3),
                            options=Options(stop_when_all_fail=False)))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            make_backend(scheduler=cluster.scheduler_address) as b:
        remote = summary(explore(sys, b, Bounds(max_depth=3),
                                 Options(stop_when_all_fail=False)))
    assert remote == local
    assert any(v[0].startswith("FAIL") for v in local["verdicts"].values())


def test_model_run_killed_and_resumed_reaches_the_same_result(tmp_path: Path) -> None:
    """A checkpoint holds the frontier's Host snapshots and their fingerprints; a run that
    stops at a states bound (as a kill would) and resumes, here on two workers, ends where an
    uninterrupted run ends."""
    cfg = standard_config()
    sys = built(ModelSystem(cfg, "unmap"))
    opts = Options(stop_when_all_fail=False)
    full = summary(explore(sys, bounds=Bounds(max_depth=4), options=opts))
    ck = Options(stop_when_all_fail=False, checkpoint_dir=tmp_path, checkpoint_every=0)
    part = explore(ModelSystem(cfg, "unmap"), bounds=Bounds(max_depth=4, max_states=60),
                   options=ck)
    assert part.stop_reason == "states" and part.states < full["states"]
    fresh = ModelSystem(cfg, "unmap")  # a new process would build the system again
    with make_backend(workers=2) as b:
        resumed = explore(fresh, b, Bounds(max_depth=4),
                          Options(stop_when_all_fail=False, checkpoint_dir=tmp_path,
                                  resume=True))
    assert summary(resumed) == full


def test_early_thread_not_told_when_vmm_unmapped_its_memory(tmp_path: Path) -> None:
    """After the VMM unmaps guest memory, an AO failure has nobody to tell (R12/R70)."""
    cfg = load_config_text(UNTOLD)
    sys = built(ModelSystem(cfg, "minimum"))
    r = explore(sys, bounds=Bounds(max_depth=4), options=Options(stop_when_all_fail=False))
    v = r.verdicts["early-told"]
    assert (v.status, v.depth) == (FAIL, 2)
    assert [lab[0] for lab in v.labels] == ["action", "hw_error"]  # type: ignore[index]
    assert r.verdicts["no-host-panic"].status in (PASS, "PARTIAL")
    from memfail.check.counterexample import write_counterexample
    from memfail.scenario.loader import load_scenario

    path = write_counterexample(tmp_path, sys, v)
    assert path.name == "minimum--early-told.yaml"
    sc = load_scenario(path)
    assert sc.policy == "minimum" and sc.steps[-1].key == "hw_error"
    assert "step 2: hw_error(vm=vm0, page=0, detect=scrub)" in \
        path.with_suffix(".trace.txt").read_text()


def test_policy_hooks_never_fired_come_from_policy_events() -> None:
    """Coverage of policy hooks: the PolicyEvent hooks seen vs POLICY_HOOKS."""
    from memfail.check.model_system import POLICY_HOOKS

    cfg = standard_config()
    sys = built(ModelSystem(cfg, "unusable"))
    r = explore(sys, bounds=Bounds(max_depth=3), options=Options(stop_when_all_fail=False))
    cov = r.coverage
    # unusable acts from its memory_failure hook (consumed/unconsumed: unusable); guest_memfd
    # folios it claims never reach kvm_gmem_error_folio
    assert {"memory_failure", "release"} <= set(cov.hooks_fired)
    assert set(cov.hooks_fired) | set(cov.hooks_never) == set(POLICY_HOOKS)
    assert not set(cov.hooks_fired) & set(cov.hooks_never)
    assert cov.hooks_never == [h for h in POLICY_HOOKS if h not in cov.hooks_fired]


def test_snapshots_copy_the_host_and_key_its_fingerprint() -> None:
    """A state's snapshot thaws to an equal, independent Host (fresh trace); the fingerprint
    survives a trip between processes' pickles; equal snapshots share the cached part."""
    import pickle
    from collections import Counter

    from memfail.check.encode import host_encoding
    from memfail.check.freeze import freeze, thaw

    cfg = standard_config()
    sys = built(ModelSystem(cfg, cfg.policies[0]))
    s = sys.initial()
    host = s.host
    copy = thaw(freeze(host))
    assert copy is not host and host_encoding(copy) == host_encoding(host)
    assert copy.rng.getstate() == host.rng.getstate() and copy.trace.events == []
    folio = next(iter(copy.phys.folios.values()))
    assert type(folio.refs) is Counter
    back = pickle.loads(pickle.dumps(s))
    assert back.blob == s.frozen() and sys.fingerprint(back) == sys.fingerprint(s)
    t = sys.step(s, sys.enabled(s)[0])
    assert sys.step(s, sys.enabled(s)[0]).host is not t.host
    assert host_encoding(s.host) == host_encoding(back.host)  # stepping left s alone


def test_primed_snapshots_round_trip_and_share_strings_however_they_were_made() -> None:
    """A snapshot made with the system's primer thaws (in this process or, the primer
    unpickled, in another) to an equal host, is smaller than a plain one, and is the same
    whether a field holds the thawed string or the model's own (interned) constant; an
    unknown primer is named."""
    import pickle
    import sys as builtins_sys

    from memfail.check.encode import host_encoding
    from memfail.check.freeze import Primer, freeze, plain_freeze, thaw

    cfg = standard_config()
    sys = built(ModelSystem(cfg, cfg.policies[0]))
    s = sys.initial()
    primer = s.primer
    assert primer is not None
    host = s.host
    blob = freeze(host, primer)
    assert len(blob) < len(plain_freeze(host))
    copy = thaw(blob)
    assert host_encoding(copy) == host_encoding(host)
    again = pickle.loads(pickle.dumps(primer))
    assert again.tag == primer.tag and Primer.of(host).tag == primer.tag
    assert host_encoding(again.thaw(blob)) == host_encoding(host)
    other = Primer(primer.raw)  # as another process unpickles it: its own static objects
    assert other is not primer and other.tag == primer.tag
    assert host_encoding(other.thaw(blob)) == host_encoding(host)
    assert copy.config is primer.objects[0]  # every copy shares the primer's static objects
    before = freeze(copy, primer)
    folio = next(iter(copy.phys.folios.values()))
    folio.kind = builtins_sys.intern("".join(list(folio.kind)))  # as a model constant is
    assert freeze(copy, primer) == before
    with pytest.raises(RuntimeError, match="primer"):
        thaw(b"\x00" + bytes(7) + blob[8:])


def test_fast_encoding_equals_the_plain_definition_on_every_explored_host(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoders behind fingerprints (inline scalars, cached references; and the row
    cache that re-encodes only the rows whose content changed) give the same bytes as the
    plain definition of the encoding for every host a search meets, with --races, across
    policies; and the encodings differ where the hosts differ."""
    from memfail.check import model_system as ms
    from memfail.check.encode import RowCache, host_encoding, plain_encoding

    cfg = standard_config()
    hosts: list[Any] = []
    seen = RowCache.encode

    def keep(self: RowCache, host: Any) -> bytes:
        hosts.append(ms.freeze(host))
        return seen(self, host)

    monkeypatch.setattr(RowCache, "encode", keep)
    for policy in cfg.policies[:2]:
        with make_backend(1) as backend:
            explore(built(ModelSystem(cfg, policy, races=True)), backend,
                    Bounds(max_depth=2), Options(stop_when_all_fail=False))
    monkeypatch.undo()
    assert len(hosts) > 20
    encodings = set()
    rows = RowCache()
    for blob in hosts:
        h = ms.thaw(blob)
        fast = host_encoding(h)
        assert fast == plain_encoding(h)
        assert rows.encode(h) == fast
        encodings.add(fast)
    assert len(encodings) > 10
    assert rows.hits > 5 * rows.misses  # most rows came from the cache


PRIVATE_READ = """\
policies: [minimum, future]
geometry: {pmd_order: 2, pud_order: 3}
host: {memory: 8G, hugepages: {2M: 4}}
processes:
  - {name: qemu0, threads: [main, vcpu0], mce_kill: {main: early, vcpu0: late}, sigbus: handler}
  - {name: qemu1, threads: [main, vcpu0], mce_kill: {main: early, vcpu0: late}, sigbus: handler}
guest_memfd:
  - {name: gmem0, size: 2M, backing: 2M, flags: [mmap, init_shared]}
  - {name: gmem1, size: 2M, backing: 2M, flags: [mmap, init_shared]}
vms:
  - {name: vm0, vmm: qemu0, gmem: gmem0, type: sw-protected}
  - {name: vm1, vmm: qemu1, gmem: gmem1}
events:
  - {event: hw_error, vm: vm1, page: 0, detect: latent}
  - {event: convert, vm: vm0, page: 0, to: private, limit: 1}
  - {event: vmm_access, vm: vm0, page: 0}
bounds: {depth: 3, errors: 1}
"""


@pytest.mark.parametrize("policy", ["minimum", "future"])
def test_a_vmm_reading_private_memory_is_not_a_memory_failure_victim(
        policy: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The VMM of vm0 (whose memory never failed) loads a page it converted to private:
    kvm_gmem_fault_user_mapping() refuses it and x86 do_sigbus() sends SIGBUS BUS_ADRERR, which
    kills QEMU. That is the VMM's own fault, not a signal memory_failure() sent (properties.py
    MF_CODES), so neither sigbus-owner-only nor unaffected-vms-run fails, though the run does
    reach the kill (the event fires and vm0's VMM dies)."""
    cfg = load_config_text(PRIVATE_READ)
    sys = built(ModelSystem(cfg, policy))
    r = explore(sys, bounds=Bounds(max_depth=3), options=Options(stop_when_all_fail=False))
    for name in ("sigbus-owner-only", "unaffected-vms-run"):  # depth-bound: PARTIAL, no FAIL
        assert r.verdicts[name].status in (PASS, PARTIAL), (name, r.verdicts[name].labels)
    # the kill is really reached: counting every SIGBUS code, as before, fails both at depth 2
    # (convert, then the VMM's read), naming the BUS_ADRERR
    import memfail.check.properties as props
    from memfail.model.trace import SI_CODE_NAMES

    monkeypatch.setattr(props, "MF_CODES", frozenset(SI_CODE_NAMES.values()))
    sys = built(ModelSystem(cfg, policy))
    r = explore(sys, bounds=Bounds(max_depth=3), options=Options(stop_when_all_fail=False))
    v = r.verdicts["sigbus-owner-only"]
    assert (v.status, v.depth) == (FAIL, 2)
    assert "BUS_ADRERR to qemu0" in (v.message or "")
    assert r.verdicts["unaffected-vms-run"].status == FAIL


IDLE = """\
policies: [minimum]
host: {memory: 64M, hugepages: {2M: 2}}
processes:
  - {name: qemu0, threads: [main], sigbus: handler}
vms:
  - {name: vm0, vmm: qemu0, memory: 2M}
events:
  - {event: hw_error, vm: vm0, page: 0, detect: scrub}
  - {event: vmm_access, vm: vm0, page: 0}
  - {event: action, action: mem_read, args: {proc: qemu0, thread: main, addr: nosuch.ram}}
  - {event: vmm_access, vm: vm0, page: 0, limit: 1}
  - {event: action, action: mem_read, args: {proc: qemu0, thread: main, addr: vm0.ram}}
bounds: {depth: 4, errors: 1}
"""


def test_entries_that_never_change_anything_are_reported(tmp_path: Path) -> None:
    """Coverage names the alphabet entries no step of which changed the host or the monitor:
    an `action` whose mapping does not exist (the model refuses it in every state: a no-op
    step) is one; an entry that shares its label with another shares its steps; the report
    is the same on 2 workers, after a resume from a checkpoint, and from a swarm."""
    from memfail.check.backends import Backend
    from memfail.check.swarm import SwarmOptions, swarm

    cfg = load_config_text(IDLE)
    sys = built(ModelSystem(cfg, "minimum"))
    opts = Options(stop_when_all_fail=False)
    r = explore(sys, bounds=Bounds(max_depth=4), options=opts)
    assert r.coverage.kinds_never == []
    assert r.coverage.entries_idle == [(2, "action")]
    with make_backend(workers=2) as b:
        two = explore(sys, b, Bounds(max_depth=4), opts)
    assert two.coverage.entries_idle == [(2, "action")]
    ck = Options(stop_when_all_fail=False, checkpoint_dir=tmp_path, checkpoint_every=0)
    part = explore(sys, bounds=Bounds(max_depth=1), options=ck)
    assert part.stop_reason == "depth"
    assert part.coverage.entries_idle is not None
    assert (2, "action") in part.coverage.entries_idle
    resumed = explore(sys, bounds=Bounds(max_depth=4),
                      options=Options(stop_when_all_fail=False, checkpoint_dir=tmp_path,
                                      resume=True))
    assert resumed.coverage.entries_idle == [(2, "action")]
    sw = swarm(sys, Backend(), SwarmOptions(walks=20, walk_depth=6, seed=1))
    assert sw.entries_idle == [(2, "action")]
    with make_backend(workers=2) as b:
        assert swarm(sys, b, SwarmOptions(walks=20, walk_depth=6, seed=1)).entries_idle == \
            [(2, "action")]


def test_a_search_stopped_inside_a_level_reports_the_coverage_of_what_it_did() -> None:
    """Stopped by time after the first chunk of a level (the budget is checked after each
    chunk): the coverage includes that chunk's steps, not only the levels before it."""
    sys = built(ModelSystem(load_config_text(IDLE), "minimum"))
    r = explore(sys, bounds=Bounds(max_seconds=1e-9), options=Options(stop_when_all_fail=False))
    assert r.stop_reason == "time" and r.depth == 0
    assert "hw_error" in r.coverage.kinds_fired and r.coverage.kinds_never == []
    idle = r.coverage.entries_idle
    assert idle is not None and (2, "action") in idle and (0, "hw_error") not in idle


def test_an_entry_is_idle_when_its_steps_change_nothing_anywhere() -> None:
    """A mem_read of the VMM's own healthy mapping changes nothing until the error; with the
    errors bound at 0 it never does anything, and neither does a VMM access: both are idle,
    while the step that does change the state (none here) would not be."""
    cfg = load_config_text(IDLE.replace("errors: 1", "errors: 0"))
    sys = built(ModelSystem(cfg, "minimum"))
    r = explore(sys, bounds=Bounds(max_depth=4), options=Options(stop_when_all_fail=False))
    assert r.coverage.kinds_never == ["hw_error"]
    # hw_error never fired: reported as such, not again as idle
    assert r.coverage.entries_idle == [(1, "vmm_access"), (2, "action"), (3, "vmm_access"),
                                       (4, "action")]
    # a search that stopped because every property failed says nothing of them (mainline
    # drops the raw page's PG_hwpoison when the conversion merges the folio: depth 2)
    cfg = load_config_text(MERGE_LOSES)
    sys = built(ModelSystem(cfg, "mainline"))
    first = explore(sys, bounds=Bounds(max_depth=4),
                    options=Options(properties=("no-record-lost",)))
    assert first.stop_reason == "all-failed" and first.coverage.entries_idle is None
    full = explore(sys, bounds=Bounds(max_depth=4),
                   options=Options(properties=("no-record-lost",), stop_when_all_fail=False))
    assert full.coverage.entries_idle == []


MERGE_LOSES = """\
profile: next
policies: [mainline]
geometry: {pmd_order: 2}
host: {memory: 64M, hugepages: {2M: 2}}
processes:
  - {name: q, threads: [main], sigbus: handler, mce_kill: {main: early}}
guest_memfd:
  - {name: g, size: 2M, backing: 2M, flags: [mmap, init_shared]}
vms:
  - {name: v, type: sw-protected, vmm: q, vcpus: 1, gmem: g}
events:
  - {event: hw_error, vm: v, page: 3, detect: scrub, limit: 1}
  - {event: convert, vm: v, page: 0, pages: 4, to: private, limit: 1}
bounds: {depth: 4, errors: 1}
"""


def test_a_merge_that_drops_the_flag_says_whether_the_table_still_records_it() -> None:
    """propagate_on_split false: the merge drops the raw page's PG_hwpoison. Under mainline
    nothing else records the failure (record lost, no-record-lost fails); a policy that
    handles the folio keeps it in its table (record=folio too), so the record is not lost,
    and the policy event says so."""
    from memfail.check.model_system import PolicyEvent

    cfg = load_config_text(MERGE_LOSES)
    for policy, lost in (("mainline", True), ("future{propagate_on_split=false}", False)):
        sys = built(ModelSystem(cfg, policy))
        s = sys.initial()
        for label in list(sys.enabled(s))[:2]:  # hw_error, then convert to private
            s = sys.step(s, label)
        what = [e.what for e in s.events if isinstance(e, PolicyEvent) and e.hook == "merge"]
        assert len(what) == 1
        assert what[0].endswith("(record lost)") == lost, what
        props = {p.name: p for p in sys.properties()}
        assert (props["no-record-lost"].check(s) is not None) == lost


def test_the_cli_names_the_entries_that_never_changed_anything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`memfail check` prints them under the policy's line and gives them in the JSON."""
    import json

    from memfail.cli import main

    path = tmp_path / "idle.yaml"
    path.write_text(IDLE)
    main(["check", str(path)])
    out = capsys.readouterr().out
    assert "events that never changed anything: events[2] (action)" in out, out
    main(["check", str(path), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["results"][0]["coverage"]["entries_idle"] == [{"entry": 2, "event": "action"}]
