"""Small check configurations shared by the tests: one sw-protected VM on a "2M" guest_memfd
(four base pages, mapped by its VMM and shared at the start) with a QEMU-like VMM."""

from __future__ import annotations


def one_vm(policies: str, events: list[str], bounds: str = "{depth: 6, errors: 1}",
           name: str = "one-vm") -> str:
    """The configuration's text: ``policies`` as YAML flow text, one line per event."""
    lines = [f"name: {name}", f"policies: {policies}", "geometry: {pmd_order: 2}",
             "host: {memory: 64M, hugepages: {2M: 1}}", "processes:",
             "  - {name: qemu0, threads: [main], sigbus: handler}", "guest_memfd:",
             "  - {name: g0, size: 2M, backing: 2M, flags: [mmap, init_shared]}", "vms:",
             "  - {name: vm0, type: sw-protected, vmm: qemu0, gmem: g0}", "events:",
             *(f"  - {e}" for e in events), f"bounds: {bounds}"]
    return "\n".join(lines) + "\n"


# a latent error, a vCPU's machine check on it, the VMM's main thread loading it
MCE_THEN_VMM = ["{event: hw_error, vm: vm0, page: 1, detect: latent}",
                "{event: vcpu_mce, vm: vm0, page: 1}",
                "{event: vmm_access, vm: vm0, page: 1, limit: 1}"]
