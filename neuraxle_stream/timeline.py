"""The timeline of a call: what each worker did when, and how full each queue was.

``pipeline.stats_.to_chrome_trace(path)`` writes it as Chrome trace-event
JSON (Perfetto, ``chrome://tracing``); ``pipeline.stats_.plot_timeline()``
draws it with matplotlib. Both read what the parent's ``StatsCollector``
(in ``neuraxle_stream.stats``) kept in a :class:`TimelineRecorder` during
the call::

    worker (thread, process or Ray actor)        parent
    ─────────────────────────────────────        ──────────────────────────
    TaskRecord(minibatch, began, duration) ──▶   StatsCollector.add
      riding on the task (or its failure)          └─ TimelineRecorder.add:
                                                      a TaskSpan, deque(maxlen)
    feeder's put on a stage's first queue  ──▶   add_feed_wait ─▶ .fed
    a step fitted in the parent            ──▶   add_fit       ─▶ .fitted

The clock
---------
Workers and parent both read ``time.perf_counter()``. On Linux it is
``CLOCK_MONOTONIC``, one clock for every process of the machine (macOS's
``mach_absolute_time`` and Windows's ``QueryPerformanceCounter`` are
system-wide too): a worker process's timestamps need no offset and no extra
message to land on the parent's axis. Ray actors on the parent's machine
share it; actors on other nodes of a cluster do not, and their tasks appear
shifted by the difference between the nodes' clocks.

What is kept
------------
One :class:`TaskSpan` per task (a step on a minibatch), the most recent
:data:`TIMELINE_LIMIT` of the call: an endless stream keeps a bounded
record. Queue occupancy is not sampled (no message, no ``qsize()`` call per
task): it is derived from the spans. A minibatch is in the queue before
step *k* from the end of its task at the step before (for the first queue:
the feeder's put) until its task at step *k* begins, clipped to the queue's
bound (a writer blocked on a full queue holds its minibatch outside it, and
the queue is full meanwhile). It counts the few microseconds between the
reader's ``get`` and the step's start as queued.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from .messages import TaskRecord

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from .stages import StageSpec

__all__ = [
    "TIMELINE_LIMIT",
    "FeedMark",
    "FitSpan",
    "QueueInfo",
    "TaskSpan",
    "TimelineInfo",
    "TimelineRecorder",
    "chrome_trace",
    "plot_timeline",
    "queue_occupancy",
    "write_chrome_trace",
]

#: Tasks kept on the timeline of one call: the most recent ones.
TIMELINE_LIMIT = 20_000


class TaskSpan(NamedTuple):
    """One task (a step on a minibatch) on the timeline: seconds since the call started."""

    stage: str
    worker: int
    start: float
    duration: float
    failed: bool
    minibatch: int = -1
    n_items: int = 0
    lane: int = 0
    run: int = 0
    #: 1 for a minibatch's first run, 2 for its first retry... (``max_retries``, DESIGN.md section 9).
    attempt: int = 1

    @property
    def end(self) -> float:
        """``start + duration``."""
        return self.start + self.duration


class FitSpan(NamedTuple):
    """A step fitted in the parent (``fit`` or ``fit_transform``): seconds since the call started."""

    step: str
    start: float
    duration: float


class QueueInfo(NamedTuple):
    """The bounded queue read by step ``name`` (its input queue) in run ``run`` of the call.

    A call may run the same step in several runs, written by different
    steps (``fit_transform`` runs the steps after one fitted in the parent
    as a run of their own).
    """

    name: str
    lane: int
    bound: int
    upstream: str | None  # the step that writes it; None: the feeder
    run: int = 0


class FeedMark(NamedTuple):
    """The feeder put minibatch ``minibatch`` of run ``run`` on the first queue of ``stage`` at ``time``."""

    stage: str
    run: int
    minibatch: int
    time: float


@dataclass(frozen=True)
class TimelineInfo:
    """What the timeline needs besides the task spans (``stats_.timeline_info``).

    Attributes
    ----------
    queues : tuple of QueueInfo
        Every queue of the call's runs, in stage order.
    fed : tuple of FeedMark
        When the feeder put each minibatch on each lane's first queue (the most recent).
    fits : tuple of FitSpan
        The steps fitted in the parent.
    """

    queues: tuple[QueueInfo, ...] = ()
    fed: tuple[FeedMark, ...] = ()
    fits: tuple[FitSpan, ...] = ()


class _StageWorkers(Protocol):
    @property
    def n_workers(self) -> int: ...


class _Timed(Protocol):
    """What the timeline reads of a :class:`~neuraxle_stream.stats.PipelineStats`.

    A protocol, so that this module stays below ``stats`` (which imports it).
    """

    @property
    def owner(self) -> str: ...
    @property
    def stages(self) -> Mapping[str, _StageWorkers]: ...
    @property
    def timeline(self) -> tuple[TaskSpan, ...]: ...
    @property
    def timeline_info(self) -> TimelineInfo: ...


class TimelineRecorder:
    """The timeline of one call, kept by the parent's collector (under its lock).

    Parameters
    ----------
    origin : float
        ``time.perf_counter()`` when the call started: time 0 of the timeline.
    limit : int, optional
        Tasks kept (the most recent); :data:`TIMELINE_LIMIT` when not given.

    Per minibatch, :meth:`add` and :meth:`fed` only append plain tuples to
    bounded deques; :meth:`tasks` builds each span once, when asked for.
    """

    def __init__(self, origin: float, limit: int | None = None) -> None:
        limit = TIMELINE_LIMIT if limit is None else limit
        self.origin = origin
        self._records: deque[tuple[TaskRecord, int, int]] = deque(maxlen=limit)  # (record, run, attempt)
        self._added = self._built = 0
        self._tasks: deque[TaskSpan] = deque(maxlen=limit)
        self._fed: deque[tuple[str, int, int, float]] = deque(maxlen=limit)
        self._fits: deque[FitSpan] = deque(maxlen=limit)
        self._queues: dict[tuple[int, str], QueueInfo] = {}
        self._lanes: dict[str, int] = {}
        self._fed_count: dict[str, int] = {}
        self._run = -1

    def begin_run(self, lanes: list[list[StageSpec]]) -> None:
        """A run of these lanes starts: minibatch numbers start again from 0."""
        self._run += 1
        self._fed_count = {}
        for lane in lanes:
            upstream: str | None = None
            for spec in lane:
                for step in spec.steps:
                    self._lanes[step.name] = spec.lane
                # a chain has one input queue, its first step's, written by the last step before it
                key = (self._run, spec.name)
                self._queues[key] = QueueInfo(spec.name, spec.lane, spec.max_queue_size, upstream, self._run)
                upstream = spec.last.name

    def add(self, r: TaskRecord, attempt: int = 1) -> None:
        """Keep the record of one task, of the current run (``attempt``: which run of its minibatch)."""
        self._records.append((r, self._run, attempt))
        self._added += 1

    def fed(self, stage: str) -> None:
        """The feeder has just put the next minibatch of the run on the first queue of ``stage``."""
        count = self._fed_count.get(stage, 0)
        self._fed_count[stage] = count + 1
        self._fed.append((stage, self._run, count, time.perf_counter()))

    def fitted(self, step: str, seconds: float) -> None:
        """Step ``step`` has just been fitted in the parent, in ``seconds``."""
        self._fits.append(FitSpan(step, time.perf_counter() - self.origin - seconds, seconds))

    def tasks(self) -> tuple[TaskSpan, ...]:
        """The spans kept, in the order their records arrived (a record without a start is left out)."""
        new = min(self._added - self._built, len(self._records))
        origin, lanes = self.origin, self._lanes
        for r, run, attempt in itertools.islice(self._records, len(self._records) - new, None):
            if not math.isnan(r.began):
                self._tasks.append(TaskSpan(
                    r.stage, r.worker, r.began - origin, r.duration, r.failed,
                    r.minibatch, r.n_items, lanes.get(r.stage, 0), run, attempt,
                ))
        self._built = self._added
        return tuple(self._tasks)

    def info(self) -> TimelineInfo:
        """The queues, the feeder's puts and the fits kept."""
        fed = tuple(FeedMark(stage, run, count, t - self.origin) for stage, run, count, t in self._fed)
        return TimelineInfo(tuple(self._queues.values()), fed, tuple(self._fits))


