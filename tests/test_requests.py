"""Typed requests: the command line builds them, they validate once and name the bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from remedy_dask import cli
from remedy_dask.errors import ConfigError, InputFileError
from remedy_dask.requests import ClusterRequest, NightRequest, ReduceRequest


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "raw").mkdir()
    for name in ("cal.h5", "fplane.txt", "cat.csv"):
        (tmp_path / name).write_text("x")
    return {"root": tmp_path / "raw", "cal": tmp_path / "cal.h5",
            "fplane": tmp_path / "fplane.txt", "cat": tmp_path / "cat.csv", "out": tmp_path / "o"}


def _reduce_argv(inp: dict[str, Path], *extra: str) -> list[str]:
    return ["reduce", "20190822", "7", "47", str(inp["cal"]), "--rootdir", str(inp["root"]),
            "--fplane", str(inp["fplane"]), "--out", str(inp["out"]), *extra]


def test_cli_builds_the_reduce_request(inputs):
    args = cli.build_parser().parse_args(_reduce_argv(
        inputs, "--catalog", str(inputs["cat"]), "--cubes", "all", "--workers", "3",
        "--neighbor-dist", "2"))
    req = cli.reduce_request(args)
    assert (req.date, req.obs, req.ifuslot, req.cubes, req.neighbor_dist) == ("20190822", 7, 47,
                                                                             "all", 2)
    assert req.catalog == inputs["cat"] and req.injection is None
    assert req.cluster == ClusterRequest("local", 3, None)
    assert req.config.reduction.extraction == "optimal"  # defaults loaded once, here


def test_missing_input_names_the_file(inputs):
    missing = inputs["fplane"].with_name("nope.txt")
    with pytest.raises(InputFileError, match="nope.txt: fplane: no such file"):
        ReduceRequest("20190822", 7, 47, inputs["cal"], inputs["root"], missing, inputs["out"])
    with pytest.raises(InputFileError, match="raw data root: no such directory"):
        ReduceRequest("20190822", 7, 47, inputs["cal"], inputs["fplane"], inputs["fplane"],
                      inputs["out"])


@pytest.mark.parametrize("field,value,message", [
    ("date", "2019082", "YYYYMMDD"), ("obs", 0, "1-9999999"), ("cubes", "some", "--cubes"),
    ("neighbor_dist", -1, "neighbor-dist"),
])
def test_bad_values_are_refused(inputs, field, value, message):
    kwargs = dict(date="20190822", obs=7, ifuslot=47, calfile=inputs["cal"],
                  rootdir=inputs["root"], fplane=inputs["fplane"], out=inputs["out"])
    kwargs[field] = value
    with pytest.raises(ConfigError, match=message):
        ReduceRequest(**kwargs)


def test_injection_needs_a_position_and_the_cli_exits_2(inputs, capsys):
    argv = _reduce_argv(inputs, "--source-file", str(inputs["cat"]))
    with pytest.raises(ConfigError, match="--source-x"):
        cli.reduce_request(cli.build_parser().parse_args(argv))
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.startswith("error: --source-file needs --source-x")


def test_night_request_makes_one_request_per_observation(inputs):
    night = NightRequest(inputs["root"], "20190822", inputs["cal"], inputs["fplane"],
                         inputs["out"], cubes="all")
    req = night.observation(8, 57)
    assert (req.obs, req.ifuslot, req.all_ifus, req.cubes, req.neighbor_dist) == (8, 57, True,
                                                                                 "all", 0)
    with pytest.raises(ConfigError, match="--workers"):
        ClusterRequest("local", 0)


def _multiobs_request(argv: list[str]):
    from remedy_dask import cli_multiobs

    args = cli.build_parser().parse_args(argv)
    return cli_multiobs.request(args, ClusterRequest(address="sync"))


def test_cli_builds_the_multiobs_requests(inputs):
    from remedy_dask.requests import CatalogRequest, ExtractRequest, MosaicRequest

    p = str(inputs["cal"])  # any existing file stands for a product here
    ex = _multiobs_request(["extract", p, p, "--ra", "150.5", "--dec", "2.25", "--out", "x.fits",
                            "--radius", "3"])
    assert ex == ExtractRequest((inputs["cal"], inputs["cal"]), Path("x.fits"), 150.5, 2.25,
                                None, 3.0, ClusterRequest(address="sync"))
    mo = _multiobs_request(["mosaic", p, "--out", "m.fits", "--wave", "5000", "4800"])
    assert isinstance(mo, MosaicRequest) and mo.wave == (5000.0, 4800.0) and mo.pixscale == 0.5
    ca = _multiobs_request(["catalog", p, "--out", "c.fits", "--wave-tol", "2"])
    assert isinstance(ca, CatalogRequest) and (ca.radius, ca.line_radius, ca.wave_tol) == \
        (1.0, 1.5, 2.0)


@pytest.mark.parametrize("argv, error, message", [
    (["extract", "{p}", "--ra", "1", "--out", "x"], ConfigError, "give a position"),
    (["extract", "{p}", "--ra", "1", "--dec", "2", "--coords", "{p}", "--out", "x"],
     ConfigError, "not both"),
    (["extract", "{p}", "--ra", "1", "--dec", "91", "--out", "x"], ConfigError, "-90..90"),
    (["extract", "{p}", "--ra", "1", "--dec", "2", "--radius", "0", "--out", "x"], ConfigError,
     "--radius must be positive"),
    (["extract", "{missing}", "--ra", "1", "--dec", "2", "--out", "x"], InputFileError,
     "missing.h5"),
    (["mosaic", "{p}", "--pixscale", "-1", "--out", "x"], ConfigError, "--pixscale"),
    (["mosaic", "{p}", "--chunk-mb", "0", "--out", "x"], ConfigError, "--chunk-mb"),
    (["catalog", "{p}", "--line-radius", "0", "--out", "x"], ConfigError, "--line-radius"),
])
def test_multiobs_requests_refuse_bad_values(inputs, argv, error, message):
    argv = [a.format(p=inputs["cal"], missing=inputs["root"] / "missing.h5") for a in argv]
    with pytest.raises(error, match=message):
        _multiobs_request(argv)
