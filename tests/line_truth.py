"""Truth-predicted detectability of the simulated emission lines (helper of the e2e tests).

For each line source, from the truth file alone (no reduction code): the S/N an ideal
measurement at the known position, wavelength and width would reach with the simulator's own
noise, i.e. ``SN^2 = sum over exposures, fibers and 2-A bins of s^2 / var`` with

* ``s``: the line's electrons in the bin: flux x ``flux_to_counts`` x fiber throughput x the
  fiber fraction of the exposure's PSF (``psf/fiber_fraction``) at the fiber's distance from
  the source (``fiber_ra/dec`` moved by ``dar/offset_x`` along focal-plane x, the direction
  taken from the stars' focal and sky positions) x the Gaussian (``fwhm_observed``) over the bin;
* ``var``: the Poisson noise of everything that enters the fiber (``expected_sci``: sky, stars,
  lines) plus the read noise over a profile-weighted extraction (``2 sqrt(pi) sigma_core``
  rows per column);
* bins whose peak pixel (``expected_sci`` x dispersion x the profile core's peak / gain + bias)
  exceeds the saturation level (65535 ADU) carry nothing.

Returned per line: the S/N with and without the saturated bins and the fraction of the line's
signal lost to saturation.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy.special import ndtr

SATURATION_ADU = 65535.0
AMPS = ("LL", "LU", "RL", "RU")


def _tangent(ra, dec, ra0, dec0):
    """Small-field tangent-plane offsets (arcsec east, north) of (ra, dec) from (ra0, dec0)."""
    return ((np.asarray(ra) - ra0) * np.cos(np.deg2rad(dec0)) * 3600.0,
            (np.asarray(dec) - dec0) * 3600.0)


def _focal_x_on_sky(T) -> np.ndarray:
    """(east, north) arcsec of one arcsec along focal-plane x (affine fit to the stars)."""
    st = T["stars"]
    ra0, dec0 = float(np.mean(st["ra"][...])), float(np.mean(st["dec"][...]))
    e, n = _tangent(st["ra"][...], st["dec"][...], ra0, dec0)
    design = np.column_stack([st["fx"][...], st["fy"][...], np.ones(len(e))])
    coef, *_ = np.linalg.lstsq(design, np.column_stack([e, n]), rcond=None)
    return coef[0]


def predicted_line_sn(T) -> dict[str, np.ndarray]:
    """``sn`` (all bins), ``sn_unsaturated`` (saturated bins dropped), ``lost`` (fraction of the
    ideal S/N^2 in saturated bins) per line source of the truth file ``T`` (h5py)."""
    ls = T["line_sources"]
    wave = T["flux_to_counts/wave"][...]
    edges = np.concatenate([wave - 1.0, wave[-1:] + 1.0])
    x_dir = _focal_x_on_sky(T)
    r_tab, frac_tab = T["psf/r"][...], T["psf/fiber_fraction"][...]
    conv = T["flux_to_counts/e_per_A_per_flam17"][...]
    dar_w, dar_x = T["dar/wave"][...], T["dar/offset_x"][...]
    out = {k: np.zeros(len(ls["flux"])) for k in ("sn", "sn_unsaturated", "lost")}
    for i in range(len(ls["flux"])):
        lam, slot = float(ls["wave"][i]), int(ls["ifuslot"][i])
        sigma = float(ls["fwhm_observed"][i]) / (2.0 * np.sqrt(2.0 * np.log(2.0)))
        near = np.flatnonzero(np.abs(wave - lam) < 4 * sigma)
        shape = np.diff(ndtr((edges[near[0]:near[-1] + 2] - lam) / sigma))
        shift = -np.interp(lam, dar_w, dar_x) * x_dir  # fiber effective position - nominal
        sn2 = sn2_sat = 0.0
        for amp in AMPS:
            g = T[f"{slot:03d}{amp}"]
            gain, rn, bias = (float(g.attrs[k]) for k in ("gain", "read_noise", "bias_level"))
            core = 1.0 - float(g.attrs["profile_wing_fraction"]) - float(g.attrs["profile_halo_fraction"])
            sig_y = np.mean(g["profile_sigma_core"][...], axis=1)  # (112,) px
            disp = np.abs(np.median(np.diff(g["wavelength"][...], axis=1), axis=1))  # A / px
            thr = g["fiber_throughput"][...]
            for e in range(conv.shape[0]):
                de, dn = _tangent(g["fiber_ra"][e], g["fiber_dec"][e], ls["ra"][i], ls["dec"][i])
                r = np.hypot(de + shift[0], dn + shift[1])
                frac = np.interp(r, r_tab, frac_tab[e], right=0.0)
                total = ls["flux"][i] * np.interp(lam, wave, conv[e]) * thr * frac  # (112,) e-
                s = total[:, None] * shape[None, :]
                expected = g["expected_sci"][e][:, near]  # e-/A
                var = expected * 2.0 + (rn**2 * 2.0 * np.sqrt(np.pi) * sig_y * 2.0 / disp)[:, None]
                peak = (expected * disp[:, None] * core / (np.sqrt(2 * np.pi) * sig_y[:, None])
                        / gain + bias)
                term = s**2 / var
                sn2 += term.sum()
                sn2_sat += term[peak > SATURATION_ADU].sum()
        out["sn"][i] = np.sqrt(sn2)
        out["sn_unsaturated"][i] = np.sqrt(sn2 - sn2_sat)
        out["lost"][i] = sn2_sat / sn2 if sn2 > 0 else 0.0
    return out


def _sep_arcsec(ra1, dec1, ra2, dec2):
    return np.hypot((ra1 - ra2) * np.cos(np.deg2rad(dec2)), dec1 - dec2) * 3600.0


def found_lines(P, T, radius: float = 1.5, dwave: float = 3.0) -> np.ndarray:
    """(n_line,) bool: a detection of the product ``P`` within ``radius`` arcsec and ``dwave`` A
    of each line source of ``T``."""
    ls, D = T["line_sources"], P["detections"]
    dra, ddec, dw = D["ra"][...], D["dec"][...], D["wave"][...]
    return np.array([np.any((_sep_arcsec(dra, ddec, ls["ra"][i], ls["dec"][i]) < radius)
                            & (np.abs(dw - ls["wave"][i]) < dwave))
                     for i in range(len(ls["flux"]))], bool)


def completeness_table(P, T, sn_edges=(5.0, 8.0), min_flux: float = 10.0) -> list[tuple]:
    """Found / total of the lines brighter than ``min_flux`` (1e-17 erg/s/cm^2) in bins of the
    truth-predicted S/N (below, between and above ``sn_edges``) and in total: rows
    (label, found, total, [(flux, wave, predicted S/N, found), ...])."""
    ls = T["line_sources"]
    pred = predicted_line_sn(T)["sn"]
    found = found_lines(P, T)
    strong = ls["flux"][...] >= min_flux
    bounds = (0.0, *sn_edges, np.inf)
    rows = []
    for lo, hi in itertools.pairwise(bounds):
        sel = np.flatnonzero(strong & (pred >= lo) & (pred < hi))
        rows.append((f"predicted S/N {lo:g}-{hi:g}", int(found[sel].sum()), int(sel.size),
                     [(float(ls["flux"][i]), float(ls["wave"][i]), float(pred[i]), bool(found[i]))
                      for i in sel]))
    rows.append(("all", int(found[strong].sum()), int(strong.sum()), []))
    return rows


def assert_complete_where_detectable(P, T, night: str) -> None:
    """Every line an ideal measurement would see at S/N >= 8 is found, >= 90 % of those above 5,
    and a missed line is one the truth predicts below 8 (printed per bin for the docs)."""
    rows = completeness_table(P, T)
    for label, found, total, lines in rows:
        print(f"{night} lines {label}: {found}/{total}",
              [(round(f, 1), round(w), round(sn, 1), ok) for f, w, sn, ok in lines])
    by_label = {label: (found, total) for label, found, total, _ in rows}
    found8, total8 = by_label["predicted S/N 8-inf"]
    found5, total5 = by_label["predicted S/N 5-8"]
    assert total8 >= 6 and found8 == total8
    assert (found5 + found8) / (total5 + total8) >= 0.9
    missed = [sn for _, _, _, lines in rows[:-1] for _, _, sn, ok in lines if not ok]
    assert all(sn < 8 for sn in missed)
