"""``ancer certify``: certify each input with fixed sigma or with optimized per-input thetas.

``--reuse RESULTS`` (with ``--alpha-zeta``, ``--reuse-tolerance``, ``--reuse-radius``) is the
same run as ``ancer recertify RESULTS``, kept as an alias."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ancer_cli.cli.common import (
    OUTPUT,
    RUN,
    SAMPLING,
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
from ancer_cli.cli.recertify import (
    REUSE,
    AlphaZetaOption,
    ReuseRadiusOption,
    ReuseToleranceOption,
    recertify_command,
)
from ancer_cli.core.choices import Precision, Sampling
from ancer_cli.settings import CertifyConfig, Sequential, SequentialMetric

if TYPE_CHECKING:
    from ancer_cli.certify import CertifyOutcome, CertifyPlan
    from ancer_cli.distributed import Session
    from ancer_cli.run.certificates import CertificateRow

D = Sampling()
SEQUENTIAL = "Sequential certification (fewer samples, same guarantee)"


def certify_command(
    ctx: typer.Context,
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
    denoiser: DenoiserOption = None,
    sound: SoundOption = None,
    skip: Annotated[
        int,
        typer.Option(help="Certify every SKIP-th input of the split.", rich_help_panel="What to smooth"),
    ] = 1,
    max_index: MaxIndexOption = None,
    n_selection: Annotated[
        int,
        typer.Option(
            "--N0",
            help="Noisy samples used to select the predicted class.",
            rich_help_panel=SAMPLING,
        ),
    ] = D.n_selection,
    n_estimation: Annotated[
        int,
        typer.Option(
            "--N",
            help="Noisy samples used to bound the predicted class's probability (the cap with "
            "--radius or --sequential).",
            rich_help_panel=SAMPLING,
        ),
    ] = D.n_estimation,
    alpha: Annotated[
        float,
        typer.Option(
            help="Failure probability of each certificate, in (0, 1).", rich_help_panel=SAMPLING
        ),
    ] = D.alpha,
    batch_size: Annotated[
        int, typer.Option(help="Noisy samples per forward pass.", rich_help_panel=RUN)
    ] = D.batch_size,
    memory: Annotated[
        bool | None,
        typer.Option(
            "--memory/--no-memory",
            help="Memory-based pass that makes per-input certificates sound (default: on for "
            "isotropic/ancer, off for fixed).",
            show_default=False,
            rich_help_panel=SAMPLING,
        ),
    ] = None,
    radius: Annotated[
        list[float] | None,
        typer.Option(
            "--radius",
            help="Decide per input whether it is certified at this radius (input units; "
            "repeatable), drawing samples until an anytime-valid bound decides, at most --N.",
            show_default=False,
            rich_help_panel=SEQUENTIAL,
        ),
    ] = None,
    metric: Annotated[
        SequentialMetric,
        typer.Option(
            help="Unit of --radius: radius (min(theta) x gap) or proxy (geomean(theta) x gap).",
            rich_help_panel=SEQUENTIAL,
        ),
    ] = SequentialMetric.radius,
    sequential: Annotated[
        bool,
        typer.Option(
            "--sequential",
            help="Adaptive mode: stop early for inputs that will abstain and once the cap --N "
            "could raise the certified radius by less than --tolerance.",
            rich_help_panel=SEQUENTIAL,
        ),
    ] = False,
    tolerance: Annotated[
        float,
        typer.Option(
            help="--sequential: stop once the cap could raise the gap by at most this fraction.",
            rich_help_panel=SEQUENTIAL,
        ),
    ] = Sequential.tolerance,
    out: Annotated[
        Path,
        typer.Option(help="Results file (tab-separated).", metavar="FILE", rich_help_panel=OUTPUT),
    ] = Path("results.csv"),
    resume: GrowableResumeOption = False,
    force: ForceOption = False,
    device: DeviceOption = "auto",
    seed: NoiseSeedOption = None,
    precision: PrecisionOption = Precision.fp32,
    channels_last: ChannelsLastOption = False,
    reuse: Annotated[
        Path | None,
        typer.Option(
            help="Results file of an earlier certify run of the original model: certify the "
            "changed --model from it (the same as ancer recertify RESULTS).",
            show_default=False,
            metavar="RESULTS",
            rich_help_panel=REUSE,
        ),
    ] = None,
    alpha_zeta: AlphaZetaOption = None,
    reuse_tolerance: ReuseToleranceOption = None,
    reuse_radius: ReuseRadiusOption = None,
) -> None:
    """Certify inputs with randomized smoothing, one row per input.

    Fixed sigma: --model M --sigma S. Per-input thetas: --thetas DIR (model, dataset, split, norm
    and method come from DIR/manifest.json; original ANCER folders and isotropic value files need
    --model, --dataset and --norm). A changed model: ancer recertify RESULTS --model CHANGED (or
    --reuse RESULTS here).
    """
    if reuse is not None or alpha_zeta is not None or reuse_tolerance is not None or reuse_radius:
        _as_recertify(ctx, reuse)
        return
    for name, value in [
        ("--N0", n_selection),
        ("--N", n_estimation),
        ("--batch-size", batch_size),
        ("--skip", skip),
    ]:
        positive(name, value)
    probability("--alpha", alpha)
    at_least_one("--max", max_index)
    check_smoothing_options(thetas, sigma, method)
    chosen = _sequential(radius, metric, sequential, tolerance)

    from ancer_cli.certify import CertifyRequest, plan_certify
    from ancer_cli.data import UNLABELED
    from ancer_cli.distributed import session

    inputs = smoothing_spec(
        model=model, thetas=thetas, sigma=sigma, method=method, dataset=dataset,
        data_root=data_root, split=split, norm=norm, arch=arch, classes=classes, skip=skip,
        max_index=max_index, precision=precision, channels_last=channels_last, seed=seed,
        sound=sound, denoiser=denoiser,
    )  # fmt: skip
    request = CertifyRequest(
        out=out, inputs=inputs,
        config=CertifyConfig(Sampling(n_selection, n_estimation, alpha, batch_size), chosen),
        memory=memory, resume=resume, force=force,
    )  # fmt: skip
    with handle_errors(), session(device) as where:
        plan = plan_certify(request, where)
        main = where.ranks.is_main
        if main:
            console.print(_describe(plan, where))
            for note in [*label_notes(plan.inputs.data, plan.inputs.logits), *plan.inputs.notes]:
                console.print(note, markup=False)
        tally = {"rows": 0, "correct": 0, "abstained": 0}

        def status(row: CertificateRow) -> str:
            tally["rows"] += row.label != UNLABELED
            tally["correct"] += row.correct
            tally["abstained"] += row.predict < 0
            if tally["rows"]:
                return f"acc@0 {tally['correct'] / tally['rows']:.3f}"
            return f"abstained {tally['abstained']}"

        outcome = run_under_progress(plan, where, "certify", status)
        if outcome is not None:  # rank 0 reports
            report(out, outcome)


def _as_recertify(ctx: typer.Context, results: Path | None) -> None:
    """``certify --reuse RESULTS ...``: run ``ancer recertify RESULTS ...`` with the options
    given; an option recertify does not take (the earlier run sets the data, the noise and the
    sampling) is a usage error."""
    if results is None:
        raise typer.BadParameter(
            "--alpha-zeta, --reuse-tolerance and --reuse-radius go with --reuse"
        )
    accepted = set(inspect.signature(recertify_command).parameters)
    given = {
        name: value
        for name, value in ctx.params.items()
        if _given(ctx, name) and name != "reuse"
    }
    refused = sorted(name for name in given if name not in accepted)
    if refused:
        options = ", ".join(_option_name(ctx, name) for name in refused)
        raise typer.BadParameter(
            f"{options}: with --reuse the earlier run sets the data, the noise and the "
            "sampling; leave these out (see ancer recertify --help)"
        )
    defaults = {param.name: param.default for param in ctx.command.params}
    chosen: dict[str, Any] = {name: ctx.params.get(name, defaults.get(name)) for name in accepted}
    chosen["results"] = results
    recertify_command(**chosen)


def _given(ctx: typer.Context, name: str) -> bool:
    """Whether parameter ``name`` was given on the command line (not left at its default)."""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name == "COMMANDLINE"


def _option_name(ctx: typer.Context, name: str) -> str:
    """The command-line spelling of parameter ``name`` (its first option string)."""
    for param in ctx.command.params:
        if param.name == name and param.opts:
            return str(param.opts[0])
    return name


def run_under_progress(
    plan: Any, where: Session, title: str, status: Callable[[Any], str]
) -> Any:
    """Run a certify or recertify plan under a bar for its rows (``status(row)`` after each) and
    one for the memory pass (shown once it starts); the plan's outcome (``None`` off rank 0)."""
    with progress_bar(enabled=where.ranks.is_main) as progress:
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

        outcome = plan.execute(where, on_row=advance, on_memory=memory_progress, on_start=start)
        progress.update(task, completed=progress.tasks[task].total)
    return outcome


