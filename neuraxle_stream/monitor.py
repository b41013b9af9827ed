"""The parent's side of one call: stats merged, hooks reported, progress drawn.

:class:`CallMonitor` owns the :class:`~neuraxle_stream.stats.StatsCollector`
of a call, calls the hooks' ``report`` (at the end, and every ``interval``
seconds from a timer thread), draws the ``progress`` bars and prints the
``verbose`` lines.
"""

from __future__ import annotations

import logging
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
            self._progress = _Progress(owner, list(self._positions), total_items, sys.stderr)
            self.collector.listeners.append(self._progress.update)
        self._timers = [_ReportTimer(hook, self.collector) for hook in self.hooks if hook.interval]

    def begin_run(self, lanes: list[list[StageSpec]]) -> None:
        """A run of these stages starts."""
        self.collector.begin_run(lanes)

    def end_run(self, lanes: list[list[StageSpec]], ok: bool) -> None:
        """The run ended; with ``verbose``, print a line per step it ran."""
        self.collector.end_run()
        if self.verbose and ok:
            stats = self.collector.snapshot()
            for lane in lanes:
                for spec in lane:
                    self._print_step("Processing", spec.name, stats.stages[spec.name].busy_time)

    def fitted(self, name: str, seconds: float) -> None:
        """Step ``name`` was fitted in the parent in ``seconds``."""
        self.collector.add_fit(name, seconds)
        if self.verbose:
            self._print_step("Fitting", name, seconds)

    def _print_step(self, action: str, name: str, seconds: float) -> None:
        position = self._positions.get(name, 0)
        message = f"(step {position + 1} of {len(self._positions)}) {action} {name}"
        print(verbose_line(self.owner, message, seconds))

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

    Counts arrive with the results (each minibatch carries a record of every
    step it went through), so every bar is drawn in the parent.
    """

    def __init__(self, owner: str, names: list[str], total: int | None, file: TextIO) -> None:
        self.owner, self.names, self.total, self.file = owner, names, total, file
        isatty = getattr(file, "isatty", None)
        self.tty = bool(isatty()) if callable(isatty) else False
        self.items = dict.fromkeys(names, 0)
        self.tasks = dict.fromkeys(names, 0)
        self.bars: dict[str, Any] = {}
        self.started = self.last_line = time.perf_counter()

    def update(self, records: Iterable[TaskRecord]) -> None:
        for r in records:
            if r.stage not in self.items:
                continue
            self.items[r.stage] += r.n_items
            self.tasks[r.stage] += 1
            if self.tty:
                self._bar(r.stage).update(r.n_items)
        if not self.tty and time.perf_counter() - self.last_line >= PROGRESS_EVERY:
            self._lines()

    def _bar(self, name: str) -> Any:
        bar = self.bars.get(name)
        if bar is None:
            from tqdm.auto import tqdm

            bar = self.bars[name] = tqdm(
                total=self.total, desc=name, unit="item", position=self.names.index(name),
                leave=True, file=self.file, dynamic_ncols=True,
            )
        return bar

    def _lines(self) -> None:
        self.last_line = time.perf_counter()
        elapsed = format_seconds(self.last_line - self.started)
        for name in self.names:
            if not self.tasks[name]:
                continue
            done = f"{self.items[name]}/{self.total} items" if self.total else f"{self.items[name]} items"
            if self.total:
                done += f" ({self.items[name] / self.total:.0%})"
            print(f"[{self.owner}] {name}: {done}, {self.tasks[name]} minibatches, {elapsed}", file=self.file)
        self.file.flush()

    def close(self) -> None:
        if self.tty:
            for bar in self.bars.values():
                bar.close()
        else:
            self._lines()
