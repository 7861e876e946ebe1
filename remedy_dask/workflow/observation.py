"""Per-observation graph: astrometry, PSF, flux calibration, sources, detections, cubes.

Nodes: ``ifu-stars-{slot}`` (collapsed g image and star detection per IFU) -> ``astrometry``
(fan-in) -> ``ifu-psf-stars-{slot}`` (star cutouts) -> ``seeing`` (fan-in: joint PSF fit, FWHM
per exposure, DAR) -> ``ifu-star-fits-{slot}`` (star fluxes per exposure, astrometric positions)
-> ``psf`` (fan-in: exposure normalisation from matched stars) -> ``ifu-sources-{slot}`` (catalogue sources, synthetic g) -> ``fluxcal`` (fan-in:
photometric offset) -> ``ifu-detect-{slot}`` and ``ifu-cube-{slot}`` -> ``write-products``.
Each IFU's fibers are read once from the exposures' ``sky`` groups of the zarr store
(``load-ifu-{slot}``); the per-IFU nodes take that result.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from remedy_dask import geometry
from remedy_dask.config import ObservationConfig
from remedy_dask.errors import CalibrationError
from remedy_dask.io import store
from remedy_dask.io.catalog import Catalog
from remedy_dask.observation.fluxcal import calibrate_fibers, exposure_conversion
from remedy_dask.workflow.starcal import (
    catalog_reasons, relative_coverage, star_rules, zero_point_of_sources,
)

log = logging.getLogger(__name__)

FIBER_COLUMNS = ("ifuslot", "amp", "fiber_id", "ifu_x", "ifu_y", "fx", "fy", "exptime")


@dataclass
class Conditions:
    """Per-exposure conditions and the calibration of counts to flux."""

    exposures: list[int]
    exptime: np.ndarray
    transparency: np.ndarray
    fwhm_guider: np.ndarray
    throughput: np.ndarray  # on DEF_WAVE
    area: float = geometry.DEFAULT_AREA_CM2
    notes: list[str] = field(default_factory=list)
    parangle: np.ndarray | None = None  # deg, raw header PARANGLE per exposure
    illumination: np.ndarray | None = None  # mirror illumination per exposure (NaN: unknown)
    illumination_source: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)  # raw header OBJECT per exposure

    def survey_columns(self) -> dict[str, np.ndarray]:
        """Per-exposure parallactic angle, illumination (and its source), collecting area used
        and object name, for the product's ``exposures`` group."""
        n = len(self.exposures)
        nan = np.full(n, np.nan)
        return {"parangle": nan if self.parangle is None else np.asarray(self.parangle, float),
                "illumination": nan if self.illumination is None
                else np.asarray(self.illumination, float),
                "illumination_source": np.asarray(self.illumination_source or ["none"] * n, str),
                "mirror_area": np.full(n, float(self.area)),
                "object": np.asarray(self.objects or [""] * n, str)}

    def conversion(self) -> np.ndarray:
        """(n_exposure, n_wave) factors from e-/s/A to 1e-17 erg/s/cm^2/A (no photometric
        offset)."""
        return exposure_conversion(self.throughput, self.area,
                                   self.transparency[:len(self.exposures)])


def load_ifu(work_root: str, exposures: list[int], slot: int, columns: tuple[str, ...] = (
        "flux", "error", "mask", "sky"), wave_corr: bool = True) -> dict[str, np.ndarray] | None:
    """All exposures' fibers of one IFU: arrays plus ``exp_index`` (0-based exposure) and, with
    ``wave_corr``, the correlation of neighbouring wavelength bins left by the rectification
    (``wave_corr[:, j]`` between bins j and j+1, float32)."""
    parts: dict[str, list[np.ndarray]] = {}
    for i, exp in enumerate(exposures):
        rows = store.read_rows(work_root, exp, "sky", "ifuslot", slot, columns + FIBER_COLUMNS)
        if rows is None:
            continue
        for name, values in rows.items():
            parts.setdefault(name, []).append(values)
        parts.setdefault("exp_index", []).append(np.full(len(rows["ifuslot"]), i))
        if wave_corr:
            parts.setdefault("wave_corr", []).append(
                _rectification_correlation(work_root, exp, slot, rows["amp"]))
    if not parts:
        return None
    out = {k: np.concatenate(v) for k, v in parts.items()}
    out["amp"] = np.asarray(geometry.AMPS)[out["amp"].astype(int)]  # stored as codes
    return out


