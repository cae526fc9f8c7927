"""Scenario → C: a standalone program that performs a scenario's steps on a real kernel.

``generate(scenario)`` returns a ``Program``: the C source (which includes ``runtime.h``), or
the reasons it cannot be written. The program prints JSON lines prefixed ``@mf `` that
``memfail.conform.compare`` reads. Only the user-space subset of the scenario format can be
expressed; every other action, and every host setting a guest cannot reproduce, is a reason,
never silently dropped.
"""

from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from memfail.model.errors import ModelInputError
from memfail.model.units import parse_size
from memfail.scenario.loader import Scenario

GUEST_MOUNTS = {"tmpfs": "/mf/tmpfs", "hugetlbfs": "/mf/huge2M", "ext2": "/mf/ext2",
                "ramfs": "/mf/ramfs"}
ADVICE = {"hwpoison": "MADV_HWPOISON", "soft_offline": "MADV_SOFT_OFFLINE",
          "dontneed": "MADV_DONTNEED", "remove": "MADV_REMOVE"}
MCE_KILL = {"early": "PR_MCE_KILL_EARLY", "late": "PR_MCE_KILL_LATE",
            "default": "PR_MCE_KILL_DEFAULT"}
SYSCTLS = {"vm.memory_failure_early_kill", "vm.memory_failure_recovery",
           "vm.enable_soft_offline", "vm.nr_hugepages", "vm.nr_overcommit_hugepages",
           "vm.panic_on_unrecoverable_memory_failure"}
KPF_BITS = {"BUDDY": 10, "SLAB": 7, "HUGE": 17, "COMPOUND_HEAD": 15, "PGTABLE": 26,
            "RESERVED": 32}
# Actions a user-space program has no way to perform, and why.
NOT_EXPRESSIBLE = {
    "scrub": "a scrub finds a latent error, and a latent error (hw_error detect: latent) has "
             "no counterpart in the guest; write hw_error with detect: scrub",
    "mf_queue": "memory_failure_queue() is reached only from firmware (GHES) reports",
    "swapout": "the guest has no swap device",
    "ksm_merge": "KSM merging depends on ksmd's scan timing",
    "kernel_access": "a kernel-side access is not a user-space action",
    "stage": "events in flight are a model construct",
}
VM_REASON = ("KVM and guest_memfd: the TCG guest has no KVM (no nested virtualisation), and "
             "guest_memfd is newer than 6.1")
for _key in ("vm_create", "gmem_create", "memslot", "set_attributes", "guest_access",
             "vm_destroy", "vm_reset"):
    NOT_EXPRESSIBLE[_key] = VM_REASON


@dataclass
class Program:
    """A generated program, or why there is none (``reasons``)."""

    scenario: str
    source: str = ""
    reasons: list[str] = field(default_factory=list)
    steps: int = 0
    panics: bool = False  # may panic the guest: run it last, alone of its kind
    # the shared kernel pages it poisons (the zero page, the huge zero page, a reserved
    # page), which stay poisoned for the rest of the boot: alone of its kind in a boot
    poisons_kernel_page: frozenset[str] = frozenset()

    @property
    def expressible(self) -> bool:
        return not self.reasons


class NotExpressible(Exception):
    """One part of a scenario cannot be written as a user-space program."""


def runtime_header() -> str:
    return resources.files("memfail.conform").joinpath("runtime.h").read_text()


def c_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid C string literal for printable text


_ADDR = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(?:\+\s*(\S+))?\s*$")


@dataclass
class _Proc:
    index: int
    threads: list[str]


