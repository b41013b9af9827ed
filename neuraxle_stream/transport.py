"""Transports: how a message crosses from one process to the next.

A transport turns a message into bytes for a pipe and back. Everything that
crosses a process boundary goes through exactly one ``dumps`` and one
``loads``: one pickle per hop. :class:`PickleTransport` is the baseline;
:class:`SharedMemoryTransport` (the default on Linux) moves large arrays
through reusable shared memory and puts only small headers on the pipe.

A message too large for one atomic pipe write (lists of Python objects,
strings, frames with object columns: anything pickled in band) is *spilled*
(:meth:`Transport.spill`): its bytes go to shared memory (or a file) and the
pipe carries a short reference, so that a writer killed at any instant never
leaves half a message in a pipe (:mod:`~neuraxle_stream.queues`).

No segment outlives the processes that use it, however they end::

    a run closes (normally, after an error, Ctrl-C)
        ──▶ its owner unlinks every segment under the run's prefix
    the parent is killed (SIGKILL: the OOM killer, ``kill -9``)
        ──▶ each worker sees its parent's sentinel close and unlinks them
            on its way out (workers.py)
    the parent and its workers are all killed
        ──▶ multiprocessing's resource tracker unlinks them: each segment
            is registered with it when made and unregistered when unlinked

A segment is made with its pages reserved; where ``/dev/shm`` has no room for
it, the message goes without it, as :class:`PickleTransport` sends it (its
arrays in band; spilled to a temporary file), and each process logs one
warning: a full ``/dev/shm`` slows a run down but never kills a process with
``SIGBUS``.

Registering is one write to the tracker's pipe per *new* segment, and
segments are reused, so messages pay nothing: see
:mod:`~neuraxle_stream.shm_segments` for which tracker, and where none is.
"""

from __future__ import annotations

import contextlib
import copyreg
import io
import itertools
import logging
import mmap
import os
import pickle
import struct
import sys
import tempfile
import threading
import weakref
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import cloudpickle
import numpy as np

from .shm_segments import (
    HEADER,
    SHM_DIR,
    TRACKED,
    Segment,
    close_mapping,
    mark_free,
    round_up,
    shm_size,
    start_tracker,
    tracking,
    unlink_segments,
)

__all__ = [
    "SPILLED",
    "PickleTransport",
    "SharedMemoryTransport",
    "Transport",
    "default_transport",
]

#: Marks a message whose large buffers live in shared memory.
_SHM_MAGIC = b"NXSHM1"
#: Starts a message that :meth:`Transport.spill` put aside: what follows says where.
SPILLED = b"NXSPILL1"
#: Segment size and message size of a message spilled to shared memory (then the segment name).
_SPILL_HEAD = struct.Struct("!QQ")
_pickle_ids = itertools.count()


