"""The feeder: the thread that puts a run's minibatches on the first queue of each lane.

Used by :class:`~neuraxle_stream.runtime.Runtime` (threads and processes)::

    source ──next()──▶ feeder thread ──put(task)──▶ [queue 0 of each lane] ──▶ stage 0 ...
                           │
                           └── put(FeederDone) ──▶ (result channel) ──▶ supervisor

The feeder takes a credit (the run's in-flight bound) before each minibatch,
so a full pipeline stops it before it reads more of the source; while a
first queue is full it checks every ``_FEED_CHECK`` seconds whether the run
is over. When the source is exhausted (or raised) it tells the supervisor
with :class:`FeederDone`, which carries the number of minibatches fed. The
source's error is kept in :attr:`Feeder.error`, with a note naming the
minibatch, for the supervisor to raise in the caller's thread.

An input in memory (an array, a list, a frame) never makes its reader wait:
on threads, :class:`InlineFeeder` feeds it from the supervisor's thread, between its
waits, within the same credits, and no thread is woken per minibatch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import _containers
from .messages import QueuedMinibatchTask
from .queues import Channel, ResultChannel
from .runtime_base import Credits, Minibatch, minibatch_task

if TYPE_CHECKING:  # pragma: no cover
    from .stats import StatsCollector

__all__ = ["Feeder", "FeederDone", "InlineFeeder"]

#: Seconds between two checks for the end of a run while the feeder waits on a full queue.
_FEED_CHECK = 0.05


@dataclass(frozen=True, slots=True)
class FeederDone:
    """Sent by the feeder when the source is exhausted (or failed)."""

    run_id: int
    count: int
    failed: bool = False


class _Feeding:
    """What both feeders hold: the run's source, first queues, credits and books."""

    def __init__(
        self,
        source: Iterator[Minibatch],
        run_id: int,
        firsts: list[tuple[str, Channel]],
        credits: Credits,
        observer: StatsCollector | None,
        on_task: Callable[[QueuedMinibatchTask, int], None] | None,
    ) -> None:
        self.source = source
        self.run_id = run_id
        self.firsts = firsts
        self.credits = credits
        self.observer = observer
        self.on_task = on_task
        #: Minibatches fed, once the source is exhausted (or failed); ``None`` before.
        self.count: int | None = None
        #: What the source raised (or a put), once the feeding failed.
        self.error: BaseException | None = None

    def _task(self, batch: Minibatch, index: int) -> QueuedMinibatchTask:
        """Minibatch ``index`` as the task the stages get, handed to ``on_task`` first."""
        task = minibatch_task(batch, index, self.run_id)
        if self.on_task is not None:
            self.on_task(task, batch.rows or _rows(batch.data))
        return task


class Feeder(_Feeding):
    """Feeds the minibatches of run ``run_id`` from ``source`` to ``firsts``, in a thread of its own.

    Parameters
    ----------
    source : iterator of tuple
        The run's minibatches.
    run_id : int
        The id every task of the run carries.
    firsts : list of (str, Channel)
        The name of the first step of each lane, and its queue.
    results : ResultChannel
        Where :class:`FeederDone` goes.
    credits : Credits
        The run's in-flight bound.
    observer : StatsCollector or None
        Gets the time each put waited on a full first queue (the backpressure).
    on_task : callable or None
        Called with each task and its number of rows before the task is put
        on any queue (the run keeps it, to run it again if it fails).

    After its runtime replaced its workers and queues, :meth:`repoint`
    gives the feeder the new first queues and result channel; a put that
    failed on a retired queue is tried again on its replacement.
    """

    def __init__(
        self,
        source: Iterator[Minibatch],
        run_id: int,
        firsts: list[tuple[str, Channel]],
        results: ResultChannel,
        credits: Credits,
        observer: StatsCollector | None = None,
        on_task: Callable[[QueuedMinibatchTask, int], None] | None = None,
    ) -> None:
        super().__init__(source, run_id, firsts, credits, observer, on_task)
        self.results = results
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, name="neuraxle_stream-feeder", daemon=True)

    def start(self) -> None:
        """Start feeding."""
        self._thread.start()

    def repoint(self, firsts: list[tuple[str, Channel]], results: ResultChannel) -> None:
        """Feed the new first queues and report to the new result channel (the old ones are retired)."""
        self.firsts, self.results = firsts, results

    def stop(self) -> None:
        """End the feeding (it may be waiting on the source, a credit or a full queue); safe twice."""
        self._stop.set()
        self.credits.release_waiters()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=1.0)

    def _feed(self) -> None:
        count = 0
        source, credits, stop = self.source, self.credits, self._stop
        lanes = range(len(self.firsts))
        try:
            while True:
                try:
                    batch = next(source)
                except StopIteration:
                    break
                except BaseException as exc:
                    exc.add_note(f"Raised by the input of the queued pipeline, reading minibatch {count}.")
                    raise
                credits.take()
                if stop.is_set():
                    return
                task = self._task(batch, count)
                for lane in lanes:
                    if not self._put(lane, task):
                        return
                count += 1
        except BaseException as exc:
            self.error = exc
        self.count = count
        if not stop.is_set():
            self.results.put(FeederDone(self.run_id, count, failed=self.error is not None))

    def _put(self, lane: int, task: QueuedMinibatchTask) -> bool:
        """Put ``task`` on the first queue of ``lane``; ``False`` if the run ended meanwhile."""
        waited = time.perf_counter()
        while True:
            name, channel = self.firsts[lane]
            try:
                if channel.put(task, timeout=_FEED_CHECK):
                    break
            except Exception as exc:
                if self.firsts[lane][1] is not channel:
                    continue  # the queue was retired while we put: the run keeps the task and feeds it again
                exc.add_note(f"Raised sending minibatch {task.index} to step {name!r}.")
                raise
            if self._stop.is_set():
                return False
        if self.observer is not None:  # backpressure on the first queue
            self.observer.add_feed_wait(name, time.perf_counter() - waited)
        return True


