"""The design space of guest_memfd memory-failure policies, as data.

The knobs and their values come from ``GmemPolicy`` itself (``knobs()``, ``knob_values``): the
search never keeps a list of its own. This module adds what the policy model does not say:

* which knobs a search varies and which it keeps at the base preset's value (``fixed``), each
  fixed knob with its reason;
* constraints: combinations in which a knob has no effect are counted once, under the knob's
  cheapest value, and the others excluded with the reason (``CONSTRAINTS``);
* the cost of mechanism of each knob value (``costs.yaml``, overridable with ``--costs``);
* the call's don'ts C1..C6 as knob values of the ``minimum`` preset (``DONTS``);
* the property sets the call discussed, as ``memfail check`` property ids (``PROPERTY_SETS``);
* per property, the knobs along which it is assumed monotone (``MONOTONE``), used only to infer
  a failure from a known one (and checked on a sample).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memfail.inputs import InputError, Loc, fmt_loc, line_of, load_yaml
from memfail.model.policy.base import READINGS, GmemPolicy, knob_values
from memfail.model.policy.registry import PRESETS

COSTS_FILE = Path(__file__).with_name("costs.yaml")

Knobs = dict[str, Any]


@functools.cache
def _knob_names() -> tuple[str, ...]:
    return tuple(GmemPolicy("x").knobs())


def all_knobs() -> list[str]:
    """Every knob of the policy model, in its own order."""
    return list(_knob_names())


def values_of(knob: str) -> tuple[Any, ...]:
    vals = knob_values(knob)
    if vals is None:  # pragma: no cover - every knob of GmemPolicy is an enumeration
        raise ValueError(f"knob {knob} has no enumerated values")
    return vals


def value_text(v: Any) -> str:
    """A knob value as YAML and the command line write it."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def parse_value(knob: str, text: str) -> Any:
    for v in values_of(knob):
        if value_text(v) == text.strip().lower():
            return v
    raise ValueError(f"{knob}: {text!r} is not one of "
                     f"{', '.join(value_text(v) for v in values_of(knob))}")


# --------------------------------------------------------------------------- fixed knobs

# Knobs a default search keeps at the base preset's value, with why. The readings of the
# call's words (``READINGS`` of the policy model) are added to these.
NOT_VARIED: dict[str, str] = {
    "backing": "hugetlbfs is the baseline without guest_memfd, not a guest_memfd policy; it "
               "is compared as a preset",
    "handles": "the call's scope is HugeTLB-backed guest_memfd ('hugetlb'); 'all' also "
               "takes 4K folios, which the search's configuration does not have",
    "vm_on_error": "kill/unusable on every failure is what consumed and unconsumed kill-vm / "
                   "unusable do together (Sean's and James's readings); the search varies "
                   "those two",
}


def default_fixed() -> dict[str, str]:
    """Knob -> why a default search keeps it at the base preset's value."""
    out = dict(NOT_VARIED)
    for k, why in READINGS.items():
        out[k] = f"a reading of the call's words: {why}"
    return out


# --------------------------------------------------------------------------- constraints


@dataclass(frozen=True)
class Constraint:
    """In combinations where ``applies`` holds, ``knob`` has no effect: such combinations are
    counted once, with the knob at its cheapest value; the others are excluded."""

    name: str
    knob: str
    applies: Callable[[Mapping[str, Any]], bool]
    reason: str


