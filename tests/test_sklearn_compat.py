"""scikit-learn compatibility: ``check_estimator`` and the meta-estimators.

``parametrize_with_checks`` runs scikit-learn's API checks on the public steps
and on every queued composite (thread backend, for speed), plus a few checks
on a process-backend pipeline. The only expected failure declared is the one
scikit-learn declares for its own ``Pipeline`` and ``FeatureUnion``
(``PER_ESTIMATOR_XFAIL_CHECKS`` in ``sklearn/utils/_test_common/
instance_generator.py``): a composite fits the steps it was given in place, so
``check_estimators_overwrite_params`` sees its ``steps`` parameter change.
Then the pipelines go into ``sklearn.pipeline.Pipeline``, ``GridSearchCV`` and
``cross_val_score`` and must score exactly as the pure scikit-learn pipeline.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from doubles import AddConstant, MeanCenterer
from sklearn.base import clone
from sklearn.datasets import load_iris
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import FeatureUnion, Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, PolynomialFeatures, StandardScaler
from sklearn.utils import estimator_checks
from sklearn.utils.estimator_checks import parametrize_with_checks

from neuraxle_stream import (
    Identity,
    ParallelQueuedFeatureUnion,
    ParallelWorkersWrapper,
    SequentialQueuedPipeline,
)

COMPOSITE_XFAIL = {
    "check_estimators_overwrite_params": (
        "A queued composite fits the steps it was given in place (named_steps are the "
        "fitted steps), as sklearn's Pipeline and FeatureUnion do; scikit-learn xfails "
        "this check for both."
    ),
}


def expected_failed_checks(estimator: Any) -> dict[str, str]:
    if isinstance(estimator, SequentialQueuedPipeline | ParallelQueuedFeatureUnion | ParallelWorkersWrapper):
        return COMPOSITE_XFAIL
    return {}


ESTIMATORS = [
    # the public steps
    Identity(),
    MeanCenterer(),  # a complete transformer written on BaseTransformer
    # the composites, small and on threads
    SequentialQueuedPipeline([("scaler", StandardScaler())], backend="thread"),
    SequentialQueuedPipeline(
        [("scaler", 2, StandardScaler()), ("center", MeanCenterer()), ("identity", 2, 3, Identity())],
        batch_size=7,
        backend="thread",
    ),
    ParallelQueuedFeatureUnion([("scaler", StandardScaler())], backend="thread"),
    ParallelQueuedFeatureUnion(
        [("scaler", 2, StandardScaler()), ("center", MeanCenterer())], batch_size=7, backend="thread"
    ),
    ParallelWorkersWrapper(StandardScaler(), n_workers=2, batch_size=7, backend="thread"),
]


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failed_checks)
def test_sklearn_check_estimator(estimator: Any, check: Any) -> None:
    check(estimator)


# A process-backend pipeline: a selection of the checks (all of them take ~30 s).
PROCESS_CHECKS = [
    "check_estimators_pickle",
    "check_fit_idempotent",
    "check_transformers_unfitted",
    "check_n_features_in",
    "check_dict_unchanged",
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("check_name", PROCESS_CHECKS)
def test_sklearn_checks_on_process_backend(check_name: str) -> None:
    estimator = SequentialQueuedPipeline([("scaler", 2, StandardScaler())], batch_size=7, backend="process")
    getattr(estimator_checks, check_name)(type(estimator).__name__, estimator)


def test_composites_are_tagged_from_their_steps() -> None:
    from sklearn.utils import get_tags

    assert get_tags(SequentialQueuedPipeline([AddConstant(), Identity()])).requires_fit is False
    assert get_tags(SequentialQueuedPipeline([AddConstant(), StandardScaler()])).requires_fit is True
    # NaN passes only where every validating step takes it
    assert get_tags(SequentialQueuedPipeline([StandardScaler(), Identity()])).input_tags.allow_nan is True
    assert get_tags(SequentialQueuedPipeline([StandardScaler(), MeanCenterer()])).input_tags.allow_nan is False
    assert get_tags(ParallelQueuedFeatureUnion([StandardScaler(), MeanCenterer()])).input_tags.allow_nan is False
    assert get_tags(ParallelQueuedFeatureUnion([StandardScaler(), PCA()])).input_tags.sparse is False


# --- feature names ---------------------------------------------------------------------------


# set_output after fit: the second step was fitted on an array and now gets a frame;
# scikit-learn's Pipeline warns the same (the test checks the columns, not the advice)
@pytest.mark.filterwarnings("ignore:X has feature names, but PolynomialFeatures:UserWarning")
def test_get_feature_names_out_and_set_output_pandas() -> None:
    frame = pd.DataFrame(np.random.RandomState(0).randn(20, 3), columns=["a", "b", "c"])
    steps = [StandardScaler(), PolynomialFeatures(2)]
    pipeline = SequentialQueuedPipeline([clone(s) for s in steps], batch_size=6, backend="thread").fit(frame)
    reference = make_pipeline(*steps).fit(frame)
    np.testing.assert_array_equal(pipeline.get_feature_names_out(), reference.get_feature_names_out())
    pipeline.set_output(transform="pandas")
    out = pipeline.transform(frame)
    assert isinstance(out, pd.DataFrame) and list(out.index) == list(frame.index)
    assert list(out.columns) == list(reference.get_feature_names_out())

    union = ParallelQueuedFeatureUnion(
        [("s", StandardScaler()), ("c", MeanCenterer()), ("pca", PCA(2))], batch_size=6, backend="thread"
    ).fit(frame)
    # every name is prefixed by its branch, as FeatureUnion's verbose_feature_names_out=True
    assert list(union.get_feature_names_out()) == [
        "s__a", "s__b", "s__c", "c__a", "c__b", "c__c", "pca__pca0", "pca__pca1"
    ]
    union.set_output(transform="pandas")
    reference_union = FeatureUnion([("s", StandardScaler()), ("c", MeanCenterer()), ("pca", PCA(2))])
    expected = reference_union.set_output(transform="pandas").fit_transform(frame)
    out = union.fit_transform(frame)
    assert list(out.columns) == list(expected.columns)  # scikit-learn's own columns, not ours
    pd.testing.assert_frame_equal(out, expected, check_exact=False, rtol=1e-7, atol=1e-10)


def test_get_feature_names_out_needs_it_on_every_step() -> None:
    assert not hasattr(SequentialQueuedPipeline([StandardScaler(), AddConstant()]), "get_feature_names_out")
    assert not hasattr(ParallelQueuedFeatureUnion([StandardScaler(), np.abs]), "get_feature_names_out")


# --- inside scikit-learn meta-estimators --------------------------------------------------------

IRIS_X, IRIS_Y = load_iris(return_X_y=True)


def _classifier(features: Any) -> Pipeline:
    return Pipeline([("features", features), ("clf", LogisticRegression(max_iter=500))])


def test_pipeline_inside_grid_search_cv_scores_like_sklearn() -> None:
    ours = _classifier(
        SequentialQueuedPipeline([("scale", 2, StandardScaler()), ("pca", PCA())], batch_size=16, backend="thread")
    )
    reference = _classifier(make_pipeline(StandardScaler(), PCA()))
    grid_ours = GridSearchCV(ours, {"features__pca__n_components": [1, 2, 3]}, cv=3).fit(IRIS_X, IRIS_Y)
    grid_ref = GridSearchCV(reference, {"features__pca__n_components": [1, 2, 3]}, cv=3).fit(IRIS_X, IRIS_Y)
    np.testing.assert_allclose(grid_ours.cv_results_["mean_test_score"], grid_ref.cv_results_["mean_test_score"])
    assert grid_ours.best_params_ == grid_ref.best_params_
    # the refitted best pipeline holds fitted steps, in the parent
    best = grid_ours.best_estimator_.named_steps["features"]
    assert best.named_steps["pca"].n_components == grid_ours.best_params_["features__pca__n_components"]
    assert hasattr(best.named_steps["pca"], "components_")


def test_grid_search_over_queue_parameters_gives_the_same_scores() -> None:
    ours = _classifier(SequentialQueuedPipeline([("scale", StandardScaler())], backend="thread"))
    grid = GridSearchCV(
        ours, {"features__batch_size": [1, 7, 1000], "features__n_workers_per_step": [1, 3]}, cv=3
    ).fit(IRIS_X, IRIS_Y)
    scores = grid.cv_results_["mean_test_score"]
    np.testing.assert_allclose(scores, scores[0])


def test_union_inside_grid_search_cv_scores_like_sklearn() -> None:
    ours = _classifier(
        ParallelQueuedFeatureUnion(
            [("scale", StandardScaler()), ("pca", 2, PCA()), ("tanh", FunctionTransformer(np.tanh))],
            batch_size=10,
            backend="thread",
        )
    )
    reference = _classifier(
        FeatureUnion([("scale", StandardScaler()), ("pca", PCA()), ("tanh", FunctionTransformer(np.tanh))])
    )
    grid = {"features__pca__n_components": [1, 3]}
    ours_scores = GridSearchCV(ours, grid, cv=3).fit(IRIS_X, IRIS_Y).cv_results_["mean_test_score"]
    ref_scores = GridSearchCV(reference, grid, cv=3).fit(IRIS_X, IRIS_Y).cv_results_["mean_test_score"]
    np.testing.assert_allclose(ours_scores, ref_scores)


@pytest.mark.timeout(60)
def test_cross_val_score_like_sklearn(backend: str) -> None:
    ours = _classifier(
        SequentialQueuedPipeline(
            [("scale", 2, StandardScaler()), ("poly", PolynomialFeatures(2))], batch_size=25, backend=backend
        )
    )
    reference = _classifier(make_pipeline(StandardScaler(), PolynomialFeatures(2)))
    np.testing.assert_allclose(
        cross_val_score(ours, IRIS_X, IRIS_Y, cv=3, n_jobs=1),
        cross_val_score(reference, IRIS_X, IRIS_Y, cv=3, n_jobs=1),
    )


def test_queued_pipeline_as_a_step_of_sklearn_pipeline_and_back() -> None:
    # sklearn Pipeline inside a queued pipeline, inside a sklearn Pipeline
    inner = make_pipeline(StandardScaler(), PCA(2))
    queued = SequentialQueuedPipeline([("inner", inner), ("add", 2, AddConstant(1.0))], batch_size=9, backend="thread")
    outer = Pipeline([("queued", queued), ("tanh", FunctionTransformer(np.tanh))])
    reference = make_pipeline(make_pipeline(StandardScaler(), PCA(2)), AddConstant(1.0), FunctionTransformer(np.tanh))
    np.testing.assert_allclose(outer.fit_transform(IRIS_X), reference.fit_transform(IRIS_X), atol=1e-12)
    assert outer.get_params()["queued__inner__pca__n_components"] == 2
    outer.set_params(queued__inner__pca__n_components=3)
    assert outer.fit_transform(IRIS_X).shape == (150, 3)
