"""Calibration-file storage: whole-row deflate chunks, no byte shuffle for the quantised bias and
dark; files written with the earlier layout (auto chunks, shuffle + deflate everywhere) read back
the same values."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from remedy_dask.io import calfile


def _amp() -> calfile.AmpCalibration:
    rng = np.random.default_rng(12)
    arrays = {
        "bias": rng.normal(0.0, 0.8, (1032, 1032)).astype(np.float32),
        "dark_rate": rng.gamma(2.0, 1e-3, (1032, 1032)).astype(np.float32),
        "pixel_mask": (rng.random((1032, 1032)) < 1e-3).astype(np.uint8),
        "trace": np.linspace(3.0, 1025.0, 112)[:, None] + rng.normal(0, 0.01, (112, 1032)),
        "wavelength": np.linspace(3450.0, 5560.0, 1032)[None, :] + rng.normal(0, 0.1, (112, 1)),
        "fiber_to_fiber": rng.normal(1.0, 0.02, (112, 1036)).astype(np.float32),
        "dead": np.zeros(112, np.uint8),
    }
    arrays["bias"][5, 7] = np.nan
    return calfile.AmpCalibration(ifuslot=47, amp="LL", specid=83, ifuid=16, read_noise=3.1,
                                  arrays=arrays, profile={"offsets": np.arange(5.0)})


def test_new_layout(tmp_path: Path) -> None:
    cal = _amp()
    path = calfile.write_calibration(tmp_path / "cal.h5", [cal])
    with h5py.File(path) as h5:
        g = h5["047LL"]
        for name in ("bias", "dark_rate"):
            assert g[name].compression == "gzip" and not g[name].shuffle, name
            assert g[name].chunks == (254, 1032), name  # 1 MiB of whole rows
            assert g[name].attrs["quantisation_step"] > 0
        assert g["trace"].shuffle and g["trace"].chunks == (112, 1032)
        assert g["dead"].chunks == (112,)
    back = calfile.read_amp(path, "047LL")
    step = {"bias": 0.01, "dark_rate": 1e-5}
    for name, values in cal.arrays.items():
        expected = values
        if name in step:  # the documented quantisation, in float32 as written
            s = np.float32(step[name])
            expected = np.where(np.isfinite(values), np.round(values / s) * s, np.nan)
        np.testing.assert_array_equal(back[name], expected.astype(back[name].dtype))


def test_file_in_the_earlier_layout_reads_the_same(tmp_path: Path) -> None:
    path = calfile.write_calibration(tmp_path / "cal.h5", [_amp()])
    new = calfile.read_amp(path, "047LL")
    with h5py.File(path, "r+") as h5:  # rewrite every array as earlier versions stored it
        g = h5["047LL"]
        for name in new.arrays:
            values, attrs = g[name][...], dict(g[name].attrs)
            del g[name]
            g.create_dataset(name, data=values, chunks=True, compression="gzip",
                             compression_opts=4, shuffle=True).attrs.update(attrs)
        assert g["bias"].shuffle and g["bias"].chunks != (254, 1032)
    old = calfile.read_amp(path, "047LL")
    assert sorted(old.arrays) == sorted(new.arrays)
    for name in new.arrays:
        assert old[name].dtype == new[name].dtype
        np.testing.assert_array_equal(old[name], new[name])
    assert calfile.amp_statuses(path, science=True) == {"047LL": "ok"}
