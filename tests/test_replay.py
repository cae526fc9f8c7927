"""memfail replay's readers: every format into one event format, problems with their line,
robustness (truncation, encodings, interleaving, duplicates, old/locked/corrupt databases)."""

from __future__ import annotations

import hashlib
import sqlite3
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memfail.replay import read_inputs, replay_all
from memfail.replay.events import ReadResult
from memfail.replay.mce import decode_status, severity
from memfail.replay.pagetypes import redecode
from memfail.replay.project import HostShape, project

HERE = Path(__file__).parent / "replay"
sys.path.insert(0, str(HERE))
import rasdaemon_db  # noqa: E402

FIXTURES = sorted(p for p in HERE.iterdir() if p.suffix in (".dmesg", ".log", ".txt"))


def kinds(res: ReadResult) -> list[str]:
    return [e.kind for e in res.events]


def errors(res: ReadResult) -> list[str]:
    return [p.render() for p in res.problems if p.severity == "error"]


# --------------------------------------------------------------------------- MCA decoding

@pytest.mark.parametrize("status,sev,flags", [
    (0xBD80000000100134, "SRAR", {"val", "uc", "en", "miscv", "addrv", "s", "ar"}),
    (0xBD000000004000C0, "SRAO", {"val", "uc", "en", "miscv", "addrv", "s"}),
    (0x8C00004000010090, "corrected", {"val", "miscv", "addrv"}),
    (0xB200000000070F0F, "panic", {"val", "uc", "en", "pcc"}),
    (0xA000000000000000, "UCNA", {"val", "uc"}),
])
def test_status_bits_and_severity(status: int, sev: str, flags: set[str]) -> None:
    bits = decode_status(status, 0)
    names = {"val", "over", "uc", "en", "miscv", "addrv", "pcc", "s", "ar"}
    assert {n for n in names if getattr(bits, n)} == flags
    assert severity(bits, 5) == sev
    assert bits.mcacod == status & 0xFFFF


def test_amd_uncorrected_raised_as_mc_is_consumed() -> None:
    bits = decode_status(0xBC00000001010135, 2)   # AMD: no S/AR bits
    assert not bits.s and not bits.ar
    assert severity(bits, 0x5) == "SRAR"          # MCG_STATUS.MCIP set: #MC on consumption
    assert severity(bits, 0x0) == "UCNA"          # polled


# --------------------------------------------------------------------------- fixtures

@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.name)
def test_fixture_reads_without_errors(path: Path) -> None:
    res = read_inputs([str(path)])
    assert res.events, "every fixture holds RAS records"
    assert errors(res) == []
    src = res.sources[0]
    assert src.events == len(res.events)
    assert src.ignored >= 1   # header comments are not RAS records, and are counted


def test_kernel_log_srar() -> None:
    res = read_inputs([str(HERE / "debian-6.1-srar.dmesg")])
    assert res.sources[0].kernel_version == "6.1.0-18-amd64"
    assert res.sources[0].arch == "x86_64"
    mce = next(e for e in res.events if e.kind == "machine_check")
    assert mce.mce is not None and mce.mce.cpu == 11 and mce.mce.bank == 1
    assert mce.mce.addr == 0x2B47D6A80 and mce.mce.severity == "SRAR" and mce.mce.memory
    assert mce.line == 10 and mce.uptime == pytest.approx(8841.117203)
    mf = next(e for e in res.events if e.kind == "memory_failure")
    assert (mf.pfn, mf.page_type, mf.result) == (0x2B47D6, "dirty LRU page", "Recovered")
    sig = next(e for e in res.events if e.kind == "mf_message")
    assert sig.detail == {"comm": "postgres", "pid": 23117, "action": "sigbus"}
    assert any(e.kind == "consumed" and e.phys_addr == 0x2B47D6A80 for e in res.events)


