"""``ancer recertify RESULTS --model CHANGED``: certify a changed model (bf16, int8, pruned,
fine-tuned) from an earlier certify run of the original (incremental randomized smoothing).

The earlier run fixes the data, the thetas, the noise and the sampling, so this command takes
only what it may change: the changed model, how much of each radius reuse may spend, where and
how to run, and the output. ``ancer certify --reuse RESULTS`` is the same run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ancer_cli.cli.common import (
    OUTPUT,
    ChannelsLastOption,
    DataRootOption,
    DeviceOption,
    ForceOption,
    PrecisionOption,
    ResumeOption,
    RunArchOption,
    console,
    handle_errors,
    noise_description,
    probability,
)
from ancer_cli.cli.common import out as stdout
from ancer_cli.core.choices import REUSE_TOLERANCE, Precision

if TYPE_CHECKING:
    from ancer_cli.distributed import Session
    from ancer_cli.reuse import ReusePlan, ReuseSummary
    from ancer_cli.run.certificates import CertificateRow

REUSE = "Reuse of the earlier run"

AlphaZetaOption = Annotated[
    float | None,
    typer.Option(
        help="Failure probability of the bound on the two models' disagreement (default: "
        "alpha/10); reused rows hold at the earlier level + alpha-zeta.",
        show_default=False,
        rich_help_panel=REUSE,
    ),
]
ReuseToleranceOption = Annotated[
    float | None,
    typer.Option(
        help="Certify an input afresh where reuse would lose more than this fraction of its "
        f"radius (default {REUSE_TOLERANCE}; none with --reuse-radius).",
        show_default=False,
        rich_help_panel=REUSE,
    ),
]
ReuseRadiusOption = Annotated[
    list[float] | None,
    typer.Option(
        "--reuse-radius",
        help="A radius whose certified accuracy you report (input units; repeatable): a reused "
        "certificate never falls below one its earlier certificate reached.",
        show_default=False,
        rich_help_panel=REUSE,
    ),
]


def recertify_command(
    results: Annotated[
        Path,
        typer.Argument(
            help="Results file of an earlier certify run of the original model (with its "
            "sidecar).",
            show_default=False,
        ),
    ],
    model: Annotated[
        Path | None,
        typer.Option(
            help="The changed model file (any kind certify takes).",
            show_default=False,
            rich_help_panel=REUSE,
        ),
    ] = None,
    alpha_zeta: AlphaZetaOption = None,
    reuse_tolerance: ReuseToleranceOption = None,
    reuse_radius: ReuseRadiusOption = None,
    data_root: DataRootOption = None,
    arch: RunArchOption = None,
    out: Annotated[
        Path,
        typer.Option(help="Results file (tab-separated).", metavar="FILE", rich_help_panel=OUTPUT),
    ] = Path("results.csv"),
    resume: ResumeOption = False,
    force: ForceOption = False,
    device: DeviceOption = "auto",
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            help="Random seed of this run's draws (default: fresh from OS entropy, drawn after "
            "the run has recorded what it certifies).",
            show_default=False,
            rich_help_panel="Where and how to run",
        ),
    ] = None,
    precision: PrecisionOption = Precision.fp32,
    channels_last: ChannelsLastOption = False,
) -> None:
    """Certify a changed model from an earlier run of the original.

    Each earlier certificate, less a bound on how often the two models disagree on fresh draws,
    certifies the changed model; inputs where that costs too much radius are certified afresh.
    See docs/reuse.md.
    """
    if model is None:
        raise typer.BadParameter("recertify needs --model: the changed model to certify")
    probability("--alpha-zeta", alpha_zeta)
    if reuse_tolerance is not None and not (
        math.isfinite(reuse_tolerance) and reuse_tolerance >= 0
    ):
        raise typer.BadParameter(
            f"--reuse-tolerance must be a finite number >= 0, got {reuse_tolerance}"
        )
    radii = reuse_radius or []
    for radius in radii:
        if not (math.isfinite(radius) and radius > 0):
            raise typer.BadParameter(f"--reuse-radius must be a finite number > 0, got {radius}")
    tolerance = reuse_tolerance
    if tolerance is None:  # without a tolerance, only the radii bound the loss
        tolerance = 1.0 if radii else REUSE_TOLERANCE

    from ancer_cli.cli.certify import run_under_progress
    from ancer_cli.distributed import session
    from ancer_cli.reuse import ReuseRequest, plan_reuse, route_of

    request = ReuseRequest(
        results=results, model=model, out=out, alpha_zeta=alpha_zeta, tolerance=tolerance,
        radii=tuple(radii), data_root=data_root, arch=arch, precision=precision,
        channels_last=channels_last, seed=seed, resume=resume, force=force,
    )  # fmt: skip
    with handle_errors(), session(device) as where:
        plan = plan_reuse(request, where)
        if where.ranks.is_main:
            console.print(_describe(plan, where))
        routes = dict.fromkeys(("reuse", "scratch", "abstain"), 0)

        def status(row: CertificateRow) -> str:
            routes[route_of(row).value] += 1
            return ", ".join(f"{k} {v}" for k, v in routes.items())

        summary = run_under_progress(plan, where, "recertify", status)
        if summary is not None:
            _report(out, summary)


def _describe(plan: ReusePlan, where: Session) -> str:
    from ancer_cli.runtime import describe_device

    sampling, rule, inputs = plan.settings.sampling, plan.settings.rule, plan.inputs
    return (
        f"certifying {plan.request.model} from {plan.request.results}: "
        f"{len(plan.indices)} {inputs.data.info.name} {inputs.data.split} inputs "
        f"({inputs.norm.value}) with {inputs.description} (N0={sampling.n_selection}, "
        f"N={sampling.n_estimation}, alpha={sampling.alpha}, alpha_zeta={rule.alpha_zeta:g}, "
        f"{_limits(rule.tolerance, rule.radii)}; fresh draws, "
        f"{noise_description(plan.run.segments.record(), inputs.grid_levels)}) "
        f"on {describe_device(where.device)}"
    )


def _limits(tolerance: float, radii: tuple[float, ...]) -> str:
    """How much radius a reused certificate may lose, in words."""
    limits = [f"tolerance {tolerance:g}"] if tolerance < 1 else []
    if radii:
        limits.append("keeping radii " + ", ".join(f"{r:g}" for r in radii))
    return "; ".join(limits) or "any radius above 0"


def _report(out: Path, summary: ReuseSummary) -> None:
    from ancer_cli.certify import CertifyOutcome
    from ancer_cli.cli.certify import report

    report(out, CertifyOutcome(summary.totals))
    routes = summary.routes
    stdout.print(
        f"reused {routes['reuse']}, certified afresh {routes['scratch']}, kept abstentions "
        f"{routes['abstain']}; samples per input: mean {summary.mean_samples:.0f} "
        f"(afresh: {summary.scratch_samples}); reused rows hold at alpha "
        f"{summary.guarantee:g}"
    )
