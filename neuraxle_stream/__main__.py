"""Command line of neuraxle_stream: ``python -m neuraxle_stream demo``.

The demo runs a small CPU-bound pipeline (a scaled-down version of the
reference workload of DESIGN.md, section 5) three ways and prints a table:

1. sequentially, as a plain ``sklearn.pipeline.Pipeline`` of the same steps;
2. queued on threads: a :class:`~neuraxle_stream.SequentialQueuedPipeline`
   with ``--workers`` worker threads per step;
3. queued on processes: the same pipeline with worker processes.

The workload: stage 1 (``make``) turns each int ``i`` into a float32 array of
16,384 elements (``arange(16384) / 16384 + i % 97``); stage 2 (``mix``)
reshapes it to 128x128 and applies ``tanh(y @ M)`` ``--rounds`` times with a
fixed 128x128 float32 matrix ``M``. BLAS is limited to one thread everywhere
(in the parent with ``threadpoolctl``, and in each worker by the step's
``setup()``), so that the speedups come from the pipeline's workers alone.

Each queued pipeline runs inside ``with pipeline:``: a first call on one
minibatch starts the workers (the "start-up" column), then the timed call
processes every item. The queued outputs are checked equal to the sequential
ones; the exit code is 1 when they differ, 0 otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.pipeline import make_pipeline
from threadpoolctl import threadpool_limits

from ._version import __version__
from .pipeline import SequentialQueuedPipeline
from .steps import BaseTransformer, NonFittableMixin

#: Elements of each item's array: a 128x128 matrix, flattened.
SIDE = 128


class MakeArrays(NonFittableMixin, BaseTransformer):
    """Stage 1: one float32 array of ``SIDE * SIDE`` elements per input int."""

    def transform(self, data_inputs: Any) -> np.ndarray:
        """Return an array of shape ``(len(data_inputs), SIDE * SIDE)``."""
        base = np.arange(SIDE * SIDE, dtype=np.float32) / np.float32(SIDE * SIDE)
        return np.stack([base + np.float32(int(i) % 97) for i in data_inputs])


class TanhMix(NonFittableMixin, BaseTransformer):
    """Stage 2: per item, ``y = tanh(y @ matrix)`` repeated ``rounds`` times.

    Parameters
    ----------
    matrix : ndarray of shape (SIDE, SIDE)
        The fixed float32 mixing matrix.
    rounds : int, default=10
        How many times to apply it.
    """

    def __init__(self, matrix: np.ndarray | None = None, rounds: int = 10) -> None:
        self.matrix = matrix
        self.rounds = rounds

    def setup(self) -> None:
        """Limit BLAS to one thread in this worker (the fair comparison)."""
        self._limits = threadpool_limits(limits=1)

    def teardown(self) -> None:
        """Give BLAS its thread settings back."""
        self._limits.restore_original_limits()

    def transform(self, data_inputs: Any) -> np.ndarray:
        """Return an array of the shape of ``data_inputs``, each row mixed."""
        X = np.asarray(data_inputs, dtype=np.float32)
        out = np.empty_like(X)
        for k, row in enumerate(X):
            y = row.reshape(SIDE, SIDE)
            for _ in range(self.rounds):
                y = np.tanh(y @ self.matrix)
            out[k] = y.ravel()
        return out


@dataclass(frozen=True)
class Timing:
    """One row of the demo's table."""

    mode: str
    workers: str
    seconds: float
    items: int
    start_up: float | None = None

    @property
    def items_per_s(self) -> float:
        """Throughput of the run."""
        return self.items / self.seconds if self.seconds > 0 else float("inf")


def mixing_matrix(seed: int = 0) -> np.ndarray:
    """The fixed float32 matrix of stage 2, scaled so that ``tanh`` does not saturate."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((SIDE, SIDE)) / np.sqrt(SIDE)).astype(np.float32)


def _best_of(
    repeat: int, func: Callable[[Any], np.ndarray], X: Any, check: Callable[[np.ndarray], None]
) -> float:
    """Call ``func(X)`` ``repeat`` times, ``check`` each output; return the best wall time."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        output = func(X)
        best = min(best, time.perf_counter() - start)
        check(output)
    return best


def format_table(rows: Sequence[Timing]) -> str:
    """The aligned table of timings; speedups are relative to the first row."""
    header = ("mode", "workers", "start-up", "wall time", "items/s", "speedup")
    base = rows[0].seconds
    cells = [
        (
            r.mode,
            r.workers,
            "-" if r.start_up is None else f"{r.start_up:.2f} s",
            f"{r.seconds:.2f} s",
            f"{r.items_per_s:,.0f}",
            f"{base / r.seconds:.2f}x" if r.seconds > 0 else "-",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    left = (True, False, False, False, False, False)

    def fmt(line: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if is_left else c.rjust(w) for c, w, is_left in zip(line, widths, left)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(c) for c in cells)])


