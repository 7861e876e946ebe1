"""Rectification: flux conservation, error propagation, correlation and masks on known spectra."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf

from remedy_dask.errors import CalibrationError
from remedy_dask.geometry import DEF_WAVE
from remedy_dask.amp.rectify import adjacent_correlation, pixel_edges, rectify

OUT_EDGES = np.concatenate([[DEF_WAVE[0] - 1], DEF_WAVE[:-1] + 1, [DEF_WAVE[-1] + 1]])


def solution(n, rng, centre=4507.0):
    """A VIRUS-like non-linear dispersion (~2.05 A/px) with per-fiber zero points."""
    u = (np.arange(1032) - 515.5) / 515.5
    return centre + 1058 * u - 12 * u**2 + 8 * u**3 + rng.normal(0, 0.2, (n, 1))


def cumulative(lam):
    """Electrons below wavelength ``lam`` of a smooth continuum plus one resolved line."""
    return 50 * lam - 3000 * np.cos(lam / 100) + 2000 * 0.5 * (1 + erf((lam - 4358.3) / (np.sqrt(2) * 2.4)))


def test_conserves_electrons_and_recovers_density():
    rng = np.random.default_rng(1)
    wl = solution(20, rng)
    pix = np.diff(cumulative(pixel_edges(wl)), axis=1)
    flux, err, mask = rectify(pix, np.sqrt(pix), np.zeros(pix.shape, bool), wl)
    assert not mask.any()
    truth = np.diff(cumulative(OUT_EDGES)) / 2.0
    # electrons conserved over the full output range (up to the uniform-within-pixel
    # approximation at the two end pixels, a few e- of 1e5)
    total = np.sum(flux, axis=1) * 2.0
    np.testing.assert_allclose(total, cumulative(OUT_EDGES[-1]) - cumulative(OUT_EDGES[0]), rtol=1e-5)
    # and exactly when the whole output range is one set of whole pixels
    grid = np.tile(OUT_EDGES[None, ::2], (1, 1))  # pixels of 4 A whose edges are output edges
    centres = 0.5 * (grid[:, 1:] + grid[:, :-1])
    f4, _, m4 = rectify(np.full(centres.shape, 8.0), np.ones(centres.shape), np.zeros(centres.shape, bool), centres)
    assert not m4[:, 1:-1].any()
    np.testing.assert_allclose(f4[:, 1:-1], 2.0, rtol=1e-12)
    # continuum: uniform electrons within a pixel is exact to first order in the slope only:
    # ~f' dx^2 / 8 per partial pixel, < 1e-3 here; the line is only redistributed locally
    far = np.abs(DEF_WAVE - 4358.3) > 15
    assert np.max(np.abs(flux[:, far] / truth[far] - 1)) < 1e-3
    assert np.median(np.abs(flux[:, far] / truth[far] - 1)) < 2e-4
    near = ~far
    np.testing.assert_allclose(flux[:, near].sum(1), truth[near].sum(), rtol=2e-3)


def test_errors_and_adjacent_correlation_match_monte_carlo():
    rng = np.random.default_rng(2)
    wl = solution(4, rng)
    pix = np.diff(cumulative(pixel_edges(wl)), axis=1)
    sigma = np.sqrt(pix)
    draws = []
    for _ in range(400):
        f, err, _ = rectify(pix + rng.normal(size=pix.shape) * sigma, sigma, np.zeros(pix.shape, bool), wl)
        draws.append(f)
    draws = np.array(draws)
    ratio = np.std(draws, axis=0) / err
    assert np.median(ratio) == pytest.approx(1.0, abs=0.03)
    rho = adjacent_correlation(sigma, wl)
    d = draws - draws.mean(0)
    emp = np.mean(d[:, :, :-1] * d[:, :, 1:], axis=0) / (np.std(draws, 0)[:, :-1] * np.std(draws, 0)[:, 1:])
    assert np.all((rho > -1e-12) & (rho < 0.75))
    # 400 draws: the empirical coefficient scatters by ~0.05
    assert np.mean(np.abs(emp - rho)) < 0.05
    assert np.mean(emp) == pytest.approx(np.mean(rho), abs=0.01)


def test_mask_and_coverage():
    rng = np.random.default_rng(3)
    wl = solution(3, rng, centre=4600.0)  # red-shifted: the blue end of DEF_WAVE is not covered
    wl[2] = wl[2][::-1]  # a broken solution (decreasing): the whole fiber is masked
    pix = np.full(wl.shape, 100.0)
    mask = np.zeros(wl.shape, bool)
    mask[0, 500] = True
    flux, err, out = rectify(pix, np.sqrt(pix), mask, wl)
    lo, hi = pixel_edges(wl[:1])[0, 500:502]
    overlapping = (OUT_EDGES[1:] > lo) & (OUT_EDGES[:-1] < hi)
    assert 2 <= overlapping.sum() <= 3
    assert out[0, overlapping].all() and np.isnan(flux[0, overlapping]).all()
    uncovered = OUT_EDGES[:-1] < pixel_edges(wl[1:2])[0, 0]
    assert uncovered.any() and out[1, uncovered].all() and not out[1, ~uncovered].any()
    assert out[2].all()
    assert np.nanmedian(flux[1]) == pytest.approx(100.0 / np.median(np.diff(wl[1])), rel=0.05)


def test_shape_errors():
    with pytest.raises(CalibrationError):
        rectify(np.zeros((2, 10)), np.zeros((2, 10)), np.zeros((2, 10), bool), np.zeros((2, 9)))
    with pytest.raises(CalibrationError):
        rectify(np.zeros((2, 10)), np.zeros((2, 10)), np.zeros((2, 10), bool), np.zeros((2, 10)), wave_out=np.array([2.0, 1.0]))


def test_adjacent_correlation_is_the_covariance_of_the_linear_map():
    """rho from the exact linear map of rectify (its response to each input pixel): W diag(v) W^T
    normalised, for uneven errors, NaN errors (zero variance), an uncovered blue end and a broken
    fiber (all NaN)."""
    rng = np.random.default_rng(4)
    wl = solution(3, rng, centre=4560.0)[:, :120]
    wl[2] = wl[2][::-1]
    err = rng.uniform(0.5, 3.0, wl.shape)
    err[0, 40:45] = np.nan
    wave_out = np.arange(3480.0, 3700.0, 2.0)
    rho = adjacent_correlation(err, wl, wave_out)
    assert rho.shape == (3, wave_out.size - 1)
    assert np.all(np.isnan(rho[2]))
    for k in range(2):
        response = np.array([rectify(np.eye(120)[i][None], np.ones((1, 120)),
                                     np.zeros((1, 120), bool), wl[k:k + 1], wave_out)[0][0]
                             for i in range(120)])  # (pixel, bin) e-/A per electron
        v = np.nan_to_num(err[k]) ** 2
        cov = response.T @ (v[:, None] * response)
        sig = np.sqrt(np.diag(cov))
        with np.errstate(invalid="ignore", divide="ignore"):
            expected = np.diag(cov, 1) / (sig[:-1] * sig[1:])
        covered = np.isfinite(response).all(axis=0)
        both = covered[:-1] & covered[1:] & (sig[:-1] > 0) & (sig[1:] > 0)
        assert both.sum() > 50 and np.all(np.isnan(rho[k][~covered[:-1]]))
        np.testing.assert_allclose(rho[k][both], expected[both], rtol=1e-9, atol=1e-12)
