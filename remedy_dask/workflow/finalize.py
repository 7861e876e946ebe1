"""Last nodes of the observation graph: detections, cubes, products; and the graph builder."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np

from remedy_dask import geometry
from remedy_dask.config import PipelineConfig
from remedy_dask.io.provenance import hdf5_attributes
from remedy_dask.io.catalog import Catalog, as_catalog
from remedy_dask.observation.fluxcal import exposure_scale
from remedy_dask.workflow.nodes import constant, flat, gather
from remedy_dask.workflow.fieldcal import (
    SKIPPED_FOR_KIND, field_calibration, skipped_field_calibration,
)
from remedy_dask.workflow.observation import (
    Conditions, calibrated, ifu_offset, load_ifu, psf_tables,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Injection:
    """A simulated point source added to the calibrated fibers of one IFU (``--source-file``)."""

    ifuslot: int
    x: float  # IFU-frame arcsec
    y: float
    seeing: float | None  # FWHM arcsec; None: the fitted PSF of each exposure
    spectrum: np.ndarray  # (1036,) 1e-17 erg/s/cm^2/A, total flux

    def describe(self) -> dict[str, Any]:
        return {"ifuslot": self.ifuslot, "x": self.x, "y": self.y, "seeing": self.seeing,
                "g_band_mean_flux": float(np.mean(self.spectrum[400:900]))}


def calibrated_ifu(d: dict[str, np.ndarray] | None, slot: int, cond: Conditions,
                   psf: dict[str, Any], fluxcal: dict[str, Any],
                   injection: Injection | None = None) -> dict[str, np.ndarray] | None:
    """One IFU's fibers in 1e-17 erg/s/cm^2/A, with the photometric offset and the exposures'
    relative throughputs (and the injected source, if any)."""
    if d is None:
        return None
    c = calibrated(d, cond, exposure_scale(fluxcal["factor"], psf["norm"]))
    if injection is not None and injection.ifuslot == slot:
        from remedy_dask.observation.psf import fiber_integrated_moffat
        from remedy_dask.observation.sources import inject_source

        table = (psf_tables(psf) if injection.seeing is None
                 else fiber_integrated_moffat(injection.seeing))
        c["flux"] = inject_source(c["flux"], c["ifu_x"], c["ifu_y"], injection.x, injection.y,
                                  injection.spectrum, table, geometry.dar_offsets(),
                                  c["exp_index"])
    return c


NATIVE_ARRAYS = {"native_spectrum": "native_flux", "native_error": "native_error",
                 "native_mask": "native_mask", "native_wavelength": "wavelength_native"}


def fiber_calibration(d: dict[str, np.ndarray], cal_path: str, work_root: str,
                      exposures: list[int], native: bool
                      ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-fiber rows of one IFU taken from the calibration file (``fiber_to_fiber`` (n, 1036),
    ``specid``, ``ifuid``) and, with ``native``, from the amp checkpoints (the unrectified
    ``native_*`` arrays (n, 1032)): (2-D arrays, 1-D columns)."""
    from remedy_dask.io import calfile, store

    n, amps = len(d["fiber_id"]), np.asarray(d["amp"]).astype(str)
    k = np.array([geometry.FIBER_ID_OFFSET[a] for a in amps]) - d["fiber_id"].astype(int)
    slot = int(d["ifuslot"][0])
    keys = [f"{slot:03d}{a}" for a in geometry.AMPS if np.any(amps == a)]
    ids = calfile.amp_identities(cal_path, keys)
    ftf_cal = calfile.read_arrays_many(cal_path, keys, ("fiber_to_fiber",))
    ftf = np.full((n, geometry.N_WAVE), np.nan, np.float32)
    specid, ifuid = np.zeros(n, np.int32), np.zeros(n, np.int32)
    for key in keys:
        rows = amps == key[3:]
        ftf[rows] = ftf_cal[key]["fiber_to_fiber"][k[rows]]
        specid[rows], ifuid[rows] = ids[key]
    arrays = {"fiber_to_fiber": ftf}
    if native:
        from remedy_dask.io.products import N_COLUMNS

        arrays.update({name: np.zeros((n, N_COLUMNS), np.uint8) if name == "native_mask"
                       else np.full((n, N_COLUMNS), np.nan, np.float32) for name in NATIVE_ARRAYS})
        for i, exp in enumerate(exposures):
            for key in keys:
                rows = (d["exp_index"] == i) & (amps == key[3:])
                if rows.any():
                    stored, _ = store.read_arrays(work_root, exp, key, tuple(NATIVE_ARRAYS.values()))
                    for name, source in NATIVE_ARRAYS.items():
                        arrays[name][rows] = stored[source][k[rows]]
    return arrays, {"specid": specid, "ifuid": ifuid}


