"""OpenTelemetry traces of queued pipelines: a span per call, per worker, per minibatch.

An optional extra (``pip install "neuraxle_stream[otel]"``): this module
imports ``opentelemetry`` only when a hook is created. The spans nest as::

    SequentialQueuedPipeline            (the call, in the parent: fit, transform, ...)
    ├─ stage scale                     (one per worker: its lifetime, in the worker)
    │  ├─ scale minibatch 0            (one per minibatch, in the worker)
    │  └─ scale minibatch 1
    └─ stage model ...

The parent's trace context travels to the workers as a W3C ``traceparent``
carrier set on the hook by ``run_hook`` before the hooks are shipped; each
worker extracts it. Thread workers end their spans in the parent's tracer
provider directly. Worker processes have no exporter of their own: they end
their spans in a small local provider whose processor sends each finished
span to the parent as a ``logging`` record (the path worker logs take), and
the parent hands it to its own provider's span processors, hence exporters.
"""

from __future__ import annotations

import logging
import os
import uuid
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

from .hooks import PipelineHook, StageInfo

if TYPE_CHECKING:  # pragma: no cover
    from .messages import QueuedMinibatchTask

__all__ = ["OpenTelemetryHook"]

#: Logger on which worker processes send their finished spans to the parent (never shown).
_SPAN_LOGGER = "neuraxle_stream.otel.spans"
#: The hooks of this process by token, so that thread workers find the parent's provider.
_HOOKS: weakref.WeakValueDictionary[str, OpenTelemetryHook] = weakref.WeakValueDictionary()
_SCOPE = "neuraxle_stream"


def _require_sdk() -> None:
    try:
        import opentelemetry.trace  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "OpenTelemetryHook needs OpenTelemetry: pip install 'neuraxle_stream[otel]' "
            "(opentelemetry-api and opentelemetry-sdk)."
        ) from exc


