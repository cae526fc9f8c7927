"""memory_failure() and its helpers, modelled on mm/memory-failure.c.

Every function names the kernel function it models and the rules it implements
(reference/kernel-behaviour.md). ``mf`` is the host's memory-failure state; ``current`` is the
thread on whose behalf memory_failure runs (None for workqueue/debugfs context without a
user mm of interest).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import EBUSY, EFAULT, EHWPOISON, ENOTRECOVERABLE, ENXIO, EOPNOTSUPP, errno_name
from ..trace import BUS_MCEERR_AO, BUS_MCEERR_AR, MemoryFailureCall, MemoryFailureEvent
from .fs import ERM_DELAYED, ERM_KEEP, ERM_NONE, ERM_TRUNCATE
from .mem import ANON, HUGETLB, KERNEL, Folio
from .mm import HWPOISON, PRESENT

if TYPE_CHECKING:
    from ..state import HostState as Host
    from .task import Process, Thread

# enum mf_flags (R0.3)
MF_COUNT_INCREASED = 1 << 0
MF_ACTION_REQUIRED = 1 << 1
MF_MUST_KILL = 1 << 2
MF_SOFT_OFFLINE = 1 << 3
MF_UNPOISON = 1 << 4
MF_SW_SIMULATED = 1 << 5
MF_NO_RETRY = 1 << 6
FLAG_NAMES = {MF_COUNT_INCREASED: "MF_COUNT_INCREASED", MF_ACTION_REQUIRED: "MF_ACTION_REQUIRED",
              MF_MUST_KILL: "MF_MUST_KILL", MF_SOFT_OFFLINE: "MF_SOFT_OFFLINE",
              MF_UNPOISON: "MF_UNPOISON", MF_SW_SIMULATED: "MF_SW_SIMULATED",
              MF_NO_RETRY: "MF_NO_RETRY"}

# enum mf_result
MF_IGNORED, MF_FAILED, MF_DELAYED, MF_RECOVERED = 0, 1, 2, 3
RESULT_NAMES = {MF_IGNORED: "Ignored", MF_FAILED: "Failed", MF_DELAYED: "Delayed",
                MF_RECOVERED: "Recovered"}

# enum mf_action_page_type: the kernel's strings (oracle §2.1)
MSG_KERNEL = "reserved kernel page"
MSG_KERNEL_HIGH_ORDER = "high-order kernel page"
MSG_HUGE = "huge page"
MSG_FREE_HUGE = "free huge page"
MSG_GET_HWPOISON = "get hwpoison page"
MSG_UNMAP_FAILED = "unmapping failed page"
MSG_DIRTY_SWAPCACHE = "dirty swapcache page"
MSG_CLEAN_SWAPCACHE = "clean swapcache page"
MSG_DIRTY_MLOCKED_LRU = "dirty mlocked LRU page"
MSG_CLEAN_MLOCKED_LRU = "clean mlocked LRU page"
MSG_DIRTY_UNEVICTABLE_LRU = "dirty unevictable LRU page"
MSG_CLEAN_UNEVICTABLE_LRU = "clean unevictable LRU page"
MSG_DIRTY_LRU = "dirty LRU page"
MSG_CLEAN_LRU = "clean LRU page"
MSG_TRUNCATED_LRU = "already truncated LRU page"
MSG_BUDDY = "free buddy page"
MSG_UNSPLIT_THP = "unsplit thp"
MSG_ALREADY_POISONED = "already poisoned"
MSG_UNKNOWN = "unknown page"


def flag_names(flags: int) -> tuple[str, ...]:
    return tuple(n for bit, n in FLAG_NAMES.items() if flags & bit)


@dataclass
class MFState:
    """Global memory-failure state (§3.1): counters, per-node stats, the hardware flag."""

    num_poisoned_pages: int = 0
    hw_memory_failure: bool = False
    unpoison_printed: int = 0  # lines let through unpoison_rs (R80)
    unpoison_suppressed: int = 0
    soft_offline_disabled_logged: bool = False  # pr_info_once (R11)
    mf_queue: list[tuple[int, int]] = field(default_factory=list)  # per-CPU FIFO (R2)
    # hwpoison-inject's corrupt-filter-* files (R15); dev -1 is ~0U ("any")
    filter_enable: bool = False
    filter_dev_major: int = -1
    filter_dev_minor: int = -1
    filter_flags_mask: int = 0
    filter_flags_value: int = 0
    filter_memcg: int = 0
    stats: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("total", "ignored", "failed", "delayed", "recovered"), 0))


@dataclass
class ToKill:
    """One collected (thread, address, size_shift) record (R34)."""

    thread: Thread
    addr: int
    shift: int


# --------------------------------------------------------------------------- action_result


def action_result(host: Host, pfn: int, page_type: str, result: int) -> int:
    """action_result() (R6): trace event, counters, log line; 0 or -EBUSY.

    With ``already_poisoned_not_accounted`` (R83) an already-poisoned report is traced and
    logged but not counted. The dmesg string for that type is "already poisoned page" since the
    same fix, while the tracepoint keeps "already poisoned" (oracle §2.1).
    """
    p = host.profile
    group = "memory_failure" if p.tracepoint_memory_failure_group else "ras"
    host.emit(MemoryFailureEvent(host.trace.step, pfn, page_type, RESULT_NAMES[result], group))
    skip = page_type == MSG_ALREADY_POISONED and p.already_poisoned_not_accounted
    if not skip:
        host.mf.num_poisoned_pages += 1
        host.mf.stats["total"] += 1
        host.mf.stats[RESULT_NAMES[result].lower()] += 1
    shown = page_type
    if page_type == MSG_ALREADY_POISONED and p.already_poisoned_not_accounted:
        shown = "already poisoned page"
    host.log(f"Memory failure: {pfn:#x}: recovery action for {shown}: {RESULT_NAMES[result]}")
    return 0 if result in (MF_RECOVERED, MF_DELAYED) else -EBUSY


# --------------------------------------------------------------------------- whom to signal


def find_early_kill_thread(host: Host, proc: Process) -> Thread | None:
    """find_early_kill_thread() (R12, R9): first thread, in list order, that is EARLY, or
    that has no per-thread policy while vm.memory_failure_early_kill is 1."""
    for t in proc.live_threads():
        if t.mce_process:
            if t.mce_early:
                return t
        elif host.sysctl["vm.memory_failure_early_kill"]:
            return t
    return None


def task_early_kill(host: Host, proc: Process, force_early: bool,
                    current: Thread | None) -> Thread | None:
    """task_early_kill() (R13): with AR, the current process is represented by current."""
    if not proc.alive or proc.mm is None:
        return None
    if force_early and current is not None and current.proc is proc and current.alive:
        return current
    return find_early_kill_thread(host, proc)


def collect_procs(host: Host, folio: Folio, pfn: int, force_early: bool,
                  current: Thread | None) -> list[ToKill]:
    """collect_procs(): KSM (R33), anon (R32, mapped VMAs only) or file (R33, every
    covering VMA)."""
    if "ksm" in folio.flags:
        # KSM folio: `if (folio_test_ksm(folio)) collect_procs_ksm(...)` comes before the
        # anon collector. It walks the stable node's rmap items (not the page's anon_vma at
        # its index) and adds each task at most once, with the rmap item's address (R33).
        from .ksm import collect_procs_ksm

        return collect_procs_ksm(host, folio, pfn, force_early, current)
    tokill: list[ToKill] = []
    geo = host.geometry
    shift = geo.shift_of(folio.order) if folio.kind == HUGETLB else geo.page_shift
    if folio.kind == HUGETLB and not host.profile.hugetlb_1g_handled:
        shift = geo.shift_of(folio.order)
    if folio.kind == HUGETLB and not host.profile.collect_procs_raw_page:
        # before 6.8, hwpoison_user_mappings() called collect_procs(hpage, ...): the address
        # looked up in each VMA is the head's, so si_addr is the huge page's start (R34)
        pfn = folio.pfn
    for proc in host.processes_in_order():
        t = task_early_kill(host, proc, force_early, current)
        if t is None or proc.mm is None:
            continue
        if folio.mapping is None:
            # collect_procs_anon: VMAs where the page is actually mapped
            for vma in proc.mm.vmas:
                for (mm_id, vaddr), order in folio.rmap.items():
                    if mm_id == proc.mm.id and vma.contains(vaddr):
                        addr = vaddr + ((pfn - folio.pfn) << geo.page_shift) if order else vaddr
                        tokill.append(ToKill(t, addr, shift))
        else:
            index = folio.index + (pfn - folio.pfn)
            for vma in folio.mapping.i_mmap:
                if vma.mm is not proc.mm:
                    continue
                at = vma.addr_of(index, geo.page_shift)
                if at is not None:
                    tokill.append(ToKill(t, at, shift))
    return tokill


def kill_procs(host: Host, tokill: list[ToKill], forcekill: bool, pfn: int, flags: int,
               current: Thread | None, unmap_failed: bool = False) -> None:
    """kill_procs()/kill_proc() (R35): force AR to current, queue AO to everyone else."""
    if not forcekill:
        return
    for tk in tokill:
        t = tk.thread
        if unmap_failed and not host.profile.unmap_failure_sigbus:
            host.log(f"Memory failure: {pfn:#x}: forcibly killing {t.comm}:{t.tid} because of "
                     "failure to unmap corrupted page")
            host.kill_process(t.proc, 9, "memory_failure")
            continue
        host.log(f"Memory failure: {pfn:#x}: Sending SIGBUS to {t.comm}:{t.tid} due to hardware "
                 "memory corruption")
        if flags & MF_ACTION_REQUIRED and t is current:
            host.force_sig_mceerr(t, BUS_MCEERR_AR, tk.addr, tk.shift, "memory_failure", pfn)
        else:
            host.send_sig_mceerr(t, BUS_MCEERR_AO, tk.addr, tk.shift, "memory_failure", pfn)


# --------------------------------------------------------------------------- unmapping


def hwpoison_user_mappings(host: Host, folio: Folio, pfn: int, flags: int,
                           current: Thread | None) -> bool:
    """hwpoison_user_mappings() / unmap_poisoned_folio() (R22). Returns unmap_success."""
    if not folio.mapped:
        return True  # step 1: nobody is signalled, not even early-kill processes
    if "ksm" in folio.flags and not host.profile.ksm_hwpoison:
        # before 6.4 ("mm: ksm: support hwpoison for ksm page"): KSM pages are refused
        host.log(f"Memory failure: {pfn:#x}: can't handle KSM pages.")
        return False
    ttu_hwpoison = True
    if "swapcache" in folio.flags:
        ttu_hwpoison = False
    mapping = folio.mapping
    if (not flags & MF_MUST_KILL and "dirty" not in folio.flags and mapping is not None
            and mapping.can_writeback):
        if host.folio_mkclean(folio):
            folio.flags.add("dirty")
        else:
            ttu_hwpoison = False
            host.log(f"Memory failure: {pfn:#x}: corrupted page was clean: dropped without "
                     "side effects", level="info")
    tokill = collect_procs(host, folio, pfn, bool(flags & MF_ACTION_REQUIRED), current)
    keys = list(folio.rmap)
    locked = any((v := host.mms[mm_id].find_vma(k)) is not None and v.locked
                 for mm_id, k in keys)
    host.try_to_unmap(folio, hwpoison=ttu_hwpoison, pfn=pfn)
    if "swapcache" in folio.flags:
        from .swap import unmap_to_swap_entries

        unmap_to_swap_entries(host, folio, keys)  # R22 step 3: swap entries, not hwpoison
    if locked and not folio.mapped:
        munlock_after_unmap(folio)
    unmap_success = not folio.mapped
    if not unmap_success:
        host.log(f"Memory failure: {pfn:#x}: failed to unmap page (folio mapcount="
                 f"{len(folio.rmap)})")
    forcekill = "dirty" in folio.flags or bool(flags & MF_MUST_KILL) or not unmap_success
    kill_procs(host, tokill, forcekill, pfn, flags, current, unmap_failed=not unmap_success)
    return unmap_success


def munlock_after_unmap(folio: Folio) -> None:
    """try_to_unmap_one() of a folio in a VM_LOCKED VMA (TTU_IGNORE_MLOCK): removing the rmap
    calls munlock_vma_folio(), and the function ends with mlock_drain_local(), so
    __munlock_folio() runs before memory_failure() looks at the flags again: PG_mlocked is
    cleared and, if the mapping is evictable, the folio moves to the evictable LRU
    (PG_unevictable cleared, PG_lru kept). identify_page_state() therefore matches the
    current flags as a plain "dirty/clean LRU page" (or "unevictable" for ramfs); the saved
    flags would only be used if no row matched (R24). [DERIVED from mm/rmap.c
    try_to_unmap_one and mm/mlock.c __munlock_folio, 5.18+ mlock rework]"""
    folio.flags.discard("mlocked")
    if folio.mapping is None or not folio.mapping.unevictable:
        folio.flags.discard("unevictable")


# --------------------------------------------------------------------------- repeated AR


def kill_accessing_process(host: Host, current: Thread | None, pfn: int, raw_pfn: int) -> int:
    """kill_accessing_process() (R39, R82, R84): walk current's page tables for an entry
    mapping ``pfn``; signal AR with that address, or report that none was found."""
    if current is None or current.proc.mm is None:
        return -EHWPOISON if host.profile.kill_accessing_process_returns_zero else -EFAULT
    mm = current.proc.mm
    geo = host.geometry
    found: tuple[int, int] | None = None
    for addr in sorted(mm.ptes):
        pte = mm.ptes[addr]
        if pte.kind not in (PRESENT, HWPOISON):
            continue
        size = 1 << pte.order
        if pte.order and pte.kind == PRESENT and mm_vma_is_thp(host, mm, addr):
            # a THP PMD gives the exact 4K address and shift 12
            if pte.pfn <= raw_pfn < pte.pfn + size:
                found = (addr + ((raw_pfn - pte.pfn) << geo.page_shift), geo.page_shift)
                break
            continue
        if pte.pfn <= pfn < pte.pfn + size:
            shift = geo.shift_of(pte.order)
            a = addr
            if pte.order and host.profile.hugetlb_exact_si_addr:
                a = addr + ((raw_pfn - pte.pfn) << geo.page_shift)
            found = (a, shift)
            break
    if found is not None:
        host.log(f"Memory failure: {raw_pfn:#x}: Sending SIGBUS to {current.comm}:{current.tid} "
                 "due to hardware memory corruption")
        host.force_sig_mceerr(current, BUS_MCEERR_AR, found[0], found[1],
                              "kill_accessing_process", raw_pfn)
        return -EHWPOISON
    return 0 if host.profile.kill_accessing_process_returns_zero else -EFAULT


def mm_vma_is_thp(host: Host, mm: object, addr: int) -> bool:
    vma = host.vma_at(mm, addr)
    return vma is not None and vma.thp


# --------------------------------------------------------------------------- handlers


def truncate_error_folio(host: Host, folio: Folio, pfn: int) -> int:
    """truncate_error_folio() (R27) with each mapping's error_remove_folio (R28)."""
    mapping = folio.mapping
    assert mapping is not None
    erm = mapping.error_remove_folio()
    if erm == ERM_DELAYED:
        err = host.gmem_error_folio(folio)
        if err == 0:
            return MF_RECOVERED
        if host.profile.mf_delayed_fix and err == MF_DELAYED:
            return MF_DELAYED
        host.log(f"Memory failure: {pfn:#x}: Failed to punch page: {err}", level="info")
        return MF_FAILED
    if erm == ERM_KEEP:
        if mapping.is_shmem and host.profile.shmem_mf_delayed:
            return MF_DELAYED
        return MF_RECOVERED
    if erm == ERM_TRUNCATE:
        host.delete_from_page_cache(folio)
        return MF_RECOVERED
    assert erm == ERM_NONE
    # mapping_evict_folio(): only clean, unmapped, otherwise unreferenced folios
    if "dirty" not in folio.flags and not folio.mapped and not mapping.unevictable \
            and folio.refcount - folio.refs["pagecache"] - folio.refs["mf"] <= 0:
        host.delete_from_page_cache(folio)
        return MF_RECOVERED
    host.log(f"Memory failure: {pfn:#x}: Failed to invalidate", level="info")
    return MF_FAILED


