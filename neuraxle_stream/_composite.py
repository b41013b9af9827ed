"""The base of the queued composites: the public call templates and the lifecycle.

Each public call (``fit``, ``transform``, ``fit_transform``, ``stream``)
checks the parameters, parses the steps once, routes the call's metadata, and
builds one frozen :class:`~neuraxle_stream.plan.Plan`; the call layer
(:mod:`neuraxle_stream.call`, :mod:`neuraxle_stream._fitting`) runs it through
the composite's :class:`~neuraxle_stream.lifecycle.Lifecycle`, which owns the
runtimes, the last stats and cache info. A composite's ``__init__`` only
stores its parameters; a call leaves its ``__dict__`` as it was.

Subclasses give :meth:`_QueuedBase._stage_descs` (the parsed steps),
:meth:`_QueuedBase._fit` (what is fitted when) and, for a union,
:meth:`_QueuedBase._join` (how lane outputs are joined).

Over ~400 lines, on purpose: it is the public call surface of every
composite (the four call templates with their numpydoc sections, ``stats_``,
``cache_info``, ``with``/``close``/``stop``), shared by the pipeline, the union
and the wrapper; the parameter plumbing is in ``_composition``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, overload

from sklearn.utils._param_validation import Options, StrOptions

from . import _containers, _sklearn_output, tracing
from ._composition import Composition
from ._fitting import resolve as resolve_source
from ._routing import RoutedParams, route_params
from ._validation import (
    COMMON_CONSTRAINTS,
    StageDesc,
    check_fitted,
    check_lengths,
    check_steps,
    validate_params,
)
from .caching import Cache, CacheInfo, folder_size, memory_location, open_store
from .call import monitored, run, stream, traced, transform_range
from .exceptions import InvalidParameterError
from .lifecycle import Lifecycle, lifecycle_of, peek_lifecycle
from .monitor import CallMonitor
from .plan import Plan, first_output
from .stats import PipelineStats
from .steps import BaseTransformer

__all__ = ["_QueuedBase", "_StepsComposite"]


class _QueuedBase(Composition, BaseTransformer, auto_wrap_output_keys=None):  # type: ignore[call-arg]
    """What the queued composites share: plans, the public calls, lifecycle, stats."""

    _parameter_constraints: dict[str, Any] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # scikit-learn's wrapping of transform's output is off: ours (in
        # _sklearn_output) passes traces through and gives the input's index.
        kwargs["auto_wrap_output_keys"] = None
        super().__init_subclass__(**kwargs)
        _sklearn_output.wrap_methods(cls)

    # -- to be given by subclasses ------------------------------------------------

    def _settings(self, settings: dict[str, Any], descs: list[StageDesc]) -> dict[str, Any]:
        """The parameters a plan is built from: ``get_params(deep=False)``, checked."""
        return settings

    def _join(self, descs: list[StageDesc]) -> Callable[[list[Any]], Any]:
        """How one minibatch's lane outputs are joined (one lane: its output)."""
        return first_output

    def _check_stages(self, descs: list[StageDesc]) -> None:
        """Raise when the steps cannot run (a union without branches)."""

    def _fit(self, plan: Plan, lifecycle: Lifecycle, X: Any, y: Any, monitor: CallMonitor, transform: bool) -> Any:
        """Fit the steps; the outputs for ``X`` when ``transform`` (else ``None``)."""
        raise NotImplementedError

    # -- the plan ------------------------------------------------------------------

    def _plan(self) -> Plan:
        """The plan of a call: parameters checked, steps parsed (once), nothing routed yet."""
        settings = self.get_params(deep=False)
        validate_params(self._parameter_constraints, settings, type(self).__name__)
        descs = self._stage_descs()
        settings = self._settings(settings, descs)
        check_steps([d.name for d in descs], settings, type(self).__name__, pipeline=self._style == "pipeline")
        if settings.get("ray_options") is not None:
            from .ray_actors import check_ray_options  # the Ray modules load only when Ray is used

            check_ray_options(settings["ray_options"], [d.name for d in descs])
        self._check_stages(descs)
        return Plan.of(type(self).__name__, self._style, descs, join=self._join(descs), **settings)

    def _routed(self, plan: Plan, method: str, params: dict[str, Any], X: Any, y: Any) -> Plan:
        """``plan`` with the call's metadata routed to its steps."""
        routed: RoutedParams = route_params(self, plan.stages, plan.style, self._fit_method(), method, params, X, y)
        return plan.with_routed(routed)

    def _fit_input(self, X: Any, plan: Plan, trace: bool) -> Any:
        """``X`` as ``fit`` reads it: a callable source is called, except by a partial fit."""
        X = _containers.as_rows(X)
        return X if plan.fit_mode == "partial" and not trace else resolve_source(X)

    # -- public API ----------------------------------------------------------------

    def fit(self, X: Any, y: Any = None, **fit_params: Any) -> _QueuedBase:
        """Fit every fittable step on the output of the stages before it.

        Parameters
        ----------
        X : array-like, iterable or callable
            The input rows (with ``fit_mode="partial"``, a source read once
            per fittable step: see ``docs/fitting.md``).
        y : array-like or None, default=None
            Targets, one per row of ``X``.
        **fit_params : dict
            Routed to the steps (see ``docs/fitting.md``): with
            ``sklearn.set_config(enable_metadata_routing=True)``, to the steps
            that request them; otherwise as scikit-learn's ``Pipeline``
            (``step__param``) or ``FeatureUnion`` (every branch) take them.

        Returns
        -------
        self

        Raises
        ------
        InvalidParameterError
            A parameter or step form is invalid (before any worker starts).
        ValueError
            ``X`` and ``y`` differ in rows, or a fit param is of no step.
        BrokenPipelineError
            A worker died.
        """
        plan = self._plan().raising()  # fitting needs every output: on_error="skip" applies to stream()
        X = self._fit_input(X, plan, trace=False)
        check_lengths(X, y, plan.caller)
        plan = self._routed(plan, "fit", fit_params, X, y)
        lifecycle = lifecycle_of(self)
        with monitored(plan, lifecycle, X) as monitor:
            self._fit(plan, lifecycle, X, y, monitor, transform=False)
        return self

    def fit_transform(self, X: Any, y: Any = None, *, trace: int | None = None, **fit_params: Any) -> Any:
        """Fit, then return the outputs of the whole composite for ``X``.

        Parameters
        ----------
        X, y, **fit_params
            As for :meth:`fit`.
        trace : int or None, default=None
            Fit and run on the first ``trace`` items only (the steps are
            fitted on them, as ``fit_transform(X[:N], y[:N])`` would).

        Returns
        -------
        output or TraceResult
            The joined outputs, one per row of ``X``, in input order; with
            ``trace``, a :class:`~neuraxle_stream.TraceResult` of the workers' calls.

        Raises
        ------
        InvalidParameterError
            A parameter, step form or ``trace`` is invalid.
        ValueError
            ``X`` and ``y`` differ in rows, or a fit param is of no step.
        BrokenPipelineError
            A worker died; a step's own exception is re-raised as it is.
        """
        plan = self._plan()
        _refuse_skip(plan, "fit_transform")
        X = self._fit_input(X, plan, trace=trace is not None)
        check_lengths(X, y, plan.caller)
        plan = self._routed(plan, "fit_transform", fit_params, X, y)
        lifecycle = lifecycle_of(self)
        if trace is not None:
            return traced(plan, lifecycle, "fit_transform", trace, X, y,
                          lambda p, X, y, m: self._fit(p, lifecycle, X, y, m, True))
        with monitored(plan, lifecycle, X) as monitor:
            return self._fit(plan, lifecycle, X, y, monitor, transform=True)

    def transform(self, X: Any, *, trace: int | None = None, **params: Any) -> Any:  # type: ignore[override]
        """Run ``X`` through every stage and return the joined outputs, in input order.

        Parameters
        ----------
        X : array-like or iterable
            The input rows.
        trace : int or None, default=None
            Run only the first ``trace`` items and return a
            :class:`~neuraxle_stream.TraceResult` of what each step did to them.
        **params : dict
            Only with ``enable_metadata_routing=True``: go to the ``transform``
            of the steps that request them, cut per minibatch.

        Returns
        -------
        output or TraceResult
            One output per input row, in the container a sequential run gives.

        Raises
        ------
        InvalidParameterError
            A parameter, step form or ``trace`` is invalid.
        BrokenPipelineError
            A worker died; a step's own exception is re-raised as it is.
        """
        plan = self._plan()
        lifecycle = lifecycle_of(self)
        check_fitted(list(plan.stages), lifecycle.fitted_steps, plan.caller)
        _refuse_skip(plan, "transform")
        X = _containers.as_rows(X)
        if params:
            plan = self._routed(plan, "transform", params, X, None)
        n = len(plan.stages)
        if trace is not None:
            return traced(plan, lifecycle, "transform", trace, X, None,
                          lambda p, X, y, m: transform_range(p, lifecycle, X, 0, n, m))
        with monitored(plan, lifecycle, X) as monitor:
            return transform_range(plan, lifecycle, X, 0, n, monitor)

    @overload
    def stream(self, iterable: Iterable[Any], *, trace: None = None) -> Iterator[Any]: ...
    @overload
    def stream(self, iterable: Iterable[Any], *, trace: int) -> tracing.TraceResult: ...
    def stream(self, iterable: Iterable[Any], *, trace: int | None = None) -> Iterator[Any] | tracing.TraceResult:
        """Yield the outputs for the items of ``iterable``, one item at a time.

        The source is read lazily, so it may be endless; at most the queue
        bounds are in flight. Items come in input order, or as completed with
        ``output_order="completion"``. Closing the generator stops the workers.

        Parameters
        ----------
        iterable : iterable
            The source, of any length.
        trace : int or None, default=None
            Read only the first ``trace`` items, run them at once and return
            a :class:`~neuraxle_stream.TraceResult` (not a generator), as
            ``transform(X, trace=N)`` does; their outputs are the ``retval``
            of the last stage's calls.

        Returns
        -------
        generator or TraceResult
            The outputs, one item at a time.

        Raises
        ------
        InvalidParameterError
            A parameter, step form or ``trace`` is invalid (when the
            generator starts; at once with ``trace``).
        BrokenPipelineError
            A worker died; a step's own exception is re-raised as it is.
        """
        if trace is None:
            return self._stream(iterable)
        plan = self._plan()
        lifecycle = lifecycle_of(self)
        check_fitted(list(plan.stages), lifecycle.fitted_steps, plan.caller)
        n = len(plan.stages)

        def run_all(p: Plan, X: Any, y: Any, m: CallMonitor) -> None:
            with contextlib.closing(run(p, lifecycle, X, 0, n, m, ordered=p.ordered)) as outputs:
                for _ in outputs:
                    pass

        return traced(plan, lifecycle, "stream", trace, iterable, None, run_all)

    def _stream(self, iterable: Iterable[Any]) -> Iterator[Any]:
        plan, lifecycle = self._plan(), lifecycle_of(self)
        check_fitted(list(plan.stages), lifecycle.fitted_steps, plan.caller)
        yield from stream(plan, lifecycle, iterable)

    # -- stats and cache ------------------------------------------------------------------

    @property
    def stats_(self) -> PipelineStats:
        """The stats of the last call (``fit``, ``transform``, ``fit_transform``, ``stream``).

        A :class:`~neuraxle_stream.PipelineStats`: ``stats_[name]`` is the
        :class:`~neuraxle_stream.StageStats` of step ``name``,
        ``stats_.queues[name]`` the :class:`~neuraxle_stream.QueueStats` of
        its input queue; ``print(stats_)`` shows the table and the
        bottleneck. Set after failed calls too (failures counted).
        """
        lifecycle = peek_lifecycle(self)
        if lifecycle is None or lifecycle.stats is None:
            raise AttributeError(
                f"This {type(self).__name__} has no stats_ yet: they are set by each call "
                "(fit, transform, fit_transform, stream)."
            )
        return lifecycle.stats

    def cache_info(self) -> CacheInfo:
        """Per step of the last call: its cache key, bytes on disk, hits and misses.

        ``str()`` of the result is a table; ``info[name]`` gives a step's
        numbers (``key``, ``hits``, ``misses``, ``bytes_written``, ``fit``).
        A hit is a minibatch whose output of that step was not computed.
        """
        location = memory_location(getattr(self, "memory", None))
        lifecycle = peek_lifecycle(self)
        info = (lifecycle.last_info if lifecycle is not None else None) or CacheInfo(location)
        if location is not None:
            store = open_store(location)
            info.sizes = {name: folder_size(store, f"steps/{s.key}") for name, s in info.steps.items() if s.key}
        return info

    def clear_cache(self) -> None:
        """Remove everything cached under this pipeline's ``memory`` directory."""
        location = memory_location(getattr(self, "memory", None))
        if location is not None:
            Cache(location).clear()

    # -- lifecycle ------------------------------------------------------------------

    def __enter__(self) -> _QueuedBase:
        lifecycle = lifecycle_of(self)
        lifecycle.keep_alive = True
        lifecycle.watch(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def stop(self) -> bool:
        """Stop the call running on this pipeline, from any other thread.

        The running ``transform``, ``fit_transform`` or ``stream`` raises
        :class:`~neuraxle_stream.PipelineStoppedError` at once; workers kept by
        ``with pipeline:`` stay up.

        Returns
        -------
        bool
            ``False`` when no call is running.
        """
        lifecycle = peek_lifecycle(self)
        return lifecycle.stop() if lifecycle is not None else False

    def close(self) -> None:
        """Stop the workers kept by ``with pipeline:``; safe to call twice.

        Raises
        ------
        Exception
            The first error a kept runtime raised while closing (the others
            are closed all the same).
        """
        lifecycle = peek_lifecycle(self)
        if lifecycle is not None:
            lifecycle.close()

    @property
    def _lifecycle(self) -> Lifecycle:
        """The owner of this composite's runtimes, stats and cache info."""
        return lifecycle_of(self)


_sklearn_output.wrap_methods(_QueuedBase)


def _refuse_skip(plan: Plan, method: str) -> None:
    """``transform``, ``fit`` and ``fit_transform`` give one output per input: they cannot skip minibatches."""
    if plan.retry.on_error == "skip":
        raise InvalidParameterError(
            f"The 'on_error' parameter of {plan.caller} must be 'raise' for {method}(), which returns one "
            "output per input; on_error='skip' applies to stream(). Got 'skip' instead."
        )

_SEQUENTIAL_CONSTRAINTS = {
    "steps": [list, tuple],
    **COMMON_CONSTRAINTS,
    "chain": [StrOptions({"auto"}), Options(bool, {False})],  # see chaining.chain_layout
}


class _StepsComposite(_QueuedBase):
    """A queued composite of a list of steps: stores the parameters both share."""

    _parameter_constraints = _SEQUENTIAL_CONSTRAINTS

    def __init__(
        self,
        steps: list[Any],
        batch_size: int = 32,
        n_workers_per_step: int = 1,
        max_queued_minibatches: int | None = None,
        data_joiner: Any = None,
        use_processes: bool = True,
        use_savers: bool = False,
        keep_incomplete_batch: bool = True,
        default_value_data_inputs: Any = None,
        default_value_expected_outputs: Any = None,
        *,
        backend: str | None = None,
        mp_context: Any = None,
        hooks: Any = None,
        memory: Any = None,
        output_order: str = "input",
        progress: bool = False,
        verbose: bool = False,
        timeout: float | None = None,
        ray_options: dict[str, dict[str, Any]] | None = None,
        ray_address: str | None = None,
        fit_mode: str = "full",
        max_retries: int = 0,
        retry_on: tuple[type[BaseException], ...] = (),
        on_error: str = "raise",
        max_failures: float | None = None,
        chain: bool | str = "auto",
    ) -> None:
        self.steps = steps
        self.batch_size = batch_size
        self.n_workers_per_step = n_workers_per_step
        self.max_queued_minibatches = max_queued_minibatches
        self.data_joiner = data_joiner
        self.use_processes = use_processes
        self.use_savers = use_savers
        self.keep_incomplete_batch = keep_incomplete_batch
        self.default_value_data_inputs = default_value_data_inputs
        self.default_value_expected_outputs = default_value_expected_outputs
        self.backend = backend
        self.mp_context = mp_context
        self.hooks = hooks
        self.memory = memory
        self.output_order = output_order
        self.progress = progress
        self.verbose = verbose
        self.timeout = timeout
        self.ray_options = ray_options
        self.ray_address = ray_address
        self.fit_mode = fit_mode
        self.max_retries = max_retries
        self.retry_on = retry_on
        self.on_error = on_error
        self.max_failures = max_failures
        self.chain = chain
