"""Point-spread function of VIRUS fibers on the sky: a fiber-integrated Moffat profile.

The PSF of a point source is a circular Moffat profile (unit integral over the plane).  A fiber of
diameter ``FIBER_DIAMETER`` centred at distance ``r`` from the source collects the fraction
``f(r) = integral of the Moffat over the fiber disc`` of the source's total flux.  Because the PSF
is circular, ``f`` depends on ``r`` only and is tabulated once on a radial grid
(:class:`RadialPSF`); evaluating it at any fiber offset is a ``np.interp``.  Since ``integral f(r) d^2r = pi R^2`` (the
fiber area), the fiber fractions of a dense fiber grid with one fiber per area ``a`` sum to
``pi R^2 / a``; for a fiber pattern that tiles the sky with the fiber area (``a = pi R^2``) they sum
to exactly 1.  With fiber fractions as weights an optimal (Horne) extraction returns the *total*
source flux.

Sign convention of differential atmospheric refraction (DAR) everywhere in this package: ``dar`` is
the apparent offset of a source at each wavelength, so a source at ``(x0, y0)`` is seen at
``(x0 + dar_x(lambda), y0 + dar_y(lambda))`` (Remedy: "effective fiber position = nominal - ADR").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import optimize, sparse

from remedy_dask.errors import CalibrationError
from remedy_dask.geometry import DEF_WAVE, FIBER_DIAMETER

DEFAULT_BETA = 3.5


def moffat_alpha(fwhm: float, beta: float = DEFAULT_BETA) -> float:
    """Moffat core width alpha (arcsec) of a profile with this FWHM."""
    return fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def moffat_enclosed(r: np.ndarray, fwhm: float, beta: float = DEFAULT_BETA) -> np.ndarray:
    """Fraction of a Moffat's flux within radius ``r`` of its centre."""
    alpha = moffat_alpha(fwhm, beta)
    return 1.0 - (1.0 + (np.asarray(r) / alpha) ** 2) ** (1.0 - beta)


