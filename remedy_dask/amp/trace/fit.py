"""Fiber trace: the row of every fiber's centre at every column of an oriented amp image.

Method (``fit_trace``), on a master flat:

1. Collapse the image into column chunks (robust mean over ~24 columns per row).
2. Find the fiber peaks of the central chunk and number them: by the fiber-location reference
   when given, else by the slit pattern (three groups of 37/38/37 fibers, ~8.7 px pitch, gaps of
   ~2 pitches).  Missing (dead) fibers are placed by the reference / the pattern.
3. Follow every fiber outwards from the central chunk (every third chunk in turn, then the
   chunks between from the interpolated positions) with a Gaussian-*windowed* centroid (the
   root of ``sum w(y - c) (y - c) d(y)``).  For a symmetric, well-sampled profile this
   estimator has no pixel-phase bias (the 3-point parabola of Remedy has several 0.01 px).
4. Measure an empirical, symmetric, oversampled profile (wings included) jointly with a smooth
   background, and remove the neighbours' wings and the background from each fiber's window
   before re-centroiding (deblending): the one-sided wings of group-edge fibers would otherwise
   bias them by ~0.01 px.  The same fiber model, refitted at the final trace, gives the
   extraction's profile (:func:`remedy_dask.amp.profile.model.profile_from_fiber_fit`).
5. Fit each fiber along the columns with a robust Legendre polynomial; the orders >= 2 are
   regularised across fibers (smooth in fiber row), each fiber keeps its own offset and slope.

~0.15 s per amp on one core (the fiber model of step 4 is banded, see
:mod:`remedy_dask.amp.profile.fibermodel`).  ``measure_trace_shift`` (:mod:`remedy_dask.amp.trace.shift`,
re-exported here) measures the global cross-dispersion offset of a science frame relative to the
calibration trace with the same windowed estimator on the unbinned pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from numpy.polynomial import legendre

from remedy_dask.errors import CalibrationError
from remedy_dask.amp.profile.fibermodel import (
    PROFILE_NODES, BackgroundBasis, FiberFit, FiberWindows, fit_amplitudes_and_background, fit_profile_and_background, initial_profile, profile_eval, profile_integral, width_derivative, window_image,
)
from remedy_dask.amp.profile.chunks import chunk_positions, chunk_profiles
from remedy_dask.amp.profile.model import ProfileModel, profile_from_fiber_fit
from remedy_dask.amp.trace.assign import (
    GAP_PITCHES, SLIT_GROUPS, assign_by_pattern, assign_by_reference, find_peaks,
    windowed_centroid,
)
from remedy_dask.amp.trace.shift import HALF_WINDOW
from remedy_dask.numeric.robust import MAD_TO_SIGMA, nan_mad_sigma



@dataclass
class TraceResult:
    """Trace of one amp: ``trace`` (n_fibers, n_cols) rows, ``dead`` (n_fibers,), ``rms`` (px),
    ``profile``: the fiber profile of the extraction, tabulated from the fiber model that
    deblended the trace; ``table``: that model's shared profile at |r| = ``PROFILE_NODES``
    (unit integral, wings included)."""

    trace: np.ndarray
    dead: np.ndarray
    rms: np.ndarray
    profile: ProfileModel
    table: np.ndarray
    qa: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# windowed centroid
# --------------------------------------------------------------------------------------------
def _centroid(profiles: np.ndarray, pos: np.ndarray, sigma_w: float,
              subtract: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windowed centroids of every fiber of every chunk near ``pos`` (n_chunks, n_fib): rows
    within HALF_WINDOW of the rounded position, re-gathered once around the new position
    where that moved the window (or the first solution failed).  ``subtract(chunk, fiber,
    rows)`` gives light to remove from the gathered values.  Returns (pos, flux, ok)."""
    n_chunks, n_rows = profiles.shape
    chunk = np.repeat(np.arange(n_chunks), pos.shape[1])
    fiber = np.tile(np.arange(pos.shape[1]), n_chunks)
    p = pos.astype(float).ravel()
    flux, last_step = np.zeros(p.size), np.zeros(p.size)
    ok, window_ok = np.zeros(p.size, dtype=bool), np.zeros(p.size, dtype=bool)
    todo = np.arange(p.size)
    for pass_ in range(2):
        centre = np.round(np.nan_to_num(p[todo])).astype(np.intp)
        rows = np.clip(centre[:, None] + np.arange(-HALF_WINDOW, HALF_WINDOW + 1), 0, n_rows - 1)
        vals = profiles[chunk[todo, None], rows]
        finite = np.isfinite(vals)
        vals = np.where(finite, vals, 0.0)
        if subtract is not None:
            vals -= subtract(chunk[todo], fiber[todo], rows)
        s, f, good = windowed_centroid(vals, rows - p[todo, None], sigma_w)
        p[todo] += s
        flux[todo], ok[todo], last_step[todo] = f, good, s
        window_ok[todo] = np.all(finite | (np.abs(rows - p[todo, None]) > 3.5 * sigma_w), axis=-1)
        if pass_ == 0:  # same window again would give the same root (a step of ~0)
            again = (np.round(np.nan_to_num(p[todo])) != centre) | ~good
            last_step[todo[~again]] = 0.0
            todo = todo[again]
            if todo.size == 0:
                break
    ok &= window_ok & (np.abs(last_step) < 0.5)
    return p.reshape(pos.shape), flux.reshape(pos.shape), ok.reshape(pos.shape)


