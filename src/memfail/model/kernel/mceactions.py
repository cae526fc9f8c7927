"""Actions of the machine-check model (kernel/mce.py, docs/mce.md): ``mce_config``,
``machine_check`` and ``task_work``. Handlers live in ``mce.py``."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ..actions import Action, Size, register_actions


class MceConfig(Action):
    """Set the host's machine-check configuration (M2, M3, M9): CPU ``vendor`` (intel: LMCE
    only if ``lmce``; amd: always local, MCA recovery if ``succor``), online ``cpus``,
    ``monarch_timeout_us`` (mca_cfg.monarch_timeout, 0 disables the rendezvous),
    ``holdout_us`` (a CPU slow to join a broadcast, e.g. in SMM), and the cost figures."""

    key: ClassVar[str] = "mce_config"
    vendor: Literal["intel", "amd"] = "intel"
    lmce: bool = False
    succor: bool = True
    cpus: int = Field(default=64, ge=1, le=8192)
    monarch_timeout_us: int = Field(default=1_000_000, ge=0)
    holdout_us: int = Field(default=0, ge=0)
    entry_us: int = Field(default=5, ge=0)
    scan_us_per_cpu: int = Field(default=2, ge=0)
    memory_failure_us: int = Field(default=50, ge=0)
    stall_bound_us: int = Field(default=1_000_000, ge=1)


class MachineCheckAction(Action):
    """A CPU consumes poison now, at ``gpa`` of ``vm`` from ``vcpu`` (guest mode, R45), or at
    ``addr`` of ``proc`` by ``thread`` in ``context`` user, kernel-recov (a machine-check-safe
    fixup; ``copyin`` for a copy from user) or kernel (no fixup: the host panics). The task
    work is NOT run: it waits for a ``task_work`` step (or the vCPU's next ``guest_access``,
    the thread's next load of poison), so several CPUs can consume the same poison in that
    window (M7, M8). A guest-mode or user-mode machine check first runs the thread's queued
    work: to be in guest or user mode again the thread went through KVM's enter-guest work
    or the exit to user mode, which run it (M8); only kernel-mode consumption
    (``kernel-recov`` with ``copyin``) stacks up queue_task_work()'s count (M7).
    ``mcip``: the CPU is still in the handler of an earlier machine check (M4).
    ``ripv``: MCG_STATUS.RIPV."""

    key: ClassVar[str] = "machine_check"
    vm: str | None = None
    vcpu: int = 0
    gpa: Size | None = None
    proc: str | None = None
    thread: str = "main"
    addr: str | int | None = None
    context: Literal["user", "kernel-recov", "kernel"] = "user"
    copyin: bool = False
    ripv: bool = True
    pcc: bool = False
    mcip: bool = False


class TaskWork(Action):
    """The queued machine-check task work of a thread runs (M8): the vCPU ``vcpu`` of ``vm``
    is about to enter the guest again, or ``proc``'s ``thread`` returns to user mode."""

    key: ClassVar[str] = "task_work"
    vm: str | None = None
    vcpu: int = 0
    proc: str | None = None
    thread: str = "main"


register_actions(MceConfig, MachineCheckAction, TaskWork)
