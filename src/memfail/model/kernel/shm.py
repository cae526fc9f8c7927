"""System V shared memory: shmget (with SHM_HUGETLB), shmat and shmctl(IPC_RMID).

Models ipc/shm.c newseg() (shmem_kernel_file_setup, or hugetlb_file_setup for SHM_HUGETLB,
which reserves the whole segment from the HugeTLB pool at once), do_shmat() (a MAP_SHARED
mapping of the segment's file) and shm_destroy() (the file is released when the segment is
removed and no process has it attached).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..actions import Mmap, Shmat, ShmctlRmid, Shmget
from ..errors import EEXIST, EINVAL, ENOMEM
from ..handlers import ActionResult, handles
from ..units import parse_size
from .fs import HUGETLBFS, SHMEM, Inode

if TYPE_CHECKING:
    from ..state import HostState as Host


def _segments(host: Host) -> dict[str, Inode]:
    segs: dict[str, Inode] = host.ext.setdefault("shm", {})
    return segs


@handles(Shmget)
def do_shmget(host: Host, a: Shmget) -> ActionResult:
    """newseg(): a shmem file, or with SHM_HUGETLB a hugetlbfs file whose pages are all
    reserved now (hugetlb_file_setup -> hugetlb_reserve_pages: -ENOMEM if the pool, with
    overcommit, cannot cover them)."""
    segs = _segments(host)
    if a.shm in segs:
        return ActionResult.err(-EEXIST)
    geo = host.geometry
    size = parse_size(a.size, geo.page_size)
    if size <= 0:
        return ActionResult.err(-EINVAL)
    key = 0x1000 + len(host.ext.setdefault("shm_keys", []))
    host.ext["shm_keys"].append(a.shm)
    if a.hugetlb is None:
        inode = host.new_inode(SHMEM, f"SYSV{key:08x}", size)
    else:
        order = geo.huge_order(a.hugetlb)
        unit = 1 << (geo.page_shift + order)
        size = (size + unit - 1) // unit * unit
        inode = host.new_inode(HUGETLBFS, f"SYSV{key:08x}", size, order)
        n = size // unit
        if not host.hugetlb.reserve(host.hugetlb.hstate(order), n):
            return ActionResult.err(-ENOMEM)
        inode.extra["resv_idx"] = {i * (1 << order) for i in range(n)}
    inode.nlink = 1  # the IPC id holds the file until IPC_RMID
    segs[a.shm] = inode
    return ActionResult(0)


@handles(Shmat)
def do_shmat(host: Host, a: Shmat) -> ActionResult:
    """do_shmat(): map the whole segment MAP_SHARED, read-write."""
    inode = _segments(host).get(a.shm)
    if inode is None or inode.extra.get("shm_removed"):
        return ActionResult.err(-EINVAL)
    proc = host.proc(a.proc)
    fd = f"\0shm:{a.shm}"  # a file reference only the mapping keeps
    host.open_inode(proc, inode, fd)
    from .mmops import do_mmap

    res = do_mmap(host, Mmap(proc=a.proc, name=a.name, size=inode.size, fd=fd, shared=True))
    host.close_fd(proc, fd)
    return res


@handles(ShmctlRmid)
def do_shmctl_rmid(host: Host, a: ShmctlRmid) -> ActionResult:
    """shmctl(IPC_RMID): the key goes; shm_destroy() runs once nobody is attached."""
    inode = _segments(host).pop(a.shm, None)
    if inode is None:
        return ActionResult.err(-EINVAL)
    inode.extra["shm_removed"] = True
    inode.nlink = 0
    host.maybe_release_inode(inode)
    return ActionResult(0)
