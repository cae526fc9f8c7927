"""Small self-contained Systems with known state counts and counterexamples.

They exercise the explorer in tests and benchmarks, and show how to implement the protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from memfail.check.system import Label, Property, canonical_bytes, fingerprint_bytes

Counters = tuple[int, ...]


@dataclass(frozen=True)
class CounterSystem:
    """``n`` counters in 0..``top``; label ``("inc", i)`` increments counter i.

    Reachable states: (top+1)^n. Property ``not-all-top`` fails at depth n*top; property
    ``first-below-top`` fails at depth ``top`` (only counter 0 matters, so the other counters'
    labels are invisible and pairwise independent: partial-order reduction applies).
    """

    n: int = 2
    top: int = 3
    name: str = "counters"

    def initial(self) -> Counters:
        return (0,) * self.n

    def enabled(self, s: Counters) -> Sequence[Label]:
        return [("inc", i) for i in range(self.n) if s[i] < self.top]

    def step(self, s: Counters, label: Label) -> Counters:
        assert isinstance(label, tuple)
        i = label[1]
        return (*s[:i], s[i] + 1, *s[i + 1:])

    def fingerprint(self, s: Counters) -> int:
        return fingerprint_bytes(canonical_bytes(s))

    def properties(self) -> Sequence[Property]:
        top = self.top
        return (
            Property("not-all-top", "Not every counter reaches top.", "test",
                     lambda s: "all counters at top" if all(x == top for x in s) else None),
            Property("first-below-top", "Counter 0 stays below top.", "test",
                     lambda s: f"counter 0 = {s[0]}" if s[0] >= top else None),
        )

    def alphabet(self) -> Sequence[str]:
        return ["inc", "dec"]

    def independent(self, a: Label, b: Label) -> bool:
        return a != b

    def visible(self, label: Label) -> bool:
        assert isinstance(label, tuple)
        return bool(label[1] == 0)

    def render(self, s: Counters) -> dict[str, str]:
        return {f"c{i}": str(x) for i, x in enumerate(s)}


# A toy of the call's containment question. Each VM owns one page. Labels:
#   ("error", p)    a latent hardware error appears in page p (at most ``errors`` in total)
#   ("touch", v)    VM v reads its page: consuming an error if there is one (AR)
#   ("unmap", p)    the kernel unmaps a page known to be poisoned (policy-dependent)
#   ("scrub", p)    patrol scrub detects the error in p (AO): it becomes known
# State: (errors left, per page: 0 clean / 1 latent / 2 known, per page: mapped?, per VM: times
# it consumed poison, capped at 2).
ToyState = tuple[int, tuple[int, ...], tuple[bool, ...], tuple[int, ...]]


@dataclass(frozen=True)
class PoisonToy:
    """``vms`` identical VMs; ``unmap`` says whether the policy unmaps known-poisoned pages.

    With ``unmap=False`` the shortest violation of ``contained`` is error, touch, touch
    (depth 3); with ``unmap=True`` it holds. VMs are symmetric: ``canonical`` sorts them.
    """

    vms: int = 2
    errors: int = 1
    unmap: bool = False
    name: str = "poison-toy"

    def initial(self) -> ToyState:
        return (self.errors, (0,) * self.vms, (True,) * self.vms, (0,) * self.vms)

    def enabled(self, s: ToyState) -> Sequence[Label]:
        left, page, mapped, _ = s
        out: list[Label] = []
        for v in range(self.vms):
            if left and page[v] == 0:
                out.append(("error", v))
        for v in range(self.vms):
            if mapped[v]:
                out.append(("touch", v))
        for v in range(self.vms):
            if page[v] == 1:
                out.append(("scrub", v))
        if self.unmap:
            for v in range(self.vms):
                if page[v] == 2 and mapped[v]:
                    out.append(("unmap", v))
        return out

    def step(self, s: ToyState, label: Label) -> ToyState:
        left, page, mapped, consumed = s
        assert isinstance(label, tuple)
        kind, v = label
        p, m, c = list(page), list(mapped), list(consumed)
        if kind == "error":
            left -= 1
            p[v] = 1
        elif kind == "touch" and p[v]:
            p[v] = 2          # consumption makes the error known (AR)
            c[v] = min(2, c[v] + 1)
            if self.unmap:
                m[v] = False  # "unmap is non-negotiable"
        elif kind == "scrub":
            p[v] = 2
        elif kind == "unmap":
            m[v] = False
        return (left, tuple(p), tuple(m), tuple(c))

    def fingerprint(self, s: ToyState) -> int:
        return fingerprint_bytes(canonical_bytes(s))

    def canonical(self, s: ToyState) -> ToyState:
        left, page, mapped, consumed = s
        rows = sorted(zip(page, mapped, consumed, strict=True))
        return (left, tuple(r[0] for r in rows), tuple(r[1] for r in rows),
                tuple(r[2] for r in rows))

    def properties(self) -> Sequence[Property]:
        return (
            Property("contained", "A VM never consumes the same poison twice.",
                     "C7 unmap is non-negotiable",
                     lambda s: "a VM consumed poison twice" if max(s[3]) >= 2 else None),
            Property("no-consumption", "Poison is never consumed.", "test",
                     lambda s: "poison consumed" if max(s[3]) >= 1 else None),
        )

    def alphabet(self) -> Sequence[str]:
        return ["error", "touch", "scrub", "unmap"]

    def render(self, s: ToyState) -> dict[str, str]:
        out = {"errors_left": str(s[0])}
        for v in range(self.vms):
            out[f"vm{v}"] = f"page={['clean', 'latent', 'known'][s[1][v]]} " \
                            f"mapped={s[2][v]} consumed={s[3][v]}"
        return out

