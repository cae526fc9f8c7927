"""The ``stage`` scenario action: one stage of an event in flight (``memfail check --races``).

With ``--races`` the checker splits memory_failure(), stage-2 and host faults, punch hole,
conversion and release into stages (memfail.check.races) and interleaves the stages of
different events. A ``--races`` counterexample is written as a scenario in which each stage is
a ``stage`` step; this module carries such a step out on the scenario's Host with the same
functions the checker uses (``races.first_stage``, ``races.run_stage``) and the same lock
rules as the checker's ``enabled()``, so ``memfail run`` replays exactly the explored path.

The events in flight are kept in ``host.ext["stages"]``: op -> (event, its actions, next
stage, context, locks carried to the next stage), plain data like the checker's
``ModelState.inflight``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

from pydantic import Field, ValidationError, field_validator

from memfail.check import races
from memfail.model.actions import ACTION_TYPES, Action, parse_action, register_actions
from memfail.model.errors import ModelInputError
from memfail.model.handlers import ActionResult, handles
from memfail.model.host import Host
from memfail.model.trace import MemoryFailureCall
from memfail.model.units import parse_size

if TYPE_CHECKING:
    from memfail.model.state import HostState

StageEvent = Literal["hw_error", "scrub", "vcpu_access", "vmm_access", "fault", "punch_hole",
                     "convert", "release"]
StageName = Literal["mf.record", "mf.unmap", "mf.notify", "fault.get_pfn", "fault.map",
                    "fault.access", "hostfault.lookup", "hostfault.map", "hostfault.access",
                    "punch.zap", "punch.free", "convert.attributes", "convert.folios",
                    "release.munmap", "release.close", "release.destroy"]
if set(get_args(StageName)) != set(races.STAGES):  # pragma: no cover - kept in step by a test
    raise ImportError("stage_action.StageName does not list races.STAGES")

EXT = "stages"  # host.ext key of the events in flight
SIZES = ("gpa", "size", "offset", "len")  # size arguments the stages compute with


class StageAction(Action):
    """One stage of an event in flight, as ``memfail check --races`` splits events at kernel
    lock boundaries (docs/check.md) and writes its counterexamples. ``op`` names the event
    (any text, the same in every stage of it), ``event`` says what kind it is and ``actions``
    gives its model actions as one-key mappings ``{ACTION: {ARGS}}``, the same in every stage.
    ``name`` is the stage:

    * ``mf.record``, ``mf.unmap``, ``mf.notify``: memory_failure() on a guest_memfd folio the
      policy claims (a ``hw_error`` with ``detect: scrub``, or a ``scrub``, by ``pfn``): the record
      (the head of policy_memory_failure), the stage-2 zap (kvm_gmem_invalidate) and host
      unmap, then vm_on_error and the SIGBUS AO or deferral; mf_mutex is held throughout;
    * ``fault.get_pfn``, ``fault.map``, ``fault.access``: a stage-2 fault of a ``guest_access``
      (kvm_mmu_faultin_pfn snapshots mmu_invalidate_seq and calls kvm_gmem_get_pfn; under
      mmu_lock the SPTE, or back to ``fault.get_pfn`` when is_page_fault_stale(); the access);
    * ``hostfault.lookup``, ``hostfault.map``, ``hostfault.access``: a VMM ``mem_read`` or
      ``mem_write`` fault on a guest_memfd mapping (kvm_gmem_fault_user_mapping returns the
      folio locked; ``__do_fault``'s PG_hwpoison check and finish_fault's PTE; the access);
    * ``punch.zap``, ``punch.free``: ``fallocate`` punch_hole (kvm_gmem_punch_hole: the zap, then
      truncation and the folios freed);
    * ``convert.attributes``, ``convert.folios``: ``set_attributes`` (the zap and the attributes,
      then the HugeTLB split or merge);
    * ``release.munmap``, ``release.close``, ``release.destroy``: a release's ``munmap``, ``close``
      (kvm_gmem_release) and ``vm_destroy``, one whole action each.

    An op's first stage must be the one its event starts with in the current state, and
    each later stage the one the previous stage led to. A stage out of order, a stage that
    needs a lock another op in flight holds, and a stage that calls memory_failure() while
    another op holds mf_mutex or the folio lock are bad input (exit status 2); plain steps
    run as written.
    mmu_invalidate_seq keeps counting (the checker resets it after each step): the
    staleness test compares the fault's snapshot with the current value either way.
    Returns the next stage's name, or ``done`` when the event is over."""

    key: ClassVar[str] = "stage"
    op: str = Field(min_length=1)
    event: StageEvent
    name: StageName
    actions: list[dict[str, dict[str, Any]]] = Field(min_length=1)

    @field_validator("actions")
    @classmethod
    def _model_actions(cls, v: list[dict[str, dict[str, Any]]]) -> list[dict[str, dict[str, Any]]]:
        for i, item in enumerate(v):
            if len(item) != 1:
                raise ValueError(f"actions[{i}] must have exactly one action key, "
                                 f"e.g. {{guest_access: {{vm: vm0, gpa: 0}}}}; got {len(item)}")
            (key, args), = item.items()
            if key == StageAction.key or key not in ACTION_TYPES:
                raise ValueError(f"actions[{i}]: {key!r} is not a model action")
            try:
                parse_action(key, args)
            except ValidationError as e:
                err = e.errors(include_url=False)[0]
                where = ".".join(str(x) for x in err["loc"])
                raise ValueError(f"actions[{i}].{key}{'.' + where if where else ''}: "
                                 f"{err['msg']}") from None
        return v

    def specs(self, page_size: int = 4096) -> list[tuple[str, dict[str, Any]]]:
        """The actions as (key, args), sizes as byte counts (the checker writes them so)."""
        out = []
        for item in self.actions:
            (key, args), = item.items()
            args = {k: parse_size(x, page_size) if k in SIZES and isinstance(x, str) else x
                    for k, x in args.items()}
            out.append((key, args))
        return out


