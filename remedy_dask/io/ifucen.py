"""The IFU fiber map ("IFUcen" file): sky position of each of the 448 fibers of an IFU.

Remedy's format: ``HEADER_LINES`` (30) free header lines, then one row per fiber with
whitespace columns ``ID x y unit specfiber throughput``: fiber ID (1..448), x and y (arcsec, IFU
frame), spectrograph unit (``L`` for IDs 1-224, ``R`` for 225-448), fiber number within the
spectrograph (1..224) and relative throughput (optional when reading; 1.0 if absent).

The project ships no data file: :func:`standard_ifucen` generates the standard layout from
``geometry.ifu_fiber_layout()``.  Fiber k of an amp (increasing row) is fiber ID
``geometry.fiber_ids(amp)[k]``; :func:`amp_positions` applies that mapping.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from remedy_dask import geometry
from remedy_dask.errors import InputFileError

HEADER_LINES = 30
FIBERS_PER_UNIT = geometry.N_FIBERS_IFU // 2


@dataclass(frozen=True)
class IfuCen:
    """Fiber map of one IFU; arrays indexed in file order (normally fiber ID - 1)."""

    fiber_id: np.ndarray  # (n,) int
    x: np.ndarray  # (n,) arcsec
    y: np.ndarray  # (n,) arcsec
    unit: np.ndarray  # (n,) str, "L" or "R"
    spec_fiber: np.ndarray  # (n,) int, 1..224
    throughput: np.ndarray  # (n,) relative

    def index_of(self, fiber_ids: np.ndarray) -> np.ndarray:
        """Row indices of the given fiber IDs; ValueError if one is missing."""
        order = np.argsort(self.fiber_id)
        sorted_ids = self.fiber_id[order]
        wanted = np.asarray(fiber_ids)
        pos = np.clip(np.searchsorted(sorted_ids, wanted), 0, len(sorted_ids) - 1)
        missing = sorted_ids[pos] != wanted
        if np.any(missing):
            raise ValueError(f"fiber IDs {wanted[missing][:5].tolist()} are not in the IFUcen map")
        return order[pos]


def standard_ifucen() -> IfuCen:
    """The standard VIRUS IFU map generated from ``geometry.ifu_fiber_layout()``."""
    x, y = geometry.ifu_fiber_layout()
    ids = np.arange(1, geometry.N_FIBERS_IFU + 1)
    left = ids <= FIBERS_PER_UNIT
    return IfuCen(
        fiber_id=ids,
        x=np.asarray(x, dtype=float),
        y=np.asarray(y, dtype=float),
        unit=np.where(left, "L", "R"),
        spec_fiber=np.where(left, ids, ids - FIBERS_PER_UNIT),
        throughput=np.ones(ids.size),
    )


# Known fiber-bundle wiring of particular IFUs (IFUID -> row permutations of the map, 0-based
# rows in ID order), as VIRUS operations documented them: reversed right halves and swapped pairs.
_REVERSED_RIGHT_HALF = (3, 5, 8)
_SWAPPED_ROWS = {7: (37, 38), 25: (208, 213), 30: (445, 446), 38: (302, 303), 41: (251, 252)}


def for_ifuid(ifucen: IfuCen, ifuid: int) -> IfuCen:
    """The map of a specific IFU bundle: ``ifucen`` with that bundle's known row reordering.

    IFUID 004 additionally needs Remedy's ``IFUcen_HETDEX_reverse_R`` layout, which is not
    generated here: pass that file with ``--ifucen`` for data taken with IFU 004.
    """
    x, y = ifucen.x.copy(), ifucen.y.copy()
    if ifuid in _REVERSED_RIGHT_HALF or ifuid == 4:
        half = slice(FIBERS_PER_UNIT, 2 * FIBERS_PER_UNIT)
        x[half], y[half] = x[half][::-1].copy(), y[half][::-1].copy()
    if ifuid in _SWAPPED_ROWS:
        i, j = _SWAPPED_ROWS[ifuid]
        x[[i, j]], y[[i, j]] = x[[j, i]], y[[j, i]]
    return IfuCen(ifucen.fiber_id, x, y, ifucen.unit, ifucen.spec_fiber, ifucen.throughput)


def amp_positions(ifucen: IfuCen, amp: str) -> tuple[np.ndarray, np.ndarray]:
    """IFU-frame (x, y) arcsec of the 112 fibers of ``amp`` in k order (increasing row)."""
    idx = ifucen.index_of(geometry.fiber_ids(amp))
    return ifucen.x[idx], ifucen.y[idx]


def amp_fiber_positions(ifucen: IfuCen, fplane: dict | None, key: str
                        ) -> tuple[np.ndarray, np.ndarray, float, float, str | None]:
    """IFU-frame (x, y) of amp ``key``'s fibers (``047LL``; the slot's bundle wiring applied) and
    the focal-plane centre (fx0, fy0) of its IFU: (Y_FP, X_FP) of the fplane (Remedy's swap), or
    the nominal IHMP grid (100" pitch) with a note when the slot is not in the fplane."""
    slot, amp = int(key[:3]), key[3:]
    entry = fplane.get(slot) if fplane else None
    x, y = amp_positions(for_ifuid(ifucen, entry.ifuid) if entry else ifucen, amp)
    if entry is not None:
        return x, y, entry.y_fp, entry.x_fp, None
    row, col = geometry.slot_row_col(slot)
    note = f"IFU slot {slot:03d} not in an fplane: nominal grid position used"
    return x, y, (col - 5) * 100.0, (row - 5.5) * 100.0, note


def read_ifucen(path: str | os.PathLike, header_lines: int = HEADER_LINES) -> IfuCen:
    """Read an IFUcen file; :class:`InputFileError` naming the line on a malformed row."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(str(path), f"cannot read IFUcen file: {exc}") from None
    where = str(path)
    no_rows = f"IFUcen file has no fiber rows after {header_lines} header lines"
    rows: list[tuple[int, float, float, str, int, float]] = []
    for number, line in enumerate(lines[header_lines:], start=header_lines + 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) not in (5, 6):
            raise InputFileError(
                where, f"line {number}: expected 6 columns (ID x y unit specfiber throughput), "
                f"found {len(fields)}"
            )
        try:
            fid, x, y = int(fields[0]), float(fields[1]), float(fields[2])
            sf = int(fields[4])
            t = float(fields[5]) if len(fields) == 6 else 1.0
        except ValueError:
            raise InputFileError(where, f"line {number}: not numbers: {line.strip()!r}") from None
        if not (np.isfinite(x) and np.isfinite(y) and np.isfinite(t) and t >= 0):
            raise InputFileError(where, f"line {number}: non-finite position or throughput "
                                 f"(or throughput < 0): {line.strip()!r}")
        unit = fields[3].upper()
        if unit not in ("L", "R"):
            raise InputFileError(where, f"line {number}: unit must be L or R, not {fields[3]!r}")
        rows.append((fid, x, y, unit, sf, t))
    if not rows:
        raise InputFileError(where, no_rows)
    ids, xs, ys, units, spec, thr = zip(*rows)
    fiber_id = np.array(ids, dtype=int)
    uniq, counts = np.unique(fiber_id, return_counts=True)
    if np.any(counts > 1):
        raise InputFileError(where, f"fiber IDs repeated: {uniq[counts > 1][:5].tolist()}")
    return IfuCen(
        fiber_id=fiber_id, x=np.array(xs, dtype=float), y=np.array(ys, dtype=float),
        unit=np.array(units), spec_fiber=np.array(spec, dtype=int),
        throughput=np.array(thr, dtype=float),
    )


def write_ifucen(path: str | os.PathLike, ifucen: IfuCen | None = None) -> None:
    """Write an IFUcen file (the standard map by default) in Remedy's format."""
    ifucen = standard_ifucen() if ifucen is None else ifucen
    header = [
        "# VIRUS IFU fiber map written by remedy-dask",
        "# columns: fiber ID, x [arcsec], y [arcsec], unit (L/R), fiber number in spectrograph,",
        "#          relative throughput",
        "# x, y: IFU frame; fiber k of an amp (increasing row) is ID OFFSET[amp] - k with",
        "# OFFSET = LL 224, LU 112, RL 336, RU 448",
    ]
    header += ["#"] * (HEADER_LINES - len(header))
    rows = [
        f"{i:4d} {x:10.4f} {y:10.4f} {u} {s:4d} {t:7.4f}"
        for i, x, y, u, s, t in zip(
            ifucen.fiber_id, ifucen.x, ifucen.y, ifucen.unit, ifucen.spec_fiber, ifucen.throughput
        )
    ]
    Path(path).write_text("\n".join(header + rows) + "\n")
