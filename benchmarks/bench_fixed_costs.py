"""CPU seconds of the fixed costs of a ``reduce`` of one IFU, and where the rest goes.

Each part in its own fresh process where start-up matters (CPU time of the whole process tree:
meaningful on a loaded machine, unlike wall time):

* ``imports``: the CLI (``remedy_dask.cli``) and what a worker imports for the amp chain;
* ``numba``: one amp-exposure through the chain twice in a fresh process, the first call minus
  the second, with an empty ``NUMBA_CACHE_DIR`` (compilation) and with the cache in place
  (loading it); ``worker cache``: the same first call inside a worker of a local cluster;
* ``cluster``: starting and closing the local cluster of 2 workers (scheduler, nannies, workers);
* ``graph build``: planning and building the whole graph (``science.build_reduction``);
* ``tasks``: the graph run synchronously in one process, CPU seconds per task prefix;
* ``QA``: the observation's QA report;
* ``cli`` (wall seconds, not in the default parts): the phases of the real ``remedy-dask
  reduce`` with and without Dask's performance report.

    python benchmarks/bench_fixed_costs.py --work /tmp/bench_amp_chain [--parts ...]

``--work`` holds the simulated IFU and calibration of ``bench_amp_chain.py`` (made there).
"""

from __future__ import annotations

from remedy_dask.threads import one_thread_per_process

one_thread_per_process()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

import psutil  # noqa: E402

HERE = Path(__file__).resolve().parent
DATE, OBS, SLOT = "20190822", 7, 47
CHAIN_IMPORTS = ("remedy_dask.workflow.amp_chain", "remedy_dask.amp.extract.optimal",
                 "remedy_dask.amp.scatter", "remedy_dask.amp.skyshift",
                 "remedy_dask.amp.trace.shift", "remedy_dask.amp.masking",
                 "remedy_dask.amp.rectify", "remedy_dask.exposure.fiberflat")

_FIRST_SECOND = """
import sys, time, json
sys.path.insert(0, {here!r})
from remedy_dask.threads import one_thread_per_process; one_thread_per_process()
from bench_fixed_costs import chain_once
first = chain_once({raw!r}, {cal!r}, {root!r})
second = chain_once({raw!r}, {cal!r}, {root!r})
print(json.dumps({{"first": first, "second": second}}))
"""


def tree_cpu(proc: psutil.Process | None = None) -> float:
    """CPU seconds (user + system) of a process and its living children."""
    proc = proc or psutil.Process()
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            t = p.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def run_python(code: str, env: dict[str, str] | None = None) -> tuple[str, float]:
    """Run ``code`` in a fresh interpreter: (stdout, CPU seconds of the child)."""
    before = os.times()
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, env={**os.environ, **(env or {})}).stdout
    after = os.times()
    return out, (after.children_user - before.children_user
                 + after.children_system - before.children_system)


def chain_once(raw: str, cal: str, root: str) -> dict[str, float]:
    """CPU seconds per step of one amp-exposure (047LL, exp 1) through the chain."""
    from remedy_dask.config import ReductionConfig
    from remedy_dask.io.raw import RawArchive
    from remedy_dask.workflow import amp_chain as ac

    t: dict[str, float] = {}

    def step(name, fn, *args):
        t0 = time.process_time()
        out = fn(*args)
        t[name] = time.process_time() - t0
        return out

    ref = RawArchive(raw).frames(DATE, OBS, kind="sci", exp=1, ifuslot=SLOT, amp="LL")[0]
    rc = ReductionConfig()
    cal_ = step("load-cal", ac.load_calibration, cal, "047LL")
    ax = step("ccd", ac.ccd, ref, cal_, 1)
    ax = step("trace-shift", ac.trace_shift, ax, rc)
    ax = step("scattered-light", ac.scattered, ax, rc)
    ax = step("extract", ac.extract, ax, cal_, rc)
    own = step("wave-shift", ac.wave_shift, ax, rc)
    ax = step("ccd-shift", ac.apply_wave_shift, ax, own, None, rc)
    ax = step("mask", ac.mask_spectra, ax, cal_, rc)
    step("rectify+checkpoint", ac.rectify_and_store, ax, root, "fixed-costs")
    return t


def part_imports() -> dict[str, float]:
    base, t_python = run_python("pass")
    cli = run_python("import remedy_dask.cli")[1]
    chain = run_python("; ".join(f"import {m}" for m in CHAIN_IMPORTS))[1]
    stack = run_python("import numpy, scipy.linalg, xarray, zarr, numba, distributed")[1]
    return {"python alone": t_python, "import remedy_dask.cli": cli - t_python,
            "import the chain's modules": chain - t_python,
            "of which numpy+scipy+xarray+zarr+numba+distributed": stack - t_python}


def part_numba(raw: Path, cal: Path, work: Path) -> dict[str, float]:
    out = {}
    for label, env in (("cold (empty NUMBA_CACHE_DIR)", {"NUMBA_CACHE_DIR": tempfile.mkdtemp()}),
                       ("cached", {})):
        code = _FIRST_SECOND.format(here=str(HERE), raw=str(raw), cal=str(cal),
                                    root=str(work / "fixed_numba"))
        res = json.loads(run_python(code, env)[0].strip().splitlines()[-1])
        out[f"first - second amp-exposure, {label}"] = (sum(res["first"].values())
                                                         - sum(res["second"].values()))
        if label == "cached":
            out["second amp-exposure (steady state)"] = sum(res["second"].values())
    return out


