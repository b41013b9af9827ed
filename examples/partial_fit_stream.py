"""Fit a pipeline on a stream, minibatch by minibatch: ``fit_mode="partial"``.

The source is a callable that returns a fresh generator of raw records (as a
reader of files too large for memory would). A per-item feature extractor
runs in 2 worker processes; ``StandardScaler`` and ``IncrementalPCA`` are
fitted with ``partial_fit`` in the parent, on the extractor's ordered output,
one minibatch at a time, while the workers go on. Each fittable step takes
one pass over the source, so the callable is called twice by ``fit``. The
fitted steps equal ``partial_fit`` called step by step on the same
minibatches, and the source never runs more than the queues' window ahead of
the fit. Run it with::

    pip install -e ".[examples]"  # once: what every example needs
    python examples/partial_fit_stream.py
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
from sklearn.decomposition import IncrementalPCA
from sklearn.preprocessing import StandardScaler

from neuraxle_stream import SequentialQueuedPipeline

N_RECORDS = 8_000
BATCH_SIZE = 200


def records() -> Iterator[int]:
    """Raw records, produced on demand: a stand-in for rows read from disk."""
    yield from range(N_RECORDS)


def features(record: int) -> np.ndarray:
    """A per-item feature extractor: a little CPU work per record."""
    rng = np.random.default_rng(record)
    signal = rng.normal(size=256).cumsum()
    return np.array([signal.mean(), signal.std(), signal.min(), signal.max(), signal[-1], np.abs(signal).mean()])


class Produced:
    """Counts the records the source has given (to show the source is read lazily)."""

    def __init__(self) -> None:
        self.count = 0
        self.passes = 0

    def __call__(self) -> Iterator[int]:
        self.passes += 1
        for record in records():
            self.count += 1
            yield record


def main() -> None:
    source = Produced()
    pipeline = SequentialQueuedPipeline(
        [("features", 2, features), ("scale", StandardScaler()), ("pca", IncrementalPCA(n_components=3))],
        batch_size=BATCH_SIZE, backend="process", fit_mode="partial",
    )
    start = time.perf_counter()
    pipeline.fit(source)
    print(f"Fitted on {N_RECORDS} streamed records in {time.perf_counter() - start:.2f} s "
          f"({source.passes} passes over the source, one per fittable step)")
    print(f"StandardScaler saw {int(pipeline['scale'].n_samples_seen_)} rows; "
          f"IncrementalPCA explained variance ratio: {np.round(pipeline['pca'].explained_variance_ratio_, 3)}")

    # The reference: partial_fit step by step on the same minibatches (held in memory here, to compare).
    X = np.array([features(r) for r in records()])
    scale, pca = StandardScaler(), IncrementalPCA(n_components=3)
    batches = [X[i : i + BATCH_SIZE] for i in range(0, len(X), BATCH_SIZE)]
    for batch in batches:
        scale.partial_fit(batch)
    for batch in batches:
        pca.partial_fit(scale.transform(batch))
    np.testing.assert_allclose(pipeline["scale"].mean_, scale.mean_)
    np.testing.assert_allclose(pipeline["pca"].components_, pca.components_, rtol=1e-8, atol=1e-10)
    print("Fitted state equals sequential partial_fit on the same minibatches: yes")

    # The source is read lazily: fitting only the scaler, stop after a few minibatches.
    lazy = Produced()
    seen: list[int] = []

    class Watch(StandardScaler):
        def partial_fit(self, X, y=None, sample_weight=None):  # type: ignore[no-untyped-def]
            seen.append(lazy.count)
            return super().partial_fit(X, y, sample_weight)

    watched = SequentialQueuedPipeline(
        [("features", 2, features), ("scale", Watch())], batch_size=BATCH_SIZE, backend="thread", fit_mode="partial"
    )
    watched.fit(lazy)
    print(f"When the first minibatch was fitted, the source had given {seen[0]} of {N_RECORDS} records "
          f"(at most the in-flight window of the queues)")


if __name__ == "__main__":
    main()
