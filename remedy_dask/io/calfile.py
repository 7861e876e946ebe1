"""The calibration file (HDF5): one group per amplifier, ``{IFUSLOT:03d}{AMP}``.

Datasets per group (shapes for one amp; units in each dataset's ``units`` attribute):

=====================  ==================  ===============================================
``trace``              (112, 1032) f8      row of each fiber centre per column (px)
``wavelength``         (112, 1032) f8      wavelength per fiber and column (A)
``bias``               (1032, 1032) f4     bias model (e-): column pattern + smooth 2-D structure
``dark_rate``          (1032, 1032) f4     dark-current model (e-/s), same form (hot pixels masked)
``pixel_mask``         (1032, 1032) u1     non-zero = bad pixel
``fiber_to_fiber``     (112, 1036) f4      relative fiber throughput on DEF_WAVE
``dead``               (112,) u1           dead or missing fiber
``spectral_mask``      (112, 1032) u1      bad fiber columns on the native grid
``profile/*``          small arrays        cross-dispersion profile model (profile.ProfileModel)
``qa/*``               small arrays        per-fiber trace RMS, arc RMS, number of lines, ...
=====================  ==================  ===============================================

Group attributes: ``specid``, ``ifuid``, ``ifuslot``, ``amp``, ``contid``, ``read_noise`` (e-),
``status`` ("ok" or "failed"), ``flags`` (JSON list of reasons), ``qa`` (JSON dict of numbers).
File attributes: ``format_version``, ``code_version``, ``code_digest`` (of the package's
sources, :func:`remedy_dask.io.digest.code_digest`), ``created``, ``window`` (dates), ``config``
(YAML), ``inputs`` per group as the dataset ``inputs`` (frame names).

Content digests: every group carries ``digest`` (of its attributes and arrays, written with it)
and the file ``content_digest`` (of the groups' digests); the keys of the science checkpoints
use them (:func:`amp_digests`; a file written before digests existed is hashed once instead).
Readers check the format version's major number and, per group, the attributes and arrays the
science reduction needs (:func:`amp_statuses`).

Writes are atomic: the file is written under a temporary name and renamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from remedy_dask import __version__
from remedy_dask.io.digest import code_digest
from remedy_dask.io.h5chunks import read_dataset
from remedy_dask.io.jsonable import jsonable
from remedy_dask.errors import InputFileError

FORMAT_VERSION = "1.0"
REQUIRED_ATTRS = ("specid", "ifuid", "ifuslot", "amp")
# what the science chain reads of an amp (not the QA spectra of the flat, arc, twilight)
SCIENCE_ARRAYS = ("bias", "dark_rate", "pixel_mask", "trace", "wavelength", "fiber_to_fiber", "dead")

# dataset name -> (dtype, units, quantisation step or None)
_ARRAYS: dict[str, tuple[str, str, float | None]] = {
    "trace": ("f8", "pixel", None),
    "wavelength": ("f8", "Angstrom", None),
    "bias": ("f4", "electron", 0.01),
    "dark_rate": ("f4", "electron / s", 1e-5),
    "pixel_mask": ("u1", "", None),
    "fiber_to_fiber": ("f4", "", None),
    "dead": ("u1", "", None),
    "spectral_mask": ("u1", "", None),
    "flat_spectra": ("f4", "electron", None),
    "twilight_spectra": ("f4", "electron", None),
    "arc_spectra": ("f4", "electron", None),
}


@dataclass
class AmpCalibration:
    """Everything the science reduction needs for one amplifier."""

    ifuslot: int
    amp: str
    specid: int
    ifuid: int
    contid: str = ""
    read_noise: float = float("nan")
    status: str = "ok"
    flags: list[str] = field(default_factory=list)
    qa: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # names of _ARRAYS
    profile: dict[str, np.ndarray] = field(default_factory=dict)
    qa_arrays: dict[str, np.ndarray] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.ifuslot:03d}{self.amp}"

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]


def _quantised(values: np.ndarray, step: float | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Round to ``step`` so that noise-dominated images compress (the loss is << their noise)."""
    if step is None:
        return values, {}
    finite = np.isfinite(values)
    out = np.where(finite, np.round(values / step) * step, np.nan).astype(values.dtype)
    return out, {"quantisation_step": step}


