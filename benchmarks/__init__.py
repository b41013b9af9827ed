"""The neuraxle_stream performance suite: ``python -m benchmarks``.

Importing this package pins BLAS and OpenMP to one thread (before NumPy is
imported, when it is not yet), so that every process of a benchmark, and
every process those start, does the reference work on one core: the
comparisons measure the parallel runtimes, not BLAS threading. See
``benchmarks/README.md`` for what each section and row measures.
"""

import os

#: Environment variables that cap the thread pools of BLAS, OpenMP and friends.
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "BLIS_NUM_THREADS",
)

for _var in THREAD_ENV_VARS:
    os.environ[_var] = "1"
