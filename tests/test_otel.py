"""The OpenTelemetry hook: spans per call, per worker and per minibatch, one trace.

Spans go to the SDK's ``InMemorySpanExporter``. On threads the workers end
their spans in the parent's provider; worker processes send theirs back with
their log records, so the same exporter sees every span on both backends.
Skipped when ``opentelemetry-sdk`` is not installed (``pip install -e ".[otel]"``).
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytest.importorskip("opentelemetry.sdk.trace")

from doubles import AddConstant
from faults import RaisesAt
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from neuraxle_stream import (
    BaseTransformer,
    Identity,
    NonFittableMixin,
    ParallelQueuedFeatureUnion,
    SequentialQueuedPipeline,
)
from neuraxle_stream.otel import OpenTelemetryHook

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.clear()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def _by_name(spans: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for span in spans:
        out.setdefault(span.name, []).append(span)
    return out


def _check_tree(spans: Any, run_name: str, stages: dict[str, tuple[int, int]]) -> Any:
    """One run span; per stage, one span per worker and one per minibatch; one trace."""
    names = _by_name(spans)
    (run,) = names[run_name]
    assert run.parent is None
    assert {s.context.trace_id for s in spans} == {run.context.trace_id}
    for stage, (n_workers, n_minibatches) in stages.items():
        workers = names[f"stage {stage}"]
        assert len(workers) == n_workers
        assert all(w.parent.span_id == run.context.span_id for w in workers)
        assert sorted(w.attributes["neuraxle_stream.worker_index"] for w in workers) == list(range(n_workers))
        tasks = [s for name, group in names.items() if name.startswith(f"{stage} minibatch ") for s in group]
        assert sorted(t.attributes["neuraxle_stream.minibatch"] for t in tasks) == list(range(n_minibatches))
        worker_ids = {w.context.span_id for w in workers}
        assert all(t.parent.span_id in worker_ids for t in tasks)
        # every minibatch span lies within its worker's span
        spans_of = {w.context.span_id: w for w in workers}
        for t in tasks:
            w = spans_of[t.parent.span_id]
            assert w.start_time <= t.start_time <= t.end_time <= w.end_time
    return run


def test_spans_per_run_stage_and_minibatch_in_one_trace(
    backend: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    pipeline = SequentialQueuedPipeline(
        [("add", AddConstant(1.0)), ("two", 2, Identity())],
        batch_size=3,
        backend=backend,
        hooks=[OpenTelemetryHook(provider)],
        chain=False,  # a stage span per worker as written
    )
    X = np.arange(20.0).reshape(10, 2)
    np.testing.assert_array_equal(pipeline.transform(X), X + 1)
    spans = exporter.get_finished_spans()
    assert len(spans) == 1 + (1 + 2) + 2 * 4
    _check_tree(spans, "SequentialQueuedPipeline", {"add": (1, 4), "two": (2, 4)})
    pids = {s.attributes["neuraxle_stream.pid"] for s in spans if s.name.startswith("stage ")}
    if backend == "process":
        assert os.getpid() not in pids and len(pids) == 3  # made in the workers, exported here
    else:
        assert pids == {os.getpid()}
    items = sum(s.attributes["neuraxle_stream.num_items"] for s in spans if s.name.startswith("add minibatch"))
    assert items == 10


def test_each_call_is_its_own_trace(provider: TracerProvider, exporter: InMemorySpanExporter) -> None:
    pipeline = SequentialQueuedPipeline(
        [("add", AddConstant(1.0))], batch_size=2, backend="thread", hooks=[OpenTelemetryHook(provider)]
    )
    pipeline.transform([1.0, 2.0, 3.0])
    pipeline.fit_transform([1.0, 2.0])
    runs = _by_name(exporter.get_finished_spans())["SequentialQueuedPipeline"]
    assert len(runs) == 2 and runs[0].context.trace_id != runs[1].context.trace_id


def test_union_branches_are_children_of_the_run(
    backend: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    union = ParallelQueuedFeatureUnion(
        [("a", Identity()), ("b", AddConstant(1.0))], batch_size=2, backend=backend,
        hooks=[OpenTelemetryHook(provider)],
    )
    union.transform(np.zeros((4, 1)))
    _check_tree(exporter.get_finished_spans(), "ParallelQueuedFeatureUnion", {"a": (1, 2), "b": (1, 2)})


def test_a_failing_minibatch_marks_its_span_and_the_run(
    backend: str, provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    pipeline = SequentialQueuedPipeline(
        [("fails", RaisesAt(at=2))], batch_size=1, backend=backend, hooks=[OpenTelemetryHook(provider)]
    )
    with pytest.raises(ValueError, match="boom at 2"):
        pipeline.transform(list(range(4)))
    names = _by_name(exporter.get_finished_spans())
    (failed,) = names["fails minibatch 2"]
    assert failed.status.status_code is StatusCode.ERROR
    assert any(e.name == "exception" and "boom at 2" in str(e.attributes["exception.message"]) for e in failed.events)
    (run,) = names["SequentialQueuedPipeline"]
    assert run.status.status_code is StatusCode.ERROR
    assert names["stage fails"]  # the worker's span ends and reaches the exporter too


class MakesSpan(NonFittableMixin, BaseTransformer):
    """A step that opens its own span with the global tracer API."""

    def transform(self, data_inputs: Any) -> Any:
        with trace.get_tracer("user").start_as_current_span("user work"):
            return data_inputs


def test_minibatch_span_is_current_while_the_step_runs_on_threads(exporter: InMemorySpanExporter) -> None:
    # the step's own span uses the global provider: give the test a private one
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("user")
    original = trace.get_tracer

    def get_tracer(name: str, *args: Any, **kwargs: Any) -> Any:
        return tracer if name == "user" else original(name, *args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(trace, "get_tracer", get_tracer)
    try:
        pipeline = SequentialQueuedPipeline(
            [("mine", MakesSpan())], batch_size=2, backend="thread", hooks=[OpenTelemetryHook(provider)]
        )
        pipeline.transform([1, 2, 3])
    finally:
        mp.undo()
    names = _by_name(exporter.get_finished_spans())
    minibatches = {s.context.span_id for n, g in names.items() if n.startswith("mine minibatch") for s in g}
    assert len(names["user work"]) == 2
    assert {s.parent.span_id for s in names["user work"]} == minibatches


def test_shipped_spans_never_reach_the_application_handlers(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    records: list[logging.LogRecord] = []

    class Counter(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    root = logging.getLogger()
    handler, level = Counter(logging.DEBUG), root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        pipeline = SequentialQueuedPipeline(
            [("add", AddConstant(1.0))], batch_size=2, backend="process", hooks=[OpenTelemetryHook(provider)]
        )
        pipeline.transform([1.0, 2.0, 3.0])
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert len(exporter.get_finished_spans()) == 1 + 1 + 2
    assert [r.name for r in records if r.name.startswith("neuraxle_stream.otel")] == []


def test_without_a_recording_provider_nothing_is_traced() -> None:
    from opentelemetry.trace import NoOpTracerProvider

    pipeline = SequentialQueuedPipeline(
        [("add", AddConstant(1.0))], batch_size=2, backend="thread", hooks=[OpenTelemetryHook(NoOpTracerProvider())]
    )
    assert pipeline.transform([1.0, 2.0, 3.0]) == [2.0, 3.0, 4.0]


def test_the_hook_travels_without_its_provider(provider: TracerProvider) -> None:
    hook = OpenTelemetryHook(provider)
    copy = pickle.loads(pickle.dumps(hook))
    assert copy.tracer_provider is None and hook.tracer_provider is provider
    assert "OpenTelemetryHook" in repr(hook)


def test_a_cloned_pipeline_traces_to_the_same_provider(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    from sklearn.base import clone

    pipeline = SequentialQueuedPipeline(
        [("add", AddConstant(1.0))], batch_size=2, backend="thread", hooks=[OpenTelemetryHook(provider)]
    )
    copy = clone(pipeline)
    assert copy.hooks[0] is not pipeline.hooks[0] and copy.hooks[0].tracer_provider is provider
    copy.transform([1.0, 2.0, 3.0])
    assert len(exporter.get_finished_spans()) == 1 + 1 + 2