def ifu_fibers(c: dict[str, np.ndarray] | None, slot: int, astro: dict[str, Any],
               block_dir: str, sources: tuple[str, str, list[int], bool] | None = None
               ) -> dict[str, Any] | None:
    """Final fiber arrays of one IFU (``c``: :func:`calibrated_ifu`), encoded as HDF5 chunks
    into ``block_dir`` so that the compression runs in parallel and ``write-products`` only
    copies bytes.  ``sources`` (calibration file, zarr root, exposures, native) adds
    :func:`fiber_calibration`'s rows."""
    from remedy_dask.io.products import save_fiber_block

    if c is None:
        return None
    arrays, columns = fiber_calibration(c, *sources) if sources else ({}, {})
    ra, dec = geometry.focal_to_sky(c["fx"], c["fy"], astro["ra"], astro["dec"], astro["rotation"])
    path = save_fiber_block(Path(block_dir) / f"{slot:03d}.npz", {
        "spectrum": c["flux"].astype(np.float32), "error": c["error"].astype(np.float32),
        "sky": c["sky"].astype(np.float32), "mask": c["bad"].astype(np.uint8),
        **({"error_correlation": c["wave_corr"].astype(np.float32)} if "wave_corr" in c else {}),
        **arrays,
    }, {**columns,
        "ra": ra, "dec": dec, "ifuslot": c["ifuslot"].astype(np.int32),
        "amp": c["amp"].astype("U2"), "fiber_id": c["fiber_id"].astype(np.int32),
        "exposure": (c["exp_index"] + 1).astype(np.int32), "ifu_x": c["ifu_x"],
        "ifu_y": c["ifu_y"], "fx": c["fx"], "fy": c["fy"],
    })
    return {"slot": slot, "path": str(path), "n": len(c["flux"])}


def ifu_detect(c: dict[str, np.ndarray] | None, slot: int, psf: dict[str, Any],
               astro: dict[str, Any], config: PipelineConfig) -> dict[str, np.ndarray]:
    """Emission-line detections of one IFU (``c``: :func:`calibrated_ifu`; IFU frame ->
    RA/Dec)."""
    from remedy_dask.observation.detect.lines import detect_emission_lines

    if c is None or not config.observation.detect:
        return {}
    table = detect_emission_lines(c["flux"], c["error"], c["bad"], c["ifu_x"], c["ifu_y"],
                                  psf_tables(psf), dar=geometry.dar_offsets(),
                                  exposure=c["exp_index"], sky=c["sky"],
                                  threshold=config.observation.detection_threshold,
                                  continuum_error=config.observation.detection_continuum_error,
                                  wave_corr=c.get("wave_corr"))
    dx, dy = ifu_offset(c)
    ra, dec = geometry.focal_to_sky(np.asarray(table["x"]) + dx, np.asarray(table["y"]) + dy,
                                    astro["ra"], astro["dec"], astro["rotation"])
    out = {name: np.asarray(table[name]) for name in
           ("wave", "wave_err", "flux", "flux_err", "sn", "fwhm", "chi2", "spectrum", "error")}
    out.update(ra=np.atleast_1d(ra), dec=np.atleast_1d(dec), ifu_x=np.asarray(table["x"]),
               ifu_y=np.asarray(table["y"]), ifuslot=np.full(len(table), slot))
    return out


