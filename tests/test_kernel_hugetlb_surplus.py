"""HugeTLB surplus (overcommit) pages, migration targets and hwpoison-entry targets, as
measured on Debian's 6.1 kernel: a reservation the free pages cannot cover allocates surplus
pages at mmap time (gather_surplus_pages()), soft offline falls back to a temporary page
(alloc_migrate_hugetlb_folio()) and an address whose HugeTLB page was unmapped as poisoned
has no pfn (pagemap_hugetlb_range())."""

from __future__ import annotations

from typing import Any

import pytest

from memfail.model.actions import (
    CorruptPfn,
    Create,
    Hugepages,
    Madvise,
    MemRead,
    MemWrite,
    Mmap,
    Munmap,
    Open,
    Pagemap,
    SoftOfflinePage,
    Sysctl,
)
from memfail.model.host import ActionResult, Host
from memfail.model.trace import MemoryFailureEvent, SignalSent
from model_helpers import do, new_host


def host(profile: str = "linux-6.1", **cfg: Any) -> Host:
    return new_host(profile, "a", **cfg)


def pool(h: Host) -> tuple[int, int, int, int]:
    m = h.meminfo()
    return (m["HugePages_Total"], m["HugePages_Free"], m["HugePages_Rsvd"],
            m["HugePages_Surp"])


def queued(h: Host) -> list[tuple[str, int | None]]:
    return [(e.si_code, e.lsb) for e in h.trace.of(SignalSent) if e.outcome == "queued"]


# --------------------------------------------------------------------------- surplus pages


def test_private_mapping_gathers_a_surplus_page_at_mmap_time() -> None:
    """c73: hugetlb_reserve_pages() -> gather_surplus_pages() grows the pool when the
    mapping is created; the fault dequeues that page with the reservation (R56)."""
    h = host(overcommit={"2M": 2})
    do(h, Mmap(proc="a", name="h", size="2M", hugetlb="2M"))
    assert pool(h) == (1, 1, 1, 1)
    assert do(h, MemWrite(proc="a", addr="h", value=1)).ret == 0
    assert queued(h) == []
    assert pool(h) == (1, 0, 0, 1)
    assert do(h, Madvise(proc="a", addr="h", advice="hwpoison")) == ActionResult(0)
    assert [e.result for e in h.trace.of(MemoryFailureEvent)] == ["Recovered"]
    # anonymous: MF's put frees the surplus folio to buddy, the raw page stays poisoned
    assert pool(h) == (0, 0, 0, 0)
    assert h.meminfo()["HardwareCorrupted"] == 4
    do(h, MemRead(proc="a", addr="h"))
    assert queued(h) == [("BUS_MCEERR_AR", 21)]


def test_hugepages_action_with_overcommit_only() -> None:
    """c71: ``hugepages: {count: 0, overcommit: 2}`` then a private mapping."""
    h = host()
    do(h, Hugepages(count=0, overcommit=2), Mmap(proc="a", name="h", size="2M", hugetlb="2M"))
    assert do(h, MemWrite(proc="a", addr="h", value=1)).ret == 0
    assert pool(h) == (1, 0, 0, 1)
    assert do(h, Madvise(proc="a", addr="h", advice="hwpoison")) == ActionResult(0)
    do(h, Munmap(proc="a", addr="h"))
    assert pool(h) == (0, 0, 0, 0)
    assert h.meminfo()["HardwareCorrupted"] == 4


def test_shared_mapping_surplus_page_poisoned_stays_counted() -> None:
    """c74: a shared mapping's poisoned surplus folio keeps MF's reference (R55), so it
    stays in the pool, counted as surplus, after the mapping is gone."""
    h = host()
    do(h, Sysctl(name="vm.nr_overcommit_hugepages", value=2),
       Mmap(proc="a", name="h", size="2M", hugetlb="2M", shared=True))
    assert pool(h) == (1, 1, 1, 1)
    do(h, MemWrite(proc="a", addr="h", value=1))
    assert pool(h) == (1, 0, 0, 1)
    assert do(h, CorruptPfn(proc="a", addr="h")).errno is None
    assert h.meminfo()["HardwareCorrupted"] == 4
    do(h, Munmap(proc="a", addr="h"))
    assert pool(h) == (1, 0, 0, 1)


def test_unused_reservation_returns_its_surplus_pages() -> None:
    """return_unused_surplus_pages(): munmap of a never-touched mapping frees them."""
    h = host(overcommit={"2M": 2})
    do(h, Mmap(proc="a", name="h", size="4M", hugetlb="2M"))
    assert pool(h) == (2, 2, 2, 2)
    do(h, Munmap(proc="a", addr="h"))
    assert pool(h) == (0, 0, 0, 0)


def test_reservation_beyond_overcommit_fails_and_frees_what_it_gathered() -> None:
    h = host(hugepages={"2M": 1}, overcommit={"2M": 1})
    assert do(h, Mmap(proc="a", name="h", size="6M", hugetlb="2M")).errno == "ENOMEM"
    assert pool(h) == (1, 1, 0, 0)
    # one persistent page plus one surplus page cover 4M
    assert do(h, Mmap(proc="a", name="h", size="4M", hugetlb="2M")).errno is None
    assert pool(h) == (2, 2, 2, 1)


