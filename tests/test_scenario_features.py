"""Scenario features a user relies on to write a case exactly: ranges, the data a read sees,
ordered/counted/exact log expectations, operator tests and saved values, end states, and the
rule that a failure at run time is a result (exit status 1 or 0), never bad input (2)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from memfail.cli import main
from memfail.model.trace import SignalSent
from memfail.scenario import ScenarioError, load_scenario, run_scenario
from memfail.scenario.loader import load_scenario_text
from memfail.scenario.runner import RunResult


def run_text(text: str) -> RunResult:
    return run_scenario(load_scenario_text(textwrap.dedent(text), "s.yaml"))


def failures(text: str) -> list[str]:
    return [str(f) for f in run_text(text).failures]


def bad(text: str) -> str:
    with pytest.raises(ScenarioError) as exc:
        load_scenario_text(textwrap.dedent(text), "s.yaml")
    return str(exc.value)


APP = """\
processes:
  - {name: app, sigbus: handler}
steps:
  - mmap: {proc: app, name: buf, size: 16K}
"""


def test_mem_write_len_touches_every_page_and_read_sees_them() -> None:
    r = run_text(APP + """\
  - mem_write: {proc: app, addr: buf, len: 16K, value: 9}
  - mem_read: {proc: app, addr: buf+4K, whole: true}
    expect: {ret: 9, data: [9, 9, 9]}
  - mem_read: {proc: app, addr: buf, len: 1}
    expect: {data: [9]}
""")
    assert r.ok, r.failures
    # every page was faulted in: four anonymous pages are present
    assert [s.data for s in r.steps][1:] == [[9, 9, 9, 9], [9, 9, 9], [9]]


def test_a_range_stops_at_the_first_sigbus() -> None:
    r = run_text(APP + """\
  - mem_write: {proc: app, addr: buf, whole: true, value: 2}
  - madvise: {proc: app, addr: buf+8K, advice: hwpoison}
  - mem_read: {proc: app, addr: buf, len: 16K}
    expect:
      ret: sigbus
      data: [2, 2]
      signals: [{proc: app, code: AR, addr: buf+8K}]
""")
    assert r.ok, r.failures


def test_data_of_read_and_pread_and_other_than() -> None:
    assert failures("""\
processes: [{name: app}]
steps:
  - memfd_create: {proc: app, name: f}
  - pwrite: {proc: app, fd: f, len: 8K, value: 6}
  - pread: {proc: app, fd: f, len: 8K}
    expect: {ret: 8192, data: 6}
  - pread: {proc: app, fd: f, len: 4K, offset: 4K}
    expect: {data: {not: 0}}
""") == []
    msgs = failures("""\
processes: [{name: app}]
steps:
  - memfd_create: {proc: app, name: f}
  - pwrite: {proc: app, fd: f, len: 4K, value: 6}
  - pread: {proc: app, fd: f, len: 4K}
    expect: {data: {not: 6}}
  - fsync: {proc: app, fd: f}
    expect: {data: 0}
""")
    assert len(msgs) == 2
    assert "expect.data: expected {'not': 6}, got [6]" in msgs[0]
    assert "returns no data" in msgs[1]


LOGS = """\
processes: [{name: app, sigbus: handler}]
steps:
  - mmap: {proc: app, name: buf, size: 4K}
  - mem_write: {proc: app, addr: buf}
  - madvise: {proc: app, addr: buf, advice: hwpoison}
    expect:
"""


def test_log_order_count_and_exact_pass_on_the_real_lines() -> None:
    assert failures(LOGS + """\
      log_order: [Injecting memory failure, Sending SIGBUS, recovery action]
      log_count: {"/^Memory failure: 0x[0-9a-f]+: /": 2, Injecting: 1}
      log_exact:
        - /^Injecting memory failure for pfn 0x[0-9a-f]+ at process virtual address/
        - /Sending SIGBUS to app:\\d+ due to hardware memory corruption$/
        - "Memory failure: 0x100000: recovery action for dirty LRU page: Recovered"
""") == []


def test_log_order_count_and_exact_fail_with_the_lines_shown() -> None:
    msgs = failures(LOGS + """\
      log_order: [recovery action, Injecting memory failure]
      log_count: {Sending SIGBUS: 2}
      log_exact: [Injecting memory failure]
""")
    assert len(msgs) == 3
    assert "expect.log_order" in msgs[0] and "in this order" in msgs[0]
    assert "expected exactly 1 kernel log line(s)" in msgs[1] and "got 3" in msgs[1]
    assert "expected 2 kernel log line(s) matching 'Sending SIGBUS', got 1" in msgs[2]


def test_explanations_of_a_failed_step_are_not_kernel_lines() -> None:
    r = run_text("""\
processes: [{name: app}]
steps:
  - read: {proc: app, fd: nope}
    expect: {errno: EBADF, log_exact: []}
  - open: {proc: app, path: /none, fd: nope}
""")
    assert r.ok, r.failures


def test_operators_on_lists_and_saved_values() -> None:
    r = run_text(APP + """\
  - mem_write: {proc: app, addr: buf}
  - pagemap: {proc: app, addr: buf}
    save: before
  - kpageflags: {proc: app, addr: buf}
    expect: {ret: {contains: [ANON, LRU], lacks: HWPOISON}}
  - madvise: {proc: app, addr: buf, advice: soft_offline}
  - pagemap: {proc: app, addr: buf}
    expect: {ret: {pfn: {differs_from: before.pfn}, present: true}}
  - pagemap: {proc: app, addr: buf}
    expect: {ret: {pfn: {same_as: before.pfn}}}
