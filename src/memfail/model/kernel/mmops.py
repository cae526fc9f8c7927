"""Action handlers for memory: mmap, munmap, user loads/stores, faults, madvise, GUP.

The fault paths model mm/memory.c (__do_fault, R41), mm/hugetlb.c (hugetlb_fault,
hugetlb_no_page, R54) and x86 do_sigbus (R40): an access to a hwpoison entry or to a poisoned
page-cache page raises SIGBUS BUS_MCEERR_AR with si_addr = the faulting address and
si_addr_lsb = the entry's shift. Loads of a page whose DRAM holds a latent error are machine
checks handled by ``inject.consume_user`` (R44-R46).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..actions import Madvise, MemRead, MemWrite, Mlock, Mmap, Munlock, Munmap
from ..errors import EFAULT, EHWPOISON, EINVAL, ENODEV, ENOMEM, ModelInputError
from ..handlers import ActionResult, handles
from ..state import ZERO_PFN
from ..units import parse_size
from .fs import EXT2, GMEM, HUGETLBFS, SHMEM, Inode
from .mem import ANON, FILE, HUGETLB, KERNEL, Folio
from .mm import HWPOISON, PRESENT, PTE, SWAP, VMA

if TYPE_CHECKING:
    from ..state import HostState as Host
    from .task import Process, Thread

BUS_ADRERR = 2


@dataclass
class FaultError:
    """A fault that ends in SIGBUS: ``hwpoison`` (VM_FAULT_HWPOISON[_LARGE]) or ``sigbus``."""

    kind: str
    lsb: int = 12


# --------------------------------------------------------------------------- mmap


@handles(Mmap)
def do_mmap(host: Host, a: Mmap) -> ActionResult:
    proc = host.proc(a.proc)
    geo = host.geometry
    assert proc.mm is not None
    if a.name in proc.regions:
        raise ModelInputError(f"process {a.proc!r} already has a mapping named {a.name!r}",
                              "name")
    try:
        size = parse_size(a.size, geo.page_size)
        offset = parse_size(a.offset, geo.page_size)
    except ValueError as e:
        raise ModelInputError(str(e), "size") from None
    if size <= 0:
        return ActionResult.err(-EINVAL)
    inode: Inode | None = None
    huge_order = 0
    shared = bool(a.shared)
    if a.fd is not None:
        inode = host.fd(proc, a.fd).inode
        shared = True if a.shared is None else a.shared
        if inode.kind == HUGETLBFS:
            huge_order = inode.huge_order
        if inode.kind == GMEM:
            hook = host.ext.get("gmem_mmap_check")
            err = hook(host, inode, shared) if hook else -ENODEV
            if err:
                return ActionResult.err(err)
    elif a.hugetlb is not None:
        huge_order = geo.huge_order(a.hugetlb)
        if shared:
            inode = host.new_inode(HUGETLBFS, "anon_hugepage (deleted)", size, huge_order)
    elif shared:
        inode = host.new_inode(SHMEM, "/dev/zero (deleted)", size)
    align_shift = geo.page_shift + max(huge_order, geo.pmd_order)
    if huge_order and (size & ((1 << (geo.page_shift + huge_order)) - 1) or
                       offset & ((1 << (geo.page_shift + huge_order)) - 1)):
        return ActionResult.err(-EINVAL)
    if offset % geo.page_size:
        return ActionResult.err(-EINVAL)
    start = proc.mm.place(size, 1 << align_shift)
    vma = VMA(mm=proc.mm, name=a.name, start=start, end=start + size, inode=inode,
              pgoff=offset >> geo.page_shift, shared=shared, writable=a.prot == "rw",
              locked=a.locked, huge_order=huge_order, thp=a.thp,
              anon_hugetlb=huge_order > 0 and inode is None,
              file=host.fd(proc, a.fd) if a.fd is not None else None)
    if huge_order:
        h = host.hugetlb.hstate(huge_order)
        need = size >> (geo.page_shift + huge_order)
        new_idx: list[int] = []
        if inode is not None and shared:
            # shared mappings: reservations belong to the file (the inode's resv_map), so a
            # second mapping of the same range reserves nothing more
            resv: set[int] = inode.extra.setdefault("resv_idx", set())
            step = 1 << huge_order
            new_idx = [i for i in range(vma.pgoff, vma.pgoff + (size >> geo.page_shift), step)
                       if i not in inode.pages and i not in resv]
            need = len(new_idx)
        if need and not host.hugetlb.reserve(h, need):
            return ActionResult.err(-ENOMEM)
        if inode is not None and shared:
            inode.extra["resv_idx"].update(new_idx)
        else:
            vma.reserved = need
    if inode is not None and inode.kind == HUGETLBFS and vma.writable \
            and inode.size < size + offset:
        # hugetlbfs_file_mmap(): "if (vma->vm_flags & VM_WRITE && inode->i_size < len)
        # i_size_write(inode, len)": a writable mapping sizes the file (there is no write())
        inode.size = size + offset
    proc.mm.vmas.append(vma)
    proc.mm.vmas.sort(key=lambda v: v.start)
    if inode is not None:
        inode.i_mmap.append(vma)
    proc.regions[a.name] = vma
    if a.populate or a.locked:
        # MAP_POPULATE / MAP_LOCKED fault the range in inside mmap() (mm_populate), before
        # the MADV_HUGEPAGE that ``thp`` stands for can set VM_HUGEPAGE (THP "madvise" mode,
        # Debian's default): the populated pages are 4K ones (measured on Debian's 6.1)
        vma.thp = False
        write = vma.writable and not vma.shared
        step = 1 << (geo.page_shift + huge_order)
        for addr in range(vma.start, vma.end, step):
            r = fault_in(host, proc, vma, addr, write)
            if isinstance(r, FaultError):
                break
        vma.thp = a.thp
    return ActionResult(start)


@handles(Munmap)
def do_munmap(host: Host, a: Munmap) -> ActionResult:
    proc = host.proc(a.proc)
    start = host.resolve_in(proc, a.addr)
    assert proc.mm is not None
    vma = proc.mm.find_vma(start)
    if vma is None:
        return ActionResult(0)
    length = parse_size(a.len, host.geometry.page_size) if a.len is not None \
        else vma.end - start
    host.unmap_vma(vma, start, start + length)
    return ActionResult(0)


# --------------------------------------------------------------------------- faults


def _entry(host: Host, vma: VMA, addr: int) -> tuple[int, PTE] | None:
    k = vma.mm.entry_key(vma, addr, host.geometry.page_shift)
    if k is None:
        return None
    return k[0], vma.mm.ptes[k[0]]


def fault_in(host: Host, proc: Process, vma: VMA, addr: int,
             write: bool) -> tuple[int, PTE] | FaultError:
    """handle_mm_fault(): make ``addr`` accessible, or say why it cannot be."""
    geo = host.geometry
    ent = _entry(host, vma, addr)
    if ent is not None:
        key, pte = ent
        if pte.kind == HWPOISON:
            return FaultError("hwpoison", geo.shift_of(pte.order))
        if pte.kind == SWAP:
            from .swap import do_swap_page

            got = do_swap_page(host, vma, key, pte, write)
            if got == "hwpoison":
                return FaultError("hwpoison", geo.page_shift)  # R29: swap-in of a poisoned page
            if isinstance(got, str):
                return FaultError("sigbus")
            return got
        if not write or pte.write:
            if write:
                pte.dirty = True
            return key, pte
        if not vma.writable:
            return FaultError("sigsegv")
        if pte.special and pte.order:
            return _huge_zero_wp(host, vma, key, pte, addr)
        return do_wp_page(host, vma, key, pte)
    if vma.anonymous:
        if vma.huge_order:
            return hugetlb_no_page(host, vma, addr, write, None)
        if vma.thp and write:
            r = do_huge_anonymous(host, vma, addr)
            if r is not None:
                return r
        if vma.thp and not write:
            r = do_huge_zero(host, vma, addr)
            if r is not None:
                return r
        if not write:
            key = addr & ~(geo.page_size - 1)
            pte = PTE(PRESENT, ZERO_PFN, 0, False, False, special=True)
            vma.mm.ptes[key] = pte
            return key, pte
        folio = host.alloc_folio(0, ANON, owner=proc.comm)
        if folio is None:
            return FaultError("sigbus")
        folio.flags |= {"lru", "anon", "swapbacked", "uptodate"}
        if vma.locked:
            folio.flags |= {"mlocked", "unevictable"}
        key = addr & ~(geo.page_size - 1)
        pte = PTE(PRESENT, folio.pfn, 0, True, True)
        host.set_pte(vma, key, pte, folio)
        return key, pte
    inode = vma.inode
    assert inode is not None
    if inode.kind == HUGETLBFS:
        return hugetlb_no_page(host, vma, addr, write, inode)
    index = vma.index_of(addr, geo.page_shift)
    if inode.kind == GMEM:
        hook = host.ext.get("gmem_fault")
        if hook is None:
            return FaultError("sigbus")
        got = hook(host, inode, index)
        if isinstance(got, FaultError):
            return got
        folio = got
    else:
        if index << geo.page_shift >= _isize(inode, vma):
            return FaultError("sigbus")
        folio = find_or_create_cache_folio(host, inode, index)
        if folio is None:
            return FaultError("sigbus")
    if page_poisoned(host, folio, index):
        # __do_fault (R41): unmap it everywhere, try to evict; the MF reference keeps it.
        # A 4K piece of a split guest_memfd HugeTLB folio is never evicted on its own: it
        # is part of a huge page that only guest_memfd's merge or truncation hands back to
        # the pool (R87), so mapping_evict_folio() fails and the fault is VM_FAULT_HWPOISON.
        if "gmem_sub" in folio.flags or folio.refs["mf"] or \
                folio.refcount > folio.refs["pagecache"] + folio.refs["map"]:
            host.try_to_unmap(folio, hwpoison=False, pfn=folio.pfn)
            return FaultError("hwpoison", geo.page_shift)
        host.delete_from_page_cache(folio)
        return fault_in(host, proc, vma, addr, write)
    key = addr & ~(geo.page_size - 1)
    if not vma.shared and write:
        return cow_private_file(host, vma, key, folio)
    pte = PTE(PRESENT, folio.pfn, 0, write, vma.writable and vma.shared)
    host.set_pte(vma, key, pte, folio)
    if vma.locked:
        folio.flags |= {"mlocked", "unevictable"}
    return key, pte


def _isize(inode: Inode, vma: VMA) -> int:
    if inode.name == "/dev/zero (deleted)":
        return 1 << 62
    return inode.size


def page_poisoned(host: Host, folio: Folio, index: int) -> bool:
    """``PageHWPoison(vmf->page)`` as __do_fault() tests it after ->fault (R41). A huge
    HugeTLB folio answers with its folio-wide flag (hugetlb keeps PG_hwpoison on the head,
    R54); any other page with its own flag, which for the 4K pieces of a split guest_memfd
    HugeTLB folio (gmem_split, R87) is the raw page's flag the split moved there."""
    if folio.kind == HUGETLB and folio.order:
        return "hwpoison" in folio.flags
    if "hwpoison" in folio.flags:
        return True
    return folio.pfn + (index - folio.index) in host.phys.hwpoison


