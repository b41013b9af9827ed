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
import threading
import time
from pathlib import Path
from typing import Any

from neuraxle_stream import BaseTransformer, NonFittableMixin

__all__ = [
    "POSITIONS",
    "BadInitError",
    "BlocksAt",
    "BlocksInSetup",
    "CorruptItems",
    "DiesAt",
    "ExitsAt",
    "ExitsInTeardown",
    "FailsToPickle",
    "FailsToUnpickle",
    "FlakyAt",
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
