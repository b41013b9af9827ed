"""The messages that travel on the queues, and their sentinels.

Every message is a small frozen dataclass; control signals are named
sentinels with a ``repr``, never bare tuples or ``None``.
"""

from __future__ import annotations

import logging
import operator
import pickle
import sys
import traceback
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple, TypeVar

import cloudpickle

from .exceptions import RemoteTraceback, WorkerError

__all__ = ["MinibatchError", "QueuedMinibatchTask", "TaskRecord", "WorkerLog"]


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


_T = TypeVar("_T")


def _pickled_as_a_call(cls: type[_T]) -> type[_T]:
    """Pickle instances of the dataclass ``cls`` as ``cls(*fields)``.

    A slotted dataclass pickles through Python code that walks its fields on
    both ends; a call with one tuple costs a few microseconds less per
    message, on every hop of every minibatch.
    """
    names = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    getter = operator.attrgetter(*names)
    if len(names) == 1:

        def __reduce__(self: Any) -> tuple[Any, ...]:
            return type(self), (getter(self),)

    else:

        def __reduce__(self: Any) -> tuple[Any, ...]:
            return type(self), getter(self)

    cls.__reduce__ = __reduce__  # type: ignore[method-assign]
    return cls


#: Put on a stage's input queue to tell one worker to finish and exit.
STOP = _Sentinel("STOP")


class TaskRecord(NamedTuple):
    """What one worker measured for one minibatch; merged into stats in the parent.

    Records ride on the messages already flowing (each stage appends its own
    to :attr:`QueuedMinibatchTask.stats`; a failure carries them on its
    :class:`MinibatchError`), so measuring costs no extra message.

    Attributes
    ----------
    stage : str
        The step name.
    worker : int
        Index of the worker within its stage.
    n_items : int
        Rows of the minibatch the step received.
    start : float
        When the step started on it (``time.time()``, for timelines).
    duration : float
        Seconds in the step's ``transform`` (``time.perf_counter``).
    get_wait : float
        Seconds the worker waited on its input queue before getting it.
    put_wait : float or None
        Seconds the worker waited for room on the next queue when it put its
        *previous* output of the same run (the wait of a put is known only
        after the put, too late for the output it sends); ``None`` when there
        is none (first minibatch, or the last stage of a lane, whose results
        channel never waits).
    failed : bool
        Whether the step (or a task hook) raised.
    minibatch : int
        Sequence number of the minibatch in its run (-1: not known).
    began : float
        ``time.perf_counter()`` when the step started on it (the start of
        ``duration``), for the timeline: on Linux the monotonic clock every
        process of the machine shares with the parent (see
        :mod:`~neuraxle_stream.timeline`); NaN when the step never started.
    cpu_time : float
        CPU seconds the worker's thread spent in the step during ``duration``
        (far below it: the step waited, on I/O say); the plan of the next
        call reads it (see :mod:`~neuraxle_stream.plan`).
    """

    stage: str
    worker: int
    n_items: int
    start: float
    duration: float
    get_wait: float
    put_wait: float | None
    failed: bool = False
    minibatch: int = -1
    began: float = float("nan")
    cpu_time: float = 0.0


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
    stats : tuple of TaskRecord, default=()
        What each stage it went through measured, in stage order.
    trace : tuple of TraceCall, default=()
        The calls recorded by the stages it went through when the run is
        traced (see :class:`~neuraxle_stream.TraceResult`); empty otherwise.
    params : dict or None, default=None
        Metadata routed to ``transform`` for this minibatch (already sliced
        to its rows), by step name: ``{name: {param: value}}``; a stage whose
        name is absent calls ``transform(data_inputs)``. ``None`` when no step
        requested any (the usual case: nothing more to carry).
    output : RowsTarget or None, default=None
        Where the last stage of the lane writes its output, in place, instead
        of sending it (``transform`` on processes; see ``shared_rows.py``);
        ``None``: it sends it.
    """

    index: int
    data_inputs: Any
    expected_outputs: Any = None
    run_id: int = 0
    stats: tuple[TaskRecord, ...] = ()
    trace: tuple[Any, ...] = ()
    params: dict[str, dict[str, Any]] | None = None
    output: Any = None

    def __reduce__(self) -> tuple[Any, ...]:
        # A list of small same-shape arrays (a per-item function's outputs) travels as one
        # block: one array to pickle on each end rather than one per item (W4, docs/backends.md).
        fields_ = _TASK_FIELDS(self)
        block = _rows_block(fields_[1])
        if block is None:
            return QueuedMinibatchTask, fields_
        return _task_of_rows, (fields_[0], block, *fields_[2:])


_TASK_FIELDS = operator.attrgetter(*(f.name for f in fields(QueuedMinibatchTask)))
#: Items up to this size travel stacked (:func:`_rows_block`); larger ones by themselves.
_SMALL_ROW = 4096


_SHAPE, _DTYPE = operator.attrgetter("shape"), operator.attrgetter("dtype")


def _rows_block(data: Any) -> Any:
    """``data`` stacked into one array when it is a list of small same-shape NumPy arrays, else ``None``.

    The checks are passes of ``map`` into a ``set`` and the stacking one
    ``concatenate``: C loops over the items. A generator's check per item and
    ``numpy.stack`` (a view per item) cost as much as a per-item step's
    own work on a minibatch of small rows.
    """
    if type(data) is not list or len(data) < 2:
        return None
    first = data[0]
    np = sys.modules.get("numpy")
    if np is None or type(first) is not np.ndarray or first.ndim == 0 or first.nbytes > _SMALL_ROW:
        return None
    if first.dtype.hasobject or set(map(type, data)) != {np.ndarray}:
        return None
    if len(set(map(_SHAPE, data))) != 1 or len(set(map(_DTYPE, data))) != 1:
        return None
    return np.concatenate(data).reshape((len(data), *first.shape))


def _task_of_rows(index: int, block: Any, *rest: Any) -> QueuedMinibatchTask:
    """The task :meth:`QueuedMinibatchTask.__reduce__` sent: its items are the block's rows."""
    return QueuedMinibatchTask(index, list(block), *rest)


