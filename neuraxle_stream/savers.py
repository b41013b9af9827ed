"""Savers: how a step becomes bytes for a worker, and a step again there.

A saver has three methods: ``can_save(step)``, ``save(step) -> bytes`` and
``load(data) -> step``. Payloads travel in memory; no file is written.

The registry (:func:`saver_for`) picks the saver of a step, in order:

1. the first of the step's own ``savers`` class attribute that can save it;
2. :class:`TorchSaver` when the step holds torch modules or tensors, or
   objects whose class lists its own ``savers``, at any depth (attributes,
   dicts, lists, sub-objects); with ``use_savers=True``, for every step;
3. else :class:`CloudpickleSaver`, which also handles steps and functions
   defined in ``__main__`` or a notebook.

:class:`TorchSaver` works per nested attribute: the step is pickled with
cloudpickle, and each torch tensor (module parameters and buffers included)
or object with its own ``savers`` met on the way is cut out and saved apart.

In a worker, :func:`load_step` rebuilds the step *with* its
``worker_arguments``: a saver sees them through
:meth:`BaseSaver.load_for_worker`, so :class:`TorchSaver` loads tensors
straight onto the worker's ``device``.
"""

from __future__ import annotations

import io
import pickle
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

import cloudpickle

from ._step_calls import apply_worker_arguments
from .exceptions import InvalidParameterError

__all__ = ["BaseSaver", "CloudpickleSaver", "TorchSaver", "load_step", "save_step", "saver_for"]

#: How deep, how wide and how far in all :func:`_needs_nested_saver` looks into a step.
_SCAN_DEPTH = 4
_SCAN_ITEMS = 1000
_SCAN_BUDGET = 20_000


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

    def load_for_worker(self, data: bytes, arguments: Iterable[tuple[str, Any]]) -> Any:
        """Rebuild the step in a worker and set its ``worker_arguments``.

        The default loads, then sets the arguments. A saver whose loading
        depends on them (a device) overrides this.
        """
        step = self.load(data)
        apply_worker_arguments(step, list(arguments))
        return step


class CloudpickleSaver(BaseSaver):
    """Pickles the whole step by value with cloudpickle (the default saver)."""

    def can_save(self, step: Any) -> bool:
        return True

    def save(self, step: Any) -> bytes:
        return cloudpickle.dumps(step, protocol=pickle.HIGHEST_PROTOCOL)

    def load(self, data: bytes) -> Any:
        return pickle.loads(data)


class TorchSaver(BaseSaver):
    """Saves a step with its torch tensors as CPU tensors, rebuilt on the worker's device.

    The step is pickled with cloudpickle, except for every ``torch.Tensor``
    it holds at any depth (module parameters and buffers, tensors in dicts,
    lists or sub-objects): those are detached, copied to the CPU and written
    together with ``torch.save``, so a CUDA tensor is never pickled. Shared
    tensors (tied weights) stay shared. Tensors on the ``meta`` device travel
    as shape and dtype only and stay on ``meta``. Nested objects whose class
    lists its own ``savers`` are saved with the first of those that can.

    Loading reads the tensors with ``torch.load(weights_only=True,
    map_location=device)``, where ``device`` is the worker's ``device``
    argument (from ``worker_arguments``), else the step's own ``device``
    attribute, else ``"cpu"``.
    """

    def can_save(self, step: Any) -> bool:
        return True

    def save(self, step: Any) -> bytes:
        buffer = io.BytesIO()
        pickler = _CuttingPickler(buffer, root=step)
        pickler.dump(step)
        tensors = b""
        if pickler.tensors:
            torch = sys.modules["torch"]
            blob = io.BytesIO()
            torch.save(pickler.tensors, blob)
            tensors = blob.getvalue()
        device = getattr(step, "device", None)
        header = str(device) if device is not None else None
        return pickle.dumps((header, buffer.getvalue(), tensors), protocol=pickle.HIGHEST_PROTOCOL)

    def load(self, data: bytes) -> Any:
        return self._load(data, None)

    def load_for_worker(self, data: bytes, arguments: Iterable[tuple[str, Any]]) -> Any:
        arguments = list(arguments)
        step = self._load(data, dict(arguments).get("device"))
        apply_worker_arguments(step, arguments)
        return step

    def _load(self, data: bytes, device: Any) -> Any:
        saved_device, structure, blob = pickle.loads(data)
        device = device if device is not None else (saved_device or "cpu")
        tensors: list[Any] = []
        if blob:
            import torch

            tensors = torch.load(io.BytesIO(blob), weights_only=True, map_location=device)
        return _RebuildingUnpickler(io.BytesIO(structure), tensors).load()


