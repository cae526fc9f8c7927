"""Counterfactual projection: the same hardware errors on a guest_memfd host, per policy.

Every uncorrected memory error of the input (a page, its time, whether a CPU consumed it) is
placed on a host of a given shape (memory, VM sizes, guest_memfd backing, guest type) by its
physical address, turned into the fleet's ``FailureClass`` and costed by the fleet's outcome
oracle (``memfail.fleet.ModelOracle``: each class run once per policy on the model). Software
injections are not hardware errors and are left out; corrected errors are history.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

from memfail.fleet import FailureClass, ModelOracle, Outcome
from memfail.fleet.classes import PAGE_BYTES
from memfail.fleet.params import FleetError

from .events import RasEvent, ReadResult

GiB = 1 << 30
RESERVED_GIB = 4      # host kernel (first 3 GiB of every host) and VMM memory (the 4th)
BURST_SECONDS = 1.0   # errors in one folio this close together are one fault
MAX_PAGES = 8         # pages hit per class (the model's cost grows with it)


class ShapeError(ValueError):
    """A host shape that cannot be projected onto; ``option`` is the option at fault."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class HostShape:
    """The guest_memfd host the errors are projected onto. ``vm_list`` gives VM sizes in GiB
    used in turn (``(8, 32)``: 8, 32, 8, 32, ...); without it every VM is ``vm_gib``."""

    memory_gib: int = 512
    vm_gib: int = 32
    vms: int | None = None               # default: as many as fit after the reserved 4 GiB
    backing: Literal["4K", "2M", "1G"] = "2M"
    guest: Literal["default", "confidential"] = "default"
    shared: bool = False                 # guest memory shared with the VMM (else private)
    vm_list: tuple[int, ...] | None = None

    def layout(self) -> list[tuple[int, int]]:
        """(first GiB after the reserved 4 GiB, size GiB) of each VM, in address order."""
        sizes = self.vm_list or (self.vm_gib,)
        room = self.memory_gib - RESERVED_GIB
        out: list[tuple[int, int]] = []
        at = 0
        while self.vms is None or len(out) < self.vms:
            size = sizes[len(out) % len(sizes)]
            if size < 1 or at + size > room:
                break
            out.append((at, size))
            at += size
        return out

    @property
    def nvms(self) -> int:
        return len(self.layout())

    def validate(self) -> None:
        """Raise ``ShapeError`` (naming the option at fault) for a host that has no VM: a
        guest_memfd host without guest memory has nothing to project onto, and a projection
        onto it would count VM outcomes without VMs."""
        room = self.memory_gib - RESERVED_GIB
        if room < 1:
            raise ShapeError("--host-memory", f"expected more than {RESERVED_GIB} GiB (the "
                             f"host kernel and the VMM take the first {RESERVED_GIB} GiB), "
                             f"got {self.memory_gib} GiB")
        if min(self.vm_list or (self.vm_gib,)) < 1:
            raise ShapeError("--vm-size", "VM size must be at least 1 GiB")
        if self.vms is not None and self.vms < 1:
            raise ShapeError("--vms", f"expected at least 1 VM, got {self.vms}: the errors "
                             "are projected onto a guest_memfd host, which needs a VM")
        if self.nvms == 0:
            raise ShapeError("--vm-size", f"no VM of {self._sizes()} GiB fits in {room} GiB "
                             f"of guest memory ({self.memory_gib} GiB host memory less "
                             f"{RESERVED_GIB} GiB for the host kernel and the VMM)")
        if self.vms is not None and self.vms > self.nvms:
            raise ShapeError("--vms", f"{self.vms} VMs of {self._sizes()} GiB do not fit in "
                             f"{room} GiB of guest memory (at most {self.nvms})")

    def _sizes(self) -> str:
        return "/".join(str(x) for x in (self.vm_list or (self.vm_gib,)))

    def place(self, phys: int) -> tuple[str, int | None, int]:
        """(memory kind, VM index, offset in that VM / region) of a host physical address
        (taken modulo the host's memory)."""
        off = phys % (self.memory_gib * GiB)
        if off < 3 * GiB:
            return "kernel", None, off
        if off < RESERVED_GIB * GiB:
            return "vmm", None, off - 3 * GiB
        vm_off = off - RESERVED_GIB * GiB
        for i, (start, size) in enumerate(self.layout()):
            if start * GiB <= vm_off < (start + size) * GiB:
                return ("gmem_shared" if self.shared else "gmem_private"), i, \
                    vm_off - start * GiB
        return "hugetlb_free", None, vm_off

    def vm_size(self, vm: int | None) -> int:
        lay = self.layout()
        return lay[vm][1] if vm is not None and vm < len(lay) else self.vm_gib

    def to_json(self) -> dict[str, Any]:
        return {"memory_gib": self.memory_gib, "vm_gib": list(self.vm_list or (self.vm_gib,)),
                "vms": self.nvms, "backing": self.backing, "guest": self.guest,
                "shared": self.shared,
                "layout": f"host physical address modulo {self.memory_gib} GiB: [0, 3 GiB) "
                          "host kernel, [3, 4 GiB) VMM, then the VMs one after the other, "
                          "the rest free HugeTLB pool"}


