"""`memfail check` end to end on small systems: table, JSON, exit codes, counterexample files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from check_cfgs import MCE_THEN_VMM, one_vm
from memfail.check import cli
from memfail.check.config import CheckConfig
from memfail.check.toys import PoisonToy

CONFIG = """\
policies: [mainline, unmap]
host: {hugepages: {2M: 1}}
processes:
  - {name: qemu0, threads: [main, vcpu0]}
vms:
  - {name: vm0, vmm: qemu0}
events:
  - {event: hw_error, vm: vm0}
"""


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Check the poison toy instead of the model: policy 'unmap' unmaps, others do not."""

    def make(config: CheckConfig, policy: str) -> Any:
        return PoisonToy(vms=2, errors=1, unmap=policy == "unmap", name=policy)

    monkeypatch.setattr(cli, "make_system", make)
    monkeypatch.setattr(cli, "PROPERTY_NAMES", ("contained", "no-consumption"))
    path = tmp_path / "c.yaml"
    path.write_text(CONFIG)
    return path


def run(*args: str) -> Any:
    app = typer.Typer()
    app.command()(cli.check)
    return CliRunner().invoke(app, list(args))


def test_table_and_exit_status(toy: Path) -> None:
    r = run(str(toy))
    assert r.exit_code == 1, r.output
    assert "FAIL(3)" in r.output and "PASS" in r.output
    r = run(str(toy), "--policy", "unmap", "--property", "contained")
    assert r.exit_code == 0, r.output


def test_json_document(toy: Path) -> None:
    r = run(str(toy), "--json", "--property", "contained")
    doc = json.loads(r.stdout)
    assert doc["schema"] == "memfail.check/1" and doc["failed"] is True
    leaky, unmap = doc["results"]
    assert leaky["policy"] == "mainline" and leaky["verdicts"]["contained"]["status"] == "FAIL"
    assert leaky["verdicts"]["contained"]["depth"] == 3
    assert leaky["verdicts"]["contained"]["counterexample"] == [
        "('error', 0)", "('touch', 0)", "('touch', 0)"]
    assert unmap["verdicts"]["contained"]["status"] == "PASS" and unmap["complete"]
    assert unmap["collision_probability"] < 1e-12
    assert set(unmap["coverage"]) == {"events_fired", "events_never", "hooks_fired",
                                      "hooks_never", "hooks_missing", "hooks_absent",
                                      "entries_idle"}
    # the toy system does not say which entries changed nothing, and has no policy hooks
    assert unmap["coverage"]["entries_idle"] is None
    assert unmap["coverage"]["hooks_missing"] is None and unmap["coverage"]["hooks_absent"] is None


def test_workers_do_not_change_the_answer(toy: Path) -> None:
    def strip(doc: dict[str, Any]) -> dict[str, Any]:
        for res in doc["results"]:
            res.pop("elapsed_s")
            res.pop("states_per_s")
        doc.pop("workers")
        return doc

    one = strip(json.loads(run(str(toy), "--json").stdout))
    two = strip(json.loads(run(str(toy), "--json", "--workers", "2").stdout))
    assert one == two


def test_partial_is_labelled(toy: Path) -> None:
    r = run(str(toy), "--policy", "unmap", "--max-depth", "1", "--json")
    v = json.loads(r.stdout)["results"][0]["verdicts"]["contained"]
    assert (v["status"], v["reason"]) == ("PARTIAL", "depth")
    assert r.exit_code == 0


def test_out_writes_one_file_per_violation(toy: Path, tmp_path: Path) -> None:
    out = tmp_path / "cex"
    r = run(str(toy), "--out", str(out))
    assert r.exit_code == 1
    names = sorted(p.name for p in out.iterdir())
    assert names == ["mainline--contained.trace.txt", "mainline--no-consumption.trace.txt",
                     "unmap--no-consumption.trace.txt"]
    text = (out / "mainline--contained.trace.txt").read_text()
    assert "step 3: ('touch', 0)" in text and "consumed=1 -> page=known mapped=True consumed=2" in text


