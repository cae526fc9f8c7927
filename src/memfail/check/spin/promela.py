"""Render a check configuration and a policy into Promela for SPIN.

The model (docs/check.md, "The SPIN engine") keeps, per page of guest memory: whether its frame
still backs the VM (``held``, per VM: one HugeTLB folio holds all of a VM's pages), the hardware
error (``err``), whether memory_failure() was called on it (``det``), whether the kernel still
records it (``rec``; ``tab`` for the policy's table), the VMM's host PTE (0 none, 1 present,
2 hwpoison entry), the stage-2 SPTE, how often the poison was consumed (``cons``, capped at 2)
and the guest's view (``goff``: offlined by the guest after a vMCE, ``gpk``: its user will be
killed on access); per VM the KVM state, whether the VMM lives and whether the guest_memfd was
made unusable; the panic flag and the monitor bits of the properties.

It drops: data values, frames other than the VMs' own (HugeTLB pool, buddy), allocation of new
folios after a punch hole or release (a freed VM's accesses then find no memory), SIGBUS
queueing per thread beyond "told", vmm_access host faults, conversion, realloc and the escape
hatch (refused, ``Unsupported``).

What is generated and not written by hand: the policy's knobs (``#define`` per knob from
``GmemPolicy.knobs()`` and ``knob_values``), one Promela transition per label of the
configuration's alphabet (``ModelSystem.entries``: the event table of check/events.py with
its ``limit``s and the ``bounds.errors`` cap), and one assertion expression per property of
check/properties.py (``PROP_EXPR``; every property must have one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memfail.check.properties import PROPERTIES
from memfail.check.spin.observe import PAGE_FIELDS, pages_of
from memfail.model.policy.base import knob_values
from memfail.model.policy.registry import make_policy

# Event kinds the Promela model carries out (the rest are refused).
SUPPORTED = ("hw_error", "scrub", "vcpu_access", "kernel_access", "punch_hole", "release")

# One Promela expression per property, over the model's globals (generated into `prop_k`).
PROP_EXPR: dict[str, str] = {
    "no-host-panic": "m_panic",
    "no-poison-reuse": "m_reuse",
    "contained": "ANY_CONS2",
    "sigbus-owner-only": "m_wrong",
    "early-told": "m_untold",
    "no-record-lost": "ANY_LOST",
    "hugetlb-counters": "m_counters",
    "unaffected-vms-run": "m_down",
}


class Unsupported(ValueError):
    """The configuration uses something the Promela model does not carry out."""


@dataclass
class Rendered:
    text: str                       # the Promela model
    labels: list[Any]               # label index -> label (the alphabet, in order)
    props: list[str]                # property index -> name (PROPERTIES order)


def _ident(s: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in str(s)).upper()


def knob_defines(policy: Any) -> list[str]:
    """``#define`` lines for every knob of the policy: each allowed value gets a constant
    (``K_UNMAP_STAGE2_FOLIO``) and the knob its value (``unmap_stage2``)."""
    out = []
    for name, value in policy.knobs().items():
        values = knob_values(name) or (value,)
        for i, v in enumerate(values):
            out.append(f"#define K_{_ident(name)}_{_ident(v)} {i}")
        out.append(f"#define {name} {values.index(value)}")
    return out


def check_supported(system: Any) -> None:
    cfg = system.config
    policy = make_policy(system.policy) if system.policy else None
    if policy is not None and policy.backing != "gmem":
        raise Unsupported(f"policy {system.policy!r}: the SPIN engine models guest_memfd "
                          "backing only (backing: hugetlbfs is not modelled)")
    for vm in cfg.vms:
        g = next((g for g in cfg.guest_memfd if g.name == vm.gmem), None)
        if g is None or g.backing != "2M" or "mmap" not in g.flags or \
                "init_shared" not in g.flags:
            raise Unsupported(f"vm {vm.name}: the SPIN engine models VMs on a guest_memfd "
                              "with backing 2M and flags [mmap, init_shared]")
        if pages_of(system, vm.name) != 1 << cfg.geometry.pmd_order:
            raise Unsupported(f"vm {vm.name}: the SPIN engine models one huge folio per VM "
                              "(guest_memfd size 2M)")
        if vm.type not in ("default", "sw-protected"):
            raise Unsupported(f"vm {vm.name}: type {vm.type} is not modelled by the SPIN engine")
    if cfg.setup:
        raise Unsupported("setup steps are not modelled by the SPIN engine")
    for _i, label in system.entries:
        if label[0] not in SUPPORTED:
            raise Unsupported(f"event {label[0]!r} is not modelled by the SPIN engine "
                              f"(it models {', '.join(SUPPORTED)})")
        p = dict(label[1])
        if label[0] == "vcpu_access" and p.get("write"):
            raise Unsupported("vcpu_access with write: true is not modelled by the SPIN engine")
        if label[0] == "punch_hole" and (p["page"] != 0 or
                                         p["pages"] != pages_of(system, p["vm"])):
            raise Unsupported("punch_hole must cover the VM's whole memory in the SPIN engine")
    for proc in cfg.processes:
        if proc.sigbus != "handler":
            raise Unsupported(f"process {proc.name}: the SPIN engine models VMMs with a "
                              "SIGBUS handler (QEMU)")


def render(system: Any) -> Rendered:
    """The Promela text of ``system`` (a ModelSystem, whose alphabet it uses)."""
    check_supported(system)
    cfg = system.config
    policy = make_policy(system.policy) if system.policy else make_policy("mainline")
    vms = [v.name for v in cfg.vms]
    npg = 1 << cfg.geometry.pmd_order
    early = {v.name: bool(system.ctx.early.get(v.vmm)) for v in cfg.vms}
    leader_early = {}
    for v in cfg.vms:
        proc = next(p for p in cfg.processes if p.name == v.vmm)
        leader_early[v.name] = proc.mce_kill.get(proc.threads[0]) == "early"
    labels = [label for _i, label in system.entries]
    lines = ["/* memfail check --engine spin: generated, do not edit */"]
    lines += knob_defines(policy)
    lines += [
        f"#define NV {len(vms)}",
        f"#define NPG {npg}",
        f"#define NP {len(vms) * npg}",
        f"#define MAXERR {cfg.bounds.errors}",
        "#define CLAIMED (handles != K_HANDLES_NONE)",
    ]
    for v in vms:
        lines.append(f"#define EARLY_{_ident(v)} {int(early[v])}")
    lines += [
        "bit err[NP]; bit det[NP]; bit rec[NP]; bit tab[NP]; byte pte[NP]; bit spte[NP];",
        "byte cons[NP]; bit goff[NP]; bit gpk[NP];",
        "byte vst[NV]; bit alive[NV]; bit held[NV]; bit unusable[NV];",
        "bit panic; bit m_panic; bit m_reuse; bit m_wrong; bit m_untold; bit m_counters;",
        "bit m_down;",
        f"byte cnt[{max(1, len(cfg.events))}]; byte nerr;",
    ]
    any_cons = " || ".join(f"cons[{p}] >= 2" for p in range(len(vms) * npg)) or "0"
    any_lost = " || ".join(f"(det[{p}] && err[{p}] && !rec[{p}])"
                           for p in range(len(vms) * npg)) or "0"
    lines += [f"#define ANY_CONS2 ({any_cons})", f"#define ANY_LOST ({any_lost})"]
    missing = [p.name for p in PROPERTIES if p.name not in PROP_EXPR]
    if missing:
        raise Unsupported(f"no Promela rendering of propert{'ies' if len(missing) > 1 else 'y'} "
                          f"{', '.join(missing)}")
    props = [p.name for p in PROPERTIES]
    for k, name in enumerate(props):
        lines.append(f"#define prop_{k} ({PROP_EXPR[name]})  /* {name} */")
    lines.append("#ifndef CHECK\n#define CHECK 0\n#endif")
    viol = " || ".join(f"((((CHECK >> {k}) & 1) == 1) && prop_{k})" for k in range(len(props)))
    lines.append(f"#define VIOLATED ({viol})")
    lines.append(_foreach(SEMANTICS, npg))
    # observation printer, in observe.layout order
    fmt, args = [], []
    for vi in range(len(vms)):
        for pg in range(npg):
            p = vi * npg + pg
            for f in PAGE_FIELDS:
                fmt.append("%d")
                args.append(f"held[{vi}]" if f == "held" else f"{f}[{p}]")
        fmt += ["%d", "%d"]
        args += [f"vst[{vi}]", f"alive[{vi}]"]
    fmt.append("%d")
    args.append("panic")
    for k in range(len(props)):
        fmt.append("%d")
        args.append(f"prop_{k}")
    lines.append(f'inline observe() {{ printf("MF_OBS {" ".join(fmt)}\\n", '
                 f'{", ".join(args)}) }}')
    # one inline per label
    for k, label in enumerate(labels):
        lines.append(f"inline step_{k}() {{ {_call(cfg, label, vms, npg, early)} }}")
    guards = []
    for k, label in enumerate(labels):
        i = system._entry_of[label]
        spec = cfg.events[i]
        g = ["!panic"]
        if spec.limit is not None:
            g.append(f"cnt[{i}] < {spec.limit}")
        if label[0] == "hw_error":
            g.append("nerr < MAXERR")
        count = (f"cnt[{i}]++; " if spec.limit is not None else "") + \
            ("nerr++; " if label[0] == "hw_error" else "")
        guards.append((k, " && ".join(g), count))
    lines.append("inline init_state() {")
    lines.append("  " + "; ".join(f"spte[{i}] = 1" for i in range(len(vms) * npg)) + ";")
    lines.append("  " + "; ".join(f"alive[{i}] = 1; held[{i}] = 1" for i in range(len(vms))))
    lines.append("}")
    lines.append("#ifndef REPLAY")
    lines.append("active proctype checker() {\n  d_step { init_state() };\n  do")
    for k, g, count in guards:
        lines.append(f"  :: d_step {{ {g} -> {count}step_{k}(); q = 0; r = 0; "
                     f'printf("MF_STEP {k}\\n"); observe(); assert(!VIOLATED) }}')
    lines.append("  od\n}")
    lines.append("#endif")
    text = "\n".join(lines) + "\n"
    return Rendered(text, labels, props)


def replay_text(rendered: Rendered, system: Any, seq: list[int]) -> str:
    """A Promela model that carries out exactly the labels ``seq`` (indices into
    ``rendered.labels``) in order, printing the observation after each; a label that is not
    enabled prints ``MF_BLOCKED k`` and stops."""
    cfg = system.config
    body = ["#define REPLAY 1", rendered.text, "init {", "  d_step { init_state() };",
            '  observe();']
    for k in seq:
        label = rendered.labels[k]
        i = system._entry_of[label]
        spec = cfg.events[i]
        g = ["!panic"]
        if spec.limit is not None:
            g.append(f"cnt[{i}] < {spec.limit}")
        if label[0] == "hw_error":
            g.append("nerr < MAXERR")
        count = (f"cnt[{i}]++; " if spec.limit is not None else "") + \
            ("nerr++; " if label[0] == "hw_error" else "")
        body.append(f"  if :: {' && '.join(g)} -> d_step {{ {count}step_{k}(); q = 0; r = 0 }}; "
                    f'printf("MF_STEP {k}\\n"); observe()')
        body.append(f'     :: else -> printf("MF_BLOCKED {k}\\n"); goto done fi;')
    body += ["done: skip", "}"]
    return "\n".join(body) + "\n"


def _foreach(text: str, npg: int) -> str:
    """Unroll ``FOREACH(stmt)`` over the pages of VM ``v``'s folio (``Q`` is the page)."""
    out, at = [], 0
    while (i := text.find("FOREACH(", at)) >= 0:
        depth, j = 0, i + len("FOREACH")
        while True:
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            if depth == 0:
                break
            j += 1
        stmt = text[i + len("FOREACH("):j]
        out.append(text[at:i])
        out.append("; ".join(stmt.replace("Q", f"(v) * NPG + {k}") for k in range(npg)))
        at = j + 1
    out.append(text[at:])
    return "".join(out)