def has_extra_refcount(host: Host, folio: Folio, pfn: int, page_type: str,
                       extra_pins: bool) -> bool:
    """has_extra_refcount() (R26 step 6)."""
    count = folio.refcount - 1
    if extra_pins:
        count -= folio.nr_pages
    if count > 0:
        host.log(f"Memory failure: {pfn:#x}: {page_type} still referenced by {count} users")
        return True
    return False


def me_pagecache_clean(host: Host, folio: Folio, pfn: int, page_type: str) -> int:
    """me_pagecache_clean() (R26)."""
    folio.flags -= {"lru", "active", "unevictable", "mlocked"}  # delete_from_lru_cache
    if folio.kind == ANON or (folio.mapping is None and folio.kind != KERNEL and
                              "anon" in folio.flags):
        return MF_RECOVERED
    mapping = folio.mapping
    if mapping is None:
        return MF_FAILED
    extra_pins = mapping.is_shmem
    ret = truncate_error_folio(host, folio, pfn)
    if ret == MF_DELAYED and host.profile.mf_delayed_fix:
        extra_pins = True  # [NEXT] Lisa Wang: extra_pins for every MF_DELAYED
    if has_extra_refcount(host, folio, pfn, page_type, extra_pins and folio in
                          mapping.pages.values()):
        ret = MF_FAILED
    return ret


