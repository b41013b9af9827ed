"""Fault injectors: test doubles that break a queued pipeline on purpose.

Every injector is a step defined at module level, so it pickles by reference
and reaches process workers under every start method. Each passes its
minibatch through unchanged until it sees the item ``at`` (with
``batch_size=1`` and ``X = list(range(n))``, minibatch ``k`` is the item
``k``), then fails in its own way. ``at=None`` fails on the first minibatch.

Injectors that end the worker process (``os._exit``, SIGKILL, a segfault)
must only run on the process backend: on threads they would end the test.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import os
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

from neuraxle_stream import BaseTransformer, NonFittableMixin

__all__ = [
    "POSITIONS",
    "BadInitError",
    "BigOutputAt",
    "BlocksAt",
    "BlocksInSetup",
    "CorruptItems",
    "DiesAt",
    "ExitsAt",
    "ExitsInTeardown",
    "FailsToPickle",
    "FailsToUnpickle",
    "FlakyAt",
    "HoldsUntil",
    "KillsItselfAt",
    "MultiArgError",
    "OutOfMemoryAt",
    "PassThrough",
    "RaisesAt",
    "RaisesBadInitAt",
    "RaisesInSetup",
    "RaisesInTeardown",
    "RaisesMultiArgAt",
    "RaisesUnpicklableAt",
    "ReturnsUnpicklableAt",
    "SegfaultsAt",
    "UnpicklableError",
    "big_slow_items",
    "blocking_armed",
    "raising_source",
    "release_blocked",
    "kill_once_blocked",
    "kill_when_blocked",
    "put_and_wait",
    "shm_segments",
    "slow_items",
    "three_stages",
    "time_to_error",
]


class _Fault(NonFittableMixin, BaseTransformer):
    """Pass minibatches through; call :meth:`fail` on the one holding ``at``."""

    def __init__(self, at: Any = None) -> None:
        self.at = at

    def transform(self, data_inputs: Any) -> Any:
        items = list(data_inputs)
        if self.at is None or self.at in items:
            return self.fail(items)
        return data_inputs

    def fail(self, items: list[Any]) -> Any:
        raise NotImplementedError


class PassThrough(NonFittableMixin, BaseTransformer):
    """A healthy stage: returns its minibatch unchanged."""

    def transform(self, data_inputs: Any) -> Any:
        return data_inputs


# -- exceptions ---------------------------------------------------------------


class MultiArgError(Exception):
    """An exception whose ``__init__`` takes several arguments (and passes them on)."""

    def __init__(self, code: int, reason: str, detail: dict[str, Any]) -> None:
        super().__init__(code, reason, detail)
        self.code, self.reason, self.detail = code, reason, detail


class BadInitError(Exception):
    """Takes two arguments but stores one: unpickling it fails (``args`` has one)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"error {code}: {reason}")


class UnpicklableError(Exception):
    """Holds a lock: pickling it fails."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class RaisesAt(_Fault):
    """Raises ``ValueError("boom at <at>")`` on minibatch ``at``."""

    def fail(self, items: list[Any]) -> Any:
        raise ValueError(f"boom at {self.at}")


class RaisesMultiArgAt(_Fault):
    """Raises a :class:`MultiArgError` (three constructor arguments)."""

    def fail(self, items: list[Any]) -> Any:
        raise MultiArgError(7, "bad item", {"at": self.at})


class RaisesBadInitAt(_Fault):
    """Raises a :class:`BadInitError`, which pickles but cannot be unpickled."""

    def fail(self, items: list[Any]) -> Any:
        raise BadInitError(7, "bad item")


class RaisesUnpicklableAt(_Fault):
    """Raises an :class:`UnpicklableError`, which cannot be pickled."""

    def fail(self, items: list[Any]) -> Any:
        raise UnpicklableError(f"unpicklable at {self.at}")


class ReturnsUnpicklableAt(_Fault):
    """Returns locks: fine between threads, cannot cross to another process."""

    def fail(self, items: list[Any]) -> Any:
        return [threading.Lock() for _ in items]


# -- the worker process ends ------------------------------------------------


class ExitsAt(_Fault):
    """Calls ``os._exit(code)``: the process ends without a word (processes only)."""

    def __init__(self, at: Any = None, code: int = 3) -> None:
        super().__init__(at)
        self.code = code

    def fail(self, items: list[Any]) -> Any:
        os._exit(self.code)


class KillsItselfAt(_Fault):
    """Sends itself SIGKILL, as the kernel's OOM killer would (processes only)."""

    def fail(self, items: list[Any]) -> Any:
        os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)  # pragma: no cover - never reached


