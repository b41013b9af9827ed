"""Tests for neuraxle_stream.hooks: hooks run in every worker, around its life and each minibatch.

Hooks run in the workers (in other processes under the process backend), so
:class:`FileRecordingHook` writes one JSON file per event and the test reads
them back. Every hook here is defined at module level: worker processes
import this module to unpickle them.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from doubles import (
    AddConstant,
    DoubleFailure,
    MeanCenterer,
    MinibatchRecorder,
    RaiseOn,
    TouchesThenWaits,
    read_minibatches,
)

from neuraxle_stream import (
    BaseTransformer,
    Identity,
    InvalidParameterError,
    NonFittableMixin,
    ParallelQueuedFeatureUnion,
    ParallelWorkersWrapper,
    PipelineHook,
    PipelineStats,
    SequentialQueuedPipeline,
    StageInfo,
    TaskStatsHook,
)


class FileRecordingHook(PipelineHook):
    """Write a JSON file per stage enter/exit and per minibatch (in order, per worker copy)."""

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir

    def _write(self, event: str, stage: StageInfo, index: int | None = None) -> None:
        self.seq = getattr(self, "seq", 0) + 1
        record = {
            "event": event,
            "stage": stage.name,
            "position": stage.index,
            "n_workers": stage.n_workers,
            "worker": stage.worker_index,
            "index": index,
            "seq": self.seq,
            "pid": os.getpid(),
            "thread": threading.current_thread().name,
        }
        (Path(self.log_dir) / f"{uuid.uuid4().hex}.json").write_text(json.dumps(record))

    @contextmanager
    def stage_hook(self, stage: StageInfo) -> Iterator[None]:
        self._write("stage_enter", stage)
        yield
        self._write("stage_exit", stage)

    @contextmanager
    def task_hook(self, stage: StageInfo, task: Any) -> Iterator[None]:
        self._write("task_enter", stage, task.index)
        try:
            yield
        finally:
            self._write("task_exit", stage, task.index)


def read_records(log_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in log_dir.glob("*.json")]


class SwallowingHook(PipelineHook):
    """A badly written task hook: it catches the step's exception and does not re-raise it."""

    @contextmanager
    def task_hook(self, stage: StageInfo, task: Any) -> Iterator[None]:
        try:  # noqa: SIM105 - written out as a hook author would
            yield
        except Exception:
            pass


class RaisingHook(PipelineHook):
    """Raise ``LookupError`` where told: entering or leaving a task or the stage."""

    def __init__(self, where: str = "task_enter", at: int = 3) -> None:
        self.where = where
        self.at = at

    @contextmanager
    def stage_hook(self, stage: StageInfo) -> Iterator[None]:
        if self.where == "stage_enter":
            raise LookupError("stage hook failed to enter")
        yield
        if self.where == "stage_exit":
            raise LookupError("stage hook failed to exit")

    @contextmanager
    def task_hook(self, stage: StageInfo, task: Any) -> Iterator[None]:
        if self.where == "task_enter" and task.index == self.at:
            raise LookupError(f"task hook failed entering minibatch {task.index}")
        yield
        if self.where == "task_exit" and task.index == self.at:
            raise LookupError(f"task hook failed leaving minibatch {task.index}")


class RaisesStopIteration(NonFittableMixin, BaseTransformer):
    """Raise ``StopIteration`` on a minibatch holding 5: control flow a hook must not absorb."""

    def transform(self, data_inputs: Any) -> Any:
        if 5 in list(data_inputs):
            raise StopIteration("the step ran out")
        return data_inputs


class SlowStep(NonFittableMixin, BaseTransformer):
    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay

    def transform(self, data_inputs: Any) -> Any:
        time.sleep(self.delay)
        return data_inputs


ITEMS = list(range(50))  # 10 minibatches of 5


