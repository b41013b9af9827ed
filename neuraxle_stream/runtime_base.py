"""One interface for the runtimes, and the pieces they share.

A pipeline runs its stages through a *runtime*: :class:`~neuraxle_stream.runtime.Runtime`
(worker threads or processes, linked by bounded queues) or
:class:`~neuraxle_stream.ray_backend.RayRuntime` (one Ray actor per worker).
:class:`BaseRuntime` is to them what ``concurrent.futures.Executor`` is to its
two pools: the methods the estimator layer calls (``start``, ``run``,
``stop``, ``close``, the ``broken`` and ``started`` flags, a context manager),
and what both write the same way:

- run ids: every task carries the id of its run, so the tasks and results of
  a cancelled run are dropped by id (:func:`next_run_id`);
- the in-flight bound (:class:`Credits`): a minibatch takes a credit when it
  is fed and gives it back when the caller gets its output, so the queues, the
  result channel and the joiner hold a bounded number of minibatches;
- :data:`STOP_GRACE`, the time a graceful stop waits for the workers;
- the supervisor loop of a run (:meth:`BaseRuntime.run`), a list of named
  steps, each runtime supplying the verbs::

      start the workers, if not started
      begin the run ──────────────────▶ (threads/processes: start the feeder thread)
      until every fed minibatch is out:
          feed            ─────────────▶ (Ray: submit minibatches, within the credits)
          collect         ─────────────▶ block on results and dead workers; join outputs; raise failures
          check timeouts
          yield what the joiner has ready (and give its credits back)
      end the run     ────────────────▶ stop the feeder, cancel what is left

How a run ends: a step, the source or ``stop()`` fails the run with
:class:`RunFailed` (the runtime stays usable); the caller closing the
generator leaves it usable too; anything else marks it ``broken``.

A little over ~400 lines, on purpose: the runtime interface and the run
state every runtime shares (credits, joiner, the retry decision) belong
together; the runtimes only implement the verbs.
"""

from __future__ import annotations

import itertools
import queue
from abc import ABC, abstractmethod
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .joiner import WorkersJoiner
from .messages import QueuedMinibatchTask, TaskRecord
from .minibatches import Minibatch
from .retries import Attempts, FailureRecord, RetryPolicy, warn_skipped
from .stages import StageSpec

if TYPE_CHECKING:  # pragma: no cover
    from .stats import StatsCollector
    from .tracing import Assembler, TraceCall

__all__ = [
    "STOP_GRACE", "BaseRuntime", "Credits", "InFlight", "Minibatch", "RunFailed", "RunState", "minibatch_task",
    "next_run_id",
]

#: Seconds a graceful stop waits for the workers to finish (their ``teardown()`` included).
STOP_GRACE = 10.0
_run_ids = itertools.count(1)


def next_run_id() -> int:
    """A new run id, unique in this process (for every runtime of every backend)."""
    return next(_run_ids)


def minibatch_task(batch: Minibatch, index: int, run_id: int) -> QueuedMinibatchTask:
    """The task that carries minibatch ``index`` of run ``run_id`` through the stages.

    The one place where a runtime reads the minibatches it is given.
    """
    return QueuedMinibatchTask(index, batch.data, batch.targets, run_id, params=batch.params, output=batch.output)


def in_flight_bound(lanes: list[list[StageSpec]]) -> int:
    """The most minibatches a run holds at once: what the longest lane's queues and workers hold, plus one."""
    return max(sum(s.max_queue_size + s.n_workers for s in lane) for lane in lanes) + 1