class SegfaultsAt(_Fault):
    """Reads address 0 (SIGSEGV; processes only)."""

    def fail(self, items: list[Any]) -> Any:
        faulthandler.disable()  # inherited from pytest under fork: keep the log quiet
        ctypes.string_at(0)


#: Injectors that end their process; never run them on the thread backend.
DiesAt = (ExitsAt, KillsItselfAt, SegfaultsAt)


class OutOfMemoryAt(_Fault):
    """Caps its own address space with ``setrlimit``, then allocates past it.

    Only ever run in a worker *process*: the limit applies to the process
    that sets it. The allocation raises ``MemoryError`` in the worker (the
    host's memory is never touched); the cap stays for the worker's life.
    """

    def __init__(self, at: Any = None, headroom_mb: int = 256) -> None:
        super().__init__(at)
        self.headroom_mb = headroom_mb

    def fail(self, items: list[Any]) -> Any:
        with open("/proc/self/statm") as f:
            vm_pages = int(f.read().split()[0])
        limit = vm_pages * os.sysconf("SC_PAGE_SIZE") + self.headroom_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        hoard = []
        while True:
            hoard.append(bytearray(16 * 2**20))


# -- pickling the step --------------------------------------------------------


class FailsToPickle(_Fault):
    """A step that cannot be pickled, so it cannot be sent to a worker."""

    def __reduce__(self) -> Any:
        raise TypeError("FailsToPickle refuses to be pickled")

    def fail(self, items: list[Any]) -> Any:
        return items


def _refuse_to_unpickle(at: Any) -> Any:
    raise RuntimeError(f"FailsToUnpickle cannot be rebuilt (at={at})")


class FailsToUnpickle(_Fault):
    """Pickles fine, but rebuilding it in the worker raises ``RuntimeError``."""

    def __reduce__(self) -> Any:
        return _refuse_to_unpickle, (self.at,)

    def fail(self, items: list[Any]) -> Any:
        return items


# -- setup() and teardown() ---------------------------------------------------

#: Set by :func:`release_blocked` to free thread workers stuck in a blocking step.
_RELEASE = threading.Event()


def release_blocked() -> None:
    """Free every :class:`BlocksInSetup` / :class:`BlocksAt` of this process.

    They stay free until :func:`blocking_armed` arms them again. Worker
    processes have their own copy of the switch: there they block for their
    ``seconds`` (under ``fork``, in the state the parent had).
    """
    _RELEASE.set()


@contextlib.contextmanager
def blocking_armed():
    """Arm the blocking injectors for a test and release them at its end."""
    _RELEASE.clear()
    try:
        yield
    finally:
        _RELEASE.set()


class BlocksInSetup(NonFittableMixin, BaseTransformer):
    """``setup()`` blocks until released (or for ``seconds`` at most)."""

    def __init__(self, seconds: float = 30.0) -> None:
        self.seconds = seconds

    def setup(self) -> None:
        _RELEASE.wait(self.seconds)

    def transform(self, data_inputs: Any) -> Any:
        return data_inputs


class BlocksAt(_Fault):
    """``transform`` blocks on minibatch ``at`` until released (or ``seconds``)."""

    def __init__(self, at: Any = None, seconds: float = 30.0) -> None:
        super().__init__(at)
        self.seconds = seconds

    def fail(self, items: list[Any]) -> Any:
        _RELEASE.wait(self.seconds)
        return items


class RaisesInSetup(NonFittableMixin, BaseTransformer):
    """``setup()`` raises ``OSError(5, "cannot open model")``."""

    def setup(self) -> None:
        raise OSError(5, "cannot open model")

    def transform(self, data_inputs: Any) -> Any:
        return data_inputs


class RaisesInTeardown(NonFittableMixin, BaseTransformer):
    """``teardown()`` raises ``RuntimeError("cannot release model")``."""

    def teardown(self) -> None:
        raise RuntimeError("cannot release model")

    def transform(self, data_inputs: Any) -> Any:
        return data_inputs


# -- sources ------------------------------------------------------------------


