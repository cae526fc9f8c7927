"""Scenario → kernel selftest: a C file in the style of tools/testing/selftests/mm, built on
the kselftest harness (``TEST()``, ``ASSERT_EQ()``), that performs a one-process scenario
straight-line and asserts what the scenario expects (return values, errno, the SIGBUS
si_code / si_addr / si_addr_lsb, the HardwareCorrupted delta).

Where a step has no expectation, the model's prediction under the chosen profile is asserted
instead, so the file is a complete test of that kernel's behaviour.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from memfail.model.units import parse_size
from memfail.scenario.loader import Scenario
from memfail.scenario.runner import run_scenario

from .cgen import ADVICE, MCE_KILL, NotExpressible, c_str

SIG_CODES = {"BUS_MCEERR_AR": "BUS_MCEERR_AR", "BUS_MCEERR_AO": "BUS_MCEERR_AO",
             "SI_KERNEL": "SI_KERNEL"}
# where a selftest puts a scenario's files: tmpfs and hugetlbfs at their usual mount points,
# a disk file system in the current directory (run the test from one)
FS_DIRS = {"tmpfs": "/dev/shm", "hugetlbfs": "/dev/hugepages", "ext2": "."}
ERRNOS_OK = re.compile(r"^E[A-Z0-9]+$")

PRELUDE = r"""#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../kselftest_harness.h"

#ifndef MADV_HWPOISON
#define MADV_HWPOISON 100
#endif
#ifndef MADV_SOFT_OFFLINE
#define MADV_SOFT_OFFLINE 101
#endif
#ifndef MAP_HUGE_2MB
#define MAP_HUGE_2MB (21 << 26)
#endif
#ifndef EHWPOISON
#define EHWPOISON 133
#endif
#define HWPOISON_DIR "/sys/kernel/debug/hwpoison/"

static sigjmp_buf sigbus_jmp;
static volatile sig_atomic_t in_access, nr_sigbus, last_code, last_lsb;
static void *volatile last_addr;

/* Records the siginfo of every SIGBUS; jumps out of a faulting access. */
static inline void sigbus_handler(int sig, siginfo_t *si, void *uc)
{
	nr_sigbus++;
	last_code = si->si_code;
	last_addr = si->si_addr;
	last_lsb = si->si_addr_lsb;
	if (in_access) {
		in_access = 0;
		siglongjmp(sigbus_jmp, 1);
	}
}

/* A load of every page in [p, p+len): the first byte, or -2 after a SIGBUS. */
static inline long read_mem(volatile unsigned char *p, size_t len)
{
	long v;

	if (sigsetjmp(sigbus_jmp, 1))
		return -2;
	in_access = 1;
	v = p[0];
	for (size_t o = 4096 - ((uintptr_t)p & 4095); o < len; o += 4096)
		(void)p[o];
	in_access = 0;
	return v;
}

/* A store of `value` to [p, p+len): 0, or -2 after a SIGBUS. */
static inline long write_mem(volatile unsigned char *p, size_t len, int value)
{
	if (sigsetjmp(sigbus_jmp, 1))
		return -2;
	in_access = 1;
	for (size_t o = 0; o < len; o++)
		p[o] = value;
	in_access = 0;
	return 0;
}

static inline uint64_t pagemap_entry(void *addr)
{
	uint64_t e = 0;
	int fd = open("/proc/self/pagemap", O_RDONLY);

	if (fd >= 0) {
		if (pread(fd, &e, 8, (uintptr_t)addr / 4096 * 8) != 8)
			e = 0;
		close(fd);
	}
	return e;
}

/* The frame behind addr: present, or the pfn a hwpoison entry holds. */
static inline unsigned long pfn_of(void *addr)
{
	uint64_t e = pagemap_entry(addr);

	if (e >> 63 & 1)
		return e & ((1ULL << 55) - 1);
	if (e >> 62 & 1)
		return (e & ((1ULL << 55) - 1)) >> 5;
	return 0;
}

static inline uint64_t kpageflags(unsigned long pfn)
{
	uint64_t f = 0;
	int fd = open("/proc/kpageflags", O_RDONLY);

	if (fd >= 0) {
		if (pread(fd, &f, 8, pfn * 8) != 8)
			f = 0;
		close(fd);
	}
	return f;
}

static inline long write_file(const char *path, unsigned long value, int hex)
{
	char buf[32];
	int fd = open(path, O_WRONLY);
	long ret;

	if (fd < 0)
		return -1;
	snprintf(buf, sizeof(buf), hex ? "%#lx\n" : "%lu\n", value);
	ret = write(fd, buf, strlen(buf));
	close(fd);
	return ret;
}

