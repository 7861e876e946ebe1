"""Figures of the observation QA page (recon mosaic, astrometry, photometry, line stamps)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.collections import EllipseCollection

from remedy_dask import geometry
from remedy_dask.qa.report import plt, save_figure
from remedy_dask.numeric.robust import mad_sigma

if TYPE_CHECKING:
    from remedy_dask.qa.observation import FiberSummary

IFU_HALF = 27.0  # arcsec: half width of a recon panel
PHOTOMETRY_GMAX = 19.0
STAMP_HALF = 40.0  # A


def robust_std(x: np.ndarray) -> float:
    """1.4826 x median absolute deviation of the finite values (NaN if none)."""
    x = np.asarray(x, float)
    x = x[np.isfinite(x)]
    return float(mad_sigma(x)) if x.size else float("nan")


def stretch(g: np.ndarray) -> tuple[np.ndarray, float]:
    """asinh((g - median) / (3 robust sigma)) and the 99.5th percentile (at least 1)."""
    if not np.isfinite(g).any():
        return g, 1.0
    soft = 3.0 * robust_std(g)
    t = np.arcsinh((g - np.nanmedian(g)) / (soft if soft > 0 else 1.0))
    return t, max(float(np.nanpercentile(t, 99.5)), 1.0)


def recon_figure(fs: "FiberSummary", centres: dict[int, tuple[float, float]],
                  marks: dict[str, tuple[np.ndarray, np.ndarray]], path: Path) -> str:
    """Per-IFU panels laid out by IHMP row (up) and column (right); fibers as 1.5" discs.

    One axes holds every IFU, each shifted into its grid cell (a figure of 78 axes spends
    seconds in layout alone), so one collection draws all fibers."""
    from matplotlib.collections import LineCollection

    t, vmax = stretch(fs.gband)
    rc = {s: geometry.slot_row_col(s) for s in centres}
    rows = [r for r, _ in rc.values()] or [0]
    cols = [c for _, c in rc.values()] or [0]
    nr, nc = max(rows) - min(rows) + 1, max(cols) - min(cols) + 1
    cell = 2.0 * IFU_HALF * 1.12  # panel plus gap, arcsec
    shift = {s: ((c - min(cols)) * cell, (r - min(rows)) * cell) for s, (r, c) in rc.items()}
    fig = plt.figure(figsize=(1.7 * nc + 1.2, 1.8 * nr + 0.4))
    ax = fig.add_axes((0.01, 0.01, 0.88, 0.94))
    cax = fig.add_axes((0.91, 0.2, 0.015, 0.6))
    styles = {"sources": dict(marker="x", color="lime", s=25, lw=1.0),
              "catalog": dict(marker="o", facecolor="none", edgecolor="cyan", s=40, lw=0.8),
              "detections": dict(marker="s", facecolor="none", edgecolor="red", s=30, lw=0.8)}
    offsets, values, boxes = [], [], []
    placed: dict[str, list[np.ndarray]] = {name: [] for name in marks}
    for slot, (x0, y0) in centres.items():
        sx, sy = shift[slot]
        m = fs.ifuslot == slot
        offsets.append(np.c_[fs.fx[m] - x0 + sx, fs.fy[m] - y0 + sy])
        values.append(t[m])
        lo_x, hi_x, lo_y, hi_y = sx - IFU_HALF, sx + IFU_HALF, sy - IFU_HALF, sy + IFU_HALF
        boxes.append([(lo_x, lo_y), (hi_x, lo_y), (hi_x, hi_y), (lo_x, hi_y), (lo_x, lo_y)])
        ax.text(sx, hi_y + 1.0, f"{slot:03d}", fontsize=7, ha="center", va="bottom")
        for name, (mx, my) in marks.items():
            inside = (np.abs(mx - x0) < IFU_HALF) & (np.abs(my - y0) < IFU_HALF)
            placed[name].append(np.c_[mx[inside] - x0 + sx, my[inside] - y0 + sy])
    coll = EllipseCollection(geometry.FIBER_DIAMETER, geometry.FIBER_DIAMETER, 0.0, units="xy",
                             offsets=np.concatenate(offsets) if offsets else np.zeros((0, 2)),
                             offset_transform=ax.transData, cmap="gray_r")
    coll.set_array(np.concatenate(values) if values else np.zeros(0))
    coll.set_clim(-1.0, vmax)
    ax.add_collection(coll)
    ax.add_collection(LineCollection(boxes, colors="0.3", linewidths=0.6))
    for name, pieces in placed.items():
        xy = np.concatenate(pieces) if pieces else np.zeros((0, 2))
        if len(xy):
            ax.scatter(xy[:, 0], xy[:, 1], **styles[name])
    ax.set(xlim=(-cell / 2, (nc - 0.5) * cell), ylim=(-cell / 2, (nr - 0.5) * cell),
           aspect="equal")
    ax.axis("off")
    fig.colorbar(coll, cax=cax, label="asinh((g - median) / 3 robust sigma)")
    fig.suptitle("Collapsed 4600-5400 A per fiber (focal plane: fx right, fy up); "
                 "x source, o catalogue, [] detection", fontsize=8)
    return save_figure(fig, path)


def astrometry_figure(dra: np.ndarray, ddec: np.ndarray, path: Path) -> str:
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(dra, ddec, "o", ms=4)
    ax.axhline(0, color="0.7", lw=0.8)
    ax.axvline(0, color="0.7", lw=0.8)
    if np.isfinite(dra).any():
        ax.plot(np.nanmedian(dra), np.nanmedian(ddec), "r+", ms=14, mew=2, label="median")
        ax.legend(fontsize=8)
    lim = max(1.5, float(np.nanmax(np.abs(np.r_[dra, ddec, 0.0]))) * 1.1)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", ylabel="dDec (arcsec)",
           xlabel="measured - catalogue: dRA cos(Dec) (arcsec)")
    return save_figure(fig, path)


def photometry_figure(gcat: np.ndarray, delta: np.ndarray, med: float, scatter: float,
                       path: Path) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    bright = gcat < PHOTOMETRY_GMAX
    ax.plot(gcat[~bright], delta[~bright], ".", color="0.6", label=f"g >= {PHOTOMETRY_GMAX:g}")
    ax.plot(gcat[bright], delta[bright], "o", ms=4, color="C0", label=f"g < {PHOTOMETRY_GMAX:g}")
    if np.isfinite(med):
        ax.axhline(med, color="C3", label=f"median {med:+.3f}, robust sigma {scatter:.3f}")
        ax.axhspan(med - scatter, med + scatter, color="C3", alpha=0.15)
    ax.axhline(0, color="k", lw=0.6)
    ax.set(xlabel="g catalogue (AB)", ylabel="g catalogue - g VIRUS (mag)")
    fin = delta[np.isfinite(delta)]
    if fin.size:
        half = max(0.5, float(np.percentile(np.abs(fin - np.nanmedian(fin)), 95)) * 1.2)
        ax.set_ylim(np.nanmedian(fin) - half, np.nanmedian(fin) + half)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def stamps_figure(wave: np.ndarray, det: dict[str, np.ndarray], top: np.ndarray,
                   spectra: np.ndarray, errors: np.ndarray, path: Path) -> str:
    n = len(top)
    nc = min(4, n)
    nr = int(np.ceil(n / nc))
    fig, axes = plt.subplots(nr, nc, figsize=(2.8 * nc, 2.2 * nr), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, i, spec, err in zip(axes.ravel(), top, spectra, errors):
        w0 = float(det["wave"][i])
        m = np.abs(wave - w0) <= STAMP_HALF
        ax.fill_between(wave[m], spec[m] - err[m], spec[m] + err[m], step="mid", color="C0",
                        alpha=0.25)
        ax.step(wave[m], spec[m], where="mid", color="C0", lw=0.9)
        ax.axvline(w0, color="C3", lw=0.8, ls="--")
        ax.axhline(0, color="k", lw=0.4)
        slot = int(det["ifuslot"][i]) if "ifuslot" in det else -1
        ax.set_title(f"#{i} IFU {slot:03d} {w0:.1f} A S/N {float(det['sn'][i]):.1f}", fontsize=7)
        ax.tick_params(labelsize=6)
    return save_figure(fig, path)
