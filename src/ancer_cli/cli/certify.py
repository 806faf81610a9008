"""``ancer certify``: certify each input with fixed sigma or with optimized per-input thetas."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

from ancer_cli.analysis.metrics import Metric
from ancer_cli.certify import (
    CertifyConfig,
    CertifyPlan,
    CertifyRequest,
    CertifySummary,
    ResultRow,
    Sequential,
    plan_certify,
)
from ancer_cli.cli.common import (
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
    check_smoothing_options,
    console,
    handle_errors,
    label_notes,
    noise_description,
    non_negative,
    positive,
    probability,
    progress_bar,
)
from ancer_cli.cli.common import out as stdout
from ancer_cli.core.incremental import DEFAULT_TOLERANCE
from ancer_cli.core.precision import Precision
from ancer_cli.core.smoothing import ABSTAIN
from ancer_cli.data import UNLABELED
from ancer_cli.distributed import Session, session
from ancer_cli.inputs import InputsSpec
from ancer_cli.reuse import ReusePlan, ReuseRequest, ReuseRow, ReuseSummary, plan_reuse
from ancer_cli.runtime import describe_device

D = CertifyConfig()


def certify_command(
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
    resume: GrowableResumeOption = False,
    force: ForceOption = False,
    device: DeviceOption = "auto",
    seed: NoiseSeedOption = None,
    sound: SoundOption = None,
    denoiser: DenoiserOption = None,
    reuse: Annotated[
        Path | None,
        typer.Option(
            help="Results file of an earlier certify run of the original model: certify the "
            "changed --model from its certificates (see docs/reuse.md).",
            show_default=False,
        ),
    ] = None,
    alpha_zeta: Annotated[
        float | None,
        typer.Option(
            help="--reuse: failure probability of the bound on the two models' disagreement "
            "(default: alpha/10); reused rows hold at alpha + alpha-zeta.",
            show_default=False,
        ),
    ] = None,
    reuse_tolerance: Annotated[
        float | None,
        typer.Option(
            help="--reuse: certify an input afresh where reuse would lose more than this "
            f"fraction of its radius (default {DEFAULT_TOLERANCE}; none with --reuse-radius).",
            show_default=False,
        ),
    ] = None,
    reuse_radius: Annotated[
        list[float] | None,
        typer.Option(
            "--reuse-radius",
            help="--reuse: a radius whose certified accuracy you report (input units; "
            "repeatable): a reused certificate never falls below one its earlier certificate "
            "reached (such inputs draw more or are certified afresh).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Certify inputs with randomized smoothing, one row per input.

    Fixed sigma: --model M --sigma S. Per-input thetas: --thetas DIR (model, dataset, split, norm
    and method come from DIR/manifest.json; original ANCER folders and isotropic value files need
    --model, --dataset and --norm). A changed model: --reuse RESULTS --model CHANGED.
    """
    if reuse is not None or alpha_zeta is not None or reuse_tolerance is not None or reuse_radius:
        given = {
            "--thetas": thetas is not None, "--sigma": sigma is not None,
            "--method": method is not None, "--dataset": dataset is not None,
            "--split": split is not None, "--norm": norm is not None,
            "--classes": classes is not None, "--N0": n_selection != D.n_selection,
            "--N": n_estimation != D.n_estimation, "--alpha": alpha != D.alpha,
            "--batch-size": batch_size != D.batch_size, "--skip": skip != 1,
            "--max": max_index is not None, "--memory/--no-memory": memory is not None,
            "--radius": bool(radius), "--sequential": sequential,
            "--sound/--no-sound": sound is not None, "--denoiser": denoiser is not None,
        }  # fmt: skip
        request = reuse_request(
            reuse, model, alpha_zeta, reuse_tolerance, reuse_radius or [],
            [name for name, on in given.items() if on],
            ReuseRequest(
                results=Path(), model=Path(), out=out, data_root=data_root, arch=arch,
                precision=precision, channels_last=channels_last, seed=seed, resume=resume,
                force=force,
            ),
        )  # fmt: skip
        certify_reuse(request, device)
        return
    for name, value in [
        ("--N0", n_selection),
        ("--N", n_estimation),
        ("--batch-size", batch_size),
        ("--skip", skip),
    ]:
        positive(name, value)
    probability("--alpha", alpha)
    non_negative("--max", max_index)
    check_smoothing_options(thetas, sigma, method)
    chosen = _sequential(radius, metric, sequential, tolerance)
    inputs = InputsSpec(
        model=model, thetas=thetas, sigma=sigma, method=method, dataset=dataset,
        data_root=data_root, split=split, norm=norm, arch=arch, classes=classes, skip=skip,
        max_index=max_index, precision=precision, channels_last=channels_last, seed=seed,
        sound=sound, denoiser=denoiser,
    )  # fmt: skip
    request = CertifyRequest(
        out=out, inputs=inputs, n_selection=n_selection, n_estimation=n_estimation,
        alpha=alpha, batch_size=batch_size, memory=memory, sequential=chosen,
        resume=resume, force=force,
    )  # fmt: skip
    with handle_errors(), session(device) as where:
        plan = plan_certify(request, where)
        main = where.ranks.is_main
        if main:
            console.print(_describe(plan, where))
            for note in label_notes(plan.data, plan.logits):
                console.print(note, markup=False)
        tally = {"rows": 0, "correct": 0, "abstained": 0}

        def status(row: ResultRow) -> str:
            tally["rows"] += row.label != UNLABELED
            tally["correct"] += row.correct
            tally["abstained"] += row.predict == ABSTAIN
            if tally["rows"]:
                return f"acc@0 {tally['correct'] / tally['rows']:.3f}"
            return f"abstained {tally['abstained']}"

        summary = _run_under_progress(plan, where, main, "certify", status)
        if summary is not None:  # rank 0 reports
            _report(out, summary)


