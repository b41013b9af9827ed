"""Stages: the plain, picklable description of one stage, and the worker state codes.

A :class:`StageSpec` is what the parent hands to a backend to start the
workers of one stage (thread, process or Ray actor): the saved step, its
worker count and queue bound, its per-worker arguments, the saved hooks.
The state codes are the values of a worker's shared ``current`` slot (what
it is doing) and of a runtime's ``active_run`` slot, read by the parent's
supervisor and written by the workers.

This module sits at the bottom of the engine: it imports nothing of the
package, so workers, stats, hooks and backends can all depend on it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "CLOSING", "IDLE", "IDLE_RUN", "SENDING", "SETUP", "STARTING", "STOPPED", "TEARDOWN", "StageSpec", "sending",
    "sent_minibatch",
]

#: ``current`` value of a worker between minibatches.
IDLE = -1
#: ``current`` value of a worker running its step's ``setup()``.
SETUP = -2
#: ``current`` value of a worker that stopped when told to (not one that died).
STOPPED = -3
#: ``current`` value of a worker started but not yet running (set by the parent).
STARTING = -4
#: ``current`` value of a worker running its step's ``teardown()``.
TEARDOWN = -5
#: ``current`` values from here down: a worker sending the output of a minibatch
#: (``SENDING - k`` for minibatch ``k``, see :func:`sending`), to the next queue or the parent.
SENDING = -16


def sending(index: int) -> int:
    """The ``current`` value of a worker sending the output of minibatch ``index``.

    Not a minibatch it runs (the wait for room downstream is backpressure:
    no ``timeout``), but one a death names, and one a retry counts.
    """
    return SENDING - index


def sent_minibatch(current: int) -> int | None:
    """The minibatch whose output a worker is sending, from its ``current`` value (else ``None``)."""
    return SENDING - current if current <= SENDING else None

#: ``active_run`` value between runs: workers drop every task they get.
IDLE_RUN = -1
#: ``active_run`` value of an aborted runtime: workers exit as soon as they can.
CLOSING = -2


@dataclass(frozen=True)
class StageSpec:
    """The plain, picklable description of one stage of a lane.

    Parameters
    ----------
    name : str
        The step name.
    lane : int
        Index of the lane (a union branch; 0 in a sequential pipeline).
    index : int
        Position of the stage in its lane.
    n_workers : int
        Number of workers.
    max_queue_size : int
        Bound of the stage's input queue.
    payload : bytes
        The saved step; each worker loads its own copy.
    worker_arguments : list of list of (str, Any)
        Per-worker ``(param, value)`` pairs.
    may_change_length : bool
        Whether the step may return another number of rows than it got.
    hooks : bytes
        The pipeline's hooks, saved by :func:`~neuraxle_stream.hooks.dump_hooks`.
    step_index : int or None
        Position of the step in the pipeline (``index`` when ``None``), as
        hooks see it in :class:`~neuraxle_stream.hooks.StageInfo`.
    trace : bool, default=False
        Whether the workers record every call their step receives and send
        the records back with each minibatch (a traced call).
    chained : tuple of StageSpec, default=()
        The steps chained after this one (see ``Plan.specs``): the same
        workers run them, one after another, on each minibatch, in their own
        memory. Each keeps its own name, hooks, trace and stats; their
        ``n_workers`` is this stage's.
    """

    name: str
    lane: int
    index: int
    n_workers: int
    max_queue_size: int
    payload: bytes = field(repr=False)
    worker_arguments: list[list[tuple[str, Any]]] = field(default_factory=list)
    may_change_length: bool = False
    hooks: bytes = field(default=b"", repr=False)
    step_index: int | None = None
    #: Record each call the step receives (see :mod:`~neuraxle_stream.tracing`).
    trace: bool = False
    #: The caller's ``sklearn.get_config()`` when the call began: the workers run under it
    #: (``transform_output``, ``enable_metadata_routing``, ...), as joblib's sklearn workers do.
    sklearn_config: dict[str, Any] = field(default_factory=dict)
    #: The steps that run after this one in the same workers (a chained stage).
    chained: tuple[StageSpec, ...] = ()
    #: Why the plan grouped the stage's steps so (``stats_.plan.reasons``); not part of the repr.
    layout: str = field(default="", repr=False, compare=False)
    #: A digest of ``payload`` and ``hooks``, so that the repr (a key of kept runtimes) changes with them.
    digest: str = field(init=False, default="")

    @property
    def steps(self) -> tuple[StageSpec, ...]:
        """The steps this stage's workers run on each minibatch, in order: itself, then its chained steps."""
        return (self, *self.chained)

    @property
    def last(self) -> StageSpec:
        """The step whose output this stage passes on."""
        return self.chained[-1] if self.chained else self

    def __post_init__(self) -> None:
        digest = hashlib.blake2b(self.payload, digest_size=8)
        digest.update(self.hooks)
        for step in self.chained:
            digest.update(step.digest.encode())
        object.__setattr__(self, "digest", digest.hexdigest())
