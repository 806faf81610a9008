"""Certified accuracy, ACR, tables and plots (``ancer_cli.analysis``) and reading results files.

Cohen et al.'s published per-input results are checked against an independent computation with
the ``csv`` module, so the test does not share code (or pandas) with the function under test.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ancer_cli import analysis
from ancer_cli.analysis import Metric
from ancer_cli.artifacts import parse_time, read_results
from ancer_cli.errors import OutputError, ResultsError

COHEN = Path("/work/shared/reference/cohen2019")
COHEN_FILES = sorted(COHEN.glob("*.tsv"))
PUBLISHED_RADII = (0.25, 0.5, 0.75, 1.0)

needs_cohen = pytest.mark.skipif(not COHEN_FILES, reason="Cohen et al.'s reference files absent")


def frame_of(
    rows: list[tuple[int, int, float, int]], proxy: list[float] | None = None
) -> pd.DataFrame:
    """A results frame from ``(label, predict, radius, correct)`` rows."""
    frame = pd.DataFrame(rows, columns=["label", "predict", "radius", "correct"])
    frame.insert(0, "idx", range(len(rows)))
    if proxy is not None:
        frame["radius_proxy"] = proxy
    return frame


@pytest.fixture
def four() -> pd.DataFrame:
    """Two certified-correct inputs (radii 0.5, 1.0), one wrong (0.8), one abstention."""
    return frame_of(
        [(3, 3, 0.5, 1), (1, 1, 1.0, 1), (2, 7, 0.8, 0), (5, -1, 0.0, 0)],
        proxy=[0.9, 1.5, 1.2, 0.0],
    )


def published(path: Path) -> tuple[int, list[tuple[float, int]]]:
    """Number of rows and ``(radius, correct)`` pairs, parsed with the csv module only."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return len(rows), [(float(row["radius"]), int(row["correct"])) for row in rows]


# ---------------------------------------------------------------------------------------------
# exact values on hand-made frames


def test_certified_accuracy_exact(four: pd.DataFrame) -> None:
    assert analysis.certified_accuracy(four, 0.0) == 0.5
    assert analysis.certified_accuracy(four, 0.5) == 0.5  # radius == R counts
    assert analysis.certified_accuracy(four, 0.75) == 0.25  # the wrong 0.8 never counts
    assert analysis.certified_accuracy(four, 1.0) == 0.25
    assert analysis.certified_accuracy(four, 1.0001) == 0.0


def test_proxy_metric_reads_radius_proxy(four: pd.DataFrame) -> None:
    assert analysis.certified_accuracy(four, 0.9, Metric.proxy) == 0.5
    assert analysis.certified_accuracy(four, 1.0, Metric.proxy) == 0.25
    assert analysis.average_certified_radius(four, Metric.proxy) == (0.9 + 1.5) / 4
    assert Metric.proxy.column == "radius_proxy" and Metric.radius.column == "radius"


def test_acr_clean_abstention_time(four: pd.DataFrame) -> None:
    assert analysis.average_certified_radius(four) == 0.375
    assert analysis.clean_accuracy(four) == 0.5
    assert analysis.abstention_rate(four) == 0.25
    assert analysis.median_time(four) is None
    four["time"] = [1.0, 4.0, 2.0, 100.0]
    assert analysis.median_time(four) == 3.0


def test_curve_matches_pointwise(four: pd.DataFrame) -> None:
    radii = [0.0, 0.25, 0.5, 0.75, 1.0, 2.0]
    curve = analysis.certified_accuracy_curve(four, radii)
    assert curve.tolist() == [analysis.certified_accuracy(four, r) for r in radii]
    assert curve.tolist() == [0.5, 0.5, 0.5, 0.25, 0.25, 0.0]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 5, allow_nan=False), st.booleans()), min_size=1, max_size=40),
    st.lists(st.floats(0, 6, allow_nan=False), min_size=1, max_size=8),
)
def test_curve_is_the_definition(rows: list[tuple[float, bool]], radii: list[float]) -> None:
    frame = frame_of([(0, 0 if ok else 1, r, int(ok)) for r, ok in rows])
    expected = [sum(ok and r >= big_r for r, ok in rows) / len(rows) for big_r in radii]
    assert analysis.certified_accuracy_curve(frame, radii).tolist() == expected
    ordered = analysis.certified_accuracy_curve(frame, sorted(radii))
    assert (np.diff(ordered) <= 0).all()


def test_summarize_sorts_and_deduplicates_radii(four: pd.DataFrame) -> None:
    summary = analysis.summarize(four, [1.0, 0.5, 0.5], Metric.radius)
    assert list(summary.certified_accuracy) == [0.5, 1.0]
    assert summary.certified_accuracy == {0.5: 0.5, 1.0: 0.25}
    assert summary.inputs == 4
    assert summary.average_certified_radius == 0.375
    assert summary.abstention_rate == 0.25
    assert summary.median_time is None


