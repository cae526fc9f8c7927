"""guest_memfd: inodes of 4K or HugeTLB folios, get_pfn, host mmap, punch hole, release,
in-place conversion (split/merge), and the memory-failure hooks that the policy decides.

Models virt/kvm/guest_memfd.c in its v6.18 form (R62-R75) and Ackerley Tng's HugeTLB /
in-place conversion series (R76, R87). Every place where the call's proposal or an
alternative changes behaviour asks the host's ``GmemPolicy`` (model/policy).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import EFAULT, EHWPOISON, EINVAL, ENODEV, ENOMEM
from ..handlers import ActionResult, handles
from ..kernel.fs import GMEM, HUGETLBFS, SHMEM, Inode, OpenFile
from ..kernel.mem import FILE, HUGETLB, Folio, base_pages
from ..kernel.memory_failure import (
    MF_ACTION_REQUIRED,
    MF_DELAYED,
    MF_RECOVERED,
    action_result,
    find_early_kill_thread,
)
from ..kernel.mm import HWPOISON, PTE
from ..kernel.mmops import FaultError
from ..trace import BUS_MCEERR_AO, BUS_MCEERR_AR, PolicyEvent
from ..units import parse_size
from .actions import GmemCreate
from .kvm import VM, Slot, get_vm, kvm_state, set_vm_state, zap_gfn_range

if TYPE_CHECKING:
    from ..kernel.task import Thread
    from ..policy.base import GmemPolicy
    from ..state import HostState as Host

MSG_GMEM = "guest_memfd page"  # page type of the hypothetical policy path (CALL, not mainline)


def policy(host: Host) -> GmemPolicy:
    from ..policy.registry import make_policy

    if host.policy is None:
        host.policy = make_policy("mainline")
    return host.policy


def table(host: Host) -> dict[int, dict[str, object]]:
    """The call's global failure table (C1): pfn -> record."""
    t: dict[int, dict[str, object]] = host.ext.setdefault("gmem_table", {})
    return t


def policy_event(host: Host, hook: str, what: str, pfn: int | None = None) -> None:
    host.emit(PolicyEvent(host.trace.step, policy(host).name, hook, what, pfn))


# --------------------------------------------------------------------------- creation


@handles(GmemCreate)
def do_gmem_create(host: Host, a: GmemCreate) -> ActionResult:
    """KVM_CREATE_GUEST_MEMFD (R62), or a hugetlbfs memfd under the hugetlbfs baseline."""
    from ..kernel.profiles import refuse_missing

    if policy(host).backing != "hugetlbfs":
        # the hugetlbfs baseline makes a hugetlbfs memfd instead: any kernel has one
        refuse_missing(host.profile, "gmem")
        if "mmap" in a.flags:
            refuse_missing(host.profile, "gmem_mmap", "flags")
        if "init_shared" in a.flags:
            refuse_missing(host.profile, "gmem_init_shared", "flags")
    vm = get_vm(host, a.vm)
    geo = host.geometry
    size = parse_size(a.size, geo.page_size)
    order = 0 if a.backing == "4K" else geo.huge_order(a.backing)
    if size <= 0 or size % (1 << (geo.page_shift + order)):
        return ActionResult.err(-EINVAL)
    if policy(host).backing == "hugetlbfs":
        from ..actions import Mmap
        from ..kernel.mmops import do_mmap

        kind = HUGETLBFS if order else SHMEM
        inode = host.new_inode(kind, f"memfd:{a.fd}", size, order)
        inode.nlink = 0
        host.open_inode(vm.vmm, inode, a.fd)
        region = f"{a.fd}-ram"
        r = do_mmap(host, Mmap(proc=vm.vmm.comm, name=region, size=size, fd=a.fd,
                                   shared=True))
        if r.errno:
            return r
        inode.extra["hugetlbfs_region"] = region
        return ActionResult(0)
    flags = set(a.flags)
    if "init_shared" in flags and "mmap" not in flags:
        return ActionResult.err(-EINVAL)
    if order:
        # kvm_gmem_hugetlb_setup() (the HugeTLB series, R87): hugepage_new_subpool(h,
        # hpages, hpages) with min_hpages = the file's huge pages, so hugetlb_acct_memory()
        # reserves all of them now and creation fails with ENOMEM when the pool cannot
        h = host.hugetlb.hstate(order)
        hpages = size >> (geo.page_shift + order)
        if not host.hugetlb.reserve(h, hpages):
            return ActionResult.err(-ENOMEM)
    inode = host.new_inode(GMEM, f"kvm-gmem:{a.vm}:{a.fd}", size, order)
    inode.nlink = 0
    if order:
        inode.extra["resv_held"] = hpages  # the subpool's reservations not yet used
    # the file belongs to the VM it was created for (gmem_file->kvm in __kvm_gmem_create)
    inode.extra.update(flags=flags, vms=[vm], kvm=vm.name, shared=set(), split=set())
    if "init_shared" in flags:
        inode.extra["shared"] = set(range(size >> geo.page_shift))
    host.open_inode(vm.vmm, inode, a.fd)
    install_gmem_hooks(host)
    return ActionResult(0)


