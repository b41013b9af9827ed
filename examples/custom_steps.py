"""Writing steps: BaseTransformer subclasses, setup()/teardown(), worker_arguments,
plain functions, and the five forms of an entry of ``steps``.

- A :class:`~neuraxle_stream.BaseTransformer` subclass implements
  ``transform(data_inputs)`` on a whole minibatch (and ``fit`` when it learns).
- Its optional ``setup()`` and ``teardown()`` run once in each worker: after
  the worker's copy of the step arrives (and its ``worker_arguments`` are set),
  and after its last minibatch. Here they open and close a log file per worker.
- ``worker_arguments`` sets parameters on each worker's own copy of a step:
  one entry per worker, each a list of ``(param, value)`` pairs.
- A plain function is a per-item step: it is applied to each item of the
  minibatch, as ``list(map(func, minibatch))`` would.

Run it with::

    pip install -e ".[examples]"  # once: what every example needs
    python examples/custom_steps.py
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from neuraxle_stream import BaseTransformer, Identity, NonFittableMixin, SequentialQueuedPipeline


def double(x: Any) -> Any:
    """A per-item step: a plain function of one item."""
    return 2 * x


def square(x: Any) -> Any:
    return x * x


class AddOffset(NonFittableMixin, BaseTransformer):
    """A stateless minibatch step with one parameter."""

    def __init__(self, offset: float = 0.0) -> None:
        self.offset = offset

    def transform(self, data_inputs: Any) -> np.ndarray:
        return np.asarray(data_inputs) + self.offset


class TaggedLogger(NonFittableMixin, BaseTransformer):
    """Tags each item with the worker's ``tag``; logs setup/teardown to a file.

    ``tag`` is set per worker by ``worker_arguments``; ``log_dir`` is shared.
    """

    def __init__(self, tag: str = "?", log_dir: str | None = None) -> None:
        self.tag = tag
        self.log_dir = log_dir

    def setup(self) -> None:
        # Runs in the worker, once, before its first minibatch: open resources here
        # (a model, a file, a connection), not in __init__.
        self._log = open(Path(self.log_dir) / f"worker-{self.tag}.log", "a")  # noqa: SIM115
        self._log.write(f"setup    tag={self.tag} pid={os.getpid()}\n")
        self._batches = 0

    def transform(self, data_inputs: Any) -> list[tuple[str, Any]]:
        self._batches += 1
        time.sleep(0.05)  # some work, so that both workers get minibatches
        return [(self.tag, x) for x in np.asarray(data_inputs).tolist()]

    def teardown(self) -> None:
        # Runs in the worker, once, after its last minibatch.
        self._log.write(f"teardown tag={self.tag} pid={os.getpid()} minibatches={self._batches}\n")
        self._log.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as log_dir:
        pipeline = SequentialQueuedPipeline(
            [
                # 1. step: unnamed, named after its class ("identity")
                Identity(),
                # 2. (name, step): a plain function, applied to each item
                ("double", double),
                # 3. (name, n_workers, step)
                ("square", 2, square),
                # 4. (name, n_workers, max_queue_size, step): also bounds the queue feeding it
                ("offset", 2, 4, AddOffset(offset=1)),
                # 5. (name, n_workers, worker_arguments, max_queue_size, step):
                #    one list of (param, value) pairs per worker
                (
                    "tag",
                    2,
                    [[("tag", "A")], [("tag", "B")]],
                    4,
                    TaggedLogger(log_dir=log_dir),
                ),
            ],
            batch_size=4,
            backend="process",
        )
        print("Steps:", list(pipeline.named_steps))
        outputs = pipeline.transform(list(range(20)))

        print("\nOutputs (tag of the worker that ran it, (2x)² + 1), in input order:")
        print("  ", outputs[:6], "...")
        assert [value for _, value in outputs] == [(2 * x) ** 2 + 1 for x in range(20)]
        print("   items per worker:", dict(sorted(Counter(tag for tag, _ in outputs).items())))
        print("   the parent's copy keeps its own tag:", repr(pipeline.named_steps["tag"].tag))

        print("\nWhat setup() and teardown() wrote, one log per worker:")
        for log in sorted(Path(log_dir).glob("worker-*.log")):
            for line in log.read_text().splitlines():
                print(f"   {log.name}: {line}")
        print(f"   (the parent's pid is {os.getpid()})")

    # The flat form of Neuraxle's docstring, one (param, value) pair per worker,
    # is accepted too; here on worker threads.
    flat = SequentialQueuedPipeline(
        [("add", 2, [("offset", 10), ("offset", 10)], 2, AddOffset())],
        batch_size=3,
        backend="thread",
    )
    print("\nFlat worker_arguments, on threads:", flat.transform(np.arange(5)))


if __name__ == "__main__":
    main()
