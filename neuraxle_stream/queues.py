"""Bounded queues between stages, and the result channel back to the parent.

Two families, one interface:

- :class:`ThreadChannel` is a bounded FIFO of Python objects: nothing is
  copied or pickled between threads.
- :class:`ProcessChannel` is a pipe guarded by a reader lock, a writer lock and
  a semaphore of free slots. Each message is encoded once by a
  :class:`~neuraxle_stream.transport.Transport`, synchronously in the thread
  that puts it, so an object that cannot be encoded fails in its own worker
  (``multiprocessing.Queue`` would drop it in a feeder thread).

The bound (``maxsize``) is the backpressure setting: a fast stage waits on a
full queue instead of filling memory; a larger bound smooths out uneven
minibatch times at the cost of more minibatches held in memory.

The result channel (workers -> parent) is unbounded: the parent limits how many
minibatches are in flight, so it never holds more than that bound.
"""

from __future__ import annotations

import math
import queue
import select
import threading
from abc import ABC, abstractmethod
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import Any

from .transport import PickleTransport, Transport

__all__ = ["Channel", "ProcessChannel", "ResultChannel", "ThreadChannel"]


class Channel(ABC):
    """A bounded FIFO queue between two stages."""

    maxsize: int

    @abstractmethod
    def put(self, item: Any, timeout: float | None = None) -> bool:
        """Put ``item``, waiting for a free slot; ``False`` if ``timeout`` passed first."""

    @abstractmethod
    def get(self) -> Any:
        """Take the next item, waiting for one."""

    def close(self) -> None:  # noqa: B027 - nothing to release for most channels
        """Release the parent's handles once every worker has stopped."""

    def retire(self) -> None:  # noqa: B027 - nothing to release for most channels
        """Release the parent's handles, not the run's transport: replaced queues of the run still use it."""


class ResultChannel(ABC):
    """Many workers put; only the parent gets."""

    @abstractmethod
    def put(self, item: Any) -> None:
        """Send ``item`` to the parent."""

    @abstractmethod
    def get_ready(self, timeout: float | None, sentinels: list[Any]) -> tuple[list[Any], list[Any]]:
        """Wait for messages or for one of ``sentinels`` (dead workers).

        Returns the messages available now and the sentinels that fired.
        """

    def close(self) -> None:  # noqa: B027
        """Release the parent's handles."""

    def retire(self) -> None:  # noqa: B027
        """Release the parent's handles, not the run's transport (see :meth:`Channel.retire`)."""


class ThreadChannel(Channel):
    """A bounded FIFO of items passed by reference.

    Like :class:`ProcessChannel`, a writer first takes a free slot, and a
    reader gives it back: the items and the free slots are two
    ``queue.SimpleQueue`` (C calls, where ``queue.Queue`` runs Python code and
    conditions on every put and get).
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._slots: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(maxsize):
            self._slots.put(None)

    def put(self, item: Any, timeout: float | None = None) -> bool:
        try:
            self._slots.get(timeout=timeout)
        except queue.Empty:
            return False
        self._queue.put(item)
        return True

    def get(self) -> Any:
        item = self._queue.get()
        self._slots.put(None)
        return item


class ThreadResultChannel(ResultChannel):
    """An unbounded ``queue.SimpleQueue``."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def put(self, item: Any) -> None:
        self._queue.put(item)

    def get_ready(self, timeout: float | None, sentinels: list[Any]) -> tuple[list[Any], list[Any]]:
        try:
            first = self._queue.get(timeout=timeout)
        except queue.Empty:
            return [], []
        items = [first]
        q = self._queue
        while not q.empty():  # only this thread gets: what is there stays there
            items.append(q.get_nowait())
        return items, []


