"""The trace: every visible effect of the model as a typed event record.

Drivers (runner, comparison, checker, fleet) read only this and the final state. Each event
records the step (the index of the action during which it happened) and renders to one JSON
object (schema ``memfail.trace/1``, see docs/trace-format.md) and, where the kernel prints
something, to the kernel's own log line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

TRACE_SCHEMA = "memfail.trace/1"

SIGBUS = 7
SIGKILL = 9
SI_KERNEL = 0x80
BUS_MCEERR_AR = 4
BUS_MCEERR_AO = 5
SI_USER = 0
BUS_ADRALN, BUS_ADRERR, BUS_OBJERR = 1, 2, 3
# include/uapi/asm-generic/siginfo.h: every si_code a SIGBUS of the model can carry, so the
# trace never shows a bare number
SI_CODE_NAMES = {BUS_MCEERR_AR: "BUS_MCEERR_AR", BUS_MCEERR_AO: "BUS_MCEERR_AO",
                 SI_KERNEL: "SI_KERNEL", SI_USER: "SI_USER", BUS_ADRALN: "BUS_ADRALN",
                 BUS_ADRERR: "BUS_ADRERR", BUS_OBJERR: "BUS_OBJERR"}


@dataclass(frozen=True)
class Event:
    """Base of every trace event; ``step`` is the index of the action it happened in."""

    kind: ClassVar[str] = "event"
    step: int

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {"event": self.kind, **d}


@dataclass(frozen=True)
class ActionDone(Event):
    """One action finished: its return value and errno name (``None`` when it succeeded)."""

    kind: ClassVar[str] = "action"
    action: str
    ret: Any
    errno: str | None = None
    detail: str = ""


@dataclass(frozen=True)
class KernelLog(Event):
    """A line the kernel prints to dmesg (exact format of the kernel's pr_err/pr_info)."""

    kind: ClassVar[str] = "log"
    text: str
    level: str = "err"


@dataclass(frozen=True)
class MemoryFailureEvent(Event):
    """The memory_failure_event tracepoint emitted by action_result() (R6)."""

    kind: ClassVar[str] = "memory_failure_event"
    pfn: int
    page_type: str
    result: str
    group: str = "ras"


@dataclass(frozen=True)
class MemoryFailureCall(Event):
    """One memory_failure(pfn, flags) call and its return value (R7)."""

    kind: ClassVar[str] = "memory_failure"
    pfn: int
    flags: tuple[str, ...]
    ret: int
    ret_name: str
    via: str


@dataclass(frozen=True)
class SignalSent(Event):
    """A signal generated for a thread (R35, R36, R38): what, to whom, and what became of it.

    ``outcome`` is ``queued``, ``dropped-pending`` (a SIGBUS was already pending, R38),
    ``ignored`` (SIG_IGN and not forced) or ``dead`` (the target has exited).
    ``addr_rel`` is si_addr relative to the mapping it falls in (``"ram+0x1000"``).
    ``si_code`` is always a name, never a number: ``BUS_MCEERR_AR``, ``BUS_MCEERR_AO``,
    ``SI_KERNEL`` (a plain SIGBUS from kill_me_now), ``SI_USER`` (``kill``), ``BUS_ADRERR``
    (an access past the end of a file), ``BUS_ADRALN``, ``BUS_OBJERR``.
    """

    kind: ClassVar[str] = "signal"
    pid: int
    tid: int
    comm: str
    thread: str
    signo: int
    si_code: str
    addr: int | None
    addr_rel: str | None
    lsb: int | None
    forced: bool
    sender: str
    outcome: str
    pfn: int | None = None


@dataclass(frozen=True)
class SignalDelivered(Event):
    """A pending signal reached user space: handled, or fatal (default action)."""

    kind: ClassVar[str] = "signal_delivered"
    pid: int
    tid: int
    comm: str
    thread: str
    si_code: str
    addr_rel: str | None
    lsb: int | None
    effect: str  # "handler" or "killed"


@dataclass(frozen=True)
class PteChange(Event):
    """A user page-table entry changed kind: hwpoison entry installed, zapped, cleared."""

    kind: ClassVar[str] = "pte"
    pid: int
    addr: int
    addr_rel: str
    change: str  # "hwpoison", "cleared", "zapped"
    pfn: int
    level: int


@dataclass(frozen=True)
class HugetlbPool(Event):
    """HugeTLB pool counters of one hstate after they changed."""

    kind: ClassVar[str] = "hugetlb_pool"
    size: str
    total: int
    free: int
    resv: int
    surplus: int
    why: str


@dataclass(frozen=True)
class PageIsolated(Event):
    """A raw page left the allocator for good (take_page_off_buddy, MAGIC_HWPOISON, R30)."""

    kind: ClassVar[str] = "page_isolated"
    pfn: int
    how: str


@dataclass(frozen=True)
class PoisonConsumed(Event):
    """Poisoned memory was consumed (read by a CPU): by whom, in which mode."""

    kind: ClassVar[str] = "poison_consumed"
    pfn: int
    by: str
    mode: str  # "user", "guest", "kernel-copy", "kernel"
    pid: int | None = None
    vm: str | None = None


@dataclass(frozen=True)
class PoisonHandedOut(Event):
    """A page holding an uncorrectable error was given to a new user (a safety violation)."""

    kind: ClassVar[str] = "poison_handed_out"
    pfn: int
    to: str


@dataclass(frozen=True)
class ProcessExit(Event):
    """A process ended: exit code, or the signal that killed it."""

    kind: ClassVar[str] = "exit"
    pid: int
    comm: str
    code: int | None
    signal: int | None
    core: bool = False


@dataclass(frozen=True)
class Panic(Event):
    """The host kernel panicked; nothing runs after this."""

    kind: ClassVar[str] = "panic"
    reason: str


@dataclass(frozen=True)
class Observation(Event):
    """The value returned by an observation action (pagemap, kpageflags, meminfo, ...)."""

    kind: ClassVar[str] = "observe"
    what: str
    value: Any


@dataclass(frozen=True)
class Stage2Zap(Event):
    """KVM removed stage-2 (EPT/NPT) mappings for a GFN range of one VM (R64, R71, R72, R78)."""

    kind: ClassVar[str] = "stage2_zap"
    vm: str
    gfn_start: int
    gfn_end: int
    roots: str
    why: str


@dataclass(frozen=True)
class KvmExit(Event):
    """KVM_RUN returned to the VMM (R68, R77)."""

    kind: ClassVar[str] = "kvm_exit"
    vm: str
    vcpu: int
    ret: int
    errno: str | None
    exit_reason: str
    gpa: int | None = None
    flags: int = 0


@dataclass(frozen=True)
class VmState(Event):
    """The VM's run state changed: running, paused (internal error), killed, reset."""

    kind: ClassVar[str] = "vm_state"
    vm: str
    state: str
    why: str


@dataclass(frozen=True)
class MceInjected(Event):
    """The VMM injected a machine check into the guest (Q4, Q5)."""

    kind: ClassVar[str] = "mce_injected"
    vm: str
    gpa: int
    code: str
    lsb: int = 12


@dataclass(frozen=True)
class MachineCheck(Event):
    """One machine check taken by a CPU (M1, kernel/mce.py): the severity.c context, grade and
    message, and whether it was broadcast (every CPU rendezvous) or local."""

    kind: ClassVar[str] = "machine_check"
    cpu: int
    by: str
    pfn: int
    context: str
    severity: str
    message: str
    broadcast: bool


@dataclass(frozen=True)
class HostStall(Event):
    """Time the host's CPUs spent in machine-check handling or its task work (M9):
    ``cpus`` CPUs held for ``us`` microseconds of wall-clock time."""

    kind: ClassVar[str] = "host_stall"
    cpus: int
    us: int
    why: str


@dataclass(frozen=True)
class GuestEvent(Event):
    """Something the guest OS did: offline a page, panic, kill a guest process."""

    kind: ClassVar[str] = "guest"
    vm: str
    what: str
    gpa: int | None = None


@dataclass(frozen=True)
class PolicyEvent(Event):
    """A guest_memfd memory-failure policy hook acted (recorded, deferred, marked, ...)."""

    kind: ClassVar[str] = "policy"
    policy: str
    hook: str
    what: str
    pfn: int | None = None


@dataclass
class Trace:
    """The ordered list of events; ``step`` is set by the dispatcher before each action."""

    events: list[Event] = field(default_factory=list)
    step: int = 0

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[Event], step: int | None = None) -> list[Any]:
        """The events of ``kind`` (subclasses too), in order, of ``step`` if given.

        Without a step, the answer per kind is kept and extended by the events appended
        since (the outcomes ask for a few kinds many times over one trace); a new
        ``events`` list (assigned, as the checker does after each step) starts afresh."""
        events = self.events
        if step is not None:
            return [e for e in events if isinstance(e, kind) and e.step == step]
        memo: dict[type, tuple[list[Event], int, list[Any]]] | None = \
            self.__dict__.get("_of")
        if memo is None:
            memo = self.__dict__["_of"] = {}
        got = memo.get(kind)
        if got is not None and got[0] is events and got[1] <= len(events):
            _, n, out = got
            if n < len(events):
                out.extend([e for e in events[n:] if isinstance(e, kind)])
        else:
            out = [e for e in events if isinstance(e, kind)]
        memo[kind] = (events, len(events), out)
        return list(out)

    def to_dicts(self) -> list[dict[str, Any]]:
        return [e.to_dict() for e in self.events]
