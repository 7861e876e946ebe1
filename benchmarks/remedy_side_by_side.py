"""Side by side with Remedy: the whole ``remedy-dask reduce`` against Remedy's bare per-amp
CCD + extraction chain, on the same raw frames of an 8-IFU simulated observation (96
amp-exposures), in one run, on ``--workers`` cores (default 2).

    python benchmarks/remedy_side_by_side.py --remedy /path/to/Remedy [--work DIR] [--repeat N]
    REMEDY_SOURCE=/path/to/Remedy python benchmarks/remedy_side_by_side.py --shares

remedy-dask side: the CLI exactly as a user runs it (``remedy-dask reduce ... --all-ifus
--workers 2``, its own local cluster; products, cube and QA page written), in a subprocess;
CPU = user + system of the whole process tree (every worker is reaped), wall = the command.

Remedy side: Remedy's own functions, ``ProcessPoolExecutor`` over amps as its ``--nproc``
does, for each science exposure of each amp (``quick_reduction.py`` loop body, nothing after
extraction): ``base_reduction`` (quick_reduction.py: read from the tar, scalar overscan, trim,
orient, gain, error frame), ``clean_data`` on image and error, ``image -= masterdark * t/360 +
masterbias``, ``get_powerlaw`` (scattered light), ``get_spectra`` and ``get_spectra_error``
(divided by dw) and ``get_spectra_chi2`` (fiber_utils.py).  CPU = the sum of these calls'
``time.process_time`` in the workers.  A second pass "as run" adds what quick_reduction also
does per amp: the master preparation (bias, ``clean_data``, ``get_powerlaw`` on the flat,
arc, twilight and sci masters) and the per-exposure re-extraction of those four masters.

Remedy's inputs (built once, untimed, cached under WORK/remedy_inputs): trace, wavelength
(-> dw), read noise, pixel mask and master bias from remedy-dask's calibration file; master
dark = its dark rate x 360 s (bias-free, as after Remedy's ``masterdark -= masterbias``);
master flat, twilight, arc and sci = per-pixel medians of the night's flt, twi, cmp (both
lamps) and the observation's sci frames reduced by Remedy's ``base_reduction`` (bias
included, as in Remedy's calibration file); the flat used by the bare chain's chi^2 is
prepared by Remedy's own functions.  ``quick_reduction.py`` cannot be imported (argparse and
network imports at module level): its ``orient_image`` and ``base_reduction`` definitions are
compiled alone from the checkout.  Without a checkout, ``remedy_numpy.py`` (written from
shared/remedy-reference.md) stands in for Remedy's functions.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's remedy_dask

from remedy_dask.threads import one_thread_per_process  # noqa: E402

one_thread_per_process()  # both sides single-threaded BLAS, one process per core

import argparse  # noqa: E402
import ast  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import tarfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATE, OBS, TARGET = "20190822", 7, 47
SLOTS = "037,038,046,047,048,057,058,059"
REMEDY_ENV = "REMEDY_SOURCE"
HOW_TO_GET = (f"no Remedy checkout given (--remedy or ${REMEDY_ENV}): timing the numpy "
              "re-implementation benchmarks/remedy_numpy.py instead. To time Remedy itself: "
              "git clone https://github.com/grzeimann/Remedy (measured at d61f47e), pip install "
              "scikit-learn (fiber_utils imports it), pass --remedy PATH.")
_R: SimpleNamespace | None = None  # the timed functions, per worker process


def load_functions(remedy: str | None) -> SimpleNamespace:
    """Remedy's functions from a checkout, or the numpy stand-ins."""
    if not remedy:
        sys.path.insert(0, str(HERE))
        import remedy_numpy as mod
        return SimpleNamespace(**{n: getattr(mod, n) for n in (
            "base_reduction", "clean_data", "get_powerlaw", "get_spectra",
            "get_spectra_error", "get_spectra_chi2")}, source="numpy (remedy_numpy.py)")
    from astropy.io import fits
    from astropy.stats import biweight_location

    if not (Path(remedy) / "fiber_utils.py").is_file():
        raise SystemExit(f"{remedy}: not a Remedy checkout (no fiber_utils.py)")
    sys.path.insert(0, remedy)
    import fiber_utils  # Remedy's
    qr = Path(remedy) / "quick_reduction.py"
    tree = ast.parse(qr.read_text())
    wanted = [n for n in tree.body if isinstance(n, ast.FunctionDef)
              and n.name in ("orient_image", "base_reduction")]
    ns = {"np": np, "fits": fits, "tarfile": tarfile, "biweight_location": biweight_location}
    exec(compile(ast.Module(body=wanted, type_ignores=[]), str(qr), "exec"), ns)
    return SimpleNamespace(
        base_reduction=ns["base_reduction"], clean_data=fiber_utils.clean_data,
        get_powerlaw=fiber_utils.get_powerlaw, get_spectra=fiber_utils.get_spectra,
        get_spectra_error=fiber_utils.get_spectra_error,
        get_spectra_chi2=fiber_utils.get_spectra_chi2, source=f"Remedy checkout {remedy}")


