"""The plan of one call: what a composite's description turns into, once per call.

A composite's ``fit``, ``transform``, ``fit_transform`` or ``stream`` checks
its parameters, parses its steps, routes the call's metadata, and builds one
frozen :class:`Plan` from them; everything below the estimators (the call
layer, the cached run, the partial fit, the lifecycle owner) reads the plan
and never the estimator::

    estimator params + call args ──▶ Plan ──▶ lanes(start, stop) ──▶ specs(lanes) ──▶ runtime
                                      │
                                      ├─ minibatching: batch_size, last-batch rule, padding
                                      ├─ backend: process | thread | ray, start method, timeout
                                      ├─ hooks, cache store (a NullStore when memory=None)
                                      ├─ retry policy: max_retries, retry_on, on_error, max_failures
                                      └─ routed params, trace, joins (lanes, minibatches)

This is the one place that turns a description into what runs: which stages
share a lane (:meth:`Plan.lanes`), which consecutive steps of a lane share
workers (:func:`~neuraxle_stream.chaining.chain_layout`), what each stage's workers receive
(:meth:`Plan.specs`), on which backend (:meth:`Plan.new_runtime`).

Chained stages (``chain="auto"``, the default): which consecutive steps
of a lane share workers is decided by :mod:`~neuraxle_stream.chaining`,
from the steps, the settings and what earlier calls measured (the
composite's last ``stats_``, passed to :meth:`Plan.specs`).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sklearn

from ._routing import RoutedParams, Style
from ._validation import StageDesc, WorkersStage, check_hooks
from .backends import Backend, ProcessBackend, ThreadBackend
from .caching import CacheStore, NullStore, memory_location, open_store
from .chaining import (
    MIN_MEASURED_BUSY,
    WAITING_CPU_SHARE,
    ChainGroup,
    StepCost,
    chain_groups,
    chain_layout,
    chainable,
    measured_costs,
)
from .hooks import PipelineHook, dump_hooks
from .minibatches import Minibatching
from .retries import RetryPolicy
from .runtime import Runtime
from .runtime_base import BaseRuntime
from .savers import save_step
from .stages import StageSpec
from .start_methods import resolve_context, start_server, step_modules, uses_cuda
from .steps import worker_form
from .tracing import Assembler

if TYPE_CHECKING:  # pragma: no cover
    from .stats import PipelineStats

__all__ = [
    "MIN_MEASURED_BUSY", "WAITING_CPU_SHARE", "BackendChoice", "ChainGroup", "Plan", "StepCost", "chain_groups",
    "chain_layout", "chainable", "first_output", "measured_costs", "runtime_key",
]

#: Composite parameters a plan takes through its ``stages`` (parsed steps) and ``join``.
_DESCRIBED_BY_STAGES = frozenset({
    "steps", "wrapped", "n_workers", "n_workers_per_step", "max_queued_minibatches",
    "transformer_weights", "verbose_feature_names_out",
})


def first_output(outputs: list[Any]) -> Any:
    """The join of a single lane: its output."""
    return outputs[0]


@dataclass(frozen=True)
class BackendChoice:
    """Where a call's workers run, and what a runtime needs to know to start them."""

    name: str  # "process", "thread" or "ray"
    mp_context: Any = None  # a start-method name or a multiprocessing context
    timeout: float | None = None
    ray_options: dict[str, dict[str, Any]] | None = None
    ray_address: str | None = None

    @classmethod
    def of(
        cls, backend: str | None, use_processes: bool, mp_context: Any = None, timeout: float | None = None,
        ray_options: dict[str, dict[str, Any]] | None = None, ray_address: str | None = None,
    ) -> BackendChoice:
        """The choice of a composite's parameters: ``backend`` wins over ``use_processes``."""
        name = backend if backend is not None else ("process" if use_processes else "thread")
        if name == "process" and multiprocessing.current_process().daemon:
            name = "thread"  # nested inside a worker process: daemons cannot have children
        return cls(name, mp_context, timeout, ray_options, ray_address)


def runtime_key(choice: BackendChoice, specs: list[list[StageSpec]]) -> tuple[str, str, str]:
    """What a kept runtime is found by: backend, start method and the stage specs."""
    return (choice.name, str(choice.mp_context), repr(specs))


