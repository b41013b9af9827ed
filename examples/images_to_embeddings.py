"""Decode a folder of images and embed them with a small torch model, in worker processes.

64 small images are generated with Pillow into a temporary folder (PNG and
JPEG). Their bytes go through a two-stage
:class:`~neuraxle_stream.SequentialQueuedPipeline`:

- ``decode``: :class:`~neuraxle_stream.DecodeImages` turns the encoded bytes
  into a ``uint8`` batch ``(N, 3, 32, 32)``;
- ``embed``: :class:`~neuraxle_stream.TorchModuleStep` runs a conv + pooling
  network in inference mode, in 2 workers, each given its own ``device`` by
  ``worker_arguments``.

The model reaches each worker through :class:`~neuraxle_stream.TorchSaver`:
its weights travel as CPU tensors and are loaded onto that worker's device.
With a GPU, set ``DEVICE = "cuda"`` (and the workers are started with
``spawn``). The outputs are checked against a sequential run; the shapes, the
throughput and ``pipeline.stats_`` are printed. Needs torch and Pillow; without
them the script says which extra to install and exits. Run it with::

    pip install -e ".[examples]"  # once: what every example needs
    python examples/images_to_embeddings.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from neuraxle_stream import DecodeImages, SequentialQueuedPipeline, TorchModuleStep

N_IMAGES = 64
IMAGE_SIZE = 32
#: "cpu" here; "cuda" spreads the embed workers over the visible GPUs.
DEVICE = "cpu"


def write_images(folder: Path, n: int) -> list[Path]:
    """Write ``n`` random images of various sizes, half PNG, half JPEG, into ``folder``."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        height, width = rng.integers(24, 48, size=2)
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        path = folder / (f"image_{i:03d}." + ("png" if i % 2 else "jpg"))
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def make_model() -> Any:
    """A small embedding network: two convolutions, global average pooling, 32 features."""
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    ).eval()


def to_float(batch: Any) -> Any:
    """uint8 images to floats in [0, 1], as the model expects."""
    return batch.float() / 255


def worker_devices(n_workers: int) -> list[list[tuple[str, Any]]]:
    """One ``[("device", ...)]`` per worker: round robin over the GPUs, or the CPU."""
    import torch

    if DEVICE == "cuda" and torch.cuda.is_available():
        return [[("device", f"cuda:{i % torch.cuda.device_count()}")] for i in range(n_workers)]
    return [[("device", "cpu")] for _ in range(n_workers)]


def main() -> int:
    try:
        import PIL  # noqa: F401
        import torch  # noqa: F401
    except ModuleNotFoundError as error:  # one line, no traceback
        sys.exit(f'This example needs {error.name}: pip install -e ".[examples]"')

    with tempfile.TemporaryDirectory() as folder:
        paths = write_images(Path(folder), N_IMAGES)
        encoded = [path.read_bytes() for path in paths]
    print(f"{len(encoded)} encoded images, {sum(map(len, encoded)) / 1024:.0f} KiB in all")

    embed = TorchModuleStep(make_model(), batch_to_tensor=to_float)
    decode = DecodeImages(size=IMAGE_SIZE)
    pipeline = SequentialQueuedPipeline(
        [
            ("decode", 1, decode),
            ("embed", 2, worker_devices(2), 4, embed),
        ],
        batch_size=8,
    )
    with pipeline:  # workers stay up across the two calls: the second shows the steady state
        start = time.perf_counter()
        embeddings = pipeline.transform(encoded)
        first = time.perf_counter() - start
        start = time.perf_counter()
        embeddings = pipeline.transform(encoded)
        second = time.perf_counter() - start

    expected = embed.transform(decode.transform(encoded))
    np.testing.assert_allclose(embeddings, expected, rtol=1e-5, atol=1e-6)
    batch = decode.transform(encoded[:8])
    print(f"decoded batch: {tuple(batch.shape)} {batch.dtype}; embeddings: {embeddings.shape} {embeddings.dtype}")
    print(f"first call (starts the workers): {first:.2f} s; second call: {second:.3f} s, "
          f"{len(encoded) / second:.0f} images/s")
    print("same embeddings as a sequential run: yes")
    print(pipeline.stats_)
    return 0


if __name__ == "__main__":
    sys.exit(main())
