"""Certified accuracy, average certified radius, comparison tables and plots of results files.

Certified accuracy at radius R (Cohen et al. 2019, Sec. 4) is the fraction of *all* certified
inputs that are classified correctly with a certified radius of at least R; abstentions count as
wrong. The average certified radius (ACR) is the mean over all inputs of ``radius * correct``.
``metric`` chooses the radius column: ``radius`` (largest isotropic ball in the certified region)
or ``proxy`` (``radius_proxy``, the isotropic ball of the same volume; ANCER's comparison metric).

Frames come from :func:`ancer_cli.artifacts.read_results`. Nothing here prints: functions return
numbers, data frames and strings, and :func:`plot_certified_accuracy` writes a file.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ancer_cli.artifacts import atomic_writer
from ancer_cli.errors import OutputError, ResultsError

ABSTAIN = -1
DEFAULT_RADII: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
PLOT_SUFFIXES = (".png", ".pdf")

ACR_ROW = "average certified radius"
ACR_PROXY_ROW = "average certified radius_proxy"
CLEAN_ROW = "clean accuracy"
ABSTENTION_ROW = "abstention rate"
INPUTS_ROW = "inputs"
TIME_ROW = "median time per input (s)"
_ACCURACY_PREFIX = "certified accuracy at "


class Metric(str, Enum):
    """Which radius column certified accuracy is measured with."""

    radius = "radius"
    proxy = "proxy"

    @property
    def column(self) -> str:
        """The results-file column this metric reads."""
        return "radius_proxy" if self is Metric.proxy else "radius"


@dataclass(frozen=True)
class AccuracySummary:
    """Everything ``ancer accuracy`` reports about one results file.

    ``certified_accuracy`` maps each radius to a fraction in [0, 1]; ``median_time`` is in
    seconds, ``None`` when the file has no ``time`` column.
    """

    inputs: int
    certified_accuracy: dict[float, float]
    average_certified_radius: float
    clean_accuracy: float
    average_proxy_radius: float | None
    abstention_rate: float
    median_time: float | None


# ---------------------------------------------------------------------------------------------
# the mathematics


def check_results(frame: pd.DataFrame, metric: Metric, source: str | Path) -> None:
    """Raise :class:`ResultsError` naming ``source`` if ``frame`` cannot be summarized with
    ``metric``: no rows, or no column for the metric (Cohen et al.'s files have no proxy)."""
    if metric.column not in frame.columns:
        raise ResultsError(
            f"results file {source} has no {metric.column} column, which metric "
            f"'{metric.value}' reads (columns: {' '.join(map(str, frame.columns))}); "
            f"use metric 'radius' for this file"
        )
    if len(frame) == 0:
        raise ResultsError(f"results file {source} has a header but no rows; nothing to summarize")


def _metric_values(frame: pd.DataFrame, metric: Metric) -> np.ndarray:
    """The metric's column as floats, shape ``(len(frame),)``."""
    if metric.column not in frame.columns:
        raise ResultsError(f"results have no {metric.column} column (metric '{metric.value}')")
    return frame[metric.column].to_numpy(dtype=float)


def _certified_radii(frame: pd.DataFrame, metric: Metric) -> np.ndarray:
    """The metric's radius of every row, with 0 for wrong predictions and abstentions."""
    return np.where(frame["correct"].to_numpy() == 1, _metric_values(frame, metric), 0.0)


def certified_accuracy_curve(
    frame: pd.DataFrame, radii: Sequence[float] | np.ndarray, metric: Metric = Metric.radius
) -> np.ndarray:
    """Certified accuracy at each of ``radii`` (shape ``(len(radii),)``, fractions in [0, 1]).

    Fraction of all rows with ``correct == 1`` and metric ``>= R``. Every row counts in the
    denominator, abstentions included; an empty frame gives NaN.
    """
    radii = np.asarray(radii, dtype=float)
    if len(frame) == 0:
        return np.full(radii.shape, math.nan)
    correct = frame["correct"].to_numpy() == 1
    certified = np.sort(_metric_values(frame, metric)[correct])
    # rows with radius >= R: everything from the first index where R could be inserted on the left
    at_least = len(certified) - np.searchsorted(certified, radii, side="left")
    return at_least / len(frame)


def certified_accuracy(frame: pd.DataFrame, radius: float, metric: Metric = Metric.radius) -> float:
    """Certified accuracy at one radius: the fraction of rows correct with metric ``>= radius``."""
    return float(certified_accuracy_curve(frame, [radius], metric)[0])


def clean_accuracy(frame: pd.DataFrame, metric: Metric = Metric.radius) -> float:
    """Accuracy of the smoothed classifier: certified accuracy at radius 0 (abstain = wrong)."""
    return certified_accuracy(frame, 0.0, metric)


def average_certified_radius(frame: pd.DataFrame, metric: Metric = Metric.radius) -> float:
    """ACR: the mean over all rows of ``metric * correct`` (NaN for an empty frame)."""
    if len(frame) == 0:
        return math.nan
    return float(_certified_radii(frame, metric).mean())


def abstention_rate(frame: pd.DataFrame) -> float:
    """Fraction of rows where the smoothed classifier abstained (``predict == -1``)."""
    if len(frame) == 0:
        return math.nan
    return float((frame["predict"].to_numpy() == ABSTAIN).mean())


def median_time(frame: pd.DataFrame) -> float | None:
    """Median seconds per input, or ``None`` when the file has no (non-empty) ``time`` column."""
    if "time" not in frame.columns:
        return None
    seconds = frame["time"].dropna()
    return float(seconds.median()) if len(seconds) else None


def summarize(
    frame: pd.DataFrame, radii: Iterable[float] = DEFAULT_RADII, metric: Metric = Metric.radius
) -> AccuracySummary:
    """All reported quantities of one results frame; ``radii`` are sorted and deduplicated."""
    grid = sorted({float(radius) for radius in radii})
    curve = certified_accuracy_curve(frame, grid, metric)
    return AccuracySummary(
        inputs=len(frame),
        certified_accuracy={
            radius: float(value) for radius, value in zip(grid, curve, strict=True)
        },
        average_certified_radius=average_certified_radius(frame, metric),
        clean_accuracy=clean_accuracy(frame, metric),
        average_proxy_radius=(
            average_certified_radius(frame, Metric.proxy)
            if metric is Metric.radius and Metric.proxy.column in frame.columns
            else None
        ),
        abstention_rate=abstention_rate(frame),
        median_time=median_time(frame),
    )


# ---------------------------------------------------------------------------------------------
# tables


def accuracy_row(radius: float) -> str:
    """The table row name of certified accuracy at ``radius``."""
    return f"{_ACCURACY_PREFIX}{radius:g}"


def table_from_summaries(summaries: Mapping[str, AccuracySummary]) -> pd.DataFrame:
    """One column per label, one row per reported quantity (floats; NaN where not available).

    Rows: certified accuracy at each radius (the union of the summaries' radii), average
    certified radius, clean accuracy, abstention rate, inputs and, when any file has times,
    median time per input in seconds.
    """
    radii = sorted(
        {radius for summary in summaries.values() for radius in summary.certified_accuracy}
    )
    columns: dict[str, dict[str, float]] = {}
    for label, summary in summaries.items():
        column = {accuracy_row(r): summary.certified_accuracy.get(r, math.nan) for r in radii}
        column[ACR_ROW] = summary.average_certified_radius
        if any(s.average_proxy_radius is not None for s in summaries.values()):
            proxy = summary.average_proxy_radius
            column[ACR_PROXY_ROW] = math.nan if proxy is None else proxy
        column[CLEAN_ROW] = summary.clean_accuracy
        column[ABSTENTION_ROW] = summary.abstention_rate
        column[INPUTS_ROW] = float(summary.inputs)
        if any(s.median_time is not None for s in summaries.values()):
            column[TIME_ROW] = math.nan if summary.median_time is None else summary.median_time
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
    if row.startswith(_ACCURACY_PREFIX) or row in (ACR_ROW, ACR_PROXY_ROW, CLEAN_ROW):
        return 1
    if row in (ABSTENTION_ROW, TIME_ROW):
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


def format_cell(row: str, value: float) -> str:
    """A table cell as people read it: fractions with 3 decimals, radii 3, seconds 2."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if row == INPUTS_ROW:
        return str(int(value))
    if row == TIME_ROW:
        return f"{value:.2f}"
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


def render_csv(table: pd.DataFrame) -> str:
    """Comma-separated, full precision, first column ``quantity``; unavailable values empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["quantity", *map(str, table.columns)])
    for row in table.index:
        values = [table.loc[row, label] for label in table.columns]
        cells = [
            "" if math.isnan(v) else str(int(v)) if row == INPUTS_ROW else repr(float(v))
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

    Per file: ``path`` (when ``sources`` gives it), ``inputs``, ``certified_accuracy`` (a dict
    from the radius written as a float, e.g. ``"0.5"``, to a fraction),
    ``average_certified_radius``, ``clean_accuracy``, ``abstention_rate`` and
    ``median_time_seconds`` (null without times).
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
            inputs=summary.inputs,
            certified_accuracy={repr(r): a for r, a in summary.certified_accuracy.items()},
            average_certified_radius=summary.average_certified_radius,
            average_certified_radius_proxy=summary.average_proxy_radius,
            clean_accuracy=summary.clean_accuracy,
            abstention_rate=summary.abstention_rate,
            median_time_seconds=summary.median_time,
        )
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


