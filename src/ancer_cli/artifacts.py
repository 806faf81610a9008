"""Every file format ancer reads or writes: results TSV and sidecar, theta folders, manifests.

Writes are atomic (temporary file in the same folder, fsync, rename), so a crash never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import decimal
import glob
import hashlib
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pandas as pd
import torch

from ancer_cli.errors import OutputError, ResultsError, ThetaError, first_line

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
# generic helpers


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_writer(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success fsync and rename it onto ``path``."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from error
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from error
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove_stale_temporaries(folder: Path, prefix: str = "") -> int:
    """Delete the temporaries :func:`atomic_writer` left for files named ``prefix*`` in
    ``folder`` when a process was killed mid-write."""
    removed = 0
    for stale in Path(folder).glob(f".{glob.escape(prefix)}*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
            removed += 1
    return removed


def check_new_output(
    path: Path, *, force: bool, resume: bool | None = None, folder: bool = False
) -> None:
    """Refuse to overwrite an output silently (the one home of this check).

    ``path`` must not exist (for a ``folder``: may exist empty) unless ``force``, or ``resume``
    for outputs that can be continued (``resume=None``: this output cannot be). A file's folder
    must exist. Raises :class:`OutputError` naming the option that would allow it.
    """
    path = Path(path)
    if force and resume:
        raise OutputError("--force and --resume contradict each other; pass one of them")
    allowed = force or bool(resume)
    hint = "pass --force to overwrite it" + (
        " or --resume to continue it" if resume is not None else ""
    )
    if folder:
        if path.exists() and not path.is_dir():
            raise OutputError(f"--out {path} is a file; give a folder for the theta files")
        if path.exists() and any(path.iterdir()) and not allowed:
            raise OutputError(f"{path} is not empty; {hint}")
        return
    if path.exists() and not allowed:
        raise OutputError(f"{path} already exists; {hint}")
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: folder {path.parent} does not exist")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    with atomic_writer(path) as handle:
        json.dump(payload, handle, indent=2, sort_keys=False, default=str)
        handle.write("\n")


def read_json(path: Path, what: str) -> dict[str, Any]:
    """Read a JSON object; a missing or malformed file is an :class:`OutputError`-free
    ``ResultsError``-like message naming ``what``."""
    try:
        payload = json.loads(Path(path).read_text())
    except FileNotFoundError as error:
        raise ResultsError(f"{what} {path} does not exist") from error
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ResultsError(f"{what} {path} is not valid JSON ({error})") from error
    if not isinstance(payload, dict):
        raise ResultsError(f"{what} {path} must hold a JSON object, got {type(payload).__name__}")
    return payload


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------------------------------------
# results TSV


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


def check_resumable(sidecar: Path, arguments: dict[str, Any], what: str) -> None:
    """Refuse to resume an output written with other arguments; name the first that differs."""
    if not sidecar.exists():
        raise OutputError(
            f"cannot resume {what}: its record {sidecar} is missing; use --force to start over"
        )
    recorded = read_json(sidecar, "run record").get("arguments", {})
    if not isinstance(recorded, dict):
        raise OutputError(f"cannot resume {what}: {sidecar} is damaged; use --force to start over")
    for key, (had, has) in _differences(recorded, arguments).items():
        raise OutputError(
            f"cannot resume {what}: it was written with {key}={had!r}, "
            f"this run has {key}={has!r}; use the same arguments or --force to start over"
        )


def _differences(
    recorded: dict[str, Any], wanted: dict[str, Any], prefix: str = ""
) -> dict[str, Any]:
    """``{dotted.key: (recorded, wanted)}`` for keys present in both whose values differ."""
    found: dict[str, Any] = {}
    for key, value in wanted.items():
        if key not in recorded:
            continue
        had = recorded[key]
        if isinstance(had, dict) and isinstance(value, dict):
            found.update(_differences(had, value, f"{prefix}{key}."))
        elif had != value:
            found[f"{prefix}{key}"] = (had, value)
    return found


# ---------------------------------------------------------------------------------------------
# theta folders: theta_{split}_{idx}.pt (the original ANCER package's names) + manifest.json

THETA_FORMAT = "ancer-thetas/1"
MANIFEST_NAME = "manifest.json"
ISOTROPIC_SUBFOLDER = "isotropic"
_THETA_NAME = re.compile(r"^theta_(?P<split>[A-Za-z0-9]+)_(?P<idx>\d+)\.pt$")


def theta_path(folder: Path, split: str, idx: int) -> Path:
    """``folder/theta_{split}_{idx}.pt``."""
    return Path(folder) / f"theta_{split}_{idx}.pt"


def save_theta(path: Path, theta: torch.Tensor) -> None:
    """Write one input's theta (float32, on the CPU) atomically."""
    with atomic_writer(path, "wb") as handle:
        torch.save(theta.detach().to("cpu", torch.float32).contiguous().clone(), handle)


