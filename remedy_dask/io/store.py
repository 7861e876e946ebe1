"""Resumable intermediates: one xarray Dataset per (exposure, amp) in a zarr store.

Layout: ``{root}/exp{NN:02d}/{IFUSLOT:03d}{AMP}/`` (a zarr v3 group).  Every group carries the
attribute ``input_key``: a hash of everything its content depends on (raw frame identity,
calibration content, tables, the whole configuration, the code's digest and the keys of its
inputs; see ``workflow.keys``).  A group is written under a unique temporary name and renamed
into place; its completion marker ``expNN/.{amp}.complete.json`` (the key and the size of every
file of the group) is written last, atomically: a killed run leaves a complete group or one
without a marker, which is recomputed.  A rerun skips a group only if
its marker holds the same key and every listed file is there with its size, so a deleted or
truncated chunk is recomputed, never read back as fill values.  A failed write (a full disk)
removes its temporaries and names the group (``io.writeerrors``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import xarray as xr

from remedy_dask.errors import InputFileError
from remedy_dask.io.jsonable import jsonable
from remedy_dask.io.writeerrors import writing

# Blosc lz4 with byte shuffle: ~6x less CPU than zstd level 3 for 4 % more bytes (the float32
# spectra are noise-dominated and barely compress; masks and NaN runs do)
BLOSC = {"cname": "lz4", "clevel": 5, "shuffle": "shuffle"}
_BLOSC_SHUFFLE = {"noshuffle": numcodecs.Blosc.NOSHUFFLE, "shuffle": numcodecs.Blosc.SHUFFLE,
                  "bitshuffle": numcodecs.Blosc.BITSHUFFLE}
# fiber rows per chunk of 2-D arrays: one IFU (4 amps x 112 fibers), so that reading one IFU of
# an exposure-wide group touches only its own chunks
FIBER_CHUNK_ROWS = 448


def input_key(*parts: Any) -> str:
    """Stable hash of the JSON-serialisable ``parts``."""
    payload = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def group_path(root: str | Path, exp: int, amp_key: str) -> Path:
    return Path(root) / f"exp{exp:02d}" / amp_key


def read_attrs(root: str | Path, exp: int, amp_key: str) -> dict[str, Any]:
    """Attributes of one group ({} if it does not exist or cannot be read)."""
    meta = group_path(root, exp, amp_key) / "zarr.json"
    try:
        return dict(json.loads(meta.read_text()).get("attributes", {}))
    except (OSError, ValueError):
        return {}


def marker_path(root: str | Path, exp: int, amp_key: str) -> Path:
    """The completion marker of a group (beside it: zarr sees no foreign file)."""
    return Path(root) / f"exp{exp:02d}" / f".{amp_key}.complete.json"


def is_complete(root: str | Path, exp: int, amp_key: str, key: str) -> bool:
    """True if the group's completion marker holds ``key`` and every file it lists exists
    with the size it was written with."""
    group = group_path(root, exp, amp_key)
    try:
        marker = json.loads(marker_path(root, exp, amp_key).read_text())
        if marker.get("input_key") != key or not marker.get("files"):
            return False
        return all((group / rel).stat().st_size == size for rel, size in marker["files"].items())
    except (OSError, ValueError, AttributeError):
        return False


def write_dataset(root: str | Path, exp: int, amp_key: str, ds: xr.Dataset, key: str) -> Path:
    """Atomically write ``ds`` as the group of (exp, amp), tagged with ``key``.

    Written in the layout xarray writes (``dimension_names``, attributes; ``xr.open_zarr``
    reads it back identical), as plain files (:func:`_write_group`): the small per-amp groups'
    cost through zarr or ``Dataset.to_zarr`` is zarr's per-array overhead.
    """
    final = group_path(root, exp, amp_key)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{amp_key}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    marker = marker_path(root, exp, amp_key)
    try:
        with writing(final):
            files = _write_group(tmp, ds, key)
            marker.unlink(missing_ok=True)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            tmp_marker = marker.with_name(f"{tmp.name}.json")
            tmp_marker.write_text(json.dumps({"input_key": key, "files": files}))
            os.replace(tmp_marker, marker)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        marker.with_name(f"{tmp.name}.json").unlink(missing_ok=True)
        raise
    return final


def _write_group(tmp: Path, ds: xr.Dataset, key: str) -> dict[str, int]:
    """Write ``ds`` as a zarr v3 group: the metadata documents and Blosc-compressed chunks
    that ``zarr.Group.create_array`` writes (tests/test_store_format.py checks they are the
    same), without zarr's asynchronous machinery, which cost ~4 CPU-ms per array.  Returns the
    size of every file written, by path relative to ``tmp``."""
    tmp.mkdir()
    files = {"zarr.json": _write_json(tmp / "zarr.json", {
        "attributes": jsonable({**ds.attrs, "input_key": key}), "zarr_format": 3,
        "node_type": "group"})}
    for name, var in ds.variables.items():
        values = np.asarray(var.values)
        if values.dtype.kind not in "fiub":
            raise TypeError(f"store.write_dataset: variable {name} has dtype {values.dtype}")
        written = _write_array(tmp / str(name), values, [str(d) for d in var.dims],
                               jsonable(dict(var.attrs)))
        files.update({f"{name}/{rel}": size for rel, size in written.items()})
    return files


def array_metadata(values: np.ndarray, chunks: tuple[int, ...], dimension_names: list[str],
                   attributes: dict[str, Any]) -> dict[str, Any]:
    """The zarr v3 ``zarr.json`` of an array of ``values`` (little-endian, Blosc ``BLOSC``)."""
    dtype = values.dtype
    name = "bool" if dtype.kind == "b" else dtype.name
    fill: Any = "NaN" if dtype.kind == "f" else (False if dtype.kind == "b" else 0)
    endian = {"name": "bytes"} if dtype.itemsize == 1 else {
        "name": "bytes", "configuration": {"endian": "little"}}
    return {
        "shape": list(values.shape),
        "data_type": name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill,
        "codecs": [endian, {"name": "blosc", "configuration": {
            "typesize": dtype.itemsize, **BLOSC, "blocksize": 0}}],
        "attributes": attributes,
        "dimension_names": dimension_names,
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }


def _write_array(path: Path, values: np.ndarray, dims: list[str], attrs: dict[str, Any]
                 ) -> dict[str, int]:
    """One array: its metadata and every chunk (edge chunks padded to the full chunk shape
    with the fill value, as the zarr v3 regular grid stores them).  Returns the size of every
    file written, by path relative to ``path``."""
    values = values.astype(values.dtype.newbyteorder("<"), copy=False)
    chunks = _chunks(values.shape)
    path.mkdir()
    files = {"zarr.json": _write_json(path / "zarr.json",
                                      array_metadata(values, chunks, dims, attrs))}
    if values.size == 0:
        return files
    codec = numcodecs.Blosc(cname=BLOSC["cname"], clevel=BLOSC["clevel"],
                            shuffle=_BLOSC_SHUFFLE[BLOSC["shuffle"]])
    grid = [range(-(-n // c)) for n, c in zip(values.shape, chunks)]
    for index in np.ndindex(*(len(g) for g in grid)):
        block = values[tuple(slice(i * c, (i + 1) * c) for i, c in zip(index, chunks))]
        if block.shape != chunks:
            full = np.full(chunks, np.nan if values.dtype.kind == "f" else 0, values.dtype)
            full[tuple(slice(0, n) for n in block.shape)] = block
            block = full
        rel = "/".join(("c", *map(str, index)))
        chunk = path / rel
        chunk.parent.mkdir(parents=True, exist_ok=True)
        files[rel] = chunk.write_bytes(codec.encode(np.ascontiguousarray(block)))
    return files


def _write_json(path: Path, document: dict[str, Any]) -> int:
    """JSON as zarr reads it (NaN and Infinity allowed in attributes), compact (the C encoder:
    an indented document goes through the pure-Python one); returns the bytes written."""
    return path.write_bytes(json.dumps(document, allow_nan=True).encode())


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Whole rows of FIBER_CHUNK_ROWS fibers for 2-D arrays; 1-D arrays in one chunk."""
    if len(shape) == 2:
        return (max(1, min(FIBER_CHUNK_ROWS, shape[0])), max(1, shape[1]))
    return tuple(max(1, n) for n in shape)


