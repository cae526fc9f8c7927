"""Fleet parameters: the pydantic schema, the cited defaults and the fleet-file loader.

Every error in a fleet file becomes one ``FILE:LINE: FIELD: message`` line (``FleetInputError``).
"""

from __future__ import annotations

import copy
import difflib
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from memfail.inputs import InputError, Loc, line_of, load_yaml

MEMORY_KINDS = ("gmem_private", "gmem_shared", "hugetlb_free", "vmm", "kernel")
MemoryName = Literal["gmem_private", "gmem_shared", "hugetlb_free", "vmm", "kernel"]
MODE_NAMES = ("single_bit", "single_word", "single_column", "single_row", "single_bank",
              "multi_bank", "multi_rank")
POLICY_PRESETS = ("mainline", "mf-delayed-fix", "minimum", "unmap", "kill-vm", "unusable",
                  "future", "hugetlbfs")
RETIRED = {
    "dram.ranks_per_host": "no longer a parameter: a host's ranks follow from its memory, "
                           "fleet.host_memory_gib x 8 / (dram.chip_gbit x "
                           "dram.data_chips_per_rank), and its fault rate from its chips; set "
                           "fleet.host_memory_gib (and dram.chip_gbit) instead",
}
"""Former fields, and what to write instead."""
UNCITED = ("kernel_profile", "policies")
"""Top-level fields that are choices, not measurements: they need no citation."""


class FleetError(ValueError):
    """A fleet run cannot proceed; the message is one line meant for the user."""


