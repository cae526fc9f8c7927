"""Kernel-mode copies to and from user buffers (read/pread/write/pwrite and user_copy's pipe
write) that meet poisoned memory, as measured on Debian's 6.1 kernel (the
tests/conform/cases/uaccess-*.yaml cases): the copy stops at the first buffer page that
faults, the call returns the bytes copied before it (-EFAULT when it is the first page), and a
page-cache page that is PG_hwpoison faults the same way when the buffer's mapping has not
mapped it yet (__do_fault() / hugetlb_no_page(), R41, R54). No signal is sent."""

from __future__ import annotations

from typing import Any

import pytest

from memfail.model.actions import (
    CorruptPfn,
    Create,
    HwError,
    Madvise,
    MemfdCreate,
    MemRead,
    MemWrite,
    Mmap,
    Munmap,
    Open,
    Pagemap,
    Pread,
    Pwrite,
    Read,
    Write,
)
from memfail.model.host import ActionResult, Host
from memfail.model.kernel.kactions import UserCopy
from memfail.model.trace import MemoryFailureEvent, SignalSent
from model_helpers import do, new_host

PROFILES = ["linux-6.1", "linux-6.18"]


def host(profile: str = "linux-6.1", **cfg: Any) -> Host:
    return new_host(profile, "app", **cfg)


def rv(r: ActionResult) -> tuple[Any, str | None]:
    return r.ret, r.errno


def signals(h: Host) -> int:
    return len([e for e in h.trace.of(SignalSent) if e.outcome == "queued"])


# --------------------------------------------------------------------------- short copies


@pytest.mark.parametrize("profile", PROFILES)
def test_ext2_pread_pwrite_stop_at_a_later_poisoned_buffer_page(profile: str) -> None:
    """c45: filemap_read() returns already_read, generic_perform_write() the bytes written
    before fault_in_iov_iter_readable() fails; the poisoned first page is -EFAULT."""
    h = host(profile)
    do(h, Create(path="/tmp/rb", fs="ext2", size=0), Open(proc="app", path="/tmp/rb", fd="f"),
       Write(proc="app", fd="f", len="8K", value=3), Mmap(proc="app", name="b", size="8K"),
       MemWrite(proc="app", addr="b", len="8K", value=1),
       Madvise(proc="app", addr="b+4K", advice="hwpoison"))
    n = signals(h)
    assert rv(do(h, Pread(proc="app", fd="f", offset=0, len="8K", buf="b"))) == (4096, None)
    assert rv(do(h, Pread(proc="app", fd="f", offset=0, len="4K", buf="b+4K"))) == \
        (-1, "EFAULT")
    assert rv(do(h, Pwrite(proc="app", fd="f", offset=0, len="8K", buf="b"))) == (4096, None)
    assert rv(do(h, Pwrite(proc="app", fd="f", offset=0, len="4K", buf="b+4K"))) == \
        (-1, "EFAULT")
    assert rv(do(h, UserCopy(proc="app", addr="b+4K", len=1))) == (-1, "EFAULT")
    assert signals(h) == n


def test_tmpfs_read_write_and_pipe_copy_stop_at_the_third_page() -> None:
    """c46: shmem_file_read_iter() returns `retval ?: error`; the pipe write keeps the two
    whole pages copied before the poisoned one."""
    h = host()
    do(h, MemfdCreate(proc="app", name="mf", size=0),
       Write(proc="app", fd="mf", offset=0, len="12K", value=3),
       Mmap(proc="app", name="b", size="12K"), MemWrite(proc="app", addr="b", len="12K", value=1),
       Madvise(proc="app", addr="b+8K", advice="hwpoison"))
    r = do(h, Read(proc="app", fd="mf", offset=0, len="12K", buf="b"))
    assert rv(r) == (8192, None) and r.data == [3, 3]
    assert h.processes["app"].fds["mf"].pos == 8192  # the position moves by the count
    assert rv(do(h, Write(proc="app", fd="mf", offset=0, len="12K", buf="b"))) == (8192, None)
    assert rv(do(h, UserCopy(proc="app", addr="b", len="12K"))) == (8192, None)
    assert rv(do(h, MemRead(proc="app", addr="b", len="12K"))) == ("sigbus", None)


