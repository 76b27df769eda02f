"""``jobline simulate`` refuses bad input before it runs, naming what is wrong: never a
traceback, and never after a whole run (cases a newcomer found: an ``--out`` that is a
file failed only when the report was saved; ``--seeds 1-100000000000`` tried to build a
list of 10^11 seeds; ``--rate 0`` quietly ran at 2/s; a traffic file naming no model with
a weight above 0 ended the run as a "bug" finding)."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _simulate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    argv = ["simulate", "--config", str(ROOT / "jobline.toml"), "--no-progress", *args]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refuses an argument this way
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--rate", "0"], "argument --rate: must be a number of jobs per second above 0"),
        (["--rate", "-1"], "argument --rate: must be a number of jobs per second above 0"),
        (["--rate", "inf"], "argument --rate: must be a number of jobs per second above 0"),
        (["--rate", "abc"], "argument --rate: 'abc' is not a number of jobs per second"),
        (["--jobs", "0"], "argument --jobs: must be a number of jobs above 0"),
        (["--duration", "nan"], "argument --duration: must be a number of seconds above 0"),
        (["--explore", "--seeds", "1-100000000000"], "at most 1,000,000 seeds"),
    ],
)
def test_a_bad_number_is_refused_naming_its_flag(
    capsys: pytest.CaptureFixture[str], args: list[str], said: str
) -> None:
    code, err = _simulate(capsys, *args)
    assert code == 2 and said in err and "Traceback" not in err


def test_an_out_that_is_a_file_is_refused_before_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    code, err = _simulate(capsys, "--jobs", "5", "--out", str(a_file))
    assert code == 2 and "File exists" in err and str(a_file) in err


def test_a_trace_file_that_cannot_be_written_is_refused_before_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    where = tmp_path / "no" / "such" / "dir" / "trace.txt"
    code, err = _simulate(
        capsys, "--jobs", "5", "--out", str(tmp_path / "out"), "--trace", str(where)
    )
    assert code == 2 and "No such file or directory" in err
    assert not (tmp_path / "out" / "report.json").exists()


@pytest.mark.parametrize(
    ("models", "said"),
    [
        ("flux-schnell = 0\nsdxl = 0\n", "traffic gives every model weight 0"),
        ("nope = 1\n", "traffic names models the config lacks: nope"),
    ],
)
def test_a_traffic_file_no_job_can_be_drawn_from_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, models: str, said: str
) -> None:
    traffic = tmp_path / "traffic.toml"
    traffic.write_text("jobs = 10\n[models]\n" + models)
    code, err = _simulate(capsys, "--traffic", str(traffic), "--out", str(tmp_path / "out"))
    assert code == 2 and said in err


@pytest.mark.parametrize("flag", [["--rate", "3"], ["--traffic", "t.toml"], ["--json"]])
def test_explore_refuses_a_flag_it_would_not_use(
    capsys: pytest.CaptureFixture[str], flag: list[str]
) -> None:
    code, err = _simulate(capsys, "--explore", "--seeds", "1", *flag)
    assert code == 2 and f"{flag[0]} would not be used" in err
