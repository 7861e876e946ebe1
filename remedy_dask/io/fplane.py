"""The focal-plane ("fplane") file: where each IFU slot sits in the HET focal plane.

Whitespace columns, ``#`` starts a comment (whole line or trailing)::

    # IFUSLOT X_FP Y_FP SPECID SPECSLOT IFUID IFUROT PLATESC
    047  -150.0  50.0  037 042 024 0.0 1.00

X_FP, Y_FP are arcsec offsets of the IFU centre from the focal-plane centre.  Remedy (and
``geometry``) put the IFU centre at focal-plane ``(fx, fy) = (Y_FP, X_FP)``.  Slots without a
spectrograph may carry non-positive SPECID/IFUID values; they are kept as read.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from remedy_dask.errors import InputFileError

COLUMNS = ("IFUSLOT", "X_FP", "Y_FP", "SPECID", "SPECSLOT", "IFUID", "IFUROT", "PLATESC")


@dataclass(frozen=True)
class FplaneEntry:
    """One IFU slot of the focal plane."""

    ifuslot: int
    x_fp: float
    y_fp: float
    specid: int
    specslot: int
    ifuid: int
    ifurot: float
    platesc: float


def _parse_int(text: str) -> int:
    value = float(text)
    if not value.is_integer():
        raise ValueError(text)
    return int(value)


def read_fplane(path: str | os.PathLike) -> dict[int, FplaneEntry]:
    """Read an fplane file into ``{ifuslot: FplaneEntry}``.

    Raises :class:`InputFileError` naming the line for a malformed line or a repeated slot, and
    for a file without any entry.
    """
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(str(path), f"cannot read fplane file: {exc}") from None
    entries: dict[int, FplaneEntry] = {}
    where = str(path)
    for number, line in enumerate(lines, start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != len(COLUMNS):
            raise InputFileError(
                where, f"line {number}: expected {len(COLUMNS)} columns "
                f"({' '.join(COLUMNS)}), found {len(fields)}"
            )
        try:
            entry = FplaneEntry(
                ifuslot=_parse_int(fields[0]),
                x_fp=float(fields[1]),
                y_fp=float(fields[2]),
                specid=_parse_int(fields[3]),
                specslot=_parse_int(fields[4]),
                ifuid=_parse_int(fields[5]),
                ifurot=float(fields[6]),
                platesc=float(fields[7]),
            )
        except ValueError:
            raise InputFileError(where, f"line {number}: not numbers: {line.strip()!r}") from None
        values = (entry.x_fp, entry.y_fp, entry.ifurot, entry.platesc)
        if not all(math.isfinite(v) for v in values) or entry.platesc <= 0:
            raise InputFileError(where, f"line {number}: non-finite position, rotation or "
                                 f"non-positive plate scale: {line.strip()!r}")
        if entry.ifuslot in entries:
            raise InputFileError(where, f"line {number}: IFUSLOT {entry.ifuslot:03d} appears twice")
        entries[entry.ifuslot] = entry
    if not entries:
        raise InputFileError(str(path), "fplane file has no entries")
    return entries


def write_fplane(
    path: str | os.PathLike, entries: Mapping[int, FplaneEntry] | Iterable[FplaneEntry]
) -> None:
    """Write an fplane file (sorted by IFU slot) that :func:`read_fplane` reads back exactly."""
    values = entries.values() if isinstance(entries, Mapping) else entries
    rows = ["# " + " ".join(COLUMNS)]
    for e in sorted(values, key=lambda e: e.ifuslot):
        rows.append(
            f"{e.ifuslot:03d} {e.x_fp!r:>10} {e.y_fp!r:>10} {e.specid:03d} {e.specslot:03d} "
            f"{e.ifuid:03d} {e.ifurot!r} {e.platesc!r}"
        )
    Path(path).write_text("\n".join(rows) + "\n")
