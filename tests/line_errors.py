"""Line-flux pulls of a reduced night against its truth (helpers of the e2e tests).

* ``blank_sky_pulls``: at random positions >= 6" from every simulated source (12" from stars
  brighter than g = 16) and random wavelengths away from sky lines, the flux of a fixed
  5.6 A FWHM Gaussian plus a linear continuum fitted to the product's fibers' optimal extraction
  (the detection's fit with its shape fixed, so that the null distribution is N(0, 1) when the
  errors are right), divided by its error with and without the correlation of neighbouring
  wavelength bins that the pipeline computes from the work store.
* ``found_line_pulls``: (flux - true) / flux_err of the product's detections matched to the
  simulated line sources (1.5", 3 A).
"""

from __future__ import annotations

import numpy as np

from remedy_dask import geometry
from remedy_dask.numeric.correlated import sandwich_covariance
from remedy_dask.observation.psf import fiber_integrated_moffat, good_pixels
from remedy_dask.observation.sources import extract_source
from remedy_dask.workflow.observation import _rectification_correlation

SKY_LINES = np.array([3914.4, 4046.565, 4358.335, 5198.5, 5460.75])


def _sep_arcsec(ra1, dec1, ra2, dec2):
    return np.hypot((ra1 - ra2) * np.cos(np.deg2rad(dec2)), dec1 - dec2) * 3600.0


def _fibers(P, work):
    F = P["fibers"]
    d = {k: F[k][...] for k in ("spectrum", "error", "mask", "ifuslot", "ifu_x", "ifu_y", "fx",
                                "fy", "exposure", "amp")}
    d["wave_corr"] = np.zeros(d["spectrum"].shape)
    amp_code = np.array([geometry.AMPS.index(a.decode() if isinstance(a, bytes) else a)
                         for a in d["amp"]])
    for e in np.unique(d["exposure"]):
        for s in np.unique(d["ifuslot"]):
            rows = np.flatnonzero((d["exposure"] == e) & (d["ifuslot"] == s))
            d["wave_corr"][rows] = _rectification_correlation(str(work), int(e), int(s),
                                                              amp_code[rows])
    return d


