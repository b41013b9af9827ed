"""Backends: where workers run (threads or processes) and what joins them.

A backend makes the queues, the shared counters and the workers of a run.
:class:`ThreadBackend` passes objects by reference between threads;
:class:`ProcessBackend` starts one process per worker (``forkserver`` on
Linux by default, ``spawn`` when the workers use CUDA) and moves messages through a
:class:`~neuraxle_stream.transport.Transport`.
"""

from __future__ import annotations

import io
import itertools
import multiprocessing
import os
import sys
import threading
import types
from abc import ABC, abstractmethod
from collections.abc import Iterable
from multiprocessing import forkserver, popen_forkserver, reduction, spawn, util
from multiprocessing.context import (
    BaseContext,
    ForkServerContext,
    ForkServerProcess,
    set_spawning_popen,
)
from typing import Any

from ._step_calls import PerItem
from .config import get_config
from .exceptions import InvalidParameterError
from .pool import PooledWorker, worker_pool
from .queues import (
    Channel,
    ProcessChannel,
    ProcessResultChannel,
    ResultChannel,
    ThreadChannel,
    ThreadResultChannel,
)
from .stages import StageSpec
from .steps import ItemFunction
from .transport import Transport, default_transport
from .workers import WorkerIO, process_main, worker_loop

__all__ = [
    "Backend",
    "ProcessBackend",
    "ThreadBackend",
    "WorkerHandle",
    "forkserver_context",
    "is_lean",
    "resolve_context",
    "server_modules",
    "step_modules",
    "uses_cuda",
]

_backend_ids = itertools.count()


class WorkerHandle(ABC):
    """A running worker, as the supervisor sees it."""

    step_name: str
    worker_index: int
    sentinel: Any = None

    @abstractmethod
    def is_alive(self) -> bool:
        """Whether the worker still runs."""

    @abstractmethod
    def join(self, timeout: float | None = None) -> None:
        """Wait for the worker to end."""

    def kill(self) -> None:  # noqa: B027 - threads cannot be killed
        """Stop the worker at once, where the backend can."""

    def describe_exit(self) -> str:
        """How the worker ended, for error messages."""
        return "ended"


class _SharedInt:
    """An int shared between threads, with the ``multiprocessing.Value`` interface."""

    def __init__(self, value: int = 0) -> None:
        self.value = value
        self._lock = threading.Lock()

    def get_lock(self) -> threading.Lock:
        return self._lock


class Backend(ABC):
    """Makes the queues and workers of a run."""

    name: str
    #: Whether exceptions must be made picklable to reach the parent.
    portable: bool

    @abstractmethod
    def channel(self, maxsize: int) -> Channel:
        """A bounded queue between stages."""

    @abstractmethod
    def result_channel(self) -> ResultChannel:
        """The channel from the workers to the parent."""

    @abstractmethod
    def shared_int(self, value: int, lock: bool = True) -> Any:
        """An int visible to the parent and every worker."""

    @abstractmethod
    def shared_array(self, typecode: str, size: int) -> Any:
        """A fixed-size array of ints (``"q"``) or floats (``"d"``) written by workers."""

    @abstractmethod
    def start_worker(self, spec: StageSpec, worker_index: int, io: WorkerIO) -> WorkerHandle:
        """Start one worker of a stage."""

    def release_workers(self, handles: list[WorkerHandle], reuse: bool) -> None:  # noqa: B027
        """The run's runtime is closed and its workers joined: keep the reusable ones warm."""


class _ThreadHandle(WorkerHandle):
    def __init__(self, thread: threading.Thread, spec: StageSpec, worker_index: int) -> None:
        self.thread, self.step_name, self.worker_index = thread, spec.name, worker_index

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def join(self, timeout: float | None = None) -> None:
        self.thread.join(timeout)


class ThreadBackend(Backend):
    """Workers are threads of the calling process; each holds its own step copy."""

    name = "thread"
    portable = False

    def channel(self, maxsize: int) -> Channel:
        return ThreadChannel(maxsize)

    def result_channel(self) -> ResultChannel:
        return ThreadResultChannel()

    def shared_int(self, value: int, lock: bool = True) -> Any:
        return _SharedInt(value)

    def shared_array(self, typecode: str, size: int) -> Any:
        return [-1 if typecode == "q" else 0.0] * size

    def start_worker(self, spec: StageSpec, worker_index: int, io: WorkerIO) -> WorkerHandle:
        thread = threading.Thread(
            target=worker_loop,
            args=(spec, worker_index, io),
            name=f"neuraxle_stream:{spec.name}:{worker_index}",
            daemon=True,
        )
        thread.start()
        return _ThreadHandle(thread, spec, worker_index)


