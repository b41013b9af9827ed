"""The call layer: runs a :class:`~neuraxle_stream.plan.Plan` through its lifecycle owner.

One run of stages ``start:stop`` of a plan::

    X ──▶ plan.minibatching.batches(X) ──▶ Minibatch(index, data, rows, padding, params)
                                              │
                                              ▼
          lifecycle.running_on(plan, plan.specs(lanes)) ──▶ runtime.run(minibatches)
                                              │          (workers, queues, joiner: runtime.py)
                                              ▼
          (index, lane outputs) ──▶ plan.join(lane outputs) ──▶ minibatch.unpad(out)
                                              │
                                              ▼
          transform_range: SharedRowAccumulator (or plan.data_joiner) ──▶ joined output
          (on processes, the last workers write their rows into it: shared_rows.py)
          stream: one item at a time

With a cache (``memory=``), the run goes stage by stage through
:func:`~neuraxle_stream._cached_run.run_cached` instead. Every function here
takes the plan, the composite's :class:`~neuraxle_stream.lifecycle.Lifecycle`
and the call's :class:`~neuraxle_stream.monitor.CallMonitor`; none takes the
estimator. The monitor of a call comes from :func:`monitored`, whose stats
become the composite's ``stats_`` at the end of the call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any

from . import _containers, shared_rows, tracing
from ._branches import no_branch_output
from ._cached_run import fit_cached, run_cached
from ._validation import StageDesc
from .exceptions import InvalidParameterError
from .lifecycle import Lifecycle
from .minibatches import Minibatch
from .monitor import CallMonitor
from .plan import Plan
from .shared_rows import SharedRowAccumulator
from .stages import StageSpec
from .steps import iter_items

__all__ = ["TracedCall", "fit_step", "monitored", "run", "stream", "traced", "transform_range"]

#: What a traced call runs: ``(plan, X, y, monitor)``, its result dropped (the trace is the result).
TracedCall = Callable[[Plan, Any, Any, CallMonitor], object]


@contextlib.contextmanager
def monitored(plan: Plan, lifecycle: Lifecycle, X: Any) -> Iterator[CallMonitor]:
    """The monitor of one call; at its end, its stats become the composite's ``stats_``."""
    monitor = CallMonitor(
        plan.caller,
        [(d.name, d.n_workers) for d in plan.stages],
        hooks=plan.hooks,
        progress=plan.progress,
        verbose=plan.verbose,
        total_items=plan.minibatching.expected_items(X),
    )
    try:
        with contextlib.ExitStack() as around:
            # entered before the hooks are shipped to the workers, left after their reports
            for hook in plan.hooks:
                around.enter_context(hook.run_hook(plan.caller))
            # Ray actors idle between the call's runs are kept until its end
            around.enter_context(lifecycle.call())
            with monitor:
                yield monitor
    finally:
        lifecycle.stats = monitor.stats or monitor.collector.snapshot()


def run(
    plan: Plan, lifecycle: Lifecycle, X: Any, start: int, stop: int, monitor: CallMonitor, ordered: bool = True,
    into: SharedRowAccumulator | None = None,
) -> Generator[tuple[int, Any], None, None]:
    """Run stages ``start:stop`` on ``X``; yield ``(index, joined minibatch output)``.

    With ``into`` (``transform``), where the workers of a process runtime
    can write the outputs straight into the joined array, each minibatch is
    aimed at its rows and its output may be a
    :class:`~neuraxle_stream.shared_rows.WrittenRows` for ``into`` to take.
    """
    lanes = plan.lanes(start, stop)
    params = plan.routed.for_stages([d.name for lane in lanes for d in lane])
    if plan.store.enabled:  # stage by stage, through the cache (see caching.py)
        if params is not None:
            raise ValueError(
                f"{plan.caller} cannot route metadata to transform ({sorted(params.per_step)}) "
                "with memory= set: cached outputs are keyed by their input only."
            )
        yield from run_cached(plan, lifecycle, X, start, stop, monitor)
        return
    specs = plan.specs(lanes, lifecycle.stats)  # the last call's measurements refine the chaining
    if plan.trace is not None:
        plan.trace.next_run()
    with lifecycle.running_on(plan, specs, monitor) as runtime:
        padded: dict[int, Minibatch] = {}  # the padded minibatch in flight (the last one, if any)
        pool = shared_rows.pool_for(runtime) if into is not None and _writes_in_place(plan, specs) else None
        if pool is not None:
            into.open(pool)  # type: ignore[union-attr]
        aim = into.target if pool is not None else None  # type: ignore[union-attr]

        def minibatches() -> Iterator[Minibatch]:
            first_row = 0
            for batch in plan.minibatching.batches(X, params):
                if batch.padding:
                    padded[batch.index] = batch
                elif aim is not None:
                    target = aim(first_row, batch.rows)
                    if target is not None:
                        batch = dataclasses.replace(batch, output=target)
                first_row += batch.rows
                yield batch

        # closing(): whatever ends this frame (Ctrl-C between two minibatches included), the
        # runtime's run ends now, its feeder stopped, not when a reference cycle is collected.
        # cutting a sequence (an array, a list, a frame) never waits: the supervisor feeds it itself
        with contextlib.closing(runtime.run(minibatches(), ordered=ordered, observer=monitor.collector,
                                            tracer=plan.trace, policy=plan.retry,
                                            source_waits=not _containers.is_sequence(X))) as results:
            for index, outputs in results:
                out = plan.join(outputs)
                batch = padded.pop(index, None)
                yield index, out if batch is None else batch.unpad(out)


