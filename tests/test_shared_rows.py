"""Shared rows: ``transform`` on processes, outputs written by the workers into the joined array.

Every output is compared with the sequential reference; each test also says
whether the workers wrote in place (``written``) or the outputs came back in
their messages, and that nothing is left in ``/dev/shm`` nor held open.
"""

from __future__ import annotations

import ctypes
import errno
import gc
import mmap
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuraxle_stream import (
    BaseTransformer,
    BrokenPipelineError,
    NonFittableMixin,
    ParallelQueuedFeatureUnion,
    SequentialQueuedPipeline,
    shutdown_workers,
)
from neuraxle_stream import shared_rows as sr
from neuraxle_stream.shm_segments import SHM_DIR

pytestmark = pytest.mark.skipif(
    not os.path.isdir(SHM_DIR) or not os.path.isdir("/proc/self/fd"), reason="needs /dev/shm and /proc"
)

#: Elements of one output row: 64 KiB of float64, so one row is enough to be written in place.
ROW = 8192


def widen(x):
    """One float64 row of ``ROW`` values per input int (``x + arange``)."""
    return np.asarray(x, dtype=np.float64)[:, None] + np.arange(ROW)


def as_dtype(dtype: str):
    def step(x):
        return widen(x).astype(dtype)

    return step


