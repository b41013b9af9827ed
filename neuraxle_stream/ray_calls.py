"""The driver's books of a Ray run: stages, actors, the calls in flight, and what goes wrong with them.

Used by :class:`~neuraxle_stream.ray_backend.RayRuntime`; importing this
module does not import Ray (the functions take the ``ray`` module). Each
stage keeps the minibatches waiting for room in it (as object refs); each
actor keeps its calls in submission order, and since when its oldest call
runs, which is what ``timeout`` bounds. :func:`dispatch` gives each waiting
minibatch to the actor of its stage with the fewest calls queued, so one
slow minibatch does not hold the others back.

Between the runs of one call (the fitting runs of a ``fit_transform``, then
its transform run) and across the calls inside ``with pipeline:``, a
composite keeps its idle actors in an :class:`ActorPool`, by the actor
options they were created with; the next run takes them and ships them its
steps, instead of starting new actors (seconds each)::

    run 1: take(options) ── none: new actor ── setup(spec 1) ... teardown() ──▶ give()
    run 2: take(options) ── the idle one ──── setup(spec 2) ... teardown() ──▶ give()
    end of the call (or of ``with``): drain() ── ray.kill every idle actor
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from .exceptions import BrokenPipelineError
from .messages import WorkerLog
from .stages import StageSpec

__all__ = [
    "KILL_GRACE", "ActorPool", "RayActor", "RayCall", "RayStage", "actor_died", "actor_of", "dispatch", "kill_all",
    "overdue", "teardown", "wait_dead", "wait_timeout",
]

#: Seconds a close (or :meth:`ActorPool.drain`) waits for killed actors to be gone.
KILL_GRACE = 5.0


@dataclass
class RayActor:
    """One worker: a Ray actor, and the calls submitted to it."""

    stage: RayStage
    worker: int
    handle: Any
    #: The calls submitted and not yet seen done, oldest first.
    calls: collections.deque[RayCall] = field(default_factory=collections.deque)
    #: When the oldest call began (the previous one ended): its timeout counts from here.
    head_since: float = 0.0
    #: Whether it came from the :class:`ActorPool` (it served an earlier run) rather than started for this run.
    reused: bool = False


@dataclass
class RayStage:
    """One stage: its actors, and the minibatches waiting for room in it."""

    spec: StageSpec
    last: bool
    actors: list[RayActor] = field(default_factory=list)
    #: Minibatches done with the stage before, as (index, task ref), waiting for room here.
    waiting: collections.deque[tuple[int, Any]] = field(default_factory=collections.deque)
    #: The key of the actor options its actors were created with (see :class:`ActorPool`).
    options_key: str = ""
    #: ``spec`` in Ray's object store, put once per run: every actor's ``setup`` takes it.
    spec_ref: Any = None

    @property
    def capacity(self) -> int:
        """The calls the stage may have submitted at once: its workers plus its queue."""
        return self.spec.n_workers + self.spec.max_queue_size

    def in_flight(self) -> int:
        """The calls submitted to the stage's actors and not yet seen done."""
        return sum(len(a.calls) for a in self.actors)


@dataclass(eq=False)
class RayCall:
    """``actor.run(task ref)`` for minibatch ``index``: the refs of its status and its output."""

    index: int
    actor: RayActor
    status: Any
    task: Any
    #: The ref of its input (the stage's input for this minibatch), to run it again on a replaced actor.
    arg: Any = None


def all_actors(lanes: list[list[RayStage]]) -> list[RayActor]:
    """Every actor of every stage of every lane."""
    return [a for lane in lanes for stage in lane for a in stage.actors]


def dispatch(lanes: list[list[RayStage]], calls: dict[Any, RayCall]) -> None:
    """Submit waiting minibatches to the actor of their stage with the fewest calls, while there is room.

    Each new call is added to ``calls``, by its status ref.
    """
    now = time.monotonic()
    for lane in lanes:
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
                call = RayCall(index, actor, status, task, ref)
                actor.calls.append(call)
                calls[status] = call


def busy_since(lanes: list[list[RayStage]]) -> float | None:
    """When the oldest call of any actor began; ``None`` when no actor has a call."""
    return min((a.head_since for a in all_actors(lanes) if a.calls), default=None)


def wait_timeout(lanes: list[list[RayStage]], timeout: float | None, check: float) -> float:
    """How long the driver may wait for calls: ``check``, or less when the oldest call's ``timeout`` comes sooner."""
    oldest = busy_since(lanes)
    if timeout is None or oldest is None:
        return check
    return max(0.01, min(check, oldest + timeout - time.monotonic()))


def overdue(lanes: list[list[RayStage]], timeout: float) -> tuple[TimeoutError, RayActor] | None:
    """The error for the first actor whose current minibatch has run more than ``timeout`` seconds, and the actor."""
    now = time.monotonic()
    for actor in all_actors(lanes):
        if actor.calls and now - actor.head_since > timeout:
            index, name = actor.calls[0].index, actor.stage.spec.name
            error = TimeoutError(
                f"Step {name!r} (worker {actor.worker}) spent more than {timeout} s "
                f"on minibatch {index}; the pipeline was stopped."
            )
            error.add_note(f"In the queued pipeline: step {name!r}, worker {actor.worker}, minibatch {index}.")
            return error, actor
    return None


