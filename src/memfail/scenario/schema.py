"""Pydantic models of a scenario file's parts: header, host, processes and expectations.

Steps are parsed separately (``loader``) because each one holds exactly one action of the closed
set in ``memfail.model.actions``. Every model rejects unknown fields so a typo is reported, not
ignored.
"""

from __future__ import annotations

import dataclasses
import errno as _errno
import re
import signal as _signal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from memfail.model import trace as _trace
from memfail.model.state import sysctl_in_range, sysctl_range_text
from memfail.model.units import Geometry, fmt_size, parse_size

from .errors import did_you_mean, one_of

HugeSize = Literal["2M", "1G"]
MceKill = Literal["early", "late", "default"]

KNOWN_SYSCTLS = (
    "vm.memory_failure_early_kill",
    "vm.memory_failure_recovery",
    "vm.enable_soft_offline",
    "vm.nr_hugepages",
    "vm.nr_overcommit_hugepages",
    "vm.panic_on_unrecoverable_memory_failure",
)
MEMINFO_FIELDS = (
    "HardwareCorrupted", "HugePages_Total", "HugePages_Free", "HugePages_Rsvd",
    "HugePages_Surp", "Hugepagesize", "AnonHugePages", "Shmem",
)
# Per-size HugeTLB pool counters (sysfs hugepages-*/nr_hugepages, ...) next to meminfo's own.
POOL_FIELD_RE = re.compile(r"^(nr|free|resv|surplus)_hugepages_(2M|1G)$")
MF_STATS_FIELDS = ("total", "ignored", "failed", "delayed", "recovered")
SI_CODES = {
    "AR": "BUS_MCEERR_AR", "BUS_MCEERR_AR": "BUS_MCEERR_AR", "4": "BUS_MCEERR_AR",
    "AO": "BUS_MCEERR_AO", "BUS_MCEERR_AO": "BUS_MCEERR_AO", "5": "BUS_MCEERR_AO",
    "SI_KERNEL": "SI_KERNEL", "128": "SI_KERNEL",
    "SI_USER": "SI_USER", "0": "SI_USER",  # kill(2)
    "BUS_ADRALN": "BUS_ADRALN", "1": "BUS_ADRALN",
    "BUS_ADRERR": "BUS_ADRERR", "2": "BUS_ADRERR",  # access beyond the end of a file (R41)
    "BUS_OBJERR": "BUS_OBJERR", "3": "BUS_OBJERR",
}
ERRNO_NAMES = frozenset(_errno.errorcode.values()) | {
    "EHWPOISON", "ENOTRECOVERABLE", "EOPNOTSUPP", "ENOTSUP", "ESRCH", "EBADF",
    "PANICKED",  # the errno of any action after the host panicked
}
# Largest size any field may hold: the 128 TiB x86-64 user address space.
MAX_SIZE = 1 << 47
MAX_HOST_MEMORY = 1 << 50


def event_kinds() -> dict[str, type[_trace.Event]]:
    """Every trace event kind (``kind`` ClassVar) defined in ``memfail.model.trace``."""
    kinds: dict[str, type[_trace.Event]] = {}
    todo: list[type[_trace.Event]] = [_trace.Event]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            kinds.setdefault(sub.kind, sub)
            todo.append(sub)
    return dict(sorted(kinds.items()))


def normalise_errno(value: Any) -> str | None:
    if value is None:
        return None
    name = str(value).strip().lstrip("-").upper()
    if name not in ERRNO_NAMES:
        raise ValueError(f"unknown errno name {value!r}{did_you_mean(name, ERRNO_NAMES)}; "
                         "write a name such as EBUSY, EHWPOISON or null for success")
    return name


def _as_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _check_patterns(patterns: list[str]) -> list[str]:
    for p in patterns:
        if len(p) >= 2 and p.startswith("/") and p.endswith("/"):
            try:
                re.compile(p[1:-1])
            except re.error as e:
                raise ValueError(f"bad regular expression {p!r}: {e}; fix it, or drop the "
                                 "surrounding slashes to match a plain substring") from None
    return patterns


# Comparison operators: a mapping whose keys are all operator names is a test, not a
# partial mapping (see docs/scenario-format.md, "matching values").
OPERATORS = ("not", "contains", "lacks", "same_as", "differs_from", "at_least", "at_most")
SAVE_REF_RE = re.compile(r"^[A-Za-z_][\w\-]*(\.[A-Za-z_][\w\-]*)*$")


