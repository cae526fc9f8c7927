"""Counterexamples of ``memfail check`` as data for the report: swimlane rows from each step's
trace events, and folio maps (the huge folio as a grid of its base pages) before and after it.

Everything is read from the states ``memfail.check.counterexample.replay`` walks through: the
same Host objects the checker explored, never a second model.
"""

from __future__ import annotations

from typing import Any

from memfail.model.trace import Event

# Swimlanes, top to bottom: the lanes. Each trace event kind goes to one lane.
LANES: tuple[tuple[str, str], ...] = (
    ("cpu", "CPU / machine check"),
    ("mf", "memory_failure"),
    ("stage2", "KVM stage 2"),
    ("pt", "host page tables"),
    ("vmm", "VMM threads"),
    ("guest", "guest"),
)
LANE_OF: dict[str, str] = {
    "machine_check": "cpu", "poison_consumed": "cpu", "host_stall": "cpu", "panic": "cpu",
    "memory_failure": "mf", "memory_failure_event": "mf", "page_isolated": "mf",
    "hugetlb_pool": "mf", "policy": "mf", "poison_handed_out": "mf", "log": "mf",
    "stage2_zap": "stage2", "kvm_exit": "stage2",
    "pte": "pt",
    "signal": "vmm", "signal_delivered": "vmm", "exit": "vmm", "mce_injected": "vmm",
    "guest": "guest", "vm_state": "guest",
}
# Event kinds left off the lanes: step bookkeeping, not behaviour.
SKIP = frozenset({"action", "observe"})


def event_text(e: Event) -> str:
    """One short line for an event on its lane (the trace's own field names and values)."""
    d = e.to_dict()
    kind = str(d.pop("event", e.kind))
    d.pop("step", None)
    if kind == "memory_failure":
        return f"memory_failure({_hex(d.get('pfn'))}) = {d.get('ret_name') or d.get('ret')}"
    if kind == "memory_failure_event":
        return f"{d.get('page_type')}: {d.get('result')}"
    if kind == "signal":
        return (f"SIGBUS {d.get('si_code')} -> {d.get('comm')}/{d.get('thread')} "
                f"({d.get('outcome')})")
    if kind == "signal_delivered":
        return f"{d.get('comm')}/{d.get('thread')}: {d.get('effect')}"
    if kind == "poison_consumed":
        return f"poison consumed at {_hex(d.get('pfn'))} by {d.get('by')} ({d.get('mode')})"
    if kind == "poison_handed_out":
        return f"poison {_hex(d.get('pfn'))} handed out to {d.get('to')}"
    if kind == "stage2_zap":
        return f"zap {d.get('vm')} gfn {_hex(d.get('gfn_start'))}-{_hex(d.get('gfn_end'))}"
    if kind == "pte":
        return f"{d.get('change')} {d.get('addr_rel')} pfn {_hex(d.get('pfn'))}"
    if kind == "vm_state":
        return f"{d.get('vm')} {d.get('state')}" + (f": {d['why']}" if d.get("why") else "")
    if kind == "policy":
        return f"policy {d.get('hook')}: {d.get('what')}"
    if kind == "log":
        return str(d.get("text", ""))
    if kind == "exit":
        sig = d.get("signal")
        return f"{d.get('comm')} exited" + (f" (signal {sig})" if sig else f" ({d.get('code')})")
    bits = ", ".join(f"{k}={_hex(v) if k == 'pfn' else v}" for k, v in d.items()
                     if v not in (None, "", [], {}))
    return f"{kind} {bits}".strip()


def _hex(v: Any) -> str:
    return f"{v:#x}" if isinstance(v, int) else str(v)


def lanes_of(events: tuple[Event, ...] | list[Event]) -> dict[str, list[str]]:
    """A step's events by lane, in trace order."""
    out: dict[str, list[str]] = {}
    for e in events:
        if e.kind in SKIP:
            continue
        out.setdefault(LANE_OF.get(e.kind, "mf"), []).append(event_text(e))
    return out


