"""What a worker calls on any step (``setup`` / ``teardown``, worker arguments), and per-item functions.

Apart from :mod:`~neuraxle_stream.steps` (which defines ``BaseTransformer``
on scikit-learn's base classes) so that a worker process whose steps are
plain functions never imports scikit-learn: workers import only what their
steps need.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["PerItem", "apply_worker_arguments", "call_hook", "iter_items"]


def call_hook(step: Any, name: str) -> None:
    """Call the optional ``setup`` or ``teardown`` method of a step, if any."""
    method = getattr(step, name, None)
    if callable(method):
        method()


def apply_worker_arguments(step: Any, arguments: Iterable[tuple[str, Any]]) -> None:
    """Set per-worker ``(param, value)`` pairs on a worker's copy of a step."""
    pairs = dict(arguments)
    if not pairs:
        return
    params = step.get_params(deep=True) if hasattr(step, "get_params") else {}
    known = {k: v for k, v in pairs.items() if k in params}
    if known:
        step.set_params(**known)
    for key, value in pairs.items():
        if key not in known:
            setattr(step, key, value)


def iter_items(data: Any) -> Iterable[Any]:
    """The items of a minibatch: rows of a DataFrame, elements otherwise."""
    if hasattr(data, "iloc") and hasattr(data, "columns"):
        return (data.iloc[i] for i in range(len(data)))
    return iter(data)


class PerItem:
    """A plain callable as its workers run it: ``list(map(func, minibatch))``.

    The worker form of :class:`~neuraxle_stream.steps.ItemFunction` (which is
    a scikit-learn estimator, for the parent): what travels to the workers,
    so that they need no scikit-learn for it.
    """

    def __init__(self, func: Callable[[Any], Any]) -> None:
        self.func = func

    def transform(self, data_inputs: Any) -> list[Any]:
        """Apply ``func`` to each item of the minibatch."""
        return list(map(self.func, iter_items(data_inputs)))

    def __repr__(self) -> str:
        return f"PerItem({getattr(self.func, '__qualname__', self.func)!r})"
