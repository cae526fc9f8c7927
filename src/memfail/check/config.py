"""Check configurations: YAML with line numbers, a strict schema, one-line errors.

``load_config(path)`` gives a ``CheckConfig``; ``standard_config()`` is the shipped default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from memfail.check.events import EVENTS, check_action, event_names
from memfail.inputs import InputError, did_you_mean, fmt_loc, line_of, load_yaml
from memfail.model.units import Geometry, parse_size

STANDARD = Path(__file__).with_name("standard.yaml")
MAX_BYTES = 1 << 20
MAX_NODES = 20_000
Loc = tuple[str | int, ...]


class ConfigError(InputError):
    """Bad check configuration: rendered ``FILE:LINE: FIELD: message`` on one line."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class GeometrySpec(Strict):
    """Scaled huge pages: a "2M" page of 2^pmd_order base pages, a "1G" of 2^pud_order."""

    pmd_order: int = Field(default=2, ge=1, le=9)
    pud_order: int = Field(default=3, ge=2, le=18)

    @model_validator(mode="after")
    def _orders(self) -> GeometrySpec:
        if self.pud_order <= self.pmd_order:
            raise ValueError("pud_order must be larger than pmd_order")
        return self


class HostSpec(Strict):
    memory: int | str = "64M"
    hugepages: dict[Literal["2M", "1G"], Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    sysctl: dict[str, int] = Field(default_factory=dict)

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: int | str) -> int | str:
        """The range a scenario takes (scenario/schema.py ``host_memory``), so that the set-up
        can build the host and every counterexample loads in `memfail run`."""
        from memfail.scenario.schema import host_memory

        return host_memory(v)


