"""Flux calibration: counts <-> flux, synthetic g magnitudes, photometric offset, end to end."""

import astropy.units as u
import numpy as np
import pytest
import speclite.filters

from remedy_dask.errors import CalibrationError
from remedy_dask.observation.fluxcal import (
    counts_to_flux,
    flux_to_counts,
    photometric_offset,
    synthetic_gmag,
    throughput_on_grid,
)
from remedy_dask.geometry import DEF_WAVE, DITHER_PATTERN, dar_offsets, ifu_fiber_layout
from remedy_dask.observation.psf import fiber_integrated_moffat
from remedy_dask.observation.sources import extract_source, inject_source


def ab_flam(mag, wave=DEF_WAVE):
    """Flat-f_nu spectrum of AB magnitude ``mag`` in 1e-17 erg/s/cm^2/A."""
    return 10 ** (-0.4 * (mag + 48.6)) * 2.99792458e18 / wave**2 / 1e-17


def test_synthetic_g_matches_speclite_and_ab_definition():
    w = np.arange(3000.0, 6000.0, 1.0)
    f = 3e-16 * (w / 4500.0) ** -1.7  # erg/s/cm^2/A
    ref = speclite.filters.load_filter("panstarrs-g").get_ab_magnitude(
        f * u.erg / u.s / u.cm**2 / u.AA, w * u.AA
    )
    mag, _ = synthetic_gmag(w, f / 1e-17)
    assert mag == pytest.approx(ref, abs=1e-3)
    # a flat-f_nu source has the same AB magnitude in every band, even with the VIRUS red cut-off
    assert synthetic_gmag(DEF_WAVE, ab_flam(19.3))[0] == pytest.approx(19.3, abs=2e-3)
    # photon-counting (T/lambda per f_nu) weighting, not Remedy's T*lambda: a steep spectrum
    # tells them apart by more than 0.01 mag
    steep = 1e-16 * (DEF_WAVE / 4500.0) ** -4 / 1e-17
    t_lambda_mag = _t_lambda_weighted(DEF_WAVE, steep)
    assert abs(synthetic_gmag(DEF_WAVE, steep)[0] - t_lambda_mag) > 0.01


def _t_lambda_weighted(wave, flam):
    filt = speclite.filters.load_filter("panstarrs-g")
    t = np.interp(wave, filt.wavelength, filt.response, left=0, right=0)
    fnu = flam * 1e-17 * wave**2 / 2.99792458e18
    return -2.5 * np.log10(np.sum(fnu * t * wave) / np.sum(t * wave)) - 48.6


def test_synthetic_g_masking_and_errors():
    rng = np.random.default_rng(0)
    truth = ab_flam(18.0)
    err = 0.1 * truth
    spec = truth.copy()
    spec[rng.choice(1036, 100, replace=False)] = np.nan  # 10% masked: interpolated over
    assert synthetic_gmag(DEF_WAVE, spec)[0] == pytest.approx(18.0, abs=5e-3)
    spec[200:800] = np.nan  # most of the band gone
    assert np.isnan(synthetic_gmag(DEF_WAVE, spec)[0])
    draws = truth + rng.normal(size=(400, 1036)) * err
    mags, errs = synthetic_gmag(DEF_WAVE, draws, np.broadcast_to(err, draws.shape))
    assert np.std(mags) == pytest.approx(np.median(errs), rel=0.15)
    assert np.isnan(synthetic_gmag(DEF_WAVE, -truth)[0])


def test_counts_to_flux_by_hand():
    thr = np.full(1036, 0.2)
    # 1e-16 erg/s/cm^2/A at 5000 A: photon energy h c / lambda = 3.9729e-12 erg
    photons = 1e-16 / 3.9729e-12 * 51.4e4 * 360.0 * 0.2
    j = np.argmin(np.abs(DEF_WAVE - 5000))
    counts = np.zeros(1036)
    counts[j] = photons
    assert counts_to_flux(counts, DEF_WAVE, 360.0, thr)[j] == pytest.approx(10.0, rel=1e-4)
    x = np.random.default_rng(1).normal(size=(5, 1036))
    back = counts_to_flux(flux_to_counts(x, DEF_WAVE, 300.0, thr, 4e5, 0.8), DEF_WAVE, 300.0, thr, 4e5, 0.8)
    np.testing.assert_allclose(back, x, rtol=1e-12)
    with pytest.raises(CalibrationError):
        counts_to_flux(counts, DEF_WAVE, 0.0, thr)
    with pytest.raises(CalibrationError):
        throughput_on_grid(np.array([4000.0, 5000.0]), np.array([0.1, 0.2]), DEF_WAVE)


