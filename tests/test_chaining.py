"""Chained stages (``chain="auto"``): which steps share workers, and that nothing per step is lost.

The rule (``chaining.chain_layout``) is checked on parsed steps, with the number
of cores given, so that the layouts do not depend on the machine; the runs
check that chained and unchained pipelines give the sequential reference's
outputs, and that stats, hooks, traces, caches and errors still name each
step. No timing assertions.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from doubles import AddConstant, MultiplyBy, add_one, square
from faults import (
    BlocksAt,
    FlakyAt,
    KillsItselfAt,
    PassThrough,
    RaisesAt,
    RaisesInSetup,
    RaisesInTeardown,
    blocking_armed,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from neuraxle_stream import (
    BrokenPipelineError,
    InvalidParameterError,
    ParallelQueuedFeatureUnion,
    PipelineHook,
    SequentialQueuedPipeline,
    StageInfo,
)
from neuraxle_stream import chaining as chaining_module
from neuraxle_stream._validation import parse_steps
from neuraxle_stream.lifecycle import lifecycle_of
from neuraxle_stream.plan import MIN_MEASURED_BUSY, StepCost, chain_groups, chain_layout

CHAINS = ["auto", False]


@pytest.fixture(autouse=True, scope="module")
def four_cores() -> Iterator[None]:
    """The runs plan for 4 cores, whatever the machine: 2 + 2 thread workers chain into 4."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(chaining_module, "_cores", lambda: 4)
        yield


def layout(steps: list[Any], chain: Any = "auto", cores: int = 2, backend: str = "process",
           **kw: Any) -> list[tuple[tuple[str, ...], int]]:
    descs = parse_steps(steps, "SequentialQueuedPipeline", 1, None)
    return [(tuple(d.name for d in group), k) for group, k in chain_groups(descs, chain, backend, cores=cores, **kw)]


def reasons(steps: list[Any], chain: Any = "auto", cores: int = 2, **kw: Any) -> list[str]:
    descs = parse_steps(steps, "SequentialQueuedPipeline", 1, None)
    return [g.reason for g in chain_layout(descs, chain, "process", cores=cores, **kw)]


#: What an earlier call measured: a step that mostly waited (I/O-like), one that computed.
WAITED, COMPUTED = StepCost(busy_time=2.0, cpu_time=0.1), StepCost(busy_time=2.0, cpu_time=1.9)


# -- the rule ------------------------------------------------------------------------------


def test_w1_chains_into_one_group_of_two_workers() -> None:
    # stage 1 cheap and stateless, stage 2 the work: 2 + 2 workers on 2 cores
    assert layout([("make", 2, add_one), ("mix", 2, square)]) == [(("make", "mix"), 2)]
    assert layout([("make", 2, add_one), ("mix", 2, square)], cores=16) == [(("make", "mix"), 4)]


def test_balanced_one_plus_one_keeps_both_cores_busy() -> None:
    assert layout([("a", 1, AddConstant()), ("b", 1, MultiplyBy())]) == [(("a", "b"), 2)]


def test_chain_false_keeps_the_steps_as_written() -> None:
    assert layout([("make", 2, add_one), ("mix", 2, square)], chain=False) == [(("make",), 2), (("mix",), 2)]


def test_a_fitted_step_never_gets_more_copies_than_its_workers() -> None:
    # the chain would get 2 workers: the scaler, with 1, stays on its own
    assert layout([("a", 1, AddConstant()), ("scale", 1, StandardScaler())]) == [(("a",), 1), (("scale",), 1)]
    # with as many workers as the chain gets, it may share them
    assert layout([("a", 1, AddConstant()), ("scale", 2, StandardScaler())]) == [(("a", "scale"), 2)]


