"""Masters, read noise, dark, pixel mask and frame checks on simulated detector frames with
known truth (Gaussian read noise, Poisson dark with hot pixels, a bad column, a charge trap)."""

from __future__ import annotations

import numpy as np
import pytest
from synth_calib import flat_flux, render_fibers, scattered_component, true_traces

from remedy_dask.errors import CalibrationError
from remedy_dask.amp.masters import (
    combine_frames,
    frame_quality,
    master_bias,
    master_dark,
    pixel_mask,
)

N = 1032
RN = 3.0
TRAP_ROW, TRAP_COL, BAD_COL = 400, 700, 222


@pytest.fixture(scope="module")
def detector():
    rng = np.random.default_rng(0)
    bias_struct = rng.normal(0, 0.7, N)[None, :] + np.linspace(-2, 2, N)[:, None]
    zeros = np.stack([bias_struct + rng.normal(0, RN, (N, N)) for _ in range(5)])
    hot_idx = np.unique(rng.integers(0, N * N, 1000))
    rate = np.full(N * N, 0.01)
    rate[hot_idx] += np.exp(rng.uniform(np.log(0.5), np.log(50), hot_idx.size))
    rate = rate.reshape(N, N)
    rate[TRAP_ROW - 2:TRAP_ROW + 1, TRAP_COL] += (0.4, 0.8, 1.5)  # trap glow
    darks = []
    for _ in range(3):
        e = rng.poisson(rate * 360).astype(float)
        r, c = rng.integers(0, N, 30), rng.integers(0, N, 30)
        e[r, c] += rng.uniform(300, 3000, 30)  # cosmic rays
        e[TRAP_ROW + 1:, TRAP_COL] = np.maximum(e[TRAP_ROW + 1:, TRAP_COL] - 250, 0)
        darks.append(e + bias_struct + rng.normal(0, RN, (N, N)))
    trace = true_traces(4)
    clean = render_fibers(trace, flat_flux(seed=5, dead=(60,)) * 0.4)
    clean += scattered_component(clean)
    flats = np.stack([rng.poisson(clean).astype(float) + rng.normal(0, RN, (N, N)) for _ in range(3)])
    flats[:, :, BAD_COL] *= 0.15
    flats[:, TRAP_ROW + 1:, TRAP_COL] = np.maximum(flats[:, TRAP_ROW + 1:, TRAP_COL] - 250, 0)
    truth = np.zeros((N, N), bool)
    truth.ravel()[hot_idx] = True
    truth[TRAP_ROW - 2:, TRAP_COL] = True
    truth[:, BAD_COL] = True
    return dict(zeros=zeros, bias_struct=bias_struct, darks=np.stack(darks), rate=rate,
                flats=flats, clean=clean, trace=trace, truth=truth, hot_idx=hot_idx)


def test_master_bias_and_read_noise(detector):
    bias, rn = master_bias(detector["zeros"])
    assert abs(rn - RN) < 0.03  # 1% (frame differences, quantisation-proof clipped std)
    err = bias - detector["bias_struct"]
    assert abs(err.mean()) < 0.01 and abs(err.std() - RN / np.sqrt(5)) < 0.05
    # one frame: adjacent-row differences
    _, rn1 = master_bias(detector["zeros"][:1])
    assert abs(rn1 - RN) < 0.05
    # ADU-quantised frames (gain 0.88): the MAD would be biased by up to half a step
    quantised = np.round(detector["zeros"] / 0.88) * 0.88
    assert abs(master_bias(quantised)[1] - np.hypot(RN, 0.88 / np.sqrt(12))) < 0.04
    with pytest.raises(CalibrationError):
        master_bias(np.zeros((3, 64, 64)))


