"""No drift between the engines: the Promela model takes every step the Python model takes,
with the same observation after each (src/memfail/check/spin/observe.py), and the other way
round.

* Seeded random walks of the Python model, forced through the Promela model (a generated
  ``init`` that carries out exactly those labels, run by SPIN's simulator).
* Seeded SPIN random simulations (``spin -n<seed>``), replayed on the Python model.

Across the presets and ten knob combinations no preset has. A disagreement fails naming the
first step whose observations differ. More walks: ``python bench/bench_check_engines.py
--agree 1000``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from check_cfgs import SIGBUS_DISPOSITIONS, one_g
from memfail.check.config import STANDARD, load_config
from memfail.check.model_system import ModelSystem
from memfail.check.spin import (
    AGREE_CONFIG,
    AGREE_CONVERT_CONFIG,
    AGREE_GUEST_CONFIG,
    AGREE_KERNEL_CONFIG,
    AGREE_SPLIT_CONFIG,
    AGREE_TWO_CONFIG,
)
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
from memfail.model.trace import SignalSent

# Knob combinations no preset has (policy specs as a scenario writes them).
CUSTOM: dict[str, dict[str, Any]] = {
    "minimum-marks": {"base": "minimum", "name": "minimum-marks", "mark_on_truncate": True,
                      "isolate_on_free": False, "propagate_on_split": True},
    "future-folio": {"base": "future", "name": "future-folio", "unmap_stage2": "folio",
                     "unmap_host": "none", "honor_early": False, "unconsumed": "defer"},
    "unmap-vm": {"base": "unmap", "name": "unmap-vm", "unmap_stage2": "vm", "record": "folio"},
    "mainline-keeps": {"base": "mainline", "name": "mainline-keeps",
                       "propagate_on_split": True, "isolate_on_free": True},
    "minimum-notify": {"base": "minimum", "name": "minimum-notify", "handles": "all",
                       "unconsumed": "notify-vmm", "honor_early": True, "fault_check": True},
    # the leader (a LATE main thread in agree-two.yaml) is told, not the EARLY vCPU thread
    "future-leader": {"base": "future", "name": "future-leader", "honor_early": False},
    # consumed / unconsumed kill-vm and unusable crossed with a table that marks nothing on
    # truncate, and with subpage unmapping (an unusable file refuses faults before allocating)
    "minimum-kill-unusable": {"base": "minimum", "name": "minimum-kill-unusable",
                              "consumed": "kill-vm", "unconsumed": "unusable"},
    "future-unusable-kill": {"base": "future", "name": "future-unusable-kill",
                             "consumed": "unusable", "unconsumed": "kill-vm",
                             "unmap_stage2": "none"},
    # the SIGBUS to current without an address (QEMU exits) and without MCE payload (QEMU
    # dies of it), for guest loads and the VMM's vCPU threads
    "minimum-addr-none": {"base": "minimum", "name": "minimum-addr-none", "sigbus_addr": "none"},
    "future-plain": {"base": "future", "name": "future-plain", "sigbus_addr": "plain"},
}
POLICIES: list[Any] = ["mainline", "mf-delayed-fix", "minimum", "unmap", "kill-vm", "unusable",
                       "future",
                       *CUSTOM.values()]
WALKS, STEPS, SIMULATIONS = 6, 10, 3


def _system(policy: Any, config: Any = AGREE_TWO_CONFIG) -> ModelSystem:
    s = ModelSystem(load_config(config), policy)
    s.initial()
    return s


def _label(rendered: Any, kind: str, **kw: Any) -> int:
    """The index of the first label of ``kind`` with the parameters ``kw``."""
    return next(i for i, lab in enumerate(rendered.labels) if lab[0] == kind and
                all(dict(lab[1]).get(a) == b for a, b in kw.items()))


def _id(p: Any) -> str:
    return p if isinstance(p, str) else p["name"]


@pytest.mark.parametrize("policy", POLICIES, ids=_id)
def test_python_walks_are_accepted_by_promela(policy: Any) -> None:
    system = _system(policy)
    rendered = render(system)
    for seed in range(WALKS):
        diff = agree_walk(system, seed, STEPS, rendered)
        assert diff is None, f"{_id(policy)}, walk seed {seed}: {diff}"


@pytest.mark.parametrize("policy", POLICIES, ids=_id)
def test_spin_simulations_replay_on_python(policy: Any) -> None:
    system = _system(policy)
    rendered = render(system)
    for seed in range(1, SIMULATIONS + 1):
        diff = agree_simulation(system, seed, STEPS, rendered)
        assert diff is None, f"{_id(policy)}, spin -n{seed}: {diff}"


def _races_walks_agree(policy: Any, config: Path, walks: int = 2) -> None:
    """``walks`` seeded --races walks of ``2 * STEPS`` steps on ``config`` are accepted by the
    Promela stages step by step."""
    from memfail.check.spin.stages import render_races

    system = ModelSystem(load_config(config), policy, races=True)
    system.initial()
    rendered = render_races(system)
    for seed in range(walks):
        diff = agree_walk(system, seed, 2 * STEPS, rendered)
        assert diff is None, f"{_id(policy)} --races, walk seed {seed}: {diff}"


def _walks_and_a_simulation_agree(policy: Any, config: Path, walk_steps: int) -> None:
    """WALKS seeded Python walks of ``walk_steps`` replayed in Promela, and one SPIN
    simulation replayed on the Python model, agree step by step on ``config``."""
    system = _system(policy, config)
    rendered = render(system)
    for seed in range(WALKS):
        diff = agree_walk(system, seed, walk_steps, rendered)
        assert diff is None, f"{_id(policy)}, walk seed {seed}: {diff}"
    diff = agree_simulation(system, 1, STEPS, rendered)
    assert diff is None, f"{_id(policy)}, spin -n1: {diff}"


# Kernel users (model/kernel/kaccess.py): each reach, check and copy of the inventory.
KERNEL_POLICIES: list[Any] = ["mainline", "minimum", "unmap", "kill-vm", "future",
                              CUSTOM["minimum-marks"], CUSTOM["future-folio"]]


@pytest.mark.parametrize("policy", KERNEL_POLICIES, ids=_id)
def test_kernel_users_agree(policy: Any) -> None:
    _walks_and_a_simulation_agree(policy, AGREE_KERNEL_CONFIG, STEPS)


def test_kernel_read_of_a_table_only_record_panics_in_both() -> None:
    """kcore skips PG_hwpoison pages, and pages x86 took out of the direct map: under
    `minimum` (a table record, the VMM's entry left present) its read of an error reported
    firmware-first (GHES: memory_failure_queue(), no set_mce_nospec()) panics the host in both
    engines, of one the patrol scrub reported through the machine-check notifier (whose
    memory_failure() returned 0: set_mce_nospec(), R46) reads zeros; under `future`
    (PG_hwpoison, a hwpoison entry) both are skipped (R47)."""
    for policy, detect, panics in (("minimum", "ghes", 1), ("minimum", "scrub", 0),
                                   ("future", "ghes", 0), ("future", "scrub", 0)):
        system = _system(policy, AGREE_KERNEL_CONFIG)
        rendered = render(system)

        # the VMM maps the page first (kcore reaches guest memory through its entry)
        seq = [_label(rendered, "vmm_access", vm="vm0", page=2),
               _label(rendered, "hw_error", vm="vm0", page=2, detect=detect),
               _label(rendered, "kernel_access", vm="vm0", page=2, user="kcore")]
        a, b = replay_python(system, rendered, seq), replay_promela(system, rendered, seq)
        assert compare(system, rendered, a, b, ("python", "promela")) is None
        at = layout(system).index("panic")
        assert a.observations[-1][at] == b.observations[-1][at] == panics, (policy, detect)


# Conversion (split and merge of a folio holding errors), crossed with the knobs it meets.
CONVERT_POLICIES: list[Any] = [
    "mainline", "minimum", "unmap", "unusable", "future",
    {"base": "future", "name": "future-drops", "propagate_on_split": False},
    {"base": "unmap", "name": "unmap-folio-flag", "record": "folio", "propagate_on_split": True,
     "check_granularity": "subpage"},
    {"base": "future", "name": "future-folio-zap", "check_granularity": "folio",
     "unmap_stage2": "folio", "unmap_host": "none"},
]


@pytest.mark.parametrize("policy", CONVERT_POLICIES, ids=_id)
def test_conversions_agree(policy: Any) -> None:
    _walks_and_a_simulation_agree(policy, AGREE_CONVERT_CONFIG, STEPS + 4)


@pytest.mark.parametrize("propagate", [True, False])
def test_merge_keeps_the_record_only_with_propagate_on_split(propagate: bool) -> None:
    """A detected error on a shared (4K) page, then the whole folio converted to private: the
    merge keeps the raw page's PG_hwpoison on the HugeTLB folio with propagate_on_split and
    drops it without (mainline keeps no table, so the record is lost); a conversion back to
    shared splits it again. Both engines say the same after each step."""
    policy = {"base": "mainline", "name": f"mainline-{propagate}",
              "propagate_on_split": propagate}
    system = _system(policy, AGREE_CONVERT_CONFIG)
    rendered = render(system)
    seq = [_label(rendered, "hw_error", vm="vm0", page=2, detect="scrub"),
           _label(rendered, "convert", vm="vm0", page=0, pages=4, to="private"),
           _label(rendered, "convert", vm="vm0", page=0, pages=4, to="shared")]
    a, b = replay_python(system, rendered, seq), replay_promela(system, rendered, seq)
    assert compare(system, rendered, a, b, ("python", "promela")) is None
    rec, priv = layout(system).index("vm0[2].rec"), layout(system).index("vm0[2].priv")
    assert [o[rec] for o in b.observations] == [0, 1, int(propagate), int(propagate)]
    assert [o[priv] for o in b.observations] == [0, 0, 1, 0]


def test_walks_on_the_verdict_configuration() -> None:
    for policy in ("minimum", "future"):
        system = _system(policy, AGREE_CONFIG)
        rendered = render(system)
        for seed in range(4):
            assert agree_walk(system, seed, 8, rendered) is None


def test_a_different_policy_is_caught_at_its_first_differing_step() -> None:
    """The comparison can fail: the same walk, the Promela model of another policy."""
    py = _system("minimum")
    other = render(_system("unmap"))
    # hw_error (scrub) on vm0 page 0: unmap zaps the SPTE, minimum does not (C2)
    k = next(i for i, lab in enumerate(other.labels)
             if lab[0] == "hw_error" and dict(lab[1])["detect"] == "scrub"
             and dict(lab[1])["vm"] == "vm0" and dict(lab[1])["page"] == 0)
    a = replay_python(py, other, [k])
    b = replay_promela(py, other, [k])
    diff = compare(py, other, a, b, ("python", "promela"))
    assert diff is not None
    assert diff.startswith("step 1 (hw_error(vm=vm0, page=0, detect=scrub))")
    assert "vm0[0].spte: python 1, promela 0" in diff


def test_walks_are_seeded() -> None:
    system = _system("future")
    rendered = render(system)
    a = walk_python(system, rendered, 7, STEPS)
    b = walk_python(system, rendered, 7, STEPS)
    assert a.labels == b.labels and len(a.labels) == STEPS


# Guest behaviours and machine-check delivery (vmm/guest.py, kernel/mce.py): careless, hostile
# and confidential guests, vcpu_mce and task_work on two vCPUs and two pages, a punch hole
# while a task work waits, crossed with the presets and the knobs that decide what the vCPU
# thread's SIGBUS carries.
GUEST_POLICIES: list[Any] = ["mainline", "mf-delayed-fix", "minimum", "unmap", "kill-vm",
                             "unusable", "future", CUSTOM["minimum-addr-none"],
                             CUSTOM["future-plain"], CUSTOM["future-unusable-kill"]]


@pytest.mark.parametrize("policy", GUEST_POLICIES, ids=_id)
def test_guest_behaviours_and_machine_check_delivery_agree(policy: Any) -> None:
    _walks_and_a_simulation_agree(policy, AGREE_GUEST_CONFIG, STEPS + 4)


def _outcome(policy: Any, labels: list[tuple[str, dict[str, Any]]], *fields: str
             ) -> list[tuple[int, int]]:
    """Both engines' final value of each field after ``labels`` (checked equal at every
    step first)."""
    system = _system(policy, AGREE_GUEST_CONFIG)
    rendered = render(system)
    seq = [_label(rendered, kind, **kw) for kind, kw in labels]
    a, b = replay_python(system, rendered, seq), replay_promela(system, rendered, seq)
    assert compare(system, rendered, a, b, ("python", "promela")) is None
    names = layout(system)
    return [(a.observations[-1][names.index(f)], b.observations[-1][names.index(f)])
            for f in fields]


def test_a_vcpu_runs_its_task_work_before_its_next_machine_check_in_both() -> None:
    """A guest-mode machine check means the vCPU entered the guest, and KVM ran its queued
    task work before the entry (M8, R45: xfer_to_guest_mode_handle_work): one vCPU never
    stacks queue_task_work()'s count (M7), on another page or eleven times on one, so
    neither engine panics; both agree at every step."""
    errors = [("hw_error", {"vm": "vm1", "page": 0}), ("hw_error", {"vm": "vm1", "page": 1})]
    other = [*errors, ("vcpu_mce", {"vm": "vm1", "page": 0, "vcpu": 0}),
             ("vcpu_mce", {"vm": "vm1", "page": 1, "vcpu": 0})]
    same = errors[:1] + [("vcpu_mce", {"vm": "vm1", "page": 0, "vcpu": 1})] * 11
    want = ("panic", "violated.no-host-panic")
    assert _outcome("future", other, *want) == [(0, 0)] * 2
    assert _outcome("future", same, *want) == [(0, 0)] * 2
    # the machine checks were taken (the VM stayed up under future), so the count was reset
    # by each entry's task work rather than never reached
    assert _outcome("future", other[:3], "vm1[0].cons")[0][0] >= 1


def test_two_vcpus_consuming_before_the_task_work_count_once_in_both() -> None:
    """A hostile guest's round: both vCPUs load the line before either task work runs (M7,
    M8); the second consumption is the hardware's window, not counted by `contained`; the
    second round, after memory_failure() ran, is (unless the first round stopped the VM)."""
    seq = [("hw_error", {"vm": "vm1", "page": 0}), ("vcpu_mce", {"vm": "vm1", "page": 0,
                                                                 "vcpu": 0}),
           ("vcpu_mce", {"vm": "vm1", "page": 0, "vcpu": 1})]
    assert _outcome("minimum", seq, "vm1[0].cons", "violated.contained") == [(1, 1), (0, 0)]
    run = [seq[0], ("guest_run", {"vm": "vm1", "page": 0})]
    # minimum keeps the SPTE and sends the vCPU a vMCE the hostile guest ignores: again
    assert _outcome("minimum", run, "vm1[0].cons", "violated.contained") == [(2, 2), (1, 1)]


def test_a_confidential_guest_without_a_host_mapping_loses_its_vmm_in_both() -> None:
    """An SNP guest whose guest_memfd has no host mapping: the policy's SIGBUS to the vCPU
    carries no address (no memslot userspace_addr), so QEMU exits (exit(1)) under future; the
    VM is killed in both engines."""
    seq = [("hw_error", {"vm": "vm2", "page": 0, "detect": "latent"}),
           ("vcpu_access", {"vm": "vm2", "page": 0})]
    assert _outcome("future", seq, "vm2.state", "vm2.alive") == [(2, 2), (0, 0)]


@pytest.mark.parametrize("policy", ["mainline", "minimum", "kill-vm", "future"])
def test_walks_on_the_standard_configuration(policy: str) -> None:
    system = _system(policy, STANDARD)
    rendered = render(system)
    for seed in range(3):
        diff = agree_walk(system, seed, STEPS, rendered)
        assert diff is None, f"{policy}, walk seed {seed}: {diff}"


def test_a_default_vm_converting_to_private_changes_nothing_in_both(tmp_path: Path) -> None:
    """agree-convert.yaml with vm0 a default VM: KVM_SET_MEMORY_ATTRIBUTES(PRIVATE) fails with
    -EINVAL (kvm_supported_mem_attributes()), so the page stays shared in both engines, where
    the sw-protected vm0 of the shipped file makes it private; walks agree too."""
    text = AGREE_CONVERT_CONFIG.read_text()
    assert "type: sw-protected" in text
    path = tmp_path / "agree-convert-default.yaml"
    path.write_text(text.replace(", type: sw-protected", ""))
    for config, private in ((AGREE_CONVERT_CONFIG, 1), (path, 0)):
        system = _system("future", config)
        rendered = render(system)
        seq = [_label(rendered, "hw_error", vm="vm0", page=2, detect="scrub"),
               _label(rendered, "convert", vm="vm0", page=0, pages=4, to="private")]
        a, b = replay_python(system, rendered, seq), replay_promela(system, rendered, seq)
        assert compare(system, rendered, a, b, ("python", "promela")) is None
        at = layout(system).index("vm0[2].priv")
        assert a.observations[-1][at] == b.observations[-1][at] == private, config
    _walks_and_a_simulation_agree("future", path, STEPS + 4)


@pytest.mark.parametrize("policy", ["mainline", "minimum", "future", CUSTOM["minimum-marks"]],
                         ids=_id)
def test_conversions_of_1g_folios_agree(policy: Any, tmp_path: Path) -> None:
    """agree-convert.yaml on 1G guest_memfds: the Promela folio is the 1G page
    (observe.frame_order) and the spares come from the 1G pool; walks and a simulation agree
    step by step, atomic and with --races."""
    path = one_g(AGREE_CONVERT_CONFIG, tmp_path)
    _walks_and_a_simulation_agree(policy, path, STEPS + 4)
    _races_walks_agree(policy, path)


def test_a_vm_refilled_from_a_spare_is_mapped_huge_under_a_subpage_policy() -> None:
    """The standard configuration under future (unmap_stage2: subpage): vm0's frame is
    poisoned, punched and dissolved, and the guest's next load refills the hole from a clean
    spare. kvm_gmem_get_pfn caps the mapping at 4K only for a folio that holds a failure
    (gmem.py), so the spare is mapped huge; the Promela cap read the failure bits of the
    VM's own frame, which no longer backs it (SUBPAGE_CAP without bk[v] == OWN)."""
    system = _system("future", STANDARD)
    diff = agree_walk(system, 204, 20, render(system))
    assert diff is None, diff


