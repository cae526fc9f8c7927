"""Kernel behaviour fixed after comparison with real kernels (issue 11), and the actions added
then: each test drives the model with actions and asserts what a program or an administrator
would see (return values, errnos, signals, pagemap/kpageflags, meminfo, exits)."""

from __future__ import annotations

from typing import Any, Literal

import pytest

from memfail.model.actions import (
    CorruptPfn,
    Create,
    DropCaches,
    Exit,
    Fadvise,
    Fallocate,
    Fork,
    Fsync,
    Kill,
    Kpageflags,
    Link,
    Madvise,
    MceInject,
    MemfdCreate,
    MemRead,
    MemWrite,
    Mlock,
    Mmap,
    Open,
    Pagemap,
    Pread,
    ProcStatus,
    Pwrite,
    Shmat,
    ShmctlRmid,
    Shmget,
    Sigaction,
    Sigpending,
    Sigprocmask,
    Spawn,
    Splice,
    SplitHugePages,
    Symlink,
    Unlink,
)
from memfail.model.host import ActionResult, Host, HostConfig
from memfail.model.kernel.profiles import PROFILES
from memfail.model.trace import ProcessExit, SignalSent
from model_helpers import do, new_host


def host(profile: str = "linux-6.18", **cfg: Any) -> Host:
    return new_host(profile, "app", **cfg)


def sigs(h: Host) -> list[tuple[str, str, str | None, int | None]]:
    return [(e.comm, e.si_code, e.addr_rel, e.lsb) for e in h.trace.of(SignalSent)
            if e.outcome == "queued"]


# --------------------------------------------------------------------------- defects 1-9


@pytest.mark.parametrize("fs", ["tmpfs", "ramfs", "hugetlbfs"])
def test_fsync_is_noop_fsync_outside_disk_file_systems(
        fs: Literal["tmpfs", "ramfs", "hugetlbfs"]) -> None:
    h = host(hugepages={"2M": 1})
    do(h, Create(path="/f", fs=fs, size="2M" if fs == "hugetlbfs" else "4K"),
       Open(proc="app", path="/f", fd="f"),
       Mmap(proc="app", name="m", size="2M" if fs == "hugetlbfs" else "4K", fd="f"),
       MemWrite(proc="app", addr="m"), CorruptPfn(proc="app", addr="m"))
    assert h.meminfo()["HardwareCorrupted"] == 4
    assert do(h, Fsync(proc="app", fd="f")) == ActionResult(0)


def test_fsync_on_ext2_reports_eio_once() -> None:
    h = host()
    do(h, Create(path="/f", fs="ext2"), Open(proc="app", path="/f", fd="f"),
       Pwrite(proc="app", fd="f", len="4K"), CorruptPfn(proc="app", file="f"))
    assert [do(h, Fsync(proc="app", fd="f")).errno for _ in range(2)] == ["EIO", None]


@pytest.mark.parametrize("profile", list(PROFILES))
def test_repeated_madvise_hwpoison_is_efault_in_every_profile(profile: str) -> None:
    h = host(profile)
    first = do(h, Mmap(proc="app", name="a", size="4K"), MemWrite(proc="app", addr="a"),
               Madvise(proc="app", addr="a", advice="hwpoison"))
    assert first == ActionResult(0)
    n = len(h.trace.events)
    assert do(h, Madvise(proc="app", addr="a", advice="hwpoison")) == ActionResult(-1, "EFAULT")
    assert not [e for e in h.trace.events[n:] if e.kind in ("memory_failure", "signal")]


def test_fork_copies_only_vmas_with_an_anon_vma_or_hugetlb() -> None:
    h = host(hugepages={"2M": 1})
    do(h, Mmap(proc="app", name="shm", size="4K", shared=True),
       Mmap(proc="app", name="anon", size="4K"), Mmap(proc="app", name="ro", size="4K"),
       Mmap(proc="app", name="huge", size="2M", hugetlb="2M", shared=True),
       MemWrite(proc="app", addr="shm"), MemWrite(proc="app", addr="anon"),
       MemRead(proc="app", addr="ro"), MemWrite(proc="app", addr="huge"),
       Fork(proc="app", child="kid"))
    present = {n: do(h, Pagemap(proc="kid", addr=n)).ret["present"]
               for n in ("shm", "anon", "ro", "huge")}
    assert present == {"shm": False, "anon": True, "ro": False, "huge": True}
    # the child's own fault maps the same shared page
    assert do(h, MemRead(proc="kid", addr="shm")).ret == 1
    assert do(h, Pagemap(proc="kid", addr="shm")).ret["pfn"] == \
        do(h, Pagemap(proc="app", addr="shm")).ret["pfn"]


