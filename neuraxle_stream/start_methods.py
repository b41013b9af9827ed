"""Start methods: which ``multiprocessing`` context starts a call's worker processes.

:class:`~neuraxle_stream.backends.ProcessBackend` asks :func:`resolve_context`
for its context: the user's ``mp_context``, else ``forkserver`` on Linux
(``spawn`` elsewhere, and whenever the workers touch CUDA, :func:`uses_cuda`,
since a forked child cannot use it).

Why two fork servers. A fork server imports its modules once, when it starts,
and every worker it forks has them already: a worker starts in milliseconds,
where a ``spawn`` child would import scikit-learn again (~0.6 s). But what the
server imports is fixed by the call that starts it (:func:`server_modules` of
its :func:`step_modules`)::

    first call's steps lean (:func:`is_lean`: plain functions of ``__main__``,
    the standard library or NumPy)
        ──▶ the stdlib's server imports the worker modules only,
            so the first call does not wait for scikit-learn
    later steps that need scikit-learn
        ──▶ a second server of our own (:data:`_FULL_SERVER`) that imports
            our step layer (scikit-learn) and their modules, so that each of
            their workers, and one that replaces a dead worker, starts with them
    first call's steps not lean
        ──▶ the stdlib's server imports scikit-learn at once; one server

:func:`forkserver_context` makes that choice for each call.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import sys
import threading
import types
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
from .exceptions import InvalidParameterError
from .shm_segments import start_tracker
from .steps import ItemFunction

__all__ = [
    "STEP_LAYER",
    "WORKER_MODULES",
    "forkserver_context",
    "is_lean",
    "resolve_context",
    "server_modules",
    "start_server",
    "step_modules",
    "uses_cuda",
]


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


def start_server(ctx: BaseContext) -> None:
    """Start the fork server that ``ctx`` makes its processes from, if it has one, without waiting.

    ``multiprocessing`` starts a fork server at the first process asked of
    it, and that start then waits for the server's imports (scikit-learn:
    ~0.8 s). Started earlier, the imports run while the caller goes on (a
    step fitted in the parent before the first run); the server is what
    that run would have started, with the same imports. A server already
    running is left as it is; ``spawn`` and ``fork`` have none.

    Starting a server starts ``multiprocessing``'s resource tracker too: it is
    started first our way (:func:`~neuraxle_stream.shm_segments.start_tracker`,
    in a session of its own), as the run's transport would start it, so
    that it still outlives a kill of the caller's process group.
    """
    if isinstance(ctx, ForkServerContext):
        start_tracker()
    if isinstance(ctx, _FullServerContext):
        _FULL_SERVER.ensure_running()
    elif isinstance(ctx, ForkServerContext):
        forkserver.ensure_running()


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