def test_a_conversion_of_a_destroyed_vm_is_one_step_in_both_under_races() -> None:
    """agree-split.yaml under mainline, --races: after vm0's release (vm_destroy), a
    conversion is one step in both engines; the Python model used to split it
    (races.first_stage), so its convert.folios continuation had no Promela counterpart."""
    from memfail.check.spin.stages import render_races

    system = ModelSystem(load_config(AGREE_SPLIT_CONFIG), "mainline", races=True)
    system.initial()
    diff = agree_walk(system, 201, 30, render_races(system))
    assert diff is None, diff


OVERLAP = """\
name: overlap
policies: [minimum, kill-vm]
host: {hugepages: {2M: 3}}
processes:
  - {name: q0, threads: [main], sigbus: handler}
  - {name: q1, threads: [main], sigbus: handler}
guest_memfd:
  - {name: g0, size: 2M, backing: 2M, flags: [mmap]}
  - {name: g1, size: 2M, backing: 2M, flags: [mmap]}
vms:
  - {name: vm0, vmm: q0, gmem: g0, type: sw-protected}
  - {name: vm1, vmm: q1, gmem: g1, type: sw-protected}
events:
  - {event: close, vm: [vm0, vm1], limit: 1}
  - {event: hw_error, vm: vm0, page: 1, detect: scrub}
  - {event: close, vm: vm1, limit: 1}
  - {event: vcpu_access, vm: [vm0, vm1], page: 1}
  - {event: punch_hole, vm: [vm0, vm1], page: 0, pages: 4}
"""