@dataclass
class _Gen:
    sc: Scenario
    procs: dict[str, _Proc] = field(default_factory=dict)
    maps: dict[str, int] = field(default_factory=dict)
    fds: dict[str, int] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    map_size: dict[tuple[str, str], int] = field(default_factory=dict)
    track: dict[tuple[str, str, int], int] = field(default_factory=dict)
    cases: list[str] = field(default_factory=list)
    main: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    model_pfns: list[dict[int, int]] = field(default_factory=list)
    # steps at which the model's CPU loads an error a machine check left in place (step,
    # pfn), and whether the model poisons a shared kernel page (the zero page, a reserved one)
    consumed: list[tuple[int, int]] = field(default_factory=list)
    poisons_kernel_page: frozenset[str] = frozenset()

    # ------------------------------------------------------------------ names
    def proc(self, name: str) -> _Proc:
        return self.procs[name]

    def thread(self, proc: str, name: str | None) -> int:
        threads = self.procs[proc].threads
        if name is None:
            return 0
        if name not in threads:
            raise NotExpressible(f"thread {name!r} of {proc!r} is not known here")
        return threads.index(name)

    def map_index(self, name: str) -> int:
        return self.maps.setdefault(name, len(self.maps))

    def fd_index(self, name: str) -> int:
        return self.fds.setdefault(name, len(self.fds))

    def addr(self, proc: str, addr: Any) -> tuple[int, int]:
        """(mapping index, offset) of a scenario address in ``proc``."""
        if isinstance(addr, int):
            raise NotExpressible("a numeric address differs between model and guest; "
                                 "write NAME+OFFSET")
        m = _ADDR.match(str(addr))
        if m is None:
            raise NotExpressible(f"address {addr!r}")
        name = m.group(1)
        if name not in self.maps:
            raise NotExpressible(f"mapping {name!r} is not made by an mmap step")
        off = parse_size(m.group(2)) if m.group(2) else 0
        return self.maps[name], off

    def track_page(self, proc: str, addr: Any) -> None:
        try:
            m, off = self.addr(proc, addr)
        except NotExpressible:
            return
        name = next(n for n, i in self.maps.items() if i == m)
        key = (proc, name, off & ~0xFFF)
        self.track.setdefault(key, len(self.track))

    # ------------------------------------------------------------------ targets
    def target_pfn(self, a: Any, step: int) -> str:
        """A C expression for the pfn an action's target names (controller side)."""
        if getattr(a, "vm", None) is not None or getattr(a, "gpa", None) is not None:
            raise NotExpressible("guest physical addresses need a VM")
        if a.pfn is not None or a.phys is not None:
            pfn = a.pfn if a.pfn is not None else (
                int(a.phys.strip(), 16) if isinstance(a.phys, str) else int(a.phys)) >> 12
            k = self.page_of_model_pfn(pfn, step)
            if k is None:
                raise NotExpressible(f"pfn {pfn:#x} is not a page of a mapping the scenario "
                                     "touched, so it has no counterpart in the guest; name "
                                     "the page by proc + addr")
            return f"mf_hist[{k[0]}][{k[1]}]"
        if a.addr is not None:
            m, off = self.addr(a.proc, a.addr)
            p = self.proc(a.proc).index
            return f"mf_va_pfn({p}, {m}, {off:#x}UL)"
        if a.file is not None:
            off = parse_size(a.offset)
            if a.file in self.paths:
                return f"mf_file_pfn({c_str(self.paths[a.file])}, {off:#x})"
            if a.proc is not None and a.file in self.fds:
                p = self.proc(a.proc).index
                return f"mf_fd_pfn({p}, {self.fds[a.file]}, {off:#x})"
            if a.file in self.fds:
                raise NotExpressible(f"file {a.file!r} is an fd name (a memfd has no path): "
                                     "give proc as well, the process that holds the fd")
            raise NotExpressible(f"file {a.file!r} is not created by this scenario")
        if a.free is not None:
            if a.free == "buddy":
                return f"mf_scan_kpageflags(1ULL << {KPF_BITS['BUDDY']}, 0, 0)"
            if a.free == "1G":
                raise NotExpressible("1 GiB HugeTLB pages are not available in the guest")
            return (f"mf_plus(mf_scan_kpageflags((1ULL << {KPF_BITS['HUGE']}) | "
                    f"(1ULL << {KPF_BITS['COMPOUND_HEAD']}), 1ULL << 19, 1), {a.index})")
        if a.kernel is not None:
            if a.kernel == "zero_page":
                return "mf_zero_pfn()"
            bit = {"slab": "SLAB", "pagetable": "PGTABLE", "reserved": "RESERVED"}[a.kernel]
            return f"mf_scan_kpageflags(1ULL << {KPF_BITS[bit]}, 1ULL << 19, 0)"
        raise NotExpressible("no target")

    def page_of_model_pfn(self, pfn: int, step: int) -> tuple[int, int] | None:
        """(step, tracked page) where model pfn ``pfn`` was seen most recently before
        ``step``."""
        for s in range(min(step, len(self.model_pfns)) - 1, -1, -1):
            for k, v in self.model_pfns[s].items():
                if v == pfn:
                    return s, k
        return None


