"""Races at lock granularity (``memfail check --races``): composite events as atomic steps.

Each composite event becomes a small state machine of *stages*. A stage is one atomic step
between the kernel locks it takes: it ``needs`` a set of locks while it runs and ``carries``
some of them to the op's next stage. The explorer interleaves stages of different events; a
stage is enabled only when no other in-flight event holds (carries) a lock it needs in a
conflicting mode. The stages call the model's own functions (memfail.model.kvm.gmem and
memfail.model.kvm.kvm) on the real Host; where the model has one function for several
kernel steps, the small helpers below mirror the part they split off and say so.

Locks (one token each; the folio lock is one token for all folios, which over-serialises
events on different folios and never adds a race):

* ``mf_mutex``: memory_failure() holds it from start to end.
* ``invalidate``: the guest_memfd mapping's filemap_invalidate_lock, shared (faults) or
  exclusive (punch hole, conversion, release).
* ``folio``: the folio lock.
* ``hugetlb``: hugetlb_lock (the pool).
* ``mmu``: kvm->mmu_lock (stage 2).

The stages, with the locks each needs (carried locks in brackets) are listed in ``STAGES``
and in docs/check.md. A counterexample writes each stage as a ``stage`` scenario step, which
memfail.check.stage_action carries out with ``first_stage`` and ``run_stage`` below, so
``memfail run`` replays the checked path through the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memfail.model.actions import parse_action
from memfail.model.errors import KernelPanic, ModelInputError, TargetGone, errno_name
from memfail.model.kernel.memory_failure import (
    MF_DELAYED,
    MF_RECOVERED,
    action_result,
    policy_claimed_folio,
)
from memfail.model.kernel.mm import PRESENT, PTE
from memfail.model.kernel.mmops import FaultError, page_poisoned
from memfail.model.kvm import gmem
from memfail.model.kvm.kvm import get_vm, install_spte, kvm_state, spte_lookup, zap_gfn_range
from memfail.model.trace import MemoryFailureCall
from memfail.model.units import parse_size

if TYPE_CHECKING:
    from memfail.check.events import Label, StepSpec
    from memfail.model.host import Host
    from memfail.model.state import HostState

Lock = tuple[str, bool]  # (name, exclusive)
Ctx = tuple[Any, ...]    # plain data carried between stages (part of the state)

MF: Lock = ("mf_mutex", True)
INV_X: Lock = ("invalidate", True)
INV_S: Lock = ("invalidate", False)
FOLIO: Lock = ("folio", True)
HUGETLB_LOCK: Lock = ("hugetlb", True)
MMU: Lock = ("mmu", True)


# What memory_failure() waits for as a whole: mf_mutex, then the folio lock, which it takes
# after marking the page (folio_lock() after TestSetPageHWPoison / get_huge_page_for_hwpoison
# in memory_failure() and try_memory_failure_hugetlb()) and holds while it unmaps. A step that
# calls it (an access that consumes an error) cannot complete while another event holds one.
MF_WAITS: tuple[Lock, ...] = (MF, FOLIO)


def mf_waits_for(held: frozenset[Lock] | tuple[Lock, ...]) -> Lock | None:
    """The lock memory_failure() would wait for among ``held`` (locks other events carry)."""
    return next((lock for lock in MF_WAITS if lock in held), None)


def conflicts(need: frozenset[Lock], held: frozenset[Lock]) -> bool:
    """A lock needed conflicts with one held by another event unless both are shared."""
    return any(n == h and (x or y) for n, x in need for h, y in held)


# --------------------------------------------------------------------------- stages


@dataclass(frozen=True)
class Stage:
    name: str
    needs: frozenset[Lock]
    carries: frozenset[Lock]
    doc: str


def _s(name: str, needs: set[Lock], carries: set[Lock], doc: str) -> Stage:
    return Stage(name, frozenset(needs), frozenset(carries), doc)


STAGES: dict[str, Stage] = {s.name: s for s in (
    _s("mf.record", {MF}, {MF},
       "memory_failure() on a guest_memfd folio the policy claims: the error is recorded "
       "(hardware error, detected, the policy's table entry or PG_hwpoison, action_result); "
       "PG_hwpoison on the folio (record: folio) also takes the folio lock"),
    _s("mf.unmap", {MF, INV_S, FOLIO, MMU}, {MF},
       "the policy's unmap: stage-2 zap (kvm_gmem_invalidate under the invalidate lock and "
       "mmu_lock) and host unmap (under the folio lock), of the folio found now"),
    _s("mf.notify", {MF}, set(),
       "the rest of memory_failure(): kill / make unusable (vm_on_error), SIGBUS AO to the "
       "VMM or the deferral; memory_failure() returns (its trace event)"),
    _s("fault.get_pfn", {INV_S, FOLIO}, set(),
       "a stage-2 fault: kvm_mmu_faultin_pfn snapshots mmu_invalidate_seq, then "
       "kvm_gmem_get_pfn (folio lookup or allocation, the policy's fault check)"),
    _s("fault.map", {MMU}, set(),
       "under mmu_lock: the fault is stale if mmu_invalidate_seq moved (an invalidation ran "
       "since the snapshot) and KVM retries from fault.get_pfn; else the SPTE is installed"),
    _s("fault.access", set(), set(),
       "the vCPU re-enters the guest and the load/store runs through the new SPTE (zapped "
       "meanwhile: the fault starts over at fault.get_pfn)"),
    _s("hostfault.lookup", {INV_S, FOLIO}, {FOLIO},
       "a host fault on the VMM's guest_memfd mapping: kvm_gmem_fault_user_mapping (lookup, "
       "the policy's table check); the folio comes back locked"),
    _s("hostfault.map", {FOLIO}, set(),
       "__do_fault's PG_hwpoison check and finish_fault's PTE, still under the folio lock, "
       "which is then dropped"),
    _s("hostfault.access", set(), set(), "the VMM thread's load/store through the new PTE "
       "(zapped meanwhile: the fault starts over at hostfault.lookup)"),
    _s("punch.zap", {INV_X, MMU}, {INV_X},
       "kvm_gmem_punch_hole: the invalidate lock is taken and stage 2 zapped in every bound VM"),
    _s("punch.free", {INV_X, FOLIO, HUGETLB_LOCK}, set(),
       "truncate the range (the policy marks recorded pages first) and free the folios to "
       "the HugeTLB pool; the invalidate lock is dropped"),
    _s("convert.attributes", {INV_X, MMU}, {INV_X},
       "in-place conversion: the invalidate lock is taken, stage 2 zapped and the gfns' "
       "PRIVATE attribute changed"),
    _s("convert.folios", {INV_X, FOLIO, HUGETLB_LOCK}, set(),
       "split or merge the HugeTLB folios of the range (moving PG_hwpoison per the policy)"),
    _s("release.munmap", {MMU}, set(),
       "the VMM unmaps guest memory (the MMU notifier zaps stage 2 under mmu_lock)"),
    _s("release.close", {INV_X, FOLIO, HUGETLB_LOCK, MMU}, set(),
       "the VMM closes the guest_memfd: kvm_gmem_release unbinds and zaps, and the last "
       "reference evicts the inode (truncate, mark, free to the pool), as one step"),
    _s("release.destroy", {MMU}, set(), "the VM is destroyed (stage 2 dropped)"),
)}

# Locks an event that is not split needs (it runs as one step, as without --races).
ATOMIC_NEEDS: dict[str, frozenset[Lock]] = {
    "hw_error": frozenset({MF}), "scrub": frozenset({MF}),
    "vcpu_access": frozenset(), "fault": frozenset(), "vmm_access": frozenset(),
    "kernel_access": frozenset(), "convert": frozenset({INV_X, MMU}),
    "punch_hole": frozenset({INV_X}), "close": frozenset({INV_X, FOLIO, HUGETLB_LOCK, MMU}),
    "release": frozenset({INV_X, FOLIO, HUGETLB_LOCK, MMU}), "realloc": frozenset({INV_X, HUGETLB_LOCK}),
    "action": frozenset(),
    # guest behaviours and the machine-check window (docs/mce.md): accesses, like vcpu_access;
    # a step of theirs that calls memory_failure() waits like any consumption (model_system).
    # A guest's rounds re-fault after every exit (guest_round -> faultin -> kvm_gmem_get_pfn,
    # which takes the invalidate lock shared), so guest_run needs it as a stage-2 fault does:
    # it cannot fault a page in between punch.zap and punch.free (or the two conversion
    # stages) of another event. vcpu_mce (a machine check through the SPTE) and task_work
    # (kill_me_maybe) fault nothing in.
    "guest_run": frozenset({INV_S}), "vcpu_mce": frozenset(), "task_work": frozenset(),
}


def stage_needs(stage: str) -> frozenset[Lock]:
    return STAGES[stage].needs


def stage_carries(stage: str) -> frozenset[Lock]:
    return STAGES[stage].carries


# --------------------------------------------------------------------------- helpers


def _apply(host: Host, spec: StepSpec) -> None:
    """One whole model action inside a stage (the access a fault or a host fault ends in,
    a step of the release): ``Host.apply_in_step``, so that a stage is one step whether the
    checker or a scenario's ``stage`` action runs it (memfail.check.stage_action)."""
    host.apply_in_step(parse_action(spec[0], spec[1]))


