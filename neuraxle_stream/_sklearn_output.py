"""scikit-learn's output API on the queued composites.

What ``sklearn.pipeline.Pipeline`` and ``FeatureUnion`` give their users on
the output side, with scikit-learn's own utilities wherever they fit:

- feature names (``get_feature_names_out``), with ``"passthrough"`` and
  ``"drop"`` entries and the union's ``verbose_feature_names_out``;
- ``set_output(transform="pandas")``: every step's output is set (so the
  workers' copies give DataFrames) and the composite's own output is a
  DataFrame named by ``get_feature_names_out``, with the input's index;
- the union's ``transformer_weights``;
- the notebook diagram (``_sk_visual_block_``), each stage labelled with its
  workers.

scikit-learn's automatic wrapping of ``transform`` (``_SetOutputMixin``) is
switched off on the composites and replaced by :func:`wrap_method`: a traced
call returns a ``TraceResult``, not data, and minibatch outputs of a NumPy
input carry one ``RangeIndex`` per minibatch, which the composite replaces by
the input's.

Over ~400 lines, on purpose: scikit-learn's output side of a composite
(feature names, ``set_output``, weights, passthrough, the HTML diagram) kept
together, each piece matching one of ``sklearn.pipeline``'s.
"""

from __future__ import annotations

import contextlib
import functools
import numbers
import sys
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import numpy as np
from scipy import sparse
from sklearn.exceptions import NotFittedError
from sklearn.utils import get_tags
from sklearn.utils._available_if import _AvailableIfDescriptor
from sklearn.utils._set_output import (
    ADAPTERS_MANAGER,
    _get_output_config,
    _safe_set_output,
    check_library_installed,
)
from sklearn.utils.validation import _check_feature_names_in, _get_feature_names, _num_features

try:
    from sklearn.utils._repr_html.estimator import _VisualBlock
except ImportError:  # scikit-learn < 1.7
    from sklearn.utils._estimator_html_repr import _VisualBlock

from . import _containers
from ._branches import prefixed
from ._validation import StageDesc
from .exceptions import InvalidParameterError
from .plan import chain_groups

__all__ = [
    "check_transformer_weights",
    "input_attribute",
    "pipeline_feature_names",
    "pipeline_names_available",
    "record_input",
    "set_output",
    "union_feature_names",
    "union_names_available",
    "visual_block",
    "wrap_method",
    "wrap_methods",
]

class Composite(Protocol):
    """What these helpers read of a queued composite: its parsed steps (and its ``__dict__``)."""

    def _stage_descs(self) -> list[StageDesc]: ...


class Union(Composite, Protocol):
    """A queued union, as these helpers read it."""

    @property
    def transformer_weights(self) -> dict[str, float] | None: ...

    @property
    def verbose_feature_names_out(self) -> bool: ...


_C = TypeVar("_C", bound=Composite)

#: The containers ``set_output`` offers on the queued composites.
OUTPUTS = ("default", "pandas")


# -- set_output ------------------------------------------------------------------------------


def set_output(composite: _C, transform: str | None) -> _C:
    """``set_output`` of a composite: its own output, and every step's, as sklearn's composites do."""
    if transform is not None and transform not in OUTPUTS:
        extra = " Polars output is not supported by the queued composites in this version." \
            if transform == "polars" else ""
        raise InvalidParameterError(
            f"The 'transform' parameter of {type(composite).__name__}.set_output must be a str "
            f"among {{'default', 'pandas'}} or None. Got {transform!r} instead.{extra}"
        )
    if transform is None:
        return composite
    for d in composite._stage_descs():
        # A step without set_output (a plain function, a step that does not name
        # its features) keeps its usual output, where sklearn's Pipeline would
        # refuse: the composite's own output is converted all the same.
        if d.kind == "step" and hasattr(d.step, "set_output"):
            _safe_set_output(d.step, transform=transform)
    config = dict(getattr(composite, "_sklearn_output_config", {}))
    config["transform"] = transform
    composite.__dict__["_sklearn_output_config"] = config
    return composite


def output_config(estimator: object) -> str:
    """``"default"`` or ``"pandas"``: the estimator's own, else scikit-learn's global ``transform_output``."""
    return str(_get_output_config("transform", estimator)["dense"])