class Credits:
    """The in-flight bound of a run, as credits.

    A minibatch takes a credit when it is fed (``take``, blocking for a
    feeder thread, not for a driver that feeds between waits) and gives it
    back when the caller gets its output (``give``).
    """

    def __init__(self, bound: int) -> None:
        self.bound = bound
        # A queue of tokens rather than a threading.Semaphore: its get and put are
        # C calls, where the semaphore runs Python code (and makes a lock per wait)
        # on every minibatch.
        self._free: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(bound):
            self._free.put(None)

    def take(self, blocking: bool = True) -> bool:
        """Take a credit; without ``blocking``, return ``False`` when none is free."""
        try:
            self._free.get(blocking)
        except queue.Empty:
            return False
        return True

    def give(self) -> None:
        """Give a credit back."""
        self._free.put(None)

    def release_waiters(self) -> None:
        """Wake whoever waits for a credit: the run is ending."""
        for _ in range(self.bound + 1):
            self._free.put(None)


class RunFailed(Exception):
    """A step, the source or :meth:`BaseRuntime.stop` failed the run with ``error``; the workers are healthy."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


@dataclass(frozen=True, slots=True)
class InFlight:
    """A minibatch between its feeding and its output: its original task (to run it again) and where its items are."""

    task: QueuedMinibatchTask
    first_item: int
    n_items: int


@dataclass
class RunState:
    """One run of a runtime: its id, its joiner, who gets its records, how far it got.

    With a :class:`~neuraxle_stream.retries.RetryPolicy` that may retry or
    skip, it also keeps the original task of every minibatch in flight
    (:attr:`inflight`; at most the in-flight bound of them, since each holds
    a credit), so that a failed minibatch runs again from the first stage.
    """

    run_id: int
    joiner: WorkersJoiner
    credits: Credits
    ordered: bool = True
    observer: StatsCollector | None = None
    tracer: Assembler | None = None
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    #: Whether reading the next minibatch may wait (a generator, a file, a socket): a
    #: feeder thread reads it; else the supervisor feeds between its waits.
    source_waits: bool = True
    #: Minibatches fed so far.
    fed: int = 0
    #: Minibatches in the run, known once the source is exhausted.
    total: int | None = None
    #: Minibatches whose output the caller got (or that were skipped).
    done: int = 0
    #: The minibatches in flight, by index (kept only when the policy may retry or skip).
    inflight: dict[int, InFlight] = field(default_factory=dict)
    #: ``(index, lane)`` of the outputs already joined: a late duplicate (a retried attempt) is dropped.
    delivered: set[tuple[int, int]] = field(default_factory=set)
    attempts: Attempts = field(default_factory=Attempts)
    _items_fed: int = 0
    _n_fed: int = 0

    @property
    def complete(self) -> bool:
        """Whether every minibatch of the source went through."""
        return self.total is not None and self.done >= self.total

    @property
    def keeps_inputs(self) -> bool:
        """Whether the original task of each minibatch in flight is kept (the policy may retry or skip)."""
        return self.policy.active

    def register(self, task: QueuedMinibatchTask, n_items: int) -> None:
        """Minibatch ``task`` is fed now (called before it is put on any queue)."""
        if self.keeps_inputs:
            self.inflight[task.index] = InFlight(task, self._items_fed, n_items)
        self._items_fed += n_items
        self._n_fed += 1

    def add_output(self, task: QueuedMinibatchTask, lane: int) -> None:
        """The last stage of ``lane`` is done with ``task``: join its output, pass on its records."""
        if self.keeps_inputs:
            key = (task.index, lane)
            if task.index not in self.inflight or key in self.delivered:
                return  # a late duplicate of a retried minibatch, or one already skipped
            self.delivered.add(key)
        self.joiner.add(task.index, lane, task.data_inputs)
        self.add_records(task.index, task.stats, task.trace)

    def add_records(self, index: int | None, stats: Iterable[TaskRecord], trace: tuple[TraceCall, ...]) -> None:
        """Pass the stats and trace records of minibatch ``index`` to the observer and the tracer."""
        if self.observer is not None:
            # the attempt these records are of: 1, plus the failed attempts counted before it
            attempt = 1 if index is None or not self.keeps_inputs else self.attempts.failed.get(index, 0) + 1
            self.observer.add(stats, attempt)
        if self.tracer is not None and index is not None:
            self.tracer.add(index, trace)

    def pop_ready(self) -> Iterator[tuple[int, list[Any]]]:
        """The outputs the caller may have now (in input order, or as completed), each counted as done."""
        ready = self.joiner.pop_ready() if self.ordered else self.joiner.pop_completed()
        for index, outputs in ready:
            self._forget(index)
            self.done += 1
            self.credits.give()
            if outputs is not None:  # None: skipped
                yield index, outputs

    def _forget(self, index: int) -> None:
        if self.keeps_inputs:
            self.inflight.pop(index, None)
            for lane in range(self.joiner.n_lanes):
                self.delivered.discard((index, lane))
            self.attempts.done(index)

    def undelivered_lanes(self, index: int, n_lanes: int) -> list[int]:
        """The lanes that have not yet delivered minibatch ``index``."""
        return [lane for lane in range(n_lanes) if (index, lane) not in self.delivered]

    def failed(self, step: str, index: int, error: BaseException, died: bool, stopping: bool = False) -> str:
        """Minibatch ``index`` failed in ``step`` (``died``: its worker died or timed out); decide its fate.

        Returns ``"retry"`` (it runs again), ``"skip"`` (it failed every
        attempt and is dropped: ``on_error="skip"``, within ``max_failures``),
        ``"raise"`` (it ends the run with ``error``; for a worker that died on
        each attempt, a note names the minibatch as the likely cause) or
        ``"ignore"`` (it is already out: a duplicate attempt failed). No retry
        and no skip once the run is ``stopping``.
        """
        if self.keeps_inputs and index not in self.inflight:
            return "ignore"
        n = self.attempts.fail(index, died)
        if not stopping and self.policy.retries(None if died else error, n):
            return "retry"
        if died and n > 1 and self.attempts.died_each_time(index):
            error.add_note(
                f"Minibatch {index} was running each of the {n} times a worker died: "
                "it is the likely cause (a 'poison' input)."
            )
        flight = self.inflight.get(index)
        first, n_items = (flight.first_item, flight.n_items) if flight is not None else (-1, -1)
        record = self.attempts.record(step, index, first, n_items, error)
        if self.observer is not None:
            self.observer.add_failure(record)
        if not stopping and self.policy.skips(self.attempts.skipped + 1, self._n_fed):
            self.attempts.skipped += 1
            warn_skipped(record)
            self.joiner.skip(index)
            self._forget(index)  # a late output of it is dropped
            return "skip"
        return "raise"

    @property
    def failures(self) -> tuple[FailureRecord, ...]:
        """The minibatches that were skipped or ended the run."""
        return tuple(self.attempts.records)


class BaseRuntime(ABC):
    """Starts, supervises and stops the workers of a pipeline (the interface of every backend).

    Parameters
    ----------
    lanes : list of list of StageSpec
        The stages of each lane, in order.
    timeout : float or None
        Seconds a worker may spend on one minibatch (or its ``setup``)
        before the run fails with :class:`TimeoutError`.
    """

    def __init__(self, lanes: list[list[StageSpec]], timeout: float | None = None) -> None:
        self.lanes = lanes
        self.timeout = timeout
        #: Set when a worker died, overran ``timeout`` or failed ``setup()``: the runtime must be closed.
        self.broken = False
        #: Cleared when a run of this runtime failed: its workers must not be reused by another call.
        self.reuse_workers = True
        self.started = False
        self.max_in_flight = in_flight_bound(lanes)

    # -- lifecycle -------------------------------------------------------------

    @abstractmethod
    def start(self) -> None:
        """Start every worker (and wait until each can take minibatches, where the backend can tell)."""

    @abstractmethod
    def close(self, graceful: bool = True) -> None:
        """Stop every worker; safe to call twice.

        Parameters
        ----------
        graceful : bool, default=True
            Let each worker finish its minibatch and run ``teardown()``; a
            broken runtime, or one whose graceful stop does not end within
            :data:`STOP_GRACE`, is aborted instead.

        Raises
        ------
        Exception
            The first error a ``teardown()`` raised.
        """

    @abstractmethod
    def stop(self) -> None:
        """Stop the current (or starting) run from any thread.

        The run's caller gets :class:`~neuraxle_stream.PipelineStoppedError`;
        the workers stay healthy.
        """

    def __enter__(self) -> BaseRuntime:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close(graceful=not self.broken)

    # -- one run: the supervisor loop ------------------------------------------

    def run(
        self,
        batches: Iterable[Minibatch],
        ordered: bool = True,
        observer: StatsCollector | None = None,
        tracer: Assembler | None = None,
        policy: RetryPolicy | None = None,
        source_waits: bool = True,
    ) -> Generator[tuple[int, list[Any]], None, None]:
        """Feed ``batches`` through the lanes; yield ``(index, lane_outputs)``.

        The caller must exhaust or close the generator. A step error, a source
        error, :meth:`stop` or closing the generator leave the runtime usable
        (the tasks of this run are dropped by their run id); any other failure
        (a dead or stuck worker, a failed ``setup()``, Ctrl-C) marks it
        ``broken``.

        Parameters
        ----------
        batches : iterable of tuple
            The minibatches, each ``(data, expected_outputs[, transform params])``.
        ordered : bool, default=True
            Yield in input order; ``False``: as the minibatches complete.
        observer : StatsCollector or None
            Gets the workers' stats records of each minibatch of this run.
        tracer : Assembler or None
            In a traced run, gets the trace records of each minibatch.
        policy : RetryPolicy or None
            What a failed minibatch becomes (run again, skipped, or the end
            of the run: the default).
        source_waits : bool, default=True
            Whether reading the next minibatch of ``batches`` may wait (a
            generator reading a file or a socket). ``False`` (the minibatches
            of an array or a list in memory): the supervisor feeds them
            itself, between its waits, with no thread of its own.

        Yields
        ------
        index : int
            The minibatch's sequence number.
        lane_outputs : list
            Its output from the last stage of each lane, in lane order.
        """
        self._ensure_started()
        run = RunState(next_run_id(), WorkersJoiner(n_worker_wrappers_to_join=len(self.lanes)), Credits(self.max_in_flight))
        run.ordered, run.observer, run.tracer, run.source_waits = ordered, observer, tracer, source_waits
        if policy is not None:
            run.policy = policy
        ok = False
        try:
            self._begin_run(run, iter(batches))  # inside: whatever interrupts it, _end_run cleans up
            while not run.complete:
                self._feed(run)
                self._collect(run)
                self._check_timeouts()
                yield from run.pop_ready()
            ok = True
        except RunFailed as failed:  # the steps, the source or stop(): the workers are healthy
            raise failed.error from failed.error.__cause__
        except GeneratorExit:
            raise  # closed early by the caller: the workers are healthy
        except BaseException:
            self.broken = True
            raise
        finally:
            self._end_run(run, ok)

    def _ensure_started(self) -> None:
        if not self.started:
            try:
                self.start()
            except BaseException:
                self.broken = True
                raise

    @abstractmethod
    def _begin_run(self, run: RunState, source: Iterator[Minibatch]) -> None:
        """Make ``run`` the current run, reading its minibatches from ``source``."""

    @abstractmethod
    def _feed(self, run: RunState) -> None:
        """Hand minibatches to the first stages, within the credits (a no-op where a feeder thread does it)."""

    @abstractmethod
    def _collect(self, run: RunState) -> None:
        """Block until something happens; join the outputs that came, raise the failures that came.

        Sets ``run.total`` once the source is exhausted.
        """

    @abstractmethod
    def _check_timeouts(self) -> None:
        """Raise :class:`TimeoutError` for a worker over ``timeout`` on its minibatch (or ``setup()``)."""

    @abstractmethod
    def _end_run(self, run: RunState, ok: bool) -> None:
        """The run is over (``ok``: every output went out); forget what is left of it."""
