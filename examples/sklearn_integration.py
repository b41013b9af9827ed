"""Queued pipelines as scikit-learn citizens: feature names, pandas output, weights.

A ``SequentialQueuedPipeline`` and a ``ParallelQueuedFeatureUnion`` give what
``Pipeline`` and ``FeatureUnion`` give on the same steps, beyond the numbers:

- ``get_feature_names_out()``, ``branch__feature`` in a union;
- ``set_output(transform="pandas")``: every step's copy in the workers gives a
  DataFrame, and the composite's output is a DataFrame with those names and
  the input's index;
- ``transformer_weights`` and ``"drop"`` / ``"passthrough"`` branches;
- the notebook diagram, each stage with its workers (``_repr_html_``);
- ``GridSearchCV`` over a process pipeline, faster with warm workers: each
  clone's call takes the idle workers of the previous one instead of starting
  its own (``worker_idle_timeout=0`` shows the cost without them).

Run it with::

    pip install -e ".[examples]"  # once: what every example needs
    python examples/sklearn_integration.py
"""

from __future__ import annotations

import sys
import time

import numpy as np
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from neuraxle_stream import (
    ParallelQueuedFeatureUnion,
    SequentialQueuedPipeline,
    config_context,
    shutdown_workers,
)

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

    # 4. GridSearchCV clones and calls the pipeline 9 times: warm workers start once.
    grid_search_speed_up()


def grid_search_speed_up() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 10))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    feat = SequentialQueuedPipeline(
        [("scale", 2, StandardScaler()), ("pca", 2, PCA(n_components=4))], batch_size=250, backend="process"
    )
    search = GridSearchCV(
        Pipeline([("feat", feat), ("clf", LogisticRegression())]), {"clf__C": [0.1, 1.0]}, cv=2
    )
    times = {}
    for label, idle_timeout in (("new workers for every call", 0), ("warm workers", 30)):
        with config_context(worker_idle_timeout=idle_timeout):
            start = time.perf_counter()
            search.fit(X, y)
            times[label] = time.perf_counter() - start
    for label, seconds in times.items():
        print(f"GridSearchCV on processes, {label}: {seconds:.2f} s")
    print(f"best params: {search.best_params_}")
    shutdown_workers()  # the idle workers would exit by themselves after 30 s


if __name__ == "__main__":
    with pd.option_context("display.width", 120, "display.max_columns", 10):
        main()
