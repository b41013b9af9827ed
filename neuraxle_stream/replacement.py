"""What a thread/process runtime keeps to replace dead workers and feed their minibatches again.

Used by the supervisor of :class:`~neuraxle_stream.runtime.Runtime` when the
run's :class:`~neuraxle_stream.retries.RetryPolicy` may retry or skip::

    worker dies ──▶ Runtime._replace_dead ──▶ a new worker (process) or new workers and queues (threads)
                            │
                            └──▶ Refeed: every minibatch in flight, from its original input
                                   │ put when there is room (the supervisor never blocks on a put)
                                   ▼
                            [first queue of its lane] ──▶ stage 0 ...   (the run drops outputs that come twice)

:class:`DeathWatch` notices what replacing one worker cannot mend: a worker
that dies again and again before any output comes, and queues that stall
after a death (a process killed in the instant it read or wrote a message).
"""

from __future__ import annotations

import time
from collections import deque

from .messages import QueuedMinibatchTask
from .queues import Channel
from .runtime_base import RunState
from .stages import IDLE
from .supervision import LiveStage

__all__ = ["STALL", "DeathWatch", "Refeed"]

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
        """No output for :data:`STALL` s since a death while minibatches are in flight and every worker waits."""
        if not self.watching or not run.inflight or time.monotonic() - self._last_output < STALL:
            return False
        return all(stage.io.current[w] == IDLE for stage in stages for w in range(stage.spec.n_workers))

    def restarted(self) -> None:
        """Every worker and queue was replaced: watch again from now."""
        self.watching, self._last_output = True, time.monotonic()
