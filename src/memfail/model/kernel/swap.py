"""A swap device and the swap cache, enough for the swap-cache rows of memory_failure() (R29).

An anonymous page on its way to swap goes through reclaim's stages (mm/vmscan.c
shrink_folio_list): ``add_to_swap`` puts the folio in the swap cache and marks it dirty, then
``try_to_unmap`` turns every PTE into a swap entry; ``pageout`` writes it and clears the dirty
bit; ``__remove_mapping`` deletes it from the swap cache and frees it. The ``swapout`` action
stops at one of those stages, so a test can poison the page while it sits in the swap cache
dirty (``cache``) or clean (``written``), or after it has gone (``freed``).

A swap-in fault (mm/memory.c do_swap_page) maps the swap-cache folio if there is one, and a
folio with PG_hwpoison there gives VM_FAULT_HWPOISON ("hwpoisoned dirty swapcache pages are
kept for killing owner processes"); otherwise it reads the slot into a new folio that stays
in the swap cache, clean, unless the fault writes (should_try_to_free_swap: the swap cache is
dropped at once) or the VMA is mlocked.

Swap entries are PTEs of kind ``swap`` whose ``pfn`` field holds the slot number; slots are
negative so that they never name a page frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import EFAULT, EINVAL, ENOMEM
from ..handlers import ActionResult, handles
from ..trace import PteChange
from ..units import parse_size
from .kactions import Swapout
from .mem import ANON, Folio
from .mm import PRESENT, PTE, SWAP

if TYPE_CHECKING:
    from ..state import HostState as Host
    from .mm import MM, VMA


@dataclass
class SwapState:
    """The swap device (slot -> the byte value written there) and the swap cache."""

    slots: dict[int, int] = field(default_factory=dict)
    cache: dict[int, Folio] = field(default_factory=dict)  # slot -> swap-cache folio
    slot_of: dict[int, int] = field(default_factory=dict)  # folio pfn -> slot
    next_slot: int = -1


def swap_state(host: Host) -> SwapState:
    st = host.ext.get("swap")
    if st is None:
        st = host.ext["swap"] = SwapState()
    assert isinstance(st, SwapState)
    return st


def swapcache_slot(host: Host, folio: Folio) -> int | None:
    """The swap slot of a folio in the swap cache (folio->swap), or None."""
    if "swapcache" not in folio.flags:
        return None
    return swap_state(host).slot_of.get(folio.pfn)


def add_to_swap(host: Host, folio: Folio) -> int:
    """add_to_swap(): allocate a slot, insert the folio in the swap cache, mark it dirty."""
    st = swap_state(host)
    slot = st.next_slot
    st.next_slot -= 1
    st.cache[slot] = folio
    st.slot_of[folio.pfn] = slot
    folio.flags |= {"swapcache", "dirty"}
    folio.get("swapcache")
    return slot


def delete_from_swap_cache(host: Host, folio: Folio) -> None:
    """delete_from_swap_cache() / folio_free_swap(): the slot keeps what was written to it."""
    st = swap_state(host)
    slot = st.slot_of.pop(folio.pfn, None)
    if slot is not None and st.cache.get(slot) is folio:
        del st.cache[slot]
    if "swapcache" in folio.flags:
        folio.flags.discard("swapcache")
        folio.put("swapcache")
    host.maybe_free(folio)


def unmap_to_swap_entries(host: Host, folio: Folio, keys: list[tuple[int, int]]) -> None:
    """try_to_unmap() of a swap-cache folio without TTU_HWPOISON (R22 step 3): the PTEs
    that ``host.try_to_unmap`` cleared become swap entries for the folio's slot."""
    slot = swapcache_slot(host, folio)
    if slot is None:
        return
    for mm_id, key in keys:
        mm = host.mms[mm_id]
        if key not in mm.ptes:
            mm.ptes[key] = PTE(SWAP, slot, 0)
            pid, rel = _pid_rel(host, mm, key)
            host.emit(PteChange(host.trace.step, pid, key, rel, "swap", folio.pfn, 0))


