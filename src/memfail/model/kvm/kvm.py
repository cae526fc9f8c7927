"""struct kvm, vCPUs, memslots and stage-2 tables; the guest access path and KVM_RUN.

Models arch/x86/kvm/mmu/mmu.c (kvm_mmu_faultin_pfn[_gmem], kvm_mmu_prepare_memory_fault_exit,
kvm_handle_error_pfn, kvm_send_hwpoison_signal: R68, R77), the MMU notifier (R78) and guest-mode
machine checks (kvm_machine_check, R45, R79).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ..errors import EFAULT, EHWPOISON, EINTR, ESRCH, ModelInputError, errno_name
from ..handlers import ActionResult, handles
from ..kernel.fs import Inode
from ..kernel.mm import MM, PRESENT
from ..kernel.task import Process, Thread
from ..trace import BUS_MCEERR_AR, GuestEvent, KvmExit, Stage2Zap, VmState
from ..units import parse_size
from .actions import GuestAccess, KernelAccess, Memslot, SetAttributes, VmCreate, VmDestroy, VmReset

if TYPE_CHECKING:
    from ..state import HostState as Host

KVM_EXIT_MEMORY_FAULT = "KVM_EXIT_MEMORY_FAULT"
KVM_MEMORY_EXIT_FLAG_PRIVATE = 1 << 3


@dataclass(eq=False)
class Slot:
    """A memslot: base_gfn, npages, its guest_memfd binding and/or its userspace_addr."""

    slot: int
    base_gfn: int
    npages: int
    gmem: Inode | None = None
    gmem_fd: str | None = None
    gmem_pgoff: int = 0
    hva: int | None = None
    hva_name: str | None = None
    bound: bool = True  # the guest_memfd file is still open (R72)

    def contains(self, gfn: int) -> bool:
        return self.base_gfn <= gfn < self.base_gfn + self.npages

    @property
    def gmem_only(self) -> bool:
        """KVM_MEMSLOT_GMEM_ONLY: bound to an MMAP-capable guest_memfd (R68)."""
        return self.gmem is not None and "mmap" in self.gmem.extra.get("flags", ())


@dataclass(eq=False)
class VM:
    """A struct kvm with its VMM process and vCPU threads."""

    name: str
    type: str
    vmm: Process
    vcpus: list[Thread]
    mcg_ser_p: bool = True
    guest_recovery: bool = True
    slots: list[Slot] = field(default_factory=list)
    private: set[int] = field(default_factory=set)  # gfns with the PRIVATE attribute
    spte: dict[int, tuple[int, int]] = field(default_factory=dict)  # gfn head -> (pfn, order)
    state: str = "running"
    guest_offlined: set[int] = field(default_factory=set)
    guest_pending_kill: set[int] = field(default_factory=set)  # AO: kill the user on access
    guest_kernel_pages: set[int] = field(default_factory=set)
    qemu_poison: set[int] = field(default_factory=set)  # kvm_hwpoison_page_add (Q4)
    mmu_seq: int = 0
    behaviour: str = "cooperative"  # the guest as an actor (vmm/guest.py)
    effort: int = 10
    guest_kernel_mce: str = "panic"

    @property
    def confidential(self) -> bool:
        return self.type in ("snp", "tdx")

    @property
    def mirrored_tdp(self) -> bool:
        return self.type == "tdx"

    def slot_of(self, gfn: int) -> Slot | None:
        for s in self.slots:
            if s.contains(gfn):
                return s
        return None

    def vcpu_index(self, t: Thread) -> int | None:
        for i, v in enumerate(self.vcpus):
            if v is t:
                return i
        return None

    def memory_bytes(self) -> int:
        return sum(s.npages for s in self.slots) << 12


def kvm_state(host: Host) -> dict[str, VM]:
    vms: dict[str, VM] = host.ext.setdefault("vms", {})
    return vms


def get_vm(host: Host, name: str) -> VM:
    vms = kvm_state(host)
    if name not in vms:
        raise ModelInputError(f"unknown VM {name!r} (VMs: {', '.join(vms) or 'none'})", "vm")
    return vms[name]


def set_vm_state(host: Host, vm: VM, state: str, why: str) -> None:
    if vm.state == state:
        return
    vm.state = state
    host.emit(VmState(host.trace.step, vm.name, state, why))


# --------------------------------------------------------------------------- stage 2


def spte_lookup(vm: VM, gfn: int, geo_orders: tuple[int, ...]) -> tuple[int, int, int] | None:
    """(head gfn, pfn, order) of the SPTE mapping ``gfn``."""
    for order in geo_orders:
        head = gfn & ~((1 << order) - 1)
        got = vm.spte.get(head)
        if got is not None and got[1] == order:
            return head, got[0], order
    return None


def zap_gfn_range(host: Host, vm: VM, start: int, end: int, why: str,
                  private_only: bool | None = None) -> int:
    """kvm_mmu_unmap_gfn_range(): drop SPTEs overlapping [start, end). For TDX (mirrored
    TDP) the PRIVATE filter selects the S-EPT, SHARED the direct roots (R64)."""
    n = 0
    for head in sorted(vm.spte):
        order = vm.spte[head][1]
        if head + (1 << order) <= start or head >= end:
            continue
        if private_only is not None and vm.mirrored_tdp and \
                (head in vm.private) != private_only:
            continue
        del vm.spte[head]
        n += 1
    vm.mmu_seq += 1
    if n:
        roots = "all"
        if private_only is not None and vm.mirrored_tdp:
            roots = "mirror" if private_only else "direct"
        host.emit(Stage2Zap(host.trace.step, vm.name, start, end, roots, why))
    return n


def mmu_notifier(host: Host, mm: MM, start: int, size: int) -> None:
    """KVM's MMU notifier (R78): host unmapping of an HVA zaps the SPTEs mapping it."""
    for vm in kvm_state(host).values():
        if vm.vmm.mm is not mm:
            continue
        for s in vm.slots:
            if s.hva is None:
                continue
            lo = max(start, s.hva)
            hi = min(start + size, s.hva + (s.npages << 12))
            if lo < hi:
                g0 = s.base_gfn + ((lo - s.hva) >> 12)
                g1 = s.base_gfn + ((hi - s.hva + 4095) >> 12)
                zap_gfn_range(host, vm, g0, g1, "mmu_notifier")


