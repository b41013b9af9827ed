"""Workers: the loop each worker runs, on a thread or in a process.

A worker loads its own copy of its step, sets its ``worker_arguments``, calls
``setup()``, then takes minibatches from its stage's input queue until it
gets :data:`~neuraxle_stream.messages.STOP`. Results go to the next stage's
queue, or to the parent from the last stage of a lane; failures go straight
to the parent, so an error is reported at once rather than behind the queue.
The last worker of a stage to stop passes the stop on to the next stage.

Each worker also measures every minibatch (its step's time, its items, how
long it waited on its input queue and for room on the next) and appends a
:class:`~neuraxle_stream.messages.TaskRecord` to the task it passes on, runs
its copy of the pipeline's hooks around its lifetime and each minibatch, and,
in a worker process, sends its ``logging`` records to the parent on the
results channel. When its stage spec says ``trace``, it records every call its
step receives (:mod:`~neuraxle_stream.tracing`) and appends those records to
the task in the same way.

A chained stage's worker runs several steps on each minibatch, one after
another in its memory (:class:`ChainRunner`, a :class:`StepRunner` per step):
each step keeps its own hooks, trace, record and error reports.

Over ~400 lines, on purpose: the worker loop, the step runners it shares
with the Ray actors and the stop protocol are one story, read in order.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

from . import _containers, _libc, tracing
from ._step_calls import call_hook
from .hooks import StageInfo, WorkerHooks
from .messages import (
    STOP,
    MinibatchError,
    QueuedMinibatchTask,
    StageResult,
    StageStopped,
    TaskRecord,
    WorkerLog,
)
from .queues import Channel, ResultChannel
from .savers import load_step
from .shm_segments import unlink_segments
from .stages import CLOSING, IDLE, SETUP, STOPPED, TEARDOWN, StageSpec, sending

__all__ = [
    "ChainRunner", "StepFailed", "StepRunner", "WorkerIO", "process_main", "reuse_freed_memory", "worker_loop",
]

#: Seconds between two checks for CLOSING while a worker thread waits on a full queue.
_PUT_CHECK = 0.1
_NO_CONTEXT: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()


def _parent_log_levels() -> dict[str, int]:
    """The levels set on the parent's loggers (``""`` for the root), for its worker processes."""
    levels = {"": logging.getLogger().getEffectiveLevel()}
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and logger.level != logging.NOTSET:
            levels[name] = logger.level
    return levels


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
    #: The parent's logger levels when the worker started (worker processes apply them).
    log_levels: dict[str, int] = field(default_factory=_parent_log_levels)
    #: Two slots per worker: rows and minibatches it finished, read by the
    #: parent's progress bars while the results are still on their way.
    done: Any = None
    #: A chained stage: one slot per worker, the position in the chain of the
    #: step it runs now, so that a timeout or a death names that step.
    step_at: Any = None


