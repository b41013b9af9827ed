"""Long runs (DESIGN.md section 9): retried minibatches, replaced workers, skipped minibatches.

Every rule is checked against the sequential reference: the same steps run
one after the other on the whole input, with no failure injected.
"""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from faults import CorruptItems, FlakyAt, PassThrough, shm_segments

from neuraxle_stream import (
    BrokenPipelineError,
    FailureRecord,
    InvalidParameterError,
    ParallelQueuedFeatureUnion,
    ParallelWorkersWrapper,
    PipelineStoppedError,
    SequentialQueuedPipeline,
    SkippedMinibatchWarning,
)

N = 60


@pytest.fixture(autouse=True)
def no_shm_left():
    yield
    assert shm_segments() == []


def attempts(folder: Path) -> int:
    return len(os.listdir(folder))


# -- parameters ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "name", "match"),
    [
        ({"max_retries": -1}, "max_retries", r"an int in the range \[0, inf\)"),
        ({"max_retries": True}, "max_retries", "int"),
        ({"max_retries": 1.5}, "max_retries", r"an int in the range \[0, inf\)"),
        ({"retry_on": ValueError}, "retry_on", "tuple"),
        ({"retry_on": (ValueError, int)}, "retry_on", "tuple of exception types"),
        ({"on_error": "ignore"}, "on_error", r"\{'raise', 'skip'\}|among"),
        ({"max_failures": -1}, "max_failures", "max_failures"),
        ({"max_failures": 1.5}, "max_failures", r"\[0.0, 1.0\]|\[0, 1\]"),
        ({"max_failures": "3"}, "max_failures", "max_failures"),
    ],
)
@pytest.mark.parametrize("cls", [SequentialQueuedPipeline, ParallelQueuedFeatureUnion])
def test_bad_parameters_are_refused_at_the_call(cls, params, name, match) -> None:
    p = cls([("a", PassThrough())], backend="thread", **params)  # __init__ only stores
    with pytest.raises(InvalidParameterError, match=rf"The '{name}' parameter of {cls.__name__} must be.*") as info:
        list(p.stream([1, 2]))
    assert info.match(match)


def test_wrapper_takes_and_checks_the_parameters() -> None:
    w = ParallelWorkersWrapper(PassThrough(), backend="thread", max_retries=-2)
    with pytest.raises(InvalidParameterError, match="The 'max_retries' parameter of ParallelWorkersWrapper"):
        w.transform([1])
    w = ParallelWorkersWrapper(PassThrough(), backend="thread", max_retries=2, retry_on=(OSError,))
    assert w.get_params()["max_retries"] == 2 and w.transform([1, 2]) == [1, 2]


@pytest.mark.parametrize("method", ["transform", "fit_transform"])
def test_transform_and_fit_transform_refuse_skip(method: str) -> None:
    p = SequentialQueuedPipeline([PassThrough()], backend="thread", on_error="skip")
    with pytest.raises(InvalidParameterError, match=r"The 'on_error' parameter of SequentialQueuedPipeline must be "
                                                    r"'raise' for " + method):
        getattr(p, method)([1, 2, 3])
    assert p.fit([1, 2, 3]) is p  # fit runs with on_error='raise'
    assert list(p.stream([1, 2, 3])) == [1, 2, 3]


def test_the_parameters_clone_and_default() -> None:
    from sklearn.base import clone

    p = SequentialQueuedPipeline([PassThrough()], max_retries=3, retry_on=(OSError,), on_error="skip",
                                 max_failures=0.1)
    params = clone(p).get_params(deep=False)
    assert (params["max_retries"], params["retry_on"], params["on_error"], params["max_failures"]) == (
        3, (OSError,), "skip", 0.1)
    defaults = SequentialQueuedPipeline([PassThrough()]).get_params(deep=False)
    assert (defaults["max_retries"], defaults["retry_on"], defaults["on_error"], defaults["max_failures"]) == (
        0, (), "raise", None)


# -- retries -----------------------------------------------------------------------