def test_an_unforked_child_mapping_is_not_signalled_early() -> None:
    # the child never touched the shared page, so it has no PTE and collect_procs_file()
    # still finds its VMA: an early-kill child is told (R33), with the file address
    h = host()
    do(h, Mmap(proc="app", name="shm", size="4K", shared=True), MemWrite(proc="app", addr="shm"),
       Fork(proc="app", child="kid"))
    h.apply(Sigaction(proc="kid", sigbus="handler"))
    from memfail.model.actions import Prctl

    do(h, Prctl(proc="kid", policy="early"), CorruptPfn(proc="app", addr="shm"))
    assert ("kid", "BUS_MCEERR_AO", "shm+0x0", 12) in sigs(h)


@pytest.mark.parametrize("profile,addr", [("linux-6.1", "huge+0x0"), ("linux-6.6", "huge+0x0"),
                                          ("linux-6.12", "huge+0x2000"),
                                          ("linux-6.18", "huge+0x2000")])
def test_early_ao_address_of_a_hugetlb_subpage(profile: str, addr: str) -> None:
    h = host(profile, hugepages={"2M": 1})
    from memfail.model.actions import Prctl

    do(h, Prctl(proc="app", policy="early"), Mmap(proc="app", name="huge", size="2M",
                                                  hugetlb="2M"),
       MemWrite(proc="app", addr="huge"), CorruptPfn(proc="app", addr="huge+8K"))
    assert sigs(h) == [("app", "BUS_MCEERR_AO", addr, 21)]


def test_hugetlb_soft_offline_and_cow_copy_every_subpage() -> None:
    h = host(hugepages={"2M": 3})
    do(h, Mmap(proc="app", name="h", size="2M", hugetlb="2M"),
       MemWrite(proc="app", addr="h", whole=True, value=7))
    h.phys.data[do(h, Pagemap(proc="app", addr="h+1M")).ret["pfn"]] = 8  # one page differs
    assert do(h, Madvise(proc="app", addr="h", advice="soft_offline")) == ActionResult(0)
    res = do(h, MemRead(proc="app", addr="h", whole=True))
    assert res.data is not None and len(res.data) == 512
    assert set(res.data) == {7, 8} and res.data[256] == 8


def test_writable_hugetlbfs_mapping_sizes_the_file_read_only_does_not() -> None:
    h = host(hugepages={"2M": 2})
    do(h, Create(path="/h", fs="hugetlbfs"), Open(proc="app", path="/h"),
       Mmap(proc="app", name="ro", size="2M", fd="/h", prot="r"))
    assert h.files["/h"].size == 0
    do(h, Mmap(proc="app", name="rw", size="2M", fd="/h", offset="2M"))
    assert h.files["/h"].size == 4 << 20
    assert do(h, MemWrite(proc="app", addr="rw")).ret == 0


def test_hugetlbfs_punch_hole_zaps_hwpoison_entries_of_every_vma() -> None:
    h = host(hugepages={"2M": 2})
    do(h, Create(path="/h", fs="hugetlbfs"), Open(proc="app", path="/h", fd="h"),
       Mmap(proc="app", name="m", size="2M", fd="h"), MemWrite(proc="app", addr="m"),
       Fork(proc="app", child="kid"), Madvise(proc="app", addr="m", advice="hwpoison"))
    assert do(h, Pagemap(proc="app", addr="m")).ret["hwpoison_entry"]
    do(h, Fallocate(proc="app", fd="h", len="2M"))
    for p in ("app", "kid"):
        assert do(h, Pagemap(proc=p, addr="m")).ret == {
            "present": False, "swapped": False, "pfn": None, "hwpoison_entry": False}
    n = len(sigs(h))
    assert do(h, MemWrite(proc="app", addr="m")).ret == 0
    assert len(sigs(h)) == n