class _ProcessHandle(WorkerHandle):
    def __init__(self, process: Any, spec: StageSpec, worker_index: int) -> None:
        self.process, self.step_name, self.worker_index = process, spec.name, worker_index
        self.sentinel = process.sentinel

    def is_alive(self) -> bool:
        return bool(self.process.is_alive())

    def join(self, timeout: float | None = None) -> None:
        self.process.join(timeout)

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()

    def describe_exit(self) -> str:
        code = self.process.exitcode
        if code is None:
            return "is still running"
        if code < 0:
            import signal

            try:
                sig = signal.Signals(-code).name
            except ValueError:
                sig = f"signal {-code}"
            return f"was killed by {sig} (exit code {code})"
        return f"exited with code {code}"


class _PooledHandle(_ProcessHandle):
    """A warm worker of the pool (:mod:`~neuraxle_stream.pool`) doing one job for a runtime.

    It "ends" (``is_alive`` false, ``join`` returns) when its job is done, not
    when its process exits: the process may then go back to the pool.
    """

    def __init__(self, worker: PooledWorker, spec: StageSpec, worker_index: int) -> None:
        super().__init__(worker.process, spec, worker_index)
        self.worker = worker

    def is_alive(self) -> bool:
        return not self.worker.wait_done(0) and bool(self.process.is_alive())

    def join(self, timeout: float | None = None) -> None:
        self.worker.wait_done(timeout)


def step_modules(steps: Iterable[Any]) -> list[str]:
    """The modules a worker imports to load these steps: what a fork server may import first.

    A plain function (a per-item step, :class:`~neuraxle_stream.steps.ItemFunction`
    or its worker form) needs its own module; any other step its class's
    module (scikit-learn's, ours, the user's). Not ``__main__`` (steps from it
    travel by value) nor ``builtins``.
    """
    modules = set()
    for step in steps:
        if isinstance(step, (ItemFunction, PerItem)):
            name = getattr(step.func, "__module__", None) or type(step.func).__module__
        else:
            name = type(step).__module__
        if name and name not in ("__main__", "builtins"):
            modules.add(name)
    return sorted(modules)


#: What every pooled worker runs (a fork server always imports them first).
WORKER_MODULES = ("neuraxle_stream.workers", "neuraxle_stream.pool")
#: Our step layer, and scikit-learn through it (~0.6 s to import): what any step but a plain function needs.
STEP_LAYER = "neuraxle_stream.steps"


def _lean_name(name: str) -> bool:
    top = name.split(".")[0]
    return top in sys.stdlib_module_names or top == "numpy"


def _lean_module(name: str) -> bool:
    """Whether importing module ``name`` brings a worker only the standard library and NumPy.

    Judged by what it and its parent packages hold in this process: every
    module, class, function and object among their globals comes from the
    standard library, NumPy or themselves. A module not imported here is not
    lean.
    """
    if _lean_name(name):
        return True
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        own = ".".join(parts[:i])
        module = sys.modules.get(own)
        if module is None:
            return False
        for value in list(vars(module).values()):
            if isinstance(value, types.ModuleType):
                owner = value.__name__
            elif isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType)):
                owner = getattr(value, "__module__", None) or "builtins"
            else:
                owner = type(value).__module__
            if not (owner == own or owner.startswith(own + ".") or _lean_name(owner)):
                return False
    return True


def is_lean(modules: Iterable[str]) -> bool:
    """Whether workers of steps from ``modules`` (see :func:`step_modules`) need no scikit-learn.

    True when each module brings only the standard library and NumPy: plain
    functions of ``__main__`` (none listed), of NumPy, or of a module whose
    globals come from those alone.
    """
    return all(_lean_module(m) for m in modules)


def server_modules(preload: Iterable[str]) -> list[str]:
    """What a fork server started for steps from ``preload`` (see :func:`step_modules`) imports.

    The worker modules, then: for lean steps (:func:`is_lean`: plain functions
    of ``__main__``, the standard library or NumPy) only their modules, so that
    the first call of such a pipeline does not wait for scikit-learn; for any
    other, our step layer (scikit-learn) and their modules, so that every
    worker, and each one that replaces a dead worker, starts with them
    imported. torch too when the parent uses it: importing it takes seconds,
    once per server rather than once per worker (it does not initialise CUDA).
    """
    preload = list(preload)
    modules = [*WORKER_MODULES, *([] if is_lean(preload) else [STEP_LAYER]), *preload]
    return modules + (["torch"] if "torch" in sys.modules else [])


