"""Hooks: code that runs around each stage and each minibatch, inside the workers.

A :class:`PipelineHook` has two context managers, as SPDL's has:
``stage_hook(stage)`` wraps the lifetime of each worker (entered after the
step's ``setup()``, exited after its last minibatch, before ``teardown()``),
and ``task_hook(stage, task)`` wraps every minibatch::

    worker:  setup() ─ stage_hook ┬ task_hook ─ transform(minibatch 0) ─┐ ... ┬─ teardown()
                                  └──────────────────────────────────────────┘

Hooks travel to the workers with the stage, pickled with cloudpickle: each
worker runs its *own copy* of each hook, on threads as on processes, so a
hook's attributes set in a worker are never seen by the parent. What the
parent needs comes back with the results: the duration, item count and queue
waits of every minibatch are measured by the workers anyway and merged into
``pipeline.stats_`` (see :mod:`neuraxle_stream.stats`); a hook's own
``report(stats, final)`` is then called *in the parent*, at the end of each
call (and every ``interval`` seconds while it runs, when ``interval`` is set).

An exception raised by a hook fails the run as a step error does: in
``task_hook`` it fails its minibatch; in ``stage_hook`` it fails the start
(as a failing ``setup()``) or the stop (as a failing ``teardown()``). A hook
that catches the step's exception and does not re-raise it does not hide it:
the minibatch fails all the same.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import cloudpickle

if TYPE_CHECKING:  # pragma: no cover
    from .messages import QueuedMinibatchTask
    from .stats import PipelineStats

__all__ = ["PipelineHook", "StageInfo", "TaskStatsHook", "WorkerHooks", "dump_hooks"]

logger = logging.getLogger("neuraxle_stream")


@dataclass(frozen=True)
class StageInfo:
    """Which stage and which worker a hook runs in.

    Parameters
    ----------
    name : str
        The step name.
    index : int
        Position of the step in the pipeline's ``steps`` (the branch index in
        a union).
    n_workers : int
        Number of workers of the stage.
    worker_index : int
        Index of this worker within its stage, in ``range(n_workers)``.
    """

    name: str
    index: int
    n_workers: int
    worker_index: int


class PipelineHook:
    """Base class of hooks: override ``stage_hook`` and/or ``task_hook``.

    Both are ``@contextmanager`` methods that run in the workers; the
    defaults only ``yield``. ``report(stats, final)`` runs in the parent.

    When a hook catches exceptions, re-raise them: a hook that swallows the
    step's exception does not hide it (the minibatch still fails), but it
    learns nothing by trying. Catch ``Exception`` rather than
    ``BaseException`` and never absorb ``StopIteration`` or ``GeneratorExit``.

    Attributes
    ----------
    interval : float or None
        Seconds between two ``report(stats, final=False)`` calls while a run
        goes; ``None`` (the default) reports only at the end.

    Examples
    --------
    >>> import time
    >>> from contextlib import contextmanager
    >>> class SlowMinibatchWarning(PipelineHook):
    ...     def __init__(self, limit=1.0):
    ...         self.limit = limit
    ...
    ...     @contextmanager
    ...     def task_hook(self, stage, task):
    ...         start = time.perf_counter()
    ...         try:
    ...             yield
    ...         finally:  # also when the step raises; the error goes on
    ...             if time.perf_counter() - start > self.limit:
    ...                 logging.getLogger(__name__).warning(
    ...                     "%s: minibatch %d took over %s s", stage.name, task.index, self.limit)
    >>> from neuraxle_stream import SequentialQueuedPipeline
    >>> p = SequentialQueuedPipeline([abs], backend="thread", hooks=[SlowMinibatchWarning()])
    >>> p.transform([-1, 2])
    [1, 2]
    """

    interval: float | None = None

    @contextmanager
    def stage_hook(self, stage: StageInfo) -> Iterator[None]:
        """Wrap the lifetime of one worker of ``stage``: after ``setup()``, to its last minibatch."""
        yield

    @contextmanager
    def task_hook(self, stage: StageInfo, task: QueuedMinibatchTask) -> Iterator[None]:
        """Wrap one minibatch (``task.index``, ``task.data_inputs``) in one worker of ``stage``."""
        yield

    def report(self, stats: PipelineStats, final: bool) -> None:
        """Called in the parent with the stats merged so far (``final`` at the end of a call)."""

    @contextmanager
    def run_hook(self, owner: str) -> Iterator[None]:
        """Wrap one call (``fit``, ``transform``, ...) of the pipeline ``owner`` (its class name), **in the parent**.

        Entered before any worker of the call starts (and before the hooks
        are shipped to the workers, so that what it sets on ``self`` reaches
        their copies), left after the last ``report``. An exception of the
        call passes through it; the default only ``yield``.
        """
        yield


class TaskStatsHook(PipelineHook):
    """Log one summary line per stage: tasks, items, failures, mean, p90, p99 time.

    The numbers are measured by every worker and merged in the parent; the
    lines go to ``logging.getLogger("neuraxle_stream")`` at ``INFO`` level,
    at the end of each call and, with ``interval``, every ``interval``
    seconds while it runs.

    Parameters
    ----------
    interval : float or None, default=None
        Seconds between two reports while a run goes.

    Examples
    --------
    >>> from neuraxle_stream import SequentialQueuedPipeline
    >>> p = SequentialQueuedPipeline([("neg", abs)], backend="thread", hooks=[TaskStatsHook()])
    >>> p.transform([-1, 2])  # logs "[SequentialQueuedPipeline] neg: 1 tasks, ..."
    [1, 2]
    """

    def __init__(self, interval: float | None = None) -> None:
        self.interval = interval

    def __repr__(self) -> str:
        return f"TaskStatsHook(interval={self.interval!r})"

    def report(self, stats: PipelineStats, final: bool) -> None:
        """Log one line per stage."""
        state = "" if final else " (running)"
        for name, s in stats.stages.items():
            logger.info(
                "[%s] %s%s: %d tasks, %d items, %d failures, mean %s, p90 %s, p99 %s",
                stats.owner, name, state, s.num_tasks, s.num_items, s.num_failures,
                _ms(s.ave_time), _ms(s.p90_time), _ms(s.p99_time),
            )


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms"


# -- in the workers ------------------------------------------------------------------


def dump_hooks(hooks: Sequence[PipelineHook] | None) -> bytes:
    """The hooks as bytes for the workers (``b""`` for none)."""
    if not hooks:
        return b""
    return bytes(cloudpickle.dumps(tuple(hooks), protocol=pickle.HIGHEST_PROTOCOL))


class _Labelled(AbstractContextManager[Any]):
    """A hook's context manager whose own exceptions get a note naming the hook."""

    def __init__(self, cm: AbstractContextManager[Any], where: str) -> None:
        self.cm, self.where = cm, where

    def __enter__(self) -> Any:
        try:
            return self.cm.__enter__()
        except BaseException as exc:
            exc.add_note(f"Raised entering the {self.where}.")
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        try:
            return self.cm.__exit__(exc_type, exc, tb)
        except BaseException as raised:
            if raised is not exc:
                raised.add_note(f"Raised leaving the {self.where}.")
            raise


