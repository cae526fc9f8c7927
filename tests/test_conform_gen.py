"""The scenario → C generator, the selftest writer and the comparison, without booting a kernel:
every generated program compiles, untranslatable actions are reported with their reason, and
recorded kernel output is compared with the model as a user reads it in the table."""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from memfail.cli import main
from memfail.conform import compare_case, generate, load_known
from memfail.conform.compare import Known
from memfail.conform.guest import compile_program
from memfail.conform.initramfs import chardev, cpio_newc, directory, file, initramfs
from memfail.conform.selftest import generate_selftest
from memfail.scenario import library, load_scenario, load_scenario_text, resolve

HERE = Path(__file__).parent
GOLDEN = HERE / "conform" / "golden"
ORACLE = sorted((HERE / "oracle" / "linux-6.1").glob("*.yaml"))
HOST = [n for n in library() if not n.startswith("vm-")]


def _load(name: str):
    return load_scenario(*resolve(name))


@pytest.mark.parametrize("name", HOST + [str(p) for p in ORACLE])
def test_every_expressible_program_compiles(name: str, tmp_path: Path) -> None:
    prog = generate(_load(name))
    if not prog.expressible:
        assert all(": " in r for r in prog.reasons)  # each reason names the step or field
        return
    done = compile_program(prog.source, tmp_path / "case")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "case").stat().st_size > 0


def test_host_library_is_mostly_expressible() -> None:
    ok = [n for n in HOST if generate(_load(n)).expressible]
    assert {"anon-madvise-hwpoison", "shmem-early-kill-ao", "hugetlb-2m-private",
            "host-shmem-punch-keeps-hwpoison", "host-soft-offline-anon"} <= set(ok)


def test_not_expressible_says_why() -> None:
    sc = load_scenario_text("""
processes: [{name: app, sigbus: handler}]
steps:
  - mmap: {proc: app, name: m, size: 4K}
  - mem_write: {proc: app, addr: m}
  - hw_error: {proc: app, addr: m, detect: latent}
  - swapout: {proc: app, addr: m}
""")
    prog = generate(sc)
    assert not prog.expressible
    assert prog.reasons[0].startswith("step 2 (hw_error): detect: latent: the machine check")
    assert prog.reasons[1] == "step 3 (swapout): the guest has no swap device"


def test_a_scrubbed_hardware_error_is_a_machine_check_request() -> None:
    prog = generate(_load("host-ext2-dirty-early-kill"))
    assert prog.expressible
    assert "ret = mf_mce(mf_va_pfn(0, 0, 0x0UL));" in prog.source


def test_literal_pfn_names_the_guest_page_the_model_had_there() -> None:
    """host-soft-offline-anon reads kpageflags of pfn 0x100000 after the page moved: the
    program must look at the frame the mapping had before the move, not the new one."""
    prog = generate(_load("host-soft-offline-anon"))
    assert prog.expressible
    kpf = next(line for line in prog.source.splitlines() if "mf_print_kpageflags(6," in line)
    assert "mf_hist[2][0]" in kpf  # after step 2 (the first pagemap), tracked page 0


def test_initramfs_is_newc_with_trailer() -> None:
    raw = cpio_newc([directory("bin"), file("bin/x", b"abc", True), chardev("dev/c", 5, 1)])
    assert raw.startswith(b"070701")
    assert raw.count(b"070701") == 4
    assert b"TRAILER!!!\0" in raw
    assert len(raw) % 4 == 0
    assert gzip.decompress(initramfs([file("a", b"z")])).startswith(b"070701")
    if shutil.which("cpio"):
        listing = subprocess.run(["cpio", "-t"], input=raw, capture_output=True, check=True)
        assert listing.stdout.decode().split() == ["bin", "bin/x", "dev/c"]


# --------------------------------------------------------------------------- comparison


def _golden(name: str) -> list[str]:
    return (GOLDEN / f"{name}.lines").read_text().splitlines()


