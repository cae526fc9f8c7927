"""Outcome oracles: what one failure of a class costs under a policy.

``ModelOracle`` runs each (policy, class) through the memfail model once; ``TableOracle``
reads the answers from a table (for tests and what-if analysis).
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from memfail.fleet.classes import PAGE_BYTES, FailureClass, Outcome
from memfail.fleet.params import FleetError, FleetInputError
from memfail.inputs import InputError, Loc, fmt_loc, line_of, load_yaml
from memfail.model.garbage import young_garbage_only

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
    def from_dict(cls, data: Mapping[str, Any], source: str = "<table>",
                  lines: Mapping[Loc, int] | None = None) -> TableOracle:
        """Build from plain data; errors are one line ``SOURCE:LINE: FIELD: message`` (the
        line when ``lines`` maps field paths to lines, as ``memfail.inputs`` gives them)."""

        def bad(loc: Loc, msg: str) -> FleetInputError:
            where = fmt_loc(loc) or "(top)"
            if lines is None:
                return FleetInputError(f"{source}: {where}: {msg}")
            return FleetInputError(f"{source}:{line_of(dict(lines), loc) or 1}: {where}: {msg}")

        if not isinstance(data, Mapping):
            raise bad((), "expected a mapping with 'rules' (and optional 'default')")
        extra = sorted(set(data) - {"schema", "default", "rules"})
        if extra:
            raise bad((extra[0],), "unknown field; valid: schema, default, rules")
        if data.get("schema", ORACLE_SCHEMA) != ORACLE_SCHEMA:
            raise bad(("schema",), f"expected {ORACLE_SCHEMA}")
        default = _outcome(data.get("default"), ("default",), bad)
        raw_rules = data.get("rules")
        if raw_rules is None:
            raw_rules = []
        if not isinstance(raw_rules, list):
            raise bad(("rules",), "expected a list of rules `- {policy: ..., when: {...}, "
                      "outcome: {...}}`")
        rules = []
        for i, r in enumerate(raw_rules):
            loc: Loc = ("rules", i)
            if not isinstance(r, Mapping) or "outcome" not in r:
                raise bad(loc, "each rule needs 'outcome' (and optional 'policy', 'when')")
            extra = sorted(set(r) - {"policy", "when", "outcome"})
            if extra:
                raise bad((*loc, extra[0]), "unknown field; valid: policy, when, outcome")
            pol = r.get("policy", "*")
            names = [pol] if isinstance(pol, str) or pol is None else pol
            if not isinstance(names, list) or not all(isinstance(x, str) for x in names):
                raise bad((*loc, "policy"), "a policy name, a list of names, or \"*\"")
            pols = frozenset() if pol in ("*", None) else frozenset(names)
            when = []
            conds = r.get("when") or {}
            if not isinstance(conds, Mapping):
                raise bad((*loc, "when"), "expected a mapping of class fields, e.g. "
                          "{memory: gmem_private, page_size: 1G}")
            for k, v in conds.items():
                if k not in _CLASS_FIELDS:
                    raise bad((*loc, "when", k), "unknown class field; valid: "
                              + ", ".join(sorted(_CLASS_FIELDS)))
                vals = v if isinstance(v, list) else [v]
                for j, x in enumerate(vals):
                    if isinstance(x, dict | list) or x is None:
                        raise bad((*loc, "when", k, *((j,) if isinstance(v, list) else ())),
                                  f"a value or a list of values, got {x!r}")
                when.append((str(k), frozenset(vals)))
            out = _outcome(r["outcome"], (*loc, "outcome"), bad)
            rules.append(TableRule(pols, tuple(when), out))
        return cls(rules, default, source)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TableOracle:
        """Load a table file (the shared safe reader of ``memfail.inputs``)."""
        try:
            data, lines = load_yaml(path, str(path), "fleet outcome table",
                                    "an outcome table has `rules:` (docs/fleet.md)")
        except InputError as e:
            raise FleetInputError(str(e)) from None
        return cls.from_dict(data, str(path), lines)


def _outcome(raw: Any, loc: Loc, bad: Callable[[Loc, str], FleetInputError]) -> Outcome:
    if raw is None:
        return Outcome()
    if not isinstance(raw, Mapping):
        raise bad(loc, f"expected a mapping of outcome names to numbers, got {raw!r}")
    for k, v in raw.items():
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise bad((*loc, k), f"expected a number >= 0, got {v!r}")
    try:
        return Outcome.from_mapping(raw)
    except (ValueError, TypeError) as e:
        key = next((k for k in raw if k not in Outcome.names() or not raw[k] >= 0), None)
        raise bad((*loc, key) if key is not None else loc, str(e)) from None


# --------------------------------------------------------------------------- model oracle


class OracleUnavailable(FleetError):
    """The model cannot answer (an action or argument it does not know, or input it rejects)."""


class ImpossibleClass(FleetError):
    """A failure class no fleet can produce (e.g. a guest read of kernel memory)."""


Step = dict[str, dict[str, Any]]

CHECKPOINT = "checkpoint"
"""A runner-only step (not a model action): the failing VM's state, the guest memory it lost
and who was told are read here, before the VM is destroyed and its memory handed on."""

GUEST_MARK = "guest_mark"
"""A runner-only step just before the guest's behaviour plays (``guest_run``): the host's
stall time and repeated consumptions are read here, so the rounds the model plays can be
scaled to the guest's effort."""

MODEL_ROUNDS = 8
"""Rounds of a careless, hostile or confidential guest the model plays (the library
scenarios' effort); a longer effort is scaled from them (``outcome_for``)."""

STALL_BOUND_US = 1_000_000
"""M10: whole-host stalls beyond this are the host down (the model's default
``mce_config stall_bound_us``, ``CostModel.stall_bound_us``)."""

HOSTILE_VCPUS = 2
"""vCPUs of a hostile guest in the model: it loads the line from every vCPU each round (the
rendezvous is shared, M3, so the stall per round does not depend on the count)."""

