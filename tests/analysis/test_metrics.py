"""Certified accuracy, ACR and the high-probability bounds on hand-made frames and on Cohen et al.'s
published results (checked against an independent count with the ``csv`` module, so the test
shares no code with the function under test).
"""

from __future__ import annotations

import json
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ancer_cli import analysis
from ancer_cli.analysis import Metric
from ancer_cli.errors import ResultsError
from ancer_cli.results import read_results
from tests.analysis.frames import (
    COHEN,
    COHEN_FILES,
    PUBLISHED_RADII,
    frame_of,
    needs_cohen,
    published,
)

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


def test_rows_without_labels_are_left_out_of_accuracies(four: pd.DataFrame) -> None:
    # two unlabeled rows (label -1, correct 0) beside the four labeled ones
    extra = frame_of([(-1, 2, 0.7, 0), (-1, -1, 0.0, 0)], proxy=[0.7, 0.0])
    both = pd.concat([four, extra.assign(idx=[4, 5])], ignore_index=True)
    summary = analysis.summarize(both, [0.5, 1.0])
    assert (summary.inputs, summary.labeled) == (6, 4)
    assert summary.certified_accuracy == {0.5: 0.5, 1.0: 0.25}  # as for the four alone
    assert summary.average_certified_radius == 0.375 and summary.clean_accuracy == 0.5
    assert summary.abstention_rate == 2 / 6  # abstentions count over every row
    unlabeled = analysis.summarize(extra, [0.5], confidence=analysis.Confidence())
    assert unlabeled.labeled == 0 and math.isnan(unlabeled.certified_accuracy[0.5])
    assert math.isnan(unlabeled.clean_accuracy) and math.isnan(unlabeled.average_certified_radius)
    assert unlabeled.abstention_rate == 0.5
    assert unlabeled.high_probability is not None
    assert math.isnan(unlabeled.high_probability.certified_accuracy[0.5])
    table = analysis.table_from_summaries({"labeled": summary, "none": unlabeled})
    assert table.loc[analysis.LABELED_ROW].tolist() == [4.0, 0.0]
    assert analysis.LABELED_ROW not in analysis.summary_table({"four": four}).index


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
