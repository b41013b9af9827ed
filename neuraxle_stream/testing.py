"""Check that a step keeps the contract of a queued pipeline: :func:`check_step`.

A queued pipeline does not run the step a user wrote: each worker runs its own
copy, made by the savers (``save_step`` in the parent, ``load_step`` in the
worker), on minibatches of the data. :func:`check_step` tests what that needs
and raises :class:`StepCheckError` on the first failure; :func:`step_checks`
yields the checks one by one, to parametrize pytest as scikit-learn's
``parametrize_with_checks`` does.

One module over ~400 lines, on purpose: it is the list of the contract's
checks, each a short function read next to the others (as scikit-learn's
``estimator_checks.py``); splitting it would scatter the one list a step
author reads.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import sys
import time
import unittest
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.utils import estimator_checks

from . import _containers
from ._validation import parse_steps
from .exceptions import InvalidParameterError
from .pipeline import SequentialQueuedPipeline
from .savers import load_step, save_step
from .steps import ItemFunction, call_hook, is_fittable

__all__ = ["SKLEARN_CHECKS", "CheckResult", "StepCheckError", "StepCheckReport", "check_step", "step_checks"]

#: The checks of ``sklearn.utils.estimator_checks`` that hold for any
#: estimator used as a step: they test the API and need no data. Checks that
#: fit on scikit-learn's own data are left out, as a step may take other input
#: (images, text); ``fit_returns_self`` is checked on the step's own data.
SKLEARN_CHECKS = (
    "check_estimator_cloneable",
    "check_estimator_repr",
    "check_no_attributes_set_in_init",
    "check_get_params_invariance",
    "check_set_params",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_valid_tag_types",
    "check_mixin_order",
)

#: Rows of the default input: with batch size 3, the last minibatch is short.
_DEFAULT_ROWS = 11

_BACKENDS = ("thread", "process")


class StepCheckError(AssertionError):
    """A step failed a check of :func:`check_step`; the message names both.

    Attributes
    ----------
    check : str
        The name of the failed check.
    step : str
        The name of the step.
    """

    def __init__(self, message: str, check: str = "", step: str = "") -> None:
        super().__init__(message)
        self.check = check
        self.step = step

    def __reduce__(self) -> tuple[Any, ...]:  # keep check and step through pickling
        return type(self), (str(self), self.check, self.step)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: ``"passed"`` or ``"skipped"`` (with the reason)."""

    name: str
    status: str
    reason: str = ""
    duration: float = 0.0


@dataclass(frozen=True)
class StepCheckReport:
    """What :func:`check_step` ran on a step that passed: each check, passed or skipped.

    ``str(report)`` is a table, one line per check.
    """

    step: str
    results: tuple[CheckResult, ...]

    @property
    def passed(self) -> list[str]:
        """The names of the checks that passed."""
        return [r.name for r in self.results if r.status == "passed"]

    @property
    def skipped(self) -> dict[str, str]:
        """The checks that did not apply to the step, with the reason."""
        return {r.name: r.reason for r in self.results if r.status == "skipped"}

    def __str__(self) -> str:
        lines = [f"{self.step}: {len(self.passed)} checks passed, {len(self.skipped)} skipped"]
        width = max(len(r.name) for r in self.results) if self.results else 0
        for r in self.results:
            note = f"{r.duration * 1000:.1f} ms" if r.status == "passed" else r.reason
            lines.append(f"  {r.status:<8}{r.name:<{width}}  {note}")
        return "\n".join(lines)


def step_checks(
    step: Any,
    X: Any = None,
    y: Any = None,
    *,
    batch_sizes: Iterable[int | None] = (1, 3, None),
    backends: Iterable[str] = ("thread",),
) -> list[tuple[str, Callable[[], None]]]:
    """The ``(check_name, check)`` pairs, each ``check()`` one check of :func:`check_step`.

    A check raises :class:`StepCheckError` when the step fails it and
    ``unittest.SkipTest`` (a skip, to pytest) when it does not apply. The
    checks share the fitted step and its outputs, computed on first use.
    Parameters are those of :func:`check_step`. A list, which
    ``pytest.mark.parametrize`` takes as it is (it deprecates iterators).

    Examples
    --------
    >>> from sklearn.preprocessing import StandardScaler
    >>> names = [name for name, _ in step_checks(StandardScaler())]
    >>> names[-4:]
    ['copies_independent', 'output_length', 'batch_size_invariance', 'queued_pipeline[thread]']

    In a test module::

        @pytest.mark.parametrize("name, check", step_checks(MyStep()))
        def test_my_step(name, check):
            check()
    """
    return list(_Subject(step, X, y, batch_sizes, backends).checks())


