"""Warm workers: the library's pool of idle worker processes, kept between calls.

Starting a worker process costs an interpreter, its imports and the user's
modules; scikit-learn loops (``GridSearchCV``, ``cross_val_score``) clone a
pipeline and call it again and again. As loky's reusable executor does for
joblib, the process workers of a call go back to this pool when the call ends,
and the next call of any queued pipeline of this process takes them::

    parent                                         a pooled worker process
    ──────                                         ───────────────────────
    take(key) ── idle one, else a new one ──┐
    send_job(spec, worker, io) ──(control pipe)──▶ recv: load the step, setup(),
                                                   worker_loop(...) until STOP,
                                                   teardown(), drop the step
    join(): wait for "done" ◀──(control pipe)───── send "done"; wait for the next job
    give_back(worker) ── idle; stopped after ``worker_idle_timeout`` s by the reaper
    shutdown_workers() ── None ──(control pipe)──▶ exit

Workers are kept per :data:`PoolKey` (start method, thread limit): a worker
is only reused by runs that would have started it the same way. A worker that
died, was killed (an aborted run, a ``timeout``) or belonged to a failed run
never comes back (:meth:`~neuraxle_stream.backends.ProcessBackend.release_workers`);
an idle worker that died is dropped when taken, and a new one started.

Each job carries the run's queues, shared values and shared arrays. These are
``multiprocessing`` objects meant to reach a child only as it starts; to send
them to a process that runs already, :func:`send_job` pickles them as during
a start (semaphores by name; file descriptors passed over the control
socket, as the fork server passes them). So ``fork`` contexts are not pooled.

The pool only holds idle workers; a worker in a run belongs to its runtime.
Idle workers exit at :func:`shutdown_workers`, at interpreter exit (atexit),
and when the parent dies (each watches the parent's sentinel).

A little over ~400 lines, on purpose: the pool, its workers' job protocol
and their idle/exit rules are one mechanism; the worker side of a job is the
ordinary worker loop.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import itertools
import mmap
import multiprocessing
import os
import signal
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from multiprocessing import context as mp_context
from multiprocessing import heap, reduction, spawn
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.reduction import ForkingPickler
from typing import Any

__all__ = ["PoolKey", "PooledWorker", "WorkerPool", "send_job", "pool_main", "shutdown_workers", "worker_pool"]

#: What makes two worker processes interchangeable: start method, BLAS/OpenMP thread limit.
PoolKey = tuple[str, int]

#: Sent to an idle worker: exit.
_EXIT = None
_EXIT_BYTES = struct.pack("!I", 0) + ForkingPickler.dumps(_EXIT)
#: Sent by a worker after each job: ready for the next.
_DONE = b"done"
_names = itertools.count()
#: The name of every pooled worker process starts so (see :func:`_lean_preparation_data`).
_NAME = "neuraxle_stream:worker:"


# -- the worker's side ---------------------------------------------------------------------


def pool_main(control: Connection, thread_limit: int) -> None:
    """Entry point of a pooled worker process: run jobs until told to exit (or the parent dies)."""
    from . import workers  # here, not above: the worker imports only what it runs

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    prefix: list[str | None] = [None]  # the shared-memory prefix of the current run
    workers._exit_with_parent_of(lambda: prefix[0])
    workers._limit_threads(thread_limit)
    workers.reuse_freed_memory()
    while True:
        try:
            job = _recv_job(control)
        except (EOFError, OSError):
            return
        if job is _EXIT:
            return
        spec, worker_index, worker_io = job
        # as a worker started for this stage would be named (log records carry it)
        multiprocessing.current_process().name = f"neuraxle_stream:{spec.name}:{worker_index}"
        prefix[0] = worker_io.shm_prefix
        handler = workers._forward_logs(worker_io.results, worker_io.log_levels)
        try:
            workers.worker_loop(spec, worker_index, worker_io)
        finally:
            # nothing of this run stays: the step, its queues, its log handler
            workers._stop_forwarding(handler)
            prefix[0] = None
            del job, spec, worker_io  # its pipes and semaphores close here (no gc pass: it costs ms)
        control.send_bytes(_DONE)


# -- sending a job ---------------------------------------------------------------------------


class _FdCollector:
    """Stands for the ``Popen`` of a process being started, for a process that runs already.

    With it set as the "spawning popen", ``multiprocessing`` objects pickle
    as for a child being started: semaphores by name, and file descriptors
    as indices into the list it collects, which :func:`send_job` then passes
    over the control socket (``SCM_RIGHTS``), as the fork server passes a
    new child's descriptors. A worker killed before it reads them leaves
    nothing open: the kernel drops descriptors in flight with the socket.
    """

    def __init__(self) -> None:
        self.fds: list[int] = []

    def duplicate_for_child(self, fd: int) -> int:
        self.fds.append(fd)
        return len(self.fds) - 1

    def DupFd(self, index: int) -> _PassedFd:  # the name multiprocessing calls
        return _PassedFd(index)


#: The descriptors received with the job being unpickled (in a worker).
_received: list[int] = []


@dataclass(frozen=True)
class _PassedFd:
    """A descriptor of the job, by its index among those passed with it."""

    index: int

    def detach(self) -> int:
        return _received[self.index]


def _rebuild_arena(size: int, passed: _PassedFd) -> heap.Arena:
    """A shared-memory arena of the parent, mapped; its descriptor is closed at once.

    ``multiprocessing`` keeps an arena's descriptor open for as long as the
    process lives (a child gets it once, at start); a warm worker gets one per
    run, so it must not keep them. The mapping holds its own descriptor.
    """
    fd = passed.detach()
    try:
        arena = heap.Arena.__new__(heap.Arena)
        arena.size, arena.fd = size, -1
        arena.buffer = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    return arena


def send_job(control: Connection, job: Any) -> None:
    """Send a job (stage spec, worker index, its queues and shared state) to a running worker."""
    buffer = io.BytesIO()
    pickler = ForkingPickler(buffer, 5)
    collector = _FdCollector()

    def reduce_arena(arena: heap.Arena) -> tuple[Any, tuple[int, _PassedFd]]:
        return _rebuild_arena, (arena.size, collector.DupFd(collector.duplicate_for_child(arena.fd)))

    pickler.dispatch_table[heap.Arena] = reduce_arena
    mp_context.set_spawning_popen(collector)  # type: ignore[arg-type]
    try:
        pickler.dump(job)
    finally:
        mp_context.set_spawning_popen(None)
    control.send_bytes(struct.pack("!I", len(collector.fds)) + buffer.getvalue())
    if collector.fds:
        with socket.fromfd(control.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            reduction.sendfds(sock, collector.fds)


def _recv_job(control: Connection) -> Any:
    """The job sent by :func:`send_job` (``None``: exit)."""
    data = control.recv_bytes()
    (n_fds,) = struct.unpack("!I", data[:4])
    if n_fds:
        with socket.fromfd(control.fileno(), socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            _received[:] = reduction.recvfds(sock, n_fds)
    try:
        return ForkingPickler.loads(data[4:])
    finally:
        _received.clear()


# -- the parent's side -------------------------------------------------------------------------


@dataclass(eq=False)
class PooledWorker:
    """A warm worker process and the parent's end of its control pipe."""

    process: Any
    control: Connection
    key: PoolKey
    #: whether it finished its job (sent ``done``) since the job began
    done: bool = True
    idle_until: float = field(default=0.0)

    @property
    def sentinel(self) -> Any:
        return self.process.sentinel

    def alive_and_idle(self) -> bool:
        """Whether this idle worker is still there (killed from outside: no).

        A killed process is a zombie (its threads still exiting) a moment
        before its control socket reads EOF and the fork server reports its
        exit: all three are checked.
        """
        if self.control.poll(0):  # an idle worker sends nothing: EOF, it died
            return False
        return bool(self.process.is_alive()) and not _exited(self.process.pid)

    def send_job(self, job: Any) -> None:
        self.done = False
        send_job(self.control, job)

    def wait_done(self, timeout: float | None) -> bool:
        """Wait until the job is done (``True``) or the worker died or ``timeout`` passed (``False``)."""
        if self.done:
            return True
        ready = wait([self.control, self.process.sentinel], timeout)
        if self.control in ready:
            try:
                self.done = self.control.recv_bytes() == _DONE
            except (EOFError, OSError):
                self.done = False
        if not self.done and self.process.sentinel in ready:
            self.process.join(1.0)  # reap it, so that its exit code is known
        return self.done

    def stop(self, timeout: float = 1.0) -> None:
        """Ask the worker to exit; kill it if it does not within ``timeout`` s; release its descriptors."""
        if self.control.closed:
            return
        with contextlib.suppress(OSError, ValueError):
            self.control.send_bytes(_EXIT_BYTES)
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(1.0)
        self.control.close()
        with contextlib.suppress(ValueError):  # still running: its descriptors go with the object
            self.process.close()

    def kill(self) -> None:
        if not self.control.closed and self.process.is_alive():
            self.process.kill()