class ProcessChannel(Channel):
    """A bounded pipe shared by the processes of two stages.

    Writers take a free slot, then write one encoded message under the writer
    lock; readers wait until a message is there, read it under the reader
    lock, then free the slot. No lock is held while waiting, so a worker
    killed while it waits for input blocks no other.
    """

    def __init__(self, ctx: BaseContext, maxsize: int, transport: Transport | None = None) -> None:
        self.maxsize = maxsize
        self._reader, self._writer = ctx.Pipe(duplex=False)
        self._rlock = ctx.Lock()
        self._wlock = ctx.Lock()
        self._slots = ctx.BoundedSemaphore(maxsize)
        self._transport = transport or PickleTransport()
        self._polls: dict[int, Any] = {}  # a poll set of the reader per reading thread of this process

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_polls": {}}

    def put(self, item: Any, timeout: float | None = None) -> bool:
        if not self._slots.acquire(timeout=timeout):
            return False
        try:
            data = self._transport.dumps(item)
        except BaseException:
            self._slots.release()
            raise
        with self._wlock:
            self._writer.send_bytes(data)
        return True

    def get(self) -> Any:
        while True:
            # Wait without the reader lock: a reader killed while it waits (SIGKILL, OOM)
            # leaves the lock free for the others; the lock is held only to read a message.
            self._wait_readable()
            with self._rlock:
                if not self._reader.poll(0):
                    continue  # another reader took it
                data = self._reader.recv_bytes()
            self._slots.release()
            return self._transport.loads(data)

    def _wait_readable(self) -> None:
        """Block until the pipe has a message (``connection.wait``, with the poll set kept:
        one poll object cannot be waited on by two threads at once)."""
        thread = threading.get_ident()
        poll = self._polls.get(thread)
        if poll is None:
            poll = self._polls[thread] = select.poll()
            poll.register(self._reader.fileno(), select.POLLIN)
        poll.poll()

    def close(self) -> None:
        self.retire()
        self._transport.close()

    def retire(self) -> None:
        self._reader.close()
        self._writer.close()


class _Poller:
    """``multiprocessing.connection.wait`` on one pipe and the workers' sentinels,
    with the ``poll`` set kept between calls (``wait`` builds a selector each
    time: several microseconds on every minibatch); remade when a sentinel
    comes or goes."""

    def __init__(self, reader: Connection, sentinels: list[Any]) -> None:
        self.sentinels = list(sentinels)
        self.thread = threading.get_ident()  # one poll object cannot be waited on by two threads at once
        self._reader_fd = reader.fileno()
        self._poll = select.poll()
        self._poll.register(self._reader_fd, select.POLLIN)
        self._by_fd: dict[int, Any] = {}
        for sentinel in self.sentinels:
            fd = sentinel if isinstance(sentinel, int) else sentinel.fileno()
            self._by_fd[fd] = sentinel
            self._poll.register(fd, select.POLLIN)

    def wait(self, timeout: float | None) -> tuple[bool, list[Any]]:
        """Whether the pipe has data, and the sentinels that fired, within ``timeout`` seconds."""
        events = self._poll.poll(None if timeout is None else max(0, math.ceil(timeout * 1000)))
        has_data = False
        fired = []
        for fd, _ in events:
            if fd == self._reader_fd:
                has_data = True
            else:
                fired.append(self._by_fd[fd])
        return has_data, fired


class ProcessResultChannel(ResultChannel):
    """An unbounded pipe from every worker to the parent.

    The parent blocks on the pipe *and* on the workers' process sentinels at
    once (one ``poll`` on all of them, as ``multiprocessing.connection.wait``
    does), so a dead worker is noticed the moment it dies, without polling.
    """

    def __init__(self, ctx: BaseContext, transport: Transport | None = None) -> None:
        self._reader, self._writer = ctx.Pipe(duplex=False)
        self._wlock = ctx.Lock()
        self._transport = transport or PickleTransport()
        self._poller: _Poller | None = None  # the parent's, made on its first wait

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_poller": None}

    def put(self, item: Any) -> None:
        data = self._transport.dumps(item)
        with self._wlock:
            self._writer.send_bytes(data)

    def get_ready(self, timeout: float | None, sentinels: list[Any]) -> tuple[list[Any], list[Any]]:
        reader: Connection = self._reader
        poller = self._poller
        if poller is None or poller.sentinels != sentinels or poller.thread != threading.get_ident():
            poller = self._poller = _Poller(reader, sentinels)
        has_data, fired = poller.wait(timeout)
        items = []
        if has_data:
            while True:
                items.append(self._transport.loads(reader.recv_bytes()))
                if not reader.poll(0):
                    break
        return items, fired

    def drain(self) -> list[Any]:
        """Read what is waiting now, without blocking."""
        items = []
        while self._reader.poll(0):
            items.append(self._transport.loads(self._reader.recv_bytes()))
        return items

    def close(self) -> None:
        self.retire()
        self._transport.close()

    def retire(self) -> None:
        self._reader.close()
        self._writer.close()

