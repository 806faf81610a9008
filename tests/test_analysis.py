"""Certified accuracy, ACR, tables and plots (``ancer_cli.analysis``) and reading results files.

Cohen et al.'s published per-input results are checked against an independent computation with
the ``csv`` module, so the test does not share code (or pandas) with the function under test.
"""

from __future__ import annotations

import csv
import io
import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.image import imread

from ancer_cli import analysis
from ancer_cli.analysis import Metric
from ancer_cli.artifacts import parse_time, read_results
from ancer_cli.errors import OutputError, ResultsError
from ancer_cli.thetas import InputTheta

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


# ---------------------------------------------------------------------------------------------
# Cohen et al.'s high-probability certified accuracy


def exact_false_certificates(inputs: int, alpha: Fraction, rho: Fraction) -> int:
    """min{k : P[Binomial(inputs, alpha) > k] <= rho}, in exact rational arithmetic."""
    pmf = [math.comb(inputs, j) * alpha**j * (1 - alpha) ** (inputs - j) for j in range(inputs + 1)]
    above = Fraction(1)  # P[B > k] for k = -1
    for k in range(inputs + 1):
        above -= pmf[k]
        if above <= rho:
            return k
    raise AssertionError("unreachable: P[B > inputs] = 0")


@pytest.mark.parametrize(
    ("inputs", "alpha", "rho"),
    [
        (500, "1/1000", "1/1000"),
        (500, "1/100", "1/1000"),
        (100, "1/1000", "1/2"),
        (40, "1/20", "1/100"),
        (1, "1/1000", "1/1000"),
        (250, "1/10", "1/10000"),
    ],
)
def test_false_certificate_bound_is_the_binomial_quantile(
    inputs: int, alpha: str, rho: str
) -> None:
    expected = exact_false_certificates(inputs, Fraction(alpha), Fraction(rho))
    got = analysis.false_certificate_bound(inputs, float(Fraction(alpha)), float(Fraction(rho)))
    assert got == expected


def test_false_certificate_bound_known_values() -> None:
    # P[Bin(500, 0.001) > 4] = 1.5e-4 <= 0.001 < P[Bin(500, 0.001) > 3] = 1.7e-3
    assert analysis.false_certificate_bound(500, 0.001, 0.001) == 4
    assert analysis.false_certificate_bound(0, 0.001, 0.001) == 0
    # rho above P[no false certificate at all] = 1 - 0.999**10 ~ 0.01: k = 0
    assert analysis.false_certificate_bound(10, 0.001, 0.05) == 0


def test_false_certificate_bound_with_reassigned_rows() -> None:
    # 100 independent certificates: k0 = quantile of Bin(100, alpha); reassigned rows add up
    k0 = exact_false_certificates(100, Fraction(1, 100), Fraction(1, 1000))
    assert k0 > 0
    assert analysis.false_certificate_bound(103, 0.01, 0.001, reassigned=3) == k0 + 3
    # k0 = 0 with 10 independent rows: no certificate wrong, reassigned ones inherit that
    assert analysis.false_certificate_bound(15, 0.001, 0.05, reassigned=5) == 0
    with pytest.raises(ResultsError):
        analysis.false_certificate_bound(3, 0.001, 0.001, reassigned=4)
    with pytest.raises(ResultsError, match="alpha and rho"):
        analysis.false_certificate_bound(3, 0.0, 0.001)


def test_high_probability_curve_is_count_minus_k(four: pd.DataFrame) -> None:
    confidence = analysis.Confidence(alpha=0.2, rho=0.5)
    k = exact_false_certificates(4, Fraction(1, 5), Fraction(1, 2))
    assert k == 1
    lower = analysis.high_probability_curve(four, [0.0, 0.5, 1.0, 2.0], Metric.radius, confidence)
    assert lower.tolist() == [(2 - 1) / 4, (2 - 1) / 4, 0.0, 0.0]
    assert analysis.certified_counts(four, [0.0, 1.0]).tolist() == [2, 1]


@needs_cohen
@pytest.mark.parametrize("path", COHEN_FILES, ids=lambda p: p.stem)
def test_high_probability_on_cohen_files(path: Path) -> None:
    rows, pairs = published(path)
    k = exact_false_certificates(rows, Fraction(1, 1000), Fraction(1, 1000))
    summary = analysis.summarize(
        read_results(path), PUBLISHED_RADII, confidence=analysis.Confidence()
    )
    high = summary.high_probability
    assert high is not None and high.false_certificates == k
    for radius in PUBLISHED_RADII:
        count = sum(1 for r, correct in pairs if correct == 1 and r >= radius)
        assert high.certified_accuracy[radius] == max(0, count - k) / rows
        assert high.certified_accuracy[radius] <= summary.certified_accuracy[radius]