def default_labels(paths: Sequence[Path]) -> list[str]:
    """A column name per file: its name, with as many parent folders as make duplicates differ.

    The same path given twice gets ``" (2)"``, ``" (3)"``... appended.
    """
    paths = [Path(path) for path in paths]
    labels = [path.name for path in paths]
    for depth in range(2, max((len(p.parts) for p in paths), default=1) + 1):
        clashing = {label for label in labels if labels.count(label) > 1}
        if not clashing:
            break
        labels = [
            Path(*path.parts[-depth:]).as_posix() if label in clashing else label
            for path, label in zip(paths, labels, strict=True)
        ]
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return unique


# ---------------------------------------------------------------------------------------------
# plots


def plot_certified_accuracy(
    frames: Mapping[str, pd.DataFrame],
    metric: Metric,
    path: Path,
    points: int = 1001,
) -> None:
    """Write the certified accuracy against radius of each labelled frame to ``path``.

    One line per frame (legend from the labels), radius from 0 to 5 % past the largest certified
    radius of any frame, accuracy from 0 to 1. ``path`` must end in ``.png`` or ``.pdf``; the
    file is written atomically. Uses matplotlib's Agg canvas, never pyplot's global state.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in PLOT_SUFFIXES:
        raise OutputError(f"cannot plot to {path}: the file name must end in .png or .pdf")
    largest = max(
        (float(_certified_radii(frame, metric).max(initial=0.0)) for frame in frames.values()),
        default=0.0,
    )
    upper = 1.05 * largest if largest > 0 else 1.0
    radii = np.linspace(0.0, upper, points)

    figure = Figure(figsize=(6.4, 4.4), dpi=150, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    styles = ("-", "--", "-.", ":")  # the colour cycle has 10 colours; then the style changes
    for index, (label, frame) in enumerate(frames.items()):
        axes.plot(
            radii,
            certified_accuracy_curve(frame, radii, metric),
            label=label,
            linewidth=1.8,
            linestyle=styles[(index // 10) % len(styles)],
        )
    axes.set_xlim(0.0, upper)
    axes.set_ylim(0.0, 1.0)
    what = "radius" if metric is Metric.radius else "proxy radius (radius_proxy)"
    axes.set_xlabel(what)
    axes.set_ylabel("certified accuracy")
    axes.set_title(f"Certified accuracy against {what}")
    axes.grid(True, alpha=0.4)
    axes.legend(loc="upper right", fontsize="small")
    with atomic_writer(path, "wb") as handle:
        figure.savefig(handle, format=suffix[1:])
