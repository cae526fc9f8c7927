"""The fleet's ``ModelOracle`` for the report, which asks for the same failure classes under
every policy and at every sensitivity point: each class's model scenario, and its run key, is
built once.

Building a scenario (``memfail.fleet.oracle.model_scenario``) and its JSON key
(``ModelScenario.key``) each time the oracle is asked took most of a warm fleet stage (about
100 s of 110 in ``--quick``). The scenarios, keys, model runs and outcomes are the same.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

from memfail.fleet.classes import FailureClass
from memfail.fleet.oracle import ModelOracle, ModelScenario


@dataclasses.dataclass(frozen=True)
class KeyedScenario(ModelScenario):
    """A ``ModelScenario`` whose key is computed once."""

    @functools.cached_property
    def key(self) -> str:
        return str(ModelScenario.key.fget(self))  # type: ignore[attr-defined]

    @classmethod
    def of(cls, sc: ModelScenario) -> KeyedScenario:
        return cls(**{f.name: getattr(sc, f.name) for f in dataclasses.fields(sc)})


class ReportOracle(ModelOracle):
    """``ModelOracle`` with each class's scenario built once."""

    def __init__(self, profile: str, cache_dir: Path | None) -> None:
        super().__init__(profile, cache_dir=cache_dir)
        self._scenarios: dict[FailureClass, KeyedScenario] = {}

    def scenario(self, cls: FailureClass) -> ModelScenario:
        sc = self._scenarios.get(cls)
        if sc is None:
            sc = self._scenarios[cls] = KeyedScenario.of(super().scenario(cls))
        return sc


__all__ = ["KeyedScenario", "ReportOracle"]
