"""Kernel profiles: the behaviour switches that changed between kernel versions, as data.

Each switch names the kernel change that introduced it and the rule ids it governs
(``reference/kernel-behaviour.md``). Profiles are frozen, hashable and comparable, and a scenario
may pin one by name.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class Switch:
    """Documentation of one behaviour switch."""

    name: str
    rules: str
    change: str
    since: str
    effect: str


SWITCHES: tuple[Switch, ...] = (
    Switch(
        "hugetlb_1g_handled", "R60",
        "Naoya Horiguchi, 'enable memory error handling on 1GB hugepage' (raw error list)",
        "6.1",
        "Errors on 1 GiB hugetlb pages are handled like 2 MiB ones; before, they were ignored.",
    ),
    Switch(
        "hugetlb_read_partial", "R43, KS-09/10",
        "Jiaqi Yan, 'hugetlbfs: support read of HWPOISON pages' (adjust_range_hwpoison)",
        "6.5",
        "read() of a poisoned hugetlbfs folio returns the bytes before the poisoned raw page; "
        "before, the whole read failed with EIO.",
    ),
    Switch(
        "ksm_hwpoison", "R22, R33",
        "Longlong Xia, 'mm: ksm: support hwpoison for ksm page' (collect_procs_ksm)",
        "6.4",
        "memory_failure() handles KSM pages: the tasks are collected through KSM's rmap and "
        "the page is unmapped; before, hwpoison_user_mappings() logged \"can't handle KSM "
        "pages.\" and the result was 'unmapping failed page'.",
    ),
    Switch(
        "collect_procs_raw_page", "R33, R34",
        "Matthew Wilcox, 376907f3a0b3 'mm/memory-failure: pass the folio and the page to "
        "collect_procs()', merged for v6.7-rc8 (Cc: stable; the 6.1.y backport failed to "
        "apply, and Debian's 6.1 shows the head address)",
        "6.7",
        "collect_procs() looks up the poisoned raw page's address in each VMA "
        "(add_to_kill_anon_file(task, p, ...)), so the AO signal of a HugeTLB page carries the "
        "subpage's address; before, processes were collected by the folio's head "
        "(collect_procs(hpage, ...)) and si_addr was the huge page's start.",
    ),
    Switch(
        "madvise_hwpoison_ar", "R4, DOC-14",
        "Jane Chu, 'Enhance soft hwpoison handling and injection' v3",
        "6.11",
        "madvise(MADV_HWPOISON) passes MF_ACTION_REQUIRED: the calling thread gets BUS_MCEERR_AR "
        "during the call whatever its PR_MCE_KILL policy; before, injection was AO.",
    ),
    Switch(
        "mf_msg_already_poisoned", "R18, R53, R24",
        "Jane Chu, 'improve memory failure action_result messages' (same series)",
        "6.11",
        "The already-poisoned paths call action_result(ALREADY_POISONED, FAILED); hugetlb -EBUSY "
        "reports 'get hwpoison page'; me_unknown is IGNORED; unmap failure is FAILED. Before, the "
        "already-poisoned path only logged 'already hardware poisoned' and counted nothing.",
    ),
    Switch(
        "unmap_failure_sigbus", "R35, DOC-14",
        "Jane Chu, 'Enhance soft hwpoison handling and injection' v3",
        "6.11",
        "A process whose mapping could not be unmapped gets SIGBUS instead of SIGKILL; a THP "
        "that cannot be split ('send SIGBUS in the event of thp split fail') is 'unsplit thp: "
        "Failed' with the mappers signalled and -EHWPOISON, where it was 'unsplit thp: "
        "Ignored', -EBUSY, nobody signalled.",
    ),
    Switch(
        "kill_accessing_process_returns_zero", "R39, R82, DOC-15",
        "Shuai Xue, 'mm/hwpoison: do not send SIGBUS to processes with recovered clean pages'",
        "6.15",
        "kill_accessing_process() returns 0 when the current process has no mapping of the "
        "poisoned pfn; before, it returned -EFAULT and kill_me_maybe() sent a plain SIGBUS.",
    ),
    Switch(
        "already_poisoned_not_accounted", "R6, R83, DOC-12",
        "Kyle Meyer, 'mm/memory-failure: Do not call action_result() on already poisoned pages' "
        "(stable backport)",
        "6.17",
        "A repeated error on an already-poisoned page no longer increments HardwareCorrupted or "
        "mf_stats, and the separate 'already hardware poisoned' line is gone.",
    ),
    Switch(
        "hugetlb_update_hwpoison_codes", "R48, R53, R84",
        "Jane Chu, a148a2040191 'fix missing ->mf_stats count in hugetlb poison'",
        "next",
        "A new raw page in an already-poisoned hugetlb folio is reported as 'huge page: Failed' "
        "and counted; the same raw page again as 'already poisoned page'.",
    ),
    Switch(
        "hugetlb_exact_si_addr", "R39, R84",
        "Jane Chu, 'teach kill_accessing_process to accept hugetlb tail page pfn'",
        "next",
        "For a repeated AR on a hugetlb folio, si_addr is the exact poisoned raw page's address; "
        "before, it was the start of the huge mapping. si_addr_lsb stays the huge shift.",
    ),
    Switch(
        "mf_delayed_fix", "R27, R31, R65, R66, R85",
        "Lisa Wang, 'mm: Fix MF_DELAYED handling on memory failure' (RFC v2, mm-unstable)",
        "next",
        "truncate_error_folio() passes MF_DELAYED through and me_pagecache_clean() excuses the "
        "page-cache pins: guest_memfd errors become 'Delayed' and memory_failure() returns 0. "
        "Before: 'Failed to punch page: 2', FAILED, -EBUSY and a plain SIGBUS on hardware AR.",
    ),
    Switch(
        "shmem_mf_delayed", "R28, R85",
        "Lisa Wang RFC v2 patch 3: shmem_error_remove_folio returns MF_DELAYED",
        "next",
        "shmem errors are counted as 'delayed' instead of 'recovered'; the return code stays 0.",
    ),
    Switch(
        "kernel_owned_enotrecoverable", "R86",
        "newest tree: kernel-owned pages recognised early",
        "next",
        "Kernel-owned pages (slab, page tables, reserved) are reported as 'reserved kernel page: "
        "Ignored' and memory_failure() returns -ENOTRECOVERABLE.",
    ),
    Switch(
        "sysctl_enable_soft_offline", "R11",
        "Jiaqi Yan, 'mm/memory-failure: userspace controls soft-offlining pages' (mm merge for "
        "v6.11)",
        "6.11",
        "/proc/sys/vm/enable_soft_offline exists (writing 0 makes soft offline fail with "
        "EOPNOTSUPP); before, there is no such file and soft offline is always allowed. The "
        "series' first patch ('refactor log format in soft offline code') gives every soft "
        "offline line the pr_fmt prefix 'Soft offline: 0x<pfn>: '; before, they read "
        "'soft offline: 0x<pfn>: ...' and 'soft_offline_page: 0x<pfn> page already "
        "poisoned'.",
    ),
    Switch(
        "tracepoint_memory_failure_group", "oracle §2.2",
        "Xie Yuanbin, 'mm/memory-failure: remove the selection of RAS'",
        "next",
        "memory_failure_event lives in events/memory_failure/ instead of events/ras/.",
    ),
    Switch(
        "kpageflags_folio", "fs/proc/page.c stable_page_flags()",
        "Matthew Wilcox, 'proc: rewrite stable_page_flags()' (dee3d0bef2b0, v6.10-rc1)",
        "6.10",
        "/proc/kpageflags reads a large folio's flags for every page of it: a THP tail reports "
        "its head's LRU, UPTODATE, DIRTY, SWAPBACKED, UNEVICTABLE, and every page of a "
        "HugeTLB folio with PG_hwpoison reports HWPOISON; before, a tail page reported its own "
        "struct page's flags (none of those; ANON, MMAP, THP and SWAPCACHE still come from the "
        "head). The rewrite also reports KSM for every anonymous page: `mapping & "
        "PAGE_MAPPING_KSM` where PAGE_MAPPING_KSM is ANON|MOVABLE (see "
        "kpageflags_ksm_fixed).",
    ),
    Switch(
        "kpageflags_ksm_fixed", "fs/proc/page.c stable_page_flags()",
        "Jinjiang Tu, 'fs/proc: fix KPF_KSM reported for all anonymous pages' (81401cebfc15, "
        "after v7.2-rc2; Fixes: dee3d0bef2b0)",
        "next",
        "KPF_KSM is set for KSM folios only; from 6.10 until this fix, every anonymous page "
        "reported KSM (FOLIO_MAPPING_KSM is FOLIO_MAPPING_ANON | FOLIO_MAPPING_ANON_KSM).",
    ),
)

_SWITCH_NAMES = tuple(s.name for s in SWITCHES)


@dataclass(frozen=True)
class Feature:
    """A kernel feature a scenario may use: a kernel without it refuses the scenario with one
    error (``refuse_missing``) instead of running a model of something it does not have."""

    name: str
    what: str
    since: str
    commit: str
    title: str


# Feature switches, kept apart from the behaviour switches above. Commit ids as they appear
# in the merge logs and later Fixes: tags; the release is the merge window that took them.
FEATURES: tuple[Feature, ...] = (
    Feature("gmem", "guest_memfd (KVM_CREATE_GUEST_MEMFD)", "6.8", "a7800aa80ea4",
            "KVM: Add KVM_CREATE_GUEST_MEMFD ioctl() for guest-specific backing memory"),
    Feature("gmem_mmap", "guest_memfd mmap (GUEST_MEMFD_FLAG_MMAP)", "6.18", "3d3a04fad25a",
            "KVM: Allow and advertise support for host mmap() on guest_memfd files"),
    Feature("gmem_init_shared", "GUEST_MEMFD_FLAG_INIT_SHARED", "6.18", "fe2bf6234e94",
            "KVM: guest_memfd: Add INIT_SHARED flag, reject user page faults if not set"),
)
_FEATURE_NAMES = tuple(f.name for f in FEATURES)


@dataclass(frozen=True, order=True)
class KernelProfile:
    """One kernel's behaviour: a name plus one boolean per switch in ``SWITCHES``."""

    name: str
    hugetlb_1g_handled: bool = True
    hugetlb_read_partial: bool = True
    ksm_hwpoison: bool = True
    collect_procs_raw_page: bool = True
    madvise_hwpoison_ar: bool = True
    mf_msg_already_poisoned: bool = True
    unmap_failure_sigbus: bool = True
    kill_accessing_process_returns_zero: bool = True
    already_poisoned_not_accounted: bool = True
    hugetlb_update_hwpoison_codes: bool = True
    hugetlb_exact_si_addr: bool = True
    mf_delayed_fix: bool = True
    shmem_mf_delayed: bool = True
    kernel_owned_enotrecoverable: bool = True
    tracepoint_memory_failure_group: bool = True
    kpageflags_folio: bool = True
    kpageflags_ksm_fixed: bool = True
    sysctl_enable_soft_offline: bool = True
    # feature switches (FEATURES): what the kernel has at all
    gmem: bool = True
    gmem_mmap: bool = True
    gmem_init_shared: bool = True

    def switches(self) -> dict[str, bool]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "name"}

    def with_switches(self, name: str | None = None, **changes: Any) -> KernelProfile:
        known = _SWITCH_NAMES + _FEATURE_NAMES
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise ValueError(
                f"unknown profile switch {unknown[0]!r}; known: {', '.join(known)}"
            )
        return replace(self, name=name or f"{self.name}+custom", **changes)

    def diff(self, other: KernelProfile) -> dict[str, tuple[bool, bool]]:
        a, b = self.switches(), other.switches()
        return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def _since(version: str) -> KernelProfile:
    """A preset with every switch introduced at or before ``version`` turned on."""

    def key(v: str) -> tuple[int, ...]:
        return (99, 0) if v == "next" else tuple(int(x) for x in v.split("."))

    on = {s.name: key(s.since) <= key(version) for s in SWITCHES}
    on.update({f.name: key(f.since) <= key(version) for f in FEATURES})
    return KernelProfile(name=f"linux-{version}" if version != "next" else "next", **on)


