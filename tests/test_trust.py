"""Trustworthy runs: completion markers, calibration digests and checks, the output lock, exit
statuses, and one clear line for every malformed input (headers, tables, configuration)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from test_io_raw import make_header, write_frame

from remedy_dask import cli
from remedy_dask.config import PipelineConfig, check_dither, load_config
from remedy_dask.errors import ConfigError, InputFileError, RawDataError
from remedy_dask.io import calfile, store
from remedy_dask.io.lock import OutputLockedError, output_lock
from remedy_dask.io.raw import frame_ref_from_path
from remedy_dask.io.rawframe import read_raw_amp

DATE = "20190822"


# --- checkpoints ----------------------------------------------------------------------------------


def _dataset() -> xr.Dataset:
    rng = np.random.default_rng(1)
    return xr.Dataset({"flux": (("fiber", "wave"), rng.normal(size=(900, 50)).astype(np.float32)),
                       "mask": (("fiber", "wave"), np.zeros((900, 50), np.uint8))},
                      attrs={"exp": 1})


def test_group_is_complete_only_with_its_key_and_every_file(tmp_path):
    path = store.write_dataset(tmp_path, 1, "047LL", _dataset(), "key-a")
    assert store.is_complete(tmp_path, 1, "047LL", "key-a")
    assert not store.is_complete(tmp_path, 1, "047LL", "key-b")
    marker = json.loads(store.marker_path(tmp_path, 1, "047LL").read_text())
    chunks = sorted(k for k in marker["files"] if k.startswith("flux/c"))
    assert len(chunks) == 3  # 900 rows in chunks of 448: written files are all listed
    (path / chunks[1]).unlink()  # a deleted chunk would read back as NaN: not complete
    assert not store.is_complete(tmp_path, 1, "047LL", "key-a")
    store.write_dataset(tmp_path, 1, "047LL", _dataset(), "key-a")
    (path / chunks[0]).write_bytes(b"\0")  # truncated chunk
    assert not store.is_complete(tmp_path, 1, "047LL", "key-a")
    store.write_dataset(tmp_path, 1, "047LL", _dataset(), "key-a")
    back = store.read_dataset(tmp_path, 1, "047LL")  # the marker does not disturb zarr/xarray
    np.testing.assert_array_equal(back["flux"].values, _dataset()["flux"].values)
    assert not list(tmp_path.glob("exp01/.*tmp*"))
    store.marker_path(tmp_path, 1, "047LL").unlink()  # killed before the marker: not complete
    assert not store.is_complete(tmp_path, 1, "047LL", "key-a")


def _cal(amp: str = "LL", **changes) -> calfile.AmpCalibration:
    rng = np.random.default_rng(2)
    arrays = {name: rng.normal(size=(4, 5)).astype(np.float32) for name in calfile.SCIENCE_ARRAYS}
    arrays["dead"] = np.zeros(112, np.uint8)
    cal = calfile.AmpCalibration(ifuslot=47, amp=amp, specid=37, ifuid=24, read_noise=3.0,
                                 arrays=arrays)
    for key, value in changes.items():
        setattr(cal, key, value)
    return cal


def test_calibration_digest_follows_content_not_path_or_time(tmp_path):
    a = calfile.write_calibration(tmp_path / "a.h5", [_cal("LL"), _cal("LU")])
    b = calfile.write_calibration(tmp_path / "b.h5", [_cal("LL"), _cal("LU")])
    da, db = (calfile.amp_digests(p, ["047LL", "047LU"]) for p in (a, b))
    assert da == db and da["047LL"] != da["047LU"]
    changed = _cal("LL")
    changed.arrays["bias"] = changed.arrays["bias"] + np.float32(0.5)
    calfile.write_calibration(a, [changed, _cal("LU")])  # replaced at the same path
    dc = calfile.amp_digests(a, ["047LL", "047LU"])
    assert dc["047LL"] != da["047LL"] and dc["047LU"] == da["047LU"]
    calfile.amend_amp(b, "047LU", {"fiber_to_fiber": np.ones((4, 5))})
    assert calfile.amp_digests(b, ["047LU"])["047LU"] != da["047LU"]
    with h5py.File(b, "r+") as h5:  # a file written before digests existed: hashed whole
        for g in h5.values():
            del g.attrs["digest"]
    old = calfile.amp_digests(b, ["047LL", "047LU"])
    assert old["047LL"].startswith("file:") and old["047LL"] != old["047LU"]


@pytest.mark.parametrize("damage, problem", [
    (lambda h5: h5["047LL"].__delitem__("bias"), "group 047LL: missing dataset(s) bias"),
    (lambda h5: h5["047LL"].attrs.__delitem__("specid"), "missing attribute(s) specid"),
    (lambda h5: h5["047LL"].attrs.__setitem__("flags", "not json ["), "flags is not JSON"),
    (lambda h5: h5["047LL"].attrs.__setitem__("ifuid", "abc"), "ifuid='abc' is not an integer"),
])
def test_a_damaged_calibration_group_is_named_and_the_others_kept(tmp_path, damage, problem):
    path = calfile.write_calibration(tmp_path / "cal.h5", [_cal("LL"), _cal("LU")])
    with h5py.File(path, "r+") as h5:
        damage(h5)
    statuses = calfile.amp_statuses(path, science=True)
    assert statuses["047LU"] == "ok"
    assert statuses["047LL"].startswith(f"invalid: {path}: ") and problem in statuses["047LL"]


def test_calibration_of_another_format_version_is_refused(tmp_path):
    path = calfile.write_calibration(tmp_path / "cal.h5", [_cal()])
    with h5py.File(path, "r+") as h5:
        h5.attrs["format_version"] = "2.0"
    with pytest.raises(InputFileError, match=r"cal\.h5: calibration format version 2\.0"):
        calfile.amp_statuses(path)


# --- one run per output folder --------------------------------------------------------------------


def test_second_run_into_the_same_outdir_stops_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "out"
    (tmp_path / "cal.h5").write_bytes(b"")  # inputs exist: the lock is what stops the run
    (tmp_path / "f.txt").write_text("")
    with output_lock(out) as lock:
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(OutputLockedError, match=f"pid {os.getpid()} on "), output_lock(out):
            pass
        status = cli.main(["reduce", DATE, "7", "47", str(tmp_path / "cal.h5"), "--rootdir",
                           str(tmp_path), "--fplane", str(tmp_path / "f.txt"), "--out", str(out)])
        err = capsys.readouterr().err.strip()
        assert status == 2 and len(err.splitlines()) == 1
        assert "another remedy-dask run writes here" in err and f"pid {os.getpid()}" in err
    with output_lock(out):  # released when the holder ends
        pass


# --- command-line errors --------------------------------------------------------------------------


def test_calibrate_on_an_empty_root_is_one_line(tmp_path, capsys):
    status = cli.main(["calibrate", str(tmp_path), "--date", DATE, "--out",
                       str(tmp_path / "cal.h5"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err == (f"error: no calibration frames found for {DATE} under "
                                   f"{tmp_path}")
    assert not (tmp_path / "cal.h5.parts").exists()


def test_reduce_of_a_night_without_data_is_one_line(sci_night, tmp_path, capsys):
    cal = calfile.write_calibration(tmp_path / "cal.h5", [_cal()])
    root = sci_night / "plain" / "raw"
    status = cli.main(["reduce", "20190823", "7", "47", str(cal), "--rootdir", str(root),
                       "--fplane", str(sci_night / "plain" / "fplane.txt"), "--out",
                       str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err == f"error: no science frames for 20190823 observation 0000007 under {root}"


def test_unexpected_exceptions_are_one_line_with_a_hint(monkeypatch, tmp_path, capsys):
    def boom(args):
        raise KeyError("something internal")

    monkeypatch.setattr("remedy_dask.workflow.calibration.run_calibrate", boom)
    status = cli.main(["calibrate", str(tmp_path), "--date", DATE, "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err.strip()
    assert status == 1 and len(err.splitlines()) == 1
    assert "internal error: KeyError" in err and "--debug" in err
    with pytest.raises(KeyError):
        cli.main(["--debug", "calibrate", str(tmp_path), "--date", DATE, "--out", str(tmp_path)])


# --- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ("calibration:\n  combine: foo\n", "calibration.combine must be 'median' or 'mean_clipped'"),
    ("observation:\n  dither_pattern: abc\n", "dither_pattern: expected a list"),
    ("observation:\n  dither_pattern: [[0, 0], [1, 'x']]\n", "dither_pattern must be a list"),
    ("reduction:\n  max_masked_amp_fraction: 1.5\n", "max_masked_amp_fraction=1.5 is outside"),
    ("calibration:\n  min_bias_frames: 2.5\n", "min_bias_frames: expected an integer"),
])
def test_bad_configuration_values_are_named(tmp_path, text, message):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="c.yaml") as info:
        load_config(path)
    assert message in str(info.value)


def test_dither_pattern_must_cover_every_exposure():
    config = PipelineConfig()
    config.observation.dither_pattern = [[0.0, 0.0], [1.2, 0.7]]
    check_dither(config, [1, 2], "c.yaml")
    with pytest.raises(ConfigError, match="c.yaml: observation.dither_pattern has 2 offset"):
        check_dither(config, [1, 2, 3], "c.yaml")


# --- raw headers ----------------------------------------------------------------------------------


def _frame(tmp_path: Path, shape=(1032, 1064), **changes) -> Path:
    name = f"{DATE}T031512.3_047LL_sci.fits"
    data = np.full(shape, 1000, np.uint16)
    return write_frame(tmp_path / name, data, make_header("LL", **changes))


@pytest.mark.parametrize("changes, message", [
    ({"EXPTIME": 0.0}, "EXPTIME=0 s is outside (0, 86400] s"),
    ({"EXPTIME": -5.0}, "EXPTIME=-5 s is outside"),
    ({"EXPTIME": 1e30}, "EXPTIME=1e+30 s is outside"),
    ({"GAIN": 1e6}, "GAIN=1e+06 e-/ADU is outside [0, 20]"),
    ({"RDNOISE": 5000.0}, "RDNOISE=5000 e- is outside"),
    ({"TRAJDEC": 95.0}, "TRAJDEC=95 deg is outside [-90, 90]"),
    ({"TRAJRA": 30.0}, "TRAJRA=30 h is outside [0, 24]"),
    ({"PARANGLE": 1e5}, "PARANGLE=100000 deg is outside"),
    ({"AMPNAME": "XY"}, "AMPNAME='XY' is not one of"),
])
def test_header_values_out_of_range_are_named(tmp_path, changes, message):
    path = _frame(tmp_path, **changes)
    with pytest.raises(RawDataError) as info:
        read_raw_amp(frame_ref_from_path(path))
    assert str(info.value).startswith(str(path)) and message in str(info.value)


def _replace_card(path: Path, key: str, card: bytes) -> None:
    buf = bytearray(path.read_bytes())
    start = next(i for i in range(0, 2880 * 4, 80) if buf[i:i + 8] == key.ljust(8).encode())
    buf[start:start + 80] = card.ljust(80)
    path.write_bytes(bytes(buf))


@pytest.mark.parametrize("key, card, message", [
    ("EXPTIME", b"EXPTIME = 3.6.0e2 / garbled", "header card EXPTIME cannot be parsed"),
    ("BITPIX", b"COMMENT BITPIX gone", "missing header keyword BITPIX"),
    ("NAXIS", b"NAXIS   = 'two'", "NAXIS='two' is not an integer"),
    ("NAXIS1", b"NAXIS1  = 1064.5", "NAXIS1=1064.5 is not an integer"),
])
def test_broken_structural_and_value_cards_are_named(tmp_path, key, card, message):
    path = _frame(tmp_path)
    _replace_card(path, key, card)
    with pytest.raises(RawDataError) as info:
        read_raw_amp(frame_ref_from_path(path))
    assert str(info.value).startswith(str(path)) and message in str(info.value)


def test_binned_frame_is_refused_by_the_reduction_with_its_name(tmp_path):
    from remedy_dask.workflow.frames import reduce_frame

    path = _frame(tmp_path, shape=(516, 532))
    assert read_raw_amp(frame_ref_from_path(path)).binning == (2, 2)
    with pytest.raises(RawDataError, match=r"047LL_sci.fits: frame binned 2x2 \(shape \(516, 532\)\)"):
        reduce_frame(frame_ref_from_path(path))


def test_corrupt_guider_frame_and_absurd_exposure_time(tmp_path):
    import io
    import tarfile
    from datetime import datetime

    from remedy_dask.io.guider import GuiderArchive

    tar_path = tmp_path / DATE / "gc1" / "gc1.tar"
    tar_path.parent.mkdir(parents=True)
    good = fits.Header({"TRANSPAR": 0.9, "IQ": 1.5})
    with tarfile.open(tar_path, "w") as tar:
        for name, data in ((f"{DATE}T031520.0_gc1_sci.fits", good.tostring().encode()),
                           (f"{DATE}T031550.0_gc1_sci.fits", b"garbage" * 100)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    guider = GuiderArchive(tmp_path, DATE)
    c = guider.conditions(datetime(2019, 8, 22, 3, 15, 12), 360.0)
    assert c.n_frames == 1 and c.transparency == 0.9
    assert any("1 unreadable guider frame(s) skipped" in n and "031550" in n for n in c.notes)
    with pytest.raises(ValueError, match="exposure time 1e\\+30 s is outside"):
        guider.conditions(datetime(2019, 8, 22, 3, 15, 12), 1e30)


# --- tables ---------------------------------------------------------------------------------------


def test_nan_rows_in_tables_are_named(tmp_path, sci_night):
    from remedy_dask.io.catalog import read_catalog
    from remedy_dask.io.fplane import read_fplane
    from remedy_dask.io.ifucen import read_ifucen

    sim = sci_night / "plain"
    lines = (sim / "fplane.txt").read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if line.startswith("047"))
    fields = lines[row].split()
    fields[1] = "nan"
    lines[row] = " ".join(fields)
    (tmp_path / "fplane.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputFileError, match=rf"fplane.txt: line {row + 1}: non-finite"):
        read_fplane(tmp_path / "fplane.txt")
    lines = (sim / "IFUcen_HETDEX.txt").read_text().splitlines()
    fields = lines[-1].split()
    fields[2] = "NaN"
    lines[-1] = " ".join(fields)
    (tmp_path / "IFUcen.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputFileError, match=rf"IFUcen.txt: line {len(lines)}: non-finite"):
        read_ifucen(tmp_path / "IFUcen.txt")
    lines = (sim / "ps1_catalog.csv").read_text().splitlines()
    header = lines[0].split(",")
    fields = lines[2].split(",")
    fields[header.index("raMean")] = "nan"
    lines[2] = ",".join(fields)
    (tmp_path / "cat.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputFileError, match=r"cat.csv: catalog: 1 row\(s\) with raMean not a "
                                             r"number in \[0, 360\] \(first: row 2\)"):
        read_catalog(tmp_path / "cat.csv")


def test_simulate_never_deletes_what_it_did_not_create(tmp_path):
    from remedy_dask.sim import simulate_night

    user = tmp_path / "raw" / DATE / "virus" / "virus0000007" / "exp01" / "virus" / "mine.fits"
    user.parent.mkdir(parents=True)
    user.write_bytes(b"a user's file")
    with pytest.raises(ConfigError, match="virus0000007: exists and was not written by "
                                          "remedy-dask simulate"):
        simulate_night(tmp_path, ifuslots=(47,), seed=3, science_only=True)
    assert user.read_bytes() == b"a user's file"
