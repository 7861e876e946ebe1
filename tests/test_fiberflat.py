"""Fiber-to-fiber from a synthetic twilight over several IFUs with known throughputs."""

from __future__ import annotations

import numpy as np
import pytest

from remedy_dask.errors import CalibrationError
from remedy_dask.exposure.fiberflat import fiber_to_fiber, ftf_on_native
from remedy_dask.geometry import DEF_WAVE, ifu_fiber_layout

SOLAR_LINES = [(3933.7, 0.6, 3.0), (3968.5, 0.55, 3.0), (4101.7, 0.3, 2.5), (4300.0, 0.25, 6.0),
               (4340.5, 0.3, 2.5), (4383.5, 0.15, 2.0), (4861.3, 0.3, 2.5), (5172.7, 0.2, 2.0),
               (5183.6, 0.2, 2.0), (5269.5, 0.12, 2.0)]


def solar(wave):
    bb = 1.0 / (wave / 5000.0) ** 5 / np.expm1(1.4388e8 / (wave * 5800.0))
    bb /= bb.max()
    for centre, depth, width in SOLAR_LINES:
        bb *= 1 - depth * np.exp(-0.5 * ((wave - centre) / width) ** 2)
    return bb


@pytest.fixture(scope="module")
def twilight():
    rng = np.random.default_rng(5)
    ix, iy = ifu_fiber_layout()
    centres = [(-150.0, 100.0), (-50.0, 100.0), (50.0, -100.0), (150.0, 0.0)]
    fx = np.concatenate([cx + ix for cx, _ in centres])
    fy = np.concatenate([cy + iy for _, cy in centres])
    n = fx.size
    # per-fiber throughput only: an IFU-wide factor is degenerate with a focal-plane
    # illumination sampled by four IFUs (see the module docstring)
    throughput = rng.normal(1.0, 0.05, n)
    colour = rng.normal(0.0, 0.02, n)
    dead = np.array([100, 448 + 300, 1500])
    throughput[dead] = 0.0
    true_ftf = throughput[:, None] * (1 + colour[:, None] * (DEF_WAVE - 4500) / 1000)
    illum = 1 + 0.03 * fx / 500 - 0.02 * fy / 500
    shift = rng.normal(0.0, 0.1, n)  # wavelength zero-point errors, A
    spectra = np.array([solar(DEF_WAVE - s) for s in shift])
    expected = 14000.0 * spectra * true_ftf * illum[:, None]  # e-/A, three 20 s frames
    error = np.sqrt(np.maximum(expected, 0) / 2.0 + 3.0)
    flux = expected + rng.normal(size=expected.shape) * error
    mask = np.zeros(flux.shape, bool)
    mask[7, 300:340] = True
    flux[7, 300:340] = 1e7  # masked garbage must not matter
    flux[9, 500] += 5e4  # an unmasked cosmic-ray residual is rejected
    return flux, error, mask, fx, fy, true_ftf, dead


def test_ftf_accuracy_and_dead_fibers(twilight):
    flux, error, mask, fx, fy, true_ftf, dead = twilight
    ff = fiber_to_fiber(flux, error, mask, fx, fy, illumination_degree=1)
    assert set(np.flatnonzero(ff.dead)) == set(dead)
    live = ~ff.dead
    truth = true_ftf[live] / np.median(true_ftf[live], axis=0)
    ratio = ff.ftf[live] / truth
    ratio /= np.median(ratio)
    rms = np.sqrt(np.mean((ratio - 1) ** 2))
    assert rms < 0.005, rms  # target 1%
    assert np.abs(ratio - 1).max() < 0.03
    assert ff.qa["n_dead"] == 3


def test_illumination_is_removed_not_absorbed(twilight):
    flux, error, mask, fx, fy, true_ftf, dead = twilight
    without = fiber_to_fiber(flux, error, mask, fx, fy, illumination_degree=0)
    with_ = fiber_to_fiber(flux, error, mask, fx, fy, illumination_degree=1)
    live = ~with_.dead
    truth = true_ftf[live] / np.median(true_ftf[live], axis=0)
    err0 = np.std(without.ftf[live] / truth)
    err1 = np.std(with_.ftf[live] / truth)
    assert err1 < 0.5 * err0  # the ~3% gradient is in err0, not in err1
    # the illumination model reproduces the injected plane to 0.3%
    illum = 1 + 0.03 * fx / 500 - 0.02 * fy / 500
    model = with_.illumination[:, 10] / np.median(with_.illumination[:, 10])
    assert np.std(model / (illum / np.median(illum))) < 0.003


def test_ftf_on_native_grid():
    ftf = np.tile(1.0 + (DEF_WAVE - 4500.0) / 10000.0, (2, 1))
    wl = np.tile(np.linspace(3460.0, 5560.0, 1032), (2, 1))
    native = ftf_on_native(ftf, wl)
    inside = (wl >= DEF_WAVE[0]) & (wl <= DEF_WAVE[-1])
    np.testing.assert_allclose(native[inside], 1.0 + (wl[inside] - 4500.0) / 10000.0, atol=1e-12)
    assert native[0, 0] == pytest.approx(ftf[0, 0])


def test_no_light_raises():
    z = np.zeros((50, 1036))
    with pytest.raises(CalibrationError):
        fiber_to_fiber(z, z + 1, z.astype(bool), np.zeros(50), np.zeros(50))


def test_blocks_change_nothing(twilight, monkeypatch):
    """The focal-plane arrays are worked in row and column blocks to bound the memory of the
    calibration's fan-in; any blocking gives the same bits as one block."""
    from remedy_dask.exposure import fiberflat

    flux, error, mask, fx, fy, *_ = twilight
    whole = fiber_to_fiber(flux, error, mask, fx, fy, illumination_degree=1)
    monkeypatch.setattr(fiberflat, "BLOCK_ROWS", 333)
    monkeypatch.setattr(fiberflat, "BLOCK_COLUMNS", 7)
    blocked = fiber_to_fiber(flux, error, mask, fx, fy, illumination_degree=1)
    assert flux.shape[0] > 4 * 333
    for name in ("ftf", "dead", "illumination", "bin_ratio"):
        np.testing.assert_array_equal(getattr(blocked, name), getattr(whole, name), err_msg=name)


def test_ftf_on_native_is_the_linear_interpolation_of_the_grid():
    rng = np.random.default_rng(8)
    ftf = rng.uniform(0.5, 1.5, (7, DEF_WAVE.size)).astype(np.float32)
    wl = np.linspace(DEF_WAVE[0] - 30.0, DEF_WAVE[-1] + 30.0, 1032) + rng.normal(0, 3, (7, 1))
    pos = np.clip((wl - DEF_WAVE[0]) / (DEF_WAVE[1] - DEF_WAVE[0]), 0, DEF_WAVE.size - 1)
    i0 = np.clip(np.floor(pos).astype(int), 0, DEF_WAVE.size - 2)
    f = pos - i0
    f64 = ftf.astype(np.float64)
    want = np.take_along_axis(f64, i0, 1) * (1 - f) + np.take_along_axis(f64, i0 + 1, 1) * f
    assert np.array_equal(ftf_on_native(ftf, wl), want)
    with pytest.raises(CalibrationError):
        ftf_on_native(ftf[:, :-1], wl)
