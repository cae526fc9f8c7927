"""Read RAS records from text: kernel logs (dmesg, journal, syslog) of any kernel version,
tracepoint output, mcelog's text, ``ras-mc-ctl --errors`` and QEMU's messages.

One pass over the lines; formats may be mixed in one file (a journal holds kernel and QEMU
lines). Multi-line records (a machine check, a GHES/CPER block, an mcelog record) are
assembled by small state machines; a record left open at the end of the input is reported.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .events import MceRecord
from .mce import VENDORS, decode_status, is_memory_error, severity

HEX = r"[0-9a-fA-F]+"
PROGRESS_LINES = 500_000
MF_RESULTS = ("Ignored", "Failed", "Delayed", "Recovered")

# --------------------------------------------------------------------------- line prefixes

_SYSLOG = re.compile(r"^(?P<time>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d(?:\.\d+)?) (?P<host>\S+) "
                     r"(?P<prog>[\w\-./@]+)(?:\[\d+\])?: (?P<msg>.*)$")
_ISOLOG = re.compile(r"^(?P<time>\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:[.,]\d+)?"
                     r"(?:Z|[+-]\d\d:?\d\d)?) (?P<host>\S+) (?P<prog>[\w\-./@]+)(?:\[\d+\])?: "
                     r"(?P<msg>.*)$")
_MONO = re.compile(r"^\[\s*(?P<up>\d+\.\d+)\] (?P<host>\S+) (?P<prog>kernel|[\w\-./@]*(?:qemu|libvirt|"
                   r"rasdaemon|mcelog)[\w\-./@]*)(?:\[\d+\])?: (?P<msg>.*)$")
_DMESG = re.compile(r"^\[\s*(?P<up>\d+\.\d+)\]\s?(?P<msg>.*)$")
_DMESG_T = re.compile(r"^\[(?P<time>[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4})\]"
                      r"\s?(?P<msg>.*)$")
_DMESG_X = re.compile(r"^(?:kern|user|daemon|syslog)\s*:\s*\w+\s*: (?P<msg>.*)$")
_LEVEL = re.compile(r"^<\d>(?P<msg>.*)$")
_KERN_PREFIX = re.compile(r"^kernel: (?P<msg>.*)$")

# --------------------------------------------------------------------------- messages

_VERSION = re.compile(r"Linux version (?P<v>\d+\.\d+(?:\.\d+)?\S*)")
_MF_ACTION = re.compile(r"^(?:Memory failure|MCE):? ?(?P<pfn>0x" + HEX + r"|\d+): recovery action "
                        r"for (?P<type>.+?): (?P<res>\w+)\s*$")
# before 4.1: action_result() printed "MCE %#lx: %s page recovery: %s"
_MF_OLD = re.compile(r"^MCE:? ?(?P<pfn>0x" + HEX + r"|\d+): (?P<type>.+?) recovery: "
                     r"(?P<res>Ignored|Failed|Delayed|Recovered)\s*$")
_MF_MSG = re.compile(r"^(?:Memory failure|MCE):? ?(?P<pfn>0x" + HEX + r"|\d+):? (?P<msg>.+)$")
# memory-failure.c lines without a pfn (before 4.7 some used the "MCE: " prefix)
_MF_NOPFN = re.compile(r"^(?:Memory failure: |MCE: (?=Killing|Error sending|Out of memory|"
                       r"Unable to find|Memory error))(?P<msg>.+)$")
# powerpc (arch/powerpc/kernel/mce.c machine_check_print_event_info)
_PPC_MCE = re.compile(r"^MCE: CPU(?P<cpu>\d+): machine check \((?P<sev>\w+)\) (?P<where>Host|Guest)"
                      r" (?P<what>.*?)(?: DAR: (?P<dar>" + HEX + r"))?(?: paddr: (?P<pa>" + HEX
                      + r"))? ?\[(?P<res>Recovered|Not recovered)\]")
_PPC_INFO = re.compile(r"^MCE: CPU\d+: ")
_ARM_BOOT = re.compile(r"^Booting Linux on physical CPU ")
_PROC = re.compile(r"(?:Sending SIGBUS to|Killing) (?P<comm>.+?):(?P<pid>\d+)")
_INJECT = re.compile(r"(?P<what>Injecting memory failure|Soft offlining) (?:for )?(?:pfn|page) "
                     r"(?P<pfn>0x" + HEX + r"|\d+) at (?:process virtual address )?"
                     r"(?P<va>0x" + HEX + r")")
_USER_ACCESS = re.compile(r"Uncorrected hardware memory error in user-access at (?P<a>" + HEX + ")")
_NOT_RECOVERED = re.compile(r"^(?:mce: )?Memory error not recovered")
_HWERR = r"(?:mce: )?\[Hardware Error\]: "
_MCE_HEAD = re.compile(_HWERR + r"CPU (?P<cpu>\d+): Machine Check(?P<exc> Exception)?: "
                       r"(?P<mcg>" + HEX + r") Bank (?P<bank>\d+): (?P<status>" + HEX + ")")
_MCE_RIP = re.compile(_HWERR + r"RIP(?: !INEXACT!)? (?P<cs>" + HEX + r"):<(?P<ip>" + HEX + ")>")
_MCE_TSC = re.compile(_HWERR + r"TSC (?P<tsc>" + HEX + r")(?P<rest>.*)$")
_MCE_PROC = re.compile(_HWERR + r"PROCESSOR (?P<vendor>\d+):(?P<cpuid>" + HEX + r") TIME "
                       r"(?P<time>\d+) SOCKET (?P<socket>\d+) APIC (?P<apic>" + HEX + r")")
_AMD_STATUS = re.compile(_HWERR + r"CPU:(?P<cpu>\d+) \((?P<fms>[0-9a-f:]+)\) MC(?P<bank>\d+)_STATUS"
                         r"\[(?P<flags>[^\]]*)\]: 0x(?P<status>" + HEX + ")")
_AMD_ADDR = re.compile(_HWERR + r"Error Addr: 0x(?P<addr>" + HEX + ")")
_AMD_INFO = re.compile(_HWERR + r"(?:Corrected error, no action required\.|Uncorrected, |"
                       r"Deferred error, |IPID: |Syndrome: |cache level: |"
                       r"[\w .]+ Ext\. Error Code: |Error Status: |PPIN: |Machine check: )")
_MCE_MSG = re.compile(_HWERR + r"Machine check: (?P<msg>.+)$")
_MCE_INFO = re.compile(r"(?:mce: )?\[Hardware Error\]: (?:Run the above through|Machine check "
                       r"events logged|Some CPUs didn't answer|Fake kernel panic|"
                       r"CPU \d+: Machine Check: 0 Bank \d+: 0+$)|^mce: (?:CPU\d*:? .*"
                       r"(?:temperature|throttled)|Machine check events logged|"
                       r"Using \d+ MCE banks|\[Hardware Error\]: Machine check events logged)")
_GHES = re.compile(r"^\{(?P<n>\d+)\}\[Hardware Error\]:\s?(?P<body>.*)$")
_CPER_BARE = re.compile(r"^\[Hardware Error\]:\s?(?P<body>.*)$")   # CPER before the {N} prefix
_EDAC = re.compile(r"^EDAC (?:(?P<drv>[\w\-]+) )?MC(?P<mc>\d+): (?P<count>\d+) "
                   r"(?P<type>CE|UE|Corrected|Uncorrected|Fatal|Deferred)\b(?P<rest>.*)$")
_EDAC_PAGE = re.compile(r"page:0x(?P<page>" + HEX + r") offset:0x(?P<off>" + HEX + ")")
_PANIC = re.compile(r"^Kernel panic - not syncing: (?P<msg>.*)$")
_BUG = re.compile(r"^(?:BUG: .+|WARNING: CPU: \d+ PID: \d+ at .+|Oops: .+|"
                  r"general protection fault.*|Internal error: .+|kernel BUG at .+)$")
_MF_CODE = re.compile(r"memory[-_]failure|hwpoison|hugetlb|collect_procs|kill_procs|"
                      r"unmap_poisoned|try_to_unmap|me_\w+page|kvm_gmem_error", re.I)
_QEMU_MCE = re.compile(r"Guest (?:MCE )?Memory Error at (?:QEMU|qemu) addr (?P<hva>\S+) and "
                       r"(?:GUEST|guest) (?:addr )?(?:0x)?(?P<gpa>" + HEX + r")(?: addr)?"
                       r"(?: on lost large page (?P<lp>\S+))? of type (?P<code>BUS_MCEERR_A[RO])"
                       r"(?: (?P<what>injected|ignored on AMD guest))?")
_QEMU_SELF = re.compile(r"Hardware memory error for memory used by QEMU itself instead of "
                        r"guest system!")
_QEMU_HWERR = re.compile(r"(?:^|: )Hardware memory error!\s*$")
_QEMU_LARGE = re.compile(r"Memory error: Loosing a large page \(size: (?P<size>\d+)\) at QEMU "
                         r"addr (?P<hva>\S+) and GUEST addr (?P<gpa>\S+)")
_TRACE = re.compile(r"^\s*(?P<task>.{1,64}?)-(?P<pid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?"
                    r"\[(?P<cpu>\d+)\]\s+(?:[\w.]{3,6}\s+)?(?P<ts>\d+\.\d+):\s+"
                    r"(?P<ev>[\w:]+):\s*(?P<body>.*)$")
_PERF = re.compile(r"^\s*(?P<task>\S.{0,63}?)\s+(?P<pid>\d+)\s+\[(?P<cpu>\d+)\]\s+"
                   r"(?P<ts>\d+\.\d+):\s+(?P<ev>[a-z_]+:[\w]+):\s*(?P<body>.*)$")
_TP_MF = re.compile(r"^pfn (?P<pfn>0x" + HEX + r"|\d+): recovery action for (?P<type>.+?): "
                    r"(?P<res>\w+)\s*$")
_TP_MCE = re.compile(r"CPU: (?P<cpu>\d+), MCGc/s: (?P<mcgcap>" + HEX + r")/(?P<mcg>" + HEX
                     + r"), MC(?P<bank>\d+): (?P<status>" + HEX + r")")
_TP_MC = re.compile(r"^(?P<count>\d+) (?P<type>Corrected|Uncorrected|Fatal|Info|Deferred) "
                    r"errors?:(?P<msg>.*?) on (?P<label>.*?) \(mc:(?P<mc>\d+) location:"
                    r"(?P<loc>[-\d:]+) address:0x(?P<addr>" + HEX + r") grain:(?P<grain>\d+)")
# a line that looks like a RAS record (reported when no reader understands it)
_RAS_HINT = re.compile(r"Memory failure: |\[Hardware Error\]|Machine Check|"
                       r"memory_failure_event: |mce_record: |mc_event: |Guest MCE|MCE 0x")
# every record any reader understands contains one of these: other lines skip the parsers
_ANY = re.compile(r"MESSAGE|Memory failure|MCE|mce|Hardware Error|EDAC|Linux version|Injecting|"
                  r"Soft offlining|Kernel panic|BUG|WARNING|Oops|general protection|"
                  r"Internal error|[Mm]emory [Ee]rror|Hardware memory error|_event|events:|"
                  r"errors\.|Disk errors|Hardware event|hwpoison|Guest|recovery action")
_RAS_BODY = re.compile(r"^\s*(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?: [+-]\d{4})?) "
                       r"(?P<rest>.*)$")
_NONMEM_TRACE = {"aer_event", "non_standard_event", "devlink_health_report", "block_rq_error",
                 "arm_event", "cxl_general_media", "cxl_dram", "extlog_mem_event"}

# mcelog
_MCELOG_START = re.compile(r"^(?:Hardware event\. This is not a software error\.|"
                           r"HARDWARE ERROR\. This is \*NOT\* a software problem!|MCE \d+)\s*$")
_MCELOG_CPU = re.compile(r"^CPU (?P<cpu>\d+) BANK (?P<bank>\d+)")
_MCELOG_ADDR = re.compile(r"\bADDR (?P<addr>(?:0x)?" + HEX + ")")
_MCELOG_MISC = re.compile(r"\bMISC (?P<misc>(?:0x)?" + HEX + ")")
_MCELOG_TIME = re.compile(r"^TIME (?P<t>\d+)")
_MCELOG_STATUS = re.compile(r"^STATUS (?P<s>" + HEX + r") MCGSTATUS (?P<g>" + HEX + ")")
_MCELOG_CAP = re.compile(r"^MCGCAP (?P<c>" + HEX + r") APICID (?P<a>" + HEX + r") SOCKETID "
                         r"(?P<s>\d+)")
_MCELOG_CPUID = re.compile(r"^CPUID Vendor (?P<v>\w+)")
_MCELOG_RIP = re.compile(r"^RIP(?: !INEXACT!)? (?P<cs>" + HEX + r"):(?P<ip>" + HEX + ")")

# ras-mc-ctl --errors
_RMC_SECTIONS = {"Memory controller events:": "mc", "MCE events:": "mce",
                 "Memory failure events:": "mf", "PCIe AER events:": "other",
                 "ARM processor events:": "other", "Extlog events:": "extlog",
                 "Devlink events:": "other", "Disk errors": "other"}
_RMC_NONE = re.compile(r"^No (?:Memory|PCIe AER|ARM processor|Extlog|devlink|disk|"
                       r"Memory failure|MCE) errors\.$")
_RMC_TS = r"(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?: [+-]\d{4})?)"
_RMC_MF = re.compile(r"^(?P<id>\d+) " + _RMC_TS + r" error: pfn=(?P<pfn>\S+), "
                     r"page_type=(?P<type>.+), action_result=(?P<res>\w+)\s*$")
_RMC_MC = re.compile(r"^(?P<id>\d+) " + _RMC_TS + r" (?P<count>\d+) (?P<type>\w+) error\(s\): "
                     r"(?P<msg>.*?) at (?P<label>.*?) location: (?P<loc>[-\d:]+), addr "
                     r"(?P<addr>\d+), grain (?P<grain>\d+), syndrome (?P<synd>\d+)")
_RMC_MCE = re.compile(r"^(?P<id>\d+) " + _RMC_TS + r" error: (?P<rest>.*)$")
_RMC_EXTLOG = re.compile(r"^(?P<id>\d+) " + _RMC_TS + r" error: type=(?P<type>[^,]+), "
                         r"severity=(?P<sev>[^,]+), address=0x(?P<addr>" + HEX + ")")
_KV_HEX = re.compile(r"\b(?P<k>mcgcap|mcgstatus|status|addr|misc|ip|tsc|walltime|cpu|cpuid|"
                     r"apicid|socketid|cs|bank)=0x(?P<v>" + HEX + ")")

VENDOR_CODES = {v.lower(): k for k, v in VENDORS.items()}


def parse_int(text: str) -> int:
    t = text.strip()
    return int(t, 16) if t.lower().startswith("0x") else int(t)


def mce_record(status: int, **kw: Any) -> MceRecord:
    """Build an ``MceRecord`` with status bits, severity and memory-ness decoded."""
    bits = decode_status(status, kw.get("cpuvendor"))
    sev = severity(bits, kw.get("mcgstatus"), kw.get("cs"))
    return MceRecord(status=status & ((1 << 64) - 1), bits=bits, severity=sev,
                     memory=is_memory_error(bits), **kw)


def error_class(sev: str) -> str:
    return {"corrected": "corrected", "deferred": "deferred", "UCNA": "uncorrected-ao",
            "SRAO": "uncorrected-ao", "SRAR": "uncorrected-ar", "panic": "fatal"}.get(
                sev, "unknown")


def parse_time(text: str | None) -> float | None:
    """Seconds since 1970 for timestamps that carry a year; None otherwise."""
    if not text:
        return None
    t = text.strip().replace(",", ".")
    for fmt in ("%Y-%m-%d %H:%M:%S %z", "%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z",
                "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S.%f", "%Y-%m-%dT%H:%M:%S",
                "%a %b %d %H:%M:%S %Y"):
        try:
            d = datetime.strptime(t.replace("Z", "+0000"), fmt)
        except ValueError:
            continue
        return d.timestamp() if d.tzinfo else d.replace(tzinfo=None).timestamp()
    return None


@dataclass
class Found:
    """What the text reader produced for one source."""

    events: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    formats: set[str] = field(default_factory=set)
    ignored: int = 0
    lines: int = 0
    rows: int = 0
    version: str | None = None
    arch: str | None = None
    host: str | None = None


@dataclass
class _Meta:
    line: int
    time: str | None = None
    host: str | None = None
    uptime: float | None = None
    prog: str | None = None


class TextReader:
    """Feed lines with ``feed``; call ``finish`` at the end. ``only`` restricts the formats."""

    def __init__(self, source: str, only: str | None = None,
                 progress: Callable[[str, int], None] | None = None) -> None:
        self.source = source
        self.progress = progress
        self.only = only
        self.out = Found()
        self._mce: dict[str, Any] | None = None      # open kernel-log machine check
        self._ghes: dict[int, dict[str, Any]] = {}   # open GHES blocks by {n}
        self._mcelog: dict[str, Any] | None = None   # open mcelog record
        self._rmc: str | None = None                 # current ras-mc-ctl section
        self._bug: tuple[dict[str, Any], int] | None = None  # recent kernel bug, its line

    # ------------------------------------------------------------------ helpers

    def _allowed(self, fmt: str) -> bool:
        return self.only in (None, "auto", fmt)

    def _event(self, kind: str, fmt: str, meta: _Meta, text: str, **kw: Any) -> dict[str, Any]:
        ev = {"kind": kind, "format": fmt, "source": self.source, "line": meta.line,
              "host": meta.host or self.out.host, "time": meta.time, "uptime": meta.uptime,
              "epoch": parse_time(meta.time), "text": text, **kw}
        self.out.events.append(ev)
        self.out.formats.add(fmt)
        return ev

    def _problem(self, line: int | None, reason: str, text: str = "",
                 severity: str = "error") -> None:
        self.out.problems.append({"source": self.source, "line": line, "reason": reason,
                                  "text": text[:200], "severity": severity})

    # ------------------------------------------------------------------ main loop

    def feed_all(self, lines: Iterable[tuple[int, str]]) -> Found:
        for n, line in lines:
            self.feed(n, line)
        return self.finish()

    def feed(self, n: int, raw: str) -> None:
        self.out.lines += 1
        if self.progress is not None and self.out.lines % PROGRESS_LINES == 0:
            self.progress(self.source, self.out.lines)
        line = raw.rstrip("\r\n")
        if "\x00" in line:
            self._problem(n, "binary data (NUL bytes) in a text line", line.replace("\x00", ""))
            return
        if not line.strip():
            self._close_blocks(blank=True)
            return
        if line.lstrip().startswith("#"):  # ftrace headers, comments
            self.out.ignored += 1
            return
        if self._bug is not None and n - self._bug[1] > 60:
            self._bug = None
        if self._mcelog is None and self._rmc is None and self._bug is None and \
                not _ANY.search(line):
            self.out.ignored += 1
            return
        if self._allowed("tracepoint"):
            m = _TRACE.match(line) or _PERF.match(line)
            if m and self._trace(n, m, line):
                return
        meta, msg = self._split(n, line)
        if line.startswith("{") and '"MESSAGE"' in line:
            # journalctl -o json: the record's MESSAGE is the line as the kernel logged it (its
            # text, what the replay compares with the model's lines), the JSON its transport
            line = msg
        if msg != line and self._allowed("tracepoint"):
            m = _TRACE.match(msg) or _PERF.match(msg)
            if m and self._trace(n, m, line, meta):
                return
        in_mcelog = self._mcelog is not None or (self._allowed("mcelog") and
                                                 bool(_MCELOG_START.match(msg)))
        if in_mcelog and self._mcelog_line(meta, msg, line):
            return
        in_rmc = self._rmc is not None or msg.strip() in _RMC_SECTIONS or \
            bool(_RMC_NONE.match(msg.strip()))
        if in_rmc and self._allowed("ras-mc-ctl") and self._rmc_line(meta, msg.strip(), line):
            return
        if self._allowed("kernel-log") and self._kernel(meta, msg, line):
            return
        if self._allowed("qemu") and self._qemu(meta, msg, line):
            return
        if self._bug is not None and n - self._bug[1] <= 60 and _MF_CODE.search(msg):
            self._bug[0]["detail"]["memory_failure_code"] = True
        if _RAS_HINT.search(msg) and not msg.lstrip().startswith(("?", "Call Trace")) and \
                not re.match(r"^\s*\S+\+0x", msg):
            self._problem(n, "unrecognised RAS line", line)
            return
        self.out.ignored += 1

    def finish(self) -> Found:
        self._close_blocks(blank=False, eof=True)
        return self.out

    # ------------------------------------------------------------------ prefixes

    def _split(self, n: int, line: str) -> tuple[_Meta, str]:
        meta = _Meta(n)
        msg = line
        if line.startswith("{") and '"MESSAGE"' in line:  # journalctl -o json
            return self._journal_json(meta, line)
        for rx in (_SYSLOG, _ISOLOG, _MONO):
            m = rx.match(msg)
            if m:
                d = m.groupdict()
                meta.time = d.get("time")
                meta.host = d.get("host")
                meta.prog = d.get("prog")
                if d.get("up"):
                    meta.uptime = float(d["up"])
                msg = d["msg"]
                if meta.host and self.out.host is None:
                    self.out.host = meta.host
                break
        for _ in range(3):
            m = _KERN_PREFIX.match(msg) or _LEVEL.match(msg) or _DMESG_X.match(msg)
            if m:
                msg = m.group("msg")
                continue
            m = _DMESG.match(msg)
            if m:
                meta.uptime = float(m.group("up"))
                msg = m.group("msg")
                continue
            m = _DMESG_T.match(msg)
            if m:
                meta.time = m.group("time")
                msg = m.group("msg")
                continue
            break
        return meta, msg

    def _journal_json(self, meta: _Meta, line: str) -> tuple[_Meta, str]:
        import json

        try:
            rec = json.loads(line)
        except ValueError:
            return meta, line
        msg = rec.get("MESSAGE")
        if isinstance(msg, list):  # journald stores non-UTF-8 messages as byte arrays
            msg = bytes(x & 0xFF for x in msg if isinstance(x, int)).decode("latin-1")
        if not isinstance(msg, str):
            return meta, line
        meta.host = rec.get("_HOSTNAME") if isinstance(rec.get("_HOSTNAME"), str) else None
        if meta.host and self.out.host is None:
            self.out.host = meta.host
        try:
            us = int(rec.get("__REALTIME_TIMESTAMP", ""))
            meta.time = datetime.fromtimestamp(us / 1e6).astimezone().isoformat()
        except (TypeError, ValueError, OverflowError, OSError):
            pass
        with contextlib.suppress(TypeError, ValueError):
            meta.uptime = int(rec.get("__MONOTONIC_TIMESTAMP", "")) / 1e6
        return meta, msg

    # ------------------------------------------------------------------ kernel log

    def _kernel(self, meta: _Meta, msg: str, line: str) -> bool:
        m = _VERSION.search(msg)
        if m and msg.lstrip().startswith("Linux version"):
            self.out.version = self.out.version or m.group("v")
            self.out.arch = self.out.arch or arch_of(msg)
            self.out.formats.add("kernel-log")
            return True
        if _ARM_BOOT.match(msg):
            self.out.arch = self.out.arch or "aarch64"
            self.out.ignored += 1
            return True
        m = _PPC_MCE.match(msg)
        if m:
            self.out.arch = self.out.arch or "ppc64"
            pa = int(m.group("pa"), 16) if m.group("pa") else None
            ue = "UE" in m.group("what")
            self._event("memory_error" if ue else "mf_message", "kernel-log", meta, line,
                        cpu=int(m.group("cpu")), phys_addr=pa,
                        # ppc64 kernels use 64 KiB pages: memory_failure()'s pfn is pa >> 16
                        pfn=None if pa is None else pa >> 16,
                        error_class=("uncorrected-ar" if ue else "unknown")
                        if m.group("res") == "Recovered" or ue else "fatal",
                        message=f"powerpc machine check: {m.group('what').strip()}",
                        detail={"via": "powerpc", "severity": m.group("sev"),
                                "recovered": m.group("res") == "Recovered",
                                "guest": m.group("where") == "Guest"})
            return True
        if _PPC_INFO.match(msg):
            self.out.arch = self.out.arch or "ppc64"
            self.out.formats.add("kernel-log")
            return True
        m = _MF_ACTION.match(msg)
        if m:
            res = m.group("res")
            if res not in MF_RESULTS:
                self._problem(meta.line, f"unknown memory_failure result {res!r}; expected "
                              + ", ".join(MF_RESULTS), line)
                return True
            pfn = parse_int(m.group("pfn"))
            self._event("memory_failure", "kernel-log", meta, line, pfn=pfn,
                        phys_addr=pfn << 12, page_type=m.group("type"), result=res)
            return True
        m = _MF_OLD.match(msg)
        if m:
            pfn = parse_int(m.group("pfn"))
            typ = m.group("type")
            self._event("memory_failure", "kernel-log", meta, line, pfn=pfn,
                        phys_addr=pfn << 12, result=m.group("res"),
                        page_type=typ if typ.endswith("page") else f"{typ} page")
            return True
        m = _INJECT.search(msg)
        if m:
            pfn = parse_int(m.group("pfn"))
            self._event("injection", "kernel-log", meta, line, pfn=pfn, phys_addr=pfn << 12,
                        message=m.group("what"), detail={"va": parse_int(m.group("va")),
                                                         "soft": m.group("what") != "Injecting"
                                                         " memory failure"})
            return True
        m = _MF_MSG.match(msg)
        if m:
            pfn = parse_int(m.group("pfn"))
            detail: dict[str, Any] = {}
            p = _PROC.search(m.group("msg"))
            if p:
                detail = {"comm": p.group("comm"), "pid": int(p.group("pid")),
                          "action": "kill" if "Killing" in m.group("msg") else "sigbus"}
            self._event("mf_message", "kernel-log", meta, line, pfn=pfn, phys_addr=pfn << 12,
                        message=m.group("msg"), detail=detail)
            return True
        m = _USER_ACCESS.search(msg)
        if m:
            a = int(m.group("a"), 16)
            self._event("consumed", "kernel-log", meta, line, phys_addr=a, pfn=a >> 12,
                        error_class="uncorrected-ar", message="user-access")
            return True
        if _NOT_RECOVERED.match(msg):
            self._event("mf_message", "kernel-log", meta, line, message="not recovered",
                        error_class="uncorrected-ar")
            return True
        if self._mce_line(meta, msg, line):
            return True
        m = _GHES.match(msg) or _CPER_BARE.match(msg)
        if m:
            self._ghes_line(meta, int(m.groupdict().get("n") or 0), m.group("body"), line)
            return True
        m = _EDAC.match(msg)
        if m:
            self._edac(meta, m, line)
            return True
        if msg.startswith("EDAC "):
            if re.search(r"\b(?:CE|UE)\b.*(?:error|page:)", msg):
                self._problem(meta.line, "unrecognised EDAC error line", line)
            else:
                self.out.ignored += 1
            return True
        m = _PANIC.match(msg)
        if m:
            self._event("panic", "kernel-log", meta, line, message=m.group("msg"),
                        error_class="fatal" if "machine check" in msg.lower() else None)
            return True
        if _BUG.match(msg):
            ev = self._event("kernel_bug", "kernel-log", meta, line, message=msg,
                             detail={"memory_failure_code": bool(_MF_CODE.search(msg))})
            self._bug = (ev, meta.line)
            return True
        if "recovery action for" in msg and re.match(r"^(?:Memory failure|MCE)", msg):
            self._problem(meta.line, "memory_failure line not in the form 'Memory failure: "
                          "0xPFN: recovery action for TYPE: Ignored|Failed|Delayed|Recovered'",
                          line)
            return True
        m = _MF_NOPFN.match(msg)
        if m:
            hexnum = re.search(r"(0x" + HEX + ")", m.group("msg"))
            mpfn = parse_int(hexnum.group(1)) if hexnum else None
            self._event("mf_message", "kernel-log", meta, line, pfn=mpfn,
                        phys_addr=None if mpfn is None else mpfn << 12, message=m.group("msg"))
            return True
        return False

    def _mce_line(self, meta: _Meta, msg: str, line: str) -> bool:
        m = _AMD_STATUS.search(msg)
        if m:  # AMD's decoded record: the status line, then "Error Addr:"
            self._close_mce()
            self._mce = {"meta": meta, "text": [line], "cpu": int(m.group("cpu")),
                         "bank": int(m.group("bank")), "status": int(m.group("status"), 16),
                         "cpuvendor": 2, "amd_decoded": True}
            return True
        m = _AMD_ADDR.search(msg)
        if m and self._mce is not None and self._mce.get("amd_decoded"):
            self._mce["addr"] = int(m.group("addr"), 16)
            self._mce["text"].append(line)
            self._close_mce()
            return True
        if self._mce is None or not self._mce.get("amd_decoded"):
            pass
        elif _AMD_INFO.search(msg) and not _MCE_MSG.search(msg):
            self._mce["text"].append(line)
            return True
        if _AMD_INFO.search(msg) and not _MCE_MSG.search(msg):
            self.out.formats.add("kernel-log")
            return True
        m = _MCE_HEAD.search(msg)
        if m:
            self._close_mce()
            self._mce = {"meta": meta, "text": [line], "cpu": int(m.group("cpu")),
                         "bank": int(m.group("bank")), "status": int(m.group("status"), 16),
                         "mcgstatus": int(m.group("mcg"), 16)}
            return True
        if _MCE_INFO.search(msg):
            self.out.formats.add("kernel-log")
            return True
        m = _MCE_MSG.search(msg)
        if m:
            self._close_mce()
            self._event("panic", "kernel-log", meta, line, message=m.group("msg"),
                        error_class="fatal")
            return True
        for rx in (_MCE_RIP, _MCE_TSC, _MCE_PROC):
            m = rx.search(msg)
            if not m:
                continue
            if self._mce is None:
                self._problem(meta.line, "machine-check continuation line without its "
                              "'CPU N: Machine Check' line", line)
                return True
            rec = self._mce
            rec["text"].append(line)
            if rx is _MCE_RIP:
                rec["cs"], rec["ip"] = int(m.group("cs"), 16), int(m.group("ip"), 16)
            elif rx is _MCE_TSC:
                rec["tsc"] = int(m.group("tsc"), 16)
                for k, v in re.findall(r"\b(ADDR|MISC|SYND|IPID|PPIN) (" + HEX + ")",
                                       m.group("rest")):
                    if k != "PPIN":
                        rec[k.lower()] = int(v, 16)
            else:
                rec.update(cpuvendor=int(m.group("vendor")), cpuid=int(m.group("cpuid"), 16),
                           walltime=int(m.group("time")), socket=int(m.group("socket")),
                           apicid=int(m.group("apic"), 16))
                self._close_mce()
            return True
        return False

    def _close_mce(self, eof: bool = False) -> None:
        rec, self._mce = self._mce, None
        if rec is None:
            return
        meta: _Meta = rec.pop("meta")
        text = "\n".join(rec.pop("text"))
        amd = rec.pop("amd_decoded", False)
        if "walltime" not in rec and not amd:
            self._problem(meta.line, "machine-check record cut short (no PROCESSOR line"
                          + (" before the end of the input" if eof else "") + "); kept what "
                          "was read", text.splitlines()[0], severity="warning")
        mce = mce_record(**rec)
        if amd:  # the same error __print_mce logged just before: keep one record
            for prev in reversed(self.out.events[-8:]):
                pm = prev.get("mce")
                if prev["kind"] == "machine_check" and pm is not None and \
                        (pm.cpu, pm.bank, pm.status) == (mce.cpu, mce.bank, mce.status):
                    if pm.addr is None and mce.addr is not None:
                        prev["mce"] = pm.model_copy(update={"addr": mce.addr})
                        prev["phys_addr"], prev["pfn"] = mce.addr, mce.addr >> 12
                    prev["text"] += "\n" + text
                    return
        epoch = float(mce.walltime) if mce.walltime else None
        ev = self._event("machine_check", "kernel-log", meta, text, cpu=mce.cpu, mce=mce,
                         phys_addr=mce.addr if mce.bits.addrv or mce.addr else None,
                         pfn=(mce.addr >> 12) if mce.addr else None,
                         error_class=error_class(mce.severity))
        if epoch is not None:
            ev["epoch"] = epoch

    # ------------------------------------------------------------------ GHES / CPER

    def _ghes_line(self, meta: _Meta, n: int, body: str, line: str) -> None:
        b = body.strip()
        blk = self._ghes.get(n)
        if b.startswith("Hardware error from APEI Generic Hardware Error Source") or \
                b.startswith("APEI generic hardware error status") or blk is None:
            self._close_ghes(n)
            blk = self._ghes[n] = {"meta": meta, "text": [], "severity": None, "sections": [],
                                   "sec": None}
        blk["text"].append(line)
        self.out.formats.add("kernel-log")
        m = re.match(r"event severity: (\w+)", b) or re.match(r"severity: \d+, (\w+)", b)
        if m:
            blk["severity"] = m.group(1).lower()
            return
        m = re.match(r"Error (\d+), type: (\w+)", b) or re.match(r"section: (\d+), severity: "
                                                                r"\d+, (\w+)", b)
        if m:
            blk["sec"] = {"severity": m.group(2).lower(), "meta": meta, "fields": {}}
            blk["sections"].append(blk["sec"])
            return
        sec = blk["sec"]
        if sec is None:
            sec = blk["sec"] = {"severity": blk["severity"], "meta": meta, "fields": {}}
            blk["sections"].append(sec)
        m = re.match(r"(section_type|physical_address|physical_address_mask|error_type|"
                     r"error_status|fru_text|DIMM location|physical fault address|"
                     r"error affinity level|MIDR|running state):\s*(.*)$", b)
        if m:
            sec["fields"][m.group(1)] = m.group(2).strip()
            if "ARM processor" in m.group(2):
                self.out.arch = self.out.arch or "aarch64"
        for k, v in re.findall(r"\b(node|card|module|rank|bank|device|row|column|"
                               r"bit_position)[: ](\d+)", b):
            sec["fields"][k] = int(v)

    def _close_ghes(self, n: int | None = None) -> None:
        for key in ([n] if n is not None else list(self._ghes)):
            blk = self._ghes.pop(key, None)
            if blk is None:
                continue
            for sec in blk["sections"]:
                f = sec["fields"]
                addr = f.get("physical_address") or f.get("physical fault address")
                if addr is None:
                    continue
                try:
                    a = int(addr.split()[0], 16)
                except ValueError:
                    self._problem(sec["meta"].line, "GHES physical_address is not a hex "
                                  "number", addr)
                    continue
                sev = sec["severity"] or blk["severity"] or "unknown"
                cls = {"recoverable": "uncorrected-ao", "fatal": "fatal",
                       "corrected": "corrected", "info": "corrected",
                       "informational": "corrected"}.get(sev, "unknown")
                kind_text = str(f.get("section_type", ""))
                self._event("memory_error", "kernel-log", sec["meta"], "\n".join(blk["text"]),
                            phys_addr=a, pfn=a >> 12, error_class=cls,
                            message=f"GHES {kind_text}: {f.get('error_type', '')}".strip(),
                            detail={"via": "ghes", "severity": sev,
                                    **{k: v for k, v in f.items()
                                       if k not in ("physical_address",)}})

    # ------------------------------------------------------------------ EDAC

    def _edac(self, meta: _Meta, m: re.Match[str], line: str) -> None:
        p = _EDAC_PAGE.search(m.group("rest"))
        if p is None and "page:" in m.group("rest"):
            self._problem(meta.line, "EDAC error line whose page:/offset: are not hex "
                          "numbers", line)
            return
        typ = m.group("type")
        cls = "corrected" if typ in ("CE", "Corrected") else \
            "fatal" if typ == "Fatal" else "deferred" if typ == "Deferred" else "uncorrected-ao"
        addr = None
        if p:
            addr = (int(p.group("page"), 16) << 12) + int(p.group("off"), 16)
        label = re.search(r" on (.+?) \(", m.group("rest"))
        self._event("memory_error", "kernel-log", meta, line, phys_addr=addr,
                    pfn=None if addr is None else addr >> 12, error_class=cls,
                    message=f"EDAC {typ}", detail={"via": "edac", "mc": int(m.group("mc")),
                                                   "count": int(m.group("count")),
                                                   "label": label.group(1) if label else None})

    # ------------------------------------------------------------------ QEMU

    def _qemu(self, meta: _Meta, msg: str, line: str) -> bool:
        m = _QEMU_MCE.search(msg)
        if m:
            gpa = int(m.group("gpa"), 16)
            code = m.group("code")
            self._event("qemu", "qemu", meta, line, error_class="uncorrected-ar"
                        if code.endswith("AR") else "uncorrected-ao",
                        message="guest memory error", detail={
                            "hva": m.group("hva"), "gpa": gpa, "code": code,
                            "injected": m.group("what") != "ignored on AMD guest",
                            "large_page": m.group("lp")})
            return True
        m = _QEMU_LARGE.search(msg)
        if m:
            self._event("qemu", "qemu", meta, line, message="large page lost",
                        detail={"size": int(m.group("size")), "hva": m.group("hva"),
                                "gpa": parse_int(m.group("gpa"))})
            return True
        if _QEMU_SELF.search(msg):
            self._event("qemu", "qemu", meta, line, error_class="uncorrected-ar",
                        message="memory used by QEMU itself", detail={"vmm_memory": True})
            return True
        if _QEMU_HWERR.search(msg) and ("qemu" in line.lower() or meta.prog is None):
            self._event("qemu", "qemu", meta, line, message="hardware memory error",
                        detail={"vmm_memory": True})
            return True
        return False

    # ------------------------------------------------------------------ tracepoints

    def _trace(self, n: int, m: re.Match[str], line: str, outer: _Meta | None = None) -> bool:
        ev = m.group("ev").split(":")[-1]
        body = m.group("body")
        meta = _Meta(n, uptime=float(m.group("ts")))
        if outer is not None:  # rasdaemon's own output in syslog: the record's wall time
            meta.host, meta.time = outer.host, outer.time
        ras = _RAS_BODY.match(body)
        if ras is not None:  # rasdaemon prints its decoding: "TIMESTAMP key=value, ..."
            return self._rasdaemon_trace(ev, meta, cpu=int(m.group("cpu")),
                                         when=ras.group("time"), body=ras.group("rest"),
                                         line=line)
        cpu = int(m.group("cpu"))
        if ev == "memory_failure_event":
            t = _TP_MF.match(body)
            if not t:
                self._problem(n, "memory_failure_event not in the format 'pfn %#lx: recovery "
                              "action for %s: %s'", line)
                return True
            pfn = parse_int(t.group("pfn"))
            self._event("memory_failure", "tracepoint", meta, line, cpu=cpu, pfn=pfn,
                        phys_addr=pfn << 12, page_type=t.group("type"), result=t.group("res"),
                        detail={"group": m.group("ev").split(":")[0]
                                if ":" in m.group("ev") else None})
            return True
        if ev == "mce_record":
            t = _TP_MCE.search(body)
            if not t:
                self._problem(n, "mce_record line without 'CPU: %d, MCGc/s: %llx/%llx, "
                              "MC%d: %016Lx'", line)
                return True
            kw: dict[str, Any] = {"cpu": int(t.group("cpu")), "bank": int(t.group("bank")),
                                  "status": int(t.group("status"), 16),
                                  "mcgcap": int(t.group("mcgcap"), 16),
                                  "mcgstatus": int(t.group("mcg"), 16)}
            # two TP_printk forms: "ADDR/MISC/SYND: a/m/s, ... PROCESSOR: v:c, TIME: t,
            # SOCKET: s, APIC: a" (to 6.9), and since the PPIN and microcode fields (6.10)
            # "ADDR: a, MISC: m, SYND: s, ... PPIN: p, vendor: v, CPUID: c, time: t,
            # socket: s, APIC: a, microcode: u[, vendor data: ...]"
            a = re.search(r"ADDR/MISC(?:/SYND)?: (" + HEX + ")/(" + HEX + r")(?:/(" + HEX
                          + "))?", body)
            if a:
                kw["addr"], kw["misc"] = int(a.group(1), 16), int(a.group(2), 16)
                if a.group(3):
                    kw["synd"] = int(a.group(3), 16)
            for key, rx, base in (("addr", r"\bADDR: (" + HEX + ")", 16),
                                  ("misc", r"\bMISC: (" + HEX + ")", 16),
                                  ("synd", r"\bSYND: (" + HEX + ")", 16),
                                  ("ipid", r"IPID: (" + HEX + ")", 16),
                                  ("tsc", r"TSC: (" + HEX + ")", 16),
                                  ("walltime", r"\b(?:TIME|time): (\d+)", 10),
                                  ("socket", r"\b(?:SOCKET|socket): (\d+)", 10),
                                  ("apicid", r"APIC: (" + HEX + ")", 16)):
                x = re.search(rx, body)
                if x and key not in kw:
                    kw[key] = int(x.group(1), base)
            r = re.search(r"RIP: (" + HEX + r"):<(" + HEX + ")>", body)
            if r:
                kw["cs"], kw["ip"] = int(r.group(1), 16), int(r.group(2), 16)
            p = re.search(r"PROCESSOR: (\d+):(" + HEX + ")", body) or \
                re.search(r"\bvendor: (\d+), CPUID: (" + HEX + ")", body)
            if p:
                kw["cpuvendor"], kw["cpuid"] = int(p.group(1)), int(p.group(2), 16)
            mce = mce_record(**kw)
            e = self._event("machine_check", "tracepoint", meta, line, cpu=mce.cpu, mce=mce,
                            phys_addr=mce.addr if mce.addr else None,
                            pfn=(mce.addr >> 12) if mce.addr else None,
                            error_class=error_class(mce.severity))
            if mce.walltime:
                e["epoch"] = float(mce.walltime)
            return True
        if ev == "mc_event":
            t = _TP_MC.match(body)
            if not t:
                self._problem(n, "mc_event line not in the kernel's TP_printk format", line)
                return True
            addr = int(t.group("addr"), 16)
            typ = t.group("type")
            self._event("memory_error", "tracepoint", meta, line, cpu=cpu, phys_addr=addr,
                        pfn=addr >> 12, error_class=_mc_class(typ), message=f"mc_event {typ}",
                        detail={"via": "edac", "count": int(t.group("count")),
                                "label": t.group("label"), "mc": int(t.group("mc"))})
            return True
        if ev in _NONMEM_TRACE:
            self.out.formats.add("tracepoint")
            self.out.ignored += 1
            return True
        return False

    def _rasdaemon_trace(self, ev: str, meta: _Meta, cpu: int, when: str, body: str,
                         line: str) -> bool:
        """rasdaemon's event text (ras-mce-handler.c report_mce_event, ras-mc-handler.c,
        ras-memory-failure-handler.c): the record as rasdaemon decoded it."""
        meta.time = when
        if ev == "memory_failure_event":
            t = re.search(r"pfn=(?P<pfn>0x" + HEX + r"|\d+),? page_type=(?P<type>.+?),? "
                          r"action_result=(?P<res>\w+)", body)
            if not t:
                self._problem(meta.line, "rasdaemon memory_failure_event text without "
                              "pfn=, page_type=, action_result=", line)
                return True
            pfn = parse_int(t.group("pfn"))
            self._event("memory_failure", "tracepoint", meta, line, cpu=cpu, pfn=pfn,
                        phys_addr=pfn << 12, page_type=t.group("type"), result=t.group("res"),
                        detail={"rasdaemon_enum": True, "group": "ras"})
            return True
        if ev == "mce_record":
            kv = {k: v for k, v in re.findall(r"\b(bank|status|cpu|addr|misc|mcgstatus|"
                                              r"mcgcap|walltime|cpuvendor|socketid|apicid)"
                                              r"= ?([0-9a-fA-F]+)", body)}
            if "status" not in kv:
                self._problem(meta.line, "rasdaemon mce_record text without status=", line)
                return True
            dec = {"cpu", "walltime", "cpuvendor", "socketid"}
            val = {k: int(v, 10 if k in dec else 16) for k, v in kv.items()}
            mce = mce_record(val["status"], cpu=val.get("cpu"), bank=val.get("bank"),
                             addr=val.get("addr"), misc=val.get("misc"),
                             mcgstatus=val.get("mcgstatus"), mcgcap=val.get("mcgcap"),
                             walltime=val.get("walltime"), cpuvendor=val.get("cpuvendor"),
                             socket=val.get("socketid"), apicid=val.get("apicid"))
            self._event("machine_check", "tracepoint", meta, line, cpu=mce.cpu, mce=mce,
                        phys_addr=mce.addr or None, pfn=(mce.addr >> 12) if mce.addr else None,
                        error_class=error_class(mce.severity))
            return True
        if ev == "mc_event":
            a = re.search(r"address: 0x(" + HEX + ")", body)
            typ = re.match(r"\d+ (\w+)", body)
            self._event("memory_error", "tracepoint", meta, line, cpu=cpu,
                        phys_addr=int(a.group(1), 16) if a else None,
                        pfn=int(a.group(1), 16) >> 12 if a else None,
                        error_class=_mc_class(typ.group(1) if typ else "Corrected"),
                        message=f"mc_event {typ.group(1) if typ else ''}".strip(),
                        detail={"via": "edac"})
            return True
        self.out.formats.add("tracepoint")
        self.out.ignored += 1
        return True

    # ------------------------------------------------------------------ mcelog

    def _mcelog_line(self, meta: _Meta, msg: str, line: str) -> bool:
        s = msg.strip()
        if _MCELOG_START.match(s):
            if self._mcelog is not None and self._mcelog.get("fields") == 0:
                pass  # "Hardware event..." then "MCE 0" (or the reverse): one record
            else:
                self._close_mcelog()
                self._mcelog = {"meta": meta, "text": [], "fields": 0,
                                "started_by": s.split()[0]}
            self._mcelog["text"].append(line)
            self.out.formats.add("mcelog")
            return True
        rec = self._mcelog
        if rec is None:
            return False
        rec["text"].append(line)
        m = _MCELOG_CPU.match(s)
        if m:
            rec["cpu"], rec["bank"] = int(m.group("cpu")), int(m.group("bank"))
            rec["fields"] += 1
        m2 = _MCELOG_ADDR.search(s) if not s.startswith(("MCA:", "STATUS")) else None
        if m2 and (s.startswith(("ADDR", "MISC")) or " ADDR " in f" {s}"):
            rec["addr"] = parse_int(m2.group("addr") if m2.group("addr").startswith("0x")
                                    else "0x" + m2.group("addr"))
        m = _MCELOG_MISC.search(s) if s.startswith("MISC") else None
        if m:
            rec["misc"] = parse_int(m.group("misc") if m.group("misc").startswith("0x")
                                    else "0x" + m.group("misc"))
        m = _MCELOG_TIME.match(s)
        if m:
            rec["walltime"] = int(m.group("t"))
        m = _MCELOG_STATUS.match(s)
        if m:
            rec["status"], rec["mcgstatus"] = int(m.group("s"), 16), int(m.group("g"), 16)
            rec["fields"] += 1
        m = _MCELOG_CAP.match(s)
        if m:
            rec["mcgcap"], rec["apicid"] = int(m.group("c"), 16), int(m.group("a"), 16)
            rec["socket"] = int(m.group("s"))
        m = _MCELOG_RIP.match(s)
        if m:
            rec["cs"], rec["ip"] = int(m.group("cs"), 16), int(m.group("ip"), 16)
        m = _MCELOG_CPUID.match(s)
        if m:
            rec["cpuvendor"] = VENDOR_CODES.get(m.group("v").lower())
            self._close_mcelog()
        return True

    def _close_mcelog(self, eof: bool = False) -> None:
        rec, self._mcelog = self._mcelog, None
        if rec is None:
            return
        meta: _Meta = rec.pop("meta")
        text = "\n".join(rec.pop("text"))
        rec.pop("fields")
        rec.pop("started_by")
        if rec.get("status") is None:
            if len(text.splitlines()) > 1 or eof:
                self._problem(meta.line, "mcelog record without a STATUS line"
                              + (" (cut short at the end of the input)" if eof else ""),
                              text.splitlines()[0])
            return
        kw = {k: v for k, v in rec.items() if v is not None}
        mce = mce_record(**kw)
        ev = self._event("machine_check", "mcelog", meta, text, cpu=mce.cpu, mce=mce,
                         phys_addr=mce.addr if mce.addr else None,
                         pfn=(mce.addr >> 12) if mce.addr else None,
                         error_class=error_class(mce.severity))
        if mce.walltime:
            ev["epoch"] = float(mce.walltime)

    # ------------------------------------------------------------------ ras-mc-ctl

    def _rmc_line(self, meta: _Meta, s: str, line: str) -> bool:
        if s in _RMC_SECTIONS:
            self._rmc = _RMC_SECTIONS[s]
            self.out.formats.add("ras-mc-ctl")
            return True
        if _RMC_NONE.match(s):
            self._rmc = None
            self.out.formats.add("ras-mc-ctl")
            return True
        sec = self._rmc
        if sec is None:
            return False
        if sec == "other":
            self.out.ignored += 1
            return True
        meta.time = None
        if sec == "mf":
            m = _RMC_MF.match(s)
            if not m:
                self._problem(meta.line, "ras-mc-ctl memory failure line not in the form "
                              "'ID TIME error: pfn=..., page_type=..., action_result=...'", line)
                return True
            meta.time = m.group("time")
            try:
                pfn = parse_int(m.group("pfn"))
            except ValueError:
                self._problem(meta.line, f"pfn {m.group('pfn')!r} is not a number", line)
                return True
            self._event("memory_failure", "ras-mc-ctl", meta, line, pfn=pfn, phys_addr=pfn << 12,
                        page_type=m.group("type"), result=m.group("res"),
                        detail={"row": int(m.group("id")), "rasdaemon_enum": True})
            return True
        if sec == "mc":
            m = _RMC_MC.match(s)
            if not m:
                self._problem(meta.line, "ras-mc-ctl memory controller line not in the form "
                              "'ID TIME COUNT TYPE error(s): MSG at LABEL location: ...'", line)
                return True
            meta.time = m.group("time")
            addr = int(m.group("addr"))
            self._event("memory_error", "ras-mc-ctl", meta, line, phys_addr=addr,
                        pfn=addr >> 12, error_class=_mc_class(m.group("type")),
                        message=f"mc_event {m.group('type')}", detail={
                            "via": "edac", "row": int(m.group("id")),
                            "count": int(m.group("count")), "label": m.group("label")})
            return True
        if sec == "extlog":
            m = _RMC_EXTLOG.match(s)
            if not m:
                self._problem(meta.line, "ras-mc-ctl extlog line not understood", line)
                return True
            meta.time = m.group("time")
            addr = int(m.group("addr"), 16)
            sev = m.group("sev").strip().lower()
            self._event("memory_error", "ras-mc-ctl", meta, line, phys_addr=addr, pfn=addr >> 12,
                        error_class=_cper_class(sev), message=f"extlog {m.group('type')}",
                        detail={"via": "extlog", "row": int(m.group("id"))})
            return True
        m = _RMC_MCE.match(s)
        if not m:
            self._problem(meta.line, "ras-mc-ctl MCE line not in the form 'ID TIME error: ...'",
                          line)
            return True
        meta.time = m.group("time")
        kv = {k: int(v, 16) for k, v in _KV_HEX.findall(m.group("rest"))}
        if "status" not in kv:
            self._problem(meta.line, "ras-mc-ctl MCE line without status=0x...", line)
            return True
        cpuv = re.search(r", CPU (\d+)", m.group("rest"))
        mce = mce_record(kv.pop("status"), cpu=kv.get("cpu", 0), bank=kv.get("bank", 0),
                         addr=kv.get("addr"), misc=kv.get("misc"), mcgstatus=kv.get("mcgstatus"),
                         mcgcap=kv.get("mcgcap"), ip=kv.get("ip"), tsc=kv.get("tsc"),
                         walltime=kv.get("walltime"), apicid=kv.get("apicid"),
                         socket=kv.get("socketid"), cpuid=kv.get("cpuid"),
                         cpuvendor=int(cpuv.group(1)) if cpuv else 0)
        self._event("machine_check", "ras-mc-ctl", meta, line, cpu=mce.cpu, mce=mce,
                    phys_addr=mce.addr, pfn=None if mce.addr is None else mce.addr >> 12,
                    error_class=error_class(mce.severity),
                    message=m.group("rest").split(",")[0],
                    detail={"row": int(m.group("id"))})
        return True

    # ------------------------------------------------------------------ blocks

    def _close_blocks(self, blank: bool, eof: bool = False) -> None:
        if blank:
            self._rmc = None
            if self._mcelog is not None and self._mcelog.get("status") is not None:
                self._close_mcelog()
            return
        self._close_mce(eof=eof)
        self._close_ghes()
        self._close_mcelog(eof=eof)


def _mc_class(typ: str) -> str:
    t = typ.lower()
    return "corrected" if t.startswith("corr") else "fatal" if t == "fatal" else \
        "deferred" if t == "deferred" else "corrected" if t == "info" else "uncorrected-ao"


def _cper_class(sev: str) -> str:
    return {"recoverable": "uncorrected-ao", "fatal": "fatal", "corrected": "corrected",
            "informational": "corrected", "info": "corrected"}.get(sev, "unknown")


def arch_of(version_line: str) -> str | None:
    """The architecture a ``Linux version`` line names, if it does."""
    v = version_line.lower()
    for token, arch in (("aarch64", "aarch64"), ("arm64", "aarch64"), ("x86_64", "x86_64"),
                        ("amd64", "x86_64"), ("ppc64le", "ppc64le"), ("ppc64", "ppc64"),
                        ("s390x", "s390x"), ("riscv64", "riscv64"), ("loongarch", "loongarch64"),
                        ("i686", "i686"), ("armv7", "arm")):
        if token in v:
            return arch
    return None
