"""Transports: how a message crosses from one process to the next.

A transport turns a message into bytes for a pipe and back. Everything that
crosses a process boundary goes through exactly one ``dumps`` and one
``loads``: one pickle per hop. The pickle transport is the baseline; faster
ones (shared memory for large arrays) implement the same two methods.
"""

from __future__ import annotations

import pickle
from abc import ABC, abstractmethod
from typing import Any

import cloudpickle

__all__ = ["PickleTransport", "Transport"]


class Transport(ABC):
    """Encodes messages to bytes and back; one instance per process side."""

    @abstractmethod
    def dumps(self, obj: Any) -> bytes:
        """Encode ``obj`` for the pipe. Raises when it cannot be encoded."""

    @abstractmethod
    def loads(self, data: bytes) -> Any:
        """Decode what :meth:`dumps` produced."""

    def close(self) -> None:  # noqa: B027 - optional hook, most transports hold nothing
        """Release what the transport holds (shared memory, buffers)."""


class PickleTransport(Transport):
    """Pickle protocol 5, falling back to cloudpickle for objects defined in
    ``__main__`` or a notebook (lambdas, local classes)."""

    def dumps(self, obj: Any) -> bytes:
        try:
            return pickle.dumps(obj, protocol=5)
        except (pickle.PicklingError, AttributeError, TypeError):
            return cloudpickle.dumps(obj, protocol=5)

    def loads(self, data: bytes) -> Any:
        return pickle.loads(data)
