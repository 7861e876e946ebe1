"""Per-exposure conditions of an observation (raw headers, guider frames, mirror illumination),
its star catalogue and header pointing: the inputs of the observation graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from remedy_dask import geometry
from remedy_dask.errors import RemedyError
from remedy_dask.io.raw import RawArchive
from remedy_dask.requests import ReduceRequest


def prepare_observation(plan: Any, archive: RawArchive, req: ReduceRequest,
                        out: Path) -> tuple[Any, Any, tuple[float, float, float]]:
    """Conditions per exposure (headers, guider), the star catalogue and the header pointing."""
    from remedy_dask.io.catalog import query_panstarrs, read_catalog
    from remedy_dask.io.guider import GuiderArchive, parse_stamp
    from remedy_dask.io.rawframe import read_header_model
    from remedy_dask.io.throughput import default_throughput, read_throughput
    from remedy_dask.workflow.observation import Conditions

    key0 = next(k for k in plan.cal_keys if int(k[:3]) == plan.target_slot) \
        if any(int(k[:3]) == plan.target_slot for k in plan.cal_keys) else plan.cal_keys[0]
    headers = {e: read_header_model(plan.refs[(e, key0)]) for e in plan.exposures
               if (e, key0) in plan.refs}
    h0 = headers[min(headers)]
    if h0.parangle is None or h0.ra_deg is None:
        raise RemedyError(f"{plan.refs[(min(headers), key0)].display_path}: no pointing "
                          "(TRAJRA/TRAJDEC, PARANGLE) in the science header")
    pointing = (h0.ra_deg, h0.dec_deg, geometry.rotation_from_parangle(h0.parangle))
    guider = GuiderArchive(req.rootdir, plan.date)
    exptime, transp, iq, notes, illum, source = [], [], [], [], [], []
    for e in plan.exposures:
        h = headers.get(e, h0)
        exptime.append(h.exptime)
        start = parse_stamp(plan.refs[(e, key0)].name) if (e, key0) in plan.refs else None
        c = guider.conditions(start, h.exptime) if start else None
        if c is None or c.n_frames == 0:
            transp.append(geometry.DEFAULT_TRANSPARENCY)
            iq.append(geometry.DEFAULT_IQ_FWHM)
            notes.append(f"exp{e:02d}: no guider frames, transparency 1.0 and IQ 1.8\" assumed")
        else:
            transp.append(c.transparency)
            iq.append(c.fwhm)
            notes += [f"exp{e:02d}: {n}" for n in c.notes]
        value, origin = exposure_illumination(c)
        illum.append(value)
        source.append(origin)
    if req.throughput:
        _, tput = read_throughput(req.throughput)
    else:
        _, tput = default_throughput()
        notes.append("default HETDEX throughput curve")
    cond = Conditions(list(plan.exposures), np.array(exptime, float), np.array(transp, float),
                      np.array(iq, float), np.asarray(tput, float), notes=notes,
                      parangle=np.array([_number(headers.get(e, h0).parangle)
                                         for e in plan.exposures]),
                      illumination=np.array(illum, float), illumination_source=source,
                      objects=[str(headers.get(e, h0).object or "") for e in plan.exposures])
    if plan.kind != "sci":  # no star field: no catalogue (and no network query)
        from remedy_dask.io.catalog import Catalog

        catalog = Catalog(np.zeros(0), np.zeros(0), np.zeros(0))
    elif req.catalog:
        catalog = read_catalog(req.catalog)
    else:
        catalog = query_panstarrs(pointing[0], pointing[1], req.config.observation.catalog_radius_deg,
                                  out / "catalog_cache")
    return cond, catalog, pointing


def _number(value: Any) -> float:
    return float(value) if value is not None else float("nan")


def exposure_illumination(guider: Any) -> tuple[float, str]:
    """Mirror illumination of one exposure and where it comes from: the guider's PUPILLUM,
    else the pupil model at the guider's tracker position, else unknown (NaN)."""
    from remedy_dask.observation.illumination import relative_illumination

    if guider is None or guider.n_frames == 0:
        return float("nan"), "none: no guider frames"
    if np.isfinite(guider.illumination):
        return guider.illumination, "guider PUPILLUM"
    if np.isfinite(guider.tracker_x) and np.isfinite(guider.tracker_y):
        return (relative_illumination(guider.tracker_x, guider.tracker_y),
                "model: HET pupil on M1 at the guider's tracker X_STRT, Y_STRT")
    return float("nan"), "none: no PUPILLUM or tracker position in the guider frames"
