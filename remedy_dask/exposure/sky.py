"""Sky model for one exposure (rectified, ftf-corrected spectra); the choice of sky fibers is in
:mod:`remedy_dask.exposure.sky_fibers`, the error check of the result in
:mod:`remedy_dask.exposure.sky_check`.

Model of the sky in fiber f of amp g at wavelength l:

    sky_f(l) = S(l) * A_g(l) + B_g(l) * (k_f - mean k)

* ``S``: the exposure's global sky, an inverse-variance weighted, outlier-clipped mean over the
  sky fibers of all amps (noise ~ sigma / sqrt(n_sky), returned as ``sky_error``);
* ``A_g``: a smooth per-amp multiplicative adjustment (ratio of sums in wavelength bins, cubic
  spline between bins): it absorbs amp-level fiber-to-fiber errors (twilight vs. night sky
  colour, spectrograph drifts).  A bin whose adjustment exceeds ``max_adjust`` is not physical
  (a bad amp, a bright extended source): it is reset to 1 and flagged;
* ``B_g``: an optional smooth additive gradient along the slit (``fiber_index`` k = 0..111),
  fitted to the sky fibers' residuals per bin (scattered-light residuals vary along the slit).

Only sky fibers constrain the model; it is applied to every fiber.  Amps with fewer than
``min_sky`` sky fibers get A = 1, B = 0 and a flag instead of a noisy or undefined correction.

The full-array passes (bad pixels, clipped mean, per-amp sums, slit residuals, error check) are numba kernels that visit only the rows they need and allocate no
(N, n_wave) temporaries.  The sky selection, global sky and amp scales sum in numpy's order
(bit-identical to the plain-numpy form); the slit term agrees with it to rounding (1e-16).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import njit

from remedy_dask.errors import CalibrationError
from remedy_dask.exposure.fiberflat import bin_edges, smooth_interpolator
from remedy_dask.geometry import DEF_WAVE
from remedy_dask.numeric.rowstats import group_rows
from remedy_dask.exposure.sky_fibers import select_sky_fibers


@dataclass
class SkyResult:
    """The model in compact form: ``global_sky`` (n_wave,) S and ``sky_sigma`` (n_wave,) its
    noise; ``amp_scale`` (n_groups, n_wave) A_g; ``slit`` (n_groups, degree, n_wave) the slit
    term's coefficients on the wavelength grid and ``slit_basis`` (N, degree) each fiber's basis
    values (degree 0 without a slit term); ``groups`` the group labels in the order of the rows
    of ``amp_scale``, ``group_index`` (N,) each fiber's row there; ``is_sky`` (N,); ``flagged``
    (n_groups, n_bins) bins whose adjustment was out of limits or unmeasurable; ``qa``.

    ``sky`` and ``sky_error`` (N, n_wave) are formed on access; ``apply_model`` and
    ``add_error_in_place`` work without the full arrays."""

    is_sky: np.ndarray
    global_sky: np.ndarray
    sky_sigma: np.ndarray
    amp_scale: np.ndarray
    slit: np.ndarray
    slit_basis: np.ndarray
    flagged: np.ndarray
    groups: np.ndarray
    group_index: np.ndarray
    qa: dict = field(default_factory=dict)

    def apply_model(self, out: np.ndarray, subtract: bool = False) -> None:
        """out <- the model (any float dtype), or out <- out - model, for all N fibers."""
        if out.shape != self.shape:
            raise ValueError("apply_model: out must be (N, n_wave)")
        _apply_model(self.global_sky, self.amp_scale, self.group_index, self.slit_basis,
                     self.slit, out, subtract)

    @property
    def shape(self) -> tuple[int, int]:
        """(N, n_wave) of the modelled spectra."""
        return self.group_index.size, self.global_sky.size

    @property
    def sky(self) -> np.ndarray:
        out = np.empty(self.shape)
        self.apply_model(out)
        return out

    @property
    def sky_error(self) -> np.ndarray:
        return self.amp_scale[self.group_index] * self.sky_sigma[None, :]

    def add_error_in_place(self, error: np.ndarray) -> None:
        """error <- sqrt(error**2 + sky_error**2) for a float64 (N, n_wave) ``error``."""
        if error.dtype != np.float64 or error.shape != self.shape:
            raise ValueError("add_error_in_place: needs float64 errors of the model's shape")
        _add_in_quadrature(error, self.amp_scale, self.group_index, self.sky_sigma)


@njit(cache=True, nogil=True)
def _model_at(sky: np.ndarray, scale: np.ndarray, basis: np.ndarray, slit: np.ndarray, g: int,
              i: int, j: int) -> float:
    """Model of fiber i (group g) at pixel j: S * A_g + sum_p basis_ip * slit_gpj."""
    t = 0.0
    for p in range(basis.shape[1]):
        t += basis[i, p] * slit[g, p, j]
    return sky[j] * scale[g, j] + t


@njit(cache=True, nogil=True)
def _apply_model(sky: np.ndarray, scale: np.ndarray, row_group: np.ndarray, basis: np.ndarray,
                 slit: np.ndarray, out: np.ndarray, subtract: bool) -> None:
    """out <- model, or out <- out - model (see ``_model_at``), row by row."""
    for i in range(out.shape[0]):
        g = row_group[i]
        for j in range(out.shape[1]):
            v = _model_at(sky, scale, basis, slit, g, i, j)
            if subtract:
                out[i, j] -= v
            else:
                out[i, j] = v


@njit(cache=True, nogil=True)
def _add_in_quadrature(error: np.ndarray, scale: np.ndarray, row_group: np.ndarray,
                       sigma: np.ndarray) -> None:
    """error[i] <- sqrt(error[i]**2 + (scale[row_group[i]] * sigma)**2), in place."""
    for i in range(error.shape[0]):
        g = row_group[i]
        for j in range(error.shape[1]):
            s = scale[g, j] * sigma[j]
            error[i, j] = np.sqrt(error[i, j] * error[i, j] + s * s)


@njit(cache=True, nogil=True, error_model="numpy")
def _bad_pixels(flux: np.ndarray, mask: np.ndarray, err: np.ndarray) -> np.ndarray:
    """mask | non-finite flux | error not finite and positive, in one pass."""
    bad = np.empty(flux.shape, np.bool_)
    for i in range(flux.shape[0]):
        for j in range(flux.shape[1]):
            e = err[i, j]
            good_err = e > 0.0 and np.isfinite(e)
            bad[i, j] = mask[i, j] or not np.isfinite(flux[i, j]) or not good_err
    return bad


@njit(cache=True, nogil=True, error_model="numpy")
def _clipped_mean(flux: np.ndarray, err: np.ndarray, bad: np.ndarray, rows: np.ndarray,
                  clip: float, n_iter: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inverse-variance mean over ``rows`` per column, iteratively rejecting pixels more than
    ``clip`` error from it (at most ``n_iter`` means).  Returns (mean, sum of weights, good
    (n_rows, n_wave)): ``good`` is the selection the next mean would use (a converged
    selection: the one the mean used).  Sums run over rows in order (as numpy's axis-0 sum)."""
    n_wave = flux.shape[1]
    good = np.empty((rows.size, n_wave), np.bool_)
    for a in range(rows.size):
        i = rows[a]
        for j in range(n_wave):
            good[a, j] = not bad[i, j] and 1.0 / (err[i, j] * err[i, j]) > 0.0
    s = np.zeros(n_wave)
    wsum = np.zeros(n_wave)
    wf = np.zeros(n_wave)
    for _ in range(n_iter):
        wsum[:] = 0.0
        wf[:] = 0.0
        for a in range(rows.size):
            i = rows[a]
            for j in range(n_wave):
                if good[a, j]:
                    w = 1.0 / (err[i, j] * err[i, j])
                    wsum[j] += w
                    wf[j] += w * flux[i, j]
        for j in range(n_wave):
            s[j] = wf[j] / wsum[j]
        changed = False
        for a in range(rows.size):
            i = rows[a]
            for j in range(n_wave):
                e = err[i, j]
                new = (not bad[i, j] and 1.0 / (e * e) > 0.0
                       and abs(flux[i, j] - s[j]) <= clip * e)
                if new != good[a, j]:
                    good[a, j] = new
                    changed = True
        if not changed:
            break
    return s, wsum, good