def find_or_create_cache_folio(host: Host, inode: Inode, index: int) -> Folio | None:
    """filemap_fault / shmem_fault: the cached folio, or a new one (zeroed, or read from
    disk for ext2)."""
    folio = inode.lookup(index)
    if folio is not None:
        return folio
    folio = host.alloc_folio(0, FILE, owner=inode.name)
    if folio is None:
        return None
    folio.flags |= {"lru", "uptodate"}
    if inode.kind == SHMEM:
        folio.flags.add("swapbacked")
    if inode.unevictable:
        folio.flags.add("unevictable")
    folio.mapping = inode
    folio.index = index
    inode.pages[index] = folio
    folio.get("pagecache")
    if inode.kind == EXT2 and index in inode.disk:
        host.phys.data[folio.pfn] = inode.disk[index]
    return folio


def cow_private_file(host: Host, vma: VMA, key: int, src: Folio) -> tuple[int, PTE] | FaultError:
    """A write fault on a MAP_PRIVATE file page: copy it to a new anonymous page."""
    if src.pfn in host.phys.hw_errors:
        return _cow_consumes(host, vma, src.pfn)
    folio = host.alloc_folio(0, ANON, owner="cow")
    if folio is None:
        return FaultError("sigbus")
    folio.flags |= {"lru", "anon", "swapbacked", "uptodate"}
    host.phys.data[folio.pfn] = host.phys.data.get(src.pfn, 0)
    pte = PTE(PRESENT, folio.pfn, 0, True, True)
    host.set_pte(vma, key, pte, folio)
    return key, pte