def wrap_output(estimator: Composite, out: Any, X: Any) -> Any:
    """The composite's output ``out`` for input ``X`` in the container ``set_output`` asked for.

    As scikit-learn's own wrapping, only a composite that names its features
    (``get_feature_names_out``) converts its output; a DataFrame output of
    any composite gets the input's index.
    """
    config = output_config(estimator)
    if config == "default":
        return out
    pd = sys.modules.get("pandas")
    named = hasattr(estimator, "get_feature_names_out")
    if not named and not (pd is not None and isinstance(out, pd.DataFrame)):
        return out
    if config not in OUTPUTS:
        raise ValueError(f"{type(estimator).__name__} cannot give {config!r} output in this version.")
    if sparse.issparse(out):  # scikit-learn's message
        raise ValueError(
            "The transformer outputs a scipy sparse matrix. "
            "Try to set the transformer output to a dense array or disable "
            f"{config.capitalize()} output with set_output(transform='default')."
        )
    pd = check_library_installed(config)
    columns = None
    if named:
        try:
            columns = getattr(estimator, "get_feature_names_out")()  # noqa: B009 (named: checked above)
        except (AttributeError, NotFittedError, ValueError):
            # names that need fitted state the steps lack: keep the joined columns
            if not isinstance(out, pd.DataFrame):
                raise
    if isinstance(out, pd.DataFrame):
        out = out.copy(deep=False)  # never rename the columns of a frame someone else holds
    frame = ADAPTERS_MANAGER.adapters[config].create_container(out, X, columns=columns)
    n = len(frame)
    if isinstance(X, pd.DataFrame | pd.Series):
        if len(X) == n:
            frame.index = X.index
    else:  # each minibatch of a NumPy input came back with its own RangeIndex
        frame.index = pd.RangeIndex(n)
    return frame


def wrap_method(method: Callable[..., Any]) -> Callable[..., Any]:
    """``transform`` / ``fit_transform`` giving the container ``set_output`` asked for."""

    @functools.wraps(method)
    def wrapped(self: Composite, X: Any, *args: Any, **kwargs: Any) -> Any:
        out = method(self, X, *args, **kwargs)
        if kwargs.get("trace") is not None:  # a TraceResult, not data
            return out
        return wrap_output(self, out, X)

    wrapped._neuraxle_wraps_output = True  # type: ignore[attr-defined]
    return wrapped


def wrap_methods(cls: type) -> None:
    """Wrap the ``transform`` and ``fit_transform`` that ``cls`` itself defines.

    ``fit_transform`` is there only when every step transforms (see
    :func:`steps_transform`), as scikit-learn's duck typing has it.
    """
    for name in ("transform", "fit_transform"):
        method = cls.__dict__.get(name)
        if method is not None and not getattr(method, "_neuraxle_wraps_output", False):
            wrapped: Any = wrap_method(method)
            if name == "fit_transform":
                wrapped = _AvailableIfExplained(wrapped, steps_transform, attribute_name=name)
            setattr(cls, name, wrapped)


def steps_transform(composite: Composite) -> bool:
    """Whether every step given can transform (``"passthrough"``-like values aside).

    Raises ``AttributeError`` naming the first that cannot: scikit-learn's
    ``Pipeline`` has no ``fit_transform`` when its last step has neither
    ``fit_transform`` nor ``transform``; here every step runs ``transform``.
    """
    steps = getattr(composite, "steps", None)
    if not isinstance(steps, list | tuple):
        return True  # not steps at all: fit_transform says so (InvalidParameterError)
    for entry in steps:
        step = entry[-1] if isinstance(entry, tuple) and entry else entry
        if step is None or isinstance(step, str) or hasattr(step, "transform") or callable(step):
            continue
        raise AttributeError(f"The step {step!r} of {type(composite).__name__} has no transform method.")
    return True


class _AvailableIfExplained(_AvailableIfDescriptor):
    """``available_if`` whose ``AttributeError`` also says why, in the check's words.

    scikit-learn's ``Pipeline`` and ``FeatureUnion`` raise "Transformer tr1
    (type Transf) does not provide get_feature_names_out" from the call itself;
    here the attribute is absent (``hasattr`` is false) and its error carries
    the same words, after "This 'X' has no attribute ...".
    """

    def _check(self, obj: Any, owner: Any) -> None:
        try:
            super()._check(obj, owner=owner)
        except AttributeError as error:
            if error.__cause__ is None:
                raise
            raise AttributeError(f"{error}: {error.__cause__}") from error.__cause__


