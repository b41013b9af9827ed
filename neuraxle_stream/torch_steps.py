"""Stock torch steps: run a module on each minibatch, decode images to tensors.

torch (and Pillow, torchvision) are imported inside the methods, so that
importing this module, or :mod:`neuraxle_stream`, never imports them: only
using the steps needs them. Both steps are stateless and hold a ``device``
that ``worker_arguments`` may set per worker (``[("device", "cuda:1")]``);
:class:`~neuraxle_stream.TorchSaver` ships their modules to that device.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import numpy as np

from .exceptions import InvalidParameterError
from .steps import BaseTransformer, NonFittableMixin

__all__ = ["DecodeImages", "TorchModuleStep"]

_OUTPUTS = ("numpy", "tensor")


class TorchModuleStep(NonFittableMixin, BaseTransformer):
    """Run a ``torch.nn.Module`` in inference mode on each minibatch.

    Parameters
    ----------
    module : torch.nn.Module
        The model. It is put in ``eval()`` mode and moved to ``device`` on
        its first minibatch.
    device : str, default="cpu"
        Where the module and the minibatch go (``"cuda:0"``); set it per
        worker with ``worker_arguments``.
    batch_to_tensor : callable, default=None
        Turns a minibatch into the module's input tensor. By default: a
        tensor stays as it is, an array or a list of arrays or tensors is
        stacked, and floating data take the dtype of the module's parameters.
    output : {"numpy", "tensor"}, default="numpy"
        Outputs as NumPy arrays, or as CPU tensors (a tensor output crosses
        to the next stage, whose own worker moves it to its device). Tuples,
        lists and dicts of tensors are converted item by item.

    Examples
    --------
    >>> import torch  # doctest: +SKIP
    >>> step = TorchModuleStep(torch.nn.Linear(4, 2))  # doctest: +SKIP
    >>> step.transform(np.ones((3, 4), dtype=np.float32)).shape  # doctest: +SKIP
    (3, 2)
    """

    def __init__(
        self,
        module: Any = None,
        device: str = "cpu",
        batch_to_tensor: Callable[[Any], Any] | None = None,
        output: str = "numpy",
    ) -> None:
        self.module = module
        self.device = device
        self.batch_to_tensor = batch_to_tensor
        self.output = output

    def transform(self, data_inputs: Any) -> Any:
        """The module's outputs for ``data_inputs``, one row per input row."""
        import torch

        if self.output not in _OUTPUTS:
            raise InvalidParameterError(
                f"The 'output' parameter of TorchModuleStep must be a str among {list(_OUTPUTS)}. "
                f"Got {self.output!r} instead."
            )
        if self.module is None:
            raise InvalidParameterError("The 'module' parameter of TorchModuleStep must be a torch.nn.Module. Got None instead.")
        module = self._placed_module(torch)
        if self.batch_to_tensor is not None:
            batch = self.batch_to_tensor(data_inputs)
        else:
            batch = _default_batch(torch, data_inputs, module)
        with torch.inference_mode():
            out = module(batch.to(self.device))
        return _convert(torch, out, self.output)

    def _placed_module(self, torch: Any) -> Any:
        """The module in eval mode on ``device`` (moved once per device)."""
        device = str(torch.device(self.device))
        if getattr(self, "_placed_on", None) != (id(self.module), device):
            self.module.eval()
            self.module.to(device)
            self._placed_on = (id(self.module), device)
        return self.module


def _default_batch(torch: Any, data: Any, module: Any) -> Any:
    if isinstance(data, torch.Tensor):
        batch = data
    elif isinstance(data, list | tuple) and data and isinstance(data[0], torch.Tensor):
        batch = torch.stack(list(data))
    else:
        batch = torch.as_tensor(np.asarray(data))
    param = next(iter(module.parameters()), None)
    if param is not None and batch.is_floating_point() and batch.dtype != param.dtype:
        batch = batch.to(param.dtype)
    return batch


def _convert(torch: Any, out: Any, output: str) -> Any:
    if isinstance(out, torch.Tensor):
        out = out.detach().cpu()
        return out.numpy() if output == "numpy" else out.clone()  # inference tensors cannot be changed later
    if isinstance(out, dict):
        return {k: _convert(torch, v, output) for k, v in out.items()}
    if isinstance(out, list | tuple):
        return type(out)(_convert(torch, v, output) for v in out)
    return out


class DecodeImages(NonFittableMixin, BaseTransformer):
    """Decode encoded images (JPEG, PNG bytes) into a uint8 tensor batch ``(N, 3, H, W)``.

    On a CUDA device with torchvision installed, JPEGs are decoded on the
    GPU (``torchvision.io.decode_jpeg(..., device=...)``); otherwise every
    image is decoded with Pillow on the CPU (as RGB) and the batch is moved
    to ``device``.

    Parameters
    ----------
    device : str, default="cpu"
        Where the output batch lives; set it per worker with ``worker_arguments``.
    size : int or (int, int), default=None
        Resize every image to ``(height, width)`` (an int: a square). Without
        it, the images of a minibatch must all have the same size.

    Examples
    --------
    >>> DecodeImages(size=32).transform(list_of_png_bytes).shape  # doctest: +SKIP
    torch.Size([8, 3, 32, 32])
    """

    def __init__(self, device: str = "cpu", size: int | tuple[int, int] | None = None) -> None:
        self.device = device
        self.size = size

    def transform(self, data_inputs: Any) -> Any:
        """The decoded minibatch, a uint8 tensor on ``device``."""
        import torch

        items = [bytes(item) for item in data_inputs]
        if not items:
            return torch.empty((0, 3, *self._hw()) if self.size is not None else (0, 3, 0, 0), dtype=torch.uint8)
        if str(self.device).startswith("cuda") and torch.cuda.is_available():
            try:
                import torchvision  # noqa: F401
            except ImportError:
                pass
            else:
                return self._decode_gpu(torch, items)
        images = [self._decode_pillow(torch, item) for item in items]
        return self._stack(torch, images).to(self.device)

    def _hw(self) -> tuple[int, int]:
        size = self.size
        assert size is not None
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def _decode_pillow(self, torch: Any, data: bytes) -> Any:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB")
            if self.size is not None:
                height, width = self._hw()
                rgb = rgb.resize((width, height), Image.Resampling.BILINEAR)
            array = np.asarray(rgb)
        return torch.from_numpy(array.copy()).permute(2, 0, 1)

    def _decode_gpu(self, torch: Any, items: list[bytes]) -> Any:  # pragma: no cover - needs CUDA
        from torchvision.io import ImageReadMode, decode_image, decode_jpeg
        from torchvision.transforms.v2.functional import resize

        images = []
        for data in items:
            encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            if data[:2] == b"\xff\xd8":  # JPEG: decoded on the GPU
                image = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
            else:  # PNG and others: torchvision decodes them on the CPU only
                image = decode_image(encoded, mode=ImageReadMode.RGB).to(self.device)
            if self.size is not None:
                image = resize(image, list(self._hw()), antialias=True)
            images.append(image)
        return self._stack(torch, images)

    def _stack(self, torch: Any, images: list[Any]) -> Any:
        shapes = {tuple(image.shape) for image in images}
        if len(shapes) > 1:
            raise ValueError(
                f"DecodeImages got images of different sizes {sorted(shapes)} in one minibatch; "
                "set 'size' to resize them to one size."
            )
        return torch.stack(images)
