"""Queued pipelines: the description a user builds, run by a :class:`Runtime`.

:class:`SequentialQueuedPipeline` runs its steps as a chain of stages, each
with its own workers; :class:`ParallelWorkersWrapper` is one such stage, usable
on its own. Both are scikit-learn estimators whose ``__init__`` only stores
its parameters: workers, queues and processes exist only while a call runs,
or inside ``with pipeline:``.

Each call (``fit``, ``transform``, ``fit_transform``, ``stream``) has a
:class:`~neuraxle_stream.monitor.CallMonitor` that merges the workers' records;
at the end of the call they become ``pipeline.stats_``.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, overload

import numpy as np
import sklearn
from sklearn.exceptions import NotFittedError
from sklearn.utils import Bunch
from sklearn.utils.metadata_routing import MetadataRouter
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from . import _containers, _sklearn_output, tracing
from ._cached_run import fit_cached, last_info, run_cached
from ._fitting import MinibatchParams, RoutedParams, fit_partial, metadata_router, route_params
from ._fitting import resolve as resolve_source
from ._validation import (
    COMMON_CONSTRAINTS,
    PIPELINE_SPECIAL_STEPS,
    StageDesc,
    check_hooks,
    check_lengths,
    parse_steps,
    validate_params,
)
from .backends import Backend, ProcessBackend, ThreadBackend, uses_cuda
from .caching import Cache, CacheInfo, folder_size, memory_location, open_store
from .exceptions import InvalidParameterError
from .hooks import dump_hooks
from .monitor import CallMonitor
from .runtime import Runtime
from .runtime_base import BaseRuntime
from .savers import save_step
from .stages import StageSpec
from .stats import PipelineStats
from .steps import BaseTransformer, is_fittable, iter_items

__all__ = ["ParallelWorkersWrapper", "SequentialQueuedPipeline", "StripAbsentValues"]

# ``stats_`` lives here rather than in the pipeline's ``__dict__``: a call to
# ``transform`` must leave ``__dict__`` as it was (scikit-learn's
# check_dict_unchanged), and stats are not part of a pickled pipeline.
_LAST_STATS: weakref.WeakKeyDictionary[Any, PipelineStats] = weakref.WeakKeyDictionary()


#: The runtimes each pipeline is running now, for :meth:`_QueuedBase.stop`
#: (kept outside the estimator so that its ``__dict__`` does not change).
_RUNNING: weakref.WeakKeyDictionary[Any, list[BaseRuntime]] = weakref.WeakKeyDictionary()


class StripAbsentValues:
    """A ``default_value_*`` that trims the last short minibatch instead of padding it.

    Examples
    --------
    >>> from neuraxle_stream import SequentialQueuedPipeline, Identity
    >>> p = SequentialQueuedPipeline([Identity()], batch_size=2, use_processes=False,
    ...                              default_value_data_inputs=StripAbsentValues())
    >>> p.transform([1, 2, 3])
    [1, 2, 3]
    """

    def __repr__(self) -> str:
        return "StripAbsentValues()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StripAbsentValues)

    def __hash__(self) -> int:
        return hash(StripAbsentValues)


class _QueuedBase(BaseTransformer, auto_wrap_output_keys=None):  # type: ignore[call-arg]
    """What the queued composites share: validation, runs, lifecycle, params."""

    _parameter_constraints: dict[str, Any] = {}
    steps: Any  # a parameter of the pipelines, a property of the wrapper

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # scikit-learn's wrapping of transform's output is off: ours (in
        # _sklearn_output) passes traces through and gives the input's index.
        kwargs["auto_wrap_output_keys"] = None
        super().__init_subclass__(**kwargs)
        _sklearn_output.wrap_methods(cls)

    # -- to be given by subclasses ------------------------------------------------

    def _stage_descs(self) -> list[StageDesc]:
        raise NotImplementedError

    def _lanes(self, descs: list[StageDesc], start: int, stop: int) -> list[list[StageDesc]]:
        stages = descs[start:stop]
        # "passthrough" stages run in no worker, unless nothing else is left to run
        return [[d for d in stages if d.kind != "passthrough"] or stages]

    def _join_lanes(self, outputs: list[Any], descs: list[StageDesc]) -> Any:
        return outputs[0]

    def _passthrough_only(self, start: int, stop: int) -> bool:
        """Whether stages ``start:stop`` are all ``"passthrough"``: their output is their input."""
        stages = self._stage_descs()[start:stop]
        return bool(stages) and all(d.kind == "passthrough" for d in stages)

    def _settings(self) -> dict[str, Any]:
        return self.get_params(deep=False)

    # -- steps and names ---------------------------------------------------------

    @property
    def named_steps(self) -> Bunch:
        """The steps by name, as given (fitted in place by ``fit``)."""
        return Bunch(**{d.name: d.owner for d in self._stage_descs()})

    def __getitem__(self, key: int | str | slice) -> Any:
        descs = self._stage_descs()
        if isinstance(key, str):
            return self.named_steps[key]
        if isinstance(key, slice):
            clone_params = self.get_params(deep=False)
            clone_params["steps"] = list(self.steps)[key]
            return type(self)(**clone_params)
        return descs[key].owner

    def __len__(self) -> int:
        return len(self._stage_descs())

    # -- validation --------------------------------------------------------------

    def _check_params(self) -> dict[str, Any]:
        settings = self._settings()
        validate_params(self._parameter_constraints, settings, type(self).__name__)
        if settings.get("ray_options") is not None:
            from .ray_backend import check_ray_options  # imports no Ray

            check_ray_options(settings["ray_options"], [d.name for d in self._stage_descs()])
        return settings

    def _backend_name(self, settings: dict[str, Any]) -> str:
        if settings.get("backend") is not None:
            name: str = settings["backend"]
        else:
            name = "process" if settings.get("use_processes", True) else "thread"
        if name == "process" and multiprocessing.current_process().daemon:
            return "thread"  # nested inside a worker process: daemons cannot have children
        return name

    # -- runs ----------------------------------------------------------------------

    def _specs(self, lanes: list[list[StageDesc]], settings: dict[str, Any]) -> list[list[StageSpec]]:
        specs = []
        hooks = tuple(settings.get("hooks") or ())
        saved_hooks = dump_hooks(hooks)
        sklearn_config = sklearn.get_config()  # the caller's (thread-local): the workers run under it
        positions = {d.name: i for i, d in enumerate(self._stage_descs())}
        for lane_index, lane in enumerate(lanes):
            lane_specs = []
            for i, d in enumerate(lane):
                stage_hooks = saved_hooks
                if isinstance(d.owner, ParallelWorkersWrapper) and d.owner.hooks:
                    # a wrapper in the steps: its own hooks run in its stage, after the pipeline's
                    check_hooks(d.owner.hooks, type(d.owner).__name__)
                    stage_hooks = dump_hooks(hooks + tuple(d.owner.hooks))
                step = d.runnable
                queue = d.max_queue_size if d.max_queue_size is not None else 2 * d.n_workers
                lane_specs.append(
                    StageSpec(
                        name=d.name,
                        lane=lane_index,
                        index=i,
                        n_workers=d.n_workers,
                        max_queue_size=queue,
                        payload=save_step(step, d.name, settings.get("use_savers", False)),
                        worker_arguments=d.worker_arguments,
                        may_change_length=bool(getattr(step, "may_change_length", False)),
                        hooks=stage_hooks,
                        step_index=positions.get(d.name),
                        trace=settings.get("_trace") is not None,
                        sklearn_config=sklearn_config,
                    )
                )
            specs.append(lane_specs)
        return specs

    def _make_backend(self, settings: dict[str, Any], specs: list[list[StageSpec]]) -> Backend:
        if self._backend_name(settings) == "thread":
            return ThreadBackend()
        total = sum(s.n_workers for lane in specs for s in lane)
        cuda = uses_cuda(
            (d.runnable for d in self._stage_descs()),
            (pairs for lane in specs for s in lane for pairs in s.worker_arguments),
        )
        return ProcessBackend(settings.get("mp_context"), total_workers=total, uses_cuda=cuda)

    def _new_runtime(self, specs: list[list[StageSpec]], settings: dict[str, Any]) -> BaseRuntime:
        if self._backend_name(settings) == "ray":
            from .ray_backend import RayRuntime  # Ray is optional: imported only when asked for

            return RayRuntime(
                specs, timeout=settings.get("timeout"),
                ray_options=settings.get("ray_options"), address=settings.get("ray_address"),
            )
        return Runtime(specs, self._make_backend(settings, specs), timeout=settings.get("timeout"))

    def _runtime(self, specs: list[list[StageSpec]], settings: dict[str, Any]) -> BaseRuntime:
        """The runtime for these stages: a kept one inside ``with``, else a new one."""
        # ``_runtimes`` exists only inside ``with``: a plain call leaves __dict__ as it was.
        if settings.get("_trace") is not None:  # a traced call never keeps (nor takes) a runtime
            return self._new_runtime(specs, settings)
        live: dict[Any, BaseRuntime] = self.__dict__.get("_runtimes", {})
        key = (self._backend_name(settings), str(settings.get("mp_context")), repr(specs))
        runtime = live.get(key)
        if runtime is not None and not runtime.broken:
            return runtime
        runtime = self._new_runtime(specs, settings)
        if self.__dict__.get("_keep_alive"):
            kept = self.__dict__.setdefault("_runtimes", {})
            # A kept runtime for the same stages whose steps (or settings) changed
            # since holds stale step copies: stop it rather than keep both.
            # Ray actors hold their CPUs and GPUs for as long as they live: keep one set.
            stages = [[s.name for s in lane] for lane in specs]
            for old_key, old in list(kept.items()):
                if [[s.name for s in lane] for lane in old.lanes] == stages or old_key[0] == key[0] == "ray":
                    del kept[old_key]
                    with contextlib.suppress(Exception):
                        old.close(graceful=not old.broken)
            kept[key] = runtime
        return runtime

    def _release(self, runtime: BaseRuntime, failed: bool) -> None:
        """End of a call: stop the workers unless ``with pipeline:`` keeps them."""
        traced = any(spec.trace for lane in runtime.lanes for spec in lane)
        keep = self.__dict__.get("_keep_alive") and not runtime.broken and not traced
        if keep:
            return
        for key, value in list(self.__dict__.get("_runtimes", {}).items()):
            if value is runtime:
                del self._runtimes[key]
        if failed:
            # the error being raised already says what went wrong
            with contextlib.suppress(Exception):
                runtime.close(graceful=not runtime.broken)
        else:
            runtime.close(graceful=True)

    def _minibatches(
        self, X: Any, settings: dict[str, Any], padded: dict[int, int], params: MinibatchParams | None = None,
    ) -> Iterator[tuple[Any, ...]]:
        """``(minibatch, None)``, or ``(minibatch, None, transform params)`` when ``params``."""
        batch_size = settings.get("batch_size") or 32
        default = settings.get("default_value_data_inputs")
        offset = 0
        for index, batch in enumerate(_containers.iter_row_batches(X, batch_size)):
            n = _containers.num_rows(batch)
            if n < batch_size:
                if not settings.get("keep_incomplete_batch", True):
                    return
                if default is not None and not isinstance(default, StripAbsentValues):
                    batch = _containers.pad_rows(batch, batch_size - n, default)
                    padded[index] = n
            if params is None:
                yield batch, None
            else:  # metadata routed to transform: cut (and padded) with the rows
                yield batch, None, params.at(offset, n, batch_size - n if index in padded else 0)
            offset += n

    def _run(
        self,
        X: Any,
        start: int,
        stop: int,
        settings: dict[str, Any],
        monitor: CallMonitor,
        ordered: bool = True,
    ) -> Iterator[tuple[int, Any]]:
        """Run stages ``start:stop`` on ``X``; yield ``(index, joined minibatch output)``."""
        store = open_store(settings.get("memory"))
        descs = self._stage_descs()
        lanes = self._lanes(descs, start, stop)
        routed: RoutedParams | None = settings.get("_routed")
        params = routed.for_stages([d.name for lane in lanes for d in lane]) if routed is not None else None
        if store.enabled:  # stage by stage, through the cache (see caching.py)
            if params is not None:
                raise ValueError(
                    f"{type(self).__name__} cannot route metadata to transform ({sorted(params.per_step)}) "
                    "with memory= set: cached outputs are keyed by their input only."
                )
            yield from run_cached(self, store, X, start, stop, settings, monitor)
            return
        specs = self._specs(lanes, settings)
        runtime = self._runtime(specs, settings)
        tracer: tracing.Assembler | None = settings.get("_trace")
        if tracer is not None:
            tracer.next_run()
        padded: dict[int, int] = {}
        failed = True
        monitor.begin_run(specs)
        running = _RUNNING.setdefault(self, [])
        running.append(runtime)
        try:
            batches = self._minibatches(X, settings, padded, params)
            for index, outputs in runtime.run(batches, ordered=ordered, observer=monitor.collector, tracer=tracer):
                out = self._join_lanes(outputs, lanes[0] if len(lanes) == 1 else [lane[0] for lane in lanes])
                if index in padded:
                    out = _containers.slice_rows(out, 0, padded.pop(index))
                yield index, out
            failed = False
        finally:
            running.remove(runtime)
            monitor.end_run(specs, ok=not failed)
            self._release(runtime, failed)

    def _transform_range(
        self, X: Any, start: int, stop: int, settings: dict[str, Any], monitor: CallMonitor
    ) -> Any:
        if _containers.is_sequence(X) and _containers.num_rows(X) == 0:
            return _containers.empty_rows(X)
        if self._passthrough_only(start, stop) and _containers.is_sequence(X) and (
            settings.get("keep_incomplete_batch", True) and settings.get("data_joiner") is None
        ):
            return X  # "passthrough" stages only (before a fitting barrier, say): nothing to run
        outputs = self._run(X, start, stop, settings, monitor)
        joiner = settings.get("data_joiner")
        if joiner is not None:
            parts = [out for _, out in outputs]
            return joiner.transform(parts) if hasattr(joiner, "transform") else joiner(parts)
        # Join as the minibatches arrive, while the workers go on.
        total = _containers.num_rows(X) if _containers.is_sequence(X) else None
        accumulator = _containers.RowAccumulator(total)
        n_parts = 0
        for _, out in outputs:
            accumulator.add(out)
            n_parts += 1
        if not n_parts:
            return _containers.empty_rows(X)
        return accumulator.result()

    # -- public API ----------------------------------------------------------------

    def fit(self, X: Any, y: Any = None, **fit_params: Any) -> _QueuedBase:
        """Fit every fittable step on the output of the stages before it.

        ``fit_params`` are routed to the steps (see ``docs/fitting.md``): with
        ``sklearn.set_config(enable_metadata_routing=True)``, to the steps that
        request them; otherwise as scikit-learn's ``Pipeline`` (``step__param``)
        or ``FeatureUnion`` (every branch) take them.
        """
        settings = self._check_params()
        X = self._fit_input(X, settings, trace=False)
        check_lengths(X, y, type(self).__name__)
        settings["_routed"] = route_params(self, "fit", fit_params, X, y)
        with self._monitor(settings, X) as monitor:
            self._fit(X, y, settings, monitor, transform=False)
        return self

    def fit_transform(self, X: Any, y: Any = None, *, trace: int | None = None, **fit_params: Any) -> Any:
        """Fit, then return the outputs of the whole pipeline for ``X``.

        With ``trace=N``, fit and run on the first ``N`` items only (the steps
        are fitted on them, as ``fit_transform(X[:N], y[:N])`` would) and
        return a :class:`~neuraxle_stream.TraceResult` of the workers' calls.
        """
        settings = self._check_params()
        X = self._fit_input(X, settings, trace=trace is not None)
        check_lengths(X, y, type(self).__name__)
        settings["_routed"] = route_params(self, "fit_transform", fit_params, X, y)
        if trace is not None:
            return self._traced("fit_transform", trace, settings, X, y, self._fit)
        with self._monitor(settings, X) as monitor:
            return self._fit(X, y, settings, monitor, transform=True)

    def transform(self, X: Any, *, trace: int | None = None, **params: Any) -> Any:  # type: ignore[override]
        """Run ``X`` through every stage and return the joined outputs, in input order.

        With ``trace=N``, run only the first ``N`` items and return a
        :class:`~neuraxle_stream.TraceResult` of what each step did to them.
        ``params`` (only with ``enable_metadata_routing=True``) go to the
        ``transform`` of the steps that request them, cut per minibatch.
        """
        settings = self._check_params()
        X = _containers.as_rows(X)
        if params:
            settings["_routed"] = route_params(self, "transform", params, X, None)
        n = len(self._stage_descs())
        if trace is not None:
            return self._traced(
                "transform", trace, settings, X, None,
                lambda X, y, s, m, transform: self._transform_range(X, 0, n, s, m),
            )
        with self._monitor(settings, X) as monitor:
            return self._transform_range(X, 0, n, settings, monitor)

    @overload
    def stream(self, iterable: Iterable[Any], *, trace: None = None) -> Iterator[Any]: ...
    @overload
    def stream(self, iterable: Iterable[Any], *, trace: int) -> tracing.TraceResult: ...
    def stream(self, iterable: Iterable[Any], *, trace: int | None = None) -> Iterator[Any] | tracing.TraceResult:
        """Yield the outputs for the items of ``iterable``, one item at a time.

        The source is read lazily, so it may be endless; at most the queue
        bounds are in flight. Items come in input order, or as completed with
        ``output_order="completion"``. Closing the generator stops the workers.

        With ``trace=N``, read only the first ``N`` items of the source, run
        them at once and return a :class:`~neuraxle_stream.TraceResult` (not
        a generator), as ``transform(X, trace=N)`` does; their outputs are the
        ``retval`` of the last stage's calls.
        """
        if trace is None:
            return self._stream(iterable)
        settings = self._check_params()
        ordered = settings.get("output_order", "input") == "input"
        n = len(self._stage_descs())

        def run(X: Any, y: Any, s: dict[str, Any], m: CallMonitor, transform: bool) -> None:
            for _ in self._run(X, 0, n, s, m, ordered=ordered):
                pass

        return self._traced("stream", trace, settings, iterable, None, run)

    def _traced(
        self, method: str, n_items: Any, settings: dict[str, Any], X: Any, y: Any,
        call: Any,
    ) -> tracing.TraceResult:
        """Run ``call`` on the first ``n_items`` of ``X`` with tracing on; the :class:`TraceResult`.

        The run bypasses caching and never uses (nor keeps) the runtime of
        ``with pipeline:``. If it fails, the exception carries the partial trace.
        """
        if isinstance(n_items, bool) or not isinstance(n_items, int) or n_items < 1:
            raise InvalidParameterError(
                f"The 'trace' parameter of {type(self).__name__}.{method} must be an int in "
                f"[1, inf) or None. Got {n_items!r} instead."
            )
        if _containers.is_sequence(X):
            X = _containers.slice_rows(X, 0, min(n_items, _containers.num_rows(X)))
        else:
            X = list(itertools.islice(X, n_items))
        if y is not None and _containers.is_sequence(y):
            y = _containers.slice_rows(y, 0, min(n_items, _containers.num_rows(y)))
        assembler = tracing.Assembler([d.name for d in self._stage_descs()], _containers.num_rows(X))
        settings = {**settings, "_trace": assembler}
        routed: RoutedParams | None = settings.get("_routed")
        if routed is not None:  # the params of the traced rows only
            settings["_routed"] = routed.head(_containers.num_rows(X))
        if "memory" in settings:
            settings["memory"] = None  # a trace shows the steps at work, never cached outputs
        try:
            with self._monitor(settings, X) as monitor:
                call(X, y, settings, monitor, True)
        except BaseException as exc:
            tracing.attach(exc, assembler.result(failed=True))
            raise
        return assembler.result()

    def _stream(self, iterable: Iterable[Any]) -> Iterator[Any]:
        settings = self._check_params()
        ordered = settings.get("output_order", "input") == "input"
        n = len(self._stage_descs())
        with self._monitor(settings, iterable) as monitor:
            for _, out in self._run(iterable, 0, n, settings, monitor, ordered=ordered):
                yield from iter_items(out)

    def _fit(self, X: Any, y: Any, settings: dict[str, Any], monitor: CallMonitor, transform: bool) -> Any:
        raise NotImplementedError

    def _fit_input(self, X: Any, settings: dict[str, Any], trace: bool) -> Any:
        """``X`` as ``fit`` reads it: a callable source is called, except by a partial fit."""
        X = _containers.as_rows(X)
        return X if settings.get("fit_mode") == "partial" and not trace else resolve_source(X)

    def get_metadata_routing(self) -> MetadataRouter:
        """Metadata routing of this composite (scikit-learn's metadata routing API).

        Each step is a consumer: its ``fit`` (``partial_fit`` when
        ``fit_mode="partial"``) and ``transform`` get what it requested when
        the composite's ``fit`` or ``fit_transform`` gets it; its
        ``transform`` when the composite's ``transform`` does.

        Returns
        -------
        routing : sklearn.utils.metadata_routing.MetadataRouter
        """
        return metadata_router(self)

    def _fit_step(
        self, desc: StageDesc, X: Any, y: Any, monitor: CallMonitor, params: dict[str, Any] | None = None
    ) -> None:
        t0 = time.perf_counter()
        try:
            fit_cached(self, open_store(getattr(self, "memory", None)), desc, X, y, monitor, params)
        except Exception as exc:  # fitted in the parent: say which step could not take its input
            exc.add_note(f"Raised fitting step {desc.name!r} (in the parent, on the whole input of the step).")
            raise
        monitor.fitted(desc.name, time.perf_counter() - t0)

    # -- stats -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _monitor(self, settings: dict[str, Any], X: Any) -> Iterator[CallMonitor]:
        """The monitor of one call; at its end, its stats become ``stats_``."""
        descs = self._stage_descs()
        monitor = CallMonitor(
            type(self).__name__,
            [(d.name, d.n_workers) for d in descs],
            hooks=settings.get("hooks") or (),
            progress=bool(settings.get("progress")),
            verbose=bool(settings.get("verbose")),
            total_items=_expected_items(X, settings),
        )
        try:
            with contextlib.ExitStack() as around:
                # entered before the hooks are shipped to the workers, left after their reports
                for hook in settings.get("hooks") or ():
                    around.enter_context(hook.run_hook(type(self).__name__))
                with monitor:
                    yield monitor
        finally:
            _LAST_STATS[self] = monitor.stats or monitor.collector.snapshot()

    @property
    def stats_(self) -> PipelineStats:
        """The stats of the last call (``fit``, ``transform``, ``fit_transform``, ``stream``).

        A :class:`~neuraxle_stream.PipelineStats`: ``stats_[name]`` is the
        :class:`~neuraxle_stream.StageStats` of step ``name``,
        ``stats_.queues[name]`` the :class:`~neuraxle_stream.QueueStats` of
        its input queue; ``print(stats_)`` shows the table and the
        bottleneck. Set after failed calls too (failures counted).
        """
        try:
            return _LAST_STATS[self]
        except KeyError:
            raise AttributeError(
                f"This {type(self).__name__} has no stats_ yet: they are set by each call "
                "(fit, transform, fit_transform, stream)."
            ) from None

    # -- cache ------------------------------------------------------------------------

    def cache_info(self) -> CacheInfo:
        """Per step of the last call: its cache key, bytes on disk, hits and misses.

        ``str()`` of the result is a table; ``info[name]`` gives a step's
        numbers (``key``, ``hits``, ``misses``, ``bytes_written``, ``fit``).
        A hit is a minibatch whose output of that step was not computed.
        """
        location = memory_location(getattr(self, "memory", None))
        info = last_info(self) or CacheInfo(location)
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
        self._keep_alive = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def stop(self) -> bool:
        """Stop the call running on this pipeline, from any other thread.

        The running ``transform``, ``fit_transform`` or ``stream`` raises
        :class:`~neuraxle_stream.PipelineStoppedError` at once; workers kept by
        ``with pipeline:`` stay up. Returns ``False`` when no call is running.
        """
        running = list(_RUNNING.get(self, ()))
        for runtime in running:
            runtime.stop()
        return bool(running)

    def close(self) -> None:
        """Stop the workers kept by ``with pipeline:``; safe to call twice."""
        self.__dict__.pop("_keep_alive", None)
        runtimes = self.__dict__.pop("_runtimes", {})
        errors = []
        for runtime in runtimes.values():
            try:
                runtime.close(graceful=not runtime.broken)
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def __getstate__(self) -> dict[str, Any]:
        # A copy: object.__getstate__ returns the live __dict__ itself, and
        # popping from it would orphan the workers kept by ``with pipeline:``.
        state = dict(super().__getstate__())
        state.pop("_runtimes", None)
        state.pop("_keep_alive", None)
        return state

    # -- scikit-learn ---------------------------------------------------------------

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters, with each step's as ``name__param`` when ``deep``."""
        params: dict[str, Any] = super().get_params(deep=False)
        if not deep:
            return params
        try:
            descs = self._stage_descs()
        except InvalidParameterError:
            return params
        for d in descs:
            params[d.name] = d.owner
            if hasattr(d.owner, "get_params"):
                for key, value in d.owner.get_params(deep=True).items():
                    params[f"{d.name}__{key}"] = value
        return params

    def set_params(self, **params: Any) -> _QueuedBase:
        """Set parameters; ``name=step`` replaces a step, ``name__param`` sets its param."""
        if not params:
            return self
        own = set(self.get_params(deep=False))
        for key in [k for k in params if k in own]:
            setattr(self, key, params.pop(key))
        names = {d.name: d for d in self._stage_descs()} if params else {}
        for key in [k for k in params if k in names]:
            self._replace_step(key, params.pop(key))
            names = {d.name: d for d in self._stage_descs()}
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, sep, sub = key.partition("__")
            if not sep or name not in names:
                raise InvalidParameterError(
                    f"Invalid parameter {key!r} for {type(self).__name__}. Valid parameters are: "
                    f"{sorted(own | set(names))!r}."
                )
            nested.setdefault(name, {})[sub] = value
        for name, sub_params in nested.items():
            names[name].owner.set_params(**sub_params)
        return self

    def _replace_step(self, name: str, new: Any) -> None:
        steps = list(self.steps)
        for i, d in enumerate(self._stage_descs()):
            if d.name == name:
                entry = steps[i]
                steps[i] = (*entry[:-1], new) if isinstance(entry, tuple) else (name, new)
        self.steps = steps

    def __sklearn_is_fitted__(self) -> bool:
        for d in self._stage_descs():
            if is_fittable(d.step):
                try:
                    check_is_fitted(d.step)
                except NotFittedError:
                    return False
        return True

    def _steps_name_features(self) -> bool:
        return _sklearn_output.pipeline_names_available(self)

    @available_if(_steps_name_features)
    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Output feature names, as ``sklearn.pipeline.Pipeline`` gives them.

        ``input_features`` go through each step's ``get_feature_names_out`` in
        turn (``"passthrough"`` steps are skipped). Available when every other
        step has ``get_feature_names_out``.
        """
        names: np.ndarray = _sklearn_output.pipeline_feature_names(self, input_features)
        return names

    def set_output(self, *, transform: str | None = None) -> _QueuedBase:
        """Set the output container of ``transform`` and ``fit_transform``, and of every step.

        As ``sklearn.pipeline.Pipeline.set_output``, each step's output is set,
        so the workers' copies give DataFrames; the composite's output is then a
        DataFrame whose columns are ``get_feature_names_out()`` and whose index
        is the input's (a ``RangeIndex`` for other inputs).

        Parameters
        ----------
        transform : {"default", "pandas"} or None, default=None
            ``"pandas"``: DataFrame output; ``"default"``: the steps' own
            output; ``None``: unchanged.

        Returns
        -------
        self
        """
        return _sklearn_output.set_output(self, transform)

    def _sk_visual_block_(self) -> Any:
        # the notebook diagram: the stages in series, each with its workers
        return _sklearn_output.visual_block(self, "serial")

    def _input_steps(self) -> list[Any]:
        """The steps that take the composite's input as it is: the first one past ``"passthrough"``."""
        try:
            return [d.step for d in self._stage_descs() if d.kind == "step"][:1]
        except InvalidParameterError:
            return []

    @property
    def n_features_in_(self) -> int:
        """Number of features seen during ``fit``.

        The first step's (a union: the first branch's that has it), as
        scikit-learn's ``Pipeline`` and ``FeatureUnion`` give it; else that of
        the input of the last ``fit`` (a first step ``"passthrough"`` or a
        function). ``AttributeError`` when neither is known.
        """
        n: int = _sklearn_output.input_attribute(self, "n_features_in_", self._input_steps())
        return n

    @property
    def feature_names_in_(self) -> np.ndarray:
        """Names of the features seen during ``fit`` (a DataFrame's columns), as ``n_features_in_``."""
        names: np.ndarray = _sklearn_output.input_attribute(self, "feature_names_in_", self._input_steps())
        return names

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        try:
            descs = self._stage_descs()
            tags.requires_fit = any(is_fittable(d.step) for d in descs)
            first = descs[0].step
            if hasattr(first, "__sklearn_tags__"):
                tags.input_tags = first.__sklearn_tags__().input_tags
            # NaN and sparse input must suit every validating step (as sklearn's
            # Pipeline does for ``sparse``): a later step may reject what the first takes.
            steps_tags = [
                t for t in (d.runnable.__sklearn_tags__() for d in descs
                            if hasattr(d.runnable, "__sklearn_tags__"))
                if not t.no_validation
            ]
            if steps_tags:
                tags.input_tags.allow_nan = all(t.input_tags.allow_nan for t in steps_tags)
                tags.input_tags.sparse = all(t.input_tags.sparse for t in steps_tags)
        except (InvalidParameterError, IndexError):
            pass
        return tags


_sklearn_output.wrap_methods(_QueuedBase)

_SEQUENTIAL_CONSTRAINTS = {"steps": [list, tuple], **COMMON_CONSTRAINTS}


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

    def _stage_descs(self) -> list[StageDesc]:
        return parse_steps(
            self.steps, type(self).__name__, self.n_workers_per_step, self.max_queued_minibatches,
            special=PIPELINE_SPECIAL_STEPS,
        )



class SequentialQueuedPipeline(_StepsComposite):
    """Run steps in sequence, each stage with its own workers, linked by bounded queues.

    The data are cut into minibatches of ``batch_size``; each stage runs its step
    in ``n_workers`` workers that each hold their own copy of the step; a joiner
    restores input order. ``fit_transform(X, y)`` gives what
    ``sklearn.pipeline.make_pipeline(*steps).fit_transform(X, y)`` gives.

    Parameters
    ----------
    steps : list
        Steps in any of the forms ``step``, ``(name, step)``,
        ``(name, n_workers, step)``, ``(name, n_workers, max_queue_size, step)``,
        ``(name, n_workers, worker_arguments, max_queue_size, step)``.
    batch_size : int, default=32
        Rows per minibatch.
    n_workers_per_step : int, default=1
        Workers of a step whose form does not say.
    max_queued_minibatches : int or None, default=None
        Bound of each stage's input queue; ``None`` is twice the stage's workers.
    data_joiner : callable or step, default=None
        Joins the list of minibatch outputs; ``None`` concatenates them.
    use_processes : bool, default=True
        Neuraxle's spelling of ``backend``: processes (True) or threads.
    use_savers : bool, default=False
        Kept for Neuraxle compatibility; steps always travel through savers.
    keep_incomplete_batch : bool, default=True
        Keep the last short minibatch (``False`` drops it).
    default_value_data_inputs : Any, default=None
        When not ``None``, pads the last short minibatch with this value; the
        outputs of the padded rows are removed again.
        :class:`StripAbsentValues` keeps it short.
    default_value_expected_outputs : Any, default=None
        Kept for Neuraxle compatibility.
    backend : {"process", "thread"} or None, default=None
        Where workers run; wins over ``use_processes``.
    mp_context : str or multiprocessing context, default=None
        Start method for process workers (``forkserver`` on Linux by default).
    hooks : list of PipelineHook or None, default=None
        Hooks run in every worker, around its lifetime and each minibatch;
        their ``report`` runs in the parent at the end of each call.
    memory : str, pathlib.Path, joblib.Memory or None, default=None
        Cache directory: each step's output per minibatch and each fitted
        step are kept there and reused by later calls (see ``docs/caching.md``);
        ``pipeline.cache_info()`` reports hits and misses.
    output_order : {"input", "completion"}, default="input"
        Order of ``stream`` outputs.
    progress : bool, default=False
        Draw one progress bar per step (plain lines when stderr is not a terminal).
    verbose : bool, default=False
        Print a scikit-learn-style line per step fitted and per step run.
    timeout : float or None, default=None
        Seconds a worker may spend on one minibatch before a ``TimeoutError``.
    fit_mode : {"full", "partial"}, default="full"
        How ``fit`` fits each fittable step, in the parent, on the output of
        the stages before it: ``"full"``, its ``fit`` on the whole output (as
        scikit-learn's ``Pipeline``); ``"partial"``, its ``partial_fit``
        minibatch by minibatch in input order while the stages before it run
        in their workers (one pass over ``X`` per fittable step, so ``X`` may
        be a stream larger than memory: a sequence, a re-iterable, a callable
        returning a fresh iterable, or a generator when one pass is enough).
        In partial mode a fittable step without ``partial_fit`` raises
        ``InvalidParameterError``. See ``docs/fitting.md``, also for the
        metadata routing of ``fit(X, y, **params)``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.preprocessing import StandardScaler
    >>> p = SequentialQueuedPipeline([("scale", 2, StandardScaler())], batch_size=2,
    ...                              backend="thread")
    >>> p.fit_transform(np.array([[0.0], [2.0], [4.0]])).ravel()
    array([-1.22474487,  0.        ,  1.22474487])
    """

    def _fit(self, X: Any, y: Any, settings: dict[str, Any], monitor: CallMonitor, transform: bool) -> Any:
        _sklearn_output.record_input(self, X)  # n_features_in_ when the first step does not say
        if settings.get("fit_mode") == "partial":
            if _containers.is_sequence(X):  # a stateless first step records its input from the first minibatch
                n = min(settings.get("batch_size") or 32, _containers.num_rows(X))
                y_first = _containers.slice_rows(y, 0, n) if _containers.is_sequence(y) else None
                _sklearn_output.fit_stateless(self._stage_descs(), _containers.slice_rows(X, 0, n), y_first, union=False)
            return fit_partial(self, X, y, settings, monitor, transform)
        descs = self._stage_descs()
        fittable = [i for i, d in enumerate(descs) if is_fittable(d.step)]
        if fittable and not _containers.is_sequence(X):
            X = list(X)  # fitting needs the whole data: read the source once
        if _containers.is_sequence(X):
            # a stateless first step (FunctionTransformer...) is fitted on X, the only input of a
            # stateless step at hand in the parent, so that it knows its features in the workers
            _sklearn_output.fit_stateless(descs, X, y, union=False)
        routed: RoutedParams = settings.get("_routed") or RoutedParams()
        if routed.n_samples is None and _containers.is_sequence(X):
            routed.n_samples = len(X)
        data, start = X, 0
        for k in fittable:
            if k > start:
                data = self._transform_range(data, start, k, settings, monitor)
                y = _trim_targets(y, data)
            params = routed.fit_params(descs[k].name, 0, _containers.num_rows(data))
            self._fit_step(descs[k], data, y, monitor, params)
            start = k
        if not transform:
            return self
        return self._transform_range(data, start, len(descs), settings, monitor)


def _expected_items(X: Any, settings: dict[str, Any]) -> int | None:
    """Rows each step will receive from ``X``, when ``X`` has a length (for progress bars)."""
    try:
        n = _containers.num_rows(X) if _containers.is_sequence(X) else len(X)
    except TypeError:
        return None
    batch_size = settings.get("batch_size") or 32
    short = n % batch_size
    if short and not settings.get("keep_incomplete_batch", True):
        return n - short
    padding = settings.get("default_value_data_inputs")
    if short and padding is not None and not isinstance(padding, StripAbsentValues):
        return n - short + batch_size
    return n


def _trim_targets(y: Any, data: Any) -> Any:
    """Drop the targets of the rows that ``keep_incomplete_batch=False`` dropped."""
    if y is None or not _containers.is_sequence(y):
        return y
    try:
        n = _containers.num_rows(data)
    except TypeError:
        return y
    return _containers.slice_rows(y, 0, n) if n < _containers.num_rows(y) else y


_WRAPPER_CONSTRAINTS = {
    "wrapped": "no_validation",
    "n_workers": [COMMON_CONSTRAINTS["n_workers_per_step"][0]],
    **{k: COMMON_CONSTRAINTS[k] for k in (
        "max_queued_minibatches", "use_processes", "use_savers", "backend",
        "mp_context", "hooks", "timeout", "ray_options", "ray_address",
    )},
    "batch_size": [COMMON_CONSTRAINTS["batch_size"][0], None],
}


class ParallelWorkersWrapper(_QueuedBase):
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

    def _settings(self) -> dict[str, Any]:
        settings = super()._settings()
        options = settings.get("ray_options")
        if isinstance(options, dict) and options:
            # Its own actor options, unless given by step name as on the pipelines.
            name = self._stage_descs()[0].name
            if set(options) != {name}:
                settings["ray_options"] = {name: options}
        return settings

    # A meta-estimator's parameters, as scikit-learn spells them: ``wrapped`` and
    # ``wrapped__param`` (GridSearchCV grids, clone), not the step's generated name.
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Parameters, with the wrapped step's as ``wrapped__param`` when ``deep``."""
        return super(_QueuedBase, self).get_params(deep=deep)

    def set_params(self, **params: Any) -> ParallelWorkersWrapper:
        """Set parameters; ``wrapped__param`` sets a parameter of the wrapped step."""
        own = self.get_params(deep=False)
        for key in params:
            if key.partition("__")[0] not in own:
                raise InvalidParameterError(
                    f"Invalid parameter {key!r} for {type(self).__name__}. "
                    f"Valid parameters are: {sorted(own)!r}."
                )
        super(_QueuedBase, self).set_params(**params)
        return self

    def _fit(self, X: Any, y: Any, settings: dict[str, Any], monitor: CallMonitor, transform: bool) -> Any:
        desc = self._stage_descs()[0]
        if is_fittable(desc.step):
            if not _containers.is_sequence(X):
                X = list(X)
            routed: RoutedParams = settings.get("_routed") or RoutedParams()
            self._fit_step(desc, X, y, monitor, routed.fit_params(desc.name, 0, _containers.num_rows(X)))
        return self._transform_range(X, 0, 1, settings, monitor) if transform else self
