"""Fitting a queued pipeline: metadata routing and the two fit modes.

Routing follows scikit-learn's metadata routing API (SLEP006). With
``sklearn.set_config(enable_metadata_routing=True)``, ``fit(X, y, **params)``
gives each step the metadata it requested (``set_fit_request``,
``set_partial_fit_request``, ``set_transform_request``), through the router
that ``get_metadata_routing`` describes; without it, the pipeline takes
``step__param`` (as ``sklearn.pipeline.Pipeline``), the union gives every
param to every branch (as ``FeatureUnion``), a wrapper to its step.

Per-sample metadata (a param with one row per row of ``X``) is cut with the
data: the rows a step is fitted on in ``fit_mode="full"``, the minibatch in
``fit_mode="partial"`` and on its way to the workers' ``transform``.

``fit_mode="partial"``::

    source ──▶ stages 0..k-1 (workers, in parallel) ──▶ ordered outputs ──▶ step k.partial_fit
                                                       (parent, minibatch by minibatch)

Each fittable step k is fitted by its own pass over the source, on the
outputs of the stages before it, fitted already: the result of calling
``partial_fit`` step by step on the same minibatches. A one-shot iterator
allows a single pass; more need a sequence, a re-iterable or a callable
returning a fresh iterable.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Generator, Iterator, Mapping
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.utils.metadata_routing import (
    MetadataRouter,
    MethodMapping,
    _raise_for_params,
    _routing_enabled,
    process_routing,
)
from sklearn.utils.validation import _is_arraylike_not_scalar, _num_samples

from . import _containers
from .exceptions import InvalidParameterError
from .steps import is_fittable

__all__ = ["RoutedParams", "Source", "fit_partial", "metadata_router", "route_params"]


# -- routing -------------------------------------------------------------------------


def _routable(desc: Any) -> bool:
    """Whether a stage is a step of the user's (not ``"passthrough"``, ``None`` or ``"drop"``)."""
    return getattr(desc, "kind", "step") == "step" and desc.step is not None and not isinstance(desc.step, str)


def _style(pipeline: Any) -> str:
    from .pipeline import ParallelWorkersWrapper
    from .union import ParallelQueuedFeatureUnion

    if isinstance(pipeline, ParallelQueuedFeatureUnion):
        return "union"
    if isinstance(pipeline, ParallelWorkersWrapper):
        return "wrapper"
    return "pipeline"


def _fit_method(pipeline: Any) -> str:
    return "partial_fit" if getattr(pipeline, "fit_mode", "full") == "partial" else "fit"


def metadata_router(pipeline: Any) -> MetadataRouter:
    """The :class:`~sklearn.utils.metadata_routing.MetadataRouter` of a queued composite.

    Each step is fitted with ``fit`` (``partial_fit`` in ``fit_mode="partial"``)
    in the parent, then runs ``transform`` in its workers: as scikit-learn's
    ``Pipeline`` maps a step without ``fit_transform``. Union branches are not
    transformed by the union's ``fit``, as in ``FeatureUnion``.
    """
    router = MetadataRouter(owner=pipeline)
    fit = _fit_method(pipeline)
    union = _style(pipeline) == "union"
    for d in pipeline._stage_descs():
        if not _routable(d):
            continue
        mapping = MethodMapping().add(caller="fit", callee=fit)
        if not union:
            mapping.add(caller="fit", callee="transform")
        (
            mapping.add(caller="fit_transform", callee=fit)
            .add(caller="fit_transform", callee="transform")
            .add(caller="transform", callee="transform")
        )
        router.add(method_mapping=mapping, **{d.name: d.step})
    return router


def _n_rows(value: Any) -> int | None:
    """The rows of ``value`` when it may be per-sample metadata, else ``None``.

    As scikit-learn's ``_check_method_params`` sees a param: an array-like
    (``_is_arraylike_not_scalar``, or sparse) with ``_num_samples`` rows.
    Strings, mappings, sets, scalars and 0-d arrays are passed whole.
    """
    if isinstance(value, str | bytes | Mapping | AbstractSet):
        return None
    if not (_is_arraylike_not_scalar(value) or sp.issparse(value)):
        return None
    try:
        return int(_num_samples(value))
    except TypeError:
        return None


def _is_per_sample(value: Any, n: int | None) -> bool:
    """Whether ``value`` has one row per sample (scikit-learn's ``_check_method_params`` rule)."""
    return n is not None and _n_rows(value) == n


def _cut(value: Any, start: int, stop: int) -> Any:
    if not _containers.is_sequence(value):
        value = np.asarray(value)
    return _containers.slice_rows(value, start, stop)