# -- derived: queue occupancy ----------------------------------------------------------


def queue_occupancy(stats: _Timed) -> dict[str, list[tuple[float, int]]]:
    """Minibatches waiting in each queue over time: ``{reading step: [(seconds, count), ...]}``.

    A step function: each count holds from its time to the next. Derived
    from the spans kept (see the module's docstring); a queue whose writer
    left no record is left out.
    """
    info = stats.timeline_info
    begun: dict[tuple[str, int, int], float] = {}
    ended: dict[tuple[str, int, int], float] = {}
    for s in stats.timeline:
        begun[(s.stage, s.run, s.minibatch)] = s.start
        if not s.failed:
            ended[(s.stage, s.run, s.minibatch)] = s.end
    for f in info.fed:
        ended[(f"\0feed:{f.stage}", f.run, f.minibatch)] = f.time
    changes: dict[str, list[tuple[float, int]]] = {}
    bounds: dict[str, int] = {}
    for q in info.queues:  # one per run and reading step
        writer = q.upstream if q.upstream is not None else f"\0feed:{q.name}"
        bounds[q.name] = q.bound
        mine = changes.setdefault(q.name, [])
        for (stage, run, minibatch), t_in in ended.items():
            if stage != writer or run != q.run:
                continue
            mine.append((t_in, 1))
            t_out = begun.get((q.name, run, minibatch))
            if t_out is not None:
                mine.append((max(t_out, t_in), -1))
    out: dict[str, list[tuple[float, int]]] = {}
    for name, mine in changes.items():
        if not mine:
            continue
        mine.sort()
        level, points = 0, [(0.0, 0)]
        for t, step in mine:
            level += step
            points.append((t, max(0, min(level, bounds[name]))))
        out[name] = points
    return out


