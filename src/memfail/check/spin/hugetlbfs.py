"""The Promela model of the ``hugetlbfs`` backing (policy backing ``hugetlbfs``, S10/S11).

Under that policy there is no guest_memfd: gmem_create makes a hugetlbfs memfd the VMM maps
(model/kvm/gmem.py do_gmem_create), the memslot takes the VMM's mapping as its HVA
(model/kvm/kvm.py do_memslot), and a failure takes the kernel's own HugeTLB path
(memory_failure() -> try_memory_failure_hugetlb(): PG_hwpoison on the folio and the raw
page on its raw list, hwpoison_user_mappings() -> try_to_unmap(): a hwpoison entry in the VMM's
huge PTE, the MMU notifier zapping stage 2, kill_procs() for EARLY threads). It is knob-free:
the policy has no knob that changes these paths.

Per page it keeps what promela.py keeps (``err``, ``det``, ``hwp``: PG_hwpoison or the raw
list, never cleared: a freed poisoned folio is dissolved with its raw pages marked, ``cons``,
``goff``, ``gpk``, ``priv``); per VM one huge PTE of the memslot's mapping (``pte``: 0 none, 1
present, 2 hwpoison entry; observed at page 0, where a HugeTLB mapping keeps it), a huge SPTE
(``hs``: hva_to_pfn maps the HugeTLB page at its size) or, while the range holds private and
shared pages, 4K ones (``spte``), the frame backing it (``bk``: the VM's
own, a spare HugeTLB page, none), the own frame's state when freed (``fst``: 1 free, 3
dissolved), the KVM state and whether the VMM lives.

The VMM maps the memfd once, as QEMU maps its RAM: gmem_create's stand-in mapping when the
guest_memfd entry has no ``mmap``, the set-up's ``<vm>.ram`` when it has (the memslot
registers it and the stand-in goes, model/kvm/kvm.py do_memslot). kill_procs() and
kill_me_maybe() address the SIGBUS at that mapping, inside guest RAM: QEMU injects the vMCE
(S10; an SNP guest gets none, Q8). ``release`` unmaps it, closes the fd and destroys the VM:
nothing holds the memfd any more, so the folio is freed. ``convert`` to private on a
``default`` VM fails (-EINVAL, kvm_supported_mem_attributes()); on the other types it
changes only the stage-2 mapping size. fallocate(ALLOCATE) (``realloc``) allocates the huge
folio from the pool into the page cache when the VM's page is not there (hugetlbfs_fallocate).

With ``--races`` (``render_races``) ``release`` and ``convert`` run in the stages of
memfail.check.races, the only events ``races.first_stage`` splits under this backing.

Generated from the same definitions as promela.py: the event alphabet (``ModelSystem.entries``
with each event's ``limit`` and the error bound), the properties (``PROP_EXPR``) and each
kernel user's reach, check and copy (``kernel_user``).
"""

from __future__ import annotations

from typing import Any

from memfail.check.events import vm_of
from memfail.check.properties import PROPERTIES
from memfail.check.spin.observe import PAGE_FIELDS, frame_order, spare_pages
from memfail.check.spin.promela import (
    MCE_INLINES,
    PROP_EXPR,
    Rendered,
    Unsupported,
    _foreach,
    _gmem_of,
    _guard,
    _guest_run,
    _ignores_vmce,
    _vmm_thread,
    checker_proctype,
    convert_splits,
    converts_at_once,
    first_frame,
    frame_slots,
    init_slots,
    kernel_user,
    limited_events,
    refuse_layout,
    refuse_vmms,
    sigbus_defines,
    system_args,
)

# The per-page arrays of the physical frame (promela.frame_slots): the hardware error,
# memory_failure()'s record of it, PG_hwpoison and the consumption count.
PHYSICAL_HUGETLBFS = ("err", "det", "hwp", "cons")

# Event kinds the hugetlbfs model carries out (the rest are refused).
SUPPORTED_HUGETLBFS = ("hw_error", "scrub", "vcpu_access", "vmm_access", "kernel_access",
                       "convert", "punch_hole", "close", "release", "realloc", "guest_run",
                       "vcpu_mce", "task_work")