def test_confidence_from_record() -> None:
    assert analysis.confidence_from_record(None, 0.01) == analysis.Confidence(0.001, 0.01, 0)
    record = {"arguments": {"alpha": 0.05}, "memory": {"enabled": True, "reassigned": 2}}
    assert analysis.confidence_from_record(record, 0.01) == analysis.Confidence(0.05, 0.01, 2)
    assert analysis.confidence_from_record(record, 0.01, alpha=0.2).alpha == 0.2
    no_memory = {"arguments": {"alpha": 0.01}, "memory": {"enabled": False}}
    assert analysis.confidence_from_record(no_memory, 0.1) == analysis.Confidence(0.01, 0.1, 0)
    with pytest.raises(ResultsError, match="memory.reassigned"):
        analysis.confidence_from_record({"memory": {"reassigned": [3, 4]}}, 0.1)


def test_table_json_and_markdown_with_high_probability(four: pd.DataFrame) -> None:
    confidence = analysis.Confidence(alpha=0.2, rho=0.5)
    summaries = {
        "a": analysis.summarize(four, [0.5], confidence=confidence),
        "b": analysis.summarize(four.assign(correct=[1, 0, 0, 0]), [0.5], confidence=confidence),
    }
    table = analysis.table_from_summaries(summaries)
    row = analysis.high_probability_row(0.5)
    assert row == "high-probability certified accuracy at 0.5"
    assert table.loc[row].tolist() == [0.25, 0.0]
    assert table.loc[analysis.ALPHA_ROW].tolist() == [0.2, 0.2]
    assert table.loc[analysis.FALSE_CERTIFICATES_ROW].tolist() == [1.0, 1.0]
    best = analysis.best_mask(table)
    assert best.loc[row].tolist() == [True, False]
    assert not best.loc[analysis.ALPHA_ROW].any()
    lines = analysis.render_markdown(table).splitlines()
    assert "| high-probability certified accuracy at 0.5 | **0.250** | 0.000 |" in lines
    assert "| alpha (per certificate) | 0.2 | 0.2 |" in lines
    assert "| false certificates (at most) | 1 | 1 |" in lines
    payload = json.loads(analysis.render_json(summaries, Metric.radius))
    assert payload["files"]["a"]["high_probability"] == {
        "alpha": 0.2,
        "rho": 0.5,
        "reassigned": 0,
        "false_certificates": 1,
        "certified_accuracy": {"0.5": 0.25},
    }
    assert (
        "high_probability"
        not in json.loads(
            analysis.render_json({"a": analysis.summarize(four, [0.5])}, Metric.radius)
        )["files"]["a"]
    )


# ---------------------------------------------------------------------------------------------
# LaTeX


def test_render_latex(four: pd.DataFrame) -> None:
    other = four.assign(correct=[1, 0, 0, 0])
    table = analysis.summary_table({"run_1 & co": four, "b": other}, [0.5])
    lines = analysis.render_latex(table, title="metric: radius").splitlines()
    assert lines[:4] == [
        r"\begin{tabular}{lrr}",
        r"\toprule",
        r"metric: radius & run\_1 \& co & b \\",
        r"\midrule",
    ]
    assert lines[4] == r"certified accuracy at 0.5 & \textbf{0.500} & 0.250 \\"
    assert r"inputs & 4 & 4 \\" in lines
    assert lines[-2:] == [r"\bottomrule", r"\end{tabular}"]
    assert analysis.latex_escape("a_b%c$d#e{f}g~h^i\\") == (
        r"a\_b\%c\$d\#e\{f\}g\textasciitilde{}h\textasciicircum{}i\textbackslash{}"
    )


# ---------------------------------------------------------------------------------------------
# more plots: both metrics, radius distributions, theta maps


def pixels_of(path: Path) -> np.ndarray:
    """RGB pixels of a PNG as integers 0..255, shape (H, W, 3)."""
    return np.round(imread(path)[..., :3] * 255).astype(int)


def distinct_colours(pixels: np.ndarray) -> int:
    """Number of different RGB colours in an (H, W, 3) integer image."""
    return int(np.unique(pixels[..., 0] * 65536 + pixels[..., 1] * 256 + pixels[..., 2]).size)


def near(pixels: np.ndarray, rgb: tuple[int, int, int], tolerance: int = 12) -> int:
    """How many pixels are within ``tolerance`` (L1) of ``rgb``."""
    return int((np.abs(pixels - np.array(rgb)).sum(axis=-1) <= tolerance).sum())