def _rectification_correlation(work_root: str, exp: int, slot: int, amp_codes: np.ndarray
                               ) -> np.ndarray:
    """(n_rows, n_wave) float32 adjacent-bin correlation of one exposure's rows of an IFU (blocks
    of each amp's fibers in the amp's order, as the ``sky`` group holds them) from each amp's
    native errors and wavelengths (:func:`remedy_dask.amp.rectify.adjacent_correlation`)."""
    from remedy_dask.amp.rectify import adjacent_correlation

    out = np.zeros((len(amp_codes), geometry.N_WAVE), np.float32)
    for code in np.unique(amp_codes):
        rows = np.flatnonzero(amp_codes == code)
        key = f"{slot:03d}{geometry.AMPS[int(code)]}"
        arrays, _ = store.read_arrays(work_root, exp, key, ("native_error", "wavelength_native"))
        if len(rows) != len(arrays["native_error"]):
            raise CalibrationError(f"exposure {exp}, amp {key}: {len(rows)} rows in the sky group "
                                   f"but {len(arrays['native_error'])} fibers in the amp's group")
        rho = adjacent_correlation(arrays["native_error"].astype(np.float64),
                                   arrays["wavelength_native"].astype(np.float64))
        out[rows, :-1] = np.nan_to_num(rho)
    return out


def calibrated(d: dict[str, np.ndarray], cond: Conditions, scale: np.ndarray | None = None
               ) -> dict[str, np.ndarray]:
    """Flux, error and sky in 1e-17 erg/s/cm^2/A (times the per-exposure ``scale`` if given);
    masked pixels NaN."""
    conversion = cond.conversion()
    bad = d["mask"].astype(bool)
    out = dict(d)
    for name in ("flux", "error", "sky"):
        if name in d:
            out[name] = calibrate_fibers(d[name], d["exp_index"], conversion,
                                         bad if name != "sky" else None, scale)
    out["bad"] = bad | ~np.isfinite(out["flux"]) | ~(out["error"] > 0)
    return out


def ifu_offset(d: dict[str, np.ndarray]) -> tuple[float, float]:
    """Focal-plane position (arcsec) of the IFU centre, from its fibers."""
    return float(np.median(d["fx"] - d["ifu_x"])), float(np.median(d["fy"] - d["ifu_y"]))


def ifu_stars(d: dict[str, np.ndarray] | None, slot: int, cond: Conditions) -> dict[str, Any]:
    """Collapsed g image of one IFU and the stars detected on it (focal-plane arcsec)."""
    from remedy_dask.observation.astrometry import collapsed_image, detect_stars

    if d is None:
        return {"slot": slot, "fx": np.zeros(0), "fy": np.zeros(0), "flux": np.zeros(0),
                "image": None, "note": "no fibers"}
    c = calibrated({k: v for k, v in d.items() if k != "sky"}, cond)
    img = collapsed_image(c["flux"], c["bad"], d["ifu_x"], d["ifu_y"], dar=geometry.dar_offsets())
    try:
        stars = detect_stars(img)
    except CalibrationError as exc:
        return {"slot": slot, "fx": np.zeros(0), "fy": np.zeros(0), "flux": np.zeros(0),
                "image": img, "note": str(exc)}
    offset_x, offset_y = ifu_offset(d)
    return {"slot": slot, "fx": stars.x + offset_x, "fy": stars.y + offset_y, "flux": stars.flux,
            "image": img, "offset": (offset_x, offset_y), "note": ""}


