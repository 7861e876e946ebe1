"""Astrometry: collapsed images, star detection, catalogue matching and the shift+rotation fit."""

import numpy as np
import pytest

from remedy_dask.observation.astrometry import (
    collapsed_image,
    detect_stars,
    fit_astrometry,
    match_catalog,
)
from remedy_dask.observation.cube import ImageGrid
from remedy_dask.errors import CalibrationError
from remedy_dask.geometry import (
    DEF_WAVE,
    DITHER_PATTERN,
    FIBER_DIAMETER,
    dar_offsets,
    focal_to_sky,
    ifu_fiber_layout,
)
from remedy_dask.observation.psf import moffat_alpha
from remedy_dask.observation.seeing import fit_seeing

R = FIBER_DIAMETER / 2.0
RA0, DEC0, ROT = 215.31, 53.12, 123.456


def brute_fraction(dx, dy, fwhm, beta=3.5, step=0.05):
    """Independent truth: Moffat summed over a square grid of points inside the fiber disc."""
    g = np.arange(-R + step / 2, R, step)
    gx, gy = np.meshgrid(g, g)
    inside = gx**2 + gy**2 <= R**2
    alpha = moffat_alpha(fwhm, beta)
    r2 = (np.asarray(dx)[..., None] + gx[inside]) ** 2 + (np.asarray(dy)[..., None] + gy[inside]) ** 2
    dens = (beta - 1) / (np.pi * alpha**2) * (1 + r2 / alpha**2) ** (-beta)
    return dens.sum(-1) * (np.pi * R**2) / inside.sum()


def sky_sep_arcsec(ra1, dec1, ra2, dec2):
    return np.hypot((ra1 - ra2) * np.cos(np.deg2rad(dec2)), dec1 - dec2) * 3600.0


def focal_plane_field(rng, n_ifu_side=8, stars_per_ifu=4):
    """IFU centres on a 100" lattice and catalogue stars scattered over the IFUs."""
    c = (np.arange(n_ifu_side) - (n_ifu_side - 1) / 2) * 100.0
    ifx, ify = [a.ravel() for a in np.meshgrid(c, c)]
    n = ifx.size * stars_per_ifu
    k = np.repeat(np.arange(ifx.size), stars_per_ifu)
    fx = ifx[k] + rng.uniform(-22, 22, n)
    fy = ify[k] + rng.uniform(-22, 22, n)
    ra, dec = focal_to_sky(fx, fy, RA0, DEC0, ROT)
    return ifx, ify, fx, fy, ra, dec


def test_fit_recovers_shift_and_rotation():
    rng = np.random.default_rng(7)
    ifx, ify, fx, fy, ra, dec = focal_plane_field(rng)
    n = fx.size
    det_fx = fx + rng.normal(0, 0.1, n)
    det_fy = fy + rng.normal(0, 0.1, n)
    det_fx[:6] += rng.uniform(2, 4, 6)  # blends and bad centroids
    # the catalogue also has stars that were not detected
    extra_ra, extra_dec = focal_to_sky(rng.uniform(-300, 300, 80), rng.uniform(-300, 300, 80), RA0, DEC0, ROT)
    cat_ra, cat_dec = np.append(ra, extra_ra), np.append(dec, extra_dec)
    # initial solution from the header: 3" and 0.05 deg off
    ra_i = RA0 + 3.0 / 3600 / np.cos(np.deg2rad(DEC0))
    dec_i, rot_i = DEC0 - 2.0 / 3600, ROT + 0.05
    m = match_catalog(det_fx, det_fy, cat_ra, cat_dec, ra_i, dec_i, rot_i, match_radius=1.5)
    assert m.det_index.size > 0.9 * n
    assert np.mean(m.cat_index == m.det_index) > 0.99  # the right partners
    res = fit_astrometry(det_fx[m.det_index], det_fy[m.det_index], cat_ra[m.cat_index],
                         cat_dec[m.cat_index], ra_i, dec_i, rot_i)
    # a second match with the fitted solution picks up the rest
    m2 = match_catalog(det_fx, det_fy, cat_ra, cat_dec, res.ra0, res.dec0, res.rotation, match_radius=1.0)
    res = fit_astrometry(det_fx[m2.det_index], det_fy[m2.det_index], cat_ra[m2.cat_index],
                         cat_dec[m2.cat_index], res.ra0, res.dec0, res.rotation)
    assert sky_sep_arcsec(res.ra0, res.dec0, RA0, DEC0) < 0.05
    assert abs(res.rotation - ROT) < 0.01
    assert not res.used[m2.det_index < 6].any()  # outliers rejected
    assert res.rms == pytest.approx(0.1 * np.sqrt(2), rel=0.2)
    # every fiber of every IFU lands where the truth puts it
    x, y = ifu_fiber_layout()
    all_fx = (ifx[:, None] + x[None, :]).ravel()
    all_fy = (ify[:, None] + y[None, :]).ravel()
    got = focal_to_sky(all_fx, all_fy, res.ra0, res.dec0, res.rotation)
    want = focal_to_sky(all_fx, all_fy, RA0, DEC0, ROT)
    rms = np.sqrt(np.mean(sky_sep_arcsec(*got, *want) ** 2))
    assert rms < 0.03
    # the reported uncertainties are of the right size
    assert res.ra0_err < 0.03 and res.rotation_err < 0.005


