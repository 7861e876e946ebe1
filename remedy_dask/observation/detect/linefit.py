"""Flux, wavelength and width of one line candidate: a Gaussian plus a linear continuum fitted
to the optimal extraction at its position (step 4 of
:mod:`remedy_dask.observation.detect.lines`)."""

from __future__ import annotations

import numpy as np
from scipy import optimize

from remedy_dask.numeric.correlated import sandwich_covariance
from remedy_dask.observation.detect.continuum import remove_continuum
from remedy_dask.observation.sources import nearby_fibers, extract_source

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def _gauss(wave, flux, mu, sigma):
    return flux / (sigma * np.sqrt(2.0 * np.pi)) * np.exp(-0.5 * ((wave - mu) / sigma) ** 2)


def _gauss_linear(wave, flux, mu, sigma, c0, c1, w0):
    return _gauss(wave, flux, mu, sigma) + c0 + c1 * (wave - w0)


def measure_line(flux, error, good, fiber_x, fiber_y, x0, y0, psf, dar, exposure, wave, j0,
                  line_sigma, fwhm_range, half_window=30.0, wave_corr=None, continuum_window=21,
                  line_mask=12.0):
    """Extract the spectrum at (x0, y0) and fit a Gaussian plus a linear continuum within
    +-half_window A of pixel j0; None if the fit fails.  With ``wave_corr`` the parameter errors
    are those of the same fit on data whose neighbouring bins are correlated as the extracted
    spectrum's are (:func:`remedy_dask.numeric.correlated.sandwich_covariance`).

    With ``line_mask`` > 0 the fit is made on the extraction of the fibers minus their running
    median continuum (``continuum_window``) computed without the pixels within +-line_mask A of
    the line (no bias from the line itself): near a star the extracted continuum is curved and
    structured over the fit window, and a linear continuum under a free-width Gaussian made
    lines 1.7-6x too bright.  The linear terms absorb what is left.  The stored ``spectrum``
    includes the continuum.
    """
    ext = extract_source(flux, error, ~good, fiber_x, fiber_y, x0, y0, psf, dar, exposure,
                         wave_corr=wave_corr)
    spectrum, spectrum_err, cont_at_line = ext.spectrum, ext.error, 0.0
    if line_mask > 0:
        near = nearby_fibers(fiber_x, fiber_y, x0, y0, dar, len(wave), 5.0)  # extract_source's fibers
        line = np.abs(wave - wave[j0]) < line_mask
        sub = flux[near] - remove_continuum(flux[near], good[near] & ~line[None, :],
                                            continuum_window)
        ext = extract_source(sub, error[near], ~good[near] | ~np.isfinite(sub), fiber_x[near],
                             fiber_y[near], x0, y0, psf, dar,
                             None if exposure is None else np.asarray(exposure)[near],
                             wave_corr=None if wave_corr is None else wave_corr[near])
        cont_at_line = float(np.nan_to_num(spectrum[j0] - ext.spectrum[j0]))
    step = wave[1] - wave[0]
    half = int(np.ceil(max(half_window, 4.0 * fwhm_range[1] * FWHM_TO_SIGMA) / step))
    sl = slice(max(j0 - half, 0), min(j0 + half + 1, len(wave)))
    wv, sp, er = wave[sl], ext.spectrum[sl], ext.error[sl]
    ok = np.isfinite(sp) & np.isfinite(er) & (er > 0)
    w0 = float(wave[j0])
    if ok.sum() < 12 or np.sum(ok & (np.abs(wv - w0) < 2 * line_sigma)) < 2:
        return None
    s_lo, s_hi = fwhm_range[0] * FWHM_TO_SIGMA, fwhm_range[1] * FWHM_TO_SIGMA
    sig0 = float(np.clip(line_sigma, s_lo * 1.01, s_hi * 0.99))
    side = ok & (np.abs(wv - w0) > 3 * sig0)
    c0 = float(np.median(sp[side])) if side.sum() >= 3 else 0.0
    core = ok & (np.abs(wv - w0) < 2 * sig0)
    f0 = max(float(np.sum(sp[core] - c0) * step), float(np.nanmax(er)))

    def model(wl, f, mu, sigma, a, b):
        return _gauss_linear(wl, f, mu, sigma, a, b, w0)

    try:
        popt, pcov = optimize.curve_fit(
            model, wv[ok], sp[ok], p0=[f0, w0, sig0, c0, 0.0], sigma=er[ok], absolute_sigma=True,
            bounds=([-np.inf, w0 - 4.0, s_lo, -np.inf, -np.inf],
                    [np.inf, w0 + 4.0, s_hi, np.inf, np.inf]),
        )
    except (RuntimeError, ValueError):
        return None
    if ext.corr is not None:
        idx = np.flatnonzero(ok)
        corr = np.where(np.diff(idx, append=-1) == 1, ext.corr[sl][idx], 0.0)
        pcov = sandwich_covariance(pcov, _gauss_linear_jacobian(wv[ok], popt, w0), er[ok], corr)
    perr = np.sqrt(np.clip(np.diag(pcov), 0, None))
    if not (np.all(np.isfinite(popt)) and np.all(np.isfinite(perr)) and popt[0] > 0):
        return None
    fit = model(wv[ok], *popt)
    chi2 = float(np.sum(((sp[ok] - fit) / er[ok]) ** 2) / max(ok.sum() - 5, 1))
    return {
        "x": x0, "y": y0, "wave": popt[1], "wave_err": perr[1], "flux": popt[0],
        "flux_err": perr[0], "fwhm": popt[2] / FWHM_TO_SIGMA,
        "continuum": popt[3] + cont_at_line,
        "sn_fit": popt[0] / perr[0] if perr[0] > 0 else np.nan, "chi2": chi2,
        "spectrum": spectrum.astype(np.float32), "error": spectrum_err.astype(np.float32),
        "model": _gauss(wave, *popt[:3]).astype(np.float32), "sn": 0.0,
    }


def _gauss_linear_jacobian(wave, p, w0):
    """(n, 5) derivatives of :func:`_gauss_linear` by (flux, mu, sigma, c0, c1) at ``p``."""
    flux, mu, sigma = p[:3]
    x = (wave - mu) / sigma
    g1 = np.exp(-0.5 * x**2) / (sigma * np.sqrt(2.0 * np.pi))
    return np.column_stack([g1, flux * g1 * x / sigma, flux * g1 * (x**2 - 1) / sigma,
                            np.ones_like(wave), wave - w0])