def _cow_consumes(host: Host, vma: VMA, pfn: int) -> FaultError:
    """The kernel's copy-on-write copy reads a poisoned source page: copy_mc fails,
    memory_failure_queue() reports it and the fault returns VM_FAULT_HWPOISON (RT-10)."""
    from .inject import consume_kernel

    consume_kernel(host, pfn, by="cow copy", copyin=False)
    return FaultError("hwpoison", host.geometry.page_shift)


def do_wp_page(host: Host, vma: VMA, key: int, pte: PTE) -> tuple[int, PTE] | FaultError:
    """Write-protect fault: zero page or shared COW page gets a private copy; a page only we
    map is reused."""
    if pte.special:
        vma.mm.ptes.pop(key)
        folio = host.alloc_folio(0, ANON, owner="anon")
        if folio is None:
            return FaultError("sigbus")
        folio.flags |= {"lru", "anon", "swapbacked", "uptodate"}
        npte = PTE(PRESENT, folio.pfn, 0, True, True)
        host.set_pte(vma, key, npte, folio)
        return key, npte
    src = host.phys.folio_of(pte.pfn)
    assert src is not None
    # wp_can_reuse_anon_folio(): `if (folio_test_ksm(folio) || ...) goto copy`: a KSM page
    # is never reused, even when this is its last mapping
    if src.refs["map"] == 1 and src.kind == ANON and not src.refs["gup"] \
            and "ksm" not in src.flags:
        if "swapcache" in src.flags:
            from .swap import delete_from_swap_cache

            delete_from_swap_cache(host, src)  # wp_can_reuse_anon_folio(): folio_free_swap()
        pte.write = pte.dirty = True
        return key, pte
    if src.kind != ANON and vma.shared:
        pte.write = pte.dirty = True
        return key, pte
    if pte.pfn in host.phys.hw_errors:
        return _cow_consumes(host, vma, pte.pfn)
    order = pte.order
    folio = host.alloc_folio(order, ANON, owner="cow")
    if folio is None:
        return FaultError("sigbus")
    folio.flags |= {"lru", "anon", "swapbacked", "uptodate"} | ({"head"} if order else set())
    host.phys.copy_data(pte.pfn, folio.pfn, folio.nr_pages)
    host.zap_entry(vma.mm, key)
    npte = PTE(PRESENT, folio.pfn, order, True, True)
    host.set_pte(vma, key, npte, folio)
    return key, npte


