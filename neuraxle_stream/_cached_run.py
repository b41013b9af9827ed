"""How a pipeline runs through its cache: stage by stage, per window of minibatches.

See :mod:`neuraxle_stream.caching` for the keys and the layout on disk. Per
window (the whole input for ``transform``, ``caching.STREAM_WINDOW``
minibatches for ``stream``), for each stage in turn: the minibatches whose
output of this stage (or of a later one) is cached are not sent to the
workers; the others are, and each output is stored as it comes back, with
the stage's ``run_info.json`` and ``log.txt``. Fitted steps are looked up
before ``fit`` runs.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import socket
import sys
import time
import uuid
from collections.abc import Generator, Iterator
from datetime import datetime
from typing import Any

import joblib

from . import _containers, caching
from ._validation import StageDesc
from ._version import __version__
from .caching import (
    MISSING,
    CacheInfo,
    CacheStore,
    StepCacheStats,
    _qualname,
    chain_key,
    content_hash,
    is_missing,
    step_key,
)
from .lifecycle import Lifecycle
from .minibatches import Minibatch
from .monitor import CallMonitor
from .plan import Plan
from .steps import RUN_INFO_RECORDS

__all__ = ["fit_cached", "run_cached"]


# -- run info and logs ----------------------------------------------------------------------


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "neuraxle_stream": __version__}
    for name in ("numpy", "sklearn", "joblib", "pandas", "torch"):
        mod = sys.modules.get(name)
        if mod is not None:
            out[name] = str(getattr(mod, "__version__", "?"))
    return out


def run_info(name: str, step: Any, key: str, input_key: str, started: float, ended: float,
             minibatches: int, items: int, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``run_info.json`` of one step's computed results."""
    params = step.get_params(deep=False) if hasattr(step, "get_params") else {}
    return {
        "step": name,
        "class": _qualname(step),
        "cache_version": getattr(step, "cache_version", None),
        "params": {k: repr(v) for k, v in params.items()},
        "key": key,
        "input_key": input_key,
        "started": datetime.fromtimestamp(started).isoformat(),
        "ended": datetime.fromtimestamp(ended).isoformat(),
        "duration": ended - started,
        "minibatches": minibatches,
        "items": items,
        "hostname": socket.gethostname(),
        "run_id": uuid.uuid4().hex,
        "versions": _versions(),
        "records": records,
    }


