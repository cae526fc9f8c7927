"""Read a scenario file safely and turn it into a validated ``Scenario``.

The bytes are read and the YAML composed by the shared ``memfail.inputs`` reader, so every value
keeps its line number, only plain YAML types are accepted (no tags, anchors or aliases) and
nothing in the file is ever executed. Every problem is a ``ScenarioError`` naming file, line and
field.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from memfail.inputs import InputError, compose, decode, fmt_loc, line_of
from memfail.model.actions import ACTION_TYPES, Action, parse_action
from memfail.model.kernel.profiles import PROFILES
from memfail.model.units import fmt_size, parse_size

from .errors import ScenarioError, did_you_mean, one_of
from .schema import (
    MAX_SIZE,
    TOP_LEVEL_FIELDS,
    FinalExpect,
    HostSpec,
    ProcessSpec,
    ScenarioHeader,
    StepExpect,
    saved_refs,
)

MAX_FILE_BYTES = 4 << 20
MAX_NODES = 200_000
STEP_KEYS = ("expect", "note", "save")
# Fields of int|str type that hold sizes, and those that hold user addresses.
SIZE_FIELDS = frozenset({"size", "len", "offset"})
ADDR_FIELDS = frozenset({"addr", "buf"})
_ADDR_RE = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(?:\+\s*(\S+))?\s*$")

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Step:
    """One step: its action, where it is in the file, and what it must produce."""

    index: int
    line: int
    key: str
    action: Action
    expect: StepExpect | None = None
    note: str | None = None
    save: str | None = None


@dataclass(frozen=True)
class Scenario:
    """A validated scenario; ``lines`` maps a field path to its 1-based line in ``file``."""

    file: str
    name: str
    description: str
    profile: str | None
    policy: str | dict[str, Any] | None
    seed: int
    host: HostSpec
    processes: tuple[ProcessSpec, ...]
    steps: tuple[Step, ...]
    expect: FinalExpect | None
    lines: dict[Loc, int] = field(default_factory=dict, compare=False, repr=False)

    def line_of(self, *loc: str | int) -> int | None:
        """Line of the deepest known prefix of ``loc``."""
        return _line_of(self.lines, loc)


# --------------------------------------------------------------------------- public entry points

# Model extensions register their actions (register_actions) when imported.
EXTENSION_MODULES = ("memfail.model.host", "memfail.model.kvm", "memfail.model.vmm",
                     "memfail.model.policy", "memfail.check.stage_action")


@functools.cache
def load_extensions() -> None:
    """Import the model packages that add actions, so ACTION_TYPES is complete."""
    for name in EXTENSION_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


def load_scenario(path: str | Path, display: str | None = None) -> Scenario:
    """Load and validate a scenario file; raise ``ScenarioError`` on any problem."""
    p = Path(path)
    file = display or str(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ScenarioError(file, None, None, "no such file; check the path, or run "
                            "`memfail scenarios` for the built-in scenario names") from None
    except IsADirectoryError:
        raise ScenarioError(file, None, None, "is a directory; give a .yaml file") from None
    except OSError as e:
        raise ScenarioError(file, None, None, f"cannot read: {e.strerror}") from None
    return load_scenario_bytes(data, file, default_name=p.stem)


def load_scenario_text(text: str, file: str = "<string>", default_name: str = "scenario"
                       ) -> Scenario:
    return load_scenario_bytes(text.encode(), file, default_name)


def load_scenario_bytes(data: bytes, file: str, default_name: str) -> Scenario:
    load_extensions()
    text = _decode(data, file)
    root, lines = _parse_yaml(text, file)
    return _build(root, lines, file, default_name)


# --------------------------------------------------------------------------- reading YAML


SCENARIO_HINT = ("a scenario needs at least `steps:` (see docs/scenario-format.md), e.g. "
                 "`steps: [{mmap: {proc: app, name: buf, size: 4K}}]`")


def _decode(data: bytes, file: str) -> str:
    try:
        return decode(data, file, "scenario", MAX_FILE_BYTES, SCENARIO_HINT)
    except InputError as e:
        raise ScenarioError(e.file, e.line, e.field, e.message) from None


def _parse_yaml(text: str, file: str) -> tuple[Any, dict[Loc, int]]:
    try:
        return compose(text, file, "scenario", SCENARIO_HINT, MAX_NODES)
    except InputError as e:
        raise ScenarioError(e.file, e.line, e.field, e.message) from None


# --------------------------------------------------------------------------- validation


def _build(root: dict[str, Any], lines: dict[Loc, int], file: str, default_name: str
           ) -> Scenario:
    for key in root:
        if key not in TOP_LEVEL_FIELDS:
            raise ScenarioError(file, lines.get((key,)), key,
                                f"unknown top-level field {key!r}"
                                f"{did_you_mean(key, TOP_LEVEL_FIELDS)}; "
                                f"valid fields: {one_of(TOP_LEVEL_FIELDS)}")
    if "steps" not in root:
        raise ScenarioError(file, 1, "steps", "missing; a scenario needs a list of steps, "
                            "e.g. `steps: [{mmap: {proc: app, name: buf, size: 4K}}]`")
    try:
        header = ScenarioHeader.model_validate(root)
    except ValidationError as e:
        raise _from_validation(e, file, lines, (), root, ScenarioHeader) from None
    if header.profile is not None and header.profile not in PROFILES:
        raise ScenarioError(file, lines.get(("profile",)), "profile",
                            f"unknown kernel profile {header.profile!r}"
                            f"{did_you_mean(header.profile, PROFILES)}; valid: "
                            f"{one_of(PROFILES)} (`memfail profiles` lists them)")
    steps = tuple(_parse_step(i, raw, file, lines) for i, raw in enumerate(header.steps))
    scenario = Scenario(
        file=file, name=header.name or default_name, description=header.description.strip(),
        profile=header.profile, policy=header.policy, seed=header.seed, host=header.host,
        processes=tuple(header.processes), steps=steps, expect=header.expect, lines=lines,
    )
    _check_names(scenario)
    return scenario


def _parse_step(i: int, raw: Any, file: str, lines: dict[Loc, int]) -> Step:
    loc: Loc = ("steps", i)
    line = lines.get(loc, 1)
    where = f"steps[{i}]"
    if not isinstance(raw, dict):
        raise ScenarioError(file, line, where, "a step is a mapping with one action key, "
                            "e.g. `- mem_write: {proc: app, addr: buf}`")
    actions = [k for k in raw if k not in STEP_KEYS]
    for k in actions:
        if k not in ACTION_TYPES:
            raise ScenarioError(file, lines.get((*loc, k), line), f"{where}.{k}",
                                f"unknown action {k!r}{did_you_mean(k, ACTION_TYPES)}; actions: "
                                f"{one_of(sorted(ACTION_TYPES))}")
    if not actions:
        raise ScenarioError(file, line, where, "no action in this step; give exactly one "
                            "action key such as mmap, mem_write, madvise, corrupt_pfn")
    if len(actions) > 1:
        raise ScenarioError(file, lines.get((*loc, actions[1]), line), where,
                            f"two actions in one step ({', '.join(actions)}); put each action "
                            "in its own step")
    key = actions[0]
    args = raw[key] if raw[key] is not None else {}
    if not isinstance(args, dict):
        raise ScenarioError(file, lines.get((*loc, key), line), f"{where}.{key}",
                            f"arguments must be a mapping, got {args!r}; write e.g. "
                            f"`{key}: {{proc: app, ...}}`")
    cls = ACTION_TYPES[key]
    try:
        action = parse_action(key, args)
    except ValidationError as e:
        raise _from_validation(e, file, lines, (*loc, key), args, cls) from None
    check_action(action, key, file, lines, (*loc, key))
    expect = None
    if "expect" in raw:
        try:
            expect = StepExpect.model_validate(raw["expect"] if raw["expect"] is not None else {})
        except ValidationError as e:
            raise _from_validation(e, file, lines, (*loc, "expect"), raw["expect"],
                                   StepExpect) from None
    note = raw.get("note")
    save = raw.get("save")
    if save is not None and not (isinstance(save, str) and re.match(r"^[A-Za-z_][\w\-]*$",
                                                                     save)):
        raise ScenarioError(file, lines.get((*loc, "save"), line), f"{where}.save",
                            f"save takes a name such as `before` (letters, digits, _ and -), "
                            f"got {save!r}")
    return Step(index=i, line=line, key=key, action=action, expect=expect,
                note=None if note is None else str(note), save=save)


GPA_FIELDS = frozenset({"gpa", "gmem_offset"})
"""Guest physical addresses and offsets: sizes (``4G+12K``) beyond the user address space."""


def check_action(action: Action, key: str, file: str = "", lines: dict[Loc, int] | None = None,
                 loc: Loc = ()) -> None:
    """What a step's action must satisfy beyond its schema, checked when the file loads: the
    syntax of its sizes and addresses, and the values the model would only reject while
    running. Raises ScenarioError naming ``loc`` (the step's action key) in ``file``; the
    checker's ``action`` event uses it too, so a step refused here is refused there."""
    lines = {} if lines is None else lines
    _check_sizes(action, file, lines, loc)
    _check_fields(action, key, file, lines, loc)


def _check_fields(action: Action, key: str, file: str, lines: dict[Loc, int], loc: Loc
                  ) -> None:
    """Field values the model would only reject while running: checked when the file loads."""
    for name in GPA_FIELDS & set(type(action).model_fields):
        value = getattr(action, name)
        if value is None:
            continue
        try:
            parse_size(value)
        except ValueError as e:
            raise ScenarioError(file, _line_of(lines, (*loc, name)), _fmt_loc((*loc, name)),
                                str(e)) from None
    if key == "memslot" and getattr(action, "gmem", None) is None \
            and getattr(action, "hva", None) is None:
        raise ScenarioError(file, _line_of(lines, loc), _fmt_loc(loc),
                            "a memslot needs its memory: gmem: (a guest_memfd) and/or hva: "
                            "(the VMM mapping that backs shared memory)")


def _check_sizes(action: Action, file: str, lines: dict[Loc, int], loc: Loc) -> None:
    """Sizes and addresses are strings the model parses later; check their syntax now."""
    for name in type(action).model_fields:
        value = getattr(action, name)
        if value is None or isinstance(value, bool) or name not in SIZE_FIELDS | ADDR_FIELDS:
            continue
        if name in SIZE_FIELDS and isinstance(value, str | int):
            try:
                n = parse_size(value)
            except ValueError as e:
                raise ScenarioError(file, _line_of(lines, (*loc, name)), _fmt_loc((*loc, name)),
                                    str(e)) from None
            if n > MAX_SIZE:
                raise ScenarioError(file, _line_of(lines, (*loc, name)), _fmt_loc((*loc, name)),
                                    f"{fmt_size(n)} is larger than the 128T x86-64 user "
                                    "address space; give a smaller size")
        elif name in ADDR_FIELDS:
            check_addr_syntax(value, file, _line_of(lines, (*loc, name)), _fmt_loc((*loc, name)))


def check_addr_syntax(value: Any, file: str, line: int | None, where: str) -> None:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ScenarioError(file, line, where, "addresses are not negative")
        return
    m = _ADDR_RE.match(str(value))
    ok = m is not None
    if m and m.group(2):
        try:
            parse_size(m.group(2))
        except ValueError:
            ok = False
    if not ok:
        raise ScenarioError(file, line, where, f"bad address {value!r}; write NAME, "
                            "NAME+OFFSET (buf+4K, buf+0x1000, buf+3p) or an integer")


def _check_names(sc: Scenario) -> None:
    """Every process a step or expectation names must have been created before it, and every
    saved value an expectation compares with must be saved by an earlier step."""
    known = [p.name for p in sc.processes]
    saves: list[str] = []
    for step in sc.steps:
        if step.expect is not None:
            for fld in ("ret", "data"):
                for ref in saved_refs(getattr(step.expect, fld)):
                    if ref not in saves:
                        raise ScenarioError(
                            sc.file, sc.line_of("steps", step.index, "expect", fld),
                            f"steps[{step.index}].expect.{fld}",
                            f"no earlier step saves {ref!r}{did_you_mean(ref, saves)}; add "
                            f"`save: {ref}` to the step whose result it is")
        if step.save is not None:
            saves.append(step.save)
        a = step.action
        for fname in ("proc", "as_proc"):
            name = getattr(a, fname, None)
            if name is None or name in known or (step.key == "spawn" and fname == "proc"):
                continue
            raise ScenarioError(sc.file, sc.line_of("steps", step.index, step.key, fname),
                                f"steps[{step.index}].{step.key}.{fname}",
                                f"unknown process {name!r}{did_you_mean(name, known)}; create it "
                                "under `processes:` or with a spawn or fork step before this one")
        if step.key == "spawn":
            known.append(a.proc)  # type: ignore[attr-defined]
        if step.key == "fork":
            known.append(a.child)  # type: ignore[attr-defined]
        if step.expect is not None:
            for j, s in enumerate(step.expect.signals):
                _known(sc, s.proc, known, ("steps", step.index, "expect", "signals", j, "proc"))
            for j, name in enumerate(step.expect.killed):
                _known(sc, name, known, ("steps", step.index, "expect", "killed", j))
    if sc.expect is not None:
        for name in sc.expect.exit:
            _known(sc, name, known, ("expect", "exit", name))


def _known(sc: Scenario, name: str | None, known: list[str], loc: Loc) -> None:
    if name is not None and name not in known:
        raise ScenarioError(sc.file, sc.line_of(*loc), _fmt_loc(loc),
                            f"unknown process {name!r}{did_you_mean(name, known)}; processes: "
                            f"{one_of(known) or '(none)'}")


# --------------------------------------------------------------------------- pydantic errors


def _from_validation(err: ValidationError, file: str, lines: dict[Loc, int], prefix: Loc,
                     data: Any, model: type[BaseModel]) -> ScenarioError:
    """The first pydantic error as a ``ScenarioError`` at the line of the offending field."""
    # An unknown field explains a "missing" one next to it (a typo), so report it first.
    errors = sorted(err.errors(include_url=False), key=lambda x: x["type"] != "extra_forbidden")
    e = errors[0]
    loc = tuple(e["loc"])
    path, rest = _walk(data, loc)
    kind, msg = e["type"], e["msg"].removeprefix("Value error, ")
    full: Loc = (*prefix, *path)
    if kind == "missing" and rest:
        name = str(rest[0])
        return ScenarioError(file, _line_of(lines, full), _fmt_loc((*full, name)),
                             f"required field is missing; add `{name}: ...`")
    if kind == "extra_forbidden":
        name = str(loc[-1])
        owner = path[:-1] if path and path[-1] == name else path
        full = (*prefix, *owner, name)
        valid = _fields_at(model, owner)
        return ScenarioError(file, _line_of(lines, full), _fmt_loc(full),
                             f"unknown field {name!r}{did_you_mean(name, valid)}; "
                             "valid fields: "
                             f"{one_of(valid)}")
    value = path[-1] if "[key]" in rest and path else _value_at(data, path)
    if kind.startswith("literal_error"):
        msg = f"{msg}, got {value!r}{did_you_mean(str(value), _literal_choices(e))}"
    elif "value_error" not in kind and "assertion" not in kind and value is not _MISSING:
        msg = f"{msg}, got {value!r}"
    return ScenarioError(file, _line_of(lines, full), _fmt_loc(full) or None, msg)


_MISSING = object()


def _walk(data: Any, loc: tuple[Any, ...]) -> tuple[Loc, tuple[Any, ...]]:
    """Split a pydantic loc into the part that exists in the data and the rest."""
    path: list[str | int] = []
    cur = data
    for i, part in enumerate(loc):
        in_dict = isinstance(cur, dict) and isinstance(part, str) and part in cur
        in_list = isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur)
        if in_dict or in_list:
            cur = cur[part]
        else:
            return tuple(path), tuple(loc[i:])
        path.append(part)
    return tuple(path), ()


