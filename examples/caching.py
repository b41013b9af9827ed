"""Caching with ``memory=``: a second run computes nothing, a changed step recomputes
itself and the steps after it only, and an interrupted stream resumes.

Each step's output is kept per minibatch on disk, under a key made of the step
(class, ``cache_version``, params, fitted state) and the key of its input, so:

- the same call again reads every output back (hits only);
- changing one step's parameter recomputes that step and the later ones;
- a parameter named in ``cache_ignore_params`` changes nothing;
- ``pipeline.cache_info()`` prints the hits and misses of the last call.

Run it with::

    pip install -e ".[examples]"  # once: what every example needs
    python examples/caching.py
"""

from __future__ import annotations

import tempfile
import time
from typing import Any

import numpy as np

from neuraxle_stream import BaseTransformer, Cache, NonFittableMixin, SequentialQueuedPipeline


class SlowScale(NonFittableMixin, BaseTransformer):
    """Multiply by ``factor``, slowly; ``verbose`` does not change the result."""

    cache_ignore_params = ("verbose",)
    cache_version = 1  # bump when transform() changes

    def __init__(self, factor: float = 2.0, verbose: bool = False) -> None:
        self.factor = factor
        self.verbose = verbose

    def transform(self, data_inputs: Any) -> np.ndarray:
        time.sleep(0.01)
        return np.asarray(data_inputs, dtype=float) * self.factor


class Center(BaseTransformer):
    """Subtract the column means learnt by ``fit`` (cached as a fitted step)."""

    def fit(self, X: Any, y: Any = None) -> Center:
        self.mean_ = np.asarray(X, dtype=float).mean(axis=0)
        self.save_to_run_info(rows=len(X))  # lands in this fit's run_info.json
        return self

    def transform(self, data_inputs: Any) -> np.ndarray:
        return np.asarray(data_inputs, dtype=float) - self.mean_


def report(title: str, pipeline: SequentialQueuedPipeline, seconds: float) -> None:
    info = pipeline.cache_info()
    print(f"{title}: {seconds:.2f} s, hits {info.hits}, misses {info.misses}")


def main() -> None:
    X = np.arange(400.0).reshape(200, 2)
    with tempfile.TemporaryDirectory() as cache:
        pipeline = SequentialQueuedPipeline(
            [("scale", 2, SlowScale(2.0)), ("center", Center()), ("rescale", SlowScale(0.5))],
            batch_size=10, backend="thread", memory=cache,
        )
        for title in ("cold run", "warm run"):
            t0 = time.perf_counter()
            out = pipeline.fit_transform(X)
            report(title, pipeline, time.perf_counter() - t0)
        print(pipeline.cache_info())

        pipeline.set_params(rescale__factor=0.25)  # recomputes 'rescale' only
        t0 = time.perf_counter()
        pipeline.fit_transform(X)
        report("rescale changed", pipeline, time.perf_counter() - t0)
        print(pipeline.cache_info())

        pipeline.set_params(scale__verbose=True)  # listed in cache_ignore_params
        t0 = time.perf_counter()
        pipeline.fit_transform(X)
        report("verbose changed", pipeline, time.perf_counter() - t0)

        print(f"cache size: {Cache(cache).size()} bytes")
        np.testing.assert_allclose(out, (X * 2 - (X * 2).mean(axis=0)) * 0.5)


if __name__ == "__main__":
    main()
