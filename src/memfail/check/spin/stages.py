"""``memfail check --engine spin --races``: the stages of memfail.check.races in Promela.

The Python engine's ``--races`` (memfail.check.races, docs/check.md "Races at lock
granularity") splits memory_failure(), stage-2 faults, host faults, punch hole, conversion
and release into stages between the kernel locks they take, and interleaves them. This module
renders the same split on top of the atomic Promela model (promela.render, unchanged):

* Per label of the alphabet that can be split, its stage in flight (``st_K``, 0: not in
  flight; a stage's number is its place in ``races.STAGES`` plus one) and, for a stage-2
  fault, ``sx_K``: whether its mmu_invalidate_seq snapshot is stale (every stage-2 zap,
  zap_gfn_range(), bumps the VM's counter: ``INVAL``).
* One Promela transition per label (its first stage when ``first_stage`` would split it in
  this state, else its atomic step) and one per stage a label can be in flight at (the
  continuation labels ``races.continuation``): their indices follow the labels' in
  ``Rendered.labels``, so a trail's ``MF_STEP`` lines name Python labels, continuations
  included, and the counterexample writer turns them into ``stage`` steps.
* Lock conflicts as guards, generated from ``races.STAGES`` (needs, carries) and
  ``races.ATOMIC_NEEDS``: the locks an op in flight holds are the carries of the stage it
  ran last, a function of the stage it waits at (``held_at``).
* ``races.MF_WAITS``: a step that calls memory_failure() (the atomic model's ``det[p] = 1``,
  here also ``mfc = 1``) while another op in flight holds mf_mutex or the folio lock cannot
  happen: its effect is undone (the Python engine's successor is the state itself).
* Each stage a ``d_step`` that does what the Python stage does (races.mf_record, mf_unmap,
  mf_notify, fault_get_pfn, fault_map, host_fault_lookup, host_fault_map, punch zap/free,
  convert_begin/convert_end and the release actions).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from memfail.check import races
from memfail.check.spin.observe import frame_order
from memfail.check.spin.pack import array_size, numeric_defines
from memfail.check.spin.promela import (
    Rendered,
    _gmem_of,
    _guard,
    checker_proctype,
    convert_splits,
    converts_at_once,
    first_frame,
    gmem_range_ok,
    kernel_user,
    render,
    replay_driver,
    system_args,
)

# run_stage()'s transitions: the stages that can follow each stage.
NEXT: dict[str, tuple[str, ...]] = {
    "mf.record": ("mf.unmap",), "mf.unmap": ("mf.notify",), "mf.notify": (),
    "fault.get_pfn": ("fault.map",), "fault.map": ("fault.get_pfn", "fault.access"),
    "fault.access": ("fault.get_pfn",),
    "hostfault.lookup": ("hostfault.map",), "hostfault.map": ("hostfault.access",),
    "hostfault.access": ("hostfault.lookup",),
    "punch.zap": ("punch.free",), "punch.free": (),
    "convert.attributes": ("convert.folios",), "convert.folios": (),
    "release.munmap": ("release.close",), "release.close": ("release.destroy",),
    "release.destroy": (),
}
assert set(NEXT) == set(races.STAGES), "stages.NEXT must list every stage of races.STAGES"

CODE = {name: i + 1 for i, name in enumerate(races.STAGES)}

def held_at(stage: str) -> frozenset[races.Lock]:
    """The locks an op waiting at ``stage`` holds: the carries of the stage it ran last
    (every predecessor of a stage carries the same locks)."""
    got = {races.STAGES[s].carries for s, nxt in NEXT.items() if stage in nxt}
    assert len(got) <= 1, f"the predecessors of {stage} carry different locks"
    return next(iter(got), frozenset())


@dataclass
class Op:
    """A label of the alphabet that ``races.first_stage`` can split."""
    k: int                      # label index
    label: Any
    v: int | str                # VM index (an error's: the slot of its frame, frame_slots)
    p: int | str                # page index (global)
    first: str                  # its first stage
    split: str                  # Promela condition: first_stage splits it in this state
    waits: list[str] = field(default_factory=list)  # stages it can be in flight at


def _chain(first: str) -> list[str]:
    seen, todo = [first], [first]
    while todo:
        for n in NEXT[todo.pop()]:
            if n not in seen:
                seen.append(n)
                todo.append(n)
    return seen


def _ops(system: Any, labels: list[Any]) -> list[Op]:
    cfg = system.config
    vms = [v.name for v in cfg.vms]
    npg = 1 << frame_order(system)
    ops = []
    for k, label in enumerate(labels):
        kind, p = label[0], dict(label[1])
        vm, page = vms.index(p["vm"]) if "vm" in p else 0, int(p.get("page") or 0)
        v: int | str = vm
        q: int | str = vm * npg + page
        if kind in ("hw_error", "scrub"):  # the frame the label names, in whichever slot
            v, q = first_frame(vm, page)
        specs = system._specs(label)
        first, split = None, "0"
        if kind == "hw_error" and p.get("detect") == "scrub":
            first, split = "mf.record", f"(CLAIMED && bk[{v}] == OWN)"
        elif kind == "scrub":
            first, split = "mf.record", f"(err[{q}] && CLAIMED && bk[{v}] == OWN)"
        elif kind in ("vcpu_access", "fault"):
            gonly = int("mmap" in _gmem_of(cfg, p["vm"]).flags)
            first = "fault.get_pfn"
            split = f"(FT({v}, {q}) && (priv[{q}] || {gonly}))"
        elif kind == "vmm_access":
            first, split = "hostfault.lookup", f"HT({v}, {q})"
        elif kind == "punch_hole" and gmem_range_ok(p, npg):
            # races.punch_target: any other range fails kvm_gmem_fallocate's checks, one step
            first, split = "punch.zap", f"PT({v})"
        elif kind == "convert" and not converts_at_once(cfg, p):
            first, split = "convert.attributes", convert_splits(v)
        elif kind == "release" and len(specs) > 1 and \
                all(key in races.RELEASE_STAGES for key, _ in specs):
            first, split = races.RELEASE_STAGES[specs[0][0]], "1"
        if first is None:
            continue
        chain = _chain(first)
        waits = [s for s in chain if any(s in NEXT[t] for t in chain)]
        ops.append(Op(k, label, v, q, first, split, waits))
    return ops


@dataclass
class RacesRendered(Rendered):
    """The races model: ``labels`` are the alphabet followed by the continuation labels."""
    nbase: int = 0


def _lock_expr(ops: list[Op], need: frozenset[races.Lock], me: int | None) -> str:
    """Promela: an op other than label ``me`` holds a lock conflicting with ``need``."""
    terms = []
    for op in ops:
        if op.k == me:
            continue
        for s in op.waits:
            if races.conflicts(need, held_at(s)):
                terms.append(f"st_{op.k} == {CODE[s]}")
    return "(" + " || ".join(terms) + ")" if terms else "0"


def _waits_expr(ops: list[Op], me: int) -> str:
    """Another op in flight holds a lock memory_failure() waits for (races.MF_WAITS)."""
    terms = [f"st_{op.k} == {CODE[s]}" for op in ops if op.k != me for s in op.waits
             if races.mf_waits_for(held_at(s)) is not None]
    return "(" + " || ".join(terms) + ")" if terms else "0"


def _stage_body(system: Any, op: Op, stage: str, step: str) -> str:
    """What ``races.run_stage`` does for ``stage`` of op ``op``; ``step`` runs its whole
    access (the atomic step), as run_stage's ``_apply(host, specs[0])``."""
    v, q, k = op.v, op.p, op.k
    kind, p = op.label[0], dict(op.label[1])
    st = f"st_{k}"

    def goto(nxt: str | None) -> str:
        return f"{st} = {CODE[nxt] if nxt else 0}"

    # hw_error: the monitor counts the VM holding the frame affected at every stage
    aff = f"if :: bk[{v}] == OWN -> affected[{v}] = 1 :: else -> skip fi; " \
        if kind == "hw_error" else ""
    if stage == "mf.record":  # races.mf_record
        # action_result() traces the failure here: the VM its frame backs is affected from
        # now on (model_system._failed_pfns), whoever found it
        rec = aff or f"if :: bk[{v}] == OWN -> affected[{v}] = 1 :: else -> skip fi; "
        hw = f"err[{q}] = 1; " if kind == "hw_error" else ""
        # get_hwpoison_page()'s reference on the frame, until mf.notify (gmem.mf_pin)
        return (rec + hw + f"pdet[{q}] = 1; tab[{q}] = 1; "
                f"if :: record == K_RECORD_FOLIO -> hwp[{q}] = 1 :: else -> skip fi; "
                f"pin[{v}] = 1; " + goto("mf.unmap"))
    if stage == "mf.unmap":  # races.mf_unmap: of the folio found now
        return (aff + f"if :: bk[{v}] == OWN -> MF_UNMAP({v}, {q}) :: else -> skip fi; "
                + goto("mf.notify"))
    if stage == "mf.notify":  # races.mf_notify, then memory_failure()'s trace event
        return (aff + f"ao = (bk[{v}] == OWN); mr = det[{q}]; "
                f"if :: ao -> affected[{v}] = 1; MF_NOTIFY({v}, {q}) :: else -> skip fi; "
                f"mf_unpin({v}); NOSPEC({v}, {q}); det[{q}] = 1; " + goto(None))
    if stage == "fault.get_pfn":  # races.fault_get_pfn
        return (f"if :: !(({op.split})) -> fo = 1 :: else -> GET_PFN({v}, {q}) fi; "
                f"if :: fo -> wh = 1; {goto(None)} "
                f":: else -> sx_{k} = 0; {goto('fault.map')} fi")
    if stage == "fault.map":  # races.fault_map
        return (f"if :: vst[{v}] != 0 || !alive[{v}] || unb[{v}] -> {goto(None)} "
                f":: else -> if :: sx_{k} -> {goto('fault.get_pfn')} "
                f":: else -> map_spte({v}, {q}); {goto('fault.access')} fi fi")
    if stage == "fault.access":  # races.run_stage: zapped since fault.map, fault again
        return (f"if :: ({op.split}) -> {goto('fault.get_pfn')} "
                f":: else -> wh = 1; {goto(None)} fi")
    if stage == "hostfault.access":
        return (f"if :: HT({v}, {q}) -> {goto('hostfault.lookup')} "
                f":: else -> wh = 1; {goto(None)} fi")
    if stage == "hostfault.lookup":  # races.host_fault_lookup
        return (f"if :: !HT({v}, {q}) -> fo = 1 :: else -> HLOOKUP({v}, {q}) fi; "
                f"if :: fo -> wh = 1; {goto(None)} :: else -> {goto('hostfault.map')} fi")
    if stage == "hostfault.map":  # races.host_fault_map
        return (f"if :: !HT({v}, {q}) -> {goto('hostfault.access')} "
                f":: HT({v}, {q}) && (bk[{v}] == 0 || (bk[{v}] == OWN && hwp[{q}])) -> "
                f"wh = 1; {goto(None)} "
                f":: else -> pte[{q}] = 1; {goto('hostfault.access')} fi")
    if stage == "punch.zap":  # kvm_gmem_punch_hole: _zap_bindings
        return (f"if :: PT({v}) -> zap_vm({v}); {goto('punch.free')} "
                f":: else -> {goto(None)} fi")
    if stage == "punch.free":  # _free_range
        return f"if :: PT({v}) -> free_folio({v}, 0) :: else -> skip fi; {goto(None)}"
    npg = 1 << frame_order(system)
    if stage == "convert.attributes":  # races.convert_begin
        pages = range(p["page"], min(npg, p["page"] + p["pages"]))
        to = int(p["to"] == "private")
        base = int(v) * npg
        return ("; ".join(f"zap_page({v}, {base + x}); priv[{base + x}] = {to}"
                          for x in pages) + "; " + goto("convert.folios"))
    if stage == "convert.folios":  # races.convert_end: gmem_convert
        pages = range(p["page"], min(npg, p["page"] + p["pages"]))
        to = int(p["to"] == "private")
        base = int(v) * npg
        drop = "; ".join(f"pte[{base + x}] = (pte[{base + x}] == 2 -> 2 : 0)"
                         for x in pages)
        return (f"{drop + '; ' if to else ''}convert_folio({v}, {to}); " + goto(None))
    if stage.startswith("release."):
        keys = [key for key, _ in system._specs(op.label)]
        name = {s: key for key, s in races.RELEASE_STAGES.items()}[stage]
        i = keys.index(name)
        nxt = races.RELEASE_STAGES[keys[i + 1]] if i + 1 < len(keys) else None
        act = {"munmap": f"if :: alive[{v}] -> REL_MUNMAP({v}) :: else -> skip fi",
               "close": f"if :: alive[{v}] -> REL_CLOSE({v}) :: else -> skip fi",
               "vm_destroy": f"REL_DESTROY({v})"}[name]
        return f"{act}; {goto(nxt)}"
    raise ValueError(f"unknown stage {stage!r}")


