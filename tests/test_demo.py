"""``python -m neuraxle_stream demo``: runs, prints its table, fails on unequal outputs."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from neuraxle_stream import __main__ as cli

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 150


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def _table(stdout: str) -> list[str]:
    """The lines of the table: header, rule, rows."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("mode"))
    end = next(i for i in range(start, len(lines)) if not lines[i].strip())
    return lines[start:end]


@pytest.mark.timeout(TIMEOUT + 30)
def test_demo_quick_prints_the_table() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "neuraxle_stream", "demo", "--quick"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    header, rule, *rows = _table(result.stdout)
    for column in ("mode", "workers", "start-up", "wall time", "items/s", "speedup"):
        assert column in header
    assert set(rule) <= {"-", " "}
    assert [row.split("  ")[0] for row in rows] == [
        "sequential (sklearn Pipeline)",
        "queued, threads",
        "queued, processes",
    ]
    assert rows[0].endswith("1.00x")
    assert all(row.endswith("x") for row in rows)
    assert len({len(line) for line in [header, rule, *rows]}) == 1, "columns are not aligned"
    assert "Outputs equal" in result.stdout


def test_demo_small_run_in_process_returns_zero() -> None:
    out = io.StringIO()
    assert cli.run_demo(items=40, batch_size=8, workers=2, rounds=2, repeat=1, out=out) == 0
    assert "queued, processes" in out.getvalue()
    assert "FAILED" not in out.getvalue()


class _WrongPipeline:
    """Stands in for SequentialQueuedPipeline and returns wrong outputs."""

    def __init__(self, steps: list[Any], **params: Any) -> None:
        self.steps = steps

    def __enter__(self) -> _WrongPipeline:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def transform(self, X: Any) -> np.ndarray:
        return np.zeros((len(X), cli.SIDE * cli.SIDE), dtype=np.float32)


def test_demo_exits_non_zero_when_outputs_differ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "SequentialQueuedPipeline", _WrongPipeline)
    out = io.StringIO()
    assert cli.run_demo(items=16, batch_size=8, rounds=1, repeat=1, out=out) == 1
    text = out.getvalue()
    assert "FAILED queued, threads: outputs differ" in text
    assert "FAILED queued, processes: outputs differ" in text
    assert "Outputs equal" not in text


def test_main_returns_the_demo_exit_code(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(cli, "run_demo", lambda *args: calls.append(args) or 0)
    assert cli.main(["demo", "--quick", "--items", "5000", "--workers", "3"]) == 0
    assert calls == [(160, 16, 3, 10, 1)]


@pytest.mark.parametrize("argv", [["demo", "--items", "0"], ["demo", "--workers", "x"], []])
def test_bad_arguments_exit_with_usage(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert "usage: python -m neuraxle_stream" in capsys.readouterr().err


def test_format_table_aligns_columns() -> None:
    rows = [
        cli.Timing("sequential", "1", 2.0, 100),
        cli.Timing("queued, processes", "2 + 2", 0.5, 100, start_up=1.25),
    ]
    lines = cli.format_table(rows).splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[2].endswith("1.00x") and lines[3].endswith("4.00x")
    assert "1.25 s" in lines[3] and lines[2].split()[2] == "-"
