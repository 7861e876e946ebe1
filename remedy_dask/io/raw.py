"""Discover and read raw VIRUS amplifier frames, in folders or in tars (conventions: docs/design.md).

Layouts under ``ROOT``::

    ROOT/YYYYMMDD/virus/virusNNNNNNN/expNN/virus/FILE.fits    # untarred
    ROOT/YYYYMMDD/virus/virusNNNNNNN.tar                       # tarred, members:
        virusNNNNNNN/expNN/virus/FILE.fits                     # (relative paths)

``FILE`` is ``{YYYYMMDD}T{hhmmss.s}_{IFUSLOT:03d}{AMP}_{KIND}.fits``.  Files and members whose names
or paths do not match are ignored and listed in one log warning per observation.

*Both layouts for one observation*: the frames are merged by (exposure, file name); where the same
frame exists in both, the **untarred file wins** (it is what a user extracted, perhaps to fix it).
Nothing is dropped when a folder holds only part of a tar.

*Tars* are opened and indexed once per :class:`RawArchive` (member name -> data offset and size);
a :class:`FrameRef` carries the tar path, member name, offset and size so that any process reads
the member with one seek + read and never lists or extracts the tar.  Only uncompressed tars can
be read in place; a compressed one raises :class:`RawDataError`.

Reading one frame (header, image, binned frames) is :mod:`remedy_dask.io.rawframe`.
"""

from __future__ import annotations

import logging
import os
import re
import tarfile
import threading
from pathlib import Path

from astropy.io import fits

from remedy_dask import geometry
from remedy_dask.errors import RawDataError
from remedy_dask.io.slot_history import physical_slot
from remedy_dask.io.rawframe import FrameRef, TarMember, read_primary_header

log = logging.getLogger(__name__)

FILE_NAME = re.compile(
    r"^(?P<stamp>(?P<date>\d{8})T\d{6}(?:\.\d+)?)_(?P<ifuslot>\d{3})(?P<amp>LL|LU|RL|RU)"
    r"_(?P<kind>zro|drk|flt|cmp|twi|sci)\.fits$"
)
MEMBER_PATH = re.compile(r"^(?:\./)?virus(?P<obs>\d{7})/exp(?P<exp>\d{2,})/virus/(?P<name>[^/]+)$")
OBS_DIR = re.compile(r"^virus(\d{7})$")
OBS_TAR = re.compile(r"^virus(\d{7})\.tar$")
EXP_DIR = re.compile(r"^exp(\d{2,})$")
NIGHT_DIR = re.compile(r"^\d{8}$")

_AMP_ORDER = {amp: i for i, amp in enumerate(geometry.AMPS)}


def frame_ref_from_path(path: str | os.PathLike) -> FrameRef:
    """A :class:`FrameRef` for one FITS file; date/obs/exp come from its folders when present."""
    p = Path(path)
    match = FILE_NAME.match(p.name)
    if match is None:
        raise RawDataError(
            str(p), "file name is not {YYYYMMDD}T{hhmmss.s}_{IFUSLOT}{AMP}_{KIND}.fits"
        )
    parts = p.parts
    obs = exp = 0
    date = match["date"]
    in_layout = len(parts) >= 6 and parts[-2] == "virus"
    exp_match = EXP_DIR.match(parts[-3]) if in_layout else None
    obs_match = OBS_DIR.match(parts[-4]) if in_layout else None
    if exp_match and obs_match:
        exp, obs = int(exp_match.group(1)), int(obs_match.group(1))
        if NIGHT_DIR.match(parts[-6]):
            date = parts[-6]
    return FrameRef(
        date=date, obs=obs, exp=exp, ifuslot=int(match["ifuslot"]), amp=match["amp"],
        kind=match["kind"], name=p.name, source=str(p), timestamp=match["stamp"],
    )


