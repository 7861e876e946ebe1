"""Positions of stars fitted with a known PSF, neighbours fitted together (for the astrometry).

Fiber spectra are averaged in ``n_chunks`` wavelength chunks (:func:`psf.collapse_chunks`); a
group of stars closer than ``group_radius`` (:func:`deblend.source_groups`) is modelled as

    d_ic = sum_k A_kc f_e(i)(|p_i - (s_k + dar_c)|),

amplitudes ``A`` solved linearly for every trial of the positions ``s_k`` (variable projection),
positions by non-linear least squares within ``max_shift`` of the start, with a fractional
model error added to the variance as in :func:`seeing.fit_seeing`.  The 1-sigma position
errors come from the Jacobian, scaled up by the reduced chi^2 when that exceeds 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize

from remedy_dask.geometry import DEF_WAVE
from remedy_dask.observation.deblend import source_groups
from remedy_dask.observation.psf import RadialPSF, collapse_chunks, dar_xy, good_pixels


@dataclass
class StarPositions:
    """Fitted positions (input frame, arcsec) and their 1-sigma errors; NaN where not fitted."""

    x: np.ndarray
    y: np.ndarray
    error: np.ndarray  # per axis, arcsec


def _group_fit(f: np.ndarray, s: np.ndarray, fx: np.ndarray, fy: np.ndarray, fe: np.ndarray,
               x0: np.ndarray, y0: np.ndarray, free: np.ndarray, psfs: list[RadialPSF],
               dar_c: np.ndarray, max_shift: float, model_error: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of the ``free`` members of one group; (x, y, error) per member."""
    ok = np.isfinite(f) & np.isfinite(s) & (s > 0)
    d = np.where(ok, f, 0.0)
    iv = np.where(ok, 1.0 / np.where(ok, s, 1.0) ** 2, 0.0)
    n_src, n_chunk = x0.size, f.shape[1]
    idx = np.flatnonzero(free)

    def weights(p: np.ndarray) -> np.ndarray:
        sx, sy = x0.copy(), y0.copy()
        sx[idx] += p[0::2]
        sy[idx] += p[1::2]
        r = np.hypot(fx[None, :, None] - sx[:, None, None] - dar_c[0][None, None, :],
                     fy[None, :, None] - sy[:, None, None] - dar_c[1][None, None, :])
        w = np.zeros_like(r)
        for e, psf in enumerate(psfs):
            sel = fe == e
            w[:, sel] = psf.at_radius(r[:, sel])
        return w  # (n_src, n_fib, n_chunk)

    def residuals(p: np.ndarray) -> np.ndarray:
        w = weights(p)
        m = np.einsum("kic,lic,ic->ckl", w, w, iv) + 1e-12 * np.eye(n_src)[None]
        b = np.einsum("kic,ic->ck", w, d * iv)
        amp = np.linalg.solve(m, b[..., None])[..., 0]  # (n_chunk, n_src)
        model = np.einsum("ck,kic->ic", amp, w)
        var = np.where(ok, 1.0 / np.where(ok, iv, 1.0) + (model_error * model) ** 2, 1.0)
        return np.where(ok, (d - model) / np.sqrt(var), 0.0).ravel()

    sol = optimize.least_squares(residuals, np.zeros(2 * idx.size), method="trf",
                                 bounds=(-max_shift, max_shift), x_scale=0.1, max_nfev=100)
    dof = max(int(ok.sum()) - sol.x.size - n_src * n_chunk, 1)
    chi2 = float(np.sum(sol.fun**2) / dof)
    try:
        cov = np.linalg.inv(sol.jac.T @ sol.jac) * max(chi2, 1.0)
        err = np.sqrt(np.clip(np.diag(cov), 0, None)).reshape(-1, 2).max(axis=1)
    except np.linalg.LinAlgError:
        err = np.full(idx.size, np.nan)
    x, y, e = np.full(n_src, np.nan), np.full(n_src, np.nan), np.full(n_src, np.nan)
    x[idx], y[idx], e[idx] = x0[idx] + sol.x[0::2], y0[idx] + sol.x[1::2], err
    return x, y, e


def fit_star_positions(flux: np.ndarray, error: np.ndarray, mask: np.ndarray | None,
                       fiber_x: np.ndarray, fiber_y: np.ndarray, exposure: np.ndarray,
                       x0: np.ndarray, y0: np.ndarray, psfs: list[RadialPSF],
                       dar: np.ndarray | None = None, free: np.ndarray | None = None,
                       wave: np.ndarray = DEF_WAVE, n_chunks: int = 8,
                       wave_range: tuple[float, float] = (3700.0, 5400.0), radius: float = 4.0,
                       group_radius: float = 8.0, max_shift: float = 1.0,
                       model_error: float = 0.03) -> StarPositions:
    """Fit the positions of the stars ``free`` (default all) starting at ``(x0, y0)``; the other
    stars are fitted as neighbours with fixed positions.  ``psfs`` one per exposure
    (``exposure`` 0-based); fibers within ``radius`` of a group member enter its fit.
    ``model_error`` adds ``(model_error * model)^2`` to the variance (PSF model mismatch)."""
    x0, y0 = np.atleast_1d(x0).astype(float), np.atleast_1d(y0).astype(float)
    free = np.ones(x0.size, bool) if free is None else np.asarray(free, bool)
    fiber_x, fiber_y = np.asarray(fiber_x, float), np.asarray(fiber_y, float)
    exposure = np.asarray(exposure)
    wave = np.asarray(wave, float)
    inside = np.flatnonzero((wave >= wave_range[0]) & (wave <= wave_range[1]))
    edges = np.linspace(inside[0], inside[-1] + 1, n_chunks + 1).astype(int)
    dxy = dar_xy(dar, wave.size)
    dar_c = np.array([dxy[:, edges[c]:edges[c + 1]].mean(axis=1) for c in range(n_chunks)]).T
    f, s = collapse_chunks(np.asarray(flux, float), np.asarray(error, float),
                            good_pixels(flux, error, mask), edges)
    out = StarPositions(np.full(x0.size, np.nan), np.full(x0.size, np.nan),
                        np.full(x0.size, np.nan))
    labels = source_groups(x0, y0, group_radius)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if not free[members].any():
            continue
        near = np.zeros(fiber_x.size, bool)
        for k in members:
            near |= np.hypot(fiber_x - x0[k], fiber_y - y0[k]) < radius
        if near.sum() < 5 * members.size:
            continue
        x, y, e = _group_fit(f[near], s[near], fiber_x[near], fiber_y[near], exposure[near],
                             x0[members], y0[members], free[members], psfs, dar_c, max_shift,
                             model_error)
        out.x[members], out.y[members], out.error[members] = x, y, e
    return out
