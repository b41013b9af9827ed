"""Persistence: each step's per-minibatch outputs and fitted state, cached on disk.

Keys are Merkle style (:mod:`~neuraxle_stream.cache_keys` says how they are
made): a change to one step, or to one minibatch, changes the keys of that
step and of every step after it, and of nothing before.

When ``memory`` is set, a run is cut into windows of minibatches (the whole
input for ``transform``), and each window goes through the stages one stage at
a time: a minibatch is sent to stage k only when the cache has no output of
stage k (or later) for it, and every output that comes back is stored before
the next stage runs. An interrupted run therefore resumes at the first
minibatch and stage not stored. The price: stages of one window do not
overlap in time (the workers of each stage still run in parallel).

Layout under the cache root::

    steps/<step key>/run_info.json      last run that computed this step
    steps/<step key>/log.txt            log records emitted while it ran
    steps/<step key>/out/<output key>   one entry per minibatch
    fits/<fit key>/fitted               a fitted step (+ run_info.json, log.txt)
    locks/<xx>.lock                     256 striped write locks (filelock)

An entry is ``MAGIC sha256-hex \\n pickle``; a truncated or corrupt entry is
detected, reported with a :class:`~neuraxle_stream.CacheWarning`, removed and
recomputed. Writes go to a temporary name, then ``os.replace``; a failed write
warns and the run goes on. "No cache" is :class:`NullStore`, a null object.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import tempfile
import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import cloudpickle
import joblib

from .cache_keys import chain_key, content_hash, step_key
from .cache_keys import qualname as _qualname  # noqa: F401 - the name callers import from here
from .exceptions import CacheWarning

__all__ = [
    "Cache",
    "CacheInfo",
    "CacheStore",
    "DiskStore",
    "NullStore",
    "StepCacheStats",
    "chain_key",
    "content_hash",
    "open_store",
    "step_key",
]

_MAGIC = b"NXSC1 "
_MISSING = object()
#: The marker :meth:`CacheStore.get` returns when it finds nothing.
MISSING = _MISSING


# -- stores --------------------------------------------------------------------------


class CacheStore(ABC):
    """Where cached entries live; :class:`NullStore` is "no cache"."""

    enabled: bool = False

    @abstractmethod
    def get(self, area: str, key: str) -> Any:
        """The value stored under ``area/key``, or ``MISSING`` (see :func:`is_missing`)."""

    @abstractmethod
    def contains(self, area: str, key: str) -> bool:
        """Whether an entry exists (it may still turn out corrupt in :meth:`get`)."""

    @abstractmethod
    def put(self, area: str, key: str, value: Any) -> int:
        """Store ``value``; return its size in bytes (0 when it could not be written)."""

    @abstractmethod
    def write_info(self, area: str, run_info: dict[str, Any], log_lines: list[str]) -> None:
        """Write ``run_info.json`` and append ``log.txt`` in ``area``."""


def is_missing(value: Any) -> bool:
    """Whether :meth:`CacheStore.get` found nothing."""
    return value is _MISSING


class NullStore(CacheStore):
    """No cache: nothing is found, nothing is kept."""

    enabled = False

    def get(self, area: str, key: str) -> Any:
        return _MISSING

    def contains(self, area: str, key: str) -> bool:
        return False

    def put(self, area: str, key: str, value: Any) -> int:
        return 0

    def write_info(self, area: str, run_info: dict[str, Any], log_lines: list[str]) -> None:
        return None


class DiskStore(CacheStore):
    """Entries as checksummed files under ``root``; safe across threads and processes."""

    enabled = True

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _path(self, area: str, key: str) -> Path:
        return self.root / area / key

    def _lock(self, key: str) -> Any:
        from filelock import FileLock

        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{key[:2]}.lock"), timeout=60)

    def contains(self, area: str, key: str) -> bool:
        return self._path(area, key).is_file()

    def get(self, area: str, key: str) -> Any:
        path = self._path(area, key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return _MISSING
        except OSError as exc:
            warnings.warn(f"Cannot read cache entry {path}: {exc}; recomputing.", CacheWarning, stacklevel=2)
            return _MISSING
        head, _, payload = blob.partition(b"\n")
        digest = head[len(_MAGIC):].decode("ascii", "replace")
        if not head.startswith(_MAGIC) or hashlib.sha256(payload).hexdigest() != digest:
            warnings.warn(
                f"Cache entry {path} is corrupt or truncated (checksum mismatch); recomputing it.",
                CacheWarning, stacklevel=2,
            )
            with contextlib.suppress(OSError):
                path.unlink()
            return _MISSING
        try:
            value = pickle.loads(payload)
        except Exception as exc:
            warnings.warn(f"Cannot load cache entry {path}: {exc!r}; recomputing.", CacheWarning, stacklevel=2)
            return _MISSING
        with contextlib.suppress(OSError):
            os.utime(path)  # last use, for prune()
        return value

    def put(self, area: str, key: str, value: Any) -> int:
        path = self._path(area, key)
        try:
            try:
                payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:
                payload = cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            blob = _MAGIC + hashlib.sha256(payload).hexdigest().encode("ascii") + b"\n" + payload
            path.parent.mkdir(parents=True, exist_ok=True)
            with self._lock(key):
                _atomic_write(path, blob)
            return len(blob)
        except Exception as exc:
            warnings.warn(f"Cannot write cache entry {path}: {exc!r}; the run goes on.", CacheWarning, stacklevel=2)
            return 0

    def write_info(self, area: str, run_info: dict[str, Any], log_lines: list[str]) -> None:
        folder = self.root / area
        try:
            folder.mkdir(parents=True, exist_ok=True)
            text = json.dumps(run_info, indent=2, default=repr, sort_keys=False).encode()
            with self._lock(area.rpartition("/")[2] or "00"):
                _atomic_write(folder / "run_info.json", text)
                if log_lines:
                    with open(folder / "log.txt", "a", encoding="utf-8") as f:
                        f.write("".join(line + "\n" for line in log_lines))
        except Exception as exc:
            warnings.warn(f"Cannot write run info in {folder}: {exc!r}; the run goes on.", CacheWarning, stacklevel=2)


def _atomic_write(path: Path, blob: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def memory_location(memory: Any) -> str | None:
    """The directory of ``memory``: a str, a Path, or a ``joblib.Memory`` (its location)."""
    if memory is None:
        return None
    if isinstance(memory, joblib.Memory):
        return None if memory.location is None else str(memory.location)
    return os.fspath(memory)


def open_store(memory: Any) -> CacheStore:
    """The store for a pipeline's ``memory`` parameter (:class:`NullStore` for ``None``)."""
    location = memory_location(memory)
    return NullStore() if location is None else DiskStore(location)


