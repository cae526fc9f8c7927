"""Where chunks of a BFS level are expanded: in process, on local worker processes, or on Dask.

Every backend runs the same pure ``expand_chunk``; the explorer merges in a canonical order.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from typing import Any

from memfail.check.expand import (
    ChunkResult,
    ExpandOptions,
    expand_chunk,
    remote_expand,
    system_blob,
)
from memfail.check.system import System

Chunk = list[tuple[int, int, Any]]  # (rank in the level, fingerprint, state)


class Backend:
    """Serial backend: expands chunks in this process, states stay Python objects."""

    pickled = False
    workers = 1

    def run(self, system: System, chunks: list[Chunk], opt: ExpandOptions,
            full: bool = False) -> Iterator[ChunkResult]:
        for chunk in chunks:
            yield expand_chunk(system, chunk, opt, full)

    def close(self) -> None:
        pass

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ProcessBackend(Backend):
    """Local worker processes (spawned, so no state leaks in from the parent)."""

    pickled = True

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        self._blob: tuple[int, bytes, bytes] | None = None

    def _system(self, system: System) -> tuple[bytes, bytes]:
        if self._blob is None or self._blob[0] != id(system):
            key, blob = system_blob(system)
            self._blob = (id(system), key, blob)
        return self._blob[1], self._blob[2]

    def run(self, system: System, chunks: list[Chunk], opt: ExpandOptions,
            full: bool = False) -> Iterator[ChunkResult]:
        key, blob = self._system(system)
        futures: list[Future[ChunkResult]] = [
            self._pool.submit(remote_expand, key, blob, c, opt, full) for c in chunks]
        try:
            for f in as_completed(futures):
                yield f.result()
        finally:
            for f in futures:
                f.cancel()

    def close(self) -> None:
        self._pool.shutdown(cancel_futures=True)


class DaskBackend(Backend):
    """A Dask distributed cluster at ``address`` (``tcp://host:port``)."""

    pickled = True

    def __init__(self, address: str) -> None:
        try:
            from distributed import Client
        except ImportError as e:  # pragma: no cover - distributed is a dependency
            raise RuntimeError("--scheduler needs dask.distributed: pip install distributed") from e
        self._client = Client(address, timeout=30)
        self.workers = max(1, sum(self._client.nthreads().values()))
        self._scattered: tuple[int, Any, bytes, bytes] | None = None

    def run(self, system: System, chunks: list[Chunk], opt: ExpandOptions,
            full: bool = False) -> Iterator[ChunkResult]:
        from distributed import as_completed as dask_completed

        if self._scattered is None or self._scattered[0] != id(system):
            key, blob = system_blob(system)
            fut = self._client.scatter(blob, broadcast=True, hash=False)
            self._scattered = (id(system), fut, key, blob)
        _, blob_future, key, _ = self._scattered
        futures = [self._client.submit(remote_expand, key, blob_future, c, opt, full, pure=False)
                   for c in chunks]
        try:
            for f in dask_completed(futures):
                yield f.result()
        finally:
            for f in futures:
                f.cancel()

    def close(self) -> None:
        self._client.close()


def make_backend(workers: int = 1, scheduler: str | None = None) -> Backend:
    """The backend for ``--workers N`` / ``--scheduler ADDRESS``."""
    if scheduler:
        return DaskBackend(scheduler)
    if workers <= 1:
        return Backend()
    return ProcessBackend(workers)