PROFILES: dict[str, KernelProfile] = {
    p.name: p
    for p in (
        _since("6.1"),
        _since("6.6"),
        _since("6.12"),
        _since("6.18"),
        _since("next"),
    )
}
DEFAULT_PROFILE = "linux-6.18"
PROFILE_NOTES = {
    "linux-6.1": "v6.1 as tagged (LTS): 1 GiB hugetlb handled, AO madvise injection.",
    "linux-6.6": "v6.6 as tagged (LTS): adds partial read() of poisoned hugetlbfs pages.",
    "linux-6.12": "v6.12 as tagged (LTS): AR madvise injection, raw-page AO addresses, "
                  "'already poisoned' counted.",
    "linux-6.18": "v6.18: kill_accessing_process returns 0; repeats are not counted again.",
    "next": "mm-unstable / linux-next 2026: MF_DELAYED fix, hugetlb stats and si_addr fixes.",
}


def get_profile(name: str) -> KernelProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown kernel profile {name!r}; valid profiles: {', '.join(PROFILES)}"
        ) from None


def refuse_missing(profile: KernelProfile, feature: str, field: str | None = None,
                   what: str | None = None) -> None:
    """Raise the one error a scenario gets for using a feature its kernel does not have:
    ``feature`` names a FEATURES entry, or a behaviour switch that brings an interface (then
    ``what`` names the interface)."""
    if getattr(profile, feature, True):
        return
    from ..errors import ProfileMissing

    f = next((x for x in FEATURES if x.name == feature), None)
    if f is not None:
        raise ProfileMissing(f"{f.what} is not in {profile.name}: it was merged in v{f.since} "
                              f"(commit {f.commit} '{f.title}'); use a profile of v{f.since} "
                              "or later", field)
    s = next(x for x in SWITCHES if x.name == feature)
    if s.since == "next":  # not in a release yet
        raise ProfileMissing(f"{what or s.name} is not in {profile.name}: only the newest "
                             f"tree has it ({s.change}); use the profile 'next'", field)
    raise ProfileMissing(f"{what or s.name} is not in {profile.name}: it came with v{s.since} "
                          f"({s.change}); use a profile of v{s.since} or later", field)