# --------------------------------------------------------------------------- actions


def qemu_signal_init(main: Thread, vcpus: list[Thread]) -> None:
    """QEMU's util/main-loop.c qemu_signal_init(): the main thread blocks SIGBUS
    (pthread_sigmask(SIG_BLOCK) with SIGBUS in the set) and reads it synchronously through a
    signalfd, whose handler calls sigbus_handler() -> kvm_on_sigbus(). An AO SIGBUS
    (send_sig_mceerr) waits in the mask and is read there; an AR SIGBUS is forced
    (force_sig_mceerr -> force_sig_info_to_task: a blocked signal is unblocked and its action
    reset to SIG_DFL), so the process dies of SIGBUS. QEMU says so itself in
    accel/kvm/kvm-all.c kvm_on_sigbus(): "Action required MCE kills the process if SIGBUS is
    blocked" (R35, Q2).

    Only a VMM with a SIGBUS handler is QEMU (qemu_init_sigbus() installs sigbus_handler
    before any of this): a VMM process without one (``sigbus: default`` or ``ignore``)
    keeps SIGBUS unblocked in its main thread, so an AO it ignores is dropped
    (sig_ignored(): only a blocked signal is never ignored) and one it does not handle
    kills it when delivered. Blocked and read through a signalfd, a signal would be
    dequeued by the read and never take its default action."""
    if main in vcpus or main.proc.sigbus != "handler":
        return
    main.blocked = True
    main.signalfd = True