class OpenTelemetryHook(PipelineHook):
    """Trace each call, each worker and each minibatch as OpenTelemetry spans.

    Parameters
    ----------
    tracer_provider : TracerProvider or None, default=None
        Where the spans go; ``None`` is the global provider
        (``opentelemetry.trace.get_tracer_provider()``) at the time of each call.
        Spans of worker processes reach it only when it is an SDK
        ``TracerProvider`` (they are handed to its span processors).

    Notes
    -----
    Pass it in the ``hooks`` of the outermost pipeline. Each call ships a new
    trace context to the workers, so inside ``with pipeline:`` each call starts
    its own workers (their stage spans belong to that call's trace). The
    global tracer provider is not set in worker processes: spans that a step
    creates itself there are not exported (on threads they are, as children
    of the minibatch span, which is current while the step runs).

    Examples
    --------
    >>> from opentelemetry.sdk.trace import TracerProvider
    >>> from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    >>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    >>> from neuraxle_stream import SequentialQueuedPipeline
    >>> exporter = InMemorySpanExporter()
    >>> provider = TracerProvider()
    >>> provider.add_span_processor(SimpleSpanProcessor(exporter))
    >>> p = SequentialQueuedPipeline([("neg", abs)], batch_size=2, backend="thread",
    ...                              hooks=[OpenTelemetryHook(provider)])
    >>> p.transform([-1, 2, -3])
    [1, 2, 3]
    >>> sorted(s.name for s in exporter.get_finished_spans())
    ['SequentialQueuedPipeline', 'neg minibatch 0', 'neg minibatch 1', 'stage neg']
    """

    def __init__(self, tracer_provider: Any = None) -> None:
        _require_sdk()
        self.tracer_provider = tracer_provider
        self._token = uuid.uuid4().hex
        self._carrier: dict[str, str] = {}
        self._parent_pid = os.getpid()
        self._stage_span: Any = None
        _HOOKS[self._token] = self

    def __repr__(self) -> str:
        return f"OpenTelemetryHook(tracer_provider={self.tracer_provider!r})"

    def __getstate__(self) -> dict[str, Any]:
        # The provider holds locks and exporters: workers find it (threads) or
        # stand in for it (processes), see _worker_provider.
        state = dict(self.__dict__)
        state["tracer_provider"] = None
        state["_stage_span"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __deepcopy__(self, memo: dict[int, Any]) -> OpenTelemetryHook:
        # ``sklearn.base.clone`` deep-copies hooks: the copy shares the provider.
        return OpenTelemetryHook(self.tracer_provider)

    # -- in the parent ---------------------------------------------------------------

    def _provider(self) -> Any:
        from opentelemetry import trace

        return self.tracer_provider if self.tracer_provider is not None else trace.get_tracer_provider()

    @contextmanager
    def run_hook(self, owner: str) -> Iterator[None]:
        """Open the call's span and set its context on the hook, before it is shipped."""
        from opentelemetry import trace
        from opentelemetry.trace import Status, StatusCode
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        provider = self._provider()
        span = provider.get_tracer(_SCOPE).start_span(owner, attributes={"neuraxle_stream.pipeline": owner})
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, context=trace.set_span_in_context(span))
        self._carrier, self._parent_pid = carrier, os.getpid()
        receiver = _SpanReceiver.install(self._token, provider)
        try:
            yield
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            raise
        except BaseException as exc:  # closing a stream early, Ctrl-C: not an error of the data
            span.set_attribute("neuraxle_stream.interrupted", type(exc).__name__)
            raise
        finally:
            span.end()
            receiver.forget(self._token)

    # -- in the workers --------------------------------------------------------------

    def _worker_provider(self) -> Any:
        """The provider whose processors get this worker's spans."""
        if os.getpid() == self._parent_pid:  # a thread worker: the parent's own hook is here
            parent = _HOOKS.get(self._token)
            if parent is not None:
                return parent._provider()
            from opentelemetry import trace

            return trace.get_tracer_provider()
        return _shipping_provider(self._token)

    @contextmanager
    def stage_hook(self, stage: StageInfo) -> Iterator[None]:
        """A span around this worker's lifetime, child of the call's span."""
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        parent = TraceContextTextMapPropagator().extract(self._carrier)
        if not trace.get_current_span(parent).get_span_context().is_valid:
            yield  # not traced (no provider in the parent, or a hook not shipped by run_hook)
            return
        tracer = self._worker_provider().get_tracer(_SCOPE)
        span = tracer.start_span(
            f"stage {stage.name}",
            context=parent,
            attributes={
                "neuraxle_stream.step": stage.name,
                "neuraxle_stream.step_index": stage.index,
                "neuraxle_stream.n_workers": stage.n_workers,
                "neuraxle_stream.worker_index": stage.worker_index,
                "neuraxle_stream.pid": os.getpid(),
            },
        )
        self._stage_span = span
        try:
            with trace.use_span(span, end_on_exit=True):
                yield
        finally:
            self._stage_span = None

    @contextmanager
    def task_hook(self, stage: StageInfo, task: QueuedMinibatchTask) -> Iterator[None]:
        """A span around one minibatch, child of the worker's span; current while the step runs."""
        stage_span = self._stage_span
        if stage_span is None:
            yield
            return
        from opentelemetry import trace

        tracer = self._worker_provider().get_tracer(_SCOPE)
        span = tracer.start_span(
            f"{stage.name} minibatch {task.index}",
            context=trace.set_span_in_context(stage_span),
            attributes={
                "neuraxle_stream.step": stage.name,
                "neuraxle_stream.minibatch": task.index,
                "neuraxle_stream.worker_index": stage.worker_index,
                "neuraxle_stream.num_items": _num_items(task.data_inputs),
            },
        )
        with trace.use_span(span, end_on_exit=True):
            yield


def _num_items(data: Any) -> int:
    try:
        return len(data)
    except TypeError:
        return 1


# -- spans of worker processes, shipped to the parent -----------------------------------------

#: The local provider of this worker process, per hook token.
_SHIPPING: dict[str, Any] = {}


