"""Section 1: the reference CPU workload (DESIGN.md section 5), one row per runner.

Each row is a context manager that sets up what persists between calls (a
pool, a pipeline inside ``with``) and yields ``run(n)``, which computes the
outputs of items ``0..n-1`` in minibatches of ``batch_size`` and returns them
as one array (or, for the ceiling, their per-item sums). The harness calls
``run`` once to warm up, then times a few repeats of ``run(n_items)``.

Rows that use no pipeline library (joblib, ``concurrent.futures``, mpire,
the PyTorch ``DataLoader``, SPDL) run both stages fused in one task per
minibatch, as a user of those tools would; the queued pipelines (ours and
Neuraxle's) run them as two stages. Workers persist across calls where the
tool allows it (``with pipeline:``, loky's reusable executor, a pool made
once); Neuraxle 0.8.1 starts its workers on every call.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from .steps import Build, BuildHalf, Compute, ComputeHalf
from .workload import (
    ITEM_SIZE,
    SIDE,
    batch_bounds,
    build,
    ceiling_shared_task,
    ceiling_task,
    compute,
    run_item,
    run_range,
)

Runner = Callable[[int], Any]


@dataclass(frozen=True)
class Row:
    """One row of the reference table."""

    name: str
    group: str  # "baseline", "ours", "peer"
    description: str
    setup: Callable[[int, int], Any]  # (n_items, batch_size) -> context manager yielding run(n)
    requires: tuple[str, ...] = ()  # importable modules the row needs
    returns_sums: bool = False
    pip: str = ""
    kind: str = ""  # "process" or "thread": which peers a target compares it with


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# -- baselines ------------------------------------------------------------------------


@contextmanager
def _sequential(n_items: int, batch_size: int) -> Iterator[Runner]:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    pipe = make_pipeline(FunctionTransformer(build), FunctionTransformer(compute))
    yield lambda n: pipe.fit_transform(np.arange(n))


@contextmanager
def _sequential_minibatched(n_items: int, batch_size: int) -> Iterator[Runner]:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    pipe = make_pipeline(FunctionTransformer(build), FunctionTransformer(compute))

    def run(n: int) -> np.ndarray:
        x = np.arange(n)
        return np.concatenate([pipe.fit_transform(x[s:e]) for s, e in batch_bounds(n, batch_size)])

    yield run


@contextmanager
def _ceiling(n_items: int, batch_size: int) -> Iterator[Runner]:
    from concurrent.futures import ProcessPoolExecutor

    cores = _cpu_count()
    ctx = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(cores, mp_context=ctx) as pool:

        def run(n: int) -> np.ndarray:
            # Contiguous shares, cut on minibatch bounds: each core does the same work.
            n_batches = -(-n // batch_size)
            cuts = [min(n, (n_batches * k // cores) * batch_size) for k in range(cores + 1)]
            futures = [
                pool.submit(ceiling_task, cuts[k], cuts[k + 1], batch_size)
                for k in range(cores)
                if cuts[k] < cuts[k + 1]
            ]
            return np.concatenate([f.result() for f in futures])

        yield run


@contextmanager
def _ceiling_shared_output(n_items: int, batch_size: int) -> Iterator[Runner]:
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import shared_memory

    cores = _cpu_count()
    ctx = multiprocessing.get_context("forkserver")
    segments: list[shared_memory.SharedMemory] = []

    def release() -> None:  # the previous output is gone by the time the next run starts
        while segments:
            shm = segments.pop()
            shm.close()
            shm.unlink()

    with ProcessPoolExecutor(cores, mp_context=ctx) as pool:

        def run(n: int) -> np.ndarray:
            release()
            shm = shared_memory.SharedMemory(create=True, size=n * ITEM_SIZE * 4)
            segments.append(shm)
            n_batches = -(-n // batch_size)
            cuts = [min(n, (n_batches * k // cores) * batch_size) for k in range(cores + 1)]
            futures = [
                pool.submit(ceiling_shared_task, shm.name, n, cuts[k], cuts[k + 1], batch_size)
                for k in range(cores)
                if cuts[k] < cuts[k + 1]
            ]
            for f in futures:
                f.result()
            return np.ndarray((n, SIDE, SIDE), dtype=np.float32, buffer=shm.buf)

        try:
            yield run
        finally:
            import gc

            gc.collect()
            release()


# -- ours ---------------------------------------------------------------------------


def _ours(
    backend: str, build_workers: int, compute_workers: int, balanced: bool = False, chain: Any = "auto",
) -> Callable[[int, int], Any]:
    """Ours as a user writes it; ``balanced``: W2, the rounds split 5 + 5 between the stages."""

    @contextmanager
    def setup(n_items: int, batch_size: int) -> Iterator[Runner]:
        from neuraxle_stream import SequentialQueuedPipeline

        first, second = (BuildHalf(), ComputeHalf()) if balanced else (Build(), Compute())
        pipe = SequentialQueuedPipeline(
            [("build", build_workers, first), ("compute", compute_workers, second)],
            batch_size=batch_size,
            backend=backend,
            chain=chain,
        )
        with pipe:
            yield lambda n: pipe.transform(np.arange(n))

    return setup


class _TimedRun:
    """A runner that also reports numbers of its own set-up (merged into the row's result)."""

    def __init__(self, run: Callable[[int], Any], extra: dict[str, float]) -> None:
        self.run, self.extra = run, extra

    def __call__(self, n: int) -> Any:
        return self.run(n)


def _ours_ray(build_workers: int, compute_workers: int) -> Callable[[int, int], Any]:
    """Ours on Ray: a local Ray instance started here (its start-up timed apart), actors kept by ``with``."""

    @contextmanager
    def setup(n_items: int, batch_size: int) -> Iterator[Runner]:
        import time

        import ray

        from neuraxle_stream import SequentialQueuedPipeline

        started = time.perf_counter()
        ray.init(num_cpus=_cpu_count(), include_dashboard=False, log_to_driver=False)
        init_s = time.perf_counter() - started
        try:
            pipe = SequentialQueuedPipeline(
                [("build", build_workers, Build()), ("compute", compute_workers, Compute())],
                batch_size=batch_size,
                backend="ray",
            )
            with pipe:
                yield _TimedRun(lambda n: pipe.transform(np.arange(n)), {"ray_init_s": init_s})
        finally:
            ray.shutdown()

    return setup


# -- peers --------------------------------------------------------------------------


def _joblib(backend: str) -> Callable[[int, int], Any]:
    @contextmanager
    def setup(n_items: int, batch_size: int) -> Iterator[Runner]:
        from joblib import Parallel, delayed

        def run(n: int) -> np.ndarray:
            outs = Parallel(n_jobs=2, backend=backend)(
                delayed(run_range)(s, e) for s, e in batch_bounds(n, batch_size)
            )
            return np.concatenate(outs)

        yield run

    return setup


@contextmanager
def _futures(n_items: int, batch_size: int) -> Iterator[Runner]:
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(2) as pool:

        def run(n: int) -> np.ndarray:
            starts, stops = zip(*batch_bounds(n, batch_size))
            return np.concatenate(list(pool.map(run_range, starts, stops, chunksize=4)))

        yield run


@contextmanager
def _futures_thread(n_items: int, batch_size: int) -> Iterator[Runner]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:

        def run(n: int) -> np.ndarray:
            starts, stops = zip(*batch_bounds(n, batch_size))
            return np.concatenate(list(pool.map(run_range, starts, stops)))

        yield run


@contextmanager
def _mpire(n_items: int, batch_size: int) -> Iterator[Runner]:
    from mpire import WorkerPool

    pool = WorkerPool(n_jobs=2, keep_alive=True)
    try:

        def run(n: int) -> np.ndarray:
            return pool.map(run_range, batch_bounds(n, batch_size), concatenate_numpy_output=True)

        yield run
    finally:
        pool.terminate()


class _ItemDataset:
    """A map-style dataset: item ``i`` is both stages applied to ``i``."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> np.ndarray:
        return run_item(i)


@contextmanager
def _dataloader(n_items: int, batch_size: int) -> Iterator[Runner]:
    from torch.utils.data import DataLoader

    loader = DataLoader(
        _ItemDataset(n_items), batch_size=batch_size, num_workers=2, persistent_workers=True
    )

    def run(n: int) -> np.ndarray:
        wanted = -(-n // batch_size)
        outs = []
        for k, batch in enumerate(loader):
            if k == wanted:
                break
            outs.append(batch.numpy())
        return np.concatenate(outs)[:n]

    yield run


def _spdl_task(bounds: tuple[int, int]) -> np.ndarray:
    return run_range(*bounds)


@contextmanager
def _spdl(n_items: int, batch_size: int) -> Iterator[Runner]:
    from concurrent.futures import ProcessPoolExecutor

    from spdl.pipeline import PipelineBuilder

    with ProcessPoolExecutor(2) as pool:

        def run(n: int) -> np.ndarray:
            pipeline = (
                PipelineBuilder()
                .add_source(batch_bounds(n, batch_size))
                .pipe(_spdl_task, concurrency=2, executor=pool, output_order="input")
                .add_sink(4)
                .build(num_threads=2)
            )
            with pipeline.auto_stop():
                outs = list(pipeline)
            return np.concatenate(outs)

        yield run


def _neuraxle(use_processes: bool) -> Callable[[int, int], Any]:
    @contextmanager
    def setup(n_items: int, batch_size: int) -> Iterator[Runner]:
        from . import _neuraxle081 as nx

        def run(n: int) -> np.ndarray:
            pipe = nx.pipeline(
                [("build", 2, nx.NxBuild()), ("compute", 2, nx.NxCompute())],
                batch_size,
                use_processes,
            )
            return np.asarray(pipe.transform(np.arange(n)))

        yield run

    return setup


ROWS: list[Row] = [
    Row(
        "sequential",
        "baseline",
        "scikit-learn Pipeline, 2 FunctionTransformer steps, fit_transform on all X",
        _sequential,
    ),
    Row(
        "sequential-minibatched",
        "baseline",
        "the same Pipeline called minibatch by minibatch, outputs concatenated",
        _sequential_minibatched,
    ),
    Row(
        "ceiling",
        "baseline",
        "no-transfer ceiling: each core builds and computes its share, returns per-item sums",
        _ceiling,
        returns_sums=True,
    ),
    Row(
        "ceiling-shared-output",
        "baseline",
        "the ceiling, but each core writes its outputs into one shared-memory array the caller gets",
        _ceiling_shared_output,
    ),
    Row(
        "ours-thread-2x2",
        "ours",
        "SequentialQueuedPipeline, threads, 2 workers per step",
        _ours("thread", 2, 2),
    ),
    Row(
        "ours-ray-2x2",
        "ours",
        "SequentialQueuedPipeline, Ray actors on a local instance, 2 per step (ray.init timed apart)",
        _ours_ray(2, 2),
        requires=("ray",),
        pip="pip install 'neuraxle_stream[ray]'",
    ),
    Row(
        "ours-thread-1x2",
        "ours",
        "SequentialQueuedPipeline, threads, 1 build + 2 compute workers",
        _ours("thread", 1, 2),
    ),
    Row(
        "ours-process-2x2",
        "ours",
        "SequentialQueuedPipeline, processes, 2 workers per step",
        _ours("process", 2, 2),
    ),
    Row(
        "ours-thread-2x2-unchained",
        "ours",
        "SequentialQueuedPipeline, threads, 2 workers per step, chain=False",
        _ours("thread", 2, 2, chain=False),
    ),
    Row(
        "ours-process-2x2-unchained",
        "ours",
        "SequentialQueuedPipeline, processes, 2 workers per step, chain=False",
        _ours("process", 2, 2, chain=False),
    ),
    Row(
        "ours-process-1x2",
        "ours",
        "SequentialQueuedPipeline, processes, 1 build + 2 compute workers",
        _ours("process", 1, 2),
    ),
    Row(
        "ours-process-balanced-1x1",
        "ours",
        "W2: stages balanced (build + 5 rounds, then 5 rounds; ~0.25 ms each), 1 + 1 process workers",
        _ours("process", 1, 1, balanced=True),
    ),
    Row(
        "ours-process-balanced-1x1-unchained",
        "ours",
        "W2 with chain=False: 1 + 1 process workers, one per step as written",
        _ours("process", 1, 1, balanced=True, chain=False),
    ),
    Row(
        "joblib-loky",
        "peer",
        "joblib.Parallel(n_jobs=2, backend='loky'), one task per minibatch",
        _joblib("loky"),
        requires=("joblib",),
        kind="process",
    ),
    Row(
        "joblib-threading",
        "peer",
        "joblib.Parallel(n_jobs=2, backend='threading')",
        _joblib("threading"),
        requires=("joblib",),
        kind="thread",
    ),
    Row(
        "futures-process",
        "peer",
        "concurrent.futures.ProcessPoolExecutor(2).map, chunksize=4",
        _futures,
        kind="process",
    ),
    Row(
        "futures-thread",
        "peer",
        "concurrent.futures.ThreadPoolExecutor(2).map, one task per minibatch",
        _futures_thread,
        kind="thread",
    ),
    Row(
        "mpire",
        "peer",
        "mpire.WorkerPool(n_jobs=2, keep_alive=True).map",
        _mpire,
        requires=("mpire",),
        pip="pip install mpire",
        kind="process",
    ),
    Row(
        "torch-dataloader",
        "peer",
        "torch DataLoader, per-item dataset, batch_size=16, num_workers=2, persistent",
        _dataloader,
        requires=("torch",),
        pip="pip install torch==2.13.0",
        kind="process",
    ),
    Row(
        "spdl",
        "peer",
        "SPDL PipelineBuilder.pipe(concurrency=2, ProcessPoolExecutor(2)), input order",
        _spdl,
        requires=("spdl.pipeline",),
        pip="pip install spdl_core",
        kind="process",
    ),
    Row(
        "neuraxle-0.8.1-thread",
        "peer",
        "Neuraxle 0.8.1 SequentialQueuedPipeline, threads, 2 workers per step",
        _neuraxle(False),
        requires=("neuraxle",),
        pip="pip install --no-deps neuraxle==0.8.1",
        kind="thread",
    ),
    Row(
        "neuraxle-0.8.1-process",
        "peer",
        "Neuraxle 0.8.1 SequentialQueuedPipeline, processes, 2 workers per step",
        _neuraxle(True),
        requires=("neuraxle",),
        pip="pip install --no-deps neuraxle==0.8.1",
        kind="process",
    ),
]

ROWS_BY_NAME = {row.name: row for row in ROWS}


def run_task(spec: dict[str, Any]) -> dict[str, Any]:
    """Warm up, then time ``spec['repeats']`` runs of one row; save its checksum."""
    import time

    from .measure import repeat_timed, summarize, tree_cpu_seconds
    from .workload import item_sums

    row = ROWS_BY_NAME[spec["row"]]
    n, bs = spec["n_items"], spec["batch_size"]
    shape: list[int] = []

    def keep(out: Any) -> np.ndarray:
        if row.returns_sums:
            return np.asarray(out)
        arr = np.asarray(out)
        shape.extend([*arr.shape, 0])
        shape[-1] = arr.dtype.itemsize
        return item_sums(arr)

    with row.setup(n, bs) as run:
        t0 = time.perf_counter()
        warm = run(spec["warmup_items"])
        cold = time.perf_counter() - t0
        if len(warm) != spec["warmup_items"]:
            raise AssertionError(f"warm-up returned {len(warm)} items, not {spec['warmup_items']}")
        del warm
        cpu0 = tree_cpu_seconds()
        times, sums = repeat_timed(lambda: run(n), spec["repeats"], keep=keep)
        cpu = tree_cpu_seconds() - cpu0
    np.save(spec["sums_path"], sums)
    result = summarize(times)
    result.update(
        warmup_s=cold,
        items_per_s=n / result["best_s"],
        median_items_per_s=n / result["median_s"],
        cpu_ms_per_item=cpu * 1e3 / (n * spec["repeats"]),
    )
    result.update(getattr(run, "extra", {}))
    if shape:
        result["output_shape"], result["output_itemsize"] = shape[:-1], shape[-1]
    return result


def specs(n_items: int, batch_size: int, repeats: int, warmup_items: int) -> list[dict[str, Any]]:
    """The tasks of this section (``sums_path`` is filled in by the harness)."""
    return [
        {
            "section": "reference",
            "name": row.name,
            "row": row.name,
            "n_items": n_items,
            "batch_size": batch_size,
            "repeats": repeats,
            "warmup_items": warmup_items,
        }
        for row in ROWS
    ]
