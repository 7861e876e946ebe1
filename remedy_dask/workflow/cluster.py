"""Where the graph runs: a LocalCluster (default), SLURM/PBS through dask-jobqueue, an existing
scheduler (``tls://...`` or ``tcp://...``), or the synchronous scheduler (``sync``, for
debugging and tests).

Settings come from ``workflow.cluster_settings`` (packaged YAML, ``--site``, ``--cluster-config``).
Network defaults are safe: the dashboard listens on 127.0.0.1, and clusters we start use TLS
with temporary certificates (client, scheduler and workers share them through the filesystem).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from remedy_dask.errors import ConfigError
from remedy_dask.threads import one_thread_per_process
from remedy_dask.workflow.cluster_settings import KINDS, cluster_settings, jobqueue_kwargs
from remedy_dask.workflow.jobwatch import ClusterError, rejection_message, wait_for_workers

log = logging.getLogger(__name__)

THREADED_MAX_AMP_EXPOSURES = 96  # processes: auto runs reductions up to this size in threads

TCP_WARNING = ("plain tcp:// to {address}: nothing is encrypted or authenticated; anyone who can "
               "reach that port can run any code as you on the workers (distributed unpickles "
               "what it receives) and read the data; use tls:// with --tls-ca-file, --tls-cert "
               "and --tls-key")
def user_security(ca: Path | None, cert: Path | None, key: Path | None) -> Any:
    """A ``distributed.Security`` from the user's certificate files (``None`` if none given)."""
    if ca is None and cert is None and key is None:
        return None
    if None in (ca, cert, key):
        raise ConfigError("--tls-ca-file, --tls-cert and --tls-key go together")
    for flag, path in (("--tls-ca-file", ca), ("--tls-cert", cert), ("--tls-key", key)):
        if not Path(path).is_file():
            raise ConfigError(f"{path}: {flag} file not found")
    from distributed.security import Security

    files = {f"tls_{role}_{part}": str(p) for role in ("client", "scheduler", "worker")
             for part, p in (("cert", cert), ("key", key))}
    return Security(tls_ca_file=str(ca), require_encryption=True, **files)


def _dashboard_address(requested: str | None) -> str:
    """``requested`` (default 127.0.0.1:8787), on a free port (``:0``) if that one is taken; a
    warning when it listens beyond this machine."""
    address = requested or "127.0.0.1:8787"
    host, _, port = address.rpartition(":")
    if host in ("", "0.0.0.0", "::", "[::]"):
        log.warning("the dashboard listens on all interfaces (%s): anyone who can reach it sees "
                    "the task stream, worker logs and call stacks", address)
    try:
        number = int(port or 0)
    except ValueError:
        raise ConfigError(f"--dashboard-address {address!r} is not HOST:PORT") from None
    if number:
        probe = "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]", "localhost") else host.strip("[]")
        with contextlib.suppress(OSError), socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((probe, number)) == 0:
                log.info("port %d is taken: the dashboard gets a free port", number)
                address = f"{host}:0"
    return address


def _cluster_security(settings: dict[str, Any], user: Any, kind: str) -> Any:
    """Security of a cluster we start: the user's certificates, else temporary ones unless the
    settings say ``security: false`` (then a warning)."""
    if user is not None:
        return user
    if settings.get("security", True):
        from distributed.security import Security

        return Security.temporary()
    log.warning(TCP_WARNING.format(address=f"the {kind} cluster's scheduler"))
    return None


