"""Tests for neuraxle_stream.steps: the step base classes and how steps are read.

BaseTransformer (scikit-learn fit_transform semantics, Neuraxle's argument
names accepted), NonFittableMixin, Identity, per-item functions, which steps
count as fittable, default names, worker arguments and the setup/teardown hooks.
"""

from __future__ import annotations

import functools
import pickle
from typing import Any

import cloudpickle
import numpy as np
import pandas as pd
import pytest
from doubles import AddConstant, FitRecorder, LifecycleRecorder, MeanCenterer, read_events, square
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.decomposition import PCA
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.utils import get_tags

from neuraxle_stream import BaseTransformer, Identity, NonFittableMixin, SequentialQueuedPipeline
from neuraxle_stream.steps import (
    ItemFunction,
    apply_worker_arguments,
    as_step,
    call_hook,
    is_fittable,
    iter_items,
    step_display_name,
)


class OnlyTransform(BaseTransformer):
    """Implements transform only: stateless by construction."""

    def transform(self, data_inputs: Any) -> Any:
        return [x * 10 for x in data_inputs]


class NeuraxleSpelled(BaseTransformer):
    """Uses Neuraxle's argument names for fit."""

    def fit(self, data_inputs: Any, expected_outputs: Any = None) -> NeuraxleSpelled:
        self.seen_ = (len(data_inputs), None if expected_outputs is None else list(expected_outputs))
        return self

    def transform(self, data_inputs: Any) -> Any:
        return data_inputs


class Stateless(NonFittableMixin, BaseTransformer):
    def transform(self, data_inputs: Any) -> Any:
        return data_inputs


class TaggedStatelessWithFit(NonFittableMixin, BaseTransformer):
    """Defines fit, but the mixin's requires_fit=False tag says it never needs it."""

    def fit(self, X: Any, y: Any = None) -> TaggedStatelessWithFit:
        raise AssertionError("a queued pipeline never fits a step tagged requires_fit=False")

    def transform(self, data_inputs: Any) -> Any:
        return data_inputs


class PlainFit:
    """Duck-typed step with fit and no scikit-learn tags."""

    def fit(self, X: Any, y: Any = None) -> PlainFit:
        return self

    def transform(self, X: Any) -> Any:
        return X


class BrokenTags(BaseEstimator, TransformerMixin):
    def fit(self, X: Any, y: Any = None) -> BrokenTags:
        return self

    def transform(self, X: Any) -> Any:
        return X

    def __sklearn_tags__(self) -> Any:
        raise RuntimeError("broken")


class PlainWithHooks:
    """Not a BaseTransformer: setup()/teardown() are looked up on any step."""

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.ready = False

    def setup(self) -> None:
        self.ready = True
        LifecycleRecorder(self.log_dir, tag="plain").setup()

    def teardown(self) -> None:
        LifecycleRecorder(self.log_dir, tag="plain").teardown()

    def transform(self, X: Any) -> Any:
        assert self.ready
        return X


# --- BaseTransformer ------------------------------------------------------------------------------


def test_fit_transform_returns_the_outputs() -> None:
    step = OnlyTransform()
    assert step.fit([1, 2]) is step
    assert step.fit_transform([1, 2]) == [10, 20]
    assert step.fit_transform([1, 2], [0, 1]) == [10, 20]


def test_neuraxle_argument_names_work_with_positional_and_keyword_y() -> None:
    step = NeuraxleSpelled()
    assert step.fit_transform([1, 2, 3], [0, 1, 0]) == [1, 2, 3]
    assert step.seen_ == (3, [0, 1, 0])
    step.fit_transform([4, 5], y=[1, 1])  # as scikit-learn calls it
    assert step.seen_ == (2, [1, 1])
    pipeline = SequentialQueuedPipeline([("n", step)], backend="thread")
    assert pipeline.fit_transform([7, 8], [0, 1]) == [7, 8]
    assert step.seen_ == (2, [0, 1])
    assert make_pipeline(NeuraxleSpelled()).fit_transform([1], [5]) == [1]


def test_transform_must_be_implemented() -> None:
    class NoTransform(BaseTransformer):
        pass

    with pytest.raises(NotImplementedError, match=r"NoTransform must implement transform\(data_inputs\)"):
        NoTransform().transform([1])


def test_base_transformer_is_a_scikit_learn_estimator() -> None:
    step = AddConstant(3.0)
    assert step.get_params() == {"value": 3.0}
    assert clone(step).value == 3.0 and clone(step) is not step
    assert repr(step) == "AddConstant(value=3.0)"
    assert pickle.loads(pickle.dumps(step)).value == 3.0
    np.testing.assert_array_equal(make_pipeline(step, StandardScaler()).fit_transform(np.eye(2)), np.eye(2) * 2 - 1)


def test_tags() -> None:
    assert get_tags(OnlyTransform()).requires_fit is False
    assert get_tags(MeanCenterer()).requires_fit is True
    assert get_tags(Stateless()).requires_fit is False
    identity = get_tags(Identity())
    assert identity.requires_fit is False and identity.no_validation is True
    assert identity.input_tags.sparse and identity.input_tags.allow_nan