def check_supported(system: Any) -> None:
    """Refuse (``Unsupported``) what the hugetlbfs model does not carry out."""
    cfg = system.config
    refuse_layout(system, "hugetlbfs VMs made from a guest_memfd entry with backing 2M or 1G "
                  "(one HugeTLB page)", "one huge page per VM (size 2M with backing 2M, 1G "
                  "with 1G)", backings=("2M", "1G"))
    npg = 1 << frame_order(system)
    for i, label in system.entries:
        at = ("events", i)
        kind = label[0]
        if kind not in SUPPORTED_HUGETLBFS:
            raise Unsupported(f"event {kind!r} is not modelled by the SPIN engine for backing "
                              f"hugetlbfs (it models {', '.join(SUPPORTED_HUGETLBFS)})",
                              (*at, "event"))
        p = dict(label[1])
        mapped = "mmap" in _gmem_of(cfg, p["vm"]).flags
        if kind in ("vmm_access", "close", "release") and not mapped:
            raise Unsupported(f"{kind} on {p['vm']}: the SPIN engine models it for backing "
                              "hugetlbfs on a VM whose guest_memfd entry has flag mmap only", at)
        if kind == "vmm_access" and _vmm_thread(cfg, p) != "main":
            raise Unsupported("vmm_access is modelled for backing hugetlbfs by the VMM's main "
                              "thread only", (*at, "thread"))
        if kind == "vcpu_access" and p.get("write"):
            raise Unsupported("vcpu_access with write is not modelled for backing hugetlbfs",
                              (*at, "write"))
        if kind == "realloc" and p["page"] + p["pages"] > npg:
            # hugetlbfs_fallocate() rounds the range out and grows the file: a huge page more
            # from the pool for each one past the VM's (the Python model takes them)
            raise Unsupported(f"realloc on {p['vm']} at page {p['page']}, {p['pages']} pages: "
                              "past the VM's huge page, which hugetlbfs_fallocate() would "
                              "add to the file; the SPIN engine models one huge page per VM "
                              f"for backing hugetlbfs (page + pages <= {npg})", (*at, "pages"))
    refuse_vmms(cfg)


def _or(cfg: Any, value: Any) -> str:
    return "(" + " || ".join(f"((v) == {i} && {int(bool(value(vm)))})"
                             for i, vm in enumerate(cfg.vms)) + ")"


def render(system: Any) -> Rendered:
    """The Promela text of ``system`` (a ModelSystem whose policy has backing hugetlbfs)."""
    check_supported(system)
    cfg = system.config
    vms = [v.name for v in cfg.vms]
    npg = 1 << frame_order(system)
    early = {v.name: bool(system.ctx.early.get(v.vmm)) for v in cfg.vms}
    labels = [label for _i, label in system.entries]
    maxvc = max(vm.vcpus for vm in cfg.vms)
    lines = ["/* memfail check --engine spin, backing hugetlbfs: generated, do not edit */"]
    lines += [
        f"#define NV {len(vms)}",
        f"#define NPG {npg}",
        f"#define NP {len(vms) * npg}",
        f"#define MAXERR {cfg.bounds.errors}",
        f"#define MAXVC {maxvc}",
        "#define VT(v, i) ((v) * MAXVC + (i))",
        "#define GIGN(v) " + _or(cfg, _ignores_vmce),
        "#define VM_EARLY(v) " + _or(cfg, lambda vm: early[vm.name]),
        *sigbus_defines(cfg),
        "bit err[NP]; bit det[NP]; bit hwp[NP]; byte cons[NP]; bit goff[NP]; bit gpk[NP];",
        "bit priv[NP]; bit spte[NP]; byte pte[NV]; bit hs[NV]; byte vst[NV]; bit alive[NV];",
        "byte bk[NV]; byte fst[NV]; bit affected[NV];",
        # the VMM closed its fd (close, release.close) / unmapped the memfd (release.munmap,
        # --races only): the mapping or the fd, whichever goes last, frees the folio
        "bit clo[NV]; bit unm[NV];",
        "byte nspare; byte twp[NV * MAXVC]; byte mcc[NV * MAXVC];",
        "hidden byte tp; hidden byte fo; hidden byte ag; hidden byte gr; hidden byte ko;",
        "hidden byte rc; hidden byte rn; hidden byte ph; hidden byte vi; hidden byte kq;",
        "hidden byte mr;",
        "#define RESET_SCRATCH mr = 0; tp = 0; fo = 0; ag = 0; gr = 0; rc = 0; rn = 0; "
        "ph = 0; vi = 0; ko = 0; kq = 0",
        "#define FRAME_HWP(v) (" + " || ".join(f"hwp[(v) * NPG + {i}]" for i in range(npg))
        + ")",
        "#define HELD(v) (bk[v] == OWN && vst[v] != 3)",
        "#define UNIFORM(v) ((" + " && ".join(f"priv[(v) * NPG + {i}]" for i in range(npg))
        + ") || (" + " && ".join(f"!priv[(v) * NPG + {i}]" for i in range(npg)) + "))",
        "#define SPTE(v, p) (spte[p] || hs[v])",
        "bit panic; bit m_panic; bit m_reuse; bit m_wrong; bit m_untold; bit m_counters;",
        "bit m_down; bit m_hdown;",
        f"byte ev_cnt[{max(1, len(limited_events(cfg)))}]; byte nerr;",
        *frame_slots(len(vms), npg, PHYSICAL_HUGETLBFS),
    ]
    np_ = len(vms) * npg
    any_cons = " || ".join(f"cons[{p}] >= 2" for p in range(np_)) or "0"
    any_lost = " || ".join(f"(det[{p}] && err[{p}] && !hwp[{p}])" for p in range(np_)) or "0"
    lines += [f"#define ANY_CONS2 ({any_cons})", f"#define ANY_LOST ({any_lost})"]
    missing = [p.name for p in PROPERTIES if p.name not in PROP_EXPR]
    if missing:
        raise Unsupported(f"no Promela rendering of {', '.join(missing)}")
    props = [p.name for p in PROPERTIES]
    for k, name in enumerate(props):
        lines.append(f"#define prop_{k} ({PROP_EXPR[name]})  /* {name} */")
    lines.append("hidden short chk;\n#ifdef CHECK\n#define CHK CHECK\n#else\n#define CHK chk\n#endif")
    viol = " || ".join(f"((((CHK >> {k}) & 1) == 1) && prop_{k})" for k in range(len(props)))
    lines.append(f"#define VIOLATED ({viol})")
    lines.append(_foreach(SEMANTICS, npg))
    # observation printer, in observe.layout order
    fmt, args = [], []
    for vi, vm in enumerate(cfg.vms):
        mapped = "mmap" in _gmem_of(cfg, vm.name).flags
        for pg in range(npg):
            p = vi * npg + pg
            # the frame's fields by its first owner (promela.frame_slots), the VM's by the VM
            fp = first_frame(vi, pg)[1]
            for f in PAGE_FIELDS:
                fmt.append("%d")
                args.append(f"(HELD({vi}) && rk[{vi}] == {vi})" if f == "held" else
                            f"hwp[{fp}]" if f == "rec" else
                            f"SPTE({vi}, {p})" if f == "spte" else
                            (f"pte[{vi}]" if pg == 0 and mapped else "0") if f == "pte" else
                            f"{f}[{fp}]" if f in PHYSICAL_HUGETLBFS else f"{f}[{p}]")
        fmt += ["%d", "%d"]
        args += [f"vst[{vi}]", f"alive[{vi}]"]
    fmt += ["%d", "%d"]
    args += ["panic", "FREE_POOL"]
    for k in range(len(props)):
        fmt.append("%d")
        args.append(f"prop_{k}")
    lines.append(f'inline observe() {{ printf("MF_OBS {" ".join(fmt)}\\n", '
                 f'{", ".join(args)}) }}')
    for k, label in enumerate(labels):
        lines.append(f"inline step_{k}() {{ {_call(cfg, label, vms, npg)} }}")
    guards = [(k, *_guard(system, label)) for k, label in enumerate(labels)]
    lines.append("inline init_state() {")
    # the set-up: the VMM's mapping faulted in by the guest's stores, one huge SPTE per VM
    lines.append("  " + "; ".join(f"alive[{i}] = 1; bk[{i}] = OWN; pte[{i}] = 1; hs[{i}] = 1"
                                  for i in range(len(vms)))
                 + f"; nspare = {spare_pages(system)}; "
                 + init_slots(len(vms)))
    lines.append("}")
    lines += checker_proctype([(guard, f"{count}step_{k}(); RESET_SCRATCH")
                               for k, guard, count in guards])
    return Rendered("\n".join(lines) + "\n", labels, props)


