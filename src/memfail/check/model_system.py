"""The memfail model as a checkable System: a Host per state, the config's event alphabet as labels.

Each step copies the Host from its parent's snapshot (``freeze``), applies the label's actions
and folds the new trace events into the property Monitor; fingerprints come from a canonical
encoding of the Host (``encode``), cached by the snapshot's digest.
"""

from __future__ import annotations

import functools
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from memfail.check import races
from memfail.check.config import CheckConfig, scaled_size
from memfail.check.encode import RowCache
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
from memfail.check.freeze import Primer, blob_key, clone_host, freeze, release, thaw, thaw_owned
from memfail.check.properties import PROPERTIES, Context, Monitor, PropertyDef
from memfail.check.system import Property, canonical_bytes, fingerprint_bytes
from memfail.model.actions import parse_action
from memfail.model.errors import ModelInputError
from memfail.model.host import HANDLERS
from memfail.model.kernel.fs import GMEM
from memfail.model.trace import (
    Event,
    MemoryFailureCall,
    MemoryFailureEvent,
    PoisonConsumed,
    PoisonHandedOut,
    PolicyEvent,
)

# The guest_memfd policy hooks that report acting with a ``PolicyEvent`` (its ``hook`` field),
# as src/memfail/model/kvm/gmem.py emits them: the policy's memory_failure() path
# (policy_memory_failure), kvm_gmem_error_folio (a guest_memfd made unusable), a HugeTLB folio
# split or merged by conversion, and the folios freed by punch hole or inode release
# (free_range with why="punch"/"release"). Coverage reports those no explored step fired.
POLICY_HOOKS: tuple[str, ...] = ("memory_failure", "error_folio", "split", "merge", "punch",
                                 "release")


# what pickling a Host that cannot be pickled raises (a snapshot is then not made)
UNPICKLABLE = (pickle.PicklingError, TypeError, AttributeError)


class ModelState:
    """One explored state. ``events`` (what the last step emitted) is not part of the state.

    The host is kept as a Host object, a snapshot (``freeze``) or both: the snapshot is made
    once (for the fingerprint) and serves as the source of every successor's copy and as the
    form a state travels in between processes, where the Host is rebuilt on first use."""

    __slots__ = ("_host", "_key", "_owned", "blob", "copied", "counts", "effective", "errors",
                 "events", "hfp", "inflight", "monitor", "primer")

    def __init__(self, host: Any, counts: tuple[int, ...], errors: int, monitor: Monitor,
                 events: tuple[Event, ...] = (),
                 inflight: tuple[tuple[Any, str, tuple[Any, ...], tuple[Any, ...]], ...] = (),
                 blob: bytes | None = None, primer: Primer | None = None) -> None:
        self._host = host
        # the objects of a Host this state rebuilt from a snapshot or was handed with them
        # (``freeze.thaw_owned``): ``compact`` and ``release`` free it through them
        self._owned: list[Any] | None = None
        self.primer = primer  # the snapshot's primer (``freeze.Primer``), if any
        self.counts = counts      # how often each capped alphabet entry fired along the path
        self.errors = errors      # hardware errors injected along the path
        self.monitor = monitor
        self.events = events
        # --races: events in flight, each (label, next stage, context, locks it holds now)
        self.inflight = inflight
        self.blob = blob
        self.hfp: int | None = None  # fingerprint of the host's canonical encoding, once known
        self._key: bytes | None = None
        self.copied = False  # the Host was rebuilt from the snapshot (not the one it was made of)
        # the alphabet entries of the label whose step made this state, when that step
        # changed the host or what the properties observe (the monitor); else () (``effective``)
        self.effective: tuple[int, ...] = ()

    @property
    def host(self) -> Any:
        if self._host is None:
            assert self.blob is not None
            self._host, self._owned = thaw_owned(self.blob)
            self.copied = True
        return self._host

    def take_host(self) -> tuple[Any, list[Any] | None]:
        """The Host and its objects (``_owned``), for the caller to change and own: the state
        keeps its snapshot only."""
        host, owned = self.host, self._owned
        self._host = self._owned = None
        return host, owned

    def release(self) -> None:
        """Drop the Host, freeing it at once when this state owns its objects (see
        ``freeze.release``); the state keeps whatever snapshot it has. Only for a state
        whose Host nothing else refers to."""
        release(self._owned)
        self._host = self._owned = None

    def frozen(self) -> bytes:
        """The host's snapshot (made on first use; the host must not change afterwards)."""
        if self.blob is None:
            self.blob = freeze(self._host, self.primer)
        return self.blob

    def key(self) -> bytes | None:
        """The snapshot's digest (``blob_key``), once; None for a host that cannot be pickled."""
        if self._key is None:
            try:
                self._key = blob_key(self.frozen())
            except UNPICKLABLE:
                return None
        return self._key

    def ident(self) -> int | bytes | None:
        """What names the host in what the system remembers of it: its canonical fingerprint
        once known (the same for equal hosts however they were reached, as the search itself
        takes them: states with one fingerprint are one state), else the snapshot's digest."""
        return self.hfp if self.hfp is not None else self.key()

    def compact(self) -> ModelState:
        """Keep only the snapshot: a frontier state then costs its ~7 KB pickle instead of a
        graph of Python objects (which the cyclic garbage collector would traverse again and
        again); the Host is rebuilt once when the state is expanded."""
        self.frozen()
        self.release()
        return self

    def fresh_host(self) -> Any:
        """A new, independent copy of the host, from the snapshot."""
        try:
            return thaw(self.frozen())
        except UNPICKLABLE:
            return clone_host(self.host)

    def __reduce__(self) -> tuple[Any, ...]:
        return _state, (self.frozen(), self.counts, self.errors, self.monitor, self.inflight,
                        self.hfp)


