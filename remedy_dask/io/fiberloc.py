"""Per-amp fiber-location reference files: expected fiber rows and dead fibers.

``fiber_loc_{SPECID:03d}_{IFUSLOT:03d}_{IFUID:03d}_{AMP}.txt``: an optional first line
``# value`` (a number whose meaning Remedy does not document; kept as ``header_value``), then one
row per fiber: reference y position (px) and dead flag (0 good, 1 dead or missing).  Other lines
starting with ``#`` and blank lines are ignored.

Files sit directly in a directory or in dated sub-folders ``YYYYMMDD/``
(:func:`find_fiber_location_file`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import date as Date
from pathlib import Path

import numpy as np

from remedy_dask.errors import InputFileError

_DATE_DIR = re.compile(r"^\d{8}$")


@dataclass(frozen=True)
class FiberLocations:
    """Reference fiber rows (px) and dead flags of one amp, in fiber order."""

    y_ref: np.ndarray  # (n,) float
    dead: np.ndarray  # (n,) bool
    header_value: float | None


def fiber_location_name(specid: int, ifuslot: int, ifuid: int, amp: str) -> str:
    """The file name of an amp's fiber-location reference."""
    return f"fiber_loc_{specid:03d}_{ifuslot:03d}_{ifuid:03d}_{amp}.txt"


def read_fiber_locations(path: str | os.PathLike) -> FiberLocations:
    """Read a fiber-location file; :class:`InputFileError` naming the line on a malformed row."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(str(path), f"cannot read fiber-location file: {exc}") from None
    where = str(path)
    header_value: float | None = None
    ys: list[float] = []
    flags: list[bool] = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        if text.startswith("#"):
            if not ys and header_value is None:
                try:
                    header_value = float(text[1:].strip())
                except ValueError:
                    pass  # a plain comment
            continue
        fields = text.split()
        if len(fields) != 2:
            problem = f"line {number}: expected 2 columns (y dead), not {len(fields)}"
            raise InputFileError(where, problem)
        try:
            y, flag = float(fields[0]), float(fields[1])
        except ValueError:
            raise InputFileError(where, f"line {number}: not numbers: {text!r}") from None
        if flag not in (0.0, 1.0) or not np.isfinite(y):
            problem = f"line {number}: y must be finite and dead 0 or 1: {text!r}"
            raise InputFileError(where, problem)
        ys.append(y)
        flags.append(flag == 1.0)
    if not ys:
        raise InputFileError(where, "fiber-location file has no fiber rows")
    return FiberLocations(np.array(ys), np.array(flags, dtype=bool), header_value)


# (SPECID, IFUID, AMP) whose reference files list one row more than the amp has fibers: the last
# row is not a fiber of the amp (Remedy drops the last traced fiber of this amp, which leaves it
# 111; here the extra reference row is dropped before the fibers are numbered, keeping 112)
EXTRA_LAST_ROW = {(504, 18, "RU")}


def locations_for_amp(locations: FiberLocations, path: str | os.PathLike, specid: int,
                      ifuid: int, amp: str, n_fibers: int) -> tuple[FiberLocations, str | None]:
    """The reference rows of an amp's ``n_fibers`` fibers and a note when rows were dropped;
    :class:`InputFileError` for any other row count."""
    n = locations.y_ref.size
    if n == n_fibers:
        return locations, None
    if n == n_fibers + 1 and (specid, ifuid, amp) in EXTRA_LAST_ROW:
        note = (f"{Path(path).name}: {n} rows for {n_fibers} fibers (known for SPECID {specid:03d} "
                f"IFUID {ifuid:03d} {amp}): the last row (y={locations.y_ref[-1]:.2f}) dropped")
        return FiberLocations(locations.y_ref[:n_fibers], locations.dead[:n_fibers],
                              locations.header_value), note
    raise InputFileError(str(path), f"fiber-location file has {n} fiber rows, expected {n_fibers}")


def write_fiber_locations(path: str | os.PathLike, locations: FiberLocations) -> None:
    """Write a fiber-location file that :func:`read_fiber_locations` reads back."""
    rows = [] if locations.header_value is None else [f"# {locations.header_value!r}"]
    rows += [f"{y!r} {int(d)}" for y, d in zip(locations.y_ref.tolist(), locations.dead.tolist())]
    Path(path).write_text("\n".join(rows) + "\n")


def _parse_date(text: str) -> Date | None:
    try:
        return Date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def find_fiber_location_file(
    directory: str | os.PathLike,
    specid: int,
    ifuslot: int,
    ifuid: int,
    amp: str,
    date: str | None = None,
) -> Path | None:
    """The fiber-location file of an amp, or None.

    Without ``date``: ``directory/NAME`` if it exists, else the newest ``directory/YYYYMMDD/NAME``.
    With ``date`` (YYYYMMDD): the dated file nearest in time (the earlier one on a tie), falling
    back to ``directory/NAME``.
    """
    directory = Path(directory)
    name = fiber_location_name(specid, ifuslot, ifuid, amp)
    direct = directory / name
    dated: list[tuple[Date, Path]] = []
    if directory.is_dir():
        for entry in os.scandir(directory):
            if not (_DATE_DIR.match(entry.name) and entry.is_dir()):
                continue
            day = _parse_date(entry.name)
            if day is not None and (Path(entry.path) / name).is_file():
                dated.append((day, Path(entry.path) / name))
    if date is None:
        if direct.is_file():
            return direct
        return max(dated)[1] if dated else None
    target = _parse_date(date) if _DATE_DIR.match(date) else None
    if target is None:
        raise ValueError(f"date must be YYYYMMDD, got {date!r}")
    if dated:
        return min(dated, key=lambda d: (abs((d[0] - target).days), d[0]))[1]
    return direct if direct.is_file() else None
