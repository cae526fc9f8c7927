"""HugeTLB: hstates, pool counters, the free lists, free/dissolve of (poisoned) folios.

Implements R48-R60 of reference/kernel-behaviour.md: poison lives on the folio plus a raw
error list while the folio is a hugetlb folio (R49, R58); free_huge_folio does not check for
poison but allocation skips poisoned free folios (R55); dissolve moves the poison to the raw
pages and frees the block to buddy (R56, R59).

Surplus pages are counted, as in mm/hugetlb.c, not marked: ``surplus_huge_pages`` says how
many of the pool's pages go back to buddy when freed (free_huge_folio() frees any folio while
the count is non-zero), and a reservation the free pages cannot cover allocates surplus pages
at once (gather_surplus_pages(), ``reserve``), so ``resv_huge_pages <= free_huge_pages``
always holds. A folio allocated for migration only is ``temporary`` (HPageTemporary).
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
    def is_gigantic(self, h: HState) -> bool:
        """hstate_is_gigantic(): larger than the buddy allocator's largest block (1 GiB)."""
        return h.order > self.host.phys.MAX_PAGE_ORDER

    def alloc_fresh(self, h: HState) -> Folio | None:
        """alloc_fresh_hugetlb_folio() + prep_new_hugetlb_folio(): a new folio from buddy,
        counted in ``nr_huge_pages`` (__prep_account_new_huge_page) and in nothing else."""
        folio = self.host.phys.new_folio(h.order, HUGETLB, owner="hugetlb pool")
        if folio is None:
            return None
        folio.flags |= {"hugetlb", "head"}
        if self.hvo:
            folio.flags.add("hvo")
        h.nr_huge_pages += 1
        return folio

    def alloc_surplus(self, h: HState) -> Folio | None:
        """alloc_surplus_hugetlb_folio() (R56): no surplus page of a gigantic size, none past
        vm.nr_overcommit_hugepages (``surplus_huge_pages >= nr_overcommit_huge_pages`` fails);
        otherwise a fresh folio counted in ``nr_huge_pages`` and ``surplus_huge_pages``."""
        if self.is_gigantic(h) or h.surplus_huge_pages >= h.nr_overcommit_huge_pages:
            return None
        folio = self.alloc_fresh(h)
        if folio is not None:
            h.surplus_huge_pages += 1
        return folio

    def alloc_migrate(self, h: HState) -> Folio | None:
        """alloc_migrate_hugetlb_folio(): a fresh folio for a migration target, not bound by
        the overcommit limit and not counted as surplus but marked temporary
        (folio_set_hugetlb_temporary: "they are only temporary and will be released properly
        on the last reference"); none of a gigantic size."""
        if self.is_gigantic(h):
            return None
        folio = self.alloc_fresh(h)
        if folio is not None:
            folio.flags.add("temporary")
        return folio

    def alloc_migration_target(self, h: HState, owner: str) -> Folio | None:
        """alloc_hugetlb_folio_nodemask() for alloc_migration_target() (R61): a free folio
        only while one is not promised to a reservation (``available_huge_pages(h)``), else a
        temporary one (``alloc_migrate``)."""
        folio = self._dequeue_free(h, owner) if h.available() > 0 else None
        if folio is None:
            folio = self.alloc_migrate(h)
            if folio is not None:
                folio.owner = owner
                self._changed(h, f"temporary page allocated to {owner}")
        return folio

    def set_max_huge_pages(self, h: HState, count: int) -> int:
        """Write vm.nr_hugepages (or the per-size sysfs file): grow or shrink the pool.

        set_max_huge_pages(): growing first turns surplus pages into persistent ones
        (adjust_pool_surplus(h, nodes, -1) while ``surplus_huge_pages`` and the persistent
        count is below the target) and then allocates; shrinking frees free pages down to
        ``resv + in use`` and then counts the rest as surplus (adjust_pool_surplus(+1) while
        ``surplus < nr``), so they go back to buddy when freed."""
        while h.surplus_huge_pages and h.nr_huge_pages - h.surplus_huge_pages < count:
            h.surplus_huge_pages -= 1
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
        while h.nr_huge_pages - h.surplus_huge_pages > count \
                and h.surplus_huge_pages < h.nr_huge_pages:
            h.surplus_huge_pages += 1
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

    def _dequeue_free(self, h: HState, owner: str) -> Folio | None:
        """dequeue_hugetlb_folio_node_exact(): the first free folio without PG_hwpoison (R55),
        the one freed last (``enqueue``)."""
        for folio in h.free_list:
            if "hwpoison" in folio.flags:
                continue
            h.free_list.remove(folio)
            h.free_huge_pages -= 1
            folio.flags.discard("hugetlb_freed")
            folio.owner = owner
            self.host.check_handed_out(folio, owner)
            return folio
        return None

    def dequeue(self, h: HState, owner: str, use_reserve: bool) -> Folio | None:
        """alloc_hugetlb_folio(): dequeue_hugetlb_folio_vma() takes a free folio, but without
        a reservation only while one is not promised to others (``!vma_has_reserves() &&
        !available_huge_pages(h)`` fails); a reservation is consumed (``resv_huge_pages--``).
        Failing that, alloc_buddy_hugetlb_folio_with_mpol() allocates a surplus page within
        the overcommit limit (``alloc_surplus``), which also consumes the reservation it
        stands for (SetHPageRestoreReserve; ``resv_huge_pages--``)."""
        folio = None
        if use_reserve or h.available() > 0:
            folio = self._dequeue_free(h, owner)
        why = f"allocated to {owner}"
        if folio is None:
            folio = self.alloc_surplus(h)
            if folio is None:
                return None
            folio.owner = owner
            why = f"surplus page allocated to {owner}"
        if use_reserve and h.resv_huge_pages > 0:
            h.resv_huge_pages -= 1
        self._changed(h, why)
        return folio

    def reserve(self, h: HState, n: int) -> bool:
        """hugetlb_reserve_pages() -> hugetlb_acct_memory(h, n) -> gather_surplus_pages(h, n):
        promise ``n`` pages, or fail (ENOMEM).

        ``needed = resv + n - free``: if the free pages cover it the reservation is only
        counted; otherwise ``needed`` surplus pages are allocated now (alloc_surplus, bound by
        vm.nr_overcommit_hugepages) and enqueued, so the pool grows (total, free and surplus)
        at mmap time and the fault later dequeues one with the reservation. If not all can be
        allocated, those allocated go back to buddy (free_huge_folio() with the surplus count
        set) and the reservation fails."""
        needed = h.resv_huge_pages + n - h.free_huge_pages
        if needed > 0:
            got: list[Folio] = []
            while len(got) < needed:
                folio = self.alloc_surplus(h)
                if folio is None:
                    break
                got.append(folio)
            if len(got) < needed:
                for folio in got:
                    h.nr_huge_pages -= 1
                    h.surplus_huge_pages -= 1
                    self.update_and_free(h, folio)
                return False
            # the surplus list is built with list_add() and enqueued in list order, each at
            # the head of the free list: the page allocated first ends up first
            for folio in reversed(got):
                self.enqueue(h, folio)
        h.resv_huge_pages += n
        self._changed(h, "reserved")
        return True

    def unreserve(self, h: HState, n: int) -> None:
        """hugetlb_acct_memory(h, -n) -> return_unused_surplus_pages(h, n): drop ``n``
        reservations, then free up to ``min(n, surplus_huge_pages)`` free pages to buddy
        (remove_pool_hugetlb_folio(h, nodes, acct_surplus=true) takes the head of the free
        list, poisoned or not, and counts it out of the surplus)."""
        n = min(n, h.resv_huge_pages)
        if n <= 0:
            return
        h.resv_huge_pages -= n
        for _ in range(min(n, h.surplus_huge_pages)):
            if not h.free_list:
                break
            folio = h.free_list[0]
            self.remove_from_pool(h, folio, adjust_surplus=True)
            self.update_and_free(h, folio)
        self._changed(h, "unreserved")

    def remove_from_pool(self, h: HState, folio: Folio, adjust_surplus: bool = False) -> None:
        """remove_hugetlb_folio(h, folio, adjust_surplus): out of the free list (if on it)
        and the pool count; ``adjust_surplus`` also takes one off ``surplus_huge_pages``."""
        if folio in h.free_list:
            h.free_list.remove(folio)
            h.free_huge_pages -= 1
        h.nr_huge_pages -= 1
        if adjust_surplus and h.surplus_huge_pages > 0:
            h.surplus_huge_pages -= 1
        folio.flags.discard("hugetlb_freed")

    # ------------------------------------------------------------------ freeing
    def free_huge_folio(self, folio: Folio) -> None:
        """free_huge_folio(): the last reference is gone. No poison check (R55): a temporary
        folio leaves the pool without touching the surplus count
        (remove_hugetlb_folio(h, folio, false)); while ``surplus_huge_pages`` is non-zero any
        folio is freed to buddy and counted out of the surplus (remove_hugetlb_folio(h,
        folio, true)) (R56); otherwise it goes back on the free list."""
        h = self.hstates[folio.order]
        folio.rmap.clear()
        folio.flags.discard("hugetlb_migratable")
        if "temporary" in folio.flags:
            folio.flags.discard("temporary")
            self.remove_from_pool(h, folio)
            self.update_and_free(h, folio)
        elif h.surplus_huge_pages > 0:
            self.remove_from_pool(h, folio, adjust_surplus=True)
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
                # add_hugetlb_folio(h, folio, true): back in the pool as a surplus free folio
                h.nr_huge_pages += 1
                h.surplus_huge_pages += 1
                self.enqueue(h, folio)
                return False
            folio.flags.discard("hvo")
        folio.flags -= {"hugetlb", "head", "hugetlb_freed", "temporary"}
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
        self.remove_from_pool(h, folio)  # remove_hugetlb_folio(h, folio, false)
        h.max_huge_pages = max(0, h.max_huge_pages - 1)
        folio.flags.discard("hvo")
        folio.flags -= {"hugetlb", "head"}
        self.folio_clear_hugetlb_hwpoison(folio)
        self.host.phys.drop_folio(folio)
        self._changed(h, "dissolved")
        return 0