class StepRunner:
    """One worker's copy of its step, with its hooks and tracer: runs one minibatch at a time.

    Creating it loads the step (the saver sets the worker's arguments), runs
    ``setup()`` and enters the stage hooks; it raises what they raise. The
    worker loop of threads and processes and the Ray actors both run their
    minibatches through it.
    """

    def __init__(
        self, spec: StageSpec, worker_index: int, thread_limit: int | None = None, owns_thread: bool = False,
    ) -> None:
        self.spec, self.worker_index = spec, worker_index
        #: Whether this thread runs nothing but this worker (a worker thread, a worker process's
        #: loop): the caller's scikit-learn configuration then stays set in it (see :meth:`run`).
        self.owns_thread = owns_thread
        self._configured_in: int | None = None  # the thread the configuration was set in
        with self.sklearn_config():
            self._setup(thread_limit)

    def sklearn_config(self) -> contextlib.AbstractContextManager[Any]:
        """The caller's scikit-learn configuration, for the step's calls in this worker."""
        # Only once scikit-learn is there (a step brought it): a worker of plain
        # functions never imports it, and a step that does not use it needs no config.
        if not self.spec.sklearn_config or "sklearn" not in sys.modules:
            return contextlib.nullcontext()
        from sklearn import config_context

        return config_context(**self.spec.sklearn_config)

    def _configured(self) -> contextlib.AbstractContextManager[Any]:
        """:meth:`sklearn_config` for one minibatch; set once for all in a thread this worker owns.

        scikit-learn's configuration is per thread: a worker that owns its
        thread sets it there once (when scikit-learn is there), instead of
        entering and leaving it on every minibatch (microseconds each).
        """
        if not self.owns_thread:
            return self.sklearn_config()
        if self._configured_in != threading.get_ident() and self.spec.sklearn_config and "sklearn" in sys.modules:
            from sklearn import set_config

            set_config(**self.spec.sklearn_config)
            self._configured_in = threading.get_ident()
        return _NO_CONTEXT

    def _setup(self, thread_limit: int | None) -> None:
        spec = self.spec
        worker_index = self.worker_index
        args = spec.worker_arguments[worker_index] if spec.worker_arguments else []
        # The saver sets the arguments: a torch step is loaded straight onto its worker's device.
        self.step = load_step(spec.payload, args)
        if thread_limit is not None:
            _limit_torch_threads(thread_limit)  # torch may have come with the step
        call_hook(self.step, "setup")
        index = spec.index if spec.step_index is None else spec.step_index
        self.hooks = WorkerHooks(spec.hooks, StageInfo(spec.name, index, spec.n_workers, worker_index))
        self.hooks.enter_stage()
        self.transform = self.step.transform
        self.tracer: tracing.Recorder | None = None
        if spec.trace:  # wrapped once, here; untraced, ``run`` only checks ``tracer``
            self.tracer, self.transform = tracing.install(self.step, spec.name, worker_index)

    def run(
        self, task: QueuedMinibatchTask, get_wait: float, put_wait: float | None
    ) -> tuple[QueuedMinibatchTask, BaseException | None]:
        """Transform ``task``; return the task to pass on (its stats and trace appended) and the error, if any.

        ``get_wait`` and ``put_wait`` are the seconds the worker waited for this
        task and for room for its previous output (``None``: not known), for its stats.
        """
        spec, tracer = self.spec, self.tracer
        data = task.data_inputs
        try:
            n_in: int | None = _containers.num_rows(data)
        except TypeError:
            n_in = None  # unsized: counted as one item, its output's length not checked
        start_wall = time.time()
        clock = time.perf_counter
        error: BaseException | None = None
        duration = cpu = 0.0
        started = float("nan")  # stays NaN when a task hook fails before the step starts
        out: Any = None
        if tracer is not None:
            tracer.begin(task.index)
        try:
            with self._configured(), self.hooks.around_task(task):
                started, cpu_started = clock(), time.thread_time()
                try:
                    kwargs = task.params.get(spec.name) if task.params else None  # routed metadata
                    out = self.transform(data, **kwargs) if kwargs else self.transform(data)
                    if n_in is not None and not spec.may_change_length:
                        _check_length(spec.name, n_in, out)
                except BaseException as exc:
                    error = exc  # reported even if a task hook swallows it
                    raise
                finally:
                    duration, cpu = clock() - started, time.thread_time() - cpu_started
        except BaseException as exc:
            error = exc  # the step's error, or a hook's own
        record = TaskRecord(
            spec.name, self.worker_index, 1 if n_in is None else n_in, start_wall, duration,
            get_wait, put_wait, error is not None, task.index, started, cpu,
        )
        trace = task.trace if tracer is None else (*task.trace, *tracer.take())
        result = QueuedMinibatchTask(
            task.index, out, task.expected_outputs, task.run_id, (*task.stats, record), trace, task.params,
            task.output,
        )
        return result, error

    def teardown(self) -> list[BaseException]:
        """Exit the stage hooks and run the step's ``teardown()``; return what they raised."""
        errors: list[BaseException] = []
        try:
            with self.sklearn_config():
                self.hooks.exit_stage()
        except BaseException as exc:
            errors.append(exc)
        try:
            call_hook(self.step, "teardown")
        except BaseException as exc:
            errors.append(exc)
        return errors


