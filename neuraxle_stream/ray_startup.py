"""Starting the Ray actors of a run: taken or created, placed, then through ``setup()``.

Used by :class:`~neuraxle_stream.ray_backend.RayRuntime` when it starts, and
when it replaces an actor that died (or overran ``timeout``) in a run that
retries; importing this module does not import Ray. Kept apart from the
runtime because waiting for actors is a loop of its own, with its own
bounds, and not one of the supervisor loop's verbs::

    start:   idle actors of the pool, by options ──▶ kill the idle ones no stage takes
             ──▶ create the missing ones ──▶ placed (ping) ──▶ setup(spec)
    replace: kill the old actor ──▶ create a new one ──▶ placed (ping) ──▶ setup(spec)

Placing an actor (starting its process, on a node with the resources its
options ask for) is bounded by :data:`PLACEMENT_TIMEOUT`; ``setup()`` by the
pipeline's ``timeout``, as on the other backends. An idle actor of the pool
that died while idle (killed from outside) is replaced while placing, and is
no failure.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from .exceptions import BrokenPipelineError
from .ray_actors import StageActor, options_key
from .ray_calls import ActorPool, RayActor, RayStage, actor_died, all_actors, emit, kill_all
from .stages import StageSpec

__all__ = ["PLACEMENT_TIMEOUT", "WAIT_CHECK", "ActorStarter"]

#: Seconds the actors of a run may take to be placed (their processes started); ``setup()`` is bounded by ``timeout``.
PLACEMENT_TIMEOUT = 120.0
#: Seconds between two looks while the driver waits on the actors (and, in a run, for ``stop()``).
WAIT_CHECK = 0.2


class ActorStarter:
    """Creates the actors of one runtime, with their stage's options, and waits until they are ready.

    The waits return the error that stops the run rather than raise it, so
    that the runtime marks itself broken before raising it.

    Parameters
    ----------
    ray : module
        The ``ray`` module, connected.
    options : dict
        Ray actor options by step name (see
        :func:`~neuraxle_stream.ray_actors.actor_options`).
    levels : dict
        The driver's logging levels, by logger name, for the actors.
    """

    def __init__(self, ray: Any, options: dict[str, dict[str, Any]], levels: dict[str, int]) -> None:
        self.ray = ray
        self.options = options
        self.levels = levels
        self._remote = ray.remote(StageActor)

    def make(self, spec: StageSpec) -> Any:
        """A new actor for a worker of ``spec``: its handle."""
        opts = {**self.options[spec.name], "max_restarts": 0, "max_task_retries": 0}
        return self._remote.options(**opts).remote(self.levels)

    def take(self, lanes: list[list[StageSpec]], pool: ActorPool | None, stages: list[list[RayStage]]) -> None:
        """Append to ``stages`` one stage per spec of ``lanes``, with one actor per worker.

        Idle actors of ``pool`` created with a stage's options serve it; idle
        ones that no stage can use are killed first (they hold resources the
        new actors may need); the others are created. ``stages`` is the
        runtime's, filled as this goes, so that its close finds every actor
        taken even when this raises.
        """
        ray = self.ray
        for lane in lanes:
            lane_stages = []
            for i, spec in enumerate(lane):
                stage = RayStage(spec, last=i + 1 == len(lane), options_key=options_key(self.options[spec.name]),
                                 spec_ref=ray.put(spec))
                for w in range(spec.n_workers):
                    handle = pool.take(stage.options_key, spec.name, w) if pool is not None else None
                    stage.actors.append(RayActor(stage, w, handle, reused=handle is not None))
                lane_stages.append(stage)
            stages.append(lane_stages)
        if pool is not None:
            kill_all(ray, pool.take_all())
        for actor in all_actors(stages):
            if actor.handle is None:
                actor.handle = self.make(actor.stage.spec)

    def renew(self, actor: RayActor) -> None:
        """Kill ``actor``'s Ray actor (if still alive) and give it a new one, not yet placed."""
        with contextlib.suppress(Exception):  # already dead
            self.ray.kill(actor.handle, no_restart=True)
        actor.handle, actor.reused = self.make(actor.stage.spec), False

    def wait_ready(self, actors: list[RayActor], timeout: float | None) -> BaseException | None:
        """Wait until every actor is placed, then for every actor's ``setup()``: the error that stops the run, if any."""
        error = self._wait_all({a.handle.ping.remote(): a for a in actors}, PLACEMENT_TIMEOUT, "placed")
        if error is not None:
            return error
        return self._wait_all({self._setup(a): a for a in actors}, timeout, "setup()")

    def _setup(self, actor: RayActor) -> Any:
        """Ship the run's step to ``actor`` and run its ``setup()``: the ref of the reply."""
        return actor.handle.setup.remote(actor.stage.spec_ref, actor.worker, self.levels)

    def _wait_all(self, pending: dict[Any, RayActor], limit: float | None, what: str) -> BaseException | None:
        ray = self.ray
        deadline = None if limit is None else time.monotonic() + limit
        while pending:
            remaining = WAIT_CHECK if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return _not_ready(ray, next(iter(pending.values())), limit, what)
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=min(remaining, WAIT_CHECK))
            for ref in ready:
                actor = pending.pop(ref)
                try:
                    reply = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    if what == "placed" and actor.reused:  # an idle actor died (killed from outside): a new one
                        actor.handle, actor.reused = self.make(actor.stage.spec), False
                        pending[actor.handle.ping.remote()] = actor
                        continue
                    died = actor_died(actor, "setup()" if what == "setup()" else "start-up", exc)
                    died.__suppress_context__ = True  # raised as ``from None``: Ray's error is in the message
                    return died
                if what == "setup()":
                    failure, logs = reply
                    emit(logs)
                    if failure is not None:
                        return failure.to_exception()
        return None


def _not_ready(ray: Any, actor: RayActor, limit: float | None, what: str) -> BaseException:
    """The error for ``actor``, not placed (``what == "placed"``) or not through ``setup()`` within ``limit``."""
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
    return error