def test_master_dark_rejects_cosmics_and_keeps_hot_pixels(detector):
    bias, _ = master_bias(detector["zeros"])
    raw = master_dark(detector["darks"], bias, np.full(3, 360.0))
    dark = master_dark(detector["darks"], bias, np.full(3, 360.0), denoise=True)
    rate, hot = detector["rate"], detector["hot_idx"]
    assert abs(np.median(dark) - 0.01) < 0.0005
    hot = hot[hot % N != TRAP_COL]  # the trap eats 250 e- above its row
    true_hot = rate.ravel()[hot]
    sigma = np.sqrt(true_hot * 1080 + 3 * RN**2) / 1080  # Poisson + read noise, 3 x 360 s
    assert np.all(np.abs(dark.ravel()[hot] - true_hot) < 5 * sigma)
    # denoised: away from defects the dark is smooth, not ~2 e- of noise per 360 s
    good = ~detector["truth"]
    assert (raw[good] - 0.01).std() * 360 > 1.5
    assert (dark[good] - 0.01).std() * 360 < 0.3
    # cosmic rays (positive, one frame) do not survive the clipped mean
    assert np.max(raw[good]) < 0.2
    with pytest.raises(CalibrationError):
        master_dark(detector["darks"], bias, np.array([360.0, 0.0, 360.0]))


def test_combine_frames_errors_follow_noise_model(detector):
    master, error = combine_frames(detector["flats"], "median")
    clean = detector["clean"]
    ok = ~detector["truth"] & (clean > 500)
    z = (master - clean)[ok] / error[ok]
    assert abs(np.std(z) - 1.0) < 0.05  # error of a 3-frame median, not of a mean
    m2, e2 = combine_frames(detector["flats"], "mean_clipped")
    z2 = (m2 - clean)[ok] / e2[ok]
    assert abs(np.std(z2) - 1.0) < 0.05 and np.median(e2[ok] / error[ok]) < 0.9
    scaled = detector["flats"] * np.array([1.0, 0.8, 1.2])[:, None, None]
    m3, _ = combine_frames(scaled, "median", normalize=True)
    assert abs(np.median(m3[ok] / clean[ok]) - 1.0) < 0.01


def test_pixel_mask_finds_defects_without_masking_good_pixels(detector):
    bias, _ = master_bias(detector["zeros"])
    dark = master_dark(detector["darks"], bias, np.full(3, 360.0))
    flat, _ = combine_frames(detector["flats"], "median")
    mask, stats = pixel_mask(dark, flat, detector["trace"])
    truth = detector["truth"]
    # a denoised dark finds the same defects
    mask_d, _ = pixel_mask(master_dark(detector["darks"], bias, np.full(3, 360.0), denoise=True), flat)
    assert mask_d[truth].mean() >= 0.95 and mask_d[~truth].mean() < 0.005
    assert mask[truth].mean() >= 0.95  # project target; measured 1.000
    assert mask[~truth].mean() < 0.005  # project target; measured ~0.0004
    assert mask.ravel()[detector["hot_idx"]].mean() > 0.99
    assert mask[:, BAD_COL].all() and mask[TRAP_ROW + 1:, TRAP_COL].all()
    assert stats["hot_pixels"] >= 990 and "masked_fraction_fibers" in stats


def test_frame_quality_reasons(detector):
    assert frame_quality(detector["zeros"][0], "zro") is None
    assert frame_quality(detector["flats"][0], "flt") is None
    assert "empty" in frame_quality(np.zeros((N, N)), "flt")
    assert "not a bias" in frame_quality(detector["flats"][0], "zro")
    saturated = detector["flats"][0].copy()
    saturated[:100] = 60000.0
    assert "saturated" in frame_quality(saturated, "flt")
    assert "no arc lines" in frame_quality(detector["zeros"][0] + 20.0, "cmp")
    assert "non-finite" in frame_quality(np.full((N, N), np.nan), "sci")


def test_simulator_truth_read_noise_dark_and_mask():
    from synth_calib import simulated_calibration

    cal = simulated_calibration("LL")
    model, mask = cal["model"], cal["mask"]
    assert abs(cal["read_noise"] / model.read_noise - 1.0) < 0.02  # measured 3.001 vs 2.990
    assert abs(np.median(cal["dark_raw"]) / model.dark_current - 1.0) < 0.05
    truth = np.zeros(mask.shape, bool)
    truth.ravel()[model.hot_index] = True
    truth[:, model.bad_column] = True
    truth[max(model.trap_row - 2, 0):, model.trap_col] = True  # glow + charge lost above
    assert mask[truth].mean() >= 0.95  # measured 1.000
    assert mask[~truth].mean() < 0.005  # measured 0.0002
