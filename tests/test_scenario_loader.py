"""Scenario loading: what a user sees for good files and for every kind of bad one."""

from __future__ import annotations

from pathlib import Path

import pytest

from memfail.scenario import ScenarioError, library, load_scenario
from memfail.scenario.docgen import render_actions, stale_sections

DOCS = Path(__file__).resolve().parent.parent / "docs"

GOOD = """\
name: demo
processes:
  - name: app
    threads: [main, worker]
    sigbus: handler
    mce_kill: {worker: early}
steps:
  - mmap: {proc: app, name: buf, size: 8K}
  - mem_write: {proc: app, addr: buf+4K}
  - madvise: {proc: app, addr: buf+4K, advice: hwpoison}
    note: poison the second page
    expect:
      ret: 0
      errno: null
      signals: [{proc: app, thread: main, code: AR, addr: buf+4K, lsb: 12}]
  - meminfo:
expect:
  meminfo_delta: {HardwareCorrupted: 4}
  exit: {app: running}
"""


def write(tmp_path: Path, text: str | bytes, name: str = "s.yaml") -> Path:
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def error(tmp_path: Path, text: str | bytes) -> str:
    p = write(tmp_path, text)
    with pytest.raises(ScenarioError) as exc:
        load_scenario(p, "s.yaml")
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_good_file_has_steps_lines_and_expectations(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, GOOD))
    assert sc.name == "demo"
    assert [(s.index, s.line, s.key) for s in sc.steps] == [
        (0, 8, "mmap"), (1, 9, "mem_write"), (2, 10, "madvise"), (3, 16, "meminfo")]
    assert sc.steps[2].note == "poison the second page"
    assert sc.steps[2].expect is not None
    assert sc.steps[2].expect.signals[0].code == "BUS_MCEERR_AR"
    assert sc.steps[2].action.describe() == \
        "madvise(proc='app', addr='buf+4K', advice='hwpoison')"
    assert sc.line_of("expect", "exit", "app") == 19


def test_name_defaults_to_file_stem(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, "steps:\n  - meminfo: {}\n", "my-case.yaml"))
    assert sc.name == "my-case"
    assert sc.profile is None


def test_malformed_yaml(tmp_path: Path) -> None:
    msg = error(tmp_path, "steps:\n  - mmap: {proc: app, size: 4K\n")
    assert msg.startswith("s.yaml:3: invalid YAML")


def test_unknown_top_level_field_names_line_and_suggests(tmp_path: Path) -> None:
    msg = error(tmp_path, "name: x\nstepz:\n  - meminfo: {}\n")
    assert msg.startswith("s.yaml:2: stepz: unknown top-level field 'stepz'")
    assert "did you mean 'steps'?" in msg


def test_unknown_action_field_suggests(tmp_path: Path) -> None:
    msg = error(tmp_path, "processes: [{name: app}]\nsteps:\n"
                          "  - mmap: {proc: app, name: b,\n           sise: 4K}\n")
    assert msg.startswith("s.yaml:4: steps[0].mmap.sise: unknown field 'sise'")
    assert "did you mean 'size'?" in msg


def test_missing_field(tmp_path: Path) -> None:
    msg = error(tmp_path, "processes: [{name: app}]\nsteps:\n  - mmap: {proc: app, name: b}\n")
    assert msg == "s.yaml:3: steps[0].mmap.size: required field is missing; add `size: ...`"


def test_wrong_type(tmp_path: Path) -> None:
    msg = error(tmp_path, "processes: [{name: app}]\nsteps:\n  - meminfo:\n"
                          "  - mem_write: {proc: app, addr: b, value: lots}\n")
    assert msg.startswith("s.yaml:4: steps[1].mem_write.value: Input should be a valid integer")
    assert "got 'lots'" in msg


def test_wrong_choice_suggests(tmp_path: Path) -> None:
    msg = error(tmp_path, "processes:\n  - name: app\n    sigbus: handlr\nsteps: [{meminfo: {}}]\n")
    assert msg.startswith("s.yaml:3: processes[0].sigbus:")
    assert "did you mean 'handler'?" in msg


