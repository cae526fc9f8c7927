"""Small check configurations shared by the tests: one sw-protected VM on a "2M" guest_memfd
(four base pages, mapped by its VMM and shared at the start) with a QEMU-like VMM; two VMs
whose VMMs have no SIGBUS handler (``SIGBUS_DISPOSITIONS``); and a shipped configuration
file made 1G (``one_g``)."""

from __future__ import annotations

from pathlib import Path


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


# Two VMs whose VMMs are not QEMU: qd leaves SIGBUS at its default action, qi ignores it
# (each main thread EARLY). Unconsumed and consumed failures, the vCPU thread's own load, a
# recovering kernel read (memory_failure(pfn, 0): an AO to tell), a punch hole.
SIGBUS_DISPOSITIONS = """\
name: sigbus-dispositions
description: two VMMs without QEMU's SIGBUS handler, one with the default action and one ignoring SIGBUS
policies: [mainline, minimum, kill-vm, future, "minimum{unconsumed=notify-vmm,honor_early=true,handles=all}", "future{sigbus_addr=none}"]
host: {hugepages: {2M: 3}}
processes:
  - {name: qd, threads: [main, vcpu0], mce_kill: {main: early}, sigbus: default}
  - {name: qi, threads: [main, vcpu0], mce_kill: {main: early}, sigbus: ignore}
guest_memfd:
  - {name: gd, size: 2M, backing: 2M, flags: [mmap, init_shared]}
  - {name: gi, size: 2M, backing: 2M, flags: [mmap, init_shared]}
vms:
  - {name: vmd, vmm: qd, gmem: gd, type: sw-protected}
  - {name: vmi, vmm: qi, gmem: gi, type: sw-protected}
events:
  - {event: hw_error, vm: [vmd, vmi], page: 1, detect: [latent, scrub]}
  - {event: vcpu_access, vm: [vmd, vmi], page: 1}
  - {event: vmm_access, vm: [vmd, vmi], page: 1, thread: vcpu0}
  - {event: kernel_access, vm: [vmd, vmi], page: 1, user: vhost}
  - {event: punch_hole, vm: vmd, page: 0, pages: 4, limit: 1}
bounds: {errors: 1}
"""


def one_g(path: Path, tmp_path: Path) -> Path:
    """The configuration file ``path`` with every guest_memfd a 1G one (a scaled 1G page of
    2^pud_order = 4 pages, as the 2M pages of the shipped agreement files are) and the
    pool's 2M pages made 1G, written in ``tmp_path``."""
    import yaml

    d = yaml.safe_load(path.read_text())
    d["geometry"] = {"pmd_order": 1, "pud_order": 2}
    d["host"]["hugepages"] = {"1G": d["host"]["hugepages"]["2M"]}
    d["host"]["memory"] = "16G"
    for g in d["guest_memfd"]:
        g["size"] = g["backing"] = "1G"
    out = tmp_path / f"{path.stem}-1g.yaml"
    out.write_text(yaml.safe_dump(d, sort_keys=False))
    return out