@dataclass
class HwError:
    """One failed page of the input, as a hardware error."""

    host: str
    pfn: int
    time: float | None
    consumed: bool
    fatal: bool
    uptime: float | None = None
    epoch: float | None = None
    repeats: int = 0
    ce_before: int = 0
    events: list[int] = field(default_factory=list)


def hardware_errors(read: ReadResult) -> tuple[list[HwError], dict[str, Any]]:
    """The distinct uncorrected errors per (host, page), and what was left out."""
    by_page: dict[tuple[str, int], HwError] = {}
    injected: set[tuple[str, int]] = set()
    ces: dict[tuple[str, int], list[RasEvent]] = defaultdict(list)
    noaddr = 0
    qemu = 0
    for e in read.events:
        host = e.host or e.source
        if e.kind == "injection" and e.pfn is not None:
            injected.add((host, e.pfn))
            continue
        if e.error_class in ("corrected", "deferred") and e.pfn is not None:
            ces[(host, e.pfn)].append(e)
            continue
        uc = e.kind in ("memory_failure", "consumed") or e.error_class in (
            "uncorrected-ao", "uncorrected-ar", "fatal")
        if e.kind == "qemu" and e.detail.get("code"):
            qemu += 1
            continue
        if not uc or e.kind in ("qemu", "panic", "kernel_bug"):
            continue
        if e.kind == "machine_check" and e.mce is not None and not e.mce.memory and \
                not e.mce.bits.addrv:
            continue
        if e.pfn is None:
            noaddr += 1
            continue
        k = (host, e.pfn)
        err = by_page.get(k)
        if err is None:
            err = by_page[k] = HwError(host, e.pfn, _when(e), False, False, e.uptime, e.epoch)
        elif e.kind == "memory_failure" and err.events and \
                any(read.events[i].kind == "memory_failure" for i in err.events):
            err.repeats += 1
        err.events.append(e.seq)
        err.consumed |= e.kind == "consumed" or e.error_class == "uncorrected-ar"
        err.fatal |= e.error_class == "fatal"
        if err.time is None:
            err.time = _when(e)
        err.uptime = err.uptime if err.uptime is not None else e.uptime
        err.epoch = err.epoch if err.epoch is not None else e.epoch
    errs = []
    skipped = 0
    for k, err in by_page.items():
        if k in injected:
            skipped += 1
            continue
        err.ce_before = sum(1 for c in ces.get(k, []) if _before(c, err))
        errs.append(err)
    errs.sort(key=lambda x: (x.host, x.time if x.time is not None else float("inf"), x.pfn))
    left = {"software_injections": skipped, "uncorrected_without_address": noaddr,
            "qemu_guest_reports": qemu,
            "corrected_pages": len(ces), "corrected_records": sum(len(v) for v in ces.values())}
    return errs, left


def _before(ce: RasEvent, err: HwError) -> bool:
    """Whether a corrected error came before the uncorrected one, on a clock both have (when
    none is shared, it counts as history)."""
    if ce.uptime is not None and err.uptime is not None:
        return ce.uptime <= err.uptime
    if ce.epoch is not None and err.epoch is not None:
        return ce.epoch <= err.epoch
    return True


def _when(e: RasEvent) -> float | None:
    if e.epoch is not None:
        return e.epoch
    return e.uptime


