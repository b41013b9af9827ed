"""Every failure reaches the caller as the right error, promptly, naming where it happened.

The matrix: each fault injector of ``faults.py`` x its position in a 3-stage
pipeline (first, middle, last) x the queue size (1, 2) x the workers of the
next stage (1, 2). The whole matrix runs on threads; processes (about 0.3 s a
run) run every injector at every position plus the full matrix for two
injectors, and a few injectors under ``spawn`` and ``fork``. After each test
the autouse fixture of ``conftest.py`` checks that no worker process or thread
is left, and :func:`no_shm_left` that no shared-memory segment is.

The bound on the time to error is generous (:data:`BOUND`): the measured times
are 0.01 s on threads and 0.1-0.4 s on processes (see the reliability table).
"""

from __future__ import annotations

import pickle
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from faults import (
    POSITIONS,
    BadInitError,
    BlocksAt,
    BlocksInSetup,
    ExitsAt,
    FailsToPickle,
    FailsToUnpickle,
    KillsItselfAt,
    MultiArgError,
    OutOfMemoryAt,
    PassThrough,
    RaisesAt,
    RaisesBadInitAt,
    RaisesInSetup,
    RaisesInTeardown,
    RaisesMultiArgAt,
    RaisesUnpicklableAt,
    ReturnsUnpicklableAt,
    SegfaultsAt,
    UnpicklableError,
    blocking_armed,
    raising_source,
    release_blocked,
    shm_segments,
    three_stages,
    time_to_error,
)

from neuraxle_stream import (
    BrokenPipelineError,
    InvalidParameterError,
    ParallelQueuedFeatureUnion,
    RemoteTraceback,
    SequentialQueuedPipeline,
    WorkerError,
)

#: Seconds within which every error must reach the caller.
BOUND = 30.0  # measured: 0.3-0.5 s; generous for a loaded CI machine and spawn start-up
#: The minibatch (and item) at which injectors fail; ``X`` has 12 items.
AT = 5
X = list(range(12))


@pytest.fixture(autouse=True)
def no_shm_left():
    """Fail a test that leaves a shared-memory segment of its runs behind."""
    yield
    assert shm_segments() == []


@dataclass(frozen=True)
class Expect:
    """What the caller gets: ``type`` with ``args`` (when given) and a message matching ``match``."""

    type: type[BaseException]
    match: str
    where: str  # what the note names after the step and worker
    args: tuple[Any, ...] | None = None
    remote: bool = True  # chained from a RemoteTraceback
    tb: str = "faults.py"  # in the remote traceback


@dataclass(frozen=True)
class Case:
    name: str
    fault: Callable[[], Any]
    thread: Expect | None  # None: the run succeeds on threads
    process: Expect | None = None  # None: same as on threads

    def expect(self, backend: str) -> Expect | None:
        if backend == "process" and self.process is not None:
            return self.process
        return self.thread

    def __str__(self) -> str:
        return self.name


_ON = f"minibatch {AT}"
CASES = {
    c.name: c
    for c in [
        Case(
            "raises",
            lambda: RaisesAt(AT),
            Expect(ValueError, f"boom at {AT}", _ON, (f"boom at {AT}",)),
        ),
        Case(
            "multi_arg_error",
            lambda: RaisesMultiArgAt(AT),
            Expect(MultiArgError, "bad item", _ON, (7, "bad item", {"at": AT})),
        ),
        Case(
            "error_that_cannot_unpickle",
            lambda: RaisesBadInitAt(AT),
            Expect(BadInitError, "error 7: bad item", _ON),
            Expect(WorkerError, r"faults\.BadInitError: error 7: bad item", _ON),
        ),
        Case(
            "error_that_cannot_pickle",
            lambda: RaisesUnpicklableAt(AT),
            Expect(UnpicklableError, f"unpicklable at {AT}", _ON),
            Expect(WorkerError, rf"faults\.UnpicklableError: unpicklable at {AT}", _ON),
        ),
        Case(
            "output_that_cannot_pickle",
            lambda: ReturnsUnpicklableAt(AT),
            None,  # threads pass objects by reference
            Expect(TypeError, "pickle", _ON, tb="cannot pickle"),
        ),
        Case(
            "setup_raises",
            RaisesInSetup,
            Expect(OSError, "cannot open model", "setup()", (5, "cannot open model")),
        ),
        Case(
            "step_cannot_unpickle",
            FailsToUnpickle,
            Expect(RuntimeError, "cannot be rebuilt", "setup()"),
        ),
        Case(
            "teardown_raises",
            RaisesInTeardown,
            Expect(RuntimeError, "cannot release model", "teardown()"),
        ),
        Case(
            "os_exit",
            lambda: ExitsAt(AT),
            None,
            Expect(
                BrokenPipelineError,
                r"Worker \d of step 'fault' exited with code 3 while running minibatch 5",
                _ON,
                remote=False,
            ),
        ),
        Case(
            "sigkill",
            lambda: KillsItselfAt(AT),
            None,
            Expect(
                BrokenPipelineError,
                r"Worker \d of step 'fault' was killed by SIGKILL \(exit code -9\)",
                _ON,
                remote=False,
            ),
        ),
        Case(
            "segfault",
            lambda: SegfaultsAt(AT),
            None,
            Expect(
                BrokenPipelineError,
                r"Worker \d of step 'fault' was killed by SIGSEGV \(exit code -11\)",
                _ON,
                remote=False,
            ),
        ),
        Case("out_of_memory", lambda: OutOfMemoryAt(AT), None, Expect(MemoryError, "", _ON)),
    ]
}
#: Injectors that end their process: never on threads.
PROCESS_ONLY = {"os_exit", "sigkill", "segfault", "out_of_memory"}
THREAD_CASES = [c for name, c in CASES.items() if name not in PROCESS_ONLY]


