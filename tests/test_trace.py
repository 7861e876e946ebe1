"""Trace kernel against analytic flats with known traces (non-Gaussian, pixel-integrated
profiles, per-fiber jitter, scattered light, dead fibers) and against the windowed-centroid theory."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.special import erf
from synth_calib import (
    add_noise,
    flat_image,
    render_fibers,
    scattered_component,
    slit_rows,
    true_traces,
)

from remedy_dask.errors import CalibrationError
from remedy_dask.amp.trace.assign import windowed_centroid
from remedy_dask.amp.trace.fit import fit_trace
from remedy_dask.amp.trace.shift import measure_trace_shift

U = (np.arange(1032) - 515.5) / 515.5
F = (np.arange(112) - 55.5) / 55.5
VARYING_SIGMA = 1.4 + 0.1 * U[None, :] + 0.08 * F[:, None] ** 2  # +-7% over the chip


def _errors(result, truth):
    live = ~result.dead
    diff = result.trace - truth
    per_fiber = np.sqrt(np.mean(diff**2, axis=1))
    return float(np.sqrt(np.mean(diff[live] ** 2))), float(per_fiber[live].max())


@pytest.fixture(scope="module")
def varying_flat():
    return flat_image(seed=4, dead=(60,), sigma=VARYING_SIGMA)


def test_windowed_centroid_has_no_pixel_phase_bias():
    # pixel-integrated Gaussian core + 10% wings at 41 sub-pixel phases: bias < 2e-4 px (the
    # 3-point parabola of Remedy is off by up to ~0.02 px for this profile)
    y = np.arange(-12, 13, dtype=float)
    phases = np.linspace(-0.5, 0.5, 41)

    def cdf(x, s):
        return 0.5 * (1 + erf(x / (np.sqrt(2) * s)))

    lo, hi = y[None, :] - 0.5 - phases[:, None], y[None, :] + 0.5 - phases[:, None]
    prof = 0.9 * (cdf(hi, 1.4) - cdf(lo, 1.4)) + 0.1 * (cdf(hi, 3.2) - cdf(lo, 3.2))
    s, flux, ok = windowed_centroid(prof * 1000.0, np.broadcast_to(y, prof.shape), 1.4)
    assert ok.all() and np.all(flux > 0)
    assert np.abs(s - phases).max() < 2e-4


def test_fit_trace_accuracy_with_varying_profile(varying_flat):
    img, var, truth, _ = varying_flat
    res = fit_trace(img, var)
    rms, worst = _errors(res, truth)
    # project targets: rms <= 0.01 px, worst fiber <= 0.02 px; measured ~0.002 / ~0.005
    assert rms < 0.005, rms
    assert worst < 0.01, worst
    assert np.flatnonzero(res.dead).tolist() == [60]
    assert res.trace.shape == (112, 1032)
    assert np.all(res.rms[~res.dead] < 0.02)
    assert res.qa["assignment"] == "pattern"
    assert res.profile is not None and abs(res.qa["profile_fwhm"] - 3.6) < 0.4


@pytest.mark.parametrize("dead", [(36, 75), (0, 111)])
def test_dead_fibers_at_gaps_and_ends_are_numbered_right(dead):
    img, var, truth, _ = flat_image(seed=7, dead=dead, peak=4000.0)
    res = fit_trace(img, var)
    assert np.flatnonzero(res.dead).tolist() == list(dead)
    rms, _ = _errors(res, truth)
    assert rms < 0.005
    # dead fibers are placed by the pattern: within the slit jitter (0.2 px rms) of the truth
    assert np.abs(res.trace[list(dead)] - truth[list(dead)]).max() < 0.8


def test_reference_assignment_with_offset_reference():
    dead = (10, 11, 37)
    img, var, truth, _ = flat_image(seed=8, dead=dead, peak=4000.0)
    ref = slit_rows() + 2.3  # a reference from another night, 2.3 px off
    ref_dead = np.zeros(112, bool)
    ref_dead[list(dead)] = True
    res = fit_trace(img, var, reference_y=ref, dead=ref_dead)
    assert res.qa["assignment"] == "reference"
    assert np.flatnonzero(res.dead).tolist() == list(dead)
    rms, _ = _errors(res, truth)
    assert rms < 0.005


def test_fit_trace_rejects_unusable_flats():
    with pytest.raises(CalibrationError):
        fit_trace(np.zeros((1032, 1032)))
    rng = np.random.default_rng(0)
    with pytest.raises(CalibrationError):
        fit_trace(rng.normal(100.0, 3.0, (1032, 1032)))


def test_measure_trace_shift_on_sky_frame_with_cosmics():
    truth = true_traces(seed=3)
    rng = np.random.default_rng(0)
    x = np.arange(1032)
    sky = 250 + 80 * np.sin(x / 50.0) ** 2
    for line in (290, 445, 995):
        sky = sky + 3000 * np.exp(-0.5 * ((x - line) / 1.2) ** 2)
    flux = np.tile(sky, (112, 1)) * rng.normal(1, 0.05, (112, 1))
    flux[[20, 21, 60]] *= 20  # stars
    flux[50] = 0.0  # dead fiber
    for shift in (0.13, -0.21):
        img = render_fibers(truth + shift, flux)
        img += scattered_component(img)
        noisy, var = add_noise(img, seed=5)
        r, c = rng.integers(0, 1032, 2000), rng.integers(0, 1031, 2000)
        noisy[r, c] += rng.uniform(200, 3000, 2000)
        noisy[r, c + 1] += rng.uniform(100, 1000, 2000)
        est = measure_trace_shift(noisy, var, None, truth)
        assert abs(est - shift) < 0.005, (est, shift)  # target 0.03 px


def test_measure_trace_shift_needs_light():
    with pytest.raises(CalibrationError):
        measure_trace_shift(np.zeros((1032, 1032)), np.ones((1032, 1032)), None, true_traces())


def test_simulator_truth_trace_and_drift():
    from synth_calib import simulated_calibration

    cal = simulated_calibration("LL")
    model, res = cal["model"], cal["trace"]
    assert np.array_equal(res.dead, model.dead)
    rms, worst = _errors(res, model.trace)
    assert rms < 0.005 and worst < 0.012  # targets 0.01 / 0.02; measured 0.0024 / 0.0061
    ref = fit_trace(cal["flat"], cal["flat_var"], cal["mask"], reference_y=model.fiber_loc_ref,
                    dead=model.dead)
    assert ref.qa["assignment"] == "reference" and _errors(ref, model.trace)[0] < 0.005
    for i, frame in enumerate(cal["frames"][("sci", None)]):
        image = frame["image"] - cal["bias"] - cal["dark"] * frame["header"]["EXPTIME"]
        shift = measure_trace_shift(image, frame["variance"], cal["mask"], res.trace)
        assert abs(shift - model.trace_shift[i]) < 0.01  # target 0.03; measured <= 0.0013


def test_measure_trace_shift_with_masked_columns_and_nan_pixels():
    # a masked bad column and a NaN patch: the chunks they cross must still be usable
    truth = true_traces(seed=6)
    x = np.arange(1032)
    flux = np.tile(300 + 100 * np.cos(x / 80.0) ** 2, (112, 1))
    shift = 0.17
    img = render_fibers(truth + shift, flux)
    noisy, var = add_noise(img + scattered_component(img), seed=9)
    mask = np.zeros(noisy.shape, dtype=bool)
    mask[:, 250] = True
    noisy[:, 250] = 0.0
    noisy[400:430, 600:620] = np.nan
    est = measure_trace_shift(noisy, var, mask, truth)
    assert abs(est - shift) < 0.005, est


def test_windowed_centroid_far_samples_stay_finite():
    # the factorised window must not overflow for samples far from the centre
    offsets = np.broadcast_to(np.arange(-3000.0, 3001.0), (2, 6001))
    centre = np.array([[2.3], [-1.6]])  # reached in several clipped Newton steps
    values = np.exp(-0.5 * (offsets - centre) ** 2 / 1.5**2) * 100.0 + 1e-3
    s, flux, ok = windowed_centroid(values, offsets, 1.4)
    assert ok.all() and np.all(np.isfinite(flux))
    assert np.abs(s - centre[:, 0]).max() < 1e-3


def test_median_network_puts_the_middle_values_in_place():
    from remedy_dask.numeric.sortnet import median_network

    rng = np.random.default_rng(4)
    for n in range(1, 34):
        pairs = median_network(n)
        for values in (rng.integers(0, 4, (300, n)).astype(float), rng.normal(size=(300, n))):
            x = values.T.copy()  # (n, lanes), as in the kernel
            for a, b in pairs:
                lo, hi = np.minimum(x[a], x[b]), np.maximum(x[a], x[b])
                x[a], x[b] = lo, hi
            srt = np.sort(values, axis=1)
            assert np.array_equal(x[(n - 1) // 2], srt[:, (n - 1) // 2]), n
            assert np.array_equal(x[n // 2], srt[:, n // 2]), n


def test_measure_trace_shift_float32_frame_without_variance():
    # the chain passes float32 images; without a variance the |value| + 9 noise model is used
    truth = true_traces(seed=8)
    x = np.arange(1032)
    flux = np.tile(400 + 150 * np.sin(x / 60.0) ** 2, (112, 1))
    for shift in (0.27, -0.08):
        noisy, _ = add_noise(render_fibers(truth + shift, flux), seed=12)
        est32 = measure_trace_shift(noisy.astype(np.float32), None, None, truth)
        est64 = measure_trace_shift(noisy.astype(np.float32).astype(float), None, None, truth)
        assert abs(est32 - shift) < 0.005, (est32, shift)
        assert est32 == est64  # the windows are processed in float32 either way


def _chunk_profiles_reference(image, variance, mask, n_chunks):
    """Direct numpy definition: per row and chunk, the mean of the pixels within
    6 sqrt(max(var, 1)) + 15 % of the chunk-row median (medians ignore bad pixels)."""
    n_rows, n_cols = image.shape
    width = n_cols // n_chunks
    d = np.asarray(image, float)[:, : width * n_chunks].reshape(n_rows, n_chunks, width)
    bad = ~np.isfinite(d)
    if mask is not None:
        bad |= mask[:, : width * n_chunks].reshape(d.shape)
    d = np.where(bad, np.nan, d)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(d, axis=-1, keepdims=True)
        if variance is not None:
            v = np.where(bad, np.nan, np.asarray(variance, float)[:, : width * n_chunks].reshape(d.shape))
            var = np.nanmedian(v, axis=-1, keepdims=True)
        else:
            var = np.abs(med) + 10.0
        tol = 6.0 * np.sqrt(np.maximum(np.nan_to_num(var, nan=1.0), 1.0)) + 0.15 * np.abs(med)
        good = (d >= med - tol) & (d <= med + tol)
        prof = np.where(good, d, 0.0).sum(-1) / good.sum(-1)
    return prof.T


@pytest.mark.parametrize("with_variance", [True, False])
def test_chunk_profiles_match_the_direct_definition(with_variance):
    """The compiled sorting-network chunk profiles equal the numpy definition, with masked
    pixels, NaN, cosmic-ray outliers and fully masked chunk rows."""
    from remedy_dask.amp.profile.chunks import chunk_profiles

    rng = np.random.default_rng(5)
    image = rng.normal(100.0, 10.0, (60, 1032))
    image[rng.random(image.shape) < 0.01] += 5000.0  # outliers clipped away
    image[3, 40] = np.nan
    mask = rng.random(image.shape) < 0.05
    mask[7, :86] = True  # a fully masked chunk row: NaN
    variance = np.abs(image) + 9.0 if with_variance else None
    got, centres = chunk_profiles(image, variance, mask, 12)
    want = _chunk_profiles_reference(image, variance, mask, 12)
    np.testing.assert_allclose(got, want, rtol=1e-12, equal_nan=True)
    assert np.isnan(got[0, 7]) and np.isfinite(got[1, 7])
    assert centres[0] == pytest.approx(42.5)
