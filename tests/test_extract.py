"""Extraction: simultaneous profile fit and the centred aperture, on synthetic amps with truth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import erf

from remedy_dask.errors import CalibrationError
from remedy_dask.amp.extract.optimal import extract_aperture, extract_optimal
from remedy_dask.amp.profile.model import EVAL_STEP, ProfileModel

N = 1032
SIGMA_WING, WING_FRACTION = 3.2, 0.10


def sigma_core(col, fiber):
    return 1.36 + 0.08 * np.asarray(col) / (N - 1) + 0.05 * np.asarray(fiber) / 111


def true_pixel_profile(offset, col, fiber):
    s = sigma_core(col, fiber)

    def cdf(x):
        g = lambda w: 0.5 * (1 + erf(x / (np.sqrt(2) * w)))  # noqa: E731
        return (1 - WING_FRACTION) * g(s) + WING_FRACTION * g(SIGMA_WING)

    return cdf(offset + 0.5) - cdf(offset - 0.5)


def true_model(n_chunks=24, n_groups=8, half_width=12.0):
    """The exact profile tabulated like a measured one (isolates extraction from measurement)."""
    offsets = np.linspace(-half_width, half_width, int(round(2 * half_width / EVAL_STEP)) + 1)
    cc = (np.arange(n_chunks) + 0.5) * N / n_chunks - 0.5
    gc = (np.arange(n_groups) + 0.5) * 112 / n_groups - 0.5
    tab = true_pixel_profile(offsets[None, None, :], cc[:, None, None], gc[None, :, None])
    tab[..., [0, -1]] = 0.0
    tab /= np.trapezoid(tab, offsets)[..., None]
    return ProfileModel(offsets, tab, cc, gc)


def make_trace(rng):
    k = np.arange(112)
    group = np.where(k < 37, 0, np.where(k < 75, 1, 2))
    base = 25.0 + 8.72 * k + 2 * 8.72 * group + rng.normal(0, 0.2, 112)
    x = (np.arange(N) - 515.5) / 515.5
    kk = k[:, None] / 111
    return base[:, None] + (3.0 + 0.8 * kk) * x**2 + 1.0 * x * (kk - 0.5)


def render(flux, trace, half=16):
    rows = np.rint(trace).astype(int)[..., None] + np.arange(-half, half + 1)
    cols = np.broadcast_to(np.arange(N)[None, :, None], rows.shape)
    fib = np.broadcast_to(np.arange(112)[:, None, None], rows.shape)
    frac = true_pixel_profile(rows - trace[..., None], cols, fib)
    ok = (rows >= 0) & (rows < N)
    img = np.zeros(N * N)
    np.add.at(img, (rows * N + cols)[ok], (flux[..., None] * frac)[ok])
    return img.reshape(N, N)


def observe(rng, expected, read_noise=3.0):
    """Poisson + read noise; variance as the CCD step makes it: rn^2 + max(image, 0)."""
    img = rng.poisson(np.maximum(expected, 0)).astype(float) + rng.normal(0, read_noise, expected.shape)
    return img, read_noise**2 + np.maximum(img, 0)


def sky_spectrum():
    """Faint continuum (~20-150 e-/column like the simulator's dark sky) plus emission lines."""
    x = np.arange(N)
    s = 20 + 130 * (x / N) ** 0.7
    for centre, amp in [(150, 400.0), (288, 900.0), (444, 1500.0), (864, 700.0), (990, 2000.0)]:
        s = s + amp * np.exp(-0.5 * ((x - centre) / 1.2) ** 2)
    return s


@pytest.fixture(scope="module")
def amp():
    rng = np.random.default_rng(11)
    trace = make_trace(rng)
    throughput = rng.normal(1.0, 0.05, 112)
    throughput[60] = 0.0
    return rng, trace, throughput, true_model()


def test_noiseless_flux_exact(amp):
    _, trace, thr, model = amp
    flux = thr[:, None] * (3000 + 2000 * np.sin(np.arange(N) / 150.0))[None, :]
    img = render(flux, trace)
    ext = extract_optimal(img, 9.0 + img, np.zeros((N, N), bool), trace, model, reject=False)
    good = thr > 0
    rel = ext.spectrum[good] / flux[good] - 1
    assert abs(np.median(rel)) < 2e-4
    assert np.percentile(np.abs(rel), 99) < 2e-3
    # the dead fiber between two bright ones gets < 0.1% of their light
    assert np.max(np.abs(ext.spectrum[60])) < 1e-3 * np.min(flux[59])


def test_faint_sky_unbiased_with_correct_errors(amp):
    rng, trace, thr, model = amp
    truth = thr[:, None] * sky_spectrum()[None, :]
    good = thr > 0
    pulls, rel = [], []
    for _ in range(2):
        img, var = observe(rng, render(truth, trace))
        ext = extract_optimal(img, var, np.zeros((N, N), bool), trace, model)
        pulls.append(((ext.spectrum - truth) / ext.error)[good])
        rel.append(ext.spectrum[good] / truth[good] - 1)
    pulls, rel = np.concatenate(pulls), np.concatenate(rel)
    # mean flux bias: a data-weighted fit is ~4% low at these levels; here < 0.3%
    assert abs(np.mean(rel)) < 3e-3
    assert 0.98 < np.std(pulls) < 1.02
    assert abs(np.mean(pulls)) < 0.03


def test_cosmic_rays_rejected(amp):
    rng, trace, thr, model = amp
    truth = thr[:, None] * sky_spectrum()[None, :]
    clean = render(truth, trace)
    cr = np.zeros((N, N))
    for _ in range(40):  # tracks of 1-8 pixels, 300-3000 e- per pixel
        r, c = rng.integers(5, N - 15, 2)
        length = rng.integers(1, 9)
        direction = rng.uniform(0, np.pi)
        steps = np.arange(length)
        rr = np.rint(r + steps * np.sin(direction)).astype(int)
        cc = np.rint(c + steps * np.cos(direction)).astype(int)
        cr[rr, cc] += np.exp(rng.uniform(np.log(300), np.log(3000), length))
    hit = cr > 0
    img, var = observe(rng, clean)
    img = img + cr
    var = var + cr
    ext = extract_optimal(img, var, np.zeros((N, N), bool), trace, model)
    assert ext.rejected[hit].mean() >= 0.99
    assert ext.rejected[~hit].mean() < 0.01
    good = thr > 0
    pull = ((ext.spectrum - truth) / ext.error)[good]
    ok = ~ext.mask[good]
    assert ext.mask[good].mean() < 0.01
    assert np.abs(pull[ok]).max() < 6.0  # no cosmic leaks into an unmasked spectrum


def test_masked_column_segment(amp):
    rng, trace, thr, model = amp
    truth = thr[:, None] * np.full((1, N), 500.0)
    img, var = observe(rng, render(truth, trace))
    mask = np.zeros((N, N), bool)
    mask[:, 300] = True  # whole bad column: all fibers lose that column
    mask[200:203, 500] = True  # three rows of one column: partial loss
    img[mask] = 1e6
    ext = extract_optimal(img, var, mask, trace, model)
    assert ext.mask[:, 300].all() and np.isnan(ext.spectrum[:, 300]).all()
    partial = (trace[:, 500] > 196) & (trace[:, 500] < 206)
    assert partial.any()
    pull = (ext.spectrum[partial, 500] - truth[partial, 500]) / ext.error[partial, 500]
    assert np.all(np.abs(pull) < 4)


def test_aperture_centred_and_squared_weights():
    sigma = 1.3
    rows = np.arange(N)
    captured = {}
    for delta in (-0.3, 0.0, 0.3, 0.49):
        centres = 20.0 + 9.0 * np.arange(112) + delta  # one sub-pixel phase for all
        trace = np.tile(centres[:, None], (1, N))
        d = rows[:, None] - centres[None, :]
        pix = 0.5 * (erf((d + 0.5) / (np.sqrt(2) * sigma)) - erf((d - 0.5) / (np.sqrt(2) * sigma)))
        img = np.tile((1000.0 * pix.sum(axis=1))[:, None], (1, N))
        ext = extract_aperture(img, np.ones((N, N)), np.zeros((N, N), bool), trace)
        # expected: pixels [r - 0.5, r + 0.5] weighted by their overlap with [t - 2.5, t + 2.5]
        w = np.clip(np.minimum(d + 0.5, 2.5) - np.maximum(d - 0.5, -2.5), 0, 1)
        expected = 1000.0 * np.sum(w * (pix.sum(axis=1))[:, None], axis=0)
        np.testing.assert_allclose(ext.spectrum[:, 0], expected, rtol=1e-12)
        captured[delta] = np.median(ext.spectrum) / 1000
    # centred: the captured fraction is symmetric in the sub-pixel phase (Remedy's aperture,
    # offset by -0.5 px, is not) and 0.9455 of a sigma = 1.3 px Gaussian at phase 0
    assert captured[0.0] == pytest.approx(0.9455, abs=5e-4)
    assert captured[0.3] == pytest.approx(captured[-0.3], abs=1e-9)
    # error with unit variance = sqrt(sum w^2): weights (1,1,1,1,1) at phase 0, (0.5,1,1,1,1,0.5)
    trace = np.tile((20.0 + 9.0 * np.arange(112))[:, None], (1, N))
    ext = extract_aperture(np.zeros((N, N)), np.ones((N, N)), np.zeros((N, N), bool), trace + 0.5)
    np.testing.assert_allclose(ext.error, np.sqrt(4 + 2 * 0.25))
    ext = extract_aperture(np.zeros((N, N)), np.ones((N, N)), np.zeros((N, N), bool), trace)
    np.testing.assert_allclose(ext.error, np.sqrt(5.0))


def test_aperture_correction_with_profile(amp):
    rng, trace, thr, model = amp
    truth = thr[:, None] * np.full((1, N), 5000.0)
    img, var = observe(rng, render(truth, trace))
    ext = extract_aperture(img, var, np.zeros((N, N), bool), trace, profile=model)
    good = thr > 0
    assert np.median(ext.spectrum[good] / truth[good]) == pytest.approx(1.0, abs=0.01)
    assert np.nanmedian(ext.chi2[good]) < 2.0


def test_invalid_inputs():
    img = np.zeros((N, N))
    trace = np.tile((30.0 + 8.72 * np.arange(112))[:, None], (1, N))
    with pytest.raises(CalibrationError):
        extract_optimal(img, img + 1, np.zeros((N, N), bool), trace[:, :10], true_model(2, 1))
    bad = trace.copy()
    bad[5, 7] = np.nan
    with pytest.raises(CalibrationError):
        extract_optimal(img, img + 1, np.zeros((N, N), bool), bad, true_model(2, 1))


@pytest.mark.slow
def test_simulator_truth_one_amp():
    """Flat -> profile -> science extraction on the simulator's 047LL, with its true trace,
    pixel defects and scattered light: fluxes against the electrons each fiber put in."""
    from remedy_dask import geometry
    from remedy_dask.amp.trace.fit import fit_trace
    from remedy_dask.sim import SimConfig, find_frame, render_amp_electrons
    from remedy_dask.sim.render import dark_image, upsample_scattered
    from remedy_dask.sim.scene import make_plan

    cfg = SimConfig()
    plan = make_plan("20190822", (47,), 1, 7, cfg, geometry.FRAME_KINDS)
    rng = np.random.default_rng(0)

    def frame(kind, exp):
        expected, _, _, model, rendered = render_amp_electrons(47, "LL", kind, exp, plan=plan)
        background = upsample_scattered(rendered.scattered_coarse, cfg.scattered_block)
        background += dark_image(model, cfg, find_frame(plan, kind, exp).darktime)
        img = rng.poisson(np.maximum(expected, 0)) + rng.normal(0, model.read_noise, expected.shape)
        return img - background, model.read_noise**2 + np.maximum(img, 0), model, rendered

    flats = [frame("flt", e) for e in (1, 2, 3)]
    model = flats[0][2]
    pixmask = np.zeros(N * N, bool)
    pixmask[model.hot_index] = True
    pixmask = pixmask.reshape(N, N)
    pixmask[:, model.bad_column] = True
    pixmask[model.trap_row - 3 :, model.trap_col] = True
    master = np.mean([f[0] for f in flats], axis=0)
    profile = fit_trace(master, np.mean([f[1] for f in flats], axis=0) / 3, pixmask).profile
    live = ~model.dead
    for exp in (1, 2):
        img, var, _, rendered = frame("sci", exp)
        ext = extract_optimal(img, var, pixmask, model.trace + model.trace_shift[exp - 1], profile)
        truth = rendered.light.counts
        ok = live[:, None] & ~ext.mask
        rel = ext.spectrum[ok] / truth[ok] - 1
        pull = ((ext.spectrum - truth) / ext.error)[ok]
        assert abs(np.median(rel)) < 0.003  # target 1% (measured ~0.1%)
        assert abs(ext.spectrum[ok].sum() / truth[ok].sum() - 1) < 0.002
        assert 0.98 < np.std(pull) < 1.02 and abs(np.mean(pull)) < 0.05
        cosmic = rendered.cosmic_mask
        assert (ext.rejected | pixmask)[cosmic].mean() >= 0.99
        assert ext.mask[live].mean() < 0.01


def test_nan_pixel_does_not_poison_fibers(amp):
    """A non-finite pixel is bad (not a NaN flux for every fiber whose window holds it)."""
    rng, trace, thr, model = amp
    truth = thr[:, None] * np.full((1, N), 2000.0)
    img, var = observe(rng, render(truth, trace))
    r = int(round(trace[30, 400]))
    img[r, 400] = np.nan
    ext = extract_optimal(img, var, np.zeros((N, N), bool), trace, model)
    assert np.all(np.isfinite(ext.spectrum[thr > 0][:, 398:403]))
    pull = (ext.spectrum[29:32, 400] - truth[29:32, 400]) / ext.error[29:32, 400]
    assert np.all(np.abs(pull) < 4)


def test_master_frame_paths_agree(amp):
    """poisson=False: with rejection (stage-1 solution reused when no pixel changes) and without
    (stage 1 skipped) the final fit is the same computation, so the results are identical."""
    _, trace, thr, model = amp
    img = render(thr[:, None] * (3000 + 1000 * np.cos(np.arange(N) / 90.0))[None, :], trace)
    var = (9.0 + img) / 3
    with_rejection = extract_optimal(img, var, np.zeros((N, N), bool), trace, model, poisson=False)
    without = extract_optimal(img, var, np.zeros((N, N), bool), trace, model, poisson=False,
                              reject=False)
    assert with_rejection.qa["n_rejected_pixels"] == 0
    np.testing.assert_array_equal(with_rejection.spectrum, without.spectrum)
    np.testing.assert_array_equal(with_rejection.error, without.error)


def test_noise_floor_matches_reference():
    """The compiled tile quantile equals a numpy reference (edge tiles padded by repetition)."""
    from remedy_dask.amp.extract.optimal import estimate_noise_floor

    rng = np.random.default_rng(5)
    n_rows, n_cols, block, q = 100, 70, 16, 0.2
    image = rng.normal(50, 20, (n_rows, n_cols)).round()  # rounded: ties in the selection
    variance = 9.0 + np.maximum(image, 0) + rng.uniform(0, 5, (n_rows, n_cols))
    bad = rng.random((n_rows, n_cols)) < 0.05
    bad[:40, :20] = True  # whole tiles without enough good pixels
    pad = ((0, -n_rows % block), (0, -n_cols % block))
    d = np.pad(np.where(bad, np.inf, variance - image), pad, mode="edge")
    tiles = d.reshape(d.shape[0] // block, block, d.shape[1] // block, block).transpose(0, 2, 1, 3)
    tiles = tiles.reshape(tiles.shape[0], tiles.shape[1], -1)
    kth = int(q * block * block)
    low = np.partition(tiles, kth, axis=-1)[..., kth]
    usable = (np.isfinite(tiles).sum(-1) > 2 * kth) & np.isfinite(low)
    fill = np.median(low[usable])
    expected = np.maximum(np.where(usable, low, fill), max(1e-3, 0.1 * fill))
    expected = np.repeat(np.repeat(expected, block, 0), block, 1)[:n_rows, :n_cols]
    np.testing.assert_array_equal(estimate_noise_floor(image, variance, bad, block, q), expected)
    assert not usable.all()


def test_quickselect_with_ties_and_infinities():
    from remedy_dask.numeric.quickselect import select_kth

    rng = np.random.default_rng(8)
    for trial in range(500):
        n = int(rng.integers(1, 300))
        a = rng.normal(size=n).round(0 if trial % 2 else 3)
        if trial % 7 == 0:
            a[:] = 1.0
        a[rng.random(n) < 0.1] = np.inf
        k = int(rng.integers(0, n))
        assert select_kth(a.copy(), 0, n, k) == np.partition(a, k)[k]


def test_column_profiles_match_model_evaluation(amp):
    """The compiled per-column fiber profiles (phase-ordered tables) equal the numpy evaluation
    of the profile model, including windows clipped by the chip's edges."""
    from remedy_dask.amp.extract.colprofile import column_profile, phase_tables
    from remedy_dask.amp.profile.model import bracket, padded

    _, trace, _, model = amp
    trace = trace.copy()
    trace[:3] += -trace[:3, :1] + np.array([[3.3], [9.1], [17.6]])  # windows cut by row 0
    trace[-2:] += N - 6.0 - trace[-1:, :1]  # ... and by the last row
    trace = np.sort(trace, axis=0)
    m = padded(model)
    nwin = int(np.ceil(2.0 * m.half_width)) + 2
    per_pixel = int(round(1.0 / m.step))
    ptab = phase_tables(np.ascontiguousarray(m.tables), per_pixel, nwin)
    gi, gw = bracket(m.group_centers, np.arange(112, dtype=float))
    prof, tot, cov = np.zeros((112, nwin)), np.zeros(112), np.zeros(N)
    r0, nr, i0s = np.zeros(112, np.int64), np.zeros(112, np.int64), np.zeros(112, np.int64)
    for c in (0, 37, 500, N - 1):
        rmin, rmax = column_profile(
            c, trace, ptab, m.chunk_centers, gi.astype(np.int64), gw, float(m.offsets[0]), m.step,
            m.half_width, N, m.offsets.size, np.zeros(ptab.shape[1:]), i0s, np.zeros(112), prof,
            r0, nr, tot, cov)
        assert nr[0] < 29 and nr[-1] < 29  # clipped windows
        rows = r0[:, None] + np.arange(nwin)
        inside = np.arange(nwin) < nr[:, None]
        expected = model.evaluate(rows - trace[:, c, None], c, np.arange(112)[:, None])
        np.testing.assert_allclose(np.where(inside, prof, 0), np.where(inside, expected, 0),
                                   rtol=0, atol=1e-13)  # rows share one grid fraction
        np.testing.assert_allclose(tot, np.where(inside, expected, 0).sum(1), rtol=1e-12)
        assert (rmin, rmax) == (r0[0], r0[-1] + nr[-1] - 1)


def test_float32_variance_extracts_identically(amp):
    """A float32 variance (as the CCD step writes it) is widened exactly: same result bits."""
    rng, trace, thr, model = amp
    img, var = observe(rng, render(thr[:, None] * np.full((1, N), 500.0), trace))
    var32 = var.astype(np.float32)
    mask = np.zeros((N, N), bool)
    a = extract_optimal(img, var32, mask, trace, model)
    b = extract_optimal(img, var32.astype(np.float64), mask, trace, model)
    for name in ("spectrum", "error", "chi2", "mask", "lost_fraction", "rejected"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
