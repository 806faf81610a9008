"""Results files: the TSV of certify and predict (ours, the original ANCER scripts', Cohen et
al.'s), its JSON sidecar, and the loop that writes rows -- resumable after a crash and sharded
across processes, merged in index order at the end."""

from __future__ import annotations

import decimal
import math
import os
import re
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

from ancer_cli.artifacts import (
    atomic_writer,
    check_resumable,
    read_json,
    remove_stale_temporaries,
    utc_now,
    write_json,
)
from ancer_cli.core.noise import fresh_seed
from ancer_cli.distributed import SINGLE, Ranks, broadcast_int, collective
from ancer_cli.errors import OutputError, ResultsError, first_line

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
REQUIRED_RESULT_COLUMNS = ("idx", "label", "predict", "radius", "correct")
SEQUENTIAL_COLUMNS = ("samples", "stop")
"""Columns after the eight in sequential certification: samples used (selection and estimation)
and why sampling stopped."""
PREDICTION_COLUMNS = ("idx", "label", "predict", "correct", "time")
"""The columns of ``ancer predict``'s output, and of Cohen et al.'s ``predict.py``."""
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
) -> str:
    """One line of the results TSV (with trailing newline), radii rounded toward zero;
    ``extra`` fields (e.g. :data:`SEQUENTIAL_COLUMNS`) follow the eight columns."""
    fields = [
        str(idx),
        str(label),
        str(predict),
        format_down(radius),
        format_down(radius_proxy),
        str(correct),
        format_nearest(min_sigma),
        f"{seconds:.4f}",
        *extra,
    ]
    return "\t".join(fields) + "\n"


RESULT_HEADER = "\t".join(RESULT_COLUMNS) + "\n"