def generate(sc: Scenario, profile: str = "linux-6.1") -> Program:
    """Translate ``sc`` into a C program (see the module docstring)."""
    g = _Gen(sc)
    prog = Program(sc.name, steps=len(sc.steps))
    _check_host(g)
    _run_model(g, profile)
    # processes before step 0: spawn, prctl, sigaction (runner.setup_actions order)
    setup: list[str] = []
    for p in sc.processes:
        _new_proc(g, p.name, list(p.threads))
    for p in sc.processes:
        idx = g.procs[p.name].index
        names = ", ".join(c_str(t) for t in p.threads)
        setup.append(f"\t{{ static const char *const th[] = {{ {names} }}; "
                     f"mf_spawn({idx}, th, {len(p.threads)}, {int(p.caps)}); }}")
        for thread, policy in p.mce_kill.items():
            case = 10000 + len(g.cases)
            t = p.threads.index(thread)
            g.cases.append(f"\tcase {case}: *ret = prctl(PR_MCE_KILL, PR_MCE_KILL_SET, "
                           f"{MCE_KILL[policy]}, 0, 0); break;")
            setup.append(f"\tmf_run({case}, {idx}, {t});")
        if p.sigbus != "default":
            case = 10000 + len(g.cases)
            g.cases.append(f"\tcase {case}: *ret = mf_set_sigbus({c_str(p.sigbus)}, "
                           f"{p.exit_code}); break;")
            setup.append(f"\tmf_run({case}, {idx}, 0);")
    for step in sc.steps:
        try:
            _step(g, step.index, step.key, step.action)
        except NotExpressible as e:
            g.reasons.append(f"step {step.index} ({step.key}): {e}")
        except (KeyError, ValueError) as e:
            g.reasons.append(f"step {step.index} ({step.key}): not translated: {e}")
    for i, pfn in g.consumed[:1]:
        # hw_error (detect: scrub) is QEMU's `mce` command: a machine check, with the RAM
        # left readable. A later load of the page finds good data in the guest, where the
        # model (and real hardware) consumes the error.
        g.reasons.append(f"step {i} ({sc.steps[i].key}): the model's CPU loads the hardware "
                         f"error at pfn {pfn:#x} that a machine check left in place; QEMU's "
                         "injection leaves the memory readable, so the guest cannot show it")
    if g.reasons:
        prog.reasons = g.reasons
        return prog
    prog.source = _assemble(g, setup)
    prog.panics = _may_panic(sc)
    prog.poisons_kernel_page = g.poisons_kernel_page
    return prog


def _may_panic(sc: Scenario) -> bool:
    """A case that may panic the guest (memory_failure_recovery=0) must be the last to run."""
    if sc.host.sysctl.get("vm.memory_failure_recovery", 1) == 0:
        return True
    return any(st.key == "sysctl" and getattr(st.action, "name", "") ==
               "vm.memory_failure_recovery" and getattr(st.action, "value", 1) == 0
               for st in sc.steps)


def _check_host(g: _Gen) -> None:
    h = g.sc.host
    if h.geometry is not None:
        g.reasons.append("host.geometry: a scaled page geometry exists only in the model")
    if h.hugepages.get("1G") or h.overcommit.get("1G"):
        g.reasons.append("host.hugepages: 1 GiB HugeTLB pages are not available in the guest")
    if h.hvo or h.hvo_restore_fails:
        g.reasons.append("host.hvo: the vmemmap optimisation is not set up in the guest")
    for name in h.sysctl:
        if name not in SYSCTLS:
            g.reasons.append(f"host.sysctl: {name} is not translated")


def _run_model(g: _Gen, profile: str) -> None:
    """Step the model alongside, to learn which model pfn each tracked page had after each
    step (a literal ``pfn:`` target is translated to the guest page that held it)."""
    from memfail.scenario.runner import make_host, setup_actions

    sc = g.sc
    # tracked pages: every page a step names by proc + address
    for step in sc.steps:
        a = step.action
        if step.key == "mmap":
            g.map_index(a.name)  # type: ignore[attr-defined]
        proc, addr = getattr(a, "proc", None), getattr(a, "addr", None)
        if proc is not None and isinstance(addr, str):
            g.track_page(proc, addr)
    try:
        host = make_host(sc, profile, sc.policy)
        for action, _line in setup_actions(sc):
            host.apply(action)
        from memfail.model.kernel.mem import KERNEL
        from memfail.model.trace import PoisonConsumed

        for step in sc.steps:
            first = len(host.trace.events)
            with contextlib.suppress(ModelInputError):
                host.apply(step.action)
            g.model_pfns.append(_model_pfns(g, host))
            g.consumed += [(step.index, e.pfn) for e in host.trace.events[first:]
                           if isinstance(e, PoisonConsumed)]
        kinds = set()
        for pfn in host.phys.hwpoison:
            f = host.phys.folio_of(pfn)
            if f is not None and f.kind == KERNEL:
                if "huge_zero" in f.flags:
                    kinds.add("the huge zero page")
                elif "zero_page" in f.flags:
                    kinds.add("the zero page")
                elif "reserved" in f.flags:
                    kinds.add("a reserved kernel page")
        g.poisons_kernel_page = frozenset(kinds)
    except Exception:  # the comparison run reports model errors; here only pfns are learnt
        return


def _model_pfns(g: _Gen, host: Any) -> dict[int, int]:
    out: dict[int, int] = {}
    for (proc, name, off), k in g.track.items():
        p = host.processes.get(proc) if hasattr(host, "processes") else None
        if p is None or p.mm is None:
            continue
        vma = p.regions.get(name)
        if vma is None:
            continue
        hit = host.walk(p.mm, vma.start + off)
        if hit is not None:
            out[k] = hit[1]
    return out


