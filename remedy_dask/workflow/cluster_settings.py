"""Cluster settings: packaged YAML (``remedy_dask/configs/{local,slurm,pbs}.yaml``), site presets
(``configs/sites/*.yaml``, chosen with ``--site``) and a user's ``--cluster-config`` file, applied
in that order.  Any keyword argument of the dask-jobqueue cluster class passes through; keys are
checked against that class's signature, not a fixed list.
"""

from __future__ import annotations

import inspect
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from remedy_dask.errors import ConfigError

KINDS = ("local", "slurm", "pbs")
# keys we interpret ourselves (the rest go to the cluster class)
OWN_KEYS = {"kind", "adaptive", "reservation", "dashboard_address", "security"}
# renamed by dask-jobqueue: refuse the old spelling with the new one
RENAMED = {"extra": "worker_extra_args", "job_extra": "job_extra_directives",
           "env_extra": "job_script_prologue", "header_skip": "job_directives_skip"}
# set by us from the command line or internal to distributed
RESERVED = {"self", "kwargs", "job_kwargs", "base_class_kwargs", "job_cls", "loop", "asynchronous",
            "scheduler", "name", "host", "scheduler_cls", "config_name"}


def _packaged(*parts: str) -> Any:
    return resources.files("remedy_dask").joinpath("configs", *parts)


def site_names() -> list[str]:
    """Names of the packaged site presets."""
    return sorted(p.name[:-5] for p in _packaged("sites").iterdir() if p.name.endswith(".yaml"))


def packaged_yaml(kind: str, site: str | None = None) -> dict[str, Any]:
    """The packaged settings of ``kind`` (or of the site preset ``site``)."""
    entry = _packaged("sites", f"{site}.yaml") if site else _packaged(f"{kind}.yaml")
    if not entry.is_file():
        raise ConfigError(f"--site {site!r} is not a known site; choose one of {site_names()}")
    return yaml.safe_load(entry.read_text()) or {}