CONSTRAINTS: tuple[Constraint, ...] = (
    Constraint("granularity-without-check", "check_granularity",
               lambda k: not k["fault_check"],
               "check_granularity only says what fault_check refuses (kvm_gmem_get_pfn, "
               "_failed_in); without fault_check it does nothing"),
    Constraint("early-without-ao-signal", "honor_early",
               lambda k: k["unconsumed"] not in ("kernel", "notify-vmm"),
               "honor_early picks the thread an unconsumed failure's SIGBUS AO goes to; only "
               "unconsumed 'kernel' and 'notify-vmm' send one"),
    Constraint("sigbus-addr-without-sigbus", "sigbus_addr",
               lambda k: k["consumed"] not in ("sigbus-current", "sigbus-vmm"),
               "sigbus_addr is the si_addr of the policy's SIGBUS to current; only consumed "
               "'sigbus-current' and 'sigbus-vmm' send one"),
    Constraint("release-inside-truncate", "mark_on_release",
               lambda k: bool(k["mark_on_truncate"]),
               "mark_on_truncate marks on every free, inode release included "
               "(free_range: truncate or release and mark_on_release)"),
    Constraint("isolate-without-mark", "isolate_on_free",
               lambda k: not k["mark_on_release"] and not k["mark_on_truncate"],
               "isolate_on_free acts on folios the policy marked when freeing; nothing marks"),
    Constraint("delayed-fix-off-kernel-path", "mf_delayed_fix",
               lambda k: k["handles"] == "all" and k["backing"] == "gmem",
               "mf_delayed_fix changes the kernel's own guest_memfd path, which 'handles: all' "
               "never takes"),
)

# Whole families of combinations that reduce to one preset.
FAMILIES: tuple[tuple[str, Callable[[Mapping[str, Any]], bool], str, str], ...] = (
    ("hugetlbfs-backing", lambda k: k["backing"] == "hugetlbfs", "hugetlbfs",
     "with backing 'hugetlbfs' no guest_memfd knob applies: it is the hugetlbfs preset"),
    ("kernel-path", lambda k: k["handles"] == "none", "mainline",
     "with handles 'none' memory_failure() never hands a folio to the policy: the kernel's "
     "own path (mainline and mf-delayed-fix presets, by mf_delayed_fix)"),
)


# The knobs that apply in each family (the others cost nothing there: CostTable.vector).
APPLIES: dict[str, frozenset[str]] = {
    "hugetlbfs-backing": frozenset({"backing"}),
    "kernel-path": frozenset({"handles", "mf_delayed_fix", "backing"}),
}

# --------------------------------------------------------------------------- costs


@dataclass
class CostTable:
    """knob -> value text -> (cost, reason); ``source`` names where each entry came from."""

    entries: dict[str, dict[str, tuple[float, str]]]
    source: str = "built-in"
    overridden: list[str] = field(default_factory=list)

    def cost(self, knob: str, value: Any) -> float:
        return self.entries[knob][value_text(value)][0]

    def reason(self, knob: str, value: Any) -> str:
        return self.entries[knob][value_text(value)][1]

    def vector(self, knobs: Mapping[str, Any]) -> dict[str, float]:
        """Each knob's cost in this combination: a knob that does not apply (``APPLIES``:
        in the hugetlbfs and kernel-path families, which are released kernels' own paths)
        costs nothing, whatever its value, so that ``mainline`` costs 0, as the table's
        definition says ("beyond released kernels"), and not the sum of the values its
        knobs hold to describe what released kernels do."""
        only = next((keep for name, keep in APPLIES.items()
                     if any(f[0] == name and f[1](knobs) for f in FAMILIES)), None)
        return {k: self.cost(k, v) if only is None or k in only else 0.0
                for k, v in knobs.items()}

    def total(self, knobs: Mapping[str, Any]) -> float:
        return float(sum(self.vector(knobs).values()))

    def rows(self) -> list[tuple[str, str, float, str]]:
        return [(k, v, c, r) for k, vals in self.entries.items() for v, (c, r) in vals.items()]


COSTS_HINT = "a cost table is `costs: {KNOB: {VALUE: {cost: N, reason: TEXT}}}` (docs/search.md)"


