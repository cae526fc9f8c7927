"""Boot a real kernel under QEMU (software emulation) and run generated programs in it.

The kernel comes from the cache that ``scripts/setup-system.sh`` fills (Debian's kernel image
unpacked, never installed): ``.cache/kernels/NAME/{vmlinuz,modules/*.ko}``. Each program is
linked statically and packed with busybox into an initramfs; /init mounts proc, sysfs, debugfs
and the file systems the scenarios use, loads hwpoison_inject, runs every case under a
timeout between markers on the serial console, and powers off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty, Queue
from typing import TextIO

from . import initramfs as ir
from .cgen import runtime_header

KERNELS = {"debian-6.1": "linux-6.1"}  # kernel name -> the model profile it matches
MODULES = ("hwpoison-inject", "crc16", "mbcache", "jbd2", "crc32c_generic", "ext4", "brd")
BUSYBOX = ("/usr/bin/busybox", "/bin/busybox")
SETUP_HINT = "run scripts/setup-system.sh (as root) to install QEMU, busybox, gcc and the kernel"


class GuestUnavailable(Exception):
    """A tool or the kernel image is missing; the message says how to get it."""


@dataclass
class BootResult:
    """What the serial console said, split per case, and how long it all took."""

    cases: dict[str, list[str]] = field(default_factory=dict)
    status: dict[str, str] = field(default_factory=dict)
    console: str = ""
    boot_info: str = ""
    seconds: float = 0.0
    build_seconds: float = 0.0


def cache_root() -> Path:
    env = os.environ.get("MEMFAIL_CACHE")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").exists():
            return parent / ".cache"
    return Path.cwd() / ".cache"


def kernel_dir(name: str) -> Path:
    if name not in KERNELS:
        raise GuestUnavailable(f"unknown kernel {name!r}; known: {', '.join(KERNELS)}")
    d = cache_root() / "kernels" / name
    if not (d / "vmlinuz").exists():
        raise GuestUnavailable(f"kernel {name} is not in {d}; {SETUP_HINT}")
    return d


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise GuestUnavailable(f"{name} is not installed; {SETUP_HINT}")
    return path


def busybox() -> bytes:
    for p in BUSYBOX:
        if Path(p).exists():
            data = Path(p).read_bytes()
            if b"GLIBC_" not in data[:4096] and b"ld-linux" not in data[:4096]:
                return data
    raise GuestUnavailable(f"a static busybox is not installed; {SETUP_HINT}")


def require(kernel: str) -> Path:
    """Everything a conformance run on ``kernel`` needs, checked before any work is done:
    the kernel's image, QEMU, gcc and a static busybox. Returns the kernel's directory;
    raises GuestUnavailable naming the first one missing (and how to install it)."""
    kdir = kernel_dir(kernel)
    tool("qemu-system-x86_64")
    tool("gcc")
    busybox()
    return kdir


def compile_program(source: str, out: Path, cc: str | None = None
                    ) -> subprocess.CompletedProcess[str]:
    """gcc -static the program (runtime.h next to it); the result says whether it worked.

    Binaries are cached by the hash of their source and the runtime, so a rerun of the same
    scenarios does not compile again."""
    out.parent.mkdir(parents=True, exist_ok=True)
    header = runtime_header()
    hpath = out.parent / "runtime.h"
    if not hpath.exists() or hpath.read_text() != header:
        # programs compile in parallel in one directory: replace the header atomically
        tmp = out.parent / f".runtime.h.{os.getpid()}.{threading.get_ident()}"
        tmp.write_text(header)
        tmp.replace(hpath)
    src = out.with_suffix(".c")
    src.write_text(source)
    key = hashlib.sha256((header + "\0" + source).encode()).hexdigest()[:32]
    cached = cache_root() / "conform-bin" / key
    if cached.exists():
        shutil.copyfile(cached, out)
        out.chmod(0o755)
        return subprocess.CompletedProcess([], 0, "", "")
    done = subprocess.run([cc or tool("gcc"), "-static", "-O1", "-o", str(out), str(src),
                           "-lpthread"], capture_output=True, text=True, check=False)
    if done.returncode == 0:
        with contextlib.suppress(OSError):
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}")
            shutil.copyfile(out, tmp)
            tmp.replace(cached)
    return done


INIT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t debugfs debugfs /sys/kernel/debug
mount -t devtmpfs dev /dev
mkdir -p /mf/tmpfs /mf/huge2M /mf/ext2 /mf/ramfs
mount -t tmpfs tmpfs /mf/tmpfs
mount -t hugetlbfs -o pagesize=2M hugetlbfs /mf/huge2M
mount -t ramfs ramfs /mf/ramfs
mkdir -p /dev/shm /dev/hugepages
mount -t tmpfs tmpfs /dev/shm
mount -t hugetlbfs -o pagesize=2M hugetlbfs /dev/hugepages
for m in MODULES; do [ -f /modules/$m.ko ] && insmod /modules/$m.ko 2>/dev/null; done
[ -b /dev/ram0 ] || insmod /modules/brd.ko rd_nr=1 rd_size=65536 2>/dev/null
mke2fs -q /dev/ram0 >/dev/null 2>&1 && mount -t ext2 /dev/ram0 /mf/ext2
echo "@mf-boot $(uname -r) hwpoison=$([ -e /sys/kernel/debug/hwpoison/corrupt-pfn ] && echo 1 || echo 0) ext2=$(grep -c ' /mf/ext2 ' /proc/mounts)"
cd /mf/ext2 2>/dev/null || cd /tmp
while read name; do
  echo "@mf-case-begin $name"
  timeout -s KILL TIMEOUT /cases/$name
  echo "@mf-case-end $name $?"
  kill -9 -1 2>/dev/null; sleep 0.1
  echo 0 > /proc/sys/vm/nr_hugepages
  echo 0 > /proc/sys/vm/nr_overcommit_hugepages
  echo 0 > /proc/sys/vm/memory_failure_early_kill
  echo 1 > /proc/sys/vm/memory_failure_recovery
  for f in enable dev-major dev-minor flags-mask flags-value memcg; do
    v=0; case $f in dev-*) v=4294967295;; esac
    echo $v > /sys/kernel/debug/hwpoison/corrupt-filter-$f 2>/dev/null
  done
  rm -rf /mf/tmpfs/* /mf/huge2M/* /mf/ramfs/* /mf/ext2/[!l]* /dev/shm/* /dev/hugepages/*
done < /cases/LIST
echo "@mf-all-done"
poweroff -f
"""


