"""The arguments of every ``remedy-dask`` command: help with defaults and an example each."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from remedy_dask import __version__
from remedy_dask.cli_multiobs import add_parsers as add_multiobs_parsers
from remedy_dask.errors import RemedyError
from remedy_dask.requests import CUBE_CHOICES, REDUCE_KINDS, check_date


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_pair(text: str) -> tuple[float, float]:
    try:
        east, north = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected EAST,NORTH in arcsec, got {text!r}") from None
    return east, north


def _date(text: str) -> str:
    try:
        return check_date(text)
    except RemedyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the examples' line breaks and appends ``(default: X)`` to every option that has a
    default worth showing (not None, not a false flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or default in (None, False, argparse.SUPPRESS)
                or isinstance(action, argparse._VersionAction)
                or not (action.option_strings or action.nargs == "?")):
            return text
        return f"{text} (default: %(default)s)"


def _global_options(parser: argparse.ArgumentParser, in_subcommand: bool) -> None:
    """``--debug``, ``--quiet``, ``--log-file``: accepted before and after the sub-command (a
    sub-command's copy only sets what was given there)."""
    unset = {"default": argparse.SUPPRESS} if in_subcommand else {}
    parser.add_argument("--debug", action="store_true", **unset,
                        help="show tracebacks and debug messages")
    parser.add_argument("--quiet", action="store_true", **unset,
                        help="print nothing but errors (the log file still gets everything; "
                             "'config show' still prints its answer)")
    parser.add_argument("--log-file", type=Path, metavar="FILE", **unset,
                        help="append the full log (INFO, timestamps) to FILE instead of the "
                             "default: OUTDIR/remedy-dask.log for reduce, reduce-night, "
                             "reduce-range and demo, remedy-dask.log next to CAL.h5 for "
                             "calibrate")


def command(sub: Any, name: str, summary: str, examples: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=summary, description=summary, formatter_class=HelpFormatter,
                       epilog="example:\n  " + examples.strip().replace("\n", "\n  "))
    _global_options(p, in_subcommand=True)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="remedy-dask", formatter_class=HelpFormatter,
        description="VIRUS fiber-IFU reduction (Remedy re-created) as a Dask task graph.",
        epilog="example:\n  remedy-dask demo\n  remedy-dask reduce --help",
    )
    parser.add_argument("--version", action="version", version=f"remedy-dask {__version__}",
                        help="print the version and exit")
    _global_options(parser, in_subcommand=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                title="commands (remedy-dask COMMAND --help for details)")

    for add in (_add_simulate, _add_calibrate, _add_reduce, _add_reduce_night, _add_reduce_range,
                add_multiobs_parsers, _add_tools, _add_sbatch):
        add(sub)
    return parser


def _add_simulate(sub: Any) -> None:
    """``simulate OUT``."""
    p = command(sub, "simulate", "write a night of simulated raw VIRUS data with its truth",
                 "remedy-dask simulate night/ --ifuslots 047,048 --seed 3")
    p.add_argument("out", type=Path, metavar="OUT",
                   help="output folder: OUT/raw/YYYYMMDD/virus/..., fplane.txt, truth/, ...")
    p.add_argument("--date", type=_date, default="20190822", help="night YYYYMMDD")
    p.add_argument("--ifuslots", type=_int_list, default="047,048,057,058",
                   help="IFU slots to simulate, comma-separated")
    p.add_argument("--seed", type=int, default=1, help="random seed (same seed, same night)")
    p.add_argument("--tar", action="store_true",
                   help="write each observation as virusNNNNNNN.tar, as at TACC")
    p.add_argument("--science-obs", type=int, default=7, metavar="N",
                   help="observation number of the science observation")
    p.add_argument("--science-only", action="store_true",
                   help="only the science exposures (no calibration frames)")
    p.add_argument("--processes", type=int, default=2, help="worker processes")
    p.add_argument("--harsh", action="store_true",
                   help="a harsher night (sim.config.harsh_config: no guider frames, "
                        "illumination and PSF shape varying per exposure, catalogue noise and "
                        "colour term, edge/pair/saturated stars, profile halo, faint multi-pixel "
                        "cosmic rays, per-amp drifts; docs/simulator.md)")
    p.add_argument("--second-pointing", type=_float_pair, metavar="EAST,NORTH", nargs="?",
                   const=(30.0, 20.0), default=None,
                   help="also write science observation SCIENCE_OBS+1 pointed EAST,NORTH arcsec "
                        "from the first (overlapping fields; 30,20 if no value is given)")


