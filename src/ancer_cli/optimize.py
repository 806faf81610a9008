"""The dataset loop of ``ancer optimize``: batches of inputs -> thetas -> theta files + manifests."""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ancer_cli.artifacts import (
    ISOTROPIC_SUBFOLDER,
    MANIFEST_NAME,
    THETA_FORMAT,
    check_resumable,
    load_theta,
    remove_stale_temporaries,
    save_theta,
    theta_path,
    utc_now,
    write_json,
)
from ancer_cli.core.noise import Norm, Stream, input_generator, theta_from_sigma
from ancer_cli.core.optimize import (
    AncerConfig,
    IsotropicConfig,
    Progress,
    optimize_ancer,
    optimize_isotropic,
)
from ancer_cli.core.radii import geometric_mean, min_theta
from ancer_cli.data import LoadedData
from ancer_cli.distributed import SINGLE, Ranks, collective, total
from ancer_cli.errors import OutputError


class Method(str, enum.Enum):
    isotropic = "isotropic"
    ancer = "ancer"


@dataclass(frozen=True)
class OptimizeJob:
    """Everything that decides the thetas an optimize run writes."""

    method: Method
    norm: Norm
    sigma: float
    isotropic: IsotropicConfig = IsotropicConfig()
    ancer: AncerConfig = AncerConfig()
    batch_size: int = 50
    seed: int = 0


@dataclass(frozen=True)
class OptimizeSummary:
    optimized: int
    kept: int
    seconds: float
    mean_min_theta: float
    mean_geomean_theta: float


OptimizeProgress = Callable[[str, int, int, float], None]
"""``progress(stage, inputs_done, iteration, mean_objective)``; stage is isotropic or ancer."""


def run_optimize(
    model: nn.Module,
    data: LoadedData,
    indices: list[int],
    job: OptimizeJob,
    device: torch.device,
    out: Path,
    record: dict[str, Any],
    resume: bool = False,
    isotropic_thetas: Callable[[int], torch.Tensor] | None = None,
    progress: OptimizeProgress | None = None,
    ranks: Ranks = SINGLE,
) -> OptimizeSummary | None:
    """Optimize theta for ``indices`` and write ``out/theta_{split}_{idx}.pt`` plus manifests.

    For ``Method.ancer`` the isotropic stage goes to ``out/isotropic/`` unless
    ``isotropic_thetas`` supplies it. Inputs are optimized in fixed batches of
    ``job.batch_size`` consecutive indices, so a batch always holds the same inputs: resumed
    and distributed runs (each rank takes every ``world_size``-th batch) write exactly the
    files of one uninterrupted run. With ``resume``, batches whose theta files all exist are
    kept (files are written atomically, so an existing file is complete), and a batch whose
    isotropic stage is stored reuses it. Rank 0 writes the manifests and returns the summary
    (other ranks return ``None``). Model weights must already be frozen.
    """
    began = time.perf_counter()
    split = data.split
    iso_folder = out if job.method is Method.isotropic else out / ISOTROPIC_SUBFOLDER
    run_iso_stage = job.method is Method.isotropic or isotropic_thetas is None
    manifests = _manifests(out, record, job, run_iso_stage)

    def begin() -> None:
        if resume:
            check_resume(out, record, job, run_iso_stage)
        for folder in manifests:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise OutputError(f"cannot create {folder}: {error.strerror or error}") from error
            if ranks.is_main:  # nobody writes before every rank has passed this point
                remove_stale_temporaries(folder, "theta_")
                remove_stale_temporaries(folder, MANIFEST_NAME)

    collective(ranks, begin)
    if ranks.is_main:
        for folder, manifest in manifests.items():
            write_json(folder / MANIFEST_NAME, {**manifest, "complete": False})
    batches = [indices[k : k + job.batch_size] for k in range(0, len(indices), job.batch_size)]

    def optimize_share() -> tuple[int, int]:
        optimized = kept = 0
        for batch in ranks.share(batches):
            if resume and all(theta_path(out, split, i).exists() for i in batch):
                kept += len(batch)
                continue
            written = _optimize_batch(
                model,
                data,
                batch,
                job,
                device,
                out,
                iso_folder,
                run_iso_stage,
                isotropic_thetas,
                resume,
                progress,
                optimized + kept,
            )
            optimized += written
            kept += len(batch) - written
            if progress is not None:
                progress("done", optimized + kept, 0, math.nan)
        return optimized, kept

    optimized, kept = collective(ranks, optimize_share)
    optimized, kept = total(ranks, optimized), total(ranks, kept)
    if not ranks.is_main:
        return None
    seconds = time.perf_counter() - began
    thetas = [load_theta(theta_path(out, split, i), tuple(data.info.input_shape)) for i in indices]
    for folder, manifest in manifests.items():
        write_json(
            folder / MANIFEST_NAME,
            {**manifest, "complete": True, "finished": utc_now(), "wall_seconds": seconds},
        )
    return OptimizeSummary(
        optimized=optimized,
        kept=kept,
        seconds=seconds,
        mean_min_theta=sum(min_theta(t) for t in thetas) / max(len(thetas), 1),
        mean_geomean_theta=sum(geometric_mean(t) for t in thetas) / max(len(thetas), 1),
    )