def fit_field(star_lists: list[dict[str, Any]], catalog: Catalog,
              pointing: tuple[float, float, float], config: ObservationConfig) -> dict[str, Any]:
    """Fan-in: match detections of all IFUs to the catalogue, fit shift and rotation (twice);
    saturated and blended catalogue stars (the ``config`` star rules) are not matched."""
    from remedy_dask.observation.astrometry import fit_astrometry, match_catalog

    fx = np.concatenate([s["fx"] for s in star_lists])
    fy = np.concatenate([s["fy"] for s in star_lists])
    ra0, dec0, rot0 = pointing
    cat_ra, cat_dec, g = catalog.ra, catalog.dec, catalog.gmag
    gmin, gmax = config.astrometry_gmag_range
    usable = np.isfinite(g) & (g > gmin) & (g < gmax)
    usable[usable] = catalog_reasons(catalog, np.flatnonzero(usable), star_rules(config)) == ""
    result = None
    ra, dec, rot = ra0, dec0, rot0
    for radius in config.astrometry_match_radii:
        match = match_catalog(fx, fy, cat_ra[usable], cat_dec[usable], ra, dec, rot,
                              search_radius=radius)
        if len(match.det_index) < 3:
            break
        idx = np.flatnonzero(usable)[match.cat_index]
        result = fit_astrometry(fx[match.det_index], fy[match.det_index], cat_ra[idx],
                                cat_dec[idx], ra, dec, rot)
        ra, dec, rot = result.ra0, result.dec0, result.rotation
    if result is None:
        log.warning("astrometry: fewer than 3 matched stars; header pointing kept")
        return {"ra": ra0, "dec": dec0, "rotation": rot0, "n_stars": 0, "rms": float("nan"),
                "fitted": False, "note": "fewer than 3 stars matched: header pointing"}
    return {"ra": result.ra0, "dec": result.dec0, "rotation": result.rotation,
            "n_stars": result.n_stars, "rms": result.rms, "fitted": True,
            "ra_err": result.ra0_err, "dec_err": result.dec0_err,
            "rotation_err": result.rotation_err, "note": "",
            "residuals": result.residuals[result.used]}


def _catalog_in_ifu(catalog: Catalog, astro: dict[str, Any], offset: tuple[float, float],
                    half: float, gmax: float) -> tuple[np.ndarray, ...]:
    """Catalogue sources inside one IFU: (index, IFU-frame x, y)."""
    fx, fy = geometry.sky_to_focal(catalog.ra, catalog.dec, astro["ra"], astro["dec"],
                                   astro["rotation"])
    x, y = fx - offset[0], fy - offset[1]
    g = catalog.gmag
    inside = (np.abs(x) < half) & (np.abs(y) < half) & np.isfinite(g) & (g < gmax)
    idx = np.flatnonzero(inside)
    return idx, x[idx], y[idx]


def star_cutouts(d: dict[str, np.ndarray] | None, slot: int, cond: Conditions, catalog: Catalog,
                 astro: dict[str, Any], config: ObservationConfig) -> dict[str, Any] | None:
    """Fibers near the catalogue stars of one IFU that pass the star rules, for the joint PSF
    fit (focal plane), and every star to ``astrometry_star_gmax`` for the astrometry."""
    if d is None:
        return None
    offset = ifu_offset(d)
    aidx, ax, ay = _catalog_in_ifu(catalog, astro, offset, half=config.source_half_size,
                                   gmax=config.astrometry_star_gmax)
    rules = star_rules(config)
    cov = relative_coverage(d["ifu_x"], d["ifu_y"], d["exp_index"],
                            ~d["mask"].astype(bool).all(axis=1), ax, ay, rules.blend_psf())
    reasons = catalog_reasons(catalog, aidx, rules, cov)
    keep = (reasons == "") & (catalog.gmag[aidx] < config.psf_star_gmax)
    idx = aidx[keep]
    x, y = np.concatenate([ax[keep], ax]), np.concatenate([ay[keep], ay])  # fibers near all
    if idx.size == 0:
        return None
    near = np.zeros(d["fx"].size, bool)
    for xs, ys in zip(x, y):
        near |= np.hypot(d["ifu_x"] - xs, d["ifu_y"] - ys) < config.psf_star_radius
    c = calibrated({k: v[near] for k, v in d.items() if k != "sky"}, cond)
    free = np.array([r == "" or r.startswith("blend") for r in reasons], bool)
    return {"slot": slot, "flux": c["flux"], "error": c["error"], "bad": c["bad"],
            "fx": d["fx"][near], "fy": d["fy"][near], "exp_index": d["exp_index"][near],
            "star_fx": x[:idx.size] + offset[0], "star_fy": y[:idx.size] + offset[1],
            "cat_index": idx, "astro_fx": ax + offset[0], "astro_fy": ay + offset[1],
            "astro_cat_index": aidx, "astro_free": free}


