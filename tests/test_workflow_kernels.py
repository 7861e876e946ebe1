"""The pixel and flux arithmetic the workflow wires (each a kernel), and the shared numeric,
JSON and failure helpers, against hand-worked values."""

import json
import logging

import numpy as np
import pytest
from astropy import constants as const
from astropy import units as u
from astropy.table import Table

from remedy_dask.amp.ccd import subtract_bias_dark
from remedy_dask.amp.wavelength import shifted_wavelength
from remedy_dask.config import PipelineConfig
from remedy_dask.exposure.fiberflat import apply_fiber_to_fiber
from remedy_dask.io.catalog import Catalog, as_catalog
from remedy_dask.io.jsonable import jsonable
from remedy_dask.numeric.peaks import parabola_vertex
from remedy_dask.numeric.quickselect import select_kth
from remedy_dask.numeric.robust import mad_sigma, nan_mad_sigma
from remedy_dask.observation.astrometry import dar_on_sky
from remedy_dask.observation.fluxcal import calibrate_fibers, exposure_conversion, exposure_scale
from remedy_dask.workflow.nodes import flag_failures


def test_subtract_bias_dark_by_hand():
    image = np.array([[110.0, 220.0]])
    out = subtract_bias_dark(image, np.array([[10.0, 20.0]]), np.array([[0.5, 1.0]]), 100.0)
    np.testing.assert_array_equal(out, [[50.0, 100.0]])


def test_shifted_wavelength_moves_features_by_the_shift():
    wave = np.array([[3500.0, 3502.0, 3504.0, 3506.0, 3508.0]])
    # a feature at calibration column 2 (3504 A) is seen at column 2.25 after a +0.25 px shift
    out = shifted_wavelength(wave, 0.25)
    np.testing.assert_allclose(out[0, 1:4], [3501.5, 3503.5, 3505.5])
    assert out[0, 0] == 3499.5  # extrapolated linearly at the edge


