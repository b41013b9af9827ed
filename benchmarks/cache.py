"""A warm cached run against a cold one: ``python -m benchmarks.cache``.

The reference workload (DESIGN.md section 5, shortened to ``N_ITEMS`` items)
with a third stage that reduces each item to one float: ``Build -> Compute ->
Reduce`` on process workers, ``memory=`` a fresh temporary directory. Rows:

- ``no cache``: ``memory=None``, the stages overlapping as usual;
- ``cold``: an empty cache: every stage computed and every per-minibatch
  output written (stages run one after the other, see docs/caching.md);
- ``warm``: the same call again: every minibatch's final output is read back,
  no step is called (``cache_info()`` shows hits only).

Standalone: it writes nothing but its line(s) on stdout; no other benchmark
file reads it.
"""

from __future__ import annotations

import shutil
import tempfile
import time

import numpy as np

from neuraxle_stream import SequentialQueuedPipeline

from .steps import Build, Compute, Reduce

N_ITEMS = 600
BATCH_SIZE = 16


def _pipeline(memory: str | None) -> SequentialQueuedPipeline:
    steps = [("build", Build()), ("compute", 2, Compute()), ("reduce", Reduce())]
    return SequentialQueuedPipeline(steps, batch_size=BATCH_SIZE, backend="process", memory=memory)


def _timed(pipeline: SequentialQueuedPipeline, X: np.ndarray) -> tuple[float, np.ndarray]:
    t0 = time.perf_counter()
    out = pipeline.transform(X)
    return time.perf_counter() - t0, out


def main() -> dict[str, float]:
    """Time the three rows; print them and the warm speed-up; return the seconds."""
    X = np.arange(N_ITEMS)
    root = tempfile.mkdtemp(prefix="nxs-cache-bench-")
    try:
        _timed(_pipeline(None), X[:BATCH_SIZE])  # start the forkserver before timing
        plain, expected = _timed(_pipeline(None), X)
        cold, out_cold = _timed(_pipeline(root), X)
        warm_pipeline = _pipeline(root)
        warm, out_warm = _timed(warm_pipeline, X)
        np.testing.assert_allclose(out_cold, expected)
        np.testing.assert_allclose(out_warm, expected)
        info = warm_pipeline.cache_info()
        assert info.misses == 0, str(info)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"cache ({N_ITEMS} items, batch {BATCH_SIZE}, processes): "
        f"no cache {plain:.2f} s | cold {cold:.2f} s | warm {warm:.3f} s | "
        f"warm is {cold / warm:.0f}x faster than cold"
    )
    return {"no_cache_s": plain, "cold_s": cold, "warm_s": warm}


if __name__ == "__main__":
    main()
