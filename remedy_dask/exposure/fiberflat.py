"""Fiber-to-fiber throughput from twilight flats, relative to the whole focal plane.

The twilight sky is one spectrum T(lambda) seen by every fiber, times a smooth illumination
across the focal plane (a few % from the sky gradient and the telescope) and times each fiber's
own throughput, which is what we want.  Steps (rectified spectra, all fibers of all IFUs):

1. T(lambda): per-wavelength median over fibers of the level-normalised spectra.
2. Per fiber and wavelength bin, the ratio of sums R_fb = sum(flux) / sum(T) over the bin's good
   pixels (robust to solar absorption lines and small wavelength errors), with one round of
   per-pixel outlier rejection.
3. Illumination: per bin, a robust low-order 2-D polynomial in focal-plane position fitted to
   R_fb over the live fibers; ftf_fb = R_fb / illumination, normalised to median 1 per bin.
4. A smooth curve per fiber through the bins (cubic spline, a fixed linear operator applied to
   all fibers at once).  Dead fibers: median ftf below ``dead_threshold``.

Caveat: the illumination and IFU-wide (spectrograph) throughput differences are degenerate on
scales larger than an IFU; a low-order polynomial over many IFUs absorbs only its projection of
the IFU-to-IFU scatter (~sqrt(n_terms / n_IFU) of it), over few IFUs much more.  Use
``illumination_degree=0`` when only one or two IFUs are reduced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numba import njit
from scipy.interpolate import make_interp_spline

from remedy_dask.errors import CalibrationError
from remedy_dask.geometry import DEF_WAVE
from remedy_dask.numeric.robust import mad_sigma


@dataclass
class FiberFlat:
    """``ftf`` (N, n_wave) relative throughput (NaN where unmeasurable); ``dead`` (N,) bool;
    ``illumination`` (N, n_bins) the twilight illumination model at each fiber;
    ``bin_ratio`` (N, n_bins) the binned ftf before interpolation; ``qa`` numbers."""

    ftf: np.ndarray
    dead: np.ndarray
    illumination: np.ndarray
    bin_ratio: np.ndarray
    qa: dict = field(default_factory=dict)


def bin_edges(n_wave: int, n_bins: int) -> np.ndarray:
    return np.linspace(0, n_wave, n_bins + 1).round().astype(int)


def binned_ratio(
    flux: np.ndarray, error: np.ndarray, bad: np.ndarray, reference: np.ndarray, edges: np.ndarray,
    clip: float = 5.0,
) -> np.ndarray:
    """Per fiber and bin, sum(flux) / sum(reference) over good pixels, after rejecting pixels
    deviating by more than ``clip`` sigma from the first estimate.  NaN for bins with fewer
    than half of their pixels good."""
    n = flux.shape[0]
    nb = edges.size - 1
    f = np.where(bad, 0.0, flux)
    ref = np.broadcast_to(reference, flux.shape)
    good = ~bad
    ratio = np.full((n, nb), np.nan)
    for _ in range(2):
        num = np.add.reduceat(np.where(good, f, 0.0), edges[:-1], axis=1)
        den = np.add.reduceat(np.where(good, ref, 0.0), edges[:-1], axis=1)
        cnt = np.add.reduceat(good.astype(int), edges[:-1], axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where((cnt >= 0.5 * np.diff(edges)) & (den > 0), num / den, np.nan)
        model = np.repeat(ratio, np.diff(edges), axis=1) * ref
        with np.errstate(invalid="ignore"):
            outlier = np.abs(flux - model) > clip * np.where(error > 0, error, np.inf)
        new_good = ~bad & ~(outlier & np.isfinite(model))
        if np.array_equal(new_good, good):
            break
        good = new_good
    return ratio


def _design(x: np.ndarray, y: np.ndarray, degree: int) -> np.ndarray:
    cols = [x**i * y**j for i in range(degree + 1) for j in range(degree + 1 - i)]
    return np.stack(cols, axis=1)


def fit_illumination(
    ratio: np.ndarray, x: np.ndarray, y: np.ndarray, use: np.ndarray, degree: int, clip: float = 3.5
) -> tuple[np.ndarray, np.ndarray]:
    """Robust 2-D polynomial of ``degree`` in (x, y) fitted per column of ``ratio`` (N, n_bins)
    over fibers ``use``; returns (model (N, n_bins), coefficients (n_bins, n_terms))."""
    scale = max(np.ptp(x[use]), np.ptp(y[use]), 1e-6) / 2.0
    xs = (x - np.mean(x[use])) / scale
    ys = (y - np.mean(y[use])) / scale
    a = _design(xs, ys, degree)
    n, nb = ratio.shape
    model = np.full((n, nb), np.nan)
    coeffs = np.full((nb, a.shape[1]), np.nan)
    for b in range(nb):
        ok = use & np.isfinite(ratio[:, b])
        if ok.sum() < 3 * a.shape[1]:
            continue
        for _ in range(5):
            c, *_ = np.linalg.lstsq(a[ok], ratio[ok, b], rcond=None)
            res = ratio[:, b] - a @ c
            mad = mad_sigma(res[ok], 0.0)
            new = use & np.isfinite(ratio[:, b]) & (np.abs(res) <= clip * max(mad, 1e-6))
            if np.array_equal(new, ok):
                break
            ok = new
        coeffs[b] = c
        model[:, b] = a @ c
    return model, coeffs


def smooth_interpolator(n_wave: int, edges: np.ndarray) -> np.ndarray:
    """Linear operator (n_wave, n_bins): cubic spline through the bin centres, evaluated at
    every pixel (clamped to the end bins' centres beyond them)."""
    centres = 0.5 * (edges[:-1] + edges[1:] - 1)
    nb = centres.size
    pos = np.clip(np.arange(n_wave, dtype=float), centres[0], centres[-1])
    k = min(3, nb - 1)
    eye = np.eye(nb)
    return make_interp_spline(centres, eye, k=k, axis=0)(pos)


def fill_bins(values: np.ndarray) -> np.ndarray:
    """Fill NaN bins of each row by linear interpolation (nearest value beyond the ends)."""
    out = values.copy()
    idx = np.arange(values.shape[1])
    for i in np.flatnonzero(np.any(~np.isfinite(values), axis=1)):
        ok = np.isfinite(values[i])
        if ok.sum() >= 1:
            out[i] = np.interp(idx, idx[ok], values[i, ok])
    return out


BLOCK_ROWS, BLOCK_COLUMNS = 2048, 64  # blocks of the focal-plane arrays: temporaries stay small


def _blocks(n: int, size: int | None = None) -> list[slice]:
    size = size or BLOCK_ROWS
    return [slice(a, min(a + size, n)) for a in range(0, n, size)]


def _common_spectrum(flux: np.ndarray, bad: np.ndarray, live: np.ndarray, level: np.ndarray
                     ) -> np.ndarray:
    """Per-wavelength median over the live fibers of the level-normalised spectra, computed
    in column blocks (the (N, n_wave) normalised array is never held whole)."""
    scale = np.where(live, level, 1.0)[:, None]
    out = np.empty(flux.shape[1])
    with np.errstate(invalid="ignore"):
        for c in _blocks(flux.shape[1], BLOCK_COLUMNS):
            normed = np.where(bad[:, c] | ~live[:, None], np.nan, flux[:, c] / scale)
            out[c] = np.nanmedian(normed, axis=0)
    return out


def fiber_to_fiber(
    twi_flux: np.ndarray,
    twi_error: np.ndarray,
    mask: np.ndarray,
    focal_x: np.ndarray,
    focal_y: np.ndarray,
    n_bins: int = 25,
    *,
    illumination_degree: int = 1,
    dead_threshold: float = 0.5,
    min_good_bins: float = 0.5,
) -> FiberFlat:
    """Relative fiber throughput (N, n_wave) from rectified twilight spectra of many fibers.

    ``focal_x``, ``focal_y`` (N,) focal-plane positions (arcsec); ``illumination_degree`` the
    order of the 2-D polynomial illumination removed per wavelength bin (0 = none);
    ``n_bins`` wavelength bins for the smooth ftf; fibers with fewer than ``min_good_bins`` of
    their bins measurable, or a median ftf below ``dead_threshold``, are flagged dead (ftf
    NaN when unmeasurable).  Raises CalibrationError if too few fibers are usable.
    """
    flux = np.asarray(twi_flux, dtype=np.float64)
    err = np.asarray(twi_error, dtype=np.float64)
    bad = np.asarray(mask, dtype=bool) | ~np.isfinite(flux) | ~np.isfinite(err)
    x = np.asarray(focal_x, dtype=np.float64)
    y = np.asarray(focal_y, dtype=np.float64)
    n, n_wave = flux.shape
    if err.shape != flux.shape or bad.shape != flux.shape or x.shape != (n,) or y.shape != (n,):
        raise CalibrationError("fiber_to_fiber: inconsistent input shapes")
    edges = bin_edges(n_wave, n_bins)
    # level of each fiber, then the common twilight spectrum
    level = np.concatenate([np.nanmedian(np.where(bad[r], np.nan, flux[r]), axis=1)
                            for r in _blocks(n)])
    live = np.isfinite(level) & (level > 0)
    if live.sum() < 10:
        raise CalibrationError(f"fiber_to_fiber: only {int(live.sum())} fibers with twilight light")
    ref_level = np.median(level[live])
    live &= level > 0.2 * ref_level
    twilight = _common_spectrum(flux, bad, live, level) * ref_level
    twilight = np.where(np.isfinite(twilight), twilight, 0.0)
    ratio = np.concatenate([binned_ratio(flux[r], err[r], bad[r], twilight[None, :], edges)
                            for r in _blocks(n)])
    frac_good = np.mean(np.isfinite(ratio), axis=1)
    use = live & (frac_good >= min_good_bins)
    if illumination_degree > 0:
        illum, coeffs = fit_illumination(ratio, x, y, use, illumination_degree)
        illum = fill_bins(illum) if np.isfinite(illum).any() else np.ones_like(ratio)
    else:
        illum, coeffs = np.ones_like(ratio), np.zeros((n_bins, 0))
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = ratio / illum
        rel /= np.nanmedian(np.where(use[:, None], rel, np.nan), axis=0)[None, :]
    filled = fill_bins(rel)
    ftf = filled @ smooth_interpolator(n_wave, edges).T
    measurable = frac_good >= min_good_bins
    ftf[~measurable] = np.nan
    med = np.full(n, np.nan)
    for r in _blocks(n):
        rows = np.flatnonzero(measurable[r]) + r.start
        med[rows] = np.nanmedian(ftf[rows], axis=1)
    with np.errstate(invalid="ignore"):
        dead = ~measurable | ~(med >= dead_threshold)
        resid = rel[use] - 1.0
    return FiberFlat(
        ftf=ftf,
        dead=dead,
        illumination=illum,
        bin_ratio=rel,
        qa={
            "n_fibers": n,
            "n_dead": int(dead.sum()),
            "dead_index": np.flatnonzero(dead).tolist(),
            "ftf_rms": float(np.nanstd(resid)),
            "illumination_coefficients": coeffs,
            "illumination_range": (float(np.nanmin(illum)), float(np.nanmax(illum))),
        },
    )


def ftf_on_native(ftf: np.ndarray, wavelength: np.ndarray, wave: np.ndarray = DEF_WAVE) -> np.ndarray:
    """Rectified ftf (n, len(wave)) evaluated at each fiber's native wavelengths (n, m),
    held constant beyond the grid (for masking and QA on the native grid)."""
    ftf = np.asarray(ftf)
    wl = np.ascontiguousarray(wavelength, dtype=np.float64)
    if ftf.ndim != 2 or ftf.shape[0] != wl.shape[0] or ftf.shape[1] != wave.size or wl.ndim != 2:
        raise CalibrationError(f"ftf_on_native: ftf {ftf.shape} does not match the wavelengths "
                               f"{wl.shape} and the grid ({wave.size})")
    out = np.empty(wl.shape)
    _interpolate_rows(np.ascontiguousarray(ftf), wl, float(wave[0]), float(wave[1] - wave[0]),
                      out)
    return out


@njit(cache=True, nogil=True)
def _interpolate_rows(ftf, wl, wave0, step, out):  # pragma: no cover - compiled
    """out[i, j] = ftf[i] (float64) linearly interpolated at grid position (wl[i, j] - wave0) /
    step, clipped to the grid (the arithmetic of the array formulation, one pass)."""
    n_grid = ftf.shape[1]
    for i in range(wl.shape[0]):
        for j in range(wl.shape[1]):
            pos = min(max((wl[i, j] - wave0) / step, 0.0), np.float64(n_grid - 1))
            i0 = min(max(int(np.floor(pos)), 0), n_grid - 2)
            f = pos - i0
            out[i, j] = np.float64(ftf[i, i0]) * (1 - f) + np.float64(ftf[i, i0 + 1]) * f


@njit(cache=True, nogil=True, error_model="numpy")
def apply_fiber_to_fiber(flux: np.ndarray, error: np.ndarray, mask: np.ndarray,
                         ftf: np.ndarray, dead: np.ndarray, out_flux: np.ndarray,
                         out_error: np.ndarray, out_mask: np.ndarray) -> None:
    """Divide spectra by their fiber-to-fiber throughput: flux / ftf and error / ftf in float64,
    and the bad-pixel mask (``mask``, ``dead`` fiber, ftf not > 0, non-finite result), written
    into ``out_flux``, ``out_error``, ``out_mask`` (all (n_fiber, n_wave); ``dead`` (n_fiber,)).
    Compiled and releases the GIL, so it overlaps the reading of the next amps."""
    for i in range(flux.shape[0]):
        for j in range(flux.shape[1]):
            t = np.float64(ftf[i, j])
            f = np.float64(flux[i, j]) / t
            e = np.float64(error[i, j]) / t
            out_flux[i, j] = f
            out_error[i, j] = e
            out_mask[i, j] = (mask[i, j] != 0 or dead[i] != 0 or not t > 0.0
                              or not np.isfinite(f) or not np.isfinite(e))
