"""Observation-graph helpers of the calibration stars: selection rules on the catalogue, the
per-exposure normalisation and the astrometric positions from the PSF-star cutouts, and the
zero point with the fate of every source (kernels in ``remedy_dask.observation``)."""

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


def star_normalisation(cutouts: list[dict[str, Any]], fit: Any, fwhm: np.ndarray,
                        betas: np.ndarray, obs_cfg: Any) -> dict[str, Any]:
    """Per-exposure normalisation from each PSF star extracted from every exposure alone."""
    from remedy_dask.observation.photcal import (
        exposure_normalisation,
        per_exposure_fluxes,
    )
    from remedy_dask.observation.psf import fiber_integrated_moffat

    cat = lambda k: np.concatenate([c[k] for c in cutouts])
    used = np.asarray(fit.star_used, bool)
    tables = [fiber_integrated_moffat(f, b) for f, b in zip(fwhm, betas)]
    band = (geometry.DEF_WAVE > 4000) & (geometry.DEF_WAVE < 5400)
    flux, err = per_exposure_fluxes(cat("flux"), cat("error"), cat("bad"), cat("fx"), cat("fy"),
                                    cat("exp_index"), np.asarray(fit.star_x)[used],
                                    np.asarray(fit.star_y)[used], tables, geometry.dar_offsets(),
                                    band)
    try:
        res = exposure_normalisation(flux, err, obs_cfg.exposure_norm_min_stars)
    except CalibrationError as exc:
        log.info("no per-exposure normalisation from the stars (%s): PSF-fit norm kept", exc)
        return {"norm_source": "psf fit", "note": f"{exc}: exposure norm from the PSF fit"}
    return {"norm": res.norm, "norm_err": res.error.tolist(), "norm_n_stars": res.n_stars,
            "norm_source": "field stars"}


def astrometric_positions(cutouts: list[dict[str, Any]], fwhm: np.ndarray, betas: np.ndarray
                           ) -> dict[str, np.ndarray]:
    """PSF-fitted positions of every non-saturated, non-edge star (blends fitted with their
    neighbours) for the astrometry: focal-plane x, y, 1-sigma error per axis, catalogue index."""
    from remedy_dask.observation.psf import fiber_integrated_moffat
    from remedy_dask.observation.starfit import fit_star_positions

    tables = [fiber_integrated_moffat(f, b) for f, b in zip(fwhm, betas)]
    parts: dict[str, list[np.ndarray]] = {}
    for c in cutouts:
        if "astro_fx" not in c:
            continue
        pos = fit_star_positions(c["flux"], c["error"], c["bad"], c["fx"], c["fy"],
                                 c["exp_index"], c["astro_fx"], c["astro_fy"], tables,
                                 geometry.dar_offsets(), c["astro_free"])
        ok = c["astro_free"] & np.isfinite(pos.x) & np.isfinite(pos.error)
        for key, v in (("star_fx", pos.x), ("star_fy", pos.y), ("star_err", pos.error),
                       ("star_cat_index", c["astro_cat_index"])):
            parts.setdefault(key, []).append(v[ok])
    if not parts:
        return {"star_cat_index": np.zeros(0, int)}
    return {k: np.concatenate(v) for k, v in parts.items()}


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
