"""The queued pipeline: steps in sequence, each stage with its own workers.

:class:`SequentialQueuedPipeline` is a scikit-learn estimator whose
``__init__`` only stores its parameters (see :mod:`neuraxle_stream._composite`
for the calls and lifecycle it shares with the union and the wrapper):
workers, queues and processes exist only while a call runs, or inside
``with pipeline:``. ``ParallelWorkersWrapper`` and ``StripAbsentValues`` are
re-exported here, where they used to live.
"""

from __future__ import annotations

from typing import Any

from . import _sklearn_output
from ._composite import _StepsComposite
from ._fitting import fit_sequential
from ._validation import PIPELINE_SPECIAL_STEPS, StageDesc, parse_steps
from .lifecycle import Lifecycle
from .minibatches import StripAbsentValues
from .monitor import CallMonitor
from .plan import Plan
from .wrapper import ParallelWorkersWrapper

__all__ = ["ParallelWorkersWrapper", "SequentialQueuedPipeline", "StripAbsentValues"]


class SequentialQueuedPipeline(_StepsComposite):
    """Run steps in sequence, each stage with its own workers, linked by bounded queues.

    The data are cut into minibatches of ``batch_size``; each stage runs its step
    in ``n_workers`` workers that each hold their own copy of the step; a joiner
    restores input order. ``fit_transform(X, y)`` gives what
    ``sklearn.pipeline.make_pipeline(*steps).fit_transform(X, y)`` gives.

    Parameters
    ----------
    steps : list
        Steps in any of the forms ``step``, ``(name, step)``,
        ``(name, n_workers, step)``, ``(name, n_workers, max_queue_size, step)``,
        ``(name, n_workers, worker_arguments, max_queue_size, step)``.
    batch_size : int, default=32
        Rows per minibatch.
    n_workers_per_step : int, default=1
        Workers of a step whose form does not say.
    max_queued_minibatches : int or None, default=None
        Bound of each stage's input queue; ``None`` is twice the stage's workers.
    data_joiner : callable or step, default=None
        Joins the list of minibatch outputs; ``None`` concatenates them.
    use_processes : bool, default=True
        Neuraxle's spelling of ``backend``: processes (True) or threads.
    use_savers : bool, default=False
        Kept for Neuraxle compatibility; steps always travel through savers.
    keep_incomplete_batch : bool, default=True
        Keep the last short minibatch (``False`` drops it).
    default_value_data_inputs : Any, default=None
        When not ``None``, pads the last short minibatch with this value; the
        outputs of the padded rows are removed again.
        :class:`StripAbsentValues` keeps it short.
    default_value_expected_outputs : Any, default=None
        When not ``None``, the last short minibatch is padded too (its rows
        with ``default_value_data_inputs``, as in Neuraxle).
    backend : {"process", "thread"} or None, default=None
        Where workers run; wins over ``use_processes``.
    mp_context : str or multiprocessing context, default=None
        Start method for process workers (``forkserver`` on Linux by default).
    hooks : list of PipelineHook or None, default=None
        Hooks run in every worker, around its lifetime and each minibatch;
        their ``report`` runs in the parent at the end of each call.
    memory : str, pathlib.Path, joblib.Memory or None, default=None
        Cache directory: each step's output per minibatch and each fitted
        step are kept there and reused by later calls (see ``docs/caching.md``);
        ``pipeline.cache_info()`` reports hits and misses.
    output_order : {"input", "completion"}, default="input"
        Order of ``stream`` outputs.
    progress : bool, default=False
        Draw one progress bar per step (plain lines when stderr is not a terminal).
    verbose : bool, default=False
        Print a scikit-learn-style line per step fitted and per step run.
    timeout : float or None, default=None
        Seconds a worker may spend on one minibatch before a ``TimeoutError``.
    fit_mode : {"full", "partial"}, default="full"
        How ``fit`` fits each fittable step, in the parent, on the output of
        the stages before it: ``"full"``, its ``fit`` on the whole output (as
        scikit-learn's ``Pipeline``); ``"partial"``, its ``partial_fit``
        minibatch by minibatch in input order while the stages before it run
        in their workers (one pass over ``X`` per fittable step, so ``X`` may
        be a stream larger than memory: a sequence, a re-iterable, a callable
        returning a fresh iterable, or a generator when one pass is enough).
        In partial mode a fittable step without ``partial_fit`` raises
        ``InvalidParameterError``. See ``docs/fitting.md``, also for the
        metadata routing of ``fit(X, y, **params)``.
    transform_input : list of str or None, default=None
        As ``sklearn.pipeline.Pipeline``'s (metadata routing only): the fit
        params named here (``X_val``...) reach each step transformed by the
        steps before it, fitted (a tuple of arrays: each of them).
    max_retries : int, default=0
        Times a minibatch runs again after its worker died (killed, crashed,
        out of memory, or over ``timeout``: the worker is replaced) or its
        step raised an exception of a type in ``retry_on``. A minibatch that
        fails every attempt ends the call (see ``on_error``); when its worker
        died each time, the ``BrokenPipelineError`` names it as the likely cause.
    retry_on : tuple of exception types, default=()
        The step errors worth another attempt (``(ConnectionError,)``).
    on_error : {"raise", "skip"}, default="raise"
        ``"skip"`` (``stream`` only): a minibatch that failed every attempt is
        dropped with a :class:`~neuraxle_stream.SkippedMinibatchWarning` and
        recorded in ``stats_.failures``; the stream goes on. ``transform`` and
        ``fit_transform`` refuse it (they return one output per input).
    max_failures : int, float or None, default=None
        With ``on_error="skip"``: the skipped minibatches allowed, as a count
        or a fraction of the minibatches fed so far (at least one for any
        fraction above 0); past it, the call ends with the last error.
        ``None``: no limit. See ``docs/reliability.md`` ("Long runs").
    chain : {"auto", False}, default="auto"
        ``"auto"``: consecutive steps that set nothing of their own (no
        ``worker_arguments``, explicit ``max_queue_size``, Ray options or CUDA
        device) share workers, each running them one after another on its
        minibatch, with no queue or process hop between them; a fitted step
        never gets more copies than its ``n_workers``. ``False``: one set of
        workers per step, as written. ``stats_.plan`` shows the layout; see
        "Chained stages" in ``docs/performance.md``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.preprocessing import StandardScaler
    >>> p = SequentialQueuedPipeline([("scale", 2, StandardScaler())], batch_size=2,
    ...                              backend="thread")
    >>> p.fit_transform(np.array([[0.0], [2.0], [4.0]])).ravel()
    array([-1.22474487,  0.        ,  1.22474487])
    """

    _parameter_constraints = {**_StepsComposite._parameter_constraints, "transform_input": [list, None]}

    def __init__(
        self,
        steps: list[Any],
        batch_size: int = 32,
        n_workers_per_step: int = 1,
        max_queued_minibatches: int | None = None,
        data_joiner: Any = None,
        use_processes: bool = True,
        use_savers: bool = False,
        keep_incomplete_batch: bool = True,
        default_value_data_inputs: Any = None,
        default_value_expected_outputs: Any = None,
        *,
        backend: str | None = None,
        mp_context: Any = None,
        hooks: Any = None,
        memory: Any = None,
        output_order: str = "input",
        progress: bool = False,
        verbose: bool = False,
        timeout: float | None = None,
        ray_options: dict[str, dict[str, Any]] | None = None,
        ray_address: str | None = None,
        fit_mode: str = "full",
        transform_input: list[str] | None = None,
        max_retries: int = 0,
        retry_on: tuple[type[BaseException], ...] = (),
        on_error: str = "raise",
        max_failures: float | None = None,
        chain: bool | str = "auto",
    ) -> None:
        super().__init__(
            steps, batch_size, n_workers_per_step, max_queued_minibatches, data_joiner,
            use_processes, use_savers, keep_incomplete_batch, default_value_data_inputs,
            default_value_expected_outputs, backend=backend, mp_context=mp_context, hooks=hooks,
            memory=memory, output_order=output_order, progress=progress, verbose=verbose,
            timeout=timeout, ray_options=ray_options, ray_address=ray_address, fit_mode=fit_mode,
            max_retries=max_retries, retry_on=retry_on, on_error=on_error, max_failures=max_failures,
            chain=chain,
        )
        self.transform_input = transform_input

    def _stage_descs(self) -> list[StageDesc]:
        return parse_steps(
            self.steps, type(self).__name__, self.n_workers_per_step, self.max_queued_minibatches,
            special=PIPELINE_SPECIAL_STEPS,
        )

    def _fit(self, plan: Plan, lifecycle: Lifecycle, X: Any, y: Any, monitor: CallMonitor, transform: bool) -> Any:
        _sklearn_output.record_input(self, X)  # n_features_in_ when the first step does not say
        return fit_sequential(plan, lifecycle, X, y, monitor, transform)
