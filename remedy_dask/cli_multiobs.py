"""Sub-commands working on observation products: ``extract``, ``mosaic``, ``catalog``
(argument parsing only; the graphs are in :mod:`remedy_dask.workflow.multiobs`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

COMMANDS = ("extract", "mosaic", "catalog")
EXAMPLES = {
    "extract": "remedy-dask extract reduced/20190822_0000007.h5 --coords targets.csv "
               "--out spectra.fits",
    "mosaic": "remedy-dask mosaic reduced/*.h5 --wave 4800 5100 --out field_cube.fits",
    "catalog": "remedy-dask catalog reduced/*.h5 --out catalog.fits",
}


def _products(p: argparse.ArgumentParser) -> None:
    p.add_argument("products", type=Path, nargs="+", metavar="PRODUCT.h5",
                   help="observation products ({DATE}_{OBS:07d}.h5 written by reduce)")


def add_parsers(sub: Any) -> None:
    """Register the three sub-commands on the ``remedy-dask`` sub-parser set."""
    from remedy_dask.cli_parser import add_cluster_args, command

    p = command(sub, "extract", "spectra at sky positions from one or many products",
                EXAMPLES["extract"])
    _products(p)
    p.add_argument("--ra", type=float, help="right ascension of one position (deg)")
    p.add_argument("--dec", type=float, help="declination of one position (deg)")
    p.add_argument("--coords", type=Path,
                   help="CSV with columns ra,dec (deg); other columns are carried through")
    p.add_argument("--radius", type=float, default=5.0,
                   help="use fibers within this distance (arcsec, plus the DAR) of a position")
    p.add_argument("--out", type=Path, required=True, help="output FITS table")
    add_cluster_args(p)

    p = command(sub, "mosaic", "one data cube over every reduced IFU of the products",
                EXAMPLES["mosaic"])
    _products(p)
    p.add_argument("--out", type=Path, required=True, help="output FITS cube")
    p.add_argument("--pixscale", type=float, default=0.5, help="pixel size (arcsec)")
    p.add_argument("--wave", type=float, nargs=2, metavar=("A1", "A2"),
                   help="only wavelengths A1..A2 (Angstrom)")
    p.add_argument("--chunk-mb", type=int, default=256,
                   help="working memory per wavelength chunk task (MB)")
    add_cluster_args(p)

    p = command(sub, "catalog", "merge the sources and line detections of many products",
                EXAMPLES["catalog"])
    _products(p)
    p.add_argument("--out", type=Path, required=True, help="output FITS table")
    p.add_argument("--radius", type=float, default=1.0,
                   help="continuum sources closer than this (arcsec) are one object")
    p.add_argument("--line-radius", type=float, default=1.5,
                   help="emission lines closer than this (arcsec) ...")
    p.add_argument("--wave-tol", type=float, default=4.0,
                   help="... and closer than this in wavelength (Angstrom) are one line")
    add_cluster_args(p)


def request(args: argparse.Namespace, cluster: Any) -> Any:
    """The typed request of one of :data:`COMMANDS` (``cluster``: a ClusterRequest)."""
    from remedy_dask.requests import CatalogRequest, ExtractRequest, MosaicRequest

    products = tuple(args.products)
    if args.command == "extract":
        return ExtractRequest(products, args.out, args.ra, args.dec, args.coords, args.radius,
                              cluster)
    if args.command == "mosaic":
        return MosaicRequest(products, args.out, args.pixscale,
                             tuple(args.wave) if args.wave is not None else None, args.chunk_mb,
                             cluster)
    return CatalogRequest(products, args.out, args.radius, args.line_radius, args.wave_tol,
                          cluster)


def run(args: argparse.Namespace, cluster: Any) -> int:
    """Run one of :data:`COMMANDS` on ``cluster`` (a ClusterRequest); exit status 0."""
    from remedy_dask.workflow import multiobs

    {"extract": multiobs.run_extract, "mosaic": multiobs.run_mosaic,
     "catalog": multiobs.run_catalog}[args.command](request(args, cluster))
    return 0
