"""``ancer optimize``: per-input smoothing parameters (isotropic data-dependent or ANCER)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ancer_cli.cli.common import (
    OUTPUT,
    RUN,
    WHAT,
    ChannelsLastOption,
    ClassesOption,
    DenoiserOption,
    DeviceOption,
    ForceOption,
    MaxIndexOption,
    PrecisionOption,
    ResumeOption,
    SeedOption,
    at_least_one,
    console,
    handle_errors,
    label_notes,
    positive,
    progress_bar,
)
from ancer_cli.cli.common import out as stdout
from ancer_cli.core.choices import Norm, Precision
from ancer_cli.core.optimize.config import (
    AncerConfig,
    GuardedAncerConfig,
    IsotropicConfig,
    IsotropicSearchConfig,
)
from ancer_cli.settings import OptimizeJob, ThetaMethod, ThetaObjective

if TYPE_CHECKING:
    from ancer_cli.distributed import Session
    from ancer_cli.optimize import OptimizePlan

ISO = IsotropicConfig()
ANC = AncerConfig()
SEARCH = IsotropicSearchConfig()
GUARDED = GuardedAncerConfig()
JOB = OptimizeJob()
HOW = "How to optimize"


def optimize_command(
    model: Annotated[
        Path,
        typer.Option(
            help="Model file (ancer checkpoint, TorchScript or torch.export).", rich_help_panel=WHAT
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            help="Output folder for theta_{split}_{idx}.pt files and manifest.json.",
            rich_help_panel=OUTPUT,
        ),
    ],
    method: Annotated[
        ThetaMethod,
        typer.Option(
            help="ancer: anisotropic (runs the isotropic stage first); isotropic: one theta per input.",
            rich_help_panel=HOW,
        ),
    ] = JOB.method,
    dataset: Annotated[
        str | None, typer.Option(help="Dataset (default: the model's).", rich_help_panel=WHAT)
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option(help="Folder holding the dataset.", rich_help_panel=WHAT)
    ] = None,
    split: Annotated[
        str, typer.Option(help="Dataset split: test or train.", rich_help_panel=WHAT)
    ] = "test",
    norm: Annotated[
        Norm | None,
        typer.Option(
            help="l2 (Gaussian) or l1 (uniform); default from the model.", rich_help_panel=WHAT
        ),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(help="Architecture for a plain state-dict model file.", rich_help_panel=WHAT),
    ] = None,
    classes: ClassesOption = None,
    sigma: Annotated[
        float | None,
        typer.Option(
            help="Initial noise standard deviation in pixel units (default: the model's training sigma).",
            rich_help_panel=HOW,
        ),
    ] = None,
    isotropic_thetas: Annotated[
        Path | None,
        typer.Option(
            help="Reuse this isotropic thetas folder (or values file: one sigma per dataset index or per selected input) instead of the isotropic stage.",
            rich_help_panel=HOW,
        ),
    ] = None,
    objective: Annotated[
        ThetaObjective,
        typer.Option(
            help="certified: isotropic search scored by the radius hard votes certify, then a "
            "few ANCER steps kept only if they beat it (never worse than the start); reference: "
            "the published algorithms and schedules.",
            rich_help_panel=HOW,
        ),
    ] = JOB.objective,
    iso_iterations: Annotated[
        int | None,
        typer.Option(
            help=f"--objective reference: gradient-ascent steps of the isotropic stage "
            f"\\[default: {ISO.iterations}].",
            show_default=False,
            rich_help_panel=HOW,
        ),
    ] = None,
    iso_lr: Annotated[
        float | None,
        typer.Option(
            help=f"--objective reference: step size of the isotropic stage (pixel units per "
            f"unit gradient) \\[default: {ISO.lr}].",
            show_default=False,
            rich_help_panel=HOW,
        ),
    ] = None,
    iso_samples: Annotated[
        int | None,
        typer.Option(
            help=f"Noisy samples per input per isotropic step (reference) or per searched "
            f"theta (certified) \\[default: {ISO.samples} / {SEARCH.samples}].",
            show_default=False,
            rich_help_panel=HOW,
        ),
    ] = None,
    iterations: Annotated[
        int | None,
        typer.Option(
            help=f"Adam steps of the ANCER stage, at most (certified stops early) "
            f"\\[default: {ANC.iterations} reference / {GUARDED.iterations} certified].",
            show_default=False,
            rich_help_panel=HOW,
        ),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(
            help=f"Adam learning rate of the ANCER stage, on theta (reference) or on "
            f"log(theta / theta_iso) (certified) \\[default: {ANC.lr} / {GUARDED.lr}].",
            show_default=False,
            rich_help_panel=HOW,
        ),
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option(
            help=f"Noisy samples per input per ANCER step "
            f"\\[default: {ANC.samples} / {GUARDED.samples}].",
            show_default=False,
            rich_help_panel=HOW,
        ),
    ] = None,
    kappa: Annotated[
        float,
        typer.Option(
            help="Weight of the min(theta) term in the ANCER objective.", rich_help_panel=HOW
        ),
    ] = ANC.kappa,
    guard_samples: Annotated[
        int | None,
        typer.Option(
            help=f"--objective certified: fresh noisy samples on which the guard compares the "
            f"ANCER and isotropic thetas \\[default: {GUARDED.guard_samples}].",
            show_default=False,
            rich_help_panel=HOW,
        ),
    ] = None,
    sound: Annotated[
        bool | None,
        typer.Option(
            "--sound/--no-sound",
            help="--objective certified: the noise thetas are scored under, the one certify "
            "draws: sound, on the data's pixel grid and clipped (default wherever the data has "
            "a grid); --no-sound: float noise, for thetas certified with --no-sound.",
            show_default=False,
            rich_help_panel=HOW,
        ),
    ] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            help="Inputs optimized together (x samples noisy copies per forward).",
            rich_help_panel=RUN,
        ),
    ] = JOB.batch_size,
    skip: Annotated[
        int, typer.Option(help="Optimize every SKIP-th input of the split.", rich_help_panel=WHAT)
    ] = 1,
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
    at_least_one("--max", max_index)
    if sound is not None and objective is ThetaObjective.reference:
        raise typer.BadParameter(
            "--sound/--no-sound goes with --objective certified (the published algorithms "
            "draw float noise)"
        )
    if isotropic_thetas is not None and method is ThetaMethod.isotropic:
        raise typer.BadParameter("--isotropic-thetas goes with --method ancer")
    schedules = _schedules(
        objective, iso_iterations, iso_lr, iso_samples, iterations, lr, samples, kappa,
        guard_samples,
    )  # fmt: skip

    from ancer_cli.distributed import session
    from ancer_cli.optimize import OptimizeRequest, plan_optimize
    from ancer_cli.run.spec import InputsSpec
    from ancer_cli.thetas import MANIFEST_NAME

    inputs = InputsSpec(
        model=model, sigma=sigma, dataset=dataset, data_root=data_root, split=split, norm=norm,
        arch=arch, classes=classes, skip=skip, max_index=max_index, precision=precision,
        channels_last=channels_last, denoiser=denoiser, sound=sound,
    )  # fmt: skip
    job = OptimizeJob(
        method=method, objective=objective, batch_size=batch_size, seed=seed, **schedules
    )
    request = OptimizeRequest(
        inputs=inputs, out=out, job=job, isotropic_thetas=isotropic_thetas, resume=resume,
        force=force,
    )  # fmt: skip
    with handle_errors(), session(device) as where:
        plan = plan_optimize(request, where)
        job, main = plan.job, where.ranks.is_main
        if main:
            console.print(_describe(plan, where))
            for note in [*label_notes(plan.inputs.data, plan.inputs.logits), *plan.inputs.notes]:
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

            summary = plan.execute(where, progress=report, on_start=start)
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
    from ancer_cli.runtime import describe_device

    job, data, denoiser = plan.job, plan.inputs.data, plan.request.inputs.denoiser
    noise = f"sound noise on the 1/{job.grid} grid" if job.grid else "float noise"
    if job.objective is ThetaObjective.reference:
        noise = "float noise, as published"
    return (
        f"optimizing {job.method.value} thetas ({job.objective.value} objective) for "
        f"{len(plan.indices)} {data.info.name} {data.split} inputs "
        f"({job.norm.value}, start sigma={job.sigma}, {noise}"
        + (f", denoiser {denoiser}" if denoiser else "")
        + f") on {describe_device(where.device)}"
        + (f" and {where.ranks.world_size - 1} more ranks" if where.ranks.distributed else "")
    )


def _schedules(
    objective: ThetaObjective,
    iso_iterations: int | None,
    iso_lr: float | None,
    iso_samples: int | None,
    iterations: int | None,
    lr: float | None,
    samples: int | None,
    kappa: float,
    guard_samples: int | None,
) -> dict[str, Any]:
    """The configurations of both objectives from the options (``None``: the objective's
    default); options that mean nothing for the chosen objective are usage errors."""
    if objective is ThetaObjective.certified:
        for name, value in (("--iso-iterations", iso_iterations), ("--iso-lr", iso_lr)):
            if value is not None:
                raise typer.BadParameter(f"{name} goes with --objective reference")
    elif guard_samples is not None:
        raise typer.BadParameter("--guard-samples goes with --objective certified")

    def given(**values: Any) -> dict[str, Any]:
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
