"""scikit-learn's own ``sklearn/tests/test_pipeline.py``, with our composites substituted.

The upstream file is vendored, unchanged, as
``tests/sklearn_upstream/test_pipeline_1_9_1.py`` (scikit-learn 1.9.1,
BSD-3-Clause). It is loaded once per backend (``thread``, ``process``) as a
module of its own, whose ``Pipeline``, ``FeatureUnion``, ``make_pipeline`` and
``make_union`` are replaced by ``SequentialQueuedPipeline`` and
``ParallelQueuedFeatureUnion`` on that backend; its assertions are untouched.
The vendored file is the reference whatever scikit-learn is installed: with
another version installed, the same 1.9.1 tests run; an older scikit-learn
that lacks a test helper the file imports (``sklearn.callback`` is new in 1.9)
skips the module, saying so. To move to a new version, vendor its file and
update the ledger together (``test_ledger_covers_upstream`` lists the gaps).

The substitutes are subclasses named ``Pipeline`` and ``FeatureUnion`` (so
that messages built from ``type(self).__name__`` read as upstream expects)
whose only change is the ``backend`` default; ``make_pipeline`` and
``make_union`` name unnamed steps with our own naming. Run it alone with
``pytest tests/test_sklearn_upstream.py -rs`` (the exclusions are listed as
skips, with their reasons).

``LEDGER`` names every upstream test: ``INCLUDED``, or excluded with its
reason (it needs a final predictor; it tests a scikit-learn internal; or a
documented difference, quoting the docs line in docs/sklearn.md that says so).
``test_ledger_covers_upstream`` fails when the ledger and the vendored file
disagree; every included test must pass on both backends.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import cloudpickle
import pytest
import sklearn
import sklearn.pipeline

from neuraxle_stream import ParallelQueuedFeatureUnion, SequentialQueuedPipeline
from neuraxle_stream._validation import StageDesc, _name_stages

UPSTREAM_VERSION = "1.9.1"
UPSTREAM_FILE = Path(__file__).parent / "sklearn_upstream" / "test_pipeline_1_9_1.py"
BACKENDS = ("thread", "process")


def _adapter(base: type, name: str, backend: str, module_name: str) -> type:
    """``base`` under scikit-learn's class name, its ``backend`` defaulting to ``backend``.

    Only that default changes: the signature (so ``get_params`` and ``clone``)
    is ``base``'s own. The name is scikit-learn's so that messages built from
    ``type(self).__name__`` read as the upstream assertions expect.
    """
    signature = inspect.signature(base.__init__)
    signature = signature.replace(
        parameters=[
            p.replace(default=backend) if p.name == "backend" else p
            for p in signature.parameters.values()
        ]
    )

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        base.__init__(*bound.args, **bound.kwargs)

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    return type(name, (base,), {"__init__": __init__, "__module__": module_name})


def _substitutes(backend: str, module_name: str) -> dict[str, Any]:
    Pipeline = _adapter(SequentialQueuedPipeline, "Pipeline", backend, module_name)
    FeatureUnion = _adapter(ParallelQueuedFeatureUnion, "FeatureUnion", backend, module_name)

    def _named(steps: tuple[Any, ...]) -> list[tuple[str, Any]]:
        # our own names for unnamed steps ("transf-1", "transf-2"...), as make_pipeline's
        stages = [StageDesc("", step, 1, None, owner=step) for step in steps]
        _name_stages(stages, "make_pipeline")
        return [(s.name, s.owner) for s in stages]

    def make_pipeline(*steps: Any, **kwargs: Any) -> Any:
        return Pipeline(_named(steps), **kwargs)

    def make_union(*transformers: Any, **kwargs: Any) -> Any:
        return FeatureUnion(_named(transformers), **kwargs)

    return {
        "Pipeline": Pipeline,
        "FeatureUnion": FeatureUnion,
        "make_pipeline": make_pipeline,
        "make_union": make_union,
    }


def _exec(name: str, substitutes: dict[str, Any]) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, UPSTREAM_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    # The upstream module builds pipelines at import time (parametrize lists):
    # its ``from sklearn.pipeline import ...`` must already give ours.
    saved = {key: getattr(sklearn.pipeline, key) for key in substitutes}
    try:
        for key, value in substitutes.items():
            setattr(sklearn.pipeline, key, value)
        spec.loader.exec_module(module)
    finally:
        for key, value in saved.items():
            setattr(sklearn.pipeline, key, value)
    return module


def _parametrize_with_tuples(module: ModuleType) -> None:
    """Make each ``parametrize`` mark of the module's tests take a tuple where upstream passes a generator
    (pytest deprecates iterators there: one would be consumed by the first collection)."""
    for value in list(vars(module).values()):
        marks = getattr(value, "pytestmark", None) if callable(value) else None
        if not marks:
            continue
        value.pytestmark = [
            pytest.mark.parametrize(m.args[0], tuple(m.args[1]), *m.args[2:], **m.kwargs).mark
            if m.name == "parametrize" and len(m.args) > 1 and isinstance(m.args[1], Iterator)
            else m
            for m in marks
        ]


def _load(backend: str) -> ModuleType:
    name = f"sklearn_upstream_test_pipeline_{backend}"
    module = _exec(name, _substitutes(backend, name))
    _parametrize_with_tuples(module)
    # the upstream test doubles (Transf, Mult...) reach process workers by value
    cloudpickle.register_pickle_by_value(module)
    return module


# Imported once as scikit-learn wrote it, before any substitution: every module it
# imports is then loaded, so none of them binds our classes in place of sklearn's.
try:
    _exec("sklearn_upstream_test_pipeline_reference", {})
except ImportError as exc:  # an older scikit-learn lacks a test helper the 1.9.1 file imports
    pytest.skip(
        f"scikit-learn {sklearn.__version__} installed; the vendored {UPSTREAM_VERSION} "
        f"test_pipeline.py needs what it lacks ({exc}). Install scikit-learn>={UPSTREAM_VERSION}.",
        allow_module_level=True,
    )
MODULES = {backend: _load(backend) for backend in BACKENDS}
UPSTREAM_TESTS = sorted(n for n in vars(MODULES["thread"]) if n.startswith("test_"))


# -- the ledger -------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """What the harness does with one upstream test (or one of its parameter sets)."""

    status: str  # INCLUDED, PREDICTOR, INTERNAL, DOCUMENTED or OPEN
    why: str = ""
    #: for DOCUMENTED: the words of docs/sklearn.md that state the difference
    doc: str = ""


INCLUDED = "included"
PREDICTOR = "needs a final predictor"
INTERNAL = "tests a scikit-learn internal"
DOCUMENTED = "documented difference"
OPEN = "open"  # a known failure still to fix: runs as a strict xfail

_IN = Entry(INCLUDED)


def _predictor(why: str) -> Entry:
    return Entry(PREDICTOR, why, DOC_PREDICTOR)


def _documented(doc: str, why: str) -> Entry:
    return Entry(DOCUMENTED, why, doc)


# The docs lines (docs/sklearn.md, "Differences from scikit-learn") the
# documented differences quote; test_ledger_quotes_the_docs holds them there.
DOC_PREDICTOR = "every step is a transformer: no final predictor"
DOC_TRANSFORMER_LIST = "the union's steps are `steps`, not `transformer_list`"
DOC_N_JOBS = "no `n_jobs`: parallelism is given in workers"
DOC_INVERSE = "no `inverse_transform`"
DOC_1D = "a 1-D branch output becomes one column"
DOC_UNION_KEYS = "`union[0]` and `union[1:]` work as on the pipeline"
DOC_CALLBACKS = "no scikit-learn callbacks (`set_callbacks`)"
DOC_WORKER_COPIES = "what a step records while it transforms stays in the workers"
DOC_VERBOSE = "`verbose=True` prints a `Fitting` line per step fitted and a `Processing` line per step run"

LEDGER: dict[str, Entry] = {
    "test_classes_property": _predictor("classes_ of a LinearRegression/SVC last step"),
    "test_empty_pipeline": _IN,
    "test_empty_pipeline_dir": _IN,
    "test_feature_names_count_vectorizer": _predictor("LogisticRegression last step"),
    "test_feature_union": _documented(DOC_TRANSFORMER_LIST, "reads fs.transformer_list"),
    "test_feature_union_1d_output": _documented(
        DOC_1D, "FeatureUnion 1.9 refuses a 1-D branch output; DESIGN.md section 6 joins it as a column"
    ),
    "test_feature_union_array_api_compliance": _IN,
    "test_feature_union_array_api_support_tag": _IN,
    "test_feature_union_check_if_fitted": _IN,
    "test_feature_union_duplicate_column_names": _IN,
    "test_feature_union_feature_names": _IN,
    "test_feature_union_feature_names_in_": _IN,
    "test_feature_union_fit_params": _IN,
    "test_feature_union_fit_params_without_fit_transform": _IN,
    "test_feature_union_get_metadata_routing_without_fit": _IN,
    "test_feature_union_getitem": _IN,
    "test_feature_union_getitem_error": _documented(
        DOC_UNION_KEYS, "expects KeyError for union[0] and union[0:2]"
    ),
    "test_feature_union_metadata_routing": _documented(
        DOC_TRANSFORMER_LIST,
        "reads feature_union.transformer_list, then the transform records of the "
        f"branches, which stay on the workers' copies ({DOC_WORKER_COPIES})",
    ),
    "test_feature_union_metadata_routing_error": _IN,
    "test_feature_union_named_transformers": _documented(
        DOC_TRANSFORMER_LIST, "reads named_transformers (ours: named_steps)"
    ),
    "test_feature_union_parallel": _documented(DOC_N_JOBS, "FeatureUnion(..., n_jobs=2)"),
    "test_feature_union_passthrough_get_feature_names_out_false": _IN,
    "test_feature_union_passthrough_get_feature_names_out_false_errors": _IN,
    "test_feature_union_passthrough_get_feature_names_out_false_errors_overlap_over_5": _IN,
    "test_feature_union_passthrough_get_feature_names_out_true": _IN,
    "test_feature_union_set_output": _IN,
    "test_feature_union_warns_unknown_transformer_weight": _IN,
    "test_feature_union_weights": _IN,
    "test_features_names_passthrough": _predictor("LogisticRegression last step"),
    "test_fit_predict_on_pipeline": _predictor("KMeans last step, fit_predict"),
    "test_fit_predict_on_pipeline_without_fit_predict": _predictor(
        "the AttributeError of a fit_predict delegated to the last step"
    ),
    "test_fit_predict_with_intermediate_fit_params": _predictor("fit_predict"),
    "test_make_pipeline": _IN,
    "test_make_pipeline_memory": _predictor("SVC last step"),
    "test_make_union": _documented(DOC_TRANSFORMER_LIST, "reads fu.transformer_list"),
    "test_make_union_kwargs": _documented(DOC_N_JOBS, "make_union(..., n_jobs=3)"),
    "test_make_union_passes_verbose_feature_names_out": _IN,
    "test_meta_estimator_raises_class_not_instance_error": _IN,
    "test_metadata_routing_error_for_pipeline": _predictor("SimpleEstimator's predict, score..."),
    "test_metadata_routing_error_for_pipeline[fit]": _IN,
    "test_metadata_routing_error_for_pipeline[fit_transform]": _IN,
    "test_metadata_routing_error_for_pipeline[transform]": _IN,
    "test_metadata_routing_error_for_pipeline[inverse_transform]": _documented(
        DOC_INVERSE, "pipeline.inverse_transform"
    ),
    "test_metadata_routing_for_pipeline": _predictor("SimpleEstimator's predict, score..."),
    "test_metadata_routing_for_pipeline[fit]": _IN,
    "test_metadata_routing_for_pipeline[fit_transform]": _IN,
    "test_metadata_routing_for_pipeline[transform]": _documented(
        DOC_WORKER_COPIES, "checks the records the first step makes in transform"
    ),
    "test_metadata_routing_for_pipeline[inverse_transform]": _documented(
        DOC_INVERSE, "pipeline.inverse_transform"
    ),
    "test_n_features_in_feature_union": _IN,
    "test_n_features_in_pipeline": _predictor("HistGradientBoostingClassifier last step"),
    "test_pipeline_check_if_fitted": _predictor("a last step with fit and no transform"),
    "test_pipeline_correctly_adjusts_steps": _IN,
    "test_pipeline_ducktyping": _predictor("predict, predict_proba... delegated to the last step"),
    "test_pipeline_estimator_type": _IN,
    "test_pipeline_estimator_type[pipeline0-is_classifier]": _predictor("SVC last step"),
    "test_pipeline_estimator_type[pipeline1-is_regressor]": _predictor("LinearRegression last step"),
    "test_pipeline_feature_names_out_error_without_definition": _predictor(
        "a last step with fit and no transform (NoTrans)"
    ),
    "test_pipeline_fit_params": _predictor("FitParamT last step, predict"),
    "test_pipeline_fit_transform": _IN,
    "test_pipeline_get_feature_names_out_passes_names_through": _IN,
    "test_pipeline_get_tags_none": _IN,
    "test_pipeline_index": _predictor("FitParamT last step (no transform)"),
    "test_pipeline_init_tuple": _predictor("FitParamT last step, predict"),
    "test_pipeline_invalid_parameters": _predictor("NoTrans and SVC last steps"),
    "test_pipeline_memory": _predictor("SVC last step"),
    "test_pipeline_memory_callbacks_second_fit_same_pipeline": _documented(
        DOC_CALLBACKS, "set_callbacks"
    ),
    "test_pipeline_methods_anova": _predictor("LogisticRegression last step"),
    "test_pipeline_methods_pca_classifier": _predictor("SVC last step"),
    "test_pipeline_methods_preprocessing_classifier": _predictor("SVC last step"),
    "test_pipeline_missing_values_leniency": _predictor("LogisticRegression last step"),
    "test_pipeline_named_steps": _IN,
    "test_pipeline_param_error": _predictor("LogisticRegression last step"),
    "test_pipeline_raise_set_params_error": _predictor("LinearRegression last step"),
    "test_pipeline_sample_weight_supported": _predictor("FitParamT last step, score"),
    "test_pipeline_sample_weight_unsupported": _predictor("score"),
    "test_pipeline_score_samples_pca_lof": _predictor("LocalOutlierFactor last step"),
    "test_pipeline_set_output_integration": _predictor("LogisticRegression last step"),
    "test_pipeline_slice": _predictor("FitParamT last step (no transform)"),
    "test_pipeline_transform": _documented(DOC_INVERSE, "pipeline.inverse_transform"),
    "test_pipeline_warns_not_fitted": _predictor("predict, score... on the pipeline"),
    "test_pipeline_warns_not_fitted[transform]": _IN,
    "test_pipeline_warns_not_fitted[inverse_transform]": _documented(
        DOC_INVERSE, "pipeline.inverse_transform"
    ),
    "test_pipeline_with_callbacks": _documented(DOC_CALLBACKS, "set_callbacks"),
    "test_pipeline_with_callbacks_on_steps": _predictor("MaxIterEstimator last step"),
    "test_pipeline_with_estimator_with_len": _predictor("RandomForestClassifier last step"),
    "test_pipeline_with_no_last_step": _IN,
    "test_predict_methods_with_predict_params": _predictor("predict"),
    "test_routing_passed_metadata_not_supported": _IN,
    "test_routing_passed_metadata_not_supported[decision_function]": _predictor("decision_function"),
    "test_routing_passed_metadata_not_supported[inverse_transform]": _documented(
        DOC_INVERSE, "pipeline.inverse_transform"
    ),
    "test_score_samples_on_pipeline_without_score_samples": _predictor("score_samples"),
    "test_search_cv_using_minimal_compatible_estimator": _predictor("MinimalClassifier/MinimalRegressor last step"),
    "test_set_feature_union_passthrough": _IN,
    "test_set_feature_union_step_drop": _IN,
    "test_set_feature_union_steps": _documented(DOC_TRANSFORMER_LIST, "sets ft.transformer_list"),
    "test_set_params_nested_pipeline": _predictor("DummyRegressor last step"),
    "test_set_pipeline_step_passthrough": _predictor("predict"),
    "test_set_pipeline_steps": _IN,
    "test_sklearn_tags_with_empty_pipeline": _IN,
    "test_step_name_validation": _documented(
        DOC_TRANSFORMER_LIST,
        "builds FeatureUnion(transformer_list=...); its Pipeline half is asserted in "
        "tests/test_sklearn_parity.py::test_steps_validated_as_sklearn",
    ),
    "test_transform_input_explicit_value_check": _predictor("Estimator last step"),
    "test_transform_input_no_slep6": _IN,
    "test_transform_input_pipeline": _IN,
    "test_transform_one_accepts_plain_dict_params": Entry(
        INTERNAL, "calls sklearn.pipeline._transform_one itself; no composite involved"
    ),
    "test_transform_tuple_input": _predictor("Estimator last step"),
    "test_verbose": _documented(
        DOC_VERBOSE, "expects one 'Processing' line per step, passthrough steps included"
    ),
}


def _entry(name: str, param_id: str | None) -> Entry:
    if param_id is not None and f"{name}[{param_id}]" in LEDGER:
        return LEDGER[f"{name}[{param_id}]"]
    return LEDGER[name]


@pytest.fixture(autouse=True)
def _ledger(request: pytest.FixtureRequest) -> None:
    """Skip what the ledger excludes, with its reason; xfail (strict) what is open."""
    node = request.node
    original = getattr(node, "originalname", node.name)
    if not original.endswith(BACKENDS_SUFFIXES):
        return
    name = original.rsplit("__", 1)[0]
    param_id = node.callspec.id if hasattr(node, "callspec") else None
    entry = _entry(name, param_id)
    if entry.status == OPEN:
        request.applymarker(pytest.mark.xfail(reason=f"open: {entry.why}", strict=True))
    elif entry.status != INCLUDED:
        pytest.skip(f"{entry.status}: {entry.why}")


BACKENDS_SUFFIXES = tuple(f"__{b}" for b in BACKENDS)

for _backend, _module in MODULES.items():
    for _name in UPSTREAM_TESTS:
        globals()[f"{_name}__{_backend}"] = getattr(_module, _name)


def test_ledger_covers_upstream() -> None:
    """Every upstream test is in the ledger, and nothing else is."""
    names = {key.split("[")[0] for key in LEDGER}
    assert names == set(UPSTREAM_TESTS)


def test_ledger_quotes_the_docs() -> None:
    """Every documented difference quotes a line of docs/sklearn.md."""
    docs = (Path(__file__).parents[1] / "docs" / "sklearn.md").read_text()
    for key, entry in LEDGER.items():
        if entry.status in (DOCUMENTED, PREDICTOR):
            assert entry.doc and entry.doc in docs, (key, entry.doc)
