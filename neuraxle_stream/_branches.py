"""How a union joins one minibatch's branch outputs: weighted, side by side, FeatureUnion's names.

:class:`BranchJoin` is built by the union for each call's plan and called by
the call layer (and the cached run) on each minibatch's lane outputs, so that
neither needs the union at hand.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from sklearn.pipeline import FeatureUnion

from . import _containers

__all__ = ["BranchJoin", "no_branch_output", "prefixed"]


class _NamesOut(Protocol):
    """What FeatureUnion's prefixing of feature names reads (a union, or its join)."""

    @property
    def verbose_feature_names_out(self) -> bool: ...


def prefixed(union: _NamesOut, pairs: list[tuple[str, Any]]) -> np.ndarray:
    """``branch__feature`` names, or plain ones checked unique: FeatureUnion's own rule."""
    # FeatureUnion's method reads only ``self.verbose_feature_names_out``, which the union has.
    names: np.ndarray = FeatureUnion._add_prefix_for_feature_names_out(union, pairs)
    return names


def _weighted(out: Any, weight: Any) -> Any:
    """``out * weight``; a list or tuple item by item, so the container (and the join) stays the same."""
    if weight is None:
        return out
    if isinstance(out, list | tuple):  # items of any kind (a nested union gives tuples): each weighted
        return type(out)([_weighted(item, weight) for item in out])
    if isinstance(out, str | bytes):  # ``"ab" * 2`` would repeat it
        raise TypeError(f"transformer_weights cannot weight a {type(out).__name__} output: {out!r}.")
    return out * weight


@dataclass(frozen=True)
class BranchJoin:
    """A union's join of one minibatch's branch outputs: weighted, side by side.

    Built by the union for each call's plan (``names``: its branches that run,
    in order), so that the call layer joins without the union at hand. With
    ``pandas`` (``set_output(transform="pandas")`` or the global config),
    DataFrames are joined with FeatureUnion's names (``verbose_feature_names_out``);
    otherwise as :func:`~neuraxle_stream._containers.join_columns` joins them.
    """

    names: tuple[str, ...]
    weights: dict[str, float]
    pandas: bool
    verbose_feature_names_out: bool = True

    def __call__(self, outputs: list[Any]) -> Any:
        outputs = [_weighted(out, self.weights.get(name)) for out, name in zip(outputs, self.names)]
        names = list(self.names)
        pd = sys.modules.get("pandas")
        if pd is not None and self.pandas and all(isinstance(out, pd.DataFrame) for out in outputs):
            columns = prefixed(self, [(name, [str(c) for c in out.columns]) for name, out in zip(names, outputs)])
            index = outputs[0].index
            frame = pd.concat([out.set_axis(index, axis=0).set_axis(range(out.shape[1]), axis=1)
                               for out in outputs], axis=1)
            frame.columns = columns
            return frame
        if len(outputs) == 1 and getattr(outputs[0], "ndim", None) != 1:
            return outputs[0]
        return _containers.join_columns(outputs, names)  # a 1-D output becomes one column, one branch or more


def no_branch_output(X: Any) -> np.ndarray:
    """What a union whose branches are all ``"drop"`` gives, as FeatureUnion: no columns."""
    return np.zeros((_containers.num_rows(X), 0))
