"""Long runs: a stream that survives killed workers and skips a corrupt input.

A feature-extraction stream over "files" (bytes made up here) runs in worker
processes. Two things go wrong on the way, as they do in runs of hours:

- a worker process is killed while it decodes a file (here it sends itself
  SIGKILL once, as the kernel's out-of-memory killer would);
- one file is corrupt: decoding it raises every time.

With ``max_retries=2`` the killed worker is replaced (a new process loads the
step and runs ``setup()``) and the minibatch it held runs again; with
``on_error="skip"`` the corrupt file's minibatch is dropped with a warning,
and ``max_failures=0.05`` would end the run if more than 5% of the
minibatches were lost. ``stats_.failures`` says which items were lost and
why; ``stats_[step].num_restarts`` how many workers were replaced. Every
other output equals the sequential computation, in order.

Run it from the root of the repository: ``python examples/long_runs.py``.
"""

from __future__ import annotations

import os
import signal
import struct
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np

from neuraxle_stream import BaseTransformer, NonFittableMixin, SequentialQueuedPipeline

N_FILES = 2_000
CORRUPT = 1_234  # this file's checksum is wrong
KILLED_AT = 777  # the worker decoding this file is killed, once


def make_file(i: int) -> bytes:
    """A small "file": 64 float32 values and a checksum (wrong for file CORRUPT)."""
    values = (np.arange(64, dtype=np.float32) + i) / 64
    body = values.tobytes()
    checksum = zlib.crc32(body) ^ (1 if i == CORRUPT else 0)
    return struct.pack("<I", checksum) + body


class Decode(NonFittableMixin, BaseTransformer):
    """Check each file's checksum and decode it to an array; the worker is killed once at ``KILLED_AT``."""

    def __init__(self, killed_flag: str = "") -> None:
        self.killed_flag = killed_flag

    def transform(self, data_inputs: list[bytes]) -> list[np.ndarray]:
        out = []
        for blob in data_inputs:
            (checksum,) = struct.unpack("<I", blob[:4])
            body = blob[4:]
            values = np.frombuffer(body, dtype=np.float32)
            if self.killed_flag and round(float(values[0]) * 64) == KILLED_AT and not os.path.exists(self.killed_flag):
                Path(self.killed_flag).touch()
                os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
            if zlib.crc32(body) != checksum:
                raise ValueError("checksum mismatch: the file is corrupt")
            out.append(values)
        return out


def features(values: np.ndarray) -> np.ndarray:
    """Per file: mean, standard deviation and the norm of its FFT."""
    spectrum = np.abs(np.fft.rfft(values))
    return np.array([values.mean(), values.std(), np.linalg.norm(spectrum)], dtype=np.float32)


def main() -> None:
    files = [make_file(i) for i in range(N_FILES)]
    with tempfile.TemporaryDirectory() as tmp:
        pipeline = SequentialQueuedPipeline(
            [("decode", 2, Decode(killed_flag=os.path.join(tmp, "killed"))), ("features", 2, features)],
            batch_size=16,
            max_retries=2,
            on_error="skip",
            max_failures=0.05,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            outputs = list(pipeline.stream(files))
        killed = os.path.exists(os.path.join(tmp, "killed"))

    stats = pipeline.stats_
    (lost,) = stats.failures
    print(f"{len(outputs)} of {N_FILES} files went through; a worker was killed: {killed}")
    print(f"workers replaced: {stats['decode'].num_restarts} (decode), {stats['features'].num_restarts} (features)")
    print(f"lost: minibatch {lost.minibatch}, items {lost.first_item}..{lost.first_item + lost.n_items - 1}, "
          f"step {lost.step!r}, {lost.error_type}: {lost.message}")
    print(f"warning: {caught[0].message}")
    print()
    print(stats)

    # Every other file gives exactly what the sequential computation gives, in order.
    kept = [i for i in range(N_FILES) if not lost.first_item <= i < lost.first_item + lost.n_items]
    reference = [features(Decode().transform([make_file(i)])[0]) for i in kept]
    assert killed and stats["decode"].num_restarts >= 1
    assert lost.first_item <= CORRUPT < lost.first_item + lost.n_items and lost.error_type == "ValueError"
    assert len(outputs) == len(reference)
    assert all(np.array_equal(a, b) for a, b in zip(outputs, reference))
    print("\nEqual to the sequential computation, in order, except the skipped minibatch.")


if __name__ == "__main__":
    main()