def test_photometric_offset_is_robust():
    rng = np.random.default_rng(2)
    cat = rng.uniform(15.5, 19.5, 30)
    syn = cat - 0.25 + rng.normal(0, 0.03, 30)
    syn[:3] -= 1.0  # blends / bad matches
    syn[3] = np.nan
    cat_all = np.append(cat, 22.0)  # too faint: outside mag_range
    syn_all = np.append(syn, 21.75)
    res = photometric_offset(syn_all, cat_all)
    assert res.delta_mag == pytest.approx(0.25, abs=0.02)
    assert res.factor == pytest.approx(10 ** (-0.1), rel=0.02)
    assert res.n_used == 26
    assert not res.used[:4].any() and not res.used[-1]
    assert 0.015 < res.scatter < 0.05
    with pytest.raises(CalibrationError):
        photometric_offset(syn[:2], cat[:2])


def test_end_to_end_star_calibration():
    """Counts -> extraction -> flux with a 12% wrong throughput -> g offset -> spectra within 3%."""
    rng = np.random.default_rng(5)
    x, y = ifu_fiber_layout()
    fx = np.concatenate([x + d[0] for d in DITHER_PATTERN])
    fy = np.concatenate([y + d[1] for d in DITHER_PATTERN])
    dar = dar_offsets(DEF_WAVE)
    true_thr = 0.12 + 0.1 * np.exp(-0.5 * ((DEF_WAVE - 4700) / 600.0) ** 2)
    assumed_thr = true_thr * 1.12
    exptime, psf = 360.0, fiber_integrated_moffat(1.7)
    stars = []
    counts = np.zeros((fx.size, 1036))
    # well separated positions (blends are a separate problem): a 3x3 lattice minus one, jittered
    lattice = [(gx, gy) for gx in (-14.0, 0.0, 14.0) for gy in (-15.0, 0.0, 15.0)][:8]
    for k in range(8):
        g = rng.uniform(16.0, 19.0)
        slope = rng.uniform(-2.5, 0.5)
        shape = (DEF_WAVE / 4700.0) ** slope
        truth = ab_flam(g) * shape / 10 ** (-0.4 * (synthetic_gmag(DEF_WAVE, ab_flam(g) * shape)[0] - g))
        pos = (lattice[k][0] + rng.uniform(-2, 2), lattice[k][1] + rng.uniform(-2, 2))
        stars.append((g, pos, truth))
        counts = inject_source(counts, fx, fy, *pos, flux_to_counts(truth, DEF_WAVE, exptime, true_thr), psf, dar)
    sky = 60.0
    var = sky + np.abs(counts) + 9.0
    counts = counts + rng.normal(size=counts.shape) * np.sqrt(var)
    flux = counts_to_flux(counts, DEF_WAVE, exptime, assumed_thr)
    err = counts_to_flux(np.sqrt(var), DEF_WAVE, exptime, assumed_thr)
    spectra = [extract_source(flux, err, None, fx, fy, *pos, psf, dar).spectrum for _, pos, _ in stars]
    syn = np.array([synthetic_gmag(DEF_WAVE, s)[0] for s in spectra])
    cat = np.array([g for g, _, _ in stars]) + rng.normal(0, 0.02, len(stars))
    off = photometric_offset(syn, cat)
    band = (DEF_WAVE > 4000) & (DEF_WAVE < 5400)
    ratios = np.array(
        [np.median(s[band] * off.factor / t[band]) for s, (_, _, t) in zip(spectra, stars)]
    )
    assert np.median(ratios) == pytest.approx(1.0, abs=0.03)
    assert np.std(ratios) < 0.05
