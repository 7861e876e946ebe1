"""QA page of an observation product: recon mosaic, astrometry, photometry, sky residuals,
detections, exposures and provenance.

Reads only ``{DATE}_{OBS:07d}.h5`` (see ``io/products.py``), through
:mod:`remedy_dask.qa.observation_data`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from scipy.optimize import least_squares
from scipy.spatial import cKDTree

from remedy_dask.io.catalog import Catalog, as_catalog
from remedy_dask import geometry
from remedy_dask.numeric.rowstats import nanmedian_cols
from remedy_dask.qa.observation_data import (
    G_BAND, MAX_SAMPLE_FIBERS, FiberSummary, columns, read_fibers,
)
from remedy_dask.qa.observation_figures import (
    PHOTOMETRY_GMAX, astrometry_figure, photometry_figure, recon_figure, robust_std, stamps_figure,
)
from remedy_dask.qa.report import Section, plt, save_figure, write_page

NOISE_RANGES = ((3500.0, 4000.0), (4000.0, 4500.0), (4500.0, 5000.0), (5000.0, 5500.0))
RATIO_RANGE = (4000.0, 5400.0)  # A: where the sky residual ratio is summarised
SOURCE_RADIUS = 5.0  # arcsec: fibers closer to a source / detection are not "empty"
CENTROID_RADIUS = 3.0  # arcsec: aperture of the fiber-weighted centroid
CENTROID_GMAX = 20.0
MAX_STAMPS = 12
MAX_TABLE_ROWS = 1000


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


def _json(value: Any) -> Any:
    """An attribute decoded from JSON when it is JSON text (else as it is)."""
    try:
        return json.loads(value) if isinstance(value, str) else value
    except ValueError:
        return value


def _as_list(value: Any) -> list[Any]:
    """A JSON list attribute as a list (a plain string becomes one item)."""
    value = _json(value)
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value] if value not in ("", None) else []


def ifu_centres(fs: FiberSummary) -> dict[int, tuple[float, float]]:
    """Focal-plane centre of every IFU slot: median of (fx - ifu_x, fy - ifu_y)."""
    return {int(s): (float(np.median(fs.fx[m] - fs.ifu_x[m])),
                     float(np.median(fs.fy[m] - fs.ifu_y[m])))
            for s in np.unique(fs.ifuslot) for m in [fs.ifuslot == s]}


def _gaussian_fit(x: np.ndarray, y: np.ndarray, v: np.ndarray, x0: float, y0: float
                  ) -> tuple[float, float]:
    """Centre of a circular Gaussian + constant fitted to fiber values (NaN if it fails)."""
    def resid(p: np.ndarray) -> np.ndarray:
        return p[0] * np.exp(-((x - p[1]) ** 2 + (y - p[2]) ** 2) / (2 * p[3] ** 2)) + p[4] - v

    p0 = [max(float(v.max()), 1e-12), x0, y0, 0.8, 0.0]
    lo = [0.0, x0 - 2.0, y0 - 2.0, 0.3, -np.inf]
    hi = [np.inf, x0 + 2.0, y0 + 2.0, 2.5, np.inf]
    fit = least_squares(resid, p0, bounds=(lo, hi), x_scale="jac", max_nfev=200)
    return (float(fit.x[1]), float(fit.x[2])) if fit.success else (float("nan"), float("nan"))


def source_positions(fx: np.ndarray, fy: np.ndarray, value: np.ndarray, ifuslot: np.ndarray,
                     tx: np.ndarray, ty: np.ndarray, radius: float = CENTROID_RADIUS,
                     n_iter: int = 3, min_snr: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Focal-plane positions of sources near targets (tx, ty) measured on the fiber values.

    Background = the median fiber value of each IFU.  A fiber-weighted centroid (weights =
    background-subtracted values clipped at 0 within ``radius`` of the current centre,
    re-centred ``n_iter`` times) starts a circular Gaussian fit to the fibers within
    ``radius`` + 1" (the centroid alone is biased by the fiber sampling).  NaN where a target
    has < 6 fibers or no fiber above ``min_snr`` robust sigma of its IFU.
    """
    cx, cy = np.array(tx, float), np.array(ty, float)
    ok_fib = np.isfinite(value) & np.isfinite(fx) & np.isfinite(fy)
    if not ok_fib.any() or cx.size == 0:
        return np.full(cx.size, np.nan), np.full(cy.size, np.nan)
    v = np.full(value.shape, np.nan)
    sigma = np.zeros(value.shape)
    for s in np.unique(ifuslot[ok_fib]):
        m = ok_fib & (ifuslot == s)
        v[m] = value[m] - np.median(value[m])
        sigma[m] = robust_std(value[m])
    idx = np.flatnonzero(ok_fib)
    tree = cKDTree(np.c_[fx[idx], fy[idx]])
    valid = np.ones(cx.size, bool)
    for _ in range(n_iter):
        for i, near in enumerate(tree.query_ball_point(np.c_[cx, cy], radius)):
            rows = idx[np.asarray(near, int)]
            w = np.clip(v[rows], 0.0, None)
            if rows.size < 6 or w.sum() <= 0 or not np.max(v[rows]) > min_snr * sigma[rows[0]]:
                valid[i] = False
                continue
            cx[i] = np.sum(w * fx[rows]) / w.sum()
            cy[i] = np.sum(w * fy[rows]) / w.sum()
    for i, near in enumerate(tree.query_ball_point(np.c_[cx, cy], radius + 1.0)):
        if valid[i]:
            rows = idx[np.asarray(near, int)]
            cx[i], cy[i] = _gaussian_fit(fx[rows], fy[rows], v[rows], cx[i], cy[i])
    cx[~valid] = np.nan
    cy[~valid] = np.nan
    return cx, cy


