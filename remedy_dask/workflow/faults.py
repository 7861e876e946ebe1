"""Fault injection for the failure-handling tests (tests/test_faults_worker.py); inert unless
its environment variable is set, which nothing but those tests does.

``REMEDY_DASK_TEST_KILL_AMP=047LL-exp02``: the process running the ``ccd`` task of that
amp-exposure kills itself with SIGKILL each time the task starts, as the kernel's
out-of-memory killer would kill a worker.
"""

from __future__ import annotations

import multiprocessing
import os
import signal

KILL_AMP = "REMEDY_DASK_TEST_KILL_AMP"


def kill_if_chosen(key: str, exp: int) -> None:
    """SIGKILL this process if ``REMEDY_DASK_TEST_KILL_AMP`` names (``key``, ``exp``) and it is
    a worker process (never the process that runs the command: threads of a local cluster)."""
    if os.environ.get(KILL_AMP) != f"{key}-exp{exp:02d}":
        return
    if multiprocessing.parent_process() is None:
        raise RuntimeError(f"{KILL_AMP} set but the task runs in the main process: use worker "
                           "processes (local cluster setting processes: true)")
    os.kill(os.getpid(), signal.SIGKILL)