def _run(host: HostState, fn: Callable[[], None]) -> None:
    """A stage's model calls, with what Host.apply does around a handler: a panic ends the
    host, a vanished target ends the step, pending signals are delivered."""
    try:
        fn()
        host.deliver_signals()
    except KernelPanic:
        pass
    except TargetGone:
        pass


def mf_record(host: HostState, pfn: int, hw_error: bool) -> None:
    """Stage mf.record: the head of policy_memory_failure() (memfail.model.kvm.gmem), for an
    unconsumed (AO) failure: the record and action_result, nothing unmapped or signalled."""
    if hw_error:
        host.phys.hw_errors.add(pfn)
    host.mf.hw_memory_failure = True
    host.phys.detected.add(pfn)
    folio = host.phys.folio_of(pfn)
    assert folio is not None  # first_stage found it claimed
    pol = gmem.policy(host)
    first = gmem.record_failure(host, folio, pfn, consumed=False)
    # get_hwpoison_page()'s reference, held until mf.notify (memory_failure() returns)
    inode = folio.mapping
    gmem.mf_pin(host, pfn, inode.huge_order if inode is not None else folio.order)
    if first:
        action_result(host, pfn, gmem.MSG_GMEM,
                      MF_DELAYED if pol.unconsumed != "kernel" else MF_RECOVERED)
    else:
        host.log(f"Memory failure: {pfn:#x}: guest_memfd page already recorded")