def test_shmem_punch_hole_keeps_hwpoison_entries() -> None:
    h = host()
    do(h, MemfdCreate(proc="app", name="s", size="4K"), Mmap(proc="app", name="m", size="4K",
                                                            fd="s"),
       MemWrite(proc="app", addr="m"), Madvise(proc="app", addr="m", advice="hwpoison"),
       Fallocate(proc="app", fd="s", len="4K"))
    assert do(h, MemWrite(proc="app", addr="m")).ret == "sigbus"


def test_buddy_flag_only_on_block_heads() -> None:
    h = host()
    head = h.phys.FIRST_PFN + 1024
    assert do(h, Kpageflags(free="buddy")).ret == ["BUDDY"]
    assert do(h, Kpageflags(pfn=head)).ret == ["BUDDY"]
    assert do(h, Kpageflags(pfn=head + 1)).ret == []
    assert do(h, CorruptPfn(free="buddy")).errno is None
    assert do(h, Kpageflags(pfn=head)).ret == ["HWPOISON"]
    assert do(h, Kpageflags(free="buddy")).ret == ["BUDDY"]  # the next free block


def test_boot_sysctl_nr_hugepages_fills_the_pool() -> None:
    h = host(sysctl={"vm.nr_hugepages": 4, "vm.nr_overcommit_hugepages": 1})
    m = h.meminfo()
    assert (m["HugePages_Total"], m["HugePages_Free"]) == (4, 4)
    assert h.hugetlb.hstate(9).nr_overcommit_huge_pages == 1


# --------------------------------------------------------------------------- new actions


def test_kill_sigkill_sigbus_and_others() -> None:
    h = host()
    do(h, Spawn(proc="victim"), Spawn(proc="term"))
    assert do(h, Kill(proc="victim")) == ActionResult(0)
    assert do(h, ProcStatus(proc="victim")).ret == {"alive": False, "state": "killed",
                                                    "code": None, "signal": "SIGKILL"}
    assert do(h, Kill(proc="victim", signal=0)) == ActionResult(-1, "ESRCH")
    do(h, Kill(proc="term", signal="SIGTERM"))
    assert [(e.comm, e.signal, e.core) for e in h.trace.of(ProcessExit)] == [
        ("victim", 9, False), ("term", 15, False)]
    do(h, Kill(proc="app", signal="SIGBUS"))
    assert sigs(h) == [("app", "SI_USER", None, None)]
    assert h.processes["app"].alive  # the handler ran


def test_kill_sigbus_waits_while_blocked_and_default_kills_with_core() -> None:
    h = host()
    do(h, Spawn(proc="p", threads=["main", "w"]), Sigprocmask(proc="p", block=True))
    do(h, Kill(proc="p", signal="SIGBUS"))
    # complete_signal(): main blocks SIGBUS, so thread w takes it; the default action ends
    # the whole process with a core dump
    assert [(e.thread, e.si_code) for e in h.trace.of(SignalSent)] == [("w", "SI_USER")]
    assert h.processes["p"].alive is False
    ends = [(e.comm, e.signal, e.core) for e in h.trace.of(ProcessExit)]
    assert ends == [("p", 7, True)]
    do(h, Spawn(proc="q"), Sigaction(proc="q", sigbus="handler"),
       Sigprocmask(proc="q", block=True), Kill(proc="q", signal="SIGBUS"))
    assert do(h, Sigpending(proc="q")).ret == [{"signal": "SIGBUS", "code": "SI_USER",
                                                "addr": None}]
    do(h, Sigprocmask(proc="q", block=False))
    assert do(h, Sigpending(proc="q")).ret == [] and h.processes["q"].alive