def check_step(
    step: Any,
    X: Any = None,
    y: Any = None,
    *,
    batch_sizes: Iterable[int | None] = (1, 3, None),
    backends: Iterable[str] = ("thread",),
) -> StepCheckReport:
    """Check that ``step`` can run in the workers of a queued pipeline.

    Checks, in order; each is skipped where it does not apply, and the report says why:

    - ``sklearn.<check>``: the checks of :data:`SKLEARN_CHECKS` (clone, repr,
      ``get_params`` / ``set_params``, tags), for steps with ``get_params``;
    - ``fit_returns_self``: ``fit(X, y)`` returns the step (fittable steps);
    - ``transform_repeatable``: more calls on the same input give the same
      outputs, and leave the input and earlier outputs unchanged;
    - ``saver_round_trip``: the fitted step goes through ``save_step`` and
      ``load_step``, as to its workers (``use_savers`` False and True), and the
      copy gives the original's outputs;
    - ``copies_independent``: fitting and running one loaded copy leaves the
      outputs of another copy, of a later copy and of the original unchanged;
    - ``output_length``: one output row per input row on minibatches of each of
      ``batch_sizes``, unless the step sets ``may_change_length = True``;
    - ``batch_size_invariance``: the minibatch outputs, joined, equal the
      outputs on the whole input;
    - ``queued_pipeline[<backend>]``: so does a ``SequentialQueuedPipeline`` of
      the step (which fits it first when it is fittable), for each batch size.

    Float outputs are compared with ``numpy.testing.assert_allclose``
    (``rtol=1e-6``, ``atol=1e-9``; ten times looser below float64), others for
    equality; steps tagged ``non_deterministic`` skip the comparisons. The
    checks run private copies of the step (``sklearn.base.clone`` for fittable
    estimators, else ``copy.deepcopy``), with ``random_state=None`` set to 0.

    Parameters
    ----------
    step : object
        A step in any form a pipeline takes: a transformer, a plain function
        (a per-item step), ``(name, step)``, ``(name, n_workers, step)``, ...
    X : array-like, default=None
        Input the step accepts, at least one row. ``None`` gives a default of
        11 rows: for a plain function ``list(range(11))``, else a float64
        array of shape (11, 3) (non-negative when the step's tags ask for it).
    y : array-like, default=None
        Targets for ``fit``; ``None`` gives ``numpy.arange(len(X)) % 2`` when
        the step's tags say it requires ``y``.
    batch_sizes : iterable of int or None, default=(1, 3, None)
        Minibatch sizes to run; ``None`` is ``len(X)``.
    backends : iterable of {"thread", "process"}, default=("thread",)
        Backends of the queued-pipeline check.

    Returns
    -------
    StepCheckReport
        The checks run, passed or skipped.

    Raises
    ------
    StepCheckError
        An ``AssertionError`` naming the first failed check and the step.
    InvalidParameterError
        When ``step``, ``X``, ``batch_sizes`` or ``backends`` is not valid.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.preprocessing import StandardScaler
    >>> from neuraxle_stream import BaseTransformer
    >>> print(str(check_step(StandardScaler())).splitlines()[0])
    standardscaler: 15 checks passed, 0 skipped
    >>> check_step(np.sqrt, X=[1.0, 4.0, 9.0]).skipped["fit_returns_self"]
    'the step is not fittable'
    >>> class CenterEachBatch(BaseTransformer):
    ...     def transform(self, X):
    ...         return X - X.mean(axis=0)
    >>> check_step(CenterEachBatch())  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    neuraxle_stream.testing.StepCheckError: check_step: step 'centereachbatch' ...
    """
    subject = _Subject(step, X, y, batch_sizes, backends)
    results = []
    for name, check in subject.checks():
        started = time.perf_counter()
        try:
            check()
        except unittest.SkipTest as exc:
            results.append(CheckResult(name, "skipped", str(exc)))
        else:
            results.append(CheckResult(name, "passed", "", time.perf_counter() - started))
    return StepCheckReport(subject.name, tuple(results))


