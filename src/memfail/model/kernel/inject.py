"""Error injection, hardware errors and machine-check glue, soft offline, unpoison, and the
observation actions (pagemap, kpageflags, meminfo).

Models mm/madvise.c madvise_inject_error (R4), mm/hwpoison-inject.c (R5), the sysfs
hard/soft_offline_page stores (DOC-07), arch/x86/kernel/cpu/mce/core.c queue_task_work /
kill_me_maybe / kill_me_now / kill_me_never (R1, R3, R44, R46), memory_failure_queue (R2),
soft_offline_page (R81) and unpoison_memory (R80).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..actions import (
    CorruptPfn,
    HardOfflinePage,
    Hugepages,
    HwError,
    Kpageflags,
    MceInject,
    Meminfo,
    Pagemap,
    Scrub,
    SoftOfflinePage,
    SplitHugePages,
    Sysctl,
    TargetMixin,
    UnpoisonPfn,
)
from ..errors import (
    EBUSY,
    EHWPOISON,
    EINVAL,
    EIO,
    ENOENT,
    ENOMEM,
    ENXIO,
    EOPNOTSUPP,
    EPERM,
    ModelInputError,
    TargetGone,
)
from ..handlers import ActionResult, handles
from ..state import PROFILE_SYSCTLS, RESERVED_PFN, ZERO_PFN, sysctl_in_range
from ..trace import Observation, PoisonConsumed
from ..units import parse_size
from .fs import GMEM, RAMFS
from .mem import ANON, HUGETLB, KERNEL, Folio
from .memory_failure import (
    MF_ACTION_REQUIRED,
    MF_COUNT_INCREASED,
    MF_MUST_KILL,
    MF_SW_SIMULATED,
    hwpoison_filter,
    memory_failure,
)
from .mm import HWPOISON, PRESENT, PTE, SWAP

if TYPE_CHECKING:
    from ..state import HostState as Host
    from .task import Process, Thread


# --------------------------------------------------------------------------- targets


def read_only_target(a: TargetMixin) -> bool:
    """Whether ``resolve_target`` finds ``a``'s page without changing the host: every form
    but a guest physical address, which allocates the guest_memfd folio of a page the guest
    never touched (``gpa_to_pfn``)."""
    return a.pfn is not None or a.phys is not None or a.addr is not None or \
        a.file is not None or a.gpa is None


def resolve_target(host: Host, a: TargetMixin) -> int:
    """The PFN a target names (see TargetMixin)."""
    geo = host.geometry
    if a.pfn is not None:
        return a.pfn
    if a.phys is not None:
        # sysfs hard_offline_page / soft_offline_page parse a physical address with kstrtoull
        # (base 0) and shift it: pfn = addr >> PAGE_SHIFT (DOC-07; base-page granularity)
        phys = int(a.phys.strip(), 16) if isinstance(a.phys, str) else a.phys
        return phys >> geo.page_shift
    if a.addr is not None:
        assert a.proc is not None
        proc = host.proc(a.proc)
        addr = host.resolve_in(proc, a.addr)
        assert proc.mm is not None
        vma = proc.mm.find_vma(addr)
        k = vma and proc.mm.entry_key(vma, addr, geo.page_shift)
        if not k:
            # a run-time state, not bad input: pagemap would show the page not present
            raise TargetGone(
                f"no page is mapped at {a.proc}:{a.addr} (pagemap shows it not present); "
                "touch it first with mem_read or mem_write", "addr", "ENOENT")
        pte = proc.mm.ptes[k[0]]
        if pte.kind == SWAP:
            # a swap entry: the page, if any, is the swap-cache folio of that slot (R29)
            from .swap import swap_state

            cached = swap_state(host).cache.get(pte.pfn)
            if cached is None:
                raise TargetGone(
                    f"the page at {a.proc}:{a.addr} is swapped out and not in the swap cache "
                    "(pagemap shows it swapped)", "addr", "ENOENT")
            return cached.pfn
        if pte.kind == HWPOISON and vma is not None and vma.huge_order:
            # the address is looked up as /proc/PID/pagemap shows it (do_pagemap):
            # pagemap_hugetlb_range() reports a pfn only for a present huge pte and does not
            # parse a hugetlb hwpoison entry (no PM_SWAP, no frame; unchanged through the 6.18
            # source), so a page unmapped by memory_failure() (R51) has no pfn there
            raise TargetGone(
                f"the HugeTLB page at {a.proc}:{a.addr} was unmapped as poisoned (pagemap "
                "shows it not present)", "addr", "ENOENT")
        return pte.pfn + ((addr - k[0]) >> geo.page_shift)
    if a.file is not None:
        inode = host.files.get(a.file)
        if inode is None and a.proc is not None:
            of = host.proc(a.proc).fds.get(a.file)
            inode = of.inode if of else None
        if inode is None:
            raise ModelInputError(f"no file or fd named {a.file!r}", "file")
        index = parse_size(a.offset, geo.page_size) >> geo.page_shift
        folio = inode.lookup(index)
        if folio is None:
            raise TargetGone(f"file {a.file!r} has no page cached at offset {a.offset}",
                             "offset", "ENOENT")
        return folio.pfn + (index - folio.index)
    if a.gpa is not None and a.vm is not None:
        from ..kvm.gmem import gpa_to_pfn

        return gpa_to_pfn(host, a.vm, a.gpa)
    if a.free is not None:
        if a.free == "buddy":
            # the first page of a free MAX_PAGE_ORDER (4 MiB) block that nothing was ever
            # allocated from, a new block for each page already taken off buddy; its
            # kpageflags show BUDDY (PageBuddy is set on a block's head)
            block = 1 << host.phys.MAX_PAGE_ORDER
            first = (host.phys._bump + block - 1) & ~(block - 1)
            return first + block * (1 + len(host.phys.isolated))
        h = host.hugetlb.hstate(geo.huge_order(a.free))
        # the lowest-addressed free folio, as `memfail conform` finds one on a real kernel
        # (/proc/kpageflags, in pfn order); the free list itself is last in, first out (R55)
        free = sorted(h.free_list, key=lambda f: f.pfn)
        cands = [f for f in free if "hwpoison" not in f.flags] or free
        if not cands:
            raise TargetGone(f"the {a.free} HugeTLB pool has no free folio", "free", "ENOENT")
        if not 0 <= a.index < cands[0].nr_pages:
            raise ModelInputError(f"index must be below {cands[0].nr_pages}", "index")
        return cands[0].pfn + a.index
    assert a.kernel is not None
    if a.kernel == "zero_page":
        return ZERO_PFN
    if a.kernel == "reserved":
        return RESERVED_PFN
    folio = host.alloc_folio(0, KERNEL, owner=a.kernel)
    if folio is None:
        raise TargetGone("out of memory", "kernel", "ENOMEM")
    folio.flags.add(a.kernel)
    folio.get("kernel")
    return folio.pfn


# --------------------------------------------------------------------------- consumption


def consume_user(host: Host, t: Thread, pfn: int, addr: int) -> None:
    """A user-mode (or guest-mode, R45) load consumed poison: do_machine_check queues
    kill_me_maybe on the thread (R44), which runs before it returns to user mode (R46)."""
    from .mce import IN_USER, do_machine_check, task_work_pending, task_work_run

    proc = t.proc
    if task_work_pending(host, t):
        task_work_run(host, t)  # it ran when the thread last returned to user mode (M8)
    host.emit(PoisonConsumed(host.trace.step, pfn, f"{proc.comm}:{t.name}", "user", proc.pid))
    # do_machine_check grades it and queue_task_work counts it (M1-M7); the task work runs
    # on the way back to user mode (M8)
    do_machine_check(host, t, pfn, IN_USER, ripv=t.mce_ripv)
    task_work_run(host, t)


def kill_me_maybe(host: Host, t: Thread, pfn: int, ripv: bool = True) -> int:
    """kill_me_maybe() (R46): memory_failure(pfn, AR[|MUST_KILL]); a plain SIGBUS unless it
    returned 0, -EHWPOISON or -EOPNOTSUPP."""
    t.mce_count = 0
    host.log(f"mce: Uncorrected hardware memory error in user-access at "
             f"{pfn << host.geometry.page_shift:x}")
    flags = MF_ACTION_REQUIRED | (0 if ripv else MF_MUST_KILL)
    ret = _report(host, pfn, flags, t, "kill_me_maybe")
    if ret in (0, -EHWPOISON, -EOPNOTSUPP):  # 0: and sync_core(); no signal
        return ret
    host.log("mce: Memory error not recovered")
    host.force_sig_sigbus(t, "kill_me_now", pfn=pfn)
    return ret


def consume_kernel(host: Host, pfn: int, by: str, copyin: bool = True) -> int:
    """The kernel consumed poison in a machine-check-safe copy (R3): the copy fails and the
    error is reported with memory_failure(pfn, 0): by kill_me_never() for a copy from user
    memory (MCE_IN_KERNEL_COPYIN, which then calls set_mce_nospec() on 0), else by
    memory_failure_queue() (a copy_mc_*() copy: ``copyin`` false, no set_mce_nospec())."""
    host.emit(PoisonConsumed(host.trace.step, pfn, by, "kernel-copy"))
    if not copyin:
        return memory_failure(host, pfn, 0, None, via="memory_failure_queue")
    return kill_me_never(host, pfn)


def kill_me_never(host: Host, pfn: int) -> int:
    """kill_me_never()'s report (R3, R46): memory_failure(pfn, 0), and set_mce_nospec() when
    it returns 0."""
    return _report(host, pfn, 0, None, "kill_me_never")


def _report(host: Host, pfn: int, flags: int, t: Thread | None, via: str) -> int:
    """memory_failure() as the x86 machine-check paths call it (uc_decode_notifier(),
    kill_me_maybe(), kill_me_never()), each followed by set_mce_nospec() when it returned 0
    (R46)."""
    ret = memory_failure(host, pfn, flags, t, via=via)
    if ret == 0:
        set_mce_nospec(host, pfn)
    return ret


def set_mce_nospec(host: Host, pfn: int) -> None:
    """set_mce_nospec() (arch/x86/mm/pat/set_memory.c, R46): x86 takes a page whose
    machine-check report memory_failure() recovered (returned 0 in uc_decode_notifier(),
    kill_me_maybe() or kill_me_never(); not after a firmware-first memory_failure_queue()
    report, nor after MADV_HWPOISON) out of the kernel direct map (set_memory_np() of a
    decoy alias), so a copy_from_kernel_nofault() of it (/proc/kcore) takes a page fault and
    reads zeros instead of the poison. Recorded only for a page memory_failure() left without
    PG_hwpoison (a policy that keeps the failure in a table): every kernel user the model has
    that reads through the direct map checks the flag first, so for a flagged page it changes
    nothing the model shows (a flag dropped later, by a merge that does not carry it, is the
    one case where the kernel would still read zeros and the model does not)."""
    from ..kvm.gmem import pfn_poisoned

    if not pfn_poisoned(host, pfn):
        host.phys.nospec.add(pfn)


# --------------------------------------------------------------------------- injectors


def madvise_inject_error(host: Host, proc: Process, t: Thread, start: int, length: int,
                         soft: bool) -> ActionResult:
    """madvise_inject_error() (R4): page by page through GUP; MADV_HWPOISON calls
    memory_failure(AR (since 6.11) | COUNT_INCREASED | SW_SIMULATED).

    The page is found with get_user_pages_fast(start, 1, 0, &page). gup_flags 0 has no
    FOLL_HWPOISON, so a range that already holds a hwpoison entry fails with -EFAULT, not
    -EHWPOISON: vm_fault_to_errno() maps VM_FAULT_HWPOISON to -EHWPOISON only under
    FOLL_HWPOISON, unchanged from 4.12 (9a291a7c9428) through kernels with
    FOLL_HONOR_NUMA_FAULT (6.7+), so every profile behaves alike (verified in
    include/linux/mm.h vm_fault_to_errno and mm/madvise.c madvise_inject_error)."""
    from .mmops import gup

    if not proc.caps:
        return ActionResult.err(-EPERM)
    geo = host.geometry
    addr = start
    end = start + max(length, 1)
    while addr < end:
        # get_user_pages_fast(start, 1, 0, &page): no FOLL_HWPOISON, so an address that
        # already holds a hwpoison entry fails with -EFAULT (vm_fault_to_errno)
        pfn, folio = gup(host, proc, addr, foll_hwpoison=False)
        if pfn < 0:
            return ActionResult.err(pfn)
        size = folio.nr_pages << geo.page_shift if folio is not None and folio.kind == HUGETLB \
            else geo.page_size
        if soft:
            host.log(f"Soft offlining pfn {pfn:#x} at process virtual address {addr:#x}",
                     level="info")
            if folio is not None:
                folio.put("gup")
            ret = soft_offline_page(host, pfn)
        else:
            host.log(f"Injecting memory failure for pfn {pfn:#x} at process virtual address "
                     f"{addr:#x}", level="info")
            flags = MF_COUNT_INCREASED | MF_SW_SIMULATED
            if host.profile.madvise_hwpoison_ar:
                flags |= MF_ACTION_REQUIRED
            ret = memory_failure(host, pfn, flags, t, via="madvise")
            if ret == -EOPNOTSUPP:
                ret = 0
        if ret:
            return ActionResult.err(ret)
        addr = (addr & ~(size - 1)) + size
    return ActionResult(0)


def _caller(host: Host, as_proc: str | None) -> Thread:
    proc = host.proc(as_proc) if as_proc else host.root
    return proc.leader


@handles(CorruptPfn)
def do_corrupt_pfn(host: Host, a: CorruptPfn) -> ActionResult:
    """debugfs hwpoison/corrupt-pfn (R5): memory_failure(pfn, MF_SW_SIMULATED)."""
    t = _caller(host, a.as_proc)
    if not t.proc.caps:
        return ActionResult.err(-EPERM)
    pfn = resolve_target(host, a)
    if not host.phys.valid(pfn):
        return ActionResult.err(-ENXIO)
    if host.mf.filter_enable:
        # hwpoison_inject(): with the filter on, only LRU, HugeTLB and free buddy pages are
        # considered, and a racy hwpoison_filter() check skips the others; both return 0
        # without calling memory_failure() (R5, R15)
        folio = host.phys.folio_of(pfn)
        if folio is None and not host.phys.is_free(pfn):
            return ActionResult(len(f"{pfn:#x}\n"))
        if folio is not None and "lru" not in folio.flags and folio.kind != HUGETLB:
            return ActionResult(len(f"{pfn:#x}\n"))
        if hwpoison_filter(host, folio, pfn):
            return ActionResult(len(f"{pfn:#x}\n"))
    host.log(f"Injecting memory failure at pfn {pfn:#x}", level="info")
    ret = memory_failure(host, pfn, MF_SW_SIMULATED, t, via="corrupt-pfn")
    if ret and ret != -EOPNOTSUPP:
        return ActionResult.err(ret)
    return ActionResult(len(f"{pfn:#x}\n"))


@handles(HardOfflinePage)
def do_hard_offline(host: Host, a: HardOfflinePage) -> ActionResult:
    """sysfs hard_offline_page (DOC-07): memory_failure(pfn, MF_SW_SIMULATED)."""
    pfn = resolve_target(host, a)
    if not host.phys.valid(pfn):
        return ActionResult.err(-ENXIO)
    ret = memory_failure(host, pfn, MF_SW_SIMULATED, host.root.leader,
                         via="hard_offline_page")
    if ret and ret != -EOPNOTSUPP:
        return ActionResult.err(ret)
    return ActionResult(len(f"{pfn << host.geometry.page_shift:#x}\n"))


@handles(SoftOfflinePage)
def do_soft_offline(host: Host, a: SoftOfflinePage) -> ActionResult:
    pfn = resolve_target(host, a)
    if not host.phys.valid(pfn):
        return ActionResult.err(-ENXIO)
    ret = soft_offline_page(host, pfn)
    if ret:
        return ActionResult.err(ret)
    return ActionResult(len(f"{pfn << host.geometry.page_shift:#x}\n"))


@handles(HwError)
def do_hw_error(host: Host, a: HwError) -> ActionResult:
    """A real uncorrectable error appears (hardware truth); optionally detected now (R2)."""
    pfn = resolve_target(host, a)
    if not host.phys.valid(pfn):
        raise ModelInputError(f"pfn {pfn:#x} is beyond the host's memory", "pfn")
    known = pfn in host.phys.hw_errors
    host.phys.hw_errors.add(pfn)
    if a.detect == "latent":
        return ActionResult(0, unchanged=known and read_only_target(a))
    if a.detect == "ghes":
        from .kaccess import memory_failure_queue, memory_failure_work_func

        memory_failure_queue(host, pfn, 0)
        memory_failure_work_func(host)
        return ActionResult(0)
    return ActionResult(uc_decode_notifier(host, pfn))


def uc_decode_notifier(host: Host, pfn: int) -> int:
    """uc_decode_notifier() (arch/x86/kernel/cpu/mce/core.c, R2): an action-optional or
    deferred machine-check report with a usable address: memory_failure(pfn, 0), and
    set_mce_nospec() when it returns 0."""
    return _report(host, pfn, 0, None, "uc_decode_notifier")


@handles(Scrub)
def do_scrub(host: Host, a: Scrub) -> ActionResult:
    """Patrol scrub reads the page: a latent error is reported AO (R2)."""
    pfn = resolve_target(host, a)
    if pfn not in host.phys.hw_errors:
        return ActionResult(0, unchanged=read_only_target(a))
    return ActionResult(uc_decode_notifier(host, pfn))


@handles(MceInject)
def do_mce_inject(host: Host, a: MceInject) -> ActionResult:
    """A software-raised machine check (mce-inject): the record goes through
    do_machine_check() like a real one, but no DRAM is corrupted. SRAO is logged and the
    uc_decode_notifier calls memory_failure(pfn, 0) (R2); SRAR on the thread that mapped the
    target runs kill_me_maybe() (memory_failure(pfn, MF_ACTION_REQUIRED), R46)."""
    pfn = resolve_target(host, a)
    if not host.phys.valid(pfn):
        raise ModelInputError(f"pfn {pfn:#x} is beyond the host's memory", "pfn")
    if a.severity == "srao":
        return ActionResult(uc_decode_notifier(host, pfn))
    if a.proc is None or a.addr is None:
        raise ModelInputError("severity srar needs the target proc + addr: the thread whose "
                              "load raised the machine check", "severity")
    proc = host.proc(a.proc)
    t = host.thread(proc, a.thread)
    return ActionResult(kill_me_maybe(host, t, pfn, ripv=t.mce_ripv))


@handles(SplitHugePages)
def do_split_huge_pages(host: Host, a: SplitHugePages) -> ActionResult:
    """debugfs split_huge_pages (mm/huge_memory.c split_huge_pages_write): with a pid and a
    range, split_huge_pages_pid() walks it page by page and splits each THP found; without,
    split_huge_pages_all() splits every THP. split_huge_page() fails on a pinned folio."""
    geo = host.geometry
    folios: list[Folio] = []
    if a.proc is not None:
        proc = host.proc(a.proc)
        assert proc.mm is not None
        if a.addr is not None:
            start = host.resolve_in(proc, a.addr)
            vma = proc.mm.find_vma(start)
            end = start + parse_size(a.len, geo.page_size) if a.len is not None else \
                (vma.end if vma is not None else start)
        else:
            start, end = 0, 1 << 48
        for key in sorted(proc.mm.ptes):
            pte = proc.mm.ptes[key]
            size = 1 << (geo.page_shift + pte.order)
            if pte.kind != PRESENT or key + size <= start or key >= end:
                continue
            f = host.phys.folio_of(pte.pfn)
            if f is not None and f.kind == ANON and f.order and f not in folios:
                folios.append(f)
    else:
        folios = [f for f in host.phys.folios.values() if f.kind == ANON and f.order]
    split = 0
    for f in folios:
        if host.split_thp(f) is not None:
            split += 1
    return ActionResult(split)


# --------------------------------------------------------------------------- soft offline


def _so_log(host: Host, text: str, before: str | None = None) -> None:
    """A pr_info() of the soft offline code. Since 6.11 (Jiaqi Yan, 'refactor log format in
    soft offline code', with the ``sysctl_enable_soft_offline`` switch) pr_fmt adds
    "Soft offline: "; before, the lines carried their own "soft offline: " (``before``
    where a line read otherwise) and no "Memory failure: " prefix (memory-failure.c undefines
    pr_fmt above unpoison_memory)."""
    if host.profile.sysctl_enable_soft_offline:
        host.log(f"Soft offline: {text}", level="info")
    else:
        host.log(before if before is not None else f"soft offline: {text}", level="info")


def soft_offline_page(host: Host, pfn: int) -> int:
    """soft_offline_page() (R81, R11, R61, DOC-05, DOC-07, DOC-08): migrate an in-use page to
    a new frame (or invalidate a clean unmapped page-cache page) and mark the old frame
    poisoned; take a free page off buddy; never signals.

    Verified in mm/memory-failure.c:soft_offline_page / soft_offline_in_use_page /
    get_any_page (6.x form): invalid pfn -> -ENXIO; vm.enable_soft_offline=0 -> -EOPNOTSUPP
    with a pr_info_once; an already poisoned page -> 0 ("%#lx: page already poisoned");
    a page get_any_page cannot handle (slab, page table, reserved, the zero page) ->
    "unhandlable page." and -EIO; a failed migration -> "soft offline: ... migration failed"
    and -EBUSY. The lines' prefix depends on the kernel (``_so_log``).
    HardwareCorrupted grows by one base page (page_handle_poison), also for HugeTLB, whose
    source folio is dissolved so the pool shrinks by one (KS-11).
    """
    if not host.phys.valid(pfn):
        return -ENXIO
    if pfn < host.phys.FIRST_PFN and host.phys.folio_of(pfn) is None:
        return -EIO  # not online memory
    if not host.sysctl["vm.enable_soft_offline"]:
        if not host.mf.soft_offline_disabled_logged:
            host.mf.soft_offline_disabled_logged = True
            host.log("Soft offline: disabled by /proc/sys/vm/enable_soft_offline",
                     level="info")
        return -EOPNOTSUPP
    folio = host.phys.folio_of(pfn)
    if pfn in host.phys.hwpoison or (folio is not None and folio.kind == HUGETLB
                                     and "hwpoison" in folio.flags):
        _so_log(host, f"{pfn:#x}: page already poisoned",
                f"soft_offline_page: {pfn:#x} page already poisoned")
        return 0
    if folio is None:
        # soft_offline_free_page -> page_handle_poison(page, true, false)
        if host.phys.take_page_off_buddy(pfn):
            host.phys.hwpoison.add(pfn)
            host.mf.num_poisoned_pages += 1
            host.page_isolated(pfn, "soft_offline")
            return 0
        return -EBUSY
    if folio.kind == KERNEL:
        host.log(f"Memory failure: {pfn:#x}: unhandlable page.")
        return -EIO
    if folio.kind == HUGETLB:
        return _soft_offline_hugetlb(host, folio, pfn)
    if folio.order:
        split = host.split_thp(folio)
        if split is None:
            _so_log(host, f"{pfn:#x}: thp split failed")
            return -EBUSY
        folio = host.phys.folio_of(pfn) or split
    mapping = folio.mapping
    if (mapping is not None and "lru" in folio.flags and "swapcache" not in folio.flags
            and "dirty" not in folio.flags and not folio.mapped and not mapping.unevictable
            and folio.refcount - folio.refs["pagecache"] <= 0):
        # mapping_evict_folio(): a clean, unmapped page-cache page is simply dropped
        _so_log(host, f"{pfn:#x}: invalidated", f"soft_offline: {pfn:#x}: invalidated")
        host.delete_from_page_cache(folio)
        _poison_offlined(host, pfn)
        return 0
    if not _migratable(folio):
        _so_log(host, f"{pfn:#x}: page migration failed 1, type {pfn_flags(folio)}")
        return -EBUSY
    new = host.alloc_folio(0, folio.kind, owner=folio.owner)
    if new is None:
        return -ENOMEM
    new.flags = set(folio.flags) - {"hwpoison"}
    host.phys.data[new.pfn] = host.phys.data.get(folio.pfn, 0)
    _migrate(host, folio, new)
    # page_handle_poison(page, false, true): the put_page() of the migrated source does not
    # free it (free_pages_prepare() keeps a PG_hwpoison order-0 page off the pcp and buddy
    # lists, with its flags and its anon mapping pointer), and page_ref_inc() holds it: a
    # folio with one reference, outside every LRU and the page cache. /proc/kpageflags
    # shows ANON|SWAPBACKED|HWPOISON for an anonymous one (KS-02, measured on Debian's 6.1),
    # and unpoison_memory() frees it (R80).
    folio.flags -= {"dirty", "uptodate", "active", "referenced", "mlocked", "unevictable"}
    _poison_offlined(host, folio.pfn)
    return 0


def _migratable(folio: Folio) -> bool:
    """Whether migrate_pages() can move this folio: guest_memfd refuses (migrate_folio
    returns -EINVAL, R62/R81); ramfs has no migrate_folio and its folios are always dirty, so
    fallback_migrate_folio() must write them out and there is no writepage."""
    m = folio.mapping
    if m is None:
        return True
    return m.kind not in (GMEM, RAMFS)


def pfn_flags(folio: Folio) -> str:
    """A %pGp-like rendering of a folio's flags."""
    return "|".join(sorted(f for f in folio.flags if f in {
        "uptodate", "dirty", "lru", "unevictable", "mlocked", "swapbacked", "head",
        "hwpoison", "reserved", "slab", "anon"}))


def _poison_offlined(host: Host, pfn: int) -> None:
    """page_handle_poison(): the old frame gets PG_hwpoison, stays allocated for good, and is
    counted in HardwareCorrupted."""
    host.phys.hwpoison.add(pfn)
    host.mf.num_poisoned_pages += 1
    host.page_isolated(pfn, "soft_offline")


def _migrate(host: Host, old: Folio, new: Folio) -> None:
    """Move mappings and the page-cache slot from ``old`` to ``new``; old keeps one ref."""
    if old.mapping is not None:
        new.mapping, new.index = old.mapping, old.index
        old.mapping.pages[old.index] = new
        new.refs["pagecache"] = old.refs.pop("pagecache", 0)
        old.mapping = None
    for (mm_id, key), order in old.rmap.items():
        pte = host.mms[mm_id].ptes[key]
        host.mms[mm_id].ptes[key] = PTE(PRESENT, new.pfn, order, pte.dirty, pte.write)
        new.rmap[(mm_id, key)] = order
        new.get("map")
        host.mmu_notify(host.mms[mm_id], key, 1 << (host.geometry.page_shift + order))
    old.rmap.clear()
    if "ksm" in old.flags:
        from .ksm import ksm_migrate

        ksm_migrate(host, old, new)  # folio_migrate_ksm(): the stable node follows
    old.refs.clear()
    old.get("mf")  # the isolated old frame is held for good
    old.flags -= {"lru"}


def _soft_offline_hugetlb(host: Host, folio: Folio, pfn: int) -> int:
    """Soft offline of a HugeTLB folio (DOC-08, KS-11, MT-24..27, R61): a free folio is
    dissolved; an in-use one is migrated whole, then the source is freed and dissolved, so
    the persistent pool shrinks by one. Poison is never migrated; only the raw page asked
    for is marked.

    The target is alloc_migration_target() -> alloc_hugetlb_folio_nodemask(): a free folio
    while one is not promised to a reservation, else alloc_migrate_hugetlb_folio(), a fresh
    temporary folio not bound by vm.nr_overcommit_hugepages (none of a gigantic size, which
    fails with -ENOMEM). move_hugetlb_state() hands the temporary state to the old folio, so
    the target stays as an ordinary pool page and the old folio leaves the pool when freed
    (free_huge_folio(): HPageTemporary -> remove_hugetlb_folio + update_and_free);
    page_handle_poison() then finds the raw page in buddy (dissolve_free_hugetlb_folio()
    returns 0 for a folio no longer hugetlb), takes it off and poisons it."""
    h = host.hugetlb.hstate(folio.order)
    if "hugetlb_freed" in folio.flags:
        if host.hugetlb.dissolve_free_hugetlb_folio(folio) != 0:
            return -EBUSY
        if not host.phys.take_page_off_buddy(pfn):
            return -EBUSY
        _poison_offlined(host, pfn)
        return 0
    if "hugetlb_migratable" not in folio.flags:
        _so_log(host, f"{pfn:#x}: hugepage isolation failed, page count "
                f"{folio.refcount}, type {pfn_flags(folio)}")
        return -EBUSY
    if folio.mapping is not None and not _migratable(folio):
        _so_log(host, f"{pfn:#x}: hugepage migration failed 1, type {pfn_flags(folio)}")
        return -EBUSY
    new = host.hugetlb.alloc_migration_target(h, owner=folio.owner)
    if new is None:
        _so_log(host, f"{pfn:#x}: hugepage migration failed -12, type {pfn_flags(folio)}")
        return -ENOMEM
    new.flags |= folio.flags & {"anon", "dirty", "hugetlb_migratable"}
    if "temporary" in new.flags:
        # move_hugetlb_state(): the temporary state goes to the old folio
        new.flags.discard("temporary")
        folio.flags.add("temporary")
    # migrate_folio() -> folio_copy(): every subpage's data moves to the new huge page
    host.phys.copy_data(folio.pfn, new.pfn, folio.nr_pages)
    _migrate(host, folio, new)
    folio.refs.clear()
    host.hugetlb.free_huge_folio(folio)
    if folio.pfn in host.phys.folios and "hugetlb" in folio.flags:
        host.hugetlb.dissolve_free_hugetlb_folio(folio)
    if host.phys.take_page_off_buddy(pfn) or pfn not in host.phys.isolated:
        host.phys.isolated.add(pfn)
    _poison_offlined(host, pfn)
    return 0


# --------------------------------------------------------------------------- unpoison


@handles(UnpoisonPfn)
def do_unpoison(host: Host, a: UnpoisonPfn) -> ActionResult:
    pfn = resolve_target(host, a)
    ret = unpoison_memory(host, pfn)
    if ret:
        return ActionResult.err(ret)
    return ActionResult(len(f"{pfn:#x}\n"))


UNPOISON_RATELIMIT_BURST = 10  # DEFAULT_RATELIMIT_BURST of DEFINE_RATELIMIT_STATE(unpoison_rs)


def unpoison_pr_info(host: Host, text: str) -> None:
    """unpoison_pr_info(): a pr_info() behind ``__ratelimit(&unpoison_rs)`` (R80).

    The kernel's state allows DEFAULT_RATELIMIT_BURST (10) lines per
    DEFAULT_RATELIMIT_INTERVAL (5 s). The model has no clock, so a whole run counts as one
    interval: the first 10 unpoison lines of a host are printed and later ones are
    suppressed (counted in ``MFState.unpoison_suppressed``; the kernel would report them as
    "unpoison_memory: N callbacks suppressed" once a new interval starts, which never happens
    here). The lines carry no "Memory failure: " prefix: memory-failure.c redefines pr_fmt
    to "" before unpoison_pr_info."""
    if host.mf.unpoison_printed >= UNPOISON_RATELIMIT_BURST:
        host.mf.unpoison_suppressed += 1
        return
    host.mf.unpoison_printed += 1
    host.log(text, level="info")


def unpoison_memory(host: Host, pfn: int) -> int:
    """unpoison_memory() (R80, R14), in the order of the checks in mm/memory-failure.c
    (verified in mm/memory-failure.c:unpoison_memory, 6.x form):

    1. invalid pfn -> -ENXIO (no message);
    2. ``hw_memory_failure`` -> -EOPNOTSUPP, "Disabled after HW memory failure";
    3. PG_hwpoison clear -> -EBUSY, "Page was already unpoisoned";
    4. refcount > 1 -> -EBUSY, "Someone grabs the hwpoison page";
    5. slab, page table, reserved (this includes the zero page) -> -EBUSY, no message;
    6. mapped -> -EBUSY, "Someone maps the hwpoison page";
    7. has a mapping -> -EBUSY, "the hwpoison page has non-NULL mapping";
    8. then: a page MF took off buddy goes back (put_page_back_buddy); hugetlb drops its raw
       list (folio_free_raw_hwp(folio, false): refused only when raw_hwp_unreliable; the HVO
       test applies to move_flag=true only, so HVO folios can be unpoisoned) and each raw
       page leaves HardwareCorrupted; a normal page drops the MF reference and is freed.
    All messages are rate limited (``unpoison_pr_info``).
    """
    if not host.phys.valid(pfn):
        return -ENXIO
    if host.mf.hw_memory_failure:
        unpoison_pr_info(host, f"Unpoison: Disabled after HW memory failure {pfn:#x}")
        return -EOPNOTSUPP
    folio = host.phys.folio_of(pfn)
    huge = folio is not None and folio.kind == HUGETLB and "hugetlb" in folio.flags
    poisoned = (pfn in host.phys.hwpoison) or (huge and folio is not None
                                                and "hwpoison" in folio.flags)
    if not poisoned:
        unpoison_pr_info(host, f"Unpoison: Page was already unpoisoned {pfn:#x}")
        return -EBUSY
    if folio is not None:
        count = folio.refcount
        if huge and "hugetlb_freed" in folio.flags:
            count = 0
        if count > 1:
            unpoison_pr_info(host, f"Unpoison: Someone grabs the hwpoison page {pfn:#x}")
            return -EBUSY
        if folio.kind == KERNEL:
            return -EBUSY  # slab / page table / reserved: silently refused
        if folio.mapped:
            unpoison_pr_info(host, f"Unpoison: Someone maps the hwpoison page {pfn:#x}")
            return -EBUSY
        if folio.mapping is not None:
            unpoison_pr_info(host,
                             f"Unpoison: the hwpoison page has non-NULL mapping {pfn:#x}")
            return -EBUSY
    if huge:
        assert folio is not None
        if "raw_hwp_unreliable" in folio.flags or not folio.raw_hwp:
            return -EBUSY
        n = len(folio.raw_hwp)
        for raw in folio.raw_hwp:
            host.phys.detected.discard(raw)
        folio.raw_hwp.clear()
        folio.flags.discard("hwpoison")
        folio.refs.pop("mf", None)
        host.mf.num_poisoned_pages -= n
        host.maybe_free(folio)
    else:
        host.phys.hwpoison.discard(pfn)
        host.phys.detected.discard(pfn)
        host.mf.num_poisoned_pages -= 1
        if pfn in host.phys.isolated:
            host.phys.isolated.discard(pfn)
            host.phys.free_block(pfn, 0)
        elif folio is not None:
            folio.refs.clear()
            host.maybe_free(folio)
    unpoison_pr_info(host, f"Unpoison: Software-unpoisoned page {pfn:#x}")
    return 0


# --------------------------------------------------------------------------- knobs


@handles(Sysctl)
def do_sysctl(host: Host, a: Sysctl) -> ActionResult:
    if a.name not in host.sysctl:
        raise ModelInputError(f"unknown sysctl {a.name!r}; known: {', '.join(host.sysctl)}",
                              "name")
    switch = PROFILE_SYSCTLS.get(a.name)
    if switch is not None and not getattr(host.profile, switch):
        return ActionResult.err(-ENOENT)  # no such file under /proc/sys on this kernel
    if not sysctl_in_range(a.name, a.value):
        return ActionResult.err(-EINVAL)  # proc_do*vec_minmax: the old value stays
    if a.name == "vm.nr_hugepages":
        h = host.hugetlb.hstate(host.geometry.pmd_order)
        host.hugetlb.set_max_huge_pages(h, a.value)
    elif a.name == "vm.nr_overcommit_hugepages":
        host.hugetlb.hstate(host.geometry.pmd_order).nr_overcommit_huge_pages = a.value
    host.sysctl[a.name] = a.value
    return ActionResult(0)


@handles(Hugepages)
def do_hugepages(host: Host, a: Hugepages) -> ActionResult:
    h = host.hugetlb.hstate(host.geometry.huge_order(a.size))
    if a.overcommit is not None:
        h.nr_overcommit_huge_pages = a.overcommit
    return ActionResult(host.hugetlb.set_max_huge_pages(h, a.count))


# --------------------------------------------------------------------------- observations

KPF = ["LOCKED", "ERROR", "REFERENCED", "UPTODATE", "DIRTY", "LRU", "ACTIVE", "SLAB",
       "WRITEBACK", "RECLAIM", "BUDDY", "MMAP", "ANON", "SWAPCACHE", "SWAPBACKED",
       "COMPOUND_HEAD", "COMPOUND_TAIL", "HUGE", "UNEVICTABLE", "HWPOISON", "NOPAGE", "KSM",
       "THP", "OFFLINE", "ZERO_PAGE", "IDLE", "PGTABLE"]


def kpageflags(host: Host, pfn: int) -> list[str]:
    """/proc/kpageflags for one pfn: KPF_* names (bit 19 = HWPOISON), as stable_page_flags()
    (fs/proc/page.c) gives them on the host's kernel.

    Since 6.10 (``kpageflags_folio``) the flags are the folio's for every page of it; before,
    a tail page's own struct page gave LRU, UPTODATE, DIRTY, SWAPBACKED and UNEVICTABLE
    (``kpf_copy_bit(page->flags, ...)``: a tail has none of them), while ANON, MMAP, THP,
    SLAB and SWAPCACHE looked at the head (PageAnon(), page_mapped(), compound_head()) and
    HWPOISON at the page itself. From 6.10 until ``kpageflags_ksm_fixed`` every anonymous
    page also reports KSM (``mapping & PAGE_MAPPING_KSM``, ANON|MOVABLE), and a HugeTLB
    folio's PG_hwpoison shows on every page of it."""
    if not host.phys.valid(pfn):
        return ["NOPAGE"]
    out: set[str] = set()
    folio = host.phys.folio_of(pfn)
    if pfn in host.phys.hwpoison:
        out.add("HWPOISON")
    if folio is None:
        if host.phys.is_buddy_head(pfn):
            out.add("BUDDY")  # stable_page_flags(): PageBuddy() is true on a block's head only
        return sorted(out, key=KPF.index)
    fl = folio.flags
    prof = host.profile
    own = bool(folio.order) and pfn != folio.pfn and not prof.kpageflags_folio  # a tail's own
    names = {"lru": "LRU", "dirty": "DIRTY", "uptodate": "UPTODATE", "unevictable":
             "UNEVICTABLE", "swapbacked": "SWAPBACKED", "slab": "SLAB", "pagetable": "PGTABLE",
             "zero_page": "ZERO_PAGE", "swapcache": "SWAPCACHE"}
    for f, n in names.items():
        if f in fl and not (own and n in _TAIL_OWN):
            out.add(n)
    if folio.kind == ANON or "anon" in fl:
        out.add("ANON")
    if "ksm" in fl:
        out.add("KSM")  # KPF_KSM (21): folio_test_ksm()
    elif "ANON" in out and prof.kpageflags_folio and not prof.kpageflags_ksm_fixed:
        out.add("KSM")  # `mapping & PAGE_MAPPING_KSM`: true for every anonymous folio
    if folio.mapped:
        out.add("MMAP")
    if folio.order:
        out.add("COMPOUND_HEAD" if pfn == folio.pfn else "COMPOUND_TAIL")
        out.add("HUGE" if folio.kind == HUGETLB else "THP")
    if folio.kind == HUGETLB and "hwpoison" in fl and (pfn == folio.pfn or
                                                       prof.kpageflags_folio):
        out.add("HWPOISON")
    return sorted(out, key=KPF.index)


# The flags a tail page reported from its own struct page before 6.10 (kpf_copy_bit of
# page->flags): a tail page has none of them set.
_TAIL_OWN = frozenset({"LRU", "UPTODATE", "DIRTY", "SWAPBACKED", "UNEVICTABLE"})


@handles(Kpageflags)
def do_kpageflags(host: Host, a: Kpageflags) -> ActionResult:
    pfn = resolve_target(host, a)
    flags = kpageflags(host, pfn)
    host.emit(Observation(host.trace.step, f"kpageflags {pfn:#x}", flags))
    return ActionResult(flags)


@handles(Pagemap)
def do_pagemap(host: Host, a: Pagemap) -> ActionResult:
    """/proc/PID/pagemap: present+pfn, or swapped for a (non-hugetlb) hwpoison entry."""
    proc = host.proc(a.proc)
    addr = host.resolve_in(proc, a.addr)
    geo = host.geometry
    out: dict[str, Any] = {"present": False, "swapped": False, "pfn": None,
                           "hwpoison_entry": False}
    assert proc.mm is not None
    vma = proc.mm.find_vma(addr)
    k = vma and proc.mm.entry_key(vma, addr, geo.page_shift)
    if k:
        pte = proc.mm.ptes[k[0]]
        pfn = pte.pfn + ((addr - k[0]) >> geo.page_shift)
        if pte.kind == PRESENT:
            out.update(present=True, pfn=pfn)
        elif pte.kind == HWPOISON:
            out["hwpoison_entry"] = True
            if not (vma and vma.huge_order):
                out.update(swapped=True, pfn=pfn)  # hugetlb pagemap does not parse it
        elif pte.kind == SWAP:
            out["swapped"] = True  # a swap entry: pagemap gives its type/offset, no pfn
    host.emit(Observation(host.trace.step, f"pagemap {a.proc}:{a.addr}", out))
    return ActionResult(out)


@handles(Meminfo)
def do_meminfo(host: Host, a: Meminfo) -> ActionResult:
    out: dict[str, Any] = dict(host.meminfo())
    out["memory_failure"] = host.mf_stats()
    host.emit(Observation(host.trace.step, "meminfo", out))
    return ActionResult(out)


__all__ = ["consume_kernel", "consume_user", "resolve_target"]

from ..vmm import guest as _guest  # noqa: E402,F401  (the guest_run handler)
from . import kaccess as _kaccess  # noqa: E402,F401  (handlers of kactions)
from . import ksm as _ksm  # noqa: E402,F401  (the ksm_merge handler)
from . import mce as _mce  # noqa: E402,F401  (machine-check handlers)
from . import shm as _shm  # noqa: E402,F401  (System V shared memory handlers)
from . import swap as _swap  # noqa: E402,F401  (the swapout handler)
