"""The memfail model as a checkable System: a Host per state, the config's event alphabet as labels.

Each step copies the Host from its parent's snapshot (``freeze``), applies the label's actions
and folds the new trace events into the property Monitor; fingerprints come from a canonical
encoding of the Host (``encode``), cached by the snapshot's digest.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from memfail.check import races
from memfail.check.config import CheckConfig, scaled_size
from memfail.check.encode import host_encoding
from memfail.check.events import (
    EVENTS,
    Label,
    StepSpec,
    host_mapped,
    kvm_model,
    labels_of,
    mem_fd,
    thaw_params,
)
from memfail.check.freeze import blob_key, clone_host, freeze, thaw
from memfail.check.properties import PROPERTIES, Context, Monitor, PropertyDef
from memfail.check.system import Property, canonical_bytes, fingerprint_bytes
from memfail.model.actions import parse_action
from memfail.model.errors import ModelInputError
from memfail.model.host import HANDLERS
from memfail.model.kernel.fs import GMEM
from memfail.model.trace import Event, MemoryFailureCall, PoisonConsumed, PolicyEvent

# The guest_memfd policy hooks that report acting with a ``PolicyEvent`` (its ``hook`` field),
# as src/memfail/model/kvm/gmem.py emits them: the policy's memory_failure() path
# (policy_memory_failure), kvm_gmem_error_folio (a guest_memfd made unusable), a HugeTLB folio
# split or merged by conversion, and the folios freed by punch hole or inode release
# (_free_range with why="punch"/"release"). Coverage reports those no explored step fired.
POLICY_HOOKS: tuple[str, ...] = ("memory_failure", "error_folio", "split", "merge", "punch",
                                 "release")


class ModelState:
    """One explored state. ``events`` (what the last step emitted) is not part of the state.

    The host is kept as a Host object, a snapshot (``freeze``) or both: the snapshot is made
    once (for the fingerprint) and serves as the source of every successor's copy and as the
    form a state travels in between processes, where the Host is rebuilt on first use."""

    __slots__ = ("_host", "blob", "counts", "errors", "events", "hfp", "inflight", "monitor")

    def __init__(self, host: Any, counts: tuple[int, ...], errors: int, monitor: Monitor,
                 events: tuple[Event, ...] = (),
                 inflight: tuple[tuple[Any, str, tuple[Any, ...], tuple[Any, ...]], ...] = (),
                 blob: bytes | None = None) -> None:
        self._host = host
        self.counts = counts      # how often each capped alphabet entry fired along the path
        self.errors = errors      # hardware errors injected along the path
        self.monitor = monitor
        self.events = events
        # --races: events in flight, each (label, next stage, context, locks it holds now)
        self.inflight = inflight
        self.blob = blob
        self.hfp: int | None = None  # fingerprint of the host's canonical encoding, once known

    @property
    def host(self) -> Any:
        if self._host is None:
            assert self.blob is not None
            self._host = thaw(self.blob)
        return self._host

    def frozen(self) -> bytes:
        """The host's snapshot (made on first use; the host must not change afterwards)."""
        if self.blob is None:
            self.blob = freeze(self._host)
        return self.blob

    def compact(self) -> ModelState:
        """Keep only the snapshot: a frontier state then costs its ~7 KB pickle instead of a
        graph of Python objects (which the cyclic garbage collector would traverse again and
        again); the Host is rebuilt once when the state is expanded."""
        self.frozen()
        self._host = None
        return self

    def fresh_host(self) -> Any:
        """A new, independent copy of the host, from the snapshot."""
        try:
            return thaw(self.frozen())
        except (pickle.PicklingError, TypeError, AttributeError):
            return clone_host(self.host)

    def __reduce__(self) -> tuple[Any, ...]:
        return _state, (self.frozen(), self.counts, self.errors, self.monitor, self.inflight,
                        self.hfp)


FP_CACHE_SIZE = 1 << 20  # host fingerprints cached per process (16-byte keys)


def _state(blob: bytes, counts: tuple[int, ...], errors: int, monitor: Monitor,
           inflight: tuple[Any, ...], hfp: int | None = None) -> ModelState:
    s = ModelState(None, counts, errors, monitor, (), inflight, blob)
    s.hfp = hfp
    return s


