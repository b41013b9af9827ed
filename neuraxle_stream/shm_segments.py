"""Shared-memory segments: the files under ``/dev/shm`` that the transport writes, and how none outlives its program.

A :class:`Segment` is one file of a sender's pool in
:class:`~neuraxle_stream.transport.SharedMemoryTransport`: an 8-byte busy flag
(:data:`HEADER`; set by the sender, cleared by the receiver with
:func:`mark_free`), then the data. Segments are mapped once and reused; what
the transport does with them (pools, leases, spilled messages) is in
:mod:`~neuraxle_stream.transport`.

A segment's pages are reserved when it is made (``posix_fallocate``): on
tmpfs a file sized with ``ftruncate`` reserves nothing, and a write into a
page that finds ``/dev/shm`` full (64 MB by default in a Docker container)
raises ``SIGBUS`` in the writer, which kills it. Reserved, a full
``/dev/shm`` is an ``OSError`` (``ENOSPC``) from :meth:`Segment.create`
instead, and the transport sends that message another way.

The run's owner unlinks its segments when the run closes, and workers
when they see their parent die. When nobody is left to do it (the parent
killed with SIGKILL together with its workers, or its whole process group
killed), the standard library's resource tracker does: one process per
program that unlinks whatever is still registered with it once every
process holding its pipe has exited::

    run's owner ── start_tracker() (before its first workers) ──▶ tracker
                                                    (a session of its own)
    workers (forkserver, spawn: passed on; fork: copied) share that tracker
    any process making a segment ── register(name) ──▶ tracker (one pipe write)
    any process unlinking one ── unregister(name) ──▶ tracker
    every holder of the pipe gone ──▶ tracker unlinks what is registered, exits

It is ``multiprocessing.resource_tracker``, started as ``multiprocessing``
starts it but with ``setsid``, so that a kill of the process group (a
harness's timeout, a closed terminal) does not take it too: it outlives the
others by the moment it takes to unlink what they left. A tracker already
running in the owner (``multiprocessing`` used before its first run) is
kept as it is. A worker never starts one (it would unlink the worker's
segments when the worker exits, while others may still read them); a
process without one (not started by ``multiprocessing``: a Ray actor, a
child of another program) registers nothing. Registered segments carry a
mark at the end of their name (:data:`TRACKED`), so that whoever unlinks
one knows whether to unregister it: the tracker reports a name
unregistered twice, or never registered, as an error.
"""

from __future__ import annotations

import contextlib
import mmap
import multiprocessing
import os
from multiprocessing import resource_tracker, spawn, util

__all__ = [
    "HEADER",
    "SHM_DIR",
    "TRACKED",
    "Segment",
    "close_mapping",
    "mark_free",
    "register",
    "round_up",
    "shm_size",
    "start_tracker",
    "tracking",
    "unlink",
    "unlink_segments",
    "unregister",
]

#: Where segments live: a memory-backed file system. For tests only, the
#: environment variable ``NEURAXLE_STREAM_SHM_DIR`` (read once, at import, in
#: each process) names another one: a small ``tmpfs`` to fill up, say.
_DEV_SHM = "/dev/shm"
SHM_DIR = os.environ.get("NEURAXLE_STREAM_SHM_DIR") or _DEV_SHM
#: Bytes before a segment's data: its busy flag (set by the sender, cleared by the receiver).
HEADER = 8
_FREE = b"\x00" * HEADER
_BUSY = b"\x01" + b"\x00" * (HEADER - 1)

#: Ends the name of a segment registered with the resource tracker.
TRACKED = "-rt"
#: The tracker's kind of resource for a file of ``/dev/shm`` (it unlinks them with ``shm_unlink``).
_RTYPE = "shared_memory"


def start_tracker() -> None:
    """Start ``multiprocessing``'s resource tracker for this process (the owner of a run), if none runs.

    Before any worker starts: workers inherit this tracker (``spawn`` and
    ``forkserver`` pass it on, ``fork`` copies it), so that every segment of
    the run is registered with one tracker. It is the standard library's
    tracker, started as ``multiprocessing`` starts it but in a session of its
    own (:func:`_spawn_tracker`), so that it survives a kill of the whole
    process group too. A tracker already running (``multiprocessing`` used
    before) is kept. Nothing happens where none can start; segments are then
    not registered.
    """
    tracker = getattr(resource_tracker, "_resource_tracker", None)
    if tracker is None or _has_tracker():
        return
    with contextlib.suppress(Exception), tracker._lock:
        if tracker._fd is None:
            tracker._fd, tracker._pid = _spawn_tracker()
    with contextlib.suppress(Exception):  # no tracker here: segments are swept as before
        resource_tracker.ensure_running()


def _spawn_tracker() -> tuple[int, int]:
    """Start the standard library's resource tracker in a new session: (its pipe's write end, its pid).

    As ``multiprocessing`` starts it (its ``main`` reading the read end of a
    pipe, this process's stderr for its warnings), with ``setsid``: a kill
    of the user's process group (``killpg``: a harness's timeout, a closed
    terminal's SIGHUP) leaves it running until every process that holds the
    pipe is gone, a moment later, to unlink what they left; then it exits.
    """
    r, w = os.pipe()
    try:
        os.set_inheritable(r, True)
        exe = spawn.get_executable()
        args = [exe, *util._args_from_interpreter_flags(), "-c", _TRACKER_MAIN % r]  # type: ignore[attr-defined]
        # it keeps only stderr and its pipe, as multiprocessing's own start does
        closed = [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds() if fd not in (2, r)]
        pid = os.posix_spawn(exe, args, os.environ, file_actions=closed, setsid=True)
    except BaseException:
        os.close(w)
        raise
    finally:
        os.close(r)
    return w, pid


