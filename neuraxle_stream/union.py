"""The queued feature union: every minibatch goes to every branch.

Each branch is a lane with its own workers; per minibatch, the joiner waits for
every branch's output and joins them in branch order along the last axis (a
horizontal stack for 2-D arrays, like scikit-learn's ``FeatureUnion``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np

from . import _containers, _sklearn_output
from ._branches import BranchJoin
from ._composite import _StepsComposite
from ._fitting import fit_union
from ._validation import UNION_SPECIAL_STEPS, StageDesc, parse_steps
from .exceptions import InvalidParameterError
from .lifecycle import Lifecycle
from .monitor import CallMonitor
from .plan import Plan

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
        "transformer_weights": [dict, None],  # names and numbers: checked in _check_stages
        "verbose_feature_names_out": ["boolean"],
    }
    _style = "union"

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
        max_retries: int = 0,
        retry_on: tuple[type[BaseException], ...] = (),
        on_error: str = "raise",
        max_failures: float | None = None,
        chain: bool | str = "auto",
        transformer_weights: dict[str, float] | None = None,
        verbose_feature_names_out: bool = True,
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
        self.transformer_weights = transformer_weights
        self.verbose_feature_names_out = verbose_feature_names_out

    def _stage_descs(self) -> list[StageDesc]:
        return parse_steps(
            self.steps, type(self).__name__, self.n_workers_per_step, self.max_queued_minibatches,
            special=UNION_SPECIAL_STEPS,
        )

    def _check_stages(self, descs: list[StageDesc]) -> None:
        _sklearn_output.check_transformer_weights(self, [d.name for d in descs])
        if not descs:
            raise ValueError("ParallelQueuedFeatureUnion needs at least one branch.")

    def _join(self, descs: list[StageDesc]) -> Callable[[list[Any]], Any]:
        # the branches that run, weighted and joined side by side (FeatureUnion's names with pandas)
        return BranchJoin(
            names=tuple(d.name for d in descs if d.kind != "drop"),
            weights=dict(self.transformer_weights or {}),
            pandas=_sklearn_output.output_config(self) != "default",
            verbose_feature_names_out=self.verbose_feature_names_out,
        )

    def _steps_name_features(self) -> bool:
        return _sklearn_output.union_names_available(self)

    def _input_steps(self) -> list[Any]:
        # every branch takes the union's input as it is
        try:
            return [d.step for d in self._stage_descs() if d.kind == "step"]
        except InvalidParameterError:
            return []

    @_sklearn_output.available_if_explained(_steps_name_features)
    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        """Output feature names, as ``sklearn.pipeline.FeatureUnion`` gives them.

        Each branch's names in branch order, ``f"{branch}__{name}"`` with
        ``verbose_feature_names_out=True`` (the default); plain names otherwise,
        which must then be unique. A ``"passthrough"`` branch names the input
        features; ``"drop"`` branches give none.
        """
        return _sklearn_output.union_feature_names(self, input_features)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        with contextlib.suppress(InvalidParameterError):
            tags.array_api_support = _sklearn_output.union_array_api_support(self._stage_descs())
        return tags

    def _sk_visual_block_(self) -> Any:
        # the notebook diagram: the branches side by side, each with its workers
        return _sklearn_output.visual_block(self, "parallel")

    def _fit(self, plan: Plan, lifecycle: Lifecycle, X: Any, y: Any, monitor: CallMonitor, transform: bool) -> Any:
        if plan.fit_mode != "partial" and not _containers.is_sequence(X):
            X = list(X)  # every branch is fitted on the whole input: read the source once
        _sklearn_output.record_input(self, X)
        return fit_union(plan, lifecycle, X, y, monitor, transform)
