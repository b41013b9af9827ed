"""Stats: where the time of a call went, merged in the parent from the workers' records.

Every worker measures each minibatch it runs (see
:class:`~neuraxle_stream.messages.TaskRecord`) and sends the record along
with the minibatch, so measuring costs no extra message. The parent's
:class:`StatsCollector` merges the records as results arrive; after every
call ``pipeline.stats_`` is a :class:`PipelineStats`: one :class:`StageStats`
per step and one :class:`QueueStats` per bounded queue (named after the
step that reads it), printable as a table that names the bottleneck.

The parent's side of a call (hooks' reports, progress, verbose lines) is
:class:`~neuraxle_stream.monitor.CallMonitor`; the percentiles of each
stage's durations come from :class:`~neuraxle_stream.quantiles.Durations`.

A little over ~400 lines, on purpose: the public stats (:class:`PipelineStats`,
its table and plot) and the collector that builds them change together, and
both are named from this module.
"""

from __future__ import annotations

import html
import itertools
import logging
import math
import textwrap
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .messages import TaskRecord
from .quantiles import Durations
from .retries import FailureRecord
from .timeline import TaskSpan, TimelineInfo, TimelineRecorder

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from .stages import StageSpec

__all__ = [
    "PipelineStats",
    "PlanLayout",
    "QueueStats",
    "StageStats",
    "StatsCollector",
    "TaskSpan",
    "format_seconds",
]

logger = logging.getLogger("neuraxle_stream")



@dataclass(frozen=True)
class StageStats:
    """What the workers of one step did during a call; times in seconds.

    Attributes
    ----------
    num_tasks : int
        Minibatches the step ran (failed ones included).
    num_items : int
        Rows of those minibatches.
    num_failures : int
        Minibatches on which the step (or a task hook) raised.
    ave_time, p90_time, p99_time : float
        Mean, 90th and 99th percentile of the time the step spent on one minibatch.
    busy_time : float
        Time the step's workers spent in the step, summed over the workers.
    cpu_time : float
        CPU time their threads used in the step, summed: far below
        ``busy_time``, the step mostly waited (I/O, a remote service), which
        the next call's plan takes into account (``stats_.plan.reasons``).
    n_workers : int
        Workers of the stage.
    get_wait : float
        Time its workers waited on their input queue, summed (starvation).
    put_wait : float
        Time its workers waited for room on the next queue, summed (backpressure).
    wall_time : float
        Duration of the runs the stage took part in, each from its first
        minibatch to its end (starting the workers is not counted).
    num_restarts : int
        Workers of the step replaced during the call (after a worker died or
        overran ``timeout``, with ``max_retries``).
    """

    num_tasks: int = 0
    num_items: int = 0
    num_failures: int = 0
    ave_time: float = 0.0
    p90_time: float = 0.0
    p99_time: float = 0.0
    busy_time: float = 0.0
    n_workers: int = 1
    cpu_time: float = 0.0
    get_wait: float = 0.0
    put_wait: float = 0.0
    wall_time: float = 0.0
    num_restarts: int = 0

    @property
    def busy_per_worker(self) -> float:
        """``busy_time / n_workers``: how long each worker was busy, on average."""
        return self.busy_time / max(1, self.n_workers)


@dataclass(frozen=True)
class QueueStats:
    """What went through one bounded queue during a call.

    Attributes
    ----------
    num_items : int
        Minibatches taken from the queue.
    qps : float
        ``num_items`` per second of the runs the queue took part in.
    ave_put_wait : float
        Mean seconds a writer (the stage before, or the feeder) waited for a
        free slot: high when the reading stage (or one after it) is slow.
    ave_get_wait : float
        Mean seconds a reader waited for an item: high when a stage before it is slow.
    occupancy : float
        Estimated fraction of the time the queue had an item waiting:
        ``1 - get_wait / (reader workers × wall time)``, clipped to [0, 1].
        Near 1, the readers always found work (the bottleneck is at or after
        them); near 0, they starved (it is before them).
    """

    num_items: int = 0
    qps: float = 0.0
    ave_put_wait: float = 0.0
    ave_get_wait: float = 0.0
    occupancy: float = 0.0