def test_steps_with_settings_of_their_own_are_never_chained() -> None:
    args = [[("value", 1.0)], [("value", 2.0)]]
    steps = [("a", 1, AddConstant()), ("b", 2, args, 4, AddConstant()), ("c", 1, AddConstant()),
             ("d", 1, 3, AddConstant()), ("e", 1, AddConstant()), ("f", 1, AddConstant())]
    assert layout(steps) == [(("a",), 1), (("b",), 2), (("c",), 1), (("d",), 1), (("e", "f"), 2)]
    assert layout(steps[4:], ray_options={"e": {"num_cpus": 1}}) == [(("e",), 1), (("f",), 1)]


def test_process_chains_are_capped_by_the_cores_thread_chains_form_within_them() -> None:
    steps = [("a", 2, add_one), ("b", 3, square)]
    assert layout(steps, cores=2) == [(("a", "b"), 3)]  # no fewer than a step asked for
    assert layout(steps, cores=4) == [(("a", "b"), 4)]
    # threads: 5 threads running both steps on 2 cores would thrash them, and 3 could slow
    # down steps that wait: as written; with the cores for all 5, chained
    assert layout(steps, backend="thread", cores=2) == [(("a",), 2), (("b",), 3)]
    assert layout(steps, backend="thread", cores=8) == [(("a", "b"), 5)]
    assert layout([("a", 1, add_one), ("b", 1, square)], backend="thread", cores=2) == [(("a", "b"), 2)]
    # measured computing: still as written (fewer threads than written could slow down a step that waits)
    assert layout(steps, backend="thread", cores=2, costs={"a": COMPUTED, "b": COMPUTED}) == [(("a",), 2), (("b",), 3)]
    assert layout(steps, backend="ray", cores=2) == [(("a", "b"), 5)]


# -- the rule, refined by what earlier calls measured -------------------------------------------


def test_a_chain_holding_a_step_that_waits_is_not_capped_by_the_cores() -> None:
    steps = [("read", 2, add_one), ("mix", 2, square)]
    assert layout(steps) == [(("read", "mix"), 2)]  # nothing measured yet: capped
    assert layout(steps, costs={"read": WAITED}) == [(("read", "mix"), 4)]  # the processes unchained had
    assert layout(steps, costs={"mix": WAITED}) == [(("read", "mix"), 4)]
    assert layout(steps, costs={"read": COMPUTED, "mix": COMPUTED}) == [(("read", "mix"), 2)]
    too_short = StepCost(busy_time=MIN_MEASURED_BUSY / 2, cpu_time=0.0)  # a few minibatches decide nothing
    assert layout(steps, costs={"read": too_short}) == [(("read", "mix"), 2)]
    # threads: 4 threads do not fit 2 cores, as written unless the chain waits (then all 4)
    written = [(("read",), 2), (("mix",), 2)]
    assert layout(steps, backend="thread") == written
    assert layout(steps, backend="thread", costs={"read": WAITED}) == [(("read", "mix"), 4)]
    assert layout(steps, backend="thread", costs={"read": COMPUTED, "mix": COMPUTED}) == written
    assert layout(steps, backend="thread", cores=4, costs={"read": COMPUTED, "mix": COMPUTED}) == [
        (("read", "mix"), 4)]
    # a thread's share of CPU in a cheap step is low while the others compute: the chain is judged whole
    starved = StepCost(busy_time=0.1, cpu_time=0.04)
    assert layout(steps, backend="thread", costs={"read": starved, "mix": COMPUTED}) == written
    assert layout(steps, backend="thread", costs={"read": StepCost(0.1, 0.1), "mix": WAITED}) == [
        (("read", "mix"), 4)]
    assert layout(steps, chain=False, costs={"read": WAITED}) == [(("read",), 2), (("mix",), 2)]


def test_measurements_never_give_a_fitted_step_more_copies() -> None:
    # uncapped, the chain would have 1 + 1 workers: the scaler (1) stays alone
    steps = [("read", 1, AddConstant()), ("scale", 1, StandardScaler())]
    assert layout(steps, cores=1) == [(("read", "scale"), 1)]
    assert layout(steps, cores=1, costs={"read": WAITED}) == [(("read",), 1), (("scale",), 1)]
    assert reasons(steps, cores=1, costs={"read": WAITED})[1] == (
        "as written: a fitted step would get more than its n_workers copies chained with 'read'"
    )


