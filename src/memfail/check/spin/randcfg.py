"""Random check configurations inside what the SPIN engine renders, and the agreement of both
engines on them (docs/check.md, "How the agreement is tested").

The shipped agreement files (check/spin/agree*.yaml) are written by hand, so a combination
none of them has (two entries naming one step, a VMM that runs two VMs, a guest load
between a release's close and its vm_destroy, a VMM without a SIGBUS handler) is never
walked. ``random_config(seed)`` draws a configuration a user could write from the docs:

* one to three VMs, each with its own VMM (threads ``main`` and some of its vCPU threads,
  ``mce_kill`` early, late or default per listed thread, ``sigbus`` handler, default or
  ignore), type default, sw-protected or snp, any guest behaviour (confidential on snp);
* every VM on a guest_memfd of one huge page, all 2M (``pmd_order`` 1 or 2) or all 1G
  (``pud_order`` 2), flag ``mmap``, ``init_shared`` or not, with zero to two spare pages;
* four to nine event entries of every event the SPIN engine takes, on one VM or a list of
  them, with random pages, conversions of any range either way, punch holes and
  allocations of the whole folio, ``close`` and ``release``, kernel users of the
  inventory with their flags overridden at times, vCPUs and threads, limits;
* a kernel profile (a draw whose profile has no guest_memfd, or no mmap of it, is drawn
  again), one or two errors along a path;
* three presets and two random knob combinations (``knob_values``) on claiming presets.

A draw the configuration loader refuses (a vCPU a VM does not have, two policies that are
one) or the profile cannot build (guest_memfd before v6.8) is drawn again from the same generator, so a seed names one configuration.
``agree_config`` runs, for each policy the SPIN engine renders (a refusal is counted, not an
error), seeded Python walks replayed in Promela and one SPIN simulation replayed on the
Python model, atomic or with the races stages; ``agree_random`` does it for a range of
seeds. ``python bench/bench_check_engines.py --random-configs N`` runs N of them.
``compare_verdicts`` runs both engines' exhaustive search (``memfail check --json``) on one and
compares the verdicts, replaying SPIN's counterexamples (``--random-verdicts N``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from memfail.check.config import CheckConfig, ConfigError, load_config_text
from memfail.check.model_system import ModelSystem
from memfail.check.spin.agree import _render, agree_simulation, agree_walk
from memfail.check.spin.promela import SUPPORTED, Unsupported
from memfail.model.errors import ProfileMissing
from memfail.model.kernel.kaccess import KERNEL_USERS
from memfail.model.kernel.profiles import PROFILES as PROFILE_TABLE
from memfail.model.policy.base import knob_values
from memfail.model.policy.registry import make_policy, policy_names

PRESETS = tuple(policy_names())
CLAIMING = tuple(p for p in PRESETS if make_policy(p).handles != "none" and
                 make_policy(p).backing == "gmem")
PROFILES = tuple(PROFILE_TABLE)
# knobs a random policy turns (backing picks the other Promela model, handles whether the
# policy claims at all, mf_delayed_fix only what memory_failure() returns to its caller)
KNOBS = ("record", "mark_on_release", "mark_on_truncate", "isolate_on_free",
         "propagate_on_split", "unmap_stage2", "unmap_host", "fault_check",
         "check_granularity", "consumed", "unconsumed", "honor_early", "sigbus_addr",
         "vm_on_error")
# every event the Promela models take (promela.SUPPORTED), errors and guest loads twice as
# often; in a fixed order, so that a seed names the same configuration
EVENTS = ("hw_error", "hw_error", "scrub", "vcpu_access", "vcpu_access", "vmm_access",
          "kernel_access", "convert", "punch_hole", "realloc", "release", "close", "fault",
          "guest_run", "vcpu_mce", "task_work")
if set(EVENTS) != set(SUPPORTED):  # pragma: no cover - a new event for the Promela models
    raise ImportError(f"randcfg.EVENTS {sorted(set(EVENTS))} != promela.SUPPORTED")


def _draw(rng: random.Random) -> dict[str, Any]:
    huge_1g = rng.random() < 0.25
    pmd = 1 if huge_1g else rng.choice([1, 2])
    npg = 4 if huge_1g else 1 << pmd
    size = "1G" if huge_1g else "2M"
    nv = rng.choice([1, 2, 2, 3])
    procs, gmems, vms = [], [], []
    for i in range(nv):
        vcpus = rng.choice([1, 1, 2])
        threads = ["main"] + [f"vcpu{j}" for j in range(vcpus) if rng.random() < 0.5]
        kill = {t: rng.choice(["early", "late", "default"]) for t in threads
                if rng.random() < 0.6}
        proc: dict[str, Any] = {"name": f"q{i}", "threads": threads,
                                "sigbus": rng.choice(["handler", "handler", "default", "ignore"])}
        if kill:
            proc["mce_kill"] = kill
        procs.append(proc)
        flags = ["mmap"] + (["init_shared"] if rng.random() < 0.5 else [])
        gmems.append({"name": f"g{i}", "size": size, "backing": size, "flags": flags})
        vm = {"name": f"vm{i}", "vmm": f"q{i}", "gmem": f"g{i}", "vcpus": vcpus,
              "type": rng.choice(["default", "sw-protected", "sw-protected", "snp"]),
              "behaviour": rng.choice(["cooperative", "careless", "hostile", "confidential"])}
        if vm["behaviour"] == "confidential" and vm["type"] != "snp":
            vm["behaviour"] = "cooperative"
        vms.append(vm)
    names = [v["name"] for v in vms]

    def some_vm() -> Any:
        return rng.choice(names) if rng.random() < 0.7 else list(names)

    def some_page() -> Any:
        return rng.randrange(npg) if rng.random() < 0.7 else sorted(rng.sample(range(npg), 2))

    events = []
    for _ in range(rng.randint(4, 9)):
        kind = rng.choice(EVENTS)
        vm_ = some_vm()
        e: dict[str, Any] = {"event": kind, "vm": vm_}
        if kind == "hw_error":
            e["page"] = some_page()
            e["detect"] = rng.choice(["latent", "scrub", ["latent", "scrub"]])
        elif kind in ("scrub", "fault", "guest_run", "vcpu_mce"):
            e["page"] = some_page()
        elif kind == "vcpu_access":
            e["page"] = some_page()
            if rng.random() < 0.3:
                e["write"] = True
        elif kind == "vmm_access":
            e["page"] = some_page()
            if not isinstance(vm_, list) and rng.random() < 0.3:
                e["thread"] = "vcpu0"
            if rng.random() < 0.2:
                e["write"] = True
        elif kind == "kernel_access":
            e["page"] = some_page()
            e["user"] = rng.sample([u.name for u in KERNEL_USERS], rng.randint(1, 3))
            for flag in ("checks_hwpoison", "mc_safe"):
                if rng.random() < 0.25:
                    e[flag] = rng.choice([True, False])
        elif kind == "convert":
            start = rng.randrange(npg)
            e["page"], e["pages"] = start, rng.randint(1, npg - start)
            e["to"] = rng.choice(["shared", "private", ["private", "shared"]])
        elif kind in ("punch_hole", "realloc"):
            e["page"], e["pages"] = 0, npg
        if kind == "guest_run":
            e["rounds"] = rng.choice([1, 2])
        if kind in ("vcpu_mce", "task_work", "vcpu_access") and rng.random() < 0.3:
            e["vcpu"] = rng.choice([0, 1])
        if kind in ("convert", "punch_hole", "realloc", "release", "close") or \
                rng.random() < 0.15:
            e["limit"] = rng.randint(1, 2 if kind in ("release", "close") else 3)
        events.append(e)
    policies: list[Any] = rng.sample(PRESETS, 3)
    for _ in range(2):
        knobs = rng.sample(KNOBS, rng.randint(1, 3))
        # not consumed/unconsumed: kernel, which the Promela model refuses for a claiming
        # policy (promela.policy_refusal)
        policies.append({"base": rng.choice(CLAIMING),
                         **{k: rng.choice([v for v in knob_values(k) or () if v != "kernel"])
                            for k in knobs}})
    return {"name": "random", "profile": rng.choice(PROFILES), "policies": policies,
            "geometry": {"pmd_order": pmd, "pud_order": 2 if huge_1g else 3},
            "host": {"memory": "16G",
                     "hugepages": {size: nv + rng.choice([0, 1, 1, 2])}},
            "processes": procs, "guest_memfd": gmems, "vms": vms, "events": events,
            "bounds": {"errors": rng.choice([1, 2])}}


def random_config(seed: int) -> tuple[str, CheckConfig]:
    """The configuration of ``seed``: its YAML text and the loaded configuration."""
    rng = random.Random(seed)
    last: Exception | None = None
    for _ in range(50):
        text = yaml.safe_dump(_draw(rng), sort_keys=False, width=100)
        try:
            cfg = load_config_text(text)
            for policy in cfg.policies:  # every policy: the hugetlbfs baseline runs on
                ModelSystem(cfg, policy).initial()  # kernels the guest_memfd ones refuse
            return text, cfg
        except (ConfigError, ProfileMissing) as e:  # e.g. no guest_memfd before v6.8
            last = e
    raise RuntimeError(f"seed {seed}: no configuration the loader takes in 50 draws ({last})")


@dataclass
class Agreement:
    """What ``agree_config`` found: the policies it walked, those the SPIN engine refuses
    (with why), and every disagreement (policy, walk or simulation, the first difference)."""
    walked: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    disagreements: list[tuple[str, str, str]] = field(default_factory=list)


def _policy_name(policy: Any) -> str:
    if isinstance(policy, str):
        return policy
    return "{" + ", ".join(f"{k}: {v}" for k, v in policy.items()) + "}"


def rendered_policies(cfg: CheckConfig, races: bool = False) \
        -> Iterator[tuple[Any, ModelSystem, Any, str]]:
    """Each policy of ``cfg`` with its ModelSystem (initialised; ``races`` as given) and
    its Promela rendering, or None and why the SPIN engine refuses it (``Unsupported``)."""
    for policy in cfg.policies:
        system = ModelSystem(cfg, policy, races)
        system.initial()
        try:
            rendered, why = _render(system), ""
        except Unsupported as e:
            rendered, why = None, str(e)
        yield policy, system, rendered, why


def agree_config(cfg: CheckConfig, walks: int, steps: int, races: bool = False,
                 seed: int = 0) -> Agreement:
    """``walks`` seeded Python walks of ``steps`` steps replayed in Promela and one SPIN
    simulation (seed ``seed``) replayed on the Python model, for each policy of ``cfg``
    the SPIN engine renders, atomic or (``races``) with the races stages."""
    out = Agreement()
    for policy, system, rendered, why in rendered_policies(cfg, races):
        name = _policy_name(policy)
        if rendered is None:
            out.refused.append((name, why))
            continue
        out.walked.append(name)
        for w in range(walks):
            diff = agree_walk(system, w, steps, rendered)
            if diff:
                out.disagreements.append((name, f"walk {w}", diff))
        diff = agree_simulation(system, seed, steps, rendered)
        if diff:
            out.disagreements.append((name, f"spin -n{seed}", diff))
    return out


@dataclass
class VerdictComparison:
    """What ``compare_verdicts`` found for one random configuration: how many verdicts the
    Python search decided (of how many), the ones whose status, depth or message differ
    between the engines (policy, property, Python's, SPIN's), the SPIN counterexamples
    ``memfail run`` did not replay with exit 0, and why a side gave no answer (a time-out,
    an exit without JSON), if one did not."""
    seed: int
    races: bool
    decided: int = 0
    verdicts: int = 0
    complete: int = 0
    policies: int = 0
    differ: list[tuple[str, str, tuple[Any, ...], tuple[Any, ...] | None]] = \
        field(default_factory=list)
    unreplayed: list[tuple[str, str, int]] = field(default_factory=list)
    undecided: str = ""


def _check_json(args: list[str], timeout: float) -> tuple[dict[str, Any] | None, str]:
    import json
    import subprocess
    import sys
    cmd = [sys.executable, "-m", "memfail", "check", *args, "--json"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s: {' '.join(cmd[3:])}"
    try:
        return json.loads(p.stdout), ""
    except ValueError:
        return None, f"exit {p.returncode} without JSON: {p.stderr.strip()[-300:]}"


def compare_json(py: dict[str, Any], spin: dict[str, Any], out: VerdictComparison) -> None:
    """Fill ``out`` from the two engines' ``memfail check --json`` documents: a verdict
    (status, depth, message) of the Python engine counts where its search decided it (its
    policy searched completely or until every property failed, or a FAIL, decided at any
    bound) and differs when SPIN's is not the same (or missing)."""
    def table(d: dict[str, Any]) -> dict[tuple[str, str], tuple[Any, ...]]:
        return {(r["policy"], k): (v["status"], v.get("depth"), v.get("message"))
                for r in d["results"] for k, v in r["verdicts"].items()}

    a, b = table(py), table(spin)
    done = {r["policy"] for r in py["results"]
            if r["complete"] or r["stop_reason"] == "all-failed"}
    out.policies, out.complete, out.verdicts = len(py["results"]), len(done), len(a)
    for key, got in a.items():
        if key[0] in done or got[0] == "FAIL":
            out.decided += 1
            if got != b.get(key):
                out.differ.append((key[0], key[1], got, b.get(key)))


