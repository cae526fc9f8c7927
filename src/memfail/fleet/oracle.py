"""Outcome oracles: what one failure of a class costs under a policy.

``ModelOracle`` runs each (policy, class) through the memfail model once; ``TableOracle``
reads the answers from a table (for tests and what-if analysis).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from memfail.fleet.classes import PAGE_BYTES, FailureClass, Outcome
from memfail.fleet.params import FleetError, FleetInputError

ORACLE_SCHEMA = "memfail.fleet-oracle/1"


@runtime_checkable
class OutcomeOracle(Protocol):
    """Anything that can say what a failure of class ``cls`` costs under ``policy``."""

    def outcome(self, policy: str, cls: FailureClass) -> Outcome: ...


# --------------------------------------------------------------------------- table oracle

_CLASS_FIELDS = {f.name for f in fields(FailureClass)} | {"consumed"}


@dataclass(frozen=True)
class TableRule:
    """First-match rule: the policies it covers (empty: all), field constraints, the outcome."""

    policies: frozenset[str]
    when: tuple[tuple[str, frozenset[Any]], ...]
    outcome: Outcome

    def matches(self, policy: str, cls: FailureClass) -> bool:
        if self.policies and policy not in self.policies:
            return False
        for name, allowed in self.when:
            value = cls.consumed if name == "consumed" else getattr(cls, name)
            if value not in allowed:
                return False
        return True


class TableOracle:
    """Outcomes read from an explicit table: the first rule that matches wins.

    The table (YAML or a dict)::

        schema: memfail.fleet-oracle/1      # optional
        default: {}                         # outcome when no rule matches (all zeros)
        rules:
          - policy: [minimum, mainline]     # omit or "*" for every policy
            when: {memory: gmem_private, first_touch: [guest_read], page_size: 1G}
            outcome: {vm_paused: 1}

    ``when`` keys are ``FailureClass`` fields (plus ``consumed``); a value or a list of
    values. Use it to ask "what if policy P did X in case Y" without touching the model.
    """

    def __init__(self, rules: Iterable[TableRule], default: Outcome | None = None,
                 source: str = "<table>") -> None:
        self.rules = tuple(rules)
        self.default = default or Outcome()
        self.source = source

    def outcome(self, policy: str, cls: FailureClass) -> Outcome:
        for rule in self.rules:
            if rule.matches(policy, cls):
                return rule.outcome
        return self.default

    @classmethod
    def constant(cls, outcome: Outcome | Mapping[str, float]) -> TableOracle:
        """Every class under every policy gives the same outcome."""
        out = outcome if isinstance(outcome, Outcome) else Outcome.from_mapping(outcome)
        return cls((), out, "<constant>")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<table>") -> TableOracle:
        """Build from plain data; errors are one line ``SOURCE: FIELD: message``."""

        def bad(where: str, msg: str) -> FleetInputError:
            return FleetInputError(f"{source}: {where}: {msg}")

        if not isinstance(data, Mapping):
            raise bad("(top)", "expected a mapping with 'rules' (and optional 'default')")
        extra = sorted(set(data) - {"schema", "default", "rules"})
        if extra:
            raise bad(extra[0], "unknown field; valid: schema, default, rules")
        if data.get("schema", ORACLE_SCHEMA) != ORACLE_SCHEMA:
            raise bad("schema", f"expected {ORACLE_SCHEMA}")
        try:
            default = Outcome.from_mapping(data.get("default") or {})
        except (ValueError, TypeError) as e:
            raise bad("default", str(e)) from None
        rules = []
        for i, r in enumerate(data.get("rules") or []):
            where = f"rules[{i}]"
            if not isinstance(r, Mapping) or "outcome" not in r:
                raise bad(where, "each rule needs 'outcome' (and optional 'policy', 'when')")
            extra = sorted(set(r) - {"policy", "when", "outcome"})
            if extra:
                raise bad(f"{where}.{extra[0]}", "unknown field; valid: policy, when, outcome")
            pol = r.get("policy", "*")
            pols = frozenset() if pol in ("*", None) else frozenset(
                [pol] if isinstance(pol, str) else pol)
            when = []
            for k, v in (r.get("when") or {}).items():
                if k not in _CLASS_FIELDS:
                    raise bad(f"{where}.when.{k}", "unknown class field; valid: "
                              + ", ".join(sorted(_CLASS_FIELDS)))
                vals = v if isinstance(v, list) else [v]
                when.append((str(k), frozenset(vals)))
            try:
                out = Outcome.from_mapping(r["outcome"] or {})
            except (ValueError, TypeError) as e:
                raise bad(f"{where}.outcome", str(e)) from None
            rules.append(TableRule(pols, tuple(when), out))
        return cls(rules, default, source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TableOracle:
        """Load a table file (plain YAML, safe loader)."""
        from ruamel.yaml import YAML
        from ruamel.yaml.error import YAMLError

        try:
            text = Path(path).read_text("utf-8")
        except OSError as e:
            raise FleetInputError(f"{path}: cannot read: {e.strerror}") from None
        try:
            data = YAML(typ="safe").load(text)
        except YAMLError as e:
            raise FleetInputError(f"{path}: (yaml): {str(e).splitlines()[0]}") from None
        return cls.from_dict(data, str(path))


# --------------------------------------------------------------------------- model oracle


class OracleUnavailable(FleetError):
    """The model cannot answer yet (for example, guest_memfd actions are missing)."""


Step = dict[str, dict[str, Any]]
Runner = Callable[[str, str, list[Step]], Mapping[str, Any]]
"""(kernel profile, policy, scenario steps) -> the model's outcome metrics."""