def raising_source(n: int, at: int) -> Any:
    """A generator of ``range(n)`` that raises ``LookupError`` at item ``at``."""
    for i in range(n):
        if i == at:
            raise LookupError(f"source failed at {at}")
        yield i


def big_slow_items(x: Any) -> Any:
    """A per-item operator whose outputs are large enough to cross in shared memory."""
    import numpy as np

    time.sleep(0.02)
    return np.full(40_000, x, dtype=np.float64)


def slow_items(x: Any) -> Any:
    """A per-item operator that takes a little while."""
    time.sleep(0.05)
    return x


# -- helpers for the fault tests ------------------------------------------------

#: Where an injector goes in :func:`three_stages`.
POSITIONS = ("first", "middle", "last")


def three_stages(
    fault: Any,
    position: str = "middle",
    queue: int = 1,
    next_workers: int = 1,
    backend: str = "thread",
    **params: Any,
) -> Any:
    """A 3-stage ``SequentialQueuedPipeline`` (``batch_size=1``) with ``fault`` at ``position``.

    The injector's stage is named ``"fault"``, the others ``"first"``,
    ``"middle"``, ``"last"``. ``next_workers`` is the number of workers of the
    stage after the injector (of the injector's own stage when it is last);
    every queue holds ``queue`` minibatches.
    """
    from neuraxle_stream import SequentialQueuedPipeline

    names = list(POSITIONS)
    at = names.index(position)
    steps: list[Any] = [PassThrough() for _ in names]
    workers = [1, 1, 1]
    steps[at] = fault
    names[at] = "fault"
    workers[min(at + 1, 2)] = next_workers
    return SequentialQueuedPipeline(
        [(name, n, queue, step) for name, n, step in zip(names, workers, steps)],
        batch_size=1,
        backend=backend,
        **params,
    )


def shm_segments() -> list[str]:
    """The shared-memory segments of runs started by this process."""
    prefix = f"nxs-{os.getpid()}-"
    try:
        return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))
    except OSError:
        return []


def time_to_error(call: Any) -> tuple[BaseException, float]:
    """Call ``call()``; return the exception it raised and the seconds it took."""
    start = time.monotonic()
    try:
        call()
    except BaseException as exc:  # the caller inspects it
        return exc, time.monotonic() - start
    raise AssertionError("the call did not fail")


class ExitsInTeardown(NonFittableMixin, BaseTransformer):
    """``teardown()`` ends the process with ``os._exit(4)`` (processes only)."""

    def teardown(self) -> None:
        os._exit(4)

    def transform(self, data_inputs: Any) -> Any:
        return data_inputs


# -- long runs: failures that a retry or a skip gets past --------------------


class FlakyAt(NonFittableMixin, BaseTransformer):
    """Fails the first ``times`` times it sees item ``at`` (counted in files, across workers and processes)."""

    def __init__(self, folder: str = "", at: int = 13, times: int = 1, how: str = "raise",
                 error: type[BaseException] = ConnectionError, seconds: float = 3.0) -> None:
        self.folder, self.at, self.times, self.how, self.error, self.seconds = folder, at, times, how, error, seconds

    def transform(self, data_inputs: Any) -> Any:
        items = list(data_inputs)
        if self.at in items and len(os.listdir(self.folder)) < self.times:
            Path(self.folder, f"attempt-{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}").touch()
            if self.how == "raise":
                raise self.error(f"flaky at {self.at}")
            if self.how == "exit":
                os._exit(7)
            if self.how == "sleep":
                time.sleep(self.seconds)
        return [x + 1 for x in items]


class CorruptItems(NonFittableMixin, BaseTransformer):
    """Fails on every minibatch holding an item in ``bad``."""

    def __init__(self, bad: tuple[int, ...] = (13,), how: str = "raise") -> None:
        self.bad, self.how = bad, how

    def transform(self, data_inputs: Any) -> Any:
        items = list(data_inputs)
        hit = [x for x in items if x in self.bad]
        if hit:
            if self.how == "exit":
                os._exit(9)
            raise ValueError(f"corrupt item {hit[0]}")
        return [x * 10 for x in items]


# -- a worker killed while it sends a large message ------------------------------

#: Bytes of the output :class:`BigOutputAt` gives for its item: far more than a pipe holds (64 KiB).
BIG = 4 << 20


