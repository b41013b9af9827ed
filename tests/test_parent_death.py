"""A parent killed with SIGKILL (the OOM killer, ``kill -9``) leaves no shared memory and no worker.

A child Python runs process pipelines whose minibatches are large arrays
(they cross in shared memory: the parent's segments going in, the workers'
coming out) through two process stages, on streams still running; the test
kills that child (alone, with its workers, or with its whole process
group) and waits until nothing of it is left: no ``/dev/shm`` entry of its
runs' prefix (``nxs-<pid>-``), no worker process, no fork server, no
resource tracker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable

import psutil
import pytest
from faults import start_child

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")


_CHILD = """
    import itertools, sys, time
    import numpy as np
    from neuraxle_stream import SequentialQueuedPipeline

    def double(x):
        time.sleep(0.005)
        return x * 2.0

    def plus_one(x):
        return x + 1.0

    def items():
        for i in itertools.count():
            yield np.full(16_384, float(i))  # 128 KiB: over the shared-memory threshold

    if __name__ == "__main__":
        servers, method = sys.argv[1], sys.argv[2]
        method = None if method == "default" else method
        lean = [("double", double), ("plus_one", plus_one)]
        if servers == "full":
            # a lean first call starts the stdlib's fork server lean; the
            # scikit-learn steps that follow take its 2 warm workers and come
            # from the second server for the rest
            SequentialQueuedPipeline(lean, batch_size=2, chain=False).transform([np.ones(16_384)] * 8)
            from faults import PassThrough
            pipelines = [[("double", double), ("pass", 4, PassThrough())], lean]
        else:
            pipelines = [lean]
        if servers == "fit":
            # a step fitted in the parent before a run in workers: the fork server starts
            # before any transport exists (start_methods.start_server)
            from sklearn.preprocessing import StandardScaler
            fitted = [("scale", StandardScaler()), ("double", 2, double)]
            SequentialQueuedPipeline(fitted, batch_size=8).fit_transform(np.ones((64, 4)))
        streams = []
        for steps in pipelines:
            p = SequentialQueuedPipeline(steps, batch_size=2, chain=False, mp_context=method)
            stream = p.stream(items())
            next(stream)
            streams.append(stream)
        if servers == "full":  # and 4 warm workers left idle (worker_idle_timeout: the default)
            more = [("double", 2, double), ("plus_one", 2, plus_one)]
            SequentialQueuedPipeline(more, batch_size=2, chain=False).transform([np.ones(16_384)] * 8)
        print("RUNNING", flush=True)
        while True:
            for stream in streams:
                next(stream)
"""



def segments_of(pid: int) -> list[str]:
    """The shared-memory segments of the runs of process ``pid``."""
    return sorted(name for name in os.listdir("/dev/shm") if name.startswith(f"nxs-{pid}-"))


def wait_until(condition: Callable[[], bool], within: float) -> bool:
    """Whether ``condition`` holds within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def helpers_of(parent: psutil.Process) -> list[psutil.Process]:
    """The fork servers and the resource tracker of ``parent``: its children that run those
    (a fork server's children, forked from it, show its command line too)."""
    helpers = []
    for process in parent.children():
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(process.cmdline())
            if "forkserver" in cmdline or "resource_tracker" in cmdline:
                helpers.append(process)
    return helpers


def workers_of(parent: psutil.Process) -> list[psutil.Process]:
    """The worker processes of ``parent``: its descendants but its helpers."""
    helpers = {p.pid for p in helpers_of(parent)}
    return [p for p in parent.children(recursive=True) if p.pid not in helpers]


SERVERS = [("lean", "default"), ("full", "default"), ("lean", "spawn"), ("lean", "fork")]
SERVER_IDS = ["lean-forkserver", "sklearn-forkserver", "spawn", "fork"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("servers", "method", "victims"),
    [
        *[(*case, "parent") for case in SERVERS],
        # the OOM killer may pick several (each big), a user may ``kill -9`` them all:
        # no worker is left to sweep the run's prefix; the resource tracker unlinks it
        *[(*case, "parent-and-workers") for case in SERVERS],
        # a harness's timeout (``killpg``, as benchmarks/__main__.py does): every
        # process of the group, the resource tracker too unless it has a session of its own
        (*SERVERS[1], "process-group"),
        (*SERVERS[3], "process-group"),
        ("fit", "default", "process-group"),
    ],
    ids=[
        *[f"parent-{i}" for i in SERVER_IDS],
        *[f"parent-and-workers-{i}" for i in SERVER_IDS],
        "process-group-sklearn-forkserver",
        "process-group-fork",
        "process-group-after-a-fit-in-the-parent",
    ],
)
def test_a_parent_killed_with_sigkill_leaves_no_segment_and_no_process(
    servers: str, method: str, victims: str
) -> None:
    child = start_child(_CHILD, servers, method)
    seen: list[str] = []
    started: list[psutil.Process] = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            seen.append(line)
            if line.strip() == "RUNNING":
                break
        else:
            raise AssertionError("child ended before RUNNING:\n" + "".join(seen))
        started = psutil.Process(child.pid).children(recursive=True)
        workers = workers_of(psutil.Process(child.pid))
        if servers == "full":  # the lean server and the scikit-learn one
            servers_seen = [p for p in helpers_of(psutil.Process(child.pid)) if "forkserver" in " ".join(p.cmdline())]
            assert len(servers_seen) == 2, [p.cmdline() for p in started]
            assert len(workers) == 5 + 2 + 4, [p.cmdline() for p in started]  # at work, idle
        assert segments_of(child.pid), "the test needs minibatches that cross in shared memory"
        if victims == "parent":
            os.kill(child.pid, signal.SIGKILL)
        elif victims == "process-group":
            os.killpg(child.pid, signal.SIGKILL)
        else:
            # stopped first, so that no worker sees its parent die and sweeps the prefix
            for sig in (signal.SIGSTOP, signal.SIGKILL):
                os.kill(child.pid, sig)
                for process in workers:
                    with contextlib.suppress(psutil.Error):
                        process.send_signal(sig)
        child.wait(timeout=10)
        gone = wait_until(lambda: segments_of(child.pid) == [], within=10.0)
        _, alive = psutil.wait_procs(started, timeout=10.0)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait(10)
        assert child.stdout is not None
        child.stdout.close()
    left = [p.cmdline() for p in alive]
    for process in alive:  # nothing stays for the next test
        process.kill()
    stale = segments_of(child.pid)
    for name in stale:
        os.unlink(os.path.join("/dev/shm", name))
    assert child.returncode == -signal.SIGKILL
    assert gone, f"left in /dev/shm: {stale}"
    assert left == [], f"left running: {left}"
