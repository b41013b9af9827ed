"""Ray, connected and sized: the connection, each stage's actor options, and the actor's body.

Used by :mod:`~neuraxle_stream.ray_backend`; importing this module does not
import Ray (only :func:`connect` does).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from .exceptions import InvalidParameterError
from .messages import MinibatchError, QueuedMinibatchTask
from .stages import StageSpec
from .workers import ChainRunner, StepFailed, _portable_record

__all__ = [
    "DRIVER_CPUS", "StageActor", "actor_options", "check_ray_options", "connect", "import_ray", "options_key",
]

logger = logging.getLogger("neuraxle_stream.ray_backend")

#: CPUs of the cluster left to the driver (and Ray's own work) by the default actor sizes.
DRIVER_CPUS = 1.0
#: Actor options a step may not set: the runtime owns the actor's life and its restarts.
_RESERVED_OPTIONS = {"max_restarts", "max_task_retries", "lifetime", "name", "get_if_exists"}


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError(
            "backend='ray' needs Ray, which is not installed: pip install 'neuraxle_stream[ray]'."
        ) from exc
    return ray


def connect(address: str | None = None) -> Any:
    """The ``ray`` module, connected to a cluster.

    Uses the user's ``ray.init(...)`` when Ray is initialised (``address``
    is then ignored, with a log message if it differs); else connects to
    ``address`` when given, else starts a local Ray instance, with a warning
    logged: a local instance takes seconds to start, and stays up for the
    rest of the process so that later calls reuse it.
    """
    ray = import_ray()
    if ray.is_initialized():
        if address is not None:
            logger.info("Ray is already initialised: ray_address=%r is not used.", address)
        return ray
    if address is not None:
        logger.info("Connecting to the Ray cluster at %r.", address)
        ray.init(address=address, log_to_driver=True)
    else:
        logger.warning(
            "Ray is not initialised: starting a local Ray instance for backend='ray' "
            "(call ray.init(...) first to choose its resources, or pass ray_address= "
            "to reach a cluster)."
        )
        ray.init(include_dashboard=False, log_to_driver=True)
    return ray


def check_ray_options(ray_options: Any, step_names: list[str]) -> None:
    """Check ``ray_options`` against the pipeline's steps (no Ray needed).

    Raises
    ------
    InvalidParameterError
        For an unknown step name, options that are not a dict, a negative or
        non-numeric ``num_cpus``/``num_gpus``, or an option the pipeline sets itself.
    """
    unknown = sorted(set(ray_options or {}) - set(step_names))
    if unknown:
        raise InvalidParameterError(
            f"The 'ray_options' parameter names steps that are not in the pipeline: {unknown}; "
            f"its steps are {sorted(step_names)}."
        )
    for name, opts in (ray_options or {}).items():
        if not isinstance(opts, dict):
            raise InvalidParameterError(
                f"The 'ray_options' parameter must map step names to dicts of Ray actor options. "
                f"Got {opts!r} for step {name!r} instead."
            )
        for key in ("num_cpus", "num_gpus"):
            value = opts.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise InvalidParameterError(
                    f"The 'ray_options' of step {name!r} must give {key!r} as a number >= 0. "
                    f"Got {value!r} instead."
                )
        reserved = sorted(set(opts) & _RESERVED_OPTIONS)
        if reserved:
            raise InvalidParameterError(
                f"The 'ray_options' of step {name!r} set {reserved}, which the pipeline sets itself."
            )


def actor_options(
    lanes: list[list[StageSpec]], ray_options: dict[str, dict[str, Any]] | None, cluster: dict[str, float],
    share_among: dict[str, int] | None = None,
) -> dict[str, dict[str, Any]]:
    """The Ray actor options of each stage's workers, by step name.

    A step named in ``ray_options`` gets its options (``num_cpus``,
    ``num_gpus``, ``memory``, ``resources``, ``scheduling_strategy``,
    ``runtime_env``, ...); names of steps that are not in ``lanes`` are
    ignored (a fit runs only the stages before a step). The other workers
    share what is left of the cluster's CPUs once :data:`DRIVER_CPUS` are
    kept for the driver (half the cluster when it has fewer than two), at
    most one CPU each: an actor holding a CPU slot forever, with every slot
    taken, would leave nothing to run the tasks Ray needs (the deadlock Ray
    Data users meet). ``cluster`` is ``ray.cluster_resources()``.
    ``share_among`` (workers by stage name) are the workers the CPUs are
    shared among, when more than those of ``lanes``: the stages of every
    run of the call, so that a worker's size, and with it its actor, is the
    same in each run (an actor is reused only with the options it was
    created with).

    Raises
    ------
    InvalidParameterError
        When the requests exceed the cluster's total CPUs or GPUs (they
        could never be placed).
    """
    workers = {spec.name: spec.n_workers for lane in lanes for spec in lane}
    options = {name: dict(opts) for name, opts in (ray_options or {}).items() if name in workers}
    for resource, key in (("CPU", "num_cpus"), ("GPU", "num_gpus")):
        asked = sum(float(options[n].get(key, 0) or 0) * workers[n] for n in options)
        available = float(cluster.get(resource, 0.0))
        if asked > available:
            raise InvalidParameterError(
                f"The 'ray_options' ask for {asked:g} {resource}s in all ({key} x n_workers "
                f"per step), but the Ray cluster has {available:g}: the actors could never be "
                "placed. Lower them, or add nodes to the cluster."
            )
    total_cpus = float(cluster.get("CPU", 0.0))
    shared = {**(share_among or {}), **workers}
    sizes = {n: dict(o) for n, o in (ray_options or {}).items() if n in shared}
    explicit = sum(float(sizes[n]["num_cpus"]) * shared[n] for n in sizes if "num_cpus" in sizes[n])
    defaulted = sum(w for n, w in shared.items() if "num_cpus" not in sizes.get(n, {}))
    left = max(0.0, total_cpus - min(DRIVER_CPUS, total_cpus / 2) - explicit)
    # Ray counts resources in units of 1/10,000.
    share = math.floor(min(1.0, left / defaulted) * 1e4) / 1e4 if defaulted else 0.0
    return {name: {"num_cpus": share, **options.get(name, {})} for name in workers}


def options_key(options: dict[str, Any]) -> str:
    """What an actor created with ``options`` is found by in the pool: equal options, equal key."""
    return repr(sorted(options.items()))


class _CollectLogs(logging.Handler):
    """Keeps an actor's ``logging`` records, made portable, until its next reply."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append(_portable_record(record))
        except Exception:
            self.handleError(record)

    def take(self) -> list[logging.LogRecord]:
        records, self.records = self.records, []
        return records


