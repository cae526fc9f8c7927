"""Targets and interfaces added for issue 3: the ``phys`` target (DOC-07), the hwpoison test
filter (R15), the swap cache (R29) and read() across poisoned HugeTLB pages (KS-09/10)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from memfail.model.actions import (
    HardOfflinePage,
    Madvise,
    MemfdCreate,
    MemRead,
    MemWrite,
    Mmap,
    Pread,
    Sigaction,
    SoftOfflinePage,
    Spawn,
)
from memfail.model.host import Host, HostConfig
from memfail.model.kernel.kactions import HwpoisonFilter, Swapout


def host(**kw: object) -> Host:
    h = Host(HostConfig(**kw))  # type: ignore[arg-type]
    h.apply(Spawn(proc="app"))
    h.apply(Sigaction(proc="app", sigbus="handler"))
    return h


@pytest.mark.parametrize("phys", ["0x100000000", "100000000", 0x100000000, "0x100000fff"])
def test_phys_target_is_a_hex_address_shifted_to_a_pfn(phys: int | str) -> None:
    h = host()
    h.apply(Mmap(proc="app", name="m", size="4K"))
    h.apply(MemWrite(proc="app", addr="m"))
    res = h.apply(HardOfflinePage(phys=phys))
    assert res.errno is None and res.ret == len("0x100000000\n")
    assert 0x100000 in h.phys.hwpoison


def test_phys_target_rejects_garbage_and_a_second_target() -> None:
    with pytest.raises(ValidationError, match="hex physical address"):
        SoftOfflinePage(phys="0xzz")
    with pytest.raises(ValidationError, match=r"exactly one target.*got pfn, phys"):
        SoftOfflinePage(pfn=1, phys=4096)


def test_filtered_madvise_leaves_nothing_behind() -> None:
    h = host()
    h.apply(Mmap(proc="app", name="m", size="4K"))
    h.apply(MemWrite(proc="app", addr="m"))
    h.apply(HwpoisonFilter(enable=True, dev_major=8))
    res = h.apply(Madvise(proc="app", addr="m", advice="hwpoison"))
    assert res.ret == 0 and not h.phys.hwpoison and h.mf.num_poisoned_pages == 0
    assert h.apply(MemRead(proc="app", addr="m")).ret == 1


def test_swapped_out_page_comes_back_after_a_clean_swapcache_error() -> None:
    h = host()
    h.apply(Mmap(proc="app", name="m", size="4K"))
    h.apply(MemWrite(proc="app", addr="m", value=0x42))
    assert h.apply(Swapout(proc="app", addr="m")).ret == 1
    assert h.apply(MemRead(proc="app", addr="m")).ret == 0x42  # swapped back in
    assert h.apply(Swapout(proc="app", addr="m", stage="written")).ret == 1
    assert h.apply(Swapout(proc="app", addr="m", stage="written")).ret == 1  # idempotent


def test_mlocked_ranges_cannot_be_swapped_out() -> None:
    h = host()
    h.apply(Mmap(proc="app", name="m", size="4K", locked=True))
    assert h.apply(Swapout(proc="app", addr="m")).errno == "EINVAL"


def test_hugetlb_read_fails_when_a_later_huge_page_starts_poisoned() -> None:
    """hugetlbfs_read_iter(): a poisoned raw page at the start of the next huge page of the
    same read() makes the whole call -EIO; starting inside the poisoned page too."""
    h = host(hugepages={"2M": 2})
    h.apply(MemfdCreate(proc="app", name="f", size="4M", hugetlb=True))
    h.apply(Mmap(proc="app", name="m", size="4M", fd="f", shared=True, populate=True))
    h.apply(Madvise(proc="app", addr="m+2M", advice="hwpoison"))
    assert h.apply(Pread(proc="app", fd="f", offset="1M", len="2M")).errno == "EIO"
    assert h.apply(Pread(proc="app", fd="f", offset="1M", len="1M")).ret == 1 << 20
    assert h.apply(Pread(proc="app", fd="f", offset="2M", len="4K")).errno == "EIO"
    assert h.apply(Pread(proc="app", fd="f", offset="0x201000", len="4K")).ret == 4096
