"""Build rasdaemon databases for the tests, the way rasdaemon 0.6.8 writes them.

``create(path)`` makes the database: with rasdaemon itself when its binary can run here (root,
``unshare``, debugfs: it is started for three seconds in a private mount namespace whose
/var/lib is a fresh tmpfs, so the machine is not changed, and its database is copied out),
otherwise with the CREATE TABLE statements rasdaemon 0.6.8 issues (ras-record.c,
ras_mc_create_table), copied verbatim. Debian's 0.6.8 build creates mc_event, aer_event,
extlog_event and mce_record but no memory_failure_event table (it is built without it);
``memory_failure`` adds that table with rasdaemon's statement for it.

``insert`` binds values as rasdaemon does (ras_mc_prepare_stmt: ``INSERT INTO t (id, ...)
VALUES ( NULL, ?, ...)``; the 64-bit MCA registers through sqlite3_bind_int64, so a status with
bit 63 set is stored negative; mcgcap/mcgstatus/cpu/bank through sqlite3_bind_int, 32 bits;
memory_failure_event.pfn as the text "0x%llx").
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path
from typing import Any

SCHEMA_068 = {
    "mc_event": "CREATE TABLE IF NOT EXISTS mc_event (id INTEGER PRIMARY KEY, timestamp TEXT, "
                "err_count INTEGER, err_type TEXT, err_msg TEXT, label TEXT, mc INTEGER, "
                "top_layer INTEGER, middle_layer INTEGER, lower_layer INTEGER, address INTEGER, "
                "grain INTEGER, syndrome INTEGER, driver_detail TEXT)",
    "aer_event": "CREATE TABLE IF NOT EXISTS aer_event (id INTEGER PRIMARY KEY, timestamp TEXT, "
                 "dev_name TEXT, err_type TEXT, err_msg TEXT)",
    "extlog_event": "CREATE TABLE IF NOT EXISTS extlog_event (id INTEGER PRIMARY KEY, "
                    "timestamp TEXT, etype INTEGER, error_count INTEGER, severity INTEGER, "
                    "address INTEGER, fru_id BLOB, fru_text TEXT, cper_data BLOB)",
    "mce_record": "CREATE TABLE IF NOT EXISTS mce_record (id INTEGER PRIMARY KEY, timestamp "
                  "TEXT, mcgcap INTEGER, mcgstatus INTEGER, status INTEGER, addr INTEGER, misc "
                  "INTEGER, ip INTEGER, tsc INTEGER, walltime INTEGER, cpu INTEGER, cpuid "
                  "INTEGER, apicid INTEGER, socketid INTEGER, cs INTEGER, bank INTEGER, "
                  "cpuvendor INTEGER, bank_name TEXT, error_msg TEXT, mcgstatus_msg TEXT, "
                  "mcistatus_msg TEXT, mcastatus_msg TEXT, user_action TEXT, mc_location TEXT)",
}
MEMORY_FAILURE_068 = ("CREATE TABLE IF NOT EXISTS memory_failure_event (id INTEGER PRIMARY KEY, "
                      "timestamp TEXT, pfn TEXT, page_type TEXT, action_result TEXT)")
INT64 = ("status", "addr", "misc", "ip", "tsc", "walltime", "address", "grain", "syndrome")


def rasdaemon_can_run() -> bool:
    return (shutil.which("rasdaemon") is not None and shutil.which("unshare") is not None
            and hasattr(os, "geteuid") and os.geteuid() == 0)


def create_with_rasdaemon(path: Path) -> bool:
    """Let rasdaemon create its database; True when it did."""
    if not rasdaemon_can_run():
        return False
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "ras-mc_event.db"
        script = ("mount -t tmpfs none /var/lib && mkdir /var/lib/rasdaemon && "
                  "(mountpoint -q /sys/kernel/debug || mount -t debugfs none /sys/kernel/debug) "
                  "&& timeout 3 rasdaemon -f -r >/dev/null 2>&1; "
                  f"cp /var/lib/rasdaemon/ras-mc_event.db {out}")
        try:
            subprocess.run(["unshare", "-m", "sh", "-c", script], timeout=30, check=False,
                           capture_output=True)
        except (OSError, subprocess.TimeoutExpired):
            return False
        if not out.exists():
            return False
        shutil.copy(out, path)
    return True


def create(path: Path, memory_failure: bool = True, prefer_rasdaemon: bool = True) -> str:
    """Create the database; returns who wrote the schema ("rasdaemon" or "statements")."""
    who = "statements"
    if prefer_rasdaemon and create_with_rasdaemon(path):
        who = "rasdaemon"
    con = sqlite3.connect(path)
    with con:
        if who == "statements":
            for sql in SCHEMA_068.values():
                con.execute(sql)
        if memory_failure:
            con.execute(MEMORY_FAILURE_068)
    con.close()
    return who


def _bind(col: str, v: Any) -> Any:
    if v is None or isinstance(v, str):
        return v
    if col in INT64:
        v &= (1 << 64) - 1
        return v - (1 << 64) if v >= 1 << 63 else v
    if isinstance(v, int):
        v &= 0xFFFFFFFF
        return v - (1 << 32) if v >= 1 << 31 else v
    return v


def insert(path: Path, table: str, **values: Any) -> None:
    """One row, as rasdaemon's prepared statement stores it."""
    con = sqlite3.connect(path)
    cols = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
    names = ", ".join(cols)
    marks = ", ".join("?" for _ in cols[1:])
    sql = f"INSERT INTO {table} ({names}) VALUES ( NULL, {marks})"
    if table == "memory_failure_event" and isinstance(values.get("pfn"), int):
        values["pfn"] = f"0x{values['pfn']:x}"
    with con:
        con.execute(sql, [_bind(c, values.get(c)) for c in cols[1:]])
    con.close()


def sample(path: Path) -> str:
    """A database like a 6.1 host's after one consumed error: a corrected error, the
    machine check and memory_failure()'s record (as rasdaemon 0.6.8 decodes its page type)."""
    who = create(path)
    insert(path, "mc_event", timestamp="2024-03-01 10:14:00 +0000", err_count=1,
           err_type="Corrected", err_msg="memory read error",
           label="CPU_SrcID#0_MC#0_Chan#2_DIMM#0", mc=0, top_layer=2, middle_layer=0,
           lower_layer=-1, address=0x2B47D6A40, grain=32, syndrome=0, driver_detail="")
    insert(path, "mce_record", timestamp="2024-03-01 10:15:02 +0000", mcgcap=0x7000C16,
           mcgstatus=5, status=0xBD80000000100134, addr=0x2B47D6A80, misc=0x86,
           walltime=1709287302, cpu=11, bank=1, cpuvendor=0,
           error_msg="Data CACHE Level-0 Read Error",
           mcistatus_msg="Uncorrected_error Error_enabled SRAR")
    insert(path, "memory_failure_event", timestamp="2024-03-01 10:15:02 +0000",
           pfn=0x2B47D6, page_type="dirty unevictable LRU page", action_result="Recovered")
    return who


if __name__ == "__main__":
    import sys

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "ras-mc_event.db")
    if out.exists():
        sys.exit(f"{out}: exists; give a new file name")
    print(f"{out}: schema written by {sample(out)}")