def _run_under_progress(
    plan: CertifyPlan | ReusePlan,
    where: Session,
    main: bool,
    title: str,
    status: Callable[[Any], str],
) -> Any:
    """Run a certify or reuse plan under a bar for its rows (``status(row)`` after each) and one
    for the memory pass (shown once it starts); the plan's summary (``None`` off rank 0)."""
    with progress_bar(enabled=main) as progress:
        task = progress.add_task(title, total=None, status="")
        memory_task = progress.add_task(
            "memory pass", total=len(plan.indices), status="", visible=False, start=False
        )

        def advance(row: Any) -> None:
            progress.update(task, advance=1, status=status(row))

        def memory_progress(done: int, total: int) -> None:
            progress.start_task(memory_task)
            progress.update(memory_task, completed=done, total=total, visible=True)

        def start(kept: int, mine: int) -> None:
            progress.update(task, total=mine, completed=0)

        summary = plan.run(where, on_row=advance, on_memory=memory_progress, on_start=start)
        progress.update(task, completed=progress.tasks[task].total)
    return summary


def _sequential(
    radius: list[float] | None, metric: Metric, sequential: bool, tolerance: float
) -> Sequential | None:
    """The sequential settings the options ask for (``None``: Cohen et al.'s fixed N)."""
    for value in radius or []:
        if not (math.isfinite(value) and value >= 0):
            raise typer.BadParameter(f"--radius must be a finite number >= 0, got {value}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise typer.BadParameter(f"--tolerance must be a finite number >= 0, got {tolerance}")
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
        f"N={config.n_estimation}{_mode(config)}, alpha={config.alpha}; "
        f"{noise_description(config.seed, config.sound)}) on "
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
    accuracy = (
        f"certified accuracy at radius 0 {summary.accuracy:.3f}, "
        if summary.labeled
        else "no labels (accuracy not measured), "
    )
    radius = f", average certified radius {summary.mean_radius:.4f}" if summary.labeled else ""
    stdout.print(
        f"{out}: {summary.certified} inputs, {accuracy}abstained {summary.abstained}{radius}"
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


# ---------------------------------------------------------------------------------------------
# --reuse: a changed model certified from an earlier run


def reuse_request(
    results: Path | None,
    model: Path | None,
    alpha_zeta: float | None,
    tolerance: float | None,
    radii: list[float],
    conflicting: list[str],
    base: ReuseRequest,
) -> ReuseRequest:
    """Usage errors (exit 2) of ``--reuse``, then the request: the earlier run fixes the data,
    the noise and the sampling, so the options that set them conflict with it. Without
    ``--reuse-tolerance``, the default tolerance holds unless radii are given: then only they
    bound the loss (a tolerance of 1: any gap above 1/2)."""
    if results is None:
        raise typer.BadParameter(
            "--alpha-zeta, --reuse-tolerance and --reuse-radius go with --reuse"
        )
    if model is None:
        raise typer.BadParameter("--reuse needs --model: the changed model to certify")
    if conflicting:
        raise typer.BadParameter(
            f"{', '.join(conflicting)}: with --reuse the earlier run sets the data, the noise "
            "and the sampling; leave these out"
        )
    probability("--alpha-zeta", alpha_zeta)
    if tolerance is not None and not (math.isfinite(tolerance) and tolerance >= 0):
        raise typer.BadParameter(f"--reuse-tolerance must be a finite number >= 0, got {tolerance}")
    for radius in radii:
        if not (math.isfinite(radius) and radius > 0):
            raise typer.BadParameter(f"--reuse-radius must be a finite number > 0, got {radius}")
    if tolerance is None:
        tolerance = 1.0 if radii else DEFAULT_TOLERANCE
    return replace(
        base,
        results=results,
        model=model,
        alpha_zeta=alpha_zeta,
        tolerance=tolerance,
        radii=tuple(radii),
    )


def certify_reuse(request: ReuseRequest, device: str) -> None:
    """Run a reuse request under a progress bar and print its summary."""
    with handle_errors(), session(device) as where:
        plan = plan_reuse(request, where)
        main = where.ranks.is_main
        if main:
            console.print(_describe_reuse(plan, where))
        routes = dict.fromkeys(("reuse", "scratch", "abstain"), 0)

        def status(row: ReuseRow) -> str:
            routes[row.route.value] += 1
            return ", ".join(f"{k} {v}" for k, v in routes.items())

        summary = _run_under_progress(plan, where, main, "certify (reuse)", status)
        if summary is not None:
            _report_reuse(request.out, summary)


def _describe_reuse(plan: ReusePlan, where: Session) -> str:
    config, rule = plan.config, plan.settings.rule
    return (
        f"certifying {plan.request.model} from {plan.request.results}: "
        f"{len(plan.indices)} {plan.data.info.name} {plan.data.split} inputs "
        f"({config.norm.value}) with {plan.theta_description} (N0={config.n_selection}, "
        f"N={config.n_estimation}, alpha={config.alpha}, alpha_zeta={rule.alpha_zeta:g}, "
        f"{_reuse_limits(rule.tolerance, rule.radii)}; earlier draws regenerated from seed "
        f"{plan.settings.earlier_seed}, afresh: {noise_description(config.seed, config.sound)}) "
        f"on {describe_device(where.device)}"
    )


def _reuse_limits(tolerance: float, radii: tuple[float, ...]) -> str:
    """How much radius a reused certificate may lose, in words."""
    limits = [f"tolerance {tolerance:g}"] if tolerance < 1 else []
    if radii:
        limits.append("keeping radii " + ", ".join(f"{r:g}" for r in radii))
    return "; ".join(limits) or "any radius above 0"


def _report_reuse(out: Path, summary: ReuseSummary) -> None:
    _report(out, summary.totals)
    routes = summary.routes
    stdout.print(
        f"reused {routes['reuse']}, certified afresh {routes['scratch']}, kept abstentions "
        f"{routes['abstain']}; samples per input: mean {summary.mean_samples:.0f} "
        f"(afresh: {summary.scratch_samples}); reused rows hold at alpha "
        f"{summary.guarantee:g}"
    )
