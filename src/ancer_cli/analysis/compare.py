"""Several results files side by side: read, check and summarise each (what ``ancer accuracy``
reports)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ancer_cli.analysis.metrics import (
    AccuracySummary,
    Confidence,
    Metric,
    check_results,
    confidence_from_record,
    summarize,
)
from ancer_cli.artifacts import read_results, read_results_record


@dataclass(frozen=True)
class Comparison:
    """The frames of the files, by label, and the summary of each."""

    frames: dict[str, pd.DataFrame]
    summaries: dict[str, AccuracySummary]


def compare(
    paths: Sequence[Path],
    labels: Sequence[str],
    radii: Sequence[float],
    metric: Metric = Metric.radius,
    *,
    also: Sequence[Metric] = (),
    rho: float | None = None,
    alpha: float | None = None,
) -> Comparison:
    """Read each results file, check it has the columns of ``metric`` (and of ``also``), and
    summarise it at ``radii``. With ``rho``, the summaries include the high-probability bounds
    (alpha from ``alpha``, else each file's sidecar, else the default)."""
    frames: dict[str, pd.DataFrame] = {}
    confidences: dict[str, Confidence | None] = {}
    for label, path in zip(labels, paths, strict=True):
        frame = read_results(path)
        for needed in (metric, *also):
            check_results(frame, needed, path)
        frames[label] = frame
        confidences[label] = (
            confidence_from_record(read_results_record(path), rho, alpha)
            if rho is not None
            else None
        )
    summaries = {
        label: summarize(frame, radii, metric, confidences[label])
        for label, frame in frames.items()
    }
    return Comparison(frames, summaries)
