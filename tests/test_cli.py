"""The memfail command line as a user sees it: output, exit status, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from memfail.cli import main
from memfail.scenario.loader import library

PASSING = """\
name: tiny
processes:
  - name: app
    sigbus: handler
steps:
  - mmap: {proc: app, name: buf, size: 4K}
  - mem_write: {proc: app, addr: buf}
  - madvise: {proc: app, addr: buf, advice: hwpoison}
    expect:
      ret: 0
      errno: null
      signals: [{proc: app, thread: main, code: AR, addr: buf+0, lsb: 12}]
      mf: [{type: dirty LRU page, result: Recovered}]
      log: ["recovery action for dirty LRU page: Recovered", "/Sending SIGBUS to app:\\\\d+/"]
      killed: []
  - mem_read: {proc: app, addr: buf+0x10}
    expect: {ret: sigbus, signals: [{code: AR, addr: buf+0x10}]}
expect:
  meminfo_delta: {HardwareCorrupted: 4}
  mf_stats: {total: 1, recovered: 1}
  exit: {app: running}
  panic: false
"""


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, text: str, name: str = "tiny.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", ["run", "profiles", "scenarios"])
def test_every_command_help_has_an_example(capsys: pytest.CaptureFixture[str],
                                           command: str) -> None:
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0
    assert "Examples:" in out
    assert f"memfail {command}" in out or "memfail run" in out


def test_top_level_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    for command in ("run", "profiles", "scenarios"):
        assert command in out


def test_console_entry_point_runs() -> None:
    proc = subprocess.run([sys.executable, "-c", "import sys; from memfail.cli import main; "
                           "sys.exit(main())", "profiles", "--json"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["profiles"][0]["name"] == "linux-6.1"


# --------------------------------------------------------------------------- profiles, scenarios


def test_profiles_lists_presets_and_switches(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "profiles")
    assert code == 0
    for text in ("linux-6.1", "linux-6.18", "next", "madvise_hwpoison_ar", "6.11", "R4"):
        assert text in out


def test_profiles_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "profiles", "--json")
    doc = json.loads(out)
    assert code == 0
    assert [p["name"] for p in doc["profiles"]] == \
        ["linux-6.1", "linux-6.6", "linux-6.12", "linux-6.18", "next"]
    sw = {s["name"]: s for s in doc["switches"]}
    assert sw["madvise_hwpoison_ar"]["since"] == "6.11"
    six_one = doc["profiles"][0]["switches"]
    assert six_one["madvise_hwpoison_ar"] is False and six_one["hugetlb_1g_handled"] is True


def test_profiles_diff(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "profiles", "--diff", "linux-6.12", "linux-6.18", "--json")
    assert code == 0
    rows = json.loads(out)["differences"]
    assert {r["name"] for r in rows} == {"kill_accessing_process_returns_zero",
                                         "already_poisoned_not_accounted",
                                         "gmem_mmap", "gmem_init_shared"}  # v6.18 features
    assert all(r["linux-6.12"] is False and r["linux-6.18"] is True for r in rows)
    code, out, _ = run_cli(capsys, "profiles", "--diff", "linux-6.12", "linux-6.18")
    assert "kill_accessing_process_returns_zero" in out and "madvise_hwpoison_ar" not in out


def test_profiles_diff_unknown_profile(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "profiles", "--diff", "linux-6.12", "linux-9")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("memfail: error: ")
    assert "unknown kernel profile 'linux-9'" in err


def test_scenarios_lists_builtins(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "scenarios", "--json")
    assert code == 0
    names = {row["name"] for row in json.loads(out)}
    assert {"anon-madvise-hwpoison", "shmem-early-kill-ao", "hugetlb-2m-private"} <= names
    code, out, _ = run_cli(capsys, "scenarios")
    assert "hugetlb-2m-private" in out


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("text", "needle"), [
    ("steps:\n  - madvice: {}\n", "tiny.yaml:2: steps[0].madvice: unknown action 'madvice'"),
    ("steps: [", "tiny.yaml:1: invalid YAML"),
    ("x: !!python/name:os.system\nsteps: []\n", "is not allowed"),
])
def test_bad_file_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     text: str, needle: str) -> None:
    code, out, err = run_cli(capsys, "run", write(tmp_path, text))
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("memfail: error: ")
    assert needle in err
    assert "Traceback" not in err


def test_bad_file_stops_all_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, PASSING, "good.yaml")
    bad = write(tmp_path, "steps: 3\n", "bad.yaml")
    code, out, err = run_cli(capsys, "run", good, bad)
    assert code == 2 and out == ""
    assert "bad.yaml:1: steps: Input should be a valid list" in err


def test_unknown_file_or_name(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run", "anon-madvise-hwpoisson")
    assert code == 2
    assert "no such file or built-in scenario (did you mean 'anon-madvise-hwpoison'?)" in err


def test_unknown_profile_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "run", write(tmp_path, PASSING), "--profile", "linux-7")
    assert code == 2 and "--profile: unknown kernel profile 'linux-7'" in err


def test_model_input_error_names_step_line_and_field(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    text = ("processes: [{name: app}]\nsteps:\n  - mmap: {proc: app, name: buf, size: 4K}\n"
            "  - mem_read: {proc: app, addr: nosuch+4K}\n")
    code, out, err = run_cli(capsys, "run", write(tmp_path, text))
    assert code == 2 and out == ""
    assert err.count("\n") == 1
    assert err.startswith("memfail: error: ")
    assert "tiny.yaml:4: steps[1].mem_read" in err


def test_internal_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import memfail.scenario.commands as commands

    def boom(*_: object, **__: object) -> None:
        raise RuntimeError("model bug")

    monkeypatch.setattr(commands, "run_scenario", boom)
    monkeypatch.delenv("MEMFAIL_TRACEBACK", raising=False)
    code, _, err = run_cli(capsys, "run", write(tmp_path, PASSING))
    assert code == 3
    assert err.count("\n") == 1 and "internal error: RuntimeError: model bug" in err


# --------------------------------------------------------------------------- running


def test_run_passing_scenario(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "run", write(tmp_path, PASSING))
    assert code == 0, out + err
    assert "[step 2] madvise(proc='app', addr='buf', advice='hwpoison')  -> 0" in out
    assert "Memory failure: 0x" in out and "recovery action for dirty LRU page: Recovered" in out
    assert "SIGBUS -> app:" in out and "BUS_MCEERR_AR addr=buf+0x0 lsb=12" in out
    assert "== tiny: ok" in out
    assert "0 failed" in out


def test_run_failing_expectations(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = PASSING.replace("      errno: null\n", "      errno: EBUSY\n") \
                  .replace("{HardwareCorrupted: 4}", "{HardwareCorrupted: 8}")
    path = write(tmp_path, text)
    code, out, _ = run_cli(capsys, "run", path)
    assert code == 1
    assert f"{path}:8: step 2 (madvise): expect.errno: expected 'EBUSY', got None" in out
    assert f"{path}:19: expect.meminfo_delta.HardwareCorrupted: expected +8, got +4 (0 -> 4)" \
        in out
    code, out, _ = run_cli(capsys, "run", path, "--quiet")
    assert code == 1
    assert out.splitlines()[-1] == "tiny: FAILED (12 passed, 2 failed)"


def test_run_json_is_deterministic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, PASSING)
    _, first, _ = run_cli(capsys, "run", path, "--json")
    code, second, _ = run_cli(capsys, "run", path, "--json")
    assert code == 0 and first == second
    doc = json.loads(first)
    assert doc["schema"] == "memfail.run/1" and doc["trace_schema"] == "memfail.trace/1"
    assert doc["scenario"] == "tiny" and doc["profile"] == "linux-6.18" and doc["ok"] is True
    assert [s["action"] for s in doc["setup"]] == ["spawn", "sigaction"]
    step = doc["steps"][2]
    assert (step["index"], step["line"], step["action"], step["ret"], step["errno"]) == \
        (2, 8, "madvise", 0, None)
    assert step["args"] == {"proc": "app", "addr": "buf", "advice": "hwpoison"}
    assert any(e["event"] == "signal" and e["si_code"] == "BUS_MCEERR_AR" for e in step["events"])
    assert doc["meminfo"]["after"]["HardwareCorrupted"] - \
        doc["meminfo"]["before"]["HardwareCorrupted"] == 4
    assert doc["processes"]["app"]["state"] == "running"
    assert doc["expectations"]["failed"] == []
    assert len(doc["trace"]) >= sum(len(s["events"]) for s in doc["steps"])


def test_run_several_files_json_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write(tmp_path, PASSING, "a.yaml")
    code, out, _ = run_cli(capsys, "run", a, "hugetlb-2m-private", "--json")
    docs = json.loads(out)
    assert code == 0
    assert [d["scenario"] for d in docs] == ["tiny", "hugetlb-2m-private"]


def test_profile_override_changes_outcome(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Before 6.11 MADV_HWPOISON was action-optional (R4, DOC-14): no AR signal at injection."""
    code, out, _ = run_cli(capsys, "run", write(tmp_path, PASSING), "--profile", "linux-6.1",
                           "--quiet")
    assert code == 1
    assert "step 2 (madvise): expect.signals:" in out


