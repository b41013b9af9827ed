"""Issue 19: where scikit-learn's ``Pipeline`` and ``FeatureUnion`` and ours meet the same input.

Each test runs scikit-learn itself on the same steps and input and asks for
the same outcome: the same output, the same exception type and scikit-learn's
words in the message. See also tests/test_sklearn_upstream.py (scikit-learn's
own test_pipeline.py with our classes substituted).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import sklearn
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.decomposition import PCA
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.utils import get_tags

from neuraxle_stream import ParallelQueuedFeatureUnion, SequentialQueuedPipeline

X = np.arange(40.0).reshape(20, 2)


class ConfigRecorder(TransformerMixin, BaseEstimator):
    """Records ``assume_finite`` of the scikit-learn config it is fitted and run under."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def fit(self, X: Any, y: Any = None) -> ConfigRecorder:
        self.fit_assume_finite_ = sklearn.get_config()["assume_finite"]
        return self

    def transform(self, X: Any) -> np.ndarray:
        flags = [float(self.fit_assume_finite_), float(sklearn.get_config()["assume_finite"])]
        return np.tile(flags, (len(X), 1)) + self.offset


def _ours(cls: type, steps: list[Any], backend: str, **kwargs: Any) -> Any:
    return cls(steps, batch_size=4, backend=backend, **kwargs)


