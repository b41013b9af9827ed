"""The parent's side of one call: stats merged, hooks reported, progress drawn.

:class:`CallMonitor` owns the :class:`~neuraxle_stream.stats.StatsCollector`
of a call, calls the hooks' ``report`` (at the end, and every ``interval``
seconds from a timer thread), draws the ``progress`` bars and prints the
``verbose`` lines.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, TextIO

from .messages import TaskRecord
from .stages import StageSpec
from .stats import PipelineStats, StatsCollector, format_seconds

if TYPE_CHECKING:  # pragma: no cover
    from .hooks import PipelineHook

__all__ = ["PROGRESS_EVERY", "CallMonitor", "verbose_line"]

logger = logging.getLogger("neuraxle_stream")

#: Seconds between two plain progress lines when the output is not a terminal.
PROGRESS_EVERY = 5.0
#: Seconds between two redraws of the bars on a terminal.
_REFRESH = 0.2


class CallMonitor:
    """Collects the stats of one call and reports them: hooks, progress, verbose.

    Parameters
    ----------
    owner : str
        The pipeline's class name.
    stages : list of (str, int)
        Every step and its workers, in pipeline order.
    hooks : sequence of PipelineHook
        Their ``report`` runs here, in the parent.
    progress : bool
        Draw one bar per step (plain lines when ``sys.stderr`` is not a terminal).
    verbose : bool
        Print a scikit-learn-style line per step fitted and per step run.
    total_items : int or None
        Rows each step will receive, when known (for the progress bars).
    """

    def __init__(
        self,
        owner: str,
        stages: list[tuple[str, int]],
        hooks: Sequence[PipelineHook] = (),
        progress: bool = False,
        verbose: bool = False,
        total_items: int | None = None,
    ) -> None:
        self.owner = owner
        self.collector = StatsCollector(owner, stages)
        self.hooks = list(hooks)
        self.verbose = verbose
        #: The final stats, set by :meth:`close`.
        self.stats: PipelineStats | None = None
        self._positions = {name: i for i, (name, _) in enumerate(stages)}
        self._progress: _Progress | None = None
        if progress:
            self._progress = _Progress(owner, list(self._positions), total_items, sys.stderr, self.collector)
            self.collector.listeners.append(self._progress.update)
        self._timers = [_ReportTimer(hook, self.collector) for hook in self.hooks if hook.interval]

    def begin_run(self, lanes: list[list[StageSpec]]) -> None:
        """A run of these stages starts; with ``progress``, say so at once."""
        self.collector.begin_run(lanes)
        if self._progress is not None:
            self._progress.begin_run()
            specs = [spec for lane in lanes for spec in lane]
            n_workers = sum(spec.n_workers for spec in specs)
            steps = ", ".join(f"{'+'.join(s.name for s in spec.steps)} x{spec.n_workers}" for spec in specs)
            self._progress.start(f"starting {n_workers} worker{'s' * (n_workers != 1)} ({steps})...")

    def end_run(self, lanes: list[list[StageSpec]], ok: bool) -> None:
        """The run ended; with ``verbose``, print a line per step it ran."""
        self.collector.end_run()
        if self.verbose and ok:
            stats = self.collector.snapshot()
            for lane in lanes:
                for spec in lane:
                    for step in spec.steps:
                        self._print_step("Processing", step.name, stats.stages[step.name].busy_time)

    def fitted(self, name: str, seconds: float) -> None:
        """Step ``name`` was fitted in the parent in ``seconds``."""
        self.collector.add_fit(name, seconds)
        if self.verbose:
            self._print_step("Fitting", name, seconds)

    def _print_step(self, action: str, name: str, seconds: float) -> None:
        position = self._positions.get(name, 0)
        message = f"(step {position + 1} of {len(self._positions)}) {action} {name}"
        line = verbose_line(self.owner, message, seconds)
        if self._progress is not None:
            self._progress.write(line)  # above the live bars, not inside one
        else:
            print(line)

    def __enter__(self) -> CallMonitor:
        for timer in self._timers:
            timer.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.close(failed=exc_type is not None)

    def close(self, failed: bool = False) -> PipelineStats:
        """End the call: stop the timers, close the bars, call every hook's final report.

        When the call failed, an error raised by a report is logged, so that
        it does not replace the error the caller must see.
        """
        errors: list[BaseException] = []
        for timer in self._timers:
            timer.stop()
            if timer.error is not None:
                errors.append(timer.error)
        self._timers = []
        stats = self.stats = self.collector.snapshot()
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        for hook in self.hooks:
            try:
                hook.report(stats, final=True)
            except Exception as exc:
                errors.append(exc)
        if errors:
            if not failed:
                raise errors[0]
            for error in errors:
                logger.error("A hook's report failed after the call failed.", exc_info=error)
        return stats


def verbose_line(source: str, message: str, seconds: float) -> str:
    """A line as scikit-learn's ``verbose=True`` prints it, 70 characters wide."""
    start = f"[{source}] "
    time_str = f"{seconds / 60:4.1f}min" if seconds > 60 else f" {seconds:5.1f}s"
    end = f" {message}, total={time_str}"
    return start + "." * max(0, 70 - len(start) - len(end)) + end


