"""The JSON document of a scenario run (schema ``memfail.run/1``, see docs/trace-format.md).

Keys are emitted in a fixed order and values are plain JSON types, so the same run always gives
the same bytes.
"""

from __future__ import annotations

import json
from typing import Any

from memfail.model.trace import TRACE_SCHEMA
from memfail.scenario.runner import ActionRecord, RunResult

RUN_SCHEMA = "memfail.run/1"


def _record(rec: ActionRecord) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if rec.index is not None:
        d["index"] = rec.index
    d.update({
        "line": rec.line,
        "trace_step": rec.trace_step,
        "action": rec.key,
        "args": rec.args,
        "ran": rec.ran,
        "ret": rec.ret,
        "errno": rec.errno,
    })
    if rec.index is not None:
        d["note"] = rec.note
        d["failures"] = [str(f) for f in rec.failures]
    d["events"] = [e.to_dict() for e in rec.events]
    return d


def run_document(r: RunResult) -> dict[str, Any]:
    """One run as a JSON-ready dict."""
    sc = r.scenario
    return {
        "schema": RUN_SCHEMA,
        "scenario": sc.name,
        "file": sc.file,
        "description": sc.description,
        "profile": r.profile,
        "policy": r.policy,
        "seed": sc.seed,
        "ok": r.ok,
        "setup": [_record(s) for s in r.setup],
        "steps": [_record(s) for s in r.steps],
        "meminfo": {"before": r.meminfo_before, "after": r.meminfo_after},
        "mf_stats": r.mf_stats,
        "processes": r.processes,
        "panic": r.panicked,
        "outcomes": r.outcomes,
        "expectations": {"passed": r.passed, "failed": [f.to_dict() for f in r.failures]},
        "trace_schema": TRACE_SCHEMA,
        "trace": r.trace.to_dicts(),
    }


def _default(o: Any) -> Any:
    if isinstance(o, set | frozenset):
        return sorted(o, key=repr)
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    return str(o)


def to_json(doc: Any, indent: int | None = 2) -> str:
    return json.dumps(doc, indent=indent, default=_default, ensure_ascii=False)