def _gmem_folio_now(host: HostState, pfn: int) -> Any:
    """The guest_memfd folio holding ``pfn`` now (None if it was truncated meanwhile: the
    kernel then finds folio->mapping gone and skips the rest)."""
    folio = host.phys.folio_of(pfn)
    if folio is None or folio.mapping is None or folio.mapping.kind != "gmem":
        return None
    return folio


def mf_unmap(host: HostState, pfn: int) -> None:
    """Stage mf.unmap: policy_memory_failure()'s apply_unmap_stage2 and unmap_host."""
    folio = _gmem_folio_now(host, pfn)
    if folio is None:
        return
    pol = gmem.policy(host)
    gmem.apply_unmap_stage2(host, folio.mapping, folio, pfn, pol.unmap_stage2, "memory_failure")
    if pol.unmap_host != "none":
        gmem.unmap_host(host, folio.mapping, folio, pfn, pol.unmap_host)


def mf_notify(host: HostState, pfn: int, via: str) -> None:
    """Stage mf.notify: the tail of policy_memory_failure() for an AO failure
    (apply_vm_on_error, then gmem.unconsumed_action: notify-vmm, defer, kill-vm, unusable or
    the kernel's handling), then memory_failure()'s trace event."""
    folio = _gmem_folio_now(host, pfn)
    if folio is not None:
        inode = folio.mapping
        gmem.apply_vm_on_error(host, inode, pfn)
        gmem.unconsumed_action(host, inode, folio, pfn)
    gmem.mf_unpin(host, pfn)   # put_page(): a folio truncated meanwhile is freed now
    host.emit(MemoryFailureCall(host.trace.step, pfn, (), 0, errno_name(0), via))
    if via == "uc_decode_notifier":  # memory_failure() returned 0 (R46)
        from memfail.model.kernel.inject import set_mce_nospec

        set_mce_nospec(host, pfn)