# -- the public handle ------------------------------------------------------------------


class Cache:
    """A cache directory, as used by ``memory=``: look at it and prune it.

    Parameters
    ----------
    path : str or Path
        The directory given as ``memory``.

    Examples
    --------
    >>> import tempfile
    >>> cache = Cache(tempfile.mkdtemp())
    >>> cache.size()
    0
    >>> cache.prune(max_bytes=0)
    0
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def _entries(self) -> list[tuple[Path, os.stat_result]]:
        found = []
        for area in ("steps", "fits"):
            base = self.path / area
            if not base.is_dir():
                continue
            for p in base.rglob("*"):
                if p.is_file() and p.name not in ("run_info.json", "log.txt") and not p.name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        found.append((p, p.stat()))
        return found

    def size(self) -> int:
        """Total bytes of the cached entries."""
        return sum(st.st_size for _, st in self._entries())

    def prune(self, max_bytes: int | None = None, older_than: float | timedelta | None = None) -> int:
        """Remove entries; return the bytes freed.

        Parameters
        ----------
        max_bytes : int or None
            Remove the least recently used entries until at most this many bytes remain.
        older_than : float (seconds) or timedelta or None
            Remove entries not used for longer than this.
        """
        entries = sorted(self._entries(), key=lambda e: e[1].st_mtime)
        freed = 0
        kept = []
        if isinstance(older_than, timedelta):
            older_than = older_than.total_seconds()
        now = time.time()
        for path, st in entries:
            if older_than is not None and now - st.st_mtime > older_than:
                freed += _unlink(path, st)
            else:
                kept.append((path, st))
        if max_bytes is not None:
            total = sum(st.st_size for _, st in kept)
            for path, st in kept:
                if total <= max_bytes:
                    break
                total -= st.st_size
                freed += _unlink(path, st)
        return freed

    def clear(self) -> None:
        """Remove every entry (and the run info and logs)."""
        import shutil

        for area in ("steps", "fits"):
            shutil.rmtree(self.path / area, ignore_errors=True)

    def __repr__(self) -> str:
        return f"Cache({str(self.path)!r})"


def _unlink(path: Path, st: os.stat_result) -> int:
    try:
        path.unlink()
    except OSError:
        return 0
    return st.st_size


# -- what a call saw -------------------------------------------------------------------------


@dataclass
class StepCacheStats:
    """Hits, misses and bytes written for one step in the last call."""

    name: str
    key: str = ""
    hits: int = 0
    misses: int = 0
    bytes_written: int = 0
    fit: str = ""  # "hit", "miss" or "" (not fitted in this call)


@dataclass
class CacheInfo:
    """What ``pipeline.cache_info()`` returns: per step, its key, size, hits and misses."""

    location: str | None
    steps: dict[str, StepCacheStats] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)

    def __getitem__(self, name: str) -> StepCacheStats:
        return self.steps[name]

    @property
    def hits(self) -> int:
        return sum(s.hits for s in self.steps.values())

    @property
    def misses(self) -> int:
        return sum(s.misses for s in self.steps.values())

    def __str__(self) -> str:
        rows = [["step", "key", "size", "hits", "misses", "fit"]]
        for name, s in self.steps.items():
            rows.append([name, s.key[:12], _bytes(self.sizes.get(name, 0)), str(s.hits), str(s.misses), s.fit or "-"])
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"cache: {self.location}"]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        return "\n".join(lines)


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def folder_size(store: CacheStore, area: str) -> int:
    """Bytes of the entries under ``area`` of a disk store (0 for others)."""
    if not isinstance(store, DiskStore):
        return 0
    base = store.root / area
    if not base.is_dir():
        return 0
    return sum(p.stat().st_size for p in base.rglob("*") if p.is_file())


#: Minibatches per window when streaming an iterable with a cache.
STREAM_WINDOW = 16
