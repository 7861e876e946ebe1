"""Fiber profile: measured on a synthetic flat whose pixel-integrated profile is known exactly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf

from remedy_dask.errors import CalibrationError
from remedy_dask.amp.profile.fit import measure_profile
from remedy_dask.amp.profile.model import ProfileModel, bracket, gaussian_profile

N = 1032
SIGMA_WING, WING_FRACTION = 3.2, 0.10


def sigma_core(col, fiber):
    """Core width varying smoothly along the chip and the slit (like the simulator's 6%)."""
    return 1.36 + 0.08 * np.asarray(col) / (N - 1) + 0.05 * np.asarray(fiber) / 111


def profile_cdf(x, s_core):
    g = lambda s: 0.5 * (1 + erf(x / (np.sqrt(2) * s)))  # noqa: E731
    return (1 - WING_FRACTION) * g(s_core) + WING_FRACTION * g(SIGMA_WING)


def true_pixel_profile(offset, col, fiber):
    s = sigma_core(col, fiber)
    return profile_cdf(offset + 0.5, s) - profile_cdf(offset - 0.5, s)


def make_trace(rng):
    k = np.arange(112)
    group = np.where(k < 37, 0, np.where(k < 75, 1, 2))
    base = 25.0 + 8.72 * k + 2 * 8.72 * group + rng.normal(0, 0.2, 112)
    x = (np.arange(N) - 515.5) / 515.5
    kk = k[:, None] / 111
    return base[:, None] + (3.0 + 0.8 * kk) * x**2 + 1.0 * x * (kk - 0.5)


def render(flux, trace, half=16):
    """Noise-free image: each fiber's flux spread with the exact pixel-integrated profile."""
    rows = np.rint(trace).astype(int)[..., None] + np.arange(-half, half + 1)
    cols = np.broadcast_to(np.arange(N)[None, :, None], rows.shape)
    fib = np.broadcast_to(np.arange(112)[:, None, None], rows.shape)
    frac = true_pixel_profile(rows - trace[..., None], cols, fib)
    ok = (rows >= 0) & (rows < N)
    img = np.zeros(N * N)
    np.add.at(img, (rows * N + cols)[ok], (flux[..., None] * frac)[ok])
    return img.reshape(N, N)


@pytest.fixture(scope="module")
def flat():
    rng = np.random.default_rng(3)
    trace = make_trace(rng)
    throughput = rng.normal(1.0, 0.05, 112)
    throughput[60] = 0.0  # dead fiber
    lamp = 9000 * np.exp(-0.5 * ((np.arange(N) - 600) / 380) ** 2) + 900
    flux = throughput[:, None] * lamp[None, :] * (1 + 0.02 * rng.normal(size=(112, 1)) * (np.arange(N) / N))
    img = render(flux, trace)
    var = (3.0**2 + img) / 3  # master of 3 frames
    noisy = img + rng.normal(0, np.sqrt(var))
    model = measure_profile(noisy, var, np.zeros((N, N), bool), trace)
    return model, trace, flux, img


def test_profile_matches_truth(flat):
    model, *_ = flat
    d = np.linspace(-10, 10, 401)
    worst = 0.0
    for col, fib in [(20, 3), (300, 40), (516, 56), (800, 90), (1010, 108)]:
        err = model.evaluate(d, col, fib) - true_pixel_profile(d, col, fib)
        worst = max(worst, np.max(np.abs(err)))
    # peak value ~0.25: 0.0025 is 1% of the peak
    assert worst < 0.0025, worst


def test_profile_normalised_and_flux_fraction(flat):
    model, *_ = flat
    for tab in model.tables.reshape(-1, model.offsets.size):
        assert np.trapezoid(tab, model.offsets) == pytest.approx(1.0, abs=1e-9)
    # sum over the pixels of a fiber at any sub-pixel phase = 1 (pixel-integrated profile)
    for phase in (0.0, 0.23, 0.5):
        rows = np.arange(-12, 13) - phase
        assert model.evaluate(rows, 400, 30).sum() == pytest.approx(1.0, abs=2e-3)


def test_arrays_round_trip(flat):
    model, *_ = flat
    again = ProfileModel.from_arrays(model.to_arrays())
    d = np.linspace(-5, 5, 11)
    np.testing.assert_array_equal(again.evaluate(d, 123.0, 45.0), model.evaluate(d, 123.0, 45.0))
    bad = model.to_arrays()
    bad["profile_tables"] = bad["profile_tables"][:, :1]
    with pytest.raises(CalibrationError):
        ProfileModel.from_arrays(bad)


def test_gaussian_profile_is_pixel_integrated():
    g = gaussian_profile(1.3)
    d = np.arange(-6, 7) + 0.3
    expected = 0.5 * (erf((d + 0.5) / (np.sqrt(2) * 1.3)) - erf((d - 0.5) / (np.sqrt(2) * 1.3)))
    np.testing.assert_allclose(g.evaluate(d, 0, 0), expected, atol=2e-4)


def test_bad_trace_raises():
    img = np.ones((N, N))
    trace = np.full((112, N), np.nan)
    with pytest.raises(CalibrationError):
        measure_profile(img, img, np.zeros((N, N), bool), trace)


def test_statistics_normal_equations_match_pixel_jacobian():
    """The Gauss-Newton system assembled from the chunk statistics equals J^T W J and
    J^T W (y - m) of the explicit per-pixel Jacobian (small chunk, two slit groups)."""
    from remedy_dask.amp.profile import fit as P
    from remedy_dask.amp.profile import kernels as pk

    rng = np.random.default_rng(4)
    n_fib, n_rows, ng = 6, 70, 2
    cols = np.arange(10, 17)
    trace = 12.0 + 8.9 * np.arange(n_fib)[:, None] + 0.01 * np.arange(30)[None, :]
    trace += rng.normal(0, 0.2, (n_fib, 1))
    basis = P._knot_basis(12.0, ng)
    knots, nk = basis.knots, basis.knots.size
    setup = P._chunk_setup(trace, cols, basis, n_rows)
    y = rng.normal(100, 10, (n_rows, cols.size))
    w = rng.uniform(0.5, 2.0, (n_rows, cols.size)) * (rng.random((n_rows, cols.size)) > 0.05)
    scale = rng.uniform(0.8, 1.2, cols.size)
    a = rng.uniform(50, 150, n_fib)
    p = np.abs(rng.normal(0.1, 0.05, (ng, nk)))
    gi, gw = bracket(np.array([1.0, 4.0]), np.arange(n_fib, dtype=float))
    gi, gw = gi.astype(np.int64), gw.astype(float)
    band = setup.lo_pair.shape[1]
    g_self, v = np.zeros((n_fib, nk, 2)), np.zeros((n_fib, nk))
    g_pair = np.zeros((n_fib, band, nk, setup.width))
    pk.accumulate_stats(y, w, scale, *setup.geometry, setup.lo_pair, g_self, g_pair, v)
    npar = n_fib + ng * nk
    lhs, half = np.empty((npar, npar)), np.empty((npar, npar))
    rhs = pk.normal_equations(g_self, g_pair, setup.lo_pair, setup.span, v, a, p, gi, gw, half, lhs)
    # explicit Jacobian, pixel by pixel
    beta = np.zeros((n_fib, ng))
    beta[np.arange(n_fib), gi] = 1 - gw
    beta[np.arange(n_fib), gi + 1] += gw
    jac = np.zeros((n_rows, cols.size, npar))
    model = np.zeros((n_rows, cols.size))
    for k in range(n_fib):
        for ic, c in enumerate(cols):
            d = np.arange(n_rows) - trace[k, c]
            inside = np.abs(d) < 12.0
            i = np.clip(np.searchsorted(knots, d, side="right") - 1, 0, nk - 2)
            f = (d - knots[i]) / (knots[i + 1] - knots[i])
            basis_k = np.zeros((n_rows, nk))
            basis_k[np.arange(n_rows), i] = 1 - f
            basis_k[np.arange(n_rows), i + 1] += f
            basis_k[~inside] = 0.0
            prof = basis_k @ (beta[k] @ p)
            model[:, ic] += scale[ic] * a[k] * prof
            jac[:, ic, k] = scale[ic] * prof
            for g in range(ng):
                knot_cols = slice(n_fib + g * nk, n_fib + (g + 1) * nk)
                jac[:, ic, knot_cols] += scale[ic] * a[k] * beta[k, g] * basis_k
    jw = jac * w[..., None]
    expected_lhs = np.einsum("rcp,rcq->pq", jw, jac)
    expected_rhs = np.einsum("rcp,rc->p", jw, y - model)
    scale_lhs = np.abs(expected_lhs).max()
    np.testing.assert_allclose(lhs, expected_lhs, rtol=1e-10, atol=1e-10 * scale_lhs)
    np.testing.assert_allclose(rhs, expected_rhs, rtol=1e-9, atol=1e-9 * np.abs(expected_rhs).max())
