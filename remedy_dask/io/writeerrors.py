"""Write errors named: an ``OSError`` raised while writing (a full disk: ``ENOSPC``, a quota,
a read-only folder) re-raised as the same kind of error naming the file or folder being
written, its message on one line (h5py's spans several and names no path the user knows;
``write()`` names none).
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator
from pathlib import Path


def named(exc: OSError, path: str | Path) -> OSError:
    """``exc`` as an ``OSError`` of the same errno (so the same subclass) naming ``path``."""
    code = exc.errno
    if not code and str(exc).startswith("Not enough space on disk"):
        code = errno.ENOSPC  # astropy checks the free space before it writes, and sets no errno
    if code:
        return OSError(code, os.strerror(code), str(path))
    return OSError(" ".join(str(exc).split()) + f": {path}")


@contextlib.contextmanager
def writing(path: str | Path, *temporaries: Path) -> Iterator[None]:
    """Name ``path`` in an ``OSError`` raised inside; ``temporaries`` are removed first."""
    try:
        yield
    except OSError as exc:
        for tmp in temporaries:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
        if exc.filename == str(path):
            raise
        raise named(exc, path) from exc
