"""Joint fit of the seeing of every exposure, their relative throughputs, the DAR scale and the
star positions to the fiber fluxes of bright stars (:func:`fit_seeing`).

Model for fiber i of exposure e near star s in wavelength chunk c:
``d = A[s, c] * norm[e] * f_e(|p_i - (X_s + dar_c)|)`` with ``dar_c = k_par * DAR_c + k_perp *
rot90(DAR_c)`` and ``f_e`` the fiber-integrated Moffat of exposure e
(:func:`remedy_dask.observation.psf.fiber_integrated_moffat`).  The amplitudes ``A`` are
solved linearly inside the non-linear least-squares fit (variable projection).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, sparse

from remedy_dask.errors import CalibrationError
from remedy_dask.geometry import DEF_WAVE
from remedy_dask.observation.psf import (
    DEFAULT_BETA, collapse_chunks, dar_xy, fiber_fraction, fiber_quadrature_distances,
    good_pixels,
)


@dataclass
class SeeingFit:
    """Result of :func:`fit_seeing`; exposures in sorted order of the input exposure ids."""

    exposure_ids: np.ndarray
    fwhm: np.ndarray  # (n_exp,) arcsec
    beta: np.ndarray  # (n_exp,) Moffat beta (the input beta unless fitted)
    norm: np.ndarray  # (n_exp,) relative throughput, geometric mean 1
    dar_scale: tuple[float, float]  # (along the given DAR, perpendicular to it)
    star_x: np.ndarray  # fitted star positions (input frame), NaN if unused
    star_y: np.ndarray
    star_used: np.ndarray  # bool
    chi2: float  # reduced chi^2 of the accepted data
    n_stars: int
    success: bool
    message: str


@dataclass
class _StarData:
    """The fibers near the used stars, collapsed into wavelength chunks: ``used`` star indices,
    per row its star (``owner``, index into ``used``) and fiber (``fib``), chunk means ``d`` and
    inverse variances ``ivar0`` (0 where unusable)."""

    used: np.ndarray
    owner: np.ndarray
    fib: np.ndarray
    d: np.ndarray
    ivar0: np.ndarray


def _star_data(flux: np.ndarray, error: np.ndarray, good: np.ndarray, fiber_x: np.ndarray,
               fiber_y: np.ndarray, star_x: np.ndarray, star_y: np.ndarray, edges: np.ndarray,
               radius: float, min_separation: float, max_stars: int | None = None
               ) -> _StarData:
    """Isolated stars with at least 5 fibers within ``radius`` + 1" and 5 usable values per
    chunk, the ``max_stars`` brightest of them (summed chunk means) if more; CalibrationError
    if none."""
    n_chunks = len(edges) - 1
    sep = np.hypot(star_x[:, None] - star_x[None, :], star_y[:, None] - star_y[None, :])
    sep = np.where(np.isfinite(sep), sep, np.inf)
    np.fill_diagonal(sep, np.inf)
    isolated = sep.min(axis=1, initial=np.inf) >= min_separation
    rows, star_of, blocks_f, blocks_e = [], [], [], []
    for s in range(len(star_x)):
        if not isolated[s]:
            continue
        near = np.flatnonzero(np.hypot(fiber_x - star_x[s], fiber_y - star_y[s]) < radius + 1.0)
        if near.size < 5:
            continue
        f, e = collapse_chunks(flux[near], error[near], good[near], edges)
        if np.isfinite(f).sum() < 5 * n_chunks:
            continue
        rows.append(near)
        star_of.append(s)
        blocks_f.append(f)
        blocks_e.append(e)
    if not star_of:
        raise CalibrationError("fit_seeing: no star has enough unmasked fibers")
    if max_stars is not None and len(star_of) > max_stars:
        brightness = np.array([np.nansum(f) for f in blocks_f])
        keep = np.sort(np.argsort(-brightness, kind="stable")[:max_stars])
        rows, star_of = [rows[k] for k in keep], [star_of[k] for k in keep]
        blocks_f, blocks_e = [blocks_f[k] for k in keep], [blocks_e[k] for k in keep]
    d = np.concatenate(blocks_f)  # (n_rows, n_chunk)
    sig = np.concatenate(blocks_e)
    ok = np.isfinite(d) & np.isfinite(sig) & (sig > 0)
    return _StarData(np.array(star_of), np.concatenate([np.full(len(r), k)
                                                        for k, r in enumerate(rows)]),
                     np.concatenate(rows), np.where(ok, d, 0.0),
                     np.where(ok, 1.0 / np.where(ok, sig, 1.0) ** 2, 0.0))


class _SeeingModel:
    """The residuals of the joint fit as a function of the parameter vector
    ``[fwhm (n_exp), beta (n_exp), log norm (n_exp - 1), k_par, k_perp, star offsets (2 n)]``."""

    def __init__(self, data: _StarData, fx: np.ndarray, fy: np.ndarray, fe: np.ndarray,
                 star_x: np.ndarray, star_y: np.ndarray, dar_c: np.ndarray, n_exp: int,
                 radius: float, model_error: float) -> None:
        self.data, self.fx, self.fy, self.fe = data, fx, fy, fe
        self.sx0, self.sy0 = star_x[data.used][data.owner], star_y[data.used][data.owner]
        self.dar_c, self.perp = dar_c, np.vstack([-dar_c[1], dar_c[0]])
        self.n_exp, self.n_used, self.n_chunks = n_exp, len(data.used), dar_c.shape[1]
        self.n_glob = 2 * n_exp + (n_exp - 1) + 2
        self.r_grid = np.arange(0.0, radius + 4.0, 0.02)
        self.model_error = model_error
        self._tables: dict[tuple[float, float], np.ndarray] = {}
        self._quadrature = fiber_quadrature_distances(self.r_grid, n_radial=10, n_azimuth=32)
        # fixed data selection (a selection that moved with the parameters would make chi^2 jump)
        r0 = np.hypot(fx - self.sx0, fy - self.sy0)
        self.w = (r0 < radius)[:, None] & (data.ivar0 > 0)

    def unpack(self, p: np.ndarray) -> tuple[np.ndarray, ...]:
        n_exp = self.n_exp
        fwhm, betas = p[:n_exp], p[n_exp : 2 * n_exp]
        lognorm = np.concatenate([[0.0], p[2 * n_exp : 3 * n_exp - 1]])
        k = p[3 * n_exp - 1 : self.n_glob]
        pos = p[self.n_glob:].reshape(self.n_used, 2)
        return fwhm, betas, lognorm, k, pos

    def shape(self, p: np.ndarray) -> np.ndarray:
        fwhm, betas, lognorm, k, pos = self.unpack(p)
        owner = self.data.owner
        dc = k[0] * self.dar_c + k[1] * self.perp  # (2, n_chunk)
        sx = self.sx0 + pos[owner, 0]
        sy = self.sy0 + pos[owner, 1]
        dx = self.fx[:, None] - sx[:, None] - dc[0][None, :]
        dy = self.fy[:, None] - sy[:, None] - dc[1][None, :]
        r = np.hypot(dx, dy)
        shape = np.empty_like(r)
        for e in range(self.n_exp):
            sel = self.fe == e
            table = self.table(float(fwhm[e]), float(betas[e]))
            shape[sel] = np.exp(lognorm[e]) * np.interp(r[sel], self.r_grid, table, right=0.0)
        return shape

    def table(self, fwhm: float, beta: float) -> np.ndarray:
        """The fiber-integrated Moffat on ``r_grid``, kept for the parameters seen last: a
        finite-difference step moves one exposure's FWHM or beta (or none), so the others'
        tables are reused."""
        key = (fwhm, beta)
        if key not in self._tables:
            if len(self._tables) >= 4 * self.n_exp:
                self._tables.clear()
            self._tables[key] = fiber_fraction(*self._quadrature, fwhm, beta)
        return self._tables[key]

    def amplitudes(self, shape: np.ndarray) -> np.ndarray:
        owner, d, ivar0, w = self.data.owner, self.data.d, self.data.ivar0, self.w
        num = np.zeros((self.n_used, self.n_chunks))
        den = np.zeros((self.n_used, self.n_chunks))
        np.add.at(num, owner, np.where(w, shape * d * ivar0, 0.0))
        np.add.at(den, owner, np.where(w, shape**2 * ivar0, 0.0))
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)

    def residuals(self, p: np.ndarray) -> np.ndarray:
        d, ivar0, w = self.data.d, self.data.ivar0, self.w
        shape = self.shape(p)
        m = self.amplitudes(shape)[self.data.owner] * shape
        var = np.where(w, 1.0 / np.where(ivar0 > 0, ivar0, 1.0) + (self.model_error * m) ** 2, 1.0)
        return (np.where(w, (d - m) / np.sqrt(var), 0.0)).ravel()

    def jacobian_sparsity(self, free: np.ndarray) -> sparse.csr_matrix:
        """A star's position moves only its own rows; the global parameters move all."""
        res_owner = np.repeat(self.data.owner, self.n_chunks)
        jac = sparse.lil_matrix((self.data.d.size, free.size), dtype=int)
        jac[:, :self.n_glob] = 1
        for k in range(self.n_used):
            rr = np.flatnonzero(res_owner == k)
            jac[rr, self.n_glob + 2 * k] = 1
            jac[rr, self.n_glob + 2 * k + 1] = 1
        return jac.tocsr()[:, free]

    def worst_star(self, fun: np.ndarray, star_clip: float) -> int | None:
        """Index (into ``used``) of the star whose reduced chi^2 exceeds ``star_clip`` times the
        median star's, the worst of them; None if none does."""
        owner, n_used = self.data.owner, self.n_used
        fun = fun.reshape(-1, self.n_chunks)
        per_star = (np.bincount(owner, (fun**2).sum(axis=1), n_used)
                    / np.maximum(np.bincount(owner, self.w.sum(axis=1), n_used), 1))
        worst = int(np.argmax(per_star))
        return worst if per_star[worst] > star_clip * np.median(per_star) else None


