"""Fitting a queued composite: what is fitted when, in the parent, in either fit mode.

``fit_mode="full"`` (:func:`fit_sequential`, :func:`fit_union`): each fittable
step is fitted on the whole output of the stages before it (run by their
workers), then its fitted copy goes to its own workers; union branches are
fitted on the same input, in parallel threads of the parent.

``fit_mode="partial"``::

    source ──▶ stages 0..k-1 (workers, in parallel) ──▶ ordered outputs ──▶ step k.partial_fit
                                                       (parent, minibatch by minibatch)

Each fittable step k is fitted by its own pass over the source, on the
outputs of the stages before it, fitted already: the result of calling
``partial_fit`` step by step on the same minibatches. A one-shot iterator
allows a single pass; more need a sequence, a re-iterable or a callable
returning a fresh iterable.

Every function takes the call's :class:`~neuraxle_stream.plan.Plan` and the
composite's :class:`~neuraxle_stream.lifecycle.Lifecycle`, never the
composite; metadata routing is in :mod:`neuraxle_stream._routing`.

Over ~400 lines, on purpose: it is the one place that says what is fitted
when (sequential barriers, union branches, one stage, partial fits, stateless
steps); splitting it would put the rules of one fit in two files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sklearn import config_context, get_config
from sklearn.base import clone

from . import _containers
from ._routing import RoutedParams, check_transform_input, routable, transformed_metadata
from ._validation import StageDesc
from .call import fit_step, transform_range
from .call import run as run_stages
from .exceptions import InvalidParameterError
from .lifecycle import Lifecycle
from .monitor import CallMonitor
from .plan import Plan, first_output
from .steps import BaseTransformer, is_fittable

__all__ = ["Source", "fit_one_stage", "fit_stateless", "is_stateless_estimator", "fit_partial", "fit_sequential", "fit_union", "resolve", "trim_targets"]


# -- full fit ------------------------------------------------------------------------------


def is_stateless_estimator(step: Any) -> bool:
    """A scikit-learn estimator tagged ``requires_fit=False`` (``FunctionTransformer``...).

    The composites fit no such step before running it (no fitting barrier),
    but its ``fit`` records its input features (``n_features_in_``,
    ``feature_names_in_``), which its feature names and pandas output need.
    Steps of this library (``BaseTransformer``, plain functions) are left out.
    """
    return (
        callable(getattr(step, "fit", None))
        and not isinstance(step, BaseTransformer)
        and not is_fittable(step)
    )


def fit_stateless(descs: Sequence[StageDesc], X: Any, y: Any, *, union: bool) -> None:
    """Fit, on ``X``, the stateless scikit-learn steps that take ``X`` as it is, in the parent.

    In a pipeline, the first step past ``"passthrough"`` ones; in a union,
    every branch. Done before the run that ships them, so the workers get the
    fitted copies. Cheap for ``FunctionTransformer``: it records the features.
    """
    for d in descs:
        if d.kind != "step":
            continue
        if is_stateless_estimator(d.step):
            try:
                d.step.fit(X) if y is None else d.step.fit(X, y)
            except Exception as exc:
                exc.add_note(f"Raised fitting the stateless step {d.name!r} (in the parent, on its input).")
                raise
        if not union:
            return



def _known_rows(plan: Plan, X: Any) -> Plan:
    """The plan, its routed params knowing ``X``'s rows once ``X`` is read whole."""
    routed = plan.routed
    if routed.n_samples is None and _containers.is_sequence(X):
        return plan.with_routed(dataclasses.replace(routed, n_samples=len(X)))
    return plan


def _first_minibatch_stateless(plan: Plan, X: Any, y: Any, union: bool) -> None:
    """Partial fit: stateless steps that take ``X`` record their input from its first minibatch."""
    if _containers.is_sequence(X):
        n = plan.minibatching.first_rows(X)
        y_first = _containers.slice_rows(y, 0, n) if _containers.is_sequence(y) else None
        fit_stateless(plan.stages, _containers.slice_rows(X, 0, n), y_first, union=union)