class StageActor:
    """The body of one worker's Ray actor (made remote by :class:`RayRuntime`).

    Its life: :meth:`ping` once placed; then, for each run it serves (the
    runs of one call, and the calls inside ``with pipeline:``, reuse it):
    :meth:`setup` with the run's step (a step that fails to load or in
    ``setup()`` does not kill the actor: the error is returned, so it
    reaches the driver with its type and traceback), :meth:`run` per
    minibatch, :meth:`teardown`, which drops the step: the next run's step
    is loaded afresh from its saved bytes.
    """

    def __init__(self, log_levels: dict[str, int]) -> None:
        self.spec: StageSpec | None = None
        self.worker_index = 0
        self.logs = _CollectLogs()
        root = logging.getLogger()
        for handler in list(root.handlers):  # Ray's own handlers would print a second copy
            root.removeHandler(handler)
        self._levels(log_levels)
        root.addHandler(self.logs)
        self.runner: ChainRunner | None = None
        self.last = time.perf_counter()

    @staticmethod
    def _levels(log_levels: dict[str, int]) -> None:
        for name, level in log_levels.items():
            logging.getLogger(name or None).setLevel(level)

    def ping(self) -> bool:
        """Answer once the actor is placed and started."""
        return True

    def setup(
        self, spec: StageSpec, worker_index: int, log_levels: dict[str, int],
    ) -> tuple[MinibatchError | None, list[logging.LogRecord]]:
        """Load the run's step and run its ``setup()``; return the error, if any, and the logs so far."""
        if self.runner is not None:  # not torn down (the driver gives back only torn-down actors): drop it
            self.runner.teardown()
            self.runner = None
        self.spec, self.worker_index = spec, worker_index
        self._levels(log_levels)  # the driver's, as the call began
        try:
            self.runner = ChainRunner(spec, worker_index)
        except StepFailed as failed:
            return self._capture(failed.error, None, 0, "setup", step=failed.step), self.logs.take()
        self.last = time.perf_counter()
        return None, self.logs.take()

    def _capture(
        self, exc: BaseException, index: int | None, run_id: int, phase: str, step: str | None = None, **kw: Any,
    ) -> MinibatchError:
        name = step if step is not None else (self.spec.name if self.spec is not None else "?")
        return MinibatchError.capture(
            exc, step_name=name, worker_index=self.worker_index, index=index,
            run_id=run_id, phase=phase, portable=True, **kw,
        )

    def run(self, task: QueuedMinibatchTask) -> tuple[tuple[MinibatchError | None, list[logging.LogRecord]], Any]:
        """Transform one minibatch: ``((error or None, log records), task for the next stage)``."""
        assert self.runner is not None, "run() on an actor whose setup failed"
        idle = time.perf_counter() - self.last  # as a worker waiting on its input queue
        result, error, step = self.runner.run(task, idle, None)
        self.last = time.perf_counter()
        if error is not None:
            failure = self._capture(
                error, task.index, task.run_id, "transform", step=step, stats=result.stats, trace=result.trace,
            )
            return (failure, self.logs.take()), None
        return (None, self.logs.take()), result

    def teardown(self) -> tuple[list[MinibatchError], list[logging.LogRecord]]:
        """Run the stage hooks' exit and the step's ``teardown()``; return their errors and the logs."""
        errors = [] if self.runner is None else self.runner.teardown()
        self.runner = None
        return [self._capture(e, None, 0, "teardown", step=name) for name, e in errors], self.logs.take()