def _add_calibrate(sub: Any) -> None:
    """``calibrate ROOTDIR --date --out CAL.h5``."""
    p = command(sub, "calibrate", "build the calibration file from a window of nights",
                 "remedy-dask calibrate /data/virus --date 20190822 --days 3 --out cal.h5 "
                 "--fplane fplane.txt")
    p.add_argument("rootdir", type=Path, metavar="ROOTDIR",
                   help="raw-data root holding YYYYMMDD/virus/virusNNNNNNN[.tar]")
    p.add_argument("--date", type=_date, required=True, help="night YYYYMMDD (required)")
    p.add_argument("--days", type=int, default=1,
                   help="calibration window: this many nights starting on --date "
                        "(--date .. --date + DAYS - 1)")
    p.add_argument("--out", type=Path, required=True, metavar="CAL.h5",
                   help="calibration file to write (required)")
    p.add_argument("--fplane", type=Path, metavar="FILE",
                   help="fplane file (IFU slot, SPECID, IFUID, focal-plane position); "
                        "default: the slots found in the raw headers")
    p.add_argument("--ifucen", type=Path, metavar="FILE",
                   help="IFUcen fiber-position file; default: the standard HETDEX layout")
    p.add_argument("--fiber-locations", type=Path, metavar="DIR",
                   help="folder of per-IFU fiber-location files (trace starting rows)")
    p.add_argument("--ifuslots", type=_int_list, metavar="LIST",
                   help="only these IFU slots, comma-separated (default: all found)")
    add_cluster_args(p)


def _add_reduce(sub: Any) -> None:
    """``reduce DATE OBS IFUSLOT CAL.h5``."""
    p = command(sub, "reduce", "reduce one observation (target IFU and its neighbours)",
                 "remedy-dask reduce 20190822 7 047 cal.h5 --rootdir /data/virus "
                 "--fplane fplane.txt --out reduced/ --catalog ps1.csv")
    p.add_argument("date", type=_date, metavar="DATE", help="night YYYYMMDD")
    p.add_argument("obs", type=int, metavar="OBS", help="observation number (e.g. 7 or 0000007)")
    p.add_argument("ifuslot", type=int, metavar="IFUSLOT", help="target IFU slot (e.g. 047)")
    p.add_argument("calfile", type=Path, metavar="CAL.h5",
                   help="calibration file written by 'remedy-dask calibrate'")
    p.add_argument("--rootdir", type=Path, required=True, metavar="ROOTDIR",
                   help="raw-data root holding DATE/virus/virusNNNNNNN[.tar] (required)")
    p.add_argument("--fplane", type=Path, required=True, metavar="FILE",
                   help="fplane file of the night (required)")
    p.add_argument("--out", type=Path, required=True, metavar="OUTDIR",
                   help="folder for the products DATE_OBS.h5, *_IFUSLOT.fits, *_cube.fits, "
                        "the QA report and the log (required)")
    _add_observation_args(p)
    p.add_argument("--neighbor-dist", type=int, default=1, metavar="N",
                   help="also reduce the IFUs within N slots (rows/columns) of IFUSLOT")
    p.add_argument("--all-ifus", action="store_true", help="reduce every IFU of the observation")
    p.add_argument("--source-file", type=Path, metavar="FILE",
                   help="inject this spectrum (two columns: wavelength A, 1e-17 erg/s/cm^2/A) as "
                        "a point source into IFUSLOT (a test of the extraction)")
    p.add_argument("--source-x", type=float, metavar="X",
                   help="IFU-frame x (arcsec) of the injected source (with --source-file)")
    p.add_argument("--source-y", type=float, metavar="Y",
                   help="IFU-frame y (arcsec) of the injected source (with --source-file)")
    p.add_argument("--source-seeing", type=float, default=None, metavar="FWHM",
                   help="FWHM (arcsec) of the injected source; default: each exposure's fitted "
                        "PSF")
    p.add_argument("--cubes", choices=CUBE_CHOICES, default="target",
                   help="data cube and per-IFU FITS for the target IFU, every reduced IFU, or none")
    p.add_argument("--kind", choices=REDUCE_KINDS, default="sci",
                   help="Remedy's -nt: the frame kind to reduce (twi, flt, cmp: no astrometric "
                        "fit, PSF fit, sources, flux calibration or detections; recorded in the "
                        "product's steps_skipped)")
    p.add_argument("--performance-report", action="store_true",
                   help="also write Dask's performance report (task stream, worker profiles) "
                        "as OUTDIR/DATE_OBS_dask-report.html (costs a few seconds)")
    add_cluster_args(p)


