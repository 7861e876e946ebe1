"""Content digests for the keys of resumable intermediates.

A checkpoint's key covers everything that changes its content: the raw frame's identity
(:func:`frame_identity`), the calibration's content (``calfile.amp_digests``), auxiliary tables
(:func:`file_digest`), the whole effective configuration (:func:`config_digest`) and the code
(:func:`code_digest`, the Python sources a stage runs).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20

# the package's sources each stored stage runs (folders and modules, relative to the package):
# the code part of the checkpoint keys (``workflow.keys``) and of the products' provenance
AMP_CODE = ("amp", "numeric", "io", "geometry.py", "config.py", "errors.py", "exposure/fiberflat.py",
            "workflow/amp_chain.py", "workflow/amp_graph.py", "workflow/faults.py",
            "workflow/frames.py", "workflow/keys.py", "workflow/nodes.py")
SKY_CODE = AMP_CODE + ("exposure", "workflow/exposure.py")


def hash_parts(*parts: Any) -> str:
    """Stable hex digest of JSON-serialisable ``parts``."""
    payload = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


@functools.lru_cache(maxsize=8)
def code_digest(parts: tuple[str, ...] = ()) -> str:
    """Digest of the package's ``.py`` sources under ``parts`` (folders or files relative to
    the package; all of it when empty), computed once per process and stage."""
    root = Path(__file__).resolve().parents[1]
    paths = set()
    for part in parts or ("",):
        target = root / part
        paths |= {target} if target.is_file() else set(target.rglob("*.py"))
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()[:24]


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(_CHUNK):
            h.update(block)
    return h.hexdigest()[:24]


def file_digest(path: str | os.PathLike | None) -> str:
    """Content digest of a file (cached by path, size and mtime); ``""`` for None."""
    if path is None:
        return ""
    st = os.stat(path)
    return _file_digest(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def frame_identity(ref: Any) -> list[Any]:
    """What identifies a raw frame's bytes without reading them: the file's size and mtime,
    and for a tar member the tar's size and mtime with the member's offset and size."""
    from remedy_dask.io.rawframe import TarMember

    ident: list[Any] = [ref.date, ref.obs, ref.exp, ref.name]
    src = ref.source
    path = src.tar_path if isinstance(src, TarMember) else src
    try:
        st = os.stat(path)
        ident += [st.st_size, st.st_mtime_ns]
    except OSError:
        ident += ["missing"]
    if isinstance(src, TarMember):
        ident += [src.member, src.offset, src.size]
    return ident


def config_digest(config: Any) -> str:
    """Digest of the whole effective configuration."""
    return hash_parts(config.to_dict())[:24]