def folio_region(hosts: list[Any]) -> tuple[int, int] | None:
    """(first pfn, page count) of the huge folio the counterexample's error lies in: the
    PMD-sized, naturally aligned block around the lowest failed pfn seen on the path."""
    errs: set[int] = set()
    for h in hosts:
        errs |= set(h.phys.hw_errors) | set(h.phys.detected)
    if not errs:
        return None
    order = int(hosts[-1].geometry.pmd_order)
    n = 1 << order
    head = min(errs) & ~(n - 1)
    return head, n


def page_state(host: Any, pfn: int) -> dict[str, Any]:
    """One base page as the folio map shows it (kernel state, R49/R56 for the flags; C1 for
    the policy's table; stage 2 and user page tables for who can still reach it)."""
    phys = host.phys
    folio = phys.folio_of(pfn)
    table = host.ext.get("gmem_table", {}) if hasattr(host, "ext") else {}
    stage2: list[str] = []
    for name, vm in host.ext.get("vms", {}).items():
        for _gfn, (p, order) in vm.spte.items():
            if p <= pfn < p + (1 << order):
                stage2.append(name)
                break
    mapped: list[str] = []
    hwp_entry: list[str] = []
    for proc in host.processes_in_order():
        if proc.mm is None:
            continue
        for pte in proc.mm.ptes.values():
            if pte.pfn <= pfn < pte.pfn + (1 << pte.order):
                (hwp_entry if pte.kind == "hwpoison" else mapped).append(proc.comm)
                break
    if folio is not None:
        where = "folio" if folio.order > 0 else "page"
        order = folio.order
    elif pfn in phys.isolated:
        where, order = "isolated", 0
    elif phys.free_block_of(pfn) is not None:
        where, order = "free", 0
    else:
        where, order = "hugetlb-free", 0
        for h in host.hugetlb.hstates.values():
            for f in h.free_list:
                if f.pfn <= pfn < f.pfn + f.nr_pages:
                    order = f.order
                    folio_flags = f.flags
                    return _page(pfn, phys, where, order, "hwpoison" in folio_flags, table,
                                 stage2, mapped, hwp_entry)
    folio_hwp = folio is not None and "hwpoison" in folio.flags
    return _page(pfn, phys, where, order, folio_hwp, table, stage2, mapped, hwp_entry)


def _page(pfn: int, phys: Any, where: str, order: int, folio_hwp: bool, table: Any,
          stage2: list[str], mapped: list[str], hwp_entry: list[str]) -> dict[str, Any]:
    return {
        "pfn": pfn,
        "failed": pfn in phys.hw_errors,
        "detected": pfn in phys.detected,
        "hwpoison": pfn in phys.hwpoison,
        "folio_hwpoison": folio_hwp,
        "table": pfn in table,
        "where": where,
        "order": order,
        "stage2": sorted(set(stage2)),
        "host": sorted(set(mapped)),
        "hwpoison_entry": sorted(set(hwp_entry)),
    }


def folio_map(host: Any, region: tuple[int, int]) -> list[dict[str, Any]]:
    head, n = region
    return [page_state(host, pfn) for pfn in range(head, head + n)]


def counterexample_data(system: Any, verdict: Any) -> dict[str, Any]:
    """Swimlane rows and folio maps along ``verdict``'s path (``replay`` of the checker)."""
    from memfail.check.counterexample import describe_step, replay

    labels = list(verdict.labels)
    rep = replay(system, labels)
    hosts = [s.host for s in rep.states]
    region = folio_region(hosts)
    steps = []
    for i, label in enumerate(labels):
        state = rep.states[i + 1]
        steps.append({"label": describe_step(label), "lanes": lanes_of(state.events),
                      "changes": rep.changes[i]})
    return {
        "steps": steps,
        "region": None if region is None else {"head": region[0], "pages": region[1]},
        "folio": [] if region is None else [folio_map(h, region) for h in hosts],
    }
