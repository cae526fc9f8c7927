"""The ``guest_run`` action: a guest behaves as its ``behaviour`` says (vmm/guest.py)."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from ..actions import Action, Size, register_actions


class GuestRun(Action):
    """The guest of ``vm`` behaves as its ``behaviour`` says after meeting poison at ``gpa``,
    for ``rounds`` rounds (default: the VM's ``effort``): careless touches the page once per
    round from vCPU 0, hostile from every vCPU, confidential re-executes the load on
    ``vcpu``; a cooperative guest that has offlined the page does nothing. Stops early when
    the VM stops or the host panics. Returns the counts: ``mc`` machine checks, ``exits``
    (KVM exits or signals instead of a machine check), ``read`` (clean loads), ``rounds``."""

    key: ClassVar[str] = "guest_run"
    vm: str
    gpa: Size
    rounds: int | None = Field(default=None, ge=1, le=100_000)
    vcpu: int = 0


register_actions(GuestRun)
