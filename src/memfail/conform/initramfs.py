"""Write an initramfs: a gzip-compressed cpio archive in the kernel's "newc" format.

The kernel's init/initramfs.c unpacks it into rootfs before running /init; nothing outside
Python is needed to build one.
"""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    """One archive member: a directory, a regular file, a symlink or a character device."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def directory(path: str) -> Entry:
    return Entry(path, stat.S_IFDIR | 0o755)


def file(path: str, data: bytes, executable: bool = False) -> Entry:
    return Entry(path, stat.S_IFREG | (0o755 if executable else 0o644), data)


def symlink(path: str, target: str) -> Entry:
    return Entry(path, stat.S_IFLNK | 0o777, target.encode())


def chardev(path: str, major: int, minor: int) -> Entry:
    return Entry(path, stat.S_IFCHR | 0o600, b"", (major, minor))


def _header(ino: int, e: Entry, namesize: int) -> bytes:
    fields = [ino, e.mode, 0, 0, 1 if not stat.S_ISDIR(e.mode) else 2, 0, len(e.data),
              0, 0, e.rdev[0], e.rdev[1], namesize, 0]
    return b"070701" + b"".join(b"%08X" % f for f in fields)


def _pad(n: int) -> bytes:
    return b"\0" * (-n % 4)


def cpio_newc(entries: list[Entry]) -> bytes:
    """The uncompressed archive; parent directories must come before their members."""
    out = bytearray()
    for ino, e in enumerate([*entries, Entry("TRAILER!!!", 0)], start=1):
        name = e.path.lstrip("/").encode() + b"\0"
        hdr = _header(ino if e.path != "TRAILER!!!" else 0, e, len(name))
        out += hdr + name
        out += _pad(len(hdr) + len(name))
        out += e.data + _pad(len(e.data))
    return bytes(out)


def initramfs(entries: list[Entry]) -> bytes:
    """A gzip-compressed newc archive (the kernel's RD_GZIP), fast to write and to unpack."""
    return gzip.compress(cpio_newc(entries), compresslevel=1, mtime=0)
