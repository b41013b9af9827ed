"""What a failure looks like in a queued pipeline.

1. A step raises in a worker at one minibatch: the caller gets the same
   exception type with the same args, a note naming the step, the worker and
   the minibatch, and a ``RemoteTraceback`` (the worker's traceback) as its
   ``__cause__``. The other workers are stopped, and the same pipeline object
   works again afterwards.
2. An exception that cannot be pickled arrives as a ``WorkerError`` that
   carries the original type name, message and traceback.
3. A worker process that dies raises ``BrokenPipelineError`` naming the step,
   the worker and its exit code.
4. A bad parameter raises ``InvalidParameterError`` (a ``ValueError`` and a
   ``TypeError``) with a scikit-learn-style message, at the call.

Run it with::

    pip install -e ".[examples]"  # once: what every example needs
    python examples/errors.py
"""

from __future__ import annotations

import os
import threading
from typing import Any

import numpy as np

from neuraxle_stream import (
    BaseTransformer,
    BrokenPipelineError,
    InvalidParameterError,
    NonFittableMixin,
    RemoteTraceback,
    SequentialQueuedPipeline,
    WorkerError,
)


class Reciprocal(NonFittableMixin, BaseTransformer):
    """1 / x, refusing zeros with a ValueError of its own."""

    def transform(self, data_inputs: Any) -> np.ndarray:
        X = np.asarray(data_inputs, dtype=float)
        if (X == 0).any():
            raise ValueError(f"cannot invert zero (minibatch starting at {X[0]:g})")
        return 1.0 / X


class Unpicklable(Exception):
    """An exception holding something no pickler can send (a lock)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.handle = threading.Lock()  # neither pickle nor cloudpickle can send a lock


def raise_unpicklable(x: Any) -> Any:
    if x == 3:
        raise Unpicklable(f"bad item {x}")
    return x


def die(x: Any) -> Any:
    if x == 5:
        os._exit(3)  # the worker process ends at once, without a word
    return x


def heading(text: str) -> None:
    print(f"\n== {text} " + "=" * max(0, 66 - len(text)))


def main() -> None:
    X = np.array([5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0])  # minibatch 2 holds the zero

    heading("1. a step raises ValueError at one minibatch")
    pipeline = SequentialQueuedPipeline(
        [("scale", 2, lambda x: 10 * x), ("reciprocal", 2, Reciprocal())],
        batch_size=2,
        backend="process",
    )
    try:
        pipeline.transform(X)
    except ValueError as exc:
        print(f"type:   {type(exc).__name__}")
        print(f"args:   {exc.args}")
        print(f"notes:  {getattr(exc, '__notes__', [])}")
        cause = exc.__cause__
        print(
            f"cause:  {type(cause).__name__} (is RemoteTraceback: {isinstance(cause, RemoteTraceback)})"
        )
        print("the worker's traceback, last lines:")
        for line in str(cause).strip().strip('"').strip().splitlines()[-3:]:
            print(f"   | {line}")
    print("the same pipeline, reused on good data:", pipeline.transform(X[:4]))

    heading("2. an exception that cannot be pickled")
    try:
        SequentialQueuedPipeline([raise_unpicklable], batch_size=2, backend="process").transform(
            [1, 2, 3, 4]
        )
    except WorkerError as exc:
        print(f"type:      {type(exc).__name__}")
        print(f"type_name: {exc.type_name}")
        print(f"message:   {exc.message}")
        print(f"notes:     {getattr(exc, '__notes__', [])}")

    heading("3. a worker process dies")
    try:
        SequentialQueuedPipeline([("die", 2, die)], batch_size=2, backend="process").transform(
            list(range(8))
        )
    except BrokenPipelineError as exc:
        print(f"type:    {type(exc).__name__} (a RuntimeError: {isinstance(exc, RuntimeError)})")
        print(f"message: {exc}")

    heading("4. a bad parameter")
    try:
        SequentialQueuedPipeline([Reciprocal()], batch_size=0).transform(X)
    except InvalidParameterError as exc:
        print(
            f"type:    {type(exc).__name__} (ValueError: {isinstance(exc, ValueError)}, "
            f"TypeError: {isinstance(exc, TypeError)})"
        )
        print(f"message: {exc}")


if __name__ == "__main__":
    main()
