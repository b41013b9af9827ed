"""Section 4: an endless stream through 3 stages, in bounded memory.

``pipeline.stream(source)`` over an endless generator of ints, through
build (a 64 KB float32 array per int) -> tanh -> sum (one float per item),
consumed for a fixed time, then closed. A sampler records the RSS of the
whole process tree (the caller and every worker) with the number of items
received so far. After a warm-up (until the first output, then a quarter of
the remaining samples), the
stream is *flat* when RSS grows by less than ``max(20 MB, 5 %)`` between the
first and the last fifth of the remaining samples; the slope (MB per million
items) is reported too. Also reported: the time ``close()`` takes and how many
worker processes are left half a second after it (multiprocessing's
forkserver and resource tracker are expected to stay and are not counted).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import psutil

from .measure import RssSampler
from .steps import Build, Reduce, Tanh
from .workload import MODULO, build, item_sums


def _classify(children: list[psutil.Process]) -> dict[str, list[str]]:
    """Children by kind: multiprocessing's own helpers, which stay, and the others."""
    kinds: dict[str, list[str]] = {"forkserver": [], "resource_tracker": [], "other": []}
    for child in children:
        try:
            cmd = " ".join(child.cmdline())
        except psutil.Error:
            continue
        kind = next((k for k in ("forkserver", "resource_tracker") if k in cmd), "other")
        kinds[kind].append(cmd[:200])
    return kinds


def _flatness(series: list[tuple[float, float, Any]]) -> dict[str, Any]:
    flowing = [s for s in series if s[2] > 0]  # workers up, outputs arriving
    steady = flowing[len(flowing) // 4 :]
    if len(steady) < 10:
        return {"flat": None, "reason": "too few samples"}
    k = max(2, len(steady) // 5)
    first = float(np.mean([s[1] for s in steady[:k]]))
    last = float(np.mean([s[1] for s in steady[-k:]]))
    items = np.array([s[2] for s in steady], dtype=float)
    rss = np.array([s[1] for s in steady])
    slope = float(np.polyfit(items, rss, 1)[0] * 1e6) if np.ptp(items) > 0 else 0.0
    growth = last - first
    return {
        "flat": bool(growth < max(20.0, 0.05 * first)),
        "steady_first_mb": first,
        "steady_last_mb": last,
        "growth_mb": growth,
        "slope_mb_per_million_items": slope,
    }


def run_task(spec: dict[str, Any]) -> dict[str, Any]:
    """Stream for ``spec['seconds']`` on ``spec['backend']``; return the RSS series."""
    from neuraxle_stream import SequentialQueuedPipeline

    pipe = SequentialQueuedPipeline(
        [("build", Build()), ("tanh", Tanh()), ("reduce", Reduce())],
        batch_size=spec["batch_size"],
        backend=spec["backend"],
    )
    if not hasattr(pipe, "stream"):
        return {"status": "pending", "error": "SequentialQueuedPipeline has no stream() method"}
    expected = item_sums(np.tanh(build(np.arange(MODULO))))
    count = [0]
    source: Iterator[int] = itertools.count()
    gen = pipe.stream(source)
    deadline_s = spec["seconds"]
    interval = min(0.2, spec["seconds"] / 60)
    with RssSampler(
        os.getpid(), interval=interval, keep_series=True, extra=lambda: count[0]
    ) as sampler:
        t0 = time.perf_counter()
        for i, out in enumerate(gen):
            if i % 101 == 0 and not np.isclose(out, expected[i % MODULO], rtol=1e-5):
                raise AssertionError(f"item {i}: wrong or out-of-order output {out!r}")
            count[0] = i + 1
            if time.perf_counter() - t0 > deadline_s:
                break
        elapsed = time.perf_counter() - t0
        streamed = len(sampler.series)  # the samples taken while streaming
        t1 = time.perf_counter()
        gen.close()
        close_s = time.perf_counter() - t1
    time.sleep(0.5)  # let the workers' exits be reaped before counting them
    children = _classify(psutil.Process().children(recursive=True))
    result = {
        "status": "ok",
        "items": count[0],
        "seconds": elapsed,
        "items_per_s": count[0] / elapsed,
        "close_s": close_s,
        "workers_left_after_close": len(children["other"]),
        "children_after_close": {k: len(v) for k, v in children.items()},
        "series": [(round(t, 3), round(mb, 2), n) for t, mb, n in sampler.series],
        "streaming_samples": streamed,  # series[streamed:] are after close()
        "peak_mb": sampler.peak_mb,
    }
    result.update(_flatness(sampler.series[:streamed]))
    return result


def specs(seconds: float, batch_size: int) -> list[dict[str, Any]]:
    """The tasks of this section."""
    return [
        {
            "section": "memory",
            "name": f"stream {backend}",
            "backend": backend,
            "seconds": seconds,
            "batch_size": batch_size,
        }
        for backend in ("process", "thread")
    ]
