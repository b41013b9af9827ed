"""Named test doubles shared by the test modules.

Import them as ``from doubles import AddConstant, ...``: pytest puts ``tests/``
on ``sys.path`` (its default ``prepend`` import mode, as ``tests/`` has no
``__init__.py``), and worker processes inherit that path, so every double here
is pickled *by reference* and imported again in each worker. Keep everything at
module level, deterministic and cheap: these steps are run thousands of times.

Stateless steps (``NonFittableMixin``): :class:`AddConstant`,
:class:`MultiplyBy`, :class:`RandomDelay`, :class:`RaiseOn`,
:class:`WorkerIdentity`, :class:`LifecycleRecorder`, :class:`BatchLength`.
Fittable: :class:`MeanCenterer` (a complete scikit-learn transformer written on
:class:`~neuraxle_stream.BaseTransformer`) and :class:`FitRecorder`. Per-item functions: :func:`square`,
:func:`add_one`, :func:`describe_item`.

Records and signals a test waits on instead of sleeping (files, so they work
across threads, processes and Ray actors): :func:`wait_for_file`,
:func:`rendezvous`, :class:`TouchesThenWaits`, :class:`WaitsAt`,
:class:`TouchesAt`, :class:`SignalsInSetupThenWaits`, :class:`FitRendezvous`,
:class:`WorkerRendezvous`; what a step saw or where it ran:
:class:`MinibatchRecorder`, :class:`ProcessOrigin`, :class:`AppendsRayCPUs`.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import OneToOneFeatureMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from neuraxle_stream import BaseTransformer, NonFittableMixin

__all__ = [
    "AddConstant",
    "BatchLength",
    "DoubleFailure",
    "FitRecorder",
    "LifecycleRecorder",
    "MeanCenterer",
    "MultiplyBy",
    "RaiseOn",
    "RandomDelay",
    "WorkerIdentity",
    "add_one",
    "describe_item",
    "read_events",
    "square",
    # records and signals to wait on
    "AppendsRayCPUs",
    "MinibatchRecorder",
    "ProcessOrigin",
    "SignalsInSetupThenWaits",
    "TouchesAt",
    "TouchesThenWaits",
    "WaitsAt",
    "FitRendezvous",
    "WorkerRendezvous",
    "read_minibatches",
    "rendezvous",
    "wait_for_file",
]


# --- stateless arithmetic ---------------------------------------------------------------


def _arith(data_inputs: Any, op: Any) -> Any:
    """Apply ``op`` elementwise, keeping the container (lists stay lists)."""
    if isinstance(data_inputs, list | tuple):
        return [op(x) for x in data_inputs]
    return op(data_inputs)  # ndarray, DataFrame, Series, sparse, tensor


class AddConstant(NonFittableMixin, BaseTransformer):
    """Add ``value`` to every element; keeps ndarrays, DataFrames, tensors, lists."""

    def __init__(self, value: float = 1.0) -> None:
        self.value = value

    def transform(self, data_inputs: Any) -> Any:
        """Return ``data_inputs + value``."""
        return _arith(data_inputs, lambda x: x + self.value)


class MultiplyBy(NonFittableMixin, BaseTransformer):
    """Multiply every element by ``factor``; works on sparse matrices too."""

    def __init__(self, factor: float = 2.0) -> None:
        self.factor = factor

    def transform(self, data_inputs: Any) -> Any:
        """Return ``data_inputs * factor``."""
        return _arith(data_inputs, lambda x: x * self.factor)


class RandomDelay(NonFittableMixin, BaseTransformer):
    """Sleep a pseudo-random time per minibatch, then return it unchanged.

    The delay is a hash of the minibatch bytes, so runs are reproducible but
    workers finish out of order: the joiner has to restore the order.
    """

    def __init__(self, max_delay: float = 0.005) -> None:
        self.max_delay = max_delay

    def transform(self, data_inputs: Any) -> Any:
        """Sleep up to ``max_delay`` seconds; return the inputs."""
        key = zlib.crc32(repr(data_inputs).encode()) / 2**32
        time.sleep(self.max_delay * key)
        return data_inputs


class DoubleFailure(ValueError):
    """The error :class:`RaiseOn` raises: a picklable ``ValueError`` subclass."""


class RaiseOn(NonFittableMixin, BaseTransformer):
    """Raise :class:`DoubleFailure` on a minibatch holding ``value``; else identity."""

    def __init__(self, value: Any = -1) -> None:
        self.value = value

    def transform(self, data_inputs: Any) -> Any:
        """Return the inputs, or raise when ``value`` is among them."""
        if any(np.any(np.asarray(item) == self.value) for item in data_inputs):
            raise DoubleFailure(f"found the bad value {self.value!r}")
        return data_inputs


# --- worker identity and lifecycle --------------------------------------------------------


class WorkerIdentity(NonFittableMixin, BaseTransformer):
    """Report which copy of the step handled each item.

    Each output item is ``(pid, id(self), thread_name, tag, call_number)``:
    the process and the copy of the step that ran the minibatch, the ``tag``
    set by ``worker_arguments``, and this copy's own call counter (1, 2, ...),
    which only counts without gaps when no other worker shares the copy.
    ``delay`` (seconds per minibatch) spreads the minibatches over the workers.
    """

    def __init__(self, tag: Any = None, delay: float = 0.0) -> None:
        self.tag = tag
        self.delay = delay

    def transform(self, data_inputs: Any) -> list[tuple[int, int, str, Any, int]]:
        """One identity tuple per input item."""
        self.calls_ = getattr(self, "calls_", 0) + 1
        call = self.calls_
        if self.delay:
            time.sleep(self.delay)
        who = (os.getpid(), id(self), threading.current_thread().name, self.tag, call)
        return [who] * len(data_inputs)


class LifecycleRecorder(NonFittableMixin, BaseTransformer):
    """Record ``setup()`` and ``teardown()`` calls as JSON files in ``log_dir``.

    Each call writes one file ``{event}-{uuid}.json`` holding the event, pid,
    ``id(self)``, thread name and ``tag``; read them back with :func:`read_events`.
    ``transform`` returns the inputs unchanged and fails unless ``setup()`` ran
    on this very copy first. ``setup_calls_`` / ``teardown_calls_`` count calls
    on this copy: on the parent's object they must stay 0.
    """

    def __init__(self, log_dir: str = "", tag: Any = None) -> None:
        self.log_dir = log_dir
        self.tag = tag

    def _record(self, event: str) -> None:
        record = {
            "event": event,
            "pid": os.getpid(),
            "obj": id(self),
            "thread": threading.current_thread().name,
            "tag": self.tag,
        }
        path = Path(self.log_dir) / f"{event}-{uuid.uuid4().hex}.json"
        path.write_text(json.dumps(record))

    def setup(self) -> None:
        """Count and record the call."""
        self.setup_calls_ = getattr(self, "setup_calls_", 0) + 1
        self._record("setup")

    def teardown(self) -> None:
        """Count and record the call."""
        self.teardown_calls_ = getattr(self, "teardown_calls_", 0) + 1
        self._record("teardown")

    def transform(self, data_inputs: Any) -> Any:
        """Return the inputs; raise when ``setup()`` has not run on this copy."""
        if getattr(self, "setup_calls_", 0) != 1:
            raise RuntimeError("transform() called on a copy whose setup() did not run once")
        return data_inputs


def read_events(log_dir: str | Path, event: str | None = None) -> list[dict[str, Any]]:
    """The records written by :class:`LifecycleRecorder` in ``log_dir``."""
    records = [json.loads(p.read_text()) for p in Path(log_dir).glob("*.json")]
    return [r for r in records if event is None or r["event"] == event]


# --- a fittable scikit-learn transformer -----------------------------------------------------


class MeanCenterer(OneToOneFeatureMixin, BaseTransformer):
    """Subtract the column means learnt by ``fit``: a complete sklearn transformer.

    Validates its input as scikit-learn estimators do (``n_features_in_``,
    ``feature_names_in_``, sparse and NaN rejected), so it passes
    ``check_estimator``; ``n_samples_seen_`` tells how many rows it was fitted on.
    """

    def __init__(self, with_mean: bool = True) -> None:
        self.with_mean = with_mean

    def fit(self, X: Any, y: Any = None) -> MeanCenterer:
        """Learn ``mean_`` (zeros when ``with_mean=False``)."""
        X = validate_data(self, X, dtype=np.float64)
        self.mean_ = X.mean(axis=0) if self.with_mean else np.zeros(X.shape[1])
        self.n_samples_seen_ = X.shape[0]
        return self

    def transform(self, data_inputs: Any) -> np.ndarray:
        """Return ``data_inputs - mean_`` as a float ndarray."""
        check_is_fitted(self)
        X = validate_data(self, data_inputs, dtype=np.float64, reset=False)
        return X - self.mean_


class FitRecorder(BaseTransformer):
    """Record what ``fit`` received (``fit_inputs_``, ``fit_targets_``); transform is identity.

    Tells whether a step was fitted on the whole output of the stages before it
    (not on a minibatch) and with the targets the pipeline was given.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def fit(self, X: Any, y: Any = None) -> FitRecorder:
        """Keep copies of ``X`` and ``y``; count the calls in ``n_fits_``.

        Sleeps ``delay`` seconds first and records the thread it ran on in
        ``fit_thread_``, to show that union branches are fitted in parallel.
        """
        self.fit_started_ = time.monotonic()
        if self.delay:
            time.sleep(self.delay)
        self.fit_thread_ = threading.current_thread().name
        self.fit_inputs_ = np.array(X, copy=True)
        self.fit_targets_ = None if y is None else np.array(y, copy=True)
        self.n_fits_ = getattr(self, "n_fits_", 0) + 1
        return self

    def transform(self, data_inputs: Any) -> Any:
        """Return the inputs unchanged (fails unless fitted)."""
        check_is_fitted(self)
        return data_inputs


