"""Fiber profile: measured on a synthetic flat whose pixel-integrated profile is known exactly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf

from remedy_dask.errors import CalibrationError
from remedy_dask.profile import ProfileModel, gaussian_profile, measure_profile

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
