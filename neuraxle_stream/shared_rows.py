"""Shared rows: the joined output of ``transform`` on processes, written in place by the workers.

When ``transform`` runs on worker processes and its output will be one NumPy
array, that array lives in shared memory and the workers of the last stage
write their rows into it themselves: the parent copies nothing and is no hop
for the data. Each minibatch's task carries where its rows go (a
:class:`RowsTarget`); the worker writes its step's output there with
``pwrite`` and sends back a :class:`WrittenRows` instead of the data::

    parent (call.transform_range)                  last stage of the lane (a worker process)
    ─────────────────────────────                  ─────────────────────────────────────────
    SharedRowAccumulator: the array over a file
    of the runtime's RowsPool (made, or reused)
    minibatch i ── task.output = RowsTarget ──────▶ output = step(minibatch i)
                                                    as expected (type, dtype, shape, rows)?
                                                      pwrite it into its rows of the file
    add(WrittenRows) ◀── StageResult(WrittenRows) ──┘  else: the output itself, as before
    add(an output): pwrite it into its rows
    end of the call: the array is the result; its file goes back to the pool
    when the array is garbage

The array's shape and dtype are those of the first output of the call, or,
from the second call of a runtime on, those its previous call of the same
stages gave for an input of the same kind (:attr:`RowsPool.predictions`), so
that every minibatch is aimed from the first. Anything unexpected (another
dtype, row shape or number of rows, no room in ``/dev/shm``) makes the worker
send its output as before; an output that does not fit the array turns the
join into a concatenation of the parts, the rows already written read back
from the array.

The files have no name: they are made with ``O_TMPFILE`` (or unlinked as soon
as made) and a worker opens one as ``/proc/<parent>/fd/<fd>``, checking its
inode before it writes. Nothing is ever left in ``/dev/shm``, whatever ends
the parent or a worker; a file's memory lives as long as the parent holds its
descriptor or an array maps it. Writing with ``pwrite`` into a tmpfs file
allocates its pages without zeroing them first and without a page fault per
page; a file reused from the pool has its pages already.

The parent maps a file with the C library's ``mmap`` (through ``ctypes``), not
with Python's ``mmap.mmap``, which keeps a duplicate of the file's descriptor
for as long as it lives: a caller keeping thousands of outputs would run out of
descriptors (``EMFILE`` at 1,024 by default), as it never does with plain
arrays. The array's base (a :class:`_Mapping`) owns the mapping alone and
unmaps it when it is garbage; only the pool keeps descriptors, of at most
:attr:`RowsPool.max_held` files of arrays still alive, to reuse them. A
mapping that fails (no address space left, say) gives a plain array; where no
C library can be called, Python's ``mmap.mmap`` maps the file, a descriptor per
array as before. The whole module needs ``/dev/shm`` and ``/proc`` (Linux):
:func:`pool_for` gives no pool elsewhere.
"""

from __future__ import annotations

import contextlib
import functools
import math
import mmap
import os
import threading
import types
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _libc as _c
from ._containers import RowAccumulator
from .shm_segments import SHM_DIR, shm_size
from .transport import _PLAIN_DTYPES, SharedMemoryTransport

__all__ = ["RowsPool", "RowsTarget", "SharedRowAccumulator", "SharedRows", "WrittenRows", "pool_for"]

#: Minibatch outputs smaller than this travel in their message: a file write would cost more.
MIN_BYTES = 1 << 16
#: ``pwrite`` writes at most this many bytes per call on Linux.
_MAX_WRITE = 0x7FFFF000


@dataclass(frozen=True, slots=True)
class WrittenRows:
    """Sent by a worker instead of its output: rows ``start:start + rows`` of the array of file ``inode`` are written."""

    inode: int
    start: int
    rows: int

    def __reduce__(self) -> tuple[Any, ...]:
        return WrittenRows, (self.inode, self.start, self.rows)


