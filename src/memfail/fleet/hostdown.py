"""The "Can a guest take the host down?" section of docs/policies.md, generated from the model.

Per preset: what the built-in guest-behaviour scenarios do to the host (machine checks,
broadcast stalls, what stops the guest), the counterexample command, and the fleet's
host-stall rate. ``python -m memfail.fleet.hostdown docs/policies.md docs/fleet.md`` rewrites the section and
docs/fleet.md's table of the defaults from one fleet run.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BEGIN = "<!-- BEGIN HOSTDOWN -->\n"
END = "<!-- END HOSTDOWN -->"
SIZES = (("4K", "vm-hostile-4k"), ("2M", "vm-hostile-2m"), ("1G", "vm-hostile-1g"))
OTHERS = ("vm-careless-1g", "vm-confidential-2m")
STORM = "vm-hostile-2m-storm"
AFTER_SCRUB = "hostile-after-scrub"
"""``vm-hostile-2m-storm`` with the patrol scrub finding the error before the guest meets it
(``detect: scrub``): the AO report comes first, then the hostile guest (shown in the section
as a YAML file to save and run)."""
FLEET_ARGS = ("fleet", "--host-years", "20000", "--seed", "0", "--workers", "1", "--json")
"""The fleet run behind the fleet column (``memfail fleet --host-years 20000 ...``)."""


@dataclass(frozen=True)
class Cell:
    """What one scenario did to the host under one preset (``Host.outcomes()``)."""

    machine_checks: int
    host_stalls: int
    host_stall_us: int
    host_stalled: bool
    host_panic: bool
    paused: int
    killed: int
    vmce: int

    @classmethod
    def of(cls, o: dict[str, Any]) -> Cell:
        return cls(int(o.get("machine_checks", 0)), int(o.get("host_stalls", 0)),
                   int(o.get("host_stall_us", 0)), bool(o.get("host_stalled")),
                   bool(o.get("host_panic")), int(o.get("vms_paused", 0)),
                   int(o.get("vms_killed", 0)), int(o.get("vmce_injected", 0)))

    def text(self) -> str:
        fate = "VM killed" if self.killed else "VM paused" if self.paused else "VM running"
        s = (f"{self.machine_checks} machine check{'s' * (self.machine_checks != 1)}, "
             f"{self.host_stalls} broadcast stall{'s' * (self.host_stalls != 1)}; {fate}")
        if self.host_stalled:
            s += f"; **host stalled** {self.host_stall_us / 1e6:.2f} s"
        if self.host_panic:
            s += "; **host panic**"
        return s


def after_scrub_yaml() -> str:
    """The scenario file of ``AFTER_SCRUB``, made from the built-in storm scenario."""
    from memfail.scenario.loader import library

    text = library()[STORM].read_text()
    text = text[:text.index("\nexpect:")] + "\n"
    text = text.replace(f"name: {STORM}", f"name: {AFTER_SCRUB}")
    text = re.sub(r"description: >-\n(  .*\n)+",
                  "description: >-\n  The hostile guest of vm-hostile-2m-storm, but the patrol "
                  "scrub finds the error first\n  (an AO report); then the guest meets it and "
                  "plays its 1200 rounds.\n", text)
    return text.replace("detect: latent}", "detect: scrub}   # found by the patrol scrub (AO)")


def run_cells(presets: list[str]) -> dict[tuple[str, str], Cell]:
    """Every guest-behaviour scenario under every preset."""
    from memfail.scenario.loader import library, load_scenario, load_scenario_text
    from memfail.scenario.runner import run_scenario

    lib = library()
    scens = {name: load_scenario(lib[name]) for name in (*[n for _, n in SIZES], *OTHERS,
                                                          STORM)}
    scens[AFTER_SCRUB] = load_scenario_text(after_scrub_yaml(), f"{AFTER_SCRUB}.yaml")
    out: dict[tuple[str, str], Cell] = {}
    for name, sc in scens.items():
        for pol in presets:
            res = run_scenario(sc, policy_override=pol)
            out[(name, pol)] = Cell.of(res.host_outcomes or res.outcomes or {})
    return out


def _answer(pol: str, cells: dict[tuple[str, str], Cell]) -> tuple[str, str]:
    """(can it take the host down, counterexample command)."""
    storm, scrub = cells[(STORM, pol)], cells[(AFTER_SCRUB, pol)]
    if storm.host_panic or storm.host_stalled:
        how = "panic" if storm.host_panic else "stalls"
        worst = [n for _, n in SIZES if cells[(n, pol)].host_stalls > 1]
        where = ", ".join(f"`{n}`" for n in worst)
        return (f"**yes, by {how}**: every load by every vCPU is another broadcast machine "
                f"check; the whole-host stall grows with the guest's effort and passes the "
                f"bound in `{STORM}` ({storm.host_stall_us / 1e6:.2f} s; also repeated in "
                f"{where})",
                f"`memfail compare --scenario {STORM} --policy {pol}`")
    if scrub.host_panic or scrub.host_stalled:
        return ("**yes, by stalls, when the patrol scrub found the error first**: the AO "
                "report leaves the poisoned huge page mapped, and the guest's later loads "
                "are machine checks that signal nobody, so a hostile guest's every load is "
                f"another broadcast ({scrub.host_stall_us / 1e6:.2f} s in "
                f"`{AFTER_SCRUB}`); when the guest meets the error first the VM is "
                f"{'killed' if storm.killed else 'paused' if storm.paused else 'stopped'}",
                f"`memfail run {AFTER_SCRUB}.yaml --policy {pol}` (the file below)")
    first = cells[("vm-hostile-2m", pol)]
    if first.killed:
        why = "the first machine check ends with the VM killed"
    elif first.paused:
        why = "the first machine check ends with the VM paused (the re-entry exits)"
    elif first.vmce > first.machine_checks:
        why = ("its touches are answered by exits and signals (vMCE injected again), not "
               "machine checks")
    else:
        why = "the guest's later touches take no machine check"
    return (f"no: {why}; `{STORM}` takes {storm.machine_checks} machine check(s), "
            f"`{AFTER_SCRUB}` {scrub.machine_checks}",
            f"`memfail compare --scenario {STORM} --policy {pol}` (no `HOST STALLED`)")


def fleet_rates(doc: dict[str, Any] | None) -> dict[str, tuple[float, float]]:
    """(host_stalled, host_stall_seconds) per host-year per policy from a memfail.fleet/1
    run document."""
    if doc is None:
        return {}
    out: dict[str, list[float]] = {}
    for r in doc["rates"]:
        if r["outcome"] in ("host_stalled", "host_stall_seconds"):
            out.setdefault(r["policy"], [0.0, 0.0])[
                0 if r["outcome"] == "host_stalled" else 1] = r["per_host_year"]["estimate"]
    return {p: (v[0], v[1]) for p, v in out.items()}


def _num(x: float) -> str:
    return "0" if x == 0 else f"{x:.3g}"


def render(presets: list[str], cells: dict[tuple[str, str], Cell],
           fleet: dict[str, tuple[float, float]]) -> str:
    """The generated part of the section: one row per preset."""
    cmd = "memfail " + " ".join(FLEET_ARGS)
    lines = [
        "| preset | hostile guest on 4K / 2M / 1G guest_memfd (`vm-hostile-4k`, `-2m`, `-1g`) "
        "| careless 1G, confidential 2M, hostile 2M after a scrub report | can it take the host "
        "down? | counterexample | fleet: "
        "host stalled past the bound, and stall seconds, per host-year |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for pol in presets:
        sizes = "<br>".join(f"{size}: {cells[(n, pol)].text()}" for size, n in SIZES)
        others = "<br>".join(f"{n.removeprefix('vm-')}: {cells[(n, pol)].text()}"
                             for n in (*OTHERS, AFTER_SCRUB))
        answer, command = _answer(pol, cells)
        if pol in fleet:
            stalled, secs = fleet[pol]
            rate = f"{_num(stalled)} stalled; {_num(secs)} s"
        else:
            rate = "(not in the fleet run)"
        lines.append(f"| `{pol}` | {sizes} | {others} | {answer} | {command} | {rate} |")
    lines += ["", f"Fleet column: `{cmd}` (the cited defaults, `rates[]` with outcomes "
                  "`host_stalled` and `host_stall_seconds`, `per_host_year`); "
                  "[fleet.md](fleet.md#guest-behaviours-and-the-hosts-stalls) says how the "
                  "guest behaviours are sampled.", "",
              f"`{AFTER_SCRUB}.yaml` (save it and run `memfail run {AFTER_SCRUB}.yaml "
              "--policy PRESET`):", "", "```yaml", after_scrub_yaml().rstrip("\n"), "```", ""]
    return "\n".join(lines)


def generate(with_fleet: bool = True) -> str:
    from memfail.fleet.params import POLICY_PRESETS

    presets = list(POLICY_PRESETS)
    doc = fleet_document() if with_fleet else None
    return render(presets, run_cells(presets), fleet_rates(doc))


def section(text: str) -> str:
    """The generated part of ``text`` (docs/policies.md)."""
    start = text.index(BEGIN) + len(BEGIN)
    return text[start:text.index(END)]


def fleet_of_section(text: str) -> dict[str, tuple[float, float]]:
    """The fleet column as written (policy -> (stalled, seconds))."""
    out = {}
    for m in re.finditer(r"^\| `([\w-]+)` \|.*\| ([\d.e+-]+) stalled; ([\d.e+-]+) s \|$",
                         section(text), re.M):
        out[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    return out


FLEET_BEGIN = "<!-- BEGIN FLEET20K -->\n"
FLEET_END = "<!-- END FLEET20K -->"
FLEET_COLUMNS = ("host_panic", "host_stalled", "host_stall_seconds", "repeated_consumption",
                 "vm_killed", "vm_paused", "guest_gib_lost", "poison_reused",
                 "early_kill_missed")
"""The columns of docs/fleet.md's table of the defaults (``fleet_table``)."""