def huge_zero_folio(host: Host) -> Folio | None:
    """mm_get_huge_zero_page(): the huge zero page, allocated (zeroed, PMD order) on first
    use and kept (the model never shrinks it). Not PageReserved: /proc/kpageflags shows
    COMPOUND_HEAD or COMPOUND_TAIL, THP and ZERO_PAGE; nothing can split it."""
    pfn = host.ext.get("huge_zero_pfn")
    if pfn is not None:
        return host.phys.folio_of(pfn)
    folio = host.alloc_folio(host.geometry.pmd_order, KERNEL, owner="huge_zero_page")
    if folio is None:
        return None
    folio.flags |= {"zero_page", "huge_zero", "head", "thp"}
    folio.get("kernel")
    host.ext["huge_zero_pfn"] = folio.pfn
    return folio


def _empty_pmd_range(host: Host, vma: VMA, addr: int) -> int | None:
    """The start of the PMD-aligned range around ``addr`` when it lies in the VMA
    (thp_vma_suitable_order) and nothing is mapped in it yet (pmd_none); else None."""
    size = 1 << (host.geometry.page_shift + host.geometry.pmd_order)
    key = addr & ~(size - 1)
    if key < vma.start or key + size > vma.end:
        return None
    if any(key <= k < key + size for k in vma.mm.ptes):
        return None
    return key