class BatchLength(NonFittableMixin, BaseTransformer):
    """Replace each item by the length of the minibatch it came in (a list)."""

    def transform(self, data_inputs: Any) -> list[int]:
        """``[len(data_inputs)] * len(data_inputs)``."""
        return [len(data_inputs)] * len(data_inputs)


# --- per-item functions --------------------------------------------------------------------


def square(x: Any) -> Any:
    """``x * x``: a per-item operator."""
    return x * x


def add_one(x: Any) -> Any:
    """``x + 1``: a per-item operator."""
    return x + 1


def describe_item(x: Any) -> str:
    """A string per item: a per-item operator whose outputs cannot be stacked."""
    return f"item:{x}"


class RecordingHandler(logging.Handler):
    """A logging handler that keeps every record it is given, to count them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# --- records and signals a test can wait on (instead of sleeping) -----------------------------


def wait_for_file(path: str | Path, timeout: float = 30.0) -> bool:
    """Wait until ``path`` exists (``timeout`` at most); True when it does.

    Works across threads, processes and Ray actors alike, which a
    ``threading.Event`` does not: the files are the test's signal.
    """
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def wait_for_events(log_dir: str | Path, event: str, n: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The ``event`` records of :class:`LifecycleRecorder` once there are ``n`` (``timeout`` at most).

    A worker that started late may run its ``setup()`` after the others
    served a whole call: wait for its record rather than count too early.
    """
    deadline = time.monotonic() + timeout
    while len(records := read_events(log_dir, event)) < n and time.monotonic() < deadline:
        time.sleep(0.01)
    return records


