"""Every guest_memfd / KVM / QEMU oracle scenario under tests/oracle/gmem/ runs under its pinned
profile and policy and meets its expectations (issue 4: the GM-* and KV-* rows of
oracle-cases.md, and the end-to-end scenarios S5-S15 of kernel-behaviour.md not already
covered by a library scenario with expectations)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from memfail.scenario import load_scenario, run_scenario

GMEM = Path(__file__).parent / "oracle" / "gmem"
FILES = sorted(GMEM.glob("*.yaml"))

# Rows where the model disagrees with the oracle: stem -> reason (expected vs actual).
# Rows the model does not reproduce yet, with the expected and the actual outcome; strict, so
# a model change that fixes one shows up as an unexpected pass.
XFAIL: dict[str, str] = {}


def _oracle_id(path: Path) -> str:
    """gm-01-... -> GM-01, kv-05-... -> KV-05, s05-... -> S5."""
    m = re.match(r"(gm|kv)-(\d\d)-", path.stem)
    if m:
        return f"{m.group(1).upper()}-{m.group(2)}"
    m = re.match(r"s(\d\d)-", path.stem)
    assert m, f"{path.name}: the file name must start with gm-NN-, kv-NN- or sNN-"
    return f"S{int(m.group(1))}"


def test_every_scenario_names_its_oracle_and_pins_profile_and_policy() -> None:
    assert FILES
    for f in FILES:
        sc = load_scenario(f)
        ident = _oracle_id(f)
        assert re.search(rf"\b{re.escape(ident)}\b", sc.description), (f, ident)
        assert re.search(r"\bR\d+\b|\bT\d+\b|\bQ\d\b", sc.description), (f, "no rule id")
        text = f.read_text()
        assert re.search(r"^profile: \S", text, re.M), (f, "profile not pinned")
        assert re.search(r"^policy: \S", text, re.M), (f, "policy not pinned")


def test_xfail_entries_name_existing_files() -> None:
    stems = {f.stem for f in FILES}
    assert set(XFAIL) <= stems


@pytest.mark.parametrize(
    "path",
    [pytest.param(f, marks=pytest.mark.xfail(reason=XFAIL[f.stem], strict=True))
     if f.stem in XFAIL else f for f in FILES],
    ids=[f.stem for f in FILES],
)
def test_gmem_oracle_scenario(path: Path) -> None:
    result = run_scenario(load_scenario(path))
    assert result.ok, "\n".join(str(f) for f in result.failures)
