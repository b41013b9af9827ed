"""Tests for neuraxle_stream.timeline: ``stats_.to_chrome_trace`` and ``stats_.plot_timeline``.

Only counts and ordering facts are checked (a worker's tasks never overlap,
a minibatch's task at a step starts after its task at the step before ends),
never durations: the workers and the parent read one clock.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from doubles import AddConstant, MultiplyBy
from sklearn.preprocessing import StandardScaler

from neuraxle_stream import ParallelQueuedFeatureUnion, PipelineStats, SequentialQueuedPipeline
from neuraxle_stream import timeline as timeline_module

N_ITEMS, BATCH_SIZE = 120, 10
N_MINIBATCHES = N_ITEMS // BATCH_SIZE
#: Float rounding of microsecond timestamps; far below any real gap between two tasks.
EPS_US = 1e-3

pytestmark = pytest.mark.timeout(120)


def _pipeline(backend: str) -> SequentialQueuedPipeline:
    return SequentialQueuedPipeline(
        [("add", 2, AddConstant(1.0)), ("times", 2, MultiplyBy(2.0))], batch_size=BATCH_SIZE, backend=backend,
        chain=False,  # a queue and workers per step
    )


def _trace(stats: PipelineStats, tmp_path: Path) -> list[dict[str, Any]]:
    path = stats.to_chrome_trace(tmp_path / "trace.json")
    events = json.loads(path.read_text())["traceEvents"]
    assert isinstance(events, list)
    return events


def _process_names(events: list[dict[str, Any]]) -> dict[int, str]:
    return {e["pid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "process_name"}


def _check_ordering(events: list[dict[str, Any]], steps: list[str]) -> None:
    """A worker's tasks never overlap; each minibatch passes the steps in order."""
    tasks = [e for e in events if e["ph"] == "X" and e.get("cat") == "task"]
    by_worker: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for e in tasks:
        by_worker[(e["pid"], e["tid"])].append(e)
    for spans in by_worker.values():
        spans.sort(key=lambda e: e["ts"])
        for before, after in itertools.pairwise(spans):
            assert before["ts"] + before["dur"] <= after["ts"] + EPS_US
    at = {(e["name"], e["args"]["minibatch"]): e for e in tasks}
    for upstream, downstream in itertools.pairwise(steps):
        for m in range(N_MINIBATCHES):
            up, down = at[(upstream, m)], at[(downstream, m)]
            assert up["ts"] + up["dur"] <= down["ts"] + EPS_US, (upstream, downstream, m)


def _check_counts(events: list[dict[str, Any]], steps: list[str]) -> None:
    """One complete event per minibatch per step, with its minibatch and rows; a counter per queue."""
    tasks = [e for e in events if e["ph"] == "X" and e.get("cat") == "task"]
    assert Counter(e["name"] for e in tasks) == {name: N_MINIBATCHES for name in steps}
    for name in steps:
        mine = [e for e in tasks if e["name"] == name]
        assert sorted(e["args"]["minibatch"] for e in mine) == list(range(N_MINIBATCHES))
        assert sum(e["args"]["n_items"] for e in mine) == N_ITEMS
    counters = {e["name"] for e in events if e["ph"] == "C"}
    assert {f"queue to {name}" for name in steps} <= counters


