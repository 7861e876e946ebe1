"""The ``remedy-dask`` command line (also ``python -m remedy_dask``).

Sub-commands and their arguments: ``remedy-dask COMMAND --help`` and the README's Commands section.  Bad input ends with a one-line
``error: ...`` on stderr and exit status 2; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from remedy_dask.threads import one_thread_per_process

one_thread_per_process()  # before numpy is imported anywhere

from remedy_dask import __version__  # noqa: E402
from remedy_dask.errors import RemedyError

log = logging.getLogger("remedy_dask")


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _date(text: str) -> str:
    if len(text) != 8 or not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a date YYYYMMDD, got {text!r}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="remedy-dask",
        description="VIRUS fiber-IFU reduction (Remedy re-created) as a Dask task graph.",
    )
    parser.add_argument("--version", action="version", version=f"remedy-dask {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="write a night of simulated raw VIRUS data with its truth")
    p.add_argument("out", type=Path)
    p.add_argument("--date", type=_date, default="20190822")
    p.add_argument("--ifuslots", type=_int_list, default=[47, 48, 57, 58])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tar", action="store_true", help="write tarred observations")
    p.add_argument("--science-obs", type=int, default=7)
    p.add_argument("--science-only", action="store_true", help="only the science exposures")
    p.add_argument("--processes", type=int, default=2, help="worker processes")

    p = sub.add_parser("calibrate", help="build the calibration file from a window of nights")
    p.add_argument("rootdir", type=Path)
    p.add_argument("--date", type=_date, required=True)
    p.add_argument("--days", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--fplane", type=Path)
    p.add_argument("--ifucen", type=Path)
    p.add_argument("--fiber-locations", type=Path)
    p.add_argument("--ifuslots", type=_int_list, help="restrict to these IFU slots")
    _add_cluster_args(p)

    p = sub.add_parser("reduce", help="reduce one observation")
    p.add_argument("date", type=_date)
    p.add_argument("obs", type=int)
    p.add_argument("ifuslot", type=int)
    p.add_argument("calfile", type=Path)
    p.add_argument("--rootdir", type=Path, required=True)
    p.add_argument("--fplane", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--catalog", type=Path)
    p.add_argument("--throughput", type=Path)
    p.add_argument("--ifucen", type=Path)
    p.add_argument("--neighbor-dist", type=int, default=1)
    p.add_argument("--all-ifus", action="store_true")
    p.add_argument("--source-file", type=Path)
    p.add_argument("--source-x", type=float)
    p.add_argument("--source-y", type=float)
    p.add_argument("--source-seeing", type=float, default=None,
                   help="FWHM (arcsec) of the injected source; default: each exposure's fitted PSF")
    _add_cluster_args(p)

    p = sub.add_parser("reduce-night", help="reduce every science observation of a night")
    p.add_argument("rootdir", type=Path)
    p.add_argument("date", type=_date)
    p.add_argument("calfile", type=Path)
    p.add_argument("--fplane", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--observations", type=_int_list, help="only these observation numbers")
    p.add_argument("--catalog", type=Path)
    p.add_argument("--throughput", type=Path)
    p.add_argument("--ifucen", type=Path)
    _add_cluster_args(p)
    p.set_defaults(neighbor_dist=0, source_file=None, source_x=None, source_y=None,
                   source_seeing=None)

    p = sub.add_parser("demo", help="simulate, calibrate and reduce a small night")
    p.add_argument("out", type=Path, nargs="?", default=Path("demo_out"))
    p.add_argument("--workers", type=int, default=None)

    p = sub.add_parser("graphs", help="regenerate the task-graph views (graphs/*.md)")
    p.add_argument("outdir", type=Path, nargs="?", default=Path("graphs"))

    p = sub.add_parser("config", help="configuration helpers")
    p.add_argument("action", choices=["show"])
    p.add_argument("--config", type=Path)
    return parser


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", default="local", help="local | slurm | pbs | sync | tcp://ADDRESS")
    p.add_argument("--workers", type=int, default=None, help="workers (default: cores)")
    p.add_argument("--config", type=Path, help="YAML file of reduction parameters")
    p.add_argument("--cluster-config", type=Path, help="YAML file of cluster settings")


def _setup_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=max(level, logging.INFO), datefmt="%H:%M:%S",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("remedy_dask").setLevel(level)
    for noisy in ("distributed", "bokeh", "tornado", "numba", "fsspec", "asyncio", "numcodecs"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


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

        print(load_config(args.config).describe(), end="")
        return 0
    raise AssertionError(args.command)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.debug, args.quiet)
    try:
        return run(args)
    except RemedyError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as exc:
        if args.debug:
            raise
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished intermediates are kept; rerun the command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