def _call(cfg: Any, label: Any, vms: list[str], npg: int) -> str:
    p = dict(label[1])
    kind = label[0]
    v = vms.index(p["vm"])
    q = v * npg + p.get("page", 0)
    if kind in ("hw_error", "scrub"):  # the frame the label names, in whichever slot
        slot, fq = first_frame(v, p["page"])
        if kind == "scrub":
            return f"ev_scrub({slot}, {fq})"
        return f"ev_hw_error({slot}, {fq}, {int(p['detect'] != 'latent')})"
    if kind == "vcpu_access":
        return f"ev_vcpu({v}, {q}, {p.get('vcpu') or 0})"
    if kind == "guest_run":
        return _guest_run(vm_of(cfg, p["vm"]), v, q, p)
    if kind == "vcpu_mce":
        return f"ev_vcpu_mce({v}, {q}, {p['vcpu']})"
    if kind == "task_work":
        return f"tw_run({v}, {p['vcpu']})"
    if kind == "vmm_access":
        return f"ev_vmm({v}, {q}, {int(bool(p.get('write')))})"
    if kind == "kernel_access":
        hva, chk, rcv, *_rest = kernel_user(cfg, system_args(label))
        return f"ev_kacc({v}, {q}, {int(p['page'] == 0)}, {hva}, {chk}, {rcv})"
    if kind == "convert":
        pages = range(p["page"], min(npg, p["page"] + p["pages"]))
        to = int(p["to"] == "private")
        if converts_at_once(cfg, p):
            return "skip"
        return f"if :: alive[{v}] -> hs[{v}] = 0; " + \
            "; ".join(f"spte[{v * npg + x}] = 0; priv[{v * npg + x}] = {to}" for x in pages) + \
            " :: else -> skip fi"
    if kind == "punch_hole":  # hugetlbfs_punch_hole(): the range rounded in to whole huge
        # pages; one that covers none of the VM's (it starts past the first byte) frees nothing
        whole = p["page"] == 0 and p["pages"] >= npg
        return f"ev_punch({v})" if whole else "skip"
    if kind == "realloc":  # the range is rounded out to the huge page (hugetlbfs_fallocate)
        return f"ev_realloc({v})"
    if kind == "close":
        return f"ev_close({v})"
    if kind == "release":
        return f"ev_release({v})"
    raise Unsupported(kind)