def _sequential(
    radius: list[float] | None, metric: SequentialMetric, sequential: bool, tolerance: float
) -> Sequential | None:
    """The sequential settings the options ask for (``None``: Cohen et al.'s fixed N)."""
    for value in radius or []:
        if not (math.isfinite(value) and value >= 0):
            raise typer.BadParameter(f"--radius must be a finite number >= 0, got {value}")
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise typer.BadParameter(f"--tolerance must be a finite number >= 0, got {tolerance}")
    if radius:
        return Sequential(radii=tuple(sorted(set(radius))), metric=metric.value)
    if metric is not SequentialMetric.radius:
        raise typer.BadParameter("--metric sets the unit of --radius; give --radius")
    if tolerance != Sequential.tolerance and not sequential:
        raise typer.BadParameter("--tolerance goes with --sequential")
    return Sequential(tolerance=tolerance) if sequential else None


def _describe(plan: CertifyPlan, where: Session) -> str:
    from ancer_cli.runtime import describe_device

    inputs, sampling = plan.inputs, plan.config.sampling
    data = inputs.data
    return (
        f"certifying {len(plan.indices)} {data.info.name} {data.split} inputs "
        f"({inputs.norm.value}) with {inputs.description} (N0={sampling.n_selection}, "
        f"N={sampling.n_estimation}{_mode(plan.config.sequential)}, alpha={sampling.alpha}; "
        f"{noise_description(plan.run.segments.record(), inputs.grid_levels)}) on "
        f"{describe_device(where.device)}"
        + (f" and {where.ranks.world_size - 1} more ranks" if where.ranks.distributed else "")
    )


def _mode(settings: Sequential | None) -> str:
    if settings is None:
        return ""
    if settings.radii:
        radii = ", ".join(f"{r:g}" for r in sorted(settings.radii))
        return f" at most, sequential, deciding {settings.metric} {radii}"
    return f" at most, sequential adaptive, tolerance {settings.tolerance:g}"


def report(out: Path, outcome: CertifyOutcome) -> None:
    """The lines a finished certify (or recertify) run prints: totals, samples, memory pass."""
    summary = outcome.totals
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
    if outcome.samples is not None:
        counted = outcome.samples
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
