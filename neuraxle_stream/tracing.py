"""Tracing: what each step did to the first N items of a call.

``transform(X, trace=N)`` (and ``fit_transform``, ``stream``) runs only the
first ``N`` items, through the real workers, and returns a :class:`TraceResult`
instead of the outputs. The records are made inside the worker loop (see
:mod:`~neuraxle_stream.workers`): a worker whose stage spec says ``trace``
wraps its step's call (or, for a per-item function, the function) and
records one :class:`TraceCall` per call; the records ride back to the parent
on the minibatch they belong to, like the stats records, and the parent puts
them in pipeline order. With tracing off nothing is wrapped and nothing is
recorded: the worker loop checks one attribute per minibatch.

``@trace_func`` marks a user function called inside a step: while its worker
traces, its calls are recorded in that step's stage, after the step's own call.

This module records (in the workers) and assembles (in the parent);
:mod:`~neuraxle_stream.trace_results` holds what a traced call returns.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from .trace_results import TraceCall, TraceResult, TraceStage, summarize

__all__ = ["TraceCall", "TraceResult", "TraceStage", "last_trace", "summarize", "trace_func"]

F = TypeVar("F", bound=Callable[..., Any])

# -- last trace ----------------------------------------------------------------------

_LAST: list[TraceResult | None] = [None]


def last_trace() -> TraceResult | None:
    """The :class:`TraceResult` of the last traced call in this process, even one that failed."""
    return _LAST[0]


# -- recording in the workers ----------------------------------------------------------


class Recorder:
    """A tracing worker's records: the calls of the minibatch it is working on."""

    def __init__(self, stage: str, worker: int) -> None:
        self.stage, self.worker = stage, worker
        self.minibatch = -1
        self.calls: list[TraceCall] = []
        self._pending: list[TraceCall] | None = None  # @trace_func calls inside the step's call

    def begin(self, minibatch: int) -> None:
        self.minibatch = minibatch
        self.calls = []

    def take(self) -> tuple[TraceCall, ...]:
        calls, self.calls = tuple(self.calls), []
        return calls

    def wrap(self, func: Callable[..., Any], name: str, own: bool) -> Callable[..., Any]:
        """``func``, recording each call: the step's own (``own``) or a ``@trace_func`` one."""
        signature = _signature(func)

        @functools.wraps(func)
        def traced(*args: Any, **kwargs: Any) -> Any:
            return self.call(func, name, signature, args, kwargs, own, self.stage)

        return traced

    def call(
        self, func: Callable[..., Any], name: str, signature: inspect.Signature | None,
        args: tuple[Any, ...], kwargs: dict[str, Any], own: bool, stage: str,
    ) -> Any:
        outer = self._pending
        if own:
            self._pending = []
        retval: Any = None
        error: str | None = None
        started = time.perf_counter_ns()
        try:
            retval = func(*args, **kwargs)
            return retval
        except BaseException as exc:
            error = repr(exc)
            raise
        finally:
            duration = time.perf_counter_ns() - started
            record = TraceCall(name, stage, _bind(signature, args, kwargs), retval, duration,
                               self.worker, self.minibatch, error)
            if own:
                helpers, self._pending = self._pending or [], outer
                self.calls.append(record)
                self.calls.extend(helpers)
            elif self._pending is not None:
                self._pending.append(record)
            else:
                self.calls.append(record)


_ACTIVE: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar("neuraxle_stream_trace", default=None)


def install(step: Any, stage: str, worker: int) -> tuple[Recorder, Callable[[Any], Any]]:
    """Start tracing in this worker: the recorder, and the step's traced ``transform``.

    A per-item function step (:class:`~neuraxle_stream.steps.ItemFunction`,
    or its worker form :class:`~neuraxle_stream._step_calls.PerItem`) has its
    function wrapped instead, so each item is one call.
    """
    from ._step_calls import PerItem

    recorder = Recorder(stage, worker)
    _ACTIVE.set(recorder)
    if isinstance(step, PerItem):
        func = step.func
        step.func = recorder.wrap(func, str(getattr(func, "__name__", type(func).__name__)), own=True)
        return recorder, step.transform
    return recorder, recorder.wrap(step.transform, "transform", own=True)


def _signature(func: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError):
        return None


def _bind(signature: inspect.Signature | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    if signature is not None:
        try:
            return dict(signature.bind(*args, **kwargs).arguments)
        except TypeError:
            pass
    params: dict[str, Any] = {f"arg{i}": a for i, a in enumerate(args)}
    params.update(kwargs)
    return params


@overload
def trace_func(func: F, *, stage_name: str | None = None) -> F: ...
@overload
def trace_func(func: None = None, *, stage_name: str | None = None) -> Callable[[F], F]: ...
def trace_func(func: Any = None, *, stage_name: str | None = None) -> Any:
    """Record the calls of a user function made inside a step, while that worker traces.

    The calls appear in the stage of the step that made them (or in stage
    ``stage_name``), after the step's own call. Untraced, the wrapper costs
    one context-variable lookup per call.

    Examples
    --------
    >>> @trace_func
    ... def normalise(row):
    ...     return row / 2
    >>> normalise(4)
    2.0
    """
    if func is None:
        return functools.partial(trace_func, stage_name=stage_name)
    return _TracedFunc(func, stage_name)


class _TracedFunc:
    """What ``@trace_func`` returns: a class (not a closure), so that it pickles to workers."""

    def __init__(self, func: Callable[..., Any], stage_name: str | None) -> None:
        functools.update_wrapper(self, func)
        self.func, self.stage_name = func, stage_name
        self.name = str(getattr(func, "__name__", type(func).__name__))
        self._signature: inspect.Signature | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        recorder = _ACTIVE.get()
        if recorder is None:
            return self.func(*args, **kwargs)
        if self._signature is None:
            self._signature = _signature(self.func)
        return recorder.call(self.func, self.name, self._signature, args, kwargs, False,
                             self.stage_name or recorder.stage)

    def __get__(self, obj: Any, objtype: Any = None) -> Any:
        # Decorating a method: bind it like a function does.
        return self if obj is None else functools.partial(self.__call__, obj)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_signature": None}


# -- assembling in the parent ------------------------------------------------------------


@dataclass
class Assembler:
    """Collects the records that come back with each minibatch; builds the :class:`TraceResult`."""

    stages: list[str]
    n_items: int
    _records: list[tuple[int, int, int, TraceCall]] = field(default_factory=list)
    _run: int = 0

    def next_run(self) -> None:
        self._run += 1

    def add(self, minibatch: int, calls: tuple[TraceCall, ...]) -> None:
        base = len(self._records)
        self._records.extend((self._run, minibatch, base + i, c) for i, c in enumerate(calls))

    def result(self, failed: bool = False) -> TraceResult:
        result = TraceResult(self.stages, self.n_items)
        # Per stage, in call order: by run, minibatch, then the order the worker recorded them in.
        by_key = sorted(self._records, key=lambda r: (r[0], r[1], r[2]))
        for *_, call in by_key:
            if call.stage not in result._stages:
                result._stages[call.stage] = TraceStage(call.stage)
            result._stages[call.stage].calls.append(call)
        if failed:
            result._note = " (partial: the call failed)"
        _LAST[0] = result
        return result


def attach(exc: BaseException, result: TraceResult) -> None:
    """Give a failed traced call's exception its partial trace."""
    with contextlib.suppress(AttributeError):  # an exception type with __slots__
        exc.trace = result  # type: ignore[attr-defined]
    exc.add_note(
        "The partial TraceResult of this traced call is the exception's `trace` "
        "attribute, and neuraxle_stream.last_trace()."
    )