def _new_proc(g: _Gen, name: str, threads: list[str]) -> _Proc:
    p = _Proc(len(g.procs), threads)
    g.procs[name] = p
    return p


def _case(g: _Gen, step: int, body: str) -> None:
    g.cases.append(f"\tcase {step}: {{\n{body}\n\t\tbreak;\n\t}}")


def _in_proc(g: _Gen, i: int, key: str, proc: str, thread: str | None, body: str,
             after: str = "", kind: str = "NULL") -> None:
    """A step performed by ``proc``'s ``thread``; ``body`` sets *ret (and errno)."""
    p = g.proc(proc).index
    t = g.thread(proc, thread)
    used = sorted(set(re.findall(r"mf_map_addr\[(\d+)\]", body)))
    if used and key not in ("mmap", "shmat"):
        # a mapping whose mmap failed at run time: the model fails the step with ENOENT
        # (the name vanished); the program must not touch address 0 instead
        missing = " || ".join(f"!mf_map_addr[{m}]" for m in used)
        body = (f"\t\tif ({missing}) {{ *ret = -1; errno = ENOENT; }} else {{\n{body}\n"
                "\t\t}")
    _case(g, i, body + "\n\t\tif (*ret == -1) *err = errno;")
    g.main.append(f"\t/* step {i}: {key} */\n\t{{ struct mf_ack a = mf_run({i}, {p}, {t});"
                  f" mf_print_result({i}, a.ret, a.err, {kind});{after} mf_step_done({i}); }}")


def _in_ctl(g: _Gen, i: int, key: str, body: str) -> None:
    """A step performed by the controller (a root shell); ``body`` sets ret and err."""
    g.main.append(f"\t/* step {i}: {key} */\n\t{{ long ret = 0; int err = 0;\n{body}\n"
                  f"\t  if (ret != -4) mf_print_result({i}, ret, err, NULL); "
                  f"mf_step_done({i}); }}")


def _path(g: _Gen, path: str, fs: str | None = None) -> str:
    if path in g.paths:
        return g.paths[path]
    if fs is None:
        raise NotExpressible(f"path {path!r} is not created by a create step")
    guest = GUEST_MOUNTS[fs] + "/" + re.sub(r"[^\w.\-]", "_", path.strip("/"))
    g.paths[path] = guest
    return guest


