"""Scattered-light kernel against analytic frames with a known smooth scattered component."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter
from synth_calib import add_noise, flat_flux, render_fibers, scattered_component, true_traces

from remedy_dask.errors import CalibrationError
from remedy_dask.scatter import scattered_light

U = (np.arange(1032) - 515.5) / 515.5
F = (np.arange(112) - 55.5) / 55.5
SIGMA = 1.4 + 0.1 * U[None, :] + 0.08 * F[:, None] ** 2


@pytest.fixture(scope="module")
def flat_light():
    trace = true_traces(4)
    return trace, render_fibers(trace, flat_flux(seed=5, dead=(60,)), sigma=SIGMA)


def _at_fibers(image, trace):
    cols = np.arange(image.shape[1])
    return np.array([image[np.round(t).astype(int), cols] for t in trace])


@pytest.mark.parametrize("kind, tol_rms, tol_fiber", [
    ("halo r0=60", 0.07, 0.10),  # the simulator's kernel (~3% of the light)
    ("gaussian 100", 0.12, 0.20),  # a kernel outside the template family
])
def test_scattered_light_under_the_fibers(flat_light, kind, tol_rms, tol_fiber):
    trace, clean = flat_light
    truth = (scattered_component(clean) if kind.startswith("halo")
             else 0.03 * gaussian_filter(clean, 100, mode="constant"))
    noisy, var = add_noise(clean + truth, seed=3)
    model = scattered_light(noisy, trace, variance=var)
    rel = (_at_fibers(model, trace) - _at_fibers(truth, trace)) / _at_fibers(truth, trace)
    # the gap medians of Remedy would be biased by ~+30% here (profile wings in the gaps)
    assert np.sqrt(np.mean(rel**2)) < tol_rms
    assert np.abs(rel.mean(axis=1)).max() < tol_fiber


def test_scattered_light_on_faint_sky_frame():
    trace = true_traces(2)
    x = np.arange(1032)
    sky = 250 + 80 * np.sin(x / 50.0) ** 2
    flux = np.tile(sky, (112, 1))
    flux[[20, 21]] *= 30  # a bright star
    clean = render_fibers(trace, flux, sigma=SIGMA)
    truth = scattered_component(clean)
    noisy, _ = add_noise(clean + truth, seed=10)
    err = scattered_light(noisy, trace) - truth
    assert abs(err.mean()) < 0.1 and np.sqrt(np.mean(err**2)) < 0.5  # e-, truth ~1 e-


def test_scattered_light_masks_and_rejects():
    trace = true_traces(2)
    clean = render_fibers(trace, np.full((112, 1032), 5000.0))
    truth = scattered_component(clean) + 3.0
    img = clean + truth
    mask = np.zeros(img.shape, bool)
    mask[:, 300] = True
    img[:, 300] = 0.0  # a dead column, masked
    err = scattered_light(img, trace, mask) - truth
    assert np.abs(err).mean() < 0.05 * truth.mean()
    with pytest.raises(CalibrationError):
        scattered_light(img, trace[:, :500])


def test_simulator_truth_scattered_light():
    from synth_calib import simulated_calibration

    from remedy_dask.sim.render import upsample_scattered

    cal = simulated_calibration("LL")
    frame = cal["frames"][("flt", None)][0]["rendered"]
    truth = upsample_scattered(frame.scattered_coarse, cal["config"].scattered_block)
    model = scattered_light(cal["flat"], cal["trace"].trace, cal["mask"])
    trace = cal["model"].trace
    rel = (_at_fibers(model, trace) - _at_fibers(truth, trace)) / _at_fibers(truth, trace)
    assert abs(rel.mean()) < 0.05 and np.sqrt(np.mean(rel**2)) < 0.07  # measured -0.03 / 0.034
