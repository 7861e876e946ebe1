"""QA page of a calibration file: per-amp table and plots of trace, arc, throughput, pixel mask."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from remedy_dask import geometry
from remedy_dask.io import calfile
from remedy_dask.qa.report import Section, plt, save_figure, write_page

_COLUMNS = ["amp", "status", "read noise (e-)", "trace rms med (px)", "trace rms max (px)",
            "arc rms med (A)", "arc rms max (A)", "dead fibers", "masked pixels", "flags"]


FTF_PANELS_PER_ROW = 8  # IFU throughput maps per row of the figure


def calibration_report(cal_path: str | Path, out: str | Path | None = None) -> Path:
    """Write ``<cal>_qa/index.html`` next to the calibration file; returns its path."""
    cal_path = Path(cal_path)
    out = Path(out) if out else cal_path.with_name(cal_path.stem + "_qa") / "index.html"
    figdir = out.parent
    rows, trace_rms, arc_rms, ftf_by_slot, masks = [], {}, {}, {}, {}
    for key in calfile.list_amps(cal_path):
        wanted = ("fiber_to_fiber",) + (("pixel_mask",) if len(masks) < 4 else ())
        cal = calfile.read_amp(cal_path, key, arrays=wanted)  # not the masters: ~0.1 s each
        q = cal.qa
        rows.append([key, cal.status if cal.ok else f"failed: {cal.flags[-1] if cal.flags else ''}",
                     cal.read_noise, q.get("trace_rms_median", np.nan), q.get("trace_rms_max", np.nan),
                     q.get("arc_rms_median", np.nan), q.get("arc_rms_max", np.nan),
                     q.get("n_dead", ""), q.get("masked_pixel_fraction", np.nan),
                     "; ".join(cal.flags)])
        if "trace_rms" in cal.qa_arrays:
            trace_rms[key] = cal.qa_arrays["trace_rms"]
        if "arc_rms" in cal.qa_arrays:
            arc_rms[key] = cal.qa_arrays["arc_rms"]
        if "fiber_to_fiber" in cal.arrays:
            ftf = np.nanmedian(cal["fiber_to_fiber"][:, 200:900], axis=1)
            ftf_by_slot.setdefault(cal.ifuslot, {})[cal.amp] = ftf
        if "pixel_mask" in cal.arrays and len(masks) < 4:
            masks[key] = cal["pixel_mask"]
    sections = [Section("Amplifiers", columns=_COLUMNS, rows=rows)]
    figs = []
    for name, data, unit in (("trace_rms", trace_rms, "px"), ("arc_rms", arc_rms, "A")):
        if data:
            fig, ax = plt.subplots(figsize=(8, 3.5))
            for i, (key, values) in enumerate(sorted(data.items())):
                ax.plot(np.full(len(values), i), values, ".", ms=2, color="C0")
            ax.set_xticks(range(len(data)), sorted(data), rotation=90, fontsize=6)
            ax.set_ylabel(f"{name.replace('_', ' ')} per fiber ({unit})")
            figs.append(save_figure(fig, figdir / f"{name}.png"))
    if ftf_by_slot:
        n = len(ftf_by_slot)
        nc = min(n, FTF_PANELS_PER_ROW)
        nr = -(-n // nc)
        fig, axes = plt.subplots(nr, nc, figsize=(3 * nc, 3 * nr), squeeze=False)
        for ax in axes.ravel()[n:]:
            ax.axis("off")
        xs, ys = geometry.ifu_fiber_layout()
        for ax, (slot, amps) in zip(axes.ravel(), sorted(ftf_by_slot.items())):
            values = np.full(geometry.N_FIBERS_IFU, np.nan)
            for amp, ftf in amps.items():
                values[geometry.fiber_ids(amp) - 1] = ftf
            sc = ax.scatter(xs, ys, c=values, s=12, cmap="viridis", vmin=0.8, vmax=1.2)
            ax.set_title(f"IFU {slot:03d} throughput", fontsize=8)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(sc, ax=axes.ravel().tolist(), shrink=0.8)
        figs.append(save_figure(fig, figdir / "fiber_throughput.png"))
    if masks:
        fig, axes = plt.subplots(1, len(masks), figsize=(3 * len(masks), 3), squeeze=False)
        for ax, (key, mask) in zip(axes[0], sorted(masks.items())):
            ax.imshow(mask, origin="lower", cmap="gray_r", interpolation="nearest")
            ax.set_title(f"{key} pixel mask ({mask.mean():.2%})", fontsize=8)
        figs.append(save_figure(fig, figdir / "pixel_masks.png"))
    sections.append(Section("Plots", figures=figs))
    return write_page(out, f"Calibration QA: {cal_path.name}", sections)
