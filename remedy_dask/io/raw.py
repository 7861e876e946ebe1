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

*Binned frames*: :func:`read_raw_amp` accepts 1032 x 1064 (unbinned) and frames binned by 2 or 4
along either axis (rows 1032/b, columns 1064/b, overscan ``int(32 * ncols / 1064)`` columns);
:attr:`RawAmp.binning` says which.  The calibration and extraction kernels expect unbinned frames.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from astropy.io import fits

from remedy_dask import geometry
from remedy_dask.errors import RawDataError
from remedy_dask.io.slot_history import physical_slot
from remedy_dask.io.header import AmpHeader, parse_amp_header

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

BINNINGS = (1, 2, 4)
_FITS_BLOCK = 2880
_MAX_HEADER_BLOCKS = 200
_AMP_ORDER = {amp: i for i, amp in enumerate(geometry.AMPS)}


class TarMember(NamedTuple):
    """Where a FITS file sits inside an uncompressed tar: read ``size`` bytes at ``offset``."""

    tar_path: str
    member: str
    offset: int
    size: int


@dataclass(frozen=True)
class FrameRef:
    """A raw amp frame: its identity from the file name and where its bytes are.

    ``date`` is the night folder (YYYYMMDD), ``timestamp`` the file-name prefix
    (``YYYYMMDDThhmmss.s``), ``source`` a filesystem path (str) or a :class:`TarMember`.
    """

    date: str
    obs: int
    exp: int
    ifuslot: int
    amp: str
    kind: str
    name: str
    source: str | TarMember
    timestamp: str = ""
    recorded_ifuslot: int | None = None  # the file's slot, when a known swap corrected it

    @property
    def in_tar(self) -> bool:
        return isinstance(self.source, TarMember)

    @property
    def display_path(self) -> str:
        """Path used in messages: the file path, or ``TAR:MEMBER`` for a tar member."""
        if isinstance(self.source, TarMember):
            return f"{self.source.tar_path}:{self.source.member}"
        return self.source


@dataclass(frozen=True)
class RawAmp:
    """One raw amp frame: counts (ADU) as stored, parsed and raw headers, and where it came from.

    ``data`` is uint16 for the documented format (BITPIX 16, BZERO 32768), float32 otherwise.
    """

    data: np.ndarray
    header: AmpHeader
    raw_header: fits.Header
    ref: FrameRef

    @property
    def binning(self) -> tuple[int, int]:
        """(row, column) binning factors: (1, 1) for a 1032 x 1064 frame."""
        nrows, ncols = self.data.shape
        return geometry.N_ROWS // nrows, geometry.N_COLS_RAW // ncols


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


# --- reading ------------------------------------------------------------------------------------


def _read_bytes(ref: FrameRef, limit: int | None = None) -> bytes:
    """The bytes of a frame's FITS file (at most ``limit`` bytes), one open + seek + read."""
    where = ref.display_path
    if isinstance(ref.source, TarMember):
        src = ref.source
        size = src.size if limit is None else min(limit, src.size)
        try:
            with open(src.tar_path, "rb") as fh:
                fh.seek(src.offset)
                buf = fh.read(size)
        except OSError as exc:
            raise RawDataError(where, f"cannot read tar member: {exc.strerror or exc}") from None
        if len(buf) < size:
            raise RawDataError(
                where,
                f"truncated tar: member ends {src.offset + src.size} bytes in, "
                f"file has only {src.offset + len(buf)}",
            )
        return buf
    try:
        with open(ref.source, "rb") as fh:
            return fh.read() if limit is None else fh.read(limit)
    except OSError as exc:
        raise RawDataError(where, f"cannot read file: {exc.strerror or exc}") from None