def empty_fibers(fs: FiberSummary, positions: np.ndarray, radius: float = SOURCE_RADIUS
                 ) -> np.ndarray:
    """Bool over the sampled rows: farther than ``radius`` from every position, < 50% masked."""
    rows = fs.sample
    keep = fs.bad_fraction[rows] < 0.5
    if len(positions):
        d, _ = cKDTree(positions).query(np.c_[fs.fx[rows], fs.fy[rows]], k=1)
        keep &= d > radius
    return keep


def _column_medians(values: np.ndarray) -> np.ndarray:
    """np.nanmedian(values, axis=0), compiled (numpy loops over the columns in Python)."""
    rows = np.arange(values.shape[0])
    return nanmedian_cols(values, np.zeros(values.shape, bool), rows)


def _sky_analysis(fs: FiberSummary, keep: np.ndarray, wave: np.ndarray, figdir: Path
                  ) -> tuple[list[str], list[list[Any]], list[list[Any]]]:
    """Per-exposure sky residual ratio and the spectrum/error distributions of empty fibers."""
    figs: list[str] = []
    ratio_rows: list[list[Any]] = []
    noise_rows: list[list[Any]] = []
    if not keep.any():
        return figs, ratio_rows, noise_rows
    exps = fs.exposure[fs.sample]
    in_ratio = (wave >= RATIO_RANGE[0]) & (wave <= RATIO_RANGE[1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
        for e in np.unique(exps):
            m = keep & (exps == e)
            if not m.any():
                continue
            med_spec, med_sky = (_column_medians(a[m]) for a in (fs.spectrum, fs.sky))
            ratio = med_spec / np.where(med_sky != 0, med_sky, np.nan)
            ax1.plot(wave, 100 * ratio, lw=0.7, label=f"exp {e}")
            ax2.plot(wave, med_sky, lw=0.7, label=f"exp {e}")
            r = ratio[in_ratio]
            ratio_rows.append([int(e), int(m.sum()), float(100 * np.nanmedian(r)),
                               float(100 * np.sqrt(np.nanmean(r**2))),
                               float(np.nanmedian(med_sky[in_ratio]))])
        ax1.axhline(0, color="k", lw=0.5)
        ax1.set(ylabel="median spectrum / median sky (%)", ylim=(-10, 10))
        ax2.set(ylabel="median sky (1e-17 cgs/A)", xlabel="wavelength (A)")
        if ratio_rows:
            ax1.legend(fontsize=7)
        figs.append(save_figure(fig, figdir / "sky_residual.png"))

        z = fs.spectrum[keep] / fs.error[keep]
        fig, ax = plt.subplots(figsize=(6, 4))
        bins = np.linspace(-6, 6, 121)
        for lo, hi in NOISE_RANGES:
            cols = (wave >= lo) & (wave < hi)
            zz = z[:, cols].ravel()
            zz = zz[np.isfinite(zz)]
            core = zz[np.abs(zz) <= 10]
            std = float(np.std(core)) if core.size > 1 else float("nan")
            rstd = robust_std(zz)
            noise_rows.append([f"{lo:.0f}-{hi:.0f}", int(zz.size), std, rstd,
                               float(np.median(zz)) if zz.size else float("nan")])
            if zz.size:
                ax.hist(zz, bins=bins, density=True, histtype="step",
                        label=f"{lo:.0f}-{hi:.0f} A: std {std:.3f}, robust {rstd:.3f}")
        ax.plot(bins, np.exp(-bins**2 / 2) / np.sqrt(2 * np.pi), "k--", lw=0.8, label="N(0, 1)")
        ax.set(yscale="log", ylim=(1e-5, 1), xlabel="spectrum / error (fibers without sources)")
        ax.legend(fontsize=7)
        figs.append(save_figure(fig, figdir / "noise_distribution.png"))
    return figs, ratio_rows, noise_rows


def _provenance_rows(attrs: dict[str, Any]) -> list[list[Any]]:
    skip = {"config", "notes", "flags", "psf", "fluxcal", "exposure_qa", "fits_products",
            "astrometry", "_NCProperties"}
    rows = [[k, _text(v)] for k, v in sorted(attrs.items()) if k not in skip]
    for name in ("psf", "fluxcal"):
        value = _json(attrs.get(name))
        if isinstance(value, dict):
            rows += [[f"{name}.{k}", json.dumps(v) if isinstance(v, (list, dict)) else v]
                     for k, v in value.items()]
    return rows


def _exposure_rows(exp_table: dict[str, np.ndarray], fs: FiberSummary, qa: Any) -> list[list[Any]]:
    """Exposure table + fibers (exposure index i + 1) + the exposure_qa of that exposure number."""
    qa_by_exp = {q.get("exp"): q for q in qa if isinstance(q, dict)} if isinstance(qa, list) else {}
    rows = []
    for i in range(len(next(iter(exp_table.values()))) if exp_table else 0):
        get = lambda k: exp_table[k][i].item() if k in exp_table else ""  # noqa: E731
        m = fs.exposure == i + 1
        q = qa_by_exp.get(get("exposure"), {})
        sky_qa, check = q.get("sky_qa") or {}, q.get("error_check") or {}
        rows.append([get(k) for k in ("exposure", "exptime", "transparency", "fwhm", "fwhm_guider",
                                      "flux_scale")]
                    + [int(m.sum()), float(np.mean(fs.bad_fraction[m])) if m.any() else np.nan,
                       sky_qa.get("n_sky", ""), sky_qa.get("sky_chi_std", ""),
                       check.get("overall_std", "")])
    return rows


def _marks(astro: dict[str, Any], src: dict[str, np.ndarray], det: dict[str, np.ndarray],
           catalog: Catalog | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Focal-plane positions of sources, catalogue stars (14 < g < 22) and detections."""
    if not all(k in astro for k in ("ra", "dec", "rotation")):
        return {}
    cat = {}
    if catalog is not None and len(catalog):
        sel = (catalog.gmag > 14) & (catalog.gmag < 22)
        cat = {"ra": catalog.ra[sel], "dec": catalog.dec[sel]}
    return {name: _to_focal(astro, t["ra"], t["dec"]) for name, t in
            (("sources", src), ("catalog", cat), ("detections", det)) if len(t.get("ra", []))}


def _to_focal(astro: dict[str, Any], ra: np.ndarray, dec: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    return geometry.sky_to_focal(ra, dec, float(astro["ra"]), float(astro["dec"]),
                                 float(astro["rotation"]))


def _astrometry_section(astro: dict[str, Any], note: str, src: dict[str, np.ndarray],
                        fs: FiberSummary, wave: np.ndarray, figdir: Path) -> Section:
    """Fitted solution, and measured positions of bright sources minus their catalogue ones."""
    rows = [[k, f"{float(astro[k]):.6f}" if k in ("ra", "dec") else astro[k]]
            for k in ("ra", "dec", "rotation", "n_stars", "rms", "fitted") if k in astro]
    rows.append(["note", note])
    figs, text = [], "The product holds the fitted solution only (no per-star residuals)."
    if "rotation" in astro and len(src.get("ra", [])):
        gcat = np.asarray(src.get("gmag_catalog", np.full(len(src["ra"]), np.nan)), float)
        bright = np.flatnonzero(gcat < CENTROID_GMAX)
        ra, dec = src["ra"][bright], src["dec"][bright]
        tx, ty = _to_focal(astro, ra, dec)
        dar = float(np.mean(geometry.dar_offsets(wave[(wave >= G_BAND[0]) & (wave <= G_BAND[1])])))
        cx, cy = source_positions(fs.fx - dar, fs.fy, fs.gband, fs.ifuslot, tx, ty)
        ok = np.isfinite(cx)
        ra_c, dec_c = geometry.focal_to_sky(cx[ok], cy[ok], float(astro["ra"]), float(astro["dec"]),
                                            float(astro["rotation"]))
        dra = ((ra_c - ra[ok] + 180.0) % 360.0 - 180.0) * np.cos(np.deg2rad(dec[ok])) * 3600.0
        ddec = (dec_c - dec[ok]) * 3600.0
        med = (lambda x: float(np.median(x)) if x.size else float("nan"))  # noqa: E731
        rows += [[f"measured sources (g < {CENTROID_GMAX:g})", int(ok.sum())],
                 ["median dRA cos(Dec) (arcsec)", med(dra)], ["median dDec (arcsec)", med(ddec)],
                 ["robust sigma dRA (arcsec)", robust_std(dra)],
                 ["robust sigma dDec (arcsec)", robust_std(ddec)]]
        if ok.any():
            figs.append(astrometry_figure(dra, ddec, figdir / "astrometry.png"))
        text += (" Measured: positions of sources with g < {:g} on the collapsed fiber values "
                 "(fiber-weighted centroid, then a circular Gaussian fit; DAR-corrected to the "
                 "band centre) minus their catalogue positions.".format(CENTROID_GMAX))
    return Section("Astrometry", figures=figs, columns=["quantity", "value"], rows=rows, text=text)


def _photometry_section(src: dict[str, np.ndarray], fluxcal: Any, figdir: Path) -> Section:
    gcat = np.asarray(src.get("gmag_catalog", np.zeros(0)), float)
    delta = gcat - np.asarray(src.get("gmag_virus", np.full(gcat.shape, np.nan)), float)
    use = np.isfinite(delta) & (gcat < PHOTOMETRY_GMAX)
    med = float(np.median(delta[use])) if use.any() else float("nan")
    scatter = robust_std(delta[use])
    rows = [[f"sources with g < {PHOTOMETRY_GMAX:g}", int(use.sum())],
            ["median g_cat - g_virus (mag)", med], ["robust sigma (mag)", scatter]]
    if isinstance(fluxcal, dict):
        rows += [[f"fluxcal {k}", fluxcal[k]] for k in
                 ("factor", "delta_mag", "n_stars", "scatter", "note") if k in fluxcal]
    figs = [photometry_figure(gcat, delta, med, scatter, figdir / "photometry.png")
            ] if gcat.size else []
    return Section("Photometric offsets", figures=figs, columns=["quantity", "value"], rows=rows,
                   text="" if gcat.size else "No sources in the product.")


def _detection_section(det: dict[str, np.ndarray], top: np.ndarray, spectra: Any, errors: Any,
                       wave: np.ndarray, figdir: Path) -> Section:
    n = len(det.get("sn", []))
    figs, rows, cols = [], [], []
    if n:
        figs.append(stamps_figure(wave, det, top, spectra, errors, figdir / "detections.png"))
        cols = [c for c in ("ra", "dec", "wave", "wave_err", "flux", "flux_err", "sn", "fwhm",
                            "chi2", "ifuslot") if c in det]
        fmt = (lambda c, v: f"{v:.6f}" if c in ("ra", "dec") else v.item())  # noqa: E731
        rows = [[int(i)] + [fmt(c, det[c][i]) for c in cols] for i in _by_sn(det)[:MAX_TABLE_ROWS]]
    more = f" (table: the {MAX_TABLE_ROWS} of highest S/N)" if n > MAX_TABLE_ROWS else ""
    return Section("Detections", figures=figs, columns=["#"] + cols, rows=rows,
                   text=f"{n} detections{more}")


def _by_sn(det: dict[str, np.ndarray]) -> np.ndarray:
    return np.argsort(-np.nan_to_num(np.asarray(det["sn"], float), nan=-np.inf), kind="stable")


def observation_report(product_h5: str | Path, out: str | Path | None = None,
                       catalog: Any = None, max_sample_fibers: int = MAX_SAMPLE_FIBERS) -> Path:
    """Write ``{product}_qa/index.html`` (or ``out``) with plots and tables; returns its path.

    ``catalog`` (a :class:`~remedy_dask.io.catalog.Catalog` or a standardized catalogue table)
    only adds markers on the recon
    and excludes fibers near its stars from the "empty" fibers of the sky-residual checks.
    """
    product_h5 = Path(product_h5)
    out = Path(out) if out else product_h5.with_name(product_h5.stem + "_qa") / "index.html"
    figdir = out.parent
    figdir.mkdir(parents=True, exist_ok=True)
    with h5py.File(product_h5, "r") as h5:
        attrs = {k: _text(v) for k, v in h5.attrs.items()}
        wave = h5["wavelength"][...] if "wavelength" in h5 else geometry.DEF_WAVE
        fs = read_fibers(h5["fibers"] if "fibers" in h5 else {}, wave, max_sample_fibers)
        astro = ({k: _text(v) for k, v in h5["astrometry"].attrs.items()}
                 if "astrometry" in h5 else {})
        exp_table, src, det = (columns(h5, g) for g in ("exposures", "sources", "detections"))
        top = _by_sn(det)[:MAX_STAMPS] if len(det.get("sn", [])) else np.zeros(0, int)
        spectra = errors = None
        if top.size and "detections/spectrum" in h5:
            order = np.sort(top)
            pos = np.searchsorted(order, top)  # back to S/N order
            spectra = h5["detections/spectrum"][order][pos]
            errors = h5["detections/error"][order][pos]

    centres = ifu_centres(fs)
    marks = _marks(astro, src, det, as_catalog(catalog) if catalog is not None else None)
    n_fib = len(fs.gband)
    sections = [Section("Summary", columns=["quantity", "value"], rows=[
        ["product", product_h5.name], ["fibers (all exposures)", n_fib], ["IFUs", len(centres)],
        ["exposures", len(exp_table.get("exposure", []))], ["sources", len(src.get("ra", []))],
        ["detections", len(det.get("sn", []))],
        ["masked (NaN) pixel fraction", float(np.mean(fs.bad_fraction)) if n_fib else float("nan")],
        ["fibers sampled for sky / noise", len(fs.sample)]])]
    if centres:
        sections.append(Section("Reconstructed image", figures=[
            recon_figure(fs, centres, marks, figdir / "recon.png")], text=(
            "Mean of the sky-subtracted spectrum over 4600-5400 A per fiber, all exposures, drawn "
            "as 1.5 arcsec discs at their focal-plane positions relative to each IFU centre.")))
    sections.append(_astrometry_section(astro, attrs.get("astrometry", ""), src, fs, wave, figdir))
    sections.append(_photometry_section(src, _json(attrs.get("fluxcal")), figdir))

    pos = [np.c_[mx, my] for mx, my in marks.values()]
    keep = empty_fibers(fs, np.concatenate(pos) if pos else np.zeros((0, 2)))
    figs, ratio_rows, noise_rows = _sky_analysis(fs, keep, wave, figdir)
    sections.append(Section("Sky residuals", figures=figs, columns=[
        "exposure", "fibers used", "median ratio 4000-5400 A (%)", "rms ratio (%)",
        "median sky (1e-17 cgs/A)"], rows=ratio_rows, text=(
        f"Fibers farther than {SOURCE_RADIUS:g} arcsec from every source, catalogue star and "
        f"detection, less than half masked ({int(keep.sum())} of {len(fs.sample)} sampled "
        "fibers).")))
    sections.append(Section("Spectrum / error of empty fibers", columns=[
        "wavelength (A)", "pixels", "std (|z| <= 10)", "robust std", "median"], rows=noise_rows))
    sections.append(_detection_section(det, top, spectra, errors, wave, figdir))
    sections.append(Section("Exposures", columns=[
        "exposure", "exptime (s)", "transparency", "fwhm (arcsec)", "fwhm guider", "flux_scale",
        "fibers", "masked fraction", "sky fibers", "sky chi std", "error check std"],
        rows=_exposure_rows(exp_table, fs, _json(attrs.get("exposure_qa")))))
    flag_rows = [[kind, item] for kind in ("flags", "notes") for item in _as_list(attrs.get(kind))]
    sections.append(Section("Flags and notes", columns=["kind", "text"], rows=flag_rows,
                            text="" if flag_rows else "No flags or notes."))
    sections.append(Section("Provenance", columns=["key", "value"], rows=_provenance_rows(attrs)))
    return write_page(out, f"Observation QA: {product_h5.stem}", sections)
