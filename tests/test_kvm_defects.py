"""KVM / QEMU model defects found in review (issue 10, item 7), each asserted on what a user
sees: the process's exit signal and the VM state, a memslot's return value, a check verdict and
the policy-hook coverage line of `memfail check`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from typer.testing import CliRunner

from memfail.check import cli
from memfail.model.trace import KernelLog, PolicyEvent
from memfail.scenario import load_scenario_text, run_scenario

QEMU = "processes:\n  - {name: qemu, threads: [main], sigbus: handler, mce_kill: {main: early}}\n"


def _run(text: str) -> Any:
    return run_scenario(load_scenario_text(text))


def _log(r: Any) -> str:
    return "\n".join(e.text for e in r.trace.of(KernelLog))


def _check(tmp_path: Path, config: str, *args: str) -> dict[str, Any]:
    path = tmp_path / "c.yaml"
    path.write_text(config)
    app = typer.Typer()
    app.command()(cli.check)
    r = CliRunner().invoke(app, [str(path), "--json", *args])
    assert r.exit_code in (0, 1), r.output
    doc: dict[str, Any] = json.loads(r.stdout)
    return doc


# ------------------------------------------------------------ AR on QEMU's main thread


MAIN_THREAD_READS = """\
name: main-thread-reads
profile: linux-6.18
policy: mainline
""" + QEMU + """\
steps:
  - vm_create: {vm: vm0, vmm: qemu, vcpus: 1}
  - mmap: {proc: qemu, name: ram, size: 2M}
  - memslot: {vm: vm0, gpa: 4G, size: 2M, hva: ram}
  - mem_write: {proc: qemu, addr: ram+8K}
  - hw_error: {proc: qemu, addr: ram+8K, detect: %s}
  - mem_read: {proc: qemu, thread: main, addr: ram+8K}
"""


def test_ar_on_qemu_main_thread_is_forced_and_kills_with_sigbus() -> None:
    """QEMU blocks SIGBUS on its main thread (qemu_signal_init); force_sig_mceerr unblocks it
    and resets it to SIG_DFL: QEMU dies of SIGBUS, never of its kvm_on_sigbus assertion."""
    r = _run(MAIN_THREAD_READS % "latent")
    assert r.processes["qemu"]["state"] == "killed"
    assert r.processes["qemu"]["signal"] == 7  # SIGBUS, not SIGABRT (6)
    assert r.host_outcomes["vm_states"] == {"vm0": "killed"}
    assert "qemu: kvm_on_sigbus: assertion" not in _log(r)


def test_ao_on_qemu_main_thread_still_reaches_its_handler_through_signalfd() -> None:
    """An AO SIGBUS (send_sig_mceerr) waits in the main thread's mask and is read from the
    signalfd: QEMU injects an action-optional vMCE and lives (Q2, Q4)."""
    r = _run((MAIN_THREAD_READS % "scrub").rsplit("  - mem_read", 1)[0])
    assert r.processes["qemu"]["state"] == "running"
    assert "BUS_MCEERR_AO injected" in _log(r)


def test_a_thread_that_unblocked_sigbus_takes_ar_in_qemus_handler() -> None:
    """Only with SIGBUS unblocked by hand does the AR reach kvm_on_sigbus, which aborts."""
    text = (MAIN_THREAD_READS % "latent").replace(
        "  - mem_read:", "  - sigprocmask: {proc: qemu, thread: main, block: false}\n"
                         "  - mem_read:")
    r = _run(text)
    assert r.processes["qemu"]["signal"] == 6


# ------------------------------------------------------------ kvm_gmem_bind


def test_kvm_gmem_bind_refuses_another_vms_guest_memfd() -> None:
    """kvm_gmem_bind(): ``if (f->kvm != kvm) goto err;`` -> -EINVAL."""
    r = _run("""\
name: foreign-gmem
profile: linux-6.18
policy: mainline
""" + QEMU + """\
steps:
  - vm_create: {vm: vm0, vmm: qemu, vcpus: 1}
  - vm_create: {vm: vm1, vmm: qemu, vcpus: 1}
  - gmem_create: {vm: vm0, fd: gmem, size: 2M}
  - memslot: {vm: vm1, gpa: 4G, size: 2M, gmem: gmem}
  - memslot: {vm: vm0, gpa: 4G, size: 2M, gmem: gmem}
""")
    foreign, own = r.steps[3], r.steps[4]
    assert foreign.errno == "EINVAL"
    assert own.errno is None and own.ret == 0


# ------------------------------------------------------------ TDX, converted to shared

TDX = """\
name: tdx-shared
profile: next
policies: [unmap, mainline]
geometry: {pmd_order: 2, pud_order: 3}
host: {memory: 8G, hugepages: {2M: 4}}
processes:
  - {name: qemu0, threads: [main, vcpu0], mce_kill: {main: early, vcpu0: late}, sigbus: handler}