_TRACKER_MAIN = "from multiprocessing.resource_tracker import main;main(%d)"


def _inheritable_fds() -> list[int]:
    """This process's inheritable descriptors, where ``/proc`` lists them."""
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        return []
    inheritable = []
    for fd in fds:
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed since
            if os.get_inheritable(fd):
                inheritable.append(fd)
    return inheritable


def tracking() -> bool:
    """Whether this process registers its segments: only with a tracker it has already.

    A worker never starts one of its own: a tracker started in a worker would
    unlink the worker's segments when the worker exits, while others may
    still read them. A process not started by ``multiprocessing`` (a Ray
    actor, a process whose parent is another program) has none, unless it
    owns runs itself.
    """
    if SHM_DIR != _DEV_SHM:  # the tracker unlinks names of /dev/shm only
        return False
    if _has_tracker():
        return True
    if multiprocessing.parent_process() is None:  # a process that owns runs
        start_tracker()
        return _has_tracker()
    return False


def _has_tracker() -> bool:
    """Whether this process holds a resource tracker (started here or inherited).

    ``multiprocessing`` has no public way to ask without starting one (which
    a worker must not do): its tracker's pipe, ``_fd``, is read directly.
    """
    return getattr(getattr(resource_tracker, "_resource_tracker", None), "_fd", None) is not None


def register(name: str) -> None:
    """Register segment ``name`` (a file of ``/dev/shm``) before it is made, when its name is marked."""
    if name.endswith(TRACKED) and _has_tracker():
        with contextlib.suppress(Exception):  # the tracker is gone: the prefix sweeps still hold
            resource_tracker.register("/" + name, _RTYPE)


def unregister(name: str) -> None:
    """Unregister a segment that was registered (by whichever process made it: one tracker per program)."""
    if name.endswith(TRACKED) and _has_tracker():
        with contextlib.suppress(Exception):
            resource_tracker.unregister("/" + name, _RTYPE)


# -- segment files ----------------------------------------------------------------------


def shm_size() -> int:
    """Bytes of ``/dev/shm`` (0 where there is none)."""
    try:
        stat = os.statvfs(SHM_DIR)
    except OSError:
        return 0
    return stat.f_frsize * stat.f_blocks


def mark_free(mapped: mmap.mmap) -> None:
    """Mark a received segment free: its sender may write the next message into it."""
    with contextlib.suppress(ValueError):  # closed: the run is over and nobody reuses it
        mapped[0:HEADER] = _FREE


def close_mapping(mapped: mmap.mmap) -> None:
    """Unmap a segment, unless arrays still view it (then it is unmapped with the last one)."""
    with contextlib.suppress(BufferError):
        mapped.close()


def round_up(nbytes: int) -> int:
    """Capacity for ``nbytes``: the next power of two from 1 MiB, so segments get reused."""
    capacity = 1 << 20
    while capacity < nbytes:
        capacity *= 2
    return capacity


class Segment:
    """One shared-memory file of a sender's pool: an 8-byte busy flag, then data.

    Only the sender sets the flag (before sending); only the receiver clears it
    (after copying the data out).
    """

    def __init__(self, name: str, capacity: int, mapped: mmap.mmap) -> None:
        self.name, self.capacity, self.mapped = name, capacity, mapped

    @property
    def size(self) -> int:
        return self.capacity + HEADER

    @classmethod
    def create(cls, name: str, capacity: int) -> Segment:
        # Registered before the file exists: whoever sees the file (and may
        # unlink and unregister it) comes after the registration in the pipe.
        register(name)
        try:
            fd = os.open(os.path.join(SHM_DIR, name), os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except BaseException:
            unregister(name)
            raise
        try:
            os.ftruncate(fd, capacity + HEADER)
            # Its pages now, or ENOSPC now: on tmpfs a page written
            # later with no room left would raise SIGBUS in the writer.
            _allocate(fd, capacity + HEADER)
            mapped = mmap.mmap(fd, capacity + HEADER)
        except BaseException:
            unlink(name)
            raise
        finally:
            os.close(fd)
        segment = cls(name, capacity, mapped)
        segment.mark_busy()
        return segment

    def is_free(self) -> bool:
        return self.mapped[0] == 0

    def mark_busy(self) -> None:
        self.mapped[0:HEADER] = _BUSY

    def write(self, raw: memoryview) -> None:
        memoryview(self.mapped)[HEADER : HEADER + raw.nbytes] = raw.cast("B")

    def release(self) -> None:
        self.mapped[0:HEADER] = _FREE

    def destroy(self) -> None:
        close_mapping(self.mapped)
        unlink(self.name)


def _allocate(fd: int, nbytes: int) -> None:
    """Reserve the first ``nbytes`` of file ``fd`` (``OSError``: ``ENOSPC`` when there is no room).

    ``posix_fallocate`` allocates a tmpfs file's pages (zeroed, as its
    first writes would) or fails with nothing allocated. Where the system
    has none, nothing is reserved.
    """
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is not None:
        fallocate(fd, 0, nbytes)


def unlink(name: str) -> None:
    """Unlink segment ``name``; the process whose unlink removed it unregisters it."""
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except FileNotFoundError:
        return  # another process unlinked (and unregistered) it first
    unregister(name)


def unlink_segments(prefix: str) -> int:
    """Unlink every shared-memory segment of the run whose name prefix is ``prefix``.

    Segment names are ``<prefix>-<pid>-<n>``: those that start with
    ``prefix`` and a dash, so that run ``nxs-7-1`` does not sweep the live
    segments of run ``nxs-7-10``.
    """
    prefix += "-"
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return 0
    count = 0
    for name in names:
        if name.startswith(prefix):
            unlink(name)
            count += 1
    return count
