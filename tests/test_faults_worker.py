"""A worker process killed mid-run and a full disk: the run flags or stops cleanly, and a rerun
gives products bit-identical to a clean run.  One IFU (047) of the e2e night's observation 7,
reduced through the command line; the provenance's code digests are checked on its product."""

from __future__ import annotations

import json
import os
from pathlib import Path

import dask
import h5py
import numpy as np
import pytest
from astropy.io import fits

from remedy_dask import cli
from remedy_dask.config import load_config
from remedy_dask.io import store
from remedy_dask.io.digest import AMP_CODE, SKY_CODE, code_digest
from remedy_dask.requests import ReduceRequest
from remedy_dask.workflow.faults import KILL_AMP
from remedy_dask.workflow.science import pending_checkpoints
from raw_copy import untar_ifu

pytestmark = pytest.mark.e2e

PRODUCT = "20190822_0000007.h5"
KEYS = ("047LL", "047LU", "047RL", "047RU")
WORK = Path("work") / "20190822_0000007.zarr"
COMPARED = ("fibers/spectrum", "fibers/error", "fibers/sky", "fibers/mask", "fibers/ra",
            "fibers/dec", "exposures/flux_scale", "sources/spectrum", "detections/wave")


@pytest.fixture(scope="module")
def night(e2e, tmp_path_factory):
    """IFU 047 of observation 7 untarred, and its clean reduction (synchronous scheduler: no
    cluster start; the killed run's checkpoints, computed on a LocalCluster, are compared with
    its checkpoints array for array)."""
    root = tmp_path_factory.mktemp("faults")
    untar_ifu(e2e["sim"], root)
    config = root / "no-cube.yaml"  # the per-IFU FITS file without its cube (time)
    config.write_text("observation:\n  make_cube: false\n")
    req = ReduceRequest(date="20190822", obs=7, ifuslot=47, calfile=e2e["cal"],
                        rootdir=root / "raw", fplane=e2e["sim"] / "fplane.txt",
                        ifucen=e2e["sim"] / "IFUcen_HETDEX.txt", out=root / "clean",
                        neighbor_dist=0, config=load_config(config), config_file=config)
    assert cli.main(_argv(req, e2e, "--cluster", "sync")) == 0
    return {"req": req, "e2e": e2e, "clean": root / "clean"}


def _argv(req: ReduceRequest, e2e: dict, *extra: str) -> list[str]:
    return ["--quiet", "reduce", req.date, str(req.obs), str(req.ifuslot), str(req.calfile),
            "--rootdir", str(req.rootdir), "--out", str(req.out), "--fplane", str(req.fplane),
            "--ifucen", str(req.ifucen), "--catalog", str(e2e["sim"] / "ps1_catalog.csv"),
            "--neighbor-dist", "0", "--config", str(req.config_file), *extra]


def _assert_products_equal(a: Path, b: Path) -> None:
    with h5py.File(a) as new, h5py.File(b) as old:
        for name in COMPARED:
            np.testing.assert_array_equal(new[name][...], old[name][...], err_msg=name)
        assert json.loads(new.attrs["flags"]) == json.loads(old.attrs["flags"]) == []


def _group(out: Path, exp: int, key: str) -> dict[str, np.ndarray]:
    arrays, attrs = store.read_arrays(out / WORK, exp, key, ("flux", "error", "mask"))
    return {**arrays, **{k: attrs[k] for k in ("wave_shift", "wave_shift_amp",
                                               "wave_shift_pooled")}}