def is_operator(v: Any) -> bool:
    return isinstance(v, dict) and bool(v) and all(k in OPERATORS for k in v)


def check_operators(v: Any) -> None:
    """Reject malformed operator tests early (bad input), recursively."""
    if isinstance(v, list):
        for x in v:
            check_operators(x)
        return
    if not isinstance(v, dict):
        return
    ops = [k for k in v if k in OPERATORS]
    if ops and len(ops) != len(v):
        other = next(k for k in v if k not in OPERATORS)
        raise ValueError(f"{other!r} cannot stand next to the operator {ops[0]!r}; an "
                         f"operator mapping holds only operators ({one_of(OPERATORS)})")
    for k, x in v.items():
        if k in ("contains", "lacks") and not isinstance(x, list | str | int):
            raise ValueError(f"{k} takes a list of items (or one item), got {x!r}")
        if k in ("same_as", "differs_from") and not (isinstance(x, str)
                                                      and SAVE_REF_RE.match(x)):
            raise ValueError(f"{k} takes the name given to an earlier step's `save:` (NAME or "
                             f"NAME.key), got {x!r}")
        if k in ("at_least", "at_most") and (not isinstance(x, int) or isinstance(x, bool)):
            raise ValueError(f"{k} takes an integer, got {x!r}")
        check_operators(x)


def saved_refs(v: Any) -> list[str]:
    """Every save name an expectation refers to (same_as / differs_from)."""
    out: list[str] = []
    if isinstance(v, list):
        for x in v:
            out += saved_refs(x)
    elif isinstance(v, dict):
        for k, x in v.items():
            if k in ("same_as", "differs_from") and isinstance(x, str):
                out.append(x.split(".")[0])
            else:
                out += saved_refs(x)
    return out


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- host, processes


class GeometrySpec(Strict):
    """Scaled page geometry: huge pages of ``1 << pmd_order`` and ``1 << pud_order`` base
    pages ("2M" and "1G" keep their names). Real x86-64 is pmd_order 9, pud_order 18."""

    pmd_order: int = Field(default=9, ge=1, le=9)
    pud_order: int = Field(default=18, ge=2, le=18)

    @model_validator(mode="after")
    def _ordered(self) -> GeometrySpec:
        if self.pud_order <= self.pmd_order:
            raise ValueError("pud_order must be larger than pmd_order")
        return self


def host_memory(v: int | str) -> int | str:
    """``v`` if it is a host memory size the model takes (64M to 1P), else ValueError; a
    check configuration's host takes the same (check/config.py)."""
    n = parse_size(v)
    if n < (64 << 20) or n > MAX_HOST_MEMORY:
        raise ValueError(f"host memory {fmt_size(n)} is out of range; give between 64M and 1P")
    return v