def test_pipe_write_drops_the_short_pages_bytes() -> None:
    """c51 and an unaligned buffer: pipe_write() fills whole pipe pages with
    copy_page_from_iter(page, 0, PAGE_SIZE) and does not count a page that copied short."""
    h = host()
    do(h, Mmap(proc="app", name="b", size="16K", shared=True),
       MemWrite(proc="app", addr="b", len="16K", value=1),
       Madvise(proc="app", addr="b+8K", advice="hwpoison"))
    assert rv(do(h, UserCopy(proc="app", addr="b+4K", len="8K"))) == (4096, None)
    assert rv(do(h, UserCopy(proc="app", addr="b+2K", len="8K"))) == (4096, None)
    assert rv(do(h, UserCopy(proc="app", addr="b+6K", len="4K"))) == (-1, "EFAULT")
    assert rv(do(h, UserCopy(proc="app", addr="b+2K", len="5K"))) == (5120, None)


def test_unaligned_file_copies_count_the_bytes_before_the_poisoned_page() -> None:
    """p1: a read copies byte-exactly up to the faulting buffer page; a write retries the short
    chunk with `bytes = copied`, so it writes the same prefix."""
    h = host()
    do(h, Create(path="/tmp/u1", fs="ext2", size=0), Open(proc="app", path="/tmp/u1", fd="f"),
       Write(proc="app", fd="f", len="16K", value=3), Mmap(proc="app", name="b", size="16K"),
       MemWrite(proc="app", addr="b", len="16K", value=1),
       Madvise(proc="app", addr="b+8K", advice="hwpoison"))
    assert do(h, Pread(proc="app", fd="f", offset=0, len="12K", buf="b+1K")).ret == 7168
    assert do(h, Pread(proc="app", fd="f", offset=512, len="12K", buf="b+1K")).ret == 7168
    assert do(h, Pwrite(proc="app", fd="f", offset=100, len="12K", buf="b+3K")).ret == 5120
    assert do(h, Read(proc="app", fd="f", offset=0, len="12K", buf="b+4K")).ret == 4096
    assert do(h, Read(proc="app", fd="f", len="4K")).ret == 4096  # from position 4K
    # at EOF nothing is copied, so the poisoned buffer does not matter
    assert rv(do(h, Pread(proc="app", fd="f", offset="16K", len="4K", buf="b+8K"))) == (0, None)


def test_latent_error_in_a_later_write_buffer_page_is_consumed_by_copyin() -> None:
    """R3: the machine check in copy_from_user() ends the copy short; kill_me_never runs
    memory_failure(pfn, 0) (late kill: no signal)."""
    h = host()
    do(h, Create(path="/tmp/o", fs="ext2", size=0), Open(proc="app", path="/tmp/o", fd="o"),
       Mmap(proc="app", name="b", size="8K"), MemWrite(proc="app", addr="b", len="8K", value=1),
       HwError(proc="app", addr="b+4K"))
    n = signals(h)
    assert rv(do(h, Pwrite(proc="app", fd="o", offset=0, len="8K", buf="b"))) == (4096, None)
    assert [e.result for e in h.trace.of(MemoryFailureEvent)] == ["Recovered"]
    assert signals(h) == n
    assert rv(do(h, UserCopy(proc="app", addr="b", len="8K"))) == (4096, None)


# --------------------------------------------------------------------------- fault-in


@pytest.mark.parametrize("profile", PROFILES)
def test_fresh_mapping_of_a_poisoned_shmem_page_faults_the_copy(profile: str) -> None:
    """c72: the uaccess fault goes through shmem_fault(); __do_fault() finds PG_hwpoison
    (the MF reference keeps the page cached): VM_FAULT_HWPOISON, fixed up to -EFAULT."""
    h = host(profile)
    do(h, Create(path="/dev/shm/wb", fs="tmpfs", size="8K"),
       Open(proc="app", path="/dev/shm/wb", fd="f"),
       Mmap(proc="app", name="m", size="8K", fd="f", shared=True),
       MemWrite(proc="app", addr="m", len="8K", value=3), CorruptPfn(proc="app", addr="m"),
       Create(path="/tmp/dst", fs="ext2", size=0), Open(proc="app", path="/tmp/dst", fd="d"))
    n = signals(h)
    assert rv(do(h, Pwrite(proc="app", fd="d", offset=0, len="4K", buf="m"))) == (-1, "EFAULT")
    assert rv(do(h, Pwrite(proc="app", fd="d", offset=0, len="4K", buf="m+4K"))) == \
        (4096, None)
    do(h, Munmap(proc="app", addr="m"), Mmap(proc="app", name="n", size="8K", fd="f",
                                             shared=True))
    assert rv(do(h, Pwrite(proc="app", fd="d", offset=0, len="4K", buf="n"))) == (-1, "EFAULT")
    assert rv(do(h, UserCopy(proc="app", addr="n", len=1))) == (-1, "EFAULT")
    assert rv(do(h, Pwrite(proc="app", fd="d", offset=0, len="8K", buf="n"))) == (-1, "EFAULT")
    assert do(h, Pagemap(proc="app", addr="n")).ret["present"] is False
    assert signals(h) == n


