"""``ancer train``: train a base classifier under Gaussian (l2) or uniform (l1) noise (or without
noise, ``--sigma 0``), or with ``--denoiser`` a denoiser for denoised smoothing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ancer_cli.artifacts import check_new_output
from ancer_cli.cli.common import (
    ClassesOption,
    DeviceOption,
    ForceOption,
    ResumeOption,
    SeedOption,
    console,
    handle_errors,
    label_notes,
    positive,
    progress_bar,
)
from ancer_cli.core.choices import Norm
from ancer_cli.errors import AncerError
from ancer_cli.runtime import describe_device, resolve_device
from ancer_cli.settings import (
    DEFAULT_LR,
    LEARNING_RATES,
    NOISY_SAMPLES,
    DenoiserConfig,
    TrainConfig,
    Training,
    check_training,
    method_settings,
    option_name,
    setting_method,
)
from ancer_cli.settings import DenoiserObjective as Objective

D = TrainConfig(arch="cnn")
DD = DenoiserConfig(depth=0, width=0)
STABILITY = "Stability training (--training stability)"
CONSISTENCY = "Consistency (--training consistency)"
MACER = "MACER (--training macer, l2)"
SMOOTHADV = "SmoothAdv (--training smoothadv, l2)"


def train_command(
    ctx: typer.Context,
    dataset: Annotated[
        str, typer.Option(help="Dataset: digits (embedded), mnist, cifar10, imagenet or folder.")
    ] = "digits",
    data_root: Annotated[
        Path | None, typer.Option(help="Folder holding the dataset (not needed for digits).")
    ] = None,
    download: Annotated[
        bool, typer.Option("--download", help="Download mnist/cifar10 into --data-root if missing.")
    ] = False,
    classes: ClassesOption = None,
    arch: Annotated[
        str | None,
        typer.Option(
            help="Architecture (cnn, resnet18, resnet20, resnet110, wideresnet40, "
            "resnet50, or package.module:factory); default per dataset."
        ),
    ] = None,
    norm: Annotated[Norm, typer.Option(help="Noise: l2 = Gaussian, l1 = uniform.")] = D.norm,
    sigma: Annotated[
        float | None,
        typer.Option(
            help=f"Noise standard deviation in [0,1] pixel units (l1: theta = sqrt(3)*sigma); "
            f"0 trains a clean classifier; default {D.sigma}. With --denoiser: the largest "
            f"noise level trained on, default {DD.sigma_max}.",
            show_default=False,
        ),
    ] = None,
    epochs: Annotated[
        int, typer.Option(help="Number of passes over the training split.")
    ] = D.epochs,
    batch_size: Annotated[int, typer.Option(help="Training images per step.")] = D.batch_size,
    lr: Annotated[
        float | None,
        typer.Option(
            help=f"Initial learning rate: SGD, default {DEFAULT_LR} (--training macer: "
            f"{LEARNING_RATES[Training.macer]}, Zhai et al. 2020); with --denoiser Adam, "
            f"default {DD.lr}, decayed along a cosine.",
            show_default=False,
        ),
    ] = None,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = D.momentum,
    weight_decay: Annotated[float, typer.Option(help="L2 weight decay.")] = D.weight_decay,
    lr_step: Annotated[int, typer.Option(help="Epochs between learning-rate decays.")] = D.lr_step,
    lr_gamma: Annotated[float, typer.Option(help="Learning-rate decay factor.")] = D.lr_gamma,
    training: Annotated[
        Training,
        typer.Option(
            metavar="<method>",
            help="noise (Cohen et al. 2019), stability (Li et al. 2019), consistency (Jeong & "
            "Shin 2020), macer (Zhai et al. 2020) or smoothadv (Salman et al. 2019): "
            "docs/training.md. macer and smoothadv are for l2 only.",
        ),
    ] = D.training,
    noisy_samples: Annotated[
        int | None,
        typer.Option(
            help="Noisy copies of each image per step; default by --training: "
            + ", ".join(f"{t.value} {n}" for t, n in NOISY_SAMPLES.items())
            + " (stability uses at least 2).",
            show_default=False,
        ),
    ] = None,
    stability_weight: Annotated[
        float | None,
        typer.Option(
            help=f"Stability training (Li et al. 2019): weight of the KL term; "
            f"default {D.stability_weight}.",
            show_default=False,
            rich_help_panel=STABILITY,
        ),
    ] = None,
    consistency_weight: Annotated[
        float | None,
        typer.Option(
            help=f"Consistency (Jeong & Shin 2020): weight lambda of the KL term; "
            f"default {D.consistency_weight}.",
            show_default=False,
            rich_help_panel=CONSISTENCY,
        ),
    ] = None,
    entropy_weight: Annotated[
        float | None,
        typer.Option(
            help=f"Consistency (Jeong & Shin 2020): weight eta of the entropy term; "
            f"default {D.entropy_weight}.",
            show_default=False,
            rich_help_panel=CONSISTENCY,
        ),
    ] = None,
    macer_weight: Annotated[
        float | None,
        typer.Option(
            help=f"MACER (Zhai et al. 2020): weight lambda of the robustness term; "
            f"default {D.macer_weight}.",
            show_default=False,
            rich_help_panel=MACER,
        ),
    ] = None,
    macer_beta: Annotated[
        float | None,
        typer.Option(
            help=f"MACER (Zhai et al. 2020): inverse temperature beta of the soft smoothed "
            f"classifier; default {D.macer_beta}.",
            show_default=False,
            rich_help_panel=MACER,
        ),
    ] = None,
    macer_margin: Annotated[
        float | None,
        typer.Option(
            help=f"MACER (Zhai et al. 2020): hinge gamma on Phi^-1(p_y) - Phi^-1(p_c); "
            f"default {D.macer_margin}.",
            show_default=False,
            rich_help_panel=MACER,
        ),
    ] = None,
    macer_warmup: Annotated[
        int | None,
        typer.Option(
            help=f"MACER (Zhai et al. 2020): epochs trained without the robustness term "
            f"first; default {D.macer_warmup}.",
            show_default=False,
            rich_help_panel=MACER,
        ),
    ] = None,
    smoothadv_eps: Annotated[
        float | None,
        typer.Option(
            help=f"SmoothAdv (Salman et al. 2019): l2 radius of the PGD attack, [0,1] pixel "
            f"units; default {D.smoothadv_eps}.",
            show_default=False,
            rich_help_panel=SMOOTHADV,
        ),
    ] = None,
    smoothadv_steps: Annotated[
        int | None,
        typer.Option(
            help=f"SmoothAdv (Salman et al. 2019): PGD steps, each of size 2*eps/steps; "
            f"default {D.smoothadv_steps}.",
            show_default=False,
            rich_help_panel=SMOOTHADV,
        ),
    ] = None,
    smoothadv_warmup: Annotated[
        int | None,
        typer.Option(
            help=f"SmoothAdv (Salman et al. 2019): epochs over which eps grows linearly to "
            f"--smoothadv-eps; default {D.smoothadv_warmup}.",
            show_default=False,
            rich_help_panel=SMOOTHADV,
        ),
    ] = None,
    denoiser: Annotated[
        bool,
        typer.Option(
            "--denoiser",
            help="Train a denoiser (noisy image + noise-level map -> image) for --denoiser on "
            "certify and predict, instead of a classifier.",
        ),
    ] = False,
    objective: Annotated[
        Objective,
        typer.Option(
            help="Denoiser loss: mse to the clean image, or classifier: cross-entropy of the "
            "frozen --classifier on the denoised image."
        ),
    ] = DD.objective,
    classifier: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="Frozen classifier for --objective classifier (its accuracy on denoised test "
            "images is reported each epoch).",
        ),
    ] = None,
    out: Annotated[Path, typer.Option(help="Checkpoint file, written after every epoch.")] = Path(
        "model.pt"
    ),
    resume: ResumeOption = False,
    force: ForceOption = False,
    device: DeviceOption = "auto",
    seed: SeedOption = 0,
) -> None:
    """Train a base classifier under noise, one checkpoint per epoch.

    Each epoch reports the training loss and the clean and noisy test accuracy (with --denoiser:
    the PSNR of denoised test images at a few noise levels).
    """
    if sigma is not None and sigma < 0:
        raise typer.BadParameter(f"must be >= 0, got {sigma}", param_hint="--sigma")
    if denoiser and sigma is not None:
        positive("--sigma", sigma)
    positive("--epochs", epochs)
    positive("--batch-size", batch_size)
    if lr is not None:
        positive("--lr", lr)
    positive("--lr-step", lr_step)
    if not denoiser and (classifier is not None or objective is not DD.objective):
        raise typer.BadParameter("--objective and --classifier need --denoiser")
    settings = _method_settings(
        ctx, training, denoiser, norm, D.sigma if sigma is None else sigma, noisy_samples
    )
    if objective is Objective.classifier and classifier is None:
        raise typer.BadParameter("--objective classifier needs --classifier MODEL")
    if denoiser:
        _train_denoiser(
            dataset, data_root, download, classes, norm, sigma, epochs, batch_size, lr,
            objective, classifier, out, resume, force, device, seed,
        )  # fmt: skip
        return
    sigma = D.sigma if sigma is None else sigma

    from ancer_cli.data import dataset_info, load_dataset
    from ancer_cli.models import check_architecture
    from ancer_cli.train import train

    with handle_errors():
        check_new_output(out, force=force, resume=resume)
        torch_device = resolve_device(device)
        info = dataset_info(dataset, data_root, classes)
        config = TrainConfig(
            arch=arch or info.default_arch,
            norm=norm,
            sigma=sigma,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            lr_step=lr_step,
            lr_gamma=lr_gamma,
            training=training,
            noisy_samples=noisy_samples,
            seed=seed,
            **settings,
        )
        check_architecture(config.arch)
        train_data = load_dataset(dataset, "train", data_root, download, classes)
        test_data = load_dataset(dataset, "test", data_root, download, classes)
        console.print(
            f"training [bold]{config.arch}[/] on {dataset} ({train_data.size} train, "
            f"{test_data.size} test) with {norm.value} noise sigma={sigma} "
            f"on {describe_device(torch_device)}, {_describe_training(config)}"
        )
        for note in label_notes(train_data, train_data.info.num_classes):
            console.print(note, markup=False)
        with progress_bar() as progress:
            task = progress.add_task("train", total=None, status="")
            for report in train(
                config,
                train_data,
                test_data,
                torch_device,
                out,
                resume=resume and out.exists(),
                on_batch=lambda done, total: progress.update(task, completed=done, total=total),
            ):
                progress.update(
                    task,
                    description=f"epoch {report.epoch}/{report.epochs}",
                )
                noisy = (
                    "test noisy acc -- (sigma 0)"
                    if report.noisy_accuracy is None
                    else f"test noisy acc {report.noisy_accuracy:.3f}"
                )
                progress.console.print(
                    f"epoch {report.epoch:>3}/{report.epochs}  loss {report.train_loss:.4f}  "
                    f"train acc {report.train_accuracy:.3f}  test clean acc {report.clean_accuracy:.3f}  "
                    f"{noisy}  lr {report.lr:.4g}  {report.seconds:.1f}s"
                )
        console.print(f"saved {out}")


def _method_settings(
    ctx: typer.Context,
    training: Training,
    denoiser: bool,
    norm: Norm,
    sigma: float,
    noisy_samples: int | None,
) -> dict[str, Any]:
    """The method options given on the command line, by :class:`TrainConfig` field name; a usage
    error for one that belongs to another --training (or any with --denoiser), or one that
    --training, --norm and --sigma rule out."""
    given = {name: ctx.params[name] for name in method_settings() if ctx.params[name] is not None}
    if denoiser:
        offending = [*given, *(["noisy_samples"] if noisy_samples is not None else [])]
        if training is not Training.noise or offending:
            option = option_name(offending[0]) if offending else f"--training {training.value}"
            raise typer.BadParameter(f"{option} trains a classifier; --denoiser takes none")
        return {}
    for name in given:
        if setting_method(name) is not training:
            raise typer.BadParameter(
                f"{option_name(name)} goes with --training {setting_method(name).value}, "
                f"not {training.value}"
            )
    copies = NOISY_SAMPLES[training] if noisy_samples is None else noisy_samples
    try:
        check_training(training, norm, sigma, copies, given)
    except AncerError as error:
        raise typer.BadParameter(str(error)) from None
    return given


def _describe_training(config: TrainConfig) -> str:
    """``training consistency (--noisy-samples 2 --consistency-weight 10.0 ...)``."""
    names = ["noisy_samples", *method_settings(config.training)]
    settings = " ".join(f"{option_name(name)} {getattr(config, name)}" for name in names)
    return f"training {config.training.value} ({settings})"


def _train_denoiser(
    dataset: str,
    data_root: Path | None,
    download: bool,
    classes: Path | None,
    norm: Norm,
    sigma: float | None,
    epochs: int,
    batch_size: int,
    lr: float | None,
    objective: Objective,
    classifier: Path | None,
    out: Path,
    resume: bool,
    force: bool,
    device: str,
    seed: int,
) -> None:
    """``ancer train --denoiser``: train a DnCNN denoiser, one checkpoint per epoch."""
    from ancer_cli.data import dataset_info, load_dataset
    from ancer_cli.denoise import train_denoiser
    from ancer_cli.inputs import check_compatible
    from ancer_cli.models import load_model
    from ancer_cli.models.denoisers import denoiser_size

    with handle_errors():
        check_new_output(out, force=force, resume=resume)
        torch_device = resolve_device(device)
        info = dataset_info(dataset, data_root, classes)
        train_data = load_dataset(dataset, "train", data_root, download, classes)
        test_data = load_dataset(dataset, "test", data_root, download, classes)
        frozen = None
        classifier_sha256 = None
        if classifier is not None:
            loaded = load_model(classifier, torch_device)
            check_compatible(loaded.module, test_data, torch_device, str(classifier))
            frozen, classifier_sha256 = loaded.module, loaded.sha256
        depth, width = denoiser_size(info.name)
        config = DenoiserConfig(
            depth=depth,
            width=width,
            norm=norm,
            sigma_max=DD.sigma_max if sigma is None else sigma,
            epochs=epochs,
            batch_size=batch_size,
            lr=DD.lr if lr is None else lr,
            objective=objective,
            classifier=str(classifier) if classifier is not None else None,
            classifier_sha256=classifier_sha256,
            seed=seed,
        )
        if config.sigma_max <= 0:
            raise AncerError("--sigma must be > 0 for a denoiser")
        console.print(
            f"training a denoiser (dncnn, {depth} layers of {width}) on {dataset} "
            f"({train_data.size} train, {test_data.size} test) with "
            f"{norm.value} noise up to sigma={config.sigma_max}, objective {objective.value} "
            f"on {describe_device(torch_device)}"
        )
        with progress_bar() as progress:
            task = progress.add_task("train", total=None, status="")
            for report in train_denoiser(
                config,
                train_data,
                test_data,
                torch_device,
                out,
                classifier=frozen,
                resume=resume and out.exists(),
                on_batch=lambda done, total: progress.update(task, completed=done, total=total),
            ):
                progress.update(task, description=f"epoch {report.epoch}/{report.epochs}")
                psnr = "  ".join(f"{s:g}:{v:.2f}" for s, v in report.psnr.items())
                accuracy = (
                    "  denoised acc "
                    + "  ".join(f"{s:g}:{v:.3f}" for s, v in report.accuracy.items())
                    if report.accuracy is not None
                    else ""
                )
                progress.console.print(
                    f"epoch {report.epoch:>3}/{report.epochs}  loss {report.train_loss:.5f}  "
                    f"test PSNR dB by sigma {psnr}{accuracy}  {report.seconds:.1f}s"
                )
        console.print(f"saved {out}")