def build_initramfs(programs: dict[str, bytes], kdir: Path, timeout: int) -> bytes:
    init = INIT.replace("MODULES", " ".join(m for m in MODULES if m != "brd")) \
        .replace("TIMEOUT", str(timeout))
    entries = [ir.directory(d) for d in ("bin", "dev", "proc", "sys", "mf", "modules", "cases",
                                         "tmp")]
    entries += [ir.chardev("dev/console", 5, 1), ir.file("bin/busybox", busybox(), True),
                ir.file("init", init.encode(), True)]
    for m in MODULES:
        p = kdir / "modules" / f"{m}.ko"
        if p.exists():
            entries.append(ir.file(f"modules/{m}.ko", p.read_bytes()))
    for name, data in programs.items():
        entries.append(ir.file(f"cases/{name}", data, True))
    entries.append(ir.file("cases/LIST", "".join(f"{n}\n" for n in programs).encode()))
    return ir.initramfs(entries)


# MCi_STATUS: VAL, UC, EN, MISCV, ADDRV, S; MCACOD 0xC0 (memory scrubbing): an SRAO error
# (arch/x86/kernel/cpu/mce/severity.c: "Action optional: memory scrubbing error").
SRAO_STATUS = 0xBD000000000000C0
SRAO_MCG_STATUS = 0x5  # MCIP | RIPV
SRAO_MISC = 0x8C  # address mode physical (2 << 6), least significant valid bit 12