def me_pagecache_dirty(host: Host, folio: Folio, pfn: int, page_type: str) -> int:
    """me_pagecache_dirty() (R25): record EIO on the mapping, then clean handling."""
    if folio.mapping is not None:
        folio.mapping.wb_err += 1
    return me_pagecache_clean(host, folio, pfn, page_type)


def me_swapcache_dirty(host: Host, folio: Folio, pfn: int, page_type: str) -> int:
    """me_swapcache_dirty() (R29): clear dirty and uptodate, take the folio off the LRU and
    leave it in the swap cache (one extra pin expected): DELAYED; the next swap-in fault
    finds PG_hwpoison and kills (do_swap_page)."""
    folio.flags -= {"dirty", "uptodate"}
    ok = "lru" in folio.flags
    folio.flags -= {"lru", "active", "unevictable", "mlocked"}
    ret = MF_DELAYED if ok else MF_FAILED
    if has_extra_refcount(host, folio, pfn, page_type, ret == MF_DELAYED):
        ret = MF_FAILED
    return ret


def me_swapcache_clean(host: Host, folio: Folio, pfn: int, page_type: str) -> int:
    """me_swapcache_clean() (R29): delete the folio from the swap cache and the LRU:
    RECOVERED (the slot still holds the data, so the next access reads it back)."""
    from .swap import delete_from_swap_cache

    delete_from_swap_cache(host, folio)  # the MF reference keeps the folio allocated
    ok = "lru" in folio.flags
    folio.flags -= {"lru", "active", "unevictable", "mlocked"}
    ret = MF_RECOVERED if ok else MF_FAILED
    if has_extra_refcount(host, folio, pfn, page_type, False):
        ret = MF_FAILED
    return ret


