"""Error check of a sky subtraction: how the residuals of the sky fibers compare with their
errors, per group (amp) and overall."""

from __future__ import annotations

import numpy as np

from remedy_dask.numeric.rowstats import group_ratio_of_sums, group_ratio_stats, group_rows


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
    residual = np.asarray(residual, np.float64)
    error = np.asarray(error, np.float64)
    is_sky = np.asarray(is_sky, bool)
    group = np.asarray(group)
    groups = np.unique(group)
    rows = np.flatnonzero(is_sky)
    _, order, bounds = group_rows(group, groups, rows)
    rows = rows[order]
    n, n_core, mean, m2, robust = group_ratio_stats(residual, error, rows, bounds, outlier)
    with np.errstate(invalid="ignore", divide="ignore"):
        std = np.where(n_core > 1, np.sqrt(m2 / n_core), np.nan)
    out = {"groups": groups, "std": std, "robust_std": robust, "n": n,
           "offset": np.array([]) if sky is None
           else group_ratio_of_sums(residual, np.asarray(sky, np.float64), rows, bounds)}
    # overall std of the core: the groups' means and squared deviations combined exactly
    has = n_core > 0
    c = n_core[has].sum()
    if n.sum() == 0 or c == 0:
        out["overall_std"] = float("nan")
    else:
        mu = float(np.sum(n_core[has] * mean[has]) / c)
        between = np.sum(n_core[has] * (mean[has] - mu) ** 2)
        out["overall_std"] = float(np.sqrt((m2[has].sum() + between) / c))
    if sky is not None and out["offset"].size:
        out["offset_rms"] = float(np.sqrt(np.nanmean(out["offset"] ** 2)))
    return out
