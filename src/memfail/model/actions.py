"""Actions: the closed set of inputs the model accepts.

Each action is a small frozen, hashable pydantic model; its class docstring is the reference
text for the scenario format (``docs/scenario-format.md``). A scenario step is a mapping with
exactly one action key, e.g. ``- mem_write: {proc: app, addr: buf}``. Addresses are written as
``NAME``, ``NAME+OFFSET`` (``buf+4K``, ``buf+0x1000``, ``buf+3p``) or a plain integer, where
NAME is a mapping created by ``mmap``. Sizes accept ``4096``, ``4K``, ``2M``, ``1G`` or ``3p``
(pages).
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Size = int | str
Addr = int | str

# One byte value: the model keeps one byte per page (docs/scenario-format.md, "Memory").
Byte = Annotated[int, Field(ge=0, le=255)]


class Action(BaseModel):
    """Base class: frozen, unknown fields rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    key: ClassVar[str] = ""

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.model_dump(exclude_defaults=True).items())
        return f"{self.key}({args})"


class TargetMixin(BaseModel):
    """Which physical page an injection or observation is about: exactly one of

    * ``pfn``: a page frame number;
    * ``proc`` + ``addr``: the page mapped at that user address (looked up like pagemap);
    * ``file`` + ``offset``: the page-cache page of a file (path or ``proc``'s fd name);
    * ``free``: a free page: ``buddy`` (a free base page), ``2M``/``1G`` (a free HugeTLB folio;
      ``index`` picks which raw page inside it, 0 = head);
    * ``kernel``: a kernel-owned page: ``slab``, ``pagetable``, ``reserved`` or ``zero_page``;
    * ``vm`` + ``gpa``: the host page backing that guest physical address (the guest_memfd
      folio, allocated if the guest never touched it, or the page behind the memslot's HVA);
    * ``phys``: a physical address, as written to ``hard_offline_page`` /
      ``soft_offline_page`` (DOC-07): a hex string (``"0x100000000"``) or an integer; the
      page is ``phys >> PAGE_SHIFT``.
    """

    pfn: int | None = None
    proc: str | None = None
    addr: Addr | None = None
    file: str | None = None
    offset: Size = 0
    free: Literal["buddy", "2M", "1G"] | None = None
    index: int = 0
    kernel: Literal["slab", "pagetable", "reserved", "zero_page"] | None = None
    vm: str | None = None
    gpa: Size | None = None
    phys: int | str | None = None

    @model_validator(mode="after")
    def _one_target(self) -> Any:
        given = [n for n, v in (("pfn", self.pfn), ("addr", self.addr), ("file", self.file),
                                ("free", self.free), ("kernel", self.kernel), ("gpa", self.gpa),
                                ("phys", self.phys))
                 if v is not None]
        if len(given) != 1:
            raise ValueError(
                "give exactly one target: pfn, phys, addr (with proc), file (+ offset), free, "
                "kernel or gpa (with vm)" + (f"; got {', '.join(given)}" if given else "")
            )
        if isinstance(self.phys, str):
            try:
                value = int(self.phys.strip(), 16)
            except ValueError:
                raise ValueError(f"phys must be a hex physical address such as 0x100000000, "
                                 f"not {self.phys!r}") from None
            if value < 0:
                raise ValueError("phys must not be negative")
        elif self.phys is not None and self.phys < 0:
            raise ValueError("phys must not be negative")
        if self.gpa is not None and self.vm is None:
            raise ValueError("gpa needs vm: the VM whose guest physical address it is")
        if self.addr is not None and self.proc is None:
            raise ValueError("addr needs proc: the process whose mapping it is")
        return self


# --------------------------------------------------------------------------- host set-up


class Sysctl(Action):
    """Set a sysctl: ``vm.memory_failure_early_kill`` (R9), ``vm.memory_failure_recovery`` (R8),
    ``vm.enable_soft_offline`` (R11; the file exists since 6.11, so on older profiles the write
    fails with ENOENT), ``vm.nr_hugepages``, ``vm.nr_overcommit_hugepages``,
    ``vm.panic_on_unrecoverable_memory_failure`` (R86; only in the profile ``next``, ENOENT
    elsewhere). Returns 0; a value the sysctl's proc
    handler refuses (anything but 0 or 1 for the four switches, a negative HugeTLB count)
    fails with EINVAL and leaves the old value, as writing it to /proc/sys does."""

    key: ClassVar[str] = "sysctl"
    name: str
    value: int


