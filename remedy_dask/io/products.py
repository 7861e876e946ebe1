"""Final products: the observation HDF5 (netCDF4-compatible) and the per-IFU FITS files.

Names as listed in the README's Products section; the file follows CF-1.10 (root ``Conventions``): every number
array carries ``units`` and ``long_name``, and every group with a spectral axis has its own
``wavelength`` coordinate (a netCDF4 dimension scale), so ``xarray.open_dataset(path,
group="fibers", engine="h5netcdf")`` returns spectra with their wavelengths.  The root carries the
provenance (code version, configuration, calibration file, inputs, step timings, flags).  The
HDF5 file is streamed block by block (one IFU at a time) under a temporary name and renamed when
complete, so a reader never sees a partial product.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from pathlib import Path
from typing import Any

import h5netcdf
import h5py
import numpy as np
from isal import isal_zlib

from remedy_dask import __version__, geometry
from remedy_dask.io.jsonable import jsonable
from remedy_dask.io.writeerrors import writing

FLUX_UNITS = "1e-17 erg s-1 cm-2 Angstrom-1"  # UDUNITS syntax (CF); astropy parses it too
LINE_FLUX_UNITS = "1e-17 erg s-1 cm-2"
CONVENTIONS = "CF-1.10"
WAVE_DIM = "wavelength"  # the dimension of every spectral axis, with a coordinate per group
COLUMN_DIM = "column"  # detector column of the native (unrectified) fiber arrays
N_COLUMNS = 1032
NATIVE_PREFIX = "native_"  # fiber arrays on (fiber, column) rather than (fiber, wavelength)

UNITS = {
    "spectrum": FLUX_UNITS, "error": FLUX_UNITS, "sky": FLUX_UNITS, "ra": "deg", "dec": "deg",
    "dar_ra": "arcsec", "dar_dec": "arcsec", "exptime": "s", "fwhm": "arcsec", "wave": "Angstrom",
    "flux": LINE_FLUX_UNITS, "flux_err": LINE_FLUX_UNITS, "ifu_x": "arcsec", "ifu_y": "arcsec",
    "fx": "arcsec", "fy": "arcsec", "gmag_catalog": "mag(AB)", "gmag_virus": "mag(AB)",
    "wave_err": "Angstrom", "x": "arcsec", "y": "arcsec", "wavelength": "Angstrom",
    "fwhm_guider": "arcsec", "parangle": "deg", "mirror_area": "cm2", "ra_offset": "arcsec",
    "dec_offset": "arcsec", "ra_std": "arcsec", "dec_std": "arcsec",
    "native_spectrum": "electron", "native_error": "electron", "native_wavelength": "Angstrom",
    "column": "1",
    **dict.fromkeys(("mask", "ifuslot", "fiber_id", "exposure", "transparency", "flux_scale",
                     "sn", "chi2", "moffat_beta", "star_norm", "flux_scale_err", "fluxcal_used",
                     "specid", "ifuid", "fiber_to_fiber", "error_correlation", "illumination", "native_mask",
                     "n_stars_astrometry", "n_stars_photometry"),
                   "1"),
}
ERROR_CORRELATION_DESCRIPTION = (
    "rho[i, j] = corr(error of spectrum[i, j], error of spectrum[i, j+1]) of fiber i, left by "
    "resampling the native ~2.06 A pixels onto the 2 A bins (neighbouring bins share a pixel); "
    "last column 0; lags of 2 or more bins are below 1e-4 and not stored.  Variance of a sum "
    "sum_j a_j spectrum[i, j]: sum_j a_j^2 error_j^2 + 2 sum_j a_j a_j+1 rho_j error_j error_j+1.")
GROUP_UNITS = {("detections", "fwhm"): "Angstrom"}

LONG_NAMES = {
    "wavelength": "air wavelength",
    "spectrum": "sky-subtracted, flux-calibrated flux density (NaN where masked)",
    "error": "1-sigma error of spectrum",
    "sky": "subtracted sky flux density",
    "mask": "bad-pixel flag (non-zero = bad)",
    "ra": "right ascension (ICRS)", "dec": "declination (ICRS)",
    "ifuslot": "IFU slot", "amp": "amplifier (LL, LU, RL, RU)", "fiber_id": "fiber number (1-448)",
    "exposure": "exposure number (1-based)",
    "ifu_x": "x in the IFU frame", "ifu_y": "y in the IFU frame",
    "fx": "x in the focal plane", "fy": "y in the focal plane",
    "dar_ra": "differential atmospheric refraction offset east",
    "dar_dec": "differential atmospheric refraction offset north",
    "exptime": "exposure time", "transparency": "relative transparency",
    "fwhm": "seeing FWHM (fitted PSF)", "fwhm_guider": "seeing FWHM (guider)",
    "flux_scale": "flux scale applied to the exposure",
    "gmag_catalog": "catalogue g magnitude", "gmag_virus": "synthetic g magnitude from VIRUS",
    "wave": "line wavelength", "wave_err": "error of the line wavelength",
    "flux": "integrated line flux", "flux_err": "error of the integrated line flux",
    "sn": "signal-to-noise ratio", "chi2": "reduced chi-square of the line fit",
    "moffat_beta": "Moffat beta of the PSF", "flux_scale_err": "1-sigma error of flux_scale",
    "star_norm": "relative exposure throughput from the field stars (transparency x illumination)",
    "fluxcal_used": "star used by the flux calibration",
    "fluxcal_reject": "why the flux calibration did not use the source (empty if used)",
    "specid": "spectrograph id (SPECID)", "ifuid": "IFU bundle id (IFUID)",
    "fiber_to_fiber": "relative fiber throughput divided out of spectrum (calibration file)",
    "error_correlation": "correlation coefficient of the errors of wavelength bins j and j+1",
    "parangle": "parallactic angle (raw header PARANGLE)",
    "illumination": "mirror illumination relative to the track centre (NaN: unknown)",
    "illumination_source": "where illumination comes from (guider PUPILLUM, model, none)",
    "mirror_area": "collecting area used by the flux conversion",
    "object": "target name (raw header OBJECT)",
    "n_stars_astrometry": "stars of the astrometric solution",
    "n_stars_photometry": "stars of the photometric zero point",
    "column": "detector column of the oriented, trimmed amp image (0-based)",
    "native_spectrum": "extracted counts per detector column (before fiber-to-fiber, sky and "
                       "flux calibration)",
    "native_error": "1-sigma error of native_spectrum",
    "native_mask": "extraction and spectral mask on the native grid (non-zero = bad)",
    "native_wavelength": "air wavelength of each fiber at each detector column",
}
GROUP_LONG_NAMES = {
    ("sources", "spectrum"): "flux density of the source (total, PSF-weighted extraction)",
    ("sources", "error"): "1-sigma error of spectrum",
    ("detections", "spectrum"): "flux density at the detection (PSF-weighted extraction)",
    ("detections", "fwhm"): "line FWHM",
}


def variable_attributes(group: str, name: str, dtype: np.dtype) -> dict[str, str]:
    """CF ``units`` (numbers only) and ``long_name`` of the variable ``group/name``."""
    attrs = {}
    units = GROUP_UNITS.get((group, name), UNITS.get(name))
    if units is not None and dtype.kind in "iufb":
        attrs["units"] = units
    long_name = GROUP_LONG_NAMES.get((group, name), LONG_NAMES.get(name))
    if long_name is not None:
        attrs["long_name"] = long_name
    if name in ("mask", "native_mask"):
        attrs.update(flag_values=np.array([0, 1], np.uint8), flag_meanings="good bad")
    if name == "error_correlation":
        attrs["description"] = ERROR_CORRELATION_DESCRIPTION
    if name == "fluxcal_used":
        attrs.update(flag_values=np.array([0, 1], np.uint8), flag_meanings="rejected used")
    return attrs


# fiber rows per HDF5 chunk of the 2-D fiber arrays: one amp, so that every IFU block (whole amps)
# starts on a chunk boundary and its chunks can be compressed in parallel by the IFU's own task
FIBER_CHUNK = geometry.N_FIBERS_AMP
GZIP_LEVEL = 4  # the deflate level HDF5 itself writes with (tables, sources, detections)
# the pre-encoded fiber chunks are deflated by ISA-L (a standard zlib stream that HDF5's deflate
# filter reads): 14x less CPU than zlib level 4 for 2-3 % more bytes (the float32 spectra are
# noise-dominated: zlib compresses them only 1.17x)
ISAL_LEVEL = 2


def hdf5_chunks(values: np.ndarray, rows: int = FIBER_CHUNK, level: int = ISAL_LEVEL
                ) -> list[bytes]:
    """Chunks of ``values`` (n, n_wave), n a multiple of ``rows``, encoded as HDF5's shuffle +
    deflate filters store them (byte shuffle, then a zlib stream of ISA-L ``level`` 0-3), for
    :meth:`ObservationWriter.write_fiber_chunks`."""
    values = np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("<"))
    if values.ndim != 2 or values.shape[0] % rows:
        raise ValueError(f"hdf5_chunks: shape {values.shape} is not whole chunks of {rows} rows")
    size = values.dtype.itemsize
    out = []
    for start in range(0, values.shape[0], rows):
        raw = np.frombuffer(values[start:start + rows].tobytes(), np.uint8)
        shuffled = raw.reshape(-1, size).T.tobytes() if size > 1 else raw.tobytes()
        out.append(isal_zlib.compress(shuffled, level))
    return out


def save_fiber_block(path: str | Path, arrays: dict[str, np.ndarray],
                     columns: dict[str, np.ndarray]) -> Path:
    """Encode the 2-D ``arrays`` of one IFU block into HDF5 chunks and save them with the 1-D
    ``columns`` (atomically) as an .npz that :func:`load_fiber_block` reads back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, np.ndarray] = {}
    for name, values in arrays.items():
        encoded = hdf5_chunks(np.asarray(values))
        payload[f"chunks.{name}"] = np.frombuffer(b"".join(encoded), np.uint8)
        payload[f"sizes.{name}"] = np.array([len(e) for e in encoded], np.int64)
        payload[f"dtype.{name}"] = np.array(np.asarray(values).dtype.str)
    payload.update({f"column.{name}": np.asarray(v) for name, v in columns.items()})
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    with writing(path, tmp):
        np.savez(tmp, **payload)
        os.replace(tmp, path)
    return path


