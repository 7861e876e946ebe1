"""Configuration, CLI error handling, calibration-file and zarr-store round trips."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
import yaml

from remedy_dask import cli
from remedy_dask.config import load_config
from remedy_dask.errors import ConfigError
from remedy_dask.io import calfile, store
from remedy_dask.workflow.cluster_settings import cluster_settings


def test_config_defaults_and_yaml_override(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("reduction:\n  extraction: aperture\n  chi2_threshold: 7\n")
    config = load_config(f)
    assert config.reduction.extraction == "aperture"
    assert config.reduction.chi2_threshold == 7.0
    assert config.calibration.combine == "median"
    assert config.section_hash("reduction") != load_config().section_hash("reduction")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("reduction:\n  extractoin: aperture\n", "unknown setting 'extractoin'"),
        ("reduction:\n  quick_sky: 3\n", "expected true/false"),
        ("reduction:\n  chi2_threshold: high\n", "expected a number"),
        ("reduction:\n  extraction: boxcar\n", "must be 'optimal' or 'aperture'"),
        ("[unclosed", "not valid YAML"),
    ],
)
def test_config_errors_are_clear(tmp_path, text, fragment):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=fragment):
        load_config(f)


def test_packaged_cluster_settings_are_the_effective_defaults():
    """What ``--cluster slurm`` uses is the packaged YAML (plus the worker lifetime derived from
    its walltime): editing the file changes the settings, there is no in-code copy."""
    from importlib import resources

    root = resources.files("remedy_dask") / "configs"
    for kind in ("local", "slurm", "pbs"):
        shipped = yaml.safe_load((root / f"{kind}.yaml").read_text())
        effective = cluster_settings(kind)
        if kind != "local":
            assert effective.pop("worker_extra_args") == [
                "--lifetime", "105m", "--lifetime-stagger", "300s"]
            shipped.pop("worker_extra_args")
        assert effective == shipped


def test_cli_bad_input_is_one_line_error(tmp_path, capsys):
    status = cli.main(["config", "show", "--config", str(tmp_path / "missing.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and err[0].startswith("error:") and "missing.yaml" in err[0]


def test_cli_config_show_prints_effective_config(capsys):
    assert cli.main(["config", "show"]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["reduction"]["extraction"] == "optimal"


def test_python_m_entry_point():
    out = subprocess.run(
        [sys.executable, "-m", "remedy_dask", "--version"], capture_output=True, text=True,
        check=True,
    )
    assert out.stdout.startswith("remedy-dask")


def test_calibration_file_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    trace = np.tile(np.linspace(25, 1010, 112)[:, None], (1, 1032))
    wave = np.tile(np.linspace(3460, 5550, 1032)[None, :], (112, 1))
    bias = rng.normal(0, 1.3, (1032, 1032)).astype("f4")
    cal = calfile.AmpCalibration(
        ifuslot=47, amp="LL", specid=37, ifuid=24, contid="0037", read_noise=3.1,
        arrays={"trace": trace, "wavelength": wave, "bias": bias,
                "pixel_mask": np.zeros((1032, 1032), bool)},
        qa={"trace_rms": 0.004, "nan": float("nan")}, flags=["example"],
        profile={"offsets": np.linspace(-6, 6, 121)}, inputs=["a_zro.fits"],
        qa_arrays={"trace_rms": np.full(112, 0.003)},
    )
    path = calfile.write_calibration(tmp_path / "cal.h5", [cal], attrs={"window": ["20190822"]})
    assert calfile.list_amps(path) == ["047LL"]
    back = calfile.read_amp(path, "047LL")
    np.testing.assert_array_equal(back["trace"], trace)
    np.testing.assert_array_equal(back["wavelength"], wave)
    assert np.max(np.abs(back["bias"] - bias)) <= 0.005 + 1e-6  # quantised to 0.01 e-
    assert back.read_noise == pytest.approx(3.1)
    assert back.flags == ["example"] and back.qa["nan"] is None
    assert back.inputs == ["a_zro.fits"]
    part = calfile.read_amp(path, "047LL", arrays=("trace",), qa=False)  # what a chain needs
    assert set(back.qa_arrays) == {"trace_rms"}
    assert set(part.arrays) == {"trace"} and part.qa_arrays == {}
    np.testing.assert_array_equal(part.profile["offsets"], cal.profile["offsets"])
    assert calfile.file_attrs(path)["format_version"] == calfile.FORMAT_VERSION
    with pytest.raises(Exception, match="no calibration for amp 047LU"):
        calfile.read_amp(path, "047LU")

    # a part amended after the focal-plane fan-in (workflow.cal_chain.finish_amp_part)
    from remedy_dask.workflow.cal_chain import finish_amp_part

    ftf = np.full((112, 1036), 0.98)
    dead = np.zeros(112, bool)
    dead[7] = True
    finish_amp_part({"key": "047LL", "path": str(path), "failed": False}, (ftf, dead))
    back = calfile.read_amp(path, "047LL")
    np.testing.assert_allclose(back["fiber_to_fiber"], ftf, atol=1e-4)
    assert back["dead"].sum() == 1 and back.qa["n_dead"] == 1 and back.qa["trace_rms"] == 0.004
    assert calfile.amp_statuses(path) == {"047LL": "ok"}
    np.testing.assert_array_equal(back["trace"], trace)
    finish_amp_part({"key": "047LL", "path": str(path), "failed": False}, None)
    assert "fiber-to-fiber: not computed" in calfile.amp_statuses(path)["047LL"]
    assert not list(tmp_path.glob(".*tmp"))


def test_store_atomic_write_and_resume_key(tmp_path):
    ds = xr.Dataset({"spectrum": (("fiber", "wave"), np.ones((112, 1036), "f4"))})
    key = store.input_key("frame.fits", "cal.h5", {"a": 1})
    assert not store.is_complete(tmp_path, 1, "047LL", key)
    store.write_dataset(tmp_path, 1, "047LL", ds, key)
    assert store.is_complete(tmp_path, 1, "047LL", key)
    assert not store.is_complete(tmp_path, 1, "047LL", store.input_key("other"))
    back = store.read_dataset(tmp_path, 1, "047LL")
    np.testing.assert_array_equal(back["spectrum"].values, ds["spectrum"].values)
    # written with zarr directly, read by xarray as the same Dataset (dims, coords, attributes)
    full = xr.Dataset(
        {"flux": (("fiber", "wave"), np.arange(900 * 4, dtype="f4").reshape(900, 4),
                  {"units": "electron"}),
         "rejected": ("rejected", np.zeros(0, np.int32)), "fx": ("fiber", np.ones(900))},
        coords={"wave": np.arange(4.0)}, attrs={"exp": np.int64(2), "notes": ""})
    store.write_dataset(tmp_path, 2, "sky", full, key)
    back = store.read_dataset(tmp_path, 2, "sky")
    xr.testing.assert_identical(back, full.assign_attrs(input_key=key))
    assert back["flux"].encoding["chunks"] == (store.FIBER_CHUNK_ROWS, 4)
    (tmp_path / "exp01" / ".047LU.dead.tmp").mkdir()
    assert store.clean_temporaries(tmp_path) == 1