def _step(g: _Gen, i: int, key: str, a: Any) -> None:
    if key in NOT_EXPRESSIBLE:
        raise NotExpressible(NOT_EXPRESSIBLE[key])
    if key == "spawn":
        _new_proc(g, a.proc, list(a.threads))
        idx = g.procs[a.proc].index
        names = ", ".join(c_str(t) for t in a.threads)
        _in_ctl(g, i, key, f"\t  {{ static const char *const th[] = {{ {names} }}; "
                f"ret = mf_spawn({idx}, th, {len(a.threads)}, {int(a.caps)}); }}")
    elif key == "fork":
        parent = g.proc(a.proc)
        t = g.thread(a.proc, a.thread)
        cname = _model_child_thread(g, a)
        child = _new_proc(g, a.child, [cname])
        _case(g, i, f"\t\t*ret = mf_fork({child.index}, {c_str(cname)});")
        g.main.append(
            f"\t/* step {i}: fork */\n\t{{ struct mf_ack a = mf_run({i}, {parent.index}, {t});"
            f" mf_forked({parent.index}, {child.index}, a.ret);"
            f" mf_print_result({i}, a.ret, a.err, NULL); mf_step_done({i}); }}")
    elif key == "clone":
        g.proc(a.proc).threads.append(a.new)
        _in_proc(g, i, key, a.proc, a.thread, f"\t\t*ret = mf_add_thread({c_str(a.new)});")
    elif key == "exit":
        p = g.proc(a.proc).index
        g.main.append(f"\t/* step {i}: exit */\n\tmf_quit({p}, {a.code}, {i}); "
                      f"mf_print_result({i}, 0, 0, NULL); mf_step_done({i});")
    elif key == "prctl":
        if a.op == "set":
            body = (f"\t\t*ret = prctl(PR_MCE_KILL, PR_MCE_KILL_SET, "
                    f"{MCE_KILL[a.policy or 'default']}, 0, 0);")
        elif a.op == "clear":
            # a policy given with clear is passed as the (must-be-zero) third argument
            arg = MCE_KILL[a.policy] if a.policy else "0"
            body = f"\t\t*ret = prctl(PR_MCE_KILL, PR_MCE_KILL_CLEAR, {arg}, 0, 0);"
        else:
            # likewise for get: PR_MCE_KILL_GET takes no argument, so a policy other than
            # late (0) makes the call fail with EINVAL
            arg = MCE_KILL[a.policy] if a.policy else "0"
            body = f"\t\t*ret = prctl(PR_MCE_KILL_GET, 0, {arg}, 0, 0);"
        _in_proc(g, i, key, a.proc, a.thread, body)
    elif key == "sigaction":
        _in_proc(g, i, key, a.proc, None,
                 f"\t\t*ret = mf_set_sigbus({c_str(a.sigbus)}, {a.exit_code});")
    elif key == "sigprocmask":
        how = "SIG_BLOCK" if a.block else "SIG_UNBLOCK"
        _in_proc(g, i, key, a.proc, a.thread,
                 f"\t\tsigset_t s; sigemptyset(&s); sigaddset(&s, SIGBUS);\n"
                 f"\t\t*ret = pthread_sigmask({how}, &s, NULL) ? -1 : 0;")
    elif key == "create":
        if a.fs == "hugetlbfs" and a.huge != "2M":
            raise NotExpressible("1 GiB HugeTLB pages are not available in the guest")
        path = _path(g, a.path, a.fs)
        _in_ctl(g, i, key, f"\t  ret = mf_create({c_str(path)}, {parse_size(a.size)}L); "
                "err = ret ? errno : 0;")
    elif key == "unlink":
        path = _path(g, a.path)
        _in_ctl(g, i, key, f"\t  ret = unlink({c_str(path)}); err = ret ? errno : 0;")
    elif key == "open":
        path = _path(g, a.path)
        f = g.fd_index(a.fd or a.path)
        g.paths.setdefault(a.fd or a.path, path)
        _in_proc(g, i, key, a.proc, None,
                 f"\t\t*ret = mf_fd[{f}] = open({c_str(path)}, O_RDWR);",
                 after=f" mf_note_fd({g.proc(a.proc).index}, {f}, a.ret);", kind='"fd"')
    elif key == "memfd_create":
        if a.hugetlb and a.huge != "2M":
            raise NotExpressible("1 GiB HugeTLB pages are not available in the guest")
        f = g.fd_index(a.fd or a.name)
        flags = "MFD_HUGETLB | MAP_HUGE_2MB" if a.hugetlb else "0"
        size = parse_size(a.size)
        trunc = f" if (*ret >= 0 && ftruncate((int)*ret, {size}L)) *ret = -1;" if size else ""
        _in_proc(g, i, key, a.proc, None,
                 f"\t\t*ret = mf_fd[{f}] = memfd_create({c_str(a.name)}, {flags});{trunc}",
                 after=f" mf_note_fd({g.proc(a.proc).index}, {f}, a.ret);", kind='"fd"')
    elif key == "close":
        f = g.fds[a.fd]
        _in_proc(g, i, key, a.proc, None, f"\t\t*ret = close(mf_fd[{f}]);")
    elif key == "ftruncate":
        f = g.fds[a.fd]
        _in_proc(g, i, key, a.proc, None,
                 f"\t\t*ret = ftruncate(mf_fd[{f}], {parse_size(a.size)}L);")
    elif key == "fallocate":
        f = g.fds[a.fd]
        mode = "FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE" if a.mode == "punch_hole" else "0"
        _in_proc(g, i, key, a.proc, None,
                 f"\t\t*ret = fallocate(mf_fd[{f}], {mode}, {parse_size(a.offset)}L, "
                 f"{parse_size(a.len)}L);")
    elif key == "fsync":
        f = g.fds[a.fd]
        _in_proc(g, i, key, a.proc, None, f"\t\t*ret = fsync(mf_fd[{f}]);")
    elif key in ("read", "pread", "write", "pwrite"):
        f = g.fds[a.fd]
        n = parse_size(a.len)
        if a.buf is not None:
            m, off = g.addr(a.proc, a.buf)
            buf = f"(mf_map_addr[{m}] + {off:#x})"
            fill = ""
        else:
            buf = "b"
            fill = f"\t\tmemset(b, {(a.value if a.value is not None else 1) & 0xFF}, {n});\n" \
                if key in ("write", "pwrite") else ""
        pos = parse_size(a.offset) if a.offset is not None else None
        if key in ("pread", "pwrite"):
            call = f"{key}(mf_fd[{f}], {buf}, {n}, {pos or 0}L)"
            seek = ""
        else:
            call = f"{key}(mf_fd[{f}], {buf}, {n})"
            seek = f"\t\tlseek(mf_fd[{f}], {pos}L, SEEK_SET);\n" if pos is not None else ""
        _in_proc(g, i, key, a.proc, a.thread,
                 f"\t\tchar *b = malloc({n} + 1); int e;\n{fill}{seek}"
                 f"\t\t*ret = {call}; e = errno; free(b); errno = e;")
    elif key == "mmap":
        _mmap(g, i, a)
    elif key == "munmap":
        m, off = g.addr(a.proc, a.addr)
        whole = a.len is None and off == 0
        span = f"{parse_size(a.len)}UL" if a.len is not None else \
            f"mf_map_size[{m}] - {off:#x}"
        clear = f" if (!*ret) mf_map_addr[{m}] = NULL;" if whole else ""
        after = f" if (!a.ret) mf_ctl_map[{g.proc(a.proc).index}][{m}] = 0;" if whole else ""
        _in_proc(g, i, key, a.proc, None,
                 f"\t\t*ret = munmap(mf_map_addr[{m}] + {off:#x}, {span});{clear}",
                 after=after)
    elif key in ("mem_read", "mem_write"):
        m, off = g.addr(a.proc, a.addr)
        ptr = f"(volatile unsigned char *)(mf_map_addr[{m}] + {off:#x})"
        # whole: from addr to the end of the mapping, as the model's action reads it
        length = f"mf_map_size[{m}] - {off:#x}" if a.whole else str(parse_size(a.len))
        body = f"\t\tmf_mem_read({ptr}, {length}, ret);" if key == "mem_read" else \
            f"\t\tmf_mem_write({ptr}, {length}, {a.value & 0xFF}, ret);"
        _in_proc(g, i, key, a.proc, a.thread, body)
    elif key == "madvise":
        m, off = g.addr(a.proc, a.addr)
        _in_proc(g, i, key, a.proc, a.thread,
                 f"\t\t*ret = madvise(mf_map_addr[{m}] + {off:#x}, {parse_size(a.len)}, "
                 f"{ADVICE[a.advice]});")
    elif key == "hwpoison_filter":
        _filter(g, i, a)
    elif key == "user_copy":
        if a.via != "copy":
            raise NotExpressible("via: gup: no system call reports get_user_pages()'s "
                                 "EHWPOISON to user space as the model's action does")
        n = parse_size(a.len)
        if n > 1 << 20:
            raise NotExpressible("a copy larger than 1M (the pipe it goes through)")
        m, off = g.addr(a.proc, a.addr)
        # copy_from_user() in a pipe write (R42): a hwpoison entry makes it fail with EFAULT
        _in_proc(g, i, key, a.proc, a.thread,
                 f"\t\tint pf[2], e;\n\t\tif (pipe(pf)) {{ *ret = -1; break; }}\n"
                 f"\t\tfcntl(pf[1], F_SETPIPE_SZ, {max(n, 4096)});\n"
                 f"\t\t*ret = write(pf[1], mf_map_addr[{m}] + {off:#x}, {n}); e = errno;\n"
                 f"\t\tclose(pf[0]); close(pf[1]); errno = e;")
    elif key == "hw_error":
        if a.detect != "scrub":
            raise NotExpressible(
                f"detect: {a.detect}: " + ("the machine check must come on the very load that "
                                           "consumes the error, which QEMU cannot time"
                                           if a.detect == "latent" else
                                           "firmware-first (GHES) reports need ACPI APEI "
                                           "tables the guest does not have")
                + "; detect: scrub is expressible (QEMU injects an SRAO machine check)")
        _in_ctl(g, i, key, f"\t  ret = mf_mce({g.target_pfn(a, i)}); err = ret ? errno : 0;")
    elif key in ("corrupt_pfn", "unpoison_pfn", "hard_offline_page", "soft_offline_page",
                 "kpageflags"):
        _inject(g, i, key, a)
    elif key == "pagemap":
        m, off = g.addr(a.proc, a.addr)
        p = g.proc(a.proc).index
        _in_ctl(g, i, key, f"\t  mf_print_pagemap({i}, {p}, mf_ctl_map[{p}][{m}] + {off:#x});"
                " ret = -4;")
    elif key == "meminfo":
        _in_ctl(g, i, key, f"\t  mf_print_meminfo({i}, NULL); ret = -4;")
    elif key == "sysctl":
        if a.name not in SYSCTLS:
            raise NotExpressible(f"sysctl {a.name} is not translated")
        path = "/proc/sys/" + a.name.replace(".", "/")
        # the pool's size goes on top of the pages earlier cases left in use
        write = f"mf_write_pool({c_str(path)}, {int(a.value)})" if a.name == "vm.nr_hugepages" \
            else f"mf_write_str({c_str(path)}, \"{a.value}\\n\")"
        _in_ctl(g, i, key, f"\t  ret = {write} < 0 ? -1 : 0; err = ret ? errno : 0;")
    elif key == "hugepages":
        if a.size != "2M":
            raise NotExpressible("1 GiB HugeTLB pages are not available in the guest")
        d = "/sys/kernel/mm/hugepages/hugepages-2048kB/"
        oc = f" mf_write_str({c_str(d + 'nr_overcommit_hugepages')}, \"{a.overcommit}\\n\");" \
            if a.overcommit is not None else ""
        _in_ctl(g, i, key, f"\t {oc} ret = mf_write_pool({c_str(d + 'nr_hugepages')}, "
                f"{int(a.count)}); err = ret < 0 ? errno : 0;")
    else:
        raise NotExpressible(f"action {key!r} is not translated")