def fit_sequential(plan: Plan, lifecycle: Lifecycle, X: Any, y: Any, monitor: CallMonitor, transform: bool) -> Any:
    """Fit the steps of a pipeline in turn; the outputs for ``X`` when ``transform`` (else ``None``)."""
    if plan.fit_mode == "partial":
        _first_minibatch_stateless(plan, X, y, union=False)
        return fit_partial(plan, lifecycle, X, y, monitor, transform)
    descs = plan.stages
    fittable = [i for i, d in enumerate(descs) if is_fittable(d.step)]
    if fittable and not _containers.is_sequence(X):
        X = list(X)  # fitting needs the whole data: read the source once
    if _containers.is_sequence(X):
        # a stateless first step (FunctionTransformer...) is fitted on X, the only input of a
        # stateless step at hand in the parent, so that it knows its features in the workers
        fit_stateless(descs, X, y, union=False)
    plan = _known_rows(plan, X)
    check_transform_input(plan.transform_input)
    if _parent_fits_first(plan, fittable, transform):
        plan.start_server()  # its imports overlap the fits below (start_methods.py)
    data, start = X, 0
    for k in fittable:
        if k > start:
            data = transform_range(plan, lifecycle, data, start, k, monitor)
            y = trim_targets(y, data)
        params = plan.routed.step_params(descs[k].name, _containers.num_rows(data))
        if plan.transform_input and k > 0:
            params = transformed_metadata(params, plan.transform_input, _through(plan, lifecycle, k, monitor))
        # the step's own fit_transform, as sklearn's Pipeline: its output feeds the next
        # stages (DESIGN.md section 6); a traced call runs it in its workers, to trace it
        in_parent = fitted_with_output(plan, k, len(descs), transform)
        out = fit_step(plan, lifecycle, descs[k], data, y, monitor, params, transform=in_parent)
        if in_parent:  # as the workers would give it: without a dropped short minibatch
            data, start = complete_batches_only(plan, out, joined=False), k + 1
            y = trim_targets(y, data)
        else:
            start = k
    if not transform:
        return None
    if start == len(descs):
        return complete_batches_only(plan, data, joined=True)
    return transform_range(plan, lifecycle, data, start, len(descs), monitor)


def _parent_fits_first(plan: Plan, fittable: list[int], transform: bool) -> bool:
    """Whether a pipeline's fit begins with steps fitted in the parent and runs stages in workers after them.

    Then the workers' fork server starts before those fits
    (:meth:`~neuraxle_stream.plan.Plan.start_server`), so that its imports
    overlap them. Not with a cache: its outputs may spare every run.
    """
    descs = plan.stages
    if not fittable or plan.store.enabled or any(d.kind != "passthrough" for d in descs[: fittable[0]]):
        return False
    ends = [*fittable, len(descs) if transform else fittable[-1]]
    return any(d.kind != "passthrough" for a, b in itertools.pairwise(ends) for d in descs[a + 1 : b])


def fitted_with_output(plan: Plan, position: int, n_steps: int, transform: bool) -> bool:
    """Whether the fittable step at ``position`` is fitted with its ``fit_transform`` (:func:`fits_with`).

    Always in ``fit_transform``; in ``fit``, every step but the last (as
    scikit-learn's ``Pipeline.fit``). A traced call (``trace=N``) fits with
    ``fit`` and runs the step in its workers, so that its calls are traced.
    """
    if plan.trace is not None:
        return False
    return transform or position < n_steps - 1


def complete_batches_only(plan: Plan, data: Any, *, joined: bool) -> Any:
    """``data`` (a step's ``fit_transform`` output) as the workers would have given it.

    Without a short last minibatch when ``keep_incomplete_batch=False``; when
    ``joined`` (the composite's output), through ``data_joiner`` when one is set.
    """
    if not plan.minibatching.keep_incomplete and _containers.is_sequence(data):
        n = _containers.num_rows(data)
        data = _containers.slice_rows(data, 0, n - n % plan.minibatching.batch_size)
    joiner = plan.data_joiner
    if joined and joiner is not None:
        return joiner.transform([data]) if hasattr(joiner, "transform") else joiner([data])
    return data


