"""Sky selection, sky model and error check for one exposure (rectified, ftf-corrected spectra).

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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from remedy_dask.errors import CalibrationError
from remedy_dask.fiberflat import _bins, smooth_interpolator
from remedy_dask.geometry import DEF_WAVE


@dataclass
class SkyResult:
    """``sky``/``sky_error`` (N, n_wave) model and its uncertainty; ``is_sky`` (N,); ``global_sky``
    (n_wave,); ``amp_scale`` (n_groups, n_wave) A_g; ``flagged`` (n_groups, n_bins) bins
    whose adjustment was out of limits or unmeasurable; ``groups`` the group labels in the
    order of the rows of ``amp_scale``; ``qa``."""

    sky: np.ndarray
    sky_error: np.ndarray
    is_sky: np.ndarray
    global_sky: np.ndarray
    amp_scale: np.ndarray
    flagged: np.ndarray
    groups: np.ndarray
    qa: dict = field(default_factory=dict)


def _robust_centre(y: np.ndarray, n_iter: int = 10, clip: float = 3.0) -> tuple[float, float]:
    """Centre and scale of the core of a distribution with one-sided contamination."""
    keep = np.isfinite(y)
    c = float(np.median(y[keep]))
    s = float(1.4826 * np.median(np.abs(y[keep] - c)))
    for _ in range(n_iter):
        new = np.isfinite(y) & (np.abs(y - c) < clip * max(s, 1e-12))
        if new.sum() < 3 or np.array_equal(new, keep):
            break
        keep = new
        c = float(np.median(y[keep]))
        s = float(1.4826 * np.median(np.abs(y[keep] - c)))
    return c, s


def select_sky_fibers(
    flux: np.ndarray,
    mask: np.ndarray,
    error: np.ndarray | None = None,
    *,
    wave: np.ndarray = DEF_WAVE,
    window: tuple[float, float] = (3700.0, 5400.0),
    n_sigma: float = 3.0,
    line_sigma: float = 6.0,
    max_masked: float = 0.5,
) -> np.ndarray:
    """Blank-sky fibers (N,) bool.

    A fiber is sky if its median level in ``window`` lies within ``n_sigma`` robust sigma of
    the mode of all fibers (continuum sources and broken fibers are out), it has at most
    ``max_masked`` of its pixels masked, and (with ``error``) no emission line: no 3-pixel
    sum of its residual from the median sky spectrum above ``line_sigma`` sigma.
    """
    f = np.where(np.asarray(mask, bool) | ~np.isfinite(flux), np.nan, flux)
    sel = (wave >= window[0]) & (wave <= window[1])
    part = f[:, sel] if sel.any() else f
    level = np.full(f.shape[0], np.nan)
    has = np.isfinite(part).any(axis=1)
    level[has] = np.nanmedian(part[has], axis=1)
    masked = np.mean(np.isnan(f), axis=1)
    ok = np.isfinite(level) & (masked <= max_masked)
    if ok.sum() < 3:
        return np.zeros(f.shape[0], bool)
    centre, scale = _robust_centre(np.where(ok, level, np.nan))
    sky = ok & (np.abs(level - centre) < n_sigma * max(scale, 1e-12))
    if error is not None and sky.sum() >= 3:
        with np.errstate(invalid="ignore", divide="ignore"):
            template = np.nanmedian(f[sky], axis=0)
            resid = (f - template[None, :] * (level / centre)[:, None]) / error
        resid = np.where(np.isfinite(resid), resid, 0.0)
        triple = (resid[:, :-2] + resid[:, 1:-1] + resid[:, 2:]) / np.sqrt(3.0)
        sky &= ~(triple.max(axis=1) > line_sigma)
    return sky


def _weighted_sky(f, w, use, clip, error):
    """Clipped inverse-variance mean over fibers ``use``; returns (S, var(S), good pixels)."""
    good = use[:, None] & (w > 0)
    s = np.zeros(f.shape[1])
    for _ in range(3):
        wsum = np.sum(np.where(good, w, 0.0), axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            s = np.sum(np.where(good, w * f, 0.0), axis=0) / wsum
        with np.errstate(invalid="ignore"):
            new = use[:, None] & (w > 0) & (np.abs(f - s[None, :]) <= clip * error)
        if np.array_equal(new, good):
            break
        good = new
    with np.errstate(divide="ignore"):
        var = np.where(wsum > 0, 1.0 / wsum, np.nan)
    return s, var, good


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
    fibers in the whole exposure.
    """
    flux = np.asarray(flux, dtype=np.float64)
    err = np.asarray(error, dtype=np.float64)
    bad = np.asarray(mask, bool) | ~np.isfinite(flux) | ~np.isfinite(err) | ~(err > 0)
    group = np.asarray(group)
    n, n_wave = flux.shape
    if err.shape != flux.shape or bad.shape != flux.shape or group.shape != (n,):
        raise CalibrationError("sky_model: inconsistent input shapes")
    if is_sky is None:
        is_sky = select_sky_fibers(flux, bad, np.where(bad, np.nan, err), wave=wave)
    is_sky = np.asarray(is_sky, bool)
    if is_sky.sum() < min_sky:
        raise CalibrationError(f"sky_model: only {int(is_sky.sum())} sky fibers in the exposure")
    f = np.where(bad, 0.0, flux)
    w = np.where(bad, 0.0, 1.0 / np.where(bad, 1.0, err) ** 2)
    sky_glob, sky_var, good = _weighted_sky(f, w, is_sky, clip, np.where(bad, np.inf, err))
    sky_glob = np.where(np.isfinite(sky_glob), sky_glob, 0.0)
    edges = _bins(n_wave, n_bins)
    spline = smooth_interpolator(n_wave, edges)
    groups = np.unique(group)
    amp_scale = np.ones((groups.size, n_wave))
    flagged = np.zeros((groups.size, n_bins), bool)
    sky = np.empty_like(flux)
    qa_groups = {}
    for gi, g in enumerate(groups):
        members = group == g
        sky_rows = members & is_sky
        n_sky = int(sky_rows.sum())
        scale = np.ones(n_bins)
        slit = np.zeros((members.sum(), n_wave))
        if n_sky >= min_sky:
            gd = good[sky_rows]
            num = np.add.reduceat(np.where(gd, f[sky_rows], 0.0).sum(0), edges[:-1])
            den = np.add.reduceat(np.where(gd, sky_glob[None, :], 0.0).sum(0), edges[:-1])
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = num / den
            bad_bin = ~np.isfinite(ratio) | (np.abs(ratio - 1.0) > max_adjust)
            flagged[gi] = bad_bin
            scale = np.where(bad_bin, 1.0, ratio)
            amp_scale[gi] = spline @ scale
            if fiber_index is not None and slit_degree >= 1:
                slit = _slit_term(f, good, sky_glob * amp_scale[gi], members, sky_rows,
                                  np.asarray(fiber_index, float), edges, spline, slit_degree)
        else:
            flagged[gi] = True
        sky[members] = sky_glob[None, :] * amp_scale[gi][None, :] + slit
        qa_groups[g.item() if hasattr(g, "item") else g] = {
            "n_sky": n_sky,
            "n_flagged_bins": int(flagged[gi].sum()),
            "scale_min": float(amp_scale[gi].min()),
            "scale_max": float(amp_scale[gi].max()),
        }
    sky_error = np.sqrt(np.where(np.isfinite(sky_var), sky_var, 0.0))[None, :] * amp_scale[
        np.searchsorted(groups, group)
    ]
    with np.errstate(invalid="ignore", divide="ignore"):
        chi = np.where(bad[is_sky], np.nan, (flux[is_sky] - sky[is_sky]) / err[is_sky])
    return SkyResult(
        sky=sky,
        sky_error=sky_error,
        is_sky=is_sky,
        global_sky=sky_glob,
        amp_scale=amp_scale,
        flagged=flagged,
        groups=groups,
        qa={
            "n_sky": int(is_sky.sum()),
            "n_fibers": n,
            "sky_chi_std": float(np.nanstd(chi)),
            "groups": qa_groups,
        },
    )