def test_a_step_error_in_retry_on_runs_the_minibatch_again(backend: str, tmp_path: Path) -> None:
    X = list(range(N))
    p = SequentialQueuedPipeline(
        [("a", 2, PassThrough()), ("flaky", 2, FlakyAt(str(tmp_path), times=2)), ("b", PassThrough())],
        batch_size=4, backend=backend, max_retries=2, retry_on=(ConnectionError,),
    )
    assert p.transform(X) == [x + 1 for x in X]
    assert attempts(tmp_path) == 2
    assert p.stats_["flaky"].num_failures == 2  # TaskStatsHook-style counts: every failed attempt
    assert p.stats_.failures == ()


def test_an_error_not_in_retry_on_ends_the_run_at_once(backend: str, tmp_path: Path) -> None:
    p = SequentialQueuedPipeline([("flaky", FlakyAt(str(tmp_path), error=KeyError))], batch_size=4, backend=backend,
                                 max_retries=3, retry_on=(ConnectionError,))
    with pytest.raises(KeyError, match="flaky at 13"):
        p.transform(list(range(N)))
    assert attempts(tmp_path) == 1
    (record,) = p.stats_.failures
    assert record == FailureRecord("flaky", 3, 12, 4, "KeyError", "flaky at 13", 1)


def test_a_minibatch_failing_every_attempt_ends_the_run(backend: str) -> None:
    p = SequentialQueuedPipeline([("bad", 2, CorruptItems())], batch_size=5, backend=backend, max_retries=2,
                                 retry_on=(ValueError,))
    with pytest.raises(ValueError, match="corrupt item 13"):
        p.transform(list(range(N)))
    (record,) = p.stats_.failures
    assert (record.step, record.minibatch, record.first_item, record.n_items, record.attempts) == ("bad", 2, 10, 5, 3)
    assert p.stats_["bad"].num_failures == 3


def test_a_dead_worker_is_replaced_and_its_minibatch_runs_again(tmp_path: Path) -> None:
    X = list(range(N))
    p = SequentialQueuedPipeline(
        [("a", 2, PassThrough()), ("dies", 2, FlakyAt(str(tmp_path), how="exit", times=2)), ("b", PassThrough())],
        batch_size=3, backend="process", max_retries=2,
    )
    assert p.transform(X) == [x + 1 for x in X]
    assert attempts(tmp_path) == 2
    assert p.stats_["dies"].num_restarts >= 2
    assert "restarts" in str(p.stats_)


def test_a_worker_dying_on_every_attempt_names_the_poison_minibatch() -> None:
    p = SequentialQueuedPipeline([("a", PassThrough()), ("dies", 2, CorruptItems(how="exit"))], batch_size=4,
                                 backend="process", max_retries=2)
    with pytest.raises(BrokenPipelineError, match=r"Worker . of step 'dies' exited with code 9") as info:
        p.transform(list(range(N)))
    assert any("Minibatch 3 was running each of the 3 times a worker died" in n and "poison" in n
               for n in info.value.__notes__)
    (record,) = p.stats_.failures
    assert (record.step, record.minibatch, record.first_item, record.error_type, record.attempts) == (
        "dies", 3, 12, "BrokenPipelineError", 3)


def test_without_retries_a_dead_worker_ends_the_run_as_before() -> None:
    p = SequentialQueuedPipeline([("dies", CorruptItems(how="exit"))], batch_size=4, backend="process")
    with pytest.raises(BrokenPipelineError, match="step 'dies'"):
        p.transform(list(range(N)))
    assert p.stats_.failures == ()


def test_a_timed_out_minibatch_counts_as_a_worker_death(backend: str, tmp_path: Path) -> None:
    X = list(range(40))
    # a replaced process imports and loads its step within the timeout, even on a loaded machine
    timeout, seconds = (0.5, 2.0) if backend == "thread" else (3.0, 8.0)
    p = SequentialQueuedPipeline([("slow", 2, FlakyAt(str(tmp_path), how="sleep", seconds=seconds))], batch_size=4,
                                 backend=backend, timeout=timeout, max_retries=1)
    assert p.transform(X) == [x + 1 for x in X]
    assert p.stats_["slow"].num_restarts >= 1


