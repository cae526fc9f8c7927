"""Checkpoints of an exploration, written atomically (tmp, then rename) on a time interval: at a
BFS level boundary or inside a level (the chunks of the level already expanded and their
successors), so a kill loses at most ``--checkpoint-every`` seconds of work.

``--resume DIR`` loads one and continues; the result equals that of an uninterrupted run.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHECKPOINT_VERSION = 2
FILE_NAME = "checkpoint.pickle"


@dataclass
class Snapshot:
    """Everything the explorer needs to continue: the frontier, the parent map and findings."""

    identity: str                       # which system/options this belongs to
    depth: int                          # level of the frontier
    frontier: list[tuple[int, bytes]]   # (fingerprint, pickled state), in rank order
    parents: dict[int, tuple[int | None, Any]]
    violations: dict[str, Any]
    kinds: set[str] = field(default_factory=set)
    hooks: set[str] = field(default_factory=set)
    transitions: int = 0
    elapsed: float = 0.0
    version: int = CHECKPOINT_VERSION
    # Inside a level: ranks of the frontier already expanded and what they produced
    # (successor fingerprint -> Successor with its state pickled, reduced pairs, coverage).
    level_done: set[int] = field(default_factory=set)
    level_cand: dict[int, Any] = field(default_factory=dict)
    level_reduced: list[tuple[int, int]] = field(default_factory=list)
    level_acc: dict[str, Any] = field(default_factory=dict)
    # alphabet entries a step of changed something (None: not recorded, an older version)
    entries: set[int] | None = field(default_factory=set)


def checkpoint_path(directory: Path, identity: str) -> Path:
    """One file per system in ``directory`` (a check of several policies shares the directory)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in identity)[:120]
    return directory / f"{safe}.{FILE_NAME}"


def save(directory: Path, snap: Snapshot) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(directory, snap.identity)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".pickle")
    try:
        with os.fdopen(fd, "wb") as f:
            pickle.dump(snap, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(directory: Path, identity: str) -> Snapshot | None:
    """The snapshot for ``identity``, or None when there is none (start from scratch)."""
    path = checkpoint_path(directory, identity)
    if not path.exists():
        return None
    try:
        with path.open("rb") as f:
            snap = pickle.load(f)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError,
            ValueError, TypeError) as e:
        raise ValueError(f"{path}: unreadable checkpoint ({type(e).__name__}); delete it to "
                         "start this policy afresh") from None
    if not isinstance(snap, Snapshot) or snap.version != CHECKPOINT_VERSION:
        raise ValueError(f"{path}: not a memfail check checkpoint of version {CHECKPOINT_VERSION}")
    if snap.identity != identity:
        raise ValueError(f"{path}: checkpoint of another check ({snap.identity!r})")
    return snap
