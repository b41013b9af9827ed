"""What the supervisor of a thread/process runtime knows of its workers, and the errors that say so.

Each worker publishes, in shared memory (:class:`~neuraxle_stream.workers.WorkerIO`),
what it is doing (``current``: a minibatch index or a state code of
:mod:`~neuraxle_stream.stages`) and since when (``started``). From these the
supervisor of :class:`~neuraxle_stream.runtime.Runtime` tells which worker
has been busy longest (the ``timeout``), and, for a worker that died, what it
was doing (the error names the step, the worker and the minibatch).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .backends import WorkerHandle
from .exceptions import BrokenPipelineError
from .stages import IDLE, SETUP, STARTING, STOPPED, TEARDOWN, StageSpec, sent_minibatch
from .workers import WorkerIO

__all__ = [
    "LiveStage", "busy_since", "death", "kill_all", "overdue", "overdue_worker", "stage_of", "step_name", "where",
]


@dataclass
class LiveStage:
    """A stage while its workers run: its spec, its queues and shared state, its workers' handles."""

    spec: StageSpec
    io: WorkerIO
    handles: list[WorkerHandle]


def step_name(stage: LiveStage, w: int) -> str:
    """The step worker ``w`` of ``stage`` runs (or ran last): in a chained stage, the one it is at."""
    steps = stage.spec.steps
    at = stage.io.step_at[w] if stage.io.step_at is not None else 0
    return steps[at].name if 0 <= at < len(steps) else stage.spec.name


def stage_of(stages: list[LiveStage], step: str, lane: int | None = None) -> LiveStage | None:
    """The stage that runs step ``step`` (a chained step runs in its chain's stage), if any.

    A minibatch that failed in a chained step is run again from its chain's
    first step, on the input the stage got: the task on this stage's inbox.
    """
    for stage in stages:
        if (lane is None or stage.spec.lane == lane) and any(s.name == step for s in stage.spec.steps):
            return stage
    return None


def _busy(stages: list[LiveStage]) -> list[tuple[float, LiveStage, int, int]]:
    """``(started, stage, worker, current)`` of each worker in a minibatch or ``setup()``."""
    busy = []
    for stage in stages:
        for w in range(stage.spec.n_workers):
            current = stage.io.current[w]
            if current >= 0 or current == SETUP:
                busy.append((stage.io.started[w], stage, w, current))
    return busy


def busy_since(stages: list[LiveStage]) -> float | None:
    """When the worker busy longest began its minibatch (or ``setup()``); ``None`` when none is busy."""
    return min((b[0] for b in _busy(stages)), default=None)


def overdue(stages: list[LiveStage], timeout: float) -> TimeoutError | None:
    """The error for the worker busy longest, if it has been busy more than ``timeout`` seconds."""
    late = overdue_worker(stages, timeout)
    return None if late is None else late[0]


def overdue_worker(stages: list[LiveStage], timeout: float) -> tuple[TimeoutError, LiveStage, int, int] | None:
    """``(error, stage, worker, current)`` for the worker busy longest, if busy more than ``timeout`` seconds."""
    busy = _busy(stages)
    if not busy:
        return None
    started, stage, w, current = min(busy, key=lambda b: b[0])
    if time.monotonic() - started <= timeout:
        return None
    doing = where(current)
    name = step_name(stage, w)
    error = TimeoutError(
        f"Step {name!r} (worker {w}) spent more than {timeout} s on {doing}; the pipeline was stopped."
    )
    error.add_note(f"In the queued pipeline: step {name!r}, worker {w}, {doing}.")
    return error, stage, w, current


def death(stage: LiveStage, w: int) -> BrokenPipelineError:
    """The error for worker ``w`` of ``stage``, which has died."""
    handle = stage.handles[w]
    handle.join(timeout=1.0)  # its sentinel fires as it exits, a moment before it can be reaped
    current = stage.io.current[w]
    name = step_name(stage, w)
    error = BrokenPipelineError(
        f"Worker {w} of step {name!r} {handle.describe_exit()} "
        f"{_during(current)}; the pipeline was stopped."
    )
    error.add_note(f"In the queued pipeline: step {name!r}, worker {w}, {where(current)}.")
    if current == STARTING and getattr(getattr(handle, "process", None), "exitcode", None) == 1:
        error.add_note(
            "A worker process that exits with code 1 at start-up usually failed to import "
            "the main script: a script that starts process workers must do so under "
            "`if __name__ == '__main__':` (as with multiprocessing), or use backend='thread'."
        )
    return error


def where(current: int) -> str:
    """What a worker was doing, from its ``current`` value."""
    names = {
        IDLE: "between minibatches",
        SETUP: "setup()",
        TEARDOWN: "teardown()",
        STOPPED: "after it stopped",
        STARTING: "at start-up",
    }
    sent = sent_minibatch(current)
    if sent is not None:
        return f"sending the output of minibatch {sent}"
    return names.get(current, f"minibatch {current}")


def _during(current: int) -> str:
    """When a worker died, from its ``current`` value, for error messages."""
    if current >= 0 or current in (SETUP, TEARDOWN):
        return f"while running {where(current)}"
    if sent_minibatch(current) is not None:
        return f"while {where(current)}"
    return where(current)


def kill_all(handles: list[WorkerHandle]) -> None:
    """Safety net when a runtime is garbage-collected or the interpreter exits."""
    for handle in handles:
        handle.kill()
