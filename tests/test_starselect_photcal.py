"""Star-selection rules and the photometric calibration from field stars (literal inputs)."""

import numpy as np
import pytest

from remedy_dask.errors import CalibrationError
from remedy_dask.geometry import DEF_WAVE, DITHER_PATTERN, ifu_fiber_layout
from remedy_dask.observation.photcal import (
    exposure_normalisation,
    flux_scale_error,
    per_exposure_fluxes,
    zero_point,
)
from remedy_dask.observation.psf import RadialPSF, fiber_integrated_moffat
from remedy_dask.observation.sources import inject_source
from remedy_dask.observation.starselect import (
    StarRules,
    blend_contamination,
    extraction_overlap,
    reject_reasons,
    relative_coverage,
)


def _gaussian_table(sigma: float) -> RadialPSF:
    r = np.arange(0.0, 8.0, 0.01)
    return RadialPSF(2.3548 * sigma, 0.0, 1.5, r, np.exp(-0.5 * (r / sigma) ** 2))


def test_extraction_overlap_of_a_gaussian():
    """The autocorrelation of a Gaussian of sigma s is a Gaussian of sigma s*sqrt(2)."""
    r = np.array([0.0, 1.0, 2.0, 3.0])
    got = extraction_overlap(_gaussian_table(1.0), r, step=0.05)
    np.testing.assert_allclose(got, np.exp(-r**2 / 4.0), atol=2e-3)


def test_blend_contamination_flux_ratio_and_radius():
    dec0 = 30.0
    east = 1.0 / 3600.0 / np.cos(np.deg2rad(dec0))  # 1 arcsec east in RA degrees
    ra = np.array([10.0, 10.0 + 2 * east, 10.0 + 30 * east])
    dec = np.full(3, dec0)
    g = np.array([17.0, 17.0 + 2.5 * np.log10(2.0), 12.0])  # B half as bright, C far and bright
    psf = _gaussian_table(1.0)
    got = blend_contamination(ra, dec, g, np.array([0, 1]), psf, radius=15.0)
    want_a = 0.5 * np.exp(-4.0 / 4.0)  # B is half of A, 2" away
    want_b = 2.0 * np.exp(-4.0 / 4.0)
    np.testing.assert_allclose(got, [want_a, want_b], rtol=0.01)


def test_reject_reasons_in_order():
    rules = StarRules(bright_limit=15.0, blend_limit=0.01, min_coverage=0.9)
    got = reject_reasons(np.array([14.0, 17.0, 17.0, 17.0, np.nan, 14.5]),
                         np.array([0.0, 0.05, 0.0, 0.0, 0.0, 0.5]),
                         np.array([1.0, 1.0, 0.5, 1.0, 1.0, 0.1]), rules)
    assert list(got) == ["saturated (g < 15)", "blend (5% neighbour light)",
                         "edge (PSF coverage 0.50)", "", "no catalogue g", "saturated (g < 15)"]


def test_relative_coverage_centre_edge_outside():
    x, y = ifu_fiber_layout()
    fx = np.concatenate([x + d[0] for d in DITHER_PATTERN])
    fy = np.concatenate([y + d[1] for d in DITHER_PATTERN])
    exp = np.repeat(np.arange(3), x.size)
    psf = fiber_integrated_moffat(1.8, 2.5)
    top = float(fy.max())
    cov = relative_coverage(fx, fy, exp, np.ones(fx.size, bool), [0.0, 0.0, 0.0], [0.0, top, top + 30],
                            [psf] * 3, centre=(0.0, 0.0))
    assert cov[0] == pytest.approx(1.0)
    assert 0.3 < cov[1] < 0.7  # on the outermost row: about half the light is on the IFU
    assert cov[2] == pytest.approx(0.0, abs=1e-6)


