"""Failure classes (what the sampler produces) and outcomes (what the model says follows).

A failure class is small, discrete and hashable, so each (policy, class) is simulated once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

MemoryKind = Literal["gmem_private", "gmem_shared", "hugetlb_free", "vmm", "kernel"]
VmType = Literal["default", "confidential", "none"]
PageSize = Literal["4K", "2M", "1G"]
FirstTouch = Literal["guest_read", "vmm_read", "kernel_checked", "kernel_unchecked", "scrub"]
Behaviour = Literal["cooperative", "careless", "hostile", "confidential"]

TOUCHES: tuple[FirstTouch, ...] = ("guest_read", "vmm_read", "kernel_checked",
                                   "kernel_unchecked", "scrub")
BEHAVIOURS: tuple[Behaviour, ...] = ("cooperative", "careless", "hostile", "confidential")
MODEL_CPUS = 64
"""The model's default number of online CPUs in a broadcast rendezvous (mce_config cpus)."""
PAGE_BYTES: dict[str, int] = {"4K": 4096, "2M": 2 << 20, "1G": 1 << 30}


@dataclass(frozen=True, order=True)
class FailureClass:
    """One kind of uncorrectable memory failure, as the sampler sees it.

    * ``memory``: what the failed memory holds (a share of the host composition);
    * ``vm_type``: ``default`` or ``confidential`` VM owning it (``none``: free pool, kernel);
    * ``vm_gib``: size of that VM (0 when no VM owns the memory);
    * ``page_size``: folio size backing it (HugeTLB 2M/1G, or 4K);
    * ``pages_hit``: distinct 4 KiB pages the fault makes uncorrectable;
    * ``same_folio``: whether all those pages lie in one folio (else one per folio);
    * ``second_fault``: an independent second fault lands in the same huge folio while the
      folio is still in use after the first (the rare, multi-step case);
    * ``first_touch``: who meets the error first and how: a guest vCPU read (AR in the guest),
      a VMM thread read, a kernel user that checks PG_hwpoison or one that does not (AR), or
      the patrol scrub (AO, nobody consumed it);
    * ``permanent``: the cells stay bad (a rewrite does not cure the page);
    * ``behaviour``: what the guest owning the memory does after it met the poison
      (docs/mce.md: ``cooperative`` takes the page offline, ``careless`` touches it again,
      ``hostile`` loads it from every vCPU, ``confidential`` re-executes the load because no
      vMCE reaches it); ``cooperative`` for memory no guest owns or reads (VMM, free pool,
      kernel);
    * ``effort``: rounds of that behaviour the guest plays before it stops (0: cooperative);
    * ``host_cpus``: online host CPUs, each held by a broadcast machine check (M3, M9);
    * ``kernel_reread``: after the first touch, a host kernel user that checks PG_hwpoison
      (a live dump through /proc/kcore, kdump, hibernation) reads the failed page while the
      memory is still the VM's (docs/kernel-users.md): it skips a page marked PG_hwpoison
      and consumes the poison of one that is not (R47: a host panic), so it is what costs a
      policy that keeps failures out of PG_hwpoison (C1).
    """

    memory: MemoryKind
    vm_type: VmType
    vm_gib: int
    page_size: PageSize
    pages_hit: int
    same_folio: bool
    second_fault: bool
    first_touch: FirstTouch
    permanent: bool
    behaviour: Behaviour = "cooperative"
    effort: int = 0
    host_cpus: int = MODEL_CPUS
    kernel_reread: bool = False

    @property
    def consumed(self) -> bool:
        """True when a CPU read reached the error before the scrub did (SRAR, not SRAO)."""
        return self.first_touch != "scrub"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def order_key(self) -> tuple[Any, ...]:
        """The fields the class's order compares, in order: ``sorted(cs, key=order_key)`` is
        ``sorted(cs)`` without a generated ``__lt__`` call per comparison."""
        return tuple(getattr(self, n) for n in _field_names(type(self), True))

    def key(self) -> str:
        """A short stable name, e.g. ``gmem_private/confidential/32G/1G/p1/guest_read/perm``."""
        parts = [self.memory, self.vm_type, f"{self.vm_gib}G", self.page_size,
                 f"p{self.pages_hit}{'' if self.same_folio else 's'}",
                 "2nd" if self.second_fault else "1st", self.first_touch,
                 "perm" if self.permanent else "trans"]
        if self.behaviour != "cooperative":
            parts.append(f"{self.behaviour}x{self.effort}")
        if self.host_cpus != MODEL_CPUS:
            parts.append(f"{self.host_cpus}cpus")
        if self.kernel_reread:
            parts.append("kernel_reread")
        return "/".join(parts)


@dataclass(frozen=True)
class Outcome:
    """What one failure of a class costs under a policy (expected counts per failure).

    * ``host_panic``: the host went down;
    * ``host_stalled``: the host's whole-host machine-check stalls passed the bound (M10)
      without a panic: the host was down for its tenants, though it did not crash;
    * ``host_stall_seconds``: wall time every host CPU spent in broadcast machine-check
      rendezvous (M3, M9), seconds;
    * ``vm_killed`` / ``vm_paused``: VMs killed, or paused with an internal error;
    * ``wrong_process_signal``: SIGBUS delivered to a process that does not own the memory;
    * ``poison_reused``: poisoned memory handed out again (to a guest or a new allocation);
    * ``repeated_consumption``: consumptions of the same poison after the first;
    * ``guest_gib_lost``: guest memory made unusable, GiB;
    * ``failure_record_lost``: the kernel forgot the failure (no flag, no record left);
    * ``early_kill_missed``: a PR_MCE_KILL_EARLY thread that should have been told was not.
    """

    host_panic: float = 0.0
    host_stalled: float = 0.0
    host_stall_seconds: float = 0.0
    vm_killed: float = 0.0
    vm_paused: float = 0.0
    wrong_process_signal: float = 0.0
    poison_reused: float = 0.0
    repeated_consumption: float = 0.0
    guest_gib_lost: float = 0.0
    failure_record_lost: float = 0.0
    early_kill_missed: float = 0.0

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return _field_names(cls)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, strict: bool = True) -> Outcome:
        """Build from a mapping of outcome names; ``strict`` rejects unknown names."""
        names = cls.names()
        unknown = sorted(set(data) - set(names))
        if strict and unknown:
            raise ValueError(f"unknown outcome {unknown[0]!r}; valid: {', '.join(names)}")
        vals = {}
        for k in names:
            if k in data:
                v = float(data[k])
                if not 0 <= v < float("inf"):
                    raise ValueError(f"outcome {k} must be >= 0, got {data[k]!r}")
                vals[k] = v
        return cls(**vals)

    def as_tuple(self) -> tuple[float, ...]:
        return tuple(getattr(self, n) for n in _field_names(type(self)))


_NAMES: dict[tuple[type, bool], tuple[str, ...]] = {}


def _field_names(cls: type, compared: bool = False) -> tuple[str, ...]:
    """A dataclass's field names in order, or those its order compares (kept per class:
    ``dataclasses.fields`` is slow, and a fleet run asks once per failure class and
    policy)."""
    got = _NAMES.get((cls, compared))
    if got is None:
        got = _NAMES[(cls, compared)] = tuple(f.name for f in fields(cls)
                                              if f.compare or not compared)
    return got


OUTCOME_NAMES = Outcome.names()
OUTCOME_UNITS = {n: ("GiB" if n == "guest_gib_lost" else "s" if n == "host_stall_seconds"
                     else "events") for n in OUTCOME_NAMES}