guest_memfd:
  - {name: gmem0, size: 2M, backing: %s, flags: [mmap]}
vms:
  - {name: vm0, vmm: qemu0, gmem: gmem0, type: tdx}
events:
  - {event: convert, vm: vm0, page: 0, pages: %d, to: shared}
  - {event: hw_error, vm: vm0, page: 0}
  - {event: vcpu_access, vm: vm0, page: 0}
bounds: {depth: 3, errors: 1}
"""


def test_tdx_page_converted_to_shared_is_zapped_when_consumed(tmp_path: Path) -> None:
    """The shared SPTE lives in the TDX VM's direct root: the invalidation must reach it, or
    the guest consumes the poison again (the 'contained' property)."""
    for backing, pages in (("2M", 4), ("4K", 1)):
        doc = _check(tmp_path, TDX % (backing, pages))
        for res in doc["results"]:
            assert res["verdicts"]["contained"]["status"] != "FAIL", (backing, res["policy"])


def test_tdx_shared_consumption_in_a_scenario_exits_instead_of_reconsuming() -> None:
    r = _run("""\
name: tdx-shared-consumed
profile: next
policy: unmap
host: {memory: 8G, hugepages: {2M: 4}, geometry: {pmd_order: 2, pud_order: 3}}
processes:
  - {name: qemu0, threads: [main, vcpu0], sigbus: handler, mce_kill: {main: early, vcpu0: late}}
steps:
  - vm_create: {vm: vm0, vmm: qemu0, type: tdx, vcpus: 1}
  - gmem_create: {vm: vm0, fd: gmem0, size: 16K, flags: [mmap], backing: 2M}
  - mmap: {proc: qemu0, name: ram, size: 16K, fd: gmem0, shared: true}
  - memslot: {vm: vm0, gpa: 0, size: 16K, gmem: gmem0, hva: ram}
  - guest_access: {vm: vm0, gpa: 0, op: write}
  - set_attributes: {vm: vm0, gpa: 0, size: 16K, private: false}
  - hw_error: {vm: vm0, gpa: 0}
  - guest_access: {vm: vm0, gpa: 0}
""")
    consumed = r.steps[-1]
    assert consumed.ret != "re-consumed"
    assert sum(1 for e in consumed.events if e.kind == "poison_consumed") == 1


# ------------------------------------------------------------ punch hole on a split folio


PUNCH = """\
name: punch-%s
profile: next
policies: [mainline]
geometry: {pmd_order: 2, pud_order: 3}
host: {memory: 8G, hugepages: {%s: 2}}
processes:
  - {name: qemu0, threads: [main, vcpu0], mce_kill: {main: early, vcpu0: late}, sigbus: handler}
guest_memfd:
  - {name: gmem0, size: %s, backing: %s, flags: [mmap, init_shared]}
vms:
  - {name: vm0, vmm: qemu0, gmem: gmem0, type: sw-protected}
events:
  - {event: hw_error, vm: vm0, page: 0, detect: scrub}
  - {event: convert, vm: vm0, page: 0, to: shared}
  - {event: punch_hole, vm: vm0, page: 0, pages: %d, limit: 1}
bounds: {depth: 3, errors: 1}
"""


def test_punch_hole_reports_under_punch_not_merge(tmp_path: Path) -> None:
    """Freeing a split 1 GiB (or 2 MiB) folio reassembles it for the pool: the punch hook
    fires, the conversion hook `merge` does not."""
    for size, pages in (("1G", 8), ("2M", 4)):
        doc = _check(tmp_path, PUNCH % (size, size, size, size, pages))
        cov = doc["results"][0]["coverage"]
        assert "punch" in cov["hooks_fired"], (size, cov)
        assert "merge" in cov["hooks_never"], (size, cov)


def test_merge_still_fires_for_a_conversion_back_to_private(tmp_path: Path) -> None:
    cfg = (PUNCH % ("2M", "2M", "2M", "2M", 4)).replace(
        "page: 0, to: shared", "page: 0, pages: 4, to: [shared, private]")
    cfg = cfg.replace("  - {event: punch_hole, vm: vm0, page: 0, pages: 4, limit: 1}\n", "")
    doc = _check(tmp_path, cfg)
    assert "merge" in doc["results"][0]["coverage"]["hooks_fired"]


def test_policy_event_hooks_in_a_punch_scenario() -> None:
    r = _run("""\