def test_exposure_normalisation_is_robust_to_a_variable_star():
    true = np.array([0.9, 1.1, 1.0])
    flux = np.array([[100.0], [200.0], [50.0], [400.0], [150.0]]) * true
    flux[4] *= [1.0, 1.3, 1.0]  # a variable star brightens in exposure 2
    res = exposure_normalisation(flux, 0.001 * flux)
    want = true / np.exp(np.mean(np.log(true)))
    np.testing.assert_allclose(res.norm, want, rtol=2e-3)
    assert res.n_stars == 5
    with pytest.raises(CalibrationError):
        exposure_normalisation(flux[:2], 0.001 * flux[:2])


def test_per_exposure_fluxes_recover_the_transparency():
    x, y = ifu_fiber_layout()
    fx = np.concatenate([x + d[0] for d in DITHER_PATTERN])
    fy = np.concatenate([y + d[1] for d in DITHER_PATTERN])
    exp = np.repeat(np.arange(3), x.size)
    psfs = [fiber_integrated_moffat(f, b) for f, b in ((1.5, 2.8), (1.7, 4.3), (1.4, 3.8))]
    flux = np.zeros((fx.size, DEF_WAVE.size))
    scale = np.array([0.85, 1.0, 0.93])
    for x0, y0, f0 in ((-8.0, 5.0, 100.0), (7.0, -6.0, 40.0)):
        flux = inject_source(flux, fx, fy, x0, y0, np.full(DEF_WAVE.size, f0), psfs, None, exp)
    flux *= scale[exp][:, None]
    band = (DEF_WAVE > 4000) & (DEF_WAVE < 5400)
    got, _ = per_exposure_fluxes(flux, np.ones_like(flux), np.zeros(flux.shape, bool), fx, fy, exp,
                                   [-8.0, 7.0], [5.0, -6.0], psfs, None, band)
    np.testing.assert_allclose(got, [100.0 * scale, 40.0 * scale], rtol=1e-3)


def test_zero_point_rules_range_and_clip():
    gc = np.array([16.0, 16.5, 17.0, 17.5, 18.0, 18.5, 17.2, 20.0, 14.0])
    gv = gc - 0.10
    gv[6] = gc[6] - 0.60  # a mismatched / variable star
    reasons = np.array([""] * 8 + ["saturated (g < 15)"])
    zp = zero_point(gv, gc, np.full(gc.size, 0.01), reasons, (15.0, 19.0))
    assert zp.delta_mag == pytest.approx(0.10)
    assert zp.factor == pytest.approx(10 ** (-0.04))
    assert list(zp.used) == [True] * 6 + [False] * 3
    assert zp.reason[6].startswith("clipped (+0.50 mag")
    assert zp.reason[7] == "g outside 15-19"
    assert zp.reason[8] == "saturated (g < 15)"
    assert zp.error == pytest.approx(1.2533 * 0.02 / np.sqrt(6))


def test_deblended_extraction_of_a_close_pair():
    """Two sources 2" apart (100 and 50): extracted alone each picks up its neighbour's light;
    extracted jointly both come back, and a lone source is untouched."""
    from remedy_dask.observation.deblend import extract_sources_deblended, source_groups
    from remedy_dask.observation.sources import extract_sources

    x, y = ifu_fiber_layout()
    fx = np.concatenate([x + d[0] for d in DITHER_PATTERN])
    fy = np.concatenate([y + d[1] for d in DITHER_PATTERN])
    exp = np.repeat(np.arange(3), x.size)
    psfs = [fiber_integrated_moffat(1.6, 3.0)] * 3
    xs, ys, fs = [-5.0, -3.0, 10.0], [4.0, 4.0, -8.0], [100.0, 50.0, 80.0]
    flux = np.zeros((fx.size, DEF_WAVE.size))
    for a, b, f0 in zip(xs, ys, fs):
        flux = inject_source(flux, fx, fy, a, b, np.full(DEF_WAVE.size, f0), psfs, None, exp)
    err = np.ones_like(flux)
    assert list(source_groups(np.array(xs), np.array(ys), 6.0)) == [0, 0, 1]
    alone, _, _ = extract_sources(flux, err, None, fx, fy, xs, ys, psfs, None, exp)
    assert alone[1].mean() > 1.2 * 50.0
    joint, jerr, _ = extract_sources_deblended(flux, err, None, fx, fy, xs, ys, psfs, None, exp)
    np.testing.assert_allclose(np.nanmean(joint, axis=1), fs, rtol=1e-6)
    np.testing.assert_allclose(joint[2], alone[2])
    assert np.all(jerr[:2] > 0)


