"""The cyclic garbage collector around one model run.

A Host is a graph of reference cycles (a folio and its inode, a process and its threads, an mm
and its VMAs), so a Host dropped after a run is freed by the cyclic collector only, never by
reference counting. Left to itself, the collector runs every 700 allocations: a long run's
Host, still alive, is moved into the older generations, and it is then found dead only by a
full collection, which goes over every object the program keeps (caches of earlier runs
included). ``young_garbage_only`` holds the collector off for the run and then collects the
youngest generation once, where the whole of the run's Host still is: each object of the run is
looked at once, and the older generations grow only by what the run returns.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def young_garbage_only() -> Iterator[None]:
    """Hold the cyclic collector off inside the block, then collect the youngest generation
    (the block's objects) once. Nested blocks and a collector already off are left as they
    are: only the outermost block that turned it off collects and turns it back on."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect(0)


@contextmanager
def rare_collections(threshold: int) -> Iterator[None]:
    """Run the youngest generation's collection every ``threshold`` allocations (net of
    frees) inside the block instead of every 700, then set back what was there.

    For code that frees what it drops by reference counting (a search that breaks the
    cycles of the hosts it drops, ``memfail.check.freeze.release``): there, a collection
    finds almost nothing, and each one costs a traversal of every young object, and in
    time of the older generations, that is still alive."""
    old = gc.get_threshold()
    gc.set_threshold(max(threshold, old[0]), *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)
