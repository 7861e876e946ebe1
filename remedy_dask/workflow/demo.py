"""``remedy-dask demo``: simulate a small night, calibrate it and reduce its observation."""

from __future__ import annotations

import time
from pathlib import Path

DEMO_DATE = "20190822"
DEMO_SLOTS = (47, 48, 57, 58)
DEMO_OBS = 7


def run_demo(out: Path, workers: int | None = None) -> Path:
    """Run the three steps on one LocalCluster-sized machine; returns the observation file."""
    from remedy_dask.requests import CalibrateRequest, ClusterRequest, ReduceRequest
    from remedy_dask.sim import simulate_night
    from remedy_dask.workflow.calibration import run_calibrate
    from remedy_dask.workflow.science import run_reduce

    out = Path(out)
    t0 = time.perf_counter()
    sim_dir = out / "sim"
    if not (sim_dir / "truth").exists():
        print(f"[1/3] simulating a {len(DEMO_SLOTS)}-IFU night into {sim_dir} ...", flush=True)
        simulate_night(sim_dir, date=DEMO_DATE, ifuslots=DEMO_SLOTS, seed=1, tar=True,
                       science_obs=DEMO_OBS, n_workers=workers or 2)
    else:
        print(f"[1/3] using the simulated night in {sim_dir}")
    t1 = time.perf_counter()
    cluster = ClusterRequest("local", workers)
    cal = out / "cal" / f"cal_{DEMO_DATE}.h5"
    print("[2/3] calibrating ...", flush=True)
    run_calibrate(CalibrateRequest(
        rootdir=sim_dir / "raw", date=DEMO_DATE, out=cal, fplane=sim_dir / "fplane.txt",
        ifucen=sim_dir / "IFUcen_HETDEX.txt", fiber_locations=sim_dir / "fiber_loc",
        cluster=cluster))
    t2 = time.perf_counter()
    print("[3/3] reducing the science observation ...", flush=True)
    product = run_reduce(ReduceRequest(
        date=DEMO_DATE, obs=DEMO_OBS, ifuslot=DEMO_SLOTS[0], calfile=cal, rootdir=sim_dir / "raw",
        fplane=sim_dir / "fplane.txt", out=out / "reduced", catalog=sim_dir / "ps1_catalog.csv",
        ifucen=sim_dir / "IFUcen_HETDEX.txt", all_ifus=True, cluster=cluster))
    t3 = time.perf_counter()
    print(f"\ndemo finished in {t3 - t0:.0f} s (simulate {t1 - t0:.0f} s, calibrate {t2 - t1:.0f} s, "
          f"reduce {t3 - t2:.0f} s)")
    print(f"  calibration file : {cal}")
    print(f"  observation file : {product}")
    qa = Path(product).with_name(Path(product).stem + "_qa") / "index.html"
    print(f"  QA report        : {qa}")
    print(f"  calibration QA   : {cal.with_name(cal.stem + '_qa') / 'index.html'}")
    print(f"  IFU FITS / cube  : {', '.join(str(p) for p in sorted(Path(product).parent.glob('*.fits')))}")
    print(f"  truth            : {sim_dir / 'truth'}")
    return Path(product)