def test_star_positions_with_a_fitted_neighbour():
    """Positions of a lone star and both members of a 2" pair, started 0.2-0.3" off, come back
    to 0.01"; a star that is not free is fitted only as a neighbour (NaN)."""
    from remedy_dask.geometry import dar_offsets
    from remedy_dask.observation.starfit import fit_star_positions

    rng = np.random.default_rng(7)
    x, y = ifu_fiber_layout()
    fx = np.concatenate([x + d[0] for d in DITHER_PATTERN])
    fy = np.concatenate([y + d[1] for d in DITHER_PATTERN])
    exp = np.repeat(np.arange(3), x.size)
    psfs = [fiber_integrated_moffat(f, b) for f, b in ((1.5, 2.8), (1.7, 4.3), (1.4, 3.8))]
    dar = dar_offsets(DEF_WAVE)
    xs, ys, fs = [-5.0, -3.0, 10.0, 4.0], [4.0, 4.5, -8.0, 12.0], [300.0, 150.0, 200.0, 100.0]
    flux = np.zeros((fx.size, DEF_WAVE.size))
    for a, b, f0 in zip(xs, ys, fs):
        flux = inject_source(flux, fx, fy, a, b, np.full(DEF_WAVE.size, f0), psfs, dar, exp)
    sigma = np.sqrt(4.0 + 0.05 * flux)
    flux += rng.normal(size=flux.shape) * sigma
    start_x = np.array(xs) + [0.2, -0.25, 0.3, 0.0]
    start_y = np.array(ys) + [-0.2, 0.2, 0.25, 0.0]
    free = np.array([True, True, True, False])
    pos = fit_star_positions(flux, sigma, None, fx, fy, exp, start_x, start_y, psfs, dar, free)
    np.testing.assert_allclose(pos.x[:3], xs[:3], atol=0.01)
    np.testing.assert_allclose(pos.y[:3], ys[:3], atol=0.01)
    assert np.all((pos.error[:3] > 0) & (pos.error[:3] < 0.01))
    assert np.isnan(pos.x[3]) and np.isnan(pos.error[3])


def test_catalog_position_error_from_residuals():
    from remedy_dask.observation.astrometry import catalog_position_error

    res = np.array([[0.05, 0.0], [0.0, 0.05], [-0.05, 0.0], [0.0, -0.05]])
    got = catalog_position_error(res, np.full(4, 0.02), floor=0.01)
    assert got == pytest.approx(np.sqrt(0.05**2 / 2 - 0.02**2))
    assert catalog_position_error(res, np.full(4, 0.2), floor=0.01) == 0.01
    assert catalog_position_error(np.zeros((0, 2)), np.zeros(0), floor=0.03) == 0.03


def test_flux_scale_error_in_quadrature():
    # 0.02 mag is 1.842 % (0.4 ln 10 x 0.02); with 1 % of normalisation: 2.096 % of 1.2 / 0.8
    got = flux_scale_error(1.2, 0.02, np.array([0.8, 1.0]), np.array([0.01, 0.0]))
    np.testing.assert_allclose(got, [1.5 * np.hypot(0.018421, 0.01), 1.2 * 0.018421], rtol=1e-4)


def testautocorrelation_is_scipys_fftconvolve():
    """The blend rule's overlap map: the same numbers as scipy.signal.fftconvolve (whose import
    the workers are spared)."""
    from scipy.signal import fftconvolve

    from remedy_dask.observation.starselect import autocorrelation

    rng = np.random.default_rng(1)
    for shape in ((5, 5), (61, 61), (7, 9)):
        f = rng.random(shape)
        np.testing.assert_array_equal(autocorrelation(f), fftconvolve(f, f[::-1, ::-1], "full"))