def read_dataset(root: str | Path, exp: int, amp_key: str) -> xr.Dataset:
    """Load one (exp, amp) group into memory."""
    return xr.open_zarr(group_path(root, exp, amp_key), consolidated=False).load()


def read_arrays(root: str | Path, exp: int, amp_key: str, names: tuple[str, ...]
                ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Selected arrays and the attributes of one group."""
    group = group_path(root, exp, amp_key)
    return ({name: _read_array(group / name) for name in names},
            dict(_read_json(group / "zarr.json").get("attributes", {})))


def read_rows(root: str | Path, exp: int, amp_key: str, column: str, value: int,
              names: tuple[str, ...]) -> dict[str, np.ndarray] | None:
    """The contiguous block of rows of one group whose ``column`` equals ``value`` (e.g. one
    IFU's fibers of an exposure-wide group), ``names`` arrays only; None if there is none."""
    group = group_path(root, exp, amp_key)
    rows = np.flatnonzero(_read_array(group / column) == value)
    if rows.size == 0:
        return None
    sl = slice(int(rows[0]), int(rows[-1]) + 1)
    return {name: _read_array(group / name, sl) for name in names}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputFileError(str(path), f"unreadable zarr metadata ({exc})") from None


def _read_array(path: Path, rows: slice = slice(None)) -> np.ndarray:
    """Rows ``rows`` of one array of a group.  The layout :func:`_write_array` writes (regular
    chunks, little-endian bytes, Blosc) is decoded here, reading only the chunks of those rows
    (zarr's asynchronous machinery cost ~10 CPU-ms per array); any other layout through zarr."""
    meta = _read_json(path / "zarr.json")
    codecs = [c.get("name") for c in meta.get("codecs", [])]
    grid = meta.get("chunk_grid", {})
    keys = meta.get("chunk_key_encoding", {})
    if (codecs != ["bytes", "blosc"] or grid.get("name") != "regular" or not meta.get("shape")
            or keys.get("name") != "default"
            or keys.get("configuration", {}).get("separator", "/") != "/"
            or meta["codecs"][0].get("configuration", {}).get("endian", "little") != "little"):
        import zarr

        return zarr.open_array(str(path), mode="r")[rows]
    shape = tuple(meta["shape"])
    chunks = tuple(grid["configuration"]["chunk_shape"])
    dtype = np.dtype(meta["data_type"]).newbyteorder("<")
    start, stop, step = rows.indices(shape[0]) if shape else (0, 0, 1)
    if step != 1:
        raise ValueError(f"store: {path}: row step {step} is not supported")
    stop = max(start, stop)
    out_shape = (stop - start, *shape[1:])
    fill = meta.get("fill_value")
    out = np.full(out_shape, np.nan if fill == "NaN" else (fill or 0), dtype)
    if out.size == 0:
        return out
    codec = numcodecs.Blosc()
    rest = [range(-(-n // c)) for n, c in zip(shape[1:], chunks[1:])]
    for i0 in range(start // chunks[0], -(-stop // chunks[0])):
        lo = i0 * chunks[0]
        src = slice(max(start - lo, 0), min(stop - lo, chunks[0]))
        dst = slice(lo + src.start - start, lo + src.stop - start)
        for index in np.ndindex(*(len(r) for r in rest)):
            chunk = path.joinpath("c", str(i0), *map(str, index))
            if not chunk.is_file():
                continue  # a chunk never written holds the fill value
            block = np.frombuffer(codec.decode(chunk.read_bytes()), dtype).reshape(chunks)
            inner = tuple(slice(i * c, min((i + 1) * c, n))
                          for i, c, n in zip(index, chunks[1:], shape[1:]))
            out[(dst, *inner)] = block[(src, *(slice(0, s.stop - s.start) for s in inner))]
    return out.astype(dtype.newbyteorder("="), copy=False)


def clean_temporaries(root: str | Path) -> int:
    """Remove half-written groups left by a killed run (call only while holding the output
    folder's lock: then no other run writes there); returns how many."""
    n = 0
    for tmp in Path(root).glob("exp*/.*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
        n += 1
    for tmp in Path(root).glob("exp*/.*.tmp.json"):
        tmp.unlink(missing_ok=True)
        n += 1
    return n