def ifu_cube(c: dict[str, np.ndarray] | None, slot: int, astro: dict[str, Any], outdir: str,
             prefix: str, config: PipelineConfig, header_cards: dict[str, Any]) -> list[str]:
    """Cube and per-IFU FITS file of one IFU (``c``: :func:`calibrated_ifu`)."""
    from remedy_dask.observation.astrometry import collapsed_image
    from remedy_dask.observation.cube import celestial_wcs, cube_header, cube_wcs, make_cube
    from remedy_dask.io.fitsproducts import write_cube_fits, write_ifu_fits

    if c is None:
        return []
    dx, dy = ifu_offset(c)
    cards = {**header_cards, "IFUSLOT": (slot, "IFU slot of this file")}
    paths = []
    if config.observation.make_cube:
        res = make_cube(c["flux"], c["error"], c["bad"], c["ifu_x"], c["ifu_y"],
                        dar=geometry.dar_offsets(), pixscale=config.observation.cube_pixscale)
        wcs = cube_wcs(astro["ra"], astro["dec"], astro["rotation"], res.grid, dx, dy)
        grid_cards = {"CUBEX0": (res.grid.x0, "IFU-frame x (arcsec) of the first pixel centre"),
                      "CUBEY0": (res.grid.y0, "IFU-frame y (arcsec) of the first pixel centre"),
                      "CUBEPIX": (res.grid.pixscale, "pixel size (arcsec)"),
                      "IFUFX": (dx, "focal-plane x (arcsec) of the IFU centre"),
                      "IFUFY": (dy, "focal-plane y (arcsec) of the IFU centre")}
        paths.append(str(write_cube_fits(Path(outdir) / f"{prefix}_{slot:03d}_cube.fits",
                                         res.cube, res.error, cube_header(wcs),
                                         {**cards, **grid_cards})))
    img = collapsed_image(c["flux"], c["bad"], c["ifu_x"], c["ifu_y"], dar=geometry.dar_offsets())
    gwcs = celestial_wcs(astro["ra"], astro["dec"], astro["rotation"], img.grid, dx, dy)
    ra, dec = geometry.focal_to_sky(c["fx"], c["fy"], astro["ra"], astro["dec"], astro["rotation"])
    fibers = {"ra": ra, "dec": dec, "ifu_x": c["ifu_x"], "ifu_y": c["ifu_y"],
              "fiber_id": c["fiber_id"], "amp": c["amp"].astype("U2"),
              "exposure": c["exp_index"] + 1}
    paths.append(str(write_ifu_fits(Path(outdir) / f"{prefix}_{slot:03d}.fits", c["flux"],
                                    c["error"], c["sky"], c["bad"], fibers, img.image, gwcs.to_header(),
                                    cards)))
    return paths


def flux_scale_columns(psf: dict[str, Any], fluxcal: dict[str, Any]) -> dict[str, np.ndarray]:
    """Moffat beta, star normalisation and the 1-sigma error of ``flux_scale`` per exposure (the
    zero point's and the normalisation's relative errors in quadrature)."""
    from remedy_dask.observation.photcal import flux_scale_error

    norm = np.asarray(psf["norm"], float)
    err = flux_scale_error(fluxcal["factor"], fluxcal.get("error", np.nan), norm,
                           psf.get("norm_err", np.full(norm.size, np.nan)))
    return {"moffat_beta": np.asarray(psf.get("beta", np.full(norm.size, np.nan)), float),
            "star_norm": norm, "flux_scale_err": err}


