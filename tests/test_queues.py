"""Queues between stages and the result channel: a writer killed in the middle of a message hangs nothing.

A pipe between processes is shared by several writers (the workers of a
stage, the parent's feeder) and, between stages, several readers. A writer
killed (SIGKILL, the out-of-memory killer) while it writes a message larger
than the pipe holds used to leave half a message in the pipe and the writer
lock taken: the reader blocked for bytes that never come, every other writer
blocked on the lock. Every test here kills a writer at that point (while its
write is blocked, or just after it, where the write cannot block) and checks
that nothing hangs: the reader gets whole messages only, other writers go on,
and a run reports the death (naming the step and the minibatch) or, with
``max_retries``, completes with the exact output.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faults import (
    BigOutputAt,
    HoldsUntil,
    big_output,
    kill_once_blocked,
    kill_when_blocked,
    put_and_wait,
    shm_segments,
)

from neuraxle_stream import BrokenPipelineError, SequentialQueuedPipeline, queues
from neuraxle_stream.backends import ProcessBackend
from neuraxle_stream.transport import PickleTransport

pytestmark = pytest.mark.timeout(60)

X = list(range(6))


def expected(at: int = 1) -> list[Any]:
    return [big_output(x) if x == at else x for x in X]


@pytest.fixture(autouse=True)
def no_shm_left():
    yield
    assert shm_segments() == []


# -- the channels alone ------------------------------------------------------------


def _messages() -> list[Any]:
    """Messages of every size around the pipe's atomic write (4096 bytes) and far above the pipe (64 KiB)."""
    return [
        None, b"", "x" * 4000, b"y" * 4070, b"z" * 4096, b"w" * 5000, list(range(20_000)),
        big_output(3), {"array": np.arange(100_000.0), "small": np.ones(3)},
    ]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    return bool(a == b)


@pytest.fixture(params=["packets", "no packets"])
def packets(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Queues between stages in packet mode (Linux), and as elsewhere (a reader lock)."""
    if request.param == "no packets":
        monkeypatch.setattr(queues, "_packet_pipe", lambda maxsize: None)
    return bool(request.param == "packets")


@pytest.mark.parametrize("transport", ["shared memory", "pickle"])
@pytest.mark.parametrize("kind", ["stage", "result"])
def test_messages_of_every_size_cross_whole(kind: str, transport: str, packets: bool) -> None:
    backend = ProcessBackend(transport=PickleTransport() if transport == "pickle" else None)
    channel = backend.channel(16) if kind == "stage" else backend.result_channel()
    if kind == "stage":
        assert (channel._rlock is None) == packets
    try:
        sent = _messages()
        for message in sent:
            channel.put(message)
        got: list[Any] = []
        while len(got) < len(sent):
            if kind == "stage":
                got.append(channel.get())
            else:
                got.extend(channel.get_ready(5.0, [])[0])
        assert all(_same(a, b) for a, b in zip(sent, got))
    finally:
        channel.close()
    assert not [n for n in os.listdir(tempfile.gettempdir()) if n.startswith(backend.transport.prefix)]


def test_a_queue_bound_larger_than_a_pipe_holds_its_messages() -> None:
    """A packet takes a page of the pipe (16 by default): a larger bound enlarges the pipe, so a put never blocks."""
    channel = ProcessBackend().channel(40)
    try:
        assert all(channel.put(i, timeout=0) for i in range(40))
        assert not channel.put(40, timeout=0)
        assert [channel.get() for _ in range(40)] == list(range(40))
    finally:
        channel.close()


def _start_writer(backend: ProcessBackend, channel: Any, item: Any) -> tuple[Any, Any, Any]:
    ctx = backend.ctx
    putting, done = ctx.Event(), ctx.Event()
    process = ctx.Process(target=put_and_wait, args=(channel, item, putting, done), daemon=True)
    process.start()
    return process, putting, done


@pytest.mark.parametrize("kind", ["stage", "result"])
def test_a_writer_killed_in_a_large_message_leaves_the_channel_usable(kind: str, packets: bool) -> None:
    """(a) the reader never waits for the rest of a message; (b) other writers are not locked out; (c) no garbage."""
    backend = ProcessBackend()
    channel = backend.channel(4) if kind == "stage" else backend.result_channel()
    killed = other = None
    try:
        # nobody reads: a message larger than the pipe blocks its writer in the middle of it
        killed, putting, done = _start_writer(backend, channel, big_output(1))
        kill_once_blocked(killed.pid, putting, done)
        killed.join(5.0)
        other, _, other_done = _start_writer(backend, channel, "after")
        assert other_done.wait(10.0), "another writer is locked out of the channel"
        got: list[Any] = []

        def read() -> None:
            while "after" not in got:
                got.extend([channel.get()] if kind == "stage" else channel.get_ready(1.0, [])[0])

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(10.0)
        assert not reader.is_alive(), "the reader waits for the rest of a message that never comes"
        assert got in (["after"], [big_output(1), "after"])  # whole messages only: the first one, or none of it
    finally:
        for process in (killed, other):
            if process is not None:
                process.kill()
                process.join(5.0)
        channel.close()


# -- in a run ----------------------------------------------------------------------


@pytest.mark.parametrize("max_retries", [0, 2])
def test_a_worker_killed_while_sending_to_the_parent(tmp_path: Path, max_retries: int) -> None:
    """The caller holds the stream: nobody reads the results pipe while the worker sends a 4 MiB output."""
    p = SequentialQueuedPipeline([("big", BigOutputAt(str(tmp_path), at=1))], batch_size=1, backend="process",
                                 max_retries=max_retries)
    out = p.stream(X)
    first = next(out)
    _, wchan = kill_when_blocked(str(tmp_path))
    start = time.monotonic()
    if max_retries:
        assert [first, *out] == expected()
        assert p.stats_["big"].num_restarts == 1
        return
    with pytest.raises(BrokenPipelineError, match=r"Worker 0 of step 'big' was killed by SIGKILL") as info:
        list(out)
    assert time.monotonic() - start < 30.0  # at once, in fact: generous for a loaded machine
    if "pipe_write" in wchan:  # killed in the middle of the message: that minibatch is named
        assert "minibatch 1" in str(info.value)


@pytest.mark.parametrize("method", ["transform", "stream"])
@pytest.mark.parametrize("max_retries", [0, 2])
def test_a_worker_killed_while_sending_to_the_next_stage(tmp_path: Path, method: str, max_retries: int) -> None:
    """The next stage holds its minibatch: nobody reads the queue while the first stage sends a 4 MiB output."""
    folder, release = tmp_path / "signals", tmp_path / "release"
    folder.mkdir()
    p = SequentialQueuedPipeline(
        [("big", 1, 1, BigOutputAt(str(folder), at=1)), ("hold", 1, 1, HoldsUntil(str(release)))],
        batch_size=1, backend="process", chain=False, max_retries=max_retries,
    )

    def kill() -> None:
        try:
            kill_when_blocked(str(folder))
        finally:
            release.touch()

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    run = (lambda: p.transform(X)) if method == "transform" else (lambda: list(p.stream(X)))
    try:
        if max_retries:
            assert run() == expected()
            assert p.stats_["big"].num_restarts == 1
        else:
            start = time.monotonic()
            with pytest.raises(BrokenPipelineError, match=r"Worker 0 of step 'big' was killed by SIGKILL.*"
                                                          r"while sending the output of minibatch \d"):
                run()
            assert time.monotonic() - start < 30.0
    finally:
        killer.join(30.0)