def available_if_explained(check: Callable[[Any], bool]) -> Callable[[Callable[..., Any]], Any]:
    """As ``sklearn.utils.metaestimators.available_if``, the check's message in the error."""
    return lambda fn: _AvailableIfExplained(fn, check, attribute_name=fn.__name__)


def union_array_api_support(descs: list[StageDesc]) -> bool:
    """``FeatureUnion``'s ``array_api_support`` tag: every branch supports the array API."""
    return all(
        d.kind != "step" or (hasattr(d.step, "__sklearn_tags__") and get_tags(d.step).array_api_support)
        for d in descs
    )


# -- input features, stateless steps ---------------------------------------------------------


def record_input(composite: Composite, X: Any) -> None:
    """Keep what ``fit`` saw of ``X``: its number of features and, for a DataFrame, their names.

    What ``n_features_in_`` and ``feature_names_in_`` give when no step that
    takes ``X`` knows them (a ``"passthrough"``, a plain function). Only an
    array-like ``X`` is looked at (a stream is not read for it).
    """
    seen: dict[str, Any] = {}
    if _containers.is_sequence(X):
        with contextlib.suppress(TypeError):  # a list of scalars or strings, a 1-D array: no features
            seen["n_features_in_"] = _num_features(X)
        try:
            names = _get_feature_names(X)
        except TypeError:  # column names of mixed types
            names = None
        if names is not None:
            seen["feature_names_in_"] = names
    composite.__dict__["_input_seen"] = seen


def input_attribute(composite: Composite, name: str, steps: list[Any]) -> Any:
    """``n_features_in_`` / ``feature_names_in_`` of a composite whose ``steps`` take its input as it is.

    The first of these steps that has the attribute gives it (as scikit-learn's
    ``Pipeline`` and ``FeatureUnion`` delegate to their first step); else what
    the composite's last ``fit`` saw of its input; else ``AttributeError``.
    """
    for step in steps:
        if hasattr(step, name):
            return getattr(step, name)
    seen = composite.__dict__.get("_input_seen") or {}
    if name in seen:
        return seen[name]
    raise AttributeError(
        f"{type(composite).__name__!r} object has no attribute {name!r}: not fitted, or its first "
        "step records no such attribute and fit was given no array-like input"
        + (" with feature names" if name == "feature_names_in_" else "")
        + "."
    )


# -- feature names ---------------------------------------------------------------------------


def pipeline_names_available(pipeline: Composite) -> bool:
    """Whether every step (but ``"passthrough"``) names its output features.

    Raises ``AttributeError`` with scikit-learn's message otherwise, so that
    ``available_if`` shows it.
    """
    return _names_available(
        pipeline,
        lambda d: f"Estimator {d.name} does not provide get_feature_names_out. "
        "Did you mean to call pipeline[:-1].get_feature_names_out()?",
    )


def _names_available(composite: Composite, message: Callable[[Any], str]) -> bool:
    """Whether every stage that runs a step names its output features; else ``AttributeError(message(desc))``."""
    try:
        descs = composite._stage_descs()
    except InvalidParameterError:
        return False
    for d in descs:
        if d.kind == "step" and not hasattr(d.step, "get_feature_names_out"):
            raise AttributeError(message(d))
    return True


def pipeline_feature_names(pipeline: Composite, input_features: Any) -> Any:
    """As ``sklearn.pipeline.Pipeline.get_feature_names_out``: through each step in turn."""
    names = input_features
    for d in pipeline._stage_descs():
        if d.kind == "step":
            names = d.step.get_feature_names_out(names)
    return names


def union_names_available(union: Union) -> bool:
    """Whether every branch (but ``"drop"``, ``"passthrough"``) names its output features."""
    return _names_available(
        union,
        lambda d: f"Transformer {d.name} (type {type(d.step).__name__}) does not provide get_feature_names_out.",
    )


class _NoFittedInput:
    """Stands for a fitted step when no branch of a union knows its input features."""