def test_apply_fiber_to_fiber_divides_and_masks():
    flux = np.array([[10.0, 10.0, 10.0], [4.0, 4.0, 4.0]], np.float32)
    error = np.ones_like(flux)
    mask = np.array([[0, 1, 0], [0, 0, 0]], np.uint8)
    ftf = np.array([[2.0, 2.0, 0.0], [0.5, 0.5, 0.5]], np.float32)
    dead = np.array([0, 1], np.uint8)
    out_f, out_e, out_m = np.empty((2, 3)), np.empty((2, 3)), np.empty((2, 3), bool)
    apply_fiber_to_fiber(flux, error, mask, ftf, dead, out_f, out_e, out_m)
    np.testing.assert_array_equal(out_f[0, :2], [5.0, 5.0])
    np.testing.assert_array_equal(out_f[1], [8.0, 8.0, 8.0])
    np.testing.assert_array_equal(out_e[1], [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(out_m, [[False, True, True], [True, True, True]])


def test_fiber_flux_calibration_by_hand():
    wave = np.array([5000.0])
    throughput, area = np.array([0.2]), 5.0e5
    conv = exposure_conversion(throughput, area, np.array([1.0, 0.5]), wave)
    photon = (const.h * const.c / (5000 * u.AA)).to_value(u.erg)
    expected = photon / (area * 0.2) / 1e-17  # 1 e-/s/A -> 1e-17 erg/s/cm^2/A
    np.testing.assert_allclose(conv[:, 0], [expected, 2 * expected], rtol=1e-6)
    scale = exposure_scale(2.0, [1.0, 0.8])
    np.testing.assert_array_equal(scale, [2.0, 2.5])
    values = np.array([[1.0], [1.0], [3.0]])
    exp_index = np.array([0, 1, 1])
    out = calibrate_fibers(values, exp_index, conv, bad=np.array([[False], [True], [False]]),
                           scale=scale)
    assert np.isnan(out[1, 0])
    np.testing.assert_allclose(out[[0, 2], 0], [2 * expected, 3 * 2 * expected * 2.5],
                               rtol=1e-6)


def test_dar_on_sky_rotates_the_focal_plane_offset():
    east, north = dar_on_sky(np.array([1.0, -0.5]), 90.0)
    np.testing.assert_allclose(east, [0.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(north, [-1.0, 0.5])
    east, north = dar_on_sky(np.array([1.0]), 0.0)
    assert (east[0], north[0]) == (-1.0, -0.0)


def test_mad_sigma_by_hand():
    x = np.array([1.0, 2.0, 3.0, 4.0, 100.0])  # median 3, deviations 2 1 0 1 97 -> MAD 1
    assert mad_sigma(x) == 1.4826
    assert mad_sigma(x, 0.0) == 1.4826 * 3.0
    cols = np.array([[1.0, 0.0], [2.0, np.nan], [4.0, 2.0]])
    np.testing.assert_array_equal(nan_mad_sigma(cols, axis=0), [1.4826, 1.4826])
    np.testing.assert_array_equal(mad_sigma(cols[:, :1], axis=0), [1.4826])
    assert mad_sigma(np.arange(1000.0), max_samples=100) == 1.4826 * 250.0


def test_select_kth_matches_sorting_with_ties():
    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 100, 1001):
        a = np.round(rng.normal(size=n) * 3)
        a[rng.random(n) < 0.1] = np.inf
        for k in {0, n // 2, n - 1}:
            b = a.copy()
            value = select_kth(b, 0, n, k)
            assert value == np.sort(a)[k]
            assert np.all(b[:k] <= value) and np.all(b[k + 1:] >= value)


def test_parabola_vertex_by_hand():
    # y = -(x - 0.25)^2 at -1, 0, 1
    assert parabola_vertex(-1.5625, -0.0625, -0.5625) == pytest.approx(0.25)
    assert parabola_vertex(1.0, 0.0, 1.0) == 0.0  # a minimum: no vertex offset
    assert parabola_vertex(0.0, 1.0, 1.9) == 0.5  # vertex at 9.5: clipped


def test_jsonable_converts_numpy_recursively():
    value = {1: (np.float32(0.5), np.arange(2)), "x": [np.int64(3), float("nan")]}
    assert json.dumps(jsonable(value)) == '{"1": [0.5, [0, 1]], "x": [3, NaN]}'
    assert jsonable({"x": [float("inf")]}, nonfinite_as_null=True) == {"x": [None]}


def test_flag_failures_flags_one_unit_and_skips_it_afterwards(caplog):
    class State:
        def __init__(self, key, failed=None):
            self.key, self.failed = key, failed

    def fail(state, reason):
        return State(state.key, reason)

    @flag_failures(fail, expected=(ValueError,), internal="internal error ")
    def cal_step(state, value):
        if value == "bad input":
            raise ValueError("no frames")
        if value == "bug":
            raise KeyError("x")
        return State(state.key)

    with caplog.at_level(logging.ERROR):
        assert cal_step(State("047LL"), "ok").failed is None
        assert cal_step(State("047LL"), "bad input").failed == "step: no frames"
        assert cal_step(State("047LL"), "bug").failed == "step: internal error KeyError: 'x'"
    done = State("047LL", failed="earlier")
    assert cal_step(done, "bug") is done


def test_catalog_from_standardized_table():
    table = Table({"raMean": [150.0, 150.1], "decMean": [2.0, 2.1], "gMeanApMag": [17.0, np.nan]})
    cat = as_catalog(table)
    assert isinstance(cat, Catalog) and len(cat) == 2 and as_catalog(cat) is cat
    np.testing.assert_array_equal(cat.gmag, [17.0, np.nan])


def test_every_setting_has_a_description():
    import dataclasses
    import yaml

    config = PipelineConfig()
    text = config.describe()
    assert yaml.safe_load(text) == config.to_dict()
    for section in dataclasses.fields(config):
        for f in dataclasses.fields(getattr(config, section.name)):
            assert f.metadata.get("doc"), f"{section.name}.{f.name} has no description"
            assert f"  {f.name}: " in text
    assert "astrometry_gmag_range: [14.0, 21.5]  # g range" in text


def test_store_read_rows_returns_one_ifu_block(tmp_path):
    import xarray as xr

    from remedy_dask.io import store

    slots = np.array([47, 47, 48, 48, 48], np.int32)
    flux = np.arange(10.0, dtype=np.float32).reshape(5, 2)
    ds = xr.Dataset({"ifuslot": ("fiber", slots), "flux": (("fiber", "wave"), flux)})
    store.write_dataset(tmp_path, 1, "sky", ds, "key")
    rows = store.read_rows(tmp_path, 1, "sky", "ifuslot", 48, ("flux", "ifuslot"))
    np.testing.assert_array_equal(rows["flux"], flux[2:])
    np.testing.assert_array_equal(rows["ifuslot"], [48, 48, 48])
    assert store.read_rows(tmp_path, 1, "sky", "ifuslot", 57, ("flux",)) is None


@pytest.mark.parametrize("exptime", [360.0, np.float64(360.1), np.float32(17.3)])
def test_subtract_bias_dark_keeps_numpys_types_and_rounding(exptime):
    rng = np.random.default_rng(2)
    image = rng.normal(1000.0, 30.0, (40, 50)).astype(np.float32)
    bias = rng.normal(1000.0, 3.0, (40, 50)).astype(np.float32)
    dark = rng.uniform(0.0, 0.01, (40, 50)).astype(np.float32)
    want = image - bias - dark * exptime
    got = subtract_bias_dark(image, bias, dark, exptime)
    assert got.dtype == want.dtype == (np.float64 if type(exptime) is np.float64 else np.float32)
    np.testing.assert_array_equal(got, want)


def test_rejected_pixels_are_flat_c_order_indices():
    from types import SimpleNamespace

    from remedy_dask.workflow.amp_chain import _rejected_indices

    rng = np.random.default_rng(3)
    rejected = rng.random((30, 40)) < 0.05
    want = np.flatnonzero(rejected)
    for layout in (rejected, np.asfortranarray(rejected), rejected[:, ::-1][:, ::-1]):
        got = _rejected_indices(SimpleNamespace(rejected=layout))
        assert got.dtype == np.int32 and np.array_equal(got, want)
    assert want.size > 20