@_pickled_as_a_call
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
    stats : tuple of TaskRecord
        The records of the failed minibatch: its earlier stages, then the
        failure itself.
    trace : tuple of TraceCall
        The calls the failed minibatch's stages recorded, when traced.
    """

    step_name: str
    worker_index: int
    index: int | None
    error: BaseException
    traceback: str = ""
    run_id: int = 0
    phase: str = "transform"
    extra: dict[str, Any] = field(default_factory=dict)
    stats: tuple[TaskRecord, ...] = ()
    trace: tuple[Any, ...] = ()

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
        stats: tuple[TaskRecord, ...] = (),
        trace: tuple[Any, ...] = (),
    ) -> MinibatchError:
        """Build the message for ``exc``, made picklable when ``portable``."""
        tb = "".join(traceback.format_exception(exc))
        error = _portable(exc, tb) if portable else exc
        return cls(step_name, worker_index, index, error, tb, run_id, phase, stats=stats, trace=trace)

    def describe(self) -> str:
        """Where it happened, as used in exception notes."""
        where = f"minibatch {self.index}" if self.index is not None else f"{self.phase}()"
        return f"step {self.step_name!r}, worker {self.worker_index}, {where}"

    def to_exception(self) -> BaseException:
        """The exception to raise in the caller, with cause and note."""
        exc = self.error
        if isinstance(exc, _ByValue):
            try:
                exc = exc.load()
            except Exception:  # its class cannot be rebuilt here: describe it
                exc = WorkerError("an exception defined by value", "(its class could not be rebuilt)", self.traceback)
        exc.__cause__ = RemoteTraceback(self.traceback)
        note = f"Raised in a worker of the queued pipeline: {self.describe()}."
        if note not in getattr(exc, "__notes__", ()):
            exc.add_note(note)
        return exc


@dataclass(frozen=True, slots=True)
class WorkerLog:
    """A ``logging`` record from a worker process, on its way to the parent's handlers."""

    record: logging.LogRecord

    def emit(self) -> None:
        """Hand the record to the parent's logger of the same name, if it is enabled there."""
        logger = logging.getLogger(self.record.name)
        if logger.isEnabledFor(self.record.levelno):
            logger.handle(self.record)


class _ByValue(Exception):
    """An exception whose class pickles only by value (defined in a script's ``__main__``
    or a notebook), carried as cloudpickle bytes.

    cloudpickle gives a class pickled by value the identity it had where it was
    first pickled: the parent pickled the step (and the exception classes its
    code names) by value, so unpickling there gives back the parent's own
    class, and ``except MyError:`` catches it.
    """

    def __init__(self, payload: bytes) -> None:
        super().__init__(payload)
        self.payload = payload

    def load(self) -> BaseException:
        error = cloudpickle.loads(self.payload)
        assert isinstance(error, BaseException)
        return error


def _portable(exc: BaseException, tb: str) -> BaseException:
    """``exc`` when it survives a pickle round trip (by value if it must), else a :class:`WorkerError`."""
    try:
        if type(pickle.loads(pickle.dumps(exc))) is type(exc):
            return exc
    except Exception:  # any failure to round-trip means: try by value, else send a description
        pass
    try:
        payload = cloudpickle.dumps(exc)
        if type(cloudpickle.loads(payload)).__qualname__ == type(exc).__qualname__:
            return _ByValue(payload)
    except Exception:  # cannot travel at all: send a description
        pass
    type_name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return WorkerError(type_name, str(exc), tb)
