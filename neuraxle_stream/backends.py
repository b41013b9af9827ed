"""Backends: where workers run (threads or processes) and what joins them.

A backend makes the queues, the shared counters and the workers of a run.
:class:`ThreadBackend` passes objects by reference between threads;
:class:`ProcessBackend` starts one process per worker (``forkserver`` on
Linux by default, ``spawn`` when the workers use CUDA: the choice is
:mod:`~neuraxle_stream.start_methods`) and moves messages through a
:class:`~neuraxle_stream.transport.Transport`.
"""

from __future__ import annotations

import itertools
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

from .config import get_config
from .pool import PooledWorker, worker_pool
from .queues import (
    Channel,
    ProcessChannel,
    ProcessResultChannel,
    ResultChannel,
    ThreadChannel,
    ThreadResultChannel,
)
from .stages import StageSpec
from .start_methods import resolve_context
from .transport import Transport, default_transport
from .workers import WorkerIO, process_main, worker_loop

__all__ = [
    "Backend",
    "ProcessBackend",
    "ThreadBackend",
    "WorkerHandle",
]

_backend_ids = itertools.count()


class WorkerHandle(ABC):
    """A running worker, as the supervisor sees it."""

    step_name: str
    worker_index: int
    sentinel: Any = None

    @abstractmethod
    def is_alive(self) -> bool:
        """Whether the worker still runs."""

    @abstractmethod
    def join(self, timeout: float | None = None) -> None:
        """Wait for the worker to end."""

    def kill(self) -> None:  # noqa: B027 - threads cannot be killed
        """Stop the worker at once, where the backend can."""

    def describe_exit(self) -> str:
        """How the worker ended, for error messages."""
        return "ended"


class _SharedInt:
    """An int shared between threads, with the ``multiprocessing.Value`` interface."""

    def __init__(self, value: int = 0) -> None:
        self.value = value
        self._lock = threading.Lock()

    def get_lock(self) -> threading.Lock:
        return self._lock


class Backend(ABC):
    """Makes the queues and workers of a run."""

    name: str
    #: Whether exceptions must be made picklable to reach the parent.
    portable: bool

    @abstractmethod
    def channel(self, maxsize: int) -> Channel:
        """A bounded queue between stages."""

    @abstractmethod
    def result_channel(self) -> ResultChannel:
        """The channel from the workers to the parent."""

    @abstractmethod
    def shared_int(self, value: int, lock: bool = True) -> Any:
        """An int visible to the parent and every worker."""

    @abstractmethod
    def shared_array(self, typecode: str, size: int) -> Any:
        """A fixed-size array of ints (``"q"``) or floats (``"d"``) written by workers."""

    @abstractmethod
    def start_worker(self, spec: StageSpec, worker_index: int, io: WorkerIO) -> WorkerHandle:
        """Start one worker of a stage."""

    def release_workers(self, handles: list[WorkerHandle], reuse: bool) -> None:  # noqa: B027
        """The run's runtime is closed and its workers joined: keep the reusable ones warm."""


class _ThreadHandle(WorkerHandle):
    def __init__(self, thread: threading.Thread, spec: StageSpec, worker_index: int) -> None:
        self.thread, self.step_name, self.worker_index = thread, spec.name, worker_index

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)


class ThreadBackend(Backend):
    """Workers are threads of the calling process; each holds its own step copy."""

    name = "thread"
    portable = False

    def channel(self, maxsize: int) -> Channel:
        return ThreadChannel(maxsize)

    def result_channel(self) -> ResultChannel:
        return ThreadResultChannel()

    def shared_int(self, value: int, lock: bool = True) -> Any:
        return _SharedInt(value)

    def shared_array(self, typecode: str, size: int) -> Any:
        return [-1 if typecode == "q" else 0.0] * size

    def start_worker(self, spec: StageSpec, worker_index: int, io: WorkerIO) -> WorkerHandle:
        thread = threading.Thread(
            target=worker_loop,
            args=(spec, worker_index, io),
            name=f"neuraxle_stream:{spec.name}:{worker_index}",
            daemon=True,
        )
        thread.start()
        return _ThreadHandle(thread, spec, worker_index)