@handles(VmCreate)
def do_vm_create(host: Host, a: VmCreate) -> ActionResult:
    from ..vmm.qemu import install_qemu

    vms = kvm_state(host)
    if a.vm in vms:
        raise ModelInputError(f"VM {a.vm!r} already exists", "vm")
    if a.behaviour == "confidential" and a.type not in ("snp", "tdx"):
        raise ModelInputError("behaviour confidential needs type snp or tdx", "behaviour")
    if a.vmm not in host.processes:
        host.add_process(a.vmm, ["main"])
    proc = host.proc(a.vmm, "vmm")
    proc.role = "vmm"
    main = proc.threads[0]
    vcpus = []
    for i in range(a.vcpus):
        t = proc.thread(f"vcpu{i}")
        if t is None:
            t = Thread(tid=host._alloc_tid(), name=f"vcpu{i}", proc=proc,
                       mce_process=main.mce_process, mce_early=main.mce_early)
            proc.threads.append(t)
            host.threads_by_tid[t.tid] = t
        # kvm_init_cpu_signals(): a vCPU thread unblocks SIGBUS to take it asynchronously
        t.blocked = False
        vcpus.append(t)
    qemu_signal_init(main, vcpus)
    vm = VM(a.vm, a.type, proc, vcpus, a.mcg_ser_p, a.guest_recovery)
    vm.behaviour, vm.effort, vm.guest_kernel_mce = a.behaviour, a.effort, a.guest_kernel_mce
    vms[a.vm] = vm
    host.ext["mmu_notifier"] = mmu_notifier
    install_qemu(host)
    host.emit(VmState(host.trace.step, vm.name, "running", "created"))
    return ActionResult(0)


@handles(Memslot)
def do_memslot(host: Host, a: Memslot) -> ActionResult:
    from .gmem import gmem_bind

    vm = get_vm(host, a.vm)
    geo = host.geometry
    gpa = parse_size(a.gpa, geo.page_size)
    size = parse_size(a.size, geo.page_size)
    if gpa % geo.page_size or size % geo.page_size or size == 0:
        return ActionResult.err(-22)
    base, npages = gpa >> geo.page_shift, size >> geo.page_shift
    for s in vm.slots:
        if s.base_gfn < base + npages and base < s.base_gfn + s.npages:
            return ActionResult.err(-17)
    slot = Slot(a.slot, base, npages)
    gmem_fd, hva_name = a.gmem, a.hva
    if gmem_fd is not None:
        of = host.fd(vm.vmm, gmem_fd)
        alt = of.inode.extra.get("hugetlbfs_region")
        if alt is not None:  # hugetlbfs baseline: guest memory is the memfd's mapping
            own = vm.vmm.regions.get(hva_name) if hva_name is not None else None
            if own is None or own.inode is not of.inode:
                hva_name = alt  # the scenario's hva is other memory (e.g. an anon alias)
            elif hva_name != alt and alt in vm.vmm.regions:
                # The VMM maps the memfd itself and registers that mapping: QEMU maps its
                # RAM once, so gmem_create's stand-in goes. Kept, it would be a second VMA
                # of the file: collect_procs_file() (mm/memory-failure.c) adds a kill entry
                # per VMA and the first SIGBUS would carry the stand-in's address, which
                # QEMU does not find in guest RAM (it exits instead of injecting, S10).
                from ..actions import Munmap
                from ..kernel.mmops import do_munmap

                do_munmap(host, Munmap(proc=vm.vmm.comm, addr=alt))
            gmem_fd = None
    if hva_name is not None:
        region = vm.vmm.regions.get(hva_name)
        if region is None:
            raise ModelInputError(f"VMM {vm.vmm.comm!r} has no mapping named {hva_name!r}",
                                  "hva")
        slot.hva, slot.hva_name = region.start, hva_name
        if a.gmem is not None and gmem_fd is None:
            slot.hva += parse_size(a.gmem_offset, geo.page_size)
    if gmem_fd is not None:
        err = gmem_bind(host, vm, slot, gmem_fd, parse_size(a.gmem_offset, geo.page_size))
        if err:
            return ActionResult.err(err)
        if "init_shared" not in slot.gmem.extra.get("flags", ()) if slot.gmem else False:
            vm.private.update(range(base, base + npages))
    vm.slots.append(slot)
    return ActionResult(0)