class _CuttingPickler(cloudpickle.Pickler):
    """cloudpickle, with tensors and objects that have their own savers cut out.

    Each cut object becomes a persistent id: ``("tensor", index, is_parameter,
    requires_grad)`` into :attr:`tensors`, ``("meta", shape, dtype,
    is_parameter, requires_grad)``, or ``("saved", saver, bytes)``.
    """

    def __init__(self, file: Any, root: Any) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.root = root
        self.tensors: list[Any] = []
        self._index: dict[int, int] = {}
        self._torch = sys.modules.get("torch")

    def persistent_id(self, obj: Any) -> Any:
        torch = self._torch
        if torch is not None and isinstance(obj, torch.Tensor):
            is_param = isinstance(obj, torch.nn.Parameter)
            if obj.device.type == "meta":
                return ("meta", tuple(obj.shape), obj.dtype, is_param, obj.requires_grad)
            index = self._index.get(id(obj))
            if index is None:
                index = self._index[id(obj)] = len(self.tensors)
                self.tensors.append(obj.detach().cpu())
            return ("tensor", index, is_param, obj.requires_grad)
        if obj is not self.root and _own_savers(obj):
            saver = _first_saver(obj)
            if saver is not None:
                return ("saved", saver, saver.save(obj))
        return None


class _RebuildingUnpickler(pickle.Unpickler):
    """Puts back what :class:`_CuttingPickler` cut out."""

    def __init__(self, file: Any, tensors: list[Any]) -> None:
        super().__init__(file)
        self.tensors = tensors
        self._built: dict[tuple[int, bool, bool], Any] = {}

    def persistent_load(self, pid: Any) -> Any:
        kind = pid[0]
        if kind == "saved":
            return pid[1].load(pid[2])
        import torch

        if kind == "meta":
            _, shape, dtype, is_param, requires_grad = pid
            tensor = torch.empty(shape, dtype=dtype, device="meta")
            return _as_parameter(torch, tensor, is_param, requires_grad)
        _, index, is_param, requires_grad = pid
        key = (index, is_param, requires_grad)
        if key not in self._built:  # one object per saved tensor: tied weights stay tied
            self._built[key] = _as_parameter(torch, self.tensors[index], is_param, requires_grad)
        return self._built[key]


def _as_parameter(torch: Any, tensor: Any, is_param: bool, requires_grad: bool) -> Any:
    if is_param:
        return torch.nn.Parameter(tensor, requires_grad=requires_grad)
    return tensor.requires_grad_(requires_grad) if requires_grad and tensor.is_floating_point() else tensor


def _own_savers(obj: Any) -> list[BaseSaver]:
    savers = getattr(type(obj), "savers", None)
    return list(savers) if isinstance(savers, list | tuple) else []


def _first_saver(step: Any) -> BaseSaver | None:
    for saver in _own_savers(step):
        if saver.can_save(step):
            return saver
    return None


def _needs_nested_saver(step: Any) -> bool:
    """Whether ``step`` holds torch tensors or modules, or objects with their own ``savers``.

    A bounded look (``_SCAN_DEPTH`` levels, ``_SCAN_ITEMS`` items per
    container, ``_SCAN_BUDGET`` objects in all) into attributes, dicts, lists, tuples and sets;
    ``use_savers=True`` makes every step go through :class:`TorchSaver`,
    which finds them at any depth.
    """
    torch = sys.modules.get("torch")
    seen: set[int] = set()

    def visit(obj: Any, depth: int, root: bool) -> bool:
        if id(obj) in seen or depth > _SCAN_DEPTH or len(seen) >= _SCAN_BUDGET:
            return False
        seen.add(id(obj))
        if torch is not None and isinstance(obj, torch.Tensor | torch.nn.Module):
            return True
        if not root and _own_savers(obj):
            return True
        if isinstance(obj, dict):
            children: Iterable[Any] = list(obj.values())[:_SCAN_ITEMS]
        elif isinstance(obj, list | tuple | set | frozenset):
            children = list(obj)[:_SCAN_ITEMS]
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            children = list(vars(obj).values())[:_SCAN_ITEMS]
        else:
            return False
        return any(visit(child, depth + 1, False) for child in children)

    return visit(step, 0, True)


def saver_for(step: Any, use_savers: bool = False) -> BaseSaver:
    """The saver of ``step``: its own ``savers``, else :class:`TorchSaver` where needed, else cloudpickle.

    Parameters
    ----------
    step : object
        The step to send to workers.
    use_savers : bool, default=False
        Neuraxle's meaning: savers run for every step, not only for those
        that need them, so nested torch objects and objects with their own
        ``savers`` are found at any depth.
    """
    own = _first_saver(step)
    if own is not None:
        return own
    if use_savers or _needs_nested_saver(step):
        return TorchSaver()
    return CloudpickleSaver()


def save_step(step: Any, name: str, use_savers: bool = False) -> bytes:
    """Save ``step`` for its workers.

    Raises
    ------
    InvalidParameterError
        When the step cannot be saved; the message names the step.
    """
    saver = saver_for(step, use_savers)
    try:
        blob = saver.save(step)
        return cloudpickle.dumps((saver, blob), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise InvalidParameterError(
            f"Step {name!r} ({type(step).__name__}) cannot be sent to its workers: "
            f"{type(saver).__name__} failed with {type(exc).__name__}: {exc}"
        ) from exc


def load_step(payload: bytes, arguments: Iterable[tuple[str, Any]] = ()) -> Any:
    """Rebuild a step saved by :func:`save_step`, with a worker's ``(param, value)`` arguments set."""
    saver, blob = pickle.loads(payload)
    return saver.load_for_worker(blob, arguments)
