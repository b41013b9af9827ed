"""Section 2: moving large arrays between processes.

The data are ``n`` float64 arrays of 1 MB (or 16 MB), about the same number of
bytes for each size. Each case reports MB/s of payload delivered:

- ``ours-process``: a :class:`SequentialQueuedPipeline` of 2 identity-ish
  steps on processes, ``batch_size=1`` (one array per minibatch): parent ->
  stage 1 -> stage 2 -> parent, outputs joined into one array, as
  ``transform`` returns them;
- ``ours-process-stream``: the same pipeline, ``stream()`` over a generator of
  the arrays, outputs dropped as they arrive: the hops without the join;
- ``ours-thread``: as ``ours-process`` on threads (arrays passed by
  reference), for scale;
- ``mpqueue-hop``: what DESIGN.md compares with: one process puts the same
  array ``n`` times on a ``multiprocessing.Queue`` (pickled), another gets them;
- ``mpqueue-chain``: the same topology as ours with ``multiprocessing.Queue``
  between the hops: parent -> relay -> relay -> parent, outputs joined.
"""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

import numpy as np

from ._mpqueue import consumer, producer, relay
from .measure import MB, repeat_timed, summarize
from .steps import Touch

CASES = ("ours-process", "ours-process-stream", "ours-thread", "mpqueue-hop", "mpqueue-chain")


def _rows_for(size_mb: int, total_mb: int) -> tuple[int, int]:
    """``(n_arrays, floats per array)`` for ``total_mb`` of ``size_mb`` arrays."""
    return max(4, total_mb // size_mb), size_mb * MB // 8


# -- multiprocessing.Queue baselines ----------------------------------------------------


def _mpqueue_hop(n: int, n_floats: int, repeats: int) -> list[float]:
    ctx = multiprocessing.get_context("forkserver")
    pctrl, cctrl, data, done = ctx.Queue(), ctx.Queue(), ctx.Queue(maxsize=4), ctx.Queue()
    procs = [
        ctx.Process(target=producer, args=(pctrl, data, n_floats), daemon=True),
        ctx.Process(target=consumer, args=(cctrl, data, done), daemon=True),
    ]
    for p in procs:
        p.start()

    def run(k: int) -> None:
        pctrl.put(k)
        cctrl.put(k)
        done.get()

    try:
        run(4)  # warm-up
        times, _ = repeat_timed(lambda: run(n), repeats)
    finally:
        pctrl.put(None)
        cctrl.put(None)
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
    return times


def _mpqueue_chain(X: np.ndarray, repeats: int) -> list[float]:
    ctx = multiprocessing.get_context("forkserver")
    q0, q1, q2 = ctx.Queue(maxsize=2), ctx.Queue(maxsize=2), ctx.Queue(maxsize=2)
    procs = [
        ctx.Process(target=relay, args=(q0, q1), daemon=True),
        ctx.Process(target=relay, args=(q1, q2), daemon=True),
    ]
    for p in procs:
        p.start()

    def run(rows: np.ndarray) -> np.ndarray:
        def feed() -> None:
            for i in range(len(rows)):
                q0.put(rows[i : i + 1])

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        outs = [q2.get() for _ in range(len(rows))]
        feeder.join()
        return np.concatenate(outs)

    try:
        run(X[:4])
        times, _ = repeat_timed(lambda: run(X), repeats)
    finally:
        q0.put(None)
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
    return times


# -- ours -----------------------------------------------------------------------------------


def _ours(X: np.ndarray, backend: str, repeats: int) -> list[float]:
    from neuraxle_stream import SequentialQueuedPipeline

    pipe = SequentialQueuedPipeline([("a", Touch()), ("b", Touch())], batch_size=1, backend=backend)
    with pipe:
        out = pipe.transform(X[:4])
        if not np.array_equal(out, X[:4]):
            raise AssertionError("the pipeline changed the arrays")
        times, _ = repeat_timed(lambda: pipe.transform(X), repeats)
    return times


def _ours_stream(X: np.ndarray, repeats: int) -> list[float]:
    from neuraxle_stream import SequentialQueuedPipeline

    pipe = SequentialQueuedPipeline(
        [("a", Touch()), ("b", Touch())], batch_size=1, backend="process"
    )

    def run(rows: np.ndarray) -> None:
        count = 0
        for out in pipe.stream(rows[i] for i in range(len(rows))):
            out[0]  # touch the data
            count += 1
        if count != len(rows):
            raise AssertionError(f"stream() gave {count} arrays for {len(rows)}")

    with pipe:
        run(X[:4])
        times, _ = repeat_timed(lambda: run(X), repeats)
    return times


def run_task(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one transport case; the result has the times and MB/s of the best one."""
    size_mb, case, repeats = spec["size_mb"], spec["case"], spec["repeats"]
    n, n_floats = _rows_for(size_mb, spec["total_mb"])
    if case == "mpqueue-hop":
        times = _mpqueue_hop(n, n_floats, repeats)
    else:
        X = np.full((n, n_floats), 1.0)  # touched now, so no page faults are timed
        if case == "mpqueue-chain":
            times = _mpqueue_chain(X, repeats)
        elif case == "ours-process-stream":
            times = _ours_stream(X, repeats)
        else:
            times = _ours(X, case.removeprefix("ours-"), repeats)
    result = summarize(times)
    payload_mb = n * size_mb
    result.update(n_arrays=n, payload_mb=payload_mb, mb_per_s=payload_mb / result["best_s"])
    return result


def specs(total_mb: int, repeats: int) -> list[dict[str, Any]]:
    """The tasks of this section."""
    return [
        {
            "section": "transport",
            "name": f"{case} {size}MB",
            "case": case,
            "size_mb": size,
            "total_mb": total_mb,
            "repeats": repeats,
        }
        for size in (1, 16)
        for case in CASES
    ]
