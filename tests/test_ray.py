"""The Ray backend on a real local Ray instance (2 CPUs, fractional actors).

One Ray instance serves the whole test session (starting one takes seconds);
the actors of each call are killed at its end, which the tests check. The
unit tests of :func:`~neuraxle_stream.ray_backend.actor_options` and of the
:class:`~neuraxle_stream.ray_calls.ActorPool` need no Ray.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from doubles import (
    AddConstant,
    AppendsRayCPUs,
    LifecycleRecorder,
    MeanCenterer,
    MultiplyBy,
    TouchesThenWaits,
    add_one,
    read_events,
    square,
    wait_for_file,
)
from faults import (
    BlocksAt,
    CorruptItems,
    ExitsAt,
    FlakyAt,
    MultiArgError,
    RaisesAt,
    RaisesInSetup,
    RaisesMultiArgAt,
    blocking_armed,
)
from sklearn.decomposition import PCA
from sklearn.pipeline import FeatureUnion, make_pipeline
from sklearn.preprocessing import StandardScaler

from neuraxle_stream import (
    BrokenPipelineError,
    InvalidParameterError,
    ParallelQueuedFeatureUnion,
    PipelineHook,
    PipelineStoppedError,
    RemoteTraceback,
    SequentialQueuedPipeline,
)
from neuraxle_stream.lifecycle import lifecycle_of
from neuraxle_stream.minibatches import Minibatch
from neuraxle_stream.ray_backend import DRIVER_CPUS, ActorPool, RayRuntime, actor_options, connect
from neuraxle_stream.ray_calls import wait_dead
from neuraxle_stream.savers import save_step
from neuraxle_stream.stages import StageSpec

ray = pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

TESTS = Path(__file__).resolve().parent


def _assert_dead(handles: list, timeout: float = 10.0) -> None:
    """Every actor in ``handles`` is dead (its calls fail with RayActorError)."""
    assert handles
    for handle in handles:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(handle.ping.remote(), timeout=timeout)


def _ids(handles: list) -> list[str]:
    """The Ray actor ids of ``handles``."""
    return [h._actor_id.hex() for h in handles]


def _spy_runtimes(monkeypatch: pytest.MonkeyPatch) -> list[RayRuntime]:
    """Record every RayRuntime the pipelines create, and the actors each started."""
    made: list[RayRuntime] = []
    original = RayRuntime.start

    def start(self: RayRuntime) -> None:
        made.append(self)
        original(self)
        self.started_actors = list(self.actors)  # type: ignore[attr-defined]

    monkeypatch.setattr(RayRuntime, "start", start)
    return made


# -- equivalence with scikit-learn -------------------------------------------


# Each fit of a step runs the stages before it: a new set of actors each time (seconds
# each on 2 CPUs), so these cases are few and small.
@pytest.mark.parametrize(("batch_size", "n_workers"), [(1, 1), (7, 2)])
def test_sequential_equals_sklearn(ray_session, batch_size: int, n_workers: int) -> None:
    X = np.random.RandomState(batch_size).rand(40, 6)
    p = SequentialQueuedPipeline(
        [("double", n_workers, MultiplyBy(2.0)), ("center", MeanCenterer()), ("pca", n_workers, PCA(3))],
        batch_size=batch_size, backend="ray",
    )
    expected = make_pipeline(MultiplyBy(2.0), MeanCenterer(), PCA(3)).fit_transform(X)
    np.testing.assert_allclose(p.fit_transform(X), expected)
    np.testing.assert_allclose(p.transform(X), expected)


def test_item_functions_and_lists(ray_session) -> None:
    p = SequentialQueuedPipeline([("square", 2, square), ("add", add_one)], batch_size=4, backend="ray")
    assert p.transform(list(range(30))) == [x * x + 1 for x in range(30)]


def test_union_equals_feature_union(ray_session) -> None:
    X = np.random.RandomState(0).rand(50, 4)
    union = ParallelQueuedFeatureUnion(
        [("scale", 2, StandardScaler()), ("double", MultiplyBy(2.0))], batch_size=8, backend="ray"
    )
    expected = FeatureUnion([("scale", StandardScaler()), ("double", MultiplyBy(2.0))]).fit_transform(X)
    np.testing.assert_allclose(union.fit_transform(X), expected)


def test_stream_is_lazy_and_ordered(ray_session) -> None:
    pulled: list[int] = []

    def source():
        for i in range(200):
            pulled.append(i)
            yield i

    p = SequentialQueuedPipeline(
        [("add", 2, AddConstant(1)), ("square", 2, square)], batch_size=5, max_queued_minibatches=1, backend="ray"
    )
    out = p.stream(source())
    first = [next(out) for _ in range(3)]
    assert first == [1, 4, 9]
    assert len(pulled) < 200  # bounded in flight: the source is read as the run goes
    rest = list(out)
    assert first + rest == [(i + 1) ** 2 for i in range(200)]


def test_completion_order_gives_every_output(ray_session) -> None:
    p = SequentialQueuedPipeline([("add", 2, AddConstant(1))], batch_size=3, output_order="completion", backend="ray")
    assert sorted(p.stream(range(40))) == [i + 1 for i in range(40)]


# -- failures ------------------------------------------------------------------


def test_step_error_keeps_its_type_and_names_the_minibatch(ray_session, monkeypatch) -> None:
    made = _spy_runtimes(monkeypatch)
    p = SequentialQueuedPipeline([("ok", PassThroughish()), ("bad", 2, RaisesMultiArgAt(at=12))], batch_size=5, backend="ray")
    with pytest.raises(MultiArgError) as info:
        p.transform(list(range(30)))
    error = info.value
    assert type(error) is MultiArgError  # the very class, not a Ray wrapper or a look-alike
    assert (error.code, error.reason) == (7, "bad item")
    assert isinstance(error.__cause__, RemoteTraceback)
    assert any("step 'bad'" in n and "minibatch 2" in n for n in error.__notes__)
    _assert_dead(made[0].started_actors)


class PassThroughish(AddConstant):
    """AddConstant(0), defined here: pickled by reference from this test module."""

    def __init__(self, value: float = 0) -> None:
        super().__init__(value)


def test_pipeline_is_usable_after_a_step_error(ray_session) -> None:
    p = SequentialQueuedPipeline([("bad", 2, RaisesAt(at=4))], batch_size=2, backend="ray")
    with p:
        with pytest.raises(ValueError, match="boom at 4"):
            p.transform(list(range(10)))
        assert p.transform([1, 2, 3]) == [1, 2, 3]


def test_killed_actor_raises_broken_pipeline(ray_session) -> None:
    p = SequentialQueuedPipeline(
        [("fine", AddConstant(1)), ("dies", 2, ExitsAt(at=7))], batch_size=3, backend="ray", chain=False,
    )
    started = time.monotonic()
    with pytest.raises(BrokenPipelineError, match=r"Worker \d of step 'dies' \(a Ray actor\) died"):
        p.transform(list(range(6, 30)))
    assert time.monotonic() - started < 60


def test_actor_killed_from_outside(ray_session, monkeypatch, tmp_path) -> None:
    made = _spy_runtimes(monkeypatch)
    started, release = tmp_path / "started", tmp_path / "release"
    # The actor signals (a file) once it is inside its first minibatch; it is killed there.
    step = TouchesThenWaits(str(started), str(release), seconds=20)
    p = SequentialQueuedPipeline([("slow", 1, step)], batch_size=2, backend="ray")

    def kill_when_busy() -> None:
        if wait_for_file(started, timeout=60):
            ray.kill(made[0].started_actors[0])

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    try:
        with pytest.raises(BrokenPipelineError, match="step 'slow'") as info:
            p.transform(list(range(10)))
    finally:
        release.touch()
        killer.join()
    assert any("step 'slow', worker 0" in n for n in info.value.__notes__)


def test_setup_error_reaches_the_caller(ray_session) -> None:
    p = SequentialQueuedPipeline([("model", RaisesInSetup())], backend="ray")
    with pytest.raises(OSError, match="cannot open model") as info:
        p.transform([1, 2])
    assert any("setup()" in n for n in info.value.__notes__)


def test_timeout_names_the_step_and_minibatch(ray_session) -> None:
    p = SequentialQueuedPipeline([("stuck", BlocksAt(at=3, seconds=30))], batch_size=2, timeout=1.5, backend="ray")
    with p:
        # A first call places the actors and runs setup() (loading the step): on a busy
        # machine that alone may take more than 1.5 s, and the timeout bounds it too.
        assert p.transform([0, 1]) == [0, 1]
        started = time.monotonic()
        with blocking_armed(), pytest.raises(
            TimeoutError, match=r"Step 'stuck' \(worker 0\) spent more than 1.5 s on minibatch 1"
        ):
            p.transform(list(range(8)))
        assert time.monotonic() - started < 30  # BlocksAt would hold the actor 30 s


def test_options_that_can_never_be_placed(ray_session) -> None:
    p = SequentialQueuedPipeline([("gpu", 2, AddConstant(1))], backend="ray", ray_options={"gpu": {"num_gpus": 1}})
    with pytest.raises(InvalidParameterError, match=r"ask for 2 GPUs in all .* the Ray cluster has 0"):
        p.transform([1])


# -- actors kept across the runs of a call and the calls inside with ----------------------


def _recorders(log_dir: Path) -> list:
    # Three runs in a fit_transform: r1, then (center fitted in the parent) r2, then (pca) r3.
    return [("r1", LifecycleRecorder(str(log_dir), "r1")), ("center", MeanCenterer()),
            ("r2", LifecycleRecorder(str(log_dir), "r2")), ("pca", PCA(2)),
            ("r3", LifecycleRecorder(str(log_dir), "r3"))]


def test_fit_transform_keeps_its_actors_across_its_runs(ray_session, monkeypatch, tmp_path) -> None:
    made = _spy_runtimes(monkeypatch)
    X = np.random.RandomState(0).rand(30, 4)
    p = SequentialQueuedPipeline(_recorders(tmp_path), batch_size=10, backend="ray")
    np.testing.assert_allclose(p.fit_transform(X), make_pipeline(MeanCenterer(), PCA(2)).fit_transform(X))
    assert [[s.name for s in r.lanes[0]] for r in made] == [["r1"], ["r2"], ["r3"]]
    assert len({i for r in made for i in _ids(r.started_actors)}) == 1  # one actor served the three runs
    # each run shipped its own step: set up, then torn down, in the same process
    setups, teardowns = read_events(tmp_path, "setup"), read_events(tmp_path, "teardown")
    assert sorted(e["tag"] for e in setups) == sorted(e["tag"] for e in teardowns) == ["r1", "r2", "r3"]
    assert len({e["pid"] for e in setups + teardowns}) == 1
    _assert_dead(made[0].started_actors)  # and the call killed it at its end
    assert lifecycle_of(p).actor_pool().idle() == []


def test_each_run_gets_a_fresh_copy_of_its_step(ray_session, monkeypatch, tmp_path) -> None:
    # fit_mode="partial": the recorder runs in both runs (to fit the scaler, then to transform),
    # on the same actors; LifecycleRecorder raises on a copy whose setup() ran more than once.
    made = _spy_runtimes(monkeypatch)
    X = np.random.RandomState(1).rand(40, 3)
    p = SequentialQueuedPipeline([("rec", 2, LifecycleRecorder(str(tmp_path))), ("scale", StandardScaler())],
                                 batch_size=10, fit_mode="partial", backend="ray")
    np.testing.assert_allclose(p.fit_transform(X), StandardScaler().fit_transform(X))
    assert len(made) == 2
    first, second = _ids(made[0].started_actors), _ids(made[1].started_actors)
    assert len(first) == 2 and set(first) <= set(second)  # the recorder's actors served both runs
    setups = read_events(tmp_path, "setup")
    assert len(setups) == 4 and len({e["pid"] for e in setups}) == 2  # two runs, two actors
    _assert_dead(made[1].started_actors)


def test_calls_inside_with_share_the_actors(ray_session, monkeypatch, tmp_path) -> None:
    made = _spy_runtimes(monkeypatch)
    X = np.random.RandomState(2).rand(30, 4)
    expected = make_pipeline(MeanCenterer(), PCA(2)).fit_transform(X)
    p = SequentialQueuedPipeline(_recorders(tmp_path), batch_size=10, backend="ray")
    with p:
        np.testing.assert_allclose(p.fit_transform(X), expected)
        fitting = {i for r in made for i in _ids(r.started_actors)}
        np.testing.assert_allclose(p.transform(X), expected)
        np.testing.assert_allclose(p.transform(X), expected)
    assert len(fitting) == 1
    transform = _ids(made[-1].started_actors)
    assert len(made) == 4 and fitting <= set(transform)  # the transform (5 actors) took the idle one
    _assert_dead([h for r in made for h in r.started_actors])


def test_an_idle_actor_killed_from_outside_is_replaced(ray_session, monkeypatch, tmp_path) -> None:
    made: list[RayRuntime] = []
    killed: list[str] = []
    original = RayRuntime.start

    def start(self: RayRuntime) -> None:
        idle = self.actor_pool.idle() if self.actor_pool is not None else []
        if idle and not killed:  # before the second run takes it: kill the idle actor
            ray.kill(idle[0])
            wait_dead(ray, idle[:1], 10.0)  # the kill is an order on its way: wait until it is gone
            _assert_dead(idle[:1])
            killed.extend(_ids(idle[:1]))
        made.append(self)
        original(self)
        self.started_actors = list(self.actors)  # type: ignore[attr-defined]

    monkeypatch.setattr(RayRuntime, "start", start)
    X = np.random.RandomState(3).rand(30, 4)
    p = SequentialQueuedPipeline(_recorders(tmp_path), batch_size=10, backend="ray")
    np.testing.assert_allclose(p.fit_transform(X), make_pipeline(MeanCenterer(), PCA(2)).fit_transform(X))
    assert killed and killed[0] not in _ids(made[1].started_actors)  # a new actor served run 2...
    assert _ids(made[1].started_actors) == _ids(made[2].started_actors)  # ...and, kept, run 3
    _assert_dead(made[2].started_actors)


def test_actors_of_a_failed_run_are_not_reused(ray_session) -> None:
    spec = StageSpec(name="bad", lane=0, index=0, n_workers=1, max_queue_size=2,
                     payload=save_step(RaisesAt(at=1), "bad", False))
    pool = ActorPool(lambda: True)
    runtime = RayRuntime([[spec]], actor_pool=pool)
    batches = [Minibatch(i, [i], None, 1) for i in range(3)]
    try:
        with pytest.raises(ValueError, match="boom at 1"):
            list(runtime.run(batches))
        actors = list(runtime.actors)
        runtime.reuse_workers = False  # what the lifecycle does after a failed run
    finally:
        runtime.close()
    assert pool.idle() == []
    _assert_dead(actors)
    # a run that went well gives its actors back, and the pool kills them when drained
    good = RayRuntime([[dataclasses.replace(spec, payload=save_step(AddConstant(1), "bad", False))]], actor_pool=pool)
    try:
        assert [out for _, (out,) in good.run(batches)] == [[1], [2], [3]]
        actors = list(good.actors)
    finally:
        good.close()
    assert _ids(pool.idle()) == _ids(actors)
    pool.drain()
    _assert_dead(actors)


def test_a_timed_out_run_inside_with_starts_new_actors(ray_session, monkeypatch) -> None:
    made = _spy_runtimes(monkeypatch)
    # timeout bounds setup() too, which a new actor on a loaded machine may need seconds for
    p = SequentialQueuedPipeline([("stuck", BlocksAt(at=3, seconds=30))], batch_size=2, timeout=6.0, backend="ray")
    with p:
        assert p.transform([0, 1]) == [0, 1]
        with blocking_armed(), pytest.raises(TimeoutError, match=r"spent more than 6\.0 s on minibatch"):
            p.transform(list(range(8)))
        _assert_dead(made[0].started_actors)
        assert p.transform([0, 1]) == [0, 1]
    assert len(made) == 2 and not set(_ids(made[0].started_actors)) & set(_ids(made[1].started_actors))


def test_the_pool_keeps_actors_only_while_its_owner_says_so() -> None:
    keeping = [True]
    pool = ActorPool(lambda: keeping[0])
    assert pool.take("k", "a", 0) is None
    assert pool.give("k", "a", 0, "h-a0") and pool.give("k", "b", 1, "h-b1") and pool.give("other", "a", 1, "h-o")
    assert pool.take("k", "b", 1) == "h-b1"  # the same worker of the same step first
    assert pool.take("k", "c", 0) == "h-a0"  # else any created with the same options
    assert pool.take("k", "a", 0) is None
    keeping[0] = False
    assert not pool.give("k", "a", 0, "h-late")  # the caller kills it
    assert pool.take_all() == ["h-o"] and pool.idle() == []


def test_actor_sizes_are_shared_among_every_run_of_the_call() -> None:
    # a fitting run of one stage sizes its actor as the transform run of the five will
    alone = actor_options([[_stage("a", 1)]], None, {"CPU": 2.0})
    shared = actor_options([[_stage("a", 1)]], None, {"CPU": 2.0}, share_among={n: 1 for n in "abcde"})
    assert alone == {"a": {"num_cpus": 1.0}} and shared == {"a": {"num_cpus": 0.2}}
    explicit = actor_options([[_stage("a", 2)]], {"pca": {"num_cpus": 0.5}}, {"CPU": 2.0},
                             share_among={"a": 2, "pca": 1})
    assert explicit == {"a": {"num_cpus": 0.25}}  # (2 - 1 - 0.5) / 2


# -- persistent actors, hooks, stats, logging, tracing, caching --------------------------


def test_with_block_keeps_the_actors_then_kills_them(ray_session, monkeypatch) -> None:
    made = _spy_runtimes(monkeypatch)
    p = SequentialQueuedPipeline([("add", 2, AddConstant(1))], batch_size=4, backend="ray")
    with p:
        assert p.transform([1, 2, 3]) == [2, 3, 4]
        assert p.transform([5]) == [6]
    assert len(made) == 1  # one set of actors served both calls
    _assert_dead(made[0].started_actors)


def test_fitting_inside_with_keeps_one_set_of_actors(ray_session) -> None:
    # Each fitting run has its own stages; kept side by side, their actors would hold
    # every CPU and the last stage (a whole CPU) could never be placed.
    X = np.random.RandomState(0).rand(30, 4)
    p = SequentialQueuedPipeline(
        [("double", 2, MultiplyBy(2.0)), ("center", MeanCenterer()), ("pca", PCA(2))],
        batch_size=10, backend="ray", ray_options={"pca": {"num_cpus": 1.0}},
    )
    expected = make_pipeline(MultiplyBy(2.0), MeanCenterer(), PCA(2)).fit_transform(X)
    with p:
        np.testing.assert_allclose(p.fit_transform(X), expected)
        np.testing.assert_allclose(p.transform(X), expected)


def test_ray_options_reach_the_actors(ray_session) -> None:
    # Each actor reports the CPUs Ray gave it. By hand, on the 2-CPU session: 'a' asks
    # 0.3 for each of its 2 actors; 'b' shares what is left once the driver keeps
    # one CPU: 2 - 1 - 0.6 = 0.4. Without the options all three would get 1/3.
    p = SequentialQueuedPipeline(
        [("a", 2, AppendsRayCPUs()), ("b", AppendsRayCPUs())], batch_size=1, backend="ray",
        ray_options={"a": {"num_cpus": 0.3, "resources": {}}},
    )
    out = p.transform([()] * 6)
    assert len(out) == 6
    for a_cpus, b_cpus in out:
        assert a_cpus == pytest.approx(0.3) and b_cpus == pytest.approx(0.4)


class CountingHook(PipelineHook):
    """Counts minibatches in each worker; writes the count at teardown."""

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir

    @contextlib.contextmanager
    def task_hook(self, stage, task):
        self.n = getattr(self, "n", 0) + 1
        yield

    @contextlib.contextmanager
    def stage_hook(self, stage):
        yield
        Path(self.log_dir, f"{stage.name}-{stage.worker_index}.txt").write_text(str(getattr(self, "n", 0)))


def test_hooks_and_stats(ray_session, tmp_path) -> None:
    p = SequentialQueuedPipeline(
        [("add", 2, AddConstant(1)), ("life", LifecycleRecorder(str(tmp_path)))],
        batch_size=5, backend="ray", hooks=[CountingHook(str(tmp_path))], chain=False,
    )
    assert p.transform(list(range(50))) == [i + 1 for i in range(50)]
    counts = sum(int(f.read_text()) for f in tmp_path.glob("add-*.txt"))
    assert counts == 10  # every minibatch went through a hook in an actor, once
    assert sorted(e["event"] for e in read_events(tmp_path)) == ["setup", "teardown"]  # in the one actor
    stats = p.stats_
    assert (stats["add"].num_tasks, stats["add"].num_items, stats["life"].num_failures) == (10, 50, 0)


class LogsEachBatch(AddConstant):
    def transform(self, data_inputs):
        logging.getLogger("neuraxle_stream.test_ray").warning("minibatch of %d", len(data_inputs))
        return super().transform(data_inputs)


def test_actor_logs_reach_the_driver_once(ray_session, caplog) -> None:
    p = SequentialQueuedPipeline([("log", 2, LogsEachBatch(0))], batch_size=4, backend="ray")
    with caplog.at_level(logging.WARNING, logger="neuraxle_stream.test_ray"):
        p.transform(list(range(12)))
    messages = [r.getMessage() for r in caplog.records if r.name == "neuraxle_stream.test_ray"]
    assert messages == ["minibatch of 4"] * 3


def test_trace(ray_session) -> None:
    p = SequentialQueuedPipeline([("add", 2, AddConstant(1)), ("sq", square)], batch_size=2, backend="ray")
    result = p.transform(list(range(10)), trace=3)
    assert result.keys() == ["add", "sq"]
    assert sum(len(c.params["data_inputs"]) for c in result.add) == 3  # minibatches [0, 1], [2]
    assert [c.retval for c in result.sq] == [1, 4, 9]  # one call per item


def test_caching_resumes_on_ray(ray_session, tmp_path) -> None:
    X = np.arange(40.0).reshape(20, 2)
    p = SequentialQueuedPipeline([("scale", 2, StandardScaler())], batch_size=5, memory=tmp_path, backend="ray")
    first = p.fit_transform(X)
    second = p.fit_transform(X)
    np.testing.assert_allclose(first, second)
    # the fitted step and its own fit_transform output (DESIGN.md section 6) come from the cache
    assert p.cache_info()["scale"].fit == "hit"


# -- connecting and sizing actors, without starting Ray ------------------------------


def _stage(name: str, n: int) -> StageSpec:
    return StageSpec(name=name, lane=0, index=0, n_workers=n, max_queue_size=2, payload=b"")


def test_default_actor_sizes_leave_a_cpu_to_the_driver() -> None:
    options = actor_options([[_stage("a", 2), _stage("b", 2)]], None, {"CPU": 2.0})
    assert options == {"a": {"num_cpus": 0.25}, "b": {"num_cpus": 0.25}}
    big = actor_options([[_stage("a", 2)]], None, {"CPU": 16.0})
    assert big == {"a": {"num_cpus": 1.0}}  # at most one CPU each
    one = actor_options([[_stage("a", 3)]], None, {"CPU": 1.0})
    assert one["a"]["num_cpus"] == pytest.approx((1.0 - 0.5) / 3, abs=1e-4)
    assert DRIVER_CPUS == 1.0


def test_explicit_options_are_kept_and_the_rest_shared() -> None:
    options = actor_options(
        [[_stage("gpu", 1), _stage("cpu", 2)]], {"gpu": {"num_cpus": 0.5, "num_gpus": 1}}, {"CPU": 4.0, "GPU": 1.0}
    )
    assert options["gpu"] == {"num_cpus": 0.5, "num_gpus": 1}
    assert options["cpu"] == {"num_cpus": 1.0}  # (4 - 1 - 0.5) / 2 = 1.25, capped at one


@pytest.mark.parametrize(
    ("ray_options", "match"),
    [
        ({"b": {"num_cpus": 1}}, r"not in the pipeline: \['b'\]; its steps are \['a', 'c'\]"),
        ({"a": 3}, "must map step names to dicts of Ray actor options. Got 3 for step 'a'"),
        ({"a": {"max_restarts": 3}}, r"set \['max_restarts'\], which the pipeline sets itself"),
        ({"a": {"num_cpus": -1}}, r"must give 'num_cpus' as a number >= 0. Got -1 instead"),
        ({"c": {"num_gpus": "1"}}, r"must give 'num_gpus' as a number >= 0. Got '1' instead"),
    ],
)
def test_bad_ray_options(ray_options, match) -> None:
    p = SequentialQueuedPipeline([("a", AddConstant(1)), ("c", MeanCenterer())], backend="ray", ray_options=ray_options)
    with pytest.raises(InvalidParameterError, match=match):
        p.fit([[1.0]])  # checked before Ray is touched


def test_options_of_steps_outside_the_run_are_ignored() -> None:
    options = actor_options([[_stage("a", 2)]], {"pca": {"num_cpus": 1.5}}, {"CPU": 2.0})
    assert options == {"a": {"num_cpus": 0.5}}
    with pytest.raises(InvalidParameterError, match=r"ask for 6 CPUs in all"):
        actor_options([[_stage("a", 2)]], {"a": {"num_cpus": 3}}, {"CPU": 4.0})


def test_ray_options_must_be_a_dict() -> None:
    p = SequentialQueuedPipeline([AddConstant(1)], backend="ray", ray_options=["x"])
    with pytest.raises(InvalidParameterError, match="'ray_options' parameter of SequentialQueuedPipeline must be"):
        p.transform([1])


def test_connect_starts_a_local_instance_with_a_warning(monkeypatch, caplog) -> None:
    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    with caplog.at_level(logging.WARNING, logger="neuraxle_stream.ray_backend"):
        connect()
    assert calls and "address" not in calls[0]
    assert any("starting a local Ray instance" in r.getMessage() for r in caplog.records)
    calls.clear()
    connect("ray://head:10001")
    assert calls[0]["address"] == "ray://head:10001"


def test_connect_uses_the_users_ray(monkeypatch) -> None:
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail("ray.init called again"))
    assert connect("ray://elsewhere:10001") is ray


# -- fitting modes and metadata routing ----------------------------------------------


def test_partial_fit_on_ray_equals_sequential_partial_fit(ray_session) -> None:
    X = np.random.RandomState(1).rand(45, 3)
    p = SequentialQueuedPipeline(
        [("double", 2, MultiplyBy(2.0)), ("scale", StandardScaler())], batch_size=10, fit_mode="partial", backend="ray"
    )
    p.fit(iter(X))  # one pass over a one-shot source: the last step is the only fittable one
    reference = StandardScaler()
    for start in range(0, len(X), 10):
        reference.partial_fit(X[start : start + 10] * 2.0)
    np.testing.assert_allclose(p.named_steps["scale"].mean_, reference.mean_)
    np.testing.assert_allclose(p.named_steps["scale"].var_, reference.var_)


class ScaleRows(AddConstant):
    """Multiplies each row by its routed ``weight`` in ``transform``."""

    def transform(self, data_inputs, sample_weight=None):
        assert sample_weight is not None and len(sample_weight) == len(data_inputs)
        return np.asarray(data_inputs) * np.asarray(sample_weight)[:, None]


def test_transform_params_are_routed_per_minibatch_on_ray(ray_session) -> None:
    import sklearn

    X = np.arange(30.0).reshape(15, 2)
    weights = np.arange(15.0)
    with sklearn.config_context(enable_metadata_routing=True):
        p = SequentialQueuedPipeline(
            [("add", AddConstant(1)), ("weigh", 2, ScaleRows(0).set_transform_request(sample_weight=True))],
            batch_size=4, backend="ray",
        )
        out = p.transform(X, sample_weight=weights)
    np.testing.assert_allclose(out, (X + 1) * weights[:, None])


def test_stop_from_another_thread(ray_session, monkeypatch, tmp_path) -> None:
    made = _spy_runtimes(monkeypatch)
    started, release = tmp_path / "started", tmp_path / "release"
    # The actor signals (a file) once it is inside a minibatch: the call is surely running.
    p = SequentialQueuedPipeline(
        [("slow", TouchesThenWaits(str(started), str(release), seconds=30))], batch_size=2, backend="ray"
    )

    stopped: list[bool] = []

    def stop_when_busy() -> None:
        if wait_for_file(started, timeout=60):
            stopped.append(p.stop())
        release.touch()

    stopper = threading.Thread(target=stop_when_busy)
    stopper.start()
    try:
        with pytest.raises(PipelineStoppedError, match="stopped by stop"):
            p.transform(list(range(10)))
    finally:
        release.touch()
        stopper.join()
    assert stopped == [True]  # stop() found the call running
    _assert_dead(made[0].started_actors)


class Unpicklable:
    """An output Ray cannot serialise."""

    def __reduce__(self):
        raise TypeError("cannot serialise this output")


def make_unpicklable(x):
    return Unpicklable()


@pytest.mark.parametrize("where", ["last", "middle"])
def test_unpicklable_output_names_its_step(ray_session, where: str) -> None:
    steps = [("bad", make_unpicklable)] + ([("after", add_one)] if where == "middle" else [])
    p = SequentialQueuedPipeline(steps, batch_size=2, backend="ray", chain=False)  # chained: no hop to encode
    with pytest.raises(TypeError, match="cannot serialise this output") as info:
        p.transform([1, 2, 3])
    assert type(info.value) is TypeError
    assert any("output of step 'bad'" in n for n in info.value.__notes__)


def test_wrapper_on_its_own_takes_its_actor_options(ray_session) -> None:
    from neuraxle_stream import ParallelWorkersWrapper

    w = ParallelWorkersWrapper(AddConstant(1), n_workers=2, backend="ray", ray_options={"num_cpus": 0.1})
    assert w.transform([1, 2, 3]) == [2, 3, 4]


# -- long runs: replaced actors, retried and skipped minibatches ---------------------


def test_a_killed_actor_is_replaced_and_its_minibatches_run_again(ray_session, monkeypatch, tmp_path) -> None:
    made = _spy_runtimes(monkeypatch)
    started, release = tmp_path / "started", tmp_path / "release"
    step = TouchesThenWaits(str(started), str(release), seconds=20)
    p = SequentialQueuedPipeline([("first", AddConstant(1)), ("slow", 1, step), ("last", AddConstant(2))],
                                 batch_size=2, backend="ray", max_retries=2)

    def kill_when_busy() -> None:
        if wait_for_file(started, timeout=60):
            killed = made[0].started_actors[1]
            ray.kill(killed)
            release.touch()  # the replacement does not wait

    killer = threading.Thread(target=kill_when_busy)
    killer.start()
    try:
        out = p.transform(list(range(10)))
    finally:
        release.touch()
        killer.join()
    assert out == [x + 3 for x in range(10)]
    assert p.stats_["slow"].num_restarts == 1
    assert p.stats_.failures == ()
    _assert_dead(made[0].started_actors)


def test_a_step_error_in_retry_on_runs_again_on_ray(ray_session, tmp_path) -> None:
    p = SequentialQueuedPipeline([("a", AddConstant(1)), ("flaky", 2, FlakyAt(str(tmp_path), at=14, times=2))],
                                 batch_size=3, backend="ray", max_retries=2, retry_on=(ConnectionError,))
    assert p.transform(list(range(30))) == [x + 2 for x in range(30)]
    assert len(os.listdir(tmp_path)) == 2


def test_an_actor_dying_on_every_attempt_names_the_poison_minibatch_on_ray(ray_session) -> None:
    p = SequentialQueuedPipeline([("dies", CorruptItems(bad=(7,), how="exit"))], batch_size=3, backend="ray",
                                 max_retries=1)
    with pytest.raises(BrokenPipelineError, match=r"step 'dies' \(a Ray actor\) died") as info:
        p.transform(list(range(12)))
    assert any("Minibatch 2 was running each of the 2 times a worker died" in n for n in info.value.__notes__)
    assert [(r.minibatch, r.first_item, r.attempts) for r in p.stats_.failures] == [(2, 6, 2)]


def test_skip_on_ray(ray_session) -> None:
    p = SequentialQueuedPipeline([("bad", 2, CorruptItems(bad=(7,)))], batch_size=3, backend="ray",
                                 on_error="skip")
    with pytest.warns(UserWarning, match="Skipped minibatch 2"):
        out = list(p.stream(range(12)))
    assert out == [x * 10 for x in range(12) if not 6 <= x < 9]


def test_a_timed_out_actor_is_replaced_on_ray(ray_session, tmp_path) -> None:
    p = SequentialQueuedPipeline([("slow", FlakyAt(str(tmp_path), at=4, how="sleep", seconds=30))], batch_size=2,
                                 backend="ray", timeout=5.0, max_retries=1)
    started = time.monotonic()
    assert p.transform(list(range(10))) == [x + 1 for x in range(10)]
    assert p.stats_["slow"].num_restarts == 1
    assert time.monotonic() - started < 30
# -- chained stages ------------------------------------------------------------------


@pytest.mark.parametrize("chain", ["auto", False])
def test_chained_stages_on_ray(ray_session, chain: object) -> None:
    X = np.random.RandomState(0).rand(23, 3)
    steps = [("add", 1, AddConstant(1.0)), ("double", 1, MultiplyBy(2.0))]
    p = SequentialQueuedPipeline(steps, batch_size=4, backend="ray", chain=chain)
    np.testing.assert_allclose(p.transform(X), (X + 1.0) * 2.0)
    assert p.stats_.plan == ((("add", "double"),) if chain == "auto" else (("add",), ("double",)))
    assert [p.stats_[name].num_tasks for name in ("add", "double")] == [6, 6]
