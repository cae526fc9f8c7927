"""Action handlers for processes and threads: spawn, fork, clone, exit, prctl, signals."""

from __future__ import annotations

import signal as _signal
from typing import TYPE_CHECKING

from ..actions import (
    Clone,
    Exit,
    Fork,
    Kill,
    Prctl,
    ProcStatus,
    Sigaction,
    Sigpending,
    Sigprocmask,
    Spawn,
)
from ..errors import EINVAL
from ..handlers import ActionResult, handles
from ..trace import SI_CODE_NAMES, Observation
from .ksm import anon_vma_fork
from .mm import MM, PTE, VMA
from .task import Thread

if TYPE_CHECKING:
    from ..state import HostState as Host


@handles(Spawn)
def do_spawn(host: Host, a: Spawn) -> ActionResult:
    proc = host.add_process(a.proc, list(a.threads), a.caps)
    return ActionResult(proc.pid)


@handles(Clone)
def do_clone(host: Host, a: Clone) -> ActionResult:
    """clone(CLONE_THREAD): the new thread copies the creator's PF_MCE_* flags (R10)."""
    proc = host.proc(a.proc)
    parent = host.thread(proc, a.thread)
    if proc.thread(a.new) is not None:
        return ActionResult.err(-EINVAL)
    t = Thread(tid=host._alloc_tid(), name=a.new, proc=proc, mce_process=parent.mce_process,
               mce_early=parent.mce_early, blocked=parent.blocked)
    proc.threads.append(t)
    host.threads_by_tid[t.tid] = t
    return ActionResult(t.tid)


@handles(Fork)
def do_fork(host: Host, a: Fork) -> ActionResult:
    """fork(): copy the address space (private anonymous pages become copy-on-write),
    dispositions, fds; the child's thread inherits the forking thread's flags (R10)."""
    parent = host.proc(a.proc)
    pt = host.thread(parent, a.thread)
    child = host.add_process(a.child, [pt.name], parent.caps)
    ct = child.threads[0]
    ct.mce_process, ct.mce_early, ct.blocked = pt.mce_process, pt.mce_early, pt.blocked
    child.sigbus = parent.sigbus
    assert parent.mm is not None and child.mm is not None
    copy_mm(host, parent.mm, child.mm)
    for name, vma in parent.regions.items():
        child.regions[name] = _vma_in(child.mm, vma)
    for fd, of in parent.fds.items():
        child.fds[fd] = type(of)(of.inode, of.pos, of.wb_err_seen)
        of.inode.open_files += 1
    return ActionResult(child.pid)


def _vma_in(mm: MM, like: VMA) -> VMA:
    for v in mm.vmas:
        if v.start == like.start:
            return v
    raise AssertionError("fork lost a VMA")


def vma_needs_copy(vma: VMA) -> bool:
    """vma_needs_copy() (mm/memory.c, 6.0+; the same test was inline in copy_page_range
    before): page tables are copied for VM_HUGETLB (and PFNMAP/MIXEDMAP, uffd-wp) VMAs and for
    VMAs with an anon_vma; a shared mapping, or a private one that never had an anonymous
    page, is skipped ("Don't copy ptes where a page fault will fill them correctly"), so the
    child's pagemap shows those pages not present until its own fault."""
    return bool(vma.huge_order) or vma.anon_vma


def copy_mm(host: Host, src: MM, dst: MM) -> None:
    """dup_mmap(): every VMA is duplicated; copy_page_range() copies the entries of the VMAs
    vma_needs_copy() picks (private anonymous pages become copy-on-write for both)."""
    dst.next_addr = src.next_addr
    for v in src.vmas:
        nv = VMA(mm=dst, name=v.name, start=v.start, end=v.end, inode=v.inode, pgoff=v.pgoff,
                 shared=v.shared, writable=v.writable, locked=False, huge_order=v.huge_order,
                 thp=v.thp, anon_hugetlb=v.anon_hugetlb, file=v.file, anon_vma=v.anon_vma)
        dst.vmas.append(nv)
        anon_vma_fork(host, v, nv)
        if v.inode is not None:
            v.inode.i_mmap.append(nv)
        if not vma_needs_copy(v):
            continue
        for key in sorted(k for k in src.ptes if v.contains(k)):
            pte = src.ptes[key]
            if pte.kind != "present":
                dst.ptes[key] = PTE(pte.kind, pte.pfn, pte.order)  # hwpoison entries copy
                continue
            if v.inode is None and not v.shared:
                pte.write = False  # copy-on-write for both
            folio = host.phys.folio_of(pte.pfn)
            npte = PTE("present", pte.pfn, pte.order, pte.dirty, pte.write, pte.special)
            if folio is None or pte.special:
                dst.ptes[key] = npte
            else:
                host.set_pte(nv, key, npte, folio)


