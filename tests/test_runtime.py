"""Tests for neuraxle_stream.runtime: starting, supervising and stopping workers.

These drive a :class:`~neuraxle_stream.runtime.Runtime` directly: which
failures leave it usable and which mark it broken, how it stops (gracefully,
or by abort when a worker is dead or stuck), how long that takes, and that the
tasks of a cancelled run never reach the next one.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import numpy as np
import pytest
from doubles import (
    LifecycleRecorder,
    RandomDelay,
    SignalsInSetupThenWaits,
    read_events,
    wait_for_file,
)
from faults import (
    BlocksAt,
    BlocksInSetup,
    ExitsInTeardown,
    KillsItselfAt,
    PassThrough,
    RaisesAt,
    RaisesInSetup,
    blocking_armed,
    shm_segments,
)

from neuraxle_stream import BrokenPipelineError, stopping
from neuraxle_stream.backends import Backend, ProcessBackend, ThreadBackend, WorkerHandle
from neuraxle_stream.minibatches import Minibatch
from neuraxle_stream.runtime import Runtime
from neuraxle_stream.savers import save_step
from neuraxle_stream.stages import StageSpec
from neuraxle_stream.workers import WorkerIO

BAD = -1


@pytest.fixture(autouse=True)
def no_shm_left():
    yield
    assert shm_segments() == []


def spec(
    step: Any, name: str = "s", index: int = 0, n_workers: int = 1, queue: int = 1, lane: int = 0
) -> StageSpec:
    return StageSpec(
        name=name,
        lane=lane,
        index=index,
        n_workers=n_workers,
        max_queue_size=queue,
        payload=save_step(step, name),
    )


def chain(*steps: Any, n_workers: int = 1, queue: int = 1) -> list[list[StageSpec]]:
    """One lane of stages named s0, s1, ..."""
    return [[spec(step, f"s{i}", i, n_workers, queue) for i, step in enumerate(steps)]]


def make_backend(name: str) -> Backend:
    return ThreadBackend() if name == "thread" else ProcessBackend()


def batches(items: list[Any]) -> list[Minibatch]:
    """One item per minibatch."""
    return [Minibatch(i, [item], rows=1) for i, item in enumerate(items)]


def outputs(runtime_: Runtime, items: list[Any], ordered: bool = True) -> list[Any]:
    return [out[0][0] for _, out in runtime_.run(batches(items), ordered=ordered)]


# -- lifecycle ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_close_before_start_and_twice_is_safe(backend: str) -> None:
    rt = Runtime(chain(PassThrough()), make_backend(backend))
    rt.close()
    assert outputs(rt, [1, 2, 3]) == [1, 2, 3]
    rt.close()
    rt.close()
    assert not rt.started and not rt.broken


@pytest.mark.timeout(60)
def test_outputs_in_input_order_or_as_completed(backend: str) -> None:
    rt = Runtime(
        chain(RandomDelay(0.01), PassThrough(), n_workers=3, queue=2), make_backend(backend)
    )
    try:
        assert outputs(rt, list(range(30))) == list(range(30))
        assert sorted(outputs(rt, list(range(30)), ordered=False)) == list(range(30))
    finally:
        rt.close()


@pytest.mark.timeout(60)
def test_a_source_that_never_waits_is_fed_by_the_supervisor_within_the_bound() -> None:
    # on threads (processes keep their feeder thread: its pickling overlaps the supervisor)
    rt = Runtime(chain(PassThrough(), PassThrough(), queue=2), ThreadBackend())
    reads: list[int] = []

    def source():
        for i in range(200):
            reads.append(i)
            yield Minibatch(i, [i], rows=1)

    try:
        run = rt.run(source(), source_waits=False)
        try:
            for taken in (1, 2, 3):
                assert next(run)[1] == [[taken - 1]]
                # read between the supervisor's waits: no thread of its own, never past the bound
                assert not [t for t in threading.enumerate() if t.name == "neuraxle_stream-feeder"]
                assert taken <= len(reads) <= rt.max_in_flight + taken
            assert [out[0][0] for _, out in run] == list(range(3, 200))
        finally:
            run.close()
        assert outputs(rt, [5, 6]) == [5, 6]
        assert list(rt.run([], source_waits=False)) == []
    finally:
        rt.close()


@pytest.mark.timeout(60)
def test_minibatches_that_fill_the_pipes_in_both_directions_flow(backend: str) -> None:
    # 40 KB minibatches each way: the bytes of a few exceed a 64 KB pipe. On processes, a
    # put must never wait for room on the first queue's pipe in the thread that reads the
    # result pipe: the workers fill that one, and wait on it before they read again.
    rt = Runtime(chain(PassThrough(), n_workers=2, queue=4), make_backend(backend))
    items = [np.full(5000, float(i)) for i in range(24)]
    try:
        got = [out[0][0] for _, out in rt.run(batches(items), source_waits=False)]
        assert len(got) == 24 and all(np.array_equal(a, b) for a, b in zip(got, items))
    finally:
        rt.close()


@pytest.mark.timeout(60)
def test_a_run_fed_by_the_supervisor_waits_out_the_tasks_a_cancelled_run_left(backend: str) -> None:
    # The run before is closed early: its tasks fill the first queue, and its workers drop
    # them without a word. The next run's first minibatch finds no room, and nothing of its
    # own is in flight to wake the supervisor: it must look again, not wait for a result.
    rt = Runtime(chain(RandomDelay(0.2), queue=2), make_backend(backend))
    try:
        run = rt.run(batches(list(range(50))))
        assert next(run)[1] == [[0]]
        run.close()
        out = [o[0] for _, o in rt.run([Minibatch(0, [7], rows=1), Minibatch(1, [8], rows=1)], source_waits=False)]
        assert out == [[7], [8]]
    finally:
        rt.close()


@pytest.mark.timeout(60)
def test_an_error_of_a_source_fed_by_the_supervisor_ends_the_run_only(backend: str) -> None:
    rt = Runtime(chain(PassThrough(), queue=2), make_backend(backend))

    def source():
        for i in range(10):
            if i == 6:
                raise LookupError("source failed at 6")
            yield Minibatch(i, [i], rows=1)

    try:
        with pytest.raises(LookupError, match="source failed at 6") as info:
            list(rt.run(source(), source_waits=False))
        assert info.value.__notes__[-1] == "Raised by the input of the queued pipeline, reading minibatch 6."
        assert not rt.broken
        assert outputs(rt, [1, 2, 3]) == [1, 2, 3]
    finally:
        rt.close()


@pytest.mark.timeout(60)
def test_source_is_read_lazily_within_the_in_flight_bound() -> None:
    rt = Runtime(chain(PassThrough(), PassThrough(), queue=2), ThreadBackend())
    reads: list[int] = []
    reached = {n: threading.Event() for n in range(1, 100)}

    def source():
        for i in itertools.count():
            reads.append(i)
            reached[len(reads)].set()
            yield Minibatch(i, [i], rows=1)

    run = rt.run(source())
    try:
        # With k outputs taken, the feeder may read max_in_flight minibatches in flight,
        # the k taken, and the one it holds waiting for a credit. It gets there (waited
        # on, not slept for), and no further.
        for taken in (1, 2):
            next(run)
            bound = rt.max_in_flight + taken + 1
            assert reached[bound].wait(30), f"the feeder stopped at {len(reads)} reads, before {bound}"
            assert not reached[bound + 1].wait(0.2), f"the feeder read {len(reads)} minibatches, more than {bound}"
    finally:
        run.close()
        rt.close()


@pytest.mark.timeout(60)
def test_teardown_runs_once_in_every_worker(backend: str, tmp_path) -> None:
    rt = Runtime(chain(LifecycleRecorder(str(tmp_path)), n_workers=3), make_backend(backend))
    try:
        assert outputs(rt, list(range(9))) == list(range(9))
        assert read_events(tmp_path, "teardown") == []
    finally:
        rt.close()
    assert len(read_events(tmp_path, "setup")) == 3
    assert len(read_events(tmp_path, "teardown")) == 3


# -- which failures leave it usable ------------------------------------------------------


@pytest.mark.timeout(60)
def test_step_error_leaves_the_runtime_usable_and_drops_stale_results(backend: str) -> None:
    rt = Runtime(
        chain(PassThrough(), RaisesAt(BAD), PassThrough(), n_workers=2, queue=2),
        make_backend(backend),
    )
    try:
        for call in range(4):
            with pytest.raises(ValueError, match="boom"):
                outputs(rt, [BAD if i == 2 else i for i in range(20)])
            assert not rt.broken
            items = list(range(100 * (call + 1), 100 * (call + 1) + 20))
            assert outputs(rt, items) == items
    finally:
        rt.close()


@pytest.mark.timeout(60)
def test_closing_a_run_early_leaves_the_runtime_usable(backend: str) -> None:
    rt = Runtime(chain(PassThrough(), PassThrough(), n_workers=2, queue=2), make_backend(backend))
    try:
        run = rt.run(batches(list(range(1000))))
        next(run)
        run.close()
        assert not rt.broken
        assert outputs(rt, [7, 8, 9]) == [7, 8, 9]
    finally:
        rt.close()


@pytest.mark.timeout(60)
def test_dead_worker_marks_the_runtime_broken() -> None:
    rt = Runtime(chain(PassThrough(), KillsItselfAt(3), PassThrough()), ProcessBackend())
    with pytest.raises(BrokenPipelineError, match=r"Worker 0 of step 's1' was killed by SIGKILL"):
        outputs(rt, list(range(10)))
    assert rt.broken
    start = time.monotonic()
    rt.close()
    assert time.monotonic() - start < 5.0


@pytest.mark.timeout(60)
def test_setup_failure_marks_the_runtime_broken(backend: str) -> None:
    rt = Runtime(chain(PassThrough(), RaisesInSetup(), n_workers=2), make_backend(backend))
    with pytest.raises(OSError, match="cannot open model"):
        outputs(rt, list(range(10)))
    assert rt.broken
    rt.close()


class _FailingBackend(ThreadBackend):
    """Fails to start its third worker."""

    def __init__(self) -> None:
        self.started = 0

    def start_worker(self, spec: StageSpec, worker_index: int, io: WorkerIO) -> WorkerHandle:
        self.started += 1
        if self.started == 3:
            raise OSError("cannot start a worker")
        return super().start_worker(spec, worker_index, io)


@pytest.mark.timeout(60)
def test_failure_to_start_marks_the_runtime_broken_and_stops_the_started_workers() -> None:
    rt = Runtime(chain(PassThrough(), PassThrough(), n_workers=2), _FailingBackend())
    with pytest.raises(OSError, match="cannot start a worker"):
        outputs(rt, [1])
    assert rt.broken
    rt.close()  # the two started threads exit: checked by the autouse fixture


# -- stopping ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_abort_with_a_stuck_thread_returns_promptly(tmp_path) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    rt = Runtime(chain(PassThrough(), SignalsInSetupThenWaits(str(started), str(release), 60.0)), ThreadBackend())
    try:
        rt.start()
        assert wait_for_file(started, 30)  # the worker is stuck in setup(), not sleeping through a guess
        start = time.monotonic()
        rt.close(graceful=False)
        assert time.monotonic() - start < stopping.ABORT_GRACE + 1.0
        assert any(t.name == "neuraxle_stream:s1:0" for t in threading.enumerate())
    finally:
        release.touch()
    # released: the thread sees the abort and exits (autouse fixture)


@pytest.mark.timeout(60)
def test_graceful_stop_that_does_not_finish_falls_back_to_abort(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stopping, "STOP_GRACE", 0.5)  # read where the stop waits
    rt = Runtime(chain(PassThrough(), BlocksInSetup(seconds=60.0)), ProcessBackend())
    with blocking_armed():
        rt.start()
        start = time.monotonic()
        rt.close()  # the stuck process is killed
        assert time.monotonic() - start < 5.0


@pytest.mark.timeout(60)
def test_worker_dying_in_teardown_is_a_broken_pipeline() -> None:
    rt = Runtime(
        chain(PassThrough(), ExitsInTeardown(), PassThrough(), n_workers=2), ProcessBackend()
    )
    assert outputs(rt, list(range(6))) == list(range(6))
    start = time.monotonic()
    with pytest.raises(
        BrokenPipelineError, match=r"step 's1' exited with code 4 while running teardown\(\)"
    ):
        rt.close()
    assert time.monotonic() - start < 5.0  # not the whole STOP_GRACE


# -- timeouts ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_time_waiting_on_a_full_queue_does_not_count_toward_the_timeout() -> None:
    # s0 takes 0.3 s a minibatch, then waits up to 0.8 s for s1 to take it:
    # more than the timeout together, but the wait is backpressure.
    slow = BlocksAt(None, seconds=0.3)
    blocked = BlocksAt(None, seconds=0.8)
    rt = Runtime(chain(slow, blocked, queue=1), ThreadBackend(), timeout=1.5)
    try:
        with blocking_armed():
            assert outputs(rt, list(range(4))) == list(range(4))
    finally:
        rt.close()


@pytest.mark.timeout(60)
def test_stage_spec_key_follows_the_step() -> None:
    assert repr(spec(RaisesAt(1))) == repr(spec(RaisesAt(1)))
    assert repr(spec(RaisesAt(1))) != repr(spec(RaisesAt(2)))


@pytest.mark.timeout(60)
def test_lanes_get_every_minibatch(backend: str) -> None:
    lanes = [
        [spec(PassThrough(), "a", lane=0)],
        [spec(RandomDelay(0.01), "b", lane=1, n_workers=2)],
    ]
    rt = Runtime(lanes, make_backend(backend))
    try:
        got = list(rt.run(batches(list(range(10)))))
        assert got == [(i, [[i], [i]]) for i in range(10)]
    finally:
        rt.close()
