"""Exceptions raised by neuraxle_stream.

Each exception says who caused it: a bad parameter given by the caller
(:class:`InvalidParameterError`), a worker that died under the pipeline
(:class:`BrokenPipelineError`), or an exception raised by a step inside a
worker, re-raised in the caller with its own type; when that exception cannot
travel back (it does not pickle), it becomes a :class:`WorkerError`.
"""

from __future__ import annotations

import warnings

__all__ = [
    "BrokenPipelineError",
    "CacheWarning",
    "InvalidParameterError",
    "PipelineStoppedError",
    "RemoteTraceback",
    "WorkerError",
]


class InvalidParameterError(ValueError, TypeError):
    """A parameter or a step form is not valid.

    Subclasses both :class:`ValueError` and :class:`TypeError`, as
    scikit-learn's own ``InvalidParameterError`` does, so that callers catching
    either keep working. The message names the parameter, what is allowed and
    what was given.
    """


class BrokenPipelineError(RuntimeError):
    """A worker died while the pipeline was running.

    Raised when a worker process is killed, segfaults, runs out of memory or
    crashes at start-up. The message names the step, the worker and its exit
    code or signal. Every other worker of the run is stopped before it is raised.
    """


class PipelineStoppedError(RuntimeError):
    """The running call was stopped by ``pipeline.stop()`` (from another thread).

    The workers are healthy: inside ``with pipeline:`` they stay up for the
    next call, and the tasks of the stopped call are dropped.
    """


class WorkerError(RuntimeError):
    """An exception from a worker that could not be sent back as itself.

    Attributes
    ----------
    type_name : str
        Qualified name of the original exception type.
    message : str
        ``str()`` of the original exception.
    remote_traceback : str
        The formatted traceback from the worker.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(type_name, message, remote_traceback)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}"


class RemoteTraceback(Exception):
    """Holds a worker's formatted traceback; set as ``__cause__`` of re-raised errors."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'


class CacheWarning(UserWarning):
    """A cache entry could not be read or written; the computation goes on."""


warnings.simplefilter("default", CacheWarning)
