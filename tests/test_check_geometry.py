"""Configurations beyond the standard one: several huge folios per guest_memfd, 1G backing,
host mappings of pages past the first of a huge folio, and --races on them.

Each case is a way the model once went wrong on a configuration written from the docs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memfail.check.backends import make_backend
from memfail.check.config import load_config_text
from memfail.check.explorer import FAIL, PASS, Bounds, Options, explore
from memfail.check.model_system import ModelSystem
from memfail.cli import main
from memfail.scenario.loader import load_scenario_text
from memfail.scenario.runner import run_scenario

TWO_FOLIOS = """\
policies: [minimum]
geometry: {pmd_order: 2, pud_order: 3}
host: {memory: 8G, hugepages: {2M: 4}}
processes:
  - {name: qemu, threads: [main, vcpu0], mce_kill: {main: early}, sigbus: handler}
guest_memfd:
  - {name: g, size: 4M, backing: 2M}
vms:
  - {name: vm, vmm: qemu, gmem: g}
events:
  - {event: hw_error, vm: vm, page: [1, 5], detect: scrub}
  - {event: vcpu_access, vm: vm, page: [1, 5]}
bounds: {depth: 2, errors: 1}
"""

ONE_GIG = """\
policies: [future]
geometry: {pmd_order: 1, pud_order: 2}
host: {memory: 8G, hugepages: {1G: 2}}
processes:
  - {name: qemu, threads: [main, vcpu0], mce_kill: {main: early, vcpu0: late}, sigbus: handler}
guest_memfd:
  - {name: g, size: 1G, backing: 1G, flags: [mmap, init_shared]}
vms:
  - {name: td, vmm: qemu, type: tdx, gmem: g}
events:
  - {event: hw_error, vm: td, page: 1, detect: latent}
  - {event: vcpu_access, vm: td, page: 1}
  - {event: vmm_access, vm: td, page: 1}
  - {event: punch_hole, vm: td, page: 0, pages: 4, limit: 1}
bounds: {depth: 5, errors: 1}
"""


def test_pages_of_a_second_huge_folio_map_to_its_frames() -> None:
    """guest_memfd indexes a huge folio at its first page (not in folio units as hugetlbfs
    does): page 5 of a guest_memfd of two 4-page folios (private memory: not split) is page 1
    of the second folio."""
    sysm = ModelSystem(load_config_text(TWO_FOLIOS), "minimum")
    s = sysm.initial()
    folios = sorted(f.pfn for f in s.host.processes["qemu"].fds["g"].inode.pages.values())
    assert len(folios) == 2
    assert sysm.pfn_of[("vm", 1)] == folios[0] + 1
    assert sysm.pfn_of[("vm", 5)] == folios[1] + 1
    assert sorted(sysm.pfn_of) == [("vm", p) for p in range(8)]
    assert all(label[1] for _, label in sysm.entries)
    assert not sysm.unavailable, "every page of the alphabet has a frame"


def test_punch_hole_unmaps_every_page_of_a_huge_folio_from_the_vmm(tmp_path: Path) -> None:
    """Punching a HugeTLB-backed guest_memfd range truncates it: unmap_mapping_range removes
    the VMM's 4K PTEs on every page of the folio, not only the first, before the folio goes
    back to the pool (a PTE left behind would let the VMM read a freed huge page)."""
    text = """\
name: punch-unmaps
profile: next
policy: future
host: {memory: 8G, hugepages: {1G: 2}, geometry: {pmd_order: 1, pud_order: 2}}
processes:
  - {name: qemu, threads: [main, vcpu0]}
steps:
  - vm_create: {vm: td, vmm: qemu, type: tdx}
  - gmem_create: {vm: td, fd: g, size: 16K, flags: [mmap, init_shared], backing: 1G}
  - mmap: {proc: qemu, name: td.ram, size: 16K, fd: g, shared: true}
  - memslot: {vm: td, gpa: 0, size: 16K, gmem: g, hva: td.ram}
  - mem_write: {proc: qemu, addr: td.ram+1p, value: 7}
  - mem_read: {proc: qemu, addr: td.ram+2p}
  - pagemap: {proc: qemu, addr: td.ram+1p}
    expect: {ret: {present: true}}
  - fallocate: {proc: qemu, fd: g, mode: punch_hole, offset: 0, len: 16K}
    expect: {ret: 0}
  - pagemap: {proc: qemu, addr: td.ram+1p}
    expect: {ret: {present: false}}
  - pagemap: {proc: qemu, addr: td.ram+2p}
    expect: {ret: {present: false}}
  - mem_read: {proc: qemu, addr: td.ram+1p}
    expect: {ret: 0, signals: []}   # a fresh folio, zeroed: not the freed one's data
