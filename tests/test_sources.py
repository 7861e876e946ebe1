"""Optimal extraction of point sources and source injection."""

import numpy as np
import pytest

from remedy_dask.geometry import DEF_WAVE, DITHER_PATTERN, FIBER_DIAMETER, dar_offsets, ifu_fiber_layout
from remedy_dask.observation.psf import fiber_integrated_moffat, moffat_alpha
from remedy_dask.observation.sources import extract_source, extract_sources, inject_source

R = FIBER_DIAMETER / 2.0


def brute_fraction(dx, dy, fwhm, beta=3.5, step=0.05):
    """Independent truth: Moffat summed over a square grid of points inside the fiber disc."""
    g = np.arange(-R + step / 2, R, step)
    gx, gy = np.meshgrid(g, g)
    inside = gx**2 + gy**2 <= R**2
    sx, sy = gx[inside], gy[inside]
    alpha = moffat_alpha(fwhm, beta)
    r2 = (np.asarray(dx)[..., None] + sx) ** 2 + (np.asarray(dy)[..., None] + sy) ** 2
    dens = (beta - 1) / (np.pi * alpha**2) * (1 + r2 / alpha**2) ** (-beta)
    return dens.sum(-1) * (np.pi * R**2) / inside.sum()


def dithered_fibers():
    x, y = ifu_fiber_layout()
    fx = np.concatenate([x + d[0] for d in DITHER_PATTERN])
    fy = np.concatenate([y + d[1] for d in DITHER_PATTERN])
    return fx, fy, np.repeat(np.arange(3), x.size)


def star_fractions(fx, fy, x0, y0, fwhm, dar, n_nodes=25):
    """(n_fiber, n_wave) brute-force fiber fractions of a star with DAR along x."""
    nodes = np.linspace(dar.min(), dar.max(), n_nodes)
    out = np.zeros((fx.size, dar.size))
    near = np.flatnonzero(np.hypot(fx - x0, fy - y0) < 9.0)
    at_nodes = np.array([brute_fraction(fx[near] - x0 - n, fy[near] - y0, fwhm) for n in nodes])
    for k, i in enumerate(near):
        out[i] = np.interp(dar, nodes, at_nodes[:, k])
    return out


def gmag_to_flam(g, wave=DEF_WAVE):
    """Flat-f_nu spectrum of AB magnitude g in 1e-17 erg/s/cm^2/A."""
    return 10 ** (-0.4 * (g + 48.6)) * 2.99792458e18 / wave**2 / 1e-17


@pytest.fixture(scope="module")
def field():
    fx, fy, exp = dithered_fibers()
    dar = dar_offsets(DEF_WAVE)
    return fx, fy, exp, dar


def test_extraction_recovers_total_flux(field):
    """Stars g = 17-19 at random positions: extracted / true within 2% (median, 4000-5400 A)."""
    fx, fy, exp, dar = field
    rng = np.random.default_rng(3)
    fwhm = 1.8
    psf = fiber_integrated_moffat(fwhm)
    sky_sigma = 0.15  # 1e-17 per fiber per pixel (sky-limited noise of a 360 s exposure)
    band = (DEF_WAVE > 4000) & (DEF_WAVE < 5400)
    ratios, pulls = [], []
    for g, (x0, y0) in zip([17.0, 18.0, 19.0], [(-4.3, 3.1), (7.7, -6.2), (0.4, 11.9)]):
        truth = gmag_to_flam(g) * (1 + 0.2 * np.sin(DEF_WAVE / 150.0))
        frac = star_fractions(fx, fy, x0, y0, fwhm, dar)
        model = frac * truth[None, :]
        sigma = np.sqrt(sky_sigma**2 + 0.02 * np.abs(model))
        flux = model + rng.normal(size=model.shape) * sigma
        res = extract_source(flux, sigma, None, fx, fy, x0, y0, psf, dar)
        ratios.append(np.median(res.spectrum[band] / truth[band]))
        pulls.append(np.std((res.spectrum[band] - truth[band]) / res.error[band]))
        assert res.coverage[band].min() > 0.8
    np.testing.assert_allclose(ratios, 1.0, atol=0.02)
    # Horne errors describe the scatter
    np.testing.assert_allclose(pulls, 1.0, atol=0.1)


def test_extraction_ignores_masked_fibers_and_uses_per_exposure_psf(field):
    fx, fy, exp, dar = field
    fwhms = (1.5, 1.9, 2.4)
    x0, y0 = 2.2, -1.3
    truth = gmag_to_flam(17.5)
    flux = np.zeros((fx.size, DEF_WAVE.size))
    for e, fw in enumerate(fwhms):
        sel = exp == e
        flux[sel] = star_fractions(fx[sel], fy[sel], x0, y0, fw, dar) * truth
    err = np.full_like(flux, 0.05)
    mask = np.zeros(flux.shape, bool)
    brightest = np.argsort(-flux[:, 500])[:2]
    flux[brightest, :] = 1e6  # corrupted ...
    mask[brightest, :] = True  # ... but masked
    psfs = [fiber_integrated_moffat(f) for f in fwhms]
    res = extract_source(flux, err, mask, fx, fy, x0, y0, psfs, dar, exposure=exp)
    np.testing.assert_allclose(res.spectrum / truth, 1.0, atol=0.01)
    # with one average PSF the answer is biased: the per-exposure PSF matters
    res1 = extract_source(flux, err, mask, fx, fy, x0, y0, fiber_integrated_moffat(1.9), dar)
    assert abs(np.median(res1.spectrum / truth) - 1) > 0.015


def test_injection_round_trip_and_no_coverage(field):
    fx, fy, exp, dar = field
    psf = fiber_integrated_moffat(2.0)
    spec = 5.0 + np.exp(-0.5 * ((DEF_WAVE - 4500) / 3.0) ** 2) * 40
    base = np.zeros((fx.size, DEF_WAVE.size))
    out = inject_source(base, fx, fy, -6.0, 4.0, spec, psf, dar)
    assert np.all(base == 0)  # input untouched
    res = extract_source(out, np.ones_like(out), None, fx, fy, -6.0, 4.0, psf, dar)
    np.testing.assert_allclose(res.spectrum, spec, rtol=1e-10)
    # the injected light is the full source flux spread over 3 exposures (about 3 x 0.32 seen)
    assert out.sum(axis=0)[500] / spec[500] == pytest.approx(3 * np.pi * R**2 / (2.54 * 2.2), rel=0.05)
    far = extract_source(out, np.ones_like(out), None, fx, fy, 200.0, 0.0, psf, dar)
    assert far.n_fibers == 0 and np.all(np.isnan(far.spectrum))


def test_extract_many_sources_matches_single(field):
    fx, fy, exp, dar = field
    psf = fiber_integrated_moffat(1.8)
    flux = inject_source(np.zeros((fx.size, DEF_WAVE.size)), fx, fy, 1.0, 2.0, np.full(1036, 7.0), psf, dar)
    spec, err, cov = extract_sources(flux, np.ones_like(flux), None, fx, fy, [1.0, 30.0], [2.0, 0.0], psf, dar)
    np.testing.assert_allclose(spec[0], 7.0, rtol=1e-10)
    assert np.all(np.isnan(spec[1]))