class RawArchive:
    """Raw VIRUS data under ``rootdir`` in either layout.

    Methods: :meth:`nights`, :meth:`observations`, :meth:`exposures`, :meth:`frames`,
    :meth:`ifuslots`, :meth:`frames_in_window`, :meth:`read_header` (raw primary header; the
    parsed one is :func:`read_header_model`).  Frame lists are sorted by
    exposure, IFU slot, amp (LL LU RL RU), kind and name.  Thread-safe; tar indexes are cached
    for the life of the object.
    """

    def __init__(self, rootdir: str | os.PathLike) -> None:
        self.rootdir = Path(rootdir)
        if not self.rootdir.is_dir():
            raise RawDataError(str(self.rootdir), "raw data root directory does not exist")
        self._tar_index: dict[str, list[tarfile.TarInfo]] = {}
        self._frames: dict[tuple[str, int], list[FrameRef]] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # --- discovery ------------------------------------------------------------------------------
    def nights(self) -> list[str]:
        """Night folders (YYYYMMDD) that contain a ``virus`` folder."""
        return sorted(
            e.name for e in os.scandir(self.rootdir)
            if e.is_dir() and NIGHT_DIR.match(e.name) and (Path(e.path) / "virus").is_dir()
        )

    def observations(self, date: str) -> list[int]:
        """Observation numbers of a night (``virusNNNNNNN`` folders and ``virusNNNNNNN.tar``)."""
        obs: set[int] = set()
        for entry in self._scan(self.rootdir / date / "virus"):
            m = OBS_DIR.match(entry.name) if entry.is_dir() else OBS_TAR.match(entry.name)
            if m:
                obs.add(int(m.group(1)))
        return sorted(obs)

    def exposures(self, date: str, obs: int) -> list[int]:
        """Exposure numbers (1-based) present in an observation."""
        return sorted({f.exp for f in self.frames(date, obs)})

    def ifuslots(self, date: str, obs: int, kind: str | None = None) -> list[int]:
        """IFU slots with at least one frame (of ``kind``) in an observation."""
        return sorted({f.ifuslot for f in self.frames(date, obs, kind=kind)})

    def frames(
        self,
        date: str,
        obs: int,
        kind: str | None = None,
        exp: int | None = None,
        ifuslot: int | None = None,
        amp: str | None = None,
    ) -> list[FrameRef]:
        """Frames of one observation, optionally filtered by kind, exposure, IFU slot and amp."""
        key = (date, int(obs))
        with self._lock:
            if key not in self._frames:
                self._frames[key] = self._discover(date, int(obs))
            refs = self._frames[key]
        return [
            r for r in refs
            if (kind is None or r.kind == kind) and (exp is None or r.exp == exp)
            and (ifuslot is None or r.ifuslot == ifuslot) and (amp is None or r.amp == amp)
        ]

    def frames_in_window(
        self, dates: list[str], kinds: tuple[str, ...] | list[str]
    ) -> list[FrameRef]:
        """Every frame of the given kinds in every observation of the given nights."""
        wanted = set(kinds)
        unknown = wanted - set(geometry.FRAME_KINDS)
        if unknown:
            raise ValueError(f"unknown frame kinds {sorted(unknown)}; known {geometry.FRAME_KINDS}")
        out: list[FrameRef] = []
        for date in dates:
            if not (self.rootdir / date / "virus").is_dir():
                log.info("%s: no raw data for night %s", self.rootdir, date)
                continue
            for obs in self.observations(date):
                out.extend(f for f in self.frames(date, obs) if f.kind in wanted)
        return out

    def read_header(self, ref: FrameRef) -> fits.Header:
        """The primary header of a frame, reading only its header blocks."""
        return read_primary_header(ref)

    # --- internals ------------------------------------------------------------------------------
    @staticmethod
    def _scan(directory: Path) -> list[os.DirEntry]:
        try:
            return list(os.scandir(directory))
        except FileNotFoundError:
            return []

    def _discover(self, date: str, obs: int) -> list[FrameRef]:
        obs_name = f"virus{obs:07d}"
        base = self.rootdir / date / "virus"
        found: dict[tuple[int, str], FrameRef] = {}
        ignored: list[str] = []
        tar_path = base / f"{obs_name}.tar"
        if tar_path.is_file():
            for info in self.tar_members(tar_path):
                m = MEMBER_PATH.match(info.name)
                fm = FILE_NAME.match(m["name"]) if m else None
                if m is None or fm is None or int(m["obs"]) != obs:
                    if info.isfile():
                        ignored.append(f"{tar_path.name}:{info.name}")
                    continue
                source = TarMember(str(tar_path), info.name, info.offset_data, info.size)
                ref = _make_ref(date, obs, int(m["exp"]), fm, source)
                found[(ref.exp, ref.name)] = ref
        for exp_entry in self._scan(base / obs_name):
            em = EXP_DIR.match(exp_entry.name)
            if not exp_entry.is_dir() or em is None:
                ignored.append(f"{obs_name}/{exp_entry.name}")
                continue
            for entry in self._scan(Path(exp_entry.path) / "virus"):
                fm = FILE_NAME.match(entry.name)
                if fm is None or not entry.is_file():
                    ignored.append(f"{obs_name}/{exp_entry.name}/virus/{entry.name}")
                    continue
                ref = _make_ref(date, obs, int(em.group(1)), fm, entry.path)
                found[(ref.exp, ref.name)] = ref  # the untarred copy wins
        if ignored:
            log.warning(
                "%s/%s: ignored %d entries not laid out or named as VIRUS raw frames: %s%s",
                base, obs_name, len(ignored), ", ".join(ignored[:5]),
                " ..." if len(ignored) > 5 else "",
            )
        return sorted(found.values(), key=_frame_order)

    def tar_members(self, tar_path: str | os.PathLike) -> list[tarfile.TarInfo]:
        """The member list of a tar, built once and cached (see :func:`index_tar`)."""
        key = str(tar_path)
        cached = self._tar_index.get(key)
        if cached is None:
            cached = index_tar(key)
            self._tar_index[key] = cached
        return cached