@pytest.mark.parametrize("name", sorted(library()))
def test_builtin_scenarios_pass(capsys: pytest.CaptureFixture[str], name: str) -> None:
    """Every scenario `memfail scenarios` lists passes its own expectations under the
    profile it pins (a model change that moves an outcome must move the example too)."""
    code, out, err = run_cli(capsys, "run", name, "--quiet")
    assert code == 0, out + err


def test_commands_can_be_registered_from_other_modules(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Other modules add sub-commands with one COMMANDS entry (a function or a Typer app)."""
    import typer

    from memfail.cli import register

    app = typer.Typer(add_completion=False)
    register(app, "memfail.scenario.commands")  # a module with register(app)
    register(app, "presets=memfail.report.profiles:profiles")
    group = typer.Typer()
    group.command("hello")(lambda: typer.echo("hi"))
    import types
    mod = types.ModuleType("memfail_test_plugin")
    mod.group = group  # type: ignore[attr-defined]
    sys.modules["memfail_test_plugin"] = mod
    try:
        register(app, "extra=memfail_test_plugin:group")
        code = app(["extra", "hello"], standalone_mode=False)
        assert capsys.readouterr().out == "hi\n" and code in (0, None)
        app(["presets", "--json"], standalone_mode=False)
        assert json.loads(capsys.readouterr().out)["profiles"]
        app(["scenarios", "--json"], standalone_mode=False)
        assert json.loads(capsys.readouterr().out)
    finally:
        del sys.modules["memfail_test_plugin"]


# --------------------------------------------------------------------------- the error contract


def _memfail(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "import sys; from memfail.cli import main; "
                           "sys.exit(main())", *args], capture_output=True, text=True,
                          check=False, **kw)  # type: ignore[call-overload]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--version")
    assert code == 0 and out.startswith("memfail ") and out.split()[1][0].isdigit()


@pytest.mark.parametrize("args", [
    ("scenarios", "--json", "extra"),
    ("nope",),
    ("fleet", "run", "--workers", "nan"),
    ("check", "--max-depth", "-1"),
    ("profiles", "--diff", "linux-6.1"),
    ("compare", "--no-such-option"),
])
def test_usage_errors_are_one_line_exit_2(capsys: pytest.CaptureFixture[str],
                                          args: tuple[str, ...]) -> None:
    code, _, err = run_cli(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memfail: error: "), err
    assert "╭" not in err and "Usage:" not in err


@pytest.mark.parametrize("args", [(), ("check",), ("fleet", "run"), ("fleet", "sweep")])
def test_help_states_the_exit_codes(capsys: pytest.CaptureFixture[str],
                                    args: tuple[str, ...]) -> None:
    code, out, _ = run_cli(capsys, *args, "--help")
    text = " ".join(out.split())
    assert code == 0
    assert "Exit status: 0" in text and "2 bad input" in text and "3 internal error" in text


def test_closed_pipe_ends_quietly() -> None:
    """`memfail scenarios | head -1`: the reader stops early; memfail ends without a message
    and without claiming that an expectation failed."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from memfail.cli import main; "
                             "sys.exit(main())", "run", "vm-hugetlb-consumed",
                             "anon-madvise-hwpoison", "host-ext2-clean-dropped"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "error" not in err, err


def test_closed_pipe_exit_status() -> None:
    r = subprocess.run(f"{sys.executable} -c 'import sys; from memfail.cli import main; "
                       "sys.exit(main())' policies | head -c 10 >/dev/null; "
                       "echo ${PIPESTATUS[0]}", shell=True, executable="/bin/bash",
                       capture_output=True, text=True, check=False)
    assert r.stdout.strip() == "0", r.stderr
    assert "Traceback" not in r.stderr and "error" not in r.stderr


# --------------------------------------------------------------------------- --scheduler


def _peer(behaviour: str) -> tuple[object, int]:
    """A local TCP peer on 127.0.0.1 that answers HTTP, or accepts and stays silent."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    port = srv.getsockname()[1]
    held: list[object] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)
            if behaviour == "http":
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    threading.Thread(target=serve, daemon=True).start()
    return srv, port


@pytest.mark.parametrize("behaviour", ["http", "silent"])
@pytest.mark.parametrize("command", [("check", "--max-depth", "1"),
                                     ("fleet", "run", "--host-years", "1000")])
def test_wrong_or_silent_scheduler_is_one_line_within_the_timeout(
        behaviour: str, command: tuple[str, ...]) -> None:
    srv, port = _peer(behaviour)
    try:
        r = _memfail(*command, "--scheduler", f"tcp://127.0.0.1:{port}",
                     env={**__import__("os").environ, "MEMFAIL_CONNECT_TIMEOUT": "2"},
                     timeout=60)
    finally:
        srv.close()  # type: ignore[attr-defined]
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("memfail: error: --scheduler: "), r.stderr
    assert ("no Dask handshake" if behaviour == "silent" else "not a Dask handshake") \
        in lines[0]


def test_a_note_of_memfail_is_not_shown_as_a_kernel_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Why a step failed (a mapping that went away) is memfail's note, under the step,
    without a dmesg timestamp that would make it look like the kernel's."""
    path = write(tmp_path, "processes: [{name: app}]\nsteps:\n"
                 "  - mmap: {proc: app, name: buf, size: 8K}\n"
                 "  - munmap: {proc: app, addr: buf}\n"
                 "  - mem_write: {proc: app, addr: buf, value: 3}\n")
    rc, out, _ = run_cli(capsys, "run", path)
    assert rc == 0
    assert "  note: mem_write: process 'app' has no mapping 'buf' now" in out
    assert "] memfail: " not in out


def test_help_shows_flags_without_a_value_and_every_cell_code(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`--json <bool>` read as `--json true`; compare's help left codes out of its legend."""
    from memfail.report.compare import FINDINGS

    code, out, _ = run_cli(capsys, "run", "--help")
    assert code == 0 and "<bool>" not in out and "3 internal error" in out
    assert "<str>" in out  # an option that takes a value still shows its type
    code, out, _ = run_cli(capsys, "compare", "--help")
    flat = " ".join(out.replace("│", " ").split())
    for _key, letter, _cell, words in FINDINGS:
        assert f"{letter} {words}" in flat


def test_an_inline_policy_is_reported_by_its_name(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """trace-format.md: `policy` is a string; an inline policy is named by `name`, or by its
    base and the knobs it changes (policies.md), never as a Python dict."""
    f = write(tmp_path, "name: ip\npolicy: {base: minimum, name: mine, unmap_stage2: folio}\n"
                        "processes: [{name: app}]\nsteps:\n  - meminfo: {}\n", "ip.yaml")
    code, out, _ = run_cli(capsys, "run", f, "--json")
    assert code == 0 and json.loads(out)["policy"] == "mine"
    code, out, _ = run_cli(capsys, "run", f, "--json", "--policy",
                           "{base: minimum, unmap_stage2: folio}")
    assert json.loads(out)["policy"] == "minimum{unmap_stage2=folio}"
    code, out, _ = run_cli(capsys, "run", f)
    assert "policy mine)" in out and "{'base'" not in out
