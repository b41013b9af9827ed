"""Bounded queues between stages, and the result channel back to the parent.

Two families, one interface:

- :class:`ThreadChannel` is a bounded FIFO of Python objects: nothing is
  copied or pickled between threads.
- :class:`ProcessChannel` is a pipe and a semaphore of free slots. Each
  message is encoded once by a :class:`~neuraxle_stream.transport.Transport`,
  synchronously in the thread that puts it, so an object that cannot be
  encoded fails in its own worker (``multiprocessing.Queue`` would drop it in
  a feeder thread).

The bound (``maxsize``) is the backpressure setting: a fast stage waits on a
full queue instead of filling memory; a larger bound smooths out uneven
minibatch times at the cost of more minibatches held in memory.

The result channel (workers -> parent) is unbounded: the parent limits how many
minibatches are in flight, so it never holds more than that bound.

**A process killed at any instant leaves every pipe whole.** Several
processes write to each pipe (the workers of a stage, the parent's feeder),
and any of them may be killed (SIGKILL, the out-of-memory killer) in the
middle of a put. Every message is therefore written by *one* ``write`` of at
most :data:`PIPE_BUF` bytes, which the kernel makes atomic: it is in the
pipe whole or not at all, never interleaved with another writer's, so
writers take no lock. A larger message is spilled first
(:meth:`~neuraxle_stream.transport.Transport.spill`: to shared memory, or a
file) and only a short reference goes on the pipe. A lock held by a writer
that dies would be held for ever; half a message would leave its reader
waiting for the rest (the parent's supervisor, or a worker holding the
reader lock), or reading the rest as the next message. Between stages, the
pipe is in *packet* mode where the system has it (Linux, ``O_DIRECT``):
each ``read`` returns one whole message, so readers take no lock either,
and a reader killed at any instant takes a whole message or none. Elsewhere
readers read under a lock, and the supervisor's stall watch
(:class:`~neuraxle_stream.replacement.DeathWatch`) mends a reader killed in
the middle of its read. It is also cheaper than locks: no semaphore to
take, one system call per message and side (a message from the parent to a
worker and back: about 24 us of CPU, against 38 us with the locks). A
spilled message costs a copy into shared memory and one out.
"""

from __future__ import annotations

import fcntl
import math
import mmap
import os
import queue
import select
import threading
from abc import ABC, abstractmethod
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import Any

from .transport import SPILLED, PickleTransport, Transport

__all__ = ["PIPE_BUF", "Channel", "ProcessChannel", "ResultChannel", "ThreadChannel"]

#: The most bytes one ``write`` puts on a pipe atomically (POSIX: at least 512; 4096 on Linux).
PIPE_BUF: int = getattr(select, "PIPE_BUF", 512)
#: ``fcntl`` commands of Linux that set and get a pipe's capacity.
_F_SETPIPE_SZ, _F_GETPIPE_SZ = 1031, 1032


def _encode(transport: Transport, item: Any, limit: int) -> bytes:
    """``item`` as bytes for one atomic pipe write of at most ``limit`` bytes (spilled when larger)."""
    data = transport.dumps(item)
    return data if len(data) <= limit else transport.spill(data)


def _decode(transport: Transport, data: bytes) -> Any:
    """What :func:`_encode` wrote."""
    if data.startswith(SPILLED):
        return transport.load_spilled(data)
    return transport.loads(data)


