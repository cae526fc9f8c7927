"""KSM pages (issue 3): merging, COW breaks, kpageflags and memory_failure() through KSM's
rmap (collect_procs_ksm, R33) with the dirty-folio forcekill (R22) and classification (R24)."""

from __future__ import annotations

from typing import Any

from memfail.model.actions import (
    CorruptPfn,
    Fork,
    HwError,
    Kpageflags,
    Madvise,
    MemRead,
    MemWrite,
    Mmap,
    Munmap,
    Pagemap,
    Prctl,
    Sigaction,
    SoftOfflinePage,
    Spawn,
)
from memfail.model.host import Host, HostConfig
from memfail.model.kernel.kactions import Swapout, UserCopy
from memfail.model.kernel.ksm import rmap_items
from memfail.model.kernel.ksmactions import KsmMerge, KsmPage
from memfail.model.trace import KernelLog, MemoryFailureEvent, SignalSent


def host(procs: str = "ab", early: str = "", **kw: Any) -> Host:
    """Processes each mapping one page ``m`` written with 7."""
    h = Host(HostConfig(**kw))
    for p in procs:
        h.apply(Spawn(proc=p))
        h.apply(Sigaction(proc=p, sigbus="handler"))
        if p in early:
            h.apply(Prctl(proc=p, op="set", policy="early"))
        h.apply(Mmap(proc=p, name="m", size="4K"))
        h.apply(MemWrite(proc=p, addr="m", value=7))
    return h


def merge(h: Host, *procs: str, addr: str = "m") -> Any:
    return h.apply(KsmMerge(pages=[KsmPage(proc=p, addr=addr) for p in procs]))


def pfn_of(h: Host, proc: str, addr: str = "m") -> Any:
    return h.apply(Pagemap(proc=proc, addr=addr)).ret["pfn"]


def signals(h: Host) -> list[tuple[str, str, str | None, str]]:
    return [(h_proc(h, e.pid), e.si_code, e.addr_rel, e.sender) for e in h.trace.of(SignalSent)]


def h_proc(h: Host, pid: int) -> str:
    return next(n for n, p in h.processes.items() if p.pid == pid)


def mf(h: Host) -> list[tuple[str, str]]:
    return [(e.page_type, e.result) for e in h.trace.of(MemoryFailureEvent)]


def test_merge_keeps_the_second_frame_frees_the_others_and_maps_it_read_only() -> None:
    h = host("abc")
    frames = [pfn_of(h, p) for p in "abc"]
    assert merge(h, "a", "b", "c").ret == 3
    assert {pfn_of(h, p) for p in "abc"} == {frames[1]}
    assert h.phys.is_free(frames[0]) and h.phys.is_free(frames[2])
    folio = h.phys.folio_of(frames[1])
    assert folio is not None and {"ksm", "anon", "lru", "dirty"} <= folio.flags
    for p in "abc":
        pte = h.processes[p].mm.ptes[h.resolve_addr(p, "m")]  # type: ignore[union-attr]
        assert not pte.write and not pte.dirty
    # stable_tree_append() adds at the head: newest first (c, then b, then the tree page a)
    assert [h_proc_of_mm(h, it.mm.id) for it in rmap_items(h, folio)] == ["c", "b", "a"]
    assert "KSM" in h.apply(Kpageflags(proc="a", addr="m")).ret


def h_proc_of_mm(h: Host, mm_id: int) -> str:
    return next(n for n, p in h.processes.items() if p.mm is not None and p.mm.id == mm_id)


def test_a_write_breaks_cow_and_the_ksm_page_is_never_reused() -> None:
    h = host("ab")
    merge(h, "a", "b")
    kpfn = pfn_of(h, "a")
    assert h.apply(MemWrite(proc="a", addr="m", value=9)).ret == 0
    assert pfn_of(h, "a") != kpfn and h.apply(MemRead(proc="a", addr="m")).ret == 9
    assert h.apply(MemRead(proc="b", addr="m")).ret == 7
    # b is the last mapping, but a KSM page is still copied, not reused
    assert h.apply(MemWrite(proc="b", addr="m", value=8)).ret == 0
    assert pfn_of(h, "b") != kpfn and h.phys.is_free(kpfn)


def test_merge_refusals() -> None:
    h = host("ab")
    h.apply(MemWrite(proc="b", addr="m", value=8))
    assert merge(h, "a", "b").errno == "EINVAL"  # contents differ
    assert merge(h, "a").errno == "EINVAL"  # nothing to merge with
    h.apply(Mmap(proc="a", name="s", size="4K", shared=True, populate=True))
    assert h.apply(KsmMerge(pages=[KsmPage(proc="a", addr="s"),
                                   KsmPage(proc="b", addr="m")])).errno == "EINVAL"
    h.apply(Mmap(proc="a", name="z", size="4K"))
    h.apply(MemRead(proc="a", addr="z"))  # the zero page
    assert h.apply(KsmMerge(pages=[KsmPage(proc="a", addr="z"),
                                   KsmPage(proc="b", addr="m")])).errno == "EINVAL"
    h.apply(Fork(proc="a", child="c"))  # a and c share one frame: not merged with itself
    assert merge(h, "a", "c").errno == "EINVAL"