def test_chrome_trace_of_a_pipeline(backend: str, tmp_path: Path) -> None:
    pipeline = _pipeline(backend)
    out = pipeline.transform(np.arange(N_ITEMS, dtype=float))
    np.testing.assert_allclose(out, (np.arange(N_ITEMS) + 1.0) * 2.0)
    events = _trace(pipeline.stats_, tmp_path)
    _check_counts(events, ["add", "times"])
    _check_ordering(events, ["add", "times"])
    # a process per step, a thread per worker
    assert sorted(_process_names(events).values()) == ["add", "times"]
    threads = {(e["pid"], e["tid"]) for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert len(threads) == 4
    assert {(e["pid"], e["tid"]) for e in events if e["ph"] == "X"} <= threads


def test_queue_occupancy_stays_within_the_bound() -> None:
    pipeline = _pipeline("thread")
    pipeline.transform(np.arange(N_ITEMS, dtype=float))
    occupancy = timeline_module.queue_occupancy(pipeline.stats_)
    bounds = {q.name: q.bound for q in pipeline.stats_.timeline_info.queues}
    assert set(occupancy) == {"add", "times"}
    for name, points in occupancy.items():
        assert all(0 <= n <= bounds[name] for _, n in points)
        assert points[-1][1] == 0  # every minibatch left the queue
        times = [t for t, _ in points]
        assert times == sorted(times)


def test_queue_occupancy_over_the_runs_of_a_fit_transform() -> None:
    """Each run of a call has its own writers: every queue empties by the end of each."""
    pipeline = SequentialQueuedPipeline(
        [("add", 2, AddConstant(1.0)), ("scale", StandardScaler()), ("times", 2, MultiplyBy(2.0))],
        batch_size=BATCH_SIZE,
        backend="thread",
    )
    pipeline.fit_transform(np.arange(N_ITEMS, dtype=float).reshape(-1, 1))
    info = pipeline.stats_.timeline_info
    assert len({q.run for q in info.queues}) >= 2
    occupancy = timeline_module.queue_occupancy(pipeline.stats_)
    # "scale" gives its own fit_transform output in the parent (DESIGN.md section 6): no queue
    assert {"add", "times"} <= set(occupancy)
    for name, points in occupancy.items():
        assert points[-1][1] == 0, name
        assert all(n >= 0 for _, n in points)


def test_fit_transform_shows_the_fits_in_the_parent(tmp_path: Path) -> None:
    pipeline = SequentialQueuedPipeline(
        [("add", 2, AddConstant(1.0)), ("scale", StandardScaler())], batch_size=BATCH_SIZE, backend="thread"
    )
    pipeline.fit_transform(np.arange(N_ITEMS, dtype=float).reshape(-1, 1))
    events = _trace(pipeline.stats_, tmp_path)
    fits = [e for e in events if e["ph"] == "X" and e.get("cat") == "fit"]
    assert [e["name"] for e in fits] == ["fit scale"]
    assert _process_names(events)[fits[0]["pid"]] == "parent (fitting)"
    add_ends = [e["ts"] + e["dur"] for e in events if e["ph"] == "X" and e["name"] == "add"]
    # scale is fitted on add's whole output with its own fit_transform, whose output is the
    # pipeline's (DESIGN.md section 6): its workers run nothing in this call
    assert fits[0]["ts"] + EPS_US >= max(add_ends)
    assert not [e for e in events if e["ph"] == "X" and e["name"] == "scale"]
    pipeline.transform(np.arange(N_ITEMS, dtype=float).reshape(-1, 1))
    events = _trace(pipeline.stats_, tmp_path)
    scale = [e for e in events if e["ph"] == "X" and e["name"] == "scale"]
    assert len(scale) == N_MINIBATCHES


def test_union_has_a_lane_per_branch(backend: str, tmp_path: Path) -> None:
    union = ParallelQueuedFeatureUnion(
        [("plus", 2, AddConstant(1.0)), ("double", 1, MultiplyBy(2.0))], batch_size=BATCH_SIZE, backend=backend
    )
    union.fit_transform(np.arange(N_ITEMS, dtype=float).reshape(-1, 1))
    events = _trace(union.stats_, tmp_path)
    _check_counts(events, ["plus", "double"])
    names = sorted(_process_names(events).values())
    assert names == ["double (lane 1)", "plus (lane 0)"]
    lanes = {s.stage: s.lane for s in union.stats_.timeline}
    assert lanes == {"plus": 0, "double": 1}


def test_a_long_stream_keeps_the_most_recent_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(timeline_module, "TIMELINE_LIMIT", 50)
    pipeline = SequentialQueuedPipeline([("add", 1, AddConstant(1.0))], batch_size=1, backend="thread")
    n = 400
    assert sum(1 for _ in pipeline.stream(range(n))) == n
    spans = pipeline.stats_.timeline
    assert len(spans) == 50
    assert pipeline.stats_["add"].num_tasks == n  # the totals count every task
    assert sorted(s.minibatch for s in spans) == list(range(n - 50, n))
    assert len(pipeline.stats_.timeline_info.fed) <= 50


def test_the_figure_has_a_row_per_worker() -> None:
    pytest.importorskip("matplotlib", reason="plot_timeline() needs matplotlib (pip install -e '.[plot]')")
    from matplotlib.figure import Figure

    pipeline = _pipeline("thread")
    pipeline.transform(np.arange(N_ITEMS, dtype=float))
    fig = pipeline.stats_.plot_timeline()
    assert isinstance(fig, Figure)
    tasks, queues = fig.axes[:2]
    labels = [t.get_text() for t in tasks.get_yticklabels()]
    assert labels == ["add:0", "add:1", "times:0", "times:1"]
    assert {line.get_label() for line in queues.get_lines()} == {"to add", "to times"}


def test_the_figure_of_a_union_groups_rows_by_lane() -> None:
    pytest.importorskip("matplotlib", reason="plot_timeline() needs matplotlib (pip install -e '.[plot]')")
    union = ParallelQueuedFeatureUnion(
        [("plus", 2, AddConstant(1.0)), ("double", 1, MultiplyBy(2.0))], batch_size=BATCH_SIZE, backend="thread"
    )
    union.fit_transform(np.arange(N_ITEMS, dtype=float).reshape(-1, 1))
    labels = [t.get_text() for t in union.stats_.plot_timeline().axes[0].get_yticklabels()]
    assert labels == ["[0] plus:0", "[0] plus:1", "[1] double:0"]


def test_without_matplotlib_the_figure_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    pipeline = _pipeline("thread")
    pipeline.transform(np.arange(N_ITEMS, dtype=float))
    monkeypatch.setitem(__import__("sys").modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install -e \"\.\[plot\]\""):
        pipeline.stats_.plot_timeline()


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_chrome_trace_on_ray(ray_session, tmp_path: Path) -> None:
    pipeline = _pipeline("ray")
    pipeline.transform(np.arange(N_ITEMS, dtype=float))
    events = _trace(pipeline.stats_, tmp_path)
    _check_counts(events, ["add", "times"])
    _check_ordering(events, ["add", "times"])
