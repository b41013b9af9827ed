"""Warm workers (DESIGN.md section 8): the pool of idle process workers kept between calls.

What is held: the workers of a call that ended well do the next call's work
(a clone's, as in ``GridSearchCV``); nothing of one run's steps reaches the
next; ``worker_idle_timeout`` (``set_config``, ``config_context``) says how
long they wait; ``shutdown_workers()``, the parent's death and an outside kill
leave nothing behind and break nothing; a worker of a failed, timed-out or
aborted run is never reused. No timing assertions: waits are bounded only.
"""

from __future__ import annotations

import json
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


# -- what the fork servers import ---------------------------------------------------------


def test_step_modules_name_what_a_worker_imports_to_load_the_steps() -> None:
    from sklearn.preprocessing import StandardScaler

    from neuraxle_stream.start_methods import step_modules
    from neuraxle_stream.steps import Identity, ItemFunction

    def local(x: Any) -> Any:
        return x

    local.__module__ = "__main__"  # as a script's function: it travels by value
    steps = [ItemFunction(np.sqrt), ItemFunction(local), StandardScaler(), Identity(), ItemFunction(Pids)]
    assert step_modules(steps) == ["neuraxle_stream.steps", "numpy", "sklearn.preprocessing._data", "test_pool"]


def test_lean_steps_preload_no_scikit_learn_and_others_do() -> None:
    from neuraxle_stream.start_methods import STEP_LAYER, WORKER_MODULES, is_lean, server_modules

    assert is_lean([]) and is_lean(["numpy", "math"])
    assert not is_lean(["test_pool"])  # it imports scikit-learn (through the package, at least)
    assert not is_lean(["sklearn.preprocessing._data"]) and not is_lean(["no_such_module"])
    lean, full = server_modules(["numpy"]), server_modules(["test_pool"])
    assert lean[: len(WORKER_MODULES)] == full[: len(WORKER_MODULES)] == list(WORKER_MODULES)
    assert STEP_LAYER not in lean and "numpy" in lean
    assert STEP_LAYER in full and "test_pool" in full


_TIERS = """
    import json, os, sys
    from multiprocessing import forkserver

    import numpy as np
    import psutil
    from sklearn.preprocessing import StandardScaler

    from neuraxle_stream import SequentialQueuedPipeline, config_context, shutdown_workers
    from neuraxle_stream import start_methods
    from neuraxle_stream.pool import worker_pool

    def has_sklearn(x):
        return "sklearn" in sys.modules

    def parents():
        return sorted({psutil.Process(p).ppid() for p in worker_pool().idle_pids()})

    if __name__ == "__main__":
        out = {}
        lean = SequentialQueuedPipeline([("f", 2, has_sklearn)], batch_size=1)
        with config_context(worker_idle_timeout=0):
            out["lean_workers_have_sklearn"] = any(lean.transform(np.arange(4.0)))
        out["server"] = forkserver._forkserver._preload_modules
        X = np.arange(16.0).reshape(8, 2)
        heavy = SequentialQueuedPipeline([("scale", 2, StandardScaler())], batch_size=2).fit(X)
        np.testing.assert_allclose(heavy.transform(X), StandardScaler().fit_transform(X))
        out["full_server"] = start_methods._FULL_SERVER._preload_modules
        out["full_pid"] = start_methods._FULL_SERVER._forkserver_pid
        out["heavy_parents"] = parents()
        victim = sorted(worker_pool().idle_pids())[0]
        psutil.Process(victim).kill()
        psutil.Process(victim).wait(10)
        np.testing.assert_allclose(heavy.transform(X), StandardScaler().fit_transform(X))
        out["after_kill_parents"] = parents()
        out["lean_again"] = len(lean.transform(np.arange(4.0)))
        shutdown_workers()
        print(json.dumps(out))
"""