class StepFailed(Exception):
    """A step of a chain failed to load, in ``setup()`` or in its stage hooks: which one, and why."""

    def __init__(self, step: str, error: BaseException) -> None:
        super().__init__(step, error)
        self.step, self.error = step, error


class ChainRunner:
    """A worker's copies of the steps of its stage (one, or a chain), each in its own :class:`StepRunner`.

    Each minibatch goes through the steps one after another, in this
    worker's memory; each step keeps its own hooks, trace and
    :class:`~neuraxle_stream.messages.TaskRecord`. The waits on the input
    queue are the first step's, the wait for room downstream the last's.
    Creating it raises :class:`StepFailed` naming the step that failed to
    set up (the steps already set up are torn down).
    """

    def __init__(
        self, spec: StageSpec, worker_index: int, thread_limit: int | None = None, owns_thread: bool = False,
    ) -> None:
        self.spec = spec
        self.runners: list[StepRunner] = []
        for step in spec.steps:
            try:
                self.runners.append(StepRunner(step, worker_index, thread_limit, owns_thread))
            except BaseException as exc:
                self.teardown()
                raise StepFailed(step.name, exc) from exc

    def run(
        self, task: QueuedMinibatchTask, get_wait: float, put_wait: float | None,
        on_step: Callable[[int], None] | None = None,
    ) -> tuple[QueuedMinibatchTask, BaseException | None, str]:
        """Run ``task`` through every step; the task to pass on, the error if any, and the last step run.

        ``on_step(position)`` is called before each step after the first (a
        worker resets its busy clock there: ``timeout`` is per step).
        """
        runners = self.runners
        last = len(runners) - 1
        result, error = task, None
        for position, runner in enumerate(runners):
            if position and on_step is not None:
                on_step(position)
            result, error = runner.run(
                result, get_wait if position == 0 else 0.0, put_wait if position == last else None,
            )
            if error is not None:
                return result, error, runner.spec.name
        return result, None, runners[last].spec.name

    def teardown(self) -> list[tuple[str, BaseException]]:
        """Tear every step down, in order; ``(step, error)`` for each that raised."""
        return [(r.spec.name, e) for r in self.runners for e in r.teardown()]


