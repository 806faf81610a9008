"""``ancer optimize``: per-input smoothing parameters (isotropic data-dependent or ANCER)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from ancer_cli.artifacts import MANIFEST_NAME
from ancer_cli.certify import select_indices
from ancer_cli.cli.common import (
    ChannelsLastOption,
    DeviceOption,
    ForceOption,
    MaxIndexOption,
    PrecisionOption,
    ResumeOption,
    SeedOption,
    console,
    handle_errors,
    positive,
    progress_bar,
)
from ancer_cli.cli.common import (
    out as stdout,
)
from ancer_cli.core.noise import Norm
from ancer_cli.core.optimize import AncerConfig, IsotropicConfig
from ancer_cli.core.precision import Precision, prepare_model, speed_options_record
from ancer_cli.distributed import collective, rank_device, ranks_from_env, start, stop
from ancer_cli.errors import AncerError
from ancer_cli.inputs import load_run_inputs
from ancer_cli.optimize import Method, OptimizeJob, check_resume, run_optimize
from ancer_cli.runtime import describe_device, host_memory_retained, resolve_device, versions
from ancer_cli.thetas import open_thetas

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
    sigma: Annotated[
        float | None,
        typer.Option(
            help="Initial noise standard deviation in pixel units (default: the model's training sigma)."
        ),
    ] = None,
    isotropic_thetas: Annotated[
        Path | None,
        typer.Option(
            help="Reuse this isotropic thetas folder (or one-value-per-index file) instead of the isotropic stage."
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
    ]:
        positive(name, value)
    for name, value in [("--iso-lr", iso_lr), ("--lr", lr)]:
        positive(name, value)
    if kappa < 0:
        raise typer.BadParameter(f"--kappa must be >= 0, got {kappa}")
    if sigma is not None:
        positive("--sigma", sigma)
    if max_index is not None and max_index < 0:
        raise typer.BadParameter(f"--max must be >= 0, got {max_index}")
    with handle_errors():
        ranks = ranks_from_env()
        torch_device = rank_device(ranks, resolve_device(device))
        start(ranks, torch_device)
        try:

            def prepare() -> tuple[Any, ...]:
                if force and resume:
                    raise AncerError("--force and --resume contradict each other; pass one of them")
                if out.exists() and not out.is_dir():
                    raise AncerError(f"--out {out} is a file; give a folder for the theta files")
                if out.exists() and any(out.iterdir()) and not (force or resume):
                    raise AncerError(
                        f"{out} is not empty; pass --force to overwrite it or --resume to continue it"
                    )
                run = load_run_inputs(
                    model,
                    torch_device,
                    dataset=dataset,
                    data_root=data_root,
                    split=split,
                    norm=norm,
                    arch=arch,
                )
                start_sigma = sigma if sigma is not None else run.model.sigma
                if start_sigma is None:
                    raise AncerError(
                        f"model {model} does not record its training sigma; pass --sigma"
                    )
                iso_source = None
                if isotropic_thetas is not None:
                    if method is Method.isotropic:
                        raise typer.BadParameter("--isotropic-thetas goes with --method ancer")
                    iso_source = open_thetas(
                        isotropic_thetas,
                        run.data,
                        norm=run.norm,
                        model_sha256=run.model.sha256,
                        device=torch_device,
                    ).theta
                indices = select_indices(len(run.data.dataset), skip, max_index)  # type: ignore[arg-type]
                job = OptimizeJob(
                    method=method,
                    norm=run.norm,
                    sigma=start_sigma,
                    isotropic=IsotropicConfig(iso_iterations, iso_lr, iso_samples),
                    ancer=AncerConfig(iterations, lr, samples, kappa),
                    batch_size=batch_size,
                    seed=seed,
                )
                record = {
                    "arguments": {
                        "model": str(model.resolve()),
                        "model_sha256": run.model.sha256,
                        "dataset": run.data.info.name,
                        "data_root": str(data_root) if data_root else None,
                        "split": run.data.split,
                        "norm": run.norm.value,
                        "sigma": start_sigma,
                        "isotropic_thetas": str(isotropic_thetas) if isotropic_thetas else None,
                        "skip": skip,
                        "max": max_index,
                        "seed": seed,
                        "world_size": ranks.world_size,
                        **speed_options_record(precision, channels_last),
                    },
                    "indices": indices,
                    "package_version": versions()["ancer"],
                    "versions": versions(),
                    "device": describe_device(torch_device),
                    "host_memory_retained": host_memory_retained(),
                }
                if resume:
                    check_resume(out, record, job, run_iso_stage=iso_source is None)
                return run, iso_source, indices, job, record, start_sigma

            run, iso_source, indices, job, record, start_sigma = collective(ranks, prepare)
            if force and ranks.is_main and out.exists():
                shutil.rmtree(out)
            if ranks.is_main:
                console.print(
                    f"optimizing {method.value} thetas for {len(indices)} {run.data.info.name} "
                    f"{run.data.split} inputs ({run.norm.value}, start sigma={start_sigma}) on "
                    f"{describe_device(torch_device)}"
                    + (f" and {ranks.world_size - 1} more ranks" if ranks.distributed else "")
                )
            with progress_bar(enabled=ranks.is_main) as progress:
                batches = [indices[k : k + batch_size] for k in range(0, len(indices), batch_size)]
                mine = sum(len(batch) for batch in ranks.share(batches))
                task = progress.add_task("optimize", total=mine, status="")

                def report(stage: str, inputs_done: int, iteration: int, value: float) -> None:
                    if stage == "done":
                        progress.update(task, completed=inputs_done, status="")
                    else:
                        total = (
                            job.isotropic.iterations
                            if stage == "isotropic"
                            else job.ancer.iterations
                        )
                        progress.update(
                            task,
                            completed=inputs_done,
                            status=f"{stage} step {iteration}/{total} objective {value:.4f}",
                        )

                summary = run_optimize(
                    prepare_model(run.model.module, precision, channels_last),
                    run.data,
                    indices,
                    job,
                    torch_device,
                    out,
                    record,
                    resume=resume,
                    isotropic_thetas=iso_source,
                    progress=report,
                    ranks=ranks,
                )
            if summary is None:  # rank 0 reports
                return
            stdout.print(
                f"{out}: {summary.optimized} inputs optimized"
                + (f", {summary.kept} kept from the interrupted run" if summary.kept else "")
                + f" in {summary.seconds:.1f}s; mean min(theta) {summary.mean_min_theta:.4f}, "
                f"mean geomean(theta) {summary.mean_geomean_theta:.4f}; manifest {out / MANIFEST_NAME}"
            )
        finally:
            stop(ranks)