def test_each_group_says_why_it_is_so() -> None:
    args = [[("value", 1.0)], [("value", 2.0)]]
    steps = [("a", 2, AddConstant()), ("b", 2, AddConstant()), ("c", 2, args, 4, AddConstant()),
             ("d", 1, 3, AddConstant()), ("e", 1, AddConstant())]
    assert reasons(steps) == [
        "chained: 2 workers (the 4 asked for, capped by the 2 cores)",
        "as written: its own worker_arguments",
        "as written: its own max_queue_size",
        "as written",
    ]
    assert reasons(steps[:2], costs={"b": WAITED}) == [
        "chained: 4 workers, not capped by the 2 cores: 'b' mostly waits (CPU 5% of its 2 s in the step, "
        "in earlier calls)"
    ]
    assert reasons(steps[:2], chain=False) == ["as written (chain=False)"] * 2
    assert reasons(steps[:2], cores=8) == ["chained: 4 workers"]
    assert reasons(steps[4:], ray_options={"e": {"num_cpus": 1}}) == ["as written: its own ray_options"]


@pytest.mark.timeout(120)
def test_the_next_call_is_planned_from_the_last_calls_measurements(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chaining_module, "_cores", lambda: 1)  # the layouts do not depend on the machine
    X = np.arange(24.0).reshape(12, 2)
    pipeline = SequentialQueuedPipeline([("read", 1, AddConstant(1.0)), ("mix", 1, MultiplyBy(2.0))], batch_size=3)
    np.testing.assert_allclose(pipeline.transform(X), (X + 1.0) * 2.0)
    first = pipeline.stats_
    assert first.plan == (("read", "mix"),) and first["read"].n_workers == 1
    assert first.plan.reasons == ("chained: 1 worker (the 2 asked for, capped by the 1 cores)",)
    # fake what the call measured: 'read' mostly waited
    lifecycle = lifecycle_of(pipeline)
    stages = dict(first.stages, read=dataclasses.replace(first["read"], busy_time=2.0, cpu_time=0.1))
    lifecycle.stats = dataclasses.replace(first, stages=stages)
    np.testing.assert_allclose(pipeline.transform(X), (X + 1.0) * 2.0)
    second = pipeline.stats_
    assert second.plan == (("read", "mix"),) and second["read"].n_workers == second["mix"].n_workers == 2
    assert second.plan.reason("mix").startswith("chained: 2 workers, not capped by the 1 cores: 'read' mostly waits")


class Sleeps(AddConstant):
    """Waits (sleeps) on each minibatch: its CPU time stays far below its busy time."""

    def transform(self, data_inputs: Any) -> Any:
        time.sleep(0.02)
        return super().transform(data_inputs)


@pytest.mark.timeout(120)
def test_stats_measure_each_steps_cpu_time(backend: str) -> None:
    pipeline = SequentialQueuedPipeline([("sleep", 1, Sleeps(1.0)), ("add", 1, AddConstant(1.0))], batch_size=2,
                                        backend=backend, chain=False)
    pipeline.transform(np.arange(12.0).reshape(6, 2))
    sleep = pipeline.stats_["sleep"]
    assert sleep.busy_time >= 0.06 and 0.0 <= sleep.cpu_time < 0.5 * sleep.busy_time  # generous: it slept
    assert StepCost(sleep.busy_time, sleep.cpu_time).waits


flags = st.tuples(st.integers(1, 4), st.booleans(), st.sampled_from(["plain", "args", "queue"]), st.booleans())


@settings(max_examples=200, deadline=None)
@given(spec=st.lists(flags, min_size=1, max_size=6), cores=st.integers(1, 8), chain=st.sampled_from(CHAINS),
       backend=st.sampled_from(["process", "thread"]))