def _read_costs(path: Path | None, file: str, data: bytes | None = None
                ) -> dict[str, dict[str, tuple[float, str]]]:
    value, lines = load_yaml(path, file, "cost table", COSTS_HINT, data=data, max_bytes=1 << 20)

    def bad(loc: Loc, msg: str) -> InputError:
        shown = tuple(p.lower() if isinstance(p, str) and p.lower() in ("true", "false")
                      else p for p in loc)
        return InputError(file, line_of(lines, loc) or 1, fmt_loc(shown) or None, msg)

    extra = [k for k in value if k != "costs"]
    if extra:
        raise bad((extra[0],), "unknown field; a cost table has only `costs:`")
    table = value.get("costs")
    if not isinstance(table, dict) or not table:
        raise bad(("costs",), "expected a mapping of knobs to their values' costs")
    knobs = all_knobs()
    out: dict[str, dict[str, tuple[float, str]]] = {}
    for knob, vals in table.items():
        if knob not in knobs:
            from memfail.inputs import did_you_mean

            raise bad(("costs", knob), f"unknown knob{did_you_mean(knob, knobs)}; knobs: "
                      f"{', '.join(knobs)}")
        if not isinstance(vals, dict) or not vals:
            raise bad(("costs", knob), "expected a mapping of the knob's values to "
                      "{cost: N, reason: TEXT}")
        allowed = {value_text(v): v for v in values_of(knob)}
        for vkey, entry in vals.items():
            text = vkey.lower() if vkey.lower() in ("true", "false", "null") else vkey
            loc: Loc = ("costs", knob, vkey)
            if text not in allowed:
                raise bad(loc, f"{vkey!r} is not a value of {knob}; values: "
                          f"{', '.join(allowed)}")
            if not isinstance(entry, dict):
                raise bad(loc, "expected {cost: N, reason: TEXT}")
            unknown = [f for f in entry if f not in ("cost", "reason")]
            if unknown:
                raise bad((*loc, unknown[0]), "unknown field; an entry has cost and reason")
            c = entry.get("cost")
            if isinstance(c, bool) or not isinstance(c, int | float):
                raise bad((*loc, "cost"), f"expected a number of 0 or more, got {c!r}")
            if c < 0 or c > 1000:
                raise bad((*loc, "cost"), f"expected a number from 0 to 1000, got {c!r}")
            r = entry.get("reason")
            if not isinstance(r, str) or not r.strip():
                raise bad((*loc, "reason"), "every cost needs its reason (a non-empty text)")
            out.setdefault(knob, {})[text] = (float(c), r.strip())
    return out


def load_costs(path: str | Path | None = None) -> CostTable:
    """The built-in table, with the entries of ``path`` (if given) replacing its own."""
    base = _read_costs(COSTS_FILE, "costs.yaml")
    missing = [(k, value_text(v)) for k in all_knobs() for v in values_of(k)
               if value_text(v) not in base.get(k, {})]
    if missing:  # pragma: no cover - guarded by tests
        raise RuntimeError(f"costs.yaml lacks {missing[0][0]}: {missing[0][1]}")
    if path is None:
        return CostTable(base)
    over = _read_costs(Path(path), str(path))
    changed = []
    for knob, vals in over.items():
        for v, entry in vals.items():
            if base[knob][v] != entry:
                changed.append(f"{knob}={v}")
            base[knob][v] = entry
    return CostTable(base, str(path), changed)


# --------------------------------------------------------------------------- the call


# The call's don'ts (the minimum preset's "Call items: C1..C6") as the knobs each one sets; a
# policy breaks Cn when one of those knobs differs from the minimum preset's value.
DONTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "C1": ("track failures in a global table, not folio flags", ("record",)),
    "C2": ("defer unconsumed failures, don't unmap failed memory",
           ("unconsumed", "unmap_stage2", "unmap_host", "vm_on_error")),
    "C3": ("SIGBUS the current thread on consumption", ("consumed",)),
    "C4": ("mark HWpoison only when folios are freed at inode release",
           ("record", "mark_on_release", "mark_on_truncate")),
    "C5": ("on faults, don't check for memory failure", ("fault_check",)),
    "C6": ("don't handle PR_MCE_KILL_EARLY", ("honor_early",)),
}


def breaks(knobs: Mapping[str, Any]) -> list[str]:
    """The call items C1..C6 ``knobs`` departs from (relative to the minimum preset)."""
    ref = PRESETS["minimum"].knobs()
    return [item for item, (_, ks) in DONTS.items()
            if any(knobs.get(k, ref[k]) != ref[k] for k in ks)]