name: punch-split
profile: next
policy: mainline
host: {memory: 8G, hugepages: {2M: 2}, geometry: {pmd_order: 2, pud_order: 3}}
processes:
  - {name: qemu0, threads: [main], sigbus: handler}
steps:
  - vm_create: {vm: vm0, vmm: qemu0, vcpus: 1}
  - gmem_create: {vm: vm0, fd: gmem0, size: 16K, flags: [mmap, init_shared], backing: 2M}
  - memslot: {vm: vm0, gpa: 0, size: 16K, gmem: gmem0}
  - guest_access: {vm: vm0, gpa: 0, op: write}
  - hw_error: {vm: vm0, gpa: 0, detect: scrub}
  - set_attributes: {vm: vm0, gpa: 0, size: 4K, private: false}
  - fallocate: {proc: qemu0, fd: gmem0, mode: punch_hole, offset: 0, len: 16K}
""")
    hooks = [e.hook for e in r.trace.of(PolicyEvent) if e.step >= r.steps[-1].trace_step]
    assert hooks and "merge" not in hooks


# ------------------------------------------------------------ PRIVATE on a VM without private memory


ATTRIBUTES = """\
name: attributes-%s
profile: next
policy: mainline
host: {memory: 8G, hugepages: {2M: 2}, geometry: {pmd_order: 2, pud_order: 3}}
processes:
  - {name: qemu0, threads: [main, vcpu0], sigbus: handler}
steps:
  - vm_create: {vm: vm0, vmm: qemu0, type: %s, vcpus: 1}
  - gmem_create: {vm: vm0, fd: gmem0, size: 16K, flags: [mmap, init_shared], backing: 2M}
  - memslot: {vm: vm0, gpa: 0, size: 16K, gmem: gmem0}
  - guest_access: {vm: vm0, gpa: 0, op: write}
  - set_attributes: {vm: vm0, gpa: 0, size: 4K, private: true}
  - guest_access: {vm: vm0, gpa: 0}
  - set_attributes: {vm: vm0, gpa: 0, size: 4K, private: false}
"""


def test_private_attribute_is_refused_on_a_default_vm() -> None:
    """kvm_vm_ioctl_set_mem_attributes() returns -EINVAL for PRIVATE unless
    kvm_arch_has_private_mem() (sw-protected, SNP, TDX): on a default VM the ioctl fails and
    stage 2 keeps its mapping; a sw-protected VM converts (zap). Shared is allowed on both."""
    for vm_type, ret, zapped in (("default", -1, False), ("sw-protected", 0, True)):
        r = _run(ATTRIBUTES % (vm_type, vm_type))
        to_private, _access, to_shared = r.steps[-3:]
        errnos = [getattr(e, "errno", None) for e in to_private.events if e.kind == "action"]
        assert to_private.ret == ret, vm_type
        if ret:
            assert errnos == ["EINVAL"], errnos
        assert any(e.kind == "stage2_zap" for e in to_private.events) == zapped, vm_type
        assert to_shared.ret == 0, vm_type


# ------------------------------------------------------------ hugetlbfs: QEMU maps its RAM once


HUGETLBFS_OWN_MAPPING = """\
name: hugetlbfs-own-mapping
profile: next
policy: hugetlbfs
host: {memory: 8G, hugepages: {2M: 2}, geometry: {pmd_order: 2, pud_order: 3}}
processes:
  - {name: qemu0, threads: [main, vcpu0], sigbus: handler, mce_kill: {main: early, vcpu0: late}}
steps:
  - vm_create: {vm: vm0, vmm: qemu0, vcpus: 1}
  - gmem_create: {vm: vm0, fd: gmem0, size: 16K, flags: [mmap], backing: 2M}
  - mmap: {proc: qemu0, name: vm0.ram, size: 16K, fd: gmem0, shared: true}
  - memslot: {vm: vm0, gpa: 0, size: 16K, gmem: gmem0, hva: vm0.ram}
  - guest_access: {vm: vm0, gpa: 0, op: write}
