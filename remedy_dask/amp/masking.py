"""Spectral mask of an amp (or a stack of amps) on the native grid, with per-rule counts.

Remedy's rules (reference section 3.8), made consistent:

1. ``chi2``: a fiber-column whose reduced chi^2 against the profile model exceeds
   ``chi2_max``, or two adjacent columns both above ``chi2_pair`` (a moderate defect spanning
   columns, e.g. a partly bad column or a cosmic-ray halo), masked and dilated by
   ``dilate`` columns each side (Remedy: +-2 then +-1 more, i.e. +-3).  The extraction already
   rejects cosmic-ray pixels and computes chi^2 without them, so clean data rarely trips this.
2. ``extraction``: fiber-columns the extraction could not measure (too much of the profile on
   bad pixels, no wavelength coverage, ...).
3. ``low_throughput``: elements with ftf below ``ftf_min``; ``dead``: whole fibers whose
   median ftf is below ``dead_ftf`` (0.5, the documented value; Remedy's code used 0.3 for
   both).
4. ``fiber``: fibers with more than ``max_fiber_fraction`` of their columns masked.
5. Per amp (``group``): ``column``: columns with more than ``max_column_fraction`` of the
   amp's fibers masked; ``amp``: the whole amp when more than ``max_amp_fraction`` is masked.

Counts are of pixels *newly* masked by each rule, in the order above.
"""

from __future__ import annotations

import numpy as np

from remedy_dask.errors import CalibrationError


def spectral_mask(
    chi2: np.ndarray,
    extraction_mask: np.ndarray,
    ftf: np.ndarray | None = None,
    *,
    group: np.ndarray | None = None,
    chi2_max: float = 5.0,
    chi2_pair: float = 3.0,
    dilate: int = 1,
    ftf_min: float = 0.3,
    dead_ftf: float = 0.5,
    max_fiber_fraction: float = 0.2,
    max_column_fraction: float = 0.2,
    max_amp_fraction: float = 0.2,
) -> tuple[np.ndarray, dict]:
    """Mask (n, m) bool and a dict of per-rule counts plus the masked fibers and amps.

    ``chi2``, ``extraction_mask`` (n, m); ``ftf`` (n,) or (n, m) on the same grid (see
    :func:`remedy_dask.exposure.fiberflat.ftf_on_native`), NaN = unmeasured; ``group`` (n,) amp label
    per row (default: all rows one amp).
    """
    chi2 = np.asarray(chi2, dtype=np.float64)
    ext = np.asarray(extraction_mask, dtype=bool)
    if chi2.ndim != 2 or ext.shape != chi2.shape:
        raise CalibrationError("spectral_mask: chi2 and extraction_mask must be 2-D of one shape")
    n, m = chi2.shape
    group = np.zeros(n, int) if group is None else np.asarray(group)
    if group.shape != (n,):
        raise CalibrationError("spectral_mask: group must have one label per row")
    counts: dict = {}
    mask = np.zeros((n, m), bool)

    def add(rule: str, new: np.ndarray) -> None:
        counts[rule] = int(np.count_nonzero(new & ~mask))
        mask[...] |= new

    add("chi2", _chi2_seeds(chi2, chi2_max, chi2_pair, dilate))
    add("extraction", ext)
    dead = np.zeros(n, bool)
    if ftf is not None:
        f = np.asarray(ftf, dtype=np.float64)
        f2 = np.broadcast_to(f[:, None], (n, m)) if f.ndim == 1 else f
        if f2.shape != (n, m):
            raise CalibrationError(f"spectral_mask: ftf shape {f.shape} does not match {(n, m)}")
        with np.errstate(invalid="ignore"):
            add("low_throughput", ~(f2 >= ftf_min))
        dead = _dead_fibers(f2, dead_ftf)
        add("dead", np.broadcast_to(dead[:, None], (n, m)))
    bad_fiber = mask.mean(axis=1) > max_fiber_fraction
    add("fiber", np.broadcast_to(bad_fiber[:, None], (n, m)))
    col_new = np.zeros((n, m), bool)
    amp_new = np.zeros((n, m), bool)
    bad_amps = []
    for g in np.unique(group):
        rows = group == g
        cols = mask[rows].mean(axis=0) > max_column_fraction
        col_new[np.ix_(rows, cols)] = True
    add("column", col_new)
    for g in np.unique(group):
        rows = group == g
        if mask[rows].mean() > max_amp_fraction:
            amp_new[rows] = True
            bad_amps.append(g.item() if hasattr(g, "item") else g)
    add("amp", amp_new)
    counts["total"] = int(mask.sum())
    counts["fraction"] = float(mask.mean())
    counts["dead_fibers"] = np.flatnonzero(dead).tolist()
    counts["masked_fibers"] = np.flatnonzero(mask.all(axis=1)).tolist()
    counts["masked_amps"] = bad_amps
    return mask, counts


def _chi2_seeds(chi2: np.ndarray, chi2_max: float, chi2_pair: float, dilate: int) -> np.ndarray:
    """Pixels above ``chi2_max``, or two neighbours along the wavelength both above
    ``chi2_pair``, grown by ``dilate`` columns (NaN chi2 counts as 0)."""
    c = np.where(np.isfinite(chi2), chi2, 0.0)
    high = c > chi2_max
    pair = np.zeros_like(high)
    both = (c[:, 1:] > chi2_pair) & (c[:, :-1] > chi2_pair)
    pair[:, 1:] |= both
    pair[:, :-1] |= both
    seed = high | pair
    out = seed.copy()
    for k in range(1, min(dilate, seed.shape[1] - 1) + 1):  # grown along the rows
        out[:, k:] |= seed[:, :-k]
        out[:, :-k] |= seed[:, k:]
    return out


def _dead_fibers(ftf: np.ndarray, dead_ftf: float) -> np.ndarray:
    """Fibers whose median measured throughput is below ``dead_ftf`` (or unmeasured)."""
    med = np.full(ftf.shape[0], np.nan)
    n = np.count_nonzero(~np.isnan(ftf), axis=1)
    rows = np.flatnonzero(np.isfinite(ftf).any(axis=1))  # (none finite: unmeasured)
    if rows.size:  # np.nanmedian's value: NaN sort last; the middle one or the mean of two
        s, k = np.sort(ftf[rows], axis=1), n[rows]
        lo = s[np.arange(rows.size), (k - 1) // 2]
        hi = s[np.arange(rows.size), k // 2]
        with np.errstate(invalid="ignore", over="ignore"):
            med[rows] = np.where(k % 2 == 0, (lo + hi) / 2.0, hi)
    return ~(med >= dead_ftf)