# The property sets item 4 of the search asks about, as memfail check property ids.
PROPERTY_SETS: dict[str, tuple[str, ...]] = {
    "no host panic": ("no-host-panic", "host-survives"),
    "contained after consumption": ("contained",),
    "nothing reused": ("no-poison-reuse",),
    "no record lost": ("no-record-lost",),
    "EARLY told": ("early-told",),
}


def default_properties() -> tuple[str, ...]:
    out: list[str] = []
    for props in PROPERTY_SETS.values():
        out += [p for p in props if p not in out]
    return tuple(out)


# Per property: knobs along which more mechanism is assumed never to break it (weak -> strong).
# A combination that is weaker-or-equal on these knobs, and equal on every other knob, than one
# known to fail the property is inferred to fail it. A seeded sample of inferences is checked.
_UNMAP = {"unmap_stage2": ("none", "subpage", "folio", "vm"),
          "unmap_host": ("none", "subpage", "folio"),
          "fault_check": (False, True)}
MONOTONE: dict[str, dict[str, tuple[Any, ...]]] = {
    # a re-consumption needs a path back to the poison: zapping more, refusing more faults
    # removes paths and adds none
    "contained": _UNMAP,
    "host-survives": _UNMAP,
    # the kernel readers that panic skip a page whose PG_hwpoison is set (R47): recording in
    # the folio flag and marking at release only add PG_hwpoison
    "no-host-panic": {"record": ("table", "folio"), "mark_on_release": (False, True)},
    # the free path skips or isolates marked folios (R55, R57): marking adds marks
    "no-poison-reuse": {"mark_on_release": (False, True)},
    "no-record-lost": {"mark_on_release": (False, True)},
    # honouring PR_MCE_KILL_EARLY only adds a thread to tell
    "early-told": {"honor_early": (False, True)},
}


# Per property: knobs it is taken not to depend on at all, with the reason. Like MONOTONE, an
# assumption about the model that the verification sample checks.
_SIGNALS_ONLY = ("honor_early", "sigbus_addr")
INDEPENDENT: dict[str, tuple[str, ...]] = {
    # whether the EARLY thread is told is decided when the unconsumed failure is detected, by
    # what memory_failure does for it (unconsumed: kill_procs, notify_vmm) and which thread it
    # picks (honor_early, find_early_kill_thread); recording, unmapping, the fault check and
    # the consumed action come after or on other paths
    "early-told": ("record", "mark_on_release", "mark_on_truncate", "isolate_on_free",
                   "propagate_on_split", "unmap_stage2", "unmap_host", "fault_check",
                   "check_granularity", "consumed", "sigbus_addr"),
    # which thread a signal goes to and its si_addr change no record and no free path
    "no-poison-reuse": _SIGNALS_ONLY,
    "no-record-lost": _SIGNALS_ONLY,
}


