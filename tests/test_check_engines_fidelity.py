"""Check-engine fidelity found by writing configurations from the docs alone: both engines
give the same verdict, and the verdict is the kernel's.

* `early-told` counts a thread that chose no PR_MCE_KILL policy as EARLY when
  vm.memory_failure_early_kill is 1 (R9, R12), as the model's kill path does;
* a physical-address kernel user (kdump, /proc/kcore, hibernation) reaches a shared page of
  an mmap-able guest_memfd whether or not the VMM's page tables map it;
* a policy that zaps only the failed subpage from stage 2 (`future`) maps a folio holding a
  failure at 4K, so a fault on a healthy neighbour does not bring the failed page back.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from check_cfgs import one_vm
from memfail.cli import main
from memfail.scenario.loader import load_scenario_text
from memfail.scenario.runner import run_scenario


def _verdicts(capsys: pytest.CaptureFixture[str], cfg: Path, *args: str
              ) -> dict[str, dict[str, str]]:
    main(["check", str(cfg), "--json", *args])
    doc = json.loads(capsys.readouterr().out)
    return {r["policy"]: {n: v["status"] for n, v in r["verdicts"].items()}
            for r in doc["results"]}


@pytest.mark.parametrize("engine", ["python", "spin"])
def test_early_told_honours_the_early_kill_sysctl(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], engine: str) -> None:
    text = one_vm("[mainline, minimum, future]",
                  ["{event: hw_error, vm: vm0, page: 1, detect: scrub}"], "{depth: 2, errors: 1}")
    text = text.replace("host: {memory: 64M, hugepages: {2M: 1}}",
                        "host: {memory: 64M, hugepages: {2M: 1}, "
                        "sysctl: {vm.memory_failure_early_kill: 1}}")
    cfg = tmp_path / "sysctl.yaml"
    cfg.write_text(text)
    got = _verdicts(capsys, cfg, "--engine", engine, "--property", "early-told")
    # mainline and minimum defer a scrub-found failure on guest_memfd and tell nobody;
    # future's AO goes to the first thread task_early_kill() picks: main, by the sysctl
    assert got == {"mainline": {"early-told": "FAIL"}, "minimum": {"early-told": "FAIL"},
                   "future": {"early-told": "PASS"}}


def test_an_out_of_range_sysctl_in_a_check_file_is_refused_at_its_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = one_vm("[mainline]", ["{event: hw_error, vm: vm0, page: 1}"])
    text = text.replace("hugepages: {2M: 1}}",
                        "hugepages: {2M: 1},\n       sysctl: {vm.memory_failure_early_kill: 3}}")
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    assert main(["check", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}:5: host.sysctl.vm.memory_failure_early_kill: " \
           "vm.memory_failure_early_kill = 3: the kernel accepts 0 or 1" in err


@pytest.mark.parametrize("engine", ["python", "spin"])
def test_a_physical_reader_reaches_a_shared_page_the_vmm_never_mapped(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], engine: str) -> None:
    """Hibernation checks nothing: a scrub-found error in a shared page the guest (not the
    VMM) touched panics the host while the image is made, under every policy."""
    cfg = tmp_path / "hib.yaml"
    cfg.write_text(one_vm("[mainline, minimum, future]", [
        "{event: hw_error, vm: vm0, page: 1, detect: scrub}",
        "{event: kernel_access, vm: vm0, page: 1, user: hibernate}"], "{depth: 3, errors: 1}"))
    got = _verdicts(capsys, cfg, "--engine", engine, "--property", "no-host-panic")
    assert got == {p: {"no-host-panic": "FAIL"} for p in ("mainline", "minimum", "future")}


def test_kernel_users_by_pfn_read_guest_memfd_shared_memory() -> None:
    result = run_scenario(load_scenario_text("""
name: pfn-readers
profile: next
host: {memory: 64M, hugepages: {2M: 2}, geometry: {pmd_order: 2, pud_order: 3}}
processes: [{name: qemu0, sigbus: handler}]
steps:
  - vm_create: {vm: vm0, vmm: qemu0, type: sw-protected}
  - gmem_create: {vm: vm0, fd: g0, size: 16K, flags: [mmap, init_shared], backing: 2M}
  - mmap: {proc: qemu0, name: ram, size: 16K, fd: g0, shared: true}
  - memslot: {vm: vm0, gpa: 0, size: 16K, gmem: g0, hva: ram}
  - guest_access: {vm: vm0, gpa: 8K, op: write, value: 7}
  - kernel_access: {user: vmcore, vm: vm0, gpa: 8K}
    expect: {ret: 7}
  - kernel_access: {user: kcore, vm: vm0, gpa: 8K}
    expect: {ret: 7}
  - kernel_access: {user: hibernate, vm: vm0, gpa: 8K}
    expect: {ret: 7}
"""))
    assert result.ok, "\n".join(str(f) for f in result.failures)


def test_future_maps_a_folio_holding_a_failure_at_4k() -> None:
    """After `future` zaps the failed subpage, the guest's access to a healthy page of the
    same folio maps that page alone: a machine check at the failed page's address finds no
    mapping of poison (the guest would fault, and the fault check refuses it)."""
    result = run_scenario(load_scenario_text("""
name: future-cap
profile: next
policy: future
host: {memory: 64M, hugepages: {2M: 2}, geometry: {pmd_order: 2, pud_order: 3}}
processes:
  - {name: qemu0, threads: [main, vcpu0], sigbus: handler, mce_kill: {main: early, vcpu0: late}}
steps:
  - vm_create: {vm: vm0, vmm: qemu0, type: sw-protected, vcpus: 1, behaviour: hostile}
  - gmem_create: {vm: vm0, fd: g0, size: 16K, flags: [mmap], backing: 2M}
  - mmap: {proc: qemu0, name: ram, size: 16K, fd: g0, shared: true}
  - memslot: {vm: vm0, gpa: 0, size: 16K, gmem: g0, hva: ram}
  - guest_access: {vm: vm0, gpa: 0, op: write}
  - guest_access: {vm: vm0, gpa: 4K, op: write}
  - hw_error: {vm: vm0, gpa: 4K, detect: latent}
  - machine_check: {vm: vm0, vcpu: 0, gpa: 4K}
    expect: {ret: AR}
  - task_work: {vm: vm0, vcpu: 0}
  - guest_access: {vm: vm0, gpa: 0, op: read}
    expect: {ret: 1}
  - machine_check: {vm: vm0, vcpu: 0, gpa: 4K}
    expect: {ret: no-poison}
  - guest_access: {vm: vm0, gpa: 4K, op: read}
    expect: {ret: exit}
"""))
    assert result.ok, "\n".join(str(f) for f in result.failures)
