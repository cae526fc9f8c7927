"""The memfail model as a checkable System: a Host per state, the config's event alphabet as labels.

Each step deep-copies the Host, applies the label's actions and folds the new trace events into
the property Monitor; fingerprints come from a canonical encoding of the Host (``encode``).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from memfail.check.config import CheckConfig
from memfail.check.encode import host_encoding
from memfail.check.events import EVENTS, Label, StepSpec, labels_of, mem_fd, thaw_params
from memfail.check.properties import PROPERTIES, Context, Monitor, PropertyDef
from memfail.check.system import Property, canonical_bytes, fingerprint_bytes
from memfail.model.actions import ACTION_TYPES, parse_action
from memfail.model.trace import Event, PolicyEvent


@dataclass
class ModelState:
    """One explored state. ``events`` (what the last step emitted) is not part of the state."""

    host: Any
    counts: tuple[int, ...]   # how often each alphabet entry fired along the path
    errors: int               # hardware errors injected along the path
    monitor: Monitor
    events: tuple[Event, ...] = ()


def _check(pd: PropertyDef, s: ModelState) -> str | None:
    return pd.check(s.host, s.monitor)


def setup_steps(cfg: CheckConfig) -> list[StepSpec]:
    """Scenario steps that build the configuration's VMs and guest memory before step 0.

    Until the KVM/guest_memfd actions exist, a VM's memory is a HugeTLB (or 4K shmem) memfd
    of its VMM, mapped shared and populated: the `hugetlbfs` baseline of S10/S11.
    """
    steps: list[StepSpec] = []
    gmems = {g.name: g for g in cfg.guest_memfd}
    for vm in cfg.vms:
        g = gmems.get(vm.gmem) if vm.gmem else None
        size = g.size if g else vm.memory
        backing = g.backing if g else "2M"
        fd = mem_fd(vm)
        if "gmem_create" in ACTION_TYPES:  # pragma: no cover - wired with the KVM model
            raise NotImplementedError("wire guest_memfd/KVM set-up actions here")
        args: dict[str, Any] = {"proc": vm.vmm, "name": fd, "size": size}
        if backing != "4K":
            args |= {"hugetlb": True, "huge": backing}
        steps.append(("memfd_create", args))
        steps.append(("mmap", {"proc": vm.vmm, "name": f"{vm.name}.ram", "size": size,
                               "fd": fd, "shared": True, "populate": True}))
    for raw in cfg.setup:
        (key, args), = raw.items()
        steps.append((key, dict(args or {})))
    return steps


class ModelSystem:
    """``System`` over the memfail Host for one configuration and one policy."""

    def __init__(self, config: CheckConfig, policy: str | None) -> None:
        self.config = config
        self.policy = policy
        self.name = policy or "no-policy"
        self.ctx = Context(
            vmm_of={v.name: v.vmm for v in config.vms},
            early={p.name: tuple(t for t, k in p.mce_kill.items() if k == "early")
                   for p in config.processes})
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

    # ------------------------------------------------------------------ building blocks
    def expand(self, label: Label) -> list[StepSpec]:
        """The model actions of one label (empty when the model lacks what it needs)."""
        return EVENTS[label[0]].expand(self.config, thaw_params(label))

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
        if self._initial is None:
            host = self.new_host()
            host.trace.events = []
            self._initial = ModelState(host, (0,) * len(self.config.events), 0, Monitor())
        return self._initial

    def enabled(self, s: ModelState) -> Sequence[Any]:
        if s.host.panicked:
            return []
        out = []
        for i, label in self.entries:
            spec = self.config.events[i]
            if spec.limit is not None and s.counts[i] >= spec.limit:
                continue
            if EVENTS[label[0]].error and s.errors >= self.config.bounds.errors:
                continue
            out.append(label)
        return out

    def step(self, s: ModelState, label: Any) -> ModelState:
        host = copy.deepcopy(s.host)
        for key, args in self.expand(label):
            host.apply(parse_action(key, args))
            if host.panicked:
                break
        events = tuple(host.trace.events)
        host.trace.events = []
        params = thaw_params(label)
        event = EVENTS[label[0]]
        ao = label[0] == "scrub" or (label[0] == "hw_error" and params.get("detect") != "latent")
        mon = s.monitor.fold(self.ctx, events, params.get("vm"), event.error, ao)
        i = self._entry_of[label]
        counts = (*s.counts[:i], s.counts[i] + 1, *s.counts[i + 1:])
        return ModelState(host, counts, s.errors + int(event.error), mon, events)

    def fingerprint(self, s: ModelState) -> int:
        return fingerprint_bytes(host_encoding(s.host) + canonical_bytes(
            (s.counts, s.errors, s.monitor.key())))

    def properties(self) -> Sequence[Property]:
        return [Property(p.name, p.doc, p.concern, functools.partial(_check, p))
                for p in self._props]

    # ------------------------------------------------------------------ optional
    def alphabet(self) -> Sequence[str]:
        return list(dict.fromkeys(e.event for e in self.config.events))

    def label_kind(self, label: Any) -> str:
        return label[0]

    def coverage(self, s: ModelState) -> list[str]:
        return sorted({f"{e.hook}" for e in s.events if isinstance(e, PolicyEvent)})

    def hooks(self) -> Sequence[str]:
        try:
            from memfail.model import policy as pol
        except ImportError:  # pragma: no cover - policies land with the KVM model
            return []
        names = getattr(pol, "HOOKS", None)
        return list(names) if names is not None else []

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