def me_huge_page(host: Host, folio: Folio, pfn: int) -> int:
    """me_huge_page() (R52)."""
    extra_pins = False
    if folio.mapping is not None:
        res = truncate_error_folio(host, folio, pfn)
        extra_pins = True
    else:
        # anonymous hugetlb: drop the MF reference so the folio returns to the pool, then
        # dissolve it and take the raw page off buddy
        folio.put("mf")
        host.maybe_free(folio)
        if page_handle_poison(host, pfn, folio):
            res = MF_RECOVERED
            return res
        res = MF_FAILED
        return res
    if has_extra_refcount(host, folio, pfn, MSG_HUGE, extra_pins):
        res = MF_FAILED
    return res


def page_handle_poison(host: Host, pfn: int, folio: Folio) -> bool:
    """__page_handle_poison(): dissolve the free hugetlb folio, take the raw page off buddy."""
    if (folio.pfn in host.phys.folios and "hugetlb" in folio.flags
            and host.hugetlb.dissolve_free_hugetlb_folio(folio) != 0):
        return False
    if host.phys.take_page_off_buddy(pfn):
        host.page_isolated(pfn, "take_page_off_buddy")
        return True
    return False


def identify_page_state(host: Host, folio: Folio, pfn: int, saved: set[str]) -> int:
    """identify_page_state() over error_states[] (R24): current flags first, then the saved
    flags plus the current dirty bit."""

    def classify(fl: set[str]) -> tuple[str, str] | None:
        dirty = "dirty" in fl
        if "reserved" in fl:
            return MSG_KERNEL, "kernel"
        if "head" in fl and folio.kind == HUGETLB:
            return MSG_HUGE, "huge"
        if "swapcache" in fl:
            return (MSG_DIRTY_SWAPCACHE if dirty else MSG_CLEAN_SWAPCACHE), "swapcache"
        if "mlocked" in fl:
            return (MSG_DIRTY_MLOCKED_LRU if dirty else MSG_CLEAN_MLOCKED_LRU), "pagecache"
        if "unevictable" in fl:
            return (MSG_DIRTY_UNEVICTABLE_LRU if dirty else MSG_CLEAN_UNEVICTABLE_LRU), \
                "pagecache"
        if "lru" in fl:
            return (MSG_DIRTY_LRU if dirty else MSG_CLEAN_LRU), "pagecache"
        return None

    found = classify(folio.flags)
    if found is None:
        found = classify((saved - {"dirty"}) | ({"dirty"} & folio.flags))
    if found is None:
        host.log(f"Memory failure: {pfn:#x}: Unknown page state")
        res = MF_IGNORED if host.profile.mf_msg_already_poisoned else MF_FAILED
        return action_result(host, pfn, MSG_UNKNOWN, res)
    page_type, handler = found
    if handler == "kernel":
        res = MF_IGNORED
    elif handler == "huge":
        res = me_huge_page(host, folio, pfn)
    elif handler == "swapcache":
        res = me_swapcache_dirty(host, folio, pfn, page_type) if "dirty" in folio.flags \
            else me_swapcache_clean(host, folio, pfn, page_type)
    elif "dirty" in page_type:
        res = me_pagecache_dirty(host, folio, pfn, page_type)
    else:
        res = me_pagecache_clean(host, folio, pfn, page_type)
    return action_result(host, pfn, page_type, res)