@dataclass
class RoutedParams:
    """The metadata of one call, by step: for its ``fit`` (or ``partial_fit``) and its ``transform``.

    ``n_samples`` is the length of per-sample metadata (the rows of ``X``, or
    of ``y`` for a source without a length): a param with that many rows is
    cut with the data, as in scikit-learn. ``None``: ``X`` is streamed, its
    length unknown until its end; then a param is cut by the running row
    offset when it has at least as many rows as the first minibatch (see
    :meth:`_streamed_cut`).
    """

    fit: dict[str, dict[str, Any]] = field(default_factory=dict)
    transform: dict[str, dict[str, Any]] = field(default_factory=dict)
    n_samples: int | None = None

    def fit_params(
        self, name: str, start: int = 0, stop: int | None = None, method: str = "fit"
    ) -> dict[str, Any]:
        """The fit params of step ``name``, per-sample ones cut to rows ``[start, stop)``."""
        params = self.fit.get(name) or {}
        return self._rows(params, start, stop, name, method)

    def _rows(
        self, params: dict[str, Any], start: int, stop: int | None, name: str = "", method: str = "fit"
    ) -> dict[str, Any]:
        n = self.n_samples
        end = n if stop is None else stop
        if not params or end is None or (start == 0 and end == n):
            return dict(params)
        keys = self._per_sample(params, start, end, name, method)
        return {k: _cut(v, start, end) if k in keys else v for k, v in params.items()}

    def _per_sample(self, params: dict[str, Any], start: int, stop: int, name: str, method: str) -> set[str]:
        """The keys of the per-sample params of ``params``, for the minibatch of rows ``[start, stop)``."""
        if self.n_samples is not None:
            return {k for k, v in params.items() if _is_per_sample(v, self.n_samples)}
        return {k for k, v in params.items() if self._streamed_cut(k, v, start, stop, name, method)}

    @staticmethod
    def _streamed_cut(key: str, value: Any, start: int, stop: int, name: str, method: str) -> bool:
        """Whether ``value`` is cut to rows ``[start, stop)`` of a streamed ``X`` (length unknown).

        A param is per-sample when it has at least as many rows as the first
        minibatch (``start == 0``): it is then cut by the running offset, and
        must have a row for every row the stream goes on to yield. A shorter
        param (``classes=``...) is passed whole to every minibatch, as
        scikit-learn passes a param without one row per sample. The rule
        needs no state: minibatches are contiguous from row 0, so a param
        cut once is cut until it runs short, which raises.
        """
        rows = _n_rows(value)
        if rows is None:
            return False
        if rows >= stop:
            return True
        if start == 0 or rows < start:  # shorter than the first minibatch: never cut
            return False
        raise InvalidParameterError(
            f"The {key!r} param of step {name!r} ({method}) has {rows} rows, but {stop} rows of X "
            "have reached the step so far. X is streamed (its length is unknown and no y was given), "
            "so a param with at least as many rows as the first minibatch is cut with the minibatches "
            "and needs one row per row of X."
        )

    def head(self, n_rows: int) -> RoutedParams:
        """The params of the first ``n_rows`` rows of ``X`` only (for ``trace=N``), per-sample ones cut."""
        return RoutedParams(
            {name: self._rows(p, 0, n_rows, name, "fit") for name, p in self.fit.items()},
            {name: self._rows(p, 0, n_rows, name, "transform") for name, p in self.transform.items()},
            n_rows,
        )

    def for_stages(self, names: list[str]) -> MinibatchParams | None:
        """What the minibatches of a run through stages ``names`` carry, or ``None`` if nothing."""
        wanted = {n: p for n, p in self.transform.items() if p and n in names}
        return MinibatchParams(wanted, self) if wanted else None


@dataclass
class MinibatchParams:
    """The ``transform`` metadata of the stages of one run, cut per minibatch."""

    per_step: dict[str, dict[str, Any]]
    routed: RoutedParams

    def at(self, start: int, n: int, n_pad: int = 0) -> dict[str, dict[str, Any]]:
        """The params of the minibatch of rows ``[start, start + n)``, padded by ``n_pad`` rows."""
        out = {}
        for name, params in self.per_step.items():
            cut = self.routed._rows(params, start, start + n, name, "transform")
            if n_pad:
                keys = self.routed._per_sample(params, start, start + n, name, "transform")
                cut = {k: _pad(v, n_pad) if k in keys else v for k, v in cut.items()}
            out[name] = cut
        return out


def _pad(value: Any, n_pad: int) -> Any:
    """``value`` with its last row repeated ``n_pad`` times (for a padded minibatch)."""
    n = _containers.num_rows(value)
    last = _containers.slice_rows(value, n - 1, n)
    return _containers.pad_rows(value, n_pad, last[0] if isinstance(last, list) else np.asarray(last)[0])


