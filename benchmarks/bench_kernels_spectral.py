"""Time the spectral kernels on one simulated amp and check them against the simulator truth.

Times ``fit_trace`` (master of 3 flats: trace and profile), ``extract_optimal`` (a science frame, Poisson
weights; and the master flat, ``poisson=False``), ``extract_aperture`` and ``rectify``: median
wall and CPU time of several runs after a warm-up (numba compilation excluded).  Numerical
libraries run on one thread, as in the pipeline's workers.

    /root/venv/bin/python benchmarks/bench_kernels_spectral.py [--runs 5] [--amp 047LL]
"""

from __future__ import annotations


from remedy_dask.threads import one_thread_per_process  # noqa: E402

one_thread_per_process()  # before numpy

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from scipy.special import ndtr  # noqa: E402

from remedy_dask import geometry  # noqa: E402
from remedy_dask.amp.extract.optimal import extract_aperture, extract_optimal  # noqa: E402
from remedy_dask.amp.rectify import rectify  # noqa: E402
from remedy_dask.amp.trace.fit import fit_trace  # noqa: E402
from remedy_dask.sim import SimConfig, find_frame, render_amp_electrons  # noqa: E402
from remedy_dask.sim.render import dark_image, upsample_scattered  # noqa: E402
from remedy_dask.sim.scene import make_plan  # noqa: E402


def simulated_inputs(ifuslot: int, amp: str, seed: int = 0) -> dict:
    """Master flat (mean of 3, scattered light and dark removed), a science frame, pixel mask,
    and the truth (trace, profile widths, fiber electrons), as in tests/test_extract.py."""
    cfg = SimConfig()
    plan = make_plan("20190822", (ifuslot,), 1, 7, cfg, geometry.FRAME_KINDS)
    rng = np.random.default_rng(seed)

    def frame(kind: str, exp: int):
        expected, _, _, model, rendered = render_amp_electrons(ifuslot, amp, kind, exp, plan=plan)
        background = upsample_scattered(rendered.scattered_coarse, cfg.scattered_block)
        background += dark_image(model, cfg, find_frame(plan, kind, exp).darktime)
        img = rng.poisson(np.maximum(expected, 0)) + rng.normal(0, model.read_noise, expected.shape)
        return img - background, model.read_noise**2 + np.maximum(img, 0), model, rendered

    flats = [frame("flt", e) for e in (1, 2, 3)]
    model = flats[0][2]
    n = geometry.N_ROWS
    mask = np.zeros(n * geometry.N_COLS, bool)
    mask[model.hot_index] = True
    mask = mask.reshape(n, geometry.N_COLS)
    mask[:, model.bad_column] = True
    mask[model.trap_row - 3 :, model.trap_col] = True
    sci, sci_var, _, rendered = frame("sci", 1)
    return dict(
        flat=np.mean([f[0] for f in flats], axis=0),
        flat_var=np.mean([f[1] for f in flats], axis=0) / 3,
        sci=sci, sci_var=sci_var, mask=mask, model=model, truth=rendered.light.counts,
    )


def timed(fn, runs: int) -> tuple[object, float, float]:
    """Result of the last run, median wall and median CPU seconds (after one warm-up run)."""
    out = fn()
    walls, cpus = [], []
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return out, float(np.median(walls)), float(np.median(cpus))


def profile_error(profile, model) -> float:
    """Largest |P_measured - P_true| over offsets -10..10 at a grid of columns and fibers."""
    d = np.linspace(-10, 10, 401)
    worst = 0.0
    for col in (20, 300, 516, 800, 1010):
        for fib in (3, 40, 56, 90, 108):
            s, wf = model.sigma_core[fib, col], model.wing_fraction

            def cdf(x, s=s, wf=wf):
                return wf * ndtr(x / model.sigma_wing) + (1 - wf) * ndtr(x / s)

            true = cdf(d + 0.5) - cdf(d - 0.5)
            worst = max(worst, float(np.max(np.abs(profile.evaluate(d, col, fib) - true))))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--amp", default="047LL", help="IFU slot and amp, e.g. 047LL")
    args = parser.parse_args()
    x = simulated_inputs(int(args.amp[:3]), args.amp[3:])
    model, mask = x["model"], x["mask"]
    trace_sci = model.trace + model.trace_shift[0]
    rows = []
    traced, w, c = timed(lambda: fit_trace(x["flat"], x["flat_var"], mask), args.runs)
    profile = traced.profile
    rows.append(("fit_trace, trace + profile (master flat)", w, c,
                 f"max |P - P_true| = {profile_error(profile, model):.4f}"))
    ext, w, c = timed(
        lambda: extract_optimal(x["sci"], x["sci_var"], mask, trace_sci, profile), args.runs
    )
    ok = ~model.dead[:, None] & ~ext.mask
    rel = ext.spectrum[ok] / x["truth"][ok] - 1
    pull = ((ext.spectrum - x["truth"]) / ext.error)[ok]
    rows.append(("extract_optimal (science)", w, c,
                 f"flux/truth - 1: median {np.median(rel):+.4f}; pulls std {np.std(pull):.3f}"))
    _, w, c = timed(lambda: extract_optimal(x["flat"], x["flat_var"], mask, model.trace, profile,
                                             poisson=False), args.runs)
    rows.append(("extract_optimal (flat, poisson=False)", w, c, ""))
    ap, w, c = timed(lambda: extract_aperture(x["sci"], x["sci_var"], mask, trace_sci), args.runs)
    rows.append(("extract_aperture (science)", w, c, ""))
    wave = model.wavelength(model.wave_shift[0])
    _, w, c = timed(lambda: rectify(ext.spectrum, ext.error, ext.mask, wave), args.runs)
    rows.append(("rectify (science)", w, c, ""))
    print(f"\n{args.amp}, median of {args.runs} runs (one thread)")
    print(f"{'kernel':40s} {'wall ms':>9s} {'cpu ms':>9s}  accuracy")
    for name, wall, cpu, note in rows:
        print(f"{name:40s} {wall * 1e3:9.1f} {cpu * 1e3:9.1f}  {note}")


if __name__ == "__main__":
    main()
