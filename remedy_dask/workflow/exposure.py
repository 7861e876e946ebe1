"""Per-exposure fan-in: every amp of one exposure -> fiber-to-fiber, masking, sky subtraction.

Reads the amps' rectified spectra from the zarr checkpoints (``sky-expNN`` task), writes the
sky-subtracted exposure as the group ``expNN/sky`` of the same store and returns its summary.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr

from remedy_dask import __version__, geometry
from remedy_dask.config import PipelineConfig
from remedy_dask.exposure.fiberflat import apply_fiber_to_fiber
from remedy_dask.io import calfile, store
from remedy_dask.io.jsonable import jsonable
from remedy_dask.workflow.keys import sky_without
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


def _load_exposure(work_root: str, exp: int, keys: list[str], cal_path: str
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """Fiber-to-fiber corrected flux and error (float64: flux_e / ftf as the sky model uses
    them), the bad-pixel mask (amp mask, dead fibers, ftf <= 0, non-finite), per-fiber exposure
    time and the amps' (trace, wave) shifts.  The amps are read in a background thread while
    the calibration file is read (opened once) and each amp is converted straight into its rows
    of the preallocated arrays."""
    n = geometry.N_FIBERS_AMP
    if not keys:
        raise ValueError(f"exposure {exp}: no amp to reduce")
    pool = ThreadPoolExecutor(1, thread_name_prefix="read-amps")
    try:
        reads = [pool.submit(store.read_arrays, work_root, exp, key, _AMP_ARRAYS) for key in keys]
        cal = calfile.read_arrays_many(cal_path, keys, ("fiber_to_fiber", "dead"))
        flux = error = mask = None
        exptime, shifts = [], {}
        for a, key in enumerate(keys):
            amp, attrs = reads[a].result()
            reads[a] = None  # release the amp's arrays once converted
            if flux is None:
                flux = np.empty((len(keys) * n, amp["flux"].shape[1]))
                error = np.empty_like(flux)
                mask = np.empty(flux.shape, bool)
            rows = slice(a * n, (a + 1) * n)
            shapes = [amp[name].shape for name in _AMP_ARRAYS] + [cal[key]["fiber_to_fiber"].shape]
            if any(s != flux[rows].shape for s in shapes) or cal[key]["dead"].shape != (n,):
                raise ValueError(f"exposure {exp}, amp {key}: array shapes {shapes} are not "
                                 f"{flux[rows].shape}")  # checked here: the kernel does not
            apply_fiber_to_fiber(amp["flux"], amp["error"], amp["mask"], cal[key]["fiber_to_fiber"],
                                 cal[key]["dead"], flux[rows], error[rows], mask[rows])
            exptime.append(np.full(n, attrs["exptime"]))
            shifts[key] = (attrs.get("trace_shift", 0.0), attrs.get("wave_shift", 0.0))
    finally:
        pool.shutdown(cancel_futures=True)
    return flux, error, mask, np.concatenate(exptime), shifts


def reduce_exposure(summaries: list[dict[str, Any]], exp: int, cal_path: str, work_root: str,
                    fibers_of: Any, config: PipelineConfig, input_key: str) -> dict[str, Any]:
    """Fan in the amps of exposure ``exp``: ftf, masking, sky; write ``expNN/sky``."""
    from remedy_dask.exposure.sky import sky_model
    from remedy_dask.exposure.sky_check import error_check

    keys = [s["key"] for s in summaries if not s.get("failed")]
    failed = {s["key"]: s["failed"] for s in summaries if s.get("failed")}
    input_key = sky_without(input_key, list(failed))
    if store.is_complete(work_root, exp, "sky", input_key):
        return {"exp": exp, "keys": keys, "failed": failed, "resumed": True}
    flux, error, mask, exptime, shifts = _load_exposure(work_root, exp, keys, cal_path)
    group = np.repeat(np.arange(len(keys)), geometry.N_FIBERS_AMP)
    fiber_index = np.tile(np.arange(geometry.N_FIBERS_AMP), len(keys))
    if config.reduction.quick_sky:  # one global sky spectrum, no per-amp terms
        sky = sky_model(flux, error, mask, group, max_adjust=0.0, slit_degree=0)
    else:
        sky = sky_model(flux, error, mask, group, fiber_index=fiber_index)
    # in place (no further full-size arrays): flux becomes the residual, error adds the sky
    # model's own uncertainty; the float32 products reuse the float64 arrays' memory
    residual = flux
    sky.apply_model(residual, subtract=True)
    sky.add_error_in_place(error)
    check = error_check(residual, error, sky.is_sky, group)
    residual32, sky32 = _float32_in_place(residual)
    sky.apply_model(sky32)
    error32, _ = _float32_in_place(error)
    fibers = fibers_of(keys, exp)
    ds = xr.Dataset(
        {
            "flux": (("fiber", "wave"), residual32),
            "error": (("fiber", "wave"), error32),
            "sky": (("fiber", "wave"), sky32),
            "mask": (("fiber", "wave"), mask.view(np.uint8)),
            "is_sky": ("fiber", sky.is_sky.astype(np.uint8)),
            "exptime": ("fiber", exptime),
            **{k: ("fiber", v) for k, v in fibers.items()},
        },
        coords={"wave": geometry.DEF_WAVE},
        attrs={"exp": exp, "units": "electron / (s Angstrom)", "code_version": __version__},
    )
    store.write_dataset(work_root, exp, "sky", ds, input_key)
    return {"exp": exp, "keys": keys, "failed": failed,
            "sky_qa": jsonable(sky.qa), "error_check": jsonable(check), "shifts": shifts}


def _float32_in_place(a: np.ndarray, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """``a.astype(np.float32)`` for a C-contiguous float64 (N, M) array, written into the first
    half of ``a``'s own memory (``a`` is consumed); returns it and the now unused second half as
    an (N, M) float32 array.  Safe in order: a block of result rows overwrites only input rows
    before the block's end, which have been read by then."""
    if a.dtype != np.float64 or a.ndim != 2 or not a.flags.c_contiguous:
        raise ValueError("_float32_in_place: needs a C-contiguous 2-D float64 array")
    halves = a.reshape(-1).view(np.float32).reshape(2, *a.shape)
    for start in range(0, a.shape[0], block):
        rows = slice(start, start + block)
        halves[0][rows] = a[rows].astype(np.float32)
    return halves[0], halves[1]


def build_exposure_graph(plan: Any, summaries: dict[int, list[Any]], cal_path: Path,
                         work_root: Path, fplane_file: Path | None, ifucen_file: Path | None,
                         config: PipelineConfig, keys: Any) -> dict[int, Any]:
    """One ``sky-expNN`` node per exposure."""
    from functools import partial

    from remedy_dask.io.fplane import read_fplane
    from remedy_dask.io.ifucen import read_ifucen, standard_ifucen

    fplane = read_fplane(fplane_file) if fplane_file else None
    ifucen = read_ifucen(ifucen_file) if ifucen_file else standard_ifucen()
    fibers_of = partial(fiber_table, fplane=fplane, ifucen=ifucen,
                        dither=config.observation.dither_pattern)
    out, tag = {}, plan.tag
    for exp in plan.exposures:
        ikey = keys.sky(plan, exp)
        out[exp] = dask.delayed(reduce_exposure, pure=False)(
            gather(summaries[exp], f"amps-done-exp{exp:02d}-{tag}"), exp, str(cal_path), str(work_root), fibers_of, config, ikey,
            dask_key_name=f"sky-exp{exp:02d}-{tag}")
    return out