def do_huge_zero(host: Host, vma: VMA, addr: int) -> tuple[int, PTE] | None:
    """do_huge_pmd_anonymous_page() on a read fault: the huge zero page mapped read-only by
    one PMD when the aligned range lies in the VMA (transparent_hugepage/use_zero_page is 1
    by default); else the 4K zero page (the caller)."""
    geo = host.geometry
    key = _empty_pmd_range(host, vma, addr)
    if key is None:
        return None
    hz = huge_zero_folio(host)
    if hz is None:
        return None
    pte = PTE(PRESENT, hz.pfn, geo.pmd_order, False, False, special=True)
    vma.mm.ptes[key] = pte
    return key, pte


def _huge_zero_wp(host: Host, vma: VMA, key: int, pte: PTE,
                  addr: int) -> tuple[int, PTE] | FaultError:
    """do_huge_pmd_wp_page() on the huge zero PMD: __split_huge_pmd() maps the 4K zero page
    in each PTE of the range (__split_huge_zero_page_pmd) and the fault falls back to the
    PTE level, where do_wp_page() gives the written page a private 4K copy."""
    geo = host.geometry
    del vma.mm.ptes[key]
    for i in range(1 << pte.order):
        vma.mm.ptes[key + (i << geo.page_shift)] = PTE(PRESENT, ZERO_PFN, 0, False, False,
                                                       special=True)
    k4 = addr & ~(geo.page_size - 1)
    return do_wp_page(host, vma, k4, vma.mm.ptes[k4])


def do_huge_anonymous(host: Host, vma: VMA, addr: int) -> tuple[int, PTE] | None:
    """A THP write fault: a PMD-sized anonymous folio when the aligned range fits."""
    geo = host.geometry
    key = _empty_pmd_range(host, vma, addr)
    if key is None:
        return None
    folio = host.alloc_folio(geo.pmd_order, ANON, owner="thp")
    if folio is None:
        return None
    folio.flags |= {"lru", "anon", "swapbacked", "uptodate", "head", "thp"}
    if vma.locked:
        # a THP faulted into a VM_LOCKED VMA is mlocked (lru_cache_add_inactive_or_unevictable
        # -> mlock_new_page); __split_huge_page_tail() copies PG_mlocked and PG_unevictable
        folio.flags |= {"mlocked", "unevictable"}
    pte = PTE(PRESENT, folio.pfn, geo.pmd_order, True, True)
    host.set_pte(vma, key, pte, folio)
    return key, pte