def fortran(x):
    """A non-contiguous output (Fortran order)."""
    return np.asfortranarray(widen(x).reshape(len(x), 64, ROW // 64))


def as_list(x):
    return [float(v) for v in np.asarray(x)]


def small(x):
    return np.asarray(x, dtype=np.float64)[:, None] * 2.0


def float32_at_first(x):
    """float32 for minibatches starting below 8, float64 after: the array's dtype changes mid-run."""
    out = widen(x)
    return out.astype(np.float32) if x[0] < 8 else out


def longer_rows_later(x):
    """Rows of ``ROW`` values for the first minibatches, of ``2 * ROW`` after."""
    out = widen(x)
    return out if x[0] < 8 else np.concatenate([out, out], axis=1)


def _kill_at_20(x):
    if np.any(x[:, 0] == 20):
        os.kill(os.getpid(), 9)
    return x


def _fail_at_40(x):
    if 40 in np.asarray(x):
        raise ValueError("boom at 40")
    return widen(x)


class Batchwise(NonFittableMixin, BaseTransformer):
    """``func`` on each whole minibatch (a plain function in a pipeline runs on each item)."""

    def __init__(self, func=None):
        self.func = func

    def transform(self, data_inputs):
        return self.func(data_inputs)


class DropFirstRow(NonFittableMixin, BaseTransformer):
    """A step that changes the number of rows."""

    may_change_length = True

    def transform(self, data_inputs):
        return widen(data_inputs)[1:]


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts, in the parent, the outputs written in place and those that came back as data."""
    counts = {"written": 0, "data": 0}
    add = sr.SharedRowAccumulator.add

    def counting(self: sr.SharedRowAccumulator, part: object) -> None:
        counts["written" if type(part) is sr.WrittenRows else "data"] += 1
        add(self, part)

    monkeypatch.setattr(sr.SharedRowAccumulator, "add", counting)
    return counts


def shm_names() -> list[str]:
    """Names under /dev/shm made by this process (segments and any named output file)."""
    pid = os.getpid()
    return sorted(n for n in os.listdir(SHM_DIR) if n.startswith((f"nxs-{pid}-", f"nxs-rows-{pid}-")))


OUTPUT_FILES = (f"{SHM_DIR}/#", f"{SHM_DIR}/nxs-rows-")


def open_shm_files() -> int:
    """Descriptors this process holds on output files (no name: ``/dev/shm/#<inode> (deleted)``)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        count += target.startswith(OUTPUT_FILES)
    return count


def mapped_shm_files() -> int:
    """Mappings of output files in this process (``/proc/self/maps``)."""
    with open("/proc/self/maps") as maps:  # address perms offset dev inode path
        paths = [line.split(maxsplit=5)[5:] for line in maps]
    return sum(path[0].startswith(OUTPUT_FILES) for path in paths if path)


@pytest.fixture
def no_leak():
    """Nothing left in /dev/shm, and no descriptor or mapping of it left once the arrays are garbage."""
    names, fds, maps = shm_names(), open_shm_files(), mapped_shm_files()
    yield
    gc.collect()
    assert shm_names() == names
    assert open_shm_files() == fds
    assert mapped_shm_files() == maps


def is_shared(out: np.ndarray) -> bool:
    base = out
    while isinstance(base, np.ndarray):
        base = base.base
    return isinstance(base, (sr._Mapping, mmap.mmap))


def pipeline(step, n_workers: int = 2, batch_size: int = 4, **kwargs) -> SequentialQueuedPipeline:
    return SequentialQueuedPipeline(
        [("a", n_workers, Batchwise(np.asarray)), ("b", n_workers, Batchwise(step))],
        batch_size=batch_size, backend="process", **kwargs,
    )


# -- the direct path -----------------------------------------------------------------------


@pytest.mark.timeout(120)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 60),
    batch_size=st.integers(1, 9),
    n_workers=st.integers(1, 3),
    dtype=st.sampled_from(["float64", "float32", "int16", "uint8", "bool", "complex64", ">f4"]),
)
def test_outputs_written_in_place_equal_the_sequential_reference(
    spy, n: int, batch_size: int, n_workers: int, dtype: str
) -> None:
    step = as_dtype(dtype)
    X = np.arange(n)
    expected = step(X)
    pipe = pipeline(step, n_workers, batch_size)
    with pipe:
        for call in range(2):  # the second call is aimed from its first minibatch
            spy.update(written=0, data=0)
            out = pipe.transform(X)
            assert out.dtype == expected.dtype and out.shape == expected.shape
            np.testing.assert_array_equal(out, expected)
            if np.dtype(dtype).itemsize * ROW * min(batch_size, n) >= sr.MIN_BYTES:
                assert is_shared(out)
                if call:
                    assert spy == {"written": -(-n // batch_size), "data": 0}
            else:
                assert spy["written"] == 0 and not is_shared(out)
            del out


@pytest.mark.timeout(120)
def test_every_minibatch_is_written_in_place_from_the_second_call(spy, no_leak) -> None:
    X = np.arange(50)
    pipe = pipeline(widen, batch_size=4)
    with pipe:
        first = pipe.transform(X)
        np.testing.assert_array_equal(first, widen(X))
        assert is_shared(first) and spy["written"] > 0
        spy.update(written=0, data=0)
        second = pipe.transform(X)  # the first call's output predicts the array
        assert spy == {"written": 13, "data": 0}
        np.testing.assert_array_equal(second, widen(X))
        second[:] = -1  # two outputs alive at once never share memory
        np.testing.assert_array_equal(first, widen(X))
        del first, second


@pytest.mark.timeout(120)
def test_a_file_comes_back_to_the_pool_when_its_array_is_garbage(no_leak) -> None:
    X = np.arange(40)
    pipe = pipeline(widen, batch_size=4)
    with pipe:
        out = pipe.transform(X)
        files = {(r.device, r.inode) for r in _pool_files(pipe)}
        assert files == set(), "the file is the array's while it lives"
        del out
        gc.collect()
        (free,) = _pool_files(pipe)
        out = pipe.transform(X)
        np.testing.assert_array_equal(out, widen(X))
        assert _pool_files(pipe) == [], "the next call reused it"
        del out, free


def _pool_files(pipe: SequentialQueuedPipeline) -> list[sr.SharedRows]:
    pools = list(sr._pools.values())
    return [rows for pool in pools if not pool.closed for rows in pool._free]


@pytest.mark.timeout(120)
def test_returned_arrays_stay_valid_after_the_pipeline_and_the_workers_are_gone(no_leak) -> None:
    X = np.arange(30)
    pipe = pipeline(widen, batch_size=5)
    with pipe:
        kept = pipe.transform(X)
    view = kept[3:7]
    loose = pipeline(widen, batch_size=5).transform(X)  # no `with`: its runtime closed at the end of the call
    del pipe
    shutdown_workers()
    gc.collect()
    for arr in (kept, loose):
        assert is_shared(arr)
        np.testing.assert_array_equal(arr, widen(X))
    np.testing.assert_array_equal(view, widen(X)[3:7])
    kept += 1  # writable, and its own
    np.testing.assert_array_equal(view, widen(X)[3:7] + 1)
    del kept, loose, view


def second_call(spy: dict[str, int], pipe, method: str, X: np.ndarray) -> np.ndarray:
    """The output of ``pipe.<method>(X)`` called twice in ``with pipe:`` (the second aimed from the start)."""
    with pipe:
        getattr(pipe, method)(X)
        spy.update(written=0, data=0)
        return getattr(pipe, method)(X)


@pytest.mark.timeout(120)
def test_non_contiguous_outputs_are_written_in_order(spy) -> None:
    X = np.arange(21)
    out = second_call(spy, pipeline(fortran, batch_size=4), "transform", X)
    np.testing.assert_array_equal(out, fortran(X))
    assert spy == {"written": 6, "data": 0}


@pytest.mark.timeout(120)
def test_fit_transform_and_a_wrapped_step_write_in_place(spy) -> None:
    from neuraxle_stream import ParallelWorkersWrapper

    X = np.arange(33)
    out = second_call(spy, pipeline(widen, batch_size=4), "fit_transform", X)
    np.testing.assert_array_equal(out, widen(X))
    assert spy == {"written": 9, "data": 0}
    wrapper = ParallelWorkersWrapper(Batchwise(widen), n_workers=2, batch_size=4, backend="process")
    wrapped = second_call(spy, wrapper, "transform", X)
    np.testing.assert_array_equal(wrapped, widen(X))
    assert spy == {"written": 9, "data": 0}


# -- the fallbacks -------------------------------------------------------------------------


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("step", "written"),
    [
        (as_list, False),  # not an array: joined as before
        (small, False),  # too small to pay for a file write
        (float32_at_first, True),  # the dtype changes mid-run: a concatenation from there
        (longer_rows_later, None),  # the row shape changes mid-run: concatenated, which fails as before
    ],
    ids=["list", "small", "dtype-changes", "row-shape-changes"],
)
def test_unexpected_outputs_fall_back_to_the_join_of_the_parts(spy, no_leak, step, written: bool | None) -> None:
    X = np.arange(30)
    pipe = pipeline(step, batch_size=4)
    parts = [step(X[i : i + 4]) for i in range(0, 30, 4)]
    with pipe:
        for _ in range(2):  # the second call with a prediction
            if step is longer_rows_later:
                with pytest.raises(ValueError):
                    pipe.transform(X)
                continue
            out = pipe.transform(X)
            expected = as_list(X) if step is as_list else np.concatenate(parts)
            if isinstance(expected, list):
                assert out == expected
            else:
                assert out.dtype == expected.dtype
                np.testing.assert_array_equal(out, expected)
            del out
    if written is not None:
        assert (spy["written"] > 0) is written


@pytest.mark.timeout(120)
def test_a_wrong_prediction_falls_back_and_gives_the_right_output(spy, no_leak) -> None:
    pipe = pipeline(as_dtype("float64"), batch_size=4)
    with pipe:
        pipe.transform(np.arange(12))
        pipe.set_params(b=Batchwise(as_dtype("float32")))
        spy.update(written=0, data=0)
        out = pipe.transform(np.arange(12))
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, as_dtype("float32")(np.arange(12)))
        # the float64 prediction aims no float32 rows: the first minibatch comes back as data
        # (how many later ones are written into an array made from it depends on the timing)
        assert spy["data"] >= 1
        del out


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "kwargs", [{"max_retries": 1}, {"default_value_data_inputs": 0}, {"keep_incomplete_batch": False}],
    ids=["retries", "padding", "drop-last"],
)
def test_settings_that_need_the_parent_keep_the_outputs_right(spy, no_leak, kwargs) -> None:
    X = np.arange(30)
    out = second_call(spy, pipeline(widen, batch_size=4, **kwargs), "transform", X)
    n = 28 if kwargs.get("keep_incomplete_batch") is False else 30
    np.testing.assert_array_equal(out, widen(X[:n]))
    if "max_retries" in kwargs:
        assert spy["written"] == 0, "a retried minibatch's first attempt could still write"
    else:
        assert spy == {"written": 7, "data": int("default_value_data_inputs" in kwargs)}, "but a padded one"
    del out