def install_gmem_hooks(host: Host) -> None:
    host.ext.update(gmem_error_folio=kvm_gmem_error_folio, gmem_fault=kvm_gmem_fault_user,
                    gmem_mmap_check=kvm_gmem_mmap_check, gmem_fallocate=kvm_gmem_fallocate,
                    inode_release=kvm_gmem_evict_inode, file_release=kvm_gmem_release,
                    gmem_memory_failure=policy_memory_failure)


def gmem_bind(host: Host, vm: VM, slot: Slot, fd: str, offset: int) -> int:
    """kvm_gmem_bind() (virt/kvm/guest_memfd.c): -EINVAL unless the fd is a guest_memfd
    (``file->f_op != &kvm_gmem_fops``) created for this VM (``f->kvm != kvm``: another
    VM's guest_memfd is refused), and the slot's range lies inside the file."""
    of = host.fd(vm.vmm, fd)
    inode = of.inode
    if inode.kind != GMEM:
        return -EINVAL
    if inode.extra.get("kvm", vm.name) != vm.name:
        return -EINVAL
    pgoff = offset >> host.geometry.page_shift
    if (pgoff + slot.npages) << host.geometry.page_shift > inode.size:
        return -EINVAL
    slot.gmem, slot.gmem_fd, slot.gmem_pgoff = inode, fd, pgoff
    bindings = inode.extra.setdefault("bindings", [])
    bindings.append((vm, slot, of))
    if vm not in inode.extra["vms"]:
        # R73 (several VMs on one inode) needs a second file on the inode (intra-host
        # migration); a file is bound only by its own VM
        inode.extra["vms"].append(vm)
    return 0


def is_gmem_hugetlb(folio: Folio) -> bool:
    m = folio.mapping
    return m is not None and m.kind == GMEM and m.huge_order > 0


# --------------------------------------------------------------------------- folios


def kvm_gmem_get_folio(host: Host, inode: Inode, index: int) -> Folio | None:
    """kvm_gmem_get_folio(): the cached folio, or a new zeroed one: order 0 on the
    unevictable LRU (R62), or a HugeTLB folio off the LRU, not migratable (R87)."""
    folio = inode.lookup(index)
    if folio is not None:
        return folio
    order = inode.huge_order
    if order == 0:
        folio = host.alloc_folio(0, FILE, owner=inode.name)
        if folio is None:
            return None
        folio.flags |= {"lru", "unevictable", "uptodate"}
        folio.mapping, folio.index = inode, index
        inode.pages[index] = folio
        folio.get("pagecache")
        return folio
    h = host.hugetlb.hstate(order)
    # a page of the file's subpool reservation while it has one (hugepage_subpool_get_pages
    # returns 0: the global reservation is used), else any free page. The model does not
    # give the reservation back when a hole punch frees a folio (the subpool's minimum
    # would keep it): a refill after a punch takes any free page
    held = inode.extra.get("resv_held", 0)
    folio = host.hugetlb.dequeue(h, owner=inode.name, use_reserve=held > 0)
    if folio is None:
        return None
    if held:
        inode.extra["resv_held"] = held - 1
    head = index & ~((1 << order) - 1)
    folio.mapping, folio.index = inode, head
    folio.flags.add("uptodate")
    data = host.phys.data
    if data:  # the new folio is zeroed: what its first pages held is gone
        lo, hi = folio.pfn, folio.pfn + min(folio.nr_pages, 1 << 9)
        if len(data) < hi - lo:
            for p in [p for p in data if lo <= p < hi]:
                del data[p]
        else:
            for p in range(lo, hi):
                data.pop(p, None)
    inode.pages[head] = folio
    folio.get("pagecache", folio.nr_pages)
    if any(i in inode.extra["shared"] for i in (head, head + folio.nr_pages - 1)) or \
            _range_mixed(inode, head, folio.nr_pages):
        gmem_split(host, inode, folio)
        return inode.lookup(index)
    return folio


def _range_mixed(inode: Inode, head: int, n: int) -> bool:
    shared = inode.extra["shared"]
    if not shared:
        return False
    return not shared.isdisjoint(range(head, head + n))


# A split's 4K folios: flags and references as Folio(flags={"uptodate", "gmem_sub"}) with
# get("pagecache") and the "mf" holder present at 0 gave them (base_pages).
_SUB_FLAGS = frozenset({"uptodate", "gmem_sub"})
_SUB_REFS = (("pagecache", 1), ("mf", 0))


