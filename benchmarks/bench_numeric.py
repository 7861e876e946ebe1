"""Each compiled (numba) helper of ``remedy_dask.numeric`` and ``apply_fiber_to_fiber`` against
the library call that would replace it: same inputs, same result (checked), median wall time of
a few runs after a warm-up, one process, one thread.  Sizes are those of one exposure of a
10-IFU reduction (13440 fibers x 1036 wavelengths) or smaller.

    python benchmarks/bench_numeric.py [--runs 5]

Prints a markdown table (kernel | library call | kernel ms | library ms | ratio); the decisions
are in docs/benchmarks.md.
"""

from __future__ import annotations

from remedy_dask.threads import one_thread_per_process  # noqa: E402

one_thread_per_process()  # before numpy

import argparse  # noqa: E402
import time  # noqa: E402

import bottleneck as bn  # noqa: E402
import numpy as np  # noqa: E402
from numba import njit  # noqa: E402

from remedy_dask.exposure.fiberflat import apply_fiber_to_fiber  # noqa: E402
from remedy_dask.numeric.quickselect import select_kth  # noqa: E402
from remedy_dask.numeric.rowstats import nanmedian_cols, nanmedian_rows  # noqa: E402
from remedy_dask.numeric.sortnet import median_network, sort_lanes  # noqa: E402


def timed(fn, runs: int) -> tuple[object, float]:
    out = fn()  # warm-up (compilation)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times)) * 1e3


@njit(cache=True)
def _tile_quantiles(data, k):  # pragma: no cover - compiled
    out = np.empty(data.shape[0])
    buf = np.empty(data.shape[1])
    for i in range(data.shape[0]):
        buf[:] = data[i]
        out[i] = select_kth(buf, 0, buf.size, k)
    return out


def cases(rng: np.random.Generator) -> list[tuple[str, str, object, object]]:
    n_fib, n_wave = 13440, 1036
    flux = rng.normal(100.0, 10.0, (n_fib, n_wave))
    mask = rng.random(flux.shape) < 0.05
    nanflux = np.where(mask, np.nan, flux)
    cols = np.arange(200, 900)
    rows = np.flatnonzero(rng.random(n_fib) < 0.3)
    tiles = rng.normal(size=(4096, 64 * 64))
    windows = rng.normal(size=(9, 112 * 1032))
    pairs = median_network(9)
    ftf = rng.uniform(0.8, 1.2, flux.shape)
    dead = np.zeros(n_fib, np.uint8)
    out = (np.empty(flux.shape), np.empty(flux.shape), np.empty(flux.shape, bool))
    f32, e32, m8 = flux.astype(np.float32), np.ones(flux.shape, np.float32), mask.view(np.uint8)
    ftf32 = ftf.astype(np.float32)

    def numpy_ftf():
        t = ftf32.astype(np.float64)
        f, e = f32 / t, e32 / t
        return f, e, (m8 != 0) | (dead[:, None] != 0) | ~(t > 0) | ~np.isfinite(f) | ~np.isfinite(e)

    def sorted_lanes():
        b = windows.copy()
        sort_lanes(b, pairs)
        return b[4]

    return [
        ("rowstats.nanmedian_rows (13440 x 700)", "bottleneck.nanmedian(axis=1)",
         lambda: nanmedian_rows(flux, mask, cols), lambda: bn.nanmedian(nanflux[:, cols], axis=1)),
        ("rowstats.nanmedian_rows", "np.nanmedian(axis=1)",
         lambda: nanmedian_rows(flux, mask, cols), lambda: np.nanmedian(nanflux[:, cols], axis=1)),
        ("rowstats.nanmedian_cols (30% of 13440 rows)", "bottleneck.nanmedian(axis=0)",
         lambda: nanmedian_cols(flux, mask, rows), lambda: bn.nanmedian(nanflux[rows], axis=0)),
        ("rowstats.nanmedian_cols", "np.nanmedian(axis=0)",
         lambda: nanmedian_cols(flux, mask, rows), lambda: np.nanmedian(nanflux[rows], axis=0)),
        ("quickselect.select_kth (4096 tiles of 4096)", "np.partition",
         lambda: _tile_quantiles(tiles, 200), lambda: np.partition(tiles, 200, axis=1)[:, 200]),
        ("sortnet.sort_lanes median of 9 (115584 lanes)", "np.median(axis=0)",
         sorted_lanes, lambda: np.median(windows, axis=0)),
        ("fiberflat.apply_fiber_to_fiber (13440 x 1036)", "numpy expression",
         lambda: (apply_fiber_to_fiber(f32, e32, m8, ftf32, dead, *out), out)[1], numpy_ftf),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per call")
    args = parser.parse_args()
    print("| kernel | library call | kernel ms | library ms | library / kernel |")
    print("|---|---|---|---|---|")
    for name, lib, kernel, library in cases(np.random.default_rng(0)):
        a, tk = timed(kernel, args.runs)
        b, tl = timed(library, args.runs)
        a, b = (a, b) if isinstance(a, tuple) else ((a,), (b,))
        same = all(np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
                   for x, y in zip(a, b))
        print(f"| {name} | {lib} | {tk:.1f} | {tl:.1f} | {tl / tk:.2f}"
              f"{'' if same else ' (results differ)'} |")


if __name__ == "__main__":
    main()
