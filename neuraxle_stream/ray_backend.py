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

The driver runs the supervisor loop of
:meth:`~neuraxle_stream.runtime_base.BaseRuntime.run`, shared with the
thread/process runtime: ``feed`` puts minibatches in Ray's object store and
submits them (:mod:`~neuraxle_stream.ray_calls` keeps the books), ``collect``
waits for the statuses of the calls in flight.

Backpressure: the run holds at most ``max_in_flight`` minibatches (the
credits of every backend: the stages' queue bounds plus their workers, plus one); each
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
raises :class:`~neuraxle_stream.BrokenPipelineError` naming its step. With
``max_retries``, a dead (or timed-out) actor is replaced instead: a new actor
of the same step and worker index loads the step and runs ``setup()``, and the
calls the dead one had run again on the same stage, from their input refs
(only the stage that failed reruns; the refs are those of the calls in
flight, so memory stays within the in-flight bound).

Actors are kept across the runs of one call and the calls inside ``with
pipeline:``: at the end of a run that went well, each actor tears its step
down and goes back to the composite's
:class:`~neuraxle_stream.ray_calls.ActorPool`; the next run's stages take
the actors created with the same options and ship them their own (newly
fitted) steps with ``setup``. So a ``fit_transform`` starts its actors once,
not once per fitting run. An actor that died, overran ``timeout``, failed its
``teardown()`` or belonged to a failed run is killed, never reused; an idle
one that died is replaced when taken. The pool kills its actors at the end of
the call (or when ``with pipeline:`` ends), and a broken run's at once.

Over ~400 lines, on purpose: the Ray driver is one runtime (the verbs of the
supervisor loop, actor replacement for retries, the close that waits until
Ray reports the actors gone); its bookkeeping is in ``ray_calls``, the
start of its actors (placed, through ``setup()``) in ``ray_startup`` and the
actor body in ``ray_actors``.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from .exceptions import BrokenPipelineError, PipelineStoppedError
from .messages import QueuedMinibatchTask
from .ray_actors import (
    DRIVER_CPUS,
    actor_options,
    check_ray_options,
    connect,
    import_ray,
)
from .ray_calls import (
    KILL_GRACE,
    ActorPool,
    RayActor,
    RayCall,
    RayStage,
    actor_died,
    actor_of,
    all_actors,
    dispatch,
    emit,
    first_line,
    kill_all,
    overdue,
    teardown,
    wait_timeout,
)
from .ray_startup import PLACEMENT_TIMEOUT, WAIT_CHECK, ActorStarter
from .runtime_base import STOP_GRACE, BaseRuntime, Minibatch, RunFailed, RunState, minibatch_task
from .stages import StageSpec
from .workers import _parent_log_levels

__all__ = [
    "DRIVER_CPUS", "KILL_GRACE", "PLACEMENT_TIMEOUT", "ActorPool", "RayRuntime", "actor_options", "check_ray_options",
    "connect",
]


class RayRuntime(BaseRuntime):
    """Starts, drives and stops the Ray actors of a pipeline (the runtime of ``backend="ray"``).

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
    actor_pool : ActorPool or None
        Where the actors come from when idle ones fit, and go back to after
        a run that went well; ``None``: each runtime starts and kills its own.
    share_among : dict or None
        The workers (by stage name) the CPUs are shared among, as in
        :func:`actor_options`: those of every run of the call.
    """

    def __init__(
        self,
        lanes: list[list[StageSpec]],
        timeout: float | None = None,
        ray_options: dict[str, dict[str, Any]] | None = None,
        address: str | None = None,
        actor_pool: ActorPool | None = None,
        share_among: dict[str, int] | None = None,
    ) -> None:
        super().__init__(lanes, timeout)
        self.ray_options = ray_options
        self.address = address
        self.actor_pool = actor_pool
        self.share_among = share_among
        self._stages: list[list[RayStage]] = []
        self._stop_requested = threading.Event()
        #: The current run's source, and its calls in flight by status ref.
        self._source: Iterator[Minibatch] = iter(())
        self._calls: dict[Any, RayCall] = {}
        #: Seconds ``ray.init`` took when this runtime started Ray (0 when Ray was running).
        self.connect_seconds = 0.0
        self._run: RunState | None = None
        self._starter: ActorStarter | None = None

    @property
    def actors(self) -> list[Any]:
        """The Ray actor handles of the live workers."""
        return [a.handle for a in all_actors(self._stages)]

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        """Connect to Ray, take (or create) one actor per worker and wait until each has run ``setup()``.

        Idle actors of the pool created with a stage's options serve it
        (:meth:`~neuraxle_stream.ray_startup.ActorStarter.take`); the others are created.
        """
        began = time.perf_counter()
        was_running = import_ray().is_initialized()
        ray = connect(self.address)
        if not was_running:
            self.connect_seconds = time.perf_counter() - began
        options = actor_options(self.lanes, self.ray_options, ray.cluster_resources(), self.share_among)
        self._starter = starter = ActorStarter(ray, options, _parent_log_levels())
        self.started = True
        starter.take(self.lanes, self.actor_pool, self._stages)
        self._ready(starter.wait_ready(all_actors(self._stages), self.timeout))

    def _ready(self, error: BaseException | None) -> None:
        """Raise ``error``, from waiting for actors (:class:`~neuraxle_stream.ray_startup.ActorStarter`), if any: the runtime is broken."""
        if error is not None:
            self.broken = True
            raise error

    def close(self, graceful: bool = True) -> None:
        """Run each actor's ``teardown()`` (when ``graceful`` and not broken), then give the actors back or kill them; safe twice.

        The actors whose ``teardown()`` went well go back to the pool after a
        run that went well (:attr:`reuse_workers`); every other actor is
        killed, and the close waits until Ray reports it gone.

        Parameters
        ----------
        graceful : bool, default=True
            Run the teardowns first (at most :data:`STOP_GRACE` seconds).

        Raises
        ------
        Exception
            The first error a ``teardown()`` raised, or
            :class:`~neuraxle_stream.BrokenPipelineError` for an actor that died in it.
        """
        if not self.started:
            return
        self.started = False
        ray = import_ray()
        errors: list[BaseException] = []
        healthy: list[RayActor] = []
        try:
            if graceful and not self.broken and ray.is_initialized():
                errors, healthy = teardown(ray, all_actors(self._stages), STOP_GRACE)
        finally:
            pool = self.actor_pool
            given: set[int] = set()
            if pool is not None and self.reuse_workers and not self.broken:
                given = {id(a) for a in healthy if pool.give(a.stage.options_key, a.stage.spec.name, a.worker, a.handle)}
            kill_all(ray, [a.handle for a in all_actors(self._stages) if id(a) not in given])
            self._stages.clear()
        if errors:
            raise errors[0]

    def stop(self) -> None:
        """Stop the current run from any thread: its caller gets :class:`~neuraxle_stream.PipelineStoppedError`."""
        self._stop_requested.set()

    # -- the verbs of the supervisor loop (BaseRuntime.run) ----------------------

    def _begin_run(self, run: RunState, source: Iterator[Minibatch]) -> None:
        """Read the run's minibatches from ``source``, as credits allow, in the driver's thread."""
        self._source = source
        self._calls = {}
        self._run = run

    def _feed(self, run: RunState) -> None:
        """Put new minibatches in the object store, within the credits; submit what has room."""
        if self._stop_requested.is_set():
            raise RunFailed(PipelineStoppedError("The call was stopped by stop()."))
        ray = import_ray()
        while run.total is None and run.credits.take(blocking=False):
            batch = _next_batch(self._source, run.fed)
            if batch is None:
                run.total = run.fed
                run.credits.give()
                break
            task = minibatch_task(batch, run.fed, run.run_id)
            run.register(task, batch.rows)
            ref = ray.put(task)
            for lane in self._stages:
                lane[0].waiting.append((run.fed, ref))
                if run.observer is not None:  # for the timeline: it entered the first "queue" now
                    run.observer.add_feed_wait(lane[0].spec.name, 0.0)
            run.fed += 1
        dispatch(self._stages, self._calls)

    def _collect(self, run: RunState) -> None:
        """Wait for calls to finish (at most :data:`WAIT_CHECK`, to see ``stop()``); take every one done."""
        calls = self._calls
        if not calls:
            return
        ray = import_ray()
        ready, _ = ray.wait(list(calls), num_returns=1, timeout=wait_timeout(self._stages, self.timeout, WAIT_CHECK))
        if ready:  # take every call done by now, not only the first
            ready, _ = ray.wait(list(calls), num_returns=len(calls), timeout=0)
        for call in [calls.pop(ref) for ref in ready]:
            self._finish(ray, call, run)

    def _finish(self, ray: Any, call: RayCall, run: RunState) -> None:
        """Take one finished call: pass its output on, join it, or raise its error."""
        actor = call.actor
        if call not in actor.calls:
            return  # a call of an actor already replaced: it runs again on the new one
        head = actor.calls[0] if actor.calls else call
        actor.calls.remove(call)
        actor.head_since = time.monotonic()
        stage = actor.stage
        try:
            failure, logs = self._get(ray, call.status, call)
        except _ActorDied as died:
            self._replace(run, actor, [call], head, died.error)
            return
        emit(logs)
        if failure is not None:
            error = failure.to_exception()
            if run.policy.active:
                run.add_records(call.index, failure.stats, ())
                fate = run.failed(failure.step_name, call.index, error, died=False,
                                  stopping=self._stop_requested.is_set())
                if fate == "retry":
                    stage.waiting.appendleft((call.index, call.arg))
                if fate != "raise":
                    return
                if run.tracer is not None:
                    run.tracer.add(call.index, failure.trace)
            else:
                run.add_records(call.index, failure.stats, failure.trace)
            raise RunFailed(error)
        if not stage.last:
            lane = self._stages[stage.spec.lane]
            lane[stage.spec.index + 1].waiting.append((call.index, call.task))
            return
        try:
            result: QueuedMinibatchTask = self._get(ray, call.task, call)
        except _ActorDied as died:  # it died as its output was being fetched: run it again
            self._replace(run, actor, [call], call, died.error)
            return
        run.add_output(result, stage.spec.lane)

    def _get(self, ray: Any, ref: Any, call: RayCall) -> Any:
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
            error = actor_died(call.actor, f"minibatch {call.index}", exc)
            run = self._run
            if run is not None and run.policy.active and not self._stop_requested.is_set():
                raise _ActorDied(error) from None
            self.broken = True
            raise error from None
        except ray.exceptions.RayTaskError as exc:
            error = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
            name = actor_of(self._stages, exc, call.actor).stage.spec.name
            error.add_note(f"Raised sending the output of step {name!r} for minibatch {call.index}.")
            raise RunFailed(error) from None
        except ray.exceptions.RayError as exc:
            self.broken = True
            name = call.actor.stage.spec.name
            error = BrokenPipelineError(
                f"Ray lost the data of minibatch {call.index} at step {name!r}; the pipeline was stopped. "
                f"Ray says: {first_line(exc)}"
            )
            error.add_note(f"In the queued pipeline: step {name!r}, worker {call.actor.worker}, minibatch {call.index}.")
            raise error from None

    def _check_timeouts(self) -> None:
        """Raise ``TimeoutError`` for the actor whose current minibatch is over time."""
        if self.timeout is None:
            return
        late = overdue(self._stages, self.timeout)
        if late is None:
            return
        error, actor = late
        run = self._run
        if run is not None and run.policy.active and not self._stop_requested.is_set():
            ray = import_ray()
            with contextlib.suppress(Exception):
                ray.kill(actor.handle, no_restart=True)
            self._replace(run, actor, [], actor.calls[0], error)
            return
        self.broken = True
        raise error

    def _replace(self, run: RunState, actor: RayActor, taken: list[RayCall], head: RayCall, error: BaseException) -> None:
        """``actor`` died (or overran ``timeout``) running ``head``: replace it and run its calls again.

        ``head`` counts a failed attempt (its worker died); the other calls
        the actor had (and ``taken``, already popped) go back, in order, to the
        front of their stage's waiting line, with their input refs.
        """
        dead = [*taken, *actor.calls]
        actor.calls.clear()
        for call in dead:
            self._calls.pop(call.status, None)
        fate = run.failed(actor.stage.spec.name, head.index, error, died=True)
        if fate == "raise":
            self.broken = True
            raise error
        starter = self._starter
        assert starter is not None  # set by start(), before any run
        starter.renew(actor)
        if run.observer is not None:
            for step in actor.stage.spec.steps:  # a chained actor held a copy of each step
                run.observer.add_restarts(step.name)
        self._ready(starter.wait_ready([actor], self.timeout))
        again = sorted((c for c in dead if c is not head or fate == "retry"), key=lambda c: c.index, reverse=True)
        for call in again:
            actor.stage.waiting.appendleft((call.index, call.arg))

    def _end_run(self, run: RunState, ok: bool) -> None:
        """After a failed or closed run: cancel its queued calls and clear its waiting minibatches."""
        self._stop_requested.clear()
        self._run = None
        calls, self._calls, self._source = self._calls, {}, iter(())
        if ok:
            return
        ray = import_ray()
        for call in calls.values():
            call.actor.calls.clear()
            if not self.broken:
                with contextlib.suppress(Exception):  # already running or done: it finishes on its own
                    ray.cancel(call.status)
        for lane in self._stages:
            for stage in lane:
                stage.waiting.clear()


class _ActorDied(Exception):
    """An actor died during a run that may retry: the runtime replaces it (the error, if not)."""

    def __init__(self, error: BrokenPipelineError) -> None:
        super().__init__(error)
        self.error = error


def _next_batch(source: Iterator[Minibatch], count: int) -> Minibatch | None:
    try:
        return next(source)
    except StopIteration:
        return None
    except BaseException as exc:
        exc.add_note(f"Raised by the input of the queued pipeline, reading minibatch {count}.")
        raise RunFailed(exc) from None
