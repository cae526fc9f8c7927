"""Generate the reference parts of the docs from the code, so they cannot drift from it.

``render_actions()`` (action docstrings and fields), ``render_events()`` (trace event kinds) and
``render_example(name)`` (a built-in scenario) fill the ``<!-- BEGIN X -->`` ... ``<!-- END X -->``
sections of docs/scenario-format.md and docs/trace-format.md.
``python -m memfail.scenario.docgen [--check] FILE...`` rewrites (or checks) those sections.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic.fields import FieldInfo

from memfail.model.actions import ACTION_TYPES, Action, TargetMixin

from .loader import ADDR_FIELDS, SIZE_FIELDS, library, load_extensions
from .schema import event_kinds

GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Host set-up", ("sysctl", "hugepages")),
    ("Tasks and signals", ("spawn", "fork", "clone", "exit", "kill", "prctl", "sigaction",
                           "sigprocmask")),
    ("Files", ("create", "memfd_create", "open", "close", "unlink", "link", "symlink",
               "ftruncate", "fallocate", "read", "pread", "write", "pwrite", "splice", "fsync",
               "fadvise", "drop_caches")),
    ("Memory", ("mmap", "munmap", "mem_read", "mem_write", "madvise", "mlock", "munlock",
                "shmget", "shmat", "shmctl_rmid", "swapout", "ksm_merge", "user_copy")),
    ("Error injection", ("corrupt_pfn", "unpoison_pfn", "hard_offline_page",
                         "soft_offline_page", "hw_error", "scrub", "mce_inject", "mf_queue",
                         "hwpoison_filter", "split_huge_pages")),
    ("Observations", ("pagemap", "kpageflags", "meminfo", "sigpending", "proc_status")),
    ("VMs: KVM, guest_memfd and the VMM", ("vm_create", "gmem_create", "memslot",
                                           "set_attributes", "guest_access", "kernel_access",
                                           "vm_destroy", "vm_reset")),
    ("Events in flight (`memfail check --races` counterexamples)", ("stage",)),
)
_SECTION_RE = re.compile(r"(<!-- BEGIN ([A-Z]+)(?: ([\w.-]+))? -->\n)(.*?)(<!-- END \2 -->)",
                         re.S)


def _md(text: str) -> str:
    return text.replace("``", "`")


def _bounds(meta: Any) -> str:
    """`` (0..255)`` from the ge/le constraints of a field's metadata, "" without them."""
    lo = hi = None
    for m in meta:
        for c in [m, *getattr(m, "metadata", [])]:
            if getattr(c, "ge", None) is not None:
                lo = c.ge
            if getattr(c, "le", None) is not None:
                hi = c.le
    if lo is None and hi is None:
        return ""
    return f" ({'' if lo is None else lo}..{'' if hi is None else hi})"


def _type_name(name: str, ann: Any, meta: Any = ()) -> str:
    origin, args = get_origin(ann), get_args(ann)
    if origin is typing.Annotated:
        return _type_name(name, args[0], ann.__metadata__)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if set(inner) == {int, str}:
            return "size" if name in SIZE_FIELDS else "address" if name in ADDR_FIELDS \
                else "int or str"
        return " or ".join(_type_name(name, a) for a in inner)
    if origin is Literal:
        return ", ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {_type_name(name, args[0])}"
    return getattr(ann, "__name__", str(ann)) + _bounds(meta)


def _default(f: FieldInfo) -> str:
    if f.is_required():
        return "**required**"
    if f.default_factory is not None:
        return f"`{_yaml(f.default_factory())}`"  # type: ignore[call-arg]
    return "–" if f.default is None else f"`{_yaml(f.default)}`"


def _yaml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_yaml(x) for x in v) + "]"
    return str(v)


def _action_section(cls: type[Action]) -> list[str]:
    out = [f"### `{cls.key}`", "", _md(inspect.getdoc(cls) or ""), ""]
    target = issubclass(cls, TargetMixin)
    rows = []
    if target:
        rows.append("| *target* | one of `pfn`; `phys`; `proc` + `addr`; `file` + `offset`; "
                    "`free` (+ `index`); `kernel`; `vm` + `gpa`: see [Targets](#targets) | "
                    "**required** |")
    for name, f in cls.model_fields.items():
        if target and name in TargetMixin.model_fields:
            continue
        rows.append(f"| `{name}` | {_type_name(name, f.annotation, f.metadata)} | {_default(f)} |")
    if rows:
        out += ["| field | type | default |", "| --- | --- | --- |", *rows, ""]
    else:
        out += ["No fields: write `- " + cls.key + ": {}`.", ""]
    return out


def render_actions() -> str:
    """The action reference (Markdown), grouped, from the docstrings and fields of actions."""
    load_extensions()
    out: list[str] = []
    groups = list(GROUPS)
    rest = tuple(k for k in ACTION_TYPES if all(k not in keys for _, keys in GROUPS))
    if rest:
        groups.append(("Other actions", rest))
    for title, keys in groups:
        present = [k for k in keys if k in ACTION_TYPES]
        if not present:
            continue
        out += [f"## {title}", ""]
        for key in present:
            out += _action_section(ACTION_TYPES[key])
    return "\n".join(out).rstrip() + "\n"


def render_events() -> str:
    """The trace event reference (Markdown): kind, fields and what each event means."""
    out = ["| event | fields | meaning |", "| --- | --- | --- |"]
    for kind, cls in event_kinds().items():
        fields = ", ".join(f"`{f.name}`" for f in dataclasses.fields(cls) if f.name != "step")
        doc = " ".join(_md(inspect.getdoc(cls) or "").split())
        out.append(f"| `{kind}` | {fields} | {doc.replace('|', '/')} |")
    return "\n".join(out) + "\n"


def render_example(name: str) -> str:
    path = library()[name]
    return f"File `{name}.yaml` (run it with `memfail run {name}`):\n\n```yaml\n" \
        f"{path.read_text().rstrip()}\n```\n"


RENDERERS: dict[str, Callable[..., str]] = {
    "ACTIONS": render_actions, "EVENTS": render_events, "EXAMPLE": render_example,
}


def regenerate(text: str) -> str:
    """``text`` with every generated section replaced by freshly rendered content."""

    def sub(m: re.Match[str]) -> str:
        kind, arg = m.group(2), m.group(3)
        body = RENDERERS[kind](arg) if arg else RENDERERS[kind]()
        return f"{m.group(1)}{body}{m.group(5)}"

    return _SECTION_RE.sub(sub, text)


def stale_sections(text: str) -> list[str]:
    """Names of generated sections whose content differs from what the code renders now."""
    fresh = {m.group(2) + (f" {m.group(3)}" if m.group(3) else ""): m.group(4)
             for m in _SECTION_RE.finditer(regenerate(text))}
    return [name for m in _SECTION_RE.finditer(text)
            if fresh.get(name := m.group(2) + (f" {m.group(3)}" if m.group(3) else ""))
            != m.group(4)]


def main(argv: list[str]) -> int:
    check = "--check" in argv
    status = 0
    for name in (a for a in argv if a != "--check"):
        p = Path(name)
        text = p.read_text()
        if check:
            stale = stale_sections(text)
            if stale:
                print(f"{name}: stale generated sections: {', '.join(stale)}; run "
                      f"python -m memfail.scenario.docgen {name}", file=sys.stderr)
                status = 1
        else:
            new = regenerate(text)
            if new != text:
                p.write_text(new)
                print(f"{name}: updated")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