def _iv(d: dict[str, Any]) -> str:
    if d["method"] == "rule-of-three":
        return f"0 (< {d['high']:.2g})"
    return f"{d['estimate']:.3g} [{d['low']:.3g}, {d['high']:.3g}]"


def fleet_table(doc: dict[str, Any]) -> str:
    """docs/fleet.md's table of the cited defaults, from the ``FLEET_ARGS`` run document:
    per million VM-hours, each rate with its 95 % interval."""
    cmd = "memfail " + " ".join(FLEET_ARGS)
    cal = doc["calibration"]
    lines = [f"`{cmd}`: faults per host-year {_iv(doc['faults_per_host_year'])}, "
             f"P(>= 1 per host-year) {cal['p_host_ue_per_year']:.3%}, "
             f"{doc['failure_classes']} failure classes. Per million VM-hours, with 95 % "
             "intervals:", "",
             "| policy | " + " | ".join(f"`{c}`" for c in FLEET_COLUMNS) + " |",
             "| --- |" + " --- |" * len(FLEET_COLUMNS)]
    cells = {(r["policy"], r["outcome"]): r["per_million_vm_hours"] for r in doc["rates"]}
    for pol in doc["policies"]:
        lines.append(f"| `{pol}` | " + " | ".join(_iv(cells[(pol, c)]) for c in FLEET_COLUMNS)
                     + " |")
    return "\n".join(lines) + "\n"


