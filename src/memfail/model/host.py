"""The Host: one simulated machine's state (``memfail.model.state``) and the action dispatcher.

``Host.apply(action)`` is the only way in; every visible effect is appended to ``host.trace``.
The state and the kernel mechanisms shared by several entry points (signals, unmapping,
freeing) live in ``HostState``; the per-area action handlers live in ``kernel/mmops.py``,
``kernel/fileops.py``, ``kernel/inject.py`` and the KVM and VMM modules, and register in
``memfail.model.handlers``, whose names this module re-exports. Importing this module loads
every handler.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from . import kernel as _kernel  # noqa: F401  (the kernel's action classes)
from .actions import Action
from .errors import KernelPanic, ModelInputError, TargetGone
from .handlers import HANDLERS, ActionResult, Handler, handles
from .kernel import fileops as _fileops  # noqa: F401  (handlers register on import)
from .kernel import inject as _inject  # noqa: F401
from .kernel import mmops as _mmops  # noqa: F401
from .kernel import taskops as _taskops  # noqa: F401
from .kvm import gmem as _gmem  # noqa: F401
from .kvm import kvm as _kvm  # noqa: F401
from .state import (
    PROFILE_SYSCTLS,
    RESERVED_PFN,
    SYSCTL_DEFAULTS,
    ZERO_PFN,
    HostConfig,
    HostState,
)
from .trace import ActionDone

__all__ = ["HANDLERS", "PROFILE_SYSCTLS", "RESERVED_PFN", "SYSCTL_DEFAULTS", "ZERO_PFN",
           "ActionResult", "Handler", "Host", "HostConfig", "HostState", "handles"]


class Host(HostState):
    """One machine: its state (``HostState``) and ``apply``, the dispatcher."""

    # ------------------------------------------------------------------ dispatcher
    def apply(self, action: Action) -> ActionResult:
        """Carry out one action and return its result; signals are delivered at its end."""
        if self.panicked:
            res = ActionResult(None, "PANICKED")
            self.emit(ActionDone(self.trace.step, action.key, None, "PANICKED", "host is dead"))
            self.trace.step += 1
            return res
        handler = HANDLERS.get(type(action))
        if handler is None:
            raise ModelInputError(f"action {action.key!r} is not supported by this host")
        dead = self.actor_gone(action)
        if dead is not None:
            # the process (or the VM's VMM) is gone: the action cannot happen
            self.emit(ActionDone(self.trace.step, action.key, -1, "ESRCH", dead))
            self.trace.step += 1
            return ActionResult(-1, "ESRCH", unchanged=True)
        try:
            res = handler(self, action)
            if res.unchanged and self.signals_queued():
                # signals queued before the action are delivered now: that may change it
                res = replace(res, unchanged=False)
            self.deliver_signals()
        except KernelPanic:
            res = ActionResult(None, "PANICKED")
        except TargetGone as e:
            res = ActionResult(-1, e.errno)
            self.log(f"memfail: {action.key}: {e}", level="debug")
        self.emit(ActionDone(self.trace.step, action.key, _jsonable(res.ret), res.errno))
        self.trace.step += 1
        return res

    def apply_in_step(self, action: Action) -> None:
        """Carry out ``action`` as part of the step being taken (a stage of an event split at
        lock granularity, memfail.check.races): what ``apply`` does, without its ActionDone
        event and without moving ``trace.step``. Nothing happens on a panicked host or when
        the acting process (or the VM's VMM) is gone; a panic ends the action, a vanished
        target ends it as ``apply`` logs it, and input the model refuses in this state (a
        closed fd, ...) makes it a no-op; pending signals are delivered at its end."""
        if self.panicked:
            return
        handler = HANDLERS.get(type(action))
        if handler is None or self.actor_gone(action) is not None:
            return
        try:
            handler(self, action)
            self.deliver_signals()
        except KernelPanic:
            pass
        except TargetGone as e:
            self.log(f"memfail: {action.key}: {e}", level="debug")
        except ModelInputError:
            pass

    def actor_gone(self, action: Action) -> str | None:
        """Why ``action`` cannot happen because its acting process (or the VM's VMM) has
        exited, or None (``apply`` then answers ESRCH)."""
        fields = type(action).model_fields
        name = action.__dict__.get("proc") if "proc" in fields else None
        if isinstance(name, str) and action.key not in ("spawn", "proc_status"):
            p = self.processes.get(name)
            if p is not None and not p.alive:
                return f"process {name} has exited"
        vm_name = action.__dict__.get("vm") if "vm" in fields else None
        if isinstance(vm_name, str) and action.key in ("gmem_create", "memslot",
                                                       "set_attributes"):
            vm = self.ext.get("vms", {}).get(vm_name)
            if vm is not None and not vm.vmm.alive:
                return f"the VMM of {vm_name} has exited"
        return None


def _jsonable(v: Any) -> Any:
    if isinstance(v, (int, str, float, bool)) or v is None:
        return v
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return str(v)
