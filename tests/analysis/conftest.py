"""Fixtures shared by these tests."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.analysis.frames import (
    frame_of,
)


@pytest.fixture
def four() -> pd.DataFrame:
    """Two certified-correct inputs (radii 0.5, 1.0), one wrong (0.8), one abstention."""
    return frame_of(
        [(3, 3, 0.5, 1), (1, 1, 1.0, 1), (2, 7, 0.8, 0), (5, -1, 0.0, 0)],
        proxy=[0.9, 1.5, 1.2, 0.0],
    )
