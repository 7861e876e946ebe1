"""One raw amp frame: where its bytes are (:class:`FrameRef`, a file or a :class:`TarMember`)
and reading it (:func:`read_primary_header`, :func:`read_header_model`, :func:`read_raw_amp`).
Frames are found by :class:`remedy_dask.io.raw.RawArchive`.

*Binned frames*: :func:`read_raw_amp` accepts 1032 x 1064 (unbinned) and frames binned by 2 or 4
along either axis (rows 1032/b, columns 1064/b, overscan ``int(32 * ncols / 1064)`` columns);
:attr:`RawAmp.binning` says which.  The calibration and extraction kernels expect unbinned frames.
"""

from __future__ import annotations

import dataclasses
import io
import logging
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from astropy.io import fits

from remedy_dask import geometry
from remedy_dask.errors import RawDataError
from remedy_dask.io.header import AmpHeader, parse_amp_header
from remedy_dask.io.slot_history import physical_slot

log = logging.getLogger(__name__)

BINNINGS = (1, 2, 4)
_FITS_BLOCK = 2880
_MAX_HEADER_BLOCKS = 200


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
