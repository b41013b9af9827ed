"""Tests for neuraxle_stream.plan and neuraxle_stream.lifecycle: what a call decides, who owns its runtimes."""

from __future__ import annotations

import gc
import threading

import pytest
from doubles import AddConstant

from neuraxle_stream import (
    Identity,
    ParallelQueuedFeatureUnion,
    ParallelWorkersWrapper,
    SequentialQueuedPipeline,
)
from neuraxle_stream.lifecycle import peek_lifecycle
from neuraxle_stream.plan import Plan


def test_a_plan_reads_the_estimator_once_and_is_frozen() -> None:
    p = SequentialQueuedPipeline(
        [("a", AddConstant(1)), ("skip", "passthrough"), ("b", 2, Identity())],
        batch_size=5, backend="thread", keep_incomplete_batch=False, output_order="completion",
    )
    plan = p._plan()
    assert plan.caller == "SequentialQueuedPipeline"
    assert plan.names == ["a", "skip", "b"]
    assert plan.minibatching.batch_size == 5 and not plan.minibatching.keep_incomplete
    assert plan.backend.name == "thread" and not plan.ordered
    assert not plan.store.enabled  # memory=None: a null store
    assert [[d.name for d in lane] for lane in plan.lanes(0, 3)] == [["a", "b"]]
    assert plan.passthrough_only(1, 2) and not plan.passthrough_only(0, 2)
    with pytest.raises(AttributeError):
        plan.caller = "other"  # type: ignore[misc]


def test_backend_wins_over_use_processes() -> None:
    p = SequentialQueuedPipeline([Identity()], use_processes=True, backend="thread")
    assert p._plan().backend.name == "thread"
    assert SequentialQueuedPipeline([Identity()], use_processes=False)._plan().backend.name == "thread"
    assert SequentialQueuedPipeline([Identity()])._plan().backend.name == "process"


def test_a_wrapper_alone_uses_the_default_batch_size() -> None:
    assert ParallelWorkersWrapper(Identity(), backend="thread")._plan().minibatching.batch_size == 32


def test_a_union_has_one_lane_per_branch_left_in() -> None:
    union = ParallelQueuedFeatureUnion([("a", Identity()), ("d", "drop"), ("b", Identity())], backend="thread")
    plan = union._plan()
    assert [[d.name for d in lane] for lane in plan.lanes(0, 1)] == [["a"], ["b"]]
    assert plan.join([[1], [2]]) == [(1, 2)]


def test_plan_of_refuses_an_unknown_parameter() -> None:
    with pytest.raises(TypeError, match="batchsize"):
        Plan.of("P", "pipeline", [], batchsize=3)


def test_a_call_leaves_the_lifecycle_and_no_runtime() -> None:
    p = SequentialQueuedPipeline([("a", AddConstant(1))], backend="thread")
    assert peek_lifecycle(p) is None
    assert p.transform([1, 2]) == [2, 3]
    lifecycle = peek_lifecycle(p)
    assert lifecycle is not None and lifecycle.stats is p.stats_
    assert not lifecycle.kept and not lifecycle.running and not lifecycle.keep_alive


def test_with_keeps_one_runtime_and_close_stops_it() -> None:
    p = SequentialQueuedPipeline([("a", AddConstant(1))], backend="thread")
    with p:
        p.transform([1])
        p.transform([2])
        (runtime,) = p._lifecycle.kept.values()
        assert runtime.started
    assert not p._lifecycle.kept and not p._lifecycle.keep_alive


@pytest.mark.timeout(60)
def test_a_collected_composite_closes_the_runtimes_it_kept() -> None:
    p = SequentialQueuedPipeline([("a", AddConstant(1))], backend="thread")
    p.__enter__()
    p.transform([1])
    (runtime,) = p._lifecycle.kept.values()
    closed = threading.Event()
    original = runtime.close

    def close(graceful: bool = True) -> None:
        closed.set()
        original(graceful=graceful)

    runtime.close = close  # type: ignore[method-assign]
    del p
    gc.collect()
    assert closed.wait(10)
