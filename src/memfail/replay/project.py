"""Counterfactual projection: the same hardware errors on a guest_memfd host, per policy.

Every uncorrected memory error of the input (a page, its time, whether a CPU consumed it) is
placed on a host of a given shape (memory, VM sizes, guest_memfd backing, guest type) by its
physical address, turned into the fleet's ``FailureClass`` and costed by the fleet's outcome
oracle (``memfail.fleet.ModelOracle``: each class run once per policy on the model). Software
injections are not hardware errors and are left out; corrected errors are history.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
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
    clock: str | None = None
    """The clock of ``time``, the one its host's errors share most (``CLOCKS``)."""
    times: dict[str, float] = field(default_factory=dict)
    """Its first record's time on every clock it has: ``uptime`` (dmesg, trace), ``epoch``
    (a timestamp with a year, or the machine check's TIME) and ``syslog`` (a syslog timestamp
    without a year, counted from 1 January of a nominal year, a new year when the dates of a
    file go backwards)."""
    panic: str | None = None
    """The host panicked on this error whatever the policy: the rule and the message (the
    machine check graded PANIC, M5/R47, or the log's panic of a rule the policy does not
    change, docs/replay.md "Machine-check panics")."""
    kernel_read: bool = False
    """The log's panic says the kernel loaded the poison without a fixup (R47: "Data load in
    unrecoverable area of kernel"): the first touch is a kernel read, whatever the grade."""


def hardware_errors(read: ReadResult) -> tuple[list[HwError], dict[str, Any]]:
    """The distinct uncorrected errors per (host, page), and what was left out.

    A panic of the log (``Machine check: REASON``, ``Kernel panic - not syncing: ...``) is the
    end of the error logged just before it in the same file: the first one that names a
    panic rule (docs/replay.md "Machine-check panics") decides. A rule the policy does not
    change (``none``: a grade of PANIC decided in #MC context, M5, R47; the R44 panics of
    queue_task_work) or changes only the chance of (``exposure``: the rendezvous timeouts,
    M3) makes the error a host panic under every policy (``panic``); a rule the policy does
    change (``yes``: a kernel load without fixup, R47) makes it a kernel read (``fatal``).
    """
    from .panics import rule_for

    by_page: dict[tuple[str, int], HwError] = {}
    injected: set[tuple[str, int]] = set()
    ces: dict[tuple[str, int], list[RasEvent]] = defaultdict(list)
    noaddr = 0
    qemu = 0
    clock = _SyslogClock()
    # per file: the error a panic would end, and when its record was logged
    last: dict[str, tuple[HwError, dict[str, float]] | None] = {}
    for e in read.events:
        host = e.host or e.source
        if e.kind == "panic":
            rule = rule_for(e.message or "")
            prev = last.get(e.source)
            if prev is None or rule is None or not rule.panic or "unknown source" in \
                    rule.message or not _soon(prev[1], _when(e, clock)):
                continue   # no error of this file just before it, or none of its own
            ended = prev[0]
            if rule.policy in ("none", "exposure"):
                if ended.panic is None or ended.panic.startswith((GRADED, FATAL_REPORT)):
                    ended.panic = f"{rule.rule}: {e.message}"   # the log's own reason
            elif _reported_before(read, ended):
                # a kernel load without fixup (R47) of a page reported earlier: the policy
                # decides (a user that checks PG_hwpoison skips a page the policy marked)
                ended.fatal = ended.kernel_read = True
            else:
                # ... of a latent error: the load is its first report, so no memory_failure()
                # and no policy code ran before it: a host panic under every policy
                ended.panic = f"{rule.rule}: {e.message} (a latent error: nothing ran " \
                              "before the load)"
            last[e.source] = None   # one panic per error: the lines after it follow from it
            continue
        if e.kind == "injection" and e.pfn is not None:
            injected.add((host, e.pfn))
            continue
        if e.error_class == "corrected" and e.pfn is not None:
            ces[(host, e.pfn)].append(e)
            continue
        # a deferred error (AMD's deferred bit, or a poisoned uncorrected error that was not
        # consumed) is graded MCE_DEFERRED_SEVERITY, and uc_decode_notifier() hands
        # MCE_AO_SEVERITY and MCE_DEFERRED_SEVERITY alike to memory_failure(pfn, 0): it is
        # an action-optional error, not corrected history
        uc = e.kind in ("memory_failure", "consumed") or e.error_class in (
            "uncorrected-ao", "uncorrected-ar", "fatal", "deferred")
        if e.kind == "qemu" and e.detail.get("code"):
            qemu += 1
            continue
        if not uc or e.kind in ("qemu", "kernel_bug"):
            continue
        if e.kind == "machine_check" and e.mce is not None and not e.mce.memory and \
                not e.mce.bits.addrv:
            continue
        if e.pfn is None:
            noaddr += 1
            continue
        k = (host, e.pfn)
        when = _when(e, clock)
        err = by_page.get(k)
        if err is None:
            err = by_page[k] = HwError(host, e.pfn, None, False, False, e.uptime, e.epoch)
        elif e.kind == "memory_failure" and err.events and \
                any(read.events[i].kind == "memory_failure" for i in err.events):
            err.repeats += 1
        err.events.append(e.seq)
        err.consumed |= e.kind == "consumed" or e.error_class == "uncorrected-ar"
        if e.error_class == "fatal":   # graded PANIC in #MC context (M5, R47)
            err.fatal = True
            err.panic = err.panic or _graded(e)
        for c, t in when.items():
            err.times.setdefault(c, t)
        err.uptime = err.uptime if err.uptime is not None else e.uptime
        err.epoch = err.epoch if err.epoch is not None else e.epoch
        last[e.source] = (err, when)
    errs = []
    skipped = 0
    for k, err in by_page.items():
        if k in injected:
            skipped += 1
            continue
        err.ce_before = sum(1 for c in ces.get(k, []) if _before(c, err))
        errs.append(err)
    _pick_clocks(errs)
    errs.sort(key=lambda x: (x.host, x.time if x.time is not None else float("inf"), x.pfn))
    left = {"software_injections": skipped, "uncorrected_without_address": noaddr,
            "qemu_guest_reports": qemu,
            "corrected_pages": len(ces), "corrected_records": sum(len(v) for v in ces.values())}
    return errs, left