def test_bad_input_exits_2_with_one_line(toy: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("policies: [a]\nevents: [{event: nope}]\n")
    r = run(str(bad))
    assert r.exit_code == 2
    assert r.stderr.strip().startswith(f"memfail: error: {bad}:2: events[0].event: unknown event 'nope'")
    assert len(r.stderr.strip().splitlines()) == 1
    r = run(str(toy), "--property", "nope")
    assert r.exit_code == 2 and "unknown property 'nope'" in r.stderr


def test_resume_from_checkpoint(toy: Path, tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    first = json.loads(run(str(toy), "--json", "--policy", "unmap", "--max-states", "3",
                           "--checkpoint", str(ck), "--checkpoint-every", "0").stdout)
    assert first["results"][0]["stop_reason"] == "states"
    resumed = json.loads(run(str(toy), "--json", "--policy", "unmap",
                             "--resume", str(ck)).stdout)
    full = json.loads(run(str(toy), "--json", "--policy", "unmap").stdout)
    for key in ("states", "transitions", "complete", "verdicts"):
        assert resumed["results"][0][key] == full["results"][0][key]


def test_symmetry_on_the_model_is_refused_with_a_reason(tmp_path: Path) -> None:
    """The model offers no symmetry reduction (docs/check.md, Reductions): asking for it is a
    usage error naming the way out, not a traceback or a silently unreduced run."""
    cfg = tmp_path / "sym.yaml"
    cfg.write_text("""\
policies: [unmap]
host: {memory: 8G, hugepages: {2M: 2}}
processes:
  - {name: qemu0, threads: [main, vcpu0]}
guest_memfd:
  - {name: g0, size: 2M, backing: 2M, flags: [mmap, init_shared]}
vms:
  - {name: vm0, vmm: qemu0, gmem: g0}
events:
  - {event: hw_error, vm: vm0, page: 0, detect: scrub}
symmetry: true
bounds: {depth: 1}
""")
    for args in ([str(cfg)], [str(cfg), "--symmetry"]):
        r = run(*args)
        assert r.exit_code == 2, r.output
        err = r.stderr.strip()
        assert len(err.splitlines()) == 1
        assert "symmetry reduction is not available for the memfail model" in err
    cfg.write_text(cfg.read_text().replace("symmetry: true\n", ""))
    r = run(str(cfg), "--symmetry")
    assert r.exit_code == 2 and "drop --symmetry" in r.stderr
    assert run(str(cfg)).exit_code in (0, 1)


def _memfail(*args: str, **kw: Any) -> Any:
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-c", "import sys; from memfail.cli import main; "
                             "sys.exit(main(sys.argv[1:]))", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_kill_inside_a_level_then_resume_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    """A SIGKILL in the middle of a search level loses at most --checkpoint-every seconds:
    the checkpoint holds the chunks of the level already expanded, and --resume (with the
    options stored in the directory) ends with the result of a run never interrupted."""
    import pickle
    import signal
    import time

    ck = tmp_path / "ck"
    args = ("check", "--policy", "minimum", "--max-depth", "3", "--json")
    proc = _memfail(*args, "--checkpoint", str(ck), "--checkpoint-every", "0")
    caught = None
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        for f in ck.glob("*.checkpoint.pickle"):
            try:
                snap = pickle.loads(f.read_bytes())
            except Exception:
                continue
            if snap.level_done and snap.depth >= 1:
                caught = snap
                break
        if caught is not None:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert caught is not None, "the check ended before a checkpoint inside a level was seen"
    assert proc.returncode == -signal.SIGKILL
    assert 0 < len(caught.level_done) < len(caught.frontier)
    resumed = _memfail("check", "--resume", str(ck), "--max-depth", "3", "--json")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode in (0, 1), err
    full = _memfail(*args)
    fout, _ = full.communicate(timeout=300)
    a, b = json.loads(out)["results"][0], json.loads(fout)["results"][0]
    for key in ("states", "transitions", "depth", "complete", "verdicts", "coverage"):
        assert a[key] == b[key], key


def test_resume_refuses_what_it_cannot_continue(toy: Path, tmp_path: Path) -> None:
    ck = tmp_path / "ck"
    r = run(str(toy), "--resume", str(tmp_path / "missing"))
    assert r.exit_code == 2 and "no such directory" in r.stderr
    (tmp_path / "file").write_text("x")
    r = run(str(toy), "--resume", str(tmp_path / "file"))
    assert r.exit_code == 2 and "is a file" in r.stderr
    run(str(toy), "--policy", "unmap", "--max-states", "3", "--checkpoint", str(ck))
    r = run("--policy", "mainline", "--resume", str(ck))
    assert r.exit_code == 2
    assert "--policy is ['mainline'] here but ['unmap'] in the checkpoint" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_resume_refuses_a_flag_turned_off_and_takes_any_directory(
        toy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--no-races against a --races checkpoint is a difference, refused like any other (it
    used to be taken for "not given"), and a checkpoint records the configuration's absolute
    path, so --resume works from another directory."""
    def make(config: CheckConfig, policy: str, races: bool = False) -> Any:
        return PoisonToy(vms=2, errors=1, unmap=policy == "unmap", name=policy)

    monkeypatch.setattr(cli, "make_system", make)  # the toy, --races or not
    ck = tmp_path / "ck"
    monkeypatch.chdir(toy.parent)
    r = run(toy.name, "--policy", "unmap", "--races", "--max-states", "3", "--checkpoint",
            str(ck))
    assert r.exit_code in (0, 1), r.stderr
    r = run("--no-races", "--resume", str(ck))
    assert r.exit_code == 2
    assert "--races is False here but True in the checkpoint" in r.stderr, r.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = run("--resume", str(ck), "--json")
    assert r.exit_code in (0, 1), r.stderr
    assert json.loads(r.stdout)["results"][0]["policy"] == "unmap", (r.stdout, r.stderr)


def test_a_property_outside_the_configurations_list_is_refused(toy: Path) -> None:
    toy.write_text(toy.read_text() + "properties: [contained]\n")
    r = run(str(toy), "--property", "no-consumption")
    assert r.exit_code == 2
    assert r.stderr.strip() == "memfail: error: --property: 'no-consumption' is not one of " \
        "the configuration's properties (contained); add it to `properties:` or drop --property"


@pytest.mark.parametrize("flag", ["--checkpoint", "--resume"])
def test_spin_keeps_no_checkpoint(toy: Path, tmp_path: Path, flag: str) -> None:
    r = run(str(toy), "--engine", "spin", flag, str(tmp_path / "ck"))
    assert r.exit_code == 2
    assert r.stderr.startswith(f"memfail: error: {flag}: the SPIN engine keeps no checkpoint")


@pytest.mark.parametrize(("args", "expect"), [
    (("--engine", "spin", "--checkpoint-every", "5"),
     "--checkpoint-every: the SPIN engine keeps no checkpoint"),
    (("--engine", "spin", "--scheduler", "tcp://127.0.0.1:1"),
     "--scheduler: the SPIN engine runs its pans on this machine"),
    (("--engine", "spin", "--por"),
     "--por: the SPIN engine has no partial-order reduction to ask for"),
    (("--checkpoint-every", "5"), "--checkpoint-every: only with --checkpoint DIR or --resume"),
    (("--policy", "minimum", "--policy", "minimum"), "--policy: minimum is given twice"),
    (("--policy", "{base: minimum, unmap_stage2: folio}", "--policy",
      "minimum{unmap_stage2=folio}"),
     "--policy: minimum{unmap_stage2=folio} is given twice ('{base: minimum, unmap_stage2: "
     "folio}' and 'minimum{unmap_stage2=folio}')"),
    (("--policy", "{base: unmap, unmap_stage2: folio}", "--policy", "unmap"),
     "--policy: unmap is given twice"),  # the knob's value is the preset's own
    (("--swarm", "3", "--checkpoint-every", "5"), "--checkpoint-every: not with --swarm"),
])
def test_options_a_run_would_ignore_are_refused(toy: Path, args: tuple[str, ...],
                                                expect: str) -> None:
    """An option that would change nothing in this run is a usage error naming it, before
    any work (exit 2), not silently ignored."""
    r = run(str(toy), *args)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith(f"memfail: error: {expect}"), r.stderr


@pytest.mark.parametrize(("args", "expect"), [
    (("--policy", "nope"), "--policy: unknown policy 'nope'"),
    (("--property", "nope"), "--property: unknown property 'nope'"),
    (("--out", "{file}"), "--out: {file} is a file"),
    (("--checkpoint", "{file}"), "--checkpoint: {file} is a file"),
    (("--checkpoint", "/proc/memfail-nope"), "--checkpoint: cannot create"),
])
def test_options_checked_before_any_work(toy: Path, tmp_path: Path, args: tuple[str, ...],
                                         expect: str) -> None:
    f = tmp_path / "a-file"
    f.write_text("")
    argv = [a.replace("{file}", str(f)) for a in args]
    r = run(str(toy), *argv)
    assert r.exit_code == 2, r.output
    assert r.stderr.startswith("memfail: error: " + expect.replace("{file}", str(f)))
    assert len(r.stderr.strip().splitlines()) == 1


CFG_ONE_VM = one_vm("[future]", MCE_THEN_VMM)


def test_a_profile_that_lacks_what_the_configuration_uses_is_refused_at_its_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from memfail.cli import main

    cfg = tmp_path / "prof.yaml"
    cfg.write_text(CFG_ONE_VM.replace("geometry:", "profile: linux-6.6\ngeometry:"))
    rc = main(["check", str(cfg)])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    line = cfg.read_text().splitlines().index("profile: linux-6.6") + 1
    assert err.startswith(f"memfail: error: {cfg}:{line}: profile: policy 'future': "
                          "guest_memfd "), err
    assert "use a profile of v6.8 or later" in err


def test_a_search_stopped_by_its_memory_bound_counts_its_steps_and_says_what_to_do(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The Python engine's memory bound (not pan's advice), and the steps the coverage
    counts are in `transitions`."""
    from memfail.cli import main

    cfg = tmp_path / "one.yaml"
    cfg.write_text(CFG_ONE_VM)
    main(["check", str(cfg), "--max-memory", "1", "--json"])
    r = json.loads(capsys.readouterr().out)["results"][0]
    assert r["stop_reason"] == "memory" and not r["complete"]
    assert r["coverage"]["events_fired"] and r["transitions"] > 0
    main(["check", str(cfg), "--max-memory", "1"])
    out = capsys.readouterr().out
    assert "pan ran out" not in out and "its memory bound" in out
    assert "events not fired before the search stopped" in out
