"""Tests for neuraxle_stream.tracing: ``trace=N`` records what each step did to the first N items.

Recording happens in the workers (other processes under the process
backend), so every function traced here is defined at module level: worker
processes import this module to unpickle them.
"""

from __future__ import annotations

import itertools
import json
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest
from doubles import AddConstant, DoubleFailure, MeanCenterer, RaiseOn, square

from neuraxle_stream import (
    BaseTransformer,
    InvalidParameterError,
    NonFittableMixin,
    ParallelQueuedFeatureUnion,
    ParallelWorkersWrapper,
    SequentialQueuedPipeline,
    TraceCall,
    TraceResult,
    TraceStage,
    last_trace,
    trace_func,
    tracing,
)
from neuraxle_stream.tracing import summarize


@trace_func
def scaled(x: Any) -> Any:
    """A helper the ``with_helper`` step calls: recorded in that step's stage."""
    return x * 10


@trace_func(stage_name="audit")
def audited(x: Any) -> Any:
    """A helper recorded in a stage of its own."""
    return x


def with_helper(x: Any) -> Any:
    """A per-item step that calls two traced helpers."""
    return audited(scaled(x)) + 1


class SeesTracing(NonFittableMixin, BaseTransformer):
    """Per item: whether its worker is recording calls."""

    def transform(self, data_inputs: Any) -> list[bool]:
        return [tracing._ACTIVE.get() is not None for _ in data_inputs]


def _pipeline(backend: str, **kwargs: Any) -> SequentialQueuedPipeline:
    steps = [("add", AddConstant(1)), ("sq", 2, square), ("helped", with_helper)]
    return SequentialQueuedPipeline(steps, batch_size=2, backend=backend, **kwargs)


def _expected(items: list[int]) -> list[int]:
    return [(x + 1) ** 2 * 10 + 1 for x in items]


@pytest.mark.timeout(60)
def test_trace_structure_and_values(backend: str) -> None:
    data = list(range(10))
    result = _pipeline(backend, chain=False).transform(data, trace=5)  # "add" in its one worker

    assert isinstance(result, TraceResult)
    assert result.keys() == ["add", "sq", "helped", "audit"]
    assert result.add is result["add"] and isinstance(result.sq, TraceStage)
    assert {"add", "sq", "helped", "audit"} <= set(dir(result))
    with pytest.raises(KeyError, match=r"No stage 'nope' in this trace; valid keys are: \['add', 'sq'"):
        result["nope"]
    with pytest.raises(AttributeError, match="valid keys are"):
        result.nope

    # A transformer: one call per minibatch, with the real inputs and outputs.
    add = result.add
    assert [c.name for c in add] == ["transform"] * 3
    assert [c.params["data_inputs"] for c in add] == [[0, 1], [2, 3], [4]]
    assert [c.retval for c in add] == [[1, 2], [3, 4], [5]]
    assert [c.minibatch for c in add] == [0, 1, 2]
    assert all(c.worker == 0 and c.duration_ns > 0 and c.error is None for c in add)
    assert add[0] is add.calls[0] and isinstance(add[0], TraceCall)

    # A per-item function: one call per item, exactly N items, in input order.
    sq = result.sq
    assert len(sq) == 5
    assert [c.params["x"] for c in sq] == [1, 2, 3, 4, 5]
    assert [c.retval for c in sq] == [1, 4, 9, 16, 25]
    assert {c.worker for c in sq} <= {0, 1}
    assert sq["square"].calls == sq.calls and sq.square.calls == sq.calls

    # @trace_func calls: after the step's own call, in the caller's stage (or the named one).
    helped = result.helped
    assert [c.name for c in helped] == ["with_helper", "scaled"] * 5
    assert [c.retval for c in helped["with_helper"]] == _expected(list(range(5)))
    assert [c.params["x"] for c in helped.scaled] == [1, 4, 9, 16, 25]
    assert [c.retval for c in result.audit] == [10, 40, 90, 160, 250]
    with pytest.raises(KeyError, match=r"valid keys are: \['with_helper', 'scaled'\]"):
        helped["nope"]
    assert last_trace() is result


@pytest.mark.timeout(60)
def test_stream_trace_reads_only_n_items(backend: str) -> None:
    source = itertools.count()  # endless: only the first N may be read
    result = _pipeline(backend).stream(source, trace=3)
    assert isinstance(result, TraceResult)
    assert sum(len(c.params["data_inputs"]) for c in result.add) == 3
    assert len(result.sq) == 3 and len(result.helped["with_helper"]) == 3
    assert next(source) == 3  # nothing beyond the first 3 items was taken


@pytest.mark.timeout(60)
def test_failed_trace_hands_back_partial_result(backend: str) -> None:
    # One worker per step, as written: minibatch 0 reaches the parent before minibatch 1 fails
    # (a chain of the two steps would run them on 2 workers at once, and the failure could win).
    steps = [("add", AddConstant(1)), ("bad", RaiseOn(4))]
    p = SequentialQueuedPipeline(steps, batch_size=2, backend=backend, chain=False)
    with pytest.raises(DoubleFailure) as info:
        p.transform(list(range(10)), trace=6)
    partial = info.value.trace  # type: ignore[attr-defined]
    assert isinstance(partial, TraceResult) and last_trace() is partial
    assert any("exception's `trace` attribute" in note for note in info.value.__notes__)
    assert "partial" in str(partial)
    failed = [c for c in partial.bad if c.error is not None]
    assert len(failed) == 1 and "found the bad value 4" in failed[0].error
    assert failed[0].params["data_inputs"] == [3, 4] and failed[0].retval is None
    assert [c.params["data_inputs"] for c in partial.add][:2] == [[0, 1], [2, 3]]


