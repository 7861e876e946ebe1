"""Errors of fits and extractions on data with correlated neighbouring wavelength bins."""

from __future__ import annotations

import numpy as np
import pytest

from remedy_dask.numeric.correlated import sandwich_covariance
from remedy_dask.observation.psf import fiber_integrated_moffat
from remedy_dask.observation.sources import extract_source


def test_sandwich_of_a_mean_is_the_hand_worked_variance():
    # mean of 10 unit-error points, neighbours correlated by 0.3:
    # var = (10 + 2 * 9 * 0.3) / 10^2 = 0.154 (independent: 0.1)
    jac = np.ones((10, 1))
    cov = sandwich_covariance(np.array([[0.1]]), jac, np.ones(10), np.full(10, 0.3))
    assert cov[0, 0] == pytest.approx(0.154, rel=1e-12)
    # with a gap (corr 0 between points 4 and 5): 10 + 2 * 8 * 0.3 = 14.8
    corr = np.full(10, 0.3)
    corr[4] = 0.0
    assert sandwich_covariance(np.array([[0.1]]), jac, np.ones(10), corr)[0, 0] == pytest.approx(0.148)


def test_gaussian_flux_error_with_correlated_noise_matches_monte_carlo():
    """A fixed-shape Gaussian plus a constant fitted by weighted least squares to noise made
    correlated as rectification makes it (bin j = (1 - a) p_j + a p_j+1)."""
    rng = np.random.default_rng(5)
    n, a = 31, 0.4
    x = np.arange(n) - 15.0
    g = np.exp(-0.5 * (x / 1.2) ** 2)
    jac = np.column_stack([g, np.ones(n)])
    s = np.sqrt((1 - a) ** 2 + a**2)
    rho = np.full(n, a * (1 - a) / s**2)
    pcov = np.linalg.inv(jac.T @ jac / s**2)
    pix = rng.normal(size=(20000, n + 1))
    data = (1 - a) * pix[:, :-1] + a * pix[:, 1:]
    flux = (pcov @ (jac.T / s**2) @ data.T)[0]
    assert np.sqrt(pcov[0, 0]) < 0.85 * np.std(flux)  # the independent-error value is too small
    assert np.sqrt(sandwich_covariance(pcov, jac, np.full(n, s), rho)[0, 0]) == pytest.approx(
        np.std(flux), rel=0.02)


def test_extracted_spectrum_correlation_matches_monte_carlo():
    rng = np.random.default_rng(6)
    xs, ys = np.meshgrid(np.arange(-3, 4) * 2.5, np.arange(-3, 4) * 2.2)
    fx, fy = xs.ravel(), ys.ravel()
    n_fib, n_wave = fx.size, 40
    sigma = rng.uniform(0.5, 2.0, (n_fib, 1)) * np.ones((1, n_wave))
    a = rng.uniform(0.0, 0.5, (n_fib, n_wave + 1))  # each fiber's own resampling phase
    norm = np.sqrt((1 - a[:, :-1]) ** 2 + a[:, :-1] ** 2)
    rho = np.zeros((n_fib, n_wave))
    # bin j = ((1 - a_j) p_j + a_j p_j+1) / norm_j: cov(j, j+1) = a_j (1 - a_j+1) / (norm norm)
    rho[:, :-1] = a[:, :-2] * (1 - a[:, 1:-1]) / (norm[:, :-1] * norm[:, 1:])
    psf = fiber_integrated_moffat(1.8)
    mask = np.zeros((n_fib, n_wave), bool)
    ref = extract_source(np.zeros((n_fib, n_wave)), sigma, mask, fx, fy, 0.4, -0.3, psf,
                         wave_corr=rho)
    spectra = []
    for _ in range(3000):
        pix = rng.normal(size=(n_fib, n_wave + 1))
        noise = ((1 - a[:, :-1]) * pix[:, :-1] + a[:, :-1] * pix[:, 1:]) / norm * sigma
        spectra.append(extract_source(noise, sigma, mask, fx, fy, 0.4, -0.3, psf).spectrum)
    spectra = np.array(spectra)
    emp = np.mean(spectra[:, :-1] * spectra[:, 1:], 0) / (ref.error[:-1] * ref.error[1:])
    np.testing.assert_allclose(np.std(spectra, 0), ref.error, rtol=0.05)
    assert np.mean(np.abs(emp - ref.corr[:-1])) < 0.03
    assert np.mean(ref.corr[:-1]) > 0.15 and ref.corr[-1] == 0.0