@njit(cache=True, nogil=True, error_model="numpy")
def _group_sums(flux: np.ndarray, good: np.ndarray, rows: np.ndarray, row_group: np.ndarray,
                sky: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Per group and column, the sums over its ``rows`` (in order) of flux and of ``sky`` at the
    ``good`` (n_rows, n_wave) pixels."""
    n_wave = flux.shape[1]
    num = np.zeros((n_groups, n_wave))
    den = np.zeros((n_groups, n_wave))
    for a in range(rows.size):
        i = rows[a]
        g = row_group[a]
        for j in range(n_wave):
            if good[a, j]:
                num[g, j] += flux[i, j]
                den[g, j] += sky[j]
    return num, den


@njit(cache=True, nogil=True, error_model="numpy")
def _chi_moments(flux: np.ndarray, err: np.ndarray, bad: np.ndarray, rows: np.ndarray,
                 sky: np.ndarray, scale: np.ndarray, row_group: np.ndarray, basis: np.ndarray,
                 slit: np.ndarray, centre: float) -> tuple[int, float, float]:
    """Count, sum and sum of squares of chi - ``centre``, chi = (flux - model) / err over the
    good pixels of ``rows`` (NaN chi skipped; model as in ``_model_at``)."""
    count = 0
    total = 0.0
    squares = 0.0
    for i in rows:
        g = row_group[i]
        for j in range(flux.shape[1]):
            if not bad[i, j]:
                d = (flux[i, j] - _model_at(sky, scale, basis, slit, g, i, j)) / err[i, j] - centre
                if not np.isnan(d):
                    count += 1
                    total += d
                    squares += d * d
    return count, total, squares


def _chi_std(flux: np.ndarray, err: np.ndarray, bad: np.ndarray, rows: np.ndarray,
             model: SkyResult) -> float:
    """Standard deviation of (flux - model) / err over the good pixels of ``rows`` (two
    passes: mean, then squared deviations from it); NaN without any."""
    parts = (model.global_sky, model.amp_scale, model.group_index, model.slit_basis, model.slit)
    count, total, _ = _chi_moments(flux, err, bad, rows, *parts, 0.0)
    if count == 0:
        return float("nan")
    _, _, squares = _chi_moments(flux, err, bad, rows, *parts, total / count)
    return float(np.sqrt(squares / count))


def sky_model(
    flux: np.ndarray,
    error: np.ndarray,
    mask: np.ndarray,
    group: np.ndarray,
    *,
    fiber_index: np.ndarray | None = None,
    is_sky: np.ndarray | None = None,
    wave: np.ndarray = DEF_WAVE,
    n_bins: int = 20,
    max_adjust: float = 0.1,
    min_sky: int = 10,
    slit_degree: int = 1,
    clip: float = 5.0,
) -> SkyResult:
    """Sky model of one exposure (see module docstring); inputs (N, n_wave), group (N,) int.

    ``fiber_index`` (N,) fiber k within its amp enables the slit gradient term (when
    ``slit_degree`` >= 1).  Raises CalibrationError if there are fewer than ``min_sky`` sky
    fibers in the whole exposure.  Float64 inputs are used without copies.
    """
    flux = np.asarray(flux, dtype=np.float64)
    err = np.asarray(error, dtype=np.float64)
    mask = np.asarray(mask, bool)
    group = np.asarray(group)
    n, n_wave = flux.shape
    if err.shape != flux.shape or mask.shape != flux.shape or group.shape != (n,):
        raise CalibrationError("sky_model: inconsistent input shapes")
    bad = _bad_pixels(flux, mask, err)
    if is_sky is None:
        is_sky = select_sky_fibers(flux, bad, err, wave=wave)
    is_sky = np.asarray(is_sky, bool)
    if is_sky.sum() < min_sky:
        raise CalibrationError(f"sky_model: only {int(is_sky.sum())} sky fibers in the exposure")
    groups = np.unique(group)
    sky_rows = np.flatnonzero(is_sky)  # ``good`` has one row per sky row
    sky_gi, sky_order, sky_bounds = group_rows(group, groups, sky_rows)
    sky_glob, wsum, good = _clipped_mean(flux, err, bad, sky_rows, clip, 3)
    with np.errstate(divide="ignore"):
        sky_var = np.where(wsum > 0, 1.0 / wsum, np.nan)
    sky_glob = np.where(np.isfinite(sky_glob), sky_glob, 0.0)
    edges = bin_edges(n_wave, n_bins)
    spline = smooth_interpolator(n_wave, edges)
    n_sky = np.diff(sky_bounds)
    measured = n_sky >= min_sky
    amp_scale, flagged = _amp_scales(flux, good, sky_rows, sky_gi, sky_glob, groups.size, edges,
                                     spline, measured, max_adjust)
    degree = slit_degree if fiber_index is not None and slit_degree >= 1 else 0
    slit = np.zeros((groups.size, degree, n_wave))
    slit_basis = np.zeros((n, degree))
    if degree:
        k = np.asarray(fiber_index, float)
        mean_res = _bin_mean_residuals(flux, good, sky_rows, sky_glob, amp_scale, sky_gi, edges)
        _, members_all, bounds = group_rows(group, groups, np.arange(n))
        for gi in np.flatnonzero(measured):
            members = members_all[bounds[gi]:bounds[gi + 1]]
            pos = sky_order[sky_bounds[gi]:sky_bounds[gi + 1]]  # its sky rows in ``good``
            slit_basis[members], slit[gi] = _slit_term(mean_res[pos], k[sky_rows[pos]],
                                                       k[members], spline, degree)
    model = SkyResult(
        is_sky=is_sky,
        global_sky=sky_glob,
        sky_sigma=np.sqrt(np.where(np.isfinite(sky_var), sky_var, 0.0)),
        amp_scale=amp_scale,
        slit=slit,
        slit_basis=slit_basis,
        flagged=flagged,
        groups=groups,
        group_index=np.searchsorted(groups, group),
    )
    model.qa = {
        "n_sky": int(is_sky.sum()),
        "n_fibers": n,
        "sky_chi_std": _chi_std(flux, err, bad, sky_rows, model),
        "groups": _group_qa(groups, n_sky, flagged, amp_scale),
    }
    return model


def _amp_scales(flux: np.ndarray, good: np.ndarray, sky_rows: np.ndarray, sky_gi: np.ndarray,
                sky_glob: np.ndarray, n_groups: int, edges: np.ndarray, spline: np.ndarray,
                measured: np.ndarray, max_adjust: float) -> tuple[np.ndarray, np.ndarray]:
    """Per group: the smooth ratio of its sky fibers to the global sky (1 where unmeasured) and
    the wavelength bins flagged (ratio off by more than ``max_adjust``, or unmeasured)."""
    num, den = _group_sums(flux, good, sky_rows, sky_gi, sky_glob, n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.add.reduceat(num, edges[:-1], axis=1) / np.add.reduceat(den, edges[:-1], axis=1)
    flagged = ~measured[:, None] | ~np.isfinite(ratio) | (np.abs(ratio - 1.0) > max_adjust)
    amp_scale = np.ones((n_groups, flux.shape[1]))
    for gi in np.flatnonzero(measured):
        amp_scale[gi] = spline @ np.where(flagged[gi], 1.0, ratio[gi])
    return amp_scale, flagged


def _group_qa(groups: np.ndarray, n_sky: np.ndarray, flagged: np.ndarray,
              amp_scale: np.ndarray) -> dict[Any, dict[str, Any]]:
    return {
        (g.item() if hasattr(g, "item") else g): {
            "n_sky": int(n_sky[gi]),
            "n_flagged_bins": int(flagged[gi].sum()),
            "scale_min": float(amp_scale[gi].min()),
            "scale_max": float(amp_scale[gi].max()),
        }
        for gi, g in enumerate(groups)
    }


@njit(cache=True, nogil=True, error_model="numpy")
def _bin_mean_residuals(flux: np.ndarray, good: np.ndarray, rows: np.ndarray, sky: np.ndarray,
                        scale: np.ndarray, row_group: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(n_rows, n_bins) mean over the ``good`` pixels of each wavelength bin of flux - sky *
    scale[row_group] for the fibers ``rows`` (``good`` and ``row_group`` have one row per
    fiber); NaN for a bin without good pixels."""
    out = np.empty((rows.size, edges.size - 1))
    for a in range(rows.size):
        i = rows[a]
        g = row_group[a]
        for b in range(edges.size - 1):
            total = 0.0
            count = 0
            for j in range(edges[b], edges[b + 1]):
                if good[a, j]:
                    total += flux[i, j] - sky[j] * scale[g, j]
                    count += 1
            out[a, b] = total / count
    return out


def _slit_term(mean_res: np.ndarray, k_sky: np.ndarray, k_members: np.ndarray,
               spline: np.ndarray, degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Additive smooth gradient along the slit for one amp: per wavelength bin, a polynomial in
    the fiber index (no constant term: the multiplicative scale already sets the mean) fitted
    by least squares to the sky fibers' mean residual in the bin (``mean_res`` (n_sky, n_bins),
    fiber indices ``k_sky``; bins with at most 3 * degree values get none); cubic spline
    across bins.  Returns the basis at the fibers ``k_members`` (n, degree) and the
    coefficients on the wavelength grid (degree, n_wave): the term is their product.  All
    bins are solved at once through their normal equations (pseudo-inverse: a degenerate
    basis gives the minimum-norm fit)."""
    centre = k_sky.mean()
    span = max(np.ptp(k_sky) / 2.0, 1.0)
    powers = np.arange(1, degree + 1)
    raw = ((k_sky - centre) / span)[:, None] ** powers  # (n_sky, degree)
    offset = raw.mean(axis=0)
    basis = raw - offset
    ok = np.isfinite(mean_res)
    n_ok = ok.sum(axis=0)
    y_mean = np.where(ok, mean_res, 0.0).sum(axis=0) / np.maximum(n_ok, 1)
    y = np.where(ok, mean_res - y_mean, 0.0)  # centred per bin, zero where unusable
    normal = np.einsum("rb,rp,rq->bpq", ok.astype(float), basis, basis)
    coef = np.einsum("bpq,bq->pb", np.linalg.pinv(normal), y.T @ basis)
    coef[:, n_ok <= 3 * degree] = 0.0
    return ((k_members - centre) / span)[:, None] ** powers - offset, coef @ spline.T
