"""Optimal (PSF-weighted) extraction of point sources from fiber spectra, and source injection.

Fibers are given by their positions ``(fiber_x, fiber_y)`` in arcsec (any frame: IFU or focal
plane, dither included) and their spectra on a common wavelength grid (rows = fibers).  The PSF
weight of fiber i at wavelength j is the fraction of the source's total flux entering that fiber,
``w_ij = f(|p_i - (p0 + dar_j)|)`` (see :mod:`remedy_dask.observation.psf` for the DAR sign), so that
``d_ij = F_j w_ij + noise`` and the optimal estimate of the total source flux is (Horne 1986)

    F_j = sum_i w_ij d_ij / s_ij^2 / sum_i w_ij^2 / s_ij^2,
    sigma(F_j) = (sum_i w_ij^2 / s_ij^2)^-1/2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from remedy_dask.observation.psf import PSFLike, dar_xy, evaluate_psf, good_pixels


@dataclass
class ExtractedSpectrum:
    """Total-flux spectrum of a point source (units of the input spectra)."""

    spectrum: np.ndarray  # (n_wave,), NaN where coverage < min_coverage
    error: np.ndarray  # (n_wave,) 1-sigma
    coverage: np.ndarray  # (n_wave,) sum of the PSF weights of the good fibers (all exposures)
    n_fibers: int
    corr: np.ndarray | None = None  # (n_wave,) correlation of bins j and j+1 (with wave_corr)


def source_weights(
    fiber_x: np.ndarray,
    fiber_y: np.ndarray,
    x0: float,
    y0: float,
    psf: PSFLike,
    dar: np.ndarray | None,
    n_wave: int,
    exposure: np.ndarray | None = None,
) -> np.ndarray:
    """(n_fiber, n_wave) fiber fractions of a source at ``(x0, y0)`` with DAR."""
    dxy = dar_xy(dar, n_wave)
    dx = np.asarray(fiber_x, dtype=float)[:, None] - (x0 + dxy[0])[None, :]
    dy = np.asarray(fiber_y, dtype=float)[:, None] - (y0 + dxy[1])[None, :]
    return evaluate_psf(psf, dx, dy, exposure)


def nearby_fibers(fiber_x, fiber_y, x0, y0, dar, n_wave, radius) -> np.ndarray:
    """Indices of the fibers within ``radius`` (arcsec) of (x0, y0) at some wavelength: the
    radius widened by the largest DAR offset of the ``n_wave`` bins."""
    dxy = dar_xy(dar, n_wave)
    reach = radius + float(np.max(np.hypot(dxy[0], dxy[1]), initial=0.0))
    return np.flatnonzero(np.hypot(np.asarray(fiber_x) - x0, np.asarray(fiber_y) - y0) < reach)


def extract_source(
    flux: np.ndarray,
    error: np.ndarray,
    mask: np.ndarray | None,
    fiber_x: np.ndarray,
    fiber_y: np.ndarray,
    x0: float,
    y0: float,
    psf: PSFLike,
    dar: np.ndarray | None = None,
    exposure: np.ndarray | None = None,
    radius: float = 5.0,
    min_coverage: float = 0.1,
    wave_corr: np.ndarray | None = None,
) -> ExtractedSpectrum:
    """Optimal extraction of the total flux spectrum of a point source at ``(x0, y0)``.

    ``flux, error, mask``: (n_fiber, n_wave); mask True = bad (non-finite values and non-positive
    errors count as bad too).  ``psf``: a :class:`RadialPSF` or one per exposure (then
    ``exposure`` holds 0-based indices).  Fibers farther than ``radius`` (plus the DAR reach) from
    the source are ignored.  Wavelengths whose good fibers hold less than ``min_coverage`` of the
    source's flux (summed over exposures) are NaN.  With ``wave_corr`` (n_fiber, n_wave), the
    fibers' correlation of neighbouring wavelength bins (column j: bins j and j+1), the result's
    ``corr`` is that of the extracted spectrum: sum_i a_ij a_ij+1 rho_ij s_ij s_ij+1 / (e_j e_j+1)
    with a the extraction weights and e the extracted errors.
    """
    flux = np.asarray(flux)
    n_wave = flux.shape[1]
    sel = nearby_fibers(fiber_x, fiber_y, x0, y0, dar, n_wave, radius)
    if sel.size == 0:
        nan = np.full(n_wave, np.nan)
        return ExtractedSpectrum(nan, nan.copy(), np.zeros(n_wave), 0,
                                 None if wave_corr is None else np.zeros(n_wave))
    d = flux[sel].astype(float)
    s = np.asarray(error)[sel].astype(float)
    good = good_pixels(d, s, None if mask is None else np.asarray(mask)[sel])
    exp_sel = None if exposure is None else np.asarray(exposure)[sel]
    w = source_weights(
        np.asarray(fiber_x)[sel], np.asarray(fiber_y)[sel], x0, y0, psf, dar, n_wave, exp_sel
    )
    w = np.where(good, w, 0.0)
    ivar = np.where(good, 1.0 / np.where(good, s, 1.0) ** 2, 0.0)
    num = np.sum(w * np.where(good, d, 0.0) * ivar, axis=0)
    den = np.sum(w**2 * ivar, axis=0)
    coverage = w.sum(axis=0)
    ok = (den > 0) & (coverage >= min_coverage)
    safe = np.where(ok, den, 1.0)
    spectrum = np.where(ok, num / safe, np.nan)
    err = np.where(ok, 1.0 / np.sqrt(safe), np.nan)
    corr = None
    if wave_corr is not None:
        b = w * np.sqrt(ivar)  # a_ij s_ij / e_j^2 = w_ij / s_ij
        corr = np.zeros(n_wave)
        pair = np.sum(b[:, :-1] * b[:, 1:] * np.asarray(wave_corr)[sel, :-1], axis=0)
        corr[:-1] = np.where(ok[:-1] & ok[1:], pair / np.sqrt(safe[:-1] * safe[1:]), 0.0)
    return ExtractedSpectrum(spectrum, err, coverage, int(sel.size), corr)


def extract_sources(
    flux: np.ndarray,
    error: np.ndarray,
    mask: np.ndarray | None,
    fiber_x: np.ndarray,
    fiber_y: np.ndarray,
    x0: np.ndarray,
    y0: np.ndarray,
    psf: PSFLike,
    dar: np.ndarray | None = None,
    exposure: np.ndarray | None = None,
    radius: float = 5.0,
    min_coverage: float = 0.1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`extract_source` at many positions: (spectra, errors, coverage), (n_src, n_wave)."""
    x0 = np.atleast_1d(x0)
    y0 = np.atleast_1d(y0)
    n_wave = np.asarray(flux).shape[1]
    spec = np.full((x0.size, n_wave), np.nan)
    err = np.full_like(spec, np.nan)
    cov = np.zeros_like(spec)
    for k in range(x0.size):
        res = extract_source(
            flux, error, mask, fiber_x, fiber_y, float(x0[k]), float(y0[k]), psf, dar,
            exposure, radius, min_coverage,
        )
        spec[k], err[k], cov[k] = res.spectrum, res.error, res.coverage
    return spec, err, cov


def inject_source(
    flux: np.ndarray,
    fiber_x: np.ndarray,
    fiber_y: np.ndarray,
    x0: float,
    y0: float,
    spectrum: np.ndarray,
    psf: PSFLike,
    dar: np.ndarray | None = None,
    exposure: np.ndarray | None = None,
) -> np.ndarray:
    """Return ``flux`` plus a point source of total-flux ``spectrum`` (n_wave,) at ``(x0, y0)``.

    The source is spread over the fibers with the fiber-integrated PSF (``psf`` as in
    :func:`extract_source`; build one with :func:`remedy_dask.observation.psf.fiber_integrated_moffat` for the
    wanted seeing) and the DAR offsets.  The input array is not modified.
    """
    flux = np.asarray(flux, dtype=float)
    spectrum = np.asarray(spectrum, dtype=float)
    w = source_weights(fiber_x, fiber_y, x0, y0, psf, dar, flux.shape[1], exposure)
    return flux + w * spectrum[None, :]