def test_a_killed_worker_flags_its_amp_exposure_and_a_rerun_equals_a_clean_run(
        night, tmp_path, monkeypatch):
    """The worker running ``ccd`` of 047LL exp02 SIGKILLs itself each time it starts it (as
    the kernel's out-of-memory killer would kill it): after allowed-failures + 1 deaths (0 here
    for time, 3 by default: each costs a worker restart) the task is lost, in the first attempt
    and in the second; the run goes on without that amp-exposure.  A task that was queued on
    the dying worker beside it is lost too in that attempt (distributed counts it as a
    suspect): it succeeds in the second attempt, or, lost again, is flagged the same way.  The
    rerun uses the synchronous scheduler (no cluster start): the products do not depend on it."""
    import dataclasses

    from remedy_dask.geometry import ccd_partner

    req = dataclasses.replace(night["req"], out=tmp_path / "killed")
    clean = night["clean"]
    monkeypatch.setenv(KILL_AMP, "047LL-exp02")
    processes = tmp_path / "processes.yaml"  # worker processes, even for a small reduction
    processes.write_text("processes: true\n")
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):
        status = cli.main(_argv(req, night["e2e"], "--workers", "2", "--cluster-config",
                                str(processes)))
    monkeypatch.delenv(KILL_AMP)
    assert status == 3  # products written, something left out
    # lost in the second attempt; or, when the future of its chain reported the partner's task
    # killed beside it (which of two killed tasks a future reports is the scheduler's order),
    # taken for a chain waiting for its partner and lost in the third, alone
    reasons = [f"047LL exp02: worker died: 1 worker process died running "
               f"ccd-047LL-exp02-{attempt}-20190822_0000007 (out of memory, or a crash in "
               f"compiled code)" for attempt in ("retry", "alone")]
    with h5py.File(req.out / PRODUCT) as h5:
        flags = json.loads(h5.attrs["flags"])
        lost = {(int(f[9:11]), f[:5]) for f in flags}
        reason = next((r for r in reasons if r in flags), None)
        assert reason and all(": worker died: 1 worker process died running " in f
                              for f in flags), flags
        assert len(lost) == len(flags), flags
        assert h5["fibers/spectrum"].shape[0] == 3 * 448 - 112 * len(lost)
        assert not ((h5["fibers/exposure"][...] == 2)
                    & (h5["fibers/amp"].asstr()[...] == "LL")).any()
    assert f"left out: {reason}" in (req.out / "remedy-dask.log").read_text()
    # every other amp-exposure is the clean run's, except the CCD partner of a lost one computed
    # alone (stored unpooled), whose wavelength shift is its own measurement (the same) applied
    # unpooled; a partner that finished, pooled, before its half was lost is the clean run's
    partners = {(e, k[:3] + ccd_partner(k[3:])) for e, k in lost} - lost
    alone = {(e, k) for e, k in partners if _group(req.out, e, k)["wave_shift_pooled"] == 0}
    # 047LL exp02 dies in its first step, never measured: its partner is measured alone, or is
    # lost itself when it was queued on the dying worker in the second attempt
    assert (2, "047LU") in alone | lost
    for exp in (1, 2, 3):
        for key in KEYS:
            if (exp, key) in lost:
                assert not store.group_path(req.out / WORK, exp, key).exists()
                continue
            got, want = _group(req.out, exp, key), _group(clean, exp, key)
            if (exp, key) in alone:
                assert (got["wave_shift_pooled"], want["wave_shift_pooled"]) == (0, 1)
                assert got["wave_shift"] == got["wave_shift_amp"] == want["wave_shift_amp"]
                continue
            for name, value in want.items():
                np.testing.assert_array_equal(got[name], value, err_msg=f"exp{exp} {key} {name}")
    # the rerun recomputes exactly the lost amp-exposures, their partners (to pool them) and
    # the skies of their exposures, and its products are bit-identical to the clean run's
    redo = lost | alone
    assert pending_checkpoints(req) == (
        [f"exp{e:02d}/{k}" for k in KEYS for e in (1, 2, 3) if (e, k) in redo]
        + [f"exp{e:02d}/sky" for e in sorted({e for e, _ in redo})])
    assert cli.main(_argv(req, night["e2e"], "--cluster", "sync")) == 0
    assert (f"resuming: {12 - len(redo)} amp-exposure(s) already reduced"
            in (req.out / "remedy-dask.log").read_text())
    assert pending_checkpoints(req) == []
    _assert_products_equal(req.out / PRODUCT, clean / PRODUCT)


