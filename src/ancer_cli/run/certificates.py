"""Rows that state certificates -- the eight columns of the results file and ``radius_linf``, then
the fields a kind of run adds (samples and stop for sequential certify, samples and route for
reuse) -- the memory pass over them, and their totals. certify and reuse share these."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ancer_cli.core.choices import Norm
from ancer_cli.core.memory import Claim, MemoryDecision, memory_pass
from ancer_cli.core.noise import Theta
from ancer_cli.core.radii import geometric_mean, linf_half_width_of_radius, min_theta
from ancer_cli.core.smoothing import ABSTAIN
from ancer_cli.data import UNLABELED
from ancer_cli.inputs import SmoothedInputs
from ancer_cli.results import (
    CERTIFICATE_COLUMNS,
    LINF_COLUMN,
    RESULT_COLUMNS,
    format_down,
    format_result_row,
    parse_time,
)
from ancer_cli.run.rows import complete_rows


def row_linf_half_width(theta: Theta, radius: float, norm: Norm | str, dim: int) -> float:
    """The ``radius_linf`` of a row stating ``radius`` for a region of ``theta``: the half-width
    of the largest l-infinity box inside the region of gap ``radius / min(theta)``, computed from
    the radius *as the row writes it* (rounded toward zero), so that anyone can recompute the
    column from the file and the thetas (:func:`~ancer_cli.core.radii.linf_half_width_of_radius`,
    which rounds down; written rounded toward zero again)."""
    return linf_half_width_of_radius(theta, float(format_down(radius)), norm, dim)


@dataclass(frozen=True)
class CertificateRow:
    """One line of a results file: the eight columns, ``radius_linf`` (``None`` in a file
    written without it), then ``extra`` fields (as text). ``text`` is the line as read back from
    a file, written verbatim again unless the row changes."""

    idx: int
    label: int
    predict: int
    radius: float
    radius_proxy: float
    correct: int
    min_sigma: float
    seconds: float
    radius_linf: float | None = None
    extra: tuple[str, ...] = ()
    text: str | None = field(default=None, compare=False, repr=False)

    def line(self) -> str:
        if self.text is not None:
            return self.text
        return format_result_row(
            self.idx, self.label, self.predict, self.radius, self.radius_proxy, self.correct,
            self.min_sigma, self.seconds, self.extra, radius_linf=self.radius_linf,
        )  # fmt: skip

    @staticmethod
    def parse(line: str, columns: Sequence[str] = CERTIFICATE_COLUMNS) -> CertificateRow:
        """A row from a line of a results file with header ``columns``: certify's (this module
        wrote it), or the eight columns without ``radius_linf`` and what followed them (a file
        of an earlier ancer)."""
        fields = line.rstrip("\n").split("\t")
        linf = LINF_COLUMN in columns
        return CertificateRow(
            idx=int(fields[0]), label=int(fields[1]), predict=int(fields[2]),
            radius=float(fields[3]), radius_proxy=float(fields[4]), correct=int(fields[5]),
            min_sigma=float(fields[6]), seconds=parse_time(fields[7]),
            radius_linf=float(fields[len(RESULT_COLUMNS)]) if linf else None,
            extra=tuple(fields[len(CERTIFICATE_COLUMNS if linf else RESULT_COLUMNS) :]),
            text=line,
        )  # fmt: skip

    @property
    def samples(self) -> int | None:
        """The samples a row's certificate used, where the run records them (the first extra
        field of sequential certify and of reuse)."""
        return int(self.extra[0]) if self.extra else None


def read_certificate_rows(path: Path) -> list[CertificateRow]:
    """The complete rows of a results file (or its ``.pre-memory`` file), each parsed by the
    file's own header (with or without ``radius_linf``)."""
    with open(path) as handle:
        columns = tuple(handle.readline().rstrip("\n").split("\t"))
    return [CertificateRow.parse(line, columns) for _, line in complete_rows(path, columns)]


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


def memory_decisions(
    rows: Sequence[CertificateRow],
    inputs: SmoothedInputs,
    device: torch.device,
    progress: Callable[[int, int], None] | None = None,
) -> list[MemoryDecision]:
    """The memory pass's decision for each row of certificates before the pass (index order):
    the region each row ends with, and whose theta it has (:class:`~ancer_cli.core.memory.
    MemoryDecision`). Deterministic: the same rows and thetas give the same decisions, so a
    reader of a finished run recovers the theta a reassigned row was given from its ``.pre-memory`` rows.

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
    return memory_pass(
        claims, lambda i: inputs.data.dataset[i][0], thetas, inputs.norm, device, progress=progress
    )


def apply_memory(
    rows: Sequence[CertificateRow],
    inputs: SmoothedInputs,
    device: torch.device,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[CertificateRow], MemorySummary]:
    """Run the memory pass over certified rows (index order) and return the final rows.

    A row the pass does not change is kept verbatim; a changed one keeps its ``extra`` fields,
    and its ``radius_linf`` is the box of the region the pass left it (for a reassigned row,
    with the theta of the region it was reassigned to). See :func:`memory_decisions`.
    """
    thetas = inputs.thetas
    decisions = memory_decisions(rows, inputs, device, progress)
    final = []
    for decision, row in zip(decisions, rows, strict=True):
        if not (decision.reassigned or decision.shrunk):
            final.append(row)
            continue
        theta = thetas(decision.theta_idx)
        abstained = decision.predict == ABSTAIN
        gap = 0.0 if abstained else decision.gap
        radius = min_theta(theta) * gap
        linf = None
        if row.radius_linf is not None:
            dim = inputs.data.dataset[row.idx][0].numel()
            linf = row_linf_half_width(theta, radius, inputs.norm, dim)
        final.append(
            replace(
                row,
                predict=decision.predict,
                radius=radius,
                radius_proxy=geometric_mean(theta) * gap,
                correct=int(not abstained and decision.predict == row.label),
                min_sigma=min_theta(theta),
                radius_linf=linf,
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
