"""The inventory of kernel users of guest memory (docs/kernel-users.md): what `memfail
kernel-users` prints, and what a `kernel_access` by each user does in a scenario: skipped,
not reached, a failed copy with memory_failure(), a truncated core dump, or a host panic."""

from __future__ import annotations

import json
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from memfail.cli import app, main
from memfail.model.kernel.kaccess import KERNEL_USERS, MODELLED_USERS, KernelUser
from memfail.model.kvm.actions import KernelAccess
from memfail.model.trace import MemoryFailureCall, PoisonConsumed
from memfail.report.kernel_users import BEGIN, END, markdown_table
from memfail.scenario import load_scenario_text, run_scenario

DOC = Path(__file__).parent.parent / "docs" / "kernel-users.md"

# private HugeTLB guest_memfd memory (no host mapping), written by the guest
PRIVATE = """\
name: ku-private
profile: {profile}
policy: {policy}
host: {{hugepages: {{2M: 2}}}}
processes:
  - {{name: qemu, threads: [main], sigbus: handler, mce_kill: {{main: early}}}}
steps:
  - vm_create: {{vm: vm0, vmm: qemu, vcpus: 1}}
  - gmem_create: {{vm: vm0, fd: gmem, size: 2M, backing: 2M}}
  - memslot: {{vm: vm0, gpa: 4G, size: 2M, gmem: gmem}}
  - guest_access: {{vm: vm0, gpa: 4G, op: write}}
  - hw_error: {{vm: vm0, gpa: 4G+{off}, detect: {detect}}}
  - kernel_access: {{user: {user}, vm: vm0, gpa: 4G+{off}}}
"""

# the VMM's own anonymous memory (not guest_memfd), written by it
VMM_ANON = """\
name: ku-anon
profile: {profile}
policy: mainline
processes:
  - {{name: qemu, threads: [main], sigbus: handler}}
steps:
  - mmap: {{proc: qemu, name: buf, size: 16K}}
  - mem_write: {{proc: qemu, addr: buf+4K}}
  - hw_error: {{proc: qemu, addr: buf+4K, detect: {detect}}}
  - kernel_access: {{user: {user}, proc: qemu, addr: buf+4K}}
"""


def _run(template: str, **kw: Any) -> Any:
    args = {"profile": "linux-6.18", "policy": "mainline", "off": "12K", "detect": "latent"}
    args.update(kw)
    return run_scenario(load_scenario_text(template.format(**args)))


def _last(r: Any) -> Any:
    return r.steps[-1]


# ------------------------------------------------------------------ the listing


def test_doc_table_is_the_inventory() -> None:
    text = DOC.read_text()
    block = text.split(BEGIN, 1)[1].split(END, 1)[0].strip()
    assert block == markdown_table(), (
        "docs/kernel-users.md is stale; run: python -m memfail.report.kernel_users "
        "docs/kernel-users.md")


def test_listing_json_tells_checks_and_copies_per_release() -> None:
    runner = CliRunner()
    new = json.loads(runner.invoke(app, ["kernel-users", "--json"]).stdout)
    old = json.loads(runner.invoke(app, ["kernel-users", "--json", "--profile", "linux-6.1"]
                                   ).stdout)
    by_new = {u["name"]: u for u in new["users"]}
    by_old = {u["name"]: u for u in old["users"]}
    assert by_new["hibernate"]["checks_hwpoison"] is False
    assert by_new["hibernate"]["mc_safe"] is False
    assert by_new["kcore"]["check"] == "flag" and by_new["kcore"]["mc_safe"] is False
    assert by_new["migration"]["mc_safe"] is True and by_old["migration"]["mc_safe"] is False
    assert by_new["coredump"]["mc_safe"] is True and by_old["coredump"]["mc_safe"] is False
    assert by_new["vhost"]["recovery"] == "copyin"
    for u in new["users"]:
        assert u["source"] and u["check_cite"] and u["copy_cite"], u["name"]


def test_listing_table_and_one_user() -> None:
    r = CliRunner().invoke(app, ["kernel-users"])
    assert r.exit_code == 0
    for name in ("kcore", "hibernate", "migration", "coredump", "vmcore", "vhost", "tdx-reclaim"):
        assert name in r.stdout
    one = CliRunner().invoke(app, ["kernel-users", "--user", "hibernate"])
    assert "saveable_page" in one.stdout and "do_copy_page" in one.stdout


def test_unknown_user_or_profile_is_one_error_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kernel-users", "--user", "bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("memfail: error:") and "hibernate" in err[0]
    assert main(["kernel-users", "--profile", "linux-0.1"]) == 2