def test_recorded_kernel_run_agrees_with_the_model() -> None:
    case = compare_case(_load("anon-madvise-hwpoison"), _golden("anon-madvise-hwpoison"), "ok",
                        "linux-6.1", [])
    assert case.status == "agree", [d.to_dict() for d in case.differences]
    assert case.compared > 10


def test_a_changed_signal_is_a_difference_at_its_step() -> None:
    lines = [ln.replace('"lsb":12', '"lsb":21') for ln in _golden("anon-madvise-hwpoison")]
    case = compare_case(_load("anon-madvise-hwpoison"), lines, "ok", "linux-6.1", [])
    assert case.status == "differ"
    [d] = case.differences
    assert (d.step, d.field) == (3, "signals")
    assert d.model[0]["lsb"] == 12 and d.kernel[0]["lsb"] == 21


def test_a_listed_difference_is_known_not_failed() -> None:
    lines = [ln.replace('"HardwareCorrupted":4', '"HardwareCorrupted":8')
             for ln in _golden("anon-madvise-hwpoison")]
    known = [Known("anon-*", "meminfo_delta.HardwareCorrupted", "because")]
    case = compare_case(_load("anon-madvise-hwpoison"), lines, "ok", "linux-6.1", known)
    assert case.status == "known"
    assert case.differences[0].known == "because"
    assert not case.unlisted


def test_a_program_that_stopped_is_a_result() -> None:
    lines = _golden("anon-madvise-hwpoison")[:4]
    case = compare_case(_load("anon-madvise-hwpoison"), lines, "timeout", "linux-6.1", [])
    assert case.status == "differ"
    assert {d.field for d in case.differences} >= {"ran", "program"}


def test_known_differences_file_is_valid() -> None:
    entries = load_known(HERE / "conform" / "known-differences.yaml")
    assert all(e.reason and e.case and e.field for e in entries)


