"""A scikit-learn pipeline run sequentially, then queued on threads and processes.

The pipeline is StandardScaler -> PCA -> a CPU-heavy custom step (random
features mixed by ``tanh`` several times). ``make_pipeline`` runs it in one
thread; :class:`~neuraxle_stream.SequentialQueuedPipeline` cuts the data into
minibatches and gives the heavy step two workers of its own. Fitting follows
scikit-learn: the scaler is fitted on the whole input in the parent, then PCA
on the whole scaled output, then the fitted copies go to the workers. The
outputs are checked equal, and the wall times printed.

BLAS is limited to one thread (``threadpoolctl``) so that the speedup comes
from the pipeline's workers, not from BLAS threads. Run it with::

    pip install -e ".[examples]"  # once: what every example needs
    python examples/sequential_vs_queued.py
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from neuraxle_stream import BaseTransformer, NonFittableMixin, SequentialQueuedPipeline


class RandomFeatureMixer(NonFittableMixin, BaseTransformer):
    """Project rows on ``n_features`` random directions, then mix them ``rounds`` times.

    Stateless (``NonFittableMixin``): its weights come from ``random_state``,
    so it never forces a fitting barrier. Each row is independent of the
    others, so the output does not depend on the batch size.
    """

    def __init__(self, n_features: int = 256, rounds: int = 30, random_state: int = 0) -> None:
        self.n_features = n_features
        self.rounds = rounds
        self.random_state = random_state

    def transform(self, data_inputs: np.ndarray) -> np.ndarray:
        X = np.asarray(data_inputs, dtype=np.float64)
        rng = np.random.default_rng(self.random_state)
        W = rng.standard_normal((X.shape[1], self.n_features)) / np.sqrt(X.shape[1])
        V = rng.standard_normal((self.n_features, self.n_features)) / np.sqrt(self.n_features)
        Z = np.tanh(X @ W)
        for _ in range(self.rounds):
            Z = np.tanh(Z @ V)
        return Z


def timed(func: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """Call ``func(*args)``; return its result and the wall time in seconds."""
    start = time.perf_counter()
    out = func(*args)
    return out, time.perf_counter() - start


def main() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12_000, 40)) * rng.uniform(0.5, 20, size=40)

    print(f"Input: {X.shape[0]} rows x {X.shape[1]} features")
    print("Steps: StandardScaler -> PCA(16) -> RandomFeatureMixer(256 features, 30 rounds)")
    print("BLAS limited to 1 thread; the queued 'mix' step has 2 workers\n")
    print(f"  {'':<34} {'fit':>8} {'transform':>10} {'speedup':>8}")

    with threadpool_limits(limits=1):
        sequential = make_pipeline(StandardScaler(), PCA(16), RandomFeatureMixer())
        _, fit_seconds = timed(sequential.fit, X)
        reference, t_seq = timed(sequential.transform, X)
        print(f"  {'sklearn make_pipeline':<34} {fit_seconds:6.2f} s {t_seq:8.2f} s {1:7.2f}x")

        for label, backend in (("queued on threads", "thread"), ("queued on processes", "process")):
            pipeline = SequentialQueuedPipeline(
                [
                    ("scale", StandardScaler()),  # (name, step): n_workers_per_step workers
                    ("pca", PCA(16)),
                    ("mix", 2, RandomFeatureMixer()),  # (name, n_workers, step)
                ],
                batch_size=250,
                backend=backend,
            )
            # fit: the scaler is fitted on X in the parent; a queued run of the
            # scaler gives PCA its whole input; then PCA is fitted in the parent.
            _, fit_seconds = timed(pipeline.fit, X)
            out, seconds = timed(pipeline.transform, X)
            print(f"  {label:<34} {fit_seconds:6.2f} s {seconds:8.2f} s {t_seq / seconds:7.2f}x")
            np.testing.assert_allclose(out, reference, rtol=1e-9, atol=1e-12)

    print(f"\nOutputs equal to make_pipeline's: yes (assert_allclose), shape {out.shape}")
    ratio = pipeline.named_steps["pca"].explained_variance_ratio_.sum()
    print(f"named_steps['pca'] is fitted in the parent: it explains {ratio:.1%} of the variance")
    print("Each queued call starts its workers and stops them at the end; that is in the times.")


if __name__ == "__main__":
    main()