def test_a_step_listed_by_two_entries_counts_against_the_first_with_room(
        tmp_path: Path) -> None:
    """close(vm1) is in events[0] and events[2], each limit 1: it is one step (enabled once,
    not once per entry), enabled while either entry is below its limit, and counted against
    the first such entry. The Python model used to count it against events[0] only, so
    events[2]'s limit was never reached (close(vm1) stayed enabled for ever), while the
    Promela guard read events[0] alone: a walk differed at the second close."""
    path = tmp_path / "overlap.yaml"
    path.write_text(OVERLAP)
    system = _system("minimum", path)
    close = {v: ("close", (("vm", v),)) for v in ("vm0", "vm1")}

    def closes(s: Any) -> list[Any]:
        got = [lab for lab in system.enabled(s) if lab[0] == "close"]
        assert len(got) == len(set(got))
        return got

    s0 = system.initial()
    assert closes(s0) == [close["vm0"], close["vm1"]]
    s1 = system.step(s0, close["vm0"])            # events[0] is used up
    assert s1.counts[0] == 1 and closes(s1) == [close["vm1"]]
    s2 = system.step(s1, close["vm1"])            # ... so events[2] counts it
    assert s2.counts[:3] == (1, 0, 1) and closes(s2) == []
    t1 = system.step(s0, close["vm1"])            # the first entry with room: events[0]
    assert t1.counts[:3] == (1, 0, 0) and closes(t1) == [close["vm1"]]
    t2 = system.step(t1, close["vm1"])
    assert t2.counts[:3] == (1, 0, 1) and closes(t2) == []
    rendered = render(system)
    seq = [_label(rendered, "close", vm="vm1")] * 2
    a, b = replay_python(system, rendered, seq), replay_promela(system, rendered, seq)
    assert a.blocked is None and compare(system, rendered, a, b, ("python", "promela")) is None
    for policy in ("minimum", "kill-vm"):
        _walks_and_a_simulation_agree(policy, path, STEPS)