def gmem_split(host: Host, inode: Inode, folio: Folio) -> None:
    """Split a HugeTLB-backed folio to 4K folios (a part became shared, R87). Poison kept
    on the folio (flag + raw list) survives only if the policy propagates it."""
    pol = policy(host)
    del inode.pages[folio.index]
    del host.phys.folios[folio.pfn]
    inode.extra["split"].add(folio.index)
    inode.extra.setdefault("split_meta", {})[folio.index] = (folio.pfn, folio.order)
    poisoned = list(folio.raw_hwp) if "hwpoison" in folio.flags else []
    pages, folios = inode.pages, host.phys.folios
    for f in base_pages(folio.pfn, folio.index, folio.nr_pages, HUGETLB, _SUB_FLAGS, inode,
                        folio.owner, _SUB_REFS):
        pages[f.index] = f
        folios[f.pfn] = f
    host.phys.orders.add(0)
    if poisoned:
        if pol.propagate_on_split:
            host.phys.hwpoison.update(poisoned)
            policy_event(host, "split", f"PG_hwpoison moved to {len(poisoned)} raw page(s)")
        else:
            policy_event(host, "split", "folio PG_hwpoison dropped by the split "
                         + _left(host, poisoned))
    if folio.refs["mf"]:
        first = inode.pages[folio.index + ((poisoned[0] - folio.pfn) if poisoned else 0)]
        first.get("mf", folio.refs["mf"])


def _left(host: Host, pfns: list[int]) -> str:
    """What still records ``pfns`` once a split or merge dropped their PG_hwpoison: the
    policy's table keeps a pfn it recorded (``record_failure`` fills it whatever ``record``
    says), so the failure is not lost (``no-record-lost``, outcomes ``records_lost``), but
    the kernel's users that trust PG_hwpoison no longer see it (``no-host-panic``)."""
    t = table(host)
    if all(p in t for p in pfns):
        return "(the policy's table still records it; PG_hwpoison readers no longer see it)"
    return "(record lost)"


def gmem_merge(host: Host, inode: Inode, head: int, hook: str = "merge") -> None:
    """Merge 4K folios back into the HugeTLB folio (all of it private again, R87). ``hook``
    names the policy hook the merge reports under: ``merge`` for a conversion to private;
    ``punch`` / ``release`` when the free path reassembles the huge page only to hand it back
    to the pool, which is that path's work, not a conversion's."""
    pol = policy(host)
    pfn, order = inode.extra["split_meta"].pop(head)
    inode.extra["split"].discard(head)
    folio = Folio(pfn=pfn, order=order, kind=HUGETLB, flags={"hugetlb", "head", "uptodate"},
                  mapping=inode, index=head, owner=inode.name)
    poisoned: list[int] = []
    mf = 0
    for i in range(1 << order):
        f = inode.pages.pop(head + i, None)
        if f is not None:
            host.phys.folios.pop(f.pfn, None)
            mf += f.refs["mf"]
        if pfn + i in host.phys.hwpoison:
            poisoned.append(pfn + i)
    host.phys.folios[pfn] = folio
    inode.pages[head] = folio
    folio.get("pagecache", folio.nr_pages)
    if mf:
        folio.get("mf", mf)
    if poisoned:
        host.phys.hwpoison.difference_update(poisoned)
        if pol.propagate_on_split:
            folio.flags.add("hwpoison")
            folio.raw_hwp.extend(poisoned)
            policy_event(host, hook, f"{len(poisoned)} raw poisoned page(s) kept on the folio")
        else:
            policy_event(host, hook, "raw PG_hwpoison dropped by the merge "
                         + _left(host, poisoned))


def gmem_convert(host: Host, inode: Inode, start: int, end: int, private: bool) -> None:
    """In-place conversion of file indices [start, end) (R76, R87)."""
    shared: set[int] = inode.extra.setdefault("shared", set())
    if private:
        shared.difference_update(range(start, end))
        # unmap host mappings of pages that became private
        for vma in list(inode.i_mmap):
            for idx in range(start, end):
                a = vma.addr_of(idx)
                if a is not None and a in vma.mm.ptes and vma.mm.ptes[a].kind != HWPOISON:
                    host.zap_entry(vma.mm, a)
    else:
        shared.update(range(start, end))
    order = inode.huge_order
    if not order:
        return
    unit = 1 << order
    for head in range(start & ~(unit - 1), end, unit):
        folio = inode.pages.get(head)
        if folio is not None and folio.order and not private:
            gmem_split(host, inode, folio)
        elif private and head in inode.extra["split"] and \
                shared.isdisjoint(range(head, head + unit)):
            gmem_merge(host, inode, head)


# --------------------------------------------------------------------------- lookups


def gpa_to_pfn(host: Host, vm_name: str, gpa: int | str) -> int:
    """The host pfn behind a guest physical address (allocating the guest_memfd folio if the
    guest never touched it)."""
    from ..errors import ModelInputError, TargetGone

    vm = get_vm(host, vm_name)
    if not vm.vmm.alive or vm.state in ("killed", "destroyed"):
        raise TargetGone(f"VM {vm_name!r} is gone; gpa {gpa} has no page any more", "gpa")
    gfn = parse_size(gpa, host.geometry.page_size) >> host.geometry.page_shift
    slot = vm.slot_of(gfn)
    if slot is None:
        if host.declared("memslot", vm_name):
            # the file gives the VM memslots, but none covers this address now: the step
            # that would have (or the guest_memfd it binds) failed at run time
            raise TargetGone(f"no memslot of VM {vm_name!r} covers gpa {gpa} (a memslot step "
                             "of the file failed or has not run)", "gpa", "EFAULT")
        raise ModelInputError(f"no memslot of VM {vm_name!r} covers gpa {gpa}", "gpa")
    if slot.gmem is not None and (gfn in vm.private or slot.hva is None or slot.gmem_only):
        idx = gfn - slot.base_gfn + slot.gmem_pgoff
        folio = kvm_gmem_get_folio(host, slot.gmem, idx)
        if folio is None:
            raise TargetGone("no memory left to allocate the guest_memfd folio", "gpa")
        return folio.pfn + (idx - folio.index)
    assert slot.hva is not None
    from ..kernel.mmops import gup

    pfn, folio = gup(host, vm.vmm, slot.hva + ((gfn - slot.base_gfn) << 12), True)
    if folio is not None:
        folio.put("gup")
    if pfn < 0:
        raise TargetGone(f"gpa {gpa} of VM {vm_name!r} has no healthy page behind it", "gpa")
    return pfn


