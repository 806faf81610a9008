"""Comparison tables of summaries: one column per results file, rendered as markdown, LaTeX
(booktabs), CSV or JSON, with the best value of each row marked.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from ancer_cli.analysis.metrics import AccuracySummary, summarize
from ancer_cli.settings import DEFAULT_RADII, Metric

ACR_ROW = "average certified radius"


ACR_PROXY_ROW = "average certified radius_proxy"


CLEAN_ROW = "clean accuracy"


ABSTENTION_ROW = "abstention rate"


INPUTS_ROW = "inputs"


LABELED_ROW = "labeled inputs"


TIME_ROW = "median time per input (s)"
MEAN_SAMPLES_ROW = "mean samples per input"
MEDIAN_SAMPLES_ROW = "median samples per input"


ALPHA_ROW = "alpha (per certificate)"


FALSE_CERTIFICATES_ROW = "false certificates (at most)"


_ACCURACY_PREFIX = "certified accuracy at "


_HIGH_PROBABILITY_PREFIX = "high-probability certified accuracy at "


def accuracy_row(radius: float) -> str:
    """The table row name of certified accuracy at ``radius``."""
    return f"{_ACCURACY_PREFIX}{radius:g}"


def high_probability_row(radius: float) -> str:
    """The table row name of the high-probability certified accuracy at ``radius``."""
    return f"{_HIGH_PROBABILITY_PREFIX}{radius:g}"


def table_from_summaries(summaries: Mapping[str, AccuracySummary]) -> pd.DataFrame:
    """One column per label, one row per reported quantity (floats; NaN where not available).

    Rows: certified accuracy at each radius (the union of the summaries' radii; none for files
    of predictions, whose cells there are NaN), then, when
    the summaries carry them, the high-probability lower bounds at the same radii; average
    certified radius (and on radius_proxy), clean accuracy, abstention rate, inputs (and
    labeled inputs when a file has rows without labels), median time per input in seconds
    (when any file has times), mean and median samples per input (sequential certification)
    and, with high-probability bounds,
    each file's alpha and bound on the number of wrong certificates.
    """
    radii = sorted(
        {radius for summary in summaries.values() for radius in summary.certified_accuracy}
    )
    bounded = any(s.high_probability is not None for s in summaries.values())
    columns: dict[str, dict[str, float]] = {}
    for label, summary in summaries.items():
        column = {accuracy_row(r): summary.certified_accuracy.get(r, math.nan) for r in radii}
        high = summary.high_probability
        if bounded:
            for r in radii:
                column[high_probability_row(r)] = (
                    math.nan if high is None else high.certified_accuracy.get(r, math.nan)
                )
        if any(s.has_radius for s in summaries.values()):
            column[ACR_ROW] = summary.average_certified_radius
        if any(s.average_proxy_radius is not None for s in summaries.values()):
            proxy = summary.average_proxy_radius
            column[ACR_PROXY_ROW] = math.nan if proxy is None else proxy
        column[CLEAN_ROW] = summary.clean_accuracy
        column[ABSTENTION_ROW] = summary.abstention_rate
        column[INPUTS_ROW] = float(summary.inputs)
        if any(s.labeled < s.inputs for s in summaries.values()):
            column[LABELED_ROW] = float(summary.labeled)
        if any(s.median_time is not None for s in summaries.values()):
            column[TIME_ROW] = math.nan if summary.median_time is None else summary.median_time
        if any(s.mean_samples is not None for s in summaries.values()):
            for row, value in (
                (MEAN_SAMPLES_ROW, summary.mean_samples),
                (MEDIAN_SAMPLES_ROW, summary.median_samples),
            ):
                column[row] = math.nan if value is None else value
        if bounded:
            column[ALPHA_ROW] = math.nan if high is None else high.alpha
            column[FALSE_CERTIFICATES_ROW] = (
                math.nan if high is None else float(high.false_certificates)
            )
        columns[label] = column
    table = pd.DataFrame(columns, dtype=float)
    table.index.name = "quantity"
    return table


def summary_table(
    frames: Mapping[str, pd.DataFrame],
    radii: Iterable[float] = DEFAULT_RADII,
    metric: Metric = Metric.radius,
) -> pd.DataFrame:
    """:func:`table_from_summaries` of :func:`summarize` applied to each labelled frame."""
    radii = tuple(radii)
    return table_from_summaries(
        {label: summarize(frame, radii, metric) for label, frame in frames.items()}
    )


def _better(row: str) -> int:
    """+1 if a larger value is better in ``row``, -1 if smaller is, 0 if neither."""
    if row.startswith((_ACCURACY_PREFIX, _HIGH_PROBABILITY_PREFIX)) or row in (
        ACR_ROW,
        ACR_PROXY_ROW,
        CLEAN_ROW,
    ):
        return 1
    if row in (ABSTENTION_ROW, TIME_ROW, MEAN_SAMPLES_ROW, MEDIAN_SAMPLES_ROW):
        return -1
    return 0


def best_mask(table: pd.DataFrame) -> pd.DataFrame:
    """True where a cell holds its row's best value (ties all marked).

    Nothing is marked with a single column, in rows without a direction (inputs), or in rows
    whose values are all equal.
    """
    mask = pd.DataFrame(False, index=table.index, columns=table.columns)
    if table.shape[1] < 2:
        return mask
    for row in table.index:
        direction = _better(str(row))
        values = table.loc[row]
        finite = values.dropna()
        if direction == 0 or finite.nunique() < 2:
            continue
        best = finite.max() if direction > 0 else finite.min()
        mask.loc[row] = values == best
    return mask


_COUNT_ROWS = (INPUTS_ROW, LABELED_ROW, FALSE_CERTIFICATES_ROW)


def format_cell(row: str, value: float) -> str:
    """A table cell as people read it: fractions with 3 decimals, radii 3, seconds 2."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if row in _COUNT_ROWS:
        return str(int(value))
    if row == TIME_ROW:
        return f"{value:.2f}"
    if row in (MEAN_SAMPLES_ROW, MEDIAN_SAMPLES_ROW):
        return f"{value:.0f}"
    if row == ALPHA_ROW:
        return f"{value:g}"
    return f"{value:.3f}"


