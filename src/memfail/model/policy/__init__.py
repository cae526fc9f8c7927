"""guest_memfd memory-failure policies (see registry)."""

from __future__ import annotations

from typing import Any


def make_policy(spec: Any) -> Any:
    from .registry import make_policy as _make

    return _make(spec)
