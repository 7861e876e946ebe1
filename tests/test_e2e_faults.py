"""Faults and reruns: resume from the zarr intermediates (also after a kill), a corrupt amp
flagged while the rest is reduced, and source injection recovered by the detection."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time

import h5py
import numpy as np
import pytest

from remedy_dask import cli

pytestmark = pytest.mark.e2e


def _attrs(group):
    return json.loads((group / "zarr.json").read_text())["attributes"]


def _reduce_args(e2e, out, *extra):
    sim = e2e["sim"]
    return ["--quiet", "reduce", "20190822", "7", "47", str(e2e["cal"]), "--rootdir",
            str(sim / "raw"), "--out", str(out), "--catalog", str(sim / "ps1_catalog.csv"),
            "--fplane", str(sim / "fplane.txt"), "--ifucen", str(sim / "IFUcen_HETDEX.txt"),
            "--neighbor-dist", "0", "--workers", "2", *extra]


def _band_excess(product, slot: int, x0: float, y0: float, wave: float) -> float:
    """Flux (1e-17 erg/s/cm^2) in a 20 A band at ``wave`` above its side bands, summed over the
    fibers of IFU ``slot`` within 2" of (x0, y0)."""
    with h5py.File(product) as P:
        f = P["fibers"]
        sl = f["ifuslot"][...] == slot
        near = sl & (np.hypot(f["ifu_x"][...] - x0, f["ifu_y"][...] - y0) < 2.0)
        spec, w = f["spectrum"][...][near], P["wavelength"][...]
    band = np.abs(w - wave) < 10
    side = (np.abs(w - wave) > 20) & (np.abs(w - wave) < 40)
    excess = np.nanmean(spec[:, band], axis=1) - np.nanmean(spec[:, side], axis=1)
    return float(np.nansum(excess) * band.sum() * (w[1] - w[0]))


def test_injected_line_is_detected_and_resume_skips_finished_amps(e2e, tmp_path, capsys):
    out = tmp_path / "inj"
    shutil.copytree(e2e["out"] / "work", out / "work")
    wave = np.arange(3400.0, 5600.0, 0.5)
    flam = 4e-16 / (np.sqrt(2 * np.pi) * 2.4) * np.exp(-0.5 * ((wave - 4500.0) / 2.4) ** 2)
    src = tmp_path / "line.txt"
    np.savetxt(src, np.column_stack([wave, flam]))
    x0, y0 = -6.0, -4.0
    # the injection goes onto blank sky: in the product without it, the fibers within 2" of
    # (x0, y0) show no line at 4500 A (a 20 A band against its side bands). The first position,
    # (4, -6), held +5.3 (1e-17 erg/s/cm^2) there in this night's realisation (~2 sigma: the
    # rectified pixels' noise is correlated, so band sums scatter ~1.3x their quadrature error,
    # docs/accuracy.md)
    assert abs(_band_excess(e2e["product"], 47, x0, y0, 4500.0)) < 2.0
    args = _reduce_args(e2e, out, "--all-ifus", "--source-file", str(src), "--source-x", str(x0),
                        "--source-y", str(y0))
    assert cli.main(args) == 0
    assert capsys.readouterr().out == ""  # --quiet
    assert "resuming: 48 amp-exposure(s) already reduced" in (out / "remedy-dask.log").read_text()
    with h5py.File(out / "20190822_0000007.h5") as P:
        d = P["detections"]
        a = P["astrometry"].attrs
        on = (d["ifuslot"][...] == 47) & (np.abs(d["wave"][...] - 4500.0) < 3)
        assert on.any(), "the injected line must be found"
        k = np.flatnonzero(on)[np.argmax(d["sn"][...][on])]
        assert np.hypot(d["ifu_x"][k] - x0, d["ifu_y"][k] - y0) < 1.5
        assert abs(d["flux"][k] / 40.0 - 1) < 0.15  # 4e-16 erg/s/cm^2 = 40 in product units
        assert "injection" in P.attrs and a["n_stars"] > 0


def test_killed_run_resumes_without_redoing_finished_work(e2e, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "remedy_dask", *_reduce_args(e2e, out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    work = out / "work" / "20190822_0000007.zarr"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(work.glob("exp*/.0*.complete.json"))) < 4:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # complete = a completion marker (written last); a group renamed into place just before
    # the kill but without its marker is recomputed
    done = sorted(p.parent / p.name[1:-len(".complete.json")]
                  for p in work.glob("exp*/.0*.complete.json"))
    assert 4 <= len(done) < 12, "the run should be killed midway"
    stamps = {p: (p / "zarr.json").stat().st_mtime_ns for p in done}
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert rerun.stdout == ""  # --quiet; what it would have printed is in the log file
    assert (f"resuming: {len(done)} amp-exposure(s) already reduced"
            in (out / "remedy-dask.log").read_text())
    assert all((p / "zarr.json").stat().st_mtime_ns == t for p, t in stamps.items())
    assert len(list(work.glob("exp*/0*"))) == 12 and not list(work.glob("exp*/.*tmp*"))
    # the resumed run's products are bit-identical to an uninterrupted run's
    clean = tmp_path / "clean"
    assert subprocess.run([sys.executable, "-m", "remedy_dask", *_reduce_args(e2e, clean)],
                          capture_output=True, env=env, timeout=600, check=False).returncode == 0
    with h5py.File(out / "20190822_0000007.h5") as P, \
            h5py.File(clean / "20190822_0000007.h5") as Q:
        for name in ("fibers/spectrum", "fibers/error", "fibers/sky", "sources/spectrum"):
            np.testing.assert_array_equal(P[name][...], Q[name][...], err_msg=name)
    # amps redone after the kill pooled their wavelength shift with a partner read back from
    # its checkpoint: the same numbers as the uninterrupted run
    for group in work.glob("exp*/0*"):
        a = _attrs(group)
        b = _attrs(e2e["work"] / group.relative_to(work))
        assert a["wave_shift_pooled"] == 1
        assert (a["wave_shift"], a["wave_shift_amp"]) == (b["wave_shift"], b["wave_shift_amp"])
    with h5py.File(out / "20190822_0000007.h5") as P:
        assert P["fibers/spectrum"].shape[0] == 448 * 3


def test_corrupt_amp_is_flagged_and_the_rest_reduced(e2e, tmp_path, capsys):
    root = tmp_path / "raw"
    night = root / "20190822" / "virus"
    night.mkdir(parents=True)
    with tarfile.open(e2e["sim"] / "raw" / "20190822" / "virus" / "virus0000007.tar") as tar:
        tar.extractall(night, filter="data")
    victim = next((night / "virus0000007" / "exp02" / "virus").glob("*047RU_sci.fits"))
    victim.write_bytes(victim.read_bytes()[: 2880 * 3])  # truncated mid-data
    args = _reduce_args(e2e, tmp_path / "out")
    args[args.index("--rootdir") + 1] = str(root)
    assert cli.main(args) == 3  # products written, one amp-exposure left out
    with h5py.File(tmp_path / "out" / "20190822_0000007.h5") as P:
        n = P["fibers/spectrum"].shape[0]
        assert n == 448 * 3 - 112  # every other amp-exposure of IFU 047 is there
        flags = P.attrs["flags"]
        assert victim.name in flags and "truncated" in flags.lower()
    # the other amp of the victim's CCD measured its wavelength shift alone
    a = _attrs(tmp_path / "out" / "work" / "20190822_0000007.zarr" / "exp02" / "047RL")
    assert a["wave_shift_pooled"] == 0 and a["wave_shift"] == a["wave_shift_amp"]
