"""Fuzzing the raw reader and the header model with a real simulated frame: random header cards,
truncations and byte flips end in a successful read or a RawDataError naming the file, never
in another exception."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from remedy_dask.errors import RawDataError
from remedy_dask.io.raw import frame_ref_from_path
from remedy_dask.io.rawframe import read_header_model, read_raw_amp

KEYWORDS = ("SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "BZERO", "BSCALE", "EXPTIME", "GAIN",
            "RDNOISE", "CCDPOS", "CCDHALF", "SPECID", "IFUSLOT", "IFUID", "DATE", "DATE-OBS",
            "TRAJRA", "TRAJDEC", "TRAJCRA", "TRAJCDEC", "PARANGLE", "AMPNAME", "OBJECT", "END",
            "CONTINUE", "HIERARCH", "")
VALUES = st.one_of(
    st.integers(-2**70, 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e30", "-0.0", "3.6.0e2", "T", "F", "'LL'", "'", "''", "'abc", "1D5",
                     "(1, 2)", "=", "/", "NaN", "16", "-32", "0", "2", "1032", "1064", "32768"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=70),
)
SETTINGS = settings(max_examples=200, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def frame(sci_night):
    """Bytes and name of one real simulated science frame (IFU 047, amp LL)."""
    path = next((sci_night / "plain" / "raw").rglob("*047LL_sci.fits"))
    return path.name, path.read_bytes()


def _check(name: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        ref = frame_ref_from_path(path)
        for read in (read_header_model, read_raw_amp):
            try:
                read(ref)
            except RawDataError as exc:
                assert str(exc).startswith(str(path) + ": ") and "\n" not in str(exc)


def _n_header_cards(data: bytes) -> int:
    for i in range(0, len(data), 80):
        if data[i:i + 8] == b"END     ":
            return i // 80 + 1
    return 36


@SETTINGS
@given(st.data())
def test_random_header_cards(frame, data):
    name, raw = frame
    buf = bytearray(raw)
    n_cards = _n_header_cards(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        slot = data.draw(st.integers(0, n_cards - 1))
        key = data.draw(st.sampled_from(KEYWORDS))
        value = data.draw(VALUES)
        card = (f"{key:<8}= {value}" if key not in ("END", "CONTINUE", "") else
                f"{key:<8}{value}").encode("ascii", "replace")[:80].ljust(80)
        buf[slot * 80:(slot + 1) * 80] = card
    _check(name, bytes(buf))


@SETTINGS
@given(st.data())
def test_truncations_and_byte_flips(frame, data):
    name, raw = frame
    buf = bytearray(raw)
    header_end = _n_header_cards(raw) * 80
    for _ in range(data.draw(st.integers(0, 6))):
        where = data.draw(st.one_of(st.integers(0, header_end - 1), st.integers(0, len(buf) - 1)))
        buf[where] ^= data.draw(st.integers(1, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(buf))))
    _check(name, bytes(buf if cut is None else buf[:cut]))