def _read_user(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read cluster settings ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: cluster settings must be a mapping of setting: value")
    return data


def jobqueue_class(kind: str) -> type:
    import dask_jobqueue

    return {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster}[kind]


def allowed_keys(kind: str) -> set[str]:
    """Every setting accepted for ``kind``: the cluster class's keyword arguments (cluster, job
    class and the job base class) plus our own keys."""
    if kind == "local":
        from distributed import LocalCluster

        params = set(inspect.signature(LocalCluster).parameters)
        return (params | OWN_KEYS | {"n_workers"}) - RESERVED
    from dask_jobqueue.core import Job

    cls = jobqueue_class(kind)
    params: set[str] = set()
    for fn in (cls.__init__, cls.job_cls.__init__, Job.__init__):
        params |= set(inspect.signature(fn).parameters)
    return (params | OWN_KEYS) - RESERVED - set(RENAMED)


def _check_keys(kind: str, data: dict[str, Any], source: str) -> None:
    for key in data:
        if key in RENAMED:
            raise ConfigError(f"{source}: {key!r} was renamed by dask-jobqueue; use "
                              f"{RENAMED[key]!r}")
    unknown = sorted(set(data) - allowed_keys(kind))
    if unknown:
        hint = "" if kind == "local" else f" (not arguments of {jobqueue_class(kind).__name__})"
        raise ConfigError(f"{source}: unknown cluster settings {unknown}{hint}")
    if data.get("kind", kind) != kind:
        raise ConfigError(f"{source}: settings for kind {data['kind']!r}, not --cluster {kind}")


def cluster_settings(kind: str, path: Path | None = None, site: str | None = None) -> dict[str, Any]:
    """Effective settings of ``kind``: packaged defaults, then the site preset, then ``path``."""
    if kind not in KINDS:
        raise ConfigError(f"no cluster settings for --cluster {kind!r}")
    settings = packaged_yaml(kind)
    layers: list[tuple[str, dict[str, Any]]] = []
    if site:
        layers.append((f"site {site}", packaged_yaml(kind, site)))
    if path is not None:
        layers.append((str(path), _read_user(path)))
    for source, data in layers:
        _check_keys(kind, data, source)
        settings.update(data)
    _check_values(kind, settings, str(path or site or f"{kind}.yaml"))
    if kind != "local":
        settings["worker_extra_args"] = with_lifetime(settings.get("worker_extra_args") or [],
                                                      settings.get("walltime"))
    return settings


def with_lifetime(args: list[str], walltime: str | None) -> list[str]:
    """Worker arguments with ``--lifetime`` / ``--lifetime-stagger`` ending before the walltime
    (so workers retire between tasks, and adaptive scaling replaces them) unless given."""
    args = [str(a) for a in args]
    if not walltime or _option(args, "--lifetime"):
        return args
    wall = walltime_seconds(walltime)
    stagger = min(300, wall // 10)
    lifetime = max(wall - 600, wall // 2) - stagger
    return [*args, "--lifetime", f"{lifetime // 60}m" if lifetime % 60 == 0 else f"{lifetime}s",
            "--lifetime-stagger", f"{stagger}s"]


def walltime_seconds(text: str) -> int:
    """SLURM/PBS walltime ``[D-]HH:MM:SS`` / ``MM:SS`` / ``MM`` in seconds."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", str(text).strip())
    if not m:
        raise ConfigError(f"walltime {text!r} is not [D-]HH:MM:SS")
    days, a, b, c = (int(g) if g else None for g in m.groups())
    if c is not None:
        h, mi, s = a, b, c
    elif b is not None:
        h, mi, s = (a, b, 0) if days else (0, a, b)
    else:
        h, mi, s = 0, a, 0
    return (days or 0) * 86400 + h * 3600 + mi * 60 + s


def duration_seconds(text: str) -> float:
    """A Dask duration (``110m``, ``5 minutes``, ``3600``) in seconds."""
    from dask.utils import parse_timedelta

    try:
        return float(parse_timedelta(text, default="s"))
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{text!r} is not a duration such as 110m or 3600s") from None


def _option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return str(args[i + 1])
        if str(arg).startswith(name + "="):
            return str(arg).split("=", 1)[1]
    return None


def _check_values(kind: str, s: dict[str, Any], source: str) -> None:
    if kind == "local":
        return
    cores, processes = s.get("cores"), s.get("processes")
    if not isinstance(cores, int) or cores < 1:
        raise ConfigError(f"{source}: cores must be a positive integer, not {cores!r}")
    if processes is not None and (not isinstance(processes, int) or not 1 <= processes <= cores):
        raise ConfigError(f"{source}: processes must be an integer from 1 to cores ({cores}), "
                          f"not {processes!r}")
    if s.get("reservation") and kind != "slurm":
        raise ConfigError(f"{source}: reservation is a SLURM setting; on PBS give the "
                          "reservation's queue as queue")
    args = [str(a) for a in s.get("worker_extra_args") or []]
    lifetime = _option(args, "--lifetime")
    if lifetime and s.get("walltime"):
        total = duration_seconds(lifetime) + duration_seconds(_option(args, "--lifetime-stagger") or "0")
        wall = walltime_seconds(s["walltime"])
        if total >= wall:
            raise ConfigError(
                f"{source}: worker --lifetime {lifetime} plus --lifetime-stagger must end before "
                f"the walltime {s['walltime']} (workers would be killed mid-task); shorten the "
                "lifetime in worker_extra_args or lengthen walltime")


def jobqueue_kwargs(kind: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for the dask-jobqueue class (our own keys translated, nulls dropped)."""
    kwargs = {k: v for k, v in settings.items() if k not in OWN_KEYS and v is not None}
    if settings.get("reservation"):
        kwargs["job_extra_directives"] = [*kwargs.get("job_extra_directives", []),
                                          f"--reservation={settings['reservation']}"]
    return kwargs


def job_script(kind: str, settings: dict[str, Any], scheduler: str = "tls://SCHEDULER:8786") -> str:
    """The job script dask-jobqueue would submit for these settings, without starting a
    scheduler or submitting anything."""
    cls = jobqueue_class(kind)
    kwargs = jobqueue_kwargs(kind, settings)
    kwargs.pop("scheduler_options", None)
    kwargs.pop("shared_temp_directory", None)
    kwargs.pop("n_workers", None)
    kwargs.pop("silence_logs", None)
    kwargs.pop("protocol", None)
    job = cls.job_cls(scheduler, name="remedy-worker", **kwargs)
    return job.job_script()


def show(kind: str, site: str | None, path: Path | None) -> str:
    """YAML of the effective settings followed by the job script (for ``config show``)."""
    settings = cluster_settings(kind, path, site)
    text = yaml.safe_dump(settings, sort_keys=False)
    if kind == "local":
        return text
    script = job_script(kind, settings)
    return (f"{text}\n# job script submitted per {settings['processes']} workers "
            f"(the scheduler address and TLS files are filled in at start):\n{script}")
