"""The Host's state: everything one simulated machine holds, apart from the action dispatcher.

``HostState`` holds the data (physical memory and folios, HugeTLB pools, processes and their
address spaces, inodes and open files, sysctls, the memory-failure state, the trace, the
geometry, the kernel profile, the policy and the model extensions' ``ext``) and the kernel
mechanisms several entry points share (signal queueing and delivery on the return to user
space, unmapping, freeing, truncation), as methods named after the kernel functions they
model. The kernel, KVM and VMM modules work on this state alone; ``memfail.model.host``
adds the dispatcher (``Host.apply`` and the handler table) on top. This module imports no
action handler.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import KernelPanic, ModelInputError, TargetGone
from .kernel.fs import GMEM, Inode, OpenFile
from .kernel.hugetlb import HugeTLB
from .kernel.mem import HUGETLB, KERNEL, Folio, PhysMem
from .kernel.memory_failure import MFState
from .kernel.mm import HWPOISON, MM, PTE, VMA
from .kernel.profiles import DEFAULT_PROFILE, KernelProfile, get_profile, refuse_missing
from .kernel.task import Process, SigInfo, Thread
from .trace import (
    SI_CODE_NAMES,
    SI_KERNEL,
    SI_USER,
    SIGBUS,
    Event,
    KernelLog,
    PageIsolated,
    Panic,
    PoisonHandedOut,
    ProcessExit,
    PteChange,
    SignalDelivered,
    SignalSent,
    Trace,
)
from .units import Geometry, parse_size

ZERO_PFN = 0x2000  # the shared zero page (a reserved kernel page)
RESERVED_PFN = 0x1000

SYSCTL_DEFAULTS = {
    "vm.memory_failure_recovery": 1,
    "vm.memory_failure_early_kill": 0,
    "vm.enable_soft_offline": 1,
    "vm.nr_hugepages": 0,
    "vm.nr_overcommit_hugepages": 0,
    "vm.panic_on_unrecoverable_memory_failure": 0,
}
# The values each sysctl's handler accepts (inclusive; None: no upper bound). The four
# switches use proc_dointvec_minmax with extra1 = SYSCTL_ZERO, extra2 = SYSCTL_ONE
# (mm/memory-failure.c memory_failure_table; R8, R9, R11, R86), so any other value fails
# with EINVAL and leaves the old one; the two HugeTLB counts go through
# proc_doulongvec_minmax (hugetlb_sysctl_handler), which refuses a negative number.
SYSCTL_RANGES: dict[str, tuple[int, int | None]] = {
    "vm.memory_failure_recovery": (0, 1),
    "vm.memory_failure_early_kill": (0, 1),
    "vm.enable_soft_offline": (0, 1),
    "vm.panic_on_unrecoverable_memory_failure": (0, 1),
    "vm.nr_hugepages": (0, None),
    "vm.nr_overcommit_hugepages": (0, None),
}


def sysctl_in_range(name: str, value: int) -> bool:
    """Whether the sysctl's proc handler accepts ``value`` (``SYSCTL_RANGES``)."""
    lo, hi = SYSCTL_RANGES.get(name, (0, None))
    return value >= lo and (hi is None or value <= hi)


def sysctl_range_text(name: str) -> str:
    lo, hi = SYSCTL_RANGES.get(name, (0, None))
    return f"the kernel accepts {lo} or {hi}" if hi == lo + 1 else \
        f"the kernel accepts {lo}..{hi}" if hi is not None else f"the kernel accepts >= {lo}"


# Sysctls that only some kernels have: name -> the KernelProfile switch that brings the file.
# vm.panic_on_unrecoverable_memory_failure comes with the series that reports kernel-owned
# pages as -ENOTRECOVERABLE (Breno Leitao, "mm/memory-failure: add panic option for
# unrecoverable pages", in the mm tree with "report MF_MSG_KERNEL for unrecoverable kernel
# pages"; R86), so the switch that brings one brings the other.
PROFILE_SYSCTLS = {"vm.enable_soft_offline": "sysctl_enable_soft_offline",
                   "vm.panic_on_unrecoverable_memory_failure": "kernel_owned_enotrecoverable"}


@dataclass
class HostConfig:
    """How to build a host: memory size, HugeTLB pools, sysctls, kernel profile, policy."""

    memory: int | str = "16G"
    hugepages: dict[str, int] = field(default_factory=dict)
    overcommit: dict[str, int] = field(default_factory=dict)
    hvo: bool = False
    hvo_restore_fails: bool = False
    sysctl: dict[str, int] = field(default_factory=dict)
    profile: KernelProfile | str = DEFAULT_PROFILE
    policy: Any = None
    seed: int = 0
    geometry: Geometry = field(default_factory=Geometry)