register_actions(StageAction)


LOCK_NAMES = {"mf_mutex": "mf_mutex", "invalidate": "the invalidate lock",
              "folio": "the folio lock", "hugetlb": "hugetlb_lock", "mmu": "mmu_lock"}


def _clash(need: frozenset[races.Lock], held: frozenset[races.Lock]) -> races.Lock | None:
    """The lock in ``held`` that a stage needing ``need`` waits for, if any."""
    for lock in sorted(held):
        if races.conflicts(need, frozenset({lock})):
            return lock
    return None


@handles(StageAction)
def do_stage(host: HostState, a: StageAction) -> ActionResult:
    """Run stage ``a.name`` of op ``a.op`` as ModelSystem.step does with --races: the op
    must be at that stage (``races.first_stage`` for an op not in flight), the stage's locks
    (``races.stage_needs``) must not conflict with those the other ops in flight carry, and
    ``races.run_stage`` carries it out; the op stays in flight with its next stage, its
    context and ``races.stage_carries`` until its last stage. mmu_invalidate_seq is not
    normalised as the checker does after each step (to 0, with a fault's snapshot kept as 0
    or -1): the real counter only grows, so fault.map's test (snapshot != current) is stale
    exactly when the checker's is."""
    specs = a.specs(host.geometry.page_size)
    table: dict[str, tuple[Any, ...]] = host.ext.get(EXT, {})
    current = table.get(a.op)
    if current is None:
        if a.event in ("hw_error", "scrub") and "pfn" not in specs[0][1]:
            raise ModelInputError(f"the memory_failure() stages of {a.op!r} need the page "
                                  f"by pfn: give {specs[0][0]} a pfn target", "actions")
        first = races.first_stage(specs, a.event, host)
        if first is None:
            raise ModelInputError(
                f"{a.event} {a.op!r} is not split into stages in this state: it runs as one "
                "step now (write its actions as plain steps)", "name")
        if first[0] != a.name:
            raise ModelInputError(f"{a.event} {a.op!r} is not in flight: its first stage is "
                                  f"{first[0]} now, not {a.name}", "name")
        ctx: tuple[Any, ...] = first[1]
    else:
        event, held_specs, expected, ctx, _carried = current
        if (event, held_specs) != (a.event, specs):
            raise ModelInputError(f"{a.op!r} is in flight as {event} with other actions; "
                                  "give every stage of an op the same event and actions",
                                  "actions" if event == a.event else "event")
        if expected != a.name:
            raise ModelInputError(f"{a.event} {a.op!r} is in flight: its next stage is "
                                  f"{expected}, not {a.name}", "name")
    need = races.stage_needs(a.name)
    others = {op: entry for op, entry in table.items() if op != a.op}
    for op, entry in sorted(others.items()):
        lock = _clash(need, frozenset(entry[4]))
        if lock is not None:
            mode = (" exclusive" if lock[1] else " shared") if lock[0] == "invalidate" else ""
            raise ModelInputError(
                f"stage {a.name} of {a.op!r} cannot take {LOCK_NAMES.get(lock[0], lock[0])}: "
                f"{op!r} holds it{mode} until its stage {entry[2]} runs", "name")
    first_event = len(host.trace.events)
    table.pop(a.op, None)
    assert isinstance(host, Host)  # the dispatcher's Host runs a stage's whole actions
    nxt, nctx = races.run_stage(specs, host, a.name, ctx)
    if a.name != "mf.notify" and \
            any(isinstance(e, MemoryFailureCall) for e in host.trace.events[first_event:]):
        for op, entry in sorted(others.items()):
            lock = races.mf_waits_for(tuple(entry[4]))
            if lock is not None:
                raise ModelInputError(
                    f"stage {a.name} of {a.op!r} calls memory_failure(), which waits for "
                    f"{LOCK_NAMES.get(lock[0], lock[0])}, held by {op!r}: it runs after "
                    "that op", "name")
    if host.panicked:
        nxt = None  # the host is dead: nothing goes on (ModelSystem._stage drops the op too)
    if nxt is not None:
        table[a.op] = (a.event, specs, nxt, nctx, tuple(sorted(races.stage_carries(a.name))))
    if table:
        host.ext[EXT] = table
    else:
        host.ext.pop(EXT, None)
    return ActionResult(nxt or "done")


__all__ = ["StageAction", "StageEvent", "StageName", "do_stage"]