class FleetInputError(FleetError):
    """A fleet file or a command-line assignment is wrong: ``FILE:LINE: FIELD: message``."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _share(v: float) -> float:
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"a share must lie in [0, 1], got {v}")
    return v


def _sums_to_one(shares: list[float], what: str) -> None:
    total = math.fsum(shares)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"the shares of {what} must sum to 1, they sum to {total:.6g}")


class Fleet(_Strict):
    """The fleet: how many hosts and how much memory each has."""

    hosts: int = Field(gt=0)
    host_memory_gib: float = Field(gt=0)
    host_cpus: int = Field(default=64, gt=0, le=8192)
    """Online CPUs of a host: each one is held by a broadcast machine check (M3, M9)."""


class Dram(_Strict):
    """DIMM/chip organisation: how many DRAM chips a host's memory takes (which sets its fault
    rate, dram-field-data §2.2: FIT is per device) and the page footprint of each fault mode.
    The ranks of a host follow from its memory: ``host_memory_gib x 8 / (chip_gbit x
    data_chips_per_rank)``."""

    chip_gbit: float = Field(gt=0)
    chips_per_rank: int = Field(gt=0)
    data_chips_per_rank: int = Field(gt=0)
    row_bytes_per_chip: int = Field(gt=0)
    footprint_cap_pages: int = Field(ge=1, le=4096)

    @model_validator(mode="after")
    def _data_chips(self) -> Dram:
        if self.data_chips_per_rank > self.chips_per_rank:
            raise ValueError("data_chips_per_rank cannot exceed chips_per_rank")
        return self


class ModeRate(_Strict):
    """Fault rates of one DRAM fault mode, in FIT per chip (failures per 1e9 device-hours)."""

    transient_fit: float = Field(ge=0)
    permanent_fit: float = Field(ge=0)


class Faults(_Strict):
    """Uncorrectable-fault arrival: the machine-level rate and its split by fault mode."""

    ue_rate_per_host_year: float = Field(gt=0)
    reference_chips: float = Field(default=576.0, gt=0)
    """DRAM chips of the host ``ue_rate_per_host_year`` is the rate of; a host with more or
    fewer chips has a proportionally higher or lower rate (``FleetParams.fault_rate``)."""
    modes: dict[str, ModeRate]

    @field_validator("modes")
    @classmethod
    def _known_modes(cls, v: dict[str, ModeRate]) -> dict[str, ModeRate]:
        unknown = sorted(set(v) - set(MODE_NAMES))
        if unknown:
            raise ValueError(f"unknown fault mode {unknown[0]!r}; valid: {', '.join(MODE_NAMES)}")
        if not any(m.transient_fit + m.permanent_fit > 0 for m in v.values()):
            raise ValueError("at least one fault mode needs a positive rate")
        return v


class Frailty(_Strict):
    """Per-host fault-proneness multiplier (mean 1): lognormal, Pareto or none."""

    distribution: Literal["lognormal", "pareto", "none"]
    mean_over_median: float = Field(ge=1.0)


class Scrub(_Strict):
    """Patrol scrub: every page is visited once per period."""

    period_hours: float = Field(gt=0)


class HeatBin(_Strict):
    """One bin of a page-heat distribution: an access rate and the share of pages at it."""

    rate_per_hour: float = Field(ge=0)
    share: float

    _s = field_validator("share")(_share)


def _heat(v: list[HeatBin]) -> list[HeatBin]:
    if not v:
        raise ValueError("give at least one heat bin")
    _sums_to_one([b.share for b in v], "the heat bins")
    return v


class Heat(_Strict):
    """Page-heat distributions: guest memory (guest reads), VMM memory, kernel memory."""

    guest: list[HeatBin]
    vmm: list[HeatBin]
    kernel: list[HeatBin]

    _h = field_validator("guest", "vmm", "kernel")(_heat)


class Composition(_Strict):
    """What host memory holds, as shares summing to 1."""

    shares: dict[MemoryName, float]

    @field_validator("shares")
    @classmethod
    def _sum(cls, v: dict[str, float]) -> dict[str, float]:
        for name, s in v.items():
            if not 0.0 <= s <= 1.0:
                raise ValueError(f"share of {name} must lie in [0, 1], got {s}")
        _sums_to_one(list(v.values()), "the composition")
        return v


class VmSize(_Strict):
    """One VM size and the share of VMs (by count) that have it."""

    gib: int = Field(gt=0)
    share: float

    _s = field_validator("share")(_share)


class GuestEffort(_Strict):
    """Rounds each non-cooperative guest behaviour plays after it met poison (docs/mce.md)."""

    careless: int = Field(ge=1, le=10**9)
    hostile: int = Field(ge=1, le=10**9)
    confidential: int = Field(ge=1, le=10**9)


GUEST_SHARES = ("careless_share", "hostile_share")
"""Shares of the VMs that are not confidential (a confidential guest sees no vMCE, so it
neither ignores one nor takes the page offline: it behaves ``confidential``)."""


class Vms(_Strict):
    """The VM mix: sizes, guest behaviours (a share of confidential VMs; among the others, the
    shares of careless and hostile guests, cooperative being the rest), HugeTLB page size,
    lifetime."""

    sizes: list[VmSize]
    confidential_share: float
    careless_share: float = 0.0
    hostile_share: float = 0.0
    guest_effort: GuestEffort = GuestEffort(careless=10, hostile=10_000, confidential=10_000)
    page_size: dict[Literal["4K", "2M", "1G"], float]
    mean_lifetime_hours: float = Field(gt=0)

    _c = field_validator("confidential_share", *GUEST_SHARES)(_share)

    @property
    def cooperative_share(self) -> float:
        """Of the VMs that are not confidential, those that take a poisoned page offline after
        a vMCE: the rest."""
        return max(0.0, 1.0 - math.fsum(getattr(self, s) for s in GUEST_SHARES))

    def behaviour_shares(self) -> dict[str, float]:
        """Share of all VMs per guest behaviour (sums to 1)."""
        rest = 1.0 - self.confidential_share
        return {"cooperative": rest * self.cooperative_share,
                "careless": rest * self.careless_share, "hostile": rest * self.hostile_share,
                "confidential": self.confidential_share}

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: list[VmSize]) -> list[VmSize]:
        if not v:
            raise ValueError("give at least one VM size")
        _sums_to_one([s.share for s in v], "the VM sizes")
        return v

    @field_validator("page_size")
    @classmethod
    def _pages(cls, v: dict[str, float]) -> dict[str, float]:
        for name, s in v.items():
            _share(s)
            del name
        _sums_to_one(list(v.values()), "the page sizes")
        return v


class KernelUser(_Strict):
    """A host kernel user that reads guest or host memory (vhost, migration, dump...)."""

    name: str
    checks_hwpoison: bool
    rate_per_hour: float = Field(ge=0)
    memory: list[MemoryName]
    confidential: bool = True
    """Whether it also reaches memory of confidential VMs."""


class Access(_Strict):
    """Who else reads memory: VMM threads on shared guest memory, kernel users."""

    vmm_shared_read_per_hour: float = Field(ge=0)
    kernel_users: list[KernelUser]


def _profile_names() -> tuple[str, ...]:
    """The model's kernel profile presets (a broken model import is not an input error)."""
    try:
        from memfail.model.kernel.profiles import PROFILES
    except Exception as e:
        raise RuntimeError(f"cannot load memfail's kernel profiles: {type(e).__name__}: {e}") \
            from e
    return tuple(PROFILES)