@contextlib.contextmanager
def open_client(
    cluster: str = "local", workers: int | None = None, cluster_config: Path | None = None,
    dashboard_address: str | None = None, quiet: bool = False, site: str | None = None,
    worker_timeout: float | None = None, tls_ca_file: Path | None = None,
    tls_cert: Path | None = None, tls_key: Path | None = None,
    amp_exposures: int | None = None,
) -> Iterator[Any]:
    """Yield a ``distributed.Client`` (or ``None`` for ``sync``) and close what we started.
    ``amp_exposures``: the size of the reduction, for the local cluster's ``processes: auto``."""
    from remedy_dask.logsetup import console_quiet

    quiet = quiet or console_quiet()
    if cluster == "sync":  # everything runs in this process
        from remedy_dask.workflow.worker_setup import tune_malloc

        tune_malloc()
        yield None
        return
    security = user_security(tls_ca_file, tls_cert, tls_key)
    if cluster.startswith(("tcp://", "tls://")):
        with _connect(cluster, security, quiet) as client:
            yield client
        return
    if cluster not in KINDS:
        raise ConfigError(f"--cluster must be local, slurm, pbs, sync, tls://ADDRESS or "
                          f"tcp://ADDRESS, not {cluster!r}")
    if site and cluster == "local":
        raise ConfigError("--site applies to --cluster slurm or pbs")
    settings = cluster_settings(cluster, cluster_config, site)
    _quiet_distributed()
    one_thread_per_process()  # inherited by the worker processes we start
    from distributed import Client

    dashboard = _dashboard_address(dashboard_address or settings.get("dashboard_address"))
    security = _cluster_security(settings, security, cluster)
    if cluster == "local":
        lc = _local_cluster(settings, workers, dashboard, security, quiet, amp_exposures)
    else:
        lc = _jobqueue_cluster(cluster, settings, workers, dashboard, security, worker_timeout)
    try:
        client = Client(lc, security=security)
        _setup_workers(client)
        _announce(client, quiet)
        try:
            yield client
        finally:
            client.close()
    finally:
        lc.close()


@contextlib.contextmanager
def _connect(address: str, security: Any, quiet: bool) -> Iterator[Any]:
    from distributed import Client
    from distributed.security import Security

    _quiet_distributed()
    if address.startswith("tcp://"):
        log.warning(TCP_WARNING.format(address=address))
        security = None
    elif security is None:
        security = Security()  # certificates from the Dask configuration, if any
        if not security.tls_ca_file:
            raise ConfigError(f"{address}: a tls:// scheduler needs --tls-ca-file, --tls-cert "
                              "and --tls-key (or distributed.comm.tls in the Dask configuration)")
    client = Client(address, timeout="30s", security=security)
    try:
        _setup_workers(client)
        _announce(client, quiet)
        yield client
    finally:
        client.close()


def _quiet_distributed() -> None:
    from remedy_dask.workflow.worker_setup import quiet_comm_size_probe

    if not log.isEnabledFor(logging.DEBUG):  # distributed configures its own loggers on import
        logging.getLogger("distributed").setLevel(logging.WARNING)
    quiet_comm_size_probe()  # the client and a LocalCluster's scheduler live in this process


def _local_cluster(settings: dict[str, Any], workers: int | None, dashboard: str,
                   security: Any, quiet: bool = False, amp_exposures: int | None = None) -> Any:
    """A LocalCluster of ``workers`` single-threaded processes, or of one process with
    ``workers`` threads (``processes: false``, or ``auto`` for a small reduction)."""
    from distributed import LocalCluster

    n = workers or settings.get("n_workers") or os.cpu_count() or 1
    processes = use_processes(settings.get("processes", True), amp_exposures)
    extra = {k: v for k, v in settings.items() if k not in (
        "kind", "n_workers", "dashboard_address", "security", "adaptive", "processes",
        "threads_per_worker")}
    if processes:
        sizes = {"n_workers": n, "threads_per_worker": settings.get("threads_per_worker") or 1}
    else:
        sizes = {"n_workers": 1, "threads_per_worker": n}
        log.info("local cluster: one worker with %d threads in this process (%s amp-exposures; "
                 "processes: %s)", n, amp_exposures, settings.get("processes"))
    return LocalCluster(
        host="127.0.0.1", dashboard_address=dashboard, security=security, processes=processes,
        silence_logs=logging.CRITICAL if quiet else logging.WARNING, **sizes, **extra,
    )


