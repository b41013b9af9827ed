"""The running form of a queued pipeline: its workers, its queues, its supervisor.

A pipeline object is a plain description; a :class:`Runtime` exists only while
a run is live (or inside ``with pipeline:``). The data flow of one lane::

    caller thread                  workers (threads or processes)
    ─────────────                  ──────────────────────────────
    feeder thread ──put──▶ [queue 0] ──get──▶ stage 0 × n0 ──put──▶ [queue 1]
                                               ...                      │
                               [queue k] ◀─────────────────────────────┘
                                   │ get
                                   ▼
                           stage k × nk ──put──▶ (result channel) ──get──▶ supervisor
                                                                             │
    any worker ──put(MinibatchError)──▶ (result channel)                     ▼
                                                              joiner (reorder by seq no)
                                                                             │
                                                                   outputs to the caller

A union has one lane per branch; the feeder puts every minibatch on the first
queue of every lane. Who puts and gets:

- queue i of a lane: put by stage i-1 (the feeder for i = 0), got by stage i;
  bounded by the stage's ``max_queue_size`` (backpressure);
- the result channel: put by the last stage of each lane, by any worker that
  fails, by worker processes forwarding their log records (``WorkerLog``), by
  the feeder when the source is exhausted, and by :meth:`Runtime.stop`; got by
  the supervisor only. The supervisor limits the minibatches in flight with
  credits, so the channel and the joiner hold a bounded number of them.

Each task also carries the stats records of the stages it went through
(``TaskRecord``: duration, queue waits); they reach the parent with the result
or the error, so stats cost no message of their own.

The supervisor (the caller's thread) blocks on the result channel *and* on
the workers' process sentinels, so a dead worker is noticed at once. Every
task carries the id of its run; tasks and results of a cancelled run are
dropped, so a pipeline reused after an error never returns stale results.

How a run ends, and what the caller gets:

- a step raises, the source raises, or the caller closes the generator: the
  run's id is retired (workers drop its tasks) and the runtime stays usable;
- a worker dies (sentinel), fails its ``setup()``, overruns ``timeout``, or
  the caller is interrupted (Ctrl-C): the runtime is *broken* and aborted.

Stopping is graceful or an abort. A graceful stop (the end of a call,
``close()``) sends STOP down each lane: every worker finishes its minibatch
and runs ``teardown()``, the last of a stage passes STOP on, and the
supervisor waits for the last stage of each lane (at most ``STOP_GRACE``).
An abort kills worker processes at once; worker threads, which cannot be
killed, get STOP on every queue and see ``active_run == CLOSING`` as soon as
their step returns. A worker process watches its parent and exits (unlinking
the run's shared memory) if the parent dies.
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .backends import Backend, WorkerHandle
from .exceptions import BrokenPipelineError, PipelineStoppedError
from .joiner import WorkersJoiner
from .messages import (
    STOP,
    MinibatchError,
    QueuedMinibatchTask,
    StageResult,
    StageStopped,
    WorkerLog,
)
from .queues import Channel, ResultChannel
from .stages import CLOSING, IDLE, IDLE_RUN, SETUP, STARTING, STOPPED, TEARDOWN, StageSpec
from .workers import WorkerIO

if TYPE_CHECKING:  # pragma: no cover
    from .stats import StatsCollector

__all__ = ["Runtime"]

#: Seconds a graceful stop waits for workers to finish before killing them.
STOP_GRACE = 10.0
#: Seconds an abort waits for worker threads (which cannot be killed) to exit.
ABORT_GRACE = 0.5
#: Seconds between two checks for the end of a run while the feeder waits on a full queue.
_FEED_CHECK = 0.05
_run_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class _FeederDone:
    """Sent by the feeder when the source is exhausted (or failed)."""

    run_id: int
    count: int
    failed: bool = False


@dataclass(frozen=True, slots=True)
class _StopRequested:
    """Put on the result channel by :meth:`Runtime.stop` to end the current run."""

    run_id: int


@dataclass
class _Stage:
    spec: StageSpec
    io: WorkerIO
    handles: list[WorkerHandle]


class _RunFailed(Exception):
    """Internal: a step or the source raised ``error``; the workers are healthy."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