def pfn_poisoned(host: Host, pfn: int) -> bool:
    """PG_hwpoison as a kernel user sees it (raw flag, or the hugetlb folio's flag)."""
    if pfn in host.phys.hwpoison:
        return True
    f = host.phys.folio_of(pfn)
    return f is not None and f.kind == HUGETLB and "hwpoison" in f.flags


def _claimed(host: Host, folio: Folio) -> bool:
    return policy(host).claims(is_gmem_hugetlb(folio))


def _failed_in(host: Host, folio: Folio, pfn: int) -> bool:
    """Does the fault check refuse ``pfn`` of ``folio``? Folios the policy does not claim
    get mainline's check: the folio's PG_hwpoison (R67)."""
    pol = policy(host)
    if not _claimed(host, folio):
        return "hwpoison" in folio.flags or _any_in(folio, host.phys.hwpoison)
    if "hwpoison" in folio.flags:  # the head flag: the whole folio (R67)
        if pol.check_granularity == "folio" or folio.order == 0:
            return True
        if pfn in folio.raw_hwp:
            return True
    if pol.check_granularity == "subpage":
        if pfn in host.phys.hwpoison:
            return True
    elif _any_in(folio, host.phys.hwpoison):
        return True
    t = table(host)
    if not (pol.record == "table" or t):
        return False
    return pfn in t if pol.check_granularity == "subpage" else _any_in(folio, t)


def kvm_gmem_get_pfn(host: Host, vm: VM, slot: Slot, gfn: int) -> tuple[int, int, int] | int:
    """kvm_gmem_get_pfn() / __kvm_gmem_get_pfn() (R67): (pfn, order, head pfn) or -errno."""
    inode = slot.gmem
    if inode is None or not slot.bound:
        return -EFAULT
    if inode.extra.get("unusable"):
        return -EHWPOISON
    index = gfn - slot.base_gfn + slot.gmem_pgoff
    folio = kvm_gmem_get_folio(host, inode, index)
    if folio is None:
        return -ENOMEM
    pfn = folio.pfn + (index - folio.index)
    pol = policy(host)
    if (pol.fault_check or not _claimed(host, folio)) and _failed_in(host, folio, pfn):
        return -EHWPOISON
    if folio.order and pol.unmap_stage2 == "subpage" and _claimed(host, folio) and \
            _holds_failure(host, folio):
        # unmapping only the failed subpage holds only if no later fault maps the folio
        # whole again: a policy that zaps one page caps max_order at 4K for a folio that
        # holds a failure (as KVM already maps a folio of mixed attributes at 4K), so a
        # fault on a healthy neighbour does not bring the failed page back into stage 2
        return pfn, 0, pfn
    return pfn, folio.order, folio.pfn


def _holds_failure(host: Host, folio: Folio) -> bool:
    """Whether any page of the folio has a failure the kernel knows of: in the policy's
    table, PG_hwpoison on a raw page, or the folio's raw list."""
    return "hwpoison" in folio.flags or bool(folio.raw_hwp) or \
        _any_in(folio, host.phys.hwpoison) or _any_in(folio, table(host))


def _any_in(folio: Folio, pfns: Iterable[int]) -> bool:
    """Whether any of ``pfns`` is a page of ``folio`` (the failure sets are small; the folio
    may be 1 GiB, so the set is walked, not the folio)."""
    lo, hi = folio.pfn, folio.pfn + folio.nr_pages
    return any(lo <= p < hi for p in pfns)


def kvm_gmem_fault_user(host: Host, inode: Inode, index: int) -> Folio | FaultError:
    """kvm_gmem_fault_user_mapping() (R69): no poison check of its own; __do_fault's
    PG_hwpoison check follows in the generic code (R41)."""
    if index << host.geometry.page_shift >= inode.size:
        return FaultError("sigbus")
    if inode.extra.get("unusable"):
        return FaultError("sigbus")
    if index not in inode.extra.get("shared", set()):
        return FaultError("sigbus")
    folio = kvm_gmem_get_folio(host, inode, index)
    if folio is None:
        return FaultError("sigbus")
    if folio.order:
        host.log("WARNING: guest_memfd fault on a large folio")
        return FaultError("sigbus")
    pol = policy(host)
    if _claimed(host, folio) and pol.fault_check and folio.pfn in table(host):
        return FaultError("hwpoison", host.geometry.page_shift)
    return folio


