"""Steps that change nothing, taken at their word (docs/check.md, "Steps that change nothing").

A model action that returns ``ActionResult(..., unchanged=True)`` says it left the host as it
found it, and ``memfail check`` then skips the snapshot that would tell it so (most of a
search's steps are such reads). Held here: with ``verify_unchanged`` (the
``MEMFAIL_CHECK_VERIFY_UNCHANGED`` setting) every such step is snapshotted all the same and a
claim the snapshot contradicts fails the search, on the standard and every agreement
configuration, with and without --races, under three of each one's policies (the first, the
last and one between: the claims are about model actions, which the policy reaches but does
not answer for), over the first states of the search; and a wrong claim is caught. That
trusting the claims changes no figure is tests/test_check_golden.py's (its goldens were
recorded before the claims existed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from memfail.check.config import CheckConfig, load_config, standard_config
from memfail.check.explorer import Bounds, Options, Result, explore
from memfail.check.model_system import VERIFY_ENV, ModelSystem, UnchangedClaimWrong

SPIN = Path(__file__).parents[1] / "src" / "memfail" / "check" / "spin"
AGREE = sorted(SPIN.glob("agree*.yaml"))
# states per search (the search stops at the end of the level that reaches it)
LIMIT = 400


def _config(name: str) -> CheckConfig:
    return standard_config() if name == "standard" else load_config(SPIN / name)


def _search(cfg: CheckConfig, policy: str | None, races: bool,
            verify: bool) -> tuple[ModelSystem, Result]:
    """One search of ``cfg`` on this process; its ModelSystem counts the steps it took at
    their word or verified (``unchanged_steps``)."""
    system = ModelSystem(cfg, policy, races)
    system.verify_unchanged = verify
    return system, explore(system, bounds=Bounds(max_depth=cfg.bounds.depth, max_states=LIMIT),
                           options=Options(stop_when_all_fail=False))


@pytest.mark.parametrize("races", [False, True], ids=["atomic", "races"])
@pytest.mark.parametrize("name", ["standard", *(p.name for p in AGREE)])
def test_every_unchanged_claim_holds(name: str, races: bool) -> None:
    cfg = _config(name)
    policies: list[str | None] = list(cfg.policies) or [None]
    verified = 0
    for policy in dict.fromkeys([policies[0], policies[len(policies) // 2], policies[-1]]):
        system, _ = _search(cfg, policy, races, verify=True)  # raises UnchangedClaimWrong
        verified += system.unchanged_steps
    assert verified > 0, "no step of the search said it changed nothing: nothing was verified"


def test_the_setting_turns_verification_on(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = standard_config()
    monkeypatch.setenv(VERIFY_ENV, "1")
    assert ModelSystem(cfg, cfg.policies[0]).verify_unchanged
    monkeypatch.setenv(VERIFY_ENV, "0")
    assert not ModelSystem(cfg, cfg.policies[0]).verify_unchanged


def test_a_wrong_claim_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A handler that claims a change it made was none: the verifying search names the step."""
    from memfail.model.actions import Action, HwError
    from memfail.model.handlers import HANDLERS, ActionResult, Handler

    real = HANDLERS[HwError]
    table: dict[type[Action], Handler] = HANDLERS
    key: type[Action] = HwError

    def liar(host: Any, a: Any) -> ActionResult:
        res = real(host, a)
        return ActionResult(res.ret, res.errno, res.data, unchanged=True)

    monkeypatch.setitem(table, key, liar)
    cfg = standard_config()
    with pytest.raises(UnchangedClaimWrong, match="hw_error"):
        _search(cfg, cfg.policies[0], False, verify=True)
    # trusted, the lie goes unseen: the next steps run on a host the search thinks unchanged
    _, lied = _search(cfg, cfg.policies[0], False, verify=False)
    monkeypatch.setitem(table, key, real)
    _, honest = _search(cfg, cfg.policies[0], False, verify=False)
    assert (lied.states, lied.transitions) != (honest.states, honest.transitions)
