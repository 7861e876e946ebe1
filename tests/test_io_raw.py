"""Raw VIRUS frame discovery and reading (folders and tars), header parsing, bad inputs.

Every frame is built here with astropy, following the raw layout of docs/design.md (Conventions).
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from remedy_dask.errors import RawDataError
from remedy_dask.io import raw
from remedy_dask.io.header import parse_amp_header
from remedy_dask.io.raw import RawArchive, frame_ref_from_path, index_tar
from remedy_dask.io.rawframe import TarMember, read_header_model, read_raw_amp

DATE = "20190822"


def make_header(amp: str = "LL", ifuslot: int = 47, **changes) -> fits.Header:
    """A complete raw amp header; ``changes`` set keywords (None deletes one)."""
    h = fits.Header()
    h["CCDPOS"], h["CCDHALF"] = amp[0], amp[1]
    h["SPECID"], h["IFUID"], h["IFUSLOT"], h["CONTID"] = "037", "024", f"{ifuslot:03d}", "c1a2"
    h["GAIN"], h["RDNOISE"] = 0.8, 2.9
    h["OBJECT"], h["EXPTIME"], h["DARKTIME"] = "COSMOS_12", 360.0, 361.2
    h["DATE"] = "2019-08-22T03:15:12.3"
    h["TRAJRA"], h["TRAJDEC"] = 10.0, 2.0  # hours, deg
    h["TRAJCRA"], h["TRAJCDEC"] = 10.0 + 0.5 / 3600.0, 2.0  # 7.5" east of TRAJRA
    h["PARANGLE"], h["AMBTEMP"], h["QPROG"] = 35.5, 12.25, "HETDEX"
    for key, value in changes.items():
        key = key.replace("_", "-")
        if value is None:
            h.remove(key, ignore_missing=True)
        else:
            h[key] = value
    return h


def frame_data(seed: int, shape: tuple[int, int] = (1032, 1064)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(900, 1100, size=shape, dtype=np.uint16)


def write_frame(path: Path, data: np.ndarray, header: fits.Header) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(data=data, header=header).writeto(path, overwrite=True)
    return path


def frame_name(amp: str, kind: str = "sci", ifuslot: int = 47, second: int = 12) -> str:
    return f"{DATE}T0315{second:02d}.3_{ifuslot:03d}{amp}_{kind}.fits"


def obs_dir(root: Path, obs: int) -> Path:
    return root / DATE / "virus" / f"virus{obs:07d}"


def build_obs_folder(root: Path, obs: int, exps=(1, 2), amps=("LL", "LU"), kind="sci"):
    """Untarred observation; frame content depends only on (obs, exp, amp)."""
    paths = []
    for exp in exps:
        for j, amp in enumerate(amps):
            name = frame_name(amp, kind, second=exp)
            path = obs_dir(root, obs) / f"exp{exp:02d}" / "virus" / name
            write_frame(path, frame_data(obs * 100 + exp * 10 + j), make_header(amp))
            paths.append(path)
    return paths


def tar_obs(root: Path, obs: int, remove_folder: bool = True) -> Path:
    """Tar an untarred observation in place (relative member paths)."""
    base = root / DATE / "virus"
    tar_path = base / f"virus{obs:07d}.tar"
    with tarfile.open(tar_path, "w") as tf:
        tf.add(base / f"virus{obs:07d}", arcname=f"virus{obs:07d}")
    if remove_folder:
        shutil.rmtree(base / f"virus{obs:07d}")
    return tar_path


@pytest.fixture()
def two_roots(tmp_path: Path) -> tuple[Path, Path]:
    """The same observation 7 untarred (root A) and tarred (root B)."""
    a, b = tmp_path / "a", tmp_path / "b"
    build_obs_folder(a, 7)
    build_obs_folder(b, 7)
    tar_obs(b, 7)
    return a, b


# --- discovery ----------------------------------------------------------------------------------


def test_discovery_both_layouts_identical(two_roots):
    a, b = (RawArchive(r) for r in two_roots)
    for archive in (a, b):
        assert archive.nights() == [DATE]
        assert archive.observations(DATE) == [7]
        assert archive.exposures(DATE, 7) == [1, 2]
        assert archive.ifuslots(DATE, 7, kind="sci") == [47]
        assert archive.frames(DATE, 7, kind="flt") == []
    fa, fb = a.frames(DATE, 7), b.frames(DATE, 7)
    assert [(f.exp, f.amp, f.kind, f.ifuslot, f.name) for f in fa] == [
        (1, "LL", "sci", 47, frame_name("LL", second=1)),
        (1, "LU", "sci", 47, frame_name("LU", second=1)),
        (2, "LL", "sci", 47, frame_name("LL", second=2)),
        (2, "LU", "sci", 47, frame_name("LU", second=2)),
    ]
    assert [(f.exp, f.amp, f.name) for f in fb] == [(f.exp, f.amp, f.name) for f in fa]
    assert not any(f.in_tar for f in fa) and all(f.in_tar for f in fb)
    assert fa[0].timestamp == f"{DATE}T031501.3"
    for ra, rb in zip(fa, fb):
        amp_a, amp_b = read_raw_amp(ra), read_raw_amp(rb)
        assert amp_a.data.dtype == np.uint16 and amp_a.data.shape == (1032, 1064)
        np.testing.assert_array_equal(amp_a.data, amp_b.data)
        assert amp_a.header == amp_b.header
        assert dict(amp_a.raw_header) == dict(amp_b.raw_header)
        assert dict(a.read_header(ra)) == dict(b.read_header(rb)) == dict(amp_a.raw_header)
        assert read_header_model(ra) == read_header_model(rb) == amp_a.header
    # content is what was written
    np.testing.assert_array_equal(read_raw_amp(fb[3]).data, frame_data(7 * 100 + 2 * 10 + 1))


def test_tar_indexed_once_and_read_in_place(two_roots, monkeypatch):
    root = two_roots[1]
    opens = []
    real_open = tarfile.open

    def counting_open(*args, **kwargs):
        opens.append(args[0] if args else kwargs.get("name"))
        return real_open(*args, **kwargs)

    monkeypatch.setattr(raw.tarfile, "open", counting_open)
    before = sorted(p for p in root.rglob("*"))
    archive = RawArchive(root)
    archive.exposures(DATE, 7)
    refs = archive.frames(DATE, 7)
    archive.frames(DATE, 7, kind="sci", exp=2)
    archive.frames_in_window([DATE], ["sci"])
    for ref in refs:
        read_raw_amp(ref)
        archive.read_header(ref)
        read_header_model(ref)
    archive.tar_members(refs[0].source.tar_path)
    assert len(opens) == 1
    assert sorted(p for p in root.rglob("*")) == before  # nothing extracted
    # a worker with only the (pickled) ref reads the member without listing the tar
    ref = pickle.loads(pickle.dumps(refs[-1]))
    read_raw_amp(ref)
    assert len(opens) == 1
    assert isinstance(ref.source, TarMember) and ref.source.size == os.path.getsize(
        obs_dir(two_roots[0], 7) / "exp02" / "virus" / ref.name
    )


def test_frame_ref_small_and_picklable(two_roots):
    for root in two_roots:
        ref = RawArchive(root).frames(DATE, 7)[0]
        blob = pickle.dumps(ref)
        assert len(blob) < 800
        assert pickle.loads(blob) == ref
    archive = RawArchive(two_roots[1])
    archive.frames(DATE, 7)
    clone = pickle.loads(pickle.dumps(archive))
    assert clone.frames(DATE, 7) == archive.frames(DATE, 7)


def test_both_layouts_merge_folder_wins(tmp_path, caplog):
    build_obs_folder(tmp_path, 9, exps=(1, 2))
    tar_obs(tmp_path, 9, remove_folder=False)
    # the folder keeps only exp01 LL, and that copy differs from the tarred one
    folder = tmp_path / DATE / "virus" / "virus0000009"
    shutil.rmtree(folder / "exp02")
    (folder / "exp01" / "virus" / frame_name("LU", second=1)).unlink()
    ll_path = folder / "exp01" / "virus" / frame_name("LL", second=1)
    write_frame(ll_path, frame_data(1234), make_header("LL"))
    (folder / "exp01" / "virus" / "notes.txt").write_text("x")
    with caplog.at_level(logging.WARNING, logger="remedy_dask.io.raw"):
        refs = RawArchive(tmp_path).frames(DATE, 9)
    assert "notes.txt" in caplog.text
    assert len(refs) == 4
    ll1 = [r for r in refs if r.exp == 1 and r.amp == "LL"][0]
    assert not ll1.in_tar
    np.testing.assert_array_equal(read_raw_amp(ll1).data, frame_data(1234))
    assert all(r.in_tar for r in refs if r is not ll1)


def test_non_matching_names_ignored_and_logged(tmp_path, caplog):
    build_obs_folder(tmp_path, 3, exps=(1,), amps=("RU",), kind="flt")
    vdir = tmp_path / DATE / "virus" / "virus0000003" / "exp01" / "virus"
    for bad in (f"{DATE}T031501.3_047XX_sci.fits", f"{DATE}T031501.3_047LL_foo.fits", "a.fits"):
        (vdir / bad).write_bytes(b"")
    (tmp_path / DATE / "virus" / "virus0000003x").mkdir()  # not an observation
    archive = RawArchive(tmp_path)
    with caplog.at_level(logging.WARNING, logger="remedy_dask.io.raw"):
        refs = archive.frames(DATE, 3)
    assert [(r.amp, r.kind) for r in refs] == [("RU", "flt")]
    assert "ignored 3 entries" in caplog.text and "047XX" in caplog.text
    assert archive.observations(DATE) == [3]
    assert archive.frames(DATE, 4) == []
    assert archive.frames_in_window([DATE, "20190823"], ["flt", "zro"]) == refs
    with pytest.raises(ValueError):
        archive.frames_in_window([DATE], ["bogus"])


def test_frame_ref_from_path(two_roots):
    path = obs_dir(two_roots[0], 7) / "exp02" / "virus" / frame_name("LU", second=2)
    ref = frame_ref_from_path(path)
    identity = (ref.date, ref.obs, ref.exp, ref.ifuslot, ref.amp, ref.kind)
    assert identity == (DATE, 7, 2, 47, "LU", "sci")
    assert ref == RawArchive(two_roots[0]).frames(DATE, 7, exp=2, amp="LU")[0]
    with pytest.raises(RawDataError, match="file name"):
        frame_ref_from_path(path.with_name("frame.fits"))


# --- header -------------------------------------------------------------------------------------


def test_header_values_and_centre_rule():
    h = parse_amp_header(make_header("RU", ifuslot=105), "x.fits", kind="sci")
    assert (h.specid, h.ifuid, h.ifuslot, h.contid, h.amp) == (37, 24, 105, "c1a2", "RU")
    assert (h.gain, h.rdnoise, h.exptime, h.darktime) == (0.8, 2.9, 360.0, 361.2)
    assert h.ampname is None and h.object == "COSMOS_12" and h.qprog == "HETDEX"
    assert h.date == "2019-08-22T03:15:12.3" and h.parangle == 35.5 and h.ambtemp == 12.25
    # commanded centre within 25": used
    assert h.ra_deg == pytest.approx((10.0 + 0.5 / 3600) * 15, abs=1e-12) and h.dec_deg == 2.0
    assert h.substitutions == ()
    # commanded centre 30" away in dec: the pointing is used, with a note
    far = parse_amp_header(make_header(TRAJCDEC=2.0 + 30 / 3600), "x.fits", kind="sci")
    assert far.ra_deg == pytest.approx(150.0) and far.dec_deg == 2.0
    assert any("> 25" in n for n in far.substitutions)
    # 24" away (RA difference scaled by cos dec at dec 60): still the commanded centre
    near_header = make_header(TRAJDEC=60.0, TRAJCDEC=60.0, TRAJCRA=10.0 + 2 * 24 / 15 / 3600)
    near = parse_amp_header(near_header, "x.fits", kind="sci")
    assert near.ra_deg == pytest.approx(150.0 + 2 * 24 / 3600)
    only_t = parse_amp_header(make_header(TRAJCRA=None, TRAJCDEC=None), "x.fits", kind="sci")
    assert only_t.ra_deg == pytest.approx(150.0)
    # blanks in CCDPOS/CCDHALF are stripped; AMPNAME read
    blanks = make_header(CCDPOS="L ", CCDHALF=" U", AMPNAME="UL")
    assert parse_amp_header(blanks, "x", "sci").amp == "LU"
    assert parse_amp_header(make_header(AMPNAME="UL"), "x", "sci").ampname == "UL"


def test_gain_and_rdnoise_defaults_logged(caplog):
    with caplog.at_level(logging.WARNING, logger="remedy_dask.io.header"):
        h = parse_amp_header(make_header(GAIN=-1, RDNOISE=None), "frame.fits", kind="sci")
    assert h.gain == 0.85 and h.rdnoise == 3.0
    assert "GAIN=-1 <= 0: using 0.85" in h.substitutions
    assert "RDNOISE missing: using 3.0" in h.substitutions
    assert "frame.fits" in caplog.text and "GAIN=-1 <= 0: using 0.85" in caplog.text
    assert parse_amp_header(make_header(GAIN=0.0, RDNOISE=-2.0), "f", "sci").rdnoise == 3.0


def test_kind_dependent_keywords():
    with pytest.raises(RawDataError, match="EXPTIME"):
        parse_amp_header(make_header(EXPTIME=None), "f.fits", kind="sci")
    with pytest.raises(RawDataError, match="EXPTIME"):
        parse_amp_header(make_header(EXPTIME=None), "f.fits", kind=None)
    zro = parse_amp_header(make_header(EXPTIME=None, OBJECT=None, TRAJRA=None, TRAJDEC=None,
                                       TRAJCRA=None, TRAJCDEC=None), "f.fits", kind="zro")
    assert zro.exptime == 0.0 and zro.object == "" and np.isnan(zro.ra_deg)
    assert "EXPTIME missing: using 0.0" in zro.substitutions
    with pytest.raises(RawDataError, match="OBJECT"):
        parse_amp_header(make_header(OBJECT=None), "f.fits", kind="cmp")
    with pytest.raises(RawDataError, match="TRAJRA"):
        no_pointing = make_header(TRAJRA=None, TRAJDEC=None, TRAJCRA=None, TRAJCDEC=None)
        parse_amp_header(no_pointing, "f", "sci")
    # DATE fallbacks: DATE-OBS + UT, then the file-name timestamp
    h = parse_amp_header(make_header(DATE=None, DATE_OBS="2019-08-22", UT="03:15:12.3"), "f", "sci")
    assert h.date == "2019-08-22T03:15:12.3" and any("DATE-OBS" in n for n in h.substitutions)
    member = f"t.tar:virus0000007/exp01/virus/{frame_name('LL')}"
    h = parse_amp_header(make_header(DATE=None), member, "sci")
    assert h.date == "2019-08-22T03:15:12.3"
    with pytest.raises(RawDataError, match="DATE"):
        parse_amp_header(make_header(DATE=None), "plain.fits", "sci")
    with pytest.raises(RawDataError, match="SPECID"):
        parse_amp_header(make_header(SPECID="abc"), "f.fits", "sci")


# --- bad inputs ---------------------------------------------------------------------------------


def one_line_error(ref, *fragments: str) -> RawDataError:
    with pytest.raises(RawDataError) as info:
        read_raw_amp(ref)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


@pytest.fixture()
def good_frame(tmp_path: Path) -> Path:
    return build_obs_folder(tmp_path, 5, exps=(1,), amps=("LL",))[0]


def test_corrupt_and_truncated_fits(good_frame):
    ref = frame_ref_from_path(good_frame)
    blob = good_frame.read_bytes()
    good_frame.write_bytes(b"this is not a FITS file" * 200)
    one_line_error(ref, good_frame.name, "corrupt FITS")
    good_frame.write_bytes(blob[: len(blob) // 2])
    one_line_error(ref, good_frame.name, "truncated FITS")
    good_frame.write_bytes(blob[:1000])
    one_line_error(ref, good_frame.name, "no END card")
    good_frame.write_bytes(b"")
    one_line_error(ref, good_frame.name, "corrupt FITS")
    good_frame.unlink()
    one_line_error(ref, good_frame.name, "cannot read file")


@pytest.mark.parametrize(
    "data, header, problem",
    [
        (frame_data(1, (1032, 1000)), make_header(), "wrong image shape (1032, 1000)"),
        (frame_data(1, (1032,)), make_header(), "wrong image shape (1032,)"),
        (None, make_header(), "no image data"),
        (frame_data(1), make_header(CCDHALF=None), "missing header keyword CCDHALF"),
        (frame_data(1), make_header(IFUSLOT=None), "missing header keyword IFUSLOT"),
        (frame_data(1), make_header(CCDPOS="X"), "unknown amplifier"),
    ],
)
def test_bad_frames(good_frame, data, header, problem):
    write_frame(good_frame, data, header)
    one_line_error(frame_ref_from_path(good_frame), good_frame.name, problem)


def test_binned_frame_accepted(good_frame):
    write_frame(good_frame, frame_data(2, (516, 532)), make_header())
    amp = read_raw_amp(frame_ref_from_path(good_frame))
    assert amp.binning == (2, 2) and amp.data.shape == (516, 532)


def test_float_frame_read_as_float32(good_frame):
    data = frame_data(3).astype(np.float32) + 0.5
    write_frame(good_frame, data, make_header())
    amp = read_raw_amp(frame_ref_from_path(good_frame))
    assert amp.data.dtype == np.float32
    np.testing.assert_array_equal(amp.data, data)


def test_truncated_and_bad_tars(tmp_path, caplog):
    build_obs_folder(tmp_path, 7, exps=(1, 2), amps=("LL",))
    tar_path = tar_obs(tmp_path, 7)
    blob = tar_path.read_bytes()
    tar_path.write_bytes(blob[: len(blob) - 1_500_000])  # cut inside the second member
    archive = RawArchive(tmp_path)
    with caplog.at_level(logging.WARNING, logger="remedy_dask.io.raw"):
        refs = archive.frames(DATE, 7)
    assert "truncated" in caplog.text
    assert [r.exp for r in refs] == [1, 2]
    read_raw_amp(refs[0])  # the complete member still reads
    member = f"virus0000007.tar:virus0000007/exp02/virus/{refs[1].name}"
    one_line_error(refs[1], member, "truncated tar")

    tar_path.write_bytes(b"garbage" * 1000)
    with pytest.raises(RawDataError, match="not a readable tar"):
        RawArchive(tmp_path).frames(DATE, 7)
    tar_path.write_bytes(b"\x1f\x8b\x08" + b"\x00" * 100)
    with pytest.raises(RawDataError, match="gzip-compressed"):
        index_tar(tar_path)


def test_corrupt_member_names_tar_and_member(tmp_path):
    path = build_obs_folder(tmp_path, 8, exps=(1,), amps=("RL",))[0]
    write_frame(path, frame_data(1), make_header("RL", SPECID=None))
    tar_obs(tmp_path, 8)
    ref = RawArchive(tmp_path).frames(DATE, 8)[0]
    err = one_line_error(ref, "virus0000008.tar:virus0000008/exp01/virus/", "keyword SPECID")
    assert err.path.endswith(f"virus0000008.tar:virus0000008/exp01/virus/{path.name}")