@dataclass(frozen=True)
class Plan:
    """One call of a queued composite, fully decided.

    ``stages`` are the parsed steps (in ``steps`` order); ``style`` says how
    they form lanes (``"pipeline"`` and ``"wrapper"``: one lane; ``"union"``:
    one lane per branch) and how fit params are taken. ``join`` joins the lane
    outputs of one minibatch; ``data_joiner`` (or row concatenation) the
    minibatch outputs of a call.
    """

    caller: str
    style: Style
    stages: tuple[StageDesc, ...]
    minibatching: Minibatching
    backend: BackendChoice
    hooks: tuple[PipelineHook, ...] = ()
    store: CacheStore = dataclasses.field(default_factory=NullStore)
    fit_store: CacheStore = dataclasses.field(default_factory=NullStore)
    memory: str | None = None
    routed: RoutedParams = dataclasses.field(default_factory=RoutedParams)
    trace: Assembler | None = None
    join: Callable[[list[Any]], Any] = first_output
    data_joiner: Any = None  # a callable or a step with ``transform``, joining the minibatch outputs
    ordered: bool = True
    progress: bool = False
    verbose: bool = False
    fit_mode: str = "full"
    use_savers: bool = False
    #: the fit params a pipeline's steps get transformed by the steps before them (``Pipeline``'s)
    transform_input: tuple[str, ...] | None = None
    retry: RetryPolicy = dataclasses.field(default_factory=RetryPolicy)
    chain: bool | str = "auto"

    @classmethod
    def of(
        cls, caller: str, style: Style, stages: Sequence[StageDesc], *,
        join: Callable[[list[Any]], Any] = first_output,
        routed: RoutedParams | None = None,
        batch_size: int | None = None,
        keep_incomplete_batch: bool = True,
        default_value_data_inputs: Any = None,
        default_value_expected_outputs: Any = None,
        backend: str | None = None,
        use_processes: bool = True,
        mp_context: Any = None,
        timeout: float | None = None,
        ray_options: dict[str, dict[str, Any]] | None = None,
        ray_address: str | None = None,
        hooks: Sequence[PipelineHook] | None = None,
        memory: Any = None,
        data_joiner: Any = None,
        output_order: str = "input",
        progress: bool = False,
        verbose: bool = False,
        fit_mode: str = "full",
        use_savers: bool = False,
        transform_input: Sequence[str] | None = None,
        max_retries: int = 0,
        retry_on: tuple[type[BaseException], ...] = (),
        on_error: str = "raise",
        max_failures: float | None = None,
        chain: bool | str = "auto",
        **described: Any,
    ) -> Plan:
        """The plan of a composite's (checked) parameters; ``batch_size`` is read here, once.

        The parameters that the parsed ``stages`` or the ``join`` already hold
        (``steps``, ``n_workers_per_step``...) may be passed along; any other
        name is refused.
        """
        unknown = sorted(set(described) - _DESCRIBED_BY_STAGES)
        if unknown:
            raise TypeError(f"Plan.of() got parameters it does not know: {unknown}.")
        store = open_store(memory)
        return cls(
            caller=caller,
            style=style,
            stages=tuple(stages),
            minibatching=Minibatching.of(
                batch_size, keep_incomplete_batch, default_value_data_inputs, default_value_expected_outputs
            ),
            backend=BackendChoice.of(backend, use_processes, mp_context, timeout, ray_options, ray_address),
            hooks=tuple(hooks or ()),
            store=store,
            fit_store=store,
            memory=memory_location(memory),
            routed=routed if routed is not None else RoutedParams(),
            join=join,
            data_joiner=data_joiner,
            ordered=output_order == "input",
            progress=bool(progress),
            verbose=bool(verbose),
            fit_mode=fit_mode,
            use_savers=bool(use_savers),
            transform_input=None if transform_input is None else tuple(transform_input),
            retry=RetryPolicy(
                int(max_retries), tuple(retry_on), on_error,
                max_failures if max_failures is None or isinstance(max_failures, float)
                else (int(max_failures) if isinstance(max_failures, numbers.Integral) else float(max_failures)),
            ),
            chain=chain,
        )

    # -- derived plans -------------------------------------------------------------------

    def with_routed(self, routed: RoutedParams) -> Plan:
        """This plan with other routed params (their ``n_samples`` known once ``X`` is read)."""
        return dataclasses.replace(self, routed=routed)

    def raising(self) -> Plan:
        """This plan with ``on_error="raise"`` (retries kept): for ``fit``, which needs every output."""
        return dataclasses.replace(self, retry=dataclasses.replace(self.retry, on_error="raise"))

    def traced(self, assembler: Assembler, n_rows: int) -> Plan:
        """The plan of a traced run of the first ``n_rows`` rows.

        The params of those rows only; no cached outputs (a trace shows the
        steps at work), though fitted steps are still looked up in the cache.
        """
        return dataclasses.replace(self, trace=assembler, routed=self.routed.head(n_rows), store=NullStore())

    # -- stages and lanes -------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        """The step names, in ``steps`` order."""
        return [d.name for d in self.stages]

    def lanes(self, start: int, stop: int) -> list[list[StageDesc]]:
        """The lanes that run stages ``start:stop``: one chain, or one lane per union branch."""
        if self.style == "union":
            return [[d] for d in self.stages if d.kind != "drop"]
        stages = list(self.stages[start:stop])
        # "passthrough" stages run in no worker, unless nothing else is left to run
        return [[d for d in stages if d.kind != "passthrough"] or stages]

    @staticmethod
    def join_descs(lanes: list[list[StageDesc]]) -> list[StageDesc]:
        """The stages whose outputs :attr:`join` joins: a single lane's, or each lane's first."""
        return lanes[0] if len(lanes) == 1 else [lane[0] for lane in lanes]

    def passthrough_only(self, start: int, stop: int) -> bool:
        """Whether stages ``start:stop`` are all ``"passthrough"``: their output is their input.

        Never for a union: a ``"passthrough"`` branch is joined (and weighted) with the others.
        """
        if self.style == "union":
            return False
        stages = self.stages[start:stop]
        return bool(stages) and all(d.kind == "passthrough" for d in stages)

    # -- what runs ----------------------------------------------------------------------------

    def specs(self, lanes: list[list[StageDesc]], measured: PipelineStats | None = None) -> list[list[StageSpec]]:
        """The picklable description of each stage of ``lanes``, its step saved to bytes now.

        Consecutive steps that :func:`chain_layout` chains (refined by the
        stats of an earlier call, ``measured``) become one stage: the spec of
        the chain's first step, the others in its ``chained``; each stage's
        ``layout`` says why.
        """
        costs = measured_costs(measured)
        specs = []
        saved_hooks = dump_hooks(self.hooks)
        sklearn_config = sklearn.get_config()  # the caller's (thread-local): the workers run under it
        positions = {d.name: i for i, d in enumerate(self.stages)}
        backend = self.backend
        for lane_index, lane in enumerate(lanes):
            lane_specs = []
            groups = chain_layout(lane, self.chain, backend.name, backend.ray_options, costs=costs)
            for i, chained in enumerate(groups):
                group, n_workers = chained.steps, chained.n_workers
                steps = []
                for d in group:
                    stage_hooks = saved_hooks
                    own_hooks = getattr(d.owner, "hooks", None) if isinstance(d.owner, WorkersStage) else None
                    if own_hooks:
                        # a wrapper in the steps: its own hooks run in its stage, after the pipeline's
                        check_hooks(own_hooks, type(d.owner).__name__)
                        stage_hooks = dump_hooks(self.hooks + tuple(own_hooks))
                    step = d.runnable
                    head = group[0]
                    queue = head.max_queue_size if head.max_queue_size is not None else 2 * n_workers
                    steps.append(
                        StageSpec(
                            name=d.name,
                            lane=lane_index,
                            index=i,
                            n_workers=n_workers,
                            max_queue_size=queue,
                            payload=save_step(worker_form(step), d.name, self.use_savers),
                            worker_arguments=d.worker_arguments,
                            may_change_length=bool(getattr(step, "may_change_length", False)),
                            hooks=stage_hooks,
                            step_index=positions.get(d.name),
                            trace=self.trace is not None,
                            sklearn_config=sklearn_config,
                        )
                    )
                lane_specs.append(dataclasses.replace(steps[0], chained=tuple(steps[1:]), layout=chained.reason))
            specs.append(lane_specs)
        return specs

    def make_backend(self, specs: list[list[StageSpec]]) -> Backend:
        """The thread or process backend of these specs (process: start method, CUDA, size)."""
        if self.backend.name == "thread":
            return ThreadBackend()
        total = sum(s.n_workers for lane in specs for s in lane)
        cuda = uses_cuda(
            (d.runnable for d in self.stages),
            (pairs for lane in specs for s in lane for pairs in s.worker_arguments),
        )
        preload = step_modules(d.runnable for d in self.stages)
        return ProcessBackend(self.backend.mp_context, total_workers=total, uses_cuda=cuda, preload=preload)

    def start_server(self) -> None:
        """Start the fork server this plan's process workers will come from, without waiting for it.

        For a fit whose first work is a step fitted in the parent: the
        server's imports (scikit-learn, ~0.8 s in a fresh interpreter) then
        run while that step is fitted, rather than after it. The server is
        the one the first run would start (same start method and imports:
        :meth:`make_backend`); no worker starts, and nothing happens on
        threads, Ray, ``spawn`` or ``fork``.
        """
        if self.backend.name != "process":
            return
        cuda = uses_cuda((d.runnable for d in self.stages), (pairs for d in self.stages for pairs in d.worker_arguments))
        start_server(resolve_context(self.backend.mp_context, cuda, step_modules(d.runnable for d in self.stages)))

    def ray_workers(self) -> dict[str, int]:
        """The workers of each stage (by name, chains as one) of a run of every step: what Ray's CPUs are shared among.

        The same for every run of a call, so that an actor keeps its size
        from run to run, and the runs of a ``fit_transform`` reuse it.
        """
        backend = self.backend
        return {
            group[0].name: n_workers
            for lane in self.lanes(0, len(self.stages))
            for group, n_workers in chain_groups(lane, self.chain, backend.name, backend.ray_options)
        }

    def new_runtime(self, specs: list[list[StageSpec]], actor_pool: Any = None) -> BaseRuntime:
        """A new (not yet started) runtime for these specs.

        ``actor_pool`` (Ray only): the composite's
        :class:`~neuraxle_stream.ray_calls.ActorPool`, where the runtime takes
        idle actors from and gives them back to.
        """
        choice = self.backend
        if choice.name == "ray":
            from .ray_backend import RayRuntime  # Ray is optional: imported only when asked for

            return RayRuntime(specs, timeout=choice.timeout, ray_options=choice.ray_options,
                              address=choice.ray_address, actor_pool=actor_pool, share_among=self.ray_workers())
        return Runtime(specs, self.make_backend(specs), timeout=choice.timeout)
