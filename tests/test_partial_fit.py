"""``fit_mode="partial"``: fittable steps fitted with ``partial_fit``, minibatch by minibatch.

The reference: calling ``partial_fit`` step by step on the same minibatches
(step k on the outputs of the steps before it, fitted already). Upstream
stages run in their workers while the parent fits; a generator source is
read lazily, within the bounded in-flight window.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import numpy as np
import pytest
import sklearn
from doubles import AddConstant, RandomDelay, add_one
from sklearn.base import clone
from sklearn.cluster import MiniBatchKMeans
from sklearn.decomposition import PCA, IncrementalPCA
from sklearn.preprocessing import FunctionTransformer, MaxAbsScaler, StandardScaler

from neuraxle_stream import (
    BaseTransformer,
    InvalidParameterError,
    ParallelQueuedFeatureUnion,
    SequentialQueuedPipeline,
)

pytestmark = pytest.mark.timeout(120)

RNG = np.random.RandomState(0)
X = RNG.randn(53, 4)  # a short last minibatch for every batch size below
Y = (X[:, 0] > 0).astype(int)
W = RNG.rand(53) + 0.5


def scaler_pca() -> list[Any]:
    return [StandardScaler(), IncrementalPCA(n_components=2)]


def abs_scaler_kmeans() -> list[Any]:
    return [FunctionTransformer(np.abs), MaxAbsScaler(), MiniBatchKMeans(n_clusters=3, random_state=0, n_init=1)]


STEP_SETS = {"scaler-ipca": scaler_pca, "abs-maxabs-kmeans": abs_scaler_kmeans}
FITTED = ("mean_", "var_", "scale_", "max_abs_", "components_", "explained_variance_", "cluster_centers_")


def partial_reference(steps: list[Any], X: Any, batch_size: int, **fit_params: Any) -> list[Any]:
    """``partial_fit`` step by step on the same minibatches (the semantics under test).

    Written without the library: a step is partially fitted when it has a
    ``partial_fit`` method (the stateless ``FunctionTransformer`` here has none).
    """
    steps = [clone(s) for s in steps]
    batches = [(i, X[i : i + batch_size]) for i in range(0, len(X), batch_size)]
    for k, step in enumerate(steps):
        if not hasattr(step, "partial_fit"):
            continue
        for start, batch in batches:
            for before in steps[:k]:
                batch = before.transform(batch)
            params = {name: v[start : start + len(batch)] for name, v in fit_params.items()}
            step.partial_fit(batch, **params)
    return steps


def run_through(steps: list[Any], X: Any) -> Any:
    for step in steps:
        X = step.transform(X)
    return X


def assert_same_fit(got: list[Any], want: list[Any]) -> None:
    for g, w in zip(got, want):
        for attr in FITTED:
            if hasattr(w, attr):
                np.testing.assert_allclose(getattr(g, attr), getattr(w, attr), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("step_set", sorted(STEP_SETS))
@pytest.mark.parametrize("batch_size", [5, 16, 100])
@pytest.mark.parametrize("n_workers", [1, 3])
def test_partial_equals_sequential_partial_fit_on_threads(step_set: str, batch_size: int, n_workers: int) -> None:
    steps = STEP_SETS[step_set]()
    p = SequentialQueuedPipeline(
        [(f"s{i}", n_workers, s) for i, s in enumerate(steps)],
        batch_size=batch_size, backend="thread", fit_mode="partial",
    )
    out = p.fit_transform(X)
    want = partial_reference(STEP_SETS[step_set](), X, batch_size)
    assert_same_fit([s for _, _, s in p.steps], want)
    np.testing.assert_allclose(out, run_through(want, X), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("step_set", sorted(STEP_SETS))
def test_partial_equals_sequential_partial_fit_on_processes(step_set: str) -> None:
    steps = STEP_SETS[step_set]()
    p = SequentialQueuedPipeline(
        [(f"s{i}", 2, s) for i, s in enumerate(steps)], batch_size=7, backend="process", fit_mode="partial",
    )
    p.fit(X)
    want = partial_reference(STEP_SETS[step_set](), X, 7)
    assert_same_fit([s for _, _, s in p.steps], want)
    np.testing.assert_allclose(p.transform(X), run_through(want, X), rtol=1e-10, atol=1e-12)


def test_partial_differs_from_full_where_it_should() -> None:
    """MiniBatchKMeans in partial mode is not KMeans-on-everything: the mode is really used."""
    full = SequentialQueuedPipeline(abs_scaler_kmeans(), batch_size=5, backend="thread").fit(X)
    partial = SequentialQueuedPipeline(abs_scaler_kmeans(), batch_size=5, backend="thread", fit_mode="partial").fit(X)
    assert not np.allclose(full[-1].cluster_centers_, partial[-1].cluster_centers_)


def test_each_fit_starts_afresh() -> None:
    """partial_fit goes on from the state it finds; a second fit must not continue the first."""
    scaler = StandardScaler()
    p = SequentialQueuedPipeline([("scale", scaler), ("pca", IncrementalPCA(2))], batch_size=8,
                                 backend="thread", fit_mode="partial")
    first = p.fit_transform(X)
    np.testing.assert_allclose(p.fit_transform(X), first)
    assert p["scale"] is scaler and scaler.n_samples_seen_ == len(X)  # fitted in place, once
    p.fit(X[:10])
    assert scaler.n_samples_seen_ == 10


def test_fit_transform_is_fit_then_transform(backend: str) -> None:
    p = SequentialQueuedPipeline(scaler_pca(), batch_size=8, backend=backend, fit_mode="partial")
    out = p.fit_transform(X)
    expected = run_through(partial_reference(scaler_pca(), X, 8), X)  # partial_fit by hand, then transform
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(p.transform(X), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", ["thread", "process"])
@pytest.mark.parametrize("n_workers", [1, 2])
def test_union_branches_partial_fitted_on_the_same_minibatches(backend: str, n_workers: int) -> None:
    def branches() -> list[Any]:
        return [StandardScaler(), IncrementalPCA(n_components=2), MiniBatchKMeans(3, random_state=0, n_init=1)]

    union = ParallelQueuedFeatureUnion(
        [(f"b{i}", n_workers, s) for i, s in enumerate(branches())],
        batch_size=6, backend=backend, fit_mode="partial",
    )
    out = union.fit_transform(X)
    want = [partial_reference([b], X, 6)[0] for b in branches()]
    assert_same_fit([s for _, _, s in union.steps], want)
    np.testing.assert_allclose(out, np.hstack([w.transform(X) for w in want]), rtol=1e-10, atol=1e-12)


class OrderRecorder(BaseTransformer):
    """Fittable incrementally; records the rows each ``partial_fit`` got, in call order."""

    def partial_fit(self, X: Any, y: Any = None) -> OrderRecorder:
        self.seen_ = [*getattr(self, "seen_", []), *np.asarray(X)[:, 0].tolist()]
        return self

    def fit(self, X: Any, y: Any = None) -> OrderRecorder:
        self.seen_ = np.asarray(X)[:, 0].tolist()
        return self

    def transform(self, data_inputs: Any) -> Any:
        return data_inputs


def test_partial_fit_sees_the_upstream_outputs_in_input_order(backend: str) -> None:
    rows = np.arange(60, dtype=float).reshape(-1, 1)
    p = SequentialQueuedPipeline(
        [("delay", 3, RandomDelay(0.01)), ("plus", 2, AddConstant(1)), ("rec", OrderRecorder())],
        batch_size=4, backend=backend, fit_mode="partial",
    )
    p.fit(rows)
    assert p["rec"].seen_ == (rows[:, 0] + 1).tolist()


def test_padding_is_not_fitted() -> None:
    p = SequentialQueuedPipeline(
        [("plus", AddConstant(1)), ("rec", OrderRecorder())],
        batch_size=7, default_value_data_inputs=0.0, backend="thread", fit_mode="partial",
    )
    p.fit(X)
    assert len(p["rec"].seen_) == len(X)


# -- streaming sources -------------------------------------------------------------------------

#: What the source has produced and the fitted step has received, for the lazy-reading test.
STATE = {"produced": 0, "fitted": 0, "lead": 0}


def counting_source(n_items: int) -> Any:
    for i in range(n_items):
        STATE["produced"] += 1
        yield np.array([float(i), float(i % 7)])


class LeadRecorder(StandardScaler):
    """Records how far the source ran ahead of the rows this step has been fitted on."""

    def partial_fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> LeadRecorder:
        STATE["fitted"] += len(X)
        STATE["lead"] = max(STATE["lead"], STATE["produced"] - STATE["fitted"])
        return super().partial_fit(X, y, sample_weight)


@pytest.mark.parametrize("upstream", [0, 2])
def test_generator_source_is_read_lazily(backend: str, upstream: int) -> None:
    """200 minibatches: the source never runs more than the in-flight window ahead of the fit."""
    STATE.update(produced=0, fitted=0, lead=0)
    batch_size, n_batches = 4, 200
    before = [(f"add{i}", 2, add_one) for i in range(upstream)]
    p = SequentialQueuedPipeline(
        [*before, ("scale", LeadRecorder())], batch_size=batch_size, backend=backend, fit_mode="partial"
    )
    p.fit(counting_source(batch_size * n_batches))
    assert STATE["fitted"] == STATE["produced"] == batch_size * n_batches
    # each stage: queue of 4 + 2 workers; one more minibatch read by the feeder and one by the joiner
    window = (upstream * 6 + 3) * batch_size
    assert STATE["lead"] <= window < batch_size * n_batches
    want = StandardScaler().fit(np.array([[i + upstream, i % 7 + upstream] for i in range(800)], dtype=float))
    np.testing.assert_allclose(p["scale"].mean_, want.mean_)
    np.testing.assert_allclose(p["scale"].var_, want.var_)


def test_callable_source_is_called_once_per_pass() -> None:
    calls = []

    def source() -> Any:
        calls.append(1)
        return (row for row in X)

    p = SequentialQueuedPipeline(scaler_pca(), batch_size=8, backend="thread", fit_mode="partial")
    out = p.fit_transform(source)
    assert len(calls) == 3  # one pass per fittable step, one to transform
    want = partial_reference(scaler_pca(), X, 8)
    np.testing.assert_allclose(out, run_through(want, X), rtol=1e-10, atol=1e-12)


def test_reiterable_source_is_read_once_per_pass() -> None:
    class Rows:
        def __init__(self) -> None:
            self.passes = 0

        def __iter__(self) -> Any:
            self.passes += 1
            return iter(list(X))

    rows = Rows()
    p = SequentialQueuedPipeline(scaler_pca(), batch_size=8, backend="thread", fit_mode="partial").fit(rows)
    assert rows.passes == 2
    assert_same_fit([s for s in p.named_steps.values()], partial_reference(scaler_pca(), X, 8))


def test_one_shot_generator_with_one_fittable_step_is_fine() -> None:
    p = SequentialQueuedPipeline([add_one, StandardScaler()], batch_size=8, backend="thread", fit_mode="partial")
    p.fit(row for row in X)
    np.testing.assert_allclose(p[-1].mean_, X.mean(axis=0) + 1)


def test_one_shot_generator_with_more_passes_is_refused() -> None:
    p = SequentialQueuedPipeline(scaler_pca(), backend="thread", fit_mode="partial")
    with pytest.raises(InvalidParameterError, match=r"2 passes here, but X is a one-shot iterator \(generator\)"):
        p.fit(row for row in X)
    p = SequentialQueuedPipeline([StandardScaler()], backend="thread", fit_mode="partial")
    with pytest.raises(InvalidParameterError, match=r"2 passes here, but X is a one-shot iterator"):
        p.fit_transform(row for row in X)
    union = ParallelQueuedFeatureUnion(scaler_pca(), backend="thread", fit_mode="partial")
    union.fit(row for row in X)  # one pass fits every branch
    with pytest.raises(InvalidParameterError, match="2 passes here"):
        union.fit_transform(row for row in X)


# -- params and errors -----------------------------------------------------------------------------


class WeightLog(StandardScaler):
    """Records the ``sample_weight`` of each ``partial_fit`` call."""

    def partial_fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> WeightLog:
        self.weights_ = [*getattr(self, "weights_", []), None if sample_weight is None else np.array(sample_weight)]
        return super().partial_fit(X, y, sample_weight)


@pytest.mark.parametrize("routing", [True, False])
def test_sample_weight_is_cut_per_minibatch(routing: bool) -> None:
    with sklearn.config_context(enable_metadata_routing=routing):
        step = WeightLog().set_partial_fit_request(sample_weight=True) if routing else WeightLog()
        other = WeightLog().set_partial_fit_request(sample_weight=False) if routing else WeightLog()
        p = SequentialQueuedPipeline(
            [("plus", 2, AddConstant(1)), ("weighted", step), ("other", other)],
            batch_size=10, backend="thread", fit_mode="partial",
        )
        p.fit(X, Y, **({"sample_weight": W} if routing else {"weighted__sample_weight": W}))
    got = p["weighted"].weights_
    assert len(got) == 6
    for i, w in enumerate(got):
        np.testing.assert_array_equal(w, W[10 * i : 10 * i + 10])
    assert p["other"].weights_ == [None] * 6
    want = partial_reference([StandardScaler()], X + 1, 10, sample_weight=W)[0]
    np.testing.assert_allclose(p["weighted"].mean_, want.mean_)


def test_union_sample_weight_is_cut_per_minibatch() -> None:
    union = ParallelQueuedFeatureUnion(
        [("a", WeightLog()), ("b", WeightLog())], batch_size=20, backend="thread", fit_mode="partial"
    )
    union.fit(X, sample_weight=W)  # routing off: every branch, as FeatureUnion
    for name in "ab":
        assert [len(w) for w in union[name].weights_] == [20, 20, 13]
        np.testing.assert_array_equal(np.concatenate(union[name].weights_), W)


# A streamed X (a generator, a callable...) has no length: without y, a param with at least as
# many rows as the first minibatch is per-sample, cut by the running row offset.


@pytest.mark.parametrize("routing", [True, False])
def test_streamed_source_without_y_cuts_sample_weight_per_minibatch(backend: str, routing: bool) -> None:
    with sklearn.config_context(enable_metadata_routing=routing):
        step = WeightLog().set_partial_fit_request(sample_weight=True) if routing else WeightLog()
        p = SequentialQueuedPipeline(
            [("plus", 2, AddConstant(1)), ("weighted", step)], batch_size=10, backend=backend, fit_mode="partial",
        )
        p.fit((row for row in X), **({"sample_weight": W} if routing else {"weighted__sample_weight": W}))
    assert [len(w) for w in p["weighted"].weights_] == [10] * 5 + [3]
    np.testing.assert_array_equal(np.concatenate(p["weighted"].weights_), W)
    want = partial_reference([StandardScaler()], X + 1, 10, sample_weight=W)[0]
    assert_same_fit([p["weighted"]], [want])


@pytest.mark.usefixtures("_routing_on")
def test_callable_source_without_y_cuts_sample_weight_on_every_pass() -> None:
    first, second = (WeightLog().set_partial_fit_request(sample_weight=True) for _ in range(2))
    p = SequentialQueuedPipeline(
        [("first", first), ("plus", AddConstant(1)), ("second", second)],
        batch_size=8, backend="thread", fit_mode="partial",
    )
    p.fit(lambda: (row for row in X), sample_weight=W)
    for name in ("first", "second"):
        np.testing.assert_array_equal(np.concatenate(p[name].weights_), W)
    steps = [StandardScaler(), AddConstant(1), StandardScaler()]
    want = partial_reference(steps, X, 8, sample_weight=W)
    assert_same_fit([p["first"], p["plus"], p["second"]], want)


@pytest.mark.usefixtures("_routing_on")
def test_streamed_source_with_too_short_sample_weight_is_refused() -> None:
    p = SequentialQueuedPipeline(
        [("weighted", WeightLog().set_partial_fit_request(sample_weight=True))],
        batch_size=10, backend="thread", fit_mode="partial",
    )
    message = (
        "The 'sample_weight' param of step 'weighted' (partial_fit) has 30 rows, but 40 rows of X have "
        "reached the step so far. X is streamed (its length is unknown and no y was given), so a param "
        "with at least as many rows as the first minibatch is cut with the minibatches and needs one row "
        "per row of X."
    )
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        p.fit((row for row in X), sample_weight=W[:30])
    assert [len(w) for w in p["weighted"].weights_] == [10, 10, 10]  # the rows it had weights for
    with pytest.raises(InvalidParameterError, match=r"has 10 rows, but 20 rows of X"):
        p.fit((row for row in X), sample_weight=W[:10])  # as long as the first minibatch: per-sample


class ParamLog(StandardScaler):
    """Records the ``sample_weight`` and ``classes`` of each ``partial_fit`` call."""

    def partial_fit(self, X: Any, y: Any = None, sample_weight: Any = None, classes: Any = None) -> ParamLog:
        self.calls_ = [*getattr(self, "calls_", []), (len(X), sample_weight, classes)]
        return super().partial_fit(X, y, sample_weight)


def test_streamed_source_params_shorter_than_a_minibatch_are_passed_whole() -> None:
    """``classes=`` is not per-sample; weights for more rows than the stream has are cut as they go."""
    p = SequentialQueuedPipeline([("log", ParamLog())], batch_size=20, backend="thread", fit_mode="partial")
    classes = np.array([0, 1, 2])
    longer = np.arange(100.0)
    p.fit((row for row in X), log__classes=classes, log__sample_weight=longer)
    assert [n for n, _, _ in p["log"].calls_] == [20, 20, 13]
    for i, (_, weights, got) in enumerate(p["log"].calls_):
        assert got is classes
        np.testing.assert_array_equal(weights, longer[20 * i : 20 * i + len(weights)])


@pytest.mark.parametrize("routing", [True, False])
def test_union_streamed_source_without_y_cuts_sample_weight_per_minibatch(backend: str, routing: bool) -> None:
    with sklearn.config_context(enable_metadata_routing=routing):
        branches = [("a", WeightLog()), ("b", 2, WeightLog())]
        if routing:
            branches[0][1].set_partial_fit_request(sample_weight=True)
            branches[1][2].set_partial_fit_request(sample_weight=True)
        union = ParallelQueuedFeatureUnion(branches, batch_size=20, backend=backend, fit_mode="partial")
        union.fit((row for row in X), sample_weight=W)  # one pass: a generator is fine
    want = partial_reference([StandardScaler()], X, 20, sample_weight=W)[0]
    for name in "ab":
        assert [len(w) for w in union[name].weights_] == [20, 20, 13]
        np.testing.assert_array_equal(np.concatenate(union[name].weights_), W)
        assert_same_fit([union[name]], [want])


@pytest.fixture
def _routing_on() -> Any:
    with sklearn.config_context(enable_metadata_routing=True):
        yield


def test_fittable_step_without_partial_fit_is_refused() -> None:
    p = SequentialQueuedPipeline(
        [("scale", StandardScaler()), ("pca", PCA(2))], backend="thread", fit_mode="partial"
    )
    with pytest.raises(InvalidParameterError, match=r"step 'pca' \(PCA\) has no partial_fit"):
        p.fit(X)
    assert not hasattr(p["scale"], "mean_")  # refused before any fitting


def test_fit_mode_is_validated() -> None:
    p = SequentialQueuedPipeline([StandardScaler()], fit_mode="online")
    with pytest.raises(InvalidParameterError, match=r"The 'fit_mode' parameter of SequentialQueuedPipeline must be"):
        p.fit(X)
    assert ParallelQueuedFeatureUnion([StandardScaler()]).get_params()["fit_mode"] == "full"


def test_y_must_be_a_sequence_with_a_streamed_source() -> None:
    p = SequentialQueuedPipeline([StandardScaler()], backend="thread", fit_mode="partial")
    with pytest.raises(InvalidParameterError, match="y must be a sequence"):
        p.fit((row for row in X), iter(Y))


def test_step_error_names_the_step_and_minibatch() -> None:
    p = SequentialQueuedPipeline(
        [("ipca", IncrementalPCA(n_components=3))], batch_size=25, backend="thread", fit_mode="partial"
    )
    with pytest.raises(ValueError, match="n_components=3 invalid for n_features=2") as info:
        p.fit(X[:, :2])
    assert "step 'ipca' (in the parent, partial_fit on minibatch 0)" in "".join(info.value.__notes__)


def test_islice_of_a_long_generator_is_enough() -> None:
    """An endless source can be fitted on its first N items with itertools.islice."""
    p = SequentialQueuedPipeline([StandardScaler()], batch_size=16, backend="thread", fit_mode="partial")
    p.fit(itertools.islice(itertools.cycle(X), 530))
    np.testing.assert_allclose(p[0].mean_, X.mean(axis=0))


class FailOn(StandardScaler):
    """``partial_fit`` raises on the minibatch that holds row value ``bad`` in column 0."""

    def __init__(self, bad: float = -1.0) -> None:
        super().__init__()
        self.bad = bad

    def partial_fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> FailOn:
        if self.bad in np.asarray(X)[:, 0]:
            raise ArithmeticError(f"bad row {self.bad}")
        return super().partial_fit(X, y, sample_weight)


def test_partial_fit_error_stops_the_upstream_workers(backend: str) -> None:
    rows = np.arange(400, dtype=float).reshape(-1, 2)
    p = SequentialQueuedPipeline(
        [("plus", 2, AddConstant(1)), ("fail", FailOn(bad=21.0))], batch_size=4, backend=backend, fit_mode="partial",
    )
    with pytest.raises(ArithmeticError, match=r"bad row 21\.0") as info:
        p.fit(rows)
    assert "step 'fail' (in the parent, partial_fit on minibatch 2)" in "".join(info.value.__notes__)
    # (the conftest fixture fails the test if a worker is left behind)
