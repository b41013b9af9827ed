"""Transports: exact round trips of every array kind, and no leaked shared memory."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis.extra import numpy as hnp

from neuraxle_stream import SequentialQueuedPipeline
from neuraxle_stream.transport import (
    SHM_DIR,
    PickleTransport,
    SharedMemoryTransport,
    unlink_segments,
)

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