@pytest.mark.timeout(60)
def test_untraced_calls_are_unchanged(backend: str) -> None:
    before = last_trace()
    p = _pipeline(backend)
    assert p.transform(list(range(7))) == _expected(list(range(7)))
    assert list(p.stream(iter(range(3)))) == _expected(list(range(3)))
    assert last_trace() is before
    # Untraced, @trace_func is the plain function.
    assert with_helper(2) == 21
    # No recorder in the workers unless traced.
    sees = SequentialQueuedPipeline([("sees", SeesTracing())], batch_size=2, backend=backend)
    assert sees.transform([0, 1, 2]) == [False] * 3
    assert last_trace() is before
    assert sees.transform([0, 1, 2], trace=2).sees[0].retval == [True, True]


@pytest.mark.timeout(60)
def test_union_branches_are_stages_and_render() -> None:
    union = ParallelQueuedFeatureUnion([("a", AddConstant(1)), ("b", AddConstant(2))], backend="thread")
    X = np.arange(20.0).reshape(10, 2)
    result = union.transform(X, trace=4)
    assert result.keys() == ["a", "b"]
    np.testing.assert_array_equal(result.a[0].params["data_inputs"], X[:4])
    np.testing.assert_array_equal(result.b[0].retval, X[:4] + 2)
    saved = json.loads(result.to_json())
    assert list(saved["stages"]) == ["a", "b"] and saved["n_items"] == 4
    assert saved["stages"]["a"][0]["retval"].startswith("<ndarray shape=(4, 2) dtype=float64")
    page = result._repr_html_()
    assert page.count("<table>") == 2 and "&lt;ndarray shape=(4, 2)" in page
    assert repr(result) == str(result) and "stage 'a': 1 call" in str(result)


@pytest.mark.timeout(60)
def test_fit_transform_and_wrapper_trace() -> None:
    X = np.arange(40.0).reshape(20, 2)
    p = SequentialQueuedPipeline([("center", MeanCenterer()), ("add", AddConstant(1))], batch_size=4, backend="thread")
    result = p.fit_transform(X, trace=8)
    assert result.keys() == ["center", "add"]
    np.testing.assert_allclose(p["center"].mean_, X[:8].mean(axis=0))  # fitted on the traced items only
    assert sum(len(c.params["data_inputs"]) for c in result.center) == 8
    np.testing.assert_allclose(np.vstack([c.retval for c in result.add]), X[:8] - X[:8].mean(axis=0) + 1)

    wrapper = ParallelWorkersWrapper(square, n_workers=2, backend="thread", batch_size=3)
    traced = wrapper.transform([1, 2, 3, 4, 5], trace=4)
    assert [c.retval for c in traced[traced.keys()[0]]] == [1, 4, 9, 16]


@pytest.mark.timeout(60)
def test_trace_inside_with_leaves_kept_workers_alone() -> None:
    p = _pipeline("thread")
    with p:
        assert p.transform([1, 2]) == _expected([1, 2])
        kept = dict(p._lifecycle.kept)
        assert len(p.transform([1, 2, 3], trace=2).sq) == 2
        assert p._lifecycle.kept == kept


def test_trace_must_be_a_positive_int() -> None:
    p = _pipeline("thread")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InvalidParameterError, match=r"The 'trace' parameter of SequentialQueuedPipeline"
                           r"\.transform must be an int in \[1, inf\) or None\. Got"):
            p.transform([1, 2], trace=bad)


def test_summaries_are_short_and_raw_values_stay() -> None:
    big = np.random.default_rng(0).random((1000, 1000)).astype(np.float32)
    text = summarize(big)
    assert len(text) < 200
    assert text.startswith("<ndarray shape=(1000, 1000) dtype=float32 sha256=")
    assert " mean=0.5" in text and " min=" in text and " max=" in text and text.endswith(" nan=0>")
    with_nan = np.array([1.0, np.nan, 3.0])
    assert "mean=2 min=1 max=3 nan=1" in summarize(with_nan)

    call = TraceCall("transform", "s", {"data_inputs": big}, big * 2, 1000, 0, 0)
    assert call.params["data_inputs"] is big  # summarised only when printed
    stage = TraceStage("s", [call])
    assert len(str(stage)) < 700  # header, rule and one row holding two arrays
    result = TraceResult(["s"], 1000)
    result["s"].calls.append(call)
    assert len(str(result)) < 800

    frame = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]})
    assert summarize(frame).startswith("<DataFrame shape=(2, 2) columns=['a', 'b'] sha256=")
    long_list = summarize(list(range(1000)))
    assert long_list == "[0, 1, 2, 3, ...(1000 items)]"
    assert summarize("z" * 500).endswith("...(500 chars)") and len(summarize("z" * 500)) < 100


def test_tensor_summary_names_device() -> None:
    torch = pytest.importorskip("torch")
    assert "torch" in sys.modules
    text = summarize(torch.ones(3, 4))
    assert text.startswith("<Tensor shape=(3, 4) dtype=torch.float32 device=cpu sha256=")
    assert "mean=1 min=1 max=1 nan=0" in text