def test_hypothesis_rule_keeps_the_contract(
    spec: list[tuple[int, bool, str, bool]], cores: int, chain: Any, backend: str,
) -> None:
    steps: list[Any] = []
    costs = {f"s{i}": WAITED if waits else COMPUTED for i, (*_, waits) in enumerate(spec)}
    for i, (n, fitted, kind, _) in enumerate(spec):
        step = StandardScaler() if fitted else AddConstant()
        if kind == "args":
            steps.append((f"s{i}", n, [[("copy", True)] if fitted else [("value", 1.0)]] * n, 2, step))
        elif kind == "queue":
            steps.append((f"s{i}", n, 2, step))
        else:
            steps.append((f"s{i}", n, step))
    groups = layout(steps, chain, cores, backend, costs=costs)
    assert [name for group, _ in groups for name in group] == [f"s{i}" for i in range(len(spec))]
    for group, k in groups:
        members = [spec[int(name[1:])] for name in group]
        if len(group) == 1:
            assert k == members[0][0]  # as written
            continue
        assert chain == "auto"
        assert all(kind == "plain" for _, _, kind, _ in members)
        total, most = sum(n for n, *_ in members), max(n for n, *_ in members)
        # every step measured: a step that waits lifts the cap; on threads, a chain whose steps
        # together compute forms only within the cores, one that waits gets all its threads
        if backend == "process":
            capped = not any(waits for *_, waits in members)
            assert k == (min(total, max(cores, most)) if capped else total)
        else:
            assert k == total
            waits = sum(1.9 if not waits else 0.1 for *_, waits in members) < 0.5 * 2.0 * len(members)
            assert waits or total <= max(cores, most)
        assert k >= most  # no step has fewer workers than it asked for
        assert all(n >= k for n, fitted, _, _ in members if fitted)  # no fitted step gets more copies


# -- runs: outputs equal the sequential reference ----------------------------------------------


frames = hnp.arrays(
    np.float64, st.tuples(st.integers(1, 50), st.integers(1, 4)),
    elements=st.floats(-1e3, 1e3, allow_nan=False, width=32),
)
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@SETTINGS
@given(data=frames, batch_size=st.integers(1, 12), n_workers=st.integers(1, 3), chain=st.sampled_from(CHAINS),
       container=st.sampled_from(["array", "frame"]))
def test_hypothesis_equals_make_pipeline_on_threads(
    data: np.ndarray, batch_size: int, n_workers: int, chain: Any, container: str,
) -> None:
    steps = [AddConstant(0.5), FunctionTransformer(np.tanh), StandardScaler(), MultiplyBy(3.0)]
    X: Any = data if container == "array" else pd.DataFrame(data, columns=[f"c{i}" for i in range(data.shape[1])])
    pipeline = SequentialQueuedPipeline(
        [(f"s{i}", n_workers, s) for i, s in enumerate(steps)], batch_size=batch_size, backend="thread", chain=chain,
    )
    expected = make_pipeline(*[clone(s) for s in steps]).fit_transform(X)
    np.testing.assert_allclose(np.asarray(pipeline.fit_transform(X)), np.asarray(expected), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.asarray(pipeline.transform(X)), np.asarray(expected), rtol=1e-6, atol=1e-9)


@SETTINGS
@given(items=st.lists(st.integers(-1000, 1000), max_size=40), batch_size=st.integers(1, 9),
       n_workers=st.integers(1, 3), chain=st.sampled_from(CHAINS))
def test_hypothesis_per_item_functions_on_threads(items: list[int], batch_size: int, n_workers: int, chain: Any) -> None:
    pipeline = SequentialQueuedPipeline(
        [("one", n_workers, add_one), ("sq", n_workers, square)], batch_size=batch_size, backend="thread", chain=chain,
    )
    assert pipeline.transform(items) == [square(add_one(i)) for i in items]


