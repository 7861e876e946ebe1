"""Blank-sky fibers of one exposure: fibers at the common sky level (continuum sources and
broken fibers out) without emission lines.  The level and line passes are numba kernels that
visit each row once and allocate no (N, n_wave) temporaries."""

from __future__ import annotations

import numpy as np
from numba import njit

from remedy_dask.geometry import DEF_WAVE
from remedy_dask.numeric.rowstats import nanmedian_cols, nanmedian_rows
from remedy_dask.numeric.robust import mad_sigma


def _robust_centre(y: np.ndarray, n_iter: int = 10, clip: float = 3.0) -> tuple[float, float]:
    """Centre and scale of the core of a distribution with one-sided contamination."""
    keep = np.isfinite(y)
    c = float(np.median(y[keep]))
    s = float(mad_sigma(y[keep], c))
    for _ in range(n_iter):
        new = np.isfinite(y) & (np.abs(y - c) < clip * max(s, 1e-12))
        if new.sum() < 3 or np.array_equal(new, keep):
            break
        keep = new
        c = float(np.median(y[keep]))
        s = float(mad_sigma(y[keep], c))
    return c, s


@njit(cache=True, nogil=True, error_model="numpy")
def _bad_fraction(flux: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N,) fraction of each row that is masked or not finite."""
    n, n_wave = flux.shape
    out = np.empty(n)
    for i in range(n):
        m = 0
        for j in range(n_wave):
            if mask[i, j] or not np.isfinite(flux[i, j]):
                m += 1
        out[i] = m / n_wave
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def _has_line(flux: np.ndarray, mask: np.ndarray, error: np.ndarray, template: np.ndarray,
              ratio: np.ndarray, line_sigma: float) -> np.ndarray:
    """(N,) True where a 3-pixel sum of (flux - template * ratio) / error exceeds ``line_sigma``
    sigma; masked, non-finite or non-finite-residual pixels count as 0 (a NaN sum: no line)."""
    n, n_wave = flux.shape
    root3 = np.sqrt(3.0)
    out = np.zeros(n, np.bool_)
    r = np.empty(n_wave)
    for i in range(n):
        for j in range(n_wave):
            v = flux[i, j]
            if mask[i, j] or not np.isfinite(v):
                r[j] = 0.0
            else:
                x = (v - template[j] * ratio[i]) / error[i, j]
                r[j] = x if np.isfinite(x) else 0.0
        top = -np.inf
        for j in range(n_wave - 2):
            t = (r[j] + r[j + 1] + r[j + 2]) / root3
            if np.isnan(t):
                top = np.nan
                break
            top = max(top, t)
        out[i] = top > line_sigma
    return out


def select_sky_fibers(
    flux: np.ndarray,
    mask: np.ndarray,
    error: np.ndarray | None = None,
    *,
    wave: np.ndarray = DEF_WAVE,
    window: tuple[float, float] = (3700.0, 5400.0),
    n_sigma: float = 3.0,
    line_sigma: float = 6.0,
    max_masked: float = 0.5,
) -> np.ndarray:
    """Blank-sky fibers (N,) bool.

    A fiber is sky if its median level in ``window`` lies within ``n_sigma`` robust sigma of
    the mode of all fibers (continuum sources and broken fibers are out), it has at most
    ``max_masked`` of its pixels masked, and (with ``error``) no emission line: no 3-pixel
    sum of its residual from the median sky spectrum above ``line_sigma`` sigma.  Masked and
    non-finite pixels are ignored; the arithmetic is float64.
    """
    flux = np.asarray(flux, np.float64)
    mask = np.asarray(mask, bool)
    sel = (wave >= window[0]) & (wave <= window[1])
    cols = np.flatnonzero(sel) if sel.any() else np.arange(flux.shape[1])
    level = nanmedian_rows(flux, mask, cols)
    ok = np.isfinite(level) & (_bad_fraction(flux, mask) <= max_masked)
    if ok.sum() < 3:
        return np.zeros(flux.shape[0], bool)
    centre, scale = _robust_centre(np.where(ok, level, np.nan))
    sky = ok & (np.abs(level - centre) < n_sigma * max(scale, 1e-12))
    if error is not None and sky.sum() >= 3:
        template = nanmedian_cols(flux, mask, np.flatnonzero(sky))
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = level / centre
        sky &= ~_has_line(flux, mask, np.asarray(error, np.float64), template, ratio, line_sigma)
    return sky