@dataclass(frozen=True, slots=True)
class RowsTarget:
    """Where the last worker of a lane writes one minibatch's output: rows of a shared array.

    Parameters
    ----------
    pid, fd : int
        The parent process and its descriptor of the file (opened by the
        worker as ``/proc/<pid>/fd/<fd>``).
    device, inode : int
        The file's identity, checked before writing: a descriptor number
        reused for another file is never written to.
    start, rows : int
        The minibatch's first row in the array and its number of rows.
    dtype : str
        ``dtype.str`` of the array.
    row_shape : tuple of int
        The shape of one row of the array.
    """

    pid: int
    fd: int
    device: int
    inode: int
    start: int
    rows: int
    dtype: str
    row_shape: tuple[int, ...]

    def __reduce__(self) -> tuple[Any, ...]:
        return RowsTarget, (
            self.pid, self.fd, self.device, self.inode, self.start, self.rows, self.dtype, self.row_shape,
        )

    def write(self, out: Any) -> WrittenRows | None:
        """Write ``out`` into its rows; ``None`` when it is not as expected or could not be written.

        The caller then sends ``out`` itself, as without a target.
        """
        if type(out) is not np.ndarray or out.dtype.str != self.dtype or out.shape != (self.rows, *self.row_shape):
            return None
        try:
            fd = os.open(f"/proc/{self.pid}/fd/{self.fd}", os.O_WRONLY | os.O_CLOEXEC)
        except OSError:  # the parent is gone, or this system hides its descriptors
            return None
        try:
            info = os.fstat(fd)
            if (info.st_dev, info.st_ino) != (self.device, self.inode):
                return None  # the descriptor is another file's now (a run that ended)
            row_bytes = out.dtype.itemsize * math.prod(self.row_shape)
            _pwrite_all(fd, out, self.start * row_bytes)
        except OSError:  # no room left in /dev/shm, say
            return None
        finally:
            os.close(fd)
        return WrittenRows(self.inode, self.start, self.rows)


def _pwrite_all(fd: int, array: np.ndarray, offset: int) -> None:
    """Write the bytes of ``array`` at ``offset`` of ``fd`` (a C-contiguous copy first if it is not one)."""
    data = np.ascontiguousarray(array).reshape(-1).view(np.uint8).data
    while data.nbytes:
        written = os.pwrite(fd, data[:_MAX_WRITE], offset)
        data = data[written:]
        offset += written


def _nameless_file() -> int:
    """A read-write descriptor of a new file under ``/dev/shm`` that has no name."""
    tmpfile = getattr(os, "O_TMPFILE", 0)
    if tmpfile:
        with contextlib.suppress(OSError):  # a kernel or file system without O_TMPFILE
            return os.open(SHM_DIR, tmpfile | os.O_RDWR, 0o600)
    path = os.path.join(SHM_DIR, f"nxs-rows-{os.getpid()}-{threading.get_ident()}-{os.urandom(4).hex()}")
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    os.unlink(path)
    return fd


def _libc() -> Any | None:
    """The C library's ``mmap`` and ``munmap``, typed (:mod:`~neuraxle_stream._libc`); ``None`` where it cannot be called."""
    # off_t is a C long on Linux (64-bit, or 32-bit without large-file offsets); ours is always 0
    mapper = _c.function("mmap", "void_p", ("void_p", "size_t", "int", "int", "int", "long"))
    unmapper = _c.function("munmap", "int", ("void_p", "size_t"))
    if mapper is None or unmapper is None:
        return None
    return types.SimpleNamespace(mmap=mapper, munmap=unmapper)