def test_ksm_page_is_dirty_so_early_kill_tasks_all_get_ao_newest_merge_first() -> None:
    h = host("abc", early="ac")
    merge(h, "a", "b", "c")
    assert h.apply(HwError(proc="a", addr="m", detect="scrub")).ret == 0
    # rmap items newest first: c, b, a; b is not early, so c then a get AO
    assert signals(h) == [("c", "BUS_MCEERR_AO", "m+0x0", "memory_failure"),
                          ("a", "BUS_MCEERR_AO", "m+0x0", "memory_failure")]
    assert mf(h) == [("dirty LRU page", "Recovered")]
    # b was not signalled: its PTE is a hwpoison entry and its next access gets AR
    assert h.apply(MemRead(proc="b", addr="m")).ret == "sigbus"
    assert signals(h)[-1] == ("b", "BUS_MCEERR_AR", "m+0x0", "fault")


def test_each_task_is_added_once_with_the_address_of_its_newest_rmap_item() -> None:
    h = host("a", early="a")
    h.apply(Mmap(proc="a", name="n", size="4K"))
    h.apply(MemWrite(proc="a", addr="n", value=7))
    h.apply(KsmMerge(pages=[KsmPage(proc="a", addr="m"), KsmPage(proc="a", addr="n")]))
    h.apply(CorruptPfn(proc="a", addr="m"))
    assert signals(h) == [("a", "BUS_MCEERR_AO", "n+0x0", "memory_failure")]


def test_action_required_consumption_is_signalled_by_memory_failure() -> None:
    h = host("ab")
    merge(h, "a", "b")
    h.apply(HwError(proc="a", addr="m"))  # latent: found when b reads it
    assert h.apply(MemRead(proc="b", addr="m")).ret == "sigbus"
    # dirty folio: forcekill; kill_me_maybe() gets 0 and adds nothing
    assert signals(h) == [("b", "BUS_MCEERR_AR", "m+0x0", "memory_failure")]
    assert h.apply(MemRead(proc="a", addr="m")).ret == "sigbus"
    assert signals(h)[-1] == ("a", "BUS_MCEERR_AR", "m+0x0", "fault")


def test_madvise_hwpoison_signals_the_caller_ar() -> None:
    h = host("ab")
    merge(h, "a", "b")
    assert h.apply(Madvise(proc="a", addr="m", advice="hwpoison")).ret == 0
    assert signals(h) == [("a", "BUS_MCEERR_AR", "m+0x0", "memory_failure")]


def test_a_fork_child_is_collected_through_the_parents_anon_vma() -> None:
    # the child forked before the merge keeps its own copy of the page (it writes), yet its
    # VMA is in the parent's anon_vma, so collect_procs_ksm picks it (no page_mapped check)
    h = host("ab")
    h.apply(Fork(proc="a", child="c"))
    h.apply(Prctl(proc="c", op="set", policy="early"))
    h.apply(MemWrite(proc="c", addr="m", value=5))
    merge(h, "a", "b")
    h.apply(CorruptPfn(proc="a", addr="m"))
    assert signals(h) == [("c", "BUS_MCEERR_AO", "m+0x0", "memory_failure")]
    assert h.apply(MemRead(proc="c", addr="m")).ret == 5  # its own page is untouched


def test_a_child_forked_after_the_merge_maps_the_ksm_page_and_is_unmapped_too() -> None:
    h = host("ab", early="ab")
    merge(h, "a", "b")
    h.apply(Fork(proc="a", child="c"))
    h.apply(CorruptPfn(proc="b", addr="m"))
    assert {s[0] for s in signals(h)} == {"a", "b", "c"}
    assert h.apply(Pagemap(proc="c", addr="m")).ret["hwpoison_entry"]


def test_unmapped_and_exited_mappings_leave_the_rmap() -> None:
    h = host("abc", early="abc")
    merge(h, "a", "b", "c")
    h.apply(Munmap(proc="c", addr="m"))
    h.apply(CorruptPfn(proc="a", addr="m"))
    assert [s[0] for s in signals(h)] == ["b", "a"]


def test_linux_6_1_cannot_handle_ksm_pages() -> None:
    h = host("ab", profile="linux-6.1")
    merge(h, "a", "b")
    assert h.apply(Madvise(proc="a", addr="m", advice="hwpoison")).errno == "EBUSY"
    assert mf(h) == [("unmapping failed page", "Ignored")]
    assert any("can't handle KSM pages." in e.text for e in h.trace.of(KernelLog))


def test_soft_offline_moves_the_stable_node_and_swapout_is_refused() -> None:
    h = host("ab", early="ab")
    merge(h, "a", "b")
    old = pfn_of(h, "a")
    assert h.apply(SoftOfflinePage(proc="a", addr="m")).errno is None
    new = pfn_of(h, "a")
    assert new != old and pfn_of(h, "b") == new
    assert "KSM" in h.apply(Kpageflags(pfn=new)).ret
    assert h.apply(Swapout(proc="a", addr="m")).errno == "EINVAL"
    h.apply(CorruptPfn(pfn=new))
    assert [s[0] for s in signals(h)] == ["b", "a"]


def test_pinned_page_is_not_merged() -> None:
    h = host("ab")
    from memfail.model.kernel.mmops import gup

    gup(h, h.processes["a"], h.resolve_addr("a", "m"))
    assert merge(h, "a", "b").errno == "EBUSY"
    assert h.apply(UserCopy(proc="b", addr="m", via="gup")).ret == 0
