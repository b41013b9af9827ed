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

from . import _containers
from ._validation import StageDesc
from .pipeline import _QueuedBase, _StepsComposite
from .stats import CallMonitor
from .steps import is_fittable

__all__ = ["ParallelQueuedFeatureUnion"]


class ParallelQueuedFeatureUnion(_StepsComposite):
    """Run every branch on every minibatch, in parallel, and join their outputs.

    Takes the parameters of
    :class:`~neuraxle_stream.SequentialQueuedPipeline`. Fittable branches are
    fitted on the same input, in parallel threads of the parent; then one run
    sends each minibatch to every branch. Per minibatch the branch outputs are
    joined in branch order along the last axis: 2-D arrays side by side (as
    ``sklearn.pipeline.FeatureUnion``), 1-D outputs as one column each,
    DataFrames side by side, lists as tuples.

    Examples
    --------
    >>> import numpy as np
    >>> union = ParallelQueuedFeatureUnion(
    ...     [("double", lambda x: 2 * x), ("square", lambda x: x * x)], backend="thread")
    >>> union.transform([1, 2, 3])
    [(2, 1), (4, 4), (6, 9)]
    """

    @available_if(_QueuedBase._steps_name_features)
    def get_feature_names_out(self, input_features: Any = None) -> Any:
        """Output feature names: each branch's, in branch order.

        As in the joined DataFrames, a name given by more than one branch is
        prefixed ``f"{branch}__{name}"`` in every branch that gives it.
        """
        per_branch = [
            (d.name, [str(n) for n in d.step.get_feature_names_out(input_features)])
            for d in self._stage_descs()
        ]
        seen = [set(names) for _, names in per_branch]
        dupes = {n for i, s in enumerate(seen) for n in s if any(n in t for t in seen[:i] + seen[i + 1 :])}
        return np.asarray(
            [f"{branch}__{n}" if n in dupes else n for branch, names in per_branch for n in names],
            dtype=object,
        )

    def _lanes(self, descs: list[StageDesc], start: int, stop: int) -> list[list[StageDesc]]:
        return [[d] for d in descs]

    def _join_lanes(self, outputs: list[Any], descs: list[StageDesc]) -> Any:
        if len(outputs) == 1:
            return outputs[0]
        return _containers.join_columns(outputs, [d.name for d in descs])

    def transform(self, X: Any, *, trace: int | None = None) -> Any:
        """Run every branch on ``X`` and return the joined outputs.

        With ``trace=N``, run only the first ``N`` items and return a
        :class:`~neuraxle_stream.TraceResult` with one stage per branch.
        """
        settings = self._check_params()
        if not self._stage_descs():
            raise ValueError("ParallelQueuedFeatureUnion needs at least one branch.")
        X = _containers.as_rows(X)
        if trace is not None:
            return self._traced(
                "transform", trace, settings, X, None,
                lambda X, y, s, m, transform: self._transform_range(X, 0, 1, s, m),
            )
        with self._monitor(settings, X) as monitor:
            return self._transform_range(X, 0, 1, settings, monitor)

    def _fit(self, X: Any, y: Any, settings: dict[str, Any], monitor: CallMonitor, transform: bool) -> Any:
        descs = self._stage_descs()
        if not descs:
            raise ValueError("ParallelQueuedFeatureUnion needs at least one branch.")
        fittable = [(i, d) for i, d in enumerate(descs) if is_fittable(d.step)]
        if not _containers.is_sequence(X):
            X = list(X)
        if len(fittable) == 1:
            self._fit_step(fittable[0][1], X, y, monitor)
        elif fittable:
            with ThreadPoolExecutor(max_workers=len(fittable)) as pool:
                futures = [pool.submit(self._fit_step, d, X, y, monitor) for _, d in fittable]
                for future in futures:
                    future.result()
        return self._transform_range(X, 0, 1, settings, monitor) if transform else self
