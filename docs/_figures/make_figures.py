"""Draw the pictures of the documentation from real runs; commit what it writes.

Run from the repository root (matplotlib needed: ``pip install -e ".[plot]"``)::

    python docs/_figures/make_figures.py

It writes, next to this script:

- ``getting_started_stats.png``: ``stats_.plot()`` of the demo's pipeline
  (2 worker processes per step), start-up included;
- ``hooks_stats.png`` and ``hooks_stats.txt``: ``stats_.plot()`` and
  ``print(stats_)`` of the hooks page's pipeline (a slow middle step);
- ``progress.svg`` and ``progress.txt``: what ``progress=True,
  verbose=True`` shows, in a terminal (two moments: mid-run and at the end)
  and in a log file (plain lines);
- ``benchmark.png``, ``transport.png`` and ``memory.png``: the figures of the latest full
  benchmark run, from ``benchmarks/results/results.json``.

Timings differ from run to run; the shapes (which step is the bottleneck,
which stage leads) do not.
"""

from __future__ import annotations

import html
import io
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from neuraxle_stream import (  # noqa: E402
    BaseTransformer,
    NonFittableMixin,
    SequentialQueuedPipeline,
)

#: The width the figures are drawn at, in inches at 100 dpi: the docs column
#: shows them at about their own size, so their text stays readable.
WIDTH = 9.5


class Slow(NonFittableMixin, BaseTransformer):
    """The hooks page's slow step: 10 ms per minibatch."""

    def __init__(self, delay: float = 0.01) -> None:
        self.delay = delay

    def transform(self, data_inputs: Any) -> Any:
        time.sleep(self.delay)
        return data_inputs


def double(x: Any) -> Any:
    return 2 * x


def shift(x: Any) -> Any:
    return x + 1


def _save(fig: Any, name: str) -> None:
    height = fig.get_size_inches()[1]
    fig.set_size_inches(WIDTH, height)
    fig.savefig(HERE / name, dpi=100)
    print("wrote", HERE / name)


def getting_started() -> None:
    """The demo's pipeline (``python -m neuraxle_stream demo``) on processes."""
    from neuraxle_stream.__main__ import MakeArrays, TanhMix, mixing_matrix

    pipeline = SequentialQueuedPipeline(
        [("make", 2, MakeArrays()), ("mix", 2, TanhMix(mixing_matrix()))],
        batch_size=16,
        chain=False,  # a stage per step, to show each step's workers
    )
    pipeline.transform(np.arange(3000))
    _save(pipeline.stats_.plot(), "getting_started_stats.png")


def hooks() -> None:
    pipeline = SequentialQueuedPipeline(
        [("double", double), ("slow", Slow()), ("shift", shift)],
        batch_size=10,
        backend="thread",
        chain=False,
    )
    pipeline.transform(np.arange(300))
    stats = pipeline.stats_
    (HERE / "hooks_stats.txt").write_text(str(stats) + "\n")
    _save(stats.plot(), "hooks_stats.png")


# -- progress=True, as a terminal shows it ---------------------------------------------


class _Terminal(io.StringIO):
    """A terminal of ``columns`` that keeps the screen as tqdm leaves it (``\\r``, cursor up)."""

    def __init__(self, columns: int = 78) -> None:
        super().__init__()
        self.columns = columns
        self.screen: list[str] = [""]
        self.row = self.col = 0
        self.frames: list[list[str]] = []

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        for token in re.split(r"(\x1b\[[0-9;]*[A-Za-z]|\r|\n)", text):
            if not token:
                continue
            if token == "\r":
                self.col = 0
            elif token == "\n":
                self.row += 1
                self.col = 0
            elif token.startswith("\x1b["):
                if token.endswith("A"):
                    self.row = max(0, self.row - int(token[2:-1] or 1))
            else:
                while len(self.screen) <= self.row:
                    self.screen.append("")
                line = self.screen[self.row].ljust(self.col)
                self.screen[self.row] = line[: self.col] + token + line[self.col + len(token):]
                self.col += len(token)
        self.frames.append([line.rstrip()[: self.columns] for line in self.screen])
        return super().write(text)


