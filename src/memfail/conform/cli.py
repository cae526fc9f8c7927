"""``memfail conform`` and ``memfail selftest``: the model against a real kernel booted under
QEMU, and scenarios written out as kernel selftests."""

from __future__ import annotations

import fnmatch
import json
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Annotated

import typer

from memfail.scenario.errors import ScenarioError
from memfail.scenario.loader import Scenario, library, load_scenario, resolve

CONFORM_EPILOG = """
Examples:

  memfail conform --kernel debian-6.1              (every built-in scenario it can express)

  memfail conform anon-madvise-hwpoison hugetlb-2m-private --kernel debian-6.1

  memfail conform tests/oracle/linux-6.1/*.yaml --json > conform.json

  memfail conform my.yaml --keep out/               (keep the generated C programs)

The kernel comes from scripts/setup-system.sh (Debian's 6.1 image, unpacked into
.cache/kernels/debian-6.1). Exit status: 0 every expressible case agrees or differs only as
listed in the known-differences file, 1 an unlisted difference, 2 bad input or no kernel,
3 internal error.
"""

SELFTEST_EPILOG = """
Examples:

  memfail selftest anon-madvise-hwpoison

  memfail selftest my.yaml -o tools/testing/selftests/mm/hwpoison-my.c
"""

DEFAULT_KNOWN = Path("tests/conform/known-differences.yaml")


def _default_known() -> Path:
    if DEFAULT_KNOWN.exists():
        return DEFAULT_KNOWN
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / DEFAULT_KNOWN).exists():
            return parent / DEFAULT_KNOWN
    return DEFAULT_KNOWN