def compare_verdicts(seed: int, races: bool, workdir: Any, max_states: int = 60_000,
                     workers: int = 2, timeout: float = 600.0) -> VerdictComparison:
    """Both engines' exhaustive verdicts on ``random_config(seed)``, compared.

    The configuration is written to ``workdir`` with the policies the SPIN engine renders
    (the others are refused, not compared) and depth 40 (deeper than any of them goes), and
    checked by ``memfail check --json`` twice: ``--engine spin --out`` (exhaustive), and the
    Python engine on ``workers`` workers with ``--max-states`` (a bound: its verdicts are
    compared only for the policies it searched completely or until every property failed, and
    its FAILs everywhere, since a FAIL is decided at any bound). A verdict is its status, depth
    and message (the shortest counterexample's length and what broke); every SPIN
    counterexample file is replayed with ``memfail run`` (exit 0 expected)."""
    import subprocess
    import sys
    from pathlib import Path

    work = Path(workdir)
    text, cfg = random_config(seed)
    out = VerdictComparison(seed, races)
    keep = [policy for policy, _s, rendered, _why in rendered_policies(cfg, races)
            if rendered is not None]
    if not keep:
        out.undecided = "the SPIN engine renders none of its policies"
        return out
    doc = yaml.safe_load(text)
    doc["policies"] = keep
    doc["bounds"]["depth"] = 40
    path = work / f"random-{seed}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, width=200))
    extra = ["--races"] if races else []
    spin, why = _check_json([str(path), "--engine", "spin", "--out", str(work / f"cex-{seed}"),
                             *extra], timeout)
    if spin is None:
        out.undecided = f"SPIN engine: {why}"
        return out
    py, why = _check_json([str(path), "--workers", str(workers), "--max-states",
                           str(max_states), *extra], timeout)
    if py is None:
        out.undecided = f"Python engine: {why}"
        return out

    compare_json(py, spin, out)
    for r in spin["results"]:
        for prop, v in r["verdicts"].items():
            if v["status"] == "FAIL" and v.get("file"):
                q = subprocess.run([sys.executable, "-m", "memfail", "run", v["file"]],
                                   capture_output=True, text=True, timeout=timeout)
                if q.returncode != 0:
                    out.unreplayed.append((r["policy"], prop, q.returncode))
    return out
