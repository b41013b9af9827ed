"""Tests for neuraxle_stream.stats: ``pipeline.stats_``, its table and plot, progress and verbose.

Counts are exact (every minibatch's record comes back with it); times are
checked for consistency (p90 <= p99, busy = sum of durations) and, with a
deliberately slow step, for naming the bottleneck.
"""

from __future__ import annotations

import io
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from doubles import AddConstant, DoubleFailure, MeanCenterer, RaiseOn

from neuraxle_stream import (
    BaseTransformer,
    NonFittableMixin,
    ParallelQueuedFeatureUnion,
    ParallelWorkersWrapper,
    PipelineStats,
    QueueStats,
    SequentialQueuedPipeline,
    StageStats,
)
from neuraxle_stream.monitor import PROGRESS_EVERY, verbose_line
from neuraxle_stream.quantiles import EXACT_SAMPLES as _EXACT_SAMPLES
from neuraxle_stream.quantiles import Durations as _Durations
from neuraxle_stream.stats import StatsCollector


class Sleep(NonFittableMixin, BaseTransformer):
    """Sleep ``delay`` seconds per minibatch; return it unchanged."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay

    def transform(self, data_inputs: Any) -> Any:
        time.sleep(self.delay)
        return data_inputs


ITEMS = list(range(103))  # 11 minibatches of 10, the last one short


@pytest.mark.timeout(60)
def test_stage_and_queue_counts_are_exact(backend: str) -> None:
    pipeline = SequentialQueuedPipeline(
        [("a", 2, AddConstant(1)), ("b", AddConstant(1)), ("c", 2, 1, AddConstant(1))],
        batch_size=10,
        backend=backend,
        chain=False,  # a queue per step, as written
    )
    assert pipeline.transform(ITEMS) == [i + 3 for i in ITEMS]
    stats = pipeline.stats_
    assert isinstance(stats, PipelineStats) and list(stats.stages) == ["a", "b", "c"]
    for name, n_workers in (("a", 2), ("b", 1), ("c", 2)):
        stage = stats[name]
        assert stage is stats.stages[name] and isinstance(stage, StageStats)
        assert (stage.num_tasks, stage.num_items, stage.num_failures, stage.n_workers) == (11, 103, 0, n_workers)
        assert 0 < stage.ave_time <= stage.busy_time
        assert stage.ave_time * 11 == pytest.approx(stage.busy_time)
        assert 0 <= stage.p90_time <= stage.p99_time <= stage.busy_time
        queue = stats.queues[name]
        assert isinstance(queue, QueueStats) and queue.num_items == 11  # one per minibatch put
        # the documented definitions, from the stage's own totals
        assert 0 < stage.wall_time <= stats.wall_time + 1e-3  # two clocks: time.time and perf_counter
        assert queue.qps == pytest.approx(11 / stage.wall_time)
        assert queue.ave_get_wait == pytest.approx(stage.get_wait / 11)
        occupancy = 1.0 - stage.get_wait / (n_workers * stage.wall_time)
        assert queue.occupancy == pytest.approx(min(1.0, max(0.0, occupancy)))
        assert 0.0 <= queue.occupancy <= 1.0 and queue.ave_put_wait >= 0
    # a queue's writers are the stage before it: their waits for room, averaged over the puts
    # whose wait was reported (each worker reports a put's wait with its next minibatch, so
    # its last one is never reported: 11 puts less one per worker that ran)
    for writer, reader in (("a", "b"), ("b", "c")):
        workers_ran = len({span.worker for span in stats.timeline if span.stage == writer})
        assert stats.queues[reader].ave_put_wait == pytest.approx(stats[writer].put_wait / (11 - workers_ran))
    assert stats["c"].put_wait == 0.0  # the last stage puts on no queue of a stage
    assert len(stats.timeline) == 33
    assert sorted(Counter(span.stage for span in stats.timeline).items()) == [("a", 11), ("b", 11), ("c", 11)]
    assert stats.wall_time > 0


@pytest.mark.timeout(60)
def test_every_entry_point_sets_stats(backend: str) -> None:
    # MeanCenterer is a fitting barrier: "add" runs in one run, "again" in the next, on the output
    # of center's own fit_transform (in the parent: DESIGN.md section 6).
    X = np.arange(40.0).reshape(20, 2)
    pipeline = SequentialQueuedPipeline(
        [("add", AddConstant(1.0)), ("center", MeanCenterer()), ("again", AddConstant(1.0))],
        batch_size=4,
        backend=backend,
    )
    pipeline.fit_transform(X)
    assert [pipeline.stats_[n].num_tasks for n in ("add", "center", "again")] == [5, 0, 5]
    pipeline.fit(X)
    assert [pipeline.stats_[n].num_tasks for n in ("add", "center", "again")] == [5, 0, 0]
    pipeline.transform(X[:6])
    assert [pipeline.stats_[n].num_items for n in ("add", "center", "again")] == [6, 6, 6]
    stream = pipeline.stream(iter(X[:9]))
    next(stream)
    stream.close()  # closed early: the stats of what ran
    # at least the minibatch that gave the first output, at most all 3 (4 + 4 + 1 rows)
    add = pipeline.stats_["add"]
    assert 1 <= add.num_tasks <= 3
    assert add.num_items == [4, 8, 9][add.num_tasks - 1]
    assert len(list(pipeline.stream(iter(X[:9])))) == 9
    assert pipeline.stats_["again"].num_items == 9


@pytest.mark.timeout(60)
def test_union_and_wrapper_stats() -> None:
    union = ParallelQueuedFeatureUnion([("a", AddConstant(1)), ("b", 2, AddConstant(2))], batch_size=10, backend="thread")
    union.transform(ITEMS)
    assert {name: s.num_tasks for name, s in union.stats_.stages.items()} == {"a": 11, "b": 11}
    assert set(union.stats_.queues) == {"a", "b"}
    wrapper = ParallelWorkersWrapper(AddConstant(1), n_workers=2, batch_size=10, backend="thread")
    wrapper.transform(ITEMS)
    assert wrapper.stats_["addconstant"].num_items == 103


@pytest.mark.timeout(60)
def test_failures_are_counted(backend: str) -> None:
    items = list(range(40))
    items[25] = -1  # minibatch 2 of 4
    pipeline = SequentialQueuedPipeline(
        [("first", AddConstant(0)), ("check", RaiseOn(-1))], batch_size=10, backend=backend
    )
    with pytest.raises(DoubleFailure):
        pipeline.transform(items)
    stats = pipeline.stats_  # set by a failed call too
    assert stats["check"].num_failures == 1
    assert stats["first"].num_failures == 0
    assert stats["first"].num_tasks >= stats["check"].num_tasks >= 1
    assert any(span.failed for span in stats.timeline if span.stage == "check")


@pytest.mark.timeout(60)
def test_the_slow_stage_is_the_bottleneck_and_its_queue_shows_backpressure(backend: str) -> None:
    # 0.1 s a minibatch: the relations below hold by tenths of seconds, not milliseconds,
    # so a loaded runner that stalls a worker now and then does not turn them round.
    pipeline = SequentialQueuedPipeline(
        [("fast", AddConstant(1)), ("slow", 1, 1, Sleep(0.1)), ("after", AddConstant(1))],
        batch_size=2,
        backend=backend,
    )
    pipeline.transform(list(range(16)))  # 8 minibatches, 0.8 s in the slow step
    stats = pipeline.stats_
    assert stats.bottleneck == "slow"
    assert stats["slow"].busy_time >= 8 * 0.1 * 0.99  # a sleep lasts at least its time
    assert stats["slow"].p90_time >= 0.099
    # "fast" waits for room on the slow stage's queue, which it keeps full;
    # the stage after "slow" starves
    assert stats.queues["slow"].ave_put_wait > stats.queues["slow"].ave_get_wait
    assert stats.queues["after"].ave_get_wait > stats.queues["slow"].ave_get_wait
    assert stats.queues["slow"].occupancy > stats.queues["after"].occupancy
    table = str(stats)
    assert "Bottleneck: 'slow'" in table
    for word in ("step", "workers", "minibatches", "items", "failures", "mean", "p90", "p99", "busy",
                 "queue to", "per second", "put wait", "get wait", "occupancy"):
        assert word in table
    html = stats._repr_html_()
    assert html.count("<table>") == 2 and "Bottleneck: &#x27;slow&#x27;" in html


def test_table_columns_are_aligned() -> None:
    collector = StatsCollector("P", [("a_long_step_name", 1), ("b", 2)])
    stats = collector.snapshot()
    lines = str(stats).splitlines()
    assert lines[0].startswith("P stats:")
    header, row_a, row_b = lines[1:4]
    assert header.index("workers") + len("workers") == row_a.index(" 1 ") + 2 == row_b.index(" 2 ") + 2
    assert "Bottleneck: none" in lines[-1]


@pytest.mark.timeout(60)
def test_plot_returns_the_figure_and_saves_it_when_given_a_path(tmp_path: Any) -> None:
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    pipeline = SequentialQueuedPipeline([("a", AddConstant(1)), ("b", 2, Sleep(0.001))], batch_size=4, backend="thread")
    pipeline.transform(list(range(20)))
    figure = pipeline.stats_.plot()
    assert isinstance(figure, Figure) and not list(tmp_path.iterdir())
    assert figure.get_suptitle().startswith("SequentialQueuedPipeline: ")
    bars, timeline = figure.axes
    assert [t.get_text() for t in bars.get_legend().get_texts()] == ["busy", "waiting for input", "waiting for room"]
    assert [t.get_text() for t in timeline.get_legend().get_texts()][-1].startswith("start-up (")
    saved = pipeline.stats_.plot(tmp_path / "stats.png")
    assert isinstance(saved, Figure)
    assert (tmp_path / "stats.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    with pytest.raises(ImportError, match="needs matplotlib; install it with `pip install matplotlib`"):
        PipelineStats(owner="P").plot(tmp_path / "x.png")


def test_stats_before_any_call_and_dict_unchanged_by_transform() -> None:
    pipeline = SequentialQueuedPipeline([("a", AddConstant(1))], backend="thread")
    with pytest.raises(AttributeError, match="has no stats_ yet"):
        pipeline.stats_
    assert not hasattr(pipeline, "stats_")
    before = dict(pipeline.__dict__)
    pipeline.transform([1, 2])
    assert pipeline.__dict__ == before  # scikit-learn's check_dict_unchanged
    assert pipeline.stats_["a"].num_items == 2


def test_percentiles_past_the_exact_bound_are_within_one_percent() -> None:
    rng = np.random.default_rng(0)
    samples = rng.lognormal(mean=-5, sigma=1, size=_EXACT_SAMPLES + 5000)
    durations = _Durations()
    for s in samples:
        durations.add(float(s))
    assert durations.samples is None  # folded into the histogram
    for q in (0.5, 0.9, 0.99):
        assert durations.quantile(q) == pytest.approx(np.quantile(samples, q), rel=0.01)


# --- progress and verbose -----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_progress_on_a_non_tty_is_plain_lines(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = SequentialQueuedPipeline(
        [("a", AddConstant(1)), ("b", 2, AddConstant(1))], batch_size=10, backend=backend, progress=True
    )
    pipeline.transform(ITEMS)
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert lines[-2].startswith("[SequentialQueuedPipeline] a: 103/103 items (100%), 11 minibatches, ")
    assert lines[-1].startswith("[SequentialQueuedPipeline] b: 103/103 items (100%), 11 minibatches, ")
    list(pipeline.stream(iter(range(5))))  # no length: no total
    assert "[SequentialQueuedPipeline] a: 5 items, 1 minibatches, " in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_progress_lines_are_periodic(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # Counted without a clock: a period of 0 prints lines as the counts move (never
    # backwards, the last one complete); a period longer than the run prints the first
    # and the last line only.
    pipeline = SequentialQueuedPipeline([("step", AddConstant(0))], batch_size=1, backend="thread", progress=True)
    monkeypatch.setattr("neuraxle_stream.monitor.PROGRESS_EVERY", 0.0)
    pipeline.transform(list(range(10)))
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "[SequentialQueuedPipeline] starting 1 worker (step x1)..."
    counts = [int(re.match(r"\[SequentialQueuedPipeline\] step: (\d+)/10 items", line)[1]) for line in lines[1:]]
    assert counts == sorted(counts) and counts[-1] == 10
    assert lines[-1].startswith("[SequentialQueuedPipeline] step: 10/10 items (100%), 10 minibatches")
    monkeypatch.setattr("neuraxle_stream.monitor.PROGRESS_EVERY", 1e9)
    pipeline.transform(list(range(10)))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("[SequentialQueuedPipeline] starting 1 worker")
    assert lines[1].startswith("[SequentialQueuedPipeline] step: 10/10 items (100%), 10 minibatches")
    assert PROGRESS_EVERY >= 1  # the default keeps logs short


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.timeout(60)
def test_progress_on_a_terminal_draws_one_bar_per_stage(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    pipeline = SequentialQueuedPipeline(
        [("a", AddConstant(1)), ("b", AddConstant(1))], batch_size=10, backend="thread", progress=True
    )
    pipeline.transform(ITEMS)
    out = terminal.getvalue()
    assert "a: 100%" in out and "b: 100%" in out and "103/103" in out


class WaitForFile(NonFittableMixin, BaseTransformer):
    """Hold each minibatch until ``path`` exists (at most ``limit`` seconds): a stage the test releases."""

    def __init__(self, path: str = "", limit: float = 30.0) -> None:
        self.path, self.limit = path, limit

    def transform(self, data_inputs: Any) -> Any:
        deadline = time.monotonic() + self.limit
        while not os.path.exists(self.path) and time.monotonic() < deadline:
            time.sleep(0.005)
        return data_inputs


_BAR = re.compile(r"(\w+): +\d+%\|[^|\n\r]*\| *(\d+)/103")
_LINE = re.compile(r"\] (\w+): (\d+)/103 items")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class GatedOutput(io.StringIO):
    """The progress output; opens ``gate`` once step "a" shows rows done while "b" still shows none.

    "b" waits for the gate, so the output can show that only if each bar
    counts the rows of its own step. ``mid_run`` keeps the counts seen then.
    """

    def __init__(self, gate: Path, tty: bool) -> None:
        super().__init__()
        self.gate, self.tty = gate, tty
        self.latest: dict[str, int] = {}
        self.mid_run: dict[str, int] | None = None

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        for name, rows in (_BAR if self.tty else _LINE).findall(text):
            self.latest[name] = int(rows)
        if self.mid_run is None and self.latest.get("a", 0) > 0 and self.latest.get("b", 0) == 0:
            self.mid_run = dict(self.latest)
            self.gate.touch()
        return super().write(text)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("tty", [False, True], ids=["plain", "terminal"])
def test_progress_counts_each_step_separately_and_verbose_lines_never_tear_a_bar(
    backend: str, tty: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("neuraxle_stream.monitor.PROGRESS_EVERY", 0.01)
    monkeypatch.setattr("neuraxle_stream.monitor._REFRESH", 0.01)
    gate = tmp_path / "gate"
    out = GatedOutput(gate, tty)
    monkeypatch.setattr(sys, "stderr", out)
    monkeypatch.setattr(sys, "stdout", out)  # one terminal shows both
    pipeline = SequentialQueuedPipeline(
        [("a", AddConstant(1)), ("b", WaitForFile(str(gate)))], batch_size=10, backend=backend,
        max_queued_minibatches=2, progress=True, verbose=True, chain=False,
    )
    assert pipeline.transform(ITEMS) == [i + 1 for i in ITEMS]
    monkeypatch.undo()
    # "a" finished minibatches while "b" held its first one
    assert out.mid_run is not None and out.mid_run["a"] > 0 and out.mid_run.get("b", 0) == 0
    assert out.latest == {"a": 103, "b": 103}
    text = out.getvalue()
    assert text.startswith("[SequentialQueuedPipeline] starting 2 workers (a x1, b x1)...\n")
    # each physical line, as the terminal leaves it: what follows its last carriage return
    shown = [_ANSI.sub("", line.rsplit("\r", 1)[-1]) for line in text.split("\n")]
    verbose = [line for line in shown if "Processing" in line]
    assert len(verbose) == 2
    for line in verbose:
        assert re.fullmatch(r"\[SequentialQueuedPipeline\] \.+ \(step \d of 2\) Processing [ab], total= *\d+\.\ds", line)
    pieces = [_ANSI.sub("", piece) for line in text.split("\n") for piece in line.split("\r")]
    assert not [piece for piece in pieces if "Processing" in piece and ("%|" in piece or "items (" in piece)]
    if not tty:
        assert "\r" not in text and "\x1b" not in text


@pytest.mark.timeout(60)
def test_progress_on_a_terminal_of_0_columns_is_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    class ZeroColumns(FakeTerminal):
        def fileno(self) -> int:
            return 2

    terminal = ZeroColumns()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr("neuraxle_stream.monitor.os.get_terminal_size", lambda fd: os.terminal_size((0, 24)))
    pipeline = SequentialQueuedPipeline([("a", AddConstant(1))], batch_size=10, backend="thread", progress=True)
    pipeline.transform(ITEMS)
    monkeypatch.undo()
    lines = terminal.getvalue().splitlines()
    assert lines[0] == "[SequentialQueuedPipeline] starting 1 worker (a x1)..."
    assert lines[-1].startswith("[SequentialQueuedPipeline] a: 103/103 items (100%), 11 minibatches, ")


@pytest.mark.timeout(60)
def test_verbose_prints_a_scikit_learn_style_line_per_step(capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = SequentialQueuedPipeline(
        [("scale", AddConstant(1)), ("center", MeanCenterer()), ("last", AddConstant(1))],
        batch_size=4, backend="thread", verbose=True,
    )
    X = np.arange(16.0).reshape(8, 2)


    def actions() -> list[str]:
        lines = capsys.readouterr().out.splitlines()
        assert all(line.startswith("[SequentialQueuedPipeline] ") for line in lines)
        return [re.search(r"\((step \d of 3\) \w+ \w+), total= +\d+\.\ds$", line)[1] for line in lines]

    # "center" is a fitting barrier: scale runs, center is fitted with its own fit_transform
    # (whose output is not computed again by its workers), then the rest runs
    pipeline.fit_transform(X)
    assert actions() == [
        "step 1 of 3) Processing scale",
        "step 2 of 3) Fitting center",
        "step 3 of 3) Processing last",
    ]
    pipeline.transform(X)
    assert actions() == [
        "step 1 of 3) Processing scale", "step 2 of 3) Processing center", "step 3 of 3) Processing last"
    ]


def test_verbose_line_matches_scikit_learn() -> None:
    from sklearn.utils._user_interface import _message_with_time

    for seconds in (0.01, 12.345, 75.0):
        assert verbose_line("Pipeline", "(step 1 of 3) Processing scale", seconds) == _message_with_time(
            "Pipeline", "(step 1 of 3) Processing scale", seconds
        )
