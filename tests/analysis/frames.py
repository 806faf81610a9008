"""Shared helpers of these tests."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest

COHEN = Path("/work/shared/reference/cohen2019")


COHEN_FILES = sorted(COHEN.glob("*.tsv"))


PUBLISHED_RADII = (0.25, 0.5, 0.75, 1.0)


needs_cohen = pytest.mark.skipif(not COHEN_FILES, reason="Cohen et al.'s reference files absent")


def frame_of(
    rows: list[tuple[int, int, float, int]], proxy: list[float] | None = None
) -> pd.DataFrame:
    """A results frame from ``(label, predict, radius, correct)`` rows."""
    frame = pd.DataFrame(rows, columns=["label", "predict", "radius", "correct"])
    frame.insert(0, "idx", range(len(rows)))
    if proxy is not None:
        frame["radius_proxy"] = proxy
    return frame


def published(path: Path) -> tuple[int, list[tuple[float, int]]]:
    """Number of rows and ``(radius, correct)`` pairs, parsed with the csv module only."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    return len(rows), [(float(row["radius"]), int(row["correct"])) for row in rows]
