"""Per-IFU FITS products: ``{DATE}_{OBS:07d}_{IFUSLOT:03d}.fits`` and ``..._cube.fits``.

Both are written atomically and pass HEASARC's ``fitsverify`` without errors or warnings (tested
on the files ``reduce`` writes).  ``BUNIT`` strings follow the FITS standard's unit syntax
(``astropy.units.Unit(BUNIT, format="fits")`` parses them); ``DATE`` is the file's creation time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table

from remedy_dask import geometry
from remedy_dask.io.writeerrors import writing

BUNIT = "10**-17 erg/(s cm2 Angstrom)"  # per fiber
BUNIT_PIXEL = "10**-17 erg/(s cm2 Angstrom pixel)"  # per image / cube pixel (sums give fluxes)

Cards = dict[str, Any]  # {KEY: value or (value, comment)}


def _write(hdul: fits.HDUList, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    hdul[0].header["DATE"] = (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
                              "file creation time (UTC)")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with writing(path, tmp):
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


def _set_cards(header: fits.Header, cards: Cards) -> None:
    """Set ``cards``, shortening comments to fit their 80-character card."""
    for key, value in cards.items():
        if isinstance(value, tuple):
            value, comment = value
            room = 80 - len(fits.Card(key, value).image.rstrip()) - 3
            header[key] = (value, comment[:max(room, 0)]) if room > 0 else value
        else:
            header[key] = value


def write_ifu_fits(path: str | Path, spectrum: np.ndarray, error: np.ndarray, sky: np.ndarray,
                   mask: np.ndarray, fibers: dict[str, np.ndarray], gimage: np.ndarray,
                   gwcs_header: fits.Header, cards: Cards) -> Path:
    """Sky-subtracted spectra, errors, sky and mask (fiber x wavelength), fiber table,
    collapsed g image."""
    primary = fits.PrimaryHDU()
    _set_cards(primary.header, cards)
    hdus: list[Any] = [primary]
    for name, data, what in (("SPECTRUM", spectrum, "sky-subtracted flux density"),
                             ("ERROR", error, "1-sigma error of SPECTRUM"),
                             ("SKY", sky, "subtracted sky")):
        hdu = fits.ImageHDU(np.asarray(data, np.float32), name=name)
        _spectral_axis(hdu.header)
        _set_cards(hdu.header, {"BUNIT": (BUNIT, what)})
        hdus.append(hdu)
    table = Table({k: np.asarray(v) for k, v in fibers.items()})
    for name, unit in (("ra", "deg"), ("dec", "deg"), ("ifu_x", "arcsec"), ("ifu_y", "arcsec")):
        if name in table.colnames:
            table[name].unit = unit
    hdus.append(fits.BinTableHDU(table, name="FIBERS"))
    gh = fits.ImageHDU(np.asarray(gimage, np.float32), header=gwcs_header, name="GIMAGE")
    _set_cards(gh.header, {"BUNIT": (BUNIT_PIXEL, "flux density per pixel")})
    gh.header["COMMENT"] = "photon-weighted mean f_lambda in the Pan-STARRS g band, per pixel"
    hdus.append(gh)
    hdu = fits.ImageHDU(np.asarray(mask).astype(np.uint8), name="MASK")  # last: keeps indices
    _spectral_axis(hdu.header)
    hdu.header["COMMENT"] = "non-zero: bad pixel (NaN in SPECTRUM, ERROR and SKY)"
    hdus.append(hdu)
    return _write(fits.HDUList(hdus), Path(path))


def write_cube_fits(path: str | Path, cube: np.ndarray, error: np.ndarray,
                    wcs_header: fits.Header, cards: Cards) -> Path:
    """Flux cube (primary) and propagated error cube (extension ERROR), same WCS."""
    header = wcs_header.copy()
    _set_cards(header, {"BUNIT": (BUNIT_PIXEL, "flux density per pixel")})
    primary = fits.PrimaryHDU(np.asarray(cube, np.float32), header=header)
    _set_cards(primary.header, cards)
    err = fits.ImageHDU(np.asarray(error, np.float32), header=header.copy(), name="ERROR")
    return _write(fits.HDUList([primary, err]), Path(path))