def worker_loop(spec: StageSpec, worker_index: int, io: WorkerIO) -> None:
    """Run one worker until it is told to stop (or its runtime is aborted)."""
    report = _Reporter(spec, worker_index, io)
    io.started[worker_index] = time.monotonic()
    io.current[worker_index] = SETUP
    on_step: Callable[[int], None] | None = None
    if io.step_at is not None:
        io.step_at[worker_index] = 0

        def at_step(position: int) -> None:
            io.step_at[worker_index] = position
            io.started[worker_index] = time.monotonic()

        on_step = at_step

    try:
        runner = ChainRunner(spec, worker_index, io.thread_limit, owns_thread=True)
    except StepFailed as failed:
        report.failure(failed.error, None, io.active_run.value, "setup", step=failed.step)
        _stopped(spec, worker_index, io)
        return
    io.current[worker_index] = IDLE
    clock = time.perf_counter
    #: (run id, seconds) of this worker's last put on the next queue, not yet reported.
    last_put: tuple[int, float] | None = None
    item: Any
    task: QueuedMinibatchTask
    result: QueuedMinibatchTask
    while io.active_run.value != CLOSING:
        # Drop the last minibatch before waiting: its arrays may lease the sender's shared memory.
        item = task = result = None  # type: ignore[assignment]
        waited = clock()
        item = io.inbox.get()
        got = clock()
        if item is STOP:
            break
        task = item
        if task.run_id != io.active_run.value:
            continue  # a task of a cancelled run: drop it
        io.started[worker_index] = time.monotonic()
        if io.step_at is not None:
            io.step_at[worker_index] = 0
        io.current[worker_index] = task.index
        put_wait = last_put[1] if last_put is not None and last_put[0] == task.run_id else None
        last_put = None
        try:
            result, error, step_name = runner.run(task, got - waited, put_wait, on_step)
        except BaseException:
            io.current[worker_index] = IDLE
            raise
        # Waiting for room downstream is backpressure, not this step's time (no timeout);
        # a death while sending still names the minibatch.
        io.current[worker_index] = IDLE if error is not None else sending(task.index)
        if error is not None:
            report.failure(error, task.index, task.run_id, "transform", result.stats, result.trace, step=step_name)
            continue
        if io.done is not None:  # only this worker writes its slots: no lock
            io.done[2 * worker_index] += result.stats[-1].n_items
            io.done[2 * worker_index + 1] += 1
        try:
            if io.outbox is not None:
                before = clock()
                _put(io, io.outbox, result)
                last_put = (task.run_id, clock() - before)
            else:
                io.results.put(StageResult(spec.lane, _written(result)))
        except Exception as exc:  # the output cannot be encoded: say whose output it is
            exc.add_note(f"Raised sending the output of step {step_name!r} for minibatch {task.index}.")
            report.failure(exc, task.index, task.run_id, "transform", result.stats)  # no trace: it may be the cause
        finally:
            io.current[worker_index] = IDLE
    io.current[worker_index] = TEARDOWN
    for name, failure in runner.teardown():
        report.failure(failure, None, io.active_run.value, "teardown", step=name)
    _stopped(spec, worker_index, io)


def _written(task: QueuedMinibatchTask) -> QueuedMinibatchTask:
    """``task``, its output written in place where it carries a target (then only a note of it is sent)."""
    target = task.output
    if target is None:
        return task
    written = target.write(task.data_inputs)
    if written is None:  # not as expected: the output goes back in the message, as without a target
        return task
    return QueuedMinibatchTask(
        task.index, written, task.expected_outputs, task.run_id, task.stats, task.trace, task.params
    )


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


def _check_length(step_name: str, n_in: int, outputs: Any) -> None:
    """One output row per input row (``n_in`` of them), where the output has a length."""
    with contextlib.suppress(TypeError):  # an unsized output cannot be counted
        _containers.check_same_length(n_in, outputs, step_name)


class _Reporter:
    def __init__(self, spec: StageSpec, worker_index: int, io: WorkerIO) -> None:
        self.spec, self.worker_index, self.io = spec, worker_index, io

    def failure(
        self, exc: BaseException, index: int | None, run_id: int, phase: str,
        stats: tuple[TaskRecord, ...] = (), trace: tuple[Any, ...] = (), step: str | None = None,
    ) -> None:
        step_name = self.spec.name if step is None else step
        message = MinibatchError.capture(
            exc,
            step_name=step_name,
            worker_index=self.worker_index,
            index=index,
            run_id=run_id,
            phase=phase,
            portable=self.io.portable,
            stats=stats,
            trace=trace,
        )
        try:
            self.io.results.put(message)
        except BaseException as send_exc:  # the error itself cannot travel: describe it
            fallback = MinibatchError.capture(
                send_exc, step_name=step_name, worker_index=self.worker_index,
                index=index, run_id=run_id, phase=phase, portable=True, stats=stats,
            )
            self.io.results.put(fallback)


def process_main(spec: StageSpec, worker_index: int, io: WorkerIO) -> None:
    """Entry point of a worker process."""
    # Ctrl-C reaches the whole process group: the parent handles it and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent(io.shm_prefix)
    _forward_logs(io.results, io.log_levels)
    if io.thread_limit is not None:
        _limit_threads(io.thread_limit)
    reuse_freed_memory()
    worker_loop(spec, worker_index, io)