def conform(
    scenarios: Annotated[list[str] | None, typer.Argument(
        help="Scenario files or built-in names; default: every built-in scenario.",
        show_default=False)] = None,
    kernel: Annotated[str, typer.Option(
        "--kernel", "-k", help="The kernel to boot (debian-6.1); the model runs under the "
        "matching profile (linux-6.1).")] = "debian-6.1",
    json_out: Annotated[bool, typer.Option("--json", help="Print a memfail.conform/1 JSON "
                                           "document.")] = False,
    known_file: Annotated[Path | None, typer.Option(
        "--known", help="Known differences (YAML); default tests/conform/known-differences.yaml."
    )] = None,
    timeout: Annotated[int, typer.Option("--timeout", help="Seconds per case in the guest.")
                       ] = 20,
    keep: Annotated[Path | None, typer.Option(
        "--keep", help="Write the generated C programs (and the console log) here.")] = None,
) -> None:
    """Run scenarios on a real kernel under QEMU and compare each with the model."""
    from .cgen import generate
    from .compare import CaseResult, compare_case, load_known
    from .guest import KERNELS, GuestUnavailable, boot, compile_program, require

    if kernel not in KERNELS:
        raise ScenarioError("--kernel", None, None, f"unknown kernel {kernel!r}; known: "
                            f"{', '.join(KERNELS)}")
    profile = KERNELS[kernel]
    try:  # what the run needs, before any work is done (exit 2)
        require(kernel)
    except GuestUnavailable as e:
        raise ScenarioError("--kernel", None, None, str(e)) from None
    names = scenarios or [f"{stem}.yaml" for stem in library()]
    loaded = [load_scenario(path, display) for path, display in map(resolve, names)]
    known = load_known(known_file or _default_known())
    t0 = time.monotonic()
    results: dict[str, CaseResult] = {}
    programs: dict[str, bytes] = {}
    by_name: dict[str, Scenario] = {}
    workdir = keep or Path(tempfile.mkdtemp(prefix="memfail-conform-"))
    sources: dict[str, str] = {}
    panicking: list[str] = []
    kernel_poisoners: dict[str, frozenset[str]] = {}
    for sc in loaded:
        key = _unique(sc.name, by_name)
        by_name[key] = sc
        prog = generate(sc, profile)
        if prog.expressible and prog.panics:
            if panicking:
                prog.reasons.append(f"may panic the guest, as {panicking[0]} does; one such "
                                    "case per boot: run it on its own")
            panicking.append(key)
        if prog.expressible and prog.poisons_kernel_page:
            # any other case may read the zero page (every unpopulated anonymous page):
            # one such case per boot, whatever shared page it poisons
            if kernel_poisoners:
                first, kinds = next(iter(kernel_poisoners.items()))
                prog.reasons.append(f"poisons {', '.join(sorted(prog.poisons_kernel_page))}, "
                                    f"which stays poisoned for the rest of the boot, as "
                                    f"{first} poisons {', '.join(sorted(kinds))}; one such "
                                    "case per boot: run it on its own")
            else:
                kernel_poisoners[key] = prog.poisons_kernel_page
        if prog.expressible:
            sources[key] = prog.source
        else:
            results[key] = CaseResult(key, "not expressible", reasons=prog.reasons)
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        built = dict(zip(sources, pool.map(lambda kv: compile_program(kv[1], workdir / kv[0]),
                                           sources.items()), strict=True))
    # A machine check sets hw_memory_failure for the rest of the boot, after which unpoison
    # is refused ("Disabled after HW memory failure"): run those cases last, and among them
    # first the ones that unpoison. A case that poisons the zero page (an MADV_HWPOISON over
    # an unpopulated page) goes after the others of its group (before any machine check, so
    # that it can still unpoison), so that none finds it already poisoned.
    def order(key: str) -> tuple[bool, bool, bool, bool]:
        keys = {st.key for st in by_name[key].steps}
        return (key in panicking, "hw_error" in keys, key in kernel_poisoners,
                "unpoison_pfn" not in keys)

    built = dict(sorted(built.items(), key=lambda kv: order(kv[0])))
    for key, done in built.items():
        if done.returncode != 0:
            results[key] = CaseResult(key, "not expressible", reasons=[
                "the generated program does not compile: " + done.stderr.strip()[-400:]])
        else:
            programs[key] = (workdir / key).read_bytes()
    gen_s = time.monotonic() - t0
    boot_s = 0.0
    if programs:
        err = sys.stderr
        n = len(programs)
        seen: list[str] = []

        def progress(case: str) -> None:
            seen.append(case)
            if not json_out or err.isatty():
                print(f"  [{len(seen)}/{n}] {case}", file=err, flush=True)

        log = (keep / "console.log").open("w") if keep is not None else None
        if not json_out or err.isatty():
            print(f"memfail conform: {len(programs)} programs built in {gen_s:.1f} s; booting "
                  f"{kernel} under QEMU (TCG)", file=err, flush=True)
        try:
            run = boot(programs, kernel, timeout=timeout, on_line=progress, log=log)
        except GuestUnavailable as e:
            raise ScenarioError("--kernel", None, None, str(e)) from None
        finally:
            if log is not None:
                log.close()
        boot_s = run.seconds
        for key in programs:
            results[key] = compare_case(by_name[key], run.cases.get(key, []),
                                        run.status[key], profile, known)
    ordered = [results[k] for k in by_name]
    total = time.monotonic() - t0
    failed = any(r.unlisted for r in ordered)
    stale = _stale(known, ordered)
    if json_out:
        typer.echo(json.dumps({
            "schema": "memfail.conform/1", "kernel": kernel, "profile": profile,
            "seconds": {"total": round(total, 2), "generate_and_compile": round(gen_s, 2),
                        "boot_and_run": round(boot_s, 2)},
            "ok": not failed, "cases": [r.to_dict() for r in ordered],
            "stale_known": stale}, indent=2))
    else:
        _print_table(ordered, kernel, profile, total, boot_s)
        for entry in stale:
            typer.echo(f"known difference no longer seen (remove it): {entry['case']} "
                       f"step {entry['step']} {entry['field']}")
    raise typer.Exit(1 if failed else 0)


def _grouped(reasons: list[str]) -> list[str]:
    """Reasons with the same text after "step N (ACTION): " shown once, with their steps."""
    groups: dict[str, list[str]] = {}
    for r in reasons:
        m = re.match(r"step (\d+) \(\w+\): (.*)$", r, flags=re.S)
        if m is None:
            groups.setdefault(r, [])
        else:
            groups.setdefault(m.group(2), []).append(m.group(1))
    return [f"step{'s' if len(steps) > 1 else ''} {', '.join(steps)}: {text}" if steps else text
            for text, steps in groups.items()]


