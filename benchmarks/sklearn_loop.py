"""W4: a scikit-learn loop over a queued pipeline, and what warm workers save.

``python -m benchmarks.sklearn_loop [--quick]`` measures, each part in a fresh
interpreter (the first call's start-up only counts in a fresh one):

- ``first_call_s``: the first ``transform`` on processes of a pipeline of two
  plain NumPy functions (2 workers each), in a fresh interpreter: starting the
  workers included (target < 0.5 s);
- ``warm_call_ms``: the fixed cost of a call on warm process workers: a fresh
  clone's one-minibatch ``transform``, median of 30 after a warm-up call
  (target < 20 ms);
- the W4 grid (DESIGN.md section 4): ``GridSearchCV(cv=5)``, 8 candidates,
  over ``Pipeline([("feat", <StandardScaler -> PCA(4) -> a function, 2 workers
  each>), ("clf", LogisticRegression())])`` on 5,000 x 20 rows, with our
  pipeline on processes and on threads, and with a plain scikit-learn
  ``Pipeline`` in its place (target: processes within 2x of threads).

Prints a table and each target with its measured value and whether it is met.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

_FIRST_CALL = """
    import json, time
    import numpy as np
    from neuraxle_stream import SequentialQueuedPipeline

    def double(x):
        return x * 2

    def inc(x):
        return x + 1

    if __name__ == "__main__":
        p = SequentialQueuedPipeline([("a", 2, double), ("b", 2, inc)], batch_size=16)
        t0 = time.perf_counter()
        p.transform(np.arange(64.0))
        print(json.dumps({"first_call_s": time.perf_counter() - t0}))
"""


def scale(x: Any) -> Any:
    """The function step of the W4 pipeline (per item)."""
    return x * 0.5


def feat(backend: str) -> Any:
    """Our 3-step pipeline: StandardScaler -> PCA(4) -> a function, 2 workers each."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    from neuraxle_stream import SequentialQueuedPipeline

    return SequentialQueuedPipeline(
        [("scaler", 2, StandardScaler()), ("pca", 2, PCA(4)), ("scale", 2, scale)],
        batch_size=256, backend=backend,
    )


def grid_seconds(kind: str, n_rows: int = 5000) -> float:
    """The W4 grid with ``kind`` = ``"process"``, ``"thread"`` or ``"sklearn"`` for the feature step."""
    import numpy as np
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    rng = np.random.RandomState(0)
    X = rng.rand(n_rows, 20)
    y = (X[:, 0] + X[:, 1] > 1).astype(int)
    if kind == "sklearn":
        step: Any = make_pipeline(StandardScaler(), PCA(4), FunctionTransformer(lambda a: a * 0.5))
        grid = {"feat__pca__whiten": [False, True]}
    else:
        step = feat(kind)
        grid = {"feat__pca__whiten": [False, True]}
    grid["clf__C"] = [0.1, 1.0, 10.0, 100.0]  # 2 x 4 = 8 candidates
    search = GridSearchCV(Pipeline([("feat", step), ("clf", LogisticRegression())]), grid, cv=5)
    t0 = time.perf_counter()
    search.fit(X, y)
    return time.perf_counter() - t0


def warm_call_ms(calls: int = 30) -> float:
    """Median time of a fresh clone's one-minibatch ``transform`` on warm process workers."""
    import numpy as np
    from sklearn.base import clone

    from neuraxle_stream import SequentialQueuedPipeline

    def noop(x: Any) -> Any:
        return x

    pipe = SequentialQueuedPipeline([("a", 2, noop), ("b", 2, noop)], batch_size=16)
    one = np.arange(16.0)
    clone(pipe).transform(one)  # warm-up: starts the workers
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        clone(pipe).transform(one)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def _in_child(code: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True, check=True,
        timeout=600,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _measure(name: str, *args: str) -> dict[str, Any]:
    code = f"""
        import json
        from benchmarks import sklearn_loop
        if __name__ == "__main__":
            print(json.dumps({{"{name}": sklearn_loop.{name}({", ".join(args)})}}))
    """
    return _in_child(code)


def run(quick: bool = False) -> dict[str, Any]:
    """Every measure of W4, each in a fresh interpreter."""
    results: dict[str, Any] = {}
    results.update(_in_child(_FIRST_CALL))
    results.update(_measure("warm_call_ms"))
    rows = "1000" if quick else "5000"
    for kind in ("process", "thread", "sklearn"):
        results[f"grid_{kind}_s"] = _measure("grid_seconds", repr(kind), rows)["grid_seconds"]
    return results


def checks(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """``(target, measured, met)`` for each W4 and start-up target of DESIGN.md section 4."""
    ratio = results["grid_process_s"] / results["grid_thread_s"]
    return [
        ("W4 fixed cost per call on warm workers < 20 ms", f"{results['warm_call_ms']:.1f} ms",
         results["warm_call_ms"] < 20),
        ("W4 grid on processes within 2x of threads", f"{ratio:.2f}x", ratio <= 2.0),
        ("start-up: first call on processes, numpy functions < 0.5 s", f"{results['first_call_s']:.2f} s",
         results["first_call_s"] < 0.5),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 rows instead of 5,000")
    results = run(parser.parse_args().quick)
    print("W4: GridSearchCV(cv=5), 8 candidates")
    for kind in ("process", "thread", "sklearn"):
        print(f"  {kind:<8} {results[f'grid_{kind}_s']:8.2f} s")
    print(f"first call (processes, numpy functions): {results['first_call_s']:.3f} s")
    print(f"fixed cost per call on warm workers:      {results['warm_call_ms']:.1f} ms")
    for target, measured, met in checks(results):
        print(f"  [{'met' if met else 'NOT met'}] {target}: {measured}")


if __name__ == "__main__":
    main()