def test_mlock_populates_and_fails_on_a_hwpoison_entry() -> None:
    h = host()
    do(h, Mmap(proc="app", name="a", size="8K"))
    assert do(h, Mlock(proc="app", addr="a", len="8K")) == ActionResult(0)
    assert all(do(h, Pagemap(proc="app", addr=x)).ret["present"] for x in ("a", "a+4K"))
    assert "UNEVICTABLE" in do(h, Kpageflags(proc="app", addr="a+4K")).ret
    do(h, Madvise(proc="app", addr="a", advice="hwpoison"))
    assert do(h, Mlock(proc="app", addr="a", len="8K")) == ActionResult(-1, "ENOMEM")
    assert do(h, Mlock(proc="app", addr=0x1000, len="4K")) == ActionResult(-1, "ENOMEM")


def test_madvise_hugepage_makes_later_faults_thp() -> None:
    h = host()
    do(h, Mmap(proc="app", name="t", size="4M"))
    assert do(h, Madvise(proc="app", addr="t", len="4M", advice="hugepage")) == ActionResult(0)
    do(h, MemWrite(proc="app", addr="t"))
    assert "THP" in do(h, Kpageflags(proc="app", addr="t+4K")).ret
    assert do(h, SplitHugePages(proc="app", addr="t")).ret == 1
    assert "THP" not in do(h, Kpageflags(proc="app", addr="t+4K")).ret


def test_shm_hugetlb_reserves_the_pool_and_is_released_after_rmid() -> None:
    h = host(hugepages={"2M": 2})
    assert do(h, Shmget(shm="big", size="6M", hugetlb="2M")) == ActionResult(-1, "ENOMEM")
    assert do(h, Shmget(shm="s", size="2M", hugetlb="2M")) == ActionResult(0)
    assert h.meminfo()["HugePages_Rsvd"] == 1
    do(h, Shmat(proc="app", shm="s", name="m"), MemWrite(proc="app", addr="m"))
    assert (h.meminfo()["HugePages_Rsvd"], h.meminfo()["HugePages_Free"]) == (0, 1)
    do(h, ShmctlRmid(shm="s"))
    assert h.meminfo()["HugePages_Free"] == 1  # still attached
    do(h, Exit(proc="app"))
    assert h.meminfo()["HugePages_Free"] == 2
    assert do(h, Shmat(proc="app", shm="s", name="x")).errno == "ESRCH"


def test_fadvise_dontneed_drops_clean_ext2_pages_only() -> None:
    h = host()
    do(h, Create(path="/e", fs="ext2"), Open(proc="app", path="/e", fd="e"),
       Pwrite(proc="app", fd="e", len="8K"), MemfdCreate(proc="app", name="t"),
       Pwrite(proc="app", fd="t", len="4K"))
    do(h, Fadvise(proc="app", fd="e"))  # dirty: written back, still under write-back
    assert len(h.files["/e"].pages) == 2
    do(h, Fadvise(proc="app", fd="e"), Fadvise(proc="app", fd="t"))
    assert len(h.files["/e"].pages) == 0
    assert do(h, Pread(proc="app", fd="e", len="8K")).data == [1, 1]  # read back from disk
    assert do(h, DropCaches()).ret == 2
    assert do(h, Pread(proc="app", fd="t", len="4K")).data == [1]


def test_link_keeps_the_inode_and_symlinks_resolve() -> None:
    h = host()
    do(h, Create(path="/a", fs="tmpfs"), Link(path="/a", new="/b"), Unlink(path="/a"))
    assert do(h, Open(proc="app", path="/b")) == ActionResult(0)
    assert do(h, Link(path="/a", new="/c")) == ActionResult(-1, "ENOENT")
    do(h, Symlink(target="/b", path="/l"), Symlink(target="/none", path="/dangling"))
    assert do(h, Open(proc="app", path="/l", fd="l")) == ActionResult(0)
    assert do(h, Open(proc="app", path="/dangling")) == ActionResult(-1, "ENOENT")
    assert do(h, Unlink(path="/l")) == ActionResult(0)
    assert "/b" in h.files