def test_a_union_reruns_only_the_branch_that_failed(backend: str, tmp_path: Path) -> None:
    X = np.arange(40)
    union = ParallelQueuedFeatureUnion(
        [("same", CorruptItems(bad=())), ("flaky", 2, FlakyAt(str(tmp_path)))], batch_size=4, backend=backend,
        max_retries=1, retry_on=(ConnectionError,),
    )
    out = union.transform(X)
    np.testing.assert_array_equal(out, np.column_stack([X * 10, X + 1]))


def test_stream_in_completion_order_with_retries(backend: str, tmp_path: Path) -> None:
    p = SequentialQueuedPipeline([("flaky", 2, FlakyAt(str(tmp_path), times=1))], batch_size=2, backend=backend,
                                 max_retries=1, retry_on=(ConnectionError,), output_order="completion")
    assert sorted(p.stream(range(N))) == [x + 1 for x in range(N)]


def test_no_retry_after_stop(backend: str) -> None:
    p = SequentialQueuedPipeline([("slow", CorruptItems(bad=tuple(range(0, 10_000, 2))))], batch_size=1, backend=backend,
                                 max_retries=1_000_000, retry_on=(ValueError,))
    timer = threading.Timer(0.5, p.stop)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(PipelineStoppedError):
            p.transform(list(range(10_000)))
    finally:
        timer.cancel()
    assert time.monotonic() - started < 15


# -- skipping ------------------------------------------------------------------------