class ProcessSpec(Strict):
    name: str = Field(min_length=1)
    threads: list[str] = Field(default_factory=lambda: ["main"], min_length=1)
    sigbus: Literal["handler", "default", "ignore"] = "default"
    mce_kill: dict[str, Literal["early", "late", "default"]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _threads(self) -> ProcessSpec:
        for t in self.mce_kill:
            if t not in self.threads:
                raise ValueError(f"mce_kill names thread {t!r}, not one of {self.threads}")
        return self

    def early_threads(self, early_kill: int = 0) -> tuple[str, ...]:
        """The threads task_early_kill() counts as EARLY, in thread-list order (R12): those
        with PR_MCE_KILL_EARLY, and, when vm.memory_failure_early_kill is 1, those that chose
        no per-thread policy (``default`` or not listed: PF_MCE_PROCESS clear, R9)."""
        return tuple(t for t in self.threads
                     if self.mce_kill.get(t, "default") == "early"
                     or (early_kill == 1 and self.mce_kill.get(t, "default") == "default"))


class GmemSpec(Strict):
    """A guest_memfd inode: size, backing (4K pages or HugeTLB 2M/1G) and flags."""

    name: str = Field(min_length=1)
    size: int | str = "2M"
    backing: Literal["4K", "2M", "1G"] = "2M"
    flags: list[Literal["mmap", "init_shared"]] = Field(default_factory=list)

    @field_validator("size")
    @classmethod
    def _size(cls, v: int | str) -> int | str:
        parse_size(v)
        return v


class VmSpec(Strict):
    """A VM: its type, the VMM process that runs it, and its guest memory."""

    name: str = Field(min_length=1)
    type: Literal["default", "sw-protected", "snp", "tdx"] = "default"
    vmm: str
    vcpus: int = Field(default=1, ge=1, le=4)
    gmem: str | None = None
    memory: int | str = "2M"
    # the guest as an actor (docs/mce.md): cooperative, careless, hostile, confidential
    behaviour: Literal["cooperative", "careless", "hostile", "confidential"] = "cooperative"

    @model_validator(mode="after")
    def _confidential(self) -> VmSpec:
        """A confidential guest re-executes an access after a #VC/#VE: SNP and TDX only, as
        vm_create refuses otherwise (kvm.do_vm_create)."""
        if self.behaviour == "confidential" and self.type not in ("snp", "tdx"):
            raise ValueError(f"behaviour confidential needs type snp or tdx, not {self.type}")
        return self


class EventSpec(Strict):
    """One entry of the event alphabet: a named event, its parameters (a list means "each of
    these values"), and an optional cap on how often it may happen along one path."""

    event: str
    params: dict[str, Any] = Field(default_factory=dict)
    limit: int | None = Field(default=None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _split(cls, data: Any) -> Any:
        if isinstance(data, dict) and "params" not in data:
            rest = {k: v for k, v in data.items() if k not in ("event", "limit")}
            return {k: v for k, v in data.items() if k in ("event", "limit")} | {"params": rest}
        return data

    @field_validator("event")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in EVENTS:
            raise ValueError(f"unknown event {v!r}; known events: {', '.join(event_names())}")
        return v

    @model_validator(mode="after")
    def _params(self) -> EventSpec:
        EVENTS[self.event].check_params(self.params)
        return self


class BoundsSpec(Strict):
    depth: int | None = Field(default=8, ge=0)
    errors: int = Field(default=1, ge=0)
    states: int | None = Field(default=None, ge=1)
    seconds: float | None = Field(default=None, gt=0)
    memory_mb: float | None = Field(default=None, gt=0)


class CheckConfig(Strict):
    """The whole configuration file (see docs/check.md)."""

    name: str = "check"
    description: str = ""
    profile: str = "next"
    policies: list[str] = Field(min_length=1)
    geometry: GeometrySpec = Field(default_factory=GeometrySpec)

    @field_validator("policies", mode="before")
    @classmethod
    def _inline_policies(cls, v: Any) -> Any:
        """An inline policy (``{base: minimum, unmap_stage2: folio}``) as its YAML flow text,
        which ``make_policy`` reads; ``_validate`` then names it ``minimum{unmap_stage2=folio}``
        (``policy_text``)."""
        if isinstance(v, list):
            for i, x in enumerate(v):
                if not isinstance(x, str | dict):
                    raise ValueError(f"policies[{i}]: a policy is a preset name (minimum), knobs "
                                     "on a preset ({base: minimum, unmap_stage2: folio}) or "
                                     f"minimum{{unmap_stage2=folio}}, got {x!r}")
            return [json.dumps(x) if isinstance(x, dict) else x for x in v]
        return v
    host: HostSpec = Field(default_factory=HostSpec)
    processes: list[ProcessSpec] = Field(default_factory=list)
    guest_memfd: list[GmemSpec] = Field(default_factory=list)
    vms: list[VmSpec] = Field(default_factory=list)
    setup: list[dict[str, Any]] = Field(default_factory=list)
    events: list[EventSpec] = Field(min_length=1)
    bounds: BoundsSpec = Field(default_factory=BoundsSpec)
    properties: list[str] | None = None
    symmetry: bool = False
    _file: str | None = PrivateAttr(default=None)   # the file it was read from
    _lines: dict[Loc, int] = PrivateAttr(default_factory=dict)   # field -> line in it

    def where(self, loc: Loc) -> tuple[str | None, int | None]:
        """The file this configuration was read from (None: built in code) and the line of
        field ``loc`` in it (None when the file does not say)."""
        return self._file, line_of(self._lines, loc) if self._file is not None else None


def _each(v: Any) -> list[Any]:
    """An event parameter's values: a list stands for each of its items; None for none."""
    return v if isinstance(v, list) else [] if v is None else [v]


def scaled_size(cfg: CheckConfig, size: int | str) -> int:
    """Bytes of ``size`` in the scaled geometry: whole "2M"/"1G" multiples become that many
    scaled huge pages; anything else (``3p``, ``8K``) is taken as written."""
    n = parse_size(size)
    for real, order in ((1 << 30, cfg.geometry.pud_order), (2 << 20, cfg.geometry.pmd_order)):
        if n and n % real == 0:
            return (n // real) << (12 + order)
    return n


def _memory(cfg: CheckConfig) -> list[tuple[Loc, str]]:
    """Guest memory the set-up cannot build: pages beyond a VM's memory, and HugeTLB pools
    too small for the guest memory (which would otherwise fail as ENOMEM in the set-up)."""
    out: list[tuple[Loc, str]] = []
    gmems = {g.name: g for g in cfg.guest_memfd}
    pages: dict[str, int] = {}
    need: dict[str, int] = {}
    where: dict[str, Loc] = {}
    geo = Geometry.scaled(cfg.geometry.pmd_order, cfg.geometry.pud_order)
    for i, v in enumerate(cfg.vms):
        g = gmems.get(v.gmem) if v.gmem else None
        size = scaled_size(cfg, g.size if g else v.memory)
        pages[v.name] = size >> 12
        backing = g.backing if g else "2M"
        if backing == "4K":
            continue
        need[backing] = need.get(backing, 0) + -(-size // geo.huge_size(backing))
        where.setdefault(backing, ("guest_memfd", cfg.guest_memfd.index(g), "backing") if g
                         else ("vms", i, "memory"))
    # the pools fit in the host's memory, each page of its size in the scaled geometry, as
    # a counterexample's scenario checks (scenario/schema.py ``_pool_fits``)
    pool = sum(geo.huge_size(size_name) * n for size_name, n in cfg.host.hugepages.items())
    if pool > parse_size(cfg.host.memory):
        out.append((("host", "hugepages"),
                    f"the HugeTLB pools take {pool >> 10}K in the scaled geometry (a 2M page "
                    f"is {geo.huge_size('2M') >> 10}K, a 1G page {geo.huge_size('1G') >> 10}K)"
                    f" but host.memory is {cfg.host.memory}; lower the counts or raise "
                    "host.memory"))
    for size_name, n in need.items():
        have = cfg.host.hugepages.get(size_name, 0)  # type: ignore[call-overload]
        if have < n:
            out.append((where[size_name],
                        f"the guest memory needs {n} {size_name} HugeTLB page(s) but "
                        f"host.hugepages gives {have}; set host: {{hugepages: {{{size_name}: "
                        f"{n}}}}} or more (events such as realloc need spare ones)"))
    for i, e in enumerate(cfg.events):
        vm = e.params.get("vm")
        page = e.params.get("page")
        # realloc past the end is fallocate's to answer at run time (guest_memfd refuses it
        # with EINVAL, a hugetlbfs file grows): only its first page must be the VM's
        extent = e.params.get("pages", 1) if e.event in ("convert", "punch_hole") else 1
        for name in _each(vm):
            if name not in pages or page is None:
                continue
            for p in _each(page):
                if isinstance(p, int) and isinstance(extent, int) and \
                        not (p >= 0 and p + extent <= pages[name]):
                    out.append((("events", i, "page"),
                                f"page {p}{f' + {extent} pages' if extent != 1 else ''} is "
                                f"beyond {name}'s guest memory: {pages[name]} pages of 4 KiB "
                                f"in the scaled geometry (pages 0..{pages[name] - 1})"))
    return out


def _references(cfg: CheckConfig) -> list[tuple[Loc, str]]:
    """Cross-references the schema cannot see, each with where it is in the file."""
    out: list[tuple[Loc, str]] = []
    procs = {p.name for p in cfg.processes}
    gmems = {g.name for g in cfg.guest_memfd}
    vms = {v.name for v in cfg.vms}
    for section, names in (("processes", [p.name for p in cfg.processes]),
                           ("guest_memfd", [g.name for g in cfg.guest_memfd]),
                           ("vms", [v.name for v in cfg.vms])):
        for i, n in enumerate(names):
            if n in names[:i]:
                out.append(((section, i, "name"), f"{n!r} is defined twice; give each its own name"))
    for i, v in enumerate(cfg.vms):
        if v.vmm not in procs:
            out.append((("vms", i, "vmm"), f"{v.vmm!r} is not a process; define it under "
                        f"processes (known: {', '.join(sorted(procs)) or 'none'})"))
        if v.gmem is not None and v.gmem not in gmems:
            out.append((("vms", i, "gmem"), f"{v.gmem!r} is not defined under guest_memfd "
                        f"(known: {', '.join(sorted(gmems)) or 'none'})"))
    users: dict[str, str] = {}
    for i, v in enumerate(cfg.vms):
        if v.gmem is not None:
            if v.gmem in users:
                out.append((("vms", i, "gmem"), f"guest_memfd {v.gmem!r} is already the memory "
                            f"of {users[v.gmem]!r}; give each VM its own guest_memfd"))
            users.setdefault(v.gmem, v.name)
            if "memory" in v.model_fields_set:
                out.append((("vms", i, "memory"), "a VM with gmem: takes its size from the "
                            "guest_memfd; remove memory: (it is for VMs without guest_memfd)"))
    threads = {p.name: list(p.threads) for p in cfg.processes}
    from memfail.check.events import kvm_model
    if kvm_model():  # vm_create gives the VMM a thread vcpuN per vCPU (kvm.do_vm_create)
        for v in cfg.vms:
            have = threads.setdefault(v.vmm, [])
            have += [f"vcpu{j}" for j in range(v.vcpus) if f"vcpu{j}" not in have]
    vm_spec = {v.name: v for v in cfg.vms}
    spawned = {str(a.get("proc")) for step in cfg.setup for k, a in step.items()
               if k == "spawn" and isinstance(a, dict)}
    for i, e in enumerate(cfg.events):
        vm = e.params.get("vm")
        for name in _each(vm):
            spec = vm_spec.get(name) if isinstance(name, str) else None
            if spec is None:
                continue
            t = e.params.get("thread")
            for x in _each(t):
                if x is not None and x not in threads.get(spec.vmm, []):
                    out.append((("events", i, "thread"), f"{x!r} is not a thread of {spec.vmm} "
                                f"(threads: {', '.join(threads.get(spec.vmm, []))})"))
            c = e.params.get("vcpu")
            for x in _each(c):
                if isinstance(x, int) and x >= spec.vcpus:
                    out.append((("events", i, "vcpu"), f"vCPU {x} does not exist: {name} has "
                                f"{spec.vcpus} (vcpus: {spec.vcpus} gives 0..{spec.vcpus - 1})"))
        if e.event == "action":
            proc = e.params.get("args", {}).get("proc") if isinstance(
                e.params.get("args"), dict) else None
            if isinstance(proc, str) and proc not in procs and proc not in spawned:
                out.append((("events", i, "args", "proc"), f"{proc!r} is not a process; "
                            f"known: {', '.join(sorted(procs)) or 'none'}"))
    made: set[str] = set()  # processes the set-up steps so far spawned
    for i, step in enumerate(cfg.setup):
        if len(step) != 1:
            out.append((("setup", i), f"a set-up step is one action, e.g. `- mmap: {{...}}`; "
                        f"got {len(step)} keys ({', '.join(step)})"))
            continue
        (key, args), = step.items()
        try:
            check_action(key, args if args is not None else {})
        except ValueError as err:
            out.append((("setup", i, key), str(err).removeprefix("event 'action': ")))
            continue
        proc = args.get("proc") if isinstance(args, dict) else None
        if key == "spawn":
            made.add(str(proc))
        elif isinstance(proc, str) and proc not in procs and proc not in made:
            out.append((("setup", i, key, "proc"), f"{proc!r} is not a process (spawn it in an "
                        f"earlier step); known: {', '.join(sorted(procs)) or 'none'}"))
    from memfail.check.properties import PROPERTY_NAMES

    if cfg.properties is not None and not cfg.properties:
        out.append((("properties",), "an empty list checks nothing: name the properties to "
                    f"check ({', '.join(PROPERTY_NAMES)}), or leave properties: out for all"))
    listed = cfg.properties or []
    for i, name in enumerate(listed):
        if name not in PROPERTY_NAMES:
            out.append((("properties", i), f"unknown property {name!r}; choose from "
                        f"{', '.join(PROPERTY_NAMES)}"))
        elif name in listed[:i]:
            out.append((("properties", i), f"{name} is listed twice; list each property "
                        "once"))
    for i, e in enumerate(cfg.events):
        vm = e.params.get("vm")
        for name in _each(vm):
            if name not in vms:
                out.append((("events", i, "vm"), f"unknown vm {name!r}; vms: "
                            f"{', '.join(sorted(vms)) or 'none (define them under vms)'}"))
    return out


# --------------------------------------------------------------------------- loading

HINT = "a check configuration needs at least `policies:` and `events:` (see docs/check.md)"


def load_config(path: str | Path) -> CheckConfig:
    """Load and validate a configuration file; raise ``ConfigError`` on any problem."""
    file = str(path)
    try:
        value, lines = load_yaml(path, file, "check configuration", HINT, max_bytes=MAX_BYTES,
                                 max_nodes=MAX_NODES)
    except InputError as e:
        raise ConfigError(e.file, e.line, e.field, e.message) from None
    return _validate(value, lines, file)


def standard_config() -> CheckConfig:
    return load_config(STANDARD)


def load_config_text(data: bytes | str, file: str = "<string>") -> CheckConfig:
    try:
        value, lines = load_yaml(None, file, "check configuration", HINT, data=data,
                                 max_bytes=MAX_BYTES, max_nodes=MAX_NODES)
    except InputError as e:
        raise ConfigError(e.file, e.line, e.field, e.message) from None
    return _validate(value, lines, file)


def _validate(value: dict[str, Any], lines: dict[Loc, int], file: str) -> CheckConfig:
    """Every field checked, every name resolved, before anything runs."""
    try:
        cfg = CheckConfig.model_validate(value)
    except ValidationError as err:
        first = err.errors(include_url=False)[0]
        loc: Loc = tuple(first["loc"])
        # "params" is internal: the user wrote event parameters at the event's own level.
        loc = tuple(x for x in loc if x != "params" and not str(x).startswith("function-"))
        line = _line(lines, loc)
        msg = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling (see docs/check.md)"
        elif first["type"] == "missing":
            msg = "required field is missing"
        elif first["type"] == "model_type":  # pydantic names the schema's class
            msg = "should be a mapping of its fields ({field: value, ...})"
        elif "input" in first and first["type"] not in ("value_error", "assertion_error"):
            msg = f"{msg}, got {_short(first['input'])}"
        raise ConfigError(file, line, _fmt(loc) or None, msg) from None
    for loc, msg in _names(cfg) or _references(cfg) or _memory(cfg):
        raise ConfigError(file, _line(lines, loc), _fmt(loc), msg)
    from memfail.model.policy.registry import policy_text

    # _names read each one; the configuration is frozen: a copy with the policies named
    named = cfg.model_copy(update={"policies": [policy_text(p) for p in cfg.policies]})
    named._file, named._lines = file, lines
    return named


def _short(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _names(cfg: CheckConfig) -> list[tuple[Loc, str]]:
    """Names that must exist in the model: policies, the kernel profile, sysctls; sizes that
    must be sizes."""
    from memfail.model.host import SYSCTL_DEFAULTS
    from memfail.model.kernel.profiles import PROFILES
    from memfail.model.policy.registry import policy_names, policy_text
    from memfail.model.state import sysctl_in_range, sysctl_range_text

    out: list[tuple[Loc, str]] = []
    seen: dict[str, int] = {}
    for i, pol in enumerate(cfg.policies):
        try:
            text = policy_text(pol)
        except (ValueError, TypeError) as e:
            hint = "" if "{" in pol else did_you_mean(pol, policy_names())
            out.append((("policies", i), f"{e}{hint}"))
            continue
        if text in seen:
            out.append((("policies", i), f"{text} is policies[{seen[text]}] again; list each "
                        "policy once"))
        seen.setdefault(text, i)
    if cfg.profile not in PROFILES:
        out.append((("profile",), f"unknown kernel profile {cfg.profile!r}"
                    f"{did_you_mean(cfg.profile, PROFILES)}; valid: {', '.join(PROFILES)} "
                    "(`memfail profiles` lists them)"))
    for k, v in cfg.host.sysctl.items():
        if k not in SYSCTL_DEFAULTS:
            out.append((("host", "sysctl", k), f"unknown sysctl {k!r}"
                        f"{did_you_mean(k, SYSCTL_DEFAULTS)}; known: {', '.join(SYSCTL_DEFAULTS)}"))
        elif not sysctl_in_range(k, v):
            out.append((("host", "sysctl", k), f"{k} = {v}: {sysctl_range_text(k)} (a write "
                        "of any other value fails with EINVAL)"))
    try:
        if parse_size(cfg.host.memory) <= 0:
            out.append((("host", "memory"), f"{cfg.host.memory!r} is not a positive size"))
    except ValueError as e:
        out.append((("host", "memory"), str(e)))
    sizes: list[tuple[Loc, int | str, str, str]] = []
    gmems = {g.name: g for g in cfg.guest_memfd}
    sizes += [(("guest_memfd", i, "size"), g.size, g.backing,
               f"this guest_memfd is backed by {g.backing} HugeTLB pages")
              for i, g in enumerate(cfg.guest_memfd)]
    sizes += [(("vms", i, "memory"), v.memory, "2M",
               "a VM without guest_memfd is backed by 2M HugeTLB pages")
              for i, v in enumerate(cfg.vms) if v.gmem is None or v.gmem not in gmems]
    for loc, size, backing, why in sizes:
        out += [(loc, m) for m in _size_problems(size, backing, why)]
    return out


HUGE = {"2M": 2 << 20, "1G": 1 << 30}


def _size_problems(size: int | str, backing: str, why: str = "") -> list[str]:
    """Guest memory sizes the scaled geometry can hold: whole 2M/1G multiples are scaled
    (``scaled_size``); memory backed by HugeTLB must be whole pages of its backing size; 4K
    memory below 2M is taken as written."""
    try:
        n = parse_size(size)
    except ValueError as e:
        return [str(e)]
    if n <= 0:
        return [f"{size!r} is not a positive size"]
    if n % 4096:
        return [f"{size!r} is not a whole number of 4 KiB pages"]
    if backing in HUGE and n % HUGE[backing]:
        two = "4M" if backing == "2M" else "2G"
        return [f"{size!r} is not a whole number of {backing} pages, and {why}; give "
                f"{backing}, {two} ... (each whole 2M/1G page becomes one scaled huge page of "
                "the geometry: docs/check.md)"]
    if n >= (2 << 20) and n % (2 << 20):
        return [f"{size!r} is at least 2M but not a whole number of 2M pages; sizes of 2M and "
                "more are scaled as whole 2M/1G multiples (docs/check.md, geometry): give 2M, "
                "4M ... or a size below 2M such as 8K or 3p"]
    return []


def _line(lines: dict[Loc, int], loc: Loc) -> int | None:
    return line_of(lines, loc) or 1


def _fmt(loc: Loc) -> str:
    return fmt_loc(loc)
