"""Kernel samepage merging (KSM), enough for memory_failure() on KSM pages (R22, R24, R33).

What is modelled, and the kernel source it follows (torvalds/linux, mm/ksm.c,
mm/memory-failure.c, mm/memory.c, fs/proc/page.c; checked against the 6.x tree):

* **Merging** (``ksm_merge``). ``cmp_and_merge_page``: the first match is found in the
  unstable tree and ``try_to_merge_two_pages(rmap_item, page, tree_rmap_item, tree_page)``
  turns the page being *scanned* into the KSM page and replaces the tree page's PTE; then
  ``stable_tree_insert`` and ``stable_tree_append(tree_rmap_item)``,
  ``stable_tree_append(rmap_item)``; later pages find the KSM page in the stable tree
  (``try_to_merge_with_ksm_page``) and are appended. ``stable_tree_append`` uses
  ``hlist_add_head``, so the stable node's rmap list is newest first.
* ``try_to_merge_one_page`` with no kpage: ``write_protect_page`` (a dirty PTE marks the
  folio dirty; the PTE is made clean and read-only), ``folio_set_stable_node`` (PG_anon plus
  the KSM mapping bits: ``folio_test_anon`` stays true) and then "Page reclaim just frees a
  clean folio with no dirty ptes: make sure that the ksm page would be swapped":
  ``if (!folio_test_dirty(folio)) folio_mark_dirty(folio)``. **A KSM folio is therefore
  dirty**, so memory_failure() always force-kills the collected tasks (R22 step 8) and
  classifies it as "dirty LRU page" (R24), which ``me_pagecache_dirty`` ->
  ``me_pagecache_clean`` recovers as an anonymous folio (R25, R26).
* ``replace_page``: the other page's PTE becomes ``mk_pte(kpage, vma->vm_page_prot)``
  (read-only, clean), its rmap moves to the KSM folio and the old folio is put (freed when
  nothing else holds it).
* **COW**. ``do_wp_page`` / ``wp_can_reuse_anon_folio``: ``if (folio_test_ksm(folio) || ...)
  goto copy``: a KSM page is never reused, every write fault copies (mmops.do_wp_page).
* **Whom memory_failure() signals**. ``collect_procs``: ``if (folio_test_ksm(folio))
  collect_procs_ksm(...)`` before the anon and file collectors. ``collect_procs_ksm`` walks
  ``stable_node->hlist``; for each rmap item, ``for_each_process``, ``task_early_kill(tsk,
  force_early)``, then every VMA in the item's anon_vma interval tree (the whole range, no
  ``page_mapped_in_vma`` check) whose mm is the task's mm gives ``add_to_kill_ksm(t, page,
  vma, to_kill, rmap_item->address & PAGE_MASK)``, which adds the task only if
  ``task_in_to_kill_list`` does not already hold it: each task at most once, with the address
  of the first rmap item that reaches it.
* **kpageflags**: ``KPF_KSM`` is bit 21 (include/uapi/linux/kernel-page-flags.h), set for
  KSM folios; ``KPF_ANON`` is set too.
* **Before 6.4** (Longlong Xia, "mm: ksm: support hwpoison for ksm page", merged for 6.4),
  ``hwpoison_user_mappings`` refused mapped KSM pages with "%#lx: can't handle KSM pages."
  and memory_failure() reported "unmapping failed page" (profile switch ``ksm_hwpoison``).

Simplifications (the model has no ksmd timeline; each ``ksm_merge`` is one completed pass):

* An rmap item lives exactly as long as its mapping of the KSM page: after a COW break,
  munmap or exit it is gone at once. The kernel keeps it until ksmd rescans that address,
  and until then ``collect_procs_ksm`` would still pick the task.
* A fork child that maps the KSM page gets its own rmap item, newest first, as if ksmd had
  scanned the child right after the fork ("ksm page forked").
* A fork child's VMA is in the parent VMA's anon_vma (``anon_vma_fork``) whenever the parent
  VMA is private anonymous; the kernel links it only if the parent VMA already had an
  anon_vma (some page written before the fork).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import EBUSY, EINVAL, ModelInputError, errno_name
from ..handlers import ActionResult, handles
from .ksmactions import KsmMerge
from .mem import ANON
from .mm import PRESENT, PTE

if TYPE_CHECKING:
    from ..state import HostState as Host
    from .mem import Folio
    from .memory_failure import ToKill
    from .mm import MM, VMA
    from .task import Thread


@dataclass(eq=False)
class RmapItem:
    """A ksm_rmap_item on a stable node: the mm and address of one mapping of the KSM page,
    and the VMA whose anon_vma it took (``rmap_item->anon_vma = vma->anon_vma``)."""

    mm: MM
    addr: int
    vma: VMA


@dataclass
class KsmState:
    """The stable tree: each KSM folio's rmap items, newest first (``stable_node->hlist``),
    and the anon_vma links made by fork (child VMA -> parent VMA)."""

    stable: dict[Folio, list[RmapItem]] = field(default_factory=dict)
    anon_vma_parent: dict[VMA, VMA] = field(default_factory=dict)


def ksm_state(host: Host) -> KsmState:
    st = host.ext.get("ksm")
    if st is None:
        st = host.ext["ksm"] = KsmState()
    assert isinstance(st, KsmState)
    return st


def is_ksm(folio: Folio) -> bool:
    """folio_test_ksm()."""
    return "ksm" in folio.flags


# --------------------------------------------------------------------------- fork


def anon_vma_fork(host: Host, parent: VMA, child: VMA) -> None:
    """anon_vma_fork(): the child's private anonymous VMA joins the parent VMA's anon_vma
    (and, through it, every ancestor's), so KSM rmap items of the parent reach it."""
    if parent.anonymous and not parent.shared and not parent.huge_order:
        ksm_state(host).anon_vma_parent[child] = parent


def _in_anon_vma(host: Host, vma: VMA, root: VMA) -> bool:
    """Whether ``vma`` is in the interval tree of ``root``'s anon_vma: it is ``root`` or was
    forked (at any depth) from it, and it is still mapped."""
    if vma not in vma.mm.vmas:
        return False
    links = ksm_state(host).anon_vma_parent
    cur: VMA | None = vma
    while cur is not None:
        if cur is root:
            return True
        cur = links.get(cur)
    return False


# --------------------------------------------------------------------------- rmap


def rmap_items(host: Host, folio: Folio) -> list[RmapItem]:
    """The stable node's rmap items, newest first, for the mappings the folio has now;
    mappings without an item (fork children) get one at the head (see the module notes)."""
    st = ksm_state(host)
    items = [it for it in st.stable.get(folio, [])
             if (it.mm.id, it.addr) in folio.rmap and it.vma in it.mm.vmas]
    have = {(it.mm.id, it.addr) for it in items}
    for mm_id, addr in sorted(folio.rmap):
        if (mm_id, addr) not in have:
            mm = host.mms[mm_id]
            vma = mm.find_vma(addr)
            if vma is not None:
                items.insert(0, RmapItem(mm, addr, vma))
    st.stable[folio] = items
    return items


def collect_procs_ksm(host: Host, folio: Folio, pfn: int, force_early: bool,
                      current: Thread | None) -> list[ToKill]:
    """collect_procs_ksm() with add_to_kill_ksm() (R33, R34): for each rmap item (newest
    first) and each process in for_each_process order, the task_early_kill() thread is added
    with the item's address if some VMA of its mm is in the item's anon_vma, unless that
    thread is already on the list (task_in_to_kill_list)."""
    from .memory_failure import ToKill, task_early_kill

    shift = host.geometry.page_shift
    tokill: list[ToKill] = []
    for item in rmap_items(host, folio):
        for proc in host.processes_in_order():
            t = task_early_kill(host, proc, force_early, current)
            if t is None or proc.mm is None:
                continue
            if any(tk.thread is t for tk in tokill):
                continue  # task_in_to_kill_list()
            if any(_in_anon_vma(host, v, item.vma) for v in proc.mm.vmas):
                tokill.append(ToKill(t, item.addr, shift))
    return tokill


def ksm_migrate(host: Host, old: Folio, new: Folio) -> None:
    """folio_migrate_ksm(): the stable node follows the folio to its new frame."""
    st = ksm_state(host)
    items = st.stable.pop(old, None)
    if items is not None:
        st.stable[new] = items


# --------------------------------------------------------------------------- merging


def _page(host: Host, proc_name: str, addr_spec: int | str) -> tuple[MM, VMA, int, PTE, Folio]:
    """Resolve and check one page to merge; raises _Refused with the errno."""
    proc = host.proc(proc_name, "pages")
    if not proc.alive or proc.mm is None:
        raise _Refused("ESRCH")
    addr = host.resolve_in(proc, addr_spec, "pages")
    mm = proc.mm
    vma = mm.find_vma(addr)
    if vma is None or not vma.anonymous or vma.shared or vma.huge_order or vma.locked:
        raise _Refused(-EINVAL)  # vma_ksm_compatible(); mlocked VMAs are not modelled
    key = addr & ~(host.geometry.page_size - 1)
    pte = mm.ptes.get(key)
    if pte is None or pte.kind != PRESENT or pte.special or pte.order:
        raise _Refused(-EINVAL)  # not present, swapped, poisoned entry, zero page or THP
    folio = host.phys.folio_of(pte.pfn)
    if folio is None or folio.kind != ANON or folio.order or "swapcache" in folio.flags \
            or folio.pfn in host.phys.hwpoison:
        raise _Refused(-EINVAL)
    if folio.refs["gup"] or folio.refs["kernel"]:
        raise _Refused(-EBUSY)  # write_protect_page(): mapcount + 1 != refcount
    return mm, vma, key, pte, folio


class _Refused(Exception):
    """A page the model does not merge: the errno name of the refusal."""

    def __init__(self, err: int | str) -> None:
        super().__init__(err)
        self.errno = err if isinstance(err, str) else errno_name(err)


def _write_protect(host: Host, mm: MM, key: int, pte: PTE, folio: Folio) -> None:
    """write_protect_page(): a dirty PTE dirties the folio; the PTE becomes clean and
    read-only."""
    if pte.dirty:
        folio.flags.add("dirty")
    if pte.dirty or pte.write:
        pte.dirty = pte.write = False
        host.mmu_notify(mm, key, host.geometry.page_size)


@handles(KsmMerge)
def do_ksm_merge(host: Host, a: KsmMerge) -> ActionResult:
    """MADV_MERGEABLE plus one ksmd pass over the given pages (see KsmMerge)."""
    try:
        pages = [_page(host, p.proc, p.addr) for p in a.pages]
    except _Refused as e:
        return ActionResult(-1, e.errno)
    seen = {(mm.id, key) for mm, _v, key, _p, _f in pages}
    if len(seen) != len(pages):
        raise ModelInputError("the same page is listed twice", "pages")
    if len(pages) < 2:
        return ActionResult.err(-EINVAL)  # nothing identical to merge with
    data = {host.phys.data.get(pte.pfn, 0) for _m, _v, _k, pte, _f in pages}
    if len(data) != 1:
        return ActionResult.err(-EINVAL)  # memcmp_pages() differs: no merge
    ksm_folios = {id(f): f for *_r, f in pages if is_ksm(f)}
    if len(ksm_folios) > 1:
        return ActionResult.err(-EINVAL)  # two stable nodes: not merged by this model
    plain = [f for *_r, f in pages if not is_ksm(f)]
    if len({id(f) for f in plain}) != len(plain):
        return ActionResult.err(-EINVAL)  # "Don't substitute a ksm page for a forked page"
    st = ksm_state(host)
    if ksm_folios:
        kfolio = next(iter(ksm_folios.values()))
        order = list(pages)
    else:
        # try_to_merge_two_pages(): the scanned page (the second) becomes the KSM page, the
        # tree page (the first) is merged into it; both rmap items are appended, tree first
        kfolio = pages[1][4]
        mm, _vma, key, pte, _f = pages[1]
        _write_protect(host, mm, key, pte, kfolio)
        kfolio.flags |= {"ksm", "dirty"}  # folio_set_stable_node(); folio_mark_dirty()
        st.stable[kfolio] = []
        order = [pages[0], pages[1], *pages[2:]]
    items = rmap_items(host, kfolio) if ksm_folios else []
    for mm, vma, key, pte, folio in order:
        if folio is not kfolio:
            # try_to_merge_one_page(vma, page, kpage): write_protect_page + replace_page
            _write_protect(host, mm, key, pte, folio)
            host.zap_entry(mm, key, "ksm")
            host.set_pte(vma, key, PTE(PRESENT, kfolio.pfn, 0, False, False), kfolio)
        if not any(it.mm is mm and it.addr == key for it in items):
            items.insert(0, RmapItem(mm, key, vma))  # stable_tree_append(): hlist_add_head
    st.stable[kfolio] = items
    rmap_items(host, kfolio)  # forked mappings of the same frame get items of their own
    return ActionResult(len(kfolio.rmap))


__all__ = ["KsmMerge", "anon_vma_fork", "collect_procs_ksm", "is_ksm", "rmap_items"]
