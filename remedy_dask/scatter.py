"""Scattered light, and the fiber + smooth-background model of column-chunk cross-sections.

Scattered light (``scattered_light``).  Remedy (§3.5) takes medians in the slit-group gaps and
below/above the fibers.  Two problems: (1) the profile wings (~10% of the light, sigma ~3 px)
still put light worth ~1/3 of the scattered light into a gap centre 8.7 px from two fibers;
(2) between the four sampled rows the background is only interpolated.  Here, per column chunk,
only rows at least 6 px from every fiber are used (gaps, below and above the fibers: the fiber
cores, whose width varies over the chip, never enter), and they are modelled as

    d(x, y) = sum_m c_m T_m(x, y) + a + b x + c y + sum_k A_k W(|y - t_k|)

where T_m is the chip's own fiber light (amplitude map) convolved with broad halo kernels
(1 + (r/r0)^2)^-1.5 of several r0, W is the far wing (6-14 px, free nodes) of the fiber profile
and A_k the fiber amplitudes measured on the cores.  All linear; the halo templates carry the
shape of the scattered light (dips at the gaps, fall-off at the chip edges) into the groups.

The joint fiber model (``fit_amplitudes_and_background``, ``fit_profile_and_background``), used
by the trace to remove neighbours' light, fits every chunk cross-section as fibers with one
shared empirical profile plus per-fiber width terms, on a tensor-B-spline background.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.interpolate import BSpline
from scipy.linalg import solveh_banded
from scipy.optimize import lsq_linear

from remedy_dask.errors import CalibrationError

PROFILE_RADIUS = 14.0  # px, extent of the empirical profile (wings included)
# |r| nodes of the empirical profile (linear interpolation): fine in the core, coarse in the wings
PROFILE_NODES = np.r_[np.arange(0.0, 4.0, 0.05), np.arange(4.0, 8.0, 0.25),
                      np.arange(8.0, PROFILE_RADIUS + 0.01, 0.5)]
KNOT_SPACING_ROWS = 64.0
KNOT_SPACING_COLS = 96.0


def _nan_median_last(values: np.ndarray) -> np.ndarray:
    """Median over the last axis ignoring NaN (NaN where all are NaN), by one sort."""
    srt = np.sort(values, axis=-1)  # NaN sort last
    n = np.isfinite(values).sum(-1)
    lo = np.take_along_axis(srt, np.maximum((n - 1) // 2, 0)[..., None], -1)[..., 0]
    hi = np.take_along_axis(srt, np.maximum(n // 2, 0)[..., None], -1)[..., 0]
    return np.where(n > 0, 0.5 * (lo + np.where(n % 2 == 1, lo, hi)), np.nan)


def chunk_profiles(image: np.ndarray, variance: np.ndarray | None, mask: np.ndarray | None,
                   n_chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """Robust mean of each row over column chunks: ``(profiles (n_chunks, n_rows), centres)``.

    Pixels masked or more than 6 sigma (+15%) from the chunk-row median are left out; rows with
    no usable pixel are NaN.  The last ``n_cols % n_chunks`` columns are not used.
    """
    n_rows, n_cols = image.shape
    width = n_cols // n_chunks
    used = width * n_chunks
    d = np.array(image[:, :used], dtype=float)
    bad = ~np.isfinite(d)
    if mask is not None:
        bad |= mask[:, :used]
    d[bad] = np.nan
    d = d.reshape(n_rows, n_chunks, width)
    bad = bad.reshape(n_rows, n_chunks, width)
    med = _nan_median_last(d)[..., None]
    if variance is not None:
        var = _nan_median_last(np.where(bad, np.nan, variance[:, :used].reshape(d.shape)))[..., None]
    else:
        var = np.abs(med) + 10.0
    with np.errstate(invalid="ignore"):
        tol = 6.0 * np.sqrt(np.maximum(np.nan_to_num(var, nan=1.0), 1.0)) + 0.15 * np.abs(med)
        good = ~bad & (np.abs(d - med) <= tol)
    n = good.sum(-1)
    profiles = np.where(n > 0, np.where(good, d, 0.0).sum(-1) / np.maximum(n, 1), np.nan).T
    centres = np.arange(n_chunks) * width + 0.5 * (width - 1)
    return profiles, centres


def chunk_positions(trace: np.ndarray, n_chunks: int) -> np.ndarray:
    """Mean trace row of every fiber over each column chunk (as ``chunk_profiles``):
    (n_chunks, n_fibers)."""
    width = trace.shape[1] // n_chunks
    return trace[:, :width * n_chunks].reshape(trace.shape[0], n_chunks, width).mean(-1).T


def profile_eval(table: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Symmetric profile tabulated at |r| = ``PROFILE_NODES`` (linear interpolation, 0 beyond)."""
    return np.interp(np.abs(r), PROFILE_NODES[:table.size], table, right=0.0)