def test_ghes_blocks_and_edac() -> None:
    res = read_inputs([str(HERE / "journal-ghes.log")])
    mem = [e for e in res.events if e.kind == "memory_error"]
    ghes = [e for e in mem if e.detail.get("via") == "ghes"]
    assert [(e.phys_addr, e.error_class) for e in ghes] == [
        (0x183C5E1180, "uncorrected-ao"), (0xA01234040, "corrected")]
    assert ghes[0].host == "db-07" and ghes[0].detail["row"] == 24237
    edac = next(e for e in mem if e.detail.get("via") == "edac")
    assert edac.phys_addr == 0xA01234040 and edac.error_class == "corrected"


def test_tracepoints_new_and_old_mce_record() -> None:
    res = read_inputs([str(HERE / "ftrace.txt")])
    mces = [e.mce for e in res.events if e.kind == "machine_check"]
    assert [(m.cpu, m.bank, m.addr, m.severity) for m in mces if m] == [
        (3, 1, 0x4A1F2C040, "SRAR"), (0, 8, 0x35A1C0000, "corrected")]
    mf = [(e.pfn, e.page_type, e.cpu) for e in res.events if e.kind == "memory_failure"]
    assert mf == [(0x4A1F2C, "huge page", 3), (0x7F0001, "free huge page", 5)]
    mc = next(e for e in res.events if e.kind == "memory_error")
    assert mc.phys_addr == 0x35A1C0000 and mc.error_class == "corrected"


def test_mce_record_in_the_format_with_ppin_and_microcode(tmp_path: Path) -> None:
    """include/trace/events/mce.h since PPIN and microcode joined struct mce: ADDR, MISC and
    SYND apart, "vendor: %u, CPUID: %x", lower-case time and socket, and (later) vendor
    data. Its address was dropped without a word."""
    log = tmp_path / "trace.txt"
    log.write_text(
        "     kworker/3:1-123     [003] d..1.  1235.567890: mce_record: CPU: 3, MCGc/s: "
        "1000c16/5, MC7: bd000000000000c0, IPID: 0000000000000000, ADDR: 00000006a1b3c000, "
        "MISC: 0200001c0140b086, SYND: 0000000000000000, RIP: 00:<0000000000000000>, TSC: 0, "
        "PPIN: 0, vendor: 0, CPUID: 50657, time: 1732613783, socket: 0, APIC: 6, "
        "microcode: 5003604, vendor data: {0x0,0x0}\n")
    res = read_inputs([str(log)])
    [e] = [e for e in res.events if e.kind == "machine_check"]
    assert e.mce is not None
    m = e.mce
    assert (m.cpu, m.bank, m.addr, m.misc, m.cpuid, m.walltime) == \
        (3, 7, 0x6A1B3C000, 0x200001C0140B086, 0x50657, 1732613783)
    assert e.pfn == 0x6A1B3C and errors(res) == []


def test_tracepoint_group_names_and_perf_script(tmp_path: Path) -> None:
    log = tmp_path / "perf.txt"   # perf script; ras: before 6.18, memory_failure: after
    log.write_text(
        "  kworker/3:1   210 [003]  4210.118901: ras:memory_failure_event: pfn 0x4a1f2c: "
        "recovery action for dirty LRU page: Recovered\n"
        "  kworker/4:0   211 [004]  4211.000000: memory_failure:memory_failure_event: pfn "
        "0x4a1f2d: recovery action for clean LRU page: Delayed\n"
        "  kworker/4:0   211 [004]  4212.000000: ras:aer_event: 0000:00:1c.0 PCIe Bus Error: "
        "severity=Corrected, Receiver Error\n")
    res = read_inputs([str(log)])
    mf = [e for e in res.events if e.kind == "memory_failure"]
    assert [(e.pfn, e.result, e.detail["group"], e.cpu) for e in mf] == [
        (0x4A1F2C, "Recovered", "ras", 3), (0x4A1F2D, "Delayed", "memory_failure", 4)]
    assert res.sources[0].ignored == 1 and errors(res) == []


