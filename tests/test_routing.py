"""Metadata routing: fit params reach the steps that request them, cut with the data.

With ``enable_metadata_routing=True`` each step gets exactly what it asked for
(``set_fit_request``, ``set_partial_fit_request``, ``set_transform_request``),
as in ``sklearn.pipeline.Pipeline``; without it, the pipeline takes
``step__param`` and the union gives every param to every branch (as
``FeatureUnion``). The composites nest in scikit-learn's Pipeline and
GridSearchCV with routing on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import sklearn
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.exceptions import UnsetMetadataPassedError
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import StandardScaler

from neuraxle_stream import (
    BaseTransformer,
    InvalidParameterError,
    ParallelQueuedFeatureUnion,
    ParallelWorkersWrapper,
    SequentialQueuedPipeline,
)

pytestmark = pytest.mark.timeout(120)

RNG = np.random.RandomState(0)
X = RNG.randn(53, 3)
Y = (X[:, 0] > 0).astype(int)
W = RNG.rand(53) + 0.5


class WeightedScaler(StandardScaler):
    """A StandardScaler that records the ``sample_weight`` each of its calls got (in its instance)."""

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> WeightedScaler:
        self.fit_weights_ = [None if sample_weight is None else np.array(sample_weight)]
        return super().fit(X, y, sample_weight=sample_weight)


#: The weights every ``WeightLog.fit`` saw, across clones (GridSearchCV fits clones).
FIT_LOG: list[tuple[int, Any]] = []


class WeightLog(BaseTransformer):
    """Fittable; logs ``(rows, sample_weight)`` of each ``fit`` in :data:`FIT_LOG`."""

    def fit(self, X: Any, y: Any = None, sample_weight: Any = None) -> WeightLog:
        FIT_LOG.append((len(X), None if sample_weight is None else np.array(sample_weight)))
        self.fitted_ = True
        return self

    def transform(self, data_inputs: Any) -> Any:
        return data_inputs


class WeightRows(TransformerMixin, BaseEstimator):
    """Multiplies each row by its weight in ``transform``: shows which weights a minibatch got.

    (A scikit-learn transformer, so that the reference Pipeline can run it too. Stateless,
    and tagged so, as scikit-learn asks: else ``transform`` before ``fit`` is refused.)
    """

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.requires_fit = False
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        return True

    def fit(self, X: Any, y: Any = None) -> WeightRows:
        return self

    def fit_transform(self, X: Any, y: Any = None, sample_weight: Any = None) -> Any:
        return self.fit(X, y).transform(X, sample_weight=sample_weight)

    def transform(self, data_inputs: Any, sample_weight: Any = None) -> Any:
        if sample_weight is None:
            return data_inputs
        assert len(sample_weight) == len(data_inputs)
        return np.asarray(data_inputs) * np.asarray(sample_weight)[:, None]


@pytest.fixture
def routing():
    with sklearn.config_context(enable_metadata_routing=True):
        yield


# -- routing on -------------------------------------------------------------------------------


@pytest.mark.usefixtures("routing")
@pytest.mark.parametrize("batch_size", [1, 7, 100])
def test_requesting_step_gets_exactly_its_params(batch_size: int) -> None:
    asks = WeightedScaler().set_fit_request(sample_weight=True)
    declines = WeightedScaler().set_fit_request(sample_weight=False)
    p = SequentialQueuedPipeline(
        [("asks", 2, asks), ("declines", declines)], batch_size=batch_size, backend="thread"
    )
    out = p.fit_transform(X, sample_weight=W)
    np.testing.assert_array_equal(p["asks"].fit_weights_[0], W)
    assert p["declines"].fit_weights_ == [None]
    ref = Pipeline([("asks", clone_of(asks)), ("declines", clone_of(declines))])
    np.testing.assert_allclose(out, ref.fit_transform(X, sample_weight=W))


def clone_of(step: Any) -> Any:
    return sklearn.clone(step)


@pytest.mark.usefixtures("routing")
def test_rows_dropped_by_keep_incomplete_batch_are_dropped_from_the_params() -> None:
    p = SequentialQueuedPipeline(
        [("first", WeightedScaler()), ("second", WeightedScaler().set_fit_request(sample_weight=True))],
        batch_size=10, keep_incomplete_batch=False, backend="thread",
    )
    p.steps[0][1].set_fit_request(sample_weight=True)
    p.fit(X, sample_weight=W)
    np.testing.assert_array_equal(p["first"].fit_weights_[0], W)  # fitted on X itself
    np.testing.assert_array_equal(p["second"].fit_weights_[0], W[:50])  # on 5 full minibatches


@pytest.mark.usefixtures("routing")
def test_params_given_but_not_requested_raise_sklearn_errors() -> None:
    p = SequentialQueuedPipeline([("scale", StandardScaler())], backend="thread")
    with pytest.raises(UnsetMetadataPassedError, match=r"\[sample_weight\] are passed but are not explicitly set"):
        p.fit(X, sample_weight=W)
    p = SequentialQueuedPipeline([("scale", StandardScaler().set_fit_request(sample_weight=True))], backend="thread")
    with pytest.raises(TypeError, match=r"got unexpected argument\(s\) \{'groups'\}, which are not routed"):
        p.fit(X, groups=W)


@pytest.mark.usefixtures("routing")
def test_transform_params_are_cut_per_minibatch(backend: str) -> None:
    def scaler() -> StandardScaler:
        return StandardScaler().set_fit_request(sample_weight=False)

    steps = [("weigh", 2, WeightRows().set_transform_request(sample_weight=True)), ("scale", scaler())]
    p = SequentialQueuedPipeline(steps, batch_size=7, backend=backend)
    out = p.fit_transform(X, sample_weight=W)
    ref = Pipeline([("weigh", WeightRows().set_transform_request(sample_weight=True)), ("scale", scaler())])
    np.testing.assert_allclose(out, ref.fit_transform(X, sample_weight=W))
    np.testing.assert_allclose(p.transform(X, sample_weight=W), ref.transform(X, sample_weight=W))
    np.testing.assert_allclose(p.transform(X), ref.transform(X))  # nothing given: nothing passed


@pytest.mark.usefixtures("routing")
def test_transform_params_follow_padding() -> None:
    p = SequentialQueuedPipeline(
        [WeightRows().set_transform_request(sample_weight=True)],
        batch_size=10, default_value_data_inputs=0.0, backend="thread",
    )
    np.testing.assert_allclose(p.transform(X, sample_weight=W), X * W[:, None])


@pytest.mark.usefixtures("routing")
def test_transform_params_on_a_streamed_source_are_cut_by_the_row_offset(backend: str) -> None:
    """A generator has no length: a param with at least as many rows as the first minibatch is per-sample."""
    p = SequentialQueuedPipeline(
        [("weigh", 2, WeightRows().set_transform_request(sample_weight=True))], batch_size=7, backend=backend
    ).fit(X)
    np.testing.assert_allclose(p.transform((row for row in X), sample_weight=W), X * W[:, None])
    padded = SequentialQueuedPipeline(
        [WeightRows().set_transform_request(sample_weight=True)],
        batch_size=10, default_value_data_inputs=np.zeros(X.shape[1]), backend="thread",
    ).fit(X)
    np.testing.assert_allclose(padded.transform((row for row in X), sample_weight=W), X * W[:, None])


@pytest.mark.usefixtures("routing")
def test_transform_params_too_short_for_a_streamed_source_are_refused() -> None:
    p = SequentialQueuedPipeline(
        [("weigh", WeightRows().set_transform_request(sample_weight=True))], batch_size=10, backend="thread"
    ).fit(X)
    with pytest.raises(
        InvalidParameterError,
        match=r"The 'sample_weight' param of step 'weigh' \(transform\) has 45 rows, but 50 rows of X have "
        r"reached the step so far\. X is streamed",
    ):
        p.transform((row for row in X), sample_weight=W[:45])


@pytest.mark.usefixtures("routing")
def test_partial_fit_transform_of_a_callable_source_cuts_the_transform_params() -> None:
    """The runs feeding a later step's partial_fit, and the final transform, read a streamed source."""

    class IncrementalWeightRows(WeightRows):
        def partial_fit(self, X: Any, y: Any = None) -> IncrementalWeightRows:
            return self

    p = SequentialQueuedPipeline(
        [("weigh", 2, IncrementalWeightRows().set_transform_request(sample_weight=True)),
         ("scale", StandardScaler().set_partial_fit_request(sample_weight=True))],
        batch_size=8, backend="thread", fit_mode="partial",
    )
    out = p.fit_transform(lambda: (row for row in X), sample_weight=W)
    weighted = X * W[:, None]
    want = StandardScaler()
    for start in range(0, len(X), 8):
        want.partial_fit(weighted[start : start + 8], sample_weight=W[start : start + 8])
    np.testing.assert_allclose(p["scale"].mean_, want.mean_)
    np.testing.assert_allclose(out, want.transform(weighted))


