"""Certified accuracy, average certified radius, comparison tables and plots of results files.

Certified accuracy at radius R (Cohen et al. 2019, Sec. 4) is the fraction of *all* certified
inputs that are classified correctly with a certified radius of at least R; abstentions count as
wrong. The average certified radius (ACR) is the mean over all inputs of ``radius * correct``.
``metric`` chooses the radius column: ``radius`` (largest isotropic ball in the certified region)
or ``proxy`` (``radius_proxy``, the isotropic ball of the same volume; ANCER's comparison metric).

Certified accuracy computed this way is Cohen et al.'s *approximate* certified accuracy: each
row's certificate is wrong with probability up to ``alpha``. :func:`false_certificate_bound` and
:func:`high_probability_curve` turn it into a lower bound that holds with probability
``1 - rho`` (see :func:`high_probability_curve` for the formula).

Frames come from :func:`ancer_cli.artifacts.read_results`. Nothing here prints: functions return
numbers, data frames and strings, and the ``plot_*`` functions write a file.
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
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy import stats

from ancer_cli.artifacts import atomic_writer
from ancer_cli.errors import OutputError, ResultsError
from ancer_cli.thetas import InputTheta

ABSTAIN = -1
DEFAULT_RADII: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
PLOT_SUFFIXES = (".png", ".pdf")

ACR_ROW = "average certified radius"
ACR_PROXY_ROW = "average certified radius_proxy"
CLEAN_ROW = "clean accuracy"
ABSTENTION_ROW = "abstention rate"
INPUTS_ROW = "inputs"
TIME_ROW = "median time per input (s)"
ALPHA_ROW = "alpha (per certificate)"
FALSE_CERTIFICATES_ROW = "false certificates (at most)"
_ACCURACY_PREFIX = "certified accuracy at "
_HIGH_PROBABILITY_PREFIX = "high-probability certified accuracy at "
DEFAULT_ALPHA = 0.001
DEFAULT_RHO = 0.001


class Metric(str, Enum):
    """Which radius column certified accuracy is measured with."""

    radius = "radius"
    proxy = "proxy"

    @property
    def column(self) -> str:
        """The results-file column this metric reads."""
        return "radius_proxy" if self is Metric.proxy else "radius"


@dataclass(frozen=True)
class Confidence:
    """What the high-probability bound of one results file needs.

    ``alpha``: the probability with which each row's certificate may be wrong (certify's
    ``--alpha``); ``rho``: the probability with which the bound itself may fail;
    ``reassigned``: rows whose certificate was taken from an earlier row's region by the memory
    pass (their failures are not independent of that row's; 0 for fixed sigma).
    """

    alpha: float = DEFAULT_ALPHA
    rho: float = DEFAULT_RHO
    reassigned: int = 0


@dataclass(frozen=True)
class HighProbabilityAccuracy:
    """Lower bounds on certified accuracy that hold together with probability ``1 - rho``.

    ``false_certificates`` is the bound k on the number of wrong certificates; each
    ``certified_accuracy[R]`` is ``max(0, count(R) - k) / inputs``.
    """

    alpha: float
    rho: float
    reassigned: int
    false_certificates: int
    certified_accuracy: dict[float, float]


@dataclass(frozen=True)
class AccuracySummary:
    """Everything ``ancer accuracy`` reports about one results file.

    ``certified_accuracy`` maps each radius to a fraction in [0, 1]; ``median_time`` is in
    seconds, ``None`` when the file has no ``time`` column; ``high_probability`` is present when
    a :class:`Confidence` was given.
    """

    inputs: int
    certified_accuracy: dict[float, float]
    average_certified_radius: float
    clean_accuracy: float
    average_proxy_radius: float | None
    abstention_rate: float
    median_time: float | None
    high_probability: HighProbabilityAccuracy | None = None


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
    return certified_counts(frame, radii, metric) / len(frame)


def certified_counts(
    frame: pd.DataFrame, radii: Sequence[float] | np.ndarray, metric: Metric = Metric.radius
) -> np.ndarray:
    """Number of rows with ``correct == 1`` and metric ``>= R`` for each of ``radii`` (int64)."""
    radii = np.asarray(radii, dtype=float)
    correct = frame["correct"].to_numpy() == 1
    certified = np.sort(_metric_values(frame, metric)[correct])
    # rows with radius >= R: everything from the first index where R could be inserted on the left
    return (len(certified) - np.searchsorted(certified, radii, side="left")).astype(np.int64)


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


def false_certificate_bound(inputs: int, alpha: float, rho: float, reassigned: int = 0) -> int:
    """The number k of wrong certificates among ``inputs`` rows, exceeded with probability
    at most ``rho``.

    Each of the ``n = inputs - reassigned`` independent certify runs returns a wrong certificate
    with probability at most ``alpha`` (Cohen et al. 2019, Prop. 2), so their number F is
    stochastically below ``Binomial(n, alpha)`` and::

        k0 = min{k >= 0 : P[Binomial(n, alpha) > k] <= rho}

    bounds F with probability ``>= 1 - rho``. A row reassigned by the memory pass inherits the
    certificate of an earlier row, so when ``k0 > 0`` every reassigned row may be wrong too:
    ``k = min(inputs, k0 + reassigned)``; when ``k0 == 0`` no certificate is wrong and
    ``k = 0``. The tail is scipy's binomial survival function, searched exactly around
    ``binom.ppf``.
    """
    if inputs < 0 or not 0 <= reassigned <= inputs:
        raise ResultsError(f"need 0 <= reassigned ({reassigned}) <= inputs ({inputs})")
    if not (0 < alpha < 1 and 0 < rho < 1):
        raise ResultsError(f"alpha and rho must lie in (0, 1), got alpha={alpha}, rho={rho}")
    independent = inputs - reassigned
    if independent == 0:
        return 0

    def tail(k: int) -> float:
        return float(stats.binom.sf(k, independent, alpha))

    k = max(0, int(stats.binom.ppf(1.0 - rho, independent, alpha)))
    while k < independent and tail(k) > rho:
        k += 1
    while k > 0 and tail(k - 1) <= rho:
        k -= 1
    return min(inputs, k + reassigned) if k > 0 else 0


def high_probability_curve(
    frame: pd.DataFrame,
    radii: Sequence[float] | np.ndarray,
    metric: Metric = Metric.radius,
    confidence: Confidence = Confidence(),
) -> np.ndarray:
    """Cohen et al.'s high-probability certified accuracy at each of ``radii``.

    With m rows, ``A(R)`` of them correct with radius ``>= R``, and k from
    :func:`false_certificate_bound`::

        lower(R) = max(0, A(R) - k) / m

    With probability ``>= 1 - rho`` over certify's sampling, at most k certificates are wrong,
    and a wrong certificate is the only way a row can count in ``A(R)`` without being truly
    certified at R -- for every R at once -- so then the true certified accuracy of the smoothed
    classifier on these m inputs is at least ``lower(R)`` for all R simultaneously.
    """
    m = len(frame)
    if m == 0:
        return np.full(np.asarray(radii, dtype=float).shape, math.nan)
    k = false_certificate_bound(m, confidence.alpha, confidence.rho, confidence.reassigned)
    return np.maximum(certified_counts(frame, radii, metric) - k, 0) / m


def confidence_from_record(
    record: Mapping[str, Any] | None, rho: float, alpha: float | None = None
) -> Confidence:
    """The :class:`Confidence` of a results file from its JSON sidecar ``record``.

    ``alpha``, when given, wins; else the record's ``arguments.alpha``; else
    :data:`DEFAULT_ALPHA` (Cohen et al.'s files use 0.001). Reassigned rows come from the
    record's memory pass (``memory.reassigned``), 0 without one.
    """
    record = record or {}
    arguments = record.get("arguments") or {}
    memory = record.get("memory") or {}
    if alpha is None:
        recorded = arguments.get("alpha") if isinstance(arguments, Mapping) else None
        alpha = float(recorded) if isinstance(recorded, (int, float)) else DEFAULT_ALPHA
    reassigned = memory.get("reassigned", 0) if isinstance(memory, Mapping) else 0
    if isinstance(reassigned, bool) or not isinstance(reassigned, int):
        raise ResultsError(
            f"run record says memory.reassigned = {reassigned!r}, expected a count of rows"
        )
    return Confidence(alpha=alpha, rho=rho, reassigned=reassigned)


def summarize(
    frame: pd.DataFrame,
    radii: Iterable[float] = DEFAULT_RADII,
    metric: Metric = Metric.radius,
    confidence: Confidence | None = None,
) -> AccuracySummary:
    """All reported quantities of one results frame; ``radii`` are sorted and deduplicated.

    With ``confidence``, also the high-probability lower bounds at the same radii.
    """
    grid = sorted({float(radius) for radius in radii})
    curve = certified_accuracy_curve(frame, grid, metric)
    high_probability = None
    if confidence is not None:
        lower = high_probability_curve(frame, grid, metric, confidence)
        high_probability = HighProbabilityAccuracy(
            alpha=confidence.alpha,
            rho=confidence.rho,
            reassigned=confidence.reassigned,
            false_certificates=false_certificate_bound(
                len(frame), confidence.alpha, confidence.rho, confidence.reassigned
            ),
            certified_accuracy={r: float(v) for r, v in zip(grid, lower, strict=True)},
        )
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
        high_probability=high_probability,
    )


# ---------------------------------------------------------------------------------------------
# tables


def accuracy_row(radius: float) -> str:
    """The table row name of certified accuracy at ``radius``."""
    return f"{_ACCURACY_PREFIX}{radius:g}"


def high_probability_row(radius: float) -> str:
    """The table row name of the high-probability certified accuracy at ``radius``."""
    return f"{_HIGH_PROBABILITY_PREFIX}{radius:g}"


def table_from_summaries(summaries: Mapping[str, AccuracySummary]) -> pd.DataFrame:
    """One column per label, one row per reported quantity (floats; NaN where not available).

    Rows: certified accuracy at each radius (the union of the summaries' radii), then, when
    the summaries carry them, the high-probability lower bounds at the same radii; average
    certified radius (and on radius_proxy), clean accuracy, abstention rate, inputs, median
    time per input in seconds (when any file has times) and, with high-probability bounds,
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
        column[ACR_ROW] = summary.average_certified_radius
        if any(s.average_proxy_radius is not None for s in summaries.values()):
            proxy = summary.average_proxy_radius
            column[ACR_PROXY_ROW] = math.nan if proxy is None else proxy
        column[CLEAN_ROW] = summary.clean_accuracy
        column[ABSTENTION_ROW] = summary.abstention_rate
        column[INPUTS_ROW] = float(summary.inputs)
        if any(s.median_time is not None for s in summaries.values()):
            column[TIME_ROW] = math.nan if summary.median_time is None else summary.median_time
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


_COUNT_ROWS = (INPUTS_ROW, FALSE_CERTIFICATES_ROW)


def format_cell(row: str, value: float) -> str:
    """A table cell as people read it: fractions with 3 decimals, radii 3, seconds 2."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if row in _COUNT_ROWS:
        return str(int(value))
    if row == TIME_ROW:
        return f"{value:.2f}"
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

    Per file: ``path`` (when ``sources`` gives it), ``inputs``, ``certified_accuracy`` (a dict
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
            inputs=summary.inputs,
            certified_accuracy={repr(r): a for r, a in summary.certified_accuracy.items()},
            average_certified_radius=summary.average_certified_radius,
            average_certified_radius_proxy=summary.average_proxy_radius,
            clean_accuracy=summary.clean_accuracy,
            abstention_rate=summary.abstention_rate,
            median_time_seconds=summary.median_time,
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

_LINE_STYLES = ("-", "--", "-.", ":")
_METRIC_AXIS = {
    Metric.radius: "radius",
    Metric.proxy: "proxy radius (radius_proxy)",
}


def _check_plot_path(path: Path) -> str:
    """The matplotlib format of ``path`` (``png`` or ``pdf``); anything else is an OutputError."""
    suffix = Path(path).suffix.lower()
    if suffix not in PLOT_SUFFIXES:
        raise OutputError(f"cannot plot to {path}: the file name must end in .png or .pdf")
    return suffix[1:]


def _new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (no pyplot global state)."""
    figure = Figure(figsize=(width, height), dpi=150, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: Path, image_format: str) -> None:
    with atomic_writer(Path(path), "wb") as handle:
        figure.savefig(handle, format=image_format)


def _colour(index: int) -> str:
    """The ``index``-th colour of matplotlib's default cycle (C0, C1, ..., then again)."""
    return f"C{index % 10}"


def plot_certified_accuracy(
    frames: Mapping[str, pd.DataFrame],
    metric: Metric | Sequence[Metric],
    path: Path,
    points: int = 1001,
    max_radius: float | None = None,
) -> None:
    """Write the certified accuracy against radius of each labelled frame to ``path``.

    One colour per frame (legend from the labels). ``metric`` is one metric or several: with
    both, each frame gets a solid line on ``radius`` and a dashed one on ``radius_proxy`` in
    its colour (frames without ``radius_proxy`` get the solid line only). The radius axis runs
    from 0 to ``max_radius``, by default 5 % past the largest certified radius plotted; the
    accuracy axis from 0 to 1. ``path`` must end in ``.png`` or ``.pdf``; the file is written
    atomically. Uses matplotlib's Agg canvas, never pyplot's global state.
    """
    image_format = _check_plot_path(path)
    metrics = [metric] if isinstance(metric, Metric) else list(metric)
    if not metrics:
        raise ResultsError("plot_certified_accuracy needs at least one metric")
    lines = [
        (index, label, frame, m)
        for index, (label, frame) in enumerate(frames.items())
        for m in metrics
        if m.column in frame.columns
    ]
    largest = max(
        (float(_certified_radii(frame, m).max(initial=0.0)) for _, _, frame, m in lines),
        default=0.0,
    )
    if max_radius is not None:
        upper = float(max_radius)
    else:
        upper = 1.05 * largest if largest > 0 else 1.0
    radii = np.linspace(0.0, upper, points)

    figure = _new_figure(6.4, 4.4)
    axes = figure.add_subplot()
    several = len(metrics) > 1
    for index, label, frame, m in lines:
        # with several metrics the style tells the metric; otherwise it changes every 10 files
        style = _LINE_STYLES[metrics.index(m)] if several else _LINE_STYLES[(index // 10) % 4]
        axes.plot(
            radii,
            certified_accuracy_curve(frame, radii, m),
            label=f"{label} ({m.column})" if several else label,
            linewidth=1.8,
            color=_colour(index),
            linestyle=style,
        )
    axes.set_xlim(0.0, upper)
    axes.set_ylim(0.0, 1.0)
    what = _METRIC_AXIS[metrics[0]] if not several else "radius (solid) / radius_proxy (dashed)"
    axes.set_xlabel(f"{what}, input units (pixels in [0, 1])")
    axes.set_ylabel("certified accuracy")
    axes.set_title("Certified accuracy against radius")
    axes.grid(True, alpha=0.4)
    if lines:
        axes.legend(loc="upper right", fontsize="small")
    else:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
    _save(figure, path, image_format)


def proxy_ratios(frame: pd.DataFrame) -> np.ndarray:
    """``radius_proxy / radius`` of every row with ``radius > 0`` (empty without the column).

    For a fixed or isotropic theta the ratio is 1; for ANCER it is ``geomean(theta) /
    min(theta)``, how much larger the certified region's volume-equivalent ball is than the
    ball it contains.
    """
    if Metric.proxy.column not in frame.columns:
        return np.empty(0)
    radius = frame["radius"].to_numpy(dtype=float)
    proxy = frame["radius_proxy"].to_numpy(dtype=float)
    positive = radius > 0
    return proxy[positive] / radius[positive]


def _distribution(axes: Axes, samples: Mapping[str, tuple[int, np.ndarray]], cdf: bool) -> None:
    """Overlaid step histograms (shared bins) or empirical CDFs, one colour per sample."""
    values = [v for _, v in samples.values() if len(v)]
    if not values:
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
        return
    everything = np.concatenate(values)
    low, high = float(everything.min()), float(everything.max())
    if high <= low:
        low, high = low - 0.5 * max(abs(low), 1e-3), high + 0.5 * max(abs(high), 1e-3)
    bins = np.linspace(low, high, 31)
    for label, (index, v) in samples.items():
        if not len(v):
            continue
        if cdf:
            ordered = np.sort(v)
            fraction = np.arange(1, len(ordered) + 1) / len(ordered)
            axes.step(
                np.concatenate([[low], ordered]),
                np.concatenate([[0.0], fraction]),
                where="post",
                color=_colour(index),
                linewidth=1.8,
                label=f"{label} (n={len(v)})",
            )
        else:
            axes.hist(v, bins=bins, histtype="stepfilled", color=_colour(index), alpha=0.15)
            axes.hist(
                v,
                bins=bins,
                histtype="step",
                linewidth=1.8,
                color=_colour(index),
                label=f"{label} (n={len(v)})",
            )
    axes.set_ylabel("fraction of inputs at most x" if cdf else "inputs")
    if cdf:
        axes.set_ylim(0.0, 1.02)
    else:
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # counts of inputs
    axes.grid(True, alpha=0.4)
    axes.legend(loc="lower right" if cdf else "upper right", fontsize="small")


def plot_radius_distribution(
    frames: Mapping[str, pd.DataFrame],
    metric: Metric,
    path: Path,
    cdf: bool = False,
) -> None:
    """Write the distribution of per-input radii of each labelled frame to ``path``.

    Left panel: the ``metric`` radius of every correctly certified row (``correct == 1``), as
    overlaid step histograms on shared bins or, with ``cdf``, empirical CDFs. Right panel (when
    any frame is an anisotropic run): the ratio ``radius_proxy / radius`` of rows with
    ``radius > 0`` (:func:`proxy_ratios`) of those frames; frames whose ratios are all 1
    (fixed sigma, isotropic thetas) are named in the panel instead of drawn. ``path`` must end
    in ``.png`` or ``.pdf``; written atomically.
    """
    image_format = _check_plot_path(path)
    radii = {
        label: (
            index,
            _metric_values(frame, metric)[frame["correct"].to_numpy() == 1]
            if metric.column in frame.columns
            else np.empty(0),
        )
        for index, (label, frame) in enumerate(frames.items())
    }
    every_ratio = {
        label: (index, proxy_ratios(frame))
        for index, (label, frame) in enumerate(frames.items())
        if Metric.proxy.column in frame.columns
    }
    # radii are written rounded toward zero with 7 digits, so isotropic ratios are 1 +- 1e-6
    isotropic = [
        label for label, (_, r) in every_ratio.items() if np.allclose(r, 1.0, rtol=0, atol=1e-5)
    ]
    ratios = {label: item for label, item in every_ratio.items() if label not in isotropic}
    figure = _new_figure(11.0 if ratios else 6.4, 4.2)
    panels = figure.subplots(1, 2 if ratios else 1, squeeze=False)[0]
    kind = "CDF" if cdf else "histogram"
    _distribution(panels[0], radii, cdf)
    panels[0].set_xlabel(f"{_METRIC_AXIS[metric]} of correctly certified inputs")
    panels[0].set_title(f"Certified radius per input ({kind})")
    if ratios:
        _distribution(panels[1], ratios, cdf)
        panels[1].set_title(f"radius_proxy / radius per input ({kind})")
        note = f"\nratio 1 (isotropic), not drawn: {', '.join(isotropic)}" if isotropic else ""
        panels[1].set_xlabel(f"radius_proxy / radius{note}")
    _save(figure, path, image_format)


def plot_theta_maps(
    pictures: Sequence[InputTheta],
    path: Path,
    each_channel: bool = False,
    theta_meaning: str = "theta",
) -> None:
    """Write, for every input (:class:`~ancer_cli.thetas.InputTheta`), its image beside a heat
    map of its theta.

    One row per input: the image (grey for one channel, RGB for three), then theta per pixel
    -- the mean over channels, or with ``each_channel`` one map per channel -- with a colour
    bar in theta units (``theta_meaning`` labels it, e.g. "noise std"). Titles give the
    index, label and theta's min / geometric mean / max. Written atomically to ``path``
    (``.png`` or ``.pdf``).
    """
    image_format = _check_plot_path(path)
    if not pictures:
        raise ResultsError("no inputs to draw; give at least one index")
    channels = max(int(p.image.shape[0]) for p in pictures)
    maps = channels if each_channel and channels > 1 else 1
    columns = 1 + maps
    figure = _new_figure(2.9 * columns + 0.4, 2.7 * len(pictures))
    grid = figure.subplots(len(pictures), columns, squeeze=False)
    for row, picture in zip(grid, pictures, strict=True):
        image = picture.image.detach().cpu().to(torch.float64).numpy()
        theta = np.broadcast_to(picture.theta.detach().cpu().to(torch.float64).numpy(), image.shape)
        shown = image[0] if image.shape[0] == 1 else np.transpose(image, (1, 2, 0))
        row[0].imshow(
            np.clip(shown, 0.0, 1.0),
            cmap="gray" if image.shape[0] == 1 else None,
            vmin=0.0,
            vmax=1.0,
            interpolation="nearest",
        )
        label = "" if picture.label is None else f", label {picture.label}"
        row[0].set_title(f"input {picture.index}{label}", fontsize="medium")
        geomean = float(np.exp(np.log(theta).mean()))
        summary = f"min {theta.min():.3g}, geomean {geomean:.3g}, max {theta.max():.3g}"
        heat = [theta.mean(axis=0)] if maps == 1 else [theta[c] for c in range(maps)]
        low, high = float(theta.min()), float(theta.max())
        if high <= low:  # isotropic: one value; give the colour bar a visible range around it
            low, high = 0.95 * low, 1.05 * high
        for column, values in enumerate(heat, start=1):
            axes = row[column]
            shown_map = axes.imshow(
                values, cmap="viridis", vmin=low, vmax=high, interpolation="nearest"
            )
            name = (
                "theta"
                if maps == 1 and channels == 1
                else ("theta, channel mean" if maps == 1 else f"theta, channel {column - 1}")
            )
            axes.set_title(name if column > 1 else f"{name}\n{summary}", fontsize="medium")
            colorbar = figure.colorbar(shown_map, ax=axes, fraction=0.046, pad=0.04)
            colorbar.set_label(theta_meaning, fontsize="small")
        for axes in row:
            axes.set_xticks([])
            axes.set_yticks([])
    _save(figure, path, image_format)
