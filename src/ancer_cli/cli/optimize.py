"""``ancer optimize``: per-input smoothing parameters (isotropic data-dependent or ANCER)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer

from ancer_cli.cli.common import (
    ChannelsLastOption,
    ClassesOption,
    DenoiserOption,
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
from ancer_cli.core.optimize import (
    AncerConfig,
    GuardedAncerConfig,
    IsotropicConfig,
    IsotropicSearchConfig,
)
from ancer_cli.core.precision import Precision
from ancer_cli.distributed import Session, session
from ancer_cli.optimize import (
    Method,
    Objective,
    OptimizeJob,
    OptimizePlan,
    OptimizeRequest,
    plan_optimize,
)
from ancer_cli.runtime import describe_device
from ancer_cli.thetas import MANIFEST_NAME

ISO = IsotropicConfig()
ANC = AncerConfig()
SEARCH = IsotropicSearchConfig()
GUARDED = GuardedAncerConfig()
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
    objective: Annotated[
        Objective,
        typer.Option(
            help="certified: isotropic search scored by the radius hard votes certify, then a "
            "few ANCER steps kept only if they beat it (never worse than the start); reference: "
            "the published algorithms and schedules."
        ),
    ] = JOB.objective,
    iso_iterations: Annotated[
        int | None,
        typer.Option(
            help=f"--objective reference: gradient-ascent steps of the isotropic stage "
            f"\\[default: {ISO.iterations}].",
            show_default=False,
        ),
    ] = None,
    iso_lr: Annotated[
        float | None,
        typer.Option(
            help=f"--objective reference: step size of the isotropic stage (pixel units per "
            f"unit gradient) \\[default: {ISO.lr}].",
            show_default=False,
        ),
    ] = None,
    iso_samples: Annotated[
        int | None,
        typer.Option(
            help=f"Noisy samples per input per isotropic step (reference) or per searched "
            f"theta (certified) \\[default: {ISO.samples} / {SEARCH.samples}].",
            show_default=False,
        ),
    ] = None,
    iterations: Annotated[
        int | None,
        typer.Option(
            help=f"Adam steps of the ANCER stage, at most (certified stops early) "
            f"\\[default: {ANC.iterations} reference / {GUARDED.iterations} certified].",
            show_default=False,
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            help=f"Adam learning rate of the ANCER stage, on theta (reference) or on "
            f"log(theta / theta_iso) (certified) \\[default: {ANC.lr} / {GUARDED.lr}].",
            show_default=False,
        ),
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option(
            help=f"Noisy samples per input per ANCER step "
            f"\\[default: {ANC.samples} / {GUARDED.samples}].",
            show_default=False,
        ),
    ] = None,
    kappa: Annotated[
        float, typer.Option(help="Weight of the min(theta) term in the ANCER objective.")
    ] = ANC.kappa,
    guard_samples: Annotated[
        int | None,
        typer.Option(
            help=f"--objective certified: fresh noisy samples on which the guard compares the "
            f"ANCER and isotropic thetas \\[default: {GUARDED.guard_samples}].",
            show_default=False,
        ),
    ] = None,
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
    denoiser: DenoiserOption = None,
) -> None:
    """Optimize each input's smoothing parameter theta, one file each.

    ANCER (one theta per pixel, after an isotropic stage) or isotropic (one theta per input).
    """
    for name, value in [
        ("--iso-iterations", iso_iterations),
        ("--iso-samples", iso_samples),
        ("--iterations", iterations),
        ("--samples", samples),
        ("--guard-samples", guard_samples),
        ("--batch-size", batch_size),
        ("--skip", skip),
        ("--iso-lr", iso_lr),
        ("--lr", lr),
    ]:
        if value is not None:
            positive(name, value)
    if kappa < 0:
        raise typer.BadParameter(f"--kappa must be >= 0, got {kappa}")
    if sigma is not None:
        positive("--sigma", sigma)
    non_negative("--max", max_index)
    if isotropic_thetas is not None and method is Method.isotropic:
        raise typer.BadParameter("--isotropic-thetas goes with --method ancer")
    schedules = _schedules(
        objective, iso_iterations, iso_lr, iso_samples, iterations, lr, samples, kappa,
        guard_samples,
    )  # fmt: skip
    request = OptimizeRequest(
        model=model, out=out, method=method, dataset=dataset, data_root=data_root, split=split,
        norm=norm, arch=arch, classes=classes, sigma=sigma, isotropic_thetas=isotropic_thetas,
        objective=objective, **schedules, batch_size=batch_size, skip=skip,
        max_index=max_index, precision=precision, channels_last=channels_last, resume=resume,
        force=force, seed=seed, denoiser=denoiser,
    )  # fmt: skip
    with handle_errors(), session(device) as where:
        plan = plan_optimize(request, where)
        job, main = plan.job, where.ranks.is_main
        if main:
            console.print(_describe(plan, where))
            for note in label_notes(plan.data, plan.logits):
                console.print(note, markup=False)
        with progress_bar(enabled=main) as progress:
            task = progress.add_task("optimize", total=None, status="")
            steps = {"isotropic": job.isotropic.iterations, "ancer": job.ancer_steps}

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
            + f" in {summary.seconds:.1f}s ({summary.forward_equivalents:,.0f} forward-equivalents "
            f"per input); mean min(theta) {summary.mean_min_theta:.4f}, mean geomean(theta) "
            f"{summary.mean_geomean_theta:.4f}; manifest {out / MANIFEST_NAME}"
        )


def _describe(plan: OptimizePlan, where: Session) -> str:
    job = plan.job
    return (
        f"optimizing {job.method.value} thetas ({job.objective.value} objective) for "
        f"{len(plan.indices)} {plan.data.info.name} {plan.data.split} inputs "
        f"({job.norm.value}, start sigma={job.sigma}"
        + (f", denoiser {plan.request.denoiser}" if plan.request.denoiser else "")
        + f") on {describe_device(where.device)}"
        + (f" and {where.ranks.world_size - 1} more ranks" if where.ranks.distributed else "")
    )


def _schedules(
    objective: Objective,
    iso_iterations: int | None,
    iso_lr: float | None,
    iso_samples: int | None,
    iterations: int | None,
    lr: float | None,
    samples: int | None,
    kappa: float,
    guard_samples: int | None,
) -> dict[str, object]:
    """The configurations of both objectives from the options (``None``: the objective's
    default); options that mean nothing for the chosen objective are usage errors."""
    if objective is Objective.certified:
        for name, value in (("--iso-iterations", iso_iterations), ("--iso-lr", iso_lr)):
            if value is not None:
                raise typer.BadParameter(f"{name} goes with --objective reference")
    elif guard_samples is not None:
        raise typer.BadParameter("--guard-samples goes with --objective certified")

    def given(**values: object) -> dict[str, object]:
        return {key: value for key, value in values.items() if value is not None}

    return {
        "isotropic": replace(
            ISO, **given(iterations=iso_iterations, lr=iso_lr, samples=iso_samples)
        ),
        "ancer": replace(ANC, **given(iterations=iterations, lr=lr, samples=samples), kappa=kappa),
        "search": replace(SEARCH, **given(samples=iso_samples)),
        "guarded": replace(
            GUARDED,
            **given(iterations=iterations, lr=lr, samples=samples, guard_samples=guard_samples),
            kappa=kappa,
        ),
    }