KPF_NAMES = ["LOCKED", "ERROR", "REFERENCED", "UPTODATE", "DIRTY", "LRU", "ACTIVE", "SLAB",
             "WRITEBACK", "RECLAIM", "BUDDY", "MMAP", "ANON", "SWAPCACHE", "SWAPBACKED",
             "COMPOUND_HEAD", "COMPOUND_TAIL", "HUGE", "UNEVICTABLE", "HWPOISON", "NOPAGE",
             "KSM", "THP", "OFFLINE", "ZERO_PAGE", "IDLE", "PGTABLE"]


def _kpf_bits(v: Any) -> int:
    if isinstance(v, int):
        return v
    return sum(1 << KPF_NAMES.index(str(n).upper()) for n in v)


def _filter(g: _Gen, i: int, a: Any) -> None:
    """The debugfs hwpoison filter files (R15); the guest's device numbers are not the model's,
    so a device filter other than "any" (-1) cannot be carried over."""
    for fld in ("dev_major", "dev_minor"):
        if getattr(a, fld) not in (None, -1, 0xFFFFFFFF):
            raise NotExpressible(f"{fld}: the guest's file systems have other device numbers "
                                 "than the model's")
    if a.memcg not in (None, 0):
        raise NotExpressible("memcg: the guest's memory cgroup inode numbers are not the "
                             "model's")
    d = "/sys/kernel/debug/hwpoison/corrupt-filter-"
    writes = []
    for fld, name, val in (("flags_mask", "flags-mask", a.flags_mask),
                           ("flags_value", "flags-value", a.flags_value),
                           ("dev_major", "dev-major", a.dev_major),
                           ("dev_minor", "dev-minor", a.dev_minor),
                           ("memcg", "memcg", a.memcg),
                           ("enable", "enable", a.enable)):
        if val is None:
            continue
        num = int(val) if fld == "enable" else (_kpf_bits(val) if fld.startswith("flags")
                                                else int(val) & 0xFFFFFFFF)
        writes.append(f"\t  if (mf_write_str({c_str(d + name)}, \"{num:#x}\\n\") < 0) "
                      "{ ret = -1; err = errno; }")
    _in_ctl(g, i, "hwpoison_filter", "\n".join(writes))