class TouchesThenWaits(NonFittableMixin, BaseTransformer):
    """On each minibatch: create ``started`` (a signal file), then wait for ``release``.

    The test waits for ``started`` to know that a worker is inside the step
    (its workers are up, the step is loaded), instead of guessing with a sleep.
    The step waits for ``release`` at most ``seconds`` (no wait when ``release``
    is empty; a copy whose wait ran out once waits no more), then returns its inputs.
    """

    def __init__(self, started: str = "", release: str = "", seconds: float = 30.0) -> None:
        self.started = started
        self.release = release
        self.seconds = seconds

    def transform(self, data_inputs: Any) -> Any:
        """Signal, wait, return the inputs unchanged."""
        if self.started:
            Path(self.started).touch()
        if self.release and not getattr(self, "gave_up_", False):
            self.gave_up_ = not wait_for_file(self.release, self.seconds)
        return data_inputs


class MinibatchRecorder(NonFittableMixin, BaseTransformer):
    """Write one JSON file per minibatch in ``log_dir``: who ran it and what it held.

    Each record holds ``pid``, ``thread``, ``first`` (the first item), ``n_items``
    and the ``items`` themselves: what the step itself saw, an independent
    reference for hook records and stats. Returns the inputs unchanged.
    """

    def __init__(self, log_dir: str = "") -> None:
        self.log_dir = log_dir

    def transform(self, data_inputs: Any) -> Any:
        """Record the minibatch; return it unchanged."""
        items = [np.asarray(x).tolist() for x in data_inputs]
        record = {
            "pid": os.getpid(),
            "thread": threading.current_thread().name,
            "first": items[0] if items else None,
            "n_items": len(items),
            "items": items,
        }
        (Path(self.log_dir) / f"batch-{uuid.uuid4().hex}.json").write_text(json.dumps(record))
        return data_inputs


def read_minibatches(log_dir: str | Path) -> list[dict[str, Any]]:
    """The records written by :class:`MinibatchRecorder` in ``log_dir``."""
    return [json.loads(p.read_text()) for p in Path(log_dir).glob("batch-*.json")]


class AppendsRayCPUs(NonFittableMixin, BaseTransformer):
    """Append the CPUs Ray assigned to this actor to each item (a tuple).

    ``(1,) -> (1, 0.3)`` in an actor placed with ``num_cpus=0.3``: what the
    actor really holds, read inside it, not what the library meant to ask.
    """

    def transform(self, data_inputs: Any) -> list[tuple[Any, ...]]:
        """``tuple(item) + (assigned CPUs,)`` for each item."""
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0.0)
        return [(*tuple(item), cpus) for item in data_inputs]



