"""The command line: help for every argument, global options anywhere, --quiet, the log file and
progress lines for batch logs."""

from __future__ import annotations

import argparse
import logging
import time

import dask
import pytest

from remedy_dask import cli
from remedy_dask.workflow.progress import LogProgress, progress_line


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (group,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(group.choices)


def test_every_argument_of_every_command_has_help_and_every_command_an_example():
    commands = _subcommands()
    assert {"simulate", "calibrate", "reduce", "reduce-night", "demo", "config"} <= set(commands)
    for name, sub in commands.items():
        assert f"remedy-dask {name}" in (sub.epilog or ""), f"{name}: no example"
        for action in sub._actions:
            assert (action.help or "").strip(), f"{name} {action.dest}: no help"


def test_help_shows_defaults_and_positional_names(capsys):
    with pytest.raises(SystemExit):
        cli.main(["reduce", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for fragment in ("DATE OBS IFUSLOT CAL.h5", "--rootdir ROOTDIR", "--fplane FILE",
                     "--out OUTDIR", "(default: 1)", "(default: local)", "example:"):
        assert fragment in text
    with pytest.raises(SystemExit):
        cli.main(["simulate", "--help"])
    assert "(default: 047,048,057,058)" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("argv", [["--quiet", "--debug", "config", "show"],
                                  ["config", "show", "--quiet", "--debug"],
                                  ["--quiet", "config", "show", "--debug"]])
def test_global_options_before_or_after_the_command(argv):
    args = cli.build_parser().parse_args(argv)
    assert args.quiet is True and args.debug is True


def test_global_options_default_off():
    args = cli.build_parser().parse_args(["config", "show"])
    assert args.quiet is False and args.debug is False and args.log_file is None


def test_quiet_after_the_command_prints_nothing_and_logs_to_file(tmp_path, capfd):
    log_file = tmp_path / "logs" / "run.log"
    status = cli.main(["graphs", str(tmp_path / "views"), "--quiet", "--log-file", str(log_file)])
    out, err = capfd.readouterr()
    assert status == 0 and out == "" and err == ""
    text = log_file.read_text()
    assert "remedy-dask graphs" in text and "wrote " in text  # the command line and its output
    assert text[:4].isdigit() and "T" in text.split()[0]  # ISO timestamps


def test_quiet_still_prints_errors_and_the_answer_of_config_show(tmp_path, capfd):
    assert cli.main(["config", "show", "--quiet"]) == 0
    assert "reduction:" in capfd.readouterr().out
    assert cli.main(["config", "show", "--config", str(tmp_path / "nope.yaml"), "--quiet"]) == 2
    out, err = capfd.readouterr()
    assert out == "" and err.startswith("error:") and "nope.yaml" in err


def test_progress_line_counts_done_tasks_and_unfinished_stages():
    total = {"extract": 8, "sky": 2, "write-products": 1, "mask": 4, "ccd": 4}
    remaining = {"extract": 3, "sky": 2, "write-products": 1, "mask": 4, "ccd": 0}
    assert progress_line(remaining, total, 61.2) == (
        "progress: 9/19 tasks done after 61 s (unfinished: extract, mask, sky and 1 more)")
    assert progress_line(dict.fromkeys(total, 0), total, 5.0) == (
        "progress: 19/19 tasks done after 5 s (done)")


def test_log_progress_reports_a_running_computation(caplog):
    from distributed import Client, LocalCluster

    def slow(x: int) -> int:
        time.sleep(0.2)
        return x

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=":0") as lc, Client(lc) as client:
        parts = [dask.delayed(slow)(i, dask_key_name=f"work-{i}") for i in range(6)]
        future = client.compute(dask.delayed(sum)(parts, dask_key_name="total"))
        with caplog.at_level(logging.INFO, logger="remedy_dask.progress"):
            LogProgress([future], interval=0.3).run()
        assert future.result() == 15
    lines = [r.getMessage() for r in caplog.records if r.name == "remedy_dask.progress"]
    assert "/7 tasks done after" in lines[0] and not lines[0].endswith("(done)")
    assert lines[-1].startswith("progress: 7/7 tasks done") and lines[-1].endswith("(done)")
    assert any("(unfinished: work" in line for line in lines[1:-1])