def _manual(pipeline: Any, method: str, params: dict[str, Any], names: list[str]) -> dict[str, dict[str, Any]]:
    """Routing off: the fit params of each step, as scikit-learn's composites take them."""
    style = _style(pipeline)
    if style != "pipeline":  # FeatureUnion, and a meta-estimator's single step: everything
        return {name: dict(params) for name in names}
    per_step: dict[str, dict[str, Any]] = {name: {} for name in names}
    cls = type(pipeline).__name__
    for key, value in params.items():
        step, sep, param = key.partition("__")
        if not sep:
            example = names[-1] if names else "stepname"
            raise ValueError(
                f"{cls}.{method} does not accept the {key} parameter. "
                "You can pass parameters to specific steps of your pipeline using the "
                f"stepname__parameter format, e.g. `{cls}.{method}(X, y, {example}__{key}={key})`."
            )
        if step not in per_step:
            raise ValueError(
                f"{cls}.{method} got the parameter {key!r} for step {step!r}, which is not "
                f"a step of the pipeline. Steps: {names!r}."
            )
        per_step[step][param] = value
    return per_step


def route_params(pipeline: Any, method: str, params: dict[str, Any], X: Any, y: Any) -> RoutedParams:
    """Validate and route the params of ``pipeline.<method>`` (``fit``, ``fit_transform``, ``transform``)."""
    names = [d.name for d in pipeline._stage_descs() if _routable(d)]
    if _containers.is_sequence(X):
        n: int | None = _containers.num_rows(X)
    elif y is not None and _containers.is_sequence(y):
        n = _containers.num_rows(y)
    else:
        n = None
    if not params:
        return RoutedParams(n_samples=n)
    if method == "transform":
        _raise_for_params(params, pipeline, "transform")
    fit = _fit_method(pipeline)
    if not _routing_enabled():
        return RoutedParams(_manual(pipeline, method, params, names), {}, n)
    routed = process_routing(pipeline, method, **params)
    return RoutedParams(
        {name: dict(routed[name].get(fit, {})) for name in names},
        {name: dict(routed[name].get("transform", {})) for name in names},
        n,
    )


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


def check_partial(pipeline: Any, descs: list[Any]) -> list[int]:
    """The fittable steps; raise :class:`InvalidParameterError` for one without ``partial_fit``."""
    fittable = [k for k, d in enumerate(descs) if _routable(d) and is_fittable(d.step)]
    for k in fittable:
        step = descs[k].step
        if not callable(getattr(step, "partial_fit", None)):
            raise InvalidParameterError(
                f"{type(pipeline).__name__} with fit_mode='partial' fits every fittable step "
                f"with partial_fit, but step {descs[k].name!r} ({type(step).__name__}) has no "
                "partial_fit. Use a step that has one (IncrementalPCA for PCA, "
                "MiniBatchKMeans for KMeans...) or fit_mode='full'."
            )
    return fittable


def _parent_minibatches(pipeline: Any, X: Any, settings: dict[str, Any]) -> Generator[tuple[int, Any], None, None]:
    """The minibatches of ``X`` as the workers would get them, padding removed."""
    padded: dict[int, int] = {}
    for index, (batch, *_) in enumerate(pipeline._minibatches(X, settings, padded)):
        if index in padded:
            batch = _containers.slice_rows(batch, 0, padded.pop(index))
        yield index, batch


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
    pipeline: Any, descs: list[Any], stream: Generator[tuple[int, Any], None, None], y: Any,
    routed: RoutedParams, monitor: Any,
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

            def fit_one(d: Any, batch: Any = batch, y_batch: Any = y_batch, start: int = offset,
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
                for future in [pool.submit(fit_one, d) for d in descs]:
                    future.result()
            offset += n
    for d in descs:
        monitor.fitted(d.name, started[d.name])


def fit_partial(
    pipeline: Any, X: Any, y: Any, settings: dict[str, Any], monitor: Any, transform: bool, union: bool = False
) -> Any:
    """Fit ``pipeline`` with ``partial_fit``, minibatch by minibatch; its outputs if ``transform``.

    Sequential: one pass over the source per fittable step k, stages before
    k running in their workers. Union: one pass, each fittable branch fitted
    on the same minibatches (in threads of the parent).
    """
    descs = pipeline._stage_descs()
    fittable = check_partial(pipeline, descs)
    routed: RoutedParams = settings.get("_routed") or RoutedParams()
    fit_passes = (1 if fittable else 0) if union else len(fittable)
    source = Source(X, fit_passes + (1 if transform else 0), type(pipeline).__name__)
    if y is not None and not _containers.is_sequence(y) and fit_passes:
        raise InvalidParameterError(
            f"{type(pipeline).__name__} with fit_mode='partial' cuts y with the minibatches: y "
            f"must be a sequence (an array, a list...) or None. Got {type(y).__name__} instead."
        )
    if union and fittable:
        stream = _parent_minibatches(pipeline, source.open(), settings)
        _partial_fit_stream(pipeline, [descs[k] for k in fittable], stream, y, routed, monitor)
    else:
        for k in fittable:
            data = source.open()
            stream = (
                pipeline._run(data, 0, k, settings, monitor) if k else _parent_minibatches(pipeline, data, settings)
            )
            _partial_fit_stream(pipeline, [descs[k]], stream, y, routed, monitor)
    if not transform:
        return pipeline
    stop = 1 if union else len(descs)
    return pipeline._transform_range(source.open(), 0, stop, settings, monitor)

