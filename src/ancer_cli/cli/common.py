"""What every command shares: the console, option types and help panels, progress bars and error
translation.

Like every module of the command line, this one imports no PyTorch, numpy or pandas: ``--help``,
``--version`` and usage errors answer at once, and a command imports the library when it runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ancer_cli.core.choices import Norm, Precision
from ancer_cli.errors import AncerError
from ancer_cli.settings import CertifyMethod

if TYPE_CHECKING:
    from ancer_cli.data import LoadedData
    from ancer_cli.run.spec import InputsSpec

console = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

# help panels: the options of a command grouped as a user reads them
WHAT = "What to smooth"
SAMPLING = "Sampling and confidence"
OUTPUT = "Output"
RUN = "Where and how to run"

DeviceOption = Annotated[
    str,
    typer.Option(
        help="Where to run: auto (CUDA if available), cpu, cuda or cuda:K.", rich_help_panel=RUN
    ),
]
SeedOption = Annotated[
    int,
    typer.Option(
        help="Random seed; the same seed gives the same output on the same device.",
        rich_help_panel=RUN,
    ),
]
NoiseSeedOption = Annotated[
    int | None,
    typer.Option(
        "--seed",
        help="Random seed of the noise (default: fresh from OS entropy, drawn after the run "
        "has recorded what it certifies, printed and recorded; --resume keeps each input's "
        "recorded seed, inputs it adds get a fresh one). The same seed gives the same output "
        "on the same device.",
        show_default=False,
        rich_help_panel=RUN,
    ),
]
SoundOption = Annotated[
    bool | None,
    typer.Option(
        "--sound/--no-sound",
        help="Floating-point-sound noise: drawn exactly on the data's pixel grid and added in "
        "integers, so no base classifier can forge a certificate through rounding (default: "
        "on wherever the data has a pixel grid; --no-sound: float noise).",
        show_default=False,
        rich_help_panel=WHAT,
    ),
]
PrecisionOption = Annotated[
    Precision,
    typer.Option(
        help="Arithmetic of the base classifier: fp32, or bf16/fp16 autocast (noise stays fp32).",
        rich_help_panel=RUN,
    ),
]
ChannelsLastOption = Annotated[
    bool,
    typer.Option(
        "--channels-last",
        help="Run the model in channels-last memory format.",
        rich_help_panel=RUN,
    ),
]
SkipOption = Annotated[
    int,
    typer.Option(help="Take every SKIP-th input of the split.", rich_help_panel=WHAT),
]
MaxIndexOption = Annotated[
    int | None,
    typer.Option(
        "--max",
        "--max-index",
        help="Stop before this dataset index (default: all; under torchrun write --max-index).",
        rich_help_panel=WHAT,
    ),
]
# what certify and predict smooth: the model, the noise (fixed sigma or per-input thetas), the data
SmoothedModelOption = Annotated[
    Path | None,
    typer.Option(
        help="Model file: a checkpoint written by ancer train, a state dict (with --arch), a "
        "TorchScript archive or a torch.export program.",
        rich_help_panel=WHAT,
    ),
]
ThetasOption = Annotated[
    Path | None,
    typer.Option(
        help="Per-input thetas: a folder written by ancer optimize (or the original ANCER "
        "package), or an isotropic values file (one sigma per dataset index, or per input "
        "--skip/--max select).",
        rich_help_panel=WHAT,
    ),
]
DenoiserOption = Annotated[
    Path | None,
    typer.Option(
        exists=True,
        help="Denoiser: a file written by ancer train --denoiser, or a diffusers DDPM folder "
        "(fixed sigma or isotropic thetas); the base classifier becomes "
        "model(denoiser(noisy image, its noise level)).",
        rich_help_panel=WHAT,
    ),
]
MethodOption = Annotated[
    CertifyMethod | None,
    typer.Option(
        metavar="METHOD",
        help="fixed, isotropic or ancer; inferred from --sigma/--thetas.",
        rich_help_panel=WHAT,
    ),
]
SigmaOption = Annotated[
    float | None,
    typer.Option(
        help="Fixed noise standard deviation in [0,1] pixel units (l1: theta = sqrt(3)*sigma).",
        rich_help_panel=WHAT,
    ),
]
RunDatasetOption = Annotated[
    str | None,
    typer.Option(help="Dataset (default: the one the model was trained on).", rich_help_panel=WHAT),
]
DataRootOption = Annotated[
    Path | None, typer.Option(help="Folder holding the dataset.", rich_help_panel=WHAT)
]
RunSplitOption = Annotated[
    str | None,
    typer.Option(
        help="Dataset split: test or train (default: the thetas', else test).", rich_help_panel=WHAT
    ),
]
RunNormOption = Annotated[
    Norm | None,
    typer.Option(
        help="Threat model / noise: l2 (Gaussian) or l1 (uniform); default from the model.",
        rich_help_panel=WHAT,
    ),
]
RunArchOption = Annotated[
    str | None,
    typer.Option(
        help="Architecture for a plain state-dict model file (or package.module:factory).",
        rich_help_panel=WHAT,
    ),
]
ClassesOption = Annotated[
    Path | None,
    typer.Option(
        help="Class list of an image folder (imagenet, folder): one name per line, the first "
        "line class 0; sub-folders carry the class their name is on.",
        show_default=False,
        rich_help_panel=WHAT,
    ),
]
ForceOption = Annotated[
    bool, typer.Option("--force", help="Overwrite an existing output.", rich_help_panel=OUTPUT)
]
ResumeOption = Annotated[
    bool,
    typer.Option(
        "--resume", help="Continue an interrupted run into the same output.", rich_help_panel=OUTPUT
    ),
]
GrowableResumeOption = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue an interrupted run into the same output, or extend a finished one to a "
        "larger --max (or none): only the inputs added are certified.",
        rich_help_panel=OUTPUT,
    ),
]


def smoothing_spec(**options: Any) -> InputsSpec:
    """The :class:`~ancer_cli.run.spec.InputsSpec` of the smoothing options a command was given
    (``model``, ``thetas``, ``sigma``, ...: its fields, by name)."""
    from ancer_cli.run.spec import InputsSpec

    return InputsSpec(**options)


def check_smoothing_options(
    thetas: Path | None, sigma: float | None, method: CertifyMethod | None
) -> None:
    """Usage errors (exit 2) of the noise options: exactly one of ``--sigma`` and ``--thetas``,
    a positive sigma, and no per-input ``--method`` with a fixed sigma."""
    if thetas is None and sigma is None:
        raise typer.BadParameter("give --sigma (fixed sigma) or --thetas (per-input thetas)")
    if thetas is not None and sigma is not None:
        raise typer.BadParameter("--sigma and --thetas exclude each other; give one")
    if sigma is not None:
        positive("--sigma", sigma)
        if method not in (None, CertifyMethod.fixed):
            raise typer.BadParameter(f"--method {method.value} needs --thetas, not --sigma")


def label_notes(data: LoadedData, logits: int) -> list[str]:
    """What to tell people about the labels of an image folder (nothing for built-in data): the
    mapping used and, where it may not be the model's, a caution; and, for a folder of images
    without a pixel grid (float images), a caution that its noise is float noise."""
    from ancer_cli.data import LabelRule

    grid = [f"caution: {data.grid_note}"] if data.grid_note else []
    mapping = data.classes
    if mapping is None:
        return grid
    notes = [mapping.describe(), *grid]
    if mapping.rule is LabelRule.unlabeled:
        notes.append(
            "no labels: every row has label -1 and correct 0; ancer accuracy reports "
            "predictions and abstentions only"
        )
    elif mapping.rule is LabelRule.sorted and logits != mapping.num_classes:
        notes.append(
            f"caution: the sub-folder names are not class indices, so their sorted positions "
            f"are the labels, but the model has {logits} classes: if its classes are ordered "
            "otherwise, pass --classes FILE (one name per line) or name the sub-folders by "
            "class index"
        )
    return notes


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one ``error:`` line on stderr and return the Exit to raise."""
    console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    return typer.Exit(code)


