"""CPU time per step of the per-amp science chain, in one process, without Dask.

Runs the functions of ``remedy_dask.workflow.amp_chain`` in the order the science graph wires
them (ccd -> trace-shift -> scattered-light -> extract -> wave-shift -> ccd-shift -> mask ->
rectify + checkpoint) on the science amp-exposures of a simulated observation, and prints the
CPU milliseconds per amp-exposure of every step (mean over the amp-exposures; each step best of
``--repeat`` calls on the same input).  ``rectify`` (the kernel) and ``checkpoint`` (building the
Dataset and writing the zarr group) are timed apart.  CPU time, not wall time: the numbers stay
meaningful on a loaded machine.  The first amp-exposure is run once untimed (numba, imports).

    python benchmarks/bench_amp_chain.py --work /tmp/bench_chain [-n 12] [--repeat 3]
        [--dump OUT.npz]     # the checkpointed arrays, to compare two versions bit by bit
    python benchmarks/bench_amp_chain.py --compare A.npz B.npz

Without ``--raw``/``--cal`` the script simulates one IFU (slot 047) under ``--work`` with
``remedy-dask simulate`` and calibrates it with ``remedy-dask calibrate --cluster sync`` (a few
minutes, once; later runs reuse them).
"""

from __future__ import annotations

from remedy_dask.threads import one_thread_per_process

one_thread_per_process()  # before numpy, as in the pipeline's workers

import argparse  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

import numpy as np  # noqa: E402

from remedy_dask import geometry  # noqa: E402
from remedy_dask.config import ReductionConfig  # noqa: E402
from remedy_dask.io import store  # noqa: E402
from remedy_dask.io.raw import RawArchive  # noqa: E402
from remedy_dask.workflow import amp_chain as ac  # noqa: E402

DATE, OBS = "20190822", 7
STEPS = ("ccd", "trace-shift", "scattered-light", "extract", "wave-shift", "ccd-shift", "mask",
         "rectify", "checkpoint")
STORED = ("flux", "error", "mask", "native_flux", "native_error", "native_mask",
          "wavelength_native", "rejected_pixels")


def prepare(work: Path, ifuslot: int = 47) -> tuple[Path, Path]:
    """Simulated raw data and its calibration under ``work`` (made once)."""
    raw, cal = work / "sim" / "raw", work / "cal.h5"
    cli = [sys.executable, "-m", "remedy_dask", "--quiet"]
    if not raw.is_dir():
        subprocess.run([*cli, "simulate", str(work / "sim"), "--ifuslots", f"{ifuslot:03d}",
                        "--processes", "1"], check=True)
    if not cal.exists():
        subprocess.run([*cli, "calibrate", str(raw), "--date", DATE, "--out", str(cal),
                        "--cluster", "sync"], check=True)
    return raw, cal


def cpu(times: dict[str, list[float]], step: str, repeat: int, fn: Callable, *args: Any,
        before: Callable[[], Any] | None = None) -> Any:
    """Run ``fn(*args)`` ``repeat`` times, record the best CPU seconds under ``step``;
    ``before`` runs untimed before every call."""
    best, out = np.inf, None
    for _ in range(repeat):
        if before is not None:
            before()
        t0 = time.process_time()
        out = fn(*args)
        best = min(best, time.process_time() - t0)
    times[step].append(best)
    return out


def run_exposure(refs: list, cals: dict, rc: ReductionConfig, root: Path, repeat: int,
                 times: dict[str, list[float]] | None) -> list[dict[str, Any]]:
    """The chain of every amp of one exposure (the two amps of a CCD pool their shifts)."""
    t: dict[str, list[float]] = times if times is not None else defaultdict(list)
    axs, shifts = {}, {}
    for ref in refs:
        key = f"{ref.ifuslot:03d}{ref.amp}"
        ax = cpu(t, "ccd", repeat, ac.ccd, ref, cals[key], ref.exp)
        ax = cpu(t, "trace-shift", repeat, ac.trace_shift, ax, rc)
        ax = cpu(t, "scattered-light", repeat, ac.scattered, ax, rc)
        ax = cpu(t, "extract", repeat, ac.extract, ax, cals[key], rc)
        shifts[key] = cpu(t, "wave-shift", repeat, ac.wave_shift, ax, rc)
        axs[key] = ax
    summaries = []
    for key, ax in axs.items():
        partner = key[:3] + geometry.ccd_partner(key[3:])
        ax = cpu(t, "ccd-shift", repeat, ac.apply_wave_shift, ax, shifts[key],
                 shifts.get(partner), rc)
        ax = cpu(t, "mask", repeat, ac.mask_spectra, ax, cals[key], rc)
        if not ax.failed:
            from remedy_dask.amp.rectify import rectify

            ex = ax.extraction
            cpu(t, "rectify", repeat, rectify, ex.spectrum, ex.error, ex.mask, ax.wavelength)
        summaries.append(cpu(t, "rectify+checkpoint", repeat, ac.rectify_and_store, ax,
                             str(root), f"bench-{key}",
                             before=lambda: _remove_group(root, ax.exp, key)))
    return summaries


