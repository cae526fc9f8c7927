"""HugeTLB: hstates, pool counters, the free lists, free/dissolve of (poisoned) folios.

Implements R48-R60 of reference/kernel-behaviour.md: poison lives on the folio plus a raw
error list while the folio is a hugetlb folio (R49, R58); free_huge_folio does not check for
poison but allocation skips poisoned free folios (R55); dissolve moves the poison to the raw
pages and frees the block to buddy (R56, R59).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import EBUSY, ENOMEM
from ..trace import HugetlbPool
from .mem import HUGETLB, Folio

if TYPE_CHECKING:
    from ..state import HostState as Host


@dataclass(eq=False)
class HState:
    """One huge page size: pool counters and the free list (R55, §3.8)."""

    order: int
    name: str
    nr_huge_pages: int = 0
    free_huge_pages: int = 0
    resv_huge_pages: int = 0
    surplus_huge_pages: int = 0
    max_huge_pages: int = 0
    nr_overcommit_huge_pages: int = 0
    free_list: list[Folio] = field(default_factory=list)

    def available(self) -> int:
        """available_huge_pages(): free pages not promised to a reservation (R59)."""
        return self.free_huge_pages - self.resv_huge_pages

    def counters(self) -> dict[str, int]:
        return {"total": self.nr_huge_pages, "free": self.free_huge_pages,
                "resv": self.resv_huge_pages, "surplus": self.surplus_huge_pages}


class HugeTLB:
    """The HugeTLB subsystem of one host."""

    def __init__(self, host: Host, orders: dict[str, int], hvo: bool) -> None:
        self.host = host
        self.hvo = hvo
        self.hstates = {order: HState(order=order, name=name) for name, order in orders.items()}

    def hstate(self, order: int) -> HState:
        return self.hstates[order]

    def _changed(self, h: HState, why: str) -> None:
        c = h.counters()
        self.host.emit(HugetlbPool(self.host.trace.step, h.name, c["total"], c["free"],
                                   c["resv"], c["surplus"], why))

    # ------------------------------------------------------------------ pool sizing
    def alloc_fresh(self, h: HState, surplus: bool = False) -> Folio | None:
        folio = self.host.phys.new_folio(h.order, HUGETLB, owner="hugetlb pool")
        if folio is None:
            return None
        folio.flags |= {"hugetlb", "head"}
        if self.hvo:
            folio.flags.add("hvo")
        if surplus:
            folio.flags.add("surplus")
        h.nr_huge_pages += 1
        if surplus:
            h.surplus_huge_pages += 1
        return folio

    def set_max_huge_pages(self, h: HState, count: int) -> int:
        """Write vm.nr_hugepages (or the per-size sysfs file): grow or shrink the pool."""
        fresh = 0
        while h.nr_huge_pages - h.surplus_huge_pages < count:
            folio = self.alloc_fresh(h)
            if folio is None:
                break
            self.enqueue(h, folio, at=fresh)  # ahead of the free folios, lowest pfn first
            fresh += 1
        while h.nr_huge_pages - h.surplus_huge_pages > count:
            victim = next((f for f in h.free_list if h.available() > 0), None)
            if victim is None:
                break
            self.remove_from_pool(h, victim)
            self.update_and_free(h, victim)
        h.max_huge_pages = h.nr_huge_pages - h.surplus_huge_pages
        self._changed(h, "nr_hugepages")
        return h.nr_huge_pages

    # ------------------------------------------------------------------ free list
    def enqueue(self, h: HState, folio: Folio, at: int = 0) -> None:
        """enqueue_hugetlb_folio(): put on the free list, mark hugetlb_freed.

        The list is last in, first out: enqueue_hugetlb_folio() list_move()s the folio to the
        head of ``hugepage_freelists[nid]`` and dequeue_hugetlb_folio_node_exact() takes the
        first folio without PG_hwpoison (R55), so the folio freed last is handed out first
        (mm/hugetlb.c). ``at`` > 0 puts it that far from the head: the folios one write of
        vm.nr_hugepages adds (``set_max_huge_pages``) go ahead of the free ones, as in the
        kernel, but among themselves lowest pfn first, where the kernel's order is the one the
        buddy allocator gave them (nothing fixes it), so the pool starts in pfn order."""
        folio.flags.add("hugetlb_freed")
        folio.flags.discard("hugetlb_migratable")
        folio.mapping = None
        h.free_list.insert(at, folio)
        h.free_huge_pages += 1

    def dequeue(self, h: HState, owner: str, use_reserve: bool) -> Folio | None:
        """dequeue_hugetlb_folio_node_exact(): the first free folio without PG_hwpoison (R55),
        the one freed last (``enqueue``); falls back to a surplus page within the overcommit limit."""
        for folio in h.free_list:
            if "hwpoison" in folio.flags:
                continue
            h.free_list.remove(folio)
            h.free_huge_pages -= 1
            if use_reserve and h.resv_huge_pages > 0:
                h.resv_huge_pages -= 1
            folio.flags.discard("hugetlb_freed")
            folio.owner = owner
            self.host.check_handed_out(folio, owner)
            self._changed(h, f"allocated to {owner}")
            return folio
        if h.surplus_huge_pages < h.nr_overcommit_huge_pages and not use_reserve:
            fresh = self.alloc_fresh(h, surplus=True)
            if fresh is not None:
                fresh.owner = owner
                self._changed(h, f"surplus page allocated to {owner}")
            return fresh
        return None

    def reserve(self, h: HState, n: int) -> bool:
        """hugetlb_reserve_pages(): promise ``n`` pages to a mapping, or fail (ENOMEM)."""
        if h.available() + max(0, h.nr_overcommit_huge_pages - h.surplus_huge_pages) < n:
            return False
        h.resv_huge_pages += n
        self._changed(h, "reserved")
        return True

    def unreserve(self, h: HState, n: int) -> None:
        h.resv_huge_pages = max(0, h.resv_huge_pages - n)

    def remove_from_pool(self, h: HState, folio: Folio) -> None:
        """remove_hugetlb_folio() for a free folio."""
        if folio in h.free_list:
            h.free_list.remove(folio)
            h.free_huge_pages -= 1
        h.nr_huge_pages -= 1
        if "surplus" in folio.flags:
            h.surplus_huge_pages -= 1
        folio.flags.discard("hugetlb_freed")

    # ------------------------------------------------------------------ freeing
    def free_huge_folio(self, folio: Folio) -> None:
        """free_huge_folio(): the last reference is gone. No poison check (R55): a surplus
        folio is freed to buddy (R56); otherwise it goes back on the free list."""
        h = self.hstates[folio.order]
        folio.rmap.clear()
        folio.flags.discard("hugetlb_migratable")
        if "surplus" in folio.flags and h.surplus_huge_pages > 0:
            h.nr_huge_pages -= 1
            h.surplus_huge_pages -= 1
            self.update_and_free(h, folio)
        else:
            self.enqueue(h, folio)
        self._changed(h, "folio freed")

    def folio_clear_hugetlb_hwpoison(self, folio: Folio) -> None:
        """Move the poison from the folio to each raw page on its list (R56 step 4)."""
        if "hvo" in folio.flags or "raw_hwp_unreliable" in folio.flags:
            return
        if "hwpoison" in folio.flags:
            self.host.phys.hwpoison.update(folio.raw_hwp)
            folio.raw_hwp.clear()
            folio.flags.discard("hwpoison")

    def update_and_free(self, h: HState, folio: Folio) -> bool:
        """__update_and_free_hugetlb_folio() (R56). Returns False if the folio was kept."""
        if "raw_hwp_unreliable" in folio.flags:
            self.host.log(f"hugetlb folio {folio.pfn:#x} leaked: raw hwpoison list unreliable")
            return False
        if "hvo" in folio.flags:
            if self.host.config.hvo_restore_fails:
                # put it back in the pool as a surplus free folio
                folio.flags.add("surplus")
                h.nr_huge_pages += 1
                h.surplus_huge_pages += 1
                self.enqueue(h, folio)
                return False
            folio.flags.discard("hvo")
        folio.flags -= {"hugetlb", "head", "hugetlb_freed", "surplus"}
        self.folio_clear_hugetlb_hwpoison(folio)
        self.host.phys.drop_folio(folio)
        return True

    def dissolve_free_hugetlb_folio(self, folio: Folio) -> int:
        """dissolve_free_hugetlb_folio() (R59): 0, -EBUSY or -ENOMEM."""
        if "hugetlb" not in folio.flags:
            return 0
        h = self.hstates[folio.order]
        if "hugetlb_freed" not in folio.flags or folio.refcount:
            return -EBUSY
        if h.available() == 0:
            return -EBUSY
        if "hvo" in folio.flags and self.host.config.hvo_restore_fails:
            return -ENOMEM
        self.remove_from_pool(h, folio)
        h.max_huge_pages = max(0, h.max_huge_pages - 1)
        folio.flags.discard("hvo")
        folio.flags -= {"hugetlb", "head", "surplus"}
        self.folio_clear_hugetlb_hwpoison(folio)
        self.host.phys.drop_folio(folio)
        self._changed(h, "dissolved")
        return 0