class _ReportTimer:
    """Calls ``hook.report(stats, final=False)`` every ``hook.interval`` seconds."""

    def __init__(self, hook: PipelineHook, collector: StatsCollector) -> None:
        self.hook, self.collector = hook, collector
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="neuraxle_stream-stats", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        interval = float(self.hook.interval or 0)
        while not self._stop.wait(interval):
            try:
                self.hook.report(self.collector.snapshot(), final=False)
            except BaseException as exc:  # raised in the caller at the end of the call
                self.error = exc
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()


class _Progress:
    """One bar per step on a terminal; plain lines every :data:`PROGRESS_EVERY` s elsewhere.

    Each step's bar counts the rows *that step* finished. Thread and process
    workers count them in shared memory as they go (the runtime's
    ``done_in_run``, read here every :data:`_REFRESH` s); the records that
    come back with the results (the only count on Ray) keep the total exact.
    A thread redraws the bars, so that they move while no result comes back;
    lines printed meanwhile go through :meth:`write`, above the bars.
    """

    def __init__(
        self, owner: str, names: list[str], total: int | None, file: TextIO, collector: StatsCollector
    ) -> None:
        self.owner, self.names, self.total, self.file = owner, names, total, file
        self.collector = collector
        self.tty = _usable_terminal(file)
        self.lock = threading.Lock()
        #: Rows and minibatches per step from the records that came back.
        self.items = dict.fromkeys(names, 0)
        self.tasks = dict.fromkeys(names, 0)
        #: Those counts when the current run began (a call may run the stages more than once).
        self.run_base: dict[str, tuple[int, int]] = {name: (0, 0) for name in names}
        self.bars: dict[str, Any] = {}
        self.started = self.last_line = time.perf_counter()
        self.last_text = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, message: str) -> None:
        """Print ``message`` at once; then redraw until :meth:`close`."""
        self.write(f"[{self.owner}] {message}", self.file)
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="neuraxle_stream-progress", daemon=True)
            self._thread.start()

    def begin_run(self) -> None:
        with self.lock:
            self.collector.live_counts = None  # the new run's runtime sets its own
            self.run_base = {name: (self.items[name], self.tasks[name]) for name in self.names}

    def update(self, records: Iterable[TaskRecord]) -> None:
        with self.lock:
            for r in records:
                if r.stage in self.items:
                    self.items[r.stage] += r.n_items
                    self.tasks[r.stage] += 1

    def counts(self) -> dict[str, tuple[int, int]]:
        """``{step: (rows, minibatches)}`` finished so far."""
        live = self.collector.live_counts
        now = live() if live is not None else {}
        with self.lock:
            out = {}
            for name in self.names:
                base_rows, base_tasks = self.run_base[name]
                rows, tasks = now.get(name, (0, 0))
                out[name] = (max(self.items[name], base_rows + rows), max(self.tasks[name], base_tasks + tasks))
            return out

    def _loop(self) -> None:
        every = _REFRESH if self.tty else PROGRESS_EVERY
        while not self._stop.wait(every):
            try:
                self.draw()
            except Exception:  # a bar that cannot be drawn must not end the call
                logger.debug("Drawing the progress bars failed.", exc_info=True)
                return

    def draw(self, final: bool = False) -> None:
        counts = self.counts()
        if self.tty:
            for name in self.names:
                rows = counts[name][0]
                if rows or final or name in self.bars:
                    bar = self._bar(name)
                    if rows != bar.n:  # drawn now: this thread already paces the redraws
                        bar.n = rows
                        bar.refresh()
        else:
            self._lines(counts, final)

    def _bar(self, name: str) -> Any:
        bar = self.bars.get(name)
        if bar is None:
            from tqdm.auto import tqdm

            bar = self.bars[name] = tqdm(
                total=self.total, desc=name, unit="item", position=self.names.index(name),
                leave=True, file=self.file, dynamic_ncols=True,
            )
        return bar

    def _lines(self, counts: dict[str, tuple[int, int]], final: bool) -> None:
        lines = []
        for name in self.names:
            rows, tasks = counts[name]
            if not tasks:
                continue
            done = f"{rows}/{self.total} items ({rows / self.total:.0%})" if self.total else f"{rows} items"
            lines.append(f"[{self.owner}] {name}: {done}, {tasks} minibatches")
        text = "\n".join(lines)
        if not text or (text == self.last_text and not final):
            return  # nothing moved: a line would say nothing new
        self.last_text = text
        elapsed = format_seconds(time.perf_counter() - self.started)
        self.file.write("".join(f"{line}, {elapsed}\n" for line in lines))
        self.file.flush()

    def write(self, line: str, file: TextIO | None = None) -> None:
        """Print ``line`` on ``file`` (``sys.stdout``) without tearing a bar."""
        file = sys.stdout if file is None else file
        if self.tty and self.bars:
            from tqdm.auto import tqdm

            tqdm.write(line, file=file)
        else:
            print(line, file=file, flush=True)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.draw(final=True)
        for bar in self.bars.values():
            bar.close()


def _usable_terminal(file: TextIO) -> bool:
    """Whether bars can be drawn on ``file``: a terminal that reports its width (not 0 columns)."""
    isatty = getattr(file, "isatty", None)
    if not (callable(isatty) and isatty()):
        return False
    try:
        columns = os.get_terminal_size(file.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return True  # a terminal that cannot say its size: tqdm draws 80 columns
    return columns > 0
