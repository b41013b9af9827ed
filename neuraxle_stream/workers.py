"""Workers: the loop each worker runs, on a thread or in a process.

A worker loads its own copy of its step, sets its ``worker_arguments``, calls
``setup()``, then takes minibatches from its stage's input queue until it
gets :data:`~neuraxle_stream.messages.STOP`. Results go to the next stage's
queue, or to the parent from the last stage of a lane; failures go straight
to the parent, so an error is reported at once rather than behind the queue.
The last worker of a stage to stop passes the stop on to the next stage.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

from . import _containers
from .messages import STOP, MinibatchError, QueuedMinibatchTask, StageResult, StageStopped
from .queues import Channel, ResultChannel
from .savers import load_step
from .steps import apply_worker_arguments, call_hook
from .transport import unlink_segments

__all__ = ["CLOSING", "IDLE", "IDLE_RUN", "SETUP", "STARTING", "STOPPED", "TEARDOWN", "StageSpec", "WorkerIO", "process_main", "worker_loop"]

#: ``current`` value of a worker between minibatches.
IDLE = -1
#: ``current`` value of a worker running its step's ``setup()``.
SETUP = -2
#: ``current`` value of a worker that stopped when told to (not one that died).
STOPPED = -3
#: ``current`` value of a worker started but not yet running (set by the parent).
STARTING = -4
#: ``current`` value of a worker running its step's ``teardown()``.
TEARDOWN = -5

#: ``active_run`` value between runs: workers drop every task they get.
IDLE_RUN = -1
#: ``active_run`` value of an aborted runtime: workers exit as soon as they can.
CLOSING = -2
#: Seconds between two checks for CLOSING while a worker thread waits on a full queue.
_PUT_CHECK = 0.1


@dataclass(frozen=True)
class StageSpec:
    """The plain, picklable description of one stage of a lane.

    Parameters
    ----------
    name : str
        The step name.
    lane : int
        Index of the lane (a union branch; 0 in a sequential pipeline).
    index : int
        Position of the stage in its lane.
    n_workers : int
        Number of workers.
    max_queue_size : int
        Bound of the stage's input queue.
    payload : bytes
        The saved step; each worker loads its own copy.
    worker_arguments : list of list of (str, Any)
        Per-worker ``(param, value)`` pairs.
    """

    name: str
    lane: int
    index: int
    n_workers: int
    max_queue_size: int
    payload: bytes = field(repr=False)
    worker_arguments: list[list[tuple[str, Any]]] = field(default_factory=list)
    may_change_length: bool = False
    #: A digest of ``payload``, so that the repr (a key of kept runtimes) changes with the step.
    digest: str = field(init=False, default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", hashlib.blake2b(self.payload, digest_size=8).hexdigest())


@dataclass
class WorkerIO:
    """The queues and shared state a worker of a stage uses."""

    inbox: Channel
    outbox: Channel | None
    results: ResultChannel
    active_run: Any
    stop_counter: Any
    current: Any
    started: Any
    next_n_workers: int
    portable: bool
    thread_limit: int | None = None
    #: Name prefix of the run's shared-memory segments, swept if the parent dies.
    shm_prefix: str | None = None


def worker_loop(spec: StageSpec, worker_index: int, io: WorkerIO) -> None:
    """Run one worker until it is told to stop (or its runtime is aborted)."""
    report = _Reporter(spec, worker_index, io)
    io.started[worker_index] = time.monotonic()
    io.current[worker_index] = SETUP
    try:
        step = load_step(spec.payload)
        args = spec.worker_arguments[worker_index] if spec.worker_arguments else []
        apply_worker_arguments(step, args)
        call_hook(step, "setup")
    except BaseException as exc:
        report.failure(exc, None, io.active_run.value, "setup")
        _stopped(spec, worker_index, io)
        return
    io.current[worker_index] = IDLE
    transform = step.transform
    while io.active_run.value != CLOSING:
        item = io.inbox.get()
        if item is STOP:
            break
        task: QueuedMinibatchTask = item
        if task.run_id != io.active_run.value:
            continue  # a task of a cancelled run: drop it
        io.started[worker_index] = time.monotonic()
        io.current[worker_index] = task.index
        try:
            out = transform(task.data_inputs)
            if not spec.may_change_length:
                _check_length(spec.name, task.data_inputs, out)
        except BaseException as exc:
            report.failure(exc, task.index, task.run_id, "transform")
            continue
        finally:
            # Waiting for room downstream is backpressure, not this step's time.
            io.current[worker_index] = IDLE
        result = QueuedMinibatchTask(task.index, out, task.expected_outputs, task.run_id)
        try:
            if io.outbox is not None:
                _put(io, io.outbox, result)
            else:
                io.results.put(StageResult(spec.lane, result))
        except Exception as exc:  # the output cannot be encoded: say whose output it is
            exc.add_note(f"Raised sending the output of step {spec.name!r} for minibatch {task.index}.")
            report.failure(exc, task.index, task.run_id, "transform")
    io.current[worker_index] = TEARDOWN
    try:
        call_hook(step, "teardown")
    except BaseException as exc:
        report.failure(exc, None, io.active_run.value, "teardown")
    _stopped(spec, worker_index, io)


def _put(io: WorkerIO, channel: Channel, item: Any) -> None:
    """Put ``item`` on the next stage's queue, waiting for room.

    A worker process waits as long as it takes (an aborted run kills it); a
    worker thread cannot be killed, so it gives up when its runtime aborts.
    """
    if io.portable:
        channel.put(item)
        return
    while not channel.put(item, timeout=_PUT_CHECK):
        if io.active_run.value == CLOSING:
            return


def _stopped(spec: StageSpec, worker_index: int, io: WorkerIO) -> None:
    """Count this worker out; the last one of the stage passes the stop on.

    In an aborted runtime every stage gets its STOPs directly from the parent.
    """
    with io.stop_counter.get_lock():
        io.stop_counter.value -= 1
        last = io.stop_counter.value == 0
    io.current[worker_index] = STOPPED
    if not last or io.active_run.value == CLOSING:
        return
    if io.outbox is not None:
        for _ in range(io.next_n_workers):
            _put(io, io.outbox, STOP)
    else:
        io.results.put(StageStopped(spec.lane, spec.index))


def _check_length(step_name: str, inputs: Any, outputs: Any) -> None:
    try:
        n_in = _containers.num_rows(inputs)
        n_out = _containers.num_rows(outputs)
    except TypeError:
        return
    if n_in != n_out:
        raise ValueError(
            f"Step {step_name!r} returned {n_out} rows for a minibatch of {n_in} rows. "
            "Queued pipelines need one output per input; a step that filters rows "
            "must set the class attribute `may_change_length = True`."
        )


class _Reporter:
    def __init__(self, spec: StageSpec, worker_index: int, io: WorkerIO) -> None:
        self.spec, self.worker_index, self.io = spec, worker_index, io

    def failure(self, exc: BaseException, index: int | None, run_id: int, phase: str) -> None:
        message = MinibatchError.capture(
            exc,
            step_name=self.spec.name,
            worker_index=self.worker_index,
            index=index,
            run_id=run_id,
            phase=phase,
            portable=self.io.portable,
        )
        try:
            self.io.results.put(message)
        except BaseException as send_exc:  # the error itself cannot travel: describe it
            fallback = MinibatchError.capture(
                send_exc, step_name=self.spec.name, worker_index=self.worker_index,
                index=index, run_id=run_id, phase=phase, portable=True,
            )
            self.io.results.put(fallback)


def process_main(spec: StageSpec, worker_index: int, io: WorkerIO) -> None:
    """Entry point of a worker process."""
    # Ctrl-C reaches the whole process group: the parent handles it and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(io.shm_prefix)
    if io.thread_limit is not None:
        _limit_threads(io.thread_limit)
    worker_loop(spec, worker_index, io)


def _exit_with_parent(shm_prefix: str | None) -> None:
    """Exit at once when the parent process dies (its sentinel reaches EOF).

    The sentinel is the parent's end of a pipe that only the process that
    started this worker holds, under every start method: with ``forkserver``
    it is the user's process, not the fork server. A parent that is killed
    cannot unlink the run's shared-memory segments: its workers do, on the way out.
    """
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return
    sentinel = parent.sentinel

    def watch() -> None:
        wait([sentinel])
        if shm_prefix is not None:
            unlink_segments(shm_prefix)
        os._exit(1)

    threading.Thread(target=watch, name="neuraxle_stream-parent-watch", daemon=True).start()


def _limit_threads(n: int) -> None:
    """Limit BLAS/OpenMP (and torch, when loaded) threads to this worker's share."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        pass
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(n))
