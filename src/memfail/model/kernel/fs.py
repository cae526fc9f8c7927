"""Inodes and their page cache (address_space): shmem/tmpfs and memfd, hugetlbfs, ext2, ramfs.

An ``Inode`` carries what memory_failure() asks of a mapping (R22, R26-R28): whether it can
write back, whether it is shmem, what ``error_remove_folio`` does, and the recorded writeback
error that fsync reports once (R25).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .mem import Folio
    from .mm import VMA

SHMEM, HUGETLBFS, EXT2, RAMFS, GMEM = "shmem", "hugetlbfs", "ext2", "ramfs", "gmem"

DEVICES = {EXT2: (8, 1), SHMEM: (0, 1), HUGETLBFS: (0, 2), RAMFS: (0, 3), GMEM: (0, 4)}

# error_remove_folio behaviours (R28)
ERM_TRUNCATE, ERM_KEEP, ERM_DELAYED, ERM_NONE = "truncate", "keep", "delayed", "none"


@dataclass(eq=False)
class Inode:
    """One file's inode and page cache. ``pages`` maps the base-page index of each cached
    folio's head to the folio; ``i_mmap`` lists the VMAs mapping the file (R33)."""

    ino: int
    kind: str
    name: str
    size: int = 0
    huge_order: int = 0
    pages: dict[int, Folio] = field(default_factory=dict)
    i_mmap: list[VMA] = field(default_factory=list)
    wb_err: int = 0  # errseq: incremented when an error is recorded
    nlink: int = 1
    open_files: int = 0
    disk: dict[int, int] = field(default_factory=dict)  # ext2: on-disk contents per page
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def can_writeback(self) -> bool:
        """mapping_can_writeback(): only disk-backed file systems (R22 step 4)."""
        return self.kind == EXT2

    @property
    def dev(self) -> tuple[int, int]:
        """(major, minor) of the file system's device (sb->s_dev), for the hwpoison test
        filter (R15): ext2 sits on a block device (8:1); the others have anonymous device
        numbers (major 0)."""
        return DEVICES.get(self.kind, (0, 9))

    @property
    def is_shmem(self) -> bool:
        return self.kind == SHMEM

    @property
    def unevictable(self) -> bool:
        return self.kind in (RAMFS, GMEM)

    def error_remove_folio(self) -> str:
        """What this mapping's ->error_remove_folio does (R28)."""
        if self.kind == EXT2:
            return ERM_TRUNCATE
        if self.kind in (SHMEM, HUGETLBFS):
            return ERM_KEEP
        if self.kind == GMEM:
            return ERM_DELAYED
        return ERM_NONE

    def lookup(self, index: int) -> Folio | None:
        """The cached folio covering base-page ``index`` (exact index first: a split huge
        range holds order-0 folios)."""
        f = self.pages.get(index)
        if f is not None:
            return f
        head = index & ~((1 << self.huge_order) - 1)
        f = self.pages.get(head)
        if f is not None and f.index <= index < f.index + f.nr_pages:
            return f
        return None

    @property
    def in_use(self) -> bool:
        return self.nlink > 0 or self.open_files > 0 or bool(self.i_mmap)


@dataclass(eq=False)
class OpenFile:
    """An open file description held by a process fd."""

    inode: Inode
    pos: int = 0
    wb_err_seen: int = 0