def _stale(known: list, results: list) -> list[dict[str, object]]:
    """Entries of the known-differences file that match no difference of a case that ran."""
    ran = {r.name: r for r in results if r.status != "not expressible"}
    out: list[dict[str, object]] = []
    for kn in known:
        cases = [r for name, r in ran.items() if fnmatch.fnmatchcase(name, kn.case)]
        if cases and not any(kn.matches(r.name, d) for r in cases for d in r.differences):
            out.append({"case": kn.case, "step": kn.step, "field": kn.field})
    return out


def _unique(name: str, seen: dict[str, Scenario]) -> str:
    """A file name for the case in the guest (the scenario name, made safe), unique."""
    name = re.sub(r"[^\w.\-]", "_", name).lstrip(".") or "case"
    key, n = name, 2
    while key in seen:
        key, n = f"{name}-{n}", n + 1
    return key


def _fmt(v: object) -> str:
    if isinstance(v, list) and v and all(isinstance(x, dict) and "code" in x
                                         and "addr" in x for x in v):
        # signals: CODE ADDR lsb N (proc/thread), the way the model's trace prints them
        return "[" + ", ".join(f"{str(x['code']).removeprefix('BUS_MCEERR_')} {x['addr']} "
                               f"lsb {x.get('lsb')} ({x.get('proc')}/{x.get('thread')})"
                               for x in v) + "]"
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) <= 90 else s[:87] + "..."


def _print_table(results: list, kernel: str, profile: str, total: float,
                 boot_s: float) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    colour = {"agree": "green", "known": "yellow", "differ": "red",
              "not expressible": "dim"}
    table = Table("case", "verdict", "checks", "details", title=f"{kernel} (guest) vs model "
                  f"profile {profile}", box=None, pad_edge=False)
    for r in results:
        lines = []
        for d in r.differences:
            where = f"step {d.step} ({d.action})" if d.step is not None else "final"
            tag = f"known: {d.known}" if d.known else "UNLISTED"
            lines.append(f"{where} {d.field}: model {_fmt(d.model)} kernel {_fmt(d.kernel)}"
                         f"  [{tag}]")
        lines += _grouped(r.reasons)
        table.add_row(escape(r.name), f"[{colour.get(r.status, 'white')}]{r.status}[/]",
                      str(r.compared) if r.compared else "-", escape("\n".join(lines)))
    con = Console(soft_wrap=False, width=max(120, Console().width))
    con.print(table)
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    con.print(f"{len(results)} cases: {summary}; {total:.1f} s in all, {boot_s:.1f} s for the "
              "boot and the guest runs")


def selftest(
    scenario: Annotated[str, typer.Argument(help="A scenario file or built-in name.",
                                            show_default=False)],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write the C file here "
                                                "instead of stdout.")] = None,
    profile: Annotated[str | None, typer.Option(
        "--profile", "-p", help="The kernel the test is for: the profile whose predictions "
        "become the assertions where a step expects nothing (default: the scenario's "
        "`profile:`, else linux-6.1). The scenario's own expectations must hold under it.",
        show_default=False)] = None,
) -> None:
    """Write a scenario as a kselftest (tools/testing/selftests/mm style) C file."""
    from .selftest import generate_selftest

    path, display = resolve(scenario)
    sc = load_scenario(path, display)
    src = generate_selftest(sc, profile)
    if src.reasons:
        raise ScenarioError(display, None, None, "cannot be written as a selftest: "
                            + "; ".join(src.reasons))
    if output is None:
        typer.echo(src.source, nl=False)
    else:
        output.write_text(src.source)
        typer.echo(f"wrote {output}", err=True)


def register(app: typer.Typer) -> None:
    app.command("conform", epilog=CONFORM_EPILOG)(conform)
    app.command("selftest", epilog=SELFTEST_EPILOG)(selftest)
