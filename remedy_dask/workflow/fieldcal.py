"""The field-calibration nodes of an observation graph (astrometry, PSF, catalogue sources, flux
calibration), or, for frame kinds without a star field (``reduce --kind twi|flt|cmp``), their
stand-ins: the header pointing, the guider (or default) seeing, no sources and no photometric
offset, each recorded in the product as a skipped step."""

from __future__ import annotations

from typing import Any, Callable

import dask
import numpy as np

from remedy_dask.config import ObservationConfig
from remedy_dask.io.catalog import Catalog
from remedy_dask.workflow.nodes import flat, gather
from remedy_dask.workflow.starcal import ifu_star_fits, merge_psf
from remedy_dask.workflow.observation import (
    Conditions, fit_field, fit_psf, flux_calibration, ifu_sources, ifu_stars, refine_field,
    star_cutouts,
)

# steps a frame kind other than ``sci`` skips (recorded in the product's ``steps_skipped``)
SKIPPED_FOR_KIND = ("astrometry", "psf_fit", "sources", "flux_calibration", "detections")


def field_calibration(load: Callable[..., Any], slots: list[int], cond: Conditions,
                      catalog: Catalog, pointing: tuple[float, float, float],
                      config: ObservationConfig, tag: str) -> tuple[Any, Any, Any, Any]:
    """Delayed (astrometry, psf, flux calibration, sources) of a science observation;
    ``load(slot, stage, after)``: the delayed fibers of one IFU, read for ``stage`` after
    ``after`` (each per-IFU stage reads its own)."""
    stars = [dask.delayed(ifu_stars, pure=False)(load(s, "stars"), s, cond,
                                                 dask_key_name=f"ifu-stars-{s:03d}-{tag}")
             for s in slots]
    stars = gather(stars, f"ifu-stars-all-{tag}")
    astro = flat(dask.delayed(fit_field, pure=False)(stars, catalog, pointing, config,
                                                     dask_key_name=f"astrometry-{tag}"))
    cut = [dask.delayed(star_cutouts, pure=False)(load(s, "psf-stars", astro), s, cond, catalog,
                                                  astro, config,
                                                  dask_key_name=f"ifu-psf-stars-{s:03d}-{tag}")
           for s in slots]
    fit = flat(dask.delayed(fit_psf, pure=False)(gather(cut, f"ifu-psf-stars-all-{tag}"), cond,
                                                 config, dask_key_name=f"seeing-{tag}"))
    # the per-exposure star fluxes and the astrometric star positions, IFU by IFU
    star_fits = [dask.delayed(ifu_star_fits, pure=False)(c, fit,
                                                         dask_key_name=f"ifu-star-fits-{s:03d}-{tag}")
                 for s, c in zip(slots, cut)]
    psf = flat(dask.delayed(merge_psf, pure=False)(fit, gather(star_fits, f"ifu-star-fits-all-{tag}"),
                                                   config, dask_key_name=f"psf-{tag}"))
    astro = flat(dask.delayed(refine_field, pure=False)(astro, psf, catalog, config,
                                                        dask_key_name=f"astrometry-refine-{tag}"))
    srcs = [dask.delayed(ifu_sources, pure=False)(load(s, "sources", astro), s, cond, catalog,
                                                  astro, psf, config,
                                                  dask_key_name=f"ifu-sources-{s:03d}-{tag}")
            for s in slots]
    srcs = gather(srcs, f"ifu-sources-all-{tag}")
    fcal = flat(dask.delayed(flux_calibration, pure=False)(srcs, catalog, config,
                                                           dask_key_name=f"fluxcal-{tag}"))
    return astro, psf, fcal, srcs


def skipped_field_calibration(kind: str, cond: Conditions, pointing: tuple[float, float, float],
                              config: ObservationConfig
                              ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], list]:
    """(astrometry, psf, flux calibration, sources) for a frame kind without a star field."""
    n = len(cond.exposures)
    why = f"frame kind {kind}"
    astro = {"ra": pointing[0], "dec": pointing[1], "rotation": pointing[2], "n_stars": 0,
             "rms": float("nan"), "fitted": False,
             "note": f"{why}: astrometry not fitted (header pointing)"}
    psf = {"fwhm": np.asarray(cond.fwhm_guider, float).tolist(), "norm": [1.0] * n,
           "beta": [config.psf_beta] * n, "n_stars": 0, "fitted": False,
           "note": f"{why}: PSF not fitted (guider IQ or default)"}
    fcal = {"factor": 1.0, "delta_mag": 0.0, "n_stars": 0, "scatter": float("nan"),
            "error": float("nan"), "fitted": False, "used": np.zeros(0, bool),
            "reject": np.zeros(0, str),
            "note": f"{why}: no photometric offset, no sources or detections (throughput curve "
                    "and nominal area only)"}
    return astro, psf, fcal, []