# --------------------------------------------------------------------------- hugetlb


def folio_set_hugetlb_hwpoison(host: Host, folio: Folio, pfn: int) -> str | None:
    """folio_set_hugetlb_hwpoison() / hugetlb_update_hwpoison() (R49).

    Returns None for a first error, ``"folio"`` when the folio was already poisoned and a new
    raw page was added (FOLIO_PRE_POISONED), ``"page"`` when the raw page was already listed
    (PAGE_PRE_POISONED)."""
    already = "hwpoison" in folio.flags
    folio.flags.add("hwpoison")
    if "raw_hwp_unreliable" in folio.flags:
        return "page"
    if pfn in folio.raw_hwp:
        return "page"
    folio.raw_hwp.append(pfn)
    if already:
        if not host.profile.hugetlb_update_hwpoison_codes:
            host.mf.num_poisoned_pages += 1  # "the first error event is counted in action_result"
        return "folio"
    return None


def try_memory_failure_hugetlb(host: Host, pfn: int, flags: int, folio: Folio,
                               current: Thread | None) -> int:
    """try_memory_failure_hugetlb() with __get_huge_page_for_hwpoison() (R48-R53)."""
    p = host.profile
    geo = host.geometry
    if folio.order == geo.pud_order and not p.hugetlb_1g_handled:
        return action_result(host, pfn, MSG_UNKNOWN, MF_IGNORED)
    while True:
        count_increased = False
        if flags & MF_COUNT_INCREASED:
            res = 1
            count_increased = True
            if folio.refs["gup"]:
                folio.put("gup")
                folio.get("mf")
        elif "hugetlb_freed" in folio.flags:
            res = 0
        elif "hugetlb_migratable" in folio.flags:
            folio.get("mf")
            count_increased = True
            res = 1
        else:
            res = -EBUSY
            if not flags & MF_NO_RETRY:
                flags |= MF_NO_RETRY
                continue
        pre = folio_set_hugetlb_hwpoison(host, folio, pfn)
        if pre is not None:
            if count_increased:
                folio.put("mf")
            return hugetlb_already_poisoned(host, pfn, flags, folio, pre, current)
        if "hugetlb_migratable" in folio.flags:
            folio.flags.discard("hugetlb_migratable")
        break
    if res == -EBUSY:
        page_type = MSG_GET_HWPOISON if p.mf_msg_already_poisoned else MSG_UNKNOWN
        return action_result(host, pfn, page_type, MF_IGNORED)
    if hwpoison_filter(host, folio, pfn):
        # R15: folio_clear_hugetlb_hwpoison, restore migratable, drop the reference; the
        # kernel forgets the page, as _filtered() does for other pages
        host.phys.detected.discard(pfn)
        folio.raw_hwp.remove(pfn)
        if not folio.raw_hwp:
            folio.flags.discard("hwpoison")
        if res == 1:
            folio.flags.add("hugetlb_migratable")
            if folio.refs["mf"]:
                folio.put("mf")
        return -EOPNOTSUPP
    if res == 0:
        ok = page_handle_poison(host, pfn, folio)
        return action_result(host, pfn, MSG_FREE_HUGE, MF_RECOVERED if ok else MF_FAILED)
    saved = set(folio.flags)
    if not hwpoison_user_mappings(host, folio, pfn, flags, current):
        return action_result(host, pfn, MSG_UNMAP_FAILED,
                             MF_FAILED if p.mf_msg_already_poisoned else MF_IGNORED)
    return identify_page_state(host, folio, pfn, saved)


