"""A guest_memfd memory-failure policy: a preset over orthogonal knobs.

Each knob is one design decision argued on the 2025-07-24 call (reference/kernel-behaviour.md
§1N, C1-C8). A policy is frozen and hashable; a scenario may name a preset or write its own
combination of knobs in YAML (``policy: {base: minimum, unmap_stage2: folio}``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal, get_args

Record = Literal["folio", "table"]
Unmap = Literal["none", "subpage", "folio", "vm"]
HostUnmap = Literal["none", "subpage", "folio"]
Consumed = Literal["kernel", "sigbus-current", "sigbus-vmm", "kill-vm", "unusable"]
Unconsumed = Literal["kernel", "defer", "notify-vmm", "kill-vm", "unusable"]
SigAddr = Literal["hva", "none", "plain"]
VmOnError = Literal["none", "kill", "unusable"]
Scope = Literal["hugetlb", "all"]
Backing = Literal["gmem", "hugetlbfs"]


def knob_text(v: Any) -> str:
    """A knob value as a label and YAML write it (``true``, ``null``, ``folio``)."""
    return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)


KNOB_DOCS: dict[str, str] = {
    "handles": "Which guest_memfd folios memory_failure() hands to the policy instead of the "
               "kernel's own path: 'none' (mainline: 4K folios go through the LRU path and "
               "kvm_gmem_error_folio, HugeTLB-backed folios through the HugeTLB path, R63, "
               "R87), 'hugetlb' (the call's scope: HugeTLB-backed folios), 'all'.",
    "record": "Where a failure is recorded when detected: 'folio' = PG_hwpoison on the folio "
              "at detection (mainline, C8 'HWpoison on guest_memfd folios with locking'); "
              "'table' = only in a global table keyed by physical page (C1).",
    "mark_on_release": "Turn table records into PG_hwpoison when guest_memfd frees the folio at "
                       "inode release (C4).",
    "mark_on_truncate": "Also mark when a folio is freed by punch hole / truncate (the call "
                        "only says 'at inode release').",
    "isolate_on_free": "When guest_memfd frees a folio the policy marked PG_hwpoison, the HugeTLB "
                       "free path dissolves it and takes the poisoned raw pages off buddy (S15; "
                       "what free_has_hwpoisoned / R57, R88 do). Without it, free_huge_folio "
                       "keeps the marked folio on the free list, skipped by allocation (R55).",
    "propagate_on_split": "Move PG_hwpoison to the right sub-folio on split and back on merge "
                          "(needs the locking C8 asks for); without it conversion drops the "
                          "flag (the policy's table still records the failure; kernel users "
                          "that trust PG_hwpoison no longer see it).",
    "unmap_stage2": "What is zapped from stage 2 (EPT/NPT) when the error is detected: 'none' "
                    "(C2), 'subpage' (C8 opt-in), 'folio' (mainline kvm_gmem_error_folio, Dan), "
                    "'vm' (Sean: everything of every bound VM).",
    "unmap_host": "What is unmapped from host page tables (guest_memfd mmap of shared memory): "
                  "'none' (C2: 'don't unmap'), 'subpage', 'folio' (the kernel's "
                  "hwpoison_user_mappings).",
    "fault_check": "kvm_gmem_get_pfn and the host mmap fault refuse failed memory (-EHWPOISON / "
                   "SIGBUS). C5 says no.",
    "check_granularity": "What fault_check refuses: the whole 'folio' (mainline: the head flag, "
                         "R67) or only the failed 'subpage'.",
    "consumed": "What happens when the failure is consumed (AR): 'kernel' (what memory_failure "
                "does for a page it cannot unmap: kill_accessing_process signals current only "
                "if current maps the page, R39/R82), 'sigbus-current' (C3), 'sigbus-vmm' (C8: "
                "current, and the other VMMs bound to the guest_memfd through a KVM request), "
                "'kill-vm' (Sean's 'kill the guest completely', only once the error is "
                "consumed), 'unusable' (James's 'make guest_memfd completely unusable', only "
                "once the error is consumed: the vCPU's next fault fails and the VM stops).",
    "unconsumed": "What happens when a failure is detected but not consumed (AO): 'kernel' "
                  "(kill_procs: BUS_MCEERR_AO to the early-kill threads of processes that map "
                  "the page, R35), 'defer' (C2: let everything run), 'notify-vmm' (C8: SIGBUS "
                  "AO to the VMM's early thread), 'kill-vm' (Sean: kill every VM bound to the "
                  "guest_memfd now), 'unusable' (James: make the guest_memfd unusable now).",
    "honor_early": "PR_MCE_KILL_EARLY of the owning VMM is honoured for unconsumed failures "
                   "(C8); C6 says it is not.",
    "sigbus_addr": "si_addr of the SIGBUS sent to current for consumed private memory that "
                   "has no host mapping: 'hva' (looked up as failed pfn -> guest_memfd binding "
                   "of the VM -> memslot -> its userspace_addr, then the host mappings of the "
                   "guest_memfd; NULL when neither exists, and the trace says so; QEMU can "
                   "inject a vMCE), 'none' (si_addr NULL: QEMU takes it as its own memory and "
                   "exits, Q4), 'plain' (SIGBUS without MCE payload: QEMU dies, Q2).",
    "vm_on_error": "What happens to the VM and the guest_memfd on any failure, consumed or "
                   "not, before consumed/unconsumed are applied: 'none', 'kill' (Sean: kill the "
                   "guest, unmap everything), 'unusable' (James: every later use of the "
                   "guest_memfd fails).",
    "mf_delayed_fix": "Kernel path only: whether truncate_error_folio passes MF_DELAYED through "
                      "(Lisa Wang's 'mm: Fix MF_DELAYED handling on memory failure', RFC v2, "
                      "unmerged, R66); None keeps the kernel profile's setting (released "
                      "kernels: without it).",
    "backing": "'gmem' or 'hugetlbfs': the hugetlbfs baseline backs guest memory by a "
               "hugetlbfs memfd mapped by the VMM (HVA memslots, S10/S11) instead of "
               "guest_memfd.",
}


# Changes a knob value depends on that no released kernel has: (knob, value) -> the series.
SERIES: dict[str, str] = {
    "gmem-hugetlb": "Ackerley Tng, '[RFC PATCH v2 00/51] 1G page support for guest_memfd' "
                    "(posted May 2025, not merged): HugeTLB-backed guest_memfd (R87)",
    "mf-delayed": "Lisa Wang, 'mm: Fix MF_DELAYED handling on memory failure' (RFC v2, in "
                  "mm-unstable, not in a release, R66/R85)",
    "free-path-isolation": "Jiaqi Yan, 'Only free healthy pages in high-order HWPoison folio' "
                           "(RFC 2026, merge status unknown, R57): the HugeTLB free path that "
                           "isolates the poisoned raw pages of a freed folio",
    "call-proposal": "the 2025-07-24 guest_memfd call's designs (C1-C8): discussed, no patches "
                     "posted",
}

# Knobs whose value is a reading of the call's words rather than a design choice: where the
# call allows more than one reading, the preset's value is one of them (docs/policies.md).
READINGS: dict[str, str] = {
    "sigbus_addr": "C3 'Send SIGBUS to current' does not say which si_addr/si_code",
    "mark_on_truncate": "C4 'when freeing folio on inode release': inode release only, or "
                        "every free (punch hole, truncate)",
    "isolate_on_free": "C4 'indicate any memory failures to HugeTLB using folio's HWpoison "
                       "flag' needs a HugeTLB free path that isolates them (unmerged)",
    "propagate_on_split": "the call does not say what a folio-flag record does on split/merge",
    "mf_delayed_fix": "what the kernel underneath does: released kernels, or with the "
                      "unmerged MF_DELAYED fix",
}


@dataclass(frozen=True)
class GmemPolicy:
    """One guest_memfd memory-failure policy: a name, the call items it implements and the
    knobs (see ``KNOB_DOCS``)."""

    name: str
    summary: str = ""
    call_items: tuple[str, ...] = ()
    handles: Literal["none", "hugetlb", "all"] = "none"
    record: Record = "folio"
    mark_on_release: bool = True
    mark_on_truncate: bool = True
    isolate_on_free: bool = False
    propagate_on_split: bool = True
    unmap_stage2: Unmap = "folio"
    unmap_host: HostUnmap = "folio"
    fault_check: bool = True
    check_granularity: Literal["folio", "subpage"] = "folio"
    consumed: Consumed = "kernel"
    unconsumed: Unconsumed = "kernel"
    honor_early: bool = True
    sigbus_addr: SigAddr = "hva"
    vm_on_error: VmOnError = "none"
    mf_delayed_fix: bool | None = None
    backing: Backing = "gmem"

    def knobs(self) -> dict[str, Any]:
        skip = {"name", "summary", "call_items"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}

    def with_knobs(self, name: str | None = None, **knobs: Any) -> GmemPolicy:
        valid = set(self.knobs())
        for k, v in knobs.items():
            if k not in valid:
                raise ValueError(f"unknown policy knob {k!r}; knobs: {', '.join(sorted(valid))}")
            allowed = knob_values(k)
            # by value and type: 1 == True, but 1 is not a knob's true
            if allowed is not None and not any(v == a and type(v) is type(a) for a in allowed):
                texts = [knob_text(a) for a in allowed]
                hint = " (a quoted string: write it without quotes)" \
                    if isinstance(v, str) and v.lower() in texts else ""
                raise ValueError(f"policy knob {k}: {v!r} is not one of "
                                 f"{', '.join(texts)}{hint}")
        return replace(self, name=name or f"{self.name}+custom", **knobs)

    def unmerged(self) -> list[str]:
        """Keys of ``SERIES`` this policy relies on (none: released kernels do this)."""
        out = []
        if self.call_items:
            out.append("call-proposal")
        if self.handles != "none":
            out.append("gmem-hugetlb")
        if self.mf_delayed_fix:
            out.append("mf-delayed")
        if self.isolate_on_free:
            out.append("free-path-isolation")
        return out

    def claims(self, folio_is_hugetlb: bool) -> bool:
        """Does memory_failure() hand this guest_memfd folio to the policy?"""
        return self.handles == "all" or (self.handles == "hugetlb" and folio_is_hugetlb)


def knob_values(name: str) -> tuple[Any, ...] | None:
    """The allowed values of a knob (None for free-form)."""
    for f in fields(GmemPolicy):
        if f.name == name:
            t = f.type if not isinstance(f.type, str) else eval(f.type, globals())
            args = get_args(t)
            if f.name == "mf_delayed_fix":
                return (True, False, None)
            if t is bool:
                return (True, False)
            if args and all(isinstance(a, str) for a in args):
                return args
            return None
    return None