def _init_worker(remedy: str | None) -> None:
    global _R
    _R = load_functions(remedy)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "remedy_dask", "--quiet", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}


def prepare(work: Path, workers: int) -> tuple[Path, Path]:
    """The simulated 8-IFU night (tarred, as at TACC) and its calibration, made once."""
    sim, cal, done = work / "sim", work / "cal.h5", work / "sim.done"
    if not done.exists():
        subprocess.run(_cli("simulate", str(sim), "--ifuslots", SLOTS, "--tar",
                            "--processes", str(workers)), check=True, env=_env())
        done.touch()
    if not cal.exists():
        subprocess.run(_cli("calibrate", str(sim / "raw"), "--date", DATE, "--out", str(cal),
                            "--fiber-locations", str(sim / "fiber_loc"), "--fplane",
                            str(sim / "fplane.txt"), "--ifucen", str(sim / "IFUcen_HETDEX.txt"),
                            "--workers", str(workers)), check=True, env=_env())
    return sim, cal


def _where(ref) -> tuple[str, str | None]:
    """(file name, tar file) as Remedy's ``base_reduction`` takes them."""
    if ref.in_tar:
        return ref.source.member, ref.source.tar_path
    return ref.source, None


def amp_jobs(raw: Path, cal: Path, work: Path) -> list[dict]:
    """One job per amp: its science frames in exposure order, the night's calibration frames."""
    from remedy_dask.io.raw import RawArchive

    archive = RawArchive(raw)
    cals = defaultdict(list)
    for ref in archive.frames_in_window([DATE], ("flt", "twi", "cmp")):
        cals[(ref.ifuslot, ref.amp, ref.kind)].append(_where(ref))
    jobs = defaultdict(lambda: {"sci": []})
    for ref in sorted(archive.frames(DATE, OBS, kind="sci"), key=lambda r: r.exp):
        key = f"{ref.ifuslot:03d}{ref.amp}"
        job = jobs[key]
        job.update(key=key, cal=str(cal), inputs=str(work / "remedy_inputs" / f"{key}.npz"),
                   **{k: cals[(ref.ifuslot, ref.amp, k)] for k in ("flt", "twi", "cmp")})
        job["sci"].append(_where(ref))
    return [jobs[k] for k in sorted(jobs)]


