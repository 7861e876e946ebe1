"""Fiber-integrated Moffat PSF and the joint seeing / DAR / exposure-normalisation fit."""

import numpy as np
import pytest

from remedy_dask.errors import CalibrationError
from remedy_dask.geometry import DEF_WAVE, DITHER_PATTERN, FIBER_DIAMETER, dar_offsets, ifu_fiber_layout
from remedy_dask.observation.psf import (
    RadialPSF,
    evaluate_psf,
    fiber_integrated_moffat,
    moffat_alpha,
    moffat_enclosed,
)
from remedy_dask.observation.seeing import fit_seeing

R = FIBER_DIAMETER / 2.0


def brute_fraction(dx, dy, fwhm, beta=3.5, step=0.02):
    """Independent truth: Moffat summed over a fine square grid of points inside the fiber disc."""
    g = np.arange(-R + step / 2, R, step)
    gx, gy = np.meshgrid(g, g)
    inside = gx**2 + gy**2 <= R**2
    sx, sy = gx[inside], gy[inside]
    alpha = moffat_alpha(fwhm, beta)
    r2 = (np.asarray(dx)[..., None] + sx) ** 2 + (np.asarray(dy)[..., None] + sy) ** 2
    dens = (beta - 1) / (np.pi * alpha**2) * (1 + r2 / alpha**2) ** (-beta)
    # correct the staircase disc to the exact fiber area
    return dens.sum(-1) * step**2 * (np.pi * R**2) / (inside.sum() * step**2)


@pytest.mark.parametrize("fwhm", [0.8, 1.8, 3.0])
def test_centre_fraction_is_enclosed_energy(fwhm):
    psf = fiber_integrated_moffat(fwhm)
    assert psf.fraction[0] == pytest.approx(moffat_enclosed(R, fwhm), rel=1e-9)


@pytest.mark.parametrize("fwhm", [1.2, 2.4])
def test_table_matches_brute_force_integration(fwhm):
    r = np.array([0.3, 0.9, 1.5, 2.5, 4.0])
    psf = fiber_integrated_moffat(fwhm)
    truth = brute_fraction(r, 0 * r, fwhm)
    # brute force on a 0.02" staircase is good to ~0.3%
    np.testing.assert_allclose(psf.at_radius(r), truth, rtol=5e-3)
    # direction does not matter
    np.testing.assert_allclose(psf(r / np.sqrt(2), r / np.sqrt(2)), psf.at_radius(r), rtol=1e-12)


def test_dense_grid_of_fibers_collects_all_flux():
    """Fiber fractions on a grid with one fiber per fiber area sum to 1 (minus the far wings)."""
    psf = fiber_integrated_moffat(1.8)
    a = np.sqrt(np.pi * R**2)  # square grid with cell area = fiber area
    g = np.arange(-15, 15.001, a) + 0.123
    gx, gy = np.meshgrid(g, g)
    total = psf(gx, gy).sum()
    tail = 1 - moffat_enclosed(psf.r_max, 1.8)
    assert total == pytest.approx(1.0 - tail, abs=2e-3)
    # radial integral identity: int f d^2r = pi R^2
    integral = np.trapezoid(psf.fraction * 2 * np.pi * psf.r, psf.r)
    assert integral / (np.pi * R**2) == pytest.approx(1.0 - tail, abs=1e-4)


def test_bad_fwhm_raises():
    with pytest.raises(CalibrationError):
        fiber_integrated_moffat(0.0)
    with pytest.raises(CalibrationError):
        fiber_integrated_moffat(float("nan"))


def test_per_exposure_evaluation():
    psfs = [fiber_integrated_moffat(f) for f in (1.5, 2.5)]
    dx = np.array([0.0, 0.0, 1.0])
    exp = np.array([0, 1, 1])
    got = evaluate_psf(psfs, dx, 0 * dx, exp)
    want = [psfs[0].at_radius(0.0), psfs[1].at_radius(0.0), psfs[1].at_radius(1.0)]
    np.testing.assert_allclose(got, want)
    assert isinstance(psfs[0], RadialPSF)
    with pytest.raises(ValueError):
        evaluate_psf(psfs, dx, dx)