def fit_psf(cutouts: list[dict[str, Any] | None], cond: Conditions,
            config: ObservationConfig) -> dict[str, Any]:
    """Fan-in: FWHM (and with ``config.psf_fit_beta`` the Moffat beta) per exposure from the
    joint fit of the PSF stars; the per-exposure normalisation from the field stars and their
    PSF-fitted positions are measured per IFU after it (:func:`starcal.ifu_star_fits`,
    merged by :func:`starcal.merge_psf`), from ``ifu_star_positions``: the fitted PSF stars of
    each IFU."""
    from remedy_dask.observation.seeing import fit_seeing

    cutouts = [c for c in cutouts if c is not None]
    beta = config.psf_beta
    fallback = {"fwhm": cond.fwhm_guider.tolist(), "norm": [1.0] * len(cond.exposures),
                "beta": [beta] * len(cond.exposures), "n_stars": 0, "fitted": False}
    if not cutouts:
        return {**fallback, "note": "no bright stars: guider IQ used for the PSF"}
    cat = lambda k: np.concatenate([c[k] for c in cutouts])  # noqa: E731
    try:
        fit = fit_seeing(cat("flux"), cat("error"), cat("bad"), cat("fx"), cat("fy"),
                         cat("exp_index"), cat("star_fx"), cat("star_fy"),
                         dar=geometry.dar_offsets(), fwhm0=float(np.median(cond.fwhm_guider)),
                         beta=beta, fit_beta=config.psf_fit_beta, star_clip=config.psf_star_clip,
                         max_stars=config.psf_max_stars)
    except CalibrationError as exc:
        return {**fallback, "note": f"PSF fit failed ({exc}): guider IQ used"}
    fwhm = np.array(cond.fwhm_guider, float)
    norm = np.ones(len(cond.exposures))
    betas = np.full(len(cond.exposures), beta)
    fwhm[fit.exposure_ids] = fit.fwhm
    norm[fit.exposure_ids] = fit.norm
    betas[fit.exposure_ids] = fit.beta
    used = np.asarray(fit.star_used, bool)
    sx, sy = np.asarray(fit.star_x), np.asarray(fit.star_y)
    bounds = np.cumsum([0] + [len(c["star_fx"]) for c in cutouts])
    per_ifu = {c["slot"]: (sx[a:b][used[a:b]], sy[a:b][used[a:b]])
               for c, a, b in zip(cutouts, bounds[:-1], bounds[1:])}
    return {"fwhm": fwhm.tolist(), "norm": norm.tolist(), "beta": betas.tolist(),
            "n_stars": fit.n_stars, "fitted": bool(fit.success), "chi2": fit.chi2,
            "dar_scale": list(fit.dar_scale), "note": "" if fit.success else fit.message,
            "star_fx": sx[used], "star_fy": sy[used], "star_cat_index": cat("cat_index")[used],
            "ifu_star_positions": per_ifu}