VMM = "qemu"
NEXT_VMM = "qemu-next"
HEAP = "heap"

KERNEL_USER = {"kernel_checked": "kcore", "kernel_unchecked": "vhost"}
"""The kernel user that stands for a first touch with / without a PG_hwpoison check
(docs/kernel-users.md: /proc/kcore checks PG_hwpoison and copies without machine-check
recovery; vhost checks only the VMM's page table and copies from user space, machine-check
safe). Migration, the former stand-in, never reaches guest_memfd memory and copies with
folio_mc_copy since 6.12."""

R47_PANIC = ("R47: a kernel load of poison without an exception fixup panics the host "
             "(arch/x86/kernel/cpu/mce/severity.c: kernel-mode machine checks are recoverable "
             "only for an MCE-safe fixup or a copy from user memory; notes/verification.md)")


@dataclass(frozen=True)
class ModelScenario:
    """What the model runs for one class, and how to read its outcomes.

    * ``steps``: model actions (scenario vocabulary), plus one ``checkpoint`` marker;
    * ``hugepages`` / ``memory_bytes`` / ``orders``: the host (``HostConfig``); ``orders`` are
      the PMD and PUD orders of its page geometry. Huge folios are scaled down
      (``Geometry.scaled``: "2M" and "1G" keep their names and their roles, with fewer 4 KiB
      pages) to just hold the pages a class needs, so a split or a dissolve stays cheap;
    * ``model_vm_bytes``: size of the failing VM in the model (0: no VM owns the memory). The
      model VM holds only the folios the fault touches plus one healthy folio; a loss of the
      whole model VM is scaled to ``vm_gib``, a loss of folios to real folios
      (``folio_bytes`` in the model, ``real_folio_bytes`` on the host);
    * ``early_owner``: the memory belongs to a VMM with a PR_MCE_KILL_EARLY thread;
    * ``cited``: outcome fields fixed by a cited rule because the model has no action for the
      first touch (see ``citation``); empty for every class the model runs end to end;
    * ``effort`` / ``model_rounds``: a careless, hostile or confidential guest plays
      ``effort`` rounds; the model plays ``model_rounds`` of them (``guest_mark`` before) and
      ``outcome_for`` scales the rest (0: a cooperative guest, nothing to scale).
    """

    steps: tuple[Step, ...]
    hugepages: tuple[tuple[str, int], ...] = ()
    memory_bytes: int = 0
    orders: tuple[int, int] = (9, 18)
    model_vm_bytes: int = 0
    folio_bytes: int = 4096
    real_folio_bytes: int = 4096
    vm_gib: int = 0
    early_owner: bool = False
    cited: tuple[tuple[str, float], ...] = ()
    citation: str = ""
    effort: int = 0
    model_rounds: int = 0

    @property
    def host_bytes(self) -> int:
        """Host memory: the model allocates from 4 GiB up; room for the pool and 1 GiB more."""
        pmd, pud = self.orders
        order = {"2M": pmd, "1G": pud}
        pool = sum(n * (4096 << order[size]) for size, n in self.hugepages)
        return max(self.memory_bytes, (5 << 30) + pool)

    @functools.cached_property
    def key(self) -> str:
        """Identity of the model run (classes that differ only in how the result is read,
        e.g. the VM size or permanence, share one run). Made once per scenario: the oracle
        asks for it for every (policy, class) it looks up in the run cache."""
        return json.dumps([self.steps, self.hugepages, self.host_bytes, self.orders],
                          sort_keys=True)


Runner = Callable[[str, str, ModelScenario], Mapping[str, Any]]
"""(kernel profile, policy, scenario) -> the model's outcome metrics."""

METRIC_NAMES: dict[str, str] = {
    "poison_handed_out": "poison_reused",
    "wrong_process_signals": "wrong_process_signal",
    "repeated_consumptions": "repeated_consumption",
    "records_lost": "failure_record_lost",
}
"""Model metric name (``memfail.model.outcomes.OUTCOME_DOCS``) -> ``Outcome`` field."""


