"""Results files: the TSV of certify and predict (ours, the original ANCER scripts', Cohen et
al.'s), its JSON sidecar, and the loop that writes rows -- resumable after a crash and sharded
across processes, merged in index order at the end."""

from __future__ import annotations

import decimal
import enum
import hashlib
import math
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ancer_cli.artifacts import (
    read_json,
)
from ancer_cli.errors import ResultsError, first_line

RESULT_COLUMNS = (
    "idx",
    "label",
    "predict",
    "radius",
    "radius_proxy",
    "correct",
    "min_sigma",
    "time",
)
LINF_COLUMN = "radius_linf"
"""The half-width of the largest l-infinity box inside a certified region
(:func:`~ancer_cli.core.radii.linf_half_width`): the ninth column certify writes."""
CERTIFICATE_COLUMNS = (*RESULT_COLUMNS, LINF_COLUMN)
"""The columns of ``ancer certify``'s results: the eight, then ``radius_linf``; the columns of a
kind of run (sequential: ``samples stop``; reuse: ``samples path``) follow these nine."""
REQUIRED_RESULT_COLUMNS = ("idx", "label", "predict", "radius", "correct")
SEQUENTIAL_COLUMNS = ("samples", "stop")
"""Columns after the nine in sequential certification: samples used (selection and estimation)
and why sampling stopped."""
PREDICTION_COLUMNS = ("idx", "label", "predict", "correct", "time")
"""The columns of ``ancer predict``'s output, and of Cohen et al.'s ``predict.py``."""
ATTACK_COLUMNS = (
    "idx", "label", "eps", "predict", "correct", "norm_l2", "norm_l1", "norm_linf", "time",
)  # fmt: skip
"""The columns of ``ancer attack``'s output: one row per input and eps, in index then eps order."""
AUDIT_COLUMNS = ("idx", "radius", "violated", "distance", "votes")
"""The columns of ``ancer audit``'s output: one row per row of the results file audited."""
RADIUS_DIGITS = 7


# ---------------------------------------------------------------------------------------------
# the TSV: formatting and reading rows


def format_down(value: float, digits: int = RADIUS_DIGITS) -> str:
    """``value`` with ``digits`` significant digits, rounded toward zero (never up)."""
    if value == 0 or not math.isfinite(value):
        return "0.0" if value == 0 else repr(value)
    context = decimal.Context(prec=digits, rounding=decimal.ROUND_DOWN)
    text = format(context.create_decimal(value).normalize(context), "f")
    return text if "." in text else text + ".0"


def format_nearest(value: float, digits: int = RADIUS_DIGITS) -> str:
    """``value`` with ``digits`` significant digits, rounded to nearest (for non-radii)."""
    text = f"{value:.{digits}g}"
    return text if any(c in text for c in ".einf") else text + ".0"


def format_result_row(
    idx: int,
    label: int,
    predict: int,
    radius: float,
    radius_proxy: float,
    correct: int,
    min_sigma: float,
    seconds: float,
    extra: Sequence[str] = (),
    *,
    radius_linf: float | None = None,
) -> str:
    """One line of the results TSV (with trailing newline), radii rounded toward zero; then
    ``radius_linf`` (rounded toward zero; left out when ``None``, as in files without the
    column) and ``extra`` fields (e.g. :data:`SEQUENTIAL_COLUMNS`)."""
    fields = [
        str(idx),
        str(label),
        str(predict),
        format_down(radius),
        format_down(radius_proxy),
        str(correct),
        format_nearest(min_sigma),
        f"{seconds:.4f}",
        *([format_down(radius_linf)] if radius_linf is not None else []),
        *extra,
    ]
    return "\t".join(fields) + "\n"


def format_prediction_row(idx: int, label: int, predict: int, correct: int, seconds: float) -> str:
    """One line of a predictions TSV (``PREDICTION_COLUMNS``), with trailing newline."""
    return f"{idx}\t{label}\t{predict}\t{correct}\t{seconds:.4f}\n"


def format_attack_row(
    idx: int,
    label: int,
    eps: float,
    predict: int,
    correct: int,
    norms: Sequence[float],
    seconds: float,
) -> str:
    """One line of an attack TSV (:data:`ATTACK_COLUMNS`, with trailing newline): ``eps`` exactly
    (``repr``: it is part of the row's key), the perturbation's l2, l1 and l-infinity ``norms``
    rounded toward zero (never above the eps they are within)."""
    fields = [str(idx), str(label), repr(float(eps)), str(predict), str(correct)]
    return "\t".join([*fields, *map(format_down, norms), f"{seconds:.4f}"]) + "\n"


_CLOCK = re.compile(r"^(?:(\d+) days?, )?(\d+):(\d{1,2}):(\d{1,2}(?:\.\d*)?)$")