def hugetlb_already_poisoned(host: Host, pfn: int, flags: int, folio: Folio, pre: str,
                             current: Thread | None) -> int:
    """The already-poisoned branch of try_memory_failure_hugetlb() in each version (R53)."""
    p = host.profile
    if not p.already_poisoned_not_accounted:
        host.log(f"Memory failure: {pfn:#x}: already hardware poisoned")
    rv = -EHWPOISON
    if flags & MF_ACTION_REQUIRED:
        target = pfn if p.hugetlb_exact_si_addr else folio.pfn
        rv = kill_accessing_process(host, current, target, pfn)
    if p.hugetlb_update_hwpoison_codes:
        action_result(host, pfn, MSG_HUGE if pre == "folio" else MSG_ALREADY_POISONED, MF_FAILED)
    elif p.already_poisoned_not_accounted or (p.mf_msg_already_poisoned and
                                              flags & MF_ACTION_REQUIRED):
        action_result(host, pfn, MSG_ALREADY_POISONED, MF_FAILED)
    return rv


# --------------------------------------------------------------------------- test filter


def hwpoison_filter(host: Host, folio: Folio | None, pfn: int) -> bool:
    """hwpoison_filter() (R15): True when the test filter is enabled and the page does not
    match it (hwpoison_filter_dev, _flags, _task in mm/hwpoison-inject.c)."""
    mf = host.mf
    if not mf.filter_enable:
        return False
    if mf.filter_dev_major != -1 or mf.filter_dev_minor != -1:
        # page_mapping() of an anonymous page has no host inode: never matches
        if folio is None or folio.kind == KERNEL or folio.mapping is None:
            return True
        major, minor = folio.mapping.dev
        if mf.filter_dev_major not in (-1, major) or mf.filter_dev_minor not in (-1, minor):
            return True
    if mf.filter_flags_mask or mf.filter_flags_value:
        from .inject import KPF, kpageflags

        bits = sum(1 << KPF.index(n) for n in kpageflags(host, pfn))
        if bits & mf.filter_flags_mask != mf.filter_flags_value:
            return True
    return bool(mf.filter_memcg) and mf.filter_memcg != ROOT_MEMCG_INO


