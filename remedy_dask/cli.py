"""The ``remedy-dask`` command line (also ``python -m remedy_dask``).

Sub-commands and their arguments follow shared/interface.md.  Bad input ends with a one-line
``error: ...`` on stderr and exit status 2; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from remedy_dask.threads import one_thread_per_process

one_thread_per_process()  # before numpy is imported anywhere

from remedy_dask import __version__  # noqa: E402
from remedy_dask.errors import RemedyError
from remedy_dask.logsetup import STDOUT_LOGGER, command_logging

log = logging.getLogger("remedy_dask")

LOG_NAME = "remedy-dask.log"
RESULT_ON_STDOUT = ("config",)  # commands whose printed output is the answer (kept by --quiet)


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _date(text: str) -> str:
    if len(text) != 8 or not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a date YYYYMMDD, got {text!r}")
    return text


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
                             "default: OUTDIR/remedy-dask.log for reduce, reduce-night and "
                             "demo, remedy-dask.log next to CAL.h5 for calibrate")


def _command(sub: Any, name: str, summary: str, examples: str) -> argparse.ArgumentParser:
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

    for add in (_add_simulate, _add_calibrate, _add_reduce, _add_reduce_night, _add_tools):
        add(sub)
    return parser


def _add_simulate(sub: Any) -> None:
    """``simulate OUT``."""
    p = _command(sub, "simulate", "write a night of simulated raw VIRUS data with its truth",
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


def _add_calibrate(sub: Any) -> None:
    """``calibrate ROOTDIR --date --out CAL.h5``."""
    p = _command(sub, "calibrate", "build the calibration file from a window of nights",
                 "remedy-dask calibrate /data/virus --date 20190822 --days 3 --out cal.h5 "
                 "--fplane fplane.txt")
    p.add_argument("rootdir", type=Path, metavar="ROOTDIR",
                   help="raw-data root holding YYYYMMDD/virus/virusNNNNNNN[.tar]")
    p.add_argument("--date", type=_date, required=True, help="night YYYYMMDD (required)")
    p.add_argument("--days", type=int, default=1,
                   help="calibration window: this many nights ending on --date")
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
    _add_cluster_args(p)


def _add_reduce(sub: Any) -> None:
    """``reduce DATE OBS IFUSLOT CAL.h5``."""
    p = _command(sub, "reduce", "reduce one observation (target IFU and its neighbours)",
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
    _add_cluster_args(p)


def _add_reduce_night(sub: Any) -> None:
    """``reduce-night ROOTDIR DATE CAL.h5``."""
    p = _command(sub, "reduce-night", "reduce every science observation of a night",
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
    _add_cluster_args(p)
    p.set_defaults(neighbor_dist=0, source_file=None, source_x=None, source_y=None,
                   source_seeing=None)


def _add_tools(sub: Any) -> None:
    """``demo``, ``graphs``, ``config show``."""
    p = _command(sub, "demo", "simulate, calibrate and reduce a small night",
                 "remedy-dask demo /tmp/demo --workers 2")
    p.add_argument("out", type=Path, nargs="?", default=Path("demo_out"), metavar="OUT",
                   help="folder for the simulated night, calibration and products")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes (default: one per core)")

    p = _command(sub, "graphs", "regenerate the task-graph views (graphs/*.md)",
                 "remedy-dask graphs graphs/")
    p.add_argument("outdir", type=Path, nargs="?", default=Path("graphs"), metavar="OUTDIR",
                   help="folder for the graph views")

    p = _command(sub, "config", "configuration helpers",
                 "remedy-dask config show --config my_reduction.yaml")
    p.add_argument("action", choices=["show"], metavar="show",
                   help="show: print the effective reduction parameters (YAML)")
    p.add_argument("--config", type=Path, metavar="FILE.yaml",
                   help="YAML file of reduction parameters to merge over the built-in ones")


def _add_observation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--catalog", type=Path, metavar="FILE",
                   help="star catalogue (CSV/ECSV/FITS with raMean, decMean, gMeanApMag, ...); "
                        "default: ask Pan-STARRS DR2 over the network and cache the answer")
    p.add_argument("--throughput", type=Path, metavar="FILE",
                   help="throughput curve (two columns: wavelength A, throughput); "
                        "default: the HETDEX curve shipped with remedy-dask")
    p.add_argument("--ifucen", type=Path, metavar="FILE",
                   help="IFUcen fiber-position file; default: the standard HETDEX layout")


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", default="local", metavar="KIND",
                   help="where to run: local (this machine), slurm or pbs (dask-jobqueue), "
                        "sync (one process, for debugging) or tcp://ADDRESS of a running "
                        "scheduler")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="worker processes (default: one per core; jobqueue: adaptive)")
    p.add_argument("--config", type=Path, metavar="FILE.yaml",
                   help="YAML file of reduction parameters (see 'remedy-dask config show')")
    p.add_argument("--cluster-config", type=Path, metavar="FILE.yaml",
                   help="YAML file of cluster settings (see configs/*.yaml)")


def log_file_for(args: argparse.Namespace) -> Path | None:
    """The log file of a command: ``--log-file``, else beside its products."""
    if getattr(args, "log_file", None):
        return Path(args.log_file)
    if args.command in ("reduce", "reduce-night", "demo"):
        return Path(args.out) / LOG_NAME
    if args.command == "calibrate":
        return Path(args.out).parent / LOG_NAME
    return None


def run(args: argparse.Namespace) -> int:
    """Dispatch one parsed command; returns the exit status."""
    if args.command == "simulate":
        from remedy_dask.sim import simulate_night

        t0 = time.perf_counter()
        result = simulate_night(
            args.out, date=args.date, ifuslots=args.ifuslots, seed=args.seed, tar=args.tar,
            science_obs=args.science_obs, science_only=args.science_only,
            n_workers=args.processes,
        )
        print(f"simulated night written to {args.out} in {time.perf_counter() - t0:.1f} s")
        print(f"truth: {getattr(result, 'truth_dir', args.out / 'truth')}")
        return 0
    if args.command == "calibrate":
        from remedy_dask.workflow.calibration import run_calibrate

        run_calibrate(args)
        return 0
    if args.command == "reduce":
        from remedy_dask.workflow.science import run_reduce

        run_reduce(args)
        return 0
    if args.command == "reduce-night":
        from remedy_dask.workflow.science import run_reduce_night

        results = run_reduce_night(args)
        return 0 if all(not str(r).startswith("failed") for r in results.values()) else 1
    if args.command == "demo":
        from remedy_dask.workflow.demo import run_demo

        run_demo(args.out, workers=args.workers)
        return 0
    if args.command == "graphs":
        from remedy_dask.workflow.graphview import write_views

        for path in write_views(args.outdir):
            print(f"wrote {path}")
        return 0
    if args.command == "config":
        from remedy_dask.config import load_config

        print(load_config(args.config).to_yaml(), end="")
        return 0
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug, quiet = args.debug, args.quiet
    command_line = " ".join(["remedy-dask", *(sys.argv[1:] if argv is None else argv)])
    with command_logging(debug, quiet, log_file_for(args), command_line,
                         stdout_is_result=args.command in RESULT_ON_STDOUT):
        try:
            return run(args)
        except RemedyError as exc:
            if debug:
                raise
            log.debug("error", exc_info=True)
            _error(f"error: {exc}")
            return 2
        except (OSError, ValueError) as exc:
            if debug:
                raise
            _error(f"error: {type(exc).__name__}: {exc}")
            return 2
        except KeyboardInterrupt:
            _error("interrupted: finished intermediates are kept; rerun the command to resume")
            return 130
        except BaseException:
            logging.getLogger(STDOUT_LOGGER).exception("failed")  # the traceback, in the log file
            raise


def _error(line: str) -> None:
    """The one-line error on stderr, and in the log file."""
    print(line, file=sys.stderr)
    logging.getLogger(STDOUT_LOGGER).error(line)


if __name__ == "__main__":
    raise SystemExit(main())
