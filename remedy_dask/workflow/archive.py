"""``remedy-dask reduce-range``: years of nights with a calibration cadence, in one cluster.

The nights ``start`` .. ``end`` are cut into fixed calibration windows of ``cal_window`` days
from ``start``; each window with calibration frames gets one calibration file
(``OUT/cal/cal_{first night}_{N}d.h5``), built once and reused by every later run.  A night
whose window has no usable calibration takes the nearest window's file, and the summary says
so.  Every science observation (of program ``program`` if given) is then reduced into
``OUT/reduced``; an observation whose product exists is not reduced again (its amp-exposures
resume from their checkpoints otherwise).  ``OUT/summary.csv`` has one row per observation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from remedy_dask.errors import RemedyError
from remedy_dask.io.raw import RawArchive
from remedy_dask.io.rawframe import read_primary_header
from remedy_dask.io.summary import product_summary, write_summary
from remedy_dask.requests import RangeRequest
from remedy_dask.workflow.calibration import calibrate
from remedy_dask.workflow.cluster import open_client
from remedy_dask.workflow.science import reduce_night

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Observation:
    """One science observation of the range."""

    date: str
    obs: int
    program: str


def _day(date: str) -> datetime:
    return datetime.strptime(date, "%Y%m%d")


def window_start(date: str, start: str, days: int) -> str:
    """First night of the calibration window of ``date`` (windows of ``days`` from ``start``)."""
    k = (_day(date) - _day(start)).days // days
    return (_day(start) + timedelta(days=k * days)).strftime("%Y%m%d")


def science_observations(archive: RawArchive, start: str, end: str,
                         program: str | None) -> list[Observation]:
    """Science observations of the nights in [start, end] (of ``program`` if given)."""
    found = []
    for date in archive.nights():
        if not start <= date <= end:
            continue
        for obs in archive.observations(date):
            frames = archive.frames(date, obs, kind="sci")
            if not frames:
                continue
            prog = str(read_primary_header(frames[0]).get("QPROG", "")).strip()
            if program is None or prog == program:
                found.append(Observation(date, obs, prog))
    return found


def _calibrations(req: RangeRequest, windows: list[str], client: Any) -> dict[str, Path | str]:
    """{window start: calibration file, or 'failed: reason'}; existing files are reused."""
    out: dict[str, Path | str] = {}
    for first in windows:
        path = req.out / "cal" / f"cal_{first}_{req.cal_window}d.h5"
        if path.exists():
            log.info("reusing the calibration %s", path)
            out[first] = path
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            out[first] = calibrate(req.calibration(first, path), client)
        except RemedyError as exc:
            log.warning("calibration window %s: %s", first, exc)
            out[first] = f"failed: {exc}"
    return out


def _nearest_good(first: str, cals: dict[str, Path | str]) -> tuple[Path | None, str]:
    good = [w for w, c in cals.items() if isinstance(c, Path)]
    if first in good:
        return cals[first], ""  # type: ignore[return-value]
    if not good:
        return None, f"no calibration: {cals.get(first, 'window not calibrated')}"
    near = min(good, key=lambda w: abs((_day(w) - _day(first)).days))
    return cals[near], f"window {first} not calibrated ({cals[first]}); used window {near}"  # type: ignore[return-value]


def run_reduce_range(req: RangeRequest) -> list[dict[str, Any]]:
    """Calibrate each window once, reduce every observation, write ``OUT/summary.csv``."""
    archive = RawArchive(req.rootdir)
    observations = science_observations(archive, req.start, req.end, req.program)
    if not observations:
        raise RemedyError(f"no science observations from {req.start} to {req.end} under "
                          f"{req.rootdir}" + (f" for program {req.program}" if req.program else ""))
    windows = sorted({window_start(o.date, req.start, req.cal_window) for o in observations})
    rows: list[dict[str, Any]] = []
    with open_client(**req.cluster.client_kwargs()) as client:
        cals = _calibrations(req, windows, client)
        for date in sorted({o.date for o in observations}):
            todo = [o for o in observations if o.date == date]
            cal, note = _nearest_good(window_start(date, req.start, req.cal_window), cals)
            rows += _reduce_date(req, date, todo, cal, note, client)
    path = write_summary(rows, req.out / "summary.csv")
    n_ok = sum(r["status"].startswith("ok") for r in rows)
    print(f"reduce-range {req.start}-{req.end}: {n_ok} of {len(rows)} observation(s) reduced; "
          f"summary: {path}")
    return rows


def _reduce_date(req: RangeRequest, date: str, todo: list[Observation], cal: Path | None,
                 note: str, client: Any) -> list[dict[str, Any]]:
    """Rows of one night: existing products reused, the rest reduced together."""
    rows = {o.obs: {"date": date, "obs": o.obs, "program": o.program,
                    "calibration": str(cal) if cal else "", "status": "", "product": ""}
            for o in todo}
    if cal is None:
        for row in rows.values():
            row["status"] = f"failed: {note}"
        return list(rows.values())
    if note:
        log.warning("night %s: %s", date, note)
    product = {o.obs: req.out / "reduced" / f"{date}_{o.obs:07d}.h5" for o in todo}
    missing = tuple(o.obs for o in todo if not product[o.obs].exists())
    results = reduce_night(req.night(date, cal, missing), client) if missing else {}
    for obs, row in rows.items():
        result = results.get(obs, {"product": str(product[obs]), "flags": [], "error": None})
        if not result["product"]:
            row["status"] = f"failed: {result['error']}"
            continue
        status = "ok" if not (note or result["flags"]) else \
            f"ok ({'; '.join([note] * bool(note) + result['flags'][:3])})"
        row.update(product_summary(result["product"]), status=status,
                   product=result["product"])
    return list(rows.values())
