"""Certified accuracy, average certified radius, abstention and Cohen et al.'s high-probability
bounds of one results frame.

Certified accuracy at radius R (Cohen et al. 2019, Sec. 4) is the fraction of *all* certified
inputs that are classified correctly with a certified radius of at least R; abstentions count as
wrong. The average certified radius (ACR) is the mean over all inputs of ``radius * correct``.
``metric`` chooses the radius column: ``radius`` (largest isotropic ball in the certified region),
``proxy`` (``radius_proxy``, the isotropic ball of the same volume; ANCER's comparison metric) or
``linf`` (``radius_linf``, the half-width of the largest l-infinity box in the region).

Certified accuracy computed this way is Cohen et al.'s *approximate* certified accuracy: each
row's certificate is wrong with probability up to ``alpha``. :func:`false_certificate_bound` and
:func:`high_probability_curve` turn it into a lower bound that holds with probability
``1 - rho`` (see :func:`high_probability_curve` for the formula).

Rows with label -1 come from images without labels (an unlabeled image folder): accuracies and
radii of correct predictions are measured over the labeled rows only (NaN when there are none);
abstention rate, counts and times over all rows.

Frames come from :func:`ancer_cli.results.read_results`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ancer_cli.core.choices import DEFAULT_ALPHA
from ancer_cli.core.smoothing import ABSTAIN
from ancer_cli.data import UNLABELED
from ancer_cli.errors import ResultsError
from ancer_cli.results import is_prediction_frame
from ancer_cli.settings import DEFAULT_RADII, DEFAULT_RHO, Metric


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

    ``certified_accuracy`` maps each radius to a fraction in [0, 1] of the ``labeled`` rows
    (NaN without any); ``median_time`` is in seconds, ``None`` when the file has no ``time``
    column; ``high_probability`` is present when a :class:`Confidence` was given;
    ``mean_samples``/``median_samples`` (selection and estimation samples per input) when the
    file comes from sequential certification.
    """

    inputs: int
    labeled: int
    certified_accuracy: dict[float, float]
    average_certified_radius: float
    clean_accuracy: float
    average_proxy_radius: float | None
    abstention_rate: float
    median_time: float | None
    high_probability: HighProbabilityAccuracy | None = None
    has_radius: bool = True  # False for PREDICT's files: no certified accuracy, no radii
    mean_samples: float | None = None
    median_samples: float | None = None


def check_results(frame: pd.DataFrame, metric: Metric, source: str | Path) -> None:
    """Raise :class:`ResultsError` naming ``source`` if ``frame`` cannot be summarized with
    ``metric``: no rows, or no column for the metric (Cohen et al.'s files have no proxy). A
    file of predictions has no radius at all and needs none."""
    if metric.column not in frame.columns and not is_prediction_frame(frame):
        why = (
            " (ancer certify writes it after the eight columns; files of earlier versions "
            "and of other tools have none)"
            if metric is Metric.linf
            else ""
        )
        raise ResultsError(
            f"results file {source} has no {metric.column} column, which metric "
            f"'{metric.value}' reads{why} (columns: {' '.join(map(str, frame.columns))}); "
            f"use metric 'radius' for this file"
        )
    if len(frame) == 0:
        raise ResultsError(f"results file {source} has a header but no rows; nothing to summarize")


def labeled_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows that carry a label (label -1 marks an image without one)."""
    return frame[frame["label"].to_numpy() != UNLABELED]


def metric_values(frame: pd.DataFrame, metric: Metric) -> np.ndarray:
    """The metric's column as floats, shape ``(len(frame),)``."""
    if metric.column not in frame.columns:
        raise ResultsError(f"results have no {metric.column} column (metric '{metric.value}')")
    return frame[metric.column].to_numpy(dtype=float)


def certified_radii(frame: pd.DataFrame, metric: Metric) -> np.ndarray:
    """The metric's radius of every row, with 0 for wrong predictions and abstentions."""
    return np.where(frame["correct"].to_numpy() == 1, metric_values(frame, metric), 0.0)


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
    certified = np.sort(metric_values(frame, metric)[correct])
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
    return float(certified_radii(frame, metric).mean())


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

    With ``confidence``, also the high-probability lower bounds at the same radii. A frame of
    predictions (no radius column) gets its accuracy (the fraction of labeled rows predicted
    correctly), abstention rate and times only.
    """
    grid = sorted({float(radius) for radius in radii})
    sampled = "samples" in frame.columns and len(frame) > 0  # sequential certification
    scored = labeled_rows(frame)
    if is_prediction_frame(frame):  # PREDICT's output: accuracy and abstentions, no radii
        return AccuracySummary(
            inputs=len(frame),
            labeled=len(scored),
            certified_accuracy={},
            average_certified_radius=math.nan,
            clean_accuracy=float(scored["correct"].mean()) if len(scored) else math.nan,
            average_proxy_radius=None,
            abstention_rate=abstention_rate(frame),
            median_time=median_time(frame),
            has_radius=False,
        )
    curve = certified_accuracy_curve(scored, grid, metric)
    high_probability = None
    if confidence is not None:
        # reassigned rows may be among the unlabeled ones: at most every scored row is
        confidence = replace(confidence, reassigned=min(confidence.reassigned, len(scored)))
        lower = high_probability_curve(scored, grid, metric, confidence)
        high_probability = HighProbabilityAccuracy(
            alpha=confidence.alpha,
            rho=confidence.rho,
            reassigned=confidence.reassigned,
            false_certificates=false_certificate_bound(
                len(scored), confidence.alpha, confidence.rho, confidence.reassigned
            ),
            certified_accuracy={r: float(v) for r, v in zip(grid, lower, strict=True)},
        )
    return AccuracySummary(
        inputs=len(frame),
        labeled=len(scored),
        certified_accuracy={
            radius: float(value) for radius, value in zip(grid, curve, strict=True)
        },
        average_certified_radius=average_certified_radius(scored, metric),
        clean_accuracy=clean_accuracy(scored, metric),
        average_proxy_radius=(
            average_certified_radius(scored, Metric.proxy)
            if metric is Metric.radius and Metric.proxy.column in frame.columns
            else None
        ),
        abstention_rate=abstention_rate(frame),
        median_time=median_time(frame),
        high_probability=high_probability,
        mean_samples=float(frame["samples"].mean()) if sampled else None,
        median_samples=float(frame["samples"].median()) if sampled else None,
    )


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