def fault_target(host: HostState, vm_name: str, gfn: int) -> tuple[Any, Any] | None:
    """(vm, slot) when a vCPU access to ``gfn`` takes the guest_memfd stage-2 fault path
    (no SPTE, a guest_memfd slot used for this gfn), else None."""
    vm = kvm_state(host).get(vm_name)
    if vm is None or vm.state != "running" or not vm.vmm.alive or gfn in vm.guest_offlined \
            or gfn in getattr(vm, "guest_pending_kill", ()):
        return None
    geo = host.geometry
    if spte_lookup(vm, gfn, tuple(sorted({0, geo.pmd_order, geo.pud_order}))) is not None:
        return None
    slot = vm.slot_of(gfn)
    if slot is None or slot.gmem is None or not (gfn in vm.private or slot.gmem_only):
        return None
    return vm, slot


def fault_get_pfn(host: HostState, vm_name: str, gfn: int) -> Ctx | None:
    """Stage fault.get_pfn: (mmu_seq snapshot, pfn, order, head pfn), or None when
    kvm_gmem_get_pfn fails (the caller then runs the whole access: the error exit)."""
    got = fault_target(host, vm_name, gfn)
    if got is None:
        return None
    vm, slot = got
    seq = vm.mmu_seq
    r = gmem.kvm_gmem_get_pfn(host, vm, slot, gfn)
    if isinstance(r, int):
        return None
    return (seq, *r)


def fault_map(host: HostState, vm_name: str, gfn: int, ctx: Ctx) -> str:
    """Stage fault.map: 'retry' when the fault is stale, 'gone' when the VM or its slot is,
    else installs the SPTE as memfail.model.kvm.kvm.faultin does and says 'mapped'."""
    seq, pfn, order, head_pfn = ctx
    vm = kvm_state(host).get(vm_name)
    if vm is None or vm.state != "running" or not vm.vmm.alive:
        return "gone"
    slot = vm.slot_of(gfn)
    if slot is None or not slot.bound:
        return "gone"
    if vm.mmu_seq != seq:  # is_page_fault_stale(): mmu_invalidate_retry_gfn
        return "retry"
    install_spte(vm, slot, gfn, pfn, order, head_pfn)
    return "mapped"


def host_fault_target(host: HostState, proc_name: str, addr: Any) -> tuple[Any, Any, int] | None:
    """(vma, inode, index) when a VMM access at ``addr`` faults on a guest_memfd mapping."""
    proc = host.processes.get(proc_name)
    if proc is None or not proc.alive or proc.mm is None:
        return None
    try:
        a = host.resolve_in(proc, addr)
    except (ModelInputError, TargetGone, KeyError, ValueError):
        return None
    vma = proc.mm.find_vma(a)
    if vma is None or vma.inode is None or vma.inode.kind != "gmem":
        return None
    if proc.mm.entry_key(vma, a, host.geometry.page_shift) is not None:
        return None
    return vma, vma.inode, vma.index_of(a, host.geometry.page_shift)