def test_every_modelled_user_is_a_kernel_access_user() -> None:
    literal = typing.get_args(KernelAccess.model_fields["user"].annotation)
    assert set(literal) == set(MODELLED_USERS)
    names = {f.name for f in fields(KernelUser)}
    for u in KERNEL_USERS:
        assert set(u.derived) <= names, u.name


# ------------------------------------------------------------------ what each user does


def test_kcore_skips_a_flagged_folio_and_panics_when_the_failure_is_only_in_a_table() -> None:
    flagged = _run(PRIVATE, user="kcore", detect="scrub")
    assert _last(flagged).ret == "skipped" and flagged.panicked is None
    # a firmware-first report (memory_failure_queue(): no set_mce_nospec()) leaves the page
    # in the direct map: kcore's check passes and its copy consumes the poison
    table = _run(PRIVATE, user="kcore", detect="ghes", policy="minimum")
    assert table.panicked is not None


def test_kcore_reads_zeros_from_a_page_set_mce_nospec_took_out_of_the_direct_map() -> None:
    """R46: uc_decode_notifier() calls set_mce_nospec() when memory_failure() returns 0, as
    minimum's does for an unconsumed failure it keeps in its table: kcore's
    copy_from_kernel_nofault() faults on the direct map and read_kcore_iter() fills zeros.
    The model had kcore panic there."""
    r = _run(PRIVATE, user="kcore", detect="scrub", policy="minimum")
    assert _last(r).ret == "skipped" and r.panicked is None
    # vmcore (the kdump kernel's own mapping) and hibernation (which maps the page back)
    # are not protected by it
    assert _run(PRIVATE, user="vmcore", detect="scrub", policy="minimum").panicked is not None
    assert _run(PRIVATE, user="hibernate", detect="scrub", policy="minimum").panicked \
        is not None


def test_hibernation_panics_even_on_a_page_it_was_told_about() -> None:
    r = _run(PRIVATE, user="hibernate", detect="scrub")
    assert r.panicked is not None
    assert any(e.by == "hibernate" and e.mode == "kernel" for e in r.trace.of(PoisonConsumed))


def test_migration_never_reaches_guest_memfd() -> None:
    r = _run(PRIVATE, user="migration")
    assert _last(r).ret == "not-reached" and r.panicked is None


def test_migration_of_vmm_memory_fails_with_ehwpoison_since_folio_mc_copy() -> None:
    r = _run(VMM_ANON, user="migration")
    assert _last(r).errno == "EHWPOISON" and r.panicked is None
    assert any(e.via == "memory_failure_queue" for e in r.trace.of(MemoryFailureCall))
    old = _run(VMM_ANON, user="migration", profile="linux-6.1")
    assert old.panicked is not None


def test_coredump_stops_at_a_latent_error_and_skips_a_hwpoison_entry() -> None:
    latent = _run(VMM_ANON, user="coredump")
    assert _last(latent).ret == "truncated" and latent.panicked is None
    assert not list(latent.trace.of(MemoryFailureCall))  # nothing reports it
    known = _run(VMM_ANON, user="coredump", detect="scrub")
    assert _last(known).ret == "skipped"
    assert _run(VMM_ANON, user="coredump", profile="linux-6.1").panicked is not None


def test_makedumpfile_checks_the_raw_page_only() -> None:
    """mainline flags the HugeTLB folio's head page; a failure in another raw page of the
    folio is not excluded by makedumpfile's per-page test."""
    head = _run(PRIVATE, user="vmcore", detect="scrub", off="0")
    assert _last(head).ret == "skipped"
    tail = _run(PRIVATE, user="vmcore", detect="scrub", off="12K")
    assert tail.panicked is not None
    assert _run(PRIVATE, user="kcore", detect="scrub", off="12K").panicked is None


def test_uaccess_users_fail_with_efault_and_report_or_panic() -> None:
    vhost = _run(VMM_ANON, user="vhost")
    assert _last(vhost).errno == "EFAULT" and vhost.panicked is None
    assert any(e.via == "kill_me_never" for e in vhost.trace.of(MemoryFailureCall))
    pvr = _run(VMM_ANON, user="process_vm_readv")
    assert pvr.panicked is not None
    known = _run(VMM_ANON, user="process_vm_readv", detect="scrub")
    assert _last(known).errno == "EFAULT" and known.panicked is None


def test_uaccess_users_cannot_read_private_guest_memory() -> None:
    for user in ("vhost", "kvm", "coredump", "process_vm_readv"):
        r = _run(PRIVATE, user=user)
        assert r.panicked is None, user
        assert not any(e.by == user for e in r.trace.of(PoisonConsumed)), user