"""


def test_hugetlbfs_vmm_mapping_the_memfd_itself_gets_the_vmce() -> None:
    """Under backing hugetlbfs gmem_create maps the memfd for the VMM; a VMM that maps it
    itself and registers that mapping keeps one mapping (QEMU maps its RAM once), so
    kill_me_maybe()'s BUS_MCEERR_AR carries a guest RAM address and QEMU injects the vMCE
    (S10) instead of exiting on an address outside guest RAM."""
    r = _run(HUGETLBFS_OWN_MAPPING + "  - hw_error: {vm: vm0, gpa: 0}\n"
             "  - guest_access: {vm: vm0, gpa: 0}\n")
    consumed = r.steps[-1]
    assert consumed.ret == "mce-injected"
    assert "GUEST addr 0x0 of type BUS_MCEERR_AR injected" in _log(r)
    assert "used by QEMU itself" not in _log(r)
    assert r.processes["qemu0"]["state"] == "running"


def test_hugetlbfs_release_of_the_vmm_own_mapping_frees_the_folio() -> None:
    """munmap of the VMM's one mapping, close, vm_destroy: nothing holds the memfd, its
    inode is evicted and the huge page returns to the pool (no stand-in mapping keeps it)."""
    r = _run(HUGETLBFS_OWN_MAPPING + "  - munmap: {proc: qemu0, addr: vm0.ram}\n"
             "  - close: {proc: qemu0, fd: gmem0}\n  - vm_destroy: {vm: vm0}\n")
    assert r.meminfo_after["free_hugepages_2M"] == 2


# ------------------------------------------------------------ hugetlbfs fallocate(ALLOCATE)


HUGETLBFS_FALLOCATE = """\
name: hugetlbfs-fallocate
profile: next
policy: mainline
host: {memory: 8G, hugepages: {2M: %d}, geometry: {pmd_order: 2, pud_order: 3}}
processes:
  - {name: qemu0, threads: [main], sigbus: handler}
steps:
  - memfd_create: {proc: qemu0, name: ram, size: 32K, hugetlb: true, huge: 2M}
  - fallocate: {proc: qemu0, fd: ram, mode: allocate, offset: 4K, len: 4K}
  - fallocate: {proc: qemu0, fd: ram, mode: allocate, offset: 0, len: 32K}
"""


def test_hugetlbfs_fallocate_allocates_huge_pages_into_the_page_cache() -> None:
    """hugetlbfs_fallocate(): the range is rounded out to whole huge pages, each missing one is
    allocated from the pool into the page cache (a page already there is kept); with none free
    the call fails with ENOSPC."""
    r = _run(HUGETLBFS_FALLOCATE % 2)
    assert [s.ret for s in r.steps[-2:]] == [0, 0]
    assert r.meminfo_after["free_hugepages_2M"] == 0
    r = _run(HUGETLBFS_FALLOCATE % 1)
    first, second = r.steps[-2:]
    assert first.ret == 0 and second.ret == -1
    assert [e.errno for e in second.events if e.kind == "action"] == ["ENOSPC"]


# ------------------------------------------------------------ a poisoned 4K piece of a split folio

SPLIT_PIECE = """\
name: split-piece
profile: next
policy: %s
host: {memory: 8G, hugepages: {2M: 2}, geometry: {pmd_order: 2, pud_order: 3}}
processes:
  - {name: qemu0, threads: [main, vcpu0], mce_kill: {main: early, vcpu0: late}, sigbus: handler}
steps:
  - vm_create: {vm: vm0, vmm: qemu0}
  - gmem_create: {vm: vm0, fd: gmem0, size: 16K, flags: [mmap, init_shared], backing: 2M}
  - mmap: {proc: qemu0, name: vm0.ram, size: 16K, fd: gmem0, shared: true}
  - memslot: {vm: vm0, gpa: 0, size: 16K, gmem: gmem0, hva: vm0.ram}
  - guest_access: {vm: vm0, gpa: 0, op: write}
  - hw_error: {vm: vm0, gpa: 0, detect: scrub}
  - mem_read: {proc: qemu0, thread: main, addr: vm0.ram}
"""


def test_vmm_fault_on_a_poisoned_piece_of_a_split_folio_is_refused() -> None:
    """A shared (split, R87) guest_memfd HugeTLB folio: the error on its first 4K piece sets
    that page's PG_hwpoison; the VMM's first access through its mapping then faults, and
    __do_fault's PageHWPoison check (R41) refuses the page: SIGBUS BUS_MCEERR_AR, which QEMU's
    main thread does not survive. The piece is neither evicted (and replaced by a fresh huge
    page) nor mapped and consumed."""
    for policy in ("mainline", "mf-delayed-fix"):
        r = _run(SPLIT_PIECE % policy)
        read = r.steps[-1]
        assert read.ret == "sigbus", policy
        sig = [e.to_dict() for e in read.events if e.kind == "signal"]
        assert [(s["si_code"], s["addr_rel"], s["sender"]) for s in sig] == \
            [("BUS_MCEERR_AR", "vm0.ram+0x0", "fault")], policy
        # refused at the fault: the poisoned page is never mapped, so nothing consumes it
        assert not [e for e in read.events if e.kind in ("poison_consumed", "memory_failure")]
        assert r.processes["qemu0"] == {"state": "killed", "code": None, "signal": 7}, policy


def test_reset_gives_anonymous_guest_ram_back_healthy() -> None:
    """Q6: kvm_unpoison_all -> qemu_ram_remap() discards (MADV_DONTNEED, R40) or remaps
    fresh anonymous memory over each recorded page, so after the reset the guest and QEMU
    read zeroes there instead of the hwpoison entry."""
    r = _run(QEMU + """