@pytest.mark.timeout(120)
def test_traced_cached_and_length_changing_runs_come_back_as_data(spy, no_leak, tmp_path) -> None:
    X = np.arange(20)
    traced = pipeline(widen, batch_size=4).transform(X, trace=20)
    assert len(traced["b"].calls) == 5
    cached = pipeline(widen, batch_size=4, memory=str(tmp_path)).transform(X)
    np.testing.assert_array_equal(cached, widen(X))
    dropping = SequentialQueuedPipeline([("a", 2, DropFirstRow())], batch_size=4, backend="process").transform(X)
    np.testing.assert_array_equal(dropping, np.concatenate([widen(X[i : i + 4])[1:] for i in range(0, 20, 4)]))
    assert spy["written"] == 0


@pytest.mark.timeout(120)
def test_a_union_joins_its_branches_in_the_parent(spy, no_leak) -> None:
    X = np.arange(20)
    union = ParallelQueuedFeatureUnion([("w", Batchwise(widen)), ("d", Batchwise(as_dtype("float64")))], batch_size=4, backend="process")
    out = union.transform(X)
    np.testing.assert_array_equal(out, np.hstack([widen(X), widen(X)]))
    assert spy["written"] == 0


# -- failures ------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_failing_step_leaves_nothing_and_its_files_are_never_reused(no_leak) -> None:
    X = np.arange(80)
    pipe = pipeline(_fail_at_40, batch_size=4)
    with pipe:
        first = pipe.transform(X[:20])  # the prediction: the next call is aimed from its first minibatch
        with pytest.raises(ValueError, match="boom at 40"):
            pipe.transform(X)
        gc.collect()
        assert _pool_files(pipe) == [], "a worker may still write into a failed run's file"
        del first
        gc.collect()
        assert len(_pool_files(pipe)) == 1
        out = pipe.transform(X[:40])
        np.testing.assert_array_equal(out, widen(X[:40]))
        del out


