"""Read observation products (``{DATE}_{OBS:07d}.h5``) for the multi-observation commands.

Only the small per-fiber columns are read eagerly (:func:`read_meta`); the (fiber, wavelength)
arrays are read by rows or by wavelength slices on demand, so memory stays bounded by what a task
needs.  Every missing or malformed item raises :class:`InputFileError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from remedy_dask.errors import InputFileError

FIBER_COLUMNS = ("ra", "dec", "exposure", "ifuslot")
FIBER_ARRAYS = ("spectrum", "error", "mask")


@dataclass
class ObservationMeta:
    """What the multi-observation kernels need of one product, without the fiber spectra."""

    path: str
    name: str  # "{DATE}_{OBS:07d}"
    wave: np.ndarray  # (n_wave,) Angstrom
    ra: np.ndarray  # (n_fiber,) deg, fiber centres (DAR not applied)
    dec: np.ndarray
    exposure_index: np.ndarray  # (n_fiber,) 0-based row of the exposures table
    ifuslot: np.ndarray  # (n_fiber,)
    fwhm: np.ndarray  # (n_exposure,) arcsec, Moffat FWHM of each exposure
    flux_scale: np.ndarray  # (n_exposure,) already applied to the stored spectra
    dar_ra: np.ndarray  # (n_wave,) arcsec east
    dar_dec: np.ndarray  # (n_wave,) arcsec north
    beta: np.ndarray | None = None  # (n_exposure,) Moffat beta; None: products without it (3.5)


def _open(path: str) -> h5py.File:
    if not Path(path).is_file():
        raise InputFileError(path, "no such file")
    try:
        return h5py.File(path, "r")
    except OSError:
        raise InputFileError(path, "not an HDF5 file (expected an observation product)") from None


def _need(h5: h5py.File, path: str, name: str) -> h5py.Dataset:
    if name not in h5:
        raise InputFileError(path, f"not an observation product: '{name}' is missing")
    return h5[name]


def observation_name(h5: h5py.File, path: str) -> str:
    """``{DATE}_{OBS:07d}`` from the root attributes (the file name if they are absent)."""
    date, obs = h5.attrs.get("date"), h5.attrs.get("obs")
    if date is None or obs is None:
        return Path(path).stem
    date = date.decode() if isinstance(date, bytes) else str(date)
    return f"{date}_{int(obs):07d}"


def read_meta(path: str | Path) -> ObservationMeta:
    """Fiber positions, exposures' PSF and flux scale, DAR and wavelengths of one product."""
    path = str(path)
    with _open(path) as h5:
        wave = np.asarray(_need(h5, path, "wavelength")[...], float)
        cols = {k: _need(h5, path, f"fibers/{k}")[...] for k in FIBER_COLUMNS}
        for name in FIBER_ARRAYS:
            shape = _need(h5, path, f"fibers/{name}").shape
            if shape != (len(cols["ra"]), len(wave)):
                raise InputFileError(path, f"fibers/{name} has shape {shape}, expected "
                                           f"({len(cols['ra'])}, {len(wave)})")
        fwhm = np.asarray(_need(h5, path, "exposures/fwhm")[...], float)
        scale = np.asarray(_need(h5, path, "exposures/flux_scale")[...], float)
        beta = (np.asarray(h5["exposures/moffat_beta"][...], float)
                if "moffat_beta" in h5["exposures"] else None)
        dar = [np.asarray(_need(h5, path, f"fibers/{k}")[...], float) for k in ("dar_ra", "dar_dec")]
        name = observation_name(h5, path)
    exp = np.asarray(cols["exposure"], int) - 1
    if exp.size and (exp.min() < 0 or exp.max() >= len(fwhm)):
        raise InputFileError(path, f"fibers/exposure outside 1..{len(fwhm)}")
    if not np.all(np.isfinite(fwhm) & (fwhm > 0)):
        raise InputFileError(path, f"exposures/fwhm must be positive and finite, got {fwhm}")
    return ObservationMeta(path, name, wave, np.asarray(cols["ra"], float),
                           np.asarray(cols["dec"], float), exp, np.asarray(cols["ifuslot"], int),
                           fwhm, scale, dar[0], dar[1], beta)


def read_fiber_rows(path: str | Path, rows: np.ndarray, wave_slice: slice = slice(None)
                    ) -> dict[str, np.ndarray]:
    """``spectrum``, ``error`` (float64) and ``mask`` (bool) of the given fiber rows."""
    rows = np.asarray(rows, int)
    order = np.argsort(rows)
    sorted_rows = rows[order]
    back = np.empty_like(order)
    back[order] = np.arange(order.size)
    out: dict[str, np.ndarray] = {}
    with h5py.File(path, "r") as h5:
        for name in FIBER_ARRAYS:
            ds = h5[f"fibers/{name}"]
            if sorted_rows.size == 0:
                n_wave = len(range(*wave_slice.indices(ds.shape[1])))
                values = np.zeros((0, n_wave), ds.dtype)
            elif sorted_rows.size == ds.shape[0]:
                values = ds[:, wave_slice]
            else:
                values = ds[sorted_rows, wave_slice]
            out[name] = values[back]
    out["spectrum"] = out["spectrum"].astype(float)
    out["error"] = out["error"].astype(float)
    out["mask"] = out["mask"].astype(bool)
    return out


def read_catalog_tables(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """The ``sources`` and ``detections`` groups of one product (missing groups are an error)."""
    path = str(path)
    wanted = {"sources": ("ra", "dec", "gmag_catalog", "spectrum", "error"),
              "detections": ("ra", "dec", "wave", "flux", "flux_err", "sn", "fwhm")}
    out: dict[str, dict[str, np.ndarray]] = {}
    with _open(path) as h5:
        wave = np.asarray(_need(h5, path, "wavelength")[...], float)
        for group, names in wanted.items():
            out[group] = {k: np.asarray(_need(h5, path, f"{group}/{k}")[...]) for k in names}
        out["meta"] = {"name": np.array(observation_name(h5, path)), "wave": wave}
    return out
