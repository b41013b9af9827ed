"""Metadata routing of the queued composites (scikit-learn's SLEP006 API).

With ``sklearn.set_config(enable_metadata_routing=True)``,
``fit(X, y, **params)`` gives each step the metadata it requested
(``set_fit_request``, ``set_partial_fit_request``, ``set_transform_request``),
through the router that ``get_metadata_routing`` describes; without it, the
pipeline takes ``step__param`` (as ``sklearn.pipeline.Pipeline``), the union
gives every param to every branch (as ``FeatureUnion``), a wrapper to its step.

Per-sample metadata (a param with one row per row of ``X``) is cut with the
data: the rows a step is fitted on in ``fit_mode="full"``, the minibatch in
``fit_mode="partial"`` and on its way to the workers' ``transform``.

The estimator hands these functions itself only where scikit-learn's routing
API asks for it (``MetadataRouter(owner=...)``, ``process_routing``), with its
parsed stages and its routing ``style``; the result is a :class:`RoutedParams`
that the call's plan carries.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator
from sklearn.utils.metadata_routing import (
    MetadataRouter,
    MethodMapping,
    _raise_for_params,
    _routing_enabled,
    get_routing_for_object,
    process_routing,
)
from sklearn.utils.validation import _is_arraylike_not_scalar, _num_samples

from . import _containers
from ._validation import StageDesc
from .exceptions import InvalidParameterError
from .steps import is_fittable

__all__ = [
    "MinibatchParams", "RoutedParams", "Style", "check_transform_input", "fits_with", "metadata_router",
    "routable", "route_params", "transformed_metadata",
]

#: How a composite takes fit params with routing off: as ``Pipeline`` (``step__param``),
#: as ``FeatureUnion`` (every param to every branch), or as a meta-estimator (to its step).
Style = Literal["pipeline", "union", "wrapper"]


def routable(desc: StageDesc) -> bool:
    """Whether a stage is a step of the user's (not ``"passthrough"``, ``None`` or ``"drop"``)."""
    return desc.kind == "step" and desc.step is not None and not isinstance(desc.step, str)


def metadata_router(owner: BaseEstimator, descs: Sequence[StageDesc], style: Style, fit_method: str) -> MetadataRouter:
    """The :class:`~sklearn.utils.metadata_routing.MetadataRouter` of a queued composite.

    As scikit-learn's ``Pipeline`` and ``FeatureUnion`` route (see
    :func:`fits_with`): a fittable step is fitted in the parent with its own
    ``fit_transform`` (or ``fit`` then ``transform``), except the last step of a
    pipeline's ``fit``, which only ``fit`` reaches; a stateless step runs
    ``transform`` in its workers. In ``fit_mode="partial"`` (``fit_method``)
    each step gets ``partial_fit`` and ``transform``.
    """
    router = MetadataRouter(owner=owner)
    partial = fit_method == "partial_fit"
    union = style == "union"
    for i, d in enumerate(descs):
        if not routable(d):
            continue
        mapping = MethodMapping()
        if partial or not is_fittable(d.step):
            mapping.add(caller="fit", callee=fit_method)
            if not union and (partial or i < len(descs) - 1):  # fit never runs a stateless last step
                mapping.add(caller="fit", callee="transform")
            mapping.add(caller="fit_transform", callee=fit_method).add(caller="fit_transform", callee="transform")
        else:
            for caller in ("fit", "fit_transform"):
                for callee in fits_with(d.step, caller, last=i == len(descs) - 1, union=union):
                    mapping.add(caller=caller, callee=callee)
        mapping.add(caller="transform", callee="transform")
        router.add(method_mapping=mapping, **{d.name: d.step})
    return router


def fits_with(step: Any, caller: str, *, last: bool, union: bool) -> tuple[str, ...]:
    """The methods of a fittable ``step`` that the composite's ``caller`` (``fit``, ``fit_transform``) calls.

    scikit-learn's rule (``Pipeline._fit``, ``_fit_transform_one``,
    ``FeatureUnion``): ``fit_transform`` when the step has one, else ``fit``
    then ``transform``; but only ``fit`` for a union branch or the last step
    of a pipeline in ``fit``, whose output nothing reads.
    """
    if caller == "fit" and (last or union):
        return ("fit",)
    if union:  # FeatureUnion.fit_transform routes all three, calls fit_transform when it exists
        return ("fit_transform", "fit", "transform")
    return ("fit_transform",) if hasattr(step, "fit_transform") else ("fit", "transform")


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
    #: for the steps fitted with their own ``fit_transform`` (see :func:`fits_with`)
    fit_transform: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: the params as the caller gave them (for ``transform_input``)
    raw: dict[str, Any] = field(default_factory=dict)

    def step_params(self, name: str, stop: int | None = None) -> dict[str, dict[str, Any]]:
        """The params of step ``name`` fitted in the parent on rows ``[0, stop)``, by method."""
        return {
            "fit": self.fit_params(name, 0, stop),
            "fit_transform": self._rows(self.fit_transform.get(name) or {}, 0, stop, name, "fit_transform"),
            "transform": self._rows(self.transform.get(name) or {}, 0, stop, name, "transform"),
        }

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
            {name: self._rows(p, 0, n_rows, name, "fit_transform") for name, p in self.fit_transform.items()},
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


