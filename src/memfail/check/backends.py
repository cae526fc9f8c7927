"""Where chunks of a BFS level are expanded: in process, on local worker processes, or on Dask.

Every backend runs the same pure ``expand_chunk``; the explorer merges in a canonical order.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import struct
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
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

CONNECT_TIMEOUT = 10.0
"""Seconds to wait for a Dask scheduler to answer (``MEMFAIL_CONNECT_TIMEOUT`` overrides)."""


class WorkerError(RuntimeError):
    """Workers could not be started or reached, or one died: a one-line message for the user."""


def connect_timeout() -> float:
    try:
        return max(0.1, float(os.environ.get("MEMFAIL_CONNECT_TIMEOUT", CONNECT_TIMEOUT)))
    except ValueError:
        return CONNECT_TIMEOUT


def probe_scheduler(address: str, timeout: float | None = None) -> None:
    """Check that ``address`` is a Dask scheduler before handing it to ``distributed``.

    A Dask peer sends its handshake as soon as a connection opens: an 8-byte little-endian
    length, then a small message. A peer that sends nothing within ``timeout`` seconds, closes,
    or sends something else (an HTTP server, say) is refused with a ``WorkerError``.
    """
    timeout = connect_timeout() if timeout is None else timeout
    scheme, sep, rest = address.partition("://")
    if not sep:
        scheme, rest = "tcp", address
    if scheme != "tcp":
        return  # tls:// and others: left to distributed (with its own timeout)
    host, _, port_text = rest.rpartition(":")
    host = host.strip("[]")
    try:
        port = int(port_text.split("/")[0])
    except ValueError:
        raise WorkerError(f"{address!r} is not a scheduler address; write tcp://HOST:PORT, "
                          "e.g. tcp://127.0.0.1:8786") from None
    if not host or not 0 < port < 65536:
        raise WorkerError(f"{address!r} is not a scheduler address; write tcp://HOST:PORT, "
                          "e.g. tcp://127.0.0.1:8786")
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            head = b""
            while len(head) < 8:
                more = sock.recv(8 - len(head))
                if not more:
                    raise WorkerError(f"{address}: the peer closed the connection without a "
                                      "Dask handshake; is it a Dask scheduler?")
                head += more
    except TimeoutError:
        raise WorkerError(f"{address}: no Dask handshake within {timeout:g} s (the peer is "
                          "silent or not a Dask scheduler)") from None
    except OSError as e:
        raise WorkerError(f"cannot reach the Dask scheduler at {address}: "
                          f"{e.strerror or e}") from None
    (length,) = struct.unpack("<Q", head)
    if not 0 < length < (1 << 20):
        raise WorkerError(f"{address}: the peer answered {head!r}..., not a Dask handshake; "
                          "is it a Dask scheduler (tcp://HOST:PORT, usually port 8786)?")


class Backend:
    """Serial backend: expands chunks in this process, states stay Python objects."""

    pickled = False
    workers = 1

    def run(self, system: System, chunks: list[Chunk], opt: ExpandOptions,
            full: bool = False) -> Iterator[ChunkResult]:
        for _, res in self.run_indexed(system, chunks, opt, full):
            yield res

    def run_indexed(self, system: System, chunks: list[Chunk], opt: ExpandOptions,
                    full: bool = False, homes: Sequence[int] | None = None
                    ) -> Iterator[tuple[int, ChunkResult]]:
        """(index of the chunk, its result), in the order the results arrive. ``homes``
        (one per chunk) says which chunks belong together: a backend may send chunks with
        one home to the same worker, which remembers what their states share."""
        for i, chunk in enumerate(chunks):
            yield i, expand_chunk(system, chunk, opt, full)

    def map_calls(self, fn: Callable[..., Any], calls: list[tuple[Any, ...]]
                  ) -> Iterator[tuple[int, Any]]:
        """(index, ``fn(*args)``) for each ``args`` of ``calls``, in the order they finish;
        ``fn`` is a module-level function (it travels by name to workers)."""
        for i, args in enumerate(calls):
            yield i, fn(*args)

    def close(self) -> None:
        pass

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _completed(futures: list[Future[Any]], hint: str) -> Iterator[tuple[int, Any]]:
    """(index, result) of local futures as they complete; a dead worker process is a
    WorkerError with ``hint``; what is left is cancelled when the caller stops early."""
    index = {id(f): i for i, f in enumerate(futures)}
    try:
        for f in as_completed(futures):
            try:
                res = f.result()
            except BrokenProcessPool as e:
                raise WorkerError(f"a worker process died (killed, or out of memory); {hint}"
                                  ) from e
            yield index[id(f)], res
    finally:
        for f in futures:
            f.cancel()


class ProcessBackend(Backend):
    """Local worker processes (spawned, so no state leaks in from the parent), one pool of one
    process each: a chunk's home picks its worker, so the states of one part (one host, for
    the model) meet what that worker remembered of them at earlier levels."""

    pickled = True

    def __init__(self, workers: int) -> None:
        self.workers = workers
        ctx = multiprocessing.get_context("spawn")
        self._pools = [ProcessPoolExecutor(1, mp_context=ctx) for _ in range(workers)]
        self._blob: tuple[int, bytes, bytes] | None = None

    def pids(self) -> list[int]:
        """The worker processes' ids (those started so far)."""
        return [pid for pool in self._pools for pid in (getattr(pool, "_processes", None) or {})]

    def _system(self, system: System) -> tuple[bytes, bytes]:
        if self._blob is None or self._blob[0] != id(system):
            key, blob = system_blob(system)
            self._blob = (id(system), key, blob)
        return self._blob[1], self._blob[2]

    def run_indexed(self, system: System, chunks: list[Chunk], opt: ExpandOptions,
                    full: bool = False, homes: Sequence[int] | None = None
                    ) -> Iterator[tuple[int, ChunkResult]]:
        key, blob = self._system(system)
        n = len(self._pools)
        futures: list[Future[ChunkResult]] = [
            self._pools[(homes[i] if homes is not None else i) % n].submit(
                remote_expand, key, blob, c, opt, full) for i, c in enumerate(chunks)]
        yield from _completed(futures, "rerun with fewer --workers or a --max-memory bound")

    def map_calls(self, fn: Callable[..., Any], calls: list[tuple[Any, ...]]
                  ) -> Iterator[tuple[int, Any]]:
        n = len(self._pools)  # calls spread round-robin: results are keyed by index anyway
        futures: list[Future[Any]] = [self._pools[i % n].submit(fn, *args)
                                      for i, args in enumerate(calls)]
        yield from _completed(futures, "rerun with fewer --workers")

    def close(self) -> None:
        for pool in self._pools:
            pool.shutdown(cancel_futures=True)


