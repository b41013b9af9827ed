"""Tests for neuraxle_stream._validation: every bad parameter and step form.

Each case pins the scikit-learn-style message ("The 'batch_size' parameter of
SequentialQueuedPipeline must be an int in the range [1, inf). Got 0 instead.").
Validation happens at the start of each call, never in ``__init__``, and before
any worker starts: the thread backend is used, and nothing may be left behind.
"""

from __future__ import annotations

import itertools
import re
import sys
from typing import Any

import numpy as np
import pytest
from doubles import AddConstant, square
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from neuraxle_stream import (
    Identity,
    InvalidParameterError,
    ParallelQueuedFeatureUnion,
    ParallelWorkersWrapper,
    SequentialQueuedPipeline,
)
from neuraxle_stream._validation import parse_steps

COMPOSITES = [SequentialQueuedPipeline, ParallelQueuedFeatureUnion]
X = np.arange(12.0).reshape(6, 2)


def _msg(param: str, cls: type, allowed: str, got: str) -> str:
    return re.escape(f"The '{param}' parameter of {cls.__name__} must be ") + allowed + re.escape(
        f". Got {got} instead."
    )


# --- pipeline parameters ---------------------------------------------------------------------


def among(*options: str) -> str:
    """A regex for scikit-learn's "a str among {...}": exactly these options, in any order.

    scikit-learn prints the options of a set in its iteration order, which
    changes with the hash seed; every order is accepted, nothing else.
    """
    orders = ["', '".join(order) for order in itertools.permutations(options)]
    return r"a str among \{'(?:" + "|".join(re.escape(o) for o in orders) + r")'\}"


BOOL = r"an instance of 'bool' or an instance of 'numpy\.bool_?'"
VERBOSE = r"an int in the range \[0, inf\), " + BOOL

# (keyword arguments, parameter, what is allowed (a regex), repr of the bad value)
BAD_PARAMS: list[tuple[dict[str, Any], str, str, str]] = [
    ({"batch_size": 0}, "batch_size", r"an int in the range \[1, inf\)", "0"),
    ({"batch_size": -3}, "batch_size", r"an int in the range \[1, inf\)", "-3"),
    ({"batch_size": 2.0}, "batch_size", r"an int in the range \[1, inf\)", "2.0"),
    ({"batch_size": "8"}, "batch_size", r"an int in the range \[1, inf\)", "'8'"),
    ({"batch_size": None}, "batch_size", r"an int in the range \[1, inf\)", "None"),
    ({"batch_size": True}, "batch_size", r"an int in the range \[1, inf\)", "True"),
    ({"n_workers_per_step": 0}, "n_workers_per_step", r"an int in the range \[1, inf\)", "0"),
    ({"n_workers_per_step": 1.5}, "n_workers_per_step", r"an int in the range \[1, inf\)", "1.5"),
    ({"n_workers_per_step": True}, "n_workers_per_step", r"an int in the range \[1, inf\)", "True"),
    (
        {"max_queued_minibatches": 0},
        "max_queued_minibatches",
        r"an int in the range \[1, inf\) or None",
        "0",
    ),
    (
        {"max_queued_minibatches": [1]},
        "max_queued_minibatches",
        r"an int in the range \[1, inf\) or None",
        "[1]",
    ),
    ({"data_joiner": 3}, "data_joiner", "a callable or None", "3"),
    ({"use_processes": "yes"}, "use_processes", BOOL, "'yes'"),
    ({"use_savers": 1.0}, "use_savers", BOOL, "1.0"),
    ({"keep_incomplete_batch": None}, "keep_incomplete_batch", BOOL, "None"),
    ({"backend": "gpu"}, "backend", among("thread", "process", "ray") + " or None", "'gpu'"),
    ({"backend": "Thread"}, "backend", among("thread", "process", "ray") + " or None", "'Thread'"),
    (
        {"mp_context": "threads"},
        "mp_context",
        r"a str among \{'fork', 'forkserver', 'spawn'\}, a multiprocessing context or None",
        "'threads'",
    ),
    (
        {"mp_context": 3},
        "mp_context",
        r"a str among \{'fork', 'forkserver', 'spawn'\}, a multiprocessing context or None",
        "3",
    ),
    ({"output_order": "random"}, "output_order", among("input", "completion"), "'random'"),
    ({"timeout": 0}, "timeout", r"a float in the range \(0.0, inf\) or None", "0"),
    ({"timeout": -1.0}, "timeout", r"a float in the range \(0.0, inf\) or None", "-1.0"),
    ({"timeout": "10"}, "timeout", r"a float in the range \(0.0, inf\) or None", "'10'"),
    ({"data_joiner": "concat"}, "data_joiner", "a callable or None", "'concat'"),
    ({"verbose": 1.5}, "verbose", VERBOSE, "1.5"),
    ({"progress": None}, "progress", BOOL, "None"),
    ({"output_order": None}, "output_order", among("input", "completion"), "None"),
    ({"hooks": {}}, "hooks", "an instance of 'list', an instance of 'tuple' or None", "{}"),
    ({"verbose": "loud"}, "verbose", VERBOSE, "'loud'"),
    ({"hooks": [object]}, "hooks", "a list of PipelineHook instances or None", r"[<class 'object'>]"),
    ({"hooks": "stats"}, "hooks", "an instance of 'list', an instance of 'tuple' or None", "'stats'"),
    ({"progress": "yes"}, "progress", BOOL, "'yes'"),
    ({"memory": 3}, "memory", "an instance of 'str', an instance of 'os.PathLike', an instance of 'joblib.memory.Memory' or None", "3"),
]


