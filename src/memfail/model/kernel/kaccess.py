"""Handlers of ``kactions``: kernel-mode access to user memory and memory_failure_queue; and
the inventory of the kernel's users of guest memory (``KERNEL_USERS``).

Models arch/x86/kernel/cpu/mce/severity.c error_context (a kernel-mode machine check is
recoverable only with an exception fixup: copy-from-user or an MCE-safe copy; R3, R47),
mm/gup.c (R42) and mm/memory-failure.c memory_failure_queue / memory_failure_work_func (R2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..errors import EFAULT, EHWPOISON, EIO
from ..handlers import ActionResult, handles
from ..trace import PoisonConsumed
from ..units import parse_size
from .kactions import HwpoisonFilter, MfQueue, UserCopy
from .memory_failure import MF_SOFT_OFFLINE, memory_failure

if TYPE_CHECKING:
    from ..state import HostState as Host
    from .task import Process

MEMORY_FAILURE_FIFO_SIZE = 1 << 4  # MEMORY_FAILURE_FIFO_ORDER 4


def uaccess_page(host: Host, proc: Process, addr: int, kernel_reads: bool,
                 mc_safe: bool = True) -> int:
    """One page of a kernel-mode access to user memory (copy_from_user() when
    ``kernel_reads``, copy_to_user() otherwise): 0 when the page can be copied, -EFAULT when
    the copy stops there (R3, R40, R41, R54).

    The access faults like a user access of the same kind, through handle_mm_fault()
    (``mmops.fault_in``): a page not yet mapped is faulted in (a write fault for
    copy_to_user()), a hwpoison entry returns VM_FAULT_HWPOISON[_LARGE], and so does a page
    the fault handler finds PG_hwpoison: __do_fault() tests PageHWPoison(vmf->page) after
    shmem_fault()/filemap_fault() (R41; the page is unmapped and kept when it cannot be
    evicted) and hugetlb_no_page() tests the cached HugeTLB folio (R54). The fault happened in
    kernel mode, so x86 do_sigbus() / bad_area_nosemaphore() go to kernelmode_fixup_or_oops():
    the exception fixup ends the copy there, with no signal and no "MCE: Killing" line. A
    missing VMA, a store to a read-only one, or a fault past EOF (SIGBUS) ends it the same way.

    A present page with a latent hardware error is consumed only by a load: copy_from_user()
    takes a machine check that error_context() grades MCE_IN_KERNEL_COPYIN when ``mc_safe``
    (the copy stops, then kill_me_never -> memory_failure(pfn, 0), R3), or IN_KERNEL without
    an MCE-safe fixup: the host panics (R47). A store by copy_to_user() consumes nothing."""
    from .inject import consume_kernel
    from .mmops import FaultError, fault_in

    assert proc.mm is not None
    vma = proc.mm.find_vma(addr)
    if vma is None or (not kernel_reads and not vma.writable):
        return -EFAULT
    r = fault_in(host, proc, vma, addr, write=not kernel_reads)
    if isinstance(r, FaultError):
        return -EFAULT
    key, pte = r
    pfn = pte.pfn + ((addr - key) >> host.geometry.page_shift)
    if not kernel_reads or pfn not in host.phys.hw_errors:
        return 0
    if not mc_safe:
        # error_context(): no MCE-safe fixup for this instruction -> IN_KERNEL -> panic
        host.emit(PoisonConsumed(host.trace.step, pfn, f"kernel access for {proc.comm}",
                                 "kernel", proc.pid))
        host.panic("Data load in unrecoverable area of kernel")
    consume_kernel(host, pfn, by=f"copy_from_user in {proc.comm}")
    return -EFAULT


def uaccess_span(host: Host, proc: Process, addr: int, length: int, kernel_reads: bool,
                 mc_safe: bool = True) -> int:
    """raw_copy_{from,to}_user() of ``length`` bytes at ``addr``: the pages are accessed in
    address order (``uaccess_page``) and the copy stops at the first one that faults, so the
    result is the number of bytes before that page (a short copy: ``length`` minus what
    copy_*_user() reports not copied). 0 when the first page faults."""
    page = host.geometry.page_size
    at, end = addr, addr + length
    while at < end:
        if uaccess_page(host, proc, at, kernel_reads, mc_safe):
            return at - addr
        at = (at & ~(page - 1)) + page
    return length


@handles(UserCopy)
def do_user_copy(host: Host, a: UserCopy) -> ActionResult:
    """A system call's kernel-mode access to user memory (R3, R42, R47).

    ``via: copy`` is pipe_write() (fs/pipe.c) of ``len`` bytes from ``addr``: each pipe
    buffer page is filled by copy_page_from_iter(page, 0, PAGE_SIZE, from), and a page that
    copies short (``uaccess_span``: a hwpoison entry, a PG_hwpoison page-cache page met by the
    fault, a consumed latent error) ends the write: `if (unlikely(copied < PAGE_SIZE &&
    iov_iter_count(from))) { if (!ret) ret = -EFAULT; break; }`. The bytes of the short page
    are not counted, so the result is the whole pipe pages copied before it, or -EFAULT when
    that is none (the first page faults)."""
    from .mmops import gup

    proc = host.proc(a.proc)
    host.thread(proc, a.thread)
    addr = host.resolve_in(proc, a.addr)
    length = parse_size(a.len, host.geometry.page_size)
    if a.via == "gup":
        pfn, folio = gup(host, proc, addr)
        if pfn < 0:
            return ActionResult.err(pfn)
        if folio is not None:
            folio.put("gup")
        return ActionResult(0)
    done = uaccess_span(host, proc, addr, length, kernel_reads=True, mc_safe=a.mc_safe)
    if done < length:
        done -= done % host.geometry.page_size  # pipe_write() drops the short page's bytes
        if not done:
            return ActionResult.err(-EFAULT)
    return ActionResult(done)


def memory_failure_queue(host: Host, pfn: int, flags: int) -> bool:
    """memory_failure_queue() (R2): put (pfn, flags) in the per-CPU FIFO, or drop it with
    "buffer overflow when queuing memory failure at %#lx" when the FIFO is full
    (verified in mm/memory-failure.c:memory_failure_queue; the line carries the
    "Memory failure: " pr_fmt prefix)."""
    q = host.mf.mf_queue
    if len(q) >= MEMORY_FAILURE_FIFO_SIZE:
        host.log(f"Memory failure: buffer overflow when queuing memory failure at {pfn:#x}")
        return False
    q.append((pfn, flags))
    return True


def memory_failure_work_func(host: Host) -> None:
    """memory_failure_work_func(): drain the FIFO in order; MF_SOFT_OFFLINE entries go to
    soft_offline_page(), the others to memory_failure() (R2)."""
    from .inject import soft_offline_page

    q = host.mf.mf_queue
    while q:
        pfn, flags = q.pop(0)
        if flags & MF_SOFT_OFFLINE:
            soft_offline_page(host, pfn)
        else:
            memory_failure(host, pfn, flags, None, via="memory_failure_queue")


@handles(MfQueue)
def do_mf_queue(host: Host, a: MfQueue) -> ActionResult:
    from .inject import resolve_target

    pfn = resolve_target(host, a)
    if not a.soft:
        host.phys.hw_errors.add(pfn)
    memory_failure_queue(host, pfn, MF_SOFT_OFFLINE if a.soft else 0)
    if a.drain:
        memory_failure_work_func(host)
    return ActionResult(len(host.mf.mf_queue))


def _kpf_bits(value: int | list[str]) -> int:
    from ..errors import ModelInputError
    from .inject import KPF

    if isinstance(value, int):
        return value
    bits = 0
    for name in value:
        n = name.upper().removeprefix("KPF_")
        if n not in KPF:
            raise ModelInputError(f"unknown page flag {name!r}; known: {', '.join(KPF)}",
                                  "flags_mask")
        bits |= 1 << KPF.index(n)
    return bits


@handles(HwpoisonFilter)
def do_hwpoison_filter(host: Host, a: HwpoisonFilter) -> ActionResult:
    """Write the debugfs corrupt-filter-* files (R15)."""
    mf = host.mf
    if a.enable is not None:
        mf.filter_enable = a.enable
    if a.dev_major is not None:
        mf.filter_dev_major = a.dev_major
    if a.dev_minor is not None:
        mf.filter_dev_minor = a.dev_minor
    if a.flags_mask is not None:
        mf.filter_flags_mask = _kpf_bits(a.flags_mask)
    if a.flags_value is not None:
        mf.filter_flags_value = _kpf_bits(a.flags_value)
    if a.memcg is not None:
        mf.filter_memcg = a.memcg
    return ActionResult(0)


# --------------------------------------------------------------------------- kernel users

Check = Literal["flag", "raw-flag", "entry", "none"]
Recovery = Literal["copyin", "copy_mc_queue", "copy_mc", "none"]


@dataclass(frozen=True)
class KernelUser:
    """One kernel user that reads guest (or user) memory, as its source reads.

    ``check``: what stops it before it loads a page known to be poisoned: ``flag`` PG_hwpoison
    of the page or of its HugeTLB folio, ``raw-flag`` PG_hwpoison of that struct page only (a
    HugeTLB folio's flag is on its head page), ``entry`` a hwpoison entry in the user page
    table it goes through (the uaccess or GUP fails), ``none`` nothing. ``recovery``: how a
    machine check in its copy ends: ``copyin`` copy_from_user (error_context() sets
    MCE_IN_KERNEL_COPYIN: -EFAULT, then kill_me_never -> memory_failure(pfn, 0); R3),
    ``copy_mc_queue`` copy_mc_[user_]highpage (the copy fails, memory_failure_queue(pfn, 0)),
    ``copy_mc`` copy_mc_to_kernel with no report, ``none`` a plain load without an
    MCE-safe fixup: error_context() grades it IN_KERNEL and the kernel panics (R47).
    ``mc_since``: the first release whose copy is machine-check safe (None: every release
    the model has). ``gmem``: whether it can reach guest_memfd memory at all. ``reach``:
    through the VMM's page tables (``hva``) or by physical address / the direct map
    (``pfn``). ``derived`` names the fields not confirmed in source read for this table."""

    name: str
    title: str
    source: str
    check: Check
    check_cite: str
    recovery: Recovery
    copy_cite: str
    consumed: str
    mc_since: tuple[int, int] | None = None
    before: str = ""
    gmem: str = "yes"
    reach: Literal["hva", "pfn"] = "pfn"
    on_check: Literal["skipped", "EFAULT"] = "skipped"
    # reads through the kernel direct map with a page-fault-only fixup (kcore's
    # copy_from_kernel_nofault): a page set_mce_nospec() removed faults, and reads as zeros
    nofault_direct_map: bool = False
    loads: bool = True
    modelled: bool = True
    derived: tuple[str, ...] = ()

    @property
    def checks_hwpoison(self) -> bool:
        return self.check != "none"

    def mc_safe(self, release: tuple[int, int] | None = None) -> bool:
        """Whether its copy survives a machine check on ``release`` (None: the newest)."""
        if self.recovery == "none":
            return False
        return self.mc_since is None or release is None or release >= self.mc_since

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name, "title": self.title, "source": self.source,
            "checks_hwpoison": self.checks_hwpoison, "check": self.check,
            "check_cite": self.check_cite, "mc_safe": self.mc_safe(),
            "recovery": self.recovery, "copy_cite": self.copy_cite,
            "mc_safe_since": ".".join(map(str, self.mc_since)) if self.mc_since else None,
            "before": self.before or None, "consumed": self.consumed, "gmem": self.gmem,
            "reach": self.reach, "on_check": self.on_check, "loads": self.loads,
            "modelled": self.modelled, "derived": list(self.derived),
        }


_HVA: Literal["hva"] = "hva"
KERNEL_USERS: tuple[KernelUser, ...] = (
    KernelUser(
        "kcore", "/proc/kcore read", "fs/proc/kcore.c read_kcore_iter",
        "flag", "read_kcore_iter, KCORE_RAM: `if (!page || PageOffline(page) || "
        "is_page_hwpoison(page) || !pfn_is_ram(pfn) || pfn_is_unaccepted_memory(pfn))` -> "
        "iov_iter_zero; is_page_hwpoison() also tests a HugeTLB folio's head flag",
        "none", "copy_from_kernel_nofault(buf, (void *)start, tsz) into a bounce buffer: an "
        "exception-table entry for page faults only; error_context() grades a machine check "
        "on a kernel-address load IN_KERNEL (is_copy_from_user() false)",
        "a poisoned page without PG_hwpoison (latent, or a failure kept only in a table) "
        "panics the host, unless x86 took it out of the direct map when a machine-check "
        "report recovered it (set_mce_nospec(): the copy faults and reads zeros)",
        nofault_direct_map=True),
    KernelUser(
        "hibernate", "hibernation image (swsusp)", "kernel/power/snapshot.c saveable_page, "
        "copy_data_page, safe_copy_page, do_copy_page",
        "none", "saveable_page() skips forbidden, free, PageOffline, reserved-and-not-present "
        "and guard pages only; there is no PageHWPoison test",
        "none", "do_copy_page(): a word-by-word `*dst++ = *src++` loop; safe_copy_page() even "
        "maps a page removed from the direct map back (hibernate_map_page) to copy it",
        "every poisoned page, known or latent, panics the host while the image is made"),
    KernelUser(
        "migration", "page migration and compaction (migrate_pages)",
        "mm/migrate.c __migrate_folio, migrate_huge_page_move_mapping; mm/util.c folio_mc_copy",
        "flag", "no test in the copy itself: a folio memory_failure() handled is off the LRU "
        "(not isolated) or, for HugeTLB, no longer hugetlb_migratable (R48), so it is not "
        "picked for migration",
        "copy_mc_queue", "__migrate_folio(): `rc = folio_mc_copy(dst, src); if (unlikely(rc)) "
        "return rc;` before the mapping moves; folio_mc_copy() -> copy_mc_highpage() -> "
        "memory_failure_queue(pfn, 0) on a machine check",
        "the migration fails with -EHWPOISON, the old folio stays; memory_failure(pfn, 0) "
        "runs from the queue",
        mc_since=(6, 12), before="folio_migrate_copy() -> folio_copy(): a plain copy; panic",
        gmem="no: guest_memfd mappings are unmovable (mapping_set_unmovable in "
        "__kvm_gmem_create; kvm_gmem_migrate_folio returns -EINVAL)",
        derived=("mc_since", "check")),
    KernelUser(
        "coredump", "core dump of the VMM (guest RAM is dumped unless MADV_DONTDUMP)",
        "fs/coredump.c dump_user_range, dump_page_copy; mm/gup.c get_dump_page",
        "entry", "get_dump_page() goes through GUP: a hwpoison entry fails the fault "
        "(-EHWPOISON) and dump_user_range() writes a hole (dump_skip)",
        "copy_mc", "dump_page_copy(): `copy_mc_to_kernel(page_address(dst), buf, PAGE_SIZE)` "
        "into a bounce page; on a machine check it returns NULL and dump_emit_page(NULL) "
        "returns 0",
        "the core dump stops there (truncated); nothing calls memory_failure()",
        mc_since=(6, 4), before="__kernel_write_iter() of the page: a plain copy; panic "
        "(6.4-6.8: iov_iter_set_copy_mc, commit 245f09226893 'mm: hwpoison: coredump: support "
        "recovery from dump_user_range()', in the mm-stable-2023-05-03 pull; 6.9: "
        "dump_page_copy)",
        gmem="shared pages the VMM maps; private pages are not in its mm", reach=_HVA),
    KernelUser(
        "vmcore", "crash dump: /proc/vmcore on the kdump kernel (makedumpfile)",
        "fs/proc/vmcore.c read_from_oldmem -> copy_oldmem_page (x86: "
        "arch/x86/kernel/crash_dump_64.c __copy_oldmem_page); makedumpfile "
        "__exclude_unnecessary_pages",
        "raw-flag", "makedumpfile excludes a page whose own struct page has PG_hwpoison "
        "(`else if (isHWPOISON(flags) && !info->flag_mem_reuse)`); a HugeTLB folio's flag is "
        "on its head page only, so its other raw pages are read unless user data is excluded "
        "(isHugetlb, DL_EXCLUDE_USER_DATA); a plain `cp /proc/vmcore` checks nothing",
        "none", "__copy_oldmem_page(): ioremap_cache() then copy_to_iter() from a kernel "
        "address: no MCE-safe fixup",
        "the kdump kernel panics and the dump is lost",
        derived=("copy_cite",)),
    KernelUser(
        "vhost", "vhost worker (virtio rings and buffers)",
        "drivers/vhost/vhost.c vhost_copy_from_user, vhost_get_avail / copy_from_iter",
        "entry", "the copy goes through the VMM's page tables: a hwpoison entry makes the "
        "uaccess fault (-EFAULT), no machine check",
        "copyin", "__copy_from_user() / copy_from_iter() on the VMM's userspace address: "
        "error_context() sets MCE_IN_KERNEL_COPYIN",
        "-EFAULT, then kill_me_never -> memory_failure(pfn, 0) (R3): only early-kill "
        "processes are told",
        gmem="shared pages only (through the VMM's mapping)", reach=_HVA, on_check="EFAULT"),
    KernelUser(
        "kvm", "KVM's own guest reads (kvm_read_guest, the instruction emulator)",
        "virt/kvm/kvm_main.c __kvm_read_guest_page; arch/x86/kvm/x86.c "
        "kvm_read_guest_virt_helper",
        "entry", "gfn -> userspace address (memslot), then a uaccess: a hwpoison entry faults "
        "(-EFAULT)",
        "copyin", "__kvm_read_guest_page(): `r = __copy_from_user(data, (void __user *)addr + "
        "offset, len); if (r) return -EFAULT;`",
        "-EFAULT to the caller (emulation fails), memory_failure(pfn, 0) (R3)",
        gmem="shared pages only: KVM cannot read private memory", reach=_HVA, on_check="EFAULT"),
    KernelUser(
        "kvm-map", "KVM mapped guest pages (kvm_vcpu_map, gfn_to_pfn caches)",
        "virt/kvm/kvm_main.c __kvm_vcpu_map; virt/kvm/pfncache.c kvm_gpc_refresh",
        "entry", "hva_to_pfn() -> GUP: a hwpoison entry gives KVM_PFN_ERR_HWPOISON and the map "
        "fails",
        "none", "the page is kmap()ed / memremap()ed and read with plain loads: e.g. "
        "nested_svm_vmrun(): `kvm_vcpu_map(vcpu, gpa_to_gfn(vmcb12_gpa), &map)`, `vmcb12 = "
        "map.hva;`, then nested_copy_vmcb_control_to_cache(svm, &vmcb12->control)",
        "a latent error panics the host",
        gmem="shared pages; private pages only where the architecture maps them",
        reach=_HVA, on_check="EFAULT"),
    KernelUser(
        "kworker", "a kernel worker with no user context copying with copy_mc_*",
        "include/linux/highmem.h copy_mc_highpage", "none",
        "no test: it works on a page, not a mapping",
        "copy_mc_queue", "copy_mc_highpage(): `if (ret) memory_failure_queue(page_to_pfn(from), "
        "0);`",
        "the copy fails (-EIO to the work item); memory_failure(pfn, 0) runs from the queue",
        derived=("check",)),
    KernelUser(
        "khugepaged", "khugepaged collapse of VMM anonymous memory",
        "mm/khugepaged.c __collapse_huge_page_copy, collapse_file",
        "entry", "hpage_collapse_scan_pmd() collapses only present PTEs; a hwpoison entry is "
        "not a present page",
        "copy_mc_queue", "__collapse_huge_page_copy(): `if (copy_mc_user_highpage(page, "
        "src_page, src_addr, vma))` -> SCAN_COPY_MC",
        "the collapse is abandoned; memory_failure(pfn, 0) runs from the queue",
        mc_since=(6, 4), before="copy_user_highpage(): a plain copy; panic (commit "
        "98c76c9f1ef7 'mm/khugepaged: recover from poisoned anonymous memory')",
        gmem="no: guest_memfd is neither anonymous nor shmem", reach=_HVA,
        derived=("mc_since", "check")),
    KernelUser(
        "ksm", "KSM scanning of mergeable VMM memory (ksmd)",
        "mm/ksm.c calc_checksum, memcmp_pages; ksm_might_need_to_copy",
        "entry", "ksmd walks present pages only; a hwpoison entry is skipped",
        "none", "calc_checksum(): `checksum = xxhash(addr, PAGE_SIZE, 0)` over "
        "kmap_local_page(), and memcmp_pages() (mm/util.c: memcmp of two kmaps) read with plain "
        "loads; only the swap-in copy ksm_might_need_to_copy() uses copy_mc_user_highpage()",
        "a latent error in a page ksmd scans panics the host",
        gmem="no: guest_memfd is not anonymous memory", reach=_HVA,
        derived=("check",)),
    KernelUser(
        "process_vm_readv", "process_vm_readv() of the VMM (a debugger, a monitoring agent)",
        "mm/process_vm_access.c process_vm_rw_pages",
        "entry", "pin_user_pages_remote(): a hwpoison entry gives -EHWPOISON -> -EFAULT",
        "none", "process_vm_rw_pages(): `copied = copy_page_to_iter(page, offset, copy, "
        "iter);` a copy_to_user() whose source is the kernel's mapping of the page: not a copy "
        "from user, so error_context() grades it IN_KERNEL",
        "a latent error panics the host",
        gmem="shared pages the VMM maps", reach=_HVA, on_check="EFAULT"),
    # not kernel_access users of the model: listed with what their source says
    KernelUser(
        "devmem", "/dev/mem read", "drivers/char/mem.c read_mem, page_is_allowed",
        "none", "page_is_allowed() -> devmem_is_allowed(): with CONFIG_STRICT_DEVMEM (x86 "
        "default) System RAM reads as zeros, so guest memory is never read",
        "none", "not reached for RAM with STRICT_DEVMEM",
        "nothing with STRICT_DEVMEM", loads=False, modelled=False, derived=("check", "copy_cite")),
    KernelUser(
        "cow", "copy-on-write of VMM private memory after fork()",
        "mm/memory.c wp_page_copy, __wp_page_copy_user; mm/hugetlb.c hugetlb_wp",
        "entry", "a hwpoison entry makes the write fault return VM_FAULT_HWPOISON (AR SIGBUS)",
        "copy_mc_queue", "__wp_page_copy_user(): `if (copy_mc_user_highpage(dst, src, addr, "
        "vma)) return -EHWPOISON;`",
        "the writer gets an AR SIGBUS; memory_failure(pfn, 0) runs from the queue",
        mc_since=(6, 1), gmem="no: guest_memfd is never copied on write", reach=_HVA,
        modelled=False, derived=("mc_since",)),
    KernelUser(
        "gmem-fault", "guest_memfd's own fault and preparation paths",
        "virt/kvm/guest_memfd.c __kvm_gmem_get_pfn, kvm_gmem_prepare_folio, kvm_gmem_populate",
        "flag", "__kvm_gmem_get_pfn(): `if (folio_test_hwpoison(folio)) ... return -EHWPOISON;` "
        "(the folio flag: a HugeTLB folio refuses every page, R67)",
        "copyin", "no load of guest data: preparation clears (stores only); SNP's "
        "sev_gmem_post_populate copies the VMM's source with copy_from_user()",
        "the fault returns -EHWPOISON: KVM_RUN exits (R68)", modelled=False,
        derived=("copy_cite",)),
    KernelUser(
        "snp-reclaim", "SEV-SNP page state changes and reclaim",
        "arch/x86/kvm/svm/sev.c sev_gmem_invalidate, snp_page_reclaim; "
        "arch/x86/virt/svm/sev.c rmp_make_shared",
        "none", "no PageHWPoison test before RMPUPDATE / SNP_PAGE_RECLAIM",
        "none", "RMPUPDATE and clflush_cache_range() of the page: no load of its data by the "
        "host",
        "no consumption (a flush is not a load); a host read of a guest-owned page faults on "
        "the RMP, not a machine check", loads=False, modelled=False, derived=("consumed",)),
    KernelUser(
        "tdx-reclaim", "TDX private page removal and clearing",
        "arch/x86/kvm/vmx/tdx.c tdx_reclaim_page; arch/x86/virt/vmx/tdx/tdx.c "
        "tdh_phymem_page_reclaim, tdh_phymem_page_wbinvd_hkid, tdx_quirk_reset_page",
        "none", "no PageHWPoison test before TDH.PHYMEM.PAGE.RECLAIM / WBINVD",
        "none", "the page is cleared with MOVDIR64B (full-line stores), not read",
        "no consumption by the reclaim; a host load of TDX private memory is a machine check "
        "the kernel reports as 'TDX private memory error. Possible kernel bug.' "
        "(tdx_dump_mce_info)", loads=False, modelled=False, derived=("consumed",)),
    KernelUser(
        "thp-split", "splitting a transparent huge page or a HugeTLB folio",
        "mm/huge_memory.c __split_huge_page / __folio_split", "none",
        "no test needed: the split rewrites struct pages and page tables",
        "none", "no load of page data (memory_failure() itself splits a THP to isolate the "
        "raw page: try_to_split_thp_page)",
        "no consumption", gmem="guest_memfd HugeTLB folios are split only by conversion "
        "(the model's split/merge hooks)", loads=False, modelled=False,
        derived=("copy_cite", "consumed")),
    KernelUser(
        "page_idle", "idle page tracking (/sys/kernel/mm/page_idle/bitmap)",
        "mm/page_idle.c page_idle_bitmap_read, page_idle_get_folio", "none",
        "page_idle_get_folio() takes LRU folios only; a folio memory_failure() took off the LRU "
        "is skipped",
        "none", "an rmap walk of accessed bits: no load of page data",
        "no consumption", gmem="no: guest_memfd folios are unevictable or off the LRU",
        loads=False, modelled=False, derived=("check_cite", "copy_cite")),
    KernelUser(
        "zswap", "swap-out and zswap of VMM anonymous memory",
        "mm/zswap.c zswap_compress; mm/page_io.c swap_writepage", "none",
        "shrink_folio_list() reclaims LRU folios; a folio memory_failure() handled is off the "
        "LRU",
        "none", "zswap compresses with the CPU (plain loads through the crypto API); swap to a "
        "disk is device DMA",
        "a latent error met by zswap's compression panics the host; by swap I/O, see "
        "device-dma", gmem="no: guest_memfd is unevictable", reach=_HVA, modelled=False,
        derived=("check_cite", "copy_cite", "consumed")),
    KernelUser(
        "io_uring", "io_uring fixed (registered) buffers",
        "io_uring/rsrc.c io_sqe_buffers_register; copies through ITER_BVEC",
        "entry", "registration pins with pin_user_pages(): a hwpoison entry fails it",
        "none", "buffered I/O copies from the pinned pages with memcpy (ITER_BVEC); O_DIRECT "
        "hands them to the device",
        "a latent error met by a buffered copy panics the host", reach=_HVA, modelled=False,
        derived=("check", "copy_cite", "consumed")),
    KernelUser(
        "device-dma", "devices reading pinned memory (VFIO, RDMA, vhost-user's devices)",
        "drivers/vfio/vfio_iommu_type1.c vfio_pin_pages_remote; RDMA ib_umem_get",
        "entry", "pinning goes through GUP: a hwpoison entry fails it; a page poisoned after "
        "it was pinned stays pinned",
        "none", "no CPU load: the device reads by DMA",
        "no CPU machine check: the memory controller marks the completion poisoned; the "
        "device or its driver sees an error (AER) and the platform may report the address as "
        "an action-optional error (memory_failure(pfn, 0))", reach=_HVA, loads=False,
        modelled=False,
        derived=("consumed",)),
)

KERNEL_USER_BY_NAME: dict[str, KernelUser] = {u.name: u for u in KERNEL_USERS}
MODELLED_USERS: tuple[str, ...] = tuple(u.name for u in KERNEL_USERS if u.modelled)


def profile_release(name: str) -> tuple[int, int] | None:
    """The release a kernel profile stands for (``linux-6.12`` -> (6, 12)); None for ``next``
    and anything newer than a tag."""
    m = re.match(r"linux-(\d+)\.(\d+)", name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def kernel_user_consume(host: Host, pfn: int, u: KernelUser, mc_safe: bool) -> ActionResult:
    """A kernel user's copy meets poison at ``pfn``: panic without an MCE-safe fixup (R47),
    otherwise end the copy as the user's recovery does (R2, R3)."""
    from .inject import consume_kernel

    if not mc_safe:
        host.note_owners(pfn)
        host.emit(PoisonConsumed(host.trace.step, pfn, u.name, "kernel"))
        host.log("mce: [Hardware Error]: Machine check: Data load in unrecoverable area of "
                 "kernel")
        host.panic("Fatal machine check")
        return ActionResult("panic")
    if u.recovery == "copyin":
        consume_kernel(host, pfn, by=u.name)
        return ActionResult.err(-EFAULT)
    host.emit(PoisonConsumed(host.trace.step, pfn, u.name, "kernel-copy"))
    if u.recovery == "copy_mc":
        return ActionResult("truncated")  # dump_page_copy() -> NULL: the core dump stops
    # copy_mc_[user_]highpage(): memory_failure_queue(pfn, 0), drained by the work item
    memory_failure_queue(host, pfn, 0)
    memory_failure_work_func(host)
    return ActionResult.err(-EIO if u.name == "kworker" else -EHWPOISON)
