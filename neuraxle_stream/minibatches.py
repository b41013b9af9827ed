"""Minibatches: how a call's input is cut into the units the workers run.

:class:`Minibatching` is the policy a plan holds (``batch_size``, what
becomes of the last short minibatch, its padding); :meth:`Minibatching.batches`
cuts an input into :class:`Minibatch` values, the only form in which data
(and ``batch_size``, through their length) reach a runtime. A padded
minibatch carries its own padding, so its outputs are cut back with
:meth:`Minibatch.unpad`, with no table kept on the side.

The pad/drop rule of the last minibatch is written here once:

- ``keep_incomplete=False``: the last short minibatch is dropped;
- a pad value (``default_value_data_inputs``, not ``None`` nor
  :class:`StripAbsentValues`): it is padded to ``batch_size`` rows, and the
  outputs of the padded rows are removed again;
- otherwise it is kept short.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from . import _containers

__all__ = ["DEFAULT_BATCH_SIZE", "Minibatch", "Minibatching", "ParamsCutter", "StripAbsentValues"]

#: ``batch_size`` when none is given (the pipelines' default; a standalone wrapper's ``None``).
DEFAULT_BATCH_SIZE = 32


class StripAbsentValues:
    """A ``default_value_*`` that trims the last short minibatch instead of padding it.

    Examples
    --------
    >>> from neuraxle_stream import SequentialQueuedPipeline, Identity
    >>> p = SequentialQueuedPipeline([Identity()], batch_size=2, use_processes=False,
    ...                              default_value_data_inputs=StripAbsentValues())
    >>> p.transform([1, 2, 3])
    [1, 2, 3]
    """

    def __repr__(self) -> str:
        return "StripAbsentValues()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StripAbsentValues)

    def __hash__(self) -> int:
        return hash(StripAbsentValues)


class ParamsCutter(Protocol):
    """What cuts a call's ``transform`` metadata per minibatch (``_routing.MinibatchParams``)."""

    def at(self, start: int, n: int, n_pad: int = 0) -> dict[str, dict[str, Any]]:
        """The params of rows ``[start, start + n)``, padded by ``n_pad`` rows."""
        ...


@dataclass(frozen=True)
class Minibatch:
    """One minibatch of a call, as the runtime takes it.

    ``index`` is its position in the input (0, 1, ...); ``data`` its rows
    (``rows`` of them from the input, then ``padding`` added ones);
    ``targets`` its expected outputs (``None``: the workers only transform);
    ``params`` the ``transform`` metadata of its rows, by step name;
    ``output`` where the last stage writes its output in place (a
    ``shared_rows.RowsTarget``; ``None``: it sends it).
    """

    index: int
    data: Any
    targets: Any = None
    rows: int = 0
    padding: int = 0
    params: dict[str, dict[str, Any]] | None = None
    output: Any = None

    def unpad(self, out: Any) -> Any:
        """``out`` without the outputs of the padded rows."""
        return _containers.slice_rows(out, 0, self.rows) if self.padding else out

    def unpadded(self) -> Any:
        """The minibatch's own rows (``data`` without its padding)."""
        return self.unpad(self.data)


@dataclass(frozen=True)
class Minibatching:
    """How a call cuts its input: ``batch_size`` rows each, and the last short one's fate.

    Parameters
    ----------
    batch_size : int
        Rows per minibatch.
    keep_incomplete : bool
        Keep the last short minibatch (``False`` drops it).
    pad_value : Any
        The value of the padded rows of the last short minibatch.
    pads : bool
        Whether the last short minibatch is padded to ``batch_size`` rows.
    """

    batch_size: int = DEFAULT_BATCH_SIZE
    keep_incomplete: bool = True
    pad_value: Any = None
    pads: bool = False

    @classmethod
    def of(
        cls,
        batch_size: int | None,
        keep_incomplete: bool = True,
        default_value: Any = None,
        default_target: Any = None,
    ) -> Minibatching:
        """The policy of a composite's parameters (``batch_size=None``: the default).

        As in Neuraxle, a non-``None`` ``default_value_data_inputs`` or
        ``default_value_expected_outputs`` pads the last short minibatch (its
        rows with ``default_value``, which may then be ``None``), unless
        ``default_value`` is :class:`StripAbsentValues`. The parent fits on
        whole inputs and the workers only transform, so no padded target
        ever reaches a step: ``default_target`` only decides the padding.
        """
        strip = isinstance(default_value, StripAbsentValues)
        pads = not strip and (default_value is not None or default_target is not None)
        return cls(batch_size or DEFAULT_BATCH_SIZE, keep_incomplete, None if strip else default_value, pads)

    def batches(self, X: Any, params: ParamsCutter | None = None) -> Iterator[Minibatch]:
        """The minibatches of ``X``, with their ``transform`` metadata cut from ``params``."""
        size = self.batch_size
        offset = 0
        for index, batch in enumerate(_containers.iter_row_batches(X, size)):
            n = _containers.num_rows(batch)
            padding = 0
            if n < size:
                if not self.keep_incomplete:
                    return
                if self.pads:
                    padding = size - n
                    batch = _containers.pad_rows(batch, padding, self.pad_value)
            cut = None if params is None else params.at(offset, n, padding)
            yield Minibatch(index, batch, None, n, padding, cut)
            offset += n

    def expected_items(self, X: Any) -> int | None:
        """Rows each step will receive from ``X``, when ``X`` has a length (for progress bars)."""
        try:
            n = _containers.num_rows(X) if _containers.is_sequence(X) else len(X)
        except TypeError:
            return None
        short = n % self.batch_size
        if short and not self.keep_incomplete:
            return n - short
        if short and self.pads:
            return n - short + self.batch_size
        return n

    def first_rows(self, X: Any) -> int:
        """Rows of ``X``'s first minibatch (``X`` a sequence)."""
        return min(self.batch_size, _containers.num_rows(X))
