"""The tables of a run as Markdown, for README.md and docs/performance.md.

``python -m benchmarks.markdown [results.json]`` (default:
``benchmarks/results/results.json``) prints the machine line and the
reference, transport, overhead, memory, W4 and target tables of that run, in
the columns the documentation uses, so that the pages quote the latest run
rather than numbers typed by hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent


def _num(value: Any, spec: str = ",.0f") -> str:
    return "–" if value is None else format(value, spec)


def _md(headers: list[str], rows: list[list[str]], align: str) -> str:
    rule = ["---:" if a == ">" else "---" for a in align]
    lines = [headers, rule, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def machine_line(data: dict[str, Any]) -> str:
    """Where and how the run ran: CPU, Python, NumPy, duration and load."""
    m = data.get("machine", {})
    versions = m.get("versions", {})
    load = data.get("median_other_load")
    return (
        f"{m.get('cpu_model', '?')}, {m.get('cpu_count', '?')} cores, Python {m.get('python', '?')}, "
        f"NumPy {versions.get('numpy', '?')}, commit {m.get('neuraxle_stream', {}).get('commit', '?')}; "
        f"{data.get('total_s', 0) / 60:.0f} minutes; other processes used a median "
        f"{0 if load is None else load * 100:.0f} % of the CPU"
    )


def reference(data: dict[str, Any]) -> str:
    """The reference workload: items/s, x sequential, x ceiling, first call."""
    rows = []
    for r in data.get("reference", []):
        if r.get("status") != "ok":
            rows.append([f"`{r['name']}`", r.get("status", "?"), "", "", ""])
            continue
        bold = "**" if r.get("group") == "ours" else ""
        cells = [
            _num(r["items_per_s"]), _num(r.get("x_sequential"), ".2f"),
            _num(r.get("x_ceiling"), ".2f"), _num(r.get("cpu_ms_per_item"), ".2f"),
        ]
        rows.append([f"{bold}`{r['name']}`{bold}", *(f"{bold}{c}{bold}" for c in cells)])
    return _md(["row", "items/s", "x seq", "x ceiling", "CPU ms/item"], rows, "<>>>>")


def transport(data: dict[str, Any]) -> str:
    """Arrays through 2 process stages against ``multiprocessing.Queue``."""
    rows = [
        [f"`{r['case']}`", f"{r['size_mb']} MB", str(r["n_arrays"]), _num(r["mb_per_s"]),
         _num(r.get("x_mpqueue_hop"), ".2f"), _num(r.get("x_mpqueue_chain"), ".2f")]
        for r in data.get("transport", []) if r.get("status") == "ok"
    ]
    return _md(["case", "array", "arrays", "MB/s", "x hop", "x chain"], rows, "<>>>>>")


def overhead(data: dict[str, Any]) -> str:
    """Per-minibatch cost, all-in and marginal, and a second call's cost."""
    rows = [
        [f"`{r['impl']}`", r["backend"], str(r["batch_size"]), _num(r.get("all_in_us"), ".1f"),
         _num(r.get("per_minibatch_us"), ".1f"), _num(r.get("second_call_ms"), ".2f")]
        for r in data.get("overhead", []) if r.get("status") == "ok"
    ]
    headers = ["impl", "backend", "batch", "µs/minibatch, all-in", "marginal µs", "2nd call ms"]
    return _md(headers, rows, "<<>>>>")


def memory(data: dict[str, Any]) -> str:
    """RSS over an endless ``stream()``."""
    rows = [
        [r["backend"], _num(r["items"]), _num(r["items_per_s"]), _num(r.get("growth_mb"), ".1f"),
         str(r.get("workers_left_after_close", "?"))]
        for r in data.get("memory", []) if r.get("status") == "ok"
    ]
    return _md(["backend", "items", "items/s", "RSS growth MB", "workers left"], rows, "<>>>>")


def sklearn(data: dict[str, Any]) -> str:
    """W4 and start-up: the grid on processes, threads and scikit-learn, a warm call, the first call."""
    rows = []
    for r in data.get("sklearn", []):
        if r.get("status") != "ok":
            rows.append([f"`{r['name']}`", r.get("status", "?"), "", ""])
            continue
        value = f"{r['fixed_ms']:.1f} ms" if r.get("fixed_ms") is not None else f"{r['seconds']:.2f} s"
        rows.append([f"`{r['name']}`", value, _num(r.get("grid_x_thread"), ".2f"), _num(r.get("grid_x_sklearn"), ".1f")])
    return _md(["row", "time", "x threads", "x sklearn"], rows, "<>>>")


def targets(data: dict[str, Any]) -> str:
    """Every target with this run's value and verdict."""
    verdict = {True: "yes", False: "**no**", None: "not run"}
    rows = [
        [t["target"], t["goal"], _num(t.get("value"), ".2f"), verdict[t.get("met")]]
        for t in data.get("targets", [])
    ]
    return _md(["target", "goal", "this run", "reached"], rows, "<<><")


def render(data: dict[str, Any]) -> str:
    """All the tables, each under a heading."""
    parts = [machine_line(data)]
    for title, fn in (
        ("Reference workload", reference), ("Transport", transport), ("Overhead", overhead),
        ("Memory", memory), ("W4 and start-up", sklearn), ("Targets", targets),
    ):
        parts.append(f"### {title}\n\n{fn(data)}")
    return "\n\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Print the Markdown tables of a results file."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.markdown", description=__doc__)
    parser.add_argument("results", nargs="?", type=Path, default=PACKAGE_DIR / "results" / "results.json")
    args = parser.parse_args(argv)
    print(render(json.loads(args.results.read_text())))


if __name__ == "__main__":
    main()