@handles(Exit)
def do_exit(host: Host, a: Exit) -> ActionResult:
    proc = host.proc(a.proc)
    host.exit_process(proc, a.code)
    return ActionResult(0)


@handles(Prctl)
def do_prctl(host: Host, a: Prctl) -> ActionResult:
    """prctl(PR_MCE_KILL / PR_MCE_KILL_GET) on one thread (R10).

    PR_MCE_KILL_CLEAR requires arg3 == 0 (kernel/sys.c: ``if (arg3 != 0) return -EINVAL``);
    PR_MCE_KILL_LATE is 0, so ``clear`` with ``policy: late`` is accepted, as Debian's 6.1
    shows; ``early`` (1) and ``default`` (2) are -EINVAL. PR_MCE_KILL_GET takes no argument
    (``if (arg2 | arg3 | arg4 | arg5) return -EINVAL``): a ``policy`` other than ``late`` (0)
    given with ``get`` is -EINVAL too (DOC-03)."""
    t = host.thread(host.proc(a.proc), a.thread)
    if a.op == "get":
        if a.policy not in (None, "late"):
            return ActionResult.err(-EINVAL)
        return ActionResult(t.policy())
    if a.op == "clear":
        if a.policy not in (None, "late"):
            return ActionResult.err(-EINVAL)  # arg3 must be 0 == PR_MCE_KILL_LATE (DOC-03)
        t.mce_process = False
        return ActionResult(0)
    if a.policy is None:
        return ActionResult.err(-EINVAL)
    if a.policy == "early":
        t.mce_process, t.mce_early = True, True
    elif a.policy == "late":
        t.mce_process, t.mce_early = True, False
    else:
        t.mce_process, t.mce_early = False, False
    return ActionResult(0)


@handles(Sigaction)
def do_sigaction(host: Host, a: Sigaction) -> ActionResult:
    proc = host.proc(a.proc)
    proc.sigbus = a.sigbus
    proc.sigbus_exit_code = a.exit_code
    return ActionResult(0)


@handles(Kill)
def do_kill(host: Host, a: Kill) -> ActionResult:
    """kill(2) (kill_pid_info -> group_send_sig_info): SIGKILL ends the process; SIGBUS is
    queued with SI_USER to the thread complete_signal() picks (the first that does not block
    it, else the leader, where it stays pending); other signals take their default action
    (the model keeps dispositions for SIGBUS only)."""
    proc = host.proc(a.proc)
    if a.as_proc is not None:
        host.proc(a.as_proc, "as_proc")
    if a.signal == 0:
        return ActionResult(0)
    if a.signal == "SIGBUS":
        live = proc.live_threads()
        t = next((x for x in live if not x.blocked), live[0] if live else proc.leader)
        host.send_sig_user(t, "kill")
        return ActionResult(0)
    host.kill_process(proc, int(_signal.Signals[a.signal]), "kill")
    return ActionResult(0)


@handles(Sigpending)
def do_sigpending(host: Host, a: Sigpending) -> ActionResult:
    """sigpending(): the thread's pending set (one SIGBUS slot, R38), with its siginfo."""
    proc = host.proc(a.proc)
    t = host.thread(proc, a.thread)
    out = []
    if t.pending is not None:
        info = t.pending
        out.append({"signal": "SIGBUS", "code": SI_CODE_NAMES.get(info.si_code,
                                                                  str(info.si_code)),
                    "addr": host.addr_rel_of(proc, info.addr)})
    host.emit(Observation(host.trace.step, f"sigpending {a.proc}:{t.name}", out))
    return ActionResult(out)


@handles(ProcStatus)
def do_proc_status(host: Host, a: ProcStatus) -> ActionResult:
    """The process's state as waitpid() would report it."""
    st = host.process_status_or_none(a.proc)
    sig = st.get("signal")
    out = {"alive": st["state"] == "running", "state": st["state"], "code": st.get("code"),
           "signal": _signal.Signals(sig).name if sig else None}
    host.emit(Observation(host.trace.step, f"proc_status {a.proc}", out))
    return ActionResult(out)


@handles(Sigprocmask)
def do_sigprocmask(host: Host, a: Sigprocmask) -> ActionResult:
    t = host.thread(host.proc(a.proc), a.thread)
    t.blocked = a.block
    return ActionResult(0)
