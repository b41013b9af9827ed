"""check_step: passes on good steps, names the check and the step on broken ones."""

from __future__ import annotations

import doctest
import pickle
import threading
from typing import Any

import numpy as np
import pandas as pd
import pytest
from doubles import AddConstant, LifecycleRecorder, MeanCenterer, square
from sklearn.decomposition import PCA
from sklearn.preprocessing import FunctionTransformer, StandardScaler

import neuraxle_stream.testing
from neuraxle_stream import BaseSaver, BaseTransformer, InvalidParameterError, NonFittableMixin
from neuraxle_stream.steps import ItemFunction
from neuraxle_stream.testing import StepCheckError, StepCheckReport, check_step, step_checks

# --- good steps -----------------------------------------------------------------------------


class KeepPositive(NonFittableMixin, BaseTransformer):
    """Keeps the rows whose first value is positive: it filters rows, and says so."""

    may_change_length = True

    def transform(self, data_inputs: Any) -> np.ndarray:
        X = np.asarray(data_inputs)
        return X[X[:, 0] > 0]


class NoisyStep(NonFittableMixin, BaseTransformer):
    """Random outputs, tagged ``non_deterministic``: comparisons are skipped."""

    def transform(self, data_inputs: Any) -> np.ndarray:
        return np.asarray(data_inputs) + np.random.normal(size=np.shape(data_inputs))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.non_deterministic = True
        return tags


# --- broken steps, one bug each ----------------------------------------------------------------


class HoldsLock(NonFittableMixin, BaseTransformer):
    """Holds a lock, which cannot be pickled: it cannot reach its workers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def transform(self, data_inputs: Any) -> Any:
        with self._lock:
            return data_inputs


class GeneratorAfterFit(BaseTransformer):
    """Keeps a generator as fitted state: the fitted step cannot be pickled."""

    def fit(self, X: Any, y: Any = None) -> GeneratorAfterFit:
        self.rows_ = (row for row in X)
        return self

    def transform(self, data_inputs: Any) -> Any:
        return data_inputs


class SharedFitState(BaseTransformer):
    """Stores what fit learns in a class attribute: every copy shares it."""

    _state: dict[str, Any] = {}

    def fit(self, X: Any, y: Any = None) -> SharedFitState:
        self._state["mean"] = np.mean(X, axis=0)
        return self

    def transform(self, data_inputs: Any) -> np.ndarray:
        return np.asarray(data_inputs) - self._state["mean"]


class SharedCallLog(NonFittableMixin, BaseTransformer):
    """Appends to a class-level list in transform, and its outputs depend on it."""

    calls: list[int] = []

    def transform(self, data_inputs: Any) -> np.ndarray:
        self.calls.append(len(data_inputs))
        return np.asarray(data_inputs) + len(self.calls)


class ReusedBuffer(NonFittableMixin, BaseTransformer):
    """Writes every output into the same preallocated array, and returns that array."""

    def transform(self, data_inputs: Any) -> np.ndarray:
        X = np.asarray(data_inputs)
        if getattr(self, "_buffer", None) is None or self._buffer.shape != X.shape:
            self._buffer = np.empty_like(X)
        np.multiply(X, 2, out=self._buffer)
        return self._buffer


class ScalesInPlace(NonFittableMixin, BaseTransformer):
    """Scales its input in place."""

    def transform(self, data_inputs: Any) -> Any:
        data_inputs *= 2
        return data_inputs


class DropsFirstRow(NonFittableMixin, BaseTransformer):
    """Returns one row less than it is given, without declaring may_change_length."""

    def transform(self, data_inputs: Any) -> Any:
        return data_inputs[1:]


class CenterEachBatch(NonFittableMixin, BaseTransformer):
    """Subtracts the mean of its minibatch: the output depends on the batch size."""

    def transform(self, data_inputs: Any) -> np.ndarray:
        X = np.asarray(data_inputs)
        return X - X.mean(axis=0)


class FitReturnsNone(BaseTransformer):
    """Learns a mean but forgets to return self."""

    def fit(self, X: Any, y: Any = None) -> None:  # type: ignore[override]
        self.mean_ = np.mean(X, axis=0)

    def transform(self, data_inputs: Any) -> np.ndarray:
        return np.asarray(data_inputs) - self.mean_


class ValidatesInInit(NonFittableMixin, BaseTransformer):
    """Checks its parameter in __init__ and stores another attribute."""

    def __init__(self, factor: float = 2.0) -> None:
        self.factor = factor
        self.scale = float(factor)

    def transform(self, data_inputs: Any) -> Any:
        return data_inputs


_SETTINGS = threading.local()
_SETTINGS.offset = 1.0  # set in the main thread only, as a thread-local config would be


class ReadsThreadLocalSetting(NonFittableMixin, BaseTransformer):
    """Reads a thread-local setting: a worker thread does not see the caller's."""

    def transform(self, data_inputs: Any) -> np.ndarray:
        return np.asarray(data_inputs) + getattr(_SETTINGS, "offset", 0.0)