@pytest.mark.timeout(120)
@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=hnp.arrays(np.float64, st.tuples(st.integers(0, 40), st.just(3)), elements=st.floats(-10, 10)),
       batch_size=st.integers(1, 9), n_workers=st.integers(1, 3))
def test_hypothesis_chained_and_unchained_on_processes(data: np.ndarray, batch_size: int, n_workers: int) -> None:
    steps = [AddConstant(2.0), MultiplyBy(-1.5), FunctionTransformer(np.sin)]
    expected = make_pipeline(*[clone(s) for s in steps]).fit_transform(data)
    for chain in CHAINS:
        pipeline = SequentialQueuedPipeline([(f"s{i}", n_workers, s) for i, s in enumerate(steps)],
                                            batch_size=batch_size, backend="process", chain=chain)
        np.testing.assert_allclose(pipeline.transform(data), expected)


@pytest.mark.timeout(120)
def test_stats_plan_on_both_settings(backend: str) -> None:  # Ray: test_ray.py
    steps = [("make", 2, add_one), ("mix", 2, square)]
    items = list(range(37))
    plans = {}
    for chain in CHAINS:
        pipeline = SequentialQueuedPipeline(steps, batch_size=4, backend=backend, chain=chain)
        assert pipeline.transform(items) == [square(add_one(i)) for i in items]
        stats = pipeline.stats_
        plans[chain] = stats.plan
        for name in ("make", "mix"):  # one row per step, each with its own times
            assert (stats[name].num_tasks, stats[name].num_items, stats[name].num_failures) == (10, 37, 0)
            assert stats[name].busy_time > 0
    assert plans[False] == (("make",), ("mix",))
    assert plans["auto"] == (("make", "mix"),)


def test_stats_table_and_diagram_show_shared_workers() -> None:
    pipeline = SequentialQueuedPipeline([("make", 2, add_one), ("mix", 2, square)], batch_size=4, backend="thread")
    pipeline.transform(list(range(10)))
    stats = pipeline.stats_
    k = stats["make"].n_workers
    assert stats["mix"].n_workers == k
    assert re.search(rf"^make +{k} \(make\+mix\)", str(stats), re.M)
    assert "make+mix" in stats._repr_html_()
    assert list(stats.queues) == ["make"]  # the chain has one input queue
    assert all("chained (make+mix)" in name for name in pipeline._sk_visual_block_().names)
    unchained = SequentialQueuedPipeline([("make", 2, add_one), ("mix", 2, square)], chain=False)
    assert not any("chained" in name for name in unchained._sk_visual_block_().names)


def test_union_accepts_chain_and_each_branch_is_its_own_group() -> None:
    union = ParallelQueuedFeatureUnion([("a", AddConstant(1.0)), ("b", MultiplyBy(2.0))], batch_size=3,
                                       backend="thread", chain="auto")
    X = np.arange(12.0).reshape(6, 2)
    np.testing.assert_allclose(union.transform(X), np.hstack([X + 1.0, X * 2.0]))
    assert union.stats_.plan == (("a",), ("b",))


@pytest.mark.parametrize("bad", [True, "yes", None, 0])
def test_chain_is_validated(bad: Any) -> None:
    pipeline = SequentialQueuedPipeline([add_one, square], backend="thread", chain=bad)
    with pytest.raises(InvalidParameterError, match="The 'chain' parameter of SequentialQueuedPipeline must be"):
        pipeline.transform([1])


def test_steps_with_worker_arguments_or_their_own_queue_run_alone(backend: str) -> None:
    args = [[("value", 1.0)], [("value", 1.0)]]
    steps = [("a", 1, AddConstant(1.0)), ("b", 2, args, 2, AddConstant(0.0)), ("c", 1, AddConstant(1.0)),
             ("d", 1, 3, AddConstant(1.0))]
    pipeline = SequentialQueuedPipeline(steps, batch_size=2, backend=backend)
    X = np.arange(10.0).reshape(5, 2)
    np.testing.assert_allclose(pipeline.transform(X), X + 4.0)
    assert pipeline.stats_.plan == (("a",), ("b",), ("c",), ("d",))


