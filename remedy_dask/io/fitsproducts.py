"""Per-IFU FITS products: ``{DATE}_{OBS:07d}_{IFUSLOT:03d}.fits`` and ``..._cube.fits``.

Both are written atomically and are meant to pass HEASARC's ``fitsverify`` without errors.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table

from remedy_dask import geometry

BUNIT = "1e-17 erg/(s cm2 Angstrom)"


def _write(hdul: fits.HDUList, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    hdul.writeto(tmp, overwrite=True, checksum=True)
    os.replace(tmp, path)
    return path


def _spectral_axis(header: fits.Header) -> None:
    """Linear wavelength WCS along NAXIS1 of a (fiber, wavelength) image."""
    header["WCSAXES"] = (2, "number of WCS axes")
    header["CTYPE1"] = ("AWAV", "air wavelength")
    header["CUNIT1"] = ("Angstrom", "")
    header["CRPIX1"] = 1.0
    header["CRVAL1"] = geometry.WAVE_MIN
    header["CDELT1"] = geometry.WAVE_STEP
    header["CTYPE2"] = ("LINEAR", "fiber row (0-based) of the FIBERS table")
    header["CRPIX2"] = 1.0
    header["CRVAL2"] = 0.0
    header["CDELT2"] = 1.0


def write_ifu_fits(path: str | Path, spectrum: np.ndarray, error: np.ndarray, sky: np.ndarray,
                   fibers: dict[str, np.ndarray], gimage: np.ndarray, gwcs_header: fits.Header,
                   cards: dict[str, Any]) -> Path:
    """Sky-subtracted spectra, errors, sky (fiber x wavelength), fiber table, collapsed g image."""
    primary = fits.PrimaryHDU()
    for key, value in cards.items():
        primary.header[key] = value
    hdus = [primary]
    for name, data in (("SPECTRUM", spectrum), ("ERROR", error), ("SKY", sky)):
        hdu = fits.ImageHDU(np.asarray(data, np.float32), name=name)
        _spectral_axis(hdu.header)
        hdu.header["BUNIT"] = BUNIT
        hdus.append(hdu)
    table = Table({k: np.asarray(v) for k, v in fibers.items()})
    for name, unit in (("ra", "deg"), ("dec", "deg"), ("ifu_x", "arcsec"), ("ifu_y", "arcsec")):
        if name in table.colnames:
            table[name].unit = unit
    hdus.append(fits.BinTableHDU(table, name="FIBERS"))
    gh = fits.ImageHDU(np.asarray(gimage, np.float32), header=gwcs_header, name="GIMAGE")
    gh.header["BUNIT"] = BUNIT
    gh.header["COMMENT"] = "photon-weighted mean f_lambda in the Pan-STARRS g band, per pixel"
    hdus.append(gh)
    return _write(fits.HDUList(hdus), Path(path))


def write_cube_fits(path: str | Path, cube: np.ndarray, error: np.ndarray,
                    wcs_header: fits.Header, cards: dict[str, Any]) -> Path:
    """Flux cube (primary) and propagated error cube (extension ERROR), same WCS."""
    primary = fits.PrimaryHDU(np.asarray(cube, np.float32), header=wcs_header.copy())
    for key, value in cards.items():
        primary.header[key] = value
    err = fits.ImageHDU(np.asarray(error, np.float32), header=wcs_header.copy(), name="ERROR")
    return _write(fits.HDUList([primary, err]), Path(path))
