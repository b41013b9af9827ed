"""Persistence (``memory=``): per-step, per-minibatch outputs and fitted steps on disk.

Step calls are counted with files: :class:`Counted` appends one line per
minibatch it transforms, :class:`CountedFit` one line per fit, so the counts
hold on process workers too. ``log_dir`` is listed in ``cache_ignore_params``:
where the counts go does not change what a step computes.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from doubles import MeanCenterer

from neuraxle_stream import (
    BaseTransformer,
    Cache,
    CacheWarning,
    NonFittableMixin,
    ParallelQueuedFeatureUnion,
    SequentialQueuedPipeline,
    caching,
)
from neuraxle_stream.caching import step_key

N_ROWS, BATCH = 24, 4  # six minibatches
X = np.arange(N_ROWS * 2, dtype=float).reshape(N_ROWS, 2)


class Counted(NonFittableMixin, BaseTransformer):
    """``data + offset``; appends a line to ``log_dir/<tag>.txt`` per minibatch."""

    cache_ignore_params = ("log_dir", "verbose")

    def __init__(self, log_dir: str = "", tag: str = "step", offset: float = 0.0, verbose: bool = False) -> None:
        self.log_dir = log_dir
        self.tag = tag
        self.offset = offset
        self.verbose = verbose

    def transform(self, data_inputs: Any) -> Any:
        with open(os.path.join(self.log_dir, f"{self.tag}.txt"), "a") as f:
            f.write(f"{np.asarray(data_inputs).ravel()[:1]}\n")
        return np.asarray(data_inputs, dtype=float) + self.offset


class CountedFit(BaseTransformer):
    """Learns ``mean_``; appends a line to ``log_dir/fit.txt`` per fit; records run info."""

    cache_ignore_params = ("log_dir",)

    def __init__(self, log_dir: str = "") -> None:
        self.log_dir = log_dir

    def fit(self, X: Any, y: Any = None) -> CountedFit:
        with open(os.path.join(self.log_dir, "fit.txt"), "a") as f:
            f.write("fit\n")
        self.mean_ = np.asarray(X, dtype=float).mean(axis=0)
        self.save_to_run_info(rows=len(X))
        logging.getLogger("test_caching").warning("fitted on %d rows", len(X))
        return self

    def transform(self, data_inputs: Any) -> Any:
        return np.asarray(data_inputs, dtype=float) - self.mean_


def count(log_dir: Path, tag: str) -> int:
    path = log_dir / f"{tag}.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


def counts(log_dir: Path, tags: str = "abc") -> tuple[int, ...]:
    return tuple(count(log_dir, t) for t in tags)


def three_steps(log_dir: Path, memory: Any, backend: str = "thread", **kwargs: Any) -> SequentialQueuedPipeline:
    steps = [(t, Counted(str(log_dir), t, offset=i + 1.0)) for i, t in enumerate("abc")]
    return SequentialQueuedPipeline(steps, batch_size=BATCH, backend=backend, memory=memory, **kwargs)


def reference(offsets: tuple[float, ...] = (1.0, 2.0, 3.0), data: np.ndarray = X) -> np.ndarray:
    return data + sum(offsets)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    log_dir = tmp_path / "calls"
    log_dir.mkdir()
    return tmp_path / "cache", log_dir


# -- reuse and invalidation -----------------------------------------------------------------


@pytest.mark.timeout(60)
def test_second_identical_run_calls_no_step(backend: str, dirs: tuple[Path, Path]) -> None:
    cache, log_dir = dirs
    first = three_steps(log_dir, str(cache), backend).transform(X)
    assert counts(log_dir) == (6, 6, 6)
    pipeline = three_steps(log_dir, cache, backend)  # a Path, and a new pipeline object
    second = pipeline.transform(X)
    assert counts(log_dir) == (6, 6, 6)
    np.testing.assert_array_equal(first, reference())
    np.testing.assert_array_equal(second, first)
    info = pipeline.cache_info()
    assert (info["c"].hits, info["c"].misses) == (6, 0)
    assert info.hits == 18 and info.misses == 0
    assert "hits" in str(info) and info["a"].key[:12] in str(info)


@pytest.mark.timeout(60)
def test_changing_one_param_recomputes_that_step_and_the_later_ones_only(
    backend: str, dirs: tuple[Path, Path]
) -> None:
    cache, log_dir = dirs
    pipeline = three_steps(log_dir, cache, backend)
    pipeline.transform(X)
    pipeline.set_params(b__offset=5.0)
    out = pipeline.transform(X)
    assert counts(log_dir) == (6, 12, 12)
    np.testing.assert_array_equal(out, reference((1.0, 5.0, 3.0)))
    info = pipeline.cache_info()
    assert [(info[t].hits, info[t].misses) for t in "abc"] == [(6, 0), (0, 6), (0, 6)]
    pipeline.set_params(b__offset=2.0)  # back to the first value: all cached
    np.testing.assert_array_equal(pipeline.transform(X), reference())
    assert counts(log_dir) == (6, 12, 12)


def test_changing_one_input_value_recomputes_its_minibatch_only(dirs: tuple[Path, Path]) -> None:
    cache, log_dir = dirs
    pipeline = three_steps(log_dir, cache)
    pipeline.transform(X)
    changed = X.copy()
    changed[5, 1] = -1.0  # in minibatch 1
    np.testing.assert_array_equal(pipeline.transform(changed), reference(data=changed))
    assert counts(log_dir) == (7, 7, 7)


def test_a_param_listed_as_not_affecting_results_recomputes_nothing(dirs: tuple[Path, Path]) -> None:
    cache, log_dir = dirs
    pipeline = three_steps(log_dir, cache)
    pipeline.transform(X)
    pipeline.set_params(b__verbose=True)
    pipeline.transform(X)
    assert counts(log_dir) == (6, 6, 6)
    assert step_key(Counted(tag="x", verbose=True)) == step_key(Counted(tag="x", log_dir="/else"))
    assert step_key(Counted(tag="x")) != step_key(Counted(tag="y"))


def test_cache_version_changes_the_key() -> None:
    class Versioned(Counted):
        cache_version = 2

    assert step_key(Versioned()) != step_key(type("Versioned", (Counted,), {"cache_version": 3})())


# -- resume ---------------------------------------------------------------------------------


def _failing_source(n: int, fail_at: int):
    for i in range(n):
        if i == fail_at:
            raise RuntimeError("source broke")
        yield X[i % N_ROWS]


@pytest.mark.timeout(60)
def test_stream_interrupted_by_its_source_resumes(backend: str, dirs: tuple[Path, Path]) -> None:
    cache, log_dir = dirs
    pipeline = three_steps(log_dir, cache, backend)
    with pytest.raises(RuntimeError, match="source broke"):
        list(pipeline.stream(_failing_source(N_ROWS, fail_at=10)))
    assert counts(log_dir) == (2, 2, 2)  # minibatches 0 and 1 were read whole, and kept
    out = list(pipeline.stream(_failing_source(N_ROWS, fail_at=-1)))
    assert counts(log_dir) == (6, 6, 6)  # only minibatches 2..5 computed again
    np.testing.assert_array_equal(np.array(out), reference())


@pytest.mark.timeout(60)
def test_stream_closed_early_resumes(backend: str, dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(caching, "STREAM_WINDOW", 2)
    cache, log_dir = dirs
    pipeline = three_steps(log_dir, cache, backend)
    gen = pipeline.stream(iter(list(X)))
    head = [next(gen) for _ in range(10)]  # minibatches 0-3 (two windows) are done
    gen.close()
    assert counts(log_dir) == (4, 4, 4)
    out = head + list(pipeline.stream(iter(list(X))))[10:]
    assert counts(log_dir) == (6, 6, 6)
    np.testing.assert_array_equal(np.array(out), reference())


# -- safety ---------------------------------------------------------------------------------


def _entries(cache: Path, step: SequentialQueuedPipeline, name: str) -> list[Path]:
    key = step.cache_info()[name].key
    return sorted((cache / "steps" / key / "out").iterdir())


def test_truncated_entry_warns_and_is_recomputed(dirs: tuple[Path, Path]) -> None:
    cache, log_dir = dirs
    pipeline = three_steps(log_dir, cache)
    pipeline.transform(X)
    entry = _entries(cache, pipeline, "c")[0]
    entry.write_bytes(entry.read_bytes()[:-7])
    with pytest.warns(CacheWarning, match="corrupt or truncated"):
        out = pipeline.transform(X)
    np.testing.assert_array_equal(out, reference())
    assert counts(log_dir) == (6, 6, 7)  # b's output of that minibatch was still there
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        pipeline.transform(X)  # rewritten whole
    assert counts(log_dir) == (6, 6, 7)


def test_failed_write_warns_and_the_run_goes_on(dirs: tuple[Path, Path]) -> None:
    cache, log_dir = dirs
    cache.mkdir()
    (cache / "steps").write_text("not a folder")
    with pytest.warns(CacheWarning, match="Cannot write"):
        out = three_steps(log_dir, cache).transform(X)
    np.testing.assert_array_equal(out, reference())


def _run_in_process(cache: str, log_dir: str) -> None:
    out = three_steps(Path(log_dir), cache).transform(X)
    np.testing.assert_array_equal(out, reference())


@pytest.mark.timeout(60)
def test_two_processes_writing_one_cache_leave_it_consistent(dirs: tuple[Path, Path]) -> None:
    cache, log_dir = dirs
    # fork where there is one: the point is two writers at once, not interpreter start-up
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    procs = [ctx.Process(target=_run_in_process, args=(str(cache), str(log_dir))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(50)
    assert [p.exitcode for p in procs] == [0, 0]
    before = counts(log_dir)
    assert all(6 <= n <= 12 for n in before)
    pipeline = three_steps(log_dir, cache)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)  # every entry passes its checksum
        np.testing.assert_array_equal(pipeline.transform(X), reference())
    assert counts(log_dir) == before
    assert not list(cache.rglob("*.tmp"))
    assert all(len(_entries(cache, pipeline, t)) == 6 for t in "abc")


# -- fitted steps, run info, logs -----------------------------------------------------------


@pytest.mark.timeout(60)
def test_fitted_steps_are_cached_with_run_info_and_log(backend: str, dirs: tuple[Path, Path]) -> None:
    cache, log_dir = dirs

    def make() -> SequentialQueuedPipeline:
        steps = [("a", Counted(str(log_dir), "a", 1.0)), ("fit", CountedFit(str(log_dir))), ("m", MeanCenterer())]
        return SequentialQueuedPipeline(steps, batch_size=BATCH, backend=backend, memory=joblib.Memory(cache, verbose=0))

    first = make().fit_transform(X)
    pipeline = make()
    second = pipeline.fit_transform(X)
    np.testing.assert_allclose(second, first)
    assert count(log_dir, "fit") == 1
    np.testing.assert_allclose(pipeline.named_steps["fit"].mean_, (X + 1).mean(axis=0))
    info = pipeline.cache_info()
    assert info["fit"].fit == "hit" and info["m"].fit == "hit"
    assert info["a"].misses == 0
    (fit_dir,) = [p for p in (cache / "fits").iterdir() if "CountedFit" in (p / "run_info.json").read_text()]
    run_info = json.loads((fit_dir / "run_info.json").read_text())
    assert run_info["step"] == "fit" and run_info["records"] == [{"rows": N_ROWS}]
    assert f"fitted on {N_ROWS} rows" in (fit_dir / "log.txt").read_text()
    assert {"key", "input_key", "started", "ended", "duration", "hostname", "versions", "items"} <= set(run_info)
    step_dir = cache / "steps" / info["a"].key
    run_info = json.loads((step_dir / "run_info.json").read_text())
    assert (run_info["minibatches"], run_info["items"], run_info["class"]) == (6, N_ROWS, "test_caching.Counted")


def test_union_branches_are_cached(dirs: tuple[Path, Path]) -> None:
    cache, log_dir = dirs
    union = ParallelQueuedFeatureUnion(
        [(t, Counted(str(log_dir), t, offset=1.0)) for t in "ab"], batch_size=BATCH, backend="thread", memory=cache
    )
    first = union.transform(X)
    union.set_params(b__offset=2.0)
    second = union.transform(X)
    assert counts(log_dir, "ab") == (6, 12)
    np.testing.assert_array_equal(second, np.hstack([X + 1, X + 2]))
    assert first.shape == second.shape


def test_clear_cache_and_prune(dirs: tuple[Path, Path]) -> None:
    cache, log_dir = dirs
    pipeline = three_steps(log_dir, cache)
    pipeline.transform(X)
    assert Cache(cache).size() > 0
    assert Cache(cache).prune(older_than=3600) == 0
    total = Cache(cache).size()
    assert Cache(cache).prune(max_bytes=total // 2) >= total // 2
    assert 0 < Cache(cache).size() <= total // 2
    pipeline.clear_cache()
    assert Cache(cache).size() == 0
    pipeline.transform(X)
    assert counts(log_dir) == (12, 12, 12)


# -- keys of torch steps --------------------------------------------------------------------


class TorchHolder(NonFittableMixin, BaseTransformer):
    """Holds a module (param) and a tensor (fitted state)."""

    def __init__(self, module: Any = None) -> None:
        self.module = module

    def transform(self, data_inputs: Any) -> Any:
        return data_inputs


def test_torch_steps_get_stable_keys() -> None:
    torch = pytest.importorskip("torch")

    def make(seed: int) -> TorchHolder:
        torch.manual_seed(seed)
        step = TorchHolder(torch.nn.Linear(3, 2))
        step.scale_ = torch.arange(4, dtype=torch.float32)
        return step

    assert step_key(make(0)) == step_key(make(0))
    assert step_key(make(0)) != step_key(make(1))
    changed = make(0)
    changed.scale_ = changed.scale_ + 1
    assert step_key(changed) != step_key(make(0))
    assert caching.content_hash(torch.ones(3)) == caching.content_hash(torch.ones(3))


def test_functions_are_keyed_by_code_closure_and_defaults() -> None:
    def scaled(k: float):
        return lambda x: x * k

    assert caching.content_hash(scaled(2.0)) == caching.content_hash(scaled(2.0))
    assert caching.content_hash(scaled(2.0)) != caching.content_hash(scaled(3.0))
    assert caching.content_hash(lambda x: x + 1) != caching.content_hash(lambda x: x + 2)