def _optimize_batch(
    model: nn.Module,
    data: LoadedData,
    batch: list[int],
    job: OptimizeJob,
    device: torch.device,
    out: Path,
    iso_folder: Path,
    run_iso_stage: bool,
    isotropic_thetas: Callable[[int], torch.Tensor] | None,
    resume: bool,
    progress: OptimizeProgress | None,
    finished: int,
) -> int:
    """Both stages for one whole batch (so its inputs always share a forward pass the same
    way); with ``resume`` only missing files are written. Returns the final files written."""
    split = data.split
    x = torch.stack([data.dataset[i][0] for i in batch]).to(device, torch.float32)
    missing = sum(1 for i in batch if not (resume and theta_path(out, split, i).exists()))

    def report(stage: str) -> Progress | None:
        if progress is None:
            return None
        callback = progress
        return lambda it, _total, objective: callback(stage, finished, it, objective)

    if not run_iso_stage:
        assert isotropic_thetas is not None
        theta_iso = torch.stack([isotropic_thetas(i).reshape(()) for i in batch]).to(device)
    elif resume and all(theta_path(iso_folder, split, i).exists() for i in batch):
        theta_iso = torch.stack(
            [load_theta(theta_path(iso_folder, split, i), None).reshape(()) for i in batch]
        ).to(device)
    else:
        start = torch.full((len(batch),), theta_from_sigma(job.sigma, job.norm), device=device)
        generators = [input_generator(job.seed, i, device, Stream.isotropic) for i in batch]
        theta_iso = optimize_isotropic(
            model, x, start, job.norm, job.isotropic, generators, report("isotropic")
        )
        for i, value in zip(batch, theta_iso, strict=True):
            _save_missing(theta_path(iso_folder, split, i), value.reshape(()), resume)
    if job.method is Method.isotropic:
        return missing
    generators = [input_generator(job.seed, i, device, Stream.ancer) for i in batch]
    theta = optimize_ancer(model, x, theta_iso, job.norm, job.ancer, generators, report("ancer"))
    written = 0
    for i, value in zip(batch, theta, strict=True):
        written += _save_missing(theta_path(out, split, i), value, resume)
    return written


def _save_missing(path: Path, theta: torch.Tensor, resume: bool) -> bool:
    """Save unless resuming and the (atomically written, so complete) file exists."""
    if resume and path.exists():
        return False
    save_theta(path, theta)
    return True


def _manifests(
    out: Path, record: dict[str, Any], job: OptimizeJob, run_iso_stage: bool
) -> dict[Path, dict[str, Any]]:
    """The manifest of each folder the run writes: ``out`` and, if run, its isotropic stage."""
    folders = [out]
    if run_iso_stage and job.method is Method.ancer:
        folders.append(out / ISOTROPIC_SUBFOLDER)
    return {folder: _manifest(record, job, folder == out) for folder in folders}


def check_resume(out: Path, record: dict[str, Any], job: OptimizeJob, run_iso_stage: bool) -> None:
    """Refuse to resume into folders whose manifests record other arguments (names the first)."""
    for folder, manifest in _manifests(out, record, job, run_iso_stage).items():
        if (folder / MANIFEST_NAME).exists():
            check_resumable(folder / MANIFEST_NAME, manifest["arguments"], str(folder))


def _manifest(record: dict[str, Any], job: OptimizeJob, final: bool) -> dict[str, Any]:
    """The manifest of the final folder, or of the isotropic stage's sub-folder."""
    method = job.method.value if final else Method.isotropic.value
    hyper: dict[str, Any] = {"batch_size": job.batch_size, "isotropic": asdict(job.isotropic)}
    if method == Method.ancer.value:
        hyper["ancer"] = asdict(job.ancer)
    arguments = {**record["arguments"], "method": method, "hyperparameters": hyper}
    return {**record, "format": THETA_FORMAT, "method": method, "arguments": arguments}
