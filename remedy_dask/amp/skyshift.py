"""Maximum-likelihood wavelength shift of a science amp-exposure from its night-sky lines.

Model of the extracted spectrum of fiber k in a window of +-``window`` A around sky line l, with
the science wavelengths ``lam_cal(x - s)`` (``wavelength_sci(x) = wavelength_cal(x - s)``)::

    f_kl(x) = c0_kl + c1_kl r + A_kl G_l(x; s),   r = (x - x_kl) / h   (h: half window, px)
    G_l(x; s) = Phi(u(x + 1/2)) - Phi(u(x - 1/2)),   u(e) = (lam_cal(e - s) - line_l) / sigma

(a Gaussian LSF integrated over each pixel's wavelength edges) with ONE shift ``s`` (px) common
to all fibers and lines; weights 1 / error^2, masked pixels excluded.  For a trial ``s`` the
linear parameters (continuum, slope, amplitude) of every fiber-line block are solved in closed
form (variable projection, vectorised over blocks) and ``s`` is the root of the efficient score

    U(s) = sum_k a_k dG_k' W res_k(s),     d U / ds = -sum_k a_k A_k J_k,
    J_k = dG' W dG - (X' W dG)' (X' W X)^-1 (X' W dG)   (linear parameters projected out),

found by Gauss-Newton (from the best point of a coarse grid).  With a_k = A_k (first round) U
is the gradient of the profile chi^2, i.e. the maximum-likelihood estimate.  At the S/N of
the sky lines in one fiber (2-10) the fitted A_k are noisy: weighting by them costs a few % in
precision and makes the formal error ~10% optimistic, so later rounds weight by a low-noise
model of the amplitude instead,
a_k = (line-to-continuum ratio of the line) x (continuum c0_k of the fiber): sky lines and sky
continuum both scale with the fiber throughput.  Any a_k that is a function of the fitted linear
parameters keeps U unbiased (the residual is independent of them); the error is
sqrt(sum a_k^2 J_k) / sum a_k A_k J_k, scaled by sqrt(chi^2_red) when that exceeds 1.

Blocks are dropped when the line core is masked, the continuum is far above the sky (a bright
source) or far below it (dead fiber), or the block disagrees with the sky model (chi^2 or a line
flux off the common line-to-continuum ratio: a source line or a cosmic-ray residual).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtr

from remedy_dask import geometry
from remedy_dask.amp.skyshift_kernel import (
    constant_sums,
    edge_coordinates,
    solve_blocks,
)
from remedy_dask.errors import CalibrationError

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


@dataclass
class WavelengthShift:
    """Fitted shift (px, ``wavelength_sci(x) = wavelength_cal(x - shift)``) with its formal
    1-sigma ``error`` (px), the reduced chi^2 of the used blocks, the number of fibers used and
    per-line QA (``wave``, ``shift`` and ``error`` of that line alone, line ``snr``,
    ``n_fibers``, ``used`` in the joint fit)."""

    shift: float
    error: float
    chi2_red: float
    n_fibers: int
    n_iter: int
    per_line: list[dict[str, float]] = field(default_factory=list)


@dataclass
class _Blocks:
    """Windows of all (line, fiber) blocks: arrays (n_lines, n_fib[, n_pix])."""

    data: np.ndarray  # e- per pixel
    weight: np.ndarray  # 1 / variance, 0 on bad pixels
    start: np.ndarray  # int, first column of the window
    rel: np.ndarray  # (n_pix,) continuum variable in [-1, 1]
    lines: np.ndarray  # (n_lines,) A
    use: np.ndarray  # bool (n_lines, n_fib)
    _sums: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def constant_sums(self) -> np.ndarray:
        """The sums of every block that do not depend on the shift (see
        :func:`skyshift_kernel.constant_sums`), kept until ``weight`` is replaced."""
        if self._sums is None or self._sums[0] is not self.weight:
            out = np.empty((6,) + self.use.shape)
            constant_sums(self.weight, self.data, self.rel, out)
            self._sums = (self.weight, out)
        return self._sums[1]


@dataclass
class _Fit:
    """Linear solution of every block at given shifts: arrays (n_lines, n_fib[, ...])."""

    theta: np.ndarray  # (..., 3): continuum c0, slope c1, line amplitude A
    theta_var: np.ndarray  # (..., 3) diagonal of their covariance
    g: np.ndarray  # (..., n_pix) line profile G at the shift of the fit
    chi2: np.ndarray  # residual chi^2 (0 for unused blocks)
    score: np.ndarray  # a_k sum w res dG/ds (a_k: the weighting amplitude)
    jac: np.ndarray  # -d score / ds = a_k A_k J_k
    noise: np.ndarray  # variance of the score, a_k^2 J_k

    def model(self, rel: np.ndarray) -> np.ndarray:
        """Fitted spectrum of every block (n_lines, n_fib, n_pix)."""
        t = self.theta
        return t[..., :1] + t[..., 1:2] * rel + t[..., 2:3] * self.g


def _line_columns(wavelength: np.ndarray, lines: np.ndarray) -> np.ndarray:
    """Fractional column of every line in every fiber (n_lines, n_fib); NaN outside."""
    n_fib, n_cols = wavelength.shape
    i = (wavelength[None, :, :] < lines[:, None, None]).sum(-1) - 1  # (n_lines, n_fib)
    inside = (i >= 0) & (i < n_cols - 1)
    i = np.clip(i, 0, n_cols - 2)
    k = np.arange(n_fib)[None, :]
    lo, hi = wavelength[k, i], wavelength[k, i + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        col = i + (lines[:, None] - lo) / (hi - lo)
    return np.where(inside, col, np.nan)


def _build_blocks(spectra: np.ndarray, variance: np.ndarray, bad: np.ndarray,
                  wavelength: np.ndarray, lines: np.ndarray, window: float, lsf_sigma: float,
                  max_shift: float) -> _Blocks:
    n_fib, n_cols = spectra.shape
    disp = float(np.nanmedian(np.diff(wavelength, axis=1)))
    half = int(np.ceil(window / disp))
    col = _line_columns(wavelength, lines)
    margin = half + int(np.ceil(max_shift)) + 2
    ok = np.isfinite(col) & (col >= margin) & (col <= n_cols - 1 - margin)
    start = np.round(np.where(ok, col, margin)).astype(int) - half
    cols = start[..., None] + np.arange(2 * half + 1)  # (n_lines, n_fib, n_pix)
    k = np.arange(n_fib)[None, :, None]
    data, var, bad_px = spectra[k, cols], variance[k, cols], bad[k, cols]
    bad_px = bad_px | ~np.isfinite(data) | ~np.isfinite(var) | ~(var > 0)
    # the line core (+-2 LSF sigma) must be unmasked; enough pixels for the continuum
    core = np.abs(cols - col[..., None]) <= 2.0 * lsf_sigma / disp + 0.5
    ok &= ~(bad_px & core).any(-1) & ((~bad_px).sum(-1) >= half + 4)
    weight = np.where(bad_px, 0.0, 1.0 / np.where(bad_px, 1.0, var))
    rel = np.arange(-half, half + 1) / float(half)
    return _Blocks(np.where(bad_px, 0.0, data), weight, start, rel, lines, ok)


def _edges(blocks: _Blocks, wavelength: np.ndarray, shift: np.ndarray, lsf_sigma: float
           ) -> tuple[np.ndarray, np.ndarray]:
    """Normalised offsets u from the line at the pixel edges of every block (n_l, n_f,
    n_pix + 1) for per-line shifts ``shift``, the edge wavelengths lam_cal(x -+ 1/2 - s)
    interpolated linearly in the calibration array, and their derivative -d lam / ds."""
    n_pix = blocks.rel.size
    q = -0.5 - np.asarray(shift, dtype=float)
    iq = np.floor(q)
    u = np.empty(blocks.start.shape + (n_pix + 1,))
    dw = np.empty_like(u)
    edge_coordinates(wavelength, blocks.start, iq.astype(np.int64), q - iq, blocks.lines,
                     float(lsf_sigma), u, dw)
    return u, dw


def _solve(blocks: _Blocks, wavelength: np.ndarray, shift: np.ndarray, lsf_sigma: float,
           amp_weight: np.ndarray | None = None, derivative: bool = True) -> _Fit:
    """Closed-form linear parameters, residual chi^2 and score terms of every block for the
    per-line shifts ``shift`` (n_lines,).

    Line profile G = Phi(u(x + 1/2)) - Phi(u(x - 1/2)) (:func:`_edges`), dG/ds from the
    Gaussian at the edges.  Design X = [1, r, G]; J_k = dG'W dG - (X'W dG)' (X'W X)^-1 (X'W dG)
    is the efficient information of the shift per unit amplitude (linear parameters projected
    out).  The score weights block k by ``amp_weight`` a_k (default: its fitted amplitude A_k,
    which makes it the gradient of the profile chi^2).  3x3 normal equations solved by
    cofactors, block by block (:func:`skyshift_kernel.solve_blocks`).  Without ``derivative``
    only theta and chi2 are computed (the score terms are left 0).
    """
    u, dw = _edges(blocks, wavelength, shift, lsf_sigma)
    phi = ndtr(u)
    ex = np.exp(-0.5 * u * u) if derivative else u
    g = np.empty(blocks.weight.shape)
    out = np.zeros((10,) + blocks.use.shape)
    solve_blocks(phi, ex, dw, _INV_SQRT_2PI / lsf_sigma, blocks.weight, blocks.data, blocks.rel,
                 blocks.constant_sums(), blocks.use, np.empty((0, 0)) if amp_weight is None else amp_weight,
                 amp_weight is not None, derivative, g, out)
    return _Fit(theta=np.moveaxis(out[:3], 0, -1), theta_var=np.moveaxis(out[3:6], 0, -1), g=g,
                chi2=out[6], score=out[7], jac=out[8], noise=out[9])


def _gauss_newton(blocks: _Blocks, wavelength: np.ndarray, shift: np.ndarray, lsf_sigma: float,
                  amp_weight: np.ndarray | None, joint: bool, max_shift: float,
                  tol: float = 1e-4, max_iter: int = 30) -> tuple[np.ndarray, _Fit, int]:
    """Iterate s += score / jac, summed over all blocks when ``joint``, else per line."""
    shift = np.array(shift, dtype=float)
    fit = _solve(blocks, wavelength, shift, lsf_sigma, amp_weight)
    for it in range(1, max_iter + 1):
        score, jac = fit.score.sum(-1), fit.jac.sum(-1)
        if joint:
            score, jac = np.full_like(score, score.sum()), np.full_like(jac, jac.sum())
        with np.errstate(invalid="ignore", divide="ignore"):
            step = np.clip(np.where(jac > 0, score / jac, 0.0), -0.5, 0.5)
        shift = np.clip(shift + step, -max_shift, max_shift)
        fit = _solve(blocks, wavelength, shift, lsf_sigma, amp_weight)
        if np.all(np.abs(step) < tol):
            return shift, fit, it
    return shift, fit, max_iter


def _profile_chi2(blocks: _Blocks, wavelength: np.ndarray, shift: np.ndarray,
                  lsf_sigma: float) -> float:
    """Joint profile chi^2 at ``shift``: the ``chi2`` of :func:`_solve` summed (no dG/ds)."""
    return float(_solve(blocks, wavelength, shift, lsf_sigma, derivative=False).chi2.sum())


def _grid_chi2(blocks: _Blocks, wavelength: np.ndarray, grid: np.ndarray, lsf_sigma: float
               ) -> list[float]:
    """:func:`_profile_chi2` at every shift of ``grid`` (common to all lines).  Shifts whose
    pixel edges fall at the same fraction of a column share edges, whole columns apart: Phi
    is evaluated once on their common edges (the same values, cheaper)."""
    n_pix = blocks.rel.size
    q = -0.5 - np.asarray(grid, dtype=float)
    iq = np.floor(q)
    chi2 = [0.0] * len(grid)
    for frac in np.unique(q - iq):
        members = np.flatnonzero(q - iq == frac)
        first = int(iq[members].min())
        n_edge = n_pix + 1 + int(iq[members].max()) - first
        u = np.empty(blocks.start.shape + (n_edge,))
        edge_coordinates(wavelength, blocks.start, np.full(blocks.lines.size, first),
                         np.full(blocks.lines.size, frac), blocks.lines, float(lsf_sigma), u,
                         np.empty_like(u))
        phi = ndtr(u)
        for m in members:
            o = int(iq[m]) - first
            edges = np.ascontiguousarray(phi[..., o:o + n_pix + 1])
            g = np.empty(blocks.weight.shape)
            out = np.zeros((10,) + blocks.use.shape)
            solve_blocks(edges, edges, edges, 0.0, blocks.weight, blocks.data, blocks.rel,
                         blocks.constant_sums(), blocks.use, np.empty((0, 0)), False, False, g, out)
            chi2[m] = float(out[6].sum())
    return chi2


def _coarse_start(blocks: _Blocks, wavelength: np.ndarray, lsf_sigma: float,
                  max_shift: float, step: float = 0.5) -> float:
    """Shift of the lowest joint profile chi^2 on a grid over +-``max_shift``."""
    grid = np.arange(-max_shift, max_shift + 0.5 * step, step)
    chi2 = _grid_chi2(blocks, wavelength, grid, lsf_sigma)
    return float(grid[int(np.argmin(chi2))])


def _median(values: np.ndarray) -> float:
    """``np.median`` of a short 1-D array (the middle value, or the mean of the two middle
    ones; NaN if any is NaN), without its general-purpose overhead."""
    s = np.sort(values)
    n = s.size
    if np.isnan(s[-1]):
        return float("nan")
    return float(s[n // 2]) if n % 2 else float((s[n // 2 - 1] + s[n // 2]) / 2.0)


def _line_ratio(fit: _Fit, use: np.ndarray) -> np.ndarray:
    """Median line-to-continuum ratio A / c0 of every line over the blocks ``use``."""
    level, amp = fit.theta[..., 0], fit.theta[..., 2]
    ratio = np.zeros(use.shape[0])
    for li in np.flatnonzero(use.any(-1)):
        u = use[li] & (level[li] > 0)
        ratio[li] = _median(amp[li, u] / level[li, u]) if u.any() else 0.0
    return ratio


def _amplitude_model(fit: _Fit, use: np.ndarray) -> np.ndarray:
    """Low-noise amplitude of every block: the line's ratio x the fiber's continuum (sky lines
    and sky continuum both scale with the fiber throughput); the continuum of a fiber is known
    to a few % where its line amplitude has S/N of only ~2-10."""
    ratio = np.maximum(_line_ratio(fit, use), 0.0)
    return ratio[:, None] * np.maximum(fit.theta[..., 0], 0.0)


def _reject(blocks: _Blocks, fit: _Fit, bright_factor: float, reject_sigma: float) -> np.ndarray:
    """Blocks consistent with pure sky: continuum within [1/bright_factor, bright_factor] x the
    line's median, line flux on the common line-to-continuum ratio, chi^2 not an outlier."""
    use = blocks.use.copy()
    level = fit.theta[..., 0]
    med = np.array([_median(level[li, u]) if u.any() else 0.0 for li, u in enumerate(use)])
    sky = (level > med[:, None] / bright_factor) & (level < med[:, None] * bright_factor)
    ratio = _line_ratio(fit, use & sky)
    pull = (fit.theta[..., 2] - ratio[:, None] * level) / np.sqrt(fit.theta_var[..., 2])
    dof = (blocks.weight > 0).sum(-1) - 3
    chi2_max = dof + reject_sigma * np.sqrt(2.0 * np.maximum(dof, 1))
    return use & sky & (med[:, None] > 0) & (np.abs(pull) < reject_sigma) & (fit.chi2 < chi2_max)


def _line_snr(fit: _Fit, use: np.ndarray) -> np.ndarray:
    """Matched-filter S/N of every line: fiber amplitudes weighted by the continuum (a proxy of
    the expected amplitude, ~throughput) over their variance."""
    level, amp, var = fit.theta[..., 0], fit.theta[..., 2], fit.theta_var[..., 2]
    wgt = np.where(use, np.maximum(level, 0.0) / var, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = (wgt * amp).sum(-1) / np.sqrt((wgt * wgt * var).sum(-1))
    return np.nan_to_num(snr)


def fit_wavelength_shift(spectra: np.ndarray, wavelength: np.ndarray,
                         mask: np.ndarray | None = None,
                         lines: tuple[float, ...] = geometry.SKY_LINES, *,
                         error: np.ndarray | None = None, lsf_fwhm: float = 5.6,
                         window: float = 16.0, min_snr: float = 5.0, max_shift: float = 2.0,
                         bright_factor: float = 3.0, reject_sigma: float = 5.0,
                         per_line: bool = True) -> WavelengthShift:
    """Joint shift (px) of the sky ``lines`` in ``spectra`` (n_fib, n_cols, e- per pixel) against
    the calibration ``wavelength`` (n_fib, n_cols, A); see the module docstring.

    ``error``: 1-sigma of the spectra (weights); without it a Poisson estimate |spectra| + 25
    e-^2, then the fitted model + 25.  ``mask``: True = bad pixel.  ``lsf_fwhm`` (A): Gaussian
    LSF, integrated over each pixel.  Lines with matched S/N < ``min_snr`` are left out of the
    joint fit.  ``per_line``: also fit each line alone for QA.  Raises CalibrationError when no
    line is measurable or the fit runs to +-``max_shift``.
    """
    spec = np.asarray(spectra, dtype=float)
    wave = np.asarray(wavelength, dtype=float)
    if spec.shape != wave.shape or spec.ndim != 2:
        raise CalibrationError(f"wavelength shift: spectra {spec.shape} and wavelength "
                               f"{wave.shape} must be equal 2-D shapes")
    poisson = error is None
    var = (np.abs(np.nan_to_num(spec)) + 25.0 if poisson
           else np.asarray(error, dtype=float) ** 2)
    bad = np.zeros(spec.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    sigma = lsf_fwhm * FWHM_TO_SIGMA
    blocks = _build_blocks(spec, var, bad, wave, np.asarray(lines, dtype=float), window, sigma,
                           max_shift)
    if not blocks.use.any():
        raise CalibrationError(f"wavelength shift: no sky line of {lines} inside the spectra")
    n_lines = blocks.lines.size
    shift = np.full(n_lines, _coarse_start(blocks, wave, sigma, max_shift))
    n_iter, amp_weight = 0, None
    for round_ in range(4):  # fit; drop blocks inconsistent with sky and faint lines; refit
        shift, fit, it = _gauss_newton(blocks, wave, shift, sigma, amp_weight, True, max_shift)
        n_iter += it
        reweighted = poisson and round_ == 0
        if reweighted:  # model-based variance: weights that do not follow the noise
            blocks.weight = np.where(blocks.weight > 0,
                                     1.0 / (np.maximum(fit.model(blocks.rel), 0.0) + 25.0), 0.0)
        use = _reject(blocks, fit, bright_factor, reject_sigma)
        snr = _line_snr(fit, use)
        use &= (snr >= min_snr)[:, None]
        converged = np.array_equal(use, blocks.use) and amp_weight is not None and not reweighted
        blocks.use = use
        amp_weight = _amplitude_model(fit, use)
        if converged or not use.any():
            break
    if not blocks.use.any():
        raise CalibrationError(f"wavelength shift: no sky line of {lines} measurable "
                               f"(line S/N {np.round(snr, 1).tolist()} < {min_snr})")
    shift, fit, it = _gauss_newton(blocks, wave, shift, sigma, amp_weight, True, max_shift)
    n_iter += it
    s = float(shift[0])
    if abs(s) >= max_shift - 1e-6:
        raise CalibrationError(f"wavelength shift: fit ran to the limit {s:+.2f} px")
    n_pix = int(((blocks.weight > 0) & blocks.use[..., None]).sum())
    dof = max(n_pix - 3 * int(blocks.use.sum()) - 1, 1)
    chi2_red = float(fit.chi2.sum() / dof)
    inflate = np.sqrt(max(chi2_red, 1.0))  # errors of the spectra too small: scale up
    result = WavelengthShift(shift=s, error=inflate * _score_error(fit.jac.sum(), fit.noise.sum()),
                             chi2_red=chi2_red,
                             n_fibers=int(blocks.use.any(0).sum()), n_iter=n_iter)
    if per_line:
        result.per_line = _per_line(blocks, wave, shift, sigma, amp_weight, max_shift,
                                    _line_snr(fit, blocks.use), inflate)
    return result


def _score_error(jac: float, noise: float) -> float:
    """1-sigma of the root of the score: sqrt(var(score)) / |d score / ds|."""
    return float(np.sqrt(noise) / jac) if jac > 0 else float("inf")


def _per_line(blocks: _Blocks, wavelength: np.ndarray, shift: np.ndarray, lsf_sigma: float,
              amp_weight: np.ndarray, max_shift: float, snr: np.ndarray, inflate: float
              ) -> list[dict[str, float]]:
    """Every line fitted alone (QA): its shift, error, S/N and fibers."""
    line_shift, fit, _ = _gauss_newton(blocks, wavelength, shift, lsf_sigma, amp_weight, False,
                                       max_shift)
    jac, noise = fit.jac.sum(-1), fit.noise.sum(-1)
    out = []
    for li, wave in enumerate(blocks.lines):
        n = int(blocks.use[li].sum())
        out.append({"wave": float(wave), "shift": float(line_shift[li]) if n else float("nan"),
                    "error": inflate * _score_error(jac[li], noise[li]), "snr": float(snr[li]),
                    "n_fibers": n, "used": n > 0})
    return out