def _shipping_provider(token: str) -> Any:
    """A provider of this worker process whose finished spans go to the parent as log records."""
    provider = _SHIPPING.get(token)
    if provider is None:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        # Under fork the parent's settings of this logger were inherited: it must
        # reach the root handler that forwards records to the parent.
        logger = logging.getLogger(_SPAN_LOGGER)
        logger.propagate = True
        logger.setLevel(logging.DEBUG)
        provider = TracerProvider()
        # duck-typed as a SpanExporter, so that importing this module needs no SDK
        provider.add_span_processor(SimpleSpanProcessor(cast(Any, _ShipExporter(token))))
        _SHIPPING[token] = provider
    return provider


class _ShipExporter:
    """A span exporter that logs each finished span, as plain data, for the parent."""

    def __init__(self, token: str) -> None:
        self.token = token

    def export(self, spans: Sequence[Any]) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        logger = logging.getLogger(_SPAN_LOGGER)
        for span in spans:
            logger.info("span %s", span.name, extra={"otel_token": self.token, "otel_span": _span_data(span)})
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _span_data(span: Any) -> dict[str, Any]:
    """What the parent needs to rebuild ``span``: plain, picklable values."""
    ctx, parent = span.context, span.parent
    return {
        "name": span.name,
        "trace_id": ctx.trace_id,
        "span_id": ctx.span_id,
        "trace_flags": int(ctx.trace_flags),
        "parent": None if parent is None else (parent.trace_id, parent.span_id, int(parent.trace_flags)),
        "attributes": dict(span.attributes or {}),
        "events": [(e.name, dict(e.attributes or {}), e.timestamp) for e in span.events],
        "kind": span.kind.value,
        "status": (span.status.status_code.value, span.status.description),
        "start_time": span.start_time,
        "end_time": span.end_time,
    }


def _rebuild(data: dict[str, Any], resource: Any) -> Any:
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    parent = data["parent"]
    return ReadableSpan(
        name=data["name"],
        context=SpanContext(data["trace_id"], data["span_id"], is_remote=False,
                            trace_flags=TraceFlags(data["trace_flags"])),
        parent=None if parent is None else SpanContext(
            parent[0], parent[1], is_remote=True, trace_flags=TraceFlags(parent[2])
        ),
        resource=resource,
        attributes=data["attributes"],
        events=[Event(name, attributes, timestamp) for name, attributes, timestamp in data["events"]],
        kind=SpanKind(data["kind"]),
        status=Status(StatusCode(data["status"][0]), data["status"][1]),
        start_time=data["start_time"],
        end_time=data["end_time"],
        instrumentation_scope=InstrumentationScope(_SCOPE),
    )


class _SpanReceiver(logging.Handler):
    """In the parent: hands the spans shipped by worker processes to their hook's provider.

    One receiver, on the spans logger, which does not propagate while a
    traced call runs: the records never reach the application's handlers.
    """

    _installed: _SpanReceiver | None = None

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.providers: dict[str, list[Any]] = {}

    @classmethod
    def install(cls, token: str, provider: Any) -> _SpanReceiver:
        receiver = cls._installed
        logger = logging.getLogger(_SPAN_LOGGER)
        if receiver is None:
            receiver = cls._installed = cls()
            logger.addHandler(receiver)
        logger.propagate = False
        logger.setLevel(logging.DEBUG)  # worker processes take this level when they start
        receiver.providers.setdefault(token, []).append(provider)
        return receiver

    def forget(self, token: str) -> None:
        providers = self.providers.get(token)
        if providers:
            providers.pop()
            if not providers:
                del self.providers[token]

    def emit(self, record: logging.LogRecord) -> None:
        data = getattr(record, "otel_span", None)
        providers = self.providers.get(getattr(record, "otel_token", ""))
        if data is None or not providers:
            return  # a span sent after its call ended (a worker kept by ``with``): dropped
        provider = providers[-1]
        processor = getattr(provider, "_active_span_processor", None)  # SDK providers only
        if processor is None:
            return
        try:
            processor.on_end(_rebuild(data, getattr(provider, "resource", None)))
        except Exception:
            self.handleError(record)