class _ForwardHandler(logging.Handler):
    """Sends every record to the parent as a :class:`~neuraxle_stream.messages.WorkerLog`.

    As ``logging.handlers.QueueHandler`` does, the message is formatted here
    (``args`` may not pickle) and the exception is sent as text.
    """

    def __init__(self, results: ResultChannel) -> None:
        super().__init__()
        self.results = results

    def emit(self, record: logging.LogRecord) -> None:
        try:
            record = _portable_record(record)
            self.results.put(WorkerLog(record))
        except Exception:  # a record that cannot travel: report it as logging does
            self.handleError(record)


def _portable_record(record: logging.LogRecord) -> logging.LogRecord:
    """A copy of ``record`` that pickles: message formatted, exception as text."""
    portable = logging.makeLogRecord(record.__dict__)
    portable.msg = record.getMessage()
    portable.args = None
    if record.exc_info:
        portable.exc_text = logging.Formatter().formatException(record.exc_info)
    portable.exc_info = None
    return portable


def _forward_logs(results: ResultChannel, levels: dict[str, int]) -> logging.Handler:
    """Make this worker process's records reach the parent's handlers, each exactly once.

    Handlers inherited from the parent (under ``fork``) or set by the main
    module imported again (``spawn``, ``forkserver``) would write a second
    copy of each record: they are removed. The parent's logger levels are
    applied, so that records the parent would drop are not sent.
    """
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        if isinstance(logger, logging.Logger):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
    for name, level in levels.items():
        logging.getLogger(name or None).setLevel(level)
    handler = _ForwardHandler(results)
    logging.getLogger().addHandler(handler)
    return handler


def _stop_forwarding(handler: logging.Handler) -> None:
    """The run is over: its results channel is gone (a warm worker waits for its next run)."""
    logging.getLogger().removeHandler(handler)


def _exit_with_parent(shm_prefix: str | None) -> None:
    """Exit at once when the parent process dies; see :func:`_exit_with_parent_of`."""
    _exit_with_parent_of(lambda: shm_prefix)


def _exit_with_parent_of(shm_prefix: Callable[[], str | None]) -> None:
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
        prefix = shm_prefix()  # a warm worker's changes with its run
        if prefix is not None:
            unlink_segments(prefix)
        os._exit(1)

    threading.Thread(target=watch, name="neuraxle_stream-parent-watch", daemon=True).start()


#: ``mallopt`` parameters (glibc's ``M_TRIM_THRESHOLD``, ``M_MMAP_THRESHOLD``) and the values a worker sets.
_MALLOPT = ((-1, 64 << 20), (-3, 32 << 20))


def reuse_freed_memory() -> None:
    """Make this worker process's allocator keep the memory it frees, for the next minibatch.

    By default glibc's ``malloc`` gives each freed block of 1 MiB or more back
    to the system (``munmap``, or trimming the top of its heap) and takes
    fresh pages for the next: every minibatch then faults in all of its
    arrays again, a page at a time (two 1 MiB outputs per minibatch of the
    reference workload: 512 faults). Here blocks up to 32 MiB come from the
    heap and up to 64 MiB of free heap is kept. Nothing happens on another C
    library.
    """
    mallopt = _libc.function("mallopt", "int", ("int", "int"))
    if mallopt is None:  # not glibc (musl has no mallopt), or no ctypes
        return
    for param, value in _MALLOPT:
        mallopt(param, value)


def _limit_threads(n: int) -> None:
    """Limit BLAS/OpenMP (and torch, when loaded) threads to this worker's share."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        pass
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(n))
    _limit_torch_threads(n)


def _limit_torch_threads(n: int) -> None:
    """Give torch, when this worker imported it, the same share of the cores."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
