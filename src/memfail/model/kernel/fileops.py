"""Action handlers for files: create, memfd_create, open/close/unlink, ftruncate,
fallocate (punch hole), read/pread/write/pwrite and fsync.

Poisoned page-cache pages make read()/write() fail with EIO (R43); hugetlbfs read() stops at
the first poisoned raw page on kernels with partial reads (KS-09/10); a user buffer in poisoned
memory makes the kernel's copy stop at the poisoned buffer page (R3, R41): the bytes copied
before it, or -EFAULT when it is the first, no signal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..actions import (
    Close,
    Create,
    DropCaches,
    Fadvise,
    Fallocate,
    FileIO,
    Fsync,
    Ftruncate,
    Link,
    MemfdCreate,
    Open,
    Pread,
    Pwrite,
    Read,
    Splice,
    Symlink,
    Unlink,
    Write,
)
from ..errors import EBADF, EEXIST, EFAULT, EINVAL, EIO, ENOENT, EOPNOTSUPP
from ..handlers import ActionResult, handles
from ..trace import PoisonConsumed
from ..units import parse_size
from .fs import EXT2, GMEM, HUGETLBFS, RAMFS, SHMEM, Inode
from .mem import HUGETLB, Folio

if TYPE_CHECKING:
    from ..state import HostState as Host
    from .task import Process

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


def _symlinks(host: Host) -> dict[str, str]:
    links: dict[str, str] = host.ext.setdefault("symlinks", {})
    return links


@handles(Open)
def do_open(host: Host, a: Open) -> ActionResult:
    proc = host.proc(a.proc)
    path = _symlinks(host).get(a.path, a.path)  # follow one symbolic link
    inode = host.files.get(path)
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
    """unlink(): remove one name; the inode goes when i_nlink is 0 and nothing holds it."""
    if _symlinks(host).pop(a.path, None) is not None:
        return ActionResult(0)  # the link itself is removed, not its target
    inode = host.files.pop(a.path, None)
    if inode is None:
        return ActionResult.err(-ENOENT)
    inode.nlink = max(inode.nlink - 1, 0)
    host.maybe_release_inode(inode)
    return ActionResult(0)


@handles(Link)
def do_link(host: Host, a: Link) -> ActionResult:
    """link(): another directory entry for the same inode (inc_nlink)."""
    inode = host.files.get(_symlinks(host).get(a.path, a.path))
    if inode is None:
        return ActionResult.err(-ENOENT)
    if a.new in host.files or a.new in _symlinks(host):
        return ActionResult.err(-EEXIST)
    host.files[a.new] = inode
    inode.nlink += 1
    return ActionResult(0)


@handles(Symlink)
def do_symlink(host: Host, a: Symlink) -> ActionResult:
    """symlink(): a name that open() resolves to ``target`` (which need not exist yet)."""
    if a.path in host.files or a.path in _symlinks(host):
        return ActionResult.err(-EEXIST)
    _symlinks(host)[a.path] = a.target
    return ActionResult(0)


def invalidate_mapping_pages(host: Host, inode: Inode, start: int, end: int) -> int:
    """invalidate_mapping_pages() -> mapping_evict_folio(): drop each clean, unmapped,
    unlocked page-cache folio whose only references are the cache's (dirty, writeback,
    mapped or pinned folios stay). Only disk-backed page cache (ext2) is dropped: shmem,
    ramfs and hugetlbfs pages are the data itself. Returns the number of pages dropped."""
    if inode.kind != EXT2:
        return 0
    dropped = 0
    for idx in sorted(i for i in inode.pages if start <= i < end):
        folio = inode.pages[idx]
        if ("dirty" in folio.flags or folio.mapped or "mlocked" in folio.flags
                or folio.refcount > folio.refs["pagecache"]):
            continue
        dropped += folio.nr_pages
        host.delete_from_page_cache(folio)
    return dropped


def _write_back(host: Host, inode: Inode, start: int, end: int) -> None:
    """filemap_fdatawrite_range(): dirty pages of an ext2 file go to disk and turn clean."""
    for idx, folio in inode.pages.items():
        if start <= idx < end and "dirty" in folio.flags and folio.pfn not in \
                host.phys.hwpoison:
            inode.disk[idx] = host.phys.data.get(folio.pfn, 0)
            folio.flags.discard("dirty")


@handles(Fadvise)
def do_fadvise(host: Host, a: Fadvise) -> ActionResult:
    """generic_fadvise(POSIX_FADV_DONTNEED): nothing on noop_backing_dev_info file systems
    (tmpfs, ramfs, hugetlbfs); otherwise start write-back of the range, then
    invalidate_mapping_pages() over it. Pages still under write-back are skipped by the
    kernel; the model completes the write-back first, so written pages stay cached too."""
    proc = host.proc(a.proc)
    inode = host.fd(proc, a.fd).inode
    geo = host.geometry
    off = parse_size(a.offset, geo.page_size)
    length = parse_size(a.len, geo.page_size)
    if inode.kind != EXT2:
        return ActionResult(0)
    start = off >> geo.page_shift
    end = 1 << 62 if length == 0 else (off + length + geo.page_size - 1) >> geo.page_shift
    dirty_before = {i for i, f in inode.pages.items() if "dirty" in f.flags}
    _write_back(host, inode, start, end)
    for idx in dirty_before:
        f = inode.pages.get(idx)
        if f is not None:
            f.get("writeback")  # under write-back: invalidate skips it
    invalidate_mapping_pages(host, inode, start, end)
    for idx in dirty_before:
        f = inode.pages.get(idx)
        if f is not None:
            f.put("writeback")
    return ActionResult(0)


@handles(DropCaches)
def do_drop_caches(host: Host, a: DropCaches) -> ActionResult:
    """drop_caches_sysctl_handler() -> iterate_supers(drop_pagecache_sb): every inode's
    clean page cache is invalidated (value 3 also drops slab objects, not modelled)."""
    total = 0
    for inode in list(host.inodes):
        if not inode.extra.get("released"):
            total += invalidate_mapping_pages(host, inode, 0, 1 << 62)
    return ActionResult(total)


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
    """fallocate(): guest_memfd through its hook; hugetlbfs punch_hole (hugetlbfs_punch_hole)
    and allocate (hugetlbfs_fallocate, fs/hugetlbfs/inode.c); shmem allocate."""
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

    if inode.kind == HUGETLBFS:
        # hugetlbfs_fallocate() (fs/hugetlbfs/inode.c, R54): the range rounded out to whole
        # huge pages; an index already in the page cache (poisoned or not) is skipped, any
        # other gets a cleared huge folio from the pool (alloc_hugetlb_folio(), the file's
        # reservation first) added to the page cache (hugetlb_add_to_page_cache()); none free
        # stops it with -ENOSPC, the folios added so far staying.
        from ..errors import ENOSPC

        h = host.hugetlb.hstate(inode.huge_order)
        resv: set[int] = inode.extra.get("resv_idx", set())
        step = 1 << inode.huge_order
        for i in range(off // unit, (off + length + unit - 1) // unit):
            index = i * step
            if inode.lookup(index) is not None:
                continue
            folio = host.hugetlb.dequeue(h, owner=proc.comm, use_reserve=index in resv)
            if folio is None:
                return ActionResult.err(-ENOSPC)
            resv.discard(index)
            folio.flags |= {"hugetlb_migratable", "dirty"}
            host.phys.clear_data(folio.pfn, folio.nr_pages)
            folio.mapping, folio.index = inode, index
            inode.pages[index] = folio
            folio.get("pagecache", folio.nr_pages)
        inode.size = max(inode.size, off + length)
    if inode.kind == SHMEM:
        for idx in range(off >> geo.page_shift, (off + length + geo.page_size - 1)
                         >> geo.page_shift):
            find_or_create_cache_folio(host, inode, idx)
        inode.size = max(inode.size, off + length)
    return ActionResult(0)


def _buffer_copy(host: Host, proc: Process, buf: int | None, at: int, length: int,
                 kernel_reads: bool) -> int:
    """How many of ``length`` bytes at ``buf + at`` the kernel's copy to (read) or from
    (write) the user buffer gets through before it faults (``kaccess.uaccess_span``, R3, R41):
    all of them for the default scratch buffer (``buf`` None)."""
    if buf is None:
        return length
    from .kaccess import uaccess_span

    return uaccess_span(host, proc, buf + at, length, kernel_reads)


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
    """read()/pread()/write()/pwrite() of ``len`` bytes, one page-cache page at a time.

    The copy to or from the user buffer stops at the first buffer page that faults
    (``_buffer_copy``: a hwpoison entry, a PG_hwpoison page-cache page the fault finds, a
    consumed latent error; R3, R41), and the call returns the bytes copied before it, or
    -EFAULT when none were:

    * read: filemap_read() (ext2, ramfs), shmem_file_read_iter() and hugetlbfs_read_iter()
      look the file page up first (R43: -EIO for a refused page), then copy_folio_to_iter()
      / copy_page_to_iter(); a short copy ends the loop with -EFAULT, and the call returns
      `already_read ? already_read : error` (shmem: `retval ?: error`), counting the bytes of
      the short copy;
    * write: generic_perform_write() (ext2, ramfs, shmem) first calls
      fault_in_iov_iter_readable() on the chunk: when nothing of it faults in, `status =
      -EFAULT; break;`, otherwise ->write_begin() (shmem_write_begin(): -EIO for a
      PG_hwpoison page) and copy_page_from_iter_atomic(); a short copy is retried with
      `bytes = copied`, so exactly the bytes before the faulting buffer page are written and
      the next chunk's fault-in stops the loop; it returns `written ? written : status`.
    """
    proc = host.proc(a.proc)
    host.thread(proc, a.thread)
    of = host.fd(proc, a.fd)
    inode = of.inode
    geo = host.geometry
    off = parse_size(a.offset or 0, geo.page_size) if positional or a.offset is not None \
        else of.pos
    length = parse_size(a.len, geo.page_size)
    if inode.kind == GMEM or (write and inode.kind == HUGETLBFS):
        return ActionResult.err(-EINVAL)
    buf = host.resolve_in(proc, a.buf, "buf") if a.buf is not None else None
    done = 0
    pos = off
    end = off + length
    data: list[int] = []
    fault = False  # the copy stopped at a buffer page, not at a file page
    if not write:
        end = min(end, inode.size)
    while pos < end:
        index = pos >> geo.page_shift
        chunk = min(end, (index + 1) << geo.page_shift) - pos
        if write:
            # fault_in_iov_iter_readable() before ->write_begin()
            copied = _buffer_copy(host, proc, buf, done, chunk, kernel_reads=True)
            if not copied:
                fault = True
                break
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
        if not write:
            # copy_folio_to_iter() / copy_page_to_iter() into the user buffer
            copied = _buffer_copy(host, proc, buf, done, chunk, kernel_reads=False)
            if copied:
                data.append(host.phys.data.get(pfn, 0) if folio is not None else 0)
        if write and folio is not None:
            host.phys.data[pfn] = 1 if a.value is None else a.value
            folio.flags.add("dirty")
        done += copied
        pos += copied
        if copied < chunk:
            fault = True
            break
    if write and done:
        inode.size = max(inode.size, off + done)  # generic_perform_write() extends i_size
    if not positional:
        of.pos = off + done
    if done == 0 and pos < end:
        return ActionResult.err(-EFAULT if fault else -EIO)
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


@handles(Splice)
def do_splice(host: Host, a: Splice) -> ActionResult:
    """splice() from a file into a pipe: the file's splice_read goes through read_iter."""
    if a.offset is None:
        return _io(host, Read(proc=a.proc, fd=a.fd, len=a.len), write=False, positional=False)
    return _io(host, Pread(proc=a.proc, fd=a.fd, offset=a.offset, len=a.len), write=False,
               positional=True)


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

