"""Rows that state certificates -- the eight columns of the results file, then the fields a kind
of run adds (samples and stop for sequential certify, samples and route for reuse) -- the memory
pass over them, and their totals. certify and reuse share these."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ancer_cli.core.memory import Claim, memory_pass
from ancer_cli.core.radii import geometric_mean, min_theta
from ancer_cli.core.smoothing import ABSTAIN
from ancer_cli.data import UNLABELED
from ancer_cli.inputs import SmoothedInputs
from ancer_cli.results import RESULT_COLUMNS, format_result_row, parse_time


@dataclass(frozen=True)
class CertificateRow:
    """One line of a results file: the eight columns, then ``extra`` fields (as text). ``text``
    is the line as read back from a file, written verbatim again unless the row changes."""

    idx: int
    label: int
    predict: int
    radius: float
    radius_proxy: float
    correct: int
    min_sigma: float
    seconds: float
    extra: tuple[str, ...] = ()
    text: str | None = field(default=None, compare=False, repr=False)

    def line(self) -> str:
        if self.text is not None:
            return self.text
        return format_result_row(
            self.idx, self.label, self.predict, self.radius, self.radius_proxy, self.correct,
            self.min_sigma, self.seconds, self.extra,
        )  # fmt: skip

    @staticmethod
    def parse(line: str) -> CertificateRow:
        """A row from a line this module wrote."""
        fields = line.rstrip("\n").split("\t")
        return CertificateRow(
            idx=int(fields[0]), label=int(fields[1]), predict=int(fields[2]),
            radius=float(fields[3]), radius_proxy=float(fields[4]), correct=int(fields[5]),
            min_sigma=float(fields[6]), seconds=parse_time(fields[7]),
            extra=tuple(fields[len(RESULT_COLUMNS) :]), text=line,
        )  # fmt: skip

    @property
    def samples(self) -> int | None:
        """The samples a row's certificate used, where the run records them (the first extra
        field of sequential certify and of reuse)."""
        return int(self.extra[0]) if self.extra else None


@dataclass(frozen=True)
class MemorySummary:
    """What the memory pass changed: inputs inside an earlier region, inputs whose gap shrank."""

    reassigned: list[int]
    shrunk: list[int]
    changed_predictions: list[int]

    def record(self, before_pass: Path) -> dict[str, Any]:
        """The sidecar's ``memory``."""
        return {
            "enabled": True,
            "before_pass": str(before_pass),
            "reassigned": len(self.reassigned),
            "shrunk": len(self.shrunk),
            "changed_predictions": len(self.changed_predictions),
            "reassigned_indices": self.reassigned,
            "shrunk_indices": self.shrunk,
        }


def apply_memory(
    rows: Sequence[CertificateRow],
    inputs: SmoothedInputs,
    device: torch.device,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[CertificateRow], MemorySummary]:
    """Run the memory pass over certified rows (index order) and return the final rows.

    A row the pass does not change is kept verbatim; a changed one keeps its ``extra`` fields.
    Each row's gap is the one its written radius certifies, ``radius / min(theta)`` (the radius
    was rounded toward zero, so this never exceeds the certified gap), as it is for rows a
    resumed run reads back from the file: an uninterrupted and a resumed run end with the same
    rows.
    """
    thetas = inputs.thetas
    claims = [
        Claim(
            idx=row.idx,
            predict=row.predict,
            gap=0.0 if row.predict == ABSTAIN else row.radius / min_theta(thetas(row.idx)),
        )
        for row in rows
    ]
    decisions = memory_pass(
        claims, lambda i: inputs.data.dataset[i][0], thetas, inputs.norm, device, progress=progress
    )
    final = []
    for decision, row in zip(decisions, rows, strict=True):
        if not (decision.reassigned or decision.shrunk):
            final.append(row)
            continue
        theta = thetas(decision.theta_idx)
        abstained = decision.predict == ABSTAIN
        gap = 0.0 if abstained else decision.gap
        final.append(
            replace(
                row,
                predict=decision.predict,
                radius=min_theta(theta) * gap,
                radius_proxy=geometric_mean(theta) * gap,
                correct=int(not abstained and decision.predict == row.label),
                min_sigma=min_theta(theta),
                text=None,
            )
        )
    summary = MemorySummary(
        reassigned=[d.idx for d in decisions if d.reassigned],
        shrunk=[d.idx for d in decisions if d.shrunk],
        changed_predictions=[
            d.idx for d, row in zip(decisions, rows, strict=True) if d.predict != row.predict
        ],
    )
    return final, summary


@dataclass(frozen=True)
class CertifySummary:
    """Totals of rows of certificates; ``labeled`` counts the rows with a label (an unlabeled
    image folder has none: then accuracy and ``mean_radius``, the average certified radius, are
    NaN)."""

    certified: int
    resumed: int
    correct: int
    abstained: int
    mean_radius: float
    seconds: float
    memory: MemorySummary | None
    labeled: int = 0

    @property
    def accuracy(self) -> float:
        """Certified accuracy at radius 0 of the labeled rows (NaN without labels)."""
        return self.correct / self.labeled if self.labeled else math.nan

    @staticmethod
    def of(
        rows: Sequence[CertificateRow],
        resumed: int,
        seconds: float,
        memory: MemorySummary | None = None,
    ) -> CertifySummary:
        labeled = [row for row in rows if row.label != UNLABELED]
        return CertifySummary(
            certified=len(rows),
            resumed=resumed,
            correct=sum(row.correct for row in rows),
            abstained=sum(row.predict == ABSTAIN for row in rows),
            mean_radius=float(np.mean([row.radius * row.correct for row in labeled]))
            if labeled
            else math.nan,
            seconds=seconds,
            memory=memory,
            labeled=len(labeled),
        )

    def record(self) -> dict[str, Any]:
        """The sidecar's ``totals``."""
        return {
            "inputs": self.certified,
            "resumed_rows": self.resumed,
            "correct": self.correct,
            "abstained": self.abstained,
            "labeled": self.labeled,
            "certified_accuracy_at_0": finite(self.accuracy),
            "average_certified_radius": finite(self.mean_radius),
            "seconds_this_run": self.seconds,
        }


def finite(value: float) -> float | None:
    """``value``, or ``None`` (JSON null) where it is NaN: a quantity without labels."""
    return None if math.isnan(value) else value
