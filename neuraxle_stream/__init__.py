"""neuraxle_stream: scikit-learn-style pipelines run as parallel streams.

Steps run in long-lived workers (threads or processes), one bounded queue
between stages, a joiner restoring input order; the output equals what the
same steps give in a sequential ``sklearn.pipeline.Pipeline``.
"""

from ._version import __version__ as __version__
from .caching import Cache
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
from .savers import BaseSaver, CloudpickleSaver, TorchSaver
from .stats import PipelineStats, QueueStats, StageStats
from .steps import BaseTransformer, Identity, NonFittableMixin
from .torch_steps import DecodeImages, TorchModuleStep  # torch is imported on use only
from .tracing import TraceCall, TraceResult, TraceStage, last_trace, trace_func
from .union import ParallelQueuedFeatureUnion

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
    # errors
    "InvalidParameterError",
    "PipelineStoppedError",
    "BrokenPipelineError",
    "WorkerError",
    "RemoteTraceback",
    "CacheWarning",
]
