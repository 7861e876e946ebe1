"""Science-reduction accuracy against the simulator's truth (issue 5 targets), 4-IFU night."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import zarr

from remedy_dask import geometry

pytestmark = pytest.mark.e2e
KEYS = [f"{s:03d}{a}" for s in (47, 48, 57, 58) for a in geometry.AMPS]


def _amp(e2e, exp, key):
    g = zarr.open_group(str(e2e["work"] / f"exp{exp:02d}" / key), mode="r")
    return g, dict(g.attrs)


def test_trace_and_wavelength_shifts(e2e):
    errs_t, errs_w, errs_own, formal, pooled = [], [], [], [], []
    with h5py.File(e2e["truth"]) as truth:
        for key in KEYS:
            for exp in (1, 2, 3):
                _, a = _amp(e2e, exp, key)
                true_w = truth[key]["wavelength_shift"][exp - 1]
                errs_t.append(a["trace_shift"] - truth[key]["trace_shift"][exp - 1])
                errs_w.append(a["wave_shift"] - true_w)
                errs_own.append(a["wave_shift_amp"] - true_w)
                formal.append(a["wave_shift_error"])
                pooled.append(a["wave_shift_pooled"])
    errs_w, errs_own, formal = np.abs(errs_w), np.abs(errs_own), np.asarray(formal)
    print(f"trace shift max {np.max(np.abs(errs_t)):.4f}; wavelength shift rms/max: pooled "
          f"{np.sqrt(np.mean(errs_w**2)):.4f}/{errs_w.max():.4f}, own "
          f"{np.sqrt(np.mean(errs_own**2)):.4f}/{errs_own.max():.4f}; formal {formal.mean():.4f}")
    assert np.max(np.abs(errs_t)) <= 0.03
    # Each amp measures its shift from the five faint night-sky lines (photon limit ~0.015 px);
    # the two amps of a CCD share the drift and are pooled (~0.011 px), so every amp-exposure
    # is within 0.03 px (2.7 sigma: 0.7 % chance each; measured max below) and within 4 sigma.
    assert all(pooled)
    assert np.sqrt(np.mean(errs_w**2)) <= 0.014 and errs_w.max() <= 0.03
    assert np.all(errs_w <= 4 * formal) and np.all(formal < 0.014)
    assert np.sqrt(np.mean(errs_own**2)) <= 0.02  # each amp alone: the photon limit


def test_extracted_flux_equals_truth(e2e):
    ratios = []
    with h5py.File(e2e["truth"]) as truth:
        for key in KEYS:
            for exp in (1, 2, 3):
                g, a = _amp(e2e, exp, key)
                flux = g["flux"][...] * a["exptime"]  # e-/A before fiber-to-fiber and sky
                mask = g["mask"][...].astype(bool)
                expected = truth[key]["expected_sci"][exp - 1]
                ok = ~mask & (expected > 20)
                ratios.append(np.median(flux[ok] / expected[ok]))
    assert abs(np.median(ratios) - 1) <= 0.01


def _aperture_rows(trace: np.ndarray, half: int = 3) -> np.ndarray:
    """(112, 1032, 2*half+1) CCD rows within +-half of each fiber's trace."""
    return np.round(trace)[:, :, None].astype(int) + np.arange(-half, half + 1)


def test_cosmic_rays_masked_and_clean_pixels_kept(e2e):
    hit, caught, clean, clean_masked = 0, 0, 0, 0
    with h5py.File(e2e["truth"]) as truth:
        for key in KEYS:
            t = truth[key]
            bad_col = int(t.attrs["bad_column"])
            hot = t["hot_pixel_mask"][...]
            for exp in (1, 2, 3):
                g, a = _amp(e2e, exp, key)
                cr = t["cosmic_mask_sci"][exp - 1]
                trace = t["trace"][...] + t["trace_shift"][exp - 1]
                rows = np.clip(_aperture_rows(trace), 0, 1031)
                cols = np.broadcast_to(np.arange(1032)[None, :, None], rows.shape)
                cr_in_aperture = cr[rows, cols]  # (112, 1032, 7)
                rejected = np.zeros(1032 * 1032, bool)
                rejected[g["rejected_pixels"][...]] = True
                rejected = rejected.reshape(1032, 1032)
                native_mask = g["native_mask"][...].astype(bool)
                handled = rejected[rows, cols] | native_mask[:, :, None]
                hit += int(cr_in_aperture.sum())
                caught += int((cr_in_aperture & handled).sum())
                defect = cr_in_aperture.any(axis=2) | hot[rows, cols].any(axis=2)
                defect |= np.abs(cols[:, :, 0] - bad_col) <= 1
                defect[t["dead"][...].astype(bool)] = True
                if "charge_trap_col" in t.attrs:
                    defect |= np.abs(cols[:, :, 0] - int(t.attrs["charge_trap_col"])) <= 1
                defect[:, :10] = defect[:, -10:] = True  # detector edges
                clean += int((~defect).sum())
                clean_masked += int((native_mask & ~defect).sum())
    assert hit > 100, "the simulation should put cosmic rays into the fibers"
    assert caught / hit >= 0.99
    assert clean_masked / clean < 0.01


def _blank_fibers(e2e, P, radius=6.0):
    """Product rows of fibers far from every star and line source (true positions)."""
    with h5py.File(e2e["truth"]) as truth:
        src_ra = np.concatenate([truth["stars/ra"][...], truth["line_sources/ra"][...]])
        src_dec = np.concatenate([truth["stars/dec"][...], truth["line_sources/dec"][...]])
    ra, dec = P["fibers/ra"][...], P["fibers/dec"][...]
    cosd = np.cos(np.deg2rad(np.median(dec)))
    d = np.hypot((ra[:, None] - src_ra[None, :]) * cosd, dec[:, None] - src_dec[None, :]) * 3600
    return d.min(axis=1) > radius


def test_sky_subtraction_noise_and_systematics(e2e):
    with h5py.File(e2e["product"]) as P:
        blank = _blank_fibers(e2e, P)
        spec = P["fibers/spectrum"][...]
        err = P["fibers/error"][...]
        sky = P["fibers/sky"][...]
        amp = P["fibers/amp"][...].astype(str)
        slot = P["fibers/ifuslot"][...]
        exp = P["fibers/exposure"][...]
    w = (geometry.DEF_WAVE > 3700) & (geometry.DEF_WAVE < 5400)
    pull = (spec / err)[blank][:, w]
    pull = pull[np.isfinite(pull)]
    assert 1.00 <= np.std(pull) <= 1.05, np.std(pull)
    systematics = []
    for s in np.unique(slot):
        for a in geometry.AMPS:
            for e in (1, 2, 3):
                rows = blank & (slot == s) & (amp == a) & (exp == e)
                r, k = spec[rows][:, w], sky[rows][:, w]
                ok = np.isfinite(r) & np.isfinite(k)
                systematics.append(np.sum(r[ok]) / np.sum(k[ok]))
    assert np.sqrt(np.mean(np.square(systematics))) <= 0.005  # HETDEX: ~1%; Remedy: 0.61%
