"""Read rasdaemon's SQLite database (``/var/lib/rasdaemon/ras-mc_event.db``).

Tables and columns are those rasdaemon creates (ras-record.c, 0.6.x to 0.8.x); a database from
an older rasdaemon lacks some columns or tables, which is reported and read around. The file is
opened read-only (``mode=ro``; a locked database is read with ``immutable=1``), never changed.

rasdaemon stores numbers its own way, and that is undone here:

* ``memory_failure_event.pfn`` is TEXT ("0x1234");
* the 64-bit MCA registers (status, addr, misc, ...) are bound with sqlite3_bind_int64, so a
  status with VAL (bit 63) set reads back negative; ``mcgcap``/``mcgstatus`` are bound as
  32-bit ints;
* ``page_type`` is decoded by rasdaemon from its *own copy* of the kernel's
  ``enum mf_action_page_type``, which has drifted from the kernel's: the string is mapped back
  to rasdaemon's number and re-decoded with the enum of the kernel that produced it (see
  ``pagetypes.py``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from .pagetypes import redecode
from .text import Found, _mc_class, error_class, mce_record, parse_int, parse_time

U64 = (1 << 64) - 1
KNOWN_TABLES = {
    "mc_event": ("timestamp", "err_count", "err_type", "err_msg", "label", "mc", "top_layer",
                 "middle_layer", "lower_layer", "address", "grain", "syndrome",
                 "driver_detail"),
    "mce_record": ("timestamp", "mcgcap", "mcgstatus", "status", "addr", "misc", "ip", "tsc",
                   "walltime", "cpu", "cpuid", "apicid", "socketid", "cs", "bank", "cpuvendor",
                   "bank_name", "error_msg", "mcgstatus_msg", "mcistatus_msg", "mcastatus_msg",
                   "user_action", "mc_location"),
    "memory_failure_event": ("timestamp", "pfn", "page_type", "action_result"),
    "extlog_event": ("timestamp", "etype", "error_count", "severity", "address", "fru_id",
                     "fru_text", "cper_data"),
}
REQUIRED = {"mc_event": ("address", "err_type"), "mce_record": ("status",),
            "memory_failure_event": ("pfn", "page_type", "action_result"),
            "extlog_event": ("address", "severity")}
# tables rasdaemon registers that carry no memory address the model can use
NON_MEMORY_TABLES = {"aer_event", "arm_event", "non_standard_event", "devlink_event",
                     "disk_errors", "cxl_poison_event", "cxl_aer_ue_event", "cxl_aer_ce_event",
                     "cxl_overflow_event", "cxl_generic_event", "cxl_general_media_event",
                     "cxl_dram_event", "cxl_memory_module_event", "mf_event_stats",
                     "signal_event"}
SQLITE_MAGIC = b"SQLite format 3\x00"


def is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(16) == SQLITE_MAGIC
    except OSError:
        return False


def _connect(path: Path, immutable: bool) -> sqlite3.Connection:
    uri = f"file:{path.resolve().as_posix()}?mode=ro" + ("&immutable=1" if immutable else "")
    con = sqlite3.connect(uri, uri=True, timeout=0.2)
    con.execute("PRAGMA query_only = ON")
    return con


def read_db(path: Path, source: str, kernel_version: str | None = None) -> Found:
    """Every row of the tables that hold memory errors, as events; everything else counted."""
    out = Found()
    out.formats.add("rasdaemon-db")

    def problem(reason: str, table: str | None = None, row: int | None = None,
                severity: str = "error", text: str = "") -> None:
        out.problems.append({"source": source, "table": table, "row": row, "reason": reason,
                             "severity": severity, "text": text})

    try:
        con = _connect(path, immutable=False)
        tables = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
    except sqlite3.OperationalError as e:
        if "locked" not in str(e):
            problem(f"cannot read the database: {e}")
            return out
        problem("the database is locked by a writer (rasdaemon running?); read without "
                "locking, a row being written may be missing", severity="warning")
        try:
            con = _connect(path, immutable=True)
            tables = [r[0] for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        except sqlite3.DatabaseError as e2:
            problem(f"cannot read the database: {e2}")
            return out
    except sqlite3.DatabaseError as e:
        problem(f"not a readable rasdaemon database: {e}")
        return out
    try:
        for t in ("mc_event", "mce_record", "memory_failure_event"):
            if t not in tables:
                problem(f"no table {t} (written by a rasdaemon built without it, or never "
                        "started with --record)", table=t, severity="warning")
        for table in tables:
            if table in KNOWN_TABLES:
                _read_table(con, table, source, out, problem, kernel_version)
            else:
                try:
                    n = con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
                except sqlite3.DatabaseError as e:
                    problem(f"cannot count rows: {e}", table=table)
                    continue
                out.ignored += int(n)
                if table not in NON_MEMORY_TABLES and n:
                    problem(f"{n} rows of a table memfail does not read (vendor or newer "
                            "rasdaemon table with no memory address it understands)",
                            table=table, severity="warning")
    finally:
        con.close()
    return out


def _read_table(con: sqlite3.Connection, table: str, source: str, out: Found,
                problem: Any, kernel_version: str | None) -> None:
    try:
        cols = [r[1] for r in con.execute(f'PRAGMA table_info("{table}")')]
    except sqlite3.DatabaseError as e:
        problem(f"cannot read the table's columns: {e}", table=table)
        return
    missing = [c for c in KNOWN_TABLES[table] if c not in cols]
    if any(c in REQUIRED[table] for c in missing):
        problem(f"lacks column(s) {', '.join(c for c in missing if c in REQUIRED[table])}; "
                "table not read", table=table)
        return
    if missing:
        problem(f"lacks column(s) {', '.join(missing)} (an older rasdaemon); read the rest",
                table=table, severity="warning")
    want = ["id"] + [c for c in KNOWN_TABLES[table] if c in cols]
    sql = f'SELECT {", ".join(want)} FROM "{table}" ORDER BY id'
    try:
        cur = con.execute(sql)
        while True:
            try:
                row = cur.fetchone()
            except sqlite3.DatabaseError as e:
                problem(f"stopped reading: {e}; the rows before were read", table=table)
                return
            if row is None:
                return
            out.rows += 1
            r = dict(zip(want, row, strict=True))
            try:
                _row_event(table, r, source, out, kernel_version)
            except (ValueError, TypeError) as e:
                problem(f"row not understood: {e}", table=table, row=r.get("id"),
                        text=repr({k: v for k, v in r.items() if k != "cper_data"})[:200])
    except sqlite3.DatabaseError as e:
        problem(f"cannot read: {e}", table=table)


def _u64(v: Any) -> int | None:
    if v is None or v == "":
        return None
    if isinstance(v, str):  # some builds store numbers as text
        return parse_int(v) & U64
    if isinstance(v, bytes):
        raise ValueError("a number stored as a blob")
    return int(v) & U64


def _u32(v: Any) -> int | None:
    x = _u64(v)
    return None if x is None else x & 0xFFFFFFFF


def _row_event(table: str, r: dict[str, Any], source: str, out: Found,
               kernel_version: str | None) -> None:
    base = {"format": "rasdaemon-db", "source": source, "table": table, "row": r["id"],
            "time": r.get("timestamp"), "epoch": parse_time(r.get("timestamp"))}
    if table == "memory_failure_event":
        pfn = _u64(r["pfn"])
        if pfn is None:
            raise ValueError("empty pfn")
        stored = str(r["page_type"])
        page_type, note = redecode(stored, kernel_version)
        res = str(r["action_result"])
        if res not in ("Ignored", "Failed", "Delayed", "Recovered"):
            raise ValueError(f"action_result {res!r} is not one of Ignored, Failed, Delayed, "
                             "Recovered")
        out.events.append({**base, "kind": "memory_failure", "pfn": pfn, "phys_addr": pfn << 12,
                           "page_type": page_type, "result": res,
                           "detail": {"stored_page_type": stored, "page_type_note": note},
                           "text": f"pfn={r['pfn']}, page_type={stored}, action_result={res}"})
    elif table == "mce_record":
        status = _u64(r["status"])
        if status is None:
            raise ValueError("empty status")
        mce = mce_record(status, cpu=_u32(r.get("cpu")), bank=_u32(r.get("bank")),
                         addr=_u64(r.get("addr")), misc=_u64(r.get("misc")),
                         mcgstatus=_u32(r.get("mcgstatus")), mcgcap=_u32(r.get("mcgcap")),
                         ip=_u64(r.get("ip")), cs=_u32(r.get("cs")), tsc=_u64(r.get("tsc")),
                         walltime=_u64(r.get("walltime")), socket=_u32(r.get("socketid")),
                         apicid=_u32(r.get("apicid")), cpuvendor=_u32(r.get("cpuvendor")),
                         cpuid=_u32(r.get("cpuid")))
        out.events.append({**base, "kind": "machine_check", "cpu": mce.cpu, "mce": mce,
                           "phys_addr": mce.addr or None,
                           "pfn": (mce.addr >> 12) if mce.addr else None,
                           "error_class": error_class(mce.severity),
                           "message": r.get("error_msg"),
                           "detail": {k: r[k] for k in ("bank_name", "mcistatus_msg",
                                                        "user_action", "mc_location")
                                      if r.get(k)},
                           "text": f"status=0x{status:016x} addr=0x{(mce.addr or 0):x} "
                                   f"{r.get('error_msg') or ''}".strip()})
    elif table == "mc_event":
        addr = _u64(r["address"])
        typ = str(r["err_type"])
        out.events.append({**base, "kind": "memory_error", "phys_addr": addr,
                           "pfn": None if addr is None else addr >> 12,
                           "error_class": _mc_class(typ), "message": f"mc_event {typ}",
                           "detail": {"via": "edac", "count": r.get("err_count"),
                                      "label": r.get("label"), "msg": r.get("err_msg")},
                           "text": f"{r.get('err_count')} {typ} error(s): {r.get('err_msg')} "
                                   f"at {r.get('label')} addr {addr}"})
    elif table == "extlog_event":
        addr = _u64(r["address"])
        sev = {0: "uncorrected-ao", 1: "fatal", 2: "corrected", 3: "corrected"}.get(
            int(r["severity"]), "unknown")
        out.events.append({**base, "kind": "memory_error", "phys_addr": addr,
                           "pfn": None if addr is None else addr >> 12, "error_class": sev,
                           "message": "extlog", "detail": {"via": "extlog",
                                                           "etype": r.get("etype")},
                           "text": f"extlog severity={r['severity']} address={addr}"})