def test_fit_exact_data_is_exact_and_too_few_stars_raise():
    rng = np.random.default_rng(8)
    _, _, fx, fy, ra, dec = focal_plane_field(rng, 3, 2)
    res = fit_astrometry(fx, fy, ra, dec, RA0 + 0.002, DEC0 - 0.001, ROT - 0.3)
    assert sky_sep_arcsec(res.ra0, res.dec0, RA0, DEC0) < 1e-6
    assert res.rotation == pytest.approx(ROT, abs=1e-7)
    assert res.rms < 1e-6 and res.n_stars == fx.size
    with pytest.raises(CalibrationError):
        fit_astrometry(fx[:2], fy[:2], ra[:2], dec[:2], RA0, DEC0, ROT)


@pytest.fixture(scope="module")
def ifu_with_stars():
    """One IFU, 3 dithers, two stars with DAR, flux in 1e-17 erg/s/cm^2/A."""
    rng = np.random.default_rng(9)
    x, y = ifu_fiber_layout()
    fx = np.concatenate([x + d[0] for d in DITHER_PATTERN])
    fy = np.concatenate([y + d[1] for d in DITHER_PATTERN])
    exp = np.repeat(np.arange(3), x.size)
    dar = dar_offsets(DEF_WAVE)
    stars = [(-7.3, 6.6, 8.0), (9.1, -10.4, 3.0)]
    nodes = np.linspace(dar.min(), dar.max(), 20)
    flux = np.zeros((fx.size, DEF_WAVE.size))
    for x0, y0, amp in stars:
        near = np.flatnonzero(np.hypot(fx - x0, fy - y0) < 9)
        at = np.array([brute_fraction(fx[near] - x0 - n, fy[near] - y0, 1.8) for n in nodes])
        for k, i in enumerate(near):
            flux[i] += amp * np.interp(dar, nodes, at[:, k])
    sigma = np.full_like(flux, 0.15)
    flux += rng.normal(size=flux.shape) * sigma
    return fx, fy, exp, dar, stars, flux, sigma


def test_collapsed_image_and_detection(ifu_with_stars):
    fx, fy, exp, dar, stars, flux, sigma = ifu_with_stars
    mask = np.zeros(flux.shape, bool)
    mask[100:110] = True  # a dead stretch of fibers
    flux = flux.copy()
    flux[100:110] = np.nan
    img = collapsed_image(flux, mask, fx, fy, DEF_WAVE, dar=dar, grid=ImageGrid.centered(25.0, 0.5))
    assert np.isfinite(img.image[img.weight > 0.5]).all()
    # proper normalisation: the image sums to the star's band-averaged flux density
    yy, xx = np.meshgrid(img.grid.y, img.grid.x, indexing="ij")
    ap = np.hypot(xx - stars[0][0], yy - stars[0][1]) < 6.0
    assert np.nansum(img.image[ap]) == pytest.approx(stars[0][2], rel=0.05)
    found = detect_stars(img, fwhm=2.5, nsigma=5.0)
    assert found.x.size == 2
    order = np.argsort(-found.peak)
    for (x0, y0, _), k in zip(stars, order):
        assert np.hypot(found.x[k] - x0, found.y[k] - y0) < 0.2
    # the PSF fit to fiber fluxes refines positions further
    fit = fit_seeing(flux, sigma, mask, fx, fy, exp, found.x[order], found.y[order], DEF_WAVE, dar)
    for (x0, y0, _), sx, sy in zip(stars, fit.star_x, fit.star_y):
        assert np.hypot(sx - x0, sy - y0) < 0.05


def test_empty_image_raises_and_blank_sky_finds_nothing(ifu_with_stars):
    fx, fy, exp, dar, stars, flux, sigma = ifu_with_stars
    with pytest.raises(CalibrationError):
        collapsed_image(flux, np.ones(flux.shape, bool), fx, fy, DEF_WAVE)
    rng = np.random.default_rng(1)
    img = collapsed_image(rng.normal(size=flux.shape) * 0.15, None, fx, fy, DEF_WAVE, dar=dar)
    assert detect_stars(img, nsigma=5.0).x.size == 0
