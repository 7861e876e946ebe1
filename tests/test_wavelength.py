"""Wavelength solution and sky-line shift against analytic arc / sky spectra with known truth
(pixel-integrated 5.6 A lines, per-fiber zero points and slopes, smooth smile, noise)."""

from __future__ import annotations

import numpy as np
import pytest
from synth_calib import default_arc_lines, noisy_spectra, render_arcs, true_wavelength

from remedy_dask import geometry
from remedy_dask.errors import CalibrationError
from remedy_dask.wavelength import (
    find_lines,
    identify_lines,
    measure_wavelength_shift,
    solve_wavelength,
)

X = np.arange(1032)


@pytest.fixture(scope="module")
def truth():
    return true_wavelength(seed=5)


def _arcs(truth, scale=1.0, dead=(33,), lamps=("Hg", "Cd-A"), seed=6):
    keep = {w for lamp in lamps for w in geometry.ARC_LINES[lamp]}
    lines = {w: f * scale for w, f in default_arc_lines().items() if w in keep}
    spec, err = noisy_spectra(render_arcs(truth, lines), seed=seed)
    spec[list(dead)] = 0.0
    return spec, err


@pytest.mark.parametrize("scale, tol_rms, tol_fiber", [(1.0, 0.025, 0.06), (0.2, 0.045, 0.10)])
def test_solution_accuracy(truth, scale, tol_rms, tol_fiber):
    spec, err = _arcs(truth, scale)
    dead = np.zeros(112, bool)
    dead[33] = True
    res = solve_wavelength(spec, err, dead=dead)
    live = ~dead
    diff = res.wavelength - truth
    per_fiber = np.sqrt(np.mean(diff**2, axis=1))
    # project targets 0.05 A rms, 0.15 A worst fiber (Remedy: 0.25 / 0.8 A)
    assert np.sqrt(np.mean(diff[live] ** 2)) < tol_rms
    assert per_fiber[live].max() < tol_fiber
    assert res.qa["n_lines_identified"] == 9
    assert res.n_lines[33] == 0 and np.isnan(res.rms[33]) and np.all(res.n_lines[live] >= 7)
    assert per_fiber[33] < 1.0  # the dead fiber is interpolated (its own zero point is unknown)


def test_identification_is_robust_to_unknown_offset_and_extra_peaks(truth):
    shifted = truth + 35.0  # an unexpected 17 px offset of the whole solution
    spec, _ = noisy_spectra(render_arcs(shifted, {**default_arc_lines(), 4500.0: 20000.0}))
    peaks, _ = find_lines(np.median(spec[50:60], axis=0))
    lines = np.array(sorted(default_arc_lines()))
    match, coef = identify_lines(peaks, lines, 1032)
    assert (match >= 0).all()
    x = peaks[match]
    true_x = np.array([np.interp(w, shifted[55], X) for w in lines])
    assert np.abs(x - true_x).max() < 1.0


def test_missing_lamp_is_reported(truth):
    spec, err = _arcs(truth, lamps=("Hg",))
    with pytest.raises(CalibrationError, match="Cd-A 3610.508.*lamp off"):
        solve_wavelength(spec, err)


def _sky(truth, shift, seed):
    """Sky spectra (~180 e-/px continuum, Hg lines of ~150-230 e-) with the science drift."""
    sci = np.stack([np.interp(X - shift, X, w) for w in truth])
    spec = render_arcs(sci, {4046.565: 150.0, 4358.335: 220.0, 5460.75: 230.0}, continuum=184.0)
    spec[[10, 11]] += 3000 * np.exp(-0.5 * ((X - 500) / 300.0) ** 2)  # a star
    return noisy_spectra(spec, read_noise=6.0, seed=seed)


@pytest.mark.parametrize("shift", [0.12, -0.23])
def test_sky_line_shift(truth, shift):
    errors = []
    for seed in range(4):
        spec, err = _sky(truth, shift, 100 + seed)
        mask = np.zeros(spec.shape, bool)
        mask[20, 440:450] = True  # a masked stretch over the 4358 line of one fiber
        errors.append(measure_wavelength_shift(spec, truth, mask, error=err) - shift)
    # statistical error ~0.015 px for these line fluxes; target 0.03 px
    assert np.sqrt(np.mean(np.square(errors))) < 0.025
    assert np.abs(errors).max() < 0.04


def test_sky_line_shift_is_unbiased_without_noise(truth):
    sci = np.stack([np.interp(X - 0.17, X, w) for w in truth])
    spec = render_arcs(sci, {4046.565: 150.0, 4358.335: 220.0, 5460.75: 230.0}, continuum=184.0)
    assert abs(measure_wavelength_shift(spec, truth) - 0.17) < 0.002


def test_sky_line_shift_needs_lines(truth):
    with pytest.raises(CalibrationError):
        measure_wavelength_shift(np.full((112, 1032), 100.0), truth)


def test_simulator_truth_wavelength_and_drift():
    from synth_calib import profile_weighted_spectra, simulated_calibration

    from remedy_dask.scatter import scattered_light
    from remedy_dask.trace import measure_trace_shift

    cal = simulated_calibration("LL")
    model, tr, mask = cal["model"], cal["trace"], cal["mask"]
    masters = [cal["master"](("cmp", lamp)) for lamp in geometry.ARC_LAMPS]
    arc = sum(m for m, _ in masters)
    arc = arc - scattered_light(arc, tr.trace, mask)
    spec, err = profile_weighted_spectra(arc, sum(e**2 for _, e in masters), tr.trace, tr.profile,
                                         mask)
    res = solve_wavelength(spec, err, dead=tr.dead)
    live = ~tr.dead
    diff = res.wavelength - model.wavelength()
    assert np.sqrt(np.mean(diff[live] ** 2)) < 0.02  # target 0.05 A; measured 0.008
    assert np.sqrt(np.mean(diff**2, axis=1))[live].max() < 0.05  # target 0.15 A; measured 0.02
    errors = []
    for i, frame in enumerate(cal["frames"][("sci", None)]):
        image = frame["image"] - cal["bias"] - cal["dark"] * frame["header"]["EXPTIME"]
        trace = tr.trace + measure_trace_shift(image, frame["variance"], mask, tr.trace)
        image = image - scattered_light(image, trace, mask)
        sky, sky_err = profile_weighted_spectra(image, frame["variance"], trace, tr.profile, mask)
        errors.append(measure_wavelength_shift(sky, res.wavelength, error=sky_err)
                      - model.wave_shift[i])
    # statistical error of one amp-exposure ~0.017 px (sky-line photon noise); target 0.03 px;
    # measured 0.014, -0.005, 0.005 here (rms 0.018, max 0.038 over the 12 of the IFU)
    assert np.sqrt(np.mean(np.square(errors))) < 0.03 and np.abs(errors).max() < 0.05