def _normalise_mmu_seq(host: Any, inflight: list[Any]) -> list[Any]:
    """Reset every VM's mmu_invalidate_seq to 0 after a step. The model only counts it up;
    what matters is whether a fault in flight (--races) took its snapshot before the last
    invalidation, kept as 0 (current) or -1 (stale). Without this the counter would make
    every zap a new state and the state space infinite."""
    vms = host.ext.get("vms", {}) if hasattr(host, "ext") else {}
    out = []
    for label, stage, ctx, held in inflight:
        if stage == "fault.map" and ctx:
            vm = vms.get(dict(label[1]).get("vm"))
            if vm is not None:
                ctx = (0 if ctx[0] == vm.mmu_seq else -1, *ctx[1:])
        out.append((label, stage, ctx, held))
    for vm in vms.values():
        vm.mmu_seq = 0
    return out


def _check(pd: PropertyDef, s: ModelState) -> str | None:
    return pd.check(s.host, s.monitor)


def setup_steps(cfg: CheckConfig) -> list[StepSpec]:
    """Scenario steps that build the configuration's VMs and guest memory before step 0.

    With the KVM model: vm_create, gmem_create, the VMM's mapping (MMAP guest_memfd), a memslot
    at GPA 0, and a guest store to every page (the guest has touched its memory). Without it, or
    for a VM without guest_memfd, a HugeTLB memfd mapped by the VMM (the S10/S11 baseline).
    """
    steps: list[StepSpec] = []
    gmems = {g.name: g for g in cfg.guest_memfd}
    for vm in cfg.vms:
        g = gmems.get(vm.gmem) if vm.gmem else None
        size = scaled_size(cfg, g.size if g else vm.memory)
        fd = mem_fd(vm)
        ram = f"{vm.name}.ram"
        if kvm_model():
            create: dict[str, Any] = {"vm": vm.name, "vmm": vm.vmm, "type": vm.type,
                                      "vcpus": vm.vcpus}
            if vm.behaviour != "cooperative":
                create["behaviour"] = vm.behaviour  # guest behaviours (docs/mce.md)
            steps.append(("vm_create", create))
        if kvm_model() and g is not None:
            steps.append(("gmem_create", {"vm": vm.name, "fd": fd, "size": size,
                                          "flags": list(g.flags), "backing": g.backing}))
            mapped = host_mapped(cfg, vm)
            if mapped:
                steps.append(("mmap", {"proc": vm.vmm, "name": ram, "size": size, "fd": fd,
                                       "shared": True}))
            slot: dict[str, Any] = {"vm": vm.name, "gpa": 0, "size": size, "gmem": fd}
            if mapped:
                slot["hva"] = ram
            steps.append(("memslot", slot))
            for page in range(size // 4096):
                steps.append(("guest_access", {"vm": vm.name, "gpa": page * 4096,
                                               "op": "write"}))
            continue
        args: dict[str, Any] = {"proc": vm.vmm, "name": fd, "size": size}
        if (g.backing if g else "2M") != "4K":
            args |= {"hugetlb": True, "huge": g.backing if g else "2M"}
        steps.append(("memfd_create", args))
        steps.append(("mmap", {"proc": vm.vmm, "name": ram, "size": size, "fd": fd,
                               "shared": True, "populate": True}))
        if kvm_model():
            steps.append(("memslot", {"vm": vm.name, "gpa": 0, "size": size, "hva": ram}))
    for raw in cfg.setup:
        (key, args), = raw.items()
        steps.append((key, dict(args or {})))
    return steps


class ModelSystem:
    """``System`` over the memfail Host for one configuration and one policy."""

    def __init__(self, config: CheckConfig, policy: str | None, races: bool = False) -> None:
        self.config = config
        self.policy = policy
        self.races = races
        self.name = policy or "no-policy"
        self.ctx = Context(
            vmm_of={v.name: v.vmm for v in config.vms},
            early={p.name: tuple(t for t, k in p.mce_kill.items() if k == "early")
                   for p in config.processes})
        self.pfn_of: dict[tuple[Any, Any], int] = {}
        self.entries: list[tuple[int, Label]] = []
        self.unavailable: list[Label] = []  # labels the model cannot carry out yet
        for i, e in enumerate(config.events):
            for label in labels_of(e.event, e.params):
                if self.expand(label):
                    self.entries.append((i, label))
                else:
                    self.unavailable.append(label)
        self._entry_of = {label: i for i, label in reversed(self.entries)}
        selected = config.properties
        self._props = [p for p in PROPERTIES if selected is None or p.name in selected]
        self._initial: ModelState | None = None
        self._fp_cache: dict[bytes, int] = {}

    # ------------------------------------------------------------------ building blocks
    def expand(self, label: Label) -> list[StepSpec]:
        """The model actions of one label (empty when the model lacks what it needs)."""
        params = thaw_params(label)
        params["_pfn"] = self.pfn_of.get((params.get("vm"), params.get("page")))
        return EVENTS[label[0]].expand(self.config, params)

    def _frames(self, host: Any) -> dict[tuple[Any, Any], int]:
        """(vm, page) -> the pfn backing it, from the page cache of the VM's guest-memory
        file, however the VM still holds it: the VMM's fd, its mapping of the file (vm_file)
        or the memslot's guest_memfd binding. A frame that no longer appears here (released,
        punched out) no longer holds the VM's memory."""
        out: dict[tuple[Any, Any], int] = {}
        kvm_vms = host.ext.get("vms", {})
        for vm in self.config.vms:
            proc = host.processes.get(vm.vmm)
            inodes = []
            if proc is not None:
                f = proc.fds.get(mem_fd(vm))
                if f is not None:
                    inodes.append(f.inode)
                region = proc.regions.get(f"{vm.name}.ram")
                if region is not None and region.inode is not None:
                    inodes.append(region.inode)
            kvm_vm = kvm_vms.get(vm.name)
            if kvm_vm is not None:
                inodes += [s.gmem for s in kvm_vm.slots if s.gmem is not None and s.bound]
            seen: set[int] = set()
            for inode in inodes:
                if id(inode) in seen:
                    continue
                seen.add(id(inode))
                # A hugetlbfs page cache indexes huge folios in folio units; guest_memfd and
                # the others index by page (a huge folio at the index of its first page).
                unit = inode.kind != GMEM
                for index, folio in inode.pages.items():
                    first = index * folio.nr_pages if unit else index
                    for i in range(folio.nr_pages):
                        out.setdefault((vm.name, first + i), folio.pfn + i)
        return out

    def config_size(self, vm: Any) -> int | str:
        g = next((g for g in self.config.guest_memfd if g.name == vm.gmem), None)
        return g.size if g is not None else vm.memory

    def new_host(self) -> Any:
        from memfail.model.host import Host, HostConfig
        from memfail.model.units import Geometry

        c = self.config
        hc = HostConfig(memory=c.host.memory, hugepages={str(k): v for k, v in c.host.hugepages.items()},
                        sysctl=dict(c.host.sysctl), profile=c.profile, policy=self.policy,
                        geometry=Geometry.scaled(c.geometry.pmd_order, c.geometry.pud_order))
        host = Host(hc)
        for p in c.processes:
            host.apply(parse_action("spawn", {"proc": p.name, "threads": p.threads}))
            if p.sigbus != "default":
                host.apply(parse_action("sigaction", {"proc": p.name, "sigbus": p.sigbus}))
            for t, pol in p.mce_kill.items():
                host.apply(parse_action("prctl", {"proc": p.name, "thread": t, "op": "set",
                                                  "policy": pol}))
        for key, args in setup_steps(c):
            res = host.apply(parse_action(key, args))
            if res.errno is not None:
                raise RuntimeError(f"set-up step {key} {args} failed with {res.errno}; "
                                   "check the configuration's host, vms and setup")
        return host

    # ------------------------------------------------------------------ System
    def initial(self) -> ModelState:
        kvm_model()  # registers every handler in this process first
        if self._initial is None:
            host = self.new_host()
            self.pfn_of = self._frames(host)
            host.trace.events = []
            _normalise_mmu_seq(host, [])
            self._initial = ModelState(host, (0,) * len(self.config.events), 0, Monitor())
        return self._initial

    def enabled(self, s: ModelState) -> Sequence[Any]:
        if s.host.panicked:
            return []
        out = []
        busy = {op[0] for op in s.inflight}
        held = frozenset(lock for op in s.inflight for lock in op[3])
        for i, label in self.entries:
            spec = self.config.events[i]
            if spec.limit is not None and s.counts[i] >= spec.limit:
                continue
            if EVENTS[label[0]].error and s.errors >= self.config.bounds.errors:
                continue
            if self.races:
                if label in busy:
                    continue
                first = races.first_stage(self.expand(label), label[0], s.host)
                need = races.stage_needs(first[0]) if first else races.ATOMIC_NEEDS[label[0]]
                if races.conflicts(need, held):
                    continue
            out.append(label)
        for j, (label, stage, _ctx, _held) in enumerate(s.inflight):
            others = frozenset(lock for k, op in enumerate(s.inflight) if k != j
                               for lock in op[3])
            if not races.conflicts(races.stage_needs(stage), others):
                out.append(races.continuation(label, stage))
        return out

    def step(self, s: ModelState, label: Any) -> ModelState:
        kvm_model()  # a worker process registers every handler before its first step
        return self._step(s, label, s.fresh_host(), lambda: s.host, self._frames(s.host))[0]

    def successors(self, s: ModelState, labels: Sequence[Any]) -> Iterator[ModelState]:
        """``step(s, label)`` for each label, working on one Host in place: a step that leaves
        the Host as it was (its snapshot is the parent's, byte for byte: more than half the
        steps of the standard configuration) hands it on to the next label, and a new copy is
        made only after a step that changed it. The parent keeps its value (its snapshot); the
        Host as it was before the step is rebuilt, once, only if a step needs it."""
        kvm_model()
        blob = s.frozen()
        host = s.host
        frames = self._frames(host)
        s._host = None  # the working copy is no longer the parent's
        before: list[Any] = []

        def pre() -> Any:
            if not before:
                before.append(thaw(blob))
            return before[0]

        base = b""
        for label in labels:
            if host is None:
                host = thaw(blob)
                base = b""
            if not base:
                # the working copy's own snapshot: a round trip through pickle may order a
                # set differently or share a string less, so compare with this, not ``blob``
                base = freeze(host)
            t, clean = self._step(s, label, host, pre, frames)
            if clean and t.frozen() == base:
                t._host = None  # unchanged: the next label works on the same Host
                t.blob = base
                t.hfp = s.hfp   # and its canonical encoding is the parent's
            else:
                host = None     # the successor owns it now (or it is dirty)
            yield t

    def _step(self, s: ModelState, label: Any, host: Any, pre: Callable[[], Any],
              frames: dict[tuple[Any, Any], int]) -> tuple[ModelState, bool]:
        """The successor of ``s`` by ``label``, made by mutating ``host`` (a copy of s's Host);
        ``pre()`` gives s's Host before the step, read only, and ``frames`` its guest frames
        (``_frames``). Also says whether ``host`` is the
        successor's Host (False when the step did not happen and ``host`` is left dirty)."""
        origin = races.origin(label)
        inflight = list(s.inflight)
        started = True
        if races.is_continuation(label):
            started = False
            j = next(k for k, op in enumerate(inflight) if op[0] == origin)
            _, stage, ctx, _held = inflight.pop(j)
            self._stage(host, origin, stage, ctx, inflight, j)
        elif self.races and (first := races.first_stage(self.expand(label), label[0], host)):
            self._stage(host, label, first[0], first[1], inflight, len(inflight))
        else:
            self._atomic(host, label)
        events = tuple(host.trace.events)
        host.trace.events = []
        if inflight and any(isinstance(e, MemoryFailureCall) for e in events) and \
                not (races.is_continuation(label) and label[1][1][1] == "mf.notify") and \
                any(races.mf_waits_for(op[3]) for op in inflight if op[0] != origin):
            # memory_failure() would wait for the mf_mutex or folio lock another event
            # holds: this step cannot happen now (it runs after that event; docs/check.md)
            return ModelState(None, s.counts, s.errors, s.monitor, (), s.inflight,
                              s.frozen()), False
        inflight = _normalise_mmu_seq(host, inflight)
        params = thaw_params(origin)
        event = EVENTS[origin[0]]
        ao = origin[0] == "scrub" or (origin[0] == "hw_error" and params.get("detect") != "latent")
        vm = params.get("vm")
        pfn = self.pfn_of.get((vm, params.get("page")))
        if pfn is not None and pfn not in frames.values():
            vm = None  # the frame no longer holds this VM's memory (released, punched)
        holding = _vms_holding(host, events)
        if any(isinstance(e, MemoryFailureCall | PoisonConsumed) for e in events):
            holding |= _vms_holding(pre(), events)  # owners before the step too
        mon = s.monitor.fold(self.ctx, events, vm, event.error, ao, also_affected=holding)
        counts, errors = s.counts, s.errors
        if started:
            i = self._entry_of[origin]
            if self.config.events[i].limit is not None:  # only capped entries need counting
                counts = (*counts[:i], counts[i] + 1, *counts[i + 1:])
            errors += int(event.error)
        return ModelState(host, counts, errors, mon, events,
                          tuple(sorted(inflight, key=repr))), True

    def _atomic(self, host: Any, label: Any) -> None:
        """The label's model actions, one after the other, as one step."""
        for key, args in self.expand(label):
            action = parse_action(key, args)
            if type(action) not in HANDLERS:
                raise RuntimeError(f"the model has no handler for {key!r} in this process")
            try:
                host.apply(action)
            except ModelInputError:
                break  # not possible in this state (the fd is closed, ...): a no-op step
            if host.panicked:
                break

    def _stage(self, host: Any, label: Any, stage: str, ctx: tuple[Any, ...],
               inflight: list[Any], at: int) -> None:
        """Run one --races stage; put the event back in flight at ``at`` if it goes on."""
        nxt, nctx = races.run_stage(self.expand(label), host, stage, ctx)
        if nxt is not None and not host.panicked:
            held = tuple(sorted(races.stage_carries(stage)))
            inflight.insert(at, (label, nxt, nctx, held))

    def fingerprint(self, s: ModelState) -> int:
        """blake2b of the host's canonical encoding's fingerprint, the counts, the error count,
        the monitor's canonical bytes and the events in flight. The host part is kept with the
        state (and travels with it between processes); a step that leaves the host as it was
        inherits it, and otherwise it is cached per process by the snapshot's digest, so a
        step that leaves the host as some earlier state had it skips the encoding."""
        hfp = s.hfp
        if hfp is None:
            try:
                key: bytes | None = blob_key(s.frozen())
            except (pickle.PicklingError, TypeError, AttributeError):
                key = None
            hfp = self._fp_cache.get(key) if key is not None else None
            if hfp is None:
                hfp = fingerprint_bytes(host_encoding(s.host))
                if key is not None:
                    if len(self._fp_cache) >= FP_CACHE_SIZE:
                        self._fp_cache.clear()
                    self._fp_cache[key] = hfp
            s.hfp = hfp
        head = b"%d|%s|%d|" % (hfp, ",".join(map(str, s.counts)).encode(), s.errors)
        return fingerprint_bytes(head + s.monitor.key_bytes() +
                                 (canonical_bytes(s.inflight) if s.inflight else b""))

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fp_cache"] = {}  # per process
        return state

    def compact(self, s: ModelState) -> ModelState:
        """The state as the frontier keeps it (its snapshot only; see ModelState.compact)."""
        return s.compact()

    def properties(self) -> Sequence[Property]:
        return [Property(p.name, p.doc, p.concern, functools.partial(_check, p))
                for p in self._props]

    # ------------------------------------------------------------------ optional
    def alphabet(self) -> Sequence[str]:
        return list(dict.fromkeys(e.event for e in self.config.events))

    def label_kind(self, label: Any) -> str:
        return str(races.origin(label)[0])

    def coverage(self, s: ModelState) -> list[str]:
        return sorted({f"{e.hook}" for e in s.events if isinstance(e, PolicyEvent)})

    def hooks(self) -> Sequence[str]:
        """Every policy hook the model reports as a ``PolicyEvent`` (``POLICY_HOOKS``)."""
        return list(POLICY_HOOKS)

    def render(self, s: ModelState) -> dict[str, str]:
        """A flat view for diff-style traces: meminfo, mf stats, processes, PTEs, monitor."""
        h = s.host
        out: dict[str, str] = {}
        for k, v in h.meminfo().items():
            out[f"meminfo.{k}"] = str(v)
        for k, v in h.mf_stats().items():
            out[f"mf_stats.{k}"] = str(v)
        for p in h.processes_in_order():
            out[f"proc.{p.comm}"] = p.state if p.exit_signal is None else \
                f"{p.state} (signal {p.exit_signal})"
            for t in p.threads:
                if t.pending is not None:
                    out[f"proc.{p.comm}.{t.name}.pending"] = f"SIGBUS code {t.pending.si_code}"
            if p.mm is not None:
                for addr, pte in sorted(p.mm.ptes.items()):
                    out[f"pte.{p.comm}.{h.addr_rel(p.comm, addr)}"] = \
                        f"{pte.kind} pfn={pte.pfn:#x}"
        out["hw_errors"] = " ".join(f"{x:#x}" for x in sorted(h.phys.hw_errors))
        out["hwpoison"] = " ".join(f"{x:#x}" for x in sorted(h.phys.hwpoison))
        m = s.monitor
        for k, v in (("consumed", dict(m.consumed)), ("affected", sorted(m.affected))):
            out[f"monitor.{k}"] = str(v)
        if h.panicked:
            out["panic"] = str(h.panicked)
        return out


def _vms_holding(host: Any, events: tuple[Any, ...]) -> frozenset[str]:
    """VMs whose memory holds a pfn that memory_failure() handled or a CPU consumed in this
    step: a frame that was free when its error appeared may back a VM by the time it is found."""
    from memfail.model.outcomes import _owners

    pfns = {e.pfn for e in events if isinstance(e, MemoryFailureCall | PoisonConsumed)}
    if not pfns:
        return frozenset()
    vms = host.ext.get("vms", {})
    out: set[str] = set()
    for pfn in pfns:
        pids = _owners(host, pfn)
        out.update(name for name, vm in vms.items() if vm.vmm.pid in pids)
    return frozenset(out)