def _write_file_attrs(h5: h5py.File, attrs: dict[str, Any] | None) -> None:
    """Format version, code version, creation time and the caller's provenance."""
    h5.attrs["format_version"] = FORMAT_VERSION
    h5.attrs["code_version"] = __version__
    h5.attrs["code_digest"] = code_digest()  # the package's sources (io.digest), as products
    h5.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    for key, value in (attrs or {}).items():
        h5.attrs[key] = value if isinstance(value, (str, int, float)) else json.dumps(value)


def write_calibration(
    path: str | Path, amps: list[AmpCalibration], attrs: dict[str, Any] | None = None
) -> Path:
    """Write all amps atomically to ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        _write_amps(tmp, amps, attrs)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _write_amps(tmp: Path, amps: list[AmpCalibration], attrs: dict[str, Any] | None) -> None:
    with h5py.File(tmp, "w") as h5:
        _write_file_attrs(h5, attrs)
        digests = []
        for cal in amps:
            g = h5.create_group(cal.key)
            g.attrs.update(
                specid=cal.specid, ifuid=cal.ifuid, ifuslot=cal.ifuslot, amp=cal.amp,
                contid=cal.contid, read_noise=cal.read_noise, status=cal.status,
                flags=json.dumps(cal.flags), qa=json.dumps(jsonable(cal.qa, nonfinite_as_null=True)),
            )
            g.attrs["read_noise_units"] = "electron"
            for name, values in cal.arrays.items():
                _write_array(g, name, values)
            for sub, arrays in (("profile", cal.profile), ("qa", cal.qa_arrays)):
                if arrays:
                    sg = g.create_group(sub)
                    for name, values in arrays.items():
                        sg.create_dataset(name, data=np.asarray(values))
            g.create_dataset("inputs", data=np.array(cal.inputs, dtype=h5py.string_dtype()))
            g.attrs["digest"] = amp_content_digest(cal)
            digests.append(g.attrs["digest"])
        h5.attrs["content_digest"] = _combined(digests)


def _tmp_name(path: Path, what: str = "tmp") -> Path:
    """A temporary name next to ``path`` that no other run uses."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.{what}")


def _hash_arrays(h: Any, arrays: dict[str, np.ndarray]) -> None:
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}".encode())
        h.update(a.tobytes())


def amp_content_digest(cal: AmpCalibration) -> str:
    """Digest of everything one amp's group holds (attributes and arrays)."""
    h = hashlib.sha256()
    h.update(json.dumps([cal.specid, cal.ifuid, cal.ifuslot, cal.amp, cal.contid,
                         repr(cal.read_noise), cal.status, cal.flags, jsonable(cal.qa, nonfinite_as_null=True),
                         cal.inputs], sort_keys=True, default=str).encode())
    _hash_arrays(h, {k: np.asarray(v).astype(_ARRAYS[k][0]) for k, v in cal.arrays.items()})
    _hash_arrays(h, {f"profile/{k}": v for k, v in cal.profile.items()})
    _hash_arrays(h, {f"qa/{k}": v for k, v in cal.qa_arrays.items()})
    return h.hexdigest()[:24]


def _combined(digests: list[str]) -> str:
    return hashlib.sha256("|".join(sorted(str(d) for d in digests)).encode()).hexdigest()[:24]


CHUNK_BYTES = 1 << 20  # HDF5 chunks of whole rows, about this size: few, large chunks to decode