@handles(SetAttributes)
def do_set_attributes(host: Host, a: SetAttributes) -> ActionResult:
    """KVM_SET_MEMORY_ATTRIBUTES (R76): kvm_vm_ioctl_set_mem_attributes() (virt/kvm/kvm_main.c)
    returns -EINVAL for an attribute outside kvm_supported_mem_attributes(), which has PRIVATE
    only when kvm_arch_has_private_mem() (x86: kvm->arch.has_private_mem, set for
    KVM_X86_SW_PROTECTED_VM in kvm_arch_init_vm(), SNP in svm_vm_init(), TDX in tdx_vm_init()).
    So a ``default`` VM cannot make memory private: nothing changes. Setting no attribute
    (shared) is allowed on every VM. Then kvm_vm_set_mem_attributes() zaps the range and
    records the attribute; with guest_memfd the folios follow (gmem_convert, R87)."""
    from ..errors import EINVAL
    from .gmem import gmem_convert

    vm = get_vm(host, a.vm)
    if a.private and vm.type == "default":
        return ActionResult.err(-EINVAL)
    geo = host.geometry
    g0 = parse_size(a.gpa, geo.page_size) >> geo.page_shift
    g1 = g0 + (parse_size(a.size, geo.page_size) >> geo.page_shift)
    zap_gfn_range(host, vm, g0, g1, "attributes changed")
    if a.private:
        vm.private.update(range(g0, g1))
    else:
        vm.private.difference_update(range(g0, g1))
    for s in vm.slots:
        lo, hi = max(g0, s.base_gfn), min(g1, s.base_gfn + s.npages)
        if lo < hi and s.gmem is not None:
            gmem_convert(host, s.gmem, lo - s.base_gfn + s.gmem_pgoff,
                         hi - s.base_gfn + s.gmem_pgoff, a.private)
    return ActionResult(0)


def _kvm_run_error(host: Host, vm: VM, vcpu: int, gfn: int, err: int, private: bool) -> None:
    """KVM_RUN returns -1: KVM_EXIT_MEMORY_FAULT filled (R68); the VMM reacts (Q7)."""
    from ..vmm.qemu import qemu_kvm_run_failed

    host.emit(KvmExit(host.trace.step, vm.name, vcpu, -1, errno_name(err),
                      KVM_EXIT_MEMORY_FAULT, gfn << 12,
                      KVM_MEMORY_EXIT_FLAG_PRIVATE if private else 0))
    qemu_kvm_run_failed(host, vm, vcpu, err)