class Hugepages(Action):
    """Resize the persistent HugeTLB pool of one size (``nr_hugepages`` for 2M or 1G), and
    optionally its overcommit limit. Returns the new pool size."""

    key: ClassVar[str] = "hugepages"
    size: Literal["2M", "1G"] = "2M"
    count: int = Field(ge=0)
    overcommit: int | None = Field(default=None, ge=0)


# --------------------------------------------------------------------------- tasks


class Spawn(Action):
    """Start a new process with the given thread names (the first is the group leader).
    ``caps: false`` drops CAP_SYS_ADMIN (injection then fails with EPERM, DOC-04)."""

    key: ClassVar[str] = "spawn"
    proc: str
    threads: list[str] = Field(default_factory=lambda: ["main"])
    caps: bool = True


class Fork(Action):
    """fork(): ``child`` gets a copy of ``proc``'s address space (private anonymous pages are
    shared copy-on-write, shared mappings stay shared), one thread inheriting ``thread``'s
    PR_MCE_KILL flags (R10), the signal dispositions and the file descriptors. The child's
    thread has the name of the thread that called fork() (``thread``, or ``proc``'s first
    thread when it is not given): a step naming another thread of ``child`` is bad input."""

    key: ClassVar[str] = "fork"
    proc: str
    child: str
    thread: str | None = None


class Clone(Action):
    """Create thread ``new`` in ``proc``; it inherits ``thread``'s PR_MCE_KILL flags (R10)
    and joins the end of the thread list (R12 order)."""

    key: ClassVar[str] = "clone"
    proc: str
    new: str
    thread: str | None = None


class Exit(Action):
    """The process exits with ``code``: its mappings are torn down (which removes hwpoison
    entries, R40) and its files closed."""

    key: ClassVar[str] = "exit"
    proc: str
    code: int = 0


class Prctl(Action):
    """prctl(PR_MCE_KILL) on one thread (R10): ``op: set`` with ``policy: early|late|default``,
    ``op: clear``, or ``op: get`` (returns 0 late, 1 early, 2 default). ``policy`` is the
    call's third argument (LATE 0, EARLY 1, DEFAULT 2): ``clear`` and ``get`` require it to
    be 0, so ``early`` or ``default`` with them fails with EINVAL, as the kernel does."""

    key: ClassVar[str] = "prctl"
    proc: str
    thread: str | None = None
    op: Literal["set", "clear", "get"] = "set"
    policy: Literal["early", "late", "default"] | None = None


class Sigaction(Action):
    """Set the process's SIGBUS disposition: ``handler`` (SA_SIGINFO handler that records the
    siginfo and siglongjmps out of the faulting access), ``exit`` (an SA_SIGINFO handler that
    records the siginfo and calls ``_exit(exit_code)``: the process ends with that code, not
    by the signal), ``default`` (terminate + core) or ``ignore`` (SIG_IGN; a forced AR signal
    still kills, R35). A process with a SIGBUS handler that is a VM's ``vmm`` (``vm_create``)
    runs QEMU: its SIGBUS handler is QEMU's (kvm_on_sigbus / kvm_on_sigbus_vcpu, KV-01..05),
    and its main thread aborts on an AR. A VMM with ``default`` or ``ignore`` is a program
    without one: it keeps SIGBUS unblocked (no qemu_signal_init), dies of a SIGBUS delivered
    with the default action, and drops an AO it ignores (a blocked signal would be queued
    even when ignored, and one read through a signalfd never takes its default action). To
    model another program that uses KVM with its own handler (a selftest), run it in a
    ``fork`` of the VMM and give the child its own ``sigaction``."""

    key: ClassVar[str] = "sigaction"
    proc: str
    sigbus: Literal["handler", "exit", "default", "ignore"]
    exit_code: int = Field(default=1, ge=0, le=255)