def parse_time(text: str) -> float:
    """Seconds from ``12.5`` or the ``H:MM:SS.ffffff`` of Python's ``timedelta`` (NaN if empty)."""
    text = str(text).strip()
    if text in ("", "nan", "NaN"):
        return math.nan
    match = _CLOCK.match(text)
    if match:
        days, hours, minutes, seconds = match.groups()
        return (int(days or 0) * 24 + int(hours)) * 3600 + int(minutes) * 60 + float(seconds)
    return float(text)


def is_prediction_frame(frame: pd.DataFrame) -> bool:
    """Whether a frame read by :func:`read_results` holds PREDICT's outputs (no radius)."""
    return "radius" not in frame.columns


def read_results(path: Path) -> pd.DataFrame:
    """Read a results file: this tool's, the original ANCER scripts' or Cohen et al.'s.

    Requires the columns ``idx label predict radius correct``; ``radius_proxy``, ``min_sigma``,
    ``radius_linf`` and ``time`` are optional. A predictions file (``ancer predict``'s or Cohen
    et al.'s ``predict.py``'s: ``idx label predict correct time``, no radius) is read too,
    without radius columns (:func:`is_prediction_frame`). ``time`` becomes seconds (float). A
    header-only file gives an empty frame. Raises :class:`ResultsError` with the file name and
    the problem for anything malformed (line numbers count the header as line 1); an attack
    file (:func:`is_attack_frame`) is refused, pointing at ``ancer accuracy --attack``.
    """
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"results file {path} does not exist")
    if path.is_dir():
        raise ResultsError(f"results file {path} is a directory; give the .csv/.tsv file")
    frame = _read_tab_separated(path)
    frame.columns = [str(column).strip() for column in frame.columns]
    if is_attack_frame(frame):
        raise ResultsError(
            f"{path} is the output of ancer attack (its rows are per input and eps), not "
            "certificates: compare it with the results it attacked, ancer accuracy RESULTS "
            f"--attack {path}"
        )
    predictions = "radius" not in frame.columns and set(PREDICTION_COLUMNS) <= set(frame.columns)
    required = PREDICTION_COLUMNS if predictions else REQUIRED_RESULT_COLUMNS
    missing = [column for column in required if column not in frame.columns]
    if missing:
        raise ResultsError(
            f"results file {path} lacks column(s) {', '.join(missing)}; expected tab-separated "
            f"columns {' '.join(REQUIRED_RESULT_COLUMNS)}, or {' '.join(PREDICTION_COLUMNS)} "
            f"for predictions (got {' '.join(frame.columns)})"
        )
    integer = ("idx", "label", "predict", "correct") + (
        ("samples",) if "samples" in frame.columns else ()
    )
    real = tuple(
        c for c in ("radius", "radius_proxy", "min_sigma", LINF_COLUMN) if c in frame.columns
    )
    for column in integer + real:
        values = pd.to_numeric(frame[column].str.strip(), errors="coerce")
        # "inf" parses as a number; no column of a results file may hold one.
        bad = values.isna() | values.isin([math.inf, -math.inf])
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise ResultsError(
                f"results file {path}, line {row + 2}, column {column}: "
                f"expected a finite number, got {frame[column].iloc[row]!r}"
            )
        if column in integer:
            if (values != values.round()).any():
                row = int((values != values.round()).to_numpy().nonzero()[0][0])
                raise ResultsError(
                    f"results file {path}, line {row + 2}, column {column}: "
                    f"expected an integer, got {frame[column].iloc[row]!r}"
                )
            values = values.astype("int64")
        frame[column] = values
    if not frame["correct"].isin([0, 1]).all():
        row = int((~frame["correct"].isin([0, 1])).to_numpy().nonzero()[0][0])
        raise ResultsError(
            f"results file {path}, line {row + 2}, column correct: "
            f"expected 0 or 1, got {int(frame['correct'].iloc[row])}"
        )
    if "time" in frame.columns:
        seconds = []
        for row, text in enumerate(frame["time"]):
            try:
                seconds.append(parse_time(text))
            except ValueError:
                raise ResultsError(
                    f"results file {path}, line {row + 2}, column time: expected seconds "
                    f"or H:MM:SS.ffffff, got {text!r}"
                ) from None
        frame["time"] = pd.Series(seconds, index=frame.index, dtype=float)
    return frame


def is_attack_frame(frame: pd.DataFrame) -> bool:
    """Whether a tab-separated file's columns are those of ``ancer attack``'s output."""
    return tuple(frame.columns) == ATTACK_COLUMNS


