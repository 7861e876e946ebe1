"""Cluster settings: packaged YAML, TACC site presets, pass-through of dask-jobqueue arguments,
the job script `config show` prints, and safe network defaults."""

from __future__ import annotations

import fnmatch
import tomllib
from importlib import resources
from pathlib import Path

import pytest
import yaml

from remedy_dask import cli
from remedy_dask.config import load_config
from remedy_dask.errors import ConfigError
from remedy_dask.workflow.cluster_settings import cluster_settings, job_script, site_names

ROOT = Path(__file__).resolve().parents[1]
# queue, cores per node (TACC user guides, docs/operations.md)
TACC = {"tacc-stampede3": ("skx", 48), "tacc-frontera": ("small", 56), "tacc-ls6": ("normal", 128)}


def test_packaged_yaml_is_in_the_wheel_patterns():
    """Every file under remedy_dask/configs matches a package-data pattern of pyproject.toml
    (so the wheel carries it) and is read through importlib.resources."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["remedy_dask"]
    files = sorted(p.relative_to(ROOT / "remedy_dask").as_posix()
                   for p in (ROOT / "remedy_dask" / "configs").rglob("*.yaml"))
    assert len(files) == 7
    for f in files:
        assert any(fnmatch.fnmatch(f, pat) and f.count("/") == pat.count("/") for pat in patterns), f
    assert not (ROOT / "configs").exists()
    load_config(Path(str(resources.files("remedy_dask") / "configs" / "reduction.yaml")))
    assert site_names() == sorted(TACC)


@pytest.mark.parametrize("site", sorted(TACC))
def test_tacc_presets_whole_node_no_mem(site):
    s = cluster_settings("slurm", site=site)
    queue, cores = TACC[site]
    assert (s["queue"], s["cores"], s["processes"]) == (queue, cores, cores)
    assert s["interface"] == "ib0" and s["local_directory"] == "/tmp"
    script = job_script("slurm", s)
    header = [ln for ln in script.splitlines() if ln.startswith("#SBATCH")]
    assert "#SBATCH -N 1" in header and f"#SBATCH -p {queue}" in header
    assert f"#SBATCH --cpus-per-task={cores}" in header and "#SBATCH -t 02:00:00" in header
    assert not any("--mem" in ln for ln in header)
    assert f"--nworkers {cores}" in script and "--nthreads 1" in script
    assert "--interface ib0" in script and "--local-directory /tmp" in script
    # workers retire 10 minutes before the 2-hour walltime: 105 min +- 300 s
    assert "--lifetime 105m --lifetime-stagger 300s" in script


def test_any_jobqueue_argument_passes_through(tmp_path):
    f = tmp_path / "site.yaml"
    f.write_text(yaml.safe_dump({
        "account": "AST23001", "reservation": "virus_run", "walltime": "01:00:00",
        "log_directory": "logs", "job_directives_skip": ["--mem"], "job_cpu": 4,
        "worker_extra_args": ["--lifetime", "50m", "--lifetime-stagger", "2m"],
        "scheduler_options": {"port": 0}, "job_script_prologue": ["module load python3"],
    }))
    s = cluster_settings("slurm", f, site="tacc-ls6")
    assert s["scheduler_options"] == {"port": 0} and s["queue"] == "normal"
    script = job_script("slurm", s)
    for line in ("#SBATCH -A AST23001", "#SBATCH --reservation=virus_run",
                 "#SBATCH -o logs/remedy-dask-%J.out", "#SBATCH --cpus-per-task=4",
                 "module load python3"):
        assert line in script.splitlines()
    assert "--lifetime 50m --lifetime-stagger 2m" in script and "--mem=" not in script


@pytest.mark.parametrize("text, fragment", [
    ("queu: skx\n", "unknown cluster settings ['queu'] (not arguments of SLURMCluster)"),
    ("env_extra: []\n", "'env_extra' was renamed by dask-jobqueue; use 'job_script_prologue'"),
    ("kind: pbs\n", "settings for kind 'pbs', not --cluster slurm"),
    ("processes: 64\n", "processes must be an integer from 1 to cores (16)"),
    ("walltime: '01:00:00'\nworker_extra_args: [--lifetime, 2h]\n",
     "worker --lifetime 2h plus --lifetime-stagger must end before the walltime 01:00:00"),
    ("walltime: soon\n", "walltime 'soon' is not [D-]HH:MM:SS"),
    ("- a\n- b\n", "must be a mapping"),
])
def test_bad_settings_are_one_line_errors(tmp_path, text, fragment):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError) as err:
        cluster_settings("slurm", f)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_unknown_site_is_refused():
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["config", "show", "--cluster", "slurm", "--site", "nope"])


def test_config_show_prints_settings_and_job_script(capsys):
    assert cli.main(["config", "show", "--cluster", "slurm", "--site", "tacc-stampede3"]) == 0
    out = capsys.readouterr().out
    settings, _, script = out.partition("#!/usr/bin/env bash")
    shown = yaml.safe_load(settings)
    assert shown["queue"] == "skx" and shown["job_directives_skip"] == ["--mem"]
    assert "#SBATCH -p skx" in script and "#SBATCH -N 1" in script and "--mem=" not in script
    assert cli.main(["config", "show", "--cluster", "local"]) == 0
    local = yaml.safe_load(capsys.readouterr().out)
    assert local["dashboard_address"] == "127.0.0.1:8787" and local["security"] is True


def test_local_cluster_is_tls_on_localhost():
    """The default LocalCluster: TLS scheduler and dashboard on 127.0.0.1 only."""
    from remedy_dask.workflow.cluster import open_client

    with open_client("local", workers=1, quiet=True) as client:
        assert client.scheduler.address.startswith("tls://127.0.0.1:")
        assert client.dashboard_link.startswith("http://127.0.0.1:")
        assert client.submit(sum, [1, 2]).result() == 3
        info = client.scheduler_info()
        assert all(w.startswith("tls://127.0.0.1:") for w in info["workers"])


def test_plain_tcp_warns_what_it_exposes(caplog):
    import logging

    from distributed import LocalCluster

    from remedy_dask.workflow.cluster import open_client

    with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=":0",
                      processes=False, protocol="tcp://", host="127.0.0.1") as lc, \
            caplog.at_level(logging.WARNING, logger="remedy_dask.workflow.cluster"), \
            open_client(lc.scheduler_address, quiet=True) as client:
        assert client.submit(sum, [2, 2]).result() == 4
    assert "plain tcp://" in caplog.text and "run any code as you on the workers" in caplog.text


def test_tls_needs_certificates(tmp_path):
    from remedy_dask.workflow.cluster import open_client

    with pytest.raises(ConfigError, match="a tls:// scheduler needs --tls-ca-file"):
        with open_client("tls://127.0.0.1:9"):
            pass
    with pytest.raises(ConfigError, match="go together"):
        with open_client("tls://127.0.0.1:9", tls_ca_file=tmp_path / "ca.pem"):
            pass
    with pytest.raises(ConfigError, match="ca.pem: --tls-ca-file file not found"):
        with open_client("tls://127.0.0.1:9", tls_ca_file=tmp_path / "ca.pem",
                         tls_cert=tmp_path / "c.pem", tls_key=tmp_path / "k.pem"):
            pass


def test_local_processes_setting_true_false_auto():
    from remedy_dask.errors import ConfigError
    from remedy_dask.workflow.cluster import THREADED_MAX_AMP_EXPOSURES, use_processes

    assert use_processes(True, 12) and not use_processes(False, 10_000)
    assert not use_processes("auto", 12)  # one IFU x 4 amps x 3 exposures: threads
    assert not use_processes("auto", THREADED_MAX_AMP_EXPOSURES)
    assert use_processes("auto", THREADED_MAX_AMP_EXPOSURES + 1)
    assert use_processes("auto", None)  # size unknown (calibrate, reduce-night): processes
    with pytest.raises(ConfigError, match="processes must be true, false or auto"):
        use_processes("maybe", 12)
