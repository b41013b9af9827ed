"""Check a custom step before you put it in a queued pipeline: ``check_step``.

In a queued pipeline each worker runs its own copy of a step, made by the
savers, on minibatches of the data. ``check_step`` tests what that needs:
the step can be saved and loaded, copies share no state, ``transform``
returns one row per input row, and any batch size gives the output of one
call on the whole data. It raises an ``AssertionError`` naming the first
check that fails.

This script checks a good step (a robust scaler written on BaseTransformer),
then two broken ones: one that centres each minibatch on its own mean, and
one that keeps what it learns in a class attribute, shared by every copy.

Run it with::

    pip install -e ".[examples]"  # once: what every example needs
    python examples/check_your_step.py
"""

from __future__ import annotations

from typing import Any

import numpy as np

from neuraxle_stream import BaseTransformer
from neuraxle_stream.testing import check_step


class RobustScale(BaseTransformer):
    """Centre on the median and divide by the interquartile range, learnt by ``fit``."""

    def __init__(self, quantile_range: tuple[float, float] = (25.0, 75.0)) -> None:
        self.quantile_range = quantile_range

    def fit(self, X: Any, y: Any = None) -> RobustScale:
        X = np.asarray(X, dtype=float)
        low, high = np.percentile(X, self.quantile_range, axis=0)
        self.center_ = np.median(X, axis=0)
        self.scale_ = np.where(high > low, high - low, 1.0)
        return self

    def transform(self, data_inputs: Any) -> np.ndarray:
        return (np.asarray(data_inputs, dtype=float) - self.center_) / self.scale_


class CenterEachBatch(BaseTransformer):
    """Broken: subtracts the mean of its minibatch, so the output depends on the batch size."""

    def transform(self, data_inputs: Any) -> np.ndarray:
        X = np.asarray(data_inputs, dtype=float)
        return X - X.mean(axis=0)


class SharedMedian(BaseTransformer):
    """Broken: keeps the median it learns in a class attribute, which every copy shares."""

    learnt: dict[str, np.ndarray] = {}

    def fit(self, X: Any, y: Any = None) -> SharedMedian:
        self.learnt["median"] = np.median(np.asarray(X, dtype=float), axis=0)
        return self

    def transform(self, data_inputs: Any) -> np.ndarray:
        return np.asarray(data_inputs, dtype=float) - self.learnt["median"]


def main() -> None:
    X = np.random.default_rng(0).normal(size=(20, 4))

    print("A good step: every check passes (or says why it does not apply).")
    print(check_step(RobustScale(), X, batch_sizes=(1, 3, 7, None)))

    for broken in (CenterEachBatch(), SharedMedian()):
        print(f"\n{type(broken).__name__}: {(type(broken).__doc__ or '').splitlines()[0]}")
        try:
            check_step(broken, X)
        except AssertionError as exc:
            # The first line names the failed check and the step; numpy's
            # comparison follows.
            print("\n".join(str(exc).splitlines()[:8]))
        else:
            raise SystemExit(f"check_step missed the bug of {type(broken).__name__}")


if __name__ == "__main__":
    main()
