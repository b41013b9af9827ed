"""``ParallelWorkersWrapper``: one stage of workers, as a step of a pipeline or on its own.

Inside a pipeline it sets the workers and queue bound of the step it wraps
(the pipeline's step parsing unwraps it, as a
:class:`~neuraxle_stream._validation.WorkersStage`); on its own it is a
one-stage queued pipeline, with the calls and lifecycle of
:mod:`neuraxle_stream._composite`.
"""

from __future__ import annotations

from typing import Any

from ._composite import _QueuedBase
from ._composition import Composition
from ._fitting import fit_one_stage
from ._validation import COMMON_CONSTRAINTS, StageDesc, WorkersStage, parse_steps
from .exceptions import InvalidParameterError
from .lifecycle import Lifecycle
from .monitor import CallMonitor
from .plan import Plan

__all__ = ["ParallelWorkersWrapper"]


_WRAPPER_CONSTRAINTS = {
    "wrapped": "no_validation",
    "n_workers": [COMMON_CONSTRAINTS["n_workers_per_step"][0]],
    **{k: COMMON_CONSTRAINTS[k] for k in (
        "max_queued_minibatches", "use_processes", "use_savers", "backend",
        "mp_context", "hooks", "timeout", "ray_options", "ray_address",
        "max_retries", "retry_on", "on_error", "max_failures",
    )},
    "batch_size": [COMMON_CONSTRAINTS["batch_size"][0], None],
}


class ParallelWorkersWrapper(_QueuedBase, WorkersStage):
    """One stage: ``n_workers`` workers sharing one bounded input queue.

    Inside a pipeline it sets the workers and queue bound of the step it wraps;
    on its own it is a one-stage queued pipeline.

    Parameters
    ----------
    wrapped : step
        The step each worker holds a copy of.
    n_workers : int, default=1
        Number of workers.
    max_queued_minibatches : int or None, default=None
        Bound of the input queue; ``None`` is ``2 * n_workers``.
    use_processes, use_savers : bool
        As on :class:`SequentialQueuedPipeline`.
    batch_size : int or None, default=None
        Rows per minibatch when used on its own (``None``: 32); inside a
        pipeline, the pipeline's.
    hooks : list of PipelineHook or None, default=None
        As on :class:`SequentialQueuedPipeline`. Inside a pipeline, they run
        in this stage's workers only, after the pipeline's own hooks (and
        their ``report`` is not called: the pipeline's hooks report).
    backend, mp_context, timeout, ray_address : optional
        As on :class:`SequentialQueuedPipeline`, when used on its own.
    max_retries, retry_on, on_error, max_failures : optional
        As on :class:`SequentialQueuedPipeline`, when used on its own (inside
        a pipeline, the pipeline's apply).
    ray_options : dict or None, default=None
        Ray actor options of its workers (``{"num_cpus": 0.5}``), when used on
        its own with ``backend="ray"``. Inside a pipeline, the pipeline's
        ``backend`` and ``ray_options`` (by step name) apply instead.

    Examples
    --------
    >>> w = ParallelWorkersWrapper(lambda x: x * 2, n_workers=2, backend="thread")
    >>> w.transform([1, 2, 3])
    [2, 4, 6]
    """

    _parameter_constraints = _WRAPPER_CONSTRAINTS
    _style = "wrapper"

    def __init__(
        self,
        wrapped: Any,
        n_workers: int = 1,
        max_queued_minibatches: int | None = None,
        use_processes: bool = True,
        use_savers: bool = False,
        *,
        batch_size: int | None = None,
        backend: str | None = None,
        mp_context: Any = None,
        hooks: Any = None,
        timeout: float | None = None,
        ray_options: dict[str, Any] | None = None,
        ray_address: str | None = None,
        max_retries: int = 0,
        retry_on: tuple[type[BaseException], ...] = (),
        on_error: str = "raise",
        max_failures: float | None = None,
    ) -> None:
        self.wrapped = wrapped
        self.n_workers = n_workers
        self.max_queued_minibatches = max_queued_minibatches
        self.use_processes = use_processes
        self.use_savers = use_savers
        self.batch_size = batch_size
        self.backend = backend
        self.mp_context = mp_context
        self.hooks = hooks
        self.timeout = timeout
        self.ray_options = ray_options
        self.ray_address = ray_address
        self.max_retries = max_retries
        self.retry_on = retry_on
        self.on_error = on_error
        self.max_failures = max_failures

    @property
    def steps(self) -> list[Any]:
        """The single stage, as a step list."""
        return [self.wrapped]

    def _stage_descs(self) -> list[StageDesc]:
        descs = parse_steps([self.wrapped], type(self).__name__, self.n_workers, self.max_queued_minibatches)
        descs[0].owner = self.wrapped
        return descs

    def _replace_step(self, name: str, new: Any) -> None:
        self.wrapped = new

    def _settings(self, settings: dict[str, Any], descs: list[StageDesc]) -> dict[str, Any]:
        options = settings.get("ray_options")
        if isinstance(options, dict) and options:
            # Its own actor options, unless given by step name as on the pipelines.
            name = descs[0].name
            if set(options) != {name}:
                settings = {**settings, "ray_options": {name: options}}
        return settings

    # A meta-estimator's parameters, as scikit-learn spells them: ``wrapped`` and
    # ``wrapped__param`` (GridSearchCV grids, clone), not the step's generated name.
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters, with the wrapped step's as ``wrapped__param`` when ``deep``."""
        params: dict[str, Any] = super(Composition, self).get_params(deep=deep)
        return params

    def set_params(self, **params: Any) -> ParallelWorkersWrapper:
        """Set parameters; ``wrapped__param`` sets a parameter of the wrapped step."""
        own = self.get_params(deep=False)
        for key in params:
            if key.partition("__")[0] not in own:
                raise InvalidParameterError(
                    f"Invalid parameter {key!r} for {type(self).__name__}. "
                    f"Valid parameters are: {sorted(own)!r}."
                )
        super(Composition, self).set_params(**params)
        return self

    def _fit(self, plan: Plan, lifecycle: Lifecycle, X: Any, y: Any, monitor: CallMonitor, transform: bool) -> Any:
        return fit_one_stage(plan, lifecycle, X, y, monitor, transform)