class Kill(Action):
    """kill(2) of process ``proc`` with ``signal``, sent by ``as_proc`` (default: a root
    shell). The signal is group-directed: complete_signal() gives it to the first thread
    (the leader first) that does not block it. SIGKILL ends the process at once; SIGBUS
    carries si_code SI_USER and no address, and is handled by the process's SIGBUS
    disposition (a handler runs, ``default`` ends it with a core dump, ``ignore`` discards
    it; blocked in every thread, it stays pending); any other signal has its default action
    here (the process ends, killed by that signal). ``signal: 0`` only checks that the
    process exists. The model reaps a process as soon as it ends, so killing one that has
    ended fails with ESRCH (there are no zombies). Returns 0."""

    key: ClassVar[str] = "kill"
    proc: str
    signal: Literal["SIGKILL", "SIGBUS", "SIGTERM", "SIGINT", "SIGHUP", "SIGUSR1", "SIGUSR2",
                    "SIGSEGV", 0] = "SIGKILL"
    as_proc: str | None = None


class Sigprocmask(Action):
    """Block or unblock SIGBUS in one thread. AO signals wait while blocked; forced AR signals
    unblock it and kill (R35)."""

    key: ClassVar[str] = "sigprocmask"
    proc: str
    thread: str | None = None
    block: bool


# --------------------------------------------------------------------------- files


class Create(Action):
    """Create a file ``path`` on a file system: ``tmpfs`` (shmem), ``hugetlbfs`` (page size
    ``huge``), ``ext2`` (disk-backed page cache), ``ramfs``. ``size`` sets i_size."""

    key: ClassVar[str] = "create"
    path: str
    fs: Literal["tmpfs", "hugetlbfs", "ext2", "ramfs"] = "tmpfs"
    size: Size = 0
    huge: Literal["2M", "1G"] = "2M"


class MemfdCreate(Action):
    """memfd_create(): an anonymous shmem file, or a HugeTLB one with ``hugetlb: true``
    (MFD_HUGETLB, page size ``huge``). The fd is named ``fd`` (default: ``name``) in ``proc``."""

    key: ClassVar[str] = "memfd_create"
    proc: str
    name: str
    fd: str | None = None
    size: Size = 0
    hugetlb: bool = False
    huge: Literal["2M", "1G"] = "2M"


class Open(Action):
    """open() ``path`` in ``proc``; the fd is named ``fd`` (default: the path)."""

    key: ClassVar[str] = "open"
    proc: str
    path: str
    fd: str | None = None


class Close(Action):
    """close() an fd. The file lives on while mappings or other fds hold it."""

    key: ClassVar[str] = "close"
    proc: str
    fd: str


class Unlink(Action):
    """unlink() ``path``; the inode is released once no fd or mapping holds it (R55, S13)."""

    key: ClassVar[str] = "unlink"
    path: str


class Ftruncate(Action):
    """ftruncate(): shrinking drops page-cache pages past the new size (poisoned folios stay
    allocated: the memory_failure reference is never dropped, R30, R55)."""

    key: ClassVar[str] = "ftruncate"
    proc: str
    fd: str
    size: Size


class Fallocate(Action):
    """fallocate(): ``punch_hole`` (FALLOC_FL_PUNCH_HOLE|KEEP_SIZE) removes page-cache pages in
    the range; ``allocate`` pre-populates it."""

    key: ClassVar[str] = "fallocate"
    proc: str
    fd: str
    mode: Literal["punch_hole", "allocate"] = "punch_hole"
    offset: Size = 0
    len: Size


class FileIO(Action):
    """Common fields of read/pread/write/pwrite: ``len`` bytes at ``offset`` of ``fd``.
    ``buf`` is the user buffer address (default: a private scratch buffer); a buffer in
    poisoned memory makes the kernel's copy fail (-EFAULT or a short count, R3)."""

    proc: str
    thread: str | None = None
    fd: str
    offset: Size | None = None
    len: Size = 4096
    buf: Addr | None = None
    value: Byte | None = None


class Read(FileIO):
    """read(fd) at the file position (after an lseek to ``offset`` when it is given).
    Returns the byte count, or -1 with errno (EIO for a poisoned page-cache page, R43;
    EFAULT, or a short count, for a user buffer with a poisoned page: the copy stops there)."""

    key: ClassVar[str] = "read"


class Pread(FileIO):
    """pread(fd, len, offset) (``offset`` defaults to 0); the file position is unchanged."""

    key: ClassVar[str] = "pread"


class Write(FileIO):
    """write(fd) at the file position (after an lseek to ``offset`` when it is given):
    ``value`` is the byte pattern written (default 1)."""

    key: ClassVar[str] = "write"