def _model_child_thread(g: _Gen, a: Any) -> str:
    parent = g.proc(a.proc)
    return parent.threads[g.thread(a.proc, a.thread)] if a.thread else parent.threads[0]


def _mmap(g: _Gen, i: int, a: Any) -> None:
    m = g.map_index(a.name)
    size = parse_size(a.size)
    prot = "PROT_READ" if a.prot == "r" else "PROT_READ | PROT_WRITE"
    if a.fd is None:
        flags = ["MAP_SHARED" if a.shared else "MAP_PRIVATE", "MAP_ANONYMOUS"]
        if a.hugetlb == "1G":
            raise NotExpressible("1 GiB HugeTLB pages are not available in the guest")
        if a.hugetlb:
            flags += ["MAP_HUGETLB", "MAP_HUGE_2MB"]
        fd = "-1"
    else:
        flags = ["MAP_PRIVATE" if a.shared is False else "MAP_SHARED"]
        if a.hugetlb:
            raise NotExpressible("mmap.hugetlb with an fd: the file decides the page size")
        fd = f"mf_fd[{g.fds[a.fd]}]"
    if a.populate:
        flags.append("MAP_POPULATE")
    if a.locked:
        flags.append("MAP_LOCKED")
    thp = f"\n\t\tif (*ret != -1) madvise((void *)*ret, {size}, MADV_HUGEPAGE);" if a.thp else ""
    p = g.proc(a.proc).index
    _in_proc(g, i, "mmap", a.proc, None,
             f"\t\tvoid *r = mf_mmap({size}UL, {prot}, {' | '.join(flags)}, {fd}, "
             f"{parse_size(a.offset)}L);\n"
             f"\t\tif (r == MAP_FAILED) *ret = -1;\n"
             f"\t\telse {{ mf_map_addr[{m}] = r; mf_map_size[{m}] = {size}UL; "
             f"*ret = (long)r; }}{thp}",
             after=f" if (a.ret != -1) mf_ctl_map[{p}][{m}] = (uintptr_t)a.ret;",
             kind='"addr"')


