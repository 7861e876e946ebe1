"""Fiber peaks and their numbering for the trace (step 2 of :mod:`remedy_dask.amp.trace.fit`): the
Gaussian-windowed centroid, peaks of a chunk profile, numbered by the fiber-location reference
or by the slit pattern (three groups of 37/38/37 fibers, ~8.7 px pitch)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.ndimage import gaussian_filter1d, minimum_filter1d

from remedy_dask.errors import CalibrationError
from remedy_dask.amp.trace.shift import HALF_WINDOW

SLIT_GROUPS: tuple[int, ...] = (37, 38, 37)  # fibers per slit group, by increasing row
PITCH_GUESS = 8.7  # px, fiber pitch within a group (only sets search windows)
GAP_PITCHES = 1.0  # extra spacing of a slit-group gap, in pitches (rows 25..1010 for 112 fibers)


def windowed_centroid(values: np.ndarray, offsets: np.ndarray, sigma_w: float, n_iter: int = 8,
                      max_step: float = 0.5, tol: float = 1e-9
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian-windowed centroid along the last axis.

    ``values`` and ``offsets`` are (..., n): samples and their positions relative to the initial
    guess.  Solves ``sum w(r - s) (r - s) v = 0`` for ``s`` by at most ``n_iter`` Newton steps
    (clipped to ``max_step``; stops when all steps are below ``tol`` px).  Returns
    ``(s, windowed_flux, ok)``; NaN samples must be zeroed by the caller.

    The window is factorised, w(o - s) = w(o) exp(o s / sigma^2) exp(-s^2 / 2 sigma^2), so a
    step costs one exp and the moments sum(w v e o^k), k = 0, 1, 2.
    """
    inv_var = 1.0 / sigma_w**2
    o2 = offsets * offsets
    wv0 = np.exp(-0.5 * inv_var * o2) * values
    s = np.zeros(values.shape[:-1])

    def moments(s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """windowed flux, f(s) = sum w v r and f'(s) at s."""
        e = np.minimum(offsets * (inv_var * s)[..., None], 700.0)  # (wv0 ~ 0 where clipped)
        np.exp(e, out=e)
        e *= wv0
        m0 = e.sum(-1)
        m1 = np.einsum("...i,...i->...", e, offsets)
        m2 = np.einsum("...i,...i->...", e, o2)
        scale = np.exp(-0.5 * inv_var * s * s)
        flux = m0 * scale
        return flux, (m1 - s * m0) * scale, inv_var * (m2 - 2 * s * m1 + s * s * m0) * scale - flux

    for _ in range(n_iter):
        flux, f, fprime = moments(s)
        newton = fprime < 0
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.where(newton, -f / np.where(newton, fprime, 1.0),
                            2.0 * f / np.where(flux > 0, flux, 1.0))
        step = np.clip(np.nan_to_num(step), -max_step, max_step)
        s = s + step
        if np.all(np.abs(step) <= tol):
            break
    flux, _, fprime = moments(s)
    ok = (flux > 0) & (fprime < 0) & np.isfinite(s)
    return s, flux, ok


# --------------------------------------------------------------------------------------------
# chunk profiles and peaks
# --------------------------------------------------------------------------------------------


def find_peaks(profile: np.ndarray, pitch: float = PITCH_GUESS, rel_threshold: float = 0.25
               ) -> np.ndarray:
    """Sub-pixel rows of the fiber peaks of one cross-dispersion profile (sorted)."""
    prof = np.nan_to_num(profile, nan=np.nanmedian(profile))
    smooth = gaussian_filter1d(prof, 1.0)
    base = gaussian_filter1d(minimum_filter1d(smooth, int(3 * pitch) | 1), pitch)
    h = smooth - np.minimum(base, smooth)
    from scipy.signal import find_peaks  # here: importing scipy.signal costs ~1 s per process

    idx, _ = find_peaks(h)
    if idx.size == 0:
        return np.zeros(0)
    level = np.percentile(h[idx], 90)
    idx = idx[h[idx] > rel_threshold * level]
    # enforce a minimum separation: of two close maxima drop the lower one
    while idx.size > 1:
        close = np.flatnonzero(np.diff(idx) < 0.5 * pitch)
        if close.size == 0:
            break
        i = close[0]
        idx = np.delete(idx, i if h[idx[i]] < h[idx[i + 1]] else i + 1)
    idx = idx[(idx >= HALF_WINDOW) & (idx < prof.size - HALF_WINDOW)]
    rows = idx[:, None] + np.arange(-HALF_WINDOW, HALF_WINDOW + 1)
    vals = prof[rows] - base[idx][:, None]
    s, _, ok = windowed_centroid(vals, rows - idx[:, None].astype(float), 1.4)
    return np.sort(np.where(ok, idx + s, idx.astype(float)))


# --------------------------------------------------------------------------------------------
# peak -> fiber assignment
# --------------------------------------------------------------------------------------------
def _nearest_assign(peaks: np.ndarray, predicted: np.ndarray, tol: float) -> np.ndarray:
    """Index of the predicted fiber nearest to each peak (-1 if farther than ``tol``), unique."""
    order = np.argsort(predicted)
    ps = predicted[order]
    pos = np.clip(np.searchsorted(ps, peaks), 1, ps.size - 1)
    left, right = ps[pos - 1], ps[pos]
    pick = np.where(np.abs(peaks - left) <= np.abs(peaks - right), pos - 1, pos)
    fiber = order[pick]
    dist = np.abs(peaks - predicted[fiber])
    fiber = np.where(dist <= tol, fiber, -1)
    # uniqueness: keep the closest peak per fiber
    order = np.lexsort((dist, fiber))
    f_sorted = fiber[order]
    repeat = np.r_[False, f_sorted[1:] == f_sorted[:-1]] & (f_sorted >= 0)
    fiber[order[repeat]] = -1
    return fiber


def _pattern_design(k: np.ndarray, groups: tuple[int, ...]) -> np.ndarray:
    """Design matrix of the slit model: quadratic in fiber number plus an offset and a pitch change
    per gap (a quadratic in slit position with gaps)."""
    bounds = np.cumsum(groups)[:-1]
    u = k / 100.0
    cols = ([np.ones_like(u), u, u * u] + [(k >= b).astype(float) for b in bounds]
            + [(k >= b) * (k - b) / 100.0 for b in bounds])
    return np.stack(cols, axis=-1)


def assign_by_pattern(peaks: np.ndarray, n_fibers: int, groups: tuple[int, ...] = SLIT_GROUPS,
                      gap_pitches: float = GAP_PITCHES
                      ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Number peaks through the slit pattern.  Returns (fiber of each peak or -1, model rows of all
    fibers, qa).  Raises CalibrationError when no hypothesis explains the peaks.

    Hypotheses (gap size x index of the first peak) are refined by matching and a least-squares
    slit model; the cost counts unmatched peaks, the residual, unequal gaps and gaps far from
    ``gap_pitches`` (which resolves dead fibers next to a gap)."""
    if sum(groups) != n_fibers:
        raise CalibrationError(f"slit pattern {groups} does not have {n_fibers} fibers")
    spacing = np.diff(peaks)
    if spacing.size < 10:
        raise CalibrationError(f"only {peaks.size} fiber peaks found on the flat")
    pitch = np.median(spacing)
    pitch = np.median(spacing[spacing < 1.4 * pitch])
    # refine with the whole span (a median spacing biased by 0.5% drifts by a pitch over 112)
    pitch = (peaks[-1] - peaks[0]) / np.maximum(np.round(spacing / pitch), 1).sum()
    k_all = np.arange(n_fibers)
    bounds = np.cumsum(groups)[:-1]
    design_all = _pattern_design(k_all, groups)
    best: tuple[float, np.ndarray, np.ndarray, np.ndarray] | None = None
    for gap in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0):
        u_all = k_all + gap * (k_all[:, None] >= bounds).sum(1)
        for k0 in range(0, 5):
            pred = peaks[0] + pitch * (u_all - u_all[k0])
            fiber = _nearest_assign(peaks, pred, 0.45 * pitch)
            coef = None
            for _ in range(6):
                use = fiber >= 0
                if use.sum() < 8:
                    break
                coef, *_ = np.linalg.lstsq(design_all[fiber[use]], peaks[use], rcond=None)
                pred = design_all @ coef
                previous, fiber = fiber, _nearest_assign(peaks, pred, 0.3 * pitch)
                if np.array_equal(fiber, previous):  # fixed point: further rounds repeat it
                    break
            if coef is None or (fiber >= 0).sum() < 8:
                continue
            use = fiber >= 0
            res = peaks[use] - pred[fiber[use]]
            gaps = coef[3:3 + len(groups) - 1]
            cost = ((~use).sum() + np.sqrt(np.mean(res**2)) / pitch
                    + (np.ptp(gaps) / pitch if gaps.size > 1 else 0.0)
                    + 0.5 * np.abs(gaps / pitch - gap_pitches).sum())
            if best is None or cost < best[0]:
                best = (cost, fiber.copy(), pred.copy(), gaps.copy())
    if best is None:
        raise CalibrationError("fiber peaks on the flat do not follow the slit pattern")
    _, fiber, pred, gaps = best
    n_matched = int((fiber >= 0).sum())
    if n_matched < 0.8 * n_fibers or n_matched < peaks.size - 3:
        raise CalibrationError(
            f"cannot assign flat peaks to fibers: {n_matched} of {peaks.size} peaks match the "
            f"slit pattern of {n_fibers} fibers")
    if pred.min() < 2 or pred.max() > 1029:
        raise CalibrationError("slit-pattern fit puts fibers off the chip: peaks cannot be assigned")
    qa = {"assignment": "pattern", "pitch": float(pitch), "gap_offsets_px": [float(g) for g in gaps],
          "n_peaks": int(peaks.size), "n_matched": n_matched}
    return fiber, pred, qa


def assign_by_reference(peaks: np.ndarray, reference_y: np.ndarray, ref_dead: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Number peaks with the fiber-location reference (rows, dead flags); allows an offset and a
    small scale between reference and flat."""
    good = np.flatnonzero(~ref_dead)
    if good.size < 10:
        raise CalibrationError("fiber-location reference has fewer than 10 good fibers")
    pitch = np.median(np.diff(np.sort(reference_y[good])))
    # offset with the most peaks within 0.3 pitch of a good reference fiber (the comb is nearly
    # periodic: a whole-pitch shift loses only the fibers at group ends); ties -> smallest offset
    trial = np.arange(-3.0 * pitch, 3.0 * pitch + 0.05, 0.1)
    ref_sorted = np.sort(reference_y[good])
    shifted = peaks[None, :] - trial[:, None]
    pos = np.clip(np.searchsorted(ref_sorted, shifted), 1, ref_sorted.size - 1)
    near = np.minimum(np.abs(shifted - ref_sorted[pos - 1]), np.abs(shifted - ref_sorted[pos]))
    count = (near < 0.3 * pitch).sum(1) - 0.01 * np.abs(trial) / pitch
    offset = trial[np.argmax(count)]
    matched = near[np.argmax(count)] < 0.3 * pitch
    if matched.any():
        idx = np.clip(np.searchsorted(ref_sorted, peaks - offset), 1, ref_sorted.size - 1)
        lo, hi = ref_sorted[idx - 1], ref_sorted[idx]
        nearest = np.where(np.abs(peaks - offset - lo) < np.abs(peaks - offset - hi), lo, hi)
        offset = float(np.median((peaks - nearest)[matched]))
    pred = reference_y + offset
    fiber = _nearest_assign(peaks, pred, 0.35 * pitch)
    for _ in range(3):
        use = (fiber >= 0) & ~ref_dead[np.maximum(fiber, 0)]
        if use.sum() < 10:
            break
        design = np.stack([np.ones(use.sum()), reference_y[fiber[use]]], -1)
        coef, *_ = np.linalg.lstsq(design, peaks[use], rcond=None)
        pred = coef[0] + coef[1] * reference_y
        fiber = _nearest_assign(peaks, pred, 0.3 * pitch)
    fiber = np.where((fiber >= 0) & ref_dead[np.maximum(fiber, 0)], -1, fiber)
    n_matched = int((fiber >= 0).sum())
    if n_matched < 0.8 * good.size:
        raise CalibrationError(
            f"cannot assign flat peaks with the fiber-location reference: {n_matched} of "
            f"{good.size} good fibers matched")
    qa = {"assignment": "reference", "pitch": float(pitch), "reference_offset": float(offset),
          "n_peaks": int(peaks.size), "n_matched": n_matched}
    return fiber, pred, qa


# --------------------------------------------------------------------------------------------
# following fibers across chunks, empirical profile, deblending
# --------------------------------------------------------------------------------------------