class ModelOracle:
    """Runs a scenario per (policy, class) through the memfail model and caches it.

    ``scenario(cls)`` builds the ``ModelScenario``; ``runner`` executes it under a policy and
    returns the model's outcomes (default: ``memfail.model.host``). Outcomes are cached per
    (policy, class); model runs are cached per (policy, scenario), so classes that differ
    only in VM size or permanence share one run.
    """

    def __init__(self, profile: str = "linux-6.18", runner: Runner | None = None,
                 cache_dir: Path | None = None) -> None:
        """``cache_dir``: keep model runs on disk there (``memfail.fleet.cache``); only the
        model's own runner is cached."""
        from memfail.fleet.cache import RunCache

        self.profile = profile
        self.runner: Runner = runner or _model_runner
        self._cache: dict[tuple[str, FailureClass], Outcome] = {}
        self._runs: dict[tuple[str, str], Mapping[str, Any]] = {}
        self._scenarios: dict[FailureClass, ModelScenario] = {}
        self.disk = RunCache(cache_dir if self.runner is _model_runner else None)
        self.disk_hits = 0

    def _cached_run(self, policy: str, sc: ModelScenario) -> Mapping[str, Any] | None:
        rk = (policy, sc.key)
        metrics = self._runs.get(rk)
        if metrics is None:
            metrics = self.disk.get(self.profile, policy, sc.key)
            if metrics is not None:
                self.disk_hits += 1
                self._runs[rk] = metrics
        return metrics

    def _store(self, policy: str, sc: ModelScenario, metrics: Mapping[str, Any]
               ) -> Mapping[str, Any]:
        if self.disk.enabled:  # the same plain data whether it came from disk or not
            with contextlib.suppress(TypeError, ValueError):
                metrics = json.loads(json.dumps(metrics))
            self.disk.put(self.profile, policy, sc.key, metrics)
        self._runs[(policy, sc.key)] = metrics
        return metrics

    def save(self) -> None:
        """Write new model runs to the disk cache."""
        self.disk.save()

    def outcome(self, policy: str, cls: FailureClass) -> Outcome:
        key = (policy, cls)
        hit = self._cache.get(key)
        if hit is None:
            sc = self.scenario(cls)
            metrics = self._cached_run(policy, sc)
            if metrics is None:
                metrics = self._store(policy, sc, self.runner(self.profile, policy, sc))
            hit = outcome_for(cls, sc, metrics)
            self._cache[key] = hit
        return hit

    def prefetch(self, policies: Iterable[str], classes: Iterable[FailureClass],
                 workers: int = 1) -> None:
        """Run every model scenario the (policy, class) pairs need that is not cached yet,
        spread over ``workers`` local processes (the default runner only); ``outcome`` then
        reads the cache. Classes the oracle cannot build are left for ``outcome`` to raise."""
        classes = list(classes)
        todo: dict[tuple[str, str], tuple[str, ModelScenario]] = {}
        for pol in policies:
            for c in classes:
                if (pol, c) in self._cache:
                    continue
                try:
                    sc = self.scenario(c)
                except FleetError:
                    continue
                rk = (pol, sc.key)
                if self._cached_run(pol, sc) is None:
                    todo.setdefault(rk, (pol, sc))
        if workers <= 1 or len(todo) < 2 or self.runner is not _model_runner:
            return
        from concurrent.futures import ProcessPoolExecutor
        from concurrent.futures.process import BrokenProcessPool

        items = list(todo.items())
        jobs = [(self.profile, pol, sc) for _, (pol, sc) in items]
        try:
            with ProcessPoolExecutor(min(workers, len(jobs))) as ex:
                done = ex.map(_run_job, jobs, chunksize=max(1, len(jobs) // (workers * 16)))
                for (_, (pol, sc)), metrics in zip(items, done, strict=True):
                    self._store(pol, sc, metrics)
        except BrokenProcessPool:
            raise FleetError("a worker process running the model died (killed, or out of "
                             "memory); rerun with fewer --workers") from None
        finally:
            self.save()

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    @property
    def model_runs(self) -> int:
        return len(self._runs)

    def scenario(self, cls: FailureClass) -> ModelScenario:
        """The timeline that reproduces one failure of ``cls`` and what follows it, built
        once per class (the oracle asks for it under every policy; building it, and its
        ``key``, each time took most of a fleet run whose model runs were cached)."""
        sc = self._scenarios.get(cls)
        if sc is None:
            sc = self._scenarios[cls] = model_scenario(cls)
        return sc


def outcome_from_metrics(metrics: Mapping[str, Any]) -> Outcome:
    """Map model metrics onto ``Outcome`` by name (unknown metrics are ignored).

    Numbers and booleans map by name (through ``METRIC_NAMES``); ``guest_bytes_lost`` becomes
    ``guest_gib_lost``; ``vm_states`` counts VMs ``killed`` and ``paused`` (else
    ``vms_killed`` / ``vms_paused``); ``max_consumptions_per_pfn`` beyond the first is
    ``repeated_consumption`` unless the metrics give it directly.
    """
    names = set(Outcome.names())
    data: dict[str, float] = {}
    for k, v in metrics.items():
        name = METRIC_NAMES.get(k, k)
        if name in names and isinstance(v, int | float):  # bool is an int
            data[name] = data.get(name, 0.0) + float(v)
    if isinstance(metrics.get("guest_bytes_lost"), int | float):
        data["guest_gib_lost"] = float(metrics["guest_bytes_lost"]) / 2**30
    states = metrics.get("vm_states")
    for state, field_name, total in (("killed", "vm_killed", "vms_killed"),
                                     ("paused", "vm_paused", "vms_paused")):
        if isinstance(states, Mapping):
            data.setdefault(field_name, float(sum(1 for s in states.values() if s == state)))
        elif isinstance(metrics.get(total), int | float):
            data.setdefault(field_name, float(metrics[total]))
    if "repeated_consumption" not in data and "max_consumptions_per_pfn" in metrics:
        data["repeated_consumption"] = max(0.0, float(metrics["max_consumptions_per_pfn"]) - 1)
    return Outcome.from_mapping(data)


def outcome_for(cls: FailureClass, sc: ModelScenario, metrics: Mapping[str, Any]) -> Outcome:
    """What one failure of ``cls`` costs, from the metrics of its model run.

    On top of ``outcome_from_metrics``:

    * ``guest_gib_lost``: a loss of the whole model VM (killed, or its guest_memfd unusable)
      is the whole VM, ``vm_gib``; a partial loss counts lost model folios as real folios and
      lost 4 KiB pages (offlined by the guest) as themselves. Memory no VM owns (free pool, kernel) loses no guest memory of its own:
      what a later owner suffers shows in ``poison_reused`` and the VM counts;
    * ``early_kill_missed``: 1 when the failure was not consumed (the scrub found it first),
      the owning VMM has a PR_MCE_KILL_EARLY thread, and no BUS_MCEERR_AO was queued to it
      by the checkpoint (``vmm_told_unconsumed`` from the trace; the model's
      ``owner_told_unconsumed`` finds owners from the final state, so it misses a VMM whose
      hugetlbfs page memory_failure already unmapped). A VMM killed instead of told counts
      as missed;
    * ``host_stall_seconds`` / ``host_stalled``: the model's whole-host stall time
      (``host_stall_us``) and whether it passed the M10 bound without a panic. A careless,
      hostile or confidential guest plays ``model_rounds`` rounds in the model; when it played
      them all (nothing stopped it), the stall time and the repeated consumptions of those
      rounds (between ``guest_mark`` and the checkpoint) are scaled to its ``effort``: every
      round after the first costs the same (one broadcast rendezvous, M3), so the scaling is
      exact while the policy leaves the page mapped, and nothing is scaled when it did not;
    * ``cited`` fields of the scenario override the model (documented per class).
    """
    data = dict(zip(Outcome.names(), outcome_from_metrics(metrics).as_tuple(), strict=True))
    stall_us = float(metrics.get("host_stall_us", 0) or 0)
    if sc.model_rounds and metrics.get("guest_rounds") == sc.model_rounds \
            and sc.effort > sc.model_rounds:
        more = sc.effort / sc.model_rounds - 1.0
        stall_us += more * float(metrics.get("checkpoint_host_stall_us", 0)
                                 - metrics.get("mark_host_stall_us", 0))
        data["repeated_consumption"] += more * float(
            metrics.get("checkpoint_repeated_consumptions", 0)
            - metrics.get("mark_repeated_consumptions", 0))
    data["host_stall_seconds"] = stall_us / 1e6
    data["host_stalled"] = float(not metrics.get("host_panic") and (
        bool(metrics.get("host_stalled")) or stall_us > STALL_BOUND_US))
    lost = metrics.get("guest_bytes_lost")
    if sc.model_vm_bytes <= 0:
        data["guest_gib_lost"] = 0.0
    elif isinstance(lost, int | float):
        states = metrics.get("vm_states")
        killed = isinstance(states, Mapping) and states.get("vm0") == "killed"
        if killed or lost >= sc.model_vm_bytes:
            data["guest_gib_lost"] = float(sc.vm_gib)
        else:  # whole folios, and 4 KiB pages (fewer than a model folio holds)
            folios, rest = divmod(int(lost), sc.folio_bytes)
            data["guest_gib_lost"] = min((folios * sc.real_folio_bytes + rest) / 2**30,
                                         float(sc.vm_gib))
    miss = 0.0
    if sc.early_owner and not cls.consumed:
        told = metrics.get("vmm_told_unconsumed", metrics.get("owner_told_unconsumed", 0))
        miss = float(not told)
    data["early_kill_missed"] = miss
    data.update(dict(sc.cited))
    return Outcome.from_mapping(data)


# --------------------------------------------------------------------------- the runner


def _model_runner(profile: str, policy: str, sc: ModelScenario) -> Mapping[str, Any]:
    """``_model_run`` with the cyclic garbage collector held off until the run is over
    (``young_garbage_only``): a run's Host is a graph of cycles (folio <-> inode, process <->
    thread, ...) that refcounting never frees, and the collections its allocations set off
    (the 256 folios of each HugeTLB guest_memfd split among them) moved it, still alive, into
    the older generations, whose full collections then went over everything the fleet keeps:
    half of a cold ``memfail fleet`` run's CPU time (bench/bench_fleet.py)."""
    with young_garbage_only():
        return _model_run(profile, policy, sc)


def _model_run(profile: str, policy: str, sc: ModelScenario) -> Mapping[str, Any]:
    """Execute ``sc`` on a fresh model host under ``policy`` and return its outcomes.

    Metrics that concern the failing VM (its state, guest memory lost, who was told) are
    taken at the ``checkpoint`` step; the rest (reuse, repeated consumption, records, host
    panic) at the end. Also returns ``vmm_told_unconsumed``: BUS_MCEERR_AO signals queued to
    the failing VM's VMM by the checkpoint.
    """
    try:
        from memfail.model.actions import parse_action
        from memfail.model.errors import ModelInputError
        from memfail.model.host import Host, HostConfig
        from memfail.model.units import Geometry
    except ImportError as e:
        raise OracleUnavailable(
            f"the model cannot run fleet scenarios ({e}); pass --oracle TABLE.yaml") from None
    from pydantic import ValidationError

    host = Host(HostConfig(memory=sc.host_bytes, hugepages=dict(sc.hugepages),
                           profile=profile, policy=policy,
                           geometry=Geometry.scaled(*sc.orders)))
    for size, n in sc.hugepages:
        got = host.hugetlb.hstate(host.geometry.huge_order(size)).nr_huge_pages
        if got != n:
            raise OracleUnavailable(f"the model host has {got} of the {n} {size} HugeTLB "
                                    "folios the fleet scenario needs")
    free_pfns: dict[tuple[str, int, int], int] = {}
    hit_pfns: dict[tuple[str, str, str], int] = {}
    no_coco = _without_coco(policy)
    checkpoint: dict[str, Any] | None = None
    mark: dict[str, Any] = {}
    for i, step in enumerate(sc.steps):
        ((key, args),) = step.items()
        if key == CHECKPOINT:
            checkpoint = _snapshot(host)
            continue
        if key == GUEST_MARK:
            mark = {f"mark_{k}": v for k, v in _stalls(host).items()}
            continue
        args = _resolve_free(host, args, free_pfns)
        args = _scrub_physical(key, args, hit_pfns)
        if no_coco and key == "vm_create" and args.get("type") in ("snp", "tdx"):
            args = _as_ordinary_vm(args)
        if key == "mmap" and _has_region(host, args):
            continue  # the hugetlbfs baseline's gmem_create mapped guest memory already
        try:
            action = parse_action(key, args)
        except KeyError:
            raise OracleUnavailable(
                f"the model has no {key!r} action; pass --oracle TABLE.yaml") from None
        except ValidationError as e:
            raise OracleUnavailable(
                f"the model's {key!r} action rejects the fleet scenario's arguments "
                f"({e.errors()[0]['loc']}: {e.errors()[0]['msg']}); "
                "pass --oracle TABLE.yaml") from None
        if key == "hw_error":
            _remember_pfn(host, action, args, hit_pfns)
        try:
            result = host.apply(action)
        except ModelInputError as e:
            raise OracleUnavailable(
                f"the model rejected fleet scenario step {i} ({key}) under {policy}: "
                f"{e}; pass --oracle TABLE.yaml") from None
        if key == "guest_run" and isinstance(result.ret, dict):
            mark["guest_rounds"] = int(result.ret.get("rounds", 0))
    out = dict(host.outcomes())
    out.update(mark)
    if checkpoint is not None:
        states = {**out.get("vm_states", {}), **checkpoint.pop("vm_states")}
        out.update(checkpoint)
        out["vm_states"] = states
        out["vms_killed"] = sum(1 for s in states.values() if s == "killed")
        out["vms_paused"] = sum(1 for s in states.values() if s == "paused")
    else:
        out["vmm_told_unconsumed"] = _told(host)
    return out


def _without_coco(policy: str) -> bool:
    """Whether the policy's guest memory cannot back a confidential VM: the hugetlbfs
    baseline (an SNP or TDX guest's private memory comes from guest_memfd only, a private
    fault goes to kvm_gmem_get_pfn(); R75), so its fleet has no confidential VMs."""
    from memfail.model.policy import make_policy

    try:
        return make_policy(policy).backing == "hugetlbfs"
    except (KeyError, ValueError):
        return False


def _as_ordinary_vm(args: Mapping[str, Any]) -> dict[str, Any]:
    """The VM the hugetlbfs baseline runs in place of a confidential one: an ordinary VM of
    the same size whose guest takes a vMCE as a cooperative guest does."""
    out = {k: v for k, v in args.items() if k not in ("behaviour", "effort")}
    out["type"] = "default"
    if args.get("behaviour") not in (None, "confidential"):
        out["behaviour"], out["effort"] = args["behaviour"], args.get("effort", 0)
    return out


def _where(args: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """A guest page (``vm`` + ``gpa``) or a VMM page (``proc`` + ``addr``) of a step."""
    if "vm" in args and "gpa" in args:
        return ("vm", str(args["vm"]), str(args["gpa"]))
    if "proc" in args and "addr" in args:
        return ("proc", str(args["proc"]), str(args["addr"]))
    return None


def _remember_pfn(host: Any, action: Any, args: Mapping[str, Any],
                  seen: dict[tuple[str, str, str], int]) -> None:
    """The host page behind a faulty guest or VMM page, when the fault appears."""
    from memfail.model.kernel.inject import resolve_target

    where = _where(args)
    if where is not None:
        with contextlib.suppress(Exception):  # a bad target is the model's to report
            seen[where] = int(resolve_target(host, action))


def _scrub_physical(key: str, args: dict[str, Any],
                    seen: Mapping[tuple[str, str, str], int]) -> dict[str, Any]:
    """A ``scrub`` of a page that held a fault goes to the host page it had then.

    The patrol scrub walks physical memory (dram-field-data §2.6): it finds a latent error
    whether or not the VM still exists. Addressed by guest address, a scrub after the VM's
    VMM died (a VMM read that killed QEMU, a kill-vm policy) would find no page, leave the
    error latent, and the next VM would consume every such page: one broadcast machine check
    each (64 for a bank fault), charged to the policies that kill the VMM."""
    where = _where(args) if key == "scrub" else None
    pfn = seen.get(where) if where is not None else None
    return args if pfn is None else {"pfn": pfn}


def _run_job(job: tuple[str, str, ModelScenario]) -> Mapping[str, Any]:
    return _model_runner(*job)


_AT_CHECKPOINT = ("vm_states", "guest_bytes_lost", "wrong_process_signals",
                  "owner_told_unconsumed", "early_not_told")


def _told(host: Any) -> int:
    from memfail.model.trace import SignalSent

    vmm = host.processes.get(VMM)
    if vmm is None:
        return 0
    return sum(1 for e in host.trace.of(SignalSent) if e.pid == vmm.pid and
               e.outcome == "queued" and e.si_code == "BUS_MCEERR_AO")


_STALLS = ("host_stall_us", "repeated_consumptions")


def _stalls(host: Any) -> dict[str, Any]:
    """What a guest's rounds add to: whole-host stall time and repeated consumptions
    (``stall_outcomes``: those two of the host's outcomes, without computing the rest)."""
    from memfail.model.outcomes import stall_outcomes

    return stall_outcomes(host)


def _snapshot(host: Any) -> dict[str, Any]:
    o = host.outcomes()
    snap = {k: o[k] for k in _AT_CHECKPOINT if k in o}
    snap["vm_states"] = dict(o.get("vm_states", {}))
    snap["vmm_told_unconsumed"] = _told(host)
    snap.update({f"checkpoint_{k}": o.get(k, 0) for k in _STALLS})
    return snap


def _has_region(host: Any, args: Mapping[str, Any]) -> bool:
    proc = host.processes.get(args.get("proc"))
    return proc is not None and args.get("name") in proc.regions


def _resolve_free(host: Any, args: dict[str, Any],
                  seen: dict[tuple[str, int, int], int]) -> dict[str, Any]:
    """``{free: 2M, free_folio: k, index: i}`` -> ``{pfn}``: raw page ``i`` of the k-th free
    HugeTLB folio (by pfn) when first named; the same pfn every later time."""
    if "free_folio" not in args:
        return args
    rest = dict(args)
    size, k, index = rest.pop("free"), int(rest.pop("free_folio")), int(rest.pop("index", 0))
    pfn = seen.get((size, k, index))
    if pfn is None:
        h = host.hugetlb.hstate(host.geometry.huge_order(size))
        folios = sorted(h.free_list, key=lambda f: f.pfn)
        if k >= len(folios):
            raise OracleUnavailable(f"the {size} pool has no free folio #{k}")
        pfn = seen[(size, k, index)] = folios[k].pfn + index
    return {**rest, "pfn": pfn}


# --------------------------------------------------------------------------- scenarios


def _vmm_steps(proc: str) -> list[Step]:
    """QEMU as the reference scenarios set it up: SIGBUS handler, PR_MCE_KILL early on main
    (Q1); vcpu threads are created by vm_create."""
    return [
        {"spawn": {"proc": proc, "threads": ["main"]}},
        {"sigaction": {"proc": proc, "sigbus": "handler"}},
        {"prctl": {"proc": proc, "thread": "main", "op": "set", "policy": "early"}},
    ]


def _ram(vm: str) -> str:
    """The VMM mapping of ``vm``'s guest memory: named like the mapping the hugetlbfs baseline's
    gmem_create makes itself (``<fd>-ram``), so the same steps run under every policy (the
    runner skips an ``mmap`` whose name the process already has)."""
    return f"gmem-{vm}-ram"


def _vm_steps(vm: str, vmm: str, cls_vm_type: str, size: int, backing: str,
              shared: bool, behaviour: str = "cooperative", rounds: int = 0) -> list[Step]:
    """A VM whose guest memory is one guest_memfd of ``size`` bytes bound by one memslot at
    gpa 0, with the VMM mapping that backs shared memory (userspace_addr). Shared memory is
    the in-place (MMAP, INIT_SHARED) guest_memfd mapped by the VMM; private memory has an
    anonymous userspace_addr, as in the reference scenarios."""
    fd = f"gmem-{vm}"
    ram = _ram(vm)
    vt = "snp" if cls_vm_type == "confidential" else "default"
    create: dict[str, Any] = {"vm": vm, "vmm": vmm, "vcpus": 1, "type": vt}
    if behaviour != "cooperative":  # the guest as an actor (docs/mce.md)
        create.update(behaviour=behaviour, effort=rounds,
                      vcpus=HOSTILE_VCPUS if behaviour == "hostile" else 1)
    steps: list[Step] = [
        {"vm_create": create},
        {"gmem_create": {"vm": vm, "fd": fd, "size": size, "backing": backing,
                         "flags": ["mmap", "init_shared"] if shared else []}},
    ]
    steps.append({"mmap": {"proc": vmm, "name": ram, "size": size, "fd": fd}} if shared
                 else {"mmap": {"proc": vmm, "name": ram, "size": size}})
    steps.append({"memslot": {"vm": vm, "slot": 0, "gpa": 0, "size": size, "gmem": fd,
                              "hva": ram}})
    return steps


def _gmem_touch(touch: str, shared: bool, gpa: int) -> list[Step]:
    if touch == "guest_read":
        return [{"guest_access": {"vm": "vm0", "gpa": gpa, "op": "read"}}]
    if touch == "vmm_read":
        if not shared:
            raise ImpossibleClass("the VMM cannot read private guest memory (no host mapping)")
        return [{"mem_read": {"proc": VMM, "thread": "main", "addr": f"{_ram('vm0')}+{gpa}"}}]
    if touch == "scrub":
        return [{"scrub": {"vm": "vm0", "gpa": gpa}}]
    return [{"kernel_access": {"user": KERNEL_USER[touch], "vm": "vm0", "gpa": gpa}}]


def _vmm_touch(touch: str, addr: str, thread: str = "main") -> list[Step]:
    if touch == "guest_read":
        raise ImpossibleClass("a guest cannot read its VMM's own memory")
    if touch == "vmm_read":
        return [{"mem_read": {"proc": VMM, "thread": thread, "addr": addr}}]
    if touch == "scrub":
        return [{"scrub": {"proc": VMM, "addr": addr}}]
    return [{"kernel_access": {"user": KERNEL_USER[touch], "proc": VMM, "addr": addr}}]


def _spread(cls: FailureClass, folio: int, folios_available: int) -> list[int]:
    """Byte offsets of the pages the fault hits: consecutive 4 KiB pages of one folio, or one
    page per folio, wrapping round (one more page per folio) when the VM has fewer folios
    than pages hit."""
    if cls.same_folio or folio == 4096:
        return [i * 4096 for i in range(cls.pages_hit)]
    n = max(1, min(cls.pages_hit, folios_available))
    return [(i % n) * folio + (i // n) * 4096 for i in range(cls.pages_hit)]


def _second(first: int, folio: int, offsets: list[int]) -> int:
    """A page of the first page's folio that the first fault did not hit (for 4 KiB folios,
    which hold one page, the next free page)."""
    if folio > 4096:
        return first - first % folio + folio // 2 + 4096
    return max(offsets) + 4096


def _folios_used(offsets: list[int], folio: int) -> int:
    return len({o // folio for o in offsets})


MIN_ORDER = 6  # smallest model huge folio: 64 pages


def _orders(size: str, per_folio: int, total: int) -> tuple[int, int]:
    """PMD and PUD orders of the model geometry for a class backed by ``size`` folios: the
    folio must hold the pages hit in it, a second fault at its middle and a healthy page at
    its first quarter (4 x (pages + 2) pages), and more pages than the class can lose one by
    one (2 x (pages hit + 4)), so that lost bytes split exactly into folios and pages. Real
    sizes (9, 18) are the cap."""
    need = max(4 * (per_folio + 2), 2 * (total + 4))
    order = max(MIN_ORDER, (need - 1).bit_length())
    if size == "1G":
        pud = min(18, max(order, MIN_ORDER + 2))
        return min(9, pud - 2), pud
    pmd = min(9, order)
    return pmd, pmd + 2


def _model_folio(size: str, orders: tuple[int, int]) -> int:
    return 4096 if size == "4K" else 4096 << orders[0 if size == "2M" else 1]


def model_scenario(cls: FailureClass) -> ModelScenario:
    """The model scenario for one failure of ``cls``: set-up, fault(s), first touch, aftermath.

    Every class follows the same timeline, so policies are compared on equal terms:

    1. set-up: QEMU (SIGBUS handler, PR_MCE_KILL early on main) and a VM whose guest memory is
       HugeTLB-backed guest_memfd (4K folios for 4K) holding only the folios the fault reaches
       plus one healthy folio; the guest writes every folio; for shared memory the VMM's
       mapping of the pages hit is populated too;
    2. the fault: a latent ``hw_error`` on every page hit;
    3. the first touch of the first page (guest read, VMM read, kernel user with or without a
       PG_hwpoison check, or the patrol scrub); a second fault, if any, is a latent error in
       another page of the same folio met the same way;
    4. the patrol scrub reaches the other pages hit;
    5. the owner uses the memory again: the first toucher once more, a guest read of the first
       page and of a healthy page of the same huge folio (repeated consumption, and what the
       rest of the huge page costs); ``checkpoint``;
    5a. a careless, hostile or confidential guest (``behaviour``) then plays its behaviour on
       the first page (``guest_run``, ``MODEL_ROUNDS`` rounds standing for ``effort``);
    6. the VM is destroyed and QEMU exits (its mappings go, the guest_memfd inode is released,
       C4); a new VM allocates the same HugeTLB folios and reads the failed pages (is poison
       handed out again?).

    VMM memory is an anonymous mapping of QEMU (the VM's vCPU thread reads it again after the
    first touch); free-pool memory is met by the scrub and then allocated by a new VM; kernel
    memory is a slab page.
    """
    if cls.memory in ("gmem_private", "gmem_shared"):
        sc = _gmem_scenario(cls)
    elif cls.behaviour != "cooperative":
        raise ImpossibleClass(f"a {cls.behaviour} guest acts on its own guest memory only")
    elif cls.kernel_reread:
        raise ImpossibleClass("the later kernel read is sampled for guest memory only")
    elif cls.memory == "vmm":
        sc = _vmm_scenario(cls)
    elif cls.memory == "hugetlb_free":
        sc = _free_scenario(cls)
    else:
        sc = _kernel_scenario(cls)
    # every CPU of the host joins a broadcast machine check (M3): the host's size
    config: Step = {"mce_config": {"cpus": cls.host_cpus}}
    return replace(sc, steps=(config, *sc.steps))


def build_scenario(cls: FailureClass) -> list[Step]:
    """The steps of ``model_scenario(cls)``."""
    return list(model_scenario(cls).steps)


def _gmem_scenario(cls: FailureClass) -> ModelScenario:
    shared = cls.memory == "gmem_shared"
    if cls.behaviour == "confidential" and cls.vm_type != "confidential":
        raise ImpossibleClass("only a confidential (SNP/TDX) VM behaves `confidential`")
    acting = cls.behaviour != "cooperative"
    if acting and cls.effort < 1:
        raise ImpossibleClass(f"a {cls.behaviour} guest needs an effort of at least 1 round")
    rounds = min(cls.effort, MODEL_ROUNDS) if acting else 0
    backing = cls.page_size
    real_folio = PAGE_BYTES[backing]
    real = max(1, (cls.vm_gib << 30) // real_folio)
    spread = 1 if cls.same_folio or backing == "4K" else max(1, min(cls.pages_hit, real))
    orders = _orders(backing, -(-cls.pages_hit // spread), cls.pages_hit)
    folio = _model_folio(backing, orders)
    offsets = _spread(cls, folio, real)
    second = _second(offsets[0], folio, offsets) if cls.second_fault else None
    pages = offsets + ([second] if second is not None else [])
    used = _folios_used(pages, folio)
    nfolios = max(o // folio for o in pages) + 2  # the folios reached plus a healthy one
    vm_bytes = nfolios * folio
    hugepages: tuple[tuple[str, int], ...] = ()
    if backing != "4K":
        hugepages = ((backing, nfolios + used),)  # room for a new VM if every hit is lost
    steps: list[Step] = [*_vmm_steps(VMM),
                         *_vm_steps("vm0", VMM, cls.vm_type, vm_bytes, backing, shared,
                                    cls.behaviour, rounds)]
    writes = sorted({i * folio for i in range(nfolios)} | set(pages))
    steps += [{"guest_access": {"vm": "vm0", "gpa": g, "op": "write"}} for g in writes]
    if shared:  # the VMM has the shared pages mapped (device emulation, virtio rings)
        steps += [{"mem_write": {"proc": VMM, "addr": f"{_ram('vm0')}+{g}"}} for g in pages]
    steps += [{"hw_error": {"vm": "vm0", "gpa": g, "detect": "latent"}} for g in offsets]
    steps += _gmem_touch(cls.first_touch, shared, offsets[0])
    if second is not None:
        steps.append({"hw_error": {"vm": "vm0", "gpa": second, "detect": "latent"}})
        steps += _gmem_touch(cls.first_touch, shared, second)
    steps += [{"scrub": {"vm": "vm0", "gpa": g}} for g in offsets[1:]]
    if cls.kernel_reread:  # a dump (/proc/kcore) reads the failed page (kernel-users.md)
        steps.append({"kernel_access": {"user": KERNEL_USER["kernel_checked"], "vm": "vm0",
                                        "gpa": offsets[0]}})
    # aftermath: the owner uses the memory again
    if cls.first_touch not in ("scrub", "guest_read"):
        steps += _gmem_touch(cls.first_touch, shared, offsets[0])
    steps.append({"guest_access": {"vm": "vm0", "gpa": offsets[0], "op": "read"}})
    if folio > 4096:
        healthy = offsets[0] - offsets[0] % folio + folio // 4
        if healthy not in pages:
            steps.append({"guest_access": {"vm": "vm0", "gpa": healthy, "op": "read"}})
    if acting:  # the guest behaves as it does on the page it met (docs/mce.md)
        steps += [{GUEST_MARK: {}}, {"guest_run": {"vm": "vm0", "gpa": offsets[0]}}]
    steps.append({CHECKPOINT: {}})
    steps += [{"vm_destroy": {"vm": "vm0"}}, {"exit": {"proc": VMM}}]
    if backing != "4K":
        steps += _reuse_steps(cls.vm_type, vm_bytes, folio, backing, pages)
    return ModelScenario(tuple(steps), hugepages, orders=orders, model_vm_bytes=vm_bytes,
                         folio_bytes=folio, real_folio_bytes=real_folio, vm_gib=cls.vm_gib,
                         early_owner=True, effort=cls.effort if acting else 0,
                         model_rounds=rounds)


def _reuse_steps(vm_type: str, vm_bytes: int, folio: int, backing: str,
                 pages: list[int]) -> list[Step]:
    """A new VM (new QEMU) allocates ``vm_bytes`` of guest_memfd from the HugeTLB pool, which
    hands out the folios just released first, writes every folio and reads the pages that
    failed wherever they are now. The free list is last in, first out (R55): the folio the
    old VM's release freed last is the new VM's first, so a failed page is at the same offset
    in some folio of the new VM, not at its old address: every folio is read at each offset
    that failed."""
    steps = [*_vmm_steps(NEXT_VMM),
             *_vm_steps("vm1", NEXT_VMM, vm_type, vm_bytes, backing, False)]
    nfolios = vm_bytes // folio
    steps += [{"guest_access": {"vm": "vm1", "gpa": i * folio, "op": "write"}}
              for i in range(nfolios)]
    reads = sorted({i * folio + g % folio for i in range(nfolios) for g in pages})
    steps += [{"guest_access": {"vm": "vm1", "gpa": g, "op": "read"}} for g in reads]
    return steps


def _vmm_scenario(cls: FailureClass) -> ModelScenario:
    offsets = [i * 4096 for i in range(cls.pages_hit)]
    if cls.second_fault:
        offsets.append(len(offsets) * 4096)
    size = len(offsets) * 4096
    orders = (MIN_ORDER, MIN_ORDER + 2)
    folio = _model_folio("2M", orders)
    steps: list[Step] = [*_vmm_steps(VMM),
                         *_vm_steps("vm0", VMM, cls.vm_type, folio, "2M", False),
                         {"guest_access": {"vm": "vm0", "gpa": 0, "op": "write"}},
                         {"mmap": {"proc": VMM, "name": HEAP, "size": size}}]
    addrs = [f"{HEAP}+{o}" for o in offsets]
    steps += [{"mem_write": {"proc": VMM, "addr": a}} for a in addrs]
    hit = addrs[:cls.pages_hit]
    steps += [{"hw_error": {"proc": VMM, "addr": a, "detect": "latent"}} for a in hit]
    steps += _vmm_touch(cls.first_touch, hit[0])
    if cls.second_fault:
        steps.append({"hw_error": {"proc": VMM, "addr": addrs[-1], "detect": "latent"}})
        steps += _vmm_touch(cls.first_touch, addrs[-1])
    steps += [{"scrub": {"proc": VMM, "addr": a}} for a in hit[1:]]
    if cls.first_touch not in ("scrub", "vmm_read"):
        steps += _vmm_touch(cls.first_touch, hit[0])
    steps += _vmm_touch("vmm_read", hit[0], thread="vcpu0")
    steps.append({CHECKPOINT: {}})
    return ModelScenario(tuple(steps), (("2M", 1),), orders=orders, model_vm_bytes=folio,
                         folio_bytes=folio, real_folio_bytes=PAGE_BYTES["2M"],
                         vm_gib=cls.vm_gib, early_owner=True)


def _free_scenario(cls: FailureClass) -> ModelScenario:
    if cls.first_touch in ("guest_read", "vmm_read"):
        raise ImpossibleClass("nobody but the kernel reads a free HugeTLB folio")
    size = cls.page_size if cls.page_size != "4K" else "2M"
    orders = _orders(size, cls.pages_hit if cls.same_folio else 1, cls.pages_hit)
    folio = _model_folio(size, orders)
    if cls.same_folio:
        hits = [(0, i) for i in range(cls.pages_hit)]
    else:
        hits = [(i, 0) for i in range(cls.pages_hit)]
    if cls.second_fault:
        hits.append((0, folio // 2 // 4096 + 1))
    used = len({k for k, _ in hits})
    vm_folios = used + 1
    hugepages = ((size, vm_folios + used),)

    def target(k: int, i: int) -> dict[str, Any]:
        return {"free": size, "free_folio": k, "index": i}

    steps: list[Step] = [{"hw_error": {**target(k, i), "detect": "latent"}} for k, i in hits]
    cited: tuple[tuple[str, float], ...] = ()
    citation = ""
    if cls.first_touch == "scrub":
        steps += [{"scrub": target(k, i)} for k, i in hits]
    else:
        # no model action reads a free HugeTLB folio from the kernel (kernel_access takes a
        # guest or user address): /proc/kcore and dump read it without a PG_hwpoison hit
        # (the error is latent) and without machine-check recovery
        cited, citation = (("host_panic", 1.0),), R47_PANIC
        steps += [{"scrub": target(k, i)} for k, i in hits[1:]]
        # the host is down: nothing after the panic hands the folio to a VM, so the reuse
        # steps (a VM killed or paused by the poisoned folio) would count the failure twice
        steps.append({CHECKPOINT: {}})
        return ModelScenario(tuple(steps), hugepages, orders=orders, cited=cited,
                             citation=citation)
    steps.append({CHECKPOINT: {}})
    pages = [k * folio + i * 4096 for k, i in hits]
    steps += _reuse_steps("default", vm_folios * folio, folio, size, pages)
    return ModelScenario(tuple(steps), hugepages, orders=orders, cited=cited,
                         citation=citation)


def _kernel_scenario(cls: FailureClass) -> ModelScenario:
    if cls.first_touch in ("guest_read", "vmm_read"):
        raise ImpossibleClass("guests and VMMs do not read kernel memory")
    n = cls.pages_hit + int(cls.second_fault)
    if cls.first_touch == "scrub":
        steps: list[Step] = [{"hw_error": {"kernel": "slab", "detect": "scrub"}}
                             for _ in range(n)]
        return ModelScenario((*steps, {CHECKPOINT: {}}))
    # the model's kernel users (kernel_access, user_copy) read guest or user memory only; a
    # slab page read by the kernel itself is a plain kernel load: R47
    steps = [{"hw_error": {"kernel": "slab", "detect": "latent"}}]
    steps += [{"hw_error": {"kernel": "slab", "detect": "scrub"}} for _ in range(n - 1)]
    return ModelScenario((*steps, {CHECKPOINT: {}}), cited=(("host_panic", 1.0),),
                         citation=R47_PANIC)
