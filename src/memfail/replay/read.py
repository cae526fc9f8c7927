"""Read RAS inputs (files, directories, rasdaemon databases) into one ``ReadResult``.

Text is decoded line by line (UTF-8, else Latin-1 with a warning), so a file with mixed
encodings or a truncated last line is read as far as it goes. Records seen twice (the same
record from dmesg and the journal, a duplicated line) are dropped and counted. Inputs are only
read, never written.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .events import Problem, RasEvent, ReadResult, SourceSummary
from .pagetypes import redecode
from .rasdb import is_sqlite, read_db
from .text import Found, TextReader

FORMATS = ("auto", "kernel-log", "tracepoint", "mcelog", "ras-mc-ctl", "qemu", "rasdaemon-db")
MAX_FILES = 10000


class ReplayInputError(ValueError):
    """An input that cannot be used at all (missing file, unknown format option)."""


def _lines(data: bytes, source: str, problems: list[dict[str, Any]]) -> Iterator[tuple[int, str]]:
    latin = 0
    first_latin = None
    chunks = data.split(b"\n")
    last = len(chunks) - 1
    for i, raw in enumerate(chunks):
        if i == last and raw == b"":
            break
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
            latin += 1
            first_latin = first_latin or i + 1
        yield i + 1, text
    if latin:
        problems.append({"source": source, "line": first_latin, "severity": "warning",
                         "reason": f"{latin} line(s) are not UTF-8; read as Latin-1",
                         "text": ""})
    if data and not data.endswith(b"\n"):
        problems.append({"source": source, "line": last + 1, "severity": "warning",
                         "reason": "the input ends in the middle of a line (truncated?)",
                         "text": ""})


def expand(paths: list[str]) -> list[Path]:
    """Files named, and every regular file under directories named (sorted)."""
    out: list[Path] = []
    for p in paths:
        path = Path(p)
        if path.is_dir():
            files = sorted(f for f in path.rglob("*") if f.is_file() and not f.name.startswith("."))
            out.extend(files)
        elif path.exists():
            out.append(path)
        else:
            raise ReplayInputError(f"{p}: no such file or directory")
        if len(out) > MAX_FILES:
            raise ReplayInputError(f"{p}: more than {MAX_FILES} files")
    if not out:   # only empty directories: nothing to read at all
        raise ReplayInputError(f"{paths[0]}: no file to read in this directory (hidden files "
                               "are skipped)")
    return out


def read_one(path: Path, fmt: str = "auto", kernel: str | None = None,
             display: str | None = None,
             progress: Callable[[str, int], None] | None = None) -> Found:
    source = display or str(path)
    if fmt not in FORMATS:
        raise ReplayInputError(f"unknown format {fmt!r}; formats: {', '.join(FORMATS)}")
    if fmt == "rasdaemon-db" or (fmt == "auto" and is_sqlite(path)):
        return read_db(path, source, kernel)
    try:
        data = path.read_bytes()
    except OSError as e:
        f = Found()
        f.problems.append({"source": source, "reason": f"cannot read: {e.strerror}",
                           "severity": "error", "text": ""})
        return f
    problems: list[dict[str, Any]] = []
    packed = _unpack(data)
    if packed is not None:  # a rotated, compressed log (kern.log.2.gz, .xz, .bz2)
        kind, out = packed
        if isinstance(out, str):
            f = Found()
            f.problems.append({"source": source, "reason": f"{kind} file cannot be read: {out}",
                               "severity": "error", "text": ""})
            return f
        data = out
    if data[:8] == b"LPKSHHRH":
        f = Found()
        f.problems.append({"source": source, "severity": "error", "text": "",
                           "reason": "a binary systemd journal file; export it first: "
                                     f"journalctl -k --file {source} > kern.txt"})
        return f
    if _binary(data[:4096]):
        f = Found()
        f.problems.append({"source": source, "severity": "error", "text": "",
                           "reason": "a binary file, neither text nor a rasdaemon database"})
        return f
    reader = TextReader(source, None if fmt == "auto" else fmt, progress)
    found = reader.feed_all(_lines(data, source, problems))
    found.problems.extend(problems)
    if not data.strip():
        found.problems.append({"source": source, "reason": "empty input", "severity": "warning",
                               "text": ""})
    elif not found.events and not any(p["severity"] == "error" for p in found.problems):
        found.problems.append({"source": source, "severity": "warning", "text": "",
                               "reason": f"no RAS record in its {found.lines} line(s)"})
    return found


CONTROL = frozenset(range(32)) - frozenset(b"\t\n\r\f\x1b\x08") | {0x7F}


def _binary(head: bytes) -> bool:
    """A binary file, not a log: NUL bytes, or more control bytes than text has (a log's
    only control bytes are tabs, form feeds and terminal escapes)."""
    if head.count(b"\x00") >= 8:
        return True
    ctrl = sum(1 for b in head if b in CONTROL)
    return len(head) >= 32 and ctrl * 20 > len(head)   # more than 5 %


def _unpack(data: bytes) -> tuple[str, bytes | str] | None:
    """(format, decompressed bytes or the error) for gzip, xz and bzip2 data; None otherwise."""
    import bz2
    import gzip
    import lzma
    import zlib

    for magic, kind, fn in ((b"\x1f\x8b", "gzip", gzip.decompress),
                            (b"\xfd7zXZ\x00", "xz", lzma.decompress),
                            (b"BZh", "bzip2", bz2.decompress)):
        if data.startswith(magic):
            try:
                return kind, fn(data)
            except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as e:
                return kind, str(e) or type(e).__name__
    return None


def read_inputs(paths: list[str], fmt: str = "auto", kernel: str | None = None,
                progress: Callable[[str, int, int], None] | None = None,
                line_progress: Callable[[str, int], None] | None = None) -> ReadResult:
    """Read every input; text first, so a kernel version found in a log can re-decode the
    page types of a rasdaemon database of the same host."""
    files = expand(paths)
    res = ReadResult()
    seen: set[tuple[Any, ...]] = set()
    founds: list[tuple[Path, Found]] = []
    order = sorted(range(len(files)), key=lambda i: is_sqlite(files[i]))
    version = kernel
    for n, i in enumerate(order):
        path = files[i]
        if progress is not None:
            progress(str(path), n, len(files))
        f = read_one(path, fmt, kernel or version, progress=line_progress)
        if f.version and not version:
            version = f.version
        founds.append((path, f))
    seq = 0
    for path, f in sorted(founds, key=lambda pf: files.index(pf[0])):
        summ = SourceSummary(source=str(path), formats=sorted(f.formats), host=f.host,
                             kernel_version=f.version or kernel, arch=f.arch, lines=f.lines,
                             rows=f.rows, ignored=f.ignored)
        # multi-line records are emitted when they close: put them back in line order
        for ev in sorted(f.events, key=lambda e: e.get("line") or 0):
            key = _dedupe_key(ev, f.host)
            if key is not None and key in seen:
                summ.duplicates += 1
                continue
            if key is not None:
                seen.add(key)
            ev = dict(ev)
            ev.setdefault("detail", {})
            ev["detail"] = dict(ev["detail"] or {})
            if ev["detail"].pop("rasdaemon_enum", False) and ev.get("page_type"):
                stored = ev["page_type"]
                ev["page_type"], note = redecode(stored, f.version or version)
                ev["detail"].update(stored_page_type=stored, page_type_note=note)
            if ev.get("host") is None and f.host:
                ev["host"] = f.host
            res.events.append(RasEvent(seq=seq, **ev))
            seq += 1
            summ.events += 1
        for p in f.problems:
            res.problems.append(Problem(**p))
            summ.problems += 1
        if summ.duplicates:
            res.problems.append(Problem(source=str(path), severity="warning",
                                        reason=f"{summ.duplicates} duplicated record(s) "
                                               "dropped"))
        res.sources.append(summ)
    return res


def _dedupe_key(ev: dict[str, Any], host: str | None) -> tuple[Any, ...] | None:
    """Identity of a record across copies: only records with a time can be told apart from a
    real repeat (the same page failing twice)."""
    when = ev.get("uptime") if ev.get("uptime") is not None else ev.get("time")
    if when is None and ev.get("kind") == "machine_check":
        mce = ev["mce"]
        when = (mce.tsc, mce.walltime) if (mce.tsc or mce.walltime) else None
    if when is None:
        return None
    mce = ev.get("mce")
    return (ev.get("host") or host, ev["kind"], when, ev.get("pfn"), ev.get("page_type"),
            ev.get("result"), ev.get("message"),
            None if mce is None else (mce.status, mce.addr, mce.cpu, mce.bank))
