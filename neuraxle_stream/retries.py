"""Long runs: which failed minibatches run again, which are skipped, and the record of each loss.

A run decides, in its supervisor, what a failed minibatch becomes::

    failure of minibatch k ──▶ RetryPolicy.retries(...)? ── yes ──▶ run k again (from its original input)
      (step error, dead or                │ no
       timed-out worker)                  ▼
                               on_error="skip" and within max_failures? ── yes ──▶ drop k, warn,
                                          │ no                                      FailureRecord
                                          ▼
                               the run fails with the error (FailureRecord)

:class:`RetryPolicy` is read once into the plan from a composite's
``max_retries``, ``retry_on``, ``on_error`` and ``max_failures``;
:class:`Attempts` is one run's book of failures per minibatch;
:class:`FailureRecord` is what ``stats_.failures`` holds for each minibatch
that was skipped or ended the run.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

__all__ = ["Attempts", "FailureRecord", "RetryPolicy", "SkippedMinibatchWarning", "warn_skipped"]

class SkippedMinibatchWarning(UserWarning):
    """A minibatch failed every attempt and was skipped (``on_error="skip"``)."""


@dataclass(frozen=True)
class FailureRecord:
    """A minibatch that failed every attempt: skipped (``on_error="skip"``) or the one that ended the run.

    Attributes
    ----------
    step : str
        The step that failed on it (the step whose worker died, for a death).
    minibatch : int
        Its sequence number in the run.
    first_item : int
        Index of its first item in the input (``minibatch * batch_size``), to find the bad input.
    n_items : int
        Its items (-1 when not known).
    error_type : str
        The exception's class name (``"BrokenPipelineError"`` for a dead worker).
    message : str
        The exception's message.
    attempts : int
        How many times it ran (``max_retries + 1`` when every retry was spent).
    """

    step: str
    minibatch: int
    first_item: int
    n_items: int
    error_type: str
    message: str
    attempts: int


@dataclass(frozen=True)
class RetryPolicy:
    """What a run does with a minibatch that failed (the plan's reading of the four parameters).

    Parameters
    ----------
    max_retries : int, default=0
        Times a minibatch runs again after its worker died (or timed out) or
        its step raised one of ``retry_on``.
    retry_on : tuple of exception types, default=()
        The step errors worth another attempt.
    on_error : {"raise", "skip"}, default="raise"
        ``"skip"``: a minibatch that failed every attempt is dropped (``stream`` only).
    max_failures : int, float or None, default=None
        With ``"skip"``: the skipped minibatches allowed (an int count, or a
        float fraction of the minibatches fed so far, at least one for any
        fraction above 0); ``None``: no limit.
    """

    max_retries: int = 0
    retry_on: tuple[type[BaseException], ...] = ()
    on_error: str = "raise"
    max_failures: int | float | None = None

    @property
    def active(self) -> bool:
        """Whether a failure may be anything but the end of the run."""
        return self.max_retries > 0 or self.on_error == "skip"

    def retries(self, error: BaseException | None, attempts: int) -> bool:
        """Whether a minibatch that failed ``attempts`` times (the last with ``error``; ``None``: its worker died) runs again."""
        if attempts > self.max_retries:
            return False
        return error is None or isinstance(error, self.retry_on)

    def skips(self, skipped: int, seen: int) -> bool:
        """Whether one more skipped minibatch (``skipped`` in all, of ``seen``) is within the budget."""
        if self.on_error != "skip":
            return False
        budget = self.max_failures
        if budget is None:
            return True
        if isinstance(budget, float):
            # a fraction above 0 allows one skip whatever was seen: a failure in the
            # first minibatches does not end the run on its own
            return budget > 0 and skipped <= max(1.0, budget * seen)
        return skipped <= budget


@dataclass
class Attempts:
    """One run's book of failures: attempts per minibatch in flight, the minibatches skipped, the records."""

    failed: dict[int, int] = field(default_factory=dict)
    #: Minibatches whose worker died on every failed attempt (the likely "poison" inputs).
    deaths: dict[int, int] = field(default_factory=dict)
    skipped: int = 0
    records: list[FailureRecord] = field(default_factory=list)

    def fail(self, index: int, died: bool) -> int:
        """Count one more failed attempt of minibatch ``index``; return its failed attempts so far."""
        n = self.failed[index] = self.failed.get(index, 0) + 1
        if died:
            self.deaths[index] = self.deaths.get(index, 0) + 1
        return n

    def died_each_time(self, index: int) -> bool:
        """Whether every failed attempt of minibatch ``index`` ended in its worker's death."""
        return self.failed.get(index, 0) > 0 and self.deaths.get(index, 0) == self.failed[index]

    def done(self, index: int) -> None:
        """Minibatch ``index`` is out (or dropped): forget its attempts."""
        self.failed.pop(index, None)
        self.deaths.pop(index, None)

    def record(
        self, step: str, index: int, first_item: int, n_items: int, error: BaseException,
    ) -> FailureRecord:
        """Keep (and return) the record of minibatch ``index``, which failed every attempt with ``error``."""
        message = str(error.args[0]) if len(error.args) == 1 else str(error)
        record = FailureRecord(
            step, index, first_item, n_items, type(error).__name__, message, self.failed.get(index, 1),
        )
        self.records.append(record)
        return record


def warn_skipped(record: FailureRecord) -> None:
    """Say that ``record``'s minibatch was skipped: a :class:`SkippedMinibatchWarning` naming the step, minibatch and error.

    ``logging.captureWarnings(True)`` sends it to the ``py.warnings`` logger.
    """
    text = (
        f"Skipped minibatch {record.minibatch} (items {record.first_item}.."
        f"{record.first_item + max(record.n_items, 1) - 1}) after {record.attempts} attempt(s): "
        f"step {record.step!r} raised {record.error_type}: {record.message}"
    )
    warnings.warn(text, SkippedMinibatchWarning, stacklevel=2)
