"""Tests for neuraxle_stream.minibatches: the minibatching policy and the Minibatch it cuts."""

from __future__ import annotations

import numpy as np
import pytest

from neuraxle_stream.minibatches import (
    DEFAULT_BATCH_SIZE,
    Minibatch,
    Minibatching,
    StripAbsentValues,
)


def test_the_default_batch_size_is_32_for_none() -> None:
    assert DEFAULT_BATCH_SIZE == 32
    assert Minibatching.of(None).batch_size == 32
    assert Minibatching.of(7).batch_size == 7


def test_last_short_minibatch_is_kept_as_it_is_by_default() -> None:
    batches = list(Minibatching.of(3).batches(list(range(7))))
    assert [b.data for b in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [b.index for b in batches] == [0, 1, 2]
    assert [(b.rows, b.padding) for b in batches] == [(3, 0), (3, 0), (1, 0)]


def test_last_short_minibatch_is_dropped_without_keep_incomplete() -> None:
    policy = Minibatching.of(3, keep_incomplete=False)
    assert [b.data for b in policy.batches(list(range(7)))] == [[0, 1, 2], [3, 4, 5]]
    assert policy.expected_items(list(range(7))) == 6


def test_last_short_minibatch_is_padded_and_unpadded() -> None:
    policy = Minibatching.of(3, default_value=-1)
    last = list(policy.batches(np.arange(7)))[-1]
    assert last.data.tolist() == [6, -1, -1]
    assert (last.rows, last.padding) == (1, 2)
    assert last.unpad(np.array([60, 0, 0])).tolist() == [60]
    assert last.unpadded().tolist() == [6]
    assert policy.expected_items(np.arange(7)) == 9


def test_strip_absent_values_means_no_padding() -> None:
    policy = Minibatching.of(3, default_value=StripAbsentValues())
    assert not policy.pads
    assert [b.data for b in policy.batches([1, 2, 3, 4])] == [[1, 2, 3], [4]]


def test_params_are_cut_with_the_rows_and_padding() -> None:
    calls: list[tuple[int, int, int]] = []

    class Cutter:
        def at(self, start: int, n: int, n_pad: int = 0) -> dict[str, dict[str, object]]:
            calls.append((start, n, n_pad))
            return {"step": {"rows": (start, n, n_pad)}}

    batches = list(Minibatching.of(2, default_value=0).batches([1, 2, 3], Cutter()))
    assert calls == [(0, 2, 0), (2, 1, 1)]
    assert batches[1].params == {"step": {"rows": (2, 1, 1)}}


def test_a_minibatch_is_frozen() -> None:
    batch = Minibatch(0, [1])
    with pytest.raises(AttributeError):
        batch.index = 1  # type: ignore[misc]
