"""Every kernel-profile switch changes something a user can see: for each switch, the same
actions give a different result with the switch on and off (everything else as linux-6.18),
and the presets differ where the kernel history says they do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from memfail.model.actions import (
    Action,
    CorruptPfn,
    Create,
    Kpageflags,
    Madvise,
    MemfdCreate,
    MemWrite,
    Mmap,
    Open,
    Prctl,
    Pread,
    Pwrite,
    Sigaction,
    Spawn,
    Sysctl,
)
from memfail.model.host import Host, HostConfig
from memfail.model.kernel.ksmactions import KsmMerge, KsmPage
from memfail.model.kernel.profiles import PROFILES, SWITCHES, get_profile
from memfail.model.trace import ActionDone, MemoryFailureEvent, SignalSent

APP = [Spawn(proc="app"), Sigaction(proc="app", sigbus="handler")]


def run(profile: Any, actions: list[Action], **cfg: Any) -> Host:
    h = Host(HostConfig(profile=profile, **cfg))
    for a in APP + actions:
        h.apply(a)
    return h


def mf_types(h: Host) -> list[tuple[str, str]]:
    return [(e.page_type, e.result) for e in h.trace.of(MemoryFailureEvent)]


def signals(h: Host) -> list[tuple[str, str | None, int | None]]:
    return [(e.si_code, e.addr_rel, e.lsb) for e in h.trace.of(SignalSent)]


def last_ret(h: Host) -> Any:
    done = h.trace.of(ActionDone)[-1]
    return done.ret, done.errno


def second_ar(h: Host, raw: int) -> Any:
    """A machine check consumed by app on raw page ``raw`` of the poisoned huge folio."""
    from memfail.model.kernel.inject import kill_me_maybe

    pfn = h.hugetlb.hstate(h.geometry.pmd_order).nr_huge_pages and min(
        f.pfn for f in h.phys.folios.values() if f.kind == "hugetlb")
    kill_me_maybe(h, h.processes["app"].leader, pfn + raw)
    return signals(h)


HUGE_FILE = [MemfdCreate(proc="app", name="h", size="2M", hugetlb=True),
             Mmap(proc="app", name="m", size="2M", fd="h", shared=True),
             MemWrite(proc="app", addr="m", value=5)]

CASES: dict[str, tuple[list[Action], Callable[[Host], Any], dict[str, Any]]] = {
    "hugetlb_1g_handled": ([CorruptPfn(free="1G")], mf_types, {"hugepages": {"1G": 1}}),
    "hugetlb_read_partial": (
        [*HUGE_FILE, CorruptPfn(proc="app", addr="m+1M"), Pread(proc="app", fd="h", len="2M")],
        last_ret, {"hugepages": {"2M": 1}}),
    "ksm_hwpoison": (
        [Mmap(proc="app", name="a", size="4K"), MemWrite(proc="app", addr="a"),
         Mmap(proc="app", name="b", size="4K"), MemWrite(proc="app", addr="b"),
         KsmMerge(pages=[KsmPage(proc="app", addr="a"), KsmPage(proc="app", addr="b")]),
         CorruptPfn(proc="app", addr="a")], mf_types, {}),
    "collect_procs_raw_page": (
        [Prctl(proc="app", policy="early"), *HUGE_FILE, CorruptPfn(proc="app", addr="m+8K")],
        signals, {"hugepages": {"2M": 1}}),
    "madvise_hwpoison_ar": (
        [Mmap(proc="app", name="a", size="4K"), MemWrite(proc="app", addr="a"),
         Madvise(proc="app", addr="a", advice="hwpoison")], signals, {}),
    "mf_msg_already_poisoned": ([CorruptPfn(kernel="slab")], mf_types, {}),
    "already_poisoned_not_accounted": (
        [Mmap(proc="app", name="a", size="4K", populate=True),
         CorruptPfn(proc="app", addr="a"), CorruptPfn(pfn=0x100000)],
        lambda h: h.meminfo()["HardwareCorrupted"], {}),
    "hugetlb_update_hwpoison_codes": (
        # the second raw page by pfn (the pool's one 2M folio starts at 0x100000): after the
        # first error the mapping is a HugeTLB hwpoison entry, through which pagemap (and so
        # a proc+addr target) finds no frame
        [*HUGE_FILE, CorruptPfn(proc="app", addr="m"), CorruptPfn(pfn=0x100002)],
        mf_types, {"hugepages": {"2M": 1}}),
    "hugetlb_exact_si_addr": (
        [*HUGE_FILE, CorruptPfn(proc="app", addr="m")], lambda h: second_ar(h, 2),
        {"hugepages": {"2M": 1}}),
    "shmem_mf_delayed": (
        [MemfdCreate(proc="app", name="s", size="4K"), Pwrite(proc="app", fd="s", len="4K"),
         CorruptPfn(proc="app", file="s")], lambda h: h.mf_stats(), {}),
    "kernel_owned_enotrecoverable": ([CorruptPfn(kernel="slab")], last_ret, {}),
    "sysctl_enable_soft_offline": (
        [Sysctl(name="vm.enable_soft_offline", value=0)], last_ret, {}),
    "tracepoint_memory_failure_group": (
        [CorruptPfn(kernel="slab")], lambda h: [e.group for e in h.trace.of(MemoryFailureEvent)],
        {}),
    # a THP's tail page: its head's LRU, UPTODATE, DIRTY, SWAPBACKED since 6.10, none before
    "kpageflags_folio": (
        [Mmap(proc="app", name="t", size="2M", thp=True), MemWrite(proc="app", addr="t"),
         Kpageflags(proc="app", addr="t+4K")], last_ret, {}),
    # an anonymous page that KSM never merged: KSM from 6.10 until the fix
    "kpageflags_ksm_fixed": (
        [Mmap(proc="app", name="a", size="4K"), MemWrite(proc="app", addr="a"),
         Kpageflags(proc="app", addr="a")], last_ret, {}),
}


def test_every_switch_has_a_case_or_a_dedicated_test() -> None:
    dedicated = {"unmap_failure_sigbus", "kill_accessing_process_returns_zero",
                 "mf_delayed_fix"}
    assert {s.name for s in SWITCHES} == set(CASES) | dedicated


@pytest.mark.parametrize("switch", sorted(CASES))
def test_switch_changes_visible_behaviour(switch: str) -> None:
    actions, observe, cfg = CASES[switch]
    base = get_profile("linux-6.18")
    on = observe(run(base.with_switches(None, **{switch: True}), actions, **cfg))
    off = observe(run(base.with_switches(None, **{switch: False}), actions, **cfg))
    assert on != off, (switch, on)


@pytest.mark.parametrize("profile,tail,anon", [
    ("linux-6.1", ["MMAP", "ANON", "COMPOUND_TAIL", "THP"],
     ["UPTODATE", "LRU", "MMAP", "ANON", "SWAPBACKED"]),
    ("linux-6.18", ["UPTODATE", "LRU", "MMAP", "ANON", "SWAPBACKED", "COMPOUND_TAIL", "KSM",
                    "THP"],
     ["UPTODATE", "LRU", "MMAP", "ANON", "SWAPBACKED", "KSM"]),
    ("next", ["UPTODATE", "LRU", "MMAP", "ANON", "SWAPBACKED", "COMPOUND_TAIL", "THP"],
     ["UPTODATE", "LRU", "MMAP", "ANON", "SWAPBACKED"]),
])
def test_kpageflags_follow_stable_page_flags(profile: str, tail: list[str],
                                             anon: list[str]) -> None:
    """fs/proc/page.c: on 6.1 a THP tail reports its own struct page's bits (measured on
    Debian 6.1: ANON COMPOUND_TAIL MMAP THP); dee3d0bef2b0 (6.10) reads the folio's, and its
    `mapping & PAGE_MAPPING_KSM` (ANON|MOVABLE) sets KSM on every anonymous page until
    81401cebfc15 ('fs/proc: fix KPF_KSM reported for all anonymous pages')."""
    h = run(get_profile(profile),
            [Mmap(proc="app", name="t", size="2M", thp=True), MemWrite(proc="app", addr="t"),
             Mmap(proc="app", name="a", size="4K"), MemWrite(proc="app", addr="a"),
             Kpageflags(proc="app", addr="t+4K")])
    assert last_ret(h) == (tail, None)
    h.apply(Kpageflags(proc="app", addr="a"))
    assert last_ret(h) == (anon, None)


def test_kill_accessing_process_returns_zero() -> None:
    """R39/R82/DOC-15: a repeated AR on a page the current process no longer maps."""
    from memfail.model.kernel.inject import kill_me_maybe

    out = {}
    for val in (True, False):
        h = run(get_profile("linux-6.18").with_switches(kill_accessing_process_returns_zero=val),
                [Create(path="/f", fs="ext2", size="4K"), Open(proc="app", path="/f", fd="f"),
                 Mmap(proc="app", name="m", size="4K", fd="f", shared=True, populate=True),
                 CorruptPfn(proc="app", addr="m")])
        ret = kill_me_maybe(h, h.processes["app"].leader, 0x100000)
        out[val] = (ret, [e.si_code for e in h.trace.of(SignalSent)])
    assert out[True] == (0, [])
    assert out[False] == (-14, ["SI_KERNEL"])


def test_unmap_failure_sigbus() -> None:
    """R35/DOC-14: a failed unmap kills with SIGKILL before 6.11, SIGBUS since."""
    from memfail.model.kernel.memory_failure import MF_ACTION_REQUIRED, ToKill, kill_procs

    out = {}
    for val in (True, False):
        h = run(get_profile("linux-6.18").with_switches(unmap_failure_sigbus=val), [])
        t = h.processes["app"].leader
        kill_procs(h, [ToKill(t, 0x1000, 12)], True, 0x100000, MF_ACTION_REQUIRED, t,
                   unmap_failed=True)
        out[val] = (h.processes["app"].state, len(h.trace.of(SignalSent)))
    assert out[True] == ("running", 1)
    assert out[False] == ("killed", 0)


def test_mf_delayed_fix() -> None:
    """R65/R66: guest_memfd's MF_DELAYED is 'Failed to punch page: 2' before the fix."""
    from memfail.model.kernel.fs import GMEM
    from memfail.model.kernel.memory_failure import MF_SW_SIMULATED, memory_failure
    from memfail.model.kernel.mmops import find_or_create_cache_folio

    out = {}
    for val in (True, False):
        h = run(get_profile("linux-6.18").with_switches(mf_delayed_fix=val), [])
        inode = h.new_inode(GMEM, "gmem", 4096)
        folio = find_or_create_cache_folio(h, inode, 0)
        assert folio is not None
        ret = memory_failure(h, folio.pfn, MF_SW_SIMULATED, None, via="test")
        out[val] = (ret, mf_types(h))
    assert out[True] == (0, [("clean unevictable LRU page", "Delayed")])
    assert out[False][0] == -16 and out[False][1][0][1] == "Failed"


def test_presets_follow_the_kernel_history() -> None:
    """6.1 predates the 2024 madvise/message series; 6.12 has it; 6.18 has the 2025 fixes;
    only 'next' has the 2026 series."""
    p = PROFILES
    assert not p["linux-6.1"].madvise_hwpoison_ar and p["linux-6.12"].madvise_hwpoison_ar
    assert not p["linux-6.12"].already_poisoned_not_accounted
    assert p["linux-6.18"].already_poisoned_not_accounted
    assert p["linux-6.18"].kill_accessing_process_returns_zero
    assert not p["linux-6.18"].mf_delayed_fix and p["next"].mf_delayed_fix
    assert p["linux-6.1"].diff(p["next"])
