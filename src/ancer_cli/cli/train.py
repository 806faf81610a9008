"""``ancer train``: train a base classifier under Gaussian (l2) or uniform (l1) noise."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
from ancer_cli.core.noise import Norm
from ancer_cli.data import dataset_info, load_dataset
from ancer_cli.models import check_architecture
from ancer_cli.runtime import describe_device, resolve_device
from ancer_cli.train import TrainConfig, Training, train

D = TrainConfig(arch="cnn")


def train_command(
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
        float,
        typer.Option(
            help="Noise standard deviation in [0,1] pixel units (l1: theta = sqrt(3)*sigma)."
        ),
    ] = D.sigma,
    epochs: Annotated[
        int, typer.Option(help="Number of passes over the training split.")
    ] = D.epochs,
    batch_size: Annotated[int, typer.Option(help="Training images per step.")] = D.batch_size,
    lr: Annotated[float, typer.Option(help="Initial SGD learning rate.")] = D.lr,
    momentum: Annotated[float, typer.Option(help="SGD momentum.")] = D.momentum,
    weight_decay: Annotated[float, typer.Option(help="L2 weight decay.")] = D.weight_decay,
    lr_step: Annotated[int, typer.Option(help="Epochs between learning-rate decays.")] = D.lr_step,
    lr_gamma: Annotated[float, typer.Option(help="Learning-rate decay factor.")] = D.lr_gamma,
    training: Annotated[
        Training,
        typer.Option(
            help="noise: cross-entropy on noisy inputs; stability: plus KL between two noisy copies."
        ),
    ] = D.training,
    stability_weight: Annotated[
        float, typer.Option(help="Weight of the KL term in stability training.")
    ] = D.stability_weight,
    noisy_samples: Annotated[
        int, typer.Option(help="Noisy copies of each image per step (stability uses at least 2).")
    ] = D.noisy_samples,
    out: Annotated[Path, typer.Option(help="Checkpoint file, written after every epoch.")] = Path(
        "model.pt"
    ),
    resume: ResumeOption = False,
    force: ForceOption = False,
    device: DeviceOption = "auto",
    seed: SeedOption = 0,
) -> None:
    """Train a base classifier under noise, one checkpoint per epoch.

    Each epoch reports the training loss and the clean and noisy test accuracy.
    """
    positive("--sigma", sigma)
    positive("--epochs", epochs)
    positive("--batch-size", batch_size)
    positive("--lr", lr)
    positive("--noisy-samples", noisy_samples)
    positive("--lr-step", lr_step)
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
            stability_weight=stability_weight,
            noisy_samples=noisy_samples,
            seed=seed,
        )
        check_architecture(config.arch)
        train_data = load_dataset(dataset, "train", data_root, download, classes)
        test_data = load_dataset(dataset, "test", data_root, download, classes)
        console.print(
            f"training [bold]{config.arch}[/] on {dataset} ({len(train_data.dataset)} train, "  # type: ignore[arg-type]
            f"{len(test_data.dataset)} test) with {norm.value} noise sigma={sigma} "  # type: ignore[arg-type]
            f"on {describe_device(torch_device)}"
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
                progress.console.print(
                    f"epoch {report.epoch:>3}/{report.epochs}  loss {report.train_loss:.4f}  "
                    f"train acc {report.train_accuracy:.3f}  test clean acc {report.clean_accuracy:.3f}  "
                    f"test noisy acc {report.noisy_accuracy:.3f}  lr {report.lr:.4g}  "
                    f"{report.seconds:.1f}s"
                )
        console.print(f"saved {out}")
