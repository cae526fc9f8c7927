"""memfail replay: verdicts per failed page, the projection per policy, and the command."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from memfail.cli import main
from memfail.fleet import ModelOracle, Outcome
from memfail.replay import read_inputs, replay_all
from memfail.replay.events import ReadResult
from memfail.replay.project import HostShape, classes, hardware_errors, project

HERE = Path(__file__).parent / "replay"
sys.path.insert(0, str(HERE))
import rasdaemon_db  # noqa: E402


def verdicts(path: Path | str, **kw: str) -> dict[str, tuple[str, str]]:
    res = read_inputs([str(path)], kernel=kw.get("kernel"))
    return {o.incident.key: (o.verdict, o.reason) for o in replay_all(res, kw.get("profile"))}


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(["replay", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


# --------------------------------------------------------------------------- replay

def test_srar_on_61_reproduces_result_and_lines() -> None:
    res = read_inputs([str(HERE / "debian-6.1-srar.dmesg")])
    (o,) = replay_all(res)
    assert o.verdict == "reproduces" and o.profile == "linux-6.1"
    assert o.model == [{"type": "dirty LRU page", "result": "Recovered"}]
    assert o.missing_lines == []
    assert any("Sending SIGBUS to app:" in x for x in o.model_lines)
    assert o.scenario is not None and "hw_error" in o.scenario and "mem_read" in o.scenario


def test_replay_scenario_runs_with_memfail_run(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    res = read_inputs([str(HERE / "journal-ghes.log")], kernel="6.12.9")
    (o,) = replay_all(res)
    assert o.verdict == "reproduces" and o.profile == "linux-6.12"
    f = tmp_path / "replay.yaml"
    f.write_text(o.scenario or "")
    assert main(["run", str(f)]) == 0
    assert "clean LRU page: Recovered" in capsys.readouterr().out


def test_result_the_model_disagrees_with_differs_and_shows_both(tmp_path: Path) -> None:
    log = tmp_path / "d.log"   # synthetic: a logged result the model does not produce
    log.write_text("[ 0.0] Linux version 6.12.9 (gcc) #1 SMP\n"
                   "[ 9.0] mce: Uncorrected hardware memory error in user-access at 5000\n"
                   "[ 9.1] Memory failure: 0x5: recovery action for dirty LRU page: Failed\n")
    (o,) = replay_all(read_inputs([str(log)]))
    assert o.verdict == "differs"
    assert o.logged == [{"type": "dirty LRU page", "result": "Failed"}]
    assert o.model == [{"type": "dirty LRU page", "result": "Recovered"}]
    assert "logged dirty LRU page: Failed, model dirty LRU page: Recovered" in o.reason
    assert o.missing_lines and "Failed" in o.missing_lines[0]


def test_cannot_express_names_what_is_missing() -> None:
    v = verdicts(HERE / "old-kernel-injection.dmesg")
    assert {r for _, r in v.values()} == {"kernel too old: the log's kernel is 4.4.0-31-generic; "
                                          "the model's oldest profile is linux-6.1"}
    (arm,) = verdicts(HERE / "arm64-ghes.dmesg").values()
    assert arm[0] == "cannot-express" and arm[1].startswith("architecture aarch64")
    (bug,) = verdicts(HERE / "kernel-bug.dmesg").values()
    assert bug[0] == "cannot-express" and "kernel bug" in bug[1]
    assert "mm/memory-failure.c" in bug[1]
    mce_only = verdicts(HERE / "mcelog.txt")
    assert [v for v, _ in mce_only.values()] == ["cannot-express"]
    assert "page owner unknown" in next(iter(mce_only.values()))[1]


def test_old_prefix_without_version_is_too_old(tmp_path: Path) -> None:
    log = tmp_path / "o.log"
    log.write_text("[ 1.0] MCE 0x21c3: recovery action for dirty LRU page: Recovered\n")
    ((verdict, reason),) = verdicts(log).values()
    assert verdict == "cannot-express" and reason.startswith("kernel too old")


def test_qemu_guest_error_replays_as_vmce() -> None:
    v = verdicts(HERE / "qemu-amd-guest.log", kernel="6.12.9")
    assert v["guest page 0x10e7d6000"][0] == "reproduces"
    own = [r for k, (verdict, r) in v.items() if "QEMU's own memory" in r]
    assert own and all(v[k][0] == "cannot-express" for k in v if k != "guest page 0x10e7d6000")


def test_version_picks_profile_and_lists_switch_caveats(tmp_path: Path) -> None:
    log = tmp_path / "v.log"
    log.write_text("[ 0.0] Linux version 6.15.2 (gcc) #1 SMP\n"
                   "[ 5.0] Memory failure: 0x77: recovery action for free buddy page: "
                   "Recovered\n")
    (o,) = replay_all(read_inputs([str(log)]))
    assert o.profile == "linux-6.12" and o.verdict == "reproduces"
    assert any("kill_accessing_process_returns_zero=True" in c for c in o.caveats)


def test_unknown_page_type_ignored_on_snp_host() -> None:
    v = verdicts(HERE / "snp-host-unhandlable.dmesg", kernel="6.1.0")
    assert [x for x, _ in v.values()] == ["reproduces", "reproduces"]


# --------------------------------------------------------------------------- projection

def test_projection_places_errors_and_shares_the_fleet_outcomes() -> None:
    res = read_inputs([str(HERE / "debian-6.1-srar.dmesg"), str(HERE / "ftrace.txt")])
    shape = HostShape(memory_gib=64, vm_gib=8, backing="2M")
    pols = ["mainline", "kill-vm", "minimum"]
    proj = project(res, shape, pols)
    errs, _ = hardware_errors(res)
    # each file is a host; each uncorrected page one error; the consumed one is a guest read
    assert proj["hosts"] == 2 and proj["errors"] == len(errs) == 3
    oracle = ModelOracle("linux-6.18")
    for pol in pols:
        want = Outcome()
        for host in {e.host for e in errs}:
            for cls, _ in classes([e for e in errs if e.host == host], shape):
                o = oracle.outcome(pol, cls)
                want = Outcome(*[a + b for a, b in zip(want.as_tuple(), o.as_tuple(),
                                                       strict=True)])
        got = proj["totals"][pol]
        assert [got[n] for n in Outcome.names()] == pytest.approx(list(want.as_tuple()))
    keys = [r["class"] for r in proj["classes"]]
    assert any("guest_read" in k for k in keys) and any("scrub" in k for k in keys)
    assert proj["totals"]["kill-vm"]["vm_killed"] >= 1


def test_projection_leaves_out_injections_and_counts_ce_history(tmp_path: Path) -> None:
    inj = read_inputs([str(HERE / "old-kernel-injection.dmesg")])
    proj = project(inj, HostShape(), ["mainline"])
    assert proj["errors"] == 0 and proj["left_out"]["software_injections"] == 2
    log = tmp_path / "ce.log"
    log.write_text(
        "[ 1.0] mce: [Hardware Error]: CPU 2: Machine Check: 0 Bank 7: 8c00004000010090\n"
        "[ 1.0] mce: [Hardware Error]: TSC 0 ADDR 123456040 MISC 140a8c8c86\n"
        "[ 1.0] mce: [Hardware Error]: PROCESSOR 0:50657 TIME 1700000000 SOCKET 0 APIC 4 "
        "microcode 1\n"
        "[ 9.0] Memory failure: 0x123456: recovery action for dirty LRU page: Recovered\n")
    proj = project(read_inputs([str(log)]), HostShape(), ["mainline"])
    assert proj["errors"] == 1 and proj["uc_with_ce_history"] == 1


def test_a_deferred_error_is_an_action_optional_one(tmp_path: Path) -> None:
    """uc_decode_notifier() hands MCE_DEFERRED_SEVERITY to memory_failure(pfn, 0) as it does
    MCE_AO_SEVERITY: an AMD deferred error (MCi_STATUS bit 44) is an error to project, not
    corrected history (it projected as none)."""
    log = tmp_path / "amd.log"
    log.write_text(
        "[   50.000000] Linux version 6.8.0-45-generic (buildd@lcy02) #45-Ubuntu SMP\n"
        "[  300.000000] mce: [Hardware Error]: Machine check events logged\n"
        "[  300.000001] [Hardware Error]: Deferred error, no action required.\n"
        "[  300.000002] [Hardware Error]: CPU:2 (19:1:1) MC16_STATUS[-|UE|MiscV|AddrV|-|-|"
        "SyndV|UECC|-|Poison|-]: 0x9c00100000000135\n"
        "[  300.000003] [Hardware Error]: Error Addr: 0x00000000a2b3c4d0\n")
    res = read_inputs([str(log)])
    assert [e.error_class for e in res.events if e.pfn == 0xA2B3C] == ["deferred"]
    proj = project(res, HostShape(), ["mainline"])
    assert proj["errors"] == 1 and proj["left_out"]["corrected_records"] == 0


def test_a_vm_is_paused_once_however_many_errors_it_meets(tmp_path: Path) -> None:
    """`vm_paused` counts VMs: a second consumed error in a VM `unmap` has paused already
    pauses nothing more (it counted 2 paused VMs for one VM)."""
    lines = ["[    0.000000] Linux version 6.1.0-18-amd64 (debian-kernel@lists.debian.org) "
             "(gcc-12) #1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)"]
    for t, addr in ((100, "140000a80"), (1100, "180000a80")):   # both in VM 0 (4-36 GiB)
        lines += [f"[ {t}.000000] mce: [Hardware Error]: CPU 11: Machine Check Exception: 5 "
                  "Bank 1: bd80000000100134",
                  f"[ {t}.000001] mce: [Hardware Error]: RIP 33:<00005634a7e1c0d2>",
                  f"[ {t}.000002] mce: [Hardware Error]: TSC 1c2f5e0a19b3e ADDR {addr} MISC 86",
                  f"[ {t}.000003] mce: Uncorrected hardware memory error in user-access at "
                  f"{addr}"]
    log = tmp_path / "two.dmesg"
    log.write_text("\n".join(lines) + "\n")
    proj = project(read_inputs([str(log)]), HostShape(), ["unmap"])
    assert proj["errors"] == 2 and proj["totals"]["unmap"]["vm_paused"] == 1.0
    assert [r["outcomes"]["unmap"].get("vm_paused", 0) for r in proj["classes"]] == [1.0, 0]


def test_host_shape_layout() -> None:
    s = HostShape(memory_gib=68, vm_gib=16, backing="1G")
    assert s.nvms == 4
    assert s.place(0x1000)[0] == "kernel"
    assert s.place(3 << 30)[0] == "vmm"
    assert s.place((4 << 30) + (17 << 30)) == ("gmem_private", 1, 1 << 30)
    assert s.place(68 << 30) == ("kernel", None, 0)   # modulo the host's memory
    with pytest.raises(ValueError):
        HostShape(memory_gib=20, vm_gib=8, vms=3).validate()


def test_errors_in_one_folio_are_one_fault_or_a_second_fault() -> None:
    base = (4 << 30) // 4096
    res = ReadResult()
    from memfail.replay.events import RasEvent

    def mf(seq: int, pfn: int, t: float) -> RasEvent:
        return RasEvent(seq=seq, kind="memory_failure", format="kernel-log", source="h",
                        pfn=pfn, uptime=t, page_type="dirty LRU page", result="Recovered",
                        text="")
    res.events = [mf(0, base, 1.0), mf(1, base + 1, 1.5), mf(2, base + 7, 500.0)]
    errs, _ = hardware_errors(res)
    ((cls, group),) = classes(errs, HostShape(backing="2M"))
    assert cls.pages_hit == 2 and cls.same_folio and cls.second_fault and len(group) == 3


# --------------------------------------------------------------------------- command

def test_cli_text(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run([str(HERE / "debian-6.1-srar.dmesg"), "--policy", "mainline",
                        "--policy", "kill-vm", "--host-memory", "64G", "--vm-size", "8G"],
                       capsys)
    assert rc == 0 and err == ""
    assert "pfn 0x2b47d6: reproduces under linux-6.1" in out
    assert "projection onto a guest_memfd host (64 GiB, 7 VMs of 8 GiB" in out
    assert "\n  kill-vm " in out


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run([str(HERE / "ras-mc-ctl-errors.txt"), "--kernel", "6.1.0-18-amd64",
                      "--json", "--policy", "mainline"], capsys)
    doc = json.loads(out)
    assert rc == 0 and doc["schema"] == "memfail.replay/1"
    assert ReadResult.model_validate({"events": doc["events"], "problems": doc["problems"],
                                      "sources": doc["sources"]}).events
    assert {r["verdict"] for r in doc["replay"]} == {"reproduces"}
    mf = next(e for e in doc["events"] if e["kind"] == "memory_failure")
    assert doc["verdict_by_event"][str(mf["seq"])]["verdict"] == "reproduces"
    assert doc["projection"]["policies"] == ["mainline"]


def test_cli_schema(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["--schema"], capsys)
    schema = json.loads(out)
    assert rc == 0 and "RasEvent" in schema["$defs"] and "MceRecord" in schema["$defs"]


def test_cli_database_and_directory_of_hosts(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "hosts"
    d.mkdir()
    (d / "a.dmesg").write_text((HERE / "debian-6.1-srar.dmesg").read_text())
    db = d / "b.db"
    rasdaemon_db.create(db, prefer_rasdaemon=False)
    rasdaemon_db.insert(db, "memory_failure_event", timestamp="2024-03-01 10:15:02 +0000",
                        pfn=0x6D93FF, page_type="clean LRU page", action_result="Recovered")
    rc, out, _ = run([str(d), "--json", "--policy", "mainline", "--no-replay"], capsys)
    doc = json.loads(out)
    assert rc == 0 and doc["projection"]["hosts"] == 2 and doc["replay"] == []
    assert set(doc["projection"]["per_host"]) == {str(d / "a.dmesg"), str(db)}
    # the database's page type is re-decoded with the kernel version the log gave
    mf = [e for e in doc["events"] if e["table"] == "memory_failure_event"]
    assert mf[0]["page_type"] == "free buddy page"


@pytest.mark.parametrize("args,msg", [
    (["/nonexistent/x.log"], "/nonexistent/x.log: no such file or directory"),
    (["--format", "xml", "README.md"], "unknown format 'xml'"),
    (["--policy", "nope", "README.md"], "--policy: unknown policy 'nope'"),
    (["--backing", "3M", "README.md"], "--backing: expected 4K, 2M or 1G"),
    (["--profile", "linux-2.6", "README.md"], "--profile: unknown kernel profile"),
    ([], "give at least one LOG"),
])
def test_cli_bad_input(args: list[str], msg: str, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run(args, capsys)
    assert rc == 2 and out == ""
    assert err.startswith("memfail: error: ") and msg in err and err.count("\n") == 1


def test_cli_unreadable_database_is_bad_input(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "x.db"
    db.write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    rc, _, err = run([str(db)], capsys)
    assert rc == 2 and err.startswith(f"memfail: error: {db}: ")
    assert "error: error" not in err and f"{db}: error:" not in err and err.count("\n") == 1


# --------------------------------------------------------------------------- user reports

SRAR = HERE / "debian-6.1-srar.dmesg"


@pytest.mark.parametrize("args,msg", [
    (["--vms", "0"], "--vms: expected at least 1 VM, got 0"),
    (["--vms", "-3"], "--vms: expected at least 1 VM, got -3"),
    (["--vm-size", "1T"], "--vm-size: no VM of 1024 GiB fits in 508 GiB"),
    (["--vms", "20"], "--vms: 20 VMs of 32 GiB do not fit in 508 GiB"),
    (["--host-memory", "4G"], "--host-memory: expected more than 4 GiB"),
    (["--vm-size", "32"], "--vm-size: expected a whole number of GiB"),
    (["--host-memory", "lots"], "--host-memory: expected a size such as"),
    (["--kernel", "banana"], "--kernel: cannot read kernel version 'banana'"),
    (["--kernel", "6"], "--kernel: cannot read kernel version '6'"),
    (["--format", "bogus"], "--format: unknown format 'bogus' (choose from auto, kernel-log"),
])
def test_bad_option_values_are_exit_2_naming_the_option(
        args: list[str], msg: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    import memfail.replay.read as read_mod

    def no_reading(*a: object, **k: object) -> None:
        raise AssertionError("an input was read before the options were checked")
    monkeypatch.setattr(read_mod, "read_one", no_reading)
    rc, out, err = run([str(SRAR), *args], capsys)
    assert rc == 2 and out == ""
    assert err == f"memfail: error: {err.split('memfail: error: ', 1)[1]}"
    assert err.startswith(f"memfail: error: {msg}") and err.count("\n") == 1


def test_no_shape_without_a_vm_is_accepted() -> None:
    from memfail.replay.project import ShapeError

    for shape in (HostShape(vms=0), HostShape(vms=-3), HostShape(vm_gib=1024)):
        with pytest.raises(ShapeError):
            shape.validate()
    assert HostShape(vms=1).nvms == 1


def test_a_consumed_error_placed_in_the_free_pool_is_dissolved_not_a_panic(
        capsys: pytest.CaptureFixture[str]) -> None:
    # the SRAR of the log (a process consumed pfn 0x2b47d6, 10.8 GiB) lands after the only
    # VM (4-8 GiB): a free HugeTLB folio nobody maps, found by the scrub and dissolved (R50)
    shape = HostShape(vms=1, vm_gib=4)
    errs, _ = hardware_errors(read_inputs([str(SRAR)]))
    ((cls, _),) = classes(errs, shape)
    assert cls.memory == "hugetlb_free" and cls.first_touch == "scrub"
    rc, out, _ = run([str(SRAR), "--no-replay", "--json", "--vms", "1", "--vm-size", "4G"],
                     capsys)
    totals = json.loads(out)["projection"]["totals"]
    assert rc == 0 and len(totals) >= 8
    for pol, tot in totals.items():
        assert tot["host_panic"] == tot["vm_killed"] == tot["vm_paused"] == 0, pol
    # a fatal machine check stays an unchecked kernel read (R47)
    fatal = [replace_fatal(e) for e in errs]
    ((cls, _),) = classes(fatal, shape)
    assert cls.first_touch == "kernel_unchecked"


def replace_fatal(err: Any) -> Any:
    import dataclasses

    return dataclasses.replace(err, fatal=True)


def test_a_valid_kernel_option_is_not_followed_by_a_note_to_give_it(
        capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run([str(HERE / "ftrace.txt"), "--kernel", "6.12.9", "--no-project"], capsys)
    assert rc == 0 and "Linux 6.12.9" in out and "give --kernel" not in out
    assert "reproduces under linux-6.12" in out
    from memfail.replay.replay import pick_profile

    profile, notes, _ = pick_profile("banana")
    assert profile == "linux-6.18" and notes == [
        "kernel version 'banana' not understood: replayed under linux-6.18 (give --profile)"]


AO_SIGBUS = ("[    0.000000] Linux version 6.12.9 (builder@host) (gcc (GCC) 13.2.0, GNU ld 2.41) "
             "#1 SMP PREEMPT_DYNAMIC\n"
             "[  100.000010] Memory failure: 0x123456: Sending SIGBUS to app:1234 due to "
             "hardware memory corruption\n"
             "[  100.000020] Memory failure: 0x123456: recovery action for {type}: Recovered\n")


@pytest.mark.parametrize("page_type", ["huge page", "dirty LRU page"])
def test_ao_sigbus_sets_up_an_early_kill_owner(tmp_path: Path, page_type: str) -> None:
    log = tmp_path / "my.dmesg"
    log.write_text(AO_SIGBUS.format(type=page_type))
    (o,) = replay_all(read_inputs([str(log)]))
    assert o.verdict == "reproduces", o.reason
    assert o.missing_lines == []
    assert any("Sending SIGBUS to app:" in x for x in o.model_lines)
    assert o.scenario is not None and "early" in o.scenario and "mce_kill" in o.scenario
    assert any("early-kill" in c and "R12" in c for c in o.caveats)
    # without the SIGBUS line the process stays late-kill: no signal, no early-kill set-up
    log.write_text("".join(ln + "\n" for ln in AO_SIGBUS.format(type=page_type).splitlines()
                           if "SIGBUS" not in ln))
    (o,) = replay_all(read_inputs([str(log)]))
    assert o.verdict == "reproduces" and o.scenario is not None
    assert "mce_kill" not in o.scenario
    assert not any("Sending SIGBUS" in x for x in o.model_lines)


@pytest.mark.parametrize("page_type", ["clean LRU page", "clean swapcache page",
                                       "free huge page", "kernel slab page"])
def test_ao_sigbus_the_set_up_cannot_have_is_cannot_express(tmp_path: Path,
                                                            page_type: str) -> None:
    log = tmp_path / "my.dmesg"
    log.write_text(AO_SIGBUS.format(type=page_type))
    (o,) = replay_all(read_inputs([str(log)]))
    assert o.verdict == "cannot-express"
    assert o.reason.startswith("page owner: the log signals app:1234")


def test_ar_sigbus_needs_no_early_kill() -> None:
    (o,) = replay_all(read_inputs([str(SRAR)]))
    assert o.verdict == "reproduces" and o.scenario is not None
    assert "mce_kill" not in o.scenario


@pytest.mark.parametrize("content,warning", [
    (b"", "empty input"),
    (b"hello world\n", "no RAS record in its 1 line(s)"),
])
def test_a_log_without_ras_records_is_read_exit_0(tmp_path: Path, content: bytes,
                                                  warning: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "x.log"
    f.write_bytes(content)
    rc, out, err = run([str(f), "--json"], capsys)
    doc = json.loads(out)
    assert rc == 0 and err == ""
    assert doc["sources"][0]["events"] == 0 and doc["replay"] == []
    assert [p["reason"] for p in doc["problems"]] == [warning]
    assert doc["problems"][0]["severity"] == "warning"


def test_nothing_readable_at_all_is_exit_2_one_short_line(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    import random

    rnd = random.Random(5)
    for seed in range(20):   # random bytes, with or without a NUL among them
        rnd.seed(seed)
        b = tmp_path / "bin.log"
        b.write_bytes(bytes(rnd.randrange(256) for _ in range(300)))
        rc, out, err = run([str(b)], capsys)
        assert rc == 2 and out == ""
        assert err == (f"memfail: error: {b}: a binary file, neither text nor a rasdaemon "
                       "database\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run([str(empty)], capsys)
    assert rc == 2 and err.startswith(f"memfail: error: {empty}: no file to read")
    # one readable input among unreadable ones: the run is a result
    (tmp_path / "ok.log").write_text("hello world\n")
    rc, out, _ = run([str(b), str(tmp_path / "ok.log"), "--no-project"], capsys)
    assert rc == 0 and "a binary file" in out


def test_problem_excerpt_is_short_and_says_error_once(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    from memfail.replay.events import Problem

    p = Problem(source="f", line=1, reason="binary data (NUL bytes) in a text line",
                text="\x01\x02" * 150)
    short = p.render(severity=False, excerpt=40)
    assert short.startswith("f:1: binary data (NUL bytes) in a text line: '\\x01\\x02")
    assert short.endswith("...'") and len(short) < 100 and "error" not in short
    assert p.render().startswith("f:1: error: binary data") and len(p.render()) < 150
    log = tmp_path / "nul.log"
    log.write_bytes(b"Memory failure: 0x1\x00" + b"x" * 300 + b"\n")
    rc, out, _ = run([str(log), "--no-project"], capsys)
    line = next(ln for ln in out.splitlines() if "NUL bytes" in ln)
    excerpt = line.split(" in a text line: ", 1)[1]
    assert rc == 0 and len(excerpt) <= 80 + 5 and excerpt.endswith("...'")


def test_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run(["--help"], capsys)
    assert rc == 0 and "memfail replay dmesg.txt ras-mc_event.db --json" in out


def test_docs_commands_run(monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    import re
    import shlex

    root = HERE.parent.parent
    text = (root / "docs" / "replay.md").read_text()
    cmds = [line.split("#", 1)[0].strip() for block in re.findall(r"```sh\n(.*?)```", text,
                                                                   flags=re.S)
            for line in block.splitlines() if line.strip().startswith("memfail ")]
    assert len(cmds) >= 5
    monkeypatch.chdir(root)
    for cmd in cmds:
        assert main(shlex.split(cmd)[1:]) == 0, cmd
        out = capsys.readouterr()
        assert out.err == "" or "reading" in out.err, cmd


def test_one_call_recorded_by_two_sources_is_replayed_once() -> None:
    res = read_inputs([str(HERE / "rasdaemon-syslog.log")], kernel="6.1.0-18-amd64")
    (o,) = replay_all(res)
    assert o.verdict == "reproduces" and len(o.logged) == 1
    assert len(o.incident.events) == 3   # the machine check and both records of the call


def test_powerpc_machine_check_is_read_and_named_as_architecture() -> None:
    res = read_inputs([str(HERE / "ppc64-ue.dmesg")])
    assert res.sources[0].arch == "ppc64le"
    ue = next(e for e in res.events if e.kind == "memory_error")
    assert ue.phys_addr == 0x201A4C8B0000 and ue.pfn == 0x201A4C8B
    (o,) = replay_all(res)   # the machine check and memory_failure() share the 64 KiB pfn
    assert o.verdict == "cannot-express" and o.reason.startswith("architecture ppc64le")


def test_vm_sizes_used_in_turn() -> None:
    s = HostShape(memory_gib=4 + 8 + 32 + 8 + 10, vm_list=(8, 32))
    assert s.layout() == [(0, 8), (8, 32), (40, 8)] and s.nvms == 3
    assert s.place((4 + 9) << 30) == ("gmem_private", 1, 1 << 30)
    assert s.vm_size(1) == 32 and s.vm_size(2) == 8
    assert s.place((4 + 49) << 30)[0] == "hugetlb_free"


def test_oldest_format_is_read_and_too_old(tmp_path: Path) -> None:
    log = tmp_path / "rhel6.log"   # 2.6.32-3.x action_result(): "MCE %#lx: %s page recovery: %s"
    log.write_text("[ 1.0] MCE 0x1f2e3: dirty LRU page recovery: Recovered\n"
                   "[ 1.1] MCE 0x1f2e4: free buddy, 2nd try page recovery: Delayed\n")
    res = read_inputs([str(log)])
    assert [(e.pfn, e.page_type, e.result) for e in res.events] == [
        (0x1F2E3, "dirty LRU page", "Recovered"), (0x1F2E4, "free buddy, 2nd try page", "Delayed")]
    assert {o.verdict for o in replay_all(res)} == {"cannot-express"}


# --------------------------------------------------------------------------- machine-check panics

PANIC_LOGS = [
    ("mce-rendezvous-timeout.dmesg", "Timeout: Not all CPUs entered broadcast exception handler",
     "M3", "exposure"),
    ("mce-monarch-timeout.dmesg", "Timeout: Monarch CPU unable to finish machine check "
     "processing", "M3", "exposure"),
    ("mce-unknown-source.dmesg", "Fatal machine check from unknown source", "M3 (mce_reign)",
     "none"),
    ("mce-old-unknown-source.dmesg", "Machine check from unknown source", "M3 (mce_reign)",
     "none"),
    ("mce-pcc-fatal.dmesg", "Processor context corrupt", "M5", "none"),
    ("mce-pcc-fatal.dmesg", "Fatal machine check", "M1", "none"),
    ("mce-kernel-no-fixup.dmesg", "Data load in unrecoverable area of kernel", "M5, R47", "yes"),
    ("mce-consecutive.dmesg", "Consecutive machine checks to different user pages", "M7 (R44)",
     "none"),
    ("mce-killing-fault.dmesg", "due to hardware memory corruption fault at", "R40", "yes"),
]


@pytest.mark.parametrize(("log", "message", "rule", "policy"), PANIC_LOGS)
def test_machine_check_panics_map_to_the_model_rule(log: str, message: str, rule: str,
                                                    policy: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run([str(HERE / log), "--json", "--no-replay", "--no-project", "--policy",
                      "minimum", "--policy", "unmap"], capsys)
    assert rc == 0
    found = {p["message"]: p for p in json.loads(out)["panics"]}
    hit = next(p for m, p in found.items() if message in m)
    assert hit["rule"]["rule"] == rule and hit["rule"]["policy"] == policy
    assert set(hit["per_policy"]) == {"minimum", "unmap"}
    if policy == "none":
        assert set(hit["per_policy"].values()) == {"the same"}


def test_rendezvous_timeout_is_the_same_panic_but_its_exposure_differs(
        capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run([str(HERE / "mce-rendezvous-timeout.dmesg"), "--no-project", "--policy",
                      "minimum", "--policy", "unmap"], capsys)
    assert rc == 0
    assert "machine-check panics" in out
    assert "M3: mce_start -> mce_timed_out (arch/x86/kernel/cpu/mce/core.c)" in out
    assert "does not depend on the guest_memfd policy" in out
    minimum = next(ln for ln in out.splitlines() if ln.strip().startswith("minimum:"))
    unmap = next(ln for ln in out.splitlines() if ln.strip().startswith("unmap:"))
    assert "the same panic" in minimum and "the same panic" in unmap
    assert minimum.split("causes ")[1] != unmap.split("causes ")[1]  # more broadcasts


def test_a_log_without_panics_has_no_panic_section(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run([str(HERE / "debian-6.1-srar.dmesg"), "--no-project"], capsys)
    assert rc == 0 and "machine-check panics" not in out


# --------------------------------------------------------------------------- projection: the log's own ends

POLS = ["mainline", "minimum", "kill-vm"]


def test_a_logged_fatal_machine_check_is_a_host_panic_under_every_policy() -> None:
    # PCC on a memory address: graded PANIC in #MC context (M5, R47), before any policy code
    res = read_inputs([str(HERE / "mce-pcc-memory.dmesg")])
    proj = project(res, HostShape(), POLS)
    (row,) = proj["classes"]
    assert row["host_panic"].startswith("M5: Processor context corrupt")
    for pol in POLS:
        assert row["outcomes"][pol] == {"host_panic": 1.0}, pol
        tot = proj["totals"][pol]
        assert tot["host_panic"] == 1 and tot["vm_killed"] == tot["guest_gib_lost"] == 0, pol


def test_a_logged_rendezvous_or_task_work_panic_is_a_host_panic_under_every_policy() -> None:
    # the panics section says "the same panic" under every policy (M3 exposure, M7 none)
    for name in ("mce-rendezvous-timeout.dmesg", "mce-consecutive.dmesg"):
        proj = project(read_inputs([str(HERE / name)]), HostShape(), ["mainline", "minimum"])
        assert {p: t["host_panic"] for p, t in proj["totals"].items()} == \
            {"mainline": 1, "minimum": 1}, name
    # a kernel load without fixup (R47) of a latent error: the load is its first report, no
    # memory_failure() and no policy code ran before it: a panic under every policy
    res = read_inputs([str(HERE / "mce-kernel-no-fixup.dmesg")])
    errs, _ = hardware_errors(res)
    assert errs[0].panic is not None and "latent" in errs[0].panic
    proj = project(res, HostShape(), ["mainline", "minimum", "future"])
    assert {p: t["host_panic"] for p, t in proj["totals"].items()} == \
        {"mainline": 1, "minimum": 1, "future": 1}


def test_a_kernel_load_of_a_page_reported_before_is_the_policys_to_decide(
        tmp_path: Path) -> None:
    """The same load after memory_failure() ran for the page: whether a kernel user skips
    it depends on the flag the policy left (kcore checks PG_hwpoison, without a fixup)."""
    log = tmp_path / "later-load.dmesg"
    text = (HERE / "mce-kernel-no-fixup.dmesg").read_text().splitlines()
    head = [x for x in text if not x.startswith("#")]
    log.write_text("\n".join([head[0], "[ 4000.000000] Memory failure: 0x24a9f3: recovery "
                               "action for huge page: Recovered", *head[1:]]) + "\n")
    errs, _ = hardware_errors(read_inputs([str(log)]))
    ((cls, _),) = classes(errs, HostShape())
    assert cls.first_touch == "kernel_checked" and errs[0].panic is None


def test_a_panic_long_after_an_error_or_from_an_unknown_source_is_not_that_errors(
        tmp_path: Path) -> None:
    log = tmp_path / "later.dmesg"
    log.write_text(
        "[ 10.0] Memory failure: 0x2b47d6: recovery action for dirty LRU page: Recovered\n"
        "[ 9000.0] Kernel panic - not syncing: Timeout: Not all CPUs entered broadcast "
        "exception handler\n"
        "[ 9001.0] Kernel panic - not syncing: Fatal machine check from unknown source\n")
    errs, _ = hardware_errors(read_inputs([str(log)]))
    assert [e.panic for e in errs] == [None]


def test_confidential_guest_costs_what_the_fleet_costs_it() -> None:
    from memfail.fleet import FailureClass, load_fleet

    res = read_inputs([str(SRAR)])
    shape = HostShape(guest="confidential")
    errs, _ = hardware_errors(res)
    ((cls, _),) = classes(errs, shape)
    effort = load_fleet().params.vms.guest_effort.confidential
    # the fleet's sampler: a confidential VM's guest_memfd cells behave `confidential`
    assert (cls.behaviour, cls.effort) == ("confidential", effort)
    fleet = FailureClass("gmem_private", "confidential", 32, "2M", 1, False, False,
                         "guest_read", True, "confidential", effort)
    want = ModelOracle("linux-6.18").outcome("minimum", fleet)
    got = project(res, shape, ["minimum"])["totals"]["minimum"]
    assert got == pytest.approx(dict(zip(Outcome.names(), want.as_tuple(), strict=True)))
    assert got["host_stalled"] == 1 and got["host_stall_seconds"] > 1.0


def test_text_table_has_every_json_outcome_with_the_same_figures(
        capsys: pytest.CaptureFixture[str]) -> None:
    from memfail.replay.cli import COLUMNS, _num

    args = [str(HERE / "two-errors-one-vm.dmesg"), "--no-replay", "--guest", "confidential",
            "--policy", "mainline", "--policy", "minimum"]
    rc, out, _ = run(args, capsys)
    rc2, js, _ = run([*args, "--json"], capsys)
    totals = json.loads(js)["projection"]["totals"]
    assert rc == rc2 == 0 and sorted(k for k, _ in COLUMNS) == sorted(Outcome.names())
    head = next(x for x in out.splitlines() if x.strip().startswith("policy"))
    assert "stalled" in head and "stall s" in head
    for pol, tot in totals.items():
        line = next(x for x in out.splitlines() if x.startswith(f"  {pol} "))
        assert line.split()[1:] == [_num(tot[k]) for k, _ in COLUMNS], pol


def test_yearless_syslog_times_keep_errors_minutes_apart_as_second_faults() -> None:
    errs, _ = hardware_errors(read_inputs([str(HERE / "syslog-yearless.log")]))
    assert {e.clock for e in errs} == {"syslog"}
    got = {tuple(g.pfn for g in group): cls
           for cls, group in classes(errs, HostShape(backing="2M"))}
    # 09:36:22, 09:40:00, 09:41:00 in one folio: one page, then second faults
    first = got[(0x5A0001, 0x5A0002, 0x5A0003)]
    assert first.pages_hit == 1 and first.second_fault
    # Dec 31 23:59:59 and Jan 1 00:00:00 are one second apart: one fault of two pages
    ny = got[(0x7A0001, 0x7A0002)]
    assert ny.pages_hit == 2 and ny.same_folio and not ny.second_fault


def test_errors_in_a_vm_already_gone_cost_it_nothing_more() -> None:
    res = read_inputs([str(HERE / "two-errors-one-vm.dmesg")])
    shape = HostShape()
    assert {shape.place(e.pfn << 12)[:2] for e in hardware_errors(res)[0]} == \
        {("gmem_private", 0)}
    proj = project(res, shape, ["mainline", "unusable", "minimum"])
    first, second = proj["classes"]
    assert first["outcomes"]["mainline"]["vm_killed"] == 1
    # mainline killed VM 0, unusable lost all of it: the later error is free-pool memory
    assert set(second["vm_gone"]) == {"mainline", "unusable"}
    assert second["vm_gone"]["mainline"]["class"].startswith("hugetlb_free/")
    for pol in ("mainline", "unusable"):
        tot = proj["totals"][pol]
        assert tot["guest_gib_lost"] == 32 and tot["repeated_consumption"] == 0, pol
        assert tot["vm_killed"] + tot["vm_paused"] == 1, pol
    # minimum keeps the VM: the later error costs it as before
    assert "minimum" in second["outcomes"] and proj["totals"]["minimum"]["guest_gib_lost"] > \
        first["outcomes"]["minimum"]["guest_gib_lost"]