def kvm_gmem_mmap_check(host: Host, inode: Inode, shared: bool) -> int:
    """kvm_gmem_mmap() (R69): needs FLAG_MMAP and MAP_SHARED."""
    if "mmap" not in inode.extra.get("flags", ()):
        return -ENODEV
    if not shared:
        return -EINVAL
    return 0


# --------------------------------------------------------------------------- hole punch


def kvm_gmem_fallocate(host: Host, inode: Inode, mode: str, off: int, length: int) -> int:
    """kvm_gmem_fallocate() (R71): PUNCH_HOLE|KEEP_SIZE on aligned ranges, or allocate."""
    geo = host.geometry
    unit = 1 << (geo.page_shift + inode.huge_order)
    if off % unit or length % unit:
        return -EINVAL
    if off + length > inode.size:
        return -EINVAL
    if mode == "allocate":
        for idx in range(off >> geo.page_shift, (off + length) >> geo.page_shift,
                         unit >> geo.page_shift):
            if kvm_gmem_get_folio(host, inode, idx) is None:
                return -ENOMEM
        return 0
    gmem_punch(host, inode, off >> geo.page_shift, length >> geo.page_shift)
    return 0


def gmem_punch(host: Host, inode: Inode, start: int, n: int) -> None:
    """kvm_gmem_punch_hole(): zap stage 2 in every bound VM, then truncate (R71)."""
    zap_bindings(host, inode, start, start + n, "punch hole")
    free_range(host, inode, start, start + n, "punch")


def free_range(host: Host, inode: Inode, start: int, end: int, why: str) -> None:
    pol = policy(host)
    mark = pol.mark_on_truncate or (why == "release" and pol.mark_on_release)
    for head in list(inode.extra.get("split", set())):
        if start <= head < end:
            meta = inode.extra["split_meta"][head]
            if all(head + i not in inode.pages or inode.pages[head + i].pfn == meta[0] + i
                   for i in range(1 << meta[1])):
                # the full huge page returns to the pool whole (R87)
                shared = inode.extra["shared"]
                keep = {i for i in range(head, head + (1 << meta[1])) if i in shared}
                shared.difference_update(keep)
                gmem_merge(host, inode, head, hook=why)
                shared.update(keep)
    if mark:
        t = table(host)
        for idx in list(inode.pages):
            f = inode.pages[idx]
            if not start <= idx < end:
                continue
            recs = sorted(p for p in t if f.pfn <= p < f.pfn + f.nr_pages)
            if recs:
                if f.kind == HUGETLB and f.order:
                    f.flags.add("hwpoison")
                    f.raw_hwp.extend(p for p in recs if p not in f.raw_hwp)
                else:
                    host.phys.hwpoison.update(recs)
                policy_event(host, why, f"PG_hwpoison set on {len(recs)} failed page(s) before "
                       "freeing", recs[0])
    marked = [f for idx, f in inode.pages.items() if start <= idx < end
              and f.kind == HUGETLB and f.order and "hwpoison" in f.flags] \
        if mark and pol.isolate_on_free else []
    host.truncate_range(inode, start, end, even_cows=False)
    for f in marked:
        if "hugetlb_freed" not in f.flags:  # a memory_failure() in flight holds it
            f.flags.add("isolate_when_freed")
        _isolate_freed(host, f)


def mf_pin(host: Host, pfn: int, order: int) -> None:
    """memory_failure() takes a reference on the folio as it starts (get_hwpoison_page(),
    R19); mainline keeps it for good (the MF reference, R30), a policy that claims the folio
    drops it when it returns (it must be freeable to be marked at release, C4). While it
    runs (``--races``: from mf.record to mf.notify) a truncation takes the folio out of the
    page cache but cannot free it to the pool. The pin is on the frame (the huge page of
    ``order`` holding ``pfn``), whatever splits or merges it meanwhile."""
    lo = pfn >> order << order
    pins = host.ext.setdefault("mf_pinned", set())
    pins.add((lo, lo + (1 << order)))


def mf_unpin(host: Host, pfn: int) -> None:
    """memory_failure() returns and drops its reference: a folio of the frame truncated
    meanwhile is freed now, by the free path it would have taken (the marking was done at
    truncation; the isolation of a marked folio, ``isolate_on_free``, happens as it is
    freed)."""
    pins = host.ext.get("mf_pinned", set())
    held = [r for r in pins if r[0] <= pfn < r[1]]
    for r in held:
        pins.discard(r)
    if not pins:
        host.ext.pop("mf_pinned", None)
    for lo, hi in held:
        for f in [f for p, f in sorted(host.phys.folios.items()) if lo <= p < hi]:
            if f.mapping is None and f.kind == HUGETLB:
                host.maybe_free(f)
                if "isolate_when_freed" in f.flags:
                    f.flags.discard("isolate_when_freed")
                    _isolate_freed(host, f)