def test_empty_frame_gives_nan() -> None:
    empty = frame_of([])
    assert math.isnan(analysis.certified_accuracy(empty, 0.5))
    assert math.isnan(analysis.average_certified_radius(empty))


def test_check_results_names_the_file(four: pd.DataFrame) -> None:
    analysis.check_results(four, Metric.proxy, "a.tsv")
    with pytest.raises(ResultsError, match=r"cohen\.tsv has no radius_proxy column"):
        analysis.check_results(four.drop(columns="radius_proxy"), Metric.proxy, "cohen.tsv")
    with pytest.raises(ResultsError, match="no rows"):
        analysis.check_results(four.iloc[:0], Metric.radius, "empty.tsv")


# ---------------------------------------------------------------------------------------------
# tables and renderers


def test_summary_table_rows_and_columns(four: pd.DataFrame) -> None:
    other = four.assign(correct=[1, 0, 0, 0], time=[2.0, 2.0, 2.0, 2.0])
    table = analysis.summary_table({"a": four, "b": other}, [0.5, 1.0], Metric.radius)
    assert list(table.columns) == ["a", "b"]
    assert list(table.index) == [
        "certified accuracy at 0.5",
        "certified accuracy at 1",
        analysis.ACR_ROW,
        analysis.ACR_PROXY_ROW,
        analysis.CLEAN_ROW,
        analysis.ABSTENTION_ROW,
        analysis.INPUTS_ROW,
        analysis.TIME_ROW,
    ]
    # ACR on radius_proxy: (0.9 + 1.5) / 4 for a, 0.9 / 4 for b
    assert table["a"].tolist()[:7] == [0.5, 0.25, 0.375, 0.6, 0.5, 0.25, 4.0]
    assert table["b"].tolist() == [0.25, 0.0, 0.125, 0.225, 0.25, 0.25, 4.0, 2.0]
    assert math.isnan(table.loc[analysis.TIME_ROW, "a"])


def test_no_time_row_without_times(four: pd.DataFrame) -> None:
    table = analysis.summary_table({"a": four}, [0.5])
    assert analysis.TIME_ROW not in table.index


def test_best_mask(four: pd.DataFrame) -> None:
    other = four.assign(correct=[1, 0, 0, 0], predict=[3, -1, -1, -1])
    table = analysis.summary_table({"a": four, "b": other}, [0.5, 2.0])
    best = analysis.best_mask(table)
    assert best.loc["certified accuracy at 0.5"].tolist() == [True, False]
    assert best.loc[analysis.ABSTENTION_ROW].tolist() == [True, False]  # lower is better
    assert not best.loc["certified accuracy at 2"].any()  # all equal: nothing marked
    assert not best.loc[analysis.INPUTS_ROW].any()
    assert not analysis.best_mask(table[["a"]]).to_numpy().any()  # one file: nothing marked


def test_render_markdown_bold_only_with_several_files(four: pd.DataFrame) -> None:
    other = four.assign(correct=[1, 0, 0, 0])
    two = analysis.render_markdown(analysis.summary_table({"a|x": four, "b": other}, [0.5]))
    lines = two.splitlines()
    assert lines[0] == "|  | a\\|x | b |"
    assert lines[1] == "| --- | ---: | ---: |"
    assert lines[2] == "| certified accuracy at 0.5 | **0.500** | 0.250 |"
    assert "| inputs | 4 | 4 |" in lines
    one = analysis.render_markdown(analysis.summary_table({"a": four}, [0.5]))
    assert "**" not in one


def test_render_csv_full_precision(four: pd.DataFrame) -> None:
    table = analysis.summary_table({"a": four, "b": four.assign(time=1.5)}, [0.75])
    rows = list(csv.reader(io.StringIO(analysis.render_csv(table))))
    assert rows[0] == ["quantity", "a", "b"]
    as_dict = {row[0]: row[1:] for row in rows[1:]}
    assert as_dict["certified accuracy at 0.75"] == ["0.25", "0.25"]
    assert as_dict[analysis.ACR_ROW] == ["0.375", "0.375"]
    assert as_dict[analysis.INPUTS_ROW] == ["4", "4"]
    assert as_dict[analysis.TIME_ROW] == ["", "1.5"]


def test_render_json(four: pd.DataFrame) -> None:
    summaries = {"a": analysis.summarize(four, [0.5, 1.0])}
    payload = json.loads(analysis.render_json(summaries, Metric.radius, {"a": "x/a.tsv"}))
    assert payload["metric"] == "radius" and payload["radii"] == [0.5, 1.0]
    entry = payload["files"]["a"]
    assert entry["path"] == "x/a.tsv"
    assert entry["certified_accuracy"] == {"0.5": 0.5, "1.0": 0.25}
    assert entry["average_certified_radius"] == 0.375
    assert entry["clean_accuracy"] == 0.5
    assert entry["abstention_rate"] == 0.25
    assert entry["inputs"] == 4
    assert entry["median_time_seconds"] is None