def _reported_before(read: ReadResult, err: HwError) -> bool:
    """Whether ``err`` had a record that ran memory_failure() before the machine check a
    kernel-load panic ends it with: a memory_failure() line, or an action-optional or
    deferred report (uc_decode_notifier, GHES). The machine check of the load itself (graded
    action-required, or panic) is not one."""
    for i in err.events:
        ev = read.events[i]
        if ev.kind == "memory_failure" or ev.error_class in ("uncorrected-ao", "deferred"):
            return True
    return False


GRADED = "M5: severity.c grades it PANIC"
FATAL_REPORT = "R47: the error is reported fatal"


def _graded(e: RasEvent) -> str:
    """Why the record ``e`` ended the host: its machine check graded PANIC
    (mce_severity_intel/_amd, M5, M6), or a firmware / EDAC / powerpc report of a fatal error
    (a fatal GHES error panics in ghes_proc -> __ghes_panic, R47)."""
    m = e.mce
    if m is None:
        via = e.detail.get("via") if isinstance(e.detail, dict) else None
        return f"{FATAL_REPORT}{f' ({via})' if via else ''}"
    why = "Processor context corrupt" if m.bits.pcc else \
        "no restart IP (MCG_STATUS.RIPV clear) in kernel mode" if m.bits.ar else \
        "uncorrected, not recoverable"
    return f"{GRADED}: {why}"


def _before(ce: RasEvent, err: HwError) -> bool:
    """Whether a corrected error came before the uncorrected one, on a clock both have (when
    none is shared, it counts as history)."""
    if ce.uptime is not None and err.uptime is not None:
        return ce.uptime <= err.uptime
    if ce.epoch is not None and err.epoch is not None:
        return ce.epoch <= err.epoch
    return True


_SYSLOG_TIME = re.compile(r"^(?P<mon>[A-Z][a-z]{2}) +(?P<day>\d{1,2}) (?P<h>\d\d):(?P<m>\d\d):"
                          r"(?P<s>\d\d(?:\.\d+)?)$")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_HALF_YEAR = 183 * 86400.0


