"""Fiber profile: the extraction's tables, from the trace's fiber model of a synthetic flat whose
pixel-integrated profile is known exactly."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf

from remedy_dask.amp.profile.fibermodel import (
    PROFILE_NODES, FiberFit, initial_profile, profile_eval, width_derivative,
)
from remedy_dask.amp.profile.model import ProfileModel, profile_from_fiber_fit, tabulate_profile
from remedy_dask.amp.trace.fit import fit_trace
from remedy_dask.errors import CalibrationError

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
    base = 18.0 + 8.72 * k + 2 * 8.72 * group + rng.normal(0, 0.2, 112)
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
    traced = fit_trace(noisy, var, np.zeros((N, N), bool))
    return traced.profile, trace, flux, img


def test_profile_matches_truth(flat):
    model, *_ = flat
    d = np.linspace(-10, 10, 401)
    worst = 0.0
    for col, fib in [(20, 3), (300, 40), (516, 56), (800, 90), (1010, 108)]:
        err = model.evaluate(d, col, fib) - true_pixel_profile(d, col, fib)
        worst = max(worst, np.max(np.abs(err)))
    # peak value ~0.25: 0.0025 is 1% of the peak
    assert worst < 0.0025, worst


def test_profile_follows_the_width_variation(flat):
    """The core width grows by 9% from fiber 3 at column 20 to fiber 108 at column 1010: the
    tables' peaks follow the true peaks (a single shared profile would miss both by ~4%)."""
    model, *_ = flat
    peaks = [(model.evaluate(0.0, c, f), true_pixel_profile(0.0, c, f))
             for c, f in [(20, 3), (1010, 108)]]
    assert peaks[0][1] / peaks[1][1] > 1.07  # the truth changes
    for fitted, true in peaks:
        assert fitted == pytest.approx(true, rel=0.01)


def test_profile_normalised_and_flux_fraction(flat):
    model, *_ = flat
    for tab in model.tables.reshape(-1, model.offsets.size):
        assert np.trapezoid(tab, model.offsets) == pytest.approx(1.0, abs=1e-9)
    # sum over the pixels of a fiber at any sub-pixel phase = 1 (pixel-integrated profile)
    for phase in (0.0, 0.23, 0.5):
        rows = np.arange(-14, 15) - phase
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


def test_tables_are_the_fiber_model():
    """P + w Q on the uniform grid, renormalised: the profile of the trace's fiber model."""
    table = initial_profile()
    model = tabulate_profile(table, np.array([[0.0, 0.05]]), np.array([500.0]),
                             np.array([20.0, 80.0]), 14.0)
    d = model.offsets
    expected = [profile_eval(table, d) + w * profile_eval(width_derivative(table), d)
                for w in (0.0, 0.05)]
    for g, e in enumerate(expected):
        np.testing.assert_allclose(model.tables[0, g], e / np.trapezoid(e, d), atol=1e-12)
    assert model.half_width == PROFILE_NODES[-1]


def test_width_surface_and_too_few_fibers():
    """The width ratios of the chunk fits are smoothed into a surface of column and fiber (a
    ratio linear in both comes back exactly, one wild chunk is clipped); without enough
    usable fibers the profile cannot be measured."""
    rng = np.random.default_rng(1)
    centres = np.arange(43) * 24 + 11.5
    amp = rng.uniform(900, 1100, (43, 112))
    true_ratio = 0.03 * (centres[:, None] / 1031) - 0.02 * (np.arange(112)[None, :] / 111)
    width = amp * true_ratio
    width[5, 7] = amp[5, 7] * 3.0  # a chunk fit gone wild
    fit = FiberFit(amp=amp, width=width, coeff=np.zeros((1, 1)), chunk_background=np.zeros(1))
    table = initial_profile()
    model = profile_from_fiber_fit(table, fit, np.ones(112, bool), centres, 1032)
    cc, gc = model.chunk_centers, model.group_centers
    expected = tabulate_profile(table, 0.03 * cc[:, None] / 1031 - 0.02 * gc[None, :] / 111,
                                cc, gc, 14.0)
    np.testing.assert_allclose(model.tables, expected.tables, atol=1e-9)
    live = np.zeros(112, bool)
    live[:3] = True
    with pytest.raises(CalibrationError, match="too few fiber amplitudes"):
        profile_from_fiber_fit(table, FiberFit(amp[:3], width[:3], fit.coeff, fit.chunk_background),
                               live, centres[:3], 1032)
