"""Parameter validation and step-form parsing, with scikit-learn's messages.

Pipelines declare their parameters in a table (``_parameter_constraints``),
checked at the start of each call, never in ``__init__``; every message has the
form "The 'batch_size' parameter of SequentialQueuedPipeline must be an int in
the range [1, inf). Got 0 instead."
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, field
from typing import Any

from joblib import Memory
from sklearn.utils._param_validation import (
    Interval,
    StrOptions,
    validate_parameter_constraints,
)
from sklearn.utils._param_validation import InvalidParameterError as _SkInvalidParameterError

from . import _containers
from .exceptions import InvalidParameterError
from .hooks import PipelineHook
from .steps import Identity, as_step, is_fittable, step_display_name

__all__ = [
    "COMMON_CONSTRAINTS",
    "PIPELINE_SPECIAL_STEPS",
    "UNION_SPECIAL_STEPS",
    "StageDesc",
    "WorkersStage",
    "check_hooks",
    "check_lengths",
    "parse_steps",
    "validate_params",
]

_POSITIVE_INT = Interval(numbers.Integral, 1, None, closed="left")
_POSITIVE_REAL = Interval(numbers.Real, 0, None, closed="neither")
_NON_NEGATIVE_INT = Interval(numbers.Integral, 0, None, closed="left")

COMMON_CONSTRAINTS: dict[str, Any] = {
    "batch_size": [_POSITIVE_INT],
    "n_workers_per_step": [_POSITIVE_INT],
    "max_queued_minibatches": [_POSITIVE_INT, None],
    "data_joiner": [callable, None],
    "use_processes": ["boolean"],
    "use_savers": ["boolean"],
    "keep_incomplete_batch": ["boolean"],
    "default_value_data_inputs": "no_validation",
    "default_value_expected_outputs": "no_validation",
    "backend": [StrOptions({"process", "thread", "ray"}), None],
    "mp_context": "no_validation",  # a name or a context object: checked in validate_params
    "hooks": [list, tuple, None],  # of PipelineHook instances: checked in validate_params
    "memory": [str, os.PathLike, Memory, None],
    "output_order": [StrOptions({"input", "completion"})],
    "progress": ["boolean"],
    "verbose": ["verbose"],
    "timeout": [_POSITIVE_REAL, None],
    "ray_options": [dict, None],  # step name -> ray actor options: checked by the Ray runtime
    "ray_address": [str, None],
    "fit_mode": [StrOptions({"full", "partial"})],
    "max_retries": [_NON_NEGATIVE_INT],
    "retry_on": [tuple],  # of exception types: checked in validate_params
    "on_error": [StrOptions({"raise", "skip"})],
    "max_failures": [_NON_NEGATIVE_INT, Interval(numbers.Real, 0, 1, closed="both"), None],
}


def validate_params(constraints: dict[str, Any], params: dict[str, Any], caller: str) -> None:
    """Check ``params`` against ``constraints``; raise :class:`InvalidParameterError`."""
    try:
        validate_parameter_constraints(constraints, params, caller_name=caller)
    except _SkInvalidParameterError as exc:
        raise InvalidParameterError(str(exc)) from None
    for name, allowed in constraints.items():
        # bool is an Integral to Python, but batch_size=True is a mistake; the
        # step forms refuse it too.
        if isinstance(allowed, list) and (_POSITIVE_INT in allowed or _NON_NEGATIVE_INT in allowed) and isinstance(
            params.get(name), bool
        ):
            options = [str(c) for c in allowed]
            text = options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"
            raise InvalidParameterError(
                f"The {name!r} parameter of {caller} must be {text}. Got {params[name]!r} instead."
            )
    if "hooks" in constraints:
        check_hooks(params.get("hooks"), caller)
    retry_on = params.get("retry_on", ())
    if not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_on):
        raise InvalidParameterError(
            f"The 'retry_on' parameter of {caller} must be a tuple of exception types. Got {retry_on!r} instead."
        )
    context = params.get("mp_context")
    if context is not None and not (
        context in ("forkserver", "spawn", "fork") or hasattr(context, "get_start_method")
    ):
        raise InvalidParameterError(
            f"The 'mp_context' parameter of {caller} must be a str among "
            f"{{'fork', 'forkserver', 'spawn'}}, a multiprocessing context or None. "
            f"Got {context!r} instead."
        )


def check_hooks(hooks: Any, caller: str) -> None:
    """Raise :class:`InvalidParameterError` unless ``hooks`` is None or a list of PipelineHook."""
    if hooks is None:
        return
    if not isinstance(hooks, list | tuple) or not all(isinstance(h, PipelineHook) for h in hooks):
        raise InvalidParameterError(
            f"The 'hooks' parameter of {caller} must be a list of PipelineHook instances "
            f"or None. Got {hooks!r} instead."
        )


def check_lengths(X: Any, y: Any, caller: str) -> None:
    """Raise a ``ValueError`` naming both lengths when ``X`` and ``y`` differ in rows.

    Checked in the parent before any worker starts; a source without a length
    (a generator) cannot be checked and is taken as it is.
    """
    if y is None or not (_containers.is_sequence(X) and _containers.is_sequence(y)):
        return
    try:
        n_x, n_y = _containers.num_rows(X), _containers.num_rows(y)
    except TypeError:
        return
    if n_x != n_y:
        raise ValueError(
            f"{caller} got X and y of different lengths: X has {n_x} rows, y has {n_y}. "
            "Found input variables with inconsistent numbers of samples: "
            f"[{n_x}, {n_y}]."
        )


@dataclass
class StageDesc:
    """One entry of ``steps``, parsed: what the stage runs and with how many workers."""

    name: str
    step: Any
    n_workers: int
    max_queue_size: int | None
    worker_arguments: list[list[tuple[str, Any]]] = field(default_factory=list)
    owner: Any = None  # the object the user put in ``steps`` (a wrapper, a function...)
    #: ``"step"``; ``"passthrough"`` (``"passthrough"`` or ``None`` in ``steps``: the
    #: identity, run by no worker in a pipeline); ``"drop"`` (a union branch left out)
    kind: str = "step"
    #: Whether the step's tuple (or its wrapper) set its queue bound: such a step is never chained.
    own_queue: bool = False

    @property
    def runnable(self) -> Any:
        """The object the workers run (callables become per-item steps)."""
        return as_step(self.step)


class WorkersStage:
    """A step that sets the workers of the step it wraps (``ParallelWorkersWrapper``).

    :func:`parse_steps` unwraps it: the stage runs ``wrapped`` with its
    ``n_workers`` and queue bound, unless the step's tuple form says otherwise.
    Declared here, below the estimators, so that parsing needs no import of them.
    """

    wrapped: Any
    n_workers: int
    max_queued_minibatches: int | None


def _bad(caller: str, what: str, allowed: str, got: Any) -> InvalidParameterError:
    return InvalidParameterError(
        f"The {what} of {caller} must be {allowed}. Got {got!r} instead."
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_instance(step: Any) -> None:
    """Refuse an estimator class given in place of an instance, as scikit-learn does."""
    if isinstance(step, type) and (hasattr(step, "get_params") or hasattr(step, "transform")):
        raise InvalidParameterError(
            f"Expected an estimator instance ({step.__name__}()), got estimator class "
            f"instead ({step.__name__})."
        )


def _check_step(caller: str, step: Any, where: str, *, union: bool = False, last: bool = False) -> None:
    if hasattr(step, "transform") or callable(step):
        return
    error = _bad(caller, f"step {where}", "an object with a transform method or a callable", step)
    # then scikit-learn's words for the same situation, so code written against it matches
    doesnt = f"'{step}' (type {type(step)}) doesn't"
    if union:
        sklearn_words = f"All estimators should implement fit and transform. {doesnt}"
    elif not last:
        sklearn_words = (
            "All intermediate steps should be transformers and implement fit and transform "
            f"or be the string 'passthrough' {doesnt}"
        )
    elif not hasattr(step, "fit"):
        sklearn_words = f"Last step of {caller} should implement fit or be the string 'passthrough'. {doesnt}"
    else:
        sklearn_words = (
            "A final predictor is not supported: put the queued pipeline in a "
            "sklearn.pipeline.Pipeline, before the predictor."
        )
    raise InvalidParameterError(f"{error} {sklearn_words}")


def check_steps(names: list[str], params: dict[str, Any], caller: str, *, pipeline: bool) -> None:
    """What scikit-learn checks of the steps at ``fit`` beyond their forms.

    A pipeline without steps is refused (in scikit-learn's words), and so is a
    step name that is also a constructor argument (``get_params`` could not
    tell them apart).
    """
    if pipeline and not names:
        raise ValueError("The pipeline is empty. Please add steps.")
    clash = sorted(set(names) & set(params))
    if clash:
        raise InvalidParameterError(
            f"Estimator names conflict with constructor arguments: {clash!r}. The step names "
            f"of {caller} must differ from its parameters."
        )


def check_fitted(descs: list[StageDesc], fitted_here: Any, caller: str) -> None:
    """Raise ``NotFittedError`` for a fittable step that was never fitted, before it runs.

    A step counts as fitted when ``check_is_fitted`` says so, or when this
    composite fitted it (``fitted_here``: names; a step whose ``fit`` records
    no ``_``-suffixed attribute is fitted all the same).
    """
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    for d in descs:
        if d.kind != "step" or d.name in fitted_here or not is_fittable(d.step):
            continue
        try:
            check_is_fitted(d.step)
        except NotFittedError as exc:
            raise NotFittedError(
                f"This {caller} instance is not fitted yet. Call 'fit' with appropriate arguments "
                f"before using this estimator. Its step {d.name!r} was never fitted."
            ) from exc


def _worker_args(caller: str, name: str, args: Any, n_workers: int) -> list[list[tuple[str, Any]]]:
    what = f"worker_arguments of step {name!r}"
    if not isinstance(args, list | tuple):
        raise _bad(caller, what, "a list with one entry per worker", args)
    if len(args) != n_workers:
        raise InvalidParameterError(
            f"The {what} of {caller} must have one entry per worker ({n_workers}). "
            f"Got {len(args)} entries instead."
        )
    per_worker = []
    for entry in args:
        if isinstance(entry, tuple) and len(entry) == 2 and isinstance(entry[0], str):
            per_worker.append([entry])  # Neuraxle's flat form: one pair per worker
            continue
        if not isinstance(entry, list | tuple) or not all(
            isinstance(p, list | tuple) and len(p) == 2 and isinstance(p[0], str) for p in entry
        ):
            raise _bad(caller, what, "a list of (param, value) pairs per worker", entry)
        per_worker.append([tuple(p) for p in entry])
    return per_worker


#: The step values that stand for no step, as in ``sklearn.pipeline.Pipeline``
#: (``"passthrough"`` and ``None``: the identity) and ``FeatureUnion``
#: (``"passthrough"``: the input features; ``"drop"``: no branch).
PIPELINE_SPECIAL_STEPS: tuple[Any, ...] = ("passthrough", None)
UNION_SPECIAL_STEPS: tuple[Any, ...] = ("passthrough", "drop")
_SPECIAL_STEPS = ("passthrough", "drop", None)


def _is_special(step: Any) -> bool:
    return step is None or isinstance(step, str)


def parse_steps(
    steps: Any, caller: str, n_workers_per_step: int, max_queued: int | None,
    *, special: tuple[Any, ...] = (),
) -> list[StageDesc]:
    """Parse the five step forms of ``steps`` into :class:`StageDesc` entries.

    Forms: ``step`` · ``(name, step)`` · ``(name, n_workers, step)`` ·
    ``(name, n_workers, max_queue_size, step)`` ·
    ``(name, n_workers, worker_arguments, max_queue_size, step)``.
    A step among ``special`` (``"passthrough"``, ``None``, ``"drop"``) gives a
    stage of that ``kind`` whose ``step`` is an :class:`~neuraxle_stream.Identity`
    and whose ``owner`` is the value given.
    """
    if not isinstance(steps, list | tuple):
        raise _bad(caller, "'steps' parameter", "a list of steps", steps)
    stages: list[StageDesc] = []
    for position, entry in enumerate(steps):
        where = f"at position {position}"
        name: str | None = None
        n_workers, max_queue, worker_args = n_workers_per_step, max_queued, None
        own_queue = False
        if isinstance(entry, tuple):
            if not 2 <= len(entry) <= 5:
                raise _bad(
                    caller, f"step {where}",
                    "a step or a tuple (name, [n_workers, [worker_arguments,] [max_queue_size,]] step)"
                    f" of 2 to 5 items; got a {len(entry)}-tuple", entry,
                )
            name, *middle, step = entry
            if not isinstance(name, str):
                raise _bad(caller, f"name of the step {where}", "a str", name)
            if middle:
                n_workers = middle[0]
                if not _is_int(n_workers) or n_workers < 1:
                    raise _bad(caller, f"n_workers of step {name!r}", "an int in the range [1, inf)", n_workers)
            if len(middle) >= 2:
                max_queue = middle[-1]
                if not _is_int(max_queue) or max_queue < 1:
                    raise _bad(caller, f"max_queue_size of step {name!r}", "an int in the range [1, inf)", max_queue)
                own_queue = True
            if len(middle) == 3:
                worker_args = _worker_args(caller, name, middle[1], int(n_workers))
        else:
            step = entry
        if _is_special(step) and step in special:
            kind = "drop" if step == "drop" else "passthrough"
            stages.append(StageDesc(name or "", Identity(), int(n_workers), max_queue, [], step, kind))
            continue
        if _is_special(step) and step in _SPECIAL_STEPS and special:  # allowed elsewhere, not here
            allowed = ", ".join(repr(a) for a in special)
            raise _bad(
                caller, f"step {where if name is None else repr(name)}",
                f"an object with a transform method, a callable or one of {allowed}", step,
            )
        _check_instance(step)
        _check_step(
            caller, step, where if name is None else repr(name),
            union=special == UNION_SPECIAL_STEPS, last=position == len(steps) - 1,
        )
        owner = step
        if isinstance(step, WorkersStage):
            if len(entry) < 3 if isinstance(entry, tuple) else True:
                n_workers = step.n_workers
                if step.max_queued_minibatches is not None:
                    max_queue = step.max_queued_minibatches
                    own_queue = True
            step = step.wrapped
        stages.append(StageDesc(name or "", step, int(n_workers), max_queue, worker_args or [], owner,
                                own_queue=own_queue))
    _name_stages(stages, caller)
    return stages


def _name_stages(stages: list[StageDesc], caller: str) -> None:
    """Give unnamed steps unique lowercase class names, as ``make_pipeline`` does."""
    explicit = [s.name for s in stages if s.name]
    if len(set(explicit)) != len(explicit):
        dupes = sorted({n for n in explicit if explicit.count(n) > 1})
        raise InvalidParameterError(
            f"The step names of {caller} must be unique. Got duplicates {dupes} instead. "
            f"Names provided are not unique: {explicit!r}"
        )
    underscored = [s.name for s in stages if "__" in s.name]
    if underscored:
        raise InvalidParameterError(
            f"The step names of {caller} must not contain '__'. Got {underscored[0]!r} instead. "
            f"Estimator names must not contain __: got {underscored!r}"
        )
    defaults = [_default_name(s.owner) for s in stages if not s.name]
    counts = {n: defaults.count(n) for n in defaults}
    seen: dict[str, int] = {}
    for s in stages:
        if s.name:
            continue
        base = _default_name(s.owner)
        if counts[base] > 1 or base in explicit:
            seen[base] = seen.get(base, 0) + 1
            s.name = f"{base}-{seen[base]}"
        else:
            s.name = base


def _default_name(owner: Any) -> str:
    # "passthrough" is named "passthrough", as by sklearn's ``make_pipeline``
    return owner if isinstance(owner, str) else step_display_name(owner)
