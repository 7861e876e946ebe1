"""Parse the primary header of one raw VIRUS amplifier frame into a small typed record.

Which keywords are required depends on the frame kind (``zro drk flt cmp twi sci``, or ``None``
when the kind is unknown, which applies the strictest rules):

================  ========================  =====================================================
keyword           required for              when missing (and not required)
================  ========================  =====================================================
CCDPOS, CCDHALF   every kind                -
SPECID, IFUSLOT,  every kind                -
IFUID
EXPTIME           drk, twi, sci, None       NaN (zro: 0.0), noted in ``substitutions``
OBJECT            cmp, None                 "" (noted)
DATE              every kind                DATE-OBS (+ UT when DATE-OBS has no time), then the
                                            file-name timestamp; RawDataError if none of these
TRAJRA/TRAJDEC    sci (or TRAJCRA/TRAJCDEC) NaN
GAIN, RDNOISE     never                     ``geometry.DEFAULT_GAIN`` / ``DEFAULT_RDNOISE`` (also
                                            when <= 0 or not a number), noted and logged
CONTID            never                     "" (noted)
AMPNAME, DARKTIME,never                     None
PARANGLE, AMBTEMP,
QPROG
================  ========================  =====================================================

Ranges (a value outside raises :class:`RawDataError` naming the file, the keyword and the
range): EXPTIME 0 < t <= 86400 s (zro: >= 0), GAIN <= 20 e-/ADU, RDNOISE <= 100 e-, TRAJRA and
TRAJCRA 0-24 h, TRAJDEC and TRAJCDEC -90-90 deg, PARANGLE -360-360 deg, AMPNAME one of
``AMPNAMES``.  A card astropy cannot parse raises :class:`RawDataError` as well.

Field centre: ``TRAJCRA*15, TRAJCDEC`` (the commanded centre) unless it is more than 25" from
``TRAJRA*15, TRAJDEC`` or missing; then ``TRAJRA*15, TRAJDEC``.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePath

from astropy.io import fits

from remedy_dask import geometry
from remedy_dask.errors import RawDataError

log = logging.getLogger(__name__)

KINDS_NEEDING_EXPTIME = ("drk", "twi", "sci", None)
KINDS_NEEDING_OBJECT = ("cmp", None)
KINDS_NEEDING_POINTING = ("sci",)
CENTRE_TOLERANCE_ARCSEC = 25.0
MAX_EXPTIME_S = 86400.0
MAX_GAIN = 20.0  # e-/ADU
MAX_RDNOISE = 100.0  # e-
AMPNAMES = ("LL", "LU", "RL", "RU", "UL", "UR", "LR")
RANGES = {"TRAJRA": (0.0, 24.0), "TRAJCRA": (0.0, 24.0), "TRAJDEC": (-90.0, 90.0),
          "TRAJCDEC": (-90.0, 90.0), "PARANGLE": (-360.0, 360.0)}

_NAME_TIMESTAMP = re.compile(r"^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2}(?:\.\d+)?)_")


@dataclass(frozen=True)
class AmpHeader:
    """The header values of one raw amp frame that the reduction uses."""

    specid: int
    ifuid: int
    ifuslot: int
    contid: str
    amp: str
    ampname: str | None
    gain: float
    rdnoise: float
    object: str
    exptime: float
    darktime: float | None
    date: str
    ra_deg: float
    dec_deg: float
    parangle: float | None
    ambtemp: float | None
    qprog: str | None
    substitutions: tuple[str, ...] = ()


def parse_amp_header(header: fits.Header, path: str, kind: str | None = None) -> AmpHeader:
    """Read an :class:`AmpHeader` from a raw primary header.

    ``path`` only names the file in messages; ``kind`` (frame kind, e.g. ``"sci"``) selects the
    required keywords (see the module docstring).  Raises :class:`RawDataError` for a missing
    required keyword, a non-numeric identity keyword or an unknown amplifier.
    """
    notes: list[str] = []
    _check_cards(header, path)
    ccdpos = _required_str(header, "CCDPOS", path)
    ccdhalf = _required_str(header, "CCDHALF", path)
    amp = (ccdpos + ccdhalf).replace(" ", "").upper()
    if amp not in geometry.AMPS:
        raise RawDataError(
            path, f"unknown amplifier CCDPOS+CCDHALF={amp!r} (expected one of {geometry.AMPS})"
        )
    specid = _required_int(header, "SPECID", path)
    ifuslot = _required_int(header, "IFUSLOT", path)
    ifuid = _required_int(header, "IFUID", path)

    gain = _positive_or_default(header, "GAIN", geometry.DEFAULT_GAIN, path, notes)
    rdnoise = _positive_or_default(header, "RDNOISE", geometry.DEFAULT_RDNOISE, path, notes)
    _check_range(path, "GAIN", gain, 0.0, MAX_GAIN, "e-/ADU")
    _check_range(path, "RDNOISE", rdnoise, 0.0, MAX_RDNOISE, "e-")

    exptime = _optional_float(header, "EXPTIME", path)
    if exptime is None:
        if kind in KINDS_NEEDING_EXPTIME:
            raise RawDataError(path, _missing("EXPTIME", kind))
        exptime = 0.0 if kind == "zro" else math.nan
        notes.append(f"EXPTIME missing: using {exptime}")
    elif kind in KINDS_NEEDING_EXPTIME and not 0.0 < exptime <= MAX_EXPTIME_S:
        raise RawDataError(path, f"header keyword EXPTIME={exptime:g} s is outside "
                           f"(0, {MAX_EXPTIME_S:g}] s")
    elif not 0.0 <= exptime <= MAX_EXPTIME_S:
        raise RawDataError(path, f"header keyword EXPTIME={exptime:g} s is outside "
                           f"[0, {MAX_EXPTIME_S:g}] s")

    obj = _optional_str(header, "OBJECT")
    if obj is None:
        if kind in KINDS_NEEDING_OBJECT:
            raise RawDataError(path, _missing("OBJECT", kind))
        obj = ""
        notes.append("OBJECT missing: using ''")

    contid = _optional_str(header, "CONTID")
    if contid is None:
        contid = ""
        notes.append("CONTID missing: using ''")

    date = _frame_date(header, path, notes)
    ra_deg, dec_deg = _field_centre(header, path, kind, notes)
    ampname = _optional_str(header, "AMPNAME") or None
    if ampname is not None and ampname.upper() not in AMPNAMES:
        raise RawDataError(path, f"header keyword AMPNAME={ampname!r} is not one of "
                           f"{', '.join(AMPNAMES)}")
    darktime = _optional_float(header, "DARKTIME", path, notes)
    parangle = _optional_float(header, "PARANGLE", path, notes)
    if parangle is not None:
        _check_range(path, "PARANGLE", parangle, *RANGES["PARANGLE"], "deg")
    ambtemp = _optional_float(header, "AMBTEMP", path, notes)

    return AmpHeader(
        specid=specid,
        ifuid=ifuid,
        ifuslot=ifuslot,
        contid=contid,
        amp=amp,
        ampname=ampname,
        gain=gain,
        rdnoise=rdnoise,
        object=obj,
        exptime=exptime,
        darktime=darktime,
        date=date,
        ra_deg=ra_deg,
        dec_deg=dec_deg,
        parangle=parangle,
        ambtemp=ambtemp,
        qprog=_optional_str(header, "QPROG") or None,
        substitutions=tuple(notes),
    )


# --- helpers ------------------------------------------------------------------------------------


def _check_cards(header: fits.Header, path: str) -> None:
    """Every card must parse (astropy parses values lazily and raises on first access)."""
    for card in header.cards:
        try:
            card.value  # noqa: B018
        except (fits.verify.VerifyError, ValueError) as exc:
            raise RawDataError(path, f"header card {card.keyword or '(blank)'} cannot be "
                               f"parsed ({' '.join(str(exc).split())[:120]})") from None


def _check_range(path: str, key: str, value: float, lo: float, hi: float, unit: str) -> None:
    if not lo <= value <= hi:
        raise RawDataError(path, f"header keyword {key}={value:g} {unit} is outside "
                           f"[{lo:g}, {hi:g}] {unit}")


def _missing(key: str, kind: str | None) -> str:
    frames = f"{kind} frames" if kind else "frames of unknown kind"
    return f"missing header keyword {key} (required for {frames})"


def _present(header: fits.Header, key: str) -> bool:
    if key not in header:
        return False
    value = header[key]
    if value is None or isinstance(value, fits.card.Undefined):
        return False
    return str(value).strip() != ""


def _required_str(header: fits.Header, key: str, path: str) -> str:
    if not _present(header, key):
        raise RawDataError(path, f"missing header keyword {key}")
    return str(header[key]).strip()


def _optional_str(header: fits.Header, key: str) -> str | None:
    return str(header[key]).strip() if _present(header, key) else None


def _required_int(header: fits.Header, key: str, path: str) -> int:
    text = _required_str(header, key, path)
    try:
        value = float(text)
    except ValueError:
        raise RawDataError(path, f"header keyword {key}={text!r} is not an integer") from None
    if not value.is_integer():
        raise RawDataError(path, f"header keyword {key}={text!r} is not an integer")
    return int(value)


def _optional_float(
    header: fits.Header, key: str, path: str, notes: list[str] | None = None
) -> float | None:
    """The value as a float, None if absent.  A bad value raises, or (given ``notes``) is noted."""
    if not _present(header, key):
        return None
    value = header[key]
    try:
        result = float(value)
    except (TypeError, ValueError):
        result = math.nan
    if math.isfinite(result):
        return result
    if notes is None:
        raise RawDataError(path, f"header keyword {key}={value!r} is not a finite number")
    notes.append(f"{key}={value!r} is not a finite number: ignored")
    return None


def _positive_or_default(
    header: fits.Header, key: str, default: float, path: str, notes: list[str]
) -> float:
    """The header value if it is a positive number, else ``default`` with a note and a warning."""
    raw = header.get(key) if _present(header, key) else None
    try:
        value = float(raw) if raw is not None else None
    except (TypeError, ValueError):
        value = None
    if value is not None and math.isfinite(value) and value > 0:
        return value
    if raw is None:
        note = f"{key} missing: using {default}"
    elif value is None or not math.isfinite(value):
        note = f"{key}={raw!r} is not a number: using {default}"
    else:
        note = f"{key}={raw} <= 0: using {default}"
    notes.append(note)
    log.warning("%s: %s", path, note)
    return default


def _valid_iso(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return "T" in text


def _frame_date(header: fits.Header, path: str, notes: list[str]) -> str:
    """ISO start time: DATE, else DATE-OBS (+UT), else the file-name timestamp."""
    date = _optional_str(header, "DATE")
    if date is not None and _valid_iso(date):
        return date
    problem = "DATE missing" if date is None else f"DATE={date!r} is not YYYY-MM-DDThh:mm:ss"
    date_obs = _optional_str(header, "DATE-OBS")
    if date_obs is not None:
        candidate = date_obs
        ut = _optional_str(header, "UT")
        if "T" not in candidate and ut is not None:
            candidate = f"{candidate}T{ut}"
        if _valid_iso(candidate):
            notes.append(f"{problem}: using DATE-OBS/UT {candidate}")
            return candidate
    match = _NAME_TIMESTAMP.match(PurePath(path.split(":")[-1]).name)
    if match:
        y, mo, d, h, mi, s = match.groups()
        candidate = f"{y}-{mo}-{d}T{h}:{mi}:{s}"
        if _valid_iso(candidate):
            notes.append(f"{problem}: using the file-name timestamp {candidate}")
            return candidate
    raise RawDataError(path, f"missing header keyword DATE ({problem}, no DATE-OBS/UT either)")


def _angular_sep_arcsec(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    """Great-circle distance (haversine) in arcsec between two positions in deg."""
    p1, p2 = math.radians(dec1), math.radians(dec2)
    dra = math.radians(ra2 - ra1)
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dra / 2) ** 2
    return math.degrees(2 * math.asin(min(1.0, math.sqrt(h)))) * 3600.0


def _field_centre(
    header: fits.Header, path: str, kind: str | None, notes: list[str]
) -> tuple[float, float]:
    """(ra, dec) deg of the field centre from TRAJCRA/TRAJCDEC or TRAJRA/TRAJDEC."""
    tra, tdec = _optional_float(header, "TRAJRA", path), _optional_float(header, "TRAJDEC", path)
    cra, cdec = _optional_float(header, "TRAJCRA", path), _optional_float(header, "TRAJCDEC", path)
    for key, value in (("TRAJRA", tra), ("TRAJDEC", tdec), ("TRAJCRA", cra), ("TRAJCDEC", cdec)):
        if value is not None:
            _check_range(path, key, value, *RANGES[key], "h" if key.endswith("RA") else "deg")
    have_t = tra is not None and tdec is not None
    have_c = cra is not None and cdec is not None
    if have_c and have_t:
        sep = _angular_sep_arcsec(cra * 15.0, cdec, tra * 15.0, tdec)
        if sep <= CENTRE_TOLERANCE_ARCSEC:
            return cra * 15.0, cdec
        notes.append(
            f"TRAJCRA/TRAJCDEC {sep:.1f}\" from TRAJRA/TRAJDEC (> 25\"): using TRAJRA/TRAJDEC"
        )
        return tra * 15.0, tdec
    if have_c:
        notes.append("TRAJRA/TRAJDEC missing: using TRAJCRA/TRAJCDEC unchecked")
        return cra * 15.0, cdec
    if have_t:
        notes.append("TRAJCRA/TRAJCDEC missing: using TRAJRA/TRAJDEC")
        return tra * 15.0, tdec
    if kind in KINDS_NEEDING_POINTING:
        raise RawDataError(path, _missing("TRAJRA/TRAJDEC", kind))
    return math.nan, math.nan