NOTIFY = {"base": "minimum", "name": "minimum-notify-all", "handles": "all",
          "unconsumed": "notify-vmm", "honor_early": True}


@pytest.mark.parametrize("policy", ["minimum", "future", NOTIFY], ids=_id)
def test_vmms_without_a_sigbus_handler_agree(policy: Any, tmp_path: Path) -> None:
    """VMMs whose SIGBUS takes its default action or is ignored: walks and a simulation
    agree step by step, atomic and with --races."""
    path = tmp_path / "dispositions.yaml"
    path.write_text(SIGBUS_DISPOSITIONS)
    _walks_and_a_simulation_agree(policy, path, STEPS + 4)
    _races_walks_agree(policy, path)


def test_an_unconsumed_failure_told_to_a_vmm_without_a_handler(tmp_path: Path) -> None:
    """notify-vmm tells the EARLY main thread of an unconsumed failure with an AO SIGBUS
    (send_sig_mceerr, not forced): a VMM that ignores SIGBUS drops it and runs on
    (sig_ignored(): its main thread does not block SIGBUS, as QEMU's does), one that leaves
    it at the default action dies of it; both engines say so. A consumed one (forced AR)
    kills both."""
    path = tmp_path / "dispositions.yaml"
    path.write_text(SIGBUS_DISPOSITIONS)
    system = _system(NOTIFY, path)
    rendered = render(system)
    at = layout(system)
    for vm, alive in (("vmd", 0), ("vmi", 1)):
        seq = [_label(rendered, "hw_error", vm=vm, page=1, detect="scrub")]
        a, b = replay_python(system, rendered, seq), replay_promela(system, rendered, seq)
        assert compare(system, rendered, a, b, ("python", "promela")) is None
        assert a.observations[-1][at.index(f"{vm}.alive")] == alive, vm
        seq = [_label(rendered, "hw_error", vm=vm, page=1, detect="latent"),
               _label(rendered, "vmm_access", vm=vm, page=1)]
        a, b = replay_python(system, rendered, seq), replay_promela(system, rendered, seq)
        assert compare(system, rendered, a, b, ("python", "promela")) is None
        assert a.observations[-1][at.index(f"{vm}.alive")] == 0, vm
    s = system.step(system.initial(), ("hw_error", (("vm", "vmi"), ("page", 1),
                                                     ("detect", "scrub"))))
    told = [e for e in s.events if isinstance(e, SignalSent)]
    assert [(e.si_code, e.outcome) for e in told] == [("BUS_MCEERR_AO", "ignored")]


