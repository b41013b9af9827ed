"""The reference workload as Neuraxle 0.8.1 steps (imported only by its rows).

Neuraxle 0.8.1's process workers use ``logging.handlers`` without importing
it; importing it here, at module level and first, is the documented
workaround. Install: ``pip install --no-deps neuraxle==0.8.1`` (its import
needs only NumPy, SciPy, scikit-learn, joblib and pandas).
"""

from __future__ import annotations

import logging.handlers  # noqa: F401 - must come before neuraxle, see above
from typing import Any

from neuraxle.base import BaseTransformer, NonFittableMixin
from neuraxle.data_container import StripAbsentValues
from neuraxle.distributed.streaming import SequentialQueuedPipeline

from .workload import build, compute


class _Step(NonFittableMixin, BaseTransformer):
    def __init__(self) -> None:
        BaseTransformer.__init__(self)
        NonFittableMixin.__init__(self)


class NxBuild(_Step):
    """Stage 1."""

    def transform(self, data_inputs: Any) -> Any:
        return build(data_inputs)


class NxCompute(_Step):
    """Stage 2."""

    def transform(self, data_inputs: Any) -> Any:
        return compute(data_inputs)


class NxNoop(_Step):
    """The no-op step of the overhead table."""

    def transform(self, data_inputs: Any) -> Any:
        return data_inputs


def pipeline(steps: list[tuple[str, int, Any]], batch_size: int, use_processes: bool) -> Any:
    """A Neuraxle 0.8.1 queued pipeline; queues bounded at twice the workers, as ours.

    Neuraxle pads a short last minibatch with ``None`` unless told to strip it.
    """
    return SequentialQueuedPipeline(
        [(name, n, 2 * n, step) for name, n, step in steps],
        batch_size=batch_size,
        use_processes=use_processes,
        use_savers=False,
        default_value_data_inputs=StripAbsentValues(),
    )
