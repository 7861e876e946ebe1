"""Per-exposure fan-in: every amp of one exposure -> fiber-to-fiber, masking, sky subtraction.

Reads the amps' rectified spectra from the zarr checkpoints (``sky-expNN`` task), writes the
sky-subtracted exposure as the group ``expNN/sky`` of the same store and returns its summary.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr

from remedy_dask import __version__, geometry
from remedy_dask.config import PipelineConfig
from remedy_dask.io import calfile, store
from remedy_dask.workflow.nodes import gather

log = logging.getLogger(__name__)

_AMP_ARRAYS = ("flux", "error", "mask")


def fiber_table(keys: list[str], exp: int, fplane: dict | None, ifucen: Any,
                dither: list[list[float]]) -> dict[str, np.ndarray]:
    """Per-fiber identity and positions (IFU frame with dither, focal plane) of ``keys``."""
    from remedy_dask.io.ifucen import amp_fiber_positions

    dx, dy = dither[exp - 1] if exp - 1 < len(dither) else (0.0, 0.0)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in
                                         ("ifuslot", "amp", "fiber_id", "ifu_x", "ifu_y", "fx", "fy")}
    n = geometry.N_FIBERS_AMP
    for key in keys:
        slot, amp = int(key[:3]), key[3:]
        x, y, x0, y0, note = amp_fiber_positions(ifucen, fplane, key)
        if note:
            log.warning(note)
        cols["ifuslot"].append(np.full(n, slot))
        cols["amp"].append(np.full(n, geometry.AMPS.index(amp), np.uint8))  # code: zarr-safe
        cols["fiber_id"].append(geometry.fiber_ids(amp))
        cols["ifu_x"].append(x + dx)
        cols["ifu_y"].append(y + dy)
        cols["fx"].append(x + dx + x0)
        cols["fy"].append(y + dy + y0)
    return {k: np.concatenate(v) for k, v in cols.items()}


def reduce_exposure(summaries: list[dict[str, Any]], exp: int, cal_path: str, work_root: str,
                    fibers_of: Any, config: PipelineConfig, input_key: str) -> dict[str, Any]:
    """Fan in the amps of exposure ``exp``: ftf, masking, sky; write ``expNN/sky``."""
    from remedy_dask.sky import error_check, sky_model

    keys = [s["key"] for s in summaries if not s.get("failed")]
    failed = {s["key"]: s["failed"] for s in summaries if s.get("failed")}
    if store.is_complete(work_root, exp, "sky", input_key):
        return {"exp": exp, "keys": keys, "failed": failed, "resumed": True}
    arrays = {name: [] for name in _AMP_ARRAYS}
    ftf, dead, exptime, shifts = [], [], [], {}
    for key in keys:
        a, attrs = store.read_arrays(work_root, exp, key, _AMP_ARRAYS)
        for name in _AMP_ARRAYS:
            arrays[name].append(a[name])
        c = calfile.read_arrays(cal_path, key, ("fiber_to_fiber", "dead"))
        ftf.append(c["fiber_to_fiber"])
        dead.append(c["dead"].astype(bool))
        exptime.append(np.full(geometry.N_FIBERS_AMP, attrs["exptime"]))
        shifts[key] = (attrs.get("trace_shift", 0.0), attrs.get("wave_shift", 0.0))
    flux = np.concatenate(arrays["flux"]).astype(np.float64)
    error = np.concatenate(arrays["error"]).astype(np.float64)
    mask = np.concatenate(arrays["mask"]).astype(bool)
    ftf = np.concatenate(ftf).astype(np.float64)
    dead = np.concatenate(dead)
    group = np.repeat(np.arange(len(keys)), geometry.N_FIBERS_AMP)
    mask |= dead[:, None] | ~(ftf > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        flux = flux / ftf
        error = error / ftf
    mask |= ~np.isfinite(flux) | ~np.isfinite(error)
    fiber_index = np.tile(np.arange(geometry.N_FIBERS_AMP), len(keys))
    if config.reduction.quick_sky:  # one global sky spectrum, no per-amp terms
        sky = sky_model(flux, error, mask, group, max_adjust=0.0, slit_degree=0)
    else:
        sky = sky_model(flux, error, mask, group, fiber_index=fiber_index)
    residual = flux - sky.sky
    error = np.sqrt(error**2 + sky.sky_error**2)  # the sky model's own uncertainty
    check = error_check(residual, error, sky.is_sky, group)
    fibers = fibers_of(keys, exp)
    ds = xr.Dataset(
        {
            "flux": (("fiber", "wave"), residual.astype(np.float32)),
            "error": (("fiber", "wave"), error.astype(np.float32)),
            "sky": (("fiber", "wave"), sky.sky.astype(np.float32)),
            "mask": (("fiber", "wave"), mask.astype(np.uint8)),
            "is_sky": ("fiber", sky.is_sky.astype(np.uint8)),
            "exptime": ("fiber", np.concatenate(exptime)),
            **{k: ("fiber", v) for k, v in fibers.items()},
        },
        coords={"wave": geometry.DEF_WAVE},
        attrs={"exp": exp, "units": "electron / (s Angstrom)", "code_version": __version__},
    )
    store.write_dataset(work_root, exp, "sky", ds, input_key)
    return {"exp": exp, "keys": keys, "failed": failed,
            "sky_qa": _plain(sky.qa), "error_check": _plain(check), "shifts": shifts}


def _plain(d: Any) -> Any:
    if isinstance(d, dict):
        return {str(k): _plain(v) for k, v in d.items()}
    if isinstance(d, np.ndarray):
        return d.tolist()
    if isinstance(d, np.generic):
        return d.item()
    return d


def build_exposure_graph(plan: Any, summaries: dict[int, list[Any]], cal_path: Path,
                         work_root: Path, args: Any, config: PipelineConfig) -> dict[int, Any]:
    """One ``sky-expNN`` node per exposure."""
    from functools import partial

    from remedy_dask.io.fplane import read_fplane
    from remedy_dask.io.ifucen import read_ifucen, standard_ifucen

    fplane = read_fplane(args.fplane) if getattr(args, "fplane", None) else None
    ifucen = read_ifucen(args.ifucen) if getattr(args, "ifucen", None) else standard_ifucen()
    fibers_of = partial(fiber_table, fplane=fplane, ifucen=ifucen,
                        dither=config.observation.dither_pattern)
    out = {}
    for exp in plan.exposures:
        ikey = store.input_key(sorted(plan.cal_keys), exp, str(cal_path),
                               config.section_hash("reduction"), __version__)
        out[exp] = dask.delayed(reduce_exposure, pure=False)(
            gather(summaries[exp], f"amps-done-exp{exp:02d}"), exp, str(cal_path), str(work_root), fibers_of, config, ikey,
            dask_key_name=f"sky-exp{exp:02d}")
    return out