def check_outcome(case: Case, backend: str, call: Callable[[], Any]) -> None:
    """Run ``call`` and check the caller gets what ``case`` says, within :data:`BOUND`."""
    expect = case.expect(backend)
    if expect is None:
        out = call()
        assert len(out) == len(X) and out[:AT] == X[:AT]
        return
    exc, elapsed = time_to_error(call)
    assert elapsed < BOUND, f"{case}: {elapsed:.1f} s to error"
    assert type(exc) is expect.type, f"{case}: got {exc!r}"
    assert re.search(expect.match, str(exc)), f"{case}: {exc}"
    if expect.args is not None:
        assert exc.args == expect.args
    notes = "\n".join(getattr(exc, "__notes__", []))
    assert re.search(rf"step 'fault', worker \d, {re.escape(expect.where)}(?!\d)", notes), notes
    if expect.remote:
        assert isinstance(exc.__cause__, RemoteTraceback)
        assert "Traceback" in exc.__cause__.tb and expect.tb in exc.__cause__.tb
    else:
        assert exc.__cause__ is None


# -- the matrix ---------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("next_workers", [1, 2])
@pytest.mark.parametrize("queue", [1, 2])
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("case", THREAD_CASES, ids=str)
def test_matrix_on_threads(case: Case, position: str, queue: int, next_workers: int) -> None:
    pipeline = three_stages(case.fault(), position, queue, next_workers, backend="thread")
    check_outcome(case, "thread", lambda: pipeline.transform(X))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("case", CASES.values(), ids=str)
def test_every_injector_at_every_position_on_processes(case: Case, position: str) -> None:
    pipeline = three_stages(case.fault(), position, queue=1, next_workers=2, backend="process")
    check_outcome(case, "process", lambda: pipeline.transform(X))


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("queue", "next_workers"), [(1, 1), (2, 1), (2, 2)])
@pytest.mark.parametrize("case", [CASES["raises"], CASES["sigkill"]], ids=str)
def test_queue_and_worker_matrix_on_processes(case: Case, queue: int, next_workers: int) -> None:
    pipeline = three_stages(case.fault(), "first", queue, next_workers, backend="process")
    check_outcome(case, "process", lambda: pipeline.transform(X))


_START_METHOD_CASES = [
    pytest.param(CASES[name], method, id=f"{name}-{method}")
    for method, names in {
        # spawn starts a fresh interpreter per worker (seconds on 2 cores): one case.
        "spawn": ["segfault"],
        "fork": ["raises", "error_that_cannot_pickle", "step_cannot_unpickle", "segfault"],
    }.items()
    for name in names
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("case", "mp_context"), _START_METHOD_CASES)
def test_start_methods(case: Case, mp_context: str) -> None:
    pipeline = three_stages(case.fault(), "middle", backend="process", mp_context=mp_context)
    check_outcome(case, "process", lambda: pipeline.transform(X))


# -- one failure, several ways ---------------------------------------------------


