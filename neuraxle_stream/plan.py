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
workers (:func:`chain_groups`), what each stage's workers receive
(:meth:`Plan.specs`), on which backend (:meth:`Plan.new_runtime`).

Chained stages (``chain="auto"``, the default; ``chain=False`` runs every
step in its own workers, as written). Consecutive steps of a lane whose
tuple sets nothing for them alone (no ``worker_arguments``, no explicit
``max_queue_size``, no ``ray_options``, no CUDA ``device``) share one set of
workers, each running the steps one after another on its minibatch, in its
own memory: the data never cross a queue (nor a process boundary) between
them. A chain of steps with ``n_1 ... n_m`` workers gets
``k = n_1 + ... + n_m`` workers on threads and Ray, and on processes
``k = min(n_1 + ... + n_m, max(cores, n_1, ..., n_m))``: no more processes
than the cores, unless a step asked for more itself. A fittable (stateful)
step joins a chain only if ``k <= n_i`` of that step, so no fitted step ever
has more copies than its ``n_workers``. Why never slower: with per-step
times ``c_i``, the unchained stages pass at most
``min(min_i n_i / c_i, cores / sum c_i)`` minibatches per second (the second
bound for work that keeps a core busy); the chain passes ``k / sum c_i``,
which is at least that, since ``sum n_i >= t sum c_i`` for
``t = min_i n_i / c_i``; and it pays no hop between its steps. (Process steps
that mostly wait, on I/O say, are the exception the core cap can slow down, by
at most the share of the chain's other steps; see below.) So
the 2 + 2 process workers of W1 on 2 cores become one chain of 2 workers, and
the 1 + 1 workers of a balanced W2 one chain of 2, both cores busy.

What earlier calls measured refines the next call's layout
(:func:`chain_layout`, from the composite's last ``stats_``): a process step
that mostly *waits* (its workers' CPU time in the step below
:data:`WAITING_CPU_SHARE` of their time in it, over at least
:data:`MIN_MEASURED_BUSY` seconds: I/O, a remote service, sleep) does not
need a core while it waits, so a chain holding it is not capped by the
cores: it gets ``k = n_1 + ... + n_m``, the processes the steps would have
had unchained, and passes ``k / sum c_i >= min_i n_i / c_i`` minibatches per
second (the mediant), never fewer than unchained, without the hops. The
first call, with nothing measured, uses the rule above; the decision is a
pure function of the parsed steps, the settings and the measured times, so
the same measurements give the same layout. Each group's reason is in
``stats_.plan.reasons``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sklearn

from ._routing import RoutedParams, Style
from ._validation import StageDesc, WorkersStage, check_hooks
from .backends import Backend, ProcessBackend, ThreadBackend, step_modules, uses_cuda
from .caching import CacheStore, NullStore, memory_location, open_store
from .hooks import PipelineHook, dump_hooks
from .minibatches import Minibatching
from .retries import RetryPolicy
from .runtime import Runtime
from .runtime_base import BaseRuntime
from .savers import save_step
from .stages import StageSpec
from .steps import is_fittable, worker_form
from .tracing import Assembler

if TYPE_CHECKING:  # pragma: no cover
    from .stats import PipelineStats

__all__ = [
    "MIN_MEASURED_BUSY", "WAITING_CPU_SHARE", "BackendChoice", "ChainGroup", "Plan", "StepCost", "chain_groups",
    "chain_layout", "chainable", "first_output", "measured_costs", "runtime_key",
]

#: A step whose CPU time in its calls was below this share of its time in them mostly waits (I/O-like).
WAITING_CPU_SHARE = 0.5
#: Seconds (all workers) a step must have been measured in before its measurement counts.
MIN_MEASURED_BUSY = 0.05

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


def _cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _own_device(step: Any) -> bool:
    """Whether the step names a CUDA ``device`` of its own (attribute or parameter)."""
    values = [getattr(step, "device", None)]
    if hasattr(step, "get_params"):
        with contextlib.suppress(Exception):  # a step whose params cannot be read names no device
            values += [v for k, v in step.get_params(deep=True).items() if k == "device" or k.endswith("__device")]
    return any(str(v).startswith("cuda") for v in values if v is not None)


@dataclass(frozen=True)
class StepCost:
    """What earlier calls measured of one step: seconds its workers spent in it, and their CPU seconds in it."""

    busy_time: float
    cpu_time: float

    @property
    def waits(self) -> bool:
        """Whether the step mostly waited (CPU below :data:`WAITING_CPU_SHARE` of its busy time)."""
        return self.busy_time >= MIN_MEASURED_BUSY and self.cpu_time < WAITING_CPU_SHARE * self.busy_time

    def describe(self) -> str:
        """``"CPU 10% of its 2.0 s in the step"``, for the plan's reasons."""
        return f"CPU {self.cpu_time / self.busy_time:.0%} of its {self.busy_time:.2g} s in the step"


def measured_costs(stats: PipelineStats | None) -> dict[str, StepCost]:
    """The :class:`StepCost` of each step the stats of an earlier call measured (none: ``{}``)."""
    if stats is None:
        return {}
    return {name: StepCost(s.busy_time, s.cpu_time) for name, s in stats.stages.items() if s.num_tasks}


def _own_settings(desc: StageDesc, ray_options: dict[str, dict[str, Any]] | None) -> str | None:
    """What is set for this step alone (it then runs in its own workers), or ``None``."""
    if desc.kind != "step":
        return f"a {desc.kind!r} stage"
    if desc.worker_arguments:
        return "its own worker_arguments"
    if desc.own_queue:
        return "its own max_queue_size"
    if ray_options and desc.name in ray_options:
        return "its own ray_options"
    if _own_device(desc.runnable):
        return "its own CUDA device"
    return None


def chainable(desc: StageDesc, ray_options: dict[str, dict[str, Any]] | None = None) -> bool:
    """Whether a step may share workers with its neighbours: nothing is set for it alone.

    Never a step with ``worker_arguments``, an explicit ``max_queue_size`` in
    its tuple (or its wrapper), Ray options, or a CUDA device of its own.
    """
    return _own_settings(desc, ray_options) is None


def _chain_workers(group: Sequence[StageDesc], cores: int | None) -> int | None:
    """The workers of a chain of ``group`` (see the module docstring), ``None`` when it may not be chained."""
    total = sum(d.n_workers for d in group)
    k = total if cores is None else min(total, max(cores, *(d.n_workers for d in group)))
    if any(d.n_workers < k and is_fittable(d.runnable) for d in group):
        return None  # a fitted step would get more copies than its n_workers
    return k


@dataclass(frozen=True)
class ChainGroup:
    """Consecutive steps of a lane that share one set of workers, their number, and why so."""

    steps: tuple[StageDesc, ...]
    n_workers: int
    reason: str


def _chained_reason(group: Sequence[StageDesc], k: int, cap: int | None, waiting: list[str],
                    costs: dict[str, StepCost]) -> str:
    total = sum(d.n_workers for d in group)
    workers = f"{k} worker{'' if k == 1 else 's'}"
    if waiting and cap is not None:
        name = waiting[0]
        return (f"chained: {workers}, not capped by the {cap} cores: {name!r} mostly waits "
                f"({costs[name].describe()}, in earlier calls)")
    if cap is not None and k < total:
        return f"chained: {workers} (the {total} asked for, capped by the {cap} cores)"
    return f"chained: {workers}"


def chain_layout(
    lane: Sequence[StageDesc], chain: bool | str = "auto", backend: str = "process",
    ray_options: dict[str, dict[str, Any]] | None = None, cores: int | None = None,
    costs: dict[str, StepCost] | None = None,
) -> list[ChainGroup]:
    """The steps of ``lane`` grouped into the chains that share workers, with their worker counts and reasons.

    ``chain=False``: one group per step, with its own ``n_workers``. Else
    consecutive :func:`chainable` steps join a chain while
    ``_chain_workers`` allows it; ``cores`` (processes only) defaults to the
    cores this process may use. ``costs`` (what earlier calls measured, by
    step name): a chain holding a step that mostly waits is not capped by
    the cores (see the module docstring).
    """
    costs = costs or {}
    # processes cost start-up and memory each, and busy cores gain nothing from more of them
    cap = (cores if cores is not None else _cores()) if backend == "process" else None
    groups: list[ChainGroup] = []
    refused: str | None = None  # why the step could not join the chain before it
    for d in lane:
        why = _own_settings(d, ray_options)
        if chain is not False and groups and why is None:
            group = groups[-1].steps
            candidate = (*group, d)
            if all(chainable(g, ray_options) for g in group):
                waiting = [g.name for g in candidate if g.name in costs and costs[g.name].waits]
                k = _chain_workers(candidate, None if waiting else cap)
                if k is not None:
                    groups[-1] = ChainGroup(candidate, k, _chained_reason(candidate, k, cap, waiting, costs))
                    continue
                refused = f"a fitted step would get more than its n_workers copies chained with {group[-1].name!r}"
        if chain is False:
            reason = "as written (chain=False)"
        elif why is not None:
            reason = f"as written: {why}"
        elif refused is not None:
            reason = f"as written: {refused}"
        else:
            reason = "as written"
        refused = None
        groups.append(ChainGroup((d,), d.n_workers, reason))
    return groups


def chain_groups(
    lane: Sequence[StageDesc], chain: bool | str = "auto", backend: str = "process",
    ray_options: dict[str, dict[str, Any]] | None = None, cores: int | None = None,
    costs: dict[str, StepCost] | None = None,
) -> list[tuple[tuple[StageDesc, ...], int]]:
    """The groups of :func:`chain_layout`, as ``(steps, workers)`` pairs."""
    return [(g.steps, g.n_workers) for g in chain_layout(lane, chain, backend, ray_options, cores, costs)]


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
