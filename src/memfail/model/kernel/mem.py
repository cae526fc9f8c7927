"""Physical memory: the hardware truth, struct page/folio state, and a sparse buddy allocator.

The hardware truth (which PFNs hold uncorrectable errors) is kept apart from what the kernel
knows (PG_hwpoison, the MF reference, MAGIC_HWPOISON isolation). All state is keyed by PFN, so
a 1 TiB host costs memory in proportion to the pages that were touched.
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .fs import Inode

# Folio kinds
ANON, FILE, HUGETLB, KERNEL = "anon", "file", "hugetlb", "kernel"


@dataclass(eq=False)
class Folio:
    """A folio: ``order`` base pages starting at ``pfn`` (naturally aligned).

    ``refs`` breaks the refcount down by holder: ``pagecache`` (nr_pages per cache entry),
    ``map`` (one per page-table mapping), ``mf`` (memory_failure's reference, never dropped,
    R30), ``gup`` (transient pins), ``kernel`` (a kernel owner), ``swapcache``.
    ``rmap`` maps (mm id, mapped address) to the mapping's order, i.e. the mapcount.
    """

    pfn: int
    order: int
    kind: str
    flags: set[str] = field(default_factory=set)
    mapping: Inode | None = None
    index: int = 0
    refs: Counter[str] = field(default_factory=Counter)
    rmap: dict[tuple[int, int], int] = field(default_factory=dict)
    raw_hwp: list[int] = field(default_factory=list)  # hugetlb raw error list (R49)
    owner: str = ""  # who allocated it (for "handed out" reports)

    @property
    def nr_pages(self) -> int:
        return 1 << self.order

    @property
    def refcount(self) -> int:
        return sum(self.refs.values())

    @property
    def mapped(self) -> bool:
        return bool(self.rmap)

    def contains(self, pfn: int) -> bool:
        return self.pfn <= pfn < self.pfn + self.nr_pages

    def test(self, flag: str) -> bool:
        return flag in self.flags

    def put(self, holder: str, n: int = 1) -> None:
        self.refs[holder] -= n
        if self.refs[holder] <= 0:
            del self.refs[holder]

    def get(self, holder: str, n: int = 1) -> None:
        self.refs[holder] += n

    def __repr__(self) -> str:
        return f"Folio(pfn={self.pfn:#x}, order={self.order}, kind={self.kind})"


_new_object = object.__new__
_new_counter = dict.__new__  # an empty Counter without running Counter.__init__


def base_pages(first_pfn: int, first_index: int, n: int, kind: str, flags: frozenset[str],
               mapping: Inode | None, owner: str, refs: tuple[tuple[str, int], ...]
               ) -> list[Folio]:
    """``n`` order-0 folios at consecutive pfns and page-cache indices, each with its own copy
    of ``flags`` and the reference counts ``refs`` (holder, count), in that order: the same
    objects, attribute for attribute and in the same order (so the same pickle and the same
    canonical encoding), as ``Folio(pfn=..., order=0, kind=..., flags=set(flags),
    mapping=..., index=..., owner=...)`` followed by ``get(holder, count)`` per entry, built
    without the dataclass __init__ and Counter's Python-level __init__ (a HugeTLB
    guest_memfd split makes 512 of them per 2M folio: most of a fleet model run's time)."""
    out: list[Folio] = []
    for i in range(n):
        f = _new_object(Folio)
        counts = _new_counter(Counter)
        for holder, count in refs:
            counts[holder] = count
        f.__dict__.update(pfn=first_pfn + i, order=0, kind=kind, flags=set(flags),
                          mapping=mapping, index=first_index + i, refs=counts, rmap={},
                          raw_hwp=[], owner=owner)
        out.append(f)
    return out


