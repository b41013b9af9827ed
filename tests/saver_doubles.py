"""Test doubles for the savers and torch tests (module level, so workers import them).

Importing this module does not import torch: the torch doubles build their
modules inside functions.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import cloudpickle

from neuraxle_stream import BaseSaver, BaseTransformer, NonFittableMixin

__all__ = [
    "DeviceStep",
    "FailingSaver",
    "HoldsRecorded",
    "MetaHolder",
    "RecordingSaver",
    "StepWithFailingSaver",
    "StepWithOwnSaver",
    "TorchThreads",
    "WhoLoadedMe",
    "small_convnet",
]


class RecordingSaver(BaseSaver):
    """Pickles with cloudpickle and stamps what it loads with ``loaded_by`` (its pid)."""

    def can_save(self, step: Any) -> bool:
        return True

    def save(self, step: Any) -> bytes:
        return cloudpickle.dumps(step)

    def load(self, data: bytes) -> Any:
        step = pickle.loads(data)
        step.loaded_by = f"RecordingSaver@{os.getpid()}"
        return step


class FailingSaver(BaseSaver):
    """A saver that cannot save anything."""

    def can_save(self, step: Any) -> bool:
        return True

    def save(self, step: Any) -> bytes:
        raise RuntimeError("this saver always fails")

    def load(self, data: bytes) -> Any:  # pragma: no cover - never saved
        raise AssertionError


class WhoLoadedMe(NonFittableMixin, BaseTransformer):
    """Returns, for each row, the ``loaded_by`` stamp of its copy (``None`` if never loaded by a saver)."""

    def transform(self, data_inputs: Any) -> list[Any]:
        return [getattr(self, "loaded_by", None)] * len(data_inputs)


class StepWithOwnSaver(WhoLoadedMe):
    """Lists its own saver in the ``savers`` class attribute."""

    savers = [RecordingSaver()]


class StepWithFailingSaver(WhoLoadedMe):
    savers = [FailingSaver()]


class _Stamped:
    """A sub-object saved with its own saver."""

    savers = [RecordingSaver()]


class HoldsRecorded(NonFittableMixin, BaseTransformer):
    """A step holding, in a dict, an object with its own saver; returns that object's stamp."""

    def __init__(self) -> None:
        self.parts = {"inner": _Stamped()}

    def transform(self, data_inputs: Any) -> list[Any]:
        return [getattr(self.parts["inner"], "loaded_by", None)] * len(data_inputs)


class DeviceStep(NonFittableMixin, BaseTransformer):
    """An identity step with a ``device`` parameter (never used: only the start method reads it)."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device

    def transform(self, data_inputs: Any) -> Any:
        return data_inputs


class TorchThreads(NonFittableMixin, BaseTransformer):
    """Returns, for each row, ``torch.get_num_threads()`` in its worker."""

    def transform(self, data_inputs: Any) -> list[int]:
        import torch

        return [torch.get_num_threads()] * len(data_inputs)


class MetaHolder(NonFittableMixin, BaseTransformer):
    """Holds a meta tensor and a module with buffers, in nested containers."""

    def __init__(self) -> None:
        import torch

        self.skeleton = torch.empty(3, 5, dtype=torch.float16, device="meta")
        norm = torch.nn.BatchNorm1d(4)
        norm.train()
        norm(torch.randn(32, 4) * 3 + 1)  # running stats and num_batches_tracked differ from their init
        self.layers = {"norm": [norm]}

    def transform(self, data_inputs: Any) -> Any:
        return data_inputs


def small_convnet(seed: int = 0) -> Any:
    """A small conv + BatchNorm + pooling embedding network (8 features out)."""
    import torch

    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    )
    model.train()
    model(torch.randn(16, 3, 8, 8))  # moves the BatchNorm running stats
    return model.eval()