def test_unknown_action_suggests_closest(tmp_path: Path) -> None:
    msg = error(tmp_path, "processes: [{name: app}]\nsteps:\n  - meminfo:\n"
                          "  - madvice: {proc: app, addr: b, advice: hwpoison}\n")
    assert msg.startswith("s.yaml:4: steps[1].madvice: unknown action 'madvice'")
    assert "did you mean 'madvise'?" in msg


def test_two_actions_in_one_step(tmp_path: Path) -> None:
    msg = error(tmp_path, "processes: [{name: app}]\nsteps:\n"
                          "  - mmap: {proc: app, name: b, size: 4K}\n"
                          "    mem_write: {proc: app, addr: b}\n")
    assert msg.startswith("s.yaml:4: steps[0]: two actions in one step (mmap, mem_write)")


def test_step_without_action(tmp_path: Path) -> None:
    msg = error(tmp_path, "steps:\n  - note: nothing here\n")
    assert msg.startswith("s.yaml:2: steps[0]: no action in this step")


def test_python_tag_is_refused_and_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    msg = error(tmp_path, f'steps:\n  - x: !!python/object/apply:os.system ["touch {marker}"]\n')
    assert "YAML tag '!!python/object/apply:os.system' is not allowed" in msg
    assert msg.startswith("s.yaml:2:")
    assert not marker.exists()


def test_custom_tag_is_refused(tmp_path: Path) -> None:
    assert "YAML tag '!size' is not allowed" in error(
        tmp_path, "steps:\n  - mmap: {proc: a, name: b, size: !size 4K}\n")


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    bomb = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        bomb += f"{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
    bomb += "steps: *i\n"
    msg = error(tmp_path, bomb)
    assert "aliases are not supported" in msg


def test_binary_file(tmp_path: Path) -> None:
    assert error(tmp_path, b"\x7fELF\x02\x01\x01\x00\x00\x00") == \
        "s.yaml:1: binary file (contains a NUL byte); a scenario is UTF-8 YAML text"


def test_not_utf8(tmp_path: Path) -> None:
    msg = error(tmp_path, b"name: caf\xe9\nsteps: []\n")
    assert msg.startswith("s.yaml:1: not UTF-8 text (byte 0xe9)")


