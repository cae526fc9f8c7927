"""Agreement between the two engines, step by step (issue: no drift between them).

* ``walk_python``: a seeded random walk of the Python model (ModelSystem), with the
  observation (``observe``) after every step.
* ``replay_promela``: the same labels forced through the Promela model by a generated
  ``init`` process (``promela.replay_text``) run by SPIN's simulator, with its observation
  after every step.
* ``simulate_spin``: a seeded random simulation of the Promela model (``spin -n<seed>
  -u<steps>``), and ``replay_python`` of its labels on the Python model.

``compare`` names the first step whose observations differ (or where one engine could not
take a label the other took).
"""

from __future__ import annotations

import hashlib
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memfail.check.spin.observe import layout, observe
from memfail.check.spin.pack import pack_bits
from memfail.check.spin.promela import Rendered, render, replay_text
from memfail.check.spin.runner import _run, parse_sim, tools
from memfail.check.spin.stages import RacesRendered, render_races, replay_races_text


@dataclass
class Walk:
    labels: list[int]                     # indices into Rendered.labels
    observations: list[tuple[int, ...]]   # initial state first, then after each step
    blocked: int | None = None            # a label the engine could not take (index in labels)


def walk_python(system: Any, rendered: Rendered, seed: int, steps: int) -> Walk:
    rng = random.Random(seed)
    index = {label: k for k, label in enumerate(rendered.labels)}
    s = system.initial()
    obs = [observe(system, s)]
    seq: list[int] = []
    for _ in range(steps):
        enabled = [lab for lab in system.enabled(s) if lab in index]
        if not enabled:
            break
        lab = rng.choice(enabled)
        s = system.step(s, lab)
        seq.append(index[lab])
        obs.append(observe(system, s))
    return Walk(seq, obs)


def replay_python(system: Any, rendered: Rendered, seq: list[int]) -> Walk:
    s = system.initial()
    obs = [observe(system, s)]
    for n, k in enumerate(seq):
        lab = rendered.labels[k]
        if lab not in system.enabled(s):
            return Walk(seq[:n], obs, blocked=n)
        s = system.step(s, lab)
        obs.append(observe(system, s))
    return Walk(seq, obs)


def replay_promela(system: Any, rendered: Rendered, seq: list[int]) -> Walk:
    spin, _ = tools()
    with tempfile.TemporaryDirectory(prefix="memfail-spin-") as tmp:
        work = Path(tmp)
        text = replay_races_text(rendered, seq) if isinstance(rendered, RacesRendered) \
            else replay_text(rendered, system, seq)
        (work / "replay.pml").write_text(pack_bits(text))  # as pan runs it
        out = _run([spin, "-T", "replay.pml"], work)
    steps, obs = parse_sim(out)
    blocked = next((int(line.split()[1]) for line in out.splitlines()
                    if line.strip().startswith("MF_BLOCKED")), None)
    return Walk(steps, obs, blocked=len(steps) if blocked is not None else None)


def simulate_spin(system: Any, rendered: Rendered, seed: int, steps: int) -> Walk:
    """A random simulation of the Promela model (the checker process), ``steps`` labels."""
    spin, _ = tools()
    with tempfile.TemporaryDirectory(prefix="memfail-spin-") as tmp:
        work = Path(tmp)
        (work / "model.pml").write_text(pack_bits(rendered.text))  # as pan runs it
        # each label is one d_step; -u bounds the statements, init_state and a step are one each
        out = _run([spin, f"-n{seed}", f"-u{steps + 1}", "-T", "model.pml"], work)
    got, obs = parse_sim(out)
    # the checker observes after each step only: add the initial observation
    return Walk(got, initial_observation(system, rendered) + obs)


_INITIAL: dict[str, list[tuple[int, ...]]] = {}


def initial_observation(system: Any, rendered: Rendered) -> list[tuple[int, ...]]:
    """The Promela model's observation after ``init_state`` (a replay of no step), as a
    list of one (none if SPIN printed none). It depends on the model's text alone, so it is
    kept per text: the seeds of one model share one ``spin`` run for it."""
    key = hashlib.blake2b(rendered.text.encode(), digest_size=16).hexdigest()
    got = _INITIAL.get(key)
    if got is None:
        got = replay_promela(system, rendered, []).observations[:1]
        if len(_INITIAL) >= 64:
            _INITIAL.clear()
        _INITIAL[key] = got
    return list(got)


def compare(system: Any, rendered: Rendered, a: Walk, b: Walk, names: tuple[str, str]
            ) -> str | None:
    """None when both walks took the same labels with the same observation after each;
    otherwise the first difference, in words."""
    fields = layout(system)

    def label(n: int) -> str:
        lab = rendered.labels[a.labels[n]] if n < len(a.labels) else \
            rendered.labels[b.labels[n]]
        args = ", ".join(f"{k}={v}" for k, v in lab[1] if v is not None)
        return f"{lab[0]}({args})"

    n = min(len(a.observations), len(b.observations))
    first = next((i for i in range(n) if a.observations[i] != b.observations[i]), n)
    for side, w in zip(names, (a, b), strict=True):
        # a label one engine could not take, unless the observations differed before it
        if w.blocked is not None and w.blocked + 1 <= first:
            return f"step {w.blocked + 1} ({label(w.blocked)}): not enabled in {side}"
    for i in range(n):
        if a.observations[i] != b.observations[i]:
            diffs = [f"{f}: {names[0]} {x}, {names[1]} {y}"
                     for f, x, y in zip(fields, a.observations[i], b.observations[i],
                                        strict=True) if x != y]
            where = "the initial state" if i == 0 else f"step {i} ({label(i - 1)})"
            path = " / ".join(label(j) for j in range(i))
            return f"{where} after [{path}]: " + "; ".join(diffs)
    for side, w in zip(names, (a, b), strict=True):
        if w.blocked is not None:
            return f"step {w.blocked + 1} ({label(w.blocked)}): not enabled in {side}"
    if len(a.observations) != len(b.observations):
        return f"{names[0]} took {len(a.labels)} steps, {names[1]} {len(b.labels)}"
    return None


def _render(system: Any) -> Rendered:
    """The Promela model of ``system``: with the stages when it checks races."""
    return render_races(system) if getattr(system, "races", False) else render(system)


def agree_walk(system: Any, seed: int, steps: int, rendered: Rendered | None = None
               ) -> str | None:
    """A seeded Python walk replayed in Promela: the first difference, or None."""
    rendered = rendered or _render(system)
    a = walk_python(system, rendered, seed, steps)
    b = replay_promela(system, rendered, a.labels)
    return compare(system, rendered, a, b, ("python", "promela"))


def agree_simulation(system: Any, seed: int, steps: int, rendered: Rendered | None = None
                     ) -> str | None:
    """A seeded SPIN simulation replayed on the Python model: the first difference, or None."""
    rendered = rendered or _render(system)
    a = simulate_spin(system, rendered, seed, steps)
    b = replay_python(system, rendered, a.labels)
    return compare(system, rendered, a, b, ("promela", "python"))
