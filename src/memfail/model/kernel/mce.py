"""x86 machine-check delivery at the level that decides whether the host survives.

Models arch/x86/kernel/cpu/mce/core.c (do_machine_check, mce_start / mce_end and
mce_timed_out, mce_panic, queue_task_work, kill_me_now / kill_me_maybe / kill_me_never),
arch/x86/kernel/cpu/mce/severity.c (mce_severity_intel, mce_severity_amd, error_context) and
KVM's guest-mode machine-check exits (vmx/vmx.c handle_exception_irqoff and
EXIT_REASON_MCE_DURING_VMENTRY in vmx_vcpu_run, svm/svm.c svm_handle_mce, vmx/tdx.c: all call
kvm_machine_check(), which runs do_machine_check() with a fake user-mode frame, R45).

The reference numbers its rules R44-R47 for this glue; the finer pieces modelled here carry the
new prefix ``M`` (docs/mce.md lists them, with what was read in the source and what is
derived):

* M1  do_machine_check(): grade, rendezvous or not, panic or queue task work.
* M2  broadcast vs local: Intel reads MCG_STATUS.LMCES (LMCE needs mca_cfg.lmce_disabled clear
      and firmware opt-in: intel.c lmce_supported() checks MCG_LMCE_P and
      FEAT_CTL_LMCE_ENABLED); AMD machine checks are always local ("MCEs are always local on
      AMD"). That only SRAR errors are signalled locally is the CPU's choice (Intel SDM): the
      kernel reads LMCES and has no code of its own for it (derived).
* M3  mce_start / mce_end: every online CPU calls in; a CPU that does not arrive within
      mca_cfg.monarch_timeout (USEC_PER_SEC on Intel family 6 model >= 0xe) makes
      mce_timed_out() call mce_panic("Timeout: Not all CPUs entered broadcast exception
      handler").
* M4  MCIP: a machine check on a CPU whose MCG_STATUS.MCIP is still set shuts the processor
      down (Intel SDM; derived: no kernel code runs). The kernel's side, read in core.c and
      severity.c: do_machine_check() clears MCG_STATUS (mce_wrmsrl(MSR_IA32_MCG_STATUS, 0))
      only at its end, so the window is the whole handler; a handler entered with MCIP clear
      grades "MCIP not set in MCA handler" (PANIC). KVM applies the same rule to a guest:
      kvm_vcpu_ioctl_x86_set_mce() turns an uncorrected vMCE injected while the guest's
      MCG_STATUS.MCIP is set (or CR4.MCE clear) into KVM_REQ_TRIPLE_FAULT (x86.c, read).
* M5  mce_severity_intel: the contexts IN_USER (guest mode counts as user: KVM fakes cs = 3),
      IN_KERNEL_RECOV (an exception-table fixup that is machine-check safe, or a copy from
      user), IN_KERNEL (no fixup: "Data load in unrecoverable area of kernel", PANIC);
      PCC set: "Processor context corrupt"; kernel without RIPV: "In kernel and no restart IP".
* M6  mce_severity_amd: PCC → panic; a deferred error is no machine check at all; without
      SUCCOR every UC error panics; IN_KERNEL → "Uncorrected unrecoverable error in kernel
      context"; otherwise action required.
* M7  queue_task_work (R44): per-thread mce_count; more than ten before the task work runs
      panics "Too many consecutive machine checks while accessing user data"; a second one on
      a different page panics "Consecutive machine checks to different user pages"; one
      task work item.
* M8  the task work runs on the way back to user mode, or before a vCPU enters the guest
      again (R45): kill_me_maybe / kill_me_now / kill_me_never (R46).
* M9  the host's cost of each machine check (a stall of one CPU, or of every CPU during a
      broadcast rendezvous) and of the memory_failure() work (``CostModel``; every number is
      an assumption, docs/mce.md).
* M10 "can a guest take the host down": a panic, a shutdown, or host stalls beyond a bound.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import KernelPanic, ModelInputError
from ..handlers import ActionResult, handles
from ..trace import HostStall, MachineCheck, Panic, PoisonConsumed
from .mceactions import MachineCheckAction, MceConfig, TaskWork

if TYPE_CHECKING:
    from ..state import HostState as Host
    from .task import Thread

# severity.c contexts and grades (enum context, MCE_*_SEVERITY)
IN_KERNEL = "IN_KERNEL"
IN_USER = "IN_USER"
IN_KERNEL_RECOV = "IN_KERNEL_RECOV"
SEV_PANIC = "PANIC"
SEV_AR = "AR"
SEV_DEFERRED = "DEFERRED"


# --------------------------------------------------------------------------- trace events


# --------------------------------------------------------------------------- configuration


@dataclass
class CostModel:
    """The host's cost of machine-check handling (M9). Every figure is an ASSUMPTION (no
    public measurement was found; docs/mce.md): override them with ``mce_config``."""

    entry_us: int = 5        # #MC entry, mce_gather_info, bank scan on the CPU that took it
    scan_us_per_cpu: int = 2  # broadcast: each CPU scans its banks in call-in order (mce_start)
    memory_failure_us: int = 50  # memory_failure() in the task work (unmap, signal, log)
    stall_bound_us: int = 1_000_000  # M10: host stalls summing to more than this = host down

    def rendezvous_us(self, cpus: int, holdout_us: int = 0) -> int:
        """Wall time of one broadcast machine check: entry, the wait for the last CPU to
        call in, then the serialized bank scans of mce_start/mce_end (M3)."""
        return self.entry_us + holdout_us + cpus * self.scan_us_per_cpu


@dataclass
class MceState:
    """mca_cfg and the per-CPU / per-thread state the model needs."""

    vendor: str = "intel"
    lmce: bool = False        # Intel: LMCE enabled (firmware opt-in and no mce=no_lmce)
    succor: bool = True       # AMD: MCA recovery (X86_FEATURE_SUCCOR)
    cpus: int = 64            # online CPUs that join a broadcast rendezvous
    monarch_timeout_us: int = 1_000_000  # mca_cfg.monarch_timeout (USEC_PER_SEC on Intel)
    holdout_us: int = 0       # a CPU that takes this long to call in (SMM, firmware)
    cost: CostModel = field(default_factory=CostModel)
    mcip: set[int] = field(default_factory=set)  # CPUs whose MCG_STATUS.MCIP is set
    # tid -> (task work function, pfn, ripv): the one queued callback (M7)
    task_work: dict[int, tuple[str, int, bool]] = field(default_factory=dict)
    round_cpus: set[int] | None = None  # CPUs taking machine checks in one broadcast (M3)
    stall_us: int = 0  # whole-host stall time so far (M9, M10)

    def __canonical__(self) -> dict[str, object]:
        """The state ``memfail check`` fingerprints: every field, but the stall sum only as
        whether it passed the bound. The sum grows with every consumption, so keeping it
        would make every cycle that consumes poison a new state and no search complete;
        ``host-survives`` still sees the sum along each explored path (docs/check.md)."""
        d = dict(self.__dict__)
        d["stall_us"] = self.stall_us > self.cost.stall_bound_us
        return d


def has_mce_state(host: Host) -> bool:
    """Whether the host has its machine-check state yet (``mce_state`` makes it on first use,
    so a handler that reaches it first has changed the host: ``ActionResult.unchanged``)."""
    return "mce" in host.ext


def mce_state(host: Host) -> MceState:
    st = host.ext.get("mce")
    if st is None:
        st = host.ext["mce"] = MceState()
    assert isinstance(st, MceState)
    return st


def cpu_of(host: Host, t: Thread) -> int:
    """The CPU a thread runs on: vCPU n of a VM on CPU n (pinned), other threads on CPU 0
    (an assumption of the model; only the identity of the CPU matters, M4)."""
    for vm in host.ext.get("vms", {}).values():
        i = vm.vcpu_index(t)
        if i is not None:
            return int(i)
    return 0


def stall(host: Host, cpus: int, us: int, why: str) -> None:
    """Record host CPU time lost to machine-check handling (M9)."""
    if us > 0:
        host.emit(HostStall(host.trace.step, cpus, us, why))
        st = mce_state(host)
        if cpus >= st.cpus and cpus > 1:
            st.stall_us += us


# panics of the machine-check delivery itself (M3, M4, M7): what a guest could aim for
MCE_DELIVERY_PANICS = (
    "Timeout: Not all CPUs entered broadcast exception handler",
    "Too many consecutive machine checks while accessing user data",
    "Consecutive machine checks to different user pages",
)


def host_down_reason(host: Host) -> str | None:
    """M10: why the host is down because of machine-check delivery (a delivery panic, a
    processor shutdown, or whole-host stalls beyond the bound), or None."""
    reason = host.panicked
    if reason is not None and (reason in MCE_DELIVERY_PANICS or "MCIP" in reason):
        return f"host down: {reason}"
    st = host.ext.get("mce")
    if isinstance(st, MceState) and st.stall_us > st.cost.stall_bound_us:
        return (f"host stalled {st.stall_us} us in broadcast machine checks "
                f"(bound {st.cost.stall_bound_us} us)")
    return None


# --------------------------------------------------------------------------- severity


def mce_severity(host: Host, context: str, ripv: bool = True, pcc: bool = False,
                 deferred: bool = False) -> tuple[str, str]:
    """mce_severity(): the grade and message of a data-load error (M5 Intel, M6 AMD)."""
    st = mce_state(host)
    if st.vendor == "amd":
        if pcc:
            return SEV_PANIC, "Processor Context Corrupt"
        if deferred:
            return SEV_DEFERRED, "Deferred error"
        if not st.succor:
            return SEV_PANIC, "Uncorrected error without MCA Recovery"
        if context == IN_KERNEL:
            return SEV_PANIC, "Uncorrected unrecoverable error in kernel context"
        return SEV_AR, "Action required"
    if pcc:
        return SEV_PANIC, "Processor context corrupt"
    if context != IN_USER and not ripv:
        return SEV_PANIC, "In kernel and no restart IP"
    if deferred:
        return SEV_DEFERRED, "Uncorrected no action required"
    if context == IN_USER:
        return SEV_AR, "Action required: data load error in a user process"
    if context == IN_KERNEL_RECOV:
        return SEV_AR, "Action required: data load in error recoverable area of kernel"
    return SEV_PANIC, "Data load in unrecoverable area of kernel"


# --------------------------------------------------------------------------- do_machine_check


def mce_panic(host: Host, reason: str, exp: str | None) -> None:
    """mce_panic(): print the grading message, then panic (M1)."""
    if exp:
        host.log(f"mce: [Hardware Error]: Machine check: {exp}", level="emerg")
    host.panic(reason)


def processor_shutdown(host: Host, cpu: int) -> None:
    """A machine check on a CPU with MCIP set: the processor shuts down (M4, derived from the
    Intel SDM); the platform resets. Recorded as a host panic: the host is gone."""
    why = f"CPU {cpu}: machine check while MCG_STATUS.MCIP set: processor shutdown"
    host.log(f"mce: [Hardware Error]: {why}", level="emerg")
    host.emit(Panic(host.trace.step, why))
    host.panicked = why
    raise KernelPanic(why)


def do_machine_check(host: Host, t: Thread, pfn: int, context: str, *, ripv: bool = True,
                     pcc: bool = False, copyin: bool = False, cpu: int | None = None,
                     by: str | None = None, mcip: bool = False) -> str:
    """do_machine_check() (M1-M7): grade the error, rendezvous all CPUs unless it is local,
    panic when the grade says so, otherwise queue task work on the interrupted thread.
    Returns the severity."""
    st = mce_state(host)
    cpu = cpu_of(host, t) if cpu is None else cpu
    if mcip or cpu in st.mcip:
        processor_shutdown(host, cpu)
    sev, msg = mce_severity(host, context, ripv, pcc)
    lmce = st.vendor == "amd" or st.lmce
    host.emit(MachineCheck(host.trace.step, cpu, by or f"{t.proc.comm}:{t.name}", pfn,
                           context, sev, msg, not lmce))
    cost = st.cost
    if lmce:
        stall(host, 1, cost.entry_us, "local machine check")
        if sev == SEV_PANIC:
            mce_panic(host, "Fatal local machine check", msg)
    else:
        joined = st.round_cpus is not None and len(st.round_cpus) > 0
        if st.round_cpus is not None:
            st.round_cpus.add(cpu)
        if not joined:
            # mce_start(): wait for every online CPU to call in (M3)
            timeout = st.monarch_timeout_us
            if timeout and st.holdout_us >= timeout:
                stall(host, st.cpus, cost.entry_us + timeout,
                      "broadcast rendezvous (timed out)")
                host.log("mce: CPUs not responding to MCE broadcast (may include false "
                         "positives): 1", level="emerg")
                mce_panic(host, "Timeout: Not all CPUs entered broadcast exception handler",
                          None)
            stall(host, st.cpus, cost.rendezvous_us(st.cpus, st.holdout_us),
                  "broadcast rendezvous")
        if sev == SEV_PANIC:
            mce_panic(host, "Fatal machine check", msg)  # mce_reign()
    if sev != SEV_AR and ripv:
        return sev
    if context == IN_USER:
        queue_task_work(host, t, pfn, "kill_me_maybe", ripv, msg)
    elif copyin:
        queue_task_work(host, t, pfn, "kill_me_never", ripv, msg)
    return sev


def queue_task_work(host: Host, t: Thread, pfn: int, func: str, ripv: bool,
                    msg: str | None = None) -> None:
    """queue_task_work() (R44, M7): count, remember the first address, panic on the eleventh
    or on a different page, queue one task work item. Its panics are mce_panic(reason, err,
    msg) with do_machine_check()'s grading message, which mce_panic() prints first
    ("Machine check: Action required: data load error in a user process")."""
    st = mce_state(host)
    t.mce_count += 1
    if t.mce_count == 1:
        t.mce_addr = pfn << host.geometry.page_shift
        st.task_work[t.tid] = (func, pfn, ripv)
    if t.mce_count > 10:
        mce_panic(host, "Too many consecutive machine checks while accessing user data", msg)
    if t.mce_count > 1 and t.mce_addr is not None and \
            t.mce_addr >> host.geometry.page_shift != pfn:
        mce_panic(host, "Consecutive machine checks to different user pages", msg)


def task_work_pending(host: Host, t: Thread) -> bool:
    return t.tid in mce_state(host).task_work


def task_work_run(host: Host, t: Thread) -> int | None:
    """The queued callback runs on return to user mode, or before the vCPU enters the guest
    again (R45, M8): kill_me_maybe, kill_me_now or kill_me_never (R46). Returns the
    memory_failure() result, or None when nothing was queued."""
    from .inject import kill_me_maybe, kill_me_never

    st = mce_state(host)
    got = st.task_work.pop(t.tid, None)
    if got is None:
        return None
    func, pfn, ripv = got
    if func == "kill_me_now":
        t.mce_count = 0
        host.force_sig_sigbus(t, "kill_me_now", pfn=pfn)
        return None
    stall(host, 1, st.cost.memory_failure_us, f"{func}: memory_failure()")
    if func == "kill_me_never":
        t.mce_count = 0
        host.log(f"mce: Kernel accessed poison in user space at {pfn << host.geometry.page_shift:x}")
        return kill_me_never(host, pfn)
    return kill_me_maybe(host, t, pfn, ripv=ripv)


def run_entry_work(host: Host, t: Thread) -> bool:
    """The work a thread does on its way into guest mode (KVM's enter-guest work: vcpu_run ->
    xfer_to_guest_mode_handle_work -> resume_user_mode_work, kernel/entry/kvm.c) or back to
    user mode (exit_to_user_mode_loop): its queued machine-check task work runs, then its
    signals are delivered (M8, R45). Returns whether anything was queued: the caller then
    looks at what the work did to the thread, its VM or its VMM."""
    if not task_work_pending(host, t):
        return False
    task_work_run(host, t)
    host.deliver_signals()
    return True


def kvm_machine_check(host: Host, vm_name: str, vcpu: int, t: Thread, pfn: int,
                      vmm_pid: int) -> str:
    """kvm_machine_check() (R45): a machine check taken in guest mode exits to KVM
    (VMX: EXIT_REASON_EXCEPTION_NMI with #MC, or EXIT_REASON_MCE_DURING_VMENTRY; SVM: the #MC
    intercept, svm_handle_mce; TDX: the same VMX exit through tdx_handle_exit_irqoff), and KVM
    calls do_machine_check() with cs = 3: graded and handled as a user-mode error of the
    vCPU thread."""
    by = f"{vm_name}:vcpu{vcpu}"
    host.emit(PoisonConsumed(host.trace.step, pfn, by, "guest", vmm_pid, vm_name))
    return do_machine_check(host, t, pfn, IN_USER, by=by, cpu=vcpu)


# --------------------------------------------------------------------------- actions




@handles(MceConfig)
def do_mce_config(host: Host, a: MceConfig) -> ActionResult:
    st = mce_state(host)
    st.vendor, st.lmce, st.succor, st.cpus = a.vendor, a.lmce, a.succor, a.cpus
    st.monarch_timeout_us, st.holdout_us = a.monarch_timeout_us, a.holdout_us
    st.cost = CostModel(a.entry_us, a.scan_us_per_cpu, a.memory_failure_us, a.stall_bound_us)
    return ActionResult(0)


def _thread(host: Host, vm: str | None, vcpu: int, proc: str | None,
            thread: str) -> tuple[Thread, object | None]:
    if vm is not None:
        from ..kvm.kvm import get_vm

        v = get_vm(host, vm)
        if not 0 <= vcpu < len(v.vcpus):
            raise ModelInputError(f"VM {vm!r} has {len(v.vcpus)} vCPUs", "vcpu")
        return v.vcpus[vcpu], v
    if proc is None:
        raise ModelInputError("needs vm (and vcpu) or proc (and thread)", "vm")
    p = host.proc(proc)
    for th in p.threads:
        if th.name == thread:
            return th, None
    raise ModelInputError(f"process {proc!r} has no thread {thread!r}", "thread")


@handles(MachineCheckAction)
def do_machine_check_action(host: Host, a: MachineCheckAction) -> ActionResult:
    from ..units import parse_size

    t, vm = _thread(host, a.vm, a.vcpu, a.proc, a.thread)
    if vm is not None:
        from ..kvm.kvm import VM
        from ..vmm.guest import guest_pfn

        assert isinstance(vm, VM)
        if a.gpa is None:
            raise ModelInputError("machine_check with vm needs gpa", "gpa")
        gfn = parse_size(a.gpa, host.geometry.page_size) >> host.geometry.page_shift
        # to be in guest mode the vCPU entered it, and KVM runs the queued work before every
        # entry: a second guest-mode machine check on one vCPU never finds the first one's
        # task work still queued
        had = has_mce_state(host)
        ran = run_entry_work(host, t)
        if ran and (vm.state != "running" or not vm.vmm.alive):
            return ActionResult("vm-" + ("dead" if not vm.vmm.alive else vm.state))
        pfn = guest_pfn(host, vm, gfn)
        if pfn is None or pfn not in host.phys.hw_errors:
            return ActionResult("no-poison", unchanged=had and not ran)
        if a.mcip:
            processor_shutdown(host, a.vcpu)
        return ActionResult(kvm_machine_check(host, vm.name, a.vcpu, t, pfn, vm.vmm.pid))
    if a.addr is None:
        raise ModelInputError("machine_check with proc needs addr", "addr")
    from .mm import PRESENT

    hit = host.walk(t.proc.mm, host.resolve_in(t.proc, a.addr))
    if hit is None or hit[0].kind != PRESENT or hit[1] not in host.phys.hw_errors:
        # only a load through a present PTE can consume
        return ActionResult("no-poison", unchanged=True)
    pfn = hit[1]
    ctx = {"user": IN_USER, "kernel-recov": IN_KERNEL_RECOV, "kernel": IN_KERNEL}[a.context]
    # a user-mode load: the thread returned to user mode since its last machine check, and
    # ran the queued work on the way; only kernel-mode consumption (a copy from user
    # retried, IN_KERNEL_RECOV) stacks up mce_count (M7)
    if ctx == IN_USER and run_entry_work(host, t) and not (t.alive and t.proc.alive):
        return ActionResult("dead")
    mode = "user" if ctx == IN_USER else "kernel"
    host.emit(PoisonConsumed(host.trace.step, pfn, f"{t.proc.comm}:{t.name}", mode,
                             t.proc.pid))
    return ActionResult(do_machine_check(host, t, pfn, ctx, ripv=a.ripv, pcc=a.pcc,
                                         copyin=a.copyin, mcip=a.mcip))


@handles(TaskWork)
def do_task_work(host: Host, a: TaskWork) -> ActionResult:
    t, _vm = _thread(host, a.vm, a.vcpu, a.proc, a.thread)
    had = has_mce_state(host)  # task_work_pending() makes it on first use
    if not task_work_pending(host, t):
        return ActionResult("none", unchanged=had)
    ret = task_work_run(host, t)
    return ActionResult(0 if ret is None else ret)