def _rows(data: object) -> int:
    try:
        return _containers.num_rows(data)
    except TypeError:
        return 1


class InlineFeeder(_Feeding):
    """Feeds the minibatches of run ``run_id`` from the supervisor's own thread, between its waits.

    For a source whose reading never waits (the minibatches of an array,
    a list or a frame in memory): no feeder thread, so no thread to wake
    and hand the interpreter to on every minibatch (on threads, that
    handover was most of the per-minibatch cost). :meth:`feed` puts as many
    minibatches as the credits and the first queues' room allow, and never
    blocks; a minibatch that finds a first queue full waits, with its
    credit, for the next call. The parameters and :attr:`count`,
    :attr:`error`, :meth:`repoint` and :meth:`stop` are :class:`Feeder`'s;
    the source's errors, and a minibatch that cannot be sent, are raised by
    :meth:`feed` with the same notes.
    """

    def __init__(
        self,
        source: Iterator[Minibatch],
        run_id: int,
        firsts: list[tuple[str, Channel]],
        credits: Credits,
        observer: StatsCollector | None = None,
        on_task: Callable[[QueuedMinibatchTask, int], None] | None = None,
    ) -> None:
        super().__init__(source, run_id, firsts, credits, observer, on_task)
        self._fed = 0
        #: A minibatch not yet on the first queue of every lane: the task, the lanes left, since when.
        self._pending: tuple[QueuedMinibatchTask, list[int], float] | None = None

    def repoint(self, firsts: list[tuple[str, Channel]], results: ResultChannel | None = None) -> None:
        """Feed the new first queues (the old ones are retired)."""
        self.firsts = firsts

    def stop(self) -> None:
        """Nothing runs on its own: nothing to stop."""

    @property
    def waiting(self) -> bool:
        """Whether a minibatch waits for room on a first queue (the supervisor must look again soon)."""
        return self._pending is not None

    def feed(self) -> int | None:
        """Feed what the credits and the first queues' room allow; the count once the source is exhausted."""
        if self._pending is not None and not self._put_pending():
            return None
        credits, source = self.credits, self.source
        while self.count is None:
            if not credits.take(blocking=False):
                return None
            try:
                batch = next(source)
            except StopIteration:
                credits.give()
                self.count = self._fed
                break
            except BaseException as exc:
                credits.give()
                exc.add_note(f"Raised by the input of the queued pipeline, reading minibatch {self._fed}.")
                raise
            task = self._task(batch, self._fed)
            self._fed += 1
            self._pending = (task, list(range(len(self.firsts))), 0.0)
            if not self._put_pending():
                return None
        return self.count

    def _put_pending(self) -> bool:
        """Put the pending minibatch on the first queues it is not on yet; ``False`` if one is full."""
        assert self._pending is not None
        task, lanes, since = self._pending
        while lanes:
            name, channel = self.firsts[lanes[0]]
            try:
                if not channel.put(task, timeout=0):
                    if not since:  # backpressure: how long it waits, for the stats
                        self._pending = (task, lanes, time.perf_counter())
                    return False
            except Exception as exc:
                exc.add_note(f"Raised sending minibatch {task.index} to step {name!r}.")
                raise
            if self.observer is not None:
                self.observer.add_feed_wait(name, time.perf_counter() - since if since else 0.0)
            lanes.pop(0)
        self._pending = None
        return True
