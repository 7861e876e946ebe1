"""One BLAS/OpenMP/numba thread per process, set before numpy is imported (stdlib only).

The graph runs one single-threaded task per core; multi-threaded BLAS on the many small
factorisations spin-waits and stalls for 0.1-0.25 s under load.  Values already set in the
environment are kept.
"""

from __future__ import annotations

import os

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "NUMBA_NUM_THREADS")


def one_thread_per_process() -> None:
    """Set every variable of THREAD_VARIABLES to 1 unless it is already set."""
    for var in THREAD_VARIABLES:
        os.environ.setdefault(var, "1")