def render_markdown(table: pd.DataFrame, title: str = "") -> str:
    """A pipe table (GitHub Markdown), best values in bold; ``title`` heads the first column."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    mask = best_mask(table)
    lines = [
        "| " + " | ".join([cell(title)] + [cell(str(label)) for label in table.columns]) + " |",
        "| --- |" + " ---: |" * len(table.columns),
    ]
    for row in table.index:
        cells = [cell(str(row))]
        for label in table.columns:
            text = format_cell(str(row), float(table.loc[row, label]))
            cells.append(f"**{text}**" if mask.loc[row, label] else text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped, for use in a table cell."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def render_latex(table: pd.DataFrame, title: str = "") -> str:
    """A ``tabular`` with booktabs rules (``\\usepackage{booktabs}``), best values in
    ``\\textbf``; ``title`` heads the first column. Cells are formatted as in Markdown."""
    mask = best_mask(table)
    lines = [
        "\\begin{tabular}{l" + "r" * len(table.columns) + "}",
        "\\toprule",
        " & ".join([latex_escape(title)] + [latex_escape(str(c)) for c in table.columns]) + " \\\\",
        "\\midrule",
    ]
    for row in table.index:
        cells = [latex_escape(str(row))]
        for label in table.columns:
            text = format_cell(str(row), float(table.loc[row, label]))
            cells.append(f"\\textbf{{{text}}}" if mask.loc[row, label] else text)
        lines.append(" & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def render_csv(table: pd.DataFrame) -> str:
    """Comma-separated, full precision, first column ``quantity``; unavailable values empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["quantity", *map(str, table.columns)])
    for row in table.index:
        values = [table.loc[row, label] for label in table.columns]
        cells = [
            "" if math.isnan(v) else str(int(v)) if row in _COUNT_ROWS else repr(float(v))
            for v in values
        ]
        writer.writerow([str(row), *cells])
    return buffer.getvalue()


def summaries_to_json(
    summaries: Mapping[str, AccuracySummary],
    metric: Metric,
    sources: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A JSON-ready dict for scripts: ``{"metric", "radii", "files": {label: {...}}}``.

    Per file: ``path`` (when ``sources`` gives it), ``kind`` (``certificates``, or
    ``predictions`` for PREDICT's files: empty ``certified_accuracy``, null radii),
    ``inputs``, ``labeled_inputs`` (rows with a
    label; accuracies are over these and null when there are none), ``certified_accuracy`` (a dict
    from the radius written as a float, e.g. ``"0.5"``, to a fraction),
    ``average_certified_radius``, ``clean_accuracy``, ``abstention_rate``,
    ``median_time_seconds`` (null without times) and, with high-probability bounds,
    ``high_probability``: ``{"alpha", "rho", "reassigned", "false_certificates",
    "certified_accuracy"}``.
    """
    radii = sorted(
        {radius for summary in summaries.values() for radius in summary.certified_accuracy}
    )
    files: dict[str, Any] = {}
    for label, summary in summaries.items():
        entry: dict[str, Any] = {}
        if sources is not None and label in sources:
            entry["path"] = sources[label]
        entry.update(
            kind="certificates" if summary.has_radius else "predictions",
            inputs=summary.inputs,
            labeled_inputs=summary.labeled,
            certified_accuracy={repr(r): a for r, a in summary.certified_accuracy.items()},
            average_certified_radius=summary.average_certified_radius,
            average_certified_radius_proxy=summary.average_proxy_radius,
            clean_accuracy=summary.clean_accuracy,
            abstention_rate=summary.abstention_rate,
            median_time_seconds=summary.median_time,
            mean_samples_per_input=summary.mean_samples,
            median_samples_per_input=summary.median_samples,
        )
        high = summary.high_probability
        if high is not None:
            entry["high_probability"] = {
                "alpha": high.alpha,
                "rho": high.rho,
                "reassigned": high.reassigned,
                "false_certificates": high.false_certificates,
                "certified_accuracy": {repr(r): a for r, a in high.certified_accuracy.items()},
            }
        files[label] = entry
    return {"metric": metric.value, "column": metric.column, "radii": radii, "files": files}


def render_json(
    summaries: Mapping[str, AccuracySummary],
    metric: Metric,
    sources: Mapping[str, str] | None = None,
) -> str:
    """:func:`summaries_to_json` as indented JSON text (NaN written as null)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {key: clean(item) for key, item in value.items()}
        if isinstance(value, list):
            return [clean(item) for item in value]
        return value

    return json.dumps(clean(summaries_to_json(summaries, metric, sources)), indent=2) + "\n"




TEXT_FORMATS = ("markdown", "latex", "csv")


def render(table: pd.DataFrame, text_format: str, title: str = "") -> str:
    """The table as ``markdown``, ``latex`` (booktabs) or ``csv`` text."""
    if text_format == "markdown":
        return render_markdown(table, title=title)
    if text_format == "latex":
        return render_latex(table, title=title)
    if text_format == "csv":
        return render_csv(table)
    raise ValueError(f"unknown table format {text_format!r}; expected one of {TEXT_FORMATS}")
