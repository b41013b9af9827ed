"""Tests for neuraxle_stream.union: ParallelQueuedFeatureUnion.

The union is compared with its sequential reference,
``sklearn.pipeline.FeatureUnion``, over backends, batch sizes, worker counts
and queue sizes (the full grid on threads, a covering subset on processes);
then the joins (arrays, 1-D outputs, DataFrames, Series, sparse, lists),
fitting, nesting, lifecycle and parameters.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from doubles import (
    AddConstant,
    DoubleFailure,
    FitRendezvous,
    MeanCenterer,
    MultiplyBy,
    RaiseOn,
    RandomDelay,
    WorkerIdentity,
    WorkerRendezvous,
    add_one,
    describe_item,
    square,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.pipeline import FeatureUnion, make_pipeline
from sklearn.preprocessing import FunctionTransformer, PolynomialFeatures, StandardScaler

from neuraxle_stream import (
    Identity,
    ParallelQueuedFeatureUnion,
    ParallelWorkersWrapper,
    SequentialQueuedPipeline,
)

RNG = np.random.RandomState(1)
X = RNG.randn(47, 4)
X_NEW = RNG.randn(9, 4)

BATCH_SIZES = [1, 7, 1000]
WORKERS = [1, 2, 3]
QUEUE_SIZES = [1, 10]
GRID = list(itertools.product(BATCH_SIZES, WORKERS, QUEUE_SIZES))
PROCESS_GRID = [(b, w, QUEUE_SIZES[i % 2]) for i, (b, w) in enumerate(itertools.product(BATCH_SIZES, WORKERS))]


def real_branches() -> list[tuple[str, Any]]:
    return [
        ("scale", StandardScaler()),
        ("pca", PCA(n_components=2)),
        ("poly", PolynomialFeatures(degree=2)),
        ("tanh", FunctionTransformer(np.tanh)),
    ]


def assert_same(actual: Any, expected: Any) -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-7, atol=1e-10)


# --- equal to sklearn.pipeline.FeatureUnion ----------------------------------------------------


def _check_equivalence(backend: str, batch_size: int, n_workers: int, queue: int) -> None:
    union = ParallelQueuedFeatureUnion(
        [(name, n_workers, queue, step) for name, step in real_branches()], batch_size=batch_size, backend=backend
    )
    reference = FeatureUnion(real_branches())
    out = union.fit_transform(X)
    assert isinstance(out, np.ndarray) and out.shape == (47, 4 + 2 + 15 + 4)
    assert_same(out, reference.fit_transform(X))
    assert_same(union.transform(X_NEW), reference.transform(X_NEW))
    assert_same(union.named_steps["pca"].components_, reference.named_transformers["pca"].components_)


@pytest.mark.parametrize(("batch_size", "n_workers", "queue"), GRID)
def test_equals_feature_union_on_threads(batch_size: int, n_workers: int, queue: int) -> None:
    _check_equivalence("thread", batch_size, n_workers, queue)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("batch_size", "n_workers", "queue"), PROCESS_GRID)
def test_equals_feature_union_on_processes(batch_size: int, n_workers: int, queue: int) -> None:
    _check_equivalence("process", batch_size, n_workers, queue)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=hnp.arrays(
        np.float64,
        st.tuples(st.integers(2, 50), st.integers(1, 4)),
        elements=st.floats(-100, 100, allow_nan=False),
    ),
    batch_size=st.integers(1, 16),
    workers=st.lists(st.integers(1, 3), min_size=3, max_size=3),
    queue=st.integers(1, 10),
)
def test_hypothesis_equals_feature_union_on_threads(
    data: np.ndarray, batch_size: int, workers: list[int], queue: int
) -> None:
    branches = [("center", MeanCenterer()), ("add", AddConstant(2.0)), ("sin", FunctionTransformer(np.sin))]
    union = ParallelQueuedFeatureUnion(
        [(name, w, queue, step) for (name, step), w in zip(branches, workers)],
        batch_size=batch_size,
        backend="thread",
    )
    reference = FeatureUnion([(name, clone(step)) for name, step in branches])
    assert_same(union.fit_transform(data), reference.fit_transform(data))


@pytest.mark.timeout(60)
def test_order_is_restored_across_branches(backend: str) -> None:
    union = ParallelQueuedFeatureUnion(
        [("slow", 3, RandomDelay(0.004)), ("one", 2, add_one), ("sq", square)], batch_size=1, backend=backend
    )
    items = list(range(30))
    assert union.transform(items) == [(i, i + 1, i * i) for i in items]


# --- joins -----------------------------------------------------------------------------------


def test_one_dimensional_outputs_become_columns() -> None:
    union = ParallelQueuedFeatureUnion([AddConstant(1.0), MultiplyBy(2.0)], batch_size=3, backend="thread")
    data = np.arange(8.0)
    np.testing.assert_array_equal(union.transform(data), np.column_stack([data + 1, data * 2]))


def test_one_and_two_dimensional_outputs_are_joined() -> None:
    union = ParallelQueuedFeatureUnion(
        [("rows", FunctionTransformer(lambda x: x.sum(axis=1))), ("id", Identity())], batch_size=4, backend="thread"
    )
    np.testing.assert_array_equal(union.transform(X), np.column_stack([X.sum(axis=1), X]))


def test_lists_give_tuples() -> None:
    union = ParallelQueuedFeatureUnion(
        [("one", 2, add_one), ("sq", square), ("txt", describe_item)], batch_size=3, backend="thread"
    )
    assert union.transform(list(range(7))) == [(i + 1, i * i, f"item:{i}") for i in range(7)]


def test_dataframes_are_joined_side_by_side_with_prefixed_duplicates() -> None:
    frame = pd.DataFrame({"a": np.arange(7.0), "b": np.arange(7.0) * 10}, index=[f"r{i}" for i in range(7)])
    union = ParallelQueuedFeatureUnion(
        [("add", AddConstant(1.0)), ("mul", 2, MultiplyBy(2.0)), ("c", FunctionTransformer(lambda f: f[["a"]].rename(columns={"a": "c"})))],
        batch_size=3,
        backend="thread",
    )
    out = union.transform(frame)
    assert list(out.columns) == ["add__a", "add__b", "mul__a", "mul__b", "c"]
    assert list(out.index) == list(frame.index)
    np.testing.assert_array_equal(out["mul__b"], frame["b"] * 2)
    np.testing.assert_array_equal(out["c"], frame["a"])


def test_series_become_named_columns() -> None:
    series = pd.Series(np.arange(5.0), index=list("vwxyz"), name="s")
    union = ParallelQueuedFeatureUnion([("add", AddConstant(1.0)), ("mul", MultiplyBy(3.0))], batch_size=2, backend="thread")
    out = union.transform(series)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == ["add__s", "mul__s"] and list(out.index) == list("vwxyz")
    unnamed = union.transform(pd.Series(np.arange(3.0)))
    assert list(unnamed.columns) == ["add", "mul"]


@pytest.mark.timeout(60)
def test_sparse_and_dense_branches_give_sparse(backend: str) -> None:
    data = sp.random(11, 3, density=0.5, format="csr", random_state=0)
    union = ParallelQueuedFeatureUnion(
        [("x2", 2, MultiplyBy(2.0)), ("dense", FunctionTransformer(lambda m: m.toarray() + 1, accept_sparse=True))],
        batch_size=4,
        backend=backend,
    )
    out = union.transform(data)
    reference = FeatureUnion(
        [("x2", MultiplyBy(2.0)), ("dense", FunctionTransformer(lambda m: m.toarray() + 1, accept_sparse=True))]
    ).fit_transform(data)
    assert sp.issparse(out) and out.format == "csr"
    assert_same(out.toarray(), reference.toarray())


def test_torch_tensors_are_concatenated_on_the_last_dim() -> None:
    torch = pytest.importorskip("torch")
    data = torch.arange(12, dtype=torch.float64).reshape(6, 2)
    union = ParallelQueuedFeatureUnion([AddConstant(1.0), MultiplyBy(2.0)], batch_size=4, backend="thread")
    assert torch.equal(union.transform(data), torch.cat([data + 1, data * 2], dim=-1))


def test_branches_returning_different_row_counts_fail_clearly() -> None:
    union = ParallelQueuedFeatureUnion(
        [("all", Identity()), ("first", FunctionTransformer(lambda x: x[:1]))], batch_size=4, backend="thread"
    )
    with pytest.raises(ValueError, match="returned 1 rows for a minibatch of 4 rows"):
        union.transform(X)


@pytest.mark.parametrize(
    "empty", [[], iter([]), np.zeros((0, 3))], ids=["list", "generator", "ndarray"]
)
def test_empty_input_gives_empty_output(empty: Any) -> None:
    union = ParallelQueuedFeatureUnion([add_one, square], backend="thread")
    assert len(union.transform(empty)) == 0


# --- fitting -------------------------------------------------------------------------------------


def test_branches_are_fitted_on_the_same_whole_input_in_parallel(tmp_path: Any) -> None:
    # each fit waits for the other to start: fitted one after the other, they never meet
    a, b = FitRendezvous(str(tmp_path), parties=2), FitRendezvous(str(tmp_path), parties=2)
    union = ParallelQueuedFeatureUnion([("a", 2, a), ("b", b), ("add", AddConstant(1.0))], batch_size=5, backend="thread")
    y = np.arange(len(X))
    out = union.fit_transform(X, y)
    assert_same(out, np.hstack([X, X, X + 1]))
    for name, recorder in (("a", a), ("b", b)):
        assert union.named_steps[name] is recorder
        assert_same(recorder.fit_inputs_, X)
        np.testing.assert_array_equal(recorder.fit_targets_, y)
        assert recorder.n_fits_ == 1
    # both fits were under way at once, on two threads of the parent
    assert a.met_ and b.met_
    assert a.fit_thread_ != b.fit_thread_


def test_single_fittable_branch_and_stateless_union() -> None:
    union = ParallelQueuedFeatureUnion([("center", MeanCenterer()), ("add", AddConstant(1.0))], backend="thread")
    assert union.fit(X) is union
    assert_same(union.named_steps["center"].mean_, X.mean(axis=0))
    stateless = ParallelQueuedFeatureUnion([AddConstant(1.0), square], backend="thread")
    assert stateless.transform([1, 2]) == [(2, 1), (3, 4)]


def test_unfitted_branch_fails_with_not_fitted_error() -> None:
    from sklearn.exceptions import NotFittedError

    union = ParallelQueuedFeatureUnion([("center", MeanCenterer()), AddConstant()], backend="thread")
    with pytest.raises(NotFittedError):
        union.transform(X)


# --- nesting --------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_union_inside_a_pipeline_and_pipeline_inside_a_union(backend: str) -> None:
    # Inside a worker process, nested composites run their stages on threads.
    inner = SequentialQueuedPipeline([("scale", StandardScaler()), ("pca", 2, PCA(2))], batch_size=5, backend=backend)
    union = ParallelQueuedFeatureUnion([("inner", inner), ("add", 2, AddConstant(1.0))], batch_size=4, backend=backend)
    outer = SequentialQueuedPipeline(
        [("x2", MultiplyBy(2.0)), ("union", union), ("tanh", 2, FunctionTransformer(np.tanh))],
        batch_size=6,
        backend=backend,
    )
    reference = make_pipeline(
        MultiplyBy(2.0),
        FeatureUnion([("inner", make_pipeline(StandardScaler(), PCA(2))), ("add", AddConstant(1.0))]),
        FunctionTransformer(np.tanh),
    )
    assert_same(outer.fit_transform(X), reference.fit_transform(X))
    # the nested steps are fitted in the parent, in place
    assert_same(outer.named_steps["union"].named_steps["inner"].named_steps["scale"].mean_, 2 * X.mean(axis=0))
    assert_same(outer.transform(X_NEW), reference.transform(X_NEW))


def test_wrapper_as_a_branch(tmp_path: Any) -> None:
    # each copy waits on its first minibatch until 3 copies run: all 3 workers get work
    union = ParallelQueuedFeatureUnion(
        [("who", ParallelWorkersWrapper(WorkerRendezvous(str(tmp_path), parties=3), n_workers=3)), ("sq", square)],
        batch_size=1,
        backend="thread",
    )
    (desc, _) = union._stage_descs()
    assert desc.n_workers == 3
    out = union.transform(list(range(12)))
    assert [sq for _, sq in out] == [i * i for i in range(12)]
    assert len({(who[0], who[1]) for who, _ in out}) == 3  # three copies of the step, no more


# --- lifecycle and errors -------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_with_block_keeps_workers_and_errors_leave_the_union_usable(backend: str) -> None:
    union = ParallelQueuedFeatureUnion(
        [("who", 2, WorkerIdentity(delay=0.002)), ("check", RaiseOn(-1))], batch_size=2, backend=backend
    )
    with union:
        first = {who[:2] for who, _ in union.transform([1, 2, 3, 4])}
        second = {who[:2] for who, _ in union.transform([5, 6, 7])}
        assert len(first | second) <= 2
        with pytest.raises(DoubleFailure):
            union.transform([1, -1, 2])
        assert [item for _, item in union.transform([8, 9])] == [8, 9]
    union.close()
    with pytest.raises(DoubleFailure):
        union.transform([-1])
    assert [item for _, item in union.transform([3])] == [3]


# --- parameters -------------------------------------------------------------------------------------


def test_get_params_set_params_clone_and_indexing() -> None:
    union = ParallelQueuedFeatureUnion(
        [("scale", 2, StandardScaler()), ("add", AddConstant(1.0)), square], batch_size=4, backend="thread"
    )
    params = union.get_params()
    assert params["scale__with_mean"] is True and params["add__value"] == 1.0 and params["square"] is square
    union.set_params(scale__with_mean=False, add__value=3.0, batch_size=2)
    assert union.named_steps["scale"].with_mean is False and union.batch_size == 2
    union.set_params(square=MultiplyBy(0.0))
    out = union.fit_transform(X)
    reference = FeatureUnion(
        [("scale", StandardScaler(with_mean=False)), ("add", AddConstant(3.0)), ("square", MultiplyBy(0.0))]
    )
    assert_same(out, reference.fit_transform(X))
    copy = clone(union)
    assert not hasattr(copy.named_steps["scale"], "scale_") and copy.steps[0][:2] == ("scale", 2)
    assert len(union) == 3 and union["add"] is union[1] is union.named_steps["add"]
    head = union[:2]
    assert type(head) is ParallelQueuedFeatureUnion and list(head.named_steps) == ["scale", "add"]
