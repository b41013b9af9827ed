"""The Ray backend: one Ray actor per worker; minibatches move as object refs.

``backend="ray"`` runs each worker of each stage as a Ray actor, created from
the saved step (savers apply), anywhere in the user's cluster. The driver (the
caller's thread) schedules; the data go from actor to actor through Ray's
object store and reach the driver only at the end of a lane::

    driver (caller's thread)                      Ray actors (any node)
    ────────────────────────                      ─────────────────────
    source ──ray.put(task)──▶ stage 0 actor.run(ref) ──▶ (status ref, task ref)
                                                                      │ task ref
                              stage 1 actor.run(ref) ◀────────────────┘
                                   ...                  (the driver passes refs,
    ray.wait(status refs) ◀── statuses: None, or the    not data, from stage to stage)
            │                 MinibatchError, + log records
            ▼
    ray.get(task refs of the last stage) ──▶ joiner (reorder by seq no) ──▶ caller

Backpressure: the run holds at most ``max_in_flight`` minibatches (as the
other backends: the stages' queue bounds plus their workers, plus one); each
stage has at most ``n_workers + max_queue_size`` calls submitted to its actors,
and a minibatch done with stage ``i`` waits, as a ref, for room in stage
``i + 1``. Each call goes to the actor of its stage with the fewest calls
queued, so one slow minibatch does not hold the others back.

Each actor runs its minibatches through the same
:class:`~neuraxle_stream.workers.StepRunner` as thread and process workers, so
hooks, stats records and tracing behave the same; its ``logging`` records
come back with each status and are handed to the driver's handlers, once.

Failures: a step's exception comes back as a ``MinibatchError`` status (the
original type, the remote traceback as ``__cause__``, a note naming the step,
the worker and the minibatch) and the actors stay usable; an actor that dies
raises :class:`~neuraxle_stream.BrokenPipelineError` naming its step. Actors
are killed at the end of a call (or when ``with pipeline:`` ends), and at once
on a broken run.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import math
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .exceptions import BrokenPipelineError, PipelineStoppedError
from .joiner import WorkersJoiner
from .messages import QueuedMinibatchTask, WorkerLog
from .ray_actors import (
    DRIVER_CPUS,
    StageActor,
    actor_options,
    check_ray_options,
    connect,
    import_ray,
)
from .runtime import _RunFailed  # a step or the source failed; the workers are healthy
from .stages import StageSpec
from .workers import _parent_log_levels

if TYPE_CHECKING:  # pragma: no cover
    from .stats import StatsCollector

__all__ = ["DRIVER_CPUS", "PLACEMENT_TIMEOUT", "RayRuntime", "actor_options", "check_ray_options", "connect"]

#: Seconds a graceful close waits for the actors' ``teardown()``.
STOP_GRACE = 10.0
#: Seconds the actors of a run may take to be placed (their processes started); ``setup()`` is bounded by ``timeout``.
PLACEMENT_TIMEOUT = 120.0
#: Seconds :meth:`RayRuntime.close` waits for killed actors to be gone.
KILL_GRACE = 5.0
#: Seconds between two checks for :meth:`RayRuntime.stop` while the driver waits on the actors.
_WAIT_CHECK = 0.2
_run_ids = itertools.count(1)


@dataclass
class _Actor:
    stage: _Stage
    worker: int
    handle: Any
    #: The calls submitted and not yet seen done, oldest first.
    calls: collections.deque[_Call] = field(default_factory=collections.deque)
    #: When the oldest call began (the previous one ended): its timeout counts from here.
    head_since: float = 0.0


@dataclass
class _Stage:
    spec: StageSpec
    last: bool
    actors: list[_Actor] = field(default_factory=list)
    #: Minibatches done with the stage before, as (index, task ref), waiting for room here.
    waiting: collections.deque[tuple[int, Any]] = field(default_factory=collections.deque)

    @property
    def capacity(self) -> int:
        return self.spec.n_workers + self.spec.max_queue_size

    def in_flight(self) -> int:
        return sum(len(a.calls) for a in self.actors)


@dataclass(eq=False)
class _Call:
    index: int
    actor: _Actor
    status: Any
    task: Any


class RayRuntime:
    """Starts, drives and stops the Ray actors of a pipeline (the ``Runtime`` of ``backend="ray"``).

    Parameters
    ----------
    lanes : list of list of StageSpec
        The stages of each lane, in order.
    timeout : float or None
        Seconds an actor may spend on one minibatch, or the actors of a run
        on being placed and running ``setup()``; ``None``: minibatches are not
        bounded and placement is bounded by :data:`PLACEMENT_TIMEOUT`.
    ray_options : dict or None
        Ray actor options by step name (see :func:`actor_options`).
    address : str or None
        The cluster to connect to when Ray is not initialised yet.
    """

    def __init__(
        self,
        lanes: list[list[StageSpec]],
        timeout: float | None = None,
        ray_options: dict[str, dict[str, Any]] | None = None,
        address: str | None = None,
    ) -> None:
        self.lanes = lanes
        self.timeout = timeout
        self.ray_options = ray_options
        self.address = address
        self.broken = False
        self.started = False
        self._stages: list[list[_Stage]] = []
        self._stop_requested = threading.Event()
        per_lane = [sum(s.max_queue_size + s.n_workers for s in lane) for lane in lanes]
        self.max_in_flight = max(per_lane) + 1
        #: Seconds ``ray.init`` took when this runtime started Ray (0 when Ray was running).
        self.connect_seconds = 0.0

    @property
    def actors(self) -> list[Any]:
        """The Ray actor handles of the live workers."""
        return [a.handle for lane in self._stages for stage in lane for a in stage.actors]

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Connect to Ray, create one actor per worker and wait until each has run ``setup()``."""
        began = time.perf_counter()
        was_running = import_ray().is_initialized()
        ray = connect(self.address)
        if not was_running:
            self.connect_seconds = time.perf_counter() - began
        options = actor_options(self.lanes, self.ray_options, ray.cluster_resources())
        remote = ray.remote(StageActor)
        levels = _parent_log_levels()
        self.started = True
        for lane in self.lanes:
            stages = []
            for i, spec in enumerate(lane):
                stage = _Stage(spec, last=i + 1 == len(lane))
                opts = {**options[spec.name], "max_restarts": 0, "max_task_retries": 0}
                for w in range(spec.n_workers):
                    handle = remote.options(**opts).remote(spec, w, levels)
                    stage.actors.append(_Actor(stage, w, handle))
                stages.append(stage)
            self._stages.append(stages)
        self._wait_ready(ray)

    def _wait_ready(self, ray: Any) -> None:
        """Wait until every actor is placed, then for every actor's ``setup()``; raise what fails.

        Placing actors (starting their processes) is bounded by
        :data:`PLACEMENT_TIMEOUT`; ``setup()`` by ``timeout``, as on the other backends.
        """
        actors = [a for lane in self._stages for s in lane for a in s.actors]
        self._wait_all(ray, {a.handle.ping.remote(): a for a in actors}, PLACEMENT_TIMEOUT, "placed")
        self._wait_all(ray, {a.handle.setup.remote(): a for a in actors}, self.timeout, "setup()")

    def _wait_all(self, ray: Any, pending: dict[Any, _Actor], limit: float | None, what: str) -> None:
        deadline = None if limit is None else time.monotonic() + limit
        while pending:
            remaining = _WAIT_CHECK if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                self.broken = True
                actor = next(iter(pending.values()))
                name = actor.stage.spec.name
                if what == "placed":
                    message = (
                        f"Worker {actor.worker} of step {name!r} (a Ray actor) was not placed within "
                        f"{limit:g} s; the pipeline was stopped. The cluster has "
                        f"{ray.available_resources()} available; check the step's ray_options."
                    )
                    error: BaseException = BrokenPipelineError(message)
                else:
                    error = TimeoutError(
                        f"Step {name!r} (worker {actor.worker}) spent more than {limit} s on setup(); "
                        "the pipeline was stopped."
                    )
                during = "start-up" if what == "placed" else "setup()"
                error.add_note(f"In the queued pipeline: step {name!r}, worker {actor.worker}, {during}.")
                raise error
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=min(remaining, _WAIT_CHECK))
            for ref in ready:
                actor = pending.pop(ref)
                try:
                    reply = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    self.broken = True
                    raise _actor_died(actor, "setup()" if what == "setup()" else "start-up", exc) from None
                if what == "setup()":
                    failure, logs = reply
                    _emit(logs)
                    if failure is not None:
                        self.broken = True
                        raise failure.to_exception()

    def close(self, graceful: bool = True) -> None:
        """Run each actor's ``teardown()`` (when ``graceful`` and not broken), then kill the actors; safe twice."""
        if not self.started:
            return
        self.started = False
        ray = import_ray()
        errors: list[BaseException] = []
        try:
            if graceful and not self.broken and ray.is_initialized():
                errors = self._teardown(ray)
        finally:
            if ray.is_initialized():
                handles = self.actors
                for handle in handles:
                    with contextlib.suppress(Exception):  # already dead, or Ray is going down
                        ray.kill(handle, no_restart=True)
                _wait_dead(ray, handles, KILL_GRACE)
            self._stages.clear()
        if errors:
            raise errors[0]

    def _teardown(self, ray: Any) -> list[BaseException]:
        refs = {a.handle.teardown.remote(): a for lane in self._stages for s in lane for a in s.actors}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=STOP_GRACE)
        errors: list[BaseException] = []
        for ref in ready:
            try:
                failures, logs = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                errors.append(_actor_died(refs[ref], "teardown()", exc))
                continue
            _emit(logs)
            errors.extend(f.to_exception() for f in failures)
        return errors

    def stop(self) -> None:
        """Stop the current run from any thread: its caller gets :class:`~neuraxle_stream.PipelineStoppedError`."""
        self._stop_requested.set()

    # -- one run ---------------------------------------------------------------

    def run(
        self,
        batches: Iterable[tuple[Any, ...]],
        ordered: bool = True,
        observer: StatsCollector | None = None,
        tracer: Any = None,
    ) -> Iterator[tuple[int, list[Any]]]:
        """Feed ``batches`` through the lanes; yield ``(index, lane_outputs)``, as ``Runtime.run``."""
        if not self.started:
            try:
                self.start()
            except BaseException:
                self.broken = True
                raise
        ray = import_ray()
        run_id = next(_run_ids)
        source = iter(batches)
        joiner = WorkersJoiner(n_worker_wrappers_to_join=len(self.lanes))
        calls: dict[Any, _Call] = {}  # by status ref
        credits = self.max_in_flight
        fed = done = 0
        exhausted = False
        ok = False
        try:
            while not exhausted or done < fed:
                if self._stop_requested.is_set():
                    raise _RunFailed(PipelineStoppedError("The call was stopped by stop()."))
                while credits > 0 and not exhausted:
                    batch = _next_batch(source, fed)
                    if batch is None:
                        exhausted = True
                        break
                    params = batch[2] if len(batch) > 2 else None
                    ref = ray.put(QueuedMinibatchTask(fed, batch[0], batch[1], run_id, params=params))
                    for lane in self._stages:
                        lane[0].waiting.append((fed, ref))
                        if observer is not None:  # for the timeline: it entered the first "queue" now
                            observer.add_feed_wait(lane[0].spec.name, 0.0)
                    fed += 1
                    credits -= 1
                self._dispatch(calls)
                if not calls:
                    continue
                ready, _ = ray.wait(list(calls), num_returns=1, timeout=self._wait_timeout())
                if ready:  # take every call done by now, not only the first
                    ready, _ = ray.wait(list(calls), num_returns=len(calls), timeout=0)
                finished = [calls.pop(ref) for ref in ready]
                for call in finished:
                    self._finish(ray, call, joiner, observer, tracer, run_id)
                self._check_timeouts()
                for index, outputs in joiner.pop_ready() if ordered else joiner.pop_completed():
                    done += 1
                    credits += 1
                    yield index, outputs
            ok = True
        except _RunFailed as failed:
            raise failed.error from failed.error.__cause__
        except GeneratorExit:
            raise
        except BaseException:
            self.broken = True
            raise
        finally:
            self._stop_requested.clear()
            if not ok:
                self._forget(ray, calls)

    def _dispatch(self, calls: dict[Any, _Call]) -> None:
        """Submit waiting minibatches to the actor of their stage with the fewest calls, while there is room."""
        now = time.monotonic()
        for lane in self._stages:
            for stage in lane:
                per_actor = math.ceil(stage.capacity / stage.spec.n_workers)
                while stage.waiting and stage.in_flight() < stage.capacity:
                    actor = min(stage.actors, key=lambda a: len(a.calls))
                    if len(actor.calls) >= per_actor:
                        break
                    index, ref = stage.waiting.popleft()
                    status, task = actor.handle.run.options(num_returns=2).remote(ref)
                    if not actor.calls:
                        actor.head_since = now
                    call = _Call(index, actor, status, task)
                    actor.calls.append(call)
                    calls[status] = call

    def _finish(
        self, ray: Any, call: _Call, joiner: WorkersJoiner, observer: StatsCollector | None, tracer: Any, run_id: int
    ) -> None:
        """Take one finished call: pass its output on, join it, or raise its error."""
        actor = call.actor
        actor.calls.remove(call)
        actor.head_since = time.monotonic()
        stage = actor.stage
        failure, logs = self._get(ray, call.status, call)
        _emit(logs)
        if failure is not None:
            if observer is not None:
                observer.add(failure.stats)
            if tracer is not None:
                tracer.add(call.index, failure.trace)
            raise _RunFailed(failure.to_exception())
        if not stage.last:
            lane = self._stages[stage.spec.lane]
            lane[stage.spec.index + 1].waiting.append((call.index, call.task))
            return
        result: QueuedMinibatchTask = self._get(ray, call.task, call)
        joiner.add(result.index, stage.spec.lane, result.data_inputs)
        if observer is not None:
            observer.add(result.stats)
        if tracer is not None:
            tracer.add(result.index, result.trace)

    def _get(self, ray: Any, ref: Any, call: _Call) -> Any:
        """``ray.get(ref)`` of ``call``, its failures told in the pipeline's terms.

        The actor died: :class:`~neuraxle_stream.BrokenPipelineError`. Ray
        raised in the actor (an output that cannot be serialised, by this
        stage or, passed on as this call's argument, an earlier one): the
        original exception, with a note naming the step. Any other Ray error
        (an object lost with its node): ``BrokenPipelineError``.
        """
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            self.broken = True
            raise _actor_died(call.actor, f"minibatch {call.index}", exc) from None
        except ray.exceptions.RayTaskError as exc:
            error = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
            name = self._actor_of(exc, call.actor).stage.spec.name
            error.add_note(f"Raised sending the output of step {name!r} for minibatch {call.index}.")
            raise _RunFailed(error) from None
        except ray.exceptions.RayError as exc:
            self.broken = True
            name = call.actor.stage.spec.name
            error = BrokenPipelineError(
                f"Ray lost the data of minibatch {call.index} at step {name!r}; the pipeline was stopped. "
                f"Ray says: {_first_line(exc)}"
            )
            error.add_note(f"In the queued pipeline: step {name!r}, worker {call.actor.worker}, minibatch {call.index}.")
            raise error from None

    def _actor_of(self, exc: BaseException, default: _Actor) -> _Actor:
        """The actor a Ray error comes from (by its actor id), else ``default``."""
        actor_id = getattr(exc, "actor_id", None)
        if isinstance(actor_id, bytes):
            actor_id = actor_id.hex()
        if not actor_id:  # Ray does not always set it; its message names the actors, the origin last
            found = re.findall(r"actor_id=([0-9a-f]+)", str(exc))
            actor_id = found[-1] if found else None
        for lane in self._stages:
            for stage in lane:
                for actor in stage.actors:
                    with contextlib.suppress(Exception):
                        if actor.handle._actor_id.hex() == actor_id:
                            return actor
        return default

    def _wait_timeout(self) -> float:
        if self.timeout is None:
            return _WAIT_CHECK
        heads = [a.head_since for lane in self._stages for s in lane for a in s.actors if a.calls]
        if not heads:
            return _WAIT_CHECK
        return max(0.01, min(_WAIT_CHECK, min(heads) + self.timeout - time.monotonic()))

    def _check_timeouts(self) -> None:
        """Raise ``TimeoutError`` for the actor whose current minibatch is over time."""
        if self.timeout is None:
            return
        now = time.monotonic()
        for lane in self._stages:
            for stage in lane:
                for actor in stage.actors:
                    if actor.calls and now - actor.head_since > self.timeout:
                        self.broken = True
                        index, name = actor.calls[0].index, stage.spec.name
                        error = TimeoutError(
                            f"Step {name!r} (worker {actor.worker}) spent more than {self.timeout} s "
                            f"on minibatch {index}; the pipeline was stopped."
                        )
                        error.add_note(f"In the queued pipeline: step {name!r}, worker {actor.worker}, minibatch {index}.")
                        raise error

    def _forget(self, ray: Any, calls: dict[Any, _Call]) -> None:
        """After a failed or closed run: cancel its queued calls and clear its waiting minibatches."""
        for call in calls.values():
            call.actor.calls.clear()
            if not self.broken:
                with contextlib.suppress(Exception):  # already running or done: it finishes on its own
                    ray.cancel(call.status)
        for lane in self._stages:
            for stage in lane:
                stage.waiting.clear()