def test_routed_params_head_cuts_per_sample_params_to_the_first_rows() -> None:
    """What ``trace=N`` needs: the params of the first N rows, for a sized or a streamed X."""
    from neuraxle_stream._routing import RoutedParams

    classes = np.array([0, 1])
    for n_samples in (len(X), None):
        routed = RoutedParams({"s": {"sample_weight": W, "classes": classes}}, {"t": {"w": W}}, n_samples)
        head = routed.head(5)
        assert head.n_samples == 5
        np.testing.assert_array_equal(head.fit_params("s")["sample_weight"], W[:5])
        assert head.fit_params("s")["classes"] is classes
        np.testing.assert_array_equal(head.transform["t"]["w"], W[:5])


@pytest.mark.usefixtures("routing")
def test_transform_params_with_memory_are_refused(tmp_path: Any) -> None:
    p = SequentialQueuedPipeline(
        [("weigh", WeightRows().set_transform_request(sample_weight=True))], memory=tmp_path, backend="thread"
    )
    with pytest.raises(ValueError, match=r"cannot route metadata to transform \(\['weigh'\]\) with memory="):
        p.transform(X, sample_weight=W)


@pytest.mark.usefixtures("routing")
def test_union_routes_to_each_branch() -> None:
    union = ParallelQueuedFeatureUnion(
        [("asks", WeightedScaler().set_fit_request(sample_weight=True)),
         ("declines", WeightedScaler().set_fit_request(sample_weight=False))],
        batch_size=8, backend="thread",
    )
    out = union.fit_transform(X, sample_weight=W)
    np.testing.assert_array_equal(union["asks"].fit_weights_[0], W)
    assert union["declines"].fit_weights_ == [None]
    ref = FeatureUnion([
        ("asks", WeightedScaler().set_fit_request(sample_weight=True)),
        ("declines", WeightedScaler().set_fit_request(sample_weight=False)),
    ])
    np.testing.assert_allclose(out, ref.fit_transform(X, sample_weight=W))


