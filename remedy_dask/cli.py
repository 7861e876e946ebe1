"""The ``remedy-dask`` command line (also ``python -m remedy_dask``).

Sub-commands and their arguments follow shared/interface.md.  Every error ends with one line
``error: ...`` on stderr; ``--debug`` shows tracebacks.  Exit status (``workflow.outcome``): 0 all
reduced, 1 internal error, 2 bad input or arguments (or OUTDIR held by another run), 3 products
written with something left out.
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
from remedy_dask.config import load_config  # noqa: E402
from remedy_dask.errors import ConfigError, RemedyError  # noqa: E402
from remedy_dask.requests import (  # noqa: E402
    CalibrateRequest, ClusterRequest, InjectionRequest, NightRequest, RangeRequest, ReduceRequest,
)

log = logging.getLogger("remedy_dask")


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _date(text: str) -> str:
    from remedy_dask.requests import check_date

    try:
        return check_date(text)
    except RemedyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    p.add_argument("--cubes", choices=["target", "all", "none"], default="target",
                   help="data cube and per-IFU FITS for the target IFU, every reduced IFU, or none")
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
    p.add_argument("--cubes", choices=["target", "all", "none"], default="none",
                   help="data cubes and per-IFU FITS for every IFU (all), the lowest IFU slot of "
                        "each observation (target) or none")
    _add_cluster_args(p)

    p = sub.add_parser("reduce-range", help="calibrate and reduce every science observation of "
                       "a range of nights, one calibration file per window, with a summary CSV")
    p.add_argument("rootdir", type=Path, help="raw data root (ROOT/YYYYMMDD/virus/...)")
    p.add_argument("--start", type=_date, required=True, help="first night, YYYYMMDD")
    p.add_argument("--end", type=_date, required=True, help="last night (included), YYYYMMDD")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: cal/, reduced/ and summary.csv")
    p.add_argument("--program", help="only observations whose QPROG header equals this")
    p.add_argument("--cal-window", type=int, default=7,
                   help="days per calibration window, counted from --start")
    p.add_argument("--fplane", type=Path, required=True, help="focal-plane (fplane) file")
    p.add_argument("--ifucen", type=Path, help="IFUcen fiber map (default: the standard layout)")
    p.add_argument("--fiber-locations", type=Path, help="folder of fiber_loc_*.txt references")
    p.add_argument("--catalog", type=Path, help="star catalogue file (default: Pan-STARRS query)")
    p.add_argument("--throughput", type=Path, help="throughput curve (default: the shipped one)")
    p.add_argument("--cubes", choices=["target", "all", "none"], default="none",
                   help="data cubes and per-IFU FITS: every IFU, the lowest slot, or none")
    _add_cluster_args(p)

    p = sub.add_parser("demo", help="simulate, calibrate and reduce a small night")
    p.add_argument("out", type=Path, nargs="?", default=Path("demo_out"))
    p.add_argument("--workers", type=int, default=None)

    p = sub.add_parser("graphs", help="regenerate the task-graph views (graphs/*.md)")
    p.add_argument("outdir", type=Path, nargs="?", default=Path("graphs"))

    p = sub.add_parser(
        "config", help="print the effective reduction or cluster settings",
        description="Print the effective reduction settings, or with --cluster the cluster "
                    "settings and the batch job script that would be submitted.",
        epilog="example: remedy-dask config show --cluster slurm --site tacc-stampede3")
    p.add_argument("action", choices=["show"], help="what to do (show)")
    p.add_argument("--config", type=Path, help="YAML file of reduction parameters")
    p.add_argument("--cluster", choices=["local", "slurm", "pbs"],
                   help="show these cluster settings instead of the reduction settings")
    _add_site_args(p)

    p = sub.add_parser(
        "sbatch", help="write (and with --submit, submit) a whole-node SLURM job for a command",
        description="Print a SLURM batch script that runs `remedy-dask COMMAND ARGS...` inside "
                    "one node allocation (a LocalCluster over the allocation's cores, this "
                    "Python environment). Options may come before COMMAND or after its ARGS.",
        epilog="example: remedy-dask sbatch reduce 20190822 7 47 cal.h5 --rootdir raw "
               "--fplane fplane.txt --out out --site tacc-stampede3 --account AST23001 --submit")
    _add_sbatch_args(p)
    p.add_argument("inner", nargs=argparse.REMAINDER, metavar="COMMAND ARGS",
                   help="the remedy-dask command to run and its arguments")
    return parser


def _add_site_args(p: argparse.ArgumentParser) -> None:
    from remedy_dask.workflow.cluster_settings import site_names

    p.add_argument("--site", choices=site_names(),
                   help="site preset of the SLURM settings (default: generic settings)")
    p.add_argument("--cluster-config", type=Path,
                   help="YAML file of cluster settings (any dask-jobqueue argument), applied last")


def _add_sbatch_args(p: argparse.ArgumentParser, suppress: bool = False) -> None:
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
    p.add_argument("--walltime", default=default, help="wall-clock limit HH:MM:SS (default "
                   "the site's, else 02:00:00)")
    p.add_argument("--job-name", default=default, help="job name (default remedy-COMMAND)")
    p.add_argument("--submit", action="store_true",
                   default=argparse.SUPPRESS if suppress else False,
                   help="submit the script with sbatch and print the job id")


def _add_cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", default="local",
                   help="local | slurm | pbs | sync | tls://ADDRESS | tcp://ADDRESS "
                        "(default: local)")
    p.add_argument("--workers", type=int, default=None, help="workers (default: cores)")
    p.add_argument("--config", type=Path, help="YAML file of reduction parameters")
    _add_site_args(p)
    p.add_argument("--worker-timeout", type=float, default=None, metavar="SECONDS",
                   help="with slurm/pbs: give up (exit 2) when no worker has started after "
                        "this long (default: wait, logging the queue state every minute)")
    p.add_argument("--dashboard-address", default=None, metavar="HOST:PORT",
                   help="where the dashboard listens (default 127.0.0.1:8787, this machine "
                        "only; a free port if taken)")
    p.add_argument("--tls-ca-file", type=Path, help="CA certificate for tls:// (with "
                   "--tls-cert and --tls-key; default: temporary certificates for clusters "
                   "started here)")
    p.add_argument("--tls-cert", type=Path, help="certificate for tls://")
    p.add_argument("--tls-key", type=Path, help="private key for tls://")


def _setup_logging(debug: bool, quiet: bool) -> None:
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=max(level, logging.INFO), datefmt="%H:%M:%S",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("remedy_dask").setLevel(level)
    for noisy in ("distributed", "bokeh", "tornado", "numba", "fsspec", "asyncio", "numcodecs"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _cluster_request(args: argparse.Namespace) -> ClusterRequest:
    return ClusterRequest(
        address=args.cluster, workers=args.workers, config_file=args.cluster_config,
        site=args.site, dashboard_address=args.dashboard_address,
        worker_timeout=args.worker_timeout, tls_ca_file=args.tls_ca_file, tls_cert=args.tls_cert,
        tls_key=args.tls_key, quiet=args.quiet)


def calibrate_request(args: argparse.Namespace) -> CalibrateRequest:
    """The typed request of ``calibrate``."""
    return CalibrateRequest(
        rootdir=args.rootdir, date=args.date, out=args.out, days=args.days, fplane=args.fplane,
        ifucen=args.ifucen, fiber_locations=args.fiber_locations,
        ifuslots=tuple(args.ifuslots) if args.ifuslots else None,
        config=load_config(args.config), cluster=_cluster_request(args))


def reduce_request(args: argparse.Namespace) -> ReduceRequest:
    """The typed request of ``reduce``."""
    injection = None
    if args.source_file is not None:
        if args.source_x is None or args.source_y is None:
            raise ConfigError("--source-file needs --source-x and --source-y (IFU-frame arcsec)")
        injection = InjectionRequest(args.source_file, args.source_x, args.source_y,
                                     args.source_seeing)
    return ReduceRequest(
        date=args.date, obs=args.obs, ifuslot=args.ifuslot, calfile=args.calfile,
        rootdir=args.rootdir, fplane=args.fplane, out=args.out, catalog=args.catalog,
        throughput=args.throughput, ifucen=args.ifucen, neighbor_dist=args.neighbor_dist,
        all_ifus=args.all_ifus, cubes=args.cubes, injection=injection,
        config=load_config(args.config), config_file=args.config, cluster=_cluster_request(args))


def night_request(args: argparse.Namespace) -> NightRequest:
    """The typed request of ``reduce-night``."""
    return NightRequest(
        rootdir=args.rootdir, date=args.date, calfile=args.calfile, fplane=args.fplane,
        out=args.out, observations=tuple(args.observations) if args.observations else None,
        catalog=args.catalog, throughput=args.throughput, ifucen=args.ifucen, cubes=args.cubes,
        config=load_config(args.config), config_file=args.config, cluster=_cluster_request(args))


def range_request(args: argparse.Namespace) -> RangeRequest:
    """The typed request of ``reduce-range``."""
    return RangeRequest(
        rootdir=args.rootdir, start=args.start, end=args.end, out=args.out, fplane=args.fplane,
        cal_window=args.cal_window, program=args.program, ifucen=args.ifucen,
        fiber_locations=args.fiber_locations, catalog=args.catalog, throughput=args.throughput,
        cubes=args.cubes, config=load_config(args.config), config_file=args.config,
        cluster=_cluster_request(args))


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
        from remedy_dask.io.calfile import amp_statuses
        from remedy_dask.workflow.calibration import run_calibrate
        from remedy_dask.workflow.outcome import EXIT_OK, EXIT_PARTIAL

        path = run_calibrate(calibrate_request(args))
        failed = [k for k, v in amp_statuses(path).items() if v != "ok"]
        return EXIT_PARTIAL if failed else EXIT_OK
    if args.command == "reduce":
        from remedy_dask.workflow.outcome import product_status
        from remedy_dask.workflow.science import run_reduce

        return product_status(run_reduce(reduce_request(args)))
    if args.command == "reduce-night":
        from remedy_dask.workflow.outcome import night_status
        from remedy_dask.workflow.science import run_reduce_night

        return night_status(run_reduce_night(night_request(args)))
    if args.command == "reduce-range":
        from remedy_dask.workflow.archive import run_reduce_range
        from remedy_dask.workflow.outcome import range_status

        return range_status(run_reduce_range(range_request(args)))
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
        if args.cluster:
            from remedy_dask.workflow.cluster_settings import show

            print(show(args.cluster, args.site, args.cluster_config), end="")
            return 0
        from remedy_dask.config import load_config

        print(load_config(args.config).to_yaml(), end="")
        return 0
    if args.command == "sbatch":
        return _run_sbatch(args)
    raise AssertionError(args.command)


def _run_sbatch(args: argparse.Namespace) -> int:
    """``remedy-dask sbatch``: sbatch options may also follow the inner command's arguments."""
    from remedy_dask.workflow import batch

    trailing = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    _add_sbatch_args(trailing, suppress=True)
    later, inner = trailing.parse_known_args(args.inner)
    opts = {**vars(args), **vars(later)}
    job = batch.BatchJob(
        command=inner, site=opts["site"], partition=opts["partition"], account=opts["account"],
        reservation=opts["reservation"], nodes=opts["nodes"], cores=opts["cores"],
        walltime=opts["walltime"], job_name=opts["job_name"])
    script = batch.render(job)
    if not opts["submit"]:
        print(script, end="")
        return 0
    print(f"submitted batch job {batch.submit(script)}")
    return 0


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
    except Exception as exc:  # anything else: one line, the traceback only with --debug
        if args.debug:
            raise
        print(f"error: {_describe(exc)} (rerun with --debug for the traceback)", file=sys.stderr)
        return 1


def _describe(exc: BaseException) -> str:
    """One line for an unexpected exception."""
    text = " ".join(str(exc).split())
    if type(exc).__name__ == "KilledWorker":
        return (f"a Dask worker died three times running a task ({text}): out of memory or a "
                "crash in compiled code; finished checkpoints are kept, rerun to resume")
    return f"internal error: {type(exc).__name__}: {text}"


if __name__ == "__main__":
    raise SystemExit(main())
