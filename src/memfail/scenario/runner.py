"""Run a validated scenario on a fresh ``Host`` and check its expectations.

The runner only applies actions and reads the trace and the host's observable state; the same
scenario, profile, policy and seed always give the same ``RunResult``, byte for byte as JSON.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memfail.model.actions import Action, Prctl, Sigaction, Spawn
from memfail.model.errors import ModelInputError, ProfileMissing
from memfail.model.kernel.profiles import DEFAULT_PROFILE, get_profile
from memfail.model.trace import Event, Trace
from memfail.model.units import parse_size

from .errors import FeatureMissing, ScenarioError
from .expect import Checker, Failure, check_final, check_step
from .loader import Scenario, Step

if TYPE_CHECKING:
    from memfail.model.host import Host


@dataclass
class ActionRecord:
    """One applied action: set-up (``index`` None) or a scenario step."""

    trace_step: int
    key: str
    action: Action
    line: int | None
    index: int | None = None
    note: str | None = None
    ret: Any = None
    errno: str | None = None
    data: list[int] | None = None
    ran: bool = True
    events: list[Event] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def args(self) -> dict[str, Any]:
        return self.action.model_dump(mode="json", exclude_defaults=True)


@dataclass
class RunResult:
    """Everything a renderer needs: per-step results, the trace, final state, expectations."""

    scenario: Scenario
    profile: str
    # the guest_memfd policy's name (a preset's, an inline policy's `name`, or its base with
    # the knobs it changes: "minimum{unmap_stage2=folio}"); None when none was asked for
    policy: str | None
    setup: list[ActionRecord]
    steps: list[ActionRecord]
    trace: Trace
    failures: list[Failure]
    passed: int
    meminfo_before: dict[str, int]
    meminfo_after: dict[str, int]
    mf_stats: dict[str, int]
    processes: dict[str, dict[str, Any]]
    panicked: str | None
    outcomes: dict[str, Any] | None = None
    host_outcomes: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.failures


def setup_actions(sc: Scenario) -> list[tuple[Action, int | None]]:
    """The actions that create ``processes:`` before step 0, with the line each comes from."""
    out: list[tuple[Action, int | None]] = []
    for i, p in enumerate(sc.processes):
        line = sc.line_of("processes", i)
        out.append((Spawn(proc=p.name, threads=list(p.threads), caps=p.caps), line))
        for thread, policy in p.mce_kill.items():
            out.append((Prctl(proc=p.name, thread=thread, op="set", policy=policy),
                        sc.line_of("processes", i, "mce_kill", thread)))
        if p.sigbus != "default":
            out.append((Sigaction(proc=p.name, sigbus=p.sigbus, exit_code=p.exit_code),
                        sc.line_of("processes", i, "sigbus")))
    return out


def make_host(sc: Scenario, profile: str, policy: str | dict[str, Any] | None) -> Host:
    from memfail.model.host import Host, HostConfig

    h = sc.host
    try:
        from memfail.model.units import Geometry

        geo = Geometry() if h.geometry is None else \
            Geometry(12, h.geometry.pmd_order, h.geometry.pud_order)
        cfg = HostConfig(memory=h.memory, hugepages={str(k): n for k, n in h.hugepages.items()},
                         overcommit={str(k): n for k, n in h.overcommit.items()}, hvo=h.hvo,
                         hvo_restore_fails=h.hvo_restore_fails, sysctl=dict(h.sysctl),
                         profile=get_profile(profile), policy=policy, seed=sc.seed, geometry=geo)
        return Host(cfg)
    except ValueError as e:  # ModelInputError included: an unknown policy, a bad pool size
        fld = "policy" if policy is not None and "polic" in str(e) else "host"
        raise _input_error(e)(sc.file, sc.line_of(fld), fld, str(e)) from None


def run_scenario(sc: Scenario, profile_override: str | None = None,
                 policy_override: str | dict[str, Any] | None = None) -> RunResult:
    """Apply the scenario's set-up and steps to a new host and check every expectation."""
    profile = profile_override or sc.profile or DEFAULT_PROFILE
    policy = policy_override if policy_override is not None else sc.policy
    try:
        get_profile(profile)
    except ValueError as e:
        raise ScenarioError(sc.file, sc.line_of("profile") if not profile_override else None,
                            "profile", str(e)) from None
    host = make_host(sc, profile, policy)
    host.ext["declared"] = declared_names(sc)
    chk = Checker(sc.file)

    setup: list[ActionRecord] = []
    for action, line in setup_actions(sc):
        rec = ActionRecord(len(setup), action.key, action, line)
        _apply(host, rec, sc, where="processes")
        setup.append(rec)
    meminfo_before = dict(host.meminfo())

    def addr_of(proc: str, addr: Any) -> str | int | None:
        try:
            return host.addr_rel(proc, host.resolve_addr(proc, addr))
        except ModelInputError:
            # the mapping is gone (the process died in this very step): the signal's si_addr
            # was rendered while it existed, so render the expected NAME+OFFSET the same way
            if isinstance(addr, str) and not addr.strip().lower().startswith("0x"):
                name, _, off = addr.partition("+")
                try:
                    return f"{name.strip()}+{parse_size(off.strip()) if off else 0:#x}"
                except ValueError:
                    return None
            return None

    steps: list[ActionRecord] = []
    saved: dict[str, Any] = {}
    panicked_at: int | None = None
    for step in sc.steps:
        rec = ActionRecord(len(setup) + len(steps), step.key, step.action, step.line,
                           index=step.index, note=step.note)
        steps.append(rec)
        if panicked_at is not None:
            rec.ran = False
            if step.expect is not None and step.expect.model_fields_set:
                chk.check(False, "*", "step runs", "not run", line=step.line, step=step.index,
                          action=step.key,
                          message=f"not run: the host panicked in step {panicked_at}")
            continue
        _apply(host, rec, sc, step=step)
        if step.expect is not None:
            before = len(chk.failures)
            check_step(chk, step.expect, step=step.index, action=step.key, line=step.line,
                       ret=rec.ret, errno=rec.errno, events=rec.events, addr_of=addr_of,
                       data=rec.data, saved=saved)
            rec.failures = chk.failures[before:]
        if step.save is not None:
            saved[step.save] = rec.ret
        if host.panicked is not None:
            panicked_at = step.index

    meminfo_after = dict(host.meminfo())
    mf_stats = dict(host.mf_stats())
    statuses = {name: dict(host.process_status_or_none(name)) for name in _process_names(sc)}
    outcomes_fn: Callable[[], dict[str, Any]] | None = getattr(host, "outcomes", None)
    outcomes_cache: list[dict[str, Any] | None] = []

    def outcomes() -> dict[str, Any] | None:
        if not outcomes_cache:
            outcomes_cache.append(dict(outcomes_fn()) if outcomes_fn is not None else None)
        return outcomes_cache[0]

    if sc.expect is not None:
        check_final(chk, sc.expect, line_of=sc.line_of, meminfo_before=meminfo_before,
                    meminfo_after=meminfo_after, mf_stats=mf_stats, statuses=statuses,
                    panicked=host.panicked, events=host.trace.events, outcomes=outcomes)
    return RunResult(
        scenario=sc, profile=profile,
        policy=None if policy is None else str(getattr(host.policy, "name", policy)),
        setup=setup, steps=steps,
        trace=host.trace, failures=chk.failures, passed=chk.passed,
        meminfo_before=meminfo_before, meminfo_after=meminfo_after, mf_stats=mf_stats,
        processes=statuses, panicked=host.panicked,
        outcomes=outcomes() if sc.expect is not None and sc.expect.outcomes else None,
        host_outcomes=outcomes(),
    )