def kernel_access_faults(host: HostState, args: dict[str, Any]) -> bool:
    """Does this kernel_access fault a guest_memfd page in? A user that reaches guest memory
    through the VMM's page tables (reach ``hva``: vhost, a uaccess or GUP) where the VMM has
    no entry faults the page in as the VMM's own access would (kvm/kvm.py _kernel_target:
    gup), through kvm_gmem_fault_user_mapping, which takes the invalidate lock shared, as the
    ``hostfault.lookup`` stage does."""
    from memfail.model.kernel.kaccess import KERNEL_USER_BY_NAME

    u = KERNEL_USER_BY_NAME.get(args.get("user") or "")
    vm = kvm_state(host).get(args.get("vm") or "")
    if u is None or u.reach != "hva" or vm is None or args.get("gpa") is None:
        return False
    geo = host.geometry
    gfn = parse_size(args["gpa"], geo.page_size) >> geo.page_shift
    slot = vm.slot_of(gfn)
    if slot is None or slot.hva is None:
        return False
    addr = slot.hva + ((gfn - slot.base_gfn) << 12)
    return host_fault_target(host, vm.vmm.comm, addr) is not None


def fallocate_fails_early(host: HostState, args: dict[str, Any]) -> bool:
    """fallocate() fails before it takes a lock: the fd is not open (fdget(): the VMM
    exited or closed it), or a guest_memfd range kvm_gmem_fallocate() refuses with -EINVAL
    (R71: not aligned to the file's folio size, or past its end), which it checks before
    kvm_gmem_punch_hole() takes filemap_invalidate_lock and kvm_gmem_allocate() its shared
    form (virt/kvm/guest_memfd.c)."""
    proc = host.processes.get(args["proc"])
    if proc is None or not proc.alive or args["fd"] not in proc.fds:
        return True
    inode = proc.fds[args["fd"]].inode
    if inode.kind != "gmem":
        return False
    unit = 1 << (host.geometry.page_shift + inode.huge_order)
    off, length = args["offset"], args["len"]
    return bool(off % unit or length % unit or off + length > inode.size or length <= 0)


def atomic_needs(specs: list[StepSpec], kind: str, host: HostState) -> frozenset[Lock]:
    """The locks an event that runs as one step needs in this state: ``ATOMIC_NEEDS``, and
    the invalidate lock shared for a kernel_access that faults a guest_memfd page in (so it
    waits for a conversion, punch hole or release that holds it exclusive); none for a punch
    hole or fallocate that fails before taking one (``fallocate_fails_early``), so it does
    not wait for a conversion or release that holds the invalidate lock."""
    if kind in ("punch_hole", "realloc") and specs and specs[0][0] == "fallocate" and \
            fallocate_fails_early(host, specs[0][1]):
        return frozenset()
    needs = ATOMIC_NEEDS[kind]
    if kind == "kernel_access" and specs and specs[0][0] == "kernel_access" and \
            kernel_access_faults(host, specs[0][1]):
        needs = needs | {INV_S}
    return needs


def host_fault_lookup(host: HostState, proc_name: str, addr: Any) -> bool:
    """Stage hostfault.lookup: kvm_gmem_fault_user_mapping succeeds (else the caller runs
    the whole access, which takes the same error)."""
    got = host_fault_target(host, proc_name, addr)
    if got is None:
        return False
    _vma, inode, index = got
    return not isinstance(gmem.kvm_gmem_fault_user(host, inode, index), FaultError)


def host_fault_map(host: HostState, proc_name: str, addr: Any, write: bool) -> bool:
    """Stage hostfault.map: the tail of memfail.model.kernel.mmops.fault_in for a guest_memfd
    folio (PG_hwpoison check, PTE). False when the check refuses it (the whole access then
    runs and takes the hwpoison path)."""
    got = host_fault_target(host, proc_name, addr)
    if got is None:
        return True  # mapped meanwhile (or gone): the access goes its own way
    vma, inode, index = got
    folio = inode.lookup(index)
    if folio is None or page_poisoned(host, folio, index):
        return False
    proc = host.processes[proc_name]
    key = host.resolve_in(proc, addr) & ~(host.geometry.page_size - 1)
    host.set_pte(vma, key, PTE(PRESENT, folio.pfn, 0, write, vma.writable and vma.shared),
                 folio)
    return True