def faultin(host: Host, vm: VM, vcpu: int, gfn: int, write: bool) -> tuple[int, int] | int:
    """kvm_mmu_faultin_pfn(): (pfn, order) mapped into stage 2, or -errno after the exit."""
    from ..kernel.mmops import gup
    from .gmem import kvm_gmem_get_pfn

    slot = vm.slot_of(gfn)
    if slot is None:
        return -EFAULT
    private = gfn in vm.private
    t = vm.vcpus[vcpu]
    if slot.gmem is not None and (private or slot.gmem_only):
        got = kvm_gmem_get_pfn(host, vm, slot, gfn)
        if isinstance(got, int):
            _kvm_run_error(host, vm, vcpu, gfn, got, private)
            return got
        pfn, order, head_pfn = got
    else:
        if slot.hva is None:
            _kvm_run_error(host, vm, vcpu, gfn, -EFAULT, private)
            return -EFAULT
        hva = slot.hva + ((gfn - slot.base_gfn) << 12)
        pfn, folio = gup(host, vm.vmm, hva, write)
        if pfn == -EHWPOISON:
            # kvm_handle_error_pfn -> kvm_send_hwpoison_signal (R77): lsb PAGE_SHIFT on x86
            host.send_sig_mceerr(t, BUS_MCEERR_AR, hva, 12, "kvm_send_hwpoison_signal",
                                 _hva_pfn(host, vm, hva))
            host.emit(KvmExit(host.trace.step, vm.name, vcpu, -1, errno_name(-EINTR),
                              "KVM_EXIT_INTR"))
            return -EINTR
        if pfn < 0:
            _kvm_run_error(host, vm, vcpu, gfn, pfn, private)
            return pfn
        order, head_pfn = 0, pfn
        if folio is not None:
            folio.put("gup")
            order, head_pfn = folio.order, folio.pfn
    return pfn, install_spte(vm, slot, gfn, pfn, order, head_pfn)


def install_spte(vm: VM, slot: Slot, gfn: int, pfn: int, order: int, head_pfn: int) -> int:
    """Map ``gfn`` in stage 2 at the folio's level when the whole aligned range lies in the slot
    with one memory attribute, else at 4K; returns the level used.

    One attribute over every gfn of the range, not only its ends: KVM keeps a hugepage's
    "mixed" flag (kvm_arch_post_set_memory_attributes, hugepage_has_attrs ->
    kvm_range_has_memory_attributes) for every memslot of a VM that can have private memory,
    also one without a guest_memfd ("KVM mustn't create a SHARED hugepage over a range that
    has PRIVATE GFNs", since v6.8), and kvm_mmu_max_mapping_level() maps a mixed range at 4K.
    A guest_memfd folio is split where its range is mixed anyway (gmem._range_mixed); a
    HugeTLB memfd's folio is not, so a shared access beside a private page maps at 4K."""
    private = gfn in vm.private
    if order:
        head = gfn - (pfn - head_pfn)
        last = head + (1 << order) - 1
        if (head % (1 << order) == 0 and vm.slot_of(head) is slot and vm.slot_of(last) is slot
                and _one_attribute(vm.private, head, last, private)):
            vm.spte[head] = (head_pfn, order)
            return order
    vm.spte[gfn] = (pfn, 0)
    return 0


def _one_attribute(private_gfns: set[int], head: int, last: int, private: bool) -> bool:
    """Every gfn of ``head..last`` private (``private``) or none of them: the range's one
    memory attribute. Walks the shorter of the range and the set, and stops at the first
    gfn that breaks it (a 1G folio's range is 262,144 gfns; a VM's private set as large)."""
    n = last - head + 1
    if private:
        return len(private_gfns) >= n and private_gfns.issuperset(range(head, last + 1))
    if n <= len(private_gfns):
        return private_gfns.isdisjoint(range(head, last + 1))
    return not any(head <= g <= last for g in private_gfns)


def _hva_pfn(host: Host, vm: VM, hva: int) -> int | None:
    hit = host.walk(vm.vmm.mm, hva)
    return None if hit is None else hit[1]


