"""Wavelength solution from extracted arc spectra, and the per-exposure wavelength shift.

``solve_wavelength``:

1. Identify the arc lines on a median stack of central fibers: every pair of the brightest peaks
   x every pair of catalogue lines defines a linear solution (dispersion 1.6-2.6 A/px); the
   hypothesis matching most lines wins after quadratic/cubic refinement.
2. Follow the lines across the slit in blocks of fibers, then centroid every line in every fiber
   with a Gaussian-windowed centroid (no pixel-phase bias for a well-sampled ~5.6 A line).
3. Fit all fibers at once: lambda_k(x) = a0_k + a1_k u + sum_{m>=2} b_m(fiber) L_m(u), with the
   zero point and the slope free per fiber (Remedy's cross-fiber polynomial erased them) and the
   higher orders a smooth polynomial across the slit; inverse-variance weights, robust rejection.

``measure_wavelength_shift`` measures the offset of known night-sky lines in the science spectra
against the calibration wavelengths (joint maximum-likelihood fit, :mod:`remedy_dask.amp.skyshift`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
from numpy.polynomial import legendre
from scipy.ndimage import gaussian_filter1d, median_filter

from remedy_dask import geometry
from remedy_dask.errors import CalibrationError
from remedy_dask.amp.skyshift import fit_wavelength_shift
from remedy_dask.amp.trace.assign import windowed_centroid
from remedy_dask.numeric.robust import mad_sigma

ALL_ARC_LINES: tuple[float, ...] = tuple(sorted(w for lamp in geometry.ARC_LINES.values() for w in lamp))
LSF_FWHM = 5.6  # A, VIRUS line-spread function
HALF_WINDOW = 7  # px gathered on each side of a line for the windowed centroid


@dataclass
class WavelengthResult:
    """Wavelength solution of one amp: ``wavelength`` (n_fibers, n_cols) A; per fiber ``rms`` (A,
    residuals of its arc lines) and ``n_lines`` used."""

    wavelength: np.ndarray
    rms: np.ndarray
    n_lines: np.ndarray
    qa: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# peaks and identification
# --------------------------------------------------------------------------------------------
def find_lines(spectrum: np.ndarray, n_max: int = 15, snr_min: float = 8.0, min_sep: float = 6.0,
               sigma_w: float = 1.2) -> tuple[np.ndarray, np.ndarray]:
    """Positions (px, sorted) and heights of the brightest emission lines of a 1-D spectrum."""
    spec = np.nan_to_num(np.asarray(spectrum, dtype=float))
    base = median_filter(spec, size=41, mode="nearest")
    h = gaussian_filter1d(spec - base, 1.0)
    noise = mad_sigma(h) + 1e-12
    from scipy.signal import find_peaks  # here: importing scipy.signal costs ~1 s per process

    idx, _ = find_peaks(h, distance=min_sep)  # of two close maxima the higher stays
    idx = idx[h[idx] > snr_min * noise]
    idx = np.sort(idx[np.argsort(-h[idx], kind="stable")[:n_max]])
    idx = idx[(idx >= HALF_WINDOW) & (idx < spec.size - HALF_WINDOW)]
    if idx.size == 0:
        return np.zeros(0), np.zeros(0)
    cols = idx[:, None] + np.arange(-HALF_WINDOW, HALF_WINDOW + 1)
    s, _, ok = windowed_centroid(spec[cols] - base[idx][:, None], cols - idx[:, None].astype(float),
                                 sigma_w)
    return np.where(ok, idx + s, idx.astype(float)), h[idx]


def _match(peaks: np.ndarray, predicted: np.ndarray, tol: float) -> np.ndarray:
    """Index of the peak nearest to each predicted line position (-1 beyond ``tol``), unique."""
    d = np.abs(predicted[:, None] - peaks[None, :])
    best = np.argmin(d, axis=1)
    out = np.where(d[np.arange(predicted.size), best] <= tol, best, -1)
    for p in np.unique(out[out >= 0]):
        hits = np.flatnonzero(out == p)
        if hits.size > 1:
            out[hits[hits != hits[np.argmin(d[hits, p])]]] = -1
    return out


def identify_lines(peaks: np.ndarray, lines: np.ndarray, n_cols: int,
                   dispersion: tuple[float, float] = (1.6, 2.6)) -> tuple[np.ndarray, np.ndarray]:
    """Match catalogue ``lines`` to ``peaks``.  Returns (peak index per line or -1, cubic
    coefficients x -> lambda of the best hypothesis)."""
    if peaks.size < 3:
        return np.full(lines.size, -1), np.zeros(4)
    pi, pj = np.array(list(combinations(range(peaks.size), 2))).T
    la, lb = np.array(list(combinations(range(lines.size), 2))).T
    disp = (lines[lb][None, :] - lines[la][None, :]) / (peaks[pj] - peaks[pi])[:, None]
    lam0 = lines[la][None, :] - disp * peaks[pi][:, None]
    ok = (disp > dispersion[0]) & (disp < dispersion[1])
    disp, lam0 = disp[ok], lam0[ok]
    pred = (lines[None, :] - lam0[:, None]) / disp[:, None]  # (H, n_lines)
    dist = np.abs(pred[:, :, None] - peaks[None, None, :]).min(-1)
    score = (dist < 8.0).sum(1) - 1e-3 * np.where(dist < 8.0, dist, 0.0).sum(1)
    best_match, best_coef, best_key = np.full(lines.size, -1), np.zeros(4), (-1, np.inf)
    x = np.linspace(0, n_cols - 1, 4 * n_cols)
    for h in np.argsort(-score)[:25]:
        coef = np.array([lam0[h], disp[h], 0.0, 0.0])
        match = _match(peaks, pred[h], 8.0)
        for deg, tol in ((1, 6.0), (2, 4.0), (3, 3.0), (3, 2.0)):
            use = match >= 0
            if use.sum() < deg + 2:
                break
            coef = np.zeros(4)
            coef[:deg + 1] = np.polynomial.polynomial.polyfit(peaks[match[use]], lines[use], deg)
            lam = np.polynomial.polynomial.polyval(x, coef)
            if np.any(np.diff(lam) <= 0):
                break
            match = _match(peaks, np.interp(lines, lam, x, left=-1e9, right=1e9), tol)
        use = match >= 0
        if use.sum() < 3:
            continue
        res = lines[use] - np.polynomial.polynomial.polyval(peaks[match[use]], coef)
        key = (int(use.sum()), float(np.sqrt(np.mean(res**2))))
        if key[0] > best_key[0] or (key[0] == best_key[0] and key[1] < best_key[1]):
            best_match, best_coef, best_key = match, coef, key
    return best_match, best_coef


# --------------------------------------------------------------------------------------------
# centroids in every fiber
# --------------------------------------------------------------------------------------------
def _line_windows(spectra: np.ndarray, variance: np.ndarray, start: np.ndarray, side_max: int = 12
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Pixels around ``start`` (n_spec, n_lines) with a local linear continuum (fitted 5 to
    ``side_max`` px from the line) removed.  Returns (line, offsets from start, variance, bad, ok)."""
    n_spec, n_cols = spectra.shape
    half = side_max
    base = np.clip(np.round(np.nan_to_num(start, nan=-100.0)).astype(int), half, n_cols - half - 1)
    cols = base[..., None] + np.arange(-half, half + 1)
    row = np.arange(n_spec)[:, None, None]
    vals, var = spectra[row, cols], variance[row, cols]
    bad = ~np.isfinite(vals) | ~np.isfinite(var)
    vals, var = np.where(bad, 0.0, vals), np.where(bad, 0.0, var)
    r = (cols - start[..., None]).astype(float)
    side = (np.abs(r) >= 5) & (np.abs(r) <= half) & ~bad
    n, sr, srr = side.sum(-1), (side * r).sum(-1), (side * r * r).sum(-1)
    sv, srv = (side * vals).sum(-1), (side * r * vals).sum(-1)
    det = np.where(n * srr - sr * sr > 0, n * srr - sr * sr, 1.0)
    c0, c1 = (srr * sv - sr * srv) / det, (n * srv - sr * sv) / det
    line = vals - c0[..., None] - c1[..., None] * r
    inner = np.abs(r) <= HALF_WINDOW + 0.5
    ok = (n >= 4) & np.isfinite(start) & ~(bad & inner).any(-1)
    return np.where(inner, line, 0.0), np.where(inner, r, 50.0), var, bad, ok


