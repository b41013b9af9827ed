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
queue of every lane. On threads, for an input in memory (an array, a list, a
frame), whose reading never waits, there is no feeder thread: the supervisor puts the
minibatches itself between its waits (:class:`~neuraxle_stream.feeder.InlineFeeder`),
so no thread is woken, and handed the interpreter, on every minibatch. Who
puts and gets:

- queue i of a lane: put by stage i-1 (the feeder for i = 0), got by stage i;
  bounded by the stage's ``max_queue_size`` (backpressure);
- the result channel: put by the last stage of each lane, by any worker that
  fails, by worker processes forwarding their log records (``WorkerLog``), by
  the feeder when the source is exhausted, and by :meth:`Runtime.stop`; got by
  the supervisor only. The feeder (:mod:`~neuraxle_stream.feeder`) takes a
  credit per minibatch and the supervisor gives it back when the caller gets
  the output, so the channel and the joiner hold a bounded number of them.

Each task also carries the stats records of the stages it went through
(``TaskRecord``: duration, queue waits); they reach the parent with the result
or the error, so stats cost no message of their own.

The supervisor (the caller's thread) runs the loop of
:meth:`~neuraxle_stream.runtime_base.BaseRuntime.run`, shared with the Ray
runtime; its ``collect`` step blocks on the result channel *and* on the
workers' process sentinels, so a dead worker is noticed at once
(:mod:`~neuraxle_stream.supervision` says what it was doing). Every
task carries the id of its run; tasks and results of a cancelled run are
dropped, so a pipeline reused after an error never returns stale results.

How a run ends, and what the caller gets:

- a step raises, the source raises, or the caller closes the generator: the
  run's id is retired (workers drop its tasks) and the runtime stays usable;
- a worker dies (sentinel), fails its ``setup()``, overruns ``timeout``, or
  the caller is interrupted (Ctrl-C): the runtime is *broken* and aborted.

Stopping is graceful or an abort: :meth:`Runtime.close` calls
:mod:`~neuraxle_stream.stopping` for it (``close_workers``), passing the
runtime, whose workers and queues it stops, joins and closes.

With ``max_retries`` or ``on_error="skip"`` (long runs), a failed minibatch
may run again instead (``RunState.failed`` decides): a dead worker process is
replaced alone and every minibatch in flight is fed again; worker threads, and
processes whose queues stalled, are replaced with all their queues. The
supervisor's verbs call :mod:`~neuraxle_stream.replacement` for that
(``on_dead_workers``, ``restart``), passing the runtime, whose books it changes.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .backends import Backend, WorkerHandle
from .exceptions import PipelineStoppedError
from .feeder import Feeder, FeederDone, InlineFeeder
from .messages import MinibatchError, StageResult, WorkerLog
from .queues import Channel, ResultChannel
from .replacement import DeathWatch, Refeed, on_dead_workers, restart
from .runtime_base import STOP_GRACE, BaseRuntime, Minibatch, RunFailed, RunState
from .stages import IDLE_RUN, STARTING, StageSpec
from .stopping import ABORT_GRACE, close_workers
from .supervision import LiveStage, busy_since, kill_all, overdue_worker, step_name
from .workers import WorkerIO

__all__ = ["ABORT_GRACE", "STOP_GRACE", "Runtime"]


@dataclass(frozen=True, slots=True)
class _StopRequested:
    """Put on the result channel by :meth:`Runtime.stop` to end the current run."""

    run_id: int


class Runtime(BaseRuntime):
    """Starts, supervises and stops the worker threads or processes of a pipeline.

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
        super().__init__(lanes, timeout)
        self.backend = backend
        self._stages: list[LiveStage] = []
        self._first_channels: list[Channel] = []
        self._channels: list[Channel] = []
        self._results: ResultChannel | None = None
        self._finalizer: weakref.finalize[[list[WorkerHandle]], Runtime] | None = None
        self._feeder: Feeder | InlineFeeder | None = None
        self._run_id = IDLE_RUN
        self._stop_pending = False
        self._done_before: dict[str, tuple[int, int]] = {}
        self._run: RunState | None = None
        #: Long runs (see replacement.py): what to feed again, deaths and stalls, queues replaced.
        self._refeed = Refeed()
        self._deaths = DeathWatch()
        self._retired: list[Channel | ResultChannel] = []
        self._handles: list[WorkerHandle] = []
        self._sentinel_list: list[Any] | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Create the queues and start every worker."""
        backend = self.backend
        self._results = results = backend.result_channel()
        self._active = backend.shared_int(-1, lock=False)
        handles: list[WorkerHandle] = []
        self._handles = handles
        self._sentinel_list = None
        self._finalizer = weakref.finalize(self, kill_all, handles)
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
                    step_at=backend.shared_array("q", spec.n_workers) if spec.chained else None,
                )
                stage = LiveStage(spec, io, [])
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

        Parameters
        ----------
        graceful : bool, default=True
            Stop gracefully (else abort: kill worker processes at once).

        Raises
        ------
        Exception
            The first error a ``teardown()`` raised, or
            :class:`~neuraxle_stream.BrokenPipelineError` for a worker that
            died instead of stopping.
        """
        if not self.started:
            return
        self.started = False
        self._stop_feeder()  # a run left suspended (a generator not yet closed)
        close_workers(self, graceful)

    @property
    def worker_pids(self) -> list[int]:
        """The process ids of the live worker processes (empty on threads), e.g. to test that a run survives kills."""
        pids = [getattr(getattr(h, "process", None), "pid", None) for s in self._stages for h in s.handles]
        return [pid for pid in pids if pid is not None]

    def _count_done(self) -> dict[str, tuple[int, int]]:
        counts: dict[str, tuple[int, int]] = {}
        for stage in self._stages:
            done = stage.io.done
            for step in stage.spec.steps:  # a chain's steps finish each minibatch together
                rows, tasks = counts.get(step.name, (0, 0))
                counts[step.name] = (rows + sum(done[0::2]), tasks + sum(done[1::2]))
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
        feeder, results = self._feeder, self._results
        if feeder is not None and results is not None:
            results.put(_StopRequested(self._run_id))

    # -- the verbs of the supervisor loop (BaseRuntime.run) ----------------------

    def _begin_run(self, run: RunState, source: Iterator[Minibatch]) -> None:
        """Start the run's feeder thread: it puts the minibatches on the first queue of each lane.

        On threads, a source that never waits (``run.source_waits`` false)
        gets no thread: the supervisor feeds it itself (:meth:`_feed`). On
        processes the feeder thread stays: its pickling (and spilling of a
        large message into shared memory) overlaps the supervisor's reads,
        and where a queue's pipe can fill before its bound (no packet pipes,
        see :mod:`~neuraxle_stream.queues`), a write that waits for room must
        not stop the supervisor, whose reads of the result pipe the workers
        may be waiting for before they read again (with pipes that filled,
        feeding inline hung). With packet pipes, feeding inline saved 2-7% of
        a warm W4 call: not worth a second way to feed processes.
        """
        assert self._results is not None
        self._done_before = self._count_done()
        if run.observer is not None:  # the progress bars read each stage's count as it goes
            run.observer.live_counts = self.done_in_run
        self._active.value = run.run_id
        firsts = [(lane[0].name, channel) for lane, channel in zip(self.lanes, self._first_channels)]
        self._run_id = run.run_id
        self._run = run
        self._refeed.clear()
        if not run.source_waits and not self.backend.portable:
            # threads: the feeder thread would be woken, and handed the interpreter, per minibatch
            self._feeder = InlineFeeder(source, run.run_id, firsts, run.credits, run.observer, run.register)
        else:
            feeder = Feeder(source, run.run_id, firsts, self._results, run.credits, run.observer, run.register)
            # Known before it starts: a Ctrl-C landing right after start() must still find it to stop.
            self._feeder = feeder
            feeder.start()
        if self._stop_pending:  # stop() came while the run was starting
            self._results.put(_StopRequested(run.run_id))

    def _feed(self, run: RunState) -> None:
        """Feed a source that never waits, within the credits; a feeder thread feeds any other."""
        feeder = self._feeder
        if type(feeder) is InlineFeeder and feeder.count is None:
            try:
                count = feeder.feed()
            except Exception as exc:  # the source's error, or a minibatch that cannot be sent
                raise RunFailed(exc) from None
            if count is not None:
                run.total = count

    def _collect(self, run: RunState) -> None:
        """Wait for results or dead workers; take each message; report a dead worker."""
        assert self._results is not None
        if run.complete:  # fed inline, and every output is out already: nothing to wait for
            return
        self._refeed.put(self._first_channels)
        wait = self._deaths.wait(self._wait_timeout())
        feeder = self._feeder
        if self._refeed or (type(feeder) is InlineFeeder and feeder.waiting):
            # waiting for room on a first queue (its workers may be dropping the tasks of a
            # cancelled run, which send nothing back): look again soon
            wait = 0.02 if wait is None else min(wait, 0.02)
        messages, fired = self._results.get_ready(wait, self._sentinels())
        for msg in messages:
            self._take(run, msg)
        if fired:
            on_dead_workers(self, run, fired)
        elif self._deaths.stalled(self._stages, run):
            # a process killed as it read or wrote a message left a queue stuck: replace them all
            restart(self, run)
            self._deaths.restarted()

    def _take(self, run: RunState, msg: Any) -> None:
        """One message of the result channel: an output, a failure, a log record, the end of the source, a stop."""
        if isinstance(msg, StageResult):
            if msg.task.run_id == run.run_id:
                run.add_output(msg.task, msg.lane)
                self._deaths.output()
        elif isinstance(msg, MinibatchError):
            if msg.run_id == run.run_id:
                # with retries, the trace keeps the attempt that produced the output (or ended the run)
                run.add_records(msg.index, msg.stats, () if run.policy.active else msg.trace)
            self._on_error(msg, run)
        elif isinstance(msg, WorkerLog):
            msg.emit()
        elif isinstance(msg, _StopRequested) and msg.run_id == run.run_id:
            raise RunFailed(PipelineStoppedError("The call was stopped by stop()."))
        elif isinstance(msg, FeederDone) and msg.run_id == run.run_id:
            if msg.failed:
                assert self._feeder is not None and self._feeder.error is not None
                raise RunFailed(self._feeder.error)
            run.total = msg.count

    def _check_timeouts(self) -> None:
        """Raise ``TimeoutError`` for the worker that has been busy longest, if over time.

        With retries, a minibatch that overran counts as one whose worker
        died: the workers are replaced and it runs again.
        """
        if self.timeout is None:
            return
        late = overdue_worker(self._stages, self.timeout)
        if late is None:
            return
        error, stage, w, current = late
        run = self._run
        if run is not None and run.policy.active and current >= 0:
            fate = run.failed(step_name(stage, w), current, error, died=True, stopping=self._stop_pending)
            if fate != "raise":
                restart(self, run)
                return
        self.broken = True
        raise error

    def _end_run(self, run: RunState, ok: bool) -> None:
        """Retire the run's id (its tasks still queued are dropped) and stop its feeder."""
        self._stop_pending = False
        if not ok and not self.broken and self.started:
            self._active.value = IDLE_RUN
        self._stop_feeder()
        self._run = None
        self._refeed.clear()

    def _stop_feeder(self) -> None:
        """End the feeder of the current run, if any (it may wait on the source)."""
        feeder, self._feeder = self._feeder, None
        if feeder is not None:
            feeder.stop()

    def _on_error(self, msg: MinibatchError, run: RunState) -> None:
        if msg.phase == "transform":
            if msg.run_id != run.run_id:
                return  # from a cancelled run
            error = msg.to_exception()
            if msg.index is not None and run.policy.active:
                fate = run.failed(msg.step_name, msg.index, error, died=False, stopping=self._stop_pending)
                if fate == "retry":
                    self._refeed.add(run.inflight[msg.index].task, [self._lane_of(msg.step_name)])
                    self._refeed.put(self._first_channels)
                if fate != "raise":
                    return
                if self._stop_pending:  # it would have run again: the stop is why the run ends
                    raise RunFailed(PipelineStoppedError("The call was stopped by stop()."))
                if run.tracer is not None:
                    run.tracer.add(msg.index, msg.trace)
            raise RunFailed(error)
        self.broken = True
        raise msg.to_exception()

    def _lane_of(self, step_name: str) -> int:
        # a chained step runs in its chain's stage: its minibatch runs again from the chain's first step
        return next(i for i, lane in enumerate(self.lanes) if any(t.name == step_name for s in lane for t in s.steps))

    def _sentinels(self) -> list[Any]:
        # read on every wait: made again only when workers were started, replaced or joined
        if self._sentinel_list is None:
            self._sentinel_list = [h.sentinel for s in self._stages for h in s.handles if h.sentinel is not None]
        return self._sentinel_list

    def _wait_timeout(self) -> float | None:
        if self.timeout is None:
            return None
        now = time.monotonic()
        oldest = busy_since(self._stages)
        return max(0.01, (now if oldest is None else oldest) + self.timeout - now)