@handles(GuestAccess)
def do_guest_access(host: Host, a: GuestAccess) -> ActionResult:
    """One guest load/store on a vCPU, through KVM_RUN (R45, R67, R68, R77, R79)."""
    from ..kernel.mce import has_mce_state, kvm_machine_check, run_entry_work, task_work_run

    vm = get_vm(host, a.vm)
    geo = host.geometry
    if not 0 <= a.vcpu < len(vm.vcpus):
        raise ModelInputError(f"VM {a.vm!r} has {len(vm.vcpus)} vCPUs", "vcpu")
    gfn = parse_size(a.gpa, geo.page_size) >> geo.page_shift
    if vm.state != "running" or not vm.vmm.alive:
        return ActionResult(f"vm-{vm.state}" if vm.vmm.alive else "vm-dead", unchanged=True)
    if gfn in vm.guest_pending_kill:
        # the guest kernel handled an AO vMCE by unmapping the page (its own hwpoison entry);
        # the guest process that touches it now is killed (KV-06: killed on later access)
        vm.guest_pending_kill.discard(gfn)
        host.emit(GuestEvent(host.trace.step, vm.name,
                             "killed the guest process on its access to the offlined page",
                             gfn << 12))
        return ActionResult("guest-sigbus")
    if gfn in vm.guest_offlined:
        return ActionResult("guest-avoided", unchanged=True)
    # ``quiet``: nothing changed so far (ActionResult.unchanged)
    quiet = has_mce_state(host) and (a.page != "kernel" or gfn in vm.guest_kernel_pages)
    if a.page == "kernel":
        vm.guest_kernel_pages.add(gfn)
    t = vm.vcpus[a.vcpu]
    # KVM's enter-guest work runs the machine-check task work first (R45, M8)
    if run_entry_work(host, t):
        quiet = False
        if vm.state != "running" or not vm.vmm.alive:
            return ActionResult("vm-" + ("dead" if not vm.vmm.alive else vm.state))
    orders = tuple(sorted({0, geo.pmd_order, geo.pud_order}))
    for _attempt in range(3):
        hit = spte_lookup(vm, gfn, orders)
        if hit is None:
            quiet = False
            got = faultin(host, vm, a.vcpu, gfn, a.op == "write")
            if isinstance(got, int):
                host.deliver_signals()
                if vm.state != "running" or not vm.vmm.alive:
                    return ActionResult("exit", errno_name(got))
                if gfn in vm.guest_offlined:
                    return ActionResult("mce-injected")
                return ActionResult("exit", errno_name(got))
            pfn = got[0]
        else:
            head, hpfn, _order = hit
            pfn = hpfn + (gfn - head)
        if a.op == "write":
            old = host.phys.data.get(pfn)
            host.phys.data[pfn] = a.value
            return ActionResult(0, unchanged=quiet and old is not None and
                                type(old) is type(a.value) and old == a.value)
        if pfn not in host.phys.hw_errors:
            return ActionResult(host.phys.data.get(pfn, 0), unchanged=quiet)
        # guest-mode machine check, handled as a user-mode one by the vCPU thread (R45):
        # graded and queued by do_machine_check, the task work runs before re-entry (M1-M8)
        quiet = False
        kvm_machine_check(host, vm.name, a.vcpu, t, pfn, vm.vmm.pid)
        task_work_run(host, t)
        host.deliver_signals()
        if not vm.vmm.alive or vm.state != "running":
            return ActionResult("vm-" + ("dead" if not vm.vmm.alive else vm.state))
        if gfn in vm.guest_offlined or vm.state != "running":
            return ActionResult("mce-injected")
        # the guest did not offline the page (no vMCE reached it, or it ignores vMCEs):
        # KVM re-enters and the instruction runs again
    return ActionResult("re-consumed")