class Pwrite(FileIO):
    """pwrite(fd, len, offset)."""

    key: ClassVar[str] = "pwrite"


class Splice(Action):
    """splice(fd, off, pipe, NULL, len, 0): move ``len`` bytes of the file into a pipe. The
    file's ->splice_read (generic_file_splice_read in 6.1, filemap_splice_read /
    shmem_file_splice_read / copy_splice_read later) reads through the same page-cache path
    as read(), so a poisoned page stops it the same way: -1 EIO at the first byte, or a short
    count (R43; tmpfs splice fails, MR-14). With ``offset`` the file position is unchanged;
    without, it starts at and advances the file position. Returns the bytes moved."""

    key: ClassVar[str] = "splice"
    proc: str
    fd: str
    offset: Size | None = None
    len: Size = 4096


class Fadvise(Action):
    """posix_fadvise(fd, offset, len, POSIX_FADV_DONTNEED) (generic_fadvise): on a file
    system with a real backing device (ext2) dirty pages of the range are written back
    (__filemap_fdatawrite_range) and the clean, unmapped, unpinned page-cache pages are
    dropped (invalidate_mapping_pages: mapped, dirty, locked or pinned pages stay). tmpfs,
    memfd, ramfs and hugetlbfs sit on noop_backing_dev_info, for which DONTNEED does nothing.
    ``len: 0`` means to the end of the file. Returns 0."""

    key: ClassVar[str] = "fadvise"
    proc: str
    fd: str
    offset: Size = 0
    len: Size = 0
    advice: Literal["dontneed"] = "dontneed"


class DropCaches(Action):
    """``echo 1 > /proc/sys/vm/drop_caches`` (drop_pagecache_sb): invalidate_mapping_pages()
    over every file, so every clean, unmapped, unpinned page-cache page of a disk file system
    (ext2) is dropped and freed. Pages of tmpfs/memfd, ramfs and hugetlbfs, which have no
    other copy, are not dropped. Returns the number of pages dropped."""

    key: ClassVar[str] = "drop_caches"
    value: Literal[1, 3] = 1


class Link(Action):
    """link(path, new): a second name for the same inode (i_nlink grows); the inode lives
    until every name is unlinked and no fd or mapping holds it. Returns 0, or -1 ENOENT /
    EEXIST."""

    key: ClassVar[str] = "link"
    path: str
    new: str


class Symlink(Action):
    """symlink(target, path): ``path`` names ``target``; open() follows it (one level; a
    dangling link fails with ENOENT) and unlink(path) removes the link itself. Returns 0, or
    -1 EEXIST."""

    key: ClassVar[str] = "symlink"
    target: str
    path: str


class Fsync(Action):
    """fsync(fd): reports a recorded writeback error once (EIO, then 0)."""

    key: ClassVar[str] = "fsync"
    proc: str
    fd: str


# --------------------------------------------------------------------------- memory


class Mmap(Action):
    """mmap() a region named ``name`` of ``size`` bytes in ``proc``.

    * anonymous: no ``fd``; ``shared: true`` gives shared anonymous (shmem-backed) memory;
      ``hugetlb: 2M|1G`` is MAP_HUGETLB; ``thp: true`` is MADV_HUGEPAGE memory (PMD-mapped THP
      once a PMD-aligned 2M range is written).
    * file: ``fd`` (a name from open/memfd_create) at file ``offset``; ``shared`` picks
      MAP_SHARED (default) or MAP_PRIVATE.
    * ``populate`` (MAP_POPULATE) faults every page in (write-faults for writable private
      memory, read-faults otherwise); ``locked`` is MAP_LOCKED (mlocked pages).

    Returns the start address. Mappings are placed at distinct, huge-page-aligned addresses.
    """

    key: ClassVar[str] = "mmap"
    proc: str
    name: str
    size: Size
    fd: str | None = None
    offset: Size = 0
    shared: bool | None = None
    hugetlb: Literal["2M", "1G"] | None = None
    thp: bool = False
    populate: bool = False
    locked: bool = False
    prot: Literal["rw", "r"] = "rw"


class Munmap(Action):
    """munmap() ``len`` bytes at ``addr`` (default: the whole mapping). Removes hwpoison
    entries too (R40)."""

    key: ClassVar[str] = "munmap"
    proc: str
    addr: Addr
    len: Size | None = None