def _dithered_fibers():
    x, y = ifu_fiber_layout()
    fx = np.concatenate([x + d[0] for d in DITHER_PATTERN])
    fy = np.concatenate([y + d[1] for d in DITHER_PATTERN])
    exp = np.repeat(np.arange(3), x.size)
    return fx, fy, exp


def _star_fractions(fx, fy, exp, x0, y0, fwhms, dar, n_nodes=25, betas=(3.5, 3.5, 3.5)):
    """(n_fiber, n_wave) brute-force fiber fractions with DAR along x, per-exposure FWHM."""
    nodes = np.linspace(dar.min(), dar.max(), n_nodes)
    out = np.zeros((fx.size, dar.size))
    near = np.hypot(fx - x0, fy - y0) < 9.0
    for e, fw in enumerate(fwhms):
        sel = near & (exp == e)
        at_nodes = np.array(
            [brute_fraction(fx[sel] - x0 - n, fy[sel] - y0, fw, betas[e], step=0.05)
             for n in nodes]
        )
        out[sel] = np.array([np.interp(dar, nodes, at_nodes[:, i]) for i in range(sel.sum())])
    return out


def test_fit_seeing_recovers_fwhm_norm_dar_and_positions():
    rng = np.random.default_rng(1)
    fx, fy, exp = _dithered_fibers()
    dar = dar_offsets(DEF_WAVE)
    true_fwhm = (1.6, 1.95, 2.3)
    true_norm = np.array([1.0, 0.85, 1.1])
    stars = [(-10.0, 8.0, 2000.0), (6.0, -12.0, 900.0), (12.0, 10.0, 1500.0), (-3.0, -2.0, 600.0)]
    flux = np.zeros((fx.size, DEF_WAVE.size))
    for x0, y0, amp in stars:
        spec = amp * (DEF_WAVE / 4500.0) ** -1.0
        frac = _star_fractions(fx, fy, exp, x0, y0, true_fwhm, dar)
        flux += frac * true_norm[exp][:, None] * spec[None, :]
    sigma = np.sqrt(25.0 + 0.5 * np.abs(flux))
    flux += rng.normal(size=flux.shape) * sigma
    guess_x = np.array([s[0] for s in stars]) + np.array([0.4, -0.3, 0.2, -0.35])
    guess_y = np.array([s[1] for s in stars]) + np.array([-0.3, 0.25, 0.4, 0.3])
    fit = fit_seeing(flux, sigma, None, fx, fy, exp, guess_x, guess_y, DEF_WAVE, dar, fwhm0=1.8)
    assert fit.success and fit.n_stars == 4
    np.testing.assert_allclose(fit.fwhm, true_fwhm, atol=0.05)
    want_norm = true_norm / np.exp(np.mean(np.log(true_norm)))
    np.testing.assert_allclose(fit.norm, want_norm, rtol=0.02)
    assert fit.dar_scale[0] == pytest.approx(1.0, abs=0.1)
    assert fit.dar_scale[1] == pytest.approx(0.0, abs=0.1)
    np.testing.assert_allclose(fit.star_x, [s[0] for s in stars], atol=0.05)
    np.testing.assert_allclose(fit.star_y, [s[1] for s in stars], atol=0.05)
    assert 0.5 < fit.chi2 < 2.0


def test_fit_seeing_without_stars_raises():
    fx, fy, exp = _dithered_fibers()
    flux = np.zeros((fx.size, DEF_WAVE.size))
    with pytest.raises(CalibrationError):
        fit_seeing(flux, flux + 1, None, fx, fy, exp, [500.0], [500.0])