class _SyslogClock:
    """Seconds of syslog timestamps without a year (``Nov 26 09:36:22``, RFC 3164), per file:
    counted from 1 January of a nominal leap year, plus a year each time the dates of a file
    go back by more than half a year (a log that runs over New Year). Only differences
    matter: they place errors of one file in time (one fault or a second fault)."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float]] = {}   # file -> (last seconds, offset)

    def seconds(self, source: str, text: str | None) -> float | None:
        m = _SYSLOG_TIME.match((text or "").strip())
        if m is None or m.group("mon") not in _MONTHS:
            return None
        try:
            d = datetime(2000, _MONTHS.index(m.group("mon")) + 1, int(m.group("day")))
        except ValueError:
            return None
        t = (d - datetime(2000, 1, 1)).total_seconds() + int(m.group("h")) * 3600 + \
            int(m.group("m")) * 60 + float(m.group("s"))
        prev, offset = self._last.get(source, (t, 0.0))
        if t + offset < prev - _HALF_YEAR:
            offset += 366 * 86400.0
        self._last[source] = (t + offset, offset)
        return t + offset


CLOCKS = ("uptime", "epoch", "syslog")
"""The clocks of a record's time, preferred in this order: a dmesg's machine check has its
TIME (epoch) but its memory_failure() lines only their uptime."""


def _pick_clocks(errs: list[HwError]) -> None:
    """Give each error the time of the clock most errors of its host have (the first of
    ``CLOCKS`` on a tie), so the host's errors are ordered and compared on one clock."""
    for host in {e.host for e in errs}:
        mine = [e for e in errs if e.host == host]
        best = max(CLOCKS, key=lambda c: (sum(c in e.times for e in mine), -CLOCKS.index(c)))
        for e in mine:
            e.clock = best if best in e.times else next((c for c in CLOCKS if c in e.times),
                                                        None)
            e.time = e.times.get(e.clock) if e.clock else None


PANIC_SECONDS = 10.0
"""A machine-check panic follows its record in the same #MC (within mca_cfg.monarch_timeout,
1 s, of the rendezvous): a panic logged later than this after the last error of its file,
on a clock both have, is not that error's."""


def _soon(err_at: dict[str, float], panic_at: dict[str, float]) -> bool:
    """Whether a panic logged at ``panic_at`` can be the end of an error logged at
    ``err_at`` (on the first clock both have; True when they share none)."""
    c = next((c for c in CLOCKS if c in err_at and c in panic_at), None)
    return c is None or 0 <= panic_at[c] - err_at[c] <= PANIC_SECONDS


def _when(e: RasEvent, clock: _SyslogClock | None = None) -> dict[str, float]:
    """The event's time on every clock it has (``CLOCKS``): its uptime, its epoch (a
    timestamp with a year, or the machine check's TIME), its yearless syslog time."""
    out = {}
    if e.uptime is not None:
        out["uptime"] = e.uptime
    if e.epoch is not None:
        out["epoch"] = e.epoch
    t = clock.seconds(e.source, e.time) if clock is not None else None
    if t is not None:
        out["syslog"] = t
    return out


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
        head = group[0]
        burst = [g for g in group if not _later(head, g)]
        later = len(group) > len(burst)
        if head.kernel_read:
            # a kernel load without fixup of a page reported before (R47): the policy decides
            # whether its flag was set, which a checking user (kcore) skips; without it the
            # load panics
            touch = "kernel_checked"
        elif head.fatal and not head.consumed:
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
        # a confidential guest sees no vMCE, so it re-executes the load (behaviour
        # `confidential`, docs/mce.md) for the fleet's rounds, as memfail fleet samples it
        # (sampler: a confidential VM's guest_memfd cells are all `confidential`); a default
        # guest is the fleet's cooperative one (the log does not say what the guest did)
        acting = kind.startswith("gmem") and shape.guest == "confidential"
        cls = FailureClass(
            memory=kind,  # type: ignore[arg-type]
            vm_type=("confidential" if shape.guest == "confidential" else "default")
            if kind.startswith("gmem") or kind == "vmm" else "none",
            vm_gib=shape.vm_size(vm) if kind.startswith("gmem") else
            shape.vm_size(0) if kind == "vmm" else 0,
            page_size=shape.backing if kind != "kernel" and kind != "vmm" else "4K",
            pages_hit=min(MAX_PAGES, len(burst)), same_folio=len(burst) > 1,
            second_fault=later, first_touch=touch,  # type: ignore[arg-type]
            permanent=True, behaviour="confidential" if acting else "cooperative",
            effort=confidential_effort() if acting else 0)
        out.append((cls, group))
    return out


def _later(head: HwError, err: HwError) -> bool:
    """Whether ``err`` came more than ``BURST_SECONDS`` after ``head`` (a second fault in the
    folio, not the same one): on the clock both have; errors without a common clock (no time,
    or different clocks) are taken as one fault."""
    if err is head or head.time is None or err.time is None or head.clock != err.clock:
        return False
    return err.time - head.time > BURST_SECONDS


@lru_cache(maxsize=1)
def confidential_effort() -> int:
    """Rounds a confidential guest plays after it met poison: the fleet's default
    ``vms.guest_effort.confidential`` (src/memfail/fleet/defaults.yaml), so a class costs in
    replay what it costs in memfail fleet."""
    from memfail.fleet import load_fleet

    return int(load_fleet().params.vms.guest_effort.confidential)