def read_attack_results(path: Path) -> pd.DataFrame:
    """Read an ``ancer attack`` output (:data:`ATTACK_COLUMNS`): integer ``idx label predict
    correct``, float ``eps``, norms and ``time``. Raises :class:`ResultsError` naming the file,
    line and column for anything malformed."""
    path = Path(path)
    if not path.is_file():
        raise ResultsError(f"attack file {path} does not exist (or is not a file)")
    frame = _read_tab_separated(path)
    frame.columns = [str(column).strip() for column in frame.columns]
    if tuple(frame.columns) != ATTACK_COLUMNS:
        raise ResultsError(
            f"{path} is not an ancer attack file: expected the columns "
            f"{' '.join(ATTACK_COLUMNS)}, got {' '.join(frame.columns)}"
        )
    for column in ATTACK_COLUMNS:
        values = pd.to_numeric(frame[column].str.strip(), errors="coerce")
        bad = values.isna() | values.isin([math.inf, -math.inf])
        if column in ("idx", "label", "predict", "correct"):
            bad |= values != values.round()
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise ResultsError(
                f"attack file {path}, line {row + 2}, column {column}: expected a finite "
                f"{'integer' if column in ('idx', 'label', 'predict', 'correct') else 'number'}, "
                f"got {frame[column].iloc[row]!r}"
            )
        if column in ("idx", "label", "predict", "correct"):
            values = values.astype("int64")
        frame[column] = values
    if not frame["correct"].isin([0, 1]).all():
        row = int((~frame["correct"].isin([0, 1])).to_numpy().nonzero()[0][0])
        raise ResultsError(f"attack file {path}, line {row + 2}, column correct: expected 0 or 1")
    return frame


def _read_tab_separated(path: Path) -> pd.DataFrame:
    """Every field of a tab-separated file with a header, as text (no NA conversion)."""
    options: dict[str, Any] = {"sep": "\t", "dtype": str, "keep_default_na": False}
    try:
        frame = pd.read_csv(path, **options)
        if not isinstance(frame.index, pd.RangeIndex):
            # Data lines have more fields than the header. pandas would silently take the first
            # field as the index and shift every column; accept only a trailing tab.
            if not (frame.iloc[:, -1] == "").all():
                raise ResultsError(
                    f"results file {path}: data lines have more fields than the header "
                    f"({len(frame.columns)} columns: {' '.join(map(str, frame.columns))})"
                )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", pd.errors.ParserWarning)
                frame = pd.read_csv(path, index_col=False, **options)
    except pd.errors.EmptyDataError as error:
        raise ResultsError(
            f"results file {path} is empty; expected a tab-separated header"
        ) from error
    except (OSError, UnicodeDecodeError, pd.errors.ParserError) as error:
        first = first_line(error)
        raise ResultsError(
            f"results file {path} cannot be parsed as tab-separated text: {first}"
        ) from error
    return frame


def results_sidecar_path(results: Path) -> Path:
    """The JSON sidecar that records a certify run: ``results.csv`` -> ``results.csv.json``."""
    return Path(str(results) + ".json")


def read_results_record(results: Path) -> dict[str, Any] | None:
    """The JSON sidecar of a results file (:func:`results_sidecar_path`), or ``None`` when it
    has none (Cohen et al.'s and the original scripts' files)."""
    sidecar = results_sidecar_path(results)
    if not sidecar.is_file():
        return None
    return read_json(sidecar, "run record")


# ---------------------------------------------------------------------------------------------
# the digest of a finished run's rows

RESULTS, PRE_MEMORY = "results", "pre_memory"
"""The keys of a sidecar's ``rows_sha256``: the results file, and the rows before the memory
pass (``results.csv.pre-memory``) where a memory pass ran."""


def rows_digest(path: Path) -> str:
    """SHA-256 of a results file's bytes (header and rows): the values of ``rows_sha256``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class RowsState(str, enum.Enum):
    """Whether a results file holds the rows its run wrote."""

    verified = "verified"
    """its sidecar's digest matches its bytes"""
    edited = "edited"
    """a digest is recorded and does not match: edited, truncated or another run's file"""
    unfinished = "unfinished"
    """its run has not finished: no digest yet"""
    undigested = "undigested"
    """its sidecar records no digest (an older ancer wrote it)"""
    foreign = "foreign"
    """no sidecar: another tool's file (Cohen et al.'s, the original scripts')"""


def rows_state(path: Path, record: dict[str, Any] | None, role: str = RESULTS) -> RowsState:
    """The :class:`RowsState` of ``path`` (the file of ``role`` in ``record``'s digests)."""
    if record is None:
        return RowsState.foreign
    if record.get("complete", True) is not True:
        return RowsState.unfinished
    digests = record.get("rows_sha256")
    if not isinstance(digests, dict) or role not in digests:
        return RowsState.undigested
    if not Path(path).is_file() or rows_digest(Path(path)) != digests[role]:
        return RowsState.edited
    return RowsState.verified