def test_mcelog_records() -> None:
    res = read_inputs([str(HERE / "mcelog.txt")])
    mces = [e for e in res.events if e.kind == "machine_check"]
    assert [(e.mce.cpu, e.mce.bank, e.mce.addr, e.mce.severity, e.line) for e in mces
            if e.mce] == [(0, 2, 0x1E9F000, "corrected", 6), (4, 7, 0x3F27B1000, "SRAO", 22)]
    assert mces[1].epoch == 946952000 and res.sources[0].formats == ["mcelog"]


def test_ras_mc_ctl_page_types_are_redecoded_with_the_kernel_enum() -> None:
    res = read_inputs([str(HERE / "ras-mc-ctl-errors.txt")], kernel="6.1.0-18-amd64")
    mf = [e for e in res.events if e.kind == "memory_failure"]
    assert [(e.pfn, e.page_type) for e in mf] == [(0x6D9222, "dirty LRU page"),
                                                   (0x6D93FF, "free buddy page")]
    assert mf[0].detail["stored_page_type"] == "dirty unevictable LRU page"
    mce = next(e for e in res.events if e.kind == "machine_check")
    assert mce.mce and mce.mce.status == 0xBD000000004000C2 and mce.mce.severity == "SRAO"
    assert mce.mce.cpu == 4 and mce.mce.bank == 7


def test_redecode_without_version_keeps_and_says_so() -> None:
    kept, note = redecode("dirty unevictable LRU page", None)
    assert kept == "dirty unevictable LRU page" and "unknown" in note
    assert redecode("dirty unevictable LRU page", "4.19.0")[0] == "dirty unevictable LRU page"
    assert redecode("dirty unevictable LRU page", "6.12.0")[0] == "dirty LRU page"
    assert redecode("clean LRU page", "6.12.0")[0] == "free buddy page"


def test_qemu_messages() -> None:
    res = read_inputs([str(HERE / "qemu-amd-guest.log")])
    q = [e for e in res.events if e.kind == "qemu"]
    assert q[0].detail["gpa"] == 0x10E7D6000 and q[0].detail["code"] == "BUS_MCEERR_AR"
    assert q[0].error_class == "uncorrected-ar"
    assert q[1].detail == {"vmm_memory": True}
    assert any(e.kind == "panic" and "Fatal local machine check" in (e.message or "")
               for e in res.events)


# --------------------------------------------------------------------------- problems

def test_unreadable_ras_lines_are_reported_with_their_line(tmp_path: Path) -> None:
    log = tmp_path / "bad.log"
    log.write_text("[    1.0] usb 1-1: new high-speed USB device\n"
                   "[    2.0] Memory failure: 0xzz: recovery action for garbage\n"
                   "[    3.0] Memory failure: 0x1234: recovery action for dirty LRU page: Maybe\n"
                   "[    4.0] mce: [Hardware Error]: TSC 0 ADDR 1000\n"
                   "[    5.0] EDAC MC0: 1 UE something error on DIMM_A1 page:zz\n")
    res = read_inputs([str(log)])
    assert [(p.line, p.severity) for p in res.problems] == [
        (2, "error"), (3, "error"), (4, "error"), (5, "error")]
    assert "Ignored|Failed|Delayed|Recovered" in res.problems[0].reason
    assert "Maybe" in res.problems[1].reason
    assert "without its 'CPU N: Machine Check' line" in res.problems[2].reason
    assert res.sources[0].ignored == 1 and res.events == []


def test_truncated_file_gives_partial_record_and_warning(tmp_path: Path) -> None:
    text = (HERE / "debian-6.1-srar.dmesg").read_text().splitlines()
    cut = [x for x in text if "TSC 1c2f" in x]
    head = text[: text.index(cut[0]) + 1]
    log = tmp_path / "cut.log"
    log.write_text("\n".join(head)[:-7])   # ends mid-line, inside the machine check
    res = read_inputs([str(log)])
    warn = [p.reason for p in res.problems if p.severity == "warning"]
    assert any("cut short" in w for w in warn)
    assert any("middle of a line" in w for w in warn)
    mce = next(e for e in res.events if e.kind == "machine_check")
    assert mce.mce and mce.mce.status == 0xBD80000000100134