# Stage helpers (v: the VM, p: its page), over the atomic model's variables.
STAGE_INLINES = r"""
/* fault_target(): a vCPU access takes the guest_memfd stage-2 fault path */
#define FT(v, p) (vst[v] == 0 && alive[v] && !goff[p] && !gpk[p] && !SPTE(v, p))
/* host_fault_target(): the VMM's access faults on its guest_memfd mapping */
#define HT(v, p) (alive[v] && !unm[v] && vst[v] != 3 && pte[p] == 0)
/* punch_target(): kvm_gmem_fallocate's checks pass (the VMM's fd is open) */
#define PT(v) (alive[v] && !closed[v] && vst[v] != 3)
/* policy_memory_failure()'s unmap: _apply_unmap_stage2 and _unmap_host */
inline MF_UNMAP(v, p) {
  if
  :: unmap_stage2 == K_UNMAP_STAGE2_SUBPAGE || (unmap_stage2 == K_UNMAP_STAGE2_FOLIO && !merged[v]) -> zap_page(v, p)
  :: unmap_stage2 == K_UNMAP_STAGE2_FOLIO && merged[v] -> zap_vm(v)
  :: unmap_stage2 == K_UNMAP_STAGE2_VM -> zap_vm(v)
  :: else -> skip
  fi;
  if :: unmap_host != K_UNMAP_HOST_NONE && pte[p] == 1 -> pte[p] = 2; MMU_NOTIFY(v, p) :: else -> skip fi
}
/* races.mf_notify: apply_vm_on_error, then gmem.unconsumed_action (kill-vm, unusable,
   notify-vmm: the unconsumed failure's AO, or defer); its kills free the folio once, at
   the end (kill_mark, free_marked), before mf.notify unpins it */
inline MF_NOTIFY(v, p) {
  if
  :: vm_on_error == K_VM_ON_ERROR_KILL && alive[v] -> kill_mark(v)
  :: vm_on_error == K_VM_ON_ERROR_UNUSABLE -> unusable[v] = 1; zap_vm(v)
  :: else -> skip
  fi;
  if
  :: unconsumed == K_UNCONSUMED_KILL_VM && vst[v] != 2 -> kill_mark(v)
  :: unconsumed == K_UNCONSUMED_UNUSABLE && !unusable[v] -> unusable[v] = 1; zap_vm(v)
  :: else -> skip
  fi;
  if
  :: unconsumed == K_UNCONSUMED_NOTIFY_VMM && alive[v] &&
     (honor_early == K_HONOR_EARLY_FALSE || VM_EARLY(v)) ->
       vmm_ao(v, p);
       if
       :: !mr && VM_EARLY(v) && honor_early == K_HONOR_EARLY_FALSE && !LEADER_EARLY(v) -> m_untold = 1
       :: else -> skip
       fi
  :: else -> if :: !mr && VM_EARLY(v) -> m_untold = 1 :: else -> skip fi
  fi;
  free_marked(v)
}
/* kvm_gmem_get_pfn(): allocation after a punch hole, the unusable file, the fault check;
   fo: it fails */
inline GET_PFN(v, p) {
  if :: bk[v] == 0 && !unusable[v] && !unb[v] -> realloc(v) :: else -> skip fi;
  if
  :: bk[v] == 0 || unusable[v] || unb[v] -> fo = 1
  :: else ->
     if
     :: fault_check == K_FAULT_CHECK_TRUE || !CLAIMED -> failed_in(v, p); fo = mr; mr = 0
     :: else -> fo = 0
     fi
  fi
}
/* kvm_gmem_fault_user_mapping(): fo: it fails */
inline HLOOKUP(v, p) {
  if
  :: unusable[v] || priv[p] -> fo = 1
  :: else ->
     if :: bk[v] == 0 -> realloc(v) :: else -> skip fi;
     fo = (bk[v] == 0 || (bk[v] == OWN && CLAIMED && fault_check == K_FAULT_CHECK_TRUE && tab[p]))
  fi
}
/* the release's actions: munmap (the VMM's PTEs go), close (kvm_gmem_release: unbind,
   eviction), vm_destroy */
inline REL_MUNMAP(v) {
  /* zap_entry() of each present PTE: the MMU notifier (R78) zaps its gfn */
  FOREACH(if :: pte[Q] == 1 -> MMU_NOTIFY(v, Q) :: else -> skip fi; pte[Q] = 0); unm[v] = 1;
  if :: closed[v] -> free_folio(v, 1); unb[v] = 1 :: else -> skip fi   /* the last holder */
}
inline REL_CLOSE(v) {
  if :: !closed[v] -> free_folio(v, 1); unb[v] = 1; closed[v] = 1 :: else -> skip fi
}
inline REL_DESTROY(v) { vst[v] = 3 }
"""