def _packet_pipe(maxsize: int) -> tuple[Connection, Connection] | None:
    """A one-way pipe in packet mode, holding ``maxsize`` messages; ``None`` where the system has none.

    In packet mode (Linux >= 3.4, ``O_DIRECT``) each ``write`` of at most
    :data:`PIPE_BUF` bytes is one packet, and each ``read`` returns one packet.
    A packet takes a page of the pipe (16 by default): the pipe is enlarged
    when the queue's bound is larger, so that a put that found a free slot
    never waits on the pipe.
    """
    flag = getattr(os, "O_DIRECT", None)
    pipe2 = getattr(os, "pipe2", None)
    if flag is None or pipe2 is None:
        return None
    try:
        r, w = pipe2(flag | os.O_CLOEXEC)
    except OSError:  # a kernel without packet pipes
        return None
    try:
        if fcntl.fcntl(w, _F_GETPIPE_SZ) < maxsize * mmap.PAGESIZE:
            fcntl.fcntl(w, _F_SETPIPE_SZ, maxsize * mmap.PAGESIZE)
    except OSError:  # over the system's limit (/proc/sys/fs/pipe-max-size)
        os.close(r)
        os.close(w)
        return None
    return Connection(r, writable=False), Connection(w, readable=False)


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

    Writers take a free slot, then write one message in one atomic ``write``
    (see the module docstring: no writer lock, so a writer killed at any
    instant blocks no other and leaves no half message); readers read one
    message, then free the slot. In packet mode (Linux) a ``read`` returns
    one whole message and readers take no lock; elsewhere they wait until a
    message is there and read it under the reader lock (held only to read,
    so a worker killed while it waits for input blocks no other).
    """

    def __init__(self, ctx: BaseContext, maxsize: int, transport: Transport | None = None) -> None:
        self.maxsize = maxsize
        pipe = _packet_pipe(maxsize)
        #: The reader lock, where the pipe is not in packet mode (a read may then return part of a message).
        self._rlock: Any = None
        if pipe is None:
            pipe = ctx.Pipe(duplex=False)
            self._rlock = ctx.Lock()
        self._reader, self._writer = pipe
        #: Bytes of the largest message written as it is (in packet mode, the packet has no length header).
        self._limit = PIPE_BUF if self._rlock is None else PIPE_BUF - 4
        self._slots = ctx.BoundedSemaphore(maxsize)
        self._transport = transport or PickleTransport()
        self._polls: dict[int, Any] = {}  # a poll set of the reader per reading thread of this process

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_polls": {}}

    def put(self, item: Any, timeout: float | None = None) -> bool:
        if not self._slots.acquire(timeout=timeout):
            return False
        try:
            data = _encode(self._transport, item, self._limit)
        except BaseException:
            self._slots.release()
            raise
        if self._rlock is None:
            os.write(self._writer.fileno(), data)  # one packet: all of it, atomically
        else:
            self._writer.send_bytes(data)  # header and message in one atomic write
        return True

    def get(self) -> Any:
        if self._rlock is None:
            data = os.read(self._reader.fileno(), PIPE_BUF)  # one whole message
            if not data:
                raise EOFError("the queue's pipe was closed")
        else:
            data = self._get_locked()
        self._slots.release()
        return _decode(self._transport, data)

    def _get_locked(self) -> bytes:
        while True:
            # Wait without the reader lock: a reader killed while it waits (SIGKILL, OOM)
            # leaves the lock free for the others; the lock is held only to read a message.
            self._wait_readable()
            with self._rlock:
                if not self._reader.poll(0):
                    continue  # another reader took it
                return self._reader.recv_bytes()

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
    Each message is one atomic ``write`` (see the module docstring): the
    parent, the only reader, never finds half a message, and a worker killed
    while it sends its output is reported by its sentinel, with the
    minibatch whose output it was sending.
    """

    def __init__(self, ctx: BaseContext, transport: Transport | None = None) -> None:
        self._reader, self._writer = ctx.Pipe(duplex=False)
        self._transport = transport or PickleTransport()
        self._poller: _Poller | None = None  # the parent's, made on its first wait

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_poller": None}

    def put(self, item: Any) -> None:
        # header and message in one atomic write: writers of any thread or process need no lock
        self._writer.send_bytes(_encode(self._transport, item, PIPE_BUF - 4))

    def get_ready(self, timeout: float | None, sentinels: list[Any]) -> tuple[list[Any], list[Any]]:
        reader: Connection = self._reader
        poller = self._poller
        if poller is None or poller.sentinels != sentinels or poller.thread != threading.get_ident():
            poller = self._poller = _Poller(reader, sentinels)
        has_data, fired = poller.wait(timeout)
        items = []
        if has_data:
            transport = self._transport
            while True:
                items.append(_decode(transport, reader.recv_bytes()))
                if not reader.poll(0):
                    break
        return items, fired

    def drain(self) -> list[Any]:
        """Read what is waiting now, without blocking."""
        items = []
        while self._reader.poll(0):
            items.append(_decode(self._transport, self._reader.recv_bytes()))
        return items

    def close(self) -> None:
        self.retire()
        self._transport.close()

    def retire(self) -> None:
        self._reader.close()
        self._writer.close()

