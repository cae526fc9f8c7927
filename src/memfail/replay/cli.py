"""`memfail replay`: read RAS logs, replay each failed page on the model, project the errors
onto a guest_memfd host under every policy.

Exit status: 0 when at least one input was read (differences, unreadable lines and logs
without any RAS record are results, listed); 2 for bad input, one ``memfail: error:`` line (a
bad option value, named, before any input is read; a missing file or a directory without
files; or not one input readable at all); 3 internal error. docs/replay.md, "Output".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .events import SCHEMA, ReadResult
from .read import FORMATS, ReplayInputError, read_inputs

JSON_SCHEMA = "memfail.replay/1"


def _fail(msg: str) -> typer.Exit:
    print(f"memfail: error: {msg}", file=sys.stderr)
    return typer.Exit(2)


def replay(
    logs: Annotated[list[str] | None, typer.Argument(
        help="Log files, rasdaemon databases or directories of them (one host per file "
             "unless the lines name their host).", show_default=False)] = None,
    fmt: Annotated[str, typer.Option(
        "--format", "-f", help=f"Input format: {', '.join(FORMATS)}. 'auto' detects per "
                               "file (SQLite magic) and per line.")] = "auto",
    kernel: Annotated[str | None, typer.Option(
        help="Kernel version of the inputs (e.g. 6.1.0-18-amd64) when no 'Linux version' "
             "line says it; also re-decodes rasdaemon's page types.")] = None,
    profile: Annotated[str | None, typer.Option(
        help="Replay under this kernel profile instead of the one the version implies.")]
        = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one memfail.replay/1 JSON "
                                                         "document.")] = False,
    schema: Annotated[bool, typer.Option(help="Print the JSON schema of the event format "
                                              "and exit.")] = False,
    events: Annotated[bool, typer.Option(help="List every event read (text view).")] = False,
    do_replay: Annotated[bool, typer.Option("--replay/--no-replay",
                                            help="Replay each failed page on the model.")]
        = True,
    do_project: Annotated[bool, typer.Option("--project/--no-project",
                                             help="Project the errors onto a guest_memfd "
                                                  "host per policy.")] = True,
    policy: Annotated[list[str] | None, typer.Option(
        help="Policy to project under (repeat); default: every registered policy.")] = None,
    host_memory: Annotated[str, typer.Option(help="Projected host's memory.")] = "512G",
    vm_size: Annotated[str, typer.Option(help="Size of each VM, or sizes used in turn: "
                                              "8G,32G.")] = "32G",
    vms: Annotated[int | None, typer.Option(help="Number of VMs (default: as many as fit "
                                                 "after 4 GiB for the host).")] = None,
    backing: Annotated[str, typer.Option(help="guest_memfd backing: 4K, 2M or 1G.")] = "2M",
    guest: Annotated[str, typer.Option(help="Guest type: default or confidential.")]
        = "default",
    shared: Annotated[bool, typer.Option(help="Guest memory shared with the VMM (in-place "
                                              "guest_memfd mapping) instead of private.")]
        = False,
    progress: Annotated[bool | None, typer.Option(
        "--progress/--no-progress", help="Progress on stderr (default: when it is a "
                                         "terminal).")] = None,
) -> int:
    """Read real RAS logs, replay each failed page on the model, and project the
    same hardware errors onto a guest_memfd host under every policy.

    Reads kernel logs (dmesg, journal, syslog) of any version, mcelog text,
    rasdaemon's SQLite database, `ras-mc-ctl --errors` text, tracepoint output
    and QEMU's memory-error messages, mixed freely. Non-RAS lines are counted;
    RAS records that cannot be read are listed with their line or row.
    Event format and verdicts: docs/replay.md.

    Examples:

    memfail replay /var/log/kern.log

    memfail replay dmesg.txt ras-mc_event.db --json

    memfail replay logs/ --no-replay --backing 1G --vm-size 64G

    memfail replay trace.txt --format tracepoint --kernel 6.12.9

    memfail replay --schema
    """
    if schema:
        print(json.dumps(ReadResult.model_json_schema(by_alias=True), indent=2))
        return 0
    if not logs:
        raise _fail("give at least one LOG (a file, a rasdaemon database or a directory); "
                    "see memfail replay --help")
    from memfail.model.policy.registry import policy_names

    from .project import HostShape, ShapeError, project
    from .replay import replay_all

    # every option is checked before any input is read (docs/replay.md, "Exit status")
    if fmt not in FORMATS:
        raise _fail(f"--format: unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    if kernel is not None and not kernel_version_ok(kernel):
        raise _fail(f"--kernel: cannot read kernel version {kernel!r}; give the release as "
                    "'uname -r' prints it (MAJOR.MINOR[.PATCH][-SUFFIX]), e.g. 6.12.9 or "
                    "6.1.0-18-amd64")
    known = policy_names()
    pols = list(policy or known)
    for p in pols:
        if p not in known:
            raise _fail(f"--policy: unknown policy {p!r}; policies: {', '.join(known)}")
    if profile is not None:
        from memfail.model.kernel.profiles import PROFILES

        if profile not in PROFILES:
            raise _fail(f"--profile: unknown kernel profile {profile!r}; profiles: "
                        f"{', '.join(PROFILES)}")
    if backing not in ("4K", "2M", "1G"):
        raise _fail(f"--backing: expected 4K, 2M or 1G, got {backing!r}")
    if guest not in ("default", "confidential"):
        raise _fail(f"--guest: expected default or confidential, got {guest!r}")
    mem_gib = _gib("--host-memory", host_memory)
    sizes = tuple(_gib("--vm-size", x.strip()) for x in vm_size.split(","))
    shape = HostShape(memory_gib=mem_gib, vm_gib=sizes[0], vms=vms,
                      backing=backing, guest=guest, shared=shared,  # type: ignore[arg-type]
                      vm_list=sizes if len(sizes) > 1 else None)
    try:
        shape.validate()
    except ShapeError as e:
        raise _fail(f"{e.option}: {e}") from None
    show = sys.stderr.isatty() if progress is None else progress

    def tick(name: str, i: int, n: int) -> None:
        if show:
            print(f"memfail replay: reading {i + 1}/{n}: {name}", file=sys.stderr)

    def lines(name: str, n: int) -> None:
        if show:
            print(f"memfail replay: {name}: {n} lines read", file=sys.stderr)

    try:
        read = read_inputs(logs, fmt, kernel, progress=tick, line_progress=lines)
    except ReplayInputError as e:
        raise _fail(str(e)) from None
    unread = unreadable(read)
    if unread is not None:  # not one input could be read at all: bad input
        raise _fail(unread)
    outcomes = replay_all(read, profile, kernel) if do_replay else []
    if show and do_replay:
        print(f"memfail replay: replayed {len(outcomes)} incident(s)", file=sys.stderr)
    proj = project(read, shape, pols, profile or "linux-6.18") if do_project else None
    from .panics import panics

    mce_panics = panics(read.events, pols)
    if as_json:
        doc: dict[str, Any] = {
            "schema": JSON_SCHEMA, "events_schema": SCHEMA,
            "sources": [s.model_dump(mode="json") for s in read.sources],
            "events": [e.model_dump(mode="json") for e in read.events],
            "problems": [p.model_dump(mode="json") for p in read.problems],
            "replay": [o.to_json() for o in outcomes],
            "verdict_by_event": {str(e.seq): {"incident": o.incident.key,
                                              "verdict": o.verdict}
                                 for o in outcomes for e in o.incident.events},
            "projection": proj,
            "panics": mce_panics,
        }
        print(json.dumps(doc, indent=1))
        return 0
    _text(read, outcomes, proj, events, mce_panics)
    return 0


def _gib(option: str, text: str) -> int:
    """A size option in whole GiB (exit 2 naming the option otherwise)."""
    from memfail.model.units import parse_size

    try:
        n = parse_size(text)
    except ValueError as e:
        raise _fail(f"{option}: {e}") from None
    if n % (1 << 30):
        raise _fail(f"{option}: expected a whole number of GiB such as 32G, got {text!r}")
    return n // (1 << 30)


def kernel_version_ok(version: str) -> bool:
    """Whether ``version`` reads as a kernel release (``6.12.9``, ``6.1.0-18-amd64``)."""
    import re

    from .pagetypes import version_key

    return bool(re.fullmatch(r"\d+\.\d+(\.\d+)?([-+~_.][\w.+~-]*)?", version)) and \
        version_key(version) is not None


def unreadable(read: ReadResult) -> str | None:
    """The ``memfail: error:`` text when not one input could be read at all (every input is
    missing its content: a binary file, a corrupt archive or database); None when at least
    one input was read, even if it held no RAS record (an empty log is a result: exit 0)."""
    if not read.sources:
        return None
    failed = []
    for s in read.sources:
        errs = [p for p in read.problems if p.source == s.source and p.severity == "error"
                and p.line is None and p.row is None and p.table is None]
        if not errs or s.events or s.lines or s.rows or s.ignored:
            return None
        failed.append(errs[0])
    first = failed[0]
    more = f" (and {len(failed) - 1} more input(s) unreadable)" if len(failed) > 1 else ""
    return f"{first.render(severity=False)}{more}"


def _panics_text(found: list[dict[str, Any]]) -> None:
    """Each machine-check panic (or machine-check message) with its rule, and per policy
    whether the policy changes it (docs/replay.md "Machine-check panics")."""
    print("\nmachine-check panics (the rule of the model; does the policy change it?):")
    for p in found:
        r = p["rule"]
        print(f"  #{p['seq']} {p['where']}: {p['message']}")
        if r is None:
            print("      no rule of the model names this message")
            continue
        kind = "panic" if r["panic"] else "not a panic"
        print(f"      {r['rule']}: {r['function']} ({r['file']}), {kind}: {r['meaning']}")
        verdict = {"none": "no", "exposure": "no (its chance: yes)", "yes": "yes"}[r["policy"]]
        print(f"      policy changes it: {verdict}: {r['why']}")
        per = p["per_policy"]
        if len(set(per.values())) == 1:
            print(f"      every policy: {next(iter(per.values()))}")
        else:
            for pol, v in per.items():
                print(f"      {pol}: {v}")


def _text(read: ReadResult, outcomes: list[Any], proj: dict[str, Any] | None,
          show_events: bool, found: list[dict[str, Any]] | None = None) -> None:
    from collections import Counter

    kinds = Counter(e.kind for e in read.events)
    ign = sum(s.ignored for s in read.sources)
    dup = sum(s.duplicates for s in read.sources)
    errs = sum(1 for p in read.problems if p.severity == "error")
    per_kind = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    print(f"memfail replay: {len(read.sources)} input(s), {len(read.events)} event(s)"
          + (f" ({per_kind})" if per_kind else "") + f", {errs} unreadable "
          f"record(s), {ign} non-RAS line(s) ignored, {dup} duplicate(s) dropped")
    print("\ninputs:")
    for s in read.sources:
        kv = f"Linux {s.kernel_version}" if s.kernel_version else "kernel version unknown"
        db = bool(s.rows) or "rasdaemon-db" in s.formats
        print(f"  {s.source}: {', '.join(s.formats) or 'nothing recognised'}; {kv}"
              f"{'; ' + s.arch if s.arch else ''}{'; host ' + s.host if s.host else ''}; "
              f"{s.rows if db else s.lines} {'rows' if db else 'lines'}, {s.events} events, "
              f"{s.ignored} ignored")
    if read.problems:
        print("\nproblems:")
        for p in read.problems:
            print(f"  {p.render()}")
    if show_events:
        print("\nevents:")
        for e in read.events:
            bits: list[str] = [e.kind]
            if e.pfn is not None:
                bits.append(f"pfn {e.pfn:#x}")
            if e.page_type:
                bits.append(f"{e.page_type}: {e.result}")
            if e.mce is not None:
                bits.append(f"CPU {e.mce.cpu} bank {e.mce.bank} status {e.mce.status:#018x} "
                            f"{e.mce.severity}")
            if e.error_class:
                bits.append(e.error_class)
            if e.message and not e.page_type:
                bits.append(e.message)
            print(f"  #{e.seq} {e.where()}: " + "; ".join(bits))
    if outcomes:
        print("\nreplay (one incident per failed page):")
        for o in outcomes:
            head = f"  {o.incident.key}: {o.verdict}"
            if o.profile:
                head += f" under {o.profile}"
            print(head)
            if o.reason:
                print(f"      {o.reason}")
            if o.logged:
                print("      logged: " + "; ".join(f"{x['type']}: {x['result']}"
                                                   for x in o.logged))
            if o.model or o.verdict != "cannot-express":
                print("      model:  " + ("; ".join(f"{x['type']}: {x['result']}"
                                                   for x in o.model) or "nothing"))
            for line in o.missing_lines:
                print(f"      logged line not printed by the model: {line.strip()}")
            if o.verdict == "differs":
                for line in o.model_lines:
                    print(f"      model line: {line}")
            for c in o.caveats:
                print(f"      note: {c}")
    if found:
        _panics_text(found)
    if proj is not None:
        sh = proj["shape"]
        vm_gib = "/".join(str(x) for x in sh["vm_gib"])
        print(f"\nprojection onto a guest_memfd host ({sh['memory_gib']} GiB, {sh['vms']} "
              f"VMs of {vm_gib} GiB, {sh['backing']} backing, {sh['guest']} guests, "
              f"{'shared' if sh['shared'] else 'private'} memory; {proj['profile']}): "
              f"{proj['errors']} hardware error(s) on {proj['hosts']} host(s)")
        lo = proj["left_out"]
        print(f"  left out: {lo['software_injections']} software injection(s), "
              f"{lo['uncorrected_without_address']} uncorrected error(s) without an address, "
              f"{lo['qemu_guest_reports']} QEMU report(s) (guest addresses only); "
              f"corrected history: {lo['corrected_records']} record(s) on "
              f"{lo['corrected_pages']} page(s); {proj['uc_with_ce_history']} uncorrected "
              "page(s) had corrected errors first")
        print("  " + f"{'policy':<16}" + "".join(f"{h:>13}" for _, h in COLUMNS))
        for pol, tot in proj["totals"].items():
            print("  " + f"{pol:<16}" + "".join(f"{_num(tot[k]):>13}" for k, _ in COLUMNS))
        for row in proj["classes"]:
            pfns = ", ".join(row["pfns"][:3]) + (" ..." if len(row["pfns"]) > 3 else "")
            if row.get("host_panic"):
                print(f"  {row['host']} {pfns}: the host panicked on it ({row['host_panic']}):"
                      " a host panic under every policy, before any policy code runs (R47)")
            gone = row.get("vm_gone") or {}
            for by in sorted({g["by"] for g in gone.values()}):
                pols = [p for p, g in gone.items() if g["by"] == by]
                g = gone[pols[0]]
                print(f"  {row['host']} {pfns}: VM {g['vm']} already gone under "
                      f"{', '.join(pols)} (error {by} killed it or lost all its memory): "
                      f"costed as free HugeTLB pool memory ({g['class']})")
        if proj["hosts"] > 1:
            print("  per host (errors; VMs killed + paused under each policy; --json for all "
                  "figures):")
            for host, figs in proj["per_host"].items():
                cells = ", ".join(f"{p} {_num(figs[p]['vm_killed'] + figs[p]['vm_paused'])}"
                                  for p in proj["policies"])
                print(f"    {host}: {figs['errors']}; {cells}")
        for c in proj["cannot_project"]:
            print(f"  cannot project {c['class']} under {c['policy']}: {c['reason']}")


COLUMNS: tuple[tuple[str, str], ...] = (
    ("host_panic", "panic"), ("host_stalled", "stalled"), ("host_stall_seconds", "stall s"),
    ("vm_killed", "killed"), ("vm_paused", "paused"), ("guest_gib_lost", "GiB lost"),
    ("poison_reused", "reused"), ("repeated_consumption", "re-consumed"),
    ("failure_record_lost", "rec lost"), ("wrong_process_signal", "wrong sig"),
    ("early_kill_missed", "early missed"))
"""The projection table's columns: every outcome of ``memfail.fleet.Outcome``, in the names
``--json`` uses (``projection.totals``)."""


def _num(v: float) -> str:
    if v == int(v):
        return str(int(v))
    return f"{v:.3f}" if v >= 0.001 else f"{v:.1e}"


__all__ = ["Path", "replay"]
