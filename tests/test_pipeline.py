"""Tests for neuraxle_stream.pipeline: SequentialQueuedPipeline and ParallelWorkersWrapper.

Every composite is compared with its sequential reference,
``sklearn.pipeline.make_pipeline(*steps)``, over backends, batch sizes, worker
counts and queue sizes; then the step forms, worker copies and lifecycle,
fitting, containers, padding, and the scikit-learn parameter protocol.
Process runs cost ~0.3 s each: the full grids run on threads, a covering
subset on processes.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import sys
from collections import defaultdict
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import sklearn
from doubles import (
    AddConstant,
    BatchLength,
    DoubleFailure,
    FitRecorder,
    LifecycleRecorder,
    MeanCenterer,
    MultiplyBy,
    ProcessOrigin,
    RaiseOn,
    RandomDelay,
    TouchesAt,
    WaitsAt,
    WorkerIdentity,
    add_one,
    describe_item,
    read_events,
    square,
    wait_for_events,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, PolynomialFeatures, StandardScaler

from neuraxle_stream import (
    BaseTransformer,
    Identity,
    ParallelQueuedFeatureUnion,
    ParallelWorkersWrapper,
    SequentialQueuedPipeline,
    StripAbsentValues,
)

RNG = np.random.RandomState(0)
X = RNG.randn(53, 4)  # 53 rows: a short last minibatch for every batch size but 1
X_NEW = RNG.randn(17, 4)
Y = (X[:, 0] > 0).astype(int)

BATCH_SIZES = [1, 7, 1000]
WORKERS = [1, 2, 3]
QUEUE_SIZES = [1, 10]
GRID = list(itertools.product(BATCH_SIZES, WORKERS, QUEUE_SIZES))
# Every (batch size, workers) pair once, the queue sizes alternating: a covering
# subset of GRID for the process backend, whose runs cost ~0.3 s each.
PROCESS_GRID = [(b, w, QUEUE_SIZES[i % 2]) for i, (b, w) in enumerate(itertools.product(BATCH_SIZES, WORKERS))]


def real_steps() -> list[Any]:
    """Fresh real scikit-learn steps: two need fitting, one stateless, one with shape."""
    return [StandardScaler(), PCA(n_components=3), PolynomialFeatures(degree=2), FunctionTransformer(np.tanh)]


def queued(steps: list[Any], n_workers: int, queue: int, **kwargs: Any) -> SequentialQueuedPipeline:
    """The queued pipeline of ``steps``, in the ``(name, n_workers, max_queue_size, step)`` form."""
    names = [name for name, _ in make_pipeline(*steps).steps]
    return SequentialQueuedPipeline(
        [(name, n_workers, queue, step) for name, step in zip(names, steps)], **kwargs
    )


def assert_same(actual: Any, expected: Any) -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-7, atol=1e-10)


# --- equal to the sequential scikit-learn reference --------------------------------------------


def _check_equivalence(backend: str, batch_size: int, n_workers: int, queue: int) -> None:
    pipeline = queued(real_steps(), n_workers, queue, batch_size=batch_size, backend=backend)
    reference = make_pipeline(*real_steps())
    out = pipeline.fit_transform(X, Y)
    assert isinstance(out, np.ndarray)
    assert_same(out, reference.fit_transform(X, Y))
    assert_same(pipeline.transform(X_NEW), reference.transform(X_NEW))
    for name, fitted in pipeline.named_steps.items():
        expected = reference.named_steps[name]
        for attr in ("mean_", "scale_", "components_", "n_output_features_"):
            if hasattr(expected, attr):
                assert_same(getattr(fitted, attr), getattr(expected, attr))


@pytest.mark.parametrize(("batch_size", "n_workers", "queue"), GRID)
def test_equals_make_pipeline_on_threads(batch_size: int, n_workers: int, queue: int) -> None:
    _check_equivalence("thread", batch_size, n_workers, queue)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("batch_size", "n_workers", "queue"), PROCESS_GRID)
def test_equals_make_pipeline_on_processes(batch_size: int, n_workers: int, queue: int) -> None:
    _check_equivalence("process", batch_size, n_workers, queue)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("n_workers", WORKERS)
def test_order_is_restored_whatever_the_completion_order(backend: str, n_workers: int) -> None:
    # Each minibatch sleeps a different time: workers finish out of order.
    items = list(range(40))
    pipeline = SequentialQueuedPipeline(
        [("delay", n_workers, 1, RandomDelay(0.004)), ("add", 2, AddConstant(1)), ("again", n_workers, RandomDelay(0.002))],
        batch_size=1,
        backend=backend,
    )
    assert pipeline.transform(items) == [i + 1 for i in items]


SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
frames = hnp.arrays(
    np.float64,
    st.tuples(st.integers(1, 60), st.integers(1, 5)),
    elements=st.floats(-1e3, 1e3, allow_nan=False, width=32),
)


@SETTINGS
@given(
    data=frames,
    batch_size=st.integers(1, 20),
    n_workers=st.integers(1, 3),
    queue=st.integers(1, 10),
)
def test_hypothesis_equals_make_pipeline_on_threads(
    data: np.ndarray, batch_size: int, n_workers: int, queue: int
) -> None:
    steps = [StandardScaler(), AddConstant(0.5), FunctionTransformer(np.tanh), MultiplyBy(3.0)]
    pipeline = queued(steps, n_workers, queue, batch_size=batch_size, backend="thread")
    assert_same(pipeline.fit_transform(data), make_pipeline(*[clone(s) for s in steps]).fit_transform(data))


@pytest.mark.timeout(60)
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=hnp.arrays(np.float64, st.tuples(st.integers(0, 40), st.just(3)), elements=st.floats(-10, 10)),
    batch_size=st.integers(1, 9),
    n_workers=st.integers(1, 3),
)
def test_hypothesis_stateless_steps_on_processes(data: np.ndarray, batch_size: int, n_workers: int) -> None:
    steps = [AddConstant(2.0), MultiplyBy(-1.5), FunctionTransformer(np.sin)]
    pipeline = queued(steps, n_workers, 2, batch_size=batch_size, backend="process")
    out = pipeline.transform(data)
    assert out.shape == data.shape
    assert_same(out, make_pipeline(*[clone(s) for s in steps]).fit_transform(data))


@SETTINGS
@given(items=st.lists(st.integers(-1000, 1000), max_size=50), batch_size=st.integers(1, 12), n_workers=st.integers(1, 3))
def test_hypothesis_per_item_functions_on_threads(items: list[int], batch_size: int, n_workers: int) -> None:
    pipeline = SequentialQueuedPipeline(
        [("one", n_workers, add_one), ("sq", n_workers, square)], batch_size=batch_size, backend="thread"
    )
    assert pipeline.transform(items) == [square(add_one(i)) for i in items]


# --- step forms ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_all_five_step_forms(backend: str) -> None:
    steps = [
        AddConstant(1.0),
        ("times2", MultiplyBy(2.0)),
        ("scaler", 2, StandardScaler()),
        ("plus3", 3, 1, AddConstant(3.0)),
        ("times5", 2, [[("factor", 5.0)], [("factor", 5.0)]], 4, MultiplyBy(1.0)),
    ]
    pipeline = SequentialQueuedPipeline(steps, batch_size=5, backend=backend)
    reference = make_pipeline(AddConstant(1.0), MultiplyBy(2.0), StandardScaler(), AddConstant(3.0), MultiplyBy(5.0))
    assert_same(pipeline.fit_transform(X), reference.fit_transform(X))
    assert list(pipeline.named_steps) == ["addconstant", "times2", "scaler", "plus3", "times5"]
    # the parent's copy keeps its own parameters: worker_arguments only reach workers
    assert pipeline.named_steps["times5"].factor == 1.0


def test_unnamed_steps_are_named_like_make_pipeline() -> None:
    steps = [StandardScaler(), AddConstant(1), StandardScaler(), square]
    pipeline = SequentialQueuedPipeline(steps, backend="thread")
    assert list(pipeline.named_steps) == ["standardscaler-1", "addconstant", "standardscaler-2", "square"]
    assert list(pipeline.named_steps)[:3] == list(make_pipeline(*steps[:3]).named_steps)


def test_n_workers_per_step_and_max_queued_minibatches_apply_to_short_forms() -> None:
    pipeline = SequentialQueuedPipeline(
        [Identity(), ("a", AddConstant()), ("b", 3, Identity())],
        n_workers_per_step=2,
        max_queued_minibatches=5,
        backend="thread",
    )
    descs = pipeline._stage_descs()
    assert [(d.n_workers, d.max_queue_size) for d in descs] == [(2, 5), (2, 5), (3, 5)]


def _copies(out: list[tuple[Any, ...]]) -> dict[tuple[int, int], list[tuple[Any, ...]]]:
    by_copy: dict[tuple[int, int], list[tuple[Any, ...]]] = defaultdict(list)
    for who in out:
        by_copy[who[0], who[1]].append(who)
    return by_copy


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "worker_arguments",
    [
        [[("tag", "w0")], [("tag", "w1")], [("tag", "w2")]],  # one list of pairs per worker
        [("tag", "w0"), ("tag", "w1"), ("tag", "w2")],  # Neuraxle's flat form: one pair per worker
    ],
    ids=["nested", "flat"],
)
def test_worker_arguments_are_set_on_each_workers_copy(backend: str, worker_arguments: list[Any]) -> None:
    step = WorkerIdentity(tag="parent", delay=0.01)
    pipeline = SequentialQueuedPipeline([("who", 3, worker_arguments, 2, step)], batch_size=1, backend=backend)
    out = pipeline.transform(list(range(30)))
    tags_by_copy = {copy: {who[3] for who in calls} for copy, calls in _copies(out).items()}
    assert all(len(tags) == 1 for tags in tags_by_copy.values()), tags_by_copy
    tags = [next(iter(t)) for t in tags_by_copy.values()]
    assert len(tags) == len(set(tags)) and set(tags) <= {"w0", "w1", "w2"}
    assert len(tags) >= 2  # 30 minibatches of 10 ms over 3 workers reach more than one
    assert step.tag == "parent"


def test_worker_arguments_may_set_attributes_that_are_not_parameters(tmp_path: Any) -> None:
    # e.g. ("device", "cuda:0") on a step without a `device` parameter
    rec = LifecycleRecorder(str(tmp_path))
    args = [[("tag", 0), ("device", "cpu:0")], [("tag", 1), ("device", "cpu:1")]]
    pipeline = SequentialQueuedPipeline([("rec", 2, args, 2, rec)], backend="thread")
    pipeline.transform([1, 2, 3])
    # setup() runs after the worker arguments are set
    assert sorted(r["tag"] for r in read_events(tmp_path, "setup")) == [0, 1]
    assert not hasattr(rec, "device")


@pytest.mark.timeout(60)
def test_each_worker_holds_its_own_copy(backend: str) -> None:
    step = WorkerIdentity(delay=0.01)
    pipeline = SequentialQueuedPipeline([("who", 3, 3, step)], batch_size=2, backend=backend)
    out = pipeline.transform(list(range(60)))
    assert len(out) == 60
    by_copy = _copies(out[::2])  # one entry per minibatch
    assert sum(len(calls) for calls in by_copy.values()) == 30
    assert 2 <= len(by_copy) <= 3
    assert (os.getpid(), id(step)) not in by_copy
    for calls in by_copy.values():
        # a copy's own call counter runs 1, 2, ..., k: no other worker touched it
        assert sorted(who[4] for who in calls) == list(range(1, len(calls) + 1))
    if backend == "thread":
        # one thread per copy, one copy per thread
        threads = {copy: {who[2] for who in calls} for copy, calls in by_copy.items()}
        assert all(len(t) == 1 for t in threads.values())
        assert len({next(iter(t)) for t in threads.values()}) == len(by_copy)
        assert all(next(iter(t)).startswith("neuraxle_stream") for t in threads.values())
    else:
        pids = {pid for pid, _ in by_copy}
        assert len(pids) == len(by_copy) and os.getpid() not in pids
    assert not hasattr(step, "calls_")  # the parent's object never transformed anything


# --- setup / teardown ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_setup_and_teardown_run_once_per_worker_never_in_parent(backend: str, tmp_path: Any) -> None:
    rec = LifecycleRecorder(str(tmp_path))
    pipeline = SequentialQueuedPipeline([("rec", 3, rec)], batch_size=1, backend=backend)
    # LifecycleRecorder.transform raises unless setup() ran on its own copy first
    assert pipeline.transform(list(range(12))) == list(range(12))
    setups, teardowns = read_events(tmp_path, "setup"), read_events(tmp_path, "teardown")
    assert len(setups) == 3 and len(teardowns) == 3
    copies = {(r["pid"], r["obj"]) for r in setups}
    assert len(copies) == 3 and copies == {(r["pid"], r["obj"]) for r in teardowns}
    assert not hasattr(rec, "setup_calls_") and not hasattr(rec, "teardown_calls_")
    if backend == "process":
        assert all(r["pid"] != os.getpid() for r in setups + teardowns)
    else:
        assert all(r["thread"].startswith("neuraxle_stream") for r in setups + teardowns)


def test_setup_is_looked_up_on_any_step_and_fit_does_not_call_it(tmp_path: Any) -> None:
    rec = LifecycleRecorder(str(tmp_path))
    pipeline = SequentialQueuedPipeline([MeanCenterer(), ("rec", 2, rec)], backend="thread")
    pipeline.fit(X)  # fits MeanCenterer in the parent; no stage runs
    assert read_events(tmp_path) == []
    pipeline.fit_transform(X)
    assert len(read_events(tmp_path, "setup")) == 2 and len(read_events(tmp_path, "teardown")) == 2
    assert not hasattr(rec, "setup_calls_")


# --- lifecycle -----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_with_block_keeps_workers_across_calls(backend: str, tmp_path: Any) -> None:
    pipeline = SequentialQueuedPipeline(
        [("rec", 2, LifecycleRecorder(str(tmp_path))), ("who", 2, WorkerIdentity(delay=0.002))],
        batch_size=1,
        backend=backend,
        chain=False,  # 2 copies of each step, as written
    )
    with pipeline as entered:
        assert entered is pipeline
        first = {who[:2] for who in pipeline.transform(list(range(10)))}
        second = {who[:2] for who in pipeline.transform(list(range(10)))}
        assert len(wait_for_events(tmp_path, "setup", 2)) == 2  # each worker set up once
        assert read_events(tmp_path, "teardown") == []
        assert len(first | second) <= 2  # the same two copies of "who" served both calls
    assert len(read_events(tmp_path, "teardown")) == 2
    pipeline.close()
    pipeline.close()  # safe twice
    # after the block, each call starts and stops its own workers
    third = {who[:2] for who in pipeline.transform(list(range(10)))}
    if backend == "process":
        assert not {pid for pid, _ in third} & {pid for pid, _ in first | second}
    assert len(read_events(tmp_path, "setup")) == 4 and len(read_events(tmp_path, "teardown")) == 4


def test_refit_and_set_params_inside_with_reach_the_workers() -> None:
    zeros, tens = np.zeros((6, 2)), np.full((6, 2), 10.0)
    pipeline = SequentialQueuedPipeline([("c", 2, MeanCenterer()), ("a", AddConstant(0.0))], batch_size=3, backend="thread")
    with pipeline:
        pipeline.fit(zeros)
        assert_same(pipeline.transform(tens), tens)
        pipeline.fit(tens)  # the workers must not keep the step fitted on zeros
        assert_same(pipeline.transform(tens), np.zeros_like(tens))
        pipeline.set_params(a__value=5.0)
        assert_same(pipeline.transform(tens), np.full_like(tens, 5.0))


def test_workers_stop_at_the_end_of_each_call_outside_with(tmp_path: Any) -> None:
    pipeline = SequentialQueuedPipeline([("rec", 2, LifecycleRecorder(str(tmp_path)))], backend="thread")
    pipeline.transform([1, 2])
    pipeline.transform([3, 4])
    assert len(read_events(tmp_path, "setup")) == 4 and len(read_events(tmp_path, "teardown")) == 4


def test_close_without_a_run_is_safe() -> None:
    pipeline = SequentialQueuedPipeline([Identity()], backend="thread")
    pipeline.close()
    pipeline.close()
    with pipeline:
        pass
    assert "_runtimes" not in vars(pipeline) and "_keep_alive" not in vars(pipeline)


@pytest.mark.timeout(60)
def test_same_pipeline_works_again_after_a_step_error(backend: str) -> None:
    pipeline = SequentialQueuedPipeline(
        [("add", AddConstant(1.0)), ("check", 2, RaiseOn(5.0)), ("mul", 2, MultiplyBy(2.0))],
        batch_size=2,
        backend=backend,
    )
    data = np.arange(10.0)
    with pytest.raises(DoubleFailure, match=r"found the bad value 5\.0"):
        pipeline.transform(data)  # item 4 becomes 5.0
    assert_same(pipeline.transform(np.arange(3.0)), (np.arange(3.0) + 1) * 2)
    with pytest.raises(DoubleFailure):
        pipeline.transform(data)
    with pipeline:
        with pytest.raises(DoubleFailure):
            pipeline.transform(data)
        assert_same(pipeline.transform(-data), (-data + 1) * 2)
        assert_same(pipeline.transform(-data), (-data + 1) * 2)


def test_pipeline_pickles_without_its_runtime() -> None:
    import pickle

    pipeline = SequentialQueuedPipeline([("add", AddConstant(2.0))], backend="thread")
    with pipeline:
        pipeline.transform([1.0])
        copy = pickle.loads(pickle.dumps(pipeline))
    assert "_runtimes" not in vars(copy) and "_keep_alive" not in vars(copy)
    assert copy.transform([1.0]) == [3.0]


# --- fitting -------------------------------------------------------------------------------------


def test_fittable_step_is_fitted_on_the_whole_output_of_the_stages_before() -> None:
    recorder = FitRecorder()
    center = MeanCenterer()
    pipeline = SequentialQueuedPipeline(
        [("add", 2, AddConstant(10.0)), ("rec", recorder), ("x2", 3, MultiplyBy(2.0)), ("center", 2, center)],
        batch_size=4,
        backend="thread",
    )
    assert pipeline.fit(X, Y) is pipeline
    # fitted in the parent, in place: named_steps gives the very objects given
    assert pipeline.named_steps["rec"] is recorder and pipeline.named_steps["center"] is center
    assert_same(recorder.fit_inputs_, X + 10.0)
    np.testing.assert_array_equal(recorder.fit_targets_, Y)
    assert recorder.n_fits_ == 1
    assert center.n_samples_seen_ == len(X)  # the whole data, not a minibatch
    assert_same(center.mean_, (X.mean(axis=0) + 10.0) * 2)
    assert_same(pipeline.transform(X_NEW), (X_NEW + 10.0) * 2 - center.mean_)


def test_fit_transform_equals_fit_then_transform() -> None:
    pipeline = SequentialQueuedPipeline([StandardScaler(), ("pca", 2, PCA(2))], batch_size=6, backend="thread")
    # the reference: scikit-learn's own pipeline, both ways
    expected = make_pipeline(StandardScaler(), PCA(2)).fit_transform(X)
    expected_after_fit = make_pipeline(StandardScaler(), PCA(2)).fit(X).transform(X)
    out = pipeline.fit_transform(X)
    assert_same(out, expected)
    assert_same(pipeline.transform(X), expected_after_fit)
    assert_same(clone(pipeline).fit(X).transform(X), expected_after_fit)


def test_stateless_pipeline_transforms_without_fit() -> None:
    pipeline = SequentialQueuedPipeline(
        [AddConstant(1.0), ("x3", 2, MultiplyBy(3.0)), FunctionTransformer(np.abs), square],
        batch_size=5,
        backend="thread",
    )
    out = pipeline.transform(X)
    assert isinstance(out, list) and len(out) == len(X)
    assert_same(np.array(out), np.abs((X + 1) * 3) ** 2)


def test_unfitted_fittable_step_raises_not_fitted_error() -> None:
    pipeline = SequentialQueuedPipeline([AddConstant(), ("center", 2, MeanCenterer())], backend="thread")
    with pytest.raises(NotFittedError):
        pipeline.transform(X)
    pipeline.fit(X)
    assert_same(pipeline.transform(X), X + 1 - (X + 1).mean(axis=0))


def test_refit_replaces_the_fitted_state() -> None:
    pipeline = SequentialQueuedPipeline([("center", MeanCenterer())], backend="thread")
    pipeline.fit(X)
    pipeline.fit(X_NEW)
    assert_same(pipeline.named_steps["center"].mean_, X_NEW.mean(axis=0))
    assert pipeline.n_features_in_ == 4


def test_verbose_prints_one_line_per_step_fitted_or_run(capsys: pytest.CaptureFixture[str]) -> None:
    pipeline = SequentialQueuedPipeline(
        [("scale", StandardScaler()), AddConstant(), ("pca", PCA(2))], backend="thread", verbose=True
    )
    pipeline.fit(X)
    lines = capsys.readouterr().out.splitlines()
    # scale is fitted with its own fit_transform (its output is at hand: it does not run in its
    # workers), addconstant runs on that output to give pca its input; pca is fitted last
    expected = ["(step 1 of 3) Fitting scale", "(step 2 of 3) Processing addconstant",
                "(step 3 of 3) Fitting pca"]
    assert len(lines) == len(expected)
    for line, text in zip(lines, expected):
        assert line.startswith("[SequentialQueuedPipeline] ") and f" {text}, total=" in line


# --- per-item callables ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_plain_callables_are_per_item_operators(backend: str) -> None:
    items = list(range(23))
    pipeline = SequentialQueuedPipeline(
        [add_one, ("sq", 2, square), ("describe", 2, 3, describe_item)], batch_size=4, backend=backend
    )
    assert pipeline.transform(items) == [describe_item(square(add_one(i))) for i in items]
    # a lambda, pickled by value
    lam = SequentialQueuedPipeline([("neg", 2, lambda x: -x)], batch_size=3, backend=backend)
    assert lam.transform(np.arange(7)) == [-i for i in range(7)]


def test_callable_after_a_transformer_gets_rows_and_returns_a_list() -> None:
    pipeline = SequentialQueuedPipeline([StandardScaler(), ("rowsum", 2, np.sum)], batch_size=5, backend="thread")
    out = pipeline.fit_transform(X)
    assert isinstance(out, list)
    assert_same(out, StandardScaler().fit_transform(X).sum(axis=1))


# --- containers -------------------------------------------------------------------------------


def _frame() -> pd.DataFrame:
    return pd.DataFrame(
        RNG.randn(11, 3), columns=["a", "b", "c"], index=[f"r{i}" for i in range(11)]
    )


CONTAINERS: list[tuple[str, Any, Any]] = [
    ("ndarray", lambda: np.arange(22.0).reshape(11, 2), lambda x: x + 1),
    ("ndarray-3d", lambda: np.arange(66.0).reshape(11, 2, 3), lambda x: x + 1),
    ("list", lambda: [float(i) for i in range(11)], lambda x: [i + 1 for i in x]),
    ("tuple", lambda: tuple(float(i) for i in range(11)), lambda x: [i + 1 for i in x]),
    ("dataframe", _frame, lambda x: x + 1),
    ("series", lambda: pd.Series(np.arange(11.0), index=np.arange(100, 111), name="s"), lambda x: x + 1),
]


def _assert_container_equal(out: Any, expected: Any) -> None:
    assert type(out) is type(expected)
    if isinstance(expected, pd.DataFrame):
        pd.testing.assert_frame_equal(out, expected)
    elif isinstance(expected, pd.Series):
        pd.testing.assert_series_equal(out, expected)
    else:
        np.testing.assert_array_equal(out, expected)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("make", "expected"), [c[1:] for c in CONTAINERS], ids=[c[0] for c in CONTAINERS])
def test_containers_keep_their_type(backend: str, make: Any, expected: Any) -> None:
    pipeline = SequentialQueuedPipeline([("add", 2, AddConstant(1.0)), Identity()], batch_size=3, backend=backend)
    data = make()
    _assert_container_equal(pipeline.transform(data), expected(data))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fmt", ["csr", "csc"])
def test_sparse_matrices_stay_sparse(backend: str, fmt: str) -> None:
    data = sp.random(13, 5, density=0.4, format=fmt, random_state=0)
    pipeline = SequentialQueuedPipeline(
        [("x2", 2, MultiplyBy(2.0)), ("scale", StandardScaler(with_mean=False))], batch_size=4, backend=backend
    )
    out = pipeline.fit_transform(data)
    reference = make_pipeline(MultiplyBy(2.0), StandardScaler(with_mean=False)).fit_transform(data)
    assert sp.issparse(out) and out.format == reference.format  # StandardScaler gives csr
    assert_same(out.toarray(), reference.toarray())
    stateless = SequentialQueuedPipeline([("x2", 2, MultiplyBy(2.0))], batch_size=4, backend=backend)
    out = stateless.transform(data)
    assert sp.issparse(out) and out.format == fmt
    assert_same(out.toarray(), data.toarray() * 2)


@pytest.mark.timeout(60)
def test_torch_tensors(backend: str) -> None:
    torch = pytest.importorskip("torch")
    data = torch.arange(30, dtype=torch.float32).reshape(10, 3)
    # one stage: each process worker imports torch (~1 s)
    pipeline = SequentialQueuedPipeline([("add", 2, AddConstant(1.0))], batch_size=3, backend=backend)
    out = pipeline.transform(data)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert torch.equal(out, data + 1)


def test_generators_are_read_lazily_and_give_lists() -> None:
    pipeline = SequentialQueuedPipeline([("sq", 2, square)], batch_size=4, backend="thread")
    assert pipeline.transform(i for i in range(10)) == [i * i for i in range(10)]
    assert pipeline.transform(iter(range(3))) == [0, 1, 4]
    fitted = SequentialQueuedPipeline([StandardScaler(), AddConstant(1)], batch_size=4, backend="thread")
    out = fitted.fit_transform(list(row) for row in X)
    assert_same(out, StandardScaler().fit_transform(X) + 1)


def test_stream_yields_items_in_input_order() -> None:
    pipeline = SequentialQueuedPipeline(
        [("delay", 3, RandomDelay(0.002)), ("sq", 2, square)], batch_size=2, backend="thread"
    )
    stream = pipeline.stream(i for i in range(25))
    assert list(stream) == [i * i for i in range(25)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "empty",
    [np.zeros((0, 4)), [], (), pd.DataFrame({"a": [], "b": []}), iter([])],
    ids=["ndarray", "list", "tuple", "dataframe", "generator"],
)
def test_empty_input_gives_empty_output(backend: str, empty: Any) -> None:
    pipeline = SequentialQueuedPipeline([("add", 2, AddConstant(1.0))], batch_size=3, backend=backend)
    out = pipeline.transform(empty)
    assert len(out) == 0
    if isinstance(empty, np.ndarray):
        assert out.shape == (0, 4)
    elif isinstance(empty, pd.DataFrame):
        assert list(out.columns) == ["a", "b"]
    else:
        assert out == []


# --- padding and incomplete minibatches -------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, [4] * 8 + [2] * 2),
        ({"keep_incomplete_batch": False}, [4] * 8),
        ({"default_value_data_inputs": 0}, [4] * 10),
        ({"default_value_data_inputs": StripAbsentValues()}, [4] * 8 + [2] * 2),
        ({"keep_incomplete_batch": False, "default_value_data_inputs": 0}, [4] * 8),
    ],
    ids=["default-keeps-short", "drop", "pad", "strip", "drop-wins"],
)
def test_last_minibatch_policy(kwargs: dict[str, Any], expected: list[int]) -> None:
    pipeline = SequentialQueuedPipeline([("len", 2, BatchLength())], batch_size=4, backend="thread", **kwargs)
    assert pipeline.transform(list(range(10))) == expected


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("data", "pad"),
    [
        (np.arange(20.0).reshape(10, 2), 0.0),
        (np.arange(10), np.nan),
        (list(range(10)), -1),
        (pd.DataFrame({"a": np.arange(10.0)}, index=list("abcdefghij")), 0.0),
    ],
    ids=["ndarray", "int-array-nan", "list", "dataframe"],
)
def test_padding_removes_the_padded_outputs(backend: str, data: Any, pad: Any) -> None:
    pipeline = SequentialQueuedPipeline(
        [("add", 2, AddConstant(1)), ("x2", MultiplyBy(2))], batch_size=4, backend=backend,
        default_value_data_inputs=pad,
    )
    out = pipeline.transform(data)
    if isinstance(data, list):
        assert out == [(i + 1) * 2 for i in data]
    elif isinstance(data, pd.DataFrame):
        pd.testing.assert_frame_equal(out, (data + 1) * 2)
    else:
        np.testing.assert_array_equal(out, (data + 1) * 2)


def test_dropped_rows_drop_their_targets_when_fitting() -> None:
    recorder = FitRecorder()
    pipeline = SequentialQueuedPipeline(
        [AddConstant(1), ("rec", recorder)], batch_size=4, keep_incomplete_batch=False, backend="thread"
    )
    out = pipeline.fit_transform(X[:10], np.arange(10))
    assert out.shape == (8, 4) and recorder.fit_inputs_.shape == (8, 4)
    np.testing.assert_array_equal(recorder.fit_targets_, np.arange(8))


def test_data_joiner_receives_the_minibatch_outputs() -> None:
    pipeline = SequentialQueuedPipeline(
        [("sq", square)], batch_size=3, backend="thread", data_joiner=lambda parts: [len(p) for p in parts]
    )
    assert pipeline.transform(list(range(10))) == [3, 3, 3, 1]


# --- ParallelWorkersWrapper ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_wrapper_standalone(backend: str) -> None:
    wrapper = ParallelWorkersWrapper(StandardScaler(), n_workers=3, max_queued_minibatches=2, batch_size=5, backend=backend)
    assert_same(wrapper.fit_transform(X), StandardScaler().fit_transform(X))
    assert_same(wrapper.wrapped.mean_, X.mean(axis=0))
    assert_same(wrapper.transform(X_NEW), StandardScaler().fit(X).transform(X_NEW))
    per_item = ParallelWorkersWrapper(square, n_workers=2, backend=backend, batch_size=3)
    assert per_item.transform(list(range(8))) == [i * i for i in range(8)]


def test_wrapper_default_batch_size_is_32() -> None:
    wrapper = ParallelWorkersWrapper(BatchLength(), backend="thread")
    assert wrapper.transform(list(range(40))) == [32] * 32 + [8] * 8


def test_wrapper_use_processes_false_means_threads() -> None:
    wrapper = ParallelWorkersWrapper(WorkerIdentity(), n_workers=2, use_processes=False)
    assert {who[0] for who in wrapper.transform([1, 2, 3])} == {os.getpid()}


@pytest.mark.timeout(60)
def test_wrapper_inside_a_pipeline_sets_workers_and_queue(backend: str) -> None:
    inner = WorkerIdentity(delay=0.01)
    pipeline = SequentialQueuedPipeline(
        [("scale", StandardScaler()), ("who", ParallelWorkersWrapper(inner, n_workers=3, max_queued_minibatches=4))],
        batch_size=2,
        backend=backend,
    )
    descs = pipeline._stage_descs()
    assert (descs[1].n_workers, descs[1].max_queue_size) == (3, 4)
    assert descs[1].step is inner
    out = pipeline.fit_transform(X)
    assert len(out) == len(X)
    assert 2 <= len(_copies(out)) <= 3
    assert isinstance(pipeline.named_steps["who"], ParallelWorkersWrapper)


def test_wrapper_inside_a_pipeline_is_fitted_in_place() -> None:
    wrapper = ParallelWorkersWrapper(MeanCenterer(), n_workers=2)
    pipeline = SequentialQueuedPipeline([AddConstant(1), wrapper], batch_size=4, backend="thread")
    assert list(pipeline.named_steps) == ["addconstant", "parallelworkerswrapper"]
    assert_same(pipeline.fit_transform(X), X + 1 - (X + 1).mean(axis=0))
    assert_same(wrapper.wrapped.mean_, (X + 1).mean(axis=0))


def test_wrapper_parameters_are_spelled_like_a_meta_estimator() -> None:
    wrapper = ParallelWorkersWrapper(StandardScaler(), n_workers=2, backend="thread")
    params = wrapper.get_params()
    assert params["wrapped"] is wrapper.wrapped and params["wrapped__with_mean"] is True
    assert wrapper.set_params(wrapped__with_mean=False, n_workers=3) is wrapper
    assert wrapper.wrapped.with_mean is False and wrapper.n_workers == 3
    copy = clone(wrapper)
    assert copy.wrapped is not wrapper.wrapped and copy.wrapped.with_mean is False
    pipeline = SequentialQueuedPipeline([("w", wrapper)], backend="thread")
    pipeline.set_params(w__wrapped__with_std=False)
    assert pipeline.get_params()["w__wrapped__with_std"] is False
    assert_same(pipeline.fit_transform(X), X)


def test_explicit_form_overrides_the_wrappers_workers() -> None:
    pipeline = SequentialQueuedPipeline(
        [("w", 2, 7, ParallelWorkersWrapper(Identity(), n_workers=3, max_queued_minibatches=4))], backend="thread"
    )
    (desc,) = pipeline._stage_descs()
    assert (desc.n_workers, desc.max_queue_size) == (2, 7)


# --- the scikit-learn parameter protocol ---------------------------------------------------------


def _pipeline() -> SequentialQueuedPipeline:
    return SequentialQueuedPipeline(
        [("add", 2, AddConstant(1.0)), ("scale", StandardScaler()), MultiplyBy(3.0)], batch_size=4, backend="thread"
    )


def test_get_params_deep_lists_steps_and_their_params() -> None:
    pipeline = _pipeline()
    params = pipeline.get_params()
    assert params["batch_size"] == 4 and params["backend"] == "thread"
    assert params["add"] is pipeline.named_steps["add"]
    assert params["add__value"] == 1.0 and params["multiplyby__factor"] == 3.0
    assert params["scale__with_mean"] is True
    shallow = pipeline.get_params(deep=False)
    assert "add__value" not in shallow and "add" not in shallow and shallow["steps"] is pipeline.steps


def test_set_params_nested_own_and_replacing_steps() -> None:
    pipeline = _pipeline()
    assert pipeline.set_params(add__value=5.0, batch_size=3, multiplyby__factor=1.0) is pipeline
    assert pipeline.batch_size == 3 and pipeline.named_steps["add"].value == 5.0
    assert_same(pipeline.fit_transform(X), StandardScaler().fit_transform(X + 5.0))
    # replacing a step keeps its form (here its two workers)
    pipeline.set_params(add=MultiplyBy(-1.0))
    assert pipeline.steps[0][0] == "add" and pipeline.steps[0][1] == 2
    assert isinstance(pipeline.named_steps["add"], MultiplyBy)
    assert_same(pipeline.fit_transform(X), StandardScaler().fit_transform(-X))
    # an unnamed step can be replaced by its generated name
    pipeline.set_params(multiplyby=AddConstant(0.0))
    assert pipeline.steps[2] == ("multiplyby", pipeline.named_steps["multiplyby"])


def test_set_params_steps_then_nested_in_one_call() -> None:
    pipeline = _pipeline()
    pipeline.set_params(steps=[("a", AddConstant(1.0))], a__value=2.0)
    assert pipeline.transform([1.0]) == [3.0]


def test_clone_gives_an_unfitted_equal_pipeline() -> None:
    pipeline = _pipeline()
    pipeline.fit(X)
    copy = clone(pipeline)
    assert copy is not pipeline and copy.get_params(deep=False).keys() == pipeline.get_params(deep=False).keys()
    assert copy.named_steps["scale"] is not pipeline.named_steps["scale"]
    assert not hasattr(copy.named_steps["scale"], "mean_")
    assert copy.steps[0][:2] == ("add", 2)
    assert_same(copy.fit_transform(X), pipeline.transform(X))


def test_indexing_and_len() -> None:
    pipeline = _pipeline()
    assert len(pipeline) == 3
    assert pipeline[0] is pipeline.named_steps["add"]
    assert pipeline["scale"] is pipeline.named_steps["scale"]
    assert pipeline[-1] is pipeline.named_steps["multiplyby"]
    head = pipeline[:2]
    assert type(head) is SequentialQueuedPipeline and head.batch_size == 4 and len(head) == 2
    assert list(head.named_steps) == ["add", "scale"]
    assert_same(head.fit_transform(X), StandardScaler().fit_transform(X + 1))
    with pytest.raises(KeyError):
        pipeline["nope"]


def test_n_features_in_and_feature_names_of_the_first_step() -> None:
    frame = pd.DataFrame(X, columns=list("abcd"))
    pipeline = SequentialQueuedPipeline([StandardScaler(), AddConstant()], backend="thread").fit(frame)
    assert pipeline.n_features_in_ == 4
    np.testing.assert_array_equal(pipeline.named_steps["standardscaler"].feature_names_in_, list("abcd"))


# -- the caller's scikit-learn configuration reaches the workers ------------------------


class _AddOffset(TransformerMixin, BaseEstimator):
    """Adds its routed per-row ``offset`` in ``transform`` (routing requested by the class)."""

    __metadata_request__transform = {"offset": True}

    def fit(self, X, y=None):
        self.fitted_ = True
        return self

    def transform(self, X, offset=None):
        return np.asarray(X) + np.asarray(offset)[:, None]


@pytest.mark.timeout(60)
def test_sklearn_config_of_the_caller_reaches_the_workers(backend: str) -> None:
    from sklearn.compose import ColumnTransformer

    X = pd.DataFrame(np.random.RandomState(0).rand(10, 2), columns=["a", "b"])

    def steps():  # the ColumnTransformer selects by name: it needs DataFrames from the scaler
        return [("s", StandardScaler()), ("ct", ColumnTransformer([("p", "passthrough", ["a"])]))]

    with sklearn.config_context(transform_output="pandas"):
        expected = Pipeline(steps()).fit_transform(X)
        out = SequentialQueuedPipeline(steps(), batch_size=3, backend=backend).fit_transform(X)
    pd.testing.assert_frame_equal(out, expected)


@pytest.mark.timeout(60)
def test_each_call_runs_under_its_own_sklearn_config_inside_with(backend: str) -> None:
    # The workers set the caller's configuration once in their thread, not per minibatch:
    # a call under another configuration still gets it, and the caller's own is left alone.
    X = np.random.RandomState(0).rand(10, 2)
    p = SequentialQueuedPipeline([("s", 2, StandardScaler())], batch_size=3, backend=backend)
    with p:
        p.fit(X)
        with sklearn.config_context(transform_output="pandas"):
            assert isinstance(p.transform(X), pd.DataFrame)
        plain = p.transform(X)
        assert isinstance(plain, np.ndarray)
        with sklearn.config_context(transform_output="pandas"):
            assert isinstance(p.transform(X), pd.DataFrame)
    assert sklearn.get_config()["transform_output"] == "default"
    np.testing.assert_allclose(plain, StandardScaler().fit_transform(X))


@pytest.mark.timeout(60)
def test_routing_reaches_a_nested_sklearn_pipeline_in_the_workers(backend: str) -> None:
    X = np.random.RandomState(1).rand(10, 2)
    offset = np.arange(10.0)
    with sklearn.config_context(enable_metadata_routing=True):
        p = SequentialQueuedPipeline([("inner", Pipeline([("t", _AddOffset())]))], batch_size=3, backend=backend)
        out = p.fit(X).transform(X, offset=offset)
    np.testing.assert_allclose(out, X + offset[:, None])


# --- promises of the parameters (DESIGN sections 2 and 6) -------------------------------------


@pytest.mark.timeout(90)
def test_stream_in_completion_order_gives_every_item_once(backend: str, tmp_path: Any) -> None:
    # Minibatch 0 is held until the caller has an output: with input order that output could
    # never come first (the held minibatch would have to come out before it).
    release = tmp_path / "release"
    pipeline = SequentialQueuedPipeline(
        [("hold", 2, WaitsAt(0, str(release), seconds=30)), ("add", AddConstant(1))],
        batch_size=4, backend=backend, output_order="completion",
    )
    out = []
    try:
        for item in pipeline.stream(iter(range(40))):
            out.append(item)
            release.touch()  # the first output came while minibatch 0 was held: let it go
    finally:
        release.touch()
    assert out[0] not in (1, 2, 3, 4)  # not minibatch 0: outputs come as they complete
    assert sorted(out) == [i + 1 for i in range(40)]  # every item, exactly once
    assert len(set(out)) == 40


@pytest.mark.timeout(90)
def test_transform_stays_aligned_under_completion_order(backend: str, tmp_path: Any) -> None:
    # Minibatch 0 is held until the stage after it has seen item 8 (minibatch 2): it
    # completes after minibatches that came later in the input.
    release = tmp_path / "release"
    pipeline = SequentialQueuedPipeline(
        [("hold", 2, WaitsAt(0, str(release), seconds=30)), ("signal", TouchesAt(8, str(release))),
         ("add", AddConstant(1))],
        batch_size=4, backend=backend, output_order="completion",
    )
    try:
        out = pipeline.transform(list(range(40)))
        assert release.exists()  # created by the step "signal", on minibatch 2
    finally:
        release.touch()
    assert out == [i + 1 for i in range(40)]  # the plain loop's order, whatever the completion order
    # minibatch 0 was released by minibatch 2 (it completed after it), not by its 30 s bound
    held = max(span.duration for span in pipeline.stats_.timeline if span.stage == "hold")
    assert held < 25


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cls", [SequentialQueuedPipeline, ParallelQueuedFeatureUnion])
def test_default_batch_size_is_32(cls: type, backend: str) -> None:
    composite = cls([("len", BatchLength())], backend=backend)
    out = composite.transform(list(range(100)))
    lengths = [x[0] if isinstance(x, tuple) else x for x in out]
    assert lengths == [32] * 96 + [4] * 4  # minibatches of 32, then the short one kept


def _started_as(pipeline: SequentialQueuedPipeline) -> set[tuple[int, int, str]]:
    return set(pipeline.transform([1, 2, 3, 4]))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="forkserver is the default on Linux")
@pytest.mark.timeout(60)
def test_mp_context_defaults_to_forkserver_on_linux() -> None:
    origins = _started_as(SequentialQueuedPipeline([("who", 2, ProcessOrigin())], batch_size=1, backend="process"))
    for pid, ppid, cmdline in origins:
        assert pid != os.getpid()
        assert ppid != os.getpid()  # forked by the fork server, not by this process (fork, spawn)
        assert "forkserver" in cmdline and "spawn_main" not in cmdline


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.timeout(60)
def test_mp_context_accepts_a_context_object() -> None:
    spawn = multiprocessing.get_context("spawn")
    origins = _started_as(
        SequentialQueuedPipeline([("who", 2, ProcessOrigin())], batch_size=1, backend="process", mp_context=spawn)
    )
    for pid, ppid, cmdline in origins:
        assert pid != os.getpid() and ppid == os.getpid()  # this process's own children
        assert "spawn_main" in cmdline  # started by spawn, as the context says


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("backend", "use_processes"), [("thread", True), ("process", False)])
def test_backend_wins_over_use_processes(backend: str, use_processes: bool) -> None:
    pipeline = SequentialQueuedPipeline(
        [("who", 2, WorkerIdentity())], batch_size=1, backend=backend, use_processes=use_processes
    )
    pids = {who[0] for who in pipeline.transform(list(range(6)))}
    if backend == "thread":
        assert pids == {os.getpid()}
    else:
        assert os.getpid() not in pids


@pytest.mark.timeout(60)
def test_default_value_expected_outputs_pads_the_last_minibatch() -> None:
    # DESIGN: "a non-None default_value_* pads it"; the step sees a full minibatch and the
    # outputs of the padded positions are removed again.
    pipeline = SequentialQueuedPipeline(
        [("len", BatchLength())], batch_size=4, backend="thread", default_value_expected_outputs=-1
    )
    y = list(range(10))
    assert pipeline.fit_transform(list(range(10)), y) == [4] * 10
    assert pipeline.transform(list(range(10))) == [4] * 10


@pytest.mark.timeout(60)
def test_both_default_values_pad_and_keep_one_output_per_input() -> None:
    pipeline = SequentialQueuedPipeline(
        [("len", BatchLength())], batch_size=4, backend="thread",
        default_value_data_inputs=0, default_value_expected_outputs=-1,
    )
    assert pipeline.fit_transform(list(range(10)), list(range(10))) == [4] * 10
    assert pipeline.transform(list(range(10))) == [4] * 10


class _FitRecordsNothing(BaseTransformer):
    """A fittable step whose ``fit`` leaves no ``_``-suffixed attribute behind."""

    def fit(self, data_inputs: Any, expected_outputs: Any = None) -> _FitRecordsNothing:
        return self

    def transform(self, data_inputs: Any) -> Any:
        return np.asarray(data_inputs) + 1


@pytest.mark.timeout(60)
def test_a_fitted_pipeline_stays_fitted_through_pickle_and_a_clone_does_not() -> None:
    import pickle

    pipeline = SequentialQueuedPipeline([("plus", _FitRecordsNothing())], backend="thread")
    pipeline.fit(np.zeros((4, 2)))
    loaded = pickle.loads(pickle.dumps(pipeline))
    np.testing.assert_array_equal(loaded.transform(np.zeros((2, 2))), np.ones((2, 2)))
    with pytest.raises(NotFittedError, match="'plus' was never fitted"):
        clone(pipeline).transform(np.zeros((2, 2)))
