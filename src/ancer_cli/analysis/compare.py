"""Several results files side by side: read, check and summarise each (what ``ancer accuracy``
reports)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ancer_cli.analysis.metrics import (
    AccuracySummary,
    Confidence,
    check_results,
    confidence_from_record,
    summarize,
)
from ancer_cli.errors import ResultsError
from ancer_cli.results import RowsState, read_results, read_results_record, rows_state
from ancer_cli.settings import Metric


@dataclass(frozen=True)
class Comparison:
    """The frames of the files, by label, the summary of each and where it came from."""

    frames: dict[str, pd.DataFrame]
    summaries: dict[str, AccuracySummary]
    paths: dict[str, Path] = field(default_factory=dict)
    states: dict[str, RowsState] = field(default_factory=dict)
    """whether each file holds the rows its run wrote (:func:`~ancer_cli.results.rows_state`)"""

    def notes(self) -> list[str]:
        """One line per file whose numbers need a word: predictions (no radius), rows without
        labels."""
        notes = []
        for name, state in self.states.items():
            if state is RowsState.edited:
                notes.append(
                    f"warning: {name} is not the file its run wrote (its rows differ from the "
                    "digest its sidecar recorded: edited, truncated or another run's): its "
                    "numbers are not that run's certificates"
                )
            elif state is RowsState.unfinished:
                notes.append(f"warning: {name} is an unfinished run: its rows are not all there")
        for name, summary in self.summaries.items():
            if not summary.has_radius:
                notes.append(
                    f"{name}: predictions (no radius): its accuracy is PREDICT's, and "
                    "certified-accuracy and radius rows do not apply (-)"
                )
            if summary.labeled == 0:
                notes.append(
                    f"{name}: no labels (every label is -1): accuracy is not applicable; "
                    "reporting predictions and abstentions only"
                )
            elif summary.labeled < summary.inputs:
                notes.append(
                    f"{name}: {summary.inputs - summary.labeled} of {summary.inputs} rows have "
                    f"no label (-1); accuracies are over the {summary.labeled} labeled rows"
                )
        return notes

    def check_drawable(self, option: str) -> None:
        """Raise :class:`ResultsError` for a file that has nothing to draw (predictions, or no
        labels), naming it and the ``option`` that would draw it."""
        for name, summary in self.summaries.items():
            where = self.paths.get(name, name)
            if not summary.has_radius:
                raise ResultsError(
                    f"{where} holds predictions (idx label predict correct time), without "
                    f"radii to draw; leave it out of {option}"
                )
            if summary.labeled == 0:
                raise ResultsError(
                    f"{where} has no labels (every label is -1), so it has no certified "
                    f"accuracy or correctly certified radii to draw; leave it out of {option}"
                )


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
    states: dict[str, RowsState] = {}
    for label, path in zip(labels, paths, strict=True):
        frame = read_results(path)
        for needed in (metric, *also):
            check_results(frame, needed, path)
        frames[label] = frame
        record = read_results_record(path)
        states[label] = rows_state(path, record)
        if rho is not None and states[label] in (RowsState.edited, RowsState.unfinished):
            raise ResultsError(
                f"{path} is not the finished file its run wrote ({states[label].value}): bounds "
                "that hold with high probability over certify's sampling need that run's rows"
            )
        confidences[label] = (
            confidence_from_record(record, rho, alpha) if rho is not None else None
        )
    summaries = {
        label: summarize(frame, radii, metric, confidences[label])
        for label, frame in frames.items()
    }
    return Comparison(
        frames, summaries, dict(zip(labels, map(Path, paths), strict=True)), states
    )
