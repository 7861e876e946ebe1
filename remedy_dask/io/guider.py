"""Guide-camera data: transparency, image quality and pupil illumination per exposure.

Guider frames live in ``ROOT/YYYYMMDD/gc1/*.tar`` and ``gc2/*.tar`` as FITS members whose names
start with a ``YYYYMMDDThhmmss.s`` timestamp.  For an exposure starting at ``t0`` with exposure
time ``T``, the frames with ``t0 - 10 s <= t <= t0 + T + 10 s`` are used (Remedy dropped the
frames before ``t0`` through ``timedelta.seconds``; this signed window keeps them).  Valid
ranges: TRANSPAR 0.1-1.05, IQ 0.8-4.0 arcsec, PUPILLUM 0-1, tracker X_STRT, Y_STRT +-10 m.  The medians of the valid values are
returned; without frames the defaults are returned and the substitution is reported.
"""

from __future__ import annotations

import logging
import re
import tarfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits

from remedy_dask import geometry

log = logging.getLogger(__name__)

_STAMP = re.compile(r"(\d{8}T\d{6}(?:\.\d+)?)")
VALID = {"TRANSPAR": (0.1, 1.05), "IQ": (0.8, 4.0), "PUPILLUM": (0.0, 1.0),
         "X_STRT": (-10.0, 10.0), "Y_STRT": (-10.0, 10.0)}  # tracker position, m
WINDOW_PAD_S = 10.0
MAX_EXPTIME_S = 86400.0


@dataclass
class GuiderConditions:
    """Conditions during one exposure."""

    transparency: float = geometry.DEFAULT_TRANSPARENCY
    fwhm: float = geometry.DEFAULT_IQ_FWHM
    illumination: float = float("nan")  # PUPILLUM median, recorded (not applied: see docs)
    tracker_x: float = float("nan")  # X_STRT, Y_STRT medians (m): the illumination model's input
    tracker_y: float = float("nan")
    n_frames: int = 0
    notes: list[str] = field(default_factory=list)


def parse_stamp(name: str) -> datetime | None:
    match = _STAMP.search(Path(name).name)
    if not match:
        return None
    text = match.group(1)
    fmt = "%Y%m%dT%H%M%S.%f" if "." in text else "%Y%m%dT%H%M%S"
    try:
        return datetime.strptime(text, fmt)
    except ValueError:
        return None


class GuiderArchive:
    """Index of a night's guider tars (each tar listed once)."""

    def __init__(self, rootdir: str | Path, date: str) -> None:
        self.members: list[tuple[datetime, Path, tarfile.TarInfo]] = []
        night = Path(rootdir) / date
        for tar_path in sorted(night.glob("gc*/*.tar")):
            try:
                with tarfile.open(tar_path) as tar:
                    for info in tar.getmembers():
                        stamp = parse_stamp(info.name)
                        if info.isfile() and info.name.endswith(".fits") and stamp:
                            self.members.append((stamp, tar_path, info))
            except (tarfile.TarError, OSError) as exc:
                log.warning("guider tar %s unreadable: %s", tar_path, exc)
        self.members.sort(key=lambda m: m[0])

    @staticmethod
    def _member_header(open_tars: dict[Path, tarfile.TarFile], tar_path: Path,
                       info: tarfile.TarInfo, bad: list[str]) -> fits.Header | None:
        """The FITS header of one guider member, or None (reason appended to ``bad``)."""
        try:
            tar = open_tars.get(tar_path) or open_tars.setdefault(tar_path, tarfile.open(tar_path))
            fh = tar.extractfile(info)
            if fh is None:
                raise OSError("not a regular member")
            with fh:
                header = fits.Header.fromfile(fh)
            for card in header.cards:
                card.value  # noqa: B018  (astropy parses lazily: a bad card raises here)
            return header
        except Exception as exc:  # noqa: BLE001  (a corrupt guider frame: skipped, reported)
            reason = f"{tar_path}:{info.name}: {type(exc).__name__}: {' '.join(str(exc).split())[:100]}"
            log.warning("guider frame unreadable: %s", reason)
            bad.append(reason)
            return None

    def conditions(self, start: datetime, exptime: float) -> GuiderConditions:
        """Median guider conditions of the exposure starting at ``start``."""
        if not np.isfinite(exptime) or not 0 <= exptime <= MAX_EXPTIME_S:
            raise ValueError(f"exposure time {exptime!r} s is outside [0, {MAX_EXPTIME_S:g}] s")
        lo = start - timedelta(seconds=WINDOW_PAD_S)
        hi = start + timedelta(seconds=exptime + WINDOW_PAD_S)
        values: dict[str, list[float]] = {k: [] for k in VALID}
        n = 0
        bad: list[str] = []
        open_tars: dict[Path, tarfile.TarFile] = {}
        try:
            for stamp, tar_path, info in self.members:
                if not lo <= stamp <= hi:
                    continue
                header = self._member_header(open_tars, tar_path, info, bad)
                if header is None:
                    continue
                n += 1
                for key, (vmin, vmax) in VALID.items():
                    v = header.get(key)
                    if isinstance(v, (int, float)) and vmin <= v <= vmax:
                        values[key].append(float(v))
        finally:
            for tar in open_tars.values():
                tar.close()
        out = GuiderConditions(n_frames=n)
        if bad:
            out.notes.append(f"{len(bad)} unreadable guider frame(s) skipped: {'; '.join(bad[:3])}")
        if n == 0:
            out.notes.append("no guider frames: transparency 1.0 and IQ 1.8\" assumed")
            return out
        if values["TRANSPAR"]:
            out.transparency = float(np.median(values["TRANSPAR"]))
        else:
            out.notes.append("no valid TRANSPAR: 1.0 assumed")
        if values["IQ"]:
            out.fwhm = float(np.median(values["IQ"]))
        else:
            out.notes.append("no valid IQ: 1.8\" assumed")
        if values["PUPILLUM"]:
            out.illumination = float(np.median(values["PUPILLUM"]))
        if values["X_STRT"] and values["Y_STRT"]:
            out.tracker_x = float(np.median(values["X_STRT"]))
            out.tracker_y = float(np.median(values["Y_STRT"]))
        return out
