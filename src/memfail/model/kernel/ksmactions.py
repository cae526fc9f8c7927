"""The ``ksm_merge`` action (kernel samepage merging). The handler lives in ``ksm.py``."""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from ..actions import Action, Addr, register_actions


class KsmPage(BaseModel):
    """One page to merge: the page ``proc`` maps at ``addr``."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    proc: str
    addr: Addr


class KsmMerge(Action):
    """``madvise(MADV_MERGEABLE)`` on each page's VMA, then a ksmd pass that merges them
    (mm/ksm.c). ``pages`` lists ``{proc, addr}`` entries (addresses as elsewhere:
    ``m``, ``m+4K``). The pages, at least two, must be present private anonymous base pages with
    identical contents. They become **one KSM page** (in the order given: the second page's
    frame is kept, as ``try_to_merge_two_pages`` keeps the page being scanned, and later
    pages are merged into it; the other frames are freed). If one of the pages is already a
    KSM page, the others are merged into that one. Each address then maps the KSM page
    read-only with a clean PTE; the KSM folio is anonymous, on the LRU and **dirty**
    (``try_to_merge_one_page`` marks it dirty so that reclaim swaps it instead of dropping
    it), and ``kpageflags`` shows ``KSM``. A write to any of the addresses breaks COW into a
    private copy; KSM pages are never reused in place.

    memory_failure() on a KSM page collects the processes through KSM's rmap
    (``collect_procs_ksm``, R33): every rmap item of the page, newest merge first, and for
    each every eligible process whose VMA is in that item's anon_vma (the merging process
    and its fork children), each task at most once, with the item's address. The folio is
    dirty, so every collected task is signalled (R22 step 8) and the page is a "dirty LRU
    page", Recovered (R24-R26). linux-6.1 predates KSM support (6.4): memory_failure logs
    "can't handle KSM pages." and reports "unmapping failed page".

    Refused with ``EINVAL`` where the model does not merge: fewer than two pages, pages
    that differ, a shared/file/HugeTLB/mlocked mapping, the zero page, a THP, a page in the
    swap cache or already poisoned, a page that is not present, two pages that are one
    forked page, two different KSM pages. ``EBUSY`` when a page is pinned (GUP). A KSM page
    cannot be swapped out (``swapout`` returns ``EINVAL``). Returns the number of mappings
    of the KSM page."""

    key: ClassVar[str] = "ksm_merge"
    pages: list[KsmPage] = Field(min_length=1)


KSM_ACTIONS: tuple[type[Action], ...] = (KsmMerge,)
register_actions(*KSM_ACTIONS)