class DaskBackend(Backend):
    """A Dask distributed cluster at ``address`` (``tcp://host:port``)."""

    pickled = True

    def __init__(self, address: str) -> None:
        try:
            from distributed import Client
        except ImportError as e:  # pragma: no cover - distributed is a dependency
            raise WorkerError("--scheduler needs dask.distributed: pip install distributed") from e
        probe_scheduler(address)
        try:
            self._client = Client(address, timeout=connect_timeout())
        except (OSError, TimeoutError, ValueError) as e:
            raise WorkerError(f"cannot reach the Dask scheduler at {address}: {e}") from None
        self.workers = max(1, sum(self._client.nthreads().values()))
        self._scattered: tuple[int, Any, bytes, bytes] | None = None

    def run_indexed(self, system: System, chunks: list[Chunk], opt: ExpandOptions,
                    full: bool = False, homes: Sequence[int] | None = None
                    ) -> Iterator[tuple[int, ChunkResult]]:
        if self._scattered is None or self._scattered[0] != id(system):
            key, blob = system_blob(system)
            fut = self._client.scatter(blob, broadcast=True, hash=False)
            self._scattered = (id(system), fut, key, blob)
        _, blob_future, key, _ = self._scattered
        yield from _dask_completed(
            [self._client.submit(remote_expand, key, blob_future, c, opt, full, pure=False)
             for c in chunks])

    def map_calls(self, fn: Callable[..., Any], calls: list[tuple[Any, ...]]
                  ) -> Iterator[tuple[int, Any]]:
        yield from _dask_completed([self._client.submit(fn, *args, pure=False)
                                    for args in calls])

    def close(self) -> None:
        self._client.close()


def _dask_completed(futures: list[Any]) -> Iterator[tuple[int, Any]]:
    """(index, result) of Dask ``futures`` as they complete; the rest are cancelled when the
    caller stops early (the Dask twin of ``_completed``)."""
    from distributed import as_completed as dask_completed

    index = {f.key: i for i, f in enumerate(futures)}
    try:
        for f in dask_completed(futures):
            yield index[f.key], f.result()
    finally:
        for f in futures:
            f.cancel()


def make_backend(workers: int = 1, scheduler: str | None = None) -> Backend:
    """The backend for ``--workers N`` / ``--scheduler ADDRESS``."""
    if scheduler:
        return DaskBackend(scheduler)
    if workers <= 1:
        return Backend()
    return ProcessBackend(workers)
