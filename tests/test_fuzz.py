"""Mutated input files of every kind and mutated command lines keep the error contract.

Hypothesis mutates every shipped file kind (scenario, check configuration, fleet file, fleet
outcome table) and every command's options, and runs the real command in this process: no exit
status 3, no traceback, every exit 2 one ``memfail: error:`` line and, for an error in the file,
located ``FILE:LINE:``. The budget is small here; ``make fuzz`` runs many more examples
(``MEMFAIL_FUZZ_EXAMPLES``). Every file under tests/regressions/ (a crash found once) is run
too, with the command its name gives.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzzing import contract, kinds, mutate, mutate_argv, run_inproc

EXAMPLES = int(os.environ.get("MEMFAIL_FUZZ_EXAMPLES", "20"))
REGRESSIONS = Path(__file__).parent / "regressions"
CHOICES = st.lists(st.integers(min_value=0, max_value=10_000), min_size=4, max_size=16)
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _kind(work: Path, name: str) -> object:
    return next(k for k in kinds(work) if k.name == name)


@pytest.mark.parametrize("name", ["scenario", "check", "fleet", "oracle-table"])
def test_mutated_files_keep_the_error_contract(work: Path, name: str) -> None:
    kind = _kind(work, name)

    @FUZZ
    @given(st.integers(min_value=0, max_value=1000), CHOICES)
    def one(pick: int, choices: list[int]) -> None:
        src = kind.files[pick % len(kind.files)]  # type: ignore[attr-defined]
        data = mutate(src.read_bytes(), choices)
        f = work / f"{name}-mutated.yaml"
        f.write_bytes(data)
        o = run_inproc([a.replace("{file}", str(f)) for a in kind.argv])  # type: ignore[attr-defined]
        problem = contract(o, f)
        if problem:
            keep = work / f"{name}-crash.yaml"
            keep.write_bytes(data)
        assert problem is None, f"{problem} (from {src.name}; kept in {work})"

    one()


def test_mutated_command_lines_keep_the_error_contract(work: Path) -> None:
    cwd = work / "cwd"
    cwd.mkdir(exist_ok=True)

    @FUZZ
    @given(CHOICES)
    def one(choices: list[int]) -> None:
        o = run_inproc(mutate_argv(choices), cwd)
        assert contract(o) is None, (o.argv, contract(o))

    one()


def _regressions() -> list[Path]:
    return sorted(p for p in REGRESSIONS.glob("*.yaml"))


@pytest.mark.parametrize("path", _regressions(), ids=lambda p: p.name)
def test_regression_files(path: Path, work: Path) -> None:
    """A regression file is named KIND--WHAT.yaml; KIND picks the command that reads it."""
    name = path.name.split("--")[0]
    kind = _kind(work, name)
    o = run_inproc([a.replace("{file}", str(path)) for a in kind.argv])  # type: ignore[attr-defined]
    assert contract(o, path) is None, (contract(o, path), o.err)