class ParamsOnlySaver(BaseSaver):
    """Rebuilds a step from its parameters: the fitted state is lost on the way."""

    def can_save(self, step: Any) -> bool:
        return True

    def save(self, step: Any) -> bytes:
        return pickle.dumps((type(step), step.get_params()))

    def load(self, data: bytes) -> Any:
        cls, params = pickle.loads(data)
        return cls(**params)


class ShiftByMean(BaseTransformer):
    """Subtracts the mean learnt by fit; its own saver forgets it."""

    savers = [ParamsOnlySaver()]

    def fit(self, X: Any, y: Any = None) -> ShiftByMean:
        self.shift_ = float(np.mean(X))
        return self

    def transform(self, data_inputs: Any) -> np.ndarray:
        return np.asarray(data_inputs) - getattr(self, "shift_", 0.0)


def upper(text: str) -> str:
    """A per-item function on strings."""
    return text.upper()


# --- good steps pass ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "step",
    [
        StandardScaler(),
        PCA(n_components=2),
        MeanCenterer(),
        AddConstant(3.0),
        FunctionTransformer(np.log1p),
        ("scale", 3, StandardScaler()),
        ("add", 2, [[("value", 1.0)], [("value", 1.0)]], 4, AddConstant(1.0)),
    ],
    ids=["StandardScaler", "PCA", "MeanCenterer", "AddConstant", "FunctionTransformer", "3-tuple", "5-tuple"],
)
def test_good_steps_pass(step: Any) -> None:
    report = check_step(step, X=np.abs(np.random.RandomState(1).normal(size=(10, 3))))
    assert isinstance(report, StepCheckReport)
    assert "copies_independent" in report.passed
    assert "queued_pipeline[thread]" in report.passed
    assert not [name for name in report.skipped if name.startswith("sklearn.")]


def test_default_input_and_report() -> None:
    report = check_step(MeanCenterer())
    assert report.step == "meancenterer"
    assert report.skipped == {}
    assert report.passed[0] == "sklearn.check_estimator_cloneable"
    text = str(report)
    assert text.splitlines()[0] == "meancenterer: 15 checks passed, 0 skipped"
    assert "passed  fit_returns_self" in text


@pytest.mark.parametrize("step", [square, ItemFunction(square)], ids=["function", "ItemFunction"])
def test_plain_function_skips_what_does_not_apply(step: Any) -> None:
    report = check_step(step)
    assert report.step == "square"
    assert report.skipped["fit_returns_self"] == "the step is not fittable"
    assert report.skipped["sklearn.check_set_params"] == "a plain function is not a scikit-learn estimator"
    assert {"saver_round_trip", "output_length", "batch_size_invariance"} <= set(report.passed)


def test_plain_function_on_given_items() -> None:
    assert "queued_pipeline[thread]" in check_step(upper, X=["a", "bc", "def", "g"]).passed


def test_step_that_changes_length_skips_output_length() -> None:
    report = check_step(KeepPositive())
    assert report.skipped["output_length"] == "the step declares may_change_length = True"
    assert "queued_pipeline[thread]" in report.passed


def test_non_deterministic_step_skips_comparisons() -> None:
    report = check_step(NoisyStep())
    nondeterministic = {"transform_repeatable", "copies_independent", "batch_size_invariance"}
    assert {n: r for n, r in report.skipped.items() if n in nondeterministic} == dict.fromkeys(
        nondeterministic, "the step is tagged non_deterministic"
    )
    assert {"saver_round_trip", "output_length", "queued_pipeline[thread]"} <= set(report.passed)


def test_step_with_setup_is_checked_as_workers_run_it(tmp_path: Any) -> None:
    assert "saver_round_trip" in check_step(LifecycleRecorder(str(tmp_path))).passed


def test_dataframe_outputs() -> None:
    X = pd.DataFrame({"a": np.arange(7.0), "b": np.arange(7.0) ** 2}, index=list("pqrstuv"))
    report = check_step(StandardScaler().set_output(transform="pandas"), X=X)
    assert "queued_pipeline[thread]" in report.passed


def test_the_users_step_is_left_unchanged() -> None:
    scaler = StandardScaler()
    check_step(scaler)
    assert not hasattr(scaler, "mean_")