def blank_sky_pulls(P, T, work, n: int = 400, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(pulls with the bins' correlation, pulls without it) at ``n`` blank positions."""
    d = _fibers(P, work)
    E = P["exposures"]
    psf = [fiber_integrated_moffat(f, b) for f, b in zip(E["fwhm"][...], E["moffat_beta"][...])]
    dar = geometry.dar_offsets()
    src_fx = np.concatenate([T["stars/fx"][...], T["line_sources/fx"][...]])
    src_fy = np.concatenate([T["stars/fy"][...], T["line_sources/fy"][...]])
    src_g = np.concatenate([T["stars/g"][...], np.full(len(T["line_sources/fx"]), 30.0)])
    wave, sig = geometry.DEF_WAVE, 5.6 / 2.3548
    rng = np.random.default_rng(seed)
    slots = np.unique(d["ifuslot"])
    with_corr, without = [], []
    for _ in range(50 * n):
        if len(with_corr) >= n:
            break
        rows = np.flatnonzero(d["ifuslot"] == slots[rng.integers(len(slots))])
        x0, y0 = rng.uniform(-20.0, 20.0, 2)
        off_x = np.median(d["fx"][rows] - d["ifu_x"][rows])
        off_y = np.median(d["fy"][rows] - d["ifu_y"][rows])
        dist = np.hypot(src_fx - off_x - x0, src_fy - off_y - y0)
        w0 = rng.uniform(3700.0, 5400.0)
        if np.any(dist < np.where(src_g < 16, 12.0, 6.0)) or np.min(np.abs(SKY_LINES - w0)) < 15:
            continue
        f, e = d["spectrum"][rows].astype(float), d["error"][rows].astype(float)
        bad = ~good_pixels(f, e, d["mask"][rows].astype(bool))
        ext = extract_source(f, e, bad, d["ifu_x"][rows], d["ifu_y"][rows], x0, y0, psf, dar,
                             d["exposure"][rows] - 1, wave_corr=d["wave_corr"][rows])
        j0 = int(np.argmin(np.abs(wave - w0)))
        sl = slice(j0 - 15, j0 + 16)
        sp, er, cc = ext.spectrum[sl], ext.error[sl], ext.corr[sl]
        if not np.all(np.isfinite(sp) & np.isfinite(er)):
            continue
        wl = wave[sl]
        jac = np.column_stack([np.exp(-0.5 * ((wl - wave[j0]) / sig) ** 2) / (sig * np.sqrt(2 * np.pi)),
                               np.ones_like(wl), wl - wave[j0]])
        pcov = np.linalg.inv(jac.T @ (jac / er[:, None] ** 2))
        flux = (pcov @ jac.T @ (sp / er**2))[0]
        with_corr.append(flux / np.sqrt(sandwich_covariance(pcov, jac, er, cc)[0, 0]))
        without.append(flux / np.sqrt(pcov[0, 0]))
    return np.array(with_corr), np.array(without)


def found_line_pulls(P, T) -> np.ndarray:
    """(flux - true) / flux_err of the detections matched to a simulated line (first match)."""
    ls, D = T["line_sources"], P["detections"]
    dra, ddec, dwave = D["ra"][...], D["dec"][...], D["wave"][...]
    pulls = []
    for i in range(len(ls["flux"])):
        ok = np.flatnonzero((_sep_arcsec(dra, ddec, ls["ra"][i], ls["dec"][i]) < 1.5)
                            & (np.abs(dwave - ls["wave"][i]) < 3))
        if ok.size:
            k = ok[0]
            pulls.append((D["flux"][k] - ls["flux"][i]) / D["flux_err"][k])
    return np.array(pulls)


def blank_fiber_band_pulls(P, T, n: int = 3000, width: int = 7, seed: int = 2
                           ) -> tuple[np.ndarray, np.ndarray]:
    """A user's band sums on the written product alone: the sum of ``width`` neighbouring bins of
    one fiber's ``spectrum`` at blank-sky fibers (>= 6" from every simulated source, 12" from
    stars brighter than g = 16) and wavelengths away from sky lines, divided by its error from
    ``error`` and ``error_correlation`` (the README's formula), and by the quadrature error alone:
    (pulls with the correlation, pulls without)."""
    F = P["fibers"]
    ra, dec = F["ra"][...], F["dec"][...]
    src_ra = np.concatenate([T["stars/ra"][...], T["line_sources/ra"][...]])
    src_dec = np.concatenate([T["stars/dec"][...], T["line_sources/dec"][...]])
    src_g = np.concatenate([T["stars/g"][...], np.full(len(T["line_sources/ra"]), 30.0)])
    limit = np.where(src_g < 16, 12.0, 6.0)
    blank = np.array([np.all(_sep_arcsec(src_ra, src_dec, r, d) >= limit)
                      for r, d in zip(ra, dec)])
    rows = np.flatnonzero(blank)
    wave = P["wavelength"][...]
    spec, err, corr, mask = (F[k][...] for k in ("spectrum", "error", "error_correlation", "mask"))
    rng = np.random.default_rng(seed)
    with_corr, without = [], []
    for _ in range(20 * n):
        if len(with_corr) >= n:
            break
        i = int(rows[rng.integers(rows.size)])
        j0 = int(rng.integers(np.searchsorted(wave, 3700.0), np.searchsorted(wave, 5400.0)))
        sl = slice(j0, j0 + width)
        if np.min(np.abs(SKY_LINES[:, None] - wave[sl][None, :])) < 12:
            continue
        f, e, rho = (a[i, sl].astype(float) for a in (spec, err, corr))
        rho = rho[:-1]  # column j: bins j and j+1
        if not (np.all(np.isfinite(f) & np.isfinite(e) & (e > 0)) and np.all(mask[i, sl] == 0)):
            continue
        var0 = np.sum(e**2)
        var = var0 + 2.0 * np.sum(rho * e[:-1] * e[1:])
        with_corr.append(np.sum(f) / np.sqrt(var))
        without.append(np.sum(f) / np.sqrt(var0))
    return np.array(with_corr), np.array(without)
