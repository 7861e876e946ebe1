"""The compiled block solution of the sky-line shift fit (remedy_dask.amp.skyshift_kernel) is
bit-identical to its numpy array formulation (written out here), on simulated sky spectra with
masked pixels, unused blocks and a given amplitude weighting."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import ndtr
from synth_calib import noisy_spectra, render_arcs, true_wavelength

from remedy_dask import geometry
from remedy_dask.amp import skyshift

INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)


def _array_solve(blocks, wavelength, shift, sigma, amp_weight=None):
    """The array formulation: profiles G, dG/ds at the pixel edges, 3x3 cofactor solution."""
    n_fib, n_cols = wavelength.shape
    n_pix = blocks.rel.size
    q = -0.5 - np.asarray(shift, dtype=float)
    iq = np.floor(q)
    frac = (q - iq)[:, None, None]
    idx = np.clip(blocks.start[..., None] + iq.astype(int)[:, None, None] + np.arange(n_pix + 1),
                  0, n_cols - 2) + (np.arange(n_fib) * n_cols)[None, :, None]
    w0, w1 = wavelength.ravel()[idx], wavelength.ravel()[idx + 1]
    u = (w0 + frac * (w1 - w0) - blocks.lines[:, None, None]) / sigma
    g = np.diff(ndtr(u), axis=-1)
    dg = np.diff(np.exp(-0.5 * u * u) * (w0 - w1), axis=-1) * (INV_SQRT_2PI / sigma)
    w, y, r = blocks.weight, blocks.data, blocks.rel
    wr, wg, wd = w * r, w * g, w * dg
    s0, s1, s2 = w.sum(-1), wr.sum(-1), (wr * r).sum(-1)
    g0, g1, gg = wg.sum(-1), (wg * r).sum(-1), (wg * g).sum(-1)
    d0, d1, dgg, dd = wd.sum(-1), (wd * r).sum(-1), (wd * g).sum(-1), (wd * dg).sum(-1)
    y0, y1, gy, dy = (w * y).sum(-1), (wr * y).sum(-1), (wg * y).sum(-1), (wd * y).sum(-1)
    yy = (w * y * y).sum(-1)
    c00, c01, c02 = s2 * gg - g1 * g1, g1 * g0 - s1 * gg, s1 * g1 - s2 * g0
    c11, c12, c22 = s0 * gg - g0 * g0, s1 * g0 - s0 * g1, s0 * s2 - s1 * s1
    det = s0 * c00 + s1 * c01 + g0 * c02
    use = blocks.use & (det > 1e-12 * np.abs(s0 * s2 * gg))
    inv_det = 1.0 / np.where(use, det, 1.0)

    def inverse_times(b0, b1, b2):
        return ((c00 * b0 + c01 * b1 + c02 * b2) * inv_det,
                (c01 * b0 + c11 * b1 + c12 * b2) * inv_det,
                (c02 * b0 + c12 * b1 + c22 * b2) * inv_det)

    t0, t1, t2 = inverse_times(y0, y1, gy)
    chi2 = yy - t0 * y0 - t1 * y1 - t2 * gy
    m0, m1, m2 = inverse_times(d0, d1, dgg)
    info = np.maximum(dd - (d0 * m0 + d1 * m1 + dgg * m2), 0.0)
    res_d = dy - t0 * d0 - t1 * d1 - t2 * dgg
    a = t2 if amp_weight is None else amp_weight
    return {"theta": np.stack([t0, t1, t2], -1), "g": g,
            "theta_var": np.stack([c00 * inv_det, c11 * inv_det, c22 * inv_det], -1),
            "chi2": np.where(use, np.maximum(chi2, 0.0), 0.0),
            "score": np.where(use, a * res_d, 0.0), "jac": np.where(use, a * t2 * info, 0.0),
            "noise": np.where(use, a * a * info, 0.0)}


@pytest.fixture(scope="module")
def sky_blocks():
    wave = true_wavelength(seed=5)
    lines = {w: 150.0 for w in geometry.SKY_LINES}
    spec, err = noisy_spectra(render_arcs(wave, lines, continuum=80.0), seed=8)
    bad = np.zeros(spec.shape, bool)
    bad[10, 100:140] = True  # masked stretches: weights 0, some line cores unusable
    bad[50:53, ::7] = True
    sigma = 5.6 * skyshift.FWHM_TO_SIGMA
    blocks = skyshift._build_blocks(spec, err**2, bad, wave, np.array(geometry.SKY_LINES), 16.0,
                                    sigma, 2.0)
    blocks.use[2, 30:40] = False
    return blocks, wave, sigma


@pytest.mark.parametrize("shift", [(-1.5,) * 5, (0.0,) * 5, (0.37, -0.8, 1.2, 0.0, 0.61)])
@pytest.mark.parametrize("weighted", [False, True])
def test_solve_matches_the_array_formulation_bit_for_bit(sky_blocks, shift, weighted):
    blocks, wave, sigma = sky_blocks
    assert (~blocks.use).sum() >= 10
    amp_weight = (np.random.default_rng(1).uniform(50, 150, blocks.use.shape) if weighted
                  else None)
    want = _array_solve(blocks, wave, np.array(shift), sigma, amp_weight)
    got = skyshift._solve(blocks, wave, np.array(shift), sigma, amp_weight)
    for name, value in want.items():
        np.testing.assert_array_equal(getattr(got, name), value, err_msg=name)
    assert np.all(want["chi2"][blocks.use] > 0) and np.all(want["jac"][blocks.use] != 0)
    assert np.all(want["chi2"][~blocks.use] == 0)
    chi2 = skyshift._profile_chi2(blocks, wave, np.array(shift), sigma)
    assert chi2 == float(want["chi2"].sum())


def test_grid_chi2_equals_the_profile_chi2_at_every_shift(sky_blocks):
    blocks, wave, sigma = sky_blocks
    grid = np.r_[np.arange(-2.0, 2.25, 0.5), 0.3, -1.7]  # two families of shared edges + two
    got = skyshift._grid_chi2(blocks, wave, grid, sigma)
    want = [skyshift._profile_chi2(blocks, wave, np.full(5, s), sigma) for s in grid]
    assert got == want and len(set(want)) == len(want)


def test_median_is_numpys():
    rng = np.random.default_rng(5)
    for n in (1, 2, 3, 4, 111, 112):
        for _ in range(20):
            x = rng.normal(size=n) * 10.0 ** rng.integers(-3, 4)
            assert skyshift._median(x) == float(np.median(x))
    assert np.isnan(skyshift._median(np.array([1.0, np.nan, 2.0])))
