"""Tables, target checks, plots and the JSON file of a run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

# DESIGN.md section 4.
TARGET_CEILING_RATIO = 0.93  # W1 on processes
TARGET_PROCESS_PEER_RATIO = 1.15  # W1 on processes vs the best process peer
TARGET_THREAD_PEER_RATIO = 1.0  # W1 (processes and threads) vs the best thread peer
TARGET_BALANCED_CEILING_RATIO = 0.90  # W2
TARGET_TRANSPORT_GBPS = 4.0  # W3
TARGET_TRANSPORT_RATIO = 10.0  # W3 vs multiprocessing.Queue
TARGET_OVERHEAD_US = {"thread": 30.0, "process": 100.0}
TARGET_W4_FIXED_MS = 20.0
TARGET_W4_THREAD_RATIO = 2.0
TARGET_STARTUP_S = 0.5

#: The rows each workload is checked on.
W1_PROCESS_ROW = "ours-process-2x2"
W1_THREAD_ROW = "ours-thread-2x2"
W2_ROW = "ours-process-balanced-1x1"
W3_SIZE_MB = 16

def _fmt(value: Any, spec: str = ",.0f", missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A plain-text table; ``align`` has one ``<`` or ``>`` per column."""
    align = align or "<" + ">" * (len(headers) - 1)
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(f"{h:{a}{w}}" for h, a, w in zip(headers, align, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(f"{c:{a}{w}}" for c, a, w in zip(r, align, widths)) for r in rows]
    return "\n".join(out)


def _load(r: dict[str, Any]) -> str:
    """Share of the machine other processes used during the task (noise flag)."""
    load = r.get("other_load")
    return "-" if load is None else f"{load:.0%}"


def _status_note(r: dict[str, Any]) -> str:
    status = r.get("status", "?")
    if status == "ok":
        return r.get("check", "")
    if status == "not installed":
        return f"not installed ({r.get('pip', '')})" if r.get("pip") else "not installed"
    return f"{status}: {r.get('error', '')}"[:90]


def _start_up(r: dict[str, Any]) -> str:
    """The first (warm-up) call, which starts the workers; Ray's own start-up apart."""
    first = _fmt(r.get("warmup_s"), ".2f")
    if r.get("ray_init_s") is not None:
        return f"{first} (+{r['ray_init_s']:.1f} ray.init)"
    return first


# -- reference workload ----------------------------------------------------------------


def add_reference_ratios(rows: list[dict[str, Any]]) -> None:
    """Fill ``x_sequential`` and ``x_ceiling`` from the baseline rows."""
    by_name = {r["name"]: r for r in rows}
    seq = by_name.get("sequential", {}).get("items_per_s")
    ceiling = by_name.get("ceiling", {}).get("items_per_s")
    shared = by_name.get("ceiling-shared-output", {}).get("items_per_s")
    for r in rows:
        ips = r.get("items_per_s")
        r["x_sequential"] = ips / seq if ips and seq else None
        r["x_ceiling"] = ips / ceiling if ips and ceiling else None
        r["x_ceiling_shared_output"] = ips / shared if ips and shared else None


def reference_table(rows: list[dict[str, Any]]) -> str:
    """The reference workload table."""
    body = [
        [
            r["name"],
            _fmt(r.get("items_per_s")),
            _fmt(r.get("median_items_per_s")),
            _fmt(r.get("x_sequential"), ".2f"),
            _fmt(r.get("x_ceiling"), ".2f"),
            _fmt(r.get("cpu_ms_per_item"), ".2f"),
            _start_up(r),
            _fmt(r.get("peak_rss_mb")) if r.get("status") == "ok" else "-",
            _load(r),
            _status_note(r),
        ]
        for r in rows
    ]
    return table(
        [
            "name",
            "items/s",
            "median",
            "x seq",
            "x ceiling",
            "CPU ms/item",
            "1st call s",
            "peak RSS MB",
            "other load",
            "check / status",
        ],
        body,
        "<>>>>>>>><",
    )


# -- transport ---------------------------------------------------------------------------


def add_transport_ratios(rows: list[dict[str, Any]]) -> None:
    """Each case's MB/s over the ``mpqueue-hop`` and ``mpqueue-chain`` cases of its size."""
    base: dict[tuple[str, int], float] = {}
    for r in rows:
        if r.get("status") == "ok" and r["case"].startswith("mpqueue"):
            base[(r["case"], r["size_mb"])] = r["mb_per_s"]
    for r in rows:
        mbs = r.get("mb_per_s")
        for case in ("mpqueue-hop", "mpqueue-chain"):
            b = base.get((case, r["size_mb"]))
            r[f"x_{case.replace('-', '_')}"] = mbs / b if mbs and b else None


def transport_table(rows: list[dict[str, Any]]) -> str:
    """The transport table."""
    body = [
        [
            r["case"],
            f"{r['size_mb']} MB",
            _fmt(r.get("n_arrays"), "d"),
            _fmt(r.get("mb_per_s")),
            _fmt(r.get("x_mpqueue_hop"), ".2f"),
            _fmt(r.get("x_mpqueue_chain"), ".2f"),
            _fmt(r.get("peak_rss_mb")) if r.get("status") == "ok" else "-",
            _load(r),
            "" if r.get("status") == "ok" else _status_note(r),
        ]
        for r in rows
    ]
    return table(
        [
            "case",
            "array",
            "arrays",
            "MB/s",
            "x mpQueue hop",
            "x mpQueue chain",
            "peak RSS MB",
            "other load",
            "status",
        ],
        body,
        "<>>>>>>><",
    )


# -- overhead -------------------------------------------------------------------------------


def overhead_table(rows: list[dict[str, Any]]) -> str:
    """The per-minibatch overhead table."""
    body = [
        [
            r["impl"],
            r["backend"],
            _fmt(r.get("batch_size"), "d"),
            _fmt(r.get("all_in_us"), ",.1f"),
            _fmt(r.get("per_item_us"), ",.1f"),
            _fmt(r.get("per_minibatch_us"), ",.1f"),
            _fmt(r.get("fixed_ms"), ",.1f") if (r.get("fixed_ms") or 0) >= 0 else "~0",
            _fmt(r.get("second_call_ms"), ",.2f"),
            _load(r),
            r.get("note", "") if r.get("status") == "ok" else _status_note(r),
        ]
        for r in rows
    ]
    return table(
        [
            "impl",
            "backend",
            "batch",
            "us/minibatch",
            "us/item",
            "marginal us",
            "fixed ms/call",
            "2nd call ms",
            "other load",
            "status",
        ],
        body,
        "<<>>>>>>><",
    )


# -- memory ---------------------------------------------------------------------------------


def memory_table(rows: list[dict[str, Any]]) -> str:
    """The endless-stream memory summary."""
    body = []
    for r in rows:
        if r.get("status") != "ok":
            body.append([r["backend"], "-", "-", "-", "-", "-", "-", "-", _status_note(r)])
            continue
        body.append(
            [
                r["backend"],
                _fmt(r.get("items"), ",d"),
                _fmt(r.get("items_per_s")),
                _fmt(r.get("steady_first_mb")),
                _fmt(r.get("steady_last_mb")),
                _fmt(r.get("peak_mb")),
                _fmt(r.get("slope_mb_per_million_items"), ",.1f"),
                _fmt(r.get("close_s"), ".2f"),
                {True: "flat", False: "GROWS", None: "too few samples"}[r.get("flat")]
                + f", {r.get('workers_left_after_close')} workers left",
            ]
        )
    return table(
        [
            "backend",
            "items",
            "items/s",
            "RSS start MB",
            "RSS end MB",
            "peak MB",
            "MB/1M items",
            "close s",
            "verdict",
        ],
        body,
        "<>>>>>>><",
    )


# -- W4 and start-up ---------------------------------------------------------------------

#: What each row of the ``sklearn`` section measures, for its table.
_SKLEARN_ROWS = {
    "first-call": "first transform on processes, 2 NumPy functions x 2 workers (fresh interpreter)",
    "warm-call": "fixed cost of a call on warm process workers (a clone, 1 minibatch; median)",
    "grid-process": "W4 GridSearchCV(cv=5), 8 candidates, our pipeline on processes (fresh interpreter)",
    "grid-process-warm": "(info) the same, after a smaller grid warmed the workers up",
    "grid-thread": "W4 grid, our pipeline on threads",
    "grid-sklearn": "W4 grid, a plain scikit-learn Pipeline in its place",
    "server-start": "(info) a fresh interpreter importing what the W4 fork server imports",
}


def add_sklearn_ratios(rows: list[dict[str, Any]]) -> None:
    """Fill ``grid_x_thread`` and ``grid_x_sklearn``: each grid's seconds over the thread and sklearn grids'."""
    grids = {r["name"]: r["seconds"] for r in rows if r.get("status") == "ok" and r["name"].startswith("grid-")}
    for r in rows:
        if r["name"] in grids:
            mine = grids[r["name"]]
            r["grid_x_thread"] = mine / grids["grid-thread"] if "grid-thread" in grids else None
            r["grid_x_sklearn"] = mine / grids["grid-sklearn"] if "grid-sklearn" in grids else None


def sklearn_table(rows: list[dict[str, Any]]) -> str:
    """The W4 and start-up table."""
    body = []
    for r in rows:
        ok = r.get("status") == "ok"
        if r["name"] == "warm-call":
            value = _fmt(r.get("fixed_ms"), ",.1f") + " ms" if ok else "-"
        else:
            value = _fmt(r.get("seconds"), ",.2f") + " s" if ok else "-"
        body.append(
            [
                r["name"],
                value,
                _fmt(r.get("grid_x_thread"), ".2f"),
                _fmt(r.get("grid_x_sklearn"), ".1f"),
                _fmt(r.get("peak_rss_mb")) if ok else "-",
                _load(r),
                _SKLEARN_ROWS.get(r["name"], "") if ok else _status_note(r),
            ]
        )
    return table(
        ["name", "value", "x threads", "x sklearn", "peak RSS MB", "other load", "what / status"],
        body,
        "<>>>>><",
    )


# -- targets --------------------------------------------------------------------------------


def targets(results: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Check every DESIGN.md section 4 target against what this run measured.

    Each target is listed, measured or not: one whose rows did not run (not
    selected, not installed, failed) has ``met=None`` and says why in
    ``detail``.
    """
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, goal: str, ok: bool | None, detail: str = "") -> None:
        out.append({"target": name, "value": value, "goal": goal, "met": ok, "detail": detail})

    def ratio_target(name: str, value: float | None, goal: float, detail: str) -> None:
        if value is None:
            add(name, None, f">= {goal:g}", None, detail)
        else:
            add(name, value, f">= {goal:g}", value >= goal, detail)

    ref = {r["name"]: r for r in results.get("reference", []) if r.get("status") == "ok"}

    def best_peer(kind: str) -> dict[str, Any] | None:
        peers = [r for r in ref.values() if r.get("group") == "peer" and r.get("kind") == kind]
        return max(peers, key=lambda r: r["items_per_s"]) if peers else None

    def vs_peer(name: str, row_name: str, kind: str, goal: float) -> None:
        row, peer = ref.get(row_name), best_peer(kind)
        if row is None or peer is None:
            missing = f"row {row_name}" if row is None else f"{kind} peer"
            ratio_target(name, None, goal, f"no {missing}")
        else:
            ratio = row["items_per_s"] / peer["items_per_s"]
            ratio_target(name, ratio, goal, f"{row_name} vs {peer['name']}")

    def vs_ceiling(name: str, row_name: str, goal: float) -> None:
        row = ref.get(row_name)
        ratio_target(name, row.get("x_ceiling") if row else None, goal, "" if row else f"no row {row_name}")

    vs_ceiling("W1 processes (2 + 2) vs no-transfer ceiling", W1_PROCESS_ROW, TARGET_CEILING_RATIO)
    vs_peer("W1 processes vs best process peer", W1_PROCESS_ROW, "process", TARGET_PROCESS_PEER_RATIO)
    vs_peer("W1 processes vs best thread peer", W1_PROCESS_ROW, "thread", TARGET_THREAD_PEER_RATIO)
    vs_peer("W1 threads vs best thread peer", W1_THREAD_ROW, "thread", TARGET_THREAD_PEER_RATIO)
    vs_ceiling("W2 balanced, 1 + 1 processes, vs ceiling", W2_ROW, TARGET_BALANCED_CEILING_RATIO)

    # W3: parent -> stage -> stage -> parent, transform() (hops and join) against the same
    # topology of multiprocessing.Queue hops; stream() (hops only) against one Queue hop.
    transport = {
        (r["case"], r["size_mb"]): r for r in results.get("transport", []) if r.get("status") == "ok"
    }
    w3 = transport.get(("ours-process", W3_SIZE_MB))
    ratio_target(
        f"W3 {W3_SIZE_MB} MB arrays through 2 process stages, transform() (GB/s)",
        w3["mb_per_s"] / 1000 if w3 else None,
        TARGET_TRANSPORT_GBPS,
        "",
    )
    ratio_target(
        f"W3 {W3_SIZE_MB} MB, transform() vs multiprocessing.Queue chain",
        w3.get("x_mpqueue_chain") if w3 else None,
        TARGET_TRANSPORT_RATIO,
        "",
    )
    w3s = transport.get(("ours-process-stream", W3_SIZE_MB))
    if w3s:
        add(
            f"(info) W3 {W3_SIZE_MB} MB, stream(): GB/s, x multiprocessing.Queue hop",
            w3s["mb_per_s"] / 1000,
            "-",
            None,
            f"x {_fmt(w3s.get('x_mpqueue_hop'), '.1f')} mpQueue hop",
        )

    overhead = [
        r for r in results.get("overhead", []) if r.get("impl") == "ours" and r.get("status") == "ok"
    ]
    for backend, goal in TARGET_OVERHEAD_US.items():
        rows = [r for r in overhead if r["backend"] == backend]
        if not rows:
            add(f"per-minibatch overhead, {backend} (us)", None, f"< {goal:g}", None)
        for r in rows:
            add(
                f"per-minibatch overhead, {backend}, batch {r['batch_size']} (us, all-in)",
                r["all_in_us"],
                f"< {goal:g}",
                r["all_in_us"] < goal,
            )

    # W4 and start-up: the ``sklearn`` section's rows report ``fixed_ms`` / ``grid_x_thread`` /
    # ``first_call_s`` (add_sklearn_ratios fills the ratio).
    w4 = [r for r in results.get("sklearn", []) if r.get("status") == "ok"]
    fixed = next((r["fixed_ms"] for r in w4 if r.get("fixed_ms") is not None), None)
    grid = next(
        (r["grid_x_thread"] for r in w4 if r["name"] == "grid-process" and r.get("grid_x_thread") is not None),
        None,
    )
    add(
        "W4 GridSearchCV: fixed cost per call on warm workers (ms)",
        fixed,
        f"< {TARGET_W4_FIXED_MS:g}",
        None if fixed is None else fixed < TARGET_W4_FIXED_MS,
        "",
    )
    add(
        "W4 GridSearchCV: grid on processes / on threads",
        grid,
        f"<= {TARGET_W4_THREAD_RATIO:g}",
        None if grid is None else grid <= TARGET_W4_THREAD_RATIO,
        "",
    )
    seconds = {r["name"]: r["seconds"] for r in w4}
    if {"server-start", "grid-process-warm", "grid-thread"} <= seconds.keys():
        add(
            "(info) W4 grid, fresh interpreter: floor (server start + warm grid) / threads",
            (seconds["server-start"] + seconds["grid-process-warm"]) / seconds["grid-thread"],
            "-",
            None,
            "a clean fork server imports scikit-learn once",
        )
    startup = next((r["first_call_s"] for r in w4 if r.get("first_call_s") is not None), None)
    add(
        "start-up: first call on processes (s)",
        startup,
        f"< {TARGET_STARTUP_S:g}",
        None if startup is None else startup < TARGET_STARTUP_S,
        "",
    )

    memory = results.get("memory", [])
    for r in memory:
        if r.get("status") == "ok":
            add(
                f"endless stream flat RSS, {r['backend']} (growth MB)",
                r.get("growth_mb"),
                "flat",
                r.get("flat"),
                f"{r['items']:,} items",
            )
        else:
            add(
                f"endless stream flat RSS, {r['backend']}",
                None,
                "flat",
                None,
                f"{r.get('status')}: {r.get('error', '')}",
            )
    if not memory:
        add("endless stream through 3 stages: flat RSS", None, "flat", None)
    return out


def _verdict(t: dict[str, Any]) -> str:
    if t["met"] is not None:
        return "met" if t["met"] else "NOT MET"
    if t["goal"] == "-":
        return ""
    return "not run" if t["value"] is None else "pending"


def targets_table(rows: list[dict[str, Any]]) -> str:
    """The target checks as a table."""
    body = [
        [
            t["target"],
            _fmt(t["value"], ",.2f"),
            t["goal"],
            _verdict(t),
            t["detail"],
        ]
        for t in rows
    ]
    return table(["target (DESIGN.md 4)", "value", "goal", "", "detail"], body, "<><<<")


# -- files ----------------------------------------------------------------------------------


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return obj


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as indented JSON."""
    path.write_text(json.dumps(_jsonable(data), indent=1) + "\n")


_COLORS = {"ours": "tab:blue", "peer": "tab:orange", "baseline": "tab:gray"}


def plot(results: dict[str, list[dict[str, Any]]], out_dir: Path, title: str) -> list[Path]:
    """Bar charts of the reference and transport sections, and the memory profile.

    One figure per section, drawn at the width a page shows them at (9.5 in
    at 110 dpi), with the row names of the tables and a legend that tells
    ours from the peers and the baselines.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        return []
    written = []
    ref = [r for r in results.get("reference", []) if r.get("status") == "ok"]
    transport = [r for r in results.get("transport", []) if r.get("status") == "ok"]
    legend = [
        Patch(color=_COLORS["ours"], label="ours (neuraxle_stream)"),
        Patch(color=_COLORS["peer"], label="peers"),
        Patch(color=_COLORS["baseline"], label="baselines"),
    ]
    if ref:
        fig, ax = plt.subplots(figsize=(9.5, 1.2 + 0.36 * len(ref)), layout="constrained")
        names = [r["name"] for r in ref][::-1]
        values = [r["items_per_s"] for r in ref][::-1]
        colors = [_COLORS.get(r.get("group", ""), "tab:gray") for r in ref][::-1]
        bars = ax.barh(names, values, color=colors)
        for bar, r in zip(bars, ref[::-1]):
            label = f" {r['items_per_s']:,.0f}"
            if r.get("x_ceiling"):
                label += f"  ({r['x_ceiling']:.0%} of ceiling)"
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, label, va="center", fontsize=9)
        ceiling = next((r["items_per_s"] for r in ref if r["name"] == "ceiling"), None)
        handles = list(legend)
        if ceiling:
            ax.axvline(ceiling, color="k", linestyle="--", linewidth=1)
            handles.append(plt.Line2D([], [], color="k", linestyle="--", linewidth=1, label="no-transfer ceiling"))
        ax.set_xlabel("items/s (higher is better)")
        ax.set_xlim(0, max(values) * 1.5)
        ax.set_title("Reference workload: items per second" + (f"\n{title}" if title else ""), fontsize=11)
        ax.legend(handles=handles, loc="lower right", fontsize=9)
        path = out_dir / "benchmark.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    if transport:
        fig, ax = plt.subplots(figsize=(9.5, 1.2 + 0.36 * len(transport)), layout="constrained")
        names = [f"{r['case']} {r['size_mb']} MB" for r in transport][::-1]
        values = [r["mb_per_s"] for r in transport][::-1]
        colors = [
            _COLORS["ours"] if r["case"].startswith("ours") else _COLORS["baseline"] for r in transport
        ][::-1]
        bars = ax.barh(names, values, color=colors)
        for bar, v in zip(bars, values):
            ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, f" {v:,.0f}", va="center", fontsize=9)
        ax.set_xscale("log")
        ax.set_xlim(right=max(values) * 4)
        ax.set_xlabel("MB/s of payload, log scale (higher is better)")
        ax.set_title("Transport: arrays through 2 stages", fontsize=11)
        ax.legend(
            handles=[legend[0], Patch(color=_COLORS["baseline"], label="baselines (multiprocessing.Queue)")],
            loc="lower right", fontsize=9,
        )
        path = out_dir / "transport.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    memory = [r for r in results.get("memory", []) if r.get("status") == "ok" and r.get("series")]
    if memory:
        fig, ax = plt.subplots(figsize=(9.5, 4.5), layout="constrained")
        for r in memory:
            series = r["series"][: r.get("streaming_samples")]
            items = [s[2] / 1000 for s in series]
            rss = [s[1] for s in series]
            ax.plot(items, rss, label=f"{r['backend']} ({r['items_per_s']:,.0f} items/s)")
        ax.set_xlabel("items streamed (thousands)")
        ax.set_ylabel("RSS of the process tree (MB)")
        ax.set_ylim(bottom=0)
        ax.set_title("Endless stream through 3 stages: pipeline.stream(generator)", fontsize=11)
        ax.legend(loc="lower right")
        path = out_dir / "memory.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written