class MemRead(Action):
    """A user-mode load by ``thread`` from ``addr``: faults the page in if needed, consumes a
    latent hardware error (machine check → AR, R1/R44/R46), or hits a hwpoison entry (SIGBUS
    AR, R40/R41/R54). Returns the byte value read at ``addr``, ``sigbus``, or ``sigsegv``
    when the range runs past the end of the mapping (no VMA there: SIGSEGV SEGV_MAPERR).

    ``len`` bytes are read, touching every page they cover in address order (``addr``, then
    the first byte of each following page); ``whole: true`` reads from ``addr`` to the end of
    the mapping. The loop stops at the first access that raises a signal, as a program whose
    handler siglongjmps out of it would, and the step returns that outcome. The byte value of
    each page read is the step's ``data`` (see step expectations)."""

    key: ClassVar[str] = "mem_read"
    proc: str
    thread: str | None = None
    addr: Addr
    len: Size = 1
    whole: bool = False


class MemWrite(Action):
    """A user-mode store of ``value`` to ``addr``. Stores do not consume latent poison (the
    line is overwritten: UCNA, RT-07), but hwpoison entries and poisoned page-cache pages
    still raise SIGBUS. Returns 0, or ``sigbus``.

    ``len`` and ``whole`` select the range as for ``mem_read``: every page it covers is
    written (each page's byte value becomes ``value``), stopping at the first signal."""

    key: ClassVar[str] = "mem_write"
    proc: str
    thread: str | None = None
    addr: Addr
    value: Byte = 1
    len: Size = 1
    whole: bool = False


class Madvise(Action):
    """madvise(): ``hwpoison`` (MADV_HWPOISON, R4: needs CAP_SYS_ADMIN, AR since 6.11; a page
    that already holds a hwpoison entry fails with EFAULT), ``soft_offline``
    (MADV_SOFT_OFFLINE), ``dontneed`` (zap the range), ``remove`` (MADV_REMOVE: punch the
    backing shmem range), ``hugepage`` / ``nohugepage`` (MADV_HUGEPAGE / MADV_NOHUGEPAGE:
    hugepage_madvise() sets or clears VM_HUGEPAGE, so later write faults of a private
    anonymous mapping get PMD-sized THPs where a PMD-aligned 2M range fits; returns 0 for any
    mapping, also HugeTLB and shmem, where it changes nothing the model shows). Returns 0 or
    -1 with errno (ENOMEM when no mapping covers ``addr``; EFAULT for ``hwpoison`` and
    ``soft_offline``, which madvise_inject_error() reaches through get_user_pages_fast()
    before any VMA walk)."""

    key: ClassVar[str] = "madvise"
    proc: str
    thread: str | None = None
    addr: Addr
    len: Size = 4096
    advice: Literal["hwpoison", "soft_offline", "dontneed", "remove", "hugepage",
                    "nohugepage"]


class Mlock(Action):
    """mlock(addr, len) (do_mlock): the mapping becomes VM_LOCKED, then __mm_populate() faults
    every page of the range in (a write fault for writable private memory, to break COW, a
    read fault otherwise) and the pages become mlocked and unevictable. A page that cannot be
    faulted in (a hwpoison entry, a poisoned page-cache page) stops the populate:
    __mlock_posix_error_return() turns its -EFAULT into -1 ENOMEM; VM_LOCKED stays set. A
    range with no mapping fails with ENOMEM. The model does not split VMAs: the whole mapping
    counts as VM_LOCKED for later faults. Returns 0."""

    key: ClassVar[str] = "mlock"
    proc: str
    addr: Addr
    len: Size = 4096


class Munlock(Action):
    """munlock(addr, len): the mapping loses VM_LOCKED and each mapped page of the range is
    munlocked (back on the evictable LRU, unless its mapping is unevictable, e.g. ramfs).
    Returns 0, or -1 ENOMEM for a range with no mapping."""

    key: ClassVar[str] = "munlock"
    proc: str
    addr: Addr
    len: Size = 4096


# --------------------------------------------------------------------------- injection


class CorruptPfn(TargetMixin, Action):
    """Write the pfn to debugfs ``hwpoison/corrupt-pfn`` (R5): memory_failure(pfn,
    MF_SW_SIMULATED), not AR. Returns the bytes written, or -1 with MF's errno (EOPNOTSUPP
    becomes success). ``as_proc`` is the writing process (default: a root shell)."""

    key: ClassVar[str] = "corrupt_pfn"
    as_proc: str | None = None


