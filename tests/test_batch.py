"""`remedy-dask sbatch`: the script text, and (with a local SLURM) a submitted job's products;
fail-fast of dask-jobqueue clusters whose jobs cannot start, against the real SLURM."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
import time

import pytest
import yaml

from remedy_dask import cli
from remedy_dask.errors import ConfigError
from remedy_dask.workflow.batch import BatchJob, render


def test_script_for_a_tacc_site(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["sbatch", "reduce", "20190822", "7", "47", "cal file.h5", "--rootdir", "raw",
            "--fplane", "fplane.txt", "--out", "out", "--site", "tacc-stampede3",
            "--account", "AST23001", "--walltime", "01:30:00"]
    assert cli.main(argv) == 0
    script = capsys.readouterr().out
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    header = [ln for ln in lines if ln.startswith("#SBATCH")]
    assert header == ["#SBATCH -J remedy-reduce", "#SBATCH -N 1", "#SBATCH -n 1",
                      "#SBATCH -c 48", "#SBATCH -t 01:30:00", "#SBATCH -p skx",
                      "#SBATCH -A AST23001", "#SBATCH -o remedy-reduce-%j.out",
                      f"#SBATCH -D {tmp_path.resolve()}"]
    assert "WORKERS=48" in lines
    run = shlex.split(lines[-1])
    assert run[:3] == [sys.executable, "-m", "remedy_dask"]
    assert run[3:] == ["reduce", "20190822", "7", "47", "cal file.h5", "--rootdir", "raw",
                       "--fplane", "fplane.txt", "--out", "out", "--cluster", "local",
                       "--workers", "$WORKERS"]
    check = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True,
                           check=False)
    assert check.returncode == 0, check.stderr


def test_generic_script_uses_the_allocation():
    script = render(BatchJob(["simulate", "sim", "--science-only"], partition="debug"))
    assert "#SBATCH -p debug" in script and "#SBATCH -c" not in script
    assert "WORKERS=${SLURM_CPUS_ON_NODE:-1}" in script
    assert script.rstrip().endswith('simulate sim --science-only --processes "$WORKERS"')


@pytest.mark.parametrize("command, fragment", [
    ([], "sbatch needs a command"),
    (["graphs"], "not 'graphs'"),
    (["reduce", "x", "--cluster", "slurm"], "sbatch chooses --cluster itself"),
    (["calibrate", "x", "--workers=3"], "sbatch chooses --workers itself"),
])
def test_bad_commands(command, fragment):
    with pytest.raises(ConfigError, match=fragment):
        render(BatchJob(command))
    with pytest.raises(ConfigError, match="a LocalCluster covers one node"):
        render(BatchJob(["demo"], nodes=2))


def _slurm_or_skip() -> None:
    sinfo = shutil.which("sinfo")
    state = subprocess.run([sinfo, "-h", "-o", "%T"], capture_output=True, text=True) if sinfo else None
    if state is None or state.returncode != 0 or not state.stdout.strip():
        pytest.skip("no SLURM on this machine (.ci/run starts a one-node SLURM when run as root; "
                    "tests/slurm/start_slurm.sh)")


@pytest.mark.slurm
def test_submitted_job_writes_the_products(tmp_path, capsys, monkeypatch):
    _slurm_or_skip()
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sbatch", "simulate", "sim", "--ifuslots", "47", "--science-only",
                     "--partition", "debug", "--cores", "1", "--walltime", "00:10:00",
                     "--submit"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("submitted batch job ")
    job = out.split()[-1]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        q = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True, check=False)
        if not q.stdout.strip():
            break
        time.sleep(2)
    else:
        subprocess.run(["scancel", job], check=False)
        pytest.fail(f"job {job} did not finish within 4 minutes")
    log = (tmp_path / f"remedy-simulate-{job}.out").read_text()
    assert "simulated night written to sim" in log, log
    sci = sorted((tmp_path / "sim" / "raw" / "20190822" / "virus").rglob("*_047??_sci.fits"))
    assert len(sci) == 12  # 3 exposures x 4 amps of IFU slot 47
    assert (tmp_path / "sim" / "truth" / "truth.h5").is_file()


@pytest.mark.slurm
@pytest.mark.parametrize("settings, fragment", [
    ({"queue": "debug", "cores": 64, "processes": 1},
     r"^job \d+ PENDING \(PartitionConfig\) cannot start: .*lower cores/processes"),
    ({"queue": "nosuch", "cores": 1, "processes": 1},
     r"^sbatch rejected the job: .*Invalid partition name specified; change queue"),
])
def test_unstartable_jobs_fail_fast(tmp_path, settings, fragment, capsys):
    """More cores than the node has, or a queue that does not exist: exit 2 within seconds with
    one line naming the job, the reason and the setting to change."""
    _slurm_or_skip()
    from remedy_dask.workflow.cluster import open_client
    from remedy_dask.workflow.jobwatch import ClusterError

    cfg = tmp_path / "slurm.yaml"
    cfg.write_text(yaml.safe_dump({**settings, "memory": "1GB", "walltime": "00:10:00",
                                   "interface": "lo"}))
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match=fragment) as err:
        with open_client("slurm", cluster_config=cfg, quiet=True):
            pass
    assert time.monotonic() - t0 < 30 and "\n" not in str(err.value)
    left = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True).stdout
    assert "remedy-dask" not in left  # the pending job was cancelled on the way out
