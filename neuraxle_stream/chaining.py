"""The chaining rule: which consecutive steps of a lane share one set of workers, and why.

Chained stages (``chain="auto"``, the default; ``chain=False`` runs every
step in its own workers, as written). Consecutive steps of a lane whose
tuple sets nothing for them alone (no ``worker_arguments``, no explicit
``max_queue_size``, no ``ray_options``, no CUDA ``device``) share one set of
workers, each running the steps one after another on its minibatch, in its
own memory: the data never cross a queue (nor a process boundary) between
them. A chain of steps with ``n_1 ... n_m`` workers gets
``k = n_1 + ... + n_m`` workers on Ray, and on processes
``k = min(n_1 + ... + n_m, max(cores, n_1, ..., n_m))``: no more processes
than the cores, unless a step asked for more itself. On threads, unless
measured waiting (below), a chain forms only where all its workers fit,
``n_1 + ... + n_m <= max(cores, n_1, ..., n_m)``, and gets them all: more
threads than cores, each running every step, thrash the cores and contend
for the interpreter on work that keeps a core busy (W1 on 2 cores: 2 + 2
threads chained into 4 ran slower than as written), while fewer could slow
down steps that wait (on I/O, the usual reason for threads). A fittable (stateful)
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
cores (on threads: chained, whatever the cores): it gets ``k = n_1 + ... + n_m``, the processes the steps would have
had unchained, and passes ``k / sum c_i >= min_i n_i / c_i`` minibatches per
second (the mediant), never fewer than unchained, without the hops. The
first call, with nothing measured, uses the rule above; on threads, a chain
is judged whole (its measured steps' CPU time together against their time in
the steps: a thread in a cheap step loses the cores to the threads that
compute), and one that waits gets all its threads whatever the cores; the decision is a
pure function of the parsed steps, the settings and the measured times, so
the same measurements give the same layout. Each group's reason is in
``stats_.plan.reasons``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._validation import StageDesc
from .steps import is_fittable

if TYPE_CHECKING:  # pragma: no cover
    from .stats import PipelineStats

__all__ = [
    "MIN_MEASURED_BUSY", "WAITING_CPU_SHARE", "ChainGroup", "StepCost", "chain_groups", "chain_layout", "chainable",
    "measured_costs",
]

#: A step whose CPU time in its calls was below this share of its time in them mostly waits (I/O-like).
WAITING_CPU_SHARE = 0.5
#: Seconds (all workers) a step must have been measured in before its measurement counts.
MIN_MEASURED_BUSY = 0.05

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


def _chain_workers(group: Sequence[StageDesc], cores: int | None, within: bool = False) -> int | None:
    """The workers of a chain of ``group`` (see the module docstring), ``None`` when it may not be chained.

    ``within``: no cap, but no chain either where all its workers would not
    fit ``max(cores, n_1, ..., n_m)`` (threads, before anything is measured).
    """
    total = sum(d.n_workers for d in group)
    room = total if cores is None else max(cores, *(d.n_workers for d in group))
    if within and total > room:
        return None
    k = min(total, room)
    if any(d.n_workers < k and is_fittable(d.runnable) for d in group):
        return None  # a fitted step would get more copies than its n_workers
    return k


def _threads_waiting(group: Sequence[StageDesc], costs: dict[str, StepCost]) -> tuple[list[str], bool]:
    """On threads: the step that makes ``group`` a chain that waits (or none), and whether it must fit the cores.

    A thread's CPU share in a cheap step is no sign that it waits: threads
    that compute elsewhere take the cores (and the interpreter) from it
    while it is in the step. So the chain is judged as a whole, on the
    CPU share of all its measured steps together. One that waits gets all
    its threads; any other forms only where all its threads fit the cores
    (``within``): fewer threads than written could slow down steps that
    wait, more than the cores slow down steps that compute.
    """
    measured = [g.name for g in group if g.name in costs and costs[g.name].busy_time >= MIN_MEASURED_BUSY]
    busy = sum(costs[name].busy_time for name in measured)
    if not measured or sum(costs[name].cpu_time for name in measured) >= WAITING_CPU_SHARE * busy:
        return [], True
    return [max(measured, key=lambda name: costs[name].busy_time)], False


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
    ``_chain_workers`` allows it; ``cores`` (processes and threads) defaults
    to the cores this process may use. ``costs`` (what earlier calls measured, by
    step name): a chain holding a step that mostly waits is not capped by
    the cores (see the module docstring).
    """
    costs = costs or {}
    # processes cost start-up and memory each, and busy cores gain nothing from more of them
    cap = (cores if cores is not None else _cores()) if backend in ("process", "thread") else None
    groups: list[ChainGroup] = []
    refused: str | None = None  # why the step could not join the chain before it
    for d in lane:
        why = _own_settings(d, ray_options)
        if chain is not False and groups and why is None:
            group = groups[-1].steps
            candidate = (*group, d)
            if all(chainable(g, ray_options) for g in group):
                waiting = [g.name for g in candidate if g.name in costs and costs[g.name].waits]
                if backend == "thread":
                    waiting, within = _threads_waiting(candidate, costs)
                else:
                    within = False
                k = _chain_workers(candidate, None if waiting else cap, within)
                if k is not None:
                    groups[-1] = ChainGroup(candidate, k, _chained_reason(candidate, k, cap, waiting, costs))
                    continue
                if within and _chain_workers(candidate, None) is not None:
                    total = sum(g.n_workers for g in candidate)
                    refused = f"{total} threads chained with {group[-1].name!r} would not fit the {cap} cores"
                else:
                    refused = (f"a fitted step would get more than its n_workers copies chained with "
                               f"{group[-1].name!r}")
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
