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
from remedy_dask.requests import ClusterRequest

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


def run_extract(args: Any, cluster: ClusterRequest) -> Path:
    """``remedy-dask extract``: the table of spectra at the positions."""
    from astropy.table import Table

    from remedy_dask.io.multiobs_products import (
        FLUX_UNIT,
        read_positions,
        write_table_fits,
    )
    from remedy_dask.multiobs.positions import combine_observations
    from remedy_dask.workflow.cluster import compute

    if args.coords is not None:
        if args.ra is not None or args.dec is not None:
            raise ConfigError("give either --ra/--dec or --coords, not both")
        positions = read_positions(args.coords)
    elif args.ra is None or args.dec is None:
        raise ConfigError("give a position (--ra RA --dec DEC, degrees) or --coords F.csv")
    else:
        if not -90.0 <= args.dec <= 90.0:
            raise ConfigError(f"--dec {args.dec} is outside -90..90 deg")
        positions = Table({"ra": [float(args.ra) % 360.0], "dec": [float(args.dec)]})
    if not args.radius > 0:
        raise ConfigError(f"--radius must be positive, got {args.radius}")
    metas = _metas(args.products)
    ra = np.asarray(positions["ra"], float)
    dec = np.asarray(positions["dec"], float)
    parts = [dask.delayed(extract_one, pure=True)(m, ra, dec, args.radius,
                                                 dask_key_name=f"extract-{k}-{Path(m.path).stem}")
             for k, m in enumerate(metas)]
    combined = dask.delayed(combine_observations)(parts, dask_key_name="extract-combine")
    with _client(cluster) as client:
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
                        args.coords, name)
    cards = {"ORIGIN": "remedy-dask", "PIPEVER": __version__, "NPRODUCT": len(metas),
             "RADIUS": (args.radius, "[arcsec] fibers used around each position"),
             "EDGEMARG": (3.0, "[arcsec] edge: this circle not all covered")}
    for k, m in enumerate(metas[:99]):
        cards[f"PRODUC{k + 1:02d}"] = Path(m.path).name
    path = write_table_fits(args.out, columns, {"ra": "deg", "dec": "deg", "spectrum": FLUX_UNIT,
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


def run_mosaic(args: Any, cluster: ClusterRequest) -> Path:
    """``remedy-dask mosaic``: one cube over every fiber of the products."""
    from remedy_dask.observation.cube import cube_header, cube_wcs
    from remedy_dask.io.multiobs_products import create_cube_file, finish_file
    from remedy_dask.multiobs.mosaic import mosaic_centre, mosaic_frame, mosaic_grid
    from remedy_dask.workflow.cluster import compute

    if not args.pixscale > 0:
        raise ConfigError(f"--pixscale must be positive, got {args.pixscale}")
    metas = _metas(args.products)
    wave = metas[0].wave
    j0, j1 = 0, len(wave)
    if args.wave is not None:
        lo, hi = sorted(args.wave)
        inside = np.flatnonzero((wave >= lo) & (wave <= hi))
        if inside.size == 0:
            raise ConfigError(f"--wave {lo:g} {hi:g} holds no wavelength of "
                              f"{wave[0]:g}-{wave[-1]:g} A")
        j0, j1 = int(inside[0]), int(inside[-1]) + 1
    ra_all = np.concatenate([m.ra for m in metas])
    dec_all = np.concatenate([m.dec for m in metas])
    ra0, dec0 = mosaic_centre(ra_all, dec_all)
    grid = mosaic_grid(*mosaic_frame(ra_all, dec_all, ra0, dec0), args.pixscale)
    plane_bytes = 3 * 8 * grid.nx * grid.ny  # float64 working arrays of make_cube, per plane
    step = int(max(1, min(j1 - j0, args.chunk_mb * 2**20 // (4 * plane_bytes))))
    header = cube_header(cube_wcs(ra0, dec0, 0.0, grid, 0.0, 0.0, wave[j0:j1]))
    cards = {"ORIGIN": "remedy-dask", "PIPEVER": __version__, "NPRODUCT": len(metas),
             "PIXSCALE": (args.pixscale, "[arcsec] pixel size")}
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
    tmp, slabs = create_cube_file(args.out, shape, hdus)
    log.info("mosaic %s: %d x %d pixels, %d wavelengths in %d chunks", args.out, grid.nx, grid.ny,
             shape[0], len(starts))
    try:
        stored = da.store([cube[0], cube[1], cube[2]], slabs, lock=False, compute=False)
        done = dask.delayed(_count, pure=True)(list(stored), dask_key_name="mosaic-written")
        with _client(cluster) as client:
            compute(done, client)
        path = finish_file(tmp, args.out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    print(f"mosaic of {len(metas)} product(s): {grid.nx} x {grid.ny} x {shape[0]} "
          f"({args.pixscale:g}\" pixels): {path}")
    return path


# --- catalog ----------------------------------------------------------------------------------


def catalog_entries(path: str) -> dict[str, Any]:
    """Continuum sources (synthetic g as a flux density in uJy) and line detections of a file."""
    from remedy_dask.observation.fluxcal import synthetic_gmag
    from remedy_dask.io.observation_reader import read_catalog_tables

    t = read_catalog_tables(path)
    src = t["sources"]
    if len(src["ra"]):
        g, gerr = synthetic_gmag(t["meta"]["wave"], src["spectrum"], src["error"])
    else:
        g, gerr = np.zeros(0), np.zeros(0)
    ujy = 10 ** (-0.4 * (np.asarray(g, float) - 23.9))
    return {"name": str(t["meta"]["name"]),
            "continuum": {"ra": src["ra"], "dec": src["dec"], "flux": ujy,
                          "flux_err": ujy * 0.4 * np.log(10) * np.asarray(gerr, float),
                          "gmag_catalog": src["gmag_catalog"]},
            "lines": {k: t["detections"][k] for k in ("ra", "dec", "wave", "flux", "flux_err",
                                                      "sn", "fwhm")}}


def merge_catalogs(entries: list[dict[str, Any]], radius: float, line_radius: float,
                   wave_tol: float) -> dict[str, np.ndarray]:
    """One row per object: continuum objects first, then emission lines."""
    from remedy_dask.multiobs.merge import merge_entries

    names = np.array([e["name"] for e in entries])
    rows: dict[str, list[np.ndarray]] = {}
    for kind, r, tol in (("continuum", radius, None), ("lines", line_radius, wave_tol)):
        cols = {k: np.concatenate([np.asarray(e[kind][k], float) for e in entries])
                for k in entries[0][kind]}
        obs = np.concatenate([np.full(len(e[kind]["ra"]), i) for i, e in enumerate(entries)])
        m = merge_entries(cols["ra"], cols["dec"], cols["flux"], cols["flux_err"], obs, r,
                          cols.get("wave"), tol)
        n = len(m["ra"])
        lab = m["label"]
        members = [",".join(sorted(set(names[obs[lab == g]]))) for g in range(n)]
        line = kind == "lines"
        nan = np.full(n, np.nan)
        add = {
            "kind": np.full(n, "line" if line else "continuum"), "ra": m["ra"], "dec": m["dec"],
            "gflux": nan if line else m["flux"], "gflux_err": nan if line else m["flux_err"],
            "gmag": nan if line else -2.5 * np.log10(np.where(m["flux"] > 0, m["flux"], np.nan)) + 23.9,
            "gmag_catalog": nan if line else np.bincount(lab, cols["gmag_catalog"], n)
            / np.bincount(lab, minlength=n),
            "wave": m["wave"] if line else nan,
            "line_flux": m["flux"] if line else nan, "line_flux_err": m["flux_err"] if line else nan,
            "sn": m["flux"] / m["flux_err"] if line else nan,
            "n_observations": m["n_observations"], "n_entries": m["n_entries"],
            "max_sep": m["max_sep"], "observations": np.array(members, dtype=object),
        }
        for k, v in add.items():
            rows.setdefault(k, []).append(np.asarray(v))
    out = {k: np.concatenate(v) for k, v in rows.items()}
    width = max([1, *map(len, out["observations"])])
    out["observations"] = out["observations"].astype(f"U{width}")
    out["kind"] = out["kind"].astype("U9")
    return out


def run_catalog(args: Any, cluster: ClusterRequest) -> Path:
    """``remedy-dask catalog``: the merged catalogue of the products."""
    from remedy_dask.io.multiobs_products import LINE_FLUX_UNIT, write_table_fits
    from remedy_dask.workflow.cluster import compute

    for name in ("radius", "line_radius", "wave_tol"):
        if not getattr(args, name) > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive")
    _metas(args.products)  # validates every file before work is sent out
    parts = [dask.delayed(catalog_entries, pure=True)(str(p), dask_key_name=f"catalog-read-{k}")
             for k, p in enumerate(args.products)]
    merged = dask.delayed(merge_catalogs)(parts, args.radius, args.line_radius, args.wave_tol,
                                          dask_key_name="catalog-merge")
    with _client(cluster) as client:
        table = compute(merged, client)
    units = {"ra": "deg", "dec": "deg", "gflux": "uJy", "gflux_err": "uJy", "gmag": "mag",
             "gmag_catalog": "mag", "wave": "Angstrom", "line_flux": LINE_FLUX_UNIT,
             "line_flux_err": LINE_FLUX_UNIT, "max_sep": "arcsec"}
    cards = {"ORIGIN": "remedy-dask", "PIPEVER": __version__, "NPRODUCT": len(args.products),
             "RADIUS": (args.radius, "[arcsec] continuum sources merged within"),
             "LRADIUS": (args.line_radius, "[arcsec] emission lines merged within"),
             "WAVETOL": (args.wave_tol, "[Angstrom] lines: and within this in wavelength")}
    for k, p in enumerate(args.products[:99]):
        cards[f"PRODUC{k + 1:02d}"] = Path(p).name
    path = write_table_fits(args.out, table, units, cards, "CATALOG")
    n_line = int(np.sum(table["kind"] == "line"))
    print(f"catalog of {len(args.products)} product(s): {len(table['ra']) - n_line} continuum "
          f"object(s), {n_line} emission line(s): {path}")
    return path
