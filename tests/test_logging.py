"""Worker logging: each record reaches the parent's handlers exactly once.

Worker threads log in the parent process as any thread does; worker
processes send their records to the parent on the results channel, where
they are handed to the parent's logger of the same name. A counting handler
on that logger, in the parent, sees every record once, with the worker's
process and thread names.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from doubles import RecordingHandler

from neuraxle_stream import BaseTransformer, NonFittableMixin, SequentialQueuedPipeline

LOGGER = "nxs_test.worker"


class LoggingStep(NonFittableMixin, BaseTransformer):
    """Log once in ``setup``, once per minibatch, once in ``teardown``; DEBUG lines too."""

    def setup(self) -> None:
        logging.getLogger(LOGGER).info("setup")

    def transform(self, data_inputs: Any) -> Any:
        log = logging.getLogger(LOGGER)
        log.info("minibatch of %d items starting with %r", len(data_inputs), data_inputs[0])
        log.debug("a detail the parent does not want")
        if -1 in list(data_inputs):
            try:
                raise KeyError("bad item")
            except KeyError:
                log.exception("while checking")
        return data_inputs

    def teardown(self) -> None:
        logging.getLogger(LOGGER).warning("teardown")


@pytest.fixture
def counted() -> Iterator[RecordingHandler]:
    """A handler on the test logger, at INFO, for the duration of a test."""
    logger = logging.getLogger(LOGGER)
    handler = RecordingHandler()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(logging.NOTSET)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("backend", "mp_context"), [("thread", None), ("process", None), ("process", "fork")]
)
def test_worker_records_reach_the_parent_exactly_once(
    counted: RecordingHandler, backend: str, mp_context: str | None, tmp_path: Path
) -> None:
    # Under fork the workers inherit the parent's handlers: a file handler
    # there would write a second copy of each record into the same file.
    to_file = logging.FileHandler(tmp_path / "log.txt")
    logging.getLogger(LOGGER).addHandler(to_file)
    items = list(range(40))  # 8 minibatches of 5
    items[17] = -1
    pipeline = SequentialQueuedPipeline(
        [("log", 2, LoggingStep())], batch_size=5, backend=backend, mp_context=mp_context
    )
    try:
        assert pipeline.transform(items) == items
    finally:
        logging.getLogger(LOGGER).removeHandler(to_file)
        to_file.close()
    in_file = (tmp_path / "log.txt").read_text().splitlines()
    assert sum(line.startswith(("minibatch", "setup", "teardown", "while")) for line in in_file) == 13
    messages = [r.getMessage() for r in counted.records]
    minibatches = sorted(m for m in messages if m.startswith("minibatch"))
    assert minibatches == sorted(f"minibatch of 5 items starting with {i * 5!r}" for i in range(8))
    assert messages.count("setup") == 2 and messages.count("teardown") == 2
    assert messages.count("while checking") == 1
    assert len(messages) == 8 + 2 + 2 + 1  # each exactly once, no DEBUG
    failed = next(r for r in counted.records if r.getMessage() == "while checking")
    assert "KeyError: 'bad item'" in logging.Formatter().format(failed)
    for record in counted.records:
        if backend == "process":
            assert record.processName in ("neuraxle_stream:log:0", "neuraxle_stream:log:1")
            assert record.threadName == "MainThread"
        else:
            assert record.processName == "MainProcess"
            assert record.threadName in ("neuraxle_stream:log:0", "neuraxle_stream:log:1")


@pytest.mark.timeout(60)
def test_records_arrive_while_the_workers_stay_up(counted: RecordingHandler) -> None:
    pipeline = SequentialQueuedPipeline([("log", LoggingStep())], batch_size=5, backend="process")
    with pipeline:
        pipeline.transform(list(range(10)))
        assert [r.getMessage() for r in counted.records][-2:] == [
            "minibatch of 5 items starting with 0", "minibatch of 5 items starting with 5"
        ]
        pipeline.transform(list(range(5)))
    assert [r.getMessage() for r in counted.records].count("teardown") == 1


def test_importing_the_library_leaves_the_root_logger_alone() -> None:
    code = (
        "import logging, neuraxle_stream, neuraxle_stream.hooks, neuraxle_stream.stats\n"
        "root = logging.getLogger()\n"
        "assert root.handlers == [] and root.level == logging.WARNING, (root.handlers, root.level)\n"
        "assert logging.getLogger('neuraxle_stream').handlers == []\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
