"""VIRUS instrument geometry and published constants shared by the reduction and the simulator.

Everything here is a published fact about VIRUS / HET (the raw layout is read by ``io/raw.py``) or a
convention of this project.  Conventions used across the whole package:

* An *oriented amp image* is a (1032, 1032) array after overscan trim and the orientation flips:
  rows are the cross-dispersion (fiber) axis, columns the wavelength axis (blue left, red right).
  Pixel centres sit at integer coordinates (0-based).
* Fibers of an amp are numbered ``k = 0..111`` by increasing row.  ``trace`` and ``wavelength``
  are (112, 1032) arrays indexed ``[k, column]``.
* Images are in electrons, uncertainties are carried as *variances* (e-^2) in images and as
  errors (sigma) in spectra.
* Focal-plane coordinates ``(fx, fy)`` are arcsec; the IFU centre of a slot sits at
  ``(fx, fy) = (Y_FP, X_FP)`` of the fplane file (Remedy's swap), and a fiber at IFU-frame
  ``(x, y)`` is at ``(Y_FP + x, X_FP + y)``.
"""

from __future__ import annotations

import numpy as np

# --- detector -------------------------------------------------------------------------------
N_ROWS = 1032
N_COLS_RAW = 1064
N_OVERSCAN = 32
N_COLS = N_COLS_RAW - N_OVERSCAN  # 1032 data columns
OVERSCAN_SKIP = 2  # first overscan columns affected by bleed

AMPS: tuple[str, ...] = ("LL", "LU", "RL", "RU")
N_FIBERS_AMP = 112
N_FIBERS_IFU = 448
FLIP_BOTH_AMPS = ("LU", "RL")  # rotate 180 deg after trimming
FLIP_COLUMNS_AMPNAMES = ("LR", "UL")  # extra column flip by header AMPNAME

# Fiber k (0-based by increasing row of the oriented image) has IFU fiber id OFFSET[amp] - k.
FIBER_ID_OFFSET = {"LL": 224, "LU": 112, "RL": 336, "RU": 448}

FRAME_KINDS = ("zro", "drk", "flt", "cmp", "twi", "sci")
ARC_LAMPS = ("Hg", "Cd-A")

# --- wavelength -----------------------------------------------------------------------------
N_WAVE = 1036
WAVE_MIN, WAVE_MAX, WAVE_STEP = 3470.0, 5540.0, 2.0
DEF_WAVE = np.linspace(WAVE_MIN, WAVE_MAX, N_WAVE)

# Air wavelengths (A) of the VIRUS arc lines, by lamp.
ARC_LINES: dict[str, tuple[float, ...]] = {
    "Hg": (3650.153, 4046.565, 4358.335, 4916.068, 5460.750),
    "Cd-A": (3610.508, 4678.149, 4799.912, 5085.822),
}

# Night-sky emission lines inside the VIRUS range used to measure a per-exposure wavelength zero
# point (air, A): N2+ 3914.4 (aurora/airglow band head), Hg I 4046.565, 4358.335, 5460.750
# (light pollution) and the [N I] 5197.9/5200.3 blend (5198.5).
SKY_LINES: tuple[float, ...] = (3914.4, 4046.565, 4358.335, 5198.5, 5460.750)

# Sign convention of drifts between calibration and science frames (trace and wavelength): a
# feature at calibration position p appears at p + shift in the science frame, so
# trace_sci = trace_cal + dy and wavelength_sci(x) = wavelength_cal(x - dx).

# --- fibers on the sky ----------------------------------------------------------------------
FIBER_DIAMETER = 1.5  # arcsec
IFU_FIBER_PITCH = 2.54  # arcsec, within a row
IFU_ROW_PITCH = 2.20  # arcsec
IFU_N_ROWS = 23

# Dither offsets (arcsec, IFU frame) of the standard 3-exposure pattern.
DITHER_PATTERN = ((0.0, 0.0), (1.215, -0.70), (1.215, 0.70))

# Differential atmospheric refraction along focal-plane x (arcsec), HET fixed altitude.
DAR_WAVE = (3500.0, 4000.0, 4500.0, 5000.0, 5500.0)
DAR_OFFSET = (-0.74, -0.40, -0.08, 0.08, 0.20)

# Focal-plane rotation: rotation = 360 - (90 + PARANGLE + ROTATION_OFFSET) deg.
ROTATION_OFFSET_DEG = 1.55

# --- telescope defaults without guider data --------------------------------------------------
DEFAULT_TRANSPARENCY = 1.0
DEFAULT_IQ_FWHM = 1.8  # arcsec
DEFAULT_AREA_CM2 = 51.4e4  # 51.4 m^2
DEFAULT_GAIN = 0.85  # e-/ADU when GAIN is missing or <= 0
DEFAULT_RDNOISE = 3.0  # e- when RDNOISE is missing or <= 0


def ccd_partner(amp: str) -> str:
    """The other amplifier of the same CCD: LL <-> LU, RL <-> RU."""
    return amp[0] + ("U" if amp[1] == "L" else "L")


