"""``ancer optimize``: per-input smoothing parameters (isotropic data-dependent or ANCER)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ancer_cli.artifacts import MANIFEST_NAME
from ancer_cli.cli.common import (
    ChannelsLastOption,
    ClassesOption,
    DeviceOption,
    ForceOption,
    MaxIndexOption,
    PrecisionOption,
    ResumeOption,
    SeedOption,
    console,
    handle_errors,
    label_notes,
    non_negative,
    positive,
    progress_bar,
)
from ancer_cli.cli.common import out as stdout
from ancer_cli.core.noise import Norm
from ancer_cli.core.optimize import AncerConfig, IsotropicConfig
from ancer_cli.core.precision import Precision
from ancer_cli.distributed import session
from ancer_cli.optimize import Method, OptimizeJob, OptimizeRequest, plan_optimize
from ancer_cli.runtime import describe_device

ISO = IsotropicConfig()
ANC = AncerConfig()
JOB = OptimizeJob(method=Method.ancer, norm=Norm.l2, sigma=0.25)


def optimize_command(
    model: Annotated[
        Path, typer.Option(help="Model file (ancer checkpoint, TorchScript or torch.export).")
    ],
    out: Annotated[
        Path, typer.Option(help="Output folder for theta_{split}_{idx}.pt files and manifest.json.")
    ],
    method: Annotated[
        Method,
        typer.Option(
            help="ancer: anisotropic (runs the isotropic stage first); isotropic: one theta per input."
        ),
    ] = JOB.method,
    dataset: Annotated[str | None, typer.Option(help="Dataset (default: the model's).")] = None,
    data_root: Annotated[Path | None, typer.Option(help="Folder holding the dataset.")] = None,
    split: Annotated[str, typer.Option(help="Dataset split: test or train.")] = "test",
    norm: Annotated[
        Norm | None, typer.Option(help="l2 (Gaussian) or l1 (uniform); default from the model.")
    ] = None,
    arch: Annotated[
        str | None, typer.Option(help="Architecture for a plain state-dict model file.")
    ] = None,
    classes: ClassesOption = None,
    sigma: Annotated[
        float | None,
        typer.Option(
            help="Initial noise standard deviation in pixel units (default: the model's training sigma)."
        ),
    ] = None,
    isotropic_thetas: Annotated[
        Path | None,
        typer.Option(
            help="Reuse this isotropic thetas folder (or values file: one sigma per dataset index or per selected input) instead of the isotropic stage."
        ),
    ] = None,
    iso_iterations: Annotated[
        int, typer.Option(help="Gradient-ascent steps of the isotropic stage.")
    ] = ISO.iterations,
    iso_lr: Annotated[
        float,
        typer.Option(help="Step size of the isotropic stage (pixel units per unit gradient)."),
    ] = ISO.lr,
    iso_samples: Annotated[
        int, typer.Option(help="Noisy samples per input per isotropic step.")
    ] = ISO.samples,
    iterations: Annotated[
        int, typer.Option(help="Adam steps of the ANCER stage.")
    ] = ANC.iterations,
    lr: Annotated[float, typer.Option(help="Adam learning rate of the ANCER stage.")] = ANC.lr,
    samples: Annotated[
        int, typer.Option(help="Noisy samples per input per ANCER step.")
    ] = ANC.samples,
    kappa: Annotated[
        float, typer.Option(help="Weight of the min(theta) term in the ANCER objective.")
    ] = ANC.kappa,
    batch_size: Annotated[
        int, typer.Option(help="Inputs optimized together (x samples noisy copies per forward).")
    ] = JOB.batch_size,
    skip: Annotated[int, typer.Option(help="Optimize every SKIP-th input of the split.")] = 1,
    max_index: MaxIndexOption = None,
    precision: PrecisionOption = Precision.fp32,
    channels_last: ChannelsLastOption = False,
    resume: ResumeOption = False,
    force: ForceOption = False,
    device: DeviceOption = "auto",
    seed: SeedOption = 0,
) -> None:
    """Optimize the smoothing parameter theta of each input and save one file per input."""
    for name, value in [
        ("--iso-iterations", iso_iterations),
        ("--iso-samples", iso_samples),
        ("--iterations", iterations),
        ("--samples", samples),
        ("--batch-size", batch_size),
        ("--skip", skip),
        ("--iso-lr", iso_lr),
        ("--lr", lr),
    ]:
        positive(name, value)
    if kappa < 0:
        raise typer.BadParameter(f"--kappa must be >= 0, got {kappa}")
    if sigma is not None:
        positive("--sigma", sigma)
    non_negative("--max", max_index)
    if isotropic_thetas is not None and method is Method.isotropic:
        raise typer.BadParameter("--isotropic-thetas goes with --method ancer")
    request = OptimizeRequest(
        model=model, out=out, method=method, dataset=dataset, data_root=data_root, split=split,
        norm=norm, arch=arch, classes=classes, sigma=sigma, isotropic_thetas=isotropic_thetas,
        isotropic=IsotropicConfig(iso_iterations, iso_lr, iso_samples),
        ancer=AncerConfig(iterations, lr, samples, kappa), batch_size=batch_size, skip=skip,
        max_index=max_index, precision=precision, channels_last=channels_last, resume=resume,
        force=force, seed=seed,
    )  # fmt: skip
    with handle_errors(), session(device) as where:
        plan = plan_optimize(request, where)
        job, main = plan.job, where.ranks.is_main
        if main:
            console.print(
                f"optimizing {method.value} thetas for {len(plan.indices)} "
                f"{plan.data.info.name} {plan.data.split} inputs ({job.norm.value}, start "
                f"sigma={job.sigma}) on {describe_device(where.device)}"
                + (
                    f" and {where.ranks.world_size - 1} more ranks"
                    if where.ranks.distributed
                    else ""
                )
            )
            for note in label_notes(plan.data, plan.logits):
                console.print(note, markup=False)
        with progress_bar(enabled=main) as progress:
            task = progress.add_task("optimize", total=None, status="")
            steps = {"isotropic": job.isotropic.iterations, "ancer": job.ancer.iterations}

            def report(stage: str, inputs_done: int, iteration: int, value: float) -> None:
                status = "" if stage == "done" else (
                    f"{stage} step {iteration}/{steps[stage]} objective {value:.4f}"
                )  # fmt: skip
                progress.update(task, completed=inputs_done, status=status)

            def start(kept: int, mine: int) -> None:
                progress.update(task, total=mine, completed=0)

            summary = plan.run(where, progress=report, on_start=start)
        if summary is None:  # rank 0 reports
            return
        stdout.print(
            f"{out}: {summary.optimized} inputs optimized"
            + (f", {summary.kept} kept from the interrupted run" if summary.kept else "")
            + f" in {summary.seconds:.1f}s; mean min(theta) {summary.mean_min_theta:.4f}, "
            f"mean geomean(theta) {summary.mean_geomean_theta:.4f}; manifest {out / MANIFEST_NAME}"
        )
