"""Render a check configuration and a policy into Promela for SPIN.

The model (docs/check.md, "The SPIN engine") keeps, per page of guest memory: whether its frame
still backs the VM (``held``, per VM: one HugeTLB folio holds all of a VM's pages), the hardware
error (``err``), whether memory_failure() was called on it (``det``), whether the kernel still
records it (``rec``; ``tab`` for the policy's table, ``hwp`` for PG_hwpoison), shared or private
(``priv``), the VMM's host PTE (0 none, 1 present, 2 hwpoison entry), the 4K stage-2 SPTE, how
often the poison was consumed (``cons``, capped at 2) and the guest's view (``goff``: offlined by
the guest after a vMCE, ``gpk``: its user will be killed on access); per VM the KVM state,
whether the VMM lives, whether the guest_memfd was made unusable, whether its folio is merged
(one HugeTLB folio, all pages private) with a huge SPTE (``hs``), and whether a failure touched
it (``affected``, the monitor's); per vCPU thread its machine-check count (``mcc``) and the page
of its queued task work (``twp``: M7, M8); per VM, fixed, whether the guest acts on a vMCE
(``GIGN``: careless, hostile and confidential guests do not) and whether the VMM maps its
guest_memfd (``HASHVA``); the panic flag and the monitor bits of the properties.

Frames move between VMs (a VM refaulting into the frame another freed): per VM slot, the
frame's state and rank (``frame_slots``).

It drops: data values, frames other than the VMs' own (HugeTLB pool, buddy), the host's
machine-check stall sum (M9), SIGBUS queueing per thread beyond "told", the hugetlbfs backing
(rendered by a model of its own, check/spin/hugetlbfs.py), TDX, set-up steps and the escape
hatch (refused, ``Unsupported``).

What is generated and not written by hand: the policy's knobs (``#define`` per knob from
``GmemPolicy.knobs()`` and ``knob_values``), one Promela transition per label of the
configuration's alphabet (``ModelSystem.entries``: the event table of check/events.py with
its ``limit``s and the ``bounds.errors`` cap), one assertion expression per property of
check/properties.py (``PROP_EXPR``; every property must have one), and each kernel user's
reach, check and copy from the inventory (model/kernel/kaccess.py, ``kernel_user``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from memfail.check.events import vm_of
from memfail.check.properties import PROPERTIES
from memfail.check.spin.observe import PAGE_FIELDS, frame_order, pages_of, spare_pages
from memfail.model.policy.base import knob_values
from memfail.model.policy.registry import make_policy

# Event kinds the Promela model carries out (the rest are refused).
SUPPORTED = ("hw_error", "scrub", "vcpu_access", "fault", "vmm_access", "kernel_access",
             "convert", "punch_hole", "close", "release", "realloc", "guest_run", "vcpu_mce",
             "task_work")

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
    # Machine-check delivery (model/kernel/mce.py): the panics of queue_task_work() (M7)
    # are in the Promela model (``mc``); the broadcast rendezvous timeout (M3) and MCIP (M4)
    # need mce_config in setup, refused. Not kept: the stall sum (M9), which at the default
    # cost model (64 CPUs, 133 us per broadcast machine check) passes the 1 s bound only
    # after more than 7,000 consumptions; the Python engine's fingerprint keeps only whether
    # it passed, which no checkable depth reaches.
    "host-survives": "m_hdown",
}


# The per-page arrays that belong to the physical frame, not to the VM (frame_slots): the
# hardware error, memory_failure()'s record of it, the kernel's records (PG_hwpoison, the
# policy's table, derived ``rec``) and the consumption count; --races adds ``pdet``.
PHYSICAL = ("err", "det", "rec", "tab", "hwp", "cons", "nsp")


# C kept outside the state vector: which labels fired, printed when pan exits.
MF_FIRED_C = r"""c_decl {
  unsigned char mf_fired[NLABELS]; int mf_reg; short mf_check;
  static void mf_dump(void) { int i; printf("MF_FIRED");
    for (i = 0; i < NLABELS; i++) if (mf_fired[i]) printf(" %d", i);
    printf("\n"); }
}"""


def frame_slots(nv: int, npg: int, physical: tuple[str, ...]) -> list[str]:
    """Frame identity: which physical frame backs each VM, so that a VM reallocating after a
    punch hole (or a fault after a release of its folio) takes the frame the host's allocator
    hands out, another VM's freed frame included.

    The model keeps one *slot* per VM: slot ``v``'s per-page arrays hold two kinds of state.
    The VM's own (its PTEs, SPTEs, attributes, the guest's view: ``pte``, ``spte``, ``priv``,
    ``goff``, ``gpk``) stay with the VM. The frame's (the hardware error and the kernel's
    records of it: ``physical``, and ``fst``, whether the frame is free, free and poisoned, or
    dissolved) belong to whichever frame is in the slot: ``rk[v]`` is that frame's rank (the
    VMs' frames are pfn-ordered in VM order, below the spares; rank ``u`` is VM ``u``'s frame
    at the start) and ``sl[u]`` the slot of the frame of rank ``u``. ``bk[v] == OWN`` says VM
    ``v`` holds the frame in its slot. An error event names a frame by its first owner (the
    label's VM and page: ``pfn_of``), so it reaches slot ``sl[u]``, whoever holds that frame
    now; the observation reports frames the same way (observe.py).

    The free list (``hugepage_freelists``) is last in, first out: enqueue_hugetlb_folio()
    list_move()s a freed folio to its head and dequeue_hugetlb_folio_node_exact() takes the
    first one without PG_hwpoison (R55; the Python model's HugeTLB.enqueue/dequeue). Of what
    is on it, the allocation can take the VMs' free, unmarked frames (``fst`` 1; a marked one
    is skipped wherever it is) and the spares, clean and alike: ``lq[s]`` is the position of
    slot ``s``'s frame among the listed frames (1 nearest the head; 0 not listed) and
    ``gq[i]`` the number of spares freed above the frame at position ``i + 1`` (since that
    frame; the other free spares lie below every listed frame, where the pool started).
    ``frame_free(s)`` and ``spare_free()`` put a frame or a spare at the head,
    ``frame_unlist(s)`` takes a frame off (allocated; nothing for a frame not listed),
    ``dissolve_free(s)`` dissolves a free frame (memory_failure()'s free-hugetlb path), and
    ``take_head(v)`` is the allocation (before ``realloc``/``alloc`` take what it found): a
    spare above every listed frame, else the listed frame at the head, swapped into slot
    ``v`` (the VM's own frame when it is that one, no swap) with its physical state and
    rank, else a spare from below; ``fs`` says which (1: the frame now in slot ``v``, 2: a
    spare; scratch, 0 between steps)."""
    swaps = []
    for name in physical:
        for i in range(npg):
            x, y = f"{name}[(a) * NPG + {i}]", f"{name}[(b) * NPG + {i}]"
            swaps.append(f"{x} = {x} ^ {y}; {y} = {x} ^ {y}; {x} = {x} ^ {y}")
    for name in ("fst", "rk", "lq", "pin"):
        x, y = f"{name}[a]", f"{name}[b]"
        swaps.append(f"{x} = {x} ^ {y}; {y} = {x} ^ {y}; {x} = {x} ^ {y}")
    swaps.append("sl[rk[a]] = a; sl[rk[b]] = b")
    # conditional expressions, not ``if``s: SPIN bounds the jumps of a d_step
    listed = " || ".join(f"lq[{x}] != 0" for x in range(nv))
    push = [*(f"lq[{x}] = (lq[{x}] != 0 -> lq[{x}] + 1 : 0)" for x in range(nv)),
            *(f"gq[{i}] = gq[{i - 1}]" for i in range(nv - 1, 0, -1)),
            "gq[0] = 0; lq[s] = 1"]
    # the frame at position fj leaves: the frames below move up, and the spares above it join
    # those above the next one, or, when it was the last, those below every listed frame
    last = "!(" + " || ".join(f"lq[{x}] == fj" for x in range(nv)) + ")"
    gaps = []
    for i in range(nv):
        below = f"gq[{i + 1}]" if i + 1 < nv else "0"
        gaps.append(f"gq[{i}] = (fj == 0 || {i} < fj - 1 -> gq[{i}] : "
                    f"({i} == fj - 1 -> ({last} -> 0 : gq[{i}] + {below}) : {below}))")
    unlist = ["fj = lq[s]; lq[s] = 0",
              *(f"lq[{x}] = (fj != 0 && lq[{x}] > fj -> lq[{x}] - 1 : lq[{x}])"
                for x in range(nv)),
              *gaps, "fj = 0"]
    head = "fj = " + "".join(f"(lq[{s}] == 1 -> {s + 1} : " for s in range(nv)) + "0" + \
        ")" * nv
    free = " + ".join(["nspare", *(f"(fst[{s}] == 1 || fst[{s}] == 2)" for s in range(nv))])
    return ["byte rk[NV]; byte sl[NV]; byte lq[NV]; byte gq[NV]; hidden byte fs; hidden byte fj;",
            "/* pin[s]: a memory_failure() in flight holds slot s's frame (get_hwpoison_page's\n"
            "   reference, --races: mf.record to mf.notify); fst 4 / 5: truncated meanwhile,\n"
            "   freed when it returns (by punch hole / by release: mf_unpin) */",
            "bit pin[NV];",
            "/* free_huge_pages: the free spares and the frames on the free list (fst 1 and 2:\n"
            "   unmarked and marked; 3 is dissolved) */",
            f"#define FREE_POOL ({free})",
            "/* two slots exchange their frames (a != b): XOR swaps */",
            "inline swap_frames(a, b) { " + "; ".join(swaps) + " }",
            "/* slot s's frame, free and unmarked now, goes to the head of the free list */",
            "inline frame_free(s) { " + "; ".join(push) + " }",
            "/* a spare goes to the head of the free list */",
            f"inline spare_free() {{ nspare++; gq[0] = gq[0] + ({listed} -> 1 : 0) }}",
            "/* slot s's frame leaves the free list (taken, or dissolved) */",
            "inline frame_unlist(s) {\n  " + ";\n  ".join(unlist) + "\n}",
            "/* slot s's free frame is dissolved: off the free list if it is on it */",
            "inline dissolve_free(s) { frame_unlist(s); fst[s] = 3 }",
            "/* dequeue_hugetlb_folio_node_exact(): what the free list's head gives slot v (fs 1:\n"
            "   the frame now in slot v, 2: a spare, 0: nothing); frame_slots */",
            "inline take_head(v) {\n  " + head + ";\n  if\n"
            "  :: gq[0] > 0 -> gq[0]--; fs = 2\n"
            "  :: gq[0] == 0 && fj != 0 -> fs = 1;\n"
            "     if :: fj - 1 != (v) -> swap_frames(fj - 1, v) :: else -> skip fi;\n"
            "     frame_unlist(v)\n"
            "  :: else -> fs = (nspare > 0 -> 2 : 0)\n  fi;\n  fj = 0\n}"]


def first_frame(v: int, page: int) -> tuple[str, str]:
    """Where the frame VM ``v`` had at the start is now (``frame_slots``): its slot and the
    index of its page ``page`` in the per-page arrays. An error label (``hw_error``,
    ``scrub``) names its frame so, and the observations report a frame's fields so."""
    return f"sl[{v}]", f"(sl[{v}] * NPG + {page})"


def init_slots(nv: int) -> str:
    """``init_state``'s part of ``frame_slots``: every VM's frame in its own slot."""
    return "; ".join(f"rk[{i}] = {i}; sl[{i}] = {i}" for i in range(nv))


def checker_proctype(steps: list[tuple[str, str]]) -> list[str]:
    """The verifier's process (left out of a replay, which has its own ``init``): the set-up,
    then one ``d_step`` per transition ``(guard, body)`` numbered in order, which marks the
    transition fired (``MF_FIRED_C``, for the coverage: C outside the state vector, printed
    at pan's exit), runs the body, prints its number and the observation and asserts the
    checked properties. One writing for every Promela model (promela.py, stages.py,
    hugetlbfs.py)."""
    out = ["#ifndef REPLAY", MF_FIRED_C.replace("NLABELS", str(max(1, len(steps)))),
           "active proctype checker() {\n"
           "  d_step { init_state(); c_code { if (!mf_reg) { mf_reg = 1; "
           "atexit(mf_dump); mf_check = getenv(\"MF_CHECK\") ? "
           "atoi(getenv(\"MF_CHECK\")) : 0; } chk = mf_check; } };\n  do"]
    for k, (guard, body) in enumerate(steps):
        out.append(f"  :: d_step {{ {guard} -> c_code {{ mf_fired[{k}] = 1; }}; {body}; "
                   f'printf("MF_STEP {k}\\n"); observe(); assert(!VIOLATED) }}')
    out += ["  od\n}", "#endif"]
    return out


class Unsupported(ValueError):
    """The configuration uses something the Promela model does not carry out; ``loc`` is
    where in the configuration (``("events", 3)``: its fourth event), () when no one field
    is at fault (the policy)."""

    def __init__(self, message: str, loc: tuple[str | int, ...] = ()) -> None:
        super().__init__(message)
        self.loc = loc


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


def split_rendered(specs: list[Any], races: bool = False) -> tuple[list[Any], dict[str, str]]:
    """The policies of ``specs`` the Promela model renders, and the others by name with the
    reason (``policy_refusal``)."""
    keep: list[Any] = []
    refused: dict[str, str] = {}
    for spec in specs:
        why = policy_refusal(spec)
        if why is None:
            keep.append(spec)
        else:
            refused[make_policy(spec).name] = why
    return keep, refused


def policy_refusal(spec: Any) -> str | None:
    """Why the Promela model does not render policy ``spec`` (None: it does)."""
    policy = make_policy(spec)
    if policy.backing == "hugetlbfs":
        return None  # the kernel's HugeTLB path: check/spin/hugetlbfs.py renders it
    if policy.backing != "gmem":
        return (f"policy {policy.name!r}: the SPIN engine models guest_memfd backing only "
                f"(backing: {policy.backing} is not modelled)")
    if policy.handles != "none" and (policy.consumed == "kernel" or
                                     policy.unconsumed == "kernel"):
        which = " and ".join(f"{k}: kernel" for k in ("consumed", "unconsumed")
                             if getattr(policy, k) == "kernel")
        return (f"policy {policy.name!r}: {which} (the kernel's own path for a folio the "
                "policy handles) is not modelled by the SPIN engine, which models consumed: "
                "sigbus-current, sigbus-vmm, kill-vm, unusable and unconsumed: defer, "
                "notify-vmm, kill-vm, unusable")
    return None


def converts_at_once(cfg: Any, p: dict[str, Any]) -> bool:
    """Whether a ``convert`` label's conversion fails at once and changes nothing, in both
    Promela models, atomic or with races (races.first_stage does not split it): a default
    VM's KVM_SET_MEMORY_ATTRIBUTES(PRIVATE) fails with -EINVAL before any lock
    (kvm_supported_mem_attributes(), model/kvm/kvm.py do_set_attributes)."""
    return bool(p["to"] == "private" and vm_of(cfg, p["vm"]).type == "default")


def convert_splits(v: int | str) -> str:
    """The Promela condition under which a ``convert`` of VM ``v`` (its index, or a Promela
    expression of it) that does not fail at once (``converts_at_once``) runs in the --races
    stages convert.attributes and convert.folios, in both Promela models: its VMM lives and
    its release has not destroyed it (races.first_stage: otherwise one step)."""
    return f"(alive[{v}] && vst[{v}] != 3)"


def check_supported(system: Any) -> None:
    if _hugetlbfs_backing(system):
        from memfail.check.spin import hugetlbfs

        hugetlbfs.check_supported(system)
        return
    cfg = system.config
    why = policy_refusal(system.policy) if system.policy else None
    if why is not None:
        raise Unsupported(why)
    refuse_layout(system, "VMs on a guest_memfd with backing 2M or 1G",
                  "one huge folio per VM (guest_memfd size 2M with backing 2M, 1G with 1G)",
                  " (its mirrored stage 2 is not in the Promela model)", ("2M", "1G"))
    for i, label in system.entries:
        at = ("events", i)
        if label[0] not in SUPPORTED:
            raise Unsupported(f"event {label[0]!r} is not modelled by the SPIN engine "
                              f"(it models {', '.join(SUPPORTED)})", (*at, "event"))
        p = dict(label[1])
        if label[0] in ("vmm_access", "kernel_access", "convert") and \
                "mmap" not in _gmem_of(cfg, p["vm"]).flags:
            raise Unsupported(f"{label[0]} on {p['vm']}: the SPIN engine models it on a "
                              "guest_memfd with flag mmap only", at)
        if label[0] == "vmm_access" and _vmm_thread(cfg, p) == "vcpu" and any(
                lab[0] == "vcpu_mce" and dict(lab[1])["vm"] == p["vm"]
                for _j, lab in system.entries):
            raise Unsupported(f"vmm_access by a vCPU thread of {p['vm']}, which also takes "
                              "vcpu_mce: the SPIN engine keeps one machine-check count per "
                              "vCPU for guest loads only", at)
        if label[0] == "vmm_access" and p.get("thread") is not None and \
                _vmm_thread(cfg, p) is None:
            raise Unsupported("vmm_access is modelled for the VMM's main thread (the first of "
                              "its threads) and its vCPU threads (vcpu0, vcpu1, ...) only",
                              (*at, "thread"))
    refuse_vmms(cfg)


def refuse_layout(system: Any, backing: str, size: str, type_why: str = "",
                  backings: tuple[str, ...] = ("2M",)) -> None:
    """What both Promela models (this one and hugetlbfs.py) refuse of the VMs and the
    set-up: a VM's memory other than one huge page of one of ``backings``, the same for
    every VM (``backing`` and ``size`` say what the model takes), a VM type other than
    default, sw-protected and snp, and ``setup`` steps."""
    cfg = system.config
    first: str | None = None
    for k, vm in enumerate(cfg.vms):
        g = next((g for g in cfg.guest_memfd if g.name == vm.gmem), None)
        if g is None or g.backing not in backings:
            raise Unsupported(f"vm {vm.name}: the SPIN engine models {backing}",
                              gmem_loc(cfg, vm, "backing", k))
        if first is not None and g.backing != first:
            raise Unsupported(f"vm {vm.name}: the SPIN engine models the VMs' guest_memfds "
                              f"on one backing (the first VM's is {first}, this one's "
                              f"{g.backing})", gmem_loc(cfg, vm, "backing", k))
        first = g.backing
    npg = 1 << frame_order(system)
    for k, vm in enumerate(cfg.vms):
        if pages_of(system, vm.name) != npg:
            raise Unsupported(f"vm {vm.name}: the SPIN engine models {size}",
                              gmem_loc(cfg, vm, "size", k))
        if vm.type not in ("default", "sw-protected", "snp"):
            raise Unsupported(f"vm {vm.name}: type {vm.type} is not modelled by the SPIN "
                              f"engine{type_why}", ("vms", k, "type"))
    if cfg.setup:
        raise Unsupported("setup steps are not modelled by the SPIN engine", ("setup", 0))


def refuse_vmms(cfg: Any) -> None:
    """What both Promela models refuse of the VMMs: a SIGBUS disposition they do not render
    (``SIG_CODES``: a check configuration has no other), and a VMM that runs two VMs (the
    Promela VM's ``alive`` is its VMM's: a VMM that dies, by a signal or by a policy's kill,
    takes every VM it runs down with it in the Python model, and only the one VM in
    Promela)."""
    for k, proc in enumerate(cfg.processes):
        if proc.sigbus not in SIG_CODES:
            raise Unsupported(f"process {proc.name}: the SPIN engine models the SIGBUS "
                              f"dispositions {', '.join(SIG_CODES)}", ("processes", k, "sigbus"))
    first: dict[str, str] = {}
    for k, vm in enumerate(cfg.vms):
        if vm.vmm in first:
            raise Unsupported(f"vm {vm.name}: the SPIN engine models one VM per VMM "
                              f"({vm.vmm} also runs {first[vm.vmm]})", ("vms", k, "vmm"))
        first[vm.vmm] = vm.name


# A VMM's SIGBUS disposition (config ``processes[].sigbus``), as VMM_SIG(v) gives it
SIG_CODES = {"handler": 0, "default": 1, "ignore": 2}


def sigbus_defines(cfg: Any) -> list[str]:
    """VMM_SIG(v): the SIGBUS disposition of VM v's VMM (SIG_HANDLER: QEMU's handler;
    SIG_DEFAULT: the default action, the process dies; SIG_IGNORE: SIG_IGN, which a forced
    signal resets to the default, state.py force_sig_mceerr, R35)."""
    procs = {p.name: p for p in cfg.processes}
    return [*(f"#define SIG_{k.upper()} {c}" for k, c in SIG_CODES.items()),
            "#define VMM_SIG(v) (" + " + ".join(
                f"((v) == {i} -> {SIG_CODES[procs[vm.vmm].sigbus]} : 0)"
                for i, vm in enumerate(cfg.vms)) + ")"]


def gmem_loc(cfg: Any, vm: Any, field: str, k: int) -> tuple[str | int, ...]:
    """Where the ``field`` of VM number ``k``'s guest_memfd entry is written (the VM's own
    ``gmem`` when it names none)."""
    for j, g in enumerate(cfg.guest_memfd):
        if g.name == vm.gmem:
            return ("guest_memfd", j, field)
    return ("vms", k, "gmem")


def _hugetlbfs_backing(system: Any) -> bool:
    """Whether the system's policy backs guest memory by a hugetlbfs memfd (S10/S11) and is
    rendered (``policy_refusal``): the kernel's HugeTLB path, by check/spin/hugetlbfs.py."""
    return bool(system.policy) and make_policy(system.policy).backing == "hugetlbfs" and \
        policy_refusal(system.policy) is None


def _gmem_of(cfg: Any, vm_name: str) -> Any:
    vm = vm_of(cfg, vm_name)
    return next(g for g in cfg.guest_memfd if g.name == vm.gmem)


def _ignores_vmce(vm: Any) -> bool:
    """No vMCE changes what the guest does: careless and hostile guests ignore it
    (vmm/guest.py ignores_vmce), and QEMU cannot inject one into a confidential VM
    (vmm/qemu.py kvm_arch_on_sigbus_vcpu, Q8)."""
    return vm.behaviour in ("careless", "hostile") or vm.type in ("snp", "tdx")


def _vmm_thread(cfg: Any, p: dict[str, Any]) -> str | None:
    """'main' for the VMM's first thread (or no thread given), 'vcpu' for a thread
    do_vm_create() makes a vCPU (vcpu0 .. vcpu<vcpus-1>), None otherwise."""
    vm = vm_of(cfg, p["vm"])
    proc = next(x for x in cfg.processes if x.name == vm.vmm)
    t = p.get("thread")
    if t is None or t == proc.threads[0]:
        return "main"
    return "vcpu" if t in {f"vcpu{i}" for i in range(vm.vcpus)} else None


def render(system: Any, step_derives: bool = True) -> Rendered:
    """The Promela text of ``system`` (a ModelSystem, whose alphabet it uses).

    Each label's ``step_k()`` ends by deriving ``rec`` (``derive``, poison_records) for every
    VM; without ``step_derives`` it does not, for stages.render_races, whose every transition
    derives after its steps (a derive more would do the same work twice: with it, 10 % of
    pan's time in the standard configuration's --races search)."""
    if _hugetlbfs_backing(system):
        from memfail.check.spin import hugetlbfs

        return hugetlbfs.render(system)
    check_supported(system)
    cfg = system.config
    policy = make_policy(system.policy) if system.policy else make_policy("mainline")
    vms = [v.name for v in cfg.vms]
    npg = 1 << frame_order(system)
    early = {v.name: bool(system.ctx.early.get(v.vmm)) for v in cfg.vms}
    leader_early = {}
    for v in cfg.vms:
        proc = next(p for p in cfg.processes if p.name == v.vmm)
        leader_early[v.name] = proc.threads[0] in system.ctx.early.get(v.vmm, ())
    labels = [label for _i, label in system.entries]
    maxvc = max(vm.vcpus for vm in cfg.vms)
    lines = ["/* memfail check --engine spin: generated, do not edit */"]
    lines += knob_defines(policy)
    lines += [
        f"#define NV {len(vms)}",
        f"#define NPG {npg}",
        f"#define NP {len(vms) * npg}",
        f"#define MAXERR {cfg.bounds.errors}",
        f"#define MAXVC {maxvc}",
        "#define VT(v, i) ((v) * MAXVC + (i))",
        "#define CLAIMED (handles != K_HANDLES_NONE)",
    ]
    # _hva_for(): the memslot's userspace_addr, set when the guest_memfd is mmapped
    lines.append("#define HASHVA(v) (" + " || ".join(
        f"((v) == {i} && {int('mmap' in _gmem_of(cfg, vm.name).flags)})"
        for i, vm in enumerate(cfg.vms)) + ")")
    lines.append("#define GIGN(v) (" + " || ".join(
        f"((v) == {i} && {int(_ignores_vmce(vm))})" for i, vm in enumerate(cfg.vms)) + ")")
    lines.append("#define VM_EARLY(v) (" + " || ".join(
        f"((v) == {i} && {int(early[v])})" for i, v in enumerate(vms)) + ")")
    lines.append("#define LEADER_EARLY(v) (" + " || ".join(
        f"((v) == {i} && {int(leader_early[v])})" for i, v in enumerate(vms)) + ")")
    lines += sigbus_defines(cfg)
    lines += [
        "bit err[NP]; bit det[NP]; bit rec[NP]; bit tab[NP]; bit hwp[NP]; byte pte[NP];",
        "bit nsp[NP];",
        "bit spte[NP]; byte cons[NP]; bit goff[NP]; bit gpk[NP];",
        "byte vst[NV]; bit alive[NV]; byte bk[NV]; byte fst[NV]; bit unusable[NV];",
        "bit closed[NV]; bit merged[NV]; bit hs[NV]; bit priv[NP]; bit affected[NV];",
        "byte nspare; byte twp[NV * MAXVC]; byte mcc[NV * MAXVC];",
        "hidden byte tp; hidden byte fo; hidden byte ag; hidden byte gr; hidden byte ko;",
        "hidden byte rc; hidden byte rn; hidden byte ph; hidden byte vi;",
        "#define RESET_SCRATCH mq = 0; mr = 0; ao = 0; tp = 0; fo = 0; ag = 0; gr = 0; rc = 0; "
        "rn = 0; ph = 0; vi = 0; ko = 0",
        "#define pdet det",
        "#define FRAME_HWP(v) (" + " || ".join(f"hwp[(v) * NPG + {i}]" for i in range(npg))
        + ")",
        "#define FRAME_TAB(v) (" + " || ".join(f"tab[(v) * NPG + {i}]" for i in range(npg))
        + ")",
        "#define ALL_PRIV(v) (" + " && ".join(f"priv[(v) * NPG + {i}]" for i in range(npg))
        + ")",
        "#define SPTE(v, p) (spte[p] || hs[v])",
        # the page is poisoned as kcore's check (PageHWPoison of the page, or of the head of
        # a HugeTLB folio; a merged folio's flag on any of its pages) and NOSPEC see it
        "#define PAGE_HWP(v, p) (hwp[p] || fst[v] == 2 || "
        "(bk[v] == OWN && merged[v] && FRAME_HWP(v)))",
        "bit panic; bit m_panic; bit m_reuse; bit m_wrong; bit m_untold; bit m_counters;",
        "bit m_down; bit m_hdown;",
        f"byte ev_cnt[{max(1, len(limited_events(cfg)))}]; byte nerr;",
        *frame_slots(len(vms), npg, PHYSICAL),
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
    # the properties the search checks: pan reads them from MF_CHECK when it starts (into
    # ``chk``, constant along the search), so one compiled pan serves every search of a
    # policy; a simulation (spin -T) is given them as -DCHECK
    lines.append("hidden short chk;\n#ifdef CHECK\n#define CHK CHECK\n#else\n#define CHK chk\n#endif")
    viol = " || ".join(f"((((CHK >> {k}) & 1) == 1) && prop_{k})" for k in range(len(props)))
    lines.append(f"#define VIOLATED ({viol})")
    lines.append(_foreach(SEMANTICS, npg))
    # observation printer, in observe.layout order
    fmt, args = [], []
    for vi in range(len(vms)):
        for pg in range(npg):
            p = vi * npg + pg
            # the frame's fields by its first owner (frame_slots), the VM's by the VM
            fp = first_frame(vi, pg)[1]
            for f in PAGE_FIELDS:
                fmt.append("%d")
                args.append(f"(bk[{vi}] == OWN && rk[{vi}] == {vi})" if f == "held" else
                            f"SPTE({vi}, {p})" if f == "spte" else
                            f"{f}[{fp}]" if f in PHYSICAL else f"{f}[{p}]")
        fmt += ["%d", "%d"]
        args += [f"vst[{vi}]", f"alive[{vi}]"]
    fmt += ["%d", "%d"]
    args += ["panic", "FREE_POOL"]
    for k in range(len(props)):
        fmt.append("%d")
        args.append(f"prop_{k}")
    lines.append(f'inline observe() {{ printf("MF_OBS {" ".join(fmt)}\\n", '
                 f'{", ".join(args)}) }}')
    # one inline per label
    for k, label in enumerate(labels):
        derives = "".join(f"; derive({vi})" for vi in range(len(vms))) if step_derives else ""
        lines.append(f"inline step_{k}() {{ {_call(cfg, label, vms, npg)}{derives} }}")
    guards = [(k, *_guard(system, label)) for k, label in enumerate(labels)]
    lines.append("inline init_state() {")
    # the set-up faults every page in: a shared VM's pages one 4K SPTE each (its folio split,
    # R87), a private VM's one huge SPTE over its HugeTLB folio, all pages private
    for vi, vm in enumerate(cfg.vms):
        if "init_shared" in _gmem_of(cfg, vm.name).flags:
            lines.append("  " + "; ".join(f"spte[{vi * npg + q}] = 1" for q in range(npg))
                         + ";")
        else:
            lines.append("  " + "; ".join(f"priv[{vi * npg + q}] = 1" for q in range(npg))
                         + f"; merged[{vi}] = 1; hs[{vi}] = 1;")
    lines.append("  " + "; ".join(f"alive[{i}] = 1; bk[{i}] = OWN" for i in range(len(vms)))
                 + f"; nspare = {spare_pages(system)}; "
                 + init_slots(len(vms)))
    lines.append("}")
    lines += checker_proctype([(guard, f"{count}step_{k}(); RESET_SCRATCH")
                               for k, guard, count in guards])
    text = "\n".join(lines) + "\n"
    return Rendered(text, labels, props)


def limited_events(cfg: Any) -> list[int]:
    """The configuration's events (indices) that have a ``limit``, in order: ``ev_cnt[j]``
    counts the firings of the j-th of them. Only they are counted: an element per event
    would keep a byte that is always 0 in every state vector for each of the others (14 of
    the standard configuration's 17)."""
    return [i for i, spec in enumerate(cfg.events) if spec.limit is not None]


def _guard(system: Any, label: Any) -> tuple[str, str]:
    """A label's enabling condition (no panic, its event's limit, the error bound) and the
    counters its step bumps."""
    caps = system.label_caps(label)
    g = ["!panic"]
    count = ""
    if caps is not None:
        # ModelSystem.counted_entry: enabled while an entry having the label is below its
        # limit; the step counts against the first such entry (file order)
        limited = limited_events(system.config)
        below = [f"ev_cnt[{limited.index(i)}] < {lim}" for i, lim in caps]
        g.append(below[0] if len(below) == 1 else "(" + " || ".join(below) + ")")
        if len(caps) == 1:
            count = f"ev_cnt[{limited.index(caps[0][0])}]++; "
        else:
            arms = [f":: {' && '.join([*(f'!({b})' for b in below[:k]), below[k]])} -> "
                    f"ev_cnt[{limited.index(i)}]++" for k, (i, _lim) in enumerate(caps)]
            count = "if " + " ".join(arms) + " fi; "
    if label[0] == "hw_error":
        g.append("nerr < MAXERR")
        count += "nerr++; "
    return " && ".join(g), count


def replay_text(rendered: Rendered, system: Any, seq: list[int]) -> str:
    """A Promela model that carries out exactly the labels ``seq`` (indices into
    ``rendered.labels``) in order, printing the observation after each; a label that is not
    enabled prints ``MF_BLOCKED k`` and stops (``replay_driver``)."""
    arms = {}
    for k in dict.fromkeys(seq):
        guard, count = _guard(system, rendered.labels[k])
        arms[k] = (guard, f"{count}step_{k}(); RESET_SCRATCH")
    return replay_driver(rendered.text, seq, arms)


def replay_driver(text: str, seq: list[int], arms: dict[int, tuple[str, str]]) -> str:
    """The model ``text`` with an ``init`` process that takes the steps ``seq`` in order:
    ``arms[k]`` is step k's guard and the body its d_step runs. After each step it prints
    ``MF_STEP k`` and the observation; a step whose guard is false prints ``MF_BLOCKED k``
    and ends the replay.

    The steps are a table (``mf_seq``) walked by one loop, which names each distinct step
    once: SPIN expands a step's inline bodies where it is named, and a driver that named
    every step of the sequence took time growing faster than the sequence (a 40-step replay
    of the standard configuration's --races model: 3.7 s against 0.8 s as a loop)."""
    n = len(seq)
    if any(not 0 <= k < 32767 for k in seq):
        raise ValueError("a replayed step index does not fit the driver's short table")
    fill = [f"mf_seq[{i}] = {k}" for i, k in enumerate(seq)]
    body = ["#define REPLAY 1", text, f"short mf_seq[{max(n, 1)}];", "init {",
            "  short mf_i, mf_k;", "  d_step { init_state() };"]
    body += [f"  d_step {{ {'; '.join(fill[i:i + 1000])} }};"  # inside MAXDSTEP (2048)
             for i in range(0, n, 1000)]
    body += ["  observe();", "  do", f"  :: mf_i == {n} -> break",
             "  :: else -> mf_k = mf_seq[mf_i];", "     if"]
    for k in dict.fromkeys(seq):
        guard, step = arms[k]
        body.append(f"     :: mf_k == {k} -> if :: {guard} -> d_step {{ {step} }}; "
                    f'printf("MF_STEP {k}\\n")')
        body.append(f'        :: else -> printf("MF_BLOCKED {k}\\n"); goto done fi')
    if not seq:
        body.append("     :: else -> skip")
    body += ["     fi;", "     observe(); mf_i++", "  od;", "done: skip", "}"]
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


def gmem_range_ok(p: dict[str, Any], npg: int) -> bool:
    """kvm_gmem_fallocate() accepts the range of a punch_hole or realloc label on a VM of one
    huge folio of ``npg`` pages: aligned to the folio, within the file, not empty (R71; any
    other range fails with -EINVAL before a lock is taken, races.fallocate_fails_early). On
    such a VM the only range it accepts is the whole folio."""
    page, pages = p["page"], p["pages"]
    return page % npg == 0 and pages % npg == 0 and pages > 0 and page + pages <= npg


def _call(cfg: Any, label: Any, vms: list[str], npg: int) -> str:
    p = dict(label[1])
    kind = label[0]
    v = vms.index(p["vm"]) if "vm" in p else 0
    if kind in ("hw_error", "scrub"):  # the frame the label names, in whichever slot
        slot, q = first_frame(v, p["page"])
        if kind == "scrub":
            return f"ev_scrub({slot}, {q})"
        # detected now: by the machine-check notifier (scrub, set_mce_nospec() on 0) or by the
        # firmware (ghes: memory_failure_queue(), no set_mce_nospec())
        return f"ev_hw_error({slot}, {q}, {int(p['detect'] != 'latent')}, " \
               f"{int(p['detect'] == 'scrub')})"
    if kind == "vcpu_access":
        return f"ev_vcpu({v}, {v * npg + p['page']}, {int(bool(p['write']))}, " \
               f"{p.get('vcpu') or 0})"
    if kind == "fault":  # a guest store (events.py: guest_access, op write)
        return f"ev_vcpu({v}, {v * npg + p['page']}, 1, {p.get('vcpu') or 0})"
    if kind == "guest_run":
        return _guest_run(vm_of(cfg, p["vm"]), v, v * npg + p["page"], p)
    if kind == "vcpu_mce":
        return f"ev_vcpu_mce({v}, {v * npg + p['page']}, {p['vcpu']})"
    if kind == "task_work":
        return f"tw_run({v}, {p['vcpu']})"
    if kind == "vmm_access":
        how = "ev_vmm_vcpu" if _vmm_thread(cfg, p) == "vcpu" else "ev_vmm"
        return f"{how}({v}, {v * npg + p['page']}, {int(bool(p.get('write')))})"
    if kind == "kernel_access":
        hva, chk, rcv, gm, nf, ns = kernel_user(cfg, system_args(label))
        return f"ev_kacc({v}, {v * npg + p['page']}, {int(p['page'] == 0)}, {hva}, {chk}, " \
               f"{rcv}, {gm}, {nf}, {ns})"
    if kind == "convert":
        pages = range(p["page"], min(npg, p["page"] + p["pages"]))
        to = int(p["to"] == "private")
        if converts_at_once(cfg, p):
            return "skip"
        # set_attributes of a VM whose VMM has exited fails (-ESRCH, Host.actor_gone)
        return f"if :: alive[{v}] -> " + \
            "; ".join(f"convert_page({v}, {v * npg + q}, {to})" for q in pages) + \
            f"; convert_folio({v}, {to}) :: else -> skip fi"
    if kind == "punch_hole":
        return f"ev_punch({v})" if gmem_range_ok(p, npg) else "skip"
    if kind == "realloc":
        return f"ev_realloc({v})" if gmem_range_ok(p, npg) else "skip"
    if kind == "close":
        return f"ev_close({v})"
    if kind == "release":
        return f"ev_release({v})"
    raise Unsupported(kind)


# do_guest_run()'s rounds when the event gives none (VM.effort, model/kvm/kvm.py)
EFFORT = 10


def _guest_run(vm: Any, v: int, q: int, p: dict[str, Any]) -> str:
    """do_guest_run() (vmm/guest.py) unrolled: ``rounds`` rounds of guest_round() by the
    vCPUs the behaviour uses (hostile: every vCPU, careless: vCPU 0, otherwise the event's),
    each round first running the vCPUs' pending task work (R45), then their loads, each
    machine check queued before any task work runs (M7), then each consumer's task work
    (M8). A cooperative guest touches once; a confidential one re-executes while the load
    takes a machine check; every guest stops once the page is offlined or the VM stops."""
    vcpus = list(range(vm.vcpus)) if vm.behaviour == "hostile" else \
        [0] if vm.behaviour == "careless" else [p.get("vcpu") or 0]
    rounds = p.get("rounds") or EFFORT
    stop = {"cooperative": 0, "confidential": 1}.get(vm.behaviour, 2)
    return f"guest_run({v}, {q}, {vcpus[0]}, {vcpus[-1]}, {rounds}, {stop})"


def system_args(label: Any) -> dict[str, Any]:
    """The arguments of the model's kernel_access action for a kernel_access label (the
    event's expansion, check/events.py: the user, and the overrides it passes on)."""
    p = dict(label[1])
    user = p.get("user")
    checks, mc_safe = p.get("checks_hwpoison"), p.get("mc_safe")
    if user is None:  # as check/events.py _kernel_access picks it
        checks = True if checks is None else checks
        mc_safe = False if mc_safe is None else mc_safe
        user = "kcore" if checks else "kworker"
    return {"user": user, "checks_hwpoison": checks, "mc_safe": mc_safe}


# Promela codes of a kernel user's check (KernelUser.check) and of how its copy ends.
CHECK_CODE = {"none": 0, "flag": 1, "raw-flag": 2, "entry": 3}
RECOVERY_PANIC, RECOVERY_REPORT, RECOVERY_SILENT = 0, 1, 2


def kernel_user(cfg: Any, args: dict[str, Any]) -> tuple[int, int, int, int, int, int]:
    """A kernel user of the inventory (model/kernel/kaccess.py KERNEL_USERS) as the Promela
    model's ``ev_kacc`` takes it: (reaches the page through the VMM's page tables, its check,
    how a machine check in its copy ends, whether it reaches guest_memfd folios), with the
    overrides do_kernel_access() applies (model/kvm/kvm.py): ``checks_hwpoison: false`` drops
    the check (an hva user's uaccess still stops at a hwpoison entry), ``true`` adds the flag
    check, ``mc_safe`` overrides the profile's release (R3, R47); then whether it reads through
    the direct map with a nofault copy (kcore: a page set_mce_nospec() removed reads as
    zeros) and whether its report is kill_me_never()'s, which calls set_mce_nospec() (a copy
    from user memory; a copy_mc_*() copy reports through memory_failure_queue())."""
    from memfail.model.kernel.kaccess import KERNEL_USER_BY_NAME, profile_release

    u = KERNEL_USER_BY_NAME[args["user"]]
    mc_safe = u.mc_safe(profile_release(cfg.profile)) if args["mc_safe"] is None \
        else bool(args["mc_safe"])
    check = u.check
    if args["checks_hwpoison"] is False:
        check = "none"
    elif args["checks_hwpoison"] and check == "none":
        check = "flag"
    recovery = u.recovery
    if mc_safe and recovery == "none":
        recovery = "copy_mc_queue"
    if not mc_safe:
        rcv = RECOVERY_PANIC
    elif recovery in ("copyin", "copy_mc_queue"):
        rcv = RECOVERY_REPORT   # memory_failure(pfn, 0): kill_me_never or the queue
    else:
        rcv = RECOVERY_SILENT   # copy_mc: the copy stops, nothing reported
    return (int(u.reach == "hva"), CHECK_CODE[check], rcv, int(not u.gmem.startswith("no")),
            int(u.nofault_direct_map), int(rcv == RECOVERY_REPORT and recovery == "copyin"))


# The paths, as branches on the knobs. Function names are the kernel's / the model's
# (src/memfail/model/kvm/gmem.py, kvm.py, vmm/qemu.py).
# The machine-check window (docs/mce.md), the same in the guest_memfd and hugetlbfs models:
# ``mc`` and ``tw_run`` call the model's own ``kmm`` (kill_me_maybe).
MCE_INLINES = r"""/* kvm_machine_check() (R45): the load consumes the poison (PoisonConsumed: the monitor
   counts it unless an earlier consumption of the same poison still waits for its
   memory_failure(), the hardware's window), do_machine_check() and queue_task_work() on the
   vCPU thread (M7): mce_count, the first page; the eleventh, or one on another page before
   the task work ran, panics the host */
inline consume(p) {
  /* PoisonConsumed by a guest or user load, as the monitor counts it (properties.py): not
     while an earlier consumption of the same poison waits for its memory_failure() */
  if :: det[p] || cons[p] == 0 -> cons[p] = (cons[p] < 2 -> cons[p] + 1 : 2) :: else -> skip fi
}
inline mc(v, p, i) {
  affected[v] = 1;
  consume(p);
  mcc[VT(v, i)] = (mcc[VT(v, i)] < 11 -> mcc[VT(v, i)] + 1 : 11);
  if :: mcc[VT(v, i)] == 1 -> twp[VT(v, i)] = p + 1 :: else -> skip fi;
  if
  :: mcc[VT(v, i)] > 10 || (mcc[VT(v, i)] > 1 && twp[VT(v, i)] != p + 1) ->
       panic = 1; m_panic = 1; m_hdown = 1
  :: else -> skip
  fi
}
/* task_work_run() (M8): the vCPU thread's queued kill_me_maybe, then its signals */
inline tw_run(v, i) {
  if
  :: twp[VT(v, i)] != 0 && !panic ->
       tp = twp[VT(v, i)] - 1; twp[VT(v, i)] = 0; mcc[VT(v, i)] = 0; kmm(v, tp)
  :: else -> skip
  fi
}
"""

SEMANTICS = r"""
hidden byte mq; hidden byte mr; hidden byte ao; hidden byte sg; hidden byte kf;
hidden byte nsq;   /* the mf() under way is a report whose 0 calls set_mce_nospec() */
/* the VM's own frame backs it (held), another (a spare HugeTLB page) or none (freed) */
#define OWN 1
#define SPARE 2
/* zap stage 2 of a whole VM (zap_gfn_range over everything) */
inline zap_vm(v) { FOREACH(spte[Q] = 0); hs[v] = 0 }
/* zap_gfn_range() over one page: its 4K SPTE and a huge SPTE over the folio (it overlaps) */
inline zap_page(v, p) { spte[p] = 0; hs[v] = 0 }
/* install_spte(): at the folio's level when the VM's folio is one HugeTLB folio (all of it
   private: the huge entry replaces a 4K one at its head), else at 4K; a policy that zaps
   only the failed subpage maps a claimed folio holding a failure at 4K (kvm_gmem_get_pfn) */
#define SUBPAGE_CAP(v) (unmap_stage2 == K_UNMAP_STAGE2_SUBPAGE && CLAIMED && bk[v] == OWN && (FRAME_HWP(v) || FRAME_TAB(v)))
inline map_spte(v, p) {
  if
  :: SPTE(v, p) -> skip
  :: !SPTE(v, p) && merged[v] && bk[v] != 0 && !SUBPAGE_CAP(v) -> hs[v] = 1; spte[(v) * NPG] = 0
  :: else -> spte[p] = 1
  fi
}
/* rec: poison_records() - the table, PG_hwpoison / raw list / isolation, a marked free folio */
inline derive(v) { FOREACH(rec[Q] = tab[Q] || hwp[Q] || (fst[v] == 2 && FRAME_HWP(v))) }
/* free_range(): merge the split folio (PG_hwpoison kept only with propagate_on_split), mark
   table records (mark_on_truncate, or mark_on_release at release), free to the pool; a marked
   folio is dissolved with isolate_on_free (S15), else stays on the free list, skipped (R55) */
/* free_huge_folio() of slot v's frame, truncated (the policy's marking done): a marked
   frame is isolated (isolate_on_free: dissolved, fst 3) or stays marked on the free list
   (fst 2, skipped by the allocation), an unmarked one goes to the free list's head */
inline frame_release(v, release) {
  if
  :: FRAME_HWP(v) && isolate_on_free == K_ISOLATE_ON_FREE_TRUE &&
     (mark_on_truncate == K_MARK_ON_TRUNCATE_TRUE || (release && mark_on_release == K_MARK_ON_RELEASE_TRUE)) -> fst[v] = 3
  :: FRAME_HWP(v) && !(isolate_on_free == K_ISOLATE_ON_FREE_TRUE &&
     (mark_on_truncate == K_MARK_ON_TRUNCATE_TRUE || (release && mark_on_release == K_MARK_ON_RELEASE_TRUE))) -> fst[v] = 2
  :: else -> fst[v] = 1; frame_free(v)
  fi
}
/* memory_failure() returns and drops its reference (gmem.mf_unpin): a frame truncated
   meanwhile is freed now */
inline mf_unpin(v) {
  if
  :: fst[v] == 4 -> frame_release(v, 0)
  :: fst[v] == 5 -> frame_release(v, 1)
  :: else -> skip
  fi;
  pin[v] = 0
}
inline free_folio(v, release) {
  if
  :: bk[v] == OWN ->
     if :: !merged[v] && propagate_on_split == K_PROPAGATE_ON_SPLIT_FALSE -> FOREACH(hwp[Q] = 0) :: else -> skip fi;
     if
     :: mark_on_truncate == K_MARK_ON_TRUNCATE_TRUE || (release && mark_on_release == K_MARK_ON_RELEASE_TRUE) ->
          FOREACH(hwp[Q] = hwp[Q] || tab[Q])
     :: else -> skip
     fi;
     if
     :: pin[v] -> fst[v] = 4 + release   /* memory_failure() holds it: freed by mf_unpin */
     :: else -> frame_release(v, release)
     fi
  :: bk[v] == SPARE -> spare_free()
  :: else -> skip
  fi;
  bk[v] = 0; merged[v] = 0; zap_vm(v);
  /* truncation unmaps present PTEs; a hwpoison entry stays until munmap or exit */
  if :: release -> FOREACH(pte[Q] = 0) :: else -> FOREACH(pte[Q] = (pte[Q] == 2 -> 2 : 0)) fi
}
/* kvm_gmem_get_folio() after a punch hole: dequeue_hugetlb_folio (the free list's head, the
   folio freed last, skipping PG_hwpoison folios: take_head, frame_slots);
   check_handed_out() */
inline realloc(v) {
  take_head(v);
  if
  :: fs == 1 ->
     fst[v] = 0; bk[v] = OWN; merged[v] = ALL_PRIV(v);
     /* check_handed_out(): a known failure handed out unmarked; the VM holds failed
        memory from now on (model_system._failed_pfns) */
     FOREACH(if :: pdet[Q] && !hwp[Q] -> m_reuse = 1; affected[v] = 1 :: else -> skip fi)
  :: fs == 2 -> nspare--; bk[v] = SPARE; merged[v] = ALL_PRIV(v)
  :: else -> skip
  fi;
  fs = 0
}
/* kill_vm(): zap stage 2, VM killed, VMM SIGKILLed: its files go, the folio is freed */
inline kill_vm(v) { zap_vm(v); vst[v] = 2; alive[v] = 0; free_folio(v, 1) }
/* kill_vm with the folio's free deferred to the end of the step that queued it (kf): the
   paths after it read neither the folio nor its frame (zap_vm commutes with the free), and
   SPIN bounds a d_step's length, which each inline expansion of free_folio counts against */
inline kill_mark(v) { zap_vm(v); vst[v] = 2; alive[v] = 0; kf = 1 }
/* the end of a step that may have queued a kill_mark (mf, the races stage MF_NOTIFY) */
inline free_marked(v) { if :: kf -> kf = 0; free_folio(v, 1) :: else -> skip fi }
/* set_mce_nospec() (inject.set_mce_nospec, R46): a machine-check report memory_failure()
   recovered takes the page out of the direct map; recorded for a page left without
   PG_hwpoison as kcore's check sees it (mf() of such a page returns 0: a claimed folio the
   policy keeps in a table; every other path flags the page or fails) */
inline NOSPEC(v, p) {
  if
  :: PAGE_HWP(v, p) -> skip
  :: else -> nsp[p] = 1
  fi
}
/* guest_on_mce(): the guest offlines the page; on AO its user is killed on access */
inline guest_mce(v, p, ao) {
  if
  :: GIGN(v) -> skip   /* careless / hostile guests ignore it; none reaches a confidential one */
  :: else -> goff[p] = 1; if :: ao -> gpk[p] = 1 :: else -> skip fi
  fi
}
/* a memory-failure SIGBUS (BUS_MCEERR_AR/AO, or kill_me_maybe's plain one) the VMM's main
   thread does not survive: the monitor counts it, sent to the VMM of a VM no failure touched,
   as sent to the wrong process, and its death as an unaffected VM going down (properties.py
   Monitor.fold, MF_CODES). A BUS_ADRERR (x86 do_sigbus for VM_FAULT_SIGBUS: a private page, an
   unusable guest_memfd, no frame to allocate) is not a memory-failure signal: sg_end's 3.
   A kill_mark: the step that sends it ends in free_marked */
inline sigbus_mark(v) {
  if :: !affected[v] -> m_wrong = 1; m_down = 1 :: else -> skip fi;
  kill_mark(v)
}
/* a SIGBUS to VM v's VMM by its disposition (VMM_SIG, state.py _queue, deliver_signals):
   QEMU's handler injects a vMCE (qemu.py kvm_on_sigbus; an AO without an address is
   ignored); the default action kills the VMM; SIG_IGN drops an AO, which send_sig_mceerr
   does not force, while a forced AR resets it to the default first (force_sig_mceerr,
   R35), so the VMM dies (a kill_mark: the caller ends in free_marked) */
inline vmm_ao(v, p) {
  if
  :: VMM_SIG(v) == SIG_HANDLER && HASHVA(v) -> guest_mce(v, p, 1)
  :: VMM_SIG(v) == SIG_HANDLER && !HASHVA(v) -> skip   /* si_addr 0: ignored */
  :: VMM_SIG(v) == SIG_IGNORE -> skip
  :: VMM_SIG(v) == SIG_DEFAULT -> sigbus_mark(v)
  fi
}
/* the end of an access whose paths end in a SIGBUS or the VMM's death (ev_vmm, ev_vmm_vcpu,
   kmm): each sets sg (1 an AR with its address: QEMU's handler injects a vMCE, any other
   disposition dies of it; 2 a memory-failure SIGBUS the VMM dies of, sigbus_kill; 3 a death
   that is not one: BUS_ADRERR, QEMU's exit(1)) and this
   carries it out, kill_vm expanded once instead of once per path (SPIN bounds the statements
   of a d_step, MAXDSTEP, and a --races stage runs a whole access in one) */
inline sg_end(v, p) {
  if
  :: sg == 1 && VMM_SIG(v) == SIG_HANDLER -> sg = 0; guest_mce(v, p, 0)
  :: sg == 1 && VMM_SIG(v) != SIG_HANDLER -> sg = 2
  :: else -> skip
  fi;
  if :: sg == 2 -> sg = 3; if :: !affected[v] -> m_wrong = 1; m_down = 1 :: else -> skip fi :: else -> skip fi;
  if :: sg == 3 -> sg = 0; kill_vm(v) :: else -> skip fi
}
/* policy_memory_failure() (claimed folios) and the HugeTLB path (mainline), AO or AR */
inline mf(v, p, ar, ao_probe) {
  if :: bk[v] == OWN -> affected[v] = 1 :: else -> skip fi;  /* the VM holding the pfn */
  mr = det[p];
  det[p] = 1;
  if
  :: bk[v] != OWN && (hwp[p] || fst[v] == 2) -> skip   /* already poisoned (-EHWPOISON) */
  :: bk[v] != OWN && !hwp[p] && fst[v] != 2 ->
     /* a free huge page (memory_failure's free-hugetlb path): marked and dissolved */
     hwp[p] = 1; if :: fst[v] != 0 -> dissolve_free(v) :: else -> skip fi
  :: bk[v] == OWN && CLAIMED ->
       tab[p] = 1;
       if :: record == K_RECORD_FOLIO -> hwp[p] = 1 :: else -> skip fi;
       if
       :: unmap_stage2 == K_UNMAP_STAGE2_SUBPAGE || (unmap_stage2 == K_UNMAP_STAGE2_FOLIO && !merged[v]) -> zap_page(v, p)
       :: unmap_stage2 == K_UNMAP_STAGE2_FOLIO && merged[v] -> zap_vm(v)
       :: unmap_stage2 == K_UNMAP_STAGE2_VM -> zap_vm(v)
       :: else -> skip
       fi;
       if
       :: unmap_host != K_UNMAP_HOST_NONE && pte[p] == 1 -> pte[p] = 2
       :: else -> skip
       fi;
       if
       :: vm_on_error == K_VM_ON_ERROR_KILL && alive[v] -> kill_mark(v)
       :: vm_on_error == K_VM_ON_ERROR_UNUSABLE -> unusable[v] = 1; zap_vm(v)
       :: else -> skip
       fi;
       /* consumed (AR, current alive): _kill_bound_vms() or _make_unusable(); SIGBUS to
          current (sigbus-*) is QEMU's vMCE, injected by consume() */
       if
       :: ar && alive[v] && consumed == K_CONSUMED_KILL_VM && vst[v] != 2 -> kill_mark(v)
       :: ar && alive[v] && consumed == K_CONSUMED_UNUSABLE && !unusable[v] ->
            unusable[v] = 1; zap_vm(v)
       :: else -> skip
       fi;
       /* unconsumed (AO): _kill_bound_vms() or _make_unusable() now; nobody is told */
       if
       :: !ar && unconsumed == K_UNCONSUMED_KILL_VM && vst[v] != 2 -> kill_mark(v)
       :: !ar && unconsumed == K_UNCONSUMED_UNUSABLE && !unusable[v] -> unusable[v] = 1; zap_vm(v)
       :: else -> skip
       fi;
       /* notify_vmm(): the first EARLY thread (honor_early) or the leader gets AO; QEMU
          injects a vMCE; the property wants an EARLY thread told */
       if
       :: !ar && unconsumed == K_UNCONSUMED_NOTIFY_VMM && alive[v] &&
          (honor_early == K_HONOR_EARLY_FALSE || VM_EARLY(v)) ->
            vmm_ao(v, p);
            if
            :: ao_probe && !mr && VM_EARLY(v) && honor_early == K_HONOR_EARLY_FALSE &&
               !LEADER_EARLY(v) -> m_untold = 1
            :: else -> skip
            fi
       :: else ->
            if :: !ar && ao_probe && !mr && VM_EARLY(v) -> m_untold = 1 :: else -> skip fi
       fi
  :: bk[v] == OWN && !CLAIMED && hwp[p] -> skip   /* already poisoned (-EHWPOISON) */
  :: bk[v] == OWN && !CLAIMED && !hwp[p] && merged[v] && FRAME_HWP(v) ->
       hwp[p] = 1   /* a new raw page of a poisoned HugeTLB folio: -EHWPOISON */
  :: bk[v] == OWN && !CLAIMED && !hwp[p] && !(merged[v] && FRAME_HWP(v)) ->
       hwp[p] = 1;
       if :: !ar && ao_probe && !mr && VM_EARLY(v) -> m_untold = 1 :: else -> skip fi
  fi;
  free_marked(v);
  /* uc_decode_notifier() / kill_me_never(): set_mce_nospec() once memory_failure() returned */
  if :: nsq && !ar -> NOSPEC(v, p) :: else -> skip fi;
  nsq = 0
}
inline ev_hw_error(v, p, scrub, ns) {
  err[p] = 1; if :: bk[v] == OWN -> affected[v] = 1 :: else -> skip fi;
  if :: scrub -> ao = (bk[v] == OWN); nsq = ns; mf(v, p, 0, ao) :: else -> skip fi
}
inline ev_scrub(v, p) {
  if :: err[p] -> ao = (bk[v] == OWN); nsq = 1; mf(v, p, 0, ao) :: else -> skip fi
}
/* the fault check (_failed_in): a split folio's pages are 4K folios, so folio and subpage
   agree; a merged one is one HugeTLB folio: its flag (FRAME_HWP) refuses all of it at folio
   granularity, its raw list only the page at subpage; a table record the same */
inline failed_in(v, p) {
  if
  :: bk[v] != OWN -> mr = 0
  :: bk[v] == OWN && !merged[v] -> mr = (tab[p] || hwp[p])
  :: bk[v] == OWN && merged[v] && !CLAIMED -> mr = FRAME_HWP(v)
  :: bk[v] == OWN && merged[v] && CLAIMED && check_granularity == K_CHECK_GRANULARITY_FOLIO ->
       mr = (FRAME_HWP(v) || FRAME_TAB(v))
  :: else -> mr = (hwp[p] || tab[p])
  fi
}
/* kvm_mmu_faultin_pfn() for a vCPU without an SPTE (kvm_gmem_get_pfn): allocation after a
   punch hole, the unusable file, the policy's check (_failed_in); an error is QEMU's "kvm run
   failed": the VM pauses (fo: the fault failed) */
inline faultin(v, p) {
  fo = 0;
  if
  :: bk[v] == 0 && !unusable[v] -> realloc(v)   /* unusable: -EHWPOISON first */
  :: else -> skip
  fi;
  if
  :: bk[v] == 0 -> vst[v] = 1; fo = 1   /* -ENOMEM: "kvm run failed", paused */
  :: bk[v] != 0 && unusable[v] -> vst[v] = 1; fo = 1
  :: bk[v] != 0 && !unusable[v] && (fault_check == K_FAULT_CHECK_TRUE || !CLAIMED) ->
       failed_in(v, p);
       if
       :: mr -> vst[v] = 1; fo = 1      /* -EHWPOISON: QEMU "kvm run failed", paused */
       :: else -> map_spte(v, p)
       fi
  :: else -> map_spte(v, p)
  fi
}
""" + MCE_INLINES + r"""/* do_guest_access() (KVM_RUN): the guest's own view first (an offlined page, a user killed on
   access), the vCPU's pending task work (R45), then up to three tries of the SPTE or
   faultin() and the load; a consumed error's task work runs before the vCPU enters again, and
   unless a vMCE stopped it (or the VM stopped) the guest re-executes the load. Written as one
   loop so that the task work and the fault path are expanded once (SPIN bounds the size of a
   d_step): round 0 is the pending task work, rounds 1-3 the tries */
inline ev_vcpu(v, p, wr, i) {
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
           :: !fo && bk[v] == OWN && err[p] && !wr -> mc(v, p, i); fo = 1
           :: else -> fo = 0
           fi
        fi;
        if :: fo -> tw_run(v, i) :: else -> skip fi;
        ag = fo && alive[v] && vst[v] == 0 && !panic && (rn == 0 || !goff[p]);
        rn++
     :: else -> break
     od
  fi
}
/* vcpu_mce: a vCPU takes the machine check through its SPTE now (do_machine_check_action).
   Being in guest mode, it entered the guest, and KVM ran its queued task work before the
   entry (M8, R45: xfer_to_guest_mode_handle_work -> resume_user_mode_work); the new machine
   check's task work waits */
inline ev_vcpu_mce(v, p, i) {
  tw_run(v, i);
  if
  :: vst[v] == 0 && alive[v] && !panic && SPTE(v, p) && bk[v] == OWN && err[p] -> mc(v, p, i)
  :: else -> skip
  fi
}
/* do_guest_run() (vmm/guest.py): up to ``rounds`` rounds of guest_round() by vCPUs lo..hi,
   each round first running the vCPUs' pending task work (R45), then their loads, every
   machine check queued before any task work runs (M7), then each consumer's task work (M8).
   stop: 0 a cooperative guest touches once; 1 a confidential one goes on while the load
   takes a machine check; 2 careless / hostile ones go on. Every guest stops once the page is
   offlined (or its user killed) or the VM stops */
#define GRUN(v) (vst[v] == 0 && alive[v] && !panic)
inline guest_run(v, p, lo, hi, rounds, stop) {
  gr = 1; rn = 0;
  do
  :: gr && rn < rounds && GRUN(v) && !goff[p] && !gpk[p] ->
       rn++; rc = 0; ph = 1; vi = lo;
       do
       :: vi > hi && ph < 3 -> ph++; vi = lo
       :: vi > hi && ph == 3 -> break
       :: vi <= hi && ph != 2 ->   /* one expansion of tw_run for phases 1 and 3 */
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
/* kill_me_maybe() (R46) for the page: memory_failure(pfn, MF_ACTION_REQUIRED), the HugeTLB
   path (mainline) or the policy's AR path, and the SIGBUS to the vCPU thread, which QEMU
   turns into a vMCE. A frame that no longer backs the VM is memory_failure()'s alone */
inline kmm(v, p) {
  ko = (bk[v] == OWN);
  if
  :: !ko || CLAIMED ->
       mf(v, p, 1, 0);
       if
       :: ko && CLAIMED && alive[v] && vst[v] == 0 && (consumed == K_CONSUMED_SIGBUS_CURRENT ||
          consumed == K_CONSUMED_SIGBUS_VMM) ->
            /* si_addr (sigbus_addr): the HVA (when the memslot has one) gives QEMU's vMCE;
               NULL exits QEMU (exit(1), Q4); a SIGBUS without MCE payload is re-raised (Q2),
               fatal (sg_end's 2) */
            if
            :: VMM_SIG(v) != SIG_HANDLER -> sg = 2   /* forced: the default action */
            :: VMM_SIG(v) == SIG_HANDLER && sigbus_addr == K_SIGBUS_ADDR_HVA && HASHVA(v) ->
                 guest_mce(v, p, 0)
            :: else ->
               if
               :: sigbus_addr == K_SIGBUS_ADDR_PLAIN && !affected[v] -> m_wrong = 1; m_down = 1
               :: else -> skip
               fi;
               sg = 3
            fi
       :: else -> skip
       fi
  :: else ->
       /* the HugeTLB path: a new raw page of a poisoned folio joins its raw list
          (-EHWPOISON); an already poisoned page: kill_accessing_process() finds the VMM's
          mapping and sends SIGBUS AR with its address (QEMU's vMCE), or no mapping and no
          signal; a first failure of the in-use folio kills the VM */
       det[p] = 1;
       if
       :: hwp[p] || (merged[v] && FRAME_HWP(v)) ->
            hwp[p] = 1; if :: pte[p] == 1 -> sg = 1 :: else -> skip fi
       :: else -> pdet[p] = 1; hwp[p] = 1; sg = 3
       fi
  fi;
  sg_end(v, p)
}
/* the VMM's main thread reads (or, wr, writes) guest memory through its mapping: a missing PTE is faulted in
   (kvm_gmem_fault_user: unusable, allocation, the policy's table check; then
   __do_fault's PG_hwpoison check, R41: a poisoned 4K piece is not evicted, VM_FAULT_HWPOISON); a hwpoison entry, a
   refused fault or a consumed error gives it SIGBUS, which QEMU's main thread does not
   survive (kvm_on_sigbus aborts on AR, a non-MCE SIGBUS is re-raised) */
inline ev_vmm(v, p, wr) {
  if
  :: !alive[v] || vst[v] == 3 -> skip
  :: pte[p] == 2 -> sg = 2
  :: pte[p] == 0 && (unusable[v] || priv[p]) -> sg = 3   /* kvm_gmem_fault_user: SIGBUS */
  :: else ->
     if :: pte[p] == 0 && bk[v] == 0 -> realloc(v) :: else -> skip fi;
     if
     :: bk[v] == 0 -> sg = 3
     :: pte[p] == 0 && bk[v] == OWN && CLAIMED && fault_check == K_FAULT_CHECK_TRUE && tab[p] -> sg = 2
     :: pte[p] == 0 && bk[v] == OWN && hwp[p] -> sg = 2   /* __do_fault: VM_FAULT_HWPOISON */
     :: else ->
        pte[p] = 1;
        if
        :: bk[v] == OWN && err[p] && !wr ->   /* a store does not consume the error */
           affected[v] = 1;
           consume(p);   /* the VMM's load: the same window as a vCPU's */
           if
           :: CLAIMED -> mf(v, p, 1, 0)
           :: else -> det[p] = 1; hwp[p] = 1
           fi;
           if :: alive[v] -> sg = 2 :: else -> skip fi
        :: else -> skip
        fi
     fi
  fi;
  sg_end(v, p)
}
/* do_kernel_access() (model/kvm/kvm.py) for one user of the inventory: the page is reached
   through the VMM's page tables (hva: a hwpoison entry stops the uaccess, a missing page is
   faulted in as the VMM's own access would) or by pfn: the guest_memfd folio, mapped by
   the VMM or not (kq: 1 the VM's
   own frame, 2 a spare one, which holds no error); its check skips it (flag: PG_hwpoison of
   the page or of its HugeTLB folio; raw-flag: that struct page's, the folio's on its head:
   in use, the shared pages are 4K folios with their own flag; a marked free frame (fst 2) is
   one HugeTLB folio, flagged on its head);
   a machine check in the copy panics (no fixup, R47), calls memory_failure(pfn, 0) (copyin,
   copy_mc_queue: R3) or ends the copy silently (copy_mc) */
hidden byte kq;
inline ev_kacc(v, p, head, hva, chk, rcv, gm, nf, ns) {
  kq = 0;
  if
  :: hva && pte[p] == 1 -> kq = (bk[v] == OWN -> 1 : 2)
  :: hva && pte[p] == 0 && alive[v] && vst[v] != 3 && !unusable[v] && !priv[p] ->
     if :: bk[v] == 0 -> realloc(v) :: else -> skip fi;
     if
     :: bk[v] == 0 -> skip
     :: bk[v] == OWN && CLAIMED && fault_check == K_FAULT_CHECK_TRUE && tab[p] -> skip
     :: bk[v] == OWN && hwp[p] -> skip      /* __do_fault: VM_FAULT_HWPOISON, the uaccess fails */
     :: else -> pte[p] = 1; kq = (bk[v] == OWN -> 1 : 2)
     fi
  :: !hva && priv[p] -> kq = (bk[v] == OWN -> 1 : (bk[v] == SPARE -> 2 : 0))  /* the file's folio */
  :: !hva && !priv[p] && pte[p] == 0 -> kq = (bk[v] == OWN -> 1 : (bk[v] == SPARE -> 2 : 0))
     /* shared memory of an mmap-able guest_memfd is the same folio: a physical reader
        reaches it whether or not the VMM maps it (kvm.py _hva_maps_gmem) */
  :: !hva && !priv[p] && pte[p] == 2 -> kq = 1
  :: !hva && !priv[p] && pte[p] == 1 -> kq = (bk[v] == OWN -> 1 : 2)
  :: else -> skip
  fi;
  if :: !gm && (kq == 2 || (kq == 1 && bk[v] == OWN)) -> kq = 0 :: else -> skip fi;
  if
  :: kq == 1 && chk == 1 && PAGE_HWP(v, p) -> kq = 0
  :: kq == 1 && nf && nsp[p] -> kq = 0   /* out of the direct map: the nofault copy reads zeros */
  :: kq == 1 && chk == 2 && (bk[v] == OWN && merged[v]) && head && FRAME_HWP(v) -> kq = 0
  :: kq == 1 && chk == 2 && !(bk[v] == OWN && merged[v]) &&
     ((fst[v] != 2 && hwp[p]) || (fst[v] == 2 && head)) -> kq = 0
  :: else -> skip
  fi;
  if
  :: kq == 1 && err[p] && rcv == 0 -> panic = 1; if :: det[p] -> m_panic = 1 :: else -> skip fi;
     if :: bk[v] == OWN -> affected[v] = 1 :: else -> skip fi
  :: kq == 1 && err[p] && rcv == 1 -> nsq = ns; mf(v, p, 0, 0)
  :: else -> skip
  fi;
  kq = 0
}
/* do_set_attributes() (model/kvm/kvm.py): zap the range's SPTEs, set the attribute;
   gmem_convert() (model/kvm/gmem.py): a page made private loses its present host PTE (a
   hwpoison entry stays) */
inline convert_page(v, p, topriv) {
  zap_page(v, p); priv[p] = topriv;
  if :: topriv -> pte[p] = (pte[p] == 2 -> 2 : 0) :: else -> skip fi
}
/* ... then the folio: gmem_merge() once every page is private, gmem_split() of a merged
   folio when a page becomes shared (R87). PG_hwpoison moves between the raw pages and the
   folio (flag and raw list) only with propagate_on_split; without it the split drops the
   folio's and the merge the raw pages' (the record is lost). A spare frame holds no error */
inline convert_folio(v, topriv) {
  if
  :: topriv && bk[v] != 0 && !merged[v] && ALL_PRIV(v) -> merged[v] = 1;
     if :: bk[v] == OWN && propagate_on_split == K_PROPAGATE_ON_SPLIT_FALSE -> FOREACH(hwp[Q] = 0) :: else -> skip fi
  :: !topriv && bk[v] != 0 && merged[v] -> merged[v] = 0;
     if :: bk[v] == OWN && propagate_on_split == K_PROPAGATE_ON_SPLIT_FALSE -> FOREACH(hwp[Q] = 0) :: else -> skip fi
  :: else -> skip
  fi
}
/* a vCPU thread of the VMM loads or stores through the mapping: it takes SIGBUS
   asynchronously (kvm_init_cpu_signals), so an MCE SIGBUS with a guest address becomes a vMCE
   QEMU injects (kvm_arch_on_sigbus_vcpu), one without an address exits QEMU (exit(1)) and a
   plain SIGBUS is re-raised (fatal); user_access() retries the load while no signal is
   pending. Every path that ends in a SIGBUS or the VMM's death sets sg, and the end of the
   inline carries it out (sg_end: the vMCE, sigbus_kill and kill_vm expanded once, not per path: SPIN
   bounds a d_step's length, MAXDSTEP statements, and a --races host-fault stage runs this
   whole inline in one d_step) */
inline ev_vmm_vcpu(v, p, wr) {
  if
  :: !alive[v] || vst[v] == 3 -> skip
  :: pte[p] == 2 -> sg = 1            /* the hwpoison entry: AR with its address */
  :: pte[p] == 0 && (unusable[v] || priv[p]) -> sg = 3   /* BUS_ADRERR */
  :: else ->
     if :: pte[p] == 0 && bk[v] == 0 -> realloc(v) :: else -> skip fi;
     if
     :: bk[v] == 0 -> sg = 3   /* BUS_ADRERR */
     :: pte[p] == 0 && bk[v] == OWN && CLAIMED && fault_check == K_FAULT_CHECK_TRUE && tab[p] ->
          sg = 1                      /* VM_FAULT_HWPOISON: AR */
     :: pte[p] == 0 && bk[v] == OWN && hwp[p] -> sg = 1   /* __do_fault's check */
     :: else ->
        pte[p] = 1;
        if
        :: bk[v] == OWN && err[p] && !wr ->
           affected[v] = 1;
           consume(p);   /* the VMM's load: the same window as a vCPU's */
           if
           :: CLAIMED ->
              mf(v, p, 1, 0);
              if
              :: alive[v] && (consumed == K_CONSUMED_SIGBUS_CURRENT || consumed == K_CONSUMED_SIGBUS_VMM) ->
                 if
                 :: VMM_SIG(v) != SIG_HANDLER -> sg = 2   /* forced: the default action */
                 :: VMM_SIG(v) == SIG_HANDLER && sigbus_addr == K_SIGBUS_ADDR_HVA -> guest_mce(v, p, 0)
                 :: VMM_SIG(v) == SIG_HANDLER && sigbus_addr == K_SIGBUS_ADDR_NONE -> sg = 3   /* exit(1) */
                 :: VMM_SIG(v) == SIG_HANDLER && sigbus_addr == K_SIGBUS_ADDR_PLAIN -> sg = 2   /* re-raised */
                 fi
              :: alive[v] && consumed == K_CONSUMED_UNUSABLE && pte[p] == 2 -> sg = 1
              :: alive[v] && consumed == K_CONSUMED_UNUSABLE && pte[p] != 2 -> cons[p] = 2
              :: else -> skip
              fi
           :: !CLAIMED && hwp[p] -> det[p] = 1; sg = 1   /* kill_accessing_process */
           :: !CLAIMED && !hwp[p] -> det[p] = 1; hwp[p] = 1; sg = 2  /* kill_me_maybe */
           fi
        :: else -> skip
        fi
     fi
  fi;
  sg_end(v, p)
}
/* kvm_gmem_punch_hole(): zap, truncate (through the VMM's fd) */
inline ev_punch(v) {
  if :: alive[v] && vst[v] != 3 && !closed[v] -> free_folio(v, 0) :: else -> skip fi
}
/* fallocate(ALLOCATE) through the VMM's fd: a punched VM gets a huge page again */
inline ev_realloc(v) {
  if :: alive[v] && vst[v] != 3 && !closed[v] && bk[v] == 0 -> realloc(v) :: else -> skip fi
}
/* the VMM closes its fd: its mapping still holds the file, so kvm_gmem_release waits for the
   munmap of a release */
inline ev_close(v) { closed[v] = 1 }
/* munmap, close (kvm_gmem_release, eviction), vm_destroy */
inline ev_release(v) {
  free_folio(v, 1);
  vst[v] = 3
}
"""
