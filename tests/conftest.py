"""Shared fixtures: small simulated nights written once per test session."""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # as in the pipeline's workers (see remedy_dask/cli.py)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def sci_night(tmp_path_factory):
    """Science exposures only of one IFU (slot 047), written both untarred and tarred."""
    from remedy_dask.sim import simulate_night

    root = tmp_path_factory.mktemp("sci_night")
    simulate_night(root / "plain", ifuslots=(47,), seed=3, science_only=True)
    simulate_night(root / "tarred", ifuslots=(47,), seed=3, science_only=True, tar=True)
    return root


E2E_SLOTS = (47, 48, 57, 58)


def _calibrate_and_reduce(root, target_slot: int, timings: dict, reduce_options: tuple = ()
                          ) -> dict:
    """Calibrate the simulated night in ``root/sim`` and reduce its observation 7 (every IFU)
    through the command line (LocalCluster, 2 workers, the instrument's throughput curve that
    the simulator writes, ``reduce_options`` added); the paths of the night's files."""
    import time

    from remedy_dask import cli

    sim, cal, out = root / "sim", root / "cal.h5", root / "reduced"
    common = ["--fplane", str(sim / "fplane.txt"), "--ifucen", str(sim / "IFUcen_HETDEX.txt")]
    t0 = time.perf_counter()
    assert cli.main(["--quiet", "calibrate", str(sim / "raw"), "--date", "20190822", "--out",
                     str(cal), "--fiber-locations", str(sim / "fiber_loc"), "--workers", "2",
                     *common]) == 0
    timings["calibrate"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert cli.main(["--quiet", "reduce", "20190822", "7", str(target_slot), str(cal),
                     "--rootdir", str(sim / "raw"), "--out", str(out), "--catalog",
                     str(sim / "ps1_catalog.csv"), "--all-ifus", "--workers", "2", *common,
                     "--throughput", str(sim / "throughput.txt"), *reduce_options]) == 0
    timings["reduce"] = time.perf_counter() - t0
    return {"sim": sim, "truth": sim / "truth" / "truth.h5", "cal": cal, "out": out,
            "product": out / "20190822_0000007.h5", "work": out / "work" / "20190822_0000007.zarr",
            "timings": timings}


@pytest.fixture(scope="session")
def e2e(tmp_path_factory):
    """A simulated 4-IFU night, calibrated and reduced through the command line (LocalCluster,
    2 workers): paths of the simulation, calibration file and products."""
    import time

    from remedy_dask.sim import simulate_night

    root = tmp_path_factory.mktemp("e2e")
    t0 = time.perf_counter()
    simulate_night(root / "sim", ifuslots=E2E_SLOTS, seed=11, tar=True, n_workers=2)
    night = _calibrate_and_reduce(root, 47, {"simulate": time.perf_counter() - t0})
    print(f"e2e timings: {night['timings']}")
    return night


HARSH_SLOTS = (57, 58)


@pytest.fixture(scope="session")
def e2e_harsh(tmp_path_factory):
    """A harsh simulated 2-IFU night (``simulate --harsh``, another seed), calibrated and reduced
    through the command line like ``e2e``."""
    import time

    from remedy_dask import cli

    root = tmp_path_factory.mktemp("e2e_harsh")
    t0 = time.perf_counter()
    slots = ",".join(str(s) for s in HARSH_SLOTS)
    assert cli.main(["--quiet", "simulate", str(root / "sim"), "--ifuslots", slots, "--seed",
                     "23", "--harsh", "--tar", "--processes", "2"]) == 0
    night = _calibrate_and_reduce(root, HARSH_SLOTS[0], {"simulate": time.perf_counter() - t0},
                                  ("--performance-report",))
    print(f"e2e_harsh timings: {night['timings']}")
    return {**night, "slots": HARSH_SLOTS}


@pytest.fixture(scope="session")
def e2e_kind(e2e):
    """The e2e night's twilight observation (6) of IFU 047 alone, reduced through the command line
    with ``--kind twi --no-masking --native-spectra`` (Remedy's ``-nt twi -nm``)."""
    import time

    from remedy_dask import cli

    sim, out = e2e["sim"], e2e["out"].parent / "reduced_twi"
    t0 = time.perf_counter()
    status = cli.main(["--quiet", "reduce", "20190822", "6", "47", str(e2e["cal"]), "--rootdir",
                       str(sim / "raw"), "--out", str(out), "--fplane", str(sim / "fplane.txt"),
                       "--ifucen", str(sim / "IFUcen_HETDEX.txt"), "--neighbor-dist", "0",
                       "--kind", "twi", "--no-masking", "--native-spectra", "--cubes", "none",
                       "--workers", "2"])
    print(f"e2e_kind reduce: {time.perf_counter() - t0:.0f} s")
    return {**e2e, "status": status, "out": out, "product": out / "20190822_0000006.h5",
            "work": out / "work" / "20190822_0000006.zarr"}