def part_cluster(raw: Path, cal: Path, work: Path) -> dict[str, float]:
    from remedy_dask.workflow.cluster import open_client

    c0 = tree_cpu()
    with open_client("local", workers=2, quiet=True) as client:
        started = tree_cpu()
        first = client.submit(chain_once, str(raw), str(cal), str(work / "fixed_worker"),
                              pure=False).result()
        second = client.submit(chain_once, str(raw), str(cal), str(work / "fixed_worker"),
                               pure=False).result()
        before_close = time.process_time()
    closed = time.process_time()
    return {"start local cluster, 2 workers (process tree)": started - c0,
            "close it (client and scheduler process)": closed - before_close,
            "worker: first - second amp-exposure (numba cache, imports)":
                sum(first.values()) - sum(second.values())}


def part_cli(raw: Path, cal: Path, work: Path) -> dict[str, float]:
    """Wall seconds of the phases of ``remedy-dask reduce`` (local cluster, 2 workers), with
    and without Dask's performance report (wall: the target is the user's wait)."""
    import contextlib

    from remedy_dask import cli
    from remedy_dask.workflow import science

    res: dict[str, float] = {}
    original = {name: getattr(science, name) for name in
                ("build_reduction", "_compute_with_progress", "_qa_page", "open_client")}

    def timed(name, label):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return original[name](*a, **k)
            finally:
                res[label] = res.get(label, 0.0) + time.perf_counter() - t0
        return wrapper

    @contextlib.contextmanager
    def timed_client(label, *a, **k):
        t0 = time.perf_counter()
        with original["open_client"](*a, **k) as client:
            res[f"{label}: cluster start"] = time.perf_counter() - t0
            yield client
            t0 = time.perf_counter()
        res[f"{label}: cluster close"] = time.perf_counter() - t0

    sim = raw.parent
    for label, report in (("with performance report", True), ("without", False)):
        out = work / "fixed_cli"
        shutil.rmtree(out, ignore_errors=True)
        science.build_reduction = timed("build_reduction", f"{label}: graph build")
        science._compute_with_progress = timed("_compute_with_progress", f"{label}: graph run")
        science._qa_page = timed("_qa_page", f"{label}: QA report (overlaps the close)")
        science.open_client = lambda *a, **k: timed_client(label, *a, **k)
        t0 = time.perf_counter()
        cli.main(["--quiet", "reduce", DATE, str(OBS), f"{SLOT:03d}", str(cal), "--rootdir",
                  str(raw), "--fplane", str(sim / "fplane.txt"), "--catalog",
                  str(sim / "ps1_catalog.csv"), "--out", str(out), "--workers", "2"]
                 + (["--performance-report"] if report else []))
        res[f"{label}: whole reduce (imports excluded)"] = time.perf_counter() - t0
    for name, func in original.items():
        setattr(science, name, func)
    return res


def part_reduce(raw: Path, cal: Path, work: Path) -> dict[str, float]:
    """Graph build, the graph run synchronously (CPU per task prefix), QA."""
    from dask.callbacks import Callback
    from dask.utils import key_split

    from remedy_dask.io.raw import RawArchive
    from remedy_dask.requests import ReduceRequest
    from remedy_dask.workflow.cluster import compute
    from remedy_dask.workflow.science import build_reduction, report

    out = work / "fixed_reduce"
    shutil.rmtree(out, ignore_errors=True)
    sim = raw.parent
    req = ReduceRequest(DATE, OBS, SLOT, cal, raw, sim / "fplane.txt", out,
                        catalog=sim / "ps1_catalog.csv")
    res: dict[str, float] = {}
    t0 = time.process_time()
    red = build_reduction(req, RawArchive(raw))
    res["graph build (plan, headers, catalogue, graph)"] = time.process_time() - t0
    tasks: dict[str, float] = defaultdict(float)
    started: dict[str, float] = {}

    class TaskCPU(Callback):
        def _pretask(self, key, dsk, state):
            started[key] = time.process_time()

        def _posttask(self, key, result, dsk, state, worker_id):
            tasks[key_split(key)] += time.process_time() - started.pop(key)

    t0 = time.process_time()
    with TaskCPU():
        product = compute(red.final, None)
    res["graph run, synchronous (all tasks)"] = time.process_time() - t0
    t0 = time.process_time()
    report(red, product, 0.0)
    res["QA report"] = time.process_time() - t0
    for name, sec in sorted(tasks.items(), key=lambda kv: -kv[1]):
        res[f"  task {name}"] = sec
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_amp_chain"),
                        help="folder of bench_amp_chain.py's simulated IFU and calibration "
                             "(default: %(default)s)")
    parser.add_argument("--parts", nargs="+", default=["imports", "numba", "cluster", "reduce"],
                        choices=["imports", "numba", "cluster", "reduce", "cli"],
                        help="what to measure (default: all)")
    args = parser.parse_args()
    raw, cal = args.work / "sim" / "raw", args.work / "cal.h5"
    if not (raw.is_dir() and cal.exists()):
        sys.exit(f"{args.work}: no sim/raw or cal.h5; run benchmarks/bench_amp_chain.py first")
    results: dict[str, float] = {}
    for part in args.parts:
        if part == "imports":
            results.update(part_imports())
        elif part == "numba":
            results.update(part_numba(raw, cal, args.work))
        elif part == "cluster":
            results.update(part_cluster(raw, cal, args.work))
        elif part == "cli":
            results.update(part_cli(raw, cal, args.work))
        else:
            results.update(part_reduce(raw, cal, args.work))
    print(f"{'seconds':>11s}  part (CPU seconds; wall for the cli part)")
    for name, sec in results.items():
        print(f"{sec:11.2f}  {name}")


if __name__ == "__main__":
    main()
