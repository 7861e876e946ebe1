"""Joint fit of the seeing (PSF FWHM per exposure), the relative exposure throughputs, a DAR
scale and the star positions to the fiber fluxes of bright stars (:func:`fit_seeing`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import optimize, sparse

from remedy_dask.errors import CalibrationError
from remedy_dask.geometry import DEF_WAVE
from remedy_dask.observation.psf import DEFAULT_BETA, dar_xy, fiber_integrated_moffat, good_pixels


@dataclass
class SeeingFit:
    """Result of :func:`fit_seeing`; exposures in sorted order of the input exposure ids."""

    exposure_ids: np.ndarray
    fwhm: np.ndarray  # (n_exp,) arcsec
    norm: np.ndarray  # (n_exp,) relative throughput, geometric mean 1
    dar_scale: tuple[float, float]  # (along the given DAR, perpendicular to it)
    star_x: np.ndarray  # fitted star positions (input frame), NaN if unused
    star_y: np.ndarray
    star_used: np.ndarray  # bool
    chi2: float  # reduced chi^2 of the accepted data
    n_stars: int
    success: bool
    message: str


def _collapse_chunks(
    flux: np.ndarray, error: np.ndarray, good: np.ndarray, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean flux and its error per fiber in wavelength chunks (NaN if < half the pixels good)."""
    n_chunk = len(edges) - 1
    f = np.full((flux.shape[0], n_chunk), np.nan)
    e = np.full_like(f, np.nan)
    fz = np.where(good, flux, 0.0)
    vz = np.where(good, error**2, 0.0)
    for c in range(n_chunk):
        sl = slice(edges[c], edges[c + 1])
        n = good[:, sl].sum(axis=1)
        ok = n >= 0.5 * (edges[c + 1] - edges[c])
        f[ok, c] = fz[ok, sl].sum(axis=1) / n[ok]
        e[ok, c] = np.sqrt(vz[ok, sl].sum(axis=1)) / n[ok]
    return f, e


