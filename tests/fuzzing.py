"""Mutations of memfail's input files and options, and the contract every run must keep.

Used by tests/test_fuzz.py (Hypothesis drives the choices) and by ``make fuzz``. The contract:
no exit status 3, no traceback, and every exit 2 is one ``memfail: error:`` line; an error in
a file names ``FILE:LINE:``.
"""

from __future__ import annotations

import contextlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "memfail"

NASTY_VALUES = (
    "-1", "0", "1e999", ".nan", "-.inf", "null", "~", "''", "[]", "{}", "[1, 2]",
    "{a: 1}", "yes", "true", "0x1000", "4K", "99999999999999999999999", "'\\0'",
    "\"\\x01\"", "2M", "1G", "3p", "abc", "!!binary aGVsbG8=", "&a 1", "*a", "1.5",
    "2026-01-01", "-0", "\"\"", "' '", "[[]]", "{value: 1}", "{value: 2, citation: x}",
    "|\n  text", "1_000", "+1", "1e3", "0o17", "[{}]", "{value: {}}",
)
BYTES = (b"\x00", b"\x01", b"\x1b", b"\x7f", b"\xff", b"\xc3", b"\t", b"\r", b"\xef\xbb\xbf",
         b"\xe2\x80\xa8", b"\n---\n", b": ", b"- ", b"{", b"[", b"'", b'"', b"&x", b"*x", b"!t ",
         b"%YAML 1.1\n", b"? ", b"#")


@dataclass(frozen=True)
class Kind:
    """A kind of input file: the shipped files of that kind and the command that reads one."""

    name: str
    files: tuple[Path, ...]
    argv: tuple[str, ...]   # "{file}" is replaced by the mutated file's path


def kinds(tmp: Path) -> list[Kind]:
    """Every file kind memfail reads, with the shipped files to mutate."""
    const = tmp / "const-oracle.yaml"
    const.write_text("rules: [{outcome: {vm_killed: 1}}]\n")
    scen = sorted((SRC / "scenario" / "library").glob("*.yaml"))
    oracle = sorted((ROOT / "tests" / "oracle").rglob("*.yaml"))
    tables = sorted((ROOT / "tests" / "regressions").glob("*oracle-table*.yaml"))
    return [
        Kind("scenario", tuple(scen + oracle[::6]), ("run", "{file}")),
        Kind("check", (SRC / "check" / "standard.yaml",),
             ("check", "{file}", "--max-states", "40", "--max-seconds", "1")),
        Kind("fleet", (SRC / "fleet" / "defaults.yaml",),
             ("fleet", "run", "{file}", "--host-years", "1000", "--workers", "1",
              "--oracle", str(const))),
        Kind("oracle-table", (const, *tables),
             ("fleet", "run", "--oracle", "{file}", "--host-years", "1000", "--workers", "1")),
    ]