def _add_reduce_night(sub: Any) -> None:
    """``reduce-night ROOTDIR DATE CAL.h5``."""
    p = command(sub, "reduce-night", "reduce every science observation of a night",
                 "remedy-dask reduce-night /data/virus 20190822 cal.h5 --fplane fplane.txt "
                 "--out reduced/")
    p.add_argument("rootdir", type=Path, metavar="ROOTDIR",
                   help="raw-data root holding DATE/virus/virusNNNNNNN[.tar]")
    p.add_argument("date", type=_date, metavar="DATE", help="night YYYYMMDD")
    p.add_argument("calfile", type=Path, metavar="CAL.h5",
                   help="calibration file written by 'remedy-dask calibrate'")
    p.add_argument("--fplane", type=Path, required=True, metavar="FILE",
                   help="fplane file of the night (required)")
    p.add_argument("--out", type=Path, required=True, metavar="OUTDIR",
                   help="folder for the products of every observation and the log (required)")
    p.add_argument("--observations", type=_int_list, metavar="LIST",
                   help="only these observation numbers, comma-separated (default: all)")
    _add_observation_args(p)
    p.add_argument("--cubes", choices=CUBE_CHOICES, default="none",
                   help="data cubes and per-IFU FITS for every IFU (all), the lowest IFU slot of "
                        "each observation (target) or none")
    add_cluster_args(p)


def _add_reduce_range(sub: Any) -> None:
    """``reduce-range ROOTDIR --start --end --out``."""
    p = command(sub, "reduce-range", "calibrate and reduce every science observation of a "
                 "range of nights: one calibration file per window, a summary CSV",
                 "remedy-dask reduce-range /data/virus --start 20190801 --end 20190831 "
                 "--cal-window 7 --fplane fplane.txt --out archive/")
    p.add_argument("rootdir", type=Path, metavar="ROOTDIR",
                   help="raw-data root holding YYYYMMDD/virus/virusNNNNNNN[.tar]")
    p.add_argument("--start", type=_date, required=True, help="first night YYYYMMDD (required)")
    p.add_argument("--end", type=_date, required=True,
                   help="last night YYYYMMDD, included (required)")
    p.add_argument("--out", type=Path, required=True, metavar="OUTDIR",
                   help="folder for cal/, reduced/, summary.csv and the log (required)")
    p.add_argument("--program", metavar="QPROG",
                   help="only observations whose QPROG header equals this (default: all)")
    p.add_argument("--cal-window", type=int, default=7, metavar="DAYS",
                   help="nights per calibration window, counted from --start")
    p.add_argument("--fplane", type=Path, required=True, metavar="FILE",
                   help="fplane file (required)")
    p.add_argument("--fiber-locations", type=Path, metavar="DIR",
                   help="folder of per-IFU fiber-location files (trace starting rows)")
    _add_observation_args(p)
    p.add_argument("--cubes", choices=CUBE_CHOICES, default="none",
                   help="data cubes and per-IFU FITS: every IFU, the lowest slot, or none")
    add_cluster_args(p)


def _add_tools(sub: Any) -> None:
    """``demo``, ``graphs``, ``config show``."""
    p = command(sub, "demo", "simulate, calibrate and reduce a small night",
                 "remedy-dask demo /tmp/demo --workers 2")
    p.add_argument("out", type=Path, nargs="?", default=Path("demo_out"), metavar="OUT",
                   help="folder for the simulated night, calibration and products")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes (default: one per core)")

    p = command(sub, "graphs", "regenerate the task-graph views (graphs/*.md)",
                 "remedy-dask graphs graphs/")
    p.add_argument("outdir", type=Path, nargs="?", default=Path("graphs"), metavar="OUTDIR",
                   help="folder for the graph views")

    p = command(sub, "config", "configuration helpers",
                 "remedy-dask config show --config my_reduction.yaml")
    p.add_argument("action", choices=["show"], metavar="show",
                   help="show: print the effective reduction parameters (YAML)")
    p.add_argument("--config", type=Path, metavar="FILE.yaml",
                   help="YAML file of reduction parameters to merge over the built-in ones")
    p.add_argument("--cluster", choices=["local", "slurm", "pbs"],
                   help="show these cluster settings and the job script that would be "
                        "submitted, instead of the reduction settings")
    _add_site_args(p)