METRIC_NAMES: dict[str, str] = {"poison_handed_out": "poison_reused"}
"""Model metric name -> ``Outcome`` field, where the model's ``outcomes()`` names differ."""


class ModelOracle:
    """Runs a scenario per (policy, class) through the memfail model, once, and caches it.

    ``scenario(cls)`` builds the scenario steps (in the scenario file's action vocabulary);
    ``runner`` executes them under a policy and returns ``host.outcomes()``; the default
    runner uses ``memfail.model.host``. Results are cached per (policy, class).
    """

    def __init__(self, profile: str = "linux-6.18", runner: Runner | None = None) -> None:
        self.profile = profile
        self.runner: Runner = runner or _model_runner
        self._cache: dict[tuple[str, FailureClass], Outcome] = {}

    def outcome(self, policy: str, cls: FailureClass) -> Outcome:
        key = (policy, cls)
        hit = self._cache.get(key)
        if hit is None:
            metrics = self.runner(self.profile, policy, self.scenario(cls))
            hit = outcome_from_metrics(metrics)
            self._cache[key] = hit
        return hit

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    def scenario(self, cls: FailureClass) -> list[Step]:
        """The timeline that reproduces one failure of ``cls`` and what follows it."""
        return build_scenario(cls)


def outcome_from_metrics(metrics: Mapping[str, Any]) -> Outcome:
    """Map ``host.outcomes()`` onto ``Outcome`` (unknown metrics are ignored).

    Numbers and booleans map by name (through ``METRIC_NAMES``); ``vm_states`` counts VMs
    ``killed`` and ``paused``; ``max_consumptions_per_pfn`` beyond the first is
    ``repeated_consumption`` unless the model reports that directly.
    """
    names = set(Outcome.names())
    data: dict[str, float] = {}
    for k, v in metrics.items():
        name = METRIC_NAMES.get(k, k)
        if name in names and isinstance(v, int | float):  # bool is an int
            data[name] = data.get(name, 0.0) + float(v)
    states = metrics.get("vm_states")
    if isinstance(states, Mapping):
        for state, field_name in (("killed", "vm_killed"), ("paused", "vm_paused")):
            n = sum(1 for s in states.values() if s == state)
            data.setdefault(field_name, float(n))
    if "repeated_consumption" not in data and "max_consumptions_per_pfn" in metrics:
        data["repeated_consumption"] = max(0.0, float(metrics["max_consumptions_per_pfn"]) - 1)
    return Outcome.from_mapping(data)