def _track(profiles: np.ndarray, start: np.ndarray, live: np.ndarray, sigma_w: float,
           stride: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Follow the fibers from the central chunk outwards, every ``stride``-th chunk in turn
    (both directions in step), then centroid the chunks in between at once from the
    interpolated positions.  Returns pos, flux, ok (n_chunks, n_fib)."""
    n_chunks = profiles.shape[0]
    jc = n_chunks // 2
    pos = np.full((n_chunks, start.size), np.nan)
    flux = np.zeros_like(pos)
    ok = np.zeros(pos.shape, dtype=bool)

    def solve(js: np.ndarray, guess: np.ndarray) -> None:
        c, f, good = _centroid(profiles[js], guess, sigma_w)
        good &= live & (np.abs(c - guess) < 1.0)
        pos[js] = np.where(good, c, guess)
        flux[js] = f
        ok[js] = good

    for dist in range(0, max(jc, n_chunks - 1 - jc) + 1, stride):
        js = np.array(sorted({j for j in (jc - dist, jc + dist) if 0 <= j < n_chunks}))
        if dist == 0:
            solve(js, start[None, :])
            continue
        step = stride * np.sign(js - jc)
        prev = pos[js - step]
        back = np.clip(js - 2 * step, 0, n_chunks - 1)
        solve(js, prev if dist < 2 * stride else prev + np.clip(prev - pos[back], -0.5, 0.5))
    done = np.flatnonzero(np.isfinite(pos[:, 0]))
    rest = np.setdiff1d(np.arange(n_chunks), done)
    if rest.size:
        guess = np.stack([np.interp(rest, done, pos[done, k]) for k in range(start.size)], -1)
        solve(rest, guess)
    return pos, flux, ok


def _deblend(profiles: np.ndarray, pos: np.ndarray, fibers: FiberFit, live: np.ndarray,
             table: np.ndarray, sigma_w: float) -> tuple[np.ndarray, np.ndarray]:
    """Re-centroid every fiber after removing the background and the light (profile and width
    term) of the other live fibers from its window: the model of all of them minus its own.
    Returns (pos, ok)."""
    n_rows = profiles.shape[1]
    q_table = width_derivative(table)
    a_live = np.where(live, fibers.amp, 0.0)
    c_live = np.where(live, fibers.width, 0.0)
    win = FiberWindows.around(pos, np.ones(profiles.shape, dtype=bool))
    model = fibers.chunk_background + window_image(
        win, a_live[..., None] * profile_eval(table, win.r)
        + c_live[..., None] * profile_eval(q_table, win.r), n_rows)
    def contamination(chunk: np.ndarray, fiber: np.ndarray, rows: np.ndarray) -> np.ndarray:
        r = rows - pos[chunk, fiber][:, None]
        return (model[chunk[:, None], rows] - a_live[chunk, fiber, None] * profile_eval(table, r)
                - c_live[chunk, fiber, None] * profile_eval(q_table, r))

    new_pos, _, ok = _centroid(profiles, pos, sigma_w, subtract=contamination)
    return new_pos, ok & live[None, :]


# --------------------------------------------------------------------------------------------
# smooth fit along columns, regularised across fibers
# --------------------------------------------------------------------------------------------
def _batched_wls(design: np.ndarray, weight: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Weighted least squares per fiber: design (n, m), weight/values (n, n_fib) -> (n_fib, m)."""
    normal = np.einsum("jm,jk,jn->kmn", design, weight, design)
    rhs = np.einsum("jm,jk->km", design, weight * np.nan_to_num(values))
    normal += 1e-12 * np.eye(design.shape[1])
    return np.linalg.solve(normal, rhs[..., None])[..., 0]


def _robust_sigma(res: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """1.4826 MAD of the weighted-in residuals of every column (NaN for empty columns)."""
    used = weight > 0
    empty = ~used.any(0)
    r = np.where(used, res, np.nan)
    r[:, empty] = 0.0
    sig = nan_mad_sigma(r, axis=0)
    return np.where(empty, np.nan, sig)


def fit_along_columns(pos: np.ndarray, ok: np.ndarray, centres: np.ndarray, n_cols: int,
                      degree: int, fiber_rows: np.ndarray, live: np.ndarray,
                      free_orders: int = 2, cross_degree: int = 3
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Robust Legendre fit of each fiber's chunk positions.

    Orders >= ``free_orders`` are replaced by a robust polynomial (degree ``cross_degree``) in
    the fiber's row across the live fibers; the lower orders stay free per fiber.
    Returns (coef (n_fib, degree + 1), rms (n_fib,), weights used (n_chunks, n_fib)).
    """
    design = legendre.legvander(2.0 * centres / (n_cols - 1) - 1.0, degree)
    weight = (ok & live[None, :]).astype(float)
    for _ in range(4):
        coef = _batched_wls(design, weight, pos)
        res = pos - design @ coef.T
        sig = np.maximum(_robust_sigma(res, weight), 0.002)
        weight = (ok & live[None, :] & (np.abs(res) < 4.0 * sig[None, :])).astype(float)
    if free_orders <= degree and live.sum() > 3 * (cross_degree + 1):
        yu = (fiber_rows - fiber_rows.mean()) / max(np.ptp(fiber_rows), 1.0) * 2.0
        cross = legendre.legvander(yu, cross_degree)
        use = live.copy()
        smooth = np.zeros_like(coef[:, free_orders:])
        for _ in range(3):
            sol, *_ = np.linalg.lstsq(cross[use], coef[use, free_orders:], rcond=None)
            smooth = cross @ sol
            dev = np.abs(coef[:, free_orders:] - smooth)
            scale = MAD_TO_SIGMA * np.median(dev[live], 0) + 1e-6
            use = live & np.all(dev < 5.0 * scale, axis=1)
        target = pos - design[:, free_orders:] @ smooth.T
        low = _batched_wls(design[:, :free_orders], weight, target)
        coef = np.hstack([low, smooth])
    res = pos - design @ coef.T
    rms = _robust_sigma(res, weight)
    return coef, rms, weight


# --------------------------------------------------------------------------------------------
# public kernels
# --------------------------------------------------------------------------------------------
def _half_width(table: np.ndarray) -> float:
    """Half width at half maximum (px) of a tabulated symmetric profile."""
    below = np.flatnonzero(table < 0.5 * table[0])
    if below.size == 0 or below[0] == 0:
        return float("nan")
    i = below[0]
    frac = (table[i - 1] - 0.5 * table[0]) / (table[i - 1] - table[i])
    return float(PROFILE_NODES[i - 1] + frac * (PROFILE_NODES[i] - PROFILE_NODES[i - 1]))


def fit_trace(master_flat: np.ndarray, variance: np.ndarray | None = None,
              mask: np.ndarray | None = None, n_fibers: int = 112,
              reference_y: np.ndarray | None = None, dead: np.ndarray | None = None, *,
              n_chunks: int = 43, degree: int = 4, groups: tuple[int, ...] = SLIT_GROUPS,
              gap_pitches: float = GAP_PITCHES, dead_threshold: float = 0.15,
              n_deblend: int = 2, n_profile: int = 2, relax: float = 1.3) -> TraceResult:
    """Trace the fibers of a master flat (electrons, scattered light may still be in).

    ``reference_y``/``dead`` come from the optional fiber-location file; without them peaks are
    numbered through the slit pattern ``groups``.  Fibers with less than ``dead_threshold`` of
    their neighbours' flux are flagged dead and placed by the pattern / reference.
    Raises CalibrationError when the peaks cannot be assigned or the fit fails.
    """
    image = np.asarray(master_flat, dtype=float)
    if image.ndim != 2:
        raise CalibrationError(f"master flat must be 2-D, got shape {image.shape}")
    n_rows, n_cols = image.shape
    if not np.isfinite(image).any() or np.nanmax(image) <= 0:
        raise CalibrationError("master flat is empty: no fiber light to trace")
    profiles, centres = chunk_profiles(image, variance, mask, n_chunks)
    jc = n_chunks // 2
    peaks = find_peaks(profiles[jc])
    fiber, pred, qa = _assign(peaks, n_fibers, reference_y, dead, groups, gap_pitches)
    found = fiber >= 0
    start = pred.copy()
    start[fiber[found]] = peaks[found]
    live = np.zeros(n_fibers, dtype=bool)
    live[fiber[found]] = True

    sigma_w = 1.4
    pos, amp, ok = _track(profiles, start, live, sigma_w)
    level = np.median(np.where(ok, amp, -np.inf), axis=0)  # -inf for fibers never found
    ref_level = np.nanmedian(level[live]) if live.any() else 0.0
    faint = ~(level > dead_threshold * ref_level)
    live &= ~faint
    if live.sum() < 0.8 * n_fibers:
        raise CalibrationError(f"only {live.sum()} of {n_fibers} fibers carry light on the flat")

    before = pos.copy()
    pos, ok, table, sigma_w, basis = _refine_positions(profiles, centres, n_cols, pos, ok, live,
                                                       sigma_w, n_profile, n_deblend, relax)
    deblend_shift = np.abs(pos - before)[ok]

    coef, rms, weight = fit_along_columns(pos, ok, centres, n_cols, degree, pos[jc], live)
    coef = _place_dead(coef, live, pred, centres[jc], n_cols, degree)
    trace = coef @ legendre.legvander(2.0 * np.arange(n_cols) / (n_cols - 1) - 1.0, degree).T
    if not np.all(np.isfinite(trace)) or trace.min() < 0 or trace.max() > n_rows - 1:
        raise CalibrationError("trace fit failed: non-finite or off-chip fiber positions")
    # the width terms at the final trace, with the final profile: the extraction's tables
    fibers = fit_amplitudes_and_background(profiles, chunk_positions(trace, n_chunks), table,
                                           centres, n_cols, basis)
    profile = profile_from_fiber_fit(table, fibers, live, centres, n_cols)
    dead_out = ~live
    rms = np.where(live, rms, np.nan)
    qa.update(n_chunks=n_chunks, degree=degree, sigma_window=sigma_w,
              profile_fwhm=2.0 * _half_width(table),
              n_dead=int(dead_out.sum()), dead_fibers=",".join(map(str, np.flatnonzero(dead_out))),
              rms_median=float(np.nanmedian(rms)), rms_max=float(np.nanmax(rms)),
              rejected_chunk_fraction=float(1.0 - weight[:, live].mean()),
              deblend_shift_max=float(deblend_shift.max()) if deblend_shift.size else 0.0)
    return TraceResult(trace=trace, dead=dead_out, rms=rms, profile=profile, table=table, qa=qa)


def _assign(peaks: np.ndarray, n_fibers: int, reference_y: np.ndarray | None,
            dead: np.ndarray | None, groups: tuple[int, ...], gap_pitches: float
            ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Fiber of each peak, predicted rows of all fibers and QA: by the fiber-location
    reference if given, else by the slit pattern."""
    if reference_y is None:
        return assign_by_pattern(peaks, n_fibers, groups, gap_pitches)
    ref = np.asarray(reference_y, dtype=float)
    if ref.size != n_fibers:
        raise CalibrationError(f"fiber-location reference has {ref.size} fibers, expected {n_fibers}")
    ref_dead = np.zeros(n_fibers, bool) if dead is None else np.asarray(dead, dtype=bool)
    return assign_by_reference(peaks, ref, ref_dead)


def _refine_positions(profiles: np.ndarray, centres: np.ndarray, n_cols: int, pos: np.ndarray,
                      ok: np.ndarray, live: np.ndarray, sigma_w: float, n_profile: int,
                      n_deblend: int, relax: float
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, BackgroundBasis]:
    """Empirical profile + background + amplitudes, alternated with deblended centroids; the
    profile update is over-relaxed (the wing/background trade-off converges slowly otherwise).
    Returns positions, their validity, the profile table, the centroid window sigma and the
    background basis of the chunk cross-sections."""
    table = initial_profile()
    basis = BackgroundBasis.build(profiles, centres, n_cols)
    fibers = fit_amplitudes_and_background(profiles, pos, table, centres, n_cols, basis)
    for round_ in range(n_profile):
        last = round_ == n_profile - 1
        sel = ok & live[None, :] & (fibers.amp > 0.05 * np.median(fibers.amp[:, live]))
        new = fit_profile_and_background(profiles, pos, fibers, table, sel, centres, n_cols, basis)
        table = table + relax * (new - table)
        table = table / profile_integral(table)
        hwhm = _half_width(table)
        if np.isfinite(hwhm):
            sigma_w = float(np.clip(hwhm / 1.1774, 0.8, 2.5))
        if round_ < n_deblend or not last:  # (the fibers of the last round are not used)
            fibers = fit_amplitudes_and_background(profiles, pos, table, centres, n_cols, basis)
        if round_ < n_deblend:
            pos, ok = _deblend(profiles, pos, fibers, live, table, sigma_w)
            if not last:
                fibers = fit_amplitudes_and_background(profiles, pos, table, centres, n_cols,
                                                       basis)
    return pos, ok, table, sigma_w, basis


def _place_dead(coef: np.ndarray, live: np.ndarray, pred: np.ndarray, x_centre: float, n_cols: int,
                degree: int) -> np.ndarray:
    """Coefficients of dead fibers: shape terms interpolated from live neighbours, position at the
    central column from the pattern / reference plus the neighbours' offset from it."""
    if live.all():
        return coef
    k = np.arange(coef.shape[0])
    coef = coef.copy()
    for m in range(1, degree + 1):
        coef[~live, m] = np.interp(k[~live], k[live], coef[live, m])
    basis = legendre.legvander(np.array([2.0 * x_centre / (n_cols - 1) - 1.0]), degree)[0]
    at_centre = coef @ basis
    offset = np.interp(k[~live], k[live], at_centre[live] - pred[live])
    target = pred[~live] + offset
    coef[~live, 0] = target - coef[~live, 1:] @ basis[1:]
    return coef