def inject_srao(monitor: Path, phys: int, bank: int = 9) -> None:
    """QEMU monitor `mce`: a machine check in bank ``bank`` of CPU 0 for ``phys``."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(monitor))
        s.settimeout(5)
        _read_prompt(s)
        s.sendall(f"mce 0 {bank} {SRAO_STATUS:#x} {SRAO_MCG_STATUS:#x} {phys:#x} "
                  f"{SRAO_MISC:#x}\n".encode())
        _read_prompt(s)


def _read_prompt(s: socket.socket) -> None:
    buf = b""
    with contextlib.suppress(TimeoutError):
        while not buf.rstrip().endswith(b"(qemu)"):
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk


def boot(programs: dict[str, bytes], kernel: str, *, timeout: int = 20, memory: str = "1G",
         on_line: Callable[[str], None] | None = None, log: TextIO | None = None
         ) -> BootResult:
    """Boot ``kernel`` with the programs and collect each case's ``@mf`` lines."""
    kdir = kernel_dir(kernel)
    qemu = tool("qemu-system-x86_64")
    res = BootResult()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="memfail-conform-") as tmp:
        img = Path(tmp) / "initramfs.gz"
        img.write_bytes(build_initramfs(programs, kdir, timeout))
        res.build_seconds = time.monotonic() - t0
        monitor = Path(tmp) / "monitor.sock"
        # an Intel CPU model: the guest grades the injected machine checks with Intel's
        # severity table (SRAO = action optional); QEMU gives it MCG_SER_P under TCG too
        cmd = [qemu, "-accel", "tcg", "-cpu", "qemu64,vendor=GenuineIntel", "-m", memory,
               "-smp", "1", "-nographic", "-no-reboot",
               "-monitor", f"unix:{monitor},server,nowait",
               "-kernel", str(kdir / "vmlinuz"), "-initrd", str(img),
               "-append", "console=ttyS0 quiet loglevel=1 panic=-1 transparent_hugepage=madvise "
                          "printk.devkmsg=on"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace")
        lines: list[str] = []
        current: str | None = None
        queue: Queue[str | None] = Queue()

        def reader() -> None:
            assert proc.stdout is not None
            for raw in proc.stdout:
                queue.put(raw)
            queue.put(None)

        threading.Thread(target=reader, daemon=True).start()
        # the guest prints at least a marker per case: silence this long means it hung
        idle = timeout + 60
        try:
            while True:
                try:
                    raw = queue.get(timeout=idle)
                except Empty:
                    lines.append(f"@mf-host: no output for {idle} s; the guest was stopped")
                    break
                if raw is None:
                    break
                line = raw.rstrip("\r\n").replace("\r", "")
                lines.append(line)
                if log is not None:
                    log.write(line + "\n")
                    log.flush()
                m = re.search(r"@mf-mce (0x[0-9a-f]+)", line)
                if m:
                    inject_srao(monitor, int(m.group(1), 16))
                    continue
                if "@mf-boot" in line:
                    res.boot_info = line.split("@mf-boot", 1)[1].strip()
                m = re.search(r"@mf-case-begin (\S+)", line)
                if m:
                    current = m.group(1)
                    res.cases[current] = []
                    if on_line:
                        on_line(current)
                    continue
                m = re.search(r"@mf-case-end (\S+) (\d+)", line)
                if m:
                    res.status[m.group(1)] = "timeout" if m.group(2) == "137" else (
                        "ok" if m.group(2) == "0" else f"exit {m.group(2)}")
                    current = None
                    continue
                if current is not None and "Kernel panic - not syncing" in line:
                    msg = line[line.find("Kernel panic"):]
                    res.cases[current].append(json.dumps({"t": "panic", "msg": msg}))
                    res.status[current] = "panic"
                idx = line.find("@mf {")
                if current is not None and idx >= 0:
                    res.cases[current].append(line[idx + 4:])
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        res.console = "\n".join(lines)
    res.seconds = time.monotonic() - t0
    for name in programs:
        if res.status.get(name) == "panic":
            continue
        res.status.setdefault(name, "not run (the guest stopped)" if name not in res.cases
                              else "crashed (no end marker)")
    return res