@pytest.mark.timeout(60)
def test_exception_keeps_its_attributes_and_the_remote_traceback(backend: str) -> None:
    exc, _ = time_to_error(lambda: three_stages(RaisesMultiArgAt(AT), backend=backend).transform(X))
    assert isinstance(exc, MultiArgError)
    assert (exc.code, exc.reason, exc.detail) == (7, "bad item", {"at": AT})
    assert exc.__notes__ == [
        f"Raised in a worker of the queued pipeline: step 'fault', worker 0, minibatch {AT}."
    ]
    assert "in fail" in exc.__cause__.tb and "raise MultiArgError" in exc.__cause__.tb


@pytest.mark.timeout(60)
def test_worker_error_carries_the_original_type_message_and_traceback() -> None:
    exc, _ = time_to_error(
        lambda: three_stages(RaisesUnpicklableAt(AT), backend="process").transform(X)
    )
    assert isinstance(exc, WorkerError) and isinstance(exc, RuntimeError)
    assert exc.type_name == "faults.UnpicklableError"
    assert exc.message == f"unpicklable at {AT}"
    assert "UnpicklableError" in exc.remote_traceback and "in fail" in exc.remote_traceback
    assert pickle.loads(pickle.dumps(exc)).type_name == exc.type_name


@pytest.mark.timeout(60)
def test_output_that_cannot_be_pickled_names_the_step() -> None:
    exc, _ = time_to_error(
        lambda: three_stages(ReturnsUnpicklableAt(AT), backend="process").transform(X)
    )
    assert isinstance(exc, TypeError)
    assert exc.__notes__ == [
        f"Raised sending the output of step 'fault' for minibatch {AT}.",
        f"Raised in a worker of the queued pipeline: step 'fault', worker 0, minibatch {AT}.",
    ]


@pytest.mark.timeout(60)
def test_step_that_cannot_be_pickled_is_named(backend: str) -> None:
    pipeline = three_stages(FailsToPickle(), backend=backend)
    with pytest.raises(
        InvalidParameterError, match=r"Step 'fault' \(FailsToPickle\) cannot be sent to its workers"
    ) as info:
        pipeline.transform(X)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)
    assert "refuses to be pickled" in str(info.value)


@pytest.mark.timeout(60)
def test_union_branch_failure_names_the_branch(backend: str) -> None:
    union = ParallelQueuedFeatureUnion(
        [("ok", PassThrough()), ("fault", 2, RaisesAt(AT))], batch_size=1, backend=backend
    )
    with pytest.raises(ValueError, match=f"boom at {AT}") as info:
        union.transform(X)
    assert re.search(rf"step 'fault', worker \d, minibatch {AT}", info.value.__notes__[0])


@pytest.mark.timeout(60)
def test_union_branch_death_is_a_broken_pipeline() -> None:
    union = ParallelQueuedFeatureUnion(
        [("ok", PassThrough()), ("fault", SegfaultsAt(AT))], batch_size=1
    )
    with pytest.raises(BrokenPipelineError, match="Worker 0 of step 'fault' was killed by SIGSEGV"):
        union.transform(X)


@pytest.mark.timeout(60)
def test_first_minibatch_death_is_noticed() -> None:
    """Both workers of the last stage die on their first minibatch."""
    pipeline = three_stages(KillsItselfAt(None), "last", next_workers=2, backend="process")
    with pytest.raises(BrokenPipelineError, match="SIGKILL"):
        pipeline.transform(X)


# -- timeouts ----------------------------------------------------------------------

#: ``timeout=`` per backend: loading a step in a new process takes a while on a busy machine.
TIMEOUT = {"thread": 0.5, "process": 1.5}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("position", POSITIONS)
def test_timeout_names_the_blocked_step_and_minibatch(backend: str, position: str) -> None:
    # On threads the step frees itself after a while: a thread cannot be killed.
    # The timeout also bounds setup(), which includes loading the step: a first call
    # inside ``with`` starts the workers and loads the steps, so that on a loaded
    # machine the timeout below times the blocked minibatch only.
    fault = BlocksAt(AT, seconds=2.0 if backend == "thread" else 60.0)
    timeout = TIMEOUT[backend]
    pipeline = three_stages(fault, position, queue=1, backend=backend, timeout=timeout)
    with pipeline, blocking_armed():
        assert pipeline.transform([0, 1]) == [0, 1]  # AT is not among them
        exc, elapsed = time_to_error(lambda: pipeline.transform(X))
    assert elapsed < BOUND
    assert type(exc) is TimeoutError
    # Not the stages waiting behind it on a full queue.
    assert str(exc) == (
        f"Step 'fault' (worker 0) spent more than {timeout} s on minibatch {AT}; the pipeline was stopped."
    )
    assert exc.__notes__ == [f"In the queued pipeline: step 'fault', worker 0, minibatch {AT}."]