ROOT_MEMCG_INO = 1  # page_cgroup_ino(): every page of the model is charged to the root cgroup


# --------------------------------------------------------------------------- the entry


def memory_failure(host: Host, pfn: int, flags: int, current: Thread | None,
                   via: str) -> int:
    """memory_failure(pfn, flags) (R6-R39, R48-R53). Returns 0, -EHWPOISON, -EBUSY, -ENXIO,
    -EOPNOTSUPP (or -EFAULT from kill_accessing_process on old kernels)."""
    host.note_owners(pfn)
    ret = _memory_failure(host, pfn, flags, current)
    host.emit(MemoryFailureCall(host.trace.step, pfn, flag_names(flags), ret, errno_name(ret),
                                via))
    return ret


def policy_claims(host: Host, folio: Folio) -> bool:
    """Whether memory_failure() hands ``folio`` to the guest_memfd policy instead of the
    kernel's own paths: a guest_memfd folio of the kind the policy ``handles`` (C1)."""
    return folio.mapping is not None and folio.mapping.kind == "gmem" \
        and host.policy is not None and host.policy.claims(folio.mapping.huge_order > 0)


def policy_claimed_folio(host: Host, pfn: int) -> Folio | None:
    """The folio at ``pfn`` if memory_failure(pfn) would hand it to the guest_memfd policy
    (recovery enabled, a valid pfn, ``policy_claims``), else None."""
    if not host.sysctl["vm.memory_failure_recovery"] or not host.phys.valid(pfn):
        return None
    folio = host.phys.folio_of(pfn)
    if folio is None or host.ext.get("gmem_memory_failure") is None or \
            not policy_claims(host, folio):
        return None
    return folio


