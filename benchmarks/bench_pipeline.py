"""End-to-end benchmark: simulate, calibrate and reduce, with per-step shares from the Dask task
stream, peak memory of the whole process tree, the raw-read floor and worker scaling.

    python benchmarks/bench_pipeline.py night  OUT            # 4-IFU night (the demo's size)
    python benchmarks/bench_pipeline.py full   OUT            # 78 IFUs, 936 science amp frames
    python benchmarks/bench_pipeline.py full   OUT --workers 1 2
    python benchmarks/bench_pipeline.py full   OUT --reduce-only   # reuse OUT/cal_<n>w.h5

Results go to OUT/bench_<mode>.json; the numbers in docs/benchmarks.md come from these runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

from remedy_dask.threads import one_thread_per_process

one_thread_per_process()  # as the CLI does, before numpy

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import PeakMemory, save  # noqa: E402

from remedy_dask import cli  # noqa: E402

DATE, OBS = "20190822", 7


def step_shares(client, since: float) -> dict[str, float]:
    """Compute seconds per task prefix since ``since`` (scheduler task stream)."""
    from dask.utils import key_split

    totals: dict[str, float] = defaultdict(float)
    for task in client.get_task_stream(start=since):
        for ss in task.get("startstops", []):
            if ss["action"] == "compute":
                totals[key_split(task["key"])] += ss["stop"] - ss["start"]
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def step_spans(client, since: float) -> dict[str, list[float]]:
    """[first start, last stop] of each task prefix in seconds after ``since``: the timeline
    (e.g. when the last ``sky`` task ends, the spectra of every exposure are done)."""
    from dask.utils import key_split

    spans: dict[str, list[float]] = {}
    for task in client.get_task_stream(start=since):
        for ss in task.get("startstops", []):
            if ss["action"] == "compute":
                span = spans.setdefault(key_split(task["key"]), [np.inf, -np.inf])
                span[0] = min(span[0], ss["start"] - since)
                span[1] = max(span[1], ss["stop"] - since)
    return {k: [round(a, 1), round(b, 1)] for k, (a, b) in sorted(spans.items(),
                                                                     key=lambda kv: kv[1][0])}


def io_floor(raw: Path) -> dict[str, float]:
    """Seconds to read every science amp frame once (header + data), the reduction's floor."""
    from remedy_dask.io.raw import RawArchive
    from remedy_dask.io.rawframe import read_raw_amp

    t0 = time.perf_counter()
    refs = RawArchive(raw).frames(DATE, OBS, kind="sci")
    for ref in refs:
        read_raw_amp(ref)
    return {"frames": len(refs), "seconds": round(time.perf_counter() - t0, 2)}


def run(mode: str, out: Path, workers: list[int], reduce_only: bool = False) -> dict:
    from distributed import Client, LocalCluster

    from remedy_dask.sim import SimConfig, simulate_night, standard_ifuslots

    out.mkdir(parents=True, exist_ok=True)
    slots = (47, 48, 57, 58) if mode == "night" else tuple(standard_ifuslots())
    sim = out / "sim"
    results: dict = {"mode": mode, "ifus": len(slots)}
    if not (sim / "truth").exists():
        # full focal plane: a lean calibration night (3 zro, 1 drk, 2 flt, 1+1 cmp, 2 twi)
        config = None if mode == "night" else SimConfig(
            truth_spectra=False, n_zro=3, n_drk=1, n_flt=2, n_cmp_hg=1, n_cmp_cd=1, n_twi=2)
        t0 = time.perf_counter()
        with PeakMemory() as mem:
            simulate_night(sim, ifuslots=slots, seed=1, tar=True, n_workers=2, config=config)
        results["simulate"] = {"seconds": round(time.perf_counter() - t0, 1),
                               "peak_gb": round(mem.peak_gb, 2)}
    common = ["--fplane", str(sim / "fplane.txt"), "--ifucen", str(sim / "IFUcen_HETDEX.txt")]
    results["io_floor"] = io_floor(sim / "raw")
    for n in workers:
        with LocalCluster(n_workers=n, threads_per_worker=1, dashboard_address=":0") as lc, \
                Client(lc) as client:
            address = lc.scheduler_address
            client.get_task_stream(start=time.time())  # the scheduler records tasks only from here
            cal = out / f"cal_{n}w.h5"
            if not reduce_only:
                t0 = time.time()
                with PeakMemory() as mem:
                    assert cli.main(["--quiet", "calibrate", str(sim / "raw"), "--date", DATE,
                                     "--out", str(cal), "--fiber-locations",
                                     str(sim / "fiber_loc"), "--cluster", address, *common]) == 0
                results[f"calibrate_{n}w"] = {"seconds": round(time.time() - t0, 1),
                                              "peak_gb": round(mem.peak_gb, 2),
                                              "peak_at_s": round(mem.peak_time - t0, 1),
                                              "steps": step_shares(client, t0)}
            if not cal.exists():
                raise SystemExit(f"{cal} does not exist: run without --reduce-only first")
            red = out / f"red_{n}w"
            if red.exists():  # a fresh reduction, not a resumed one
                import shutil

                shutil.rmtree(red)
            t0 = time.time()
            with PeakMemory() as mem:
                assert cli.main(["--quiet", "reduce", DATE, str(OBS), "47", str(cal),
                                 "--rootdir", str(sim / "raw"), "--out", str(red),
                                 "--catalog", str(sim / "ps1_catalog.csv"), "--all-ifus",
                                 "--cluster", address, *common]) == 0
            seconds = round(time.time() - t0, 1)
            spans = step_spans(client, t0)
            results[f"reduce_{n}w"] = {"seconds": seconds,
                                       "peak_gb": round(mem.peak_gb, 2),
                                       "peak_process_gb": round(mem.peak_single_gb, 2),
                                       "peak_at_s": round(mem.peak_time - t0, 1),
                                       "spectra_done_s": spans.get("sky", [0, np.nan])[1],
                                       "steps": step_shares(client, t0), "spans": spans,
                                       "tasks": len(client.get_task_stream(start=t0))}
    frames = results["io_floor"]["frames"]
    for n in workers:
        r = results[f"reduce_{n}w"]
        r["amp_frames_per_s"] = round(frames / r["seconds"], 2)
        r["ratio_to_io_floor"] = round(r["seconds"] / max(results["io_floor"]["seconds"], 1e-9), 1)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["night", "full"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--workers", type=int, nargs="+", default=[2])
    parser.add_argument("--reduce-only", action="store_true",
                        help="skip the calibration and reuse OUT/cal_<n>w.h5")
    args = parser.parse_args()
    results = run(args.mode, args.out, args.workers, args.reduce_only)
    name = f"bench_{args.mode}{'_reduce' if args.reduce_only else ''}.json"
    save(results, args.out / name)


if __name__ == "__main__":
    main()
