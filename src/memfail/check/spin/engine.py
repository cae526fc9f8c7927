"""`memfail check --engine spin`: the verdicts of one policy by SPIN, as the Python engine
reports them (explorer.Result), with each FAIL's trail checked on the Python model.

A SPIN trail is a list of labels of the configuration's alphabet; replayed on the Python model
(``ModelSystem``) it must violate the same property: its message is then the Python
property's own, and the counterexample file is written as for the Python engine
(counterexample.py), so `memfail run` replays it. A trail the Python model does not
confirm is a disagreement between the engines and stops the run (RuntimeError).
"""

from __future__ import annotations

from typing import Any

from memfail.check.explorer import FAIL, Result
from memfail.check.properties import property_def
from memfail.check.spin import EngineDisagreement
from memfail.check.spin.runner import check_policy


def confirm(system: Any, labels: list[Any], prop: str) -> str | None:
    """The Python model's message for ``prop`` at the end of ``labels`` (None: it holds, or
    a label was not enabled)."""
    return _confirm(system, labels, prop)[0]


def _confirm(system: Any, labels: list[Any], prop: str) -> tuple[str | None, str]:
    """``confirm``'s message, and the trail as the Python model ran it: each step described
    (with its ``--races`` stage), and the step it refused if it refused one."""
    from memfail.check.counterexample import describe_step, stage_of

    s = system.initial()
    pd = property_def(prop)
    done: list[str] = []
    for i, lab in enumerate(labels, 1):
        text = describe_step(lab, stage_of(system, lab, s.host))
        if lab not in system.enabled(s):
            return None, "; ".join([*done, f"step {i} {text}: not enabled in the Python model"])
        s = system.step(s, lab)
        done.append(f"{i} {text}")
        msg = pd.check(s.host, s.monitor)
        if msg is not None:
            return msg, "; ".join(done)
    return None, "; ".join(done) + f"; after step {len(labels)} {prop} holds in the Python model"


def spin_result(system: Any, props: list[str], bitstate: bool = False, share: int = 1,
                memory_mb: float | None = None, seconds: float | None = None) -> Result:
    """The policy's verdicts by SPIN, each FAIL confirmed on the Python model; ``share``: how
    many pans run at once (runner.check_policy: one that stopped for memory beside others
    runs again alone); ``memory_mb`` and ``seconds``: check_policy's bounds."""
    run = check_policy(system, props, bitstate=bitstate, share=share, memory_mb=memory_mb,
                       seconds=seconds)
    result = run.result
    for name, v in result.verdicts.items():
        if v.status != FAIL:
            continue
        msg, trail = _confirm(system, list(v.labels), name)
        if msg is None:
            raise EngineDisagreement(
                f"policy {system.policy!r}: the SPIN trail for {name} ({len(v.labels)} steps: "
                f"{trail}) does not violate it on the Python model: the engines disagree, a "
                "bug in memfail; `memfail check --engine python` checks this configuration")
        v.message = msg
    return result