# The paths of the kernel's HugeTLB memory-failure handling for a hugetlbfs-backed VM.
# Function names are the kernel's (mm/memory-failure.c, mm/hugetlb.c, fs/hugetlbfs/inode.c,
# virt/kvm/kvm_main.c) and the model's (src/memfail/model/kernel/, kvm/, vmm/qemu.py).
SEMANTICS = r"""
#define OWN 1
#define SPARE 2
/* zap stage 2 of the whole VM (the MMU notifier over the huge page, kvm_mmu_zap_all) */
inline zap_vm(v) { FOREACH(spte[Q] = 0); hs[v] = 0 }
/* install the SPTE: at the HugeTLB page's size (replacing 4K ones under it), or at 4K when
   the huge range holds both private and shared pages (KVM disallows the huge mapping of a
   range with mixed attributes) */
inline map_spte(v, p) {
  if
  :: UNIFORM(v) -> FOREACH(spte[Q] = 0); hs[v] = 1
  :: else -> spte[p] = 1
  fi
}
/* free_huge_folio() of the VM's folio: a poisoned one is dissolved (its raw pages keep
   PG_hwpoison), a clean one goes back to the pool; a spare goes back to the pool */
inline free_folio(v) {
  if
  :: bk[v] == OWN && FRAME_HWP(v) -> fst[v] = 3
  :: bk[v] == OWN && !FRAME_HWP(v) -> fst[v] = 1; frame_free(v)
  :: bk[v] == SPARE -> spare_free()
  :: else -> skip
  fi;
  bk[v] = 0
}
/* alloc_hugetlb_folio() (hugetlb_no_page, hugetlbfs_fallocate): dequeue_hugetlb_folio, the
   free list's head, the folio freed last (take_head, promela.frame_slots); a dissolved frame
   is gone */
inline alloc(v) {
  take_head(v);
  if
  :: fs == 1 -> fst[v] = 0; bk[v] = OWN
  :: fs == 2 -> nspare--; bk[v] = SPARE
  :: else -> skip
  fi;
  fs = 0
}
/* the VMM exits (QEMU exit(1), or a fatal SIGBUS): exit_mmap, the memfd's last reference
   goes, remove_inode_hugepages frees the folio; KVM's stage 2 goes with the VM */
inline kill_vm(v) {
  zap_vm(v); pte[v] = 0; vst[v] = 2; alive[v] = 0; free_folio(v)
}
/* guest_on_mce(): the guest offlines the page; on AO its user is killed on access */
inline guest_mce(v, p, ao) {
  if
  :: GIGN(v) -> skip
  :: else -> goff[p] = 1; if :: ao -> gpk[p] = 1 :: else -> skip fi
  fi
}
/* a memory-failure SIGBUS the VMM's main thread does not survive (kvm_on_sigbus: AR aborts) */
inline sigbus_kill(v) {
  if :: !affected[v] -> m_wrong = 1; m_down = 1 :: else -> skip fi;
  kill_vm(v)
}
/* a memory-failure SIGBUS (AO, ao = 1, or AR) to VM v's VMM by its disposition (VMM_SIG,
   promela.sigbus_defines): QEMU's handler injects a vMCE; the default action kills the VMM;
   SIG_IGN drops a signal that is not forced (send_sig_mceerr: kill_procs' AO,
   kvm_send_hwpoison_signal's AR) and dies of a forced one (force_sig_mceerr resets it) */
inline vmm_sig(v, p, ao, forced) {
  if
  :: VMM_SIG(v) == SIG_HANDLER -> guest_mce(v, p, ao)
  :: VMM_SIG(v) == SIG_IGNORE && !forced -> skip
  :: else -> sigbus_kill(v)
  fi
}
/* kill_procs() with BUS_MCEERR_AR to current (a thread of the VMM): its address is the
   VMM's one mapping of the file, the memslot's (QEMU injects a vMCE: kvm_arch_on_sigbus_vcpu) */
inline ar_first(v, p) {
  if
  :: !alive[v] -> skip
  :: else -> vmm_sig(v, p, 0, 1)
  fi
}
/* memory_failure(pfn, 0) (scrub, GHES, a machine-check-safe kernel copy): the HugeTLB path.
   A frame no longer in use is a free (or dissolved) huge page: marked, dissolved. In use: a
   new raw page of a poisoned folio joins its raw list (-EHWPOISON, nobody told); a first
   failure sets PG_hwpoison, hwpoison_user_mappings() collects the VMM's EARLY thread while the
   folio is mapped, try_to_unmap() leaves a hwpoison entry, the MMU notifier zaps stage 2 and
   kill_procs() sends BUS_MCEERR_AO to the EARLY thread (QEMU's vMCE) */
inline mf_ao(v, p, probe) {
  if :: HELD(v) -> affected[v] = 1 :: else -> skip fi;
  mr = det[p]; det[p] = 1;
  if
  :: bk[v] != OWN -> hwp[p] = 1; if :: fst[v] == 1 -> dissolve_free(v) :: else -> skip fi
  :: bk[v] == OWN && FRAME_HWP(v) -> hwp[p] = 1
  :: else ->
     hwp[p] = 1;
     if
     :: pte[v] == 1 && alive[v] ->
          pte[v] = 2; zap_vm(v);
          if :: VM_EARLY(v) -> vmm_sig(v, p, 1, 0) :: else -> skip fi
     :: else ->
          if :: probe && !mr && VM_EARLY(v) && HELD(v) -> m_untold = 1 :: else -> skip fi
     fi
  fi
}
/* kill_me_maybe() (R46): memory_failure(pfn, MF_ACTION_REQUIRED). An already poisoned folio
   (-EHWPOISON): kill_accessing_process() finds the hwpoison entry in current's page tables
   and sends AR at the memslot's address (QEMU's vMCE); a first failure unmaps and signals
   current at the first mapping (ar_first) */
inline kmm(v, p) {
  ko = (bk[v] == OWN);
  if :: HELD(v) -> affected[v] = 1 :: else -> skip fi;
  det[p] = 1;
  if
  :: !ko -> hwp[p] = 1; if :: fst[v] == 1 -> dissolve_free(v) :: else -> skip fi
  :: ko && FRAME_HWP(v) -> hwp[p] = 1; if :: pte[v] == 2 && alive[v] -> vmm_sig(v, p, 0, 1) :: else -> skip fi
  :: else ->
     hwp[p] = 1;
     if :: pte[v] == 1 -> pte[v] = 2 :: else -> skip fi;
     zap_vm(v);
     ar_first(v, p)
  fi
}
inline ev_hw_error(v, p, scrub) {
  err[p] = 1; if :: HELD(v) -> affected[v] = 1 :: else -> skip fi;
  if :: scrub -> mf_ao(v, p, 1) :: else -> skip fi
}
inline ev_scrub(v, p) {
  if :: err[p] -> mf_ao(v, p, 1) :: else -> skip fi
}
/* hugetlb_fault() through the VMM's mapping: no page -> hugetlb_no_page allocates (none:
   VM_FAULT_OOM); a poisoned folio in the page cache (CACHED_HWP: hugetlbfs_fallocate() put it
   there and nobody mapped it when it failed) is VM_FAULT_HWPOISON_LARGE, nothing mapped */
#define CACHED_HWP(v) (bk[v] == OWN && FRAME_HWP(v))
inline hfault(v) {
  if :: bk[v] == 0 -> alloc(v) :: else -> skip fi;
  if :: bk[v] != 0 && !CACHED_HWP(v) -> pte[v] = 1 :: else -> skip fi
}
/* kvm_mmu_faultin_pfn() -> hva_to_pfn() for a vCPU without an SPTE: a hwpoison entry is
   KVM_PFN_ERR_HWPOISON, kvm_send_hwpoison_signal(): SIGBUS AR at the memslot's address, QEMU's
   vMCE (fo: the fault failed); a missing page is faulted in (hugetlb_fault); none to allocate
   fails the fault: KVM_RUN -EFAULT with a memory-fault exit, which QEMU takes for a conversion
   request (qemu_kvm_run_failed: the VM runs on); the HugeTLB page is mapped in stage 2 at its
   size */
inline faultin(v, p) {
  fo = 0;
  if
  :: pte[v] == 2 || (pte[v] == 0 && CACHED_HWP(v)) -> vmm_sig(v, p, 0, 0); fo = 1
  :: else ->
     if :: pte[v] == 0 -> hfault(v) :: else -> skip fi;
     if :: pte[v] == 1 -> map_spte(v, p) :: else -> fo = 1 fi
  fi
}
""" + MCE_INLINES + r"""/* do_guest_access() (KVM_RUN), as promela.py's ev_vcpu: round 0 the pending task work, rounds
   1-3 the tries of the SPTE or faultin() and the load */
inline ev_vcpu(v, p, i) {
  if
  :: vst[v] != 0 || !alive[v] -> skip
  :: gpk[p] -> gpk[p] = 0
  :: !gpk[p] && goff[p] -> skip
  :: else ->
     rn = 0; ag = 1;
     do
     :: ag && rn <= 3 ->
        if
        :: rn == 0 -> fo = 1
        :: else ->
           fo = 0;
           if :: !SPTE(v, p) -> faultin(v, p) :: else -> skip fi;
           if
           :: !fo && bk[v] == OWN && err[p] -> mc(v, p, i); fo = 1
           :: else -> skip
           fi
        fi;
        if :: fo -> tw_run(v, i) :: else -> skip fi;
        ag = fo && alive[v] && vst[v] == 0 && !panic && (rn == 0 || !goff[p]);
        rn++
     :: else -> break
     od
  fi
}
/* vcpu_mce: a vCPU takes the machine check through its SPTE now, after its queued task work */
inline ev_vcpu_mce(v, p, i) {
  tw_run(v, i);
  if
  :: vst[v] == 0 && alive[v] && !panic && SPTE(v, p) && bk[v] == OWN && err[p] -> mc(v, p, i)
  :: else -> skip
  fi
}
/* do_guest_run() (vmm/guest.py), as promela.py's guest_run */
#define GRUN(v) (vst[v] == 0 && alive[v] && !panic)
inline guest_run(v, p, lo, hi, rounds, stop) {
  gr = 1; rn = 0;
  do
  :: gr && rn < rounds && GRUN(v) && !goff[p] && !gpk[p] ->
       rn++; rc = 0; ph = 1; vi = lo;
       do
       :: vi > hi && ph < 3 -> ph++; vi = lo
       :: vi > hi && ph == 3 -> break
       :: vi <= hi && ph != 2 ->
            if
            :: (ph == 1 && GRUN(v)) || (ph == 3 && (rc & (1 << vi))) -> tw_run(v, vi)
            :: else -> skip
            fi; vi++
       :: vi <= hi && ph == 2 ->
            if
            :: GRUN(v) && !goff[p] -> fo = 0;
                 if :: !SPTE(v, p) -> faultin(v, p) :: else -> skip fi;
                 if :: !fo && bk[v] == OWN && err[p] -> mc(v, p, vi); rc = rc | (1 << vi)
                 :: else -> skip fi
            :: else -> skip
            fi; vi++
       od;
       if
       :: stop == 0 || (stop == 1 && rc == 0) -> gr = 0
       :: else -> skip
       fi
  :: else -> break
  od
}
/* the VMM's main thread loads (or stores) through the memslot's mapping: a hwpoison entry is
   SIGBUS AR (x86 do_sigbus, R40) QEMU's main thread does not survive; a missing page is
   faulted in (hugetlb_fault); a consumed error is kill_me_maybe() with current the main
   thread, whose SIGBUS it does not survive either */
inline ev_vmm(v, p, wr) {
  if
  :: !alive[v] || vst[v] == 3 -> skip
  :: pte[v] == 2 || (pte[v] == 0 && CACHED_HWP(v)) -> sigbus_kill(v)
  :: else ->
     if :: pte[v] == 0 -> hfault(v) :: else -> skip fi;
     if
     :: pte[v] == 0 -> kill_vm(v)   /* no huge page: VM_FAULT_SIGBUS, BUS_ADRERR (not counted) */
     :: pte[v] == 1 && bk[v] == OWN && err[p] && !wr ->
        affected[v] = 1;
        consume(p);   /* the monitor's window, as for a vCPU's load (MCE_INLINES) */
        det[p] = 1;
        if
        :: FRAME_HWP(v) -> hwp[p] = 1
        :: else -> hwp[p] = 1; pte[v] = 2; zap_vm(v)
        fi;
        sigbus_kill(v)
     :: else -> skip
     fi
  fi
}
/* do_kernel_access() for one user of the inventory: hva users go through the memslot's
   mapping (a hwpoison entry stops the uaccess, a missing page is faulted in), pfn users read
   the page behind its PTE (none: not reached); kq 1 the VM's own frame, 2 another (no error).
   chk 1 (flag): PG_hwpoison of the page or its folio; 2 (raw-flag): the struct page's own,
   set on the head of an in-use poisoned folio. A machine check in the copy panics (R47) or
   calls memory_failure(pfn, 0) (copyin, R3) */
inline ev_kacc(v, p, head, hva, chk, rcv) {
  kq = 0;
  if
  :: !alive[v] || vst[v] == 3 -> skip
  :: hva && pte[v] == 1 -> kq = (bk[v] == OWN -> 1 : 2)
  :: hva && pte[v] == 0 -> hfault(v); if :: pte[v] == 1 -> kq = (bk[v] == OWN -> 1 : 2) :: else -> skip fi
  :: !hva && pte[v] != 0 -> kq = (bk[v] == OWN -> 1 : 2)
  :: else -> skip
  fi;
  if
  :: kq == 1 && chk == 1 && FRAME_HWP(v) -> kq = 0
  :: kq == 1 && chk == 2 && head && FRAME_HWP(v) -> kq = 0
  :: else -> skip
  fi;
  if
  :: kq == 1 && err[p] && rcv == 0 -> panic = 1; if :: det[p] -> m_panic = 1 :: else -> skip fi;
     affected[v] = 1
  :: kq == 1 && err[p] && rcv == 1 -> mf_ao(v, p, 0)
  :: else -> skip
  fi;
  kq = 0
}
/* the VMM's memfd fd is open (fallocate() through it gets past fdget()) */
#define FD_OPEN(v) (alive[v] && vst[v] != 3 && !clo[v])
/* hugetlbfs_punch_hole() through the VMM's fd (none once it is closed): hugetlb_vmdelete_list() unmaps the range from
   every mapping (hwpoison entries too), the MMU notifier zaps stage 2, the folio is freed */
inline ev_punch(v) {
  if
  :: FD_OPEN(v) -> pte[v] = 0; zap_vm(v); free_folio(v)
  :: else -> skip
  fi
}
/* fallocate(ALLOCATE) through the VMM's fd: hugetlbfs_fallocate() rounds the range out to
   the huge page; a page already in the page cache (poisoned or not) is kept, else a huge folio
   is allocated from the pool into the page cache, unmapped (alloc_hugetlb_folio: none free is
   -ENOSPC, nothing changes). Through a VMM that has exited or closed the fd: nothing */
inline ev_realloc(v) {
  if
  :: FD_OPEN(v) && bk[v] == 0 -> alloc(v)
  :: else -> skip
  fi
}
/* munmap of the memslot's mapping (the VMM's only one), close, vm_destroy: nothing holds the
   memfd any more, its inode is evicted (hugetlbfs_evict_inode -> remove_inode_hugepages) and
   the folio freed (free_folio); vm_destroy also after the VMM died */
inline ev_release(v) {
  pte[v] = 0; zap_vm(v); vst[v] = 3; free_folio(v)
}
/* close() of the VMM's memfd fd (the close event): the VMM's mapping (its vm_file) still holds
   the file, so nothing is freed and the VM runs on; where the mapping is gone already
   (release.munmap ran, --races) this was the last reference: hugetlbfs_evict_inode ->
   remove_inode_hugepages frees the folio. fallocate() through the fd (punch hole, realloc)
   does nothing after it. A VMM that died or a VM released has no fd to close */
inline ev_close(v) {
  if
  :: FD_OPEN(v) -> clo[v] = 1; if :: unm[v] -> free_folio(v) :: else -> skip fi
  :: else -> skip
  fi
}
"""