def _in_a_fresh_interpreter(code: str) -> dict[str, Any]:
    """Run ``code`` in a new Python (it can import ``faults``); the JSON object its last line prints."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]))
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=TESTS, env=env,
        capture_output=True, text=True, timeout=90,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])

def test_a_lean_first_call_starts_a_lean_server_and_scikit_learn_steps_a_second_one() -> None:
    out = _in_a_fresh_interpreter(_TIERS)  # this one's fork server runs already
    assert out["lean_workers_have_sklearn"] is False
    assert out["server"] == ["neuraxle_stream.workers", "neuraxle_stream.pool"]
    assert "neuraxle_stream.steps" in out["full_server"]
    assert "sklearn.preprocessing._data" in out["full_server"]
    # the scikit-learn steps' workers, and the one that replaced a killed worker, come from it
    assert out["heavy_parents"] == [out["full_pid"]]
    assert out["after_kill_parents"] == [out["full_pid"]]
    assert out["lean_again"] == 4


_SERVER_FIRST = """
    import json
    from multiprocessing import forkserver

    import numpy as np
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    from neuraxle_stream import SequentialQueuedPipeline, shutdown_workers
    from neuraxle_stream import start_methods

    def servers():
        return [forkserver._forkserver._forkserver_pid, start_methods._FULL_SERVER._forkserver_pid]

    class Seen(StandardScaler):
        def fit(self, X, y=None, sample_weight=None):
            self.servers_at_fit_ = servers()
            return super().fit(X, y, sample_weight)

    def half(x):
        return x * 0.5

    if __name__ == "__main__":
        X = np.random.RandomState(0).rand(64, 3)
        out = {}
        # nothing runs in workers after these fits: no server starts
        SequentialQueuedPipeline([("scaler", 2, StandardScaler()), ("pca", 2, PCA(2))]).fit(X)
        SequentialQueuedPipeline([("seen", 2, Seen()), ("half", 2, half)], backend="thread").fit_transform(X)
        out["after_fit_and_threads"] = servers()
        pipe = SequentialQueuedPipeline([("seen", 2, Seen()), ("half", 2, half)], batch_size=8)
        got = pipe.fit_transform(X)
        np.testing.assert_allclose(np.asarray(got), StandardScaler().fit_transform(X) * 0.5)
        out["at_fit"] = pipe.named_steps["seen"].servers_at_fit_
        shutdown_workers()
        print(json.dumps(out))
"""


def test_the_fork_server_starts_before_a_fit_in_the_parent_that_workers_run_after() -> None:
    out = _in_a_fresh_interpreter(_SERVER_FIRST)  # this one's fork server runs already
    assert out["after_fit_and_threads"] == [None, None]
    assert any(pid is not None for pid in out["at_fit"])  # its imports overlap the step's fit


# -- W4: a per-item function's outputs ---------------------------------------------------


def test_small_same_shape_items_travel_as_one_block_and_come_back_as_items() -> None:
    import pickle

    from neuraxle_stream.messages import QueuedMinibatchTask

    items = [np.arange(4.0) * i for i in range(6)]
    task = QueuedMinibatchTask(7, items, expected_outputs=[1] * 6, run_id=3)
    back = pickle.loads(pickle.dumps(task, protocol=5))
    assert back.index == 7 and back.run_id == 3 and back.expected_outputs == [1] * 6
    assert type(back.data_inputs) is list and len(back.data_inputs) == 6
    for got, want in zip(back.data_inputs, items):
        assert type(got) is np.ndarray and got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    back.data_inputs[0][:] = -1  # writable, and its own rows only
    np.testing.assert_array_equal(back.data_inputs[1], items[1])
    # anything else travels as it is
    for data in ([np.arange(3), np.arange(4)], [np.float64(1), np.float64(2)], [np.arange(3), [1]], [1, 2]):
        same = pickle.loads(pickle.dumps(QueuedMinibatchTask(0, data)))
        assert [type(d) for d in same.data_inputs] == [type(d) for d in data]


def test_a_per_item_function_on_processes_gives_what_threads_give() -> None:
    X = np.random.RandomState(0).rand(50, 3)
    on = {
        backend: SequentialQueuedPipeline([("half", 2, _half)], batch_size=8, backend=backend).transform(X)
        for backend in ("thread", "process")
    }
    assert len(on["process"]) == len(on["thread"]) == 50
    for a, b in zip(on["process"], on["thread"]):
        assert type(a) is type(b) is np.ndarray
        np.testing.assert_array_equal(a, b)


def _half(x: Any) -> Any:
    return x * 0.5