def _add_observation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--catalog", type=Path, metavar="FILE",
                   help="star catalogue (CSV/ECSV/FITS with raMean, decMean, gMeanApMag, ...); "
                        "default: ask Pan-STARRS DR2 over the network and cache the answer")
    p.add_argument("--throughput", type=Path, metavar="FILE",
                   help="throughput curve (two columns: wavelength A, throughput); "
                        "default: the HETDEX curve shipped with remedy-dask")
    p.add_argument("--ifucen", type=Path, metavar="FILE",
                   help="IFUcen fiber-position file; default: the standard HETDEX layout")
    p.add_argument("--native-spectra", action="store_true",
                   help="also write the unrectified spectra, errors, masks and per-fiber "
                        "wavelengths (fibers/native_*, fiber x detector column) to the product")
    p.add_argument("--no-masking", action="store_true",
                   help="Remedy's -nm: no spectral masking (chi2, low throughput, dead fibers, "
                        "fiber/column/amp fractions); only pixels the extraction could not "
                        "measure are flagged (= reduction.spectral_masking: false)")


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", default="local", metavar="KIND",
                   help="where to run: local (this machine), slurm or pbs (dask-jobqueue), "
                        "sync (one process, for debugging), tls://ADDRESS or tcp://ADDRESS of "
                        "a running scheduler")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="workers (default: one per core; jobqueue: adaptive); processes, or threads "
                        "for a small local reduce (cluster setting processes: auto)")
    p.add_argument("--config", type=Path, metavar="FILE.yaml",
                   help="YAML file of reduction parameters (see 'remedy-dask config show')")
    _add_site_args(p)
    p.add_argument("--worker-timeout", type=float, default=None, metavar="SECONDS",
                   help="with slurm/pbs: give up (exit 2) when no worker has started after "
                        "this long (default: wait, logging the queue state every minute)")
    p.add_argument("--dashboard-address", default=None, metavar="HOST:PORT",
                   help="where the dashboard listens (default 127.0.0.1:8787, this machine "
                        "only; a free port if taken)")
    p.add_argument("--tls-ca-file", type=Path, metavar="FILE",
                   help="CA certificate for a tls:// scheduler (with --tls-cert and "
                        "--tls-key; clusters started here use temporary certificates)")
    p.add_argument("--tls-cert", type=Path, metavar="FILE", help="certificate for tls://")
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="private key for tls://")


def _add_site_args(p: argparse.ArgumentParser) -> None:
    from remedy_dask.workflow.cluster_settings import site_names

    p.add_argument("--site", choices=site_names(),
                   help="site preset of the batch settings (default: generic settings)")
    p.add_argument("--cluster-config", type=Path, metavar="FILE.yaml",
                   help="YAML file of cluster settings (any dask-jobqueue argument), applied "
                        "last")


def _add_sbatch(sub: Any) -> None:
    """``sbatch COMMAND ARGS...``."""
    p = command(sub, "sbatch", "write (and with --submit, submit) a whole-node SLURM job that "
                 "runs a remedy-dask command (options may also follow the command's arguments)",
                 "remedy-dask sbatch reduce 20190822 7 47 cal.h5 --rootdir raw --fplane "
                 "fplane.txt --out out --site tacc-stampede3 --account AST23001 --submit")
    add_sbatch_args(p)
    p.add_argument("inner", nargs=argparse.REMAINDER, metavar="COMMAND ARGS",
                   help="the remedy-dask command to run and its arguments")


def add_sbatch_args(p: argparse.ArgumentParser, suppress: bool = False) -> None:
    """The options of ``sbatch`` (``suppress``: only those given, for a second parse)."""
    from remedy_dask.workflow.cluster_settings import site_names

    default = argparse.SUPPRESS if suppress else None
    p.add_argument("--site", choices=site_names(), default=default,
                   help="take partition, account, cores and walltime from this site preset")
    p.add_argument("--partition", default=default, help="SLURM partition (queue)")
    p.add_argument("--account", default=default, help="allocation to charge (-A)")
    p.add_argument("--reservation", default=default, help="SLURM reservation name")
    p.add_argument("--nodes", type=int, default=argparse.SUPPRESS if suppress else 1,
                   help="nodes (only 1: a LocalCluster covers one node)")
    p.add_argument("--cores", type=int, default=default,
                   help="cores (= worker processes); default: the site's cores per node, else "
                        "all cores SLURM gives the job")
    p.add_argument("--walltime", default=default, metavar="HH:MM:SS",
                   help="wall-clock limit (default: the site's, else 02:00:00)")
    p.add_argument("--job-name", default=default, help="job name (default: remedy-COMMAND)")
    p.add_argument("--submit", action="store_true",
                   default=argparse.SUPPRESS if suppress else False,
                   help="submit the script with sbatch and print the job id")
