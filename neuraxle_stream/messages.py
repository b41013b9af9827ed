"""The messages that travel on the queues, and their sentinels.

Every message is a small frozen dataclass; control signals are named
sentinels with a ``repr``, never bare tuples or ``None``.
"""

from __future__ import annotations

import pickle
import traceback
from dataclasses import dataclass, field
from typing import Any

from .exceptions import RemoteTraceback, WorkerError

__all__ = ["MinibatchError", "QueuedMinibatchTask"]


class _Sentinel:
    """A named control signal on a queue; compared by identity (and survives pickling)."""

    _registry: dict[str, _Sentinel] = {}

    def __new__(cls, name: str) -> _Sentinel:
        existing = cls._registry.get(name)
        if existing is not None:
            return existing
        obj = super().__new__(cls)
        obj.name = name
        cls._registry[name] = obj
        return obj

    name: str

    def __reduce__(self) -> tuple[Any, ...]:
        return (_Sentinel, (self.name,))

    def __repr__(self) -> str:
        return f"<{self.name}>"


#: Put on a stage's input queue to tell one worker to finish and exit.
STOP = _Sentinel("STOP")


@dataclass(frozen=True, slots=True)
class QueuedMinibatchTask:
    """A minibatch on its way through the stages.

    Parameters
    ----------
    index : int
        Sequence number of the minibatch in its run; the joiner orders by it.
    data_inputs : Any
        The minibatch (or, after a stage, that stage's output for it).
    expected_outputs : Any, default=None
        The matching slice of ``y`` when a step needs it.
    run_id : int, default=0
        The run that produced the task; workers and the joiner drop tasks of
        runs that were cancelled.
    """

    index: int
    data_inputs: Any
    expected_outputs: Any = None
    run_id: int = 0


@dataclass(frozen=True, slots=True)
class StageResult:
    """A task that left the last stage of a lane, sent to the parent."""

    lane: int
    task: QueuedMinibatchTask


@dataclass(frozen=True, slots=True)
class StageStopped:
    """Sent to the parent by the last worker of a stage to stop."""

    lane: int
    stage: int


@dataclass(frozen=True)
class MinibatchError:
    """A failure inside a worker, on its way to the parent.

    Parameters
    ----------
    step_name : str
        The step that failed.
    worker_index : int
        Index of the worker within its stage.
    index : int or None
        The minibatch being processed, or ``None`` outside a minibatch
        (``setup``, ``teardown``, loading the step).
    error : BaseException
        The exception (a :class:`WorkerError` when it cannot be pickled).
    traceback : str
        The formatted traceback from the worker.
    run_id : int
        The run the failure belongs to.
    phase : str
        ``"transform"``, ``"setup"``, ``"teardown"`` or ``"load"``.
    """

    step_name: str
    worker_index: int
    index: int | None
    error: BaseException
    traceback: str = ""
    run_id: int = 0
    phase: str = "transform"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def capture(
        cls,
        exc: BaseException,
        *,
        step_name: str,
        worker_index: int,
        index: int | None,
        run_id: int,
        phase: str = "transform",
        portable: bool = True,
    ) -> MinibatchError:
        """Build the message for ``exc``, made picklable when ``portable``."""
        tb = "".join(traceback.format_exception(exc))
        error = _portable(exc, tb) if portable else exc
        return cls(step_name, worker_index, index, error, tb, run_id, phase)

    def describe(self) -> str:
        """Where it happened, as used in exception notes."""
        where = f"minibatch {self.index}" if self.index is not None else f"{self.phase}()"
        return f"step {self.step_name!r}, worker {self.worker_index}, {where}"

    def to_exception(self) -> BaseException:
        """The exception to raise in the caller, with cause and note."""
        exc = self.error
        exc.__cause__ = RemoteTraceback(self.traceback)
        note = f"Raised in a worker of the queued pipeline: {self.describe()}."
        if note not in getattr(exc, "__notes__", ()):
            exc.add_note(note)
        return exc


def _portable(exc: BaseException, tb: str) -> BaseException:
    """``exc`` when it survives a pickle round trip, else a :class:`WorkerError`."""
    try:
        if type(pickle.loads(pickle.dumps(exc))) is type(exc):
            return exc
    except Exception:  # any failure to round-trip means: send a description
        pass
    type_name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return WorkerError(type_name, str(exc), tb)
