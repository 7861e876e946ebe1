"""Graphs of the multi-observation commands: ``extract``, ``mosaic`` and ``catalog``.

- ``extract``: one task per observation file (read the fibers near the positions, extract), one
  task combining them, then the table is written;
- ``mosaic``: a ``dask.array`` of the cube chunked over wavelength; each chunk task reads that
  wavelength range of every product and resamples it; ``dask.array.store`` writes each chunk
  into its place in the FITS file, so memory holds a chunk per worker, never the cube;
- ``catalog``: one task per file (read, synthetic g of the continuum sources), one merge task.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np

from remedy_dask import __version__
from remedy_dask.errors import ConfigError
from remedy_dask.requests import CatalogRequest, ClusterRequest, ExtractRequest, MosaicRequest

log = logging.getLogger(__name__)


def _client(cluster: ClusterRequest) -> Any:
    from remedy_dask.workflow.cluster import open_client

    return open_client(**cluster.client_kwargs())


def _metas(paths: list[Path]) -> list[Any]:
    from remedy_dask.io.observation_reader import read_meta

    if len({str(Path(p).resolve()) for p in paths}) < len(paths):
        log.warning("the same product is given more than once: its data count once per mention")
    metas = [read_meta(p) for p in paths]
    waves = {tuple(m.wave) for m in metas}
    if len(waves) > 1:
        raise ConfigError("the products have different wavelength grids: "
                          + ", ".join(f"{m.path} ({m.wave[0]:g}-{m.wave[-1]:g} A, {len(m.wave)})"
                                      for m in metas))
    return metas


# --- extract ----------------------------------------------------------------------------------


def extract_one(meta: Any, ra: np.ndarray, dec: np.ndarray, radius: float) -> Any:
    """Extraction at every position from one product (only the nearby fibers are read)."""
    from remedy_dask.io.observation_reader import read_fiber_rows
    from remedy_dask.multiobs.positions import extract_positions, rows_near

    reach = radius + float(np.max(np.hypot(meta.dar_ra, meta.dar_dec), initial=0.0)) + 1.0
    near = rows_near(meta.ra, meta.dec, ra, dec, reach)
    union = np.unique(np.concatenate(near)) if near else np.zeros(0, int)
    local = [np.searchsorted(union, rows) for rows in near]
    d = read_fiber_rows(meta.path, union)
    return extract_positions(d["spectrum"], d["error"], d["mask"], meta.ra[union],
                             meta.dec[union], meta.exposure_index[union], local, meta.fwhm,
                             meta.dar_ra, meta.dar_dec, ra, dec, radius, beta=meta.beta)


def run_extract(req: ExtractRequest) -> Path:
    """``remedy-dask extract``: the table of spectra at the positions."""
    from astropy.table import Table

    from remedy_dask.io.multiobs_products import (
        FLUX_UNIT,
        read_positions,
        write_table_fits,
    )
    from remedy_dask.multiobs.positions import combine_observations
    from remedy_dask.workflow.cluster import compute

    if req.coords is not None:
        positions = read_positions(req.coords)
    else:
        positions = Table({"ra": [float(req.ra) % 360.0], "dec": [float(req.dec)]})
    metas = _metas(req.products)
    ra = np.asarray(positions["ra"], float)
    dec = np.asarray(positions["dec"], float)
    parts = [dask.delayed(extract_one, pure=True)(m, ra, dec, req.radius,
                                                 dask_key_name=f"extract-{k}-{Path(m.path).stem}")
             for k, m in enumerate(metas)]
    combined = dask.delayed(combine_observations)(parts, dask_key_name="extract-combine")
    with _client(req.cluster) as client:
        res = compute(combined, client)
    names = np.array([m.name for m in metas])
    observations = [",".join(names[res.contributing[:, k]]) for k in range(len(ra))]
    columns = {"ra": ra, "dec": dec, "spectrum": res.spectrum.astype(np.float32),
               "error": res.error.astype(np.float32), "n_exposures": res.n_exposures.astype(np.int32),
               "n_observations": res.contributing.sum(axis=0).astype(np.int32),
               "observations": np.array(observations, dtype=f"U{max(1, *map(len, observations))}"),
               "edge": res.edge}
    for name in positions.colnames:
        if name not in columns:
            columns[name] = np.asarray(positions[name])
        elif name not in ("ra", "dec"):
            log.warning("%s: column '%s' is not carried through (an output column has that name)",
                        req.coords, name)
    cards = {"ORIGIN": "remedy-dask", "PIPEVER": __version__, "NPRODUCT": len(metas),
             "RADIUS": (req.radius, "[arcsec] fibers used around each position"),
             "EDGEMARG": (3.0, "[arcsec] edge: this circle not all covered")}
    for k, m in enumerate(metas[:99]):
        cards[f"PRODUC{k + 1:02d}"] = Path(m.path).name
    path = write_table_fits(req.out, columns, {"ra": "deg", "dec": "deg", "spectrum": FLUX_UNIT,
                                                "error": FLUX_UNIT}, cards, "SPECTRA", metas[0].wave)
    covered = int(np.sum(res.n_exposures > 0))
    if covered < len(ra):
        log.warning("%d of %d position(s) lie outside every product's fibers: their rows have "
                    "NaN spectra and n_exposures = 0", len(ra) - covered, len(ra))
    print(f"extracted {len(ra)} position(s) ({covered} covered) from {len(metas)} product(s): {path}")
    return path


# --- mosaic -----------------------------------------------------------------------------------


def mosaic_block(metas: list[Any], ra0: float, dec0: float, grid: Any, j0: int, j1: int
                 ) -> np.ndarray:
    """(3, j1 - j0, ny, nx) flux, error and weight of wavelengths j0:j1 of the mosaic."""
    from remedy_dask.io.observation_reader import read_fiber_rows
    from remedy_dask.multiobs.mosaic import (
        MosaicFibers,
        dar_in_frame,
        mosaic_chunk,
        mosaic_frame,
    )

    tiles = []
    for m in metas:
        d = read_fiber_rows(m.path, np.arange(len(m.ra)), slice(j0, j1))
        x, y = mosaic_frame(m.ra, m.dec, ra0, dec0)
        dx, dy = dar_in_frame(m.dar_ra[j0:j1], m.dar_dec[j0:j1])
        for slot in np.unique(m.ifuslot):  # one tile per IFU: only the pixels it reaches
            k = m.ifuslot == slot
            tiles.append(MosaicFibers(d["spectrum"][k], d["error"][k], d["mask"][k], x[k], y[k],
                                      dx, dy))
    return mosaic_chunk(tiles, grid)


def _count(parts: list[Any]) -> int:
    """Join node of the chunk writes (each returns an empty array)."""
    return len(parts)


def run_mosaic(req: MosaicRequest) -> Path:
    """``remedy-dask mosaic``: one cube over every fiber of the products."""
    from remedy_dask.observation.cube import cube_header, cube_wcs
    from remedy_dask.io.multiobs_products import create_cube_file, finish_file
    from remedy_dask.multiobs.mosaic import mosaic_centre, mosaic_frame, mosaic_grid
    from remedy_dask.workflow.cluster import compute

    metas = _metas(req.products)
    wave = metas[0].wave
    j0, j1 = 0, len(wave)
    if req.wave is not None:
        lo, hi = sorted(req.wave)
        inside = np.flatnonzero((wave >= lo) & (wave <= hi))
        if inside.size == 0:
            raise ConfigError(f"--wave {lo:g} {hi:g} holds no wavelength of "
                              f"{wave[0]:g}-{wave[-1]:g} A")
        j0, j1 = int(inside[0]), int(inside[-1]) + 1
    ra_all = np.concatenate([m.ra for m in metas])
    dec_all = np.concatenate([m.dec for m in metas])
    ra0, dec0 = mosaic_centre(ra_all, dec_all)
    grid = mosaic_grid(*mosaic_frame(ra_all, dec_all, ra0, dec0), req.pixscale)
    plane_bytes = 3 * 8 * grid.nx * grid.ny  # float64 working arrays of make_cube, per plane
    step = int(max(1, min(j1 - j0, req.chunk_mb * 2**20 // (4 * plane_bytes))))
    header = cube_header(cube_wcs(ra0, dec0, 0.0, grid, 0.0, 0.0, wave[j0:j1]))
    cards = {"ORIGIN": "remedy-dask", "PIPEVER": __version__, "NPRODUCT": len(metas),
             "PIXSCALE": (req.pixscale, "[arcsec] pixel size")}
    for k, m in enumerate(metas[:99]):
        cards[f"PRODUC{k + 1:02d}"] = Path(m.path).name
    shape = (j1 - j0, grid.ny, grid.nx)
    hdus = []
    for name in ("FLUX", "ERROR", "WEIGHT"):
        h = header.copy()
        h.update(cards)
        if name == "WEIGHT":
            h["BUNIT"] = ("", "summed kernel weight of good fibers (coverage)")
        hdus.append((name, h))
    starts = list(range(j0, j1, step))
    blocks = [da.from_delayed(
        dask.delayed(mosaic_block, pure=True)(metas, ra0, dec0, grid, a, min(a + step, j1),
                                              dask_key_name=f"mosaic-chunk-{a:04d}"),
        (3, min(a + step, j1) - a, grid.ny, grid.nx), np.float32) for a in starts]
    cube = da.concatenate(blocks, axis=1)
    tmp, slabs = create_cube_file(req.out, shape, hdus)
    log.info("mosaic %s: %d x %d pixels, %d wavelengths in %d chunks", req.out, grid.nx, grid.ny,
             shape[0], len(starts))
    try:
        stored = da.store([cube[0], cube[1], cube[2]], slabs, lock=False, compute=False)
        done = dask.delayed(_count, pure=True)(list(stored), dask_key_name="mosaic-written")
        with _client(req.cluster) as client:
            compute(done, client)
        path = finish_file(tmp, req.out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    print(f"mosaic of {len(metas)} product(s): {grid.nx} x {grid.ny} x {shape[0]} "
          f"({req.pixscale:g}\" pixels): {path}")
    return path


# --- catalog ----------------------------------------------------------------------------------


def catalog_entries(path: str) -> dict[str, Any]:
    """Continuum sources and line detections of one product (:func:`catalog_rows`)."""
    from remedy_dask.io.observation_reader import read_catalog_tables
    from remedy_dask.multiobs.merge import catalog_rows

    return catalog_rows(read_catalog_tables(path))


def run_catalog(req: CatalogRequest) -> Path:
    """``remedy-dask catalog``: the merged catalogue of the products."""
    from remedy_dask.io.multiobs_products import LINE_FLUX_UNIT, write_table_fits
    from remedy_dask.multiobs.merge import merge_catalogs
    from remedy_dask.workflow.cluster import compute

    _metas(req.products)  # validates every file before work is sent out
    parts = [dask.delayed(catalog_entries, pure=True)(str(p), dask_key_name=f"catalog-read-{k}")
             for k, p in enumerate(req.products)]
    merged = dask.delayed(merge_catalogs)(parts, req.radius, req.line_radius, req.wave_tol,
                                          dask_key_name="catalog-merge")
    with _client(req.cluster) as client:
        table = compute(merged, client)
    units = {"ra": "deg", "dec": "deg", "gflux": "uJy", "gflux_err": "uJy", "gmag": "mag",
             "gmag_catalog": "mag", "wave": "Angstrom", "line_flux": LINE_FLUX_UNIT,
             "line_flux_err": LINE_FLUX_UNIT, "max_sep": "arcsec"}
    cards = {"ORIGIN": "remedy-dask", "PIPEVER": __version__, "NPRODUCT": len(req.products),
             "RADIUS": (req.radius, "[arcsec] continuum sources merged within"),
             "LRADIUS": (req.line_radius, "[arcsec] emission lines merged within"),
             "WAVETOL": (req.wave_tol, "[Angstrom] lines: and within this in wavelength")}
    for k, p in enumerate(req.products[:99]):
        cards[f"PRODUC{k + 1:02d}"] = Path(p).name
    path = write_table_fits(req.out, table, units, cards, "CATALOG")
    n_line = int(np.sum(table["kind"] == "line"))
    print(f"catalog of {len(req.products)} product(s): {len(table['ra']) - n_line} continuum "
          f"object(s), {n_line} emission line(s): {path}")
    return path