class _Mapping:
    """The first ``nbytes`` of a file, mapped shared and writable, that holds no descriptor of the file.

    ``np.asarray`` of it is a ``uint8`` array over the mapping (its
    ``__array_interface__``), which keeps it alive; once it is garbage the
    memory is unmapped, then ``then`` is called (any thread). Not at
    interpreter exit: an array still alive then may still be read.
    """

    def __init__(self, libc: Any, fd: int, nbytes: int, then: Callable[[], None]) -> None:
        import ctypes

        length = max(nbytes, 1)  # mmap refuses 0 bytes
        address = libc.mmap(None, length, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
        if address is None or address == ctypes.c_void_p(-1).value:  # MAP_FAILED
            errno = ctypes.get_errno()
            raise OSError(errno, f"cannot map {nbytes} bytes of shared memory: {os.strerror(errno)}")
        self.__array_interface__ = {"version": 3, "shape": (nbytes,), "typestr": "|u1", "data": (address, False)}
        weakref.finalize(self, _unmap, libc, address, length, then).atexit = False


def _unmap(libc: Any, address: int, length: int, then: Callable[[], None]) -> None:
    libc.munmap(address, length)
    then()


class SharedRows:
    """One file of shared memory for an output array: its descriptor, held by the parent.

    The file has no name (see the module docstring); its descriptor is
    closed when the object is garbage, after which the file's memory lives
    only as long as an array maps it.
    """

    def __init__(self, fd: int, capacity: int) -> None:
        self.fd, self.capacity = fd, capacity
        info = os.fstat(fd)
        self.device, self.inode = info.st_dev, info.st_ino
        self.pid = os.getpid()
        #: Set when a run that wrote into it failed: a worker may still write, so it is never reused.
        self.tainted = False
        self._close = weakref.finalize(self, os.close, fd)

    @classmethod
    def create(cls, nbytes: int) -> SharedRows | None:
        """A new file of ``nbytes``; ``None`` when ``/dev/shm`` has not twice that free, or no file can be made."""
        try:
            stat = os.statvfs(SHM_DIR)
            if 2 * nbytes > stat.f_bavail * stat.f_frsize:
                return None
            fd = _nameless_file()
        except OSError:
            return None
        try:
            os.ftruncate(fd, nbytes)  # its pages are made as they are written
            return cls(fd, nbytes)
        except BaseException:
            os.close(fd)
            raise

    def map(self, shape: tuple[int, ...], dtype: np.dtype[Any], pool: RowsPool) -> np.ndarray:
        """An array over the file; the file goes back to ``pool`` when the array (and every view of it) is garbage.

        The array holds no descriptor of the file (see the module
        docstring): it stays valid once :meth:`close` has closed it.

        Raises
        ------
        OSError
            The file could not be mapped (no address space or mappings left).
        """
        nbytes = dtype.itemsize * math.prod(shape)
        then = functools.partial(_unmapped, weakref.ref(pool), self)
        libc = _libc()
        if libc is None:  # Python's mmap, which keeps a descriptor of its own
            mapped = mmap.mmap(self.fd, nbytes)
            weakref.finalize(mapped, then)
            return np.ndarray(shape, dtype=dtype, buffer=mapped)
        flat: np.ndarray = np.asarray(_Mapping(libc, self.fd, nbytes, then))
        return flat.view(dtype).reshape(shape)

    def target(self, start: int, rows: int, dtype: str, row_shape: tuple[int, ...]) -> RowsTarget:
        """Where minibatch rows ``start:start + rows`` go."""
        return RowsTarget(self.pid, self.fd, self.device, self.inode, start, rows, dtype, row_shape)

    def write(self, offset: int, part: np.ndarray) -> bool:
        """Write ``part`` at byte ``offset`` (the parent's own writes); ``False`` when it could not."""
        try:
            _pwrite_all(self.fd, part, offset)
        except OSError:
            return False
        return True

    @property
    def closed(self) -> bool:
        """Whether the descriptor is closed (the file cannot be written to, nor reused)."""
        return not self._close.alive

    def close(self) -> None:
        """Close the descriptor (the memory lives on while an array maps it); safe twice."""
        self._close()


def _unmapped(pool_ref: weakref.ref[RowsPool], rows: SharedRows) -> None:
    pool = pool_ref()
    if pool is None:
        rows.close()
    else:
        pool.give_back(rows)


class RowsPool:
    """The output files of one runtime, reused from one call to the next.

    A file whose array is garbage comes back here, its pages still there, for
    the next call's output of about its size: no fresh page per row, once a
    pipeline has run. The pool keeps at most :attr:`max_free_bytes` of such
    files; the runtime's close closes them.
    """

    #: Bytes of unused files a pool keeps: 512 MiB, or an eighth of ``/dev/shm`` if smaller.
    max_free_bytes = min(512 << 20, shm_size() // 8)
    #: Files of arrays still alive whose descriptors a pool keeps, to reuse them once the arrays
    #: are garbage; the others' are closed at the end of their call. (The arrays hold none: a
    #: caller keeping many outputs keeps at most this many descriptors open.)
    max_held = 16

    def __init__(self) -> None:
        self._free: list[SharedRows] = []  # oldest first
        self._held: set[SharedRows] = set()  # files of arrays still alive, kept open
        # Files come back in whichever thread drops their last array, maybe in a garbage
        # collection run while this thread holds the lock: reentrant.
        self._lock = threading.RLock()
        self.closed = False
        #: The row shape and dtype of the last output of a call, by :meth:`SharedRowAccumulator.key_of`
        #: (``None``: it was no array).
        self.predictions: dict[Hashable, tuple[tuple[int, ...], str] | None] = {}

    def take(self, nbytes: int) -> SharedRows | None:
        """A file of at least ``nbytes`` (at most about twice), reused if one is free; ``None`` when none can be made."""
        with self._lock:
            fitting = [rows for rows in self._free if nbytes <= rows.capacity <= 2 * nbytes]
            if fitting:
                best = min(fitting, key=lambda rows: rows.capacity)
                self._free.remove(best)
                return best
        return SharedRows.create(nbytes)

    def hold(self, rows: SharedRows) -> None:
        """The call that wrote ``rows`` is over and its array lives on: keep the file open to reuse it, within bounds."""
        with self._lock:
            if len(self._held) < self.max_held and not self.closed:
                self._held.add(rows)
                return
        rows.close()

    def give_back(self, rows: SharedRows) -> None:
        """Keep ``rows`` for a later call (dropping the oldest to stay within budget), or close it."""
        with self._lock:
            self._held.discard(rows)
            if not (self.closed or rows.tainted or rows.closed) and rows.capacity <= self.max_free_bytes:
                while self._free and sum(r.capacity for r in self._free) + rows.capacity > self.max_free_bytes:
                    self._free.pop(0).close()
                self._free.append(rows)
                return
        rows.close()

    def close(self) -> None:
        """Close every unused file; the files of arrays still alive are closed when they come back."""
        with self._lock:
            self.closed = True
            free, self._free = self._free, []
            self._held.clear()
        for rows in free:
            rows.close()


_pools: weakref.WeakKeyDictionary[SharedMemoryTransport, RowsPool] = weakref.WeakKeyDictionary()
_pools_lock = threading.Lock()


def pool_for(runtime: Any) -> RowsPool | None:
    """The pool of output files of ``runtime``; ``None`` unless its workers are processes sending through shared memory."""
    transport = getattr(getattr(runtime, "backend", None), "transport", None)
    if not isinstance(transport, SharedMemoryTransport) or not os.path.isdir(f"/proc/{os.getpid()}/fd"):
        return None
    with _pools_lock:
        pool = _pools.get(transport)
        if pool is None or pool.closed:
            pool = _pools[transport] = RowsPool()
            transport.on_close(pool.close)
    return pool


class SharedRowAccumulator(RowAccumulator):
    """A :class:`~neuraxle_stream._containers.RowAccumulator` whose array workers write into.

    Until :meth:`open` gives it a pool, it is a plain ``RowAccumulator``.
    Once open, its array is in shared memory when that pays (array outputs
    of plain dtypes, at least :data:`MIN_BYTES` per minibatch) and
    :meth:`target` says where each minibatch's rows go; it takes
    :class:`WrittenRows` as outputs.

    Parameters
    ----------
    total_rows : int or None
        Rows of the call's input (``None``: not known; nothing is shared).
    batch_size : int
        Rows per minibatch.
    key : hashable
        What the output's shape is predicted from: the stages run and the
        kind of input (see :meth:`key_of`).
    """

    def __init__(self, total_rows: int | None, batch_size: int, key: Hashable) -> None:
        super().__init__(total_rows)
        self.batch_size, self.key = batch_size, key
        self._pool: RowsPool | None = None
        self._shared: SharedRows | None = None  # the file under ``_out``, while it is one
        #: Where minibatches are aimed now: (file, dtype.str, row shape); None: nowhere.
        self._aim: tuple[SharedRows, str, tuple[int, ...]] | None = None
        self._arrays: dict[int, np.ndarray] = {}  # every shared array of the call, by inode
        self._files: list[SharedRows] = []
        self._first: tuple[tuple[int, ...], str] | bool | None = False  # False: no output yet

    @staticmethod
    def key_of(X: Any, start: int, stop: int) -> Hashable:
        """What predicts the output of stages ``start:stop`` for ``X``: those stages and the kind of ``X``."""
        if isinstance(X, np.ndarray):
            return start, stop, "ndarray", X.dtype.str, X.shape[1:]
        return start, stop, type(X).__qualname__

    def open(self, pool: RowsPool) -> None:
        """Share the array through ``pool``'s files, made now if the pool predicts the output."""
        self._pool = pool
        predicted = pool.predictions.get(self.key)
        if predicted is not None and self._total and self._out is None and not self._parts:
            row_shape, dtype = predicted
            self._out = self._allocate((self._total, *row_shape), np.dtype(dtype))

    def target(self, start: int, rows: int) -> RowsTarget | None:
        """Where minibatch rows ``start:start + rows`` go (any thread); ``None``: back in its message."""
        aim = self._aim
        if aim is None or rows <= 0 or self._total is None or start + rows > self._total:
            return None
        shared, dtype, row_shape = aim
        return shared.target(start, rows, dtype, row_shape)

    def _allocate(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        pool = self._pool
        nbytes = dtype.itemsize * math.prod(shape)
        row_bytes = nbytes // shape[0] if shape[0] else 0
        if pool is not None and dtype.char in _PLAIN_DTYPES and row_bytes * min(self.batch_size, shape[0]) >= MIN_BYTES:
            shared = pool.take(nbytes)
            if shared is not None:
                try:
                    array = shared.map(shape, dtype, pool)
                except OSError:  # no address space or mappings left, say: a plain array; the file stays free
                    pool.give_back(shared)
                else:
                    self._files.append(shared)
                    self._arrays[shared.inode] = array
                    self._shared = shared
                    self._aim = (shared, dtype.str, shape[1:])
                    return array
        return super()._allocate(shape, dtype)

    def _write(self, out: np.ndarray, start: int, part: np.ndarray) -> bool:
        shared = self._shared
        if shared is None:
            return super()._write(out, start, part)
        return shared.write(start * (out.nbytes // out.shape[0]), part)

    def add(self, part: Any) -> None:
        if type(part) is WrittenRows:
            out, shared = self._out, self._shared
            if self._first is False:
                self._first = (out.shape[1:], out.dtype.str) if out is not None else None
            if out is not None and shared is not None and part.inode == shared.inode and part.start == self._filled:
                self._filled += part.rows
                return
            part = self._arrays[part.inode][part.start : part.start + part.rows]  # read back
        elif self._first is False:
            self._first = (part.shape[1:], part.dtype.str) if type(part) is np.ndarray and part.ndim else None
        super().add(part)
        if self._out is None:  # joining parts from now on: aim nothing more
            self._aim = self._shared = None

    def result(self) -> Any:
        out = super().result()
        pool = self._pool
        if pool is not None:
            if self._first is not False:
                pool.predictions[self.key] = self._first  # type: ignore[assignment]
            for shared in self._files:
                pool.hold(shared)
        return out

    def discard(self) -> None:
        """The run failed: a worker may still write into this call's files, so none is reused."""
        self._aim = None
        for shared in self._files:
            shared.tainted = True
