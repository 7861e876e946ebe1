"""Where numba keeps the compiled kernels: a folder named after the kernels' sources.

numba's own cache (``cache=True``) is invalidated only when the file of a cached function
changes, not when a function it calls from another module or a global it reads changes (numba's
documented caching limitation): after such an edit the old machine code would keep running
while the checkpoint keys, which digest the sources, say the new code made the results.  So,
unless ``NUMBA_CACHE_DIR`` is set, the cache lives in
``$XDG_CACHE_HOME/remedy-dask/numba/<digest>`` (``~/.cache`` by default), the digest covering
every module of the package that uses numba and ``geometry.py`` (constants the kernels read):
any change to them starts a fresh folder, and a shared read-only installation still caches.
Set before numba is imported (stdlib only); Dask worker processes inherit the variable.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
ALWAYS = ("geometry.py",)  # read by kernels as compile-time constants


def kernel_sources_digest(root: Path = PACKAGE) -> str:
    """sha256 (16 hex) of the package's modules that use numba, and of ``ALWAYS``."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        data = path.read_bytes()
        if b"numba" in data or path.relative_to(root).as_posix() in ALWAYS:
            h.update(path.relative_to(root).as_posix().encode() + b"\0" + data)
    return h.hexdigest()[:16]


def set_numba_cache_dir() -> str:
    """Point numba's cache at the digest-named folder unless ``NUMBA_CACHE_DIR`` is set;
    returns the folder in use."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return os.environ["NUMBA_CACHE_DIR"]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = str(base / "remedy-dask" / "numba" / kernel_sources_digest())
    os.environ["NUMBA_CACHE_DIR"] = folder
    config = sys.modules.get("numba.core.config")
    if config is not None:  # numba imported first: its configuration was already read
        config.CACHE_DIR = folder
    return folder