# The atomic model's tests, with the states between a release's stages, and the MMU notifier
# of a host unmap, which bumps mmu_invalidate_seq (--races only).
RELEASE_PATCHES = (
    (":: unmap_host != K_UNMAP_HOST_NONE && pte[p] == 1 -> pte[p] = 2\n",
     ":: unmap_host != K_UNMAP_HOST_NONE && pte[p] == 1 -> pte[p] = 2; MMU_NOTIFY(v, p)\n"),
    ("inline ev_close(v) { closed[v] = 1 }",
     "inline ev_close(v) { if :: alive[v] && !closed[v] && unm[v] -> free_folio(v, 1); "
     "unb[v] = 1 :: else -> skip fi; closed[v] = 1 }"),
    ("!alive[v] || vst[v] == 3 -> skip", "!alive[v] || vst[v] == 3 || unm[v] -> skip"),
    (":: vst[v] != 0 || !alive[v] -> skip", ":: vst[v] != 0 || !alive[v] || unb[v] -> skip"),
    ("hva && pte[p] == 0 && alive[v] && vst[v] != 3 &&",
     "hva && pte[p] == 0 && alive[v] && vst[v] != 3 && !unm[v] &&"),
    (":: bk[v] == 0 && !unusable[v] -> realloc(v)",
     ":: bk[v] == 0 && !unusable[v] && !unb[v] -> realloc(v)"),
    # a guest load of an unbound VM (guest_run between the release's close and its
    # vm_destroy): kvm_gmem_get_pfn() finds no file, -EFAULT, a KVM_EXIT_MEMORY_FAULT that
    # QEMU answers by converting the range and entering again: the load does not complete
    # and the VM is not paused (model/kvm/kvm.py faultin, vmm/guest.py guest_round)
    ('  :: bk[v] == 0 -> vst[v] = 1; fo = 1   /* -ENOMEM: "kvm run failed", paused */',
     '  :: unb[v] -> fo = 1\n'
     '  :: !unb[v] && bk[v] == 0 -> vst[v] = 1; fo = 1   /* -ENOMEM: "kvm run failed", paused */'),
)


