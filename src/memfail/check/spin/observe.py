"""The observable projection both engines agree on, step by step.

The Promela model keeps a small abstract state; ``observe`` computes the same projection from
the Python model's Host and Monitor, so a walk of one engine can be checked against the other
at every step (tests/test_check_spin_agree.py). Only what the Promela model keeps is observed:
per VM page, whether its frame still backs the VM, has a hardware error, was reported to
memory_failure(), is recorded (``poison_records``), is mapped in the VMM's page table and in
stage 2, how often its poison was consumed and whether the guest offlined the page after a
vMCE (and will kill its user on the next access); per VM, the KVM state and whether its VMM
lives; the panic flag; the free huge pages of the VMs' pool, 2M or 1G (free_huge_pages: the
spares and the VMs' frames on the free list, marked ones included; FREE_POOL in Promela); and
which properties are violated.
"""

from __future__ import annotations

from typing import Any

from memfail.check.properties import PROPERTIES, poison_records

# The order of the observed fields of one page and one VM, shared with the Promela printer.
PAGE_FIELDS = ("held", "err", "det", "rec", "pte", "spte", "cons", "goff", "gpk", "priv")
VM_FIELDS = ("state", "alive")
VM_STATES = ("running", "paused", "killed")


def observe(system: Any, state: Any) -> tuple[int, ...]:
    """The projection of a ``ModelSystem`` state, as a flat tuple of small ints in the order
    of ``layout(system)``."""
    host = state.host
    mon = state.monitor
    frames = system._frames(host)
    consumed = dict(mon.consumed)
    kvm_vms = host.ext.get("vms", {})
    recs = poison_records(host)
    out: list[int] = []
    for vm in system.config.vms:
        proc = host.processes.get(vm.vmm)
        kvm_vm = kvm_vms.get(vm.name)
        mm = proc.mm if proc is not None and proc.alive else None
        for page in range(pages_of(system, vm.name)):
            pfn = system.pfn_of[(vm.name, page)]
            held = frames.get((vm.name, page)) == pfn
            pte = 0
            if mm is not None:
                region = proc.regions.get(f"{vm.name}.ram") if proc is not None else None
                if region is not None:
                    got = mm.ptes.get(region.start + page * 4096)
                    if got is not None:
                        pte = 2 if got.kind == "hwpoison" else 1
            spte = 0
            if kvm_vm is not None:
                from memfail.model.kvm.kvm import spte_lookup
                geo = host.geometry
                orders = tuple(sorted({0, geo.pmd_order, geo.pud_order}))
                spte = int(spte_lookup(kvm_vm, page, orders) is not None)
            goff = int(kvm_vm is not None and page in kvm_vm.guest_offlined)
            gpk = int(kvm_vm is not None and page in kvm_vm.guest_pending_kill)
            priv = int(kvm_vm is not None and page in kvm_vm.private)
            out += [int(held), int(pfn in host.phys.hw_errors), int(pfn in mon.detected),
                    int(pfn in recs), pte, spte, consumed.get(pfn, 0), goff, gpk, priv]
        state_name = kvm_vm.state if kvm_vm is not None else "running"
        out += [VM_STATES.index(state_name) if state_name in VM_STATES else 3,
                int(proc is not None and proc.alive)]
    out.append(int(bool(host.panicked)))
    out.append(host.hugetlb.hstate(frame_order(system)).free_huge_pages)
    for p in PROPERTIES:
        out.append(int(p.check(host, mon) is not None))
    return tuple(out)


def frame_order(system: Any) -> int:
    """The order of the huge folio behind each VM, as both Promela models keep it (one per
    VM, all of one size): ``pud_order`` when every VM's guest_memfd entry is backed by 1G
    pages (a 1G guest_memfd folio, or under the hugetlbfs baseline a 1G HugeTLB page), else
    ``pmd_order``. promela.refuse_layout refuses VMs of two sizes."""
    cfg = system.config
    backing = {g.name: g.backing for g in cfg.guest_memfd}
    if cfg.vms and all(backing.get(vm.gmem or "") == "1G" for vm in cfg.vms):
        return int(cfg.geometry.pud_order)
    return int(cfg.geometry.pmd_order)


def spare_pages(system: Any) -> int:
    """The pool's huge pages no VM starts on (both Promela models' ``nspare``): the free
    pages of the VMs' pool (``host.hugepages``, 2M or 1G as ``frame_order``) beyond one per
    VM."""
    cfg = system.config
    pool = "1G" if frame_order(system) != cfg.geometry.pmd_order else "2M"
    return max(0, cfg.host.hugepages.get(pool, 0) - len(cfg.vms))


def pages_of(system: Any, vm: str) -> int:
    return 1 + max(p for (v, p) in system.pfn_of if v == vm)


def layout(system: Any) -> list[str]:
    """The names of the observed values, in order."""
    names: list[str] = []
    for vm in system.config.vms:
        for page in range(pages_of(system, vm.name)):
            names += [f"{vm.name}[{page}].{f}" for f in PAGE_FIELDS]
        names += [f"{vm.name}.{f}" for f in VM_FIELDS]
    names += ["panic", "pool.free"]
    names += [f"violated.{p.name}" for p in PROPERTIES]
    return names