def validate_theta(theta: object, where: str, shape: tuple[int, ...] | None) -> torch.Tensor:
    """Check a loaded theta: a floating tensor, 0-d or of ``shape``, finite and > 0."""
    if not isinstance(theta, torch.Tensor):
        raise ThetaError(f"{where} holds a {type(theta).__name__}, expected a theta tensor")
    if not theta.is_floating_point():
        raise ThetaError(f"{where} holds a {theta.dtype} tensor, expected floating point")
    if theta.ndim != 0 and shape is not None and tuple(theta.shape) != tuple(shape):
        raise ThetaError(
            f"{where} has shape {tuple(theta.shape)}, expected {tuple(shape)} (the input's shape) "
            "or a single number; were these thetas optimized for another dataset?"
        )
    if not bool(torch.isfinite(theta).all()):
        raise ThetaError(f"{where} contains NaN or infinite values; optimize this input again")
    if not bool((theta > 0).all()):
        raise ThetaError(
            f"{where} contains values <= 0 (min {float(theta.min()):.4g}); theta must be positive"
        )
    return theta.to(torch.float32)


def load_theta(path: Path, shape: tuple[int, ...] | None) -> torch.Tensor:
    """Read and validate one theta file (loaded with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise ThetaError(f"theta file {path} is missing; optimize that input or lower --max")
    try:
        theta = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or unsafe files
        raise ThetaError(
            f"theta file {path} cannot be read as a tensor ({type(error).__name__})"
        ) from error
    return validate_theta(theta, f"theta file {path}", shape)


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest, or ``None`` for an original ANCER folder without one."""
    path = Path(folder) / MANIFEST_NAME
    if not path.exists():
        return None
    try:
        manifest = read_json(path, "manifest")
    except ResultsError as error:
        raise ThetaError(str(error)) from error
    if manifest.get("format") != THETA_FORMAT:
        raise ThetaError(
            f"manifest {path} has format {manifest.get('format')!r}, expected {THETA_FORMAT!r}"
        )
    _check_manifest_fields(manifest, path)
    return manifest


def _check_manifest_fields(manifest: dict[str, Any], path: Path) -> None:
    """The fields later code relies on, with the types it expects."""

    def bad(field: str, expected: str) -> ThetaError:
        return ThetaError(
            f"manifest {path}: {field} must be {expected}; the file is damaged, "
            "optimize again with --force"
        )

    arguments = manifest.get("arguments")
    if not isinstance(arguments, dict):
        raise bad("arguments", "an object")
    for key in ("model", "model_sha256", "dataset", "split", "norm"):
        if not isinstance(arguments.get(key), str):
            raise bad(f"arguments.{key}", "a string")
    for key in ("data_root", "classes"):
        if not isinstance(arguments.get(key), str | None):
            raise bad(f"arguments.{key}", "a string or null")
    if manifest.get("method") not in ("isotropic", "ancer"):
        raise bad("method", "isotropic or ancer")
    indices = manifest.get("indices")
    if not isinstance(indices, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in indices
    ):
        raise bad("indices", "a list of dataset indices")
    if not isinstance(manifest.get("complete"), bool):
        raise bad("complete", "true or false")


def theta_indices(folder: Path, split: str) -> list[int]:
    """Sorted dataset indices that have a ``theta_{split}_{idx}.pt`` file in ``folder``."""
    found = []
    for entry in Path(folder).iterdir():
        match = _THETA_NAME.match(entry.name)
        if match and match["split"] == split:
            found.append(int(match["idx"]))
    return sorted(found)


_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")  # torch.save: a zip archive, or a legacy pickle


def read_isotropic_values(path: Path) -> torch.Tensor:
    """An isotropic thetas file: a 1-d float tensor saved with ``torch.save`` (the original
    data-dependent smoothing code's output, whatever its file name: it writes
    ``isotropic_parameters`` without a suffix) or a text file with one number per line.

    Returns the values as a 1-d float32 tensor; how they map to inputs is the caller's
    (:func:`ancer_cli.thetas.open_thetas`) business.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(4)
        if path.suffix in (".pt", ".pth") or head.startswith(_TORCH_MAGIC):
            values = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(values, torch.Tensor):
                raise ThetaError(
                    f"isotropic thetas file {path} holds a {type(values).__name__}, expected a tensor"
                )
        else:
            values = torch.tensor([float(v) for v in path.read_text().split()], dtype=torch.float64)
    except ThetaError:
        raise
    except Exception as error:
        raise ThetaError(
            f"isotropic thetas file {path} cannot be read ({type(error).__name__}: {error})"
        ) from error
    if sum(size > 1 for size in values.shape) > 1:
        raise ThetaError(
            f"isotropic thetas file {path} holds a tensor of shape {tuple(values.shape)}; "
            "expected one sigma per input (a 1-d tensor)"
        )
    values = values.detach().flatten().to(torch.float32)
    if values.numel() == 0:
        raise ThetaError(f"isotropic thetas file {path} is empty; expected one sigma per input")
    return validate_theta(values, f"isotropic thetas file {path}", None)