def build_inputs(job: dict) -> str:
    """Remedy's per-amp calibration inputs from the calibration file and the raw frames."""
    from remedy_dask.io.calfile import read_amp

    out = Path(job["inputs"])
    if out.exists():
        return job["key"]
    c = read_amp(job["cal"], job["key"], ("trace", "wavelength", "bias", "dark_rate",
                                           "pixel_mask"), qa=False)

    def master(frames):  # float32, as in Remedy's calibration file
        return np.median([_R.base_reduction(f, tfile=t)[0] for f, t in frames],
                         axis=0).astype(np.float32)

    f32 = {k: c[k].astype(np.float32) for k in ("trace", "wavelength", "bias")}
    pixelmask = c["pixel_mask"].astype(float)  # Remedy: h5 pixelmask * 1.
    flt = master(job["flt"])
    ready = _R.clean_data(flt - f32["bias"], pixelmask)
    ready[:] = ready - _R.get_powerlaw(ready, f32["trace"])
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out.with_suffix(".tmp.npz"), trace=f32["trace"], wave=f32["wavelength"],
             readnoise=c.read_noise, pixelmask=pixelmask, bias=f32["bias"],
             dark=(c["dark_rate"] * 360.0).astype(np.float32), flt=flt, flt_ready=ready,
             twi=master(job["twi"]), cmp=master(job["cmp"]), sci=master(job["sci"]))
    out.with_suffix(".tmp.npz").rename(out)
    return job["key"]


def remedy_amp(job: dict, as_run: bool) -> dict[str, float]:
    """Remedy's chain on every exposure of one amp: CPU seconds per step (summed)."""
    cpu: dict[str, float] = defaultdict(float)
    last = [time.process_time()]

    def tick(step: str) -> None:
        now = time.process_time()
        cpu[step] += now - last[0]
        last[0] = now

    d = dict(np.load(job["inputs"]))
    trace, pixelmask, bias, dark = d["trace"], d["pixelmask"], d["bias"], d["dark"]
    dw = np.diff(d["wave"], axis=1)
    dw = np.hstack([dw[:, :1], dw])
    flat, masters = d["flt_ready"], {}
    tick("load inputs")
    if as_run:  # quick_reduction's master preparation (masterdark -= masterbias done already)
        flat = _R.clean_data(d["flt"] - bias, pixelmask)
        flat[:] = flat - _R.get_powerlaw(flat, trace)
        for name in ("twi", "cmp"):
            m = d[name] - bias
            m[:] = m - _R.get_powerlaw(m, trace)
            masters[name] = _R.clean_data(m, pixelmask)
        m = d["sci"] - dark - bias
        m[:] = m - _R.get_powerlaw(m, trace)
        masters["sci"], masters["flt"] = m, flat
        tick("master preparation")
    for name, tfile in job["sci"]:
        image, error, header = _R.base_reduction(name, tfile=tfile, rdnoise=d["readnoise"],
                                                 get_header=True)
        tick("base_reduction")
        image = _R.clean_data(image, pixelmask)
        error = _R.clean_data(error, pixelmask)
        tick("clean_data")
        fac = header["EXPTIME"] / 360.0
        image[:] = image - dark * (fac if fac >= 0 else 1.0) - bias
        tick("bias+dark")
        image[:] = image - _R.get_powerlaw(image, trace)
        tick("get_powerlaw")
        spec = _R.get_spectra(image, trace) / dw
        tick("get_spectra")
        espec = _R.get_spectra_error(error, trace) / dw
        tick("get_spectra_error")
        chi2 = _R.get_spectra_chi2(flat, image, error, trace)
        tick("get_spectra_chi2")
        if as_run:
            for m in masters.values():
                _R.get_spectra(m, trace) / dw
            tick("re-extract masters")
        if not (np.isfinite(spec).all() and np.isfinite(espec).all() and np.nanmax(chi2) > 0):
            raise RuntimeError(f"{job['key']} {name}: non-finite Remedy spectra")
    return dict(cpu)


def children_cpu() -> float:
    t = os.times()
    return t.children_user + t.children_system