class HostSpec(Strict):
    """The machine: memory size, HugeTLB pools, HVO and sysctls at boot."""

    memory: int | str = "16G"
    hugepages: dict[HugeSize, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    overcommit: dict[HugeSize, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    hvo: bool = False
    hvo_restore_fails: bool = False
    sysctl: dict[str, int] = Field(default_factory=dict)
    geometry: GeometrySpec | None = None

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: int | str) -> int | str:
        return host_memory(v)

    @field_validator("sysctl")
    @classmethod
    def _sysctl(cls, v: dict[str, int]) -> dict[str, int]:
        for name in v:
            if name not in KNOWN_SYSCTLS:
                raise ValueError(f"unknown sysctl {name!r}{did_you_mean(name, KNOWN_SYSCTLS)}; "
                                 f"known: {one_of(KNOWN_SYSCTLS)}")
            if not sysctl_in_range(name, v[name]):
                raise ValueError(f"{name} = {v[name]}: {sysctl_range_text(name)} (a write of "
                                 "any other value fails with EINVAL)")
        return v

    @model_validator(mode="after")
    def _pool_fits(self) -> HostSpec:
        """The pools fit in the host's memory, each huge page of its size in the geometry:
        a scaled "1G" page is 2^pud_order pages of 4 KiB (the check's counterexamples have
        64M hosts with a scaled 1G pool), a real one 1 GiB."""
        mem = parse_size(self.memory)
        g = self.geometry
        geo = Geometry.scaled(g.pmd_order, g.pud_order) if g is not None else None
        pool = sum((parse_size(size) if geo is None else geo.huge_size(size)) * n
                   for size, n in self.hugepages.items())
        if pool > mem:
            raise ValueError(
                f"hugepages need {fmt_size(pool)} but host memory is {fmt_size(mem)}; "
                "lower the counts or raise host.memory"
            )
        return self


class ProcessSpec(Strict):
    """A process created before step 0 (Spawn, then Prctl and Sigaction as needed)."""

    name: str = Field(min_length=1)
    threads: list[str] = Field(default_factory=lambda: ["main"], min_length=1)
    sigbus: Literal["handler", "exit", "default", "ignore"] = "default"
    exit_code: int = Field(default=1, ge=0, le=255)  # what an ``exit`` handler passes to _exit
    mce_kill: dict[str, MceKill] = Field(default_factory=dict)
    caps: bool = True

    @model_validator(mode="after")
    def _threads_known(self) -> ProcessSpec:
        dup = sorted({t for t in self.threads if self.threads.count(t) > 1})
        if dup:
            raise ValueError(f"thread {dup[0]!r} is listed twice; give each thread its own name")
        for t in self.mce_kill:
            if t not in self.threads:
                raise ValueError(f"mce_kill names thread {t!r}, which is not in threads "
                                 f"[{one_of(self.threads)}]{did_you_mean(t, self.threads)}")
        return self


# --------------------------------------------------------------------------- expectations


class SignalExpect(Strict):
    """A partial match on one generated (queued) signal."""

    proc: str | None = None
    thread: str | None = None
    code: str | None = None
    addr: int | str | None = None
    lsb: int | None = None
    forced: bool | None = None

    @field_validator("code", mode="before")
    @classmethod
    def _code(cls, v: Any) -> Any:
        if v is None:
            return None
        key = str(v).strip().upper()
        if key not in SI_CODES:
            raise ValueError(f"unknown si_code {v!r}; write AR, AO, SI_KERNEL, SI_USER, "
                             "BUS_ADRERR (or BUS_MCEERR_AR / BUS_MCEERR_AO)")
        return SI_CODES[key]


class MfExpect(Strict):
    """A partial match on one memory_failure_event (page type and result strings)."""

    type: str | None = None
    result: str | None = None


class _Logs(Strict):
    log: list[str] = Field(default_factory=list)
    no_log: list[str] = Field(default_factory=list)
    log_order: list[str] = Field(default_factory=list)
    log_exact: list[str] | None = None
    log_count: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)

    @field_validator("log", "no_log", "log_order", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return _as_list(v)

    @field_validator("log", "no_log", "log_order", "log_exact")
    @classmethod
    def _patterns(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else _check_patterns(v)

    @field_validator("log_count")
    @classmethod
    def _count_patterns(cls, v: dict[str, int]) -> dict[str, int]:
        _check_patterns(list(v))
        return v


class StepExpect(_Logs):
    """What one step must produce; a field is checked only when it is given."""

    ret: Any = None
    errno: str | None = None
    signals: list[SignalExpect] = Field(default_factory=list)
    signals_subset: bool = False
    killed: list[str] = Field(default_factory=list)
    mf: list[MfExpect] = Field(default_factory=list)
    panic: bool = False
    events: list[dict[str, Any]] = Field(default_factory=list)
    data: Any = None

    @field_validator("ret", "data")
    @classmethod
    def _operators(cls, v: Any) -> Any:
        check_operators(v)
        return v

    @field_validator("errno", mode="before")
    @classmethod
    def _errno(cls, v: Any) -> str | None:
        return normalise_errno(v)

    @field_validator("events")
    @classmethod
    def _events(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kinds = event_kinds()
        for i, spec in enumerate(v):
            kind = spec.get("event")
            if kind is None:
                raise ValueError(f"events[{i}] has no 'event' key; write e.g. "
                                 "{event: stage2_zap, vm: vm0}")
            if kind not in kinds:
                raise ValueError(f"events[{i}]: unknown event kind {kind!r}"
                                 f"{did_you_mean(kind, kinds)}; known: {one_of(kinds)}")
            fields = {f.name for f in dataclasses.fields(kinds[kind])}
            for name in spec:
                if name != "event" and name not in fields:
                    raise ValueError(f"events[{i}]: {kind} has no field {name!r}"
                                     f"{did_you_mean(name, fields)}; fields: "
                                     f"{one_of(sorted(fields))}")
        return v


class ExitCode(Strict):
    code: int


class ExitSignal(Strict):
    signal: int | str

    @field_validator("signal")
    @classmethod
    def _signal(cls, v: int | str) -> int:
        if isinstance(v, int):
            return v
        name = v.strip().upper()
        name = name if name.startswith("SIG") else "SIG" + name
        try:
            return int(_signal.Signals[name])
        except KeyError:
            raise ValueError(f"unknown signal {v!r}; write a name such as SIGBUS or SIGKILL, "
                             "or a number") from None


# "ended": exited or killed; "never-started": the step that creates it failed (a fork by a
# parent that had died)
ExitState = Literal["running", "killed", "exited", "ended", "never-started"]


class ExitNot(Strict):
    """Anything but the given end state: ``{not: {code: 0}}`` ("did not exit 0")."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    not_: ExitState | ExitCode | ExitSignal = Field(alias="not")


def _exit_kind(v: Any) -> str:
    if isinstance(v, dict):
        return "not" if "not" in v else "signal" if "signal" in v else "code"
    return "not" if isinstance(v, ExitNot) else "signal" if isinstance(v, ExitSignal) \
        else "code" if isinstance(v, ExitCode) else "state"


ExitExpect = Annotated[
    Annotated[ExitState, Tag("state")]
    | Annotated[ExitCode, Tag("code")]
    | Annotated[ExitSignal, Tag("signal")]
    | Annotated[ExitNot, Tag("not")],
    Discriminator(_exit_kind),
]


class FinalExpect(_Logs):
    """What must hold once every step has run; a field is checked only when it is given."""

    meminfo: dict[str, int] = Field(default_factory=dict)
    meminfo_delta: dict[str, int] = Field(default_factory=dict)
    mf_stats: dict[str, int] = Field(default_factory=dict)
    exit: dict[str, ExitExpect] = Field(default_factory=dict)
    panic: bool = False
    outcomes: dict[str, Any] = Field(default_factory=dict)

    @field_validator("meminfo", "meminfo_delta")
    @classmethod
    def _meminfo(cls, v: dict[str, int]) -> dict[str, int]:
        pools = [k for k in v if POOL_FIELD_RE.match(k)]
        _known_keys({k: n for k, n in v.items() if k not in pools}, MEMINFO_FIELDS,
                    "meminfo field", "or nr|free|resv|surplus_hugepages_2M|1G")
        return v

    @field_validator("mf_stats")
    @classmethod
    def _mf_stats(cls, v: dict[str, int]) -> dict[str, int]:
        return _known_keys(v, MF_STATS_FIELDS, "mf_stats counter")

    @field_validator("outcomes")
    @classmethod
    def _outcomes(cls, v: dict[str, Any]) -> dict[str, Any]:
        from memfail.model.outcomes import OUTCOME_KEYS
        return _known_keys(v, OUTCOME_KEYS, "outcome")


def _known_keys(v: dict[str, Any], known: tuple[str, ...], what: str, more: str = ""
                ) -> dict[str, Any]:
    for k in v:
        if k not in known:
            raise ValueError(f"unknown {what} {k!r}{did_you_mean(k, known)}; known: "
                             f"{one_of(known)}" + (f", {more}" if more else ""))
    return v


# --------------------------------------------------------------------------- the file


class ScenarioHeader(Strict):
    """Every top-level field of a scenario file (``steps`` items are checked by the loader)."""

    name: str | None = None
    description: str = ""
    profile: str | None = None
    policy: str | dict[str, Any] | None = None
    seed: int = 0
    host: HostSpec = Field(default_factory=HostSpec)
    processes: list[ProcessSpec] = Field(default_factory=list)
    steps: list[Any] = Field(min_length=1)
    expect: FinalExpect | None = None

    @model_validator(mode="after")
    def _unique_processes(self) -> ScenarioHeader:
        names = [p.name for p in self.processes]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"process {dup[0]!r} is defined twice; give each process its "
                             "own name")
        return self


TOP_LEVEL_FIELDS = tuple(ScenarioHeader.model_fields)
