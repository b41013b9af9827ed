"""Bad input gets a clear error and nothing else; odd but valid values pass unchanged.

- ``X`` and ``y`` of different lengths: a ``ValueError`` naming both lengths,
  raised in the parent before any worker starts (on both pipelines and the
  wrapper);
- a step returning another number of rows than it got: a ``ValueError``
  naming the step and minibatch, unless it declares ``may_change_length``;
- ragged lists where a step needs an array: the step's own ``ValueError``,
  with a note naming the step (fitted in the parent, or run in a worker);
- NaN and inf are data: they pass through unchanged, on threads and processes;
- a failing step is raised, never logged by the library: at most one record
  of level ``ERROR`` reaches the logs (zero today), on threads and processes.
"""

from __future__ import annotations

import logging
import multiprocessing
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from doubles import RecordingHandler
from faults import RaisesAt
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from neuraxle_stream import (
    Identity,
    ParallelQueuedFeatureUnion,
    ParallelWorkersWrapper,
    SequentialQueuedPipeline,
)
from neuraxle_stream.pool import worker_pool

pytestmark = pytest.mark.timeout(60)


def _started_workers() -> list[str]:
    idle = worker_pool().idle_pids()  # warm workers of earlier tests, in no call
    return [p.name for p in multiprocessing.active_children() if p.pid not in idle] + [
        t.name for t in threading.enumerate() if t.name.startswith("neuraxle_stream")
    ]


class NeverRun(Identity):
    """A step that fails the test if a worker ever loads it."""

    def setup(self) -> None:  # runs in the worker only
        raise AssertionError("a worker started although the input was refused")


def _composites(backend: str) -> list[Any]:
    return [
        SequentialQueuedPipeline([("scale", StandardScaler()), ("never", NeverRun())], backend=backend),
        ParallelQueuedFeatureUnion([("scale", StandardScaler()), ("never", NeverRun())], backend=backend),
        ParallelWorkersWrapper(StandardScaler(), backend=backend),
    ]


# -- X and y of different lengths ------------------------------------------------------------


@pytest.mark.parametrize("method", ["fit", "fit_transform"])
@pytest.mark.parametrize("index", [0, 1, 2], ids=["sequential", "union", "wrapper"])
def test_x_and_y_of_different_lengths_name_both_lengths(backend: str, method: str, index: int) -> None:
    pipeline = _composites(backend)[index]
    X, y = np.ones((7, 2)), np.ones(5)
    with pytest.raises(ValueError, match=r"X has 7 rows, y has 5") as info:
        getattr(pipeline, method)(X, y)
    assert type(pipeline).__name__ in str(info.value)
    # refused at once: no worker is running (and NeverRun's setup() would have failed the call)
    assert not _started_workers()
    # the step was not fitted either
    assert not hasattr(pipeline.named_steps[next(iter(pipeline.named_steps))], "mean_")


def test_lists_and_frames_of_different_lengths_are_refused() -> None:
    pd = pytest.importorskip("pandas")
    pipeline = SequentialQueuedPipeline([StandardScaler()], backend="thread")
    with pytest.raises(ValueError, match=r"X has 3 rows, y has 2"):
        pipeline.fit([[1.0], [2.0], [3.0]], [0, 1])
    with pytest.raises(ValueError, match=r"X has 2 rows, y has 3"):
        pipeline.fit_transform(pd.DataFrame({"a": [1.0, 2.0]}), pd.Series([0, 1, 2]))


def test_targets_of_the_right_length_and_a_lengthless_source_are_accepted() -> None:
    pipeline = SequentialQueuedPipeline([StandardScaler()], backend="thread", batch_size=2)
    X = np.arange(8.0).reshape(4, 2)
    np.testing.assert_allclose(pipeline.fit_transform(X, np.arange(4)), StandardScaler().fit_transform(X))
    # a generator has no length to compare: it is read as it is
    out = pipeline.fit_transform((row for row in X), np.arange(4))
    np.testing.assert_allclose(np.asarray(out), StandardScaler().fit_transform(X))


# -- ragged lists ------------------------------------------------------------------------------

RAGGED = [[1.0, 2.0], [3.0], [4.0, 5.0], [6.0, 7.0]]


def test_ragged_list_given_to_a_fitted_step_names_the_step() -> None:
    pipeline = SequentialQueuedPipeline([("scale", StandardScaler())], backend="thread", batch_size=2)
    with pytest.raises(ValueError, match="inhomogeneous") as info:
        pipeline.fit_transform(RAGGED)
    assert any("step 'scale'" in note for note in info.value.__notes__)