""")
    assert len(r.failures) == 1
    msg = str(r.failures[0])
    assert "step 6 (pagemap)" in msg and "saved:" in msg


def test_operator_and_save_mistakes_are_bad_input() -> None:
    assert "no earlier step saves 'frame'" in bad(APP + """\
  - pagemap: {proc: app, addr: buf}
    expect: {ret: {pfn: {differs_from: frame.pfn}}}
""")
    assert "cannot stand next to the operator 'not'" in bad(APP + """\
  - pagemap: {proc: app, addr: buf}
    expect: {ret: {not: 1, pfn: 2}}
""")
    assert "save takes a name" in bad(APP + """\
  - pagemap: {proc: app, addr: buf}
    save: "two words"
""")


def test_end_states_ended_not_and_exit_handler() -> None:
    r = run_text("""\
processes:
  - {name: quits, sigbus: exit, exit_code: 5}
  - {name: dies}
  - {name: lives, sigbus: handler}
steps:
  - mmap: {proc: quits, name: m, size: 4K}
  - mem_write: {proc: quits, addr: m}
  - madvise: {proc: quits, addr: m, advice: hwpoison}
    expect: {signals: [{proc: quits, code: AR}], killed: []}
  - proc_status: {proc: quits}
    expect: {ret: {alive: false, state: exited, code: 5, signal: null}}
  - kill: {proc: dies, signal: SIGKILL}
    expect: {killed: [dies]}
expect:
  exit:
    quits: {code: 5}
    dies: ended
    lives: {not: ended}
""")
    assert r.ok, r.failures
    assert r.processes["dies"]["signal"] == 9


def test_runtime_vanished_names_are_results_on_the_command_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "v.yaml"
    f.write_text(textwrap.dedent("""\
        processes: [{name: parent}]
        steps:
          - exit: {proc: parent}
          - fork: {proc: parent, child: kid}
          - clone: {proc: kid, new: worker}
            expect: {errno: ESRCH}
          - mem_read: {proc: kid, thread: worker, addr: 0x1000}
            expect: {errno: EHWPOISON}
        expect:
          exit: {kid: running}
        """))
    assert main(["run", str(f)]) == 1
    out = capsys.readouterr().out
    assert "expect.errno: expected 'EHWPOISON', got 'ESRCH'" in out
    assert "expect.exit.kid: expected 'running', got 'never-started'" in out


def test_a_name_no_step_creates_is_still_bad_input(tmp_path: Path) -> None:
    f = tmp_path / "b.yaml"
    f.write_text("processes: [{name: app}]\nsteps:\n  - mem_read: {proc: app, addr: nomap}\n")
    assert main(["run", str(f)]) == 2


def test_node_limit_fits_touching_every_page_of_8m_and_200_processes() -> None:
    # 5 nodes per step (list item, step mapping, action mapping's three values) and 6 per
    # process: about 11,500 nodes, more than the old limit of 10,000
    steps = "".join(f"  - mem_write: {{proc: app, addr: buf+{i}p}}\n" for i in range(2048))
    procs = "".join(f"  - {{name: p{i}, threads: [main, t], sigbus: handler}}\n"
                    for i in range(200))
    sc = load_scenario_text("processes:\n  - {name: app}\n" + procs +
                            "steps:\n  - mmap: {proc: app, name: buf, size: 8M}\n" + steps)
    assert len(sc.steps) == 2049 and len(sc.processes) == 201
    assert run_scenario(sc).ok


def test_bus_adrerr_is_named_in_the_trace_and_expectable() -> None:
    r = run_text("""\
processes: [{name: app, sigbus: handler}]
steps:
  - create: {path: /f, fs: tmpfs, size: 0}
  - open: {proc: app, path: /f}
  - mmap: {proc: app, name: m, size: 4K, fd: /f}
  - mem_read: {proc: app, addr: m}
    expect: {ret: sigbus, signals: [{code: BUS_ADRERR}]}
""")
    assert r.ok, r.failures
    codes = {e.si_code for e in r.trace.of(SignalSent)}
    assert codes == {"BUS_ADRERR"}


def test_load_scenario_of_a_file_keeps_save_and_whole(tmp_path: Path) -> None:
    f = tmp_path / "s.yaml"
    f.write_text(APP + "  - mem_read: {proc: app, addr: buf, whole: true}\n    save: v\n")
    sc = load_scenario(f)
    assert sc.steps[1].save == "v" and sc.steps[1].action.whole  # type: ignore[attr-defined]


DOC = Path(__file__).resolve().parent.parent / "docs" / "scenario-format.md"


def _doc_scenarios() -> list[tuple[str, str]]:
    text = DOC.read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    out = []
    for b in blocks:
        if b.startswith("name:"):
            out.append((b.split("\n", 1)[0].removeprefix("name:").strip(), b))
    return out


@pytest.mark.parametrize("name,block", _doc_scenarios(), ids=[n for n, _ in _doc_scenarios()])
def test_every_named_scenario_in_the_format_doc_passes(name: str, block: str) -> None:
    result = run_scenario(load_scenario_text(block, f"{name}.yaml"))
    assert result.ok, "\n".join(str(f) for f in result.failures)