# --------------------------------------------------------------------------- --races

# The atomic model's tests, with the states between a release's stages (--races only): after
# release.munmap the VMM's mapping is gone (``unm``: a vCPU's stage-2 fault finds no VMA,
# hva_to_pfn fails, -EFAULT; the VMM and kernel users reach nothing through it), after
# release.close the fd is closed (``clo``, which the atomic model has for the close event:
# fallocate through it does nothing).
RACES_PATCHES = (
    (":: pte[v] == 2 || (pte[v] == 0 && CACHED_HWP(v)) -> vmm_sig(v, p, 0, 0); fo = 1",
     ":: !unm[v] && (pte[v] == 2 || (pte[v] == 0 && CACHED_HWP(v))) -> "
     "vmm_sig(v, p, 0, 0); fo = 1"),
    ("if :: pte[v] == 0 -> hfault(v) :: else -> skip fi;\n     if :: pte[v] == 1 -> map_spte",
     "if :: pte[v] == 0 && !unm[v] -> hfault(v) :: else -> skip fi;\n"
     "     if :: pte[v] == 1 -> map_spte"),
    (":: !alive[v] || vst[v] == 3 -> skip", ":: !alive[v] || vst[v] == 3 || unm[v] -> skip"),
)


def _race_ops(system: Any, labels: list[Any]) -> list[Any]:
    """The labels ``races.first_stage`` splits under backing hugetlbfs: ``release`` (the
    munmap, close and vm_destroy actions, one per stage) and ``convert`` (convert.attributes,
    convert.folios). Nothing else is split: the policy claims no folio (no guest_memfd), so
    memory_failure(), stage-2 faults, host faults and punch hole run as one step."""
    from memfail.check import races
    from memfail.check.spin.stages import NEXT, Op, _chain

    cfg = system.config
    vms = [v.name for v in cfg.vms]
    npg = 1 << frame_order(system)
    ops = []
    for k, label in enumerate(labels):
        kind, p = label[0], dict(label[1])
        v = vms.index(p["vm"])
        if kind == "convert":
            if converts_at_once(cfg, p):
                continue
            first, split = "convert.attributes", convert_splits(v)
        elif kind == "release":
            specs = system._specs(label)
            if len(specs) < 2 or not all(key in races.RELEASE_STAGES for key, _ in specs):
                continue
            first, split = races.RELEASE_STAGES[specs[0][0]], "1"
        else:
            continue
        chain = _chain(first)
        waits = [s for s in chain if any(s in NEXT[t] for t in chain)]
        ops.append(Op(k, label, v, v * npg, first, split, waits))
    return ops


