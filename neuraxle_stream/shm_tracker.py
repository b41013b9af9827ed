"""Shared-memory segments and ``multiprocessing``'s resource tracker: none outlives its program.

The transport's segments (:mod:`~neuraxle_stream.transport`) are files of
``/dev/shm``; the run's owner unlinks them when the run closes, and workers
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
import multiprocessing
import os
from multiprocessing import resource_tracker, spawn, util

__all__ = ["TRACKED", "register", "start_tracker", "tracking", "unregister"]

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
