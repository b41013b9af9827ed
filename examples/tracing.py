"""Tracing: see what each step did to the first few items, as in a notebook.

``transform(X, trace=N)`` runs only the first ``N`` items through the real
workers (here, processes) and returns a ``TraceResult`` instead of the
outputs: one stage per step, one call per minibatch for a transformer and one
per item for a plain function, each with its real arguments and return
value. ``@trace_func`` adds a helper's calls to the stage of the step that
called it. Arrays print as a one-line summary (shape, dtype, hash, stats).
A traced call that fails hands back what it recorded on the exception. Run
it with::

    pip install -e ".[examples]"  # once: what every example needs
    python examples/tracing.py
"""

from __future__ import annotations

import numpy as np
from sklearn.preprocessing import StandardScaler

from neuraxle_stream import (
    BaseTransformer,
    NonFittableMixin,
    SequentialQueuedPipeline,
    last_trace,
    trace_func,
)


@trace_func
def clip(row: np.ndarray) -> np.ndarray:
    """A helper a step calls: traced, its calls join the stage of that step."""
    return np.clip(row, -2.0, 2.0)


def norm(row: np.ndarray) -> float:
    """A per-item step: one call per row."""
    return float(np.linalg.norm(clip(row)))


class Drift(NonFittableMixin, BaseTransformer):
    """Add a constant to every feature: the kind of bug a trace makes visible."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def transform(self, data_inputs: np.ndarray) -> np.ndarray:
        if np.isnan(data_inputs).any():
            raise ValueError("NaN in the input")
        return data_inputs + self.offset


def main() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1000, 4)).astype(np.float32)
    pipeline = SequentialQueuedPipeline(
        [("scale", StandardScaler()), ("drift", 2, Drift(offset=5.0)), ("norm", norm)],
        batch_size=2,
    )
    pipeline.fit(X)

    print(">>> trace = pipeline.transform(X, trace=4)")
    trace = pipeline.transform(X, trace=4)
    print(trace)
    print()
    print(">>> trace.drift[0].retval.mean()   # the raw values stay on the calls")
    print(trace.drift[0].retval.mean())
    print(">>> trace.norm['clip'][0]")
    print(trace.norm["clip"][0])
    print(">>> [name for name in dir(trace) if not name.startswith('_')]")
    print([name for name in dir(trace) if not name.startswith("_")])

    print()
    print(">>> X[2, 1] = np.nan; pipeline.transform(X, trace=4)")
    X[2, 1] = np.nan
    try:
        pipeline.transform(X, trace=4)
    except ValueError as exc:
        print(f"ValueError: {exc}")
        partial = exc.trace  # type: ignore[attr-defined]
        assert partial is last_trace()
        print(partial.drift)


if __name__ == "__main__":
    main()
