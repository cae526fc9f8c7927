"""Action handlers for files: create, memfd_create, open/close/unlink, ftruncate,
fallocate (punch hole), read/pread/write/pwrite and fsync.

Poisoned page-cache pages make read()/write() fail with EIO (R43); hugetlbfs read() stops at
the first poisoned raw page on kernels with partial reads (KS-09/10); a user buffer in poisoned
memory makes the kernel's copy fail (R3): -EFAULT, no signal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..actions import (
    Close,
    Create,
    Fallocate,
    FileIO,
    Fsync,
    Ftruncate,
    MemfdCreate,
    Open,
    Pread,
    Pwrite,
    Read,
    Unlink,
    Write,
)
from ..errors import EBADF, EEXIST, EFAULT, EINVAL, EIO, ENOENT, EOPNOTSUPP
from ..host import ActionResult, handles
from ..trace import PoisonConsumed
from ..units import parse_size
from .fs import EXT2, GMEM, HUGETLBFS, RAMFS, SHMEM, Inode
from .mem import HUGETLB, Folio
from .mm import HWPOISON

if TYPE_CHECKING:
    from ..host import Host
    from .task import Process, Thread

FS_KIND = {"tmpfs": SHMEM, "hugetlbfs": HUGETLBFS, "ext2": EXT2, "ramfs": RAMFS}


@handles(Create)
def do_create(host: Host, a: Create) -> ActionResult:
    if a.path in host.files:
        return ActionResult.err(-EEXIST)
    kind = FS_KIND[a.fs]
    order = host.geometry.huge_order(a.huge) if kind == HUGETLBFS else 0
    size = parse_size(a.size, host.geometry.page_size)
    inode = host.new_inode(kind, a.path, size, order)
    inode.nlink = 1
    host.files[a.path] = inode
    return ActionResult(0)


@handles(MemfdCreate)
def do_memfd_create(host: Host, a: MemfdCreate) -> ActionResult:
    proc = host.proc(a.proc)
    kind = HUGETLBFS if a.hugetlb else SHMEM
    order = host.geometry.huge_order(a.huge) if a.hugetlb else 0
    inode = host.new_inode(kind, f"memfd:{a.name}", parse_size(a.size), order)
    inode.nlink = 0
    host.open_inode(proc, inode, a.fd or a.name)
    return ActionResult(0)


@handles(Open)
def do_open(host: Host, a: Open) -> ActionResult:
    proc = host.proc(a.proc)
    inode = host.files.get(a.path)
    if inode is None:
        return ActionResult.err(-ENOENT)
    host.open_inode(proc, inode, a.fd or a.path)
    return ActionResult(0)


@handles(Close)
def do_close(host: Host, a: Close) -> ActionResult:
    proc = host.proc(a.proc)
    if a.fd not in proc.fds:
        return ActionResult.err(-EBADF)
    host.close_fd(proc, a.fd)
    return ActionResult(0)


@handles(Unlink)
def do_unlink(host: Host, a: Unlink) -> ActionResult:
    inode = host.files.pop(a.path, None)
    if inode is None:
        return ActionResult.err(-ENOENT)
    inode.nlink = 0
    host.maybe_release_inode(inode)
    return ActionResult(0)


@handles(Ftruncate)
def do_ftruncate(host: Host, a: Ftruncate) -> ActionResult:
    proc = host.proc(a.proc)
    inode = host.fd(proc, a.fd).inode
    size = parse_size(a.size, host.geometry.page_size)
    if inode.kind == HUGETLBFS and size & ((1 << (host.geometry.page_shift +
                                                  inode.huge_order)) - 1):
        return ActionResult.err(-EINVAL)
    if size < inode.size:
        first = (size + host.geometry.page_size - 1) >> host.geometry.page_shift
        host.truncate_range(inode, first, 1 << 62, even_cows=True)
    inode.size = size
    return ActionResult(0)


@handles(Fallocate)
def do_fallocate(host: Host, a: Fallocate) -> ActionResult:
    proc = host.proc(a.proc)
    inode = host.fd(proc, a.fd).inode
    geo = host.geometry
    off = parse_size(a.offset, geo.page_size)
    length = parse_size(a.len, geo.page_size)
    if inode.kind == GMEM:
        hook = host.ext.get("gmem_fallocate")
        if hook is None:
            return ActionResult.err(-EOPNOTSUPP)
        return ActionResult.err(r) if (r := hook(host, inode, a.mode, off, length)) \
            else ActionResult(0)
    if inode.kind not in (SHMEM, HUGETLBFS):
        return ActionResult.err(-EOPNOTSUPP)
    unit = 1 << (geo.page_shift + inode.huge_order)
    if a.mode == "punch_hole":
        s = (off + unit - 1) // unit * unit
        e = (off + length) // unit * unit
        if e > s:
            host.truncate_range(inode, s >> geo.page_shift, e >> geo.page_shift,
                                even_cows=False)
        return ActionResult(0)
    from .mmops import find_or_create_cache_folio

    if inode.kind == SHMEM:
        for idx in range(off >> geo.page_shift, (off + length + geo.page_size - 1)
                         >> geo.page_shift):
            find_or_create_cache_folio(host, inode, idx)
        inode.size = max(inode.size, off + length)
    return ActionResult(0)


def _buffer_fault(host: Host, proc: Process, t: Thread, buf: int | str | None,
                  kernel_reads: bool) -> int:
    """A user buffer the kernel copies from (write) or to (read): a hwpoison entry makes the
    copy fault (-EFAULT, no signal); a latent error consumed by copy_from_user is a machine
    check with fixup: -EFAULT, then memory_failure(pfn, 0) via kill_me_never (R3)."""
    if buf is None:
        return 0
    from .inject import consume_kernel

    addr = host._resolve(proc, buf, "buf")
    assert proc.mm is not None
    vma = proc.mm.find_vma(addr)
    if vma is None:
        return -EFAULT
    k = proc.mm.entry_key(vma, addr, host.geometry.page_shift)
    if k is None:
        return 0
    pte = proc.mm.ptes[k[0]]
    if pte.kind == HWPOISON:
        return -EFAULT
    pfn = pte.pfn + ((addr - k[0]) >> host.geometry.page_shift)
    if kernel_reads and pfn in host.phys.hw_errors:
        consume_kernel(host, pfn, by=f"copy_from_user in {proc.comm}")
        return -EFAULT
    return 0


def _cache_page_refused(host: Host, inode: Inode, folio: Folio, pfn: int) -> bool:
    """Whether read()/write() stop at this page-cache page because it is poisoned (R43).

    * shmem: shmem_get_folio() refuses a PG_hwpoison folio, so read() and write() return
      -EIO (or a short count) there;
    * hugetlbfs: read() copies up to the first poisoned raw page (adjust_range_hwpoison,
      KS-09/10), or fails on the whole folio before that change;
    * disk file systems and ramfs go through the generic filemap_read() /
      generic_perform_write(), which do not test PG_hwpoison: a page that memory_failure()
      could not remove (ramfs: "Failed to invalidate") keeps being read and written; an
      ext2 page that was truncated is no longer in the cache at all.
    """
    if inode.kind == SHMEM:
        return pfn in host.phys.hwpoison
    if folio.kind == HUGETLB:
        return "hwpoison" in folio.flags and (
            pfn in folio.raw_hwp or "raw_hwp_unreliable" in folio.flags
            or not host.profile.hugetlb_read_partial)
    return False


def _io(host: Host, a: FileIO, write: bool, positional: bool) -> ActionResult:
    proc = host.proc(a.proc)
    t = host.thread(proc, a.thread)
    of = host.fd(proc, a.fd)
    inode = of.inode
    geo = host.geometry
    off = parse_size(a.offset or 0, geo.page_size) if positional or a.offset is not None \
        else of.pos
    length = parse_size(a.len, geo.page_size)
    if inode.kind == GMEM or (write and inode.kind == HUGETLBFS):
        return ActionResult.err(-EINVAL)
    err = _buffer_fault(host, proc, t, a.buf, kernel_reads=write)
    if err:
        return ActionResult.err(err)
    done = 0
    pos = off
    end = off + length
    data: list[int] = []
    if not write:
        end = min(end, inode.size)
    while pos < end:
        index = pos >> geo.page_shift
        chunk = min(end, (index + 1) << geo.page_shift) - pos
        folio = inode.lookup(index)
        if folio is None and not write and inode.kind == EXT2 and index in inode.disk:
            from .mmops import find_or_create_cache_folio

            folio = find_or_create_cache_folio(host, inode, index)  # filemap_read() reads it in
        if folio is None and write:
            from .mmops import find_or_create_cache_folio

            folio = find_or_create_cache_folio(host, inode, index)
        if folio is not None:
            pfn = folio.pfn + (index - folio.index)
            if _cache_page_refused(host, inode, folio, pfn):
                if (folio.kind == HUGETLB and not write and done and
                        pos == folio.index << geo.page_shift):
                    # hugetlbfs_read_iter(): adjust_range_hwpoison() returns 0 at the start
                    # of a huge page and the loop sets retval = -EIO, dropping the bytes
                    # already copied from the previous huge pages in this call (KS-09/10)
                    if not positional:
                        of.pos = pos
                    return ActionResult.err(-EIO)
                break
            if not write and pfn in host.phys.hw_errors:
                # copyout: copy_to_user() reads the page-cache page in kernel mode; its
                # source is kernel memory, so error_context() finds no MCE-safe fixup and
                # the machine check is fatal (R47; RT-11 "probably fatal") [DERIVED]
                host.emit(PoisonConsumed(host.trace.step, pfn, f"read() copyout in "
                                         f"{proc.comm}", "kernel", proc.pid))
                host.panic("Data load in unrecoverable area of kernel")
            if write:
                host.phys.data[pfn] = 1 if a.value is None else a.value
                folio.flags.add("dirty")
        if not write:
            data.append(host.phys.data.get(pfn, 0) if folio is not None else 0)
        done += chunk
        pos += chunk
    if write and done:
        inode.size = max(inode.size, off + done)  # generic_perform_write() extends i_size
    if not positional:
        of.pos = off + done
    if done == 0 and pos < end:
        return ActionResult.err(-EIO)
    return ActionResult(done, data=None if write else data)


@handles(Read)
def do_read(host: Host, a: Read) -> ActionResult:
    return _io(host, a, write=False, positional=False)


@handles(Pread)
def do_pread(host: Host, a: Pread) -> ActionResult:
    return _io(host, a, write=False, positional=True)


@handles(Write)
def do_write(host: Host, a: Write) -> ActionResult:
    return _io(host, a, write=True, positional=False)


@handles(Pwrite)
def do_pwrite(host: Host, a: Pwrite) -> ActionResult:
    return _io(host, a, write=True, positional=True)


@handles(Fsync)
def do_fsync(host: Host, a: Fsync) -> ActionResult:
    """fsync(): write back dirty pages; report a recorded writeback error once (R25).

    Only a disk file system reports write-back errors: ext2's ->fsync is
    generic_file_fsync(), which ends in file_check_and_advance_wb_err() (EIO once per open
    file). tmpfs/memfd (shmem_file_operations), ramfs and hugetlbfs use noop_fsync(), which
    returns 0 whatever memory_failure() recorded; guest_memfd has no ->fsync, so
    vfs_fsync_range() returns -EINVAL."""
    proc = host.proc(a.proc)
    of = host.fd(proc, a.fd)
    inode = of.inode
    if inode.kind == GMEM:
        return ActionResult.err(-EINVAL)
    if inode.kind != EXT2:
        return ActionResult(0)  # noop_fsync
    if inode.kind == EXT2:
        for idx, folio in inode.pages.items():
            if "dirty" in folio.flags:
                inode.disk[idx] = host.phys.data.get(folio.pfn, 0)
                folio.flags.discard("dirty")
            for key in folio.rmap:
                pte = host.mms[key[0]].ptes.get(key[1])
                if pte is not None and pte.dirty:
                    inode.disk[idx] = host.phys.data.get(folio.pfn, 0)
                    pte.dirty = False
    if inode.wb_err > of.wb_err_seen:
        of.wb_err_seen = inode.wb_err
        return ActionResult.err(-EIO)
    return ActionResult(0)