def union_feature_names(union: Union, input_features: Any) -> np.ndarray:
    """As ``sklearn.pipeline.FeatureUnion.get_feature_names_out``.

    A ``"passthrough"`` branch names the input features, as the fitted
    ``FunctionTransformer(feature_names_out="one-to-one")`` scikit-learn puts
    in its place would: from ``input_features``, else from the input seen by
    the first fitted branch, else by the union's ``fit``.
    """
    descs = [d for d in union._stage_descs() if d.kind != "drop"]
    pairs = []
    for d in descs:
        if d.kind == "passthrough":
            names = _check_feature_names_in(_fitted_input(union), input_features)
        else:
            names = d.step.get_feature_names_out(input_features)
        pairs.append((d.name, names))
    return prefixed(union, pairs)


def _fitted_input(union: Union) -> Any:
    # the union's n_features_in_ / feature_names_in_: its branches', else its fit's input's
    return union if hasattr(union, "n_features_in_") else _NoFittedInput()


# -- the union's join -----------------------------------------------------------------------


def check_transformer_weights(union: Union, names: list[str]) -> None:
    """Raise :class:`InvalidParameterError` for a weight of no branch (of ``names``), or not a number."""
    weights = union.transformer_weights
    if not weights:
        return
    for name, weight in weights.items():
        if name not in names:
            raise InvalidParameterError(
                f'Attempting to weight transformer "{name}", but it is not present in transformer_list. '
                f"The steps of {type(union).__name__} are: {', '.join(map(repr, names))}."
            )
        if not isinstance(weight, numbers.Real) or isinstance(weight, bool):
            raise InvalidParameterError(
                f"The weight of step {name!r} in the 'transformer_weights' parameter of "
                f"{type(union).__name__} must be a real number. Got {weight!r} instead."
            )


# -- notebook diagram --------------------------------------------------------------------------


def _label(d: StageDesc, group: tuple[str, ...], n_workers: int) -> str:
    if d.kind != "step":
        return f"{d.name}: {d.kind}"
    what = getattr(d.step, "__name__", None) or type(d.step).__name__
    plural = "" if n_workers == 1 else "s"
    # "name: ..." keeps scikit-learn's parameter prefixes (it reads the name up to the colon)
    label = f"{d.name}: {what} × {n_workers} worker{plural}"
    return label if len(group) < 2 else f"{label}, chained ({'+'.join(group)})"


def _details(d: StageDesc, group: tuple[str, ...], n_workers: int) -> str:
    if d.kind != "step":
        return d.kind
    plural = "" if n_workers == 1 else "s"
    if len(group) > 1 and d.name != group[0]:
        others = ", ".join(repr(g) for g in group if g != d.name)
        return f"{n_workers} worker{plural} shared with {others}, no queue of its own\n{d.step!r}"
    queue = d.max_queue_size if d.max_queue_size is not None else 2 * n_workers
    shared = "" if len(group) < 2 else " shared with " + ", ".join(repr(g) for g in group[1:])
    return f"{n_workers} worker{plural}{shared}, input queue of {queue} minibatches\n{d.step!r}"


def _chains(composite: Composite, descs: list[StageDesc], kind: str) -> dict[str, tuple[tuple[str, ...], int]]:
    """For each step of a pipeline, the chain it runs in and its workers (as ``Plan.specs`` decides)."""
    steps = [d for d in descs if d.kind == "step"]
    chain = getattr(composite, "chain", False) if kind == "serial" else False
    backend = getattr(composite, "backend", None)
    if backend is None:
        backend = "process" if getattr(composite, "use_processes", True) else "thread"
    groups = chain_groups(steps, chain, backend, getattr(composite, "ray_options", None))
    return {d.name: (tuple(g.name for g in group), k) for group, k in groups for d in group}


def visual_block(composite: Composite, kind: str) -> _VisualBlock:
    """The composite's diagram: its stages in series (``kind="serial"``) or side by side."""
    descs = composite._stage_descs()
    chains = _chains(composite, descs, kind)
    shown = [chains.get(d.name, ((d.name,), d.n_workers)) for d in descs]
    estimators: list[Any] = [d.step if d.kind == "step" else d.kind for d in descs]
    if kind == "serial":
        # a stage's label is shown only around a block, so each stage is a block of one step
        estimators = [_VisualBlock("serial", [e], dash_wrapped=False) for e in estimators]
    return _VisualBlock(
        kind,
        estimators,
        names=[_label(d, *chain) for d, chain in zip(descs, shown)],
        name_details=[_details(d, *chain) for d, chain in zip(descs, shown)],
        dash_wrapped=False,
    )