@handles(KernelAccess)
def do_kernel_access(host: Host, a: KernelAccess) -> ActionResult:
    """A host kernel user reads guest or user memory, as the inventory of kernel users
    (kernel/kaccess.py KERNEL_USERS) says it does: it reaches the page through the VMM's page
    tables or by physical address, skips it when its check sees the poison, and consumes
    it with or without a machine-check-safe copy (R3, R47)."""
    from ..kernel.kaccess import KERNEL_USER_BY_NAME, kernel_user_consume, profile_release
    from .gmem import pfn_poisoned

    u = KERNEL_USER_BY_NAME[a.user]
    mc_safe = u.mc_safe(profile_release(host.profile.name)) if a.mc_safe is None else a.mc_safe
    check = u.check
    if a.checks_hwpoison is False:
        check = "none"  # (a hwpoison entry still stops an hva user: that is its uaccess)
    elif a.checks_hwpoison and check == "none":
        check = "flag"
    if mc_safe and u.recovery == "none":
        u = replace(u, recovery="copy_mc_queue")  # an override: a copy_mc_highpage() copy
    got, faulted = _kernel_target(host, a, u.reach)
    quiet = not faulted  # nothing changed so far (ActionResult.unchanged)
    if isinstance(got, str):  # the uaccess / GUP failed on the entry (a hwpoison entry)
        return ActionResult("skipped", unchanged=quiet) if u.on_check == "skipped" else \
            ActionResult.err(-EFAULT, unchanged=quiet)
    if got is None:
        return ActionResult("not-reached", unchanged=quiet)
    pfn = got
    folio = host.phys.folio_of(pfn)
    if u.gmem.startswith("no") and folio is not None and folio.mapping is not None and \
            folio.mapping.kind == "gmem":
        return ActionResult("not-reached", unchanged=quiet)
    if check == "flag" and pfn_poisoned(host, pfn):
        return ActionResult("skipped", unchanged=quiet)
    if check == "raw-flag" and (pfn in host.phys.hwpoison or (
            folio is not None and folio.pfn == pfn and "hwpoison" in folio.flags)):
        return ActionResult("skipped", unchanged=quiet)
    if u.nofault_direct_map and pfn in host.phys.nospec:
        # set_mce_nospec() took it out of the direct map: copy_from_kernel_nofault() faults
        # and read_kcore_iter() fills zeros (R46)
        return ActionResult("skipped", unchanged=quiet)
    if pfn not in host.phys.hw_errors:
        return ActionResult(host.phys.data.get(pfn, 0), unchanged=quiet)
    return kernel_user_consume(host, pfn, u, mc_safe)


def _kernel_target(host: Host, a: KernelAccess, reach: str) -> tuple[int | str | None, bool]:
    """The pfn a kernel user reads: ``hva`` users go through the VMM's (or ``proc``'s) page
    tables at the memslot's userspace address (a hwpoison entry or a failed fault gives
    "entry"); ``pfn`` users read the physical page behind the guest page (guest_memfd's own
    folio for private memory). None: no page there. With it, whether a fault (GUP) was
    taken to find it (the only way the lookup changes the host)."""
    geo = host.geometry
    if a.vm is not None:
        vm = get_vm(host, a.vm)
        if a.gpa is None:
            raise ModelInputError("kernel_access with vm needs gpa", "gpa")
        gfn = parse_size(a.gpa, geo.page_size) >> geo.page_shift
        slot = vm.slot_of(gfn)
        if slot is None:
            return ("entry" if reach == "hva" else None), False
        if reach == "pfn" and slot.gmem is not None and (
                gfn in vm.private or slot.hva is None or _hva_maps_gmem(vm, slot, gfn)):
            # a physical-address reader (kdump, /proc/kcore, hibernation, ...) reads the
            # guest_memfd folio whether or not the VMM's page tables map it: shared memory
            # of an mmap-able guest_memfd is the same folio (kernel-users.md, reach: pfn)
            f = slot.gmem.lookup(gfn - slot.base_gfn + slot.gmem_pgoff)
            if f is None:
                return None, False
            return f.pfn + (gfn - slot.base_gfn + slot.gmem_pgoff - f.index), False
        if slot.hva is None:
            return ("entry" if reach == "hva" else None), False
        addr: Any = slot.hva + ((gfn - slot.base_gfn) << 12)
        proc = vm.vmm
    else:
        if a.proc is None or a.addr is None:
            raise ModelInputError("kernel_access needs vm+gpa or proc+addr", "vm")
        proc = host.proc(a.proc)
        addr = host.resolve_in(proc, a.addr)
    hit = host.walk(proc.mm, addr)
    if reach == "pfn":
        return (hit[1] if hit is not None else None), False  # the page itself, mapped or not
    if hit is None:
        # a uaccess or GUP faults a missing page in, as the user's own access would
        from ..kernel.mmops import gup

        pfn, folio = gup(host, proc, addr)
        if folio is not None:
            folio.put("gup")
        return (pfn if pfn >= 0 else "entry"), True
    return (hit[1] if hit[0].kind == PRESENT else "entry"), False


