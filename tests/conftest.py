"""Shared fixtures: every test is checked for leftover workers afterwards."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest


def _leftovers() -> tuple[list[str], list[str]]:
    children = [p.name for p in multiprocessing.active_children()]
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


@pytest.fixture(params=["thread", "process"])
def backend(request: pytest.FixtureRequest) -> str:
    """Run a test on both backends."""
    return str(request.param)