def load_fiber_block(path: str | Path
                     ) -> tuple[dict[str, list[bytes]], dict[str, np.dtype], dict[str, np.ndarray]]:
    """(chunks, dtypes, columns) saved by :func:`save_fiber_block`."""
    chunks: dict[str, list[bytes]] = {}
    dtypes: dict[str, np.dtype] = {}
    columns: dict[str, np.ndarray] = {}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            kind, name = key.split(".", 1)
            if kind == "chunks":
                data = z[key].tobytes()
                ends = np.cumsum(z[f"sizes.{name}"])
                chunks[name] = [data[a:b] for a, b in zip(np.r_[0, ends[:-1]], ends)]
                dtypes[name] = np.dtype(str(z[f"dtype.{name}"]))
            elif kind == "column":
                columns[name] = z[key]
    return chunks, dtypes, columns


def observation_path(outdir: str | Path, date: str, obs: int) -> Path:
    return Path(outdir) / f"{date}_{obs:07d}.h5"


def _plain(value: Any) -> Any:
    """An HDF5 attribute value: a scalar as it is, anything else as JSON text."""
    if isinstance(value, (str, int, float, np.integer, np.floating)):
        return value
    return json.dumps(jsonable(value), default=str)


def _names_product(method: Any) -> Any:
    """A write of :class:`ObservationWriter` whose ``OSError`` names the product."""
    @functools.wraps(method)
    def wrapper(self: ObservationWriter, *args: Any, **kwargs: Any) -> Any:
        with writing(self.path):
            return method(self, *args, **kwargs)
    return wrapper


