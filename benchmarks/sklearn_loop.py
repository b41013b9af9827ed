"""Section 5 (``sklearn``): W4, a scikit-learn loop over a queued pipeline, and the start-up.

Each task runs in a fresh interpreter (``_child.py``), as every task of the
suite (the first call's start-up only counts in a fresh one):

- ``first-call``: the first ``transform`` on processes of a pipeline of two
  plain NumPy functions (2 workers each, 64 items), in a fresh interpreter:
  starting the fork server and the workers included (target < 0.5 s);
- ``warm-call``: the fixed cost of a call on warm process workers: a fresh
  clone's one-minibatch ``transform``, median of 30 after a warm-up call
  (target < 20 ms);
- ``grid-process``, ``grid-thread``, ``grid-sklearn``: the W4 grid (DESIGN.md
  section 4), ``GridSearchCV(cv=5)``, 8 candidates, over
  ``Pipeline([("feat", <StandardScaler -> PCA(4) -> a function, 2 workers
  each>), ("clf", LogisticRegression())])`` on 5,000 x 20 rows (quick 1,000),
  with our pipeline on processes and on threads, and with a plain
  scikit-learn ``Pipeline`` in its place (target: processes within 2x of
  threads). Fresh interpreter: the process grid starts its fork server and
  workers in its first fit, as a user's script would;
  ``grid-process-warm`` is the same grid after a smaller one (1,000 rows)
  warmed the pool up (for information: what each later grid of a script
  costs);
- ``server-start``: a fresh interpreter importing what the fork server of
  the W4 steps imports (scikit-learn through them): what the first call of a
  fresh interpreter waits for at least, since a clean server must import
  scikit-learn once; with the warm grid it bounds the fresh grid from below
  (for information).

Every task reports ``seconds`` (lower is better; the best round is kept).
``python -m benchmarks.sklearn_loop [--quick]`` runs this section alone
(``python -m benchmarks --only sklearn``).
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

#: Rows of the W4 grid (``--quick``: 1,000).
GRID_ROWS = 5000
GRID_KINDS = ("process", "process-warm", "thread", "sklearn")


def double(x: Any) -> Any:
    """The first function of the first-call pipeline."""
    return x * 2


def inc(x: Any) -> Any:
    """The second function of the first-call pipeline."""
    return x + 1


def scale(x: Any) -> Any:
    """The function step of the W4 pipeline (per item)."""
    return x * 0.5


def noop(x: Any) -> Any:
    """The steps of the warm-call pipeline."""
    return x


def first_call_s() -> float:
    """The first ``transform`` on processes of two plain functions, 2 workers each (fresh interpreter)."""
    import numpy as np

    from neuraxle_stream import SequentialQueuedPipeline

    pipe = SequentialQueuedPipeline([("a", 2, double), ("b", 2, inc)], batch_size=16)
    x = np.arange(64.0)
    t0 = time.perf_counter()
    out = pipe.transform(x)
    elapsed = time.perf_counter() - t0
    if not np.array_equal(np.asarray(out), x * 2 + 1):
        raise AssertionError("wrong output")
    return elapsed


def feat(backend: str) -> Any:
    """Our 3-step pipeline: StandardScaler -> PCA(4) -> a function, 2 workers each."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    from neuraxle_stream import SequentialQueuedPipeline

    return SequentialQueuedPipeline(
        [("scaler", 2, StandardScaler()), ("pca", 2, PCA(4)), ("scale", 2, scale)],
        batch_size=256, backend=backend,
    )


def grid_seconds(kind: str, n_rows: int = GRID_ROWS) -> float:
    """The W4 grid with ``kind`` = ``"process"``, ``"process-warm"``, ``"thread"`` or ``"sklearn"``."""
    import numpy as np
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    if kind == "process-warm":
        grid_seconds("process", 1000)  # starts the fork server and warm workers
        kind = "process"
    rng = np.random.RandomState(0)
    X = rng.rand(n_rows, 20)
    y = (X[:, 0] + X[:, 1] > 1).astype(int)
    step: Any
    if kind == "sklearn":
        step = make_pipeline(StandardScaler(), PCA(4), FunctionTransformer(scale))
    else:
        step = feat(kind)
    grid = {"feat__pca__whiten": [False, True], "clf__C": [0.1, 1.0, 10.0, 100.0]}  # 8 candidates
    search = GridSearchCV(Pipeline([("feat", step), ("clf", LogisticRegression())]), grid, cv=5)
    t0 = time.perf_counter()
    search.fit(X, y)
    return time.perf_counter() - t0


def warm_call_ms(calls: int = 30) -> float:
    """Median time of a fresh clone's one-minibatch ``transform`` on warm process workers."""
    import numpy as np
    from sklearn.base import clone

    from neuraxle_stream import SequentialQueuedPipeline

    pipe = SequentialQueuedPipeline([("a", 2, noop), ("b", 2, noop)], batch_size=16)
    one = np.arange(16.0)
    clone(pipe).transform(one)  # warm-up: starts the workers
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        clone(pipe).transform(one)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def server_start_s() -> float:
    """Seconds for a fresh interpreter to import what the fork server of the W4 steps imports."""
    import subprocess

    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    from neuraxle_stream.start_methods import server_modules, step_modules

    modules = server_modules(step_modules([StandardScaler(), PCA(4)]))
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import " + ", ".join(modules)], check=True)
    return time.perf_counter() - t0


def run_task(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one task of this section (in the fresh interpreter of ``_child.py``)."""
    name = spec["name"]
    if name == "first-call":
        seconds = first_call_s()
        return {"seconds": seconds, "first_call_s": seconds}
    if name == "warm-call":
        ms = warm_call_ms()
        return {"seconds": ms / 1e3, "fixed_ms": ms}
    if name == "server-start":
        return {"seconds": server_start_s()}
    return {"seconds": grid_seconds(spec["kind"], spec["rows"]), "rows": spec["rows"]}


def specs(rows: int) -> list[dict[str, Any]]:
    """The tasks of this section."""
    out: list[dict[str, Any]] = [
        {"section": "sklearn", "module": "sklearn_loop", "name": "first-call", "kind": "process"},
        {"section": "sklearn", "module": "sklearn_loop", "name": "warm-call", "kind": "process"},
        {"section": "sklearn", "module": "sklearn_loop", "name": "server-start", "kind": "process"},
    ]
    out += [{"section": "sklearn", "module": "sklearn_loop", "name": f"grid-{kind}", "kind": kind, "rows": rows} for kind in GRID_KINDS]
    return out


def main() -> int:
    """``python -m benchmarks.sklearn_loop [options]``: this section alone, with the target checks."""
    from benchmarks.__main__ import main as suite

    return suite(["--only", "sklearn", "--check", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