def _hva_maps_gmem(vm: Any, slot: Any, gfn: int) -> bool:
    """Whether the memslot's userspace address of ``gfn`` is a mapping of the slot's own
    guest_memfd (GUEST_MEMFD_FLAG_MMAP: shared memory lives in the guest_memfd folios)
    rather than separate memory (anonymous or another file) for the shared half."""
    vma = vm.vmm.mm.find_vma(slot.hva + ((gfn - slot.base_gfn) << 12))
    if vma is None:
        # nothing mapped there now (the VMM's munmap, a release under way): the shared
        # memory of an mmap-able guest_memfd is still its folio, in the file's page cache
        # (and the direct map) until the file goes, so a physical reader still reaches it
        return "mmap" in slot.gmem.extra.get("flags", ())
    return vma.inode is slot.gmem


@handles(VmDestroy)
def do_vm_destroy(host: Host, a: VmDestroy) -> ActionResult:
    vm = get_vm(host, a.vm)
    vm.spte.clear()
    for s in vm.slots:
        if s.gmem_fd is not None and s.gmem_fd in vm.vmm.fds:
            host.close_fd(vm.vmm, s.gmem_fd)
    set_vm_state(host, vm, "destroyed", "vm_destroy")
    return ActionResult(0)


@handles(VmReset)
def do_vm_reset(host: Host, a: VmReset) -> ActionResult:
    """System reset (Q6): kvm_unpoison_all punches/remaps every page QEMU recorded. A VM
    whose VMM is gone cannot be reset: -ESRCH, and its outcome stays what it was."""
    from .gmem import gmem_punch

    vm = get_vm(host, a.vm)
    if not vm.vmm.alive:
        return ActionResult.err(-ESRCH)  # the VMM that would reset the guest is gone
    for gfn in sorted(vm.qemu_poison):
        s = vm.slot_of(gfn)
        if s is None:
            continue
        if s.gmem is not None and s.hva is None:
            gmem_punch(host, s.gmem, gfn - s.base_gfn + s.gmem_pgoff, 1)
        elif s.hva is not None:
            hva = s.hva + ((gfn - s.base_gfn) << 12)
            region = vm.vmm.mm.find_vma(hva) if vm.vmm.mm is not None else None
            if region is not None and region.inode is not None:
                idx = region.index_of(hva)
                unit = 1 << region.inode.huge_order
                start = idx & ~(unit - 1)
                host.truncate_range(region.inode, start, start + unit, even_cows=True)
            elif region is not None:
                # anonymous RAM: qemu_ram_remap() discards the page (ram_block_discard_range:
                # MADV_DONTNEED, which drops the hwpoison entry, R40) or maps fresh anonymous
                # memory over it (mmap MAP_FIXED|MAP_ANONYMOUS); either way the next touch
                # faults in a zeroed page
                unit = 1 << (region.huge_order + host.geometry.page_shift)
                start = hva & ~(unit - 1)
                host.unmap_vma(region, max(start, region.start), min(start + unit, region.end),
                               keep_vma=True)
    vm.qemu_poison.clear()
    vm.guest_offlined.clear()
    vm.guest_pending_kill.clear()
    vm.spte.clear()
    set_vm_state(host, vm, "running", "reset")
    return ActionResult(0)


__all__ = ["VM", "Slot", "faultin", "get_vm", "kvm_state", "zap_gfn_range"]
