"""Processes, threads and SIGBUS delivery.

PR_MCE_KILL flags are per thread and inherited on fork/clone (R10); signal dispositions are per
process; each thread has one pending slot for SIGBUS, a standard signal that does not queue
(R38). Forced AR signals unblock and reset an ignored or blocked SIGBUS to its default (R35).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .fs import OpenFile
    from .mm import MM, VMA


@dataclass
class SigInfo:
    """The siginfo of a pending SIGBUS (R36)."""

    signo: int
    si_code: int
    addr: int | None
    lsb: int | None
    forced: bool


@dataclass(eq=False)
class Thread:
    """A task. ``mce_process``/``mce_early`` are PF_MCE_PROCESS/PF_MCE_EARLY (R10)."""

    tid: int
    name: str
    proc: Process
    mce_process: bool = False
    mce_early: bool = False
    blocked: bool = False
    # SIGBUS is blocked but read synchronously through a signalfd (QEMU's main loop,
    # util/main-loop.c qemu_signal_init): a queued, unforced SIGBUS still reaches the handler
    signalfd: bool = False
    pending: SigInfo | None = None
    alive: bool = True
    # x86 per-task machine-check bookkeeping (R44)
    mce_count: int = 0
    mce_addr: int | None = None
    mce_ripv: bool = True

    @property
    def comm(self) -> str:
        return self.proc.comm

    def policy(self) -> int:
        """PR_MCE_KILL_GET: 0 late, 1 early, 2 default."""
        if not self.mce_process:
            return 2
        return 1 if self.mce_early else 0


@dataclass(eq=False)
class Process:
    """A thread group with one mm, its fds and its SIGBUS disposition."""

    pid: int
    comm: str
    mm: MM | None
    threads: list[Thread] = field(default_factory=list)
    sigbus: str = "default"  # handler | exit | default | ignore
    sigbus_exit_code: int = 1  # the code an ``exit`` handler passes to _exit()
    fds: dict[str, OpenFile] = field(default_factory=dict)
    caps: bool = True
    state: str = "running"  # running | exited | killed
    exit_code: int | None = None
    exit_signal: int | None = None
    role: str = "process"  # process | vmm (set by the VMM model)
    regions: dict[str, VMA] = field(default_factory=dict)  # scenario names of mappings

    @property
    def alive(self) -> bool:
        return self.state == "running"

    @property
    def leader(self) -> Thread:
        return self.threads[0]

    def thread(self, name: str | None) -> Thread | None:
        if name is None:
            return self.threads[0] if self.threads else None
        for t in self.threads:
            if t.name == name:
                return t
        return None

    def live_threads(self) -> list[Thread]:
        return [t for t in self.threads if t.alive]