def _manual(
    caller: str, style: Style, method: str, params: dict[str, Any], names: list[str]
) -> dict[str, dict[str, Any]]:
    """Routing off: the fit params of each step, as scikit-learn's composites take them."""
    if style != "pipeline":  # FeatureUnion, and a meta-estimator's single step: everything
        return {name: dict(params) for name in names}
    per_step: dict[str, dict[str, Any]] = {name: {} for name in names}
    cls = caller
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


def route_params(
    owner: BaseEstimator, descs: Sequence[StageDesc], style: Style, fit_method: str,
    method: str, params: dict[str, Any], X: Any, y: Any,
) -> RoutedParams:
    """Validate and route the params of ``owner.<method>`` (``fit``, ``fit_transform``, ``transform``).

    ``owner`` is the composite (scikit-learn's ``process_routing`` reads its
    ``get_metadata_routing``); ``fit_method`` is ``"fit"`` or ``"partial_fit"``.
    """
    names = [d.name for d in descs if routable(d)]
    if _containers.is_sequence(X):
        n: int | None = _containers.num_rows(X)
    elif y is not None and _containers.is_sequence(y):
        n = _containers.num_rows(y)
    else:
        n = None
    if not params:
        return RoutedParams(n_samples=n)
    if method == "transform":
        _raise_for_params(params, owner, "transform")
    fit = fit_method
    if not _routing_enabled():  # scikit-learn passes a step's params to each of its fit methods
        manual = _manual(type(owner).__name__, style, method, params, names)
        return RoutedParams(manual, {}, n, manual)
    routed = process_routing(owner, method, **params)
    steps = {d.name: d.step for d in descs if routable(d)}
    by_method = {name: _by_method(steps[name], routed[name], fit) for name in names}
    return RoutedParams(
        {name: p[fit] for name, p in by_method.items()},
        {name: p["transform"] for name, p in by_method.items()},
        n,
        {name: p["fit_transform"] for name, p in by_method.items()},
        dict(params),
    )


def _by_method(step: Any, routed: Any, fit: str) -> dict[str, dict[str, Any]]:
    """A step's routed params for ``fit``, ``transform`` and ``fit_transform``.

    A step routed only ``fit_transform`` (scikit-learn's mapping) that runs
    ``fit`` and ``transform`` apart all the same (a traced call) gets, for
    each, the part of them that method requests.
    """
    out = {m: dict(routed.get(m, {})) for m in (fit, "transform", "fit_transform")}
    if out["fit_transform"] and not (out[fit] or out["transform"]):
        requests = get_routing_for_object(step)
        for m in (fit, "transform"):
            consumed = requests.consumes(m, list(out["fit_transform"]))
            out[m] = {k: v for k, v in out["fit_transform"].items() if k in consumed}
    return out


def check_transform_input(transform_input: Sequence[str] | None) -> None:
    """``transform_input`` needs metadata routing, as in scikit-learn's ``Pipeline``."""
    if transform_input is not None and not _routing_enabled():
        raise ValueError(
            "The `transform_input` parameter can only be set if metadata routing is enabled. "
            "You can enable metadata routing using `sklearn.set_config(enable_metadata_routing=True)`."
        )


def transformed_metadata(
    params: dict[str, dict[str, Any]], names: Sequence[str], transform: Callable[[Any], Any]
) -> dict[str, dict[str, Any]]:
    """``params`` (by method) with those in ``names`` given through ``transform`` (the fitted steps before).

    As ``Pipeline._get_metadata_for_step``: a tuple is transformed item by
    item; each param once.
    """
    done: dict[str, Any] = {}

    def transformed(name: str, value: Any) -> Any:
        if name not in done:
            done[name] = tuple(transform(v) for v in value) if isinstance(value, tuple) else transform(value)
        return done[name]

    return {
        method: {k: transformed(k, v) if k in names else v for k, v in method_params.items()}
        for method, method_params in params.items()
    }
