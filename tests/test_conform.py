"""`memfail conform` on a real kernel: Debian's 6.1 image booted under QEMU (TCG), every
built-in host scenario the generator can express and the cases in tests/conform/cases run in
the guest and compared with the model's linux-6.1 predictions. A difference that is not in
tests/conform/known-differences.yaml fails. Needs `scripts/setup-system.sh` (run by
`make test`); without it the test fails and says so."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from memfail.cli import main
from memfail.conform.guest import GuestUnavailable, require
from memfail.scenario import library

# one boot for the module's tests: keep them on one xdist worker (pyproject: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("conform")

HERE = Path(__file__).parent
CASES = sorted(str(p) for p in (HERE / "conform" / "cases").glob("*.yaml"))
HOST = [n for n in library() if not n.startswith("vm-")]


@pytest.fixture(scope="module")
def conform_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    try:
        require("debian-6.1")
    except GuestUnavailable as e:
        pytest.fail(f"the conformance run needs its system set-up: {e}")
    out = tmp_path_factory.mktemp("conform")
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["conform", *HOST, *CASES, "--kernel", "debian-6.1", "--json",
                   "--keep", str(out)])
    doc = json.loads(buf.getvalue())
    doc["rc"] = rc
    doc["keep"] = str(out)
    return doc


def test_no_unlisted_difference(conform_run: dict) -> None:
    bad = [(c["case"], d) for c in conform_run["cases"] for d in c["differences"]
           if d["known"] is None]
    assert not bad, "unlisted differences (add them to tests/conform/known-differences.yaml " \
        "with a reason, or fix the model):\n" + "\n".join(f"{c}: {d}" for c, d in bad)
    assert conform_run["rc"] == 0 and conform_run["ok"]


def test_cases_really_ran_in_the_guest(conform_run: dict) -> None:
    by = {c["case"]: c for c in conform_run["cases"]}
    compared = [c for c in conform_run["cases"] if c["status"] in ("agree", "known")]
    assert len(compared) >= 15
    # the canonical case agrees step by step: madvise AO-free on 6.1, then AR on the access
    assert by["anon-madvise-hwpoison"]["status"] == "agree"
    assert by["anon-madvise-hwpoison"]["compared"] >= 20
    console = (Path(conform_run["keep"]) / "console.log").read_text()
    assert "@mf-boot 6.1." in console and "hwpoison=1" in console
    assert '"code":4,"addr":"buf+0x80","lsb":12' in console  # the handler's record


def _kernel(run: dict, case: str, step: int) -> dict:
    by = {c["case"]: c for c in run["cases"]}
    return next(s["kernel"] for s in by[case]["steps"] if s["step"] == step)


def test_kernel_facts_behind_the_issue_11_cases(conform_run: dict) -> None:
    """What 6.1 does in the cases written for issue 11's defects (the model's side changes
    as the defects are fixed; the kernel's does not)."""
    assert _kernel(conform_run, "madvise-twice", 3)["errno"] == "EFAULT"
    [ao] = _kernel(conform_run, "hugetlb-early-kill-ao", 2)["signals"]
    assert (ao["code"], ao["addr"], ao["lsb"]) == ("BUS_MCEERR_AO", "h+0x0", 21)
    assert _kernel(conform_run, "tmpfs-fsync-after-poison", 5)["ret"] == 0
    assert _kernel(conform_run, "fork-shared-pagemap", 3)["ret"]["present"] is False
    assert _kernel(conform_run, "fork-shared-pagemap", 5)["ret"]["present"] is True
    assert _kernel(conform_run, "hugetlb-soft-offline-data", 4)["ret"] == 0x66
    assert _kernel(conform_run, "hugetlbfs-punch-unmaps", 6)["ret"] == 0


def test_not_expressible_cases_are_reported(conform_run: dict) -> None:
    by = {c["case"]: c for c in conform_run["cases"]}
    c = by["swapout-not-expressible"]
    assert c["status"] == "not expressible" and c["compared"] == 0
    assert c["reasons"] == ["step 2 (swapout): the guest has no swap device"]


def test_a_panicking_case_runs_last_and_panics(conform_run: dict) -> None:
    by = {c["case"]: c for c in conform_run["cases"]}
    c = by["host-recovery-off-panic"]
    assert c["status"] == "agree"
    panic = [s for s in c["steps"] if "panic" in (s["kernel"] or {})]
    assert panic and panic[0]["step"] == 2
    assert panic[0]["kernel"]["panic"].startswith("Kernel panic - not syncing: Memory failure "
                                                  "on page")


def test_hardware_errors_are_machine_checks(conform_run: dict) -> None:
    """hw_error with detect: scrub is an SRAO machine check injected through QEMU's monitor:
    the early-kill process gets BUS_MCEERR_AO and the dirty ext2 page is recovered."""
    [ao] = _kernel(conform_run, "host-ext2-dirty-early-kill", 6)["signals"]
    assert (ao["code"], ao["addr"], ao["lsb"]) == ("BUS_MCEERR_AO", "m+0x0", 12)
    assert _kernel(conform_run, "host-ext2-dirty-early-kill", 6)["mf"] == \
        ["dirty LRU page: Recovered"]
    assert _kernel(conform_run, "host-free-hugetlb-ao", 0)["mf"] == ["free huge page: Recovered"]


@pytest.mark.xdist_group("conform-selftests")  # its own boot: may run next to the other
def test_generated_selftests_pass_on_6_1(tmp_path: Path) -> None:
    """`memfail selftest` of every single-process linux-6.1 oracle case, compiled against the
    stand-in harness and run in the guest: each passes on the real kernel (none skips)."""
    import shutil
    import subprocess

    from memfail.conform.guest import boot
    from memfail.conform.selftest import generate_selftest
    from memfail.scenario import load_scenario

    (tmp_path / "mm").mkdir()
    shutil.copy(HERE / "conform" / "kselftest_harness.h", tmp_path)
    programs = {}
    for path in sorted((HERE / "oracle" / "linux-6.1").glob("*.yaml")):
        sc = load_scenario(path, path.name)
        st = generate_selftest(sc, "linux-6.1")
        if st.reasons:
            continue
        src = tmp_path / "mm" / f"{sc.name}.c"
        src.write_text(st.source)
        done = subprocess.run(["gcc", "-static", "-Wall", "-Werror", "-o", str(src.with_suffix("")),
                               str(src)], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        programs[sc.name] = src.with_suffix("").read_bytes()
    assert len(programs) >= 20
    res = boot(programs, "debian-6.1", timeout=20)
    failed = {name: st for name, st in res.status.items() if st != "ok"}
    assert not failed, "\n".join(ln for ln in res.console.splitlines() if ln.startswith("#"))
    assert "# SKIP" not in res.console
    assert res.console.count("ok 1 ") >= len(programs)