class PlanLayout(tuple[tuple[str, ...], ...]):
    """``stats_.plan``: the groups of steps that shared workers, in lane order, and why each is so.

    A tuple of tuples of step names, equal to the plain tuple (``(("make",
    "mix"),)``); ``reasons[i]`` says why group ``i`` is so, e.g.
    ``"chained: 2 workers (the 4 asked for, capped by the 2 cores)"`` or
    ``"as written: its own worker_arguments"`` (see :mod:`~neuraxle_stream.plan`).
    """

    reasons: tuple[str, ...]

    def __new__(cls, groups: Iterable[tuple[str, ...]] = (), reasons: Iterable[str] = ()) -> PlanLayout:
        """``groups`` in order; a dict of groups gives its values as the reasons."""
        if isinstance(groups, dict):
            reasons = list(groups.values())
            groups = list(groups)
        layout = super().__new__(cls, groups)
        given = tuple(reasons)
        layout.reasons = given + ("",) * (len(layout) - len(given))
        return layout

    def reason(self, step: str) -> str:
        """Why the group of ``step`` is so."""
        for group, why in zip(self, self.reasons, strict=True):
            if step in group:
                return why
        raise KeyError(step)


@dataclass(frozen=True)
class PipelineStats:
    """The merged stats of one call of a queued pipeline (``pipeline.stats_``).

    ``stats[name]`` and ``stats.stages[name]`` are the :class:`StageStats` of
    step ``name``; ``stats.queues[name]`` the :class:`QueueStats` of its input
    queue. ``str(stats)`` is a table; :attr:`bottleneck` the step whose
    workers were busiest.
    """

    owner: str = ""
    stages: dict[str, StageStats] = field(default_factory=dict)
    queues: dict[str, QueueStats] = field(default_factory=dict)
    wall_time: float = 0.0
    timeline: tuple[TaskSpan, ...] = field(default=(), repr=False)
    timeline_info: TimelineInfo = field(default_factory=TimelineInfo, repr=False)
    failures: tuple[FailureRecord, ...] = ()
    #: The layout the call ran with: groups of the steps that shared workers, in
    #: lane order, e.g. ``(("make", "mix"),)`` chained, ``(("make",), ("mix",))`` not;
    #: its ``reasons`` say why each group is so (``reasons[i]`` for group ``i``).
    plan: tuple[tuple[str, ...], ...] = PlanLayout()

    def __getitem__(self, name: str) -> StageStats:
        return self.stages[name]

    @property
    def bottleneck(self) -> str | None:
        """The step with the highest busy time per worker (``None`` before any minibatch)."""
        ran = {name: s for name, s in self.stages.items() if s.num_tasks}
        if not ran:
            return None
        return max(ran, key=lambda name: ran[name].busy_per_worker)

    def to_chrome_trace(self, path: str | Path) -> Path:
        """Write the timeline as Chrome trace-event JSON (Perfetto, ``chrome://tracing``).

        A process per step, a thread per worker, a complete event per task
        (``args``: ``minibatch``, ``n_items``, ``attempt``...), a counter per queue, the steps
        fitted in the parent; see :mod:`neuraxle_stream.timeline`.

        Returns
        -------
        Path
            ``path``.
        """
        from .timeline import write_chrome_trace

        return write_chrome_trace(self, path)

    def plot_timeline(self) -> Figure:
        """A matplotlib figure: workers as rows, tasks as bars coloured by step, queue occupancy under it.

        Raises
        ------
        ImportError
            When matplotlib is not installed (``pip install -e ".[plot]"``).
        """
        from .timeline import plot_timeline

        return plot_timeline(self)

    # -- display -------------------------------------------------------------------

    def _rows(self) -> tuple[list[list[str]], list[list[str]]]:
        restarts = any(s.num_restarts for s in self.stages.values())
        stage_rows = [[
            "step", "workers", "minibatches", "items", "failures", *(["restarts"] if restarts else []),
            "mean", "p90", "p99", "busy", "busy/worker",
        ]]
        shared = {name: group for group in self.plan if len(group) > 1 for name in group}
        for name, s in self.stages.items():
            group = shared.get(name)
            # chained steps share their workers: "2 (make+mix)"
            workers = str(s.n_workers) if group is None else f"{s.n_workers} ({'+'.join(group)})"
            stage_rows.append([
                name, workers, str(s.num_tasks), str(s.num_items), str(s.num_failures),
                *([str(s.num_restarts)] if restarts else []),
                *(format_seconds(t) for t in (s.ave_time, s.p90_time, s.p99_time, s.busy_time, s.busy_per_worker)),
            ])
        queue_rows = [["queue to", "minibatches", "per second", "put wait", "get wait", "occupancy"]]
        for name, q in self.queues.items():
            queue_rows.append([
                name, str(q.num_items), f"{q.qps:.1f}", format_seconds(q.ave_put_wait),
                format_seconds(q.ave_get_wait), f"{q.occupancy:.0%}",
            ])
        return stage_rows, queue_rows

    def _summary(self) -> str:
        name = self.bottleneck
        if name is None:
            return "Bottleneck: none (no minibatch ran)."
        s = self.stages[name]
        share = s.busy_per_worker / s.wall_time if s.wall_time > 0 else 0.0
        return (
            f"Bottleneck: {name!r}, busy {format_seconds(s.busy_per_worker)} per worker "
            f"({share:.0%} of its {format_seconds(s.wall_time)} run time); give it more workers "
            "or make it faster."
        )

    def __str__(self) -> str:
        stage_rows, queue_rows = self._rows()
        lines = [f"{self.owner} stats: {format_seconds(self.wall_time)} wall time"]
        for rows in (stage_rows, queue_rows):
            widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
            for row in rows:
                cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
                lines.append("  ".join(cells).rstrip())
            lines.append("")
        if self.failures:
            lines.append(f"Failed minibatches ({len(self.failures)}):")
            lines.extend(f"  {_describe_failure(f)}" for f in self.failures)
            lines.append("")
        lines.extend(textwrap.wrap(self._summary(), 79))  # fits a terminal, and the docs
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        parts = [f"<p><b>{html.escape(self.owner)} stats</b>: {format_seconds(self.wall_time)} wall time</p>"]
        for rows in self._rows():
            head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
            body = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:]
            )
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        parts.append(f"<p>{html.escape(self._summary())}</p>")
        return "\n".join(parts)

    def plot(self, path: str | Path | None = None) -> Figure:
        """Draw where the time went: per-step busy and wait time, and the minibatches per worker.

        The left panel shows, per step, the seconds each worker spent in
        the step, waiting for input and waiting for room downstream; the
        right one, every minibatch on its worker over time, with the
        start-up (from the call to the first minibatch) shaded.

        Parameters
        ----------
        path : str or Path, optional
            Also save the figure there (a PNG, or any format matplotlib
            knows from the suffix).

        Returns
        -------
        matplotlib.figure.Figure
            The figure: a notebook shows it inline.

        Raises
        ------
        ImportError
            When matplotlib is not installed.
        """
        try:
            from matplotlib.figure import Figure
        except ImportError as exc:
            raise ImportError(
                "PipelineStats.plot() needs matplotlib; install it with "
                "`pip install matplotlib` (or the `plot` extra)."
            ) from exc
        names = list(self.stages)
        rows = sorted({(span.stage, span.worker) for span in self.timeline},
                      key=lambda r: (names.index(r[0]) if r[0] in names else len(names), r[1]))
        fig = Figure(figsize=(10, 3 + 0.35 * max(len(names), len(rows))), layout="constrained")
        fig.suptitle(
            f"{self.owner or 'Pipeline'}: {format_seconds(self.wall_time)} wall time, "
            f"bottleneck {self.bottleneck!r}", fontweight="bold",
        )
        bars, timeline = fig.subplots(1, 2, width_ratios=[1, 1.6])
        y = np.arange(len(names))
        left = np.zeros(len(names))
        for label, values, color in (
            ("busy", [s.busy_per_worker for s in self.stages.values()], "tab:blue"),
            ("waiting for input", [s.get_wait / s.n_workers for s in self.stages.values()], "tab:orange"),
            ("waiting for room", [s.put_wait / s.n_workers for s in self.stages.values()], "tab:red"),
        ):
            bars.barh(y, values, left=left, label=label, color=color)
            left += np.asarray(values)
        bars.set_yticks(y, names)
        bars.invert_yaxis()
        bars.set_xlabel("seconds per worker")
        bars.set_title("Where the time went")
        bars.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
        index = {row: i for i, row in enumerate(rows)}
        for failed, color, label in ((False, "tab:blue", "minibatch"), (True, "tab:red", "failed minibatch")):
            labelled = False
            for row, i in index.items():
                spans = [(s.start, s.duration) for s in self.timeline
                         if (s.stage, s.worker) == row and s.failed == failed]
                if spans:
                    timeline.broken_barh(spans, (i - 0.4, 0.8), color=color, edgecolor="white", linewidth=0.3,
                                         label=None if labelled else label)
                    labelled = True
        if self.timeline:
            startup = min(span.start for span in self.timeline)
            timeline.axvspan(0, startup, color="0.85", zorder=0, label=f"start-up ({format_seconds(startup)})")
            timeline.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
        timeline.set_yticks(range(len(rows)), [f"{stage} #{worker}" for stage, worker in rows])
        timeline.invert_yaxis()
        timeline.set_xlim(left=0)
        timeline.set_xlabel("seconds since the call started")
        timeline.set_title("Minibatches per worker")
        if path is not None:
            fig.savefig(path, dpi=100)
        return fig