def _frame_order(ref: FrameRef) -> tuple:
    return ref.exp, ref.ifuslot, _AMP_ORDER[ref.amp], ref.kind, ref.name


def _make_ref(date: str, obs: int, exp: int, match: re.Match, source: str | TarMember) -> FrameRef:
    """The frame's reference, its IFU slot corrected for the known slot swaps of ``date``."""
    recorded = int(match["ifuslot"])
    slot = physical_slot(date, recorded)
    return FrameRef(
        date=date, obs=obs, exp=exp, ifuslot=slot, amp=match["amp"], kind=match["kind"],
        name=match.group(0), source=source, timestamp=match["stamp"],
        recorded_ifuslot=recorded if slot != recorded else None,
    )


def index_tar(tar_path: str | os.PathLike) -> list[tarfile.TarInfo]:
    """List the members of an uncompressed tar in one pass (no data is read).

    A tar truncated inside its last member keeps that member in the list (reading it raises
    :class:`RawDataError`); a tar that is not an uncompressed tar raises :class:`RawDataError`.
    """
    path = str(tar_path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise RawDataError(path, f"cannot open tar: {exc.strerror or exc}") from None
    for prefix, kind in ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ", "xz")):
        if magic.startswith(prefix):
            raise RawDataError(path, f"{kind}-compressed tar cannot be read in place")
    members: list[tarfile.TarInfo] = []
    try:
        with tarfile.open(path, "r:") as tf:
            while True:
                info = tf.next()
                if info is None:
                    break
                members.append(info)
    except tarfile.ReadError as exc:
        if not members:
            raise RawDataError(path, f"not a readable tar archive ({exc})") from None
        log.warning("%s: tar is truncated after %d members (%s)", path, len(members), exc)
    return members
