"""Where the graph runs must not change the answer: synchronous scheduler, LocalCluster, an
existing scheduler (tcp://) and SLURM through dask-jobqueue give bit-identical products."""

from __future__ import annotations

import shutil
import subprocess

import h5py
import numpy as np
import pytest
import yaml

from remedy_dask import cli

pytestmark = pytest.mark.e2e
DATASETS = ("fibers/spectrum", "fibers/error", "fibers/sky", "fibers/mask", "fibers/ra",
            "detections/flux", "sources/spectrum")


def _reduce(e2e, out, cluster, *extra):
    sim = e2e["sim"]
    args = ["--quiet", "reduce", "20190822", "7", "47", str(e2e["cal"]), "--rootdir",
            str(sim / "raw"), "--out", str(out), "--catalog", str(sim / "ps1_catalog.csv"),
            "--fplane", str(sim / "fplane.txt"), "--neighbor-dist", "0", "--cluster", cluster,
            *extra]
    assert cli.main(args) == 0
    with h5py.File(out / "20190822_0000007.h5") as h5:
        return {name: h5[name][...] for name in DATASETS}


@pytest.fixture(scope="module")
def sync_product(e2e, tmp_path_factory):
    return _reduce(e2e, tmp_path_factory.mktemp("sync"), "sync")


def _assert_identical(a, b):
    for name in DATASETS:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_local_cluster_equals_synchronous(e2e, sync_product, tmp_path):
    """A reduce of one IFU (12 amp-exposures) runs its workers as threads of the remedy-dask
    process (``processes: auto``); the products are the same."""
    _assert_identical(sync_product, _reduce(e2e, tmp_path, "local", "--workers", "2"))
    log = (tmp_path / "remedy-dask.log").read_text()
    assert "local cluster: one worker with 2 threads in this process" in log


def test_local_cluster_of_processes_equals_synchronous(e2e, sync_product, tmp_path):
    """``processes: true``: worker processes, whatever the size; the same products."""
    cfg = tmp_path / "processes.yaml"
    cfg.write_text("processes: true\n")
    _assert_identical(sync_product, _reduce(e2e, tmp_path / "out", "local", "--workers", "2",
                                            "--cluster-config", str(cfg)))
    log = (tmp_path / "out" / "remedy-dask.log").read_text()
    assert "local cluster: one worker with" not in log


def test_existing_scheduler_by_address(e2e, sync_product, tmp_path):
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=":0") as lc:
        _assert_identical(sync_product, _reduce(e2e, tmp_path, lc.scheduler_address))


def test_slurm_through_dask_jobqueue(e2e, sync_product, tmp_path):
    sinfo = shutil.which("sinfo")
    state = subprocess.run([sinfo, "-h", "-o", "%T"], capture_output=True, text=True) if sinfo else None
    if state is None or state.returncode != 0 or not state.stdout.strip():
        pytest.skip("no SLURM on this machine (.ci/run starts a one-node SLURM when run as root; "
                    "tests/slurm/start_slurm.sh)")
    cfg = tmp_path / "slurm.yaml"
    cfg.write_text(yaml.safe_dump({
        "queue": "debug", "cores": 1, "processes": 1, "memory": "3GB", "walltime": "00:20:00",
        "interface": "lo", "local_directory": str(tmp_path / "scratch"),
        "log_directory": str(tmp_path / "logs"),  # the jobs' slurm-ID.out, not in the checkout
    }))
    product = _reduce(e2e, tmp_path / "out", "slurm", "--workers", "2", "--cluster-config", str(cfg))
    _assert_identical(sync_product, product)


def test_workers_get_the_malloc_thresholds():
    """Every worker of a cluster we open runs the set-up plugin (glibc malloc thresholds that
    keep large temporaries in the heap), and so does the process of ``--cluster sync``."""
    from remedy_dask.workflow import worker_setup
    from remedy_dask.workflow.cluster import open_client

    with open_client("local", workers=1, dashboard_address=":0", quiet=True) as client:
        assert list(client.run(worker_setup.malloc_tuned).values()) == [True]
    with open_client("sync"):
        assert worker_setup.malloc_tuned()


def test_only_the_comm_size_probe_warning_is_dropped(caplog):
    """distributed's comm layer probes message sizes with a -1 default and offloads deeply
    nested messages by design; that warning is dropped, any other sizeof failure still shows."""
    import logging

    from distributed.sizeof import safe_sizeof

    from remedy_dask.workflow.worker_setup import quiet_comm_size_probe

    quiet_comm_size_probe()
    quiet_comm_size_probe()  # idempotent
    deep: dict = {}
    node = deep
    for _ in range(400):
        node["x"] = {}
        node = node["x"]
    with caplog.at_level(logging.WARNING, logger="distributed.sizeof"):
        assert safe_sizeof(deep, default_size=-1) == -1
        assert not caplog.records
        assert safe_sizeof(deep) == 10**6
        assert len(caplog.records) == 1 and "Defaulting to 0.95 MiB" in caplog.text
    assert len(logging.getLogger("distributed.sizeof").filters) == 1