class _Subject:
    """The step under check, its data, and what the checks share (computed once)."""

    def __init__(self, step: Any, X: Any, y: Any, batch_sizes: Iterable[Any], backends: Iterable[str]) -> None:
        self.desc = d = parse_steps([step], "check_step", 2, None)[0]
        self.name, runnable = d.name, d.runnable
        self.label = f"{d.name!r} ({getattr(d.step, '__name__', type(runnable).__name__)})"
        self.per_item = isinstance(runnable, ItemFunction)
        self.fittable = is_fittable(runnable)
        tags = _tags(runnable)
        self.deterministic = tags is None or not tags.non_deterministic
        self.default_X = X is None
        X = _default_X(self.per_item, tags) if X is None else _containers.as_rows(X)
        X = X if _containers.is_sequence(X) else list(X)
        self.n = _containers.num_rows(X)
        if self.n < 1:
            raise InvalidParameterError(f"The 'X' parameter of check_step must have at least 1 row. Got {X!r} instead.")
        if y is None and tags is not None and tags.target_tags.required:
            y = np.arange(self.n) % 2
        self.X, self.y = _snapshot(X), y  # a step that writes into its input must not reach the caller's
        sizes, self.backends = list(batch_sizes), list(backends)
        bad = [b for b in sizes if b is not None and (type(b) is not int or b < 1)]
        if bad:
            raise InvalidParameterError(
                f"The 'batch_sizes' parameter of check_step must hold ints in [1, inf) or None. Got {bad[0]!r} instead."
            )
        if not set(self.backends) <= {"thread", "process"}:
            raise InvalidParameterError(
                f"The 'backends' parameter of check_step must hold 'thread' or 'process'. Got {self.backends!r} instead."
            )
        self.batch_sizes: list[int] = [self.n if b is None else b for b in sizes]
        self.fit_returned: Any = None

    # -- what the checks share ---------------------------------------------------------

    def fresh(self) -> Any:
        """A private copy of the step as the user gave it: unfitted when fittable, seeded."""
        step = self.desc.runnable
        if self.fittable and hasattr(step, "get_params"):
            step = clone(step)
        else:
            with contextlib.suppress(Exception):  # cannot be copied: saver_round_trip says why
                step = copy.deepcopy(step)
        if hasattr(step, "get_params") and not self.per_item:
            params = step.get_params()
            step.set_params(**{k: 0 for k, v in params.items() if k.endswith("random_state") and v is None})
        return step

    @cached_property
    def fitted(self) -> Any:
        """The original: a private copy, fitted on ``(X, y)`` when fittable."""
        step = self.fresh()
        if self.fittable:
            self.fit_returned = step.fit(self.X, self.y)
        return step

    @cached_property
    def payloads(self) -> dict[bool, bytes]:
        """The fitted step saved for its workers, by ``use_savers``."""
        return {use: save_step(self.fitted, self.name, use) for use in (False, True)}

    @cached_property
    def expected(self) -> Any:
        """The original's outputs on the whole input: the reference of every comparison."""
        with contextlib.suppress(Exception):  # saved before setup(); saver_round_trip says why not
            self.payloads  # noqa: B018
        call_hook(self.fitted, "setup")
        return _snapshot(self.fitted.transform(_snapshot(self.X)))

    def load(self, use_savers: bool = False) -> Any:
        """A copy of the fitted step as a worker gets it: loaded, then ``setup()``."""
        step = load_step(self.payloads[use_savers])
        call_hook(step, "setup")
        return step

    def rows(self, order: Iterable[int]) -> Any:
        """The rows of ``X`` at these positions, in the container of ``X``."""
        return _containers.concat_rows([_containers.slice_rows(self.X, i, i + 1) for i in order])

    # -- the checks --------------------------------------------------------------------

    def checks(self) -> Iterator[tuple[str, Callable[[], None]]]:
        own: list[tuple[str, Callable[[], None]]] = [
            *((f"sklearn.{c}", functools.partial(self._sklearn, c)) for c in SKLEARN_CHECKS),
            ("fit_returns_self", self._fit_returns_self),
            ("transform_repeatable", self._transform_repeatable),
            ("saver_round_trip", self._saver_round_trip),
            ("copies_independent", self._copies_independent),
            ("output_length", self._output_length),
            ("batch_size_invariance", self._batch_size_invariance),
            *((f"queued_pipeline[{b}]", functools.partial(self._queued, b)) for b in self.backends),
        ]
        for name, method in own:
            yield name, functools.partial(self._run, name, method)

    def _run(self, check: str, method: Callable[[], None]) -> None:
        try:
            method()
        except (unittest.SkipTest, StepCheckError):
            raise
        except Exception as exc:
            ours = isinstance(exc, AssertionError | InvalidParameterError)
            detail = str(exc) if ours else f"raised {type(exc).__name__}: {exc}"
            if self.default_X and not ours:
                detail += " (check_step made up X; pass X= (and y=) data the step accepts)"
            message = f"check_step: step {self.label} failed check {check!r}: {detail}"
            raise StepCheckError(message, check, self.name) from exc

    def _sklearn(self, check_name: str) -> None:
        step = self.desc.runnable
        if self.per_item:
            raise unittest.SkipTest("a plain function is not a scikit-learn estimator")
        if not hasattr(step, "get_params"):
            raise unittest.SkipTest("the step has no get_params: not a scikit-learn estimator")
        if check_name == "check_valid_tag_types" and not hasattr(step, "__sklearn_tags__"):
            raise unittest.SkipTest("the step has no __sklearn_tags__")
        check = getattr(estimator_checks, check_name, None)
        if check is None:
            raise unittest.SkipTest(f"this version of scikit-learn has no {check_name}")
        check(type(step).__name__, step)

    def _fit_returns_self(self) -> None:
        if not self.fittable:
            raise unittest.SkipTest("the step is not fittable")
        fitted = self.fitted
        if self.fit_returned is not fitted:
            raise AssertionError(
                f"fit(X, y) returned {type(self.fit_returned).__name__} instead of self; "
                "fit_transform and scikit-learn pipelines chain calls on what fit returns"
            )

    def _transform_repeatable(self) -> None:
        expected, step = self.expected, self.fitted  # expected: the first call
        X = _snapshot(self.X)
        first = step.transform(X)
        _same(X, self.X, "transform changed its input in place (in a thread worker, a minibatch is a view of the caller's data)")
        if not self.deterministic:
            raise unittest.SkipTest("the step is tagged non_deterministic")
        kept = _snapshot(first)
        stateful = "transform keeps state between calls, and each worker's copy sees only some minibatches"
        _same(kept, expected, f"a second call on the same input gave other outputs: {stateful}")
        _same(step.transform(_snapshot(self.X)), kept, f"a third call on the same input gave other outputs: {stateful}")
        step.transform(self.rows(range(self.n - 1, -1, -1)))
        _same(first, kept, "the outputs of a call changed during later calls: transform returns a buffer that it reuses")

    def _saver_round_trip(self) -> None:
        try:
            self.payloads  # noqa: B018
        except InvalidParameterError as exc:  # its message names the step and the saver
            raise AssertionError(str(exc)) from exc
        for use_savers in (False, True):
            out = self.load(use_savers).transform(self.X)
            if self.deterministic:
                _same(out, self.expected, f"a copy loaded by the saver (use_savers={use_savers}) gives other outputs than the original")

    def _copies_independent(self) -> None:
        if not self.deterministic:
            raise unittest.SkipTest("the step is tagged non_deterministic")
        a, b = self.load(), self.load()
        before = _snapshot(b.transform(self.X))
        half = range(max(1, self.n // 2))
        X_other = self.rows([*half, *range(self.n)])  # other data of the same kind
        if self.fittable:
            y = None if self.y is None else np.asarray(self.y)[[*half, *range(self.n)]]
            a.fit(X_other, y)
        a.transform(X_other)
        shared = "the copies share mutable state (a class attribute, a global); each worker must hold its own copy"
        _same(b.transform(self.X), before, f"fitting and transforming one loaded copy changed the outputs of another: {shared}")
        _same(self.load().transform(self.X), before, f"a copy loaded after another was fitted and used gives other outputs: {shared}")
        _same(self.fitted.transform(self.X), self.expected, f"fitting and transforming a loaded copy changed the outputs of the original: {shared}")

    def _output_length(self) -> None:
        if getattr(self.desc.runnable, "may_change_length", False):
            raise unittest.SkipTest("the step declares may_change_length = True")
        step = self.load()
        for size in self.batch_sizes:
            for batch in _containers.iter_row_batches(self.X, size):
                try:
                    _containers.check_same_length(_containers.num_rows(batch), step.transform(batch), self.name)
                except (TypeError, ValueError) as exc:  # TypeError: an output without rows
                    raise AssertionError(f"with batch_size={size}: {exc}") from None

    def _batch_size_invariance(self) -> None:
        if not self.deterministic:
            raise unittest.SkipTest("the step is tagged non_deterministic")
        for size in self.batch_sizes:
            step = self.load()
            joined = _containers.concat_rows([step.transform(b) for b in _containers.iter_row_batches(self.X, size)])
            rows = f"{size} row{'s' if size > 1 else ''}"
            _same(joined, self.expected, f"the outputs of minibatches of {rows}, joined, differ from the outputs on "
                  f"the whole input ({self.n} rows): a row's output depends on the other rows of its minibatch")

    def _queued(self, backend: str) -> None:
        d = self.desc
        for size in self.batch_sizes:
            step = self.fresh()  # fitted by the pipeline when fittable
            queue = d.max_queue_size or 2 * d.n_workers
            entry = (d.name, d.n_workers, d.worker_arguments, queue, step) if d.worker_arguments else (d.name, d.n_workers, step)
            pipeline = SequentialQueuedPipeline([entry], batch_size=size, backend=backend)
            out = pipeline.fit_transform(self.X, self.y) if self.fittable else pipeline.transform(self.X)
            what = f"SequentialQueuedPipeline(batch_size={size}, backend={backend!r}) gives other outputs than the step on the whole input"
            if self.deterministic:
                _same(out, self.expected, what)
            elif _containers.num_rows(out) != self.n and not getattr(d.runnable, "may_change_length", False):
                raise AssertionError(f"{what}: {_containers.num_rows(out)} rows for {self.n}")


def _tags(step: Any) -> Any:
    """The step's scikit-learn tags, or ``None`` for a step without (valid) tags."""
    if isinstance(step, ItemFunction) or not hasattr(step, "__sklearn_tags__"):
        return None
    try:
        return step.__sklearn_tags__()
    except Exception:  # broken tags: sklearn.check_valid_tag_types reports them
        return None


def _default_X(per_item: bool, tags: Any) -> Any:
    if per_item:
        return list(range(_DEFAULT_ROWS))
    X = np.random.RandomState(0).normal(size=(_DEFAULT_ROWS, 3))
    return np.abs(X) if tags is not None and tags.input_tags.positive_only else X


def _snapshot(data: Any) -> Any:
    """A copy to compare with later, or ``data`` itself when it cannot be copied."""
    try:
        return copy.deepcopy(data)
    except Exception:
        return data


def _same(actual: Any, expected: Any, what: str) -> None:
    """Raise ``AssertionError(what + details)`` unless ``actual`` equals ``expected``."""
    try:
        _compare(actual, expected)
    except AssertionError as exc:
        raise AssertionError(f"{what}.\n{exc}") from None


def _compare(actual: Any, expected: Any) -> None:
    """Floats within tolerance, all else equal; containers item by item."""
    pd, torch = sys.modules.get("pandas"), sys.modules.get("torch")
    if type(actual) is not type(expected) and not (
        isinstance(actual, list | tuple) and isinstance(expected, list | tuple)
    ) and not (np.isscalar(actual) and np.isscalar(expected)):
        raise AssertionError(f"got a {type(actual).__name__}, expected a {type(expected).__name__}")
    if pd is not None and isinstance(expected, pd.DataFrame | pd.Series):
        test = pd.testing.assert_frame_equal if isinstance(expected, pd.DataFrame) else pd.testing.assert_series_equal
        test(actual, expected, check_exact=False, rtol=1e-6, atol=1e-9)
    elif sp.issparse(expected):
        _compare(actual.toarray(), expected.toarray())
    elif torch is not None and isinstance(expected, torch.Tensor):
        _compare(actual.detach().cpu().numpy(), expected.detach().cpu().numpy())
    elif isinstance(expected, np.ndarray) and expected.dtype != object:
        if actual.shape != expected.shape:
            raise AssertionError(f"got shape {actual.shape}, expected {expected.shape}")
        if expected.dtype.kind in "fc":
            loose = 1 if expected.dtype in (np.float64, np.complex128) else 10
            np.testing.assert_allclose(actual, expected, rtol=1e-6 * loose, atol=1e-9 * loose)
        else:
            np.testing.assert_array_equal(actual, expected)
    elif isinstance(expected, list | tuple | np.ndarray):  # object arrays too
        if len(actual) != len(expected):
            raise AssertionError(f"got {len(actual)} items, expected {len(expected)}")
        for i, (a, e) in enumerate(zip(actual, expected)):
            try:
                _compare(a, e)
            except AssertionError as exc:
                raise AssertionError(f"item {i}: {exc}") from None
    elif isinstance(expected, float | np.floating):
        np.testing.assert_allclose(actual, expected, rtol=1e-6, atol=1e-9)
    elif not bool(actual == expected):
        raise AssertionError(f"got {actual!r}, expected {expected!r}")