def test_fresh_mapping_of_a_poisoned_ramfs_page_faults_the_copy() -> None:
    """c76: ramfs keeps the page it could not invalidate; filemap_fault() returns it and
    __do_fault() answers VM_FAULT_HWPOISON."""
    h = host()
    do(h, Create(path="/mnt/ram/fm", fs="ramfs", size=0),
       Open(proc="app", path="/mnt/ram/fm", fd="f"),
       Write(proc="app", fd="f", len="8K", value=5),
       CorruptPfn(file="/mnt/ram/fm", offset=0),
       Mmap(proc="app", name="n", size="8K", fd="f", shared=True))
    assert rv(do(h, UserCopy(proc="app", addr="n", len=1))) == (-1, "EFAULT")
    assert rv(do(h, UserCopy(proc="app", addr="n+4K", len=1))) == (1, None)


def test_fresh_mapping_of_a_poisoned_hugetlbfs_page_faults_the_copy() -> None:
    """c77: hugetlb_no_page() finds the cached folio PG_hwpoison: VM_FAULT_HWPOISON_LARGE,
    fixed up to -EFAULT; a user load of the same mapping gets SIGBUS."""
    h = host(hugepages={"2M": 2})
    do(h, Create(path="/mnt/huge/uc", fs="hugetlbfs", size="2M"),
       Open(proc="app", path="/mnt/huge/uc", fd="f"),
       Mmap(proc="app", name="m", size="2M", fd="f", shared=True),
       MemWrite(proc="app", addr="m", value=1), Madvise(proc="app", addr="m", advice="hwpoison"),
       Munmap(proc="app", addr="m"), Mmap(proc="app", name="n", size="2M", fd="f", shared=True))
    n = signals(h)
    assert rv(do(h, UserCopy(proc="app", addr="n+4K", len=1))) == (-1, "EFAULT")
    assert signals(h) == n
    assert rv(do(h, MemRead(proc="app", addr="n+8K"))) == ("sigbus", None)


def test_read_into_a_fresh_mapping_with_a_later_poisoned_shmem_page() -> None:
    """c78: the copy_to_user() write fault on the poisoned page ends the read short."""
    h = host()
    do(h, Create(path="/dev/shm/rf", fs="tmpfs", size="8K"),
       Open(proc="app", path="/dev/shm/rf", fd="mf"),
       Pwrite(proc="app", fd="mf", offset=0, len="8K", value=3),
       CorruptPfn(file="/dev/shm/rf", offset="4K"),
       Mmap(proc="app", name="m", size="8K", fd="mf", shared=True),
       Create(path="/tmp/src", fs="ext2", size=0), Open(proc="app", path="/tmp/src", fd="s"),
       Pwrite(proc="app", fd="s", offset=0, len="8K", value=9))
    n = signals(h)
    assert rv(do(h, Pread(proc="app", fd="s", offset=0, len="8K", buf="m"))) == (4096, None)
    assert rv(do(h, Pread(proc="app", fd="s", offset=0, len="4K", buf="m+4K"))) == \
        (-1, "EFAULT")
    assert signals(h) == n


def test_copies_fault_in_untouched_buffers_and_respect_protection() -> None:
    """p2/p3: copy_to_user() write-faults an untouched anonymous buffer in; a read-only
    mapping can be copied from but a read into it is -EFAULT."""
    h = host()
    do(h, Create(path="/tmp/u2", fs="ext2", size=0), Open(proc="app", path="/tmp/u2", fd="f"),
       Write(proc="app", fd="f", len="8K", value=3), Mmap(proc="app", name="a", size="8K"),
       Mmap(proc="app", name="r", size="8K", prot="r"))
    assert do(h, Pread(proc="app", fd="f", offset=0, len="8K", buf="a")).ret == 8192
    assert do(h, Pagemap(proc="app", addr="a+4K")).ret["present"] is True
    assert rv(do(h, Pread(proc="app", fd="f", offset=0, len="8K", buf="r"))) == (-1, "EFAULT")
    assert do(h, Pwrite(proc="app", fd="f", offset=0, len="8K", buf="r")).ret == 8192
    assert do(h, UserCopy(proc="app", addr="r", len="8K")).ret == 8192