def _centroid_error(line: np.ndarray, r: np.ndarray, var: np.ndarray, s: np.ndarray,
                    sigma_w: float, axis: tuple[int, ...] = (-1,)) -> tuple[np.ndarray, np.ndarray]:
    """Propagated error of a windowed centroid and the windowed S/N."""
    rr = r - s
    w = np.exp(-0.5 * rr * rr / sigma_w**2) * (np.abs(r) < 49)
    fprime = (w * line * (rr * rr / sigma_w**2 - 1.0)).sum(axis)
    with np.errstate(all="ignore"):
        err = np.sqrt((w * w * rr * rr * var).sum(axis)) / np.abs(fprime)
        snr = (w * line).sum(axis) / np.sqrt((w * w * var).sum(axis))
    return err, snr


def line_centroids(spectra: np.ndarray, variance: np.ndarray, start: np.ndarray, sigma_w: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windowed centroids near ``start`` (n_spec, n_lines) after a local linear continuum.
    Returns (position, error px, S/N); NaN / 0 where unusable."""
    line, r, var, _, ok0 = _line_windows(spectra, variance, start)
    s, _, ok = windowed_centroid(line, r, sigma_w)
    err, snr = _centroid_error(line, r, var, s[..., None], sigma_w)
    good = ok & ok0 & np.isfinite(err)
    return np.where(good, start + s, np.nan), np.where(good, err, np.nan), np.where(good, snr, 0.0)


def _nan_stat(func, values: np.ndarray) -> np.ndarray:
    """``func`` (nanmedian / nanmean) over axis 0; all-NaN columns (masked columns) give NaN
    silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return func(values, axis=0)


def _block_positions(spectra: np.ndarray, variance: np.ndarray, live: np.ndarray, start: np.ndarray,
                     sigma_w: float, block: int = 8) -> np.ndarray:
    """Line positions followed across the slit on median stacks of ``block`` fibers, walking out
    from the central block.  Returns per-fiber starting positions (n_fib, n_lines)."""
    n_fib = spectra.shape[0]
    edges = np.arange(0, n_fib + block, block)[: n_fib // block + 1]
    edges[-1] = n_fib
    n_blk = edges.size - 1
    stacks = np.stack([_nan_stat(np.nanmedian, np.where(live[a:b, None], spectra[a:b], np.nan))
                       for a, b in zip(edges[:-1], edges[1:])])
    svar = np.stack([_nan_stat(np.nanmean, variance[a:b]) / max(int(live[a:b].sum()), 1)
                     for a, b in zip(edges[:-1], edges[1:])])
    pos = np.full((n_blk, start.size), np.nan)
    centre = n_blk // 2
    order = list(range(centre, n_blk)) + list(range(centre - 1, -1, -1))
    for i in order:
        prev = start if i == centre else pos[i - 1 if i > centre else i + 1]
        guess = np.where(np.isfinite(prev), prev, start)
        c, _, snr = line_centroids(stacks[i:i + 1], svar[i:i + 1], guess[None, :], sigma_w)
        pos[i] = np.where(np.isfinite(c[0]) & (snr[0] > 5) & (np.abs(c[0] - guess) < 3), c[0], guess)
    return pos[np.minimum(np.arange(n_fib) // block, n_blk - 1)]


# --------------------------------------------------------------------------------------------
# the global fit
# --------------------------------------------------------------------------------------------
def _design(u: np.ndarray, fiber: np.ndarray, n_fib: int, degree: int, cross_degree: int
            ) -> np.ndarray:
    """Design of lambda = a0_k + a1_k u + sum_{m>=2,p} b_mp L_m(u) L_p(v_k) for samples (u, k)."""
    n = u.size
    lu = legendre.legvander(u, degree)
    v = 2.0 * fiber / max(n_fib - 1, 1) - 1.0
    lv = legendre.legvander(v, cross_degree)
    free = np.zeros((n, 2 * n_fib))
    free[np.arange(n), 2 * fiber] = 1.0
    free[np.arange(n), 2 * fiber + 1] = lu[:, 1]
    shared = (lu[:, 2:, None] * lv[:, None, :]).reshape(n, -1)
    return np.hstack([free, shared])


def solve_wavelength(arc_spectra: np.ndarray, arc_error: np.ndarray | None = None,
                     dead: np.ndarray | None = None, lines: tuple[float, ...] = ALL_ARC_LINES, *,
                     degree: int = 4, cross_degree: int = 3, min_lines: int = 7,
                     lsf_fwhm: float = LSF_FWHM, block: int = 8) -> WavelengthResult:
    """Wavelength solution from arc spectra (n_fibers, n_cols) e- per pixel of both lamps.

    Raises CalibrationError when fewer than ``min_lines`` catalogue lines are identified (the
    message lists the missing lines by lamp) or the solution is not monotonic.
    """
    spectra = np.asarray(arc_spectra, dtype=float)
    n_fib, n_cols = spectra.shape
    lines_arr = np.sort(np.asarray(lines, dtype=float))
    dead = np.zeros(n_fib, bool) if dead is None else np.asarray(dead, dtype=bool).copy()
    if arc_error is None:
        variance = np.abs(np.nan_to_num(spectra)) + 25.0
    else:
        variance = np.asarray(arc_error, dtype=float) ** 2
    level = np.nanmax(np.where(np.isfinite(spectra), spectra, -np.inf), axis=1)
    live = ~dead & np.isfinite(level) & (level > 0.05 * np.nanmedian(level[~dead]))
    if live.sum() < 10:
        raise CalibrationError(f"arc spectra: only {live.sum()} fibers carry light")
    # 1. identification on the central stack
    centre = np.flatnonzero(live)[np.argsort(np.abs(np.flatnonzero(live) - n_fib / 2))[:16]]
    stack = _nan_stat(np.nanmedian, spectra[centre])
    peaks, _ = find_lines(stack)
    match, coef = identify_lines(peaks, lines_arr, n_cols)
    found = match >= 0
    if found.sum() < min_lines:
        raise CalibrationError(_missing_message(lines_arr, found, min_lines))
    disp = float(np.polynomial.polynomial.polyval(n_cols / 2, np.polynomial.polynomial.polyder(coef)))
    sigma_w = float(np.clip(lsf_fwhm / 2.3548 / disp, 0.7, 3.0))
    start = np.full(lines_arr.size, np.nan)
    start[found] = peaks[match[found]]
    # 2. follow across the slit, centroid every fiber
    guess = _block_positions(spectra, variance, live, start, sigma_w, block)
    x, err, snr = line_centroids(spectra, variance, guess, sigma_w)
    use = live[:, None] & found[None, :] & np.isfinite(x) & (snr > 5.0) & (np.abs(x - guess) < 2.0)
    # 3. global fit
    k_idx, l_idx = np.nonzero(use)
    u = 2.0 * x[use] / (n_cols - 1) - 1.0
    lam = lines_arr[l_idx]
    sig = disp * np.maximum(err[use], 0.003)
    design = _design(u, k_idx, n_fib, degree, cross_degree)
    keep = np.ones(lam.size, dtype=bool)
    active = np.flatnonzero(np.abs(design).sum(0) > 0)
    sol = np.zeros(design.shape[1])
    for _ in range(4):
        a = design[keep][:, active] / sig[keep, None]
        sol_active, *_ = np.linalg.lstsq(a, lam[keep] / sig[keep], rcond=None)
        sol[:] = 0.0
        sol[active] = sol_active
        chi = (lam - design @ sol) / sig
        scale = max(mad_sigma(chi[keep], 0.0), 1.0)
        new_keep = np.abs(chi) < 5.0 * scale
        if np.array_equal(new_keep, keep):
            break
        keep = new_keep
    res = lam - design @ sol
    n_lines = np.bincount(k_idx[keep], minlength=n_fib)
    rms = np.sqrt(np.bincount(k_idx[keep], weights=res[keep] ** 2, minlength=n_fib)
                  / np.maximum(n_lines, 1))
    solved = n_lines >= 3
    if solved.sum() < 0.5 * live.sum():
        raise CalibrationError(
            f"arc: only {solved.sum()} of {live.sum()} fibers have 3 or more measurable lines "
            "(line cores masked or too faint in the extracted arc spectra?)")
    wavelength = _evaluate(sol, n_fib, n_cols, degree, cross_degree, solved)
    if not np.all(np.diff(wavelength, axis=1) > 0):
        raise CalibrationError("wavelength solution is not monotonic in some fibers")
    rms = np.where(solved, rms, np.nan)
    qa = {"lines_identified": ",".join(f"{w:.1f}" for w in lines_arr[found]),
          "n_lines_identified": int(found.sum()), "dispersion": disp,
          "lsf_fwhm_px": lsf_fwhm / disp, "n_unsolved_fibers": int((~solved).sum()),
          "rms_median": float(np.nanmedian(rms)), "rms_max": float(np.nanmax(rms)),
          "n_rejected": int((~keep).sum()), "wave_min": float(wavelength[:, 0].min()),
          "wave_max": float(wavelength[:, -1].max())}
    return WavelengthResult(wavelength=wavelength, rms=rms, n_lines=n_lines, qa=qa)


def _evaluate(sol: np.ndarray, n_fib: int, n_cols: int, degree: int, cross_degree: int,
              solved: np.ndarray) -> np.ndarray:
    """Wavelength map from the fit; fibers without enough lines get zero point and slope
    interpolated from their neighbours (the shared terms are smooth across the slit)."""
    k = np.arange(n_fib)
    a0, a1 = sol[0:2 * n_fib:2].copy(), sol[1:2 * n_fib:2].copy()
    a0[~solved] = np.interp(k[~solved], k[solved], a0[solved])
    a1[~solved] = np.interp(k[~solved], k[solved], a1[solved])
    b = sol[2 * n_fib:].reshape(degree - 1, cross_degree + 1)
    lu = legendre.legvander(2.0 * np.arange(n_cols) / (n_cols - 1) - 1.0, degree)  # (nc, deg+1)
    lv = legendre.legvander(2.0 * k / max(n_fib - 1, 1) - 1.0, cross_degree)  # (nf, cd+1)
    higher = (lv @ b.T) @ lu[:, 2:].T  # (nf, nc)
    return a0[:, None] + a1[:, None] * lu[None, :, 1] + higher


def _missing_message(lines: np.ndarray, found: np.ndarray, min_lines: int) -> str:
    missing = []
    for lamp, waves in geometry.ARC_LINES.items():
        lost = [w for w in waves if w in set(lines[~found])]
        if lost:
            tag = " (lamp off?)" if len(lost) == len(waves) else ""
            missing.append(f"{lamp} {', '.join(f'{w:.3f}' for w in lost)}{tag}")
    return (f"arc: only {int(found.sum())} of {lines.size} lines identified (need {min_lines}); "
            f"missing: {'; '.join(missing) or 'none listed'}")


# --------------------------------------------------------------------------------------------
# per-exposure shift from sky lines
# --------------------------------------------------------------------------------------------
def measure_wavelength_shift(spectra: np.ndarray, wavelength: np.ndarray,
                             mask: np.ndarray | None = None,
                             lines: tuple[float, ...] = geometry.SKY_LINES, *,
                             error: np.ndarray | None = None, lsf_fwhm: float = LSF_FWHM,
                             min_snr: float = 5.0) -> float:
    """Shift (px) of sky emission lines in science spectra against the calibration wavelengths:
    ``wavelength_sci(x) = wavelength_cal(x - shift)``.

    Joint maximum-likelihood fit of all ``lines`` in all fibers with one common shift (per-fiber
    linear continuum and line amplitude, pixel-integrated Gaussian LSF of ``lsf_fwhm`` A, bright
    sources and outlying fibers left out; lines with S/N < ``min_snr`` dropped): see
    :mod:`remedy_dask.amp.skyshift`, whose ``fit_wavelength_shift`` also returns the formal error
    and per-line values for QA.  ``error`` (sigma of the spectra) sets the weights; without it a
    Poisson estimate is used.  Raises CalibrationError if no line is measurable.
    """
    return fit_wavelength_shift(spectra, wavelength, mask, lines, error=error, lsf_fwhm=lsf_fwhm,
                                min_snr=min_snr, per_line=False).shift


def shifted_wavelength(wavelength: np.ndarray, shift: float) -> np.ndarray:
    """The wavelengths of a frame whose features moved by ``shift`` columns from the
    calibration: wavelength_sci(x) = wavelength_cal(x - shift), linear along columns."""
    ncol = wavelength.shape[1]
    x = np.arange(ncol) - shift
    i0 = np.clip(np.floor(x).astype(int), 0, ncol - 2)
    frac = x - i0
    return wavelength[:, i0] * (1 - frac) + wavelength[:, i0 + 1] * frac
