"""Queued pipelines as scikit-learn citizens: feature names, pandas output, weights.

A ``SequentialQueuedPipeline`` and a ``ParallelQueuedFeatureUnion`` give what
``Pipeline`` and ``FeatureUnion`` give on the same steps, beyond the numbers:

- ``get_feature_names_out()``, ``branch__feature`` in a union;
- ``set_output(transform="pandas")``: every step's copy in the workers gives a
  DataFrame, and the composite's output is a DataFrame with those names and
  the input's index;
- ``transformer_weights`` and ``"drop"`` / ``"passthrough"`` branches;
- the notebook diagram, each stage with its workers (``_repr_html_``).

Run it with::

    pip install -e ".[examples]"  # once: what every example needs
    python examples/sklearn_integration.py
"""

from __future__ import annotations

import sys

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from neuraxle_stream import ParallelQueuedFeatureUnion, SequentialQueuedPipeline

try:
    import pandas as pd
except ModuleNotFoundError as error:  # one line, no traceback
    sys.exit(f'This example needs {error.name}: pip install -e ".[examples]"')


def make_data(n: int = 400) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 90, n).astype(float),
            "income": rng.lognormal(10, 1, n),
            "height": rng.normal(170, 10, n),
            "city": rng.choice(["Paris", "Lyon", "Nice"], n),
        },
        index=pd.RangeIndex(1000, 1000 + n, name="customer"),
    )


def main() -> None:
    frame = make_data()
    numbers = ["age", "income", "height"]

    # 1. A pipeline whose output is a DataFrame with feature names and the input's index.
    encode = ColumnTransformer(
        [("num", StandardScaler(), numbers), ("cat", OneHotEncoder(sparse_output=False), ["city"])]
    )
    pipeline = SequentialQueuedPipeline(
        [("encode", 2, encode), ("pca", 2, PCA(n_components=3))], batch_size=50, backend="process"
    ).set_output(transform="pandas")
    out = pipeline.fit_transform(frame)
    reference = Pipeline([("encode", encode), ("pca", PCA(n_components=3))]).set_output(transform="pandas")
    pd.testing.assert_frame_equal(out, reference.fit_transform(frame))
    print("SequentialQueuedPipeline with set_output(transform='pandas'):")
    print(out.head(), end="\n\n")

    # 2. A union with transformer_weights, a passthrough branch and a dropped one.
    weights = {"scaled": 10.0, "pca": 0.5}
    branches = [("scaled", StandardScaler()), ("pca", PCA(n_components=2)), ("raw", "passthrough"), ("off", "drop")]
    union = ParallelQueuedFeatureUnion(
        [(name, 2, step) for name, step in branches],
        batch_size=64,
        backend="thread",
        transformer_weights=weights,
    ).set_output(transform="pandas")
    joined = union.fit_transform(frame[numbers])
    expected = FeatureUnion(branches, transformer_weights=weights).set_output(transform="pandas")
    pd.testing.assert_frame_equal(joined, expected.fit_transform(frame[numbers]))
    print("ParallelQueuedFeatureUnion with transformer_weights", weights)
    print("feature names:", list(union.get_feature_names_out()))
    print(joined.head(3).round(3), end="\n\n")

    # 3. The notebook diagram shows each stage with its workers.
    html = pipeline._repr_html_()
    print("diagram labels:", [label for label in ("encode: ColumnTransformer × 2 workers", "pca: PCA × 2 workers")
                              if label in html])


if __name__ == "__main__":
    with pd.option_context("display.width", 120, "display.max_columns", 10):
        main()