def test_skip_drops_the_minibatch_warns_and_goes_on(backend: str) -> None:
    p = SequentialQueuedPipeline([("a", PassThrough()), ("bad", 2, CorruptItems(bad=(13, 41)))], batch_size=4,
                                 backend=backend, on_error="skip", max_failures=2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = list(p.stream(range(N)))
    assert [str(w.message) for w in caught if issubclass(w.category, SkippedMinibatchWarning)] == [
        "Skipped minibatch 3 (items 12..15) after 1 attempt(s): step 'bad' raised ValueError: corrupt item 13",
        "Skipped minibatch 10 (items 40..43) after 1 attempt(s): step 'bad' raised ValueError: corrupt item 41",
    ]
    assert out == [x * 10 for x in range(N) if not (12 <= x < 16 or 40 <= x < 44)]
    assert [(r.minibatch, r.first_item, r.n_items, r.error_type) for r in p.stats_.failures] == [
        (3, 12, 4, "ValueError"), (10, 40, 4, "ValueError")]
    assert "Failed minibatches (2)" in str(p.stats_)


def test_skip_after_retries_counts_every_attempt(backend: str) -> None:
    p = SequentialQueuedPipeline([("bad", CorruptItems())], batch_size=4, backend=backend, on_error="skip",
                                 max_retries=2, retry_on=(ValueError,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = list(p.stream(range(N)))
    assert out == [x * 10 for x in range(N) if not 12 <= x < 16]
    assert [r.attempts for r in p.stats_.failures] == [3]


def test_a_count_budget_ends_the_run_with_the_last_error(backend: str) -> None:
    p = SequentialQueuedPipeline([("bad", CorruptItems(bad=(5, 13, 21)))], batch_size=4, backend=backend,
                                 on_error="skip", max_failures=2)
    got: list[int] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="corrupt item 21"):
            for y in p.stream(range(N)):
                got.append(y)
    before = [x * 10 for x in range(20) if not (4 <= x < 8 or 12 <= x < 16)]
    assert got == before[: len(got)]  # the error may come before the last outputs were yielded
    assert [r.minibatch for r in p.stats_.failures] == [1, 3, 5]


def test_a_fraction_budget_counts_the_minibatches_seen(backend: str) -> None:
    bad = (13, 181)  # minibatches 3 and 45 of 50 (batch_size 4): 1 skip allowed at first, 2 of 46 within 5%
    p = SequentialQueuedPipeline([("bad", CorruptItems(bad=bad))], batch_size=4, backend=backend, on_error="skip",
                                 max_failures=0.05, max_queued_minibatches=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = list(p.stream(range(200)))
    assert out == [x * 10 for x in range(200) if not (12 <= x < 16 or 180 <= x < 184)]
    tight = SequentialQueuedPipeline([("bad", CorruptItems(bad=(1, 5)))], batch_size=4, backend=backend, on_error="skip",
                                     max_failures=0.01, max_queued_minibatches=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="corrupt item 5"):
            list(tight.stream(range(200)))
    none = SequentialQueuedPipeline([("bad", CorruptItems(bad=(1,)))], batch_size=4, backend=backend, on_error="skip",
                                    max_failures=0.0)
    with pytest.raises(ValueError, match="corrupt item 1"):
        list(none.stream(range(200)))


def test_skip_with_dead_workers_on_processes() -> None:
    p = SequentialQueuedPipeline([("a", 2, PassThrough()), ("dies", 2, CorruptItems(bad=(13,), how="exit"))],
                                 batch_size=4, backend="process", on_error="skip", max_retries=1)
    with pytest.warns(UserWarning, match="step 'dies' raised BrokenPipelineError"):
        out = list(p.stream(range(N)))
    assert out == [x * 10 for x in range(N) if not 12 <= x < 16]
    assert [(r.minibatch, r.attempts) for r in p.stats_.failures] == [(3, 2)]


# -- interplay -------------------------------------------------------------------------


def test_a_retried_minibatch_is_cached_once(backend: str, tmp_path: Path) -> None:
    flags, cache = tmp_path / "flags", tmp_path / "cache"
    flags.mkdir()
    X = list(range(N))
    p = SequentialQueuedPipeline([("flaky", 2, FlakyAt(str(flags)))], batch_size=4, backend=backend, memory=str(cache),
                                 max_retries=1, retry_on=(ConnectionError,))
    assert p.transform(X) == [x + 1 for x in X]
    outputs = [f for f in cache.rglob("*") if f.is_file() and "/out/" in f.as_posix()]
    assert len(outputs) == N // 4
    assert p.transform(X) == [x + 1 for x in X]  # from the cache
    assert attempts(flags) == 1


def test_a_trace_records_the_attempt_that_produced_the_output(backend: str, tmp_path: Path) -> None:
    p = SequentialQueuedPipeline([("flaky", FlakyAt(str(tmp_path), at=5))], batch_size=2, backend=backend,
                                 max_retries=1, retry_on=(ConnectionError,))
    result = p.transform(list(range(10)), trace=10)
    calls = result["flaky"]
    assert len(calls) == 5
    assert [list(c.retval) for c in calls] == [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]]


def test_the_timeline_has_every_attempt(backend: str, tmp_path: Path) -> None:
    p = SequentialQueuedPipeline([("flaky", FlakyAt(str(tmp_path)))], batch_size=4, backend=backend,
                                 max_retries=1, retry_on=(ConnectionError,))
    p.transform(list(range(N)))
    stats = p.stats_
    assert stats["flaky"].num_tasks == N // 4 + 1
    assert stats["flaky"].num_failures == 1
    # the attempt of each task: 1, and 2 for the retry of the minibatch that failed once (minibatch 3: items 12..15)
    spans = [s for s in stats.timeline if s.stage == "flaky"]
    assert sorted((s.minibatch, s.attempt, s.failed) for s in spans if s.minibatch == 3) == [(3, 1, True), (3, 2, False)]
    assert all(s.attempt == 1 for s in spans if s.minibatch != 3)
    trace = json.loads(stats.to_chrome_trace(tmp_path / "trace.json").read_text())
    events = [e for e in trace["traceEvents"] if e["ph"] == "X" and e["name"] == "flaky"]
    assert sorted(e["args"]["attempt"] for e in events) == [1] * (N // 4) + [2]