def _input_error(e: BaseException) -> type[ScenarioError]:
    """The scenario error a model error becomes: FeatureMissing for a feature the kernel
    profile lacks (ProfileMissing), else ScenarioError."""
    return FeatureMissing if isinstance(e, ProfileMissing) else ScenarioError


def _apply(host: Host, rec: ActionRecord, sc: Scenario, *, step: Step | None = None,
           where: str = "") -> None:
    first = len(host.trace.events)
    rec.trace_step = host.trace.step  # the index apply() gives this action's events
    try:
        res = host.apply(rec.action)
    except ModelInputError as e:
        fld = getattr(e, "field", None)
        if step is not None:
            loc: tuple[str | int, ...] = ("steps", step.index, step.key) + ((fld,) if fld else ())
            path = f"steps[{step.index}].{step.key}" + (f".{fld}" if fld else "")
            raise _input_error(e)(sc.file, sc.line_of(*loc), path, str(e)) from None
        raise _input_error(e)(sc.file, rec.line, where, str(e)) from None
    rec.ret, rec.errno, rec.data = res.ret, res.errno, res.data
    rec.events = list(host.trace.events[first:])


# Actions that create a file descriptor, and the fields naming it (first one given wins).
_FD_CREATORS = {"open": ("fd", "path"), "memfd_create": ("fd", "name"), "gmem_create": ("fd",)}


def declared_names(sc: Scenario) -> dict[str, set[Any]]:
    """Names some part of the file creates: processes, threads, mappings, fds, and the VMs
    given a memslot. A name
    missing at run time that is in here vanished at run time (its creating step failed, its
    process died): the step that uses it fails with ESRCH, ENOENT or EBADF and the run goes
    on. A name in no creating step is a mistake in the file (exit status 2)."""
    out: dict[str, set[Any]] = {"proc": set(), "thread": set(), "mapping": set(), "fd": set(),
                                "memslot": set()}
    # threads by (process, thread): a fork's child has one thread, named as the thread that
    # called fork() (its first thread when the step names none); vm_create gives the VMM a
    # thread vcpuN per vCPU (kvm.do_vm_create)
    first: dict[str, str] = {}
    for p in sc.processes:
        out["proc"].add(p.name)
        out["thread"].update((p.name, t) for t in p.threads)
        first.setdefault(p.name, p.threads[0])
    for step in sc.steps:
        a: Any = step.action
        if step.key == "spawn":
            out["proc"].add(a.proc)
            out["thread"].update((a.proc, t) for t in a.threads)
            first.setdefault(a.proc, a.threads[0])
        elif step.key == "fork":
            out["proc"].add(a.child)
            t = a.thread or first.get(a.proc, "main")
            out["thread"].add((a.child, t))
            first.setdefault(a.child, t)
        elif step.key == "clone":
            out["thread"].add((a.proc, a.new))
        elif step.key == "vm_create":
            out["thread"].update((a.vmm, f"vcpu{i}") for i in range(a.vcpus))
        elif step.key in ("mmap", "shmat"):
            out["mapping"].add(a.name)
        elif step.key == "memslot":
            out["memslot"].add(a.vm)
        for fld in _FD_CREATORS.get(step.key, ()):
            value = getattr(a, fld, None)
            if value is not None:
                out["fd"].add(value)
                break
    return out


def _process_names(sc: Scenario) -> list[str]:
    names = [p.name for p in sc.processes]
    for step in sc.steps:
        new = getattr(step.action, "proc", None) if step.key == "spawn" else \
            getattr(step.action, "child", None) if step.key == "fork" else None
        if new is not None and new not in names:
            names.append(new)
    return names