def _exited(pid: int) -> bool:
    """Whether process ``pid`` has exited (gone, or a zombie), where ``/proc`` tells."""
    if not os.path.exists("/proc/self/stat"):
        return False  # no /proc here: the other checks decide
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] in (b"Z", b"X")
    except FileNotFoundError:
        return True
    except (OSError, IndexError):
        return False


class WorkerPool:
    """The idle worker processes of this process, by :data:`PoolKey`; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._idle: dict[PoolKey, list[PooledWorker]] = {}
        self._reaper: threading.Thread | None = None

    def take(self, ctx: BaseContext, thread_limit: int) -> PooledWorker:
        """An idle worker started as ``ctx`` and ``thread_limit`` would start it, else a new one."""
        key = (ctx.get_start_method(), thread_limit)
        with self._lock:
            idle = self._idle.get(key, [])
            while idle:
                worker = idle.pop()
                if worker.alive_and_idle():
                    return worker
                self._discard(worker)  # died while idle: the caller never hears of it
        _leave_main_out()
        process_end, worker_end = ctx.Pipe()
        process = ctx.Process(  # type: ignore[attr-defined]
            target=pool_main,
            args=(worker_end, thread_limit),
            name=f"{_NAME}{next(_names)}",
            daemon=True,
        )
        process.start()
        worker_end.close()
        return PooledWorker(process, process_end, key)

    def give_back(self, worker: PooledWorker, idle_timeout: float) -> None:
        """Keep ``worker`` idle for ``idle_timeout`` seconds (``0``: stop it now)."""
        if idle_timeout <= 0 or not worker.process.is_alive():
            worker.stop()
            return
        with self._lock:
            worker.idle_until = time.monotonic() + idle_timeout
            self._idle.setdefault(worker.key, []).append(worker)
            if self._reaper is None:
                # not "neuraxle_stream..." : it is no worker of any call
                self._reaper = threading.Thread(target=self._reap, name="nxs-pool-reaper", daemon=True)
                self._reaper.start()
            self._lock.notify_all()

    def idle_pids(self) -> set[int]:
        """The pids of the idle workers (what a "no worker left" check may leave)."""
        with self._lock:
            return {w.process.pid for ws in self._idle.values() for w in ws}

    def shutdown(self) -> None:
        """Stop every idle worker now; safe to call twice."""
        with self._lock:
            workers = [w for ws in self._idle.values() for w in ws]
            self._idle.clear()
            self._lock.notify_all()
        for worker in workers:  # all told first, so that they exit together
            with contextlib.suppress(OSError, ValueError):
                worker.control.send_bytes(_EXIT_BYTES)
        for worker in workers:
            self._discard(worker)

    def _discard(self, worker: PooledWorker) -> None:
        try:
            worker.stop()
        except Exception:  # a worker already gone: nothing to stop
            worker.kill()

    def _reap(self) -> None:
        """Stop the workers idle past their time (the reaper thread; it blocks, it never polls)."""
        while True:
            with self._lock:
                now = time.monotonic()
                expired = [w for ws in self._idle.values() for w in ws if w.idle_until <= now]
                for ws in self._idle.values():
                    ws[:] = [w for w in ws if w.idle_until > now]
                if not expired:
                    deadlines = [w.idle_until for ws in self._idle.values() for w in ws]
                    self._lock.wait(None if not deadlines else min(deadlines) - now)
                    continue
            for worker in expired:
                self._discard(worker)


_POOL = WorkerPool()

_stdlib_preparation_data = spawn.get_preparation_data


def _lean_preparation_data(name: str) -> dict[str, Any]:
    """What a new process imports first: for a pooled worker, not the parent's ``__main__``.

    ``multiprocessing`` imports the parent's main module again in every
    ``spawn`` and ``forkserver`` child (and in the fork server), so that
    objects of ``__main__`` unpickle there. Ours need not: steps, hooks and
    messages from ``__main__`` travel by value (cloudpickle), as loky's
    workers do. Leaving it out keeps a worker lean (a script's imports,
    scikit-learn among them, are not its steps' imports) and makes a script
    without the ``if __name__ == "__main__":`` guard safe.
    """
    data: dict[str, Any] = _stdlib_preparation_data(name)
    if name.startswith(_NAME):
        data.pop("init_main_from_path", None)
        data.pop("init_main_from_name", None)
    return data


def _leave_main_out() -> None:
    """Install :func:`_lean_preparation_data` (once; only pooled workers' names are affected)."""
    if spawn.get_preparation_data is not _lean_preparation_data:
        spawn.get_preparation_data = _lean_preparation_data


def worker_pool() -> WorkerPool:
    """The pool of this process."""
    return _POOL


def shutdown_workers() -> None:
    """Stop the idle (warm) worker processes now.

    Workers in use by a call, or kept by ``with pipeline:``, are not touched;
    they return to the pool when their call or block ends. Safe to call at any
    time, twice included.

    Examples
    --------
    >>> import neuraxle_stream
    >>> neuraxle_stream.shutdown_workers()
    """
    _POOL.shutdown()


# Before multiprocessing's own exit handler (registered earlier, so run later)
# terminates daemonic children: idle workers leave cleanly.
atexit.register(shutdown_workers)
