"""Every command line shown in README.md and docs/policies.md runs as shown."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from memfail.cli import main

ROOT = Path(__file__).parent.parent


def commands(doc: str) -> list[str]:
    text = (ROOT / doc).read_text()
    out = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith((".venv/bin/memfail ", "memfail ")):
                out.append(line.split("memfail ", 1)[1])
    return out


CMDS = commands("README.md") + commands("docs/policies.md")


def test_readme_shows_commands() -> None:
    assert len(CMDS) >= 8


@pytest.mark.parametrize("cmd", CMDS)
def test_command_runs(cmd: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    rc = main(shlex.split(cmd))
    out = capsys.readouterr()
    # 1 is a legitimate answer for `check` (a property fails); never bad input or a crash
    assert rc in (0, 1), f"memfail {cmd} -> {rc}\n{out.err[-2000:]}"
    if not cmd.startswith("check"):
        assert rc == 0, f"memfail {cmd} -> {rc}\n{out.err[-2000:]}"


def test_vm_example_in_scenario_format_runs(tmp_path: Path) -> None:
    """The VM example of docs/scenario-format.md passes under its own policy and, as its
    comment says, not under the call's proposal."""
    doc = (ROOT / "docs" / "scenario-format.md").read_text()
    section = doc[doc.index("## Guest memory, VMs and policies"):]
    block = re.search(r"```yaml\n(.*?)```", section, flags=re.S)
    assert block is not None
    f = tmp_path / "vm.yaml"
    f.write_text(block.group(1))
    assert main(["run", str(f), "-q"]) == 0
    assert main(["run", str(f), "-q", "--policy", "minimum"]) == 1