steps:
  - vm_create: {vm: vm0, vmm: qemu, vcpus: 1}
  - mmap: {proc: qemu, name: ram, size: 2M}
  - memslot: {vm: vm0, gpa: 4G, size: 2M, hva: ram}
  - guest_access: {vm: vm0, gpa: 4G, op: write, value: 7}
  - hw_error: {vm: vm0, gpa: 4G}
  - guest_access: {vm: vm0, gpa: 4G}
    expect: {ret: mce-injected}
  - vm_reset: {vm: vm0}
  - guest_access: {vm: vm0, gpa: 4G}
    expect: {ret: 0}
  - mem_read: {proc: qemu, addr: ram}
    expect: {ret: 0}
expect:
  exit: {qemu: running}
""")
    assert r.ok, "\n".join(str(f) for f in r.failures)


def test_an_ao_error_is_not_injected_into_an_amd_guest() -> None:
    """KV-03: QEMU records the page but injects no vMCE for BUS_MCEERR_AO on AMD."""
    r = _run(QEMU + """
steps:
  - mce_config: {vendor: amd}
  - vm_create: {vm: vm0, vmm: qemu, vcpus: 1}
  - mmap: {proc: qemu, name: ram, size: 2M}
  - memslot: {vm: vm0, gpa: 4G, size: 2M, hva: ram}
  - guest_access: {vm: vm0, gpa: 4G, op: write, value: 7}
  - hw_error: {vm: vm0, gpa: 4G, detect: scrub}
    expect:
      log: ["/GUEST addr 0x100000000 of type BUS_MCEERR_AO ignored on AMD guest/"]
      no_log: ["injected"]
""")
    assert r.ok, "\n".join(str(f) for f in r.failures)


def test_a_hugetlb_guest_memfd_reserves_its_pages_when_created() -> None:
    """kvm_gmem_hugetlb_setup(): hugepage_new_subpool(h, hpages, hpages) reserves every huge
    page of the file at creation (HugePages_Rsvd), and fails with ENOMEM when the pool
    cannot; the steps that needed it then fail at run time, not as bad input."""
    r = _run(QEMU + """
host: {hugepages: {2M: 3}}
steps:
  - vm_create: {vm: vm0, vmm: qemu, vcpus: 1}
  - gmem_create: {vm: vm0, fd: g0, size: 4M, backing: 2M}
    expect: {ret: 0}
  - meminfo: {}
    expect: {ret: {HugePages_Rsvd: 2, HugePages_Free: 3}}
  - gmem_create: {vm: vm0, fd: g1, size: 4M, backing: 2M}
    expect: {errno: ENOMEM}
  - mmap: {proc: qemu, name: shared, size: 4M}
  - memslot: {vm: vm0, gpa: 4G, size: 4M, gmem: g1, hva: shared}
    expect: {errno: EBADF}
  - hw_error: {vm: vm0, gpa: 4G}
    expect: {errno: EFAULT}
  - memslot: {vm: vm0, gpa: 8G, size: 4M, gmem: g0, hva: shared}
    expect: {ret: 0}
  - guest_access: {vm: vm0, gpa: 8G, op: write}
    expect: {ret: 0}
  - meminfo: {}
    expect: {ret: {HugePages_Rsvd: 1, HugePages_Free: 2}}
""")
    assert r.ok, "\n".join(str(f) for f in r.failures)


def test_policies_say_the_huge_cells_need_the_hugetlb_series() -> None:
    """mainline's own code is released, but its 2M/1G cells run HugeTLB-backed guest_memfd,
    which exists only in the unmerged 1G series: `memfail policies` says so."""
    from memfail.report.compare import policies_text

    text = " ".join(policies_text(200).split())
    assert "mainline: " in text
    mainline = text.split("mainline: What", 1)[1].split("mf-delayed-fix:", 1)[0]
    assert "its 2M/1G cells run on HugeTLB-backed guest_memfd, which only gmem-hugetlb " \
           "(unmerged) has" in mainline
    hugetlbfs = text.split("hugetlbfs: ")[-1]
    assert "gmem-hugetlb (unmerged) has" not in hugetlbfs.split("Unmerged series")[0]
