"""The ``remedy-dask`` command line (also ``python -m remedy_dask``).

``cli_parser`` defines the arguments; this module turns them into typed requests
(``requests.py``) and runs them.  Every error ends with one line ``error: ...`` on stderr;
``--debug`` shows tracebacks.  Exit status (``workflow.outcome``): 0 all reduced, 1 internal
error, 2 bad input or arguments (or OUTDIR held by another run), 3 products written with
something left out.
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import time
from pathlib import Path

from remedy_dask.threads import one_thread_per_process

one_thread_per_process()  # before numpy is imported anywhere

from remedy_dask import cli_multiobs  # noqa: E402
from remedy_dask.cli_parser import add_sbatch_args, build_parser  # noqa: E402
from remedy_dask.config import PipelineConfig, load_config  # noqa: E402
from remedy_dask.errors import ConfigError, RemedyError  # noqa: E402
from remedy_dask.logsetup import STDOUT_LOGGER, command_logging  # noqa: E402
from remedy_dask.requests import (  # noqa: E402
    CalibrateRequest, ClusterRequest, InjectionRequest, NightRequest, RangeRequest, ReduceRequest,
)

log = logging.getLogger("remedy_dask")

LOG_NAME = "remedy-dask.log"
RESULT_ON_STDOUT = ("config", "sbatch")  # commands whose printed output is the answer


def _cluster_request(args: argparse.Namespace) -> ClusterRequest:
    return ClusterRequest(
        address=args.cluster, workers=args.workers, config_file=args.cluster_config,
        site=args.site, dashboard_address=args.dashboard_address,
        worker_timeout=args.worker_timeout, tls_ca_file=args.tls_ca_file, tls_cert=args.tls_cert,
        tls_key=args.tls_key, quiet=args.quiet)


def reduction_config(args: argparse.Namespace) -> PipelineConfig:
    """``--config`` with the reduction options of the command line applied over it."""
    config = load_config(args.config)
    if getattr(args, "no_masking", False):
        config.reduction.spectral_masking = False
    return config


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
        all_ifus=args.all_ifus, cubes=args.cubes, native_spectra=args.native_spectra,
        kind=args.kind, injection=injection, performance_report=args.performance_report,
        config=reduction_config(args), config_file=args.config, cluster=_cluster_request(args))


def night_request(args: argparse.Namespace) -> NightRequest:
    """The typed request of ``reduce-night``."""
    return NightRequest(
        rootdir=args.rootdir, date=args.date, calfile=args.calfile, fplane=args.fplane,
        out=args.out, observations=tuple(args.observations) if args.observations else None,
        catalog=args.catalog, throughput=args.throughput, ifucen=args.ifucen, cubes=args.cubes,
        native_spectra=args.native_spectra, config=reduction_config(args), config_file=args.config, cluster=_cluster_request(args))


def range_request(args: argparse.Namespace) -> RangeRequest:
    """The typed request of ``reduce-range``."""
    return RangeRequest(
        rootdir=args.rootdir, start=args.start, end=args.end, out=args.out, fplane=args.fplane,
        cal_window=args.cal_window, program=args.program, ifucen=args.ifucen,
        fiber_locations=args.fiber_locations, catalog=args.catalog, throughput=args.throughput,
        cubes=args.cubes, native_spectra=args.native_spectra, config=reduction_config(args),
        config_file=args.config,
        cluster=_cluster_request(args))


def log_file_for(args: argparse.Namespace) -> Path | None:
    """The log file of a command: ``--log-file``, else beside its products."""
    if getattr(args, "log_file", None):
        return Path(args.log_file)
    if args.command in ("reduce", "reduce-night", "reduce-range", "demo"):
        return Path(args.out) / LOG_NAME
    if args.command == "calibrate":
        return Path(args.out).parent / LOG_NAME
    return None


def run(args: argparse.Namespace) -> int:
    """Dispatch one parsed command; returns the exit status."""
    if args.command == "simulate":
        import dataclasses

        from remedy_dask.sim import SimConfig, simulate_night
        from remedy_dask.sim.config import harsh_config

        t0 = time.perf_counter()
        config = harsh_config() if args.harsh else SimConfig()
        if args.second_pointing is not None:
            config = dataclasses.replace(config, second_pointing_arcsec=args.second_pointing)
        result = simulate_night(
            args.out, date=args.date, ifuslots=args.ifuslots, seed=args.seed, tar=args.tar,
            science_obs=args.science_obs, science_only=args.science_only,
            n_workers=args.processes, config=config,
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
    if args.command in cli_multiobs.COMMANDS:
        return cli_multiobs.run(args, _cluster_request(args))
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

        print(load_config(args.config).describe(), end="")
        return 0
    if args.command == "sbatch":
        return _run_sbatch(args)
    raise AssertionError(args.command)


def _run_sbatch(args: argparse.Namespace) -> int:
    """``remedy-dask sbatch``: sbatch options may also follow the inner command's arguments."""
    from remedy_dask.workflow import batch

    trailing = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    add_sbatch_args(trailing, suppress=True)
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
            _error(_input_error(exc))
            return 2
        except KeyboardInterrupt:
            _error("interrupted: finished intermediates are kept; rerun the command to resume")
            return 130
        except Exception as exc:  # anything else: one line, the traceback in the log file
            logging.getLogger(STDOUT_LOGGER).error("internal error", exc_info=True)
            if debug:
                raise
            _error(f"error: {_describe(exc)} (rerun with --debug for the traceback)")
            return 1


def _error(line: str) -> None:
    """The one-line error on stderr, and in the log file."""
    print(line, file=sys.stderr)
    logging.getLogger(STDOUT_LOGGER).error(line)


def _input_error(exc: OSError | ValueError) -> str:
    """One line for an input that cannot be read or an output that cannot be written."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return (f"error: {exc.filename or 'an output file'}: No space left on device; free "
                "space and rerun the command: finished checkpoints are kept and reused")
    return f"error: {type(exc).__name__}: {' '.join(str(exc).split())}"


def _describe(exc: BaseException) -> str:
    """One line for an unexpected exception."""
    text = " ".join(str(exc).split())
    if type(exc).__name__ == "KilledWorker":
        return (f"Dask workers died repeatedly running a task that the observation needs "
                f"({text}): out of memory or a crash in compiled code; finished checkpoints "
                "are kept, rerun to resume")
    return f"internal error: {type(exc).__name__}: {text}"


if __name__ == "__main__":
    raise SystemExit(main())
