"""neuraxle_stream: scikit-learn-style pipelines run as parallel streams.

Steps run in long-lived workers (threads or processes), one bounded queue
between stages, a joiner restoring input order; the output equals what the
same steps give in a sequential ``sklearn.pipeline.Pipeline``.
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__ as __version__

if TYPE_CHECKING:  # pragma: no cover
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
    from .torch_steps import DecodeImages, TorchModuleStep
    from .tracing import TraceCall, TraceResult, TraceStage, last_trace, trace_func
    from .union import ParallelQueuedFeatureUnion

#: The module of each public name, imported on first use (PEP 562): importing the
#: package imports none of them, so that a worker process, which imports the
#: package with its worker module, imports only what its steps need (no
#: scikit-learn for a pipeline of plain functions, no torch unless asked).
_WHERE = {
    "Cache": "caching",
    "config_context": "config",
    "get_config": "config",
    "set_config": "config",
    "BrokenPipelineError": "exceptions",
    "CacheWarning": "exceptions",
    "InvalidParameterError": "exceptions",
    "PipelineStoppedError": "exceptions",
    "RemoteTraceback": "exceptions",
    "WorkerError": "exceptions",
    "PipelineHook": "hooks",
    "StageInfo": "hooks",
    "TaskStatsHook": "hooks",
    "WorkersJoiner": "joiner",
    "MinibatchError": "messages",
    "QueuedMinibatchTask": "messages",
    "ParallelWorkersWrapper": "pipeline",
    "SequentialQueuedPipeline": "pipeline",
    "StripAbsentValues": "pipeline",
    "shutdown_workers": "pool",
    "FailureRecord": "retries",
    "SkippedMinibatchWarning": "retries",
    "BaseSaver": "savers",
    "CloudpickleSaver": "savers",
    "TorchSaver": "savers",
    "PipelineStats": "stats",
    "QueueStats": "stats",
    "StageStats": "stats",
    "BaseTransformer": "steps",
    "Identity": "steps",
    "NonFittableMixin": "steps",
    "TraceCall": "tracing",
    "TraceResult": "tracing",
    "TraceStage": "tracing",
    "last_trace": "tracing",
    "trace_func": "tracing",
    "ParallelQueuedFeatureUnion": "union",
    "TorchModuleStep": "torch_steps",
    "DecodeImages": "torch_steps",
}

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
    """Load a public name's module on first use (PEP 562); see ``_WHERE``."""
    module = _WHERE.get(name)
    if module is not None:
        import importlib

        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # the next access is a plain lookup
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
