"""The timeline of the reference workload (DESIGN.md section 5): a PNG and a Chrome trace.

W1 as a user writes it (2 stages, 2 process workers each, default settings),
one warm-up call, then one call whose ``stats_`` is saved:
``timeline.png`` (``stats_.plot_timeline()``), ``timeline.json``
(``stats_.to_chrome_trace()``, open it in https://ui.perfetto.dev) and
``timeline.txt`` (``str(stats_)``). The suite (``python -m benchmarks``) saves
them next to its other PNGs; the tuning page of the docs is drawn by::

    python -m benchmarks.timeline --docs

which runs the workload in the settings the page walks through and writes
its figures to ``docs/_figures/``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .steps import Build, Compute

ROOT = Path(__file__).resolve().parents[1]


def run(
    n_items: int = 20_000,
    batch_size: int = 16,
    workers: tuple[int, int] = (2, 2),
    max_queued: int | None = None,
    backend: str = "process",
) -> Any:
    """Run the reference workload once warm; return the ``stats_`` of the timed call."""
    from neuraxle_stream import SequentialQueuedPipeline

    pipe = SequentialQueuedPipeline(
        [("build", workers[0], Build()), ("compute", workers[1], Compute())],
        batch_size=batch_size,
        backend=backend,
        max_queued_minibatches=max_queued,
    )
    with pipe:
        pipe.transform(np.arange(min(n_items, 8 * batch_size)))  # warm-up: workers up, code loaded
        pipe.transform(np.arange(n_items))
    return pipe.stats_


def save(stats: Any, out_dir: Path, name: str = "timeline", title: str = "") -> list[Path]:
    """Write ``<name>.png``, ``<name>.json`` and ``<name>.txt`` to ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [stats.to_chrome_trace(out_dir / f"{name}.json")]
    (out_dir / f"{name}.txt").write_text(str(stats) + "\n")
    written.append(out_dir / f"{name}.txt")
    try:
        fig = stats.plot_timeline()
    except ImportError as exc:  # matplotlib is optional
        print(f"no {name}.png: {exc}")
        return written
    if title:
        fig.suptitle(title)
    fig.savefig(out_dir / f"{name}.png", dpi=90)
    written.append(out_dir / f"{name}.png")
    return written


#: The docs' figures: (file name, title, settings of :func:`run`). 2,000
#: items (125 minibatches) rather than 20,000: every bar stays visible.
DOCS_RUNS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "tuning_default",
        "2 + 2 process workers, batch_size=16 (the defaults)",
        {"n_items": 2_000, "workers": (2, 2)},
    ),
    (
        "tuning_starved",
        "2 + 1: one worker on the slow step",
        {"n_items": 2_000, "workers": (2, 1)},
    ),
    (
        "tuning_small_batches",
        "batch_size=1: the per-minibatch cost shows",
        {"n_items": 500, "workers": (2, 2), "batch_size": 1},
    ),
    (
        "tuning_balanced",
        "1 + 2, queues of 8: workers where the time goes",
        {"n_items": 2_000, "workers": (1, 2), "max_queued": 8},
    ),
]


def main(argv: list[str] | None = None) -> int:
    """Command line: ``--out DIR`` for one run, ``--docs`` for the tuning page's figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.timeline", description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="output folder")
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--docs", action="store_true", help="write the figures of docs/tuning.md")
    args = parser.parse_args(argv)
    if args.docs:
        for name, title, settings in DOCS_RUNS:
            stats = run(**settings)
            for path in save(stats, ROOT / "docs" / "_figures", name, title):
                if path.suffix != ".png":
                    path.unlink()  # the page shows the PNG and the table; the table is printed
            print(f"== {name}: {title}\n{stats}\n")
        return 0
    stats = run(args.items, args.batch_size)
    print(stats)
    print("wrote " + ", ".join(str(p) for p in save(stats, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