def _slit_term(f, good, model, members, sky_rows, k, edges, spline, degree):
    """Additive smooth gradient along the slit for one amp: per wavelength bin, a polynomial in
    the fiber index (no constant term: the multiplicative scale already sets the mean) fitted
    to the sky fibers' mean residual in the bin; cubic spline across bins."""
    rows = np.flatnonzero(sky_rows)
    res = np.where(good[rows], f[rows] - model[None, :], 0.0)
    cnt = np.add.reduceat(good[rows].astype(float), edges[:-1], axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_res = np.add.reduceat(res, edges[:-1], axis=1) / cnt  # (n_sky, n_bins)
    kk = k[rows]
    centre = kk.mean()
    span = max(np.ptp(kk) / 2.0, 1.0)
    u = (kk - centre) / span
    basis = np.stack([u**p for p in range(1, degree + 1)], axis=1)
    basis = basis - basis.mean(axis=0)
    coef = np.zeros((degree, edges.size - 1))
    for b in range(edges.size - 1):
        ok = np.isfinite(mean_res[:, b])
        if ok.sum() > 3 * degree:
            coef[:, b], *_ = np.linalg.lstsq(basis[ok], mean_res[ok, b] - mean_res[ok, b].mean(), rcond=None)
    ua = (k[members] - centre) / span
    basis_all = np.stack([ua**p for p in range(1, degree + 1)], axis=1) - np.mean(
        np.stack([u**p for p in range(1, degree + 1)], axis=1), axis=0
    )
    return basis_all @ (coef @ spline.T)


def error_check(
    residual: np.ndarray,
    error: np.ndarray,
    is_sky: np.ndarray,
    group: np.ndarray,
    *,
    sky: np.ndarray | None = None,
    outlier: float = 10.0,
) -> dict:
    """Per group: std and robust std (1.4826 MAD) of residual / error over the sky fibers
    (|ratio| > ``outlier`` excluded from the plain std), their count, and with ``sky`` the
    systematic offset sum(residual) / sum(sky).  Also the overall values and the RMS over
    groups of the offsets."""
    z_all = np.asarray(residual, float) / np.asarray(error, float)
    is_sky = np.asarray(is_sky, bool)
    group = np.asarray(group)
    groups = np.unique(group)
    out = {"groups": groups, "std": [], "robust_std": [], "n": [], "offset": []}
    for g in groups:
        rows = is_sky & (group == g)
        z = z_all[rows]
        z = z[np.isfinite(z)]
        core = z[np.abs(z) <= outlier]
        out["n"].append(int(z.size))
        out["std"].append(float(np.std(core)) if core.size > 1 else np.nan)
        out["robust_std"].append(float(1.4826 * np.median(np.abs(z - np.median(z)))) if z.size else np.nan)
        if sky is not None:
            r = np.asarray(residual, float)[rows]
            s = np.asarray(sky, float)[rows]
            ok = np.isfinite(r) & np.isfinite(s)
            out["offset"].append(float(r[ok].sum() / s[ok].sum()) if ok.any() and s[ok].sum() != 0 else np.nan)
    for key in ("std", "robust_std", "n", "offset"):
        out[key] = np.array(out[key])
    zs = z_all[is_sky]
    zs = zs[np.isfinite(zs)]
    out["overall_std"] = float(np.std(zs[np.abs(zs) <= outlier])) if zs.size else float("nan")
    if sky is not None and out["offset"].size:
        out["offset_rms"] = float(np.sqrt(np.nanmean(out["offset"] ** 2)))
    return out
