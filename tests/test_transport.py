"""Transports: exact round trips of every array kind, and no leaked shared memory."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.extra import numpy as hnp

from neuraxle_stream import SequentialQueuedPipeline
from neuraxle_stream.shm_segments import SHM_DIR, unlink_segments
from neuraxle_stream.transport import PickleTransport, SharedMemoryTransport

pytestmark = pytest.mark.skipif(not os.path.isdir(SHM_DIR), reason="needs /dev/shm")

DTYPES = ["bool", "int8", "uint16", "int32", "int64", "float16", "float32", "float64", "complex128", "U5", "M8[ms]"]


def segments(prefix: str | None = None) -> list[str]:
    """Segments of runs started by this test process (other processes may run tests too)."""
    prefix = prefix or f"nxs-{os.getpid()}-"
    return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(prefix))


@pytest.fixture
def pair(request: pytest.FixtureRequest):
    prefix = f"nxs-test-{os.getpid()}-{request.node.name[:20]}"
    sender, receiver = SharedMemoryTransport(prefix, threshold=1024), SharedMemoryTransport(prefix, threshold=1024)
    yield sender, receiver
    sender.close()
    receiver.close()
    assert segments(prefix) == []


def roundtrip(pair, value):
    sender, receiver = pair
    return receiver.loads(sender.dumps(value))


def assert_same_array(a: np.ndarray, b: np.ndarray) -> None:
    assert type(b) is type(a)
    assert b.dtype == a.dtype and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3,), (700,), (40, 50), (4, 0, 3), (8, 9, 10)])
def test_round_trip_every_dtype_and_shape(pair, dtype: str, shape: tuple[int, ...]) -> None:
    a = (np.arange(int(np.prod(shape))) % 7).astype(dtype).reshape(shape)
    assert_same_array(a, roundtrip(pair, a))


@pytest.mark.parametrize(
    "make",
    [
        lambda a: np.asfortranarray(a),
        lambda a: a[::2, ::3],
        lambda a: a.T,
        lambda a: a[:, 5],
        lambda a: a[::-1],
    ],
    ids=["fortran", "strided", "transposed", "column", "reversed"],
)
def test_round_trip_memory_orders_and_views(pair, make) -> None:
    a = make(np.random.default_rng(0).random((300, 200)))
    b = roundtrip(pair, a)
    assert_same_array(a, b)
    assert b.flags.writeable


@settings(max_examples=30, deadline=None)
@given(hnp.arrays(hnp.scalar_dtypes(), hnp.array_shapes(min_dims=0, max_dims=3, max_side=40)))
def test_round_trip_hypothesis(a: np.ndarray) -> None:
    prefix = f"nxs-test-{os.getpid()}-hyp"
    sender, receiver = SharedMemoryTransport(prefix, threshold=64), SharedMemoryTransport(prefix, threshold=64)
    try:
        b = receiver.loads(sender.dumps(a))
        # The reference is plain pickle (NumPy drops the byte order of a few dtypes itself).
        expected = pickle.loads(pickle.dumps(a, protocol=5))
        assert b.dtype == expected.dtype and b.shape == a.shape
        np.testing.assert_array_equal(expected, b)
    finally:
        sender.close()
        receiver.close()


def test_large_buffers_leave_the_pickle(pair) -> None:
    sender, _ = pair
    a = np.ones((1000, 1000))
    data = sender.dumps({"x": a, "y": [a[:10], "text"]})
    assert len(data) < 2000, "large array data must travel through shared memory"


def test_segments_are_reused(pair) -> None:
    sender, receiver = pair
    for _ in range(10):
        receiver.loads(sender.dumps(np.ones(200_000)))
    assert len(sender._pool) == 1


def test_objects_and_lambdas_fall_back_to_cloudpickle(pair) -> None:
    f = roundtrip(pair, lambda x: x + 1)
    assert f(1) == 2
    assert PickleTransport().loads(PickleTransport().dumps({"k": [1, (2, 3)]})) == {"k": [1, (2, 3)]}


def test_torch_tensors_round_trip(pair) -> None:
    torch = pytest.importorskip("torch")
    t = torch.arange(100_000, dtype=torch.float32).reshape(1000, 100)
    sender, receiver = pair
    data = sender.dumps(t)
    assert len(data) < 2000
    back = receiver.loads(data)
    assert isinstance(back, torch.Tensor) and torch.equal(back, t)
    bf = torch.ones(4, dtype=torch.bfloat16)
    assert torch.equal(roundtrip(pair, bf), bf)


def test_unlink_segments_removes_only_its_prefix(pair) -> None:
    sender, _ = pair
    sender.dumps(np.ones(10_000))
    other = SharedMemoryTransport("nxs-test-other")
    other.dumps(np.ones(100_000))
    assert unlink_segments(sender.prefix) == 1
    assert segments("nxs-test-other") != []
    other.close()
    assert segments("nxs-test-other") == []


def test_unlink_segments_spares_a_run_whose_prefix_extends_it() -> None:
    """Run ``...-1`` closing must not sweep the live segments of run ``...-10``."""
    base = f"nxs-test-{os.getpid()}-run"
    one, ten = SharedMemoryTransport(f"{base}-1"), SharedMemoryTransport(f"{base}-10")
    try:
        one.dumps(np.ones(100_000))
        message = ten.dumps(np.arange(100_000.0))
        assert unlink_segments(f"{base}-1") == 1
        assert len(segments(f"{base}-10")) == 1
        np.testing.assert_array_equal(SharedMemoryTransport(f"{base}-10").loads(message), np.arange(100_000.0))
    finally:
        one.close()
        ten.close()
    assert segments(base) == []


@pytest.mark.timeout(60)
def test_process_pipeline_moves_large_arrays_and_leaks_nothing() -> None:
    before = segments()
    X = np.random.default_rng(1).random((40, 50_000))
    p = SequentialQueuedPipeline([("a", 2, lambda x: x * 2), ("b", lambda x: x + 1)], batch_size=3, backend="process")
    out = p.transform(X)
    np.testing.assert_array_equal(np.asarray(out), X * 2 + 1)
    assert segments() == before


def _kill_self(x):
    os.kill(os.getpid(), 9)


@pytest.mark.timeout(60)
def test_killed_worker_leaks_no_segment() -> None:
    from neuraxle_stream import BrokenPipelineError

    before = segments()
    X = np.random.default_rng(2).random((20, 50_000))
    p = SequentialQueuedPipeline(
        [("a", lambda x: x * 2), ("die", _kill_self)], batch_size=2, backend="process"
    )
    with pytest.raises(BrokenPipelineError):
        p.transform(X)
    assert segments() == before


def test_received_arrays_view_the_segment_and_free_it_when_dropped(pair) -> None:
    sender, receiver = pair
    a = np.arange(100_000, dtype=np.float32)
    b = receiver.loads(sender.dumps(a))
    (segment,) = sender._pool
    assert not segment.is_free(), "the receiver's array leases the segment"
    view = b[10:20]
    del b
    assert not segment.is_free(), "a view of the received array keeps the lease"
    np.testing.assert_array_equal(view, a[10:20])
    del view
    assert segment.is_free()


def test_the_same_segments_carry_every_message(pair) -> None:
    sender, receiver = pair
    names = set()
    for i in range(20):
        out = receiver.loads(sender.dumps({"x": np.full(50_000, i), "y": np.full((300, 300), -i)}))
        assert out["x"][0] == i and out["y"][-1, -1] == -i
        del out
        names.update(seg.name for seg in sender._pool)
    assert len(names) == 2, "one segment per buffer, reused across messages"
    assert len(receiver._mapped) == 2


def test_kept_arrays_make_the_pool_grow_and_survive_close(pair) -> None:
    sender, receiver = pair
    kept = [receiver.loads(sender.dumps(np.full(100_000, i))) for i in range(5)]
    assert len(sender._pool) == 5
    sender.close()
    receiver.close()
    assert segments(sender.prefix) == []
    for i, arr in enumerate(kept):  # unlinked files stay valid while mapped
        assert (arr == i).all()


def test_object_arrays_travel_in_the_pickle(pair) -> None:
    sender, receiver = pair
    a = np.array([{"k": i} for i in range(20_000)], dtype=object)
    b = receiver.loads(sender.dumps(a))
    assert b.dtype == object and list(b[:3]) == [{"k": 0}, {"k": 1}, {"k": 2}]
    assert sender._pool == []


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["transform", "stream"])
def test_large_arrays_through_two_process_stages_equal_the_sequential_reference(method: str) -> None:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    before = segments()
    X = np.random.default_rng(3).random((12, 512 * 1024)).astype(np.float32)  # 2 MB rows
    steps = [FunctionTransformer(np.negative), FunctionTransformer(np.sqrt)]
    expected = make_pipeline(*steps).fit_transform(-X)
    pipe = SequentialQueuedPipeline([("neg", 2, steps[0]), ("sqrt", steps[1])], batch_size=2, backend="process")
    with pipe:
        for _ in range(2):  # the second call reuses the pools of the first
            if method == "transform":
                out = pipe.transform(-X)
            else:
                out = np.stack(list(pipe.stream(row for row in -X)))
            np.testing.assert_array_equal(out, expected)
    assert segments() == before


@pytest.mark.timeout(60)
def test_a_failing_step_with_large_arrays_leaks_no_segment() -> None:
    before = segments()
    X = np.random.default_rng(4).random((20, 50_000))

    def fail_late(x):
        if x[0] == X[12, 0]:  # a per-item function: x is one row
            raise ValueError("boom")
        return x

    p = SequentialQueuedPipeline([("a", lambda x: x * 1), ("b", fail_late)], batch_size=2, backend="process")
    with pytest.raises(ValueError, match="boom"):
        p.transform(X)
    assert segments() == before


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint64", "float16", "float64", "complex64", ">i4", "<f8"])
@pytest.mark.parametrize("shape", [(), (0,), (1,), (3, 4)])
def test_small_arrays_take_the_short_path_and_come_back_writable(dtype: str, shape: tuple[int, ...]) -> None:
    a = (np.arange(int(np.prod(shape))) % 5).astype(dtype).reshape(shape)
    for transport in (PickleTransport(), SharedMemoryTransport(f"nxs-test-{os.getpid()}-small")):
        b = transport.loads(transport.dumps(a))
        assert_same_array(a, b)
        assert b.dtype.str == a.dtype.str and b.flags.writeable
        transport.close()


def test_messages_pickle_with_every_field() -> None:
    import dataclasses

    from neuraxle_stream.messages import QueuedMinibatchTask, StageResult, TaskRecord

    record = TaskRecord("s", 1, 2, 3.0, 4.0, 5.0, None, False, 6, 7.0)
    task = QueuedMinibatchTask(3, np.arange(4), [1, 2], 9, (record,), ("t",), {"s": {"w": 1}})
    back = PickleTransport().loads(PickleTransport().dumps(StageResult(2, task)))
    assert back.lane == 2
    for f in dataclasses.fields(QueuedMinibatchTask):
        assert repr(getattr(back.task, f.name)) == repr(getattr(task, f.name)), f.name


def test_a_receiver_over_its_lease_budget_copies_and_frees_at_once(pair) -> None:
    sender, receiver = pair
    receiver.lease_budget = 3 * 800_000
    kept = [receiver.loads(sender.dumps(np.full(100_000, i))) for i in range(5)]  # 800 kB each
    assert [seg.is_free() for seg in sender._pool] == [False, False, False, True]
    assert all((arr == i).all() for i, arr in enumerate(kept))
    assert receiver._leased == 3 * 800_000
    del kept
    assert receiver._leased == 0 and all(seg.is_free() for seg in sender._pool)


def test_evicting_a_mapping_that_arrays_still_view_keeps_them_valid(pair) -> None:
    sender, receiver = pair
    receiver.max_mapped = 1
    kept = [receiver.loads(sender.dumps(np.full(100_000, i))) for i in range(3)]
    assert len(receiver._mapped) == 1
    assert all((arr == i).all() for i, arr in enumerate(kept))


def test_no_room_for_a_segment_sends_arrays_in_band_and_spills_to_a_file(
    pair, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import errno

    import neuraxle_stream.transport as transport

    def full(name: str, capacity: int):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(transport.Segment, "create", full)
    monkeypatch.setattr(transport, "_warned_full", False)
    sender, receiver = pair
    X = np.arange(100_000, dtype=np.float64)
    data = sender.dumps({"x": X})
    assert not data.startswith(transport._SHM_MAGIC)  # in band, as PickleTransport's
    assert_same_array(X, receiver.loads(data)["x"])
    spilled = sender.spill(data)
    assert spilled.startswith(transport.SPILLED) and os.path.isfile(spilled[len(transport.SPILLED) :].decode())
    assert_same_array(X, receiver.load_spilled(spilled)["x"])
    sender.spill(data)  # never read: close unlinks it
    sender.close()
    assert not [n for n in os.listdir(transport.tempfile.gettempdir()) if n.startswith(sender.prefix)]
    warned = [r for r in caplog.records if "docker run --shm-size" in r.getMessage()]
    assert len(warned) == 1  # once per process


_SMALL_SHM_RUN = """
import logging, os, sys
import numpy as np
from neuraxle_stream import SequentialQueuedPipeline
from neuraxle_stream.shm_segments import SHM_DIR