@pytest.mark.parametrize("races", [False, True], ids=["atomic", "races"])
def test_a_long_walk_and_its_repeated_steps_replay_in_promela(races: bool) -> None:
    """The replay driver (promela.replay_driver) walks a table of the steps with one loop
    that names each distinct step once: a 40-step walk of the standard configuration, most
    of its labels taken more than once, replays with the Python model's observation after
    every step; a replay of no step gives the initial observation alone, and the walk's
    steps taken twice over replay as the walk and then the rest, or block where the Python
    model blocks."""
    from memfail.check.config import standard_config
    from memfail.check.spin.agree import _render, initial_observation

    system = ModelSystem(standard_config(), "mainline", races=races)
    system.initial()
    rendered = _render(system)
    walk = walk_python(system, rendered, 3, 40)
    assert len(walk.labels) == 40 and len(set(walk.labels)) < 30
    promela = replay_promela(system, rendered, walk.labels)
    assert compare(system, rendered, walk, promela, ("python", "promela")) is None
    empty = replay_promela(system, rendered, [])
    assert empty.labels == [] and empty.observations == walk.observations[:1]
    assert initial_observation(system, rendered) == walk.observations[:1]
    twice = walk.labels + walk.labels
    py, pm = replay_python(system, rendered, twice), replay_promela(system, rendered, twice)
    assert py.blocked == pm.blocked and py.labels == pm.labels
    assert py.observations == pm.observations and len(py.labels) > 40