def test_format_cell() -> None:
    assert analysis.format_cell("certified accuracy at 0.5", 0.6) == "0.600"
    assert analysis.format_cell(analysis.INPUTS_ROW, 500.0) == "500"
    assert analysis.format_cell(analysis.TIME_ROW, 151.2345) == "151.23"
    assert analysis.format_cell(analysis.TIME_ROW, math.nan) == "-"


def test_default_labels() -> None:
    assert analysis.default_labels([Path("a/r.tsv"), Path("b/s.tsv")]) == ["r.tsv", "s.tsv"]
    assert analysis.default_labels([Path("x/a/r.tsv"), Path("x/b/r.tsv"), Path("c/s.tsv")]) == [
        "a/r.tsv",
        "b/r.tsv",
        "s.tsv",
    ]
    assert analysis.default_labels([Path("r.tsv"), Path("r.tsv")]) == ["r.tsv", "r.tsv (2)"]


# ---------------------------------------------------------------------------------------------
# plots


def test_plot_png_and_pdf(four: pd.DataFrame, tmp_path: Path) -> None:
    frames = {"a": four, "b": four.assign(correct=[1, 0, 0, 0])}
    for name in ("curve.png", "curve.PDF"):
        analysis.plot_certified_accuracy(frames, Metric.radius, tmp_path / name)
        assert (tmp_path / name).stat().st_size > 5_000
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "curve.PDF").read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.PDF", "curve.png"]


def test_plot_rejects_other_formats(four: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(OutputError, match=r"\.png or \.pdf"):
        analysis.plot_certified_accuracy({"a": four}, Metric.radius, tmp_path / "curve.svg")


def test_plot_with_nothing_certified(tmp_path: Path) -> None:
    nothing = frame_of([(0, -1, 0.0, 0), (1, 2, 0.0, 0)])
    analysis.plot_certified_accuracy({"a": nothing}, Metric.radius, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 0


# ---------------------------------------------------------------------------------------------
# Cohen et al. (2019)'s published per-input results


@needs_cohen
def test_all_seven_reference_files_present() -> None:
    assert len(COHEN_FILES) == 7


@needs_cohen
@pytest.mark.parametrize("path", COHEN_FILES, ids=lambda p: p.stem)
def test_cohen_certified_accuracy_matches_independent_count(path: Path) -> None:
    rows, pairs = published(path)
    frame = read_results(path)
    assert len(frame) == rows
    for radius in PUBLISHED_RADII:
        expected = sum(1 for r, correct in pairs if correct == 1 and r >= radius) / rows
        assert analysis.certified_accuracy(frame, radius) == expected
    expected_acr = sum(r * correct for r, correct in pairs) / rows
    assert analysis.average_certified_radius(frame) == pytest.approx(expected_acr, rel=1e-12)


@needs_cohen
def test_cohen_cifar10_sigma_025_published_numbers() -> None:
    """The paper reports 75 % clean and 60 %, 43 %, 27 %, 0 % at radii 0.25, 0.5, 0.75, 1."""
    frame = read_results(COHEN / "cifar10_resnet110_noise_0.25_sigma_0.25.tsv")
    accuracy = [analysis.certified_accuracy(frame, r) for r in PUBLISHED_RADII]
    assert accuracy == [0.6, 0.428, 0.266, 0.0]
    assert analysis.clean_accuracy(frame) == 0.748


@needs_cohen
@pytest.mark.parametrize(
    ("name", "first_time"),
    [
        ("cifar10_resnet110_noise_0.25_sigma_0.25.tsv", 15.4),
        ("cifar10_resnet110_noise_1.00_sigma_1.00.tsv", 15.3),
        ("cifar10_resnet110_noise_0.12_sigma_0.12.tsv", 13.736080),  # 0:00:13.736080
        ("imagenet_resnet50_noise_0.25_sigma_0.25.tsv", 151.238689),  # 0:02:31.238689
        ("imagenet_resnet50_noise_1.00_sigma_1.00.tsv", 155.760262),  # 0:02:35.760262
    ],
)
def test_cohen_times_parse_to_seconds(name: str, first_time: float) -> None:
    frame = read_results(COHEN / name)
    assert frame["time"].dtype == np.float64
    assert frame["time"].iloc[0] == pytest.approx(first_time, abs=1e-9)
    assert frame["time"].notna().all()
    assert analysis.median_time(frame) is not None


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
