"""`memfail check --engine spin`: the SPIN engine's verdicts, JSON, counterexamples and refusals.

The verdicts are compared with the Python engine's on src/memfail/check/spin/agree.yaml,
agree-split.yaml and agree-mce.yaml (guest behaviours, machine checks waiting for their task
work, a confidential VM), small enough for both to complete: the same status per policy and property, and the same length of
the shortest counterexample (both searches are breadth-first). Every SPIN trail is written as
a scenario that `memfail run` replays with exit status 0.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from check_cfgs import MCE_THEN_VMM, SIGBUS_DISPOSITIONS, one_vm
from memfail.check.spin import AGREE_CONFIG, AGREE_MCE_CONFIG, AGREE_SPLIT_CONFIG
from memfail.cli import main

POLICIES = ["mainline", "minimum", "unmap", "kill-vm", "unusable", "future"]


def _check(capsys: pytest.CaptureFixture[str], *args: str, config: Path = AGREE_CONFIG
           ) -> tuple[int, dict]:
    rc = main(["check", str(config), "--json", *args])
    return rc, json.loads(capsys.readouterr().out)


def _policy_args(policies: list[str] = POLICIES) -> list[str]:
    return [x for p in policies for x in ("--policy", p)]


def _verdicts(result: dict) -> dict[str, tuple[str, int | None]]:
    """A policy's verdicts in the JSON: property -> (status, depth)."""
    return {n: (v["status"], v["depth"]) for n, v in result["verdicts"].items()}


def _both_complete_and_equal(py: dict, spin: dict) -> None:
    """Both engines checked the same policies to the end with the same verdicts and depths."""
    for a, b in zip(py["results"], spin["results"], strict=True):
        assert a["policy"] == b["policy"] and a["complete"] and b["complete"]
        assert _verdicts(a) == _verdicts(b), a["policy"]


def _engines_agree_on(tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str,
                      text: str, min_files: int) -> tuple[dict, dict]:
    """The configuration ``text`` checked by both engines: both FAIL something, complete,
    with the same verdicts, depths and messages, and at least ``min_files`` SPIN
    counterexamples, each of which replays on the Python model. Both JSON documents."""
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(text)
    rc_py, py = _check(capsys, "--workers", "2", config=cfg)
    rc_spin, spin = _check(capsys, "--engine", "spin", "--out", str(tmp_path / "cex"),
                           config=cfg)
    assert rc_py == rc_spin == 1
    _both_complete_and_equal(py, spin)
    for a, b in zip(py["results"], spin["results"], strict=True):
        assert {n: v["message"] for n, v in a["verdicts"].items()} == \
            {n: v["message"] for n, v in b["verdicts"].items()}, a["policy"]
    files = [v["file"] for r in spin["results"] for v in r["verdicts"].values()
             if v["status"] == "FAIL"]
    assert len(files) >= min_files
    for f in files:
        assert main(["run", f]) == 0, capsys.readouterr().out[-400:]
        capsys.readouterr()
    return py, spin


# agree-split.yaml adds a conversion of the whole folio to private and back (merge, split);
# mainline's Python search does not complete on it within its depth bound
SPLIT_POLICIES = ["minimum", "unmap", "kill-vm", "unusable", "future"]


@pytest.mark.parametrize("config,policies", [(AGREE_CONFIG, POLICIES),
                                             (AGREE_SPLIT_CONFIG, SPLIT_POLICIES),
                                             (AGREE_MCE_CONFIG, POLICIES)],
                         ids=["agree", "agree-split", "agree-mce"])
def test_spin_verdicts_equal_python_verdicts(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str],
                                             config: Path, policies: list[str]) -> None:
    rc_py, py = _check(capsys, "--workers", "2", *_policy_args(policies), config=config)
    rc_spin, spin = _check(capsys, "--engine", "spin", *_policy_args(policies),
                           "--out", str(tmp_path / "cex"), config=config)
    assert rc_py == rc_spin == 1
    for a, b in zip(py["results"], spin["results"], strict=True):
        assert a["policy"] == b["policy"]
        assert a["complete"] and b["complete"], "both engines explore everything"
        assert sorted(a["coverage"]["events_fired"]) == sorted(b["coverage"]["events_fired"])
        assert sorted(a["coverage"]["events_never"]) == sorted(b["coverage"]["events_never"])
        for name, va in a["verdicts"].items():
            vb = b["verdicts"][name]
            assert (va["status"], va["depth"]) == (vb["status"], vb["depth"]), \
                f"{a['policy']} {name}: python {va['status']}({va['depth']}), " \
                f"spin {vb['status']}({vb['depth']})"
            if va["status"] == "FAIL":
                # the SPIN trail, replayed on the Python model, gives the Python message
                assert vb["message"] == va["message"]
    # the counterexample of every SPIN FAIL replays with `memfail run`
    files = [v["file"] for r in spin["results"] for v in r["verdicts"].values()
             if v["status"] == "FAIL"]
    assert files and None not in files
    failed = []
    for f in files:
        code = main(["run", f])
        out = capsys.readouterr().out
        if code != 0:
            failed.append((Path(f).name, code, out[-400:]))
    assert not failed, f"SPIN counterexamples that do not replay: {failed}"


# Two VMs on 1G guest_memfds (a scaled 1G page of 2^pud_order = 4 pages): a conversion splits
# vm0's 1G folio and merges it back, a punch hole frees it, vm1's release frees its own for
# vm0's refill (the free list of the 1G pool).
TWO_1G = """\
name: two-1g
description: two VMs on 1G guest_memfds (scaled to 4 pages); a conversion splits vm0's 1G folio, a punch hole frees it, vm1's release frees its own for vm0's refill
policies: [mainline, minimum, unmap, kill-vm, future]
geometry: {pmd_order: 1, pud_order: 2}
host: {memory: 16G, hugepages: {1G: 3}}
processes:
  - {name: qemu0, threads: [main, vcpu0], mce_kill: {main: early, vcpu0: late}, sigbus: handler}
  - {name: qemu1, threads: [main], sigbus: handler}
guest_memfd:
  - {name: g0, size: 1G, backing: 1G, flags: [mmap, init_shared]}
  - {name: g1, size: 1G, backing: 1G, flags: [mmap]}
vms:
  - {name: vm0, vmm: qemu0, gmem: g0, type: sw-protected}
  - {name: vm1, vmm: qemu1, gmem: g1, type: sw-protected}
events:
  - {event: hw_error, vm: vm0, page: 1, detect: [latent, scrub]}
  - {event: hw_error, vm: vm1, page: 2, detect: scrub}
  - {event: convert, vm: vm0, page: 0, pages: 2, to: [private, shared], limit: 2}
  - {event: vcpu_access, vm: vm0, page: 1}
  - {event: vmm_access, vm: vm0, page: 1}
  - {event: punch_hole, vm: vm0, page: 0, pages: 4, limit: 1}
  - {event: realloc, vm: vm0, page: 0, pages: 4, limit: 1}
  - {event: release, vm: vm1, limit: 1}
  - {event: vcpu_access, vm: vm1, page: 2}
bounds: {depth: 12, errors: 1}
"""