def _start_and_bounds(n_exp: int, n_used: int, fwhm0: float, beta: float, fit_beta: bool,
                      beta_bounds: tuple[float, float], fit_dar: bool, fit_positions: bool
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Start, lower and upper bounds of the parameter vector, and which parameters are free."""
    n_glob = 2 * n_exp + (n_exp - 1) + 2
    beta0 = float(np.clip(beta, *beta_bounds)) if fit_beta else float(beta)
    p0 = np.concatenate([np.full(n_exp, fwhm0), np.full(n_exp, beta0), np.zeros(n_exp - 1),
                         [1.0, 0.0], np.zeros(2 * n_used)])
    lo = np.concatenate([np.full(n_exp, 0.6), np.full(n_exp, min(beta_bounds[0], beta0)),
                         np.full(n_exp - 1, -1.0), [0.0, -1.0], np.full(2 * n_used, -2.0)])
    hi = np.concatenate([np.full(n_exp, 5.0), np.full(n_exp, max(beta_bounds[1], beta0)),
                         np.full(n_exp - 1, 1.0), [2.0, 1.0], np.full(2 * n_used, 2.0)])
    free = np.ones(p0.size, dtype=bool)
    if not fit_beta:
        free[n_exp : 2 * n_exp] = False
    if not fit_dar:
        free[3 * n_exp - 1 : n_glob] = False
    if not fit_positions:
        free[n_glob:] = False
    return p0, lo, hi, free


def fit_seeing(
    flux: np.ndarray,
    error: np.ndarray,
    mask: np.ndarray | None,
    fiber_x: np.ndarray,
    fiber_y: np.ndarray,
    exposure: np.ndarray,
    star_x: np.ndarray,
    star_y: np.ndarray,
    wave: np.ndarray = DEF_WAVE,
    dar: np.ndarray | None = None,
    fwhm0: float = 1.8,
    beta: float = DEFAULT_BETA,
    n_chunks: int = 8,
    wave_range: tuple[float, float] = (3700.0, 5400.0),
    radius: float = 4.0,
    fit_dar: bool = True,
    fit_positions: bool = True,
    model_error: float = 0.03,
    min_separation: float = 5.0,
    fit_beta: bool = False,
    beta_bounds: tuple[float, float] = (1.5, 8.0),
    star_clip: float | None = None,
    max_stars: int | None = None,
) -> SeeingFit:
    """Fit the PSF FWHM per exposure, relative exposure throughputs, a DAR scale and the star
    positions (the model in the module docstring) to the fibers within ``radius`` of the stars.

    With ``fit_beta`` the Moffat beta of each exposure is free too (within ``beta_bounds``),
    else fixed at ``beta``.  ``model_error`` adds ``(model_error * model)^2`` to the variance.
    Stars closer than ``min_separation`` arcsec to another listed star are left out (a blend
    would widen the PSF).  With ``star_clip`` the stars whose reduced chi^2 exceeds
    ``star_clip`` times the median star's (blends, edge stars, artefacts) are dropped and the
    fit repeated until none is (at least two stars stay).  With ``max_stars`` only that many of
    the brightest usable stars enter (the cost grows with every star: 163 stars of a full focal
    plane took 54 s).  Raises :class:`CalibrationError` if no star has enough data.
    """
    flux = np.asarray(flux, dtype=float)
    error = np.asarray(error, dtype=float)
    wave = np.asarray(wave, dtype=float)
    fiber_x = np.asarray(fiber_x, dtype=float)
    fiber_y = np.asarray(fiber_y, dtype=float)
    star_x = np.atleast_1d(np.asarray(star_x, dtype=float))
    star_y = np.atleast_1d(np.asarray(star_y, dtype=float))
    exp_ids, exp_idx = np.unique(np.asarray(exposure), return_inverse=True)
    n_exp, n_star = len(exp_ids), len(star_x)
    dxy = dar_xy(dar, len(wave))
    inside = np.flatnonzero((wave >= wave_range[0]) & (wave <= wave_range[1]))
    if inside.size < n_chunks:
        raise CalibrationError("fit_seeing: wavelength range has too few pixels")
    edges = np.linspace(inside[0], inside[-1] + 1, n_chunks + 1).astype(int)
    dar_c = np.array([dxy[:, edges[c] : edges[c + 1]].mean(axis=1) for c in range(n_chunks)]).T

    data = _star_data(flux, error, good_pixels(flux, error, mask), fiber_x, fiber_y, star_x,
                      star_y, edges, radius, min_separation, max_stars)
    fib = data.fib
    model = _SeeingModel(data, fiber_x[fib], fiber_y[fib], exp_idx[fib], star_x, star_y, dar_c,
                         n_exp, radius, model_error)
    p0, lo, hi, free = _start_and_bounds(n_exp, model.n_used, fwhm0, beta, fit_beta,
                                         beta_bounds, fit_dar, fit_positions)

    def res_free(q: np.ndarray) -> np.ndarray:
        p = p0.copy()
        p[free] = q
        return model.residuals(p)

    sol = optimize.least_squares(
        res_free, p0[free], bounds=(lo[free], hi[free]),
        jac_sparsity=model.jacobian_sparsity(free), x_scale="jac", method="trf", max_nfev=200,
    )
    p = p0.copy()
    p[free] = sol.x
    fwhm, betas, lognorm, k, pos = model.unpack(p)
    lognorm = lognorm - lognorm.mean()
    chi2 = float(np.sum(sol.fun**2)
                 / max(model.w.sum() - sol.x.size - model.n_used * n_chunks, 1))
    worst = model.worst_star(sol.fun, star_clip) if star_clip is not None and \
        model.n_used > 2 else None
    if worst is not None:
        keep_x = star_x.copy()
        keep_x[data.used[worst]] = np.nan  # no fibers near a NaN position: the star is skipped
        return fit_seeing(flux, error, mask, fiber_x, fiber_y, exposure, keep_x, star_y, wave,
                          dar, fwhm0, beta, n_chunks, wave_range, radius, fit_dar,
                          fit_positions, model_error, min_separation, fit_beta,
                          beta_bounds, star_clip, max_stars)
    used = data.used
    sx = np.full(n_star, np.nan)
    sy = np.full(n_star, np.nan)
    sx[used] = star_x[used] + pos[:, 0]
    sy[used] = star_y[used] + pos[:, 1]
    used_mask = np.zeros(n_star, dtype=bool)
    used_mask[used] = True
    return SeeingFit(
        exposure_ids=exp_ids, fwhm=fwhm, beta=betas.copy(), norm=np.exp(lognorm),
        dar_scale=(float(k[0]), float(k[1])), star_x=sx, star_y=sy, star_used=used_mask,
        chi2=chi2, n_stars=model.n_used, success=bool(sol.success), message=str(sol.message),
    )