class PhysMem:
    """Page frames of one host: the hardware truth, page flags and a sparse buddy allocator.

    * ``hw_errors``: PFNs whose DRAM holds an uncorrectable error (hardware truth).
    * ``detected``: PFNs for which the kernel has received an error report.
    * ``hwpoison``: raw pages with PG_hwpoison set (non-hugetlb pages, and raw pages after a
      poisoned hugetlb folio is dissolved, R56/R59).
    * ``isolated``: raw pages taken off the buddy allocator for good (MAGIC_HWPOISON, R30).
    * ``nospec``: pages x86 took out of the kernel direct map after a recovered machine-check
      report (set_mce_nospec(), R46; recorded for pages left without PG_hwpoison only).
    * Free memory is everything at or above ``_bump`` plus the blocks in ``_free``.
    """

    FIRST_PFN = 0x100000  # allocations start at 4 GiB; lower frames are firmware/kernel

    def __init__(self, total_pages: int) -> None:
        self.total_pages = total_pages
        self.hw_errors: set[int] = set()
        self.detected: set[int] = set()
        self.hwpoison: set[int] = set()
        self.isolated: set[int] = set()
        # pages set_mce_nospec() took out of the kernel direct map (inject.set_mce_nospec)
        self.nospec: set[int] = set()
        self.folios: dict[int, Folio] = {}
        self.data: dict[int, int] = {}
        self.orders: set[int] = {0}
        if total_pages < 2 * self.FIRST_PFN:
            # small hosts: keep the low 1/8 for firmware and the kernel instead of 4 GiB
            self.FIRST_PFN = max(0x2001, total_pages // 8)
        self._bump = self.FIRST_PFN
        self._free: dict[int, list[int]] = {}  # order -> sorted heads of free blocks
        # Heads of freed blocks that sit on a per-CPU list, not (yet) in the buddy lists:
        # free_unref_page() keeps a block of a pcp_allowed_order() (up to
        # PAGE_ALLOC_COSTLY_ORDER, 3, and the THP order) on the freeing CPU's list, where
        # PageBuddy is not set, so /proc/kpageflags shows no BUDDY for it until
        # drain_all_pages() (shake_page() of memory_failure(), page_handle_poison() of soft
        # offline) moves it to the buddy lists. The allocator takes it like any free block.
        self.pcp: set[int] = set()

    # ------------------------------------------------------------------ lookup
    def valid(self, pfn: int) -> bool:
        return 0 <= pfn < self.total_pages

    def folio_of(self, pfn: int) -> Folio | None:
        """The allocated folio containing ``pfn`` (folios are naturally aligned)."""
        for order in sorted(self.orders):
            f = self.folios.get(pfn & ~((1 << order) - 1))
            if f is not None and f.contains(pfn):
                return f
        return None

    def free_block_of(self, pfn: int) -> tuple[int, int] | None:
        """The (head, order) of the free buddy block containing ``pfn``, if it is free."""
        if pfn in self.isolated or pfn < self.FIRST_PFN or not self.valid(pfn):
            return None
        for order, heads in self._free.items():
            head = pfn & ~((1 << order) - 1)
            i = bisect.bisect_left(heads, head)
            if i < len(heads) and heads[i] == head:
                return head, order
        if pfn >= self._bump:
            return pfn, 0  # untouched memory above the bump pointer is free
        return None

    MAX_PAGE_ORDER = 10  # x86-64: the largest buddy block is 4 MiB (MAX_ORDER 11 in 6.1)

    PAGE_ALLOC_COSTLY_ORDER = 3

    def pcp_allowed_order(self, order: int, thp_order: int | None = None) -> bool:
        """mm/page_alloc.c pcp_allowed_order(): orders up to PAGE_ALLOC_COSTLY_ORDER and the
        THP (pageblock) order go through the per-CPU lists."""
        return order <= self.PAGE_ALLOC_COSTLY_ORDER or order == thp_order

    def drain_all_pages(self) -> None:
        """drain_all_pages(): every per-CPU list goes back to the buddy lists."""
        self.pcp.clear()

    def is_buddy_head(self, pfn: int) -> bool:
        """PageBuddy(): set only on the first page of a free buddy block (the flag lives in
        the head's page_type; the other pages of the block are plain free pages), so
        /proc/kpageflags shows BUDDY on that page alone. Memory the model never handed out
        (above the bump pointer) is in MAX_PAGE_ORDER blocks, cut where allocation stopped."""
        blk = self.free_block_of(pfn)
        if blk is None or self.folio_of(pfn) is not None or blk[0] in self.pcp:
            return False
        head, order = blk
        if pfn >= self._bump and order == 0 and pfn not in self._free.get(0, []):
            for o in range(self.MAX_PAGE_ORDER, -1, -1):
                h = pfn & ~((1 << o) - 1)
                if h >= self._bump:
                    return h == pfn
        return head == pfn

    def is_free(self, pfn: int) -> bool:
        return self.free_block_of(pfn) is not None and self.folio_of(pfn) is None

    # ------------------------------------------------------------------ allocation
    def _block_ok(self, head: int, order: int) -> bool:
        end = head + (1 << order)
        return all(not head <= bad < end for bad in self.isolated | self.hwpoison)

    def alloc_block(self, order: int) -> int | None:
        """Allocate a naturally aligned block of ``1 << order`` pages, or None (ENOMEM).

        Free blocks holding a PG_hwpoison page are never handed out: the allocation-time check
        rejects them (R57); an order-0 block so rejected is leaked, a larger one is split and its
        healthy pages kept.
        """
        for o in sorted(k for k in self._free if k >= order and self._free[k]):
            heads = self._free[o]
            for i, head in enumerate(heads):
                if self._block_ok(head, o):
                    del heads[i]
                    self.pcp.discard(head)
                    self._split_free(head, o, order)
                    return head
            # every block of this order holds poison: break them up, keep healthy parts
            for head in list(heads):
                heads.remove(head)
                self.pcp.discard(head)
                self._release_healthy(head, o)
        size = 1 << order
        head = (self._bump + size - 1) & ~(size - 1)
        while head + size <= self.total_pages:
            if self._block_ok(head, order):
                self._free_range(self._bump, head)
                self._bump = head + size
                return head
            head += size
        return None

    def _split_free(self, head: int, have: int, want: int) -> None:
        while have > want:
            have -= 1
            self._add_free(head + (1 << have), have)

    def _release_healthy(self, head: int, order: int) -> None:
        for pfn in range(head, head + (1 << order)):
            if pfn not in self.isolated and pfn not in self.hwpoison:
                self._add_free(pfn, 0)

    def _free_range(self, start: int, end: int) -> None:
        """Put the gap skipped for alignment back on the free lists as aligned blocks."""
        pfn = start
        while pfn < end:
            order = 0
            while (pfn & ((1 << (order + 1)) - 1)) == 0 and pfn + (1 << (order + 1)) <= end:
                order += 1
            self._add_free(pfn, order)
            pfn += 1 << order

    def _add_free(self, head: int, order: int) -> None:
        bisect.insort(self._free.setdefault(order, []), head)

    def free_block(self, head: int, order: int, pcp: bool = False) -> None:
        """Return a block to the buddy allocator. Freeing a high-order block does not look at
        each subpage (R57): poisoned raw pages inside it stay until someone takes them off.
        ``pcp``: the block was freed by free_unref_page() in an order the per-CPU lists take
        (``pcp_allowed_order``), so it waits there (``self.pcp``) instead of getting PageBuddy;
        put_page_back_buddy() and __free_pages_ok() free straight to buddy."""
        for pfn in range(head, head + (1 << order)) if order <= 9 else ():
            self.data.pop(pfn, None)
        self._add_free(head, order)
        if pcp:
            self.pcp.add(head)

    def take_page_off_buddy(self, pfn: int) -> bool:
        """Remove one raw page from the free lists for good (MAGIC_HWPOISON, R19, R50). Its
        callers drain the per-CPU lists first (shake_page(), __page_handle_poison()), so a
        page on one is found in the buddy lists."""
        self.drain_all_pages()
        blk = self.free_block_of(pfn)
        if blk is None or self.folio_of(pfn) is not None or blk[0] in self.pcp:
            return False
        head, order = blk
        if pfn >= self._bump and head == pfn and order == 0 and pfn not in self._free.get(0, []):
            self.isolated.add(pfn)  # untouched memory: the allocator skips isolated frames
            return True
        self._free[order].remove(head)
        while order > 0:
            order -= 1
            half = 1 << order
            if pfn >= head + half:
                self._add_free(head, order)
                head += half
            else:
                self._add_free(head + half, order)
        self.isolated.add(pfn)
        return True

    def new_folio(self, order: int, kind: str, owner: str = "") -> Folio | None:
        head = self.alloc_block(order)
        if head is None:
            return None
        folio = Folio(pfn=head, order=order, kind=kind, owner=owner)
        self.folios[head] = folio
        self.orders.add(order)
        return folio

    def copy_data(self, src: int, dst: int, nr_pages: int) -> None:
        """Copy the contents of ``nr_pages`` frames (folio_copy() of a migration or a COW):
        every page, not only the first. Contents are sparse (absent = zero)."""
        if nr_pages == 1:
            self.data[dst] = self.data.get(src, 0)
            return
        self.clear_data(dst, nr_pages)
        for pfn in [p for p in self.data if src <= p < src + nr_pages]:
            self.data[dst + (pfn - src)] = self.data[pfn]

    def clear_data(self, pfn: int, nr_pages: int) -> None:
        """Zero ``nr_pages`` frames (a freshly allocated, cleared folio)."""
        if nr_pages <= 64:
            for p in range(pfn, pfn + nr_pages):
                self.data.pop(p, None)
            return
        for p in [p for p in self.data if pfn <= p < pfn + nr_pages]:
            del self.data[p]

    def drop_folio(self, folio: Folio, to_buddy: bool = True) -> None:
        """The folio's last reference went away: free its frames."""
        self.folios.pop(folio.pfn, None)
        if to_buddy:
            self.free_block(folio.pfn, folio.order, pcp=self.pcp_allowed_order(folio.order))

    def canonical(self) -> tuple[Any, ...]:
        return (
            tuple(sorted(self.hw_errors)), tuple(sorted(self.hwpoison)),
            tuple(sorted(self.isolated)), tuple(sorted(self.detected)),
        )