def punch_target(host: HostState, proc_name: str, fd: str, off: int, length: int) -> Any:
    """The guest_memfd inode when the punch hole would go ahead (kvm_gmem_fallocate's checks
    pass), else None (the whole fallocate runs and fails)."""
    proc = host.processes.get(proc_name)
    if proc is None or not proc.alive or fd not in proc.fds:
        return None
    inode = proc.fds[fd].inode
    if inode.kind != "gmem":
        return None
    unit = 1 << (host.geometry.page_shift + inode.huge_order)
    if off % unit or length % unit or off + length > inode.size or length <= 0:
        return None
    return inode


def convert_begin(host: HostState, vm_name: str, g0: int, g1: int, private: bool) -> None:
    """Stage convert.attributes: the head of do_set_attributes (zap, PRIVATE attribute)."""
    vm = get_vm(host, vm_name)
    zap_gfn_range(host, vm, g0, g1, "attributes changed")
    if private:
        vm.private.update(range(g0, g1))
    else:
        vm.private.difference_update(range(g0, g1))


def convert_end(host: HostState, vm_name: str, g0: int, g1: int, private: bool) -> None:
    """Stage convert.folios: the tail of do_set_attributes (gmem_convert per slot)."""
    vm = get_vm(host, vm_name)
    for s in vm.slots:
        lo, hi = max(g0, s.base_gfn), min(g1, s.base_gfn + s.npages)
        if lo < hi and s.gmem is not None:
            gmem.gmem_convert(host, s.gmem, lo - s.base_gfn + s.gmem_pgoff,
                                 hi - s.base_gfn + s.gmem_pgoff, private)


__all__ = ["ATOMIC_NEEDS", "STAGES", "Label", "atomic_needs", "conflicts"]


# --------------------------------------------------------------------------- the driver

# Continuation labels: ("~step", (("op", ORIGIN_LABEL), ("stage", STAGE))).
CONT = "~step"
RELEASE_STAGES = {"munmap": "release.munmap", "close": "release.close",
                  "vm_destroy": "release.destroy"}


def continuation(label: Label, stage: str) -> Label:
    return (CONT, (("op", label), ("stage", stage)))


def is_continuation(label: Any) -> bool:
    return isinstance(label, tuple) and bool(label) and label[0] == CONT


def origin(label: Label) -> Label:
    return label[1][0][1] if is_continuation(label) else label


def _gfn(host: HostState, args: dict[str, Any]) -> int:
    geo = host.geometry
    return int(parse_size(args["gpa"], geo.page_size) >> geo.page_shift)


def first_stage(specs: list[StepSpec], kind: str, host: HostState) -> tuple[str, Ctx] | None:
    """The first stage of the event whose model actions are ``specs`` in this state, or None
    when it runs as one step (not split, or about to fail on a check before any lock)."""
    if not specs:
        return None
    key, args = specs[0]
    if kind in ("hw_error", "scrub") and key in ("hw_error", "scrub") and "pfn" in args:
        pfn = args["pfn"]
        if key == "hw_error" and args.get("detect") != "scrub":
            return None
        if key == "scrub" and pfn not in host.phys.hw_errors:
            return None
        if policy_claimed_folio(host, pfn) is None:
            return None
        return "mf.record", (pfn, int(key == "hw_error"))
    if key == "guest_access" and kind in ("vcpu_access", "fault"):
        if fault_target(host, args["vm"], _gfn(host, args)) is not None:
            return "fault.get_pfn", ()
        return None
    if key in ("mem_read", "mem_write") and kind == "vmm_access":
        if host_fault_target(host, args["proc"], args["addr"]) is not None:
            return "hostfault.lookup", ()
        return None
    if key == "fallocate" and kind == "punch_hole" and args.get("mode") == "punch_hole":
        if punch_target(host, args["proc"], args["fd"], args["offset"], args["len"]) is None:
            return None
        return "punch.zap", ()
    if key == "set_attributes" and kind == "convert":
        vm = kvm_state(host).get(args["vm"])
        if vm is None or not vm.vmm.alive or vm.state == "destroyed":
            # a destroyed VM (its release ran vm_destroy): one step, as the Promela stages
            # take it (their split guard: vst != 3)
            return None
        if args.get("private") and vm.type == "default":
            return None  # -EINVAL at once (do_set_attributes): nothing to interleave
        return "convert.attributes", ()
    if kind == "release" and all(k in RELEASE_STAGES for k, _ in specs) and len(specs) > 1:
        return RELEASE_STAGES[key], (0,)
    return None


