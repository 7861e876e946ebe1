"""The virtual instrument's own statement of the published VIRUS/HET facts.

Written from ``shared/virus-raw-format.md`` (and, where that page defers to Remedy, the Remedy
reference), independently of the reduction's ``remedy_dask.geometry``: the simulator and the
reduction meet only through the format page, so a convention error on either side shows up as a
failed end-to-end test instead of cancelling out.  ``tests/test_sim_conventions.py`` pins every
function here to literal values worked out by hand or with astropy.

Conventions: an *oriented* amp image is the (1032, 1032) data section after the documented flips
(rows = fibers, columns = wavelength, blue left); fibers of an amp are numbered k = 0..111 by
increasing row.  Focal-plane coordinates (fx, fy) are arcsec.
"""

from __future__ import annotations

import numpy as np
from astropy.coordinates import angular_separation
from astropy.wcs import WCS
from scipy.interpolate import CubicSpline

# --- detector and file layout (format page: "One file = one amplifier") -----------------------
N_ROWS = 1032
N_COLS_RAW = 1064
N_OVERSCAN = 32
N_COLS = N_COLS_RAW - N_OVERSCAN
AMPS: tuple[str, ...] = ("LL", "LU", "RL", "RU")
N_FIBERS_AMP = 112
N_FIBERS_IFU = 448
FRAME_KINDS = ("zro", "drk", "flt", "cmp", "twi", "sci")

# --- spectra ---------------------------------------------------------------------------------
WAVE = np.arange(3470.0, 5540.0 + 1.0, 2.0)  # the 1036-point output grid, 2 A steps
N_WAVE = WAVE.size
ARC_LINES: dict[str, tuple[float, ...]] = {  # air wavelengths, A
    "Hg": (3650.153, 4046.565, 4358.335, 4916.068, 5460.750),
    "Cd-A": (3610.508, 4678.149, 4799.912, 5085.822),
}

# --- fibers, telescope -----------------------------------------------------------------------
FIBER_DIAMETER = 1.5  # arcsec
AREA_CM2 = 51.4e4  # HET collecting area without guider data, 51.4 m^2
DITHER_PATTERN = ((0.0, 0.0), (1.215, -0.70), (1.215, 0.70))  # arcsec, IFU frame

# fiber k of an oriented amp is IFU fiber ID (this number - k)
_ID_OF_FIRST_ROW = {"LL": 224, "LU": 112, "RL": 336, "RU": 448}

# published DAR along focal-plane x (arcsec), HET fixed altitude
DAR_TABLE_WAVE = (3500.0, 4000.0, 4500.0, 5000.0, 5500.0)
DAR_TABLE_ARCSEC = (-0.74, -0.40, -0.08, 0.08, 0.20)


def to_oriented(data: np.ndarray, amp: str, ampname: str) -> np.ndarray:
    """Orient a trimmed data section: LU and RL are rotated by 180 degrees, then AMPNAME LR or
    UL flips the columns."""
    if amp == "LU" or amp == "RL":
        data = np.flip(data, axis=(0, 1))
    if ampname == "LR" or ampname == "UL":
        data = np.flip(data, axis=1)
    return data


def to_raw(oriented: np.ndarray, amp: str, ampname: str) -> np.ndarray:
    """Inverse of :func:`to_oriented` (undo the column flip first, then the rotation)."""
    out = oriented
    if ampname == "LR" or ampname == "UL":
        out = np.flip(out, axis=1)
    if amp == "LU" or amp == "RL":
        out = np.flip(out, axis=(0, 1))
    return out


def trim_overscan(raw: np.ndarray) -> np.ndarray:
    """Data section of a raw amp image: all but the last int(32 * ncols / 1064) columns."""
    ncols = raw.shape[1]
    return raw[:, : ncols - int(32 * ncols / 1064)]


def amp_fiber_ids(amp: str) -> np.ndarray:
    """IFU fiber IDs of fibers k = 0..111 (increasing row) of an oriented ``amp``."""
    return _ID_OF_FIRST_ROW[amp] - np.arange(N_FIBERS_AMP)


def ifu_layout() -> tuple[np.ndarray, np.ndarray]:
    """x, y (arcsec) of IFU fiber IDs 1..448 (array index = ID - 1).

    23 rows 2.20" apart alternating 19 and 20 fibers (12 x 19 + 11 x 20 = 448, so the first row
    has 19) at a 2.54" pitch; the rows of 20 sit 1.27" to the left of the rows of 19.  IDs are
    counted from the top row (largest y) downwards, left to right (the order of the IFUcen file
    this simulator writes).
    """
    counts = [19 if i % 2 == 0 else 20 for i in range(23)]
    y_rows = 2.20 * (11 - np.arange(23))
    x = np.concatenate([2.54 * np.arange(n) - 1.27 * (n - 1) for n in counts])
    y = np.repeat(y_rows, counts)
    return x, y