def write_products(exposure_summaries: list[dict[str, Any]], plan: Any, work_root: str,
                   cond: Conditions, astro: dict[str, Any], psf: dict[str, Any],
                   fluxcal: dict[str, Any], sources: list[dict[str, np.ndarray]],
                   detections: list[dict[str, np.ndarray]], catalog: Catalog, outdir: str,
                   provenance: dict[str, Any], fits_paths: list[list[str]],
                   fiber_blocks: list[dict[str, Any] | None],
                   pointing: tuple[float, float, float] | None = None) -> str:
    """Stream the observation HDF5: fibers IFU by IFU (from the ``ifu-fibers`` blocks), then
    exposures, astrometry, sources, detections; provenance with every substitution and flag."""
    from remedy_dask.io.products import ObservationWriter, load_fiber_block, observation_path
    from remedy_dask.observation.astrometry import dar_on_sky

    blocks = sorted((b for b in fiber_blocks if b), key=lambda b: b["slot"])
    n = sum(b["n"] for b in blocks)
    notes = list(plan.notes) + list(cond.notes) + [x for x in (astro.get("note"), psf.get("note"), fluxcal.get("note")) if x]
    flags = list(plan.skipped) + [f"{k} exp{s['exp']:02d}: {v}" for s in exposure_summaries
                                  for k, v in s.get("failed", {}).items()]
    prov = {**provenance, "notes": notes, "flags": flags, "astrometry": astro.get("note", ""),
            "psf": {k: v for k, v in psf.items() if not k.startswith("star_")},
            "fluxcal": {k: v for k, v in fluxcal.items() if k not in ("used", "reject")},
            "exposure_qa": [{k: s.get(k) for k in ("exp", "sky_qa", "error_check", "mask_counts",
                                                      "shifts")} for s in exposure_summaries],
            "fits_products": [p for ps in fits_paths for p in ps]}
    writer = ObservationWriter(observation_path(outdir, plan.date, plan.obs), n, prov)
    try:
        start = 0
        for block in blocks:  # encoded in parallel by the ifu-fibers tasks: copied, not recompressed
            writer.write_fiber_chunks(start, *load_fiber_block(block["path"]))
            start += block["n"]
        dar_ra, dar_dec = dar_on_sky(geometry.dar_offsets(), astro["rotation"])
        writer.write_wave_columns("fibers", {"dar_ra": dar_ra, "dar_dec": dar_dec})
        writer.write_table("exposures", "exposure", {
            "exposure": np.asarray(plan.exposures, np.int32), "exptime": cond.exptime,
            "transparency": cond.transparency, "fwhm": np.asarray(psf["fwhm"], float),
            "fwhm_guider": cond.fwhm_guider,
            "flux_scale": exposure_scale(fluxcal["factor"], psf["norm"]),
            **flux_scale_columns(psf, fluxcal), **cond.survey_columns(),
            "n_stars_astrometry": np.full(len(plan.exposures), int(astro["n_stars"]), np.int32),
            "n_stars_photometry": np.full(len(plan.exposures), int(fluxcal.get("n_stars", 0)),
                                          np.int32),
        })
        idx = np.concatenate([s["cat_index"] for s in sources]).astype(int) if sources else np.zeros(0, int)
        cat = lambda k: np.concatenate([s[k] for s in sources]) if sources else np.zeros(0)  # noqa: E731
        src = {
            "ra": catalog.ra[idx],
            "dec": catalog.dec[idx],
            "gmag_catalog": catalog.gmag[idx],
            "gmag_virus": cat("gmag_virus") - 2.5 * np.log10(fluxcal["factor"]),
            "spectrum": (cat("spectrum").reshape(-1, geometry.N_WAVE) * fluxcal["factor"]).astype(np.float32),
            "error": (cat("error").reshape(-1, geometry.N_WAVE) * fluxcal["factor"]).astype(np.float32),
            "ifuslot": cat("ifuslot").astype(np.int32),
            "fluxcal_used": np.asarray(fluxcal.get("used", np.zeros(idx.size)), np.uint8),
            "fluxcal_reject": np.asarray(fluxcal.get("reject", np.full(idx.size, "")), str),
        }
        writer.write_table("sources", "source", src)
        det_cols = ("ra", "dec", "wave", "wave_err", "flux", "flux_err", "sn", "fwhm", "chi2",
                    "ifuslot", "ifu_x", "ifu_y", "spectrum", "error")
        dets = [d for d in detections if d]
        table = {k: np.concatenate([d[k] for d in dets]) if dets else
                 np.zeros((0, geometry.N_WAVE) if k in ("spectrum", "error") else 0) for k in det_cols}
        writer.write_table("detections", "detection", table)
        astro_attrs = {k: astro[k] for k in ("ra", "dec", "rotation", "n_stars", "rms")}
        astro_attrs["fitted"] = int(bool(astro.get("fitted")))
        astro_attrs.update(survey_astrometry(astro, pointing))
        path = writer.close({"astrometry": astro_attrs, "fluxcal": {
            k: fluxcal[k] for k in ("delta_mag", "error", "scatter", "n_stars", "fitted")
            if k in fluxcal}})
    except BaseException:
        writer.abort()
        raise
    for block in blocks:
        Path(block["path"]).unlink(missing_ok=True)
    for folder in {Path(block["path"]).parent for block in blocks}:
        try:
            folder.rmdir()  # only if empty: never removes anything else
        except OSError:
            pass
    return str(path)