@pytest.mark.usefixtures("routing")
def test_get_metadata_routing_describes_the_steps() -> None:
    p = SequentialQueuedPipeline([("scale", StandardScaler().set_fit_request(sample_weight=True)), ("f", abs)])
    routing = p.get_metadata_routing()
    assert routing.consumes("fit", ["sample_weight", "groups"]) == {"sample_weight"}
    assert routing.consumes("transform", ["sample_weight"]) == set()
    partial = SequentialQueuedPipeline(
        [("scale", StandardScaler().set_partial_fit_request(sample_weight=True))], fit_mode="partial"
    )
    assert partial.get_metadata_routing().consumes("fit", ["sample_weight"]) == {"sample_weight"}
    wrapper = ParallelWorkersWrapper(StandardScaler().set_fit_request(sample_weight=True), backend="thread")
    assert wrapper.get_metadata_routing().consumes("fit", ["sample_weight"]) == {"sample_weight"}
    wrapper.fit(X, sample_weight=W)


@pytest.mark.usefixtures("routing")
def test_routing_inside_grid_search() -> None:
    FIT_LOG.clear()
    inner = SequentialQueuedPipeline(
        [("log", WeightLog().set_fit_request(sample_weight=True))], batch_size=8, backend="thread"
    )
    model = Pipeline([("queued", inner), ("clf", LogisticRegression().set_fit_request(sample_weight=True).set_score_request(sample_weight=True))])
    cv = StratifiedKFold(2)
    search = GridSearchCV(model, {"queued__batch_size": [4, 16]}, cv=cv)
    search.fit(X, Y, sample_weight=W)
    expected = [W[train] for train, _ in cv.split(X, Y)] * 2 + [W]  # 2 candidates x 2 folds, then refit
    assert len(FIT_LOG) == len(expected)
    for (n, got), want in zip(FIT_LOG, expected):
        assert n == len(want)
        np.testing.assert_array_equal(got, want)


