"""``remedy-dask sbatch``: one whole-node SLURM job that runs a remedy-dask command on a
LocalCluster over the allocation's cores, with the Python environment that wrote the script."""

from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import remedy_dask
from remedy_dask.errors import ConfigError
from remedy_dask.workflow.cluster_settings import cluster_settings, walltime_seconds
from remedy_dask.workflow.jobwatch import rejection_message

# inner commands and the option that sets their number of worker processes
WORKER_OPTIONS = {"calibrate": ["--cluster", "local", "--workers"],
                  "reduce": ["--cluster", "local", "--workers"],
                  "reduce-night": ["--cluster", "local", "--workers"],
                  "demo": ["--workers"], "simulate": ["--processes"]}
CONFLICTING = ("--cluster", "--workers", "--processes", "--site", "--cluster-config")


@dataclass
class BatchJob:
    """What goes into the script (``None``: the site preset's value or SLURM's default)."""

    command: list[str]
    site: str | None = None
    partition: str | None = None
    account: str | None = None
    reservation: str | None = None
    nodes: int = 1
    cores: int | None = None
    walltime: str | None = None
    job_name: str | None = None


def _inner_command(args: list[str]) -> tuple[str, list[str]]:
    if not args:
        raise ConfigError(f"sbatch needs a command to run: one of {sorted(WORKER_OPTIONS)}")
    command, rest = args[0], list(args[1:])
    if command not in WORKER_OPTIONS:
        raise ConfigError(f"sbatch runs one of {sorted(WORKER_OPTIONS)}, not {command!r}")
    for arg in rest:
        if arg.split("=", 1)[0] in CONFLICTING:
            raise ConfigError(f"sbatch chooses {arg.split('=', 1)[0]} itself (a LocalCluster over "
                              "the allocation); leave it out of the command")
    return command, rest


def _pythonpath() -> str | None:
    """The directory remedy_dask is imported from, when it is not installed in this Python."""
    root = Path(remedy_dask.__file__).resolve().parent.parent
    prefixes = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}
    return None if any(p in root.parents or p == root for p in prefixes) else str(root)


def render(job: BatchJob, cwd: Path | None = None, python: str | None = None) -> str:
    """The sbatch script text."""
    command, rest = _inner_command(job.command)
    if job.nodes != 1:
        raise ConfigError("--nodes: a LocalCluster covers one node; for several nodes use "
                          "--cluster slurm (dask-jobqueue) instead of sbatch")
    site = cluster_settings("slurm", site=job.site) if job.site else {}
    partition = job.partition or site.get("queue")
    account = job.account or site.get("account")
    reservation = job.reservation or site.get("reservation")
    cores = job.cores or site.get("cores")
    walltime = job.walltime or site.get("walltime") or "02:00:00"
    walltime_seconds(walltime)  # validates the format
    if cores is not None and cores < 1:
        raise ConfigError(f"--cores must be positive, not {cores}")
    name = job.job_name or f"remedy-{command}"
    lines = ["#!/bin/bash", f"#SBATCH -J {name}", "#SBATCH -N 1", "#SBATCH -n 1"]
    if cores:
        lines.append(f"#SBATCH -c {cores}")
    lines.append(f"#SBATCH -t {walltime}")
    if partition:
        lines.append(f"#SBATCH -p {partition}")
    if account:
        lines.append(f"#SBATCH -A {account}")
    if reservation:
        lines.append(f"#SBATCH --reservation={reservation}")
    workdir = Path(cwd or Path.cwd()).resolve()
    lines += [f"#SBATCH -o {name}-%j.out", f"#SBATCH -D {workdir}",
              f"# written by remedy-dask {remedy_dask.__version__}"
              f"{' for site ' + job.site if job.site else ''}",
              "set -euo pipefail"]
    lines += list(site.get("job_script_prologue") or [])
    path = _pythonpath()
    if path:
        lines.append(f'export PYTHONPATH={shlex.quote(path)}"${{PYTHONPATH:+:$PYTHONPATH}}"')
    workers = str(cores) if cores else "${SLURM_CPUS_ON_NODE:-1}"
    lines.append(f"WORKERS={workers}")
    argv = [python or sys.executable, "-m", "remedy_dask", command, *rest, *WORKER_OPTIONS[command]]
    lines.append(" ".join(shlex.quote(a) for a in argv) + ' "$WORKERS"')
    return "\n".join(lines) + "\n"


def submit(script: str) -> str:
    """Submit ``script`` with ``sbatch --parsable``; returns the job id."""
    try:
        out = subprocess.run(["sbatch", "--parsable"], input=script, capture_output=True,
                             text=True, timeout=60, check=False)
    except FileNotFoundError:
        raise ConfigError("sbatch not found: submit from a SLURM login node, or save the script "
                          "(without --submit) and submit it there") from None
    if out.returncode != 0:
        raise ConfigError(rejection_message(RuntimeError(out.stderr or out.stdout), "sbatch"))
    return out.stdout.strip().split(";")[0]