class _ProcessHandle(WorkerHandle):
    def __init__(self, process: Any, spec: StageSpec, worker_index: int) -> None:
        self.process, self.step_name, self.worker_index = process, spec.name, worker_index
        self.sentinel = process.sentinel

    def is_alive(self) -> bool:
        return bool(self.process.is_alive())

    def join(self, timeout: float | None = None) -> None:
        self.process.join(timeout)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()

    def describe_exit(self) -> str:
        code = self.process.exitcode
        if code is None:
            return "is still running"
        if code < 0:
            import signal

            try:
                sig = signal.Signals(-code).name
            except ValueError:
                sig = f"signal {-code}"
            return f"was killed by {sig} (exit code {code})"
        return f"exited with code {code}"


class _PooledHandle(_ProcessHandle):
    """A warm worker of the pool (:mod:`~neuraxle_stream.pool`) doing one job for a runtime.

    It "ends" (``is_alive`` false, ``join`` returns) when its job is done, not
    when its process exits: the process may then go back to the pool.
    """

    def __init__(self, worker: PooledWorker, spec: StageSpec, worker_index: int) -> None:
        super().__init__(worker.process, spec, worker_index)
        self.worker = worker

    def is_alive(self) -> bool:
        return not self.worker.wait_done(0) and bool(self.process.is_alive())

    def join(self, timeout: float | None = None) -> None:
        self.worker.wait_done(timeout)


class ProcessBackend(Backend):
    """One process per worker; messages cross through the transport."""

    name = "process"
    portable = True

    def __init__(
        self,
        mp_context: Any = None,
        total_workers: int = 1,
        transport: Transport | None = None,
        uses_cuda: bool = False,
        preload: Iterable[str] = (),
    ) -> None:
        self.ctx = resolve_context(mp_context, uses_cuda, preload)
        self.thread_limit = max(1, (os.cpu_count() or 1) // max(1, total_workers))
        prefix = f"nxs-{os.getpid()}-{next(_backend_ids)}"
        # One transport for every queue of the run: closing the result channel
        # at the end of the run unlinks every shared-memory segment it left.
        self.transport = transport or default_transport(prefix)
        # Workers come from the pool of warm workers; a forked context cannot
        # hand its queues to a process already running (see pool.py): its own workers.
        self.pooled = self.ctx.get_start_method() != "fork"

    def channel(self, maxsize: int) -> Channel:
        return ProcessChannel(self.ctx, maxsize, self.transport)

    def result_channel(self) -> ResultChannel:
        return ProcessResultChannel(self.ctx, self.transport)

    def shared_int(self, value: int, lock: bool = True) -> Any:
        return self.ctx.Value("q", value, lock=lock)

    def shared_array(self, typecode: str, size: int) -> Any:
        array = self.ctx.RawArray(typecode, size)
        if typecode == "q":
            array[:] = [-1] * size
        return array

    def start_worker(self, spec: StageSpec, worker_index: int, io: WorkerIO) -> WorkerHandle:
        io.thread_limit = self.thread_limit
        if self.pooled:
            pool = worker_pool()
            for _ in range(2):  # an idle worker that died just now: a new one
                worker = pool.take(self.ctx, self.thread_limit)
                try:
                    worker.send_job((spec, worker_index, io))
                except OSError:
                    worker.kill()
                    continue
                return _PooledHandle(worker, spec, worker_index)
        process = self.ctx.Process(  # type: ignore[attr-defined]
            target=process_main,
            args=(spec, worker_index, io),
            name=f"neuraxle_stream:{spec.name}:{worker_index}",
            daemon=True,
        )
        process.start()
        return _ProcessHandle(process, spec, worker_index)

    def release_workers(self, handles: list[WorkerHandle], reuse: bool) -> None:
        """Give the warm workers of a run that ended well back to the pool; stop the others.

        ``reuse`` is false after a failed, aborted or timed-out run: its
        workers are never reused.
        """
        idle_timeout = float(get_config()["worker_idle_timeout"])
        for handle in handles:
            if not isinstance(handle, _PooledHandle):
                continue
            worker = handle.worker
            if reuse and worker.wait_done(0) and worker.process.is_alive():
                worker_pool().give_back(worker, idle_timeout)
            else:
                worker.kill()
                worker.stop()
