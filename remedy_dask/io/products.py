"""Final products: the observation HDF5 (netCDF4-compatible) and the per-IFU FITS files.

Names follow docs/interface.md.  Every array carries a ``units`` attribute; the root carries the
provenance (code version, configuration, calibration file, inputs, step timings, flags).
Files are written under a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from remedy_dask import __version__, geometry

FLUX_UNITS = "1e-17 erg / (s cm2 Angstrom)"
LINE_FLUX_UNITS = "1e-17 erg / (s cm2)"


def _encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    return {
        name: {"zlib": True, "complevel": 4}
        for name, var in ds.data_vars.items()
        if var.dtype.kind in "fiu" and var.ndim >= 1 and var.size > 1000
    }


def observation_path(outdir: str | Path, date: str, obs: int) -> Path:
    return Path(outdir) / f"{date}_{obs:07d}.h5"


def write_observation(
    path: str | Path,
    fibers: dict[str, np.ndarray],
    exposures: dict[str, np.ndarray],
    astrometry: dict[str, Any],
    sources: dict[str, np.ndarray],
    detections: dict[str, np.ndarray],
    provenance: dict[str, Any],
    flux_units: str = FLUX_UNITS,
) -> Path:
    """Write ``{DATE}_{OBS:07d}.h5`` atomically.

    ``fibers`` holds ``spectrum``, ``error``, ``sky`` (N, 1036), ``mask`` (N, 1036), ``ra``,
    ``dec``, ``ifuslot``, ``amp``, ``fiber_id``, ``exposure`` (N,), ``dar_ra``, ``dar_dec``
    (1036,), and may hold more per-fiber columns (``ifu_x``, ``fx`` ...).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    root = xr.Dataset(
        {"wavelength": ("wave", geometry.DEF_WAVE, {"units": "Angstrom"})},
        attrs={"code_version": __version__, "flux_units": flux_units,
               **{k: v if isinstance(v, (str, int, float)) else json.dumps(v, default=str)
                  for k, v in provenance.items()}},
    )
    root.to_netcdf(tmp, mode="w", engine="h5netcdf")
    _group(fibers, "fiber", flux_units).to_netcdf(tmp, mode="a", group="fibers", engine="h5netcdf",
                                                 encoding=None)
    _group(exposures, "exposure", flux_units).to_netcdf(tmp, mode="a", group="exposures",
                                                       engine="h5netcdf")
    xr.Dataset().to_netcdf(tmp, mode="a", group="astrometry", engine="h5netcdf")
    _group(sources, "source", flux_units).to_netcdf(tmp, mode="a", group="sources", engine="h5netcdf")
    _group(detections, "detection", flux_units).to_netcdf(tmp, mode="a", group="detections",
                                                         engine="h5netcdf")
    import h5py

    with h5py.File(tmp, "a") as h5:  # scalar attributes (netCDF would store 1-element arrays)
        g = h5["astrometry"]
        for key, value in {**astrometry, "units_ra_dec": "deg", "units_rotation": "deg",
                           "units_rms": "arcsec"}.items():
            g.attrs[key] = value
    os.replace(tmp, path)
    return path


_UNITS = {
    "spectrum": FLUX_UNITS, "error": FLUX_UNITS, "sky": FLUX_UNITS, "ra": "deg", "dec": "deg",
    "dar_ra": "arcsec", "dar_dec": "arcsec", "exptime": "s", "fwhm": "arcsec",
    "wave": "Angstrom", "flux": LINE_FLUX_UNITS, "flux_err": LINE_FLUX_UNITS,
    "ifu_x": "arcsec", "ifu_y": "arcsec", "fx": "arcsec", "fy": "arcsec",
    "gmag_catalog": "mag(AB)", "gmag_virus": "mag(AB)", "flux_scale": "",
    "transparency": "", "sn": "", "fwhm_line": "Angstrom",
}


def _group(columns: dict[str, np.ndarray], row_dim: str, flux_units: str) -> xr.Dataset:
    """A Dataset with rows along ``row_dim`` and the wavelength axis along ``wave``."""
    data = {}
    for name, values in columns.items():
        values = np.asarray(values)
        if values.dtype.kind == "U":
            values = values.astype(object)
        if values.ndim == 2:
            dims = (row_dim, "wave")
        elif values.ndim == 1 and name.startswith("dar_"):
            dims = ("wave",)
        else:
            dims = (row_dim,) + tuple(f"{name}_dim{i}" for i in range(1, values.ndim))
        units = _UNITS.get(name, "")
        if units == FLUX_UNITS:
            units = flux_units
        if row_dim == "detection" and name == "fwhm":
            units = "Angstrom"
        data[name] = (dims, values, {"units": units} if units else {})
    ds = xr.Dataset(data)
    if "wave" in ds.dims:
        ds = ds.assign_coords(wave=("wave", geometry.DEF_WAVE, {"units": "Angstrom"}))
    for name in ds.data_vars:
        if ds[name].dtype.kind == "f" and ds[name].ndim == 2:
            ds[name].encoding.update(zlib=True, complevel=4)
    return ds
