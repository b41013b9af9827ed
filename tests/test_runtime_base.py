"""Tests for neuraxle_stream.runtime_base: the one interface of the runtimes and what they share.

The supervisor loop itself is exercised through both runtimes (test_runtime.py,
test_ray.py); these pin the shared pieces: the interface, the in-flight bound,
the credits, the run state and the reading of minibatches.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from neuraxle_stream.joiner import WorkersJoiner
from neuraxle_stream.messages import QueuedMinibatchTask, TaskRecord
from neuraxle_stream.ray_backend import RayRuntime
from neuraxle_stream.runtime import Runtime
from neuraxle_stream.runtime_base import (
    BaseRuntime,
    Credits,
    Minibatch,
    RunFailed,
    RunState,
    in_flight_bound,
    minibatch_task,
    next_run_id,
)
from neuraxle_stream.stages import StageSpec


def _spec(name: str, n_workers: int, queue: int, lane: int = 0, index: int = 0) -> StageSpec:
    return StageSpec(name=name, lane=lane, index=index, n_workers=n_workers, max_queue_size=queue, payload=b"")


class _ListRuntime(BaseRuntime):
    """A runtime whose one 'stage' doubles each item in the caller's thread: the loop, without workers."""

    def __init__(self, lanes: list[list[StageSpec]], fail_at: int | None = None) -> None:
        super().__init__(lanes)
        self.fail_at = fail_at
        self.events: list[str] = []
        self.pending: QueuedMinibatchTask | None = None

    def start(self) -> None:
        self.started = True
        self.events.append("start")

    def close(self, graceful: bool = True) -> None:
        self.started = False
        self.events.append(f"close graceful={graceful}")

    def stop(self) -> None:  # pragma: no cover - not used here
        pass

    def _begin_run(self, run: RunState, source: Iterator[Minibatch]) -> None:
        self.source = source
        self.events.append("begin")

    def _feed(self, run: RunState) -> None:
        """One minibatch per turn of the loop."""
        if run.total is None and run.credits.take(blocking=False):
            batch = next(self.source, None)
            if batch is None:
                run.total = run.fed
                run.credits.give()
                return
            self.pending = minibatch_task(batch, run.fed, run.run_id)
            run.fed += 1

    def _collect(self, run: RunState) -> None:
        task, self.pending = self.pending, None
        if task is None:
            return
        if task.index == self.fail_at:
            raise RunFailed(ValueError(f"minibatch {task.index}"))
        for lane in range(len(self.lanes)):
            run.add_output(type(task)(task.index, [2 * x for x in task.data_inputs]), lane)

    def _check_timeouts(self) -> None:
        self.events.append("timeouts")

    def _end_run(self, run: RunState, ok: bool) -> None:
        self.events.append(f"end ok={ok}")


def test_both_runtimes_implement_the_one_interface() -> None:
    assert issubclass(Runtime, BaseRuntime) and issubclass(RayRuntime, BaseRuntime)
    with pytest.raises(TypeError, match="abstract"):
        BaseRuntime([[_spec("a", 1, 1)]])  # type: ignore[abstract]


def test_the_in_flight_bound_is_the_longest_lanes_queues_and_workers_plus_one() -> None:
    lanes = [[_spec("a", 2, 3), _spec("b", 1, 4, index=1)], [_spec("c", 5, 5, lane=1)]]
    assert in_flight_bound(lanes) == (2 + 3) + (1 + 4) + 1
    assert Runtime(lanes, backend=None, timeout=None).max_in_flight == 11  # type: ignore[arg-type]
    assert RayRuntime(lanes).max_in_flight == 11


def test_run_ids_are_unique_across_runtimes() -> None:
    ids = [next_run_id() for _ in range(3)]
    assert ids == sorted(set(ids)) and ids[0] > 0


def test_credits_bound_and_release_waiters() -> None:
    credits = Credits(2)
    assert credits.take(blocking=False) and credits.take(blocking=False)
    assert not credits.take(blocking=False)
    credits.give()
    assert credits.take(blocking=False)
    got = threading.Event()

    def waiter() -> None:
        credits.take()
        got.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    assert not got.wait(0.05)
    credits.release_waiters()
    assert got.wait(5.0)
    thread.join(5.0)


def test_minibatch_task_reads_data_targets_and_params() -> None:
    plain = minibatch_task(Minibatch(3, [1, 2], [0, 1], rows=2), 3, 7)
    assert (plain.index, plain.data_inputs, plain.expected_outputs, plain.run_id, plain.params) == (
        3, [1, 2], [0, 1], 7, None,
    )
    routed = minibatch_task(Minibatch(0, [1], rows=1, params={"s": {"w": [1.0]}}), 0, 8)
    assert routed.params == {"s": {"w": [1.0]}}


def test_run_state_joins_counts_and_passes_records_on() -> None:
    seen: list[Any] = []

    class Observer:
        def add(self, records: Any, attempt: int = 1) -> None:
            seen.append((*records, attempt))

    run = RunState(1, WorkersJoiner(n_worker_wrappers_to_join=1), Credits(4), observer=Observer())  # type: ignore[arg-type]
    record = TaskRecord("s", 0, 1, 0.0, 0.1, 0.0, None)
    run.add_records(0, (record,), ())
    assert seen == [(record, 1)]  # the records, of the first attempt
    assert run.credits.take(blocking=False)
    run.add_output(minibatch_task(Minibatch(0, [5], rows=1), 0, 1), 0)
    run.total = 1
    assert list(run.pop_ready()) == [(0, [[5]])]
    assert run.done == 1 and run.complete


def test_the_supervisor_loop_runs_its_named_steps_in_order() -> None:
    runtime = _ListRuntime([[_spec("a", 1, 1)], [_spec("b", 1, 1, lane=1)]])
    out = list(runtime.run([Minibatch(0, [1, 2], rows=2), Minibatch(1, [3], rows=1)]))
    assert out == [(0, [[2, 4], [2, 4]]), (1, [[6], [6]])]
    assert runtime.events[:2] == ["start", "begin"] and runtime.events[-1] == "end ok=True"
    assert "timeouts" in runtime.events and not runtime.broken


def test_a_run_failure_leaves_the_runtime_usable_and_other_errors_break_it() -> None:
    runtime = _ListRuntime([[_spec("a", 1, 1)]], fail_at=1)
    with pytest.raises(ValueError, match="minibatch 1"):
        list(runtime.run([Minibatch(0, [1], rows=1), Minibatch(1, [2], rows=1)]))
    assert runtime.events[-1] == "end ok=False" and not runtime.broken

    def source() -> Iterator[Minibatch]:
        yield Minibatch(0, [1], rows=1)
        raise KeyboardInterrupt

    runtime = _ListRuntime([[_spec("a", 1, 1)]])
    with pytest.raises(KeyboardInterrupt):
        list(runtime.run(source()))
    assert runtime.broken


def test_closing_the_generator_early_leaves_the_runtime_usable() -> None:
    runtime = _ListRuntime([[_spec("a", 1, 1)]])
    gen = runtime.run([Minibatch(i, [i + 1], rows=1) for i in range(3)])
    assert next(gen) == (0, [[2]])
    gen.close()
    assert runtime.events[-1] == "end ok=False" and not runtime.broken


def test_the_context_manager_closes() -> None:
    with _ListRuntime([[_spec("a", 1, 1)]]) as runtime:
        runtime.start()
    assert runtime.events[-1] == "close graceful=True"