def hugetlb_no_page(host: Host, vma: VMA, addr: int, write: bool,
                    inode: Inode | None) -> tuple[int, PTE] | FaultError:
    """hugetlb_fault()/hugetlb_no_page() (R54): a poisoned cached folio gives
    VM_FAULT_HWPOISON_LARGE; otherwise allocate from the pool (using the mapping's
    reservation first)."""
    geo = host.geometry
    order = vma.huge_order
    size = 1 << (geo.page_shift + order)
    key = addr & ~(size - 1)
    h = host.hugetlb.hstate(order)
    folio: Folio | None = None
    if inode is not None:
        index = vma.index_of(key, geo.page_shift)
        if index << geo.page_shift >= inode.size and inode.name != "anon_hugepage (deleted)":
            return FaultError("sigbus")
        folio = inode.lookup(index)
        if folio is not None and "hwpoison" in folio.flags:
            return FaultError("hwpoison", geo.shift_of(order))
    if folio is None:
        file_resv: set[int] = inode.extra.get("resv_idx", set()) if inode is not None \
            and vma.shared else set()
        fidx = vma.index_of(key, geo.page_shift)
        use_resv = vma.reserved > 0 or fidx in file_resv
        folio = host.hugetlb.dequeue(h, owner=_owner(host, vma), use_reserve=use_resv)
        if folio is None:
            return FaultError("sigbus")
        if fidx in file_resv:
            file_resv.discard(fidx)
        elif use_resv:
            vma.reserved -= 1
        folio.flags.add("hugetlb_migratable")
        host.phys.clear_data(folio.pfn, folio.nr_pages)  # hugetlb pages are cleared
        if inode is not None:
            folio.mapping = inode
            folio.index = vma.index_of(key, geo.page_shift)
            inode.pages[folio.index] = folio
            folio.get("pagecache", folio.nr_pages)
            # R51: hugetlb_add_to_page_cache() calls folio_mark_dirty() "so that it will not be
            # removed from cache/file by non-hugetlbfs specific code paths" (verified in
            # mm/hugetlb.c:hugetlb_add_to_page_cache), so mapped hugetlbfs pages count as dirty
            folio.flags.add("dirty")
        else:
            folio.flags.add("anon")
    elif not vma.shared and write:
        # private COW of a hugetlb file page
        src = folio
        folio = host.hugetlb.dequeue(h, owner=_owner(host, vma), use_reserve=vma.reserved > 0)
        if folio is None:
            return FaultError("sigbus")
        folio.flags |= {"hugetlb_migratable", "anon"}
        host.phys.copy_data(src.pfn, folio.pfn, folio.nr_pages)  # copy_user_large_folio
    pte = PTE(PRESENT, folio.pfn, order, write, vma.writable and (vma.shared or
                                                                  folio.kind == HUGETLB))
    host.set_pte(vma, key, pte, folio)
    return key, pte


def _owner(host: Host, vma: VMA) -> str:
    for p in host.processes.values():
        if p.mm is vma.mm:
            return p.comm
    return "?"


# --------------------------------------------------------------------------- access


def user_access(host: Host, proc: Process, t: Thread, addr: int, write: bool,
                value: int) -> ActionResult:
    """A user-mode load or store (with the machine-check and fault paths)."""
    from .inject import consume_user

    geo = host.geometry
    assert proc.mm is not None
    if not proc.alive:
        return ActionResult(None, "ESRCH")
    for _ in range(4):
        vma = proc.mm.find_vma(addr)
        if vma is None or (write and not vma.writable):
            host.kill_process(proc, 11, "segv")
            return ActionResult("sigsegv")
        r = fault_in(host, proc, vma, addr, write)
        if isinstance(r, FaultError):
            return fault_sigbus(host, t, addr, r)
        key, pte = r
        pfn = pte.pfn + ((addr - key) >> geo.page_shift)
        if not write and pfn in host.phys.hw_errors:
            consume_user(host, t, pfn, addr)
            if t.pending is not None or not proc.alive:
                return ActionResult("sigbus")
            continue  # the instruction restarts (e.g. a clean page was dropped)
        if write:
            host.phys.data[pfn] = value
            pte.dirty = True
            return ActionResult(0)
        return ActionResult(host.phys.data.get(pfn, 0))
    return ActionResult("livelock")


def fault_sigbus(host: Host, t: Thread, addr: int, r: FaultError) -> ActionResult:
    """x86 do_sigbus() (R40): AR SIGBUS for VM_FAULT_HWPOISON[_LARGE]; SIGSEGV/BUS_ADRERR
    otherwise."""
    if r.kind == "sigsegv":
        host.kill_process(t.proc, 11, "segv")
        return ActionResult("sigsegv")
    if r.kind == "hwpoison":
        host.log(f"MCE: Killing {t.comm}:{t.tid} due to hardware memory corruption fault at "
                 f"{addr:x}")
        from ..trace import BUS_MCEERR_AR

        host.force_sig_mceerr(t, BUS_MCEERR_AR, addr, r.lsb, "fault")
    else:
        host.force_sig_sigbus(t, "fault", code=BUS_ADRERR, addr=addr)
    return ActionResult("sigbus")


