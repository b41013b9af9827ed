"""Section 3: what a queued pipeline costs per minibatch, and per call.

One no-op step, one worker, ints in; ``transform`` of ``m`` and of ``2m``
minibatches, best of a few repeats each. Two per-minibatch costs: the
*all-in* one, ``T(2m) / 2m``, everything a call costs spread over its
minibatches (an upper bound, and what the targets are checked on), and the
*marginal* one, ``(T(2m) - T(m)) / m``, in which fixed costs (starting
workers, joining) cancel out; those are reported apart as ``fixed_ms``
(``T(m) - m * marginal``). The marginal cost is the difference of two noisy
times: when other work on the machine makes ``T(2m) <= T(m)`` it is left out. For ours, ``second_call_ms`` is the median
time of a one-item ``transform`` inside ``with pipeline:`` with the workers
already up (DESIGN.md's start-up target). Neuraxle 0.8.1 starts its workers
on each call, so its fixed cost includes that.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np

from .measure import repeat_timed
from .steps import Noop

IMPLS = ("ours", "neuraxle-0.8.1")
BACKENDS = ("thread", "process")
BATCH_SIZES = (1, 10)


def _second_call_ms(pipe: Any, calls: int = 30) -> float:
    one = np.arange(1)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        pipe.transform(one)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def run_task(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one (implementation, backend, batch size) case."""
    impl, backend, bs = spec["impl"], spec["backend"], spec["batch_size"]
    m, repeats = spec["minibatches"], spec["repeats"]
    x1, x2 = np.arange(m * bs), np.arange(2 * m * bs)
    result: dict[str, Any] = {}
    if impl == "ours":
        from neuraxle_stream import SequentialQueuedPipeline

        pipe = SequentialQueuedPipeline([("noop", Noop())], batch_size=bs, backend=backend)
        with pipe:
            if not np.array_equal(pipe.transform(x1[:100]), x1[:100]):
                raise AssertionError("the no-op pipeline changed its input")
            t1, _ = repeat_timed(lambda: pipe.transform(x1), repeats)
            t2, _ = repeat_timed(lambda: pipe.transform(x2), repeats)
            result["second_call_ms"] = _second_call_ms(pipe)
    else:
        from . import _neuraxle081 as nx

        def run(x: np.ndarray) -> Any:
            pipe = nx.pipeline([("noop", 1, nx.NxNoop())], bs, backend == "process")
            return pipe.transform(x)

        if not np.array_equal(np.asarray(run(x1[:100])), x1[:100]):
            raise AssertionError("the no-op pipeline changed its input")
        t1, _ = repeat_timed(lambda: run(x1), repeats)
        t2, _ = repeat_timed(lambda: run(x2), repeats)
    best1, best2 = min(t1), min(t2)
    all_in = best2 / (2 * m)
    result.update(
        minibatches=m,
        t_m_s=best1,
        t_2m_s=best2,
        all_in_us=all_in * 1e6,
        per_item_us=all_in * 1e6 / bs,
    )
    if best2 > best1:
        per = (best2 - best1) / m
        result.update(per_minibatch_us=per * 1e6, fixed_ms=(best1 - per * m) * 1e3)
    else:  # noise swamped the difference: no marginal estimate from this run
        result.update(
            per_minibatch_us=None, fixed_ms=None, note="T(2m) <= T(m): marginal cost lost in noise"
        )
    return result


def specs(minibatches: int, repeats: int) -> list[dict[str, Any]]:
    """The tasks of this section."""
    return [
        {
            "section": "overhead",
            "name": f"{impl} {backend} bs={bs}",
            "impl": impl,
            "backend": backend,
            "batch_size": bs,
            "minibatches": minibatches,
            "repeats": repeats,
        }
        for impl in IMPLS
        for backend in BACKENDS
        for bs in BATCH_SIZES
    ]