def classes(errs: list[HwError], shape: HostShape) -> list[tuple[FailureClass, list[HwError]]]:
    """Group a host's errors per folio into failure classes (a burst of pages is one fault;
    a later error in a folio already hit is a second fault)."""
    folio = PAGE_BYTES[shape.backing]
    groups: dict[tuple[str, Any, int], list[HwError]] = defaultdict(list)
    for err in errs:
        kind, vm, off = shape.place(err.pfn << 12)
        unit = folio if kind.startswith("gmem") else PAGE_BYTES["2M"] \
            if kind == "hugetlb_free" else 4096
        groups[(kind, vm, off // unit)].append(err)
    out = []
    for (kind, vm, _), group in groups.items():
        first_t = group[0].time
        burst = [g for g in group if first_t is None or g.time is None
                 or g.time - first_t <= BURST_SECONDS]
        later = len(group) > len(burst)
        head = group[0]
        if head.fatal and not head.consumed:
            # the log's own consumer was the kernel (a fatal machine check): keep it
            touch = "kernel_unchecked"
        elif kind.startswith("gmem"):
            touch = "guest_read" if head.consumed else "scrub"
        elif kind == "vmm":
            touch = "vmm_read" if head.consumed else "scrub"
        elif kind == "hugetlb_free":
            # nobody maps a free HugeTLB folio, so the log's consumer (a process, a guest) has
            # no counterpart on the projected host: the scrub meets the error and
            # memory_failure() dissolves the folio and takes the raw page off the buddy lists
            # (R50, dissolve_free_hugetlb_folio, R59: MF_MSG_FREE_HUGE, Recovered). Only a
            # fatal machine check (the kernel consumed it, kept above) stays a kernel read.
            touch = "kernel_unchecked" if head.fatal else "scrub"
        else:
            touch = "kernel_unchecked" if head.consumed or head.fatal else "scrub"
        cls = FailureClass(
            memory=kind,  # type: ignore[arg-type]
            vm_type=("confidential" if shape.guest == "confidential" else "default")
            if kind.startswith("gmem") or kind == "vmm" else "none",
            vm_gib=shape.vm_size(vm) if kind.startswith("gmem") else
            shape.vm_size(0) if kind == "vmm" else 0,
            page_size=shape.backing if kind != "kernel" and kind != "vmm" else "4K",
            pages_hit=min(MAX_PAGES, len(burst)), same_folio=len(burst) > 1,
            second_fault=later, first_touch=touch,  # type: ignore[arg-type]
            permanent=True)
        out.append((cls, group))
    return out


def project(read: ReadResult, shape: HostShape, policies: list[str],
            profile: str = "linux-6.18") -> dict[str, Any]:
    """Per policy: what the input's hardware errors would have cost on ``shape``."""
    shape.validate()
    errs, left = hardware_errors(read)
    oracle = ModelOracle(profile)
    hosts = sorted({e.host for e in errs})
    per_host: dict[str, Any] = {}
    totals = {p: Outcome() for p in policies}
    cannot: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    for host in hosts:
        mine = [e for e in errs if e.host == host]
        host_tot = {p: Outcome() for p in policies}
        for cls, group in classes(mine, shape):
            row: dict[str, Any] = {"host": host, "pfns": [f"{g.pfn:#x}" for g in group],
                                   "class": cls.key(), "ce_before": sum(g.ce_before
                                                                        for g in group),
                                   "outcomes": {}}
            for pol in policies:
                try:
                    out = oracle.outcome(pol, cls)
                except FleetError as e:
                    cannot.append({"host": host, "class": cls.key(), "policy": pol,
                                   "reason": str(e)})
                    continue
                row["outcomes"][pol] = _nonzero(out)
                host_tot[pol] = _add(host_tot[pol], out)
                totals[pol] = _add(totals[pol], out)
            rows.append(row)
        per_host[host] = {"errors": len(mine),
                          **{p: _as_dict(o) for p, o in host_tot.items()}}
    return {
        "shape": shape.to_json(), "profile": profile, "policies": policies,
        "errors": len(errs), "hosts": len(hosts),
        "uc_with_ce_history": sum(1 for e in errs if e.ce_before),
        "left_out": left, "totals": {p: _as_dict(o) for p, o in totals.items()},
        "per_host": per_host, "classes": rows, "cannot_project": cannot,
        "model_runs": oracle.model_runs,
    }


def _add(a: Outcome, b: Outcome) -> Outcome:
    return Outcome(*[x + y for x, y in zip(a.as_tuple(), b.as_tuple(), strict=True)])


def _as_dict(o: Outcome) -> dict[str, float]:
    return dict(zip(Outcome.names(), o.as_tuple(), strict=True))


def _nonzero(o: Outcome) -> dict[str, float]:
    return {k: v for k, v in _as_dict(o).items() if v}
