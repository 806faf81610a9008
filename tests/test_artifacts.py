"""Reading results files in every accepted format (ours, the original ANCER scripts', the
original data-dependent smoothing package's) and refusing malformed ones.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ancer_cli import analysis
from ancer_cli.analysis import Metric
from ancer_cli.artifacts import parse_time, read_results
from ancer_cli.errors import ResultsError

# ---------------------------------------------------------------------------------------------
# reading results files (the formats analysis accepts)

ANCER_SCRIPTS_FILE = (
    "idx\tlabel\tpredict\tradius\tradius_proxy\tcorrect\tmin_sigma\ttime\n"
    "0\t3\t3\t0.412\t0.953\t1\t0.25\t0:00:02.512345\n"
    "1\t8\t8\t0.81\t1.44\t1\t0.31\t0:00:02.401000\n"
    "2\t8\t1\t0.6\t0.7\t0\t0.2\t0:00:02.450000\n"
    "3\t0\t-1\t0.0\t0.0\t0\t0.25\t1 day, 0:00:01.000000\n"
)


def write(tmp_path: Path, text: str, name: str = "results.tsv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_original_ancer_scripts_format(tmp_path: Path) -> None:
    frame = read_results(write(tmp_path, ANCER_SCRIPTS_FILE))
    assert list(frame.columns) == [
        "idx",
        "label",
        "predict",
        "radius",
        "radius_proxy",
        "correct",
        "min_sigma",
        "time",
    ]
    assert frame["time"].tolist() == pytest.approx([2.512345, 2.401, 2.45, 86401.0])
    assert analysis.certified_accuracy(frame, 0.5) == 0.25
    assert analysis.certified_accuracy(frame, 0.5, Metric.proxy) == 0.5
    assert analysis.average_certified_radius(frame, Metric.proxy) == pytest.approx(
        (0.953 + 1.44) / 4
    )


def test_original_data_dependent_smoothing_format(tmp_path: Path) -> None:
    """Alfarra et al.'s isotropic certify script writes a per-input ``sigma`` column."""
    text = (
        "idx\tlabel\tpredict\tradius\tcorrect\tsigma\ttime\n"
        "0\t3\t3\t0.61\t1\t0.3012\t0:00:01.250000\n"
        "1\t8\t-1\t0.0\t0\t0.1203\t0:00:01.750000\n"
    )
    frame = read_results(write(tmp_path, text, "dds.tsv"))
    assert frame["sigma"].tolist() == ["0.3012", "0.1203"]  # extra columns are kept as text
    summary = analysis.summarize(frame, [0.5])
    assert summary.certified_accuracy == {0.5: 0.5}
    assert summary.median_time == pytest.approx(1.5)
    assert summary.average_proxy_radius is None


def test_parse_time() -> None:
    assert parse_time("15.4") == 15.4
    assert parse_time("0:02:31.238689") == pytest.approx(151.238689)
    assert parse_time("2 days, 1:00:00") == 2 * 86400 + 3600
    assert math.isnan(parse_time(""))


def test_trailing_tab_is_accepted(tmp_path: Path) -> None:
    text = "idx\tlabel\tpredict\tradius\tcorrect\n0\t1\t1\t0.5\t1\t\n1\t2\t-1\t0.0\t0\t\n"
    frame = read_results(write(tmp_path, text))
    assert frame["idx"].tolist() == [0, 1] and frame["correct"].tolist() == [1, 0]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("idx\tlabel\tpredict\tcorrect\n0\t1\t1\t1\n", "lacks column.*radius"),
        ("idx\tlabel\tpredict\tradius\tcorrect\n0\t1\t1\tbig\t1\n", "line 2, column radius"),
        ("idx\tlabel\tpredict\tradius\tcorrect\ninf\t1\t1\t0.5\t1\n", "line 2, column idx"),
        ("idx\tlabel\tpredict\tradius\tcorrect\n0\t1\t1\t0.5\t2\n", "line 2, column correct"),
        ("idx\tlabel\tpredict\tradius\tcorrect\n0\t1\t1\t0.5\t1\t7\n", "more fields"),
        (
            "idx\tlabel\tpredict\tradius\tcorrect\ttime\n0\t1\t1\t0.5\t1\t1.0\n1\t1\t1\t0.5\t1\tsoon\n",
            "line 3, column time",
        ),
    ],
)
def test_malformed_files_raise_results_error(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ResultsError, match=message) as caught:
        read_results(path)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="does not exist"):
        read_results(tmp_path / "absent.tsv")
    with pytest.raises(ResultsError, match="is a directory"):
        read_results(tmp_path)
