"""``ancer certify``: certify each input with fixed sigma or with optimized per-input thetas."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from ancer_cli.analysis.metrics import Metric
from ancer_cli.certify import (
    CertifyConfig,
    CertifyPlan,
    CertifyRequest,
    CertifySummary,
    Sequential,
    plan_certify,
)
from ancer_cli.certify import CertifyMethod as Method
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
    non_negative,
    positive,
    probability,
    progress_bar,
)
from ancer_cli.cli.common import out as stdout
from ancer_cli.core.noise import Norm
from ancer_cli.core.precision import Precision
from ancer_cli.distributed import Session, session
from ancer_cli.runtime import describe_device

D = CertifyConfig()


def certify_command(
    model: Annotated[
        Path | None,
        typer.Option(
            help="Model file: an ancer checkpoint, TorchScript archive or torch.export program."
        ),
    ] = None,
    thetas: Annotated[
        Path | None,
        typer.Option(
            help="Per-input thetas: a folder written by ancer optimize (or the original ANCER package), or an isotropic values file."
        ),
    ] = None,
    method: Annotated[
        Method | None,
        typer.Option(help="fixed, isotropic or ancer; inferred from --sigma/--thetas."),
    ] = None,
    sigma: Annotated[
        float | None,
        typer.Option(
            help="Fixed noise standard deviation in [0,1] pixel units (l1: theta = sqrt(3)*sigma)."
        ),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="Dataset (default: the one the model was trained on).")
    ] = None,
    data_root: Annotated[Path | None, typer.Option(help="Folder holding the dataset.")] = None,
    split: Annotated[
        str | None,
        typer.Option(
            help="Dataset split to certify: test or train (default: the thetas', else test)."
        ),
    ] = None,
    norm: Annotated[
        Norm | None,
        typer.Option(
            help="Threat model / noise: l2 (Gaussian) or l1 (uniform); default from the model."
        ),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(
            help="Architecture for a plain state-dict model file (or package.module:factory)."
        ),
    ] = None,
    n_selection: Annotated[
        int, typer.Option("--N0", help="Noisy samples used to select the predicted class.")
    ] = D.n_selection,
    n_estimation: Annotated[
        int,
        typer.Option(
            "--N",
            help="Noisy samples used to bound the predicted class's probability (the cap with "
            "--radius or --sequential).",
        ),
    ] = D.n_estimation,
    alpha: Annotated[
        float, typer.Option(help="Failure probability of each certificate, in (0, 1).")
    ] = D.alpha,
    batch_size: Annotated[int, typer.Option(help="Noisy samples per forward pass.")] = D.batch_size,
    skip: Annotated[int, typer.Option(help="Certify every SKIP-th input of the split.")] = 1,
    max_index: MaxIndexOption = None,
    memory: Annotated[
        bool | None,
        typer.Option(
            "--memory/--no-memory",
            help="Memory-based pass that makes per-input certificates sound (default: on for isotropic/ancer, off for fixed).",
        ),
    ] = None,
    radius: Annotated[
        list[float] | None,
        typer.Option(
            "--radius",
            help="Sequential radius mode: decide per input whether it is certified at this radius "
            "(input units; repeatable), drawing samples until an anytime-valid bound decides, "
            "at most --N.",
            show_default=False,
        ),
    ] = None,
    metric: Annotated[
        Metric,
        typer.Option(
            help="Unit of --radius: radius (min(theta) x gap) or proxy (geomean(theta) x gap)."
        ),
    ] = Metric.radius,
    sequential: Annotated[
        bool,
        typer.Option(
            "--sequential",
            help="Sequential adaptive mode: stop early for inputs that will abstain and once "
            "the cap --N could raise the certified radius by less than --tolerance.",
        ),
    ] = False,
    tolerance: Annotated[
        float,
        typer.Option(
            help="--sequential: stop once the cap could raise the gap by at most this fraction."
        ),
    ] = Sequential.tolerance,
    out: Annotated[Path, typer.Option(help="Results file (tab-separated).")] = Path("results.csv"),
    precision: PrecisionOption = Precision.fp32,
    channels_last: ChannelsLastOption = False,
    resume: ResumeOption = False,
    force: ForceOption = False,
    device: DeviceOption = "auto",
    seed: SeedOption = 0,
) -> None:
    """Certify inputs of a dataset with randomized smoothing and write one row per input.

    Fixed sigma: --model M --sigma S. Per-input thetas: --thetas DIR (model, dataset, split, norm
    and method come from DIR/manifest.json; original ANCER folders and isotropic value files need
    --model, --dataset and --norm).
    """
    for name, value in [
        ("--N0", n_selection),
        ("--N", n_estimation),
        ("--batch-size", batch_size),
        ("--skip", skip),
    ]:
        positive(name, value)
    probability("--alpha", alpha)
    non_negative("--max", max_index)
    if thetas is None and sigma is None:
        raise typer.BadParameter("give --sigma (fixed sigma) or --thetas (per-input thetas)")
    if thetas is not None and sigma is not None:
        raise typer.BadParameter("--sigma and --thetas exclude each other; give one")
    if sigma is not None:
        positive("--sigma", sigma)
        if method not in (None, Method.fixed):
            raise typer.BadParameter(f"--method {method.value} needs --thetas, not --sigma")
    for value in radius or []:
        if not (math.isfinite(value) and value >= 0):
            raise typer.BadParameter(f"--radius must be a finite number >= 0, got {value}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise typer.BadParameter(f"--tolerance must be a finite number >= 0, got {tolerance}")
    chosen = (radius, metric, sequential, tolerance)
    request = CertifyRequest(
        out=out, model=model, thetas=thetas, sigma=sigma, method=method, dataset=dataset,
        data_root=data_root, split=split, norm=norm, arch=arch, n_selection=n_selection,
        n_estimation=n_estimation, alpha=alpha, batch_size=batch_size, skip=skip,
        max_index=max_index, memory=memory, sequential=_sequential(*chosen),
        precision=precision, channels_last=channels_last,
        resume=resume, force=force, seed=seed,
    )  # fmt: skip
    with handle_errors(), session(device) as where:
        plan = plan_certify(request, where)
        main = where.ranks.is_main
        if main:
            console.print(_describe(plan, where))
        with progress_bar(enabled=main) as progress:
            task = progress.add_task(
                "certify", total=len(where.ranks.share(plan.indices)), status=""
            )
            memory_task = progress.add_task(
                "memory pass", total=len(plan.indices), status="", visible=False, start=False
            )
            tally = {"rows": 0, "correct": 0}

            def advance(row: object) -> None:
                tally["rows"] += 1
                tally["correct"] += row.correct  # type: ignore[attr-defined]
                status = f"acc@0 {tally['correct'] / tally['rows']:.3f}"
                progress.update(task, advance=1, status=status)

            def memory_progress(done: int, total: int) -> None:
                progress.start_task(memory_task)
                progress.update(memory_task, completed=done, total=total, visible=True)

            summary = plan.run(where, on_row=advance, on_memory=memory_progress)
            progress.update(task, completed=len(where.ranks.share(plan.indices)))
        if summary is not None:  # rank 0 reports
            _report(out, summary)


def _sequential(
    radius: list[float] | None, metric: Metric, sequential: bool, tolerance: float
) -> Sequential | None:
    """The sequential settings the options ask for (``None``: Cohen et al.'s fixed N)."""
    if radius:
        return Sequential(radii=tuple(sorted(set(radius))), metric=metric.value)
    if metric is not Metric.radius:
        raise typer.BadParameter("--metric sets the unit of --radius; give --radius")
    if tolerance != Sequential.tolerance and not sequential:
        raise typer.BadParameter("--tolerance goes with --sequential")
    return Sequential(tolerance=tolerance) if sequential else None


def _describe(plan: CertifyPlan, where: Session) -> str:
    data, config = plan.data, plan.config
    return (
        f"certifying {len(plan.indices)} {data.info.name} {data.split} inputs "
        f"({config.norm.value}) with {plan.theta_description} (N0={config.n_selection}, "
        f"N={config.n_estimation}{_mode(config)}, alpha={config.alpha}) on "
        f"{describe_device(where.device)}"
        + (f" and {where.ranks.world_size - 1} more ranks" if where.ranks.distributed else "")
    )


def _mode(config: CertifyConfig) -> str:
    settings = config.sequential
    if settings is None:
        return ""
    if settings.radii:
        radii = ", ".join(f"{r:g}" for r in sorted(settings.radii))
        return f" at most, sequential, deciding {settings.metric} {radii}"
    return f" at most, sequential adaptive, tolerance {settings.tolerance:g}"


def _report(out: Path, summary: CertifySummary) -> None:
    stdout.print(
        f"{out}: {summary.certified} inputs, certified accuracy at radius 0 "
        f"{summary.correct / max(summary.certified, 1):.3f}, abstained {summary.abstained}, "
        f"average certified radius {summary.mean_radius:.4f}"
        + (f" ({summary.resumed} rows kept from the interrupted run)" if summary.resumed else "")
    )
    if summary.samples is not None:
        counted = summary.samples
        stops = ", ".join(f"{k} {v}" for k, v in counted.stops.items())
        stdout.print(
            f"samples per input: mean {counted.mean:.0f}, median {counted.median:.0f} "
            f"(fixed N: {counted.cap}; {counted.cap / max(counted.mean, 1):.1f}x fewer); "
            f"stopped: {stops}"
        )
    changes = summary.memory
    if changes is None:
        return
    if not (changes.reassigned or changes.shrunk):
        stdout.print("memory pass: no certified regions collided; nothing changed")
    else:
        stdout.print(
            f"memory pass: {len(changes.reassigned)} inputs lay inside an earlier region and "
            f"took its certificate ({len(changes.changed_predictions)} changed prediction), "
            f"{len(changes.shrunk)} regions shrunk to avoid another class's region"
        )
