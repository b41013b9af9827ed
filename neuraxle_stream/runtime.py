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
  fails, and by the feeder when the source is exhausted; got by the supervisor
  only. The supervisor limits the minibatches in flight with credits, so the
  channel and the joiner hold a bounded number of them.

The supervisor (the caller's thread) blocks on the result channel *and* on
the workers' process sentinels, so a dead worker is noticed at once. Every
task carries the id of its run; tasks and results of a cancelled run are
dropped, so a pipeline reused after an error never returns stale results.
"""

from __future__ import annotations

import itertools
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .backends import Backend, WorkerHandle
from .exceptions import BrokenPipelineError
from .joiner import WorkersJoiner
from .messages import STOP, MinibatchError, QueuedMinibatchTask, StageResult, StageStopped
from .queues import Channel, ResultChannel
from .workers import IDLE, SETUP, StageSpec, WorkerIO

__all__ = ["Runtime"]

#: Seconds a graceful stop waits for workers to finish before killing them.
STOP_GRACE = 10.0
_run_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class _FeederDone:
    """Sent by the feeder when the source is exhausted (or failed)."""

    run_id: int
    count: int
    failed: bool = False


@dataclass
class _Stage:
    spec: StageSpec
    io: WorkerIO
    handles: list[WorkerHandle]


class _StepFailed(Exception):
    """Internal: a step raised; the runtime itself is healthy."""


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
        self._results: ResultChannel | None = None
        self._finalizer: weakref.finalize | None = None
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
        self.started = True
        for lane in self.lanes:
            channels = [backend.channel(spec.max_queue_size) for spec in lane]
            self._first_channels.append(channels[0])
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
                )
                stage = _Stage(spec, io, [])
                self._stages.append(stage)
                for w in range(spec.n_workers):
                    handle = backend.start_worker(spec, w, io)
                    stage.handles.append(handle)
                    handles.append(handle)

    def close(self, graceful: bool = True) -> None:
        """Stop every worker; safe to call twice.

        A graceful close lets each worker finish its ``teardown()`` and raises
        the first error a teardown raised; otherwise processes are killed.
        """
        if not self.started:
            return
        self.started = False
        errors: list[MinibatchError] = []
        try:
            if graceful and not (self.broken and self.backend.portable):
                errors = self._stop_workers()
        finally:
            self._kill_and_join()
            for channel in self._first_channels:
                channel.close()
            if self._results is not None:
                self._results.close()
            if self._finalizer is not None:
                self._finalizer.detach()
        if errors:
            raise errors[0].to_exception()

    def _stop_workers(self) -> list[MinibatchError]:
        """Send STOP down each lane and wait for the stop to reach its end."""
        assert self._results is not None
        self._active.value = -1
        deadline = time.monotonic() + STOP_GRACE
        errors: list[MinibatchError] = []
        for lane, channel in zip(self.lanes, self._first_channels):
            for _ in range(lane[0].n_workers):
                if not channel.put(STOP, timeout=max(0.0, deadline - time.monotonic())):
                    return errors
        pending = {lane_index for lane_index in range(len(self.lanes))}
        last_stage = {i: len(lane) - 1 for i, lane in enumerate(self.lanes)}
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            messages, fired = self._results.get_ready(min(remaining, 1.0), self._sentinels())
            for msg in messages:
                if isinstance(msg, StageStopped) and msg.stage == last_stage[msg.lane]:
                    pending.discard(msg.lane)
                elif isinstance(msg, MinibatchError) and msg.phase in ("setup", "teardown"):
                    errors.append(msg)
            if fired:
                break
        return errors

    def _kill_and_join(self) -> None:
        for stage in self._stages:
            for handle in stage.handles:
                handle.join(timeout=0.5 if self.backend.portable else 2.0)
                if handle.is_alive():
                    handle.kill()
                    handle.join(timeout=5.0)
        self._stages.clear()

    def _sentinels(self) -> list[Any]:
        return [h.sentinel for s in self._stages for h in s.handles if h.sentinel is not None]

    # -- one run ---------------------------------------------------------------

    def run(self, batches: Iterable[tuple[Any, Any]], ordered: bool = True) -> Iterator[tuple[int, list[Any]]]:
        """Feed ``batches`` through the lanes; yield ``(index, lane_outputs)``.

        The caller must exhaust or close the generator. A step error leaves the
        runtime usable; any other failure marks it ``broken``.
        """
        if not self.started:
            self.start()
        assert self._results is not None
        results = self._results
        run_id = next(_run_ids)
        self._active.value = run_id
        stop = threading.Event()
        credits = threading.Semaphore(self.max_in_flight)
        feeder_error: list[BaseException] = []
        feeder = threading.Thread(
            target=self._feed,
            args=(iter(batches), run_id, stop, credits, feeder_error),
            name="neuraxle_stream-feeder",
            daemon=True,
        )
        feeder.start()
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
                    elif isinstance(msg, MinibatchError):
                        self._on_error(msg, run_id)
                    elif isinstance(msg, _FeederDone) and msg.run_id == run_id:
                        if msg.failed:
                            raise feeder_error[0]
                        total = msg.count
                if fired:
                    self._on_dead_workers(run_id)
                self._check_timeouts()
                ready = joiner.pop_ready() if ordered else joiner.pop_completed()
                for index, outputs in ready:
                    done += 1
                    credits.release()
                    yield index, outputs
            ok = True
        except _StepFailed as failed:
            raise failed.args[0] from failed.args[0].__cause__
        except BaseException:
            if not isinstance(self._pending_step_error, BaseException):
                self.broken = True
            raise
        finally:
            self._pending_step_error = None
            if not ok:
                self._active.value = -1
            stop.set()
            for _ in range(self.max_in_flight + 1):
                credits.release()
            feeder.join(timeout=1.0)

    _pending_step_error: BaseException | None = None

    def _on_error(self, msg: MinibatchError, run_id: int) -> None:
        if msg.phase == "transform" and msg.run_id != run_id:
            return  # from a cancelled run
        exc = msg.to_exception()
        if msg.phase == "transform":
            self._pending_step_error = exc
            raise exc
        self.broken = True
        raise exc

    def _on_dead_workers(self, run_id: int) -> None:
        """A worker died: report its own error if it sent one, else BrokenPipelineError."""
        assert self._results is not None
        drain = getattr(self._results, "drain", None)
        if drain is not None:
            for msg in drain():
                if isinstance(msg, MinibatchError) and (msg.phase != "transform" or msg.run_id == run_id):
                    self.broken = True
                    raise msg.to_exception()
        self.broken = True
        for stage in self._stages:
            for w, handle in enumerate(stage.handles):
                if not handle.is_alive():
                    index = stage.io.current[w]
                    where = {IDLE: "while idle", SETUP: "during setup()"}.get(
                        index, f"while processing minibatch {index}"
                    )
                    error = BrokenPipelineError(
                        f"Worker {w} of step {stage.spec.name!r} {handle.describe_exit()} {where}; "
                        "the pipeline was stopped."
                    )
                    error.add_note(f"step {stage.spec.name!r}, worker {w}, {where.removeprefix('while ')}")
                    raise error
        raise BrokenPipelineError("A worker of the pipeline died; the pipeline was stopped.")

    def _wait_timeout(self) -> float | None:
        if self.timeout is None:
            return None
        now = time.monotonic()
        deadlines = [
            stage.io.started[w] + self.timeout
            for stage in self._stages
            for w in range(stage.spec.n_workers)
            if stage.io.current[w] != IDLE
        ]
        return max(0.01, min(deadlines, default=now + self.timeout) - now)

    def _check_timeouts(self) -> None:
        if self.timeout is None:
            return
        now = time.monotonic()
        for stage in self._stages:
            for w in range(stage.spec.n_workers):
                index = stage.io.current[w]
                if index != IDLE and now - stage.io.started[w] > self.timeout:
                    self.broken = True
                    where = "in setup()" if index == SETUP else f"on minibatch {index}"
                    error = TimeoutError(
                        f"Step {stage.spec.name!r} (worker {w}) spent more than {self.timeout} s {where}."
                    )
                    error.add_note(f"step {stage.spec.name!r}, worker {w}, {where.removeprefix('on ')}")
                    raise error

    def _feed(
        self,
        batches: Iterator[tuple[Any, Any]],
        run_id: int,
        stop: threading.Event,
        credits: threading.Semaphore,
        error: list[BaseException],
    ) -> None:
        assert self._results is not None
        count = 0
        try:
            for data, expected in batches:
                credits.acquire()
                if stop.is_set():
                    return
                task = QueuedMinibatchTask(count, data, expected, run_id)
                for lane, channel in zip(self.lanes, self._first_channels):
                    try:
                        while not channel.put(task, timeout=0.2):
                            if stop.is_set():
                                return
                    except Exception as exc:
                        exc.add_note(f"While sending minibatch {count} to step {lane[0].name!r}.")
                        raise
                count += 1
        except BaseException as exc:
            error.append(exc)
        if not stop.is_set():
            self._results.put(_FeederDone(run_id, count, failed=bool(error)))


def _kill_all(handles: list[WorkerHandle]) -> None:
    """Safety net when a runtime is garbage-collected or the interpreter exits."""
    for handle in handles:
        handle.kill()
