"""Run the performance suite: ``python -m benchmarks [--quick] [--check] [--only NAMES] [--out DIR]``.

Sections, each task in its own fresh interpreter (see ``_child.py``):

1. ``reference``: the CPU workload of DESIGN.md section 5 on every runner;
2. ``transport``: 1 MB and 16 MB arrays between process stages;
3. ``overhead``: per-minibatch and per-call cost of a no-op stage;
4. ``memory``: RSS of an endless ``stream()`` through 3 stages;
5. ``sklearn``: W4 (a ``GridSearchCV`` over our pipeline on processes, threads
   and plain scikit-learn), the fixed cost of a call on warm workers, and the
   first call's start-up.

Prints the tables and the DESIGN.md section 4 target checks, and writes
``results.json``, ``benchmark.png`` and ``memory.png`` to ``--out``; with the
reference section, also the timeline of W1 as a user writes it
(``timeline.png``, and ``timeline.json`` to open in Perfetto; see
``benchmarks/timeline.py``).
"""

import argparse
import contextlib
import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

import benchmarks
from benchmarks import memory, overhead, reference, report, sklearn_loop, timeline, transport
from benchmarks.measure import RssSampler

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT = PACKAGE_DIR.parent
SECTIONS = ("reference", "transport", "overhead", "memory", "sklearn")
ANCHORS = (
    "sequential",
    "ceiling",
    "ceiling-shared-output",
)  # the rows every ratio of section 1 divides by

PRESETS = {
    # reference items, repeats per round, rounds; transport MB per case; overhead minibatches;
    # seconds of endless stream; rows of the W4 grid; seconds a task may take
    "full": {
        "items": 20000,
        "repeats": 1,
        "rounds": 2,
        "transport_mb": 256,
        "minibatches": 2000,
        "stream_seconds": 20.0,
        "grid_rows": sklearn_loop.GRID_ROWS,
        "timeout": 240,
    },
    "quick": {
        "items": 2000,
        "repeats": 2,
        "rounds": 1,
        "transport_mb": 64,
        "minibatches": 500,
        "stream_seconds": 4.0,
        "grid_rows": 1000,
        "timeout": 90,
    },
}

