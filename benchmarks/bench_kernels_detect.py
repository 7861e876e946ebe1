"""Time ``detect_emission_lines`` on simulated IFUs (448 fibers x 3 dithers x 1036 wavelengths).

Each IFU has Gaussian noise (1e-16 erg/s/cm^2 lines at optimal S/N ~7), a sky with bright lines
(passed as ``sky``), point sources with continua (stars, some with absorption lines; galaxies with
emission lines on their continua), free-floating emission lines, cosmic-ray pixels, bad columns
and a dead fiber in the mask, and one Moffat PSF per exposure.  Prints the median wall time per
IFU over ``--repeat`` runs (after a warm-up that compiles the numba kernels), its split into the
stages of the detection in CPU seconds (each stage function of :mod:`remedy_dask.observation.detect.lines` wrapped
in a timer: robust to a loaded machine),
and the number of candidates and detections.  Numerical libraries run on one thread, as in the
pipeline's Dask workers.

    /root/venv/bin/python benchmarks/bench_kernels_detect.py [--repeat 5] [--seeds 1 2 3]
"""

from __future__ import annotations

import os

from remedy_dask.threads import one_thread_per_process  # noqa: E402

one_thread_per_process()  # before numpy

import argparse  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402

import numpy as np  # noqa: E402
from scipy.special import erf  # noqa: E402

from remedy_dask.observation.detect import lines as detect  # noqa: E402
from remedy_dask.geometry import (  # noqa: E402
    DEF_WAVE,
    DITHER_PATTERN,
    dar_offsets,
    ifu_fiber_layout,
)
from remedy_dask.observation.psf import fiber_integrated_moffat  # noqa: E402
from remedy_dask.observation.sources import inject_source  # noqa: E402

SIGMA = 0.123  # per fiber per pixel noise (1e-17 erg/s/cm^2/A): a 1e-16 line has S/N ~7
STAGES = ("remove_continuum", "_residual_sky", "matched_filter_cube", "_find_peaks",
          "_fit_position", "_measure_line")


def line_profile(l0: float, fwhm: float) -> np.ndarray:
    """Unit-flux Gaussian averaged over each pixel of DEF_WAVE (per A)."""
    edges = np.append(DEF_WAVE - 1.0, DEF_WAVE[-1] + 1.0)
    cdf = 0.5 * (1 + erf((edges - l0) / (np.sqrt(2) * fwhm / 2.3548)))
    return np.diff(cdf) / np.diff(edges)