@dataclass(frozen=True, eq=False)
class RadialPSF:
    """Fiber-integrated PSF tabulated on a radial grid.

    ``fraction[j]`` is the fraction of a point source's total flux that enters a fiber whose centre
    lies ``r[j]`` arcsec from the source.  Beyond ``r[-1]`` the fraction is 0.
    """

    fwhm: float
    beta: float
    fiber_diameter: float
    r: np.ndarray = field(repr=False)
    fraction: np.ndarray = field(repr=False)

    @property
    def r_max(self) -> float:
        return float(self.r[-1])

    def at_radius(self, r: np.ndarray) -> np.ndarray:
        """Fiber fraction at distance ``r`` (arcsec) between fiber centre and source."""
        return np.interp(r, self.r, self.fraction, right=0.0)

    def __call__(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """Fiber fraction of fibers offset by ``(dx, dy)`` arcsec from the source."""
        return self.at_radius(np.hypot(dx, dy))


def fiber_integrated_moffat(
    fwhm: float,
    beta: float = DEFAULT_BETA,
    r_grid: np.ndarray | None = None,
    fiber_diameter: float = FIBER_DIAMETER,
    n_radial: int = 16,
    n_azimuth: int = 48,
) -> RadialPSF:
    """Tabulate the fraction of a Moffat source's flux collected by a fiber at distance r.

    ``f(r) = int_0^R rho drho int_0^2pi P(|r e_x + rho (cos phi, sin phi)|) dphi`` with
    Gauss-Legendre nodes in ``rho^2`` and the (spectrally accurate, periodic) trapezoid rule in
    ``phi``.
    Default grid: 0 to max(10", 5 FWHM) in 0.02" steps.
    """
    if not (np.isfinite(fwhm) and fwhm > 0):
        raise CalibrationError(f"PSF FWHM must be positive and finite, got {fwhm}")
    if beta <= 1.0:
        raise CalibrationError(f"Moffat beta must exceed 1, got {beta}")
    if r_grid is None:
        r_grid = np.arange(0.0, max(10.0, 5.0 * fwhm) + 1e-9, 0.02)
    r_grid = np.asarray(r_grid, dtype=float)
    radius = fiber_diameter / 2.0
    u, wu = np.polynomial.legendre.leggauss(n_radial)
    rho2 = (u + 1.0) * radius**2 / 2.0  # nodes in rho^2 on [0, R^2]
    w_rho = wu * radius**2 / 4.0  # d(rho^2)/2 = rho drho; Jacobian R^2/2 of the map, times 1/2
    rho = np.sqrt(rho2)
    phi = (np.arange(n_azimuth) + 0.5) * (2.0 * np.pi / n_azimuth)
    # squared distance from the source of each quadrature point of a fiber at distance r
    px = rho[:, None] * np.cos(phi)[None, :]
    py = rho[:, None] * np.sin(phi)[None, :]
    d2 = (r_grid[:, None, None] + px[None]) ** 2 + py[None] ** 2
    alpha = moffat_alpha(fwhm, beta)
    dens = (beta - 1.0) / (np.pi * alpha**2) * (1.0 + d2 / alpha**2) ** (-beta)
    fraction = np.einsum("rij,i->r", dens, w_rho) * (2.0 * np.pi / n_azimuth)
    return RadialPSF(float(fwhm), float(beta), float(fiber_diameter), r_grid, fraction)


PSFLike = RadialPSF | Sequence[RadialPSF]


def evaluate_psf(
    psf: PSFLike, dx: np.ndarray, dy: np.ndarray, exposure: np.ndarray | None = None
) -> np.ndarray:
    """Fiber fractions at offsets ``(dx, dy)`` (shape (n_fiber, ...)).

    ``psf`` is one :class:`RadialPSF` or one per exposure; then ``exposure`` (n_fiber,) holds
    0-based indices into that sequence.
    """
    if isinstance(psf, RadialPSF):
        return psf(dx, dy)
    if exposure is None:
        raise ValueError("a per-exposure PSF needs the fibers' exposure indices")
    r = np.hypot(dx, dy)
    out = np.zeros(np.broadcast(dx, dy).shape)
    exposure = np.asarray(exposure)
    for e, p in enumerate(psf):
        sel = exposure == e
        if np.any(sel):
            out[sel] = p.at_radius(r[sel])
    return out


def dar_xy(dar: np.ndarray | None, n_wave: int) -> np.ndarray:
    """Normalise a DAR argument to a (2, n_wave) array of (dx, dy) arcsec.

    ``None`` means no DAR; a 1-D array is an offset along x only (the HET convention).
    """
    if dar is None:
        return np.zeros((2, n_wave))
    dar = np.asarray(dar, dtype=float)
    if dar.ndim == 1:
        if dar.shape[0] != n_wave:
            raise ValueError(f"dar has {dar.shape[0]} wavelengths, expected {n_wave}")
        return np.vstack([dar, np.zeros_like(dar)])
    if dar.shape != (2, n_wave):
        raise ValueError(f"dar must be ({n_wave},) or (2, {n_wave}), got {dar.shape}")
    return dar


def good_pixels(flux: np.ndarray, error: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """True where a spectral pixel is usable: unmasked, finite, positive error."""
    good = np.isfinite(flux) & np.isfinite(error) & (error > 0)
    if mask is not None:
        good &= ~np.asarray(mask, dtype=bool)
    return good


# --- joint seeing / DAR / exposure normalisation fit ----------------------------------------


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
) -> SeeingFit:
    """Jointly fit the PSF FWHM per exposure, relative exposure throughputs, a DAR scale and the
    star positions to the fiber fluxes of bright stars.

    Model for fiber i of exposure e near star s in wavelength chunk c:
    ``d = A[s, c] * norm[e] * f_e(|p_i - (X_s + dar_c)|)`` with ``dar_c = k_par * DAR_c + k_perp *
    rot90(DAR_c)``.  Amplitudes ``A`` are solved linearly inside the non-linear least-squares fit
    (variable projection).  With ``fit_beta`` the Moffat beta of each exposure is free too
    (within ``beta_bounds``), else fixed at ``beta``.  ``model_error`` adds ``(model_error * model)^2`` to the variance.
    Stars closer than ``min_separation`` arcsec to another listed star are left out (a blend
    would widen the PSF).  With ``star_clip`` the stars whose reduced chi^2 exceeds ``star_clip``
    times the median star's (blends, edge stars, artefacts) are dropped and the fit repeated
    until none is (at least two stars stay).  Raises :class:`CalibrationError` if no star has enough data.
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

    # per star: fibers within the radius, collapsed into chunks
    good = good_pixels(flux, error, mask)
    rows, star_of, blocks_f, blocks_e = [], [], [], []
    sep = np.hypot(star_x[:, None] - star_x[None, :], star_y[:, None] - star_y[None, :])
    sep = np.where(np.isfinite(sep), sep, np.inf)
    np.fill_diagonal(sep, np.inf)
    isolated = sep.min(axis=1, initial=np.inf) >= min_separation
    for s in range(n_star):
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
    fx, fy, fe = fiber_x[fib], fiber_y[fib], exp_idx[fib]
    perp = np.vstack([-dar_c[1], dar_c[0]])
    r_grid = np.arange(0.0, radius + 4.0, 0.02)
    # fixed data selection (a selection that moved with the parameters would make chi^2 jump)
    r0 = np.hypot(fx - star_x[used][owner], fy - star_y[used][owner])
    w = (r0 < radius)[:, None] & (ivar0 > 0)

    n_glob = 2 * n_exp + (n_exp - 1) + 2

    def unpack(p):
        fwhm, betas = p[:n_exp], p[n_exp : 2 * n_exp]
        lognorm = np.concatenate([[0.0], p[2 * n_exp : 3 * n_exp - 1]])
        k = p[3 * n_exp - 1 : n_glob]
        pos = p[n_glob:].reshape(n_used, 2)
        return fwhm, betas, lognorm, k, pos

    def model_shape(p):
        fwhm, betas, lognorm, k, pos = unpack(p)
        dc = k[0] * dar_c + k[1] * perp  # (2, n_chunk)
        sx = star_x[used][owner] + pos[owner, 0]
        sy = star_y[used][owner] + pos[owner, 1]
        dx = fx[:, None] - sx[:, None] - dc[0][None, :]
        dy = fy[:, None] - sy[:, None] - dc[1][None, :]
        r = np.hypot(dx, dy)
        shape = np.empty_like(r)
        for e in range(n_exp):
            sel = fe == e
            table = fiber_integrated_moffat(
                fwhm[e], betas[e], r_grid, n_radial=10, n_azimuth=32
            ).fraction
            shape[sel] = np.exp(lognorm[e]) * np.interp(r[sel], r_grid, table, right=0.0)
        return shape

    def amplitudes(shape):
        num = np.zeros((n_used, n_chunks))
        den = np.zeros((n_used, n_chunks))
        np.add.at(num, owner, np.where(w, shape * d * ivar0, 0.0))
        np.add.at(den, owner, np.where(w, shape**2 * ivar0, 0.0))
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)

    def residuals(p):
        shape = model_shape(p)
        amp = amplitudes(shape)
        m = amp[owner] * shape
        var = np.where(w, 1.0 / np.where(ivar0 > 0, ivar0, 1.0) + (model_error * m) ** 2, 1.0)
        return (np.where(w, (d - m) / np.sqrt(var), 0.0)).ravel()

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

    # Jacobian sparsity: a star's position moves only its own rows
    n_res = d.size
    res_owner = np.repeat(owner, n_chunks)
    jac = sparse.lil_matrix((n_res, p0.size), dtype=int)
    jac[:, :n_glob] = 1
    for k in range(n_used):
        rr = np.flatnonzero(res_owner == k)
        jac[rr, n_glob + 2 * k] = 1
        jac[rr, n_glob + 2 * k + 1] = 1
    jac = jac.tocsr()[:, free]

    def res_free(q):
        p = p0.copy()
        p[free] = q
        return residuals(p)

    sol = optimize.least_squares(
        res_free, p0[free], bounds=(lo[free], hi[free]), jac_sparsity=jac, x_scale="jac",
        method="trf", max_nfev=200,
    )
    p = p0.copy()
    p[free] = sol.x
    fwhm, betas, lognorm, k, pos = unpack(p)
    lognorm = lognorm - lognorm.mean()
    chi2 = float(np.sum(sol.fun**2) / max(w.sum() - sol.x.size - n_used * n_chunks, 1))
    if star_clip is not None and n_used > 2:
        fun = sol.fun.reshape(-1, n_chunks)
        per_star = (np.bincount(owner, (fun**2).sum(axis=1), n_used)
                    / np.maximum(np.bincount(owner, w.sum(axis=1), n_used), 1))
        worst = int(np.argmax(per_star))
        if per_star[worst] > star_clip * np.median(per_star):
            keep_x = star_x.copy()
            keep_x[used[worst]] = np.nan  # no fibers near a NaN position: the star is skipped
            return fit_seeing(flux, error, mask, fiber_x, fiber_y, exposure, keep_x, star_y, wave,
                              dar, fwhm0, beta, n_chunks, wave_range, radius, fit_dar,
                              fit_positions, model_error, min_separation, fit_beta,
                              beta_bounds, star_clip)
    sx = np.full(n_star, np.nan)
    sy = np.full(n_star, np.nan)
    sx[used] = star_x[used] + pos[:, 0]
    sy[used] = star_y[used] + pos[:, 1]
    used_mask = np.zeros(n_star, dtype=bool)
    used_mask[used] = True
    return SeeingFit(
        exposure_ids=exp_ids, fwhm=fwhm, beta=betas.copy(), norm=np.exp(lognorm), dar_scale=(float(k[0]), float(k[1])),
        star_x=sx, star_y=sy, star_used=used_mask, chi2=chi2, n_stars=n_used,
        success=bool(sol.success), message=str(sol.message),
    )
