"""One run per output folder: an exclusive ``fcntl.flock`` on ``OUTDIR/.remedy-dask.lock``.

The lock file holds the holder's pid, host, start time and command line; a second run into the
same folder stops at once with an error naming the holder.  The kernel releases the lock when
the holding process ends, however it ends (a killed run leaves no stale lock to clean up).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from remedy_dask.errors import RemedyError

LOCK_NAME = ".remedy-dask.lock"


class OutputLockedError(RemedyError):
    """Another run writes into the same output folder."""


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike, lock_name: str = LOCK_NAME) -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (created if needed) for the ``with`` block."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / lock_name
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputLockedError(f"{folder}: another remedy-dask run writes here "
                                    f"({_holder(fd)}); wait for it or choose another output "
                                    "folder") from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int) -> str:
    """Who holds the lock, from the lock file's content."""
    try:
        info = json.loads(os.pread(fd, 65536, 0).decode() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "holder unknown"
    command = " ".join(str(c) for c in info.get("command", []))
    return (f"pid {info.get('pid')} on {info.get('host')}, started {info.get('started')}: "
            f"{command}")