# -- Chrome trace ---------------------------------------------------------------------


def _rows(stats: _Timed) -> list[tuple[int, str, int]]:
    """(lane, step, worker) of every worker that ran a task, in lane then step order."""
    order = {name: i for i, name in enumerate(stats.stages)}
    lanes = {q.name: q.lane for q in stats.timeline_info.queues}
    seen = {(s.lane, s.stage, s.worker) for s in stats.timeline}
    for name, stage in stats.stages.items():  # workers that ran nothing get a row too
        seen.update((lanes.get(name, 0), name, w) for w in range(stage.n_workers))
    return sorted(seen, key=lambda r: (r[0], order.get(r[1], len(order)), r[1], r[2]))


def chrome_trace(stats: _Timed) -> dict[str, Any]:
    """The timeline as a Chrome trace-event object (``{"traceEvents": [...]}``).

    One process per step (pid 1, 2, ... in stage order; its name says its
    lane), one thread per worker, a complete event (``"ph": "X"``, ``ts`` and
    ``dur`` in microseconds since the call started) per task with ``args``
    ``minibatch``, ``n_items``, ``run``, ``failed`` and ``attempt`` (1, then 2
    for its first retry...); a counter
    (``"ph": "C"``) per queue on the process of the step that reads it; the
    steps fitted in the parent as complete events of process 0.
    """
    events: list[dict[str, Any]] = []
    pids: dict[str, int] = {}
    rows = _rows(stats)
    lanes = {lane for lane, _, _ in rows}
    for lane, name, worker in rows:
        if name not in pids:
            pid = pids[name] = len(pids) + 1
            label = f"{name} (lane {lane})" if len(lanes) > 1 else name
            events.append({"name": "process_name", "ph": "M", "pid": pid, "tid": 0, "args": {"name": label}})
            events.append({"name": "process_sort_index", "ph": "M", "pid": pid, "tid": 0, "args": {"sort_index": pid}})
        events.append({
            "name": "thread_name", "ph": "M", "pid": pids[name], "tid": worker,
            "args": {"name": f"worker {worker}"},
        })
    for s in stats.timeline:
        events.append({
            "name": s.stage, "cat": "failed" if s.failed else "task", "ph": "X",
            "ts": s.start * 1e6, "dur": s.duration * 1e6, "pid": pids[s.stage], "tid": s.worker,
            "args": {
                "minibatch": s.minibatch, "n_items": s.n_items, "run": s.run, "failed": s.failed,
                "attempt": s.attempt,
            },
        })
    for name, points in queue_occupancy(stats).items():
        for t, n in points:
            events.append({
                "name": f"queue to {name}", "ph": "C", "ts": t * 1e6, "pid": pids.get(name, 0),
                "args": {"minibatches": n},
            })
    if stats.timeline_info.fits:
        events.append({"name": "process_name", "ph": "M", "pid": 0, "tid": 0, "args": {"name": "parent (fitting)"}})
        for f in stats.timeline_info.fits:
            events.append({
                "name": f"fit {f.step}", "cat": "fit", "ph": "X", "ts": f.start * 1e6,
                "dur": f.duration * 1e6, "pid": 0, "tid": 0, "args": {"step": f.step},
            })
    return {"traceEvents": events, "displayTimeUnit": "ms", "otherData": {"owner": stats.owner}}