# -- routing off --------------------------------------------------------------------------------


def test_routing_off_takes_step_double_underscore_params() -> None:
    p = SequentialQueuedPipeline([("scale", WeightedScaler()), ("other", WeightedScaler())], backend="thread")
    p.fit(X, scale__sample_weight=W)
    np.testing.assert_array_equal(p["scale"].fit_weights_[0], W)
    assert p["other"].fit_weights_ == [None]


def test_routing_off_refuses_params_without_a_step() -> None:
    p = SequentialQueuedPipeline([("scale", WeightedScaler())], backend="thread")
    with pytest.raises(ValueError, match=r"SequentialQueuedPipeline\.fit does not accept the sample_weight parameter"):
        p.fit(X, sample_weight=W)
    with pytest.raises(ValueError, match="'nope__sample_weight' for step 'nope', which is not a step"):
        p.fit_transform(X, nope__sample_weight=W)
    with pytest.raises(ValueError, match="only supported if enable_metadata_routing=True"):
        p.fit(X).transform(X, sample_weight=W)


def test_routing_off_union_gives_every_branch_the_params() -> None:
    union = ParallelQueuedFeatureUnion([("a", WeightedScaler()), ("b", WeightedScaler())], backend="thread")
    union.fit(X, sample_weight=W)
    for name in "ab":
        np.testing.assert_array_equal(union[name].fit_weights_[0], W)


@pytest.mark.usefixtures("routing")
def test_passthrough_steps_are_not_routed_to() -> None:
    p = SequentialQueuedPipeline(
        [("skip", "passthrough"), ("scale", WeightedScaler().set_fit_request(sample_weight=True)), ("none", None)],
        batch_size=8, backend="thread",
    )
    assert set(p.get_metadata_routing()._route_mappings) == {"scale"}
    p.fit(X, sample_weight=W)
    np.testing.assert_array_equal(p["scale"].fit_weights_[0], W)


@pytest.mark.usefixtures("routing")
def test_union_transform_params_reach_the_requesting_branch(backend: str) -> None:
    union = ParallelQueuedFeatureUnion(
        [("weigh", 2, WeightRows().set_transform_request(sample_weight=True)), ("plain", WeightRows().set_transform_request(sample_weight=False))],
        batch_size=6, backend=backend,
    )
    out = union.fit(X).transform(X, sample_weight=W)
    np.testing.assert_allclose(out, np.hstack([X * W[:, None], X]))


@pytest.mark.usefixtures("routing")
@pytest.mark.parametrize("cls", [SequentialQueuedPipeline, ParallelQueuedFeatureUnion])
def test_traced_fit_of_a_streamed_source_gets_the_params_of_the_traced_rows(cls: Any) -> None:
    weights = np.arange(1.0, len(X) + 1.0)
    p = cls([("s", StandardScaler().set_fit_request(sample_weight=True))], batch_size=4, backend="thread")
    p.fit_transform(iter(list(X)), trace=5, sample_weight=weights)
    expected = StandardScaler().fit(X[:5], sample_weight=weights[:5])
    np.testing.assert_allclose(p.named_steps["s"].mean_, expected.mean_)