/* Make sure the 2 MiB pool has at least `n` free pages (pages in use stay in it). */
static inline int reserve_huge_pages(long n)
{
	const char *d = "/sys/kernel/mm/hugepages/hugepages-2048kB/";
	char path[128], buf[32] = "";
	long total, free_pages;
	int fd;

	snprintf(path, sizeof(path), "%sfree_hugepages", d);
	fd = open(path, O_RDONLY);
	if (fd < 0 || read(fd, buf, sizeof(buf) - 1) <= 0)
		return -1;
	close(fd);
	free_pages = strtol(buf, NULL, 10);
	snprintf(path, sizeof(path), "%snr_hugepages", d);
	fd = open(path, O_RDONLY);
	memset(buf, 0, sizeof(buf));
	if (fd < 0 || read(fd, buf, sizeof(buf) - 1) <= 0)
		return -1;
	close(fd);
	total = strtol(buf, NULL, 10);
	if (free_pages < n && write_file(path, total + n - free_pages, 0) < 0)
		return -1;
	return 0;
}

/* mmap at a 2 MiB-aligned address, so that a THP can back an aligned 2 MiB range. */
static inline void *mmap_aligned(size_t size, int prot, int flags, int fd, off_t off)
{
	size_t align = 2UL << 20;
	char *p = mmap(NULL, size + align, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *at;

	if (p == MAP_FAILED)
		return p;
	at = (char *)(((uintptr_t)p + align - 1) & ~(align - 1));
	munmap(p, size + align);
	return mmap(at, size, prot, flags | MAP_FIXED, fd, off);
}

static inline long meminfo(const char *key)
{
	char buf[8192], *at;
	int fd = open("/proc/meminfo", O_RDONLY);
	ssize_t n = fd >= 0 ? read(fd, buf, sizeof(buf) - 1) : -1;

	if (fd >= 0)
		close(fd);
	buf[n > 0 ? n : 0] = 0;
	at = strstr(buf, key);
	return at ? strtol(at + strlen(key) + 1, NULL, 10) : -1;
}
"""


@dataclass
class Selftest:
    source: str = ""
    reasons: list[str] = field(default_factory=list)


def _ident(name: str) -> str:
    s = re.sub(r"\W", "_", name)
    return s if not s[:1].isdigit() else "t_" + s


def generate_selftest(sc: Scenario, profile: str | None = None) -> Selftest:
    """The selftest C file for ``sc`` (see the module docstring), or why there is none.

    ``profile`` is the kernel the test is for: by default the scenario's own (its
    expectations were written for it), else linux-6.1. For another kernel, the scenario's
    expectations must still hold under that profile's model (an MADV_HWPOISON that is AR
    on 6.18 is AO on 6.1): a file that would assert what the model says the kernel does not
    do is refused, with the first expectation that fails."""
    out = Selftest()
    if len(sc.processes) != 1:
        out.reasons.append("a selftest is one single-threaded process; the scenario has "
                           f"{len(sc.processes)} processes")
        return out
    if sc.processes[0].threads != ["main"]:
        out.reasons.append("a selftest is one single-threaded process; process "
                           f"{sc.processes[0].name!r} has threads "
                           f"{', '.join(sc.processes[0].threads)}")
        return out
    profile = profile or sc.profile or "linux-6.1"
    if sc.host.geometry is not None or sc.host.hugepages.get("1G"):
        out.reasons.append("host: scaled geometry and 1 GiB pages are not translated")
        return out
    proc = sc.processes[0]
    _paths.clear()
    _sizes.clear()
    res = run_scenario(sc, profile_override=profile)
    if res.failures:
        first = res.failures[0]
        out.reasons.append(
            f"its expectations do not hold under {profile}"
            f"{f' (they are for {sc.profile})' if sc.profile and sc.profile != profile else ''}"
            f": {first}; write the test for the profile they hold on (--profile), or change "
            "the expectation")
        return out
    model = {r.index: r for r in res.steps if r.index is not None}
    body: list[str] = []
    w = body.append
    if proc.sigbus == "handler":
        w("\tstruct sigaction sa = { .sa_sigaction = sigbus_handler, .sa_flags = SA_SIGINFO };")
    w("\tlong ret, hardware_corrupted;")
    w("")
    w('\tif (geteuid())\n\t\tSKIP(return, "needs root (CAP_SYS_ADMIN)");')
    w("\tif (access(HWPOISON_DIR \"corrupt-pfn\", W_OK))\n"
      "\t\tSKIP(return, \"needs debugfs and the hwpoison_inject module\");")
    pool = sc.host.sysctl.get("vm.nr_hugepages", sc.host.hugepages.get("2M", 0))
    if pool:
        w(f"\tASSERT_EQ(0, reserve_huge_pages({pool}));")
    for name, value in sc.host.sysctl.items():
        if name == "vm.nr_hugepages":
            continue
        w(f"\tASSERT_LT(0, write_file({c_str('/proc/sys/' + name.replace('.', '/'))}, "
          f"{value}, 0));")
    if proc.sigbus == "handler":
        w("\tASSERT_EQ(0, sigaction(SIGBUS, &sa, NULL));")
    elif proc.sigbus == "ignore":
        w("\tASSERT_NE(SIG_ERR, signal(SIGBUS, SIG_IGN));")
    for policy in proc.mce_kill.values():
        w(f"\tASSERT_EQ(0, prctl(PR_MCE_KILL, PR_MCE_KILL_SET, {MCE_KILL[policy]}, 0, 0));")
    w('\thardware_corrupted = meminfo("HardwareCorrupted:");')
    decls: list[str] = []
    for step in sc.steps:
        try:
            lines = _step(step.key, step.action, proc.name, decls)
        except NotExpressible as e:
            out.reasons.append(f"step {step.index} ({step.key}): {e}")
            continue
        except (KeyError, ValueError) as e:
            out.reasons.append(f"step {step.index} ({step.key}): not translated: {e}")
            continue
        w("")
        w(f"\t/* step {step.index}: {step.key} */" + (f" /* {step.note} */" if step.note else ""))
        w("\tnr_sigbus = 0;")
        body.extend(lines)
        body.extend(_asserts(step, model.get(step.index)))
    if out.reasons:
        return out
    st_ = res.processes.get(proc.name, {})
    killed_by_sigbus = st_.get("state") != "running" and st_.get("signal") == 7
    if killed_by_sigbus:
        # the process dies of SIGBUS in a later step: the harness expects that signal
        w("\t/* not reached: SIGBUS ends the test, as TEST_SIGNAL expects */")
    final = (sc.expect.meminfo_delta.get("HardwareCorrupted") if sc.expect else None)
    if final is None:
        final = res.meminfo_after.get("HardwareCorrupted", 0) - \
            res.meminfo_before.get("HardwareCorrupted", 0)
    w("")
    w(f'\tASSERT_EQ({final}, meminfo("HardwareCorrupted:") - hardware_corrupted);')
    desc = (sc.description or sc.name).replace("*/", "* /")
    wrapped = "\n".join(" * " + ln for ln in _wrap(desc, 90))
    out.source = "\n".join([
        "// SPDX-License-Identifier: GPL-2.0",
        "/*",
        f" * {sc.name}",
        " *",
        wrapped,
        " *",
        f" * Written by `memfail selftest` from {sc.file}; the expected values are the",
        f" * scenario's expectations, or memfail's prediction for {profile} where it has none.",
        " */",
        PRELUDE,
        *sorted(set(decls)),
        "",
        (f"TEST_SIGNAL({_ident(sc.name)}, SIGBUS)" if killed_by_sigbus else
         f"TEST({_ident(sc.name)})"),
        "{",
        *body,
        "}",
        "",
        "TEST_HARNESS_MAIN",
        "",
    ])
    return out


def _wrap(text: str, width: int) -> list[str]:
    words, lines, cur = text.split(), [], ""
    for word in words:
        if cur and len(cur) + 1 + len(word) > width:
            lines.append(cur)
            cur = word
        else:
            cur = f"{cur} {word}".strip()
    return [*lines, cur] if cur else lines


def _addr(a: Any) -> str:
    m = re.match(r"^\s*([A-Za-z_][\w.\-]*)\s*(?:\+\s*(\S+))?\s*$", str(a))
    if m is None or isinstance(a, int):
        raise NotExpressible(f"address {a!r}: write NAME+OFFSET")
    off = parse_size(m.group(2)) if m.group(2) else 0
    return f"(map_{_ident(m.group(1))} + {off:#x})"


def _path(path: str, fs: str | None = None) -> str:
    base = re.sub(r"[^\w.\-]", "_", path.strip("/"))
    return f"{FS_DIRS.get(fs or 'tmpfs', '/dev/shm')}/memfail-{base}"


_paths: dict[str, str] = {}
_sizes: dict[str, int] = {}


def _target(a: Any, proc: str) -> str:
    if a.addr is not None and a.proc == proc:
        return f"pfn_of({_addr(a.addr)})"
    raise NotExpressible("a selftest names pages by proc + addr only")


def _step(key: str, a: Any, proc: str, decls: list[str]) -> list[str]:
    if getattr(a, "proc", proc) not in (proc, None) or getattr(a, "thread", None) not in \
            (None, "main"):
        raise NotExpressible("another process or thread")
    if key == "mmap":
        name = f"map_{_ident(a.name)}"
        decls.append(f"static char *{name};")
        size = parse_size(a.size)
        _sizes[a.name] = size
        prot = "PROT_READ" if a.prot == "r" else "PROT_READ | PROT_WRITE"
        if a.fd is None:
            flags = ["MAP_SHARED" if a.shared else "MAP_PRIVATE", "MAP_ANONYMOUS"]
            if a.hugetlb == "2M":
                flags += ["MAP_HUGETLB", "MAP_HUGE_2MB"]
            elif a.hugetlb:
                raise NotExpressible("1 GiB pages")
            fd = "-1"
        else:
            flags = ["MAP_PRIVATE" if a.shared is False else "MAP_SHARED"]
            fd = f"fd_{_ident(a.fd)}"
        if a.populate:
            flags.append("MAP_POPULATE")
        if a.locked:
            flags.append("MAP_LOCKED")
        out = [f"\t{name} = mmap_aligned({size}, {prot}, {' | '.join(flags)}, {fd}, "
               f"{parse_size(a.offset)});", f"\tASSERT_NE(MAP_FAILED, {name});"]
        if a.thp:
            out.append(f"\tASSERT_EQ(0, madvise({name}, {size}, MADV_HUGEPAGE));")
        return [*out, "\tret = 0;"]
    if key == "munmap":
        n = parse_size(a.len) if a.len is not None else None
        m = re.match(r"\s*([A-Za-z_][\w.\-]*)", str(a.addr))
        size = n if n is not None else _sizes.get(m.group(1) if m else "", 0)
        if not size:
            raise NotExpressible("munmap of a mapping this test did not make")
        return [f"\tret = munmap({_addr(a.addr)}, {size});"]
    if key == "mem_read":
        return [f"\tret = read_mem((volatile unsigned char *){_addr(a.addr)}, "
                f"{parse_size(a.len)});"]
    if key == "mem_write":
        return [f"\tret = write_mem((volatile unsigned char *){_addr(a.addr)}, "
                f"{parse_size(a.len)}, {a.value & 0xFF});"]
    if key == "madvise":
        return [f"\tret = madvise({_addr(a.addr)}, {parse_size(a.len)}, {ADVICE[a.advice]});"]
    if key in ("corrupt_pfn", "unpoison_pfn"):
        f = key.replace("_", "-")
        return [f'\tret = write_file(HWPOISON_DIR "{f}", {_target(a, proc)}, 1);']
    if key in ("hard_offline_page", "soft_offline_page"):
        return [f'\tret = write_file("/sys/devices/system/memory/{key}", '
                f"{_target(a, proc)} << 12, 1);"]
    if key == "create":
        path = _paths.setdefault(a.path, _path(a.path, a.fs))
        if a.fs == "ramfs":
            raise NotExpressible("ramfs has no standard mount point")
        return [f"\tret = open({c_str(path)}, O_RDWR | O_CREAT | O_TRUNC, 0600);",
                "\tASSERT_LE(0, ret);",
                f"\tASSERT_EQ(0, ftruncate(ret, {parse_size(a.size)}));",
                "\tclose(ret);", "\tret = 0;"]
    if key == "open":
        fd = f"fd_{_ident(a.fd or a.path)}"
        decls.append(f"static int {fd} = -1;")
        path = _paths.get(a.path) or _path(a.path)
        return [f"\tret = {fd} = open({c_str(path)}, O_RDWR);", f"\tASSERT_LE(0, {fd});"]
    if key == "memfd_create":
        fd = f"fd_{_ident(a.fd or a.name)}"
        decls.append(f"static int {fd} = -1;")
        mfd = "MFD_HUGETLB" if a.hugetlb else "0"
        return [f"\tret = {fd} = memfd_create({c_str(a.name)}, {mfd});",
                f"\tASSERT_LE(0, {fd});",
                f"\tASSERT_EQ(0, ftruncate({fd}, {parse_size(a.size)}));"]
    if key == "unlink":
        return [f"\tret = unlink({c_str(_paths.get(a.path) or _path(a.path))});"]
    if key in ("close", "fsync"):
        return [f"\tret = {key}(fd_{_ident(a.fd)});"]
    if key == "ftruncate":
        return [f"\tret = ftruncate(fd_{_ident(a.fd)}, {parse_size(a.size)});"]
    if key == "fallocate":
        mode = "FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE" if a.mode == "punch_hole" else "0"
        return [f"\tret = fallocate(fd_{_ident(a.fd)}, {mode}, {parse_size(a.offset)}, "
                f"{parse_size(a.len)});"]
    if key in ("read", "pread", "write", "pwrite"):
        n = parse_size(a.len)
        buf = _addr(a.buf) if a.buf is not None else "iobuf"
        if a.buf is None:
            decls.append(f"static char iobuf[{max(n, 4096)}];" if n <= 1 << 22 else
                         "static char iobuf[1 << 22];")
        lines = []
        if key in ("write", "pwrite") and a.buf is None:
            lines.append(f"\tmemset(iobuf, {(a.value if a.value is not None else 1) & 0xFF},"
                         f" {n});")
        fd = f"fd_{_ident(a.fd)}"
        if key in ("pread", "pwrite"):
            lines.append(f"\tret = {key}({fd}, {buf}, {n}, {parse_size(a.offset or 0)});")
        else:
            if a.offset is not None:
                lines.append(f"\tlseek({fd}, {parse_size(a.offset)}, SEEK_SET);")
            lines.append(f"\tret = {key}({fd}, {buf}, {n});")
        return lines
    if key == "pagemap":
        return [f"\tret = pagemap_entry({_addr(a.addr)}) >> 62;  /* 2: present, 1: swapped "
                "(a hwpoison entry) */"]
    if key == "kpageflags":
        return [f"\tret = kpageflags({_target(a, proc)}) >> 19 & 1;  /* KPF_HWPOISON */"]
    if key == "meminfo":
        return ['\tret = meminfo("HardwareCorrupted:") - hardware_corrupted;']
    if key == "prctl":
        if a.op == "set":
            return [f"\tret = prctl(PR_MCE_KILL, PR_MCE_KILL_SET, "
                    f"{MCE_KILL[a.policy or 'default']}, 0, 0);"]
        if a.op == "clear":
            arg = MCE_KILL[a.policy] if a.policy else "0"
            return [f"\tret = prctl(PR_MCE_KILL, PR_MCE_KILL_CLEAR, {arg}, 0, 0);"]
        return ["\tret = prctl(PR_MCE_KILL_GET, 0, 0, 0, 0);"]
    if key == "sysctl":
        return [f"\tret = write_file({c_str('/proc/sys/' + a.name.replace('.', '/'))}, "
                f"{a.value}, 0) < 0 ? -1 : 0;"]
    raise NotExpressible(f"action {key!r} is not translated into a selftest")


def _asserts(step: Any, rec: Any) -> list[str]:
    """ASSERTs for one step: the scenario's expectations, else the model's prediction."""
    out: list[str] = []
    exp = step.expect
    given = exp.model_fields_set if exp is not None else set()
    ret = exp.ret if "ret" in given else (rec.ret if rec is not None else None)
    errno = exp.errno if "errno" in given else (rec.errno if rec is not None else None)
    if step.key in ("mmap", "create", "open", "memfd_create", "pagemap", "kpageflags",
                    "meminfo"):
        ret = None if step.key != "kpageflags" else _kpf(ret)
        if step.key == "meminfo" and isinstance(rec.ret if rec else None, dict):
            ret = None
    if step.key in ("corrupt_pfn", "unpoison_pfn", "hard_offline_page", "soft_offline_page") \
            and isinstance(ret, int) and ret > 0:
        out.append("\tASSERT_LT(0, ret);")
        ret = None
    if ret == "sigbus":
        out.append("\tASSERT_EQ(-2, ret);  /* SIGBUS */")
    elif isinstance(ret, int) and not isinstance(ret, bool):
        out.append(f"\tASSERT_EQ({ret}, ret);")
    if errno and ERRNOS_OK.match(errno) and ret == -1:
        out.append(f"\tASSERT_EQ({errno}, errno);")
    if "signals" in given and exp is not None:
        sigs = exp.signals
        if not exp.signals_subset:
            out.append(f"\tASSERT_EQ({len(sigs)}, nr_sigbus);")
        if sigs:
            s = sigs[-1]
            if s.code:
                out.append(f"\tASSERT_EQ({SIG_CODES.get(s.code, s.code)}, last_code);")
            if s.addr is not None:
                out.append(f"\tASSERT_EQ((void *){_addr(s.addr)}, last_addr);")
            if s.lsb is not None:
                out.append(f"\tASSERT_EQ({s.lsb}, last_lsb);")
    return out


def _kpf(ret: Any) -> int | None:
    if isinstance(ret, list):
        return int("HWPOISON" in ret)
    return None