class Runtime:
    """Starts, supervises and stops the workers of a pipeline.

    Parameters
    ----------
    lanes : list of list of StageSpec
        The stages of each lane, in order.
    backend : Backend
        Where the workers run.
    timeout : float or None
        Seconds a worker may spend on one minibatch (or its ``setup``)
        before the run fails with :class:`TimeoutError`.
    """

    def __init__(self, lanes: list[list[StageSpec]], backend: Backend, timeout: float | None = None) -> None:
        self.lanes = lanes
        self.backend = backend
        self.timeout = timeout
        self.broken = False
        self.started = False
        self._stages: list[_Stage] = []
        self._first_channels: list[Channel] = []
        self._channels: list[Channel] = []
        self._results: ResultChannel | None = None
        self._finalizer: weakref.finalize | None = None
        self._feeding: tuple[threading.Event, threading.Semaphore, threading.Thread] | None = None
        self._run_id = IDLE_RUN
        self._stop_pending = False
        self._done_before: dict[str, tuple[int, int]] = {}
        per_lane = [sum(s.max_queue_size + s.n_workers for s in lane) for lane in lanes]
        self.max_in_flight = max(per_lane) + 1

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Create the queues and start every worker."""
        backend = self.backend
        self._results = results = backend.result_channel()
        self._active = backend.shared_int(-1, lock=False)
        handles: list[WorkerHandle] = []
        self._finalizer = weakref.finalize(self, _kill_all, handles)
        shm_prefix = getattr(getattr(backend, "transport", None), "prefix", None)
        self.started = True
        for lane in self.lanes:
            channels = [backend.channel(spec.max_queue_size) for spec in lane]
            self._first_channels.append(channels[0])
            self._channels.extend(channels)
            for i, spec in enumerate(lane):
                last = i + 1 == len(lane)
                io = WorkerIO(
                    inbox=channels[i],
                    outbox=None if last else channels[i + 1],
                    results=results,
                    active_run=self._active,
                    stop_counter=backend.shared_int(spec.n_workers),
                    current=backend.shared_array("q", spec.n_workers),
                    started=backend.shared_array("d", spec.n_workers),
                    next_n_workers=0 if last else lane[i + 1].n_workers,
                    portable=backend.portable,
                    shm_prefix=shm_prefix,
                    done=backend.shared_array("q", 2 * spec.n_workers),
                )
                stage = _Stage(spec, io, [])
                self._stages.append(stage)
                io.done[:] = [0] * len(io.done)
                for w in range(spec.n_workers):
                    io.current[w] = STARTING
                    handle = backend.start_worker(spec, w, io)
                    stage.handles.append(handle)
                    handles.append(handle)

    def close(self, graceful: bool = True) -> None:
        """Stop every worker; safe to call twice.

        A graceful close sends STOP down each lane, so that each worker
        finishes its minibatch and runs its ``teardown()``, and raises the
        first error a teardown raised. A broken runtime, or one whose graceful
        stop does not end within :data:`STOP_GRACE`, is aborted instead.
        """
        if not self.started:
            return
        self.started = False
        self._stop_feeder()  # a run left suspended (a generator not yet closed)
        errors: list[BaseException] = []
        stopped = False
        try:
            try:
                if graceful and not self.broken:
                    stopped, errors = self._stop_workers()
            finally:  # also when Ctrl-C interrupts the graceful stop
                if not stopped:
                    self._abort()
                self._join()
        finally:
            for channel in self._channels:
                channel.close()
            self._channels.clear()
            self._first_channels.clear()
            if self._results is not None:
                self._results.close()
            if self._finalizer is not None:
                self._finalizer.detach()
        if errors:
            raise errors[0]

    def _stop_workers(self) -> tuple[bool, list[BaseException]]:
        """Send STOP down each lane and wait for the stop to reach its end.

        Returns whether every lane stopped, and the errors of teardowns (a
        ``teardown()`` that raised, a worker that died instead of stopping).
        """
        assert self._results is not None
        self._active.value = IDLE_RUN
        deadline = time.monotonic() + STOP_GRACE
        errors: list[BaseException] = []
        for lane, channel in zip(self.lanes, self._first_channels):
            for _ in range(lane[0].n_workers):
                if not channel.put(STOP, timeout=max(0.0, deadline - time.monotonic())):
                    return False, errors
        pending = set(range(len(self.lanes)))
        last_stage = {i: len(lane) - 1 for i, lane in enumerate(self.lanes)}
        watched = {
            h.sentinel: (s, w) for s in self._stages for w, h in enumerate(s.handles) if h.sentinel is not None
        }
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False, errors
            messages, fired = self._results.get_ready(min(remaining, 1.0), list(watched))
            for msg in messages:
                if isinstance(msg, StageStopped) and msg.stage == last_stage[msg.lane]:
                    pending.discard(msg.lane)
                elif isinstance(msg, MinibatchError) and msg.phase in ("setup", "teardown"):
                    errors.append(msg.to_exception())
                elif isinstance(msg, WorkerLog):
                    msg.emit()
            for sentinel in fired:
                stage, w = watched.pop(sentinel)
                if stage.io.current[w] != STOPPED:  # died instead of stopping: the stop cannot finish
                    errors.append(_death(stage, w))
                    return False, errors
        return True, errors

    def _abort(self) -> None:
        """Stop at once: kill worker processes; tell worker threads to exit."""
        self._active.value = CLOSING
        for stage in self._stages:
            for handle in stage.handles:
                handle.kill()

    def _join(self) -> None:
        aborted = self._active.value == CLOSING
        deadline = time.monotonic() + (ABORT_GRACE if aborted else STOP_GRACE)
        if aborted and not self.backend.portable:
            self._release_threads(deadline)
        for stage in self._stages:
            for handle in stage.handles:
                handle.join(timeout=max(0.0, deadline - time.monotonic()))
                if handle.is_alive() and self.backend.portable:
                    handle.kill()
                    handle.join(timeout=1.0)
        self._stages.clear()

    def _release_threads(self, deadline: float) -> None:
        """Wake the worker threads of an aborted runtime until they exit or ``deadline``.

        A thread waiting on an empty queue needs a STOP there; one that is
        busy, or has a full queue, sees CLOSING before its next get. A thread
        stuck in its step cannot be killed: it exits when the step returns.
        """
        while time.monotonic() < deadline:
            alive = [(stage, h) for stage in self._stages for h in stage.handles if h.is_alive()]
            if not alive:
                return
            for stage, _ in alive:
                stage.io.inbox.put(STOP, timeout=0)  # no room: its workers are not waiting
            alive[0][1].join(timeout=0.02)

    def _sentinels(self) -> list[Any]:
        return [h.sentinel for s in self._stages for h in s.handles if h.sentinel is not None]

    # -- one run ---------------------------------------------------------------

    def run(
        self,
        batches: Iterable[tuple[Any, Any]],
        ordered: bool = True,
        observer: StatsCollector | None = None,
        tracer: Any = None,
    ) -> Iterator[tuple[int, list[Any]]]:
        """Feed ``batches`` through the lanes; yield ``(index, lane_outputs)``.

        The caller must exhaust or close the generator. A step error, a source
        error or closing the generator leave the runtime usable (the tasks of
        this run are dropped by their run id); any other failure (a dead or
        stuck worker, a failed ``setup()``, Ctrl-C) marks it ``broken``.
        ``observer`` gets the workers' records of each minibatch of this run;
        ``tracer`` (``add(index, calls)``), in a traced run, their trace records.
        """
        if not self.started:
            try:
                self.start()
            except BaseException:
                self.broken = True
                raise
        assert self._results is not None
        results = self._results
        run_id = next(_run_ids)
        self._done_before = self._count_done()
        if observer is not None:  # the progress bars read each stage's count as it goes
            observer.live_counts = self.done_in_run
        self._active.value = run_id
        stop = threading.Event()
        credits = threading.Semaphore(self.max_in_flight)
        feeder_error: list[BaseException] = []
        feeder = threading.Thread(
            target=self._feed,
            args=(iter(batches), run_id, stop, credits, feeder_error, observer),
            name="neuraxle_stream-feeder",
            daemon=True,
        )
        feeder.start()
        self._run_id = run_id
        self._feeding = (stop, credits, feeder)
        if self._stop_pending:  # stop() came while the run was starting
            results.put(_StopRequested(run_id))
        joiner = WorkersJoiner(n_worker_wrappers_to_join=len(self.lanes))
        total: int | None = None
        done = 0
        ok = False
        try:
            while total is None or done < total:
                messages, fired = results.get_ready(self._wait_timeout(), self._sentinels())
                for msg in messages:
                    if isinstance(msg, StageResult):
                        if msg.task.run_id == run_id:
                            joiner.add(msg.task.index, msg.lane, msg.task.data_inputs)
                            if observer is not None:
                                observer.add(msg.task.stats)
                            if tracer is not None:
                                tracer.add(msg.task.index, msg.task.trace)
                    elif isinstance(msg, MinibatchError):
                        if observer is not None and msg.run_id == run_id:
                            observer.add(msg.stats)
                        if tracer is not None and msg.run_id == run_id and msg.index is not None:
                            tracer.add(msg.index, msg.trace)
                        self._on_error(msg, run_id)
                    elif isinstance(msg, WorkerLog):
                        msg.emit()
                    elif isinstance(msg, _StopRequested) and msg.run_id == run_id:
                        raise _RunFailed(PipelineStoppedError("The call was stopped by stop()."))
                    elif isinstance(msg, _FeederDone) and msg.run_id == run_id:
                        if msg.failed:
                            raise _RunFailed(feeder_error[0])
                        total = msg.count
                if fired:
                    self._on_dead_workers(run_id, fired)
                self._check_timeouts()
                ready = joiner.pop_ready() if ordered else joiner.pop_completed()
                for index, outputs in ready:
                    done += 1
                    credits.release()
                    yield index, outputs
            ok = True
        except _RunFailed as failed:
            # The steps or the source failed; the workers are healthy.
            raise failed.error from failed.error.__cause__
        except GeneratorExit:
            raise  # closed early by the caller: the workers are healthy
        except BaseException:
            self.broken = True
            raise
        finally:
            self._stop_pending = False
            if not ok and not self.broken and self.started:
                self._active.value = IDLE_RUN
            self._stop_feeder()

    def _count_done(self) -> dict[str, tuple[int, int]]:
        counts: dict[str, tuple[int, int]] = {}
        for stage in self._stages:
            done = stage.io.done
            rows, tasks = counts.get(stage.spec.name, (0, 0))
            counts[stage.spec.name] = (rows + sum(done[0::2]), tasks + sum(done[1::2]))
        return counts

    def done_in_run(self) -> dict[str, tuple[int, int]]:
        """``{step: (rows, minibatches)}`` its workers finished in the current run, so far."""
        before = self._done_before
        return {
            name: (rows - before.get(name, (0, 0))[0], tasks - before.get(name, (0, 0))[1])
            for name, (rows, tasks) in self._count_done().items()
        }

    def stop(self) -> None:
        """Stop the current (or starting) run from any thread.

        The run's caller gets :class:`~neuraxle_stream.PipelineStoppedError`
        at once; the workers stay healthy.
        """
        self._stop_pending = True
        feeding, results = self._feeding, self._results
        if feeding is not None and results is not None:
            results.put(_StopRequested(self._run_id))

    def _stop_feeder(self) -> None:
        """End the feeder of the current run, if any (it may wait on the source)."""
        if self._feeding is None:
            return
        stop, credits, feeder = self._feeding
        self._feeding = None
        stop.set()
        for _ in range(self.max_in_flight + 1):
            credits.release()
        feeder.join(timeout=1.0)

    def _on_error(self, msg: MinibatchError, run_id: int) -> None:
        if msg.phase == "transform":
            if msg.run_id != run_id:
                return  # from a cancelled run
            raise _RunFailed(msg.to_exception())
        self.broken = True
        raise msg.to_exception()

    def _on_dead_workers(self, run_id: int, fired: list[Any]) -> None:
        """A worker died: report its own error if it sent one, else BrokenPipelineError."""
        assert self._results is not None
        self.broken = True
        dead = [(s, w) for s in self._stages for w, h in enumerate(s.handles) if h.sentinel in fired]
        if not dead:
            raise BrokenPipelineError("A worker of the pipeline died; the pipeline was stopped.")
        error = _death(*dead[0])  # waits for the worker to be reaped
        drain = getattr(self._results, "drain", None)
        for msg in drain() if drain is not None else ():
            if isinstance(msg, WorkerLog):
                msg.emit()
            if isinstance(msg, MinibatchError) and (msg.phase != "transform" or msg.run_id == run_id):
                raise msg.to_exception()  # it said why, before it went
        raise error

    def _busy_workers(self) -> list[tuple[float, _Stage, int, int]]:
        """``(started, stage, worker, current)`` of each worker in a minibatch or ``setup()``."""
        busy = []
        for stage in self._stages:
            for w in range(stage.spec.n_workers):
                current = stage.io.current[w]
                if current >= 0 or current == SETUP:
                    busy.append((stage.io.started[w], stage, w, current))
        return busy

    def _wait_timeout(self) -> float | None:
        if self.timeout is None:
            return None
        oldest = min((b[0] for b in self._busy_workers()), default=time.monotonic())
        return max(0.01, oldest + self.timeout - time.monotonic())

    def _check_timeouts(self) -> None:
        """Raise ``TimeoutError`` for the worker that has been busy longest, if over time."""
        if self.timeout is None:
            return
        busy = self._busy_workers()
        if not busy:
            return
        started, stage, w, current = min(busy, key=lambda b: b[0])
        if time.monotonic() - started <= self.timeout:
            return
        self.broken = True
        where = _where(current)
        error = TimeoutError(
            f"Step {stage.spec.name!r} (worker {w}) spent more than {self.timeout} s "
            f"on {where}; the pipeline was stopped."
        )
        error.add_note(f"In the queued pipeline: step {stage.spec.name!r}, worker {w}, {where}.")
        raise error

    def _feed(
        self,
        batches: Iterator[tuple[Any, Any]],
        run_id: int,
        stop: threading.Event,
        credits: threading.Semaphore,
        error: list[BaseException],
        observer: StatsCollector | None = None,
    ) -> None:
        assert self._results is not None
        count = 0
        try:
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except BaseException as exc:
                    exc.add_note(f"Raised by the input of the queued pipeline, reading minibatch {count}.")
                    raise
                credits.acquire()
                if stop.is_set():
                    return
                # (data, expected_outputs[, transform params by step name])
                params = batch[2] if len(batch) > 2 else None
                task = QueuedMinibatchTask(count, batch[0], batch[1], run_id, params=params)
                for lane, channel in zip(self.lanes, self._first_channels):
                    waited = time.perf_counter()
                    try:
                        while not channel.put(task, timeout=_FEED_CHECK):
                            if stop.is_set():
                                return
                    except Exception as exc:
                        exc.add_note(f"Raised sending minibatch {count} to step {lane[0].name!r}.")
                        raise
                    if observer is not None:  # backpressure on the first queue
                        observer.add_feed_wait(lane[0].name, time.perf_counter() - waited)
                count += 1
        except BaseException as exc:
            error.append(exc)
        if not stop.is_set():
            self._results.put(_FeederDone(run_id, count, failed=bool(error)))


def _death(stage: _Stage, w: int) -> BrokenPipelineError:
    """The error for worker ``w`` of ``stage``, which has died."""
    handle = stage.handles[w]
    handle.join(timeout=1.0)  # its sentinel fires as it exits, a moment before it can be reaped
    current = stage.io.current[w]
    error = BrokenPipelineError(
        f"Worker {w} of step {stage.spec.name!r} {handle.describe_exit()} "
        f"{_during(current)}; the pipeline was stopped."
    )
    error.add_note(f"In the queued pipeline: step {stage.spec.name!r}, worker {w}, {_where(current)}.")
    if current == STARTING and getattr(getattr(handle, "process", None), "exitcode", None) == 1:
        error.add_note(
            "A worker process that exits with code 1 at start-up usually failed to import "
            "the main script: a script that starts process workers must do so under "
            "`if __name__ == '__main__':` (as with multiprocessing), or use backend='thread'."
        )
    return error


def _where(current: int) -> str:
    """What a worker was doing, from its ``current`` value."""
    names = {
        IDLE: "between minibatches",
        SETUP: "setup()",
        TEARDOWN: "teardown()",
        STOPPED: "after it stopped",
        STARTING: "at start-up",
    }
    return names.get(current, f"minibatch {current}")


def _during(current: int) -> str:
    """When a worker died, from its ``current`` value, for error messages."""
    if current >= 0 or current in (SETUP, TEARDOWN):
        return f"while running {_where(current)}"
    return _where(current)


def _kill_all(handles: list[WorkerHandle]) -> None:
    """Safety net when a runtime is garbage-collected or the interpreter exits."""
    for handle in handles:
        handle.kill()