def test_mixed_encodings(tmp_path: Path) -> None:
    data = (b"[    1.0] Linux version 6.12.9 (gcc) #1 SMP\n"
            b"[    2.0] caf\xe9 driver loaded\n"
            b"[    3.0] Memory failure: 0x1234: recovery action for free buddy page: "
            b"Recovered\n")
    log = tmp_path / "mixed.log"
    log.write_bytes(data)
    res = read_inputs([str(log)])
    assert [e.pfn for e in res.events] == [0x1234]
    assert [p.reason for p in res.problems] == ["1 line(s) are not UTF-8; read as Latin-1"]


def test_interleaved_cpus(tmp_path: Path) -> None:
    log = tmp_path / "cpus.log"
    log.write_text(
        "[ 10.1] mce: [Hardware Error]: CPU 3: Machine Check Exception: 5 Bank 1: "
        "bd80000000100134\n"
        "[ 10.1] Memory failure: 0x500: recovery action for free buddy page: Recovered\n"
        "[ 10.1] mce: [Hardware Error]: TSC 10 ADDR 7000 MISC 86\n"
        "[ 10.1] mce: [Hardware Error]: PROCESSOR 0:50657 TIME 1 SOCKET 0 APIC 6 "
        "microcode 1\n"
        "[ 10.1] mce: [Hardware Error]: CPU 5: Machine Check Exception: 5 Bank 1: "
        "bd80000000100134\n"
        "[ 10.2] mce: [Hardware Error]: CPU 6: Machine Check Exception: 5 Bank 1: "
        "bd80000000100134\n"
        "[ 10.2] mce: [Hardware Error]: TSC 11 ADDR 9000 MISC 86\n"
        "[ 10.2] mce: [Hardware Error]: PROCESSOR 0:50657 TIME 2 SOCKET 0 APIC 8 "
        "microcode 1\n"
        "[ 10.3] Memory failure: 0x7: recovery action for dirty LRU page: Recovered\n"
        "[ 10.3] Memory failure: 0x9: recovery action for dirty LRU page: Recovered\n")
    res = read_inputs([str(log)])
    mces = [e.mce for e in res.events if e.kind == "machine_check" and e.mce]
    assert [(m.cpu, m.addr) for m in mces] == [(3, 0x7000), (5, None), (6, 0x9000)]
    assert [p.line for p in res.problems if "cut short" in p.reason] == [5]
    assert [e.pfn for e in res.events if e.kind == "memory_failure"] == [0x500, 0x7, 0x9]


def test_duplicates_across_copies_are_dropped(tmp_path: Path) -> None:
    src = (HERE / "debian-6.1-srar.dmesg").read_text()
    a = tmp_path / "a.log"
    a.write_text(src + src.splitlines()[-2] + "\n")   # one line doubled
    res = read_inputs([str(a)])
    assert res.sources[0].duplicates == 1
    assert sum(1 for e in res.events if e.kind == "memory_failure") == 1


def test_timeless_repeats_are_kept(tmp_path: Path) -> None:
    a = tmp_path / "a.log"
    line = "Memory failure: 0x42: recovery action for dirty LRU page: Recovered\n"
    a.write_text(line * 2)
    res = read_inputs([str(a)])
    assert [e.pfn for e in res.events] == [0x42, 0x42]


# --------------------------------------------------------------------------- rasdaemon

