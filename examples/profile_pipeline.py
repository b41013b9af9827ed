"""Profiling a queued pipeline: find the slow stage, give it workers, check again.

A three-step pipeline on worker processes, whose middle step is deliberately
slow (about 20 ms per minibatch). After the call, ``pipeline.stats_`` holds
what every worker measured, merged in the parent:

- per step: minibatches, items, failures, mean / p90 / p99 time per
  minibatch, and the busy time of its workers;
- per queue (named after the step that reads it): minibatches through it,
  the rate, how long writers waited for room (backpressure from the step
  that reads it) and readers for items (starvation from the step before),
  and the estimated occupancy.

``print(pipeline.stats_)`` shows the table and names the bottleneck (the
step whose workers were busiest); ``pipeline.stats_.plot(path)`` saves the
same numbers as a PNG, with a timeline of the minibatches of each worker.
``TaskStatsHook`` logs one line per step at the end of each call, and worker
``logging`` records reach the parent's handlers. Giving the slow step three
workers moves the time to the rest of the pipeline.
``stats_.to_chrome_trace(path)`` writes every task of every worker, and
the queues between them, for https://ui.perfetto.dev; and
``stats_.plot_timeline()`` draws them (see ``docs/tuning.md``).

Run it with::

    pip install -e ".[examples]"  # once: what every example needs
    python examples/profile_pipeline.py [plot.png]
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.preprocessing import StandardScaler

from neuraxle_stream import (
    BaseTransformer,
    NonFittableMixin,
    SequentialQueuedPipeline,
    TaskStatsHook,
)


def parse(row: Any) -> np.ndarray:
    """A fast per-item step."""
    return np.asarray(row, dtype=np.float64) * 0.5


class SlowFeatures(NonFittableMixin, BaseTransformer):
    """A deliberately slow minibatch step: ``delay`` seconds per minibatch."""

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay

    def setup(self) -> None:
        logging.getLogger("profile_pipeline").info("worker ready")  # reaches the parent's handlers

    def transform(self, data_inputs: Any) -> np.ndarray:
        time.sleep(self.delay)  # stands for decoding, feature extraction, a model call...
        X = np.asarray(data_inputs)
        return np.hstack([X, np.sin(X)])


def make_pipeline(slow_workers: int) -> SequentialQueuedPipeline:
    return SequentialQueuedPipeline(
        [
            ("parse", parse),
            ("features", slow_workers, SlowFeatures()),
            ("scale", StandardScaler()),
        ],
        batch_size=25,
        hooks=[TaskStatsHook()],
    )


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(processName)-30s %(name)s: %(message)s")
    X = np.random.default_rng(0).normal(size=(1000, 4))  # 40 minibatches

    pipeline = make_pipeline(slow_workers=1).fit(X)  # the stats of a fit are in stats_ too
    with pipeline:  # the workers stay up across calls: the second call shows the steady state
        pipeline.transform(X)
        out = pipeline.transform(X)
    stats = pipeline.stats_
    print(f"\n{out.shape[0]} rows out; stats of the last call:\n")
    print(stats)
    assert stats.bottleneck == "features"
    assert stats["features"].num_tasks == 40 and stats["features"].num_failures == 0

    faster = make_pipeline(slow_workers=3).fit(X)
    with faster:
        faster.transform(X)
        np.testing.assert_allclose(faster.transform(X), out)
    print("\nWith 3 workers on 'features':\n")
    print(faster.stats_)
    slow_time = stats["features"].busy_per_worker
    fast_time = faster.stats_["features"].busy_per_worker
    print(f"\nbusy time per 'features' worker: {slow_time:.2f} s -> {fast_time:.2f} s")

    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp()) / "profile_pipeline.png"
    try:
        stats.plot(path)
        print(f"plot saved to {path}")
    except ImportError as exc:  # matplotlib is optional
        print(f"no plot: {exc}")

    # The timeline: every task of every worker, and the queues between them.
    trace = stats.to_chrome_trace(path.with_suffix(".json"))
    print(f"timeline saved to {trace} (open it in https://ui.perfetto.dev)")
    try:
        timeline = path.with_name(f"{path.stem}_timeline.png")
        stats.plot_timeline().savefig(timeline)
        print(f"timeline plot saved to {timeline}")
    except ImportError as exc:  # matplotlib is optional
        print(f"no timeline plot: {exc}")


if __name__ == "__main__":
    main()
