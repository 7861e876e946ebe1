"""Where the graph runs: a LocalCluster (default), SLURM/PBS through dask-jobqueue, an existing
scheduler (``tcp://...``), or the synchronous scheduler (``sync``, for debugging and tests).

The built-in settings equal ``configs/{local,slurm,pbs}.yaml``; ``--cluster-config F`` replaces
them with a user's file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from remedy_dask.errors import ConfigError
from remedy_dask.threads import one_thread_per_process

log = logging.getLogger(__name__)

DEFAULTS: dict[str, dict[str, Any]] = {
    "local": {
        "kind": "local", "n_workers": None, "threads_per_worker": 1, "memory_limit": "auto",
        "dashboard_address": ":8787",
    },
    "slurm": {
        "kind": "slurm", "queue": "normal", "account": None, "cores": 16, "processes": 16,
        "memory": "64GB", "walltime": "02:00:00", "interface": None, "local_directory": None,
        "job_extra_directives": [], "job_script_prologue": [],
        "adaptive": {"minimum_jobs": 1, "maximum_jobs": 8},
    },
    "pbs": {
        "kind": "pbs", "queue": "batch", "account": None, "cores": 16, "processes": 16,
        "memory": "64GB", "walltime": "02:00:00", "interface": None, "local_directory": None,
        "job_extra_directives": [], "job_script_prologue": [],
        "adaptive": {"minimum_jobs": 1, "maximum_jobs": 8},
    },
}


def cluster_settings(kind: str, path: Path | None = None) -> dict[str, Any]:
    """Built-in settings of ``kind``, updated by the YAML file ``path``."""
    settings = dict(DEFAULTS[kind])
    if path is not None:
        try:
            user = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read cluster settings ({exc})") from None
        unknown = set(user) - set(settings)
        if unknown:
            raise ConfigError(f"{path}: unknown cluster settings {sorted(unknown)}")
        settings.update(user)
    return settings


@contextlib.contextmanager
def open_client(
    cluster: str = "local", workers: int | None = None, cluster_config: Path | None = None,
    dashboard_address: str | None = None, quiet: bool = False,
) -> Iterator[Any]:
    """Yield a ``distributed.Client`` (or ``None`` for ``sync``) and close what we started."""
    from remedy_dask.logsetup import console_quiet

    quiet = quiet or console_quiet()
    if cluster == "sync":  # everything runs in this process
        from remedy_dask.workflow.worker_setup import tune_malloc

        tune_malloc()
        yield None
        return
    from distributed import Client, LocalCluster

    from remedy_dask.workflow.worker_setup import quiet_comm_size_probe

    if not log.isEnabledFor(logging.DEBUG):  # distributed configures its own loggers on import
        logging.getLogger("distributed").setLevel(logging.WARNING)
    quiet_comm_size_probe()  # the client and a LocalCluster's scheduler live in this process

    if cluster.startswith("tcp://") or cluster.startswith("tls://"):
        client = Client(cluster, timeout="30s")
        _setup_workers(client)
        _announce(client, quiet)
        try:
            yield client
        finally:
            client.close()
        return
    if cluster not in DEFAULTS:
        raise ConfigError(f"--cluster must be local, slurm, pbs, sync or tcp://ADDRESS, not {cluster!r}")
    settings = cluster_settings(cluster, cluster_config)
    one_thread_per_process()  # inherited by the worker processes we start
    if cluster == "local":
        n = workers or settings["n_workers"] or os.cpu_count() or 1
        address = dashboard_address or settings["dashboard_address"]
        with contextlib.suppress(Exception):
            import socket

            port = int(address.rsplit(":", 1)[-1] or 0)
            if port:
                with socket.socket() as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        address = ":0"  # taken: let the OS choose
        lc = LocalCluster(
            n_workers=n, threads_per_worker=settings["threads_per_worker"],
            memory_limit=settings["memory_limit"], dashboard_address=address,
            processes=True, silence_logs=logging.CRITICAL if quiet else logging.WARNING,
        )
    else:
        lc = _jobqueue_cluster(cluster, settings, workers)
    client = Client(lc)
    _setup_workers(client)
    _announce(client, quiet)
    try:
        yield client
    finally:
        client.close()
        lc.close()


def _setup_workers(client: Any) -> None:
    """Register the per-worker set-up (malloc thresholds) on the current and future workers."""
    from remedy_dask.workflow.worker_setup import WorkerSetup

    client.register_plugin(WorkerSetup())


def _jobqueue_cluster(kind: str, settings: dict[str, Any], workers: int | None) -> Any:
    import dask_jobqueue

    cls = dask_jobqueue.SLURMCluster if kind == "slurm" else dask_jobqueue.PBSCluster
    kwargs = {
        k: settings[k]
        for k in ("queue", "account", "cores", "processes", "memory", "walltime", "interface",
                  "local_directory", "job_extra_directives", "job_script_prologue")
        if settings.get(k) not in (None, [])
    }
    lc = cls(**kwargs)
    if workers:
        lc.scale(n=workers)
    else:
        lc.adapt(**settings["adaptive"])
    log.info("dask-jobqueue job script:\n%s", lc.job_script())
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