def make_db(path: Path, memory_failure: bool = True) -> str:
    who = rasdaemon_db.create(path, memory_failure=memory_failure)
    rasdaemon_db.insert(path, "mce_record", timestamp="2024-03-01 10:15:02 +0000",
                        mcgcap=0x7000C16, mcgstatus=5, status=0xBD80000000100134,
                        addr=0x2B47D6A80, misc=0x86, walltime=1709287302, cpu=11, bank=1,
                        cpuvendor=0, error_msg="Data CACHE Level-0 Read Error",
                        mcistatus_msg="Uncorrected_error Error_enabled SRAR")
    rasdaemon_db.insert(path, "mc_event", timestamp="2024-03-01 10:14:00 +0000", err_count=1,
                        err_type="Corrected", err_msg="memory read error",
                        label="CPU_SrcID#0_MC#0_Chan#2_DIMM#0", mc=0, top_layer=2,
                        middle_layer=0, lower_layer=-1, address=0x2B47D6A40, grain=32,
                        syndrome=0, driver_detail="")
    if memory_failure:
        rasdaemon_db.insert(path, "memory_failure_event", timestamp="2024-03-01 10:15:02 +0000",
                            pfn=0x2B47D6, page_type="dirty unevictable LRU page",
                            action_result="Recovered")
    return who


def test_rasdaemon_database(tmp_path: Path) -> None:
    db = tmp_path / "ras-mc_event.db"
    make_db(db)
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    res = read_inputs([str(db)], kernel="6.1.0-18-amd64")
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    by = {e.table: e for e in res.events}
    mce = by["mce_record"].mce
    assert mce and mce.status == 0xBD80000000100134 and mce.severity == "SRAR"  # stored < 0
    assert by["mce_record"].where().endswith("table mce_record row 1")
    assert by["memory_failure_event"].page_type == "dirty LRU page"
    assert by["memory_failure_event"].pfn == 0x2B47D6
    assert by["mc_event"].error_class == "corrected"
    assert errors(res) == []


def test_schema_written_by_rasdaemon_itself(tmp_path: Path) -> None:
    if not rasdaemon_db.rasdaemon_can_run():
        pytest.skip("rasdaemon (Debian package) not installed, or not root")
    db = tmp_path / "r.db"
    if rasdaemon_db.create(db, memory_failure=False) != "rasdaemon":
        pytest.skip("rasdaemon could not run here (no debugfs in a private namespace)")
    tables = {r[0] for r in sqlite3.connect(db).execute("SELECT name FROM sqlite_master")}
    assert {"mc_event", "mce_record"} <= tables
    res = read_inputs([str(db)])
    # Debian's build has no memory_failure_event table: said, not silently skipped
    assert any("no table memory_failure_event" in p.reason for p in res.problems)


