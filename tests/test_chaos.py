"""Chaos: a long process stream survives workers killed at random, with every output exact.

A 3-stage process pipeline streams tens of thousands of items while a thread
sends SIGKILL to a random worker process every few hundred milliseconds. With
``max_retries`` high enough, the output equals the sequential reference
exactly, in order; afterwards no worker process, thread or ``/dev/shm``
segment is left (the autouse fixtures check it).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

import numpy as np
import pytest
from faults import shm_segments

from neuraxle_stream import SequentialQueuedPipeline
from neuraxle_stream.runtime import Runtime

N_ITEMS = 60_000
BATCH = 4  # many small minibatches: many messages in flight when a worker is killed
#: Stop killing once this share of the outputs is in: the end of the call (a graceful stop) is not under test.
KILL_UNTIL = 0.9
#: The stream waits for one kill per this many outputs (10 marks before KILL_UNTIL).
MARK = N_ITEMS // 12


def add_one(x: np.ndarray) -> np.ndarray:
    return x + 1


def times_three(x: np.ndarray) -> np.ndarray:
    return x * 3


def modulo(x: np.ndarray) -> np.ndarray:
    return x % 1_000_003


@pytest.fixture(autouse=True)
def no_shm_left():
    yield
    assert shm_segments() == []


def test_a_stream_survives_random_sigkills_with_exact_output(monkeypatch: pytest.MonkeyPatch) -> None:
    runtimes: list[Runtime] = []
    original = Runtime.start

    def start(self: Runtime) -> None:
        if self not in runtimes:
            runtimes.append(self)
        original(self)

    monkeypatch.setattr(Runtime, "start", start)
    X = np.arange(N_ITEMS, dtype=np.int64)
    expected = modulo(times_three(add_one(X)))
    pipeline = SequentialQueuedPipeline(
        [("add", 2, add_one), ("mul", 2, times_three), ("mod", 2, modulo)],
        batch_size=BATCH, backend="process", max_retries=1_000,
    )
    received = 0
    done = threading.Event()
    kills: list[int] = []
    killed = threading.Condition()  # notified at each kill
    rng = random.Random(17)

    def killer() -> None:
        while not done.wait(rng.uniform(0.2, 0.4)):
            if received >= KILL_UNTIL * N_ITEMS or not runtimes:
                continue
            pids = runtimes[-1].worker_pids
            if pids:
                pid = rng.choice(pids)
                try:
                    os.kill(pid, signal.SIGKILL)
                    with killed:
                        kills.append(pid)
                        killed.notify_all()
                except ProcessLookupError:
                    pass

    thread = threading.Thread(target=killer, name="chaos-killer")
    started = time.monotonic()
    thread.start()
    got = []
    try:
        for item in pipeline.stream(X):
            got.append(item)
            received += 1
            if received % MARK == 0 and received < KILL_UNTIL * N_ITEMS:
                # Hold the stream (bounded) until a kill per mark passed: on a fast, quiet
                # machine the run would otherwise end before the killer has done its work.
                needed = received // MARK
                with killed:
                    killed.wait_for(lambda: len(kills) >= needed, timeout=30)  # noqa: B023 (used at once)
    finally:
        done.set()
        thread.join()
    elapsed = time.monotonic() - started
    np.testing.assert_array_equal(np.asarray(got), expected)
    restarts = sum(s.num_restarts for s in pipeline.stats_.stages.values())
    print(f"chaos: {len(kills)} SIGKILLs survived, {len(got)} items checked, {restarts} workers replaced, "
          f"{elapsed:.1f} s")
    assert len(kills) >= 10
    assert restarts >= 6  # at least one replacement of the 6 workers
    assert elapsed < 60
