"""Address spaces: VMAs and page-table entries (present, hwpoison entries, huge entries).

PTEs are kept sparsely, keyed by the entry's aligned virtual address; an entry records its
level as a folio order (0 for a 4 KiB PTE, PMD or PUD order for huge entries).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .fs import Inode, OpenFile

PRESENT, HWPOISON, SWAP = "present", "hwpoison", "swap"  # SWAP: pfn holds the slot


@dataclass(eq=False)
class VMA:
    """One mapping. ``pgoff`` is in base pages; ``huge_order`` is the hugetlb page order
    (0 for non-hugetlb mappings)."""

    mm: MM
    name: str
    start: int
    end: int
    inode: Inode | None = None
    pgoff: int = 0
    shared: bool = False
    writable: bool = True
    locked: bool = False
    huge_order: int = 0
    thp: bool = False
    anon_hugetlb: bool = False
    reserved: int = 0  # hugetlb pages reserved at mmap time
    file: OpenFile | None = None  # the open file mapped (vma->vm_file holds a reference)
    # vma->anon_vma: set by anon_vma_prepare() when a private VMA first maps an anonymous
    # page (a write fault, a COW copy, a private HugeTLB page); a read fault of the zero page
    # does not set it. fork() copies page tables only of VMAs that have one (vma_needs_copy)
    anon_vma: bool = False

    @property
    def anonymous(self) -> bool:
        return self.inode is None

    def contains(self, addr: int) -> bool:
        return self.start <= addr < self.end

    def index_of(self, addr: int, page_shift: int = 12) -> int:
        """File page index (base pages) that ``addr`` maps."""
        return self.pgoff + ((addr - self.start) >> page_shift)

    def addr_of(self, index: int, page_shift: int = 12) -> int | None:
        """Address at which file page ``index`` falls in this VMA (page_address_in_vma)."""
        addr = self.start + ((index - self.pgoff) << page_shift)
        return addr if self.contains(addr) else None


@dataclass
class PTE:
    """A page-table entry at one level: present (pfn, dirty, writable) or a hwpoison entry."""

    kind: str
    pfn: int
    order: int = 0
    dirty: bool = False
    write: bool = True
    special: bool = False  # the shared zero page


@dataclass(eq=False)
class MM:
    """An mm_struct: VMAs in address order and the page tables."""

    id: int
    vmas: list[VMA] = field(default_factory=list)
    ptes: dict[int, PTE] = field(default_factory=dict)
    next_addr: int = 0x7F0000000000
    users: int = 1

    def find_vma(self, addr: int) -> VMA | None:
        for v in self.vmas:
            if v.contains(addr):
                return v
        return None

    def entry_key(self, vma: VMA, addr: int, page_shift: int = 12) -> tuple[int, int] | None:
        """(aligned address, order) of the entry mapping ``addr``, if there is one."""
        if vma.huge_order:
            key = addr & ~((1 << (page_shift + vma.huge_order)) - 1)
            return (key, vma.huge_order) if key in self.ptes else None
        key = addr & ~((1 << page_shift) - 1)
        if key in self.ptes:
            return key, 0
        # a PMD-mapped THP covers the address
        for key2, pte in self.ptes.items():
            if pte.order and key2 <= addr < key2 + (1 << (page_shift + pte.order)):
                return key2, pte.order
        return None

    def place(self, size: int, align: int) -> int:
        start = (self.next_addr + align - 1) & ~(align - 1)
        self.next_addr = start + size + align  # leave a guard gap
        return start
