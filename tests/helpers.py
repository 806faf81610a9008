"""What the tests share: running ``ancer`` through Typer's CliRunner, reading what it writes, the
tiny settings that keep end-to-end runs fast, and the files those runs start from.

Imported as ``from tests.helpers import ok, read_rows, ...``. Like ``conftest.py``, this module
imports nothing beyond the package's run-time dependencies and pytest's own (no matplotlib, no
hypothesis), so that the ``cuda`` tests run on a bare GPU machine.
"""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import torch
from PIL import Image
from typer.testing import CliRunner, Result

from ancer_cli.cli import app
from tests.toys import ColourClassifier

EIGHT_HEADER = "idx\tlabel\tpredict\tradius\tradius_proxy\tcorrect\tmin_sigma\ttime"
"""The eight columns of a results file (the original ANCER scripts' whole header)."""
RESULT_HEADER = EIGHT_HEADER + "\tradius_linf"
"""The header of ``ancer certify``'s results: the eight columns, then radius_linf."""

# Tiny settings shared by the tests: fast on two CPU cores, still meaningful.
TRAIN_EPOCHS = 3
CERTIFY_FAST = ("--N0", "20", "--N", "200", "--seed", "0", "--device", "cpu")
OPTIMIZE_FAST = (  # the published objective and schedule, shortened
    "--objective",
    "reference",
    "--iso-iterations",
    "5",
    "--iterations",
    "5",
    "--samples",
    "8",
    "--iso-samples",
    "8",
    "--device",
    "cpu",
)
OPTIMIZE_CERTIFIED_FAST = (  # the default objective, shortened
    "--iso-samples",
    "64",
    "--iterations",
    "5",
    "--samples",
    "16",
    "--guard-samples",
    "64",
    "--device",
    "cpu",
)
OPTIMIZED_INPUTS = 6


def on_device(fast: tuple[str, ...], device: str) -> tuple[str, ...]:
    """Tiny settings ``fast`` (``CERTIFY_FAST``, ``OPTIMIZE_FAST``) with ``--device device``."""
    where = fast.index("--device")
    return (*fast[:where], "--device", device, *fast[where + 2 :])


# ---------------------------------------------------------------------------------------------
# running the CLI


def invoke(*args: object) -> Result:
    """Run ``ancer ARGS...`` in-process; stdout and stderr are captured separately."""
    return CliRunner().invoke(app, [str(arg) for arg in args])


def describe(result: Result) -> str:
    """Everything useful to show when an assertion about a CLI run fails."""
    return (
        f"exit code {result.exit_code}, exception {result.exception!r}\n"
        f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
    )


def ok(*args: object) -> Result:
    """Run ``ancer ARGS...`` and assert it succeeded cleanly."""
    result = invoke(*args)
    assert result.exit_code == 0, describe(result)
    assert result.exception is None, describe(result)
    assert "Traceback" not in result.output
    return result


def error_lines(result: Result) -> list[str]:
    """The ``error:`` lines a domain error (exit code 1) printed on stderr."""
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def assert_domain_error(result: Result, *fragments: str) -> str:
    """Exit code 1 through a clean exit, one ``error:`` line on stderr holding every fragment.

    Returns the error line. (An uncaught exception also gives exit code 1 in CliRunner, so the
    exception must be the SystemExit of a deliberate exit.)
    """
    assert result.exit_code == 1, describe(result)
    assert isinstance(result.exception, SystemExit), describe(result)
    assert "Traceback" not in result.output, describe(result)
    lines = error_lines(result)
    assert len(lines) == 1, describe(result)
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    return lines[0]


def usage_message(result: Result) -> str:
    """The text of the error panel of a usage error, joined into one line."""
    inside = []
    for line in result.stderr.splitlines():
        stripped = line.strip()
        if stripped.startswith("│") and stripped.endswith("│"):
            inside.append(stripped.strip("│").strip())
    return " ".join(inside)


def assert_usage_error(result: Result, *fragments: str) -> str:
    """Exit code 2 with Typer's usage-error panel holding every fragment; no traceback."""
    assert result.exit_code == 2, describe(result)
    assert isinstance(result.exception, SystemExit), describe(result)
    assert "Traceback" not in result.output, describe(result)
    message = usage_message(result)
    assert message, describe(result)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ---------------------------------------------------------------------------------------------
# reading results files


@dataclass(frozen=True)
class Row:
    """One results row, numbers kept as the exact decimal strings that were written."""

    idx: int
    label: int
    predict: int
    radius: str
    radius_proxy: str
    correct: int
    min_sigma: str
    time: str
    radius_linf: str


def read_rows(path: Path) -> list[Row]:
    """Parse a results TSV of ``ancer certify`` (fixed N), asserting its exact header."""
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0] == RESULT_HEADER
    rows = []
    for fields in csv.reader(lines[1:], delimiter="\t"):
        assert len(fields) == 9, fields
        rows.append(
            Row(
                int(fields[0]),
                int(fields[1]),
                int(fields[2]),
                fields[3],
                fields[4],
                int(fields[5]),
                fields[6],
                fields[7],
                fields[8],
            )
        )
    return rows


def without_time(path: Path) -> list[list[str]]:
    """The results file as fields: its nine columns but the (wall-clock) time, the 8th (the
    columns a kind of run adds after the nine are left out)."""
    lines = path.read_text().splitlines()
    return [fields[:7] + fields[8:9] for fields in (line.split("\t") for line in lines)]


def rounded_down(exact: float, printed: str, digits: int = 6) -> bool:
    """``printed`` is ``exact`` rounded toward zero with at least ``digits`` significant digits."""
    value, target = Decimal(printed), Decimal(exact)
    if target == 0:
        return value == 0
    unit = Decimal(10) ** (math.floor(math.log10(abs(exact))) - digits + 1)
    return Decimal(0) <= target - value < unit


def rounded_near(exact: float, printed: str, digits: int = 7) -> bool:
    """``printed`` is ``exact`` rounded to nearest with ``digits`` significant digits."""
    value, target = Decimal(printed), Decimal(exact)
    if target == 0:
        return value == 0
    unit = Decimal(10) ** (math.floor(math.log10(abs(exact))) - digits + 1)
    return abs(target - value) <= unit / 2


# ---------------------------------------------------------------------------------------------
# session artifacts made through the CLI


@dataclass(frozen=True)
class Trained:
    """A model file made by ``ancer train`` and the run that made it."""

    path: Path
    result: Result


def train_model(out: Path, *extra: object, epochs: int = TRAIN_EPOCHS) -> Result:
    """``ancer train`` on digits, CPU, tiny; the warning torch may raise about ``float(loss)``
    is silenced here so that the shared fixtures do not hinge on it (test_train checks it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True")
        return ok("train", "--epochs", epochs, "--device", "cpu", "--out", out, *extra)


# ---------------------------------------------------------------------------------------------
# image folders as users have them, and a black-box model that reads their colours


def save_colour_model(path: Path, classes: int) -> Path:
    """A TorchScript archive of :class:`ColourClassifier` (a black box: no dataset recorded)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.* is deprecated")
        torch.jit.save(torch.jit.script(ColourClassifier(classes)), str(path))
    return path


def write_class_images(
    folder: Path, label: int, classes: int, count: int = 2, size: tuple[int, int] = (8, 8)
) -> None:
    """``count`` RGB images that :class:`ColourClassifier` (``classes`` logits) calls ``label``."""
    folder.mkdir(parents=True, exist_ok=True)
    red = round(255 * label / (classes - 1))
    for i in range(count):
        Image.new("RGB", size, (red, 40 * i, 90)).save(folder / f"{i}.png")