def _model_runner(profile: str, policy: str, steps: list[Step]) -> Mapping[str, Any]:
    """Execute ``steps`` on a fresh model host under ``policy`` and return its outcomes."""
    try:
        from memfail.model.actions import parse_action
        from memfail.model.host import Host, HostConfig
    except ImportError as e:
        raise OracleUnavailable(
            f"the model cannot run fleet scenarios yet ({e}); pass --oracle TABLE.yaml") from None
    from pydantic import ValidationError

    actions = []
    for step in steps:
        ((key, args),) = step.items()
        try:
            actions.append(parse_action(key, args))
        except KeyError:
            raise OracleUnavailable(
                f"the model has no {key!r} action yet; pass --oracle TABLE.yaml") from None
        except ValidationError as e:
            raise OracleUnavailable(
                f"the model's {key!r} action rejects the fleet scenario's arguments "
                f"({e.errors()[0]['loc']}: {e.errors()[0]['msg']}); "
                "pass --oracle TABLE.yaml") from None
    from memfail.model.errors import ModelInputError

    host = Host(HostConfig(memory="2T", profile=profile, policy=policy))
    for i, action in enumerate(actions):
        try:
            host.apply(action)
        except ModelInputError as e:
            raise OracleUnavailable(
                f"the model rejected fleet scenario step {i} ({action.key}) under {policy}: "
                f"{e}; pass --oracle TABLE.yaml") from None
    return host.outcomes()


KERNEL_USER = {"kernel_checked": "migration", "kernel_unchecked": "vhost"}
"""The kernel user that stands for a first touch with / without a PG_hwpoison check."""


def _touch_steps(cls: FailureClass, t: dict[str, Any]) -> list[Step]:
    """Who meets the error at target ``t`` first (R1/R2): a read that consumes it, or the
    patrol scrub (AO). ``t`` holds the injection target plus ``gpa``/``addr`` views of it."""
    touch = cls.first_touch
    if touch == "scrub":
        return [{"scrub": dict(t["target"])}]
    if touch == "guest_read":
        return [{"guest_access": {"vm": "vm0", "gpa": t["gpa"], "op": "read"}}]
    if touch == "vmm_read":
        return [{"mem_read": {"proc": "qemu", "thread": "main", "addr": t["addr"]}}]
    where = {"vm": "vm0", "gpa": t["gpa"]} if "gpa" in t else \
        {"proc": t.get("proc", "qemu"), "addr": t.get("addr")}
    return [{"kernel_access": {"user": KERNEL_USER[touch], **where,
                               "checks_hwpoison": touch == "kernel_checked"}}]