def neg(x):
    return -x

if __name__ == "__main__":
    assert SHM_DIR == sys.argv[1], SHM_DIR
    logging.basicConfig(format="%(process)d %(message)s")
    X = np.random.default_rng(5).random((6, 4 << 20)).astype(np.float32)  # 16 MB rows
    pipe = SequentialQueuedPipeline([("a", neg), ("b", np.sqrt)], batch_size=1, backend="process")
    with pipe:
        out = pipe.transform(-X)
        out2 = list(pipe.stream(iter(-X[:3])))
    np.testing.assert_array_equal(out, np.sqrt(X))
    np.testing.assert_array_equal(np.stack(out2), np.sqrt(X[:3]))
    print("done")
"""


@pytest.fixture
def small_shm(tmp_path):
    """A tmpfs of 8 MB, unmounted after (skips where mounting is not permitted)."""
    import subprocess

    folder = tmp_path / "shm"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs (needs root or CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("size", ["8m", "24m"])
def test_a_full_shm_slows_a_run_down_but_never_kills_it(small_shm, tmp_path, size: str) -> None:
    import subprocess
    import sys

    subprocess.run(["mount", "-o", f"remount,size={size}", str(small_shm)], check=True)
    temp = tmp_path / "tmp"  # where spilled files go: checked empty after
    temp.mkdir()
    env = {**os.environ, "NEURAXLE_STREAM_SHM_DIR": str(small_shm), "TMPDIR": str(temp)}
    (tmp_path / "run.py").write_text(_SMALL_SHM_RUN)
    done = subprocess.run(
        [sys.executable, str(tmp_path / "run.py"), str(small_shm)],
        env=env, capture_output=True, text=True, timeout=150, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]  # -7: SIGBUS
    assert done.stdout.strip() == "done"
    warned = [line.split()[0] for line in done.stderr.splitlines() if "docker run --shm-size" in line]
    assert warned and len(warned) == len(set(warned))  # at least one process warned, each once
    assert os.listdir(small_shm) == []
    assert os.listdir(temp) == []


def test_no_room_for_the_rounded_up_size_makes_a_segment_of_the_exact_size(
    pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import neuraxle_stream.transport as transport

    create = transport.Segment.create
    asked: list[int] = []

    def no_room_over(name: str, capacity: int):
        asked.append(capacity)
        if capacity > 3 << 20:
            raise OSError(errno.ENOSPC, "No space left on device")
        return create(name, capacity)

    monkeypatch.setattr(transport.Segment, "create", no_room_over)
    sender, receiver = pair
    X = np.arange(3 << 17, dtype=np.float64)  # 3 MiB: rounded up to 4 MiB
    data = sender.dumps(X)
    assert data.startswith(transport._SHM_MAGIC)
    assert_same_array(X, receiver.loads(data))
    assert asked == [4 << 20, 3 << 20]
