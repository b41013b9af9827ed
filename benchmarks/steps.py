"""The steps the benchmarks run in neuraxle_stream pipelines."""

from __future__ import annotations

from typing import Any

import numpy as np

from neuraxle_stream import BaseTransformer, NonFittableMixin

from .workload import build, build_half, compute, compute_half, item_sums


class Build(NonFittableMixin, BaseTransformer):
    """Stage 1 as a neuraxle_stream step."""

    def transform(self, data_inputs: Any) -> np.ndarray:
        """Build one float32 row per int."""
        return build(data_inputs)


class Compute(NonFittableMixin, BaseTransformer):
    """Stage 2 as a neuraxle_stream step."""

    def transform(self, data_inputs: Any) -> np.ndarray:
        """Apply ``tanh(y @ M)`` ten times to each item."""
        return compute(data_inputs)


class BuildHalf(NonFittableMixin, BaseTransformer):
    """W2's stage 1: build, then half of the rounds."""

    def transform(self, data_inputs: Any) -> np.ndarray:
        """Build one row per int and apply the first half of the rounds."""
        return build_half(data_inputs)


class ComputeHalf(NonFittableMixin, BaseTransformer):
    """W2's stage 2: the other half of the rounds."""

    def transform(self, data_inputs: Any) -> np.ndarray:
        """Apply the second half of the rounds."""
        return compute_half(data_inputs)


class Noop(NonFittableMixin, BaseTransformer):
    """The no-op step of the overhead table."""

    def transform(self, data_inputs: Any) -> Any:
        """Return the minibatch as it is."""
        return data_inputs


class Touch(NonFittableMixin, BaseTransformer):
    """An identity-ish step for the transport workload: reads one value, returns the input."""

    def transform(self, data_inputs: Any) -> Any:
        """Read the first value (so the data is really there) and return the input."""
        if len(data_inputs):
            np.asarray(data_inputs[0]).flat[0]
        return data_inputs


class Reduce(NonFittableMixin, BaseTransformer):
    """The third stage of the memory profile: one float per item."""

    def transform(self, data_inputs: Any) -> np.ndarray:
        """The float64 sum of each item."""
        return item_sums(data_inputs)


class Tanh(NonFittableMixin, BaseTransformer):
    """The light middle stage of the memory profile: elementwise tanh."""

    def transform(self, data_inputs: Any) -> np.ndarray:
        """``tanh`` of the minibatch."""
        return np.tanh(np.asarray(data_inputs))