def run_stage(specs: list[StepSpec], host: Host, stage: str, ctx: Ctx) -> tuple[str | None, Ctx]:
    """Carry out one stage on ``host`` (mutated); the next stage and its context, or None
    when the event is over."""
    key, args = specs[0]
    whole = (None, ())
    if stage == "mf.record":
        _run(host, lambda: mf_record(host, ctx[0], bool(ctx[1])))
        return "mf.unmap", ctx
    if stage == "mf.unmap":
        _run(host, lambda: mf_unmap(host, ctx[0]))
        return "mf.notify", ctx
    if stage == "mf.notify":
        _run(host, lambda: mf_notify(host, ctx[0], "uc_decode_notifier"))
        return whole
    if stage == "fault.get_pfn":
        got = fault_get_pfn(host, args["vm"], _gfn(host, args))
        if got is None:
            _apply(host, specs[0])
            return whole
        return "fault.map", got
    if stage == "fault.map":
        res = fault_map(host, args["vm"], _gfn(host, args), ctx)
        return {"retry": ("fault.get_pfn", ()), "gone": whole}.get(res, ("fault.access", ()))
    if stage == "fault.access":
        # The SPTE installed at fault.map is gone again (a punch hole, conversion or the
        # policy zapped it since): the load takes a new EPT violation and the fault starts
        # over, under the invalidate lock shared, so it waits for whoever zapped it instead
        # of faulting the page in under that event's exclusive lock.
        if fault_target(host, args["vm"], _gfn(host, args)) is not None:
            return "fault.get_pfn", ()
        _apply(host, specs[0])
        return whole
    if stage == "hostfault.access":
        # the same for the VMM's PTE (zapped by unmap_mapping_range since hostfault.map)
        if host_fault_target(host, args["proc"], args["addr"]) is not None:
            return "hostfault.lookup", ()
        _apply(host, specs[0])
        return whole
    if stage == "hostfault.lookup":
        if host_fault_lookup(host, args["proc"], args["addr"]):
            return "hostfault.map", ()
        _apply(host, specs[0])
        return whole
    if stage == "hostfault.map":
        if host_fault_map(host, args["proc"], args["addr"], key == "mem_write"):
            return "hostfault.access", ()
        _apply(host, specs[0])
        return whole
    if stage in ("punch.zap", "punch.free"):
        geo = host.geometry
        inode = punch_target(host, args["proc"], args["fd"], args["offset"], args["len"])
        if inode is None:
            return whole
        start = args["offset"] >> geo.page_shift
        end = start + (args["len"] >> geo.page_shift)
        if stage == "punch.zap":
            _run(host, lambda: gmem.zap_bindings(host, inode, start, end, "punch hole"))
            return "punch.free", ()
        _run(host, lambda: gmem.free_range(host, inode, start, end, "punch"))
        return whole
    if stage in ("convert.attributes", "convert.folios"):
        g0 = _gfn(host, args)
        g1 = g0 + (parse_size(args["size"], host.geometry.page_size) >> host.geometry.page_shift)
        fn = convert_begin if stage == "convert.attributes" else convert_end
        _run(host, lambda: fn(host, args["vm"], g0, g1, bool(args["private"])))
        return ("convert.folios", ()) if stage == "convert.attributes" else whole
    if stage.startswith("release."):
        i = ctx[0]
        _apply(host, specs[i])
        if i + 1 < len(specs):
            return RELEASE_STAGES[specs[i + 1][0]], (i + 1,)
        return whole
    raise ValueError(f"unknown stage {stage!r}")
