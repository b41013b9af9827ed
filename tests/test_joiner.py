"""Tests for neuraxle_stream.joiner: the one place where results are put back in order."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neuraxle_stream import MinibatchError, RemoteTraceback, WorkersJoiner


def arrivals(n: int, lanes: int, seed: int) -> list[tuple[int, int]]:
    """Every (index, lane) pair once, in a random completion order."""
    pairs = [(i, lane) for i in range(n) for lane in range(lanes)]
    random.Random(seed).shuffle(pairs)
    return pairs


@given(n=st.integers(0, 60), lanes=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_pop_ready_restores_input_order_whatever_the_arrival_order(
    n: int, lanes: int, seed: int
) -> None:
    joiner = WorkersJoiner(n_worker_wrappers_to_join=lanes)
    out = []
    for index, lane in arrivals(n, lanes, seed):
        joiner.add(index, lane, f"{index}/{lane}")
        out.extend(joiner.pop_ready())
    assert out == [(i, [f"{i}/{lane}" for lane in range(lanes)]) for i in range(n)]
    assert len(joiner) == 0


@given(n=st.integers(0, 60), lanes=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_pop_completed_yields_each_minibatch_once_as_soon_as_all_lanes_are_in(
    n: int, lanes: int, seed: int
) -> None:
    joiner = WorkersJoiner(n_worker_wrappers_to_join=lanes)
    seen: dict[int, int] = {}
    out = []
    for index, lane in arrivals(n, lanes, seed):
        joiner.add(index, lane, (index, lane))
        seen[index] = seen.get(index, 0) + 1
        done = list(joiner.pop_completed())
        # exactly the minibatch just completed, if this was its last lane
        assert [i for i, _ in done] == ([index] if seen[index] == lanes else [])
        out.extend(done)
    assert sorted(i for i, _ in out) == list(range(n))
    assert all(outputs == [(i, lane) for lane in range(lanes)] for i, outputs in out)
    assert len(joiner) == 0


def test_holds_results_until_their_turn() -> None:
    joiner = WorkersJoiner()
    joiner.add(2, 0, "c")
    joiner.add(1, 0, "b")
    assert list(joiner.pop_ready()) == [] and len(joiner) == 2
    joiner.add(0, 0, "a")
    assert list(joiner.pop_ready()) == [(0, ["a"]), (1, ["b"]), (2, ["c"])]


def test_none_is_a_valid_output() -> None:
    joiner = WorkersJoiner(n_worker_wrappers_to_join=2)
    joiner.add(0, 1, None)
    joiner.add(0, 0, None)
    assert list(joiner.pop_ready()) == [(0, [None, None])]


@pytest.mark.parametrize("already_popped", [False, True])
def test_a_result_joined_twice_is_an_error(already_popped: bool) -> None:
    joiner = WorkersJoiner()
    joiner.add(0, 0, "a")
    if already_popped:
        list(joiner.pop_ready())
    with pytest.raises(RuntimeError, match="Minibatch 0 was joined twice"):
        joiner.add(0, 0, "again")


def test_fail_raises_the_worker_exception_with_cause_and_note() -> None:
    error = MinibatchError.capture(
        KeyError("missing"), step_name="scale", worker_index=1, index=4, run_id=1, portable=True
    )
    with pytest.raises(KeyError, match="missing") as info:
        WorkersJoiner().fail(error)
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert info.value.__notes__ == [
        "Raised in a worker of the queued pipeline: step 'scale', worker 1, minibatch 4."
    ]


def test_neuraxle_signature_is_kept() -> None:
    joiner = WorkersJoiner(batch_size=10, n_worker_wrappers_to_join=3)
    assert joiner.batch_size == 10 and joiner.n_worker_wrappers_to_join == 3