def mutate(data: bytes, choices: list[int]) -> bytes:
    """Apply mutations chosen by ``choices`` (a stream of non-negative integers)."""
    it = iter(choices)

    def pick(n: int) -> int:
        return next(it, 0) % max(n, 1)

    for _ in range(1 + pick(3)):
        lines = data.split(b"\n")
        op = pick(12)
        i = pick(len(lines))
        if op == 0:      # a value replaced by something of another shape or type
            m = re.match(rb"^(\s*(?:- )?[^:#]*:\s)", lines[i])
            if m:
                lines[i] = m.group(1) + NASTY_VALUES[pick(len(NASTY_VALUES))].encode()
            else:
                lines[i] = lines[i] + b" " + NASTY_VALUES[pick(len(NASTY_VALUES))].encode()
        elif op == 1:    # a line dropped
            del lines[i]
        elif op == 2:    # a line repeated
            lines.insert(i, lines[i])
        elif op == 3:    # indentation changed
            lines[i] = (b"  " + lines[i]) if pick(2) else lines[i][2:]
        elif op == 4:    # a byte inserted
            j = pick(len(lines[i]) + 1)
            lines[i] = lines[i][:j] + BYTES[pick(len(BYTES))] + lines[i][j:]
        elif op == 5:    # the file cut short
            return b"\n".join(lines)[: pick(len(data) + 1)]
        elif op == 6:    # a key renamed
            lines[i] = re.sub(rb"^(\s*(?:- )?)([A-Za-z_]+)", rb"\1\2x", lines[i], count=1)
        elif op == 7:    # a value wrapped in a list or a mapping
            lines[i] = re.sub(rb":\s+(\S.*)$", rb": [\1]" if pick(2) else rb": {v: \1}",
                              lines[i], count=1)
        elif op == 8:    # two lines swapped
            j = pick(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 9:    # one `key: value` of a flow mapping dropped
            pairs = list(re.finditer(rb"(?:, )?\b[A-Za-z_]+: [^,{}\[\]]+", lines[i]))
            if pairs:
                m = pairs[pick(len(pairs))]
                lines[i] = lines[i][:m.start()] + lines[i][m.end():]
        elif op == 10:   # a value of a flow mapping replaced
            pairs = list(re.finditer(rb"\b([A-Za-z_]+): ([^,{}\[\]]+)", lines[i]))
            if pairs:
                m = pairs[pick(len(pairs))]
                v = NASTY_VALUES[pick(len(NASTY_VALUES))].encode()
                lines[i] = lines[i][:m.start(2)] + v + lines[i][m.end(2):]
        else:            # a value moved to another field of the same kind of line
            m = re.search(rb":\s+(\S[^#]*)$", lines[i])
            j = pick(len(lines))
            n = re.search(rb":\s+(\S[^#]*)$", lines[j])
            if m and n:
                lines[i] = lines[i][:m.start(1)] + n.group(1)
        data = b"\n".join(lines)
    return data


OPTION_VALUES = ("-1", "0", "nope", "", "1e9", "99999999999999999999", "/", "/nonexistent/x",
                 "tcp://", "--json", "1.5", "nan", "x" * 300)
COMMANDS: tuple[tuple[str, ...], ...] = (
    ("run", "anon-madvise-hwpoison"),
    ("scenarios",),
    ("profiles",),
    ("policies",),
    ("compare", "--scenario", "vm-punch-reuse"),
    ("check", "--max-states", "30", "--max-seconds", "2"),
    # one policy: a valid run takes seconds, not the minutes of every policy on a cold cache
    ("fleet", "run", "--host-years", "1000", "--workers", "1", "--policy", "minimum"),
    ("fleet", "sweep", "--grid", "scrub.period_hours=[12]", "--host-years", "1000",
     "--workers", "1", "--policy", "minimum"),
)
OPTIONS: dict[str, tuple[str, ...]] = {
    "run": ("--profile", "--policy", "--json", "--quiet"),
    "scenarios": ("--json",),
    "profiles": ("--diff", "--json"),
    "policies": ("--json",),
    "compare": ("--policy", "--scenario", "--profile", "--workers", "--json", "--markdown"),
    "check": ("--policy", "--property", "--workers", "--out", "--max-depth", "--max-states",
              "--max-seconds", "--max-memory", "--checkpoint", "--checkpoint-every",
              "--resume", "--scheduler", "--json"),
    "fleet": ("--seed", "--workers", "--policy", "--host-years", "--plot", "--oracle",
              "--scheduler", "--unit", "--outcome", "--grid", "--json"),
}


def mutate_argv(choices: list[int]) -> list[str]:
    """A command line: a documented command with one of its options given a bad value."""
    it = iter(choices)

    def pick(n: int) -> int:
        return next(it, 0) % max(n, 1)

    base = list(COMMANDS[pick(len(COMMANDS))])
    opts = OPTIONS[base[0]]
    for _ in range(1 + pick(2)):
        opt = opts[pick(len(opts))]
        if opt == "--scheduler":
            continue  # needs a network peer; test_cli covers wrong and silent schedulers
        base += [opt, OPTION_VALUES[pick(len(OPTION_VALUES))]]
    return base


@dataclass
class Outcome:
    argv: list[str]
    code: int
    out: str
    err: str


def run_inproc(argv: list[str], cwd: Path | None = None) -> Outcome:
    """Run ``memfail ARGV`` in this process (in directory ``cwd``: options such as ``--out 0``
    create directories); returns exit status and captured output."""
    from memfail.cli import main

    out, err = io.StringIO(), io.StringIO()
    where = contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext()
    with where, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as e:  # pragma: no cover - main() returns, never exits
            code = e.code if isinstance(e.code, int) else 3
    return Outcome(argv, code, out.getvalue(), err.getvalue())


LOCATED = re.compile(r"^memfail: error: .+?:\d+: ")


def contract(o: Outcome, file: Path | None = None) -> str | None:
    """What is wrong with this outcome, or None when it keeps the contract."""
    text = o.out + o.err
    if "Traceback" in text:
        return "traceback"
    if o.code == 3 or o.code not in (0, 1, 2):
        return f"exit {o.code}"
    if o.code == 2:
        lines = [ln for ln in o.err.splitlines() if ln.strip()]
        if len(lines) != 1 or not lines[0].startswith("memfail: error: "):
            return f"exit 2 not one error line: {o.err[:300]!r}"
        if file is not None and str(file) in lines[0] and not LOCATED.match(lines[0]):
            return f"exit 2 without FILE:LINE: {lines[0]!r}"
    return None