"""
    res = run_scenario(load_scenario_text(text))
    assert res.failures == [], res.failures


def _explore(text: str, races: bool) -> dict[str, str]:
    sysm = ModelSystem(load_config_text(text), "future", races=races)
    with make_backend(1) as backend:
        r = explore(sysm, backend, Bounds(max_depth=5), Options(stop_when_all_fail=False))
    return {name: v.status for name, v in r.verdicts.items()}


@pytest.mark.parametrize("races", [False, True])
def test_future_contains_a_consumed_failure_on_1g_backing(races: bool) -> None:
    """`future` unmaps failed subfolios: the poison a guest consumed is never consumed again,
    with or without --races. With races, a host fault that passed the policy's check before
    the consumption holds the folio lock until its PTE exists; memory_failure() waits for that
    lock (it takes it after marking the page), so its unmap removes the PTE."""
    verdicts = _explore(ONE_GIG, races)
    assert verdicts["contained"] != FAIL
    assert verdicts["no-host-panic"] != FAIL


def test_every_counterexample_of_a_races_run_on_two_folios_replays(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "two.yaml"
    cfg.write_text(TWO_FOLIOS.replace("depth: 2", "depth: 4"))
    out = tmp_path / "cex"
    rc = main(["check", str(cfg), "--races", "--json", "--out", str(out)])
    doc = json.loads(capsys.readouterr().out)
    files = [v["file"] for r in doc["results"] for v in r["verdicts"].values()
             if v["status"] == FAIL]
    assert rc == 1 and files
    assert any(v["status"] in (PASS, "PARTIAL") for r in doc["results"]
               for v in r["verdicts"].values())
    for f in files:
        assert main(["run", f]) == 0, Path(f).read_text()


def test_guest_memfd_file_is_released_when_its_last_reference_goes() -> None:
    """kvm_gmem_release runs when the last reference to the file goes (R72): the VMM's mapping
    holds one (vma->vm_file), so closing the fd keeps the memslot bound and the guest running;
    the munmap that drops the last reference unbinds it, and guest faults then fail."""
    text = """\
name: gmem-file-release
profile: next
policy: mainline
host: {memory: 8G}
processes:
  - {name: qemu, threads: [main, vcpu0]}
steps:
  - vm_create: {vm: vm, vmm: qemu}
  - gmem_create: {vm: vm, fd: g, size: 16K, flags: [mmap, init_shared]}
  - mmap: {proc: qemu, name: ram, size: 16K, fd: g, shared: true}
  - memslot: {vm: vm, gpa: 0, size: 16K, gmem: g, hva: ram}
  - guest_access: {vm: vm, gpa: 0, op: write}
    expect: {ret: 0}
  - close: {proc: qemu, fd: g}
  - guest_access: {vm: vm, gpa: 4K, op: write}
    expect: {ret: 0}
  - munmap: {proc: qemu, addr: ram}
  - guest_access: {vm: vm, gpa: 8K, op: write}
    expect: {errno: EFAULT}
"""
    res = run_scenario(load_scenario_text(text))
    assert res.failures == [], res.failures


def test_a_second_raw_page_of_a_handled_huge_folio_needs_no_second_tell() -> None:
    """memory_failure() on another raw page of a HugeTLB folio it already handled returns
    -EHWPOISON; the EARLY thread's first BUS_MCEERR_AO covered the whole folio (si_addr_lsb),
    so early-told holds with two errors in one huge page of a hugetlbfs-backed VM."""
    cfg = """\
policies: [mainline]
host: {memory: 8G, hugepages: {2M: 2}}
processes:
  - {name: qemu, threads: [main, vcpu0], mce_kill: {main: early}, sigbus: handler}
vms:
  - {name: vm, vmm: qemu, memory: 2M}
events:
  - {event: hw_error, vm: vm, page: [0, 3], detect: scrub}
bounds: {depth: 3, errors: 2}
"""
    sysm = ModelSystem(load_config_text(cfg), "mainline")
    with make_backend(1) as backend:
        r = explore(sysm, backend, Bounds(max_depth=3), Options(stop_when_all_fail=False))
    assert r.verdicts["early-told"].status != FAIL
    assert r.states > 3


def test_memory_still_mapped_after_close_belongs_to_the_vm() -> None:
    """After the VMM closes its guest_memfd fd (its mapping keeps the file), an error in that
    memory is still the VM's: the SIGBUS a later VMM access takes goes to its owner
    (sigbus-owner-only holds, also with --races where the error is recorded before
    memory_failure() returns)."""
    cfg = """\
policies: [unusable]
geometry: {pmd_order: 3, pud_order: 4}
host: {memory: 8G}
processes:
  - {name: qemu, threads: [main, vcpu0], mce_kill: {main: early}, sigbus: ignore}
guest_memfd:
  - {name: g, size: 32K, backing: 4K, flags: [mmap, init_shared]}
vms:
  - {name: vm, vmm: qemu, type: snp, gmem: g}
events:
  - {event: close, vm: vm, limit: 1}
  - {event: hw_error, vm: vm, page: 2, detect: scrub}
  - {event: vmm_access, vm: vm, page: 2, write: true}
properties: [sigbus-owner-only]
bounds: {depth: 4, errors: 1}
"""
    for races in (False, True):
        sysm = ModelSystem(load_config_text(cfg), "unusable", races=races)
        with make_backend(1) as backend:
            r = explore(sysm, backend, Bounds(max_depth=4), Options(stop_when_all_fail=False))
        assert r.verdicts["sigbus-owner-only"].status != FAIL, (races, r.verdicts)