@pytest.mark.parametrize("cls", COMPOSITES)
@pytest.mark.parametrize(
    ("kwargs", "param", "allowed", "got"), BAD_PARAMS, ids=[repr(c[0]) for c in BAD_PARAMS]
)
def test_bad_parameter_raises_at_call(
    cls: type, kwargs: dict[str, Any], param: str, allowed: str, got: str
) -> None:
    kwargs = {"backend": "thread", **kwargs}
    pipeline = cls([("add", AddConstant(1.0))], **kwargs)
    with pytest.raises(InvalidParameterError, match=_msg(param, cls, allowed, got)):
        pipeline.fit_transform(X)
    with pytest.raises(InvalidParameterError, match=_msg(param, cls, allowed, got)):
        pipeline.transform(X)


@pytest.mark.parametrize("cls", COMPOSITES)
def test_ray_backend_without_ray_says_how_to_install_it(cls: type, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    pipeline = cls([Identity()], backend="ray")
    with pytest.raises(ImportError, match=r"backend='ray' needs Ray, which is not installed: pip install 'neuraxle_stream\[ray\]'"):
        pipeline.transform(X)


@pytest.mark.parametrize("cls", COMPOSITES)
def test_init_only_stores_parameters(cls: type) -> None:
    # scikit-learn's contract: no validation in __init__, so clone/set_params work.
    pipeline = cls("not a list", batch_size=0, backend="gpu", n_workers_per_step=-1)
    assert pipeline.batch_size == 0 and pipeline.backend == "gpu"
    assert pipeline.get_params()["steps"] == "not a list"
    pipeline.set_params(steps=[Identity()], batch_size=2, backend="thread", n_workers_per_step=1)
    assert pipeline.transform([1, 2, 3]) == [1, 2, 3]


@pytest.mark.parametrize("method", ["fit", "fit_transform", "transform", "stream"])
def test_every_entry_point_validates(method: str) -> None:
    pipeline = SequentialQueuedPipeline([Identity()], batch_size=0, backend="thread")
    with pytest.raises(InvalidParameterError, match="'batch_size' parameter"):
        result = getattr(pipeline, method)(X)
        if method == "stream":
            next(result)


def test_invalid_parameter_error_is_a_value_error_and_a_type_error() -> None:
    pipeline = SequentialQueuedPipeline([Identity()], batch_size=0, backend="thread")
    with pytest.raises(ValueError):
        pipeline.transform(X)
    with pytest.raises(TypeError):
        pipeline.transform(X)


# --- step forms -----------------------------------------------------------------------------------

STEP = AddConstant(1.0)

# (steps, regex of the message, with {cls} for the composite's name)
BAD_STEPS: list[tuple[Any, str]] = [
    ("add", r"The 'steps' parameter of {cls} must be an instance of 'list' or an instance of 'tuple'. Got 'add' instead."),
    (STEP, r"The 'steps' parameter of {cls} must be an instance of 'list' or an instance of 'tuple'"),
    (
        [("a", 2, [[], []], 3, STEP, "extra")],
        r"The step at position 0 of {cls} must be a step or a tuple \(name, \[n_workers, \[worker_arguments,\] "
        r"\[max_queue_size,\]\] step\) of 2 to 5 items; got a 6-tuple\. "
        r"Got \('a', 2, \[\[\], \[\]\], 3, AddConstant\(\), 'extra'\) instead\.",
    ),
    ([("a",)], r"The step at position 0 of {cls} must be a step or a tuple \(name, \[n_workers, \[worker_arguments,\] "
     r"\[max_queue_size,\]\] step\) of 2 to 5 items; got a 1-tuple\. Got \('a',\) instead\."),
    ([()], r"The step at position 0 of {cls} must be a step or a tuple \(name, \[n_workers, \[worker_arguments,\] "
     r"\[max_queue_size,\]\] step\) of 2 to 5 items; got a 0-tuple\. Got \(\) instead\."),
    ([(1, STEP)], r"The name of the step at position 0 of {cls} must be a str. Got 1 instead."),
    ([(None, STEP)], r"The name of the step at position 0 of {cls} must be a str. Got None instead."),
    ([("a", 0, STEP)], r"The n_workers of step 'a' of {cls} must be an int in the range \[1, inf\). Got 0 instead."),
    ([("a", -1, 4, STEP)], r"The n_workers of step 'a' of {cls} must be an int in the range \[1, inf\). Got -1 instead."),
    ([("a", "2", STEP)], r"The n_workers of step 'a' of {cls} must be an int in the range \[1, inf\)\. Got '2' instead\."),
    ([("a", 2.0, STEP)], r"The n_workers of step 'a' of {cls} must be an int in the range \[1, inf\)\. Got 2.0 instead\."),
    ([("a", True, STEP)], r"The n_workers of step 'a' of {cls} must be an int in the range \[1, inf\)\. Got True instead\."),
    ([("a", 1, 0, STEP)], r"The max_queue_size of step 'a' of {cls} must be an int in the range \[1, inf\). Got 0 instead."),
    ([("a", 1, None, STEP)], r"The max_queue_size of step 'a' of {cls} must be an int in the range \[1, inf\)\. Got None instead\."),
    (
        # a list where the queue size goes: worker_arguments without the queue size
        [("a", 2, [[("tag", 0)], [("tag", 1)]], STEP)],
        r"The max_queue_size of step 'a' of {cls} must be an int in the range \[1, inf\). "
        r"Got \[\[\('tag', 0\)\], \[\('tag', 1\)\]\] instead.",
    ),
    (
        [("a", 2, [[("tag", 0)]], 4, STEP)],
        r"The worker_arguments of step 'a' of {cls} must have one entry per worker \(2\). Got 1 entries instead.",
    ),
    (
        [("a", 1, [[("tag", 0)], [("tag", 1)]], 4, STEP)],
        r"The worker_arguments of step 'a' of {cls} must have one entry per worker \(1\). Got 2 entries instead.",
    ),
    (
        [("a", 2, "tag", 4, STEP)],
        r"The worker_arguments of step 'a' of {cls} must be a list with one entry per worker. Got 'tag' instead.",
    ),
    (
        [("a", 2, [[("tag", 0)], 5], 4, STEP)],
        r"The worker_arguments of step 'a' of {cls} must be a list of \(param, value\) pairs per worker. Got 5 instead.",
    ),
    (
        [("a", 1, [[(0, "tag")]], 4, STEP)],
        r"The worker_arguments of step 'a' of {cls} must be a list of \(param, value\) pairs per worker.",
    ),
    ([3], r"The step at position 0 of {cls} must be an object with a transform method or a callable. Got 3 instead."),
    ([Identity(), "scaler"], r"The step at position 1 of {cls} must be an object with a transform method or a callable. Got 'scaler' instead."),
    # ("a", None) and ("a", "passthrough") are valid steps: see tests/test_sklearn_output.py
    ([("a", 1.5)], r"The step 'a' of {cls} must be an object with a transform method or a callable. Got 1.5 instead."),
    ([("a", 2, "passthru")], r"The step 'a' of {cls} must be an object with a transform method or a callable. Got 'passthru' instead."),
    ([("a", STEP), ("a", Identity())], r"The step names of {cls} must be unique. Got duplicates \['a'\] instead."),
    (
        [("b", STEP), ("a", 2, STEP), ("b", 1, 2, Identity())],
        r"The step names of {cls} must be unique. Got duplicates \['b'\] instead.",
    ),
    ([("a__b", STEP)], r"The step names of {cls} must not contain '__'. Got 'a__b' instead."),
]


@pytest.mark.parametrize("cls", COMPOSITES)
@pytest.mark.parametrize(("steps", "pattern"), BAD_STEPS, ids=[f"steps{i}" for i in range(len(BAD_STEPS))])
def test_bad_step_form_raises(cls: type, steps: Any, pattern: str) -> None:
    # fit: fit_transform is absent when a step cannot transform (scikit-learn's duck typing,
    # tests/test_sklearn_parity.py)
    pipeline = cls(steps, backend="thread")
    with pytest.raises(InvalidParameterError, match=pattern.format(cls=cls.__name__)):
        pipeline.fit(X)


# --- the five good forms, parsed -----------------------------------------------------------------


def test_parse_steps_accepts_the_five_forms() -> None:
    s1, s2, s3, s4, s5 = (AddConstant(i) for i in range(5))
    args = [[("value", 10)], [("value", 20)]]
    descs = parse_steps(
        [s1, ("two", s2), ("three", 3, s3), ("four", 2, 5, s4), ("five", 2, args, 7, s5)],
        "SequentialQueuedPipeline",
        n_workers_per_step=4,
        max_queued=9,
    )
    table = [(d.name, d.step, d.n_workers, d.max_queue_size, d.worker_arguments) for d in descs]
    assert table == [
        ("addconstant", s1, 4, 9, []),
        ("two", s2, 4, 9, []),
        ("three", s3, 3, 9, []),
        ("four", s4, 2, 5, []),
        ("five", s5, 2, 7, args),
    ]


def test_parse_steps_accepts_neuraxle_flat_worker_arguments() -> None:
    # Neuraxle's docstring form: one (param, value) pair per worker.
    (desc,) = parse_steps(
        [("a", 2, [("value", 1), ("value", 2)], 4, Identity())], "P", n_workers_per_step=1, max_queued=None
    )
    assert desc.worker_arguments == [[("value", 1)], [("value", 2)]]


def test_unnamed_steps_get_unique_lowercase_names_like_make_pipeline() -> None:
    steps = [StandardScaler(), AddConstant(1), StandardScaler(), ("standardscaler", AddConstant(2)), square]
    names = [d.name for d in parse_steps(steps, "P", 1, None)]
    assert names == ["standardscaler-1", "addconstant", "standardscaler-2", "standardscaler", "square"]
    assert len(set(names)) == len(names) and all(n == n.lower() for n in names)
    # the same names as make_pipeline where it would name them
    reference = make_pipeline(StandardScaler(), AddConstant(1), StandardScaler())
    assert [d.name for d in parse_steps(list(reference.named_steps.values()), "P", 1, None)] == list(
        reference.named_steps
    )


def test_wrapper_parameters_are_validated() -> None:
    cls = ParallelWorkersWrapper
    for kwargs, param, allowed, got in [
        ({"n_workers": 0}, "n_workers", r"an int in the range \[1, inf\)", "0"),
        ({"n_workers": True}, "n_workers", r"an int in the range \[1, inf\)", "True"),
        ({"batch_size": 0}, "batch_size", r"an int in the range \[1, inf\) or None", "0"),
        ({"max_queued_minibatches": -2}, "max_queued_minibatches", r"an int in the range \[1, inf\) or None", "-2"),
        ({"use_processes": "no"}, "use_processes", BOOL, "'no'"),
        ({"backend": "cuda"}, "backend", among("thread", "process", "ray") + " or None", "'cuda'"),
        ({"mp_context": "posix"}, "mp_context", r"a str among \{'fork', 'forkserver', 'spawn'\}, a multiprocessing context or None", "'posix'"),
        ({"use_savers": "no"}, "use_savers", BOOL, "'no'"),
        ({"timeout": 0}, "timeout", r"a float in the range \(0.0, inf\) or None", "0"),
        ({"timeout": "1s"}, "timeout", r"a float in the range \(0.0, inf\) or None", "'1s'"),
        ({"hooks": [object]}, "hooks", "a list of PipelineHook instances or None", r"[<class 'object'>]"),
        ({"hooks": "stats"}, "hooks", "an instance of 'list', an instance of 'tuple' or None", "'stats'"),
    ]:
        wrapper = cls(Identity(), **{"backend": "thread", **kwargs})
        with pytest.raises(InvalidParameterError, match=_msg(param, cls, allowed, got)):
            wrapper.transform(X)


def test_wrapper_rejects_a_non_step() -> None:
    with pytest.raises(InvalidParameterError, match=r"must be an object with a transform method or a callable\. Got 42"):
        ParallelWorkersWrapper(42, backend="thread").transform(X)


def test_union_without_branches_raises() -> None:
    union = ParallelQueuedFeatureUnion([], backend="thread")
    with pytest.raises(ValueError, match="needs at least one branch"):
        union.fit_transform(X)
    with pytest.raises(ValueError, match="needs at least one branch"):
        union.transform(X)


def test_wrapper_set_params_rejects_unknown_parameters() -> None:
    wrapper = ParallelWorkersWrapper(StandardScaler(), backend="thread")
    with pytest.raises(InvalidParameterError, match=r"Invalid parameter 'nope' for ParallelWorkersWrapper"):
        wrapper.set_params(nope=1)
    with pytest.raises(InvalidParameterError, match=r"Invalid parameter 'standardscaler__copy'"):
        wrapper.set_params(standardscaler__copy=False)


def test_set_params_rejects_unknown_parameters() -> None:
    pipeline = SequentialQueuedPipeline([("add", AddConstant())], backend="thread")
    with pytest.raises(InvalidParameterError, match=r"Invalid parameter 'nope' for SequentialQueuedPipeline"):
        pipeline.set_params(nope=1)
    with pytest.raises(InvalidParameterError, match=r"Invalid parameter 'other__value'"):
        pipeline.set_params(other__value=1)
    with pytest.raises(ValueError, match="Invalid parameter 'nope' for estimator AddConstant"):
        pipeline.set_params(add__nope=1)
