"""The one event format every RAS log reader produces (``memfail.replay-events/1``).

Each record of a kernel log, mcelog, rasdaemon database, ``ras-mc-ctl`` text, tracepoint
output or QEMU log becomes a ``RasEvent``; what cannot be read becomes a ``Problem``. The JSON
schema is ``ReadResult.model_json_schema()`` (``memfail replay --schema``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .mce import StatusBits

SCHEMA = "memfail.replay-events/1"

Kind = Literal[
    "machine_check",     # an MCA bank record (kernel log, tracepoint, mcelog, rasdaemon)
    "memory_failure",    # memory_failure() result: pfn, page type, result
    "mf_message",        # another "Memory failure: 0x...: ..." line (SIGBUS sent, ...)
    "memory_error",      # a memory error report without MCA bank: EDAC, GHES/CPER, extlog
    "injection",         # madvise(MADV_HWPOISON) / soft-offline injection line
    "consumed",          # "Uncorrected hardware memory error in user-access at ..."
    "qemu",              # QEMU's memory-error messages
    "panic",             # Kernel panic / fatal machine check
    "kernel_bug",        # BUG:, WARNING:, Oops near memory-failure code
]
ErrorClass = Literal["corrected", "deferred", "uncorrected-ao", "uncorrected-ar", "fatal",
                     "unknown"]


class MceRecord(BaseModel):
    """One machine-check bank record (struct mce as the kernel logs it)."""

    model_config = ConfigDict(frozen=True)

    cpu: int | None = None
    bank: int | None = None
    status: int
    addr: int | None = None
    misc: int | None = None
    mcgstatus: int | None = None
    mcgcap: int | None = None
    ip: int | None = None
    cs: int | None = None
    tsc: int | None = None
    walltime: int | None = None
    socket: int | None = None
    apicid: int | None = None
    cpuvendor: int | None = None
    cpuid: int | None = None
    synd: int | None = None
    ipid: int | None = None
    bits: StatusBits
    severity: str = Field(description="corrected, deferred, UCNA, SRAO, SRAR, panic, invalid")
    memory: bool = Field(description="an error in memory (mce_is_memory_error)")


class RasEvent(BaseModel):
    """One RAS record, whatever it was read from."""

    model_config = ConfigDict(frozen=True)

    seq: int = Field(description="order of the event in the input")
    kind: Kind
    format: str = Field(description="kernel-log, tracepoint, mcelog, rasdaemon-db, "
                                    "ras-mc-ctl or qemu")
    source: str = Field(description="the file the event was read from")
    line: int | None = Field(default=None, description="1-based line of the record's first line")
    table: str | None = Field(default=None, description="rasdaemon table")
    row: int | None = Field(default=None, description="rasdaemon row id")
    host: str | None = None
    time: str | None = Field(default=None, description="timestamp as written")
    uptime: float | None = Field(default=None, description="seconds since boot (dmesg, trace)")
    epoch: float | None = Field(default=None, description="seconds since 1970 when known")
    cpu: int | None = None
    pfn: int | None = None
    phys_addr: int | None = None
    page_type: str | None = None
    result: str | None = None
    error_class: ErrorClass | None = None
    mce: MceRecord | None = None
    message: str | None = Field(default=None, description="the message part (process, reason, ...)")
    detail: dict[str, Any] = Field(default_factory=dict)
    text: str = Field(description="the record as read (lines joined with newlines)")

    def where(self) -> str:
        if self.table is not None:
            return f"{self.source}: table {self.table} row {self.row}"
        return f"{self.source}:{self.line}"


def _excerpt(text: str, limit: int) -> str:
    """``text`` escaped as Python would (control and binary bytes as ``\\xNN``), cut to about
    ``limit`` characters of the escaped form."""
    out: list[str] = []
    n = 0
    for ch in text:
        piece = "\\'" if ch == "'" else repr(ch)[1:-1]
        if n + len(piece) > limit:
            return "".join(out) + "..."
        out.append(piece)
        n += len(piece)
    return "".join(out)


class Problem(BaseModel):
    """An input that could not be read, or was read only in part."""

    model_config = ConfigDict(frozen=True)

    source: str
    line: int | None = None
    table: str | None = None
    row: int | None = None
    severity: Literal["error", "warning"] = "error"
    reason: str
    text: str = ""

    def render(self, severity: bool = True, excerpt: int = 80) -> str:
        """``SOURCE[:LINE]: [SEVERITY: ]REASON[: 'EXCERPT']``, the excerpt of the line cut to
        ``excerpt`` characters (``...`` marks the cut; ``text`` keeps the line)."""
        at = f"{self.source}:{self.line}" if self.line is not None else \
            f"{self.source}: table {self.table}" + (f" row {self.row}" if self.row is not None
                                                   else "") if self.table else self.source
        return f"{at}: " + (f"{self.severity}: " if severity else "") + self.reason + \
            (f": '{_excerpt(self.text, excerpt)}'" if self.text else "")


class SourceSummary(BaseModel):
    """What one input held."""

    source: str
    formats: list[str]
    host: str | None = None
    kernel_version: str | None = None
    arch: str | None = None
    lines: int = 0
    rows: int = 0
    events: int = 0
    ignored: int = Field(default=0, description="lines that are not RAS records")
    duplicates: int = Field(default=0, description="records seen again (dropped)")
    problems: int = 0


class ReadResult(BaseModel):
    """Everything read from the inputs: events in input order, problems, per-source counts."""

    schema_: str = Field(default=SCHEMA, alias="schema")
    sources: list[SourceSummary] = Field(default_factory=list)
    events: list[RasEvent] = Field(default_factory=list)
    problems: list[Problem] = Field(default_factory=list)

    model_config = ConfigDict(populate_by_name=True)
