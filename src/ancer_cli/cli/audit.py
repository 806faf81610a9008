"""``ancer audit``: search every certified region of a results file for a confirmed flip, and
count the violated certificates against the level the file claims."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ancer_cli.cli.common import (
    OUTPUT,
    RUN,
    SAMPLING,
    ClassesOption,
    DataRootOption,
    DenoiserOption,
    DeviceOption,
    ForceOption,
    MaxIndexOption,
    MethodOption,
    NoiseSeedOption,
    ResumeOption,
    RunArchOption,
    RunDatasetOption,
    RunNormOption,
    RunSplitOption,
    SigmaOption,
    SkipOption,
    SmoothedModelOption,
    SoundOption,
    ThetasOption,
    console,
    handle_errors,
    noise_description,
    non_negative,
    positive,
    probability,
    progress_bar,
    smoothing_spec,
)
from ancer_cli.cli.common import out as stdout
from ancer_cli.core.attack_settings import AttackConfig, AuditConfig
from ancer_cli.settings import AuditJob

if TYPE_CHECKING:
    from ancer_cli.audit import AuditPlan, AuditRow, AuditSummary
    from ancer_cli.distributed import Session

D = AuditJob()
SEARCH = "The search inside each region"


def audit_command(
    results: Annotated[
        Path,
        typer.Argument(
            help="Results file whose certificates to audit (read whatever its digest says; the "
            "classifier and noise come from its sidecar).",
            show_default=False,
            metavar="RESULTS",
        ),
    ],
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
    skip: SkipOption = 1,
    max_index: MaxIndexOption = None,
    steps: Annotated[
        int,
        typer.Option(help="Gradient steps towards each runner-up class.", rich_help_panel=SEARCH),
    ] = D.search.search.steps,
    samples: Annotated[
        int, typer.Option(help="Noise draws per gradient estimate.", rich_help_panel=SEARCH)
    ] = D.search.search.samples,
    targets: Annotated[
        int,
        typer.Option(
            help="Runner-up classes searched towards, the most likely first.",
            rich_help_panel=SEARCH,
        ),
    ] = D.search.targets,
    boundary_points: Annotated[
        int,
        typer.Option(
            help="Random points on each region's boundary also tried.", rich_help_panel=SEARCH
        ),
    ] = D.search.boundary_points,
    num: Annotated[
        int,
        typer.Option(
            "--N",
            help="Noisy samples of the PREDICT that confirms a candidate flip (fresh draws).",
            rich_help_panel=SAMPLING,
        ),
    ] = D.num,
    alpha: Annotated[
        float,
        typer.Option(
            help="Level of that PREDICT, in (0, 1): a confirmed flip is wrong with at most this "
            "probability.",
            rich_help_panel=SAMPLING,
        ),
    ] = D.alpha,
    confirmations: Annotated[
        int,
        typer.Option(
            help="Candidates per certificate confirmed at most (those the soft smoothed "
            "classifier gives another class, the most adverse first).",
            rich_help_panel=SAMPLING,
        ),
    ] = D.confirmations,
    batch_size: Annotated[
        int, typer.Option(help="Noisy samples per forward pass.", rich_help_panel=RUN)
    ] = D.batch_size,
    out: Annotated[
        Path,
        typer.Option(
            help="Audit file (tab-separated: idx radius violated distance votes).",
            metavar="FILE",
            rich_help_panel=OUTPUT,
        ),
    ] = Path("audit.csv"),
    resume: ResumeOption = False,
    force: ForceOption = False,
    device: DeviceOption = "auto",
    seed: NoiseSeedOption = None,
) -> None:
    """Search certified regions of a results file for confirmed flips.

    For every certified row, a search inside the region it states (targeted PGD towards the
    runner-up classes and random boundary points, with the region's own theta) proposes points;
    those the soft smoothed classifier gives another class are confirmed by PREDICT at --N on
    fresh draws. Prints how many certificates were found violated, with a 95% Clopper-Pearson
    interval, against the alpha the file claims. A file without a sidecar needs --model and
    --sigma or --thetas.
    """
    for name, value in [
        ("--steps", steps),
        ("--samples", samples),
        ("--N", num),
        ("--confirmations", confirmations),
        ("--batch-size", batch_size),
        ("--skip", skip),
    ]:
        positive(name, value)
    non_negative("--targets", targets)
    non_negative("--boundary-points", boundary_points)
    non_negative("--max", max_index)
    probability("--alpha", alpha)

    from ancer_cli.audit import AuditRequest, plan_audit
    from ancer_cli.distributed import session

    inputs = smoothing_spec(
        model=model, thetas=thetas, sigma=sigma, method=method, dataset=dataset,
        data_root=data_root, split=split, norm=norm, arch=arch, classes=classes, skip=skip,
        max_index=max_index, seed=seed, sound=sound, denoiser=denoiser,
    )  # fmt: skip
    search = AuditConfig(
        AttackConfig(steps=steps, samples=samples), targets=targets, boundary_points=boundary_points
    )
    job = AuditJob(search, num, alpha, confirmations, batch_size)
    request = AuditRequest(results, out, job, inputs, resume, force)
    with handle_errors(), session(device) as where:
        plan = plan_audit(request, where)
        if where.ranks.is_main:
            console.print(_describe(plan, where))
        summary = _run(plan, where)
        if summary is not None:
            report(results, out, summary)


def _run(plan: AuditPlan, where: Session) -> AuditSummary | None:
    with progress_bar(enabled=where.ranks.is_main) as progress:
        task = progress.add_task("audit", total=None, status="")
        tally = {"violated": 0}

        def start(kept: int, mine: int) -> None:
            progress.update(task, total=mine, completed=0)

        def advance(row: AuditRow) -> None:
            tally["violated"] += row.violated
            progress.update(task, advance=1, status=f"violated {tally['violated']}")

        summary = plan.execute(where, on_row=advance, on_start=start)
        progress.update(task, completed=progress.tasks[task].total)
    return summary


def _describe(plan: AuditPlan, where: Session) -> str:
    from ancer_cli.runtime import describe_device

    inputs, job = plan.inputs, plan.request.job
    certified = sum(plan.regions[i].predict >= 0 for i in plan.indices)
    return (
        f"auditing {certified} certified rows of {plan.request.results} (rows "
        f"{plan.state.value}; {len(plan.indices) - certified} abstained) smoothed with "
        f"{inputs.description} ({inputs.norm.value}); flips confirmed by PREDICT (N={job.num}, "
        f"alpha={job.alpha}; {noise_description(plan.run.segments.record(), inputs.grid_levels)})"
        f" on {describe_device(where.device)}"
        + (f" and {where.ranks.world_size - 1} more ranks" if where.ranks.distributed else "")
    )


STATES = {
    "verified": "its rows are those its sidecar's digest records",
    "edited": "its rows are NOT those its run wrote (the digest in its sidecar differs)",
    "unfinished": "its run has not finished: its rows have no digest yet",
    "undigested": "its sidecar records no digest of its rows (an older ancer wrote it)",
    "foreign": "it has no sidecar (another tool's file)",
}


def report(results: Path, out: Path, summary: AuditSummary) -> None:
    """The lines a finished audit prints: the file's state, the violations against alpha."""
    low, high = summary.interval
    rate = summary.violated / summary.certified if summary.certified else 0.0
    stdout.print(f"{results}: {STATES[summary.state.value]}")
    verdict = (
        "consistent with it (an audit finds only some violations: no proof they hold)"
        if summary.consistent
        else "more than that allows: these certificates are not what the file claims"
    )
    stdout.print(
        f"{out}: {summary.violated} of {summary.certified} certificates violated (rate "
        f"{rate:.4f}, 95% Clopper-Pearson interval {low:.4f} to {high:.4f}; "
        f"{summary.abstained} abstained rows not audited); the file claims each is wrong with "
        f"probability at most {summary.alpha:g} ({summary.alpha_source}): {verdict}"
        + (f" ({summary.resumed} rows kept from the interrupted run)" if summary.resumed else "")
    )
    if summary.reassigned or summary.own_regions:
        stdout.print(
            f"memory pass: {summary.reassigned} reassigned rows audited in the region they were "
            f"given; {summary.own_regions} rows audited in their own region, the one they were "
            "given being unknown (no .pre-memory file, or an edited one)"
        )