@pytest.mark.timeout(120)
def test_a_killed_worker_leaves_nothing() -> None:
    names, fds = shm_names(), open_shm_files()
    X = np.arange(40)
    p = SequentialQueuedPipeline(
        [("a", Batchwise(widen)), ("die", Batchwise(_kill_at_20))],
        batch_size=4, backend="process",
    )
    with pytest.raises(BrokenPipelineError):
        p.transform(X)
    gc.collect()
    assert shm_names() == names
    assert open_shm_files() == fds


# -- the pieces ----------------------------------------------------------------------------


def test_a_target_writes_only_what_it_expects_into_its_own_file(tmp_path) -> None:
    pool = sr.RowsPool()
    rows = pool.take(10 * 32)
    assert rows is not None
    out = rows.map((10, 4), np.dtype(np.float64), pool)
    target = rows.target(6, 2, "<f8", (4,))
    assert target.write(np.full((2, 4), 7.0)) == sr.WrittenRows(rows.inode, 6, 2)
    np.testing.assert_array_equal(out[6:8], 7.0)
    for wrong in (np.full((2, 4), 7, dtype=np.int64), np.full((3, 4), 7.0), np.full((2, 5), 7.0), [[7.0] * 4] * 2):
        assert target.write(wrong) is None
    other = pool.take(10 * 32)
    assert other is not None
    moved = sr.RowsTarget(rows.pid, other.fd, rows.device, rows.inode, 0, 1, "<f8", (4,))
    assert moved.write(np.ones((1, 4))) is None, "another file behind the descriptor: never written"
    gone = sr.RowsTarget(rows.pid, 10_000, rows.device, rows.inode, 0, 1, "<f8", (4,))
    assert gone.write(np.ones((1, 4))) is None
    other.close()
    del out
    gc.collect()
    assert pool._free == [rows]
    pool.close()
    assert pool._free == [] and rows._close.alive is False