def run_remedy(jobs: list[dict], remedy: str | None, workers: int, as_run: bool) -> dict:
    """Remedy's chain over every amp on ``workers`` processes (fork, as Remedy's pool)."""
    import multiprocessing as mp

    steps: dict[str, float] = defaultdict(float)
    c0, t0 = children_cpu(), time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"),
                             initializer=_init_worker, initargs=(remedy,)) as pool:
        for r in pool.map(remedy_amp, jobs, [as_run] * len(jobs)):
            for k, v in r.items():
                steps[k] += v
    n = sum(len(j["sci"]) for j in jobs)
    timed = {k: v for k, v in steps.items() if k != "load inputs"}
    return {"wall_s": round(time.perf_counter() - t0, 2), "amp_exposures": n,
            "cpu_ms_per_amp_exp": round(1e3 * sum(timed.values()) / n, 1),
            "process_tree_cpu_s": round(children_cpu() - c0, 2),
            "steps_ms_per_amp_exp": {k: round(1e3 * v / n, 1) for k, v in steps.items()}}


def reduce_args(sim: Path, cal: Path, out: Path, *extra: str) -> list[str]:
    return ["reduce", DATE, str(OBS), f"{TARGET:03d}", str(cal), "--rootdir", str(sim / "raw"),
            "--out", str(out), "--fplane", str(sim / "fplane.txt"), "--ifucen",
            str(sim / "IFUcen_HETDEX.txt"), "--catalog", str(sim / "ps1_catalog.csv"), *extra]


def warm_up(sim: Path, cal: Path, out: Path, workers: int) -> None:
    """One untimed reduce of the target IFU alone: fills numba's on-disk cache (a first run
    after an install compiles ~30 CPU-s per process; docs/benchmarks.md, fixed costs)."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(_cli(*reduce_args(sim, cal, out, "--neighbor-dist", "0", "--workers",
                                     str(workers))), check=True, env=_env())


def run_reduce(sim: Path, cal: Path, out: Path, workers: int, n_amp_exp: int) -> dict:
    """The whole ``remedy-dask reduce`` command (local cluster, products and QA)."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)  # a fresh reduction, no checkpoint reused
    cmd = _cli(*reduce_args(sim, cal, out, "--all-ifus", "--workers", str(workers)))
    c0, t0 = children_cpu(), time.perf_counter()
    subprocess.run(cmd, check=True, env=_env())
    wall, cpu = time.perf_counter() - t0, children_cpu() - c0
    if not list(out.glob("*.h5")) or not list(out.rglob("*.html")):
        raise RuntimeError(f"{out}: reduce wrote no product or no QA page")
    return {"wall_s": round(wall, 2), "process_tree_cpu_s": round(cpu, 2),
            "cpu_ms_per_amp_exp": round(1e3 * cpu / n_amp_exp, 1),
            "command": " ".join(cmd[1:])}


def reduce_shares(sim: Path, cal: Path, out: Path, workers: int, n_amp_exp: int) -> dict:
    """One more reduce on a cluster started here: CPU of the workers and of this process
    (CLI + scheduler), and the workers' CPU split by step in proportion to the task seconds
    of the Dask task stream (cluster start and close not included)."""
    import shutil

    from distributed import Client, LocalCluster

    sys.path.insert(0, str(HERE))
    from bench_pipeline import step_shares

    from remedy_dask import cli

    shutil.rmtree(out, ignore_errors=True)
    with LocalCluster(n_workers=workers, threads_per_worker=1, dashboard_address=":0") as lc, \
            Client(lc) as client:
        t0, w0, p0 = time.time(), client.run(time.process_time), time.process_time()
        client.get_task_stream(start=t0)
        assert cli.main(["--quiet", *reduce_args(sim, cal, out, "--all-ifus", "--cluster",
                                                  lc.scheduler_address)]) == 0
        local = time.process_time() - p0
        w1 = client.run(time.process_time)
        tasks = step_shares(client, t0)
    worker_cpu = sum(w1[a] - w0[a] for a in w1)
    total = sum(tasks.values())
    return {"worker_cpu_ms_per_amp_exp": round(1e3 * worker_cpu / n_amp_exp, 1),
            "client_scheduler_cpu_ms_per_amp_exp": round(1e3 * local / n_amp_exp, 1),
            "steps_cpu_ms_per_amp_exp": {k: round(1e3 * worker_cpu * v / total / n_amp_exp, 1)
                                         for k, v in tasks.items() if v >= 0.005 * total},
            "task_seconds": {k: round(v, 2) for k, v in tasks.items() if v > 0}}


