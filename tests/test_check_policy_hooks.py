"""Coverage names the policy hooks each policy's exploration fired: ``future`` records a
failure as PG_hwpoison on the folio (C8), and that memory_failure hook is reported."""

from __future__ import annotations

import json
import subprocess
import sys


def _hooks_never(policy: str) -> list[str]:
    code = "import sys; from memfail.cli import main; sys.exit(main())"
    out = subprocess.run([sys.executable, "-c", code, "check", "--policy", policy,
                          "--max-depth", "2", "--json"], capture_output=True, text=True,
                         check=False, timeout=600)
    assert out.returncode in (0, 1), out.stderr
    doc = json.loads(out.stdout)
    (r,) = [r for r in doc["results"] if r["policy"] == policy]
    return list(r["coverage"]["hooks_never"])


def test_future_memory_failure_hook_is_covered() -> None:
    assert "memory_failure" not in _hooks_never("future")