def test_the_pool_keeps_free_files_within_its_budget() -> None:
    pool = sr.RowsPool()
    pool.max_free_bytes = 3 << 20
    made = [pool.take(1 << 20) for _ in range(4)]
    assert all(made)
    for rows in made:
        pool.give_back(rows)  # type: ignore[arg-type]
    assert pool._free == made[1:], "the oldest goes first"
    assert pool.take(3 << 20) is not made[1], "none fits: a new one"
    tainted = made[1]
    pool._free.remove(tainted)  # type: ignore[arg-type]
    tainted.tainted = True  # type: ignore[union-attr]
    pool.give_back(tainted)  # type: ignore[arg-type]
    assert tainted not in pool._free
    pool.close()


def test_no_room_in_dev_shm_means_no_shared_array(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sr.SharedRows, "create", classmethod(lambda cls, nbytes: None))
    acc = sr.SharedRowAccumulator(8, 4, "k")
    acc.open(sr.RowsPool())
    acc.add(np.ones((4, ROW)))
    assert acc.target(4, 4) is None
    acc.add(np.zeros((4, ROW)))
    out = acc.result()
    assert not is_shared(out)
    np.testing.assert_array_equal(out, np.concatenate([np.ones((4, ROW)), np.zeros((4, ROW))]))


@pytest.mark.timeout(120)
def test_a_caller_keeping_many_outputs_keeps_few_descriptors(spy, no_leak, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sr.RowsPool, "max_held", 2)
    fds = open_shm_files()
    X = np.arange(12)
    pipe = pipeline(widen, batch_size=4)
    with pipe:
        kept = [pipe.transform(X) for _ in range(5)]
        assert all(is_shared(out) for out in kept) and spy["written"] > 0
        # none of the arrays', only the pool's of at most 2 files to reuse
        assert open_shm_files() - fds == 2
        for out in kept:
            np.testing.assert_array_equal(out, widen(X))
        del kept, out


@pytest.mark.timeout(120)
def test_views_outlive_their_array_and_a_pickled_array_is_a_copy(no_leak) -> None:
    X = np.arange(24)
    pipe = pipeline(widen, batch_size=4)
    with pipe:
        out = pipe.transform(X)
        assert is_shared(out)
        view, flat = out[3:7, ::2], out.reshape(-1)
        copy = pickle.loads(pickle.dumps(out))
        del out
        gc.collect()
        assert _pool_files(pipe) == [], "its views keep the file"
        assert not is_shared(copy)
        copy[:] = -1
        np.testing.assert_array_equal(view, widen(X)[3:7, ::2])
        np.testing.assert_array_equal(flat, widen(X).reshape(-1))
        assert pickle.loads(pickle.dumps(view)).tolist() == view.tolist()
        del view
        gc.collect()
        assert _pool_files(pipe) == []
        del flat
        gc.collect()
        assert len(_pool_files(pipe)) == 1, "the last view gone, the file is back for the next call"


def test_arrays_hold_no_descriptor_of_their_file(no_leak) -> None:
    pool = sr.RowsPool()
    fds = len(os.listdir("/proc/self/fd"))
    kept = []
    for i in range(1100):  # more than a default soft limit of 1,024 descriptors
        rows = pool.take(4096)
        assert rows is not None
        out = rows.map((4, 128), np.dtype(np.float64), pool)
        assert rows.write(0, np.full((4, 128), float(i)))
        pool.hold(rows)  # the end of its call: the pool keeps at most max_held descriptors
        kept.append(out)
    assert len(os.listdir("/proc/self/fd")) - fds == pool.max_held
    assert len(pool._held) == pool.max_held
    for i, out in enumerate(kept):
        assert out[3, 127] == i and out.sum() == 512 * i
    kept[-1][:] = 7.0  # writable through a closed file's mapping
    assert kept[-1].min() == 7.0
    del kept, out
    gc.collect()
    assert len(pool._free) == pool.max_held, "the files whose descriptors it kept came back"
    pool.close()
    assert len(os.listdir("/proc/self/fd")) == fds


class FailingLibc:
    """A C library whose ``mmap`` fails with ENOMEM."""

    def mmap(self, *args: object) -> int | None:
        ctypes.set_errno(errno.ENOMEM)
        return ctypes.c_void_p(-1).value

    def munmap(self, *args: object) -> int:
        raise AssertionError("nothing was mapped")


