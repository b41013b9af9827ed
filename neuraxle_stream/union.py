"""The queued feature union: every minibatch goes to every branch.

Each branch is a lane with its own workers; per minibatch, the joiner waits for
every branch's output and joins them in branch order along the last axis (a
horizontal stack for 2-D arrays, like scikit-learn's ``FeatureUnion``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from sklearn.utils.metaestimators import available_if

from . import _containers, _sklearn_output
from ._validation import UNION_SPECIAL_STEPS, StageDesc, parse_steps
from .exceptions import InvalidParameterError
from .monitor import CallMonitor
from .pipeline import _StepsComposite
from .steps import is_fittable

__all__ = ["ParallelQueuedFeatureUnion"]


class ParallelQueuedFeatureUnion(_StepsComposite):
    """Run every branch on every minibatch, in parallel, and join their outputs.

    Takes the parameters of
    :class:`~neuraxle_stream.SequentialQueuedPipeline`. Fittable branches are
    fitted on the same input, in parallel threads of the parent (with
    ``fit_mode="partial"``: each minibatch of one pass over the input goes to
    the ``partial_fit`` of every fittable branch); then one run sends each
    minibatch to every branch. Per minibatch the branch outputs are
    joined in branch order along the last axis: 2-D arrays side by side (as
    ``sklearn.pipeline.FeatureUnion``), 1-D outputs as one column each,
    DataFrames side by side, lists as tuples.

    As in ``FeatureUnion``, a branch may be ``"drop"`` (left out) or
    ``"passthrough"`` (the input features, as they are), also through
    ``set_params(name="drop")``; ``set_output(transform="pandas")`` gives a
    DataFrame named by ``get_feature_names_out()``.

    Parameters
    ----------
    steps, batch_size, n_workers_per_step, ... : see SequentialQueuedPipeline
        The branches, in the same forms as the steps of a pipeline.
    transformer_weights : dict or None, default=None
        Multiplies the output of each branch named here by its weight, as in
        ``FeatureUnion``; a name of no branch is refused.
    verbose_feature_names_out : bool, default=True
        ``get_feature_names_out`` (and pandas output) names ``branch__feature``;
        ``False``: plain feature names, which must then be unique.

    Examples
    --------
    >>> import numpy as np
    >>> union = ParallelQueuedFeatureUnion(
    ...     [("double", lambda x: 2 * x), ("square", lambda x: x * x)], backend="thread")
    >>> union.transform([1, 2, 3])
    [(2, 1), (4, 4), (6, 9)]
    """

    _parameter_constraints = {
        **_StepsComposite._parameter_constraints,
        "transformer_weights": [dict, None],  # names and numbers: checked in _check_params
        "verbose_feature_names_out": ["boolean"],
    }

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
        transformer_weights: dict[str, float] | None = None,
        verbose_feature_names_out: bool = True,
    ) -> None:
        super().__init__(
            steps, batch_size, n_workers_per_step, max_queued_minibatches, data_joiner,
            use_processes, use_savers, keep_incomplete_batch, default_value_data_inputs,
            default_value_expected_outputs, backend=backend, mp_context=mp_context, hooks=hooks,
            memory=memory, output_order=output_order, progress=progress, verbose=verbose,
            timeout=timeout, ray_options=ray_options, ray_address=ray_address, fit_mode=fit_mode,
        )
        self.transformer_weights = transformer_weights
        self.verbose_feature_names_out = verbose_feature_names_out

    def _stage_descs(self) -> list[StageDesc]:
        return parse_steps(
            self.steps, type(self).__name__, self.n_workers_per_step, self.max_queued_minibatches,
            special=UNION_SPECIAL_STEPS,
        )

    def _check_params(self) -> dict[str, Any]:
        settings = super()._check_params()
        _sklearn_output.check_transformer_weights(self)
        return settings

    def _steps_name_features(self) -> bool:
        return _sklearn_output.union_names_available(self)

    def _input_steps(self) -> list[Any]:
        # every branch takes the union's input as it is
        try:
            return [d.step for d in self._stage_descs() if d.kind == "step"]
        except InvalidParameterError:
            return []

    @available_if(_steps_name_features)
    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Output feature names, as ``sklearn.pipeline.FeatureUnion`` gives them.

        Each branch's names in branch order, ``f"{branch}__{name}"`` with
        ``verbose_feature_names_out=True`` (the default); plain names otherwise,
        which must then be unique. A ``"passthrough"`` branch names the input
        features; ``"drop"`` branches give none.
        """
        return _sklearn_output.union_feature_names(self, input_features)

    def _sk_visual_block_(self) -> Any:
        # the notebook diagram: the branches side by side, each with its workers
        return _sklearn_output.visual_block(self, "parallel")

    def _lanes(self, descs: list[StageDesc], start: int, stop: int) -> list[list[StageDesc]]:
        return [[d] for d in descs if d.kind != "drop"]

    def _join_lanes(self, outputs: list[Any], descs: list[StageDesc]) -> Any:
        return _sklearn_output.join_branches(self, outputs, descs)

    def _passthrough_only(self, start: int, stop: int) -> bool:
        return False  # a "passthrough" branch is joined (and weighted) with the others

    def _transform_range(
        self, X: Any, start: int, stop: int, settings: dict[str, Any], monitor: CallMonitor
    ) -> Any:
        if not self._lanes(self._stage_descs(), start, stop):  # every branch is "drop"
            return _sklearn_output.no_branch_output(X)
        return super()._transform_range(X, start, stop, settings, monitor)

    def transform(self, X: Any, *, trace: int | None = None, **params: Any) -> Any:  # type: ignore[override]
        """Run every branch on ``X`` and return the joined outputs.

        With ``trace=N``, run only the first ``N`` items and return a
        :class:`~neuraxle_stream.TraceResult` with one stage per branch.
        ``params`` (only with ``enable_metadata_routing=True``) go to the
        ``transform`` of the branches that request them, cut per minibatch.
        """
        settings = self._check_params()
        if not self._stage_descs():
            raise ValueError("ParallelQueuedFeatureUnion needs at least one branch.")
        X = _containers.as_rows(X)
        if params:
            from ._fitting import route_params

            settings["_routed"] = route_params(self, "transform", params, X, None)
        if trace is not None:
            return self._traced(
                "transform", trace, settings, X, None,
                lambda X, y, s, m, transform: self._transform_range(X, 0, 1, s, m),
            )
        with self._monitor(settings, X) as monitor:
            return self._transform_range(X, 0, 1, settings, monitor)

    def _fit(self, X: Any, y: Any, settings: dict[str, Any], monitor: CallMonitor, transform: bool) -> Any:
        from ._fitting import RoutedParams, fit_partial  # (pipeline.py imports it first)

        descs = self._stage_descs()
        if not descs:
            raise ValueError("ParallelQueuedFeatureUnion needs at least one branch.")
        if settings.get("fit_mode") == "partial":  # one pass: every branch partial_fit on each minibatch
            _sklearn_output.record_input(self, X)
            if _containers.is_sequence(X):  # stateless branches record their input from the first minibatch
                n = min(settings.get("batch_size") or 32, _containers.num_rows(X))
                y_first = _containers.slice_rows(y, 0, n) if _containers.is_sequence(y) else None
                _sklearn_output.fit_stateless(descs, _containers.slice_rows(X, 0, n), y_first, union=True)
            return fit_partial(self, X, y, settings, monitor, transform, union=True)
        fittable = [(i, d) for i, d in enumerate(descs) if is_fittable(d.step)]
        if not _containers.is_sequence(X):
            X = list(X)
        _sklearn_output.record_input(self, X)
        # stateless scikit-learn branches (FunctionTransformer...) record their input features
        _sklearn_output.fit_stateless(descs, X, y, union=True)
        routed: RoutedParams = settings.get("_routed") or RoutedParams()
        n_rows = _containers.num_rows(X)
        if routed.n_samples is None:
            routed.n_samples = n_rows
        # per-sample metadata cut to the rows of X (fewer than given with fit_transform(trace=N))
        fit_params = {d.name: routed.fit_params(d.name, 0, n_rows) for _, d in fittable}
        if len(fittable) == 1:
            d = fittable[0][1]
            self._fit_step(d, X, y, monitor, fit_params[d.name])
        elif fittable:
            with ThreadPoolExecutor(max_workers=len(fittable)) as pool:
                futures = [pool.submit(self._fit_step, d, X, y, monitor, fit_params[d.name]) for _, d in fittable]
                for future in futures:
                    future.result()
        return self._transform_range(X, 0, 1, settings, monitor) if transform else self