def build_scenario(cls: FailureClass) -> list[Step]:
    """Scenario steps for one failure of ``cls``: set-up, fault(s), first touch, aftermath.

    Guest memory is a guest_memfd (HugeTLB-backed for 2M/1G) bound by one memslot; shared
    memory is the first folio converted to shared and mapped by the VMM. The aftermath is the
    same for every class so policies are compared on equal terms: the owner touches the
    memory again (repeated consumption), then releases it (VM destroyed: guest_memfd inode
    release, C4) and a new owner allocates from the pool (poison handed out again?).
    """
    huge = cls.page_size
    folio = PAGE_BYTES[huge]
    stride = 4096 if cls.same_folio else folio
    offsets = [i * stride for i in range(cls.pages_hit)]
    if cls.second_fault:
        offsets.append(folio // 2 + 4096)
    steps: list[Step] = []
    targets: list[dict[str, Any]]
    if cls.memory in ("gmem_private", "gmem_shared"):
        size = f"{cls.vm_gib}G"
        shared = cls.memory == "gmem_shared"
        if huge != "4K":
            steps.append({"hugepages": {"size": huge,
                                        "count": (cls.vm_gib << 30) // folio + 1}})
        steps += [
            {"spawn": {"proc": "qemu", "threads": ["main"]}},
            {"prctl": {"proc": "qemu", "thread": "main", "op": "set", "policy": "early"}},
            {"vm_create": {"vm": "vm0", "vmm": "qemu",
                           "type": "snp" if cls.vm_type == "confidential" else "default"}},
            {"gmem_create": {"vm": "vm0", "fd": "gmem0", "size": size, "backing": huge,
                             "flags": ["mmap"] if shared else []}},
            {"memslot": {"vm": "vm0", "slot": 0, "gpa": 0, "size": size, "gmem": "gmem0"}},
        ]
        span = max(folio, max(offsets) + 4096)
        if shared:
            steps += [
                {"set_attributes": {"vm": "vm0", "gpa": 0, "size": span, "private": False}},
                {"mmap": {"proc": "qemu", "name": "shared", "size": span, "fd": "gmem0",
                          "shared": True}},
            ]
        steps += [{"guest_access": {"vm": "vm0", "gpa": off, "op": "write"}} for off in offsets]
        targets = [{"target": {"proc": "qemu", "file": "gmem0", "offset": off}, "gpa": off,
                    "addr": f"shared+{off}"} for off in offsets]
    elif cls.memory == "hugetlb_free":
        free = huge if huge != "4K" else "2M"
        steps.append({"hugepages": {"size": free, "count": 2}})
        targets = [{"target": {"free": free, "index": off // 4096}, "proc": "next",
                    "addr": "buf"} for off in offsets if off < PAGE_BYTES[free]]
    elif cls.memory == "vmm":
        steps += [
            {"spawn": {"proc": "qemu", "threads": ["main", "vcpu0"]}},
            {"mmap": {"proc": "qemu", "name": "heap", "size": max(offsets) + 4096,
                      "populate": True}},
        ]
        targets = [{"target": {"proc": "qemu", "addr": f"heap+{off}"}, "proc": "qemu",
                    "addr": f"heap+{off}"} for off in offsets]
    else:
        targets = [{"target": {"kernel": "slab"}, "proc": "kernel", "addr": 0}]
    first = targets[0]
    steps.extend({"hw_error": {**t["target"], "detect": "latent"}}
                 for t in targets[:cls.pages_hit])
    steps.extend(_touch_steps(cls, first))
    if cls.second_fault and len(targets) > cls.pages_hit:
        steps.append({"hw_error": {**targets[-1]["target"], "detect": "latent"}})
        steps.extend(_touch_steps(cls, targets[-1]))
    if cls.memory in ("gmem_private", "gmem_shared"):
        steps.append({"guest_access": {"vm": "vm0", "gpa": first["gpa"], "op": "read"}})
        steps.append({"vm_destroy": {"vm": "vm0"}})
        if huge != "4K":
            steps += [
                {"spawn": {"proc": "next"}},
                {"mmap": {"proc": "next", "name": "buf", "size": f"{cls.vm_gib}G",
                          "hugetlb": huge, "populate": True}},
                {"mem_read": {"proc": "next", "addr": "buf"}},
            ]
    elif cls.memory == "hugetlb_free":
        free = huge if huge != "4K" else "2M"
        steps += [
            {"spawn": {"proc": "next"}},
            {"mmap": {"proc": "next", "name": "buf", "size": PAGE_BYTES[free] * 2,
                      "hugetlb": free, "populate": True}},
            {"mem_read": {"proc": "next", "addr": "buf"}},
        ]
    elif cls.memory == "vmm":
        steps.append({"mem_read": {"proc": "qemu", "thread": "vcpu0", "addr": first["addr"]}})
    return steps