def test_mce_inject_srao_and_srar() -> None:
    h = host()
    do(h, Mmap(proc="app", name="a", size="8K"), MemWrite(proc="app", addr="a", len="8K"))
    assert do(h, MceInject(proc="app", addr="a")).ret == 0
    assert sigs(h) == []  # AO, and app is not early-kill
    assert do(h, MceInject(proc="app", addr="a+4K", severity="srar")).ret == 0
    assert sigs(h) == [("app", "BUS_MCEERR_AR", "a+0x1000", 12)]
    assert not h.phys.hw_errors  # software injection corrupts nothing


def test_splice_from_a_poisoned_tmpfs_page_fails_like_read() -> None:
    h = host()
    do(h, MemfdCreate(proc="app", name="t"), Pwrite(proc="app", fd="t", len="8K"),
       CorruptPfn(proc="app", file="t", offset="4K"))
    assert do(h, Splice(proc="app", fd="t", offset=0, len="4K")) == ActionResult(4096, data=[1])
    assert do(h, Splice(proc="app", fd="t", offset="4K", len="4K")) == ActionResult(-1, "EIO")
    assert do(h, Splice(proc="app", fd="t", len="8K")).ret == 4096  # short: stops at the page
    assert do(h, Splice(proc="app", fd="t", len="4K")) == ActionResult(-1, "EIO")


# --------------------------------------------------------------------------- found by memfail conform


@pytest.mark.parametrize("profile,exists", [("linux-6.1", False), ("linux-6.6", False),
                                            ("linux-6.12", True), ("linux-6.18", True)])
def test_enable_soft_offline_exists_from_6_11(profile: str, exists: bool) -> None:
    """R11: /proc/sys/vm/enable_soft_offline came with v6.11. Before, writing it fails with
    ENOENT and soft offline stays allowed (Debian's 6.1 has no such file)."""
    from memfail.model.actions import Sysctl
    from memfail.model.errors import ModelInputError

    h = host(profile)
    res = do(h, Sysctl(name="vm.enable_soft_offline", value=0))
    assert (res.ret, res.errno) == ((0, None) if exists else (-1, "ENOENT"))
    if not exists:
        with pytest.raises(ModelInputError, match=r"vm.enable_soft_offline is not in linux-6\.\d+: it came with v6\.11"):
            Host(HostConfig(profile=profile, sysctl={"vm.enable_soft_offline": 0}))


@pytest.mark.parametrize("profile,exists", [("linux-6.1", False), ("linux-6.18", False),
                                            ("next", True)])
def test_panic_on_unrecoverable_exists_only_in_the_newest_tree(profile: str,
                                                                exists: bool) -> None:
    """R86: vm.panic_on_unrecoverable_memory_failure comes with the series that reports
    kernel-owned pages as -ENOTRECOVERABLE (mm tree, no release yet): a kernel without it
    has no such file (ENOENT), and a host that asks for it is refused with the one line."""
    from memfail.model.actions import Sysctl
    from memfail.model.errors import ModelInputError

    h = host(profile)
    res = do(h, Sysctl(name="vm.panic_on_unrecoverable_memory_failure", value=1))
    assert (res.ret, res.errno) == ((0, None) if exists else (-1, "ENOENT"))
    assert h.sysctl["vm.panic_on_unrecoverable_memory_failure"] == int(exists)
    if not exists:
        with pytest.raises(ModelInputError, match=r"is not in linux-6\.\d+: only the newest "
                                                  r"tree has it"):
            Host(HostConfig(profile=profile,
                            sysctl={"vm.panic_on_unrecoverable_memory_failure": 1}))


@pytest.mark.parametrize("policy,ok", [(None, True), ("late", True), ("early", False),
                                       ("default", False)])
def test_prctl_clear_takes_zero_which_is_late(policy: Literal["early", "late", "default"] | None,
                                              ok: bool) -> None:
    """kernel/sys.c PR_MCE_KILL_CLEAR: ``if (arg3 != 0) return -EINVAL``; PR_MCE_KILL_LATE is
    0, so clear with late is accepted (Debian's 6.1), early (1) and default (2) are not."""
    from memfail.model.actions import Prctl

    h = host("linux-6.1")
    res = do(h, Prctl(proc="app", op="clear", policy=policy))
    assert (res.ret, res.errno) == ((0, None) if ok else (-1, "EINVAL"))