def _isolate_freed(host: Host, folio: Folio) -> None:
    """The HugeTLB free path isolates a freed, marked folio: dissolve it and take each
    poisoned raw page off buddy (S15; free_has_hwpoisoned, R57)."""
    if "hugetlb_freed" not in folio.flags:
        return  # still referenced (e.g. the memory_failure reference): not freed
    raws = list(folio.raw_hwp)
    if host.hugetlb.dissolve_free_hugetlb_folio(folio) != 0:
        policy_event(host, "release", "dissolve failed: the folio stays on the free list (R55)",
               raws[0] if raws else None)
        return
    for pfn in raws:
        if host.phys.take_page_off_buddy(pfn):
            host.page_isolated(pfn, "guest_memfd free path")


def zap_bindings(host: Host, inode: Inode, start: int, end: int, why: str,
                  private_only: bool | None = None) -> None:
    for vm, slot, _of in inode.extra.get("bindings", []):
        lo = max(start, slot.gmem_pgoff)
        hi = min(end, slot.gmem_pgoff + slot.npages)
        if lo < hi:
            zap_gfn_range(host, vm, slot.base_gfn + lo - slot.gmem_pgoff,
                          slot.base_gfn + hi - slot.gmem_pgoff, why, private_only)


def kvm_gmem_release(host: Host, proc: object, of: OpenFile) -> None:
    """kvm_gmem_release() (R72): unbind this file's slots and zap their SPTEs; memory lives
    on with the inode."""
    inode = of.inode
    keep = []
    for vm, slot, bof in inode.extra.get("bindings", []):
        if bof is of:
            slot.bound = False
            zap_gfn_range(host, vm, slot.base_gfn, slot.base_gfn + slot.npages,
                          "guest_memfd closed")
        else:
            keep.append((vm, slot, bof))
    inode.extra["bindings"] = keep


def kvm_gmem_evict_inode(host: Host, inode: Inode) -> None:
    """Inode eviction: the whole page cache is truncated (R72); the policy may first turn
    its table records into PG_hwpoison (C4). The subpool goes with it
    (hugepage_put_subpool): the reservations the file never used are released."""
    free_range(host, inode, 0, 1 << 62, "release")
    held = inode.extra.pop("resv_held", 0)
    if held and inode.huge_order:
        host.hugetlb.unreserve(host.hugetlb.hstate(inode.huge_order), held)


# --------------------------------------------------------------------------- memory failure


def kvm_gmem_error_folio(host: Host, folio: Folio) -> int:
    """kvm_gmem_error_folio() (R64): invalidate the folio's range in every VM bound to the
    inode (stage 2 per the policy's unmap_stage2 knob) and return MF_DELAYED."""
    inode = folio.mapping
    assert inode is not None
    pol = policy(host)
    how = pol.unmap_stage2 if pol.handles == "all" or pol.vm_on_error != "none" else "folio"
    apply_unmap_stage2(host, inode, folio, folio.pfn, how, "error_folio")
    apply_vm_on_error(host, inode, folio.pfn)
    return MF_DELAYED


def apply_unmap_stage2(host: Host, inode: Inode, folio: Folio, pfn: int, how: str,
                        why: str) -> None:
    if how == "none":
        return
    if how == "vm":
        for vm in inode.extra.get("vms", []):
            zap_gfn_range(host, vm, 0, 1 << 52, f"{why}: unmap everything")
        return
    if how == "subpage":
        idx = folio.index + (pfn - folio.pfn)
        zap_bindings(host, inode, idx, idx + 1, why)
        return
    end = folio.index + folio.nr_pages
    zap_bindings(host, inode, folio.index, end, why, _invalidate_filter(inode, folio.index, end))


def _invalidate_filter(inode: Inode, start: int, end: int) -> bool | None:
    """Which stage-2 roots an invalidation of file indices [start, end) must reach (True:
    private/mirror, False: shared/direct, None: both). Mainline's
    kvm_gmem_get_invalidate_filter() picks KVM_FILTER_SHARED for an INIT_SHARED file and
    KVM_FILTER_PRIVATE otherwise, which is right while a file's pages are all of one kind.
    With in-place conversion a page converted to shared is mapped through the direct (shared)
    root of a TDX VM: filtering by the file's creation flag would leave that SPTE in place and
    the guest would consume the poison again, so the filter follows each page's current
    state."""
    shared = inode.extra.get("shared", set())
    n = sum(1 for i in range(start, end) if i in shared)
    if n == 0:
        return True
    if n == end - start:
        return False
    return None


def apply_vm_on_error(host: Host, inode: Inode, pfn: int) -> None:
    from ..vmm.qemu import kill_vm

    pol = policy(host)
    if pol.vm_on_error == "kill":
        for vm in list(inode.extra.get("vms", [])):
            kill_vm(host, vm, "policy: kill the guest on memory failure")
    elif pol.vm_on_error == "unusable" and not inode.extra.get("unusable"):
        inode.extra["unusable"] = True
        policy_event(host, "error_folio", "guest_memfd made unusable", pfn)
        for vm in inode.extra.get("vms", []):
            zap_gfn_range(host, vm, 0, 1 << 52, "guest_memfd unusable")


def vmm_threads(inode: Inode) -> list[tuple[VM, Thread]]:
    out = []
    for vm in inode.extra.get("vms", []):
        out.append((vm, vm.vmm.leader))
    return out