def write_chrome_trace(stats: _Timed, path: str | Path) -> Path:
    """Write :func:`chrome_trace` to ``path`` as JSON; return ``path``."""
    path = Path(path)
    path.write_text(json.dumps(chrome_trace(stats)))
    return path


# -- figure ---------------------------------------------------------------------------


def plot_timeline(stats: _Timed, steps: Sequence[str] | None = None) -> Figure:
    """A matplotlib figure: a row per worker, its tasks as bars coloured by step; queue occupancy under it.

    Rows are grouped by lane (a union's branches), then by step. Failed
    tasks are hatched; steps fitted in the parent, if any, get a row of
    their own at the top.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            'plot_timeline() needs matplotlib; install it with `pip install -e ".[plot]"`.'
        ) from exc
    names = list(steps) if steps is not None else list(stats.stages)
    rows = [r for r in _rows(stats) if r[1] in names]
    fits = stats.timeline_info.fits
    labels = (["parent: fit"] if fits else []) + [
        f"{name}:{worker}" if len({r[0] for r in rows}) == 1 else f"[{lane}] {name}:{worker}"
        for lane, name, worker in rows
    ]
    occupancy = {k: v for k, v in queue_occupancy(stats).items() if k in names}
    fig = Figure(figsize=(12, 2.5 + 0.3 * len(labels) + (1.8 if occupancy else 0)), layout="constrained")
    if occupancy:
        tasks, queues = fig.subplots(2, 1, sharex=True, height_ratios=[max(2, len(labels)), 3])
    else:
        tasks, queues = fig.subplots(1, 1), None
    colors = {name: f"C{i % 10}" for i, name in enumerate(stats.stages)}
    index = {row: i + (1 if fits else 0) for i, row in enumerate(rows)}
    by_row: dict[tuple[int, str, int], list[TaskSpan]] = {}
    for s in stats.timeline:
        by_row.setdefault((s.lane, s.stage, s.worker), []).append(s)
    for row, spans in by_row.items():
        if row not in index:
            continue
        for failed in (False, True):
            bars = [(s.start, s.duration) for s in spans if s.failed == failed]
            if bars:
                color = colors.get(row[1], "C0")
                tasks.broken_barh(  # the edge keeps a task shorter than a pixel visible
                    bars, (index[row] - 0.4, 0.8), facecolor=color,
                    edgecolor="black" if failed else color, hatch="xx" if failed else None,
                    linewidth=0.5,
                )
    if fits:
        tasks.broken_barh([(f.start, f.duration) for f in fits], (-0.4, 0.8), facecolor="0.6")
    lane_of = [r[0] for r in rows]
    for i in range(1, len(lane_of)):
        if lane_of[i] != lane_of[i - 1]:  # a line between lanes
            tasks.axhline(index[rows[i]] - 0.5, color="0.5", linewidth=0.8)
    tasks.set_yticks(range(len(labels)), labels)
    tasks.set_ylim(len(labels) - 0.5, -0.5)
    for name in names:
        tasks.plot([], [], color=colors.get(name, "C0"), linewidth=6, label=name)
    tasks.legend(loc="upper right", fontsize="small", ncols=min(4, max(1, len(names))))
    tasks.set_title(f"{stats.owner}: tasks per worker (bars: a step on a minibatch)")
    if queues is not None:
        for name, points in occupancy.items():
            xs, ys = zip(*points)
            queues.step(xs, ys, where="post", color=colors.get(name, "C0"), label=f"to {name}")
        queues.set_ylabel("minibatches\nin queue")
        queues.legend(loc="upper right", fontsize="small", ncols=min(4, max(1, len(occupancy))))
        queues.set_xlabel("seconds since the call started")
    else:
        tasks.set_xlabel("seconds since the call started")
    return fig