def survey_astrometry(astro: dict[str, Any], pointing: tuple[float, float, float] | None
                      ) -> dict[str, Any]:
    """Offset (arcsec east, north) of the fitted field centre from the header pointing and the
    spread of the stars' residuals (Remedy's raoffset, decoffset, rastd, decstd), with units."""
    from remedy_dask.observation.survey import pointing_offset, residual_spread

    east = north = float("nan")
    if pointing is not None:
        east, north = pointing_offset(astro["ra"], astro["dec"], pointing[0], pointing[1])
    std_e, std_n = residual_spread(astro.get("residuals"))
    return {"ra_offset": east, "dec_offset": north, "ra_std": std_e, "dec_std": std_n,
            "units": {"ra": "deg", "dec": "deg", "rotation": "deg", "rms": "arcsec",
                      "ra_offset": "arcsec", "dec_offset": "arcsec", "ra_std": "arcsec",
                      "dec_std": "arcsec", "n_stars": "1"}}


def product_cards(plan: Any, cond: Conditions, pointing: tuple[float, float, float],
                  cal_path: Path, config: PipelineConfig) -> dict[str, Any]:
    """FITS cards of the observation: start and object from the first exposure's raw header."""
    from remedy_dask.io.provenance import observation_cards
    from remedy_dask.io.rawframe import read_header_model

    first = min(key for key in plan.refs if key[1] in plan.cal_keys)
    header = read_header_model(plan.refs[first])
    return observation_cards(header.date, header.object, cond.exptime, pointing, cal_path, config,
                             plan.obs)


IFU_COLUMNS = ("flux", "error", "mask", "sky")  # what the per-IFU nodes read of the sky groups


def _run(func: Any, deps: Any, *args: Any) -> Any:
    """Run ``func(*args)`` after ``deps`` (a Dask dependency that is not an input)."""
    return func(*args)


def _run_after(func: Any, deps: Any, after: Any, *args: Any) -> Any:
    """Run ``func(*args)`` after ``deps`` and ``after``, each passed on its own: a tuple of
    delayed objects would be finalised (graph merged, optimised, culled) at every call, which
    took ~1.4 s per node on a full-focal-plane graph."""
    return func(*args)


