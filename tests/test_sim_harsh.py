"""The harsh-night options of the virtual instrument and the second pointing (issue 14), checked
on the night plan and single rendered frames against values computed here."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord

from remedy_dask.sim import SimConfig, instrument, spectra
from remedy_dask.sim.amp import ccd_drifts
from remedy_dask.sim.config import harsh_config, rng_for
from remedy_dask.sim.render import cosmic_rays, profile_weights
from remedy_dask.sim.scene import make_plan

KINDS = instrument.FRAME_KINDS


@pytest.fixture(scope="module")
def harsh_plan():
    cfg = harsh_config(second_pointing_arcsec=(30.0, 20.0))
    return make_plan("20190822", (47, 48), 9, 7, cfg, KINDS)


def test_kind_defaults_are_unchanged_by_the_new_knobs():
    cfg = SimConfig()
    plan = make_plan("20190822", (47,), 9, 7, cfg, KINDS)
    assert np.all(plan.illumination == 1.0) and np.all(plan.moffat_beta == 3.5)
    assert np.all(plan.stars["kind"] == 0) and len(plan.pointings) == 1
    np.testing.assert_array_equal(plan.stars["g_catalog_filter"], plan.stars["grizy"][:, 0])


def test_second_pointing(harsh_plan):
    plan = harsh_plan
    sci = [f for f in plan.frames if f.kind == "sci"]
    assert [(f.obs, f.exp, f.sci_index) for f in sci] == [
        (7, 1, 0), (7, 2, 1), (7, 3, 2), (8, 1, 3), (8, 2, 4), (8, 3, 5)]
    assert plan.n_sci == 6 and plan.dither(4) == plan.dither(1)
    p0, p1 = plan.pointings
    c0, c1 = SkyCoord(p0.ra0 * u.deg, p0.dec0 * u.deg), SkyCoord(p1.ra0 * u.deg, p1.dec0 * u.deg)
    assert c0.separation(c1).to_value(u.arcsec) == pytest.approx(np.hypot(30.0, 20.0), abs=1e-6)
    assert c0.position_angle(c1).to_value(u.deg) == pytest.approx(
        np.degrees(np.arctan2(30.0, 20.0)), abs=1e-6)
    assert p1.parangle == pytest.approx(p0.parangle + 0.8)
    # stars inside an IFU footprint in both observations
    st = plan.stars
    both = np.ones(st["ra"].size, bool)
    for p in plan.pointings:
        fx, fy = instrument.radec_to_focal(st["ra"], st["dec"], p.ra0, p.dec0, p.rotation)
        inside = np.zeros_like(both)
        for s in plan.ifuslots:
            x_fp, y_fp = plan.fplane[s]
            inside |= (np.abs(fx - y_fp) < 22) & (np.abs(fy - x_fp) < 22)
        both &= inside
    assert both.sum() >= 2


def test_harsh_conditions_and_stars(harsh_plan):
    plan = harsh_plan
    assert np.all((plan.illumination >= 0.96) & (plan.illumination <= 1.04))
    assert np.all((plan.moffat_beta >= 2.5) & (plan.moffat_beta <= 4.5))
    assert np.ptp(plan.moffat_beta) > 0.1
    st = plan.stars
    kind = st["kind"]
    assert np.bincount(kind, minlength=5).tolist()[1:] == [4, 2, 2, 1]
    assert np.all(st["g"][kind == 4] == 11.5)
    for s in plan.ifuslots:  # edge stars sit 20-25" off the IFU centre along x or y
        x_fp, y_fp = plan.fplane[s]
        dx, dy = st["fx"] - y_fp, st["fy"] - x_fp
        near = (kind == 1) & (np.abs(dx) < 26) & (np.abs(dy) < 26)
        assert near.sum() == 2
        assert np.all(np.maximum(np.abs(dx[near]), np.abs(dy[near])) >= 20)
    prim, comp = np.flatnonzero(kind == 2), np.flatnonzero(kind == 3)
    sep = np.hypot(st["fx"][prim] - st["fx"][comp], st["fy"][prim] - st["fy"][comp])
    assert np.all((sep >= 1.5) & (sep <= 3.0))
    colour = st["g_catalog_filter"] - st["g"]
    cool, hot = st["teff"] < 4500, st["teff"] > 8000
    assert np.all(colour[cool] < -0.03) and np.all(colour[hot] > 0.01)


def test_colour_term_zero_point():
    """A 6500 K star has the same g in both bands; the shifted band is redder, so a cooler star
    is brighter in it."""
    teff = np.array([6500.0, 4000.0])
    scale, mags = spectra.star_norm_and_colors(teff, np.array([17.0, 17.0]))
    g = spectra.modified_g_magnitudes(scale, teff, 50.0, 0.3)
    assert g[0] == pytest.approx(17.0, abs=1e-5) and g[1] < 16.96
    assert spectra.modified_g_magnitudes(scale, teff, 0.0, 0.0) == pytest.approx(mags[:, 0],
                                                                                abs=1e-5)


def test_per_amp_drifts(harsh_plan):
    ll = ccd_drifts(harsh_plan, 47, "LL")
    lu = ccd_drifts(harsh_plan, 47, "LU")
    kind = dataclasses.replace(harsh_plan, config=dataclasses.replace(
        harsh_plan.config, drift_amp_rms_px=0.0, drift_amp_exposure_rms_px=0.0))
    own = [np.asarray(ll[i]) - ccd_drifts(kind, 47, "LL")[i] for i in range(2)]
    assert 0 < np.abs(own[0]).max() < 0.15 and np.std(own[0]) > 0.001
    kind_diff = ccd_drifts(kind, 47, "LL")[0] - ccd_drifts(kind, 47, "LU")[0]
    assert not np.allclose(ll[0] - lu[0], kind_diff)


def test_faint_multi_pixel_cosmic_rays():
    cfg = harsh_config()
    img, mask = cosmic_rays(rng_for(1, "cr"), cfg, 3600.0)
    from scipy import ndimage

    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    sizes = ndimage.sum(mask, labels, np.arange(1, n + 1))
    totals = ndimage.sum(img, labels, np.arange(1, n + 1))
    assert n > 200 and sizes.max() <= 12 and np.median(sizes) >= 2
    assert totals.min() >= 499 and np.median(totals) < 5000 and totals.max() <= 2 * 20000


def test_profile_halo_weights():
    """Trace at row 500.3, window +-24 rows: rows 476..524 span -24.8 .. +24.2 px from it."""
    from scipy.special import ndtr

    trace = np.full((1, 1032), 500.3)
    sigma = np.full((1, 1032), 1.4)
    _, w0 = profile_weights(trace, sigma, 0.10, 3.2, 24)
    _, w1 = profile_weights(trace, sigma, 0.10, 3.2, 24, 0.04, 4.0)
    col = w1[0, :, 0]
    # rows 476..489 (edges -24.8 .. -10.8) and 511..524 (+10.2 .. +24.2)
    far = col[:14].sum() + col[35:].sum()
    halo = 0.02 * (np.exp(-10.8 / 4) - np.exp(-24.8 / 4) + np.exp(-10.2 / 4) - np.exp(-24.2 / 4))
    gauss = 0.10 * (ndtr(-10.8 / 3.2) - ndtr(-24.8 / 3.2) + ndtr(-10.2 / 3.2) - ndtr(-24.2 / 3.2))
    assert far == pytest.approx(halo + gauss, rel=1e-6)
    assert col.sum() == pytest.approx(1.0 - 0.02 * (np.exp(-24.8 / 4) + np.exp(-24.2 / 4)),
                                      abs=1e-9)
    assert w0[0, :, 0].sum() == pytest.approx(1.0, abs=1e-9)