class ObservationWriter:
    """Write ``{DATE}_{OBS:07d}.h5``: open, add groups / stream fiber blocks, close (rename);
    an ``OSError`` (a full disk) names the product, and :meth:`abort` removes the temporary."""

    def __init__(self, path: str | Path, n_fibers: int, provenance: dict[str, Any]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with writing(self.path, self.tmp):
            self.f = h5netcdf.File(self.tmp, "w")
            self._wavelength_coordinate(self.f)
            self.fibers = self.f.create_group("fibers")
            self.fibers.dimensions = {"fiber": n_fibers}
            self._wavelength_coordinate(self.fibers)
        self.n_fibers = n_fibers
        self._provenance = {
            "Conventions": CONVENTIONS,
            "title": "VIRUS fiber spectra, sources and detections of one observation",
            "institution": "remedy-dask", "source": f"remedy-dask {__version__}",
            "code_version": __version__, "flux_units": FLUX_UNITS,
            **{k: _plain(v) for k, v in provenance.items()}}

    @staticmethod
    def _wavelength_coordinate(group: Any) -> None:
        """The dimension ``wavelength`` of ``group`` with its coordinate variable (a netCDF4
        dimension scale), so that xarray opens each group with wavelengths."""
        group.dimensions[WAVE_DIM] = geometry.N_WAVE
        wave = group.create_variable(WAVE_DIM, (WAVE_DIM,), "f8")
        wave[:] = geometry.DEF_WAVE
        wave.attrs.update(variable_attributes("", WAVE_DIM, wave.dtype))

    @staticmethod
    def _column_coordinate(group: Any) -> None:
        """The dimension ``column`` of ``group`` with its coordinate (detector column index)."""
        if COLUMN_DIM in group.dimensions:
            return
        group.dimensions[COLUMN_DIM] = N_COLUMNS
        col = group.create_variable(COLUMN_DIM, (COLUMN_DIM,), "i4")
        col[:] = np.arange(N_COLUMNS, dtype=np.int32)
        col.attrs.update(variable_attributes("", COLUMN_DIM, col.dtype))

    def _fiber_dims(self, name: str) -> tuple[str, str]:
        """(fiber, wavelength), or (fiber, column) for the native arrays."""
        if name.startswith(NATIVE_PREFIX):
            self._column_coordinate(self.fibers)
            return ("fiber", COLUMN_DIM)
        return ("fiber", WAVE_DIM)

    def _variable(self, group: Any, name: str, dims: tuple[str, ...], dtype: np.dtype,
                  n_rows: int = 0) -> Any:
        """Create a variable of ``dtype`` over ``dims`` (strings as variable-length UTF-8)."""
        kwargs: dict[str, Any] = {}
        if dtype.kind in "UO":
            dtype = h5py.string_dtype()
        elif dtype.kind == "f":
            kwargs["fillvalue"] = np.nan
        if len(dims) == 2 and n_rows > 0:
            rows = min(FIBER_CHUNK if group is self.fibers else 448, n_rows)
            width = N_COLUMNS if dims[1] == COLUMN_DIM else geometry.N_WAVE
            kwargs.update(compression="gzip", compression_opts=GZIP_LEVEL, shuffle=True,
                          chunks=(rows, width))
        var = group.create_variable(name, dims, dtype, **kwargs)
        var.attrs.update(variable_attributes(group.name.strip("/"), name, np.dtype(dtype)))
        return var

    @_names_product
    def write_fibers(self, start: int, block: dict[str, np.ndarray]) -> None:
        """Write rows ``start:start+n`` of the fiber datasets (creating them on first use)."""
        for name, values in block.items():
            if name not in self.fibers.variables:
                values = np.asarray(values)
                dims = self._fiber_dims(name) if values.ndim == 2 else ("fiber",)
                self._variable(self.fibers, name, dims, values.dtype, self.n_fibers)
        n = len(next(iter(block.values())))
        for name, values in block.items():
            values = np.asarray(values)
            self.fibers.variables[name][start:start + n] = (
                values.astype(object) if values.dtype.kind == "U" else values)

    @_names_product
    def write_fiber_chunks(self, start: int, chunks: dict[str, list[bytes]],
                           dtypes: dict[str, np.dtype], columns: dict[str, np.ndarray]) -> None:
        """Write rows ``start:`` from pre-encoded chunks (:func:`hdf5_chunks`) of the 2-D arrays
        and plain 1-D ``columns``; ``start`` must be a multiple of FIBER_CHUNK."""
        if start % FIBER_CHUNK:
            raise ValueError(f"write_fiber_chunks: start {start} is not on a chunk boundary")
        for name in chunks:
            if name not in self.fibers.variables:
                self._variable(self.fibers, name, self._fiber_dims(name),
                               np.dtype(dtypes[name]), self.n_fibers)
        for name, values in columns.items():
            if name not in self.fibers.variables:
                self._variable(self.fibers, name, ("fiber",), np.asarray(values).dtype,
                               self.n_fibers)
        for name, encoded in chunks.items():
            dataset = self.fibers.variables[name]._h5ds
            for i, data in enumerate(encoded):
                dataset.id.write_direct_chunk((start + i * FIBER_CHUNK, 0), data)
        n = len(next(iter(columns.values())))
        for name, values in columns.items():
            values = np.asarray(values)
            self.fibers.variables[name][start:start + n] = (
                values.astype(object) if values.dtype.kind == "U" else values)

    @_names_product
    def write_wave_columns(self, group_name: str, columns: dict[str, np.ndarray]) -> None:
        """(1036,) arrays such as ``dar_ra``/``dar_dec`` in a group."""
        group = self.f[group_name] if group_name else self.f
        for name, values in columns.items():
            self._variable(group, name, (WAVE_DIM,), np.asarray(values).dtype)[:] = values

    @_names_product
    def write_table(self, group_name: str, row_dim: str, columns: dict[str, np.ndarray]) -> None:
        """A group of equal-length columns (rows along ``row_dim``; 2-D ones along ``wave``)."""
        group = self.f.create_group(group_name)
        n = len(next(iter(columns.values()))) if columns else 0
        group.dimensions = {row_dim: n}
        if any(np.ndim(v) == 2 for v in columns.values()):
            self._wavelength_coordinate(group)
        for name, values in columns.items():
            values = np.asarray(values)
            dims = (row_dim, WAVE_DIM) if values.ndim == 2 else (row_dim,)
            var = self._variable(group, name, dims, values.dtype, n)
            if n:
                var[...] = values.astype(object) if values.dtype.kind == "U" else values

    @_names_product
    def close(self, group_attrs: dict[str, dict[str, Any]]) -> Path:
        """Finish: scalar attributes (root provenance, e.g. ``astrometry``) and rename."""
        for name in group_attrs:
            if name not in self.f.groups:
                self.f.create_group(name)
        self.f.close()
        with h5py.File(self.tmp, "a") as h5:
            for key, value in self._provenance.items():
                h5.attrs[key] = value
            for name, attrs in group_attrs.items():
                for key, value in attrs.items():
                    h5[name].attrs[key] = _plain(value)
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Remove the temporary file (closing it may fail again on a full disk)."""
        with contextlib.suppress(Exception):
            self.f.close()
        self.tmp.unlink(missing_ok=True)