def test_fitted_step_keeps_its_copies(backend: str) -> None:
    steps = [("a", 1, AddConstant(1.0)), ("scale", 1, StandardScaler()), ("b", 1, MultiplyBy(2.0))]
    X = np.arange(20.0).reshape(10, 2)
    pipeline = SequentialQueuedPipeline(steps, batch_size=3, backend=backend)
    expected = make_pipeline(AddConstant(1.0), StandardScaler(), MultiplyBy(2.0)).fit_transform(X)
    np.testing.assert_allclose(pipeline.fit_transform(X), expected)
    np.testing.assert_allclose(pipeline.transform(X), expected)
    assert pipeline.stats_["scale"].n_workers == 1
    assert ("scale",) in pipeline.stats_.plan


# -- per step stays per step --------------------------------------------------------------------


class FileHook(PipelineHook):
    """Writes a JSON file per stage enter and per minibatch, from whichever worker runs it."""

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir

    def _write(self, event: str, stage: StageInfo, index: int | None = None) -> None:
        record = {"event": event, "stage": stage.name, "position": stage.index, "n_workers": stage.n_workers,
                  "worker": stage.worker_index, "index": index}
        (Path(self.log_dir) / f"{uuid.uuid4().hex}.json").write_text(json.dumps(record))

    @contextmanager
    def stage_hook(self, stage: StageInfo) -> Iterator[None]:
        self._write("stage", stage)
        yield

    @contextmanager
    def task_hook(self, stage: StageInfo, task: Any) -> Iterator[None]:
        self._write("task", stage, task.index)
        yield


@pytest.mark.timeout(120)
def test_hooks_see_one_stage_info_per_step(backend: str, tmp_path: Path) -> None:
    pipeline = SequentialQueuedPipeline([("make", 2, add_one), ("mix", 2, square)], batch_size=4,
                                        backend=backend, hooks=[FileHook(str(tmp_path))])
    pipeline.transform(list(range(20)))
    assert pipeline.stats_.plan == (("make", "mix"),)
    records = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    k = pipeline.stats_["make"].n_workers
    stages = sorted((r["stage"], r["position"], r["worker"]) for r in records if r["event"] == "stage")
    assert stages == sorted((name, pos, w) for pos, name in enumerate(["make", "mix"]) for w in range(k))
    for name in ("make", "mix"):
        tasks = sorted(r["index"] for r in records if r["event"] == "task" and r["stage"] == name)
        assert tasks == list(range(5))
    assert {r["n_workers"] for r in records} == {k}


def test_trace_has_one_stage_per_step() -> None:
    pipeline = SequentialQueuedPipeline([("make", 2, add_one), ("mix", 2, square)], batch_size=2, backend="thread")
    result = pipeline.transform(list(range(10)), trace=5)
    assert [c.retval for c in result["make"]] == [1, 2, 3, 4, 5]
    assert [c.retval for c in result["mix"]] == [1, 4, 9, 16, 25]


def test_timeline_has_a_task_record_per_step() -> None:
    pipeline = SequentialQueuedPipeline([("make", 2, add_one), ("mix", 2, square)], batch_size=2, backend="thread")
    pipeline.transform(list(range(10)))
    spans = pipeline.stats_.timeline
    assert sorted(s.minibatch for s in spans if s.stage == "make") == list(range(5))
    assert sorted(s.minibatch for s in spans if s.stage == "mix") == list(range(5))