def ihmp_row_col(ifuslot: int) -> tuple[int, int]:
    """(row 01-10, column 1-9) of slot RRC."""
    return divmod(int(ifuslot), 10)


def fiber_focal_xy(x_fp: float, y_fp: float, x_ifu: np.ndarray, y_ifu: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Focal-plane (fx, fy) of IFU-frame positions: Remedy puts the IFU centre at
    (fx, fy) = (Y_FP, X_FP) of the fplane file."""
    return y_fp + np.asarray(x_ifu, float), x_fp + np.asarray(y_ifu, float)


def parangle_rotation(parangle: float) -> float:
    """Focal-plane rotation on the sky, deg: 360 - (90 + PARANGLE + 1.55), in [0, 360)."""
    return float(np.mod(270.0 - 1.55 - parangle, 360.0))


def focal_plane_wcs(ra0: float, dec0: float, rotation: float) -> WCS:
    """Remedy's TAN WCS with focal-plane arcsec as pixels: the origin maps to (ra0, dec0),
    CDELT = (-1", +1"), PC = [[cos r, sin r], [-sin r, cos r]], CRPIX = 0 (so 1-based pixel
    coordinates, ``origin=1``, are the focal-plane arcsec themselves)."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra0, dec0]
    w.wcs.crpix = [0.0, 0.0]
    w.wcs.cdelt = [-1.0 / 3600.0, 1.0 / 3600.0]
    r = np.deg2rad(rotation)
    w.wcs.pc = [[np.cos(r), np.sin(r)], [-np.sin(r), np.cos(r)]]
    return w


def focal_to_radec(fx, fy, ra0: float, dec0: float, rotation: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """RA, Dec (deg) of focal-plane positions (arcsec), any matching shapes."""
    fx, fy = np.broadcast_arrays(np.asarray(fx, float), np.asarray(fy, float))
    ra, dec = focal_plane_wcs(ra0, dec0, rotation).wcs_pix2world(fx.ravel(), fy.ravel(), 1)
    return np.mod(ra, 360.0).reshape(fx.shape), dec.reshape(fx.shape)


def radec_to_focal(ra, dec, ra0: float, dec0: float, rotation: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`focal_to_radec`."""
    ra, dec = np.broadcast_arrays(np.asarray(ra, float), np.asarray(dec, float))
    fx, fy = focal_plane_wcs(ra0, dec0, rotation).wcs_world2pix(ra.ravel(), dec.ravel(), 1)
    return fx.reshape(ra.shape), fy.reshape(ra.shape)


def _east_north_wcs(ra0: float, dec0: float) -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [ra0, dec0]
    w.wcs.crpix = [0.0, 0.0]
    w.wcs.cdelt = [1.0 / 3600.0, 1.0 / 3600.0]
    return w


def offset_radec(ra: float, dec: float, east: float, north: float) -> tuple[float, float]:
    """(ra, dec) deg moved by ``east``, ``north`` arcsec on the tangent plane at (ra, dec)."""
    r, d = _east_north_wcs(ra, dec).wcs_pix2world([east], [north], 1)
    return float(np.mod(r[0], 360.0)), float(d[0])


def tangent_offset(ra: float, dec: float, ra0: float, dec0: float) -> tuple[float, float]:
    """(east, north) arcsec of (ra, dec) on the tangent plane at (ra0, dec0)."""
    e, n = _east_north_wcs(ra0, dec0).wcs_world2pix([ra], [dec], 1)
    return float(e[0]), float(n[0])


def separation_arcsec(ra, dec, ra0, dec0) -> np.ndarray:
    """Great-circle distance (arcsec) between (ra, dec) and (ra0, dec0), deg, broadcast."""
    d = angular_separation(*(np.deg2rad(np.asarray(v, float)) for v in (ra, dec, ra0, dec0)))
    return np.rad2deg(d) * 3600.0


def dar_offset(wave) -> np.ndarray:
    """Differential refraction along focal-plane x (arcsec) at ``wave`` (A): a natural cubic
    spline through the published table (exact at its five wavelengths)."""
    spline = CubicSpline(DAR_TABLE_WAVE, DAR_TABLE_ARCSEC, bc_type="natural")
    return spline(np.asarray(wave, float))