def test_a_full_disk_stops_with_one_line_and_a_rerun_resumes_to_a_clean_run(
        night, tmp_path, monkeypatch, capsys):
    """The disk fills up while the checkpoints are written (``write()`` fails with ENOSPC and
    names no file, as the kernel's does); synchronous scheduler, so the failure is injected in
    this process."""
    import dataclasses
    import errno

    req = dataclasses.replace(night["req"], out=tmp_path / "full")
    budget = {"bytes": 12_000_000}  # room for a few amp-exposures' chunks
    write_bytes = Path.write_bytes

    def filling_disk(path: Path, data: bytes) -> int:
        if str(path).startswith(str(req.out)):
            budget["bytes"] -= len(data)
            if budget["bytes"] < 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_bytes(path, data)

    monkeypatch.setattr(Path, "write_bytes", filling_disk)
    status = cli.main(_argv(req, night["e2e"], "--cluster", "sync"))
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1, err
    line = err.split(": No space left on device;")
    assert len(line) == 2 and line[0].startswith(f"error: {req.out / WORK}/exp0"), err
    # nothing half-written is left or would be reused: no temporaries, no product, every group
    # in place has its completion marker with the key a rerun looks for, the others are pending
    work = req.out / WORK
    assert not list(req.out.rglob("*.tmp*")) and not (req.out / PRODUCT).exists()
    groups = {f"{p.parent.name}/{p.name}" for p in work.glob("exp*/*")
              if not p.name.startswith(".")}
    markers = {f"{p.parent.name}/{p.name[1:-len('.complete.json')]}"
               for p in work.glob("exp*/.*.complete.json")}
    pending = pending_checkpoints(req)
    assert groups == markers and 0 < len(groups) < 15
    assert sorted(groups | set(pending)) == sorted(
        f"exp{e:02d}/{k}" for e in (1, 2, 3) for k in (*KEYS, "sky"))
    assert not groups & set(pending)
    failed = line[0].removeprefix(f"error: {work}/")
    assert failed in pending
    # space freed: the rerun resumes and its products are bit-identical to the clean run's
    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    assert cli.main(_argv(req, night["e2e"], "--cluster", "sync")) == 0
    n_amps = len([g for g in groups if not g.endswith("/sky")])
    assert (f"resuming: {n_amps} amp-exposure(s) already reduced"
            in (req.out / "remedy-dask.log").read_text())
    _assert_products_equal(req.out / PRODUCT, night["clean"] / PRODUCT)


def test_products_record_the_code_digests_of_the_checkpoint_keys(night):
    """A user can tell which code made a product: the digests the checkpoint keys use (amp
    chain, sky) and the whole package's, in the HDF5 root and the per-IFU FITS header, and the
    code that wrote its calibration file."""
    from remedy_dask.io.raw import RawArchive
    from remedy_dask.workflow.keys import CheckpointKeys
    from remedy_dask.workflow.science import plan_observation

    req, clean = night["req"], night["clean"]
    plan = plan_observation(RawArchive(req.rootdir), req.date, req.obs, req.ifuslot,
                            Path(req.calfile), 0)
    keys = CheckpointKeys.of(plan, Path(req.calfile), req.config, req.fplane, req.ifucen)
    with h5py.File(clean / PRODUCT) as h5:
        recorded = {k: h5.attrs[k] for k in ("code_digest_amp_chain", "code_digest_sky",
                                             "code_digest", "code_version")}
    assert recorded["code_digest_amp_chain"] == keys.amp_code == code_digest(AMP_CODE)
    assert recorded["code_digest_sky"] == keys.sky_code == code_digest(SKY_CODE)
    assert recorded["code_digest"] == code_digest()
    assert len({recorded[k] for k in recorded}) == 4
    assert all(len(v) == 24 and int(v, 16) >= 0 for k, v in recorded.items() if k != "code_version")
    header = fits.getheader(clean / "20190822_0000007_047.fits")
    assert (header["CODEAMP"], header["CODESKY"], header["CODEALL"]) == (
        recorded["code_digest_amp_chain"], recorded["code_digest_sky"], recorded["code_digest"])
    # the calibration file records the code that wrote it (the fixture's calibration: this code),
    # and the product carries it over
    with h5py.File(req.calfile) as cal, h5py.File(clean / PRODUCT) as h5:
        assert cal.attrs["code_digest"] == code_digest()
        assert h5.attrs["calibration_code_digest"] == cal.attrs["code_digest"]
    assert header["CALCODE"] == code_digest()