def _race_body(system: Any, op: Any, stage: str, vms: list[str], npg: int) -> str:
    """What ``races.run_stage`` does for ``stage`` of ``op`` under backing hugetlbfs."""
    from memfail.check import races
    from memfail.check.spin.stages import CODE

    v, st = op.v, f"st_{op.k}"

    def goto(nxt: str | None) -> str:
        return f"{st} = {CODE[nxt] if nxt else 0}"

    if stage == "convert.attributes":  # convert_begin: zap_gfn_range, the PRIVATE attribute
        return f"{_call(system.config, op.label, vms, npg)}; {goto('convert.folios')}"
    if stage == "convert.folios":  # convert_end: gmem_convert of no guest_memfd slot
        return goto(None)
    keys = [key for key, _ in system._specs(op.label)]
    name = {s: key for key, s in races.RELEASE_STAGES.items()}[stage]
    i = keys.index(name)
    nxt = races.RELEASE_STAGES[keys[i + 1]] if i + 1 < len(keys) else None
    act = {
        # do_munmap: unmap_vma, the MMU notifier zaps stage 2; the fd still holds the memfd
        # (after a close event the mapping was the memfd's last reference: the folio is freed)
        "munmap": f"if :: alive[{v}] -> pte[{v}] = 0; zap_vm({v}); unm[{v}] = 1; "
                  f"if :: clo[{v}] -> free_folio({v}) :: else -> skip fi :: else -> skip fi",
        # close: the memfd's last reference, hugetlbfs_evict_inode -> remove_inode_hugepages
        "close": f"if :: alive[{v}] -> clo[{v}] = 1; free_folio({v}) :: else -> skip fi",
        # do_vm_destroy: stage 2 dropped, the VM destroyed
        "vm_destroy": f"zap_vm({v}); vst[{v}] = 3",
    }[name]
    return f"{act}; {goto(nxt)}"