def _header_length(buf: bytes, where: str) -> int:
    """Byte length of the primary header (whole 2880-byte blocks up to and including END)."""
    if not buf.startswith(b"SIMPLE  ="):
        raise RawDataError(where, "not a FITS file (no SIMPLE card at the start): corrupt FITS")
    for start in range(0, len(buf) - 79, 80):
        if buf[start:start + 8] == b"END     ":
            return (start // _FITS_BLOCK + 1) * _FITS_BLOCK
    raise RawDataError(where, "truncated or corrupt FITS header (no END card)")


def read_primary_header(ref: FrameRef) -> fits.Header:
    """The primary header of a frame, read without touching the image data."""
    where = ref.display_path
    buf = _read_bytes(ref, limit=_FITS_BLOCK * _MAX_HEADER_BLOCKS)
    return _parse_header(buf[: _header_length(buf, where)], where)


def read_header_model(ref: FrameRef) -> AmpHeader:
    """The parsed :class:`AmpHeader` of a frame, reading only its header blocks."""
    return _header_model(read_primary_header(ref), ref)


def _header_model(header: fits.Header, ref: FrameRef) -> AmpHeader:
    """The parsed header, its IFUSLOT corrected for the known slot swaps (as the file name's)."""
    model = parse_amp_header(header, ref.display_path, kind=ref.kind)
    slot = physical_slot(ref.date, model.ifuslot)
    return model if slot == model.ifuslot else dataclasses.replace(model, ifuslot=slot)


def _parse_header(block: bytes, where: str) -> fits.Header:
    try:
        return fits.Header.fromstring(block.decode("ascii"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RawDataError(where, f"corrupt FITS header ({exc})") from None


def _int_card(header: fits.Header, key: str, where: str) -> int:
    """A required integer card (BITPIX, NAXIS, NAXISn)."""
    try:
        value = header[key]
    except KeyError:
        raise RawDataError(where, f"missing header keyword {key}") from None
    except (fits.verify.VerifyError, ValueError) as exc:
        raise RawDataError(where, f"header card {key} cannot be parsed ({exc})") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise RawDataError(where, f"header keyword {key}={value!r} is not an integer")
    return value


def _check_shape(shape: tuple[int, ...], where: str) -> None:
    ok_rows = {geometry.N_ROWS // b for b in BINNINGS}
    ok_cols = {geometry.N_COLS_RAW // b for b in BINNINGS}
    if len(shape) != 2 or shape[0] not in ok_rows or shape[1] not in ok_cols:
        raise RawDataError(
            where,
            f"wrong image shape {shape} (rows x columns): expected (1032, 1064) "
            "or binned by 2 or 4",
        )


def _decode_image(buf: bytes, header_length: int, header: fits.Header, where: str) -> np.ndarray:
    """The primary image as uint16 (documented format) or float32 (anything else)."""
    ndim = _int_card(header, "NAXIS", where)
    if not 0 <= ndim <= 999:
        raise RawDataError(where, f"header keyword NAXIS={ndim} is not a FITS axis count")
    naxis = [_int_card(header, f"NAXIS{i + 1}", where) for i in range(ndim)]
    if not naxis or 0 in naxis:
        raise RawDataError(where, "primary HDU holds no image data")
    shape = tuple(reversed(naxis))
    _check_shape(shape, where)
    bitpix = _int_card(header, "BITPIX", where)
    if bitpix not in (8, 16, 32, 64, -32, -64):
        raise RawDataError(where, f"header keyword BITPIX={bitpix} is not a FITS data type")
    needed = abs(bitpix) // 8 * int(np.prod(naxis))
    available = len(buf) - header_length
    if available < needed:
        raise RawDataError(
            where, f"truncated FITS: image needs {needed} bytes, file holds {max(available, 0)}"
        )
    if bitpix == 16 and header.get("BZERO", 0) == 32768 and header.get("BSCALE", 1) == 1:
        # unsigned 16-bit stored the usual FITS way: flipping the sign bit of the big-endian
        # int16 adds 32768 exactly
        raw = np.frombuffer(buf, dtype=">u2", count=needed // 2, offset=header_length)
        return np.bitwise_xor(raw, np.uint16(0x8000), dtype=np.uint16).reshape(shape)
    try:
        with fits.open(io.BytesIO(buf), memmap=False) as hdul:
            data = hdul[0].data
    except (OSError, ValueError, TypeError, KeyError, IndexError) as exc:
        raise RawDataError(where, f"corrupt FITS ({type(exc).__name__}: {exc})") from None
    return data if data.dtype == np.uint16 else data.astype(np.float32)


def read_raw_amp(ref: FrameRef) -> RawAmp:
    """Read one raw amp frame and parse its header.

    Raises :class:`RawDataError` (one line, naming the file or ``TAR:MEMBER``) for unreadable,
    corrupt or truncated FITS, a truncated tar, a primary HDU without an image, a wrong image
    shape, a missing required header keyword or an unknown amplifier.
    """
    where = ref.display_path
    buf = _read_bytes(ref)
    header_length = _header_length(buf, where)
    raw_header = _parse_header(buf[:header_length], where)
    data = _decode_image(buf, header_length, raw_header, where)
    header = _header_model(raw_header, ref)
    if (header.ifuslot, header.amp) != (ref.ifuslot, ref.amp):
        log.warning(
            "%s: file name says %03d%s but the header says IFUSLOT=%03d amp %s; using the header",
            where, ref.ifuslot, ref.amp, header.ifuslot, header.amp,
        )
    return RawAmp(data=data, header=header, raw_header=raw_header, ref=ref)