def run_demo(
    items: int = 1000,
    batch_size: int = 16,
    workers: int = 2,
    rounds: int = 10,
    repeat: int = 3,
    out: Any = None,
) -> int:
    """Run the demo, print its table to ``out`` (stdout) and return the exit code.

    Parameters
    ----------
    items : int, default=1000
        Number of input ints.
    batch_size : int, default=16
        Rows per minibatch, for the sequential loop and the queued pipelines.
    workers : int, default=2
        Workers of each of the two steps.
    rounds : int, default=10
        ``tanh(y @ M)`` rounds per item.
    repeat : int, default=3
        Timed runs per mode; the table shows the best.
    out : file-like, default=None
        Where to print; ``None`` is ``sys.stdout``.

    Returns
    -------
    int
        0 when every queued output equals the sequential one, 1 otherwise.
    """
    out = out if out is not None else sys.stdout
    X = np.arange(items)
    matrix = mixing_matrix()
    print(
        f"neuraxle_stream {__version__} demo: {items} items, batch size {batch_size}, "
        f"{workers} workers per step, {os.cpu_count()} CPUs, BLAS on 1 thread, "
        f"best of {repeat}",
        file=out,
    )
    print(
        f"  make: int -> float32[{SIDE * SIDE}];  mix: tanh(y @ M) x {rounds} on {SIDE}x{SIDE}",
        file=out,
        flush=True,
    )
    rows: list[Timing] = []
    failures: list[str] = []
    with threadpool_limits(limits=1):
        sequential = make_pipeline(MakeArrays(), TanhMix(matrix, rounds))

        def run_sequential(X: np.ndarray) -> np.ndarray:
            parts = [
                sequential.transform(X[i : i + batch_size]) for i in range(0, len(X), batch_size)
            ]
            return np.concatenate(parts)

        reference = run_sequential(X)
        seconds = _best_of(repeat, run_sequential, X, lambda output: None)
        rows.append(Timing("sequential (sklearn Pipeline)", "1", seconds, items))
        for label, backend in (("queued, threads", "thread"), ("queued, processes", "process")):
            pipeline = SequentialQueuedPipeline(
                [("make", workers, MakeArrays()), ("mix", workers, TanhMix(matrix, rounds))],
                batch_size=batch_size,
                backend=backend,
            )

            def check(output: np.ndarray, label: str = label) -> None:
                try:
                    np.testing.assert_allclose(output, reference, rtol=1e-6, atol=0)
                except AssertionError as exc:
                    failures.append(f"{label}: outputs differ from the sequential run:{exc}")

            with pipeline:  # the workers stay up from the first call to the last
                start = time.perf_counter()
                pipeline.transform(X[:batch_size])
                start_up = time.perf_counter() - start
                seconds = _best_of(repeat, pipeline.transform, X, check)
            rows.append(Timing(label, f"{workers} + {workers}", seconds, items, start_up))
    print(file=out)
    print(format_table(rows), file=out)
    print(file=out)
    if failures:
        for failure in failures:
            print(f"FAILED {failure}", file=out)
        return 1
    print(
        "Outputs equal: every queued run matches the sequential run "
        f"(np.testing.assert_allclose, shape {reference.shape}).",
        file=out,
    )
    print(
        "start-up: a first call on one minibatch, which starts the workers. wall time: "
        "a call on all items inside `with pipeline:`, workers already up.",
        file=out,
    )
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m neuraxle_stream`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m neuraxle_stream",
        description="neuraxle_stream: scikit-learn-style pipelines run as parallel streams.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    demo = sub.add_parser(
        "demo",
        help="time a CPU-bound pipeline sequentially, on threads and on processes",
        description=(
            "Run a CPU-bound two-stage pipeline sequentially (sklearn Pipeline), then queued "
            "on threads and on processes; check the outputs are equal and print wall times "
            "and speedups. Exits with 1 when an output differs."
        ),
    )
    demo.add_argument(
        "--items", type=_positive_int, default=1000, help="items to process (default: 1000)"
    )
    demo.add_argument(
        "--batch-size", type=_positive_int, default=16, help="minibatch size (default: 16)"
    )
    demo.add_argument(
        "--workers", type=_positive_int, default=2, help="workers per step (default: 2)"
    )
    demo.add_argument(
        "--rounds", type=_positive_int, default=10, help="tanh(y @ M) rounds per item (default: 10)"
    )
    demo.add_argument(
        "--repeat",
        type=_positive_int,
        default=3,
        help="timed runs per mode, best shown (default: 3)",
    )
    demo.add_argument(
        "--quick",
        action="store_true",
        help="a small check that it works: at most 160 items, one timed run per mode",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; return the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        items = min(args.items, 160) if args.quick else args.items
        repeat = 1 if args.quick else args.repeat
        return run_demo(items, args.batch_size, args.workers, args.rounds, repeat)
    raise AssertionError(f"unknown command {args.command!r}")  # argparse rejects it first


if __name__ == "__main__":
    sys.exit(main())