# pan's copy of the state vector for MF_WAITS (render_races: mf_save, mf_restore); mf_c, a
# hidden variable, is a C global of pan's
MF_SV_C = """c_code { static char *mf_sv; static int mf_sv_size; }\n"""
MF_SV_SAVE = ("c_code { if (!mf_sv) mf_sv = (char *) emalloc(sizeof(State)); "
              "memcpy(mf_sv, (char *) &now, vsize); mf_sv_size = vsize; mf_c = 1; }")
MF_SV_RESTORE = ('c_code { if (mf_sv_size != vsize) Uerror("memfail: the state vector '
                 'changed size in a step"); memcpy((char *) &now, mf_sv, vsize); }')


def _decls(head: str) -> list[tuple[str, int]]:
    """The model's global variables (name, elements): those in the state vector (a
    ``hidden`` scratch variable's declaration starts with ``hidden`` and is not one)."""
    defines = numeric_defines(head)
    out: list[tuple[str, int]] = []
    body = re.sub(r"/\*.*?\*/", "", head, flags=re.S)
    for m in re.finditer(r"^\s*(?:bit|byte|short)\s+[^;]*;(?:\s*(?:bit|byte|short)\s+[^;]*;)*",
                         body, re.M):
        for d in re.finditer(r"(?:bit|byte|short)\s+(\w+)(?:\[([^\]]+)\])?", m.group(0)):
            name, size = d.group(1), d.group(2)
            if any(n == name for n, _ in out):
                continue
            n = array_size(size, defines) if size else 1
            if n is None:
                raise ValueError(f"the size of {name}[{size}] is not a number of the "
                                 "model's #defines")
            out.append((name, n))
    return out