class Transport(ABC):
    """Encodes messages to bytes and back; one instance per process side."""

    @abstractmethod
    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj`` for the pipe. Raises when it cannot be encoded."""

    @abstractmethod
    def loads(self, data: bytes) -> Any:
        """Decode what :meth:`dumps` produced."""

    def close(self) -> None:  # noqa: B027 - optional hook, most transports hold nothing
        """Release what the transport holds (shared memory, buffers)."""

    #: Name prefix of the files :meth:`spill` writes; :meth:`close` unlinks what is left under it.
    prefix = "nxs"

    def spill(self, data: bytes) -> bytes:
        """Put ``data`` (what :meth:`dumps` made) aside; return a short message that stands for it.

        The message starts with :data:`SPILLED`; :meth:`load_spilled` reads
        it back (once). Here ``data`` goes to a file of the temporary
        directory, named with :attr:`prefix`.
        """
        fd, path = tempfile.mkstemp(prefix=f"{self.prefix}-spill-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return SPILLED + os.fsencode(path)

    def load_spilled(self, message: bytes) -> Any:
        """Decode the message that :meth:`spill` put aside, and release its bytes."""
        path = os.fsdecode(message[len(SPILLED) :])
        try:
            with open(path, "rb") as f:
                data = f.read()
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return self.loads(data)


def _dumps(obj: Any, buffer_callback: Callable[[pickle.PickleBuffer], Any] | None) -> bytes:
    """Pickle protocol 5 (cloudpickle for ``__main__`` objects and lambdas); CPU
    torch tensors are pickled as NumPy arrays so that their data go out of band."""
    try:
        out = io.BytesIO()
        pickler = _TensorPickler if "torch" in sys.modules else _Pickler
        pickler(out, protocol=5, buffer_callback=buffer_callback).dump(obj)
        return out.getvalue()
    except (pickle.PicklingError, AttributeError, TypeError):
        return cloudpickle.dumps(obj, protocol=5, buffer_callback=buffer_callback)


#: Kinds of dtype :func:`_reduce_array` rebuilds from raw bytes: booleans and numbers.
_PLAIN_DTYPES = frozenset("?bBhHiIlLqQefdgFDG")
#: Arrays below this size take the short path; larger ones go out of band.
_SMALL_ARRAY = 1 << 16


def _reduce_array(arr: np.ndarray) -> Any:
    """Reduce a small C-contiguous array of numbers to its bytes, dtype and shape.

    NumPy's own reduce (its dtype pickled as an object, a Python rebuild
    function) costs several microseconds more per array on each end: small
    minibatches pay it on every hop. Anything else is reduced by NumPy.
    """
    if arr.nbytes < _SMALL_ARRAY and arr.dtype.char in _PLAIN_DTYPES and arr.flags.c_contiguous:
        return _small_array, (bytearray(arr.tobytes()), arr.dtype.str, arr.shape)
    return arr.__reduce_ex__(5)


def _small_array(data: bytearray, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Rebuild what :func:`_reduce_array` reduced (writable: it owns its bytearray)."""
    return np.frombuffer(data, dtype).reshape(shape)


class _Pickler(pickle.Pickler):
    dispatch_table = {**copyreg.dispatch_table, np.ndarray: _reduce_array}


class _TensorPickler(_Pickler):
    def reducer_override(self, obj: Any) -> Any:
        torch = sys.modules["torch"]
        if type(obj) is torch.Tensor and obj.device.type == "cpu" and not obj.requires_grad:
            try:
                return torch.from_numpy, (obj.numpy(),)
            except (TypeError, RuntimeError):  # dtypes NumPy lacks (bfloat16...)
                return NotImplemented
        return NotImplemented


class PickleTransport(Transport):
    """Pickle protocol 5 with everything in band (large messages are spilled to temporary files).

    Parameters
    ----------
    prefix : str, optional
        Name prefix of the spilled files; by default one unique to this transport.
    """

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"nxs-{os.getpid()}-p{next(_pickle_ids)}"

    def dumps(self, obj: Any) -> bytes:
        return _dumps(obj, None)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)

    def close(self) -> None:
        """Unlink the spilled files nobody read (a writer or a reader killed, messages left in a queue)."""
        _unlink_spilled_files(self.prefix)


def _unlink_spilled_files(prefix: str) -> None:
    """Unlink the files of the temporary directory that :meth:`Transport.spill` wrote under ``prefix``."""
    folder = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            if name.startswith(f"{prefix}-spill-"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))


_log = logging.getLogger(__name__)
_warned_full = False


def _shm_full(exc: OSError) -> None:
    """Warn, once per process, that a segment could not be made (``/dev/shm`` full, most often)."""
    global _warned_full
    if _warned_full:
        return
    _warned_full = True
    _log.warning(
        "Cannot make a shared-memory segment in %s (%s): messages that do not fit go through the pipe "
        "or a temporary file instead, more slowly. Give shared memory more room "
        "(docker run --shm-size=1g, say; Docker's default is 64 MB).",
        SHM_DIR,
        exc,
    )