def test_fit_seeing_skips_blended_stars():
    fx, fy, exp = _dithered_fibers()
    dar = dar_offsets(DEF_WAVE)
    flux = np.zeros((fx.size, DEF_WAVE.size))
    for x0, y0 in [(-8.0, 5.0), (-5.0, 6.0), (8.0, -6.0)]:  # the first two are a blend
        flux += 1000.0 * _star_fractions(fx, fy, exp, x0, y0, (1.8, 1.8, 1.8), dar, n_nodes=8)
    sigma = np.full_like(flux, 5.0)
    fit = fit_seeing(flux, sigma, None, fx, fy, exp, [-8.0, -5.0, 8.0], [5.0, 6.0, -6.0],
                     DEF_WAVE, dar, fit_dar=False)
    assert list(fit.star_used) == [False, False, True]
    np.testing.assert_allclose(fit.fwhm, 1.8, atol=0.05)


def test_fit_seeing_follows_moffat_beta_per_exposure():
    """Stars made with beta 2.8 / 4.3 / 3.8 (brute-force integration): with ``fit_beta`` the FWHM
    and beta of each exposure come back; with beta fixed at 3.5 the broad-winged exposure is not
    fitted at its FWHM."""
    rng = np.random.default_rng(5)
    fx, fy, exp = _dithered_fibers()
    dar = dar_offsets(DEF_WAVE)
    fwhms, betas = (1.55, 1.65, 1.43), (2.8, 4.3, 3.8)
    stars = [(-10.0, 8.0, 3000.0), (6.0, -12.0, 2000.0), (12.0, 10.0, 2500.0), (-3.0, -2.0, 1500.0)]
    flux = np.zeros((fx.size, DEF_WAVE.size))
    for x0, y0, amp in stars:
        flux += amp * _star_fractions(fx, fy, exp, x0, y0, fwhms, dar, n_nodes=8, betas=betas)
    sigma = np.sqrt(25.0 + 0.5 * np.abs(flux))
    flux += rng.normal(size=flux.shape) * sigma
    sx, sy = [s[0] for s in stars], [s[1] for s in stars]
    fit = fit_seeing(flux, sigma, None, fx, fy, exp, sx, sy, DEF_WAVE, dar, fit_beta=True)
    np.testing.assert_allclose(fit.fwhm, fwhms, atol=0.06)
    np.testing.assert_allclose(fit.beta, betas, atol=0.5)
    assert fit.beta[0] < fit.beta[2] < fit.beta[1]
    fixed = fit_seeing(flux, sigma, None, fx, fy, exp, sx, sy, DEF_WAVE, dar)
    np.testing.assert_array_equal(fixed.beta, 3.5)
    assert abs(fixed.fwhm[0] - 1.55) > 0.06


def test_fit_seeing_uses_the_brightest_stars_up_to_max_stars():
    """``max_stars``: only that many of the brightest usable stars enter the joint fit (the
    others are reported unused); below the cap nothing changes."""
    fx, fy, exp = _dithered_fibers()
    dar = dar_offsets(DEF_WAVE)
    stars = [(-10.0, 8.0, 600.0), (6.0, -12.0, 2000.0), (12.0, 10.0, 900.0), (-3.0, -2.0, 1500.0)]
    flux = np.zeros((fx.size, DEF_WAVE.size))
    for x0, y0, amp in stars:
        flux += amp * _star_fractions(fx, fy, exp, x0, y0, (1.8, 1.8, 1.8), dar, n_nodes=8)
    sigma = np.full_like(flux, 5.0)
    sx, sy = [s[0] for s in stars], [s[1] for s in stars]
    capped = fit_seeing(flux, sigma, None, fx, fy, exp, sx, sy, DEF_WAVE, dar, max_stars=2)
    assert list(capped.star_used) == [False, True, False, True]  # the 2000 and 1500 stars
    np.testing.assert_allclose(capped.fwhm, 1.8, atol=0.05)
    full = fit_seeing(flux, sigma, None, fx, fy, exp, sx, sy, DEF_WAVE, dar)
    same = fit_seeing(flux, sigma, None, fx, fy, exp, sx, sy, DEF_WAVE, dar, max_stars=4)
    np.testing.assert_array_equal(full.fwhm, same.fwhm)
    assert full.n_stars == 4
