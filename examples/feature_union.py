"""ParallelQueuedFeatureUnion next to scikit-learn's FeatureUnion.

Every minibatch goes to every branch; each branch runs in its own workers,
in parallel; per minibatch the branch outputs are joined in branch order along
the last axis (a horizontal stack for 2-D arrays). Fittable branches (PCA,
StandardScaler) are fitted on the same whole input, in parallel threads of the
parent, before the queued run. The result equals ``FeatureUnion``'s. Run it
with::

    pip install -e ".[examples]"  # once: what every example needs
    python examples/feature_union.py
"""

from __future__ import annotations

import time

import numpy as np
from sklearn.decomposition import PCA
from sklearn.pipeline import FeatureUnion
from sklearn.preprocessing import FunctionTransformer, PolynomialFeatures, StandardScaler

from neuraxle_stream import ParallelQueuedFeatureUnion


def log1p_abs(X: np.ndarray) -> np.ndarray:
    """A stateless feature map, as a FunctionTransformer would wrap it."""
    return np.log1p(np.abs(X))


def branches() -> list[tuple[str, object]]:
    return [
        ("pca", PCA(n_components=3)),
        ("scaled", StandardScaler()),
        ("poly", PolynomialFeatures(degree=2, include_bias=False)),
        ("log", FunctionTransformer(log1p_abs)),
    ]


def main() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5_000, 6))
    print(f"Input: {X.shape}")

    start = time.perf_counter()
    reference = FeatureUnion(branches()).fit_transform(X)
    print(f"sklearn FeatureUnion:        {time.perf_counter() - start:5.2f} s -> {reference.shape}")

    union = ParallelQueuedFeatureUnion(branches(), batch_size=500, backend="process")
    start = time.perf_counter()
    joined = union.fit_transform(X)
    print(f"ParallelQueuedFeatureUnion:  {time.perf_counter() - start:5.2f} s -> {joined.shape}")
    np.testing.assert_allclose(joined, reference, rtol=1e-10, atol=1e-12)
    print("Outputs equal: yes (assert_allclose)")
    print("(These branches are light: the queued time is mostly starting the worker processes.)\n")

    print("Columns of the joined output, in branch order:")
    column = 0
    for name, step in union.named_steps.items():
        width = step.transform(X[:1]).shape[1]  # each branch is fitted in the parent
        print(f"  {name:<7} columns {column:>2} to {column + width - 1:>2}  ({width} features)")
        column += width

    # Branches may be plain functions, applied to each item; 1-D outputs
    # (one value per item) become one column each, lists of items become tuples.
    words = ["stream", "of", "minibatches", "joined", "in", "order"]
    per_item = ParallelQueuedFeatureUnion(
        [("length", len), ("upper", str.upper)], batch_size=2, backend="thread"
    )
    print("\nPer-item functions on a list of words:")
    for row in per_item.transform(words):
        print(f"  {row}")


if __name__ == "__main__":
    main()
