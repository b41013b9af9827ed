"""The same pipeline on Ray: a local instance here, a cluster address elsewhere.

Each worker is a Ray actor holding its own copy of its step; minibatches go
from actor to actor as object refs. ``with pipeline:`` keeps the actors for
several calls. It prints the outputs' agreement with scikit-learn, the time
of each call and the per-stage stats. Without Ray it says which extra to
install and exits. Run it with::

    pip install -e ".[examples]"  # once: what every example needs
    python examples/ray_pipeline.py
"""

from __future__ import annotations

import sys
import time

import numpy as np
from sklearn.decomposition import PCA
from sklearn.pipeline import FeatureUnion, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from neuraxle_stream import ParallelQueuedFeatureUnion, SequentialQueuedPipeline


def slow_features(X: np.ndarray) -> np.ndarray:
    """A minibatch step that takes its time, as feature extraction does."""
    time.sleep(0.02)
    return np.sin(X)


def main() -> None:
    try:
        import ray
    except ModuleNotFoundError as error:  # one line, no traceback
        sys.exit(f'This example needs {error.name}: pip install -e ".[examples]"')

    started = time.perf_counter()
    # On a cluster: ray.init(address="ray://head-node:10001"), or ray_address= on the pipeline.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"ray.init: {time.perf_counter() - started:.1f} s")

    X = np.random.RandomState(0).rand(2_000, 16)
    pipeline = SequentialQueuedPipeline(
        [("features", 2, FunctionTransformer(slow_features)), ("scale", 2, StandardScaler()), ("pca", PCA(4))],
        batch_size=100,
        backend="ray",
        ray_options={"pca": {"num_cpus": 0.5}},
    )
    expected = make_pipeline(FunctionTransformer(slow_features), StandardScaler(), PCA(4)).fit_transform(X)

    t = time.perf_counter()
    out = pipeline.fit_transform(X)  # actors for each fitting run, killed after it
    print(f"fit_transform on Ray: {time.perf_counter() - t:.1f} s, equal to scikit-learn: {np.allclose(out, expected)}")
    with pipeline:  # the actors live for the whole block
        for call in ("first (starts the actors)", "second (same actors)"):
            t = time.perf_counter()
            again = pipeline.transform(X)
            print(f"transform, {call}: {time.perf_counter() - t:.2f} s, equal: {np.allclose(again, expected)}")
    print(pipeline.stats_)

    union = ParallelQueuedFeatureUnion(
        [("scale", 2, StandardScaler()), ("pca", PCA(3))], batch_size=250, backend="ray"
    )
    joined = union.fit_transform(X)
    reference = FeatureUnion([("scale", StandardScaler()), ("pca", PCA(3))]).fit_transform(X)
    print(f"union on Ray: {joined.shape}, equal to FeatureUnion: {np.allclose(joined, reference)}")
    ray.shutdown()


if __name__ == "__main__":
    main()