class UnpoisonPfn(TargetMixin, Action):
    """Write the pfn to debugfs ``hwpoison/unpoison-pfn`` (R80)."""

    key: ClassVar[str] = "unpoison_pfn"


class HardOfflinePage(TargetMixin, Action):
    """Write the physical address to sysfs ``devices/system/memory/hard_offline_page``:
    hard_offline_page_store() calls memory_failure(pfn, MF_SW_SIMULATED) (6.1 and later; the
    flag makes a later unpoison possible and is not action-required, so only early-kill
    processes are signalled). Returns the bytes written, or -1 with memory_failure()'s errno
    (EOPNOTSUPP from the test filter becomes success)."""

    key: ClassVar[str] = "hard_offline_page"


class SoftOfflinePage(TargetMixin, Action):
    """Write the physical address to sysfs ``devices/system/memory/soft_offline_page``."""

    key: ClassVar[str] = "soft_offline_page"


class HwError(TargetMixin, Action):
    """A real uncorrectable DRAM error appears in the page (the hardware truth). ``detect``:

    * ``latent``: nobody knows yet; the first CPU read consumes it (AR), a scrub finds it (AO);
    * ``scrub``: patrol scrub finds it now: AO memory_failure(pfn, 0) via the MCE decode
      notifier (R2);
    * ``ghes``: firmware-first report through memory_failure_queue() (R2), drained at once.
    """

    key: ClassVar[str] = "hw_error"
    detect: Literal["latent", "scrub", "ghes"] = "latent"


class Scrub(TargetMixin, Action):
    """Patrol scrub reaches the page: if it holds a latent error, AO memory_failure(pfn, 0)."""

    key: ClassVar[str] = "scrub"


# --------------------------------------------------------------------------- observations


class Shmget(Action):
    """shmget(key, size, IPC_CREAT | (SHM_HUGETLB when ``hugetlb`` is given)): a System V
    shared memory segment, a shmem file, or with SHM_HUGETLB a hugetlbfs file
    (hugetlb_file_setup) whose whole size is reserved from the HugeTLB pool of that page size
    at once (hugetlb_reserve_pages); a pool that cannot cover it fails with -1 ENOMEM.
    ``key`` names the segment in later steps. Returns 0."""

    key: ClassVar[str] = "shmget"
    shm: str
    size: Size
    hugetlb: Literal["2M", "1G"] | None = None


class Shmat(Action):
    """shmat(): map segment ``shm`` into ``proc`` as a shared mapping named ``name`` (a
    MAP_SHARED mapping of the segment's file; shmdt is ``munmap`` of it). Returns the start
    address, or -1 EINVAL for a segment that was removed."""

    key: ClassVar[str] = "shmat"
    proc: str
    shm: str
    name: str


class ShmctlRmid(Action):
    """shmctl(shm, IPC_RMID): the segment loses its key and is destroyed once no process has
    it attached (its pages, reservations and HugeTLB folios are released then). Returns 0."""

    key: ClassVar[str] = "shmctl_rmid"
    shm: str


class MceInject(TargetMixin, Action):
    """A machine check injected by software (the mce-inject module / ``mce-inject`` tool:
    an MCE record raised through do_machine_check). The DRAM is not corrupted; only the
    report is. ``severity``:

    * ``srao`` — UC, S, ADDRV, not AR ("Action optional: memory scrubbing error"): the record
      is logged and the uc_decode_notifier calls memory_failure(pfn, 0) (R2), as for a
      patrol-scrub error;
    * ``srar`` — an action-required data load by the thread at the target's ``proc`` +
      ``addr`` (give that target): kill_me_maybe() runs memory_failure(pfn,
      MF_ACTION_REQUIRED) for that thread on its return to user mode (R44, R46).

    Returns memory_failure()'s return value (0, or a negative errno number)."""

    key: ClassVar[str] = "mce_inject"
    severity: Literal["srao", "srar"] = "srao"
    thread: str | None = None


