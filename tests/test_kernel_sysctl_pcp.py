"""Writes the kernel refuses, free frames on a per-CPU list, and what soft offline leaves
behind: outcomes measured with `memfail conform` on Debian's 6.1 (kpageflags after unpoison
and after soft offline) or read in the kernel source (proc_dointvec_minmax ranges, the
PR_MCE_KILL_GET argument check, the soft offline pr_fmt)."""

from __future__ import annotations

from typing import Any

import pytest

from memfail.scenario.loader import load_scenario_text
from memfail.scenario.runner import run_scenario


def _run(text: str) -> Any:
    result = run_scenario(load_scenario_text(text))
    assert result.ok, "\n".join(str(f) for f in result.failures)
    return result


@pytest.mark.parametrize("name,value", [
    ("vm.memory_failure_early_kill", 5), ("vm.memory_failure_recovery", 7),
    ("vm.enable_soft_offline", -1), ("vm.panic_on_unrecoverable_memory_failure", 2),
    ("vm.nr_hugepages", -1)])
def test_a_value_the_proc_handler_refuses_is_einval_and_keeps_the_old_one(
        name: str, value: int) -> None:
    """R8, R9, R11, R86: proc_dointvec_minmax with extra1/extra2 = 0/1 (the counts:
    proc_doulongvec_minmax, no negative): the write fails with EINVAL, nothing changes."""
    _run(f"""
name: range
profile: next
processes: [{{name: app, sigbus: handler}}]
steps:
  - sysctl: {{name: {name}, value: {value}}}
    expect: {{errno: EINVAL}}
""")


def test_early_kill_5_does_not_make_threads_early() -> None:
    _run("""
name: early5
processes: [{name: app, sigbus: handler}]
steps:
  - sysctl: {name: vm.memory_failure_early_kill, value: 5}
    expect: {errno: EINVAL}
  - mmap: {proc: app, name: m, size: 4K}
  - mem_write: {proc: app, addr: m}
  - hw_error: {proc: app, addr: m, detect: scrub}
    expect: {signals: []}
""")


def test_an_out_of_range_boot_sysctl_is_refused_with_its_line() -> None:
    from memfail.scenario.loader import ScenarioError

    with pytest.raises(ScenarioError, match=r"<string>:3: host.sysctl: "
                       r"vm.memory_failure_early_kill = 5: the kernel accepts 0 or 1"):
        load_scenario_text("name: x\nsteps: []\n"
                           "host: {sysctl: {vm.memory_failure_early_kill: 5}}\n")


@pytest.mark.parametrize("policy,errno", [("early", "EINVAL"), ("default", "EINVAL"),
                                          ("late", None)])
def test_pr_mce_kill_get_takes_no_argument(policy: str, errno: str | None) -> None:
    """kernel/sys.c: PR_MCE_KILL_GET returns -EINVAL if arg2|arg3|arg4|arg5 (DOC-03);
    LATE is 0, so ``policy: late`` passes nothing."""
    ret = "{errno: EINVAL}" if errno else "{ret: 2}"  # a new thread: PR_MCE_KILL_DEFAULT
    _run(f"""
name: get
processes: [{{name: app}}]
steps:
  - prctl: {{proc: app, op: get, policy: {policy}}}
    expect: {ret}
""")


def test_a_freed_page_sits_on_the_pcp_list_without_buddy() -> None:
    """Unpoison of a hard-poisoned anonymous page drops the last reference: free_unref_page()
    keeps the order-0 page on the per-CPU list, where PageBuddy is not set (measured: Debian
    6.1 kpageflags [] after unpoison, KS-01); memory_failure() on it drains the lists and
    finds a free buddy page."""
    _run("""
name: pcp
processes: [{name: app, sigbus: handler}]
steps:
  - mmap: {proc: app, name: a, size: 4K}
  - mem_write: {proc: app, addr: a, value: 0xce}
  - madvise: {proc: app, addr: a, advice: hwpoison}
  - mem_read: {proc: app, addr: a}
    expect: {ret: sigbus}
  - unpoison_pfn: {pfn: 0x100000}
    expect: {errno: null}
  - kpageflags: {pfn: 0x100000}
    expect: {ret: []}
  - corrupt_pfn: {pfn: 0x100000}
    expect: {log: ["0x100000: recovery action for free buddy page: Recovered"]}
  - kpageflags: {pfn: 0x100000}
    expect: {ret: [HWPOISON]}
""")