def project(read: ReadResult, shape: HostShape, policies: list[str],
            profile: str = "linux-6.18") -> dict[str, Any]:
    """Per policy: what the input's hardware errors would have cost on ``shape``.

    Each class is costed by the fleet's oracle, with two exceptions that follow the log:

    * an error the host panicked on whatever the policy (``HwError.panic``: graded PANIC in
      #MC context, M5, R47, or a logged panic of a rule no policy changes) is a host panic
      under every policy, and nothing else: the panic comes before any guest_memfd policy
      code runs, so the model is not asked;
    * once a VM is gone under a policy (killed, ``vm_killed``, or all its guest memory lost,
      ``guest_gib_lost``), a later class in its memory costs that VM nothing more: its
      guest_memfd is released (C4) and the folios are back in the HugeTLB pool, so the class
      is costed as free-pool memory met by the scrub (memory_failure() dissolves the folio,
      R50, R59). Guest memory lost in one VM never adds up past its size. A host panic ends
      every VM of the host (they start again after it).
    """
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
        vms: dict[str, dict[int, _VmState]] = {p: defaultdict(_VmState) for p in policies}
        for cls, group in classes(mine, shape):
            row: dict[str, Any] = {"host": host, "pfns": [f"{g.pfn:#x}" for g in group],
                                   "class": cls.key(), "ce_before": sum(g.ce_before
                                                                        for g in group),
                                   "outcomes": {}}
            _, vm, _ = shape.place(group[0].pfn << 12)
            panic = next((g.panic for g in group if g.panic), None)
            if panic is not None:
                row["host_panic"] = panic
            for pol in policies:
                state = vms[pol][vm] if vm is not None and cls.memory.startswith("gmem") \
                    else None
                run = cls
                if panic is None and state is not None and state.gone:
                    run = _freed(cls)
                    row.setdefault("vm_gone", {})[pol] = {
                        "vm": vm, "by": state.gone_by, "class": run.key()}
                try:
                    out = Outcome(host_panic=1.0) if panic is not None else \
                        oracle.outcome(pol, run)
                except FleetError as e:
                    cannot.append({"host": host, "class": run.key(), "policy": pol,
                                   "reason": str(e)})
                    continue
                if state is not None and run is cls:
                    out = state.charge(out, shape.vm_size(vm), row["pfns"][0])
                if out.host_panic:
                    vms[pol].clear()
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


@dataclass
class _VmState:
    """One projected VM under one policy: guest memory lost so far, and whether it is gone."""

    lost_gib: float = 0.0
    killed: bool = False
    gone_by: str | None = None
    paused: float = 0.0
    """How paused the VM is already (1: paused; an expected value between)."""

    @property
    def gone(self) -> bool:
        return self.gone_by is not None

    def charge(self, out: Outcome, vm_gib: int, pfn: str) -> Outcome:
        """``out`` with its guest memory loss capped at what the VM still has and its pause
        at the VM not already paused (a VM is paused once: `vm_paused` counts VMs); record a
        kill or a loss of the whole VM (the VM is gone from then on)."""
        room = max(0.0, vm_gib - self.lost_gib)
        if out.guest_gib_lost > room:
            out = replace(out, guest_gib_lost=room)
        if out.vm_paused > 1.0 - self.paused:
            out = replace(out, vm_paused=max(0.0, 1.0 - self.paused))
        self.paused += out.vm_paused
        self.lost_gib += out.guest_gib_lost
        if out.vm_killed or self.lost_gib >= vm_gib:
            self.gone_by = pfn
        return out


def _freed(cls: FailureClass) -> FailureClass:
    """The class of an error in the memory of a VM already gone: free HugeTLB pool memory
    (the VM's guest_memfd released its folios, C4), met by the scrub, or by the kernel when
    the log's machine check says the kernel read it (R47); no guest acts on it."""
    return replace(cls, memory="hugetlb_free", vm_type="none", vm_gib=0,
                   first_touch="kernel_unchecked" if cls.first_touch == "kernel_unchecked"
                   else "scrub", behaviour="cooperative", effort=0)


def _add(a: Outcome, b: Outcome) -> Outcome:
    return Outcome(*[x + y for x, y in zip(a.as_tuple(), b.as_tuple(), strict=True)])


def _as_dict(o: Outcome) -> dict[str, float]:
    return dict(zip(Outcome.names(), o.as_tuple(), strict=True))


def _nonzero(o: Outcome) -> dict[str, float]:
    return {k: v for k, v in _as_dict(o).items() if v}