class _LogCapture(logging.Handler):
    """Collects the records the parent's logging sees while one step runs."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.lines.append(self.format(record))


@contextlib.contextmanager
def capture(records: list[dict[str, Any]] | None = None) -> Iterator[_LogCapture]:
    """Capture log records (root logger) and ``save_to_run_info`` records of the parent."""
    handler = _LogCapture()
    root = logging.getLogger()
    root.addHandler(handler)
    token = RUN_INFO_RECORDS.set(records if records is not None else [])
    try:
        yield handler
    finally:
        RUN_INFO_RECORDS.reset(token)
        root.removeHandler(handler)


# -- a cached run --------------------------------------------------------------------------

def fit_in_parent(step: Any, X: Any, y: Any, params: dict[str, dict[str, Any]], transform: bool) -> Any:
    """Fit ``step`` on ``(X, y)``; with ``transform``, return its output as its own ``fit_transform`` gives it.

    ``params`` are by method (``fit``, ``fit_transform``, ``transform``), as
    :meth:`~neuraxle_stream._routing.RoutedParams.step_params` gives them.
    This is scikit-learn's ``_fit_transform_one``: a step whose
    ``fit_transform`` differs from ``fit().transform()`` (``TargetEncoder``
    cross-fits) gives the same output as in ``Pipeline`` and
    ``FeatureUnion``, and it is computed once (DESIGN.md section 6).
    """
    if not transform:
        step.fit(X, y, **params.get("fit", {}))
        return None
    if hasattr(step, "fit_transform"):
        return step.fit_transform(X, y, **params.get("fit_transform", {}))
    return step.fit(X, y, **params.get("fit", {})).transform(X, **params.get("transform", {}))


def fit_cached(
    plan: Plan, lifecycle: Lifecycle, desc: StageDesc, X: Any, y: Any, monitor: CallMonitor,
    params: dict[str, dict[str, Any]] | None = None, transform: bool = False,
) -> Any:
    """Fit ``desc.step`` on ``(X, y)`` (its routed ``params`` by method), or load it from the cache.

    With ``transform``, the step is fitted with its own ``fit_transform``
    (:func:`fit_in_parent`) and that output is returned, and cached with the
    fitted state.
    """
    step = desc.step
    params = params or {}
    store = plan.fit_store
    if not store.enabled:
        return fit_in_parent(step, X, y, params, transform)
    info = lifecycle.call_info(monitor, plan.memory)
    stats = info.steps.setdefault(desc.name, StepCacheStats(desc.name))
    unfitted = step_key(step, fitted_state=False)
    given = {method: p for method, p in params.items() if p}
    data_key = content_hash((X, y, given)) if given else content_hash((X, y))
    key = chain_key(unfitted, data_key)
    area = f"fits/{key}"
    fitted = store.get(area, "fitted")
    output = store.get(area, "output") if transform else None
    if not is_missing(fitted) and type(fitted) is type(step) and not is_missing(output):
        vars(step).update(vars(fitted))
        stats.fit = "hit"
        return output
    records: list[dict[str, Any]] = []
    started = time.time()
    with capture(records) as log:
        output = fit_in_parent(step, X, y, params, transform)
    ended = time.time()
    stats.fit = "miss"
    stats.bytes_written += store.put(area, "fitted", step)
    if transform:
        stats.bytes_written += store.put(area, "output", output)
    n = _num_rows(X)
    store.write_info(area, run_info(desc.name, step, key, data_key, started, ended, 1, n, records), log.lines)
    return output


def _num_rows(data: Any) -> int:
    try:
        return int(_containers.num_rows(data))
    except Exception:
        return 0


def run_cached(
    plan: Plan, lifecycle: Lifecycle, X: Any, start: int, stop: int, monitor: CallMonitor,
) -> Iterator[tuple[int, Any]]:
    """Run stages ``start:stop`` on ``X`` through the cache; yield ``(index, output)``."""
    store = plan.store
    lanes = plan.lanes(start, stop)
    keys = [[step_key(d.runnable) for d in lane] for lane in lanes]
    info = lifecycle.call_info(monitor, plan.memory)
    for lane, lane_keys in zip(lanes, keys):
        for d, k in zip(lane, lane_keys):
            info.steps.setdefault(d.name, StepCacheStats(d.name)).key = k
    window_size = None if _containers.is_sequence(X) else caching.STREAM_WINDOW
    owned = not lifecycle.keep_alive
    if owned:  # keep each stage's workers up across the windows of this call
        lifecycle.keep_alive = True
    ok = False
    try:
        batches = plan.minibatching.batches(X)
        read = 0
        while True:
            window: list[Minibatch] = []
            source_error: BaseException | None = None
            try:
                for batch in batches:
                    window.append(batch)
                    read += 1
                    if window_size is not None and len(window) >= window_size:
                        break
            except Exception as exc:  # keep what was read: a re-run resumes after it
                exc.add_note(f"Raised by the input of the queued pipeline, reading minibatch {read}.")
                source_error = exc
            if not window:
                if source_error is not None:
                    raise source_error
                ok = True
                return
            outputs = _run_window(plan, lifecycle, store, lanes, keys, window, monitor, info)
            if source_error is not None:
                raise source_error
            for batch, per_lane in zip(window, outputs):
                yield batch.index, batch.unpad(plan.join(per_lane))
            if window_size is None:
                ok = True
                return
    finally:
        if owned:
            if ok:
                lifecycle.close()
            else:  # the error being raised already says what went wrong
                with contextlib.suppress(Exception):
                    lifecycle.close()


def _run_window(
    plan: Plan, lifecycle: Lifecycle, store: CacheStore, lanes: list[list[StageDesc]], keys: list[list[str]],
    window: list[Minibatch], monitor: CallMonitor, info: CacheInfo,
) -> list[list[Any]]:
    """Outputs of every lane for the minibatches of ``window``, computing only what is missing."""
    input_keys = [content_hash(batch.data) for batch in window]
    per_lane: list[list[Any]] = []
    for lane, lane_keys in zip(lanes, keys):
        chain: list[list[str]] = []
        previous = input_keys
        for k in lane_keys:
            previous = [chain_key(k, p) for p in previous]
            chain.append(previous)
        values: list[Any] = []
        deepest: list[int] = []
        for m, batch in enumerate(window):
            level, value = len(lane) - 1, MISSING
            while level >= 0:
                area = f"steps/{lane_keys[level]}/out"
                if store.contains(area, chain[level][m]):
                    value = store.get(area, chain[level][m])
                    if not is_missing(value):
                        break
                level -= 1
            deepest.append(level)
            values.append(batch.data if level < 0 else value)
        for j, desc in enumerate(lane):
            stats = info.steps[desc.name]
            todo = [m for m in range(len(window)) if deepest[m] < j]
            stats.hits += len(window) - len(todo)
            stats.misses += len(todo)
            if not todo:
                continue
            inputs_key = str(joblib.hash([chain[j - 1][m] if j else input_keys[m] for m in todo]))
            records: list[dict[str, Any]] = []
            started = time.time()
            area = f"steps/{lane_keys[j]}/out"
            run = _run_stage(plan, lifecycle, desc, [values[m] for m in todo], monitor)
            with capture(records) as log, contextlib.closing(run):
                for m, out in zip(todo, run):
                    values[m] = out
                    stats.bytes_written += store.put(area, chain[j][m], out)
            ended = time.time()
            items = sum(_num_rows(values[m]) for m in todo)
            store.write_info(
                f"steps/{lane_keys[j]}",
                run_info(desc.name, desc.runnable, lane_keys[j], inputs_key, started, ended, len(todo), items, records),
                log.lines,
            )
        per_lane.append(values)
    return [list(outs) for outs in zip(*per_lane)]


def _run_stage(
    plan: Plan, lifecycle: Lifecycle, desc: StageDesc, batches: list[Any], monitor: CallMonitor
) -> Generator[Any, None, None]:
    """Run one stage's workers on ``batches``; yield the outputs in order."""
    specs = plan.specs([[desc]])
    with lifecycle.running_on(plan, specs, monitor) as runtime:
        minibatches = (Minibatch(i, b) for i, b in enumerate(batches))
        # retries apply; skipping does not: each cached stage needs every output of the one before
        policy = plan.raising().retry
        with contextlib.closing(
            runtime.run(minibatches, ordered=True, observer=monitor.collector, policy=policy)
        ) as results:
            for _, outputs in results:
                yield outputs[0]