def _inject(g: _Gen, i: int, key: str, a: Any) -> None:
    pfn = g.target_pfn(a, i)
    if key == "kpageflags":
        _in_ctl(g, i, key, f"\t  mf_print_kpageflags({i}, {pfn}); ret = -4;")
        return
    if key in ("corrupt_pfn", "unpoison_pfn"):
        path = f"/sys/kernel/debug/hwpoison/{key.replace('_', '-')}"
        value = "pfn"
    else:
        path = f"/sys/devices/system/memory/{key}"
        value = "pfn << 12"
    body = (f"\t  long pfn = {pfn}; char s[32]; snprintf(s, sizeof(s), \"%#lx\\n\", "
            f"(unsigned long)({value}));\n"
            f"\t  ret = pfn < 0 ? (errno = ENOENT, -1) : mf_write_str({c_str(path)}, s); "
            "err = ret < 0 ? errno : 0;")
    as_proc = getattr(a, "as_proc", None)
    if as_proc is None:
        _in_ctl(g, i, key, body)
        return
    p = g.proc(as_proc).index
    _case(g, i, f"\t\t*ret = mf_write_str({c_str(path)}, mf_cmd_str); if (*ret == -1) "
          "*err = errno;")
    g.main.append(f"\t/* step {i}: {key} as {as_proc} */\n\t{{ long pfn = {pfn}; "
                  f"snprintf(mf_arg, sizeof(mf_arg), \"%#lx\\n\", "
                  f"(unsigned long)({value}));\n"
                  f"\t  struct mf_ack a = mf_run({i}, {p}, 0); "
                  f"mf_print_result({i}, a.ret, a.err, NULL); mf_step_done({i}); }}")


def _assemble(g: _Gen, setup: list[str]) -> str:
    sc = g.sc
    procs = sorted(g.procs.items(), key=lambda kv: kv[1].index)
    maps = sorted(g.maps.items(), key=lambda kv: kv[1])
    track = sorted(g.track.items(), key=lambda kv: kv[1])
    host = []
    pool = sc.host.hugepages.get("2M", 0)
    oc = sc.host.overcommit.get("2M", 0)
    d = "/sys/kernel/mm/hugepages/hugepages-2048kB/"
    sysctl = dict(sc.host.sysctl)
    pool = sysctl.pop("vm.nr_hugepages", pool)
    oc = sysctl.pop("vm.nr_overcommit_hugepages", oc)
    # huge pages still in use from earlier cases (poisoned folios are never freed, R30) are
    # surplus now; a new nr_hugepages would absorb them, so ask for that many more
    host.append(f"\tmf_set_pool({pool});")
    host.append(f"\tmf_write_str({c_str(d + 'nr_overcommit_hugepages')}, \"{oc}\\n\");")
    for name, value in sysctl.items():
        host.append(f"\tmf_write_str({c_str('/proc/sys/' + name.replace('.', '/'))}, "
                    f"\"{value}\\n\");")
    tracks = "\n".join(f"\tmf_track({k}, {g.procs[p].index}, {g.maps[m]}, {off:#x}UL);"
                       for (p, m, off), k in track if p in g.procs)
    return "\n".join([
        f"/* {sc.name}: generated by `memfail conform` from {sc.file}. */",
        f"#define MF_NPROC {max(1, len(procs))}",
        f"#define MF_NMAPS {max(1, len(maps))}",
        f"#define MF_NFDS {max(1, len(g.fds))}",
        f"#define MF_NTRACK {len(track)}",
        f"#define MF_NSTEPS {len(sc.steps)}",
        '#include "runtime.h"',
        "static const char *const mf_proc_names[MF_NPROC] = { "
        + (", ".join(c_str(n) for n, _ in procs) or '"-"') + " };",
        "static const char *const mf_map_names[MF_NMAPS] = { "
        + (", ".join(c_str(n) for n, _ in maps) or '"-"') + " };",
        "",
        "static void mf_track_all(void)\n{\n" + tracks + "\n}",
        "",
        "static void mf_do_step(int step, long *ret, int *err)\n{\n\tswitch (step) {",
        *g.cases,
        "\tdefault: *ret = -1; *err = ENOSYS;\n\t}\n}",
        "",
        "int main(void)\n{",
        "\tmf_controller_init();",
        f"\tmf_out(\"{{\\\"t\\\":\\\"start\\\",\\\"case\\\":%s}}\", {c_str(c_str(sc.name))});",
        *host,
        *setup,
        "\tmf_flush_all(-1);",
        "\tmf_track_all();",
        "\tmf_print_meminfo(-1, \"before\");",
        *g.main,
        "\tmf_finish();",
        "\treturn 0;\n}",
        "",
    ])