def fiber_ids(amp: str) -> np.ndarray:
    """IFU fiber IDs (1..448) of the 112 fibers of ``amp``, in order of increasing row."""
    return FIBER_ID_OFFSET[amp] - np.arange(N_FIBERS_AMP)


def ifu_fiber_layout() -> tuple[np.ndarray, np.ndarray]:
    """Standard VIRUS IFU layout: x, y (arcsec) of fiber IDs 1..448 (index = ID - 1).

    23 rows, 2.20" apart, alternating 19 and 20 fibers (12 rows of 19, 11 rows of 20) at a
    2.54" pitch, alternate rows offset by 1.27".  IDs run row by row from the top row
    (largest y) down, and within a row from small to large x.
    """
    xs, ys = [], []
    for row in range(IFU_N_ROWS):
        n = 19 if row % 2 == 0 else 20
        y = (IFU_N_ROWS - 1) / 2.0 * IFU_ROW_PITCH - row * IFU_ROW_PITCH
        x = (np.arange(n) - (n - 1) / 2.0) * IFU_FIBER_PITCH
        xs.append(x)
        ys.append(np.full(n, y))
    return np.concatenate(xs), np.concatenate(ys)


def slot_row_col(ifuslot: int) -> tuple[int, int]:
    """IHMP row (01-10) and column (1-9) of a 3-digit IFU slot ``RRC``."""
    return ifuslot // 10, ifuslot % 10


def dar_offsets(wave: np.ndarray = DEF_WAVE) -> np.ndarray:
    """DAR offset (arcsec, along focal-plane x) at ``wave``: cubic fit to the published table."""
    coeff = np.polyfit(DAR_WAVE, DAR_OFFSET, 3)
    return np.polyval(coeff, np.asarray(wave, dtype=float))


def rotation_from_parangle(parangle_deg: float) -> float:
    """Focal-plane rotation (deg) on the sky for a header PARANGLE."""
    return (360.0 - (90.0 + parangle_deg + ROTATION_OFFSET_DEG)) % 360.0


def focal_to_sky(
    fx: np.ndarray, fy: np.ndarray, ra0: float, dec0: float, rotation_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic (TAN) projection of focal-plane arcsec to RA, Dec (deg).

    The focal-plane origin maps to (ra0, dec0).  Intermediate world coordinates (xi east, eta
    north, arcsec) are ``CD @ (fx, fy)`` with ``CD = diag(-1, 1) @ [[cos r, sin r], [-sin r, cos r]]``:
    Remedy's WCS with CDELT = (-1", +1") and that PC matrix.
    """
    r = np.deg2rad(rotation_deg)
    fx = np.asarray(fx, dtype=float)
    fy = np.asarray(fy, dtype=float)
    xi = -(np.cos(r) * fx + np.sin(r) * fy)
    eta = -np.sin(r) * fx + np.cos(r) * fy
    return tan_deproject(np.deg2rad(xi / 3600.0), np.deg2rad(eta / 3600.0), ra0, dec0)


def sky_to_focal(
    ra: np.ndarray, dec: np.ndarray, ra0: float, dec0: float, rotation_deg: float
) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`focal_to_sky`."""
    xi, eta = tan_project(ra, dec, ra0, dec0)
    xi = np.rad2deg(xi) * 3600.0
    eta = np.rad2deg(eta) * 3600.0
    r = np.deg2rad(rotation_deg)
    # [xi, eta] = [[-c, -s], [-s, c]] [fx, fy]; that matrix is its own inverse (det = -1, symmetric
    # and orthogonal), so apply it again.
    c, s = np.cos(r), np.sin(r)
    return -c * xi - s * eta, -s * xi + c * eta


def tan_project(ra, dec, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """Standard coordinates (xi, eta) in radians of (ra, dec) deg about the tangent point."""
    a = np.deg2rad(np.asarray(ra, dtype=float))
    d = np.deg2rad(np.asarray(dec, dtype=float))
    a0, d0 = np.deg2rad(ra0), np.deg2rad(dec0)
    cosc = np.sin(d0) * np.sin(d) + np.cos(d0) * np.cos(d) * np.cos(a - a0)
    xi = np.cos(d) * np.sin(a - a0) / cosc
    eta = (np.cos(d0) * np.sin(d) - np.sin(d0) * np.cos(d) * np.cos(a - a0)) / cosc
    return xi, eta


def tan_deproject(xi, eta, ra0: float, dec0: float) -> tuple[np.ndarray, np.ndarray]:
    """(ra, dec) in deg of standard coordinates (xi, eta) in radians."""
    a0, d0 = np.deg2rad(ra0), np.deg2rad(dec0)
    rho = np.hypot(xi, eta)
    c = np.arctan(rho)
    with np.errstate(invalid="ignore", divide="ignore"):
        sinc_over_rho = np.where(rho > 0, np.sin(c) / np.where(rho > 0, rho, 1.0), 1.0)
    dec = np.arcsin(np.cos(c) * np.sin(d0) + eta * sinc_over_rho * np.cos(d0))
    ra = a0 + np.arctan2(
        xi * sinc_over_rho, np.cos(d0) * np.cos(c) - eta * sinc_over_rho * np.sin(d0)
    )
    return np.rad2deg(ra) % 360.0, np.rad2deg(dec)
