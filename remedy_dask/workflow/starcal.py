"""Observation-graph helpers of the calibration stars: selection rules on the catalogue, the
per-IFU star fits after the joint PSF fit (fluxes per exposure, astrometric positions) and
their merge into the observation's PSF, and the zero point with the fate of every source
(kernels in ``remedy_dask.observation``)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from remedy_dask import geometry
from remedy_dask.errors import CalibrationError
from remedy_dask.observation.starselect import relative_coverage  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)


def star_rules(obs_cfg: Any) -> Any:
    """The star-selection rules of the observation configuration."""
    from remedy_dask.observation.starselect import StarRules

    return StarRules(obs_cfg.star_bright_limit, obs_cfg.star_blend_radius,
                     obs_cfg.star_blend_limit, obs_cfg.star_min_coverage, obs_cfg.star_blend_fwhm)


def catalog_reasons(catalog: Any, idx: np.ndarray, rules: Any,
                     coverage: np.ndarray | None = None) -> np.ndarray:
    """Rejection reason ("" = usable) of catalogue stars ``idx``: saturated, blend, edge."""
    from remedy_dask.observation.starselect import blend_contamination, reject_reasons

    g = catalog.gmag
    contamination = blend_contamination(catalog.ra,
                                        catalog.dec, g, idx,
                                        rules.blend_psf(), rules.blend_radius)
    return reject_reasons(g[idx], contamination, coverage, rules)


def ifu_star_fits(c: dict[str, Any] | None, fit: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """After the joint PSF fit ``fit`` (:func:`observation.fit_psf`), one IFU's star cutout
    ``c``: the band-mean flux of its fitted PSF stars in each exposure alone (rows in the fit's
    order) and the PSF-fitted positions of its astrometric stars."""
    from remedy_dask.observation.photcal import per_exposure_fluxes
    from remedy_dask.observation.psf import DEFAULT_BETA, moffat_tables

    if c is None or "ifu_star_positions" not in fit:
        return None
    tables = moffat_tables(fit["fwhm"], fit.get("beta", [DEFAULT_BETA] * len(fit["fwhm"])))
    x, y = fit["ifu_star_positions"].get(c["slot"], (np.zeros(0), np.zeros(0)))
    band = (geometry.DEF_WAVE > 4000) & (geometry.DEF_WAVE < 5400)
    flux, err = per_exposure_fluxes(c["flux"], c["error"], c["bad"], c["fx"], c["fy"],
                                    c["exp_index"], x, y, tables, geometry.dar_offsets(), band)
    return {"flux": flux, "error": err, **_star_positions(c, tables)}


def _star_positions(c: dict[str, Any], tables: list[Any]) -> dict[str, np.ndarray]:
    """PSF-fitted positions of the non-saturated, non-edge stars of one cutout (blends fitted
    with their neighbours): focal-plane x, y, 1-sigma error per axis, catalogue index."""
    from remedy_dask.observation.starfit import fit_star_positions

    pos = fit_star_positions(c["flux"], c["error"], c["bad"], c["fx"], c["fy"], c["exp_index"],
                             c["astro_fx"], c["astro_fy"], tables, geometry.dar_offsets(),
                             c["astro_free"])
    ok = c["astro_free"] & np.isfinite(pos.x) & np.isfinite(pos.error)
    return {"star_fx": pos.x[ok], "star_fy": pos.y[ok], "star_err": pos.error[ok],
            "star_cat_index": c["astro_cat_index"][ok]}


def merge_psf(fit: dict[str, Any], star_fits: list[dict[str, np.ndarray] | None],
              obs_cfg: Any) -> dict[str, Any]:
    """The observation's PSF: the joint fit ``fit`` with the per-exposure normalisation from
    the PSF stars' fluxes in each exposure alone, and the PSF-fitted positions of the
    astrometric stars (the PSF stars' own positions if fewer than 3)."""
    from remedy_dask.observation.photcal import exposure_normalisation

    if "ifu_star_positions" not in fit:  # no joint fit: the guider's seeing
        return fit
    fits = [s for s in star_fits if s is not None]
    cat = lambda k: np.concatenate([s[k] for s in fits])  # noqa: E731
    try:
        res = exposure_normalisation(cat("flux"), cat("error"), obs_cfg.exposure_norm_min_stars)
        star_norm = {"norm": res.norm, "norm_err": res.error.tolist(),
                     "norm_n_stars": res.n_stars, "norm_source": "field stars"}
    except CalibrationError as exc:
        log.info("no per-exposure normalisation from the stars (%s): PSF-fit norm kept", exc)
        star_norm = {"norm_source": "psf fit", "note": f"{exc}: exposure norm from the PSF fit"}
    norm = np.asarray(star_norm.pop("norm", fit["norm"]))
    note = "; ".join(x for x in (fit["note"], star_norm.pop("note", "")) if x)
    stars = {k: fit[k] for k in ("star_fx", "star_fy", "star_cat_index")}
    if fits and cat("star_cat_index").size >= 3:  # else the PSF stars' positions
        stars = {k: cat(k) for k in ("star_fx", "star_fy", "star_err", "star_cat_index")}
    return {"fwhm": fit["fwhm"], "norm": norm.tolist(), "beta": fit["beta"],
            "n_stars": fit["n_stars"], **star_norm, "fitted": fit["fitted"], "chi2": fit["chi2"],
            "dar_scale": fit["dar_scale"], "note": note, **stars}


def zero_point_of_sources(idx: np.ndarray, gsyn: np.ndarray, gerr: np.ndarray, coverage: np.ndarray,
                catalog: Any, obs_cfg: Any) -> dict[str, Any]:
    """Zero point from the rule-selected, sigma-clipped stars; ``used``/``reject`` per source."""
    from remedy_dask.observation.photcal import zero_point

    reasons = catalog_reasons(catalog, idx, star_rules(obs_cfg), coverage)
    gcat = catalog.gmag[idx]
    try:
        zp = zero_point(gsyn, gcat, gerr, reasons, tuple(obs_cfg.fluxcal_mag_range),
                        clip=obs_cfg.fluxcal_clip, floor=obs_cfg.fluxcal_scatter_floor)
    except CalibrationError as exc:
        return {"factor": 1.0, "delta_mag": 0.0, "n_stars": 0, "scatter": float("nan"),
                "error": float("nan"), "fitted": False, "used": np.zeros(idx.size, bool),
                "reject": np.where(reasons == "", "too few stars", reasons),
                "note": f"no photometric offset ({exc}): throughput curve only"}
    log.info("flux calibration: %d of %d sources used, delta %.3f +- %.3f mag",
             zp.used.sum(), idx.size, zp.delta_mag, zp.error)
    return {"factor": zp.factor, "delta_mag": zp.delta_mag, "n_stars": int(zp.used.sum()),
            "scatter": zp.scatter, "error": zp.error, "fitted": True, "note": "",
            "used": zp.used, "reject": zp.reason}