@pytest.mark.parametrize("text", ["", "\n\n", "# just a comment\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    assert error(tmp_path, text).startswith("s.yaml:1: empty file")


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    assert "the top level is a list" in error(tmp_path, "- mmap: {}\n")


def test_duplicate_key(tmp_path: Path) -> None:
    msg = error(tmp_path, "name: a\nname: b\nsteps: [{meminfo: {}}]\n")
    assert msg.startswith("s.yaml:2: name: duplicate key 'name'")


def test_several_documents(tmp_path: Path) -> None:
    msg = error(tmp_path, "steps: [{meminfo: {}}]\n---\nsteps: [{meminfo: {}}]\n")
    assert "more than one YAML document" in msg


def test_steps_required_and_non_empty(tmp_path: Path) -> None:
    assert error(tmp_path, "name: x\n").startswith("s.yaml:1: steps: missing")
    assert "steps: List should have at least 1 item" in error(tmp_path, "steps: []\n")


@pytest.mark.parametrize(("size", "expect"), [
    ("4Q", "expected a size such as 4096"),
    ("-1", "expected a size such as 4096"),
    ("512T", "larger than the 128T x86-64 user address space"),
])
def test_impossible_sizes(tmp_path: Path, size: str, expect: str) -> None:
    msg = error(tmp_path, f"processes: [{{name: app}}]\nsteps:\n"
                          f"  - mmap: {{proc: app, name: b, size: '{size}'}}\n")
    assert msg.startswith("s.yaml:3: steps[0].mmap.size: ")
    assert expect in msg


def test_hugepage_pool_larger_than_memory(tmp_path: Path) -> None:
    msg = error(tmp_path, "host:\n  memory: 1G\n  hugepages: {1G: 2}\nsteps: [{meminfo: {}}]\n")
    assert "hugepages need 2G but host memory is 1G" in msg


def test_bad_address_syntax(tmp_path: Path) -> None:
    msg = error(tmp_path, "processes: [{name: app}]\nsteps:\n"
                          "  - mem_read: {proc: app, addr: 'buf+lots'}\n")
    assert msg.startswith("s.yaml:3: steps[0].mem_read.addr: bad address 'buf+lots'")


def test_target_needs_exactly_one(tmp_path: Path) -> None:
    msg = error(tmp_path, "steps:\n  - corrupt_pfn: {pfn: 5, free: buddy}\n")
    assert "give exactly one target" in msg and "got pfn, free" in msg


def test_unknown_process_is_caught_before_running(tmp_path: Path) -> None:
    msg = error(tmp_path, "processes: [{name: app}]\nsteps:\n"
                          "  - mmap: {proc: ap, name: b, size: 4K}\n")
    assert msg.startswith("s.yaml:3: steps[0].mmap.proc: unknown process 'ap'")
    assert "did you mean 'app'?" in msg


def test_processes_made_by_steps_are_known(tmp_path: Path) -> None:
    sc = load_scenario(write(tmp_path, "steps:\n  - spawn: {proc: a}\n  - fork: {proc: a, child: b}\n"
                                       "  - exit: {proc: b}\nexpect: {exit: {b: {code: 0}}}\n"))
    assert [s.key for s in sc.steps] == ["spawn", "fork", "exit"]


@pytest.mark.parametrize(("expect", "needle"), [
    ("{errno: EBSY}", "unknown errno name 'EBSY' (did you mean 'EBUSY'?)"),
    ("{signals: [{code: XX}]}", "unknown si_code 'XX'"),
    ("{events: [{event: stage2zap}]}", "did you mean 'stage2_zap'?"),
    ("{events: [{event: signal, codd: 1}]}", "signal has no field 'codd'"),
    ("{log: ['/unclosed(/']}", "bad regular expression"),
    ("{retn: 0}", "unknown field 'retn' (did you mean 'ret'?)"),
])
def test_bad_step_expectations(tmp_path: Path, expect: str, needle: str) -> None:
    msg = error(tmp_path, f"steps:\n  - meminfo: {{}}\n    expect: {expect}\n")
    assert msg.startswith("s.yaml:3: steps[0].expect")
    assert needle in msg


def test_bad_final_expectations(tmp_path: Path) -> None:
    msg = error(tmp_path, "steps: [{meminfo: {}}]\nexpect:\n  meminfo: {HardwareCorupted: 4}\n")
    assert msg.startswith("s.yaml:3: expect.meminfo: unknown meminfo field 'HardwareCorupted'")
    msg = error(tmp_path, "steps: [{meminfo: {}}]\nexpect:\n  exit: {nobody: running}\n")
    assert msg.startswith("s.yaml:3: expect.exit.nobody: unknown process 'nobody'")
    msg = error(tmp_path, "steps: [{spawn: {proc: a}}]\nexpect:\n  exit: {a: {signal: SIGFOO}}\n")
    assert "unknown signal 'SIGFOO'" in msg
    msg = error(tmp_path, "steps: [{meminfo: {}}]\nexpect:\n  outcomes: {vm_killed: 1}\n")
    assert msg.startswith("s.yaml:3: expect.outcomes: unknown outcome 'vm_killed' (did you "
                          "mean 'vms_killed'?)")


def test_every_outcome_a_run_gives_may_be_expected() -> None:
    """expect.outcomes is checked at load against OUTCOME_KEYS: it must name every key
    compute_outcomes() gives (a VM scenario, where each figure is present)."""
    from memfail.model.outcomes import OUTCOME_KEYS
    from memfail.scenario.runner import run_scenario

    got = run_scenario(load_scenario(library()["vm-hugetlb-consumed"])).outcomes
    assert got is not None and set(got) <= set(OUTCOME_KEYS)
    assert len(OUTCOME_KEYS) == len(set(OUTCOME_KEYS))


def test_unknown_profile(tmp_path: Path) -> None:
    msg = error(tmp_path, "profile: linux-6.99\nsteps: [{meminfo: {}}]\n")
    assert msg.startswith("s.yaml:1: profile: unknown kernel profile 'linux-6.99'")


def test_mce_kill_names_a_listed_thread(tmp_path: Path) -> None:
    msg = error(tmp_path, "processes:\n  - name: app\n    threads: [main, worker]\n"
                          "    mce_kill: {wroker: early}\nsteps: [{meminfo: {}}]\n")
    assert "mce_kill names thread 'wroker'" in msg and "did you mean 'worker'?" in msg


def test_missing_file() -> None:
    with pytest.raises(ScenarioError, match="no such file"):
        load_scenario("/nonexistent/x.yaml")


def test_builtin_scenarios_load() -> None:
    lib = library()
    assert {"anon-madvise-hwpoison", "shmem-early-kill-ao", "hugetlb-2m-private"} <= set(lib)
    for name, path in lib.items():
        sc = load_scenario(path)
        assert sc.name == name
        assert sc.description


def test_docs_generated_sections_are_fresh() -> None:
    for doc in ("scenario-format.md", "trace-format.md"):
        text = (DOCS / doc).read_text()
        assert stale_sections(text) == [], (
            f"docs/{doc} is stale; run: python -m memfail.scenario.docgen docs/{doc}")
    assert "### `madvise`" in render_actions()


def test_docs_yaml_examples_are_valid(tmp_path: Path) -> None:
    """Every complete scenario shown in the format doc loads without error."""
    text = (DOCS / "scenario-format.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml\n")[1:]]
    complete = [b for b in blocks if b.lstrip().startswith("name:") or "\nsteps:" in b]
    assert len(complete) >= 4
    for i, block in enumerate(complete):
        load_scenario(write(tmp_path, block, f"doc{i}.yaml"))


def test_a_forked_childs_thread_is_named_as_the_forking_thread(tmp_path: Path) -> None:
    """fork by thread `worker`: the child's one thread is `worker`; `main` of the child is a
    mistake in the file (exit 2), not a thread whose creating step failed (ESRCH)."""
    from memfail.scenario.runner import run_scenario

    head = ("processes: [{name: app, threads: [main, worker]}]\nsteps:\n"
            "  - fork: {proc: app, child: kid, thread: worker}\n")
    ok = tmp_path / "ok.yaml"
    ok.write_text(head + "  - prctl: {proc: kid, thread: worker, op: get}\n"
                         "    expect: {ret: 2}\n")
    assert run_scenario(load_scenario(ok)).ok
    bad = tmp_path / "bad.yaml"
    bad.write_text(head + "  - prctl: {proc: kid, thread: main, op: get}\n")
    with pytest.raises(ScenarioError, match="process 'kid' has no thread 'main' "
                                            r"\(threads: worker\)"):
        run_scenario(load_scenario(bad))


def test_an_fd_whose_open_failed_is_not_said_to_be_closed(tmp_path: Path) -> None:
    from memfail.scenario.runner import run_scenario

    f = tmp_path / "of.yaml"
    f.write_text("processes: [{name: app}]\nsteps:\n"
                 "  - open: {proc: app, path: /nope, fd: f}\n"
                 "  - read: {proc: app, fd: f, len: 4K}\n    expect: {errno: EBADF}\n")
    r = run_scenario(load_scenario(f))
    assert r.ok
    text = " ".join(str(getattr(e, "text", "")) for e in r.steps[-1].events)
    assert "the step that opens it did not succeed" in text
    assert "'f' of 'app' was closed" not in text