def format_prediction_row(idx: int, label: int, predict: int, correct: int, seconds: float) -> str:
    """One line of a predictions TSV (``PREDICTION_COLUMNS``), with trailing newline."""
    return f"{idx}\t{label}\t{predict}\t{correct}\t{seconds:.4f}\n"


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

    Requires the columns ``idx label predict radius correct``; ``radius_proxy``, ``min_sigma``
    and ``time`` are optional. A predictions file (``ancer predict``'s or Cohen et al.'s
    ``predict.py``'s: ``idx label predict correct time``, no radius) is read too, without radius
    columns (:func:`is_prediction_frame`). ``time`` becomes seconds (float). A header-only file
    gives an empty frame. Raises :class:`ResultsError` with the file name and the problem for
    anything malformed (line numbers count the header as line 1).
    """
    path = Path(path)
    if not path.exists():
        raise ResultsError(f"results file {path} does not exist")
    if path.is_dir():
        raise ResultsError(f"results file {path} is a directory; give the .csv/.tsv file")
    frame = _read_tab_separated(path)
    frame.columns = [str(column).strip() for column in frame.columns]
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
    real = tuple(c for c in ("radius", "radius_proxy", "min_sigma") if c in frame.columns)
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


def run_seed(given: int | None, out: Path, resume: bool, ranks: Ranks = SINGLE) -> int:
    """The seed of a certify or predict run writing ``out``: ``given``; else, resuming, the
    seed its sidecar records; else a fresh one from OS entropy, drawn by rank 0 and shared with
    every rank (a collective in a distributed run)."""
    if given is not None:
        return given
    if resume:
        record = read_results_record(out)
        recorded = (record or {}).get("arguments", {}).get("seed")
        if isinstance(recorded, int):
            return recorded
    return broadcast_int(ranks, fresh_seed() if ranks.is_main else 0)


def complete_rows(path: Path, columns: Sequence[str] = RESULT_COLUMNS) -> list[tuple[int, str]]:
    """The complete rows of a results file being written, as ``(idx, line)`` in file order.

    A line cut short by an interruption ends the rows (it and anything after it are left out);
    a file holding part of the header, or nothing, has none. Raises :class:`OutputError` when
    the file cannot be read or its header is not ``columns``.
    """
    path = Path(path)
    header = "\t".join(columns) + "\n"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise OutputError(f"cannot resume {path}: unreadable ({error})") from error
    if header.startswith(text):  # interrupted before the header was complete
        return []
    lines = text.splitlines(keepends=True)
    if lines[0] != header:
        raise OutputError(
            f"cannot resume {path}: its header is not ancer's ({header.strip()!r}); use --force "
            "to start over"
        )
    rows = []
    for line in lines[1:]:
        fields = line.rstrip("\n").split("\t")
        if not line.endswith("\n") or len(fields) != len(columns):
            break  # a line cut short by an interruption: that input is certified again
        try:
            rows.append((int(fields[0]), line))
        except ValueError:
            break
    return rows


class ResultsFile:
    """The results TSV being written: header first, then one flushed line per input.

    ``columns`` are the header's (the results of certify by default). With ``resume`` an
    existing file is kept up to its last complete line (a line cut short by a crash is dropped)
    and :attr:`done` lists the indices already there.
    """

    def __init__(
        self, path: Path, resume: bool = False, columns: Sequence[str] = RESULT_COLUMNS
    ) -> None:
        self.path = Path(path)
        self.done: list[int] = []
        header = "\t".join(columns) + "\n"
        try:
            if resume and self.path.exists():
                rows = complete_rows(self.path, columns)
                self.done = [idx for idx, _ in rows]
                kept = header + "".join(line for _, line in rows)
                # cut a half-written last line in place, keeping every complete row on disk
                self.handle = open(self.path, "r+")  # noqa: SIM115 - closed in close()
                if not self.done:
                    self.handle.truncate(0)
                    self.handle.write(kept)
                self.handle.truncate(len(kept.encode()))
                self.handle.seek(0, os.SEEK_END)
            else:
                self.handle = open(self.path, "w")  # noqa: SIM115
                self.handle.write(header)
            self.handle.flush()
        except OSError as error:
            raise OutputError(f"cannot write {self.path}: {error.strerror or error}") from error

    def append(self, line: str) -> None:
        try:
            self.handle.write(line)
            self.handle.flush()
        except OSError as error:
            raise OutputError(f"cannot write {self.path}: {error.strerror or error}") from error

    def close(self) -> None:
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
        except OSError as error:
            raise OutputError(f"cannot write {self.path}: {error.strerror or error}") from error
        finally:
            self.handle.close()

    def __enter__(self) -> ResultsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# writing rows: resumable, sharded, merged


def pre_memory_path(out: Path) -> Path:
    """Where the certificates are written before the memory pass: ``results.csv.pre-memory``."""
    return Path(str(out) + ".pre-memory")


class Row(Protocol):
    """A line of a results file for one dataset index (:class:`~ancer_cli.certify.ResultRow`,
    :class:`~ancer_cli.predict.PredictionRow`)."""

    idx: int

    def line(self) -> str: ...


def shard_path(working: Path, ranks: Ranks) -> Path:
    """The file one rank of a distributed run writes: ``results.csv.rank1-of-4``."""
    return Path(f"{working}.rank{ranks.rank}-of-{ranks.world_size}")


def leftover_shards(working: Path) -> list[Path]:
    """Every shard file of ``working`` on disk, whatever number of processes wrote it."""
    pattern = re.compile(re.escape(working.name) + r"\.rank\d+-of-\d+")
    try:
        entries = list(working.parent.iterdir())
    except OSError as error:
        raise OutputError(f"cannot list {working.parent}: {error.strerror or error}") from error
    return sorted(path for path in entries if pattern.fullmatch(path.name))


def gather_rows(working: Path, columns: Sequence[str] = RESULT_COLUMNS) -> dict[int, str]:
    """The complete rows of ``working`` and of all its shards, by dataset index (a row found
    twice -- a merge interrupted before it removed the shards -- is kept once)."""
    rows: dict[int, str] = {}
    for path in [working, *leftover_shards(working)]:
        if path.exists():
            for idx, line in complete_rows(path, columns):
                rows.setdefault(idx, line)
    return rows


def merge_rows(
    working: Path, columns: Sequence[str] = RESULT_COLUMNS, indices: Sequence[int] | None = None
) -> dict[int, str]:
    """Rank 0: the rows of ``working`` and its shards into ``working`` alone, in index order.

    ``working`` is rewritten (atomically) only when shards held rows or its own rows were out
    of order or cut short; then the shards are removed. With ``indices``, every one of them must
    have a row. Returns the rows by index.
    """
    shards = leftover_shards(working)
    rows = gather_rows(working, columns)
    if indices is not None and set(rows) != set(indices):
        missing = sorted(set(indices) - set(rows))
        raise OutputError(
            f"the shards of {working} lack indices {missing[:5]}; rerun with --resume"
        )
    own = complete_rows(working, columns) if working.exists() else []
    in_order = [idx for idx, _ in own] == sorted(rows)
    if shards or not in_order:
        header = "\t".join(columns) + "\n"
        with atomic_writer(working) as handle:
            handle.write(header)
            handle.writelines(rows[i] for i in sorted(rows))
        for shard in shards:
            shard.unlink()
    return rows


def check_resume(out: Path, arguments: dict[str, Any], memory: bool) -> None:
    """Refuse to resume ``out`` if its sidecar records other arguments (names the first). A
    larger ``--max`` (or none) is allowed: every row is a function of its index alone, so the
    rows kept stay valid and resuming certifies the indices added (extends a finished run)."""
    _check_resume(out, pre_memory_path(out) if memory else out, arguments)


def _check_resume(out: Path, working: Path, arguments: dict[str, Any]) -> None:
    if out.exists() or working.exists() or leftover_shards(working):
        check_resumable(results_sidecar_path(out), arguments, str(out), may_grow=("max",))


def write_rows(
    rows_of: Callable[[list[int]], Iterable[Row]],
    indices: list[int],
    out: Path,
    working: Path,
    record: dict[str, Any],
    *,
    columns: Sequence[str] = RESULT_COLUMNS,
    resume: bool = False,
    on_row: Callable[[Any], None] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    ranks: Ranks = SINGLE,
) -> int | None:
    """The results loop of certify and predict: the rows of ``indices`` into ``working``, in
    index order, resumable and sharded; returns the number of rows kept from an earlier run
    (``None`` on ranks other than 0).

    ``rows_of(share)`` yields the rows of a list of indices, in order. The sidecar of ``out``
    (``record`` with ``"complete": false``) is written first. A single process appends its
    rows to ``working``, flushed one by one; each rank of a distributed run writes its own shard
    (``working.rank{r}-of-{w}``) and rank 0 merges them into ``working`` at the end.

    With ``resume`` (the sidecar must record the same ``record["arguments"]``) rank 0 first
    gathers the complete rows left by the interrupted run -- in ``working`` and in shards
    written by any number of processes -- into ``working``; every rank then takes its share of
    the indices that still lack a row, so a run resumes with any number of processes and ends
    with one row per index, each computed once. ``on_start(kept, mine)`` is called with the rows
    kept and the number this rank writes, ``on_row`` after each row it writes.
    """
    sidecar = results_sidecar_path(out)
    started = utc_now()

    def begin() -> None:
        if resume:
            _check_resume(out, working, record["arguments"])
        if ranks.is_main:  # nobody writes before every rank has passed this point
            remove_stale_temporaries(out.parent, out.name)
            if resume:
                merge_rows(working, columns)
            else:  # nothing of an earlier run may pass for this one's rows
                for path in [working, *leftover_shards(working)]:
                    if path.is_file():
                        path.unlink()

    collective(ranks, begin)
    if ranks.is_main:
        write_json(sidecar, {**record, "complete": False, "started": started})

    def write_share() -> int:
        # rank 0 gathered every earlier row into working, and in a distributed run nobody
        # writes working until the end: every rank sees the same rows, whatever shards begin
        kept = complete_rows(working, columns) if resume and working.exists() else []
        done = {idx for idx, _ in kept}
        unexpected = done.difference(indices)
        if unexpected:
            raise OutputError(
                f"cannot resume {working}: it holds index {min(unexpected)}, which this run "
                "would not cover; use the same --skip/--max or --force to start over"
            )
        share = ranks.share([i for i in indices if i not in done])
        if on_start is not None:
            on_start(len(done), len(share))
        mine = shard_path(working, ranks) if ranks.distributed else working
        with ResultsFile(mine, resume=mine.exists(), columns=columns) as results:
            for row in rows_of(share):
                results.append(row.line())
                if on_row is not None:
                    on_row(row)
        return len(done)

    kept = collective(ranks, write_share)
    if not ranks.is_main:
        return None
    merge_rows(working, columns, indices)
    return kept