def _remove_group(root: Path, exp: int, key: str) -> None:
    """A fresh location for every checkpoint write, as in a first run."""
    shutil.rmtree(store.group_path(root, exp, key), ignore_errors=True)
    store.marker_path(root, exp, key).unlink(missing_ok=True)


def dump(path: Path, root: Path, done: list[tuple[int, str]]) -> None:
    """Every checkpointed array (read back from the store) and the shifts, into one npz."""
    out = {}
    for exp, key in done:
        arrays, attrs = store.read_arrays(root, exp, key, STORED)
        for name, values in arrays.items():
            out[f"exp{exp:02d}_{key}_{name}"] = values
        for name in ("trace_shift", "wave_shift", "wave_shift_error"):
            out[f"exp{exp:02d}_{key}_{name}"] = np.asarray(attrs[name])
    np.savez(path, **out)
    print(f"arrays written to {path}")


def compare(a: Path, b: Path) -> bool:
    """Bit-identity of two dumps (NaNs equal); prints the arrays that differ."""
    da, db = np.load(a), np.load(b)
    same = sorted(da.files) == sorted(db.files)
    for name in sorted(set(da.files) & set(db.files)):
        x, y = da[name], db[name]
        equal = x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f")
        if not equal:
            same = False
            diff = (np.nanmax(np.abs(x.astype(float) - y.astype(float)))
                    if x.shape == y.shape else "shape")
            print(f"differs: {name} {x.dtype}/{y.dtype} max |diff| {diff}")
    print(f"{len(da.files)} arrays: {'bit-identical' if same else 'DIFFERENT'}")
    return same


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_amp_chain"),
                        help="folder of the simulated data, calibration and checkpoints "
                             "(default: %(default)s)")
    parser.add_argument("--raw", type=Path, help="raw-data root (default: simulate under --work)")
    parser.add_argument("--cal", type=Path, help="calibration file (default: calibrate under "
                                                 "--work)")
    parser.add_argument("-n", type=int, default=12,
                        help="timed amp-exposures, whole exposures of 4 amps (default: 12)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="calls per step, the best counts (default: %(default)s)")
    parser.add_argument("--dump", type=Path, help="write the checkpointed arrays to this .npz")
    parser.add_argument("--compare", type=Path, nargs=2, metavar="NPZ",
                        help="only compare two dumps bit by bit")
    args = parser.parse_args()
    if args.compare:
        sys.exit(0 if compare(*args.compare) else 1)
    args.work.mkdir(parents=True, exist_ok=True)
    raw, cal = (args.raw, args.cal) if args.raw and args.cal else prepare(args.work)
    refs = RawArchive(raw).frames(DATE, OBS, kind="sci")
    by_exp: dict[int, list] = defaultdict(list)
    for ref in sorted(refs, key=lambda r: (r.exp, r.ifuslot, r.amp)):
        by_exp[ref.exp].append(ref)
    keys = sorted({f"{r.ifuslot:03d}{r.amp}" for r in refs})
    cals = {key: ac.load_calibration(str(cal), key) for key in keys}
    rc = ReductionConfig()
    root = args.work / "checkpoints"
    exposures = sorted(by_exp)
    run_exposure(by_exp[exposures[0]][:1], cals, rc, root, 1, None)  # warm-up: numba, imports
    times: dict[str, list[float]] = defaultdict(list)
    done: list[tuple[int, str]] = []
    failed: list[str] = []
    while len(done) + len(failed) < args.n:
        exp = exposures[(len(done) // len(keys)) % len(exposures)]
        for summary in run_exposure(by_exp[exp], cals, rc, root, args.repeat, times):
            if summary["failed"]:
                failed.append(f"exp{summary['exp']:02d} {summary['key']}: {summary['failed']}")
            else:
                done.append((summary["exp"], summary["key"]))
    n = len(done) + len(failed)
    print(f"CPU ms per amp-exposure ({n} amp-exposures, best of {args.repeat} per step)")
    print(f"{'step':18s} {'ms':>7s} {'share':>6s}")
    sums = {step: 1e3 * sum(times[step]) / n for step in STEPS[:-1]}
    # rectify_and_store runs the rectify kernel, timed alone above
    sums["checkpoint"] = 1e3 * sum(times["rectify+checkpoint"]) / n - sums["rectify"]
    total = sum(sums.values())
    for step in STEPS:
        print(f"{step:18s} {sums[step]:7.1f} {sums[step] / total:6.1%}")
    print(f"{'total':18s} {total:7.1f}")
    for line in failed:
        print("FAILED", line)
    if args.dump:
        dump(args.dump, root, done)


if __name__ == "__main__":
    main()
