"""The per-observation stage alone (after the amp chains and the skies): CPU seconds per task
prefix and their timeline, on a reduction whose checkpoints already exist.

    python benchmarks/bench_observation_stage.py SIM CAL SEED_OUT RUN_OUT [--repeat N]

``SEED_OUT`` is the ``--out`` of a finished ``reduce --all-ifus`` of SIM (its ``work/`` holds
the amp-exposure and sky checkpoints); each repeat copies it to ``RUN_OUT`` and reduces again
on a 2-worker cluster started here, so only the observation stage (not checkpointed) runs.
The products of the last repeat stay in ``RUN_OUT``; the numbers go to ``RUN_OUT.json``.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from remedy_dask.threads import one_thread_per_process

one_thread_per_process()  # as the CLI does, before numpy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pipeline import DATE, OBS, step_shares, step_spans  # noqa: E402
from common import save, seeded_reduction_parser  # noqa: E402

from remedy_dask import cli  # noqa: E402


def one_run(sim: Path, cal: Path, seed: Path, out: Path, workers: int) -> dict:
    """Copy the seed reduction, reduce it again, return the task stream's CPU and spans."""
    from distributed import Client, LocalCluster

    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(seed / "work", out / "work")
    with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0") as lc, \
            Client(lc) as client:
        t0 = time.time()
        client.get_task_stream(start=t0)
        assert cli.main(["--quiet", "reduce", DATE, str(OBS), "047", str(cal), "--rootdir",
                         str(sim / "raw"), "--out", str(out), "--fplane",
                         str(sim / "fplane.txt"), "--ifucen", str(sim / "IFUcen_HETDEX.txt"),
                         "--catalog", str(sim / "ps1_catalog.csv"), "--all-ifus", "--cluster",
                         lc.scheduler_address]) == 0
        wall = time.time() - t0
        return {"wall_s": round(wall, 2),
                "steps": {k: round(v, 3) for k, v in step_shares(client, t0).items() if v > 0},
                "spans": step_spans(client, t0)}


def main() -> None:
    parser = seeded_reduction_parser(__doc__)
    parser.add_argument("out", type=Path, help="output folder of the timed reductions")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs (default 1)")
    parser.add_argument("--workers", type=int, default=2, help="workers (default 2)")
    args = parser.parse_args()
    runs = [one_run(args.sim, args.cal, args.seed, args.out, args.workers)
            for _ in range(args.repeat)]
    for r in runs:
        print(f"wall {r['wall_s']} s;", ", ".join(f"{k} {v:.2f}" for k, v in r["steps"].items()
                                                  if v >= 0.05))
    save({"runs": runs}, args.out.with_suffix(".json"))


if __name__ == "__main__":
    main()
