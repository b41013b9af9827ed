"""The joiner: the one place where results are put back in input order.

Results arrive from the workers in completion order, tagged with the integer
sequence number of their minibatch. The joiner holds each result until the
results of every lane (union branch) for that minibatch are in, then hands
minibatches out in sequence order (or as completed). Each result is stored and
popped once: O(1) per minibatch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .messages import MinibatchError

__all__ = ["WorkersJoiner"]


class WorkersJoiner:
    """Gathers results, restores order by minibatch sequence number, raises failures.

    Parameters
    ----------
    batch_size : int or None, default=None
        Kept for Neuraxle compatibility; the joiner does not need it.
    n_worker_wrappers_to_join : int or None, default=None
        Number of lanes (union branches) whose results make one minibatch;
        ``None`` means one.

    Examples
    --------
    >>> joiner = WorkersJoiner(n_worker_wrappers_to_join=2)
    >>> joiner.add(1, 0, "b0"); joiner.add(1, 1, "b1"); joiner.add(0, 1, "a1")
    >>> list(joiner.pop_ready())
    []
    >>> joiner.add(0, 0, "a0")
    >>> list(joiner.pop_ready())
    [(0, ['a0', 'a1']), (1, ['b0', 'b1'])]
    """

    def __init__(self, batch_size: int | None = None, n_worker_wrappers_to_join: int | None = None) -> None:
        self.batch_size = batch_size
        self.n_worker_wrappers_to_join = n_worker_wrappers_to_join
        self._n_lanes = n_worker_wrappers_to_join or 1
        self._partial: dict[int, list[Any]] = {}
        self._missing: dict[int, int] = {}
        self._complete: dict[int, list[Any] | None] = {}
        self._completion_order: list[int] = []
        self._next = 0

    def add(self, index: int, lane: int, output: Any) -> None:
        """Record the output of ``lane`` for minibatch ``index``."""
        if index < self._next or index in self._complete:
            raise RuntimeError(f"Minibatch {index} was joined twice.")
        slots = self._partial.get(index)
        if slots is None:
            slots = self._partial[index] = [None] * self._n_lanes
            self._missing[index] = self._n_lanes
        slots[lane] = output
        self._missing[index] -= 1
        if self._missing[index] == 0:
            del self._missing[index]
            self._complete[index] = self._partial.pop(index)
            self._completion_order.append(index)

    @property
    def n_lanes(self) -> int:
        """Lanes whose results make one minibatch."""
        return self._n_lanes

    def skip(self, index: int) -> None:
        """Minibatch ``index`` has no output (it was skipped): it pops as ``(index, None)``, in its turn."""
        if index < self._next or index in self._complete:
            return
        self._partial.pop(index, None)
        self._missing.pop(index, None)
        self._complete[index] = None
        self._completion_order.append(index)

    def fail(self, error: MinibatchError) -> None:
        """Raise the failure carried by ``error`` in the caller."""
        raise error.to_exception()

    def pop_ready(self) -> Iterator[tuple[int, list[Any] | None]]:
        """Yield the complete minibatches that are next in sequence order."""
        self._completion_order.clear()
        while self._next in self._complete:
            index = self._next
            self._next += 1
            yield index, self._complete.pop(index)

    def pop_completed(self) -> Iterator[tuple[int, list[Any] | None]]:
        """Yield every complete minibatch, in the order they completed."""
        order, self._completion_order = self._completion_order, []
        for index in order:
            yield index, self._complete.pop(index)

    def __len__(self) -> int:
        """Number of minibatches held (partial or complete)."""
        return len(self._partial) + len(self._complete)