@pytest.mark.timeout(60)
def test_hook_calls_per_stage_and_worker_equal_the_minibatches(backend: str, tmp_path: Path) -> None:
    hooks_dir, steps_dir = tmp_path / "hooks", tmp_path / "steps"
    hooks_dir.mkdir()
    steps_dir.mkdir()
    # "seen" records, from inside the step, which worker ran each minibatch: the reference
    pipeline = SequentialQueuedPipeline(
        [("add", 2, AddConstant(1)), ("seen", 2, MinibatchRecorder(str(steps_dir))), ("last", AddConstant(0))],
        batch_size=5,
        backend=backend,
        hooks=[FileRecordingHook(str(hooks_dir))],
        chain=False,  # the workers as written (tests/test_chaining.py: chained)
    )
    assert pipeline.transform(ITEMS) == [i + 1 for i in ITEMS]
    records = read_records(hooks_dir)
    stats = pipeline.stats_
    for position, (name, n_workers) in enumerate([("add", 2), ("seen", 2), ("last", 1)]):
        mine = [r for r in records if r["stage"] == name]
        assert {(r["position"], r["n_workers"]) for r in mine} == {(position, n_workers)}
        # the stage hook: once per worker, entered and exited
        for event in ("stage_enter", "stage_exit"):
            assert sorted(r["worker"] for r in mine if r["event"] == event) == list(range(n_workers))
        # the task hook: once per minibatch, each minibatch once
        for event in ("task_enter", "task_exit"):
            assert sorted(r["index"] for r in mine if r["event"] == event) == list(range(10))
        # per worker: entered and left the same minibatches
        for w in range(n_workers):
            entered = sorted(r["index"] for r in mine if r["event"] == "task_enter" and r["worker"] == w)
            assert entered == sorted(r["index"] for r in mine if r["event"] == "task_exit" and r["worker"] == w)
        assert stats[name].num_tasks == 10
        # each worker index is one worker (a process or a thread of its own)
        assert len({(r["worker"], r["pid"], r["thread"]) for r in mine}) == n_workers
        assert len({(r["pid"], r["thread"]) for r in mine}) == n_workers
        # each worker's copy: stage enter first, stage exit after its last minibatch
        for w in range(n_workers):
            seqs = {r["event"]: [] for r in mine}
            for r in mine:
                if r["worker"] == w:
                    seqs[r["event"]].append(r["seq"])
            assert seqs["stage_enter"] == [1]
            assert max(seqs["task_exit"], default=1) < seqs["stage_exit"][0]
    # the task hook of each minibatch ran where the step itself ran it (minibatch k starts at 5k + 1)
    ran = {batch["first"]: (batch["pid"], batch["thread"]) for batch in read_minibatches(steps_dir)}
    assert sorted(ran) == [5 * k + 1 for k in range(10)]
    for r in records:
        if r["stage"] == "seen" and r["event"].startswith("task"):
            assert (r["pid"], r["thread"]) == ran[5 * r["index"] + 1]
    where = {(r["pid"], r["thread"]) for r in records}
    if backend == "process":
        assert os.getpid() not in {pid for pid, _ in where}  # they ran in the workers
    else:
        assert all(thread.startswith("neuraxle_stream:") for _, thread in where)


@pytest.mark.timeout(60)
def test_stage_info_index_is_the_position_in_the_pipeline(tmp_path: Path) -> None:
    # MeanCenterer is a fitting barrier: "center" runs in a second run, first of its lane.
    pipeline = SequentialQueuedPipeline(
        [("add", AddConstant(1.0)), ("center", MeanCenterer()), ("again", AddConstant(1.0))],
        batch_size=4,
        backend="thread",
        hooks=(FileRecordingHook(str(tmp_path)),),
    )
    pipeline.fit_transform(np.arange(16.0).reshape(8, 2))
    positions = {(r["stage"], r["position"]) for r in read_records(tmp_path)}
    # in fit_transform "center" gives its own fit_transform output, in the parent (DESIGN.md 6)
    assert positions == {("add", 0), ("again", 2)}
    pipeline.transform(np.arange(16.0).reshape(8, 2))
    positions = {(r["stage"], r["position"]) for r in read_records(tmp_path)}
    assert positions == {("add", 0), ("center", 1), ("again", 2)}


@pytest.mark.timeout(60)
def test_hooks_run_in_union_branches_and_in_a_wrapper(tmp_path: Path) -> None:
    union = ParallelQueuedFeatureUnion(
        [("a", AddConstant(1)), ("b", 2, AddConstant(2))],
        batch_size=5, backend="thread", hooks=[FileRecordingHook(str(tmp_path / "u"))],
    )
    (tmp_path / "u").mkdir()
    union.transform(ITEMS)
    records = read_records(tmp_path / "u")
    for branch, position in (("a", 0), ("b", 1)):
        tasks = [r for r in records if r["stage"] == branch and r["event"] == "task_enter"]
        assert sorted(r["index"] for r in tasks) == list(range(10))
        assert {r["position"] for r in tasks} == {position}
    (tmp_path / "w").mkdir()
    wrapper = ParallelWorkersWrapper(
        AddConstant(1), n_workers=2, batch_size=5, backend="thread",
        hooks=[FileRecordingHook(str(tmp_path / "w"))],
    )
    wrapper.transform(ITEMS)
    tasks = [r for r in read_records(tmp_path / "w") if r["event"] == "task_enter"]
    assert sorted(r["index"] for r in tasks) == list(range(10))
    # a wrapper inside a pipeline: its hooks run in its own stage only
    (tmp_path / "nested").mkdir()
    nested = ParallelWorkersWrapper(
        AddConstant(1), n_workers=2, hooks=[FileRecordingHook(str(tmp_path / "nested"))]
    )
    pipeline = SequentialQueuedPipeline(
        [("first", AddConstant(1)), ("w", nested)], batch_size=5, backend="thread", chain=False,
    )
    assert pipeline.transform(ITEMS) == [i + 2 for i in ITEMS]
    records = read_records(tmp_path / "nested")
    assert {(r["stage"], r["position"], r["n_workers"]) for r in records} == {("w", 1, 2)}
    assert sorted(r["index"] for r in records if r["event"] == "task_exit") == list(range(10))