class FleetParams(_Strict):
    """Everything ``memfail fleet`` needs to know about a fleet."""

    fleet: Fleet
    dram: Dram
    faults: Faults
    frailty: Frailty
    scrub: Scrub
    heat: Heat
    composition: Composition
    vms: Vms
    access: Access
    kernel_profile: str
    policies: list[str] = Field(min_length=1)

    @field_validator("kernel_profile")
    @classmethod
    def _profile(cls, v: str) -> str:
        names = _profile_names()
        if v not in names:
            raise ValueError(f"unknown kernel profile {v!r}; valid: {', '.join(names)}")
        return v

    @field_validator("policies")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("a policy is listed twice")
        return v

    @property
    def dram_ranks(self) -> float:
        """Ranks of a host: its memory over the data a rank holds (data chips x density)."""
        d = self.dram
        return self.fleet.host_memory_gib * 8.0 / (d.chip_gbit * d.data_chips_per_rank)

    @property
    def dram_chips(self) -> float:
        """DRAM chips of a host, check chips included (ranks x ``chips_per_rank``)."""
        return self.dram_ranks * self.dram.chips_per_rank

    @property
    def fault_rate(self) -> float:
        """The host's mean uncorrectable-fault rate per host-year.

        ``ue_rate_per_host_year`` is the rate of a host with ``reference_chips`` DRAM chips;
        the rate scales with the host's chips (dram-field-data §2.2: the Jaguar FIT is per
        device, so a rank's faults are 18 x 66.1 FIT, 0.0104 per rank-year, and a host's are
        that times its ranks; §2.1: scale the machine-level rate by memory size, not as a
        constant per GB). So more memory of the same chips raises the rate per host-year in
        proportion (the rates per VM-hour stay), and denser chips lower it.
        """
        return self.faults.ue_rate_per_host_year * self.dram_chips / self.faults.reference_chips

    @property
    def vms_per_host(self) -> float:
        """Average number of VMs a host runs (guest memory over the mean VM size)."""
        shares = self.composition.shares
        guest_gib = (shares.get("gmem_private", 0) + shares.get("gmem_shared", 0)) \
            * self.fleet.host_memory_gib
        mean_gib = sum(s.gib * s.share for s in self.vms.sizes)
        return guest_gib / mean_gib


# --------------------------------------------------------------------------- loading


@dataclass
class LoadedFleet:
    """Validated parameters plus where each value came from.

    ``citations`` maps each cited dotted path to its citation; ``source`` is the file name
    (or ``"defaults"``); ``plain`` is the merged plain-data tree that produced ``params``.
    """

    params: FleetParams
    citations: dict[str, str]
    source: str
    plain: dict[str, Any] = field(repr=False)
    lines: dict[str, int | None] = field(default_factory=dict, repr=False)
    """The line of each field the file set (dotted path -> line)."""


def _err(file: str, line: int | None, path: str, msg: str) -> FleetInputError:
    if file.startswith("--"):  # a command-line option: no line to point at
        return FleetInputError(f"{file}: {path}: {msg}")
    return FleetInputError(f"{file}:{line if line is not None else 1}: {path}: {msg}")