def _access_range(host: Host, a: MemRead | MemWrite, write: bool) -> ActionResult:
    """A load or store loop over ``len`` bytes (or the rest of the mapping): one access per
    page covered, in address order, stopping at the first that does not complete."""
    proc = host.proc(a.proc)
    t = host.thread(proc, a.thread)
    addr = host.resolve_in(proc, a.addr)
    geo = host.geometry
    assert proc.mm is not None
    vma = proc.mm.find_vma(addr)
    if a.whole and vma is not None:
        end = vma.end
    else:
        end = addr + max(parse_size(a.len, geo.page_size), 1)
    value = a.value if isinstance(a, MemWrite) else 0
    first: ActionResult | None = None
    data: list[int] = []
    at = addr
    while at < end:
        res = user_access(host, proc, t, at, write, value)
        if first is None:
            first = res
        if not isinstance(res.ret, int) or isinstance(res.ret, bool) or res.errno:
            return ActionResult(res.ret, res.errno, data)
        if not write:
            data.append(res.ret)
        else:
            data.append(value)
        at = (at & ~(geo.page_size - 1)) + geo.page_size
    assert first is not None
    return ActionResult(first.ret, first.errno, data)


@handles(MemRead)
def do_mem_read(host: Host, a: MemRead) -> ActionResult:
    return _access_range(host, a, write=False)


@handles(MemWrite)
def do_mem_write(host: Host, a: MemWrite) -> ActionResult:
    return _access_range(host, a, write=True)


def gup(host: Host, proc: Process, addr: int, write: bool = False,
        foll_hwpoison: bool = True) -> tuple[int, Folio | None]:
    """get_user_pages_fast() of one page (R42): (pfn, folio) with a GUP reference taken, or
    (-errno, None). A hwpoison entry or poisoned cached page makes the fault return
    VM_FAULT_HWPOISON[_LARGE], which vm_fault_to_errno() turns into -EHWPOISON only for a
    caller that passes FOLL_HWPOISON (KVM's hva_to_pfn, R77) and into -EFAULT otherwise
    (madvise_inject_error passes gup_flags 0)."""
    assert proc.mm is not None
    vma = proc.mm.find_vma(addr)
    if vma is None:
        return -EFAULT, None
    r = fault_in(host, proc, vma, addr, write)
    if isinstance(r, FaultError):
        return (-EHWPOISON if r.kind == "hwpoison" and foll_hwpoison else -EFAULT), None
    key, pte = r
    pfn = pte.pfn + ((addr - key) >> host.geometry.page_shift)
    folio = host.phys.folio_of(pfn)
    if folio is not None:
        folio.get("gup")
    return pfn, folio


# --------------------------------------------------------------------------- madvise


@handles(Madvise)
def do_madvise(host: Host, a: Madvise) -> ActionResult:
    proc = host.proc(a.proc)
    t = host.thread(proc, a.thread)
    start = host.resolve_in(proc, a.addr)
    length = parse_size(a.len, host.geometry.page_size)
    if a.advice in ("hwpoison", "soft_offline"):
        from .inject import madvise_inject_error

        return madvise_inject_error(host, proc, t, start, length, a.advice == "soft_offline")
    assert proc.mm is not None
    vma = proc.mm.find_vma(start)
    if vma is None:
        return ActionResult.err(-ENOMEM)
    end = min(start + length, vma.end)
    if a.advice in ("hugepage", "nohugepage"):
        # hugepage_madvise(): VM_HUGEPAGE on, VM_NOHUGEPAGE off (or the reverse); khugepaged
        # collapse is not modelled, so pages already mapped keep their size
        vma.thp = a.advice == "hugepage"
        return ActionResult(0)
    if a.advice == "dontneed":
        if vma.locked:
            return ActionResult.err(-EINVAL)
        host.unmap_vma(vma, start, end, keep_vma=True)
        return ActionResult(0)
    # MADV_REMOVE: punch the backing shmem range
    if vma.inode is None or not vma.shared or vma.inode.kind not in (SHMEM, HUGETLBFS):
        return ActionResult.err(-EINVAL)
    s = vma.index_of(start, host.geometry.page_shift)
    e = vma.index_of(end, host.geometry.page_shift)
    host.truncate_range(vma.inode, s, e, even_cows=False)
    return ActionResult(0)


