"""``ancer predict``: Cohen et al.'s PREDICT for each input, with fixed sigma or per-input thetas."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ancer_cli.cli.common import (
    OUTPUT,
    RUN,
    SAMPLING,
    WHAT,
    ChannelsLastOption,
    ClassesOption,
    DataRootOption,
    DenoiserOption,
    DeviceOption,
    ForceOption,
    GrowableResumeOption,
    MaxIndexOption,
    MethodOption,
    NoiseSeedOption,
    PrecisionOption,
    RunArchOption,
    RunDatasetOption,
    RunNormOption,
    RunSplitOption,
    SigmaOption,
    SmoothedModelOption,
    SoundOption,
    ThetasOption,
    at_least_one,
    check_smoothing_options,
    console,
    handle_errors,
    label_notes,
    noise_description,
    positive,
    probability,
    progress_bar,
    smoothing_spec,
)
from ancer_cli.cli.common import out as stdout
from ancer_cli.core.choices import Precision
from ancer_cli.settings import PredictConfig

if TYPE_CHECKING:
    from ancer_cli.predict import PredictionRow

D = PredictConfig()


def predict_command(
    model: SmoothedModelOption = None,
    thetas: ThetasOption = None,
    method: MethodOption = None,
    sigma: SigmaOption = None,
    dataset: RunDatasetOption = None,
    data_root: DataRootOption = None,
    split: RunSplitOption = None,
    norm: RunNormOption = None,
    arch: RunArchOption = None,
    classes: ClassesOption = None,
    num: Annotated[
        int,
        typer.Option(
            "--N", help="Noisy samples whose votes decide the prediction.", rich_help_panel=SAMPLING
        ),
    ] = D.num,
    alpha: Annotated[
        float,
        typer.Option(
            help="Probability, in (0, 1), that a prediction (not an abstention) differs from "
            "the smoothed classifier's.",
            rich_help_panel=SAMPLING,
        ),
    ] = D.alpha,
    batch_size: Annotated[
        int, typer.Option(help="Noisy samples per forward pass.", rich_help_panel=RUN)
    ] = D.batch_size,
    skip: Annotated[
        int, typer.Option(help="Predict every SKIP-th input of the split.", rich_help_panel=WHAT)
    ] = 1,
    max_index: MaxIndexOption = None,
    out: Annotated[
        Path,
        typer.Option(
            help="Predictions file (tab-separated).", metavar="FILE", rich_help_panel=OUTPUT
        ),
    ] = Path("predictions.csv"),
    precision: PrecisionOption = Precision.fp32,
    channels_last: ChannelsLastOption = False,
    resume: GrowableResumeOption = False,
    force: ForceOption = False,
    device: DeviceOption = "auto",
    seed: NoiseSeedOption = None,
    sound: SoundOption = None,
    denoiser: DenoiserOption = None,
) -> None:
    """Predict inputs with the smoothed classifier, one row per input.

    Cohen et al.'s PREDICT: abstain unless the top class beats the runner-up in a binomial test
    at level alpha. Columns: idx label predict correct time.

    Fixed sigma: --model M --sigma S. Per-input thetas: --thetas DIR (model, dataset, split, norm
    and method come from DIR/manifest.json; original ANCER folders and isotropic value files need
    --model, --dataset and --norm).
    """
    for name, value in [("--N", num), ("--batch-size", batch_size), ("--skip", skip)]:
        positive(name, value)
    probability("--alpha", alpha)
    at_least_one("--max", max_index)
    check_smoothing_options(thetas, sigma, method)

    from ancer_cli.data import UNLABELED
    from ancer_cli.distributed import session
    from ancer_cli.predict import PredictRequest, plan_predict
    from ancer_cli.runtime import describe_device

    inputs = smoothing_spec(
        model=model, thetas=thetas, sigma=sigma, method=method, dataset=dataset,
        data_root=data_root, split=split, norm=norm, arch=arch, classes=classes, skip=skip,
        max_index=max_index, precision=precision, channels_last=channels_last, seed=seed,
        sound=sound, denoiser=denoiser,
    )  # fmt: skip
    request = PredictRequest(
        out=out, inputs=inputs, config=PredictConfig(num, alpha, batch_size), resume=resume,
        force=force,
    )  # fmt: skip
    with handle_errors(), session(device) as where:
        plan = plan_predict(request, where)
        main = where.ranks.is_main
        if main:
            smoothed, config = plan.inputs, plan.config
            data = smoothed.data
            console.print(
                f"predicting {len(plan.indices)} {data.info.name} {data.split} inputs "
                f"({smoothed.norm.value}) with {smoothed.description} (N={config.num}, "
                f"alpha={config.alpha}; "
                f"{noise_description(plan.run.segments.record(), smoothed.grid_levels)}) "
                f"on {describe_device(where.device)}"
                + (
                    f" and {where.ranks.world_size - 1} more ranks"
                    if where.ranks.distributed
                    else ""
                )
            )
            for note in [*label_notes(data, smoothed.logits), *smoothed.notes]:
                console.print(note, markup=False)
        with progress_bar(enabled=main) as progress:
            task = progress.add_task("predict", total=None, status="")
            tally = {"labeled": 0, "correct": 0, "abstained": 0}

            def start(kept: int, mine: int) -> None:
                progress.update(task, total=mine, completed=0)

            def advance(row: PredictionRow) -> None:
                tally["labeled"] += row.label != UNLABELED
                tally["correct"] += row.correct
                tally["abstained"] += row.predict < 0
                status = f"abstained {tally['abstained']}" + (
                    f", acc {tally['correct'] / tally['labeled']:.3f}" if tally["labeled"] else ""
                )
                progress.update(task, advance=1, status=status)

            summary = plan.execute(where, on_row=advance, on_start=start)
            progress.update(task, completed=progress.tasks[task].total)
        if summary is None:  # rank 0 reports
            return
        accuracy = (
            f"accuracy {summary.accuracy:.3f}, "
            if summary.labeled
            else "no labels (accuracy not measured), "
        )
        stdout.print(
            f"{out}: {summary.predicted} inputs, {accuracy}abstained {summary.abstained} "
            f"({summary.abstained / max(summary.predicted, 1):.3f})"
            + (
                f" ({summary.resumed} rows kept from the interrupted run)"
                if summary.resumed
                else ""
            )
        )
