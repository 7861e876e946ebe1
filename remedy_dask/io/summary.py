"""One summary row per observation product: what ``reduce-range`` tabulates (CSV)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np

SUMMARY_COLUMNS = (
    "date", "obs", "program", "status", "calibration", "n_ifus", "n_exposures",
    "astrometry_n_stars", "astrometry_rms_arcsec", "ra", "dec", "fwhm_arcsec", "transparency",
    "flux_delta_mag", "flux_n_stars", "n_sources", "n_detections", "flags", "product",
)


def _json_attr(h5: h5py.File, name: str) -> Any:
    value = h5.attrs.get(name)
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def product_summary(path: str | Path) -> dict[str, Any]:
    """Astrometry, seeing, transparency, flux zero point and counts of one observation file."""
    with h5py.File(path, "r") as h5:
        astro = dict(h5["astrometry"].attrs) if "astrometry" in h5 else {}
        exps = h5.get("exposures")
        fluxcal = _json_attr(h5, "fluxcal") or {}
        flags = _json_attr(h5, "flags") or []
        return {
            "n_ifus": int(np.unique(h5["fibers/ifuslot"][:]).size),
            "n_exposures": int(exps["exptime"].shape[0]) if exps is not None else 0,
            "astrometry_n_stars": int(astro.get("n_stars", 0)),
            "astrometry_rms_arcsec": float(astro.get("rms", np.nan)),
            "ra": float(astro.get("ra", np.nan)),
            "dec": float(astro.get("dec", np.nan)),
            "fwhm_arcsec": float(np.nanmean(exps["fwhm"][:])) if exps is not None else np.nan,
            "transparency": float(np.nanmean(exps["transparency"][:])) if exps is not None else np.nan,
            "flux_delta_mag": float(fluxcal.get("delta_mag", np.nan)) if isinstance(fluxcal, dict) else np.nan,
            "flux_n_stars": int(fluxcal.get("n_stars", 0)) if isinstance(fluxcal, dict) else 0,
            "n_sources": int(h5["sources/ra"].shape[0]) if "sources/ra" in h5 else 0,
            "n_detections": int(h5["detections/ra"].shape[0]) if "detections/ra" in h5 else 0,
            "flags": len(flags) if isinstance(flags, list) else 0,
        }


def write_summary(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write the rows as CSV (atomically), one column per :data:`SUMMARY_COLUMNS`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in SUMMARY_COLUMNS})
    tmp.replace(path)
    return path
