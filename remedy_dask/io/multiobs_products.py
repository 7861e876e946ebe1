"""Inputs and FITS outputs of ``extract``, ``mosaic`` and ``catalog``.

- the positions file of ``extract --coords`` (CSV with ``ra,dec`` in degrees, more columns kept);
- the ``extract`` table: one row per position plus a ``WAVELENGTH`` extension;
- the mosaic cube: a FITS file whose three image HDUs (flux, ``ERROR``, ``WEIGHT``) are laid out
  empty first and then filled wavelength chunk by wavelength chunk through :class:`FitsSlab`
  targets, from any process, so that no more than one chunk per worker is ever in memory;
- the merged catalogue table.
Every file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table

from remedy_dask.errors import InputFileError

FLUX_UNIT = "1e-17 erg/(s cm2 Angstrom)"
LINE_FLUX_UNIT = "1e-17 erg/(s cm2)"
BLOCK = 2880


def read_positions(path: str | Path) -> Table:
    """The ``--coords`` CSV: columns ``ra``, ``dec`` (deg, finite) and any others."""
    path = Path(path)
    try:
        table = Table.read(path, format="ascii.csv")
    except (OSError, ValueError, IndexError) as exc:
        raise InputFileError(str(path), f"cannot read as CSV ({exc})") from None
    for name in ("ra", "dec"):
        if name not in table.colnames:
            raise InputFileError(str(path), f"no '{name}' column (columns: {table.colnames})")
        try:
            values = np.asarray(table[name], float)
        except (TypeError, ValueError):
            raise InputFileError(str(path), f"column '{name}' is not numeric") from None
        if not np.all(np.isfinite(values)):
            raise InputFileError(str(path), f"column '{name}' has empty or non-finite values")
        table[name] = values
    if len(table) == 0:
        raise InputFileError(str(path), "no positions")
    if np.any(np.abs(table["dec"]) > 90):
        raise InputFileError(str(path), "dec outside -90..90 deg")
    return table


def _atomic_write(hdul: fits.HDUList, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    hdul.writeto(tmp, overwrite=True, checksum=True)
    os.replace(tmp, path)
    return path


def _wavelength_hdu(wave: np.ndarray) -> fits.BinTableHDU:
    hdu = fits.BinTableHDU(Table({"wavelength": np.asarray(wave, float)}), name="WAVELENGTH")
    hdu.columns["wavelength"].unit = "Angstrom"
    hdu.header["COMMENT"] = "air wavelength of every element of the spectrum and error columns"
    return fits.BinTableHDU(hdu.data, hdu.header, name="WAVELENGTH")


def write_table_fits(path: str | Path, columns: dict[str, np.ndarray], units: dict[str, str],
                     cards: dict[str, Any], extname: str, wave: np.ndarray | None = None
                     ) -> Path:
    """A binary table ``extname`` (units as TUNITn) after an empty primary HDU with ``cards``,
    and the wavelength grid as a ``WAVELENGTH`` table extension if given."""
    table = Table({k: np.asarray(v) for k, v in columns.items()})
    for name, unit in units.items():
        if name in table.colnames:
            table[name].unit = unit
    primary = fits.PrimaryHDU()
    for key, value in cards.items():
        primary.header[key] = value
    hdus = [primary, fits.BinTableHDU(table, name=extname)]
    if wave is not None:
        hdus.append(_wavelength_hdu(wave))
    return _atomic_write(fits.HDUList(hdus), Path(path))


class FitsSlab:
    """A picklable, writable view of one image HDU's data (big-endian float32) inside a FITS
    file: ``slab[key] = values`` opens the file, writes and closes (``dask.array.store`` target;
    chunks write disjoint bytes, so processes need no lock)."""

    def __init__(self, path: str, offset: int, shape: tuple[int, ...]) -> None:
        self.path, self.offset, self.shape = path, offset, tuple(shape)
        self.dtype = np.dtype(">f4")
        self.ndim = len(self.shape)

    def __setitem__(self, key: Any, values: np.ndarray) -> None:
        mm = np.memmap(self.path, self.dtype, "r+", self.offset, self.shape)
        mm[key] = values
        mm.flush()
        del mm


def _image_header(primary: bool, shape: tuple[int, ...], cards: fits.Header) -> fits.Header:
    hdu = (fits.PrimaryHDU if primary else fits.ImageHDU)(np.zeros((1,) * len(shape), np.float32))
    header = hdu.header
    for axis, n in enumerate(reversed(shape), start=1):
        header[f"NAXIS{axis}"] = n
    header.extend(cards, update=True)
    return header


def create_cube_file(path: str | Path, shape: tuple[int, int, int],
                     hdus: list[tuple[str, fits.Header]]) -> tuple[Path, list[FitsSlab]]:
    """Lay out a FITS file of float32 images of ``shape`` (first is the primary HDU; names and
    extra header cards per HDU) with NaN-free zero data, under a temporary name.  Returns the
    temporary path (rename it with :func:`finish_file`) and one :class:`FitsSlab` per HDU."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    nbytes = int(np.prod(shape)) * 4
    padded = -(-nbytes // BLOCK) * BLOCK
    slabs = []
    with open(tmp, "wb") as f:
        for k, (name, cards) in enumerate(hdus):
            header = _image_header(k == 0, shape, cards)
            if k > 0:
                header["EXTNAME"] = name
            f.write(header.tostring().encode("ascii"))
            slabs.append(FitsSlab(str(tmp), f.tell(), shape))
            f.seek(padded, os.SEEK_CUR)
        f.truncate()
    return tmp, slabs


def finish_file(tmp: Path, path: str | Path) -> Path:
    """Rename a file from :func:`create_cube_file` to ``path`` once every chunk is written.

    No CHECKSUM/DATASUM cards: computing them would read the whole cube into memory at once."""
    os.replace(tmp, path)
    return Path(path)
