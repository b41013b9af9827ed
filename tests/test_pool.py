"""Warm workers (DESIGN.md section 8): the pool of idle process workers kept between calls.

What is held: the workers of a call that ended well do the next call's work
(a clone's, as in ``GridSearchCV``); nothing of one run's steps reaches the
next; ``worker_idle_timeout`` (``set_config``, ``config_context``) says how
long they wait; ``shutdown_workers()``, the parent's death and an outside kill
leave nothing behind and break nothing; a worker of a failed, timed-out or
aborted run is never reused. No timing assertions: waits are bounded only.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from faults import PassThrough, RaisesAt, shm_segments
from sklearn.base import clone

import neuraxle_stream
from neuraxle_stream import (
    BaseTransformer,
    InvalidParameterError,
    NonFittableMixin,
    SequentialQueuedPipeline,
    config_context,
    get_config,
    set_config,
    shutdown_workers,
)
from neuraxle_stream.pool import worker_pool

pytestmark = pytest.mark.timeout(120)

TESTS = Path(__file__).resolve().parent


class Pids(NonFittableMixin, BaseTransformer):
    """Returns, for each item, the pid of the worker that ran it."""

    def transform(self, data_inputs: Any) -> Any:
        return [os.getpid()] * len(data_inputs)


class Remembers(NonFittableMixin, BaseTransformer):
    """Counts its ``setup()`` calls and minibatches on itself: a fresh copy per run says 1 and n."""

    def setup(self) -> None:
        self.setups = getattr(self, "setups", 0) + 1

    def transform(self, data_inputs: Any) -> Any:
        self.seen = getattr(self, "seen", 0) + 1
        return [(os.getpid(), self.setups, self.seen)] * len(data_inputs)


class Sleeps(NonFittableMixin, BaseTransformer):
    def __init__(self, seconds: float = 5.0) -> None:
        self.seconds = seconds

    def transform(self, data_inputs: Any) -> Any:
        time.sleep(self.seconds)
        return data_inputs


@pytest.fixture(autouse=True)
def empty_pool():
    """Each test starts and ends with no warm worker."""
    shutdown_workers()
    yield
    shutdown_workers()


def _wait_until(condition: Any, within: float = 20.0) -> bool:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _pids_pipeline(n_workers: int = 2) -> SequentialQueuedPipeline:
    return SequentialQueuedPipeline([("pids", n_workers, Pids())], batch_size=1)


# -- settings ----------------------------------------------------------------------


def test_config_defaults_set_and_context() -> None:
    assert get_config() == {"worker_idle_timeout": 30.0}
    with config_context(worker_idle_timeout=0):
        assert get_config()["worker_idle_timeout"] == 0.0
        with config_context(worker_idle_timeout=2):
            assert get_config()["worker_idle_timeout"] == 2.0
        assert get_config()["worker_idle_timeout"] == 0.0
    assert get_config()["worker_idle_timeout"] == 30.0
    set_config(worker_idle_timeout=7)
    try:
        assert get_config()["worker_idle_timeout"] == 7.0
        seen: list[float] = []  # another thread starts from the defaults, as in scikit-learn
        thread = threading.Thread(target=lambda: seen.append(get_config()["worker_idle_timeout"]))
        thread.start()
        thread.join()
        assert seen == [30.0]
    finally:
        set_config(worker_idle_timeout=30)


@pytest.mark.parametrize("bad", [-1, "soon", None, True])
def test_bad_idle_timeout_is_refused(bad: Any) -> None:
    if bad is None:  # None means "leave it as it is"
        set_config(worker_idle_timeout=bad)
        assert get_config()["worker_idle_timeout"] == 30.0
        return
    with pytest.raises(InvalidParameterError, match="'worker_idle_timeout' parameter of set_config must be"):
        set_config(worker_idle_timeout=bad)


def test_public_names() -> None:
    for name in ("get_config", "set_config", "config_context", "shutdown_workers"):
        assert name in neuraxle_stream.__all__


# -- reuse and isolation ------------------------------------------------------------------


def test_a_clone_runs_on_the_same_warm_workers() -> None:
    pipeline = _pids_pipeline()
    first = set(clone(pipeline).transform(list(range(8))))
    warm = worker_pool().idle_pids()
    assert len(warm) == 2 and first <= warm  # (one worker may have done all the work)
    second = set(clone(pipeline).transform(list(range(8))))
    assert second <= warm
    # another pipeline of the process takes them too
    other = SequentialQueuedPipeline([("a", 1, PassThrough()), ("b", 1, Pids())], batch_size=2)
    assert set(other.transform(list(range(8)))) <= warm


def test_nothing_of_a_run_reaches_the_next() -> None:
    pipeline = SequentialQueuedPipeline([("r", 1, Remembers())], batch_size=2)
    first = pipeline.transform(list(range(6)))
    second = clone(pipeline).transform(list(range(6)))
    assert {pid for pid, _, _ in first} == {pid for pid, _, _ in second}  # the same worker...
    for out in (first, second):  # ...with a fresh step copy each run: one setup(), minibatches from 1
        assert [(setups, seen) for _, setups, seen in out] == [(1, 1), (1, 1), (1, 2), (1, 2), (1, 3), (1, 3)]


def test_inside_with_the_pipeline_keeps_its_own_workers() -> None:
    pipeline = _pids_pipeline()
    with pipeline:
        first = set(pipeline.transform(list(range(8))))
        assert worker_pool().idle_pids() == set()  # they are the pipeline's, not idle
        mine = {p.pid for p in multiprocessing.active_children()}
        assert set(pipeline.transform(list(range(8)))) <= mine
    assert first <= worker_pool().idle_pids() == mine


def test_fork_workers_are_not_pooled() -> None:
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork here")
    pipeline = SequentialQueuedPipeline([("pids", 2, Pids())], batch_size=1, mp_context="fork")
    assert len(pipeline.transform(list(range(4)))) == 4
    assert worker_pool().idle_pids() == set()


# -- idle timeout and shutdown ------------------------------------------------------------


def test_idle_timeout_zero_stops_workers_at_the_end_of_the_call() -> None:
    with config_context(worker_idle_timeout=0):
        _pids_pipeline().transform(list(range(4)))
    assert worker_pool().idle_pids() == set()
    assert multiprocessing.active_children() == []


def test_idle_workers_exit_after_the_idle_timeout() -> None:
    set_config(worker_idle_timeout=0.2)
    try:
        pids = set(_pids_pipeline().transform(list(range(4))))
    finally:
        set_config(worker_idle_timeout=30)
    assert pids
    assert _wait_until(lambda: worker_pool().idle_pids() == set() and not multiprocessing.active_children())


def test_shutdown_workers_leaves_no_process_and_no_shared_memory() -> None:
    X = np.random.RandomState(0).rand(64, 4096)  # 2 MiB minibatches: through shared memory
    pipeline = SequentialQueuedPipeline(
        [("a", 2, PassThrough()), ("b", 2, PassThrough())], batch_size=16, chain=False
    )
    np.testing.assert_array_equal(pipeline.transform(X), X)
    children = [psutil.Process(p.pid) for p in multiprocessing.active_children()]
    assert len(children) == 4
    shutdown_workers()
    shutdown_workers()  # safe twice
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []
    assert multiprocessing.active_children() == []
    assert shm_segments() == []


# -- deaths and failures ----------------------------------------------------------------


def test_an_idle_worker_killed_from_outside_does_not_break_the_next_call() -> None:
    pipeline = _pids_pipeline()
    pids = set(pipeline.transform(list(range(8))))
    victim = next(iter(pids))
    os.kill(victim, signal.SIGKILL)
    assert _wait_until(lambda: not psutil.pid_exists(victim) or psutil.Process(victim).status() == "zombie")
    out = clone(pipeline).transform(list(range(8)))
    assert len(out) == 8 and victim not in out


def test_workers_of_a_failed_run_are_not_reused() -> None:
    pipeline = SequentialQueuedPipeline([("fails", 2, RaisesAt(3)), ("pids", 2, Pids())], batch_size=1)
    with pytest.raises(ValueError, match="boom at 3"):
        pipeline.transform(list(range(8)))
    assert worker_pool().idle_pids() == set()
    assert _wait_until(lambda: not multiprocessing.active_children())


def test_workers_of_a_timed_out_run_are_not_reused() -> None:
    pipeline = SequentialQueuedPipeline([("slow", 1, Sleeps(30))], batch_size=1, timeout=0.5)
    with pytest.raises(TimeoutError):
        pipeline.transform([1, 2])
    assert worker_pool().idle_pids() == set()
    assert _wait_until(lambda: not multiprocessing.active_children())


_PARENT = """
    import sys, time
    from test_pool import Pids
    from neuraxle_stream import SequentialQueuedPipeline
    from neuraxle_stream.pool import worker_pool

    if __name__ == "__main__":
        SequentialQueuedPipeline([("pids", 2, Pids())], batch_size=1).transform(list(range(4)))
        print("IDLE", *sorted(worker_pool().idle_pids()), flush=True)
        time.sleep(120)
"""


def test_idle_workers_exit_when_the_parent_dies() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]))
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_PARENT)], cwd=TESTS, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        assert child.stdout is not None
        line = ""
        for line in child.stdout:
            if line.startswith("IDLE"):
                break
        pids = [int(p) for p in line.split()[1:]]
        assert len(pids) == 2, line
        workers = [psutil.Process(p) for p in pids]
        child.kill()  # SIGKILL: no atexit, no finalizer
        child.wait(10)
        _, alive = psutil.wait_procs(workers, timeout=20)
        assert alive == []
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