def build_observation_graph(plan: Any, exposures: dict[int, Any], cal_path: Path, out: Path,
                            cubes: str, config: PipelineConfig, cond: Conditions | None = None,
                            catalog: Any = None, pointing: tuple[float, float, float] | None = None,
                            dry: bool = False, injection: Injection | None = None,
                            native: bool = False) -> Any:
    """Delayed product path of the whole observation; cube and per-IFU FITS for the IFUs that
    ``cubes`` names (``target``, ``all`` or ``none``); ``native``: the unrectified spectra and
    their wavelengths in the product too."""
    if dry:  # structure only (graph views): no data is read
        cond = Conditions(plan.exposures, np.ones(3), np.ones(3), np.full(3, 1.8),
                          np.ones(geometry.N_WAVE))
        catalog = Catalog(np.zeros(1), np.zeros(1), np.full(1, 18.0))
        pointing = (0.0, 0.0, 0.0)
    exps, tag = list(plan.exposures), plan.tag
    # inputs of hundreds of nodes: one node each (dask walks a dataclass argument at every call)
    conditions = constant(cond, f"conditions-{tag}")
    catalog = constant(as_catalog(catalog), f"catalog-{tag}")
    settings = constant(config, f"config-{tag}")
    oc = constant(config.observation, f"observation-config-{tag}")
    work_root = str(out / "work" / f"{plan.date}_{plan.obs:07d}.zarr")
    deps = flat(gather([exposures[e] for e in exps], f"exposures-done-{tag}"))
    slots = sorted({int(k[:3]) for k in plan.cal_keys})

    def load(slot: int, stage: str, after: Any = None, wave_corr: bool = False) -> Any:
        """IFU ``slot``'s fibers read for ``stage`` once ``after`` is done: every stage reads its
        own copy (~30 CPU-ms), so no IFU is held in memory across the observation's fan-ins
        (astrometry, PSF, flux calibration: 78 IFUs x 24 MB otherwise)."""
        return dask.delayed(_run_after, pure=False)(
            load_ifu, deps, after, work_root, exps, slot, IFU_COLUMNS, wave_corr,
            dask_key_name=f"load-ifu-{stage}-{slot:03d}-{tag}")

    if plan.kind == "sci":
        astro, psf, fcal, srcs = field_calibration(load, slots, conditions, catalog, pointing,
                                                   oc, tag)
    else:
        astro, psf, fcal, srcs = skipped_field_calibration(plan.kind, cond, pointing,
                                                           config.observation)
    # the flux-calibrated fibers of each IFU, computed once for its fibers, detections and cube
    cal = {s: dask.delayed(calibrated_ifu, pure=False)(
        load(s, "final", fcal, wave_corr=True), s, conditions, psf, fcal, injection,
        dask_key_name=f"ifu-calibrated-{s:03d}-{tag}") for s in slots}
    dets = [dask.delayed(ifu_detect, pure=False)(cal[s], s, psf, astro, settings,
                                                 dask_key_name=f"ifu-detect-{s:03d}-{tag}")
            for s in slots] if plan.kind == "sci" else []
    cube_slots = {"all": slots, "none": [], "target": [s for s in slots if s == plan.target_slot]}[cubes]
    prefix = f"{plan.date}_{plan.obs:07d}"
    cards = {} if dry else product_cards(plan, cond, pointing, cal_path, config)
    cubes = [dask.delayed(ifu_cube, pure=False)(cal[s], s, astro, str(out), prefix, settings,
                                                cards, dask_key_name=f"ifu-cube-{s:03d}-{tag}")
             for s in cube_slots]
    block_dir = str(out / "work" / f"{prefix}_fibers")
    sources = None if dry else (str(cal_path), work_root, exps, native)
    fibers = [dask.delayed(ifu_fibers, pure=False)(cal[s], s, astro, block_dir, sources,
                                                   dask_key_name=f"ifu-fibers-{s:03d}-{tag}")
              for s in slots]
    provenance = {"date": plan.date, "obs": plan.obs, "target_ifuslot": plan.target_slot,
                  "calibration_file": str(cal_path), "config": config.to_yaml(),
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
                  "ifuslots": slots, **({} if dry else hdf5_attributes(cards)),
                  "injection": injection.describe() if injection else "none",
                  "native_spectra": int(native), "frame_kind": plan.kind,
                  "steps_skipped": [] if plan.kind == "sci" else list(SKIPPED_FOR_KIND)}
    return dask.delayed(write_products, pure=False)(
        deps, plan, work_root, conditions, astro, psf, fcal, srcs,
        gather(dets, f"ifu-detect-all-{tag}"),
        catalog, str(out), provenance, gather(cubes, f"ifu-cube-all-{tag}"),
        gather(fibers, f"ifu-fibers-all-{tag}"), pointing, dask_key_name=f"write-products-{tag}")