class HostState:
    """One machine's state: physical memory, HugeTLB, files, processes, memory-failure state,
    VMs (in ``ext``). Built from a HostConfig; changed only by the model's kernel, KVM and VMM
    functions, which ``memfail.model.host.Host.apply`` calls per action."""

    def __init__(self, config: HostConfig | None = None) -> None:
        self.config = cfg = config or HostConfig()
        self.profile = cfg.profile if isinstance(cfg.profile, KernelProfile) \
            else get_profile(cfg.profile)
        self.geometry = cfg.geometry
        self._rng: random.Random | None = None  # created on first use (see rng)
        self.trace = Trace()
        total = parse_size(cfg.memory) >> self.geometry.page_shift
        self.phys = PhysMem(total)
        self.mf = MFState()
        self.sysctl: dict[str, int] = dict(SYSCTL_DEFAULTS)
        for k, v in cfg.sysctl.items():
            if k not in SYSCTL_DEFAULTS:
                raise ModelInputError(
                    f"unknown sysctl {k!r}; known: {', '.join(SYSCTL_DEFAULTS)}", "sysctl")
            if k in PROFILE_SYSCTLS:
                refuse_missing(self.profile, PROFILE_SYSCTLS[k], "sysctl", what=k)
            if not sysctl_in_range(k, int(v)):
                raise ModelInputError(f"{k} = {v}: {sysctl_range_text(k)}", "sysctl")
            self.sysctl[k] = int(v)
        geo = self.geometry
        self.hugetlb = HugeTLB(self, {"2M": geo.pmd_order, "1G": geo.pud_order}, cfg.hvo)
        self.processes: dict[str, Process] = {}
        self.threads_by_tid: dict[int, Thread] = {}
        self.mms: dict[int, MM] = {}
        self.files: dict[str, Inode] = {}
        self.inodes: list[Inode] = []
        self._next_pid = 1000
        self._next_ino = 10
        self._next_mm = 1
        self.panicked: str | None = None
        self.ext: dict[str, Any] = {}  # state of model extensions (KVM, VMM, policy)
        self._pending_threads: set[Thread] = set()
        self._init_kernel_pages()
        self.root = self._new_process("bash", ["main"], caps=True)
        for size, n in cfg.overcommit.items():
            self.hugetlb.hstate(geo.huge_order(size)).nr_overcommit_huge_pages = int(n)
        for size, n in cfg.hugepages.items():
            self.hugetlb.set_max_huge_pages(self.hugetlb.hstate(geo.huge_order(size)), int(n))
        # sysctls given at boot are written like the sysctl action does (after the boot-time
        # pool): vm.nr_hugepages and vm.nr_overcommit_hugepages act on the default (2M) hstate
        h2 = self.hugetlb.hstate(geo.pmd_order)
        if "vm.nr_overcommit_hugepages" in cfg.sysctl:
            h2.nr_overcommit_huge_pages = int(cfg.sysctl["vm.nr_overcommit_hugepages"])
        if "vm.nr_hugepages" in cfg.sysctl:
            self.hugetlb.set_max_huge_pages(h2, int(cfg.sysctl["vm.nr_hugepages"]))
        self.ext["pool_at_start"] = sum(h.nr_huge_pages << h.order
                                        for h in self.hugetlb.hstates.values())
        self.ext["pool_at_start_by_order"] = {o: h.nr_huge_pages
                                              for o, h in self.hugetlb.hstates.items()}
        self.policy = None
        if cfg.policy is not None:
            from .policy import make_policy

            self.policy = make_policy(cfg.policy)
            fix = self.policy.mf_delayed_fix
            if fix is not None and fix != self.profile.mf_delayed_fix:
                # mf-delayed-fix pins Lisa Wang's fix (R66); mainline follows the profile (R65)
                self.profile = replace(self.profile, mf_delayed_fix=fix)

    @property
    def rng(self) -> random.Random:
        """The host's only source of randomness, seeded from the config: same seed, same run.
        Created on first use, so a model that draws nothing carries no generator state."""
        if self._rng is None:
            self._rng = random.Random(self.config.seed)
        return self._rng

    # ------------------------------------------------------------------ basics
    def _init_kernel_pages(self) -> None:
        for pfn, flags in ((ZERO_PFN, {"reserved", "zero_page"}), (RESERVED_PFN, {"reserved"})):
            f = Folio(pfn=pfn, order=0, kind=KERNEL, flags=set(flags), owner="kernel")
            f.get("kernel")
            self.phys.folios[pfn] = f

    def emit(self, event: Event) -> None:
        self.trace.emit(event)

    def log(self, text: str, level: str = "err") -> None:
        self.emit(KernelLog(self.trace.step, text, level))

    def panic(self, reason: str) -> None:
        """The host kernel panics: log it, record it and stop executing."""
        self.log(f"Kernel panic - not syncing: {reason}", level="emerg")
        self.emit(Panic(self.trace.step, reason))
        self.panicked = reason
        raise KernelPanic(reason)

    def note_owners(self, pfn: int) -> None:
        """Remember which VMMs' guest memory held ``pfn`` when a failure of it was handled or
        consumed: unmapping and release erase that from the final state (outcomes)."""
        if not self.ext.get("vms"):
            return
        from .outcomes import _owners_now

        self.ext.setdefault("owners_seen", {}).setdefault(pfn, set()).update(
            _owners_now(self, pfn))

    def page_isolated(self, pfn: int, how: str) -> None:
        self.emit(PageIsolated(self.trace.step, pfn, how))

    def check_handed_out(self, folio: Folio, owner: str) -> None:
        """Record a violation if a page the kernel was told is bad is handed out unmarked."""
        for pfn in sorted(self.phys.detected):
            if folio.contains(pfn) and pfn not in self.phys.hwpoison and \
                    "hwpoison" not in folio.flags:
                self.emit(PoisonHandedOut(self.trace.step, pfn, owner))

    def alloc_folio(self, order: int, kind: str, owner: str) -> Folio | None:
        folio = self.phys.new_folio(order, kind, owner)
        if folio is not None:
            self.check_handed_out(folio, owner)
            for pfn in range(folio.pfn, folio.pfn + min(folio.nr_pages, 1 << 9)):
                self.phys.data.pop(pfn, None)
        return folio

    # ------------------------------------------------------------------ processes
    def _new_process(self, name: str, threads: list[str], caps: bool = True,
                     mm: MM | None = None) -> Process:
        pid = self._next_pid
        self._next_pid += 1
        if mm is None:
            mm = MM(id=self._next_mm)
            self._next_mm += 1
            self.mms[mm.id] = mm
        proc = Process(pid=pid, comm=name[:15], mm=mm, caps=caps)
        for i, tname in enumerate(threads):
            t = Thread(tid=pid if i == 0 else self._alloc_tid(), name=tname, proc=proc)
            proc.threads.append(t)
            self.threads_by_tid[t.tid] = t
        return proc

    def _alloc_tid(self) -> int:
        tid = self._next_pid
        self._next_pid += 1
        return tid

    def add_process(self, name: str, threads: list[str], caps: bool = True) -> Process:
        if name in self.processes:
            raise ModelInputError(f"process {name!r} already exists", "proc")
        if not threads or len(set(threads)) != len(threads):
            raise ModelInputError("threads must be a non-empty list of distinct names",
                                  "threads")
        proc = self._new_process(name, threads, caps)
        self.processes[name] = proc
        return proc

    def declared(self, kind: str, name: Any) -> bool:
        """Whether the scenario being run creates ``name`` (a ``proc``, a ``thread`` as
        (process, thread), a ``mapping`` or an ``fd``) in some step: a name that is missing
        at run time although a step creates it vanished at run time (the creating step
        failed, the process died), which is a result, not bad input."""
        return name in self.ext.get("declared", {}).get(kind, ())

    def proc(self, name: str, field_name: str = "proc") -> Process:
        try:
            return self.processes[name]
        except KeyError:
            if self.declared("proc", name):
                raise TargetGone(f"process {name!r} does not exist (the step that creates it "
                                 "did not succeed)", field_name, "ESRCH") from None
            known = ", ".join(self.processes) or "none"
            raise ModelInputError(f"unknown process {name!r} (known: {known})",
                                  field_name) from None

    def thread(self, proc: Process, name: str | None) -> Thread:
        t = proc.thread(name)
        if t is None and name is not None and self.declared("thread", (proc.comm, name)):
            raise TargetGone(f"process {proc.comm!r} has no thread {name!r} (the step that "
                             "creates it did not succeed)", "thread", "ESRCH")
        if t is None:
            raise ModelInputError(
                f"process {proc.comm!r} has no thread {name!r} (threads: "
                f"{', '.join(x.name for x in proc.threads)})", "thread")
        return t

    def processes_in_order(self) -> list[Process]:
        """for_each_process(): creation (pid) order."""
        return sorted(self.processes.values(), key=lambda p: p.pid)

    def process_status(self, name: str) -> dict[str, Any]:
        p = self.proc(name)
        return {"state": p.state, "code": p.exit_code, "signal": p.exit_signal}

    def process_status_or_none(self, name: str) -> dict[str, Any]:
        """process_status(), or state ``never-started`` for a process whose creating step
        failed (fork of a dead parent)."""
        if name not in self.processes:
            return {"state": "never-started", "code": None, "signal": None}
        return self.process_status(name)

    # ------------------------------------------------------------------ signals
    def _signal_event(self, t: Thread, code: int, addr: int | None, lsb: int | None,
                      forced: bool, sender: str, outcome: str, pfn: int | None) -> None:
        self.emit(SignalSent(self.trace.step, t.proc.pid, t.tid, t.comm, t.name, SIGBUS,
                             SI_CODE_NAMES.get(code, str(code)), addr,
                             self.addr_rel_of(t.proc, addr), lsb, forced, sender, outcome,
                             pfn))

    def _queue(self, t: Thread, info: SigInfo, sender: str, pfn: int | None = None) -> None:
        if not t.alive:
            outcome = "dead"
        elif t.pending is not None:
            outcome = "dropped-pending"  # R38: standard signals do not queue
        elif not info.forced and t.proc.sigbus == "ignore" and not t.blocked:
            outcome = "ignored"
        else:
            t.pending = info
            self._pending_threads.add(t)
            outcome = "queued"
        self._signal_event(t, info.si_code, info.addr, info.lsb, info.forced, sender, outcome,
                           pfn)

    def force_sig_mceerr(self, t: Thread, code: int, addr: int, lsb: int, sender: str,
                         pfn: int | None = None) -> None:
        """force_sig_mceerr(): cannot be blocked; a blocked or ignored SIGBUS is reset to the
        default action (R35)."""
        if t.alive and (t.blocked or t.proc.sigbus == "ignore"):
            t.blocked = False
            t.proc.sigbus = "default"
        self._queue(t, SigInfo(SIGBUS, code, addr, lsb, True), sender, pfn)

    def send_sig_mceerr(self, t: Thread, code: int, addr: int, lsb: int, sender: str,
                        pfn: int | None = None) -> None:
        """send_sig_mceerr(): respects the mask; delivered once unblocked (R35)."""
        self._queue(t, SigInfo(SIGBUS, code, addr, lsb, False), sender, pfn)

    def send_sig_user(self, t: Thread, sender: str) -> None:
        """kill(2) of SIGBUS: si_code SI_USER, no address; respects the mask and SIG_IGN."""
        self._queue(t, SigInfo(SIGBUS, SI_USER, None, None, False), sender)

    def force_sig_sigbus(self, t: Thread, sender: str, code: int = SI_KERNEL,
                         pfn: int | None = None, addr: int | None = None) -> None:
        """force_sig(SIGBUS): a plain SIGBUS without MCE payload (kill_me_now, R46), or
        force_sig_fault(SIGBUS, BUS_ADRERR, address) from x86 do_sigbus() when ``addr`` is
        given: si_addr is the faulting address and si_addr_lsb, never set, reads 0 (the
        siginfo is cleared first), as Debian's 6.1 shows in conform case rk-06."""
        if t.alive and (t.blocked or t.proc.sigbus == "ignore"):
            t.blocked = False
            t.proc.sigbus = "default"
        lsb = None if addr is None else 0
        self._queue(t, SigInfo(SIGBUS, code, addr, lsb, True), sender, pfn)

    def signals_queued(self) -> bool:
        """Whether a thread has a SIGBUS queued (``deliver_signals`` has something to look
        at: an action that queued none may still change the host by delivering it)."""
        return bool(self._pending_threads)

    def deliver_signals(self) -> None:
        """Deliver every pending, unblocked SIGBUS on return to user space."""
        if not self._pending_threads:
            return
        for t in sorted(self._pending_threads, key=lambda x: (x.proc.pid, x.tid)):
            proc = t.proc
            info = t.pending
            if info is None or not t.alive:
                self._pending_threads.discard(t)
                continue
            if (t.blocked and not t.signalfd) or not proc.alive:
                continue
            t.pending = None
            self._pending_threads.discard(t)
            fatal = proc.sigbus not in ("handler", "exit")
            self.emit(SignalDelivered(
                self.trace.step, proc.pid, t.tid, t.comm, t.name,
                SI_CODE_NAMES.get(info.si_code, str(info.si_code)),
                self.addr_rel_of(proc, info.addr), info.lsb,
                "killed" if fatal else "handler"))
            if fatal:
                self.kill_process(proc, SIGBUS, "signal")
                continue
            if proc.sigbus == "exit":
                # the handler records the siginfo and calls _exit(code): the process ends
                # by exiting, not by the signal
                self.exit_process(proc, proc.sigbus_exit_code)
                continue
            self.on_sigbus_handled(t, info)
        if any(t.pending is not None and (not t.blocked or t.signalfd) and t.alive
               for t in self._pending_threads):
            self.deliver_signals()  # a handler's reaction queued another signal

    def on_sigbus_handled(self, t: Thread, info: SigInfo) -> None:
        """Hook for the VMM model: a process's SIGBUS handler ran."""
        hook = self.ext.get("on_sigbus")
        if hook is not None:
            hook(self, t, info)

    def kill_process(self, proc: Process, signo: int, why: str) -> None:
        if not proc.alive:
            return
        proc.state = "killed"
        proc.exit_signal = signo
        self.emit(ProcessExit(self.trace.step, proc.pid, proc.comm, None, signo,
                              core=signo in (SIGBUS, 11)))
        self.exit_mm(proc)

    def exit_process(self, proc: Process, code: int) -> None:
        if not proc.alive:
            return
        proc.state = "exited"
        proc.exit_code = code
        self.emit(ProcessExit(self.trace.step, proc.pid, proc.comm, code, None))
        self.exit_mm(proc)

    def exit_mm(self, proc: Process) -> None:
        """do_exit(): threads die, the mm is torn down (removing hwpoison entries, R40), fds
        are closed."""
        for t in proc.threads:
            t.alive = False
            t.pending = None
        hook = self.ext.get("on_exit")
        if hook is not None:
            hook(self, proc)
        mm = proc.mm
        if mm is not None:
            mm.users -= 1
            if mm.users <= 0:
                for vma in list(mm.vmas):
                    self.unmap_vma(vma, vma.start, vma.end)
        for fd in list(proc.fds):
            self.close_fd(proc, fd)

    # ------------------------------------------------------------------ addresses
    def addr_rel_of(self, proc: Process, addr: int | None) -> str | None:
        if addr is None:
            return None
        if proc.mm is not None:
            for v in proc.mm.vmas:
                if v.contains(addr):
                    return f"{v.name}+{addr - v.start:#x}"
        return f"{addr:#x}"

    def addr_rel(self, proc_name: str, addr: int) -> str:
        return self.addr_rel_of(self.proc(proc_name), addr) or f"{addr:#x}"

    def resolve_addr(self, proc_name: str, addr: int | str, field_name: str = "addr") -> int:
        """``"buf+4K"``, ``"buf+0x1000"``, ``"buf"`` or an int -> a user virtual address."""
        proc = self.proc(proc_name)
        return self.resolve_in(proc, addr, field_name)

    def resolve_in(self, proc: Process, addr: int | str, field_name: str = "addr") -> int:
        """resolve_addr() for a Process object (the scenario's address forms)."""
        if isinstance(addr, int):
            return addr
        s = str(addr).strip()
        name, _, off = s.partition("+")
        name = name.strip()
        try:
            offset = parse_size(off.strip(), self.geometry.page_size) if off else 0
        except ValueError as e:
            raise ModelInputError(f"bad offset in address {s!r}: {e}", field_name) from None
        if name.lower().startswith("0x") or name.isdigit():
            return int(name, 0) + offset
        vma = self.region(proc, name)
        if vma is None and self.declared("mapping", name):
            raise TargetGone(f"process {proc.comm!r} has no mapping {name!r} now (its mmap "
                             "failed, or it was unmapped)", field_name, "ENOENT")
        if vma is None:
            known = sorted(self.region_names(proc))
            raise ModelInputError(
                f"process {proc.comm!r} has no mapping named {name!r} (mappings: "
                f"{', '.join(known) or 'none'})", field_name)
        if offset >= vma.end - vma.start:
            raise ModelInputError(
                f"offset {offset:#x} is outside mapping {name!r} of {vma.end - vma.start:#x} "
                "bytes", field_name)
        return vma.start + offset

    def region(self, proc: Process, name: str) -> VMA | None:
        return proc.regions.get(name)

    def region_names(self, proc: Process) -> list[str]:
        return list(proc.regions)

    def walk(self, mm: MM | None, addr: int) -> tuple[PTE, int] | None:
        """The page-table entry mapping user address ``addr`` and the pfn of the page at that
        address inside it (a huge entry's raw page), or None when nothing maps it."""
        if mm is None:
            return None
        vma = mm.find_vma(addr)
        k = vma and mm.entry_key(vma, addr, self.geometry.page_shift)
        if not k:
            return None
        pte = mm.ptes[k[0]]
        return pte, pte.pfn + ((addr - k[0]) >> self.geometry.page_shift)

    def vma_at(self, mm: Any, addr: int) -> VMA | None:
        return mm.find_vma(addr) if isinstance(mm, MM) else None

    # ------------------------------------------------------------------ page tables
    def set_pte(self, vma: VMA, key: int, pte: PTE, folio: Folio | None) -> None:
        vma.mm.ptes[key] = pte
        if folio is not None:
            folio.rmap[(vma.mm.id, key)] = pte.order
            folio.get("map")
            if not vma.shared and (folio.kind == "anon" or "anon" in folio.flags):
                vma.anon_vma = True  # anon_vma_prepare() before the first anonymous page

    def zap_entry(self, mm: MM, key: int, why: str = "zapped") -> None:
        """Remove one entry (present or hwpoison) and drop the folio's map reference."""
        pte = mm.ptes.pop(key, None)
        if pte is None:
            return
        if pte.kind == HWPOISON:
            self.emit(PteChange(self.trace.step, self._pid_of_mm(mm), key,
                                self._rel_mm(mm, key), why, pte.pfn, pte.order))
            return
        folio = self.phys.folio_of(pte.pfn)
        if folio is not None and (mm.id, key) in folio.rmap:
            del folio.rmap[(mm.id, key)]
            if pte.dirty:
                folio.flags.add("dirty")
            folio.put("map")
            self.maybe_free(folio)
        self.mmu_notify(mm, key, 1 << (self.geometry.page_shift + pte.order))

    def _proc_of_mm(self, mm: MM) -> Process | None:
        return next((p for p in self.processes.values() if p.mm is mm), None)

    def _pid_of_mm(self, mm: MM) -> int:
        p = self._proc_of_mm(mm)
        return p.pid if p is not None else 0

    def _rel_mm(self, mm: MM, addr: int) -> str:
        p = self._proc_of_mm(mm)
        return (self.addr_rel_of(p, addr) if p is not None else None) or f"{addr:#x}"

    def mmu_notify(self, mm: MM, start: int, size: int) -> None:
        """MMU notifier invalidate_range (R78): lets KVM zap stage-2 mappings of HVAs."""
        hook = self.ext.get("mmu_notifier")
        if hook is not None:
            hook(self, mm, start, size)

    def folio_mkclean(self, folio: Folio) -> bool:
        """folio_mkclean(): write-protect and clean every PTE; True if any was dirty."""
        dirty = False
        for (mm_id, key) in folio.rmap:
            pte = self.mms[mm_id].ptes.get(key)
            if pte is not None and pte.dirty:
                dirty = True
                pte.dirty = False
                pte.write = False
        return dirty

    def try_to_unmap(self, folio: Folio, hwpoison: bool, pfn: int) -> None:
        """try_to_unmap(TTU_HWPOISON?) (R22 step 6): every mapping becomes a hwpoison entry
        (or is cleared), PTE dirty bits move to the folio."""
        for (mm_id, key), order in sorted(folio.rmap.items()):
            mm = self.mms[mm_id]
            pte = mm.ptes.get(key)
            if pte is None:
                continue
            if pte.dirty:
                folio.flags.add("dirty")
            if hwpoison:
                entry_pfn = pfn if order == 0 else folio.pfn
                mm.ptes[key] = PTE(HWPOISON, entry_pfn, order)
                change = "hwpoison"
            else:
                del mm.ptes[key]
                change = "cleared"
            self.emit(PteChange(self.trace.step, self._pid_of_mm(mm), key,
                                self._rel_mm(mm, key), change, pte.pfn, order))
            folio.put("map")
            self.mmu_notify(mm, key, 1 << (self.geometry.page_shift + order))
        folio.rmap.clear()

    def unmap_vma(self, vma: VMA, start: int, end: int, keep_vma: bool = False) -> None:
        """munmap()/exit: zap every entry in [start, end) including hwpoison entries (R40)."""
        mm = vma.mm
        for key in sorted(k for k in mm.ptes if start <= k < end):
            self.zap_entry(mm, key)
        if keep_vma:
            return
        if start <= vma.start and end >= vma.end:
            mm.vmas.remove(vma)
            of, vma.file = vma.file, None
            if of is not None:
                self._file_put(of, self._proc_of_mm(mm))
            if vma.inode is not None and vma in vma.inode.i_mmap:
                vma.inode.i_mmap.remove(vma)
                self.maybe_release_inode(vma.inode)
            if vma.reserved and vma.huge_order:
                self.hugetlb.unreserve(self.hugetlb.hstate(vma.huge_order), vma.reserved)
                vma.reserved = 0
            for p in self.processes.values():
                for n, v in list(p.regions.items()):
                    if v is vma:
                        del p.regions[n]
        else:
            # partial unmap: shrink from either end (holes are not modelled)
            if start <= vma.start:
                if vma.inode is not None:
                    vma.pgoff += (end - vma.start) >> self.geometry.page_shift
                vma.start = end
            elif end >= vma.end:
                vma.end = start

    # ------------------------------------------------------------------ page cache
    def delete_from_page_cache(self, folio: Folio) -> None:
        mapping = folio.mapping
        if mapping is not None and mapping.pages.get(folio.index) is folio:
            del mapping.pages[folio.index]
            folio.put("pagecache", folio.nr_pages)
            hook = self.ext.get("free_folio")
            if hook is not None and mapping.kind == GMEM:
                hook(self, mapping, folio)
        folio.mapping = None
        self.maybe_free(folio)

    def maybe_free(self, folio: Folio) -> None:
        """The folio's refcount may have reached 0: free it (hugetlb to its pool, R55). A
        HugeTLB folio of a frame a memory_failure() in flight holds (``mf_pinned``: the
        reference get_hwpoison_page() took, dropped when it returns) is not freed yet:
        ``mf_unpin`` frees it then."""
        if folio.refcount > 0 or folio.pfn not in self.phys.folios:
            return
        if folio.kind == HUGETLB and any(lo <= folio.pfn < hi
                                         for lo, hi in self.ext.get("mf_pinned", ())):
            return
        if folio.kind == HUGETLB and "hugetlb" in folio.flags:
            if "hugetlb_freed" not in folio.flags:
                self.hugetlb.free_huge_folio(folio)
            return
        self.phys.drop_folio(folio)

    def truncate_range(self, inode: Inode, start_idx: int, end_idx: int,
                       even_cows: bool) -> None:
        """truncate_inode_pages_range(): unmap and drop cached folios in [start, end).

        Hole punch (``even_cows=False``) leaves existing hwpoison entries alone (R40), except
        on hugetlbfs: hugetlbfs_punch_hole() and hugetlb_vmtruncate() call
        hugetlb_vmdelete_list(), which runs unmap_hugepage_range() over the range in every
        VMA of the file, and __unmap_hugepage_range() clears non-present entries (hwpoison
        and migration entries) as well as present ones, private COW copies included."""
        shift = self.geometry.page_shift
        step = 1 << inode.huge_order
        if inode.kind == "hugetlbfs":
            for vma in list(inode.i_mmap):
                lo = vma.start + ((start_idx - vma.pgoff) << shift)
                hi = vma.start + ((end_idx - vma.pgoff) << shift) if end_idx < 1 << 60 \
                    else vma.end
                lo, hi = max(lo, vma.start), min(hi, vma.end)
                for key in sorted(k for k in vma.mm.ptes if lo <= k < hi):
                    self.zap_entry(vma.mm, key, "truncated")
        for idx in sorted(i for i in inode.pages if start_idx <= i and i + step <= end_idx):
            folio = inode.pages[idx]
            for vma in list(inode.i_mmap):
                for key in self._entries_of(vma, inode, idx, folio.nr_pages, shift):
                    pte = vma.mm.ptes.get(key)
                    if pte is not None and (pte.kind != HWPOISON or even_cows):
                        self.zap_entry(vma.mm, key, "truncated")
            folio.rmap.clear()
            self.delete_from_page_cache(folio)

    @staticmethod
    def _entries_of(vma: VMA, inode: Inode, idx: int, nr_pages: int, shift: int) -> list[int]:
        """Keys of the entries through which ``vma`` may map the folio at file index ``idx``
        (unmap_mapping_range over the folio): one huge entry in a HugeTLB VMA, one PTE per
        page when a huge folio is mapped by PTEs (a guest_memfd's host mapping of HugeTLB
        memory is 4K PTEs, so every page's entry must go, not only the first)."""
        if inode.huge_order and not vma.huge_order and inode.kind == GMEM:
            out = []
            for i in range(nr_pages):
                a = vma.addr_of(idx + i, shift)
                if a is not None:
                    out.append(a)
            return out
        a = vma.addr_of(idx, shift)
        if a is None:
            return []
        return [a & ~((1 << (shift + inode.huge_order)) - 1)]

    def maybe_release_inode(self, inode: Inode) -> None:
        """iput_final()/evict(): the last user is gone, truncate everything (R55, R72)."""
        if inode.in_use or inode.extra.get("released"):
            return
        inode.extra["released"] = True
        left = inode.extra.pop("resv_idx", None)
        if left and inode.huge_order:  # the file's unused reservations go with it
            self.hugetlb.unreserve(self.hugetlb.hstate(inode.huge_order), len(left))
        hook = self.ext.get("inode_release")
        if hook is not None and inode.kind == GMEM:
            hook(self, inode)
        self.truncate_range(inode, 0, 1 << 62, even_cows=True)

    def close_fd(self, proc: Process, fd: str) -> None:
        of = proc.fds.pop(fd, None)
        if of is None:
            return
        self.ext.setdefault("closed_fds", set()).add((proc.pid, fd))
        of.inode.open_files -= 1
        self._file_put(of, proc)
        self.maybe_release_inode(of.inode)

    def _file_put(self, of: OpenFile, proc: Process | None) -> None:
        """fput(): an fd or a mapping (vma->vm_file) let go of ``of``; the file's ->release
        (kvm_gmem_release for guest_memfd, R72) runs when no fd and no mapping holds it."""
        if of.inode.kind != GMEM:
            return
        for p in self.processes.values():
            if any(o is of for o in p.fds.values()):
                return
            if p.mm is not None and any(v.file is of for v in p.mm.vmas):
                return
        hook = self.ext.get("file_release")
        if hook is not None:
            hook(self, proc, of)

    def new_inode(self, kind: str, name: str, size: int = 0, huge_order: int = 0) -> Inode:
        inode = Inode(ino=self._next_ino, kind=kind, name=name, size=size,
                      huge_order=huge_order)
        self._next_ino += 1
        self.inodes.append(inode)
        return inode

    def open_inode(self, proc: Process, inode: Inode, fd: str) -> OpenFile:
        of = OpenFile(inode, wb_err_seen=inode.wb_err)
        if fd in proc.fds:
            self.close_fd(proc, fd)
        proc.fds[fd] = of
        inode.open_files += 1
        return of

    def fd(self, proc: Process, name: str) -> OpenFile:
        of = proc.fds.get(name)
        if of is None and (proc.pid, name) in self.ext.get("closed_fds", ()):
            raise TargetGone(f"fd {name!r} of {proc.comm!r} was closed", "fd", "EBADF")
        if of is None and self.declared("fd", name):
            raise TargetGone(f"{proc.comm!r} has no fd {name!r} (the step that opens it did "
                             "not succeed, or it was closed)", "fd", "EBADF")
        if of is None:
            raise ModelInputError(
                f"process {proc.comm!r} has no fd named {name!r} (fds: "
                f"{', '.join(proc.fds) or 'none'})", "fd")
        return of

    # ------------------------------------------------------------------ THP
    def split_thp(self, folio: Folio) -> Folio | None:
        """split_huge_page() (R20): the THP becomes order-0 folios; PMD maps become PTEs.
        Returns the order-0 folio holding the poisoned page, or None if the split fails
        (extra pins: a GUP reference)."""
        if folio.refs["gup"] or folio.refs["kernel"]:
            return None
        poisoned = [p for p in range(folio.pfn, folio.pfn + folio.nr_pages)
                    if p in self.phys.hwpoison]
        mf_refs = folio.refs["mf"]
        del self.phys.folios[folio.pfn]
        pieces: dict[int, Folio] = {}
        for i in range(folio.nr_pages):
            f = Folio(pfn=folio.pfn + i, order=0, kind=folio.kind,
                      flags=set(folio.flags) - {"head", "has_hwpoisoned", "thp"},
                      mapping=folio.mapping, index=folio.index + i, owner=folio.owner)
            pieces[f.pfn] = f
            self.phys.folios[f.pfn] = f
        for mm_id, key in folio.rmap:
            mm = self.mms[mm_id]
            pmd = mm.ptes.pop(key)
            for i in range(folio.nr_pages):
                a = key + (i << self.geometry.page_shift)
                self.set_pte(self.vma_for(mm, a), a,
                             PTE("present", folio.pfn + i, 0, pmd.dirty, pmd.write),
                             pieces[folio.pfn + i])
        target = pieces[poisoned[0]] if poisoned else pieces[folio.pfn]
        if mf_refs:
            target.get("mf", mf_refs)
        for f in pieces.values():
            self.maybe_free(f)
        return target

    def vma_for(self, mm: MM, addr: int) -> VMA:
        v = mm.find_vma(addr)
        assert v is not None
        return v

    # ------------------------------------------------------------------ guest_memfd hook
    def gmem_error_folio(self, folio: Folio) -> int:
        """->error_remove_folio of a guest_memfd mapping: the policy's error_folio hook
        (mainline: kvm_gmem_error_folio zaps stage 2 and returns MF_DELAYED, R64)."""
        hook = self.ext.get("gmem_error_folio")
        if hook is None:
            return 2  # MF_DELAYED
        return int(hook(self, folio))

    # ------------------------------------------------------------------ observations
    def meminfo(self) -> dict[str, int]:
        """/proc/meminfo fields (kB) plus per-size HugeTLB sysfs counters."""
        h2 = self.hugetlb.hstate(self.geometry.pmd_order)
        page_kb = self.geometry.page_size // 1024
        anon_huge = shmem = 0
        for f in self.phys.folios.values():
            if f.kind == "anon" and f.order and f.rmap:
                anon_huge += f.nr_pages * page_kb
            if f.mapping is not None and f.mapping.kind == "shmem":
                shmem += f.nr_pages * page_kb
        out = {
            "HardwareCorrupted": self.mf.num_poisoned_pages * page_kb,
            "HugePages_Total": h2.nr_huge_pages,
            "HugePages_Free": h2.free_huge_pages,
            "HugePages_Rsvd": h2.resv_huge_pages,
            "HugePages_Surp": h2.surplus_huge_pages,
            "Hugepagesize": (1 << (self.geometry.page_shift + h2.order)) // 1024,
            "AnonHugePages": anon_huge,
            "Shmem": shmem,
        }
        for h in self.hugetlb.hstates.values():
            out[f"nr_hugepages_{h.name}"] = h.nr_huge_pages
            out[f"free_hugepages_{h.name}"] = h.free_huge_pages
            out[f"resv_hugepages_{h.name}"] = h.resv_huge_pages
            out[f"surplus_hugepages_{h.name}"] = h.surplus_huge_pages
        return out

    def mf_stats(self) -> dict[str, int]:
        """/sys/devices/system/node/node0/memory_failure/* (DOC-11)."""
        return dict(self.mf.stats)

    def outcomes(self) -> dict[str, Any]:
        from .outcomes import compute_outcomes

        return compute_outcomes(self)
