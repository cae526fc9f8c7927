"""A QEMU-like VMM (x86 KVM) and the guest OS's reactions, as hooks on the host.

Models system/cpus.c (qemu_init_sigbus, sigbus_handler: Q1, Q2), accel/kvm/kvm-all.c
(kvm_on_sigbus_vcpu, kvm_on_sigbus, kvm_cpu_exec error handling: Q2, Q3, Q7) and
target/i386/kvm/kvm.c (kvm_arch_on_sigbus_vcpu, kvm_mce_inject, hardware_memory_error: Q4, Q5).
A guest given a vMCE offlines the page (killing the guest process that used it), or panics if
the page is one of its kernel's or its recovery is disabled (KV-10); confidential guests
cannot be given a vMCE (Q8).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..kernel.task import Process, SigInfo, Thread
from ..trace import BUS_MCEERR_AO, BUS_MCEERR_AR, SIGBUS, GuestEvent, MceInjected

if TYPE_CHECKING:
    from ..kvm.kvm import VM
    from ..state import HostState as Host

SIGKILL = 9


SIGNAL_NAMES = {6: "SIGABRT", 7: "SIGBUS", 9: "SIGKILL", 11: "SIGSEGV"}


def install_qemu(host: Host) -> None:
    host.ext["on_sigbus"] = qemu_sigbus_handler
    host.ext["on_exit"] = qemu_on_exit


def qemu_on_exit(host: Host, proc: Process) -> None:
    """A VMM that dies of a signal takes its VMs with it (e.g. a forced AR SIGBUS on QEMU's
    main thread, whose SIGBUS is blocked: R35, Q2)."""
    from ..kvm.kvm import kvm_state

    if proc.exit_signal is None:
        return
    for vm in kvm_state(host).values():
        if vm.vmm is proc and vm.state not in ("killed", "destroyed"):
            sig = SIGNAL_NAMES.get(proc.exit_signal, f"signal {proc.exit_signal}")
            _vm_gone(host, vm, f"VMM died of {sig}")


def _vm_of(host: Host, t: Thread) -> VM | None:
    from ..kvm.kvm import kvm_state

    for vm in kvm_state(host).values():
        if vm.vmm is t.proc:
            return vm
    return None


def qemu_sigbus_handler(host: Host, t: Thread, info: SigInfo) -> None:
    """sigbus_handler() (Q2): non-MCE codes re-raise with SIG_DFL; a vCPU thread records one
    pending SIGBUS and handles it after KVM_RUN returns (Q3); the main thread takes AO."""
    vm = _vm_of(host, t)
    if vm is None:
        return
    proc = t.proc
    if info.si_code not in (BUS_MCEERR_AR, BUS_MCEERR_AO):
        host.log("qemu: SIGBUS without MCE information: re-raising with SIG_DFL (fatal)",
                 level="info")
        _vm_gone(host, vm, "VMM died of SIGBUS")
        host.kill_process(proc, SIGBUS, "qemu re-raise")
        return
    cpu = vm.vcpu_index(t)
    if cpu is None:
        # kvm_on_sigbus(): the main thread reads AO through signalfd
        if info.si_code == BUS_MCEERR_AR:
            # reached only if the main thread's SIGBUS was unblocked by hand: QEMU blocks it
            # (qemu_signal_init), and a forced AR then kills the process before any handler
            host.log("qemu: kvm_on_sigbus: assertion 'code != BUS_MCEERR_AR' failed",
                     level="info")
            _vm_gone(host, vm, "VMM aborted")
            host.kill_process(proc, 6, "abort")
            return
        kvm_arch_on_sigbus_vcpu(host, vm, 0, info.si_code, info.addr)
        return
    pending = host.ext.setdefault("qemu_pending", set())
    if (vm.name, cpu) in pending:
        host.log("qemu: second SIGBUS while one is pending: re-raising (fatal)", level="info")
        _vm_gone(host, vm, "VMM died of SIGBUS")
        host.kill_process(proc, SIGBUS, "qemu re-raise")
        return
    pending.add((vm.name, cpu))
    try:
        kvm_arch_on_sigbus_vcpu(host, vm, cpu, info.si_code, info.addr)
    finally:
        pending.discard((vm.name, cpu))


def _hva_to_gpa(vm: VM, addr: int | None) -> int | None:
    if not addr:
        return None
    for s in vm.slots:
        if s.hva is not None and s.hva <= addr < s.hva + (s.npages << 12):
            return (s.base_gfn << 12) + (addr - s.hva)
    return None


def kvm_arch_on_sigbus_vcpu(host: Host, vm: VM, cpu: int, code: int,
                            addr: int | None) -> None:
    """Q4: guest RAM and MCG_SER_P → record the page and inject a vMCE at 4 KiB granularity
    (Q5); otherwise AO is ignored and AR is fatal (exit(1)). On an AMD guest (the model's
    guest CPU is the host's, ``-cpu host``: the host's ``mce_config`` vendor) an AO is
    recorded but not injected (QEMU's 'i386: Fix MCE support for AMD hosts':
    ``if (!IS_AMD_CPU(env) || code != BUS_MCEERR_AO) kvm_mce_inject(...)``, logged
    "... of type BUS_MCEERR_AO ignored on AMD guest", KV-03)."""
    from ..kernel.mce import mce_state

    kind = "BUS_MCEERR_AR" if code == BUS_MCEERR_AR else "BUS_MCEERR_AO"
    gpa = _hva_to_gpa(vm, addr)
    if gpa is not None and vm.mcg_ser_p:
        gpa &= ~0xFFF
        vm.qemu_poison.add(gpa >> 12)
        if vm.confidential:
            host.log(f"qemu: cannot inject MCE into confidential guest {vm.name} "
                     f"(GUEST addr {gpa:#x})", level="info")
            return
        if code == BUS_MCEERR_AO and mce_state(host).vendor == "amd":
            host.log(f"qemu: Guest MCE Memory Error at QEMU addr {addr:#x} and GUEST addr "
                     f"{gpa:#x} of type {kind} ignored on AMD guest", level="info")
            return
        host.emit(MceInjected(host.trace.step, vm.name, gpa, kind))
        host.log(f"qemu: Guest MCE Memory Error at QEMU addr {addr:#x} and GUEST addr {gpa:#x} "
                 f"of type {kind} injected", level="info")
        guest_on_mce(host, vm, gpa >> 12, code)
        return
    if code == BUS_MCEERR_AO:
        host.log("qemu: Hardware memory error for memory used by QEMU itself instead of guest "
                 "system!", level="info")
        return
    host.log(f"qemu: Hardware memory error for memory used by QEMU itself instead of guest "
             f"system!\nqemu: QEMU got Hardware memory error at addr {addr or 0:#x}",
             level="info")
    host.exit_process(vm.vmm, 1)
    _vm_gone(host, vm, "QEMU exit(1) on an AR error outside guest RAM")


def guest_on_mce(host: Host, vm: VM, gfn: int, code: int) -> None:
    """The guest kernel's memory_failure on a vMCE: panic for its own pages or with recovery
    off, otherwise offline the page (killing the guest process on AR)."""
    from ..kvm.kvm import set_vm_state
    from .guest import guest_on_vmce_ignored, ignores_vmce

    kernel_page = gfn in vm.guest_kernel_pages
    if kernel_page and vm.guest_recovery and vm.guest_kernel_mce == "recover":
        kernel_page = False  # the guest kernel's read had a machine-check-safe fixup
    if not vm.guest_recovery or kernel_page:
        host.emit(GuestEvent(host.trace.step, vm.name, "panic", gfn << 12))
        set_vm_state(host, vm, "guest-panicked", "vMCE on a guest kernel page")
        return
    if ignores_vmce(vm):
        guest_on_vmce_ignored(host, vm, gfn)  # careless / hostile guests (vmm/guest.py)
        return
    vm.guest_offlined.add(gfn)
    if code == BUS_MCEERR_AR:
        what = "offlined page, killed the guest process using it"
    else:
        # AO: the guest's memory_failure unmaps the page; with the guest's default late kill
        # its user is killed only when it touches the page again (KV-06)
        vm.guest_pending_kill.add(gfn)
        what = "offlined page (its user will be killed on access)"
    host.emit(GuestEvent(host.trace.step, vm.name, what, gfn << 12))


def qemu_kvm_run_failed(host: Host, vm: VM, cpu: int, err: int) -> None:
    """kvm_cpu_exec() (Q7): -EFAULT with a memory-fault exit is a conversion request; any
    other error logs "kvm run failed" and stops the VM with an internal error."""
    from ..errors import EFAULT, EHWPOISON
    from ..kvm.kvm import set_vm_state

    if err == -EFAULT:
        return
    text = "Memory page has hardware error" if err == -EHWPOISON else f"errno {-err}"
    host.log(f"qemu: error: kvm run failed {text}", level="info")
    set_vm_state(host, vm, "paused", "internal-error: KVM_RUN failed")


def kill_vm(host: Host, vm: VM, why: str) -> None:
    """Kill the guest completely: zap all of stage 2, mark the VM dead, kill the VMM."""
    from ..kvm.kvm import set_vm_state, zap_gfn_range

    zap_gfn_range(host, vm, 0, 1 << 52, why)
    set_vm_state(host, vm, "killed", why)
    if vm.vmm.alive:
        host.kill_process(vm.vmm, SIGKILL, why)


def _vm_gone(host: Host, vm: VM, why: str) -> None:
    from ..kvm.kvm import set_vm_state

    set_vm_state(host, vm, "killed", why)