VERSIONED = (
    "numpy",
    "scikit-learn",
    "scipy",
    "joblib",
    "threadpoolctl",
    "psutil",
    "cloudpickle",
    "torch",
    "mpire",
    "spdl_core",
    "neuraxle",
    "matplotlib",
)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    from threadpoolctl import threadpool_info

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    dirty = _git("status", "--porcelain", "--", "neuraxle_stream")
    return {
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable,
        "cpu_model": _cpu_model(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in VERSIONED},
        "neuraxle_stream": {
            "commit": _git("rev-parse", "--short", "HEAD"),
            "uncommitted_changes": dirty.splitlines() if dirty else [],
        },
        "blas": [
            {k: info.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for info in threadpool_info()
        ],
        "thread_env": {v: os.environ.get(v) for v in benchmarks.THREAD_ENV_VARS},
    }


# -- running tasks ------------------------------------------------------------------------


def _reap_group(pgid: int) -> int:
    """Kill what is left of a task's process group; return how many were left."""
    left = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if proc.pid != os.getpid() and os.getpgid(proc.pid) == pgid:
                left.append(proc)
    if left:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
    return len(left)


def run_task(spec: dict[str, Any], timeout: float, work: Path, index: int) -> dict[str, Any]:
    """Run one task in a fresh interpreter; add wall time and the peak RSS of its tree."""
    spec_path, out_path, log_path = (
        work / f"{index}.{ext}" for ext in ("spec.json", "out.json", "log")
    )
    spec_path.write_text(json.dumps(spec))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    t0 = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks._child", str(spec_path), str(out_path)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        timed_out = False
        with RssSampler(proc.pid, interval=0.1) as sampler:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    wall = time.perf_counter() - t0
    time.sleep(0.2)
    leftover = _reap_group(proc.pid)
    log_tail = log_path.read_text(errors="replace")[-3000:]
    if out_path.exists():
        result = json.loads(out_path.read_text())
        if timed_out:
            result["note"] = f"finished, but did not exit within {timeout:.0f} s (killed)"
    else:
        result = {
            "status": "timeout" if timed_out else "failed",
            "error": f"no result after {timeout:.0f} s"
            if timed_out
            else f"exit code {proc.returncode}",
        }
    if result.get("status") != "ok":
        result["log_tail"] = log_tail
    result.update(wall_s=round(wall, 2), peak_rss_mb=round(sampler.peak_mb, 1))
    if sampler.other_load is not None:
        result["other_load"] = round(sampler.other_load, 3)
    if leftover:
        result["leftover_processes"] = leftover
    return result


def _selected(spec: dict[str, Any], only: list[str], skip: list[str]) -> bool:
    def hit(token: str) -> bool:
        name = spec["name"]
        return (
            token == spec["section"]
            or fnmatch.fnmatch(name, token)
            or name.startswith(token)
            or fnmatch.fnmatch(name, token + "*")
        )

    if any(hit(t) for t in skip):
        return False
    return not only or any(hit(t) for t in only)


def _missing_module(modules: tuple[str, ...]) -> str | None:
    for module in modules:
        try:
            if importlib.util.find_spec(module) is None:
                return module
        except (ImportError, ValueError):
            return module
    return None


def _checksum(row: dict[str, Any], sums_path: Path, reference_sums: np.ndarray | None) -> None:
    """Compare the row's per-item sums with the sequential row's."""
    if row.get("status") != "ok" or not sums_path.exists():
        return
    sums = np.load(sums_path)
    if reference_sums is None:
        row["check"] = "reference"
        return
    if sums.shape != reference_sums.shape:
        row["check"] = f"MISMATCH: {sums.shape[0]} items, expected {reference_sums.shape[0]}"
        row["status"] = "wrong output"
        row["error"] = row["check"]
        return
    if np.array_equal(sums, reference_sums):
        row["check"] = "checksum ok (exact)"
        return
    rel = float(np.max(np.abs(sums - reference_sums) / np.maximum(np.abs(reference_sums), 1e-12)))
    row["max_rel_diff"] = rel
    if rel < 1e-5:
        row["check"] = f"checksum ok (rel diff {rel:.1e})"
    else:
        bad = int(np.argmax(np.abs(sums - reference_sums) > 1e-5 * np.abs(reference_sums)))
        row["check"] = f"MISMATCH from item {bad} (max rel diff {rel:.1e})"
        row["status"] = "wrong output"
        row["error"] = row["check"]


def _settle(max_wait: float, idle_percent: float = 15.0) -> float:
    """Wait, up to ``max_wait`` seconds, for the machine to be idle; return the time waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < max_wait:
        if psutil.cpu_percent(interval=0.5) < idle_percent:
            break
    return time.perf_counter() - t0


def _run_one(
    section: str,
    spec: dict[str, Any],
    timeout: float,
    work: Path,
    index: int,
    reference_sums: list[np.ndarray],
    settle: float = 0.0,
) -> dict[str, Any]:
    """Run one task (or report why it cannot run) and print a one-line summary."""
    row: dict[str, Any] = dict(spec)
    meta = reference.ROWS_BY_NAME.get(spec["name"]) if section == "reference" else None
    missing = None
    if meta is not None:
        row.update(group=meta.group, kind=meta.kind, description=meta.description, pip=meta.pip)
        missing = _missing_module(meta.requires)
        spec = dict(spec, sums_path=str(work / f"{index}.sums.npy"))
    elif section == "overhead" and spec["impl"] != "ours":
        missing = _missing_module(("neuraxle",))
    if missing:
        row.update(status="not installed", error=f"cannot import {missing}")
        print(f"  {section:9s} {spec['name']:28s} not installed ({missing})", flush=True)
        return row
    print(f"  {section:9s} {spec['name']:28s} ...", end=" ", flush=True)
    waited = _settle(settle) if settle > 0 else 0.0
    row.update(run_task(spec, timeout, work, index))
    if settle > 0:
        row["settle_wait_s"] = round(waited, 1)
    if meta is not None:
        _checksum(row, Path(spec["sums_path"]), reference_sums[0] if reference_sums else None)
        if spec["name"] == "sequential" and row.get("status") == "ok" and not reference_sums:
            reference_sums.append(np.load(spec["sums_path"]))
    summary = row.get("status", "?")
    if "items_per_s" in row:
        summary += f", {row['items_per_s']:,.0f} items/s"
    elif "mb_per_s" in row:
        summary += f", {row['mb_per_s']:,.0f} MB/s"
    elif "all_in_us" in row:
        summary += f", {row['all_in_us']:,.1f} us/minibatch"
    elif "items" in row:
        summary += f", {row['items']:,} items"
    elif "fixed_ms" in row:
        summary += f", {row['fixed_ms']:,.1f} ms"
    elif "seconds" in row:
        summary += f", {row['seconds']:,.2f} s"
    if row.get("status") != "ok":
        summary += f" ({row.get('error', '')})"[:120]
    load = row.get("other_load")
    busy = f", other load {load:.0%}" if load is not None and load >= 0.05 else ""
    print(f"{summary} [{row.get('wall_s', 0):.0f} s{busy}]", flush=True)
    return row


_BEST = {  # section: (metric, higher is better)
    "reference": ("items_per_s", True),
    "transport": ("mb_per_s", True),
    "overhead": ("all_in_us", False),
    "memory": ("items", True),
    "sklearn": ("seconds", False),
}


def _best_round(section: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the best result, with every round summarised in ``rounds``.

    A wrong output in any round marks the row wrong: the best time must not
    hide it.
    """
    metric, higher = _BEST[section]
    ok = [r for r in runs if r.get("status") == "ok"]
    best = dict(max(ok, key=lambda r: r[metric] if higher else -r[metric]) if ok else runs[-1])
    wrong = [r for r in runs if r.get("status") == "wrong output"]
    if wrong:
        best.update(status="wrong output", error=wrong[0].get("error"), check=wrong[0].get("check"))
    if len(runs) > 1:
        best["rounds"] = [
            {
                k: r.get(k)
                for k in ("round", "status", metric, "other_load", "wall_s", "peak_rss_mb")
            }
            for r in runs
        ]
        peaks = [r["peak_rss_mb"] for r in ok if "peak_rss_mb" in r]
        if peaks:
            best["peak_rss_mb"] = max(peaks)
        times = [t for r in ok for t in r.get("times_s", [])]
        if section == "reference" and times:  # the median over every timed call of every round
            best["median_s"] = float(np.median(times))
            best["median_items_per_s"] = best["n_items"] / best["median_s"]
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes: about 2 minutes on 2 cores"
    )
    parser.add_argument(
        "--items", type=int, help="items of the reference workload (20000; quick 2000)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, help="minibatch size of the reference workload"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        help="timed repeats of a reference row per round, after one warm-up (full 1, quick 2)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="rounds over the rows of sections 1-3 and 5, each task in a fresh process; "
        "the best round is kept (full 2, quick 1)",
    )
    parser.add_argument(
        "--only", default="", help="comma-separated sections, row names or prefixes/globs"
    )
    parser.add_argument(
        "--skip", default="", help="comma-separated sections, row names or prefixes/globs"
    )
    parser.add_argument("--out", type=Path, default=PACKAGE_DIR / "results", help="output folder")
    parser.add_argument(
        "--timeout", type=float, help="seconds one task may run before it is killed"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="before each task, wait up to this many seconds for the machine to be idle "
        "(under 15%% CPU): for shared machines; default 0",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="end with every DESIGN.md section 4 target: measured value, met / NOT MET, "
        "or 'not run'; exit status 1 when a measured target is not met",
    )
    parser.add_argument("--list", action="store_true", help="list the tasks and exit")
    args = parser.parse_args(argv)

    preset = dict(PRESETS["quick" if args.quick else "full"])
    n_items = args.items or preset["items"]
    repeats = args.repeats or preset["repeats"]
    rounds = args.rounds or preset["rounds"]
    timeout = args.timeout or preset["timeout"]
    warmup_items = max(4 * args.batch_size, min(n_items, 2000) // 4)
    only = [t for t in args.only.split(",") if t]
    skip = [t for t in args.skip.split(",") if t]

    all_specs = {
        "reference": reference.specs(n_items, args.batch_size, repeats, warmup_items),
        "transport": transport.specs(preset["transport_mb"], 3),
        "overhead": overhead.specs(preset["minibatches"], 3),
        "memory": memory.specs(preset["stream_seconds"], args.batch_size),
        "sklearn": sklearn_loop.specs(preset["grid_rows"]),
    }
    chosen = {s: [t for t in tasks if _selected(t, only, skip)] for s, tasks in all_specs.items()}
    if chosen["reference"]:
        names = {t["name"] for t in chosen["reference"]}
        chosen["reference"] = [
            t for t in all_specs["reference"] if t["name"] in names or t["name"] in ANCHORS
        ]
    if chosen["transport"]:  # the multiprocessing.Queue cases are what ratios divide by
        sizes = {t["size_mb"] for t in chosen["transport"]}
        chosen["transport"] = [
            t
            for t in all_specs["transport"]
            if t in chosen["transport"]
            or (t["case"].startswith("mpqueue") and t["size_mb"] in sizes)
        ]
    if any(t["name"].startswith("grid-") for t in chosen["sklearn"]):  # the grid ratio divides by threads
        chosen["sklearn"] = [
            t for t in all_specs["sklearn"] if t in chosen["sklearn"] or t["name"] == "grid-thread"
        ]
    if args.list:
        for section in SECTIONS:
            for t in all_specs[section]:
                mark = "*" if t in chosen[section] else " "
                print(f"{mark} {section:10s} {t['name']}")
        return 0

    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    settings = {
        "mode": "quick" if args.quick else "full",
        "items": n_items,
        "batch_size": args.batch_size,
        "repeats": repeats,
        "rounds": rounds,
        "warmup_items": warmup_items,
        "transport_mb_per_case": preset["transport_mb"],
        "overhead_minibatches": preset["minibatches"],
        "stream_seconds": preset["stream_seconds"],
        "grid_rows": preset["grid_rows"],
        "task_timeout_s": timeout,
        "settle_s": args.settle,
        "command": " ".join(
            ["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])]
        ),
    }
    print(
        f"neuraxle_stream benchmarks ({settings['mode']}): {info['cpu_model']}, "
        f"{info['usable_cpus']} CPUs, Python {info['python']}, NumPy {info['versions']['numpy']}, "
        f"commit {info['neuraxle_stream']['commit']}"
        + (" + uncommitted changes" if info["neuraxle_stream"]["uncommitted_changes"] else "")
    )

    results: dict[str, list[dict[str, Any]]] = {s: [] for s in SECTIONS}
    load_start = os.getloadavg()
    all_loads: list[float] = []
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="neuraxle_stream-bench-") as tmp:
        work = Path(tmp)
        counter = iter(range(1, 10**6))
        reference_sums: list[np.ndarray] = []
        for section in SECTIONS:
            runs: dict[str, list[dict[str, Any]]] = {}
            for round_index in range(1 if section == "memory" else rounds):
                for spec in chosen[section]:
                    row = _run_one(
                        section, spec, timeout, work, next(counter), reference_sums, args.settle
                    )
                    row["round"] = round_index + 1
                    if row.get("other_load") is not None:
                        all_loads.append(row["other_load"])
                    runs.setdefault(spec["name"], []).append(row)
            results[section] = [
                _best_round(section, runs[spec["name"]]) for spec in chosen[section]
            ]
    total_s = time.perf_counter() - t_start

    report.add_reference_ratios(results["reference"])
    report.add_transport_ratios(results["transport"])
    report.add_sklearn_ratios(results["sklearn"])
    checks = report.targets(results)

    header = (
        f"{info['cpu_model']}, {info['usable_cpus']} CPUs, Python {info['python']}, "
        f"NumPy {info['versions']['numpy']}; {settings['mode']} run, "
        f"{n_items:,} items, batch {args.batch_size}"
    )
    sections_text = []
    if results["reference"]:
        sections_text.append(
            "1. Reference workload (DESIGN.md 5): "
            + header
            + "\n"
            + report.reference_table(results["reference"])
        )
    if results["transport"]:
        sections_text.append(
            "2. Transport: arrays through 2 process stages\n"
            + report.transport_table(results["transport"])
        )
    if results["overhead"]:
        sections_text.append(
            "3. Overhead: one no-op stage, one worker\n"
            + report.overhead_table(results["overhead"])
        )
    if results["memory"]:
        sections_text.append(
            "4. Memory: endless stream() through 3 stages\n"
            + report.memory_table(results["memory"])
        )
    if results["sklearn"]:
        sections_text.append(
            "5. W4 and start-up: a scikit-learn loop over our pipeline; warm workers\n"
            + report.sklearn_table(results["sklearn"])
        )
    measured = [t for t in checks if t["value"] is not None or t["met"] is not None]
    if measured and not args.check:
        sections_text.append("Targets\n" + report.targets_table(measured))
    noise = float(np.median(all_loads)) if all_loads else 0.0
    if noise >= 0.05:
        sections_text.append(
            f"WARNING: other processes used a median {noise:.0%} of the machine's CPU while the tasks "
            "ran (column 'other load'); timings and ratios from this run are unreliable. "
            "Re-run on a quiet machine, or re-run the affected rows with --only."
        )
    if args.check:
        sections_text.append("Targets (DESIGN.md section 4)\n" + report.targets_table(checks))
    text = "\n\n".join(sections_text)
    print("\n" + text)

    plots = report.plot(results, out_dir, "neuraxle_stream benchmarks: " + header)
    if results["reference"]:  # the timeline of W1 (2 + 2 process workers, defaults), next to the PNGs
        try:
            plots += timeline.save(timeline.run(n_items, args.batch_size), out_dir)
        except Exception as exc:  # the tables and plots above stand on their own
            print(f"no timeline: {type(exc).__name__}: {exc}")
    data = {
        "machine": info,
        "settings": settings,
        "total_s": round(total_s, 1),
        "load_average": {"start": load_start, "end": os.getloadavg()},
        "median_other_load": noise,
        "targets": checks,
        **results,
    }
    report.write_json(out_dir / "results.json", data)
    (out_dir / "results.txt").write_text(text + "\n")
    written = [out_dir / "results.json", out_dir / "results.txt", *plots]
    print(f"\n{total_s:.0f} s; wrote " + ", ".join(str(p) for p in written))
    if args.check and any(t["met"] is False for t in checks):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
