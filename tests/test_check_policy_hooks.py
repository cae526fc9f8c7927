"""Coverage names the policy hooks each policy's exploration fired. On the standard
configuration every hook a preset has fires, and every hook it cannot have (``hooks_absent``,
with why) does not: the configuration exercises what the call argued about, and the reasons
given for the absent ones are checked against the model's own events."""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
import typer
from typer.testing import CliRunner

from memfail.check import cli
from memfail.check.model_system import POLICY_HOOKS, ModelSystem
from memfail.model.policy.registry import policy_names


def _check(*args: str) -> tuple[int, str]:
    app = typer.Typer()
    app.command()(cli.check)
    r = CliRunner().invoke(app, list(args))
    assert r.exit_code in (0, 1), r.output
    return r.exit_code, r.stdout


def _coverage(policy: str, depth: int = 3) -> dict[str, Any]:
    _, out = _check("--policy", policy, "--max-depth", str(depth), "--json")
    (r,) = json.loads(out)["results"]
    cov: dict[str, Any] = r["coverage"]
    return cov


@pytest.mark.parametrize("policy", policy_names())
def test_every_hook_the_policy_has_fires_on_the_standard_configuration(policy: str) -> None:
    cov = _coverage(policy)
    absent = cov["hooks_absent"]
    assert cov["hooks_missing"] == [], f"{policy}: hooks it has never fired"
    assert set(cov["hooks_fired"]) == set(POLICY_HOOKS) - set(absent), policy
    # and every event of the configuration does something within the bound (a realloc of a
    # VM whose page is always allocated never did: docs/check.md, The standard configuration)
    assert cov["entries_idle"] == [], f"{policy}: events that never change anything"
    assert cov["events_never"] == []
    assert all(isinstance(why, str) and why for why in absent.values())


def test_presets_the_standard_configuration_checks() -> None:
    from memfail.check.config import standard_config

    assert set(standard_config().policies) == set(policy_names())


def test_future_has_every_hook_but_error_folio() -> None:
    absent = cli.hooks_absent("future")
    assert list(absent) == ["error_folio"]
    assert "vm_on_error" in absent["error_folio"]
    assert set(cli.hooks_absent("hugetlbfs")) == set(POLICY_HOOKS)


def test_text_output_separates_missing_hooks_from_absent_ones() -> None:
    _, out = _check("--policy", "minimum", "--max-depth", "1", "--property", "early-told")
    assert "policy hook split cannot fire under this policy: record: table" in out
    # depth 1 is too shallow for release: it is reported as never fired
    assert "policy hooks never fired: release" in out


@pytest.mark.parametrize("knobs", [
    {"base": "future", "name": "future+unusable", "vm_on_error": "unusable"},
    {"base": "minimum", "name": "minimum+marks", "vm_on_error": "unusable",
     "mark_on_truncate": True, "record": "folio"},
], ids=lambda k: k["name"])
def test_knob_combinations_no_preset_has_fire_the_hooks_they_have(knobs: dict[str, Any]
                                                                  ) -> None:
    """error_folio fires once a policy has it (vm_on_error: unusable), so "cannot fire" is
    about the preset's knobs, not about the configuration."""
    from memfail.check.config import standard_config
    from memfail.check.explorer import Bounds, Options, explore
    from memfail.model.policy.registry import make_policy

    pol = make_policy(knobs)
    # the Host takes any GmemPolicy; ModelSystem's annotation names presets only
    system = ModelSystem(standard_config(), cast(Any, pol))
    r = explore(system, bounds=Bounds(max_depth=3), options=Options(stop_when_all_fail=False))
    absent = cli.hooks_absent(pol)
    assert "error_folio" not in absent
    assert set(r.coverage.hooks_fired) == set(POLICY_HOOKS) - set(absent)