def _value_at(data: Any, path: Loc) -> Any:
    cur = data
    for part in path:
        try:
            cur = cur[part]
        except (KeyError, IndexError, TypeError):
            return _MISSING
    return cur


def _literal_choices(e: Any) -> list[str]:
    expected = (e.get("ctx") or {}).get("expected", "")
    return re.findall(r"'([^']*)'", str(expected))


def _fields_at(model: type[BaseModel], path: Loc) -> list[str]:
    """Field names of the (nested) model found by following ``path`` from ``model``."""
    cur: Any = model
    for part in path:
        if isinstance(part, int):
            continue
        if not (isinstance(cur, type) and issubclass(cur, BaseModel)):
            return []
        if part in cur.model_fields:  # otherwise a key of a dict field: stay on the model
            cur = _model_in(cur.model_fields[part].annotation)
    if isinstance(cur, type) and issubclass(cur, BaseModel):
        return list(cur.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


_line_of = line_of
_fmt_loc = fmt_loc


# --------------------------------------------------------------------------- built-in library


def library_dir() -> Path:
    return Path(__file__).parent / "library"


def library() -> dict[str, Path]:
    """Built-in scenarios by file stem."""
    d = library_dir()
    return {p.stem: p for p in sorted(d.glob("*.yaml"))} if d.is_dir() else {}


def resolve(arg: str) -> tuple[Path, str]:
    """A path as given, or the name of a built-in scenario; returns (path, display name)."""
    p = Path(arg)
    try:
        if p.exists():
            return p, arg
    except OSError as e:
        raise ScenarioError(arg, None, None, f"cannot read: {e.strerror or e}") from None
    lib = library()
    stem = arg.removesuffix(".yaml")
    if "/" not in arg and stem in lib:
        return lib[stem], f"{stem}.yaml"
    hint = did_you_mean(stem, lib) if lib else ""
    raise ScenarioError(arg, None, None, f"no such file or built-in scenario{hint}; "
                        "`memfail scenarios` lists the built-in ones")