class _Nested(AbstractContextManager[None]):
    """Several context managers entered in order and left in reverse.

    If one fails to enter, those already entered are left with its
    exception, which is raised whatever they return: they cannot swallow it.
    """

    def __init__(self, cms: list[AbstractContextManager[Any]]) -> None:
        self.cms = cms
        self._stack = ExitStack()

    def __enter__(self) -> None:
        stack = ExitStack()
        try:
            for cm in self.cms:
                stack.enter_context(cm)
        except BaseException as exc:
            stack.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._stack = stack

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        return bool(self._stack.__exit__(exc_type, exc, tb))


_NO_HOOKS: AbstractContextManager[None] = nullcontext()


class WorkerHooks:
    """The hooks of one worker: its own copies, around its lifetime and each minibatch.

    Parameters
    ----------
    payload : bytes
        The hooks as saved by :func:`dump_hooks`.
    stage : StageInfo
        The stage and worker they run in.
    """

    def __init__(self, payload: bytes, stage: StageInfo) -> None:
        self.hooks: tuple[PipelineHook, ...] = pickle.loads(payload) if payload else ()
        self.stage = stage
        self._lifetime: _Nested | None = None

    def enter_stage(self) -> None:
        """Enter every ``stage_hook`` (after ``setup()``)."""
        if not self.hooks:
            return
        lifetime = _Nested([self._labelled(h, h.stage_hook(self.stage), "stage_hook") for h in self.hooks])
        lifetime.__enter__()
        self._lifetime = lifetime

    def exit_stage(self) -> None:
        """Leave every ``stage_hook`` (after the last minibatch); raise what they raise."""
        lifetime, self._lifetime = self._lifetime, None
        if lifetime is not None:
            lifetime.__exit__(None, None, None)

    def around_task(self, task: QueuedMinibatchTask) -> AbstractContextManager[None]:
        """The ``task_hook`` of every hook, nested, for one minibatch."""
        if not self.hooks:
            return _NO_HOOKS
        return _Nested([self._labelled(h, h.task_hook(self.stage, task), "task_hook") for h in self.hooks])

    @staticmethod
    def _labelled(hook: PipelineHook, cm: Any, method: str) -> _Labelled:
        if not isinstance(cm, AbstractContextManager) and not (
            hasattr(cm, "__enter__") and hasattr(cm, "__exit__")
        ):
            raise TypeError(
                f"{type(hook).__name__}.{method} must be a @contextmanager method; "
                f"it returned {cm!r} instead."
            )
        return _Labelled(cm, f"{method} of {type(hook).__name__}")
