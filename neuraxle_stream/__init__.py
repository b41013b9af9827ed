"""neuraxle_stream: scikit-learn-style pipelines run as parallel streams.

Steps run in long-lived workers (threads or processes), one bounded queue
between stages, a joiner restoring input order; the output equals what the
same steps give in a sequential ``sklearn.pipeline.Pipeline``.
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__
from .caching import Cache
from .config import config_context, get_config, set_config
from .exceptions import (
    BrokenPipelineError,
    CacheWarning,
    InvalidParameterError,
    PipelineStoppedError,
    RemoteTraceback,
    WorkerError,
)
from .hooks import PipelineHook, StageInfo, TaskStatsHook
from .joiner import WorkersJoiner
from .messages import MinibatchError, QueuedMinibatchTask
from .pipeline import ParallelWorkersWrapper, SequentialQueuedPipeline, StripAbsentValues
from .pool import shutdown_workers
from .retries import FailureRecord, SkippedMinibatchWarning
from .savers import BaseSaver, CloudpickleSaver, TorchSaver
from .stats import PipelineStats, QueueStats, StageStats
from .steps import BaseTransformer, Identity, NonFittableMixin
from .tracing import TraceCall, TraceResult, TraceStage, last_trace, trace_func
from .union import ParallelQueuedFeatureUnion

if TYPE_CHECKING:  # pragma: no cover
    from .torch_steps import DecodeImages, TorchModuleStep

__all__ = [
    # steps
    "BaseTransformer",
    "NonFittableMixin",
    "Identity",
    # pipelines
    "SequentialQueuedPipeline",
    "ParallelQueuedFeatureUnion",
    "ParallelWorkersWrapper",
    "WorkersJoiner",
    "QueuedMinibatchTask",
    "MinibatchError",
    "StripAbsentValues",
    # hooks and stats
    "PipelineHook",
    "StageInfo",
    "TaskStatsHook",
    "PipelineStats",
    "StageStats",
    "QueueStats",
    "FailureRecord",
    "SkippedMinibatchWarning",
    # tracing
    "TraceResult",
    "TraceStage",
    "TraceCall",
    "trace_func",
    "last_trace",
    # savers
    "BaseSaver",
    "CloudpickleSaver",
    "TorchSaver",
    # torch steps (need torch; DecodeImages also Pillow or torchvision)
    "TorchModuleStep",
    "DecodeImages",
    # caching
    "Cache",
    # settings and warm workers
    "get_config",
    "set_config",
    "config_context",
    "shutdown_workers",
    # errors
    "InvalidParameterError",
    "PipelineStoppedError",
    "BrokenPipelineError",
    "WorkerError",
    "RemoteTraceback",
    "CacheWarning",
]

def __getattr__(name: str) -> Any:
    """Load the optional torch steps on first use (PEP 562): importing the package imports no torch."""
    if name in ("TorchModuleStep", "DecodeImages"):
        from . import torch_steps

        value = getattr(torch_steps, name)
        globals()[name] = value  # the next access is a plain lookup
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
