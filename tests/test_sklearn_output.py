"""scikit-learn's output API on the queued composites (neuraxle_stream._sklearn_output).

Each behaviour is compared with ``sklearn.pipeline.Pipeline`` or
``FeatureUnion`` on the same steps: ``get_feature_names_out`` (with
``input_features`` and ``verbose_feature_names_out``), ``set_output`` (pandas
output, index kept, on threads and processes, over batch sizes),
``transformer_weights``, ``"drop"`` / ``"passthrough"`` / ``None`` steps, and
the notebook diagram.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd
import pytest
import sklearn
from doubles import AddConstant, MeanCenterer
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    OneHotEncoder,
    PolynomialFeatures,
    StandardScaler,
)

from neuraxle_stream import (
    InvalidParameterError,
    ParallelQueuedFeatureUnion,
    ParallelWorkersWrapper,
    SequentialQueuedPipeline,
    TraceResult,
)
from neuraxle_stream.steps import is_fittable

RNG = np.random.RandomState(3)
X_ARRAY = RNG.randn(41, 3)
# a non-default index, to see that the output keeps it
FRAME = pd.DataFrame(X_ARRAY, columns=["a", "b", "c"], index=np.arange(41) * 10 + 5)
CATEGORIES = pd.DataFrame(
    {"color": RNG.choice(["red", "green", "blue"], 41), "size": RNG.choice(["S", "M"], 41)},
    index=FRAME.index,
)

BATCH_SIZES = [1, 7, 1000]


def pipeline_steps() -> list[tuple[str, Any]]:
    return [("scale", StandardScaler()), ("poly", PolynomialFeatures(2)), ("pca", PCA(3))]


def union_steps() -> list[tuple[str, Any]]:
    return [("scale", StandardScaler()), ("pca", PCA(2)), ("poly", PolynomialFeatures(2))]


def queued(cls: type, steps: list[tuple[str, Any]], **kwargs: Any) -> Any:
    """The composite of ``steps``, two workers per step."""
    return cls([(name, 2, step) for name, step in steps], **{"backend": "thread", **kwargs})


def assert_frames_equal(actual: Any, expected: pd.DataFrame) -> None:
    assert isinstance(actual, pd.DataFrame), type(actual)
    pd.testing.assert_frame_equal(actual, expected, check_exact=False, rtol=1e-7, atol=1e-10)


# --- get_feature_names_out --------------------------------------------------------------------


@pytest.mark.parametrize("X", [X_ARRAY, FRAME], ids=["array", "frame"])
def test_pipeline_feature_names_equal_sklearn(X: Any) -> None:
    ours = queued(SequentialQueuedPipeline, pipeline_steps(), batch_size=7).fit(X)
    reference = Pipeline(pipeline_steps()).fit(X)
    np.testing.assert_array_equal(ours.get_feature_names_out(), reference.get_feature_names_out())
    ours = queued(SequentialQueuedPipeline, [("scale", StandardScaler()), ("poly", PolynomialFeatures(2))]).fit(X)
    reference = Pipeline([("scale", StandardScaler()), ("poly", PolynomialFeatures(2))]).fit(X)
    features = ["a", "b", "c"] if X is FRAME else ["u", "v", "w"]
    np.testing.assert_array_equal(ours.get_feature_names_out(features), reference.get_feature_names_out(features))


@pytest.mark.parametrize("verbose", [True, False])
@pytest.mark.parametrize("X", [X_ARRAY, FRAME], ids=["array", "frame"])
def test_union_feature_names_equal_sklearn(X: Any, verbose: bool) -> None:
    steps = [("scale", StandardScaler()), ("pca", PCA(2))]
    ours = queued(ParallelQueuedFeatureUnion, steps, verbose_feature_names_out=verbose).fit(X)
    reference = FeatureUnion(steps, verbose_feature_names_out=verbose).fit(X)
    np.testing.assert_array_equal(ours.get_feature_names_out(), reference.get_feature_names_out())
    np.testing.assert_array_equal(
        ours.get_feature_names_out(["p", "q", "r"]) if X is X_ARRAY else ours.get_feature_names_out(["a", "b", "c"]),
        reference.get_feature_names_out(["p", "q", "r"]) if X is X_ARRAY else reference.get_feature_names_out(["a", "b", "c"]),
    )


def test_verbose_feature_names_out_false_refuses_duplicates_as_feature_union() -> None:
    steps = [("scale", StandardScaler()), ("center", MeanCenterer())]
    ours = queued(ParallelQueuedFeatureUnion, steps, verbose_feature_names_out=False).fit(FRAME)
    reference = FeatureUnion(steps, verbose_feature_names_out=False).fit(FRAME)
    with pytest.raises(ValueError) as expected:
        reference.get_feature_names_out()
    message = r"Output feature names: \['a', 'b', 'c'\] are not unique. Please set verbose_feature_names_out=True"
    assert expected.match(message)
    with pytest.raises(ValueError, match=message):
        ours.get_feature_names_out()
    with pytest.raises(ValueError, match=message):  # a pandas output cannot have them either
        ours.set_output(transform="pandas").transform(FRAME)


def test_feature_names_need_every_step_to_give_them() -> None:
    pipeline = SequentialQueuedPipeline([("scale", StandardScaler()), ("add", AddConstant())], backend="thread")
    assert not hasattr(pipeline, "get_feature_names_out")
    # available_if says the attribute is missing; the reason is the cause, in sklearn's words
    with pytest.raises(AttributeError, match=r"has no attribute 'get_feature_names_out'") as missing:
        pipeline.get_feature_names_out()
    assert re.fullmatch(r"Estimator add does not provide get_feature_names_out\. "
                        r"Did you mean to call pipeline\[:-1\]\.get_feature_names_out\(\)\?", str(missing.value.__cause__))
    np.testing.assert_array_equal(pipeline[:-1].fit(FRAME).get_feature_names_out(), ["a", "b", "c"])
    union = ParallelQueuedFeatureUnion([("scale", StandardScaler()), ("add", AddConstant())], backend="thread")
    with pytest.raises(AttributeError, match=r"has no attribute 'get_feature_names_out'") as missing:
        union.get_feature_names_out()
    assert str(missing.value.__cause__) == "Transformer add (type AddConstant) does not provide get_feature_names_out."


# --- set_output ---------------------------------------------------------------------------------


def _check_pipeline_pandas(backend: str, batch_size: int, X: Any) -> None:
    ours = queued(SequentialQueuedPipeline, pipeline_steps(), batch_size=batch_size, backend=backend)
    ours.set_output(transform="pandas")
    reference = Pipeline(pipeline_steps()).set_output(transform="pandas")
    assert_frames_equal(ours.fit_transform(X), reference.fit_transform(X))
    assert_frames_equal(ours.transform(X[:13]), reference.transform(X[:13]))


def _check_union_pandas(backend: str, batch_size: int, X: Any) -> None:
    ours = queued(ParallelQueuedFeatureUnion, union_steps(), batch_size=batch_size, backend=backend)
    ours.set_output(transform="pandas")
    reference = FeatureUnion(union_steps()).set_output(transform="pandas")
    assert_frames_equal(ours.fit_transform(X), reference.fit_transform(X))
    assert_frames_equal(ours.transform(X[:13]), reference.transform(X[:13]))


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
@pytest.mark.parametrize("X", [X_ARRAY, FRAME], ids=["array", "frame"])
def test_pandas_output_equals_sklearn_on_threads(batch_size: int, X: Any) -> None:
    _check_pipeline_pandas("thread", batch_size, X)
    _check_union_pandas("thread", batch_size, X)


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("batch_size", "X"), [(7, FRAME), (1000, X_ARRAY)], ids=["7-frame", "1000-array"])
def test_pandas_output_equals_sklearn_on_processes(batch_size: int, X: Any) -> None:
    _check_pipeline_pandas("process", batch_size, X)
    _check_union_pandas("process", batch_size, X)


@pytest.mark.timeout(60)
def test_set_output_reaches_the_workers_copies(backend: str) -> None:
    pipeline = SequentialQueuedPipeline(
        [("scale", 2, StandardScaler()), ("pca", PCA(2))], batch_size=5, backend=backend
    ).set_output(transform="pandas")
    pipeline.fit(FRAME)
    trace = pipeline.transform(FRAME, trace=8)
    assert isinstance(trace, TraceResult)  # a traced call is not turned into a DataFrame
    for stage in ("scale", "pca"):
        for call in trace[stage].calls:
            assert isinstance(call.retval, pd.DataFrame), (stage, type(call.retval))
    assert list(trace["scale"][0].retval.columns) == ["a", "b", "c"]


def test_one_hot_encoder_pandas_output_like_sklearn() -> None:
    encoder = OneHotEncoder(sparse_output=False)
    ours = SequentialQueuedPipeline([("onehot", 2, clone(encoder))], batch_size=6, backend="thread")
    reference = Pipeline([("onehot", clone(encoder))])
    assert_frames_equal(
        ours.set_output(transform="pandas").fit_transform(CATEGORIES),
        reference.set_output(transform="pandas").fit_transform(CATEGORIES),
    )
    union = ParallelQueuedFeatureUnion([("onehot", clone(encoder)), ("pt", "passthrough")], backend="thread")
    # sklearn gives the passthrough branch as it is (strings): compare names and values
    out = union.fit_transform(CATEGORIES)
    np.testing.assert_array_equal(out, FeatureUnion([("onehot", clone(encoder)), ("pt", "passthrough")])
                                  .fit_transform(CATEGORIES))


def test_sparse_output_refuses_pandas_as_sklearn() -> None:
    union = ParallelQueuedFeatureUnion([("onehot", OneHotEncoder())], backend="thread").set_output(transform="pandas")
    reference = FeatureUnion([("onehot", OneHotEncoder())]).set_output(transform="pandas")
    with pytest.raises(ValueError) as expected:
        reference.fit_transform(CATEGORIES)
    with pytest.raises(type(expected.value), match=f"^{re.escape(str(expected.value))}") as ours:
        union.fit_transform(CATEGORIES)
    assert str(ours.value) == str(expected.value)  # scikit-learn's message, word for word


def test_set_output_default_and_global_config() -> None:
    pipeline = queued(SequentialQueuedPipeline, [("scale", StandardScaler())]).set_output(transform="pandas")
    assert isinstance(pipeline.fit_transform(FRAME), pd.DataFrame)
    pipeline.set_output(transform="default")
    out = pipeline.fit_transform(FRAME)
    assert isinstance(out, np.ndarray)
    assert pipeline.set_output() is pipeline  # None: unchanged
    fresh = queued(ParallelQueuedFeatureUnion, union_steps())
    with sklearn.config_context(transform_output="pandas"):
        out = fresh.fit_transform(FRAME)
        expected = FeatureUnion(union_steps()).fit_transform(FRAME)
    assert_frames_equal(out, expected)


def test_set_output_through_an_sklearn_pipeline() -> None:
    inner = queued(ParallelQueuedFeatureUnion, union_steps(), batch_size=9)
    outer = Pipeline([("features", inner), ("pca", PCA(2))]).set_output(transform="pandas")
    reference = Pipeline([("features", FeatureUnion(union_steps())), ("pca", PCA(2))]).set_output(transform="pandas")
    assert_frames_equal(outer.fit_transform(FRAME), reference.fit_transform(FRAME))
    assert inner._sklearn_output_config == {"transform": "pandas"}


def test_set_output_refuses_polars_and_unknown_containers() -> None:
    pipeline = queued(SequentialQueuedPipeline, [("scale", StandardScaler())])
    with pytest.raises(InvalidParameterError, match=r"The 'transform' parameter of SequentialQueuedPipeline\.set_output "
                                                   r"must be a str among \{'default', 'pandas'\} or None\. Got 'polars' "
                                                   r"instead\. Polars output is not supported"):
        pipeline.set_output(transform="polars")
    with pytest.raises(InvalidParameterError, match=r"Got 'arrow' instead\.$"):
        pipeline.set_output(transform="arrow")


def test_union_of_plain_frames_keeps_the_design_join_without_set_output() -> None:
    union = ParallelQueuedFeatureUnion(
        [("scale", StandardScaler().set_output(transform="pandas")), ("pca", PCA(2).set_output(transform="pandas")),
         ("again", StandardScaler().set_output(transform="pandas"))],
        backend="thread",
    )
    out = union.fit_transform(FRAME)
    # only the duplicate names are prefixed (DESIGN 6); set_output gives FeatureUnion's names
    assert list(out.columns) == ["scale__a", "scale__b", "scale__c", "pca0", "pca1", "again__a", "again__b", "again__c"]
    out = union.set_output(transform="pandas").fit_transform(FRAME)
    reference = FeatureUnion(
        [("scale", StandardScaler()), ("pca", PCA(2)), ("again", StandardScaler())]
    ).set_output(transform="pandas")
    assert_frames_equal(out, reference.fit_transform(FRAME))  # scikit-learn's columns and values
    assert list(out.columns)[3:5] == ["pca__pca0", "pca__pca1"]


def test_step_without_set_output_keeps_its_output() -> None:
    # sklearn's Pipeline refuses a step without set_output; here it keeps its usual output
    pipeline = SequentialQueuedPipeline([("scale", StandardScaler()), ("add", AddConstant(1.0))], batch_size=6,
                                        backend="thread").set_output(transform="pandas")
    expected = StandardScaler().fit_transform(FRAME) + 1.0
    out = pipeline.fit_transform(FRAME)  # the scaler's DataFrames, plus one
    assert isinstance(out, pd.DataFrame) and list(out.index) == list(FRAME.index)
    np.testing.assert_allclose(out.to_numpy(), expected)
    out = pipeline.fit_transform(X_ARRAY)  # one RangeIndex, not one per minibatch
    assert isinstance(out, pd.DataFrame) and out.index.equals(pd.RangeIndex(41))
    # as sklearn's wrapping: a composite that does not name its features converts nothing else
    strings = SequentialQueuedPipeline([("describe", str)], backend="thread").set_output(transform="pandas")
    assert strings.transform([1, 2]) == ["1", "2"]
    with sklearn.config_context(transform_output="pandas"):
        assert SequentialQueuedPipeline([("describe", str)], backend="thread").transform([1, 2]) == ["1", "2"]


# --- transformer_weights ------------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_transformer_weights_equal_feature_union(batch_size: int) -> None:
    weights = {"scale": 3.0, "poly": 0.5}
    ours = queued(ParallelQueuedFeatureUnion, union_steps(), batch_size=batch_size, transformer_weights=weights)
    reference = FeatureUnion(union_steps(), transformer_weights=weights)
    np.testing.assert_allclose(ours.fit_transform(X_ARRAY), reference.fit_transform(X_ARRAY), atol=1e-10)
    np.testing.assert_allclose(ours.transform(X_ARRAY[:5]), reference.transform(X_ARRAY[:5]), atol=1e-10)
    assert_frames_equal(
        ours.set_output(transform="pandas").fit_transform(FRAME),
        reference.set_output(transform="pandas").fit_transform(FRAME),
    )


@pytest.mark.timeout(60)
def test_transformer_weights_on_processes() -> None:
    weights = {"pca": -2.0, "pt": 10.0}
    steps = [("pca", PCA(2)), ("pt", "passthrough")]
    ours = queued(ParallelQueuedFeatureUnion, steps, batch_size=8, backend="process", transformer_weights=weights)
    np.testing.assert_allclose(
        ours.fit_transform(X_ARRAY), FeatureUnion(steps, transformer_weights=weights).fit_transform(X_ARRAY)
    )


def test_transformer_weights_are_validated() -> None:
    union = queued(ParallelQueuedFeatureUnion, union_steps(), transformer_weights={"scale": 2, "nope": 1})
    with pytest.raises(
        InvalidParameterError,
        match=r'Attempting to weight transformer "nope", but it is not present in transformer_list\. '
              r"The steps of ParallelQueuedFeatureUnion are: 'scale', 'pca', 'poly'\.",
    ):
        union.fit(X_ARRAY)
    union.set_params(transformer_weights={"pca": "2"})
    with pytest.raises(InvalidParameterError, match=r"The weight of step 'pca' in the 'transformer_weights' parameter of "
                                                   r"ParallelQueuedFeatureUnion must be a real number\. Got '2' instead\."):
        union.transform(X_ARRAY)
    union.set_params(transformer_weights=[("pca", 2)])
    with pytest.raises(InvalidParameterError, match=r"The 'transformer_weights' parameter of ParallelQueuedFeatureUnion "
                                                   r"must be an instance of 'dict' or None"):
        union.fit(X_ARRAY)
    union.set_params(transformer_weights=None, verbose_feature_names_out="yes")
    with pytest.raises(InvalidParameterError, match=r"The 'verbose_feature_names_out' parameter of "
                                                   r"ParallelQueuedFeatureUnion must be an instance of 'bool'"):
        union.fit(X_ARRAY)


def test_union_parameters_are_sklearn_parameters() -> None:
    union = ParallelQueuedFeatureUnion([("scale", StandardScaler())], transformer_weights={"scale": 2.0},
                                       verbose_feature_names_out=False, fit_mode="full", ray_address="auto")
    params = union.get_params(deep=False)
    assert params["transformer_weights"] == {"scale": 2.0} and params["verbose_feature_names_out"] is False
    assert params["ray_address"] == "auto" and params["fit_mode"] == "full"
    twin = clone(union)
    assert twin.get_params(deep=False).keys() == params.keys()
    assert twin.transformer_weights == {"scale": 2.0}


# --- "drop", "passthrough", None ---------------------------------------------------------------


@pytest.mark.parametrize("skip", ["passthrough", None])
@pytest.mark.parametrize("batch_size", [1, 7])
def test_pipeline_passthrough_equals_sklearn(skip: Any, batch_size: int) -> None:
    steps = [("first", skip), ("scale", StandardScaler()), ("middle", skip), ("pca", PCA(2)), ("last", skip)]
    ours = queued(SequentialQueuedPipeline, steps, batch_size=batch_size)
    reference = Pipeline(steps)
    np.testing.assert_allclose(ours.fit_transform(X_ARRAY), reference.fit_transform(X_ARRAY))
    np.testing.assert_array_equal(ours.get_feature_names_out(), reference.get_feature_names_out())
    assert ours.named_steps["middle"] == skip and ours.get_params()["middle"] == skip
    # a passthrough stage runs in no worker (in fit_transform, scale and pca ran their own
    # fit_transform in the parent: DESIGN.md section 6)
    ours.transform(X_ARRAY)
    assert ours.stats_["middle"].num_tasks == 0 and ours.stats_["scale"].num_tasks > 0
    ours.set_output(transform="pandas")
    assert_frames_equal(ours.fit_transform(FRAME), reference.set_output(transform="pandas").fit_transform(FRAME))


@pytest.mark.timeout(60)
def test_pipeline_of_passthrough_only_is_the_identity(backend: str) -> None:
    pipeline = SequentialQueuedPipeline(["passthrough", ("p", 2, None)], batch_size=4, backend=backend)
    assert list(pipeline.named_steps) == ["passthrough", "p"]
    assert pipeline.fit_transform(X_ARRAY) is X_ARRAY  # nothing to run, as in sklearn's Pipeline
    assert pipeline.stats_["p"].num_tasks == 0
    # a source without a length goes through one identity stage
    np.testing.assert_array_equal(np.stack(list(pipeline.stream(iter(X_ARRAY)))), X_ARRAY)
    assert pipeline.stats_["passthrough"].num_items == 41
    assert pipeline.get_feature_names_out(["u", "v", "w"]) == ["u", "v", "w"]  # as sklearn: input_features as given
    out = pipeline.set_output(transform="pandas").transform(FRAME)
    assert_frames_equal(out, FRAME)
    assert out is not FRAME


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_union_drop_and_passthrough_equal_feature_union(batch_size: int) -> None:
    steps = [("scale", StandardScaler()), ("gone", "drop"), ("pt", "passthrough"), ("pca", PCA(2))]
    ours = queued(ParallelQueuedFeatureUnion, steps, batch_size=batch_size)
    reference = FeatureUnion(steps)
    np.testing.assert_allclose(ours.fit_transform(FRAME), reference.fit_transform(FRAME))
    np.testing.assert_array_equal(ours.get_feature_names_out(), reference.get_feature_names_out())
    assert list(ours.get_feature_names_out())[3:6] == ["pt__a", "pt__b", "pt__c"]
    np.testing.assert_array_equal(ours.get_feature_names_out(["a", "b", "c"]),
                                  reference.get_feature_names_out(["a", "b", "c"]))
    assert_frames_equal(
        ours.set_output(transform="pandas").transform(FRAME),
        reference.set_output(transform="pandas").transform(FRAME),
    )


@pytest.mark.timeout(60)
def test_union_passthrough_on_processes() -> None:
    steps = [("pt", "passthrough"), ("scale", StandardScaler()), ("gone", "drop")]
    ours = queued(ParallelQueuedFeatureUnion, steps, batch_size=6, backend="process").set_output(transform="pandas")
    assert_frames_equal(ours.fit_transform(FRAME), FeatureUnion(steps).set_output(transform="pandas").fit_transform(FRAME))


def test_set_params_drops_and_restores_steps() -> None:
    union = queued(ParallelQueuedFeatureUnion, union_steps())
    reference = FeatureUnion(union_steps())
    union.set_params(pca="drop")
    reference.set_params(pca="drop")
    np.testing.assert_allclose(union.fit_transform(X_ARRAY), reference.fit_transform(X_ARRAY))
    np.testing.assert_array_equal(union.get_feature_names_out(), reference.get_feature_names_out())
    assert union.steps[1] == ("pca", 2, "drop")  # the stage keeps its form
    union.set_params(pca=PCA(1), scale="passthrough")
    reference.set_params(pca=PCA(1), scale="passthrough")
    np.testing.assert_allclose(union.fit_transform(X_ARRAY), reference.fit_transform(X_ARRAY))

    pipeline = queued(SequentialQueuedPipeline, pipeline_steps())
    pipeline.set_params(poly="passthrough")
    expected = Pipeline(pipeline_steps()).set_params(poly="passthrough").fit_transform(X_ARRAY)
    np.testing.assert_allclose(pipeline.fit_transform(X_ARRAY), expected)


def test_union_with_every_branch_dropped_gives_no_columns() -> None:
    union = ParallelQueuedFeatureUnion([("a", "drop"), ("b", "drop")], backend="thread")
    reference = FeatureUnion([("a", "drop"), ("b", "drop")])
    assert union.fit_transform(X_ARRAY).shape == reference.fit_transform(X_ARRAY).shape == (41, 0)
    assert union.transform(X_ARRAY).shape == (41, 0)
    assert list(union.get_feature_names_out()) == list(reference.get_feature_names_out()) == []
    out = union.set_output(transform="pandas").transform(FRAME)
    assert out.shape == (41, 0) and list(out.index) == list(FRAME.index)


@pytest.mark.parametrize(
    ("cls", "step", "allowed"),
    [
        (SequentialQueuedPipeline, "drop", "'passthrough', None"),
        (ParallelQueuedFeatureUnion, None, "'passthrough', 'drop'"),
    ],
)
def test_skip_values_of_the_other_composite_are_refused(cls: type, step: Any, allowed: str) -> None:
    composite = cls([("scale", StandardScaler()), ("x", step)], backend="thread")
    with pytest.raises(
        InvalidParameterError,
        match=rf"The step 'x' of {cls.__name__} must be an object with a transform method, a callable "
              rf"or one of {allowed}\. Got {step!r} instead\.",
    ):
        composite.fit(X_ARRAY)


def test_wrapper_refuses_passthrough() -> None:
    with pytest.raises(InvalidParameterError, match=r"must be an object with a transform method or a callable\. "
                                                   r"Got 'passthrough' instead\."):
        ParallelWorkersWrapper("passthrough", backend="thread").transform(X_ARRAY)


# --- notebook diagram ---------------------------------------------------------------------------


def test_pipeline_html_shows_each_stage_with_its_workers() -> None:
    pipeline = SequentialQueuedPipeline(
        [("scale", 4, StandardScaler()), ("pca", 1, 3, PCA(2)), ("skip", "passthrough"), ("double", lambda x: 2 * x)],
        n_workers_per_step=2,
    )
    html = pipeline._repr_html_()
    assert "scale: StandardScaler × 4 workers" in html
    assert "pca: PCA × 1 worker<" in html  # one worker: singular, nothing after it
    assert "input queue of 8 minibatches" in html and "input queue of 3 minibatches" in html
    assert "skip: passthrough" in html
    assert "double: &lt;lambda&gt; × 2 workers" in html
    assert "SequentialQueuedPipeline" in html and "sk-serial" in html


def test_union_html_shows_each_branch_with_its_workers() -> None:
    union = ParallelQueuedFeatureUnion(
        [("scale", 3, StandardScaler()), ("pt", "passthrough"), ("gone", "drop"),
         ("inner", SequentialQueuedPipeline([("pca", 2, PCA(2))]))],
    )
    html = union._repr_html_()
    assert "scale: StandardScaler × 3 workers" in html
    assert "pt: passthrough" in html and "gone: drop" in html
    assert "inner: SequentialQueuedPipeline × 1 worker" in html
    assert "pca: PCA × 2 workers" in html  # the nested pipeline's own stages
    assert "sk-parallel" in html


# --- stateless scikit-learn steps, input features (review fixes) ---------------------------------


def one_to_one() -> Any:
    """A stateless step (tag requires_fit=False) whose names need its fitted input features."""
    return FunctionTransformer(np.tanh, feature_names_out="one-to-one")


@pytest.mark.parametrize("X", [X_ARRAY, FRAME], ids=["array", "frame"])
def test_stateless_first_step_names_its_features_as_sklearn(X: Any) -> None:
    ours = SequentialQueuedPipeline([("f", one_to_one())], backend="thread", batch_size=7).fit(X)
    reference = Pipeline([("f", one_to_one())]).fit(X)
    np.testing.assert_array_equal(ours.get_feature_names_out(), reference.get_feature_names_out())
    assert_frames_equal(
        ours.set_output(transform="pandas").fit_transform(X),
        reference.set_output(transform="pandas").fit_transform(X),
    )
    assert not is_fittable(one_to_one())  # no fitting barrier: it is fitted in passing, on X


@pytest.mark.timeout(60)
def test_stateless_first_step_is_fitted_before_it_goes_to_processes() -> None:
    steps = [("f", one_to_one()), ("scale", StandardScaler())]
    ours = queued(SequentialQueuedPipeline, steps, batch_size=8, backend="process").set_output(transform="pandas")
    assert_frames_equal(ours.fit_transform(FRAME), Pipeline(steps).set_output(transform="pandas").fit_transform(FRAME))


def test_stateless_union_branches_name_their_features_as_feature_union() -> None:
    steps = [("scale", StandardScaler()), ("f", one_to_one())]
    ours = queued(ParallelQueuedFeatureUnion, steps, batch_size=7).fit(FRAME)
    reference = FeatureUnion(steps).fit(FRAME)
    np.testing.assert_array_equal(ours.get_feature_names_out(), reference.get_feature_names_out())
    assert_frames_equal(
        ours.set_output(transform="pandas").fit_transform(FRAME),
        reference.set_output(transform="pandas").fit_transform(FRAME),
    )


@pytest.mark.parametrize("cls", [SequentialQueuedPipeline, ParallelQueuedFeatureUnion])
def test_stateless_first_step_in_partial_mode_records_the_first_minibatch(cls: type) -> None:
    steps = [("f", one_to_one()), ("scale", StandardScaler())]
    ours = queued(cls, steps, batch_size=7, fit_mode="partial").fit(FRAME)
    assert ours.named_steps["f"].n_features_in_ == 3
    reference = (Pipeline if cls is SequentialQueuedPipeline else FeatureUnion)(steps).fit(FRAME)
    np.testing.assert_array_equal(ours.get_feature_names_out(), reference.get_feature_names_out())


# fitted on a frame, transforming an array: scikit-learn's own warning, as its Pipeline gives it
@pytest.mark.filterwarnings("ignore:X does not have valid feature names:UserWarning")
def test_stateless_step_after_another_step_stays_unfitted() -> None:
    # its input is not at hand in the parent without an extra run: a documented limit
    ours = queued(SequentialQueuedPipeline, [("scale", StandardScaler()), ("f", one_to_one())]).fit(FRAME)
    assert not hasattr(ours.named_steps["f"], "n_features_in_")
    np.testing.assert_allclose(ours.transform(X_ARRAY), np.tanh(StandardScaler().fit_transform(X_ARRAY)))


@pytest.mark.parametrize("X", [X_ARRAY, FRAME], ids=["array", "frame"])
def test_passthrough_only_union_names_the_input_features_as_feature_union(X: Any) -> None:
    ours = ParallelQueuedFeatureUnion([("pt", "passthrough")], backend="thread").fit(X)
    reference = FeatureUnion([("pt", "passthrough")]).fit(X)
    np.testing.assert_array_equal(ours.get_feature_names_out(), reference.get_feature_names_out())
    assert ours.n_features_in_ == 3
    assert_frames_equal(
        ours.set_output(transform="pandas").fit_transform(X),
        reference.set_output(transform="pandas").fit_transform(X),
    )


@pytest.mark.parametrize(
    ("cls", "reference_cls"),
    [(SequentialQueuedPipeline, Pipeline), (ParallelQueuedFeatureUnion, FeatureUnion)],
)
def test_feature_names_in_as_sklearn(cls: type, reference_cls: type) -> None:
    ours = cls([("scale", StandardScaler())], backend="thread")
    reference = reference_cls([("scale", StandardScaler())])
    for estimator in (ours, reference):  # not fitted: AttributeError
        with pytest.raises(AttributeError, match="has no attribute 'feature_names_in_'"):
            estimator.feature_names_in_
    np.testing.assert_array_equal(ours.fit(FRAME).feature_names_in_, reference.fit(FRAME).feature_names_in_)
    assert ours.n_features_in_ == reference.n_features_in_ == 3
    ours.fit(X_ARRAY)
    reference.fit(X_ARRAY)
    assert not hasattr(ours, "feature_names_in_") and not hasattr(reference, "feature_names_in_")
    assert ours.n_features_in_ == reference.n_features_in_ == 3
    # a first step that records nothing: what fit saw of its input
    first_pt = SequentialQueuedPipeline([("pt", "passthrough"), ("double", lambda r: 2 * r)], backend="thread")
    assert list(first_pt.fit(FRAME).feature_names_in_) == ["a", "b", "c"]
    assert first_pt.n_features_in_ == 3


def test_union_trace_cuts_per_sample_metadata_to_the_traced_rows() -> None:
    X, w = X_ARRAY[:20], np.linspace(0.5, 2.0, 20)
    with sklearn.config_context(enable_metadata_routing=True):
        union = ParallelQueuedFeatureUnion(
            [("s", StandardScaler().set_fit_request(sample_weight=True))], backend="thread", batch_size=4
        )
        trace = union.fit_transform(X, trace=5, sample_weight=w)
    assert isinstance(trace, TraceResult)
    expected = StandardScaler().fit(X[:5], sample_weight=w[:5])
    np.testing.assert_allclose(union.named_steps["s"].mean_, expected.mean_)
    np.testing.assert_allclose(union.named_steps["s"].scale_, expected.scale_)


@pytest.mark.parametrize("X", [np.ones((3, 2)), [1.0, 2.0, 3.0]], ids=["rows", "scalars"])
def test_transformer_weights_keep_the_container_of_list_outputs(X: Any) -> None:
    steps = [("a", lambda r: r * 1.0), ("b", lambda r: r)]
    plain = ParallelQueuedFeatureUnion(steps, backend="thread", batch_size=2).transform(X)
    ones = ParallelQueuedFeatureUnion(
        steps, backend="thread", batch_size=2, transformer_weights={"a": 1, "b": 1}
    ).transform(X)
    weighted = ParallelQueuedFeatureUnion(
        steps, backend="thread", batch_size=2, transformer_weights={"a": 2, "b": 1}
    ).transform(X)
    for out in (ones, weighted):
        assert type(out) is type(plain) is list
        assert [type(item) for item in out] == [type(item) for item in plain] == [tuple] * 3
    np.testing.assert_array_equal(np.asarray(ones, dtype=float), np.asarray(plain, dtype=float))
    np.testing.assert_array_equal(np.asarray([a for a, _ in weighted]), 2 * np.asarray([a for a, _ in plain]))
    np.testing.assert_array_equal(np.asarray([b for _, b in weighted]), np.asarray([b for _, b in plain]))
    # a nested union's tuples are weighted element by element
    nested = ParallelQueuedFeatureUnion(
        [("inner", ParallelQueuedFeatureUnion(steps, backend="thread")), ("c", lambda r: r)],
        backend="thread", transformer_weights={"inner": 3},
    ).transform(X)
    assert all(isinstance(inner, tuple) for inner, _ in nested)
    np.testing.assert_array_equal(np.asarray([inner[0] for inner, _ in nested]),
                                  3 * np.asarray([a for a, _ in plain]))
