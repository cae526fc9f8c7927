"""Invariants of the model itself, under every guest_memfd policy (Hypothesis).

Safety properties a policy may break (poison handed out again, repeated consumption) are
outcomes measured by `memfail compare` and `memfail check`; what is asserted here must hold
whatever the policy: HugeTLB pool counters add up after every action, and the same inputs give
the same trace.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memfail.model.actions import Action, Fallocate, HwError, Mmap, Prctl, Sigaction, Spawn
from memfail.model.host import Host, HostConfig
from memfail.model.kvm.actions import (
    GmemCreate,
    GuestAccess,
    KernelAccess,
    Memslot,
    SetAttributes,
    VmCreate,
    VmDestroy,
)
from memfail.model.policy.registry import PRESETS

GPAS = [f"4G+{i * 512}K" for i in range(8)]  # 8 pages spread over both 2M folios

SETUP: list[Action] = [
    Spawn(proc="qemu"), Sigaction(proc="qemu", sigbus="handler"),
    Prctl(proc="qemu", policy="early"),
    VmCreate(vm="vm0", vmm="qemu"),
    GmemCreate(vm="vm0", fd="gmem", size="4M", flags=["mmap"], backing="2M"),
    Mmap(proc="qemu", name="shared", size="4M"),
    Memslot(vm="vm0", gpa="4G", size="4M", gmem="gmem", hva="shared"),
]

action_st = st.one_of(
    st.builds(GuestAccess, vm=st.just("vm0"), gpa=st.sampled_from(GPAS),
              op=st.sampled_from(["read", "write"])),
    st.builds(HwError, vm=st.just("vm0"), gpa=st.sampled_from(GPAS),
              detect=st.sampled_from(["latent", "scrub"])),
    st.builds(Fallocate, proc=st.just("qemu"), fd=st.just("gmem"),
              offset=st.sampled_from([0, "2M"]), len=st.just("2M")),
    st.builds(SetAttributes, vm=st.just("vm0"), gpa=st.sampled_from(GPAS),
              size=st.just("4K"), private=st.booleans()),
    st.builds(KernelAccess, user=st.sampled_from(["kworker", "vhost", "migration"]),
              vm=st.just("vm0"), gpa=st.sampled_from(GPAS)),
    st.just(VmDestroy(vm="vm0")),
)


def new_host(policy: str) -> Host:
    h = Host(HostConfig(memory="8G", hugepages={"2M": 6}, policy=policy))
    for a in SETUP:
        assert h.apply(a).errno is None, a
    return h


def check_pool(host: Host) -> None:
    for h in host.hugetlb.hstates.values():
        assert 0 <= h.free_huge_pages == len(h.free_list)
        assert h.resv_huge_pages <= h.free_huge_pages
        assert h.surplus_huge_pages <= h.nr_huge_pages
        in_use = sum(1 for f in host.phys.folios.values()
                     if f.kind == "hugetlb" and f.order == h.order and "hugetlb" in f.flags
                     and "hugetlb_freed" not in f.flags)
        split = sum(1 for i in host.inodes
                    for _pfn, order in i.extra.get("split_meta", {}).values()
                    if order == h.order)
        assert h.nr_huge_pages == h.free_huge_pages + in_use + split, h.counters()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=st.sampled_from(sorted(PRESETS)), actions=st.lists(action_st, max_size=10))
def test_hugetlb_counters_add_up_after_every_action(policy: str, actions: list[Action]) -> None:
    host = new_host(policy)
    check_pool(host)
    for a in actions:
        host.apply(a)
        if host.panicked:
            break
        check_pool(host)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=st.sampled_from(sorted(PRESETS)), actions=st.lists(action_st, max_size=8))
def test_same_inputs_same_trace(policy: str, actions: list[Action]) -> None:
    traces: list[object] = []
    for _ in range(2):
        host = new_host(policy)
        for a in actions:
            host.apply(a)
        traces.append([e.to_dict() for e in host.trace.events])
        traces.append(host.outcomes())
    assert traces[0] == traces[2] and traces[1] == traces[3]
