"""Every oracle scenario under tests/oracle/ runs under its pinned profile and meets its
expectations (issues 2 and 3: mce-test, LTP, kselftest and documented-behaviour rows)."""

from __future__ import annotations

from pathlib import Path

import pytest

from memfail.scenario import load_scenario, run_scenario

ORACLE = Path(__file__).parent / "oracle"
# tests/oracle/gmem/ (pinned by profile and policy) is run by test_gmem_oracle.py
FILES = sorted(f for f in ORACLE.rglob("*.yaml") if "gmem" not in f.relative_to(ORACLE).parts)


def test_every_scenario_names_its_oracle_and_pins_its_profile() -> None:
    assert FILES
    for f in FILES:
        sc = load_scenario(f)
        assert sc.profile == f.parent.name, f
        ident = f.stem.split("-")[0].upper() + "-" + f.stem.split("-")[1]
        assert ident in sc.description, f


@pytest.mark.parametrize("path", FILES, ids=[f"{p.parent.name}/{p.stem}" for p in FILES])
def test_oracle_scenario(path: Path) -> None:
    result = run_scenario(load_scenario(path))
    assert result.ok, "\n".join(str(f) for f in result.failures)
