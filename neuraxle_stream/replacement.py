"""How a thread/process runtime replaces dead workers and feeds their minibatches again.

Used by the supervisor of :class:`~neuraxle_stream.runtime.Runtime` when the
run's :class:`~neuraxle_stream.retries.RetryPolicy` may retry or skip. The
functions take the runtime (typed by :class:`Replaceable`, what they read and
change of it): :func:`on_dead_workers` reports a death or calls
:func:`replace_dead`, which replaces a dead process alone
(:func:`replace_worker`) or, on threads, every worker and queue
(:func:`restart`, also called on a stall or a timeout)::

    worker dies ──▶ replace_dead ──▶ a new worker (process) or new workers and queues (threads)
                            │
                            └──▶ Refeed: every minibatch in flight, from its original input
                                   │ put when there is room (the supervisor never blocks on a put)
                                   ▼
                            [first queue of its lane] ──▶ stage 0 ...   (the run drops outputs that come twice)

:class:`DeathWatch` notices what replacing one worker cannot mend: a worker
that dies again and again before any output comes, and queues that stall
after a death (a slot of a bounded queue taken by a process killed before
it wrote; without packet pipes, a reader killed in the middle of a
message). A message is never left half written: each is one atomic write
(:mod:`~neuraxle_stream.queues`).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Protocol

from .backends import WorkerHandle
from .exceptions import BrokenPipelineError
from .feeder import Feeder, InlineFeeder
from .messages import MinibatchError, QueuedMinibatchTask, WorkerLog
from .queues import Channel, ResultChannel
from .runtime_base import RunFailed, RunState
from .stages import IDLE, STARTING, sent_minibatch
from .stopping import Stoppable, abort, join_workers, retire_channels
from .supervision import LiveStage, death, step_name

__all__ = [
    "STALL",
    "DeathWatch",
    "Refeed",
    "Replaceable",
    "on_dead_workers",
    "replace_dead",
    "replace_worker",
    "restart",
]

#: Seconds without output, after a worker died, while every worker waits, that make a stall.
STALL = 2.0


class Refeed:
    """The minibatches to feed again, each waiting for room on the first queue of its lane."""

    def __init__(self) -> None:
        self._waiting: deque[tuple[int, QueuedMinibatchTask]] = deque()

    def __bool__(self) -> bool:
        return bool(self._waiting)

    def clear(self) -> None:
        """Forget what waits (the run ended, or everything in flight is fed again)."""
        self._waiting.clear()

    def add(self, task: QueuedMinibatchTask, lanes: list[int]) -> None:
        """Feed ``task`` again to the first stage of ``lanes``."""
        self._waiting.extend((lane, task) for lane in lanes)

    def everything_in_flight(self, run: RunState, n_lanes: int) -> None:
        """Feed again every minibatch of ``run`` in flight, in order, to the lanes that have not delivered it."""
        self.clear()
        for index in sorted(run.inflight):
            self.add(run.inflight[index].task, run.undelivered_lanes(index, n_lanes))

    def put(self, firsts: list[Channel]) -> None:
        """Put what waits on the first queues, as long as there is room (never blocks)."""
        while self._waiting:
            lane, task = self._waiting[0]
            if not firsts[lane].put(task, timeout=0):
                return
            self._waiting.popleft()


class DeathWatch:
    """What the supervisor watches once a worker died: deaths without output, and stalls."""

    def __init__(self) -> None:
        #: A worker died since the last output came (the supervisor then watches for a stall).
        self.watching = False
        self._last_output = 0.0
        self._done_at_death = -1
        self._deaths_in_a_row = 0

    def output(self) -> None:
        """An output of the run came."""
        self.watching = False
        self._last_output = time.monotonic()

    def died(self, run: RunState) -> int:
        """A worker died; return how many died since the caller last got an output."""
        if run.done == self._done_at_death:
            self._deaths_in_a_row += 1
        else:
            self._done_at_death, self._deaths_in_a_row = run.done, 1
        if not self.watching:
            self.watching, self._last_output = True, time.monotonic()
        return self._deaths_in_a_row

    def wait(self, wait: float | None) -> float | None:
        """How long the supervisor may block: a quarter of :data:`STALL` at most while watching."""
        if not self.watching:
            return wait
        return STALL / 4 if wait is None else min(wait, STALL / 4)

    def stalled(self, stages: list[LiveStage], run: RunState) -> bool:
        """No output for :data:`STALL` s since a death while minibatches are in flight and every worker waits.

        Every worker waits on a queue (for input, or for room for its
        output) with nothing moving: what a death in the middle of a queue
        operation could leave (a slot of a bounded queue taken and never
        given back; on a system without packet pipes, a reader killed in the
        middle of a message). Writes cannot leave a queue stuck: each
        message is one atomic write (:mod:`~neuraxle_stream.queues`).
        """
        if not self.watching or not run.inflight or time.monotonic() - self._last_output < STALL:
            return False
        return all(_waits(stage.io.current[w]) for stage in stages for w in range(stage.spec.n_workers))

    def restarted(self) -> None:
        """Every worker and queue was replaced: watch again from now."""
        self.watching, self._last_output = True, time.monotonic()


def _waits(current: int) -> bool:
    """Whether a worker waits on a queue: for input, or for room for its output."""
    return current == IDLE or sent_minibatch(current) is not None


class Replaceable(Stoppable, Protocol):
    """What replacing workers reads and changes of a :class:`~neuraxle_stream.runtime.Runtime`.

    Its books (stages, handles, queues, progress counts, what to feed again;
    what stopping them reads, :class:`~neuraxle_stream.stopping.Stoppable`)
    and the lifecycle verbs a restart goes through. A protocol, not the
    class: the runtime imports this module, not the other way round.
    """

    _handles: list[WorkerHandle]
    _done_before: dict[str, tuple[int, int]]
    _refeed: Refeed
    _deaths: DeathWatch

    @property
    def _feeder(self) -> Feeder | InlineFeeder | None: ...

    @property
    def _stop_pending(self) -> bool: ...

    def start(self) -> None: ...

    def _count_done(self) -> dict[str, tuple[int, int]]: ...


# -- long runs: replaced workers, retried minibatches (docs/reliability.md) ------


def on_dead_workers(rt: Replaceable, run: RunState, fired: list[Any]) -> None:
    """A worker died: report its own error if it sent one, else BrokenPipelineError.

    With retries, the workers are replaced instead (:func:`replace_dead`)
    and the minibatches in flight run again.
    """
    assert rt._results is not None
    dead = [(s, w) for s in rt._stages for w, h in enumerate(s.handles) if h.sentinel in fired]
    if dead and run.policy.active and not rt._stop_pending:
        replace_dead(rt, run, dead)
        return
    rt.broken = True
    if not dead:
        raise BrokenPipelineError("A worker of the pipeline died; the pipeline was stopped.")
    error = death(*dead[0])  # waits for the worker to be reaped
    drain = getattr(rt._results, "drain", None)
    for msg in drain() if drain is not None else ():
        if isinstance(msg, WorkerLog):
            msg.emit()
        if isinstance(msg, MinibatchError) and (msg.phase != "transform" or msg.run_id == run.run_id):
            raise msg.to_exception()  # it said why, before it went
    raise error


def replace_dead(rt: Replaceable, run: RunState, dead: list[tuple[LiveStage, int]]) -> None:
    """Workers died: count an attempt for what each was running, then replace them.

    The minibatch a dead worker was running counts one failed attempt;
    when it has failed every attempt it is skipped or ends the run. A
    dead process is replaced by a new one (its step loaded through its
    saver, ``worker_arguments`` set, ``setup()`` run), and every minibatch
    in flight runs again from the first stage on its original input. Worker
    threads are replaced with their queues (:func:`restart`).
    """
    for stage, w in dead:
        deaths = rt._deaths.died(run)
        current = stage.io.current[w]
        error = death(stage, w)
        index = current if current >= 0 else sent_minibatch(current)  # running it, or sending its output
        if index is None:
            # Between minibatches, in setup() or at start-up: no minibatch to blame. A
            # worker that dies again and again before any output comes ends the run.
            if deaths > max(3, run.policy.max_retries + 1):
                rt.broken = True
                raise error
            continue
        if run.failed(step_name(stage, w), index, error, died=True) == "raise":
            rt.broken = True
            raise error
    if not rt.backend.portable:
        restart(rt, run)  # worker threads: replaced with their queues (see restart)
        return
    for stage, w in dead:
        replace_worker(rt, run, stage, w)
    # A killed worker may have held a minibatch it had taken, or an output it was
    # putting on the next queue: every minibatch in flight runs again (the run drops
    # the outputs that come twice).
    rt._refeed.everything_in_flight(run, len(rt.lanes))
    rt._refeed.put(rt._first_channels)


def replace_worker(rt: Replaceable, run: RunState, stage: LiveStage, w: int) -> None:
    """Start a new worker ``w`` of ``stage`` in place of the dead one (its step loaded again, ``setup()`` run)."""
    stage.handles[w].join(timeout=1.0)
    stage.io.current[w] = STARTING
    handle = rt.backend.start_worker(stage.spec, w, stage.io)
    stage.handles[w] = handle
    rt._handles.append(handle)
    rt._sentinel_list = None
    if run.observer is not None:
        for step in stage.spec.steps:  # a chained worker held a copy of each step
            run.observer.add_restarts(step.name)


def restart(rt: Replaceable, run: RunState) -> None:
    """Replace every worker and queue, then feed the minibatches in flight again."""
    feeder = rt._feeder
    assert feeder is not None
    counts = rt._count_done()
    abort(rt)
    join_workers(rt)  # threads stuck in a step stay behind, told to exit; their outputs go nowhere
    if rt._finalizer is not None:
        rt._finalizer.detach()
    retired: list[Channel | ResultChannel] = [*rt._channels]
    if rt._results is not None:
        retired.append(rt._results)
    rt._channels, rt._first_channels = [], []
    rt.start()
    rt._active.value = run.run_id
    # progress counts go on from where the replaced workers left them
    rt._done_before = {
        name: (before[0] - counts.get(name, (0, 0))[0], before[1] - counts.get(name, (0, 0))[1])
        for name, before in rt._done_before.items()
    }
    assert rt._results is not None
    feeder.repoint([(lane[0].name, ch) for lane, ch in zip(rt.lanes, rt._first_channels)], rt._results)
    # The feeder may still be putting on a retired queue: release its pipes at the next restart.
    retire_channels(rt)
    rt._retired = retired
    if run.observer is not None:
        for lane in rt.lanes:
            for spec in lane:
                for step in spec.steps:
                    run.observer.add_restarts(step.name, spec.n_workers)
    if feeder.count is not None:  # its end message may have gone to the retired channel
        if feeder.error is not None:
            raise RunFailed(feeder.error)
        run.total = feeder.count
    rt._refeed.everything_in_flight(run, len(rt.lanes))
    rt._refeed.put(rt._first_channels)

