"""Machine-check delivery (kernel/mce.py, docs/mce.md, M1-M10): what a user sees — the host's
panic line, the kernel log, the machine_check / host_stall trace events and the outcomes."""

from __future__ import annotations

from typing import Any

import pytest

from memfail.model.trace import (
    HostStall,
    KernelLog,
    MachineCheck,
    MemoryFailureCall,
    PoisonConsumed,
)
from memfail.scenario import load_scenario_text, run_scenario

APP = """
name: t
profile: linux-6.18
processes:
  - {name: app, threads: [main, t2], sigbus: handler}
steps:
%s
  - mmap: {proc: app, name: buf, size: 8K}
  - mem_write: {proc: app, addr: buf}
  - mem_write: {proc: app, addr: buf+4K}
  - hw_error: {proc: app, addr: buf, detect: latent}
  - hw_error: {proc: app, addr: buf+4K, detect: latent}
%s
"""

VM = """
name: v
profile: linux-6.18
policy: %s
host: {hugepages: {2M: 2}}
processes:
  - {name: qemu, threads: [main], sigbus: handler, mce_kill: {main: early}}
steps:
%s
  - vm_create: {vm: vm0, vmm: qemu, vcpus: 2}
  - gmem_create: {vm: vm0, fd: gmem, size: 2M, backing: 2M}
  - mmap: {proc: qemu, name: shared, size: 2M}
  - memslot: {vm: vm0, gpa: 4G, size: 2M, gmem: gmem, hva: shared}
  - guest_access: {vm: vm0, gpa: 4G, op: write}
  - guest_access: {vm: vm0, gpa: 4G, op: write, vcpu: 1}
  - hw_error: {vm: vm0, gpa: 4G+12K, detect: latent}
  - hw_error: {vm: vm0, gpa: 4G+20K, detect: latent}
%s
"""


def _app(steps: str, config: str = "") -> Any:
    return run_scenario(load_scenario_text(APP % (config, steps)))


def _vm(steps: str, config: str = "", policy: str = "minimum") -> Any:
    return run_scenario(load_scenario_text(VM % (policy, config, steps)))


def _log(r: Any) -> str:
    return "\n".join(e.text for e in r.trace.of(KernelLog))


def _outcomes(r: Any) -> dict[str, Any]:
    o: dict[str, Any] = r.host_outcomes
    return o


# ------------------------------------------------------------------ R44 / M7 queue_task_work


COPYIN = "  - machine_check: {proc: app, addr: %s, context: kernel-recov, copyin: true}"


def test_ten_machine_checks_before_task_work_survive_the_eleventh_panics() -> None:
    # the count grows where the kernel retries a copy from user before returning to user
    # mode (IN_KERNEL_RECOV with MCE_IN_KERNEL_COPYIN queues kill_me_never, M1/M7)
    ten = "\n".join([COPYIN % "buf"] * 10)
    r = _app(ten + "\n  - task_work: {proc: app}")
    assert r.panicked is None
    assert "mce: Kernel accessed poison in user space at" in _log(r)
    r = _app("\n".join([COPYIN % "buf"] * 11))
    assert r.panicked == "Too many consecutive machine checks while accessing user data"
    assert "Kernel panic - not syncing: Too many consecutive machine checks" in _log(r)


def test_second_machine_check_on_another_page_before_task_work_panics() -> None:
    r = _app(COPYIN % "buf" + "\n" + COPYIN % "buf+4K")
    assert r.panicked == "Consecutive machine checks to different user pages"
    # queue_task_work()'s mce_panic(..., err, msg) prints the grading message first
    log = _log(r)
    grade = "mce: [Hardware Error]: Machine check: Action required: data load in error " \
            "recoverable area of kernel"
    assert grade in log
    assert log.index(grade) < log.index("Kernel panic - not syncing: Consecutive")