def test_older_rasdaemon_missing_columns(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE mce_record (id INTEGER PRIMARY KEY, timestamp TEXT, mcgcap "
                "INTEGER, mcgstatus INTEGER, status INTEGER, addr INTEGER, misc INTEGER, ip "
                "INTEGER, tsc INTEGER, walltime INTEGER, cpu INTEGER, cpuid INTEGER, apicid "
                "INTEGER, socketid INTEGER, cs INTEGER, bank INTEGER, cpuvendor INTEGER, "
                "bank_name TEXT, error_msg TEXT, mcgstatus_msg TEXT, mcistatus_msg TEXT, "
                "user_action TEXT, mc_location TEXT)")
    con.execute("CREATE TABLE memory_failure_event (id INTEGER PRIMARY KEY, timestamp TEXT, "
                "pfn TEXT, page_type TEXT)")
    con.execute("INSERT INTO mce_record (id, timestamp, status, addr, cpu, bank) VALUES "
                "(NULL, '2020-01-01 00:00:00 +0000', ?, 4096, 1, 2)",
                (0xBD000000004000C0 - (1 << 64),))
    con.commit()
    con.close()
    res = read_inputs([str(db)])
    reasons = [p.reason for p in res.problems]
    assert any("mcastatus_msg" in r and "older rasdaemon" in r for r in reasons)
    assert any("action_result" in r and "not read" in r for r in reasons)
    assert [e.mce.severity for e in res.events if e.mce] == ["SRAO"]


def test_locked_database_is_read_with_a_warning(tmp_path: Path) -> None:
    db = tmp_path / "locked.db"
    make_db(db)
    writer = sqlite3.connect(db, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        res = read_inputs([str(db)])
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert any("locked" in p.reason and p.severity == "warning" for p in res.problems)
    assert {e.table for e in res.events} == {"mce_record", "mc_event", "memory_failure_event"}


def test_corrupt_database(tmp_path: Path) -> None:
    db = tmp_path / "corrupt.db"
    db.write_bytes(b"SQLite format 3\x00" + b"\xff" * 2000)
    res = read_inputs([str(db)])
    assert res.events == []
    assert res.problems and res.problems[0].severity == "error"
    assert "database" in res.problems[0].reason


def test_truncated_database(tmp_path: Path) -> None:
    db = tmp_path / "full.db"
    make_db(db)
    data = db.read_bytes()
    cut = tmp_path / "cut.db"
    cut.write_bytes(data[: len(data) // 2])
    res = read_inputs([str(cut)])   # whatever survives, and a message, never a traceback
    assert res.problems or res.events


# --------------------------------------------------------------------------- any input

FRAGMENTS = [
    "[ 12.5] ", "Nov 26 09:36:22 h kernel: ", "{3}[Hardware Error]: ", "mce: [Hardware Error]: ",
    "Memory failure: 0x1f: ", "recovery action for ", "dirty LRU page", ": Recovered", "MCE 0x",
    "CPU 2: Machine Check Exception: 5 Bank 1: bd80000000100134", "TSC 0 ADDR 1f000 ",
    "PROCESSOR 0:50657 TIME 1 SOCKET 0 APIC 0", "physical_address: 0x1f000",
    "event severity: fatal", " Error 0, type: recoverable", "section_type: memory error",
    "EDAC MC0: 1 UE x on y (page:0x1f offset:0x0 grain:1)", "Hardware event. This is not",
    "MCE 0", "STATUS bd80000000100134 MCGSTATUS 5", "CPU 1 BANK 2", "CPUID Vendor Intel",
    "Memory failure events:", "1 2024-01-01 00:00:00 +0000 error: pfn=0x1f, page_type=x, ",
    "MCE events:", "status=0xbd80", "kworker-1 [000] .... 1.0: mce_record: CPU: 1, ",
    "memory_failure_event: pfn 0x1f: ", "Guest MCE Memory Error at QEMU addr 0x1 and GUEST ",
    "WARNING: CPU: 1 PID: 1 at mm/memory-failure.c:1 x", " memory_failure+0x1/0x2", "\t", "é",
    "0xzz", "Linux version 6.9.1 ", "Kernel panic - not syncing: ", "\x00", "",
]


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.sampled_from(FRAGMENTS), max_size=5).map("".join), max_size=30))
def test_any_text_reads_without_a_traceback(tmp_path: Path, lines: list[str]) -> None:
    log = tmp_path / "fuzz.log"
    log.write_text("\n".join(lines), encoding="utf-8", errors="replace")
    before = log.read_bytes()
    res = read_inputs([str(log)])
    src = res.sources[0]
    assert src.ignored <= src.lines
    assert log.read_bytes() == before
    for p in res.problems:
        assert p.source == str(log) and p.reason
    for o in replay_all(res):   # every incident gets a verdict, never an exception
        assert o.verdict in ("reproduces", "differs", "cannot-express")
        assert o.verdict == "reproduces" or o.reason
    project(res, HostShape(memory_gib=16, vm_gib=4), ["mainline"])


def test_kernel_enum_eras() -> None:
    from memfail.replay.pagetypes import kernel_enum

    e61, e612, e618 = kernel_enum("6.1.0"), kernel_enum("6.12.3"), kernel_enum("6.18.1")
    assert e61 and e612 and e618
    assert "SLAB" in e61 and "SLAB" not in e612 and "ALREADY_POISONED" in e612
    assert "PFN_MAP" in e618 and "PFN_MAP" not in e612
    assert kernel_enum("4.19.0") == kernel_enum("5.4.0") and "BUDDY_2ND" in (kernel_enum("5.4")
                                                                           or [])


def test_amd_decoded_record_is_one_machine_check_with_its_address() -> None:
    res = read_inputs([str(HERE / "amd-ubuntu-6.8.dmesg")])
    mces = [e for e in res.events if e.kind == "machine_check"]
    assert len(mces) == 1 and mces[0].mce is not None
    m = mces[0].mce
    assert (m.cpu, m.bank, m.addr, m.cpuvendor) == (0, 17, 0xA12345670, 2)
    assert m.severity == "corrected" and m.bits.miscv and m.bits.addrv
    cper = [e for e in res.events if e.kind == "memory_error" and e.detail.get("via") == "ghes"]
    assert [(e.phys_addr, e.error_class) for e in cper] == [(0xB00001000, "corrected")]


def test_rasdaemon_event_text_in_syslog() -> None:
    res = read_inputs([str(HERE / "rasdaemon-syslog.log")], kernel="6.1.0-18-amd64")
    by = {(e.kind, e.format): e for e in res.events}
    mce = by[("machine_check", "tracepoint")]
    assert mce.mce and mce.mce.status == 0xBD000000004000C2 and mce.mce.addr == 0x6D9222000
    assert mce.mce.cpu == 4 and mce.host == "node-12" and mce.time == "2024-03-01 10:15:02 +0000"
    tp = by[("memory_failure", "tracepoint")]
    assert tp.page_type == "dirty LRU page"
    assert tp.detail["stored_page_type"] == "dirty unevictable LRU page"
    assert by[("memory_error", "tracepoint")].phys_addr == 0x6D9221000


def test_gzipped_and_binary_files(tmp_path: Path) -> None:
    import gzip

    gz = tmp_path / "kern.log.2.gz"
    gz.write_bytes(gzip.compress((HERE / "debian-6.1-srar.dmesg").read_bytes()))
    res = read_inputs([str(gz)])
    assert [e.pfn for e in res.events if e.kind == "memory_failure"] == [0x2B47D6]
    binary = tmp_path / "core"
    binary.write_bytes(bytes(range(256)) * 64)
    res = read_inputs([str(binary)])
    assert [p.reason for p in res.problems] == [
        "a binary file, neither text nor a rasdaemon database"]


def test_journal_json_and_precise_syslog(tmp_path: Path) -> None:
    import json

    log = tmp_path / "journal.json"
    rec = {"__REALTIME_TIMESTAMP": "1709287302123456", "__MONOTONIC_TIMESTAMP": "8841117398",
           "_HOSTNAME": "db-07", "SYSLOG_IDENTIFIER": "kernel",
           "MESSAGE": "Memory failure: 0x2b47d6: recovery action for dirty LRU page: Recovered"}
    log.write_text(json.dumps(rec) + "\n" + json.dumps({**rec, "MESSAGE": "eth0 up"}) + "\n"
                   + "Nov 26 09:36:22.123456 db-08 kernel: Memory failure: 0x7: recovery "
                     "action for free buddy page: Recovered\n")
    res = read_inputs([str(log)])
    a, b = res.events
    assert (a.pfn, a.host, a.uptime) == (0x2B47D6, "db-07", pytest.approx(8841.117398))
    assert a.epoch == pytest.approx(1709287302.123456)
    assert (b.pfn, b.host, b.time) == (0x7, "db-08", "Nov 26 09:36:22.123456")
    assert res.sources[0].ignored == 1


def test_a_journal_record_is_compared_by_its_message(tmp_path: Path) -> None:
    """journalctl -o json and the same messages as plain lines replay alike: the lines
    compared with the model's are the MESSAGEs, not the JSON objects."""
    import json

    msgs = ["Linux version 6.1.0-18-amd64 (debian-kernel@lists.debian.org) (gcc-12) #1 SMP "
            "PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)",
            "mce: Uncorrected hardware memory error in user-access at 2b47d6a80",
            "Memory failure: 0x2b47d6: Sending SIGBUS to postgres:23117 due to hardware memory "
            "corruption",
            "Memory failure: 0x2b47d6: recovery action for dirty LRU page: Recovered"]
    js, plain = tmp_path / "j.json", tmp_path / "p.log"
    js.write_text("".join(json.dumps({"__MONOTONIC_TIMESTAMP": str(100000000 + i),
                                      "_HOSTNAME": "hostC", "MESSAGE": m}) + "\n"
                          for i, m in enumerate(msgs)))
    plain.write_text("".join(f"[ {100 + i}.000000] {m}\n" for i, m in enumerate(msgs)))
    got = {}
    for f in (js, plain):
        (out,) = replay_all(read_inputs([str(f)]))
        got[f.name] = (out.verdict, out.missing_lines)
    assert got["j.json"] == got["p.log"] == ("reproduces", [])


@pytest.mark.parametrize("pack", ["xz", "bz2"])
def test_compressed_logs(tmp_path: Path, pack: str) -> None:
    import bz2
    import lzma

    fn = lzma.compress if pack == "xz" else bz2.compress
    f = tmp_path / f"kern.log.{pack}"
    data = fn((HERE / "mcelog.txt").read_bytes())
    f.write_bytes(data)
    assert len(read_inputs([str(f)]).events) == 2
    f.write_bytes(data[: len(data) // 2])
    res = read_inputs([str(f)])
    assert res.events == [] and "cannot be read" in res.problems[0].reason


def test_old_mcelog_banner(tmp_path: Path) -> None:
    log = tmp_path / "mcelog.old"   # mcelog 0.x: "MCE 0" then the banner, TSC on the CPU line
    log.write_text("MCE 0\nHARDWARE ERROR. This is *NOT* a software problem!\n"
                   "Please contact your hardware vendor\nCPU 1 BANK 8 TSC 1a2b3c4d5e\n"
                   "MISC 140a8c8c86 ADDR 7f3c1000\nMCG status:MCIP RIPV\n"
                   "STATUS bd000000004000c0 MCGSTATUS 5\n\n")
    res = read_inputs([str(log)])
    (e,) = res.events
    assert e.mce and (e.mce.cpu, e.mce.bank, e.mce.addr, e.mce.severity) == (1, 8, 0x7F3C1000,
                                                                             "SRAO")
    assert e.line == 1 and errors(res) == []


def test_no_restart_ip_panics_in_kernel_mode_only() -> None:
    # severity.c: "Neither restart nor error IP" (RIPV and EIPV clear) and "In kernel and no
    # restart IP" are the PANIC rows; a user-mode data load without RIPV is AR (R44, R46)
    bits = decode_status(0xBD80000000100134, 0)
    assert severity(bits, 0x6, cs=0x33) == "SRAR"      # EIPV|MCIP, user mode
    assert severity(bits, 0x6, cs=0x10) == "panic"     # kernel mode
    assert severity(bits, 0x6) == "panic"              # no CS: error_context() assumes kernel
    assert severity(bits, 0x4, cs=0x33) == "panic"     # neither RIPV nor EIPV
    assert severity(bits, 0x5, cs=0x33) == "SRAR"
    res = read_inputs([str(HERE / "mce-user-no-ripv.dmesg")])
    (mc,) = [e for e in res.events if e.kind == "machine_check"]
    assert mc.mce is not None and mc.mce.cs == 0x33
    assert (mc.mce.severity, mc.error_class) == ("SRAR", "uncorrected-ar")
