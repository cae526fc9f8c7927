"""Handlers of ``kactions``: kernel-mode access to user memory and memory_failure_queue.

Models arch/x86/kernel/cpu/mce/severity.c error_context (a kernel-mode machine check is
recoverable only with an exception fixup: copy-from-user or an MCE-safe copy; R3, R47),
mm/gup.c (R42) and mm/memory-failure.c memory_failure_queue / memory_failure_work_func (R2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import EFAULT
from ..host import ActionResult, handles
from ..trace import PoisonConsumed
from ..units import parse_size
from .kactions import HwpoisonFilter, MfQueue, UserCopy
from .memory_failure import MF_SOFT_OFFLINE, memory_failure
from .mm import HWPOISON

if TYPE_CHECKING:
    from ..host import Host

MEMORY_FAILURE_FIFO_SIZE = 1 << 4  # MEMORY_FAILURE_FIFO_ORDER 4


@handles(UserCopy)
def do_user_copy(host: Host, a: UserCopy) -> ActionResult:
    """A system call's kernel-mode access to user memory (R3, R42, R47)."""
    from .inject import consume_kernel
    from .mmops import gup

    proc = host.proc(a.proc)
    host.thread(proc, a.thread)
    addr = host._resolve(proc, a.addr)
    length = parse_size(a.len, host.geometry.page_size)
    if a.via == "gup":
        pfn, folio = gup(host, proc, addr)
        if pfn < 0:
            return ActionResult.err(pfn)
        if folio is not None:
            folio.put("gup")
        return ActionResult(0)
    assert proc.mm is not None
    vma = proc.mm.find_vma(addr)
    if vma is None:
        return ActionResult.err(-EFAULT)
    k = proc.mm.entry_key(vma, addr, host.geometry.page_shift)
    if k is not None and proc.mm.ptes[k[0]].kind == HWPOISON:
        return ActionResult.err(-EFAULT)  # the uaccess faults: no machine check, no signal
    if k is None:
        return ActionResult(length)  # faulted in on demand; nothing poisoned to read
    pte = proc.mm.ptes[k[0]]
    pfn = pte.pfn + ((addr - k[0]) >> host.geometry.page_shift)
    if pfn not in host.phys.hw_errors:
        return ActionResult(length)
    if not a.mc_safe:
        # error_context(): no MCE-safe fixup for this instruction -> IN_KERNEL -> panic
        host.emit(PoisonConsumed(host.trace.step, pfn, f"kernel access for {proc.comm}",
                                 "kernel", proc.pid))
        host.panic("Data load in unrecoverable area of kernel")
    consume_kernel(host, pfn, by=f"copy_from_user in {proc.comm}")
    return ActionResult.err(-EFAULT)


def memory_failure_queue(host: Host, pfn: int, flags: int) -> bool:
    """memory_failure_queue() (R2): put (pfn, flags) in the per-CPU FIFO, or drop it with
    "buffer overflow when queuing memory failure at %#lx" when the FIFO is full
    (verified in mm/memory-failure.c:memory_failure_queue; the line carries the
    "Memory failure: " pr_fmt prefix)."""
    q = host.mf.mf_queue
    if len(q) >= MEMORY_FAILURE_FIFO_SIZE:
        host.log(f"Memory failure: buffer overflow when queuing memory failure at {pfn:#x}")
        return False
    q.append((pfn, flags))
    return True


def memory_failure_work_func(host: Host) -> None:
    """memory_failure_work_func(): drain the FIFO in order; MF_SOFT_OFFLINE entries go to
    soft_offline_page(), the others to memory_failure() (R2)."""
    from .inject import soft_offline_page

    q = host.mf.mf_queue
    while q:
        pfn, flags = q.pop(0)
        if flags & MF_SOFT_OFFLINE:
            soft_offline_page(host, pfn)
        else:
            memory_failure(host, pfn, flags, None, via="memory_failure_queue")


@handles(MfQueue)
def do_mf_queue(host: Host, a: MfQueue) -> ActionResult:
    from .inject import resolve_target

    pfn = resolve_target(host, a)
    if not a.soft:
        host.phys.hw_errors.add(pfn)
    memory_failure_queue(host, pfn, MF_SOFT_OFFLINE if a.soft else 0)
    if a.drain:
        memory_failure_work_func(host)
    return ActionResult(len(host.mf.mf_queue))


def _kpf_bits(value: int | list[str]) -> int:
    from ..errors import ModelInputError
    from .inject import KPF

    if isinstance(value, int):
        return value
    bits = 0
    for name in value:
        n = name.upper().removeprefix("KPF_")
        if n not in KPF:
            raise ModelInputError(f"unknown page flag {name!r}; known: {', '.join(KPF)}",
                                  "flags_mask")
        bits |= 1 << KPF.index(n)
    return bits


@handles(HwpoisonFilter)
def do_hwpoison_filter(host: Host, a: HwpoisonFilter) -> ActionResult:
    """Write the debugfs corrupt-filter-* files (R15)."""
    mf = host.mf
    if a.enable is not None:
        mf.filter_enable = a.enable
    if a.dev_major is not None:
        mf.filter_dev_major = a.dev_major
    if a.dev_minor is not None:
        mf.filter_dev_minor = a.dev_minor
    if a.flags_mask is not None:
        mf.filter_flags_mask = _kpf_bits(a.flags_mask)
    if a.flags_value is not None:
        mf.filter_flags_value = _kpf_bits(a.flags_value)
    if a.memcg is not None:
        mf.filter_memcg = a.memcg
    return ActionResult(0)