@pytest.mark.timeout(60)
def test_a_hook_that_swallows_the_step_error_does_not_hide_it(backend: str) -> None:
    pipeline = SequentialQueuedPipeline(
        [("check", RaiseOn(-1))], batch_size=5, backend=backend, hooks=[SwallowingHook()]
    )
    items = list(range(20))
    items[12] = -1
    with pytest.raises(DoubleFailure, match="found the bad value -1") as info:
        pipeline.transform(items)
    assert "step 'check', worker 0, minibatch 2" in "".join(info.value.__notes__)
    assert pipeline.stats_["check"].num_failures == 1
    assert pipeline.transform([1, 2]) == [1, 2]  # usable again


@pytest.mark.timeout(60)
def test_stop_iteration_from_a_step_is_not_absorbed_by_a_hook() -> None:
    pipeline = SequentialQueuedPipeline(
        [("stops", RaisesStopIteration())], batch_size=2, backend="thread", hooks=[SwallowingHook()]
    )
    # The run's generator turns the StopIteration into a RuntimeError (PEP 479);
    # either way the call fails: no output is returned short.
    with pytest.raises((StopIteration, RuntimeError)) as info:
        pipeline.transform(list(range(10)))
    error = info.value if isinstance(info.value, StopIteration) else info.value.__cause__
    assert isinstance(error, StopIteration) and error.args == ("the step ran out",)
    assert pipeline.stats_["stops"].num_failures == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["task_enter", "task_exit"])
def test_a_raising_task_hook_fails_the_run(backend: str, where: str) -> None:
    pipeline = SequentialQueuedPipeline(
        [("add", AddConstant(1)), ("hooked", 2, AddConstant(1))],
        batch_size=5, backend=backend, hooks=[PipelineHook(), RaisingHook(where, at=3)],
    )
    with pytest.raises(LookupError, match=f"task hook failed {'entering' if where == 'task_enter' else 'leaving'} minibatch 3") as info:
        pipeline.transform(ITEMS)
    notes = info.value.__notes__
    verb = "entering" if where == "task_enter" else "leaving"
    assert f"Raised {verb} the task_hook of RaisingHook." in notes
    assert any("minibatch 3." in note and "step 'add'" in note for note in notes)
    stats = pipeline.stats_
    assert stats["add"].num_failures == 1  # the first stage with a hook that raises
    assert pipeline.set_params(hooks=None).transform([1]) == [3]


@pytest.mark.timeout(60)
def test_a_stage_hook_that_fails_to_enter_fails_the_start(backend: str) -> None:
    pipeline = SequentialQueuedPipeline(
        [("add", AddConstant(1))], batch_size=5, backend=backend, hooks=[RaisingHook("stage_enter")]
    )
    with pytest.raises(LookupError, match="stage hook failed to enter") as info:
        pipeline.transform(ITEMS)
    assert "Raised entering the stage_hook of RaisingHook." in info.value.__notes__
    assert any("step 'add', worker 0, setup()" in note for note in info.value.__notes__)


@pytest.mark.timeout(60)
def test_a_stage_hook_that_fails_to_exit_fails_the_call() -> None:
    pipeline = SequentialQueuedPipeline(
        [("add", 2, AddConstant(1))], batch_size=5, backend="thread", hooks=[RaisingHook("stage_exit")]
    )
    with pytest.raises(LookupError, match="stage hook failed to exit") as info:
        pipeline.transform(ITEMS)
    assert "Raised leaving the stage_hook of RaisingHook." in info.value.__notes__


def test_hooks_must_be_pipeline_hooks() -> None:
    pipeline = SequentialQueuedPipeline([Identity()], backend="thread", hooks=[TaskStatsHook(), "log"])
    with pytest.raises(InvalidParameterError, match="must be a list of PipelineHook instances or None"):
        pipeline.transform([1])