def fleet_block(text: str) -> str:
    """The generated table of ``text`` (docs/fleet.md)."""
    start = text.index(FLEET_BEGIN) + len(FLEET_BEGIN)
    return text[start:text.index(FLEET_END)]


def fleet_document() -> dict[str, Any]:
    """The ``FLEET_ARGS`` run document (the run both generated tables come from)."""
    from memfail.cli import main as cli

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli(list(FLEET_ARGS))
    if rc:
        raise RuntimeError(f"memfail {' '.join(FLEET_ARGS)} exited {rc}")
    doc: dict[str, Any] = json.loads(buf.getvalue())
    return doc


def main(argv: list[str]) -> int:
    """Rewrite the generated parts of docs/policies.md and docs/fleet.md from one run."""
    path = Path(argv[0] if argv else "docs/policies.md")
    fleet_md = Path(argv[1] if len(argv) > 1 else path.with_name("fleet.md"))
    from memfail.fleet.params import POLICY_PRESETS

    doc = fleet_document()
    presets = list(POLICY_PRESETS)
    new = render(presets, run_cells(presets), fleet_rates(doc))
    text = path.read_text()
    start = text.index(BEGIN) + len(BEGIN)
    path.write_text(text[:start] + new + text[text.index(END):])
    text = fleet_md.read_text()
    start = text.index(FLEET_BEGIN) + len(FLEET_BEGIN)
    fleet_md.write_text(text[:start] + fleet_table(doc) + text[text.index(FLEET_END):])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