FLEET_HINT = ("a fleet file overrides cited defaults, e.g. `scrub: {period_hours: {value: 12, "
              "citation: \"source\"}}` (`memfail fleet --show-defaults` lists them)")


def _load_tree(text: str, file: str) -> tuple[dict[str, Any], dict[Loc, int]]:
    """Plain values and the line of every field path (the shared ``memfail.inputs`` reader)."""
    try:
        return load_yaml(None, file, "fleet file", FLEET_HINT, data=text)
    except InputError as e:
        raise FleetInputError(str(e)) from None


def _read_tree(path: str | Path, file: str) -> tuple[dict[str, Any], dict[Loc, int]]:
    try:
        return load_yaml(path, file, "fleet file", FLEET_HINT)
    except InputError as e:
        raise FleetInputError(str(e)) from None


def _plain(node: Any) -> Any:
    """Plain Python data (dict, list, str, int, float, bool, None) from a ruamel tree."""
    if isinstance(node, dict):
        return {str(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


def _is_cited(node: Any) -> bool:
    return isinstance(node, dict) and "value" in node and set(node) <= {"value", "citation"}


@dataclass
class _Walk:
    """The unwrapped fleet tree: values, citations and the line of each dotted path."""

    values: dict[str, Any] = field(default_factory=dict)
    citations: dict[str, str | None] = field(default_factory=dict)
    lines: dict[str, int | None] = field(default_factory=dict)
    locs: dict[str, Loc] = field(default_factory=dict)
    file_lines: dict[Loc, int] = field(default_factory=dict)


def _schema_paths(defaults: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted path -> default node for every cited parameter and uncited top-level choice."""
    out: dict[str, Any] = {}
    for k, v in defaults.items():
        p = f"{prefix}{k}"
        if _is_cited(v) or (not prefix and k in UNCITED):
            out[p] = v
        else:
            out.update(_schema_paths(v, p + "."))
    return out


def _walk(user: Any, schema: dict[str, Any], file: str,
          lines: dict[Loc, int] | None = None) -> _Walk:
    lines = lines or {}
    w = _Walk(file_lines=lines)
    groups = {p.rsplit(".", 1)[0] for p in schema if "." in p}
    groups |= {".".join(p.split(".")[:i]) for p in schema for i in range(1, p.count(".") + 1)}

    def visit(node: Any, prefix: str, loc: Loc) -> None:
        if not isinstance(node, dict):
            where = prefix.rstrip(".") or "(top)"
            raise _err(file, line_of(lines, loc), where,
                       f"expected a mapping of fields, got {_kind(node)}")
        for k, v in node.items():
            path = f"{prefix}{k}"
            kloc = (*loc, k)
            line = line_of(lines, kloc)
            if path in schema:
                cited = path not in UNCITED
                if cited and isinstance(v, dict) and "value" not in v:
                    raise _err(file, line, path, "write a changed parameter as {value: ..., "
                               "citation: \"source\"}; got a mapping without value:")
                if cited and isinstance(v, dict) and not set(v) <= {"value", "citation"}:
                    extra = sorted(set(v) - {"value", "citation"})[0]
                    raise _err(file, line_of(lines, (*kloc, extra)), f"{path}.{extra}",
                               "unknown field; a parameter is {value: ..., citation: ...}")
                if cited and _is_cited(v):
                    w.values[path] = v["value"]
                    cit = v.get("citation")
                    if cit is not None and (not isinstance(cit, str) or not cit.strip()):
                        raise _err(file, line_of(lines, (*kloc, "citation")), path,
                                   "citation must be a non-empty string")
                    w.citations[path] = cit
                    w.locs[path] = (*kloc, "value")
                else:
                    w.values[path] = v
                    w.citations[path] = None
                    w.locs[path] = kloc
                w.lines[path] = line_of(lines, w.locs[path])
            elif path in groups:
                visit(v, path + ".", kloc)
            elif path in RETIRED:
                raise _err(file, line, path, RETIRED[path])
            else:
                here = sorted({p[len(prefix):].split(".")[0] for p in schema
                               if p.startswith(prefix)})
                near = difflib.get_close_matches(str(k), here, n=1)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise _err(file, line, path, f"unknown field{hint} valid here: {', '.join(here)}")

    if user is None:
        return w
    visit(user, "", ())
    return w


def _kind(v: Any) -> str:
    if isinstance(v, list):
        return "a list"
    if v is None:
        return "nothing"
    return f"{v!r}"


def _set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path; a number names an item of a list (``access.kernel_users.2.rate``)."""
    parts = path.split(".")
    node: Any = tree
    for p in parts[:-1]:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    if isinstance(node, list):
        node[int(parts[-1])] = value
    else:
        node[parts[-1]] = value


def _get_path(tree: dict[str, Any], path: str) -> Any:
    node: Any = tree
    for p in path.split("."):
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise KeyError(p)
            node = node[int(p)]
        else:
            node = node[p]
    return node


def _defaults_text() -> str:
    return resources.files("memfail.fleet").joinpath("defaults.yaml").read_text("utf-8")


_DEFAULTS_CACHE: tuple[dict[str, Any], dict[str, Any], dict[str, str]] | None = None


def _defaults() -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """(schema paths, plain default values tree, citations) from defaults.yaml."""
    global _DEFAULTS_CACHE
    if _DEFAULTS_CACHE is None:
        tree = _plain(_load_tree(_defaults_text(), "defaults.yaml")[0])
        schema = _schema_paths(tree)
        plain: dict[str, Any] = {}
        cits: dict[str, str] = {}
        for path, node in schema.items():
            if path in UNCITED:
                _set_path(plain, path, node)
            else:
                _set_path(plain, path, node["value"])
                cits[path] = node["citation"]
        _DEFAULTS_CACHE = (schema, plain, cits)
    s, p, c = _DEFAULTS_CACHE
    return s, copy.deepcopy(p), dict(c)


def _loc_line(loc: tuple[Any, ...], walk: _Walk) -> tuple[str, int | None]:
    """Dotted field name and best line for a pydantic error location."""
    name = ".".join(str(x) for x in loc)
    for i in range(len(loc), 0, -1):
        path = ".".join(str(x) for x in loc[:i])
        if path in walk.locs:
            return name, line_of(walk.file_lines, (*walk.locs[path], *loc[i:]))
    return name, None


Where = tuple[tuple[Any, ...], ...]
"""The fields an error may be blamed on, in order of preference: the first one the file (or
the grid point) set is named, else the first."""


def _coherence(p: FleetParams) -> list[tuple[Where, str]]:
    """What the schema cannot see field by field: names the model must know, and a fleet
    whose VMs fit on its hosts."""
    from memfail.model.policy.registry import policy_names, policy_text

    out: list[tuple[Where, str]] = []
    guests = [getattr(p.vms, s) for s in GUEST_SHARES]
    if math.fsum(guests) > 1.0 + 1e-9:
        last = max(i for i, g in enumerate(guests) if g > 0)
        out.append(((("vms", GUEST_SHARES[last]),),
                    "the shares of careless and hostile guests (of the VMs that are not "
                    f"confidential) sum to {math.fsum(guests):.6g}; they must sum to at most 1 "
                    "(cooperative guests are the rest)"))
    known = policy_names()
    for i, pol in enumerate(p.policies):
        try:
            policy_text(pol)  # a preset or knobs on one, as everywhere a policy is taken
        except (ValueError, TypeError) as e:
            out.append(((("policies", i),), f"{e}{_near(pol, known)}"))
    shares = p.composition.shares
    guest = (shares.get("gmem_private", 0.0) + shares.get("gmem_shared", 0.0))
    guest_gib = guest * p.fleet.host_memory_gib
    for i, size in enumerate(p.vms.sizes):
        # No guest memory at all is legal (host-level rates; --unit vm is refused then).
        if guest > 0 and size.share > 0 and size.gib > guest_gib:
            out.append(((("vms", "sizes", i, "gib"), ("fleet", "host_memory_gib"),
                         ("composition", "shares")),
                        f"a {size.gib} GiB VM (vms.sizes) does not fit in the {guest_gib:g} GiB "
                        f"of guest memory a host has (fleet.host_memory_gib "
                        f"{p.fleet.host_memory_gib:g} x the gmem_private + gmem_shared shares "
                        f"of composition, {guest:g})"))
    return out


GMEM_FEATURES = ("gmem", "gmem_mmap", "gmem_init_shared")
"""Kernel features the model oracle's scenarios use: every VM's memory is a guest_memfd, and
shared guest memory is an in-place (mmap, INIT_SHARED) one (docs/fleet.md)."""


def model_profile_problem(loaded: LoadedFleet) -> str | None:
    """``FILE:LINE: kernel_profile: message`` when the model oracle cannot run the fleet's
    scenarios on its kernel profile (a kernel without guest_memfd), else None."""
    from memfail.model.errors import ProfileMissing
    from memfail.model.kernel.profiles import get_profile, refuse_missing

    p = loaded.params
    profile = get_profile(p.kernel_profile)
    need = GMEM_FEATURES if p.composition.shares.get("gmem_shared", 0.0) > 0 else ("gmem",)
    for feature in need:
        try:
            refuse_missing(profile, feature)
        except ProfileMissing as e:
            why = str(e).split("; use a profile")[0]
            msg = (f"the model oracle runs every failure class as a guest_memfd VM, and {why}; "
                   "set kernel_profile to linux-6.18 (or next), or pass --oracle TABLE.yaml "
                   "to take the outcomes from a table")
            return str(_err(loaded.source, loaded.lines.get("kernel_profile"),
                            "kernel_profile", msg))
    return None


def _near(word: str, choices: list[str]) -> str:
    near = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {near[0]!r}?)" if near else ""


def validate_plain(plain: dict[str, Any], walk: _Walk, file: str) -> FleetParams:
    """Validate a merged plain tree; the first error becomes one ``FleetInputError`` line."""
    params = _validate_fields(plain, walk, file)
    for where, msg in _coherence(params):
        set_here = [loc for loc in where if _set_by(loc, walk)]
        name, line = _loc_line((set_here or list(where))[0], walk)
        raise _err(file, line, name, msg)
    return params


def _set_by(loc: tuple[Any, ...], walk: _Walk) -> bool:
    """Whether the file (or grid point) set the field at ``loc`` or a field inside it."""
    path = ".".join(str(x) for x in loc)
    return any(p == path or p.startswith(path + ".") or path.startswith(p + ".")
               for p in walk.locs)


def _validate_fields(plain: dict[str, Any], walk: _Walk, file: str) -> FleetParams:
    try:
        return FleetParams.model_validate(plain)
    except ValidationError as e:
        first = e.errors()[0]
        loc = tuple(x for x in first["loc"] if x != "__root__")
        name, line = _loc_line(loc, walk)
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = "unknown field"
        elif first["type"] == "missing":
            msg = "field required"
        elif "input" in first and first["type"] not in ("value_error", "assertion_error"):
            got = repr(first["input"])
            msg = f"{msg}, got {got if len(got) <= 60 else got[:57] + '...'}"
        raise _err(file, line, name or "(top)", msg) from None


def load_fleet(path: str | Path | None = None, *, text: str | None = None) -> LoadedFleet:
    """Load a fleet file over the cited defaults (``path=None``: the defaults alone).

    A changed parameter must carry a citation: ``field: {value: X, citation: "source"}``.
    """
    schema, plain, cits = _defaults()
    if path is None and text is None:
        return LoadedFleet(validate_plain(plain, _Walk(), "defaults.yaml"), cits, "defaults",
                           plain)
    file = str(path) if path is not None else "<fleet>"
    tree, lines = _load_tree(text, file) if text is not None else _read_tree(file, file)
    walk = _walk(tree, schema, file, lines)
    for p, v in walk.values.items():
        _set_path(plain, p, _plain(v))
    params = validate_plain(plain, walk, file)
    for p, cit in walk.citations.items():
        if p in UNCITED:
            continue
        if cit is None:
            default = schema[p]["value"]
            if _plain(walk.values[p]) != default:
                raise _err(file, walk.lines[p], p,
                           f"changed from the cited default {default!r} without a citation; "
                           f"write {p.rsplit('.', 1)[-1]}: {{value: ..., citation: \"source\"}}")
        else:
            cits[p] = cit
    return LoadedFleet(params, cits, file, plain, dict(walk.lines))


def parse_assignment(text: str) -> tuple[str, list[Any]]:
    """Parse a sweep axis ``path=[v1, v2]`` (or ``path=v``) into (path, values)."""
    if "=" not in text:
        raise FleetInputError(f"--grid {text}: expected PATH=[V1, V2, ...]")
    path, _, raw = text.partition("=")
    path = path.strip()
    if not path:
        raise FleetInputError(f"--grid {text}: expected PATH=[V1, V2, ...]")
    try:
        tree, _ = load_yaml(None, "--grid", "--grid value", "give PATH=[V1, V2, ...]",
                            data="v: " + " ".join(raw.split()))
    except InputError as e:
        raise FleetInputError(f"--grid {path}: cannot parse {raw!r}: {e.message}") from None
    value = tree.get("v")
    values = value if isinstance(value, list) else [value]
    if not values:
        raise FleetInputError(f"--grid {path}: give at least one value")
    return path, values


def with_assignments(loaded: LoadedFleet, assign: dict[str, Any]) -> LoadedFleet:
    """A copy of ``loaded`` with dotted-path values replaced (citation: ``sweep``).

    A path may name a cited parameter (``scrub.period_hours``) or a field inside one
    (``faults.modes.single_bit.permanent_fit``, ``composition.shares.vmm``).
    """
    schema, _, _ = _defaults()
    plain = copy.deepcopy(loaded.plain)
    cits = dict(loaded.citations)
    for path, value in assign.items():
        owner = next((p for p in schema if path == p or path.startswith(p + ".")), None)
        if owner is None and path in RETIRED:
            raise FleetInputError(f"--grid: {path}: {RETIRED[path]}")
        if owner is None:
            near = difflib.get_close_matches(path, list(schema), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise FleetInputError(f"--grid: {path}: unknown parameter{hint}")
        try:
            _get_path(plain, path)
        except (KeyError, TypeError):
            try:
                parent = _get_path(plain, path.rsplit(".", 1)[0])
            except (KeyError, TypeError):
                parent = None
            if path != owner and not isinstance(parent, dict):
                raise FleetInputError(f"--grid: {path}: no such field inside {owner}") from None
        _set_path(plain, path, value)
        cits[owner] = "sweep"
    w = _Walk(locs={path: tuple(path.split(".")) for path in assign})
    params = validate_plain(plain, w, "--grid")
    return LoadedFleet(params, cits, loaded.source, plain, loaded.lines)


def defaults_table(plain_values: bool = False) -> list[tuple[str, Any, str]]:
    """(dotted path, value, citation) for every default, in file order: the value as text
    for the table, or with ``plain_values`` as the file has it (a number, a list, a mapping:
    what ``--show-defaults --json`` prints)."""
    schema, plain, cits = _defaults()
    rows: list[tuple[str, Any, str]] = []
    for p in schema:
        v = _get_path(plain, p)
        rows.append((p, v if plain_values else _compact(v),
                     cits.get(p, "choice (no citation needed)")))
    return rows


def defaults_yaml() -> str:
    """The defaults file as shipped (with every citation)."""
    return _defaults_text()


def _compact(v: Any) -> str:
    if isinstance(v, list) and v and isinstance(v[0], dict):
        return "; ".join(", ".join(f"{k}={x}" for k, x in d.items()) for d in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in v.items())
    if isinstance(v, list):
        return ", ".join(str(x) for x in v)
    return str(v)