def do_swap_page(host: Host, vma: VMA, key: int, pte: PTE, write: bool) -> tuple[int, PTE] | str:
    """do_swap_page(): map the swap-cache folio (or read the slot into a new one). Returns
    (key, pte), or ``"hwpoison"`` for a poisoned swap-cache folio, or ``"oom"``."""
    st = swap_state(host)
    slot = pte.pfn
    folio = st.cache.get(slot)
    if folio is not None:
        if folio.pfn in host.phys.hwpoison:
            return "hwpoison"  # VM_FAULT_HWPOISON: the owner is killed on access (R29)
    else:
        folio = host.alloc_folio(0, ANON, owner="swapin")
        if folio is None:
            return "oom"
        folio.flags |= {"lru", "anon", "swapbacked", "uptodate", "swapcache"}
        folio.get("swapcache")
        st.cache[slot] = folio
        st.slot_of[folio.pfn] = slot
        host.phys.data[folio.pfn] = st.slots.get(slot, 0)
    del vma.mm.ptes[key]
    npte = PTE(PRESENT, folio.pfn, 0, write, write)
    host.set_pte(vma, key, npte, folio)
    if vma.locked:
        folio.flags |= {"mlocked", "unevictable"}
    if write or vma.locked or "mlocked" in folio.flags:
        # should_try_to_free_swap(): a writable exclusive mapping (or an mlocked one) drops
        # the swap cache at once; the folio is then ordinary dirty anonymous memory
        delete_from_swap_cache(host, folio)
        if write:
            folio.flags.add("dirty")
    return key, npte


def _pid_rel(host: Host, mm: MM, key: int) -> tuple[int, str]:
    for p in host.processes.values():
        if p.mm is mm:
            return p.pid, host.addr_rel_of(p, key) or f"{key:#x}"
    return 0, f"{key:#x}"


@handles(Swapout)
def do_swapout(host: Host, a: Swapout) -> ActionResult:
    """Reclaim the private anonymous pages of a range to swap, up to ``stage``."""
    proc = host.proc(a.proc)
    geo = host.geometry
    start = host.resolve_in(proc, a.addr)
    length = parse_size(a.len, geo.page_size)
    assert proc.mm is not None
    done = 0
    addr = start & ~(geo.page_size - 1)
    while addr < start + length:
        vma = proc.mm.find_vma(addr)
        if vma is None:
            return ActionResult.err(-ENOMEM)
        if vma.locked or vma.huge_order:
            return ActionResult.err(-EINVAL)  # can_madv_lru_vma(): not mlocked, not hugetlb
        if not vma.anonymous or vma.shared:
            return ActionResult.err(-EINVAL)  # only private anonymous memory is modelled
        k = proc.mm.entry_key(vma, addr, geo.page_shift)
        if k is not None:
            err = _reclaim_one(host, proc.mm, k[0], a.stage)
            if err:
                return ActionResult.err(err)
            done += 1
        addr += geo.page_size
    return ActionResult(done)


def _reclaim_one(host: Host, mm: MM, key: int, stage: str) -> int:
    st = swap_state(host)
    pte = mm.ptes[key]
    if pte.kind == SWAP:
        folio = st.cache.get(pte.pfn)
        if folio is None:
            return 0  # already written and freed
    elif pte.kind == PRESENT:
        if pte.special:
            host.zap_entry(mm, key)  # the zero page is simply unmapped
            return 0
        found = host.phys.folio_of(pte.pfn)
        if found is None or found.kind != ANON or found.refs["gup"]:
            return -EFAULT if found is None else 0
        if "ksm" in found.flags:
            return -EINVAL  # swapping KSM pages out is not modelled
        if found.order:
            split = host.split_thp(found)
            if split is None:
                return 0
            found = host.phys.folio_of(pte.pfn) or split
        folio = found
        if folio.pfn in host.phys.hwpoison:
            return 0
        if "swapcache" not in folio.flags:
            add_to_swap(host, folio)
        slot = swapcache_slot(host, folio)
        assert slot is not None
        for (mm_id, k), _order in sorted(folio.rmap.items()):
            m = host.mms[mm_id]
            old = m.ptes.get(k)
            if old is None:
                continue
            if old.dirty:
                folio.flags.add("dirty")
            m.ptes[k] = PTE(SWAP, slot, 0)
            pid, rel = _pid_rel(host, m, k)
            host.emit(PteChange(host.trace.step, pid, k, rel, "swap", old.pfn, 0))
            folio.put("map")
            host.mmu_notify(m, k, host.geometry.page_size)
        folio.rmap.clear()
    else:
        return 0
    if stage == "cache":
        return 0
    slot = swapcache_slot(host, folio)
    assert slot is not None
    if "dirty" in folio.flags:
        st.slots[slot] = host.phys.data.get(folio.pfn, 0)  # pageout(): written, now clean
        folio.flags.discard("dirty")
    if stage == "written":
        return 0
    delete_from_swap_cache(host, folio)  # __remove_mapping(): freed
    return 0