def render_races(system: Any) -> Any:
    """``memfail check --engine spin --races`` for backing hugetlbfs: the atomic model of
    ``render`` with release and convert split into the stages of ``races.STAGES``, lock
    guards from ``races.STAGES``/``races.ATOMIC_NEEDS`` (stages.py's machinery) and
    continuation labels after the alphabet, so a trail's steps are ``stage`` steps."""
    from memfail.check import races
    from memfail.check.spin.stages import CODE, RacesRendered, _lock_expr, _waits_expr

    base = render(system)
    cfg = system.config
    labels = list(base.labels)
    vms = [v.name for v in cfg.vms]
    npg = 1 << frame_order(system)
    ops = _race_ops(system, labels)
    # no op in flight holds mf_mutex or the folio lock: memory_failure() never waits here
    assert all(_waits_expr(ops, op.k) == "0" for op in ops)
    head = base.text[:base.text.index("#ifndef REPLAY")]
    for old, new in RACES_PATCHES:
        assert old in head, f"the atomic hugetlbfs model changed: {old!r}"
        head = head.replace(old, new)
    decl = ["/* --races: ops in flight (hugetlbfs.py render_races) */",
            *(f"byte st_{op.k};" for op in ops)]
    lines = head.split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith("bit panic;"))
    lines[at:at] = decl
    out = ["\n".join(lines)]
    by_k = {op.k: op for op in ops}
    trans: list[tuple[str, str, int]] = []
    for k, label in enumerate(labels):
        guard, count = _guard(system, label)
        op = by_k.get(k)
        atomic = races.ATOMIC_NEEDS[label[0]]
        # races.fallocate_fails_early: fallocate through a fd that is not open takes no lock
        free = f"!FD_OPEN({vms.index(dict(label[1])['vm'])})" \
            if label[0] in ("punch_hole", "realloc") else "0"
        if op is None:
            trans.append((f"{guard} && ({free} || !{_lock_expr(ops, atomic, k)})",
                          f"{count}step_{k}()", k))
            continue
        first = races.STAGES[op.first].needs
        g = (f"{guard} && st_{k} == 0 && ((({op.split}) && !{_lock_expr(ops, first, k)}) || "
             f"(!({op.split}) && !{_lock_expr(ops, atomic, k)}))")
        body = (f"{count}if :: ({op.split}) -> "
                f"{_race_body(system, op, op.first, vms, npg)} :: else -> step_{k}() fi")
        trans.append((g, body, k))
    conts: list[Any] = []
    for op in ops:
        for s in op.waits:
            g = f"!panic && st_{op.k} == {CODE[s]} && !{_lock_expr(ops, races.STAGES[s].needs, op.k)}"
            trans.append((g, _race_body(system, op, s, vms, npg), op.k))
            conts.append(races.continuation(op.label, s))
    for K, (g, body, me) in enumerate(trans):
        clear = f"if :: panic -> st_{me} = 0 :: else -> skip fi; " if me in by_k else ""
        out.append(f"#define G_{K} ({g})\ninline tr_{K}() {{ {body}; {clear}RESET_SCRATCH }}")
    out += checker_proctype([(f"G_{K}", f"tr_{K}()") for K in range(len(trans))])
    return RacesRendered("\n".join(out) + "\n", labels + conts, base.props, nbase=len(labels))
