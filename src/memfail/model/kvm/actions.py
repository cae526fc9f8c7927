"""Actions of the KVM / guest_memfd / VMM part of the model.

A VM is owned by a VMM process whose threads include one vCPU thread per vCPU (``vcpu0``,
``vcpu1``…, created on ``vm_create`` if missing, inheriting the main thread's PR_MCE_KILL flags
as clone does, Q1). Guest physical addresses accept the same size syntax as sizes (``4G``,
``0x100000000``, ``4G+8K`` is written ``4G`` plus ``offset``).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ..actions import Action, Size, register_actions


class VmCreate(Action):
    """KVM_CREATE_VM by process ``vmm``: a VM named ``vm`` of ``type`` default, sw-protected,
    snp or tdx (snp/tdx are confidential: no machine-check virtualization, private memory not
    readable by the host). ``vcpus`` vCPU threads. ``mcg_ser_p`` (the guest CPU model
    advertises software error recovery, Q4); ``guest_recovery`` is the guest kernel's
    vm.memory_failure_recovery (0: any vMCE panics the guest, KV-10). ``behaviour`` is what
    the guest does after a vMCE: cooperative (offlines the page), careless (ignores it and
    touches the page again), hostile (touches it from every vCPU, ``effort`` times each),
    confidential (no vMCE can reach it; the vCPU re-executes the load); see ``guest_run``.
    ``guest_kernel_mce``: a vMCE on the guest kernel's own page panics the guest, or is
    recovered (the guest kernel's read had a machine-check-safe fixup)."""

    key: ClassVar[str] = "vm_create"
    vm: str
    vmm: str
    type: Literal["default", "sw-protected", "snp", "tdx"] = "default"
    vcpus: int = Field(default=1, ge=1, le=64)
    mcg_ser_p: bool = True
    guest_recovery: bool = True
    # the guest as an actor (vmm/guest.py, docs/mce.md): what it does after a vMCE
    behaviour: Literal["cooperative", "careless", "hostile", "confidential"] = "cooperative"
    effort: int = Field(default=10, ge=1, le=100_000)
    guest_kernel_mce: Literal["panic", "recover"] = "panic"


class GmemCreate(Action):
    """KVM_CREATE_GUEST_MEMFD for ``vm``: an fd named ``fd`` in the VMM process, ``size``
    bytes, ``flags`` from ``mmap`` (GUEST_MEMFD_FLAG_MMAP) and ``init_shared``
    (GUEST_MEMFD_FLAG_INIT_SHARED), ``backing`` 4K (order-0 page-cache folios, R62) or 2M/1G
    (folios from the HugeTLB pool, R87). Under the ``hugetlbfs`` policy the same action
    creates a hugetlbfs memfd mapped by the VMM instead (S10 baseline)."""

    key: ClassVar[str] = "gmem_create"
    vm: str
    fd: str
    size: Size
    flags: list[Literal["mmap", "init_shared"]] = Field(default_factory=list)
    backing: Literal["4K", "2M", "1G"] = "4K"


class Memslot(Action):
    """KVM_SET_USER_MEMORY_REGION2: slot ``slot`` of ``vm`` covering guest physical
    [gpa, gpa+size). ``gmem`` binds a guest_memfd fd at ``gmem_offset`` (private memory and,
    for MMAP guest_memfd, shared memory too); ``hva`` names the VMM mapping that backs shared
    memory (userspace_addr; an HVA-only slot has no ``gmem``)."""

    key: ClassVar[str] = "memslot"
    vm: str
    slot: int = 0
    gpa: Size
    size: Size
    gmem: str | None = None
    gmem_offset: Size = 0
    hva: str | None = None


class SetAttributes(Action):
    """KVM_SET_MEMORY_ATTRIBUTES / in-place conversion: make [gpa, gpa+size) private or
    shared. With HugeTLB-backed guest_memfd, converting part of a huge folio to shared splits
    it to 4K folios, and converting all of it back to private merges it (R76, R87). Only a VM
    that can have private memory (``type`` sw-protected, snp or tdx) takes ``private: true``:
    on a ``default`` VM the ioctl fails with EINVAL and nothing changes."""

    key: ClassVar[str] = "set_attributes"
    vm: str
    gpa: Size
    size: Size
    private: bool


class GuestAccess(Action):
    """Guest software on vCPU ``vcpu`` loads (``op: read``) or stores (``op: write``) at
    ``gpa``. Runs the stage-2 fault path when needed (kvm_gmem_get_pfn for private/gmem-only
    memory, GUP of the HVA otherwise), consumes a latent hardware error on a load (guest-mode
    machine check, R45), and reports what KVM_RUN returned. ``page`` says whether the guest
    uses that page for ``user`` data or its ``kernel`` (a vMCE on a kernel page panics the
    guest). Returns the value read, 0, or the outcome (``exit``, ``paused``, ``vm-dead``,
    ``guest-avoided`` when the guest has offlined that page)."""

    key: ClassVar[str] = "guest_access"
    vm: str
    vcpu: int = 0
    gpa: Size
    op: Literal["read", "write"] = "read"
    value: int = 1
    page: Literal["user", "kernel"] = "user"


class KernelAccess(Action):
    """A host kernel user reads guest memory at ``gpa`` of ``vm`` (or user memory at
    ``proc``/``addr``). ``user`` names a kernel user of the inventory (`memfail
    kernel-users`, docs/kernel-users.md), which gives whether it checks for poison first
    (PG_hwpoison of the page or folio, PG_hwpoison of the raw page, or a hwpoison entry in the
    VMM's page tables), whether its copy is machine-check safe on the scenario's kernel, and
    whether it reaches guest_memfd memory at all: kcore, hibernate, migration, coredump,
    vmcore, vhost, kvm, kvm-map, kworker, khugepaged, ksm, process_vm_readv.
    ``checks_hwpoison`` / ``mc_safe`` override the inventory. Returns the value read;
    ``skipped`` (it saw the poison first), ``not-reached`` (it never touches that memory),
    ``truncated`` (a core dump stopped), an errno (EFAULT: the uaccess faulted or a copy
    failed; EHWPOISON: a migration or collapse failed), or the host panics (R47)."""

    key: ClassVar[str] = "kernel_access"
    user: Literal["kcore", "hibernate", "migration", "coredump", "vmcore", "vhost", "kvm",
                  "kvm-map", "kworker", "khugepaged", "ksm", "process_vm_readv"]
    vm: str | None = None
    gpa: Size | None = None
    proc: str | None = None
    addr: str | int | None = None
    checks_hwpoison: bool | None = None
    mc_safe: bool | None = None


class VmDestroy(Action):
    """The VMM closes the VM: its guest_memfd files are released (R72) and the VM fd goes."""

    key: ClassVar[str] = "vm_destroy"
    vm: str


class VmReset(Action):
    """The VMM resets the guest (Q6): kvm_unpoison_all remaps every recorded poisoned page
    (a hole punch for file-backed RAM) and the guest starts with healthy pages."""

    key: ClassVar[str] = "vm_reset"
    vm: str


KVM_ACTIONS = (VmCreate, GmemCreate, Memslot, SetAttributes, GuestAccess, KernelAccess,
               VmDestroy, VmReset)
register_actions(*KVM_ACTIONS)

from ..vmm import guestactions as _guestactions  # noqa: E402,F401  (registers guest_run)
