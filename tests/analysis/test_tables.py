"""Comparison tables and their markdown, CSV, JSON and LaTeX renderings."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import pandas as pd

from ancer_cli import analysis
from ancer_cli.analysis import Metric

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
