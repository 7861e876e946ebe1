"""Content-keyed resume: every input of a checkpoint is in its key, so a rerun after a change
recomputes exactly the dependent checkpoints, and the products equal a clean run's."""

from __future__ import annotations

import dataclasses
import os
import shutil

import h5py
import numpy as np
import pytest

from remedy_dask import cli
from remedy_dask.config import PipelineConfig
from remedy_dask.io import calfile, store
from remedy_dask.requests import ReduceRequest
from remedy_dask.workflow.science import pending_checkpoints
from raw_copy import untar_ifu

pytestmark = pytest.mark.e2e

SKIES = ["exp01/sky", "exp02/sky", "exp03/sky"]


def _all(keys):
    return [f"exp{e:02d}/{k}" for k in keys for e in (1, 2, 3)]


@pytest.fixture(scope="module")
def resumable(e2e, tmp_path_factory):
    """An untarred copy of observation 7, private copies of the calibration and fplane, and a
    clean one-IFU reduction of them."""
    root = tmp_path_factory.mktemp("resume")
    untar_ifu(e2e["sim"], root)
    cal, fplane = root / "cal.h5", root / "fplane.txt"
    shutil.copy2(e2e["cal"], cal)
    shutil.copy2(e2e["sim"] / "fplane.txt", fplane)
    args = ReduceRequest(
        date="20190822", obs=7, ifuslot=47, calfile=cal, rootdir=root / "raw", fplane=fplane,
        ifucen=e2e["sim"] / "IFUcen_HETDEX.txt", out=root / "out", neighbor_dist=0)
    assert cli.main(_argv(args, e2e)) == 0
    product = args.out / "20190822_0000007.h5"
    clean = root / "clean.h5"
    shutil.copy2(product, clean)
    return args, clean


def _argv(args, e2e):
    return ["--quiet", "reduce", args.date, str(args.obs), str(args.ifuslot), str(args.calfile),
            "--rootdir", str(args.rootdir), "--out", str(args.out), "--fplane", str(args.fplane),
            "--ifucen", str(args.ifucen), "--catalog", str(e2e["sim"] / "ps1_catalog.csv"),
            "--neighbor-dist", "0", "--workers", "2"]


def _frame(args, exp, key):
    return next((args.rootdir / "20190822" / "virus" / "virus0000007" / f"exp{exp:02d}"
                 / "virus").glob(f"*{key}_sci.fits"))


def test_each_input_recomputes_exactly_its_dependents(resumable):
    args, _ = resumable
    keys = [f"047{a}" for a in ("LL", "LU", "RL", "RU")]
    assert pending_checkpoints(args) == []
    # a raw frame rewritten: the amp-exposure, the other amp of its CCD (pooled shift), the sky
    frame = _frame(args, 2, "047LL")
    st = frame.stat()
    os.utime(frame, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert pending_checkpoints(args) == ["exp02/047LL", "exp02/047LU", "exp02/sky"]
    os.utime(frame, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert pending_checkpoints(args) == []
    # the calibration replaced at the same path: identical content is reused, a changed amp
    # recomputes its amp-exposures, its CCD partner's and every sky
    original = args.calfile.with_name("cal.orig.h5")
    shutil.copy2(args.calfile, original)
    copy = args.calfile.with_name("cal.new.h5")
    shutil.copyfile(original, copy)
    os.replace(copy, args.calfile)  # new file, new mtime, same content
    assert pending_checkpoints(args) == []
    shutil.copyfile(original, copy)
    ftf = calfile.read_amp(copy, "047RU")["fiber_to_fiber"]
    calfile.amend_amp(copy, "047RU", {"fiber_to_fiber": ftf * 1.01})
    os.replace(copy, args.calfile)
    assert pending_checkpoints(args) == _all(["047RL", "047RU"]) + SKIES
    os.replace(original, args.calfile)
    assert pending_checkpoints(args) == []
    # the fplane (fiber positions): only the skies
    text = args.fplane.read_text()
    lines = [line.split() for line in text.splitlines()]
    row = next(i for i, f in enumerate(lines) if f and f[0] == "047")
    lines[row][1] = repr(float(lines[row][1]) + 1.0)
    args.fplane.write_text("\n".join(" ".join(f) for f in lines) + "\n")
    assert pending_checkpoints(args) == SKIES
    args.fplane.write_text(text)
    # any configuration value (the whole effective configuration is in every key)
    config = PipelineConfig()
    config.observation.dither_pattern = [[0.0, 0.0], [1.215, -0.70], [1.215, 0.71]]
    assert pending_checkpoints(dataclasses.replace(args, config=config)) == _all(keys) + SKIES
    assert pending_checkpoints(dataclasses.replace(args, config=PipelineConfig())) == []


def test_resume_after_changes_and_lost_chunks_equals_a_clean_run(resumable, capsys):
    args, clean = resumable
    e2e_like = {"sim": args.ifucen.parent}
    frame = _frame(args, 3, "047RL")
    frame.write_bytes(frame.read_bytes())  # rewritten: new mtime, same bytes
    work = args.out / "work" / "20190822_0000007.zarr"
    lost = next((work / "exp01" / "047LU" / "flux").rglob("c/*/*"))
    lost.unlink()  # a lost chunk: the group must be recomputed, never read back as NaN
    assert pending_checkpoints(args) == ["exp01/047LU", "exp03/047RL", "exp03/047RU",
                                         "exp03/sky"]
    assert cli.main(_argv(args, e2e_like)) == 0
    assert capsys.readouterr().out == ""  # --quiet: the log file has it
    assert "resuming: 9 amp-exposure(s) already reduced" in (args.out / "remedy-dask.log").read_text()
    assert pending_checkpoints(args) == []
    product = args.out / "20190822_0000007.h5"
    with h5py.File(product) as new, h5py.File(clean) as old:
        for name in ("fibers/spectrum", "fibers/error", "fibers/sky", "fibers/ra", "fibers/dec",
                     "sources/spectrum", "detections/wave"):
            np.testing.assert_array_equal(new[name][...], old[name][...], err_msg=name)
    assert store.is_complete(work, 1, "047LU", store.read_attrs(work, 1, "047LU")["input_key"])
