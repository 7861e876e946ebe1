"""Per-process tuning of the worker processes (and of the client process for ``--cluster sync``).

glibc's malloc serves every allocation above a dynamic threshold (128 KB - 32 MB) with a fresh
``mmap`` and unmaps it on free, and distributed's nanny sets ``MALLOC_TRIM_THRESHOLD_=65536`` so
that freed heap is returned at once.  The amp chain allocates many 1-8 MB temporaries per task,
so each of them is page-faulted in again, zero-filled by the kernel: on the 2-core VM this cost
a third of the chain's time (measured, 24 amp-exposures in one process: 337 -> ~250 ms per
amp-exposure, system time 2.8 -> 0.9 s).  :func:`tune_malloc` keeps arrays up to 64 MB in the
heap and trims above 128 MB of free heap.  Measured on the full 78-IFU reduction (2 workers):
these values give 188 s and a 3.3 GB peak for the whole process tree; 256 MB / 1 GB gave 174 s
but an 11.7 GB peak (large observation-level arrays stayed in fragmented heaps).
"""

from __future__ import annotations

import ctypes
import logging
import sys

from distributed.diagnostics.plugin import WorkerPlugin

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 64 * 2**20  # bytes: larger allocations still get their own mapping
TRIM_THRESHOLD = 128 * 2**20  # bytes of free heap kept before returning memory to the OS
_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers (malloc.h)
_M_MMAP_THRESHOLD = -3
_tuned = False


def tune_malloc() -> bool:
    """Apply the thresholds above to this process (glibc only); True if applied."""
    global _tuned
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl): nothing to tune, nothing substituted
        log.info("malloc tuning skipped: no glibc in this process")
        return False
    _tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not _tuned:
        log.warning("glibc mallopt refused the malloc thresholds: running with its defaults")
    return _tuned


class _CommSizeProbe(logging.Filter):
    """Drop one warning of distributed's comm layer: before sending a message it probes its
    size with ``safe_sizeof(msg, default_size=-1)`` and, when a deeply nested message (the
    graph of an observation) exceeds ``dask.sizeof``'s recursion depth, offloads the
    serialisation by design (``distributed.comm.utils.to_frames``) after logging "Sizeof
    calculation ... failed. Defaulting to -1 B".  Other sizeof failures still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Defaulting to -1 B" not in record.getMessage()


def quiet_comm_size_probe() -> None:
    """Install :class:`_CommSizeProbe` on the ``distributed.sizeof`` logger (idempotent)."""
    logger = logging.getLogger("distributed.sizeof")
    if not any(isinstance(f, _CommSizeProbe) for f in logger.filters):
        logger.addFilter(_CommSizeProbe())


def malloc_tuned() -> bool:
    """Whether :func:`tune_malloc` succeeded in this process."""
    return _tuned


class WorkerSetup(WorkerPlugin):
    """Run :func:`tune_malloc` on every worker, including workers that join later (adaptive
    dask-jobqueue clusters, an existing ``tcp://`` scheduler's workers)."""

    name = "remedy-dask-worker-setup"

    def setup(self, worker: object) -> None:
        tune_malloc()
        quiet_comm_size_probe()
