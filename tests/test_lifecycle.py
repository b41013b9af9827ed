"""Lifecycle under failure: reuse after errors, early close, Ctrl-C, a killed parent.

Nothing outlives a call: the autouse fixture of ``conftest.py`` checks for
worker processes and threads after every test, :func:`no_shm_left` for
shared-memory segments. The signal tests run a pipeline in a child Python
and watch every process it started (workers, fork server) from outside.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import random
import signal
import subprocess
import threading
import time

import psutil
import pytest
from faults import (
    BlocksAt,
    KillsItselfAt,
    PassThrough,
    RaisesAt,
    RaisesInSetup,
    blocking_armed,
    shm_segments,
    slow_items,
    start_child,
    three_stages,
)

from neuraxle_stream import BrokenPipelineError, SequentialQueuedPipeline, shutdown_workers

#: Items marked with this value make :class:`RaisesAt` fail.
BAD = -1


@pytest.fixture(autouse=True)
def no_shm_left():
    """Fail a test that leaves a shared-memory segment of its runs behind."""
    yield
    assert shm_segments() == []


def failing_input(call: int) -> list[int]:
    """12 items with the bad one at a position that moves from call to call."""
    items = list(range(12))
    items[call % 11] = BAD
    return items


def valid_input(call: int) -> list[int]:
    """12 items no other call uses, so a stale result cannot go unnoticed."""
    return list(range(1000 * call, 1000 * call + 12))


# -- reuse after errors ------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("kept", [False, True], ids=["per_call", "with"])
@pytest.mark.parametrize(("backend", "calls"), [("thread", 100), ("process", 10)])
def test_alternating_failing_and_valid_calls_give_correct_results(
    backend: str, calls: int, kept: bool
) -> None:
    # Two workers and room in every queue: plenty of results of a failed call
    # are still in flight when the next call starts.
    pipeline = three_stages(RaisesAt(BAD), "middle", queue=2, next_workers=2, backend=backend)
    with pipeline if kept else contextlib.nullcontext():
        for call in range(calls):
            if call % 2 == 0:
                with pytest.raises(ValueError, match=f"boom at {BAD}"):
                    pipeline.transform(failing_input(call))
            else:
                assert pipeline.transform(valid_input(call)) == valid_input(call)
                if call % 4 == 1:
                    assert list(pipeline.stream(valid_input(call + 1))) == valid_input(call + 1)


@pytest.mark.timeout(90)
def test_pipeline_kept_by_with_recovers_from_a_dead_worker() -> None:
    pipeline = three_stages(
        KillsItselfAt(BAD), "middle", queue=1, next_workers=2, backend="process"
    )
    with pipeline:
        for call in range(6):
            if call % 2 == 0:
                with pytest.raises(BrokenPipelineError, match="SIGKILL"):
                    pipeline.transform(failing_input(call))
            else:
                assert pipeline.transform(valid_input(call)) == valid_input(call)


@pytest.mark.timeout(90)
def test_pipeline_kept_by_with_recovers_from_a_timeout(backend: str) -> None:
    # Loading a step in a new process can take a while on a busy machine.
    timeout, blocked = (0.5, 1.0) if backend == "thread" else (1.5, 60.0)
    pipeline = three_stages(
        BlocksAt(BAD, seconds=blocked), "middle", backend=backend, timeout=timeout
    )
    with pipeline, blocking_armed():
        for call in range(4):
            if call % 2 == 0:
                with pytest.raises(TimeoutError):
                    pipeline.transform(failing_input(call))
            else:
                assert pipeline.transform(valid_input(call)) == valid_input(call)


@pytest.mark.timeout(60)
def test_step_changed_inside_with_is_the_one_that_runs(backend: str) -> None:
    pipeline = three_stages(RaisesAt(BAD), backend=backend)
    with pipeline:
        with pytest.raises(ValueError, match="boom"):
            pipeline.transform(failing_input(0))
        pipeline.set_params(fault__at=12345)  # the workers hold a copy of the old step
        assert pipeline.transform(failing_input(0)) == failing_input(0)


@pytest.mark.timeout(60)
def test_close_is_safe_twice_and_the_pipeline_restarts(backend: str) -> None:
    pipeline = three_stages(PassThrough(), backend=backend)
    with pipeline:
        assert pipeline.transform([1, 2, 3]) == [1, 2, 3]
    pipeline.close()
    pipeline.close()
    assert pipeline.transform([4, 5]) == [4, 5]
    with pipeline:
        assert pipeline.transform([6]) == [6]


def open_fds() -> int:
    gc.collect()  # a finished run's process objects hold their sentinels until collected
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_soak_random_failures_leave_nothing_behind() -> None:
    """Runs with random failures: fds, threads, children and segments stay flat.

    ``NEURAXLE_SOAK_RUNS`` sets the number of runs per backend (default 30; the
    process backend runs a third of them).
    """
    runs = int(os.environ.get("NEURAXLE_SOAK_RUNS", "30"))
    rng = random.Random(0)
    faults = {"ok": PassThrough, "raise": lambda: RaisesAt(3), "setup": RaisesInSetup}
    for backend, n in [("thread", runs), ("process", max(1, runs // 3))]:
        kinds = [*faults, "kill"] if backend == "process" else list(faults)
        baseline = None
        for run in range(n):
            kind = rng.choice(kinds)
            fault = KillsItselfAt(3) if kind == "kill" else faults[kind]()
            pipeline = three_stages(fault, "middle", queue=1, next_workers=2, backend=backend)
            try:
                assert pipeline.transform(list(range(8))) == list(range(8))
            except (ValueError, OSError, BrokenPipelineError):
                assert kind != "ok"
            if baseline is None and run >= 1:  # after the fork server and tracker started
                shutdown_workers()  # idle warm workers hold two descriptors each: none counted
                baseline = open_fds()
        shutdown_workers()
        assert open_fds() <= (baseline or 0) + 2
        assert [t.name for t in threading.enumerate() if t.name.startswith("neuraxle")] == []
        assert shm_segments() == []


# -- stream ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_closing_a_stream_early_stops_the_workers(backend: str) -> None:
    pipeline = SequentialQueuedPipeline(
        [slow_items, ("b", 2, PassThrough())], batch_size=1, backend=backend
    )
    stream = pipeline.stream(itertools.count())  # endless
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    start = time.monotonic()
    stream.close()
    assert time.monotonic() - start < 5.0
    # the autouse fixture checks that every worker is gone


@pytest.mark.timeout(60)
def test_dropping_a_stream_early_stops_the_workers(backend: str) -> None:
    pipeline = SequentialQueuedPipeline([slow_items, PassThrough()], batch_size=2, backend=backend)
    stream = pipeline.stream(itertools.count())
    next(stream)
    del stream


@pytest.mark.timeout(60)
def test_stream_closed_early_inside_with_leaves_no_stale_results(backend: str) -> None:
    pipeline = SequentialQueuedPipeline(
        [("a", 2, 2, PassThrough()), ("b", 2, 2, PassThrough())], batch_size=1, backend=backend
    )
    with pipeline:
        for call in range(3):
            stream = pipeline.stream(itertools.count(10_000 * (call + 1)))
            first = [next(stream) for _ in range(3)]
            stream.close()
            assert first == [10_000 * (call + 1) + i for i in range(3)]
            assert pipeline.transform(valid_input(call)) == valid_input(call)


@pytest.mark.timeout(60)
def test_stream_error_stops_the_workers(backend: str) -> None:
    pipeline = three_stages(RaisesAt(BAD), backend=backend)
    with pytest.raises(ValueError, match="boom"):
        for _ in pipeline.stream(itertools.chain(range(5), [BAD], itertools.count())):
            pass


# -- signals -----------------------------------------------------------------------



def wait_for_line(child: subprocess.Popen[str], expected: str, seen: list[str]) -> None:
    assert child.stdout is not None
    for line in child.stdout:
        seen.append(line)
        if line.strip() == expected:
            return
    raise AssertionError(f"child ended before {expected!r}:\n{''.join(seen)}")


def assert_all_gone(processes: list[psutil.Process], within: float) -> float:
    """Wait until every process has exited; return how long it took."""
    start = time.monotonic()
    _, alive = psutil.wait_procs(processes, timeout=within)
    for process in alive:  # do not leave them to the next test
        process.kill()
    assert not alive, f"left running: {[p.cmdline() for p in alive]}"
    return time.monotonic() - start


_CTRL_C = """
    import itertools, multiprocessing, sys, threading, time
    from faults import PassThrough, slow_items
    from neuraxle_stream import SequentialQueuedPipeline

    if __name__ == "__main__":
        backend, method, chain = sys.argv[1], sys.argv[2], sys.argv[3]
        p = SequentialQueuedPipeline([slow_items, ("b", 2, PassThrough())], batch_size=1, backend=backend,
                                     chain=False if chain == "False" else chain)
        def progress(items):
            for i in items:
                if i == 3:
                    print("RUNNING", flush=True)
                yield i
        try:
            if method == "stream":
                for _ in p.stream(progress(itertools.count())):
                    pass
            else:
                p.transform(progress(range(10**6)))
        except KeyboardInterrupt:
            print("KeyboardInterrupt", flush=True)
        print("children", [c.name for c in multiprocessing.active_children()], flush=True)
        # Threads cannot be killed: a busy one exits when its minibatch ends.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(t.name.startswith("neuraxle") for t in threading.enumerate()):
            time.sleep(0.05)
        print("threads", [t.name for t in threading.enumerate() if t.name.startswith("neuraxle")], flush=True)
        if any(t.name.startswith("neuraxle") for t in threading.enumerate()):
            import faulthandler  # where the thread left behind waits, for the failure message
            faulthandler.dump_traceback(all_threads=True)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("backend", "method", "chain"),
    [("thread", "transform", "auto"), ("process", "transform", "auto"), ("process", "stream", "auto"),
     ("thread", "transform", "False"), ("process", "stream", "False")],
)
def test_ctrl_c_raises_keyboard_interrupt_and_stops_every_worker(backend: str, method: str, chain: str) -> None:
    child = start_child(_CTRL_C, backend, method, chain)
    seen: list[str] = []
    try:
        wait_for_line(child, "RUNNING", seen)
        started = psutil.Process(child.pid).children(recursive=True)
        os.killpg(child.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        out, _ = child.communicate(timeout=20)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    lines = "".join(seen) + out
    assert child.returncode == 0, lines
    assert "KeyboardInterrupt\nchildren []\nthreads []\n" in lines, lines
    assert_all_gone(started, within=5.0)


_PARENT_KILLED = """
    import itertools, sys
    from faults import PassThrough, big_slow_items
    from neuraxle_stream import SequentialQueuedPipeline

    if __name__ == "__main__":
        streams = []
        for method in sys.argv[1].split(","):
            p = SequentialQueuedPipeline([big_slow_items, ("b", 2, PassThrough())], batch_size=1, mp_context=method,
                                         chain=False)
            stream = p.stream(itertools.count())
            next(stream)
            streams.append(stream)
        print("RUNNING", flush=True)
        while True:
            for stream in streams:
                next(stream)
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    ("sig", "methods"),
    [
        # fork last: its workers inherit the pipes the other workers watch.
        (signal.SIGKILL, "forkserver,spawn,fork"),
        (signal.SIGTERM, "forkserver"),
    ],
    ids=["SIGKILL", "SIGTERM"],
)
def test_workers_exit_when_the_parent_is_killed(sig: signal.Signals, methods: str) -> None:
    """Workers watch the parent (not the fork server), exit with it and unlink the run's segments."""
    child = start_child(_PARENT_KILLED, methods)
    seen: list[str] = []
    try:
        wait_for_line(child, "RUNNING", seen)
        parent = psutil.Process(child.pid)
        started = parent.children(recursive=True)
        # 3 workers per pipeline, the fork server, the resource tracker
        assert len(started) >= 3 * len(methods.split(",")) + 1, [p.cmdline() for p in started]
        assert segments_of(child.pid), "the test needs outputs that cross in shared memory"
        os.kill(child.pid, sig)
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    assert child.returncode == -sig
    assert_all_gone(started, within=5.0)
    assert segments_of(child.pid) == []


def segments_of(pid: int) -> list[str]:
    """The shared-memory segments of the runs of process ``pid``."""
    return [name for name in os.listdir("/dev/shm") if name.startswith(f"nxs-{pid}-")]


_EXITS_PROMPTLY = """
    import time
    from faults import KillsItselfAt, PassThrough, RaisesAt, three_stages
    from neuraxle_stream import BrokenPipelineError

    if __name__ == "__main__":
        start = time.monotonic()
        try:
            three_stages(KillsItselfAt(3), backend="process").transform(list(range(12)))
        except BrokenPipelineError:
            pass
        kept = three_stages(RaisesAt(3), backend="process").__enter__()  # never closed
        try:
            kept.transform(list(range(12)))
        except ValueError:
            pass
        kept.transform([10, 11])
        print("DONE", round(time.monotonic() - start, 2), flush=True)
"""


@pytest.mark.timeout(60)
def test_interpreter_exits_promptly_after_errors_and_unclosed_pipelines() -> None:
    child = start_child(_EXITS_PROMPTLY)
    seen: list[str] = []
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        seen.append(line)
        assert line.startswith("DONE"), line
        started = psutil.Process(child.pid).children(recursive=True)
        exit_start = time.monotonic()
        rest, _ = child.communicate(timeout=20)
        exit_time = time.monotonic() - exit_start
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
    assert child.returncode == 0, "".join(seen) + rest
    assert "Traceback" not in rest, rest
    assert exit_time < 10.0
    assert_all_gone(started, within=5.0)


def _slow_identity(x: object) -> object:
    time.sleep(0.005)
    return x


@pytest.mark.timeout(60)
def test_stop_from_another_thread_ends_the_call_and_keeps_the_pipeline_usable(backend: str) -> None:
    import threading

    from neuraxle_stream import PipelineStoppedError, SequentialQueuedPipeline

    p = SequentialQueuedPipeline([_slow_identity], batch_size=4, backend=backend)
    assert p.stop() is False  # nothing running
    # stop() is called once the call surely runs (an output came out, or the source is
    # being read), not after a guessed delay that a slow start-up could outlast.
    stopped: list[bool] = []
    stoppers: list[threading.Thread] = []

    def stop_in_another_thread() -> None:
        stoppers.append(threading.Thread(target=lambda: stopped.append(p.stop())))
        stoppers[-1].start()

    with pytest.raises(PipelineStoppedError, match="stop"):
        for i, _ in enumerate(p.stream(itertools.count())):  # endless: only stop() ends it
            if i == 0:
                stop_in_another_thread()

    def source():
        for i in range(1_000_000):
            if i == 20:  # read by the call's feeder: the call is running
                stop_in_another_thread()
            yield i

    with p:
        with pytest.raises(PipelineStoppedError):
            p.transform(source())
        assert p.transform([1, 2, 3]) == [1, 2, 3]  # same workers, no stale results
    for stopper in stoppers:
        stopper.join()
    assert stopped == [True, True]  # each stop() found its call running
