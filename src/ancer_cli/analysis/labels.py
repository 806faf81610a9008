"""Column names for results files shown side by side (no pandas: the command line checks its
labels before it loads the tables)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


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