def rendezvous(directory: str | Path, key: str, parties: int, seconds: float = 30.0) -> bool:
    """Arrive (a file ``key`` in ``directory``) and wait until ``parties`` have arrived.

    True when they all did within ``seconds``: then the callers were under way
    at the same time, whatever the clock says. False when the wait ran out.
    """
    directory = Path(directory)
    (directory / f"arrived-{key}").touch()
    deadline = time.monotonic() + seconds
    while len(list(directory.glob("arrived-*"))) < parties:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class FitRendezvous(FitRecorder):
    """A :class:`FitRecorder` whose ``fit`` waits until ``parties`` fits have started.

    ``met_`` tells whether they all did within ``seconds``: fits run one after
    the other never meet (the first waits its ``seconds`` out, alone).
    """

    def __init__(self, log_dir: str = "", parties: int = 2, seconds: float = 10.0) -> None:
        super().__init__()
        self.log_dir = log_dir
        self.parties = parties
        self.seconds = seconds

    def fit(self, X: Any, y: Any = None) -> FitRendezvous:
        """Meet the other fits, then record as :class:`FitRecorder` does."""
        self.met_ = rendezvous(self.log_dir, uuid.uuid4().hex, self.parties, self.seconds)
        return super().fit(X, y)


class WorkerRendezvous(WorkerIdentity):
    """A :class:`WorkerIdentity` whose copies each wait, on their first minibatch, for ``parties`` copies.

    With ``parties`` workers taking minibatches from one queue, each one gets
    a minibatch while the others wait: every copy is seen, without timing luck.
    Fewer workers than ``parties`` wait ``seconds`` out, and fewer copies show.
    """

    def __init__(self, log_dir: str = "", parties: int = 1, seconds: float = 10.0) -> None:
        super().__init__()
        self.log_dir = log_dir
        self.parties = parties
        self.seconds = seconds

    def transform(self, data_inputs: Any) -> list[tuple[int, int, str, Any, int]]:
        """Meet the other copies once, then report as :class:`WorkerIdentity` does."""
        if not getattr(self, "calls_", 0):
            rendezvous(self.log_dir, f"{os.getpid()}-{id(self)}", self.parties, self.seconds)
        return super().transform(data_inputs)


class SignalsInSetupThenWaits(NonFittableMixin, BaseTransformer):
    """``setup()`` creates ``started``, then waits for ``release`` (``seconds`` at most).

    The test knows the worker is stuck in ``setup()`` when ``started`` exists,
    and frees it by creating ``release``. ``transform`` is the identity.
    """

    def __init__(self, started: str = "", release: str = "", seconds: float = 30.0) -> None:
        self.started = started
        self.release = release
        self.seconds = seconds

    def setup(self) -> None:
        """Signal, then wait to be released."""
        Path(self.started).touch()
        wait_for_file(self.release, self.seconds)

    def transform(self, data_inputs: Any) -> Any:
        """Return the inputs unchanged."""
        return data_inputs


class WaitsAt(NonFittableMixin, BaseTransformer):
    """Hold the minibatch holding ``at`` until ``release`` exists (``seconds`` at most).

    The other minibatches pass at once: the held one completes after them,
    deterministically, when another worker or stage creates ``release``.
    """

    def __init__(self, at: Any = 0, release: str = "", seconds: float = 30.0) -> None:
        self.at = at
        self.release = release
        self.seconds = seconds

    def transform(self, data_inputs: Any) -> Any:
        """Wait on the minibatch holding ``at``; return the inputs."""
        if self.at in list(data_inputs):
            wait_for_file(self.release, self.seconds)
        return data_inputs


class TouchesAt(NonFittableMixin, BaseTransformer):
    """Create the file ``path`` when a minibatch holds ``at``; identity otherwise."""

    def __init__(self, at: Any = 0, path: str = "") -> None:
        self.at = at
        self.path = path

    def transform(self, data_inputs: Any) -> Any:
        """Touch ``path`` on the minibatch holding ``at``; return the inputs."""
        if self.at in list(data_inputs):
            Path(self.path).touch()
        return data_inputs


class ProcessOrigin(NonFittableMixin, BaseTransformer):
    """Replace each item by ``(pid, parent pid, command line)`` of the worker (Linux).

    Tells how a worker process was started: a ``spawn`` child runs
    ``multiprocessing.spawn``'s ``spawn_main`` and is the parent's own child;
    a ``forkserver`` child is forked by the fork server (its command line
    names ``forkserver``), not by the parent.
    """

    def transform(self, data_inputs: Any) -> list[tuple[int, int, str]]:
        """One ``(pid, ppid, cmdline)`` per item."""
        cmdline = Path("/proc/self/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        return [(os.getpid(), os.getppid(), cmdline)] * len(data_inputs)