def _wait_dead(ray: Any, handles: list[Any], grace: float) -> None:
    """Wait (at most ``grace`` seconds) until every actor in ``handles`` is gone.

    ``ray.kill`` only sends the order: a call made at once may still be
    answered. An actor is gone when a call to it fails with ``RayActorError``.
    """
    deadline = time.monotonic() + grace
    alive = list(handles)
    while alive and time.monotonic() < deadline:
        pings = {handle.ping.remote(): handle for handle in alive}
        ready, _ = ray.wait(list(pings), num_returns=len(pings), timeout=max(0.0, deadline - time.monotonic()))
        alive = []
        for ref in ready:
            try:
                ray.get(ref)
            except Exception:  # RayActorError: gone, as wanted
                continue
            alive.append(pings[ref])
        if alive:
            time.sleep(0.05)  # the kill is on its way: ask again in a moment


def _next_batch(source: Iterator[tuple[Any, ...]], count: int) -> tuple[Any, ...] | None:
    try:
        return next(source)
    except StopIteration:
        return None
    except BaseException as exc:
        exc.add_note(f"Raised by the input of the queued pipeline, reading minibatch {count}.")
        raise _RunFailed(exc) from None


def _emit(records: list[logging.LogRecord]) -> None:
    for record in records:
        WorkerLog(record).emit()


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def _actor_died(actor: _Actor, during: str, exc: BaseException) -> BrokenPipelineError:
    name = actor.stage.spec.name
    error = BrokenPipelineError(
        f"Worker {actor.worker} of step {name!r} (a Ray actor) died while running {during}; "
        f"the pipeline was stopped. Ray says: {_first_line(exc)}"
    )
    error.add_note(f"In the queued pipeline: step {name!r}, worker {actor.worker}, {during}.")
    return error
