"""Shared fixtures for end-to-end tests: a tiny digits model and ANCER thetas, made through the CLI.

Everything runs on the CPU with tiny sample counts, so the whole CLI suite stays fast. Tests
marked ``cuda`` run on a CUDA device (``bash benchmarks/gpu_check.sh`` runs them all) and are
skipped without one. This file and the modules with ``cuda`` tests import nothing beyond the
package's run-time dependencies and pytest (no matplotlib, no hypothesis), so that they run
on a bare GPU machine.
"""

from __future__ import annotations

import csv
import math
import shutil
import warnings
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn
from typer.testing import CliRunner, Result

from ancer_cli.cli import app

# The models here are tiny: one thread is as fast as two on an idle machine and many times
# faster when other processes compete for the cores (OpenMP threads spin while they wait).
torch.set_num_threads(1)

RESULT_HEADER = "idx\tlabel\tpredict\tradius\tradius_proxy\tcorrect\tmin_sigma\ttime"

# Tiny settings shared by the tests: fast on two CPU cores, still meaningful.
TRAIN_EPOCHS = 3
CERTIFY_FAST = ("--N0", "20", "--N", "200", "--device", "cpu")
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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` skip cleanly where no CUDA device is visible."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


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


def read_rows(path: Path) -> list[Row]:
    """Parse a results TSV, asserting ancer's exact header."""
    text = path.read_text()
    lines = text.splitlines()
    assert lines[0] == RESULT_HEADER
    rows = []
    for fields in csv.reader(lines[1:], delimiter="\t"):
        assert len(fields) == 8, fields
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
            )
        )
    return rows


def without_time(path: Path) -> list[list[str]]:
    """The results file as fields, the (wall-clock) time column dropped."""
    lines = path.read_text().splitlines()
    return [line.split("\t")[:7] for line in lines]


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


def train_model(out: Path, *extra: object, epochs: int = TRAIN_EPOCHS) -> Result:
    """``ancer train`` on digits, CPU, tiny; the warning torch may raise about ``float(loss)``
    is silenced here so that the shared fixtures do not hinge on it (test_train checks it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True")
        return ok("train", "--epochs", epochs, "--device", "cpu", "--out", out, *extra)


# ---------------------------------------------------------------------------------------------
# image folders as users have them, and a black-box model that reads their colours


class ColourClassifier(nn.Module):
    """``classes`` logits peaking at ``k = mean red value * (classes - 1)``: an image whose red
    channel is ``k / (classes - 1)`` everywhere is class k, whatever its size."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        red = x[:, 0].mean(dim=(1, 2)) * (self.classes - 1)
        k = torch.arange(self.classes, dtype=x.dtype, device=x.device)
        return -(red[:, None] - k[None, :]).abs() * 10


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


class Cli:
    """The helpers above, handed to test modules as the ``cli`` fixture."""

    RESULT_HEADER = RESULT_HEADER
    TRAIN_EPOCHS = TRAIN_EPOCHS
    CERTIFY_FAST = CERTIFY_FAST
    OPTIMIZE_FAST = OPTIMIZE_FAST
    OPTIMIZE_CERTIFIED_FAST = OPTIMIZE_CERTIFIED_FAST
    OPTIMIZED_INPUTS = OPTIMIZED_INPUTS
    on_device = staticmethod(on_device)
    Row = Row
    invoke = staticmethod(invoke)
    ok = staticmethod(ok)
    describe = staticmethod(describe)
    error_lines = staticmethod(error_lines)
    assert_domain_error = staticmethod(assert_domain_error)
    assert_usage_error = staticmethod(assert_usage_error)
    usage_message = staticmethod(usage_message)
    read_rows = staticmethod(read_rows)
    without_time = staticmethod(without_time)
    rounded_down = staticmethod(rounded_down)
    rounded_near = staticmethod(rounded_near)
    train_model = staticmethod(train_model)
    save_colour_model = staticmethod(save_colour_model)
    write_class_images = staticmethod(write_class_images)


@pytest.fixture(scope="session")
def cli() -> type[Cli]:
    """Helpers to run ``ancer`` through Typer's CliRunner and read what it writes."""
    return Cli


@dataclass(frozen=True)
class Trained:
    path: Path
    result: Result


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A digits ``cnn`` trained 3 epochs with the defaults (seed 0, l2, sigma 0.25), and the run."""
    path = tmp_path_factory.mktemp("model") / "model.pt"
    return Trained(path, train_model(path))


@pytest.fixture(scope="session")
def model_path(trained: Trained) -> Path:
    """The session's trained digits model file."""
    return trained.path


@pytest.fixture(scope="session")
def thetas_dir(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Path:
    """ANCER thetas (and the isotropic stage) of the first 6 digits test inputs."""
    path = tmp_path_factory.mktemp("thetas") / "thetas"
    ok(
        "optimize",
        "--model",
        model_path,
        "--out",
        path,
        "--max",
        OPTIMIZED_INPUTS,
        *OPTIMIZE_FAST,
    )
    return path


@pytest.fixture
def thetas_copy(tmp_path: Path, thetas_dir: Path) -> Path:
    """A private, writable copy of the session's thetas folder."""
    copy = tmp_path / "thetas"
    shutil.copytree(thetas_dir, copy)
    return copy


@pytest.fixture(scope="session")
def cuda_thetas_dir(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Path:
    """ANCER thetas (and the isotropic stage) of the first 6 digits test inputs, optimized on
    CUDA (for ``cuda`` tests only)."""
    path = tmp_path_factory.mktemp("cuda-thetas") / "thetas"
    ok(
        "optimize",
        "--model",
        model_path,
        "--out",
        path,
        "--max",
        OPTIMIZED_INPUTS,
        *on_device(OPTIMIZE_FAST, "cuda"),
    )
    return path


@pytest.fixture(scope="session")
def colour_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10-class black-box model (like a CIFAR-10 classifier) of :class:`ColourClassifier`."""
    return save_colour_model(tmp_path_factory.mktemp("colour") / "colour10.pt", 10)
