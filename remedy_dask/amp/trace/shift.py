"""Per-frame trace shift: the global cross-dispersion offset of a frame against the calibration
trace (``measure_trace_shift``), to <= 0.002 px on simulated science frames.

Gaussian-windowed centroids (the estimator of :func:`remedy_dask.amp.trace.fit.windowed_centroid`, no
pixel-phase bias) of every fiber in every other column chunk, on the unbinned pixels, after
replacing masked pixels and cosmic rays by the chunk's median fiber profile.

Speed (~5 ms per amp on one idle core, 4-5x a numpy formulation, same shifts to 1e-8 px): one
compiled pass per fiber gathers its windows (15 rows x a chunk's columns, stored
[column, chunk * 16 + row] so that the rows of all chunks are SIMD lanes), replaces the outliers
in float32 (medians over the columns by a sorting network run on all lanes at once) and runs the centroids' Newton steps in float64 with the Gaussian window
factorised into per-row and per-column exponentials (no exp per pixel).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from remedy_dask.errors import CalibrationError
from remedy_dask.numeric.sortnet import median_network
from remedy_dask.numeric.robust import mad_sigma

HALF_WINDOW = 7  # rows gathered on each side of a fiber for the windowed centroid
_LANES = 16  # lanes per window in the kernel's work arrays (>= 2 * HALF_WINDOW + 1)
_N_OUT = 5  # kernel outputs per window: s, flux, fprime, err, snr
_U = np.uint64  # unsigned indices: no negative-index wrap-around checks in the hot loops


@njit(cache=True, nogil=True)
def _network_medians(buf, pairs, med):  # pragma: no cover - compiled
    """med[j] = median of buf[:, j] for every lane j (buf (n, n_lanes) float32 without NaN,
    reordered in place) by the compare-exchange ``pairs`` of :func:`median_network`."""
    n, n_lanes = buf.shape
    for p in range(pairs.shape[0]):
        ra, rb = buf[_U(pairs[p, 0])], buf[_U(pairs[p, 1])]
        for j in range(n_lanes):
            x, y = ra[j], rb[j]
            ra[j] = x if x < y else y
            rb[j] = y if x < y else x
    lo, hi = buf[(n - 1) // 2], buf[n // 2]
    for j in range(n_lanes):
        med[j] = np.float32(0.5) * (lo[j] + hi[j])


@njit(cache=True, nogil=True, error_model="numpy")
def _outlier_pass(vals, bad, thr, model, buf, pairs, hit):  # pragma: no cover - compiled
    """One outlier pass on fiber windows stored (n_columns, n_windows * _LANES): each column's
    flux (sum of its good pixels) times the median normalised profile over the columns (columns
    without a usable value at an offset take the mean of the others; offsets without any give
    0).  Good pixels more than ``thr`` + 0.3 |model| above the model become bad; all bad pixels
    (old and new) are replaced by the model.  hit[k] tells whether window k got new ones.
    Float32 as the numpy reference; ``model``/``buf`` are work space of the same shape."""
    width, n_lanes = vals.shape
    n_w = n_lanes // _LANES
    colsum = np.zeros((width, n_w), np.float32)
    total = np.zeros(n_lanes, np.float32)
    count = np.zeros(n_lanes, np.int64)
    for c in range(width):
        for k in range(n_w):
            s = np.float32(0.0)
            for i in range(k * _LANES, (k + 1) * _LANES):
                if not bad[c, i]:
                    s += vals[c, i]
            colsum[c, k] = s
            for i in range(k * _LANES, (k + 1) * _LANES):
                frac = vals[c, i] / s
                usable = not bad[c, i] and np.isfinite(frac)
                buf[c, i] = frac if usable else np.nan
                if usable:
                    total[i] += frac
                    count[i] += 1
    fill = np.zeros(n_lanes, np.float32)
    for j in range(n_lanes):
        if count[j] > 0:
            fill[j] = np.float32(np.float64(total[j]) / count[j])
    for c in range(width):
        for j in range(n_lanes):
            if np.isnan(buf[c, j]):
                buf[c, j] = fill[j]
    med = np.empty(n_lanes, np.float32)
    _network_medians(buf, pairs, med)
    for j in range(n_lanes):
        if count[j] == 0 or np.isnan(med[j]):
            med[j] = 0.0
    hit[:] = False
    for c in range(width):
        for k in range(n_w):
            cs = colsum[c, k] if np.isfinite(colsum[c, k]) else np.float32(0.0)
            for i in range(k * _LANES, (k + 1) * _LANES):
                m = med[i] * cs
                model[c, i] = m
                if not bad[c, i] and vals[c, i] > np.abs(m) * np.float32(0.3) + thr[c, i] + m:
                    bad[c, i] = True
                    hit[k] = True
                if bad[c, i]:
                    vals[c, i] = m


@njit(cache=True, nogil=True, error_model="numpy")
def _moments(wv, d, e, step, col_acc):  # pragma: no cover - compiled
    """sum wv exp(a o) o^k, k = 0, 1, 2, over one window wv[i, c] (offsets o = i - d[c]) given
    e[c] = exp(-a d[c]) and step = exp(a): the sums over rows, sum_i step^i i^k wv, run on all
    columns at once (col_acc (3, n_columns) work space), then o^k = sum_j binom i^j (-d)^(k-j)."""
    n_win, width = wv.shape
    col_acc[:] = 0.0
    p = 1.0
    for i in range(n_win):
        pi, pii = p * i, p * i * i
        for c in range(width):
            col_acc[0, c] += p * wv[i, c]
            col_acc[1, c] += pi * wv[i, c]
            col_acc[2, c] += pii * wv[i, c]
        p *= step
    m0 = m1 = m2 = 0.0
    for c in range(width):
        t0, t1, t2 = col_acc[0, c], col_acc[1, c], col_acc[2, c]
        m0 += e[c] * t0
        m1 += e[c] * (t1 - d[c] * t0)
        m2 += e[c] * (t2 - 2.0 * d[c] * t1 + d[c] * d[c] * t0)
    return m0, m1, m2


@njit(cache=True, nogil=True, error_model="numpy")
def _centroid(vals, var, lane0, d, inv_var, n_iter, max_step, wv0, w2v0, col_work,
              out):  # pragma: no cover - compiled
    """Windowed centroid s of one window (rows i at offsets o = i - d[c] from the trace) by
    Newton steps on f(s) = sum w(o - s) v (o - s), w Gaussian; out = (s, flux, d f/ds, error of
    s, S/N of the flux), moments and errors taken before the last step (which moves s by
    ~1e-4 px).  w(o - s) = w(o) exp(o s inv_var) exp(-s^2 inv_var / 2); w(o) by the recurrence
    w(o + 1) = w(o) r, r <- r exp(-inv_var), run on all columns at once.  Work space, float64:
    wv0/w2v0 (n_window, n_columns), col_work (6, n_columns)."""
    n_win, width = wv0.shape
    e = col_work[2]
    col_acc = col_work[3:6]
    decay = np.exp(-inv_var)
    for c in range(width):  # (column by column: the window's rows are contiguous)
        gc = np.exp(-0.5 * inv_var * d[c] * d[c])
        rc = np.exp(-0.5 * inv_var * (1.0 - 2.0 * d[c]))
        v_col, var_col = vals[c, lane0:lane0 + n_win], var[c, lane0:lane0 + n_win]
        for i in range(n_win):
            wv0[i, c] = gc * v_col[i]
            w2v0[i, c] = gc * gc * var_col[i]
            gc *= rc
            rc *= decay
    s = s_now = flux = fprime = step_e = 0.0
    for _ in range(n_iter):
        a = inv_var * s
        for c in range(width):
            e[c] = np.exp(-a * d[c]) if a != 0.0 else 1.0
        step_e = np.exp(a)
        m0, m1, m2 = _moments(wv0, d, e, step_e, col_acc)
        scale = np.exp(-0.5 * inv_var * s * s)
        flux = m0 * scale
        f = (m1 - s * m0) * scale
        fprime = inv_var * (m2 - 2.0 * s * m1 + s * s * m0) * scale - flux
        s_now = s
        step = -f / fprime if fprime < 0 else 2.0 * f / (flux if flux > 0 else 1.0)
        s += 0.0 if np.isnan(step) else min(max(step, -max_step), max_step)
    for c in range(width):  # exp(-2 a d) at the last evaluated s
        e[c] *= e[c]
    q0, q1, q2 = _moments(w2v0, d, e, step_e * step_e, col_acc)
    scale2 = np.exp(-inv_var * s_now * s_now)
    out[0], out[1], out[2] = s, flux, fprime
    out[3] = np.sqrt((q2 - 2.0 * s_now * q1 + s_now * s_now * q0) * scale2) / np.abs(fprime)
    out[4] = flux / np.sqrt(q0 * scale2)


@njit(cache=True, nogil=True)
def _gather(image, variance, mask, n_cols, rows0, cols, vals, var, bad,
            thr):  # pragma: no cover - compiled
    """Windows of one fiber from the flat images: vals/var/bad[c, k * _LANES + i] = pixel
    (rows0[k, c] + i, cols[k, c]); bad = non-finite or masked, vals 0 there; variance None
    (size 0) -> |v| + 9; the spare lanes are bad; thr = 5 sqrt(max(var, 1))."""
    n_chunks, width = rows0.shape
    n_win = 2 * HALF_WINDOW + 1
    has_var, has_mask = variance.size > 0, mask.size > 0
    for k in range(n_chunks):  # plain copies (neighbouring columns: neighbouring addresses)
        for c in range(width):
            base = _U(rows0[k, c]) * _U(n_cols) + _U(cols[k, c])
            j0 = k * _LANES
            for i in range(n_win):
                vals[c, j0 + i] = image[base + _U(i) * _U(n_cols)]
            if has_var:
                for i in range(n_win):
                    var[c, j0 + i] = variance[base + _U(i) * _U(n_cols)]
            if has_mask:
                for i in range(n_win):
                    bad[c, j0 + i] = mask[base + _U(i) * _U(n_cols)]
            else:
                bad[c, j0:j0 + n_win] = False
            vals[c, j0 + n_win:j0 + _LANES] = 0.0
            var[c, j0 + n_win:j0 + _LANES] = 0.0
            bad[c, j0 + n_win:j0 + _LANES] = True
    for c in range(width):  # flags and thresholds (SIMD)
        for j in range(vals.shape[1]):
            v = vals[c, j]
            w = var[c, j] if has_var else np.abs(v) + np.float32(9)
            b = bad[c, j] | (not np.isfinite(v)) | (not np.isfinite(w))
            bad[c, j] = b
            vals[c, j] = np.float32(0.0) if b else v
            var[c, j] = w
            thr[c, j] = np.sqrt(max(w, np.float32(1.0))) * np.float32(5.0)


@njit(cache=True, nogil=True, error_model="numpy")
def _window_kernel(image, variance, mask, n_cols, rows0, cols, t, sigma_w, pairs,
                   out):  # pragma: no cover - compiled
    """Gather, outlier replacement (2 passes, the second on the windows with new outliers) and
    centroid of every fiber window; images flat (``variance``/``mask`` of size 0: None),
    rows0 (n_fib, n_chunks, width) first window row, cols (n_chunks, width), t (n_fib,
    n_chunks, width) trace rows.  Fills out (n_fib, n_chunks, 5)."""
    n_fib, n_chunks, width = rows0.shape
    n_lanes = n_chunks * _LANES
    vals = np.empty((width, n_lanes), np.float32)
    var = np.empty_like(vals)
    thr = np.empty_like(vals)
    model = np.empty_like(vals)
    buf = np.empty_like(vals)
    bad = np.empty((width, n_lanes), np.bool_)
    hit = np.empty(n_chunks, np.bool_)
    wv0 = np.empty((2 * HALF_WINDOW + 1, width))
    w2v0 = np.empty_like(wv0)
    col_work = np.empty((6, width))
    d = np.empty(width)
    inv_var = 1.0 / sigma_w**2
    for f in range(n_fib):
        _gather(image, variance, mask, n_cols, rows0[f], cols, vals, var, bad, thr)
        _outlier_pass(vals, bad, thr, model, buf, pairs, hit)
        redo = np.flatnonzero(hit)
        if redo.size:  # second pass on the windows with new outliers only
            lanes = (redo[:, None] * _LANES + np.arange(_LANES)[None, :]).ravel()
            sub_v, sub_b, sub_t = vals[:, lanes], bad[:, lanes], thr[:, lanes]
            _outlier_pass(sub_v, sub_b, sub_t, model[:, :lanes.size], buf[:, :lanes.size],
                          pairs, hit[:redo.size])
            vals[:, lanes], bad[:, lanes] = sub_v, sub_b
        for c in range(width):  # bad pixels carry no variance (one contiguous pass)
            for i in range(n_lanes):
                var[c, i] = np.float32(0.0) if bad[c, i] else var[c, i]
        for k in range(n_chunks):
            for c in range(width):
                d[c] = np.float32(t[f, k, c] - rows0[f, k, c])
            _centroid(vals, var, k * _LANES, d, inv_var, 3, 0.5, wv0, w2v0, col_work, out[f, k])


def measure_trace_shift(image: np.ndarray, variance: np.ndarray | None, mask: np.ndarray | None,
                        trace: np.ndarray, *, n_chunks: int = 43, chunk_step: int = 2,
                        sigma_w: float = 1.4, min_snr: float = 5.0) -> float:
    """Global cross-dispersion shift (px) of a frame against the calibration trace:
    ``row_in_frame = trace + shift``.

    Windowed centroids of every fiber in column chunks, on unbinned pixels (all sub-pixel phases),
    after replacing masked pixels and cosmic rays by the chunk's median fiber profile; the
    per-chunk estimates are combined with inverse-variance weights and 4-sigma clipping.  Every
    ``chunk_step``-th chunk is used (the statistical error is far below the 0.03 px needed).
    The pixel windows are cleaned in float32, the centroids computed in float64.
    """
    img = np.asarray(image)
    n_rows, n_cols = img.shape
    width = n_cols // n_chunks
    chunk_ids = np.arange(0, n_chunks, max(chunk_step, 1))
    cols = chunk_ids[:, None] * width + np.arange(width)  # (n_used, width)
    t = np.asarray(trace, dtype=float)[:, cols]  # (n_fib, n_used, width)
    n_win = 2 * HALF_WINDOW + 1
    rows0 = np.clip(np.round(t).astype(np.intp) - HALF_WINDOW, 0, n_rows - n_win)
    flat_var = (np.zeros(0, np.float32) if variance is None
                else np.ascontiguousarray(variance).reshape(-1))
    flat_mask = (np.zeros(0, bool) if mask is None
                 else np.ascontiguousarray(mask, dtype=bool).reshape(-1))
    out = np.empty(t.shape[:2] + (_N_OUT,))
    _window_kernel(np.ascontiguousarray(img).reshape(-1), flat_var, flat_mask, n_cols, rows0,
                   cols, t, float(sigma_w), median_network(width), out)
    s, flux, fprime, err, snr = (out[..., j].ravel() for j in range(_N_OUT))
    ok = ((flux > 0) & (fprime < 0) & np.isfinite(s) & np.isfinite(err) & (err > 0)
          & (snr > min_snr) & (np.abs(s) < 1.5))
    if ok.sum() < 10:
        raise CalibrationError(f"trace shift: only {ok.sum()} usable fiber chunks (too little light)")
    s, err = s[ok], err[ok]
    keep = np.ones(s.size, dtype=bool)
    mean = np.median(s)
    for _ in range(5):
        wgt = 1.0 / err[keep] ** 2
        mean = float(np.sum(wgt * s[keep]) / wgt.sum())
        chi = (s - mean) / err
        scale = max(mad_sigma(chi), 1.0)
        keep = np.abs(chi) < 4.0 * scale
    return mean