def actor_of(lanes: list[list[RayStage]], exc: BaseException, default: RayActor) -> RayActor:
    """The actor a Ray error comes from (by its actor id), else ``default``."""
    actor_id = getattr(exc, "actor_id", None)
    if isinstance(actor_id, bytes):
        actor_id = actor_id.hex()
    if not actor_id:  # Ray does not always set it; its message names the actors, the origin last
        found = re.findall(r"actor_id=([0-9a-f]+)", str(exc))
        actor_id = found[-1] if found else None
    for actor in all_actors(lanes):
        with contextlib.suppress(Exception):
            if actor.handle._actor_id.hex() == actor_id:
                return actor
    return default


def actor_died(actor: RayActor, during: str, exc: BaseException) -> BrokenPipelineError:
    """The error for ``actor``, which died while running ``during``."""
    name = actor.stage.spec.name
    error = BrokenPipelineError(
        f"Worker {actor.worker} of step {name!r} (a Ray actor) died while running {during}; "
        f"the pipeline was stopped. Ray says: {first_line(exc)}"
    )
    error.add_note(f"In the queued pipeline: step {name!r}, worker {actor.worker}, {during}.")
    return error


def first_line(exc: BaseException) -> str:
    """The first line of ``exc``'s message (Ray's run long), else its type's name."""
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


def emit(records: list[logging.LogRecord]) -> None:
    """Hand log records that came back from an actor to the driver's handlers."""
    for record in records:
        WorkerLog(record).emit()


def wait_dead(ray: ModuleType, handles: list[Any], grace: float) -> None:
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


def kill_all(ray: ModuleType, handles: list[Any], grace: float = KILL_GRACE) -> None:
    """Kill the actors in ``handles`` and wait (at most ``grace`` seconds) until they are gone."""
    if not handles or not ray.is_initialized():
        return  # no actor, or Ray is down and its actors with it
    for handle in handles:
        with contextlib.suppress(Exception):  # already dead, or Ray is going down
            ray.kill(handle, no_restart=True)
    wait_dead(ray, handles, grace)


def teardown(ray: ModuleType, actors: list[RayActor], grace: float) -> tuple[list[BaseException], list[RayActor]]:
    """Tear every actor's step down (at most ``grace`` seconds): the errors, and the actors whose teardown went well."""
    refs = {a.handle.teardown.remote(): a for a in actors}
    ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=grace)
    errors: list[BaseException] = []
    healthy: list[RayActor] = []
    for ref in ready:
        try:
            failures, logs = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            errors.append(actor_died(refs[ref], "teardown()", exc))
            continue
        emit(logs)
        errors.extend(f.to_exception() for f in failures)
        if not failures:
            healthy.append(refs[ref])
    return errors, healthy


@dataclass
class _Idle:
    """An actor in the pool: its handle, its options' key, and the worker it was last."""

    key: str
    handle: Any
    step: str
    worker: int


class ActorPool:
    """The idle Ray actors of one composite, kept between its runs.

    A Ray actor is a process with the step's libraries imported (seconds to
    start) that holds its cluster resources for as long as it lives: so the
    pool keeps actors only while its owner says so (``accepting``: during a
    call of the composite, for its fitting runs and its transform run, and
    inside ``with pipeline:``), and the owner kills them at the end of either
    (:meth:`drain`). An actor is found by the key of the options it was
    created with (its resources), preferably the one that was the same worker
    of the same step last. Only healthy actors come back (see
    :meth:`~neuraxle_stream.ray_backend.RayRuntime.close`): never one that
    died, overran ``timeout``, failed its ``teardown()`` or belonged to a
    failed run. Thread-safe; importing it does not import Ray.
    """

    def __init__(self, accepting: Callable[[], bool]) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Idle] = []
        self._accepting = accepting

    def take(self, key: str, step: str, worker: int) -> Any | None:
        """An idle actor created with options ``key`` (the same step's ``worker`` first), or ``None``."""
        with self._lock:
            same = [i for i in self._idle if i.key == key]
            if not same:
                return None
            found = next((i for i in same if (i.step, i.worker) == (step, worker)), same[0])
            self._idle.remove(found)
            return found.handle

    def give(self, key: str, step: str, worker: int, handle: Any) -> bool:
        """Keep ``handle`` for the next run; ``False`` (the caller kills it) when the pool does not keep actors now."""
        with self._lock:
            if not self._accepting():
                return False
            self._idle.append(_Idle(key, handle, step, worker))
            return True

    def idle(self) -> list[Any]:
        """The handles of the idle actors."""
        with self._lock:
            return [i.handle for i in self._idle]

    def take_all(self) -> list[Any]:
        """Every idle actor, out of the pool."""
        with self._lock:
            idle, self._idle = self._idle, []
        return [i.handle for i in idle]

    def drain(self) -> None:
        """Kill every idle actor (and wait until they are gone); safe to call twice."""
        handles = self.take_all()
        ray = sys.modules.get("ray")  # actors exist only once Ray was imported
        if handles and ray is not None:
            kill_all(ray, handles)