def test_user_mode_machine_checks_never_stack_up() -> None:
    """A user-mode load runs after the thread returned to user mode, and
    exit_to_user_mode_loop ran the queued kill_me_maybe on the way (M8): eleven user-mode
    machine checks in a row are eleven windows, not one, and never panic."""
    r = _app("\n".join(["  - machine_check: {proc: app, addr: buf}"] * 11))
    assert r.panicked is None
    r = _app("  - machine_check: {proc: app, addr: buf}\n"
             "  - machine_check: {proc: app, addr: buf+4K}")
    assert r.panicked is None
    assert _log(r).count("Uncorrected hardware memory error in user-access") >= 1


def test_task_work_between_machine_checks_resets_the_count() -> None:
    r = _app("  - machine_check: {proc: app, addr: buf}\n  - task_work: {proc: app}\n"
             "  - machine_check: {proc: app, addr: buf+4K}\n  - task_work: {proc: app}")
    assert r.panicked is None
    assert _log(r).count("Uncorrected hardware memory error in user-access") == 2


def test_user_thread_runs_its_task_work_before_its_next_load() -> None:
    r = _app("  - machine_check: {proc: app, addr: buf}\n  - mem_read: {proc: app, addr: buf+4K}")
    assert r.panicked is None
    assert _log(r).count("Uncorrected hardware memory error in user-access") == 2


def test_two_threads_consuming_the_same_poison_before_task_work_do_not_panic() -> None:
    # the count is per thread: each thread queues its own kill_me_maybe
    r = _app("  - machine_check: {proc: app, addr: buf}\n"
             "  - machine_check: {proc: app, thread: t2, addr: buf}\n"
             "  - task_work: {proc: app}\n  - task_work: {proc: app, thread: t2}")
    assert r.panicked is None
    assert len(r.trace.of(PoisonConsumed)) == 2
    assert _log(r).count("Uncorrected hardware memory error in user-access") == 2


def test_two_vcpus_consume_before_any_task_work_runs() -> None:
    r = _vm("  - machine_check: {vm: vm0, vcpu: 0, gpa: 4G+12K}\n"
            "  - machine_check: {vm: vm0, vcpu: 1, gpa: 4G+12K}\n"
            "  - task_work: {vm: vm0, vcpu: 0}\n  - task_work: {vm: vm0, vcpu: 1}")
    assert r.panicked is None
    assert [e.by for e in r.trace.of(PoisonConsumed)] == ["vm0:vcpu0", "vm0:vcpu1"]
    o = _outcomes(r)
    assert o["machine_checks"] == 2 and o["repeated_consumptions"] == 1


def test_vcpu_runs_its_task_work_before_its_next_guest_mode_machine_check() -> None:
    """A guest-mode machine check means the vCPU entered the guest, and KVM ran the queued
    work first (vcpu_run -> xfer_to_guest_mode_handle_work -> resume_user_mode_work ->
    task_work_run, kernel/entry/kvm.c; M8, R45): one vCPU cannot take machine checks on
    two pages in one window, so the host does not panic."""
    r = _vm("  - machine_check: {vm: vm0, vcpu: 0, gpa: 4G+12K}\n"
            "  - machine_check: {vm: vm0, vcpu: 0, gpa: 4G+20K}")
    assert r.panicked is None
    assert _outcomes(r)["host_down"] is False
    # the first machine check's kill_me_maybe ran (memory_failure() on its page, QEMU's
    # vMCE) before the second machine check was taken
    order = [(type(e).__name__, getattr(e, "pfn", None)) for e in r.trace.events
             if isinstance(e, (MachineCheck, MemoryFailureCall))]
    first, second = (e.pfn for e in r.trace.of(MachineCheck))
    assert order == [("MachineCheck", first), ("MemoryFailureCall", first),
                     ("MachineCheck", second)]


def test_guest_access_runs_pending_task_work_before_entering_the_guest() -> None:
    r = _vm("  - machine_check: {vm: vm0, vcpu: 0, gpa: 4G+12K}\n"
            "  - guest_access: {vm: vm0, vcpu: 0, gpa: 4G+20K}")
    assert r.panicked is None  # the enter-guest work ran kill_me_maybe first (R45, M8)


# ------------------------------------------------------------------ severity and context


