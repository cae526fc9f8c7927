"""The action handler table: which function carries out which action class.

Handlers (in the kernel, KVM and VMM modules) register here with ``@handles``; the
dispatcher, ``memfail.model.host.Host.apply``, looks them up. Kept apart from the dispatcher
so that a handler module needs the state (``memfail.model.state``) and this table only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .actions import Action
from .errors import errno_name

if TYPE_CHECKING:
    from .state import HostState


@dataclass
class ActionResult:
    """What an action returned: a value (int, str or dict) and an errno name or None.

    ``unchanged`` is the handler's word that this return left the host exactly as it found
    it (a read-only path: nothing queued, nothing to consume, a target already gone). Only
    ``memfail check`` reads it, to skip the snapshot that would tell it so (docs/check.md,
    "Steps that change nothing"); False promises nothing. Not part of the result's value
    (equality and repr leave it out)."""

    ret: Any
    errno: str | None = None
    data: list[int] | None = None  # the byte value of each page a read or access saw
    unchanged: bool = field(default=False, compare=False, repr=False)

    @classmethod
    def err(cls, negerr: int, unchanged: bool = False) -> ActionResult:
        return cls(-1, errno_name(negerr), unchanged=unchanged)


Handler = Callable[["HostState", Any], ActionResult]
HANDLERS: dict[type[Action], Handler] = {}


def handles(*classes: type[Action]) -> Callable[[Handler], Handler]:
    """Register the function that carries out an action class."""

    def deco(fn: Handler) -> Handler:
        for c in classes:
            HANDLERS[c] = fn
        return fn

    return deco
