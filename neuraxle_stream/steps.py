"""Steps: the units of work a queued pipeline runs in its workers.

A step is any object with ``transform(data_inputs)``: a subclass of
:class:`BaseTransformer`, any scikit-learn transformer, or a plain callable,
which is applied to each item of a minibatch (SPDL's ``pipe(op)``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from sklearn.base import BaseEstimator, TransformerMixin

# what workers call on any step lives apart, so that workers need no scikit-learn
from ._step_calls import PerItem
from ._step_calls import apply_worker_arguments as apply_worker_arguments
from ._step_calls import call_hook as call_hook
from ._step_calls import iter_items as iter_items

__all__ = [
    "BaseTransformer",
    "Identity",
    "NonFittableMixin",
]

#: Where ``save_to_run_info`` records go: set by the cache around each step it
#: runs in the parent (``fit``); ``None`` elsewhere, and the records are dropped.
RUN_INFO_RECORDS: ContextVar[list[dict[str, Any]] | None] = ContextVar(
    "neuraxle_stream_run_info_records", default=None
)


class BaseTransformer(TransformerMixin, BaseEstimator):
    """Base class of the steps of a queued pipeline.

    Subclass it and implement ``transform(self, data_inputs)``; implement
    ``fit(self, data_inputs, expected_outputs=None)`` too when the step learns
    from data. ``fit_transform`` returns the outputs, as in scikit-learn.

    Optional ``setup()`` and ``teardown()`` run once in each worker, after the
    step arrives there and after its last minibatch: load a model, open a file,
    release them. The parent never calls them during a queued run.

    Examples
    --------
    >>> import numpy as np
    >>> class AddOne(BaseTransformer):
    ...     def transform(self, data_inputs):
    ...         return np.asarray(data_inputs) + 1
    >>> AddOne().fit_transform(np.array([1, 2]))
    array([2, 3])
    """

    def fit(self, X: Any, y: Any = None) -> BaseTransformer:
        """Learn nothing; steps that learn override this. Returns ``self``.

        Subclasses may name the arguments ``(data_inputs, expected_outputs=None)``
        as Neuraxle does: the pipelines and ``fit_transform`` pass them by position.
        """
        return self

    def transform(self, data_inputs: Any) -> Any:
        """Transform a minibatch; subclasses implement it."""
        raise NotImplementedError(f"{type(self).__name__} must implement transform(data_inputs).")

    def fit_transform(self, X: Any, y: Any = None, **fit_params: Any) -> Any:
        """Fit on the data, then return its transformed outputs."""
        return self.fit(X, y, **fit_params).transform(X)

    def save_to_run_info(self, **records: Any) -> None:
        """Add json-like ``records`` to the ``run_info.json`` of this step's cached result.

        Kept when the pipeline has ``memory=`` set and the step calls it from
        ``fit`` (which runs in the parent); calls from ``transform``, which
        runs in the workers, are not recorded in this version.

        Examples
        --------
        >>> class Count(BaseTransformer):
        ...     def fit(self, X, y=None):
        ...         self.save_to_run_info(rows=len(X))
        ...         return self
        >>> Count().fit([1, 2]).__class__.__name__
        'Count'
        """
        target = RUN_INFO_RECORDS.get()
        if target is not None:
            target.append(dict(records))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        if type(self).fit is BaseTransformer.fit:
            tags.requires_fit = False
        return tags


class NonFittableMixin:
    """Mark a step as stateless: ``fit`` is a no-op and it never needs fitting.

    Put it before the base class: ``class Scale(NonFittableMixin, BaseTransformer)``.
    A stateless step never forces a fitting barrier in a queued pipeline.
    """

    def fit(self, X: Any, y: Any = None, **fit_params: Any) -> Any:
        """Do nothing and return ``self``."""
        return self

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()  # type: ignore[misc]
        tags.requires_fit = False
        return tags


class Identity(NonFittableMixin, BaseTransformer):
    """A step that returns its inputs unchanged.

    Examples
    --------
    >>> Identity().transform([1, 2, 3])
    [1, 2, 3]
    """

    def transform(self, data_inputs: Any) -> Any:
        """Return ``data_inputs`` as they are."""
        return data_inputs

    def __sklearn_tags__(self) -> Any:
        # Like FunctionTransformer(validate=False): any input, passed through.
        tags = super().__sklearn_tags__()
        tags.no_validation = True
        tags.input_tags.sparse = True
        tags.input_tags.allow_nan = True
        return tags


class ItemFunction(NonFittableMixin, BaseTransformer, PerItem):
    """Wraps a plain callable as a per-item step: ``list(map(func, minibatch))``.

    Its workers get its lean form, :class:`~neuraxle_stream._step_calls.PerItem`
    (see :func:`worker_form`).
    """

    def __init__(self, func: Callable[[Any], Any]) -> None:
        self.func = func

    def transform(self, data_inputs: Any) -> list[Any]:
        """Apply ``func`` to each item of the minibatch."""
        return list(map(self.func, iter_items(data_inputs)))

    def __repr__(self) -> str:
        return f"ItemFunction({getattr(self.func, '__qualname__', self.func)!r})"


def worker_form(step: Any) -> Any:
    """What travels to the workers for ``step``: a plain function's lean :class:`PerItem`, else the step."""
    return PerItem(step.func) if isinstance(step, ItemFunction) else step


def as_step(obj: Any) -> Any:
    """The step for an entry of ``steps``: itself, or an :class:`ItemFunction`."""
    if hasattr(obj, "transform"):
        return obj
    if callable(obj):
        return ItemFunction(obj)
    return obj


def step_display_name(step: Any) -> str:
    """The default name of an unnamed step: its lowercase class or function name."""
    if isinstance(step, ItemFunction):
        step = step.func
    if not hasattr(step, "transform") and callable(step):
        return str(getattr(step, "__name__", type(step).__name__)).lower()
    return type(step).__name__.lower()


def is_fittable(step: Any) -> bool:
    """Whether the step must be fitted before it transforms.

    True when its class defines its own ``fit`` (or it is a scikit-learn
    estimator that requires fitting) and it is not tagged ``requires_fit=False``.
    """
    if isinstance(step, ItemFunction) or not callable(getattr(step, "fit", None)):
        return False
    if isinstance(step, BaseTransformer) and type(step).fit is BaseTransformer.fit:
        return False
    tags_method = getattr(step, "__sklearn_tags__", None)
    if tags_method is not None:
        try:
            return bool(tags_method().requires_fit)
        except Exception:  # a third-party estimator with broken tags: assume stateful
            return True
    return True