# --- NonFittableMixin and Identity ---------------------------------------------------------------


def test_non_fittable_mixin_makes_fit_a_no_op() -> None:
    step = Stateless()
    assert step.fit([1], [2]) is step
    assert step.fit_transform([1, 2]) == [1, 2]


def test_pipeline_never_fits_a_step_tagged_stateless() -> None:
    assert is_fittable(TaggedStatelessWithFit()) is False
    pipeline = SequentialQueuedPipeline([TaggedStatelessWithFit(), AddConstant(1)], backend="thread")
    assert pipeline.fit_transform([1, 2]) == [2, 3]


def test_identity_returns_its_inputs_unchanged() -> None:
    frame = pd.DataFrame({"a": [1, 2]})
    for data in ([1, 2], np.arange(3), frame, "abc", None):
        assert Identity().transform(data) is data
    assert Identity().fit_transform([1]) == [1]


# --- which steps are fittable --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "fittable"),
    [
        (StandardScaler(), True),
        (PCA(), True),
        (MeanCenterer(), True),
        (FitRecorder(), True),
        (PlainFit(), True),
        (BrokenTags(), True),  # tags cannot be read: assume it learns
        (FunctionTransformer(np.abs), False),  # tagged requires_fit=False
        (OnlyTransform(), False),  # BaseTransformer.fit itself is a no-op
        (Stateless(), False),
        (Identity(), False),
        (AddConstant(), False),
        (square, False),
        (ItemFunction(square), False),
        (np.abs, False),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, bool) else str(v),
)
def test_is_fittable(step: Any, fittable: bool) -> None:
    assert is_fittable(step) is fittable


# --- per-item functions -----------------------------------------------------------------------------


def test_as_step_wraps_callables_only() -> None:
    scaler = StandardScaler()
    assert as_step(scaler) is scaler
    wrapped = as_step(square)
    assert isinstance(wrapped, ItemFunction) and wrapped.func is square
    assert repr(wrapped) == "ItemFunction('square')"
    assert as_step(42) == 42


def test_item_function_maps_items_and_returns_a_list() -> None:
    step = ItemFunction(square)
    assert step.transform([1, 2, 3]) == [1, 4, 9]
    assert step.transform(np.arange(3)) == [0, 1, 4]
    assert step.transform(x for x in (2, 3)) == [4, 9]
    rows = ItemFunction(lambda row: row["a"] + row["b"]).transform(pd.DataFrame({"a": [1, 2], "b": [10, 20]}))
    assert rows == [11, 22]


def test_item_function_pickles_lambdas_and_closures() -> None:
    offset = 5
    step = ItemFunction(lambda x: x + offset)
    assert cloudpickle.loads(cloudpickle.dumps(step)).transform([1]) == [6]


def test_iter_items() -> None:
    frame = pd.DataFrame({"a": [1, 2]}, index=["x", "y"])
    rows = list(iter_items(frame))
    assert [r.name for r in rows] == ["x", "y"] and [r["a"] for r in rows] == [1, 2]
    assert list(iter_items(np.arange(2))) == [0, 1]


@pytest.mark.parametrize(
    ("step", "name"),
    [
        (StandardScaler(), "standardscaler"),
        (AddConstant(), "addconstant"),
        (square, "square"),
        (ItemFunction(square), "square"),
        (np.abs, "absolute"),
        (lambda x: x, "<lambda>"),
        (functools.partial(square), "partial"),
    ],
    ids=["sklearn", "base-transformer", "function", "item-function", "ufunc", "lambda", "partial"],
)
def test_step_display_name(step: Any, name: str) -> None:
    assert step_display_name(step) == name


# --- worker arguments and hooks --------------------------------------------------------------------


def test_apply_worker_arguments_sets_params_and_attributes() -> None:
    step = make_pipeline(AddConstant(1.0))
    apply_worker_arguments(step, [("addconstant__value", 7.0), ("device", "cuda:1")])
    assert step.named_steps["addconstant"].value == 7.0
    assert step.device == "cuda:1"
    plain = PlainFit()
    apply_worker_arguments(plain, [("device", "cpu")])
    assert plain.device == "cpu"
    apply_worker_arguments(plain, [])
    assert plain.device == "cpu"


def test_call_hook_calls_optional_methods() -> None:
    calls: list[str] = []

    class WithHook:
        setup = staticmethod(lambda: calls.append("setup"))
        teardown = "not callable"

    call_hook(WithHook(), "setup")
    call_hook(WithHook(), "teardown")
    call_hook(object(), "setup")
    assert calls == ["setup"]


def test_hooks_of_a_step_that_is_not_a_base_transformer(tmp_path: Any) -> None:
    step = PlainWithHooks(str(tmp_path))
    pipeline = SequentialQueuedPipeline([("plain", 2, step)], batch_size=2, backend="thread")
    assert pipeline.transform([1, 2, 3, 4, 5]) == [1, 2, 3, 4, 5]
    assert len(read_events(tmp_path, "setup")) == 2 and len(read_events(tmp_path, "teardown")) == 2
    assert step.ready is False  # never set up in the parent
