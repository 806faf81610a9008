"""``ancer certify``: certify each input with fixed sigma or with optimized per-input thetas."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ancer_cli.artifacts import read_manifest
from ancer_cli.certify import (
    CertifyConfig,
    check_resume,
    fixed_theta,
    run_certify,
    select_indices,
)
from ancer_cli.certify import (
    CertifyMethod as Method,
)
from ancer_cli.cli.common import (
    ChannelsLastOption,
    DeviceOption,
    ForceOption,
    MaxIndexOption,
    PrecisionOption,
    ResumeOption,
    SeedOption,
    check_output,
    console,
    handle_errors,
    positive,
    progress_bar,
)
from ancer_cli.cli.common import (
    out as stdout,
)
from ancer_cli.core.noise import Norm, theta_from_sigma
from ancer_cli.core.precision import Precision, prepare_model, speed_options_record
from ancer_cli.distributed import collective, rank_device, ranks_from_env, start, stop
from ancer_cli.errors import AncerError
from ancer_cli.inputs import load_run_inputs
from ancer_cli.runtime import describe_device, host_memory_retained, resolve_device, versions
from ancer_cli.thetas import open_thetas

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
        typer.Option("--N", help="Noisy samples used to bound the predicted class's probability."),
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
    positive("--N0", n_selection)
    positive("--N", n_estimation)
    positive("--batch-size", batch_size)
    positive("--skip", skip)
    if not 0.0 < alpha < 1.0:
        raise typer.BadParameter(f"--alpha must lie in (0, 1), got {alpha}")
    if max_index is not None and max_index < 0:
        raise typer.BadParameter(f"--max must be >= 0, got {max_index}")
    if thetas is None and sigma is None:
        raise typer.BadParameter("give --sigma (fixed sigma) or --thetas (per-input thetas)")
    if thetas is not None and sigma is not None:
        raise typer.BadParameter("--sigma and --thetas exclude each other; give one")
    if sigma is not None:
        positive("--sigma", sigma)
        if method not in (None, Method.fixed):
            raise typer.BadParameter(f"--method {method.value} needs --thetas, not --sigma")
    with handle_errors():
        ranks = ranks_from_env()
        torch_device = rank_device(ranks, resolve_device(device))
        start(ranks, torch_device)
        try:

            def prepare() -> tuple[Any, ...]:
                check_output(out, force=force, resume=resume)
                manifest = read_manifest(thetas) if thetas is not None and thetas.is_dir() else None
                recorded = manifest.get("arguments", {}) if manifest else {}
                model_path = model or (Path(recorded["model"]) if recorded.get("model") else None)
                if model_path is None:
                    raise AncerError(
                        "give --model (the thetas have no manifest naming their model)"
                    )
                if thetas is not None and manifest is None and (dataset is None or norm is None):
                    raise AncerError(
                        f"{thetas} has no manifest.json: pass --dataset and --norm with --model"
                    )
                run = load_run_inputs(
                    model_path,
                    torch_device,
                    dataset=dataset or recorded.get("dataset"),
                    data_root=data_root
                    or (Path(recorded["data_root"]) if recorded.get("data_root") else None),
                    split=split or recorded.get("split") or "test",
                    norm=norm or recorded.get("norm"),
                    arch=arch,
                )
                chosen_norm = run.norm
                data = run.data
                if thetas is not None:
                    theta_set = open_thetas(
                        thetas,
                        data,
                        norm=chosen_norm,
                        model_sha256=run.model.sha256,
                        device=torch_device,
                    )
                    chosen_method = Method(theta_set.method)
                    if method is not None and method is not chosen_method:
                        raise AncerError(
                            f"--method {method.value} but {thetas} holds {chosen_method.value} thetas"
                        )
                    available = set(theta_set.indices)
                    source = theta_set.theta
                    describe = f"{chosen_method.value} thetas from {thetas}"
                else:
                    assert sigma is not None
                    chosen_method = Method.fixed
                    available = None
                    source = fixed_theta(theta_from_sigma(sigma, chosen_norm))
                    describe = f"noise sigma={sigma}"
                use_memory = chosen_method is not Method.fixed if memory is None else memory
                indices = select_indices(len(data.dataset), skip, max_index)  # type: ignore[arg-type]
                if available is not None:
                    indices = [i for i in indices if i in available]
                config = CertifyConfig(
                    norm=chosen_norm,
                    n_selection=n_selection,
                    n_estimation=n_estimation,
                    alpha=alpha,
                    batch_size=batch_size,
                    seed=seed,
                )
                record = {
                    "format": "ancer-results/1",
                    "arguments": {
                        "method": chosen_method.value,
                        "model": str(model_path),
                        "model_sha256": run.model.sha256,
                        "thetas": str(thetas) if thetas is not None else None,
                        "dataset": data.info.name,
                        "split": data.split,
                        "norm": chosen_norm.value,
                        "sigma": sigma,
                        "N0": n_selection,
                        "N": n_estimation,
                        "alpha": alpha,
                        "batch_size": batch_size,
                        "skip": skip,
                        "max": max_index,
                        "seed": seed,
                        "memory": use_memory,
                        "world_size": ranks.world_size,
                        **speed_options_record(precision, channels_last),
                    },
                    "device": describe_device(torch_device),
                    "host_memory_retained": host_memory_retained(),
                    "versions": versions(),
                }
                if resume:
                    check_resume(out, record["arguments"], use_memory, ranks)
                return run, data, source, describe, use_memory, indices, config, record, chosen_norm

            run, data, source, describe, use_memory, indices, config, record, chosen_norm = (
                collective(ranks, prepare)
            )
            if ranks.is_main:
                console.print(
                    f"certifying {len(indices)} {data.info.name} {data.split} inputs ({chosen_norm.value}) "
                    f"with {describe} (N0={n_selection}, N={n_estimation}, alpha={alpha}) "
                    f"on {describe_device(torch_device)}"
                    + (f" and {ranks.world_size - 1} more ranks" if ranks.distributed else "")
                )
            with progress_bar(enabled=ranks.is_main) as progress:
                task = progress.add_task("certify", total=len(ranks.share(indices)), status="")
                memory_task = progress.add_task(
                    "memory pass", total=len(indices), status="", visible=False, start=False
                )
                tally = {"rows": 0, "correct": 0}

                def advance(row: object) -> None:
                    tally["rows"] += 1
                    tally["correct"] += row.correct  # type: ignore[attr-defined]
                    progress.update(
                        task,
                        advance=1,
                        status=f"acc@0 {tally['correct'] / tally['rows']:.3f}",
                    )

                summary = run_certify(
                    prepare_model(run.model.module, precision, channels_last),
                    data,
                    indices,
                    source,
                    config,
                    torch_device,
                    out,
                    record,
                    resume=resume,
                    memory=use_memory,
                    on_row=advance,
                    ranks=ranks,
                    on_memory=lambda done, total: (
                        progress.start_task(memory_task),
                        progress.update(memory_task, completed=done, total=total, visible=True),
                    ),
                )
                progress.update(task, completed=len(ranks.share(indices)))
            if summary is None:  # another rank finishes the run
                return
            stdout.print(
                f"{out}: {summary.certified} inputs, certified accuracy at radius 0 "
                f"{summary.correct / max(summary.certified, 1):.3f}, abstained {summary.abstained}, "
                f"average certified radius {summary.mean_radius:.4f}"
                + (
                    f" ({summary.resumed} rows kept from the interrupted run)"
                    if summary.resumed
                    else ""
                )
            )
            if summary.memory is not None:
                changes = summary.memory
                if not (changes.reassigned or changes.shrunk):
                    stdout.print("memory pass: no certified regions collided; nothing changed")
                else:
                    stdout.print(
                        f"memory pass: {len(changes.reassigned)} inputs lay inside an earlier "
                        f"region and took its certificate ({len(changes.changed_predictions)} "
                        f"changed prediction), {len(changes.shrunk)} regions shrunk to avoid "
                        "another class's region"
                    )
        finally:
            stop(ranks)