@pytest.mark.timeout(60)
def test_timeout_in_setup(backend: str) -> None:
    fault = BlocksInSetup(seconds=2.0 if backend == "thread" else 60.0)
    pipeline = three_stages(fault, backend=backend, timeout=TIMEOUT[backend])
    message = rf"Step 'fault' \(worker 0\) spent more than {TIMEOUT[backend]} s on setup\(\)"
    with blocking_armed(), pytest.raises(TimeoutError, match=message):
        pipeline.transform(X)


@pytest.mark.timeout(60)
def test_thread_blocked_forever_does_not_hang_the_caller() -> None:
    """The caller gets its error; the stuck thread exits once its step returns."""
    pipeline = three_stages(BlocksInSetup(seconds=60.0), backend="thread", timeout=0.5)
    with blocking_armed():
        exc, elapsed = time_to_error(lambda: pipeline.transform(X))
        assert isinstance(exc, TimeoutError) and elapsed < 5.0
        assert any(t.name == "neuraxle_stream:fault:0" for t in threading.enumerate())
    # released here; the autouse fixture checks that the thread is gone


@pytest.mark.timeout(60)
def test_slow_step_within_its_timeout_succeeds(backend: str) -> None:
    fault = BlocksAt(AT, seconds=0.2)  # not armed: waits its 0.2 s
    release_blocked()
    pipeline = three_stages(fault, backend=backend, timeout=5.0)
    assert pipeline.transform(X) == X


# -- the source and the input ----------------------------------------------------------


@pytest.mark.timeout(60)
def test_source_error_propagates_with_its_type(backend: str) -> None:
    pipeline = three_stages(PassThrough(), backend=backend)
    with pytest.raises(LookupError, match="source failed at 7") as info:
        pipeline.transform(raising_source(12, 7))
    assert "reading minibatch 7" in info.value.__notes__[-1]
    with pytest.raises(LookupError, match="source failed at 7"):
        list(pipeline.stream(raising_source(12, 7)))


@pytest.mark.timeout(60)
def test_input_that_cannot_be_pickled_is_a_clear_error() -> None:
    pipeline = three_stages(PassThrough(), backend="process")
    with pytest.raises(TypeError, match="pickle") as info:
        pipeline.transform([0, 1, threading.Lock(), 3])
    assert info.value.__notes__[-1] == "Raised sending minibatch 2 to step 'first'."


# -- teardown ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_teardown_error_surfaces_at_the_end_of_the_call(backend: str) -> None:
    pipeline = SequentialQueuedPipeline(
        [("fault", 2, RaisesInTeardown()), ("last", PassThrough())], batch_size=3, backend=backend
    )
    with pytest.raises(RuntimeError, match="cannot release model") as info:
        pipeline.transform(X)
    assert re.search(r"step 'fault', worker \d, teardown\(\)", info.value.__notes__[0])


@pytest.mark.timeout(60)
def test_teardown_error_inside_with_surfaces_at_close(backend: str) -> None:
    pipeline = SequentialQueuedPipeline(
        [("fault", RaisesInTeardown())], batch_size=3, backend=backend
    )
    with pytest.raises(RuntimeError, match="cannot release model"), pipeline:
        assert pipeline.transform(X) == X
        assert pipeline.transform(X) == X  # teardown has not run yet
    pipeline.close()  # safe again


_MAIN_ERROR_SCRIPT = """
import sys
from neuraxle_stream import SequentialQueuedPipeline

class MyError(Exception):
    pass

def fail(x):
    if x == 3:
        raise MyError("three", x)
    return x

if __name__ == "__main__":
    try:
        SequentialQueuedPipeline([("f", 2, fail)], batch_size=2, backend=sys.argv[1]).transform(list(range(6)))
    except MyError as error:
        print("caught", type(error).__name__, error.args, error.__notes__)
"""


@pytest.mark.timeout(90)
def test_exception_class_of_a_script_keeps_its_type(tmp_path, backend: str) -> None:
    """A class defined in the user's ``__main__`` pickles only by value: it comes back as itself."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "main_error.py"
    script.write_text(_MAIN_ERROR_SCRIPT)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
    done = subprocess.run(
        [sys.executable, str(script), backend], capture_output=True, text=True, timeout=80, env=env, check=False
    )
    assert "caught MyError ('three', 3)" in done.stdout, done.stderr[-2000:]
    assert "step 'f'" in done.stdout