def _cloned(steps: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [(name, step if isinstance(step, str) else clone(step)) for name, step in steps]


def _raised(fn: Any) -> BaseException:
    with pytest.raises(Exception) as info:
        fn()
    return info.value


def _same_error(reference: Any, ours: Any) -> None:
    """Ours raises an instance of scikit-learn's exception type, with its message in ours."""
    expected, got = _raised(reference), _raised(ours)
    assert isinstance(got, type(expected)), (got, expected)
    # scikit-learn's words, with our class names where it names its own
    words = re.sub(r"\bPipeline\b", "SequentialQueuedPipeline", str(expected))
    words = re.sub(r"\bFeatureUnion\b", "ParallelQueuedFeatureUnion", words)
    assert words in str(got), (str(got), words)


@pytest.mark.parametrize(
    "steps",
    [
        [("a__q", StandardScaler()), ("b", StandardScaler())],
        [("a", StandardScaler()), ("a", PCA(1))],
        [("pca", PCA)],
        [("scale", StandardScaler), ("pca", PCA())],
    ],
    ids=["dunder", "duplicate", "class", "class-first"],
)
@pytest.mark.parametrize("kind", ["pipeline", "union"])
def test_steps_validated_as_sklearn(steps: list[Any], kind: str) -> None:
    reference, ours = (Pipeline, SequentialQueuedPipeline) if kind == "pipeline" else (
        FeatureUnion, ParallelQueuedFeatureUnion)
    _same_error(lambda: reference(steps).fit(X), lambda: _ours(ours, steps, "thread").fit(X))


@pytest.mark.parametrize("kind", ["pipeline", "union"])
def test_step_name_conflicting_with_a_parameter_is_refused(kind: str) -> None:
    """``("batch_size", step)`` would shadow ``get_params()["batch_size"]``: refused at fit, as sklearn's ``("steps", step)``."""
    reference, ours = (Pipeline, SequentialQueuedPipeline) if kind == "pipeline" else (
        FeatureUnion, ParallelQueuedFeatureUnion)
    param = "steps" if kind == "pipeline" else "transformer_list"
    expected = _raised(lambda: reference([(param, StandardScaler())]).fit(X))
    got = _raised(lambda: _ours(ours, [("batch_size", StandardScaler())], "thread").fit(X))
    assert isinstance(got, type(expected))
    assert str(expected).replace(param, "batch_size") in str(got)


def test_empty_pipeline_refused_at_fit() -> None:
    _same_error(lambda: Pipeline([]).fit(X), lambda: _ours(SequentialQueuedPipeline, [], "thread").fit(X))
    assert SequentialQueuedPipeline([]).__sklearn_tags__() == Pipeline([]).__sklearn_tags__()


def test_step_without_transform_refused_in_sklearn_words() -> None:
    _same_error(
        lambda: Pipeline([("junk", ())]).fit(X),
        lambda: _ours(SequentialQueuedPipeline, [("junk", ())], "thread").fit(X),
    )


def test_unknown_weight_and_missing_feature_names_in_sklearn_words() -> None:
    weights = {"nope": 2.0}
    _same_error(
        lambda: FeatureUnion([("s", StandardScaler())], transformer_weights=weights).fit(X),
        lambda: _ours(ParallelQueuedFeatureUnion, [("s", StandardScaler())], "thread",
                      transformer_weights=weights).fit(X),
    )
    # ConfigRecorder has no get_feature_names_out
    reference = FeatureUnion([("c", ConfigRecorder())]).fit(X)
    ours = _ours(ParallelQueuedFeatureUnion, [("c", ConfigRecorder())], "thread").fit(X)
    _same_error(reference.get_feature_names_out, lambda: ours.get_feature_names_out())


def test_union_array_api_tag_as_feature_union() -> None:
    for steps in ([("s", StandardScaler()), ("p", PCA(1))], [("s", StandardScaler()), ("c", ConfigRecorder())]):
        reference = get_tags(FeatureUnion(_cloned(steps))).array_api_support
        assert get_tags(ParallelQueuedFeatureUnion(steps)).array_api_support == reference


@pytest.mark.parametrize("method", ["fit_transform", "fit_then_transform"])
def test_union_branches_fitted_under_the_callers_config(backend: str, method: str) -> None:
    """Branches fitted in parallel threads see the caller's (thread-local) scikit-learn config."""
    steps = [("a", ConfigRecorder()), ("b", ConfigRecorder(offset=10.0))]
    ours = _ours(ParallelQueuedFeatureUnion, steps, backend)
    reference = FeatureUnion(_cloned(steps))
    with sklearn.config_context(assume_finite=True):
        if method == "fit_transform":
            got, expected = ours.fit_transform(X), reference.fit_transform(X)
        else:
            got, expected = ours.fit(X).transform(X), reference.fit(X).transform(X)
    np.testing.assert_array_equal(got, expected)
    assert expected[0].tolist() == [1.0, 1.0, 11.0, 11.0]
    assert all(step.fit_assume_finite_ for _, step in steps)


def test_error_messages_name_sklearn_words_only_once() -> None:
    """Our sentence comes first (STYLE.md form), scikit-learn's follows once."""
    message = str(_raised(lambda: _ours(SequentialQueuedPipeline, [("a", 1), ("b", StandardScaler())], "thread").fit(X)))
    assert re.match(r"The step 'a' of SequentialQueuedPipeline must be an object with a transform method", message)
    assert message.count("All intermediate steps should be transformers") == 1


# -- fit_transform: each fittable step's own (DESIGN.md section 6) ------------------------

RNG = np.random.default_rng(0)
CATEGORIES = RNG.integers(0, 6, size=(200, 2))
TARGET = CATEGORIES[:, 0] * 0.7 + RNG.normal(size=200)


def _target_encoder() -> Any:
    from sklearn.model_selection import KFold
    from sklearn.preprocessing import TargetEncoder

    # fit_transform cross-fits: it differs from fit().transform()
    return TargetEncoder(cv=KFold(5, shuffle=True, random_state=0))


@pytest.mark.parametrize("memory", [False, True], ids=["no-cache", "cache"])
def test_pipeline_fit_transform_is_each_steps_own(backend: str, memory: bool, tmp_path: Any) -> None:
    reference = Pipeline([("te", _target_encoder()), ("scale", StandardScaler())])
    expected = reference.fit_transform(CATEGORIES, TARGET)
    ours = _ours(
        SequentialQueuedPipeline, [("te", 2, _target_encoder()), ("scale", StandardScaler())], backend,
        memory=str(tmp_path) if memory else None,
    )
    np.testing.assert_array_equal(ours.fit_transform(CATEGORIES, TARGET), expected)
    if memory:  # the second call loads the fitted steps and their fit_transform outputs
        np.testing.assert_array_equal(ours.fit_transform(CATEGORIES, TARGET), expected)
    # then transform is the fitted steps' transform, as sklearn's
    np.testing.assert_array_equal(ours.transform(CATEGORIES), reference.transform(CATEGORIES))
    np.testing.assert_array_equal(ours.fit(CATEGORIES, TARGET).transform(CATEGORIES),
                                  reference.fit(CATEGORIES, TARGET).transform(CATEGORIES))


def test_union_fit_transform_is_each_branchs_own(backend: str) -> None:
    steps = [("te", _target_encoder()), ("scale", StandardScaler()), ("pt", "passthrough"),
             ("square", FunctionTransformer(np.square))]
    reference = FeatureUnion(_cloned(steps), transformer_weights={"te": 3.0})
    ours = _ours(ParallelQueuedFeatureUnion, steps, backend, transformer_weights={"te": 3.0})
    np.testing.assert_array_equal(ours.fit_transform(CATEGORIES, TARGET), reference.fit_transform(CATEGORIES, TARGET))
    np.testing.assert_array_equal(ours.transform(CATEGORIES), reference.transform(CATEGORIES))


def test_wrapper_fit_transform_is_the_steps_own(backend: str) -> None:
    from neuraxle_stream import ParallelWorkersWrapper

    ours = ParallelWorkersWrapper(_target_encoder(), n_workers=2, batch_size=16, backend=backend)
    np.testing.assert_array_equal(ours.fit_transform(CATEGORIES, TARGET),
                                  _target_encoder().fit_transform(CATEGORIES, TARGET))


class MarksItsOutput(TransformerMixin, BaseEstimator):
    """``fit_transform`` and ``transform`` give different outputs: which one the workers ran shows."""

    def fit(self, X: Any, y: Any = None) -> MarksItsOutput:
        self.fitted_ = True
        return self

    def fit_transform(self, X: Any, y: Any = None) -> np.ndarray:
        return self.fit(X, y).transform(X) + 1000.0

    def transform(self, X: Any) -> np.ndarray:
        return np.asarray(X, dtype=float)


def test_fit_transform_output_is_not_computed_again(backend: str) -> None:
    steps = [("mark", MarksItsOutput()), ("square", FunctionTransformer(np.square)), ("again", MarksItsOutput())]
    reference = Pipeline(_cloned(steps))
    ours = _ours(SequentialQueuedPipeline, steps, backend)
    np.testing.assert_array_equal(ours.fit_transform(X), reference.fit_transform(X))
    stats = ours.stats_
    assert stats["mark"].num_tasks == 0 and stats["again"].num_tasks == 0  # fitted in the parent only
    assert stats["square"].num_tasks == 5  # stateless: in its workers (20 rows, minibatches of 4)


def test_single_branch_1d_output_is_one_column(backend: str) -> None:
    union = _ours(ParallelQueuedFeatureUnion, [("first", FunctionTransformer(lambda x: x[:, 0]))], backend)
    assert union.fit_transform(X).shape == (20, 1)
    two = _ours(ParallelQueuedFeatureUnion, [("a", FunctionTransformer(lambda x: x[:, 0])),
                                             ("b", FunctionTransformer(lambda x: x[:, 1]))], backend)
    assert two.fit_transform(X).shape == (20, 2)


def test_slicing_refuses_a_step_other_than_1() -> None:
    steps = [("a", StandardScaler()), ("b", PCA(1))]
    _same_error(lambda: Pipeline(steps)[::-1], lambda: SequentialQueuedPipeline(steps)[::-1])
    assert list(SequentialQueuedPipeline(steps)[::1].named_steps) == ["a", "b"]


def test_fit_transform_absent_with_a_step_that_does_not_transform() -> None:
    """scikit-learn's duck typing: no ``fit_transform`` attribute (``hasattr`` is false)."""
    assert not hasattr(Pipeline([("junk", ())]), "fit_transform")
    for cls in (SequentialQueuedPipeline, ParallelQueuedFeatureUnion):
        assert not hasattr(cls([("junk", ())]), "fit_transform")
        assert hasattr(cls([("s", StandardScaler()), ("pt", "passthrough")]), "fit_transform")


def test_transform_of_a_step_never_fitted_raises_not_fitted(backend: str) -> None:
    class Stateless(TransformerMixin, BaseEstimator):  # has fit, says nothing of being stateless
        def fit(self, X: Any, y: Any = None) -> Any:
            return self

        def transform(self, X: Any) -> Any:
            return X

    from sklearn.exceptions import NotFittedError

    _same_error(lambda: Pipeline([("s", Stateless())]).transform(X),
                lambda: _ours(SequentialQueuedPipeline, [("s", Stateless())], backend).transform(X))
    with pytest.raises(NotFittedError, match="Its step 's' was never fitted"):
        _ours(ParallelQueuedFeatureUnion, [("s", Stateless())], backend).transform(X)
    # once fitted by the composite, it runs (even with no fitted attribute of its own)
    ours = _ours(SequentialQueuedPipeline, [("s", Stateless())], backend).fit(X)
    np.testing.assert_array_equal(ours.transform(X), X)
    np.testing.assert_array_equal(ours[:1].transform(X), X)  # a slice of the same fitted steps


class RecordsXVal(TransformerMixin, BaseEstimator):
    """Keeps the ``X_val`` its ``fit`` got."""

    def fit(self, X: Any, y: Any = None, X_val: Any = None) -> RecordsXVal:
        self.X_val_ = X_val
        return self

    def transform(self, X: Any) -> Any:
        return X


def test_transform_input_as_sklearn(backend: str) -> None:
    X_val = X[::2] + 0.5
    with sklearn.config_context(enable_metadata_routing=True):
        def steps() -> list[Any]:
            return [("scale", StandardScaler()), ("rec", RecordsXVal().set_fit_request(X_val=True))]

        reference = Pipeline(steps(), transform_input=["X_val"]).fit(X, X_val=X_val)
        ours = _ours(SequentialQueuedPipeline, steps(), backend, transform_input=["X_val"]).fit(X, X_val=X_val)
        np.testing.assert_array_equal(ours["rec"].X_val_, reference["rec"].X_val_)
        assert not np.array_equal(ours["rec"].X_val_, X_val)  # transformed by the fitted scaler
    _same_error(lambda: Pipeline(steps(), transform_input=["X_val"]).fit(X),
                lambda: _ours(SequentialQueuedPipeline, steps(), backend, transform_input=["X_val"]).fit(X))


def test_fit_routes_no_transform_request_of_the_last_step(backend: str) -> None:
    """The issue's case: ``fit`` never transforms with the last step, so it needs no transform request."""
    from sklearn.tests.metadata_routing_common import ConsumingTransformer, check_recorded_metadata

    weights = np.ones(len(X))
    with sklearn.config_context(enable_metadata_routing=True):
        Pipeline([("t", ConsumingTransformer().set_fit_request(sample_weight=True))]).fit(X, sample_weight=weights)
        FeatureUnion([("t", ConsumingTransformer().set_fit_request(sample_weight=True))]).fit(X, sample_weight=weights)
        for cls in (SequentialQueuedPipeline, ParallelQueuedFeatureUnion):
            step = ConsumingTransformer().set_fit_request(sample_weight=True)
            _ours(cls, [("t", step)], backend).fit(X, sample_weight=weights)
            check_recorded_metadata(step, method="fit", parent="fit", sample_weight=weights)