def _writes_in_place(plan: Plan, specs: list[list[StageSpec]]) -> bool:
    """Whether the last workers may write the outputs of a run of ``specs`` into the joined array.

    One lane (a union joins its lanes in the parent), untraced (the trace
    follows the data), no retries or skips (an attempt that failed may still
    write), and one output row per input row at every step.
    """
    return (
        len(specs) == 1
        and plan.trace is None
        and not plan.retry.active
        and not any(step.may_change_length for spec in specs[0] for step in spec.steps)
    )


def transform_range(plan: Plan, lifecycle: Lifecycle, X: Any, start: int, stop: int, monitor: CallMonitor) -> Any:
    """The joined outputs of stages ``start:stop`` for ``X``, in input order."""
    if not plan.lanes(start, stop):  # a union whose every branch is "drop"
        return no_branch_output(X)
    if _containers.is_sequence(X) and _containers.num_rows(X) == 0:
        return _containers.empty_rows(X)
    if plan.passthrough_only(start, stop) and _containers.is_sequence(X) and (
        plan.minibatching.keep_incomplete and plan.data_joiner is None
    ):
        return X  # "passthrough" stages only (before a fitting barrier, say): nothing to run
    joiner = plan.data_joiner
    if joiner is not None:
        with contextlib.closing(run(plan, lifecycle, X, start, stop, monitor)) as outputs:
            parts = [out for _, out in outputs]
        return joiner.transform(parts) if hasattr(joiner, "transform") else joiner(parts)
    # Join as the minibatches arrive, while the workers go on (on processes, they
    # write their outputs into the joined array themselves: shared_rows.py).
    total = _containers.num_rows(X) if _containers.is_sequence(X) else None
    accumulator = SharedRowAccumulator(
        total, plan.minibatching.batch_size, SharedRowAccumulator.key_of(X, start, stop)
    )
    n_parts = 0
    try:
        with contextlib.closing(run(plan, lifecycle, X, start, stop, monitor, into=accumulator)) as outputs:
            for _, out in outputs:
                accumulator.add(out)
                n_parts += 1
    except BaseException:
        accumulator.discard()
        raise
    if not n_parts:
        return _containers.empty_rows(X)
    return accumulator.result()


def stream(plan: Plan, lifecycle: Lifecycle, iterable: Iterable[Any]) -> Iterator[Any]:
    """The outputs of every stage for ``iterable``, one item at a time (``plan.ordered`` or as completed)."""
    with monitored(plan, lifecycle, iterable) as monitor, contextlib.closing(
        run(plan, lifecycle, iterable, 0, len(plan.stages), monitor, ordered=plan.ordered)
    ) as outputs:
        for _, out in outputs:
            yield from iter_items(out)


def fit_step(
    plan: Plan, lifecycle: Lifecycle, desc: StageDesc, X: Any, y: Any, monitor: CallMonitor,
    params: dict[str, dict[str, Any]] | None = None, transform: bool = False,
) -> Any:
    """Fit one step in the parent on the whole of its input (through the cache when ``memory=``).

    ``params`` by method; with ``transform``, the step's own ``fit_transform``
    output is returned (DESIGN.md section 6).
    """
    t0 = time.perf_counter()
    try:
        out = fit_cached(plan, lifecycle, desc, X, y, monitor, params, transform)
    except Exception as exc:  # fitted in the parent: say which step could not take its input
        exc.add_note(f"Raised fitting step {desc.name!r} (in the parent, on the whole input of the step).")
        raise
    monitor.fitted(desc.name, time.perf_counter() - t0)
    lifecycle.fitted_steps.add(desc.name)  # for check_fitted: fitted here, whatever it records
    return out


def traced(
    plan: Plan, lifecycle: Lifecycle, method: str, n_items: object, X: Any, y: Any, call: TracedCall,
) -> tracing.TraceResult:
    """Run ``call`` on the first ``n_items`` of ``X`` with tracing on; the :class:`TraceResult`.

    The run bypasses caching and never uses (nor keeps) the runtime of
    ``with pipeline:``. If it fails, the exception carries the partial trace.
    """
    if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 1:
        raise InvalidParameterError(
            f"The 'trace' parameter of {plan.caller}.{method} must be an int in "
            f"[1, inf) or None. Got {n_items!r} instead."
        )
    if _containers.is_sequence(X):
        X = _containers.slice_rows(X, 0, min(n_items, _containers.num_rows(X)))
    else:
        X = list(itertools.islice(X, n_items))
    if y is not None and _containers.is_sequence(y):
        y = _containers.slice_rows(y, 0, min(n_items, _containers.num_rows(y)))
    n_rows = _containers.num_rows(X)
    assembler = tracing.Assembler(plan.names, n_rows)
    plan = plan.traced(assembler, n_rows)
    try:
        with monitored(plan, lifecycle, X) as monitor:
            call(plan, X, y, monitor)
    except BaseException as exc:
        tracing.attach(exc, assembler.result(failed=True))
        raise
    return assembler.result()
