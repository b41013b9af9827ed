"""Runs one benchmark task in a fresh interpreter: ``python -m benchmarks._child SPEC OUT``.

Every task runs in its own process so that rows cannot disturb each other
(imports such as torch, forkservers, pools, leaked memory), a crash or a hang
is contained, and the harness can measure the RSS of the task's process tree.
``SPEC`` and ``OUT`` are JSON files: the task and its result.
"""

import json
import sys
import traceback
from importlib import import_module

import benchmarks  # noqa: F401 - pins BLAS to one thread before NumPy is imported


def main(spec_path: str, out_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    try:
        module = import_module(f"benchmarks.{spec.get('module', spec['section'])}")
        result = module.run_task(spec)
        result.setdefault("status", "ok")
        code = 0
    except BaseException as exc:  # reported in the table, never fatal to the suite
        result = {
            "status": "failed",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
        code = 1
    with open(out_path, "w") as f:
        json.dump(result, f)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
