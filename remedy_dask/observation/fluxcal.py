"""Flux calibration: electrons to physical flux density, synthetic AB magnitudes, and the
photometric zero-point offset against a catalogue.

Conversion (per wavelength bin, documented in :func:`counts_to_flux`)::

    F_lambda [erg/s/cm^2/A] = N_e [e-/A] * h c / lambda / (A_tel * t_exp * T(lambda) * tau)

with ``A_tel`` the illuminated mirror area (cm^2), ``t_exp`` the exposure time (s), ``T`` the
system throughput (e- per photon at the telescope aperture) and ``tau`` the sky transparency.
Fluxes are returned in units of 1e-17 erg/s/cm^2/A (``FLUX_UNIT``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from remedy_dask.errors import CalibrationError
from remedy_dask.geometry import DEF_WAVE, DEFAULT_AREA_CM2, DEFAULT_TRANSPARENCY
from remedy_dask.numeric.robust import mad_sigma

FLUX_UNIT = 1e-17  # erg/s/cm^2/A per unit of the pipeline's flux arrays
HC_ERG_ANGSTROM = 6.62607015e-27 * 2.99792458e18  # h*c in erg*A
C_ANGSTROM_S = 2.99792458e18
AB_ZEROPOINT = -48.60


@lru_cache(maxsize=4)
def panstarrs_g(name: str = "panstarrs-g") -> tuple[np.ndarray, np.ndarray]:
    """(wavelength A, response) of a speclite filter, Pan-STARRS1 g by default."""
    import speclite.filters

    filt = speclite.filters.load_filter(name)
    return np.asarray(filt.wavelength, dtype=float), np.asarray(filt.response, dtype=float)


def throughput_on_grid(curve_wave: np.ndarray, curve_throughput: np.ndarray,
                       wave: np.ndarray) -> np.ndarray:
    """Throughput curve interpolated onto ``wave``; raises if the curve does not cover it."""
    curve_wave = np.asarray(curve_wave, dtype=float)
    wave = np.asarray(wave, dtype=float)
    if curve_wave.min() > wave.min() + 1e-6 or curve_wave.max() < wave.max() - 1e-6:
        raise CalibrationError(
            f"throughput curve covers {curve_wave.min():.0f}-{curve_wave.max():.0f} A, "
            f"not {wave.min():.0f}-{wave.max():.0f} A"
        )
    order = np.argsort(curve_wave)
    thr = np.interp(wave, curve_wave[order], np.asarray(curve_throughput, dtype=float)[order])
    if np.any(thr <= 0):
        raise CalibrationError("throughput curve is not positive over the wavelength range")
    return thr


def counts_to_flux(
    counts: np.ndarray,
    wave: np.ndarray,
    exptime: float,
    throughput: np.ndarray,
    area: float = DEFAULT_AREA_CM2,
    transparency: float = DEFAULT_TRANSPARENCY,
) -> np.ndarray:
    """Electrons per Angstrom (per exposure) -> flux density in 1e-17 erg/s/cm^2/A.

    ``F = counts * h c / lambda / (area * exptime * throughput * transparency) / 1e-17``.
    Works on spectra and on their errors (the map is linear); ``counts`` (..., n_wave).
    """
    if not (exptime > 0 and area > 0 and transparency > 0):
        raise CalibrationError(
            f"counts_to_flux: exptime {exptime}, area {area}, transparency {transparency} "
            "must be positive"
        )
    wave = np.asarray(wave, dtype=float)
    factor = HC_ERG_ANGSTROM / wave / (area * exptime * np.asarray(throughput) * transparency)
    return np.asarray(counts) * (factor / FLUX_UNIT)


def flux_to_counts(
    flux: np.ndarray,
    wave: np.ndarray,
    exptime: float,
    throughput: np.ndarray,
    area: float = DEFAULT_AREA_CM2,
    transparency: float = DEFAULT_TRANSPARENCY,
) -> np.ndarray:
    """Inverse of :func:`counts_to_flux`: 1e-17 erg/s/cm^2/A -> electrons per Angstrom."""
    unit = counts_to_flux(np.ones(1), wave, exptime, throughput, area, transparency)
    return np.asarray(flux) / unit


def synthetic_gmag(
    wave: np.ndarray,
    flam: np.ndarray,
    error: np.ndarray | None = None,
    filter_curve: tuple[np.ndarray, np.ndarray] | None = None,
    flux_unit: float = FLUX_UNIT,
    min_coverage: float = 0.8,
    edge_pixels: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    """AB magnitude(s) through a filter (default Pan-STARRS1 g) with photon-counting weighting:

    ``m = -2.5 log10( int f_lambda T lambda dlambda / int T c / lambda dlambda ) - 48.60``.

    ``flam`` (n_wave,) or (n, n_wave) in ``flux_unit`` erg/s/cm^2/A; NaN pixels are interpolated
    over if they hold < 1 - ``min_coverage`` of the filter weight, else the magnitude is NaN.  Where
    the filter extends beyond ``wave`` (PS1 g reaches 5620 A, VIRUS 5540 A) the spectrum is
    continued flat at the mean of its last ``edge_pixels`` good pixels.  Returns (mag, mag_err);
    non-positive band fluxes give NaN magnitudes.
    """
    wave = np.asarray(wave, dtype=float)
    flam2 = np.atleast_2d(np.asarray(flam, dtype=float))
    err2 = None if error is None else np.atleast_2d(np.asarray(error, dtype=float))
    fw, fr = panstarrs_g() if filter_curve is None else filter_curve
    step = np.median(np.diff(wave))
    lo = min(wave[0], fw[fr > 0].min())
    hi = max(wave[-1], fw[fr > 0].max())
    pre = np.arange(wave[0] - step, lo - step, -step)[::-1]
    post = np.arange(wave[-1] + step, hi + step, step)
    grid = np.concatenate([pre, wave, post])
    t = np.interp(grid, fw, fr, left=0.0, right=0.0)
    dl = np.gradient(grid)
    w_num = t * grid * dl  # photon-counting weight of f_lambda
    norm = np.sum(t * C_ANGSTROM_S / grid * dl)
    inside = slice(pre.size, pre.size + wave.size)
    w_in = w_num[inside]
    mags = np.full(flam2.shape[0], np.nan)
    errs = np.full(flam2.shape[0], np.nan)
    for k, f in enumerate(flam2):
        good = np.isfinite(f)
        if err2 is not None:
            good &= np.isfinite(err2[k])
        if w_in[good].sum() < min_coverage * w_in.sum() or good.sum() < edge_pixels:
            continue
        ff = np.interp(wave, wave[good], f[good])
        first = ff[good][:edge_pixels].mean()
        last = ff[good][-edge_pixels:].mean()
        full = np.concatenate([np.full(pre.size, first), ff, np.full(post.size, last)])
        band = np.sum(full * w_num) * flux_unit / norm
        if band <= 0:
            continue
        mags[k] = -2.5 * np.log10(band) + AB_ZEROPOINT
        if err2 is not None:
            var = np.sum((w_in[good] * err2[k][good]) ** 2) * (flux_unit / norm) ** 2
            errs[k] = 2.5 / np.log(10.0) * np.sqrt(var) / band
    if np.ndim(flam) == 1:
        return mags[0], errs[0]
    return mags, errs


@dataclass
class PhotometricOffset:
    """Catalogue minus synthetic magnitude; multiply fluxes by ``factor`` to calibrate them."""

    delta_mag: float  # median(g_catalog - g_synthetic) of the kept stars
    factor: float  # 10 ** (-0.4 * delta_mag)
    n_used: int
    scatter: float  # robust std of the kept differences, mag
    error: float  # uncertainty of delta_mag, mag
    used: np.ndarray  # bool per star


def photometric_offset(
    g_synthetic: np.ndarray,
    g_catalog: np.ndarray,
    g_error: np.ndarray | None = None,
    mag_range: tuple[float, float] = (15.0, 20.0),
    clip: float = 3.0,
    scatter_floor: float = 0.02,
    min_stars: int = 3,
    max_iter: int = 10,
) -> PhotometricOffset:
    """Robust zero point between synthetic and catalogue g magnitudes.

    Stars with finite values and catalogue magnitudes in ``mag_range`` (and, if ``g_error`` is
    given, errors below 0.1 mag) enter an iterative clip at ``clip`` robust sigma around the median
    (sigma = max(1.4826 MAD, scatter_floor)).  Raises :class:`CalibrationError` with fewer than
    ``min_stars`` stars.
    """
    syn = np.asarray(g_synthetic, dtype=float)
    cat = np.asarray(g_catalog, dtype=float)
    diff = cat - syn
    used = np.isfinite(diff) & (cat >= mag_range[0]) & (cat <= mag_range[1])
    if g_error is not None:
        used &= np.asarray(g_error) < 0.1
    if used.sum() < min_stars:
        raise CalibrationError(f"photometric_offset: {used.sum()} usable stars, need {min_stars}")
    for _ in range(max_iter):
        med = np.median(diff[used])
        sigma = max(mad_sigma(diff[used], med), scatter_floor)
        new_used = used & (np.abs(diff - med) < clip * sigma)
        if new_used.sum() < min_stars or np.array_equal(new_used, used):
            break
        used = new_used
    med = float(np.median(diff[used]))
    n = int(used.sum())
    scatter = float(mad_sigma(diff[used], med))
    return PhotometricOffset(
        delta_mag=med, factor=float(10 ** (-0.4 * med)), n_used=n, scatter=scatter,
        error=float(1.2533 * max(scatter, scatter_floor) / np.sqrt(n)), used=used,
    )


def exposure_conversion(throughput: np.ndarray, area: float, transparency: np.ndarray,
                        wave: np.ndarray = DEF_WAVE) -> np.ndarray:
    """(n_exposure, n_wave) factors from e-/s/A to 1e-17 erg/s/cm^2/A, one row per exposure's
    transparency (throughput curve on ``wave``; no photometric offset)."""
    return np.stack([counts_to_flux(np.ones(wave.size), wave, 1.0, throughput, area, t)
                     for t in np.asarray(transparency)])


def exposure_scale(photometric_factor: float, norm: np.ndarray) -> np.ndarray:
    """Per-exposure multiplier on top of :func:`exposure_conversion`: the photometric factor
    over the exposure's relative throughput (``norm`` from the PSF fit)."""
    return photometric_factor / np.asarray(norm, float)


def calibrate_fibers(values: np.ndarray, exp_index: np.ndarray, conversion: np.ndarray,
                     bad: np.ndarray | None = None, scale: np.ndarray | None = None
                     ) -> np.ndarray:
    """Fiber spectra (n_fiber, n_wave) in e-/s/A -> 1e-17 erg/s/cm^2/A: times the conversion of
    each fiber's exposure (``exp_index``, 0-based), NaN where ``bad``, times ``scale`` of its
    exposure (:func:`exposure_scale`) if given."""
    out = values * conversion[exp_index]
    if bad is not None:
        np.copyto(out, np.nan, where=bad)
    if scale is not None:
        factor = np.asarray(scale)[exp_index][:, None]
        out = out * factor if np.result_type(out, factor) != out.dtype else np.multiply(
            out, factor, out=out)
    return out