def weaker_or_equal(prop: str, a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Is ``a`` weaker than or equal to ``b`` for ``prop`` (so b failing implies a fails)?
    Knobs the property does not depend on (``INDEPENDENT``) may differ freely."""
    order = MONOTONE.get(prop, {})
    free = INDEPENDENT.get(prop, ())
    if not order and not free:
        return False
    for k, va in a.items():
        vb = b[k]
        if va == vb or k in free:
            continue
        if k not in order:
            return False
        if order[k].index(va) > order[k].index(vb):
            return False
    return True


# --------------------------------------------------------------------------- the space


@dataclass
class Space:
    base: str
    varied: list[str]
    fixed: dict[str, Any]
    fixed_why: dict[str, str]
    costs: CostTable

    def cheapest(self, knob: str) -> Any:
        """The knob's cheapest value (the first in the model's order on a tie)."""
        vals = values_of(knob)
        return min(vals, key=lambda v: (self.costs.cost(knob, v), vals.index(v)))

    def full(self, varied_values: Mapping[str, Any]) -> Knobs:
        """Every knob of a combination: the varied values over the fixed ones."""
        return {**self.fixed, **varied_values}

    def raw_count(self) -> int:
        n = 1
        for k in self.varied:
            n *= len(values_of(k))
        return n

    def enumerate(self) -> tuple[list[Knobs], dict[str, int]]:
        """Admissible combinations (full knob dicts) and the count excluded by each rule."""
        excluded: dict[str, int] = {}
        out: list[Knobs] = []
        cheapest = {k: self.cheapest(k) for k in all_knobs()}
        seen_family: set[str] = set()
        for combo in itertools.product(*(values_of(k) for k in self.varied)):
            knobs = self.full(dict(zip(self.varied, combo, strict=True)))
            fam = next((f for f in FAMILIES if f[1](knobs)), None)
            if fam is not None:
                if fam[0] in seen_family:
                    excluded[fam[0]] = excluded.get(fam[0], 0) + 1
                    continue
                seen_family.add(fam[0])
                out.append(dict(PRESETS[fam[2]].knobs()) if fam[0] != "kernel-path"
                           else {**PRESETS["mainline"].knobs(),
                                 "mf_delayed_fix": knobs["mf_delayed_fix"]})
                continue
            rule = next((c for c in CONSTRAINTS if c.knob in self.varied and c.applies(knobs)
                         and knobs[c.knob] != cheapest[c.knob]), None)
            if rule is not None:
                excluded[rule.name] = excluded.get(rule.name, 0) + 1
                continue
            out.append(knobs)
        # duplicates can only come from the families (kernel-path by mf_delayed_fix)
        uniq: dict[tuple[Any, ...], Knobs] = {}
        for k in out:
            uniq.setdefault(tuple(k[n] for n in all_knobs()), k)
        return list(uniq.values()), excluded

    def key(self, knobs: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(knobs[k] for k in all_knobs())

    def order(self, combos: list[Knobs]) -> list[Knobs]:
        """Cheapest first; on a tie, fewer changes from the base preset first, then the order of
        the knobs' values in the model."""
        ref = PRESETS[self.base].knobs()

        def rank(k: Knobs) -> tuple[Any, ...]:
            return (self.costs.total(k), sum(1 for n in k if k[n] != ref[n]),
                    tuple(values_of(n).index(k[n]) for n in all_knobs()))
        return sorted(combos, key=rank)


def make_space(base: str = "minimum", vary: list[str] | None = None,
               fix: Mapping[str, Any] | None = None, every_knob: bool = False,
               costs: CostTable | None = None, only: tuple[str, ...] | None = None,
               only_why: str = "") -> Space:
    """The space of a search: every knob not fixed is varied over all its values (``only``:
    just these knobs, the others fixed with ``only_why``)."""
    if base not in PRESETS:
        raise ValueError(f"unknown preset {base!r}; presets: {', '.join(PRESETS)}")
    knobs = all_knobs()
    why = {} if every_knob else default_fixed()
    if only is not None:
        why = {k: only_why for k in knobs if k not in only}
    for k in vary or []:
        why.pop(k, None)
    fixed_vals = {k: v for k, v in PRESETS[base].knobs().items()}
    for k, v in (fix or {}).items():
        why[k] = "fixed on the command line (--fix)"
        fixed_vals[k] = v
    varied = [k for k in knobs if k not in why]
    fixed = {k: fixed_vals[k] for k in knobs if k in why}
    return Space(base, varied, fixed, {k: why[k] for k in knobs if k in why},
                 costs or load_costs())


def policy_spec(knobs: Mapping[str, Any]) -> dict[str, Any]:
    """A policy mapping ``make_policy`` accepts (every knob given)."""
    return {"base": "mainline", "name": "search", **knobs}


def diff(knobs: Mapping[str, Any], ref: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in knobs.items() if ref.get(k) != v}


def closest_preset(knobs: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The preset differing from ``knobs`` in the fewest knobs (first in preset order on a tie)
    and how ``knobs`` differs from it."""
    best = min(PRESETS, key=lambda p: len(diff(knobs, PRESETS[p].knobs())))
    return best, diff(knobs, PRESETS[best].knobs())


def short(knobs: Mapping[str, Any], ref: Mapping[str, Any] | None = None) -> str:
    """``knob=value`` pairs, only those differing from ``ref`` when given."""
    items = knobs.items() if ref is None else diff(knobs, ref).items()
    return ", ".join(f"{k}={value_text(v)}" for k, v in items) or "(same)"
