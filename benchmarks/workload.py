"""The reference CPU workload of DESIGN.md section 5, in every form the rows need.

Stage 1 builds, from an int ``i``, the float32 array
``arange(16384) / 16384 + i % 97``; stage 2 reshapes it to 128x128 and applies
``tanh(y @ M)`` ten times with a fixed 128x128 float32 ``M`` (about 0.5 ms on
one BLAS thread). Every row computes exactly these numbers, so every row's
checksum (one float64 sum per item) must equal the sequential one.

Everything here is defined at module level so that it pickles by reference
into worker processes (forkserver, spawn, loky) as well as forks, and the
module imports only NumPy (and threadpoolctl), so that the peers' workers do
not import neuraxle_stream or scikit-learn; the steps of our pipelines are in
``steps.py``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

ITEM_SIZE = 16384
SIDE = 128
N_ITERATIONS = 10
MODULO = 97

_M = (np.random.default_rng(0).standard_normal((SIDE, SIDE)) / np.sqrt(SIDE)).astype(np.float32)
_BASE = np.arange(ITEM_SIZE, dtype=np.float32) / ITEM_SIZE
_limited_pid: int | None = None


def one_thread() -> None:
    """Cap BLAS to one thread in this process, once per process.

    The environment variables set by ``benchmarks/__init__.py`` cover processes
    that import NumPy after them; this covers the others (a forkserver that
    preloaded NumPy, a pool forked from a parent that had it).
    """
    global _limited_pid
    if _limited_pid != os.getpid():
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
        _limited_pid = os.getpid()


def build(indices: Any) -> np.ndarray:
    """Stage 1 on a minibatch of ints: one float32 row of 16384 per int."""
    one_thread()
    idx = np.asarray(indices, dtype=np.int64)
    return _BASE[None, :] + (idx % MODULO).astype(np.float32)[:, None]


def compute(batch: Any) -> np.ndarray:
    """Stage 2 on a minibatch of stage-1 rows: ``tanh(y @ M)`` ten times, per item."""
    return _rounds(batch, N_ITERATIONS)


def _rounds(batch: Any, n_rounds: int) -> np.ndarray:
    """``tanh(y @ M)`` ``n_rounds`` times on each item of a minibatch of 128x128 items."""
    one_thread()
    batch = np.asarray(batch)
    out = np.empty((len(batch), SIDE, SIDE), dtype=np.float32)
    for j in range(len(batch)):
        y = batch[j].reshape(SIDE, SIDE)
        for _ in range(n_rounds):
            y = np.tanh(y @ _M)
        out[j] = y
    return out


def build_half(indices: Any) -> np.ndarray:
    """W2's stage 1: build, then the first half of the rounds (``N_ITERATIONS // 2``)."""
    return _rounds(build(indices), N_ITERATIONS // 2)


def compute_half(batch: Any) -> np.ndarray:
    """W2's stage 2: the other half of the rounds; ``compute_half(build_half(i))``
    gives exactly the numbers of ``compute(build(i))``."""
    return _rounds(batch, N_ITERATIONS - N_ITERATIONS // 2)


def run_range(start: int, stop: int) -> np.ndarray:
    """Both stages, fused, on items ``[start, stop)``: what the peers run per task."""
    return compute(build(np.arange(start, stop)))


def run_item(i: int) -> np.ndarray:
    """Both stages on one item: a ``(128, 128)`` array."""
    return run_range(i, i + 1)[0]


def item_sums(outputs: Any) -> np.ndarray:
    """The checksum of an output: the float64 sum of each item, in order."""
    arr = np.asarray(outputs)
    return arr.reshape(len(arr), -1).sum(axis=1, dtype=np.float64)


def ceiling_task(start: int, stop: int, batch_size: int) -> np.ndarray:
    """The no-transfer ceiling's share: items ``[start, stop)`` in minibatches,
    built where they are computed; only the per-item sums go back."""
    sums = np.empty(stop - start, dtype=np.float64)
    for s in range(start, stop, batch_size):
        e = min(s + batch_size, stop)
        sums[s - start : e - start] = item_sums(run_range(s, e))
    return sums


def ceiling_shared_task(shm_name: str, n_total: int, start: int, stop: int, batch_size: int) -> int:
    """The ceiling's share, writing its outputs into the caller's shared-memory array."""
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(shm_name)
    try:
        out = np.ndarray((n_total, SIDE, SIDE), dtype=np.float32, buffer=shm.buf)
        for s in range(start, stop, batch_size):
            e = min(s + batch_size, stop)
            out[s:e] = run_range(s, e)
        del out
    finally:
        shm.close()
    return stop - start


def batch_bounds(n_items: int, batch_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each minibatch of ``range(n_items)``."""
    return [(s, min(s + batch_size, n_items)) for s in range(0, n_items, batch_size)]