def _through(plan: Plan, lifecycle: Lifecycle, k: int, monitor: CallMonitor) -> Callable[[Any], Any]:
    """``value`` transformed by the (fitted) stages before ``k``, each with its routed transform params."""

    def transform(value: Any) -> Any:
        rows = _containers.num_rows(value) if _containers.is_sequence(value) else None
        routed = RoutedParams(transform=dict(plan.routed.transform), n_samples=rows)
        return transform_range(plan.with_routed(routed), lifecycle, value, 0, k, monitor)

    return transform


def carry_config(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn``, to run in another thread under the caller's scikit-learn config.

    ``sklearn.get_config()`` is thread-local: a step fitted in a helper thread
    (a union's branches, fitted in parallel) would otherwise see the defaults
    (``assume_finite``, ``array_api_dispatch``, ``transform_output``...), as
    ``sklearn.utils.parallel.delayed`` avoids for joblib.
    """
    config = get_config()

    @functools.wraps(fn)
    def in_config(*args: Any, **kwargs: Any) -> Any:
        with config_context(**config):
            return fn(*args, **kwargs)

    return in_config


def fit_union(plan: Plan, lifecycle: Lifecycle, X: Any, y: Any, monitor: CallMonitor, transform: bool) -> Any:
    """Fit the branches of a union on the same ``X`` (a sequence); the joined outputs when ``transform``."""
    if plan.fit_mode == "partial":  # one pass: every branch partial_fit on each minibatch
        _first_minibatch_stateless(plan, X, y, union=True)
        return fit_partial(plan, lifecycle, X, y, monitor, transform)
    descs = plan.stages
    fittable = [d for d in descs if is_fittable(d.step)]
    # stateless scikit-learn branches (FunctionTransformer...) record their input features
    fit_stateless(descs, X, y, union=True)
    plan = _known_rows(plan, X)
    n_rows = _containers.num_rows(X)
    # per-sample metadata cut to the rows of X (fewer than given with fit_transform(trace=N))
    fit_params = {d.name: plan.routed.step_params(d.name, n_rows) for d in fittable}
    # in fit_transform, each branch's own fit_transform, as FeatureUnion (DESIGN.md section 6)
    in_parent = fitted_with_output(plan, 0, 1, transform)
    if transform and fittable and not plan.store.enabled and any(
        d.kind == "step" and not is_fittable(d.step) for d in descs
    ):
        plan.start_server()  # the other branches run in workers after the fits: its imports overlap them
    outputs: dict[str, Any] = {}
    if len(fittable) == 1:
        d = fittable[0]
        outputs[d.name] = fit_step(plan, lifecycle, d, X, y, monitor, fit_params[d.name], in_parent)
    elif fittable:
        fit_in_thread = carry_config(fit_step)  # the caller's scikit-learn config is thread-local
        with ThreadPoolExecutor(max_workers=len(fittable)) as pool:
            futures = {
                d.name: pool.submit(fit_in_thread, plan, lifecycle, d, X, y, monitor, fit_params[d.name], in_parent)
                for d in fittable
            }
            outputs = {name: future.result() for name, future in futures.items()}
    if not transform:
        return None
    if not in_parent or not fittable:
        return transform_range(plan, lifecycle, X, 0, 1, monitor)
    return _join_fitted(plan, lifecycle, X, outputs, monitor)


def _join_fitted(plan: Plan, lifecycle: Lifecycle, X: Any, fitted: dict[str, Any], monitor: CallMonitor) -> Any:
    """The union's output when its fittable branches gave theirs in the parent.

    The other branches (stateless steps, ``"passthrough"``) run in their
    workers, one branch per run; the outputs are joined in branch order, as
    each minibatch's are (``plan.join``: weights, names).
    """
    outputs = []
    for d in plan.stages:
        if d.kind == "drop":
            continue
        if d.name in fitted:
            outputs.append(complete_batches_only(plan, fitted[d.name], joined=False))
        else:
            # the other branches left out ("drop") keep each stage's position (hooks, stats)
            others_dropped = tuple(s if s is d else dataclasses.replace(s, kind="drop") for s in plan.stages)
            alone = dataclasses.replace(plan, stages=others_dropped, join=first_output, data_joiner=None)
            outputs.append(transform_range(alone, lifecycle, X, 0, 1, monitor))
    return complete_batches_only(plan, plan.join(outputs), joined=True)


def fit_one_stage(plan: Plan, lifecycle: Lifecycle, X: Any, y: Any, monitor: CallMonitor, transform: bool) -> Any:
    """Fit the single step of a ``ParallelWorkersWrapper``; its outputs when ``transform``."""
    desc = plan.stages[0]
    if is_fittable(desc.step):
        if not _containers.is_sequence(X):
            X = list(X)
        in_parent = fitted_with_output(plan, 0, 1, transform)
        params = plan.routed.step_params(desc.name, _containers.num_rows(X))
        out = fit_step(plan, lifecycle, desc, X, y, monitor, params, in_parent)
        if in_parent:  # the step's own fit_transform (DESIGN.md section 6)
            return complete_batches_only(plan, out, joined=True)
    return transform_range(plan, lifecycle, X, 0, 1, monitor) if transform else None


def trim_targets(y: Any, data: Any) -> Any:
    """Drop the targets of the rows that ``keep_incomplete_batch=False`` dropped."""
    if y is None or not _containers.is_sequence(y):
        return y
    try:
        n = _containers.num_rows(data)
    except TypeError:
        return y
    return _containers.slice_rows(y, 0, n) if n < _containers.num_rows(y) else y


# -- sources ---------------------------------------------------------------------------


class Source:
    """The input of a partial fit, opened once per pass.

    A sequence, a re-iterable (``iter()`` gives a fresh iterator each time)
    or a callable returning a fresh iterable can be read any number of times;
    a one-shot iterator (a generator) once.
    """

    def __init__(self, X: Any, passes: int, caller: str) -> None:
        self.X = X
        self.kind = "sequence" if _containers.is_sequence(X) else (
            "callable" if callable(X) and not hasattr(X, "__iter__") else "iterable"
        )
        if self.kind == "iterable" and not hasattr(X, "__iter__"):
            raise InvalidParameterError(
                f"The 'X' parameter of {caller}.fit must be an array-like, an iterable or a "
                f"callable returning an iterable. Got {X!r} instead."
            )
        if self.kind == "iterable" and passes > 1 and isinstance(X, Iterator):  # iter(X) is X
            raise InvalidParameterError(
                f"{caller} with fit_mode='partial' reads its input once per fittable step "
                f"(and once more to transform): {passes} passes here, but X is a one-shot "
                f"iterator ({type(X).__name__}). Pass a sequence, a re-iterable object, or a "
                "callable returning a fresh iterable (e.g. `lambda: read_chunks(path)`)."
            )

    def open(self) -> Any:
        """The input for one pass."""
        if self.kind == "callable":
            data = _containers.as_rows(self.X())
            if not (_containers.is_sequence(data) or hasattr(data, "__iter__")):
                raise TypeError(f"The callable given as X returned {type(data).__name__}, not an iterable.")
            return data
        return self.X


def resolve(X: Any) -> Any:
    """``X``, or what it returns when it is a callable source (``fit_mode="full"`` reads it once)."""
    if not _containers.is_sequence(X) and callable(X) and not hasattr(X, "__iter__"):
        return _containers.as_rows(X())
    return X


# -- partial fit -------------------------------------------------------------------------


def check_partial(caller: str, descs: Sequence[StageDesc]) -> list[int]:
    """The fittable steps; raise :class:`InvalidParameterError` for one without ``partial_fit``."""
    fittable = [k for k, d in enumerate(descs) if routable(d) and is_fittable(d.step)]
    for k in fittable:
        step = descs[k].step
        if not callable(getattr(step, "partial_fit", None)):
            raise InvalidParameterError(
                f"{caller} with fit_mode='partial' fits every fittable step "
                f"with partial_fit, but step {descs[k].name!r} ({type(step).__name__}) has no "
                "partial_fit. Use a step that has one (IncrementalPCA for PCA, "
                "MiniBatchKMeans for KMeans...) or fit_mode='full'."
            )
    return fittable


def _parent_minibatches(plan: Plan, X: Any) -> Generator[tuple[int, Any], None, None]:
    """The minibatches of ``X`` as the workers would get them, padding removed."""
    for batch in plan.minibatching.batches(X):
        yield batch.index, batch.unpadded()


def _reset(step: Any) -> None:
    """Make ``step`` unfitted again, in place (``fit`` starts afresh, as scikit-learn's does).

    ``partial_fit`` goes on from the state it finds: without this, a second
    ``fit`` would continue the first. The step keeps its identity (it is the
    object in ``steps``), its params, metadata requests and output config,
    as :func:`sklearn.base.clone` keeps them.
    """
    try:
        fresh = clone(step)
        state = vars(fresh)
    except Exception:  # not clonable (no get_params) or no __dict__: leave it as it is
        return
    vars(step).clear()
    vars(step).update(state)


def _partial_fit_stream(
    descs: list[StageDesc], stream: Generator[tuple[int, Any], None, None], y: Any, routed: RoutedParams, monitor: CallMonitor,
) -> None:
    """``partial_fit`` each step of ``descs`` on each minibatch of ``stream``, in order."""
    started = {d.name: 0.0 for d in descs}
    for d in descs:
        _reset(d.step)
    offset = 0
    pool = ThreadPoolExecutor(max_workers=len(descs)) if len(descs) > 1 else None
    # closed on error too: the run's workers stop now, not when the traceback is freed
    with contextlib.closing(stream), contextlib.ExitStack() as stack:
        if pool is not None:
            stack.callback(pool.shutdown)
        for index, batch in stream:
            n = _containers.num_rows(batch)
            if not n:
                continue
            y_batch = _containers.slice_rows(y, offset, offset + n) if _containers.is_sequence(y) else y

            def fit_one(d: StageDesc, batch: Any = batch, y_batch: Any = y_batch, start: int = offset,
                        index: int = index, n: int = n) -> None:
                t0 = time.perf_counter()
                try:
                    d.step.partial_fit(batch, y_batch, **routed.fit_params(d.name, start, start + n, "partial_fit"))
                except Exception as exc:
                    exc.add_note(
                        f"Raised fitting step {d.name!r} (in the parent, partial_fit on minibatch {index})."
                    )
                    raise
                started[d.name] += time.perf_counter() - t0

            if pool is None:
                fit_one(descs[0])
            else:
                for future in [pool.submit(carry_config(fit_one), d) for d in descs]:
                    future.result()
            offset += n
    for d in descs:
        monitor.fitted(d.name, started[d.name])


def fit_partial(plan: Plan, lifecycle: Lifecycle, X: Any, y: Any, monitor: CallMonitor, transform: bool) -> Any:
    """Fit with ``partial_fit``, minibatch by minibatch; the outputs for ``X`` if ``transform``.

    Sequential: one pass over the source per fittable step k, stages before
    k running in their workers. Union: one pass, each fittable branch fitted
    on the same minibatches (in threads of the parent).
    """
    descs = plan.stages
    union = plan.style == "union"
    fittable = check_partial(plan.caller, descs)
    routed = plan.routed
    fit_passes = (1 if fittable else 0) if union else len(fittable)
    source = Source(X, fit_passes + (1 if transform else 0), plan.caller)
    if y is not None and not _containers.is_sequence(y) and fit_passes:
        raise InvalidParameterError(
            f"{plan.caller} with fit_mode='partial' cuts y with the minibatches: y "
            f"must be a sequence (an array, a list...) or None. Got {type(y).__name__} instead."
        )
    if union and fittable:
        stream = _parent_minibatches(plan, source.open())
        _partial_fit_stream([descs[k] for k in fittable], stream, y, routed, monitor)
    else:
        for k in fittable:
            data = source.open()
            stream = run_stages(plan, lifecycle, data, 0, k, monitor) if k else _parent_minibatches(plan, data)
            _partial_fit_stream([descs[k]], stream, y, routed, monitor)
    if not transform:
        return None
    stop = 1 if union else len(descs)
    return transform_range(plan, lifecycle, source.open(), 0, stop, monitor)