def refine_field(astro: dict[str, Any], psf: dict[str, Any], catalog: Catalog,
                 config: ObservationConfig) -> dict[str, Any]:
    """Final astrometric fit on the PSF-fitted star positions (much more precise than the
    collapsed-image centroids); the first solution is kept if too few stars were fitted."""
    from remedy_dask.observation.astrometry import fit_astrometry

    idx = np.asarray(psf.get("star_cat_index", []), int)
    if not psf.get("fitted") or idx.size < 3:
        return astro
    fit = lambda w: fit_astrometry(  # noqa: E731
        psf["star_fx"], psf["star_fy"], catalog.ra[idx], catalog.dec[idx], astro["ra"],
        astro["dec"], astro["rotation"], weights=w, clip=config.astrometry_refine_clip,
        floor=config.astrometry_refine_floor)
    try:
        res = fit(None)
        if "star_err" in psf:  # weights: catalogue and fit errors
            from remedy_dask.observation.astrometry import catalog_position_error

            fit_err = np.asarray(psf["star_err"], float)
            cat_err = config.astrometry_catalog_error
            for _ in range(3):
                res = fit(1.0 / (cat_err**2 + fit_err**2))
                cat_err = catalog_position_error(res.residuals[res.used], fit_err[res.used],
                                                 config.astrometry_catalog_error)
            res = fit(1.0 / (cat_err**2 + fit_err**2))
            log.info("astrometry: catalogue position error %.3f\" from %d stars", cat_err,
                     res.n_stars)
    except CalibrationError as exc:
        log.warning("astrometry refinement failed (%s): first solution kept", exc)
        return astro
    return {**astro, "ra": res.ra0, "dec": res.dec0, "rotation": res.rotation,
            "n_stars": res.n_stars, "rms": res.rms, "ra_err": res.ra0_err,
            "dec_err": res.dec0_err, "rotation_err": res.rotation_err, "refined": True,
            "residuals": res.residuals[res.used]}


def psf_tables(psf: dict[str, Any]) -> list[Any]:
    """The fiber-integrated Moffat of each exposure (computed once per process)."""
    from remedy_dask.observation.psf import DEFAULT_BETA, moffat_tables

    return moffat_tables(psf["fwhm"], psf.get("beta", [DEFAULT_BETA] * len(psf["fwhm"])))


def ifu_sources(d: dict[str, np.ndarray] | None, slot: int, cond: Conditions, catalog: Catalog,
                astro: dict[str, Any], psf: dict[str, Any], config: ObservationConfig
                ) -> dict[str, np.ndarray]:
    """Optimal extraction of every catalogue source inside one IFU (catalogue neighbours closer
    than ``deblend_radius`` extracted jointly), with synthetic g and PSF coverage."""
    from remedy_dask.observation.deblend import extract_sources_deblended
    from remedy_dask.observation.fluxcal import synthetic_gmag

    empty = {"cat_index": np.zeros(0, int), "spectrum": np.zeros((0, geometry.N_WAVE)),
             "error": np.zeros((0, geometry.N_WAVE)), "gmag_virus": np.zeros(0),
             "gmag_virus_err": np.zeros(0), "ifuslot": np.zeros(0, int), "coverage": np.zeros(0)}
    if d is None:
        return empty
    idx, x, y = _catalog_in_ifu(catalog, astro, ifu_offset(d), half=config.source_half_size,
                                gmax=config.source_gmax)
    if idx.size == 0:
        return empty
    c = calibrated({k: v for k, v in d.items() if k != "sky"}, cond)
    norm = np.asarray(psf["norm"])[d["exp_index"]][:, None]
    spec, err, _ = extract_sources_deblended(
        c["flux"] / norm, c["error"] / norm, c["bad"], d["ifu_x"], d["ifu_y"], x, y,
        psf_tables(psf), geometry.dar_offsets(), d["exp_index"], group_radius=config.deblend_radius)
    g, gerr = synthetic_gmag(geometry.DEF_WAVE, spec, err)
    cov = relative_coverage(d["ifu_x"], d["ifu_y"], d["exp_index"], ~c["bad"].all(axis=1), x, y,
                            psf_tables(psf))
    return {"cat_index": idx, "spectrum": spec, "error": err, "gmag_virus": np.atleast_1d(g),
            "gmag_virus_err": np.atleast_1d(gerr), "ifuslot": np.full(idx.size, slot),
            "coverage": cov}


def flux_calibration(sources: list[dict[str, np.ndarray]], catalog: Catalog,
                     config: ObservationConfig) -> dict[str, Any]:
    """Fan-in: the zero point of VIRUS synthetic g against the catalogue, from the stars of every
    IFU that pass the star rules, with the fate of each source."""
    idx = np.concatenate([s["cat_index"] for s in sources]).astype(int)
    gsyn = np.concatenate([s["gmag_virus"] for s in sources])
    gerr = np.concatenate([s["gmag_virus_err"] for s in sources])
    return zero_point_of_sources(idx, gsyn, gerr,
                                 np.concatenate([s["coverage"] for s in sources]), catalog, config)