def profile_integral(table: np.ndarray) -> float:
    """Integral over r of the symmetric, piecewise-linear profile."""
    return float(2.0 * np.trapezoid(table, PROFILE_NODES[:table.size]))


def _hat_weights(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower node index and fractional weight of the upper node for |r| on PROFILE_NODES."""
    x = np.abs(r)
    i = np.clip(np.searchsorted(PROFILE_NODES, x, side="right") - 1, 0, PROFILE_NODES.size - 2)
    frac = (x - PROFILE_NODES[i]) / (PROFILE_NODES[i + 1] - PROFILE_NODES[i])
    return i, frac


def bspline_basis(x: np.ndarray, length: int, spacing: float) -> np.ndarray:
    """Dense cubic B-spline basis on [0, length - 1] with uniform knots ~``spacing`` apart."""
    n_int = max(int(round((length - 1) / spacing)), 1)
    inner = np.linspace(0.0, length - 1.0, n_int + 1)
    knots = np.r_[[inner[0]] * 3, inner, [inner[-1]] * 3]
    xc = np.clip(np.asarray(x, dtype=float), 0.0, length - 1.0)
    return BSpline.design_matrix(xc, knots, 3).toarray()


def width_derivative(table: np.ndarray) -> np.ndarray:
    """Change of the unit-integral profile P_s(r) = P(r/s)/s with the width s at s = 1:
    Q = -(P + r P'), tapered to zero between 4 and 6 px (only the core changes width)."""
    r = PROFILE_NODES[:table.size]
    taper = np.clip((6.0 - r) / 2.0, 0.0, 1.0) ** 2
    return -(table + r * np.gradient(table, r)) * taper


def _fiber_design(pos: np.ndarray, shapes: list[np.ndarray], good: np.ndarray
                  ) -> sparse.csr_matrix:
    """Sparse design (n_chunks * n_rows, n_chunks * n_fib * n_shapes): radial ``shapes`` (on
    PROFILE_NODES) centred on every fiber of every chunk; column (j * n_fib + k) * n_shapes + s."""
    n_chunks, n_rows = good.shape
    n_fib, n_sh = pos.shape[1], len(shapes)
    half = int(PROFILE_RADIUS)
    rows = np.round(pos).astype(int)[..., None] + np.arange(-half, half + 1)  # (nc, nf, nw)
    rows_c = np.clip(rows, 0, n_rows - 1)
    chunk = np.broadcast_to(np.arange(n_chunks)[:, None, None], rows.shape)
    keep = ((rows >= 0) & (rows < n_rows) & good[chunk, rows_c]).ravel()
    pix = (chunk * n_rows + rows_c).ravel()[keep]
    base = ((np.arange(n_chunks)[:, None] * n_fib + np.arange(n_fib)) * n_sh)[..., None]
    base = np.broadcast_to(base, rows.shape).ravel()[keep]
    r = (rows - pos[..., None]).ravel()[keep]
    vals = np.concatenate([profile_eval(shape, r) for shape in shapes])
    cols = np.concatenate([base + i for i in range(n_sh)])
    return sparse.csr_matrix((vals, (np.tile(pix, n_sh), cols)),
                             shape=(n_chunks * n_rows, n_chunks * n_fib * n_sh))


def _background_bases(centres: np.ndarray, n_cols: int, n_rows: int) -> tuple[np.ndarray, np.ndarray]:
    return (bspline_basis(centres, n_cols, KNOT_SPACING_COLS),
            bspline_basis(np.arange(n_rows), n_rows, KNOT_SPACING_ROWS))


@dataclass
class FiberFit:
    """Fibers + background of the chunk cross-sections for a given profile."""

    amp: np.ndarray  # (n_chunks, n_fib) total fiber flux (e- per column)
    width: np.ndarray  # (n_chunks, n_fib) amplitude of the width term (~ amp * widening)
    coeff: np.ndarray  # (nx, ny) background B-spline coefficients
    chunk_background: np.ndarray  # (n_chunks, n_rows)


def fit_amplitudes_and_background(profiles: np.ndarray, pos: np.ndarray, table: np.ndarray,
                                  centres: np.ndarray, n_cols: int) -> FiberFit:
    """Given the profile, solve the amplitude and width term of every fiber in every chunk and a
    tensor-B-spline background jointly: exact linear least squares, the banded per-chunk fiber
    blocks eliminated by a Schur complement."""
    n_chunks, n_rows = profiles.shape
    n_fib = pos.shape[1]
    good = np.isfinite(profiles)
    w = good.astype(float)
    data = np.where(good, profiles, 0.0)
    m = 2 * n_fib
    design = _fiber_design(pos, [table, width_derivative(table)], good)
    bx, by = _background_bases(centres, n_cols, n_rows)
    nx, ny = bx.shape[1], by.shape[1]
    aa = (design.T @ design).tocoo()
    blk, ii, jj = aa.row // m, aa.row % m, aa.col % m
    lower = (ii >= jj) & (aa.col // m == blk)
    band = int((ii - jj)[lower].max())
    ab = np.zeros((n_chunks, band + 1, m))
    ab[blk[lower], (ii - jj)[lower], jj[lower]] = aa.data[lower]
    ab[:, 0, :] = ab[:, 0, :] * (1.0 + 1e-9) + 1e-9 * ab[:, 0, :].max(axis=1, keepdims=True)
    xtby = np.asarray(design.T @ np.tile(by, (n_chunks, 1))).reshape(n_chunks, m, ny)
    rhs_a = np.asarray(design.T @ data.ravel()).reshape(n_chunks, m)
    rhs = np.concatenate([xtby, rhs_a[..., None]], axis=2)
    sol = np.stack([solveh_banded(ab[j], rhs[j], lower=True, check_finite=False)
                    for j in range(n_chunks)])
    inv_by, inv_rhs = sol[..., :ny], sol[..., ny]
    gy = by.T[None, :, :] @ (w[:, :, None] * by[None, :, :])  # (nc, ny, ny)
    schur_y = gy - np.einsum("jkb,jkc->jbc", xtby, inv_by, optimize=True)
    normal = np.einsum("ja,jd,jbc->abdc", bx, bx, schur_y, optimize=True).reshape(nx * ny, nx * ny)
    rhs_y = (w * data) @ by - np.einsum("jkb,jk->jb", xtby, inv_rhs)
    rhs_b = np.einsum("ja,jb->ab", bx, rhs_y).ravel()
    normal[np.diag_indices_from(normal)] *= 1.0 + 1e-10
    coeff = np.linalg.solve(normal, rhs_b).reshape(nx, ny)
    coef = (inv_rhs - np.einsum("jkb,jb->jk", inv_by, bx @ coeff)).reshape(n_chunks, n_fib, 2)
    return FiberFit(amp=coef[..., 0], width=coef[..., 1], coeff=coeff,
                    chunk_background=bx @ coeff @ by.T)


def fit_profile_and_background(profiles: np.ndarray, pos: np.ndarray, fibers: FiberFit,
                               table: np.ndarray, use: np.ndarray, centres: np.ndarray,
                               n_cols: int) -> np.ndarray:
    """Least-squares fit of the shared profile (jointly with the background), with the fiber
    amplitudes and width terms (evaluated with the current ``table``) held fixed.  Returns the
    new profile table on PROFILE_NODES with unit integral."""
    n_chunks, n_rows = profiles.shape
    n_nodes = PROFILE_NODES.size - 1  # the node at R is fixed to zero
    good = np.isfinite(profiles)
    w = good.astype(float)
    width_img = _fiber_design(pos, [width_derivative(table)], good) @ fibers.width.ravel()
    data = np.where(good, profiles, 0.0) - width_img.reshape(n_chunks, n_rows)
    half = int(PROFILE_RADIUS)
    rows = np.round(pos).astype(int)[..., None] + np.arange(-half, half + 1)
    rows_c = np.clip(rows, 0, n_rows - 1)
    chunk = np.broadcast_to(np.arange(n_chunks)[:, None, None], rows.shape)
    r = rows - pos[..., None]
    keep = ((rows >= 0) & (rows < n_rows) & good[chunk, rows_c] & (np.abs(r) < PROFILE_RADIUS)
            & use[..., None])
    node, frac = _hat_weights(r[keep])
    a = np.broadcast_to(fibers.amp[..., None], rows.shape)[keep]
    pix = np.tile((chunk * n_rows + rows_c)[keep], 2)
    jj = np.tile(chunk[keep], 2)
    vals = np.concatenate([a * (1 - frac), a * frac])
    nodes = np.concatenate([node, node + 1])
    sel = nodes < n_nodes
    design_p = sparse.csr_matrix((vals[sel], (pix[sel], nodes[sel])),
                                 shape=(n_chunks * n_rows, n_nodes))
    design_pj = sparse.csr_matrix((vals[sel], (pix[sel], jj[sel] * n_nodes + nodes[sel])),
                                  shape=(n_chunks * n_rows, n_chunks * n_nodes))
    bx, by = _background_bases(centres, n_cols, n_rows)
    nx, ny = bx.shape[1], by.shape[1]
    gy = by.T[None, :, :] @ (w[:, :, None] * by[None, :, :])
    cc = np.einsum("ja,jd,jbc->abdc", bx, bx, gy, optimize=True).reshape(nx * ny, nx * ny)
    rhs_c = np.einsum("ja,jb->ab", bx, (w * data) @ by).ravel()
    tj = np.asarray(design_pj.T @ np.tile(by, (n_chunks, 1))).reshape(n_chunks, n_nodes, ny)
    pc = np.einsum("ja,jgb->gab", bx, tj, optimize=True).reshape(n_nodes, nx * ny)
    pp = (design_p.T @ design_p).toarray()
    d2 = np.diff(np.eye(n_nodes), 2, axis=0)
    pp += 1e-6 * np.trace(pp) / n_nodes * d2.T @ d2  # mild curvature penalty on the wings
    normal = np.block([[pp, pc], [pc.T, cc]])
    normal[np.diag_indices_from(normal)] *= 1.0 + 1e-10
    sol = np.linalg.solve(normal, np.concatenate([design_p.T @ data.ravel(), rhs_c]))
    new_table = np.r_[sol[:n_nodes], 0.0]
    integral = profile_integral(new_table)
    if not np.isfinite(integral) or integral <= 0:
        raise CalibrationError("empirical fiber profile fit failed (non-positive integral)")
    return new_table / integral


def initial_profile() -> np.ndarray:
    """Starting profile: Gaussian core (sigma 1.4 px) with 10% Gaussian wings (sigma 3 px)."""
    r = PROFILE_NODES
    return (0.9 * np.exp(-0.5 * (r / 1.4) ** 2) / (np.sqrt(2 * np.pi) * 1.4)
            + 0.1 * np.exp(-0.5 * (r / 3.0) ** 2) / (np.sqrt(2 * np.pi) * 3.0))


# --------------------------------------------------------------------------------------------
# scattered light from gaps and edges with halo templates
# --------------------------------------------------------------------------------------------
HALO_R0 = (25.0, 70.0, 200.0)  # px, core radii of the halo kernels (1 + (r/r0)^2)^-1.5
WING_NODES = np.arange(6.0, 15.0, 1.0)  # px, far-wing nodes (W = 0 at the last)
MIN_DISTANCE = 6.0  # px, rows closer than this to a fiber are not used


def core_amplitudes(profiles: np.ndarray, pos: np.ndarray, background: np.ndarray | float = 0.0,
                    half: int = 3) -> np.ndarray:
    """Fiber light in +-``half`` rows of each fiber of each chunk, background removed."""
    n_rows = profiles.shape[1]
    rows = np.clip(np.round(pos).astype(int)[..., None] + np.arange(-half, half + 1), 0, n_rows - 1)
    chunk = np.arange(profiles.shape[0])[:, None, None]
    bg = background[chunk, rows] if np.ndim(background) == 2 else background
    return np.nan_to_num(profiles[chunk, rows] - bg).sum(-1)


def _light_map(pos: np.ndarray, amp: np.ndarray, n_rows: int) -> np.ndarray:
    """Fiber amplitudes deposited at their rows (linear split between two rows): (n_chunks, n_rows)."""
    n_chunks = pos.shape[0]
    lo = np.clip(np.floor(pos).astype(int), 0, n_rows - 2)
    frac = np.clip(pos - lo, 0.0, 1.0)
    chunk = np.broadcast_to(np.arange(n_chunks)[:, None], pos.shape)
    out = np.zeros((n_chunks, n_rows))
    np.add.at(out, (chunk, lo), amp * (1 - frac))
    np.add.at(out, (chunk, lo + 1), amp * frac)
    return out


def halo_templates(light: np.ndarray, centres: np.ndarray, r0s: tuple[float, ...] = HALO_R0
                   ) -> np.ndarray:
    """The light map (n_chunks, n_rows) on uniformly spaced chunk centres convolved in 2-D with
    (1 + (r/r0)^2)^-1.5 kernels (FFT, zero padded).  Returns (n_kernels, n_chunks, n_rows), each
    normalised to the total light."""
    n_chunks, n_rows = light.shape
    step = (centres[-1] - centres[0]) / max(n_chunks - 1, 1)
    shape = (2 * n_chunks, 2 * n_rows)
    dx = np.fft.fftfreq(shape[0], 1.0 / shape[0]) * step
    dy = np.fft.fftfreq(shape[1], 1.0 / shape[1])
    r2 = dx[:, None] ** 2 + dy[None, :] ** 2
    spec = np.fft.rfft2(light, shape)
    out = []
    for r0 in r0s:
        kernel = (1.0 + r2 / r0**2) ** -1.5
        conv = np.fft.irfft2(spec * np.fft.rfft2(kernel), shape)[:n_chunks, :n_rows]
        out.append(conv / max(conv.sum(), 1e-30) * light.sum())
    return np.stack(out)


def scattered_light(image: np.ndarray, trace: np.ndarray, mask: np.ndarray | None = None, *,
                    variance: np.ndarray | None = None, n_chunks: int = 43,
                    min_distance: float = MIN_DISTANCE, n_iter: int = 2) -> np.ndarray:
    """Smooth scattered-light image (e-) under the fibers of ``image`` traced by ``trace``.

    Fitted on the rows at least ``min_distance`` px from every fiber (see the module docstring).
    Raises CalibrationError if the trace does not fit the image or too few rows are free.
    """
    img = np.asarray(image, dtype=float)
    n_rows, n_cols = img.shape
    if trace.ndim != 2 or trace.shape[1] != n_cols or not np.all(np.isfinite(trace)):
        raise CalibrationError("scattered light: trace missing, non-finite or of the wrong width")
    profiles, centres = chunk_profiles(img, variance, mask, n_chunks)
    pos = chunk_positions(trace, n_chunks)
    rows = np.arange(n_rows)
    # the 4 fibers around every (chunk, row): indices and distances (pos is sorted per chunk)
    order = np.argsort(pos, axis=1)
    spos = np.take_along_axis(pos, order, axis=1)
    above = np.stack([np.searchsorted(spos[j], rows) for j in range(n_chunks)])  # (nc, nr)
    near = above[..., None] + np.arange(-2, 2)  # (nc, nr, 4)
    exists = (near >= 0) & (near < pos.shape[1])
    near = np.clip(near, 0, pos.shape[1] - 1)
    chunk = np.arange(n_chunks)[:, None, None]
    near_fiber = order[chunk, near]
    dist = np.where(exists, np.abs(rows[None, :, None] - spos[chunk, near]), np.inf)
    free = (dist.min(-1) >= min_distance) & np.isfinite(profiles)
    if free.sum() < 10 * n_chunks:
        raise CalibrationError(f"scattered light: only {free.sum()} rows free of fiber light")
    jj, yy = np.nonzero(free)
    data = profiles[jj, yy]
    dsel, fsel = dist[jj, yy], near_fiber[jj, yy]  # (n, 4)
    n_w = WING_NODES.size - 1
    wing = np.zeros((jj.size, n_w))
    x = np.clip(np.nan_to_num((dsel - WING_NODES[0]) / (WING_NODES[1] - WING_NODES[0]),
                              posinf=n_w), 0.0, n_w)
    g = np.floor(x).astype(int)
    frac = x - g
    background = np.zeros_like(profiles)
    xu = 2.0 * centres[jj] / (n_cols - 1) - 1.0
    yu = 2.0 * yy / (n_rows - 1) - 1.0
    coef = np.zeros(0)
    keep = np.ones(jj.size, dtype=bool)
    for _ in range(n_iter):
        amp = core_amplitudes(profiles, pos, background)
        a = amp[jj[:, None], fsel]  # (n, 4)
        wing[:] = 0.0
        for node, wgt in ((g, 1 - frac), (g + 1, frac)):
            ok = node < n_w
            np.add.at(wing, (np.nonzero(ok)[0], node[ok]), (a * wgt)[ok])
        templates = halo_templates(_light_map(pos, amp, n_rows), centres)
        tcols = templates[:, jj, yy].T  # (n, n_kernels)
        design = np.column_stack([tcols, np.ones_like(xu), xu, yu, wing])
        n_t = templates.shape[0]
        # halo amplitudes and wing nodes are physically >= 0: the bounds remove the nearly
        # degenerate combinations of halo templates that noise would otherwise pick
        lower = np.r_[np.zeros(n_t), -np.inf, -np.inf, -np.inf, np.zeros(n_w)]
        for _ in range(3):  # robust: clip outlying rows (residual cosmic rays, bad pixels)
            scale = np.sqrt(np.mean(design[keep] ** 2, axis=0)) + 1e-30
            coef = lsq_linear(design[keep] / scale, data[keep], bounds=(lower, np.inf)).x / scale
            res = data - design @ coef
            sig = 1.4826 * np.median(np.abs(res[keep])) + 1e-9
            keep = np.abs(res) < 5.0 * sig
        background = (np.tensordot(coef[:n_t], templates, axes=1) + coef[n_t]
                      + coef[n_t + 1] * (2.0 * centres[:, None] / (n_cols - 1) - 1.0)
                      + coef[n_t + 2] * (2.0 * rows[None, :] / (n_rows - 1) - 1.0))
    # to every column: linear interpolation between chunk centres (held beyond the end ones)
    cols = np.arange(n_cols)
    idx = np.clip(np.searchsorted(centres, cols) - 1, 0, n_chunks - 2)
    t = np.clip((cols - centres[idx]) / (centres[idx + 1] - centres[idx]), 0.0, 1.0)
    return (background[idx] * (1 - t)[:, None] + background[idx + 1] * t[:, None]).T
