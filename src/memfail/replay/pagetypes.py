"""The kernel's ``enum mf_action_page_type`` across versions, and rasdaemon's copies of it.

rasdaemon does not store the page-type string the kernel prints: it stores the number the
tracepoint carries, decoded with rasdaemon's own copy of the enum (ras-memory-failure-handler.c).
The kernel enum lost and gained entries, so on most kernels the stored string is wrong (a 6.1
kernel's "dirty LRU page", 13, is stored by rasdaemon 0.6.8 as "dirty unevictable LRU page").
``redecode`` maps the stored string back to rasdaemon's number and decodes it with the enum of
the kernel version that produced it.

Sources: include/linux/mm.h and include/ras/ras_event.h (since 6.18 also
include/trace/events/memory-failure.h) in torvalds/linux; rasdaemon v0.6.8 and v0.8.x
ras-memory-failure-handler.c. Eras: up to 5.18 (rasdaemon 0.6.8's copy); 5.19 (Naoya
Horiguchi's removal of POISONED_HUGE and BUDDY_2ND, NON_PMD_HUGE gone); 6.11 (Miaohe Lin's
"remove MF_MSG_SLAB" and Jane Chu's series adding GET_HWPOISON and ALREADY_POISONED, both
June 2024); 6.18 (PFN_MAP added, DIFFERENT_COMPOUND gone: the enum of
include/trace/events/memory-failure.h). The 5.19 and 6.18 boundaries are DERIVED (the
patches were found, the release that first shipped them was not checked).
"""

from __future__ import annotations

NAMES = {
    "KERNEL": "reserved kernel page", "KERNEL_HIGH_ORDER": "high-order kernel page",
    "SLAB": "kernel slab page", "DIFFERENT_COMPOUND": "different compound page after locking",
    "POISONED_HUGE": "huge page already hardware poisoned", "HUGE": "huge page",
    "FREE_HUGE": "free huge page", "NON_PMD_HUGE": "non-pmd-sized huge page",
    "GET_HWPOISON": "get hwpoison page", "UNMAP_FAILED": "unmapping failed page",
    "DIRTY_SWAPCACHE": "dirty swapcache page", "CLEAN_SWAPCACHE": "clean swapcache page",
    "DIRTY_MLOCKED_LRU": "dirty mlocked LRU page", "CLEAN_MLOCKED_LRU": "clean mlocked LRU page",
    "DIRTY_UNEVICTABLE_LRU": "dirty unevictable LRU page",
    "CLEAN_UNEVICTABLE_LRU": "clean unevictable LRU page", "DIRTY_LRU": "dirty LRU page",
    "CLEAN_LRU": "clean LRU page", "TRUNCATED_LRU": "already truncated LRU page",
    "BUDDY": "free buddy page", "BUDDY_2ND": "free buddy page (2nd try)", "DAX": "dax page",
    "UNSPLIT_THP": "unsplit thp", "ALREADY_POISONED": "already poisoned",
    "PFN_MAP": "non struct page pfn", "UNKNOWN": "unknown page",
}
_LRU = ["UNMAP_FAILED", "DIRTY_SWAPCACHE", "CLEAN_SWAPCACHE", "DIRTY_MLOCKED_LRU",
        "CLEAN_MLOCKED_LRU", "DIRTY_UNEVICTABLE_LRU", "CLEAN_UNEVICTABLE_LRU", "DIRTY_LRU",
        "CLEAN_LRU", "TRUNCATED_LRU"]

# (first kernel version, enum order)
KERNEL_ENUMS: tuple[tuple[tuple[int, int], list[str]], ...] = (
    ((4, 0), ["KERNEL", "KERNEL_HIGH_ORDER", "SLAB", "DIFFERENT_COMPOUND", "POISONED_HUGE",
              "HUGE", "FREE_HUGE", "NON_PMD_HUGE", *_LRU, "BUDDY", "BUDDY_2ND", "DAX",
              "UNSPLIT_THP", "UNKNOWN"]),
    ((5, 19), ["KERNEL", "KERNEL_HIGH_ORDER", "SLAB", "DIFFERENT_COMPOUND", "HUGE", "FREE_HUGE",
               *_LRU, "BUDDY", "DAX", "UNSPLIT_THP", "UNKNOWN"]),
    ((6, 11), ["KERNEL", "KERNEL_HIGH_ORDER", "DIFFERENT_COMPOUND", "HUGE", "FREE_HUGE",
               "GET_HWPOISON", *_LRU, "BUDDY", "DAX", "UNSPLIT_THP", "ALREADY_POISONED",
               "UNKNOWN"]),
    ((6, 18), ["KERNEL", "KERNEL_HIGH_ORDER", "HUGE", "FREE_HUGE", "GET_HWPOISON", *_LRU,
               "BUDDY", "DAX", "UNSPLIT_THP", "ALREADY_POISONED", "PFN_MAP", "UNKNOWN"]),
)
# rasdaemon's copies: 0.6.x-0.8.0 (the 4.x-5.18 enum) and 0.8.1+ (the 5.19-6.10 enum)
RASDAEMON_OLD = KERNEL_ENUMS[0][1]
RASDAEMON_NEW = KERNEL_ENUMS[1][1]


def version_key(version: str | None) -> tuple[int, int] | None:
    if not version:
        return None
    parts = version.split("-")[0].split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return None


def kernel_enum(version: str | None) -> list[str] | None:
    key = version_key(version)
    if key is None:
        return None
    chosen = None
    for since, names in KERNEL_ENUMS:
        if key >= since:
            chosen = names
    return chosen


def redecode(stored: str, kernel_version: str | None,
             rasdaemon_copy: list[str] | None = None) -> tuple[str, str]:
    """(page type as the kernel named it, a note saying what was done).

    Without a kernel version nothing can be undone: the stored string is kept and the note
    says so. ``rasdaemon_copy`` defaults to the 0.6.8 copy (Debian bookworm's rasdaemon).
    """
    copy = rasdaemon_copy or RASDAEMON_OLD
    names = [NAMES[n] for n in copy]
    kenum = kernel_enum(kernel_version)
    if stored not in names:
        return stored, "stored page type is not in rasdaemon's enum copy; kept as stored"
    if kenum is None:
        return stored, ("kernel version unknown: page type kept as rasdaemon decoded it, "
                        "which is right only for kernels before 5.19")
    idx = names.index(stored)
    if idx >= len(kenum):
        return stored, (f"rasdaemon's number {idx} is past the end of the {kernel_version} "
                        "enum; kept as stored")
    real = NAMES[kenum[idx]]
    if real == stored:
        return stored, f"rasdaemon's decoding agrees with the {kernel_version} enum"
    return real, (f"rasdaemon stored {stored!r} (its enum number {idx}); the "
                  f"{kernel_version} kernel's number {idx} is {real!r}")