def simulated_ifu(seed: int, n_lines: int = 12, n_stars: int = 6, n_galaxies: int = 5) -> dict:
    """Keyword arguments of ``detect_emission_lines`` for one simulated IFU."""
    rng = np.random.default_rng(seed)
    x, y = ifu_fiber_layout()
    fx = np.concatenate([x + d[0] for d in DITHER_PATTERN])
    fy = np.concatenate([y + d[1] for d in DITHER_PATTERN])
    exposure = np.repeat(np.arange(len(DITHER_PATTERN)), x.size)
    psfs = [fiber_integrated_moffat(f) for f in (1.7, 1.8, 1.9)]
    dar = dar_offsets(DEF_WAVE)
    n_wave = DEF_WAVE.size
    sky = np.full((fx.size, n_wave), 3.0) * rng.uniform(0.97, 1.03, (fx.size, 1))
    for l0, f in ((4358.3, 40.0), (5460.7, 300.0), (5577.3, 150.0), (3650.2, 25.0)):
        sky += f * line_profile(l0, 5.6)[None, :]
    sigma = np.sqrt(SIGMA**2 + 0.003 * sky)
    flux = np.zeros_like(sky)

    def place() -> tuple[float, float]:
        return rng.uniform(-20, 20), rng.uniform(-20, 20)

    for _ in range(n_stars):  # continua, some with Balmer absorption
        spec = 10 ** rng.uniform(-0.5, 1.0) * (DEF_WAVE / 4500.0) ** rng.uniform(-3, 1)
        for l0 in (3970.1, 4101.7, 4340.5, 4861.3):
            spec *= 1 - 0.3 * rng.uniform() * np.exp(-0.5 * ((DEF_WAVE - l0) / 8.0) ** 2)
        flux = inject_source(flux, fx, fy, *place(), spec, psfs, dar, exposure)
    for _ in range(n_galaxies):  # emission lines on a continuum
        spec = 10 ** rng.uniform(-1.0, 0.3) * np.ones(n_wave)
        z = rng.uniform(0.0, 0.3)
        for l0, f in ((3727.3, 40.0), (4861.3, 20.0), (5006.8, 60.0)):
            if DEF_WAVE[0] + 10 < l0 * (1 + z) < DEF_WAVE[-1] - 10:
                spec += f * rng.uniform(0.5, 1.5) * line_profile(l0 * (1 + z), 6.0)
        flux = inject_source(flux, fx, fy, *place(), spec, psfs, dar, exposure)
    for _ in range(n_lines):  # isolated emission lines, 1-6e-16
        spec = 10 ** rng.uniform(1, np.log10(60)) * line_profile(rng.uniform(3600, 5400),
                                                                 rng.uniform(5.0, 7.0))
        flux = inject_source(flux, fx, fy, *place(), spec, psfs, dar, exposure)
    flux += rng.normal(size=flux.shape) * sigma
    mask = rng.uniform(size=flux.shape) < 1e-3  # cosmic-ray residuals
    flux[mask] += 50.0
    for _ in range(4):  # bad columns: a run of wavelengths in a block of fibers of one amp
        f0, j0 = rng.integers(0, fx.size - 112), rng.integers(0, n_wave - 3)
        mask[f0 : f0 + 112, j0 : j0 + 3] = True
    mask[rng.integers(0, fx.size)] = True  # a dead fiber
    return dict(flux=flux, error=sigma, mask=mask, fiber_x=fx, fiber_y=fy, psf=psfs, dar=dar,
                exposure=exposure, sky=sky)


def _timed(fn, name: str, acc: dict):
    def wrapper(*args, **kwargs):
        t0 = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            acc[name] += time.process_time() - t0
    return wrapper


def run(inputs: dict, repeat: int) -> tuple[float, float, dict, object]:
    """Median wall and CPU time, median CPU time per stage and the table of ``repeat`` runs on
    one IFU."""
    totals, cpus, splits, table = [], [], defaultdict(list), None
    originals = {name: getattr(detect, name) for name in STAGES if hasattr(detect, name)}
    try:
        for _ in range(repeat):
            acc: dict = defaultdict(float)
            for name, fn in originals.items():
                setattr(detect, name, _timed(fn, name, acc))
            t0, c0 = time.perf_counter(), time.process_time()
            table = detect.detect_emission_lines(**inputs)
            totals.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            for name in originals:
                splits[name].append(acc[name])
    finally:
        for name, fn in originals.items():
            setattr(detect, name, fn)
    return (float(np.median(totals)), float(np.median(cpus)),
            {k: float(np.median(v)) for k, v in splits.items()}, table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = ap.parse_args()
    detect.detect_emission_lines(**simulated_ifu(0))  # warm-up: numba compilation, caches
    print("per IFU: wall and CPU seconds; split: CPU seconds per stage (other = the rest)")
    names = " ".join(f"{s.strip('_'):>10.10}" for s in STAGES)
    print(f"{'seed':>4} {'wall':>6} {'cpu':>6}  {names}  other  cand  det")
    for seed in args.seeds:
        inputs = simulated_ifu(seed)
        wall, cpu, split, table = run(inputs, args.repeat)
        other = cpu - sum(split.values())
        print(f"{seed:>4} {wall:6.3f} {cpu:6.3f}  "
              + " ".join(f"{split.get(s, np.nan):10.3f}" for s in STAGES)
              + f"  {other:5.3f}  {table.meta['n_candidates']:4d}  {len(table):3d}", flush=True)
    print(f"load average: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