def test_1g_guest_memfds_get_the_python_engines_verdicts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The Promela model's folio is the VMs' huge page, 2M or 1G (observe.frame_order): on 1G
    guest_memfds both engines complete with the same verdicts, depths and messages, and every
    SPIN counterexample replays on the Python model."""
    py, _spin = _engines_agree_on(tmp_path, capsys, "two-1g", TWO_1G, 10)
    verdicts = {r["policy"]: _verdicts(r) for r in py["results"]}
    assert verdicts["mainline"]["no-poison-reuse"] == ("FAIL", 3)
    assert all(v[0] == "PASS" for v in verdicts["future"].values())


def test_vms_on_guest_memfds_of_two_backings_are_refused_for_spin(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The Promela model keeps one folio size for every VM: a 2M VM beside a 1G one is
    refused at the second VM's guest_memfd backing (exit 2)."""
    text = TWO_1G.replace("{name: g1, size: 1G, backing: 1G", "{name: g1, size: 2M, backing: 2M")
    text = text.replace("hugepages: {1G: 3}", "hugepages: {1G: 2, 2M: 1}")
    text = text.replace("vm: vm1, page: 2", "vm: vm1, page: 1")  # a 2M page is 2 pages here
    cfg = tmp_path / "mixed.yaml"
    cfg.write_text(text)
    line = text.splitlines().index(next(x for x in text.splitlines() if "name: g1" in x)) + 1
    rc = main(["check", str(cfg), "--engine", "spin", "--policy", "future"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"memfail: error: {cfg}:{line}: guest_memfd[1].backing: ")
    assert "on one backing (the first VM's is 1G, this one's 2M)" in err[0]


def test_a_vmm_running_two_vms_is_refused_for_spin(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The Promela VM's ``alive`` is its VMM's: a VMM that runs two VMs, whose death (a
    BUS_ADRERR on a private page, a policy's kill) takes both down in the Python model, is
    refused at the second VM's ``vmm`` (exit 2), where a walk of both engines differed
    (vm1 still held its memory in Promela after the shared VMM was killed through vm0); the
    Python engine checks it."""
    text = TWO_1G.replace("{name: vm1, vmm: qemu1,", "{name: vm1, vmm: qemu0,")
    cfg = tmp_path / "shared.yaml"
    cfg.write_text(text)
    line = text.splitlines().index(next(x for x in text.splitlines() if "name: vm1" in x)) + 1
    rc = main(["check", str(cfg), "--engine", "spin", "--policy", "minimum"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"memfail: error: {cfg}:{line}: vms[1].vmm: vm vm1: the SPIN "
                             "engine models one VM per VMM (qemu0 also runs vm0)")
    rc = main(["check", str(cfg), "--policy", "minimum", "--max-depth", "2"])
    capsys.readouterr()
    assert rc in (0, 1)


def test_vmms_without_a_sigbus_handler_get_the_python_engines_verdicts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """VMMs whose SIGBUS takes the default action or is ignored (not QEMU): both engines
    complete with the same verdicts, depths and messages, and every SPIN counterexample
    replays. The disposition reaches the verdicts: the same VMMs with QEMU's handler let
    minimum's guests consume the failure again after the vMCE (contained FAILs), where a
    VMM without one dies of the first forced SIGBUS (contained holds). The hugetlbfs
    baseline's model takes them too."""
    py, _spin = _engines_agree_on(tmp_path, capsys, "dispositions", SIGBUS_DISPOSITIONS, 5)
    cfg = tmp_path / "dispositions.yaml"
    handler = tmp_path / "handler.yaml"
    handler.write_text(SIGBUS_DISPOSITIONS.replace("sigbus: default", "sigbus: handler")
                       .replace("sigbus: ignore", "sigbus: handler"))
    _, qemu = _check(capsys, "--workers", "2", "--policy", "minimum", config=handler)
    status = {r["policy"]: _verdicts(r)["contained"][0] for r in py["results"]}
    assert status["minimum"] == "PASS" and _verdicts(qemu["results"][0])["contained"][0] == "FAIL"
    # the hugetlbfs baseline's model too (its vCPU threads' own loads are not in it)
    cfg.write_text(SIGBUS_DISPOSITIONS.replace(", thread: vcpu0}", "}"))
    rc_py, py = _check(capsys, "--policy", "hugetlbfs", config=cfg)
    rc_spin, spin = _check(capsys, "--engine", "spin", "--policy", "hugetlbfs", config=cfg)
    assert rc_py == rc_spin
    _both_complete_and_equal(py, spin)


HANDED_OUT = """\
name: handed-out
policies: [unmap, minimum, future]
geometry: {pmd_order: 1}
host: {hugepages: {2M: 2}}
processes:
  - {name: q0, threads: [main], sigbus: handler}
  - {name: q1, threads: [main], sigbus: handler}
guest_memfd:
  - {name: g0, size: 2M, backing: 2M, flags: [mmap, init_shared]}
  - {name: g1, size: 2M, backing: 2M, flags: [mmap, init_shared]}
vms:
  - {name: vm0, vmm: q0, gmem: g0}
  - {name: vm1, vmm: q1, gmem: g1}
events:
  - {event: hw_error, vm: vm1, page: 0, detect: scrub}
  - {event: punch_hole, vm: [vm0, vm1], page: 0, pages: 2}
  - {event: vmm_access, vm: vm0, page: 0, thread: vcpu0}
bounds: {depth: 12}
"""


def test_a_vm_handed_a_failed_frame_holds_failed_memory_in_both_engines(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """vm1's frame fails and both VMs punch their folios: under unmap (a table record, no
    mark on truncate) the failed frame goes back unmarked and vm0's refault gets it
    (no-poison-reuse FAILs); the SIGBUS AR vm0's vCPU thread then takes for it is about
    vm0's own memory, so sigbus-owner-only holds. The Python monitor took vm0 for a VM no
    failure touched and failed sigbus-owner-only, while the Promela vMCE path never looked:
    a random configuration's verdicts differed. Both count a VM handed a failed frame as
    affected now (model_system._failed_pfns, promela realloc)."""
    cfg = tmp_path / "handed-out.yaml"
    cfg.write_text(HANDED_OUT)
    rc_py, py = _check(capsys, config=cfg)
    rc_spin, spin = _check(capsys, "--engine", "spin", config=cfg)
    assert rc_py == rc_spin == 1
    _both_complete_and_equal(py, spin)
    unmap = _verdicts(py["results"][0])
    assert unmap["no-poison-reuse"][0] == "FAIL" and unmap["sigbus-owner-only"][0] == "PASS"


INLINE = ["{base: minimum, unmap_stage2: folio, unmap_host: folio}", "kill-vm{unconsumed=defer}"]


def test_an_inline_policy_is_checked_by_both_engines_and_its_counterexamples_replay(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A policy given as knobs on a preset (``--policy '{base: minimum, ...}'`` or
    ``kill-vm{unconsumed=defer}``, docs/policies.md) is named by its base and the knobs it
    changes, gets the same verdicts from both engines, and differs from its base (its knobs
    reach the model: kill-vm{unconsumed=defer} defers an unconsumed failure, where kill-vm
    kills the VM at once, so the VM lives on into states kill-vm never reaches; a kcore read
    of the deferred failure reads zeros, since the scrub's memory_failure() returned 0 and x86
    took the page out of the direct map, R46); each counterexample carries the knobs as a
    scenario ``policy:`` mapping and replays."""
    args = [x for p in [*INLINE, "kill-vm"] for x in ("--policy", p)]
    rc_py, py = _check(capsys, "--workers", "2", *args)
    rc_spin, spin = _check(capsys, "--engine", "spin", *args, "--out", str(tmp_path / "cex"))
    assert rc_py == rc_spin == 1
    names = [r["policy"] for r in py["results"]]
    assert names == ["minimum{unmap_stage2=folio,unmap_host=folio}",
                     "kill-vm{unconsumed=defer}", "kill-vm"]
    _both_complete_and_equal(py, spin)
    verdicts = {r["policy"]: _verdicts(r) for r in py["results"]}
    states = {r["policy"]: r["states"] for r in py["results"]}
    assert states["kill-vm{unconsumed=defer}"] > states["kill-vm"]
    assert verdicts["kill-vm{unconsumed=defer}"]["no-host-panic"][0] == "PASS"
    files = [Path(v["file"]) for r in spin["results"] for v in r["verdicts"].values()
             if v["status"] == "FAIL" and r["policy"] != "kill-vm"]
    assert len(files) >= 3
    for f in files:
        assert re.search(r"(?m)^policy: \{\"base\": \"(minimum|kill-vm)\", \"", f.read_text())
        assert main(["run", str(f)]) == 0, capsys.readouterr().out[-400:]
        capsys.readouterr()


def test_spin_json_has_the_python_engine_shape(capsys: pytest.CaptureFixture[str]) -> None:
    rc, doc = _check(capsys, "--engine", "spin", "--policy", "unmap")
    assert rc == 1
    r = doc["results"][0]
    assert set(r) >= {"policy", "complete", "stop_reason", "states", "transitions", "depth",
                      "elapsed_s", "states_per_s", "collision_probability", "coverage",
                      "verdicts"}
    assert r["states"] > 0 and r["transitions"] >= r["states"] - 1
    assert r["engine"] == "spin"
    # the rate is the searches' own: elapsed_s also counts the compile and the replays
    assert r["states_per_s"] > r["states"] / r["elapsed_s"]
    # pan records the events that fired, not the policy hooks: those are null, not "none"
    assert r["coverage"]["events_fired"] and r["coverage"]["hooks_never"] is None
    assert r["coverage"]["hooks_fired"] is None and r["coverage"]["hooks_missing"] is None
    assert r["coverage"]["hooks_absent"] is None
    assert r["coverage"]["entries_idle"] is None  # nor whether a step changed the state
    statuses = {n: v["status"] for n, v in r["verdicts"].items()}
    assert statuses["early-told"] == "FAIL" and statuses["contained"] == "PASS"
    assert r["verdicts"]["early-told"]["depth"] == 1


def test_a_search_whose_every_property_failed_says_so(capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    """SPIN's stop reason when every selected property failed is the Python engine's
    "all-failed", not a bound it never had."""
    rc, doc = _check(capsys, "--engine", "spin", "--policy", "unmap", "--property",
                     "early-told")
    assert rc == 1
    r = doc["results"][0]
    assert r["verdicts"]["early-told"]["status"] == "FAIL"
    assert r["stop_reason"] == "all-failed" and not r["complete"]
    rc, py = _check(capsys, "--policy", "unmap", "--property", "early-told")
    assert py["results"][0]["stop_reason"] == "all-failed"


def test_bitstate_search_never_claims_pass(capsys: pytest.CaptureFixture[str]) -> None:
    rc, doc = _check(capsys, "--engine", "spin-bitstate", "--policy", "unmap")
    assert rc == 1
    v = doc["results"][0]["verdicts"]
    assert v["early-told"]["status"] == "FAIL"
    assert {x["status"] for x in v.values()} == {"FAIL", "PARTIAL"}
    assert {x["reason"] for x in v.values() if x["status"] != "FAIL"} == {"bitstate"}


def _write(tmp_path: Path, text: str) -> Path:
    base = AGREE_CONFIG.read_text()
    p = tmp_path / "c.yaml"
    p.write_text(base + text)
    return p


def test_event_outside_the_promela_model_is_refused(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write(tmp_path, "")
    text = cfg.read_text().replace(
        "events:\n", "events:\n  - {event: action, action: munmap, args: {proc: qemu0, addr: vm0.ram}, limit: 1}\n")
    cfg.write_text(text)
    line = text.splitlines().index("events:") + 2  # the event's own line
    rc = main(["check", str(cfg), "--engine", "spin", "--policy", "minimum"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "event 'action' is not modelled by the SPIN engine" in err[0]
    # the file, the line and the field at fault, as for any mistake in the file
    assert err[0].startswith(f"memfail: error: {cfg}:{line}: events[0].event: ")
    assert "`--engine python` checks it" in err[0]
    # and so does the hugetlbfs baseline's model (check/spin/hugetlbfs.py)
    rc = main(["check", str(cfg), "--engine", "spin", "--policy", "hugetlbfs"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "'action'" in err[0] and "SPIN engine" in err[0]
    assert err[0].startswith(f"memfail: error: {cfg}:{line}: events[0].event: ")


def test_spin_refusal_comes_before_any_search(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A configuration the Promela model refuses for one of its policies is refused before
    the first policy's search runs (nothing on stdout), at the field at fault."""
    cfg = _write(tmp_path, "")
    text = cfg.read_text() + "setup:\n  - {mmap: {proc: qemu0, name: extra, size: 4K}}\n"
    cfg.write_text(text)
    line = text.splitlines().index("setup:") + 2
    rc = main(["check", str(cfg), "--engine", "spin", "--policy", "mainline",
               "--policy", "minimum"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.strip() == (f"memfail: error: {cfg}:{line}: setup[0]: setup steps are not "
                           "modelled by the SPIN engine (policy 'mainline'; `--engine python` "
                           "checks it)")


def _refuse_hugetlbfs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every preset is rendered; a policy the Promela model refused (as it refuses a custom
    policy whose consumed/unconsumed is 'kernel') is stood in for by hugetlbfs."""
    from memfail.check.spin import promela

    real = promela.policy_refusal
    monkeypatch.setattr(promela, "policy_refusal", lambda spec: (
        "policy 'hugetlbfs': backing: hugetlbfs is not modelled" if spec == "hugetlbfs"
        else real(spec)))


def test_a_policy_spin_does_not_render_asked_by_name_is_a_usage_error(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _refuse_hugetlbfs(monkeypatch)
    rc = main(["check", str(AGREE_CONFIG), "--engine", "spin", "--policy", "hugetlbfs"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "'hugetlbfs'" in err[0] and "backing: hugetlbfs" in err[0]


@pytest.mark.parametrize("option", ["--max-depth", "--max-states"])
def test_a_depth_or_state_bound_for_spin_is_a_usage_error(
        capsys: pytest.CaptureFixture[str], option: str) -> None:
    """SPIN explores every reachable state: a depth or state bound it would not honour is
    refused (exit 2, one line naming the option and what SPIN does take), not ignored."""
    rc = main(["check", str(AGREE_CONFIG), "--engine", "spin", option, "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert option in err[0] and "--max-seconds and --max-memory" in err[0]


def test_spin_takes_the_time_and_memory_bounds(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """--max-seconds and --max-memory (or the configuration's bounds.seconds and
    bounds.memory_mb) reach SPIN's searches (runner.check_policy)."""
    from memfail.check.spin import engine

    seen: list[tuple[float | None, float | None]] = []
    real = engine.check_policy

    def spy(*args: Any, **kw: Any) -> Any:
        seen.append((kw.get("memory_mb"), kw.get("seconds")))
        return real(*args, **kw)

    monkeypatch.setattr(engine, "check_policy", spy)
    rc, _ = _check(capsys, "--engine", "spin", "--policy", "unmap", "--max-seconds", "600",
                   "--max-memory", "4096")
    assert rc == 1 and seen == [(4096.0, 600.0)]


def test_a_search_over_its_time_stops_with_its_report(tmp_path: Path) -> None:
    """pan over ``seconds`` gets SIGINT, prints its report (pan.c stopped(): "Interrupted")
    and the search is stopped for time: PARTIAL(time), with the states it had stored."""
    from memfail.check.spin import runner

    big = ("byte a, b, c, d;\nactive proctype p() {\n  do\n  :: a = a + 1\n  :: b = b + 1\n"
           "  :: c = c + 1\n  :: d = d + 1\n  od\n}\n")  # 2^32 states: minutes of search
    runner.compile_pan(tmp_path, big, False, opt="-O0")
    st = runner.run_pan(tmp_path, False, 0, seconds=1.0)
    assert st.stopped == "time" and not st.complete, st.output[-1000:]
    assert "Interrupted" in st.output and st.states > 1000
    assert st.elapsed < 1.0 + runner.INTERRUPT_GRACE
    assert runner._stop(st, False) == "time"


def test_policies_of_the_file_spin_does_not_render_are_named_and_skipped(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --policy, the SPIN engine checks the configuration's policies it renders and
    names the others on stderr."""
    _refuse_hugetlbfs(monkeypatch)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(AGREE_CONFIG.read_text().replace(
        "policies: [", "policies: [hugetlbfs, ", 1))
    rc = main(["check", str(cfg), "--engine", "spin", "--json"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "not checking policy 'hugetlbfs'" in err
    doc = json.loads(out)
    names = [r["policy"] for r in doc["results"]]
    assert "hugetlbfs" not in names and "unmap" in names
    # the JSON says so too: a reader of it alone knows a policy of the file was not checked
    assert doc["skipped"] == [{"policy": "hugetlbfs",
                               "reason": "policy 'hugetlbfs': backing: hugetlbfs is not "
                                         "modelled"}]
    rc = main(["check", str(cfg), "--json"])  # the Python engine checks every one
    assert rc == 1 and json.loads(capsys.readouterr().out)["skipped"] == []


def test_a_file_none_of_whose_policies_spin_renders_is_one_error_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A claiming policy whose consumed is `kernel` alone in the file: exit 2, one line with
    the reason (not a note and then an error)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(re.sub(r"(?m)^policies: \[.*\]$", 'policies: ["minimum{consumed=kernel}"]',
                          AGREE_CONFIG.read_text(), count=1))
    rc = main(["check", str(cfg), "--engine", "spin"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "renders none of the configuration's policies" in lines[0]
    assert "consumed: kernel" in lines[0] and "use --engine python" in lines[0]


def test_unknown_engine_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    # --races with --engine spin: tests/test_check_spin_races.py
    assert main(["check", str(AGREE_CONFIG), "--engine", "nusmv"]) == 2
    assert "unknown engine 'nusmv'" in capsys.readouterr().err


def test_without_a_file_spin_checks_the_standard_configuration(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`memfail check --engine spin` with no file checks the standard configuration (three
    VMs, careless / hostile / confidential guests, vcpu_mce and task_work) and completes:
    every verdict PASS or FAIL, and every counterexample replays with `memfail run`. With
    the pan a user gets: the default optimisation (the suite compiles -O0, conftest.py)."""
    from memfail.check.spin.runner import OPT_ENV

    monkeypatch.delenv(OPT_ENV, raising=False)
    rc = main(["check", "--engine", "spin", "--policy", "kill-vm", "--json",
               "--out", str(tmp_path)])
    out, _err = capsys.readouterr()
    doc = json.loads(out)
    assert doc["config"] == "standard"
    (res,) = doc["results"]
    statuses = {v["status"] for v in res["verdicts"].values()}
    assert statuses <= {"PASS", "FAIL"} and res["complete"]
    assert res["verdicts"]["early-told"]["status"] == "FAIL"  # kill-vm ignores EARLY (C6)
    assert {"guest_run", "vcpu_mce", "task_work"} <= set(res["coverage"]["events_fired"])
    assert rc == 1
    files = [v["file"] for v in res["verdicts"].values() if v["status"] == "FAIL"]
    assert files
    for f in files:
        code = main(["run", f])
        assert code == 0, f"{Path(f).name}: {capsys.readouterr().out[-400:]}"


def _pan_figures(work: Path, props: int, spin_too: bool) -> tuple[list[tuple[Any, ...]], Any]:
    """The pan compiled in ``work`` searched for no property and for all ``props`` of them:
    per search its states, matches, transitions, depth, errors, completeness and the labels
    of its trail (pan's replay, runner.guided; with ``spin_too``, asserted to be spin's
    guided simulation's too); and the last search's stats."""
    from memfail.check.spin import runner

    out = []
    for mask in (0, (1 << props) - 1):
        st = runner.run_pan(work, False, mask)
        labels = runner.guided(work, mask) if st.errors else None
        if labels is not None and spin_too:  # pan's replay of its trail is spin's guided one
            assert labels[0] and labels == runner.guided_spin(work, mask)
        out.append((st.states, st.matched, st.transitions, st.depth, st.errors, st.complete,
                    labels))
    return out, st


def test_the_optimisation_of_pan_changes_no_figure_or_trail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The standard configuration's pan (kill-vm) compiled at the default optimisation (-O2,
    as `memfail check --engine spin` compiles it) and at -O0 (as the test suite compiles its
    pans, conftest.py): the same states, matches, transitions, depth, errors and
    completeness, for no property and for all of them, and the same trail, replayed by pan
    and by spin's guided simulation. ``$MEMFAIL_SPIN_OPT`` picks the level; one the runner
    does not know is refused with one line."""
    from memfail.check.config import standard_config
    from memfail.check.model_system import ModelSystem
    from memfail.check.spin import runner
    from memfail.check.spin.promela import render
    from memfail.inputs import InputError

    s = ModelSystem(standard_config(), "kill-vm")
    s.initial()
    rendered = render(s)
    runs: dict[str, list[tuple[Any, ...]]] = {}
    for opt in ("", "-O0"):  # "": the default
        monkeypatch.setenv(runner.OPT_ENV, opt)
        assert runner.default_opt() == (opt or runner.OPT) and runner.OPT == "-O2"
        work = tmp_path / (opt or "default")
        work.mkdir()
        runner.compile_pan(work, rendered.text, False)
        runs[opt], _st = _pan_figures(work, len(rendered.props), True)
    assert runs[""] == runs["-O0"]
    assert runs[""][0][0] > 1000 and runs[""][0][5] and runs[""][1][4] == 1
    assert (tmp_path / "default" / "pan").resolve() != (tmp_path / "-O0" / "pan").resolve()
    monkeypatch.setenv(runner.OPT_ENV, "-O9")
    with pytest.raises(InputError, match=r"^\$MEMFAIL_SPIN_OPT: give one of -O0, .*'-O9'$"):
        runner.default_opt()


def test_an_optimisation_the_compiler_is_not_given_is_refused_before_any_work(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A ``$MEMFAIL_SPIN_OPT`` the runner does not pass on is a usage error of a SPIN check
    (exit 2, one line naming the variable and the levels), before anything is rendered or
    compiled; the Python engine does not read it."""
    from memfail.check.spin import runner

    monkeypatch.setenv(runner.OPT_ENV, "-O9 -march=native")
    monkeypatch.setattr(runner, "compile_pan", lambda *a, **k: pytest.fail("compiled"))
    rc = main(["check", str(AGREE_CONFIG), "--engine", "spin", "--policy", "unmap"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("memfail: error: $MEMFAIL_SPIN_OPT: give one of -O0, -O1")
    rc = main(["check", str(AGREE_CONFIG), "--policy", "unmap", "--max-depth", "1"])
    assert rc in (0, 1), capsys.readouterr().err


# ------------------------------------------------------------ one pan per configuration


def test_the_policies_of_a_configuration_share_one_pan_and_keep_their_verdicts(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The Promela of two policies differs only in the knob values, which pan reads at start
    (runtime_knobs): one compile serves both, and the knobs still decide the verdicts (a
    knob that changed nothing would give both policies the same ones)."""
    from memfail.check.config import load_config
    from memfail.check.model_system import ModelSystem
    from memfail.check.spin import runner
    from memfail.check.spin.promela import render

    texts, knobs = [], []
    for pol in ("mainline", "future"):
        s = ModelSystem(load_config(AGREE_CONFIG), pol)
        s.initial()
        text, k = runner.runtime_knobs(render(s).text)
        texts.append(text)
        knobs.append(k)
    assert texts[0] == texts[1] and knobs[0] != knobs[1]
    cache = runner._PanCache()
    monkeypatch.setattr(runner, "PAN_CACHE", cache)
    built: list[Path] = []
    get = cache.get

    def counting_get(text: str, flags: list[str]) -> Path:
        built.append(get(text, flags))
        return built[-1]

    monkeypatch.setattr(cache, "get", counting_get)
    rc, spin = _check(capsys, "--engine", "spin", "--workers", "2",
                      *_policy_args(["mainline", "future"]))
    assert rc == 1 and len(built) == 2 and built[0] == built[1]
    assert len([d for d in cache._root.iterdir() if (d / "pan").exists()]) == 1  # type: ignore[union-attr]
    rc_py, py = _check(capsys, *_policy_args(["mainline", "future"]))
    assert rc_py == 1
    for a, b in zip(py["results"], spin["results"], strict=True):
        assert _verdicts(a) == _verdicts(b), a["policy"]
    statuses = [{v["status"] for v in r["verdicts"].values()} for r in spin["results"]]
    assert "FAIL" in statuses[0] and statuses[1] == {"PASS"}


def _replays_alike(system: Any, rendered: Any, seq: list[int]) -> None:
    """The labels ``seq`` replayed on the Python model and on the Promela one: both take
    every step, with the same observation after each (agree.compare names the first
    difference)."""
    from memfail.check.spin.agree import compare, replay_promela, replay_python

    walk = replay_python(system, rendered, seq)
    assert walk.blocked is None
    promela = replay_promela(system, rendered, seq)
    assert promela.blocked is None and promela.labels == seq
    assert compare(system, rendered, walk, promela, ("python", "promela")) is None


# Two VMs; VM a's frame is poisoned and VM b's freed, then VM a punches its memory and faults
# it back: dequeue_hugetlb_folio hands it VM b's frame (the lowest free one without
# PG_hwpoison), which the Promela model follows by moving the frame into VM a's slot
# (promela.frame_slots).
TWO_VMS_ONE_FRAME = """\
name: two-vms-one-frame
policies: [mainline, kill-vm]
host: {memory: 8G, hugepages: {2M: 3}}
processes:
  - {name: qa, threads: [main, vcpu0, vcpu1], mce_kill: {main: early, vcpu0: late, vcpu1: late}, sigbus: handler}
  - {name: qb, threads: [main, vcpu0], sigbus: handler}
guest_memfd:
  - {name: ga, size: 2M, backing: 2M}
  - {name: gb, size: 2M, backing: 2M, flags: [mmap, init_shared]}
vms:
  - {name: a, type: sw-protected, vmm: qa, gmem: ga, vcpus: 2, behaviour: hostile}
  - {name: b, type: snp, vmm: qb, gmem: gb, behaviour: confidential}
events:
  - {event: hw_error, vm: a, page: [0, 2], detect: latent}
  - {event: vcpu_mce, vm: a, page: 0, vcpu: [0, 1]}
  - {event: task_work, vm: a, vcpu: [0, 1]}
  - {event: guest_run, vm: a, page: 0, rounds: 2}
  - {event: hw_error, vm: b, page: 1, detect: scrub}
  - {event: vmm_access, vm: b, page: 1}
  - {event: guest_run, vm: b, page: 1, rounds: 2}
  - {event: punch_hole, vm: a, page: 0, pages: 4, limit: 1}
  - {event: realloc, vm: a, page: 0, pages: 4, limit: 1}
bounds: {depth: 40, errors: 2}
"""


def test_a_vm_given_another_vms_freed_frame_is_followed_by_spin(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Where the allocator hands a VM the frame another VM freed (promela.frame_slots), the
    SPIN search follows it to the end: both engines complete with the same verdicts at the same
    depths. Under mainline no-poison-reuse FAILs past that point in both (the Promela model
    used to end the path there and say PARTIAL)."""
    cfg = tmp_path / "two.yaml"
    cfg.write_text(TWO_VMS_ONE_FRAME)
    rc_spin, spin = _check(capsys, "--engine", "spin", config=cfg)
    rc_py, py = _check(capsys, "--workers", "2", config=cfg)
    assert rc_spin == rc_py == 1
    _both_complete_and_equal(py, spin)
    assert spin["results"][0]["verdicts"]["no-poison-reuse"]["status"] == "FAIL"


def test_engines_agree_on_a_walk_where_a_vm_takes_another_vms_freed_frame(
        tmp_path: Path) -> None:
    """A Python walk whose VM a refaults, after its punch hole, into the frame VM b freed (VM
    b's VMM died of its consumed error): the Promela replay takes every step with the same
    observation after each, the frames' fields reported by their first owner."""
    from memfail.check.config import load_config
    from memfail.check.model_system import ModelSystem
    from memfail.check.spin.promela import render

    cfg = tmp_path / "two.yaml"
    cfg.write_text(TWO_VMS_ONE_FRAME)
    system = ModelSystem(load_config(cfg), "mainline")
    state = system.initial()
    rendered = render(system)
    names = [f"{lab[0]}:{dict(lab[1]).get('vm')}" for lab in rendered.labels]
    path = ["hw_error:a", "vcpu_mce:a", "hw_error:b", "vmm_access:b", "punch_hole:a",
            "guest_run:a", "vcpu_mce:a"]
    # the first label of each kind the path names
    seq = [next(k for k, n in enumerate(names) if n == want) for want in path]
    for k in seq[:6]:
        state = system.step(state, rendered.labels[k])
    frames = system._frames(state.host)
    assert frames[("a", 0)] == system.pfn_of[("b", 0)], "VM a runs on VM b's frame"
    _replays_alike(system, rendered, seq)


# Two VMs that punch their memory and allocate it again: the HugeTLB free list is last in,
# first out (enqueue_hugetlb_folio() puts a freed folio at its head, R55), so the VM that
# allocates next takes the frame, or the spare, freed last (promela.frame_slots).
FREED_LAST = """\
name: freed-last
policies: [mainline, future, hugetlbfs]
host: {memory: 8G, hugepages: {2M: 4}}
processes:
  - {name: qa, threads: [main, vcpu0], sigbus: handler}
  - {name: qb, threads: [main, vcpu0], sigbus: handler}
guest_memfd:
  - {name: ga, size: 2M, backing: 2M}
  - {name: gb, size: 2M, backing: 2M}
vms:
  - {name: a, vmm: qa, gmem: ga}
  - {name: b, vmm: qb, gmem: gb}
events:
  - {event: hw_error, vm: a, page: 0, detect: scrub}
  - {event: punch_hole, vm: a, page: 0, pages: 4, limit: 2}
  - {event: punch_hole, vm: b, page: 0, pages: 4, limit: 1}
  - {event: realloc, vm: a, page: 0, pages: 4, limit: 1}
  - {event: realloc, vm: b, page: 0, pages: 4, limit: 1}
  - {event: vcpu_access, vm: [a, b], page: 0}
bounds: {depth: 40, errors: 1}
"""


@pytest.mark.parametrize("path, holds", [
    # b's frame, freed after a's: a takes it, not its own (the lowest)
    (["punch_hole:a", "punch_hole:b", "realloc:a", "realloc:b", "vcpu_access:a"],
     {"a": "b", "b": "a"}),
    # a's frame is poisoned (skipped): a takes a spare, frees it above b's frame, and b
    # takes that spare, not its own frame
    (["hw_error:a", "punch_hole:a", "realloc:a", "punch_hole:b", "punch_hole:a",
      "realloc:b", "vcpu_access:b"], {"b": None}),
], ids=["frame", "spare"])
@pytest.mark.parametrize("policy, races", [("mainline", False), ("hugetlbfs", False),
                                           ("mainline", True), ("hugetlbfs", True)],
                         ids=["gmem", "hugetlbfs", "gmem-races", "hugetlbfs-races"])
def test_the_free_list_hands_out_the_frame_freed_last(
        tmp_path: Path, path: list[str], holds: dict[str, str | None], policy: str,
        races: bool) -> None:
    """dequeue_hugetlb_folio_node_exact() takes the folio freed last (R55): in the Python
    model the VM that allocates after two frees holds the frame (or spare) freed second, and
    the Promela replay of the walk takes every step with the same observation after each,
    on guest_memfd (promela.py) and on hugetlbfs (hugetlbfs.py), atomic and lock-granular
    (--races: each event's stages run to its end before the next event starts)."""
    from memfail.check import races as r
    from memfail.check.config import load_config
    from memfail.check.model_system import ModelSystem
    from memfail.check.spin.promela import render
    from memfail.check.spin.stages import render_races

    cfg = tmp_path / "freed-last.yaml"
    cfg.write_text(FREED_LAST)
    system = ModelSystem(load_config(cfg), policy, races)
    state = system.initial()
    rendered = render_races(system) if races else render(system)
    names = [f"{lab[0]}:{dict(lab[1]).get('vm')}" for lab in rendered.labels]
    seq = []
    for step in path:
        k = names.index(step)
        while True:
            seq.append(k)
            state = system.step(state, rendered.labels[k])
            more = [lab for lab in system.enabled(state) if r.is_continuation(lab)
                    and r.origin(lab) == r.origin(rendered.labels[k])]
            if not more:
                break
            k = rendered.labels.index(more[0])
    # --races runs some of these events in stages on guest_memfd; on hugetlbfs, each whole
    assert (len(seq) > len(path)) == (races and policy == "mainline")
    frames = system._frames(state.host)
    for vm, first in holds.items():
        want = system.pfn_of[(first, 0)] if first is not None else None
        got = frames.get((vm, 0))
        if want is None:  # a spare: neither VM's first frame
            assert got is not None and got not in {system.pfn_of[("a", 0)],
                                                    system.pfn_of[("b", 0)]}
        else:
            assert got == want, f"VM {vm} runs on VM {first}'s frame"
    _replays_alike(system, rendered, seq)


def test_both_engines_search_the_free_list_alike(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """FREED_LAST searched whole by both engines: complete, same verdicts at the same
    depths."""
    cfg = tmp_path / "freed-last.yaml"
    cfg.write_text(FREED_LAST)
    rc_spin, spin = _check(capsys, "--engine", "spin", config=cfg)
    rc_py, py = _check(capsys, "--workers", "2", config=cfg)
    assert rc_spin == rc_py
    _both_complete_and_equal(py, spin)


def _searches_with_and_without(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, patch: str,
                               bitstate: bool) -> tuple[dict[bool, list[tuple[Any, ...]]],
                                                        list[str]]:
    """AGREE_CONFIG's --races model of mainline searched with pan patched as the runner
    patches it and with the runner's ``patch`` left out: per pan, for no property and for
    one failing at depth 6, the states, matches, transitions, depth, errors, completeness
    and trail; and each search's output."""
    from memfail.check.config import load_config
    from memfail.check.model_system import ModelSystem
    from memfail.check.spin import runner
    from memfail.check.spin.stages import render_races

    s = ModelSystem(load_config(AGREE_CONFIG), "mainline", races=True)
    s.initial()
    rendered = render_races(s)
    masks = [0, 1 << rendered.props.index("no-host-panic")]
    runs: dict[bool, list[tuple[Any, ...]]] = {}
    outputs = []
    for patched in (True, False):
        if not patched:
            monkeypatch.setattr(runner, patch, lambda panc: None)
        monkeypatch.setattr(runner, "PAN_CACHE", runner._PanCache())
        work = tmp_path / str(patched)
        work.mkdir()
        runner.compile_pan(work, rendered.text, bitstate, opt="-O0")  # figures, not speed
        runs[patched] = []
        for mask in masks:
            st = runner.run_pan(work, bitstate, mask)
            trail = [f.read_text() for f in work.glob("model.pml*.trail")]
            runs[patched].append((st.states, st.matched, st.transitions, st.depth, st.errors,
                                  st.complete, trail))
            outputs.append(st.output)
        runs[patched].append(((work / "pan").resolve().parent / "pan.c",))
    return runs, outputs


@pytest.mark.parametrize("bitstate", [False, True], ids=["exhaustive", "bitstate"])
def test_skipping_steps_that_change_nothing_keeps_every_figure_of_the_search(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bitstate: bool) -> None:
    """pan, patched to skip a step that leaves the state as it was (runner._skip_stutter),
    stores the same states, reports the same matches, transitions and depth, and leaves the
    same trail as the unpatched pan, breadth first and depth first (bitstate); and it did skip
    steps, which parse_pan adds back (a patch that skipped nothing would pass the rest)."""
    runs, outputs = _searches_with_and_without(tmp_path, monkeypatch, "_skip_stutter",
                                               bitstate)
    skipped = []
    for out in outputs:
        m = re.search(r"(?m)^MF_STUTTER (\d+)$", out)
        skipped.append(int(m.group(1)) if m else None)
    assert runs[True][:2] == runs[False][:2]
    assert runs[True][0][4] == 0 and runs[True][1][4] == 1 and runs[True][1][6]
    states = runs[True][0][0]
    assert isinstance(states, int) and skipped[0] and skipped[0] > states, \
        "most steps change nothing"
    assert skipped[2:] == [None, None], "the unpatched pan prints no count"


def test_a_hash_table_zeroed_lazily_keeps_every_figure_of_the_search(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pan with its hash table taken from calloc() (runner._lazy_zero: zero pages faulted in
    as states hash into them, no memset of the whole table) stores the same states, matches,
    transitions and depth and leaves the same trail as pan zeroing it with memset."""
    runs, _ = _searches_with_and_without(tmp_path, monkeypatch, "_lazy_zero", False)
    for patched in (True, False):
        panc = runs[patched][2][0]
        assert ("? calloc(1, n) : malloc(n)" in panc.read_text()) == patched
    assert runs[True][:2] == runs[False][:2]
    assert runs[True][0][0] > 1000 and runs[True][1][4] == 1 and runs[True][1][6]


def test_huge_pages_env_adds_the_tunable_and_keeps_the_users() -> None:
    """runner.huge_pages_env asks glibc for transparent huge pages, after any tunables the
    user set, and leaves a user's own choice of ``glibc.malloc.hugetlb`` alone."""
    from memfail.check.spin.runner import HUGE_PAGES, huge_pages_env

    assert huge_pages_env({}) == {"GLIBC_TUNABLES": HUGE_PAGES}
    assert huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=1"}) == \
        {"GLIBC_TUNABLES": f"glibc.malloc.arena_max=1:{HUGE_PAGES}"}
    assert huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) == {}


def test_a_search_on_huge_pages_keeps_every_figure_and_trail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """run_pan gives pan the huge-page tunable (runner.huge_pages_env), and pan stores the
    same states, matches, transitions and depth and leaves the same trail with it as with
    ``glibc.malloc.hugetlb=0`` (the user's setting, which the runner keeps)."""
    import subprocess

    from memfail.check.config import load_config
    from memfail.check.model_system import ModelSystem
    from memfail.check.spin import runner
    from memfail.check.spin.stages import render_races

    s = ModelSystem(load_config(AGREE_CONFIG), "mainline", races=True)
    s.initial()
    rendered = render_races(s)
    mask = 1 << rendered.props.index("no-host-panic")
    runner.compile_pan(tmp_path, rendered.text, False, opt="-O0")  # figures, not speed
    seen: list[str | None] = []
    popen = subprocess.Popen

    def spy(*args: Any, **kw: Any) -> Any:
        seen.append(kw["env"].get("GLIBC_TUNABLES"))
        return popen(*args, **kw)

    monkeypatch.setattr(runner.subprocess, "Popen", spy)
    runs = []
    for tunables in (None, "glibc.malloc.hugetlb=0"):
        if tunables is None:
            monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
        else:
            monkeypatch.setenv("GLIBC_TUNABLES", tunables)
        st = runner.run_pan(tmp_path, False, mask)
        trail = [f.read_text() for f in tmp_path.glob("model.pml*.trail")]
        runs.append((st.states, st.matched, st.transitions, st.depth, st.errors, trail))
    assert seen == [runner.HUGE_PAGES, "glibc.malloc.hugetlb=0"]
    assert runs[0] == runs[1]
    assert runs[0][4] == 1 and runs[0][5] and runs[0][0] > 100


def test_array_sizes_are_read_from_the_models_numeric_defines() -> None:
    """pack.array_size: the element count of a declaration's ``[size]`` from digits, ``+``,
    ``*``, parentheses and ``#define NAME digits``; None for a name with no such #define or
    anything else (it is never evaluated)."""
    from memfail.check.spin.pack import array_size, numeric_defines

    defines = numeric_defines("#define NP 12\n#define NV 3\n#define ALIAS err\n")
    assert defines == {"NP": "12", "NV": "3"}
    assert array_size("NP", defines) == 12
    assert array_size("NV * 4 + 1", defines) == 13
    assert array_size("(NV+1)*2", defines) == 8
    assert array_size("NQ", defines) is None
    assert array_size("ALIAS", defines) is None
    assert array_size("__import__('os')", defines) is None
    assert array_size("NP - 1", defines) is None


def test_word_ops_rewrite_a_folios_unrolled_bits_and_nothing_else() -> None:
    """pack.word_ops: the unrolled per-page reads and assignments of one folio's bits of a
    packed array become one operation on the word (an OR or AND chain, a constant for every
    page, ``X[k] = Y[k] || Z[k] || R``); a chain of the wrong length or order, an assignment
    whose rest names the array it writes (its value would change as the pages are written),
    and an array that is not packed stay as they are."""
    from memfail.check.spin.pack import pack_bits

    head = "#define NPG 3\nbit x[6]; bit y[6]; bit z[6]; byte b[6];\n"

    def packed(body: str) -> str:
        return pack_bits(head + body).split("\n", 2)[2]

    m = "(7 << ((v) * NPG))"
    assert packed("#define ANY(v) (x[(v) * NPG + 0] || x[(v) * NPG + 1] || x[(v) * NPG + 2])"
                  ) == f"#define ANY(v) ((x & {m}) != 0)"
    assert packed("#define ALL(v) (x[(v) * NPG + 0] && x[(v) * NPG + 1] && x[(v) * NPG + 2])"
                  ) == f"#define ALL(v) ((x & {m}) == {m})"
    assert packed("inline z(v) { x[(v) * NPG + 0] = 0; x[(v) * NPG + 1] = 0; "
                  "x[(v) * NPG + 2] = 0 }") == f"inline z(v) {{ x = x & ~{m} }}"
    assert packed("inline o(v) { x[(v) * NPG + 0] = 1; x[(v) * NPG + 1] = 1; "
                  "x[(v) * NPG + 2] = 1 }") == f"inline o(v) {{ x = x | {m} }}"
    assert packed("inline d(v) { " + "; ".join(
        f"x[(v) * NPG + {k}] = y[(v) * NPG + {k}] || z[(v) * NPG + {k}] || (b[v] == 2)"
        for k in range(3)) + " }") == \
        f"inline d(v) {{ x = (x & ~{m}) | ((y | z) & {m}) | (((b[v] == 2)) -> {m} : 0) }}"
    # X[k] = X[k] || Y[k]: bit k reads only bit k
    assert packed("inline s(v) { " + "; ".join(
        f"x[(v) * NPG + {k}] = x[(v) * NPG + {k}] || y[(v) * NPG + {k}]" for k in range(3))
        + " }") == f"inline s(v) {{ x = (x & ~{m}) | ((x | y) & {m}) }}"
    kept = [
        "#define TWO(v) (x[(v) * NPG + 0] || x[(v) * NPG + 1])",
        "#define ODD(v) (x[(v) * NPG + 0] || x[(v) * NPG + 2] || x[(v) * NPG + 1])",
        "inline r(v) { " + "; ".join(f"x[(v) * NPG + {k}] = y[(v) * NPG + {k}] || "
                                     "x[(v) * NPG + 0]" for k in range(3)) + " }",
        "inline mix(v) { x[(v) * NPG + 0] = 0; x[(v) * NPG + 1] = 1; x[(v) * NPG + 2] = 0 }",
    ]
    for body in kept:
        out = packed(body)
        assert "(7 <<" not in out and "NPG + 1))" in out, out   # still bit by bit
    assert packed("#define B(v) (b[(v) * NPG + 0] || b[(v) * NPG + 1] || b[(v) * NPG + 2])"
                  ) == "#define B(v) (b[(v) * NPG + 0] || b[(v) * NPG + 1] || b[(v) * NPG + 2])"


def test_event_counters_only_for_limited_events() -> None:
    """promela.limited_events: ``ev_cnt`` has an element per event with a ``limit`` (the
    standard configuration's three), not a byte per event that stays 0 in every state."""
    from memfail.check.config import standard_config
    from memfail.check.model_system import ModelSystem
    from memfail.check.spin.promela import limited_events
    from memfail.check.spin.stages import render_races

    cfg = standard_config()
    limited = limited_events(cfg)
    assert limited and len(limited) < len(cfg.events)
    assert all(cfg.events[i].limit is not None for i in limited)
    s = ModelSystem(cfg, "kill-vm", races=True)
    s.initial()
    text = render_races(s).text
    assert f"byte ev_cnt[{len(limited)}];" in text
    used = {int(i) for i in re.findall(r"ev_cnt\[(\d+)\] <", text)}
    assert used == set(range(len(limited)))


def _unhidden_with_zero_checks(text: str) -> str:
    """``text`` with its hidden scratch variables in the state vector again (all but the
    property mask ``chk``, which pan's c_code sets in the first step, and ``mf_c``, which
    pan's c_code sets in a step that has to wait for memory_failure(): both C variables
    only while hidden) and an assertion, at the end of every step, that each of them but
    ``chk`` is zero."""
    from memfail.check.spin.pack import array_size, numeric_defines

    defines = numeric_defines(text)
    zero = []
    for name, size in re.findall(r"\bhidden\s+(?:byte|short|int)\s+(\w+)(?:\[([^\]]+)\])?",
                                 text):
        if name == "chk":
            continue
        count = array_size(size, defines) if size else 0
        assert count is not None, f"{name}[{size}]"
        zero += [f"{name}[{i}] == 0" for i in range(count)] if size else [f"{name} == 0"]
    assert len(zero) > 10, "the model declares its scratch variables hidden"
    text = re.sub(r"\bhidden\s+(?=(?:byte|int)\s+(?!(?:chk|mf_c)\b))", "", text)
    steps = text.count("assert(!VIOLATED) }")
    assert steps > 5
    text = text.replace("assert(!VIOLATED) }", "assert(!VIOLATED); assert(SCRATCH_ZERO) }")
    at = text.index("active proctype checker")
    return text[:at] + "#define SCRATCH_ZERO (" + " && ".join(zero) + ")\n" + text[at:]


@pytest.mark.parametrize("config, policy, races", [
    ("standard", "kill-vm", False), ("agree", "mainline", True),
    ("hugetlbfs", "hugetlbfs", True), ("hugetlbfs", "hugetlbfs", False)])
def test_hidden_variables_are_zero_after_every_step(tmp_path: Path, config: str, policy: str,
                                                     races: bool) -> None:
    """The scratch variables the models declare ``hidden`` (outside the state vector, which
    pan's breadth-first search allows only as runner._allow_hidden patches it) are zero after
    every step: put back into the state vector, with an assertion after each step that they
    are zero, the search finds no violation and stores the same states, matches and
    transitions to the same depth as the search with them hidden. So no state differs in
    them, and hiding them loses nothing."""
    from memfail.check.config import load_config, standard_config
    from memfail.check.model_system import ModelSystem
    from memfail.check.spin import AGREE_HUGETLBFS_CONFIG, runner
    from memfail.check.spin.promela import render
    from memfail.check.spin.stages import render_races

    cfg = {"standard": standard_config, "agree": lambda: load_config(AGREE_CONFIG),
           "hugetlbfs": lambda: load_config(AGREE_HUGETLBFS_CONFIG)}[config]()
    s = ModelSystem(cfg, policy, races=races)
    s.initial()
    text = (render_races(s) if races else render(s)).text
    figures: list[tuple[int, ...]] = []
    for variant in (text, _unhidden_with_zero_checks(text)):
        work = tmp_path / str(len(figures))
        work.mkdir()
        runner.compile_pan(work, variant, False, opt="-O0")  # the figures, not the speed
        st = runner.run_pan(work, False, 0)
        assert st.complete and st.errors == 0, st.output[-2000:]
        figures.append((st.states, st.matched, st.transitions, st.depth))
    vector = re.findall(r"State-vector (\d+) byte", st.output)
    assert figures[0] == figures[1] and figures[0][0] > 1000
    assert vector, st.output[-2000:]


def test_pans_whole_vector_copy_is_the_variable_by_variable_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A --races step that has to wait for memory_failure() is undone from a copy of the
    state: pan copies the vector whole in c_code (stages.MF_SV_SAVE, MF_SV_RESTORE), spin's
    simulations variable by variable. With the c_code taken out, pan runs the Promela copy
    too: the same states, matches, transitions, depth and trail, for no property and for all
    of them (a copy that is not restored gives 11,516 states instead of 11,159 here). The
    standard configuration's eight presets under --races have the same states and verdicts
    as before the c_code copy (docs/check.md)."""
    from memfail.check.config import load_config
    from memfail.check.model_system import ModelSystem
    from memfail.check.spin import runner, stages

    s = ModelSystem(load_config(AGREE_CONFIG), "mainline", races=True)
    s.initial()
    runs: dict[bool, list[tuple[Any, ...]]] = {}
    for whole in (True, False):
        if not whole:
            monkeypatch.setattr(stages, "MF_SV_SAVE", "skip")
            monkeypatch.setattr(stages, "MF_SV_RESTORE", "skip")
        rendered = stages.render_races(s)
        text = rendered.text
        assert text.count("-> mf_save()") > 3, "steps wait for memory_failure() here"
        assert ("memcpy(mf_sv" in text) == whole
        # the pan cache's key is the model's text: the unrestored copy compiles on its own,
        # the whole copy is the pan the other tests of this model use
        work = tmp_path / str(whole)
        work.mkdir()
        runner.compile_pan(work, text, False, opt="-O0")  # the figures, not the speed
        runs[whole], _st = _pan_figures(work, len(rendered.props), False)
    assert runs[True] == runs[False]
    assert runs[True][0][0] > 1000 and runs[True][0][5]


@pytest.mark.parametrize("config, policy, races", [
    ("standard", "kill-vm", False), ("agree", "mainline", True), ("split", "future", True),
    ("hugetlbfs", "hugetlbfs", True)])
def test_packed_bit_arrays_keep_every_figure_and_trail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, config: str, policy: str,
        races: bool) -> None:
    """pan of the model with its bit arrays packed into unsigned fields (pack.pack_bits, as
    runner.compile_pan builds it) stores the same states, matches and transitions to the same
    depth as pan of the model as rendered, for no property and for all of them (the search
    stops at the first violation), and leaves the same trail, in a smaller state vector; pan's
    replay of each trail (``pan -r``, runner.guided) prints the labels and observations spin's
    guided simulation of it does (``spin -t``)."""
    from memfail.check.config import load_config, standard_config
    from memfail.check.model_system import ModelSystem
    from memfail.check.spin import AGREE_HUGETLBFS_CONFIG, runner
    from memfail.check.spin.pack import packable
    from memfail.check.spin.promela import render
    from memfail.check.spin.stages import render_races

    cfg = {"standard": standard_config, "agree": lambda: load_config(AGREE_CONFIG),
           "split": lambda: load_config(AGREE_SPLIT_CONFIG),
           "hugetlbfs": lambda: load_config(AGREE_HUGETLBFS_CONFIG)}[config]()
    s = ModelSystem(cfg, policy, races=races)
    s.initial()
    rendered = render_races(s) if races else render(s)
    assert len(packable(rendered.text)) >= 8
    runs: dict[bool, list[tuple[Any, ...]]] = {}
    for packed in (True, False):
        if not packed:
            monkeypatch.setattr(runner, "pack_bits", lambda text: text)
        # (the pan cache's key is the model's text as compiled: packed or not, each its own)
        work = tmp_path / str(packed)
        work.mkdir()
        runner.compile_pan(work, rendered.text, False, opt="-O0")  # the figures, not the speed
        assert ("unsigned err :" in (work / "model.pml").read_text()) == packed
        runs[packed], st = _pan_figures(work, len(rendered.props), True)
        vector = re.search(r"State-vector (\d+) byte", st.output)
        assert vector, st.output[-2000:]
        runs[packed].append((int(vector.group(1)),))
    assert runs[True][:2] == runs[False][:2]
    assert runs[True][0][0] > 1000 and runs[True][0][5]
    assert runs[True][2][0] < 0.8 * runs[False][2][0], "the vector is smaller"


PUNCH_SECOND_VM = """\
name: punch-second-vm
policies: [mainline, minimum, unmap, kill-vm, unusable, future]
host: {memory: 8G, hugepages: {2M: 3}}
processes:
  - {name: q0, threads: [main, vcpu0], mce_kill: {main: late, vcpu0: early}, sigbus: handler}
  - {name: q1, threads: [main, vcpu0], sigbus: handler}
guest_memfd:
  - {name: g0, size: 2M, backing: 2M, flags: [mmap, init_shared]}
  - {name: g1, size: 2M, backing: 2M, flags: [mmap, init_shared]}
vms:
  - {name: a, vmm: q0, gmem: g0}
  - {name: b, vmm: q1, gmem: g1}
events:
  - {event: hw_error, vm: a, page: 0, detect: [latent, scrub]}
  - {event: hw_error, vm: b, page: 1, detect: scrub}
  - {event: vcpu_access, vm: a, page: 0}
  - {event: vcpu_access, vm: b, page: [0, 1]}
  - {event: vmm_access, vm: b, page: 1}
  - {event: punch_hole, vm: b, page: 0, pages: 4, limit: 1}
  - {event: fault, vm: a, page: 0}
  - {event: fault, vm: b, page: 0}
  - {event: release, vm: b, limit: 1}
bounds: {errors: 2, depth: 40}
"""


def test_a_punch_hole_on_the_second_vm_agrees(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Punch hole on a VM other than the first: both engines complete with the same verdicts
    and depths for every preset, mainline included, where VM a's VMM dies, its poisoned frame
    goes back to the pool unmarked and VM b's refault takes it (promela.frame_slots)."""
    cfg = tmp_path / "punch.yaml"
    cfg.write_text(PUNCH_SECOND_VM)
    rc_spin, spin = _check(capsys, "--engine", "spin", config=cfg)
    rc_py, py = _check(capsys, "--workers", "2", config=cfg)
    assert rc_spin == rc_py == 1
    _both_complete_and_equal(py, spin)


# Punch holes that do not cover a VM's whole folio beside whole ones: kvm_gmem_fallocate()
# fails them with -EINVAL (not aligned to the huge folio, R71), hugetlbfs_punch_hole() rounds
# the range in to whole huge pages and frees none; each still counts against its limit.
PARTIAL_PUNCHES = """\
name: partial-punches
policies: [minimum, kill-vm, future, hugetlbfs]
host: {memory: 8G, hugepages: {2M: 3}}
processes:
  - {name: qa, threads: [main, vcpu0], mce_kill: {main: early, vcpu0: late}, sigbus: handler}
  - {name: qb, threads: [main, vcpu0], mce_kill: {main: early, vcpu0: late}, sigbus: handler}
guest_memfd:
  - {name: ga, size: 2M, backing: 2M, flags: [mmap, init_shared]}
  - {name: gb, size: 2M, backing: 2M, flags: [mmap, init_shared]}
vms:
  - {name: a, type: default, vmm: qa, gmem: ga}
  - {name: b, type: default, vmm: qb, gmem: gb}
events:
  - {event: hw_error, vm: a, page: 1, detect: [latent, scrub]}
  - {event: vcpu_access, vm: a, page: 1}
  - {event: vmm_access, vm: a, page: 1}
  - {event: punch_hole, vm: a, page: 1, pages: 2, limit: 1}
  - {event: punch_hole, vm: b, page: 0, pages: 4, limit: 1}
  - {event: punch_hole, vm: b, page: 2, pages: 2, limit: 1}
  - {event: vcpu_access, vm: b, page: 0}
  - {event: realloc, vm: b, page: 0, pages: 4, limit: 1}
  - {event: realloc, vm: b, page: 0, pages: 8, limit: 1}
bounds: {errors: 1, depth: 30}
"""
# past the end of a hugetlbfs file, hugetlbfs_fallocate() grows it by a huge page, which the
# SPIN engine refuses (one huge page per VM): the hugetlbfs preset runs without it
PAST_END = "  - {event: realloc, vm: b, page: 0, pages: 8, limit: 1}\n"


@pytest.mark.parametrize("races", [False, True], ids=["atomic", "races"])
def test_a_punch_hole_of_part_of_a_folio_agrees(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], races: bool) -> None:
    """A punch hole of part of a VM's folio frees nothing in the Python model (guest_memfd:
    -EINVAL; hugetlbfs: no whole huge page in the range) and in the Promela one, nor does an
    allocation past the end of a guest_memfd allocate anything; both engines
    complete with the same verdicts and depths for every preset, with and without --races,
    and a walk through the partial punches is accepted step for step."""
    from memfail.check.config import load_config
    from memfail.check.model_system import ModelSystem
    from memfail.check.races import continuation
    from memfail.check.spin.promela import render
    from memfail.check.spin.stages import render_races

    gmem, hfs = tmp_path / "partial.yaml", tmp_path / "partial-hugetlbfs.yaml"
    gmem.write_text(PARTIAL_PUNCHES.replace(", hugetlbfs]", "]", 1))
    hfs.write_text(PARTIAL_PUNCHES.replace("[minimum, kill-vm, future, hugetlbfs]",
                                           "[hugetlbfs]", 1).replace(PAST_END, ""))
    extra = ("--races",) if races else ()
    for cfg in (gmem, hfs):
        rc_spin, spin = _check(capsys, "--engine", "spin", *extra, config=cfg)
        rc_py, py = _check(capsys, "--workers", "2", *extra, config=cfg)
        assert rc_spin == rc_py and rc_py in (0, 1)
        _both_complete_and_equal(py, spin)
    for policy, cfg, pages in (("future", gmem, 8), ("hugetlbfs", hfs, 4)):
        system = ModelSystem(load_config(cfg), policy, races)
        state = system.initial()
        rendered = render_races(system) if races else render(system)
        names = [(lab[0], dict(lab[1]).get("vm"), dict(lab[1]).get("page"),
                  dict(lab[1]).get("pages")) for lab in rendered.labels]
        # then the whole punch hole, and an allocation: on guest_memfd past the file's end
        # (-EINVAL: the punched VM stays without memory)
        path = [("hw_error", "a", 1, None), ("punch_hole", "a", 1, 2),
                ("punch_hole", "b", 2, 2), ("punch_hole", "b", 0, 4), ("realloc", "b", 0, pages),
                ("vcpu_access", "a", 1, None), ("vcpu_access", "b", 0, None)]
        seq = [names.index(want) for want in path]
        free = continuation(rendered.labels[seq[3]], "punch.free")
        if free in rendered.labels:  # --races on guest_memfd: the whole punch hole goes on
            seq.insert(4, rendered.labels.index(free))
        before = system._frames(state.host)
        for k in seq[:3]:
            state = system.step(state, rendered.labels[k])
        assert system._frames(state.host) == before, "a partial punch hole frees nothing"
        assert state.counts != system.initial().counts, "and counts against its limit"
        _replays_alike(system, rendered, seq)


def test_a_pan_out_of_memory_leaves_its_properties_partial(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """pan stores every state it has seen; with ``bounds.memory_mb`` (or its share of the
    memory available) as its address-space limit it stops with "out of memory", and what it
    had not decided is PARTIAL(memory), never PASS (a pan the kernel's OOM killer ended used
    to be read as a search that found nothing). The --races search of minimum on the standard
    configuration needs gigabytes. pan is compiled -O0 here (figures, not speed: gcc -O2
    takes over a minute on this model)."""
    from memfail.check.config import STANDARD
    from memfail.check.spin import runner

    compile_pan = runner.compile_pan
    monkeypatch.setattr(runner, "compile_pan",
                        lambda *a, **k: compile_pan(*a, **{**k, "opt": "-O0"}))
    cfg = tmp_path / "small.yaml"
    cfg.write_text(STANDARD.read_text().replace("bounds:\n", "bounds:\n  memory_mb: 300\n", 1))
    rc, doc = _check(capsys, "--engine", "spin", "--races", "--policy", "minimum", config=cfg)
    (r,) = doc["results"]
    assert not r["complete"] and r["stop_reason"] == "memory"
    undecided = [v for v in r["verdicts"].values() if v["status"] != "FAIL"]
    assert undecided and {(v["status"], v["reason"]) for v in undecided} == \
        {("PARTIAL", "memory")}
    assert rc == (1 if len(undecided) < len(r["verdicts"]) else 0)


def test_a_pan_ended_by_a_signal_did_not_finish(tmp_path: Path) -> None:
    """A pan ended by a signal (the OOM killer's SIGKILL) has printed no report: the search
    did not finish, whatever its (empty) output says."""
    from memfail.check.spin import runner

    pan = tmp_path / "pan"
    pan.write_text("#!/bin/sh\nkill -9 $$\n")
    pan.chmod(0o755)
    st = runner.run_pan(tmp_path, False, 0, limit=1 << 30)
    assert not st.complete and st.stopped == "killed" and "signal 9" in st.output
    assert runner._stop(st, False) == "killed"
    assert runner.parse_pan("").stopped == "killed", "no report: not a finished search"


def test_a_pan_that_stopped_for_memory_beside_others_runs_again_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With --workers N, pans run side by side and may exhaust the memory together: a search
    that stopped for memory (out of memory, or killed by the OOM killer) runs once more when
    no other pan runs (runner.PANS), and its verdicts are that search's; alone, it is not
    run again."""
    import threading

    from memfail.check.config import load_config
    from memfail.check.model_system import ModelSystem
    from memfail.check.spin import runner

    calls: list[tuple[bool, int]] = []
    other_done = threading.Event()

    def fake_run_pan(work: Path, bitstate: bool, mask: int = 0,
                     limit: int | None = None, seconds: float | None = None
                     ) -> runner.PanStats:
        assert seconds is None, "no time bound was given"
        calls.append((runner.PANS._alone, runner.PANS._running))
        if len(calls) == 1:
            return runner.PanStats(states=10, complete=False, stopped="killed")
        assert other_done.is_set(), "run alone: after the other pan ended"
        return runner.PanStats(states=99, output="MF_FIRED\n")

    monkeypatch.setattr(runner, "run_pan", fake_run_pan)
    monkeypatch.setattr(runner, "compile_pan", lambda *a, **k: None)
    monkeypatch.setattr(runner, "PANS", runner._PanSlots())
    system = ModelSystem(load_config(AGREE_CONFIG), "future")

    inside = threading.Event()

    def other_pan() -> None:  # another policy's pan, running while the first one is killed
        with runner.PANS.shared():
            inside.set()
            while not calls:
                threading.Event().wait(0.01)
            threading.Event().wait(0.2)
            other_done.set()

    t = threading.Thread(target=other_pan)
    t.start()
    inside.wait()
    run = runner.check_policy(system, ["early-told"], share=2)
    t.join()
    assert calls[0] == (False, 2) and calls[1] == (True, 0)
    assert run.result.states == 99 and run.result.complete
    assert run.result.verdicts["early-told"].status == "PASS"
    calls.clear()
    run = runner.check_policy(system, ["early-told"], share=1)
    assert len(calls) == 1 and run.result.stop_reason == "killed"
    assert run.result.verdicts["early-told"].reason == "killed"


CFG_MCE_THEN_VMM = one_vm("[future, mainline, hugetlbfs]", MCE_THEN_VMM,
                          name="mce-then-vmm-read")


def test_a_vmm_load_in_the_machine_check_window_is_not_counted_by_either_engine(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A vCPU's machine check queues its task work; the VMM's main thread loads the same
    poison before it runs: the hardware's window, which `contained` does not count
    (docs/check.md). The Promela model counted the VMM's load (only a vCPU's was held to
    the window), so SPIN's trail failed to replay and the whole run stopped."""
    cfg = tmp_path / "mce.yaml"
    cfg.write_text(CFG_MCE_THEN_VMM)
    main(["check", str(cfg), "--json"])
    py = json.loads(capsys.readouterr().out)
    rc = main(["check", str(cfg), "--engine", "spin", "--json"])
    spin = json.loads(capsys.readouterr().out)
    assert rc in (0, 1)
    for a, b in zip(py["results"], spin["results"], strict=True):
        assert a["complete"] and b["complete"]
        assert {n: v["status"] for n, v in a["verdicts"].items()} == \
            {n: v["status"] for n, v in b["verdicts"].items()}, a["policy"]
        assert a["verdicts"]["contained"]["status"] == "PASS"


def test_a_trail_the_python_model_does_not_confirm_is_a_bug_named_step_by_step(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Stood in for by a Python property that never fails: SPIN's trail is not confirmed,
    the run stops with exit status 3 (a bug in memfail, not bad input) and the message gives
    the trail as the Python model ran it."""
    from memfail.check.spin import engine

    class Never:
        def check(self, host: Any, monitor: Any) -> None:
            return None

    monkeypatch.setattr(engine, "property_def", lambda name: Never())
    rc = main(["check", str(AGREE_CONFIG), "--engine", "spin", "--policy", "mainline"])
    err = capsys.readouterr().err.strip()
    assert rc == 3 and err.count("\n") == 0
    assert "the engines disagree" in err and "policy 'mainline'" in err
    assert re.search(r"steps: 1 [a-z_]+\(vm=", err), err
    assert "holds in the Python model" in err


def test_spin_coverage_of_a_search_stopped_at_a_violation_is_what_fired_before(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """pan prints what fired at exit, at a violation too: a search that stopped because
    every selected property failed lists every kind it fired, and the kinds it did not as
    not fired before it stopped (it used to list the trails' kinds and call nothing
    unfired)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CFG_MCE_THEN_VMM.replace("policies: [future, mainline, hugetlbfs]",
                                            "policies: [mainline]"))
    main(["check", str(cfg), "--engine", "spin", "--property", "no-record-lost", "--json"])
    r = json.loads(capsys.readouterr().out)["results"][0]
    assert r["stop_reason"] == "all-failed"
    cov = r["coverage"]
    assert sorted(cov["events_fired"] + cov["events_never"]) == \
        ["hw_error", "vcpu_mce", "vmm_access"]
    assert len(cov["events_fired"]) > 1   # more than the trail's one kind


def test_a_pan_that_cannot_start_within_the_memory_limit_says_so(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CFG_MCE_THEN_VMM.replace("policies: [future, mainline, hugetlbfs]",
                                            "policies: [future]"))
    # the limit holds from pan's first allocation (it used to be set on the running pan,
    # which raced with its hash table: 60 MiB sometimes completed, 100 MiB did not)
    for mb in ("60", "100", "120"):
        main(["check", str(cfg), "--engine", "spin", "--max-memory", mb])
        out = capsys.readouterr().out
        assert "0 states" in out and "pan stored no state" in out and "raise it" in out, mb
        assert "spin-bitstate" not in out
    main(["check", str(cfg), "--engine", "spin", "--max-memory", "200"])
    assert "complete" in capsys.readouterr().out


def test_spins_d_step_bound_is_named_not_passed_on_raw(tmp_path: Path) -> None:
    """`spin -a` refusing a step longer than its d_step bound is a limit of the engine on
    this configuration, said as one (what to change), not SPIN's line of Promela."""
    from memfail.check.spin import runner

    fake = tmp_path / "spin"
    fake.write_text("#!/bin/sh\necho 'spin: model.pml:876, Error: d_step sequence too long'\n"
                    "exit 1\n")
    fake.chmod(0o755)
    with pytest.raises(RuntimeError) as e:
        runner._run([str(fake), "-a", "model.pml"], tmp_path)
    assert str(e.value) == runner.DSTEP_TOO_LONG
    assert "pmd_order" in str(e.value) and "--engine python" in str(e.value)
    fake.write_text("#!/bin/sh\necho 'spin: model.pml:3, Error: syntax error'\nexit 1\n")
    with pytest.raises(RuntimeError, match="syntax error"):
        runner._run([str(fake), "-a", "model.pml"], tmp_path)