def render_races(system: Any) -> RacesRendered:
    """The Promela model of ``system`` (a ModelSystem with ``races``) with the stages."""
    from memfail.check.spin.promela import _hugetlbfs_backing
    if _hugetlbfs_backing(system):
        from memfail.check.spin import hugetlbfs
        return hugetlbfs.render_races(system)
    base = render(system, step_derives=False)   # every transition derives after its steps
    labels = list(base.labels)
    ops = _ops(system, labels)
    npg = 1 << frame_order(system)
    head = base.text[:base.text.index("#ifndef REPLAY")]
    # the kernel's record of memory_failure() calls (host.phys.detected) apart from the
    # monitor's (det): mf.record sets it before mf.notify's trace event
    head = head.replace("#define pdet det\n", "")
    # pdet is the frame's too (frame_slots): a swap moves it with the others
    old_swap = "inline swap_frames(a, b) { "
    assert old_swap in head, "the atomic model has no swap_frames"
    head = head.replace(old_swap, old_swap + "; ".join(
        f"pdet[(a) * NPG + {i}] = pdet[(a) * NPG + {i}] ^ pdet[(b) * NPG + {i}]; "
        f"pdet[(b) * NPG + {i}] = pdet[(a) * NPG + {i}] ^ pdet[(b) * NPG + {i}]; "
        f"pdet[(a) * NPG + {i}] = pdet[(a) * NPG + {i}] ^ pdet[(b) * NPG + {i}]"
        for i in range(npg)) + "; ")
    head = re.sub(r"(?<!\w)det\[(\w+)\] = 1", r"det[\1] = 1; pdet[\1] = 1; mfc = 1", head)
    # between a release's stages: the VMM's mapping is gone after its munmap (unm), the
    # guest_memfd unbound after its close (unb: kvm_gmem_get_pfn fails, nothing allocated)
    for old, new in RELEASE_PATCHES:
        assert old in head, f"the atomic model changed: {old!r}"
        head = head.replace(old, new)
    # zap_gfn_range() bumps mmu_invalidate_seq
    head = re.sub(r"^(inline zap_(?:vm\(v\)|page\(v, p\)) \{.*) \}$", r"\1; INVAL(v) }",
                  head, flags=re.M)
    faults = [op for op in ops if op.first == "fault.get_pfn"]
    # a zap only marks its VM (zq, a hidden scratch variable); the faults in flight at fault.map are marked
    # stale once per transition (SPIN bounds the length of a d_step)
    nvm = len(system.config.vms)
    stale = " ".join(f"if :: zq[{op.v}] && st_{op.k} == {CODE['fault.map']} -> "
                     f"sx_{op.k} = 1 :: else -> skip fi;" for op in faults)
    stale += " " + "; ".join(f"zq[{vi}] = 0" for vi in range(nvm))
    decl = ["/* --races: ops in flight (stages.py) */",
            "bit pdet[NP]; bit unm[NV]; bit unb[NV]; hidden byte mfc; hidden byte wh;",
            *(f"byte st_{op.k};" for op in ops),
            *(f"bit sx_{op.k};" for op in faults),
            "hidden byte zq[NV];",
            "#define INVAL(v) zq[v] = 1",
            "#define MMU_NOTIFY(v, p) if :: HASHVA(v) -> zap_page(v, p) :: else -> skip fi"]
    lines = head.split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("bit panic;"))
    lines[at:at] = decl
    head = "\n".join(lines)
    vms = [vm.name for vm in system.config.vms]
    from memfail.check.spin.promela import _foreach
    head += _foreach(STAGE_INLINES, npg)
    saved = _decls(head)
    # scalars declared as plain variables are indexed only when they are arrays
    arrays = {n for n, _c in saved if re.search(rf"\b(?:bit|byte|short)\s+{n}\[", head)}
    bit_decls = re.sub(r"/\*.*?\*/", "", head, flags=re.S)
    bits = {d.strip().split("[")[0].strip() for m in re.finditer(r"\bbit\s+([^;]*);", bit_decls)
            for d in m.group(1).split(",")} & {n for n, _c in saved}
    # hidden (outside the state vector: runner._allow_hidden) and, like every hidden
    # variable, zero between steps (mf_zero); the bits 31 to an int, the bytes as bytes
    packed = [(n, i) for n, c in saved if n in bits for i in range(c)]
    words = [packed[w:w + 31] for w in range(0, len(packed), 31)]
    plain = [(n, c) for n, c in saved if n not in bits]
    head += "\n".join(f"hidden byte sv_{n}[{c}];" for n, c in plain) + "\n"
    head += "".join(f"hidden int sv_bits{w};\n" for w in range(len(words)))

    def var(n: str, i: int) -> str:
        return f"{n}[{i}]" if n in arrays else n

    def copy(dst: str, src: str) -> str:
        """Straight-line assignments: SPIN bounds the jumps in a d_step (MAXDSTEP), not its
        statements."""
        out = []
        for n, c in plain:
            for i in range(c):
                d = f"sv_{n}[{i}]" if dst == "sv" else var(n, i)
                s_ = "0" if src == "0" else f"sv_{n}[{i}]" if src == "sv" else var(n, i)
                out.append(f"{d} = {s_}")
        for w, word in enumerate(words):
            if src == "0":
                out.append(f"sv_bits{w} = 0")
            elif dst == "sv":
                out.append(f"sv_bits{w} = " + " | ".join(
                    f"({var(n, i)} << {b})" for b, (n, i) in enumerate(word)))
            else:
                out += [f"{var(n, i)} = (sv_bits{w} >> {b}) & 1" for b, (n, i) in enumerate(word)]
        return "; ".join(out)

    save, restore, zero = copy("sv", "var"), copy("var", "sv"), copy("sv", "0")
    # pan copies the state vector whole (``now``: every variable above, the saved ones; the
    # process's control state is the loop's during a d_step) with memcpy() in c_code, which
    # only pan runs; spin's simulations skip the c_code (mf_c stays 0) and copy variable by
    # variable. The copies were a fifth of pan's time in the standard configuration's --races
    # search of kill-vm, each bit of a packed array read and written alone: its bitstate
    # search 17.9 -> 13.5 s of CPU, its exhaustive one 33.4 -> 30.4 s (docs/check.md,
    # "Whole-word bit operations, one derive per step, whole-vector copies").
    head += ("hidden byte mf_c;\n" + MF_SV_C +
             f"inline mf_zero() {{ if :: !mf_c -> {zero} :: else -> skip fi }}\n"
             f"inline mf_save() {{ {MF_SV_SAVE}; "
             f"if :: !mf_c -> {save} :: else -> skip fi }}\n"
             f"inline mf_restore() {{ if :: mf_c -> {MF_SV_RESTORE} "
             f":: else -> {restore} fi; mf_zero() }}\n")
    derive = "; ".join(f"derive({vi})" for vi in range(len(system.config.vms)))

    trans: list[tuple[str, str]] = []   # (guard, body) per transition index
    by_k = {op.k: op for op in ops}
    for k, label in enumerate(labels):
        guard, count = _guard(system, label)
        op = by_k.get(k)
        atomic_needs = races.ATOMIC_NEEDS[label[0]]
        free = "0"   # races.fallocate_fails_early: the step takes no lock
        if label[0] in ("punch_hole", "realloc"):
            p = dict(label[1])
            if not gmem_range_ok(p, npg):
                atomic_needs = frozenset()  # kvm_gmem_fallocate: -EINVAL, whatever the state
            free = f"!PT({vms.index(p['vm'])})"  # the VMM's fd is not open
        if op is None:
            g = f"{guard} && ({free} || !{_lock_expr(ops, atomic_needs, k)})"
            if label[0] == "kernel_access" and \
                    kernel_user(system.config, system_args(label))[0]:
                # races.atomic_needs: an hva user faults the page in (HT) under INV_S
                p = dict(label[1])
                v = vms.index(p["vm"])
                q = v * npg + int(p.get("page") or 0)
                g += f" && !(HT({v}, {q}) && {_lock_expr(ops, frozenset({races.INV_S}), k)})"
            body = f"step_{k}()"
        else:
            first_needs = races.STAGES[op.first].needs
            g = (f"{guard} && st_{k} == 0 && ((({op.split}) && "
                 f"!{_lock_expr(ops, first_needs, k)}) || (!({op.split}) && "
                 f"({free} || !{_lock_expr(ops, atomic_needs, k)})))")
            body = (f"if :: ({op.split}) -> "
                    f"{_stage_body(system, op, op.first, f'step_{k}()')} "
                    f":: else -> wh = 1 fi")
        trans.append((g, f"{count}{body}"))
    conts: list[Any] = []
    for op in ops:
        for s in op.waits:
            g = f"!panic && st_{op.k} == {CODE[s]} && " \
                f"!{_lock_expr(ops, races.STAGES[s].needs, op.k)}"
            trans.append((g, _stage_body(system, op, s, f"step_{op.k}()")))
            conts.append(races.continuation(op.label, s))
    origin_of = [k for k in range(len(labels))] + \
        [op.k for op in ops for _s in op.waits]
    # the whole access a stage ends in (run_stage's _apply) runs once, at the end: SPIN
    # bounds the jumps in a d_step, and ev_vcpu alone has many
    for K, k in enumerate(origin_of):
        if k in by_k:
            g, body = trans[K]
            trans[K] = (g, f"wh = 0; {body}; if :: wh -> step_{k}() :: else -> skip fi; wh = 0")
    notify = [False] * len(labels) + [s == "mf.notify" for op in ops for s in op.waits]
    out = [head]
    for K, (g, body) in enumerate(trans):
        me = origin_of[K]
        clear = f"if :: panic -> st_{me} = 0 :: else -> skip fi; " if me in by_k else ""
        clear = f"{stale}; {clear}"
        waits = _waits_expr(ops, me)
        if notify[K] or waits == "0":
            out.append(f"#define G_{K} ({g})\ninline tr_{K}() {{ mfc = 0; {body}; {clear}"
                       f"{derive}; RESET_SCRATCH; mfc = 0 }}")
        else:
            out.append(f"#define G_{K} ({g})\ninline tr_{K}() {{ mfc = 0; "
                       f"if :: {waits} -> mf_save() :: else -> skip fi; {body}; {clear}"
                       f"{derive}; if :: mfc && {waits} -> mf_restore() :: !mfc && {waits} -> mf_zero() "
                       f":: else -> skip fi; "
                       f"RESET_SCRATCH; mfc = 0; mf_c = 0 }}")   # mf_c: whichever way it ends
    out += checker_proctype([(f"G_{K}", f"tr_{K}()") for K in range(len(trans))])
    text = "\n".join(out) + "\n"
    return RacesRendered(text, labels + conts, base.props, nbase=len(labels))


def replay_races_text(rendered: Rendered, seq: list[int]) -> str:
    """``promela.replay_text`` for the races model: exactly the transitions ``seq``."""
    return replay_driver(rendered.text, seq, {k: (f"G_{k}", f"tr_{k}()")
                                              for k in dict.fromkeys(seq)})