def test_soft_offline_keeps_the_old_frame_and_unpoison_frees_it() -> None:
    """page_handle_poison(): the migrated source keeps its anon flags and one reference
    (measured: Debian 6.1 kpageflags ANON|SWAPBACKED|HWPOISON, KS-02); unpoison_memory()
    drops it and frees the frame (R80), so a new mapping can get it again."""
    _run("""
name: so
profile: linux-6.1
processes: [{name: app, sigbus: handler}]
steps:
  - mmap: {proc: app, name: a, size: 4K}
  - mem_write: {proc: app, addr: a, value: 0xce}
  - madvise: {proc: app, addr: a, advice: soft_offline}
    expect: {ret: 0}
  - kpageflags: {pfn: 0x100000}
    expect: {ret: [ANON, SWAPBACKED, HWPOISON]}
  - unpoison_pfn: {pfn: 0x100000}
    expect: {errno: null}
  - kpageflags: {pfn: 0x100000}
    expect: {ret: []}
  - mmap: {proc: app, name: b, size: 4K}
  - mem_write: {proc: app, addr: b}
  - pagemap: {proc: app, addr: b}
    expect: {ret: {pfn: 0x100000}}
  - corrupt_pfn: {pfn: 0x100000}
    expect: {log: ["recovery action for dirty LRU page: Recovered"]}
""")


@pytest.mark.parametrize("profile,line", [
    ("linux-6.18", "Soft offline: 0x100000: page already poisoned"),
    ("linux-6.12", "Soft offline: 0x100000: page already poisoned"),
    ("linux-6.6", "soft_offline_page: 0x100000 page already poisoned"),
    ("linux-6.1", "soft_offline_page: 0x100000 page already poisoned")])
def test_soft_offline_lines_follow_the_kernel(profile: str, line: str) -> None:
    """Jiaqi Yan's 'refactor log format in soft offline code' (6.11) gives the soft offline
    code pr_fmt "Soft offline: "; before, soft_offline_page() printed with __func__."""
    result = _run(f"""
name: prefix
profile: {profile}
processes: [{{name: app, sigbus: handler}}]
steps:
  - mmap: {{proc: app, name: a, size: 4K}}
  - mem_write: {{proc: app, addr: a}}
  - madvise: {{proc: app, addr: a, advice: soft_offline}}
  - soft_offline_page: {{pfn: 0x100000}}
""")
    assert any(line == getattr(e, "text", None) for e in result.trace.events), line


@pytest.mark.parametrize("profile,result", [("linux-6.1", "Ignored"),
                                            ("linux-6.18", "Failed")])
def test_the_huge_zero_page_cannot_be_split_and_the_kernel_decides_what_that_is(
        profile: str, result: str) -> None:
    """The huge zero page (a read fault in a THP range) cannot be split: before 6.11
    'unsplit thp: Ignored' (EBUSY), since 'send SIGBUS in the event of thp split fail'
    'unsplit thp: Failed'. Measured on Debian's 6.1 (tests/conform/cases/thp-huge-zero-page)."""
    _run(f"""
name: hzp
profile: {profile}
processes: [{{name: app, sigbus: handler}}]
steps:
  - mmap: {{proc: app, name: m, size: 2M, thp: true}}
  - mem_read: {{proc: app, addr: m}}
  - kpageflags: {{proc: app, addr: m+4K}}
    expect: {{ret: [COMPOUND_TAIL, THP, ZERO_PAGE]}}
  - madvise: {{proc: app, addr: m+4K, advice: hwpoison}}
    expect: {{log: ["Called split_huge_page for huge zero page",
                    "recovery action for unsplit thp: {result}"]}}
  - mem_write: {{proc: app, addr: m+4K, value: 3}}
    expect: {{ret: 0}}
  - kpageflags: {{proc: app, addr: m+4K}}
    expect: {{ret: {{contains: ANON}}}}
""")