BLUE, ORANGE, GREEN = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E), (0x2C, 0xA0, 0x2C)


def test_plot_both_metrics_and_max_radius(four: pd.DataFrame, tmp_path: Path) -> None:
    frames = {"a": four, "b": four.assign(correct=[1, 0, 1, 0])}
    both = tmp_path / "both.png"
    analysis.plot_certified_accuracy(frames, [Metric.radius, Metric.proxy], both, max_radius=2.0)
    one = tmp_path / "one.png"
    analysis.plot_certified_accuracy(frames, Metric.radius, one)
    pixels, fewer = pixels_of(both), pixels_of(one)
    assert pixels.shape == (660, 960, 3)
    for rgb in (BLUE, ORANGE):
        assert near(pixels, rgb) > 50
    # the proxy lines add coloured pixels to the radius-only plot
    assert near(pixels, BLUE) + near(pixels, ORANGE) > near(fewer, BLUE) + near(fewer, ORANGE)


def test_proxy_ratios(four: pd.DataFrame) -> None:
    assert analysis.proxy_ratios(four).tolist() == pytest.approx([1.8, 1.5, 1.5])
    assert analysis.proxy_ratios(four.drop(columns="radius_proxy")).size == 0


@pytest.mark.parametrize("cdf", [False, True], ids=["histogram", "cdf"])
def test_plot_radius_distribution(four: pd.DataFrame, tmp_path: Path, cdf: bool) -> None:
    rng = np.random.default_rng(0)
    many = frame_of(
        [(0, 0, float(r), 1) for r in rng.uniform(0.1, 1.5, 80)],
        proxy=list(rng.uniform(1.6, 3.0, 80)),
    )
    cohen_like = many.drop(columns="radius_proxy").assign(radius=many["radius"] * 0.5)
    frames = {"ancer": many, "cohen": cohen_like, "four": four}
    path = tmp_path / "radii.png"
    analysis.plot_radius_distribution(frames, Metric.radius, path, cdf=cdf)
    pixels = pixels_of(path)
    assert pixels.shape == (630, 1650, 3)  # two panels: radii and radius_proxy / radius
    for rgb in (BLUE, ORANGE, GREEN):
        assert near(pixels, rgb) > 30, rgb
    assert distinct_colours(pixels) > 20


def test_plot_radius_distribution_without_certified_rows(tmp_path: Path) -> None:
    nothing = frame_of([(0, -1, 0.0, 0), (1, 2, 0.0, 0)])
    analysis.plot_radius_distribution({"a": nothing}, Metric.radius, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 5_000
    with pytest.raises(OutputError, match=r"\.png or \.pdf"):
        analysis.plot_radius_distribution({"a": nothing}, Metric.radius, tmp_path / "r.jpg")


def theta_input(index: int, channels: int, isotropic: bool = False) -> InputTheta:
    generator = torch.Generator().manual_seed(index)
    image = torch.rand(channels, 8, 8, generator=generator)
    theta = (
        torch.tensor(0.25) if isotropic else 0.25 + torch.rand(channels, 8, 8, generator=generator)
    )
    return InputTheta(index, image, theta, label=index % 10)


@pytest.mark.parametrize(
    ("channels", "each_channel", "isotropic", "columns"),
    [(3, True, False, 4), (1, False, True, 2)],
    ids=["rgb-each-channel", "grey-isotropic"],
)
def test_plot_theta_maps(
    tmp_path: Path, channels: int, each_channel: bool, isotropic: bool, columns: int
) -> None:
    pictures = [theta_input(i, channels, isotropic) for i in (0, 7)]
    path = tmp_path / "thetas.png"
    analysis.plot_theta_maps(pictures, path, each_channel=each_channel, theta_meaning="std")
    pixels = pixels_of(path)
    # figure size (2.9 * columns + 0.4) x (2.7 * rows) inches at 150 dpi
    assert pixels.shape == (810, round((2.9 * columns + 0.4) * 150), 3)
    assert distinct_colours(pixels) > 50


def test_plot_theta_maps_needs_inputs(tmp_path: Path) -> None:
    with pytest.raises(ResultsError, match="at least one index"):
        analysis.plot_theta_maps([], tmp_path / "t.png")


def test_plot_proxy_without_proxy_columns(tmp_path: Path) -> None:
    cohen_like = frame_of([(0, 0, 0.5, 1), (1, 1, 0.2, 1)])
    analysis.plot_certified_accuracy({"a": cohen_like}, Metric.proxy, tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 5_000