def use_processes(setting: Any, amp_exposures: int | None) -> bool:
    """Whether the local workers are processes: the ``processes`` setting (true, false or
    ``auto``: threads of this process for at most :data:`THREADED_MAX_AMP_EXPOSURES`, where
    starting and stopping worker processes costs more than the GIL does)."""
    if setting == "auto":
        return amp_exposures is None or amp_exposures > THREADED_MAX_AMP_EXPOSURES
    if isinstance(setting, bool):
        return setting
    raise ConfigError(f"local cluster setting processes must be true, false or auto, not "
                      f"{setting!r}")


def _setup_workers(client: Any) -> None:
    """Register the per-worker set-up (malloc thresholds) on the current and future workers."""
    from remedy_dask.workflow.worker_setup import WorkerSetup

    client.register_plugin(WorkerSetup())


def _tls_temp_directory() -> str:
    """A private directory in $HOME (shared with the compute nodes) for the temporary
    certificates dask-jobqueue hands to the workers."""
    path = Path.home() / ".cache" / "remedy-dask" / "tls"
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)
    return str(path)


def _forget_unsubmitted(lc: Any) -> None:
    """Drop jobs whose submission failed (so that closing the cluster does not trip on them)."""
    from distributed.core import Status

    lc.worker_spec.clear()
    for name, job in list(lc.workers.items()):
        if getattr(job, "job_id", None) is None:
            del lc.workers[name]
    for job in list(getattr(lc, "_created", ())):
        if getattr(job, "job_id", None) is None:
            job.status = Status.failed


def _jobqueue_cluster(kind: str, settings: dict[str, Any], workers: int | None, dashboard: str,
                      security: Any, worker_timeout: float | None) -> Any:
    from remedy_dask.workflow.cluster_settings import jobqueue_class

    kwargs = jobqueue_kwargs(kind, settings)
    kwargs["scheduler_options"] = {"dashboard_address": dashboard,
                                   **(kwargs.get("scheduler_options") or {})}
    if security is not None:
        kwargs["security"] = security
        kwargs.setdefault("shared_temp_directory", _tls_temp_directory())
    lc = jobqueue_class(kind)(**kwargs)
    try:
        log.info("dask-jobqueue job script:\n%s", lc.job_script())
        per_job = settings.get("processes") or 1
        adaptive = settings.get("adaptive") or {}
        first = workers or per_job * adaptive.get("minimum_jobs", 1)
        submit = "sbatch" if kind == "slurm" else "qsub"

        jobs = -(-first // per_job)

        async def submit_first() -> None:  # on the cluster's loop: sbatch/qsub refusals raise here
            while len(lc.worker_spec) < jobs:
                lc.worker_spec.update(lc.new_worker_spec())
            await lc._correct_state()

        try:
            lc.sync(submit_first)
        except RuntimeError as exc:
            _forget_unsubmitted(lc)
            raise ClusterError(rejection_message(exc, submit)) from None
        wait_for_workers(
            lambda: [j.job_id for j in lc.workers.values() if getattr(j, "job_id", None)],
            lambda: len(lc.scheduler_info.get("workers", {})), kind, timeout=worker_timeout)
        if not workers:
            lc.adapt(**adaptive)
    except BaseException:
        lc.close()
        raise
    return lc


def compute(obj: Any, client: Any) -> Any:
    """Compute ``obj`` on ``client`` (or synchronously without one), with a progress bar in a
    terminal and progress lines in a batch log (``workflow.progress``)."""
    import dask

    from remedy_dask.workflow.progress import wait_with_progress

    if client is None:
        return dask.compute(obj, scheduler="sync")[0]
    future = client.compute(obj)
    wait_with_progress([future])
    return future.result()


def _announce(client: Any, quiet: bool) -> None:
    link = getattr(client, "dashboard_link", None)
    if not quiet:
        print(f"Dask dashboard: {link}", flush=True)
    log.info("scheduler %s, dashboard %s", client.scheduler.address, link)