@contextlib.contextmanager
def handle_errors() -> Iterator[None]:
    """Turn the library's domain errors into one line and exit code 1; Ctrl-C into exit 130."""
    try:
        yield
    except AncerError as error:
        raise fail(str(error)) from None
    except OSError as error:  # the file system refused: not a bug, say what and where
        where = f"{error.filename}: " if error.filename else ""
        raise fail(f"{where}{error.strerror or error}") from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: rerun with --resume to continue")
        raise typer.Exit(130) from None


def progress_bar(transient: bool = False, enabled: bool = True) -> Progress:
    """A rich progress bar on stderr."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=not enabled,
    )


def number(text: str | float) -> float:
    """A number option's value: a decimal number or a fraction such as ``8/255`` (an l-infinity
    eps in grid steps reads best as one); a usage error (exit 2) for anything else."""
    if isinstance(text, (int, float)):
        return float(text)
    value = str(text).strip()
    try:
        if "/" in value:
            numerator, denominator = value.split("/", 1)
            return float(numerator) / float(denominator)
        return float(value)
    except (ValueError, ZeroDivisionError):
        raise typer.BadParameter(
            f"{text!r} is not a number or a fraction such as 8/255"
        ) from None


def positive(name: str, value: float) -> None:
    """Usage error (exit 2) unless ``value`` is a finite number > 0."""
    if not value > 0 or value != value or value == float("inf"):
        raise typer.BadParameter(f"{name} must be a finite number > 0, got {value}")


def probability(name: str, value: float | None) -> None:
    """Usage error (exit 2) unless ``value`` (when given) lies in (0, 1)."""
    if value is not None and not 0.0 < value < 1.0:
        raise typer.BadParameter(f"{name} must lie in (0, 1), got {value}")


def at_least_one(name: str, value: int | None) -> None:
    """Usage error (exit 2) unless ``value`` (when given) is >= 1 (``--max 0`` selects nothing)."""
    if value is not None and value < 1:
        raise typer.BadParameter(f"{name} must be >= 1, got {value} (it would select no input)")


def non_negative(name: str, value: int | None) -> None:
    """Usage error (exit 2) unless ``value`` (when given) is >= 0."""
    if value is not None and value < 0:
        raise typer.BadParameter(f"{name} must be >= 0, got {value}")


def noise_description(segments: list[dict[str, Any]], grid_levels: int | None) -> str:
    """How a run draws its noise, for the line that opens it: sound or float, and the seed of
    each segment (the inputs a resume adds have their own)."""
    sound = f"sound noise on the 1/{grid_levels} grid" if grid_levels else "float noise"
    if len(segments) == 1:
        return f"{sound}, seed {segments[0]['seed']}"
    seeds = ", ".join(f"{s['seed']} ({len(s['indices'])} inputs)" for s in segments)
    return f"{sound}, seeds {seeds}"
