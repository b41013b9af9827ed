"""Timing and memory measurement shared by every section.

Timing: ``time.perf_counter``, one warm-up call (which also starts the
workers of the runtimes that keep them), then a few timed repeats; the best
and the median are both kept.

Memory: the resident set size (RSS) of a process *tree*, the process and all
its descendants, sampled by a background thread. RSS counts pages shared
between processes (forked copies of NumPy, shared-memory segments) once per
process, so a tree's sum overstates what the machine really uses; it is the
same measure for every row, which is what the comparison needs.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import psutil

MB = 1024 * 1024


def tree_rss(root: psutil.Process, cpu: dict[int, float] | None = None) -> int:
    """Bytes of RSS of ``root`` and all its descendants (0 once it has ended).

    When ``cpu`` is given, it is updated with the CPU seconds each process of
    the tree has used so far, by pid.
    """
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):  # ended between the listing and the read
            total += proc.memory_info().rss
            if cpu is not None:
                times = proc.cpu_times()
                cpu[proc.pid] = times.user + times.system
    return total


def tree_cpu_seconds() -> float:
    """CPU seconds used so far by this process and its descendants, reaped ones included.

    A process's own time, plus the time of the children it has waited for;
    a worker reaped by a forkserver counts in the forkserver's.
    """
    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, steal included)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


class RssSampler:
    """Samples the RSS of a process tree every ``interval`` seconds in a thread.

    Use as a context manager; ``peak_mb`` is the highest sum seen, ``series``
    the ``(seconds, MB, extra())`` samples when ``keep_series`` is set, and
    ``other_load`` the share of the machine's CPU time (0 to 1) that processes
    outside the tree used meanwhile: other work on the machine that may have
    slowed the measurement down.
    """

    def __init__(
        self,
        pid: int,
        interval: float = 0.1,
        keep_series: bool = False,
        extra: Callable[[], Any] | None = None,
    ) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.keep_series = keep_series
        self.extra = extra
        self.peak = 0
        self.series: list[tuple[float, float, Any]] = []
        self.cpu: dict[int, float] = {}
        self.other_load: float | None = None
        self._busy0 = self._cpu0 = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._t0 = 0.0

    @property
    def peak_mb(self) -> float:
        """The highest tree RSS seen, in MiB."""
        return self.peak / MB

    def sample(self) -> None:
        """Take one sample now."""
        rss = tree_rss(self.root, self.cpu)
        self.peak = max(self.peak, rss)
        if self.keep_series:
            extra = self.extra() if self.extra is not None else None
            self.series.append((time.perf_counter() - self._t0, rss / MB, extra))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> RssSampler:
        self._t0 = time.perf_counter()
        self._busy0 = busy_seconds()
        self.sample()
        self._cpu0 = sum(self.cpu.values())
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
        wall = time.perf_counter() - self._t0
        ours = sum(self.cpu.values()) - self._cpu0
        other = busy_seconds() - self._busy0 - ours
        cores = psutil.cpu_count() or 1
        self.other_load = max(0.0, other / (wall * cores)) if wall > 0 else None


def repeat_timed(
    run: Callable[[], Any], repeats: int, keep: Callable[[Any], Any] | None = None
) -> tuple[list[float], Any]:
    """Call ``run`` ``repeats`` times; return the durations and ``keep`` of the first output.

    The output is dropped (and garbage collected) before the next call, so
    two outputs are never held at once.
    """
    times: list[float] = []
    kept = None
    for r in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
        if r == 0 and keep is not None:
            kept = keep(out)
        del out
    return times, kept


def summarize(times: list[float]) -> dict[str, Any]:
    """Best and median of a list of durations (seconds)."""
    return {
        "times_s": [round(t, 6) for t in times],
        "best_s": min(times),
        "median_s": statistics.median(times),
    }