class _FullServerPopen(popen_forkserver.Popen):
    """Starts a process from :data:`_FULL_SERVER` rather than from the stdlib's fork server.

    As the stdlib's launch: the child's preparation data and process object,
    pickled with this ``Popen`` spawning (descriptors collected for the
    server to pass), go to the new child through the pipe the server gives.
    """

    def _launch(self, process_obj: Any) -> None:
        data = io.BytesIO()
        set_spawning_popen(self)
        try:
            reduction.dump(spawn.get_preparation_data(process_obj._name), data)
            reduction.dump(process_obj, data)
        finally:
            set_spawning_popen(None)
        self.sentinel, w = _FULL_SERVER.connect_to_new_process(self._fds)  # type: ignore[attr-defined]
        # the child watches this end of its data pipe to know its parent is alive
        watched = os.dup(w)
        self.finalizer = util.Finalize(self, util.close_fds, (watched, self.sentinel))  # type: ignore[attr-defined]
        with open(w, "wb", closefd=True) as pipe:
            pipe.write(data.getbuffer())
        self.pid = forkserver.read_signed(self.sentinel)


class _FullServerProcess(ForkServerProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> Any:
        return _FullServerPopen(process_obj)


class _FullServerContext(ForkServerContext):
    """The ``forkserver`` context whose processes come from :data:`_FULL_SERVER`."""

    Process = _FullServerProcess


#: A second fork server, for steps that need scikit-learn once the stdlib's server
#: has started lean (:func:`forkserver_context`); it starts at its first use.
_FULL_SERVER = forkserver.ForkServer()
_FULL_CONTEXT = _FullServerContext()
_servers_lock = threading.Lock()


def forkserver_context(preload: Iterable[str] = ()) -> BaseContext:
    """The ``forkserver`` context for workers of steps from ``preload`` (see :func:`step_modules`).

    A fork server's imports are fixed once it runs: the stdlib's server imports
    what the steps of the call that starts it need (:func:`server_modules`). When
    it started lean (plain functions) and steps that need scikit-learn come
    later, their workers come from a second server that imports scikit-learn
    and their modules: a worker that replaces a dead one, and a new warm one,
    starts in milliseconds rather than importing scikit-learn again.
    """
    preload = list(preload)
    ctx = multiprocessing.get_context("forkserver")
    stdlib = forkserver._forkserver
    with _servers_lock:
        if getattr(stdlib, "_forkserver_pid", None) is None:  # not started yet: this call's steps decide
            ctx.set_forkserver_preload(server_modules(preload))
            return ctx
        if STEP_LAYER in getattr(stdlib, "_preload_modules", ()) or is_lean(preload):
            return ctx
        if getattr(_FULL_SERVER, "_forkserver_pid", None) is None:
            _FULL_SERVER.set_forkserver_preload(server_modules(preload))
        return _FULL_CONTEXT


def resolve_context(mp_context: Any, uses_cuda: bool = False, preload: Iterable[str] = ()) -> BaseContext:
    """The ``multiprocessing`` context for ``mp_context`` (a name, a context or ``None``).

    Parameters
    ----------
    mp_context : str, multiprocessing context or None
        The user's choice; ``None`` means ``forkserver`` on Linux, else ``spawn``.
    uses_cuda : bool, default=False
        Whether the workers will touch CUDA (see :func:`uses_cuda`): then
        ``None`` means ``spawn``, and ``fork`` is refused.
    preload : iterable of str, default=()
        The modules the steps of the call need (see :func:`step_modules`): for
        ``forkserver``, what its server imports (:func:`forkserver_context`).

    Raises
    ------
    InvalidParameterError
        When ``fork`` is asked for workers that use CUDA.
    """
    if uses_cuda:
        method = mp_context.get_start_method() if isinstance(mp_context, BaseContext) else mp_context
        if method == "fork":
            raise InvalidParameterError(
                "The 'mp_context' parameter must not be 'fork' when workers use CUDA "
                "(a 'cuda' device in a step or its worker_arguments, or CUDA initialised "
                "in this process): a forked child cannot use CUDA. Use 'spawn' "
                "(the default then) or 'forkserver'. Got 'fork' instead."
            )
        if mp_context is None:
            mp_context = "spawn"
    if isinstance(mp_context, BaseContext):
        return mp_context
    if mp_context is None:
        mp_context = "forkserver" if sys.platform.startswith("linux") else "spawn"
    if mp_context == "forkserver":
        # Not the user's ``__main__``: steps from it travel by value (pool.py).
        return forkserver_context(preload)
    return multiprocessing.get_context(mp_context)


def uses_cuda(steps: Iterable[Any], worker_arguments: Iterable[Iterable[tuple[str, Any]]]) -> bool:
    """Whether workers of these steps will touch CUDA, so that they must be spawned.

    True when a step's ``device`` (its attribute, or any ``device`` or
    ``*__device`` parameter of ``get_params(deep=True)``) or a ``device``
    worker argument names a ``cuda`` device, or when CUDA is already
    initialised in this process (a forked child could not use it). Only
    looks at torch when torch is already imported.
    """
    values: list[Any] = []
    for step in steps:
        values.append(getattr(step, "device", None))
        if hasattr(step, "get_params"):
            try:
                params = step.get_params(deep=True)
            except Exception:  # a step whose params cannot be read names no device
                params = {}
            values += [v for k, v in params.items() if k == "device" or k.endswith("__device")]
    for pairs in worker_arguments:
        values += [v for k, v in pairs if k == "device" or k.endswith("__device")]
    if any(str(v).startswith("cuda") for v in values if v is not None):
        return True
    torch = sys.modules.get("torch")
    return bool(torch is not None and torch.cuda.is_initialized())


class ProcessBackend(Backend):
    """One process per worker; messages cross through the transport."""

    name = "process"
    portable = True

    def __init__(
        self,
        mp_context: Any = None,
        total_workers: int = 1,
        transport: Transport | None = None,
        uses_cuda: bool = False,
        preload: Iterable[str] = (),
    ) -> None:
        self.ctx = resolve_context(mp_context, uses_cuda, preload)
        self.thread_limit = max(1, (os.cpu_count() or 1) // max(1, total_workers))
        prefix = f"nxs-{os.getpid()}-{next(_backend_ids)}"
        # One transport for every queue of the run: closing the result channel
        # at the end of the run unlinks every shared-memory segment it left.
        self.transport = transport or default_transport(prefix)
        # Workers come from the pool of warm workers; a forked context cannot
        # hand its queues to a process already running (see pool.py): its own workers.
        self.pooled = self.ctx.get_start_method() != "fork"

    def channel(self, maxsize: int) -> Channel:
        return ProcessChannel(self.ctx, maxsize, self.transport)

    def result_channel(self) -> ResultChannel:
        return ProcessResultChannel(self.ctx, self.transport)

    def shared_int(self, value: int, lock: bool = True) -> Any:
        return self.ctx.Value("q", value, lock=lock)

    def shared_array(self, typecode: str, size: int) -> Any:
        array = self.ctx.RawArray(typecode, size)
        if typecode == "q":
            array[:] = [-1] * size
        return array

    def start_worker(self, spec: StageSpec, worker_index: int, io: WorkerIO) -> WorkerHandle:
        io.thread_limit = self.thread_limit
        if self.pooled:
            pool = worker_pool()
            for _ in range(2):  # an idle worker that died just now: a new one
                worker = pool.take(self.ctx, self.thread_limit)
                try:
                    worker.send_job((spec, worker_index, io))
                except OSError:
                    worker.kill()
                    continue
                return _PooledHandle(worker, spec, worker_index)
        process = self.ctx.Process(  # type: ignore[attr-defined]
            target=process_main,
            args=(spec, worker_index, io),
            name=f"neuraxle_stream:{spec.name}:{worker_index}",
            daemon=True,
        )
        process.start()
        return _ProcessHandle(process, spec, worker_index)

    def release_workers(self, handles: list[WorkerHandle], reuse: bool) -> None:
        """Give the warm workers of a run that ended well back to the pool; stop the others.

        ``reuse`` is false after a failed, aborted or timed-out run: its
        workers are never reused.
        """
        idle_timeout = float(get_config()["worker_idle_timeout"])
        for handle in handles:
            if not isinstance(handle, _PooledHandle):
                continue
            worker = handle.worker
            if reuse and worker.wait_done(0) and worker.process.is_alive():
                worker_pool().give_back(worker, idle_timeout)
            else:
                worker.kill()
                worker.stop()