class SharedMemoryTransport(Transport):
    """Large arrays cross through reusable shared memory; only headers go on the pipe.

    Messages are pickled with protocol 5. Every out-of-band buffer of at least
    ``threshold`` bytes (NumPy arrays, CPU torch tensors) is copied into a
    segment of the sender's pool (a file under ``/dev/shm``): one memory copy
    per hop, no pickling of the data, nothing large on the pipe.

    The receiver does not copy: the arrays it gets are views of the segment,
    which it keeps mapped, and the segment is *leased* to them. When the last
    of those arrays is garbage, the receiver marks the segment free in its
    8-byte header and the sender writes the next message into it. Both sides
    touch only pages they touched before: no page faults per message once the
    pool is warm. A receiver that keeps its arrays (a step that stores its
    input, a caller that keeps every output of ``stream()``) keeps their
    segments, and the sender makes new ones. So that shared memory, often
    smaller than the rest (64 MB by default in a Docker container), never
    holds more than :attr:`lease_budget` of what one process keeps, a
    receiver over its budget copies the data out and frees the segment at
    once. When no segment can be made (``/dev/shm`` full), the message's
    arrays go in band and a spilled message goes to a temporary file, with
    one warning per process.

    Segment names start with ``prefix``; whoever owns the run unlinks what is
    left under it when it closes (the segments of a killed worker, messages
    never read), so no segment outlives a run. An array still leased then
    stays valid: an unlinked file's memory lives as long as it is mapped.
    Each segment is also registered with ``multiprocessing``'s resource
    tracker while it exists, so that none outlives the processes of a run
    killed with SIGKILL (see the module docstring).

    Parameters
    ----------
    prefix : str
        Name prefix of this run's segments.
    threshold : int, default=65536
        Buffers smaller than this stay inside the pickle.
    """

    #: Free segments a process keeps for reuse.
    max_free_segments = 16
    #: Segments of other processes a process keeps mapped (least recently used go first).
    max_mapped = 64
    #: Most bytes a process keeps leased: 256 MiB, or an eighth of ``/dev/shm`` if smaller.
    lease_budget = min(256 << 20, shm_size() // 8)

    def __init__(self, prefix: str, threshold: int = 1 << 16) -> None:
        self.prefix = prefix
        self.threshold = threshold
        self._counter = itertools.count()
        self._pool: list[Segment] = []  # segments this process writes
        self._pool_lock = threading.Lock()  # the feeder and the supervisor may both send
        self._mapped: OrderedDict[str, mmap.mmap] = OrderedDict()  # segments this process reads
        self._leased = 0  # bytes of received segments that arrays still view
        self._lease_lock = threading.Lock()  # leases end in whichever thread drops the last array
        self._closing: list[Callable[[], None]] = []

    def __getstate__(self) -> dict[str, Any]:
        return {"prefix": self.prefix, "threshold": self.threshold}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def dumps(self, obj: Any) -> bytes:
        large: list[memoryview] = []
        threshold = self.threshold

        def keep_large(buffer: pickle.PickleBuffer) -> bool:
            raw = buffer.raw()
            if raw.nbytes < threshold:
                return True  # in band
            large.append(raw)
            return False

        payload = _dumps(obj, keep_large)
        if not large:
            return payload
        used: list[Segment] = []
        try:
            for raw in large:
                segment = self._segment_for(raw.nbytes)
                used.append(segment)
                segment.write(raw)
        except OSError as exc:  # no room in /dev/shm: the arrays go in band, as PickleTransport sends them
            for segment in used:
                segment.release()
            _shm_full(exc)
            return _dumps(obj, None)
        except BaseException:
            for segment in used:
                segment.release()
            raise
        header = [(seg.name, seg.size, raw.nbytes) for seg, raw in zip(used, large)]
        return _SHM_MAGIC + pickle.dumps((header, payload), protocol=5)

    def loads(self, data: bytes) -> Any:
        if not data.startswith(_SHM_MAGIC):
            return pickle.loads(data)
        header, payload = pickle.loads(memoryview(data)[len(_SHM_MAGIC) :])
        buffers = [self._lease(name, size, nbytes) for name, size, nbytes in header]
        return pickle.loads(payload, buffers=buffers)

    def _segment_for(self, nbytes: int) -> Segment:
        with self._pool_lock:
            best = None
            n_free = 0
            for segment in self._pool:
                if not segment.is_free():
                    continue
                n_free += 1
                fits = nbytes <= segment.capacity <= 4 * nbytes + (1 << 20)
                if fits and (best is None or segment.capacity < best.capacity):
                    best = segment
            if best is not None:
                best.mark_busy()
                return best
            if n_free >= self.max_free_segments:  # free, but of the wrong sizes: make room
                for segment in [seg for seg in self._pool if seg.is_free()][: n_free + 1 - self.max_free_segments]:
                    segment.destroy()
                    self._pool.remove(segment)
            try:
                segment = self._new_segment(round_up(nbytes))
            except OSError:  # no room in /dev/shm: free this pool's idle segments, ask for no more than needed
                for segment in [seg for seg in self._pool if seg.is_free()]:
                    segment.destroy()
                    self._pool.remove(segment)
                segment = self._new_segment(nbytes)
            self._pool.append(segment)
            return segment

    def _new_segment(self, capacity: int) -> Segment:
        """A new segment of ``capacity`` bytes (``OSError`` when none can be made)."""
        name = f"{self.prefix}-{os.getpid()}-{next(self._counter)}"
        return Segment.create(name + TRACKED if tracking() else name, capacity)

    def spill(self, data: bytes) -> bytes:
        """Put ``data`` in a segment of this process's pool, as the buffers of an array go
        (in a temporary file, as :class:`PickleTransport` spills, when ``/dev/shm`` has no room)."""
        try:
            segment = self._segment_for(len(data))
        except OSError as exc:
            _shm_full(exc)
            return super().spill(data)
        try:
            segment.write(memoryview(data))
        except BaseException:
            segment.release()
            raise
        return SPILLED + _SPILL_HEAD.pack(segment.size, len(data)) + segment.name.encode()

    def load_spilled(self, message: bytes) -> Any:
        """Copy the spilled bytes out, free their segment at once, then decode them."""
        if message[len(SPILLED) : len(SPILLED) + 1] == b"/":  # a file's absolute path: spilled to a file
            return super().load_spilled(message)
        size, nbytes = _SPILL_HEAD.unpack_from(message, len(SPILLED))
        mapped = self._map(message[len(SPILLED) + _SPILL_HEAD.size :].decode(), size)
        try:
            data = mapped[HEADER : HEADER + nbytes]
        finally:
            mark_free(mapped)
        return self.loads(data)

    def _map(self, name: str, size: int) -> mmap.mmap:
        """Segment ``name`` of another process, mapped (kept mapped for its next messages)."""
        mapped = self._mapped.get(name)
        if mapped is None:
            fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR)
            try:
                mapped = mmap.mmap(fd, size)
            finally:
                os.close(fd)
            if len(self._mapped) >= self.max_mapped:
                close_mapping(self._mapped.popitem(last=False)[1])
            self._mapped[name] = mapped
        else:
            self._mapped.move_to_end(name)
        return mapped

    def _lease(self, name: str, size: int, nbytes: int) -> np.ndarray:
        """A view of segment ``name``'s data that frees the segment when it is garbage
        (a copy, and the segment freed now, when this process is over its lease budget)."""
        mapped = self._map(name, size)
        view = np.frombuffer(mapped, np.uint8, nbytes, HEADER)
        with self._lease_lock:
            over = self._leased + nbytes > self.lease_budget
            if not over:
                self._leased += nbytes
        if over:
            out = np.empty(nbytes, dtype=np.uint8)
            np.copyto(out, view)
            del view
            mark_free(mapped)
            return out
        # Every array unpickled from ``view`` holds it (as its base, or its base's).
        weakref.finalize(view, self._end_lease, mapped, nbytes)
        return view

    def _end_lease(self, mapped: mmap.mmap, nbytes: int) -> None:
        with self._lease_lock:
            self._leased -= nbytes
        mark_free(mapped)

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the transport closes (what else lives as long as the run's shared memory)."""
        self._closing.append(callback)

    def close(self) -> None:
        while self._closing:
            self._closing.pop()()
        with self._pool_lock:
            for segment in self._pool:
                segment.destroy()
            self._pool.clear()
        for mapped in self._mapped.values():
            close_mapping(mapped)
        self._mapped.clear()
        unlink_segments(self.prefix)
        _unlink_spilled_files(self.prefix)


def default_transport(prefix: str) -> Transport:
    """Shared memory where the system has it, pickle otherwise.

    Called by the owner of a run, before its workers start: it starts the
    resource tracker that the workers will inherit (see the module docstring).
    """
    if os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK):
        start_tracker()
        return SharedMemoryTransport(prefix)
    return PickleTransport(prefix)