def _bar_counts(frame: list[str]) -> dict[str, int]:
    counts = {}
    for line in frame:
        m = re.match(r"(\w+): +\d+%\|[^|]*\| *(\d+)/", line)
        if m:
            counts[m[1]] = int(m[2])
    return counts


def progress() -> None:
    import os

    import neuraxle_stream.monitor as monitor

    steps = [("double", 2, double), ("slow", 2, Slow(0.02))]
    X = list(range(4000))
    # A terminal: the bars, mid-run (the fast step ahead of the slow one) and at the end.
    terminal = _Terminal()
    real_out, real_err = sys.stdout, sys.stderr
    sys.stdout = sys.stderr = terminal
    try:
        SequentialQueuedPipeline(
            steps, batch_size=16, progress=True, verbose=True, chain=False
        ).transform(X)
    finally:
        sys.stdout, sys.stderr = real_out, real_err
    frames = [f for f in terminal.frames if len(_bar_counts(f)) == 2]
    mid = max(frames, key=lambda f: (lambda c: c["double"] - c["slow"])(_bar_counts(f)))
    end = [line for line in terminal.frames[-1] if line]
    starting = [line for line in terminal.frames[-1] if "starting" in line]
    mid_screen = starting + [line for line in mid if line and "starting" not in line]
    _terminal_svg(
        [("mid-run: each bar counts what its own step finished", mid_screen),
         ("at the end", end)],
        HERE / "progress.svg",
    )
    # A log file: plain lines.
    log = io.StringIO()
    every = monitor.PROGRESS_EVERY
    monitor.PROGRESS_EVERY = 0.5
    sys.stderr = log
    try:
        SequentialQueuedPipeline(
            steps, batch_size=16, progress=True, chain=False
        ).transform(X)
    finally:
        sys.stderr = real_err
        monitor.PROGRESS_EVERY = every
    (HERE / "progress.txt").write_text(log.getvalue())
    print("wrote", HERE / "progress.svg", HERE / "progress.txt", os.linesep.join(end))


def _terminal_svg(panels: list[tuple[str, list[str]]], path: Path) -> None:
    """Panels of terminal lines as an SVG: a dark screen each, with a caption."""
    char_w, line_h, pad, caption_h = 7.8, 18, 12, 24
    columns = max(len(line) for _, lines in panels for line in lines)
    width = int(columns * char_w + 2 * pad)
    y = 0
    parts = []
    for caption, lines in panels:
        parts.append(
            f'<text x="0" y="{y + 16}" font-family="sans-serif" font-size="14" '
            f'fill="#444">{html.escape(caption)}</text>'
        )
        y += caption_h
        box_h = len(lines) * line_h + 2 * pad
        parts.append(f'<rect x="0" y="{y}" width="{width}" height="{box_h}" rx="6" fill="#1e1e1e"/>')
        for i, line in enumerate(lines):
            color = "#9cdcfe" if line.startswith("[") else "#e0e0e0"
            parts.append(
                f'<text x="{pad}" y="{y + pad + (i + 1) * line_h - 5}" xml:space="preserve" '
                f'font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" font-size="13" '
                f'fill="{color}">{html.escape(line)}</text>'
            )
        y += box_h + 16
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y}" '
        f'viewBox="0 0 {width} {y}">\n' + "\n".join(parts) + "\n</svg>\n"
    )
    path.write_text(svg)


def benchmarks() -> None:
    from benchmarks import report

    results = json.loads((ROOT / "benchmarks" / "results" / "results.json").read_text())
    for path in report.plot(results, HERE, ""):
        print("wrote", path)


if __name__ == "__main__":
    import matplotlib

    matplotlib.use("Agg")
    only = set(sys.argv[1:])
    for figure in (getting_started, hooks, progress, benchmarks):
        if not only or figure.__name__ in only:
            figure()
