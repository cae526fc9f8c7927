"""Sizes, page geometry and address arithmetic shared by every part of the model.

``Geometry`` is real x86-64 geometry by default (4 KiB pages, 2 MiB and 1 GiB huge pages); the
checker uses a scaled one (a "huge page" of a few base pages) with the same code.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]i?B?|[kmgt]|B|p|pages?)?\s*$")
_MULT = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: int | str, page_size: int = 4096) -> int:
    """Parse ``4096``, ``"4K"``, ``"2MiB"``, ``"1G"``, ``"3p"`` (pages), or a sum of them
    (``"4G+12K"``) into bytes.

    Raises ``ValueError`` with a message that says which forms are accepted.
    """
    if isinstance(value, bool):
        raise ValueError("expected a size such as 4096, 4K, 2M, 1G or 3p (pages), got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return value
    if isinstance(value, str):
        return _parse_str(value, page_size)
    raise ValueError(
        f"expected a size such as 4096, 0x1000, 4K, 2M, 1G or 3p (pages), got {value!r}"
    )


@functools.lru_cache(maxsize=4096)
def _parse_str(value: str, page_size: int) -> int:
    s = value.strip()
    if "+" in s:  # a sum such as 4G+12K (guest physical addresses)
        return sum(parse_size(part, page_size) for part in s.split("+"))
    if s.lower().startswith("0x"):
        try:
            return int(s, 16)
        except ValueError:
            pass
    m = _SIZE_RE.match(s)
    if m:
        n, unit = int(m.group(1)), (m.group(2) or "")
        if unit in ("p", "page", "pages"):
            return n * page_size
        return n * _MULT[unit[:1].upper()]
    raise ValueError(
        f"expected a size such as 4096, 0x1000, 4K, 2M, 1G or 3p (pages), got {value!r}"
    )


def fmt_size(n: int) -> str:
    """Render a byte count the way a kernel engineer writes it (4K, 2M, 1G)."""
    for unit, mult in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if n >= mult and n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)


@dataclass(frozen=True)
class Geometry:
    """Page geometry: base page shift and the orders of PMD- and PUD-sized huge pages.

    Real x86-64: ``Geometry()`` = 4 KiB pages, PMD order 9 (2 MiB), PUD order 18 (1 GiB).
    ``Geometry.scaled(2, 3)`` gives "2M" = 4 pages and "1G" = 8 pages for exhaustive checking.
    """

    page_shift: int = 12
    pmd_order: int = 9
    pud_order: int = 18

    @classmethod
    def scaled(cls, pmd_order: int = 2, pud_order: int = 3) -> Geometry:
        return cls(12, pmd_order, pud_order)

    @property
    def page_size(self) -> int:
        return 1 << self.page_shift

    def huge_order(self, name: str | int) -> int:
        """Order of a huge page named ``"2M"``/``"1G"`` (scaled geometries keep the names)."""
        key = str(name).upper().replace("IB", "").replace("B", "")
        if key in ("2M", "PMD"):
            return self.pmd_order
        if key in ("1G", "PUD"):
            return self.pud_order
        raise ValueError(f"unknown huge page size {name!r}: use 2M or 1G")

    def huge_size(self, name: str | int) -> int:
        """Bytes of a huge page named ``"2M"``/``"1G"`` in this geometry."""
        return self.page_size << self.huge_order(name)

    def huge_name(self, order: int) -> str:
        if order == self.pmd_order:
            return "2M"
        if order == self.pud_order:
            return "1G"
        return f"order-{order}"

    def shift_of(self, order: int) -> int:
        """si_addr_lsb for a folio of this order: 12, 21 or 30 on real geometry (R34)."""
        return self.page_shift + order
