"""Actions added by the kernel model beyond the core set: a system call copying user memory
(R3, R42, R47) and the per-CPU memory_failure_queue (R2). Handlers live in ``kaccess.py``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from ..actions import Action, Addr, Size, TargetMixin, register_actions


class UserCopy(Action):
    """The kernel touches ``len`` bytes of ``proc``'s memory at ``addr`` on behalf of a system
    call (R3, R42, R47):

    * ``via: copy`` — a pipe write (pipe_write(): ``copy_from_user`` from user memory, page
      by page): the copy stops at the first page that faults — a hwpoison entry, or a
      PG_hwpoison page-cache page the fault finds in a mapping that has not mapped it yet
      (__do_fault, R41) — and returns the whole pages copied before it, or -1 ``EFAULT``
      when it is the first; no signal. A latent hardware error is a machine check in kernel
      mode: with ``mc_safe: true`` (exception fixup, MCE_IN_KERNEL_COPYIN) the copy stops
      there the same way and kill_me_never reports memory_failure(pfn, 0) (only early-kill
      processes are signalled); with ``mc_safe: false`` (a plain kernel load without
      fixup) the host panics.
    * ``via: gup`` — get_user_pages() of the page: -1 ``EHWPOISON`` for a hwpoison entry or
      a poisoned page-cache page, otherwise 0.

    Returns the byte count (copy: possibly short) or 0 (gup)."""

    key: ClassVar[str] = "user_copy"
    proc: str
    thread: str | None = None
    addr: Addr
    len: Size = 1
    via: Literal["copy", "gup"] = "copy"
    mc_safe: bool = True


class MfQueue(TargetMixin, Action):
    """A firmware-first (GHES) report: memory_failure_queue(pfn, flags) puts the page in the
    16-entry per-CPU FIFO (R2); a full FIFO drops it ("buffer overflow when queuing memory
    failure"). ``soft: true`` queues MF_SOFT_OFFLINE (soft_offline_page when drained).
    ``drain: true`` (default) runs the work function now, handling every queued entry in FIFO
    order; ``drain: false`` leaves them queued (to model a burst). Returns the number of
    entries queued after the call (0 after a drain)."""

    key: ClassVar[str] = "mf_queue"
    soft: bool = False
    drain: bool = True


class Swapout(Action):
    """Reclaim ``proc``'s private anonymous pages in ``len`` bytes at ``addr`` to swap
    (like MADV_PAGEOUT), stopping at ``stage`` (R29):

    * ``cache`` — add_to_swap + unmap: the page is in the swap cache, **dirty**, not yet
      written; the PTEs are swap entries;
    * ``written`` — also written to the swap device: in the swap cache, **clean**;
    * ``freed`` (default) — also removed from the swap cache and freed: only the slot holds
      the data.

    A later access swaps the page in (do_swap_page): from the swap cache if it is still
    there (a poisoned swap-cache page gives SIGBUS ``BUS_MCEERR_AR``), else read from the
    slot into a new page, which stays in the swap cache clean after a read fault and leaves
    it after a write fault. Mlocked and hugetlb ranges fail with ``EINVAL``; shared or
    file-backed memory is not modelled (``EINVAL``). Returns the number of pages handled."""

    key: ClassVar[str] = "swapout"
    proc: str
    addr: Addr
    len: Size = 4096
    stage: Literal["cache", "written", "freed"] = "freed"


class HwpoisonFilter(Action):
    """Write the hwpoison test filter files in debugfs ``hwpoison/`` (R15, DOC-09):
    ``corrupt-filter-enable``, ``corrupt-filter-dev-major``/``-dev-minor`` (the page's
    file system device; ``-1`` = any), ``corrupt-filter-flags-mask``/``-flags-value``
    (KPF_* bits as in ``/proc/kpageflags``: an integer or a list of flag names such as
    ``[LRU, DIRTY]``) and ``corrupt-filter-memcg`` (a memory cgroup inode number; every page
    of the model belongs to the root cgroup, inode 1; 0 = any). Fields not given keep their
    value. While enabled, memory_failure() clears PG_hwpoison again on a page that does not
    match and returns -EOPNOTSUPP, which madvise(), corrupt-pfn and hard_offline_page turn
    into success; corrupt-pfn also skips pages that are not LRU, HugeTLB or free buddy pages.
    Devices: ext2 is 8:1, tmpfs/shmem 0:1, hugetlbfs 0:2, ramfs 0:3; anonymous memory has
    no device, so any device filter skips it. Returns 0."""

    key: ClassVar[str] = "hwpoison_filter"
    enable: bool | None = None
    dev_major: int | None = None
    dev_minor: int | None = None
    flags_mask: int | list[str] | None = None
    flags_value: int | list[str] | None = None
    memcg: int | None = None


KERNEL_ACTIONS: tuple[type[Action], ...] = (UserCopy, MfQueue, Swapout, HwpoisonFilter)
register_actions(*KERNEL_ACTIONS)
