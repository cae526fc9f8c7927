"""Check configurations: YAML with line numbers, a strict schema, one-line errors.

``load_config(path)`` gives a ``CheckConfig``; ``standard_config()`` is the shipped default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, NoReturn

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from memfail.check.events import EVENTS, check_action, event_names
from memfail.model.units import parse_size

STANDARD = Path(__file__).with_name("standard.yaml")
MAX_BYTES = 1 << 20
MAX_NODES = 20_000
_PLAIN = {"tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "map", "seq")}
Loc = tuple[str | int, ...]


class ConfigError(ValueError):
    """Bad check configuration: rendered ``FILE:LINE: FIELD: message`` on one line."""

    def __init__(self, file: str, line: int | None, field: str | None, message: str) -> None:
        self.file, self.line, self.field = file, line, field
        self.message = " ".join(message.split())
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return ": ".join([where, *([self.field] if self.field else []), self.message])


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    host: HostSpec = Field(default_factory=HostSpec)
    processes: list[ProcessSpec] = Field(default_factory=list)
    guest_memfd: list[GmemSpec] = Field(default_factory=list)
    vms: list[VmSpec] = Field(default_factory=list)
    setup: list[dict[str, Any]] = Field(default_factory=list)
    events: list[EventSpec] = Field(min_length=1)
    bounds: BoundsSpec = Field(default_factory=BoundsSpec)
    properties: list[str] | None = None
    symmetry: bool = False



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
    for i, v in enumerate(cfg.vms):
        g = gmems.get(v.gmem) if v.gmem else None
        size = scaled_size(cfg, g.size if g else v.memory)
        pages[v.name] = size >> 12
        backing = g.backing if g else "2M"
        if backing == "4K":
            continue
        order = cfg.geometry.pmd_order if backing == "2M" else cfg.geometry.pud_order
        need[backing] = need.get(backing, 0) + -(-size // (4096 << order))
        where.setdefault(backing, ("guest_memfd", cfg.guest_memfd.index(g), "backing") if g
                         else ("vms", i, "memory"))
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
    threads = {p.name: p.threads for p in cfg.processes}
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
    from memfail.check.properties import PROPERTY_NAMES

    for i, name in enumerate(cfg.properties or []):
        if name not in PROPERTY_NAMES:
            out.append((("properties", i), f"unknown property {name!r}; choose from "
                        f"{', '.join(PROPERTY_NAMES)}"))
    for i, e in enumerate(cfg.events):
        vm = e.params.get("vm")
        for name in _each(vm):
            if name not in vms:
                out.append((("events", i, "vm"), f"unknown vm {name!r}; vms: "
                            f"{', '.join(sorted(vms)) or 'none (define them under vms)'}"))
    return out


# --------------------------------------------------------------------------- loading


def load_config(path: str | Path) -> CheckConfig:
    """Load and validate a configuration file; raise ``ConfigError`` on any problem."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(str(path), None, None,
                          f"cannot read: {e.strerror or e}; check the path") from None
    return load_config_text(data, str(path))


def standard_config() -> CheckConfig:
    return load_config(STANDARD)


def load_config_text(data: bytes | str, file: str = "<string>") -> CheckConfig:
    raw = data.encode() if isinstance(data, str) else data
    if len(raw) > MAX_BYTES:
        raise ConfigError(file, None, None, "file larger than 1 MiB; a check configuration is small")
    if b"\0" in raw[:8192]:
        raise ConfigError(file, None, None, "binary file; a configuration is UTF-8 YAML text")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(file, None, None, "not UTF-8 text; save the file as UTF-8") from None
    yaml = YAML(typ="rt", pure=True)
    try:
        node = yaml.compose(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise ConfigError(file, mark.line + 1 if mark else None, None,
                          f"invalid YAML: {e.problem or e.context}") from None
    except YAMLError as e:
        raise ConfigError(file, None, None, f"invalid YAML: {e}") from None
    if node is None:
        raise ConfigError(file, None, None, "empty file; give at least policies: and events:")
    lines: dict[Loc, int] = {}
    value = _Plain(file, yaml, lines).convert(node, ())
    if not isinstance(value, dict):
        raise ConfigError(file, node.start_mark.line + 1, None,
                          "the top level must be a mapping (policies:, events:, ...)")
    try:
        cfg = CheckConfig.model_validate(value)
    except ValidationError as err:
        first = err.errors()[0]
        loc: Loc = tuple(first["loc"])
        # "params" is internal: the user wrote event parameters at the event's own level.
        loc = tuple(x for x in loc if x != "params" and not str(x).startswith("function-"))
        line = _line(lines, loc)
        msg = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = "unknown field; remove it or check its spelling (see docs/check.md)"
        elif first["type"] == "missing":
            msg = "required field is missing"
        raise ConfigError(file, line, _fmt(loc) or None, msg) from None
    for loc, msg in _references(cfg) or _memory(cfg):
        raise ConfigError(file, _line(lines, loc), _fmt(loc), msg)
    return cfg


def _line(lines: dict[Loc, int], loc: Loc) -> int | None:
    while True:
        if loc in lines:
            return lines[loc]
        if not loc:
            return None
        loc = loc[:-1]


def _fmt(loc: Loc) -> str:
    out = ""
    for x in loc:
        out += f"[{x}]" if isinstance(x, int) else (f".{x}" if out else str(x))
    return out


class _Plain:
    """YAML nodes to plain Python: no aliases, no tags, bounded size, lines recorded."""

    def __init__(self, file: str, yaml: YAML, lines: dict[Loc, int]) -> None:
        self.file, self.yaml, self.lines, self.count = file, yaml, lines, 0

    def fail(self, node: Node, loc: Loc, msg: str) -> NoReturn:
        raise ConfigError(self.file, node.start_mark.line + 1, _fmt(loc) or None, msg)

    def convert(self, node: Node, loc: Loc) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            self.fail(node, loc, f"more than {MAX_NODES} YAML nodes; refused")
        anchor = getattr(node, "anchor", None)
        if anchor is not None and getattr(anchor, "value", anchor):
            self.fail(node, loc, "anchors and aliases are not supported; write values in full")
        tag = str(getattr(node.tag, "value", node.tag))
        if tag not in _PLAIN:
            self.fail(node, loc, f"YAML tag {tag.replace('tag:yaml.org,2002:', '!!')!r} is not allowed; use plain values")
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, MappingNode):
            out: dict[str, Any] = {}
            for k, v in node.value:
                if not isinstance(k, ScalarNode):
                    self.fail(k, loc, "mapping keys must be plain scalars")
                key = str(k.value)
                if key in out:
                    self.fail(k, (*loc, key), "duplicate key; give each key once")
                self.lines[(*loc, key)] = k.start_mark.line + 1
                out[key] = self.convert(v, (*loc, key))
            return out
        if isinstance(node, SequenceNode):
            return [self.convert(x, (*loc, i)) for i, x in enumerate(node.value)]
        assert isinstance(node, ScalarNode)
        return self.yaml.constructor.construct_object(node, deep=True)
