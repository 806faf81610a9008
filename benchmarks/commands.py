"""What the accuracy benchmarks share: ``ancer`` commands run in-process, and which of their
result files are finished (so that ``--keep`` reruns only what is missing)."""

from __future__ import annotations

import sys
from pathlib import Path

from ancer_cli.cli import app
from ancer_cli.results import read_results, read_results_record


def ancer(*words: object) -> None:
    """``ancer WORDS...`` in this process (no start-up per run); raises on failure."""
    print("$ ancer " + " ".join(map(str, words)), file=sys.stderr, flush=True)
    code = app([str(word) for word in words], standalone_mode=False)
    if code:
        raise SystemExit(f"ancer {words[0]} failed (exit code {code})")


def finished(path: Path, inputs: int, n: int) -> bool:
    """Whether ``path`` is a finished certify run of ``inputs`` rows at ``N = n``."""
    record = read_results_record(path) if path.exists() else None
    return (
        record is not None
        and "totals" in record
        and record["arguments"].get("N") == n
        and len(read_results(path)) == inputs
    )


def extendable(path: Path, inputs: int, n: int) -> bool:
    """Whether ``path`` is a certify run at ``N = n`` that ``--resume`` with ``--max inputs``
    continues: an interrupted one, or a finished one of fewer rows (the rows it holds are kept)."""
    record = read_results_record(path) if path.exists() else None
    if record is None:
        return False
    recorded = record["arguments"].get("max")
    return (
        record["arguments"].get("N") == n
        and isinstance(recorded, int)
        and (recorded < inputs or (recorded == inputs and record.get("complete") is not True))
    )