def test_ragged_list_given_to_a_worker_names_the_step_and_minibatch(backend: str) -> None:
    pipeline = SequentialQueuedPipeline(
        [("pass", Identity()), ("sqrt", FunctionTransformer(np.sqrt))], backend=backend, batch_size=2
    )
    with pytest.raises(ValueError, match="inhomogeneous") as info:
        pipeline.transform(RAGGED)
    notes = " ".join(info.value.__notes__)
    assert "step 'sqrt'" in notes and "minibatch 0" in notes


# -- a step whose output length differs from its input length ---------------------------------


class DropsFirstRow(Identity):
    def transform(self, data_inputs: Any) -> Any:
        return data_inputs[1:]


class FiltersFirstRow(DropsFirstRow):
    may_change_length = True  # declares that it filters rows


def test_a_step_changing_the_length_names_the_step_unless_it_declares_it(backend: str) -> None:
    X = np.arange(8.0).reshape(8, 1)
    pipeline = SequentialQueuedPipeline([("drop", DropsFirstRow())], backend=backend, batch_size=4)
    with pytest.raises(ValueError, match=r"Step 'drop' returned 3 rows for a minibatch of 4 rows") as info:
        pipeline.transform(X)
    assert any("minibatch 0" in note for note in info.value.__notes__)
    filtering = SequentialQueuedPipeline([("filter", FiltersFirstRow())], backend=backend, batch_size=4)
    np.testing.assert_array_equal(filtering.transform(X), X[[1, 2, 3, 5, 6, 7]])


# -- NaN and inf pass through unchanged --------------------------------------------------------


SPECIAL = np.array(
    [[np.nan, 1.0], [np.inf, -np.inf], [0.0, np.nan], [-0.0, 2.5], [np.inf, np.nan]], dtype=np.float64
)


@pytest.mark.parametrize(
    "steps",
    [
        [FunctionTransformer()],
        [Identity(), FunctionTransformer(), ("two", 2, Identity())],
    ],
    ids=["function_transformer", "three_stages"],
)
def test_nan_and_inf_pass_through_unchanged(backend: str, steps: list[Any]) -> None:
    pipeline = SequentialQueuedPipeline(steps, backend=backend, batch_size=2)
    out = pipeline.fit_transform(SPECIAL)
    assert out.dtype == SPECIAL.dtype and out.shape == SPECIAL.shape
    np.testing.assert_array_equal(out, SPECIAL)  # NaN equals NaN here, inf keeps its sign
    np.testing.assert_array_equal(np.signbit(out), np.signbit(SPECIAL))


def test_nan_and_inf_in_a_union_and_in_lists(backend: str) -> None:
    union = ParallelQueuedFeatureUnion([("a", Identity()), ("b", FunctionTransformer())], backend=backend)
    np.testing.assert_array_equal(union.transform(SPECIAL), np.hstack([SPECIAL, SPECIAL]))
    items = [float("nan"), float("inf"), -float("inf"), 1.0]
    out = SequentialQueuedPipeline([Identity()], backend=backend, batch_size=3).transform(items)
    assert np.isnan(out[0]) and out[1:] == items[1:]


# -- a failing step is raised, not logged ----------------------------------------------------------


@pytest.fixture
def error_records() -> Iterator[list[logging.LogRecord]]:
    """Records of level >= ERROR reaching the root logger (and so any handler) during a test."""
    root = logging.getLogger()
    counter = RecordingHandler()
    level = root.level
    root.addHandler(counter)
    root.setLevel(logging.DEBUG)
    try:
        yield counter.records
    finally:
        root.removeHandler(counter)
        root.setLevel(level)


@pytest.mark.parametrize("kind", ["sequential", "union", "wrapper"])
def test_a_failing_step_is_raised_once_and_logged_nowhere(
    backend: str, kind: str, error_records: list[logging.LogRecord]
) -> None:
    failing = RaisesAt(at=3)
    pipeline: Any
    if kind == "sequential":
        pipeline = SequentialQueuedPipeline(
            [("first", Identity()), ("fails", 2, failing), ("last", Identity())], backend=backend, batch_size=1
        )
    elif kind == "union":
        pipeline = ParallelQueuedFeatureUnion([("ok", Identity()), ("fails", failing)], backend=backend, batch_size=1)
    else:
        pipeline = SequentialQueuedPipeline(
            [("outer", ParallelWorkersWrapper(failing, n_workers=2))], backend=backend, batch_size=1
        )
    with pytest.raises(ValueError, match="boom at 3"):
        pipeline.transform(list(range(8)))
    errors = [r for r in error_records if r.levelno >= logging.ERROR]
    # The library raises worker errors in the caller and never logs them itself.
    assert len(errors) <= 1
    assert errors == [], [r.getMessage() for r in errors]
    from_library = [r for r in error_records if r.name.startswith("neuraxle_stream") and r.levelno >= logging.WARNING]
    assert from_library == []