def _star_blocks(flux: np.ndarray, error: np.ndarray, good: np.ndarray, fiber_x: np.ndarray,
                 fiber_y: np.ndarray, star_x: np.ndarray, star_y: np.ndarray, edges: np.ndarray,
                 radius: float, min_separation: float
                 ) -> tuple[list[int], list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per usable star (isolated, enough good fibers): its star index, the fibers within
    ``radius + 1`` arcsec and their chunk-collapsed fluxes and errors."""
    n_chunks = len(edges) - 1
    star_of, rows, blocks_f, blocks_e = [], [], [], []
    sep = np.hypot(star_x[:, None] - star_x[None, :], star_y[:, None] - star_y[None, :])
    np.fill_diagonal(sep, np.inf)
    isolated = sep.min(axis=1, initial=np.inf) >= min_separation
    for s in range(len(star_x)):
        if not isolated[s]:
            continue
        near = np.flatnonzero(np.hypot(fiber_x - star_x[s], fiber_y - star_y[s]) < radius + 1.0)
        if near.size < 5:
            continue
        f, e = _collapse_chunks(flux[near], error[near], good[near], edges)
        if np.isfinite(f).sum() < 5 * n_chunks:
            continue
        rows.append(near)
        star_of.append(s)
        blocks_f.append(f)
        blocks_e.append(e)
    return star_of, rows, blocks_f, blocks_e


@dataclass
class _SeeingModel:
    """The fixed data of the seeing fit and its model.  Parameters ``p``: FWHM per exposure,
    log throughput of exposures 2.. (the first is 1), two DAR scales, (dx, dy) per star."""

    d: np.ndarray  # (n_rows, n_chunk) chunk fluxes of the fibers near the used stars
    ivar0: np.ndarray
    w: np.ndarray  # fixed data selection (a moving one would make chi^2 jump)
    fx: np.ndarray
    fy: np.ndarray
    fe: np.ndarray  # exposure index of each row
    owner: np.ndarray  # used-star index of each row
    star_x: np.ndarray  # (n_used,) first guesses
    star_y: np.ndarray
    dar_c: np.ndarray  # (2, n_chunk)
    n_exp: int
    beta: float
    model_error: float
    r_grid: np.ndarray

    @property
    def n_glob(self) -> int:
        return self.n_exp + (self.n_exp - 1) + 2

    def unpack(self, p: np.ndarray) -> tuple[np.ndarray, ...]:
        n_exp, n_glob = self.n_exp, self.n_glob
        fwhm = p[:n_exp]
        lognorm = np.concatenate([[0.0], p[n_exp : 2 * n_exp - 1]])
        k = p[2 * n_exp - 1 : n_glob]
        pos = p[n_glob:].reshape(len(self.star_x), 2)
        return fwhm, lognorm, k, pos

    def shape(self, p: np.ndarray) -> np.ndarray:
        """Fiber fraction x exposure throughput of every row and chunk."""
        fwhm, lognorm, k, pos = self.unpack(p)
        perp = np.vstack([-self.dar_c[1], self.dar_c[0]])
        dc = k[0] * self.dar_c + k[1] * perp  # (2, n_chunk)
        sx = self.star_x[self.owner] + pos[self.owner, 0]
        sy = self.star_y[self.owner] + pos[self.owner, 1]
        dx = self.fx[:, None] - sx[:, None] - dc[0][None, :]
        dy = self.fy[:, None] - sy[:, None] - dc[1][None, :]
        r = np.hypot(dx, dy)
        shape = np.empty_like(r)
        for e in range(self.n_exp):
            sel = self.fe == e
            table = fiber_integrated_moffat(
                fwhm[e], self.beta, self.r_grid, n_radial=10, n_azimuth=32
            ).fraction
            shape[sel] = np.exp(lognorm[e]) * np.interp(r[sel], self.r_grid, table, right=0.0)
        return shape

    def amplitudes(self, shape: np.ndarray) -> np.ndarray:
        """Best amplitude per star and chunk for this shape (the linear part of the fit)."""
        n_used, n_chunks = len(self.star_x), self.d.shape[1]
        num = np.zeros((n_used, n_chunks))
        den = np.zeros((n_used, n_chunks))
        np.add.at(num, self.owner, np.where(self.w, shape * self.d * self.ivar0, 0.0))
        np.add.at(den, self.owner, np.where(self.w, shape**2 * self.ivar0, 0.0))
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)

    def residuals(self, p: np.ndarray) -> np.ndarray:
        shape = self.shape(p)
        m = self.amplitudes(shape)[self.owner] * shape
        w, ivar0 = self.w, self.ivar0
        var = np.where(w, 1.0 / np.where(ivar0 > 0, ivar0, 1.0) + (self.model_error * m) ** 2,
                       1.0)
        return (np.where(w, (self.d - m) / np.sqrt(var), 0.0)).ravel()

    def jacobian_sparsity(self, free: np.ndarray) -> sparse.csr_matrix:
        """A star's position moves only its own rows."""
        n_used, n_glob, n_chunks = len(self.star_x), self.n_glob, self.d.shape[1]
        res_owner = np.repeat(self.owner, n_chunks)
        jac = sparse.lil_matrix((self.d.size, n_glob + 2 * n_used), dtype=int)
        jac[:, :n_glob] = 1
        for k in range(n_used):
            rr = np.flatnonzero(res_owner == k)
            jac[rr, n_glob + 2 * k] = 1
            jac[rr, n_glob + 2 * k + 1] = 1
        return jac.tocsr()[:, free]


def _start_and_bounds(n_exp: int, n_used: int, fwhm0: float) -> tuple[np.ndarray, ...]:
    p0 = np.concatenate(
        [np.full(n_exp, fwhm0), np.zeros(n_exp - 1), [1.0, 0.0], np.zeros(2 * n_used)]
    )
    lo = np.concatenate(
        [np.full(n_exp, 0.6), np.full(n_exp - 1, -1.0), [0.0, -1.0], np.full(2 * n_used, -2.0)]
    )
    hi = np.concatenate(
        [np.full(n_exp, 5.0), np.full(n_exp - 1, 1.0), [2.0, 1.0], np.full(2 * n_used, 2.0)]
    )
    return p0, lo, hi


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
) -> SeeingFit:
    """Jointly fit the PSF FWHM per exposure, relative exposure throughputs, a DAR scale and the
    star positions to the fiber fluxes of bright stars.

    Model for fiber i of exposure e near star s in wavelength chunk c:
    ``d = A[s, c] * norm[e] * f_e(|p_i - (X_s + dar_c)|)`` with ``dar_c = k_par * DAR_c + k_perp *
    rot90(DAR_c)``.  Amplitudes ``A`` are solved linearly inside the non-linear least-squares fit
    (variable projection).  ``model_error`` adds ``(model_error * model)^2`` to the variance.
    Stars closer than ``min_separation`` arcsec to another listed star are left out (a blend
    would widen the PSF).  Raises :class:`CalibrationError` if no star has enough data.
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

    star_of, rows, blocks_f, blocks_e = _star_blocks(
        flux, error, good_pixels(flux, error, mask), fiber_x, fiber_y, star_x, star_y, edges,
        radius, min_separation)
    if not star_of:
        raise CalibrationError("fit_seeing: no star has enough unmasked fibers")
    used = np.array(star_of)
    n_used = len(used)
    fib = np.concatenate(rows)
    owner = np.concatenate([np.full(len(r), k) for k, r in enumerate(rows)])
    d = np.concatenate(blocks_f)  # (n_rows, n_chunk)
    sig = np.concatenate(blocks_e)
    ok = np.isfinite(d) & np.isfinite(sig) & (sig > 0)
    d = np.where(ok, d, 0.0)
    ivar0 = np.where(ok, 1.0 / np.where(ok, sig, 1.0) ** 2, 0.0)
    fx, fy = fiber_x[fib], fiber_y[fib]
    r0 = np.hypot(fx - star_x[used][owner], fy - star_y[used][owner])
    model = _SeeingModel(d, ivar0, (r0 < radius)[:, None] & (ivar0 > 0), fx, fy, exp_idx[fib],
                         owner, star_x[used], star_y[used], dar_c, n_exp, beta, model_error,
                         np.arange(0.0, radius + 4.0, 0.02))
    p0, lo, hi = _start_and_bounds(n_exp, n_used, fwhm0)
    free = np.ones(p0.size, dtype=bool)
    if not fit_dar:
        free[2 * n_exp - 1 : model.n_glob] = False
    if not fit_positions:
        free[model.n_glob:] = False

    def res_free(q: np.ndarray) -> np.ndarray:
        p = p0.copy()
        p[free] = q
        return model.residuals(p)

    sol = optimize.least_squares(
        res_free, p0[free], bounds=(lo[free], hi[free]), jac_sparsity=model.jacobian_sparsity(free),
        x_scale="jac", method="trf", max_nfev=200,
    )
    p = p0.copy()
    p[free] = sol.x
    fwhm, lognorm, k, pos = model.unpack(p)
    lognorm = lognorm - lognorm.mean()
    chi2 = float(np.sum(sol.fun**2) / max(model.w.sum() - sol.x.size - n_used * n_chunks, 1))
    sx = np.full(n_star, np.nan)
    sy = np.full(n_star, np.nan)
    sx[used] = star_x[used] + pos[:, 0]
    sy[used] = star_y[used] + pos[:, 1]
    used_mask = np.zeros(n_star, dtype=bool)
    used_mask[used] = True
    return SeeingFit(
        exposure_ids=exp_ids, fwhm=fwhm, norm=np.exp(lognorm), dar_scale=(float(k[0]), float(k[1])),
        star_x=sx, star_y=sy, star_used=used_mask, chi2=chi2, n_stars=n_used,
        success=bool(sol.success), message=str(sol.message),
    )
