"""How a thread/process runtime stops its workers: a graceful stop, or an abort.

Used by :meth:`~neuraxle_stream.runtime.Runtime.close`, and by a restart
(:func:`~neuraxle_stream.replacement.restart`), which aborts and joins the
workers it replaces. The functions take the runtime (typed by
:class:`Stoppable`, what they read and change of it)::

    close_workers ──▶ stop_workers: STOP down each lane, wait for StageStopped (at most STOP_GRACE)
         │                    │ did not end in time, a worker died, or the runtime is broken
         │                    ▼
         │            abort: kill worker processes; worker threads see CLOSING
         ▼
    join_workers (threads of an abort woken by release_threads, at most ABORT_GRACE)
         │
         ▼
    warm processes back to the pool (a clean stop only); queues retired and closed; finalizer detached

A graceful stop (the end of a call, ``close()``) sends STOP down each lane:
every worker finishes its minibatch and runs ``teardown()``, the last of a
stage passes STOP on, and the supervisor waits for the last stage of each
lane (at most ``STOP_GRACE``). An abort kills worker processes at once;
worker threads, which cannot be killed, get STOP on every queue and see
``active_run == CLOSING`` as soon as their step returns. A worker process
watches its parent and exits (unlinking the run's shared memory) if the
parent dies.
"""

from __future__ import annotations

import time
import weakref
from typing import Any, Protocol

from .backends import Backend
from .messages import STOP, MinibatchError, StageStopped, WorkerLog
from .queues import Channel, ResultChannel
from .runtime_base import STOP_GRACE
from .stages import CLOSING, IDLE_RUN, STOPPED, StageSpec
from .supervision import LiveStage, death

__all__ = [
    "ABORT_GRACE",
    "STOP_GRACE",
    "Stoppable",
    "abort",
    "close_workers",
    "join_workers",
    "release_threads",
    "retire_channels",
    "stop_workers",
]

#: Seconds an abort waits for worker threads (which cannot be killed) to exit.
ABORT_GRACE = 0.5


class Stoppable(Protocol):
    """What stopping workers reads and changes of a :class:`~neuraxle_stream.runtime.Runtime`.

    Its stages and their handles, its queues (those a restart replaced
    included), the shared run id its workers read, and its finalizer. A
    protocol, not the class: the runtime imports this module, not the other
    way round.
    """

    lanes: list[list[StageSpec]]
    backend: Backend
    broken: bool
    reuse_workers: bool
    _active: Any
    _stages: list[LiveStage]
    _channels: list[Channel]
    _first_channels: list[Channel]
    _sentinel_list: list[Any] | None
    _retired: list[Channel | ResultChannel]

    @property
    def _results(self) -> ResultChannel | None: ...

    @property
    def _finalizer(self) -> weakref.finalize[..., Any] | None: ...


def close_workers(rt: Stoppable, graceful: bool) -> None:
    """Stop every worker (gracefully, else or on failure an abort), then close the queues.

    Process workers that stopped cleanly go back to the pool of warm
    workers; the first error a teardown raised is raised last.
    """
    errors: list[BaseException] = []
    stopped = False
    handles = [h for s in rt._stages for h in s.handles]
    try:
        try:
            if graceful and not rt.broken:
                stopped, errors = stop_workers(rt)
        finally:  # also when Ctrl-C interrupts the graceful stop
            if not stopped:
                abort(rt)
            join_workers(rt)
            # warm process workers go back to the pool, unless anything went wrong
            reuse = stopped and not errors and not rt.broken and rt.reuse_workers
            rt.backend.release_workers(handles, reuse)
    finally:
        retire_channels(rt)
        for channel in rt._channels:
            channel.close()
        rt._channels.clear()
        rt._first_channels.clear()
        if rt._results is not None:
            rt._results.close()
        if rt._finalizer is not None:
            rt._finalizer.detach()
    if errors:
        raise errors[0]


def stop_workers(rt: Stoppable) -> tuple[bool, list[BaseException]]:
    """Send STOP down each lane and wait for the stop to reach its end.

    Returns whether every lane stopped, and the errors of teardowns (a
    ``teardown()`` that raised, a worker that died instead of stopping).
    """
    assert rt._results is not None
    rt._active.value = IDLE_RUN
    deadline = time.monotonic() + STOP_GRACE
    errors: list[BaseException] = []
    for lane, channel in zip(rt.lanes, rt._first_channels):
        for _ in range(lane[0].n_workers):
            if not channel.put(STOP, timeout=max(0.0, deadline - time.monotonic())):
                return False, errors
    pending = set(range(len(rt.lanes)))
    last_stage = {i: len(lane) - 1 for i, lane in enumerate(rt.lanes)}
    watched = {h.sentinel: (s, w) for s in rt._stages for w, h in enumerate(s.handles) if h.sentinel is not None}
    while pending:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False, errors
        messages, fired = rt._results.get_ready(min(remaining, 1.0), list(watched))
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
                errors.append(death(stage, w))
                return False, errors
    return True, errors


def abort(rt: Stoppable) -> None:
    """Stop at once: kill worker processes; tell worker threads to exit."""
    rt._active.value = CLOSING
    for stage in rt._stages:
        for handle in stage.handles:
            handle.kill()


def join_workers(rt: Stoppable) -> None:
    """Wait for every worker to exit (at most ``ABORT_GRACE`` after an abort, else ``STOP_GRACE``), then forget them.

    A worker process still alive then is killed; a worker thread stuck in
    its step stays behind, told to exit.
    """
    aborted = rt._active.value == CLOSING
    deadline = time.monotonic() + (ABORT_GRACE if aborted else STOP_GRACE)
    if aborted and not rt.backend.portable:
        release_threads(rt, deadline)
    for stage in rt._stages:
        for handle in stage.handles:
            handle.join(timeout=max(0.0, deadline - time.monotonic()))
            if handle.is_alive() and rt.backend.portable:
                handle.kill()
                handle.join(timeout=1.0)
    rt._stages.clear()
    rt._sentinel_list = None


def release_threads(rt: Stoppable, deadline: float) -> None:
    """Wake the worker threads of an aborted runtime until they exit or ``deadline``.

    A thread waiting on an empty queue needs a STOP there; one that is
    busy, or has a full queue, sees CLOSING before its next get. A thread
    stuck in its step cannot be killed: it exits when the step returns.
    """
    while time.monotonic() < deadline:
        alive = [(stage, h) for stage in rt._stages for h in stage.handles if h.is_alive()]
        if not alive:
            return
        for stage, _ in alive:
            stage.io.inbox.put(STOP, timeout=0)  # no room: its workers are not waiting
        alive[0][1].join(timeout=0.02)


def retire_channels(rt: Stoppable) -> None:
    """Retire the queues a restart replaced (at the next restart, or when the runtime closes)."""
    for channel in rt._retired:
        channel.retire()
    rt._retired = []