def _hva_for(host: Host, inode: Inode, folio: Folio, pfn: int, vm: VM | None) -> int | None:
    idx = folio.index + (pfn - folio.pfn)
    for bvm, slot, _ in inode.extra.get("bindings", []):
        if vm is not None and bvm is not vm:
            continue
        if slot.hva is not None and slot.gmem_pgoff <= idx < slot.gmem_pgoff + slot.npages:
            return slot.hva + ((idx - slot.gmem_pgoff) << host.geometry.page_shift)
    for vma in inode.i_mmap:
        if vm is not None and vma.mm is not vm.vmm.mm:
            continue
        a = vma.addr_of(idx)
        if a is not None:
            return a
    return None


def _current_vm(host: Host, t: Thread | None) -> VM | None:
    if t is None:
        return None
    for vm in kvm_state(host).values():
        if vm.vmm is t.proc:
            return vm
    return None


def record_failure(host: Host, folio: Folio, pfn: int, consumed: bool) -> bool:
    """The policy's record step (C1 table, or PG_hwpoison on the folio, C8); True if this is
    the first report of ``pfn``."""
    pol = policy(host)
    t = table(host)
    assert folio.mapping is not None
    first = pfn not in t and not pfn_poisoned(host, pfn)
    rec = t.setdefault(pfn, {"inode": folio.mapping.ino, "consumed": False})
    rec["consumed"] = bool(rec["consumed"]) or consumed
    if pol.record == "folio":
        if folio.kind == HUGETLB and folio.order:
            folio.flags.add("hwpoison")
            if pfn not in folio.raw_hwp:
                folio.raw_hwp.append(pfn)
        else:
            host.phys.hwpoison.add(pfn)
        policy_event(host, "memory_failure", "PG_hwpoison set on the guest_memfd folio", pfn)
    if pol.record == "table":
        policy_event(host, "memory_failure", "recorded in the global failure table", pfn)
    return first


def policy_memory_failure(host: Host, pfn: int, flags: int, folio: Folio,
                          current: Thread | None) -> int:
    """memory_failure() for a guest_memfd folio the policy claims (the call's proposal and
    its alternatives, C1-C8). Returns what memory_failure() returns."""
    pol = policy(host)
    inode = folio.mapping
    assert inode is not None
    ar = bool(flags & MF_ACTION_REQUIRED)
    first = record_failure(host, folio, pfn, ar)
    if first:
        action_result(host, pfn, MSG_GMEM, MF_DELAYED if pol.unconsumed != "kernel"
                      else MF_RECOVERED)
    else:
        host.log(f"Memory failure: {pfn:#x}: guest_memfd page already recorded")
    apply_unmap_stage2(host, inode, folio, pfn, pol.unmap_stage2, "memory_failure")
    if pol.unmap_host != "none":
        unmap_host(host, inode, folio, pfn, pol.unmap_host)
    apply_vm_on_error(host, inode, pfn)
    cvm = _current_vm(host, current)
    if ar and current is not None and current.alive:
        if pol.consumed == "kill-vm":
            _kill_bound_vms(host, inode, "policy: kill the guest on consumed memory failure")
        elif pol.consumed == "unusable":
            _make_unusable(host, inode, pfn)
        elif pol.consumed == "kernel":
            _kernel_consumed(host, current, folio, pfn)
        else:
            _sigbus_current(host, current, inode, folio, pfn, cvm)
        if pol.consumed == "sigbus-vmm":
            for vm, _lead in vmm_threads(inode):
                if vm.vmm is current.proc:
                    continue
                notify_vmm(host, vm, inode, folio, pfn)
        return -EHWPOISON
    if ar:
        return -EHWPOISON
    unconsumed_action(host, inode, folio, pfn)
    return 0


def unconsumed_action(host: Host, inode: Inode, folio: Folio, pfn: int) -> None:
    """The policy's ``unconsumed`` action for an AO failure (the tail of
    policy_memory_failure(), also the ``mf.notify`` stage of ``check --races``): tell the
    VMM (notify-vmm), defer, kill the bound VMs, make the guest_memfd unusable, or the
    kernel's own handling."""
    pol = policy(host)
    if pol.unconsumed == "notify-vmm":
        for vm, _lead in vmm_threads(inode):
            notify_vmm(host, vm, inode, folio, pfn)
    elif pol.unconsumed == "defer":
        policy_event(host, "memory_failure", "unconsumed failure deferred", pfn)
    elif pol.unconsumed == "kill-vm":
        _kill_bound_vms(host, inode, "policy: kill the guest on memory failure")
    elif pol.unconsumed == "unusable":
        _make_unusable(host, inode, pfn)
    else:
        _kernel_unconsumed(host, folio, pfn)


def _kill_bound_vms(host: Host, inode: Inode, why: str) -> None:
    """Sean's reading (C7): kill every VM bound to the guest_memfd and unmap everything."""
    from ..vmm.qemu import kill_vm

    for vm in list(inode.extra.get("vms", [])):
        if vm.state != "killed":
            kill_vm(host, vm, why)


