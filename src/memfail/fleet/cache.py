"""On-disk cache of the model runs behind the fleet (``ModelOracle``).

A model run is a pure function of the model's source, the kernel profile, the policy and the
failure class's scenario, so its metrics are kept in
``$MEMFAIL_CACHE_DIR`` (or ``--cache-dir``), else ``$XDG_CACHE_HOME/memfail``, else
``~/.cache/memfail``, under ``fleet-model/<model version>/<profile>/<policy>.json``. The model
version is a hash of every source file of ``memfail.model`` and of ``memfail/fleet/oracle.py``
(which builds and reads the runs): any change to the model starts a new cache.

Files are replaced atomically (written to a temporary file in the same directory, then
renamed), and a writer first merges what is on disk, so concurrent ``memfail fleet`` processes
never see a torn file; at worst one's entries are computed again. An unreadable file is treated
as empty.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ENV = "MEMFAIL_CACHE_DIR"
DISABLE = "off"


def default_dir() -> Path:
    """``$MEMFAIL_CACHE_DIR``, else ``$XDG_CACHE_HOME/memfail``, else ``~/.cache/memfail``."""
    env = os.environ.get(ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "memfail"


def cache_dir(given: Path | None = None) -> Path | None:
    """The cache directory: ``given`` (``--cache-dir``) if any, else ``default_dir()``; None
    when that is ``off`` (no cache)."""
    where = given if given is not None else default_dir()
    return None if str(where) == DISABLE else where


@functools.cache
def model_version() -> str:
    """A hash of the model's source and of the fleet oracle that builds the runs."""
    root = Path(__file__).resolve().parents[1]
    files = [*sorted((root / "model").rglob("*.py")), root / "fleet" / "oracle.py",
             root / "fleet" / "classes.py"]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root)).encode())
        with contextlib.suppress(OSError):
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _safe(name: str) -> str:
    """A file name for ``name``: the name itself when it is short and plain (a preset, a
    profile), else its plain characters cut to 80 and a hash of the whole name, so that two
    policies never share a file (inline policies such as ``mainline{handles_hugetlb=false,
    ...}`` differ only past their first hundred characters, or only in a character a file
    name cannot hold)."""
    plain = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    if plain == name and 0 < len(name) <= 100 and not name.startswith("."):
        return name
    return f"{plain[:80]}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"


class RunCache:
    """Model-run metrics per (profile, policy, scenario key), on disk."""

    def __init__(self, directory: Path | None) -> None:
        self.root = directory / "fleet-model" / model_version() if directory else None
        self._loaded: dict[tuple[str, str], dict[str, Any]] = {}
        self._new: dict[tuple[str, str], dict[str, Any]] = {}

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def _file(self, profile: str, policy: str) -> Path:
        assert self.root is not None
        return self.root / _safe(profile) / f"{_safe(policy)}.json"

    @staticmethod
    def key(scenario_key: str) -> str:
        return hashlib.sha256(scenario_key.encode()).hexdigest()[:32]

    def _read(self, profile: str, policy: str) -> dict[str, Any]:
        if self.root is None:
            return {}
        try:
            data = json.loads(self._file(profile, policy).read_text("utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, profile: str, policy: str, scenario_key: str) -> Mapping[str, Any] | None:
        if self.root is None:
            return None
        pk = (profile, policy)
        if pk not in self._loaded:
            self._loaded[pk] = self._read(profile, policy)
        hit = self._loaded[pk].get(self.key(scenario_key))
        return hit if isinstance(hit, dict) else None

    def put(self, profile: str, policy: str, scenario_key: str,
            metrics: Mapping[str, Any]) -> None:
        if self.root is None:
            return
        try:
            plain = json.loads(json.dumps(metrics))
        except (TypeError, ValueError):
            return  # metrics that are not plain data are not cached
        self._new.setdefault((profile, policy), {})[self.key(scenario_key)] = plain
        self._loaded.setdefault((profile, policy), {})[self.key(scenario_key)] = plain

    def save(self) -> None:
        """Merge the new entries into the files on disk (atomic replace). A cache that cannot
        be written is skipped silently: it only costs time."""
        if self.root is None:
            return
        for (profile, policy), entries in self._new.items():
            path = self._file(profile, policy)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                merged = self._read(profile, policy)
                merged.update(entries)
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
                try:
                    with os.fdopen(fd, "w", encoding="utf-8") as f:
                        json.dump(merged, f, separators=(",", ":"), sort_keys=True)
                    os.replace(tmp, path)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
            except OSError:
                continue
        self._new.clear()