def _memory_failure(host: Host, pfn: int, flags: int, current: Thread | None) -> int:
    p = host.profile
    if not host.sysctl["vm.memory_failure_recovery"]:
        host.panic(f"Memory failure on page {pfn:x}")  # R8
    if not flags & MF_SW_SIMULATED:
        host.mf.hw_memory_failure = True  # R14
    if not host.phys.valid(pfn):
        host.log(f"Memory failure: {pfn:#x}: memory outside kernel control")
        return -ENXIO  # R16
    host.phys.detected.add(pfn)
    folio = host.phys.folio_of(pfn)

    # guest_memfd folios the policy claims (the call's proposal and its alternatives)
    hook = host.ext.get("gmem_memory_failure")
    if folio is not None and hook is not None and policy_claims(host, folio):
        return int(hook(host, pfn, flags, folio, current))

    # R17: HugeTLB goes first
    if folio is not None and folio.kind == HUGETLB and "hugetlb" in folio.flags:
        return try_memory_failure_hugetlb(host, pfn, flags, folio, current)

    # R86 [newest tree]: get_hwpoison_page() recognises stable kernel-owned pages (reserved,
    # slab, page tables) and returns -ENOTRECOVERABLE. It is not called with
    # MF_COUNT_INCREASED, so madvise() on the zero page still ends in me_kernel().
    if (folio is not None and folio.kind == KERNEL and p.kernel_owned_enotrecoverable
            and not flags & MF_COUNT_INCREASED and pfn not in host.phys.hwpoison):
        host.phys.hwpoison.add(pfn)
        action_result(host, pfn, MSG_KERNEL, MF_IGNORED)
        if host.sysctl.get("vm.panic_on_unrecoverable_memory_failure"):
            host.panic(f"Memory failure: {pfn:#x}: unrecoverable page")
        return -ENOTRECOVERABLE

    # R18: set the flag, or detect that the page is already poisoned
    if pfn in host.phys.hwpoison:
        res = -EHWPOISON
        if not p.already_poisoned_not_accounted:
            host.log(f"Memory failure: {pfn:#x}: already hardware poisoned")
        if flags & MF_ACTION_REQUIRED:
            res = kill_accessing_process(host, current, pfn, pfn)
        if flags & MF_COUNT_INCREASED and folio is not None and folio.refs["gup"]:
            folio.put("gup")
        if p.mf_msg_already_poisoned:
            action_result(host, pfn, MSG_ALREADY_POISONED, MF_FAILED)
        return res
    host.phys.hwpoison.add(pfn)

    # R19: grab the page
    if folio is None:
        if host.phys.is_free(pfn):
            if host.phys.take_page_off_buddy(pfn):
                host.page_isolated(pfn, "take_page_off_buddy")
                return action_result(host, pfn, MSG_BUDDY, MF_RECOVERED)
            return action_result(host, pfn, MSG_BUDDY, MF_FAILED)
        return action_result(host, pfn, MSG_KERNEL_HIGH_ORDER, MF_IGNORED)
    if flags & MF_COUNT_INCREASED:
        if folio.refs["gup"]:
            folio.put("gup")
        folio.get("mf")
    else:
        handlable = "lru" in folio.flags
        if not handlable:
            host.log(f"Memory failure: {pfn:#x}: unhandlable page.")
            page_type = MSG_GET_HWPOISON if p.mf_msg_already_poisoned else MSG_UNKNOWN
            return action_result(host, pfn, page_type, MF_IGNORED)
        folio.get("mf")

    # R15: the test filter. Jane Chu's 6.11 series ("Move hwpoison_filter() higher up")
    # checks it before the THP split; older kernels after the split, with the flags saved.
    if p.mf_msg_already_poisoned and _filtered(host, folio, pfn):
        return -EOPNOTSUPP

    # R20: large non-hugetlb folio (THP): split
    if folio.order > 0 and folio.kind != HUGETLB:
        folio.flags.add("has_hwpoisoned")
        split = host.split_thp(folio)
        if split is None:
            if "huge_zero" in folio.flags:
                # split_huge_page_to_list(): is_huge_zero_page() -> -EBUSY
                host.log("Called split_huge_page for huge zero page", level="warn")
            if not p.unmap_failure_sigbus:
                # before Jane Chu's 6.11 series: try_to_split_thp_page() < 0 ->
                # action_result(MF_MSG_UNSPLIT_THP, MF_IGNORED), -EBUSY, nobody signalled
                return action_result(host, pfn, MSG_UNSPLIT_THP, MF_IGNORED)
            # "mm/memory-failure: send SIGBUS in the event of thp split fail" (6.11):
            # kill_procs_now(), action_result(MF_MSG_UNSPLIT_THP, MF_FAILED), -EHWPOISON
            tokill = collect_procs(host, folio, pfn, bool(flags & MF_ACTION_REQUIRED), current)
            kill_procs(host, tokill, True, pfn, flags, current)
            action_result(host, pfn, MSG_UNSPLIT_THP, MF_FAILED)
            return -EHWPOISON
        folio = split

    if not p.mf_msg_already_poisoned and _filtered(host, folio, pfn):
        return -EOPNOTSUPP

    # R21: non-LRU pages skip unmapping
    saved = set(folio.flags)
    if "lru" in folio.flags or "writeback" in folio.flags:
        folio.flags.discard("writeback")
        if not hwpoison_user_mappings(host, folio, pfn, flags, current):
            return action_result(host, pfn, MSG_UNMAP_FAILED,
                                 MF_FAILED if p.mf_msg_already_poisoned else MF_IGNORED)
        # R23: torn down in the meantime
        if ("lru" in folio.flags and "swapcache" not in folio.flags and folio.mapping is None
                and folio.kind != ANON):
            return action_result(host, pfn, MSG_TRUNCATED_LRU, MF_IGNORED)
    return identify_page_state(host, folio, pfn, saved)


def _filtered(host: Host, folio: Folio, pfn: int) -> bool:
    """The filter check inside memory_failure(): on a mismatch clear PG_hwpoison again and
    drop the reference taken (R15); nothing is counted or logged."""
    if not hwpoison_filter(host, folio, pfn):
        return False
    host.phys.hwpoison.discard(pfn)
    host.phys.detected.discard(pfn)
    if folio.refs["mf"]:
        folio.put("mf")
    return True


__all__ = [
    "MF_ACTION_REQUIRED",
    "MF_COUNT_INCREASED",
    "MF_MUST_KILL",
    "MF_SW_SIMULATED",
    "memory_failure",
]
