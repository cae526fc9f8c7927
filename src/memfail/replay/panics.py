"""Machine-check panics in real logs, mapped to the rule of the model that produces them.

Each message is the kernel's own string (arch/x86/kernel/cpu/mce/core.c, severity.c,
arch/x86/mm/fault.c); the rule ids are those of docs/mce.md (M1-M10) and the reference (R…).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memfail.replay.events import RasEvent


@dataclass(frozen=True)
class PanicRule:
    """A kernel message, where it is printed, the model's rule, and whether the guest_memfd
    policy can change it.

    ``policy``: ``none`` (the same under every policy: the policy acts later, in
    memory_failure(), or never sees the error), ``exposure`` (the panic itself does not depend
    on the policy, but how many broadcast machine checks a guest can cause does, so its
    chance does), ``yes`` (the policy decides whether it happens)."""

    message: str
    function: str
    file: str
    rule: str
    meaning: str
    policy: str
    why: str
    panic: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"message": self.message, "function": self.function, "file": self.file,
                "rule": self.rule, "meaning": self.meaning, "policy": self.policy,
                "why": self.why, "panic": self.panic}


CORE = "arch/x86/kernel/cpu/mce/core.c"
SEVERITY = "arch/x86/kernel/cpu/mce/severity.c"
_RENDEZVOUS = ("the rendezvous of a broadcast machine check does not depend on the guest_memfd "
               "policy (a CPU failed to call in within mca_cfg.monarch_timeout: firmware, SMM, "
               "a hung CPU); a policy that keeps poison mapped lets a guest cause more "
               "broadcast machine checks, each a new chance of it")
_GRADE = ("graded in #MC context before any policy code runs: the guest_memfd policy acts "
          "later, in memory_failure() from the task work, or never")

# first match wins: longer messages before their prefixes
RULES: tuple[PanicRule, ...] = (
    PanicRule("Timeout: Not all CPUs entered broadcast exception handler",
              "mce_start -> mce_timed_out", CORE, "M3",
              "a CPU did not call in to the broadcast rendezvous within monarch_timeout",
              "exposure", _RENDEZVOUS),
    PanicRule("Timeout: Subject CPUs unable to finish machine check processing",
              "mce_start -> mce_timed_out", CORE, "M3",
              "a CPU waited past monarch_timeout for its turn to scan its banks",
              "exposure", _RENDEZVOUS),
    PanicRule("Timeout: Monarch CPU unable to finish machine check processing",
              "mce_end -> mce_timed_out", CORE, "M3",
              "the monarch waited past monarch_timeout for the other CPUs to scan their banks",
              "exposure", _RENDEZVOUS),
    PanicRule("Timeout: Monarch CPU did not finish machine check processing",
              "mce_end -> mce_timed_out", CORE, "M3",
              "a subject CPU waited past monarch_timeout for the monarch's verdict",
              "exposure", _RENDEZVOUS),
    PanicRule("Fatal machine check from unknown source", "mce_reign", CORE, "M3 (mce_reign)",
              "after a broadcast no CPU found an error in its banks (an external source or a "
              "hung CPU); not modelled: every modelled broadcast has a source",
              "none", _GRADE),
    PanicRule("Machine check from unknown source", "mce_reign", CORE, "M3 (mce_reign)",
              "the same panic under its name before 3.x", "none", _GRADE),
    PanicRule("Fatal machine check on current CPU", "do_machine_check", CORE, "M1, M3",
              "the rendezvous failed (mce_end < 0) and this CPU's own error grades PANIC",
              "none", _GRADE),
    PanicRule("Fatal local machine check", "do_machine_check", CORE, "M1, M2",
              "a local machine check (LMCE, or any on AMD) graded PANIC before the bank scan",
              "none", _GRADE),
    PanicRule("Local fatal machine check!", "do_machine_check", CORE, "M1, M2",
              "a local machine check graded PANIC after the bank scan", "none", _GRADE),
    PanicRule("Fatal machine check", "mce_reign", CORE, "M1",
              "the monarch graded the worst error of all CPUs PANIC after a broadcast "
              "(the reason follows in 'Machine check: ...')", "none", _GRADE),
    PanicRule("Too many consecutive machine checks while accessing user data",
              "queue_task_work", CORE, "M7 (R44)",
              "one thread took more than ten machine checks before its task work ran",
              "none", "the count is per thread and the task work runs before a vCPU enters "
              "the guest again (M8): no guest_memfd policy runs in that window, and a guest "
              "alone cannot reach it"),
    PanicRule("Consecutive machine checks to different user pages", "queue_task_work", CORE,
              "M7 (R44)", "a second machine check on another page before the task work ran",
              "none", "the same window as the ten-machine-check panic (M7, M8)"),
    PanicRule("Failed kernel mode recovery", "do_machine_check", CORE, "M5, R47",
              "graded IN_KERNEL_RECOV but fixup_exception() found no handler", "none",
              _GRADE),
    PanicRule("Panicing machine check CPU died", "wait_for_panic", CORE, "M1",
              "another CPU was already panicking for a machine check and did not finish",
              "none", _GRADE),
    PanicRule("Processor context corrupt", "mce_severity_intel", SEVERITY, "M5",
              "MCi_STATUS.PCC: the CPU cannot continue (PANIC in any context)", "none",
              _GRADE),
    PanicRule("Processor Context Corrupt", "mce_severity_amd", SEVERITY, "M6",
              "AMD: MCi_STATUS.PCC (PANIC in any context)", "none", _GRADE),
    PanicRule("MCIP not set in MCA handler", "mce_severity_intel", SEVERITY, "M4",
              "MCG_STATUS.MCIP clear inside the handler: 'something is very confused' "
              "(PANIC); a machine check while MCIP is set shuts the CPU down (M4, no log)",
              "none", _GRADE),
    PanicRule("Neither restart nor error IP", "mce_severity_intel", SEVERITY, "M5",
              "MCG_STATUS RIPV and EIPV both clear: nowhere to return to (PANIC)", "none",
              _GRADE),
    PanicRule("In kernel and no restart IP", "mce_severity_intel", SEVERITY, "M5",
              "a kernel-mode machine check without RIPV (PANIC)", "none", _GRADE),
    PanicRule("Data load in unrecoverable area of kernel", "mce_severity_intel", SEVERITY,
              "M5, R47", "a kernel load of poison without a machine-check-safe exception "
              "fixup (IN_KERNEL): PANIC", "yes",
              "graded before any policy code runs, but which kernel readers can reach guest "
              "memory with a plain load depends on the memory: a policy that keeps poisoned "
              "memory mapped and unflagged leaves more for such readers "
              "(docs/kernel-users.md)"),
    PanicRule("Uncorrected unrecoverable error in kernel context", "mce_severity_amd",
              SEVERITY, "M6, R47", "AMD: an uncorrected error in kernel context (PANIC)",
              "yes", "as for Intel's 'Data load in unrecoverable area of kernel'"),
    PanicRule("Uncorrected error without MCA Recovery", "mce_severity_amd", SEVERITY, "M6",
              "AMD without SUCCOR: every uncorrected error panics", "none", _GRADE),
    PanicRule("Instruction fetch error in kernel", "mce_severity_intel", SEVERITY, "M5",
              "an instruction fetch of poison in kernel mode (PANIC)", "none", _GRADE),
    PanicRule("Action required: data load in error recoverable area of kernel",
              "mce_severity_intel", SEVERITY, "M5",
              "IN_KERNEL_RECOV: AR, not a panic by itself (a copy with a machine-check-safe "
              "fixup); before a panic it is the grade of the error whose handling panicked "
              "for another reason (the R44 panics of queue_task_work print it)",
              "none", _GRADE, panic=False),
    PanicRule("Action required: data load error in a user process", "mce_severity_intel",
              SEVERITY, "M5", "IN_USER (a guest counts as user, R45): AR, handled by "
              "kill_me_maybe; before a panic it is the grade of the error whose handling "
              "panicked for another reason", "none", _GRADE, panic=False),
    PanicRule("due to hardware memory corruption fault at", "do_sigbus",
              "arch/x86/mm/fault.c", "R40",
              "a user access to a hwpoison page-table entry: SIGBUS BUS_MCEERR_AR, no machine "
              "check ('MCE: Killing COMM:PID due to hardware memory corruption fault at ADDR')",
              "yes", "only memory mapped through host page tables has hwpoison entries: the "
              "hugetlbfs baseline installs one in QEMU's mapping; guest_memfd policies decide "
              "whether the VMM's mapping of shared memory gets one", panic=False),
)


def rule_for(message: str) -> PanicRule | None:
    """The first rule whose message the text contains (case as the kernel prints it)."""
    for r in RULES:
        if r.message in message:
            return r
    return None


def _stalls_per_policy(policies: list[str]) -> dict[str, int]:
    """Broadcast machine checks a hostile guest causes under each policy: the built-in
    ``vm-hostile-2m`` scenario (4 vCPUs, 8 rounds on 2M guest_memfd) run under each."""
    from memfail.scenario.loader import library, load_scenario
    from memfail.scenario.runner import run_scenario

    out: dict[str, int] = {}
    sc = load_scenario(library()["vm-hostile-2m"])
    for pol in policies:
        res = run_scenario(sc, policy_override=pol)
        out[pol] = int((res.outcomes or {}).get("host_stalls", 0))
    return out


def panics(events: list[RasEvent], policies: list[str]) -> list[dict[str, Any]]:
    """Every panic (and machine-check message) the log holds, with its rule and, per policy,
    whether the policy changes it."""
    found: list[tuple[RasEvent, PanicRule | None]] = []
    for e in events:
        text = e.message or ""
        if e.kind == "panic" or (e.kind == "mf_message" and rule_for(text) is not None):
            found.append((e, rule_for(text)))
    exposure: dict[str, int] | None = None
    out = []
    for e, r in found:
        per: dict[str, str] = {}
        if r is None:
            per = {p: "unknown: no rule of the model for this message" for p in policies}
        elif r.policy == "exposure":
            if exposure is None:
                exposure = _stalls_per_policy(policies)
            per = {p: f"the same panic; a hostile guest on 2M guest_memfd causes "
                      f"{exposure[p]} broadcast machine check(s) (vm-hostile-2m)"
                   for p in policies}
        elif r.policy == "none":
            per = {p: "the same" for p in policies}
        else:
            per = {p: "depends on the policy: whether the memory stays reachable this way "
                      "(see why)" for p in policies}
        out.append({"seq": e.seq, "where": e.where(), "message": e.message,
                    "rule": None if r is None else r.to_json(), "per_policy": per})
    return out