class NotAContextManager(PipelineHook):
    def task_hook(self, stage: StageInfo, task: Any) -> Any:  # forgot @contextmanager
        return None


@pytest.mark.timeout(60)
def test_a_task_hook_that_is_not_a_context_manager_is_reported() -> None:
    pipeline = SequentialQueuedPipeline([("add", AddConstant(1))], backend="thread", hooks=[NotAContextManager()])
    with pytest.raises(TypeError, match=r"NotAContextManager.task_hook must be a @contextmanager method"):
        pipeline.transform([1, 2])


# --- TaskStatsHook and report() ------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_task_stats_hook_logs_one_line_per_stage_at_the_end(backend: str, caplog: pytest.LogCaptureFixture) -> None:
    pipeline = SequentialQueuedPipeline(
        [("add", 2, AddConstant(1)), ("check", RaiseOn(-1))],
        batch_size=5, backend=backend, hooks=[TaskStatsHook()],
    )
    with caplog.at_level(logging.INFO, logger="neuraxle_stream"):
        pipeline.transform(ITEMS)
    lines = [r.getMessage() for r in caplog.records if r.name == "neuraxle_stream"]
    assert len(lines) == 2
    assert lines[0].startswith("[SequentialQueuedPipeline] add: 10 tasks, 50 items, 0 failures, mean ")
    assert lines[1].startswith("[SequentialQueuedPipeline] check: 10 tasks, 50 items, 0 failures, mean ")
    assert all(" p90 " in line and " p99 " in line for line in lines)


@pytest.mark.timeout(60)
def test_task_stats_hook_reports_every_interval_while_running(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # The step holds its first minibatch until two interval lines were logged: no
    # guess at how many lines fit in a run of some length on a loaded machine.
    release = tmp_path / "release"

    class ReleaseAfterTwoRunningLines(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.INFO)
            self.running = 0

        def emit(self, record: logging.LogRecord) -> None:
            if "slow (running):" in record.getMessage():
                self.running += 1
                if self.running == 2:
                    release.touch()

    handler = ReleaseAfterTwoRunningLines()
    logger = logging.getLogger("neuraxle_stream")
    pipeline = SequentialQueuedPipeline(
        [("slow", TouchesThenWaits(release=str(release), seconds=30))],
        batch_size=1, backend="thread", hooks=[TaskStatsHook(interval=0.05)],
    )
    logger.addHandler(handler)
    try:
        with caplog.at_level(logging.INFO, logger="neuraxle_stream"):
            pipeline.transform(list(range(12)))
    finally:
        logger.removeHandler(handler)
    assert release.exists()  # released by the second interval line, not by the 30 s bound
    lines = [r.getMessage() for r in caplog.records if r.name == "neuraxle_stream"]
    running = [line for line in lines if "slow (running):" in line]
    assert len(running) >= 2
    assert lines.index(running[1]) < len(lines) - 1  # while running: before the final line
    assert lines[-1].startswith("[SequentialQueuedPipeline] slow: 12 tasks, 12 items")


class Reports(PipelineHook):
    """Keeps what ``report`` received: it runs in the parent, so the test sees it."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.reports: list[tuple[PipelineStats, bool]] = []

    def report(self, stats: PipelineStats, final: bool) -> None:
        self.reports.append((stats, final))
        if self.fail:
            raise OSError("cannot write the report")


@pytest.mark.timeout(60)
def test_report_runs_in_the_parent_once_per_call(backend: str) -> None:
    hook = Reports()
    pipeline = SequentialQueuedPipeline([("add", AddConstant(1))], batch_size=5, backend=backend, hooks=[hook])
    pipeline.transform(ITEMS)
    list(pipeline.stream(range(7)))
    assert [final for _, final in hook.reports] == [True, True]
    assert hook.reports[0][0]["add"].num_tasks == 10 and hook.reports[1][0]["add"].num_tasks == 2
    assert hook.reports[1][0] is pipeline.stats_


@pytest.mark.timeout(60)
def test_a_failing_report_fails_a_call_but_never_hides_a_step_error(caplog: pytest.LogCaptureFixture) -> None:
    pipeline = SequentialQueuedPipeline(
        [("check", RaiseOn(-1))], backend="thread", hooks=[Reports(fail=True)]
    )
    with pytest.raises(OSError, match="cannot write the report"):
        pipeline.transform([1, 2])
    with pytest.raises(DoubleFailure):
        pipeline.transform([1, -1])
    assert "A hook's report failed after the call failed." in caplog.text
