"""Savers: how a step becomes bytes for a worker, and a step again there.

A saver has three methods: ``can_save(step)``, ``save(step) -> bytes`` and
``load(data) -> step``. Payloads travel in memory; no file is written.

The saver of a step is, in order: the first of the step's own ``savers``
class attribute that can save it; :class:`TorchSaver` when the step holds
torch modules or tensors; else :class:`CloudpickleSaver`, which also handles
steps and functions defined in ``__main__`` or a notebook.
"""

from __future__ import annotations

import io
import pickle
import sys
from abc import ABC, abstractmethod
from typing import Any

import cloudpickle

from .exceptions import InvalidParameterError

__all__ = ["BaseSaver", "CloudpickleSaver", "TorchSaver", "load_step", "save_step"]


class BaseSaver(ABC):
    """Turns a step into bytes and back."""

    @abstractmethod
    def can_save(self, step: Any) -> bool:
        """Whether this saver handles ``step``."""

    @abstractmethod
    def save(self, step: Any) -> bytes:
        """The bytes that :meth:`load` turns back into an equivalent step."""

    @abstractmethod
    def load(self, data: bytes) -> Any:
        """Rebuild the step saved by :meth:`save`."""


class CloudpickleSaver(BaseSaver):
    """Pickles the whole step by value with cloudpickle (the default saver)."""

    def can_save(self, step: Any) -> bool:
        return True

    def save(self, step: Any) -> bytes:
        return cloudpickle.dumps(step, protocol=pickle.HIGHEST_PROTOCOL)

    def load(self, data: bytes) -> Any:
        return pickle.loads(data)


def _torch_loaded() -> Any:
    return sys.modules.get("torch")


def _holds_torch(step: Any) -> bool:
    torch = _torch_loaded()
    if torch is None:
        return False
    values = vars(step).values() if hasattr(step, "__dict__") else ()
    return any(isinstance(v, torch.nn.Module | torch.Tensor) for v in values)


class TorchSaver(BaseSaver):
    """Saves the torch modules and tensors of a step as CPU state.

    Every attribute of the step that is a ``torch.nn.Module`` or a
    ``torch.Tensor`` is moved to the CPU and written with ``torch.save``; the
    rest of the step is pickled with cloudpickle. Loading rebuilds the modules
    and tensors with ``torch.load(weights_only=True)`` onto the step's
    ``device`` (set per worker by ``worker_arguments``). A CUDA tensor is never
    pickled.
    """

    def can_save(self, step: Any) -> bool:
        return _holds_torch(step)

    def save(self, step: Any) -> bytes:
        torch = _torch_loaded()
        assert torch is not None
        state = dict(vars(step))
        modules: dict[str, Any] = {}
        tensors: dict[str, Any] = {}
        for key, value in list(state.items()):
            if isinstance(value, torch.nn.Module):
                # The architecture travels without its weights; the weights as a CPU state_dict.
                skeleton = _module_skeleton(torch, value)
                buffer = io.BytesIO()
                torch.save({k: v.detach().cpu() for k, v in value.state_dict().items()}, buffer)
                modules[key] = (skeleton, buffer.getvalue())
                state[key] = None
            elif isinstance(value, torch.Tensor):
                buffer = io.BytesIO()
                torch.save(value.detach().cpu(), buffer)
                tensors[key] = (str(value.device), buffer.getvalue())
                state[key] = None
        shell = object.__new__(type(step))
        shell.__dict__.update(state)
        return cloudpickle.dumps((shell, modules, tensors), protocol=pickle.HIGHEST_PROTOCOL)

    def load(self, data: bytes) -> Any:
        import torch

        shell, modules, tensors = pickle.loads(data)
        device = getattr(shell, "device", None) or "cpu"
        for key, (skeleton, blob) in modules.items():
            state = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
            skeleton.load_state_dict(state, assign=True)
            shell.__dict__[key] = skeleton.to(device)
        for key, (_orig_device, blob) in tensors.items():
            tensor = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
            shell.__dict__[key] = tensor.to(device)
        return shell


def _module_skeleton(torch: Any, module: Any) -> Any:
    """A copy of ``module`` whose parameters and buffers are empty meta tensors.

    Pickled with a reducer that replaces every tensor by its shape and dtype, so
    no weight (and never a CUDA tensor) is copied; the weights follow as a CPU
    ``state_dict`` and are assigned on load.
    """

    class _SkeletonPickler(cloudpickle.Pickler):
        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, torch.nn.Parameter):
                return _meta_parameter, (tuple(obj.shape), obj.dtype, obj.requires_grad)
            if isinstance(obj, torch.Tensor):
                return _meta_tensor, (tuple(obj.shape), obj.dtype)
            return super().reducer_override(obj)

    buffer = io.BytesIO()
    _SkeletonPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(module)
    return pickle.loads(buffer.getvalue())


def _meta_tensor(shape: tuple[int, ...], dtype: Any) -> Any:
    import torch

    return torch.empty(shape, dtype=dtype, device="meta")


def _meta_parameter(shape: tuple[int, ...], dtype: Any, requires_grad: bool) -> Any:
    import torch

    return torch.nn.Parameter(_meta_tensor(shape, dtype), requires_grad=requires_grad)


def _saver_for(step: Any, use_savers: bool) -> BaseSaver:
    for saver in getattr(type(step), "savers", None) or ():
        if saver.can_save(step):
            return saver
    torch_saver = TorchSaver()
    if torch_saver.can_save(step):
        return torch_saver
    return CloudpickleSaver()


def save_step(step: Any, name: str, use_savers: bool = False) -> bytes:
    """Save ``step`` for its workers.

    Raises
    ------
    InvalidParameterError
        When the step cannot be saved; the message names the step.
    """
    saver = _saver_for(step, use_savers)
    try:
        blob = saver.save(step)
        return cloudpickle.dumps((saver, blob), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise InvalidParameterError(
            f"Step {name!r} ({type(step).__name__}) cannot be sent to its workers: "
            f"{type(saver).__name__} failed with {type(exc).__name__}: {exc}"
        ) from exc


def load_step(payload: bytes) -> Any:
    """Rebuild a step saved by :func:`save_step`."""
    saver, blob = pickle.loads(payload)
    return saver.load(blob)