def test_a_file_that_cannot_be_mapped_gives_a_plain_array(monkeypatch: pytest.MonkeyPatch, no_leak) -> None:
    monkeypatch.setattr(sr, "_libc", FailingLibc)
    pool = sr.RowsPool()
    rows = pool.take(4096)
    assert rows is not None
    with pytest.raises(OSError, match="cannot map 4096 bytes of shared memory: Cannot allocate memory"):
        rows.map((4, 128), np.dtype(np.float64), pool)
    pool.give_back(rows)
    acc = sr.SharedRowAccumulator(8, 4, "k")
    acc.open(pool)
    acc.add(np.ones((4, ROW)))
    assert acc.target(4, 4) is None
    acc.add(np.zeros((4, ROW)))
    out = acc.result()
    assert not is_shared(out)
    np.testing.assert_array_equal(out, np.concatenate([np.ones((4, ROW)), np.zeros((4, ROW))]))
    assert len(pool._free) == 2, "the files stay free for a later call"
    pool.close()


def test_without_a_c_library_python_mmap_maps_the_file(monkeypatch: pytest.MonkeyPatch, no_leak) -> None:
    monkeypatch.setattr(sr, "_libc", lambda: None)
    pool = sr.RowsPool()
    rows = pool.take(4096)
    assert rows is not None
    out = rows.map((4, 128), np.dtype(np.float64), pool)
    rows.close()
    assert open_shm_files() >= 1, "an mmap.mmap holds a descriptor of its own"
    out[:] = 3.0
    assert is_shared(out) and out.sum() == 3.0 * 512
    del out
    gc.collect()
    assert pool._free == [], "closed: not reused"
    pool.close()


KEEP_OUTPUTS = textwrap.dedent(
    """
    import os, resource, sys
    import numpy as np
    from neuraxle_stream import BaseTransformer, NonFittableMixin, SequentialQueuedPipeline

    class Widen(NonFittableMixin, BaseTransformer):
        def transform(self, data_inputs):
            return np.asarray(data_inputs, dtype=np.float64)[:, None] + np.arange(8192)

    if __name__ == "__main__":
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        X = np.arange(2)
        pipe = SequentialQueuedPipeline([("b", 1, Widen())], batch_size=1, backend="process")
        with pipe:
            kept = [pipe.transform(X + i) for i in range(400)]
        base = kept[0]
        while isinstance(base, np.ndarray):
            base = base.base
        assert type(base).__name__ == "_Mapping", type(base)
        for i, out in enumerate(kept):
            np.testing.assert_array_equal(out, Widen().transform(X + i))
        print(os.getpid(), len(os.listdir("/proc/self/fd")))
    """
)


@pytest.mark.timeout(300)
def test_a_caller_keeps_more_outputs_than_it_may_open_descriptors(tmp_path) -> None:
    script = tmp_path / "keep.py"
    script.write_text(KEEP_OUTPUTS)
    root = os.path.dirname(os.path.dirname(os.path.abspath(sr.__file__)))  # this tree, not an installed copy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    pid, fds = (int(word) for word in done.stdout.split())
    assert fds < 100, f"{fds} descriptors open with 400 outputs alive"
    assert not [n for n in os.listdir(SHM_DIR) if n.startswith((f"nxs-{pid}-", f"nxs-rows-{pid}-"))]


def test_worker_processes_reuse_the_memory_they_free() -> None:
    code = (
        "import resource, numpy as np\n"
        "from neuraxle_stream.workers import reuse_freed_memory\n"
        "def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "def minibatch():\n"
        "    a = np.ones((16, 16384), np.float32); b = np.tanh(a); del a, b\n"
        "for _ in range(5): minibatch()\n"
        "before = faults()\n"
        "for _ in range(50): minibatch()\n"
        "print(faults() - before)\n"
        "reuse_freed_memory()\n"
        "for _ in range(5): minibatch()\n"
        "before = faults()\n"
        "for _ in range(50): minibatch()\n"
        "print(faults() - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    default, reused = (int(line) for line in out.stdout.split())
    if default < 50 * 256:
        pytest.skip(f"this C library reuses freed 1 MiB blocks already ({default} faults)")
    assert reused < 50, f"{reused} page faults for 50 minibatches"
