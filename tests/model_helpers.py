"""Model-level test helpers shared by the kernel tests: a host with one process that
catches SIGBUS, and a run of actions returning the last one's result."""

from __future__ import annotations

from typing import Any

from memfail.model.actions import Action, Sigaction, Spawn
from memfail.model.host import ActionResult, Host, HostConfig


def new_host(profile: str, proc: str, **cfg: Any) -> Host:
    """A host under ``profile`` (HostConfig ``cfg``) with process ``proc`` whose SIGBUS
    handler records the siginfo and siglongjmps out of the access."""
    h = Host(HostConfig(profile=profile, **cfg))
    h.apply(Spawn(proc=proc))
    h.apply(Sigaction(proc=proc, sigbus="handler"))
    return h


def do(h: Host, *actions: Action) -> ActionResult:
    """Apply ``actions`` in order; the last one's result."""
    res = ActionResult(None)
    for a in actions:
        res = h.apply(a)
    return res
