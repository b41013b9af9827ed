"""The lifecycle owner: the one owner of the runtimes a composite runs or keeps.

Each queued composite has one :class:`Lifecycle` (found by
:func:`lifecycle_of`), created on its first use. It holds what a composite's
calls leave behind, outside the estimator's ``__dict__`` (a call must leave
``__dict__`` as it was, as scikit-learn's ``check_dict_unchanged`` asks, and
none of it belongs in a pickled or cloned estimator):

- the runtimes running now (for :meth:`Lifecycle.stop`, from any thread);
- the runtimes kept inside ``with pipeline:`` (by backend, start method and
  stage specs), closed by :meth:`Lifecycle.close`, and by one
  ``weakref.finalize`` if the composite is collected while it keeps some;
- the stats of the last call (``stats_``) and its cache info (``cache_info()``);
- on Ray, the idle actors between the runs of a call and between the calls
  inside ``with pipeline:`` (an :class:`~neuraxle_stream.ray_calls.ActorPool`,
  drained at the end of the call, or of the block).

A runtime is taken for a run through :meth:`Lifecycle.running`: a kept one
when its stages match, else a new one, released at the end of the run
(closed, unless ``with pipeline:`` keeps it). Closing a runtime gives its
process workers back to the pool of warm workers (:mod:`~neuraxle_stream.pool`)
when the run ended well; a failed run's runtime is marked so that its workers
are stopped instead.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .caching import CacheInfo
from .monitor import CallMonitor
from .plan import Plan, runtime_key
from .runtime_base import BaseRuntime
from .stages import StageSpec
from .stats import PipelineStats

if TYPE_CHECKING:  # pragma: no cover
    from .ray_calls import ActorPool

__all__ = ["Lifecycle", "lifecycle_of", "peek_lifecycle"]

#: The lifecycle of each composite, by the composite (weakly: it goes with it).
_OWNERS: weakref.WeakKeyDictionary[object, Lifecycle] = weakref.WeakKeyDictionary()

RuntimeKey = tuple[str, str, str]


def _close_kept(lifecycle: Lifecycle) -> None:
    """The finalizer's work: stop the workers (and Ray actors) a collected composite still kept."""
    kept = lifecycle.kept
    for runtime in list(kept.values()):
        with contextlib.suppress(Exception):
            runtime.close(graceful=False)
    kept.clear()
    if lifecycle.actors is not None:
        with contextlib.suppress(Exception):
            lifecycle.actors.drain()


