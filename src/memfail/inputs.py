"""The one way memfail reads an input file, and the one error type for bad input.

Every file memfail reads (scenario, check configuration, fleet parameter file, fleet outcome
table) goes through ``load_yaml``: the bytes are checked (size, NUL and control characters,
UTF-8, empty), the YAML is composed with ruamel's safe composer and converted node by node, so
every value keeps the line it was written on, only plain YAML types are accepted (no tags,
anchors or aliases) and nothing in the file is ever executed. Every problem is an
``InputError`` naming file, line and field, rendered on one line as
``FILE:LINE: FIELD: message`` and printed by the command line as
``memfail: error: FILE:LINE: FIELD: message`` with exit status 2.
"""

from __future__ import annotations

import difflib
import math
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Loc = tuple[str | int, ...]

MAX_NODES = 20_000
_PLAIN_TAGS = {
    "tag:yaml.org,2002:" + t for t in ("str", "int", "float", "bool", "null", "map", "seq")
}
_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class InputError(ValueError):
    """Bad input: a file (or a command-line option) with the line and field at fault.

    ``file`` is the path as the user gave it (or an option such as ``--policy``), ``line`` is
    1-based (None when the whole file or an option is at fault), ``field`` a dotted path such as
    ``steps[2].mmap.size``. ``str()`` is one line.
    """

    def __init__(self, file: str, line: int | None, field: str | None, message: str) -> None:
        self.file = file
        self.line = line
        self.field = field
        self.message = " ".join(str(message).split())  # always one line
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        parts = [where] + ([self.field] if self.field else []) + [self.message]
        return ": ".join(parts)

    def __reduce__(self) -> tuple[Any, ...]:  # survives a trip through a process pool
        return (type(self), (self.file, self.line, self.field, self.message))


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` when a choice is close to ``word``, else ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def one_of(choices: Iterable[object]) -> str:
    return ", ".join(str(c) for c in choices)


# --------------------------------------------------------------------------- bytes to text


def read_bytes(path: str | Path, file: str, what: str, max_bytes: int) -> bytes:
    """The file's bytes, or an ``InputError`` saying why it cannot be read."""
    p = Path(path)
    try:
        if p.is_dir():
            raise InputError(file, None, None, f"is a directory; give a {what} file (YAML)")
        with p.open("rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise InputError(file, None, None, "no such file; check the path") from None
    except IsADirectoryError:
        raise InputError(file, None, None, f"is a directory; give a {what} file (YAML)") from None
    except OSError as e:
        raise InputError(file, None, None, f"cannot read: {e.strerror or e}") from None
    return data


def _line_at(data: bytes | str, index: int) -> int:
    nl = b"\n" if isinstance(data, bytes) else "\n"
    return data[:index].count(nl) + 1  # type: ignore[arg-type]


def _bad_char(c: str) -> bool:
    """Characters YAML 1.2 does not allow in a stream (c-printable), besides tab and newlines."""
    o = ord(c)
    if o < 0x20:
        return c not in "\t\n\r"
    if o == 0x7F or 0x80 <= o <= 0x9F:
        return o != 0x85
    return 0xD800 <= o <= 0xDFFF or o in (0xFFFE, 0xFFFF)


def decode(data: bytes, file: str, what: str, max_bytes: int, hint: str) -> str:
    """UTF-8 text of ``data``; NUL, control characters, bad UTF-8 and an empty file are errors
    at the line of the offending byte. ``hint`` says what a minimal file holds."""
    if len(data) > max_bytes:
        raise InputError(file, None, None, f"file is larger than {max_bytes >> 10} KiB, more "
                         f"than a {what} may be; split it")
    nul = data.find(b"\0")
    if nul >= 0:
        raise InputError(file, _line_at(data, nul), None, f"binary file (contains a NUL byte); a "
                         f"{what} is UTF-8 YAML text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(file, _line_at(data, e.start), None,
                         f"not UTF-8 text (byte 0x{data[e.start]:02x}); save the file as "
                         "UTF-8") from None
    for i, c in enumerate(text):
        if _bad_char(c):
            raise InputError(file, _line_at(text, i), None, f"control character U+{ord(c):04X}"
                             " is not allowed in YAML text; remove it")
    if all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        raise InputError(file, 1, None, f"empty file; {hint}")
    return text


# --------------------------------------------------------------------------- text to values


def compose(text: str, file: str, what: str, hint: str, max_nodes: int = MAX_NODES
            ) -> tuple[Any, dict[Loc, int]]:
    """Plain Python values (dict, list, str, int, float, bool, None) and the line of every
    field path. The top level must be a mapping."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    yaml = YAML(typ="safe", pure=True)
    try:
        node = yaml.compose(text)
    except MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = " ".join(str(x) for x in (e.context, e.problem) if x)
        if "expected a single document" in problem:
            problem = f"more than one YAML document (---); put one {what} in each file"
        raise InputError(file, line, None, f"invalid YAML: {problem}") from None
    except YAMLError as e:
        raise InputError(file, None, None, f"invalid YAML: {str(e).splitlines()[0]}") from None
    except RecursionError:
        raise InputError(file, None, None, "invalid YAML: nested too deeply") from None
    if node is None:
        raise InputError(file, 1, None, f"empty file; {hint}")
    conv = _Converter(file, yaml, what, max_nodes)
    try:
        value = conv.convert(node, ())
    except RecursionError:
        raise InputError(file, node.start_mark.line + 1, None,
                         "nested too deeply; a {what} is a few levels of mappings and lists"
                         ) from None
    if not isinstance(value, dict):
        kind = "a list" if isinstance(value, list) else "a single value"
        raise InputError(file, node.start_mark.line + 1, None,
                         f"the top level is {kind}; it must be a mapping: {hint}")
    return value, conv.lines


def load_yaml(path: str | Path | None, file: str, what: str, hint: str, *,
              data: bytes | str | None = None, max_bytes: int = 4 << 20,
              max_nodes: int = MAX_NODES) -> tuple[dict[str, Any], dict[Loc, int]]:
    """Read, decode and compose one input file (or ``data`` given directly).

    ``what`` names the kind of file in messages ("scenario", "check configuration"); ``hint``
    says what a minimal file holds.
    """
    if data is None:
        if path is None:
            raise ValueError("load_yaml needs a path or data")
        raw = read_bytes(path, file, what, max_bytes)
    else:
        raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    text = decode(raw, file, what, max_bytes, hint)
    return compose(text, file, what, hint, max_nodes)


class _Converter:
    """YAML node graph → plain Python, recording the line of every field path."""

    def __init__(self, file: str, yaml: Any, what: str, max_nodes: int) -> None:
        self.file = file
        self.constructor = yaml.constructor
        self.what = what
        self.max_nodes = max_nodes
        self.lines: dict[Loc, int] = {}
        self.count = 0

    def fail(self, node: Any, msg: str, loc: Loc = ()) -> typing.NoReturn:
        raise InputError(self.file, node.start_mark.line + 1, fmt_loc(loc) or None, msg)

    def convert(self, node: Any, loc: Loc) -> Any:
        from ruamel.yaml.error import YAMLError
        from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

        self.count += 1
        if self.count > self.max_nodes:
            self.fail(node, f"more than {self.max_nodes} YAML values; a {self.what} this large "
                      "is refused, split it")
        if getattr(node, "anchor", None):
            self.fail(node, "anchors and aliases are not supported (found anchor "
                      f"&{node.anchor}); write the value out in full", loc)
        tag = str(getattr(node.tag, "value", node.tag))
        if tag not in _PLAIN_TAGS and tag != _TIMESTAMP:
            self.fail(node, f"YAML tag {tag.replace('tag:yaml.org,2002:', '!!')!r} is not "
                      "allowed; use plain YAML values (strings, numbers, booleans, lists, maps)",
                      loc)
        self.lines.setdefault(loc, node.start_mark.line + 1)
        if isinstance(node, MappingNode):
            out: dict[str, Any] = {}
            for knode, vnode in node.value:
                ktag = str(getattr(knode.tag, "value", knode.tag))
                if not isinstance(knode, ScalarNode) or ktag not in _PLAIN_TAGS:
                    self.fail(knode, "mapping keys must be plain words or numbers, not lists, "
                              "mappings or tagged values", loc)
                if ktag.endswith(":str"):
                    key = knode.value
                else:
                    try:
                        key = self.constructor.construct_object(knode, deep=True)
                    except (YAMLError, ValueError, OverflowError) as e:
                        self.fail(knode, f"bad key: {getattr(e, 'problem', e)}", loc)
                key = "null" if key is None else str(key)
                if key in out:
                    self.fail(knode, f"duplicate key {key!r}; give each key once", (*loc, key))
                self.lines[(*loc, key)] = knode.start_mark.line + 1
                out[key] = self.convert(vnode, (*loc, key))
                self.lines[(*loc, key)] = knode.start_mark.line + 1
            return out
        if isinstance(node, SequenceNode):
            return [self.convert(item, (*loc, i)) for i, item in enumerate(node.value)]
        if tag == _TIMESTAMP:
            return str(node.value)  # keep dates as the text written
        try:
            value = self.constructor.construct_object(node, deep=True)
        except (YAMLError, ValueError, OverflowError) as e:
            self.fail(node, f"bad value: {getattr(e, 'problem', None) or e}", loc)
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(node, f"{node.value!r} is not a finite number; give a number", loc)
        return value


# --------------------------------------------------------------------------- locations


def line_of(lines: dict[Loc, int], loc: Loc) -> int | None:
    """Line of the deepest known prefix of ``loc``."""
    for n in range(len(loc), -1, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def fmt_loc(loc: Iterable[str | int]) -> str:
    """``("steps", 2, "mmap", "size")`` -> ``steps[2].mmap.size``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def located(err: InputError, lines: dict[Loc, int], loc: Loc) -> InputError:
    """``err`` with the line of ``loc`` when it has none."""
    if err.line is None:
        err.line = line_of(lines, loc) or 1
        err.args = (str(err),)
    return err
