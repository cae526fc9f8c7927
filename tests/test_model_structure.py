"""The model's module structure: the Host's state apart from the action dispatcher.

The kernel, KVM and VMM modules work on ``memfail.model.state`` and register their handlers
in ``memfail.model.handlers``; only the dispatcher, ``memfail.model.host``, imports them all.
The module-level import graph is computed from the source with ``ast`` (imports under
``if TYPE_CHECKING:`` and inside functions do not run when a module is imported, so they
are left out; importing ``a.b.c`` runs the packages ``a.b`` too).
"""

from __future__ import annotations

import ast
from pathlib import Path

import memfail.model

ROOT = Path(memfail.model.__file__).parent
PKG = "memfail.model"
HOST = f"{PKG}.host"


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([PKG, *parts])] = p
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return "TYPE_CHECKING" in ast.unparse(test)


def _toplevel_imports(name: str, path: Path) -> set[str]:
    """Modules ``name`` imports when it is imported (absolute names)."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for n in body:
            if isinstance(n, ast.If):
                if not _is_type_checking(n.test):
                    visit(n.body)
                visit(n.orelse)
            elif isinstance(n, ast.Try):
                visit(n.body)
                for h in n.handlers:
                    visit(h.body)
                visit(n.orelse)
                visit(n.finalbody)
            elif isinstance(n, ast.With | ast.ClassDef):
                visit(n.body)
            elif isinstance(n, ast.Import):
                out.update(a.name for a in n.names)
            elif isinstance(n, ast.ImportFrom):
                if n.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[:len(base) - n.level + 1]
                    mod = ".".join(base + ([n.module] if n.module else []))
                else:
                    mod = n.module or ""
                out.add(mod)
                out.update(f"{mod}.{a.name}" for a in n.names)  # submodules imported by name

    visit(ast.parse(path.read_text()).body)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the model modules its import runs (parent packages included)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for imp in _toplevel_imports(name, path):
            parts = imp.split(".")
            for i in range(3, len(parts) + 1):
                deps.add(".".join(parts[:i]))
        graph[name] = {d for d in deps
                       if d in mods and d != name and not name.startswith(d + ".")}
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for dep in graph[todo.pop()]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_no_model_module_imports_the_dispatcher_at_module_level() -> None:
    graph = import_graph()
    assert HOST in graph and f"{PKG}.state" in graph
    importers = sorted(m for m, deps in graph.items() if HOST in deps)
    assert importers == [], f"import memfail.model.state instead of host in: {importers}"


def test_no_import_cycle_through_the_dispatcher() -> None:
    graph = import_graph()
    cycle = sorted(m for m in _reachable(graph, HOST) - {HOST}
                   if HOST in _reachable(graph, m))
    assert cycle == [], f"modules in an import cycle with memfail.model.host: {cycle}"


def test_the_state_module_imports_no_action_handler() -> None:
    graph = import_graph()
    state = _reachable(graph, f"{PKG}.state")
    assert HOST not in state
    # the handler modules are those that register with @handles
    handlers = sorted(m for m, p in _modules().items() if "@handles(" in p.read_text())
    assert len(handlers) >= 10
    assert sorted(set(handlers) & state) == []


def test_the_dispatcher_loads_every_handler_module() -> None:
    """Building a Host needs no import besides memfail.model.host: every module with an
    ``@handles`` handler is loaded by it (a scenario's actions all have a handler)."""
    graph = import_graph()
    handlers = {m for m, p in _modules().items() if "@handles(" in p.read_text()}
    missing = sorted(handlers - _reachable(graph, HOST))
    assert missing == []


def test_the_graph_sees_a_module_level_import(tmp_path: Path) -> None:
    """The check would fail: a module importing host at module level is found, one under
    TYPE_CHECKING or inside a function is not."""
    top = tmp_path / "kvm.py"
    top.write_text("from ..host import Host\n")
    assert f"{PKG}.host" in _toplevel_imports(f"{PKG}.kvm.kvm", top)
    guarded = tmp_path / "g.py"
    guarded.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                       "    from ..host import Host\n\ndef f():\n    from ..host import Host\n")
    assert f"{PKG}.host" not in _toplevel_imports(f"{PKG}.kvm.g", guarded)


def test_public_names_stay_importable_from_host() -> None:
    from memfail.model import handlers, state
    from memfail.model.host import (
        HANDLERS,
        PROFILE_SYSCTLS,
        RESERVED_PFN,
        SYSCTL_DEFAULTS,
        ZERO_PFN,
        ActionResult,
        Host,
        HostConfig,
        handles,
    )

    assert HANDLERS is handlers.HANDLERS and handles is handlers.handles
    assert ActionResult is handlers.ActionResult and HostConfig is state.HostConfig
    assert (ZERO_PFN, RESERVED_PFN) == (state.ZERO_PFN, state.RESERVED_PFN)
    assert SYSCTL_DEFAULTS is state.SYSCTL_DEFAULTS and PROFILE_SYSCTLS is state.PROFILE_SYSCTLS
    assert issubclass(Host, state.HostState)