@pytest.mark.timeout(60)
def test_process_backend() -> None:
    report = check_step(MeanCenterer(), batch_sizes=(4,), backends=("process",))
    assert "queued_pipeline[process]" in report.passed


@pytest.mark.parametrize("name, check", step_checks(AddConstant(2.0)))
def test_step_checks_parametrize_pytest(name: str, check: Any) -> None:
    check()  # a check that does not apply raises SkipTest: pytest skips it


# --- broken steps fail, naming the check and the step ---------------------------------------------

_CASES = [
    (HoldsLock(), "saver_round_trip", r"cannot be sent to its workers: CloudpickleSaver failed with TypeError: cannot pickle '_thread.lock' object"),
    (GeneratorAfterFit(), "saver_round_trip", r"cannot pickle 'generator' object"),
    (ShiftByMean(), "saver_round_trip", r"a copy loaded by the saver \(use_savers=False\) gives other outputs than the original"),
    (SharedFitState(), "copies_independent", r"changed the outputs of another: the copies share mutable state"),
    (SharedCallLog(), "transform_repeatable", r"a second call on the same input gave other outputs: transform keeps state"),
    (ReusedBuffer(), "transform_repeatable", r"the outputs of a call changed during later calls: transform returns a buffer that it reuses"),
    (ScalesInPlace(), "transform_repeatable", r"transform changed its input in place"),
    (DropsFirstRow(), "output_length", r"with batch_size=1: Step 'dropsfirstrow' returned 0 rows for a minibatch of 1 rows.*may_change_length = True"),
    (CenterEachBatch(), "batch_size_invariance", r"the outputs of minibatches of 1 row, joined, differ from the outputs on the whole input \(11 rows\)"),
    (FitReturnsNone(), "fit_returns_self", r"fit\(X, y\) returned NoneType instead of self"),
    (ValidatesInInit(), "sklearn.check_no_attributes_set_in_init", r"should not set any attribute apart from parameters during init. Found attributes \['scale'\]"),
]


@pytest.mark.parametrize(
    "step, check, detail", _CASES, ids=[type(case[0]).__name__ for case in _CASES]
)
def test_broken_step_fails_naming_check_and_step(step: Any, check: str, detail: str) -> None:
    name = type(step).__name__
    with pytest.raises(StepCheckError, match=rf"^check_step: step '{name.lower()}' \({name}\) failed check '{check}': (.|\n)*{detail}") as info:
        check_step(step)
    assert isinstance(info.value, AssertionError)
    assert (info.value.check, info.value.step) == (check, name.lower())


def test_the_error_pickles_with_its_check_and_step() -> None:
    with pytest.raises(StepCheckError) as info:
        check_step(FitReturnsNone())
    copy = pickle.loads(pickle.dumps(info.value))
    assert (str(copy), copy.check, copy.step) == (str(info.value), "fit_returns_self", "fitreturnsnone")


def test_a_step_that_rejects_the_default_input_is_told_to_pass_x() -> None:
    with pytest.raises(AssertionError, match=r"failed check 'transform_repeatable': raised AttributeError: .*upper.* \(check_step made up X; pass X= \(and y=\) data the step accepts\)"):
        check_step(upper)


def test_batch_sizes_none_is_the_whole_input() -> None:
    with pytest.raises(StepCheckError, match=r"failed check 'batch_size_invariance'"):
        check_step(CenterEachBatch(), batch_sizes=(2,))
    check_step(CenterEachBatch(), batch_sizes=(None,))  # one minibatch of the whole input


def test_a_step_that_works_only_in_the_callers_thread_fails_in_the_pipeline() -> None:
    with pytest.raises(
        StepCheckError,
        match=r"failed check 'queued_pipeline\[thread\]': SequentialQueuedPipeline\(batch_size=1, backend='thread'\) gives other outputs than the step on the whole input",
    ):
        check_step(ReadsThreadLocalSetting())


# --- parameters ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_sizes": (0,)}, r"The 'batch_sizes' parameter of check_step must hold ints in \[1, inf\) or None. Got 0 instead."),
        ({"backends": ("ray",)}, r"The 'backends' parameter of check_step must hold 'thread' or 'process'. Got \['ray'\] instead."),
        ({"X": np.zeros((0, 2))}, r"The 'X' parameter of check_step must have at least 1 row."),
    ],
)
def test_bad_parameters(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidParameterError, match=message):
        check_step(StandardScaler(), **kwargs)


def test_not_a_step() -> None:
    with pytest.raises(InvalidParameterError, match=r"The step at position 0 of check_step must be"):
        check_step(42)


def test_docstring_examples_run() -> None:
    result = doctest.testmod(neuraxle_stream.testing, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
