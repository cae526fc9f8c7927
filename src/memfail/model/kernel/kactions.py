"""Actions added by the kernel model beyond the core set: a system call copying user memory
(R3, R42, R47) and the per-CPU memory_failure_queue (R2). Handlers live in ``kaccess.py``.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from ..actions import Action, Addr, Size, TargetMixin, register_actions


class UserCopy(Action):
    """The kernel touches ``len`` bytes of ``proc``'s memory at ``addr`` on behalf of a system
    call (R3, R42, R47):

    * ``via: copy`` — a copy from user memory (``copy_from_user`` in write(), a pipe write,
      a futex word): a hwpoison entry makes it fault, -1 ``EFAULT``, no signal. A latent
      hardware error is a machine check in kernel mode: with ``mc_safe: true`` (exception
      fixup, MCE_IN_KERNEL_COPYIN) the copy fails with ``EFAULT`` and kill_me_never reports
      memory_failure(pfn, 0) (only early-kill processes are signalled); with
      ``mc_safe: false`` (a plain kernel load without fixup) the host panics.
    * ``via: gup`` — get_user_pages() of the page: -1 ``EHWPOISON`` for a hwpoison entry or
      a poisoned page-cache page, otherwise 0.

    Returns the byte count (copy) or 0 (gup)."""

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


KERNEL_ACTIONS: tuple[type[Action], ...] = (UserCopy, MfQueue)
register_actions(*KERNEL_ACTIONS)
