"""CPU seconds of single nodes of the observation stage (seeing, detection, stars, ...), timed
in one process on their real inputs: those of a reduction whose checkpoints already exist.

    python benchmarks/bench_observation_nodes.py SIM CAL SEED_OUT SCRATCH \\
        [--nodes seeing ifu-detect ifu-stars] [--repeat 3]

The observation graph of ``reduce --all-ifus`` is built as the command builds it (on a copy of
``SEED_OUT/work`` in ``SCRATCH``), the inputs of the named nodes (task-name prefixes) are
computed synchronously once, then every node of each prefix is run ``--repeat`` times;
printed: per prefix the median over the repeats of the summed CPU time of its nodes (one
thread: robust to a loaded machine).  Run it with another checkout first on PYTHONPATH to
time the code before a change on the same inputs.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from remedy_dask.threads import one_thread_per_process

one_thread_per_process()  # as the workers, before numpy

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import seeded_reduction_parser  # noqa: E402

DATE, OBS = "20190822", 7


def build_graph(sim: Path, cal: Path, out: Path) -> dict:
    """The whole graph of ``reduce --all-ifus`` (checkpoints resumed) as a dict."""
    from remedy_dask.cli import reduce_request
    from remedy_dask.cli_parser import build_parser
    from remedy_dask.io.raw import RawArchive
    from remedy_dask.workflow.science import build_reduction

    args = build_parser().parse_args([
        "reduce", DATE, str(OBS), "047", str(cal), "--rootdir", str(sim / "raw"), "--out",
        str(out), "--fplane", str(sim / "fplane.txt"), "--ifucen", str(sim / "IFUcen_HETDEX.txt"),
        "--catalog", str(sim / "ps1_catalog.csv"), "--all-ifus"])
    req = reduce_request(args)
    return dict(build_reduction(req, RawArchive(req.rootdir)).final.__dask_graph__())


def time_nodes(graph: dict, prefixes: list[str], repeat: int) -> dict[str, float]:
    """Median over ``repeat`` runs of the summed CPU seconds of the nodes of each prefix."""
    import dask
    from dask.core import get_dependencies
    from dask.optimization import cull
    from dask.utils import key_split

    nodes = {p: [k for k in graph if key_split(k) == p] for p in prefixes}
    deps = sorted({d for keys in nodes.values() for k in keys for d in get_dependencies(graph, k)},
                  key=str)
    values = dict(zip(deps, dask.get(cull(graph, deps)[0], deps)))
    out = {}
    for prefix, keys in nodes.items():
        runs = []
        for _ in range(repeat + 1):  # the first run warms caches (numba, tables)
            t0 = time.process_time()
            for k in keys:
                graph[k](values)
            runs.append(time.process_time() - t0)
        out[prefix] = float(np.median(runs[1:])) if keys else float("nan")
    return out


def main() -> None:
    parser = seeded_reduction_parser(__doc__)
    parser.add_argument("scratch", type=Path, help="scratch folder (replaced)")
    parser.add_argument("--nodes", nargs="+", default=[
        "ifu-stars", "seeing", "ifu-star-fits", "psf", "ifu-sources", "ifu-detect", "ifu-cube"],
        help="task-name prefixes to time (default: the field calibration, detection, cube)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (default 3)")
    args = parser.parse_args()
    shutil.rmtree(args.scratch, ignore_errors=True)
    shutil.copytree(args.seed / "work", args.scratch / "work")
    cpu = time_nodes(build_graph(args.sim, args.cal, args.scratch), args.nodes, args.repeat)
    for prefix, seconds in cpu.items():
        print(f"{prefix:16s} {seconds:7.3f} CPU-s")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
