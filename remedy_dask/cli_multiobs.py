"""Sub-commands working on observation products: ``extract``, ``mosaic``, ``catalog``
(argument parsing only; the graphs are in :mod:`remedy_dask.workflow.multiobs`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

COMMANDS = ("extract", "mosaic", "catalog")


def _products(p: argparse.ArgumentParser) -> None:
    p.add_argument("products", type=Path, nargs="+", metavar="PRODUCT.h5",
                   help="observation products ({DATE}_{OBS:07d}.h5 written by reduce)")


def _cluster(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", default="local", help="local | slurm | pbs | sync | tcp://ADDRESS")
    p.add_argument("--workers", type=int, default=None, help="workers (default: cores)")
    p.add_argument("--cluster-config", type=Path, help="YAML file of cluster settings")


def add_parsers(sub: Any) -> None:
    """Register the three sub-commands on the ``remedy-dask`` sub-parser set."""
    p = sub.add_parser("extract", help="spectra at sky positions from one or many products",
                       description="PSF-weighted optimal extraction at sky positions, combining "
                       "every exposure and observation that covers each position.")
    _products(p)
    p.add_argument("--ra", type=float, help="right ascension of one position (deg)")
    p.add_argument("--dec", type=float, help="declination of one position (deg)")
    p.add_argument("--coords", type=Path,
                   help="CSV with columns ra,dec (deg); other columns are carried through")
    p.add_argument("--radius", type=float, default=5.0,
                   help="use fibers within this distance (arcsec, plus the DAR) of a position")
    p.add_argument("--out", type=Path, required=True, help="output FITS table")
    _cluster(p)

    p = sub.add_parser("mosaic", help="one data cube over every reduced IFU of the products",
                       description="A DAR-corrected (wavelength, dec, ra) cube on a common TAN "
                       "grid with ERROR and WEIGHT (coverage) extensions, built in wavelength "
                       "chunks.")
    _products(p)
    p.add_argument("--out", type=Path, required=True, help="output FITS cube")
    p.add_argument("--pixscale", type=float, default=0.5, help="pixel size (arcsec)")
    p.add_argument("--wave", type=float, nargs=2, metavar=("A1", "A2"),
                   help="only wavelengths A1..A2 (Angstrom)")
    p.add_argument("--chunk-mb", type=int, default=256,
                   help="working memory per wavelength chunk task (MB)")
    _cluster(p)

    p = sub.add_parser("catalog", help="merge the sources and line detections of many products",
                       description="Continuum sources and emission lines of the products; "
                       "entries of one object in several products become one row with an "
                       "inverse-variance combined flux and the number of observations.")
    _products(p)
    p.add_argument("--out", type=Path, required=True, help="output FITS table")
    p.add_argument("--radius", type=float, default=1.0,
                   help="continuum sources closer than this (arcsec) are one object")
    p.add_argument("--line-radius", type=float, default=1.5,
                   help="emission lines closer than this (arcsec) ...")
    p.add_argument("--wave-tol", type=float, default=4.0,
                   help="... and closer than this in wavelength (Angstrom) are one line")
    _cluster(p)


def run(args: argparse.Namespace) -> int:
    """Run one of :data:`COMMANDS`; exit status 0."""
    from remedy_dask.workflow import multiobs

    {"extract": multiobs.run_extract, "mosaic": multiobs.run_mosaic,
     "catalog": multiobs.run_catalog}[args.command](args)
    return 0
