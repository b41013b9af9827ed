"""Shared fixtures: every test is checked for leftover workers afterwards (idle warm workers aside)."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

from neuraxle_stream.pool import shutdown_workers, worker_pool


def _leftovers() -> tuple[list[str], list[str]]:
    # Idle warm workers are kept between calls by contract (DESIGN.md section 8):
    # any other process, or a warm worker still in a call, is a leftover.
    idle = worker_pool().idle_pids()
    children = [p.name for p in multiprocessing.active_children() if p.pid not in idle]
    threads = [t.name for t in threading.enumerate() if t.name.startswith("neuraxle_stream")]
    return children, threads


@pytest.fixture(autouse=True)
def no_leftover_workers():
    """Fail a test that leaves a worker process or thread behind."""
    yield
    deadline = time.monotonic() + 5.0
    children, threads = _leftovers()
    while (children or threads) and time.monotonic() < deadline:
        time.sleep(0.05)
        children, threads = _leftovers()
    assert not children, f"worker processes left behind: {children}"
    assert not threads, f"worker threads left behind: {threads}"


@pytest.fixture(autouse=True, scope="session")
def no_warm_workers_at_the_end():
    """Stop the warm workers when the session ends (what atexit would do)."""
    yield
    shutdown_workers()


@pytest.fixture(params=["thread", "process"])
def backend(request: pytest.FixtureRequest) -> str:
    """Run a test on both backends."""
    return str(request.param)


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance with 2 CPUs, for the whole session (or the user's, if already up)."""
    import logging
    import os
    from pathlib import Path

    ray = pytest.importorskip("ray", reason="backend='ray' needs Ray (pip install -e '.[ray]')")
    started = False
    if not ray.is_initialized():
        # Ray workers inherit the environment: they import the test doubles by name, as worker processes do.
        tests = Path(__file__).resolve().parent
        paths = [str(tests), str(tests.parent), os.environ.get("PYTHONPATH", "")]
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        started = True
    yield ray
    if started:
        ray.shutdown()