FP_CACHE_SIZE = 1 << 20  # host fingerprints cached per process (16-byte keys)
MEMO_SIZE = 1 << 16      # remembered step effects, host views and checks per process
MEMO_BYTES = 128 << 20   # snapshots the remembered effects keep alive, at most

SKIP, SAME, NEW = 0, 1, 2  # a remembered step: cannot happen now, host unchanged, host changed

# ``MEMFAIL_CHECK_VERIFY_UNCHANGED=1``: snapshot every step, even those whose model actions
# all said they changed nothing, and fail on the first such step that did (what the tests run).
VERIFY_ENV = "MEMFAIL_CHECK_VERIFY_UNCHANGED"


class UnchangedClaimWrong(AssertionError):
    """A model action said it left the host as it was, and the host's snapshot differs."""


class Effect:
    """What one label does to a host, apart from the state's monitor and counters: the events
    it emitted, the events in flight after it and the VM the monitor folds it for.
    ``unchanged``: every model action of the step said it left the host as it was
    (``ActionResult.unchanged``); not part of what is remembered."""

    __slots__ = ("after", "events", "unchanged", "vm")

    def __init__(self, events: tuple[Event, ...], after: tuple[Any, ...], vm: str | None,
                 unchanged: bool = False) -> None:
        self.events, self.after, self.vm = events, after, vm
        self.unchanged = unchanged

    def parts(self) -> tuple[Any, ...]:
        return self.events, self.after, self.vm


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


class SetupFailed(ValueError):
    """The configuration's set-up (its processes, VMs, guest memory and ``setup:`` steps)
    failed on the model: reported against the configuration file."""