class SplitHugePages(Action):
    """debugfs ``split_huge_pages``: ``pid,vaddr_start,vaddr_end`` of ``proc`` (``addr``,
    ``len``; default the whole mapping) splits every THP mapped in that range
    (split_huge_pages_pid); without ``proc`` it splits every THP of the host
    (split_huge_pages_all). HugeTLB pages are not THPs and stay. A THP with an extra pin
    (GUP) cannot be split and is left. Returns the number of THPs split."""

    key: ClassVar[str] = "split_huge_pages"
    proc: str | None = None
    addr: Addr | None = None
    len: Size | None = None


class Sigpending(Action):
    """sigpending() of one thread: the signals queued to it and not yet delivered (a SIGBUS
    waits while the thread blocks it, R35, R38). Returns a list of ``{signal, code, addr}``
    (addr as NAME+OFFSET), empty when nothing is pending."""

    key: ClassVar[str] = "sigpending"
    proc: str
    thread: str | None = None


class ProcStatus(Action):
    """Whether ``proc`` is alive, and how it ended (like waitpid's status): returns
    ``{alive, state, code, signal}``, state ``running``, ``exited`` (code = the exit code),
    ``killed`` (signal = the signal's name) or ``never-started`` (the step that creates it
    failed). Never fails, even for a process that has ended."""

    key: ClassVar[str] = "proc_status"
    proc: str


class Pagemap(Action):
    """Read ``/proc/PID/pagemap`` for ``addr``: ``{present, swapped, pfn, hwpoison_entry}``
    (a hwpoison entry reads as swapped, KS-01)."""

    key: ClassVar[str] = "pagemap"
    proc: str
    addr: Addr


class Kpageflags(TargetMixin, Action):
    """Read ``/proc/kpageflags`` for the target page: the list of KPF_* flag names, as the
    profile's stable_page_flags() gives them. Since 6.10 a large folio's flags show on every
    page of it (a THP tail reports LRU, UPTODATE, SWAPBACKED; every page of a poisoned
    HugeTLB folio HWPOISON); before, a tail reports only MMAP, ANON, COMPOUND_TAIL and THP
    of those. From 6.10 until the fix in the profile ``next``, every anonymous page also
    reports KSM (``mapping & PAGE_MAPPING_KSM`` is true for any anonymous folio). A frame
    freed to a per-CPU list has no flag (BUDDY only once it reaches the buddy allocator)."""

    key: ClassVar[str] = "kpageflags"


class Meminfo(Action):
    """Read ``/proc/meminfo``: HardwareCorrupted (kB), HugePages_Total/Free/Rsvd/Surp,
    Hugepagesize, AnonHugePages, Shmem; plus the per-node ``memory_failure`` statistics."""

    key: ClassVar[str] = "meminfo"


HOST_ACTIONS: tuple[type[Action], ...] = (
    Sysctl, Hugepages, Spawn, Fork, Clone, Exit, Kill, Prctl, Sigaction, Sigprocmask,
    Create, MemfdCreate, Open, Close, Unlink, Link, Symlink, Ftruncate, Fallocate,
    Read, Pread, Write, Pwrite, Splice, Fsync, Fadvise, DropCaches,
    Mmap, Munmap, MemRead, MemWrite, Madvise, Mlock, Munlock, Shmget, Shmat, ShmctlRmid,
    CorruptPfn, UnpoisonPfn, HardOfflinePage, SoftOfflinePage, HwError, Scrub, MceInject,
    SplitHugePages,
    Pagemap, Kpageflags, Meminfo, Sigpending, ProcStatus,
)

ACTION_TYPES: dict[str, type[Action]] = {a.key: a for a in HOST_ACTIONS}


def register_actions(*classes: type[Action]) -> None:
    """Add actions of a model extension (KVM, guest_memfd, VMM) to the closed set."""
    for cls in classes:
        if cls.key in ACTION_TYPES and ACTION_TYPES[cls.key] is not cls:
            raise ValueError(f"action key {cls.key!r} registered twice")
        ACTION_TYPES[cls.key] = cls


def parse_action(key: str, args: dict[str, Any]) -> Action:
    """Build an action from its scenario key and arguments (raises pydantic ValidationError)."""
    return ACTION_TYPES[key].model_validate(args)


AnyAction = Annotated[Action, "one of ACTION_TYPES"]


# The KVM / guest_memfd / VMM actions are part of the same closed set.
from .kvm import actions as _kvm_actions  # noqa: E402,F401