def _make_unusable(host: Host, inode: Inode, pfn: int) -> None:
    """James's reading (C7): every later get_pfn and host fault of the guest_memfd fails."""
    if inode.extra.get("unusable"):
        return
    inode.extra["unusable"] = True
    policy_event(host, "memory_failure", "guest_memfd made unusable", pfn)
    for vm in inode.extra.get("vms", []):
        zap_gfn_range(host, vm, 0, 1 << 52, "guest_memfd unusable")


def _kernel_consumed(host: Host, current: Thread, folio: Folio, pfn: int) -> None:
    """What memory_failure() itself does for a consumed page it did not unmap:
    kill_accessing_process() signals current only through its own mapping of the page (AR,
    lsb of the mapping); with no mapping it returns 0 (R82) or -EFAULT, and kill_me_maybe()
    sends a plain SIGBUS (R39, R46)."""
    mm = current.proc.mm
    for (mm_id, key), order in folio.rmap.items():
        if mm is None or mm_id != mm.id:
            continue
        pte = mm.ptes.get(key)
        if pte is None or not pte.pfn <= pfn < pte.pfn + (1 << order):
            continue
        addr = key + ((pfn - pte.pfn) << host.geometry.page_shift) \
            if order == 0 or host.profile.hugetlb_exact_si_addr else key
        host.force_sig_mceerr(current, BUS_MCEERR_AR, addr,
                              host.geometry.shift_of(order), "kill_accessing_process", pfn)
        return
    if not host.profile.kill_accessing_process_returns_zero:
        host.force_sig_sigbus(current, "kill_me_maybe", pfn=pfn)


def _kernel_unconsumed(host: Host, folio: Folio, pfn: int) -> None:
    """kill_procs() for an AO failure (R35): BUS_MCEERR_AO to the early-kill thread of every
    process that maps the page. Without honor_early (C6: "even if PR_MCE_KILL_EARLY is set,
    the requesting thread will not be notified") nobody is."""
    if not policy(host).honor_early:
        policy_event(host, "memory_failure", "PR_MCE_KILL_EARLY not honoured (C6): nobody told", pfn)
        return
    mm_ids = {mm_id for mm_id, _ in folio.rmap}
    for proc in list(host.processes.values()):
        if proc.mm is None or proc.mm.id not in mm_ids or not proc.alive:
            continue
        t = find_early_kill_thread(host, proc)
        if t is not None:
            addr = _hva_for(host, folio.mapping, folio, pfn, None) \
                if folio.mapping is not None else None
            host.send_sig_mceerr(t, BUS_MCEERR_AO, addr or 0, host.geometry.page_shift,
                                 "kill_procs", pfn)


def _sigbus_current(host: Host, current: Thread, inode: Inode, folio: Folio, pfn: int,
                    vm: VM | None) -> None:
    pol = policy(host)
    host.log(f"Memory failure: {pfn:#x}: Sending SIGBUS to {current.comm}:{current.tid} due to "
             "hardware memory corruption")
    if pol.sigbus_addr == "plain":
        host.force_sig_sigbus(current, "gmem policy", pfn=pfn)
        return
    addr = None
    if pol.sigbus_addr == "hva":
        addr = _hva_for(host, inode, folio, pfn, vm)
        policy_event(host, "memory_failure",
               "si_addr looked up: guest_memfd binding -> memslot userspace_addr"
               if addr is not None else
               "si_addr lookup found no memslot userspace_addr or host mapping: NULL", pfn)
    host.force_sig_mceerr(current, BUS_MCEERR_AR, addr or 0, host.geometry.page_shift,
                          "gmem policy", pfn)


def notify_vmm(host: Host, vm: VM, inode: Inode, folio: Folio, pfn: int) -> None:
    """C8: tell the owning VMM of an unconsumed failure (PR_MCE_KILL_EARLY honoured)."""
    pol = policy(host)
    t = find_early_kill_thread(host, vm.vmm) if pol.honor_early else vm.vmm.leader
    if t is None:
        return
    addr = _hva_for(host, inode, folio, pfn, vm) or 0
    host.log(f"Memory failure: {pfn:#x}: Sending SIGBUS to {t.comm}:{t.tid} due to hardware "
             "memory corruption")
    host.send_sig_mceerr(t, BUS_MCEERR_AO, addr, host.geometry.page_shift, "kvm request", pfn)


def unmap_host(host: Host, inode: Inode, folio: Folio, pfn: int, how: str) -> None:
    """Replace host mappings of the failed subpage (or whole folio) by hwpoison entries."""
    targets = [pfn] if how == "subpage" or folio.order == 0 else \
        list(range(folio.pfn, folio.pfn + folio.nr_pages))
    for (mm_id, key), order in list(folio.rmap.items()):
        mm = host.mms[mm_id]
        pte = mm.ptes.get(key)
        if pte is None or not (pte.pfn <= targets[0] < pte.pfn + (1 << order) or
                               pte.pfn in targets):
            continue
        mm.ptes[key] = PTE(HWPOISON, pte.pfn, order)
        del folio.rmap[(mm_id, key)]
        folio.put("map")


def set_vm_dead(host: Host, vm: VM, why: str) -> None:
    set_vm_state(host, vm, "killed", why)


__all__ = ["is_gmem_hugetlb", "kvm_gmem_get_pfn"]