def test_bad_known_differences_file_is_bad_input(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "k.yaml"
    f.write_text("differences:\n  - {case: x}\n")
    assert main(["conform", "anon-madvise-hwpoison", "--known", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("memfail: error: ") and "needs case, field and reason" in err


@pytest.mark.parametrize("text,needle", [
    ("differences: [{case: x, field: ret, reason: r, stepz: 3}]\n",
     "differences[0].stepz: unknown key (did you mean 'step'?)"),
    ("diffrences: []\n", "one mapping with the key 'differences'"),
    ("differences: [{case: x, field: ret, reason: r, step: two}]\n", "a step number"),
])
def test_a_misspelt_known_difference_is_refused_not_widened(
        tmp_path: Path, text: str, needle: str) -> None:
    """An entry without ``step`` matches every step: a misspelt ``step`` must not become
    that silently (docs/conform.md: a bad known-differences file is exit 2)."""
    from memfail.scenario import ScenarioError

    f = tmp_path / "k.yaml"
    f.write_text(text)
    with pytest.raises(ScenarioError, match=re.escape(needle)):
        load_known(f)


def test_a_missing_kernel_is_bad_input_before_any_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 2 before a program is generated or compiled (README: "before any work")."""
    monkeypatch.setenv("MEMFAIL_CACHE", str(tmp_path / "cache"))
    assert main(["conform", "anon-madvise-hwpoison"]) == 2
    err = capsys.readouterr().err
    assert "kernel debian-6.1 is not in" in err and "programs built" not in err
    assert not (tmp_path / "cache").exists()


def test_unknown_kernel_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conform", "anon-madvise-hwpoison", "--kernel", "debian-5.10"]) == 2
    assert "unknown kernel" in capsys.readouterr().err


# --------------------------------------------------------------------------- selftests


@pytest.mark.parametrize("name", ["anon-madvise-hwpoison", "hugetlb-2m-private",
                                  "host-shmem-punch-keeps-hwpoison",
                                  "host-hugetlbfs-truncate"])
def test_selftest_compiles_against_the_harness(name: str, tmp_path: Path) -> None:
    st = generate_selftest(_load(name))
    assert not st.reasons
    assert '#include "../kselftest_harness.h"' in st.source
    assert "TEST_HARNESS_MAIN" in st.source
    (tmp_path / "mm").mkdir()
    shutil.copy(HERE / "conform" / "kselftest_harness.h", tmp_path)
    src = tmp_path / "mm" / f"{name}.c"
    src.write_text(st.source)
    done = subprocess.run(["gcc", "-Wall", "-Werror", "-o", str(tmp_path / "t"), str(src)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def test_a_selftest_for_a_kernel_its_expectations_do_not_hold_on_is_refused() -> None:
    """anon-madvise-hwpoison expects 6.11's AR SIGBUS from MADV_HWPOISON: a test for 6.1
    would assert what 6.1 does not do. Its own profile is the default."""
    sc = _load("anon-madvise-hwpoison")
    assert not generate_selftest(sc).reasons
    [why] = generate_selftest(sc, "linux-6.1").reasons
    assert why.startswith("its expectations do not hold under linux-6.1 (they are for "
                          "linux-6.18): ") and "step 2 (madvise): expect.signals" in why


def test_a_selftest_refusal_names_the_threads() -> None:
    sc = load_scenario_text("name: t\nprocesses: [{name: app, threads: [main, t2]}]\n"
                            "steps:\n  - meminfo: {}\n")
    assert generate_selftest(sc).reasons == [
        "a selftest is one single-threaded process; process 'app' has threads main, t2"]


def test_selftest_asserts_the_expected_signal(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["selftest", "anon-madvise-hwpoison"]) == 0
    out = capsys.readouterr().out
    assert "TEST(anon_madvise_hwpoison)" in out
    assert "ASSERT_EQ(BUS_MCEERR_AR, last_code);" in out
    assert "ASSERT_EQ((void *)(map_buf + 0x80), last_addr);" in out
    assert "ASSERT_EQ(4, meminfo(\"HardwareCorrupted:\") - hardware_corrupted);" in out


def test_selftest_refuses_what_it_cannot_write(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["selftest", "vm-release"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("memfail: error: vm-release.yaml: cannot be written as a selftest")


def test_stale_known_entries_are_reported() -> None:
    """An entry that matches nothing in a case that ran is reported for removal; one for a
    case that did not run is not."""
    from memfail.conform.cli import _stale
    from memfail.conform.compare import CaseResult

    ran = compare_case(_load("anon-madvise-hwpoison"), _golden("anon-madvise-hwpoison"), "ok",
                       "linux-6.1", [])
    skipped = CaseResult("other", "not expressible", reasons=["step 0 (swapout): x"])
    known = [Known("anon-madvise-hwpoison", "signals", "fixed since"),
             Known("other", "ret", "never ran")]
    assert _stale(known, [ran, skipped]) == [
        {"case": "anon-madvise-hwpoison", "step": None, "field": "signals"}]


def test_equal_reasons_are_grouped_in_the_table() -> None:
    from memfail.conform.cli import _grouped

    assert _grouped(["host.hvo: x", "step 0 (vm_create): KVM", "step 3 (memslot): KVM",
                     "step 5 (swapout): no swap"]) == \
        ["host.hvo: x", "steps 0, 3: KVM", "step 5: no swap"]


def test_whole_reads_and_writes_to_the_end_of_the_mapping() -> None:
    """``whole: true`` is the rest of the mapping in the program too, not one byte."""
    prog = generate(load_scenario_text("""
processes: [{name: app, sigbus: handler}]
steps:
  - mmap: {proc: app, name: t, size: 16K}
  - mem_write: {proc: app, addr: t+4K, whole: true, value: 5}
  - mem_read: {proc: app, addr: t, whole: true}
"""))
    assert prog.expressible, prog.reasons
    assert "mf_mem_write((volatile unsigned char *)(mf_map_addr[0] + 0x1000), " \
           "mf_map_size[0] - 0x1000, 5, ret);" in prog.source
    assert "mf_mem_read((volatile unsigned char *)(mf_map_addr[0] + 0x0), " \
           "mf_map_size[0] - 0x0, ret);" in prog.source


def test_a_signal_an_exit_handler_printed_belongs_to_the_step_its_process_ended_in() -> None:
    """An AO may reach an `exit` handler while another process runs the step: the handler
    prints it with step -1 and the controller's exit record of that process gives the step."""
    from memfail.conform.compare import parse_lines

    run = parse_lines([
        '{"t":"sig","i":-1,"proc":"kid","thread":"main","code":5,"addr":"m+0x0","lsb":12}',
        '{"t":"step","i":5,"ret":0}',
        '{"t":"exit","i":5,"proc":"kid","code":42}'])
    assert run.signals == {5: [{"t": "sig", "i": 5, "proc": "kid", "thread": "main",
                                "code": 5, "addr": "m+0x0", "lsb": 12}]}
    assert run.exits[5][0]["code"] == 42


def test_the_table_prints_exit_differences() -> None:
    """An `exits` difference is a list of records with ``code`` and no address: the table
    prints it as JSON instead of failing on it as if it were signals."""
    from memfail.conform.cli import _fmt

    assert _fmt([{"proc": "app", "code": 1}]) == '[{"proc": "app", "code": 1}]'


def test_a_memfd_file_target_without_proc_says_to_name_the_process() -> None:
    prog = generate(load_scenario_text("""
processes: [{name: app, sigbus: handler}]
steps:
  - memfd_create: {proc: app, name: mf, size: 8K}
  - corrupt_pfn: {file: mf, offset: 0}
"""))
    assert not prog.expressible
    assert any("is an fd name (a memfd has no path): give proc as well" in r
               for r in prog.reasons), prog.reasons


def test_a_load_of_an_error_a_machine_check_left_in_place_is_not_expressible() -> None:
    """QEMU's mce command raises the machine check but leaves the RAM readable: a later
    load the model sees consuming the error cannot happen in the guest."""
    prog = generate(load_scenario_text("""
profile: linux-6.1
processes: [{name: a, sigbus: handler}]
steps:
  - mmap: {proc: a, name: m, size: 4K, prot: r}
  - mem_read: {proc: a, addr: m}
  - hw_error: {kernel: zero_page, detect: scrub}
  - mem_read: {proc: a, addr: m}
"""))
    assert not prog.expressible
    assert prog.reasons[0].startswith("step 3 (mem_read): the model's CPU loads the hardware "
                                      "error at pfn 0x2000")


def test_a_case_poisoning_the_zero_page_says_so_and_a_store_to_a_failed_mmap_is_guarded(
        ) -> None:
    prog = generate(load_scenario_text("""
profile: linux-6.1
host: {hugepages: {2M: 1}}
processes: [{name: a, sigbus: handler}]
steps:
  - mmap: {proc: a, name: z, size: 8K}
  - madvise: {proc: a, addr: z, len: 8K, advice: hwpoison}
  - mmap: {proc: a, name: h, size: 4M, hugetlb: 2M}
  - mem_write: {proc: a, addr: h, value: 1}
"""))
    assert prog.expressible, prog.reasons
    assert prog.poisons_kernel_page == frozenset({"the zero page"})
    assert "if (!mf_map_addr[1]) { *ret = -1; errno = ENOENT; } else {" in prog.source


def test_a_machine_checks_return_value_is_not_compared() -> None:
    """memory_failure()'s value after a machine check reaches nobody in the guest."""
    from memfail.conform.compare import _model_facts
    from memfail.scenario.runner import run_scenario

    res = run_scenario(load_scenario_text("""
profile: linux-6.1
processes: [{name: a, sigbus: handler}]
steps:
  - hw_error: {kernel: slab, detect: scrub}
"""))
    assert res.steps[0].ret == -16
    facts = _model_facts(res)
    assert facts[0]["ret"] == 0 and facts[0]["errno"] is None