def test_kernel_consumption_without_fixup_panics() -> None:
    r = _app("  - machine_check: {proc: app, addr: buf, context: kernel}")
    assert r.panicked == "Fatal machine check"
    assert "Machine check: Data load in unrecoverable area of kernel" in _log(r)
    r = _app("  - machine_check: {proc: app, addr: buf, context: kernel}",
             "  - mce_config: {lmce: true}")
    assert r.panicked == "Fatal local machine check"


def test_kernel_copyin_with_fixup_queues_kill_me_never() -> None:
    r = _app("  - machine_check: {proc: app, addr: buf, context: kernel-recov, copyin: true}\n"
             "  - task_work: {proc: app}")
    assert r.panicked is None
    mc = r.trace.of(MachineCheck)[0]
    assert mc.message == "Action required: data load in error recoverable area of kernel"
    assert "mce: Kernel accessed poison in user space at" in _log(r)


def test_processor_context_corrupt_panics_in_user_mode_too() -> None:
    r = _app("  - machine_check: {proc: app, addr: buf, pcc: true}")
    assert r.panicked == "Fatal machine check"
    assert "Machine check: Processor context corrupt" in _log(r)


def test_machine_check_while_mcip_set_shuts_the_host_down() -> None:
    r = _vm("  - machine_check: {vm: vm0, vcpu: 1, gpa: 4G+12K, mcip: true}")
    assert r.panicked is not None and "MCIP" in r.panicked
    assert "Kernel panic" not in _log(r)  # a processor shutdown, not a kernel panic
    assert _outcomes(r)["host_down"] is True


def test_guest_mode_is_graded_as_user_mode() -> None:
    r = _vm("  - guest_access: {vm: vm0, gpa: 4G+12K}")
    mc = r.trace.of(MachineCheck)[0]
    assert (mc.context, mc.severity) == ("IN_USER", "AR")
    assert mc.message == "Action required: data load error in a user process"


# ------------------------------------------------------------------ broadcast, LMCE, AMD


def test_broadcast_stalls_every_cpu_local_stalls_one() -> None:
    r = _vm("  - guest_access: {vm: vm0, gpa: 4G+12K}", "  - mce_config: {cpus: 32}")
    o = _outcomes(r)
    assert o["host_stalls"] == 1 and o["host_stall_us"] > 0
    assert any(e.cpus == 32 for e in r.trace.of(HostStall))
    r = _vm("  - guest_access: {vm: vm0, gpa: 4G+12K}", "  - mce_config: {lmce: true}")
    o = _outcomes(r)
    assert o["host_stalls"] == 0 and o["machine_checks"] == 1
    assert all(e.cpus == 1 for e in r.trace.of(HostStall))


def test_rendezvous_timeout_panics() -> None:
    r = _vm("  - guest_access: {vm: vm0, gpa: 4G+12K}",
            "  - mce_config: {holdout_us: 1000000}")
    assert r.panicked == "Timeout: Not all CPUs entered broadcast exception handler"
    assert "CPUs not responding to MCE broadcast" in _log(r)
    r = _vm("  - guest_access: {vm: vm0, gpa: 4G+12K}",
            "  - mce_config: {holdout_us: 999999}")
    assert r.panicked is None
    r = _vm("  - guest_access: {vm: vm0, gpa: 4G+12K}",
            "  - mce_config: {holdout_us: 5000000, lmce: true}")
    assert r.panicked is None  # a local machine check has no rendezvous


def test_amd_is_always_local_and_panics_without_succor() -> None:
    r = _vm("  - guest_access: {vm: vm0, gpa: 4G+12K}",
            "  - mce_config: {vendor: amd, holdout_us: 5000000}")
    assert r.panicked is None and _outcomes(r)["host_stalls"] == 0
    r = _vm("  - guest_access: {vm: vm0, gpa: 4G+12K}",
            "  - mce_config: {vendor: amd, succor: false}")
    assert r.panicked == "Fatal local machine check"
    assert "Uncorrected error without MCA Recovery" in _log(r)


@pytest.mark.parametrize("bad", ["{vendor: arm}", "{cpus: 0}"])
def test_bad_mce_config_is_bad_input(bad: str) -> None:
    from memfail.scenario.errors import ScenarioError

    with pytest.raises(ScenarioError):
        load_scenario_text(APP % (f"  - mce_config: {bad}", ""))
