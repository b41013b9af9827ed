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

from collections.abc import Mapping, Sequence
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
    process_routing,
)
from sklearn.utils.validation import _is_arraylike_not_scalar, _num_samples

from . import _containers
from ._validation import StageDesc
from .exceptions import InvalidParameterError

__all__ = ["MinibatchParams", "RoutedParams", "Style", "metadata_router", "routable", "route_params"]

#: How a composite takes fit params with routing off: as ``Pipeline`` (``step__param``),
#: as ``FeatureUnion`` (every param to every branch), or as a meta-estimator (to its step).
Style = Literal["pipeline", "union", "wrapper"]


def routable(desc: StageDesc) -> bool:
    """Whether a stage is a step of the user's (not ``"passthrough"``, ``None`` or ``"drop"``)."""
    return desc.kind == "step" and desc.step is not None and not isinstance(desc.step, str)


def metadata_router(owner: BaseEstimator, descs: Sequence[StageDesc], style: Style, fit_method: str) -> MetadataRouter:
    """The :class:`~sklearn.utils.metadata_routing.MetadataRouter` of a queued composite.

    Each step is fitted with ``fit`` (``partial_fit`` in ``fit_mode="partial"``:
    ``fit_method``) in the parent, then runs ``transform`` in its workers: as
    scikit-learn's ``Pipeline`` maps a step without ``fit_transform``. Union
    branches are not transformed by the union's ``fit``, as in ``FeatureUnion``.
    """
    router = MetadataRouter(owner=owner)
    union = style == "union"
    for d in descs:
        if not routable(d):
            continue
        mapping = MethodMapping().add(caller="fit", callee=fit_method)
        if not union:
            mapping.add(caller="fit", callee="transform")
        (
            mapping.add(caller="fit_transform", callee=fit_method)
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
    if not _routing_enabled():
        return RoutedParams(_manual(type(owner).__name__, style, method, params, names), {}, n)
    routed = process_routing(owner, method, **params)
    return RoutedParams(
        {name: dict(routed[name].get(fit, {})) for name in names},
        {name: dict(routed[name].get("transform", {})) for name in names},
        n,
    )