class Lifecycle:
    """The runtimes, last stats and cache info of one composite."""

    def __init__(self) -> None:
        self._keep_alive = False
        #: the runtimes kept by ``with pipeline:``, by :func:`~neuraxle_stream.plan.runtime_key`
        self.kept: dict[RuntimeKey, BaseRuntime] = {}
        #: the runtimes of the runs going on now
        self.running: list[BaseRuntime] = []
        #: the stats of the last call, the composite's ``stats_``
        self.stats: PipelineStats | None = None
        #: the names of the steps this composite fitted (``fit`` may record no ``_`` attribute)
        self.fitted_steps: set[str] = set()
        #: the idle Ray actors between runs (created with the first Ray runtime)
        self.actors: ActorPool | None = None
        self._calls = 0
        self._calls_lock = threading.Lock()
        self._cache: tuple[CallMonitor, CacheInfo] | None = None
        self._finalizer: weakref.finalize[[Lifecycle], object] | None = None

    def watch(self, owner: object) -> None:
        """Close the kept runtimes when ``owner`` is collected (one finalizer, registered once)."""
        if self._finalizer is None:
            self._finalizer = weakref.finalize(owner, _close_kept, self)

    @property
    def keep_alive(self) -> bool:
        """Whether ``with pipeline:`` keeps the runtimes (and Ray actors) between calls."""
        return self._keep_alive

    @keep_alive.setter
    def keep_alive(self, keep: bool) -> None:
        self._keep_alive = keep
        self._drain_idle_actors()

    # -- calls: the Ray actors idle between their runs ------------------------------------

    @contextlib.contextmanager
    def call(self) -> Iterator[None]:
        """One call of the composite: Ray actors kept between its runs, killed at its end (unless ``with``)."""
        with self._calls_lock:
            self._calls += 1
        try:
            yield
        finally:
            with self._calls_lock:
                self._calls -= 1
            self._drain_idle_actors()

    def _keeps_actors(self) -> bool:
        return self._calls > 0 or self._keep_alive

    def _drain_idle_actors(self) -> None:
        if self.actors is not None and not self._keeps_actors():
            self.actors.drain()

    def actor_pool(self) -> ActorPool:
        """The pool of this composite's idle Ray actors, created on first use."""
        if self.actors is None:
            from .ray_calls import ActorPool  # the Ray modules load only when Ray is used

            self.actors = ActorPool(self._keeps_actors)
        return self.actors

    # -- runs ---------------------------------------------------------------------------

    def runtime(self, plan: Plan, specs: list[list[StageSpec]]) -> BaseRuntime:
        """The runtime for these stages: a kept one inside ``with``, else a new one."""
        pool = self.actor_pool() if plan.backend.name == "ray" else None
        if plan.trace is not None:  # a traced call never keeps (nor takes) a runtime
            return plan.new_runtime(specs, pool)
        key = runtime_key(plan.backend, specs)
        runtime = self.kept.get(key)
        if runtime is not None and not runtime.broken:
            return runtime
        runtime = plan.new_runtime(specs, pool)
        if self.keep_alive:
            # A kept runtime for the same stages whose steps (or settings) changed
            # since holds stale step copies: stop it rather than keep both.
            # Ray actors hold their CPUs and GPUs for as long as they live: keep one set.
            stages = [[s.name for s in lane] for lane in specs]
            for old_key, old in list(self.kept.items()):
                if [[s.name for s in lane] for lane in old.lanes] == stages or old_key[0] == key[0] == "ray":
                    del self.kept[old_key]
                    with contextlib.suppress(Exception):
                        old.close(graceful=not old.broken)
            self.kept[key] = runtime
        return runtime

    def release(self, runtime: BaseRuntime, failed: bool) -> None:
        """End of a run: stop the workers unless ``with pipeline:`` keeps them."""
        traced = any(spec.trace for lane in runtime.lanes for spec in lane)
        if self.keep_alive and not runtime.broken and not traced:
            return
        for key, value in list(self.kept.items()):
            if value is runtime:
                del self.kept[key]
        if failed:
            runtime.reuse_workers = False  # warm workers of a failed run are not reused
            # the error being raised already says what went wrong
            with contextlib.suppress(Exception):
                runtime.close(graceful=not runtime.broken)
        else:
            runtime.close(graceful=True)

    @contextlib.contextmanager
    def running_on(
        self, plan: Plan, specs: list[list[StageSpec]], monitor: CallMonitor
    ) -> Iterator[BaseRuntime]:
        """A runtime for one run of ``specs``, watched by ``monitor`` and stoppable, released after."""
        runtime = self.runtime(plan, specs)
        failed = True
        monitor.begin_run(specs)
        self.running.append(runtime)
        try:
            yield runtime
            failed = False
        finally:
            self.running.remove(runtime)
            monitor.end_run(specs, ok=not failed)
            self.release(runtime, failed)

    # -- the composite's lifecycle ---------------------------------------------------------

    def stop(self) -> bool:
        """Stop the runs going on now; ``False`` when there is none."""
        running = list(self.running)
        for runtime in running:
            runtime.stop()
        return bool(running)

    def close(self) -> None:
        """Stop keeping runtimes and close the kept ones; safe to call twice."""
        self.keep_alive = False
        kept = list(self.kept.values())
        self.kept.clear()
        errors = []
        for runtime in kept:
            try:
                runtime.close(graceful=not runtime.broken)
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    # -- cache info --------------------------------------------------------------------------

    def call_info(self, monitor: CallMonitor, location: str | None) -> CacheInfo:
        """The :class:`CacheInfo` of the call ``monitor`` belongs to (new for a new call)."""
        if self._cache is None or self._cache[0] is not monitor:
            self._cache = (monitor, CacheInfo(location))
        return self._cache[1]

    @property
    def last_info(self) -> CacheInfo | None:
        """The :class:`CacheInfo` of the last call that used a cache."""
        return None if self._cache is None else self._cache[1]


def lifecycle_of(owner: object) -> Lifecycle:
    """The lifecycle of the composite ``owner``, created on first use."""
    lifecycle = _OWNERS.get(owner)
    if lifecycle is None:
        lifecycle = _OWNERS[owner] = Lifecycle()
    return lifecycle


def peek_lifecycle(owner: object) -> Lifecycle | None:
    """The lifecycle of ``owner`` if it has one (no call, no ``with``: none)."""
    return _OWNERS.get(owner)