def _describe_failure(f: FailureRecord) -> str:
    items = f"items {f.first_item}..{f.first_item + f.n_items - 1}" if f.n_items > 0 else "items ?"
    return f"minibatch {f.minibatch} ({items}), step {f.step!r}, {f.attempts} attempt(s): {f.error_type}: {f.message}"


def format_seconds(seconds: float) -> str:
    """``seconds`` in a readable unit: ``"12 µs"``, ``"3.4 ms"``, ``"1.25 s"``, ``"2.0 min"``."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min"


@dataclass
class _StageTotals:
    n_workers: int
    num_tasks: int = 0
    num_items: int = 0
    num_failures: int = 0
    busy: float = 0.0
    cpu: float = 0.0
    get_wait: float = 0.0
    put_wait: float = 0.0  # this stage's own puts on the next queue
    in_put_wait: float = 0.0  # writers' puts on this stage's input queue
    in_puts: int = 0
    wall_time: float = 0.0
    restarts: int = 0
    durations: Durations = field(default_factory=Durations)


class StatsCollector:
    """Merges the :class:`~neuraxle_stream.messages.TaskRecord` of one call.

    The runtime's supervisor calls :meth:`add` with the records of each
    minibatch it receives, and its feeder :meth:`add_feed_wait`; snapshots
    may be taken from any thread.

    Parameters
    ----------
    owner : str
        The pipeline's class name, for display.
    stages : list of (str, int)
        Every step of the pipeline and its workers, in display order.
    """

    def __init__(self, owner: str, stages: list[tuple[str, int]]) -> None:
        self.owner = owner
        self._lock = threading.Lock()
        self._stages = {name: _StageTotals(n_workers) for name, n_workers in stages}
        self._next: dict[str, str] = {}
        self._started_wall = time.time()
        self._started = time.perf_counter()
        self._timeline = TimelineRecorder(self._started)
        self._run_started_wall = self._started_wall
        self._run_first_start = math.inf
        self._in_run: list[str] = []
        self._plan: dict[tuple[str, ...], str] = {}  # the groups of every run, in order, and why each is so
        self._chained: set[str] = set()  # steps that ran after another in its workers: no queue of their own
        self.listeners: list[Callable[[Iterable[TaskRecord]], None]] = []
        self._failures: list[FailureRecord] = []
        #: Set by the runtime of the current run, when its workers count as they
        #: go: ``{step: (rows, minibatches)}`` finished so far (progress bars).
        self.live_counts: Callable[[], dict[str, tuple[int, int]]] | None = None

    def begin_run(self, lanes: list[list[StageSpec]]) -> None:
        """A run of these stages starts now."""
        with self._lock:
            self._run_started_wall, self._run_first_start = time.time(), math.inf
            self._in_run = [step.name for lane in lanes for spec in lane for step in spec.steps]
            self._timeline.begin_run(lanes)
            for lane in lanes:
                for spec, following in itertools.pairwise(lane):
                    self._next[spec.last.name] = following.name
                for spec in lane:
                    self._plan.setdefault(tuple(step.name for step in spec.steps), spec.layout)
                    self._chained.update(step.name for step in spec.chained)
                    for step in spec.steps:
                        self._stages.setdefault(step.name, _StageTotals(spec.n_workers)).n_workers = spec.n_workers

    def end_run(self) -> None:
        """The run started by :meth:`begin_run` has ended."""
        with self._lock:
            elapsed = self._run_elapsed()
            for name in self._in_run:
                self._stages[name].wall_time += elapsed
            self._in_run = []

    def _run_elapsed(self) -> float:
        """Seconds from the first minibatch of the current run (or its start) to now."""
        first = self._run_first_start
        start = self._run_started_wall if math.isinf(first) else max(self._run_started_wall, first)
        return max(0.0, time.time() - start)

    def add(self, records: Iterable[TaskRecord], attempt: int = 1) -> None:
        """Merge the records that came back with one minibatch (or its failure), of its ``attempt``-th run."""
        with self._lock:
            for r in records:
                totals = self._stages.get(r.stage)
                if totals is None:
                    continue
                self._run_first_start = min(self._run_first_start, r.start)
                totals.num_tasks += 1
                totals.num_items += r.n_items
                totals.num_failures += r.failed
                totals.busy += r.duration
                totals.cpu += r.cpu_time
                totals.durations.add(r.duration)
                # A worker kept up between calls waited for this call's first minibatch
                # since the call before: count only the wait inside this run.
                totals.get_wait += min(r.get_wait, max(0.0, r.start - self._run_started_wall))
                following = self._next.get(r.stage)
                if r.put_wait is not None and following is not None:
                    totals.put_wait += r.put_wait
                    self._stages[following].in_put_wait += r.put_wait
                    self._stages[following].in_puts += 1
                self._timeline.add(r, attempt)
        for listener in self.listeners:
            listener(records)

    def add_feed_wait(self, stage: str, seconds: float) -> None:
        """The feeder waited ``seconds`` for room on the input queue of ``stage``."""
        with self._lock:
            totals = self._stages.get(stage)
            if totals is not None:
                totals.in_put_wait += seconds
                totals.in_puts += 1
            self._timeline.fed(stage)

    def add_failure(self, record: FailureRecord) -> None:
        """A minibatch failed every attempt (skipped, or the end of the run)."""
        with self._lock:
            self._failures.append(record)

    def add_restarts(self, step: str, n: int = 1) -> None:
        """``n`` workers of ``step`` were replaced."""
        with self._lock:
            totals = self._stages.get(step)
            if totals is not None:
                totals.restarts += n

    def add_fit(self, step: str, seconds: float) -> None:
        """Step ``step`` has just been fitted in the parent, in ``seconds`` (for the timeline)."""
        with self._lock:
            self._timeline.fitted(step, seconds)

    def snapshot(self) -> PipelineStats:
        """The stats merged so far."""
        with self._lock:
            running = self._run_elapsed() if self._in_run else 0.0
            stages: dict[str, StageStats] = {}
            queues: dict[str, QueueStats] = {}
            for name, t in self._stages.items():
                wall = t.wall_time + (running if name in self._in_run else 0.0)
                n = t.num_tasks
                stages[name] = StageStats(
                    num_tasks=n,
                    num_items=t.num_items,
                    num_failures=t.num_failures,
                    ave_time=t.busy / n if n else 0.0,
                    p90_time=t.durations.quantile(0.9),
                    p99_time=t.durations.quantile(0.99),
                    busy_time=t.busy,
                    n_workers=t.n_workers,
                    cpu_time=t.cpu,
                    get_wait=t.get_wait,
                    put_wait=t.put_wait,
                    wall_time=wall,
                    num_restarts=t.restarts,
                )
                if wall > 0 and name not in self._chained:
                    queues[name] = QueueStats(
                        num_items=n,
                        qps=n / wall,
                        ave_put_wait=t.in_put_wait / t.in_puts if t.in_puts else 0.0,
                        ave_get_wait=t.get_wait / n if n else 0.0,
                        occupancy=min(1.0, max(0.0, 1.0 - t.get_wait / (t.n_workers * wall))),
                    )
            return PipelineStats(
                owner=self.owner,
                stages=stages,
                queues=queues,
                wall_time=time.perf_counter() - self._started,
                timeline=self._timeline.tasks(),
                timeline_info=self._timeline.info(),
                failures=tuple(self._failures),
                plan=PlanLayout(self._plan),
            )