def big_output(x: int) -> Any:
    """What :class:`BigOutputAt` gives for ``x`` when it is the item ``at``: ``BIG`` bytes, pickled in band."""
    return bytes([x % 256]) * BIG


class BigOutputAt(NonFittableMixin, BaseTransformer):
    """Passes items through, except item ``at``, whose output is :func:`big_output` (4 MiB of bytes).

    Bytes are pickled in band (no shared memory for them): the message that
    carries the output is as large as the output. Just before it returns that
    output, it writes its process id to a file ``returned-<n>`` in
    ``folder`` (one per attempt), so that a test can kill it while it sends
    the output (:func:`kill_when_blocked`).
    """

    def __init__(self, folder: str = "", at: int = 1) -> None:
        self.folder, self.at = folder, at

    def transform(self, data_inputs: Any) -> Any:
        items = list(data_inputs)
        if self.at not in items:
            return items
        out = [big_output(x) if x == self.at else x for x in items]
        signal_file = Path(self.folder, f"returned-{len(os.listdir(self.folder))}")
        signal_file.with_suffix(".tmp").write_text(str(os.getpid()))
        signal_file.with_suffix(".tmp").replace(signal_file)
        return out


class HoldsUntil(NonFittableMixin, BaseTransformer):
    """Passes each minibatch through once the file ``release`` exists (30 s at most): a reader that stops reading."""

    def __init__(self, release: str = "") -> None:
        self.release = release

    def transform(self, data_inputs: Any) -> Any:
        deadline = time.monotonic() + 30.0
        while not os.path.exists(self.release) and time.monotonic() < deadline:
            time.sleep(0.01)
        return data_inputs


def _state(pid: int) -> str:
    """The state letter of process ``pid`` (``R`` running, ``S`` sleeping...), ``""`` once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def kill_when_blocked(folder: str, timeout: float = 30.0) -> tuple[int, str]:
    """SIGKILL the worker of :class:`BigOutputAt` once its step returned the large output and it sleeps.

    It waits for ``folder/returned-0``, then for the worker process to block
    (state ``S``): before it can wait on anything else, a worker that sends
    the output blocks there, in the middle of the message when it writes it
    to a pipe that nobody reads. Returns the pid and what it was waiting on
    (``/proc/<pid>/wchan``: ``pipe_write`` in the middle of a message).
    """
    signal_file = Path(folder, "returned-0")
    deadline = time.monotonic() + timeout
    while not signal_file.exists():
        if time.monotonic() > deadline:
            raise AssertionError("the step never returned its large output")
        time.sleep(0.005)
    pid = int(signal_file.read_text())
    while _state(pid) not in ("S", ""):
        if time.monotonic() > deadline:
            raise AssertionError(f"worker {pid} never blocked (state {_state(pid)!r})")
        time.sleep(0.001)
    return pid, _kill_noting_wchan(pid)


def _kill_noting_wchan(pid: int) -> str:
    """SIGKILL ``pid``; what it was waiting on just before (``/proc/<pid>/wchan``, ``""`` if unknown)."""
    try:
        wchan = Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        wchan = ""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return wchan


def put_and_wait(channel: Any, item: Any, putting: Any, done: Any) -> None:
    """Target of a writer process: set ``putting``, put ``item`` on ``channel`` (either kind), set ``done``, wait."""
    putting.set()
    channel.put(item)
    done.set()
    time.sleep(60)


def kill_once_blocked(pid: int, putting: Any, done: Any, timeout: float = 30.0) -> str:
    """SIGKILL writer ``pid`` (:func:`put_and_wait`) once it has put its item or blocks in the middle of it.

    Returns what it was waiting on (``pipe_write``: in the middle of a message).
    """
    deadline = time.monotonic() + timeout
    if not putting.wait(timeout):
        raise AssertionError(f"writer {pid} never started its put")
    while not done.is_set() and _state(pid) not in ("S", ""):
        if time.monotonic() > deadline:
            raise AssertionError(f"writer {pid} never blocked nor finished")
        time.sleep(0.001)
    return _kill_noting_wchan(pid)


#: This folder: what a child Python needs on its path to import ``faults``.
TESTS = Path(__file__).resolve().parent


def start_child(code: str, *args: str) -> subprocess.Popen[str]:
    """Run ``code`` in a child Python that imports ``faults`` (its own session, so that a test can kill its whole group)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=TESTS,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