def storage_options(data: np.ndarray, quantised: bool) -> dict[str, Any]:
    """Chunks and filters of one calibration array: deflate (level 4) on whole-row chunks, the
    byte shuffle only if not quantised (the quantised bias and dark compress better without it
    and decode in ~0.6x the CPU); HDF5 records filters per dataset, so older files read as ever."""
    rows = max(1, min(data.shape[0], CHUNK_BYTES // max(1, data[:1].nbytes))) if data.ndim else 1
    chunks = (rows, *data.shape[1:]) if data.ndim and data.size else True
    return {"chunks": chunks, "compression": "gzip", "compression_opts": 4,
            "shuffle": not quantised}


def _write_array(group: h5py.Group, name: str, values: np.ndarray) -> None:
    """One array of ``_ARRAYS`` (its dtype, units, quantisation), replacing an existing one."""
    dtype, units, step = _ARRAYS[name]
    data, extra = _quantised(np.asarray(values).astype(dtype), step)
    if name in group:
        del group[name]
    ds = group.create_dataset(name, data=data, **storage_options(data, step is not None))
    ds.attrs["units"] = units
    ds.attrs.update(extra)


def amend_amp(path: str | Path, key: str, arrays: dict[str, np.ndarray],
              qa: dict[str, Any] | None = None, failed: str | None = None) -> Path:
    """Add or replace arrays and QA values of amp ``key`` in the one-amp file ``path`` (a
    calibration part written before the focal-plane fan-in); ``failed`` marks the amp failed
    with that reason.  Atomic: the amended copy replaces the file."""
    path = Path(path)
    tmp = _tmp_name(path, "amend.tmp")
    shutil.copyfile(path, tmp)
    with h5py.File(tmp, "r+") as h5:
        g = h5[key]
        h = hashlib.sha256(str(g.attrs.get("digest", "")).encode())
        _hash_arrays(h, {k: np.asarray(v).astype(_ARRAYS[k][0]) for k, v in arrays.items()})
        h.update(json.dumps([jsonable(qa or {}, nonfinite_as_null=True), failed], sort_keys=True).encode())
        for name, values in arrays.items():
            _write_array(g, name, values)
        if qa:
            g.attrs["qa"] = json.dumps(jsonable({**json.loads(g.attrs["qa"]), **qa}, nonfinite_as_null=True))
        if failed:
            g.attrs["status"] = "failed"
            g.attrs["flags"] = json.dumps(json.loads(g.attrs["flags"]) + [failed])
        g.attrs["digest"] = h.hexdigest()[:24]
        h5.attrs["content_digest"] = _combined([g.attrs["digest"]])
    os.replace(tmp, path)
    return path


def merge_parts(parts: list[Path], path: str | Path, attrs: dict[str, Any] | None = None) -> Path:
    """Merge per-amp calibration files into one (chunks are copied without recompression)."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with h5py.File(tmp, "w") as out:
            _write_file_attrs(out, attrs)
            for part in parts:
                with h5py.File(part, "r") as src:
                    for key in src:
                        src.copy(src[key], out, name=key)
            out.attrs["content_digest"] = _combined(
                [str(g.attrs.get("digest", "")) for g in out.values()])
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def list_amps(path: str | Path) -> list[str]:
    """Group names (``047LL`` ...) in a calibration file."""
    with _open(path) as h5:
        return sorted(k for k in h5.keys() if isinstance(h5[k], h5py.Group))


def amp_statuses(path: str | Path, science: bool = False) -> dict[str, str]:
    """``{amp key: "ok" | "failed: reason" | "invalid: problem"}`` without reading any array.

    A group lacking an identity attribute, with ``flags`` that are not a JSON list, or (with
    ``science``) lacking an array the science chain needs is ``invalid``."""
    out = {}
    with _open(path) as h5:
        _check_format(h5, path)
        for key, g in h5.items():
            if not isinstance(g, h5py.Group):
                continue
            problem = _group_problem(g, science)
            if problem:
                out[key] = f"invalid: {path}: group {key}: {problem}"
                continue
            status = str(g.attrs.get("status", "ok"))
            if status != "ok":
                flags = json.loads(g.attrs.get("flags", "[]"))
                status = f"{status}: {flags[-1] if flags else 'no reason recorded'}"
            out[key] = status
    return out


def _group_problem(g: h5py.Group, science: bool) -> str | None:
    """What makes an amp group unusable, or None."""
    missing = [a for a in REQUIRED_ATTRS if a not in g.attrs]
    if missing:
        return f"missing attribute(s) {', '.join(missing)}"
    for name in ("specid", "ifuid", "ifuslot"):
        try:
            int(g.attrs[name])
        except (TypeError, ValueError):
            return f"attribute {name}={g.attrs[name]!r} is not an integer"
    for name in ("flags", "qa"):
        try:
            value = json.loads(g.attrs.get(name, "[]" if name == "flags" else "{}"))
        except (TypeError, ValueError):
            return f"attribute {name} is not JSON"
        if not isinstance(value, list if name == "flags" else dict):
            return f"attribute {name} is not a JSON {'list' if name == 'flags' else 'object'}"
    if science and str(g.attrs.get("status", "ok")) == "ok":
        absent = [n for n in SCIENCE_ARRAYS if n not in g]
        if absent:
            return f"missing dataset(s) {', '.join(absent)}"
    return None


def _check_format(h5: h5py.File, path: str | Path) -> None:
    """The file's format version must have this code's major version."""
    version = h5.attrs.get("format_version")
    if version is None:
        raise InputFileError(str(path), "no format_version attribute: not a remedy-dask "
                             "calibration file")
    version = version.decode() if isinstance(version, bytes) else str(version)
    if version.split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise InputFileError(str(path), f"calibration format version {version} cannot be read "
                             f"by this code (format {FORMAT_VERSION}): recalibrate")


def amp_digests(path: str | Path, keys: list[str]) -> dict[str, str]:
    """Content digest of each amp group in ``keys``; groups written without one (older files)
    get the digest of the whole file (hashed once per process)."""
    from remedy_dask.io.digest import file_digest

    out = {}
    with _open(path) as h5:
        for key in keys:
            digest = h5[key].attrs.get("digest") if key in h5 else None
            out[key] = str(digest) if digest is not None else ""
    if any(not d for d in out.values()):
        whole = file_digest(path)
        out = {k: d or f"file:{whole}:{k}" for k, d in out.items()}
    return out


def file_attrs(path: str | Path) -> dict[str, Any]:
    with _open(path) as h5:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in h5.attrs.items()}


def read_amp(path: str | Path, key: str, arrays: tuple[str, ...] | None = None,
             qa: bool = True) -> AmpCalibration:
    """Read one amp group (``047LL``): every array, or only ``arrays`` (the profile always);
    the QA arrays only with ``qa``."""
    with _open(path) as h5:
        if key not in h5:
            raise InputFileError(str(path), f"no calibration for amp {key}")
        g = h5[key]
        problem = _group_problem(g, science=False)
        if problem:
            raise InputFileError(str(path), f"group {key}: {problem}")
        a = g.attrs
        cal = AmpCalibration(
            ifuslot=int(a["ifuslot"]), amp=str(a["amp"]), specid=int(a["specid"]),
            ifuid=int(a["ifuid"]), contid=str(a.get("contid", "")),
            read_noise=float(a.get("read_noise", np.nan)), status=str(a.get("status", "ok")),
            flags=json.loads(a.get("flags", "[]")), qa=json.loads(a.get("qa", "{}")),
        )
        for name in _ARRAYS if arrays is None else arrays:
            if name in g:
                cal.arrays[name] = read_dataset(g[name])
        for sub, target in (("profile", cal.profile), ("qa", cal.qa_arrays)):
            if sub in g and (qa or sub != "qa"):
                for name, ds in g[sub].items():
                    target[name] = read_dataset(ds)
        if "inputs" in g:
            cal.inputs = [s.decode() if isinstance(s, bytes) else str(s) for s in g["inputs"][...]]
    return cal


def read_arrays_many(path: str | Path, keys: list[str], names: tuple[str, ...]
                     ) -> dict[str, dict[str, np.ndarray]]:
    """The named datasets of many amp groups with one open of the file (missing ones are absent
    from an amp's result): ``{key: {name: array}}``."""
    out = {}
    with _open(path) as h5:
        for key in keys:
            if key not in h5:
                raise InputFileError(str(path), f"no calibration for amp {key}")
            g = h5[key]
            out[key] = {name: read_dataset(g[name]) for name in names if name in g}
    return out


def amp_identities(path: str | Path, keys: list[str]) -> dict[str, tuple[int, int]]:
    """``{amp key: (SPECID, IFUID)}`` from the groups' attributes."""
    with _open(path) as h5:
        missing = [k for k in keys if k not in h5]
        if missing:
            raise InputFileError(str(path), f"no calibration for amp(s) {', '.join(missing)}")
        return {k: (int(h5[k].attrs["specid"]), int(h5[k].attrs["ifuid"])) for k in keys}


def _open(path: str | Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise InputFileError(str(path), "calibration file not found") from None
    except OSError as exc:
        raise InputFileError(str(path), f"not a readable HDF5 calibration file ({exc})") from None