def test_no_surplus_gigantic_pages() -> None:
    """alloc_surplus_hugetlb_folio() refuses gigantic (1 GiB) sizes."""
    h = host(overcommit={"1G": 1})
    assert do(h, Mmap(proc="a", name="h", size="1G", hugetlb="1G")).errno == "ENOMEM"


def test_reserve_and_unreserve_keep_resv_within_free() -> None:
    """The guest_memfd HugeTLB path reserves through the same call: the pages are there."""
    h = host(overcommit={"2M": 3})
    hs = h.hugetlb.hstate(9)
    assert h.hugetlb.reserve(hs, 2)
    assert (hs.nr_huge_pages, hs.free_huge_pages, hs.resv_huge_pages,
            hs.surplus_huge_pages) == (2, 2, 2, 2)
    f = h.hugetlb.dequeue(hs, owner="gmem", use_reserve=True)
    assert f is not None and hs.resv_huge_pages == 1
    h.hugetlb.unreserve(hs, 1)
    assert (hs.nr_huge_pages, hs.free_huge_pages, hs.resv_huge_pages,
            hs.surplus_huge_pages) == (1, 0, 0, 1)
    h.hugetlb.free_huge_folio(f)
    assert (hs.nr_huge_pages, hs.surplus_huge_pages) == (0, 0)


def test_shrink_below_in_use_makes_surplus_and_grow_absorbs_it() -> None:
    """set_max_huge_pages(): adjust_pool_surplus() in both directions."""
    h = host(hugepages={"2M": 1})
    do(h, Mmap(proc="a", name="h", size="2M", hugetlb="2M"), MemWrite(proc="a", addr="h"))
    do(h, Hugepages(count=0))
    assert pool(h) == (1, 0, 0, 1)
    do(h, Hugepages(count=1))
    assert pool(h) == (1, 0, 0, 0)
    do(h, Hugepages(count=0))
    do(h, Munmap(proc="a", addr="h"))
    assert pool(h) == (0, 0, 0, 0)


# --------------------------------------------------------------------------- soft offline


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-6.18"])
def test_soft_offline_pool_of_one_migrates_to_a_temporary_page(profile: str) -> None:
    """c75: no free page -> alloc_migrate_hugetlb_folio(); the target becomes a pool page,
    the old folio leaves the pool and its raw page is poisoned."""
    h = host(profile, hugepages={"2M": 1})
    do(h, Mmap(proc="a", name="h", size="2M", hugetlb="2M"),
       MemWrite(proc="a", addr="h", value=7))
    before = do(h, Pagemap(proc="a", addr="h")).ret["pfn"]
    assert do(h, Madvise(proc="a", addr="h", advice="soft_offline")) == ActionResult(0)
    after = do(h, Pagemap(proc="a", addr="h")).ret
    assert after["present"] and after["pfn"] != before
    assert do(h, MemRead(proc="a", addr="h")).ret == 7
    assert pool(h) == (1, 0, 0, 0)
    assert h.meminfo()["HardwareCorrupted"] == 4
    assert before in h.phys.hwpoison


def test_sysfs_soft_offline_of_hugetlbfs_page_pool_of_one() -> None:
    """c80: the same through /sys/devices/system/memory/soft_offline_page."""
    h = host(hugepages={"2M": 1})
    do(h, Create(path="/mnt/huge/so1", fs="hugetlbfs", size="2M"),
       Open(proc="a", path="/mnt/huge/so1", fd="f"),
       Mmap(proc="a", name="h", size="2M", fd="f", shared=True),
       MemWrite(proc="a", addr="h", value=7))
    assert do(h, SoftOfflinePage(proc="a", addr="h+4K")).errno is None
    assert do(h, MemRead(proc="a", addr="h")).ret == 7
    assert pool(h) == (1, 0, 0, 0)
    assert h.meminfo()["HardwareCorrupted"] == 4


# --------------------------------------------------------------------------- targets


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-6.18"])
def test_target_through_a_hugetlb_hwpoison_entry_is_not_present(profile: str) -> None:
    """c50: pagemap_hugetlb_range() gives no pfn for a hugetlb hwpoison entry, so a second
    injection by address fails like the lookup (ENOENT), not with EHWPOISON."""
    h = host(profile, hugepages={"2M": 3})
    do(h, Mmap(proc="a", name="h", size="2M", hugetlb="2M", shared=True),
       MemWrite(proc="a", addr="h", value=1))
    assert do(h, CorruptPfn(proc="a", addr="h+4K")).errno is None
    pm = do(h, Pagemap(proc="a", addr="h+4K")).ret
    assert not pm["present"] and pm["pfn"] is None
    assert do(h, CorruptPfn(proc="a", addr="h+4K")) == ActionResult(-1, "ENOENT")
    assert h.meminfo()["HardwareCorrupted"] == 4