class _LazyHost:
    """A state's Host for a property check, rebuilt from the snapshot only if the check reads
    it (most properties read the monitor alone); says whether it was read."""

    __slots__ = ("read", "state")

    def __init__(self, state: ModelState) -> None:
        self.state, self.read = state, False

    def __getattr__(self, name: str) -> Any:
        self.read = True
        return getattr(self.state.host, name)


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
            early={p.name: p.early_threads(
                config.host.sysctl.get("vm.memory_failure_early_kill", 0))
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
        # the entries of each label (a label may be in two), and the limits that count its
        # steps: none when an entry without a limit has it (``counted_entry``)
        self._entries_of: dict[Label, tuple[int, ...]] = {}
        for i, label in self.entries:
            if i not in self._entries_of.get(label, ()):
                self._entries_of[label] = (*self._entries_of.get(label, ()), i)
        self._caps: dict[Label, tuple[tuple[int, int], ...] | None] = {}
        for label, idx in self._entries_of.items():
            limits = [config.events[i].limit for i in idx]
            self._caps[label] = None if None in limits else \
                tuple((i, lim) for i, lim in zip(idx, limits, strict=True) if lim is not None)
        self._labels = list(self._entries_of)  # each label once, in file order
        selected = config.properties
        self._props = [p for p in PROPERTIES if selected is None or p.name in selected]
        self._properties: tuple[Property, ...] | None = None
        self._initial: ModelState | None = None
        self._primer: Primer | None = None
        self._fp_cache: dict[bytes, int] = {}
        self._rows = RowCache()  # the canonical encoding, re-encoding what changed
        self._specs_of: dict[Label, list[StepSpec]] = {}
        self._actions_of: dict[Label, list[Any]] = {}
        self._views: dict[int | bytes, tuple[bool, dict[Label, frozenset[Any]]]] = {}
        self._memo: dict[Any, tuple[Any, ...]] = {}
        self._memo_bytes = 0
        self._checked: dict[tuple[str, int | bytes, bytes], str | None] = {}
        self._folds: dict[tuple[Monitor, Any], Monitor] = {}
        self._monitors: dict[Monitor, Monitor] = {}
        self._inflight_enc: dict[int, tuple[tuple[Any, ...], bytes]] = {}
        # trust ``ActionResult.unchanged`` (skip the snapshot), or snapshot and compare
        self.verify_unchanged = os.environ.get(VERIFY_ENV, "") not in ("", "0")
        self.unchanged_steps = 0  # steps taken at their word in this process (or verified)
        # per label, how its last step went: 0 host unchanged (or cannot happen), 2 changed
        # (absent: 1, not run yet); ``successors`` runs the labels in that order
        self._changed: dict[Any, int] = {}

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
                raise SetupFailed(f"set-up step {key} {args} failed with {res.errno}; "
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
            self._primer = Primer.of(host)
            self._primer.adopt(host)
            self._initial = ModelState(host, (0,) * len(self.config.events), 0, Monitor(),
                                       primer=self._primer)
        return self._initial

    def _specs(self, label: Label) -> list[StepSpec]:
        """``expand(label)``, built once per label after ``initial()`` (it depends on the label
        and on ``pfn_of`` alone); callers only read it."""
        got = self._specs_of.get(label)
        if got is None:
            got = self.expand(label)
            if self._initial is not None:
                self._specs_of[label] = got
        return got

    def _actions(self, label: Label) -> list[Any]:
        """The label's model actions, parsed once (actions are frozen pydantic models)."""
        got = self._actions_of.get(label)
        if got is None:
            got = []
            for key, args in self._specs(label):
                action = parse_action(key, args)
                if type(action) not in HANDLERS:
                    raise RuntimeError(f"the model has no handler for {key!r} in this process")
                got.append(action)
            if self._initial is not None:
                self._actions_of[label] = got
        return got

    def _host_view(self, s: ModelState) -> tuple[bool, dict[Label, frozenset[Any]]]:
        """What ``enabled`` needs of the host: whether it panicked and, with --races, the
        locks each entry's first stage (or atomic step) takes. Kept per host
        (``ModelState.ident``), so a state whose host was seen before is not rebuilt to list
        its labels."""
        key = s.ident()
        got = self._views.get(key) if key is not None else None
        if got is None:
            host = s.host
            needs: dict[Label, frozenset[Any]] = {}
            if self.races and not host.panicked:
                for _, label in self.entries:
                    first = races.first_stage(self._specs(label), label[0], host)
                    needs[label] = races.stage_needs(first[0]) if first \
                        else races.atomic_needs(self._specs(label), label[0], host)
            got = (bool(host.panicked), needs)
            if key is not None:
                if len(self._views) >= MEMO_SIZE:
                    self._views.clear()
                self._views[key] = got
        return got

    def enabled(self, s: ModelState) -> Sequence[Any]:
        panicked, needs = self._host_view(s)
        if panicked:
            return []
        out = []
        busy = {op[0] for op in s.inflight}
        held = frozenset(lock for op in s.inflight for lock in op[3])
        for label in self._labels:
            caps = self._caps[label]
            if caps is not None and all(s.counts[i] >= lim for i, lim in caps):
                continue
            if EVENTS[label[0]].error and s.errors >= self.config.bounds.errors:
                continue
            if self.races:
                if label in busy:
                    continue
                if races.conflicts(needs[label], held):
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
        before, host = s.host, s.fresh_host()
        base = _snapshot(host, self._primer)  # the copy as it came (see ``successors``)
        eff = self._effect(s, label, host, lambda pfns: _vms_holding(before, pfns),
                           self._frames(before))
        if eff is None:
            return ModelState(None, s.counts, s.errors, s.monitor, (), s.inflight, s.frozen())
        after = _snapshot(host, self._primer)
        t = ModelState(host, s.counts, s.errors, s.monitor, eff[0].events, eff[0].after,
                       after, self._primer)
        changed = base is None or after is None or after != base
        return self._finish(s, label, eff[0], eff[1], t, changed=changed)

    def successors(self, s: ModelState, labels: Sequence[Any]) -> Iterator[ModelState]:
        """``step(s, label)`` for each label, working on one Host in place: a step that leaves
        the Host as it was (its snapshot is the parent's, byte for byte: more than half the
        steps of the standard configuration) hands it on to the next label, and a new copy is
        made only after a step that changed it. The parent keeps its value (its snapshot).

        What a label does to a host (``_effect``: the successor's snapshot, the events, the
        events in flight) depends on the host and the events in flight alone, not on the
        state's monitor or counters: it is remembered per (host, events in flight, label),
        the host named by ``ModelState.ident``, so a state whose host an earlier state had takes each step without copying,
        running or snapshotting the Host. The host is rebuilt from the snapshot only when a
        step is not remembered.

        A step that changes the Host leaves the next label a fresh copy to make (``thaw``),
        so the labels run in an order that puts those last: the ones that left their host
        unchanged the last time they ran first, then the ones not run yet, then the ones that
        changed it (``_changed``; an order of work only). The successors are given in
        ``labels``' order, and each is what it would be in any order: a step's effect depends
        on the parent's host and events in flight alone."""
        kvm_model()
        blob = s.frozen()
        pkey = s.ident()
        try:
            hash(s.inflight)
        except TypeError:  # pragma: no cover - events in flight are tuples of scalars
            pkey = None
        host: Any = None
        owned: list[Any] | None = None  # the working copy's objects (``freeze.release``)
        base = b""        # the snapshot of the working copy as it came
        thaw_base = b""   # the same, of any copy made from ``blob`` (one for all of them)
        frames: dict[tuple[Any, Any], int] = {}
        owners: dict[int, frozenset[str]] = {}
        started = False
        before: list[tuple[Any, list[Any] | None]] = []

        def pre_holding(pfns: set[int]) -> frozenset[str]:
            """``_vms_holding`` of the parent's Host (as it was before any step)."""
            if pfns <= owners.keys():
                out: frozenset[str] = frozenset()
                for pfn in pfns:
                    out |= owners[pfn]
                return out
            if not before:
                before.append(thaw_owned(blob))
            return _vms_holding(before[0][0], pfns)

        out: list[ModelState | None] = [None] * len(labels)
        todo: list[tuple[int, int, Any, Any]] = []
        changed = self._changed
        for i, label in enumerate(labels):
            mkey = (pkey, s.inflight, label) if pkey is not None else None
            hit = self._memo.get(mkey) if mkey is not None else None
            if hit is not None:
                out[i] = self._from_memo(s, label, hit, mkey)
            else:
                todo.append((changed.get(label, 1), i, label, mkey))
        todo.sort(key=_rank)
        for _rank_of, i, label, mkey in todo:
            if host is None:
                if not started:  # the first step not remembered: the parent's Host
                    started = True
                    # (rebuilt from the snapshot if the state was compacted); the working
                    # copy is no longer the parent's
                    host, owned = s.take_host()
                    copied = s.copied
                    frames = self._frames(host)
                    owners = {pfn: _vms_holding(host, {pfn})
                              for pfn in set(self.pfn_of.values())}
                    # a round trip through pickle may order a set differently or share a
                    # string less: compare a copy's snapshot with the copy's own first one
                    base = blob
                    if copied:
                        base = thaw_base = freeze(host, self._primer)
                else:
                    host, owned = thaw_owned(blob)
                    if not thaw_base:
                        thaw_base = freeze(host, self._primer)
                    base = thaw_base
            eff = self._effect(s, label, host, pre_holding, frames)
            made: ModelState | None = None
            if eff is None:  # the step cannot happen now; ``host`` is left dirty
                release(owned)
                host = owned = None
                hit = (SKIP, blob, (), s.inflight, None, frozenset())
            elif eff[0].unchanged and not self.verify_unchanged:
                # its model actions said so: the snapshot would be ``base`` again
                self.unchanged_steps += 1
                hit = (SAME, base, *eff[0].parts(), eff[1])
            else:
                self.unchanged_steps += eff[0].unchanged
                made = ModelState(host, s.counts, s.errors, s.monitor, eff[0].events,
                                  eff[0].after, primer=self._primer)
                snap = made.frozen()
                if eff[0].unchanged and snap != base:
                    raise UnchangedClaimWrong(
                        f"{label[0]} {dict(label[1])}: its model actions said they left the "
                        "host as it was, and its snapshot differs")
                if snap == base:  # unchanged: the next label works on the same Host
                    hit = (SAME, base, *eff[0].parts(), eff[1])
                    made = None
                else:  # the successor owns it now
                    made._owned = owned
                    host = owned = None
                    hit = (NEW, snap, *eff[0].parts(), eff[1])
            if mkey is not None:
                self._remember(mkey, hit)
            if len(changed) >= MEMO_SIZE:
                changed.clear()
            changed[label] = 2 if hit[0] == NEW else 0
            if made is not None and eff is not None:
                out[i] = self._finish(s, label, eff[0], eff[1], made, mkey, changed=True)
            else:
                out[i] = self._from_memo(s, label, hit, mkey)
        release(owned)  # the working copy no successor took, and the parent's before the steps
        host = None
        if before:
            release(before[0][1])
        for t in out:
            assert t is not None
            yield t

    def _remember(self, mkey: Any, hit: tuple[Any, ...]) -> None:
        if len(self._memo) >= MEMO_SIZE or self._memo_bytes >= MEMO_BYTES:
            self._memo.clear()
            self._memo_bytes = 0
        self._memo[mkey] = hit
        if hit[0] == NEW:
            self._memo_bytes += len(hit[1])

    def _from_memo(self, s: ModelState, label: Any, hit: tuple[Any, ...],
                   mkey: Any = None) -> ModelState:
        """The successor a remembered effect gives from ``s`` (see ``successors``)."""
        kind, snap, events, after, vm, holding = hit
        if kind == SKIP:
            return ModelState(None, s.counts, s.errors, s.monitor, (), s.inflight, s.frozen())
        t = self._finish(s, label, Effect(events, after, vm), holding,
                         ModelState(None, s.counts, s.errors, s.monitor, events, after, snap),
                         mkey, changed=kind == NEW)
        if kind == SAME:
            t.hfp = s.hfp  # its canonical encoding is the parent's
        return t

    def _effect(self, s: ModelState, label: Any, host: Any,
                pre_holding: Callable[[set[int]], frozenset[str]],
                frames: dict[tuple[Any, Any], int]) -> tuple[Effect, frozenset[str]] | None:
        """What ``label`` does to ``host`` (a copy of s's Host, mutated): the events, the events
        in flight after it, the VM the monitor folds it for and the VMs holding a pfn it
        handled or consumed (``pre_holding(pfns)`` gives those of s's Host before the step,
        ``frames`` its guest frames, ``_frames``). None when the step cannot happen now
        (``host`` is then left dirty). Depends on the host and ``s.inflight`` alone."""
        origin = races.origin(label)
        inflight = list(s.inflight)
        unchanged = False
        if races.is_continuation(label):
            j = next(k for k, op in enumerate(inflight) if op[0] == origin)
            _, stage, ctx, _held = inflight.pop(j)
            self._stage(host, origin, stage, ctx, inflight, j)
        elif self.races and (first := races.first_stage(self._specs(label), label[0], host)):
            self._stage(host, label, first[0], first[1], inflight, len(inflight))
        else:
            unchanged = self._atomic(host, label)
        events = tuple(host.trace.events)
        host.trace.events = []
        if inflight and any(isinstance(e, MemoryFailureCall) for e in events) and \
                not (races.is_continuation(label) and label[1][1][1] == "mf.notify") and \
                any(races.mf_waits_for(op[3]) for op in inflight if op[0] != origin):
            # memory_failure() would wait for the mf_mutex or folio lock another event
            # holds: this step cannot happen now (it runs after that event; docs/check.md)
            return None
        inflight = _normalise_mmu_seq(host, inflight)
        params = thaw_params(origin)
        vm = params.get("vm")
        pfn = self.pfn_of.get((vm, params.get("page")))
        if origin[0] in ("hw_error", "scrub") and pfn is not None and \
                frames.get((vm, params.get("page"))) != pfn:
            # an error names a frame by its first owner; the frame no longer holds that VM's
            # memory (released, punched): the step is about the VM whose memory it holds now
            # (a refault or fallocate took the frame another VM freed: memory_failure()
            # reaches that VM's VMM), or about none
            vm = next((v for (v, _pg), f in frames.items() if f == pfn), None)
        elif pfn is not None and pfn not in frames.values():
            vm = None  # the frame no longer holds this VM's memory (released, punched)
        pfns = _failed_pfns(events)
        holding = _vms_holding(host, pfns)
        if pfns:
            holding |= pre_holding(pfns)  # owners before the step too
            # and any VM whose guest-memory file holds the frame, mapped or not (a hugetlbfs
            # page fallocate() put in a punched hole that nobody has faulted in yet)
            holding |= frozenset(v for (v, _page), f in self._frames(host).items() if f in pfns)
        return Effect(events, tuple(sorted(inflight, key=repr)), vm, unchanged), holding

    def _finish(self, s: ModelState, label: Any, eff: Effect, holding: frozenset[str],
                t: ModelState, mkey: Any = None, changed: bool = True) -> ModelState:
        """The successor of ``s`` by ``label`` from the label's effect: ``t`` (its host part)
        with the monitor folded and the capped entry and the error counted. ``mkey`` names
        the effect (``successors``): the folded monitor is remembered per (monitor, effect),
        and one Monitor object is kept per value, so its canonical bytes are made once.
        ``changed`` says the step changed the host: then, or when it changed the monitor,
        ``t.effective`` names the label's alphabet entries (``effective``)."""
        origin = races.origin(label)
        event = EVENTS[origin[0]]
        fkey = (s.monitor, mkey) if mkey is not None else None
        mon = self._folds.get(fkey) if fkey is not None else None
        if mon is None:
            params = thaw_params(origin)
            ao = origin[0] == "scrub" or \
                (origin[0] == "hw_error" and params.get("detect") != "latent")
            mon = s.monitor.fold(self.ctx, eff.events, eff.vm, event.error, ao,
                                 also_affected=holding)
            if len(self._folds) >= MEMO_SIZE:
                self._folds.clear()
                self._monitors.clear()
            mon = self._monitors.setdefault(mon, mon)
            if fkey is not None:
                self._folds[fkey] = mon
        counts, errors = s.counts, s.errors
        if not races.is_continuation(label):
            i = self.counted_entry(origin, counts)
            if i is not None:  # only capped entries need counting
                counts = (*counts[:i], counts[i] + 1, *counts[i + 1:])
            errors += int(event.error)
        t.counts, t.errors, t.monitor = counts, errors, mon
        if changed or mon != s.monitor:
            t.effective = self._entries_of[origin]
        return t

    def _atomic(self, host: Any, label: Any) -> bool:
        """The label's model actions, one after the other, as one step. Returns whether each
        said it left the host as it was (``ActionResult.unchanged``): the step's snapshot is
        then its parent's, and ``successors`` does not make it."""
        unchanged = True
        for action in self._actions(label):
            try:
                res = host.apply(action)
            except ModelInputError:
                return False  # not possible in this state (the fd is closed, ...): a no-op step
            unchanged = unchanged and res.unchanged
            if host.panicked:
                return False
        return unchanged

    def _stage(self, host: Any, label: Any, stage: str, ctx: tuple[Any, ...],
               inflight: list[Any], at: int) -> None:
        """Run one --races stage; put the event back in flight at ``at`` if it goes on."""
        nxt, nctx = races.run_stage(self._specs(label), host, stage, ctx)
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
            key = s.key()
            hfp = self._fp_cache.get(key) if key is not None else None
            if hfp is None:
                hfp = fingerprint_bytes(self._rows.encode(s.host))
                if key is not None:
                    if len(self._fp_cache) >= FP_CACHE_SIZE:
                        self._fp_cache.clear()
                    self._fp_cache[key] = hfp
            s.hfp = hfp
        head = b"%d|%s|%d|" % (hfp, ",".join(map(str, s.counts)).encode(), s.errors)
        return fingerprint_bytes(head + s.monitor.key_bytes() +
                                 (self._inflight_bytes(s.inflight) if s.inflight else b""))

    def _inflight_bytes(self, inflight: tuple[Any, ...]) -> bytes:
        """``canonical_bytes(inflight)``, kept per tuple object: a remembered step hands every
        successor the one tuple it stored (``_from_memo``), so most states in flight share a
        few objects. By identity, not value: ``1 == True`` would merge what the encoding
        keeps apart."""
        got = self._inflight_enc.get(id(inflight))
        if got is not None and got[0] is inflight:
            return got[1]
        out = canonical_bytes(inflight)
        if len(self._inflight_enc) >= MEMO_SIZE:
            self._inflight_enc.clear()
        self._inflight_enc[id(inflight)] = (inflight, out)
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for name in ("_fp_cache", "_specs_of", "_actions_of", "_views", "_memo", "_checked",
                     "_folds", "_monitors", "_inflight_enc", "_changed"):
            state[name] = {}  # per process
        state["_memo_bytes"] = 0
        state["unchanged_steps"] = 0
        state["_rows"] = RowCache()
        state["_properties"] = None  # bound to this object
        return state

    def affinity(self, s: ModelState) -> int:
        """The host's fingerprint: states with one host reuse the steps remembered for it
        (``successors``), so the explorer keeps them on one worker."""
        return s.hfp if s.hfp is not None else 0

    def release(self, s: ModelState) -> None:
        """A successor the search drops (a state it knows): free its Host now
        (``ModelState.release``)."""
        s.release()

    def compact(self, s: ModelState) -> ModelState:
        """The state as the frontier keeps it (its snapshot only; see ModelState.compact)."""
        return s.compact()

    def properties(self) -> Sequence[Property]:
        """The selected properties, built once per process (the search asks for them once
        per new state)."""
        if self._properties is None:
            self._properties = tuple(
                Property(p.name, p.doc, p.concern, functools.partial(self._check, p))
                for p in self._props)
        return self._properties

    def _check(self, pd: PropertyDef, s: ModelState) -> str | None:
        """``pd.check(host, monitor)``; a check that reads the host is remembered per
        (property, host, monitor), so a state whose host and monitor an earlier
        state had is not rebuilt to be checked."""
        hkey = s.ident()
        ckey = (pd.name, hkey, s.monitor.key_bytes()) if hkey is not None else None
        if ckey is not None and ckey in self._checked:
            return self._checked[ckey]
        lazy = _LazyHost(s)
        got = pd.check(lazy, s.monitor)
        if lazy.read and ckey is not None:
            if len(self._checked) >= MEMO_SIZE:
                self._checked.clear()
            self._checked[ckey] = got
        return got

    # ------------------------------------------------------------------ optional
    def alphabet(self) -> Sequence[str]:
        return list(dict.fromkeys(e.event for e in self.config.events))

    def label_kind(self, label: Any) -> str:
        return str(races.origin(label)[0])

    def coverage(self, s: ModelState) -> list[str]:
        return sorted({f"{e.hook}" for e in s.events if isinstance(e, PolicyEvent)})

    def label_caps(self, label: Label) -> tuple[tuple[int, int], ...] | None:
        """The (entry, limit) pairs whose limits count ``label``'s steps, in file order; None
        when an entry without a limit has it (its steps are then never counted)."""
        return self._caps[label]

    def counted_entry(self, label: Label, counts: Sequence[int]) -> int | None:
        """The entry a step of ``label`` counts against (docs/check.md, "A step listed by two
        entries"): the first entry having it that is still below its limit; none when an
        entry without a limit has it. The label is enabled while there is one."""
        caps = self._caps[label]
        if caps is None:
            return None
        for i, lim in caps:
            if counts[i] < lim:
                return i
        raise ValueError(f"{label[0]}: every entry that has it is at its limit")

    def effective(self, s: ModelState) -> tuple[int, ...]:
        """The alphabet entries (their indices in the configuration's ``events``: every entry
        that has the label) of the step that made ``s`` when that step changed the host or
        the monitor, else none: a step that ran and left both as they were (a model action
        refused in this state, ``realloc`` over allocated pages) is not effective, though it
        may still count against its ``limit``."""
        return s.effective

    def alphabet_entries(self) -> Sequence[str]:
        """The event of each alphabet entry, by its index in ``events``; an entry the model
        cannot carry out (no label of it is available) is ``""``: its event is reported as
        never fired instead."""
        have = {i for i, _ in self.entries}
        return [e.event if i in have else "" for i, e in enumerate(self.config.events)]

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


def _rank(item: tuple[int, int, Any, Any]) -> tuple[int, int]:
    """``successors``' order of work: how the label's last step went, then its place."""
    return item[0], item[1]


def _snapshot(host: Any, primer: Primer | None) -> bytes | None:
    """``freeze(host)``, or None for a host that cannot be pickled."""
    try:
        return freeze(host, primer)
    except UNPICKLABLE:
        return None


def _failed_pfns(events: tuple[Any, ...]) -> set[int]:
    """The pfns memory_failure() handled or recorded, or a CPU consumed, in a step's events.
    action_result() (its MemoryFailureEvent) counts too: with ``--races`` memory_failure()
    records a failure in its ``mf.record`` stage and returns (MemoryFailureCall) only in
    ``mf.notify``, and the VM whose frame holds it is affected from the record on (a VMM
    refused its own page in between was told of its own memory's failure, not of another
    VM's). Without ``--races`` both come in the same step. A frame with a known failure
    handed out unmarked (PoisonHandedOut, ``no-poison-reuse``) counts too: the VM it now
    backs holds failed memory, so a SIGBUS about it goes to its owner and its stop is the
    failure's blast radius, whoever touches it first."""
    return {e.pfn for e in events
            if isinstance(e, MemoryFailureCall | PoisonConsumed | MemoryFailureEvent |
                          PoisonHandedOut)}


def _vms_holding(host: Any, pfns: set[int]) -> frozenset[str]:
    """VMs whose memory holds one of ``pfns`` (``_failed_pfns`` of a step): a frame that was
    free when its error appeared may back a VM by the time it is found."""
    from memfail.model.outcomes import _owners

    if not pfns:
        return frozenset()
    vms = host.ext.get("vms", {})
    out: set[str] = set()
    for pfn in pfns:
        pids = _owners(host, pfn)
        out.update(name for name, vm in vms.items() if vm.vmm.pid in pids)
    return frozenset(out)