def _call(cfg: Any, label: Any, vms: list[str], npg: int, early: dict[str, bool]) -> str:
    p = dict(label[1])
    kind = label[0]
    v = vms.index(p["vm"]) if "vm" in p else 0
    if kind == "hw_error":
        return f"ev_hw_error({v}, {v * npg + p['page']}, {int(p['detect'] != 'latent')}, " \
               f"{int(early[p['vm']])})"
    if kind == "scrub":
        return f"ev_scrub({v}, {v * npg + p['page']}, {int(early[p['vm']])})"
    if kind == "vcpu_access":
        return f"ev_vcpu({v}, {v * npg + p['page']})"
    if kind == "kernel_access":
        return f"ev_kernel({v}, {v * npg + p['page']}, {int(p['checks_hwpoison'])}, " \
               f"{int(p['mc_safe'])})"
    if kind == "punch_hole":
        return f"ev_punch({v})"
    if kind == "release":
        return f"ev_release({v})"
    raise Unsupported(kind)


# The paths, as branches on the knobs. Function names are the kernel's / the model's
# (src/memfail/model/kvm/gmem.py, kvm.py, vmm/qemu.py).
SEMANTICS = r"""
byte q; byte r;
/* zap stage 2 of a whole VM (zap_gfn_range over everything) */
inline zap_vm(v) { FOREACH(spte[Q] = 0) }
/* kill_vm(): zap stage 2, VM killed, VMM SIGKILLed: its files go, the folio is freed */
inline free_folio(v) {
  held[v] = 0; zap_vm(v);
  FOREACH(pte[Q] = 0);
  /* mainline: the folio's flag goes with the folio */
  if :: !CLAIMED -> FOREACH(rec[Q] = 0) :: else -> skip fi
}
inline kill_vm(v) { zap_vm(v); vst[v] = 2; alive[v] = 0; free_folio(v) }
/* guest_on_mce(): the guest offlines the page; on AO its user is killed on access */
inline guest_mce(p, ao) { goff[p] = 1; if :: ao -> gpk[p] = 1 :: else -> skip fi }
/* policy_memory_failure() (claimed folios) and the HugeTLB path (mainline), AO or AR */
inline mf(v, p, ar, ao_probe, early) {
  r = det[p];
  det[p] = 1;
  if
  :: !held[v] -> rec[p] = 1     /* a free huge page: PG_hwpoison on the free folio */
  :: held[v] && CLAIMED ->
       rec[p] = 1; tab[p] = 1;
       if
       :: unmap_stage2 == K_UNMAP_STAGE2_SUBPAGE -> spte[p] = 0
       :: unmap_stage2 == K_UNMAP_STAGE2_FOLIO || unmap_stage2 == K_UNMAP_STAGE2_VM -> zap_vm(v)
       :: else -> skip
       fi;
       if
       :: unmap_host == K_UNMAP_HOST_SUBPAGE -> if :: pte[p] == 1 -> pte[p] = 2 :: else -> skip fi
       :: unmap_host == K_UNMAP_HOST_FOLIO ->
            FOREACH(if :: pte[Q] == 1 -> pte[Q] = 2 :: else -> skip fi)
       :: else -> skip
       fi;
       if
       :: vm_on_error == K_VM_ON_ERROR_KILL && alive[v] -> kill_vm(v)
       :: vm_on_error == K_VM_ON_ERROR_UNUSABLE -> unusable[v] = 1; zap_vm(v)
       :: else -> skip
       fi;
       if
       :: !ar && unconsumed == K_UNCONSUMED_NOTIFY_VMM && alive[v] ->
            guest_mce(p, 1)
       :: !ar && ao_probe && !r && early -> m_untold = 1
       :: else -> skip
       fi
  :: held[v] && !CLAIMED ->
       rec[p] = 1;
       if :: !ar && ao_probe && !r && early -> m_untold = 1 :: else -> skip fi
  fi
}
inline ev_hw_error(v, p, scrub, early) {
  err[p] = 1;
  if :: scrub && !det[p] -> mf(v, p, 0, 1, early) :: else -> skip fi
}
inline ev_scrub(v, p, early) {
  if :: err[p] && !det[p] -> mf(v, p, 0, 1, early) :: else -> skip fi
}
inline failed_in(v, p) {
  if
  :: check_granularity == K_CHECK_GRANULARITY_SUBPAGE && CLAIMED -> r = rec[p]
  :: else ->
     r = 0; FOREACH(r = r || rec[Q])
  fi
}
/* guest_access() through KVM_RUN: SPTE or faultin() (kvm_gmem_get_pfn), then the load */
inline ev_vcpu(v, p) {
  if
  :: vst[v] != 0 || !alive[v] -> skip
  :: else ->
     if
     :: gpk[p] -> gpk[p] = 0
     :: !gpk[p] && goff[p] -> skip
     :: else ->
        if
        :: !spte[p] && !held[v] -> skip   /* no memory bound any more */
        :: !spte[p] && held[v] && unusable[v] -> vst[v] = 1
        :: !spte[p] && held[v] && !unusable[v] && (fault_check == K_FAULT_CHECK_TRUE || !CLAIMED) ->
             failed_in(v, p);
             if
             :: r -> vst[v] = 1       /* -EHWPOISON: QEMU "kvm run failed", paused */
             :: else -> spte[p] = 1; if :: err[p] -> consume(v, p) :: else -> skip fi
             fi
        :: else ->
           spte[p] = 1;
           if
           :: err[p] -> consume(v, p)
           :: else -> skip
           fi
        fi
     fi
  fi
}
/* the fault check (_failed_in): the folio or the subpage, in the table or PG_hwpoison */
/* a guest-mode machine check (R45): kill_me_maybe() or the policy's AR path */
inline consume(v, p) {
  if
  :: !CLAIMED && det[p] -> cons[p] = 2        /* already poisoned: KVM re-enters, consumed again */
  :: !CLAIMED && !det[p] ->
       cons[p] = (cons[p] < 2 -> cons[p] + 1 : 2); det[p] = 1; kill_vm(v)
  :: CLAIMED ->
       cons[p] = (cons[p] < 2 -> cons[p] + 1 : 2);
       mf(v, p, 1, 0, 0);
       if
       :: alive[v] && vst[v] == 0 && consumed != K_CONSUMED_KILL_VM -> guest_mce(p, 0)
       :: else -> skip
       fi
  fi
}
/* a host kernel user (do_kernel_access, R3, R47) through the VMM's mapping */
inline ev_kernel(v, p, checks, mcsafe) {
  if
  :: !alive[v] || !held[v] -> skip
  :: pte[p] == 2 -> skip
  :: pte[p] == 0 && (unusable[v] || (CLAIMED && fault_check == K_FAULT_CHECK_TRUE && tab[p])) -> skip
  :: else ->
     pte[p] = 1;
     if
     :: checks && rec[p] && !(CLAIMED && record == K_RECORD_TABLE) -> skip   /* PG_hwpoison seen */
     :: !err[p] -> skip
     :: !mcsafe -> panic = 1; if :: det[p] -> m_panic = 1 :: else -> skip fi
     :: else -> mf(v, p, 0, 0, 0)
     fi
  fi
}
/* kvm_gmem_punch_hole(): zap, truncate (records kept by a claiming policy's table) */
inline ev_punch(v) {
  if :: alive[v] && held[v] -> free_folio(v) :: else -> skip fi
}
/* munmap, close (kvm_gmem_release, eviction), vm_destroy */
inline ev_release(v) {
  if :: held[v] -> free_folio(v) :: else -> skip fi;
  vst[v] = 3
}
"""