def test_cache_keys_stay_per_step(tmp_path: Path) -> None:
    steps = [("a", 2, AddConstant(1.0)), ("b", 2, MultiplyBy(2.0))]
    X = np.arange(12.0).reshape(6, 2)
    pipeline = SequentialQueuedPipeline(steps, batch_size=2, backend="thread", memory=str(tmp_path))
    np.testing.assert_allclose(pipeline.transform(X), (X + 1.0) * 2.0)
    np.testing.assert_allclose(pipeline.transform(X), (X + 1.0) * 2.0)
    info = pipeline.cache_info()
    assert info["a"].hits == 3 and info["b"].hits == 3
    assert info["a"].key != info["b"].key


def chained_three(fault: Any, backend: str, **params: Any) -> SequentialQueuedPipeline:
    steps = [("first", 1, PassThrough()), ("fault", 1, fault), ("last", 1, PassThrough())]
    pipeline = SequentialQueuedPipeline(steps, batch_size=1, backend=backend, **params)
    return pipeline


@pytest.mark.timeout(60)
def test_error_notes_name_the_step_of_the_chain(backend: str) -> None:
    pipeline = chained_three(RaisesAt(5), backend)
    with pytest.raises(ValueError, match="boom at 5") as info:
        pipeline.transform(list(range(12)))
    note = info.value.__notes__[0]
    assert re.fullmatch(r"Raised in a worker of the queued pipeline: step 'fault', worker \d, minibatch 5\.", note)
    assert pipeline.stats_.plan == (("first", "fault", "last"),)
    assert pipeline.stats_["fault"].num_failures == 1


@pytest.mark.timeout(60)
def test_setup_and_teardown_errors_name_the_step(backend: str) -> None:
    with pytest.raises(OSError, match="cannot open model") as info:
        chained_three(RaisesInSetup(), backend).transform(list(range(4)))
    assert re.search(r"step 'fault', worker \d, setup\(\)", info.value.__notes__[0])
    with pytest.raises(RuntimeError, match="cannot release model") as info2:
        chained_three(RaisesInTeardown(), backend).transform(list(range(4)))
    assert re.search(r"step 'fault', worker \d, teardown\(\)", info2.value.__notes__[0])


@pytest.mark.timeout(60)
def test_timeout_names_the_step_of_the_chain() -> None:
    pipeline = chained_three(BlocksAt(5, seconds=60.0), "process", timeout=1.5)
    with pipeline, blocking_armed():
        assert pipeline.transform([0, 1]) == [0, 1]  # workers up and steps loaded first
        with pytest.raises(TimeoutError, match=r"^Step 'fault' \(worker \d\) spent more than 1.5 s on minibatch 5"):
            pipeline.transform(list(range(12)))


@pytest.mark.timeout(60)
def test_a_dead_worker_names_the_step_of_the_chain() -> None:
    pipeline = chained_three(KillsItselfAt(5), "process")
    with pytest.raises(BrokenPipelineError, match=r"^Worker \d of step 'fault' "):
        pipeline.transform(list(range(12)))


# -- retries: a chained minibatch runs again from the chain's first step --------------------------


@pytest.mark.timeout(120)
def test_a_step_error_in_retry_on_reruns_the_chain(backend: str, tmp_path: Path) -> None:
    steps = [("first", 1, add_one), ("flaky", 1, FlakyAt(str(tmp_path), at=14, times=1))]
    p = SequentialQueuedPipeline(steps, batch_size=3, backend=backend, max_retries=1, retry_on=(ConnectionError,))
    assert p.transform(list(range(30))) == [x + 2 for x in range(30)]
    assert p.stats_.plan == (("first", "flaky"),)
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.timeout(120)
def test_a_chained_worker_that_dies_is_replaced_with_every_step(tmp_path: Path) -> None:
    steps = [("first", 1, add_one), ("dies", 1, FlakyAt(str(tmp_path), at=14, times=1, how="exit"))]
    p = SequentialQueuedPipeline(steps, batch_size=3, backend="process", max_retries=1)
    assert p.transform(list(range(30))) == [x + 2 for x in range(30)]
    assert p.stats_.plan == (("first", "dies"),)
    assert p.stats_["first"].num_restarts == p.stats_["dies"].num_restarts == 1
