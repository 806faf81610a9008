"""``ancer attack``: the empirical robust accuracy of a smoothed classifier (SmoothAdv PGD on the
soft smoothed classifier, each attacked point judged by PREDICT on fresh draws)."""

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
    GrowableResumeOption,
    MaxIndexOption,
    MethodOption,
    NoiseSeedOption,
    RunArchOption,
    RunDatasetOption,
    RunNormOption,
    RunSplitOption,
    SigmaOption,
    SkipOption,
    SmoothedModelOption,
    SoundOption,
    ThetasOption,
    check_smoothing_options,
    console,
    handle_errors,
    noise_description,
    non_negative,
    number,
    positive,
    probability,
    progress_bar,
    smoothing_spec,
)
from ancer_cli.cli.common import out as stdout
from ancer_cli.core.attack_settings import AttackConfig, Threat
from ancer_cli.settings import AttackJob, PredictConfig

if TYPE_CHECKING:
    from ancer_cli.attack import AttackPlan, AttackRow, AttackSummary
    from ancer_cli.distributed import Session

D = AttackConfig()
ATTACK = "The attack (SmoothAdv PGD on the soft smoothed classifier)"


def attack_command(
    results: Annotated[
        Path | None,
        typer.Argument(
            help="Results file (or predictions file) whose classifier, noise and inputs to "
            "attack, from its sidecar; without it, say what to smooth with --model and --sigma "
            "or --thetas.",
            show_default=False,
            metavar="RESULTS",
        ),
    ] = None,
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
    threat: Annotated[
        Threat | None,
        typer.Option(
            help="Norm of the attacker's ball: l2, l1 or linf (default: the noise's norm; "
            "--norm is the smoothing noise's, not the attacker's).",
            show_default=False,
            rich_help_panel=ATTACK,
        ),
    ] = None,
    eps: Annotated[
        list[float] | None,
        typer.Option(
            "--eps",
            parser=number,
            metavar="EPS",
            help="Radius of the attacker's ball, pixel units in [0, 1] (a fraction such as 8/255 "
            "too); repeat for several: one row per input and eps.",
            show_default=False,
            rich_help_panel=ATTACK,
        ),
    ] = None,
    steps: Annotated[
        int, typer.Option(help="PGD steps, of size 2 eps / steps.", rich_help_panel=ATTACK)
    ] = D.steps,
    samples: Annotated[
        int,
        typer.Option(help="Noise draws per gradient estimate.", rich_help_panel=ATTACK),
    ] = D.samples,
    restarts: Annotated[
        int,
        typer.Option(
            help="Runs of PGD, the first from the input, the others from random points of the "
            "ball; the most adverse is kept.",
            rich_help_panel=ATTACK,
        ),
    ] = D.restarts,
    eot: Annotated[
        int,
        typer.Option(
            help="Batches of --samples draws averaged per step (expectation over "
            "transformation).",
            rich_help_panel=ATTACK,
        ),
    ] = D.eot,
    fresh_noise: Annotated[
        bool,
        typer.Option(
            "--fresh-noise/--fixed-noise",
            help="New noise draws every step, or drawn once and kept (Salman et al.'s "
            "evaluation).",
            rich_help_panel=ATTACK,
        ),
    ] = D.fresh_noise,
    random: Annotated[
        bool,
        typer.Option(
            "--random",
            help="A random point on the ball's boundary instead of the attack: the baseline "
            "the attack must beat.",
            rich_help_panel=ATTACK,
        ),
    ] = False,
    num: Annotated[
        int | None,
        typer.Option(
            "--N",
            help="Noisy samples PREDICT judges each attacked point with (default: the results "
            f"file's N, else {PredictConfig.num:,}).",
            show_default=False,
            rich_help_panel=SAMPLING,
        ),
    ] = None,
    alpha: Annotated[
        float | None,
        typer.Option(
            help="PREDICT's level, in (0, 1) (default: the results file's alpha, else "
            f"{PredictConfig.alpha}).",
            show_default=False,
            rich_help_panel=SAMPLING,
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option(help="Noisy samples per forward pass.", rich_help_panel=RUN)
    ] = PredictConfig.batch_size,
    out: Annotated[
        Path,
        typer.Option(
            help="Attack file (tab-separated: idx label eps predict correct norm_l2 norm_l1 "
            "norm_linf time).",
            metavar="FILE",
            rich_help_panel=OUTPUT,
        ),
    ] = Path("attack.csv"),
    resume: GrowableResumeOption = False,
    force: ForceOption = False,
    device: DeviceOption = "auto",
    seed: NoiseSeedOption = None,
) -> None:
    """Attack the smoothed classifier for an empirical robust accuracy.

    SmoothAdv PGD (Salman et al. 2019) on the soft smoothed classifier, with each input's own
    theta, in the --threat ball of each --eps; the attacked point is judged by PREDICT on fresh
    draws, an abstention counting as an error. An upper bound on robust accuracy, as tight as
    the attack; compare it with the certified accuracy: ancer accuracy RESULTS --attack FILE.

    ancer attack RESULTS (the classifier, noise, N and alpha of a certify run), or --model M
    --sigma S, or --thetas DIR.
    """
    for name, value in [
        ("--steps", steps),
        ("--samples", samples),
        ("--restarts", restarts),
        ("--eot", eot),
        ("--batch-size", batch_size),
        ("--skip", skip),
    ]:
        positive(name, value)
    if num is not None:
        positive("--N", num)
    probability("--alpha", alpha)
    non_negative("--max", max_index)
    if not eps:
        raise typer.BadParameter("give --eps (the attacker's radius; repeat for several)")
    for radius in eps:
        if not (radius == radius and radius != float("inf") and radius >= 0):
            raise typer.BadParameter(f"--eps must be a finite number >= 0, got {radius}")
    if results is None:
        check_smoothing_options(thetas, sigma, method)

    from ancer_cli.attack import AttackRequest, plan_attack
    from ancer_cli.distributed import session

    inputs = smoothing_spec(
        model=model, thetas=thetas, sigma=sigma, method=method, dataset=dataset,
        data_root=data_root, split=split, norm=norm, arch=arch, classes=classes, skip=skip,
        max_index=max_index, seed=seed, sound=sound, denoiser=denoiser,
    )  # fmt: skip
    config = AttackConfig(
        steps=steps, samples=samples, restarts=restarts, eot=eot, fresh_noise=fresh_noise
    )
    job = AttackJob(tuple(eps), threat, config, num, alpha, batch_size, random)
    request = AttackRequest(job, out, results, inputs, resume, force)
    with handle_errors(), session(device) as where:
        plan = plan_attack(request, where)
        main = where.ranks.is_main
        if main:
            console.print(_describe(plan, where))
        summary = _run(plan, where)
        if summary is not None:
            report(out, summary)


def _run(plan: AttackPlan, where: Session) -> AttackSummary | None:
    """The plan's rows under a progress bar (robust rows so far); its summary on rank 0."""
    from ancer_cli.data import UNLABELED

    with progress_bar(enabled=where.ranks.is_main) as progress:
        task = progress.add_task("attack", total=None, status="")
        tally = {"rows": 0, "correct": 0}

        def start(kept: int, mine: int) -> None:
            progress.update(task, total=mine, completed=0)

        def advance(row: AttackRow) -> None:
            tally["rows"] += row.label != UNLABELED
            tally["correct"] += row.correct
            status = f"robust {tally['correct']}/{tally['rows']}" if tally["rows"] else ""
            progress.update(task, advance=1, status=status)

        summary = plan.execute(where, on_row=advance, on_start=start)
        progress.update(task, completed=progress.tasks[task].total)
    return summary


def _describe(plan: AttackPlan, where: Session) -> str:
    from ancer_cli.runtime import describe_device

    inputs, settings = plan.inputs, plan.settings
    data, attack = inputs.data, settings.attack
    eps = ", ".join(f"{e:g}" for e in settings.eps)
    how = (
        "random points on the ball's boundary"
        if settings.random
        else f"SmoothAdv PGD ({attack.steps} steps, {attack.samples} draws, "
        f"{attack.restarts} restart{'s' if attack.restarts > 1 else ''}, eot {attack.eot}, "
        f"{'fresh' if attack.fresh_noise else 'fixed'} noise)"
    )
    return (
        f"attacking {len(plan.indices)} {data.info.name} {data.split} inputs smoothed with "
        f"{inputs.description} ({inputs.norm.value}) in {settings.threat.value} balls of eps "
        f"{eps} by {how}; judged by PREDICT (N={settings.judge.num}, "
        f"alpha={settings.judge.alpha}; "
        f"{noise_description(plan.run.segments.record(), inputs.grid_levels)}) on "
        f"{describe_device(where.device)}"
        + (f" and {where.ranks.world_size - 1} more ranks" if where.ranks.distributed else "")
    )


def report(out: Path, summary: AttackSummary) -> None:
    """The lines a finished attack prints: robust accuracy per eps, the cost."""
    accuracies = ", ".join(
        f"{s.eps:g}: {s.accuracy:.3f}" + (f" ({s.abstained} abstained)" if s.abstained else "")
        for s in summary.per_eps
    )
    stdout.print(
        f"{out}: {summary.rows} rows; empirical robust accuracy at eps {accuracies}"
        + (f" ({summary.resumed} rows kept from the interrupted run)" if summary.resumed else "")
    )
    stdout.print(
        f"cost per row: {summary.forward_equivalents:,} forward-equivalents, "
        f"{summary.seconds_per_row:.3f} s"
    )
