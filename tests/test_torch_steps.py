"""TorchModuleStep and DecodeImages, on the CPU (GPU tests are marked ``gpu``)."""

from __future__ import annotations

import importlib.util
import io
import time
from types import ModuleType

import numpy as np
import pytest
from saver_doubles import small_convnet

from neuraxle_stream import (
    DecodeImages,
    InvalidParameterError,
    SequentialQueuedPipeline,
    TorchModuleStep,
)

if importlib.util.find_spec("torch") is None:
    pytest.skip("needs torch", allow_module_level=True)


# torch is imported by the tests, not at collection: worker processes started by
# the rest of the suite should not pay for it.
@pytest.fixture
def torch() -> ModuleType:
    import torch

    return torch


@pytest.fixture
def cuda(torch: ModuleType) -> ModuleType:
    """torch, on a machine with a CUDA device (else the test is skipped)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device (torch.cuda.is_available() is False)")
    return torch


def _images(n: int, fmt: str, size: tuple[int, int] = (12, 10), seed: int = 0) -> list[bytes]:
    """``n`` random RGB images of ``size`` (width, height), encoded with Pillow."""
    image_mod = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        buffer = io.BytesIO()
        image_mod.fromarray(pixels).save(buffer, format=fmt)
        out.append(buffer.getvalue())
    return out


def _pillow_decode(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        rgb = image.convert("RGB")
        if size is not None:
            rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        return np.asarray(rgb).transpose(2, 0, 1)


# --- TorchModuleStep -------------------------------------------------------------------------


def test_module_step_runs_the_module_in_inference_mode(torch: ModuleType) -> None:
    model = small_convnet()
    X = np.random.default_rng(0).random((6, 3, 8, 8))  # float64: cast to the model's float32
    out = TorchModuleStep(model).transform(X)
    with torch.no_grad():
        expected = model(torch.as_tensor(X, dtype=torch.float32)).numpy()
    assert isinstance(out, np.ndarray) and out.shape == (6, 8)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    tensors = TorchModuleStep(model, output="tensor").transform(list(torch.as_tensor(X, dtype=torch.float32)))
    assert isinstance(tensors, torch.Tensor) and tensors.device.type == "cpu"
    np.testing.assert_allclose(tensors.numpy(), expected, rtol=1e-6)


def test_module_step_checks_output_and_batch_to_tensor(torch: ModuleType) -> None:
    with pytest.raises(InvalidParameterError, match="'output' parameter of TorchModuleStep"):
        TorchModuleStep(torch.nn.Identity(), output="list").transform(np.ones((2, 2)))
    step = TorchModuleStep(torch.nn.Identity(), batch_to_tensor=lambda b: torch.tensor([len(x) for x in b]))
    assert step.transform(["ab", "c"]).tolist() == [2, 1]


# --- DecodeImages -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_decode_images_matches_pillow(torch: ModuleType, fmt: str) -> None:
    data = _images(5, fmt)
    batch = DecodeImages().transform(data)
    assert batch.dtype == torch.uint8 and tuple(batch.shape) == (5, 3, 10, 12)
    np.testing.assert_array_equal(batch.numpy(), np.stack([_pillow_decode(d) for d in data]))


def test_decode_images_resizes_like_pillow() -> None:
    data = _images(3, "PNG", size=(20, 14)) + _images(2, "JPEG", size=(9, 7))
    batch = DecodeImages(size=(6, 8)).transform(data)
    assert tuple(batch.shape) == (5, 3, 6, 8)
    np.testing.assert_array_equal(batch.numpy(), np.stack([_pillow_decode(d, (6, 8)) for d in data]))


def test_decode_images_of_different_sizes_need_size() -> None:
    data = _images(1, "PNG", size=(4, 4)) + _images(1, "PNG", size=(5, 5))
    with pytest.raises(ValueError, match="set 'size'"):
        DecodeImages().transform(data)


@pytest.mark.timeout(60)
def test_decode_and_embed_in_process_workers_match_sequential() -> None:
    """A torch model in 2 process workers, each given ``device="cpu"``, gives the sequential outputs."""
    data = _images(24, "PNG", size=(8, 8))
    model = small_convnet(seed=2)
    embed = TorchModuleStep(model, batch_to_tensor=_to_float)
    expected = embed.transform(DecodeImages().transform(data))
    steps = [
        ("decode", DecodeImages()),
        ("embed", 2, [[("device", "cpu")], [("device", "cpu")]], 4, embed),
    ]
    out = SequentialQueuedPipeline(steps, batch_size=4, backend="process").fit_transform(data)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)


def _to_float(batch: object) -> object:
    return batch.float() / 255  # type: ignore[attr-defined]


# --- on a GPU -----------------------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.timeout(120)
def test_model_on_cuda_in_two_workers(cuda: ModuleType) -> None:  # pragma: no cover - needs CUDA
    model = small_convnet(seed=3)
    X = np.random.default_rng(3).random((64, 3, 8, 8)).astype(np.float32)
    expected = TorchModuleStep(model).transform(X)
    pipe = SequentialQueuedPipeline(
        [("embed", 2, [[("device", "cuda:0")], [("device", "cuda:0")]], 4, TorchModuleStep(model))],
        batch_size=8,
    )
    np.testing.assert_allclose(pipe.fit_transform(X), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_decode_images_on_cuda_matches_cpu(cuda: ModuleType, fmt: str) -> None:  # pragma: no cover - needs CUDA
    data = _images(4, fmt, size=(32, 24))
    gpu = DecodeImages(device="cuda:0").transform(data)
    assert gpu.device.type == "cuda"
    cpu = DecodeImages().transform(data)
    # nvJPEG and libjpeg may differ by a level or two on some pixels
    assert (gpu.cpu().int() - cpu.int()).abs().max() <= (0 if fmt == "PNG" else 8)


@pytest.mark.gpu
@pytest.mark.timeout(300)
def test_decode_embed_throughput_gpu_vs_cpu(cuda: ModuleType) -> None:  # pragma: no cover - needs CUDA
    data = _images(256, "JPEG", size=(64, 64))
    model = small_convnet(seed=4)
    # The reference: Pillow decoding and the model called on the CPU, no library involved.
    pixels = cuda.as_tensor(np.stack([_pillow_decode(d) for d in data]))
    with cuda.no_grad():
        expected = model(pixels.float() / 255).numpy()
    outputs, rates = {}, {}
    for device in ("cpu", "cuda:0"):
        steps = [
            ("decode", 2, DecodeImages(device=device)),
            ("embed", 1, TorchModuleStep(model, device=device, batch_to_tensor=_to_float)),
        ]
        pipeline = SequentialQueuedPipeline(steps, batch_size=32)
        with pipeline:
            outputs[device] = pipeline.fit_transform(data)  # starts the workers, puts the model on the device
            start = time.perf_counter()  # timed on warm workers: CUDA start-up is not throughput
            again = pipeline.transform(data)
            rates[device] = len(data) / (time.perf_counter() - start)
        np.testing.assert_allclose(again, outputs[device], rtol=1e-5, atol=1e-6)
    print(f"decode+embed images/s: {rates}")
    np.testing.assert_allclose(outputs["cpu"], expected, rtol=1e-4, atol=1e-5)
    # nvJPEG and libjpeg differ by a few levels on some pixels; the pooled embeddings barely move
    np.testing.assert_allclose(outputs["cuda:0"], expected, rtol=0, atol=2e-2)
    # Moving both steps to the GPU must not cost throughput (a model copied to the device
    # per minibatch, or CUDA set up again per call, would): at least half the CPU's rate.
    assert rates["cuda:0"] >= 0.5 * rates["cpu"], rates