def test_overrides_still_apply() -> None:
    text = PRIVATE.format(profile="linux-6.18", policy="mainline", off="12K", detect="latent",
                          user="hibernate").replace(
        "{user: hibernate, vm: vm0, gpa: 4G+12K}",
        "{user: hibernate, vm: vm0, gpa: 4G+12K, mc_safe: true}")
    r = run_scenario(load_scenario_text(text))
    assert r.panicked is None and _last(r).errno == "EHWPOISON"


# ------------------------------------------------------------------ in a check configuration

CHECK = """\
name: ku
profile: next
policies: [mainline, minimum, future]
geometry: {pmd_order: 2, pud_order: 3}
host: {memory: 8G, hugepages: {2M: 2}}
processes:
  - {name: qemu0, threads: [main, vcpu0], mce_kill: {main: early, vcpu0: late}, sigbus: handler}
guest_memfd:
  - {name: gmem0, size: 2M, backing: 2M}
vms:
  - {name: vm0, vmm: qemu0, gmem: gmem0}
events:
  - {event: hw_error, vm: vm0, page: 1, detect: ghes}
  - {event: kernel_access, vm: vm0, page: 1, user: %s}
bounds: {depth: 2, errors: 1}
"""


def _no_host_panic(tmp_path: Path, user: str) -> dict[str, str]:
    path = tmp_path / "ku.yaml"
    path.write_text(CHECK % user)
    r = CliRunner().invoke(app, ["check", str(path), "--json", "--property", "no-host-panic"])
    assert r.exit_code in (0, 1), r.output
    doc = json.loads(r.stdout)
    return {x["policy"]: x["verdicts"]["no-host-panic"]["status"] for x in doc["results"]}


def test_check_tells_policies_apart_by_kcore_but_not_by_hibernation(tmp_path: Path) -> None:
    assert _no_host_panic(tmp_path, "kcore") == {"mainline": "PASS", "minimum": "FAIL",
                                                 "future": "PASS"}
    assert set(_no_host_panic(tmp_path, "hibernate").values()) == {"FAIL"}


def test_check_refuses_an_unknown_kernel_user(tmp_path: Path) -> None:
    path = tmp_path / "ku.yaml"
    path.write_text(CHECK % "bogus")
    r = CliRunner().invoke(app, ["check", str(path)])
    assert r.exit_code == 2
    assert f"{path}:14:" in r.output and "hibernate" in r.output


# shared memory of an mmap-able guest_memfd, mapped by the VMM and then unmapped (a release's
# munmap before its close; the file still holds the folio)
SHARED_UNMAPPED = """\
name: ku-shared-unmapped
profile: linux-6.18
policy: minimum
host: {{hugepages: {{2M: 2}}}}
processes:
  - {{name: qemu, threads: [main], sigbus: handler}}
steps:
  - vm_create: {{vm: vm0, vmm: qemu, vcpus: 1, type: sw-protected}}
  - gmem_create: {{vm: vm0, fd: gmem, size: 2M, backing: 2M, flags: [mmap, init_shared]}}
  - mmap: {{proc: qemu, name: ram, size: 2M, fd: gmem, shared: true}}
  - memslot: {{vm: vm0, gpa: 0, size: 2M, gmem: gmem, hva: ram}}
  - guest_access: {{vm: vm0, gpa: 8K, op: write}}
  - hw_error: {{vm: vm0, gpa: 8K, detect: ghes}}
{unmap}  - kernel_access: {{user: kcore, vm: vm0, gpa: 8K}}
"""


@pytest.mark.parametrize("unmap", [False, True], ids=["mapped", "unmapped"])
def test_a_physical_reader_reaches_shared_guest_memfd_memory_the_vmm_no_longer_maps(
        unmap: bool) -> None:
    """/proc/kcore reads by physical address (reach: pfn): the shared pages of an mmap-able
    guest_memfd are its folios, in the file's page cache and the direct map, whether or not
    the VMM still maps them. Under minimum the failure is only in the policy's table, so
    kcore's PG_hwpoison check passes and the read panics (a firmware-first report: no
    set_mce_nospec()), mapped or after the VMM's munmap
    (a release under way; the file is still open). The model used to find no page behind an
    unmapped memslot address (kvm.py _hva_maps_gmem), and the SPIN engine's --races walks
    disagreed with it there."""
    step = "  - munmap: {proc: qemu, addr: ram}\n" if unmap else ""
    r = run_scenario(load_scenario_text(SHARED_UNMAPPED.format(unmap=step)))
    assert r.panicked is not None, [s.ret for s in r.steps]