def report(run: dict) -> None:
    red, bare = run["reduce"], run["remedy_bare"]
    print(f"reduce (whole command):    {red['cpu_ms_per_amp_exp']:7.1f} CPU-ms/amp-exp, "
          f"wall {red['wall_s']:.1f} s")
    for name in ("remedy_bare", "remedy_as_run"):
        if name in run:
            r = run[name]
            print(f"{name:<26} {r['cpu_ms_per_amp_exp']:7.1f} CPU-ms/amp-exp, wall "
                  f"{r['wall_s']:.1f} s; steps {r['steps_ms_per_amp_exp']}")
    print(f"ratio reduce / Remedy bare: CPU {run['cpu_ratio']:.2f}x, wall "
          f"{red['wall_s'] / bare['wall_s']:.2f}x (target <= 0.5x)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--remedy", default=os.environ.get(REMEDY_ENV),
                   help=f"Remedy checkout (default ${REMEDY_ENV}); without one the numpy "
                        "re-implementation benchmarks/remedy_numpy.py is timed")
    p.add_argument("--work", type=Path, default=Path("/tmp/remedy_side_by_side"),
                   help="folder for the simulated night, calibration, Remedy inputs, products "
                        "and results (~4 GB; simulation, calibration and Remedy's inputs are "
                        "made once, then reused)")
    p.add_argument("--workers", type=int, default=2,
                   help="processes on each side (reduce --workers, Remedy's pool) (default 2)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run both sides this many times, alternating (default 1)")
    p.add_argument("--no-as-run", action="store_true",
                   help="skip Remedy's second pass with its master preparation and master "
                        "re-extraction")
    p.add_argument("--no-warmup", action="store_true",
                   help="skip the untimed one-IFU reduce that fills numba's cache first")
    p.add_argument("--shares", action="store_true",
                   help="also run one reduce on a cluster started here: CPU of the workers "
                        "and of the CLI + scheduler, the workers' CPU per step (Dask task "
                        "stream)")
    args = p.parse_args()
    if not args.remedy:
        print(HOW_TO_GET, file=sys.stderr)
    global _R
    _R = load_functions(args.remedy)
    sim, cal = prepare(args.work, args.workers)
    jobs = amp_jobs(sim / "raw", cal, args.work)
    with ProcessPoolExecutor(args.workers, initializer=_init_worker,
                             initargs=(args.remedy,)) as pool:
        list(pool.map(build_inputs, jobs))
    if not args.no_warmup:
        warm_up(sim, cal, args.work / "warmup", args.workers)
    n = sum(len(j["sci"]) for j in jobs)
    results = {"functions": _R.source, "amps": len(jobs), "amp_exposures": n, "runs": []}
    for i in range(args.repeat):
        run = {"reduce": run_reduce(sim, cal, args.work / "reduce", args.workers, n),
               "remedy_bare": run_remedy(jobs, args.remedy, args.workers, as_run=False)}
        if not args.no_as_run:
            run["remedy_as_run"] = run_remedy(jobs, args.remedy, args.workers, as_run=True)
        run["cpu_ratio"] = round(run["reduce"]["cpu_ms_per_amp_exp"]
                                 / run["remedy_bare"]["cpu_ms_per_amp_exp"], 3)
        print(f"run {i + 1} ({_R.source}, {n} amp-exposures, {args.workers} processes):")
        report(run)
        results["runs"].append(run)
    if args.shares:
        results["reduce_shares"] = reduce_shares(sim, cal, args.work / "reduce_shares",
                                                 args.workers, n)
        print("reduce on a cluster started here:", results["reduce_shares"])
    path = args.work / "side_by_side.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"results written to {path}")


if __name__ == "__main__":
    main()