# --------------------------------------------------------------------------- mlock


def _vmas_in(host: Host, proc: Process, start: int, end: int) -> list[VMA] | None:
    """The VMAs covering [start, end), or None when part of it has no mapping (ENOMEM)."""
    assert proc.mm is not None
    out = [v for v in proc.mm.vmas if v.start < end and v.end > start]
    covered = start
    for v in sorted(out, key=lambda x: x.start):
        if v.start > covered:
            return None
        covered = max(covered, v.end)
    return out if covered >= end else None


@handles(Mlock)
def do_mlock(host: Host, a: Mlock) -> ActionResult:
    """do_mlock() -> apply_vma_lock_flags() then __mm_populate() (populate_vma_page_range:
    GUP with FOLL_WRITE for writable private mappings); an error in the populate is returned
    through __mlock_posix_error_return() (-EFAULT becomes -ENOMEM)."""
    proc = host.proc(a.proc)
    geo = host.geometry
    start = host.resolve_in(proc, a.addr) & ~(geo.page_size - 1)
    end = start + ((parse_size(a.len, geo.page_size) + geo.page_size - 1)
                   & ~(geo.page_size - 1))
    vmas = _vmas_in(host, proc, start, end)
    if vmas is None:
        return ActionResult.err(-ENOMEM)
    for vma in vmas:
        vma.locked = True
    for vma in vmas:
        write = vma.writable and not vma.shared
        step = 1 << (geo.page_shift + vma.huge_order)
        addr = max(start, vma.start) & ~(step - 1)
        while addr < min(end, vma.end):
            r = fault_in(host, proc, vma, addr, write)
            if isinstance(r, FaultError):
                return ActionResult.err(-ENOMEM)
            folio = host.phys.folio_of(r[1].pfn)
            if folio is not None and folio.kind != HUGETLB and not r[1].special:
                folio.flags |= {"mlocked", "unevictable"}  # mlock_folio()
            addr += step
    return ActionResult(0)


@handles(Munlock)
def do_munlock(host: Host, a: Munlock) -> ActionResult:
    """munlock(): clear VM_LOCKED and munlock_folio() every mapped page of the range."""
    proc = host.proc(a.proc)
    geo = host.geometry
    start = host.resolve_in(proc, a.addr) & ~(geo.page_size - 1)
    end = start + max(parse_size(a.len, geo.page_size), 1)
    vmas = _vmas_in(host, proc, start, end)
    if vmas is None:
        return ActionResult.err(-ENOMEM)
    assert proc.mm is not None
    for vma in vmas:
        vma.locked = False
        for key, pte in proc.mm.ptes.items():
            if pte.kind != PRESENT or not vma.contains(key) or not start <= key < end:
                continue
            folio = host.phys.folio_of(pte.pfn)
            if folio is None or "mlocked" not in folio.flags:
                continue
            if any((v := host.mms[m].find_vma(k)) is not None and v.locked
                   for m, k in folio.rmap):
                continue  # still mlocked through another VM_LOCKED mapping
            folio.flags.discard("mlocked")
            if folio.mapping is None or not folio.mapping.unevictable:
                folio.flags.discard("unevictable")
    return ActionResult(0)


__all__ = ["FaultError", "fault_in", "gup", "user_access"]
