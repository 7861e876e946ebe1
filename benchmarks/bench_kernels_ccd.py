"""Time and check the CCD-level kernels: scattered_light, fit_trace, measure_trace_shift.

Plain script: renders simulated amp frames in memory (flat, twilight, science), adds Poisson and
read noise, removes the expected dark, and runs the three kernels, printing a table of CPU time
per call (best of ``--repeat``, one thread) and accuracy against the simulator's truth:

* trace: rms / worst-fiber rms (px) of ``fit_trace`` vs the true trace (live fibers);
* shift: |measured - true| (px) of ``measure_trace_shift`` on science frames;
* scattered light: mean and rms of (model - truth) / truth at the fiber centres (flt, twi) and
  rms in e- (sci, where it is ~1 e-).

Usage: ``/root/venv/bin/python benchmarks/bench_kernels_ccd.py [--amps LL RU] [--repeat 3]``

BLAS/OpenMP threads are pinned to 1 (as ``workflow.cluster`` does for Dask workers) unless the
environment sets them: with several OpenBLAS threads on a busy machine the small dense solves
inside the kernels can stall for 0.1 s and more (spin-waiting threads), which is what makes
unpinned timings 5-10x slower and erratic.
"""

from __future__ import annotations

import argparse
import time

from remedy_dask.threads import one_thread_per_process  # noqa: E402

one_thread_per_process()  # before numpy

import numpy as np  # noqa: E402

from remedy_dask import geometry  # noqa: E402
from remedy_dask.amp.scatter import scattered_light  # noqa: E402
from remedy_dask.sim.config import SimConfig  # noqa: E402
from remedy_dask.sim.inmemory import find_frame  # noqa: E402
from remedy_dask.sim.amp import make_amp_model  # noqa: E402
from remedy_dask.sim.render import (  # noqa: E402
    AmpCache,
    dark_image,
    render_amp_frame,
    upsample_scattered,
)
from remedy_dask.sim.scene import make_plan  # noqa: E402
from remedy_dask.amp.trace.fit import fit_trace  # noqa: E402
from remedy_dask.amp.trace.shift import measure_trace_shift  # noqa: E402


def cpu_time(fn, *args, repeat: int = 3, **kwargs):
    """(result, best CPU seconds of ``repeat`` calls)."""
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.process_time()
        out = fn(*args, **kwargs)
        best = min(best, time.process_time() - t0)
    return out, best


def noisy_frame(plan, model, kind: str, exp: int, rng: np.random.Generator, cache: AmpCache):
    """(image e- with dark removed, variance, true scattered light, frame)."""
    frame = find_frame(plan, kind, exp)
    rendered = render_amp_frame(plan, model, frame, cache)
    dark = dark_image(model, plan.config, frame.darktime)
    expected = rendered.electrons
    image = rng.poisson(np.clip(expected, 0, None)).astype(float)
    image += rng.normal(0.0, model.read_noise, image.shape) - dark
    variance = np.clip(expected, 0, None) + model.read_noise**2
    scat = upsample_scattered(rendered.scattered_coarse, plan.config.scattered_block)
    return image, variance, scat, frame


def at_fibers(image: np.ndarray, trace: np.ndarray) -> np.ndarray:
    rows = np.clip(np.round(trace).astype(int), 0, image.shape[0] - 1)
    return image[rows, np.arange(image.shape[1])[None, :]]


def run_amp(amp: str, ifuslot: int, repeat: int) -> list[tuple[str, str, float, str]]:
    plan = make_plan("20190822", (ifuslot,), 1, 7, SimConfig(), geometry.FRAME_KINDS)
    model = make_amp_model(plan, ifuslot, amp)
    rng = np.random.default_rng(11)
    cache = AmpCache()
    rows: list[tuple[str, str, float, str]] = []
    flat, flat_var, flat_scat, _ = noisy_frame(plan, model, "flt", 1, rng, cache)
    res, t = cpu_time(fit_trace, flat, flat_var, repeat=repeat)
    live = ~res.dead & ~model.dead
    diff = res.trace - model.trace
    per_fiber = np.sqrt(np.mean(diff[live] ** 2, axis=1))
    rows.append((amp, "fit_trace flt", t,
                 f"rms {np.sqrt(np.mean(diff[live]**2)):.4f} px, worst {per_fiber.max():.4f} px, "
                 f"dead ok {np.array_equal(res.dead, model.dead)}"))
    for kind, image, scat in (("flt", flat, flat_scat),
                              ("twi", *noisy_frame(plan, model, "twi", 1, rng, cache)[::2])):
        sl, t = cpu_time(scattered_light, image, model.trace, repeat=repeat)
        truth = at_fibers(scat, model.trace)
        rel = (at_fibers(sl, model.trace) - truth) / truth
        rows.append((amp, f"scattered_light {kind}", t, f"rel mean {rel[live].mean():+.4f}, "
                     f"rel rms {np.sqrt(np.mean(rel[live]**2)):.4f}"))
    for i in range(min(plan.n_sci, 2)):
        image, var, scat, frame = noisy_frame(plan, model, "sci", i + 1, rng, cache)
        shift, t = cpu_time(measure_trace_shift, image, var, None, model.trace, repeat=repeat)
        truth = float(model.trace_shift[frame.sci_index])
        rows.append((amp, f"measure_trace_shift sci{i + 1}", t,
                     f"shift {shift:+.4f} truth {truth:+.4f} err {abs(shift - truth):.4f} px"))
        trace = model.trace + truth
        sl, t = cpu_time(scattered_light, image, trace, repeat=repeat)
        err = at_fibers(sl, trace) - at_fibers(scat, trace)
        rows.append((amp, f"scattered_light sci{i + 1}", t,
                     f"err mean {err[live].mean():+.3f} e-, rms "
                     f"{np.sqrt(np.mean(err[live]**2)):.3f} e- (truth mean "
                     f"{at_fibers(scat, trace)[live].mean():.2f} e-)"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--amps", nargs="+", default=["LL", "RU"])
    parser.add_argument("--ifuslot", type=int, default=47)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"{'amp':4s} {'kernel':28s} {'cpu ms':>8s}  accuracy vs truth")
    for amp in args.amps:
        for amp_, name, t, acc in run_amp(amp, args.ifuslot, args.repeat):
            print(f"{amp_:4s} {name:28s} {1e3 * t:8.1f}  {acc}", flush=True)


if __name__ == "__main__":
    main()
